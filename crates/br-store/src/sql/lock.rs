//! Lock writes: manual session locks (`br lock`), releasing a task's or a session's locks, and
//! finding which held locks a wanted set overlaps. The overlap rule itself is br-core's.

use br_core::detail::{self, HeldLock, LockPaths};
use br_core::state::TransitionError;
use br_core::{EventDetail, LockPath};

use super::read::{self, LOCK_COLUMNS, lock_from_row};
use super::{Ev, OpResult, Param, Tx, params};
use crate::error::StoreError;
use crate::model::{Lock, LockConflict, LockOutcome};

/// A held lock with its path parsed once for overlap checks.
pub(super) struct Held {
    pub path: LockPath,
    pub lock: Lock,
}

/// The locks held in `session`'s repository: lock paths are relative to a repository, so the
/// locks of another repository sharing the store never overlap them.
pub(super) fn held_locks(tx: &Tx<'_>, session: &str) -> OpResult<Vec<Held>> {
    let sql = format!(
        "SELECT {LOCK_COLUMNS} FROM locks
         WHERE session_id IN (
             SELECT id FROM sessions
             WHERE repo_id IS NOT DISTINCT FROM (SELECT repo_id FROM sessions WHERE id = ?1))
         ORDER BY id"
    );
    let locks = tx
        .query(&sql, params![session])?
        .iter()
        .map(lock_from_row)
        .collect::<OpResult<Vec<_>>>()?;
    locks
        .into_iter()
        .map(|lock| {
            let path = LockPath::parse(&lock.path).map_err(|e| {
                StoreError::Damaged(format!(
                    "held lock `{}` is not a valid path: {e}",
                    lock.path
                ))
            })?;
            Ok(Held { path, lock })
        })
        .collect()
}

/// Every (wanted, held) overlap, ignoring locks the session itself holds: a session's own
/// manual locks reserve paths for its tasks, they do not block them.
pub(super) fn conflicts(session: &str, wanted: &[LockPath], held: &[Held]) -> Vec<LockConflict> {
    let mut out = Vec::new();
    for h in held
        .iter()
        .filter(|h| !(h.lock.session_id.as_str() == session && h.lock.task_id.is_none()))
    {
        for w in wanted {
            if w.overlaps(&h.path) {
                out.push(LockConflict {
                    wanted: w.as_str().to_string(),
                    held: h.lock.clone(),
                });
            }
        }
    }
    out
}

/// What a `lock_conflict` (and a waiting task's `blocked_by`) says about `conflicts`: the
/// wanted paths, and every overlapping lock with its holder.
pub(super) fn conflict_detail(conflicts: &[LockConflict]) -> detail::LockConflict {
    let mut paths: Vec<String> = conflicts.iter().map(|c| c.wanted.clone()).collect();
    paths.sort_unstable();
    paths.dedup();
    let held_by = conflicts
        .iter()
        .map(|c| HeldLock {
            path: c.held.path.clone(),
            session_id: c.held.session_id.clone(),
            task_id: c.held.task_id.clone(),
            attempt: c.held.attempt,
        })
        .collect();
    detail::LockConflict { paths, held_by }
}

pub(super) fn lock_paths(
    tx: &Tx<'_>,
    session_id: &str,
    paths: &[LockPath],
) -> OpResult<LockOutcome> {
    let status = read::session_status(tx, session_id)?;
    if status.is_terminal() {
        return Err(StoreError::Transition(TransitionError {
            session: session_id.to_string(),
            action: "lock paths for",
            status,
        })
        .into());
    }
    let held = held_locks(tx, session_id)?;
    let found = conflicts(session_id, paths, &held);
    if !found.is_empty() {
        tx.event(Ev::new(EventDetail::LockConflict(conflict_detail(&found))).session(session_id))?;
        return Ok(LockOutcome::Conflict(found));
    }
    let mut taken: Vec<String> = Vec::new();
    for p in paths {
        let already = held.iter().any(|h| {
            h.lock.session_id.as_str() == session_id
                && h.lock.task_id.is_none()
                && h.lock.path == p.as_str()
        });
        if !already && !taken.iter().any(|t| t == p.as_str()) {
            tx.execute(
                "INSERT INTO locks (path, session_id, task_id, attempt, acquired_at)
                 VALUES (?1, ?2, NULL, NULL, ?3)",
                params![p.as_str(), session_id, tx.now],
            )?;
            taken.push(p.as_str().to_string());
        }
    }
    if !taken.is_empty() {
        tx.event(
            Ev::new(EventDetail::LockAcquired(LockPaths { paths: taken })).session(session_id),
        )?;
    }
    Ok(LockOutcome::Acquired)
}

pub(super) fn unlock_paths(
    tx: &Tx<'_>,
    session_id: &str,
    paths: Option<&[LockPath]>,
) -> OpResult<Vec<String>> {
    read::session_status(tx, session_id)?;
    let released = match paths {
        None => return release_session_locks(tx, session_id),
        Some(paths) => {
            let mut released = Vec::new();
            for p in paths {
                let deleted = tx.execute(
                    "DELETE FROM locks WHERE session_id = ?1 AND task_id IS NULL AND path = ?2",
                    params![session_id, p.as_str()],
                )?;
                if deleted > 0 {
                    released.push(p.as_str().to_string());
                }
            }
            released
        }
    };
    if !released.is_empty() {
        tx.event(
            Ev::new(EventDetail::LockReleased(LockPaths {
                paths: released.clone(),
            }))
            .session(session_id),
        )?;
    }
    Ok(released)
}

/// The paths a `DELETE … RETURNING id, path` removed, in the order they were taken (neither
/// database promises an order for `RETURNING`).
fn released_paths(tx: &Tx<'_>, sql: &str, params: &[Param<'_>]) -> OpResult<Vec<String>> {
    let mut rows: Vec<(i64, String)> = tx
        .query(sql, params)?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<OpResult<_>>()?;
    rows.sort_unstable();
    Ok(rows.into_iter().map(|(_, path)| path).collect())
}

/// Releases a session's manual locks (all of them), recording one `lock_released`.
pub(super) fn release_session_locks(tx: &Tx<'_>, session_id: &str) -> OpResult<Vec<String>> {
    let paths = released_paths(
        tx,
        "DELETE FROM locks WHERE session_id = ?1 AND task_id IS NULL RETURNING id, path",
        params![session_id],
    )?;
    if !paths.is_empty() {
        tx.event(
            Ev::new(EventDetail::LockReleased(LockPaths {
                paths: paths.clone(),
            }))
            .session(session_id),
        )?;
    }
    Ok(paths)
}

/// Releases the locks an attempt holds, recording one `lock_released`.
pub(super) fn release_task_locks(
    tx: &Tx<'_>,
    session_id: &str,
    task_id: &str,
    worker_id: Option<&str>,
    attempt: u32,
) -> OpResult<()> {
    let paths = released_paths(
        tx,
        "DELETE FROM locks WHERE session_id = ?1 AND task_id = ?2 RETURNING id, path",
        params![session_id, task_id],
    )?;
    if !paths.is_empty() {
        tx.event(
            Ev::new(EventDetail::LockReleased(LockPaths { paths }))
                .session(session_id)
                .task(task_id)
                .worker(worker_id)
                .attempt(attempt),
        )?;
    }
    Ok(())
}
