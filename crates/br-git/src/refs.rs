//! The refs br keeps and how it moves them: their names (`br/<session-slug>/<task-id>`,
//! `br/<session-slug>/integration`, `refs/br/attempts/…`), and changes that are
//! compare-and-swap — a ref moves only from the commit br last saw, under `git.lock` — so two
//! writers never silently overwrite each other.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::flock::RepoFlock;
use crate::git::{Git, GitError, Repo, failure};
use crate::worktree::{WorktreeError, list_worktrees};

#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error(
        "`{reference}` moved while br was working on it (expected {expected}, found {found}); run the command again"
    )]
    RefMoved {
        reference: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    /// Taking br's OS file lock on the repository failed.
    #[error(transparent)]
    Flock(#[from] WorktreeError),
}

/// `refs/heads/br/<session-slug>/integration`.
pub fn integration_ref(session_slug: &str) -> String {
    format!("refs/heads/br/{session_slug}/integration")
}

/// `refs/heads/br/<session-slug>/<task-id>`.
pub fn task_branch_ref(session_slug: &str, task_id: &str) -> String {
    format!("refs/heads/br/{session_slug}/{task_id}")
}

/// `main` for `refs/heads/main`.
pub fn short_branch(reference: &str) -> &str {
    reference.strip_prefix("refs/heads/").unwrap_or(reference)
}

/// A commit with two parents made from `tree` (a merge built without a checkout).
pub fn commit_tree(
    git: &Git,
    tree: &str,
    first_parent: &str,
    second_parent: &str,
    message: &str,
) -> Result<String, GitError> {
    git.run([
        "commit-tree",
        "--no-gpg-sign",
        tree,
        "-p",
        first_parent,
        "-p",
        second_parent,
        "-m",
        message,
    ])
}

/// The commit a ref points at, or `None` when it does not exist.
pub fn resolve_ref(git: &Git, reference: &str) -> Result<Option<String>, GitError> {
    let spec = format!("{reference}^{{commit}}");
    let out = git.output([
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        &spec,
    ])?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Some(text).filter(|t| !t.is_empty()))
}

/// Whether `ancestor` is `descendant` or one of its ancestors.
pub fn is_ancestor(git: &Git, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
    let args: Vec<OsString> = ["merge-base", "--is-ancestor", ancestor, descendant]
        .iter()
        .map(OsString::from)
        .collect();
    let out = git.output(&args)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failure(&args, &out)),
    }
}

/// Creates `reference` at `commit`, refusing if it exists.
pub fn create_ref(
    repo: &Repo,
    git: &Git,
    reference: &str,
    commit: &str,
    message: &str,
) -> Result<(), RefError> {
    // The empty old value means "must not exist yet".
    advance_ref(repo, git, reference, commit, "", message)
}

/// Moves `reference` from `old` to `new` under the shared-state lock; fails if it is no longer
/// at `old`.
pub fn advance_ref(
    repo: &Repo,
    git: &Git,
    reference: &str,
    new: &str,
    old: &str,
    message: &str,
) -> Result<(), RefError> {
    let _shared = RepoFlock::git_state(repo)?;
    let args: Vec<OsString> = ["update-ref", "-m", message, reference, new, old]
        .iter()
        .map(OsString::from)
        .collect();
    let out = git.output(&args)?;
    if out.status.success() {
        return Ok(());
    }
    let found = resolve_ref(git, reference)?.unwrap_or_else(|| "nothing".to_string());
    let expected = if old.is_empty() { "nothing" } else { old };
    if found != expected {
        return Err(RefError::RefMoved {
            reference: reference.to_string(),
            expected: expected.to_string(),
            found,
        });
    }
    Err(failure(&args, &out).into())
}

/// Deletes `reference` if it still points at `old`, under the shared-state lock.
pub fn delete_ref(repo: &Repo, git: &Git, reference: &str, old: &str) -> Result<(), RefError> {
    let _shared = RepoFlock::git_state(repo)?;
    let args: Vec<OsString> = ["update-ref", "-d", reference, old]
        .iter()
        .map(OsString::from)
        .collect();
    let out = git.output(&args)?;
    if out.status.success() {
        return Ok(());
    }
    match resolve_ref(git, reference)? {
        None => Ok(()),
        Some(found) if found != old => Err(RefError::RefMoved {
            reference: reference.to_string(),
            expected: old.to_string(),
            found,
        }),
        Some(_) => Err(failure(&args, &out).into()),
    }
}

/// The worktree (main checkout included) that has `reference` checked out, if any. A
/// registration whose directory is gone does not count.
pub fn checked_out_in(repo: &Repo, reference: &str) -> Result<Option<PathBuf>, GitError> {
    Ok(list_worktrees(repo)?
        .into_iter()
        .find(|w| !w.prunable && w.branch.as_deref() == Some(reference))
        .map(|w| w.path))
}
