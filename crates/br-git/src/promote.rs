//! Promoting a session's result: fast-forwarding one of the user's branches (`br merge --into
//! main`) to the integration result, and never anything but a fast-forward.

use std::path::PathBuf;

use crate::flock::RepoFlock;
use crate::git::{GitError, Repo};
use crate::refs::{RefError, advance_ref, checked_out_in, is_ancestor, resolve_ref, short_branch};

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("there is no branch `{branch}`")]
    NoSuchBranch { branch: String },
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Git(#[from] GitError),
}

impl From<crate::worktree::WorktreeError> for PromoteError {
    fn from(e: crate::worktree::WorktreeError) -> Self {
        PromoteError::Ref(RefError::Flock(e))
    }
}

/// Whether `fast_forward` moves the branch or only says what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteMode {
    Apply,
    Check,
}

/// The outcome of fast-forwarding a branch to the integration result (`--into`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntoResult {
    FastForwarded,
    /// It already points there.
    UpToDate,
    /// `Check`: it could be fast-forwarded.
    WouldFastForward,
    /// It cannot be fast-forwarded; nothing was changed.
    Refused {
        reason: String,
    },
}

impl IntoResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            IntoResult::FastForwarded => "fast_forwarded",
            IntoResult::UpToDate => "up_to_date",
            IntoResult::WouldFastForward => "would_fast_forward",
            IntoResult::Refused { .. } => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntoReport {
    /// The branch's short name (`main`).
    pub branch: String,
    pub from: String,
    pub to: String,
    /// The worktree where it is checked out, which was updated with `git merge --ff-only`.
    pub worktree: Option<PathBuf>,
    pub result: IntoResult,
}

/// A local branch's full ref and commit; `NoSuchBranch` when there is none. Accepts `main` or
/// `refs/heads/main`.
pub fn local_branch(repo: &Repo, branch: &str) -> Result<(String, String), PromoteError> {
    let name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    let reference = format!("refs/heads/{name}");
    let missing = || PromoteError::NoSuchBranch {
        branch: name.to_string(),
    };
    if name.is_empty() {
        return Err(missing());
    }
    match resolve_ref(&repo.git(), &reference)? {
        Some(commit) => Ok((reference, commit)),
        None => Err(missing()),
    }
}

/// Fast-forwards local branch `branch` to `target` when `target` descends from it, and refuses
/// (changing nothing) otherwise. A branch checked out in a worktree — typically the user's main
/// checkout — is moved with `git merge --ff-only` there, so its files follow and local changes in
/// the way make git refuse; any other branch is moved with `git update-ref` (old value checked).
pub fn fast_forward(
    repo: &Repo,
    branch: &str,
    target: &str,
    mode: PromoteMode,
) -> Result<IntoReport, PromoteError> {
    let (reference, from) = local_branch(repo, branch)?;
    let git = repo.own_git(&repo.root)?;
    let worktree = checked_out_in(repo, &reference)?;
    let mut report = IntoReport {
        branch: short_branch(&reference).to_string(),
        from: from.clone(),
        to: target.to_string(),
        worktree: worktree.clone(),
        result: IntoResult::UpToDate,
    };
    if from == target {
        return Ok(report);
    }
    if !is_ancestor(&git, &from, target)? {
        report.result = IntoResult::Refused {
            reason: format!(
                "`{}` has commits that the integration result does not contain, so it cannot be \
                 fast-forwarded; merge the integration branch into it yourself",
                report.branch
            ),
        };
        return Ok(report);
    }
    if mode == PromoteMode::Check {
        report.result = IntoResult::WouldFastForward;
        return Ok(report);
    }
    let message = "br: fast-forward to the integration branch";
    report.result = match &worktree {
        Some(dir) => {
            let _shared = RepoFlock::git_state(repo)?;
            let out = repo.own_git(dir)?.output([
                "merge",
                "--ff-only",
                "--quiet",
                "--no-stat",
                "--end-of-options",
                target,
            ])?;
            if out.status.success() {
                IntoResult::FastForwarded
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                IntoResult::Refused {
                    reason: format!(
                        "`git merge --ff-only` in {} refused: {stderr}",
                        dir.display()
                    ),
                }
            }
        }
        None => {
            advance_ref(repo, &git, &reference, target, &from, message)?;
            IntoResult::FastForwarded
        }
    };
    Ok(report)
}
