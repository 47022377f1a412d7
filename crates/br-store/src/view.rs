//! The JSON shapes of br's outputs, written down once: one `Serialize` view per shape DESIGN.md
//! names, which the CLI's `--json` and the web API both print, so the two cannot drift apart.
//!
//! | shape | view |
//! |---|---|
//! | `br summary --json`, `GET /api/summary` | [`SummaryView`] |
//! | `br status --json`, `br run --json`, `GET /api/sessions/{id}` | [`StatusView`] |
//! | `GET /api/sessions/{id}/tasks/{task}` | [`TaskDetailView`] of [`AttemptView`]s |
//! | `GET /api/sessions/{id}/history` | [`HistoryView`] |
//! | `br list --json`, `GET /api/sessions` | [`SessionListView`] of [`SessionView`]s |
//! | `br workers --json`, `GET /api/workers` | [`WorkerListView`] of [`WorkerView`]s |
//! | `br locks --json`, `GET /api/locks` | [`LockListView`] of [`LockView`]s |
//! | each `br events --json` line, `GET /api/events` | [`EventView`] |
//! | `br pools --json`, `GET /api/pools` | [`PoolListView`] of [`PoolView`]s |
//!
//! Field names and their order are the contract: DESIGN.md lists the fields every consumer may
//! rely on, and the views keep the extra ones br has always printed after or between them. The
//! records' own `Serialize` (a session in a `pause --json`, the dashboards' snapshot) goes
//! through the same views. Insta snapshots of every shape are in `crates/br/tests/json.rs`.

use br_core::detail::LockConflict as BlockedBy;
use br_core::plan::{Isolation, OnConflict, ScopeMode};
use br_core::{Attempt, EventDetail, EventKind, OutcomeKind, SessionId, SessionStatus, TaskId};
use br_core::{Landing, TaskState, Timestamp, WorkerId, WorkerStatus};
use serde::{Serialize, Serializer};

use crate::Store;
use crate::error::Result;
use crate::model::*;

/// One session: the session fields of `br status --json`, and each entry of `br list --json`.
#[derive(Debug, Serialize)]
pub struct SessionView<'a> {
    id: &'a SessionId,
    name: &'a str,
    slug: &'a str,
    status: SessionStatus,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    completed_at: Option<Timestamp>,
    progress_percent: f64,
    total_tasks: u32,
    /// The succeeded tasks, under the name DESIGN.md fixes (BuildRunner's word for them).
    completed_tasks: u32,
    failed_tasks: u32,
    running_tasks: u32,
    queued_tasks: u32,
    skipped_tasks: u32,
    cancelled_tasks: u32,
    repo_root: &'a str,
    /// The repository's identity: the workers that claim its tasks serve the same one.
    repo_id: Option<&'a str>,
    plan_path: Option<&'a str>,
    base: &'a str,
    base_commit: Option<&'a str>,
    isolation: Isolation,
    scope: ScopeMode,
    verify: Option<&'a str>,
    on_conflict: OnConflict,
    heartbeat_timeout_ms: u64,
    workers_wanted: u32,
    /// Tasks whose work is on the integration branch, and the branch's tip.
    landed_tasks: u32,
    integration_commit: Option<&'a str>,
    /// What its tasks' attempts spent (tokens and dollars, as tasks and agents reported).
    usage: br_core::agent::Usage,
}

impl<'a> From<&'a Session> for SessionView<'a> {
    fn from(s: &'a Session) -> Self {
        SessionView {
            id: &s.id,
            name: &s.name,
            slug: &s.slug,
            status: s.status,
            created_at: s.created_at,
            started_at: s.started_at,
            completed_at: s.completed_at,
            progress_percent: s.progress_percent,
            total_tasks: s.total_tasks,
            completed_tasks: s.succeeded_tasks,
            failed_tasks: s.failed_tasks,
            running_tasks: s.running_tasks,
            queued_tasks: s.queued_tasks,
            skipped_tasks: s.skipped_tasks,
            cancelled_tasks: s.cancelled_tasks,
            repo_root: &s.repo_root,
            repo_id: s.repo_id.as_deref(),
            plan_path: s.plan_path.as_deref(),
            base: &s.base,
            base_commit: s.base_commit.as_deref(),
            isolation: s.isolation,
            scope: s.scope,
            verify: s.verify.as_deref(),
            on_conflict: s.on_conflict,
            heartbeat_timeout_ms: s.heartbeat_timeout_ms,
            workers_wanted: s.workers_wanted,
            landed_tasks: s.landed_tasks,
            integration_commit: s.integration_commit.as_deref(),
            usage: s.usage,
        }
    }
}

