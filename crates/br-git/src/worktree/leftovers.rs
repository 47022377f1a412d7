//! What a dead attempt left in a slot, kept at its attempt ref before the slot is reused or
//! removed: work is never thrown away silently.

use std::path::{Path, PathBuf};

use super::WorktreeError;
use super::attempt::{AddMode, snapshot_in, update_ref};
use super::record::SlotRecord;
use super::registry::{WorktreeEntry, is_worktree_of};
use crate::git::{Git, Repo};

/// Whether an operation that changes slots acts or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileMode {
    /// Report what would be done; change nothing.
    DryRun,
    Apply,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLeftovers {
    pub slot: PathBuf,
    pub reference: String,
    /// The commit stored; `None` in a dry run.
    pub commit: Option<String>,
}

/// A free slot with a dead attempt's record, seen by `reconcile`.
pub(crate) struct Leftovers<'a> {
    pub(crate) repo: &'a Repo,
    pub(crate) git: &'a Git,
    pub(crate) root_git: &'a Git,
    pub(crate) path: &'a Path,
    pub(crate) number: u32,
}

impl Leftovers<'_> {
    pub(crate) fn keep(
        &self,
        record: &SlotRecord,
        registration: Option<&WorktreeEntry>,
        mode: ReconcileMode,
    ) -> Result<Option<SavedLeftovers>, WorktreeError> {
        let reference = record.reference(self.number);
        let usable = is_worktree_of(self.repo, self.git, self.path);
        let commit = match mode {
            ReconcileMode::DryRun => {
                let head = registration.and_then(|w| w.head.clone());
                let moved = head.is_some_and(|h| h != record.base_commit);
                // `--no-optional-locks`: a dry run must not even refresh the slot's index.
                let dirty = usable
                    && !self
                        .git
                        .run_raw(["--no-optional-locks", "status", "--porcelain", "-z"])?
                        .is_empty();
                if !moved && !dirty {
                    return Ok(None);
                }
                None
            }
            ReconcileMode::Apply => {
                let commit = if usable {
                    Some(snapshot_in(
                        self.git,
                        &record.leftovers_message(),
                        AddMode::BestEffort,
                    )?)
                } else {
                    // The directory is gone or broken; its HEAD may still hold the task's commits.
                    registration.and_then(|w| w.head.clone())
                };
                let Some(commit) = commit.filter(|c| *c != record.base_commit) else {
                    return Ok(None);
                };
                update_ref(
                    self.repo,
                    self.root_git,
                    &reference,
                    &commit,
                    "br: keep leftovers of an attempt whose worker stopped",
                )?;
                Some(commit)
            }
        };
        Ok(Some(SavedLeftovers {
            slot: self.path.to_path_buf(),
            reference,
            commit,
        }))
    }
}
