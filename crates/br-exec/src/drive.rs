//! Driving a session to its end with a local pool of workers: the run lifecycle of `br run`,
//! `br start`, `br resume` and the demo, as a library. It keeps the pool at the session's size,
//! requeues expired leases when every worker is gone, gives up on workers that die as they
//! start, waits out a store that cannot be reached, and stops cleanly on an interrupt (the
//! session is left paused, its running tasks stopped and queued again). What happens is told to
//! the caller as [`DriveEvent`]s; how it ended is a [`DriveEnd`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use br_core::SessionStatus;
use br_core::Timestamp;
use br_core::state::SessionAction;
use br_git::Repo;
use br_git::worktree::{KEEP_SLOTS, ReconcileMode, reconcile};
use br_store::{Event, EventFilter, Session, Store, StoreError};

use crate::pool::{ExitedWorker, LocalPool, PoolEvent, PoolSpec};
use crate::signals::Interrupts;

/// How to start and keep the local workers.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// How many workers to keep (recorded as the session's `workers_wanted`; `br scale`
    /// changes it while the session runs).
    pub workers: u32,
    /// The br executable the workers run.
    pub program: PathBuf,
    /// The store URL the workers open.
    pub store_url: String,
    pub heartbeat_interval: Duration,
    pub kill_grace: Duration,
    /// The output limit of one attempt (`None`: no limit). Given to every worker on its command
    /// line, so that a worker never parses a setting of its own that the caller did not check.
    pub max_log_bytes: Option<u64>,
    /// Report the session's events from this `seq` on (0: its whole history).
    pub from_seq: i64,
}

