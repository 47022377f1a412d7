//! The embedded backend: one SQLite file in WAL mode, shared by every br process on the machine.
//! Writes run in `BEGIN IMMEDIATE` transactions, so writers queue on SQLite's lock (with
//! `busy_timeout`) instead of failing halfway, and event `seq` follows commit order.

mod lease;
mod lock;
mod read;
mod schema;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use br_core::outcome::Outcome;
use br_core::state::SessionAction;
use br_core::{EventKind, LockPath, SessionId, TaskId, Timestamp, WorkerId};
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use crate::Store;
use crate::error::{Result, StoreError};
use crate::model::*;

pub use schema::CURRENT_VERSION;

/// How long a write waits for another process's transaction before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `wait_for_change` looks at SQLite's change counter. Cheap (no I/O beyond the
/// shared-memory index), and it bounds how late an idle worker notices a newly ready task.
const CHANGE_POLL: Duration = Duration::from_millis(3);

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    busy_timeout: Duration,
    /// `PRAGMA data_version` when `wait_for_change` last returned.
    seen_version: AtomicI64,
}

/// An error inside an operation: SQLite's own, or one of the store's.
#[derive(Debug)]
pub(crate) enum OpError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

impl From<br_core::state::TransitionError> for OpError {
    fn from(e: br_core::state::TransitionError) -> Self {
        OpError::Store(StoreError::Transition(e))
    }
}

impl From<serde_json::Error> for OpError {
    fn from(e: serde_json::Error) -> Self {
        OpError::Store(StoreError::Damaged(format!("bad JSON in a column: {e}")))
    }
}

pub(crate) type OpResult<T> = std::result::Result<T, OpError>;

/// A write transaction with the store's clock read once, so every row and event it writes
/// carries the same time.
pub(crate) struct Tx<'c> {
    pub tx: Transaction<'c>,
    pub now: i64,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.tx
    }
}

/// An event about to be appended.
pub(crate) struct Ev<'a> {
    kind: EventKind,
    session: Option<&'a str>,
    task: Option<&'a str>,
    worker: Option<&'a str>,
    attempt: Option<u32>,
    detail: serde_json::Value,
}

impl<'a> Ev<'a> {
    pub fn new(kind: EventKind) -> Self {
        Ev {
            kind,
            session: None,
            task: None,
            worker: None,
            attempt: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }
    pub fn session(mut self, s: &'a str) -> Self {
        self.session = Some(s);
        self
    }
    pub fn task(mut self, t: &'a str) -> Self {
        self.task = Some(t);
        self
    }
    pub fn worker(mut self, w: Option<&'a str>) -> Self {
        self.worker = w;
        self
    }
    pub fn attempt(mut self, a: u32) -> Self {
        self.attempt = (a > 0).then_some(a);
        self
    }
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = d;
        self
    }
}

impl Tx<'_> {
    pub fn event(&self, ev: Ev<'_>) -> OpResult<i64> {
        let mut stmt = self.prepare_cached(
            "INSERT INTO events (at, kind, session_id, task_id, worker_id, attempt, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        stmt.execute(rusqlite::params![
            self.now,
            ev.kind.as_str(),
            ev.session,
            ev.task,
            ev.worker,
            ev.attempt,
            ev.detail.to_string(),
        ])?;
        Ok(self.last_insert_rowid())
    }
}

/// The busy timeout of this process's stores, for [`retry_while_busy`] (a plain function
/// pointer, so it cannot carry the value itself). One process uses one timeout.
static BUSY_TIMEOUT_US: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(10_000_000);

/// How long the `n`th retry waits. SQLite's own handler sleeps 1, 2, 5, 10… ms, which under a
/// few busy workers costs more than the transactions themselves (they take tens of
/// microseconds); retrying sooner at first keeps per-task overhead low.
fn busy_wait_us(n: u64) -> u64 {
    (50 * (n + 1)).min(2_000)
}

/// SQLite calls this while another connection holds the lock; `false` gives up (SQLITE_BUSY).
fn retry_while_busy(attempts: i32) -> bool {
    let n = u64::try_from(attempts).unwrap_or(0);
    let waited: u64 = (0..n).map(busy_wait_us).sum();
    if waited >= BUSY_TIMEOUT_US.load(Ordering::Relaxed) {
        return false;
    }
    std::thread::sleep(Duration::from_micros(busy_wait_us(n)));
    true
}

