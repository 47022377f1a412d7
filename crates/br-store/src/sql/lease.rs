//! Workers and leases: registering, heartbeats, claiming a task (locks and lease in one
//! transaction), recording outcomes under fencing, and requeueing expired leases.

use std::collections::BTreeMap;
use std::time::Duration;

use br_core::Landing;
use br_core::detail::{
    LockPaths, StaleResult, TaskCancelled, TaskFailed, TaskRequeued, TaskSkipped, TaskStarted,
    TaskSucceeded, WorkerOffline, WorkerRegistered, WorkerStopped,
};
use br_core::outcome::{Budget, Outcome, TaskNext, next_after};
use br_core::plan::{Isolation, LandMode, StartMode};
use br_core::{Attempt, EventDetail, LockPath, OutcomeKind, SessionId, SessionStatus, TaskId};
use br_core::{RunReason, TaskState, WorkerId, WorkerStatus};

use super::lock::{self, Held};
use super::session::{self, Counter};
use super::{Db, Ev, OpResult, Row, Serial, Tx, millis, params, read};
use crate::error::StoreError;
use crate::model::*;

pub(super) fn register_worker(tx: &Tx<'_>, new: &NewWorker) -> OpResult<WorkerId> {
    let id = loop {
        let id = WorkerId::from_random(fastrand::u64(..));
        let taken: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM workers WHERE id = ?1)",
                params![id.as_str()],
            )?
            .get(0)?;
        if !taken {
            break id;
        }
    };
    if let Some(s) = &new.session {
        read::session_status(tx, s.as_str())?;
    }
    tx.execute(
        "INSERT INTO workers (id, host, pid, status, session_id, started_at, last_heartbeat,
             heartbeat_timeout_ms)
         VALUES (?1, ?2, ?3, ?7, ?4, ?5, ?5, ?6)",
        params![
            id.as_str(),
            &new.host,
            new.pid,
            new.session.as_ref().map(SessionId::as_str),
            tx.now,
            millis(new.heartbeat_timeout),
            WorkerStatus::Idle,
        ],
    )?;
    tx.event(
        Ev::new(EventDetail::WorkerRegistered(WorkerRegistered::New {
            host: new.host.clone(),
            pid: new.pid,
            session_id: new.session.clone(),
        }))
        .worker(Some(id.as_str())),
    )?;
    Ok(id)
}

struct WorkerState {
    status: WorkerStatus,
    stop_requested: bool,
}

fn worker_state(tx: &Tx<'_>, worker: &str) -> OpResult<WorkerState> {
    let row = tx
        .query_opt(
            "SELECT status, stop_requested FROM workers WHERE id = ?1",
            params![worker],
        )?
        .ok_or_else(|| StoreError::NoSuchWorker(worker.to_string()))?;
    Ok(WorkerState {
        status: row.get(0)?,
        stop_requested: row.get(1)?,
    })
}

/// A worker that was marked offline but is talking again: it is back, `Busy` with the lease it
/// still holds or `Idle`.
fn rejoin(tx: &Tx<'_>, worker: &str, status: WorkerStatus) -> OpResult<()> {
    tx.execute(
        "UPDATE workers SET status = ?1 WHERE id = ?2",
        params![status, worker],
    )?;
    if status != WorkerStatus::Busy {
        clear_current_task(tx, worker)?;
    }
    tx.event(
        Ev::new(EventDetail::WorkerRegistered(WorkerRegistered::Rejoined {
            rejoined: true,
        }))
        .worker(Some(worker)),
    )?;
    Ok(())
}

fn clear_current_task(tx: &Tx<'_>, worker: &str) -> OpResult<()> {
    tx.execute(
        "UPDATE workers SET task_session_id = NULL, task_id = NULL, attempt = NULL,
             task_started_at = NULL
         WHERE id = ?1",
        params![worker],
    )?;
    Ok(())
}

/// What recording an attempt's outcome reads of its task and session, in one statement.
struct AttemptRow {
    state: TaskState,
    attempt: u32,
    worker_id: Option<String>,
    retries: u32,
    failures: u32,
    lost: u32,
    land: LandMode,
    isolation: Isolation,
    session_status: SessionStatus,
    /// Whether the task may hold locks (its `files`, or a lock recorded for it): a task without
    /// any has none to release.
    may_hold_locks: bool,
    /// Whether any task waits for this one: a task nobody waits for readies no dependent.
    has_dependents: bool,
}

impl AttemptRow {
    /// The task of `lease` and its session. The task's row stays locked to the end of the
    /// transaction, which goes on to record the attempt's outcome on it.
    fn read(tx: &Tx<'_>, lease: &Lease) -> OpResult<Option<AttemptRow>> {
        let sql = format!(
            "SELECT t.state, t.attempt, t.worker_id, t.retries, t.failures, t.lost, t.land,
                 s.isolation, s.status,
                 t.files <> '[]' OR EXISTS (SELECT 1 FROM locks l
                                            WHERE l.session_id = t.session_id AND l.task_id = t.id),
                 EXISTS (SELECT 1 FROM task_deps d
                         WHERE d.session_id = t.session_id AND d.dep_id = t.id)
             FROM tasks t JOIN sessions s ON s.id = t.session_id
             WHERE t.session_id = ?1 AND t.id = ?2{}",
            tx.row_locks("t", false)
        );
        tx.query_opt(
            &sql,
            params![lease.session_id.as_str(), lease.task_id.as_str()],
        )?
        .map(|r| {
            Ok(AttemptRow {
                state: r.get(0)?,
                attempt: r.get(1)?,
                worker_id: r.get(2)?,
                retries: r.get(3)?,
                failures: r.get(4)?,
                lost: r.get(5)?,
                land: read::serde_word(&r, 6)?,
                isolation: read::serde_word(&r, 7)?,
                session_status: r.get(8)?,
                may_hold_locks: r.get(9)?,
                has_dependents: r.get(10)?,
            })
        })
        .transpose()
    }

