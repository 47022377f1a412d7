//! The store's logic, written once for every SQL backend: what SQL runs, in what order, which
//! events it writes, and how rows become model types (`session.rs`, `lease.rs`, `landing.rs`,
//! `retry.rs`, `lock.rs`, `read.rs`). A backend (`sqlite/`, `postgres/`) supplies only what is its own — connecting,
//! the schema and its migrations, how a transaction begins and commits and how writers queue,
//! the clock, `wait_for_change`, and which of its errors mean "busy" — by implementing
//! [`Backend`]; every [`Backend`] is a [`Store`].
//!
//! The SQL is written in the common ground of SQLite and PostgreSQL, with SQLite's numbered
//! placeholders (`?1`); the PostgreSQL backend rewrites each statement once, when it prepares
//! it (placeholders to `$1`, and SQLite's `INDEXED BY` planner hints dropped).

mod landing;
mod lease;
mod lock;
mod log;
mod read;
mod retry;
mod session;
mod value;

use std::time::Duration;

use br_core::outcome::Outcome;
use br_core::retry::RetryScope;
use br_core::state::SessionAction;
use br_core::{Attempt, EventDetail, LockPath, RunReason, SessionId, TaskId, Timestamp, WorkerId};

pub(crate) use value::{Param, Row, Value};

use crate::Store;
use crate::error::{BackendError, Result, StoreError};
use crate::model::*;

/// Statement parameters: `params![a, b]` is `&[Param::from(a), Param::from(b)]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$($crate::sql::Param::from($p)),*] as &[$crate::sql::Param<'_>]
    };
}
pub(crate) use params;

/// An error inside an operation: the database's own (kept as the driver's error, so the backend
/// can tell busy or lost connections apart), or one of the store's.
#[derive(Debug)]
pub(crate) enum OpError {
    Sql(BackendError),
    Store(StoreError),
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

/// `query_one` found nothing: a row the operation relies on is missing.
#[derive(Debug, thiserror::Error)]
#[error("query returned no rows")]
struct NoRows;

/// One open transaction of a backend. Statements are prepared once per connection and reused,
/// keyed by their text.
pub(crate) trait Db {
    /// Every row `sql` returns.
    fn query(&self, sql: &str, params: &[Param<'_>]) -> OpResult<Vec<Row>>;
    /// Runs `sql`; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> OpResult<u64>;

    /// The first row, if any.
    fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> OpResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row, which must be there.
    fn query_one(&self, sql: &str, params: &[Param<'_>]) -> OpResult<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| OpError::Sql(Box::new(NoRows)))
    }
}

/// A write transaction with the store's clock read once, so every row and event it writes
/// carries the same time.
pub(crate) struct Tx<'a> {
    pub db: &'a dyn Db,
    pub now: i64,
    /// Whether the transaction recorded an event: what is worth waking other processes for.
    pub evented: std::cell::Cell<bool>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(db: &'a dyn Db, now: i64) -> Tx<'a> {
        Tx {
            db,
            now,
            evented: std::cell::Cell::new(false),
        }
    }
}

impl<'a> std::ops::Deref for Tx<'a> {
    type Target = dyn Db + 'a;
    fn deref(&self) -> &Self::Target {
        self.db
    }
}

/// An event about to be appended: its detail (which names its kind) and whom it is about.
pub(crate) struct Ev<'a> {
    detail: EventDetail,
    session: Option<&'a str>,
    task: Option<&'a str>,
    worker: Option<&'a str>,
    attempt: Option<u32>,
}

impl<'a> Ev<'a> {
    pub(crate) fn new(detail: EventDetail) -> Self {
        Ev {
            detail,
            session: None,
            task: None,
            worker: None,
            attempt: None,
        }
    }
    pub(crate) fn session(mut self, s: &'a str) -> Self {
        self.session = Some(s);
        self
    }
    pub(crate) fn task(mut self, t: &'a str) -> Self {
        self.task = Some(t);
        self
    }
    pub(crate) fn worker(mut self, w: Option<&'a str>) -> Self {
        self.worker = w;
        self
    }
    pub(crate) fn attempt(mut self, a: u32) -> Self {
        self.attempt = (a > 0).then_some(a);
        self
    }
}

impl Tx<'_> {
    /// Appends `ev`; returns its `seq`.
    pub(crate) fn event(&self, ev: Ev<'_>) -> OpResult<i64> {
        self.evented.set(true);
        let detail = serde_json::to_string(&ev.detail)?;
        self.query_one(
            "INSERT INTO events (at, kind, session_id, task_id, worker_id, attempt, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             RETURNING seq",
            params![
                self.now,
                ev.detail.kind(),
                ev.session,
                ev.task,
                ev.worker,
                ev.attempt,
                &detail,
            ],
        )?
        .get(0)
    }
}

/// A duration in whole milliseconds, as the store keeps them.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a database backend supplies to run the store's logic. Each method of [`Store`] is one
/// `read` or one `write`.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Runs `f` in a read transaction: one consistent snapshot, never blocked by writers. `f`
    /// may run more than once (a backend may retry a read on a new connection).
    fn read<T>(&self, context: &'static str, f: impl Fn(&dyn Db) -> OpResult<T>) -> Result<T>;

    /// Runs `f` in a write transaction, one writer at a time, with the store's clock read once
    /// after the write lock is taken, and commits it.
    fn write<T>(&self, context: &'static str, f: impl FnOnce(&Tx<'_>) -> OpResult<T>) -> Result<T>;

