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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
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

    /// Every row `sql` returns, handed to `each` one by one and not kept: for a read of a whole
    /// session's tasks, where holding every row's values at once costs more than the rows.
    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&Row) -> OpResult<()>,
    ) -> OpResult<()> {
        self.query(sql, params)?.iter().try_for_each(each)
    }
    /// Runs `sql`; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> OpResult<u64>;

    /// Runs `sql`, whose count the logic does not need: a backend may send it with the next
    /// statement (or the commit) instead of waiting for its answer now. Its error, if any,
    /// fails the transaction all the same.
    fn execute_later(&self, sql: &str, params: &[Param<'_>]) -> OpResult<()> {
        self.execute(sql, params).map(drop)
    }

    /// Waits until this transaction may do `what` without another writer doing it at once,
    /// for the rest of the transaction. Nothing to do where writers always queue.
    fn serialize(&self, what: Serial<'_>) -> OpResult<()> {
        let _ = what;
        Ok(())
    }

    /// The statement that appends `rows` events, their columns bound as `?1`… seven per row
    /// (`at, kind, session_id, task_id, worker_id, attempt, detail`), returning their `seq`s.
    /// Where writers run side by side, it must also make `seq` follow commit order (or a
    /// reader paging by `seq` could pass an event that commits later with a smaller one).
    fn append_events_sql(&self, rows: usize) -> String {
        format!(
            "INSERT INTO {EVENT_INSERT} VALUES {} RETURNING seq",
            event_rows(rows, "")
        )
    }

    /// What ends a SELECT whose rows of `of` (a table or its alias) the transaction goes on to
    /// change, so that no other writer changes them meanwhile: row locks, skipping rows another
    /// writer holds when `skip_locked` (a claim looks for a ready task nobody else is taking).
    /// Nothing where writers always queue.
    fn row_locks(&self, of: &str, skip_locked: bool) -> String {
        let _ = (of, skip_locked);
        String::new()
    }

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
///
/// What every writer of a session shares — its counters, its settling, and the event log — is
/// deferred to the transaction's end ([`Tx::close`]), so that where writers run side by side
/// (PostgreSQL's claims and completions) they hold those rows, and the event log's order, for
/// the last round trips only.
pub(crate) struct Tx<'a> {
    pub db: &'a dyn Db,
    pub now: i64,
    /// Events recorded so far, appended at the end in this order.
    events: RefCell<Vec<PendingEvent>>,
    /// Counter changes per session, applied at the end in one statement each.
    counts: RefCell<BTreeMap<String, Counts>>,
    /// Sessions to settle at the end, once their counters are up to date.
    settle: RefCell<BTreeSet<String>>,
    /// Sessions whose first task this transaction started.
    start: RefCell<BTreeSet<String>>,
}

/// An event waiting for its transaction's end. Owned: the logic's borrowed ids end with their
/// function, the transaction does not.
struct PendingEvent {
    kind: br_core::EventKind,
    detail: String,
    session: Option<String>,
    task: Option<String>,
    worker: Option<String>,
    attempt: Option<u32>,
}

/// How much one transaction moves each of a session's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub cancelled: i64,
    pub running: i64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        [
            self.succeeded,
            self.failed,
            self.skipped,
            self.cancelled,
            self.running,
        ]
        .iter()
        .all(|&n| n == 0)
    }
}

