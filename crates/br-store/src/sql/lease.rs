//! Workers and leases: registering, heartbeats, claiming a task (locks and lease in one
//! transaction), recording outcomes under fencing, and requeueing expired leases.

use std::collections::BTreeMap;
use std::time::Duration;

use br_core::outcome::{Budget, Outcome, TaskNext, next_after};
use br_core::{Attempt, EventKind, LockPath, SessionId, SessionStatus, TaskId, WorkerId};
use serde_json::json;

use super::lock::{self, Held};
use super::session::{self, Counter};
use super::{Db, Ev, OpResult, Tx, millis, params};
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
        session::status(tx, s.as_str())?;
    }
    tx.execute(
        "INSERT INTO workers (id, host, pid, status, session_id, started_at, last_heartbeat,
             heartbeat_timeout_ms)
         VALUES (?1, ?2, ?3, 'idle', ?4, ?5, ?5, ?6)",
        params![
            id.as_str(),
            &new.host,
            new.pid,
            new.session.as_ref().map(SessionId::as_str),
            tx.now,
            millis(new.heartbeat_timeout),
        ],
    )?;
    tx.event(
        Ev::new(EventKind::WorkerRegistered)
            .worker(Some(id.as_str()))
            .detail(json!({
                "host": new.host,
                "pid": new.pid,
                "session_id": new.session,
            })),
    )?;
    Ok(id)
}

