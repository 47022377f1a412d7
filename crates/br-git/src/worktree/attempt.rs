//! An attempt as a slot knows it: which session, task and attempt it is, the commit that keeps
//! what it left, the paths that commit changed, and where it is kept (the task branch or the
//! attempt's ref).

use br_core::ids::is_reserved_task_id;
use br_core::{LockPath, TaskId};

use super::WorktreeError;
use crate::flock::RepoFlock;
use crate::git::{Git, GitError, Repo};

/// The attempt a slot is checked out for.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpec<'a> {
    pub session_id: &'a str,
    pub session_name: &'a str,
    pub session_slug: &'a str,
    pub task_id: &'a str,
    pub attempt: u32,
    /// A commit (normally a full id resolved at submit).
    pub base_commit: &'a str,
    /// Gitignore patterns naming ignored paths the slot keeps from the previous attempt (build
    /// caches such as `target/`); every other untracked or ignored file is removed. The plan
    /// validates them (relative, no `.` or `..` component, not `.git`).
    pub keep: &'a [String],
}

impl AttemptSpec<'_> {
    /// `refs/heads/br/<session-slug>/<task-id>`.
    pub fn branch_ref(&self) -> String {
        format!("refs/heads/br/{}/{}", self.session_slug, self.task_id)
    }

    /// `refs/br/attempts/<session-id>/<task-id>/<attempt>`.
    pub fn attempt_ref(&self) -> String {
        attempt_ref(self.session_id, self.task_id, self.attempt)
    }

    /// The ids become ref components and file names; they are validated where they are made, but
    /// this module must not trust that (a bad one could name another ref or escape a directory).
    pub(crate) fn validate(&self) -> Result<(), WorktreeError> {
        for (what, value) in [
            ("session id", self.session_id),
            ("session slug", self.session_slug),
            ("task id", self.task_id),
        ] {
            if TaskId::new(value).is_err() {
                return Err(WorktreeError::BadRefComponent {
                    what,
                    value: value.to_string(),
                });
            }
        }
        // Plans refuse such ids, but a store an older br wrote may hold one: its branch would be
        // the integration branch, and keeping a result there would drop what had landed.
        if is_reserved_task_id(self.task_id) {
            return Err(WorktreeError::ReservedTaskId {
                task_id: self.task_id.to_string(),
                branch: self.branch_ref(),
            });
        }
        Ok(())
    }
}

pub fn attempt_ref(session_id: &str, task_id: &str, attempt: u32) -> String {
    format!("refs/br/attempts/{session_id}/{task_id}/{attempt}")
}

/// Where `finish` keeps an attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// On the task's branch `br/<session-slug>/<task-id>`, replacing any earlier attempt's.
    Branch,
    /// At `refs/br/attempts/<session-id>/<task-id>/<attempt>`, for inspection; the branch is left
    /// as it is.
    AttemptRef,
}

/// What an attempt left, as committed by `finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The commit holding the result; `None` when the task changed nothing and made no commits.
    pub commit: Option<String>,
    /// Repo-relative paths that differ between the base and the result, sorted. A rename counts
    /// as both its paths. A name that is not UTF-8 is shown with replacement characters.
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddMode {
    /// Any file that cannot be added is an error.
    Strict,
    /// Add what can be added.
    BestEffort,
}

pub(crate) fn commit_message(attempt: &AttemptSpec) -> String {
    let name = one_line(attempt.session_name);
    format!(
        "br: task {} of session {name}, attempt {}\n\nBr-Session: {name}\nBr-Session-Id: {}\nBr-Task: {}\nBr-Attempt: {}\n",
        attempt.task_id, attempt.attempt, attempt.session_id, attempt.task_id, attempt.attempt
    )
}

pub(crate) fn reflog_message(attempt: &AttemptSpec) -> String {
    format!(
        "br: session {} task {} attempt {}",
        attempt.session_id, attempt.task_id, attempt.attempt
    )
}

/// A session name is free text; a commit subject must be one line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Paths that differ between two commits, with renames split into their two paths.
pub(crate) fn changed_paths(git: &Git, base: &str, result: &str) -> Result<Vec<String>, GitError> {
    let out = git.run_raw([
        "diff-tree",
        "-r",
        "-z",
        "--name-only",
        "--no-renames",
        "--no-commit-id",
        base,
        result,
    ])?;
    let mut paths: Vec<String> = out
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Changed paths that no declared lock covers. A task that declared no files may change none.
pub fn scope_violations(changed: &[String], files: &[LockPath]) -> Vec<String> {
    changed
        .iter()
        .filter(|path| !files.iter().any(|lock| lock.covers_file(path)))
        .cloned()
        .collect()
}

/// Updates one ref under the shared-state lock.
pub(crate) fn update_ref(
    repo: &Repo,
    git: &Git,
    reference: &str,
    commit: &str,
    message: &str,
) -> Result<(), WorktreeError> {
    let _shared = RepoFlock::git_state(repo)?;
    git.run(["update-ref", "-m", message, reference, commit])?;
    Ok(())
}

/// Commits everything in the worktree `git` runs in on top of its HEAD and moves its HEAD
/// there; returns the new HEAD (the old one when nothing changed).
pub(crate) fn snapshot_in(
    git: &Git,
    message: &str,
    mode: AddMode,
) -> Result<String, WorktreeError> {
    match mode {
        AddMode::Strict => {
            git.run(["add", "--all", "--", ":/"])?;
        }
        AddMode::BestEffort => {
            // Keep whatever can be kept: an unreadable file must not cost the rest.
            let _ = git.output(["add", "--all", "--ignore-errors", "--", ":/"])?;
        }
    }
    let tree = git.run(["write-tree"])?;
    // Fails when HEAD is unborn (the task ran `git checkout --orphan`): a root commit then.
    let head = git
        .run(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        .ok();
    if let Some(head) = &head {
        let head_tree = git.run(["rev-parse", &format!("{head}^{{tree}}")])?;
        if head_tree == tree {
            return Ok(head.clone());
        }
    }
    let mut args = vec!["commit-tree", "--no-gpg-sign", &tree, "-m", message];
    if let Some(head) = &head {
        args.extend(["-p", head]);
    }
    let commit = git.run(&args)?;
    git.run([
        "update-ref",
        "--no-deref",
        "-m",
        "br: commit attempt result",
        "HEAD",
        &commit,
    ])?;
    Ok(commit)
}
