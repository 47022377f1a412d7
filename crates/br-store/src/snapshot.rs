//! The dashboards' picture of the store: one [`Snapshot`] holds everything the terminal and web
//! dashboards show, and a [`SnapshotBuilder`] keeps it up to date cheaply.
//!
//! The builder reads everything once. After that, each refresh reads the events appended since
//! the last one and re-reads only the tasks they name, plus the things that are cheap to read
//! whole: the summary (kept from counters), the session rows, the workers, the locks and the
//! pools. This
//! relies on a promise every backend keeps: a task's row never changes without an event that
//! names the task (`task_*`, and `lock_conflict` when its `blocked_by` changes). The tests below
//! check that an incrementally refreshed snapshot equals one built from scratch.
//!
//! Times come from the store's clock ([`Store::now`]); nothing here reads the local clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use br_core::detail::LockConflict as BlockedBy;
use br_core::{EventDetail, EventKind, SessionId, SessionStatus, TaskId, TaskState, Timestamp};
use br_core::{Isolation, LandMode, Landing, WorkerId, WorkerStatus};
use serde::Serialize;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::model::*;

/// Throughput counts the tasks that finished within this window.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// How many notable events the log keeps.
pub const EVENT_LOG_LEN: usize = 200;

/// How many of the newest sessions the list shows, besides every active one.
pub const SESSION_LIMIT: usize = 100;

/// A rate over a few seconds of work swings wildly; measure over at least this long.
const MIN_RATE_SPAN: Duration = Duration::from_secs(30);

/// The first build reads the event log backwards in chunks of this many `seq`s...
const BACKFILL_CHUNK: i64 = 4096;

/// ...and stops after this many events even if the throughput window or the event log is not
/// filled yet, so that opening a dashboard on a store with years of history stays quick.
const BACKFILL_MAX_EVENTS: usize = 100_000;

/// Everything a dashboard shows, read from the store at one moment ([`Snapshot::now`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The store's clock when the snapshot was taken; every "ago" and elapsed time is relative
    /// to it.
    pub now: Timestamp,
    /// The newest event the snapshot reflects.
    pub last_seq: i64,
    pub summary: Summary,
    pub throughput: Throughput,
    /// Active sessions first, then finished ones; newest first within each group.
    pub sessions: Vec<SessionRow>,
    /// The session whose tasks are shown.
    pub selected: Option<SelectedSession>,
    /// Workers that are idle, busy or offline (stopped ones have left and are not shown).
    pub workers: Vec<Worker>,
    /// Locks held now, oldest first.
    pub locks: Vec<LockRow>,
    /// The store's pools by name: their size, running tasks, and whether a rate limit parks
    /// them now.
    pub pools: Vec<PoolRow>,
    /// Recent notable events (see [`is_notable`]), oldest first; in JSON each with its detail
    /// in words (`text`), as the terminal dashboard shows it.
    #[serde(serialize_with = "crate::view::described_events")]
    pub events: Vec<Event>,
}

/// Tasks finished per minute, measured over a recent window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// Succeeded and failed tasks whose end falls within the window.
    pub finished: u32,
    /// How long the rate was measured over: the window, or less when work began more recently.
    pub span_ms: u64,
    pub per_minute: f64,
}

/// One session in the list, with what the dashboards derive from it. In JSON it also has
/// `spent_text`, its [`spent_words`](Session::spent_words), so the web page says it as the
/// terminal does.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub session: Session,
    /// Live workers currently on it (running one of its tasks, or serving it).
    pub workers: u32,
    /// Since it started, until it ended or until now.
    pub elapsed_ms: Option<u64>,
    /// Estimated time left at its average pace so far; zero once every task has finished.
    pub remaining_ms: Option<u64>,
}

impl Serialize for SessionRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            #[serde(flatten)]
            session: &'a Session,
            workers: u32,
            elapsed_ms: Option<u64>,
            remaining_ms: Option<u64>,
            spent_text: Option<String>,
        }
        Shape {
            session: &self.session,
            workers: self.workers,
            elapsed_ms: self.elapsed_ms,
            remaining_ms: self.remaining_ms,
            spent_text: self.session.spent_words(),
        }
        .serialize(s)
    }
}

/// The tasks of the selected session. In JSON each task also has `landing_text`, its
/// [`landing_words`](SelectedSession::landing_words), so the web page says it as the terminal
/// does.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedSession {
    pub id: SessionId,
    /// In plan order.
    pub tasks: Vec<TaskRow>,
    /// Whether it integrates as it runs: worktree isolation, and a task with `land = "auto"`.
    /// Then each task's `landing` says where its work is, and the session's `landed_tasks` how
    /// many are on its integration branch.
    pub lands: bool,
    /// The task being landed now: the first waiting one in plan order (the one a lander takes
    /// next), while a worker has the session's landing turn.
    pub landing_task: Option<TaskId>,
    /// The session has ended: what still waits to land will not.
    pub ended: bool,
}

impl Serialize for SelectedSession {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            id: &'a SessionId,
            tasks: Vec<DescribedTaskRow<'a>>,
            lands: bool,
            landing_task: Option<&'a TaskId>,
        }
        Shape {
            id: &self.id,
            tasks: self.described_tasks(0..self.tasks.len()),
            lands: self.lands,
            landing_task: self.landing_task.as_ref(),
        }
        .serialize(s)
    }
}

/// A task as the snapshot's JSON carries it: its row, and where its work is in words.
#[derive(Debug, Serialize)]
pub struct DescribedTaskRow<'a> {
    #[serde(flatten)]
    row: &'a TaskRow,
    landing_text: Option<String>,
}

impl SelectedSession {
    /// The tasks in `range` (plan order), each with its landing in words.
    pub fn described_tasks(&self, range: std::ops::Range<usize>) -> Vec<DescribedTaskRow<'_>> {
        self.tasks[range]
            .iter()
            .map(|row| DescribedTaskRow {
                row,
                landing_text: self.landing_words(&row.task),
            })
            .collect()
    }

    /// Where `task`'s work is, in a few words, when the session integrates as it runs (see
    /// [`SelectedSession::lands`]): waiting, landing, landed (with its commit), not landed
    /// (and why). `None` when there is nothing to say: it has not succeeded, or it does not
    /// land as it runs.
    pub fn landing_words(&self, task: &Task) -> Option<String> {
        let ended = self.ended;
        // A task may land by `br merge` in a session whose others land as they run.
        if !self.lands || task.land != LandMode::Auto {
            return None;
        }
        let short = |c: &str| c[..c.len().min(7)].to_string();
        Some(match (task.landing, task.state) {
            (Some(Landing::Landed), _) => match &task.landed_commit {
                Some(c) => format!("landed {}", short(c)),
                None => "landed".to_string(),
            },
            (Some(Landing::Waiting), _) if ended => "not landed".to_string(),
            (Some(Landing::Waiting), _) if self.landing_task.as_ref() == Some(&task.id) => {
                "landing".to_string()
            }
            (Some(Landing::Waiting), _) => "waiting".to_string(),
            (Some(Landing::Conflict), _) => "not landed: conflict".to_string(),
            (Some(Landing::VerifyFailed), _) => "not landed: verify".to_string(),
            // Succeeded without waiting to land: its session was cancelled first.
            (None, TaskState::Succeeded) => "not landed".to_string(),
            (None, _) => return None,
        })
    }
}

/// One task, with what it is waiting for when it cannot run yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    #[serde(flatten)]
    pub task: Task,
    pub waiting_for: Option<Waiting>,
}

/// Why a task that is not finished is not running.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Waiting {
    /// `after` tasks that have not succeeded yet.
    Dependencies { tasks: Vec<String> },
    /// Its files overlap locks that others hold now.
    Lock {
        paths: Vec<String>,
        held_by: Vec<LockHolder>,
    },
    /// Its pool is parked by a rate limit (`parked_until`), or runs as many tasks as its size
    /// allows (no `parked_until`). `text` says it in words, as both dashboards show it:
    /// `waiting: pool P parked until 15:30:15 (in 42s)`, `waiting: pool P full (3/3 running)`.
    Pool {
        pool: String,
        parked_until: Option<Timestamp>,
        text: String,
    },
}

