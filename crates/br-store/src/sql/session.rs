//! Session writes: creating a session with its tasks, pausing, resuming, cancelling, deleting,
//! and settling a session once all its tasks are terminal.

use std::collections::BTreeSet;

use br_core::detail::{SessionChange, SessionCreated, SessionTally, TaskCancelled, TaskRequeued};
use br_core::ids::slugify;
use br_core::state::{SessionAction, TransitionError};
use br_core::{EventDetail, RunReason, SessionId, SessionStatus, TaskState};

use super::{Counts, Ev, OpError, OpResult, Tx, lock, millis, params, read};
use crate::error::StoreError;
use crate::model::NewSession;

/// A per-session counter kept in step with task states.
#[derive(Debug, Clone, Copy)]
pub(super) enum Counter {
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Running,
}

/// Moves one of `session`'s counters by `delta` when the transaction ends (`Tx::close`): the
/// session's row is then held for the transaction's last statements only.
pub(super) fn bump(tx: &Tx<'_>, session: &str, counter: Counter, delta: i64) -> OpResult<()> {
    tx.count(session, |c| {
        let field = match counter {
            Counter::Succeeded => &mut c.succeeded,
            Counter::Failed => &mut c.failed,
            Counter::Skipped => &mut c.skipped,
            Counter::Cancelled => &mut c.cancelled,
            Counter::Running => &mut c.running,
        };
        *field += delta;
    });
    Ok(())
}

/// Marks `session` started (its first claim), and running unless it is paused, when the
/// transaction ends. Guarded by the update itself: first claims that ran side by side start it
/// once. Whether this transaction did (its `session_started` was recorded by `Tx::start`).
pub(super) fn start_now(tx: &Tx<'_>, session: &str) -> OpResult<bool> {
    let started = tx.execute(
        "UPDATE sessions SET started_at = ?1,
             status = CASE status WHEN ?3 THEN ?4 ELSE status END
         WHERE id = ?2 AND started_at IS NULL",
        params![
            tx.now,
            session,
            SessionStatus::Created,
            SessionStatus::Running
        ],
    )?;
    Ok(started > 0)
}

/// Settles `session` when the transaction ends, after its counters moved (see
/// [`settle_now`]).
pub(super) fn settle(tx: &Tx<'_>, session: &str) -> OpResult<()> {
    tx.settle(session);
    Ok(())
}

/// What `settle_now` decides from: a session's status and counters.
#[derive(Debug)]
pub(super) struct Tallies {
    status: SessionStatus,
    total: u32,
    succeeded: u32,
    failed: u32,
    skipped: u32,
    cancelled: u32,
    running: u32,
    completed_at: Option<i64>,
}

const TALLY_COLUMNS: &str = "status, total_tasks, succeeded_tasks, failed_tasks, skipped_tasks, \
     cancelled_tasks, running_tasks, completed_at";

fn tallies_from(r: &super::Row) -> OpResult<Tallies> {
    Ok(Tallies {
        status: r.get(0)?,
        total: r.get(1)?,
        succeeded: r.get(2)?,
        failed: r.get(3)?,
        skipped: r.get(4)?,
        cancelled: r.get(5)?,
        running: r.get(6)?,
        completed_at: r.get(7)?,
    })
}

/// Applies one transaction's counter changes to `session` in one statement, which also reads
/// the counters back for settling.
pub(super) fn apply_counts(tx: &Tx<'_>, session: &str, c: &Counts) -> OpResult<Tallies> {
    let sql = format!(
        "UPDATE sessions SET succeeded_tasks = succeeded_tasks + ?1,
             failed_tasks = failed_tasks + ?2, skipped_tasks = skipped_tasks + ?3,
             cancelled_tasks = cancelled_tasks + ?4, running_tasks = running_tasks + ?5
         WHERE id = ?6
         RETURNING {TALLY_COLUMNS}"
    );
    let row = tx.query_one(
        &sql,
        params![
            c.succeeded,
            c.failed,
            c.skipped,
            c.cancelled,
            c.running,
            session
        ],
    )?;
    tallies_from(&row)
}

