//! Seeds: one copy-on-write snapshot, per repository and set of `keep` patterns, of the caches
//! a slot keeps, so that a slot made later starts with them instead of building them again.
//!
//! Each slot keeps its own caches: a build writes them in place, so two slots running at once
//! cannot share one copy. What they can share is blocks. On a file system that clones files
//! (XFS with reflink, btrfs), a clone shares every block with its original until one of them
//! writes it, so N slots cloned from one seed cost one cache plus what each slot rewrites.
//!
//! A seed is `<common>/br/seeds/<name>/`, where `<name>` is git's object id for the patterns
//! (one per line): the kept paths of one slot, at their paths in the tree. A worker makes it
//! ([`make`]) from its slot when no task runs there, into a temporary directory renamed into
//! place, so two workers racing leave one seed and nobody sees half of one. A slot being made
//! gets the seed's paths that its checkout lacks ([`plant`]).
//!
//! Every copy is `cp --reflink=always` ([`clone_paths`]), which clones or fails: never a plain
//! copy, which would double the disk each cache takes, the opposite of why seeds exist. Where
//! files cannot be cloned (ext4, tmpfs) nothing is shared; a probe of one small file says so
//! before a whole cache is tried.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{WorktreeError, io_error};
use crate::git::{Git, Repo};

/// What `WorktreeSlot::seed` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeding {
    /// A seed was made of the slot's kept paths, at this directory.
    Made(PathBuf),
    /// The repository has a seed for these patterns already (made by another worker, perhaps
    /// just now).
    Exists,
    /// Nothing the patterns name is in the slot: nothing to seed from yet.
    NothingKept,
    /// The file system cannot clone files: no seed, and no copy either. What `cp` said.
    CannotClone(String),
}

/// What the repository's seed gave a slot a `checkout` made (`WorktreeSlot::last_planting`).
#[derive(Debug)]
pub enum Planting {
    /// The repository has no seed for the slot's patterns.
    NoSeed,
    /// This many paths were cloned from the seed (none when the checkout had them all).
    Planted { paths: usize },
    /// Cloning failed; whatever it had cloned is removed again, and the slot is as its
    /// checkout made it.
    Failed(WorktreeError),
}

/// Paths per `cp`: enough to make one process do the work of many, few enough that the
/// arguments stay far below the system's limit however long the paths.
const PATHS_PER_CP: usize = 256;

/// Makes the repository's seed for `keep` from the kept paths of the slot at `slot` (where
/// `slot_git` runs), unless one exists. The caller makes sure no task runs in the slot.
pub(crate) fn make(
    repo: &Repo,
    slot_git: &Git,
    slot: &Path,
    keep: &[String],
) -> Result<Seeding, WorktreeError> {
    let name = seed_name(slot_git, keep)?;
    let seed = repo.seeds_dir().join(&name);
    if seed.exists() {
        return Ok(Seeding::Exists);
    }
    let paths = kept_paths(slot_git, keep)?;
    if paths.is_empty() {
        return Ok(Seeding::NothingKept);
    }
    // Named after this process and slot, so no other maker uses it: a directory of that name
    // was left by a dead process of the same pid, and is nobody's.
    let slot_name = slot.file_name().unwrap_or_default().to_string_lossy();
    let temp = repo
        .seeds_dir()
        .join(format!(".tmp-{name}-{}-{slot_name}", std::process::id()));
    remove_if_present(&temp)?;
    fs::create_dir_all(&temp).map_err(io_error("create", &temp))?;
    let seeding = fill_and_rename(&temp, slot, &paths, &seed);
    // Gone already when renamed; else whatever the clone made goes.
    let removed = remove_if_present(&temp);
    let seeding = seeding?;
    removed?;
    Ok(seeding)
}

/// Clones `paths` of the slot into `temp` and renames it to `seed`, after a probe of whether
/// files there can be cloned at all.
fn fill_and_rename(
    temp: &Path,
    slot: &Path,
    paths: &[PathBuf],
    seed: &Path,
) -> Result<Seeding, WorktreeError> {
    if let Some(why) = cannot_clone_in(temp)? {
        return Ok(Seeding::CannotClone(why));
    }
    match clone_paths(slot, paths, temp) {
        Err(CloneFailure::Unsupported(why)) => return Ok(Seeding::CannotClone(why)),
        Err(CloneFailure::Failed(e)) => return Err(e),
        Ok(()) => {}
    }
    match fs::rename(temp, seed) {
        Ok(()) => Ok(Seeding::Made(seed.to_path_buf())),
        // Another worker's rename won: a seed of the same patterns, as good as this one.
        Err(_) if seed.is_dir() => Ok(Seeding::Exists),
        Err(e) => Err(io_error("rename", temp)(e)),
    }
}

