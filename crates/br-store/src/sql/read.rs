//! Reads: sessions, tasks, attempts, workers, locks, events and the summary. Each runs inside
//! one read transaction, so what it returns is a consistent snapshot.

use std::str::FromStr;

use br_core::detail::ConflictStage;
use br_core::{Attempt, EventDetail, EventKind, SessionId, SessionStatus, TaskId, Timestamp};
use br_core::{Landing, WorkerId, WorkerStatus};
use serde::de::DeserializeOwned;

use super::{Db, OpResult, Row, Tx, params};
use crate::error::StoreError;
use crate::model::*;

pub(super) const SESSION_COLUMNS: &str = "id, name, slug, status, repo_root, plan_path, base, \
    base_commit, isolation, scope, verify, on_conflict, heartbeat_timeout_ms, workers_wanted, \
    created_at, started_at, completed_at, total_tasks, succeeded_tasks, failed_tasks, \
    skipped_tasks, cancelled_tasks, running_tasks, repo_id, integration_commit, landed_tasks, keep, \
    lander, slot_setup, input_tokens, output_tokens, cost_micros, remote";

/// [`SESSION_COLUMNS`] of the sessions table aliased `s`, for a query that joins sessions with
/// another table, and how many they are (where that table's columns start). Made once: every
/// claim's query names them.
pub(super) fn session_columns_of_s() -> (&'static str, usize) {
    static COLUMNS: std::sync::LazyLock<(String, usize)> = std::sync::LazyLock::new(|| {
        let columns: Vec<String> = SESSION_COLUMNS
            .split(',')
            .map(|c| format!("s.{}", c.trim()))
            .collect();
        (columns.join(", "), columns.len())
    });
    (COLUMNS.0.as_str(), COLUMNS.1)
}

const TASK_COLUMNS: &str = "id, state, attempt, worker_id, exit_code, started_at, finished_at, \
    files, after, log_path, run, outcome, blocked_by, timeout_ms, retries, base_commit, landing, \
    landed_commit, repairs, start, land, agent, pool, input_tokens, output_tokens, cost_micros";

const WORKER_COLUMNS: &str = "id, status, host, pid, session_id, task_session_id, task_id, \
    attempt, tasks_completed, tasks_failed, last_heartbeat, started_at, task_started_at, \
    stop_requested";

pub(super) fn parsed<T>(r: &Row, idx: usize) -> OpResult<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = r.get(idx)?;
    text.parse().map_err(|e| r.damaged(idx, e))
}

/// Enums stored by their serde name (`"worktree"`, `"strict"`).
pub(super) fn serde_word<T: DeserializeOwned>(r: &Row, idx: usize) -> OpResult<T> {
    let text: String = r.get(idx)?;
    serde_json::from_value(serde_json::Value::String(text)).map_err(|e| r.damaged(idx, e))
}

pub(super) fn json<T: DeserializeOwned>(r: &Row, idx: usize) -> OpResult<T> {
    let text: String = r.get(idx)?;
    serde_json::from_str(&text).map_err(|e| r.damaged(idx, e))
}

/// Three columns from `idx`: input tokens, output tokens, cost in millionths of a dollar.
pub(super) fn usage(r: &Row, idx: usize) -> OpResult<br_core::agent::Usage> {
    Ok(br_core::agent::Usage {
        input_tokens: r.get::<Option<u64>>(idx)?.unwrap_or(0),
        output_tokens: r.get::<Option<u64>>(idx + 1)?.unwrap_or(0),
        cost_micros: r.get::<Option<u64>>(idx + 2)?.unwrap_or(0),
    })
}

fn ts(r: &Row, idx: usize) -> OpResult<Timestamp> {
    Ok(Timestamp(r.get(idx)?))
}

fn opt_ts(r: &Row, idx: usize) -> OpResult<Option<Timestamp>> {
    Ok(r.get::<Option<i64>>(idx)?.map(Timestamp))
}

fn task_id(r: &Row, idx: usize) -> OpResult<Option<TaskId>> {
    r.get::<Option<String>>(idx)?
        .map(|t| TaskId::new(t).map_err(|e| r.damaged(idx, e)))
        .transpose()
}