/// What a backend serialises for the store's logic where writers may run side by side. A
/// backend whose writers always queue (SQLite) has nothing to do for any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serial<'a> {
    /// Taking a set of file locks in a repository (`sessions.repo_id`; `None` for sessions
    /// that name none): checking them against the held ones and inserting them is atomic only
    /// if no other claim in that repository does the same at once.
    LockSets(Option<&'a str>),
    /// Starting a task of this pool: counting its running tasks against its size.
    Pool(&'a str),
}

impl<'a> Tx<'a> {
    pub(crate) fn new(db: &'a dyn Db, now: i64) -> Tx<'a> {
        Tx {
            db,
            now,
            events: RefCell::default(),
            counts: RefCell::default(),
            settle: RefCell::default(),
            start: RefCell::default(),
        }
    }

    /// Marks `session` started when the transaction ends (see `session::start_now`). Its
    /// `session_started` takes its place in the log now, before the task that starts it, and is
    /// dropped at the end if another transaction started the session first.
    pub(crate) fn start(&self, session: &str) -> OpResult<()> {
        if self.start.borrow_mut().insert(session.to_string()) {
            self.event(Ev::new(EventDetail::SessionStarted).session(session))?;
        }
        Ok(())
    }

    /// Moves `session`'s counters as `change` says, when the transaction ends.
    pub(crate) fn count(&self, session: &str, change: impl FnOnce(&mut Counts)) {
        change(
            self.counts
                .borrow_mut()
                .entry(session.to_string())
                .or_default(),
        );
    }

    /// Settles `session` when the transaction ends (see `session::settle_now`).
    pub(crate) fn settle(&self, session: &str) {
        self.settle.borrow_mut().insert(session.to_string());
    }

    /// Ends the transaction's logic: starts and applies the counters of its sessions (in that
    /// order: each takes the session's row, which is then held to the commit), settles the sessions that asked,
    /// and appends the events. Every backend calls it just before COMMIT; what it writes
    /// is the only part of a claim or a completion that other writers of the session (the
    /// counters) or of the store (the events) wait for. Returns the events' `seq`s, in order.
    pub(crate) fn close(&self) -> OpResult<Vec<i64>> {
        for session in std::mem::take(&mut *self.start.borrow_mut()) {
            if !session::start_now(self, &session)? {
                self.events.borrow_mut().retain(|e| {
                    !(e.kind == br_core::EventKind::SessionStarted
                        && e.session.as_deref() == Some(session.as_str()))
                });
            }
        }
        let counts = std::mem::take(&mut *self.counts.borrow_mut());
        let mut settle = std::mem::take(&mut *self.settle.borrow_mut());
        for (session, counts) in &counts {
            if counts.is_zero() && !settle.contains(session) {
                continue;
            }
            let tallies = session::apply_counts(self, session, counts)?;
            if settle.remove(session) {
                session::settle_now(self, session, tallies)?;
            }
        }
        for session in &settle {
            let tallies = session::tallies(self, session)?;
            session::settle_now(self, session, tallies)?;
        }
        self.append_events()
    }

    /// Appends the pending events, in as few statements as the backends' parameter limits
    /// allow, after the backend serialised event appends.
    fn append_events(&self) -> OpResult<Vec<i64>> {
        let events = std::mem::take(&mut *self.events.borrow_mut());
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut seqs = Vec::with_capacity(events.len());
        for chunk in events.chunks(EVENTS_PER_STATEMENT) {
            let sql = self.db.append_events_sql(chunk.len());
            let mut params = Vec::with_capacity(chunk.len() * 7);
            for ev in chunk {
                params.extend([
                    Param::from(self.now),
                    Param::from(ev.kind),
                    Param::from(ev.session.as_deref()),
                    Param::from(ev.task.as_deref()),
                    Param::from(ev.worker.as_deref()),
                    Param::from(ev.attempt),
                    Param::from(ev.detail.as_str()),
                ]);
            }
            let mut got = self
                .query(&sql, &params)?
                .iter()
                .map(|r| r.get(0))
                .collect::<OpResult<Vec<i64>>>()?;
            // RETURNING promises no order; seq does.
            got.sort_unstable();
            seqs.extend(got);
        }
        Ok(seqs)
    }
}

/// The events table and the columns an append fills, in the order of their parameters.
pub(crate) const EVENT_INSERT: &str =
    "events (at, kind, session_id, task_id, worker_id, attempt, detail)";

/// `rows` rows of seven numbered parameters for an event append, each cast as `casts` says
/// (`casts[i]` follows parameter `i` of a row; empty where the backend needs none).
pub(crate) fn event_rows(rows: usize, casts: &'static str) -> String {
    let casts: Vec<&str> = if casts.is_empty() {
        vec![""; 7]
    } else {
        casts.split(',').collect()
    };
    (0..rows)
        .map(|i| {
            let cols: Vec<String> = (0..7)
                .map(|c| format!("?{}{}", i * 7 + c + 1, casts[c]))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many events one INSERT carries: 7 parameters each, well under both databases' limits
/// (SQLite 32,766; PostgreSQL 65,535).
const EVENTS_PER_STATEMENT: usize = 500;

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
    /// Records `ev`, appended to the log when the transaction ends ([`Tx::close`]).
    pub(crate) fn event(&self, ev: Ev<'_>) -> OpResult<()> {
        let detail = serde_json::to_string(&ev.detail)?;
        self.events.borrow_mut().push(PendingEvent {
            kind: ev.detail.kind(),
            detail,
            session: ev.session.map(str::to_string),
            task: ev.task.map(str::to_string),
            worker: ev.worker.map(str::to_string),
            attempt: ev.attempt,
        });
        Ok(())
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

    /// Runs `f` in a write transaction that may run beside other shared writes (never beside
    /// an ordinary one): a claim, a completion, a heartbeat. Their logic holds under
    /// concurrency because every row it decides on is locked or its update guarded, and what
    /// must be one at a time is asked for through [`Db::serialize`]. `f` may run more than
    /// once (a backend may retry a transaction the database failed to break a deadlock). A
    /// backend whose writers always queue runs it as `write`.
    fn write_shared<T>(
        &self,
        context: &'static str,
        f: impl Fn(&Tx<'_>) -> OpResult<T>,
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

    fn history(&self, session: &SessionId) -> Result<SessionHistory> {
        self.read("read a session's history", |c| {
            read::history(c, session.as_str())
        })
    }

    fn task_prompt(&self, session: &SessionId, task: &TaskId) -> Result<Option<String>> {
        self.read("read a task's prompt", |c| {
            read::task_prompt(c, session.as_str(), task.as_str())
        })
    }

    fn task_events(&self, session: &SessionId, task: &TaskId) -> Result<Vec<Event>> {
        self.read("read a task's events", |c| {
            read::task_events(c, session.as_str(), task.as_str())
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
        self.write_shared("record a heartbeat", |tx| {
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
        self.write_shared("claim a task", |tx| lease::claim(tx, request))
    }

    fn finish_attempt_with(
        &self,
        lease: &Lease,
        outcome: &Outcome,
        report: &AttemptReport,
    ) -> Result<Finish> {
        self.write_shared("record an attempt's outcome", |tx| {
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
        self.write_shared(
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
            tx.event(ev)?;
            // Closed here, not by the backend, to learn the event's seq.
            let seqs = tx.close()?;
            Ok(*seqs.last().expect("one event was recorded"))
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