    /// Whether `lease` is the task's current attempt and still belongs to its worker.
    fn holds(&self, lease: &Lease) -> bool {
        self.state == TaskState::Running
            && self.attempt == lease.attempt.0
            && self.worker_id.as_deref() == Some(lease.worker_id.as_str())
    }
}

pub(super) fn heartbeat(tx: &Tx<'_>, worker: &str, lease: Option<&Lease>) -> OpResult<Heartbeat> {
    let mut reply = Heartbeat {
        lease_held: true,
        session_cancelled: false,
        stop_requested: false,
        rejoined: false,
    };
    if let Some(lease) = lease {
        let r = tx.query_one(
            "SELECT status, heartbeat_timeout_ms FROM sessions WHERE id = ?1",
            params![lease.session_id.as_str()],
        )?;
        let (status, ttl_ms): (SessionStatus, i64) = (r.get(0)?, r.get(1)?);
        reply.session_cancelled = status == SessionStatus::Cancelled;
        // Renewed only while it is still this worker's current attempt, checked by the update
        // itself: a completion or a requeue committed meanwhile leaves it untouched.
        reply.lease_held = lease.worker_id.as_str() == worker
            && tx.execute(
                "UPDATE tasks SET lease_expires_at = ?1
                 WHERE session_id = ?2 AND id = ?3 AND state = ?4 AND attempt = ?5
                   AND worker_id = ?6",
                params![
                    tx.now + ttl_ms,
                    lease.session_id.as_str(),
                    lease.task_id.as_str(),
                    TaskState::Running,
                    lease.attempt.0,
                    worker
                ],
            )? > 0;
    }
    // The worker's row after the task's, in the order a completion takes them: a heartbeat
    // and its worker's completion run side by side.
    let state = tx
        .query_opt(
            "UPDATE workers SET last_heartbeat = ?1 WHERE id = ?2 RETURNING status, stop_requested",
            params![tx.now, worker],
        )?
        .ok_or_else(|| StoreError::NoSuchWorker(worker.to_string()))?;
    let state = WorkerState {
        status: state.get(0)?,
        stop_requested: state.get(1)?,
    };
    reply.stop_requested = state.stop_requested;
    if state.status == WorkerStatus::Offline {
        reply.rejoined = true;
        let now = if lease.is_some() && reply.lease_held {
            WorkerStatus::Busy
        } else {
            WorkerStatus::Idle
        };
        rejoin(tx, worker, now)?;
    }
    Ok(reply)
}

/// A read-only look: is there anything `claim` could do for this worker?
pub(super) fn anything_claimable(c: &dyn Db, request: &ClaimRequest<'_>) -> OpResult<bool> {
    let (worker, session) = (request.worker.as_str(), request.session);
    let stop: Option<bool> = c
        .query_opt(
            "SELECT stop_requested FROM workers WHERE id = ?1",
            params![worker],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    match stop {
        None => return Err(StoreError::NoSuchWorker(worker.to_string()).into()),
        Some(true) => return Ok(true),
        Some(false) => {}
    }
    let [created, running] = SessionStatus::CLAIMABLE;
    let any: bool = c
        .query_one(
            // `t.state = 'ready'` stays a literal: it is the predicate of the partial index
            // `tasks_ready`, and the planner can use that index only when it sees the same
            // constant at prepare time (SQLite refuses `INDEXED BY` otherwise).
            "SELECT EXISTS (
                 SELECT 1 FROM sessions s
                 WHERE s.status IN (?2, ?3)
                   AND (CAST(?1 AS TEXT) IS NULL OR s.id = ?1)
                   AND (s.repo_id IS NULL OR CAST(?4 AS TEXT) IS NULL OR s.repo_id = ?4)
                   AND (?5 = 0 OR s.remote IS NOT NULL)
                   AND EXISTS (SELECT 1 FROM tasks t INDEXED BY tasks_ready
                               WHERE t.session_id = s.id AND t.state = 'ready'))",
            params![
                session.map(SessionId::as_str),
                created,
                running,
                request.repo_id,
                request.remote_only
            ],
        )?
        .get(0)?;
    Ok(any)
}

/// One ready task looked at by `claim`.
struct Candidate {
    id: String,
    seq: i64,
    files: Vec<LockPath>,
    /// The stored text of its `blocked_by`, compared as text so an unchanged reason is not
    /// written (nor its event recorded) again.
    blocked_by: Option<String>,
    /// The pool it runs in: a cap on running tasks, and parked after a rate limit.
    pool: Option<String>,
    /// What leasing it reads (its session's columns, then its own: [`LEASE_COLUMNS`]), when
    /// the batch it came in read them already.
    lease_row: Option<Row>,
}

/// The task's columns leasing it reads, after its session's.
const LEASE_COLUMNS: &str = "t.attempt, t.run, t.env, t.timeout_ms, t.base_commit, t.start, \
     t.next_reason, t.prompt, t.outcome, t.agent";

/// How many columns [`LEASE_COLUMNS`] are.
const LEASE_COLUMN_COUNT: usize = 10;

/// How many ready tasks `claim` reads at a time while looking for one whose files are free.
const CANDIDATE_BATCH: i64 = 64;

/// The first batch is small: usually its first candidate is free, and reading (and parsing the
/// lock paths of) 64 ready tasks to take one is most of a claim's cost in a large session.
const FIRST_CANDIDATE_BATCH: i64 = 4;