/// Who holds a lock that a task waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    pub path: String,
    pub session_id: SessionId,
    /// None for a session's manual lock (`br lock`).
    pub task_id: Option<TaskId>,
    /// The worker running the holding task, when one is.
    pub worker_id: Option<WorkerId>,
}

/// A held lock and the worker running the task that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockRow {
    #[serde(flatten)]
    pub lock: Lock,
    pub worker_id: Option<WorkerId>,
}

/// A pool as the dashboards show it: the store's record, and while a rate limit parks it, how
/// long for in words (`parked until 15:30:15 (in 42s)`, [`Pool::parked_words`]). In JSON, the
/// fields of [`PoolView`](crate::view::PoolView) and `parked_text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub pool: Pool,
    pub parked_text: Option<String>,
}

impl PoolRow {
    /// `pool` as it is at `now`.
    pub fn at(pool: Pool, now: Timestamp) -> PoolRow {
        PoolRow {
            parked_text: pool.parked_words(now),
            pool,
        }
    }

    /// Whether a rate limit parks it now (the snapshot's `now`).
    pub fn parked(&self) -> bool {
        self.parked_text.is_some()
    }
}

impl Serialize for PoolRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            #[serde(flatten)]
            pool: crate::view::PoolView<'a>,
            parked_text: Option<&'a str>,
        }
        Shape {
            pool: crate::view::PoolView::parked_as(&self.pool, self.parked()),
            parked_text: self.parked_text.as_deref(),
        }
        .serialize(s)
    }
}

impl Snapshot {
    /// A snapshot of an empty store at `now`.
    pub fn empty(now: Timestamp) -> Snapshot {
        Snapshot {
            now,
            last_seq: 0,
            summary: Summary {
                usage: br_core::agent::Usage::default(),
                timestamp: now,
                workers: WorkerCounts {
                    total: 0,
                    idle: 0,
                    busy: 0,
                    offline: 0,
                    utilization: 0.0,
                },
                sessions: SessionCounts {
                    active: 0,
                    total: 0,
                },
                tasks: TaskCounts {
                    queued: 0,
                    running: 0,
                    completed: 0,
                    failed: 0,
                },
            },
            throughput: Throughput {
                finished: 0,
                span_ms: duration_ms(THROUGHPUT_WINDOW),
                per_minute: 0.0,
            },
            sessions: Vec::new(),
            selected: None,
            workers: Vec::new(),
            locks: Vec::new(),
            pools: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The selected session's row.
    pub fn selected_session(&self) -> Option<&SessionRow> {
        let id = &self.selected.as_ref()?.id;
        self.sessions.iter().find(|s| &s.session.id == id)
    }
}

/// Whether an event belongs in the dashboards' log: what a person watching wants to notice
/// (sessions changing state, failures, requeues, conflicts, fencing, workers lost, a rate limit
/// parking a pool), not the routine flow of every task starting and finishing.
pub fn is_notable(kind: EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        SessionCreated
            | SessionStarted
            | SessionPaused
            | SessionResumed
            | SessionCompleted
            | SessionFailed
            | SessionCancelled
            | WorkerOffline
            | TaskFailed
            | TaskRequeued
            | LockConflict
            | StaleResultRejected
            | MergeConflict
            | ScopeViolation
            | PoolParked
    )
}

/// Builds a snapshot from scratch: what a one-off reader (`br dashboard --once`, a web request)
/// needs. `selected` picks the session whose tasks are included; without one (or when it does
/// not exist) the first listed session is chosen.
pub fn build_snapshot(store: &dyn Store, selected: Option<&SessionId>) -> Result<Snapshot> {
    let mut snapshot = Snapshot::empty(Timestamp(0));
    SnapshotBuilder::new(selected.cloned()).refresh(store, &mut snapshot)?;
    Ok(snapshot)
}

/// Keeps a [`Snapshot`] up to date, reading only what changed since its last refresh.
///
/// The builder updates the snapshot in place rather than handing out a new one, because a copy
/// of a 10,000-task snapshot costs several times what the refresh itself does. It remembers
/// the state it left the snapshot in and the indexes over it; handed any other snapshot, it
/// builds that one from scratch.
#[derive(Debug)]
pub struct SnapshotBuilder {
    /// The session the caller wants selected.
    wanted: Option<SessionId>,
    /// The snapshot as this builder last left it; `None` before the first refresh.
    left: Option<Fingerprint>,
    /// Ends (succeeded or failed) of tasks, oldest first, trimmed to the throughput window.
    finishes: VecDeque<Timestamp>,
    tasks: TaskIndex,
}

/// Lookup tables over the selected session's tasks, so a refresh touches only what changed.
#[derive(Debug, Default)]
struct TaskIndex {
    by_id: HashMap<TaskId, usize>,
    /// For each task id, the positions of the tasks that name it in `after`.
    dependents: HashMap<String, Vec<usize>>,
    /// Ready tasks that recorded a lock conflict: their `waiting_for` depends on which locks
    /// are held now, so it is recomputed on every refresh.
    lock_blocked: BTreeSet<usize>,
    /// Ready tasks of a pool: their `waiting_for` depends on the pool, which fills as tasks of
    /// any session start, is parked by another task's rate limit, and is free again when its
    /// park ends — by the clock, with no event at all. So they too are recomputed on every
    /// refresh.
    pooled: BTreeSet<usize>,
}

/// Enough of a snapshot to tell whether it is the one a builder last refreshed.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    now: Timestamp,
    last_seq: i64,
    selected: Option<SessionId>,
    tasks: usize,
}

impl Fingerprint {
    fn of(snapshot: &Snapshot) -> Fingerprint {
        Fingerprint {
            now: snapshot.now,
            last_seq: snapshot.last_seq,
            selected: snapshot.selected.as_ref().map(|s| s.id.clone()),
            tasks: snapshot.selected.as_ref().map_or(0, |s| s.tasks.len()),
        }
    }
}

/// Which tasks a refresh re-read: only those its events named, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    Named,
    All,
}

/// Re-reading this share of a session's tasks one by one costs more than one read of them all.
const REREAD_ALL_DIVISOR: usize = 16;
const REREAD_ALL_MIN: usize = 64;

impl SnapshotBuilder {
    /// A builder that has read nothing yet; the first [`refresh`](Self::refresh) reads
    /// everything.
    pub fn new(selected: Option<SessionId>) -> SnapshotBuilder {
        SnapshotBuilder {
            wanted: selected,
            left: None,
            finishes: VecDeque::new(),
            tasks: TaskIndex::default(),
        }
    }

    /// Chooses the session whose tasks the snapshot includes, from the next refresh on.
    pub fn select(&mut self, session: Option<SessionId>) {
        self.wanted = session;
    }

    /// The session the caller wants selected.
    pub fn wanted(&self) -> Option<&SessionId> {
        self.wanted.as_ref()
    }

    /// Brings `snapshot` up to date with the store. Pass the same snapshot every time: the
    /// first refresh (or one given a snapshot this builder did not leave) reads everything;
    /// later ones read only what changed.
    pub fn refresh(&mut self, store: &dyn Store, snapshot: &mut Snapshot) -> Result<()> {
        let now = store.now()?;
        self.refresh_at(store, now, snapshot)
    }

    /// Forgets everything, so the next refresh reads the store from scratch.
    pub fn reset(&mut self) {
        let wanted = self.wanted.take();
        *self = SnapshotBuilder::new(wanted);
    }

    fn refresh_at(&mut self, store: &dyn Store, now: Timestamp, snap: &mut Snapshot) -> Result<()> {
        // Whatever happens below, an error leaves the snapshot half-updated: rebuild it next
        // time.
        let left = self.left.take();
        if left.as_ref() != Some(&Fingerprint::of(snap)) {
            self.full(store, now, snap)?;
        } else {
            self.incremental(store, now, snap)?;
        }
        self.left = Some(Fingerprint::of(snap));
        Ok(())
    }

