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
use super::reset::{self, Move};
use super::seed::{self, Planting, Seeding};
use super::slot_files::{FlockFile, flock_slot, record_path, slot_path};
use super::{MAX_SLOTS, WorktreeError, io_error};
use crate::flock::RepoFlock;
use crate::git::{Git, Repo};

/// The files of a merge, cherry-pick or revert in progress that `git reset --hard` removes
/// (git's `remove_branch_state`).
const BRANCH_STATE: &[&str] = &[
    "MERGE_HEAD",
    "MERGE_MSG",
    "MERGE_MODE",
    "MERGE_RR",
    "MERGE_AUTOSTASH",
    "AUTO_MERGE",
    "SQUASH_MSG",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
];

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
    /// How the last `checkout` made the tree.
    last_reset: Option<ResetWay>,
    /// What the seed gave the slot, if the last `checkout` made it.
    last_planting: Option<Planting>,
    policy: ResetPolicy,
}

/// Which ways `checkout` may take to bring the tree to the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetPolicy {
    /// The short way when it can, else the thorough one (what br does).
    #[default]
    Quick,
    /// Always the thorough way, visiting every file: how br reset a slot before it had the
    /// short way, kept so the benchmark can compare the two in one run.
    Thorough,
}

/// How a `checkout` brought the slot's tree to the attempt's start commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetWay {
    /// The slot was made: its first use, or a fresh checkout after a reset that did not hold.
    Created,
    /// Only the paths that differed from the commit were rewritten.
    Moved,
    /// Every file was visited (`git reset --hard`), because the short way declined (why) or
    /// failed.
    Reset { why: String },
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
                    last_reset: None,
                    last_planting: None,
                    policy: ResetPolicy::Quick,
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
    /// working tree reset, every untracked file removed, and every ignored one but those
    /// `attempt.keep` names. The first use in a repository creates the worktree
    /// (`git worktree add --detach`). Leftovers of an attempt whose worker died are first kept
    /// at that attempt's ref. Returns the directory to run in.
    pub fn checkout(&mut self, attempt: &AttemptSpec) -> Result<PathBuf, WorktreeError> {
        attempt.validate()?;
        let base = self.commit_id(attempt.base_commit)?;
        if let Some(record) = read_record(&record_path(&self.repo, self.number))? {
            self.save_leftovers(&record)?;
        }
        self.reset_to(&base, attempt.keep)?;
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
        let base = self.commit_id(attempt.base_commit)?;
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
                let base = self.commit_id(attempt.base_commit)?;
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

    /// How the last `checkout` made the tree (for benchmarks and tests).
    pub fn last_reset(&self) -> Option<&ResetWay> {
        self.last_reset.as_ref()
    }

    /// What the repository's seed gave the slot, if the last `checkout` made it
    /// ([`ResetWay::Created`]). A failure is not the attempt's (the slot is as its checkout made
    /// it), only worth a warning.
    pub fn last_planting(&self) -> Option<&Planting> {
        self.last_planting.as_ref()
    }

    /// Makes the repository's seed for `keep` from this slot's kept caches, unless it has one
    /// or the file system cannot clone files. Call it only while no task runs in the slot:
    /// the seed must not catch a cache half written.
    pub fn seed(&self, keep: &[String]) -> Result<Seeding, WorktreeError> {
        seed::make(&self.repo, &self.git, &self.path, keep)
    }

    /// Chooses the ways later `checkout`s may take (the default is [`ResetPolicy::Quick`]).
    pub fn set_reset_policy(&mut self, policy: ResetPolicy) {
        self.policy = policy;
    }

    /// `revision` as a full commit id. An attempt's base normally is one already (resolved at
    /// submit or claim), and then no `git rev-parse` is spent on it: whether it names a commit
    /// is checked where it is used (`git update-ref` refuses to point HEAD at anything else).
    fn commit_id(&self, revision: &str) -> Result<String, WorktreeError> {
        let full = matches!(revision.len(), 40 | 64)
            && revision
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if full {
            return Ok(revision.to_string());
        }
        Ok(self.repo.resolve_commit(revision)?)
    }

    fn reset_to(&mut self, base: &str, keep: &[String]) -> Result<(), WorktreeError> {
        self.last_reset = None;
        self.last_planting = None;
        if self.known_good || is_worktree_of(&self.repo, &self.git, &self.path) {
            // The short way first: it looks at every file once and rewrites only what differs.
            // What it declines or fails at, the thorough way does.
            let moved = match self.policy {
                ResetPolicy::Quick => self.move_in_place(base, keep),
                ResetPolicy::Thorough => Ok(Move::Declined("the policy is thorough".into())),
            };
            let why = match moved {
                Ok(Move::Done) => {
                    self.known_good = true;
                    self.last_reset = Some(ResetWay::Moved);
                    return Ok(());
                }
                Ok(Move::Declined(why)) => why,
                Err(e) => e.to_string(),
            };
            let Err(first) = self
                .reset_in_place(base, keep)
                .and_then(|()| reset::verify(&self.git, &self.path, base, keep))
            else {
                self.known_good = true;
                self.last_reset = Some(ResetWay::Reset { why });
                return Ok(());
            };
            // A task can leave what reset and clean cannot undo (a directory it made unwritable,
            // a deleted `.git` file). Anything worth keeping was saved already, so start over
            // from a fresh checkout, and report the first error if that fails too.
            self.known_good = false;
            return match self.recreate(base, keep) {
                Ok(()) => Ok(()),
                Err(_) => Err(first),
            };
        }
        self.make(base, keep)
    }

    fn recreate(&mut self, base: &str, keep: &[String]) -> Result<(), WorktreeError> {
        self.remove_registration()?;
        self.make(base, keep)
    }

    /// Creates the slot's worktree at `base`, gives it the seed's caches, and verifies it.
    fn make(&mut self, base: &str, keep: &[String]) -> Result<(), WorktreeError> {
        self.create(base)?;
        let planting = seed::plant(&self.repo, &self.git, &self.path, keep);
        if matches!(planting, Planting::Planted { paths } if paths > 0) {
            // The seed's paths were kept under the ignore rules of the commit it was made at;
            // what this commit does not ignore goes, as it would from any slot.
            reset::clean(&self.git, keep)?;
        }
        self.last_planting = Some(planting);
        reset::verify(&self.git, &self.path, base, keep)?;
        self.known_good = true;
        self.last_reset = Some(ResetWay::Created);
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

    fn move_in_place(&mut self, base: &str, keep: &[String]) -> Result<Move, WorktreeError> {
        self.quit_operations_in_progress(base)?;
        // A merge, cherry-pick or revert the task left stopped leaves files that would make the
        // next attempt's `git commit` record it (MERGE_HEAD makes a merge commit). `git reset
        // --hard` removes them, in git's own way, so that way it is.
        if let Some(admin) = admin_dir(&self.path)
            && let Some(name) = BRANCH_STATE.iter().find(|f| admin.join(f).exists())
        {
            return Ok(Move::Declined(format!("{name} is left over")));
        }
        reset::move_to(&self.git, base, keep)
    }

    fn reset_in_place(&mut self, base: &str, keep: &[String]) -> Result<(), WorktreeError> {
        self.quit_operations_in_progress(base)?;
        reset::reset_hard(&self.git, base, keep)
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
