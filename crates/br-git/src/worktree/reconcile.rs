//! `reconcile`: brings br's worktree directory in line with git's registrations, keeping the
//! leftovers of attempts whose worker died and removing free slots beyond the ones kept for
//! reuse. `br run` calls it before starting workers, `br cleanup` to report and reclaim.

use std::fs;
use std::path::{Path, PathBuf};

use super::leftovers::{Leftovers, ReconcileMode, SavedLeftovers};
use super::record::{read_record, remove_file_if_present};
use super::registry::{WorktreeEntry, list_worktrees};
use super::slot_files::{FlockFile, SlotFlock, flock_path, record_path, slot_path, try_flock_slot};
use super::{WorktreeError, io_error};
use crate::flock::RepoFlock;
use crate::git::Repo;

/// What `reconcile` did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Registrations under br's worktree directory whose directory was gone.
    pub pruned: Vec<PathBuf>,
    /// Free slots beyond the keep count, removed with their lock and attempt files.
    pub removed: Vec<PathBuf>,
    /// Refs that received (or would receive) the leftovers of attempts whose worker died.
    pub saved: Vec<SavedLeftovers>,
    /// Slots held by a live process: left alone.
    pub in_use: Vec<PathBuf>,
    /// Free slots kept for reuse.
    pub kept: Vec<PathBuf>,
    /// Anything else under br's worktree directory (worktrees br made for other purposes, files
    /// it does not know): left alone.
    pub other: Vec<PathBuf>,
}

/// Brings br's worktree directory in line with git's worktree registrations: prunes
/// registrations under `<common>/br/worktrees` whose directory is gone, keeps the leftovers of
/// dead attempts at their attempt refs, and removes free slots numbered `keep_slots` and up.
/// Slots in use, worktrees outside br's directory, and every branch are never touched.
pub fn reconcile(
    repo: &Repo,
    mode: ReconcileMode,
    keep_slots: u32,
) -> Result<Reconcile, WorktreeError> {
    let dir = repo.worktrees_dir();
    let mut report = Reconcile::default();
    let registrations: Vec<WorktreeEntry> = list_worktrees(repo)?
        .into_iter()
        .filter(|w| w.path.starts_with(&dir))
        .collect();

    let mut slots = std::collections::BTreeSet::new();
    if dir.is_dir() {
        for entry in fs::read_dir(&dir).map_err(io_error("read", &dir))? {
            let entry = entry.map_err(io_error("read", &dir))?;
            let name = entry.file_name();
            match name.to_str().and_then(slot_number) {
                Some(n) => {
                    slots.insert(n);
                }
                None => report.other.push(entry.path()),
            }
        }
    }
    for w in &registrations {
        let number = w
            .path
            .strip_prefix(&dir)
            .ok()
            .and_then(|rest| rest.to_str())
            .and_then(slot_number);
        match number {
            Some(n) => {
                slots.insert(n);
            }
            None if w.prunable => {
                prune(repo, &w.path, mode)?;
                report.pruned.push(w.path.clone());
            }
            None => {}
        }
    }
    // A non-slot registration shows up twice (directory entry and registration): once is enough.
    report.other.retain(|p| !report.pruned.contains(p));
    report.other.sort();
    report.other.dedup();

    let root_git = repo.own_git(&repo.root)?;
    for number in slots {
        let path = slot_path(&dir, number);
        let create = match mode {
            ReconcileMode::Apply => FlockFile::Create,
            ReconcileMode::DryRun => FlockFile::Existing,
        };
        // Holding the slot's lock keeps workers out while it is inspected or removed.
        let lock = match try_flock_slot(&dir, number, create)? {
            SlotFlock::Busy => {
                report.in_use.push(path);
                continue;
            }
            SlotFlock::Held(file) => Some(file),
            SlotFlock::FreeNoFile => None,
        };
        let registration = registrations.iter().find(|w| w.path == path);
        let exists = path.is_dir();
        let record_file = record_path(repo, number);
        if let Some(record) = read_record(&record_file)? {
            let git = repo.own_git(&path)?;
            let slot = Leftovers {
                repo,
                git: &git,
                root_git: &root_git,
                path: &path,
                number,
            };
            if let Some(saved) = slot.keep(&record, registration, mode)? {
                report.saved.push(saved);
            }
            if mode == ReconcileMode::Apply {
                remove_file_if_present(&record_file)?;
            }
        }
        if registration.is_some() && !exists {
            prune(repo, &path, mode)?;
            report.pruned.push(path.clone());
        }
        if number < keep_slots {
            if exists {
                report.kept.push(path);
            }
            continue;
        }
        if mode == ReconcileMode::Apply {
            if exists {
                {
                    let _shared = RepoFlock::git_state(repo)?;
                    if registration.is_some() {
                        root_git.run([
                            "worktree".as_ref(),
                            "remove".as_ref(),
                            "--force".as_ref(),
                            "--force".as_ref(),
                            path.as_os_str(),
                        ])?;
                    }
                }
                if path.exists() {
                    fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
                }
            }
            remove_file_if_present(&record_file.with_extension("attempt.tmp"))?;
            // The lock file goes last, while still held: see `try_flock_slot`.
            remove_file_if_present(&flock_path(&dir, number))?;
        }
        drop(lock);
        report.removed.push(path);
    }
    Ok(report)
}

/// `slot-<n>` and its `.lock`/`.attempt`/`.attempt.tmp` files name slot `n`.
fn slot_number(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("slot-")?;
    let digits = rest
        .strip_suffix(".lock")
        .or_else(|| rest.strip_suffix(".attempt.tmp"))
        .or_else(|| rest.strip_suffix(".attempt"))
        .unwrap_or(rest);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // `slot-01` is not a name br makes; leave it alone rather than confuse it with `slot-1`.
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// Removes the registration of a worktree whose directory is gone, and only that one (a plain
/// `git worktree prune` would also prune the user's registrations).
fn prune(repo: &Repo, path: &Path, mode: ReconcileMode) -> Result<(), WorktreeError> {
    if mode == ReconcileMode::DryRun {
        return Ok(());
    }
    let _shared = RepoFlock::git_state(repo)?;
    repo.own_git(&repo.root)?.run([
        "worktree".as_ref(),
        "remove".as_ref(),
        "--force".as_ref(),
        path.as_os_str(),
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_file_names_give_their_slot_number() {
        for (name, want) in [
            ("slot-0", Some(0)),
            ("slot-12", Some(12)),
            ("slot-3.lock", Some(3)),
            ("slot-3.attempt", Some(3)),
            ("slot-3.attempt.tmp", Some(3)),
            ("slot-", None),
            ("slot-01", None),
            ("slot-x", None),
            ("slot-1.other", None),
            ("verify-1", None),
        ] {
            assert_eq!(slot_number(name), want, "{name}");
        }
    }
}