/// One task: each entry of `tasks` in `br status --json`.
#[derive(Debug, Serialize)]
pub struct TaskView<'a> {
    id: &'a TaskId,
    state: TaskState,
    attempts: u32,
    worker_id: Option<&'a WorkerId>,
    branch: Option<&'a str>,
    exit_code: Option<i32>,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    files: &'a [String],
    after: &'a [String],
    log_path: Option<&'a str>,
    run: &'a str,
    outcome: Option<OutcomeKind>,
    blocked_by: Option<&'a BlockedBy>,
    timeout_ms: Option<u64>,
    retries: u32,
    base_commit: Option<&'a str>,
    scope_violations: &'a [String],
    conflicts: &'a [TaskConflict],
    /// Where its succeeded work is: none in shared isolation (or before it succeeds).
    landing: Option<Landing>,
    landed_commit: Option<&'a str>,
    repairs: u32,
    /// The coding agent it runs (a profile name) and its pool.
    agent: Option<&'a str>,
    pool: Option<&'a str>,
    /// What its attempts spent.
    usage: br_core::agent::Usage,
}

impl<'a> From<&'a Task> for TaskView<'a> {
    fn from(t: &'a Task) -> Self {
        TaskView {
            id: &t.id,
            state: t.state,
            attempts: t.attempts,
            worker_id: t.worker_id.as_ref(),
            branch: t.branch.as_deref(),
            exit_code: t.exit_code,
            started_at: t.started_at,
            finished_at: t.finished_at,
            files: &t.files,
            after: &t.after,
            log_path: t.log_path.as_deref(),
            run: &t.run,
            outcome: t.outcome,
            blocked_by: t.blocked_by.as_ref(),
            timeout_ms: t.timeout_ms,
            retries: t.retries,
            base_commit: t.base_commit.as_deref(),
            scope_violations: &t.scope_violations,
            conflicts: &t.conflicts,
            landing: t.landing,
            landed_commit: t.landed_commit.as_deref(),
            repairs: t.repairs,
            agent: t.agent.as_deref(),
            pool: t.pool.as_deref(),
            usage: t.usage,
        }
    }
}

/// One worker: each entry of `br workers --json`.
#[derive(Debug, Serialize)]
pub struct WorkerView<'a> {
    id: &'a WorkerId,
    status: WorkerStatus,
    host: &'a str,
    pid: u32,
    session_id: Option<&'a SessionId>,
    current_task: Option<&'a TaskId>,
    attempt: Option<Attempt>,
    tasks_completed: u32,
    tasks_failed: u32,
    last_heartbeat: Timestamp,
    started_at: Timestamp,
    task_started_at: Option<Timestamp>,
    stop_requested: bool,
}

impl<'a> From<&'a Worker> for WorkerView<'a> {
    fn from(w: &'a Worker) -> Self {
        WorkerView {
            id: &w.id,
            status: w.status,
            host: &w.host,
            pid: w.pid,
            session_id: w.session_id.as_ref(),
            current_task: w.current_task.as_ref(),
            attempt: w.attempt,
            tasks_completed: w.tasks_completed,
            tasks_failed: w.tasks_failed,
            last_heartbeat: w.last_heartbeat,
            started_at: w.started_at,
            task_started_at: w.task_started_at,
            stop_requested: w.stop_requested,
        }
    }
}

/// One held lock: each entry of `br locks --json`.
#[derive(Debug, Serialize)]
pub struct LockView<'a> {
    path: &'a str,
    session_id: &'a SessionId,
    task_id: Option<&'a TaskId>,
    attempt: Option<Attempt>,
    acquired_at: Timestamp,
}