    /// Runs `f` in a write transaction that need not queue behind the other writers: it writes
    /// only rows that no other write reads to decide anything, and records no event (so event
    /// order does not depend on it). A backend whose writers always queue runs it as `write`.
    fn write_apart<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Tx<'_>) -> OpResult<T>,
    ) -> Result<T> {
        self.write(context, f)
    }

    /// The store's clock in milliseconds since the epoch, read inside `db`'s transaction.
    fn clock(&self, db: &dyn Db) -> OpResult<i64>;

    /// The store's clock, outside any operation.
    fn now(&self) -> Result<Timestamp>;

    /// See [`Store::wait_for_change`].
    fn wait_for_change(&self, timeout: Duration) -> Result<()>;
}

impl<B: Backend> Store for B {
    fn now(&self) -> Result<Timestamp> {
        Backend::now(self)
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

    fn append_log(&self, lease: &Lease, offset: u64, bytes: &[u8]) -> Result<()> {
        self.write_apart("store an attempt's output", |tx| {
            log::append(
                tx,
                lease.session_id.as_str(),
                lease.task_id.as_str(),
                lease.attempt.0,
                offset,
                bytes,
            )
        })
    }

    fn read_log(
        &self,
        session: &SessionId,
        task: &TaskId,
        attempt: Attempt,
        from: u64,
    ) -> Result<Vec<u8>> {
        self.read("read an attempt's output", |c| {
            log::read(c, session.as_str(), task.as_str(), attempt.0, from)
        })
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
            Ok(lease::anything_claimable(c, request)?
                || landing::anything_to_land(c, request, self.clock(c)?)?)
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

    fn finish_attempt_and_claim(
        &self,
        lease: &Lease,
        outcome: &Outcome,
        report: &AttemptReport,
        next: &ClaimRequest<'_>,
    ) -> Result<(Finish, Claim)> {
        self.write(
            "record an attempt's outcome and claim the next task",
            |tx| {
                let finish = lease::finish(tx, lease, outcome, report)?;
                let claim = lease::claim(tx, next)?;
                Ok((finish, claim))
            },
        )
    }

    fn requeue_task(
        &self,
        session: &SessionId,
        task: &TaskId,
        base_commit: &str,
        reason: &str,
        why: RunReason,
    ) -> Result<Task> {
        self.write("requeue a task", |tx| {
            session::requeue_task(
                tx,
                session.as_str(),
                task.as_str(),
                base_commit,
                reason,
                why,
            )
        })?;
        self.task(session, task)
    }

    fn retry_tasks(&self, session: &SessionId, scope: RetryScope<'_>) -> Result<Retried> {
        let tasks = self.write("retry tasks", |tx| {
            retry::retry(tx, session.as_str(), scope)
        })?;
        Ok(Retried {
            session: self.session(session)?,
            tasks,
        })
    }

    fn next_landing(&self, job: &LandingJob) -> Result<NextLanding> {
        self.write("find the next task to land", |tx| {
            landing::next(tx, job.session_id.as_str(), job.worker_id.as_str())
        })
    }

    fn record_landing(
        &self,
        job: &LandingJob,
        task: &TaskId,
        attempt: Attempt,
        result: &LandingResult,
    ) -> Result<LandingRecorded> {
        self.write("record a landing", |tx| {
            landing::record(
                tx,
                job.session_id.as_str(),
                &job.worker_id,
                task,
                attempt,
                result,
            )
        })
    }

    fn renew_landing(&self, job: &LandingJob) -> Result<bool> {
        self.write("renew a landing turn", |tx| {
            landing::renew(tx, job.session_id.as_str(), job.worker_id.as_str())
        })
    }

    fn requeue_expired_leases(&self) -> Result<Expired> {
        // Look first, as for claims: every worker calls this often, and there is rarely
        // anything to do.
        let any = self.read("look for expired leases", |c| {
            lease::anything_expired(c, self.clock(c)?)
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

    fn pools(&self) -> Result<Vec<Pool>> {
        self.read("list pools", read::pools)
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        self.read("read events", |c| read::events(c, filter))
    }

    fn append_event(&self, event: &NewEvent) -> Result<Event> {
        let seq = self.write("record an event", |tx| {
            let mut ev = Ev::new(event.detail.clone());
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
            c.query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?
                .get(0)
        })
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<()> {
        Backend::wait_for_change(self, timeout)
    }

    fn summary(&self) -> Result<Summary> {
        self.read("summarise the store", |c| read::summary(c, self.clock(c)?))
    }
}