/// `session`'s status and counters as they are.
pub(super) fn tallies(tx: &Tx<'_>, session: &str) -> OpResult<Tallies> {
    let sql = format!("SELECT {TALLY_COLUMNS} FROM sessions WHERE id = ?1");
    tallies_from(&tx.query_one(&sql, params![session])?)
}

/// The plan's pools, shared by every session of the store: a pool it defines takes the size and
/// backoff the newest plan gives (keeping a park in force); one its tasks only name (an agent's
/// own) is made without a cap.
fn define_pools(tx: &Tx<'_>, plan: &br_core::Plan) -> OpResult<()> {
    for (name, spec) in &plan.pools {
        tx.execute(
            "INSERT INTO pools (name, size, backoff_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET size = ?2, backoff_ms = ?3",
            params![name, spec.size, millis(spec.backoff)],
        )?;
    }
    let named: BTreeSet<&str> = plan
        .tasks
        .iter()
        .filter_map(|t| t.pool.as_deref())
        .collect();
    for name in named {
        if !plan.pools.contains_key(name) {
            tx.execute(
                "INSERT INTO pools (name, size, backoff_ms) VALUES (?1, NULL, ?2)
                 ON CONFLICT (name) DO NOTHING",
                params![name, millis(br_core::agent::DEFAULT_POOL_BACKOFF)],
            )?;
        }
    }
    Ok(())
}

pub(super) fn create(tx: &Tx<'_>, new: &NewSession) -> OpResult<SessionId> {
    let plan = &new.plan;
    let id = loop {
        let id = SessionId::from_random(fastrand::u64(..));
        let taken: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = ?1)",
                params![id.as_str()],
            )?
            .get(0)?;
        if !taken {
            break id;
        }
    };
    // The id suffix keeps branch names of two sessions with the same name apart.
    let slug = format!("{}-{}", slugify(&plan.name), &id.as_str()[..6]);
    let repo_root = new.repo_root.to_string_lossy();
    let plan_path = new
        .plan_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    tx.execute(
        "INSERT INTO sessions (id, name, slug, status, repo_root, plan_path, base, base_commit,
             isolation, scope, verify, on_conflict, heartbeat_timeout_ms, workers_wanted,
             created_at, total_tasks, repo_id, keep, slot_setup, remote)
         VALUES (?1, ?2, ?3, ?16, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?17, ?18,
             ?19, ?20)",
        params![
            id.as_str(),
            &plan.name,
            &slug,
            &*repo_root,
            &plan_path,
            &plan.base,
            &new.base_commit,
            plan.isolation.as_str(),
            plan.scope.as_str(),
            &plan.verify,
            plan.on_conflict.as_str(),
            millis(plan.heartbeat_timeout),
            new.workers_wanted,
            tx.now,
            plan.tasks.len(),
            SessionStatus::Created,
            &new.repo_id,
            &serde_json::to_string(&plan.keep)?,
            &serde_json::to_string(&plan.slot_setup())?,
            &plan.remote,
        ],
    )?;
    define_pools(tx, plan)?;
    tx.event(
        Ev::new(EventDetail::SessionCreated(SessionCreated {
            name: plan.name.clone(),
            tasks: u32::try_from(plan.tasks.len()).unwrap_or(u32::MAX),
            plan_path,
            base_commit: new.base_commit.clone(),
            isolation: plan.isolation,
        }))
        .session(id.as_str()),
    )?;
    let mut ready = Vec::new();
    for (seq, task) in plan.tasks.iter().enumerate() {
        let after: BTreeSet<&str> = task.after.iter().map(br_core::TaskId::as_str).collect();
        let files: Vec<&str> = task.files.iter().map(br_core::LockPath::as_str).collect();
        let state = if after.is_empty() {
            TaskState::Ready
        } else {
            TaskState::Pending
        };
        tx.execute(
            "INSERT INTO tasks (session_id, id, seq, run, files, after, env, timeout_ms, retries,
                 state, deps_left, start, land, on_conflict, max_repairs, prompt, agent, pool)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18)",
            params![
                id.as_str(),
                task.id.as_str(),
                seq,
                &task.run,
                &serde_json::to_string(&files)?,
                &serde_json::to_string(&task.after)?,
                &serde_json::to_string(&task.env)?,
                task.timeout.map(millis),
                task.retries,
                state,
                after.len(),
                task.start.as_str(),
                task.land.as_str(),
                task.on_conflict.as_str(),
                task.max_repairs,
                &task.prompt,
                &task.agent.as_ref().map(serde_json::to_string).transpose()?,
                &task.pool,
            ],
        )?;
        for dep in &after {
            tx.execute(
                "INSERT INTO task_deps (session_id, dep_id, task_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![id.as_str(), dep, task.id.as_str()],
            )?;
        }
        if state == TaskState::Ready {
            ready.push(task.id.as_str());
        }
    }
    for task in ready {
        tx.event(
            Ev::new(EventDetail::TaskReady)
                .session(id.as_str())
                .task(task),
        )?;
    }
    settle(tx, id.as_str())?;
    Ok(id)
}

