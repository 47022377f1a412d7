//! Landing as the run goes (`land = "auto"`, worktree isolation): a succeeded task waits
//! (`landing = 'waiting'`, still holding its locks, its dependents still pending) until a worker
//! whose turn it is merges it onto the integration branch. One worker at a time per session
//! holds the turn — `sessions.lander`, a lease like a task's, taken by `claim` before any task
//! and given back in the same transaction that finds nothing waiting, so a success recorded
//! while someone lands is never left behind. Moving the integration branch is the worker's (a
//! compare-and-swap in git); what it means is recorded here: the task landed (its locks go, its
//! dependents become ready), or it is repaired (queued again on the new tip, told why) or fails
//! for good.

use br_core::detail::{
    ConflictStage, MergeConflict, TaskFailed, TaskLanded, TaskRequeued, VerifyFailed,
};
use br_core::plan::OnConflict;
use br_core::{Attempt, EventDetail, Landing, OutcomeKind, RunReason, SessionStatus, TaskState};
use br_core::{SessionId, TaskId, WorkerId};

use super::lease::{release_dependents, skip_dependents};
use super::lock;
use super::session::{self, Counter};
use super::{Db, Ev, OpResult, Tx, params, read};
use crate::model::{
    ClaimRequest, LandingItem, LandingJob, LandingRecorded, LandingResult, NextLanding,
};

/// Whether `request`'s worker could take a landing turn now (a read-only look).
pub(super) fn anything_to_land(c: &dyn Db, request: &ClaimRequest<'_>, now: i64) -> OpResult<bool> {
    let [created, running] = SessionStatus::CLAIMABLE;
    c.query_one(
        // `t.landing = 'waiting'` stays a literal: the predicate of the partial index.
        "SELECT EXISTS (
             SELECT 1 FROM sessions s
             WHERE s.status IN (?2, ?3)
               AND (CAST(?1 AS TEXT) IS NULL OR s.id = ?1)
               AND (s.repo_id IS NULL OR CAST(?4 AS TEXT) IS NULL OR s.repo_id = ?4)
               AND (s.lander IS NULL OR s.landing_expires_at < ?5)
               AND (?6 = 0 OR s.remote IS NOT NULL)
               AND EXISTS (SELECT 1 FROM tasks t INDEXED BY tasks_waiting
                           WHERE t.session_id = s.id AND t.landing = 'waiting'))",
        params![
            request.session.map(SessionId::as_str),
            created,
            running,
            request.repo_id,
            now,
            request.remote_only
        ],
    )?
    .get(0)
}

/// Gives `request`'s worker the landing turn of `session_id`, which `claim` found with something
/// waiting and nobody landing it (or a lander whose turn expired: it died or went silent), if
/// no other claim took it meanwhile.
pub(super) fn take_turn(
    tx: &Tx<'_>,
    request: &ClaimRequest<'_>,
    session_id: &str,
) -> OpResult<Option<LandingJob>> {
    let s = read::session(tx.db, session_id)?;
    let ttl = i64::try_from(s.heartbeat_timeout_ms).unwrap_or(i64::MAX);
    // Taken only if still free, checked by the update itself: two claims running side by side
    // may both have found it free, and one turn has one holder.
    let taken = tx.execute(
        "UPDATE sessions SET lander = ?1, landing_expires_at = ?2
         WHERE id = ?3 AND (lander IS NULL OR landing_expires_at < ?4)",
        params![
            request.worker.as_str(),
            tx.now.saturating_add(ttl),
            session_id,
            tx.now
        ],
    )?;
    if taken == 0 {
        return Ok(None);
    }
    let heartbeat_timeout = s.heartbeat_timeout();
    Ok(Some(LandingJob {
        session_id: s.id,
        session_name: s.name,
        session_slug: s.slug,
        base_commit: s.base_commit,
        integration_commit: s.integration_commit,
        verify: s.verify,
        keep: s.keep,
        heartbeat_timeout,
        worker_id: request.worker.clone(),
        remote: s.remote,
    }))
}