/// Gives the slot at `slot`, just made, the paths of the repository's seed for `keep` that its
/// checkout lacks. Never fails: a failure is [`Planting::Failed`], and the slot is left as the
/// checkout made it.
pub(crate) fn plant(repo: &Repo, slot_git: &Git, slot: &Path, keep: &[String]) -> Planting {
    // Most repositories have no seed (or, where files cannot be cloned, an empty directory of
    // seeds): that costs one look, and no git.
    let none = fs::read_dir(repo.seeds_dir()).map_or(true, |mut d| d.next().is_none());
    if keep.is_empty() || none {
        return Planting::NoSeed;
    }
    match plant_from_seed(repo, slot_git, slot, keep) {
        Ok(planting) => planting,
        Err(e) => Planting::Failed(e),
    }
}

fn plant_from_seed(
    repo: &Repo,
    slot_git: &Git,
    slot: &Path,
    keep: &[String],
) -> Result<Planting, WorktreeError> {
    let seed = repo.seeds_dir().join(seed_name(slot_git, keep)?);
    if !seed.is_dir() {
        return Ok(Planting::NoSeed);
    }
    let paths = absent_paths(&seed, slot)?;
    match clone_paths(&seed, &paths, slot) {
        Ok(()) => Ok(Planting::Planted { paths: paths.len() }),
        Err(failure) => {
            // Each was absent before, so whatever is there now is the failed clone's: a partial
            // cache (half a `node_modules`) could mislead the tool that finds it.
            for path in &paths {
                remove_if_present(&slot.join(path))?;
            }
            Err(failure.into_error(&seed, slot))
        }
    }
}

/// The seeds of the repository, and anything else in their directory (a temporary one a dead
/// worker left): everything `br cleanup` removes.
pub fn seeds(repo: &Repo) -> Result<Vec<PathBuf>, WorktreeError> {
    let dir = repo.seeds_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read", &dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        found.push(entry.map_err(io_error("read", &dir))?.path());
    }
    found.sort();
    Ok(found)
}

/// Removes one of [`seeds`]. A seed is a cache: the next attempt in a slot makes it again.
pub fn remove_seed(path: &Path) -> Result<(), WorktreeError> {
    remove_if_present(path)
}

/// The seed's name: git's object id for the patterns, one per line. In their order, since a
/// negated pattern means something else before another than after it.
fn seed_name(git: &Git, keep: &[String]) -> Result<String, WorktreeError> {
    let id = git.run_with_input(["hash-object", "--stdin"], seed_text(keep).as_bytes())?;
    Ok(String::from_utf8_lossy(&id).trim().to_string())
}

fn seed_text(keep: &[String]) -> String {
    keep.iter().map(|k| format!("{k}\n")).collect()
}

/// The untracked paths of the slot that `keep` names, as `git clean` keeps them: with `-x`
/// and `--exclude` git uses those patterns alone, and a directory they match whole is one
/// entry. Relative to the slot.
fn kept_paths(git: &Git, keep: &[String]) -> Result<Vec<PathBuf>, WorktreeError> {
    let mut args = vec![
        "ls-files".to_string(),
        "-z".into(),
        "--others".into(),
        "--ignored".into(),
        "--directory".into(),
    ];
    args.extend(keep.iter().map(|k| format!("--exclude={k}")));
    let out = git.run_raw(&args)?;
    Ok(out
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(OsStr::from_bytes(p.strip_suffix(b"/").unwrap_or(p))))
        .collect())
}

/// The paths of `seed` that `slot` lacks, relative to both: an entry the slot has as a
/// directory too is looked into (a kept `sub/target/` under a tracked `sub/`), any other entry
/// the slot has is left to the checkout.
fn absent_paths(seed: &Path, slot: &Path) -> Result<Vec<PathBuf>, WorktreeError> {
    let mut absent = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let here = seed.join(&dir);
        for entry in fs::read_dir(&here).map_err(io_error("read", &here))? {
            let entry = entry.map_err(io_error("read", &here))?;
            let path = dir.join(entry.file_name());
            let there = slot.join(&path);
            match fs::symlink_metadata(&there) {
                Err(e) if e.kind() == ErrorKind::NotFound => absent.push(path),
                Err(e) => return Err(io_error("inspect", &there)(e)),
                Ok(meta) => {
                    if meta.is_dir() && entry.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(path);
                    }
                }
            }
        }
    }
    absent.sort();
    Ok(absent)
}

/// Whether files in `dir` can be cloned: `None` if they can, else what `cp` said. One small
/// file is cloned, so that a file system that cannot costs one failed clone, not one per file
/// of a cache (`cp` goes on to the next file after each). Leaves `dir` as it found it.
fn cannot_clone_in(dir: &Path) -> Result<Option<String>, WorktreeError> {
    let probe = dir.join(".clone-probe");
    let into = probe.join("clone");
    fs::create_dir_all(&into).map_err(io_error("create", &into))?;
    fs::write(probe.join("probe"), b"br\n").map_err(io_error("write", &probe))?;
    let cloned = clone_paths(&probe, &[PathBuf::from("probe")], &into);
    let removed = remove_if_present(&probe);
    let answer = match cloned {
        Ok(()) => None,
        Err(CloneFailure::Unsupported(why)) => Some(why),
        Err(CloneFailure::Failed(e)) => return Err(e),
    };
    removed?;
    Ok(answer)
}