/// Something worth telling whoever watches the drive.
#[derive(Debug)]
pub enum DriveEvent<'a> {
    /// An event of the session, in `seq` order.
    Event(&'a Event),
    /// The session as it is after a pass, with the store's clock.
    Status {
        session: &'a Session,
        now: Timestamp,
    },
    /// A worker exited without being asked to.
    WorkerDied(&'a ExitedWorker),
    /// Workers keep dying right after they start; no more are started.
    GaveUp { log: &'a std::path::Path },
    /// The store cannot be reached (or stays locked); the drive waits for it.
    StoreUnreachable(&'a StoreError),
    /// The store answers again.
    StoreBack { after: Duration },
    /// The first interrupt: the session is paused and the workers stop their tasks. `session`
    /// is `None` when the store could not be reached to pause it.
    Interrupting {
        session: Option<&'a Session>,
        error: Option<&'a StoreError>,
    },
    /// A second interrupt: the workers are killed.
    Killing,
    /// What attempts of a killed br left in free worktree slots could not be reconciled; the
    /// run goes on (a worker's own checkout redoes what matters).
    ReconcileFailed(String),
}

/// How a drive ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DriveEnd {
    /// The session reached a final state and every local worker left.
    Ended(Session),
    /// Interrupted: the session was paused (or could not be), its tasks stopped.
    Interrupted(Session),
    /// Workers kept failing as they started and the session did not end. `why` is the last
    /// worker's own error, when its log says one.
    WorkersFailed {
        session: Session,
        why: Option<String>,
    },
}

impl DriveEnd {
    pub fn session(&self) -> &Session {
        match self {
            DriveEnd::Ended(s)
            | DriveEnd::Interrupted(s)
            | DriveEnd::WorkersFailed { session: s, .. } => s,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot report progress")]
    Report(#[source] std::io::Error),
}

/// The shortest time between two passes of the supervision loop.
const LOOP_MIN: Duration = Duration::from_millis(50);

/// How long the session's workers may take to leave after it ended before they are stopped.
const LEAVE_GRACE: Duration = Duration::from_secs(30);

/// Events are read in pages of this many, so a long history is reported without holding it all.
const PAGE: usize = 1000;

/// How often the drive requeues expired leases itself (the workers do it too; this covers the
/// moment when all of them are gone).
const REQUEUE_EVERY: Duration = Duration::from_secs(1);

/// Drives `session` to its end with local workers, telling `on_event` what happens.
pub fn drive(
    store: &dyn Store,
    repo: &Repo,
    session: &Session,
    options: &DriveOptions,
    interrupts: &Interrupts,
    on_event: &mut dyn FnMut(DriveEvent<'_>) -> std::io::Result<()>,
) -> Result<DriveEnd, DriveError> {
    let mut tell = |e: DriveEvent<'_>| on_event(e).map_err(DriveError::Report);
    // Before new workers start, what attempts of a killed br left in free worktree slots is kept
    // at their attempt refs and stray slots are removed. Slots that live workers hold (another
    // `br run` in this repository) are not touched.
    if let Err(e) = reconcile(repo, ReconcileMode::Apply, KEEP_SLOTS) {
        tell(DriveEvent::ReconcileFailed(error_chain(&e)))?;
    }
    let id = session.id.clone();
    if session.workers_wanted != options.workers {
        store.set_workers_wanted(&id, options.workers)?;
    }
    let mut pool = LocalPool::new(pool_spec(repo, session, options));
    // From here on, the loop's waits must see every change (a backend may watch only from its
    // first wait on).
    if let Err(e) = store.wait_for_change(Duration::ZERO)
        && !e.is_transient()
    {
        return Err(e.into());
    }
    let mut last_seq = options.from_seq;
    let mut handled_interrupts = 0usize;
    let mut ended_at: Option<Instant> = None;
    let mut gave_up = false;
    // The log of the last worker that died on its own: why the pool gave up.
    let mut last_log: Option<std::path::PathBuf> = None;
    let mut last_requeue = Instant::now();
    let mut loop_started = Instant::now();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let interrupts_now = interrupts.count();
        if interrupts_now > handled_interrupts {
            if handled_interrupts == 0 {
                interrupt(store, &id, &mut pool, &mut tell)?;
            }
            if interrupts_now >= 2 {
                tell(DriveEvent::Killing)?;
                pool.kill_all();
            }
            handled_interrupts = interrupts_now;
        }
        if unreachable_since.is_some() {
            // The store could not be reached a moment ago: do not hammer it.
            std::thread::sleep(Duration::from_millis(250));
        }
        let pass = Pass {
            store,
            id: &id,
            interrupted: handled_interrupts > 0,
            gave_up,
        };
        match pass.run(&mut pool, &mut last_seq, &mut tell) {
            Ok(found) => {
                if let Some(since) = unreachable_since.take() {
                    tell(DriveEvent::StoreBack {
                        after: since.elapsed(),
                    })?;
                }
                gave_up |= found.gave_up;
                if found.died_log.is_some() {
                    last_log = found.died_log;
                }
                if found.finished {
                    break;
                }
                if found.ended || handled_interrupts > 0 || gave_up {
                    let since = *ended_at.get_or_insert_with(Instant::now);
                    if found.ended && since.elapsed() > LEAVE_GRACE {
                        pool.stop_all();
                    }
                    // Only the workers' exits are left to see, and they change nothing in the
                    // store: wait for the processes, not for the store.
                    pool.wait_all(LOOP_MIN);
                    continue;
                }
            }
            // A store that is restarting or cut off is waited out: the workers wait too, and
            // stop their tasks themselves if their leases are at risk.
            Err(DriveError::Store(e)) if e.is_transient() => {
                if unreachable_since.is_none() {
                    unreachable_since = Some(Instant::now());
                    tell(DriveEvent::StoreUnreachable(&e))?;
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        if last_requeue.elapsed() >= REQUEUE_EVERY {
            last_requeue = Instant::now();
            if let Err(e) = store.requeue_expired_leases()
                && !e.is_transient()
            {
                return Err(e.into());
            }
        }
        // Wake on changes, but at most every LOOP_MIN: the workers' commits come in bursts, and
        // one pass per burst shows the same progress for a fraction of the CPU they need.
        let since = loop_started.elapsed();
        if since < LOOP_MIN {
            std::thread::sleep(LOOP_MIN - since);
        }
        if let Err(e) = store.wait_for_change(Duration::from_millis(100))
            && !e.is_transient()
        {
            return Err(e.into());
        }
        loop_started = Instant::now();
    }
    let s = store.session(&id)?;
    Ok(if handled_interrupts > 0 {
        DriveEnd::Interrupted(s)
    } else if gave_up && !s.status.is_terminal() {
        DriveEnd::WorkersFailed {
            session: s,
            why: last_log.as_deref().and_then(crate::pool::last_error),
        }
    } else {
        DriveEnd::Ended(s)
    })
}

/// How each local worker is started: `br worker` for this session, its stderr to a log of its
/// own, its stdin a pipe the pool holds (so it stops if this process dies) that first carries the
/// store URL, which may hold a password: never in the arguments, which every user sees in `ps`.
/// Every setting the worker needs is in its arguments, as the caller parsed it: a worker
/// inherits the environment, and a setting it parsed from there could fail only once the
/// session exists.
fn pool_spec(repo: &Repo, session: &Session, options: &DriveOptions) -> PoolSpec {
    let duration = |d: Duration| -> OsString { humantime::format_duration(d).to_string().into() };
    let max_log: OsString = options
        .max_log_bytes
        .map_or_else(|| "none".to_string(), |bytes| bytes.to_string())
        .into();
    PoolSpec {
        program: options.program.clone(),
        args: vec![
            "-C".into(),
            repo.root.clone().into_os_string(),
            "worker".into(),
            "--store-from-stdin".into(),
            "--session".into(),
            session.id.as_str().into(),
            "--heartbeat-timeout".into(),
            duration(session.heartbeat_timeout()),
            "--heartbeat-interval".into(),
            duration(options.heartbeat_interval),
            "--kill-grace".into(),
            duration(options.kill_grace),
            "--max-log".into(),
            max_log,
            "--watch-stdin".into(),
        ],
        log_dir: repo.log_dir().join(session.id.as_str()).join("workers"),
        stdin_line: Some(options.store_url.clone()),
    }
}

/// What one pass of the supervision loop found.
struct Found {
    /// The session ended.
    ended: bool,
    /// The pool stopped replacing workers in this pass.
    gave_up: bool,
    /// The log of the last worker that exited on its own, failing, in this pass.
    died_log: Option<std::path::PathBuf>,
    /// Nothing is left to watch: the loop is over.
    finished: bool,
}

/// One pass: keep the pool, report new events and the session's state.
struct Pass<'a> {
    store: &'a dyn Store,
    id: &'a br_core::SessionId,
    interrupted: bool,
    gave_up: bool,
}

impl Pass<'_> {
    fn run(
        &self,
        pool: &mut LocalPool,
        last_seq: &mut i64,
        tell: &mut dyn FnMut(DriveEvent<'_>) -> Result<(), DriveError>,
    ) -> Result<Found, DriveError> {
        let mut newly_gave_up = false;
        let mut died_log = None;
        if !self.interrupted && !self.gave_up {
            for event in pool.supervise(self.store, self.id)? {
                match event {
                    PoolEvent::Exited(w) if !w.asked && !w.status.success() => {
                        tell(DriveEvent::WorkerDied(&w))?;
                        died_log = Some(w.log.clone());
                    }
                    PoolEvent::GaveUp { log } => {
                        newly_gave_up = true;
                        tell(DriveEvent::GaveUp { log: &log })?;
                    }
                    _ => {}
                }
            }
        } else {
            pool.reap();
        }
        let events = self.store.events(&EventFilter {
            after_seq: Some(*last_seq),
            session: Some(self.id.clone()),
            limit: Some(PAGE),
        })?;
        for ev in &events {
            tell(DriveEvent::Event(ev))?;
            *last_seq = ev.seq;
        }
        let s = self.store.session(self.id)?;
        let now = self.store.now()?;
        tell(DriveEvent::Status { session: &s, now })?;
        let ended = s.status.is_terminal();
        let finished = (ended || self.interrupted || self.gave_up || newly_gave_up)
            && pool.live() == 0
            && events.len() < PAGE;
        Ok(Found {
            ended,
            gave_up: newly_gave_up,
            died_log,
            finished,
        })
    }
}

/// First interrupt: start nothing new, stop what runs (each worker interrupts its task and
/// records it as interrupted, so it reruns later without spending a retry), and leave. The
/// workers stop whatever the store says: a store that cannot be reached must not keep tasks
/// running after a Ctrl-C.
fn interrupt(
    store: &dyn Store,
    id: &br_core::SessionId,
    pool: &mut LocalPool,
    tell: &mut dyn FnMut(DriveEvent<'_>) -> Result<(), DriveError>,
) -> Result<(), DriveError> {
    let paused = store.session(id).and_then(|s| {
        if matches!(s.status, SessionStatus::Created | SessionStatus::Running) {
            store.change_session(id, SessionAction::Pause)?;
        }
        Ok(s)
    });
    pool.stop_all();
    match &paused {
        Ok(s) => tell(DriveEvent::Interrupting {
            session: Some(s),
            error: None,
        }),
        Err(e) => tell(DriveEvent::Interrupting {
            session: None,
            error: Some(e),
        }),
    }
}

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