pub(super) fn claim(tx: &Tx<'_>, request: &ClaimRequest<'_>) -> OpResult<Claim> {
    let worker = request.worker.as_str();
    let [created, running] = SessionStatus::CLAIMABLE;
    // The worker's state and the sessions it may serve, oldest first, each saying whether it
    // has something to land and nobody landing it: one statement. A session of another
    // repository is not this worker's to run, even in a shared store: its tasks would run in
    // the wrong tree. `t.landing = 'waiting'` stays a literal: the partial index's predicate.
    let rows = tx.query(
        "SELECT w.status, w.stop_requested, s.id, s.repo_id,
             CASE WHEN s.id IS NOT NULL
                       AND (s.lander IS NULL OR s.landing_expires_at < ?6)
                       AND EXISTS (SELECT 1 FROM tasks t INDEXED BY tasks_waiting
                                   WHERE t.session_id = s.id AND t.landing = 'waiting')
                  THEN 1 ELSE 0 END
         FROM workers w
         LEFT JOIN sessions s
           ON s.status IN (?2, ?3) AND (CAST(?1 AS TEXT) IS NULL OR s.id = ?1)
              AND (s.repo_id IS NULL OR CAST(?4 AS TEXT) IS NULL OR s.repo_id = ?4)
              AND (?5 = 0 OR s.remote IS NOT NULL)
         WHERE w.id = ?7
         ORDER BY s.created_at, s.rowid",
        params![
            request.session.map(SessionId::as_str),
            created,
            running,
            request.repo_id,
            request.remote_only,
            tx.now,
            worker
        ],
    )?;
    let first = rows
        .first()
        .ok_or_else(|| StoreError::NoSuchWorker(worker.to_string()))?;
    let state = WorkerState {
        status: first.get(0)?,
        stop_requested: first.get(1)?,
    };
    if state.stop_requested || state.status == WorkerStatus::Stopped {
        return Ok(Claim::Stop);
    }
    if state.status == WorkerStatus::Offline {
        rejoin(tx, worker, WorkerStatus::Idle)?;
    }
    let mut sessions: Vec<(String, Option<String>)> = Vec::new();
    let mut to_land: Vec<String> = Vec::new();
    for r in &rows {
        let Some(id) = r.get::<Option<String>>(2)? else {
            continue;
        };
        if r.get::<bool>(4)? {
            to_land.push(id.clone());
        }
        sessions.push((id, r.get(3)?));
    }
    // Landing first: what waits to land holds locks and dependents back.
    for session_id in &to_land {
        if let Some(job) = super::landing::take_turn(tx, request, session_id)? {
            return Ok(Claim::Land(Box::new(job)));
        }
    }
    let mut pools = PoolGate::default();
    for (session_id, repo_id) in &sessions {
        let mut held: Option<Vec<Held>> = None;
        let mut serialized = false;
        let mut after_seq = -1i64;
        let mut batch_size = FIRST_CANDIDATE_BATCH;
        loop {
            // The first batch also reads what leasing its first free candidate needs, which is
            // usually the one taken: one round trip fewer for most claims.
            let prefetch = batch_size == FIRST_CANDIDATE_BATCH;
            let batch = ready_batch(tx, session_id, after_seq, batch_size, prefetch)?;
            batch_size = CANDIDATE_BATCH;
            let Some(last) = batch.last() else { break };
            after_seq = last.seq;
            for candidate in batch {
                // Checking a task's files against the held locks and taking them is atomic
                // only if no other claim in the repository does it at once. A pooled task
                // takes that section too, before its pool's: claims that took them in either
                // order could each wait for the other's.
                if !serialized && (!candidate.files.is_empty() || candidate.pool.is_some()) {
                    tx.serialize(Serial::LockSets(repo_id.as_deref()))?;
                    serialized = true;
                }
                if let Some(pool) = &candidate.pool
                    && !pools.admits(tx, pool)?
                {
                    continue;
                }
                if candidate.files.is_empty() {
                    return lease_task(tx, request, session_id, candidate).map(Claim::Task);
                }
                // Read once the section is ours, so no claim can take locks unseen.
                let held = match &mut held {
                    Some(h) => h,
                    None => held.insert(lock::held_locks(tx, session_id)?),
                };
                let found = lock::conflicts(session_id, &candidate.files, held);
                if found.is_empty() {
                    return lease_task(tx, request, session_id, candidate).map(Claim::Task);
                }
                note_blocked(tx, session_id, &candidate, &found)?;
            }
        }
    }
    Ok(Claim::Nothing)
}

/// Which pools may start another task now, read once per claim: a pool admits a task while it
/// is not parked and runs fewer tasks than its size (across every session and machine of the
/// store: the claim is one write transaction, so the count cannot change under it).
#[derive(Debug, Default)]
struct PoolGate {
    known: BTreeMap<String, bool>,
}

impl PoolGate {
    fn admits(&mut self, tx: &Tx<'_>, pool: &str) -> OpResult<bool> {
        if let Some(&open) = self.known.get(pool) {
            return Ok(open);
        }
        // Counting the pool's running tasks and starting one is atomic only if no other claim
        // of the pool does it at once.
        tx.serialize(Serial::Pool(pool))?;
        let row = tx.query_opt(
            "SELECT size, parked_until FROM pools WHERE name = ?1",
            params![pool],
        )?;
        let open = match row {
            // A pool no plan defined (an older session's): no cap.
            None => true,
            Some(r) => {
                let (size, parked_until): (Option<i64>, Option<i64>) = (r.get(0)?, r.get(1)?);
                let parked = parked_until.is_some_and(|until| until > tx.now);
                let full = match size {
                    None => false,
                    Some(size) => {
                        let running: i64 = tx
                            .query_one(
                                // `state = 'running'` stays a literal: the predicate of the
                                // partial index `tasks_pool_running`.
                                "SELECT COUNT(*) FROM tasks WHERE pool = ?1 AND state = 'running'",
                                params![pool],
                            )?
                            .get(0)?;
                        running >= size
                    }
                };
                !parked && !full
            }
        };
        self.known.insert(pool.to_string(), open);
        Ok(open)
    }
}