/// A `LIMIT` parameter: the largest integer for none, since SQLite refuses `LIMIT NULL` and
/// PostgreSQL a negative limit.
fn limit(limit: Option<usize>) -> i64 {
    limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

pub(super) fn session_from_row(r: &Row) -> OpResult<Session> {
    let total: u32 = r.get(17)?;
    let succeeded: u32 = r.get(18)?;
    let failed: u32 = r.get(19)?;
    let skipped: u32 = r.get(20)?;
    let cancelled: u32 = r.get(21)?;
    let running: u32 = r.get(22)?;
    let finished = succeeded + failed + skipped + cancelled;
    Ok(Session {
        id: SessionId::from_string(r.get::<String>(0)?),
        name: r.get(1)?,
        slug: r.get(2)?,
        status: parsed(r, 3)?,
        repo_root: r.get(4)?,
        repo_id: r.get(23)?,
        plan_path: r.get(5)?,
        base: r.get(6)?,
        base_commit: r.get(7)?,
        isolation: serde_word(r, 8)?,
        scope: serde_word(r, 9)?,
        verify: r.get(10)?,
        on_conflict: serde_word(r, 11)?,
        heartbeat_timeout_ms: r.get(12)?,
        workers_wanted: r.get(13)?,
        created_at: ts(r, 14)?,
        started_at: opt_ts(r, 15)?,
        completed_at: opt_ts(r, 16)?,
        progress_percent: progress_percent(finished, total),
        total_tasks: total,
        succeeded_tasks: succeeded,
        failed_tasks: failed,
        running_tasks: running,
        queued_tasks: total.saturating_sub(finished + running),
        skipped_tasks: skipped,
        cancelled_tasks: cancelled,
        integration_commit: r.get(24)?,
        landed_tasks: r.get(25)?,
        keep: json(r, 26)?,
        lander: r.get::<Option<String>>(27)?.map(WorkerId::from_string),
        slot_setup: json(r, 28)?,
        usage: usage(r, 29)?,
        remote: r.get(32)?,
    })
}

pub(super) fn session(c: &dyn Db, id: &str) -> OpResult<Session> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
    c.query_opt(&sql, params![id])?
        .map(|r| session_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NoSuchSession(id.to_string()).into())
}

pub(super) fn resolve_session(c: &dyn Db, reference: &str) -> OpResult<Session> {
    if let Ok(s) = session(c, reference) {
        return Ok(s);
    }
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE name = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"
    );
    if let Some(r) = c.query_opt(&sql, params![reference])? {
        return session_from_row(&r);
    }
    // Ids are lowercase hex: anything else cannot be a prefix (and must not reach LIKE).
    if !reference.is_empty() && reference.chars().all(|ch| ch.is_ascii_hexdigit()) {
        let pattern = format!("{}%", reference.to_ascii_lowercase());
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id LIKE ?1 ORDER BY created_at DESC, rowid DESC LIMIT 6"
        );
        let found = c
            .query(&sql, params![&pattern])?
            .iter()
            .map(session_from_row)
            .collect::<OpResult<Vec<_>>>()?;
        match found.len() {
            0 => {}
            1 => return Ok(found.into_iter().next().expect("one element")),
            _ => {
                return Err(StoreError::AmbiguousSession {
                    reference: reference.to_string(),
                    candidates: found
                        .iter()
                        .map(|s| format!("{} ({})", s.id, s.name))
                        .collect(),
                }
                .into());
            }
        }
    }
    Err(StoreError::NoSuchSession(reference.to_string()).into())
}

pub(super) fn sessions(c: &dyn Db, filter: &SessionFilter) -> OpResult<Vec<Session>> {
    let limit = limit(filter.limit);
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE (CAST(?1 AS TEXT) IS NULL OR status = ?1)
         ORDER BY created_at DESC, rowid DESC LIMIT ?2"
    );
    let status = filter.status.map(br_core::SessionStatus::as_str);
    c.query(&sql, params![status, limit])?
        .iter()
        .map(session_from_row)
        .collect()
}

