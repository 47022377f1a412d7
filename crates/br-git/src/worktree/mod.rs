//! Worktree slots: the reusable git worktrees that task attempts run in, each reset to exactly its
//! attempt's base commit, and the commits and refs that keep whatever an attempt left behind.
//!
//! `git worktree add` checks out every file, which on a large repository costs more than a short
//! task. So each repository has a small set of *slots*, `<common>/br/worktrees/slot-<n>`, that
//! workers reuse: a worker takes one for its lifetime and, for each attempt, moves its detached
//! HEAD to the base, rewrites the files that differ from it, and removes every untracked file
//! and every ignored one but the caches the plan's `keep` names (see `reset.rs`). Only the files
//! the previous attempt touched, or that the two commits change, are rewritten. A slot made
//! later starts with those caches cloned copy-on-write from the repository's seed of them, where
//! the file system can clone files (see `seed.rs`).
//!
//! Beside each slot directory live two small files:
//! - `slot-<n>.lock`, held with an OS file lock (`flock`) by the worker using the slot. The kernel
//!   drops the lock when that process dies, however it dies, so a dead worker's slot is free again
//!   with no bookkeeping. Lock files are opened close-on-exec, so task processes never hold them.
//! - `slot-<n>.attempt`, written when an attempt is checked out and removed once `finish` (or
//!   `discard`) has dealt with it. Finding it at the next checkout means the previous attempt's
//!   worker died in the middle: its leftovers are committed and kept at
//!   `refs/br/attempts/<session-id>/<task>/<attempt>` before the slot is reset. Work is never
//!   thrown away silently.
//!
//! Operations that change state shared by the whole repository (worktree registrations and refs)
//! run under `<common>/br/git.lock`, held only around them; git itself fails rather than waits when
//! two processes update refs at once. Everything inside a slot (its HEAD, index and files) belongs to
//! the slot's holder and needs no global lock, so tasks are never serialised.

mod attempt;
mod leftovers;
mod reconcile;
mod record;
mod registry;
mod reset;
mod seed;
mod slot;
mod slot_files;

use std::path::{Path, PathBuf};

use crate::git::GitError;

pub use attempt::{AttemptResult, AttemptSpec, Keep, attempt_ref, one_line, scope_violations};
pub use leftovers::{ReconcileMode, SavedLeftovers};
pub use reconcile::{Reconcile, reconcile};
pub use registry::{WorktreeEntry, list_worktrees};
pub use seed::{Planting, Seeding, remove_seed, seeds};
pub use slot::{ResetPolicy, ResetWay, WorktreeSlot};

/// Beyond this many slots in one repository something is wrong (a loop creating workers), and
/// acquiring fails instead of filling the disk.
pub const MAX_SLOTS: u32 = 1024;

/// How many free slots `reconcile` keeps for reuse (slots 0 to `KEEP_SLOTS - 1`).
pub const KEEP_SLOTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum WorktreeError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} `{value}` cannot be part of a git ref name")]
    BadRefComponent { what: &'static str, value: String },
    #[error(
        "task id `{task_id}` is reserved: its branch {branch} is the session's integration branch \
         (br no longer accepts such a plan; rename the task and submit it again)"
    )]
    ReservedTaskId { task_id: String, branch: String },
    #[error("no free worktree slot under {} (all {MAX_SLOTS} are taken)", dir.display())]
    NoFreeSlot { dir: PathBuf },
    #[error("worktree slot {} is not a clean checkout of {base} after reset: {status}", path.display())]
    NotPristine {
        path: PathBuf,
        base: String,
        status: String,
    },
    #[error(
        "branch `{branch}` is checked out in {}, so br will not move it; \
         this attempt's result is kept at `{kept}`",
        worktree.display()
    )]
    BranchCheckedOut {
        branch: String,
        worktree: PathBuf,
        kept: String,
    },
    #[error("could not clone {} into {} copy-on-write: {stderr}", from.display(), into.display())]
    Clone {
        from: PathBuf,
        into: PathBuf,
        stderr: String,
    },
}

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> WorktreeError {
    let path = path.to_path_buf();
    move |source| WorktreeError::Io {
        action,
        path,
        source,
    }
}