fn ready_batch(
    tx: &Tx<'_>,
    session_id: &str,
    after_seq: i64,
    limit: i64,
    prefetch: bool,
) -> OpResult<Vec<Candidate>> {
    // Without statistics SQLite would walk `tasks_by_seq` past every finished task; the
    // partial index holds only ready tasks, so a claim never scans the session. `state =
    // 'ready'` stays a literal: it must match the index's own predicate. Where claims run side
    // by side, each locks the candidates it reads and passes over those another is taking.
    // With `prefetch`, each row also carries what leasing it reads, first (see `lease_task`).
    let (lease, at) = if prefetch {
        let (session_columns, n) = read::session_columns_of_s();
        (
            format!("{session_columns}, {LEASE_COLUMNS}, "),
            n + LEASE_COLUMN_COUNT,
        )
    } else {
        (String::new(), 0)
    };
    let sql = format!(
        "SELECT {lease}t.id, t.seq, t.files, t.blocked_by, t.pool
         FROM tasks t INDEXED BY tasks_ready JOIN sessions s ON s.id = t.session_id
         WHERE t.session_id = ?1 AND t.state = 'ready' AND t.seq > ?2
         ORDER BY t.seq LIMIT ?3{}",
        tx.row_locks("t", true)
    );
    tx.query(&sql, params![session_id, after_seq, limit])?
        .into_iter()
        .map(|r| {
            let id: String = r.get(at)?;
            let files: Vec<String> = serde_json::from_str(&r.get::<String>(at + 2)?)?;
            let files = files
                .iter()
                .map(|f| LockPath::parse(f))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Damaged(format!("task {id}: bad lock path: {e}")))?;
            Ok(Candidate {
                seq: r.get(at + 1)?,
                files,
                blocked_by: r.get(at + 3)?,
                pool: r.get(at + 4)?,
                id,
                lease_row: prefetch.then_some(r),
            })
        })
        .collect()
}

/// Records why a ready task waits, once per change of reason, so the dashboard can say which
/// lock holds it back and the event log shows each new conflict once.
fn note_blocked(
    tx: &Tx<'_>,
    session_id: &str,
    candidate: &Candidate,
    found: &[LockConflict],
) -> OpResult<()> {
    let detail = lock::conflict_detail(found);
    let text = serde_json::to_string(&detail)?;
    if candidate.blocked_by.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    tx.execute_later(
        "UPDATE tasks SET blocked_by = ?1 WHERE session_id = ?2 AND id = ?3",
        params![&text, session_id, &candidate.id],
    )?;
    tx.event(
        Ev::new(EventDetail::LockConflict(detail))
            .session(session_id)
            .task(&candidate.id),
    )?;
    Ok(())
}

fn lease_task(
    tx: &Tx<'_>,
    request: &ClaimRequest<'_>,
    session_id: &str,
    mut candidate: Candidate,
) -> OpResult<Box<ClaimedTask>> {
    let worker = request.worker.as_str();
    let prefetched = candidate.lease_row.take();
    let task_id = candidate.id.as_str();
    // The session and the task in one statement (unless the batch read them): the session's
    // columns, then the task's.
    let (session_columns, n) = read::session_columns_of_s();
    let r = match prefetched {
        Some(r) => r,
        None => {
            let sql = format!(
                "SELECT {session_columns}, {LEASE_COLUMNS}
                 FROM sessions s JOIN tasks t ON t.session_id = s.id
                 WHERE s.id = ?1 AND t.id = ?2"
            );
            tx.query_one(&sql, params![session_id, task_id])?
        }
    };
    let session = read::session_from_row(&r)?;
    let (previous_attempt, run, env, timeout_ms, task_base): (
        u32,
        String,
        String,
        Option<u64>,
        Option<String>,
    ) = (
        r.get(n)?,
        r.get(n + 1)?,
        r.get(n + 2)?,
        r.get(n + 3)?,
        r.get(n + 4)?,
    );
    let start: StartMode = super::read::serde_word(&r, n + 5)?;
    let next_reason: Option<RunReason> = r.get(n + 6)?;
    let prompt: Option<String> = r.get(n + 7)?;
    let previous_outcome: Option<OutcomeKind> = r.get(n + 8)?;
    let agent: Option<br_core::agent::AgentProfile> = r
        .get::<Option<String>>(n + 9)?
        .map(|text| serde_json::from_str(&text).map_err(|e| r.damaged(n + 9, e)))
        .transpose()?;
    let attempt = previous_attempt + 1;
    let reason = next_reason.unwrap_or_else(|| reason_after(previous_attempt, previous_outcome));
    // Tip: what landed so far (a repair queued on an older tip gets the newer one); base: the
    // session's base, or the tip a repair was queued on.
    let start_commit = match (session.isolation, start) {
        (Isolation::Shared, _) => task_base.or_else(|| session.base_commit.clone()),
        (Isolation::Worktree, StartMode::Tip) => session
            .integration_commit
            .clone()
            .or(task_base)
            .or_else(|| session.base_commit.clone()),
        (Isolation::Worktree, StartMode::Base) => task_base.or_else(|| session.base_commit.clone()),
    };
    let ttl_ms = i64::try_from(session.heartbeat_timeout_ms).unwrap_or(i64::MAX);
    let log_path = request
        .log_dir
        .join(session_id)
        .join(format!("{task_id}.{attempt}.log"));
    let log_text = log_path.to_string_lossy().into_owned();
    tx.execute_later(
        "UPDATE tasks SET state = ?8, attempt = ?1, worker_id = ?2, lease_expires_at = ?3,
             started_at = ?4, finished_at = NULL, exit_code = NULL, outcome = NULL,
             log_path = ?5, blocked_by = NULL, next_reason = NULL, landing = NULL,
             result_commit = NULL
         WHERE session_id = ?6 AND id = ?7",
        params![
            attempt,
            worker,
            tx.now.saturating_add(ttl_ms),
            tx.now,
            &log_text,
            session_id,
            task_id,
            TaskState::Running,
        ],
    )?;
    tx.execute_later(
        "INSERT INTO attempts (session_id, task_id, attempt, worker_id, started_at, log_path,
             reason, start_commit)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            session_id,
            task_id,
            attempt,
            worker,
            tx.now,
            &log_text,
            reason,
            &start_commit
        ],
    )?;
    if !candidate.files.is_empty() {
        for f in &candidate.files {
            tx.execute_later(
                "INSERT INTO locks (path, session_id, task_id, attempt, acquired_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.as_str(), session_id, task_id, attempt, tx.now],
            )?;
        }
        let paths = candidate
            .files
            .iter()
            .map(|f| f.as_str().to_string())
            .collect();
        tx.event(
            Ev::new(EventDetail::LockAcquired(LockPaths { paths }))
                .session(session_id)
                .task(task_id)
                .worker(Some(worker))
                .attempt(attempt),
        )?;
    }
    session::bump(tx, session_id, Counter::Running, 1)?;
    if session.started_at.is_none() {
        // At the transaction's end, with the session's other changes: its row is then held
        // for the last statements only.
        tx.start(session_id)?;
    }
    tx.event(
        Ev::new(EventDetail::TaskStarted(TaskStarted {
            log_path: log_text.clone(),
        }))
        .session(session_id)
        .task(task_id)
        .worker(Some(worker))
        .attempt(attempt),
    )?;
    tx.execute_later(
        "UPDATE workers SET status = ?6, task_session_id = ?1, task_id = ?2, attempt = ?3,
             task_started_at = ?4, last_heartbeat = ?4
         WHERE id = ?5",
        params![
            session_id,
            task_id,
            attempt,
            tx.now,
            worker,
            WorkerStatus::Busy
        ],
    )?;
    let env: BTreeMap<String, String> = serde_json::from_str(&env)?;
    let task_id =
        TaskId::new(task_id).map_err(|e| StoreError::Damaged(format!("task id in store: {e}")))?;
    Ok(Box::new(ClaimedTask {
        lease: Lease {
            session_id: session.id.clone(),
            task_id,
            attempt: Attempt(attempt),
            worker_id: request.worker.clone(),
        },
        session_name: session.name,
        session_slug: session.slug,
        run,
        env,
        files: candidate.files,
        timeout: timeout_ms.map(Duration::from_millis),
        heartbeat_timeout: Duration::from_millis(session.heartbeat_timeout_ms),
        isolation: session.isolation,
        scope: session.scope,
        base_commit: start_commit,
        repo_root: session.repo_root,
        log_path,
        reason,
        prompt,
        keep: session.keep,
        agent,
        pool: candidate.pool,
        slot_setup: session.slot_setup,
        remote: session.remote,
    }))
}