fn task_from_row(r: &Row, session: &Session) -> OpResult<Task> {
    let id: TaskId = {
        let text: String = r.get(0)?;
        TaskId::new(text).map_err(|e| r.damaged(0, e))?
    };
    Ok(Task {
        branch: session.task_branch(&id),
        id,
        state: parsed(r, 1)?,
        attempts: r.get(2)?,
        worker_id: r.get::<Option<String>>(3)?.map(WorkerId::from_string),
        exit_code: r.get(4)?,
        started_at: opt_ts(r, 5)?,
        finished_at: opt_ts(r, 6)?,
        files: json(r, 7)?,
        after: json(r, 8)?,
        log_path: r.get(9)?,
        run: r.get(10)?,
        outcome: r.get(11)?,
        blocked_by: r
            .get::<Option<String>>(12)?
            .map(|text| serde_json::from_str(&text).map_err(|e| r.damaged(12, e)))
            .transpose()?,
        timeout_ms: r.get(13)?,
        retries: r.get(14)?,
        base_commit: r.get(15)?,
        scope_violations: Vec::new(),
        conflicts: Vec::new(),
        landing: r.get(16)?,
        landed_commit: r.get(17)?,
        repairs: r.get(18)?,
        start: serde_word(r, 19)?,
        land: serde_word(r, 20)?,
        agent: r
            .get::<Option<String>>(21)?
            .map(|text| {
                serde_json::from_str::<br_core::agent::AgentProfile>(&text)
                    .map(|p| p.name)
                    .map_err(|e| r.damaged(21, e))
            })
            .transpose()?,
        pool: r.get(22)?,
        usage: usage(r, 23)?,
    })
}

/// Fills in scope violations and predicted conflicts from the session's events (both sides of
/// each conflict). A violation counts for the attempt that made it only. Details are read
/// leniently: one whose shape is not known adds nothing.
fn annotate(c: &dyn Db, session_id: &str, tasks: &mut [Task]) -> OpResult<()> {
    let rows = c
        .query(
            // The kinds stay literals: they are the predicate of the partial index
            // `events_notes`, which the planner uses only when it sees the same constants.
            "SELECT kind, task_id, attempt, detail FROM events
             WHERE session_id = ?1 AND kind IN ('scope_violation', 'merge_conflict')
             ORDER BY seq",
            params![session_id],
        )?
        .iter()
        .map(|r| {
            let kind: EventKind = r.get(0)?;
            Ok((
                r.get::<Option<String>>(1)?,
                r.get::<Option<u32>>(2)?,
                EventDetail::read(kind, &json::<serde_json::Value>(r, 3)?),
            ))
        })
        .collect::<OpResult<Vec<_>>>()?;
    let landed = |t: &Task| t.landing == Some(Landing::Landed);
    for (task, attempt, detail) in rows {
        let Some(task) = task else { continue };
        let (with, files, stage) = match detail {
            Some(EventDetail::ScopeViolation(v)) => {
                if let Some(t) = tasks.iter_mut().find(|t| t.id.as_str() == task)
                    && attempt == Some(t.attempts)
                {
                    t.scope_violations = v.files;
                }
                continue;
            }
            Some(EventDetail::MergeConflict(m)) => (m.with, m.files, m.stage),
            _ => continue,
        };
        // Notes are current, not a pile: a conflict found when landing is the task's own, while
        // it is being repaired or once it failed for it; a predicted one holds between two
        // results neither of which landed, and only for the attempt that predicted it.
        let Some(me) = tasks.iter().find(|t| t.id.as_str() == task) else {
            continue;
        };
        if landed(me) {
            continue;
        }
        let current = attempt == Some(me.attempts);
        let sides: Vec<(String, String)> = match stage {
            Some(ConflictStage::Merge) => {
                let repairing = me.repairs > 0 && attempt.is_some_and(|a| a + 1 == me.attempts);
                if !(current || repairing) {
                    continue;
                }
                vec![(task.clone(), with.clone())]
            }
            None => {
                let other_landed = tasks.iter().any(|t| t.id.as_str() == with && landed(t));
                if !current || other_landed || (with == "integration" && me.landing.is_some()) {
                    continue;
                }
                vec![(task.clone(), with.clone()), (with.clone(), task.clone())]
            }
        };
        for (me, other) in sides {
            if let Some(t) = tasks.iter_mut().find(|t| t.id.as_str() == me) {
                let conflict = TaskConflict {
                    with: other,
                    files: files.clone(),
                };
                if !t.conflicts.contains(&conflict) {
                    t.conflicts.push(conflict);
                }
            }
        }
    }
    Ok(())
}

/// Reduces each task's recorded lock conflict to the locks still held.
fn still_blocked(c: &dyn Db, tasks: &mut [Task]) -> OpResult<()> {
    if tasks.iter().all(|t| t.blocked_by.is_none()) {
        return Ok(());
    }
    let held = locks(c)?;
    for t in tasks.iter_mut() {
        t.forget_released_locks(|h| {
            held.iter()
                .any(|l| h.is(&l.path, &l.session_id, l.task_id.as_ref(), l.attempt))
        });
    }
    Ok(())
}

