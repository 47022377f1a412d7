//! `br retry`: failed, skipped and cancelled tasks queued again as their next attempts, in one
//! transaction with their events and the session's return to running. Which tasks is
//! `br_core::retry`'s rule; here is what retrying them changes.

use br_core::detail::{SessionChange, TaskRequeued};
use br_core::retry::{RetryNode, RetryScope, tasks_to_retry};
use br_core::{EventDetail, Landing, RunReason, SessionStatus, TaskId, TaskState};

use super::session::{Counter, bump};
use super::{Ev, OpResult, Tx, params, read};
use crate::error::StoreError;

/// Why a session that had ended (or was paused) runs again, in its `session_resumed` event.
const RESUMED_BY_RETRY: &str = "retry";

pub(super) fn retry(
    tx: &Tx<'_>,
    session_id: &str,
    scope: RetryScope<'_>,
) -> OpResult<Vec<(TaskId, TaskState)>> {
    let status = read::session_status(tx, session_id)?;
    let rows: Vec<(String, TaskState, String, u32)> = tx
        .query(
            "SELECT id, state, after, attempt FROM tasks WHERE session_id = ?1 ORDER BY seq",
            params![session_id],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<OpResult<_>>()?;
    let after: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, _, after, _)| serde_json::from_str(after))
        .collect::<Result<_, _>>()?;
    let nodes: Vec<RetryNode<'_>> = rows
        .iter()
        .zip(&after)
        .map(|((id, state, _, _), after)| RetryNode {
            id,
            state: *state,
            after,
        })
        .collect();
    let chosen = tasks_to_retry(session_id, status, &nodes, scope).map_err(StoreError::from)?;

    if !matches!(status, SessionStatus::Created | SessionStatus::Running) {
        // Ended or paused: it has work again, and `br retry` goes on as `br resume` does.
        tx.execute(
            "UPDATE sessions SET status = ?1, completed_at = NULL WHERE id = ?2",
            params![SessionStatus::Running, session_id],
        )?;
        tx.event(
            Ev::new(EventDetail::SessionResumed(SessionChange {
                from: status,
                reason: Some(RESUMED_BY_RETRY.to_string()),
            }))
            .session(session_id),
        )?;
    }
    let (mut failed, mut skipped, mut cancelled) = (0i64, 0i64, 0i64);
    let mut retried = Vec::with_capacity(chosen.len());
    for i in chosen {
        let (id, from, _, attempt) = &rows[i];
        match from {
            TaskState::Failed => failed += 1,
            TaskState::Skipped => skipped += 1,
            _ => cancelled += 1,
        }
        // Counted afresh rather than trusted: an `after` task that the merge queue requeued
        // after it had succeeded was released once already. A dependency holds the task back
        // until it succeeded and, if it lands as it runs, landed.
        let left: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM task_deps d
                 JOIN tasks p ON p.session_id = d.session_id AND p.id = d.dep_id
                 WHERE d.session_id = ?1 AND d.task_id = ?2
                   AND NOT (p.state = ?3 AND (p.landing IS NULL OR p.landing <> ?4))",
                params![session_id, id, TaskState::Succeeded, Landing::Waiting],
            )?
            .get(0)?;
        let state = if left == 0 {
            TaskState::Ready
        } else {
            TaskState::Pending
        };
        // Its outcome and exit code stay, as after an automatic retry, to say what it is
        // retried after; the attempts it had stay too. What it did not land is forgotten, and
        // it gets its retries and repairs again.
        tx.execute(
            "UPDATE tasks SET state = ?1, deps_left = ?2, next_reason = ?3, finished_at = NULL,
                 blocked_by = NULL, lease_expires_at = NULL, landing = NULL,
                 landed_commit = NULL, result_commit = NULL, repairs = 0, failures = 0, lost = 0
             WHERE session_id = ?4 AND id = ?5",
            params![state, left, RunReason::Retry, session_id, id],
        )?;
        tx.event(
            Ev::new(EventDetail::TaskRequeued(TaskRequeued::Retried {
                reason: TaskRequeued::RETRY_ASKED.to_string(),
                from: *from,
                next_attempt: attempt + 1,
            }))
            .session(session_id)
            .task(id),
        )?;
        if state == TaskState::Ready {
            tx.event(Ev::new(EventDetail::TaskReady).session(session_id).task(id))?;
        }
        let task =
            TaskId::new(id).map_err(|e| StoreError::Damaged(format!("task id in store: {e}")))?;
        retried.push((task, *from));
    }
    bump(tx, session_id, Counter::Failed, -failed)?;
    bump(tx, session_id, Counter::Skipped, -skipped)?;
    bump(tx, session_id, Counter::Cancelled, -cancelled)?;
    Ok(retried)
}