/// Why the next attempt of a task runs, from how its last one ended (when nothing recorded a
/// reason of its own: a repair, a retry).
fn reason_after(previous_attempt: u32, outcome: Option<OutcomeKind>) -> RunReason {
    if previous_attempt == 0 {
        return RunReason::First;
    }
    match outcome {
        Some(OutcomeKind::TimedOut) => RunReason::TimedOut,
        Some(OutcomeKind::LeaseLost) => RunReason::LeaseLost,
        // A rate limit stopped it from outside, as an interruption does.
        Some(OutcomeKind::Interrupted | OutcomeKind::RateLimited) => RunReason::Interrupted,
        Some(OutcomeKind::Conflict) => RunReason::Conflict,
        Some(OutcomeKind::VerifyFailed) => RunReason::VerifyFailed,
        // A cancelled, skipped or succeeded task runs again only when someone asked: a retry.
        Some(OutcomeKind::Cancelled | OutcomeKind::Skipped | OutcomeKind::Succeeded) => {
            RunReason::Retry
        }
        _ => RunReason::Failed,
    }
}

pub(super) fn finish(
    tx: &Tx<'_>,
    lease: &Lease,
    outcome: &Outcome,
    report: &AttemptReport,
) -> OpResult<Finish> {
    let worker = lease.worker_id.as_str();
    let (session_id, task_id) = (lease.session_id.as_str(), lease.task_id.as_str());
    let row = AttemptRow::read(tx, lease)?.ok_or_else(|| StoreError::NoSuchTask {
        session: session_id.to_string(),
        task: task_id.to_string(),
    })?;
    if !row.holds(lease) {
        let (state, attempt) = (row.state, row.attempt);
        tx.event(
            Ev::new(EventDetail::StaleResultRejected(StaleResult::of(
                outcome, state, attempt,
            )))
            .session(session_id)
            .task(task_id)
            .worker(Some(worker))
            .attempt(lease.attempt.0),
        )?;
        // The worker is alive and done with the old attempt.
        tx.execute(
            "UPDATE workers SET
                 status = CASE WHEN status IN (?5, ?6) THEN ?7 ELSE status END,
                 task_session_id = NULL, task_id = NULL, attempt = NULL, task_started_at = NULL
             WHERE id = ?1 AND task_session_id = ?2 AND task_id = ?3 AND attempt = ?4",
            params![
                worker,
                session_id,
                task_id,
                lease.attempt.0,
                WorkerStatus::Busy,
                WorkerStatus::Offline,
                WorkerStatus::Idle,
            ],
        )?;
        return Ok(Finish::Stale);
    }
    if !report.scope_violations.is_empty() {
        tx.event(
            Ev::new(EventDetail::ScopeViolation(
                br_core::detail::ScopeViolation {
                    files: report.scope_violations.clone(),
                },
            ))
            .session(session_id)
            .task(task_id)
            .worker(Some(worker))
            .attempt(lease.attempt.0),
        )?;
    }
    let next = apply_outcome_with(tx, lease, &row, outcome, report)?;
    let (completed, failed): (i64, i64) = match next {
        TaskNext::Succeed => (1, 0),
        TaskNext::Fail | TaskNext::Retry => (0, 1),
        TaskNext::Requeue | TaskNext::Cancel => (0, 0),
    };
    tx.execute_later(
        "UPDATE workers SET status = CASE WHEN status IN (?5, ?6) THEN ?7 ELSE status END,
             task_session_id = NULL, task_id = NULL, attempt = NULL, task_started_at = NULL,
             tasks_completed = tasks_completed + ?1, tasks_failed = tasks_failed + ?2,
             last_heartbeat = ?3
         WHERE id = ?4",
        params![
            completed,
            failed,
            tx.now,
            worker,
            WorkerStatus::Busy,
            WorkerStatus::Offline,
            WorkerStatus::Idle,
        ],
    )?;
    Ok(Finish::Recorded(next))
}