pub(super) fn change(tx: &Tx<'_>, id: &str, action: SessionAction) -> OpResult<()> {
    let current = read::session_status(tx, id)?;
    let next = current.apply(action, id)?;
    tx.execute(
        "UPDATE sessions SET status = ?1 WHERE id = ?2",
        params![next, id],
    )?;
    let change = SessionChange {
        from: current,
        reason: None,
    };
    let detail = match action {
        SessionAction::Pause => EventDetail::SessionPaused(change),
        SessionAction::Resume => EventDetail::SessionResumed(change),
        SessionAction::Cancel => EventDetail::SessionCancelled(change),
    };
    tx.event(Ev::new(detail).session(id))?;
    if action == SessionAction::Cancel {
        // Tasks not running stop here; running ones end when their workers report, so their
        // locks stay held until their processes are gone.
        let [pending, ready] = TaskState::WAITING;
        let waiting: Vec<String> = tx
            .query(
                "SELECT id FROM tasks WHERE session_id = ?1 AND state IN (?2, ?3) ORDER BY seq",
                params![id, pending, ready],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect::<OpResult<_>>()?;
        for task in &waiting {
            tx.execute(
                "UPDATE tasks SET state = ?1, finished_at = ?2, blocked_by = NULL
                 WHERE session_id = ?3 AND id = ?4",
                params![TaskState::Cancelled, tx.now, id, task],
            )?;
            tx.event(
                Ev::new(EventDetail::TaskCancelled(TaskCancelled {
                    reason: TaskCancelled::SESSION_CANCELLED.to_string(),
                }))
                .session(id)
                .task(task),
            )?;
        }
        bump(tx, id, Counter::Cancelled, waiting.len() as i64)?;
        lock::release_session_locks(tx, id)?;
        settle(tx, id)?;
    }
    Ok(())
}

/// Ends the session once every task is terminal: `completed` if all succeeded, else `failed`.
/// A cancelled session gets its `completed_at` once its last running task has ended. Runs at
/// the end of a transaction (`Tx::close`), from the counters as they stand then.
pub(super) fn settle_now(tx: &Tx<'_>, id: &str, t: Tallies) -> OpResult<()> {
    let Tallies {
        status,
        total,
        succeeded,
        failed,
        skipped,
        cancelled,
        running,
        completed_at,
    } = t;
    if status.is_terminal() {
        if status == SessionStatus::Cancelled && running == 0 && completed_at.is_none() {
            tx.execute(
                "UPDATE sessions SET completed_at = ?1 WHERE id = ?2",
                params![tx.now, id],
            )?;
        }
        return Ok(());
    }
    if succeeded + failed + skipped + cancelled < total {
        return Ok(());
    }
    // A succeeded task still waiting to land is not done: the session ends once it landed (or
    // failed to, for good).
    let waiting: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_waiting
                            WHERE session_id = ?1 AND landing = 'waiting')",
            params![id],
        )?
        .get(0)?;
    if waiting {
        return Ok(());
    }
    let tally = SessionTally {
        succeeded,
        failed,
        skipped,
        cancelled,
    };
    let (next, detail) = if succeeded == total {
        (
            SessionStatus::Completed,
            EventDetail::SessionCompleted(tally),
        )
    } else {
        (SessionStatus::Failed, EventDetail::SessionFailed(tally))
    };
    tx.execute(
        "UPDATE sessions SET status = ?1, completed_at = ?2 WHERE id = ?3",
        params![next, tx.now, id],
    )?;
    tx.event(Ev::new(detail).session(id))?;
    lock::release_session_locks(tx, id)?;
    Ok(())
}

