//! What an attempt changed: `git diff` from the commit it started from to the commit that keeps
//! what it left — by default the attempt that landed (the latest success, when the task landed),
//! else the latest. `br diff` prints it; the web server's `GET …/tasks/T/diff` serves it. With a
//! remote, the session's branches are fetched first, so any clone can show any attempt.

use br_core::{Landing, OutcomeKind, TaskId};
use br_git::Repo;
use br_store::{AttemptRecord, Session, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The request names what is not there (no such attempt, nothing kept): bad input.
    #[error("{0}")]
    Missing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Git could not show it (its commits are not in this clone, or git failed).
    #[error("{0}")]
    Git(String),
}

/// The unified diff (or with `stat`, git's `--stat`) of `attempt` of `task` (`None`: the landed
/// one, else the latest).
pub fn attempt_diff(
    store: &dyn Store,
    repo: &Repo,
    session: &Session,
    task: &TaskId,
    attempt: Option<u32>,
    stat: bool,
) -> Result<Vec<u8>, DiffError> {
    crate::travel::adopt_session(repo, session).map_err(DiffError::Git)?;
    let record = store.task(&session.id, task)?;
    let attempts = store.attempts(&session.id, task)?;
    if attempts.is_empty() {
        return Err(DiffError::Missing(format!(
            "task {task} of session {} has not run yet",
            session.id
        )));
    }
    let chosen =
        pick(&attempts, attempt, record.landing == Some(Landing::Landed)).ok_or_else(|| {
            DiffError::Missing(format!(
                "task {task} has no attempt {} (it has 1 to {})",
                attempt.unwrap_or(0),
                attempts.len()
            ))
        })?;
    let Some(commit) = chosen.detail.get("commit").and_then(|c| c.as_str()) else {
        return Err(DiffError::Missing(format!(
            "attempt {} of {task} kept no commit: it changed nothing, or it has not ended, or it \
             ran in shared isolation",
            chosen.attempt
        )));
    };
    let from = chosen
        .start_commit
        .clone()
        .or_else(|| session.base_commit.clone())
        .ok_or_else(|| {
            DiffError::Missing(format!(
                "attempt {} of {task} has no start commit",
                chosen.attempt
            ))
        })?;
    let mut args = vec!["diff", "--no-color", "--no-ext-diff", "--find-renames"];
    if stat {
        args.push("--stat");
    }
    args.extend([from.as_str(), commit]);
    repo.git().run_raw(&args).map_err(|e| {
        DiffError::Git(format!(
            "cannot show attempt {} of {task}: are its commits in this clone? ({e})",
            chosen.attempt
        ))
    })
}

/// The attempt asked for; else the one that landed (the latest success) when the task landed;
/// else the latest.
fn pick(attempts: &[AttemptRecord], asked: Option<u32>, landed: bool) -> Option<&AttemptRecord> {
    if let Some(k) = asked {
        return attempts.iter().find(|a| a.attempt.0 == k);
    }
    if landed
        && let Some(a) = attempts
            .iter()
            .rev()
            .find(|a| a.outcome == Some(OutcomeKind::Succeeded))
    {
        return Some(a);
    }
    attempts.last()
}