/// Whether `worker` holds `session`'s landing turn; if so, it is renewed. A turn past its time
/// that nobody took is still the worker's: what it does is fenced by git's compare-and-swap
/// and by this check, which fails once another worker took the turn.
pub(super) fn renew(tx: &Tx<'_>, session_id: &str, worker: &str) -> OpResult<bool> {
    let ttl: Option<i64> = tx
        .query_opt(
            "SELECT heartbeat_timeout_ms FROM sessions WHERE id = ?1 AND lander = ?2",
            params![session_id, worker],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    let Some(ttl) = ttl else {
        return Ok(false);
    };
    tx.execute(
        "UPDATE sessions SET landing_expires_at = ?1 WHERE id = ?2",
        params![tx.now.saturating_add(ttl), session_id],
    )?;
    tx.execute(
        "UPDATE workers SET last_heartbeat = ?1 WHERE id = ?2",
        params![tx.now, worker],
    )?;
    Ok(true)
}

/// The next task waiting to land, in plan order (every waiting task's `after` tasks landed
/// already: a dependent starts only after them), or the turn given back when none waits.
pub(super) fn next(tx: &Tx<'_>, session_id: &str, worker: &str) -> OpResult<NextLanding> {
    if !renew(tx, session_id, worker)? {
        return Ok(NextLanding::Lost);
    }
    let row = tx.query_opt(
        "SELECT t.id, t.attempt, t.result_commit, a.start_commit
         FROM tasks t INDEXED BY tasks_waiting
         LEFT JOIN attempts a
             ON a.session_id = t.session_id AND a.task_id = t.id AND a.attempt = t.attempt
         WHERE t.session_id = ?1 AND t.landing = 'waiting'
         ORDER BY t.seq LIMIT 1",
        params![session_id],
    )?;
    let Some(r) = row else {
        tx.execute(
            "UPDATE sessions SET lander = NULL, landing_expires_at = NULL WHERE id = ?1",
            params![session_id],
        )?;
        return Ok(NextLanding::Done);
    };
    let id: String = r.get(0)?;
    Ok(NextLanding::Task(Box::new(LandingItem {
        task_id: TaskId::new(&id)
            .map_err(|e| crate::StoreError::Damaged(format!("task id in store: {e}")))?,
        attempt: Attempt(r.get(1)?),
        result_commit: r.get(2)?,
        start_commit: r.get(3)?,
    })))
}

/// Records how landing `task`'s `attempt` went, if `worker` still holds the turn and the task
/// still waits at that attempt.
pub(super) fn record(
    tx: &Tx<'_>,
    session_id: &str,
    worker: &WorkerId,
    task_id: &TaskId,
    attempt: Attempt,
    result: &LandingResult,
) -> OpResult<LandingRecorded> {
    if !renew(tx, session_id, worker.as_str())? {
        return Ok(LandingRecorded::Stale);
    }
    let task = task_id.as_str();
    let row = tx.query_opt(
        "SELECT t.landing, t.attempt, t.worker_id, t.result_commit, t.repairs, t.max_repairs,
                COALESCE(t.on_conflict, s.on_conflict)
         FROM tasks t JOIN sessions s ON s.id = t.session_id
         WHERE t.session_id = ?1 AND t.id = ?2",
        params![session_id, task],
    )?;
    let Some(r) = row else {
        return Ok(LandingRecorded::Stale);
    };
    let (landing, current, ran_on, task_commit, repairs, max_repairs): (
        Option<Landing>,
        u32,
        Option<String>,
        Option<String>,
        u32,
        u32,
    ) = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    );
    let on_conflict: OnConflict = read::serde_word(&r, 6)?;
    if landing != Some(Landing::Waiting) || current != attempt.0 {
        return Ok(LandingRecorded::Stale);
    }
    let ev = |detail| {
        Ev::new(detail)
            .session(session_id)
            .task(task)
            .worker(Some(worker.as_str()))
            .attempt(attempt.0)
    };
    let (reason, next_reason, final_landing, final_outcome, tip) = match result {
        LandingResult::Landed { commit } => {
            tx.execute(
                "UPDATE tasks SET landing = ?1, landed_commit = ?2 WHERE session_id = ?3 AND id = ?4",
                params![Landing::Landed, commit, session_id, task],
            )?;
            tx.execute(
                "UPDATE sessions SET integration_commit = ?1, landed_tasks = landed_tasks + 1
                 WHERE id = ?2",
                params![commit, session_id],
            )?;
            tx.event(ev(EventDetail::TaskLanded(TaskLanded {
                commit: commit.clone(),
                task_commit,
            })))?;
            lock::release_task_locks(tx, session_id, task, ran_on.as_deref(), attempt.0)?;
            release_dependents(tx, session_id, task)?;
            session::settle(tx, session_id)?;
            return Ok(LandingRecorded::Landed);
        }
        LandingResult::Conflict {
            files,
            with,
            details,
            tip,
        } => {
            let mut tasks = vec![task.to_string()];
            tasks.extend(with.iter().cloned());
            tx.event(ev(EventDetail::MergeConflict(MergeConflict {
                files: files.clone(),
                with: with
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "integration".into()),
                tasks,
                stage: Some(ConflictStage::Merge),
            })))?;
            note_on_attempt(
                tx,
                session_id,
                task,
                attempt.0,
                &serde_json::json!({"conflict": {
                    "files": files, "with": with, "details": details, "tip": tip,
                }}),
            )?;
            let with_words = if with.is_empty() {
                String::new()
            } else {
                format!(" (landed by {})", with.join(", "))
            };
            (
                format!(
                    "conflict: {} changed on the integration branch{with_words}",
                    files.join(", ")
                ),
                RunReason::Conflict,
                Landing::Conflict,
                OutcomeKind::Conflict,
                tip,
            )
        }
        LandingResult::VerifyFailed {
            command,
            exit_code,
            reason,
            log_tail,
            tip,
        } => {
            tx.event(ev(EventDetail::VerifyFailed(VerifyFailed {
                command: command.clone(),
                exit_code: *exit_code,
                reason: reason.clone(),
            })))?;
            note_on_attempt(
                tx,
                session_id,
                task,
                attempt.0,
                &serde_json::json!({"verify": {
                    "command": command, "exit_code": exit_code, "reason": reason,
                    "log_tail": log_tail, "tip": tip,
                }}),
            )?;
            (
                format!("verify failed: `{command}` {reason}"),
                RunReason::VerifyFailed,
                Landing::VerifyFailed,
                OutcomeKind::VerifyFailed,
                tip,
            )
        }
    };
    lock::release_task_locks(tx, session_id, task, ran_on.as_deref(), attempt.0)?;
    session::bump(tx, session_id, Counter::Succeeded, -1)?;
    let recorded = if on_conflict == OnConflict::Requeue && repairs < max_repairs {
        tx.execute(
            "UPDATE tasks SET state = ?1, landing = NULL, result_commit = NULL,
                 repairs = repairs + 1, next_reason = ?2, base_commit = ?3, finished_at = NULL,
                 blocked_by = NULL
             WHERE session_id = ?4 AND id = ?5",
            params![TaskState::Ready, next_reason, tip, session_id, task],
        )?;
        tx.event(ev(EventDetail::TaskRequeued(TaskRequeued::OnNewBase {
            reason: format!(
                "{reason}; repair {} of {max_repairs}",
                repairs.saturating_add(1)
            ),
            base_commit: tip.clone(),
            from: TaskState::Succeeded,
        })))?;
        LandingRecorded::Repair
    } else {
        tx.execute(
            "UPDATE tasks SET state = ?1, landing = ?2, outcome = ?3, finished_at = ?4
             WHERE session_id = ?5 AND id = ?6",
            params![
                TaskState::Failed,
                final_landing,
                final_outcome,
                tx.now,
                session_id,
                task
            ],
        )?;
        session::bump(tx, session_id, Counter::Failed, 1)?;
        let why = if on_conflict == OnConflict::Fail {
            "on_conflict = \"fail\"".to_string()
        } else {
            format!("no repair left of {max_repairs}")
        };
        tx.event(ev(EventDetail::TaskFailed(TaskFailed {
            reason: format!("{reason} ({why})"),
            outcome: final_outcome,
            exit_code: None,
        })))?;
        skip_dependents(tx, session_id, task)?;
        LandingRecorded::Failed
    };
    session::settle(tx, session_id)?;
    Ok(recorded)
}

/// Adds `landing` (why it did not land) to the attempt's detail, where the next attempt's
/// context reads it.
fn note_on_attempt(
    tx: &Tx<'_>,
    session_id: &str,
    task_id: &str,
    attempt: u32,
    landing: &serde_json::Value,
) -> OpResult<()> {
    let detail: Option<String> = tx
        .query_opt(
            "SELECT detail FROM attempts WHERE session_id = ?1 AND task_id = ?2 AND attempt = ?3",
            params![session_id, task_id, attempt],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    let mut value: serde_json::Value = detail
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("landing".into(), landing.clone());
    }
    tx.execute(
        "UPDATE attempts SET detail = ?1 WHERE session_id = ?2 AND task_id = ?3 AND attempt = ?4",
        params![&value.to_string(), session_id, task_id, attempt],
    )?;
    Ok(())
}
