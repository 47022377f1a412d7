//! Worktree slots: the reusable git worktrees that task attempts run in, each reset to exactly its
//! attempt's base commit, and the commits and refs that keep whatever an attempt left behind.
//!
//! `git worktree add` checks out every file, which on a large repository costs more than a short
//! task. So each repository has a small set of *slots*, `<common>/br/worktrees/slot-<n>`, that
//! workers reuse: a worker takes one for its lifetime and, for each attempt, moves its detached
//! HEAD to the base, resets the index and files, and removes every untracked and ignored file.
//! Only the files the previous attempt touched are rewritten.
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

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use br_core::{LockPath, TaskId};

use crate::git::{Git, GitError, Repo};

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
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WorktreeError {
    let path = path.to_path_buf();
    move |source| WorktreeError::Io {
        action,
        path,
        source,
    }
}

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
    fn validate(&self) -> Result<(), WorktreeError> {
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

/// One worktree slot, held by this process until dropped.
#[derive(Debug)]
pub struct WorktreeSlot {
    repo: Repo,
    number: u32,
    path: PathBuf,
    /// Holds the slot's OS lock; closing it (on drop, or when the process dies) frees the slot.
    _lock: File,
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
            if let Some(lock) = lock_slot(&dir, number, LockFile::Create)? {
                let path = slot_path(&dir, number);
                return Ok(WorktreeSlot {
                    git: repo.own_git(&path)?,
                    root_git: repo.own_git(&repo.root)?,
                    repo: repo.clone(),
                    number,
                    path,
                    _lock: lock,
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
            &AttemptRecord::of(attempt, &base),
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
        let _shared = SharedStateLock::acquire(&self.repo)?;
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
            let _shared = SharedStateLock::acquire(&self.repo)?;
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
    fn save_leftovers(&mut self, record: &AttemptRecord) -> Result<(), WorktreeError> {
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
        let _shared = SharedStateLock::acquire(&self.repo)?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddMode {
    /// Any file that cannot be added is an error.
    Strict,
    /// Add what can be added.
    BestEffort,
}

fn commit_message(attempt: &AttemptSpec) -> String {
    let name = one_line(attempt.session_name);
    format!(
        "br: task {} of session {name}, attempt {}\n\nBr-Session: {name}\nBr-Session-Id: {}\nBr-Task: {}\nBr-Attempt: {}\n",
        attempt.task_id, attempt.attempt, attempt.session_id, attempt.task_id, attempt.attempt
    )
}

fn reflog_message(attempt: &AttemptSpec) -> String {
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
fn changed_paths(git: &Git, base: &str, result: &str) -> Result<Vec<String>, GitError> {
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
fn update_ref(
    repo: &Repo,
    git: &Git,
    reference: &str,
    commit: &str,
    message: &str,
) -> Result<(), WorktreeError> {
    let _shared = SharedStateLock::acquire(repo)?;
    git.run(["update-ref", "-m", message, reference, commit])?;
    Ok(())
}

/// `<common>/br/git.lock`, held while br changes worktree registrations or refs (here, and in
/// the merge queue and cleanup).
#[derive(Debug)]
pub struct SharedStateLock {
    _file: File,
}

impl SharedStateLock {
    /// Waits for the lock; it is released when the value is dropped.
    pub fn acquire(repo: &Repo) -> Result<SharedStateLock, WorktreeError> {
        Ok(SharedStateLock {
            _file: lock_br_file(repo, "git.lock")?,
        })
    }
}

/// Waits for an exclusive OS lock on `<common>/br/<name>` and returns the open file that holds
/// it: closing it — or the process dying, however it dies — releases the lock.
pub fn lock_br_file(repo: &Repo, name: &str) -> Result<File, WorktreeError> {
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

fn slot_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("slot-{number}"))
}

fn lock_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("slot-{number}.lock"))
}

fn record_path(repo: &Repo, number: u32) -> PathBuf {
    repo.worktrees_dir().join(format!("slot-{number}.attempt"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockFile {
    /// Create the lock file if it is missing (taking a slot).
    Create,
    /// A missing lock file means a free slot, and stays missing (looking, in a dry run).
    Existing,
}

/// What trying a slot's lock found.
#[derive(Debug)]
enum SlotLock {
    Held(File),
    /// Free, and with `LockFile::Existing` no lock file exists.
    FreeNoFile,
    Busy,
}

/// Takes slot `number`'s lock if it is free.
fn lock_slot(dir: &Path, number: u32, create: LockFile) -> Result<Option<File>, WorktreeError> {
    match try_slot(dir, number, create)? {
        SlotLock::Held(file) => Ok(Some(file)),
        SlotLock::FreeNoFile | SlotLock::Busy => Ok(None),
    }
}

fn try_slot(dir: &Path, number: u32, create: LockFile) -> Result<SlotLock, WorktreeError> {
    let path = lock_path(dir, number);
    loop {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create == LockFile::Create)
            .truncate(false)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create == LockFile::Existing => {
                return Ok(SlotLock::FreeNoFile);
            }
            Err(e) => return Err(io_error("open", &path)(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(SlotLock::Busy),
            Err(TryLockError::Error(e)) => return Err(io_error("lock", &path)(e)),
        }
        // `reconcile` deletes a removed slot's lock file while holding its lock. Whoever opened
        // the old file just before then holds a lock on a file no one else can find: it guards
        // nothing, so check the name still leads to the locked file, and start over if not.
        let ours = file.metadata().map_err(io_error("inspect", &path))?;
        match fs::metadata(&path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                return Ok(SlotLock::Held(file));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create == LockFile::Existing {
                    return Ok(SlotLock::FreeNoFile);
                }
                continue;
            }
            Err(e) => return Err(io_error("inspect", &path)(e)),
        }
    }
}

/// The attempt a slot was checked out for, as recorded in `slot-<n>.attempt`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AttemptRecord {
    session_id: String,
    session_name: String,
    task_id: String,
    attempt: u32,
    base_commit: String,
}

impl AttemptRecord {
    fn of(attempt: &AttemptSpec, base: &str) -> AttemptRecord {
        AttemptRecord {
            session_id: attempt.session_id.to_string(),
            session_name: attempt.session_name.to_string(),
            task_id: attempt.task_id.to_string(),
            attempt: attempt.attempt,
            base_commit: base.to_string(),
        }
    }

    /// The attempt ref to keep leftovers at. A record that cannot name one (written by something
    /// else, or damaged) still gets a ref, named after the slot and the time.
    fn reference(&self, slot: u32) -> String {
        let valid = TaskId::new(self.session_id.as_str()).is_ok()
            && TaskId::new(self.task_id.as_str()).is_ok();
        if valid {
            attempt_ref(&self.session_id, &self.task_id, self.attempt)
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("refs/br/attempts/unknown/slot-{slot}/{now}")
        }
    }

    fn leftovers_message(&self) -> String {
        let name = one_line(&self.session_name);
        format!(
            "br: leftovers of task {} of session {name}, attempt {}\n\n\
             The worker running this attempt stopped before it finished; this is what the \
             attempt left in its worktree.\n\n\
             Br-Session: {name}\nBr-Session-Id: {}\nBr-Task: {}\nBr-Attempt: {}\n",
            one_line(&self.task_id),
            self.attempt,
            self.session_id,
            one_line(&self.task_id),
            self.attempt
        )
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "session_id": self.session_id,
            "session_name": self.session_name,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "base_commit": self.base_commit,
            "pid": std::process::id(),
        })
        .to_string()
    }

    fn from_json(text: &str) -> AttemptRecord {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let field = |k: &str| value[k].as_str().unwrap_or_default().to_string();
        AttemptRecord {
            session_id: field("session_id"),
            session_name: field("session_name"),
            task_id: field("task_id"),
            attempt: value["attempt"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            base_commit: field("base_commit"),
        }
    }
}

fn read_record(path: &Path) -> Result<Option<AttemptRecord>, WorktreeError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(AttemptRecord::from_json(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// Written to a temporary name and renamed, so a reader never sees half a record.
fn write_record(path: &Path, record: &AttemptRecord) -> Result<(), WorktreeError> {
    let tmp = path.with_extension("attempt.tmp");
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(record.to_json().as_bytes())
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("rename", &tmp))
}

fn remove_file_if_present(path: &Path) -> Result<(), WorktreeError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

/// The worktree's private git directory, from its `.git` file (`gitdir: <path>`).
fn admin_dir(worktree: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(worktree.join(".git")).ok()?;
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
    Some(if dir.is_absolute() {
        dir
    } else {
        worktree.join(dir)
    })
}

/// Whether `path` is the top of a working worktree of `repo` (and not, say, a plain directory
/// inside the repository's git directory, where git would find the main repository).
fn is_worktree_of(repo: &Repo, git: &Git, path: &Path) -> bool {
    if !path.join(".git").is_file() {
        return false;
    }
    let Ok(out) = git.run([
        "rev-parse",
        "--path-format=absolute",
        "--git-common-dir",
        "--show-toplevel",
    ]) else {
        return false;
    };
    let mut lines = out.lines();
    let same = |a: &str, b: &Path| {
        let a = Path::new(a);
        a == b || a.canonicalize().ok() == b.canonicalize().ok()
    };
    matches!(
        (lines.next(), lines.next()),
        (Some(common), Some(top)) if same(common, &repo.common_dir) && same(top, path)
    )
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// One entry of `git worktree list --porcelain`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorktreeEntry {
    pub path: PathBuf,
    /// `None` for a bare repository's entry or an unborn HEAD.
    pub head: Option<String>,
    /// The full ref name (`refs/heads/main`) when a branch is checked out.
    pub branch: Option<String>,
    pub bare: bool,
    pub detached: bool,
    pub locked: bool,
    /// Its directory is gone; `git worktree prune` would remove the registration.
    pub prunable: bool,
}

/// The repository's worktrees, the main one first, from `git worktree list --porcelain -z`.
pub fn list_worktrees(repo: &Repo) -> Result<Vec<WorktreeEntry>, GitError> {
    let out = repo
        .git()
        .run_raw(["worktree", "list", "--porcelain", "-z"])?;
    Ok(parse_worktree_list(&out))
}

fn parse_worktree_list(out: &[u8]) -> Vec<WorktreeEntry> {
    let mut entries = Vec::new();
    let mut current: Option<WorktreeEntry> = None;
    for field in out.split(|b| *b == 0) {
        if field.is_empty() {
            entries.extend(current.take());
            continue;
        }
        let (key, value) = match field.iter().position(|b| *b == b' ') {
            Some(i) => (&field[..i], &field[i + 1..]),
            None => (field, &[][..]),
        };
        if key == b"worktree" {
            entries.extend(current.take());
            current = Some(WorktreeEntry {
                path: PathBuf::from(OsString::from_vec(value.to_vec())),
                ..WorktreeEntry::default()
            });
            continue;
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        let text = || String::from_utf8_lossy(value).into_owned();
        match key {
            b"HEAD" => entry.head = Some(text()).filter(|h| h.bytes().any(|b| b != b'0')),
            b"branch" => entry.branch = Some(text()),
            b"bare" => entry.bare = true,
            b"detached" => entry.detached = true,
            b"locked" => entry.locked = true,
            b"prunable" => entry.prunable = true,
            _ => {}
        }
    }
    entries.extend(current);
    entries
}

/// Whether `reconcile` acts or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileMode {
    /// Report what would be done; change nothing.
    DryRun,
    Apply,
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLeftovers {
    pub slot: PathBuf,
    pub reference: String,
    /// The commit stored; `None` in a dry run.
    pub commit: Option<String>,
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
            ReconcileMode::Apply => LockFile::Create,
            ReconcileMode::DryRun => LockFile::Existing,
        };
        // Holding the slot's lock keeps workers out while it is inspected or removed.
        let lock = match try_slot(&dir, number, create)? {
            SlotLock::Busy => {
                report.in_use.push(path);
                continue;
            }
            SlotLock::Held(file) => Some(file),
            SlotLock::FreeNoFile => None,
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
                    let _shared = SharedStateLock::acquire(repo)?;
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
            // The lock file goes last, while still held: see `try_slot`.
            remove_file_if_present(&lock_path(&dir, number))?;
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
    let _shared = SharedStateLock::acquire(repo)?;
    repo.own_git(&repo.root)?.run([
        "worktree".as_ref(),
        "remove".as_ref(),
        "--force".as_ref(),
        path.as_os_str(),
    ])?;
    Ok(())
}

/// A free slot with a dead attempt's record, seen by `reconcile`.
struct Leftovers<'a> {
    repo: &'a Repo,
    git: &'a Git,
    root_git: &'a Git,
    path: &'a Path,
    number: u32,
}

impl Leftovers<'_> {
    fn keep(
        &self,
        record: &AttemptRecord,
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

/// Commits everything in the worktree `git` runs in on top of its HEAD and moves its HEAD
/// there; returns the new HEAD (the old one when nothing changed).
fn snapshot_in(git: &Git, message: &str, mode: AddMode) -> Result<String, WorktreeError> {
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

/// Measures what slots save: preparing a pristine tree per attempt by resetting a reused slot,
/// against a plain `git worktree add` and `git worktree remove` per attempt. The benchmark and
/// `examples/worktree_bench.rs` call it; tests do not (they assert behaviour, not time).
pub mod bench {
    use std::fmt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::{AttemptSpec, WorktreeError, WorktreeSlot, io_error};
    use crate::git::{Git, Repo};

    /// The two ways to give `attempts` attempts a fresh tree, timed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct WorktreeTimings {
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
        pub fn speedup(&self) -> f64 {
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
    pub fn build_repository(dir: &Path, files: usize) -> Result<Repo, WorktreeError> {
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
    pub fn bench_worktrees(repo: &Repo, attempts: u32) -> Result<WorktreeTimings, WorktreeError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worktree_list_porcelain_is_parsed_with_odd_paths() {
        let out = b"worktree /r\0HEAD 1111111111111111111111111111111111111111\0branch refs/heads/main\0\0\
worktree /r/.git/br/worktrees/slot-0\0HEAD 2222222222222222222222222222222222222222\0detached\0\0\
worktree /gone/odd\npath\0HEAD 3333333333333333333333333333333333333333\0detached\0locked\0prunable gitdir file points to non-existent location\0\0\
worktree /bare\0bare\0\0";
        let entries = parse_worktree_list(out);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].branch.as_deref(), Some("refs/heads/main"));
        assert_eq!(entries[1].path, Path::new("/r/.git/br/worktrees/slot-0"));
        assert!(entries[1].detached && !entries[1].prunable);
        assert_eq!(entries[2].path, Path::new("/gone/odd\npath"));
        assert!(entries[2].locked && entries[2].prunable);
        assert!(entries[3].bare && entries[3].head.is_none());
    }

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

    #[test]
    fn attempt_records_round_trip_and_damaged_ones_still_name_a_ref() {
        let spec = AttemptSpec {
            session_id: "0123456789ab",
            session_name: "a\nname",
            session_slug: "a-name",
            task_id: "api",
            attempt: 3,
            base_commit: "c0ffee",
        };
        let record = AttemptRecord::of(&spec, "c0ffee");
        assert_eq!(AttemptRecord::from_json(&record.to_json()), record);
        assert_eq!(record.reference(7), "refs/br/attempts/0123456789ab/api/3");
        assert!(
            !record
                .leftovers_message()
                .lines()
                .next()
                .unwrap_or("")
                .is_empty()
        );
        let damaged = AttemptRecord::from_json("{not json");
        assert!(
            damaged
                .reference(7)
                .starts_with("refs/br/attempts/unknown/slot-7/")
        );
    }
}
