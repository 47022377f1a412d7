//! A worktree slot: one reusable worktree, held by one worker process at a time with an OS file
//! lock, reset to exactly an attempt's start commit before each attempt.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::attempt::{
    AddMode, AttemptResult, AttemptSpec, Keep, changed_paths, commit_message, reflog_message,
    snapshot_in, update_ref,
};
use super::leftovers::{Leftovers, ReconcileMode};
use super::record::{SlotRecord, read_record, remove_file_if_present, write_record};
use super::registry::{admin_dir, is_worktree_of, list_worktrees, same_path};
use super::slot_files::{FlockFile, flock_slot, record_path, slot_path};
use super::{MAX_SLOTS, WorktreeError, io_error};
use crate::flock::RepoFlock;
use crate::git::{Git, Repo};

/// One worktree slot, held by this process until dropped.
#[derive(Debug)]
pub struct WorktreeSlot {
    repo: Repo,
    number: u32,
    path: PathBuf,
    /// Holds the slot's OS lock; closing it (on drop, or when the process dies) frees the slot.
    _flock: File,
    /// Git for br's own operations inside the slot.
    git: Git,
    /// Git for br's own operations on the repository (worktree registrations, refs).
    root_git: Git,
    /// Whether this process has seen the slot be a working worktree of the repository, so
    /// `checkout` need not check again.
    known_good: bool,
}

impl WorktreeSlot {
    /// Takes a free slot (creating one if all are taken), holding its lock until dropped. The
    /// lowest free number wins, so a repository keeps as few slots as it has concurrent workers.
    pub fn acquire(repo: &Repo) -> Result<WorktreeSlot, WorktreeError> {
        let dir = repo.worktrees_dir();
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        for number in 0..MAX_SLOTS {
            if let Some(lock) = flock_slot(&dir, number, FlockFile::Create)? {
                let path = slot_path(&dir, number);
                return Ok(WorktreeSlot {
                    git: repo.own_git(&path)?,
                    root_git: repo.own_git(&repo.root)?,
                    repo: repo.clone(),
                    number,
                    path,
                    _flock: lock,
                    known_good: false,
                });
            }
        }
        Err(WorktreeError::NoFreeSlot { dir })
    }

    /// The slot's directory: where the task runs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// Makes the slot's tree exactly `attempt.base_commit`: detached HEAD there, index and
    /// working tree reset, every untracked and ignored file removed. The first use in a
    /// repository creates the worktree (`git worktree add --detach`). Leftovers of an attempt
    /// whose worker died are first kept at that attempt's ref. Returns the directory to run in.
    pub fn checkout(&mut self, attempt: &AttemptSpec) -> Result<PathBuf, WorktreeError> {
        attempt.validate()?;
        let base = self.repo.resolve_commit(attempt.base_commit)?;
        if let Some(record) = read_record(&record_path(&self.repo, self.number))? {
            self.save_leftovers(&record)?;
        }
        self.reset_to(&base)?;
        write_record(
            &record_path(&self.repo, self.number),
            &SlotRecord::of(attempt, &base),
        )?;
        Ok(self.path.clone())
    }

    /// After the task's process ended: commits everything the task left (tracked, new and deleted
    /// files; ignored files are not committed) on top of the slot's HEAD, so the task's own
    /// commits are kept, with a message naming session, task and attempt. Then keeps the result
    /// as `keep` says. With `Keep::Branch` and no changes, the branch points at the base.
    pub fn finish(
        &mut self,
        attempt: &AttemptSpec,
        keep: Keep,
    ) -> Result<AttemptResult, WorktreeError> {
        let result = self.commit_result(attempt)?;
        self.keep(attempt, &result, keep)?;
        Ok(result)
    }

    /// The first half of `finish`: commits what the task left and lists what changed, but keeps
    /// the result nowhere yet, so the caller can look at it (a scope check) before choosing
    /// where it goes with [`WorktreeSlot::keep`]. Until then the attempt counts as unfinished:
    /// if this process dies, the next checkout of the slot saves it.
    pub fn commit_result(&mut self, attempt: &AttemptSpec) -> Result<AttemptResult, WorktreeError> {
        attempt.validate()?;
        let base = self.repo.resolve_commit(attempt.base_commit)?;
        let top = snapshot_in(&self.git, &commit_message(attempt), AddMode::Strict)?;
        let commit = (top != base).then_some(top);
        let changed = match &commit {
            Some(c) => changed_paths(&self.root_git, &base, c)?,
            None => Vec::new(),
        };
        Ok(AttemptResult { commit, changed })
    }