pub(super) fn tasks(c: &dyn Db, session_id: &str) -> OpResult<Vec<Task>> {
    let session = session(c, session_id)?;
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE session_id = ?1 ORDER BY seq");
    let mut rows = Vec::with_capacity(usize::try_from(session.total_tasks).unwrap_or(0));
    c.query_each(&sql, params![session_id], &mut |r| {
        rows.push(task_from_row(r, &session)?);
        Ok(())
    })?;
    annotate(c, session_id, &mut rows)?;
    still_blocked(c, &mut rows)?;
    Ok(rows)
}

pub(super) fn task(c: &dyn Db, session_id: &str, task_id: &str) -> OpResult<Task> {
    let session = session(c, session_id)?;
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE session_id = ?1 AND id = ?2");
    let task = c
        .query_opt(&sql, params![session_id, task_id])?
        .map(|r| task_from_row(&r, &session))
        .transpose()?
        .ok_or_else(|| StoreError::NoSuchTask {
            session: session_id.to_string(),
            task: task_id.to_string(),
        })?;
    let mut one = [task];
    annotate(c, session_id, &mut one)?;
    still_blocked(c, &mut one)?;
    let [task] = one;
    Ok(task)
}

/// The columns [`attempt_from_row`] reads, in its order.
const ATTEMPT_COLUMNS: &str = "attempt, worker_id, started_at, finished_at, outcome, exit_code, \
     detail, log_path, reason, start_commit, input_tokens, output_tokens, cost_micros";

fn attempt_from_row(r: &Row) -> OpResult<AttemptRecord> {
    Ok(AttemptRecord {
        attempt: Attempt(r.get(0)?),
        worker_id: WorkerId::from_string(r.get::<String>(1)?),
        started_at: ts(r, 2)?,
        finished_at: opt_ts(r, 3)?,
        outcome: r.get(4)?,
        exit_code: r.get(5)?,
        detail: json(r, 6)?,
        log_path: r.get(7)?,
        reason: r.get(8)?,
        start_commit: r.get(9)?,
        usage: usage(r, 10)?,
    })
}

pub(super) fn attempts(
    c: &dyn Db,
    session_id: &str,
    task_id: &str,
) -> OpResult<Vec<AttemptRecord>> {
    require_task(c, session_id, task_id)?;
    c.query(
        &format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts
             WHERE session_id = ?1 AND task_id = ?2 ORDER BY attempt"
        ),
        params![session_id, task_id],
    )?
    .iter()
    .map(attempt_from_row)
    .collect()
}

pub(super) fn history(c: &dyn Db, session_id: &str) -> OpResult<SessionHistory> {
    session(c, session_id)?;
    let attempts = c
        .query(
            "SELECT task_id, attempt, reason, outcome, worker_id, started_at, finished_at,
                    log_path, input_tokens, output_tokens, cost_micros
             FROM attempts WHERE session_id = ?1 ORDER BY started_at, task_id, attempt",
            params![session_id],
        )?
        .iter()
        .map(|r| {
            Ok(SessionAttempt {
                task_id: TaskId::new(r.get::<String>(0)?).map_err(|e| r.damaged(0, e))?,
                attempt: Attempt(r.get(1)?),
                reason: r.get(2)?,
                outcome: r.get(3)?,
                worker_id: WorkerId::from_string(r.get::<String>(4)?),
                started_at: ts(r, 5)?,
                finished_at: opt_ts(r, 6)?,
                log_path: r.get(7)?,
                usage: usage(r, 8)?,
            })
        })
        .collect::<OpResult<Vec<_>>>()?;
    let landing = c
        .query(
            // The kinds stay literals: they are the predicate of the partial index
            // `events_landing`, which the planner uses only when it sees the same constants.
            "SELECT seq, at, kind, session_id, task_id, worker_id, attempt, detail FROM events
             WHERE session_id = ?1
               AND kind IN ('task_landed', 'merge_conflict', 'verify_failed')
             ORDER BY seq",
            params![session_id],
        )?
        .iter()
        .map(event_from_row)
        .collect::<OpResult<Vec<_>>>()?;
    let waiting = c
        .query(
            "SELECT id FROM tasks WHERE session_id = ?1 AND landing = ?2 ORDER BY seq",
            params![session_id, Landing::Waiting],
        )?
        .iter()
        .map(|r| TaskId::new(r.get::<String>(0)?).map_err(|e| r.damaged(0, e)))
        .collect::<OpResult<Vec<_>>>()?;
    Ok(SessionHistory {
        attempts,
        landing,
        waiting,
    })
}