/// Why [`clone_paths`] did not clone.
#[derive(Debug)]
enum CloneFailure {
    /// The file system cannot clone files, or not between these directories: what `cp` said.
    Unsupported(String),
    Failed(WorktreeError),
}

impl CloneFailure {
    fn into_error(self, from: &Path, into: &Path) -> WorktreeError {
        match self {
            CloneFailure::Unsupported(stderr) => WorktreeError::Clone {
                from: from.to_path_buf(),
                into: into.to_path_buf(),
                stderr,
            },
            CloneFailure::Failed(e) => e,
        }
    }
}

/// The one way br copies a cache: `cp -a --reflink=always --parents`, run in `from`, so each of
/// `paths` (relative to `from`) lands at the same relative path under `into`, with its modes,
/// times and links. `--reflink=always` clones or fails, never copies.
fn clone_paths(from: &Path, paths: &[PathBuf], into: &Path) -> Result<(), CloneFailure> {
    for chunk in paths.chunks(PATHS_PER_CP) {
        let out = Command::new("cp")
            .args(["-a", "--reflink=always", "--parents", "-t"])
            .arg(into)
            .arg("--")
            .args(chunk)
            .current_dir(from)
            // Its messages are read below.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| CloneFailure::Failed(io_error("run cp in", from)(e)))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(if cannot_clone(&stderr) {
                CloneFailure::Unsupported(stderr)
            } else {
                CloneFailure::Failed(WorktreeError::Clone {
                    from: from.to_path_buf(),
                    into: into.to_path_buf(),
                    stderr,
                })
            });
        }
    }
    Ok(())
}

/// Whether `cp --reflink=always` failed because the files could not be cloned (GNU cp:
/// "failed to clone 'b' from 'a': Operation not supported", "Invalid cross-device link" between
/// two file systems, or the ioctl unknown to an older one) or this `cp` cannot clone at all,
/// not for want of space or permission.
fn cannot_clone(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        let refused = l.contains("failed to clone")
            && [
                "not supported",
                "cross-device",
                "Invalid argument",
                "Inappropriate ioctl",
            ]
            .iter()
            .any(|why| l.contains(why));
        // A `cp` that is not GNU's (BusyBox's, BSD's) knows no `--reflink` or `--parents`.
        let unknown_option = ["unrecognized option", "illegal option", "invalid option"]
            .iter()
            .any(|o| l.contains(o));
        refused || unknown_option
    })
}

fn remove_if_present(path: &Path) -> Result<(), WorktreeError> {
    let removed = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match removed {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_text_is_the_patterns_in_order_one_per_line() {
        let keep = ["target/".to_string(), "!target/keep".to_string()];
        assert_eq!(seed_text(&keep), "target/\n!target/keep\n");
        assert_eq!(seed_text(&[]), "");
    }

    #[test]
    fn only_a_clone_the_file_system_refuses_counts_as_cannot_clone() {
        assert!(cannot_clone(
            "cp: failed to clone 'x/b' from 'a': Operation not supported"
        ));
        assert!(cannot_clone(
            "cp: failed to clone 'mnt/b' from 'a': Invalid cross-device link"
        ));
        assert!(!cannot_clone(
            "cp: failed to clone 'x/b' from 'a': No space left on device"
        ));
        assert!(!cannot_clone(
            "cp: cannot open 'a' for reading: Permission denied"
        ));
        assert!(cannot_clone("cp: unrecognized option '--reflink=always'"));
    }

    #[test]
    fn absent_paths_are_the_seeds_entries_the_slot_lacks_looking_into_shared_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (seed, slot) = (tmp.path().join("seed"), tmp.path().join("slot"));
        for dir in ["cache/a", "sub/target", "sub/other", "node_modules/x"] {
            fs::create_dir_all(seed.join(dir)).unwrap();
        }
        fs::write(seed.join("cache/a/blob"), "1").unwrap();
        fs::write(seed.join("top.o"), "2").unwrap();
        fs::write(seed.join("built"), "3").unwrap();
        // The checkout has `sub/` (tracked) with `sub/other` as a file, and `built` already.
        fs::create_dir_all(slot.join("sub")).unwrap();
        fs::write(slot.join("sub/other"), "tracked").unwrap();
        fs::write(slot.join("built"), "tracked").unwrap();
        let absent = absent_paths(&seed, &slot).unwrap();
        let absent: Vec<_> = absent.iter().map(|p| p.to_string_lossy()).collect();
        assert_eq!(absent, ["cache", "node_modules", "sub/target", "top.o"]);
    }
}