    /// The second half of `finish`: keeps `result` (from `commit_result`) as `keep` says and
    /// marks the attempt finished.
    pub fn keep(
        &mut self,
        attempt: &AttemptSpec,
        result: &AttemptResult,
        keep: Keep,
    ) -> Result<(), WorktreeError> {
        attempt.validate()?;
        match keep {
            Keep::Branch => {
                let base = self.repo.resolve_commit(attempt.base_commit)?;
                let target = result.commit.as_deref().unwrap_or(&base);
                self.point_branch(attempt, target, result.commit.as_deref())?;
            }
            Keep::AttemptRef => {
                if let Some(c) = &result.commit {
                    update_ref(
                        &self.repo,
                        &self.root_git,
                        &attempt.attempt_ref(),
                        c,
                        &reflog_message(attempt),
                    )?;
                }
            }
        }
        remove_file_if_present(&record_path(&self.repo, self.number))
    }

    /// Forgets the checked-out attempt without keeping anything it left (for a result that must
    /// be refused, e.g. a lost lease). The next checkout resets the tree as usual.
    pub fn discard(&mut self) -> Result<(), WorktreeError> {
        remove_file_if_present(&record_path(&self.repo, self.number))
    }

    fn reset_to(&mut self, base: &str) -> Result<(), WorktreeError> {
        if self.known_good || is_worktree_of(&self.repo, &self.git, &self.path) {
            let Err(first) = self.reset_in_place(base).and_then(|()| self.verify(base)) else {
                self.known_good = true;
                return Ok(());
            };
            // A task can leave what reset and clean cannot undo (a directory it made unwritable,
            // a deleted `.git` file). Anything worth keeping was saved already, so start over
            // from a fresh checkout, and report the first error if that fails too.
            self.known_good = false;
            return match self.recreate(base) {
                Ok(()) => Ok(()),
                Err(_) => Err(first),
            };
        }
        self.create(base)?;
        self.verify(base)?;
        self.known_good = true;
        Ok(())
    }

    fn recreate(&mut self, base: &str) -> Result<(), WorktreeError> {
        self.remove_registration()?;
        self.create(base)?;
        self.verify(base)?;
        self.known_good = true;
        Ok(())
    }

    /// `git worktree add --detach` for the slot, clearing whatever is in the way.
    fn create(&mut self, base: &str) -> Result<(), WorktreeError> {
        if self.path.exists() {
            // Not a worktree of this repository (checked by the caller): a half-made slot, or
            // one whose git metadata was deleted by hand. Nothing git knows about is lost.
            fs::remove_dir_all(&self.path).map_err(io_error("remove", &self.path))?;
        }
        let _shared = RepoFlock::git_state(&self.repo)?;
        // `--force` lets the slot reuse a path still registered to a slot directory that was
        // deleted by hand.
        self.root_git.run([
            "worktree".as_ref(),
            "add".as_ref(),
            "--force".as_ref(),
            "--detach".as_ref(),
            "--quiet".as_ref(),
            self.path.as_os_str(),
            base.as_ref(),
        ])?;
        Ok(())
    }

    fn remove_registration(&mut self) -> Result<(), WorktreeError> {
        {
            let _shared = RepoFlock::git_state(&self.repo)?;
            // Fails when the path is not registered (already gone): that is the wanted state.
            let _ = self.root_git.output([
                "worktree".as_ref(),
                "remove".as_ref(),
                "--force".as_ref(),
                "--force".as_ref(),
                self.path.as_os_str(),
            ])?;
        }
        if self.path.exists() {
            fs::remove_dir_all(&self.path).map_err(io_error("remove", &self.path))?;
        }
        Ok(())
    }

    fn reset_in_place(&mut self, base: &str) -> Result<(), WorktreeError> {
        self.quit_operations_in_progress(base)?;
        // Detach first: a reset with HEAD on a branch the task created would move that branch.
        self.git.run([
            "update-ref",
            "--no-deref",
            "-m",
            "br: checkout",
            "HEAD",
            base,
        ])?;
        self.git
            .run(["reset", "--hard", "--quiet", "--no-recurse-submodules"])?;
        // Twice `-f` also removes nested repositories the task cloned or initialised.
        self.git.run(["clean", "-ffdxq"])?;
        Ok(())
    }