/// Refuses a task that does not exist (or a session that does not), as [`task`] would, without
/// reading the task whole: a read of its attempts, prompt or events needs only to know it is
/// there.
fn require_task(c: &dyn Db, session_id: &str, task_id: &str) -> OpResult<()> {
    let found = c.query_opt(
        "SELECT 1 FROM tasks WHERE session_id = ?1 AND id = ?2",
        params![session_id, task_id],
    )?;
    if found.is_none() {
        // Which is missing: the session, or the task in it.
        session(c, session_id)?;
        return Err(StoreError::NoSuchTask {
            session: session_id.to_string(),
            task: task_id.to_string(),
        }
        .into());
    }
    Ok(())
}

pub(super) fn task_prompt(c: &dyn Db, session_id: &str, task_id: &str) -> OpResult<Option<String>> {
    let r = c.query_opt(
        "SELECT prompt FROM tasks WHERE session_id = ?1 AND id = ?2",
        params![session_id, task_id],
    )?;
    match r {
        Some(r) => r.get(0),
        None => require_task(c, session_id, task_id).map(|()| None),
    }
}

pub(super) fn task_events(c: &dyn Db, session_id: &str, task_id: &str) -> OpResult<Vec<Event>> {
    require_task(c, session_id, task_id)?;
    c.query(
        "SELECT seq, at, kind, session_id, task_id, worker_id, attempt, detail FROM events
         WHERE session_id = ?1 AND task_id = ?2 ORDER BY seq",
        params![session_id, task_id],
    )?
    .iter()
    .map(event_from_row)
    .collect()
}

fn worker_from_row(r: &Row) -> OpResult<Worker> {
    let serving: Option<String> = r.get(4)?;
    let task_session: Option<String> = r.get(5)?;
    Ok(Worker {
        id: WorkerId::from_string(r.get::<String>(0)?),
        status: parsed(r, 1)?,
        host: r.get(2)?,
        pid: r.get(3)?,
        session_id: task_session.or(serving).map(SessionId::from_string),
        current_task: task_id(r, 6)?,
        attempt: r.get::<Option<u32>>(7)?.map(Attempt),
        tasks_completed: r.get(8)?,
        tasks_failed: r.get(9)?,
        last_heartbeat: ts(r, 10)?,
        started_at: ts(r, 11)?,
        task_started_at: opt_ts(r, 12)?,
        stop_requested: r.get(13)?,
    })
}

pub(super) fn workers(c: &dyn Db, filter: &WorkerFilter) -> OpResult<Vec<Worker>> {
    let sql = format!(
        "SELECT {WORKER_COLUMNS} FROM workers
         WHERE (CAST(?1 AS TEXT) IS NULL OR status = ?1) AND (CAST(?2 AS TEXT) IS NULL OR session_id = ?2)
         ORDER BY started_at, id"
    );
    c.query(
        &sql,
        params![
            filter.status.map(br_core::WorkerStatus::as_str),
            filter.session.as_ref().map(SessionId::as_str),
        ],
    )?
    .iter()
    .map(worker_from_row)
    .collect()
}

pub(super) fn worker(c: &dyn Db, id: &str) -> OpResult<Worker> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = ?1");
    c.query_opt(&sql, params![id])?
        .map(|r| worker_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NoSuchWorker(id.to_string()).into())
}

pub(super) fn lock_from_row(r: &Row) -> OpResult<Lock> {
    Ok(Lock {
        path: r.get(0)?,
        session_id: SessionId::from_string(r.get::<String>(1)?),
        task_id: task_id(r, 2)?,
        attempt: r.get::<Option<u32>>(3)?.map(Attempt),
        acquired_at: ts(r, 4)?,
    })
}

pub(super) const LOCK_COLUMNS: &str = "path, session_id, task_id, attempt, acquired_at";

pub(super) fn locks(c: &dyn Db) -> OpResult<Vec<Lock>> {
    let sql = format!("SELECT {LOCK_COLUMNS} FROM locks ORDER BY acquired_at, id");
    c.query(&sql, &[])?.iter().map(lock_from_row).collect()
}

