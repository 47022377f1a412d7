//! The store: where every session, task, attempt, worker, lock and event of br lives, and the only
//! channel between br's processes. [`Store`] is the contract; [`sqlite::SqliteStore`] is the
//! embedded backend; `conformance` (behind the `testing` feature) is the suite every backend
//! must pass.
//!
//! Rules every backend keeps:
//! - Time comes from the store's clock ([`Store::now`]), never from a caller's.
//! - Each method is one transaction: it happens entirely or not at all.
//! - Writes for an attempt are fenced by its [`Lease`]: a write for an attempt that is no longer
//!   current is refused and recorded as `stale_result_rejected`.
//! - Event `seq` strictly increases in commit order.

pub mod audit;
// The suite every backend must pass: test code, so it is not compiled into br.
#[cfg(feature = "testing")]
pub mod conformance;
pub mod error;
pub mod model;
pub mod postgres;
pub mod snapshot;
mod sql;
pub mod sqlite;
pub mod view;

use std::path::{Path, PathBuf};
use std::time::Duration;

use br_core::outcome::Outcome;
use br_core::retry::RetryScope;
use br_core::state::SessionAction;
use br_core::{Attempt, LockPath, RunReason, SessionId, TaskId, Timestamp, WorkerId};

pub use error::{Result, StoreError};

/// Below this much free space, a write that failed did so because the disk is full.
const LOW_SPACE: u64 = 1 << 20;

/// Whether the filesystem holding `path` (a file, or a directory to make one in) has next to no
/// space left: SQLite reports a full disk as SQLITE_FULL only when it notices it itself, and as
/// an I/O error when growing its WAL or shared-memory file fails.
pub fn disk_full(path: &std::path::Path) -> bool {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
    };
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) < LOW_SPACE)
}
pub use model::*;