impl<'a> From<&'a Lock> for LockView<'a> {
    fn from(l: &'a Lock) -> Self {
        LockView {
            path: &l.path,
            session_id: &l.session_id,
            task_id: l.task_id.as_ref(),
            attempt: l.attempt,
            acquired_at: l.acquired_at,
        }
    }
}

/// One pool: each entry of `br pools --json` and `GET /api/pools`, and each of the dashboards'
/// pools.
#[derive(Debug, Serialize)]
pub struct PoolView<'a> {
    name: &'a str,
    /// At most this many of its tasks run at once, across every session and machine; none: no
    /// cap.
    size: Option<u32>,
    /// Its tasks running now.
    running: u32,
    /// How long a rate limit parks it.
    backoff_ms: u64,
    /// Whether a rate limit parks it now, by the store's clock: `parked_until` and
    /// `parked_reason` stay after the park is over, as the last one.
    parked: bool,
    parked_until: Option<Timestamp>,
    /// The output line that showed the rate limit.
    parked_reason: Option<&'a str>,
}

impl<'a> PoolView<'a> {
    /// `pool` as the store's clock finds it at `now`.
    pub fn at(pool: &'a Pool, now: Timestamp) -> PoolView<'a> {
        PoolView::parked_as(pool, pool.parked_at(now))
    }

    /// `pool`, parked or not as its reader found it at its own clock (the snapshot's).
    pub(crate) fn parked_as(pool: &'a Pool, parked: bool) -> PoolView<'a> {
        PoolView {
            name: &pool.name,
            size: pool.size,
            running: pool.running,
            backoff_ms: pool.backoff_ms,
            parked,
            parked_until: pool.parked_until,
            parked_reason: pool.parked_reason.as_deref(),
        }
    }
}

/// One event: each line of `br events --json`, each entry of `GET /api/events`. The detail is
/// the JSON object of its kind, as stored.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    seq: i64,
    at: Timestamp,
    kind: EventKind,
    session_id: Option<&'a SessionId>,
    task_id: Option<&'a TaskId>,
    worker_id: Option<&'a WorkerId>,
    attempt: Option<Attempt>,
    detail: &'a EventDetail,
}

impl<'a> From<&'a Event> for EventView<'a> {
    fn from(e: &'a Event) -> Self {
        EventView {
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            session_id: e.session_id.as_ref(),
            task_id: e.task_id.as_ref(),
            worker_id: e.worker_id.as_ref(),
            attempt: e.attempt,
            detail: &e.detail,
        }
    }
}

/// An event as the dashboards' snapshot carries it: its view, and its detail in words
/// ([`EventDetail::describe`]), so the web page shows what the terminal shows.
#[derive(Debug, Serialize)]
pub struct DescribedEventView<'a> {
    #[serde(flatten)]
    event: EventView<'a>,
    text: Option<String>,
}

impl<'a> From<&'a Event> for DescribedEventView<'a> {
    fn from(e: &'a Event) -> Self {
        DescribedEventView {
            event: EventView::from(e),
            text: e.detail.describe(),
        }
    }
}

/// `br summary --json`: BuildRunner's summary, plus running tasks.
#[derive(Debug, Serialize)]
pub struct SummaryView<'a> {
    timestamp: Timestamp,
    workers: &'a WorkerCounts,
    sessions: &'a SessionCounts,
    tasks: &'a TaskCounts,
    /// What every session's attempts spent.
    usage: br_core::agent::Usage,
}

impl<'a> From<&'a Summary> for SummaryView<'a> {
    fn from(s: &'a Summary) -> Self {
        SummaryView {
            timestamp: s.timestamp,
            workers: &s.workers,
            sessions: &s.sessions,
            tasks: &s.tasks,
            usage: s.usage,
        }
    }
}

/// `br status --json`: the session's fields, then its tasks in plan order.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub session: Session,
    pub tasks: Vec<Task>,
}

impl StatusView {
    /// The session's tasks as they are now.
    pub fn read(store: &dyn Store, session: Session) -> Result<StatusView> {
        let tasks = store.tasks(&session.id)?;
        Ok(StatusView { session, tasks })
    }
}