fn clock_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens the store at `path`, creating it (and its directory) if needed, and migrates it to
    /// the current schema. A store from a newer br is refused before anything is written.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Self> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(Box::new(e)))?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            busy_timeout,
            seen_version: AtomicI64::new(-1),
        };
        // Until a new file is in WAL mode, two processes initialising it at once can deadlock on
        // the lock upgrade, and SQLite then answers BUSY at once, without its busy handler.
        // Initialising is idempotent, so try again until the busy timeout.
        let deadline = Instant::now() + busy_timeout;
        loop {
            match store.prepare() {
                Err(StoreError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(fastrand::u64(2..20)));
                }
                other => return other.map(|()| store),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prepare(&self) -> Result<()> {
        let mut conn = self.lock_conn();
        let ctx = "open the store";
        BUSY_TIMEOUT_US.store(
            u64::try_from(self.busy_timeout.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        conn.busy_handler(Some(retry_while_busy))
            .map_err(|e| self.sql_error(ctx, e))?;
        // Read the version before writing anything: a newer store must stay untouched. One
        // statement reads the version and the table count from the same snapshot: another br
        // creating this store at the same moment must not look like someone else's tables.
        let (version, tables): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql_error(ctx, e))?;
        if version > CURRENT_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: version,
                supported: CURRENT_VERSION,
            });
        }
        if version == 0 {
            // An empty file is ours to initialise; someone else's database is not.
            if tables > 0 {
                return Err(StoreError::NotAStore {
                    path: self.path.clone(),
                    source: "it is an SQLite database with tables that br did not create".into(),
                });
            }
        }
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.sql_error(ctx, e))?;
        // NORMAL in WAL mode: a commit survives any process crash; only a power loss can drop
        // the last transactions, and never corrupts the file.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sql_error(ctx, e))?;
        if version < CURRENT_VERSION {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.sql_error(ctx, e))?;
            // Another process may have migrated while we waited for the lock.
            let version: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| self.sql_error(ctx, e))?;
            for (i, sql) in schema::MIGRATIONS
                .iter()
                .enumerate()
                .skip(version.max(0) as usize)
            {
                tx.execute_batch(sql)
                    .map_err(|e| self.sql_error("migrate the store", e))?;
                tx.pragma_update(None, "user_version", i as i64 + 1)
                    .map_err(|e| self.sql_error("migrate the store", e))?;
            }
            tx.commit()
                .map_err(|e| self.sql_error("migrate the store", e))?;
        }
        Ok(())
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves no half-done transaction behind (rusqlite
        // rolls back on drop), so a poisoned lock is safe to reuse.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sql_error(&self, context: &'static str, e: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    return StoreError::Busy {
                        path: self.path.clone(),
                        waited: self.busy_timeout,
                    };
                }
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                    return StoreError::NotAStore {
                        path: self.path.clone(),
                        source: Box::new(e),
                    };
                }
                _ => {}
            }
        }
        StoreError::Backend {
            context,
            source: Box::new(e),
        }
    }

    fn op_error(&self, context: &'static str, e: OpError) -> StoreError {
        match e {
            OpError::Sql(e) => self.sql_error(context, e),
            OpError::Store(e) => e,
        }
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`) and commits it.
    pub(crate) fn write<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Tx<'_>) -> OpResult<T>,
    ) -> Result<T> {
        let mut conn = self.lock_conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql_error(context, e))?;
        let tx = Tx {
            tx,
            now: clock_now(),
        };
        let out = f(&tx).map_err(|e| self.op_error(context, e))?;
        tx.tx.commit().map_err(|e| self.sql_error(context, e))?;
        Ok(out)
    }

    /// Runs `f` in a read transaction: one consistent snapshot, never blocked by writers.
    pub(crate) fn read<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> OpResult<T>,
    ) -> Result<T> {
        let mut conn = self.lock_conn();
        let tx = conn.transaction().map_err(|e| self.sql_error(context, e))?;
        let out = f(&tx).map_err(|e| self.op_error(context, e))?;
        // Nothing to keep: ending a read transaction either way releases its snapshot.
        drop(tx);
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn now(&self) -> Result<Timestamp> {
        Ok(Timestamp(clock_now()))
    }

    fn create_session(&self, new: &NewSession) -> Result<Session> {
        let id = self.write("create the session", |tx| session::create(tx, new))?;
        self.session(&id)
    }

    fn session(&self, id: &SessionId) -> Result<Session> {
        self.read("read a session", |c| read::session(c, id.as_str()))
    }

    fn resolve_session(&self, reference: &str) -> Result<Session> {
        self.read("find a session", |c| read::resolve_session(c, reference))
    }

    fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>> {
        self.read("list sessions", |c| read::sessions(c, filter))
    }

    fn change_session(&self, id: &SessionId, action: SessionAction) -> Result<Session> {
        self.write("change a session", |tx| {
            session::change(tx, id.as_str(), action)
        })?;
        self.session(id)
    }

    fn set_workers_wanted(&self, id: &SessionId, workers: u32) -> Result<()> {
        self.write("scale a session", |tx| {
            session::set_workers_wanted(tx, id.as_str(), workers)
        })
    }

    fn tasks(&self, session: &SessionId) -> Result<Vec<Task>> {
        self.read("read tasks", |c| read::tasks(c, session.as_str()))
    }

    fn task(&self, session: &SessionId, task: &TaskId) -> Result<Task> {
        self.read("read a task", |c| {
            read::task(c, session.as_str(), task.as_str())
        })
    }

    fn attempts(&self, session: &SessionId, task: &TaskId) -> Result<Vec<AttemptRecord>> {
        self.read("read attempts", |c| {
            read::attempts(c, session.as_str(), task.as_str())
        })
    }

    fn delete_session(&self, id: &SessionId) -> Result<()> {
        self.write("delete a session", |tx| session::delete(tx, id.as_str()))
    }

    fn register_worker(&self, new: &NewWorker) -> Result<WorkerId> {
        self.write("register a worker", |tx| lease::register_worker(tx, new))
    }

    fn heartbeat(&self, worker: &WorkerId, lease: Option<&Lease>) -> Result<Heartbeat> {
        self.write("record a heartbeat", |tx| {
            lease::heartbeat(tx, worker.as_str(), lease)
        })
    }

    fn claim_next_task(&self, request: &ClaimRequest<'_>) -> Result<Claim> {
        // Look before taking the write lock: idle workers poll often, and a claim that finds
        // nothing must not queue every other writer behind it.
        let worth_trying = self.read("look for ready tasks", |c| {
            lease::anything_claimable(c, request.worker.as_str(), request.session)
        })?;
        if !worth_trying {
            return Ok(Claim::Nothing);
        }
        self.write("claim a task", |tx| lease::claim(tx, request))
    }

    fn finish_attempt_with(
        &self,
        lease: &Lease,
        outcome: &Outcome,
        report: &AttemptReport,
    ) -> Result<Finish> {
        self.write("record an attempt's outcome", |tx| {
            lease::finish(tx, lease, outcome, report)
        })
    }

    fn requeue_task(
        &self,
        session: &SessionId,
        task: &TaskId,
        base_commit: &str,
        reason: &str,
    ) -> Result<Task> {
        self.write("requeue a task", |tx| {
            session::requeue_task(tx, session.as_str(), task.as_str(), base_commit, reason)
        })?;
        self.task(session, task)
    }

    fn requeue_expired_leases(&self) -> Result<Expired> {
        let now = clock_now();
        let any = self.read("look for expired leases", |c| {
            lease::anything_expired(c, now)
        })?;
        if !any {
            return Ok(Expired::default());
        }
        self.write("requeue expired leases", lease::requeue_expired)
    }

    fn request_worker_stops(&self, session: &SessionId, count: u32) -> Result<Vec<WorkerId>> {
        self.write("ask workers to stop", |tx| {
            lease::request_stops(tx, session.as_str(), count)
        })
    }

    fn stop_worker(&self, worker: &WorkerId) -> Result<()> {
        self.write("stop a worker", |tx| {
            lease::stop_worker(tx, worker.as_str())
        })
    }

    fn workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>> {
        self.read("list workers", |c| read::workers(c, filter))
    }

    fn worker(&self, id: &WorkerId) -> Result<Worker> {
        self.read("read a worker", |c| read::worker(c, id.as_str()))
    }

    fn prune_workers(&self, before: Timestamp) -> Result<u32> {
        self.write("prune workers", |tx| {
            lease::prune_workers(tx, before.millis())
        })
    }

    fn lock_paths(&self, session: &SessionId, paths: &[LockPath]) -> Result<LockOutcome> {
        self.write("lock paths", |tx| {
            lock::lock_paths(tx, session.as_str(), paths)
        })
    }

    fn unlock_paths(&self, session: &SessionId, paths: Option<&[LockPath]>) -> Result<Vec<String>> {
        self.write("unlock paths", |tx| {
            lock::unlock_paths(tx, session.as_str(), paths)
        })
    }

    fn locks(&self) -> Result<Vec<Lock>> {
        self.read("list locks", read::locks)
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        self.read("read events", |c| read::events(c, filter))
    }

    fn append_event(&self, event: &NewEvent) -> Result<Event> {
        let seq = self.write("record an event", |tx| {
            let mut ev = Ev::new(event.kind).detail(event.detail.clone());
            ev.session = event.session_id.as_ref().map(SessionId::as_str);
            ev.task = event.task_id.as_ref().map(TaskId::as_str);
            ev.worker = event.worker_id.as_ref().map(WorkerId::as_str);
            ev.attempt = event.attempt.map(|a| a.0);
            tx.event(ev)
        })?;
        let mut found = self.events(&EventFilter {
            after_seq: Some(seq - 1),
            limit: Some(1),
            ..Default::default()
        })?;
        found
            .pop()
            .ok_or_else(|| StoreError::Damaged(format!("event {seq} vanished after commit")))
    }

    fn last_seq(&self) -> Result<i64> {
        self.read("read the last event", |c| {
            Ok(c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
        })
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let version = || -> Result<i64> {
            let conn = self.lock_conn();
            conn.prepare_cached("PRAGMA data_version")
                .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
                .map_err(|e| self.sql_error("watch the store", e))
        };
        let mut seen = self.seen_version.load(Ordering::Relaxed);
        if seen < 0 {
            // First call: nothing to compare with yet; watch from here.
            seen = version()?;
            self.seen_version.store(seen, Ordering::Relaxed);
        }
        loop {
            let current = version()?;
            if current != seen {
                self.seen_version.store(current, Ordering::Relaxed);
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(CHANGE_POLL));
        }
    }

    fn summary(&self) -> Result<Summary> {
        let now = clock_now();
        self.read("summarise the store", |c| read::summary(c, now))
    }
}