    fn incremental(
        &mut self,
        store: &dyn Store,
        now: Timestamp,
        snap: &mut Snapshot,
    ) -> Result<()> {
        // Events first, then the rows: a row read after its event is at least as new as the
        // event, and any later change comes with a later event that the next refresh reads.
        let events = store.events(&EventFilter {
            after_seq: Some(snap.last_seq),
            ..Default::default()
        })?;
        let previous_total = snap.summary.sessions.total;
        let cheap = Cheap::read(store, self.wanted.as_ref())?;
        if cheap.summary.sessions.total < previous_total {
            // A session was deleted (`br cleanup`) with its events: start again rather than
            // keep showing what no longer exists.
            return self.full(store, now, snap);
        }
        let selected = cheap.choose(self.wanted.as_ref());
        let same_session = snap.selected.as_ref().map(|s| &s.id) == selected.as_ref();
        let mut dirty = BTreeSet::new();
        for ev in events {
            snap.last_seq = snap.last_seq.max(ev.seq);
            if matches!(ev.kind, EventKind::TaskSucceeded | EventKind::TaskFailed) {
                self.finishes.push_back(ev.at);
            }
            if let (Some(s), Some(t)) = (&ev.session_id, &ev.task_id)
                && same_session
                && Some(s) == selected.as_ref()
            {
                dirty.insert(t.clone());
                // A predicted merge conflict shows on both of its tasks; the event names the
                // second only in its detail.
                if let EventDetail::MergeConflict(conflict) = &ev.detail
                    && let Ok(with) = TaskId::new(conflict.with.as_str())
                {
                    dirty.insert(with);
                }
            }
            if is_notable(ev.kind) {
                snap.events.push(ev);
            }
        }
        trim_front(&mut snap.events, EVENT_LOG_LEN);
        let reread = if same_session {
            self.reread_tasks(store, &dirty, snap)?
        } else {
            self.load_tasks(store, selected.as_ref(), snap)?;
            Reread::All
        };
        let recompute = match reread {
            Reread::All => None,
            Reread::Named => Some(&dirty),
        };
        self.assemble(cheap, now, recompute, snap);
        Ok(())
    }

    fn full(&mut self, store: &dyn Store, now: Timestamp, snap: &mut Snapshot) -> Result<()> {
        let last_seq = store.last_seq()?;
        let (events, finishes) = backfill(store, last_seq, now)?;
        let cheap = Cheap::read(store, self.wanted.as_ref())?;
        let selected = cheap.choose(self.wanted.as_ref());
        snap.last_seq = last_seq;
        snap.events = events;
        self.finishes = finishes;
        self.load_tasks(store, selected.as_ref(), snap)?;
        self.assemble(cheap, now, None, snap);
        Ok(())
    }