/// Adds what an attempt spent to it, its task and its session.
fn record_usage(
    tx: &Tx<'_>,
    session_id: &str,
    task_id: &str,
    attempt: u32,
    usage: br_core::agent::Usage,
) -> OpResult<()> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (input, output, cost) = (
        n(usage.input_tokens),
        n(usage.output_tokens),
        n(usage.cost_micros),
    );
    tx.execute(
        "UPDATE attempts SET input_tokens = ?1, output_tokens = ?2, cost_micros = ?3
         WHERE session_id = ?4 AND task_id = ?5 AND attempt = ?6",
        params![input, output, cost, session_id, task_id, attempt],
    )?;
    tx.execute(
        "UPDATE tasks SET input_tokens = input_tokens + ?1, output_tokens = output_tokens + ?2,
             cost_micros = cost_micros + ?3
         WHERE session_id = ?4 AND id = ?5",
        params![input, output, cost, session_id, task_id],
    )?;
    tx.execute(
        "UPDATE sessions SET input_tokens = input_tokens + ?1, output_tokens = output_tokens + ?2,
             cost_micros = cost_micros + ?3
         WHERE id = ?4",
        params![input, output, cost, session_id],
    )?;
    Ok(())
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A rate limit parks the task's pool for its backoff (from now: a later limit extends it),
/// so no worker anywhere claims its tasks before then.
fn park_pool(
    tx: &Tx<'_>,
    session_id: &str,
    task_id: &str,
    reason: &str,
    resets_at_ms: Option<i64>,
) -> OpResult<()> {
    let pool: Option<String> = tx
        .query_one(
            "SELECT pool FROM tasks WHERE session_id = ?1 AND id = ?2",
            params![session_id, task_id],
        )?
        .get(0)?;
    let Some(pool) = pool else {
        return Ok(());
    };
    let backoff_ms: i64 = match tx.query_opt(
        "SELECT backoff_ms FROM pools WHERE name = ?1",
        params![&pool],
    )? {
        Some(r) => r.get(0)?,
        None => {
            let default = millis(br_core::agent::DEFAULT_POOL_BACKOFF);
            tx.execute(
                "INSERT INTO pools (name, size, backoff_ms) VALUES (?1, NULL, ?2)",
                params![&pool, default],
            )?;
            default
        }
    };
    // The reset time the output named, when it is ahead and within a day (a clock that far off
    // is not believed); else the pool's backoff.
    let until = match resets_at_ms {
        Some(at) if at > tx.now && at <= tx.now.saturating_add(DAY_MS) => at,
        _ => tx.now.saturating_add(backoff_ms),
    };
    tx.execute(
        "UPDATE pools SET parked_until = ?1, parked_reason = ?2 WHERE name = ?3",
        params![until, reason, &pool],
    )?;
    tx.event(
        Ev::new(EventDetail::PoolParked(br_core::detail::PoolParked {
            pool,
            until: br_core::Timestamp(until).to_string(),
            backoff_ms: u64::try_from(backoff_ms).unwrap_or(0),
            reason: reason.to_string(),
        }))
        .session(session_id)
        .task(task_id),
    )?;
    Ok(())
}

/// Records an attempt's end on its task, releases its locks, moves the task on by the core rule,
/// and settles the session. The caller has checked that `lease` is current.
fn apply_outcome(tx: &Tx<'_>, lease: &Lease, outcome: &Outcome) -> OpResult<TaskNext> {
    let row = AttemptRow::read(tx, lease)?.ok_or_else(|| StoreError::NoSuchTask {
        session: lease.session_id.to_string(),
        task: lease.task_id.to_string(),
    })?;
    apply_outcome_with(tx, lease, &row, outcome, &AttemptReport::default())
}

fn apply_outcome_with(
    tx: &Tx<'_>,
    lease: &Lease,
    row: &AttemptRow,
    outcome: &Outcome,
    report: &AttemptReport,
) -> OpResult<TaskNext> {
    let (session_id, task_id) = (lease.session_id.as_str(), lease.task_id.as_str());
    let attempt = lease.attempt.0;
    let worker = Some(lease.worker_id.as_str());
    let (retries, failures, lost) = (row.retries, row.failures, row.lost);
    let (land, isolation, session_status) = (row.land, row.isolation, row.session_status);
    let mut detail = serde_json::to_value(outcome)?;
    if let serde_json::Value::Object(map) = &mut detail {
        if let Some(commit) = &report.commit {
            map.insert("commit".into(), commit.as_str().into());
        }
        if !report.changed.is_empty() {
            map.insert("changed".into(), report.changed.clone().into());
        }
        if let Some(bytes) = report.output_bytes {
            map.insert("output_bytes".into(), bytes.into());
        }
    }
    tx.execute_later(
        "UPDATE attempts SET finished_at = ?1, outcome = ?2, exit_code = ?3, detail = ?4
         WHERE session_id = ?5 AND task_id = ?6 AND attempt = ?7",
        params![
            tx.now,
            outcome.kind(),
            outcome.exit_code(),
            &detail.to_string(),
            session_id,
            task_id,
            attempt
        ],
    )?;
    if let Some(usage) = report.usage.filter(|u| !u.is_zero()) {
        record_usage(tx, session_id, task_id, attempt, usage)?;
    }
    if let Outcome::RateLimited {
        reason,
        resets_at_ms,
    } = outcome
    {
        park_pool(tx, session_id, task_id, reason, *resets_at_ms)?;
    }
    session::bump(tx, session_id, Counter::Running, -1)?;
    let next = next_after(
        outcome,
        Budget {
            retries,
            failures,
            lost,
        },
        session_status == SessionStatus::Cancelled,
    );
    // A success that lands by itself waits for its turn still holding its locks, so that the
    // next holder starts from a tip with its work; its dependents wait for it to land.
    let lands_later = next == TaskNext::Succeed
        && land == LandMode::Auto
        && isolation == Isolation::Worktree
        && session_status != SessionStatus::Cancelled;
    if !lands_later && row.may_hold_locks {
        lock::release_task_locks(tx, session_id, task_id, worker, attempt)?;
    }
    let lost_now = u32::from(outcome.kind() == OutcomeKind::LeaseLost);
    let failed_now = u32::from(
        lost_now == 0
            && !matches!(
                next,
                TaskNext::Succeed | TaskNext::Requeue | TaskNext::Cancel
            ),
    );
    let state = TaskState::after(next);
    let terminal = state.is_terminal();
    tx.execute_later(
        "UPDATE tasks SET state = ?1, outcome = ?2, exit_code = ?3, lease_expires_at = NULL,
             failures = failures + ?4, lost = lost + ?5,
             finished_at = CASE WHEN ?6 THEN ?7 ELSE finished_at END
         WHERE session_id = ?8 AND id = ?9",
        params![
            state,
            outcome.kind(),
            outcome.exit_code(),
            failed_now,
            lost_now,
            terminal,
            tx.now,
            session_id,
            task_id
        ],
    )?;
    let ev = |detail| {
        Ev::new(detail)
            .session(session_id)
            .task(task_id)
            .worker(worker)
            .attempt(attempt)
    };
    match next {
        TaskNext::Succeed => {
            session::bump(tx, session_id, Counter::Succeeded, 1)?;
            tx.event(ev(EventDetail::TaskSucceeded(TaskSucceeded {
                exit_code: 0,
                commit: report.commit.clone(),
                changed_files: u32::try_from(report.changed.len()).unwrap_or(u32::MAX),
            })))?;
            if lands_later {
                tx.execute_later(
                    "UPDATE tasks SET landing = ?1, result_commit = ?2
                     WHERE session_id = ?3 AND id = ?4",
                    params![Landing::Waiting, &report.commit, session_id, task_id],
                )?;
            } else {
                if row.has_dependents {
                    release_dependents(tx, session_id, task_id)?;
                }
            }
        }
        TaskNext::Retry | TaskNext::Requeue => {
            tx.event(ev(EventDetail::TaskRequeued(TaskRequeued::after(
                outcome,
                attempt + 1,
            ))))?;
        }
        TaskNext::Fail => {
            session::bump(tx, session_id, Counter::Failed, 1)?;
            tx.event(ev(EventDetail::TaskFailed(TaskFailed::of(outcome))))?;
            skip_dependents(tx, session_id, task_id)?;
        }
        TaskNext::Cancel => {
            session::bump(tx, session_id, Counter::Cancelled, 1)?;
            tx.event(ev(EventDetail::TaskCancelled(TaskCancelled {
                reason: outcome.describe(),
            })))?;
        }
    }
    session::settle(tx, session_id)?;
    Ok(next)
}

