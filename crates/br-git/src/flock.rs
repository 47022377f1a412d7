//! br's OS file locks on a repository (`flock` on files under `<common>/br/`): held by an open
//! file, so closing it — or the process dying, however it dies — releases it. They serialise
//! br's own changes to state the whole repository shares (worktree registrations and refs:
//! `git.lock`; the merge queue: `merge.lock`). Not to be confused with a task's *locks*, the
//! paths it may modify, which live in the store.

use std::fs::{self, File, OpenOptions};

use crate::git::Repo;
use crate::worktree::{WorktreeError, io_error};

/// One of br's OS file locks on the repository, held until dropped.
#[derive(Debug)]
pub struct RepoFlock {
    _file: File,
}

impl RepoFlock {
    /// `git.lock`: held while br changes worktree registrations or refs. Waits for it; it is
    /// released when the value is dropped.
    pub fn git_state(repo: &Repo) -> Result<RepoFlock, WorktreeError> {
        Ok(RepoFlock {
            _file: lock_br_file(repo, "git.lock")?,
        })
    }

    /// `merge.lock`: held while a merge queue runs for any session of the repository.
    pub fn merge_queue(repo: &Repo) -> Result<RepoFlock, WorktreeError> {
        Ok(RepoFlock {
            _file: lock_br_file(repo, "merge.lock")?,
        })
    }
}

/// Waits for an exclusive OS lock on `<common>/br/<name>` and returns the open file that holds
/// it: closing it — or the process dying, however it dies — releases the lock.
fn lock_br_file(repo: &Repo, name: &str) -> Result<File, WorktreeError> {
    let dir = repo.br_dir();
    fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    file.lock().map_err(io_error("lock", &path))?;
    Ok(file)
}