    /// Reads all tasks of `session` (or none) and rebuilds the index over them.
    fn load_tasks(
        &mut self,
        store: &dyn Store,
        session: Option<&SessionId>,
        snap: &mut Snapshot,
    ) -> Result<()> {
        self.tasks = TaskIndex::default();
        snap.selected = None;
        let Some(id) = session else { return Ok(()) };
        let tasks = match store.tasks(id) {
            Ok(tasks) => tasks,
            // Deleted between listing and reading: show no tasks until the next refresh.
            Err(StoreError::NoSuchSession(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rows: Vec<TaskRow> = tasks
            .into_iter()
            .map(|task| TaskRow {
                task,
                waiting_for: None,
            })
            .collect();
        for (i, row) in rows.iter().enumerate() {
            self.tasks.by_id.insert(row.task.id.clone(), i);
            for dep in &row.task.after {
                self.tasks
                    .dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(i);
            }
        }
        // What a task lands by is fixed at submit: read once, with the tasks.
        let lands = rows.iter().any(|r| r.task.land == LandMode::Auto)
            && store
                .session(id)
                .is_ok_and(|s| s.isolation == Isolation::Worktree);
        snap.selected = Some(SelectedSession {
            id: id.clone(),
            tasks: rows,
            lands,
            landing_task: None,
            ended: false,
        });
        Ok(())
    }

    /// Re-reads the named tasks of the selected session, or all of them when that is cheaper.
    fn reread_tasks(
        &mut self,
        store: &dyn Store,
        dirty: &BTreeSet<TaskId>,
        snap: &mut Snapshot,
    ) -> Result<Reread> {
        let Some(selected) = &snap.selected else {
            return Ok(Reread::Named);
        };
        let id = selected.id.clone();
        if dirty.len() > REREAD_ALL_MIN.max(selected.tasks.len() / REREAD_ALL_DIVISOR) {
            self.load_tasks(store, Some(&id), snap)?;
            return Ok(Reread::All);
        }
        for task_id in dirty {
            let Some(&i) = self.tasks.by_id.get(task_id) else {
                // A task this session did not have: the index is out of step, start again.
                self.load_tasks(store, Some(&id), snap)?;
                return Ok(Reread::All);
            };
            match store.task(&id, task_id) {
                Ok(task) => {
                    if let Some(selected) = &mut snap.selected {
                        selected.tasks[i].task = task;
                    }
                }
                Err(StoreError::NoSuchSession(_) | StoreError::NoSuchTask { .. }) => {
                    // Deleted under us: show no tasks until the next refresh picks another.
                    self.load_tasks(store, None, snap)?;
                    return Ok(Reread::All);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Reread::Named)
    }

    /// Puts the freshly read parts into the snapshot and recomputes what derives from them.
    /// `dirty` names the tasks re-read since the last refresh; `None` means all of them.
    fn assemble(
        &mut self,
        cheap: Cheap,
        now: Timestamp,
        dirty: Option<&BTreeSet<TaskId>>,
        snap: &mut Snapshot,
    ) {
        let Cheap {
            mut summary,
            sessions,
            workers,
            locks,
            pools,
        } = cheap;
        let pool_rows: Vec<PoolRow> = pools.into_iter().map(|p| PoolRow::at(p, now)).collect();
        summary.timestamp = now;
        let window_start = Timestamp(now.0 - duration_ms_i64(THROUGHPUT_WINDOW));
        // `retain`, not popping from the front: ends are in commit order, and a backend whose
        // commit order and clock disagree slightly must still count the same as a fresh build.
        self.finishes.retain(|at| *at > window_start);
        let finished = u32::try_from(self.finishes.len()).unwrap_or(u32::MAX);
        snap.throughput = throughput(finished, &sessions, now);

        let mut serving: HashMap<&SessionId, u32> = HashMap::new();
        let mut running_on: HashMap<(&SessionId, &TaskId), &WorkerId> = HashMap::new();
        for w in &workers {
            if w.status.is_live()
                && let Some(s) = &w.session_id
            {
                *serving.entry(s).or_default() += 1;
            }
            if let (Some(s), Some(t)) = (&w.session_id, &w.current_task) {
                running_on.insert((s, t), &w.id);
            }
        }
        let rows: Vec<SessionRow> = sessions
            .into_iter()
            .map(|session| {
                let (elapsed_ms, remaining_ms) = timing(&session, now);
                SessionRow {
                    workers: serving.get(&session.id).copied().unwrap_or(0),
                    session,
                    elapsed_ms,
                    remaining_ms,
                }
            })
            .collect();
        let lock_rows: Vec<LockRow> = locks
            .into_iter()
            .map(|lock| {
                let worker_id = lock
                    .task_id
                    .as_ref()
                    .and_then(|t| running_on.get(&(&lock.session_id, t)))
                    .map(|w| (*w).clone());
                LockRow { lock, worker_id }
            })
            .collect();

        if let Some(selected) = &mut snap.selected {
            let session = rows
                .iter()
                .find(|r| r.session.id == selected.id)
                .map(|r| &r.session);
            selected.ended = session.is_some_and(|s| s.status.is_terminal());
            let lander = session.and_then(|s| s.lander.as_ref());
            selected.landing_task = match lander {
                Some(_) if selected.lands => selected
                    .tasks
                    .iter()
                    .find(|t| t.task.landing == Some(Landing::Waiting))
                    .map(|t| t.task.id.clone()),
                _ => None,
            };
            let recompute: BTreeSet<usize> = match dirty {
                None => (0..selected.tasks.len()).collect(),
                Some(dirty) => {
                    let mut set = self.tasks.lock_blocked.clone();
                    set.extend(self.tasks.pooled.iter().copied());
                    for t in dirty {
                        if let Some(&i) = self.tasks.by_id.get(t) {
                            set.insert(i);
                        }
                        if let Some(deps) = self.tasks.dependents.get(t.as_str()) {
                            set.extend(deps.iter().copied());
                        }
                    }
                    set
                }
            };
            for i in recompute {
                selected.tasks[i].task.forget_released_locks(|h| {
                    lock_rows.iter().any(|l| {
                        h.is(
                            &l.lock.path,
                            &l.lock.session_id,
                            l.lock.task_id.as_ref(),
                            l.lock.attempt,
                        )
                    })
                });
                let waiting = waiting_for(
                    &selected.tasks[i].task,
                    &selected.tasks,
                    &self.tasks.by_id,
                    &lock_rows,
                    &pool_rows,
                    now,
                );
                let row = &mut selected.tasks[i];
                row.waiting_for = waiting;
                let ready = row.task.state == TaskState::Ready;
                if ready && row.task.blocked_by.is_some() {
                    self.tasks.lock_blocked.insert(i);
                } else {
                    self.tasks.lock_blocked.remove(&i);
                }
                if ready && row.task.pool.is_some() {
                    self.tasks.pooled.insert(i);
                } else {
                    self.tasks.pooled.remove(&i);
                }
            }
        }

        snap.now = now;
        snap.summary = summary;
        snap.sessions = rows;
        snap.workers = workers;
        snap.locks = lock_rows;
        snap.pools = pool_rows;
    }
}

/// What every refresh reads whole, because it is small or kept in counters.
struct Cheap {
    summary: Summary,
    /// In display order.
    sessions: Vec<Session>,
    workers: Vec<Worker>,
    locks: Vec<Lock>,
    /// Read whole on every refresh rather than followed through events: a store has a handful
    /// of pools, and a pool changes without an event that names it — its running count with
    /// every task of any session that starts or ends, its park ending by the clock alone.
    pools: Vec<Pool>,
}

impl Cheap {
    fn read(store: &dyn Store, wanted: Option<&SessionId>) -> Result<Cheap> {
        let summary = store.summary()?;
        let mut sessions = store.list_sessions(&SessionFilter {
            status: None,
            limit: Some(SESSION_LIMIT),
        })?;
        let listed_active = sessions.iter().filter(|s| !s.status.is_terminal()).count();
        if usize::try_from(summary.sessions.active).unwrap_or(usize::MAX) > listed_active {
            // Active sessions older than the newest SESSION_LIMIT: list them too, they matter
            // most.
            for status in [
                SessionStatus::Created,
                SessionStatus::Running,
                SessionStatus::Paused,
            ] {
                for s in store.list_sessions(&SessionFilter {
                    status: Some(status),
                    limit: None,
                })? {
                    if !sessions.iter().any(|x| x.id == s.id) {
                        sessions.push(s);
                    }
                }
            }
        }
        if let Some(id) = wanted
            && !sessions.iter().any(|s| &s.id == id)
        {
            match store.session(id) {
                Ok(s) => sessions.push(s),
                Err(StoreError::NoSuchSession(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Active first, newest first within each group. The sort is stable, so sessions created
        // in the same millisecond keep the store's order (the later created first) — not their
        // random ids' — and the newest session is the one shown by default.
        sessions.sort_by(|a, b| {
            a.status
                .is_terminal()
                .cmp(&b.status.is_terminal())
                .then(b.created_at.cmp(&a.created_at))
        });
        let workers = store
            .workers(&WorkerFilter::default())?
            .into_iter()
            .filter(|w| w.status != WorkerStatus::Stopped)
            .collect();
        let locks = store.locks()?;
        let pools = store.pools()?;
        Ok(Cheap {
            summary,
            sessions,
            workers,
            locks,
            pools,
        })
    }

    /// The wanted session if it exists, else the first listed.
    fn choose(&self, wanted: Option<&SessionId>) -> Option<SessionId> {
        wanted
            .and_then(|w| self.sessions.iter().find(|s| &s.id == w))
            .or_else(|| self.sessions.first())
            .map(|s| s.id.clone())
    }
}

/// Reads the event log backwards from `last_seq` until the throughput window and the event log
/// are filled (or the history or the budget runs out). Returns the notable events and the task
/// ends within the window, both oldest first.
fn backfill(
    store: &dyn Store,
    last_seq: i64,
    now: Timestamp,
) -> Result<(Vec<Event>, VecDeque<Timestamp>)> {
    let window_start = Timestamp(now.0 - duration_ms_i64(THROUGHPUT_WINDOW));
    let mut notable: Vec<Event> = Vec::new();
    let mut finishes: Vec<Timestamp> = Vec::new();
    let mut high = last_seq;
    let mut scanned = 0usize;
    while high > 0 && scanned < BACKFILL_MAX_EVENTS {
        let low = (high - BACKFILL_CHUNK).max(0);
        let chunk = store.events(&EventFilter {
            after_seq: Some(low),
            session: None,
            limit: Some(usize::try_from(high - low).unwrap_or(usize::MAX)),
        })?;
        let mut oldest_at = None;
        // Newest first, so both lists can stop at their limits.
        for ev in chunk.iter().rev().filter(|e| e.seq <= high) {
            scanned += 1;
            oldest_at = Some(ev.at);
            if matches!(ev.kind, EventKind::TaskSucceeded | EventKind::TaskFailed)
                && ev.at > window_start
            {
                finishes.push(ev.at);
            }
            if is_notable(ev.kind) && notable.len() < EVENT_LOG_LEN {
                notable.push(ev.clone());
            }
        }
        high = low;
        let window_done = oldest_at.is_some_and(|at| at <= window_start);
        if window_done && notable.len() >= EVENT_LOG_LEN {
            break;
        }
    }
    notable.reverse();
    finishes.reverse();
    Ok((notable, finishes.into()))
}

/// Why a task that has not finished is not running, if it is not.
fn waiting_for(
    task: &Task,
    all: &[TaskRow],
    by_id: &HashMap<TaskId, usize>,
    locks: &[LockRow],
    pools: &[PoolRow],
    now: Timestamp,
) -> Option<Waiting> {
    match task.state {
        TaskState::Pending => {
            let tasks: Vec<String> = task
                .after
                .iter()
                .filter(|dep| {
                    TaskId::new(dep.as_str())
                        .ok()
                        .and_then(|id| by_id.get(&id))
                        .is_none_or(|&i| !all[i].task.releases_dependents())
                })
                .cloned()
                .collect();
            (!tasks.is_empty()).then_some(Waiting::Dependencies { tasks })
        }
        // A claim asks the pool before it looks at locks: a task its pool holds back records
        // no lock conflict, and one it recorded before says nothing about now.
        TaskState::Ready => pool_wait(task.pool.as_deref(), pools, now)
            .or_else(|| lock_wait(task.blocked_by.as_ref()?, locks)),
        _ => None,
    }
}

/// Whether a ready task's pool holds it back at `now`: parked by a rate limit, or full.
fn pool_wait(pool: Option<&str>, pools: &[PoolRow], now: Timestamp) -> Option<Waiting> {
    let pool = &pools
        .iter()
        .find(|p| Some(p.pool.name.as_str()) == pool)?
        .pool;
    Some(Waiting::Pool {
        text: pool.wait_words(now)?,
        pool: pool.name.clone(),
        parked_until: pool.parked_until.filter(|_| pool.parked_at(now)),
    })
}

/// The lock conflict a ready task recorded, reduced to the locks that are still held. A
/// conflict whose locks are all gone is over: the task waits only for a free worker.
fn lock_wait(blocked_by: &BlockedBy, locks: &[LockRow]) -> Option<Waiting> {
    let paths = blocked_by.paths.clone();
    let mut held_by: Vec<LockHolder> = Vec::new();
    for h in &blocked_by.held_by {
        let Some(row) = locks.iter().find(|l| {
            h.is(
                &l.lock.path,
                &l.lock.session_id,
                l.lock.task_id.as_ref(),
                l.lock.attempt,
            )
        }) else {
            continue;
        };
        let holder = LockHolder {
            path: row.lock.path.clone(),
            session_id: row.lock.session_id.clone(),
            task_id: row.lock.task_id.clone(),
            worker_id: row.worker_id.clone(),
        };
        if !held_by.contains(&holder) {
            held_by.push(holder);
        }
    }
    (!held_by.is_empty()).then_some(Waiting::Lock { paths, held_by })
}

/// A session's elapsed time and, from its pace so far, the time it still needs.
fn timing(s: &Session, now: Timestamp) -> (Option<u64>, Option<u64>) {
    let Some(started) = s.started_at else {
        return (None, None);
    };
    let elapsed = s.completed_at.unwrap_or(now).since(started);
    let finished = s.finished_tasks();
    let left = s.total_tasks.saturating_sub(finished);
    let remaining = if left == 0 {
        Some(Duration::ZERO)
    } else if s.status.is_terminal() || finished == 0 || elapsed.is_zero() {
        // A cancelled session's running tasks are ending, not progressing; with nothing
        // finished yet there is no pace to go by.
        None
    } else {
        Some(elapsed.mul_f64(f64::from(left) / f64::from(finished)))
    };
    (Some(duration_ms(elapsed)), remaining.map(duration_ms))
}

/// Tasks per minute over the window, or over the time since work began when that is shorter,
/// so that a session that started a minute ago is not measured against five.
fn throughput(finished: u32, sessions: &[Session], now: Timestamp) -> Throughput {
    let window_start = Timestamp(now.0 - duration_ms_i64(THROUGHPUT_WINDOW));
    let began = sessions
        .iter()
        .filter(|s| s.completed_at.is_none_or(|end| end > window_start))
        .filter_map(|s| s.started_at)
        .min();
    let span = match began {
        Some(began) if began > window_start => now.since(began).max(MIN_RATE_SPAN),
        _ => THROUGHPUT_WINDOW,
    };
    let per_minute = f64::from(finished) * 60.0 / span.as_secs_f64();
    Throughput {
        finished,
        span_ms: duration_ms(span),
        per_minute: (per_minute * 10.0).round() / 10.0,
    }
}

fn trim_front<T>(v: &mut Vec<T>, keep: usize) {
    if v.len() > keep {
        v.drain(..v.len() - keep);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn duration_ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use br_core::outcome::Outcome;
    use br_core::plan::{Isolation, OnConflict, ScopeMode};
    use br_core::state::SessionAction;
    use br_core::{Attempt, LockPath, Plan, TaskSpec};

    use super::*;
    use crate::sqlite::SqliteStore;

    fn spec(id: &str, files: &[&str], after: &[&str], retries: u32) -> TaskSpec {
        TaskSpec {
            id: TaskId::new(id).unwrap(),
            run: format!("echo {id}"),
            files: files.iter().map(|f| LockPath::parse(f).unwrap()).collect(),
            after: after.iter().map(|a| TaskId::new(*a).unwrap()).collect(),
            timeout: None,
            retries,
            env: BTreeMap::new(),
            start: br_core::StartMode::Tip,
            // These tests follow the snapshot, not landing: a success releases at once.
            land: br_core::LandMode::Manual,
            on_conflict: br_core::OnConflict::Requeue,
            max_repairs: br_core::plan::DEFAULT_MAX_REPAIRS,
            prompt: None,
            prompt_file: None,
            agent: None,
            pool: None,
        }
    }

    fn submit(store: &dyn Store, name: &str, tasks: Vec<TaskSpec>, timeout: Duration) -> Session {
        submit_plan(store, plan(name, tasks, timeout))
    }

    fn submit_plan(store: &dyn Store, plan: Plan) -> Session {
        store
            .create_session(&NewSession {
                plan,
                repo_root: PathBuf::from("/repo"),
                repo_id: None,
                plan_path: None,
                base_commit: None,
                workers_wanted: 2,
            })
            .unwrap()
    }

    fn plan(name: &str, tasks: Vec<TaskSpec>, timeout: Duration) -> Plan {
        Plan {
            name: name.to_string(),
            workers: None,
            base: "HEAD".into(),
            isolation: Isolation::Worktree,
            heartbeat_timeout: timeout,
            retries: 0,
            scope: ScopeMode::Report,
            verify: None,
            on_conflict: OnConflict::Requeue,
            start: br_core::StartMode::Tip,
            land: br_core::LandMode::Auto,
            max_repairs: br_core::plan::DEFAULT_MAX_REPAIRS,
            keep: Vec::new(),
            agents: Vec::new(),
            pools: Default::default(),
            copy: Vec::new(),
            setup: None,
            setup_inputs: Vec::new(),
            ports: 0,
            remote: None,
            tasks,
        }
    }

    fn worker(store: &dyn Store, timeout: Duration) -> WorkerId {
        store
            .register_worker(&NewWorker {
                host: "host".into(),
                pid: 1,
                session: None,
                heartbeat_timeout: timeout,
            })
            .unwrap()
    }

    fn claim(store: &dyn Store, w: &WorkerId) -> Option<Lease> {
        claim_in(store, w, None)
    }

    fn claim_in(store: &dyn Store, w: &WorkerId, session: Option<&SessionId>) -> Option<Lease> {
        match store
            .claim_next_task(&ClaimRequest {
                worker: w,
                session,
                log_dir: Path::new("/tmp/br-snapshot-logs"),
                repo_id: None,
                remote_only: false,
            })
            .unwrap()
        {
            Claim::Task(c) => Some(c.lease),
            Claim::Nothing | Claim::Stop | Claim::Land(_) => None,
        }
    }

    /// A from-scratch build at the same instant, to compare an incremental one with.
    fn fresh(store: &dyn Store, wanted: Option<&SessionId>, now: Timestamp) -> Snapshot {
        let mut snap = Snapshot::empty(Timestamp(0));
        SnapshotBuilder::new(wanted.cloned())
            .refresh_at(store, now, &mut snap)
            .unwrap();
        snap
    }

    /// A builder with the snapshot it keeps up to date, as a dashboard holds them.
    struct Live {
        builder: SnapshotBuilder,
        snap: Snapshot,
    }

    impl Live {
        fn new(selected: Option<SessionId>) -> Live {
            Live {
                builder: SnapshotBuilder::new(selected),
                snap: Snapshot::empty(Timestamp(0)),
            }
        }
        fn snapshot(&self) -> &Snapshot {
            &self.snap
        }
        fn select(&mut self, session: Option<SessionId>) {
            self.builder.select(session);
        }
        fn refresh(&mut self, store: &dyn Store) {
            self.builder.refresh(store, &mut self.snap).unwrap();
        }
    }

    fn assert_same(store: &dyn Store, inc: &mut Live, step: &str) {
        let now = store.now().unwrap();
        inc.builder.refresh_at(store, now, &mut inc.snap).unwrap();
        let full = fresh(store, inc.builder.wanted(), now);
        assert_eq!(inc.snapshot(), &full, "after {step}");
    }

    /// Drives a real store through the states a dashboard must follow (dependencies, lock
    /// conflicts, retries, failures with skips, lost leases and stale results, manual locks,
    /// pause, resume, cancel, a worker leaving) and after every step checks that the
    /// incrementally refreshed snapshot equals one built from scratch.
    #[test]
    fn incremental_snapshot_equals_a_fresh_one_after_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
        let store: &dyn Store = &store;
        let mut inc = Live::new(None);
        assert_same(store, &mut inc, "empty store");
        assert_eq!(inc.snapshot().selected, None);

        let build = submit(
            store,
            "build",
            vec![
                spec("schema", &["db"], &[], 0),
                spec("api", &["src/api"], &["schema"], 0),
                spec("app", &["src"], &[], 0),
                spec("flaky", &["src/api/x.rs"], &[], 1),
                spec("docs", &[], &["api", "app"], 0),
                spec("doomed", &[], &[], 0),
                spec("after-doomed", &[], &["doomed"], 0),
                spec("then", &[], &["after-doomed"], 0),
            ],
            Duration::from_secs(30),
        );
        assert_same(store, &mut inc, "submit");
        let other = submit(
            store,
            "other",
            vec![spec("o1", &["shared"], &[], 0), spec("o2", &[], &["o1"], 0)],
            Duration::from_millis(100),
        );
        assert_same(store, &mut inc, "second submit");
        inc.select(Some(build.id.clone()));
        assert_same(store, &mut inc, "select build");

        let w1 = worker(store, Duration::from_secs(30));
        let w2 = worker(store, Duration::from_secs(30));
        let w3 = worker(store, Duration::from_secs(30));
        assert_same(store, &mut inc, "workers");
        let schema = claim(store, &w1).unwrap();
        assert_same(store, &mut inc, "claim schema");
        let app = claim(store, &w2).unwrap();
        assert_eq!(app.task_id.as_str(), "app");
        // `flaky` wants src/api/x.rs, which `app` holds through `src`: it records a conflict.
        let doomed = claim(store, &w3).unwrap();
        assert_eq!(doomed.task_id.as_str(), "doomed");
        assert_same(store, &mut inc, "claims with a lock conflict");
        let flaky_row = inc
            .snapshot()
            .selected
            .as_ref()
            .unwrap()
            .tasks
            .iter()
            .find(|t| t.task.id.as_str() == "flaky")
            .unwrap()
            .clone();
        match &flaky_row.waiting_for {
            Some(Waiting::Lock { paths, held_by }) => {
                assert_eq!(paths, &["src/api/x.rs"]);
                assert_eq!(held_by[0].task_id.as_ref().unwrap().as_str(), "app");
                assert_eq!(held_by[0].worker_id.as_ref(), Some(&w2));
            }
            other => panic!("flaky should wait for a lock, not {other:?}"),
        }
        let docs = &inc.snapshot().selected.as_ref().unwrap().tasks[4];
        assert_eq!(
            docs.waiting_for,
            Some(Waiting::Dependencies {
                tasks: vec!["api".into(), "app".into()]
            })
        );

        store
            .finish_attempt(&doomed, &Outcome::Failed { exit_code: 2 })
            .unwrap();
        assert_same(store, &mut inc, "failure skips dependents");
        store.finish_attempt(&schema, &Outcome::Succeeded).unwrap();
        assert_same(store, &mut inc, "schema succeeds, api ready");
        store.finish_attempt(&app, &Outcome::Succeeded).unwrap();
        assert_same(store, &mut inc, "app releases src");
        let flaky_row = &inc.snapshot().selected.as_ref().unwrap().tasks[3];
        assert_eq!(
            flaky_row.waiting_for, None,
            "the lock it waited for is gone"
        );

        let api = claim(store, &w1).unwrap();
        assert_eq!(api.task_id.as_str(), "api");
        assert_eq!(claim_in(store, &w2, Some(&build.id)), None);
        assert_same(store, &mut inc, "api running, flaky blocked by api");
        store.finish_attempt(&api, &Outcome::Succeeded).unwrap();
        assert_same(store, &mut inc, "api succeeds");
        let flaky = claim_in(store, &w2, Some(&build.id)).unwrap();
        assert_eq!(flaky.task_id.as_str(), "flaky");
        store.finish_attempt(&flaky, &Outcome::TimedOut).unwrap();
        assert_same(store, &mut inc, "flaky timed out, to be retried");

        // A lost lease in the other session: requeue, then the late result is refused.
        let o1 = claim_in(store, &w3, Some(&other.id)).unwrap();
        assert_same(store, &mut inc, "o1 running");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.requeue_expired_leases().unwrap().leases.is_empty() {
            assert!(std::time::Instant::now() < deadline, "lease never expired");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_same(store, &mut inc, "requeued");
        assert_eq!(
            store.finish_attempt(&o1, &Outcome::Succeeded).unwrap(),
            Finish::Stale
        );
        assert_same(store, &mut inc, "stale result");
        inc.select(Some(other.id.clone()));
        assert_same(store, &mut inc, "select other");
        inc.select(Some(build.id.clone()));

        let p = |s: &str| LockPath::parse(s).unwrap();
        store.lock_paths(&other.id, &[p("docs")]).unwrap();
        store.lock_paths(&build.id, &[p("docs/x")]).unwrap();
        assert_same(store, &mut inc, "manual locks");
        store
            .change_session(&build.id, SessionAction::Pause)
            .unwrap();
        assert_same(store, &mut inc, "pause");
        store
            .change_session(&build.id, SessionAction::Resume)
            .unwrap();
        assert_same(store, &mut inc, "resume");
        store
            .append_event(&NewEvent {
                session_id: Some(build.id.clone()),
                task_id: Some(TaskId::new("api").unwrap()),
                worker_id: None,
                attempt: Some(Attempt(1)),
                detail: EventDetail::ScopeViolation(br_core::detail::ScopeViolation {
                    files: vec!["README".into()],
                }),
            })
            .unwrap();
        assert_same(store, &mut inc, "scope violation");
        // A predicted merge conflict names its second task only in the detail.
        store
            .append_event(&NewEvent {
                session_id: Some(build.id.clone()),
                task_id: Some(TaskId::new("api").unwrap()),
                worker_id: None,
                attempt: None,
                detail: EventDetail::MergeConflict(br_core::detail::MergeConflict {
                    files: vec!["src/api/mod.rs".into()],
                    with: "app".into(),
                    tasks: vec!["api".into(), "app".into()],
                    stage: None,
                }),
            })
            .unwrap();
        assert_same(store, &mut inc, "merge conflict");
        let w4 = worker(store, Duration::from_secs(30));
        let running = claim(store, &w4);
        assert_same(store, &mut inc, "claim before stop");
        store.stop_worker(&w4).unwrap();
        assert_same(store, &mut inc, "a worker leaves with its task");
        let _ = running;
        store
            .change_session(&build.id, SessionAction::Cancel)
            .unwrap();
        assert_same(store, &mut inc, "cancel");
        store
            .retry_tasks(&build.id, br_core::retry::RetryScope::All)
            .unwrap();
        assert_same(store, &mut inc, "retry what was cancelled");
        store
            .change_session(&build.id, SessionAction::Cancel)
            .unwrap();
        assert_same(store, &mut inc, "cancel again");
        let snap = inc.snapshot();
        let kinds: Vec<EventKind> = snap.events.iter().map(|e| e.kind).collect();
        for want in [
            EventKind::TaskRequeued,
            EventKind::StaleResultRejected,
            EventKind::LockConflict,
            EventKind::WorkerOffline,
        ] {
            assert!(
                kinds.contains(&want),
                "{want} missing from the log {kinds:?}"
            );
        }
        store.delete_session(&build.id).unwrap();
        assert_same(store, &mut inc, "delete the selected session");
        assert_eq!(
            inc.snapshot().selected.as_ref().map(|s| &s.id),
            Some(&other.id)
        );
    }

    #[test]
    fn landing_as_it_runs_shows_on_each_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
        let store: &dyn Store = &store;
        let mut first = spec("first", &["a"], &[], 0);
        first.land = br_core::LandMode::Auto;
        let mut then = spec("then", &[], &["first"], 0);
        then.land = br_core::LandMode::Auto;
        let s = submit(store, "lands", vec![first, then], Duration::from_secs(30));
        let mut inc = Live::new(Some(s.id.clone()));
        inc.refresh(store);
        let w = worker(store, Duration::from_secs(30));
        let lease = claim(store, &w).unwrap();
        store
            .finish_attempt_with(
                &lease,
                &Outcome::Succeeded,
                &AttemptReport {
                    commit: Some("c0ffee".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_same(store, &mut inc, "succeeded, waiting to land");
        let words = |snap: &Snapshot, id: &str| {
            let selected = snap.selected.as_ref().unwrap();
            let row = selected.tasks.iter().find(|t| t.task.id.as_str() == id);
            selected.landing_words(&row.unwrap().task)
        };
        let selected = inc.snapshot().selected.as_ref().unwrap();
        assert!(selected.lands);
        assert_eq!(words(inc.snapshot(), "first").as_deref(), Some("waiting"));
        assert_eq!(words(inc.snapshot(), "then"), None);
        assert_eq!(
            selected.tasks[1].waiting_for,
            Some(Waiting::Dependencies {
                tasks: vec!["first".into()]
            }),
            "a dependent waits until its dependency landed"
        );
        let Claim::Land(job) = store
            .claim_next_task(&ClaimRequest {
                worker: &w,
                session: None,
                log_dir: Path::new("/tmp/br-snapshot-logs"),
                repo_id: None,
                remote_only: false,
            })
            .unwrap()
        else {
            panic!("the landing turn")
        };
        assert_same(store, &mut inc, "a worker has the landing turn");
        assert_eq!(words(inc.snapshot(), "first").as_deref(), Some("landing"));
        store
            .record_landing(
                &job,
                &TaskId::new("first").unwrap(),
                Attempt(1),
                &LandingResult::Landed {
                    commit: "1234567890abcdef".into(),
                },
            )
            .unwrap();
        assert_same(store, &mut inc, "landed");
        assert_eq!(
            words(inc.snapshot(), "first").as_deref(),
            Some("landed 1234567")
        );
        let selected = inc.snapshot().selected.as_ref().unwrap();
        assert_eq!(selected.tasks[1].waiting_for, None);
        assert_eq!(selected.tasks[1].task.state, TaskState::Ready);
        let manual = submit(
            store,
            "manual",
            vec![spec("x", &[], &[], 0)],
            Duration::from_secs(30),
        );
        inc.select(Some(manual.id.clone()));
        inc.refresh(store);
        assert!(!inc.snapshot().selected.as_ref().unwrap().lands);
    }

    /// A pool shows on its ready tasks as it fills, is parked by one task's rate limit and is
    /// free again when the park ends — which no event says: the snapshot follows it by the
    /// clock, and an incremental refresh still equals a fresh build at every step.
    #[test]
    fn a_pool_shows_on_its_waiting_tasks_and_its_park_ends_by_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
        let store: &dyn Store = &store;
        let pooled = |id: &str| TaskSpec {
            pool: Some("p".into()),
            ..spec(id, &[], &[], 0)
        };
        let mut pooled_plan = plan(
            "pooled",
            vec![pooled("a"), pooled("b"), spec("free", &[], &[], 0)],
            Duration::from_secs(30),
        );
        pooled_plan.pools.insert(
            "p".into(),
            br_core::agent::PoolSpec {
                size: 1,
                backoff: Duration::from_millis(600),
            },
        );
        let s = submit_plan(store, pooled_plan);
        let mut inc = Live::new(Some(s.id.clone()));
        assert_same(store, &mut inc, "submit");
        let waits = |inc: &Live| -> Vec<Option<String>> {
            inc.snapshot().selected.as_ref().unwrap().tasks[..2]
                .iter()
                .map(|t| match &t.waiting_for {
                    Some(Waiting::Pool { text, .. }) => Some(text.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(waits(&inc), [None, None]);
        let pool = &inc.snapshot().pools[0];
        assert_eq!(
            (
                pool.pool.name.as_str(),
                pool.pool.running_words(),
                pool.parked()
            ),
            ("p", "0/1 running".to_string(), false)
        );

        let w = worker(store, Duration::from_secs(30));
        let a = claim_in(store, &w, Some(&s.id)).unwrap();
        assert_eq!(a.task_id.as_str(), "a");
        assert_same(store, &mut inc, "a fills the pool");
        assert_eq!(
            waits(&inc),
            [None, Some("waiting: pool p full (1/1 running)".to_string())]
        );

        store
            .finish_attempt(
                &a,
                &Outcome::RateLimited {
                    reason: "usage limit reached".into(),
                    resets_at_ms: None,
                },
            )
            .unwrap();
        assert_same(store, &mut inc, "a's rate limit parks the pool");
        let snap = inc.snapshot();
        let pool = &snap.pools[0];
        assert!(pool.parked(), "{pool:?}");
        assert_eq!(
            pool.pool.parked_reason.as_deref(),
            Some("usage limit reached")
        );
        let words = pool.parked_text.clone().unwrap();
        assert!(words.starts_with("parked until "), "{words}");
        assert_eq!(
            waits(&inc),
            vec![Some(format!("waiting: pool p {words}")); 2],
            "both of its ready tasks wait for the pool"
        );
        assert!(snap.events.iter().any(|e| e.kind == EventKind::PoolParked));
        // The task that is in no pool runs meanwhile.
        let free = claim_in(store, &w, Some(&s.id)).unwrap();
        assert_eq!(free.task_id.as_str(), "free");
        store.finish_attempt(&free, &Outcome::Succeeded).unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert_same(store, &mut inc, "waiting for the park to end");
            if !inc.snapshot().pools[0].parked() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the park never ended");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(waits(&inc), [None, None], "the park ended by the clock");
    }

    /// Many random operations on a bigger session, checked against a fresh build every few
    /// steps, with the re-read threshold crossed both ways.
    #[test]
    fn incremental_snapshot_follows_random_operations() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
        let store: &dyn Store = &store;
        let mut rng = fastrand::Rng::with_seed(11);
        let files = ["a", "b", "c", "d/e", "d"];
        let tasks: Vec<TaskSpec> = (0..300)
            .map(|i| {
                let f = files[rng.usize(..files.len())];
                let after = if i > 10 && rng.u8(..4) == 0 {
                    vec![format!("t{}", rng.usize(..i))]
                } else {
                    vec![]
                };
                let after: Vec<&str> = after.iter().map(String::as_str).collect();
                spec(&format!("t{i}"), &[f], &after, rng.u32(..2))
            })
            .collect();
        let s = submit(store, "big", tasks, Duration::from_secs(30));
        let workers: Vec<WorkerId> = (0..6)
            .map(|_| worker(store, Duration::from_secs(30)))
            .collect();
        let mut running: Vec<Lease> = Vec::new();
        let mut inc = Live::new(Some(s.id.clone()));
        for step in 0..400 {
            match rng.u8(..10) {
                0..=4 => {
                    let w = &workers[rng.usize(..workers.len())];
                    if !running.iter().any(|l| &l.worker_id == w)
                        && let Some(l) = claim(store, w)
                    {
                        running.push(l);
                    }
                }
                _ if !running.is_empty() => {
                    let l = running.swap_remove(rng.usize(..running.len()));
                    let outcome = if rng.u8(..5) == 0 {
                        Outcome::Failed { exit_code: 1 }
                    } else {
                        Outcome::Succeeded
                    };
                    store.finish_attempt(&l, &outcome).unwrap();
                }
                _ => {}
            }
            // Steps 100 to 299 go unchecked, so that one refresh sees more changed tasks than
            // it re-reads one by one.
            let quiet = (100..300).contains(&step);
            if !quiet && (step % 7 == 0 || rng.u8(..10) == 0) {
                assert_same(store, &mut inc, &format!("step {step}"));
            }
        }
        assert_same(store, &mut inc, "the end");
    }

    /// A store that counts how often the expensive reads happen, delegating everything to a
    /// real store.
    #[derive(Debug)]
    struct Counting<'a> {
        inner: &'a dyn Store,
        tasks: AtomicUsize,
        task: AtomicUsize,
    }

    impl Store for Counting<'_> {
        fn now(&self) -> Result<Timestamp> {
            self.inner.now()
        }
        fn create_session(&self, new: &NewSession) -> Result<Session> {
            self.inner.create_session(new)
        }
        fn session(&self, id: &SessionId) -> Result<Session> {
            self.inner.session(id)
        }
        fn resolve_session(&self, reference: &str) -> Result<Session> {
            self.inner.resolve_session(reference)
        }
        fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>> {
            self.inner.list_sessions(filter)
        }
        fn change_session(&self, id: &SessionId, action: SessionAction) -> Result<Session> {
            self.inner.change_session(id, action)
        }
        fn set_workers_wanted(&self, id: &SessionId, workers: u32) -> Result<()> {
            self.inner.set_workers_wanted(id, workers)
        }
        fn tasks(&self, session: &SessionId) -> Result<Vec<Task>> {
            self.tasks.fetch_add(1, Ordering::Relaxed);
            self.inner.tasks(session)
        }
        fn task(&self, session: &SessionId, task: &TaskId) -> Result<Task> {
            self.task.fetch_add(1, Ordering::Relaxed);
            self.inner.task(session, task)
        }
        fn attempts(&self, session: &SessionId, task: &TaskId) -> Result<Vec<AttemptRecord>> {
            self.inner.attempts(session, task)
        }
        fn history(&self, session: &SessionId) -> Result<SessionHistory> {
            self.inner.history(session)
        }
        fn task_prompt(&self, session: &SessionId, task: &TaskId) -> Result<Option<String>> {
            self.inner.task_prompt(session, task)
        }
        fn task_events(&self, session: &SessionId, task: &TaskId) -> Result<Vec<Event>> {
            self.inner.task_events(session, task)
        }
        fn delete_session(&self, id: &SessionId) -> Result<()> {
            self.inner.delete_session(id)
        }
        fn append_log(&self, lease: &Lease, offset: u64, bytes: &[u8]) -> Result<()> {
            self.inner.append_log(lease, offset, bytes)
        }
        fn read_log(
            &self,
            session: &SessionId,
            task: &TaskId,
            attempt: Attempt,
            from: u64,
        ) -> Result<Vec<u8>> {
            self.inner.read_log(session, task, attempt, from)
        }
        fn register_worker(&self, new: &NewWorker) -> Result<WorkerId> {
            self.inner.register_worker(new)
        }
        fn heartbeat(&self, worker: &WorkerId, lease: Option<&Lease>) -> Result<Heartbeat> {
            self.inner.heartbeat(worker, lease)
        }
        fn claim_next_task(&self, request: &ClaimRequest<'_>) -> Result<Claim> {
            self.inner.claim_next_task(request)
        }
        fn finish_attempt_with(
            &self,
            lease: &Lease,
            outcome: &Outcome,
            report: &AttemptReport,
        ) -> Result<Finish> {
            self.inner.finish_attempt_with(lease, outcome, report)
        }
        fn finish_attempt_and_claim(
            &self,
            lease: &Lease,
            outcome: &Outcome,
            report: &AttemptReport,
            next: &ClaimRequest<'_>,
        ) -> Result<(Finish, Claim)> {
            self.inner
                .finish_attempt_and_claim(lease, outcome, report, next)
        }
        fn requeue_task(
            &self,
            session: &SessionId,
            task: &TaskId,
            base_commit: &str,
            reason: &str,
            why: br_core::RunReason,
        ) -> Result<Task> {
            self.inner
                .requeue_task(session, task, base_commit, reason, why)
        }
        fn retry_tasks(
            &self,
            session: &SessionId,
            scope: br_core::retry::RetryScope<'_>,
        ) -> Result<Retried> {
            self.inner.retry_tasks(session, scope)
        }
        fn next_landing(&self, job: &LandingJob) -> Result<NextLanding> {
            self.inner.next_landing(job)
        }
        fn record_landing(
            &self,
            job: &LandingJob,
            task: &TaskId,
            attempt: br_core::Attempt,
            result: &LandingResult,
        ) -> Result<LandingRecorded> {
            self.inner.record_landing(job, task, attempt, result)
        }
        fn renew_landing(&self, job: &LandingJob) -> Result<bool> {
            self.inner.renew_landing(job)
        }
        fn requeue_expired_leases(&self) -> Result<Expired> {
            self.inner.requeue_expired_leases()
        }
        fn request_worker_stops(&self, session: &SessionId, count: u32) -> Result<Vec<WorkerId>> {
            self.inner.request_worker_stops(session, count)
        }
        fn stop_worker(&self, worker: &WorkerId) -> Result<()> {
            self.inner.stop_worker(worker)
        }
        fn workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>> {
            self.inner.workers(filter)
        }
        fn worker(&self, id: &WorkerId) -> Result<Worker> {
            self.inner.worker(id)
        }
        fn prune_workers(&self, before: Timestamp) -> Result<u32> {
            self.inner.prune_workers(before)
        }
        fn lock_paths(&self, session: &SessionId, paths: &[LockPath]) -> Result<LockOutcome> {
            self.inner.lock_paths(session, paths)
        }
        fn unlock_paths(
            &self,
            session: &SessionId,
            paths: Option<&[LockPath]>,
        ) -> Result<Vec<String>> {
            self.inner.unlock_paths(session, paths)
        }
        fn locks(&self) -> Result<Vec<Lock>> {
            self.inner.locks()
        }
        fn pools(&self) -> Result<Vec<Pool>> {
            self.inner.pools()
        }
        fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
            self.inner.events(filter)
        }
        fn append_event(&self, event: &NewEvent) -> Result<Event> {
            self.inner.append_event(event)
        }
        fn last_seq(&self) -> Result<i64> {
            self.inner.last_seq()
        }
        fn wait_for_change(&self, timeout: Duration) -> Result<()> {
            self.inner.wait_for_change(timeout)
        }
        fn summary(&self) -> Result<Summary> {
            self.inner.summary()
        }
    }

    #[test]
    fn a_refresh_reads_only_the_tasks_its_events_name() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(&dir.path().join("br.db")).unwrap();
        let store = Counting {
            inner: &sqlite,
            tasks: AtomicUsize::new(0),
            task: AtomicUsize::new(0),
        };
        let tasks = (0..500)
            .map(|i| spec(&format!("t{i}"), &[], &[], 0))
            .collect();
        let s = submit(&store, "wide", tasks, Duration::from_secs(30));
        let w = worker(&store, Duration::from_secs(30));
        let mut b = Live::new(None);
        b.refresh(&store);
        assert_eq!(b.snapshot().selected.as_ref().unwrap().tasks.len(), 500);
        assert_eq!(store.tasks.load(Ordering::Relaxed), 1, "one full read");
        b.refresh(&store);
        assert_eq!(
            (
                store.tasks.load(Ordering::Relaxed),
                store.task.load(Ordering::Relaxed)
            ),
            (1, 0),
            "nothing changed, no task read"
        );
        let lease = claim(&store, &w).unwrap();
        store.finish_attempt(&lease, &Outcome::Succeeded).unwrap();
        b.refresh(&store);
        assert_eq!(
            (
                store.tasks.load(Ordering::Relaxed),
                store.task.load(Ordering::Relaxed)
            ),
            (1, 1),
            "one task changed, one task read"
        );
        // A snapshot the builder did not leave is rebuilt, not patched.
        let mut other = Snapshot::empty(Timestamp(0));
        b.builder.refresh(&store, &mut other).unwrap();
        assert_eq!(store.tasks.load(Ordering::Relaxed), 2, "a second full read");
        assert_eq!(other.selected, b.snapshot().selected);
        let snap = b.snapshot();
        assert_eq!(snap.sessions[0].session.id, s.id);
        assert_eq!(snap.sessions[0].session.succeeded_tasks, 1);
        assert_eq!(snap.throughput.finished, 1);
        assert_eq!(
            snap.selected.as_ref().unwrap().tasks[0].task.state,
            TaskState::Succeeded
        );
    }

    #[test]
    fn pace_gives_elapsed_and_remaining_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("br.db")).unwrap();
        let mut session = submit(
            &store,
            "p",
            (0..4)
                .map(|i| spec(&format!("t{i}"), &[], &[], 0))
                .collect(),
            Duration::from_secs(30),
        );
        assert_eq!(timing(&session, Timestamp(1_000)), (None, None));
        session.started_at = Some(Timestamp(1_000));
        session.succeeded_tasks = 1;
        // One of four took 10 s: three more take 30 s.
        assert_eq!(
            timing(&session, Timestamp(11_000)),
            (Some(10_000), Some(30_000))
        );
        session.status = SessionStatus::Completed;
        session.succeeded_tasks = 4;
        session.completed_at = Some(Timestamp(21_000));
        assert_eq!(timing(&session, Timestamp(99_000)), (Some(20_000), Some(0)));
        // Two finished 60 s after work began: 2 per minute, not 2 per five minutes.
        let mut running = session.clone();
        running.completed_at = None;
        running.started_at = Some(Timestamp(1_000_000));
        let t = throughput(2, &[running], Timestamp(1_060_000));
        assert_eq!((t.span_ms, t.per_minute), (60_000, 2.0));
        let idle = throughput(0, &[], Timestamp(1_060_000));
        assert_eq!((idle.span_ms, idle.per_minute), (300_000, 0.0));
    }
}
