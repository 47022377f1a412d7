//! The worktree benchmark's measurements: preparing a pristine tree per attempt by resetting a
//! reused slot, against a plain `git worktree add` and `git worktree remove` per attempt.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WorktreeError {
    let path = path.to_path_buf();
    move |source| WorktreeError::Io {
        action,
        path,
        source,
    }
}

use br_git::worktree::{AttemptSpec, WorktreeError, WorktreeSlot};
use br_git::{Git, Repo};

/// The two ways to give `attempts` attempts a fresh tree, timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorktreeTimings {
    pub files: usize,
    pub attempts: u32,
    /// Taking one slot, then `checkout` (and a small task edit) per attempt.
    pub slot_reuse: Duration,
    /// The part of `slot_reuse` spent on the first attempt, which creates the slot's
    /// worktree; a worker pays it once in its life.
    pub slot_first: Duration,
    /// `git worktree add --detach`, the same edit, `git worktree remove --force` per attempt.
    pub add_remove: Duration,
}

impl WorktreeTimings {
    /// How many times faster slot reuse is.
    fn speedup(&self) -> f64 {
        self.add_remove.as_secs_f64() / self.slot_reuse.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for WorktreeTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = |d: Duration| d / self.attempts.max(1);
        writeln!(
            f,
            "{} attempts on a repository of {} files",
            self.attempts, self.files
        )?;
        writeln!(
            f,
            "  slot reuse:            {:>9.1?} total, {:>8.1?} per attempt",
            self.slot_reuse,
            per(self.slot_reuse)
        )?;
        let later = self.slot_reuse.saturating_sub(self.slot_first);
        writeln!(
            f,
            "    (first attempt, creating the slot: {:.1?}; each later one: {:.1?})",
            self.slot_first,
            later / self.attempts.saturating_sub(1).max(1)
        )?;
        writeln!(
            f,
            "  worktree add + remove: {:>9.1?} total, {:>8.1?} per attempt",
            self.add_remove,
            per(self.add_remove)
        )?;
        write!(f, "  slot reuse is {:.1}x faster", self.speedup())
    }
}

/// Creates a repository of `files` small text files (50 per directory) in `dir`, with one
/// commit on `main`.
pub(crate) fn build_repository(dir: &Path, files: usize) -> Result<Repo, WorktreeError> {
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    Git::new(dir).run(["init", "--quiet", "--initial-branch=main"])?;
    for i in 0..files {
        let sub = dir.join(format!("src/d{:03}", i / 50));
        if i % 50 == 0 {
            std::fs::create_dir_all(&sub).map_err(io_error("create", &sub))?;
        }
        let path = sub.join(format!("f{i:05}.txt"));
        let text = format!("file {i}\n").repeat(20 + i % 80);
        std::fs::write(&path, text).map_err(io_error("write", &path))?;
    }
    let repo = Repo::discover(dir)?;
    let git = repo.own_git(&repo.root)?;
    git.run(["add", "--all"])?;
    git.run(["commit", "--quiet", "--no-verify", "-m", "benchmark base"])?;
    Ok(repo)
}

/// Times `attempts` attempts both ways on `repo`'s HEAD. Leaves one slot behind (reusable,
/// and removable with `reconcile`).
pub(crate) fn bench_worktrees(
    repo: &Repo,
    attempts: u32,
) -> Result<WorktreeTimings, WorktreeError> {
    let base = repo.resolve_commit("HEAD")?;
    let git = repo.own_git(&repo.root)?;
    let listed = git.run(["ls-files"])?;
    let files = listed.lines().count();
    let first = listed.lines().next().unwrap_or("README").to_string();
    // What a short task does: edit one tracked file and add one.
    let task = |dir: &Path, i: u32| -> Result<(), WorktreeError> {
        let edited = dir.join(&first);
        std::fs::write(&edited, format!("edited by attempt {i}\n"))
            .map_err(io_error("write", &edited))?;
        let added = dir.join(format!("bench-{i}.txt"));
        std::fs::write(&added, "new\n").map_err(io_error("write", &added))
    };

    let started = Instant::now();
    let mut slot_first = Duration::ZERO;
    let mut slot = WorktreeSlot::acquire(repo)?;
    for i in 1..=attempts {
        let attempt = AttemptSpec {
            session_id: "benchmark",
            session_name: "benchmark",
            session_slug: "benchmark",
            task_id: "bench",
            attempt: i,
            base_commit: &base,
            keep: &[],
        };
        let dir = slot.checkout(&attempt)?;
        task(&dir, i)?;
        slot.discard()?;
        if i == 1 {
            slot_first = started.elapsed();
        }
    }
    drop(slot);
    let slot_reuse = started.elapsed();

    let started = Instant::now();
    for i in 1..=attempts {
        let dir = repo.worktrees_dir().join(format!("bench-add-{i}"));
        git.run([
            "worktree".as_ref(),
            "add".as_ref(),
            "--detach".as_ref(),
            "--quiet".as_ref(),
            dir.as_os_str(),
            base.as_ref(),
        ])?;
        task(&dir, i)?;
        git.run([
            "worktree".as_ref(),
            "remove".as_ref(),
            "--force".as_ref(),
            dir.as_os_str(),
        ])?;
    }
    let add_remove = started.elapsed();
    Ok(WorktreeTimings {
        files,
        attempts,
        slot_reuse,
        slot_first,
        add_remove,
    })
}