pub(super) fn pools(c: &dyn Db) -> OpResult<Vec<Pool>> {
    // `state = 'running'` stays a literal: the predicate of `tasks_pool_running`.
    c.query(
        "SELECT p.name, p.size, p.backoff_ms, p.parked_until, p.parked_reason,
                (SELECT COUNT(*) FROM tasks t WHERE t.pool = p.name AND t.state = 'running')
         FROM pools p ORDER BY p.name",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(Pool {
            name: r.get(0)?,
            size: r.get(1)?,
            backoff_ms: r.get(2)?,
            parked_until: opt_ts(r, 3)?,
            parked_reason: r.get(4)?,
            running: r.get(5)?,
        })
    })
    .collect()
}

pub(super) fn events(c: &dyn Db, filter: &EventFilter) -> OpResult<Vec<Event>> {
    let limit = limit(filter.limit);
    c.query(
        "SELECT seq, at, kind, session_id, task_id, worker_id, attempt, detail FROM events
         WHERE seq > ?1 AND (CAST(?2 AS TEXT) IS NULL OR session_id = ?2)
         ORDER BY seq LIMIT ?3",
        params![
            filter.after_seq.unwrap_or(0),
            filter.session.as_ref().map(SessionId::as_str),
            limit,
        ],
    )?
    .iter()
    .map(event_from_row)
    .collect()
}

fn event_from_row(r: &Row) -> OpResult<Event> {
    let kind: EventKind = r.get(2)?;
    let detail: String = r.get(7)?;
    Ok(Event {
        seq: r.get(0)?,
        at: ts(r, 1)?,
        kind,
        session_id: r.get::<Option<String>>(3)?.map(SessionId::from_string),
        task_id: task_id(r, 4)?,
        worker_id: r.get::<Option<String>>(5)?.map(WorkerId::from_string),
        attempt: r.get::<Option<u32>>(6)?.map(Attempt),
        detail: EventDetail::from_stored(kind, &detail).map_err(|e| r.damaged(7, e))?,
    })
}

pub(super) fn summary(c: &dyn Db, now: i64) -> OpResult<Summary> {
    let (mut idle, mut busy, mut offline) = (0u32, 0u32, 0u32);
    for r in c.query("SELECT status, count(*) FROM workers GROUP BY status", &[])? {
        let n: u32 = r.get(1)?;
        match r.get::<WorkerStatus>(0)? {
            WorkerStatus::Idle => idle = n,
            WorkerStatus::Busy => busy = n,
            WorkerStatus::Offline => offline = n,
            // Stopped workers have left: they are not counted.
            WorkerStatus::Stopped => {}
        }
    }
    let [created, running, paused] = SessionStatus::ACTIVE;
    // SUM of BIGINT is NUMERIC in PostgreSQL: cast back.
    let r = c.query_one(
        "SELECT count(*),
                count(*) FILTER (WHERE status IN (?1, ?2, ?3)),
                CAST(COALESCE(SUM(total_tasks), 0) AS BIGINT),
                CAST(COALESCE(SUM(succeeded_tasks), 0) AS BIGINT),
                CAST(COALESCE(SUM(failed_tasks), 0) AS BIGINT),
                CAST(COALESCE(SUM(succeeded_tasks + failed_tasks + skipped_tasks + cancelled_tasks), 0)
                     AS BIGINT),
                CAST(COALESCE(SUM(running_tasks), 0) AS BIGINT),
                CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT)
         FROM sessions",
        params![created, running, paused],
    )?;
    let (sessions_total, active, total, succeeded, failed, finished, running): (
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
    ) = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    );
    let live = idle + busy;
    let spent = usage(&r, 7)?;
    Ok(Summary {
        usage: spent,
        timestamp: Timestamp(now),
        workers: WorkerCounts {
            total: live + offline,
            idle,
            busy,
            offline,
            utilization: if live == 0 {
                0.0
            } else {
                (f64::from(busy) / f64::from(live) * 1000.0).round() / 1000.0
            },
        },
        sessions: SessionCounts {
            active,
            total: sessions_total,
        },
        tasks: TaskCounts {
            queued: total.saturating_sub(finished + running),
            running,
            completed: succeeded,
            failed,
        },
    })
}

/// A session's status, read inside a write (lease, lock and session operations all check it).
pub(super) fn session_status(tx: &Tx<'_>, session: &str) -> OpResult<SessionStatus> {
    tx.query_opt(
        "SELECT status FROM sessions WHERE id = ?1",
        params![session],
    )?
    .map(|r| r.get(0))
    .transpose()?
    .ok_or_else(|| StoreError::NoSuchSession(session.to_string()).into())
}