impl Serialize for StatusView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            #[serde(flatten)]
            session: SessionView<'a>,
            tasks: Vec<TaskView<'a>>,
        }
        Shape {
            session: SessionView::from(&self.session),
            tasks: self.tasks.iter().map(TaskView::from).collect(),
        }
        .serialize(s)
    }
}

/// One attempt of a task, as `GET /api/sessions/S/tasks/T` lists them.
#[derive(Debug, Serialize)]
pub struct AttemptView<'a> {
    attempt: Attempt,
    reason: Option<br_core::RunReason>,
    outcome: Option<OutcomeKind>,
    exit_code: Option<i32>,
    worker_id: &'a WorkerId,
    started_at: Timestamp,
    finished_at: Option<Timestamp>,
    /// From start to end; none while it runs.
    duration_ms: Option<i64>,
    /// The commit that keeps what it left (as `BR_CONTEXT_FILE`'s `previous.ref`): none when it
    /// changed nothing, has not ended, or ran in shared isolation.
    #[serde(rename = "ref")]
    commit: Option<&'a str>,
    usage: br_core::agent::Usage,
    /// The commit it started from.
    start_commit: Option<&'a str>,
}

impl<'a> From<&'a AttemptRecord> for AttemptView<'a> {
    fn from(a: &'a AttemptRecord) -> Self {
        AttemptView {
            attempt: a.attempt,
            reason: a.reason,
            outcome: a.outcome,
            exit_code: a.exit_code,
            worker_id: &a.worker_id,
            started_at: a.started_at,
            finished_at: a.finished_at,
            duration_ms: a.finished_at.map(|end| end.0 - a.started_at.0),
            commit: a.detail.get("commit").and_then(serde_json::Value::as_str),
            usage: a.usage,
            start_commit: a.start_commit.as_deref(),
        }
    }
}

/// `GET /api/sessions/S/tasks/T`: the task as in `br status --json`, plus its `attempts` and
/// its `prompt` (none for a command).
#[derive(Debug, Clone)]
pub struct TaskDetailView {
    pub task: Task,
    pub attempts: Vec<AttemptRecord>,
    pub prompt: Option<String>,
}

impl TaskDetailView {
    pub fn read(store: &dyn Store, session: &SessionId, task: &TaskId) -> Result<TaskDetailView> {
        Ok(TaskDetailView {
            task: store.task(session, task)?,
            attempts: store.attempts(session, task)?,
            prompt: store.task_prompt(session, task)?,
        })
    }
}

impl Serialize for TaskDetailView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            #[serde(flatten)]
            task: TaskView<'a>,
            attempts: Vec<AttemptView<'a>>,
            prompt: Option<&'a str>,
        }
        Shape {
            task: TaskView::from(&self.task),
            attempts: self.attempts.iter().map(AttemptView::from).collect(),
            prompt: self.prompt.as_deref(),
        }
        .serialize(s)
    }
}

/// `GET /api/sessions/S/history`: what a run page draws — every attempt of the session (its
/// timeline: who ran what, when, how it ended) and its landing record (what landed on the
/// integration branch, when, at which commit, what conflicted or failed to verify, and what
/// waits to land), with
/// the store's time for the bars of attempts still running.
#[derive(Debug, Clone)]
pub struct HistoryView {
    pub session: SessionId,
    pub now: Timestamp,
    pub history: SessionHistory,
}

impl HistoryView {
    pub fn read(store: &dyn Store, session: &SessionId) -> Result<HistoryView> {
        Ok(HistoryView {
            history: store.history(session)?,
            now: store.now()?,
            session: session.clone(),
        })
    }
}