struct WorkerState {
    status: String,
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

/// A worker that was marked offline but is talking again: it is back.
fn rejoin(tx: &Tx<'_>, worker: &str, busy: bool) -> OpResult<()> {
    let status = if busy { "busy" } else { "idle" };
    tx.execute(
        "UPDATE workers SET status = ?1 WHERE id = ?2",
        params![status, worker],
    )?;
    if !busy {
        clear_current_task(tx, worker)?;
    }
    tx.event(
        Ev::new(EventKind::WorkerRegistered)
            .worker(Some(worker))
            .detail(json!({ "rejoined": true })),
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

/// Whether `lease` is the task's current attempt and still belongs to its worker.
fn lease_is_current(tx: &Tx<'_>, lease: &Lease) -> OpResult<bool> {
    let row: Option<(String, u32, Option<String>)> = tx
        .query_opt(
            "SELECT state, attempt, worker_id FROM tasks WHERE session_id = ?1 AND id = ?2",
            params![lease.session_id.as_str(), lease.task_id.as_str()],
        )?
        .map(|r| -> OpResult<_> { Ok((r.get(0)?, r.get(1)?, r.get(2)?)) })
        .transpose()?;
    Ok(matches!(row, Some((state, attempt, Some(worker)))
        if state == "running" && attempt == lease.attempt.0 && worker == lease.worker_id.as_str()))
}

pub(super) fn heartbeat(tx: &Tx<'_>, worker: &str, lease: Option<&Lease>) -> OpResult<Heartbeat> {
    let state = worker_state(tx, worker)?;
    tx.execute(
        "UPDATE workers SET last_heartbeat = ?1 WHERE id = ?2",
        params![tx.now, worker],
    )?;
    let mut reply = Heartbeat {
        lease_held: true,
        session_cancelled: false,
        stop_requested: state.stop_requested,
        rejoined: false,
    };
    if let Some(lease) = lease {
        reply.lease_held = lease.worker_id.as_str() == worker && lease_is_current(tx, lease)?;
        let r = tx.query_one(
            "SELECT status, heartbeat_timeout_ms FROM sessions WHERE id = ?1",
            params![lease.session_id.as_str()],
        )?;
        let (status, ttl_ms): (String, i64) = (r.get(0)?, r.get(1)?);
        reply.session_cancelled = status == SessionStatus::Cancelled.as_str();
        if reply.lease_held {
            tx.execute(
                "UPDATE tasks SET lease_expires_at = ?1 WHERE session_id = ?2 AND id = ?3",
                params![
                    tx.now + ttl_ms,
                    lease.session_id.as_str(),
                    lease.task_id.as_str()
                ],
            )?;
        }
    }
    if state.status == "offline" {
        reply.rejoined = true;
        rejoin(tx, worker, lease.is_some() && reply.lease_held)?;
    }
    Ok(reply)
}

/// A read-only look: is there anything `claim` could do for this worker?
pub(super) fn anything_claimable(
    c: &dyn Db,
    worker: &str,
    session: Option<&SessionId>,
) -> OpResult<bool> {
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
    let any: bool = c
        .query_one(
            "SELECT EXISTS (
                 SELECT 1 FROM sessions s
                 WHERE s.status IN ('created', 'running')
                   AND (CAST(?1 AS TEXT) IS NULL OR s.id = ?1)
                   AND EXISTS (SELECT 1 FROM tasks t INDEXED BY tasks_ready
                               WHERE t.session_id = s.id AND t.state = 'ready'))",
            params![session.map(SessionId::as_str)],
        )?
        .get(0)?;
    Ok(any)
}

/// One ready task looked at by `claim`.
struct Candidate {
    id: String,
    seq: i64,
    files: Vec<LockPath>,
    blocked_by: Option<String>,
}

/// How many ready tasks `claim` reads at a time while looking for one whose files are free.
const CANDIDATE_BATCH: i64 = 64;

pub(super) fn claim(tx: &Tx<'_>, request: &ClaimRequest<'_>) -> OpResult<Claim> {
    let worker = request.worker.as_str();
    let state = worker_state(tx, worker)?;
    if state.stop_requested || state.status == "stopped" {
        return Ok(Claim::Stop);
    }
    if state.status == "offline" {
        rejoin(tx, worker, false)?;
    }
    let sessions: Vec<String> = tx
        .query(
            "SELECT id FROM sessions
             WHERE status IN ('created', 'running') AND (CAST(?1 AS TEXT) IS NULL OR id = ?1)
             ORDER BY created_at, rowid",
            params![request.session.map(SessionId::as_str)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<OpResult<_>>()?;
    let mut held: Option<Vec<Held>> = None;
    for session_id in &sessions {
        let mut after_seq = -1i64;
        loop {
            let batch = ready_batch(tx, session_id, after_seq)?;
            let Some(last) = batch.last() else { break };
            after_seq = last.seq;
            for candidate in batch {
                let held = match &mut held {
                    Some(h) => h,
                    None => held.insert(lock::held_locks(tx)?),
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

fn ready_batch(tx: &Tx<'_>, session_id: &str, after_seq: i64) -> OpResult<Vec<Candidate>> {
    let rows: Vec<(String, i64, String, Option<String>)> = tx
        .query(
            // Without statistics SQLite would walk `tasks_by_seq` past every finished task;
            // the partial index holds only ready tasks, so a claim never scans the session.
            "SELECT id, seq, files, blocked_by FROM tasks INDEXED BY tasks_ready
             WHERE session_id = ?1 AND state = 'ready' AND seq > ?2
             ORDER BY seq LIMIT ?3",
            params![session_id, after_seq, CANDIDATE_BATCH],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<OpResult<_>>()?;
    rows.into_iter()
        .map(|(id, seq, files, blocked_by)| {
            let files: Vec<String> = serde_json::from_str(&files)?;
            let files = files
                .iter()
                .map(|f| LockPath::parse(f))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Damaged(format!("task {id}: bad lock path: {e}")))?;
            Ok(Candidate {
                id,
                seq,
                files,
                blocked_by,
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
    let text = detail.to_string();
    if candidate.blocked_by.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    tx.execute(
        "UPDATE tasks SET blocked_by = ?1 WHERE session_id = ?2 AND id = ?3",
        params![&text, session_id, &candidate.id],
    )?;
    tx.event(
        Ev::new(EventKind::LockConflict)
            .session(session_id)
            .task(&candidate.id)
            .detail(detail),
    )?;
    Ok(())
}

fn lease_task(
    tx: &Tx<'_>,
    request: &ClaimRequest<'_>,
    session_id: &str,
    candidate: Candidate,
) -> OpResult<Box<ClaimedTask>> {
    let worker = request.worker.as_str();
    let task_id = candidate.id.as_str();
    let session = super::read::session(tx.db, session_id)?;
    let r = tx.query_one(
        "SELECT attempt, run, env, timeout_ms, base_commit FROM tasks
         WHERE session_id = ?1 AND id = ?2",
        params![session_id, task_id],
    )?;
    let (previous_attempt, run, env, timeout_ms, task_base): (
        u32,
        String,
        String,
        Option<u64>,
        Option<String>,
    ) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let attempt = previous_attempt + 1;
    let ttl_ms = i64::try_from(session.heartbeat_timeout_ms).unwrap_or(i64::MAX);
    let log_path = request
        .log_dir
        .join(session_id)
        .join(format!("{task_id}.{attempt}.log"));
    let log_text = log_path.to_string_lossy().into_owned();
    tx.execute(
        "UPDATE tasks SET state = 'running', attempt = ?1, worker_id = ?2, lease_expires_at = ?3,
             started_at = ?4, finished_at = NULL, exit_code = NULL, outcome = NULL,
             log_path = ?5, blocked_by = NULL
         WHERE session_id = ?6 AND id = ?7",
        params![
            attempt,
            worker,
            tx.now.saturating_add(ttl_ms),
            tx.now,
            &log_text,
            session_id,
            task_id
        ],
    )?;
    tx.execute(
        "INSERT INTO attempts (session_id, task_id, attempt, worker_id, started_at, log_path)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![session_id, task_id, attempt, worker, tx.now, &log_text],
    )?;
    if !candidate.files.is_empty() {
        for f in &candidate.files {
            tx.execute(
                "INSERT INTO locks (path, session_id, task_id, attempt, acquired_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.as_str(), session_id, task_id, attempt, tx.now],
            )?;
        }
        let paths: Vec<&str> = candidate.files.iter().map(LockPath::as_str).collect();
        tx.event(
            Ev::new(EventKind::LockAcquired)
                .session(session_id)
                .task(task_id)
                .worker(Some(worker))
                .attempt(attempt)
                .detail(json!({ "paths": paths })),
        )?;
    }
    session::bump(tx, session_id, Counter::Running, 1)?;
    if session.started_at.is_none() {
        tx.execute(
            "UPDATE sessions SET started_at = ?1,
                 status = CASE status WHEN 'created' THEN 'running' ELSE status END
             WHERE id = ?2",
            params![tx.now, session_id],
        )?;
        tx.event(Ev::new(EventKind::SessionStarted).session(session_id))?;
    }
    tx.event(
        Ev::new(EventKind::TaskStarted)
            .session(session_id)
            .task(task_id)
            .worker(Some(worker))
            .attempt(attempt)
            .detail(json!({ "log_path": log_text })),
    )?;
    tx.execute(
        "UPDATE workers SET status = 'busy', task_session_id = ?1, task_id = ?2, attempt = ?3,
             task_started_at = ?4, last_heartbeat = ?4
         WHERE id = ?5",
        params![session_id, task_id, attempt, tx.now, worker],
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
        lease_ttl: Duration::from_millis(session.heartbeat_timeout_ms),
        isolation: session.isolation,
        scope: session.scope,
        base_commit: task_base.or(session.base_commit),
        repo_root: session.repo_root,
        log_path,
    }))
}

pub(super) fn finish(
    tx: &Tx<'_>,
    lease: &Lease,
    outcome: &Outcome,
    report: &AttemptReport,
) -> OpResult<Finish> {
    let worker = lease.worker_id.as_str();
    let (session_id, task_id) = (lease.session_id.as_str(), lease.task_id.as_str());
    if !lease_is_current(tx, lease)? {
        let r = tx
            .query_opt(
                "SELECT state, attempt FROM tasks WHERE session_id = ?1 AND id = ?2",
                params![session_id, task_id],
            )?
            .ok_or_else(|| StoreError::NoSuchTask {
                session: session_id.to_string(),
                task: task_id.to_string(),
            })?;
        let (state, attempt): (String, u32) = (r.get(0)?, r.get(1)?);
        tx.event(
            Ev::new(EventKind::StaleResultRejected)
                .session(session_id)
                .task(task_id)
                .worker(Some(worker))
                .attempt(lease.attempt.0)
                .detail(json!({
                    "outcome": outcome.as_str(),
                    "reason": outcome.describe(),
                    "task_state": state,
                    "task_attempt": attempt,
                })),
        )?;
        // The worker is alive and done with the old attempt.
        tx.execute(
            "UPDATE workers SET
                 status = CASE WHEN status IN ('busy', 'offline') THEN 'idle' ELSE status END,
                 task_session_id = NULL, task_id = NULL, attempt = NULL, task_started_at = NULL
             WHERE id = ?1 AND task_session_id = ?2 AND task_id = ?3 AND attempt = ?4",
            params![worker, session_id, task_id, lease.attempt.0],
        )?;
        return Ok(Finish::Stale);
    }
    if !report.scope_violations.is_empty() {
        tx.event(
            Ev::new(EventKind::ScopeViolation)
                .session(session_id)
                .task(task_id)
                .worker(Some(worker))
                .attempt(lease.attempt.0)
                .detail(json!({ "files": report.scope_violations })),
        )?;
    }
    let next = apply_outcome_with(tx, lease, outcome, report)?;
    let (completed, failed): (i64, i64) = match next {
        TaskNext::Succeed => (1, 0),
        TaskNext::Fail | TaskNext::Retry => (0, 1),
        TaskNext::Requeue | TaskNext::Cancel => (0, 0),
    };
    tx.execute(
        "UPDATE workers SET status = CASE WHEN status IN ('busy', 'offline') THEN 'idle'
                 ELSE status END,
             task_session_id = NULL, task_id = NULL, attempt = NULL, task_started_at = NULL,
             tasks_completed = tasks_completed + ?1, tasks_failed = tasks_failed + ?2,
             last_heartbeat = ?3
         WHERE id = ?4",
        params![completed, failed, tx.now, worker],
    )?;
    Ok(Finish::Recorded(next))
}

/// Records an attempt's end on its task, releases its locks, moves the task on by the core rule,
/// and settles the session. The caller has checked that `lease` is current.
fn apply_outcome(tx: &Tx<'_>, lease: &Lease, outcome: &Outcome) -> OpResult<TaskNext> {
    apply_outcome_with(tx, lease, outcome, &AttemptReport::default())
}

fn apply_outcome_with(
    tx: &Tx<'_>,
    lease: &Lease,
    outcome: &Outcome,
    report: &AttemptReport,
) -> OpResult<TaskNext> {
    let (session_id, task_id) = (lease.session_id.as_str(), lease.task_id.as_str());
    let attempt = lease.attempt.0;
    let worker = Some(lease.worker_id.as_str());
    let r = tx.query_one(
        "SELECT retries, failures, lost FROM tasks WHERE session_id = ?1 AND id = ?2",
        params![session_id, task_id],
    )?;
    let (retries, failures, lost): (u32, u32, u32) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let session_status = session::status(tx, session_id)?;
    let mut detail = serde_json::to_value(outcome)?;
    if let serde_json::Value::Object(map) = &mut detail {
        if let Some(commit) = &report.commit {
            map.insert("commit".into(), json!(commit));
        }
        if !report.changed.is_empty() {
            map.insert("changed".into(), json!(report.changed));
        }
    }
    tx.execute(
        "UPDATE attempts SET finished_at = ?1, outcome = ?2, exit_code = ?3, detail = ?4
         WHERE session_id = ?5 AND task_id = ?6 AND attempt = ?7",
        params![
            tx.now,
            outcome.as_str(),
            outcome.exit_code(),
            &detail.to_string(),
            session_id,
            task_id,
            attempt
        ],
    )?;
    lock::release_task_locks(tx, session_id, task_id, worker, attempt)?;
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
    let lost_now = u32::from(*outcome == Outcome::LeaseLost);
    let failed_now = u32::from(
        lost_now == 0
            && !matches!(
                next,
                TaskNext::Succeed | TaskNext::Requeue | TaskNext::Cancel
            ),
    );
    let (state, terminal) = match next {
        TaskNext::Succeed => ("succeeded", true),
        TaskNext::Retry | TaskNext::Requeue => ("ready", false),
        TaskNext::Fail => ("failed", true),
        TaskNext::Cancel => ("cancelled", true),
    };
    tx.execute(
        "UPDATE tasks SET state = ?1, outcome = ?2, exit_code = ?3, lease_expires_at = NULL,
             failures = failures + ?4, lost = lost + ?5,
             finished_at = CASE WHEN ?6 THEN ?7 ELSE finished_at END
         WHERE session_id = ?8 AND id = ?9",
        params![
            state,
            outcome.as_str(),
            outcome.exit_code(),
            failed_now,
            lost_now,
            terminal,
            tx.now,
            session_id,
            task_id
        ],
    )?;
    let ev = |kind| {
        Ev::new(kind)
            .session(session_id)
            .task(task_id)
            .worker(worker)
            .attempt(attempt)
    };
    match next {
        TaskNext::Succeed => {
            session::bump(tx, session_id, Counter::Succeeded, 1)?;
            tx.event(ev(EventKind::TaskSucceeded).detail(json!({
                "exit_code": 0,
                "commit": report.commit,
                "changed_files": report.changed.len(),
            })))?;
            release_dependents(tx, session_id, task_id)?;
        }
        TaskNext::Retry | TaskNext::Requeue => {
            tx.event(ev(EventKind::TaskRequeued).detail(json!({
                "reason": outcome.describe(),
                "outcome": outcome.as_str(),
                "next_attempt": attempt + 1,
            })))?;
        }
        TaskNext::Fail => {
            session::bump(tx, session_id, Counter::Failed, 1)?;
            tx.event(ev(EventKind::TaskFailed).detail(json!({
                "reason": outcome.describe(),
                "outcome": outcome.as_str(),
                "exit_code": outcome.exit_code(),
            })))?;
            skip_dependents(tx, session_id, task_id)?;
        }
        TaskNext::Cancel => {
            session::bump(tx, session_id, Counter::Cancelled, 1)?;
            tx.event(ev(EventKind::TaskCancelled).detail(json!({ "reason": outcome.describe() })))?;
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

fn release_dependents(tx: &Tx<'_>, session_id: &str, task_id: &str) -> OpResult<()> {
    for dependent in dependents(tx, session_id, task_id)? {
        let became_ready: Option<String> = tx
            .query_opt(
                "UPDATE tasks SET deps_left = deps_left - 1,
                     state = CASE WHEN deps_left = 1 AND state = 'pending' THEN 'ready' ELSE state END
                 WHERE session_id = ?1 AND id = ?2
                 RETURNING state",
                params![session_id, &dependent],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        if became_ready.as_deref() == Some("ready") {
            tx.event(
                Ev::new(EventKind::TaskReady)
                    .session(session_id)
                    .task(&dependent),
            )?;
        }
    }
    Ok(())
}

/// Skips every task that (transitively) waits for `failed`. Iterative, so a 10,000-long chain
/// does not exhaust the stack.
fn skip_dependents(tx: &Tx<'_>, session_id: &str, failed: &str) -> OpResult<()> {
    let mut stack = vec![failed.to_string()];
    let mut skipped = 0i64;
    while let Some(task) = stack.pop() {
        for dependent in dependents(tx, session_id, &task)? {
            let changed = tx.execute(
                "UPDATE tasks SET state = 'skipped', finished_at = ?1, outcome = 'skipped'
                 WHERE session_id = ?2 AND id = ?3 AND state = 'pending'",
                params![tx.now, session_id, &dependent],
            )?;
            if changed > 0 {
                skipped += 1;
                tx.event(
                    Ev::new(EventKind::TaskSkipped)
                        .session(session_id)
                        .task(&dependent)
                        .detail(json!({ "because": task, "failed": failed })),
                )?;
                stack.push(dependent);
            }
        }
    }
    session::bump(tx, session_id, Counter::Skipped, skipped)
}

pub(super) fn anything_expired(c: &dyn Db, now: i64) -> OpResult<bool> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE state = 'running' AND lease_expires_at < ?1)
             OR EXISTS (SELECT 1 FROM workers WHERE status IN ('idle', 'busy')
                            AND last_heartbeat + heartbeat_timeout_ms < ?1)",
        params![now],
    )?
    .get(0)
}

pub(super) fn requeue_expired(tx: &Tx<'_>) -> OpResult<Expired> {
    let mut expired = Expired::default();
    let silent: Vec<(String, i64)> = tx
        .query(
            "SELECT id, last_heartbeat FROM workers
             WHERE status IN ('idle', 'busy') AND last_heartbeat + heartbeat_timeout_ms < ?1
             ORDER BY id",
            params![tx.now],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<OpResult<_>>()?;
    for (worker, last) in silent {
        mark_offline(tx, &worker, json!({ "last_heartbeat_ms": last }))?;
        expired.workers.push(WorkerId::from_string(worker));
    }
    let leases: Vec<(String, String, u32, String)> = tx
        .query(
            // Ties in a fixed order, so every backend requeues alike.
            "SELECT session_id, id, attempt, worker_id FROM tasks
             WHERE state = 'running' AND lease_expires_at < ?1
             ORDER BY lease_expires_at, session_id, seq",
            params![tx.now],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<OpResult<_>>()?;
    for (session_id, task_id, attempt, worker) in leases {
        let status: Option<String> = tx
            .query_opt("SELECT status FROM workers WHERE id = ?1", params![&worker])?
            .map(|r| r.get(0))
            .transpose()?;
        if matches!(status.as_deref(), Some("idle" | "busy")) {
            mark_offline(
                tx,
                &worker,
                json!({ "reason": "lease expired", "task_id": task_id }),
            )?;
            expired.workers.push(WorkerId::from_string(worker.clone()));
        }
        let lease = Lease {
            session_id: SessionId::from_string(session_id),
            task_id: TaskId::new(task_id)
                .map_err(|e| StoreError::Damaged(format!("task id in store: {e}")))?,
            attempt: Attempt(attempt),
            worker_id: WorkerId::from_string(worker),
        };
        let next = apply_outcome(tx, &lease, &Outcome::LeaseLost)?;
        expired.leases.push((lease, next));
    }
    Ok(expired)
}

fn mark_offline(tx: &Tx<'_>, worker: &str, detail: serde_json::Value) -> OpResult<()> {
    tx.execute(
        "UPDATE workers SET status = 'offline' WHERE id = ?1",
        params![worker],
    )?;
    tx.event(
        Ev::new(EventKind::WorkerOffline)
            .worker(Some(worker))
            .detail(detail),
    )?;
    Ok(())
}

pub(super) fn request_stops(tx: &Tx<'_>, session_id: &str, count: u32) -> OpResult<Vec<WorkerId>> {
    session::status(tx, session_id)?;
    // Idle workers first, then the newest: a busy worker leaves only after its task.
    let chosen: Vec<String> = tx
        .query(
            "SELECT id FROM workers
             WHERE session_id = ?1 AND status IN ('idle', 'busy') AND NOT stop_requested
             ORDER BY status = 'busy', started_at DESC, id
             LIMIT ?2",
            params![session_id, count],
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
    if state.status == "stopped" {
        return Ok(());
    }
    // A worker that leaves while holding a lease gives its task back now rather than making
    // everyone wait for the lease to expire.
    let held: Vec<(String, String, u32)> = tx
        .query(
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
            task_id: TaskId::new(task_id)
                .map_err(|e| StoreError::Damaged(format!("task id in store: {e}")))?,
            attempt: Attempt(attempt),
            worker_id: WorkerId::from_string(worker),
        };
        apply_outcome(tx, &lease, &Outcome::Interrupted)?;
    }
    let r = tx.query_one(
        "UPDATE workers SET status = 'stopped', task_session_id = NULL, task_id = NULL,
             attempt = NULL, task_started_at = NULL, last_heartbeat = ?1
         WHERE id = ?2
         RETURNING tasks_completed, tasks_failed",
        params![tx.now, worker],
    )?;
    let (completed, failed): (u32, u32) = (r.get(0)?, r.get(1)?);
    tx.event(
        Ev::new(EventKind::WorkerStopped)
            .worker(Some(worker))
            .detail(json!({
                "tasks_completed": completed,
                "tasks_failed": failed,
            })),
    )?;
    Ok(())
}

pub(super) fn prune_workers(tx: &Tx<'_>, before: i64) -> OpResult<u32> {
    let n = tx.execute(
        "DELETE FROM workers WHERE status IN ('stopped', 'offline') AND last_heartbeat < ?1",
        params![before],
    )?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
