//! A slot's files under `<common>/br/worktrees`: its directory `slot-<n>`, its lock file
//! `slot-<n>.lock` (held with an OS file lock by the worker using the slot, so a dead worker's
//! slot frees itself), and its record `slot-<n>.attempt`.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{WorktreeError, io_error};
use crate::git::Repo;

pub(crate) fn slot_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("slot-{number}"))
}

pub(crate) fn flock_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("slot-{number}.lock"))
}

pub(crate) fn record_path(repo: &Repo, number: u32) -> PathBuf {
    repo.worktrees_dir().join(format!("slot-{number}.attempt"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlockFile {
    /// Create the lock file if it is missing (taking a slot).
    Create,
    /// A missing lock file means a free slot, and stays missing (looking, in a dry run).
    Existing,
}

/// What trying a slot's lock found.
#[derive(Debug)]
pub(crate) enum SlotFlock {
    Held(File),
    /// Free, and with `FlockFile::Existing` no lock file exists.
    FreeNoFile,
    Busy,
}

/// Takes slot `number`'s lock if it is free.
pub(crate) fn flock_slot(
    dir: &Path,
    number: u32,
    create: FlockFile,
) -> Result<Option<File>, WorktreeError> {
    match try_flock_slot(dir, number, create)? {
        SlotFlock::Held(file) => Ok(Some(file)),
        SlotFlock::FreeNoFile | SlotFlock::Busy => Ok(None),
    }
}

pub(crate) fn try_flock_slot(
    dir: &Path,
    number: u32,
    create: FlockFile,
) -> Result<SlotFlock, WorktreeError> {
    let path = flock_path(dir, number);
    loop {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create == FlockFile::Create)
            .truncate(false)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create == FlockFile::Existing => {
                return Ok(SlotFlock::FreeNoFile);
            }
            Err(e) => return Err(io_error("open", &path)(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(SlotFlock::Busy),
            Err(TryLockError::Error(e)) => return Err(io_error("lock", &path)(e)),
        }
        // `reconcile` deletes a removed slot's lock file while holding its lock. Whoever opened
        // the old file just before then holds a lock on a file no one else can find: it guards
        // nothing, so check the name still leads to the locked file, and start over if not.
        let ours = file.metadata().map_err(io_error("inspect", &path))?;
        match fs::metadata(&path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                return Ok(SlotFlock::Held(file));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create == FlockFile::Existing {
                    return Ok(SlotFlock::FreeNoFile);
                }
                continue;
            }
            Err(e) => return Err(io_error("inspect", &path)(e)),
        }
    }
}