impl Serialize for HistoryView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        /// The attempts ([`SessionAttempt`]s) as columns, one array per field, the i-th
        /// attempt at index i of each: 20,000 bars are 2 MB of JSON instead of 3.8 MB as
        /// objects, and a browser parses them in half the time.
        #[derive(Serialize, Default)]
        struct Columns<'a> {
            task_id: Vec<&'a TaskId>,
            attempt: Vec<Attempt>,
            reason: Vec<Option<br_core::RunReason>>,
            outcome: Vec<Option<OutcomeKind>>,
            worker_id: Vec<&'a WorkerId>,
            started_at: Vec<Timestamp>,
            finished_at: Vec<Option<Timestamp>>,
        }
        #[derive(Serialize)]
        struct Shape<'a> {
            session_id: &'a SessionId,
            now: Timestamp,
            attempts: Columns<'a>,
            landing: Vec<DescribedEventView<'a>>,
            waiting: &'a [TaskId],
        }
        let mut attempts = Columns::default();
        for a in &self.history.attempts {
            attempts.task_id.push(&a.task_id);
            attempts.attempt.push(a.attempt);
            attempts.reason.push(a.reason);
            attempts.outcome.push(a.outcome);
            attempts.worker_id.push(&a.worker_id);
            attempts.started_at.push(a.started_at);
            attempts.finished_at.push(a.finished_at);
        }
        Shape {
            session_id: &self.session,
            now: self.now,
            attempts,
            landing: self
                .history
                .landing
                .iter()
                .map(DescribedEventView::from)
                .collect(),
            waiting: &self.history.waiting,
        }
        .serialize(s)
    }
}

/// `br list --json`: sessions, newest first.
#[derive(Debug, Clone)]
pub struct SessionListView(pub Vec<Session>);

impl SessionListView {
    pub fn read(store: &dyn Store, filter: &SessionFilter) -> Result<SessionListView> {
        store.list_sessions(filter).map(SessionListView)
    }
}

impl Serialize for SessionListView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SessionView::from))
    }
}

/// Which workers `br workers` lists: stopped ones have left, and are listed only when asked
/// for (`--all`, or `--status stopped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerListing {
    pub status: Option<WorkerStatus>,
    pub include_stopped: bool,
}

/// `br workers --json`.
#[derive(Debug, Clone)]
pub struct WorkerListView(pub Vec<Worker>);

impl WorkerListView {
    pub fn read(store: &dyn Store, listing: WorkerListing) -> Result<WorkerListView> {
        let all = listing.include_stopped || listing.status.is_some();
        let workers = store
            .workers(&WorkerFilter {
                status: listing.status,
                session: None,
            })?
            .into_iter()
            .filter(|w| all || w.status != WorkerStatus::Stopped)
            .collect();
        Ok(WorkerListView(workers))
    }
}

impl Serialize for WorkerListView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(WorkerView::from))
    }
}

/// `br locks --json`: locks held now, oldest first.
#[derive(Debug, Clone)]
pub struct LockListView(pub Vec<Lock>);

impl LockListView {
    pub fn read(store: &dyn Store) -> Result<LockListView> {
        store.locks().map(LockListView)
    }
}

impl Serialize for LockListView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(LockView::from))
    }
}

/// `br pools --json`, `GET /api/pools`: the store's pools by name, and the clock they were read
/// at (whether each is parked depends on it).
#[derive(Debug, Clone)]
pub struct PoolListView {
    pub pools: Vec<Pool>,
    pub now: Timestamp,
}

impl PoolListView {
    pub fn read(store: &dyn Store) -> Result<PoolListView> {
        // The clock first, so that a pool parked between the two reads shows as parked.
        let now = store.now()?;
        let pools = store.pools()?;
        Ok(PoolListView { pools, now })
    }
}

impl Serialize for PoolListView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.pools.iter().map(|p| PoolView::at(p, self.now)))
    }
}

/// The dashboards' snapshot serialises its events with their words (see
/// [`DescribedEventView`]).
pub(crate) fn described_events<S: Serializer>(
    events: &[Event],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(events.iter().map(DescribedEventView::from))
}

/// A record's JSON is its view's.
macro_rules! serialize_as_view {
    ($($record:ty => $view:ident),* $(,)?) => {$(
        impl Serialize for $record {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                $view::from(self).serialize(s)
            }
        }
    )*};
}
serialize_as_view!(
    Session => SessionView,
    Task => TaskView,
    Worker => WorkerView,
    Lock => LockView,
    Event => EventView,
    Summary => SummaryView,
);