fn dependents(tx: &Tx<'_>, session_id: &str, task_id: &str) -> OpResult<Vec<String>> {
    // Ordered (as SQLite's primary-key walk returns them anyway), so events come in the same
    // order on every backend.
    tx.query(
        "SELECT task_id FROM task_deps WHERE session_id = ?1 AND dep_id = ?2 ORDER BY task_id",
        params![session_id, task_id],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect()
}

pub(super) fn release_dependents(tx: &Tx<'_>, session_id: &str, task_id: &str) -> OpResult<()> {
    // The last `after` task to succeed makes a pending task ready: every dependent in one
    // statement, which a task without dependents also costs.
    let mut ready: Vec<String> = tx
        .query(
            "UPDATE tasks SET deps_left = deps_left - 1,
                 state = CASE WHEN deps_left = 1 AND state = ?3 THEN ?4 ELSE state END
             WHERE session_id = ?1
               AND id IN (SELECT task_id FROM task_deps WHERE session_id = ?1 AND dep_id = ?2)
             RETURNING id, state",
            params![session_id, task_id, TaskState::Pending, TaskState::Ready],
        )?
        .iter()
        .map(|r| Ok((r.get::<String>(0)?, r.get::<TaskState>(1)?)))
        .filter(|r: &OpResult<(String, TaskState)>| {
            r.as_ref()
                .map_or(true, |(_, state)| *state == TaskState::Ready)
        })
        .map(|r| r.map(|(id, _)| id))
        .collect::<OpResult<_>>()?;
    // RETURNING has no order; events come in the same order on every backend.
    ready.sort_unstable();
    for dependent in &ready {
        tx.event(
            Ev::new(EventDetail::TaskReady)
                .session(session_id)
                .task(dependent),
        )?;
    }
    Ok(())
}

/// Skips every task that (transitively) waits for `failed`. Iterative, so a 10,000-long chain
/// does not exhaust the stack.
pub(super) fn skip_dependents(tx: &Tx<'_>, session_id: &str, failed: &str) -> OpResult<()> {
    let mut stack = vec![failed.to_string()];
    let mut skipped = 0i64;
    let failed_id = task_id_of(failed)?;
    while let Some(task) = stack.pop() {
        for dependent in dependents(tx, session_id, &task)? {
            let changed = tx.execute(
                "UPDATE tasks SET state = ?1, finished_at = ?2, outcome = ?3
                 WHERE session_id = ?4 AND id = ?5 AND state = ?6",
                params![
                    TaskState::Skipped,
                    tx.now,
                    OutcomeKind::Skipped,
                    session_id,
                    &dependent,
                    TaskState::Pending,
                ],
            )?;
            if changed > 0 {
                skipped += 1;
                tx.event(
                    Ev::new(EventDetail::TaskSkipped(TaskSkipped {
                        because: task_id_of(&task)?,
                        failed: failed_id.clone(),
                    }))
                    .session(session_id)
                    .task(&dependent),
                )?;
                stack.push(dependent);
            }
        }
    }
    session::bump(tx, session_id, Counter::Skipped, skipped)
}

/// A task id read back from the store.
fn task_id_of(id: &str) -> OpResult<TaskId> {
    TaskId::new(id).map_err(|e| StoreError::Damaged(format!("task id in store: {e}")).into())
}

pub(super) fn anything_expired(c: &dyn Db, now: i64) -> OpResult<bool> {
    let [idle, busy] = WorkerStatus::LIVE;
    c.query_one(
        // `state = 'running'` stays a literal: it is the predicate of the partial index
        // `tasks_leases`, which the planner uses only when it sees the same constant.
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE state = 'running' AND lease_expires_at < ?1)
             OR EXISTS (SELECT 1 FROM workers WHERE status IN (?2, ?3)
                            AND last_heartbeat + heartbeat_timeout_ms < ?1)",
        params![now, idle, busy],
    )?
    .get(0)
}