/// The contract between br's processes and their shared state. Callers depend only on this, so a
/// PostgreSQL backend can replace SQLite without changing them.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The store's clock: the one time source for leases, heartbeats and timestamps.
    fn now(&self) -> Result<Timestamp>;

    // Sessions.

    /// Creates a session with all its tasks (`session_created`, `task_ready` for tasks with no
    /// `after`), ready for workers to claim.
    fn create_session(&self, new: &NewSession) -> Result<Session>;
    fn session(&self, id: &SessionId) -> Result<Session>;
    /// Finds a session by full id, name (the latest with that name) or unique id prefix.
    fn resolve_session(&self, reference: &str) -> Result<Session>;
    /// Sessions, newest first.
    fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>>;
    /// Pauses, resumes or cancels a session, refusing transitions its state does not allow.
    /// Cancelling cancels every task that is not running; running tasks end when their workers
    /// report (they learn of it from their next heartbeat).
    fn change_session(&self, id: &SessionId, action: SessionAction) -> Result<Session>;
    /// How many local workers `br run` should keep for the session.
    fn set_workers_wanted(&self, id: &SessionId, workers: u32) -> Result<()>;
    /// The session's tasks in plan order.
    fn tasks(&self, session: &SessionId) -> Result<Vec<Task>>;
    fn task(&self, session: &SessionId, task: &TaskId) -> Result<Task>;
    fn attempts(&self, session: &SessionId, task: &TaskId) -> Result<Vec<AttemptRecord>>;
    /// Every attempt of the session and its landing record, for a run page.
    fn history(&self, session: &SessionId) -> Result<SessionHistory>;
    /// What the task asks its coding agent to do (`prompt`, or `prompt_file`'s text read at
    /// submit); none for a task that runs a command.
    fn task_prompt(&self, session: &SessionId, task: &TaskId) -> Result<Option<String>>;
    /// The task's events, oldest first: why each attempt ran, the conflicts and `verify` failures
    /// that sent it back, where it landed.
    fn task_events(&self, session: &SessionId, task: &TaskId) -> Result<Vec<Event>>;
    /// Queues a task that already ended (typically succeeded) again as its next attempt,
    /// starting from `base_commit` — the merge queue's `on_conflict = "requeue"`. Its session
    /// becomes running again if it had ended.
    fn requeue_task(
        &self,
        session: &SessionId,
        task: &TaskId,
        base_commit: &str,
        reason: &str,
        why: RunReason,
    ) -> Result<Task>;
    /// `br retry`: queues the failed, skipped and cancelled tasks `scope` picks
    /// ([`br_core::retry::tasks_to_retry`]) again as their next attempts, with reason `retry`
    /// and a fresh budget of retries and repairs; their attempts stay. Each gets a
    /// `task_requeued` event (and `task_ready` when nothing holds it back); a session that had
    /// ended or was paused is running again (`session_resumed`). Refused, changing nothing,
    /// when a named task has not ended badly or nothing has.
    fn retry_tasks(&self, session: &SessionId, scope: RetryScope<'_>) -> Result<Retried>;
    /// Deletes a finished session with its tasks, attempts, events and stored output.
    fn delete_session(&self, id: &SessionId) -> Result<()>;

    // Attempt output.

    /// Stores `bytes` of the lease's attempt output, starting at byte `offset` of its log.
    /// Storing the same piece again changes nothing.
    fn append_log(&self, lease: &Lease, offset: u64, bytes: &[u8]) -> Result<()>;
    /// The attempt's stored output from byte `from` on: as much as one read returns (empty when
    /// nothing more is stored yet); ask again from where it ended for more.
    fn read_log(
        &self,
        session: &SessionId,
        task: &TaskId,
        attempt: Attempt,
        from: u64,
    ) -> Result<Vec<u8>>;

    // Workers and leases.

    fn register_worker(&self, new: &NewWorker) -> Result<WorkerId>;
    /// Records that the worker is alive and renews the lease it names, if it still holds it.
    fn heartbeat(&self, worker: &WorkerId, lease: Option<&Lease>) -> Result<Heartbeat>;
    /// In one transaction: picks the first ready task (plan order, oldest session first) of a
    /// claimable session whose files conflict with no held lock, takes its locks and leases it.
    fn claim_next_task(&self, request: &ClaimRequest<'_>) -> Result<Claim>;
    /// Records how an attempt ended, if its lease is still current.
    fn finish_attempt(&self, lease: &Lease, outcome: &Outcome) -> Result<Finish> {
        self.finish_attempt_with(lease, outcome, &AttemptReport::default())
    }
    /// The same, with what the attempt changed; scope violations in `report` are recorded as a
    /// `scope_violation` event in the same transaction.
    fn finish_attempt_with(
        &self,
        lease: &Lease,
        outcome: &Outcome,
        report: &AttemptReport,
    ) -> Result<Finish>;
    /// Records how an attempt ended (as [`Store::finish_attempt_with`]) and, in the same
    /// transaction, claims the worker's next task (as [`Store::claim_next_task`]): on a busy
    /// worker's hot path, one write instead of three transactions.
    fn finish_attempt_and_claim(
        &self,
        lease: &Lease,
        outcome: &Outcome,
        report: &AttemptReport,
        next: &ClaimRequest<'_>,
    ) -> Result<(Finish, Claim)>;
    /// The next task waiting to land in `job`'s session, or — in the same transaction that finds
    /// none — the landing turn given back. Renews the turn.
    fn next_landing(&self, job: &LandingJob) -> Result<NextLanding>;
    /// Records how landing a task's attempt went: landed (its locks released, its dependents
    /// ready), or repaired or failed by its `on_conflict` and `max_repairs`. `Stale` when the
    /// turn is no longer `job`'s worker's or the task no longer waits at `attempt`.
    fn record_landing(
        &self,
        job: &LandingJob,
        task: &TaskId,
        attempt: Attempt,
        result: &LandingResult,
    ) -> Result<LandingRecorded>;
    /// Renews `job`'s landing turn; false when it is no longer its worker's.
    fn renew_landing(&self, job: &LandingJob) -> Result<bool>;
    /// Requeues (or fails) attempts whose lease expired and marks silent workers offline.
    /// Any process may call it; it is idempotent.
    fn requeue_expired_leases(&self) -> Result<Expired>;
    /// Asks up to `count` live workers serving `session` to leave, idle ones first. Busy ones
    /// leave after their current task.
    fn request_worker_stops(&self, session: &SessionId, count: u32) -> Result<Vec<WorkerId>>;
    /// Records that a worker left cleanly.
    fn stop_worker(&self, worker: &WorkerId) -> Result<()>;
    fn workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>>;
    fn worker(&self, id: &WorkerId) -> Result<Worker>;
    /// Deletes stopped and offline workers last seen before `before`; returns how many.
    fn prune_workers(&self, before: Timestamp) -> Result<u32>;

    // Locks.

    /// Takes manual session locks on all `paths`, or none of them.
    fn lock_paths(&self, session: &SessionId, paths: &[LockPath]) -> Result<LockOutcome>;
    /// Releases the session's manual locks on `paths` (all of them when `None`); returns what
    /// was released.
    fn unlock_paths(&self, session: &SessionId, paths: Option<&[LockPath]>) -> Result<Vec<String>>;
    fn locks(&self) -> Result<Vec<Lock>>;
    /// The store's pools: their size, how many of their tasks run, and whether a rate limit
    /// parks them (and until when).
    fn pools(&self) -> Result<Vec<Pool>>;

    // Events.

    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>>;
    fn append_event(&self, event: &NewEvent) -> Result<Event>;
    /// The newest event's `seq` (0 when there is none).
    fn last_seq(&self) -> Result<i64>;
    /// Returns when another process may have changed the store, or after `timeout`. A cheap
    /// way to wait without re-reading everything.
    fn wait_for_change(&self, timeout: Duration) -> Result<()>;

    /// BuildRunner's summary of everything in the store.
    fn summary(&self) -> Result<Summary>;
}

/// Where a store lives, from `--store` / `BR_STORE` or the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreLocation {
    /// Reads a store URL: `postgres://…`, `sqlite://PATH`, `sqlite:PATH`, or a plain file path.
    pub fn parse(url: &str) -> Result<StoreLocation> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(url.to_string()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() {
            return Err(StoreError::UnsupportedUrl {
                url: url.to_string(),
                reason: "no file path".into(),
            });
        }
        if let Some((scheme, _)) = url.split_once("://")
            && scheme != "sqlite"
        {
            return Err(StoreError::UnsupportedUrl {
                url: url.to_string(),
                reason: "expected a file path, sqlite://PATH or postgres://…".into(),
            });
        }
        Ok(StoreLocation::Sqlite(PathBuf::from(path)))
    }

    /// The default store of a repository: `<git common dir>/br/br.db`.
    pub fn default_for(git_common_dir: &Path) -> StoreLocation {
        StoreLocation::Sqlite(git_common_dir.join("br").join("br.db"))
    }

    /// Opens (creating if needed) the store.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        self.open_with(&OpenOptions::default())
    }

    pub fn open_with(&self, options: &OpenOptions) -> Result<Box<dyn Store>> {
        if options.access == Access::Read {
            return self.open_to_read(options);
        }
        match self {
            StoreLocation::Sqlite(path) => Ok(Box::new(sqlite::SqliteStore::open_with(
                path,
                options.busy_timeout.unwrap_or(sqlite::DEFAULT_BUSY_TIMEOUT),
            )?)),
            StoreLocation::Postgres(url) => Ok(Box::new(postgres::PostgresStore::open_with(
                url,
                options
                    .busy_timeout
                    .unwrap_or(postgres::DEFAULT_BUSY_TIMEOUT),
            )?)),
        }
    }
}