    /// A task may leave a rebase, cherry-pick or bisect half done; its state files would make the
    /// next attempt's git commands behave differently.
    fn quit_operations_in_progress(&self, base: &str) -> Result<(), WorktreeError> {
        let Some(admin) = admin_dir(&self.path) else {
            return Ok(());
        };
        if admin.join("rebase-merge").exists() || admin.join("rebase-apply").exists() {
            self.git.run(["rebase", "--quit"])?;
        }
        if admin.join("sequencer").exists() {
            self.git.run(["cherry-pick", "--quit"])?;
        }
        if admin.join("BISECT_START").exists() {
            self.git.run(["bisect", "reset", base])?;
        }
        Ok(())
    }

    /// Checks the promise of `checkout`: HEAD detached at the base, no untracked or ignored
    /// file, no unmerged entry.
    ///
    /// Modified tracked files are tolerated: right after `reset --hard` the index is the base's
    /// tree, and a file that still shows as modified is one git itself cannot check out cleanly
    /// in this repository (line-ending normalisation of a file committed with CRLF, two names
    /// differing only in case); a fresh `git worktree add` shows the same, and refusing would make
    /// every attempt fail.
    fn verify(&self, base: &str) -> Result<(), WorktreeError> {
        let out = self.git.run_raw([
            "status",
            "--porcelain=v2",
            "--branch",
            "-z",
            "--untracked-files=all",
            "--ignored",
            "--no-renames",
            "--ignore-submodules=none",
        ])?;
        let mut oid = None;
        let mut detached = false;
        let mut dirty = Vec::new();
        for field in out.split(|b| *b == 0).filter(|f| !f.is_empty()) {
            let field = String::from_utf8_lossy(field);
            if let Some(o) = field.strip_prefix("# branch.oid ") {
                oid = Some(o.to_string());
            } else if field == "# branch.head (detached)" {
                detached = true;
            } else if field.starts_with(['?', '!', 'u']) {
                dirty.push(field.into_owned());
            }
        }
        if oid.as_deref() == Some(base) && detached && dirty.is_empty() {
            return Ok(());
        }
        let status = if dirty.is_empty() {
            format!(
                "HEAD is {} ({})",
                oid.as_deref().unwrap_or("unborn"),
                if detached { "detached" } else { "on a branch" }
            )
        } else {
            let shown: Vec<_> = dirty.iter().take(5).map(String::as_str).collect();
            format!("{} paths left over: {}", dirty.len(), shown.join(", "))
        };
        Err(WorktreeError::NotPristine {
            path: self.path.clone(),
            base: base.to_string(),
            status,
        })
    }

    /// Keeps what a dead attempt left in this slot at its attempt ref.
    fn save_leftovers(&mut self, record: &SlotRecord) -> Result<(), WorktreeError> {
        let registration = list_worktrees(&self.repo)?
            .into_iter()
            .find(|w| same_path(&w.path, &self.path));
        let slot = Leftovers {
            repo: &self.repo,
            git: &self.git,
            root_git: &self.root_git,
            path: &self.path,
            number: self.number,
        };
        slot.keep(record, registration.as_ref(), ReconcileMode::Apply)?;
        remove_file_if_present(&record_path(&self.repo, self.number))
    }

    fn point_branch(
        &self,
        attempt: &AttemptSpec,
        target: &str,
        commit: Option<&str>,
    ) -> Result<(), WorktreeError> {
        let branch = attempt.branch_ref();
        let _shared = RepoFlock::git_state(&self.repo)?;
        // Moving a branch that some worktree has checked out would change what that checkout
        // sees (the user inspecting a task branch, say); git's own `branch -f` refuses too.
        let holder = list_worktrees(&self.repo)?
            .into_iter()
            .find(|w| w.branch.as_deref() == Some(branch.as_str()));
        if let Some(holder) = holder {
            let kept = attempt.attempt_ref();
            self.root_git.run([
                "update-ref",
                "-m",
                &reflog_message(attempt),
                &kept,
                commit.unwrap_or(target),
            ])?;
            return Err(WorktreeError::BranchCheckedOut {
                branch,
                worktree: holder.path,
                kept,
            });
        }
        self.root_git.run([
            "update-ref",
            "-m",
            &reflog_message(attempt),
            &branch,
            target,
        ])?;
        Ok(())
    }
}