pub(super) fn requeue_expired(tx: &Tx<'_>) -> OpResult<Expired> {
    let mut expired = Expired::default();
    let [idle, busy] = WorkerStatus::LIVE;
    let silent: Vec<(String, i64)> = tx
        .query(
            "SELECT id, last_heartbeat FROM workers
             WHERE status IN (?2, ?3) AND last_heartbeat + heartbeat_timeout_ms < ?1
             ORDER BY id",
            params![tx.now, idle, busy],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<OpResult<_>>()?;
    for (worker, last) in silent {
        mark_offline(
            tx,
            &worker,
            WorkerOffline::Silent {
                last_heartbeat_ms: last,
            },
        )?;
        expired.workers.push(WorkerId::from_string(worker));
    }
    let leases: Vec<(String, String, u32, String)> = tx
        .query(
            // Ties in a fixed order, so every backend requeues alike. `state = 'running'` stays
            // a literal, to match the partial index `tasks_leases`.
            "SELECT session_id, id, attempt, worker_id FROM tasks
             WHERE state = 'running' AND lease_expires_at < ?1
             ORDER BY lease_expires_at, session_id, seq",
            params![tx.now],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<OpResult<_>>()?;
    for (session_id, task_id, attempt, worker) in leases {
        let task_id = task_id_of(&task_id)?;
        let status: Option<WorkerStatus> = tx
            .query_opt("SELECT status FROM workers WHERE id = ?1", params![&worker])?
            .map(|r| r.get(0))
            .transpose()?;
        if status.is_some_and(WorkerStatus::is_live) {
            mark_offline(tx, &worker, WorkerOffline::lease_expired(task_id.clone()))?;
            expired.workers.push(WorkerId::from_string(worker.clone()));
        }
        let lease = Lease {
            session_id: SessionId::from_string(session_id),
            task_id,
            attempt: Attempt(attempt),
            worker_id: WorkerId::from_string(worker),
        };
        let next = apply_outcome(tx, &lease, &Outcome::LeaseLost)?;
        // The silent worker no longer runs this attempt, whoever runs the task next: its row
        // must not go on showing it (the worker says what it runs when it is back).
        tx.execute(
            "UPDATE workers SET task_session_id = NULL, task_id = NULL, attempt = NULL,
                 task_started_at = NULL
             WHERE id = ?1 AND task_session_id = ?2 AND task_id = ?3 AND attempt = ?4",
            params![
                lease.worker_id.as_str(),
                lease.session_id.as_str(),
                lease.task_id.as_str(),
                lease.attempt.0
            ],
        )?;
        expired.leases.push((lease, next));
    }
    Ok(expired)
}

fn mark_offline(tx: &Tx<'_>, worker: &str, why: WorkerOffline) -> OpResult<()> {
    tx.execute(
        "UPDATE workers SET status = ?1 WHERE id = ?2",
        params![WorkerStatus::Offline, worker],
    )?;
    tx.event(Ev::new(EventDetail::WorkerOffline(why)).worker(Some(worker)))?;
    Ok(())
}

pub(super) fn request_stops(tx: &Tx<'_>, session_id: &str, count: u32) -> OpResult<Vec<WorkerId>> {
    read::session_status(tx, session_id)?;
    // Idle workers first, then the newest: a busy worker leaves only after its task.
    let [idle, busy] = WorkerStatus::LIVE;
    let chosen: Vec<String> = tx
        .query(
            "SELECT id FROM workers
             WHERE session_id = ?1 AND status IN (?3, ?4) AND NOT stop_requested
             ORDER BY status = ?4, started_at DESC, id
             LIMIT ?2",
            params![session_id, count, idle, busy],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<OpResult<_>>()?;
    for id in &chosen {
        tx.execute(
            "UPDATE workers SET stop_requested = TRUE WHERE id = ?1",
            params![id],
        )?;
    }
    Ok(chosen.into_iter().map(WorkerId::from_string).collect())
}

pub(super) fn stop_worker(tx: &Tx<'_>, worker: &str) -> OpResult<()> {
    let state = worker_state(tx, worker)?;
    if state.status == WorkerStatus::Stopped {
        return Ok(());
    }
    // A worker that leaves while holding a lease gives its task back now rather than making
    // everyone wait for the lease to expire.
    let held: Vec<(String, String, u32)> = tx
        .query(
            // `state = 'running'` stays a literal, so the partial index `tasks_leases` (running
            // tasks only) serves it instead of a scan of every task.
            "SELECT session_id, id, attempt FROM tasks WHERE state = 'running' AND worker_id = ?1
             ORDER BY session_id, seq",
            params![worker],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .collect::<OpResult<_>>()?;
    for (session_id, task_id, attempt) in held {
        let lease = Lease {
            session_id: SessionId::from_string(session_id),
            task_id: task_id_of(&task_id)?,
            attempt: Attempt(attempt),
            worker_id: WorkerId::from_string(worker),
        };
        apply_outcome(tx, &lease, &Outcome::Interrupted)?;
    }
    let r = tx.query_one(
        "UPDATE workers SET status = ?3, task_session_id = NULL, task_id = NULL,
             attempt = NULL, task_started_at = NULL, last_heartbeat = ?1
         WHERE id = ?2
         RETURNING tasks_completed, tasks_failed",
        params![tx.now, worker, WorkerStatus::Stopped],
    )?;
    tx.event(
        Ev::new(EventDetail::WorkerStopped(WorkerStopped {
            tasks_completed: r.get(0)?,
            tasks_failed: r.get(1)?,
        }))
        .worker(Some(worker)),
    )?;
    Ok(())
}

pub(super) fn prune_workers(tx: &Tx<'_>, before: i64) -> OpResult<u32> {
    let n = tx.execute(
        "DELETE FROM workers WHERE status IN (?2, ?3) AND last_heartbeat < ?1",
        params![before, WorkerStatus::Stopped, WorkerStatus::Offline],
    )?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