pub(super) fn set_workers_wanted(tx: &Tx<'_>, id: &str, workers: u32) -> OpResult<()> {
    let current = read::session_status(tx, id)?;
    if current.is_terminal() {
        return Err(StoreError::Transition(TransitionError {
            session: id.to_string(),
            action: "scale",
            status: current,
        })
        .into());
    }
    tx.execute(
        "UPDATE sessions SET workers_wanted = ?1 WHERE id = ?2",
        params![workers, id],
    )?;
    Ok(())
}

pub(super) fn delete(tx: &Tx<'_>, id: &str) -> OpResult<()> {
    let current = read::session_status(tx, id)?;
    if !current.is_terminal() {
        return Err(StoreError::Transition(TransitionError {
            session: id.to_string(),
            action: "delete",
            status: current,
        })
        .into());
    }
    for sql in [
        "DELETE FROM task_deps WHERE session_id = ?1",
        "DELETE FROM attempts WHERE session_id = ?1",
        "DELETE FROM locks WHERE session_id = ?1",
        "DELETE FROM events WHERE session_id = ?1",
        "DELETE FROM log_chunks WHERE session_id = ?1",
        "DELETE FROM tasks WHERE session_id = ?1",
        "DELETE FROM sessions WHERE id = ?1",
    ] {
        tx.execute(sql, params![id])?;
    }
    Ok(())
}

pub(super) fn requeue_task(
    tx: &Tx<'_>,
    session_id: &str,
    task_id: &str,
    base_commit: &str,
    reason: &str,
    why: RunReason,
) -> OpResult<()> {
    let status = read::session_status(tx, session_id)?;
    let refused = || {
        OpError::from(StoreError::Transition(TransitionError {
            session: session_id.to_string(),
            action: "requeue a task of",
            status,
        }))
    };
    let state: TaskState = tx
        .query_opt(
            "SELECT state FROM tasks WHERE session_id = ?1 AND id = ?2",
            params![session_id, task_id],
        )?
        .map(|r| r.get(0))
        .transpose()?
        .ok_or_else(|| StoreError::NoSuchTask {
            session: session_id.to_string(),
            task: task_id.to_string(),
        })?;
    let counter = match state {
        TaskState::Succeeded => Counter::Succeeded,
        TaskState::Failed => Counter::Failed,
        _ => return Err(refused()),
    };
    if status == SessionStatus::Cancelled {
        return Err(refused());
    }
    tx.execute(
        "UPDATE tasks SET state = ?1, base_commit = ?2, finished_at = NULL, blocked_by = NULL,
             next_reason = ?5, repairs = repairs + 1
         WHERE session_id = ?3 AND id = ?4",
        params![TaskState::Ready, base_commit, session_id, task_id, why],
    )?;
    bump(tx, session_id, counter, -1)?;
    if status.is_terminal() {
        // The session has work again.
        tx.execute(
            "UPDATE sessions SET status = ?1, completed_at = NULL WHERE id = ?2",
            params![SessionStatus::Running, session_id],
        )?;
        tx.event(
            Ev::new(EventDetail::SessionResumed(SessionChange {
                from: status,
                reason: Some(reason.to_string()),
            }))
            .session(session_id),
        )?;
    }
    tx.event(
        Ev::new(EventDetail::TaskRequeued(TaskRequeued::OnNewBase {
            reason: reason.to_string(),
            base_commit: base_commit.to_string(),
            from: state,
        }))
        .session(session_id)
        .task(task_id),
    )?;
    Ok(())
}