impl StoreLocation {
    fn open_to_read(&self, options: &OpenOptions) -> Result<Box<dyn Store>> {
        let (found, label): (Option<Box<dyn Store>>, PathBuf) = match self {
            StoreLocation::Sqlite(path) => (
                sqlite::SqliteStore::open_to_read(
                    path,
                    options.busy_timeout.unwrap_or(sqlite::DEFAULT_BUSY_TIMEOUT),
                )?
                .map(|s| Box::new(s) as Box<dyn Store>),
                path.clone(),
            ),
            StoreLocation::Postgres(url) => (
                postgres::PostgresStore::open_to_read(
                    url,
                    options
                        .busy_timeout
                        .unwrap_or(postgres::DEFAULT_BUSY_TIMEOUT),
                )?
                .map(|s| Box::new(s) as Box<dyn Store>),
                PathBuf::from(redact_password(url)),
            ),
        };
        match found {
            Some(store) => Ok(store),
            None => Ok(Box::new(sqlite::SqliteStore::empty(&label)?)),
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// How long a write waits for another process's transaction [default: the backend's].
    pub busy_timeout: Option<Duration>,
    /// What the opener will do with it.
    pub access: Access,
}

/// Whether a store is opened to write or only to read. Reading creates nothing and migrates
/// nothing: where no store exists yet it reads as an empty one, and an older schema is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    #[default]
    ReadWrite,
    Read,
}

/// Hides a password in a URL before it is shown: the `user:password@` form and a
/// `password=` query parameter (libpq accepts both). A password may hold `/`, `?`, `#` or `@`
/// unencoded (libpq takes them), so the userinfo is taken to end at the *last* `@`: when that
/// `@` belongs to something later in the URL, more than the password is hidden, never less.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    if let Some(at) = rest.rfind('@') {
        let userinfo = &rest[..at];
        if let Some(colon) = userinfo.find(':') {
            let user = &userinfo[..colon];
            let after = &rest[at..];
            return format!("{scheme}://{user}:***{}", redact_query(after));
        }
    }
    format!("{scheme}://{}", redact_query(rest))
}

/// Hides the value of each `password=` parameter after the first `?`.
fn redact_query(text: &str) -> String {
    let Some((head, query)) = text.split_once('?') else {
        return text.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => param.to_string(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreLocation::parse("x/br.db").unwrap(),
            StoreLocation::Sqlite("x/br.db".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite:///tmp/a.db").unwrap(),
            StoreLocation::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite:a.db").unwrap(),
            StoreLocation::Sqlite("a.db".into())
        );
        assert!(matches!(
            StoreLocation::parse("postgres://u:p@h/db").unwrap(),
            StoreLocation::Postgres(_)
        ));
        assert!(StoreLocation::parse("mysql://x").is_err());
        assert!(StoreLocation::parse("sqlite:").is_err());
        assert_eq!(
            redact_password("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_password("postgres://u@h/db?sslmode=disable&password=secret&x=1"),
            "postgres://u@h/db?sslmode=disable&password=***&x=1"
        );
        assert_eq!(
            redact_password("postgres://u:a@b@h/db?options=-c%20x"),
            "postgres://u:***@h/db?options=-c%20x"
        );
        // Unencoded `/`, `?`, `#` and `@` in the password: all of it is hidden.
        for secret in ["pa/ss", "pa?ss", "pa#ss", "p@ss", "a/b?c#d@e"] {
            let shown = redact_password(&format!("postgres://u:{secret}@host:5432/db?x=1"));
            assert_eq!(shown, "postgres://u:***@host:5432/db?x=1", "{secret}");
        }
        // No password: nothing to hide.
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_password("/tmp/br.db"), "/tmp/br.db");
    }
}
