//! The merge queue: lands a session's succeeded task branches on its integration branch
//! `br/<session-slug>/integration`, one at a time and in dependency order. Every merge commit is
//! built from objects alone (`git merge-tree --write-tree`, then `git commit-tree`), so no
//! checkout, index or working tree is touched; with the session's `verify` command, each candidate
//! is checked in a worktree slot before the integration branch moves to it.
//!
//! It also owns the question "is this ref merged?", which is what `br cleanup` asks before it
//! deletes anything: a task branch or attempt ref goes only when every commit it holds is in the
//! session's integration branch or its base, and the integration branch only when a branch
//! outside `br/` contains it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use br_core::detail::{ConflictStage, MergeConflict};
use br_core::plan::{Isolation, OnConflict};
use br_core::{EventDetail, Outcome, SessionId, TaskId, TaskState};
use br_store::{NewEvent, Session, Store, StoreError, Task};

use crate::conflicts::{MergeTree, merge_tree};
use crate::git::{Git, GitError, Repo, failure};
use crate::process::{SpawnError, TaskCommand, TaskProcess, outcome_of};
use crate::reaper::Reaper;
use crate::worktree::{
    AttemptSpec, SharedStateLock, WorktreeError, WorktreeSlot, list_worktrees, one_line,
};

/// How often a running verify command is checked for a stop request.
const STOP_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(
        "session {name} ({id}) ran with isolation = \"shared\": its tasks changed the repository \
         itself, so there are no task branches to merge"
    )]
    SharedIsolation { id: SessionId, name: String },
    #[error("session {id} has no base commit to start its integration branch from")]
    NoBaseCommit { id: SessionId },
    #[error("there is no branch `{branch}`")]
    NoSuchBranch { branch: String },
    #[error(
        "`{branch}` is checked out in {}, and br does not move a branch under a checkout: \
         switch that worktree to another branch (or `git switch --detach`) and merge again",
        worktree.display()
    )]
    IntegrationCheckedOut { branch: String, worktree: PathBuf },
    #[error(
        "`{reference}` moved while br was working on it (expected {expected}, found {found}); run the command again"
    )]
    RefMoved {
        reference: String,
        expected: String,
        found: String,
    },
    #[error("interrupted; whatever landed before stays on the integration branch")]
    Interrupted,
    #[error("cannot run the verify command")]
    Verify(#[source] SpawnError),
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Worktree(#[from] WorktreeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MergeError {
    let path = path.to_path_buf();
    move |source| MergeError::Io {
        action,
        path,
        source,
    }
}

/// Whether `merge_session` lands or only predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    /// Build merges, verify them, advance the integration branch, record conflicts.
    Land,
    /// Predict only: no ref is written, no event recorded, no command run, nothing requeued.
    Check,
}

/// How `merge_session` runs.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub mode: MergeMode,
    /// The command that starts the reaper (normally `br __reaper`), which kills a verify
    /// command's process group if this process dies; none runs without it.
    pub reaper: Option<Vec<OsString>>,
    /// Set (by a signal handler) to stop: between candidates, and by terminating a running
    /// verify command.
    pub stop: Arc<AtomicBool>,
    /// Between SIGTERM and SIGKILL when a verify command must stop.
    pub kill_grace: Duration,
}

/// What happened to one task's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// Merged onto the integration branch by this run, as merge commit `commit`; `verify_log`
    /// holds the output of the session's verify command on it, when there is one.
    Landed {
        commit: String,
        verify_log: Option<PathBuf>,
    },
    /// Its branch is already contained in the integration branch (landed earlier, or it changed
    /// nothing).
    AlreadyLanded,
    /// `Check`: it would merge cleanly onto the tip the clean candidates before it would make.
    WouldLand,
    /// It does not merge cleanly onto the integration branch: these files conflict.
    Conflict { files: Vec<String> },
    /// The session's verify command failed on its merge candidate; its output is in `log_path`.
    VerifyFailed { log_path: PathBuf, outcome: Outcome },
    /// The task has not succeeded (it failed, was skipped or cancelled, or is still queued or
    /// running): there is nothing to land.
    NotSucceeded,
    /// The task succeeded but its branch is gone (deleted by hand).
    NoBranch,
}

impl Landing {
    /// The word used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Landing::Landed { .. } => "landed",
            Landing::AlreadyLanded => "already_landed",
            Landing::WouldLand => "would_land",
            Landing::Conflict { .. } => "conflict",
            Landing::VerifyFailed { .. } => "verify_failed",
            Landing::NotSucceeded => "not_succeeded",
            Landing::NoBranch => "no_branch",
        }
    }

    /// Whether the task's work is (or, with `Check`, would be) on the integration branch.
    pub fn is_landed(&self) -> bool {
        matches!(
            self,
            Landing::Landed { .. } | Landing::AlreadyLanded | Landing::WouldLand
        )
    }

    /// A candidate that was tried and refused: what `on_conflict = "requeue"` requeues.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Landing::Conflict { .. } | Landing::VerifyFailed { .. }
        )
    }
}

/// Whether a refused candidate's task was queued again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Not requeued (the session says `on_conflict = "report"`, or nothing asked for it).
    No,
    /// Queued again as attempt `attempt`, starting from `base_commit` (the integration tip).
    Queued { base_commit: String, attempt: u32 },
    /// The store refused (e.g. the session was cancelled).
    Refused { reason: String },
}

/// One task in a merge report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLanding {
    pub task: TaskId,
    pub state: TaskState,
    /// `br/<session-slug>/<task-id>`.
    pub branch: String,
    /// The branch's commit, for a succeeded task whose branch exists.
    pub commit: Option<String>,
    pub landing: Landing,
    pub requeue: Requeue,
}

/// What `merge_session` did (or, with `Check`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub session_id: SessionId,
    pub mode: MergeMode,
    /// `refs/heads/br/<session-slug>/integration`.
    pub integration_ref: String,
    /// The integration branch's commit after the run; `None` when it does not exist (a check
    /// before the first merge).
    pub integration_commit: Option<String>,
    /// The tip the landed (with `Check`: the would-land) candidates make; the base when none.
    pub result_commit: String,
    /// Whether this run created the integration branch (at the base).
    pub created: bool,
    pub verify: Option<String>,
    /// In landing order: dependency order, plan order between independent tasks.
    pub tasks: Vec<TaskLanding>,
}

impl MergeReport {
    /// `br/<session-slug>/integration`.
    pub fn integration_branch(&self) -> &str {
        self.integration_ref
            .strip_prefix("refs/heads/")
            .unwrap_or(&self.integration_ref)
    }

    /// Whether every task of the session is (or would be) on the integration branch: every task
    /// succeeded and every branch landed.
    pub fn all_landed(&self) -> bool {
        self.tasks.iter().all(|t| t.landing.is_landed())
    }

    /// How many candidates this run merged.
    pub fn landed_now(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t.landing, Landing::Landed { .. }))
            .count()
    }

    /// How many refused candidates were queued again.
    pub fn requeued(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t.requeue, Requeue::Queued { .. }))
            .count()
    }
}

/// `refs/heads/br/<session-slug>/integration`.
pub fn integration_ref(session: &Session) -> String {
    format!("refs/heads/br/{}/integration", session.slug)
}

/// The session's base commit, refusing sessions that have no task branches.
fn branch_base(session: &Session) -> Result<&str, MergeError> {
    if session.isolation == Isolation::Shared {
        return Err(MergeError::SharedIsolation {
            id: session.id.clone(),
            name: session.name.clone(),
        });
    }
    session
        .base_commit
        .as_deref()
        .ok_or_else(|| MergeError::NoBaseCommit {
            id: session.id.clone(),
        })
}

/// Lands (or with `MergeMode::Check` predicts landing) the session's succeeded task branches on
/// its integration branch, creating it at the base when missing. Tasks go in dependency order;
/// a branch the integration branch already contains counts as landed, so running this again only
/// lands what is new. A candidate that conflicts (recorded as a `merge_conflict` event) or fails
/// the session's verify command is not landed and the next one is tried on the same tip.
/// Nothing is requeued here: see [`requeue_refused`].
pub fn merge_session(
    store: &dyn Store,
    repo: &Repo,
    session: &Session,
    options: &MergeOptions,
) -> Result<MergeReport, MergeError> {
    let base = branch_base(session)?.to_string();
    crate::conflicts::require_merge_tree(repo, false)?;
    let git = repo.own_git(&repo.root)?;
    let reference = integration_ref(session);
    // One merge queue at a time per repository: two would race for the integration branch, and
    // the loser would have to start over.
    let _queue = match options.mode {
        MergeMode::Land => Some(QueueLock::acquire(repo)?),
        MergeMode::Check => None,
    };
    let tasks = store.tasks(&session.id)?;
    let existing = resolve_ref(&git, &reference)?;
    let mut created = false;
    let tip = match (&existing, options.mode) {
        (Some(commit), _) => commit.clone(),
        (None, MergeMode::Check) => base.clone(),
        (None, MergeMode::Land) => {
            create_ref(
                repo,
                &git,
                &reference,
                &base,
                &format!("br: integration branch of session {}", session.id),
            )?;
            created = true;
            base.clone()
        }
    };
    let mut queue = Queue {
        store,
        repo,
        session,
        options,
        git: &git,
        reference: &reference,
        tip,
        verifier: session.verify.as_deref().map(|command| Verifier {
            repo,
            session,
            command,
            options,
            slot: None,
            reaper: None,
        }),
        holder_checked: false,
    };
    let graph: Vec<(&str, &[String])> = tasks
        .iter()
        .map(|t| (t.id.as_str(), t.after.as_slice()))
        .collect();
    let mut landed = Vec::with_capacity(tasks.len());
    for index in dependency_order(&graph) {
        if options.stop.load(Ordering::SeqCst) {
            return Err(MergeError::Interrupted);
        }
        landed.push(queue.take(&tasks[index])?);
    }
    let tip = queue.tip;
    let integration_commit = match options.mode {
        MergeMode::Land => Some(tip.clone()),
        MergeMode::Check => existing,
    };
    Ok(MergeReport {
        session_id: session.id.clone(),
        mode: options.mode,
        integration_ref: reference,
        integration_commit,
        result_commit: tip,
        created,
        verify: session.verify.clone(),
        tasks: landed,
    })
}

/// The merge queue of one `merge_session` run: the tip candidates are merged onto, and how.
struct Queue<'a> {
    store: &'a dyn Store,
    repo: &'a Repo,
    session: &'a Session,
    options: &'a MergeOptions,
    git: &'a Git,
    /// The integration ref.
    reference: &'a str,
    /// The integration tip (with `Check`: the tip the would-land candidates make).
    tip: String,
    verifier: Option<Verifier<'a>>,
    /// Whether the integration branch was found not checked out anywhere. That is checked when
    /// it first has to move, not before, so a run with nothing new to land works even while
    /// someone has it checked out.
    holder_checked: bool,
}

impl Queue<'_> {
    /// Tries to land one task's branch on the tip.
    fn take(&mut self, task: &Task) -> Result<TaskLanding, MergeError> {
        let branch = format!("br/{}/{}", self.session.slug, task.id);
        let mut entry = TaskLanding {
            task: task.id.clone(),
            state: task.state,
            branch: branch.clone(),
            commit: None,
            landing: Landing::NotSucceeded,
            requeue: Requeue::No,
        };
        if task.state != TaskState::Succeeded {
            return Ok(entry);
        }
        let Some(commit) = resolve_ref(self.git, &format!("refs/heads/{branch}"))? else {
            entry.landing = Landing::NoBranch;
            return Ok(entry);
        };
        entry.commit = Some(commit.clone());
        entry.landing = if is_ancestor(self.git, &commit, &self.tip)? {
            Landing::AlreadyLanded
        } else {
            match merge_tree(self.repo, self.git, None, &self.tip, &commit)? {
                MergeTree::Conflicted { files } => {
                    if self.options.mode == MergeMode::Land {
                        record_conflict(self.store, self.session, task, &files)?;
                    }
                    Landing::Conflict { files }
                }
                MergeTree::Clean { tree } => {
                    let message = merge_message(self.session, task);
                    let candidate = commit_tree(self.git, &tree, &self.tip, &commit, &message)?;
                    match self.options.mode {
                        MergeMode::Check => {
                            self.tip = candidate;
                            Landing::WouldLand
                        }
                        MergeMode::Land => self.land(task, candidate)?,
                    }
                }
            }
        };
        Ok(entry)
    }

    /// Verifies a clean candidate (when the session has a verify command) and advances the
    /// integration branch to it if it passes.
    fn land(&mut self, task: &Task, candidate: String) -> Result<Landing, MergeError> {
        if !self.holder_checked {
            if let Some(holder) = checked_out_in(self.repo, self.reference)? {
                return Err(MergeError::IntegrationCheckedOut {
                    branch: short_branch(self.reference).to_string(),
                    worktree: holder,
                });
            }
            self.holder_checked = true;
        }
        let verify_log = match &mut self.verifier {
            Some(verifier) => match verifier.run(&task.id, &candidate, &self.tip)? {
                (Outcome::Succeeded, log) => Some(log),
                (outcome, log_path) => return Ok(Landing::VerifyFailed { log_path, outcome }),
            },
            None => None,
        };
        advance_ref(
            self.repo,
            self.git,
            self.reference,
            &candidate,
            &self.tip,
            &format!("br: land task {} of session {}", task.id, self.session.id),
        )?;
        self.tip.clone_from(&candidate);
        Ok(Landing::Landed {
            commit: candidate,
            verify_log,
        })
    }
}

/// With `on_conflict = "requeue"`, queues every refused candidate's task again as its next
/// attempt, starting from the integration tip (so it is redone on top of what landed), and notes
/// it in the report. Returns how many were queued. Does nothing for a `Check` report or a
/// session that says `on_conflict = "report"`.
pub fn requeue_refused(
    store: &dyn Store,
    session: &Session,
    report: &mut MergeReport,
) -> Result<usize, MergeError> {
    if report.mode != MergeMode::Land || session.on_conflict != OnConflict::Requeue {
        return Ok(0);
    }
    let Some(tip) = report.integration_commit.clone() else {
        return Ok(0);
    };
    let mut queued = 0;
    for entry in report.tasks.iter_mut() {
        let reason = match &entry.landing {
            Landing::Conflict { files } => format!(
                "merge conflict: {} conflicts with the integration branch",
                files.join(", ")
            ),
            Landing::VerifyFailed { log_path, outcome } => format!(
                "verification failed: {} (log: {})",
                outcome.describe(),
                log_path.display()
            ),
            _ => continue,
        };
        entry.requeue = match store.requeue_task(&session.id, &entry.task, &tip, &reason) {
            Ok(task) => {
                queued += 1;
                entry.state = task.state;
                Requeue::Queued {
                    base_commit: tip.clone(),
                    attempt: task.attempts + 1,
                }
            }
            Err(e @ StoreError::Transition(_)) => Requeue::Refused {
                reason: e.to_string(),
            },
            Err(e) => return Err(e.into()),
        };
    }
    Ok(queued)
}

/// Records a candidate's conflict with the integration branch.
fn record_conflict(
    store: &dyn Store,
    session: &Session,
    task: &Task,
    files: &[String],
) -> Result<(), MergeError> {
    store.append_event(&NewEvent {
        session_id: Some(session.id.clone()),
        task_id: Some(task.id.clone()),
        worker_id: None,
        attempt: (task.attempts > 0).then_some(br_core::Attempt(task.attempts)),
        detail: EventDetail::MergeConflict(MergeConflict {
            files: files.to_vec(),
            with: "integration".to_string(),
            tasks: vec![task.id.to_string(), "integration".to_string()],
            stage: Some(ConflictStage::Merge),
        }),
    })?;
    Ok(())
}

fn merge_message(session: &Session, task: &Task) -> String {
    let name = one_line(&session.name);
    format!(
        "br: merge task {} of session {name}\n\nBr-Session: {name}\nBr-Session-Id: {}\nBr-Task: {}\n",
        task.id, session.id, task.id
    )
}

/// Indexes of `tasks` (`(id, after)` in plan order) in the order they land: every task after
/// the tasks it names in `after`, and otherwise in plan order.
fn dependency_order(tasks: &[(&str, &[String])]) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let mut waiting_on = vec![0usize; tasks.len()];
    let mut dependents = vec![Vec::new(); tasks.len()];
    for (i, (_, after)) in tasks.iter().enumerate() {
        let deps: BTreeSet<usize> = after
            .iter()
            .filter_map(|a| index.get(a.as_str()).copied())
            .filter(|&d| d != i)
            .collect();
        waiting_on[i] = deps.len();
        for d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..tasks.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.insert(d);
            }
        }
    }
    // Plans are checked for cycles before they run; should one slip through, its tasks still
    // get a turn, in plan order.
    if order.len() < tasks.len() {
        let placed: BTreeSet<usize> = order.iter().copied().collect();
        order.extend((0..tasks.len()).filter(|i| !placed.contains(i)));
    }
    order
}

fn commit_tree(
    git: &Git,
    tree: &str,
    first_parent: &str,
    second_parent: &str,
    message: &str,
) -> Result<String, GitError> {
    git.run([
        "commit-tree",
        "--no-gpg-sign",
        tree,
        "-p",
        first_parent,
        "-p",
        second_parent,
        "-m",
        message,
    ])
}

/// The commit a ref points at, or `None` when it does not exist.
fn resolve_ref(git: &Git, reference: &str) -> Result<Option<String>, GitError> {
    let spec = format!("{reference}^{{commit}}");
    let out = git.output([
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        &spec,
    ])?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Some(text).filter(|t| !t.is_empty()))
}

/// Whether `ancestor` is `descendant` or one of its ancestors.
fn is_ancestor(git: &Git, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
    let args: Vec<OsString> = ["merge-base", "--is-ancestor", ancestor, descendant]
        .iter()
        .map(OsString::from)
        .collect();
    let out = git.output(&args)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failure(&args, &out)),
    }
}

/// Creates `reference` at `commit`, refusing if it exists.
fn create_ref(
    repo: &Repo,
    git: &Git,
    reference: &str,
    commit: &str,
    message: &str,
) -> Result<(), MergeError> {
    // The empty old value means "must not exist yet".
    advance_ref(repo, git, reference, commit, "", message)
}

/// Moves `reference` from `old` to `new` under the shared-state lock; fails if it is no longer
/// at `old`.
fn advance_ref(
    repo: &Repo,
    git: &Git,
    reference: &str,
    new: &str,
    old: &str,
    message: &str,
) -> Result<(), MergeError> {
    let _shared = SharedStateLock::acquire(repo)?;
    let args: Vec<OsString> = ["update-ref", "-m", message, reference, new, old]
        .iter()
        .map(OsString::from)
        .collect();
    let out = git.output(&args)?;
    if out.status.success() {
        return Ok(());
    }
    let found = resolve_ref(git, reference)?.unwrap_or_else(|| "nothing".to_string());
    let expected = if old.is_empty() { "nothing" } else { old };
    if found != expected {
        return Err(MergeError::RefMoved {
            reference: reference.to_string(),
            expected: expected.to_string(),
            found,
        });
    }
    Err(failure(&args, &out).into())
}

/// Deletes `reference` if it still points at `old`, under the shared-state lock.
fn delete_ref(repo: &Repo, git: &Git, reference: &str, old: &str) -> Result<(), MergeError> {
    let _shared = SharedStateLock::acquire(repo)?;
    let args: Vec<OsString> = ["update-ref", "-d", reference, old]
        .iter()
        .map(OsString::from)
        .collect();
    let out = git.output(&args)?;
    if out.status.success() {
        return Ok(());
    }
    match resolve_ref(git, reference)? {
        None => Ok(()),
        Some(found) if found != old => Err(MergeError::RefMoved {
            reference: reference.to_string(),
            expected: old.to_string(),
            found,
        }),
        Some(_) => Err(failure(&args, &out).into()),
    }
}

/// The worktree (main checkout included) that has `reference` checked out, if any. A
/// registration whose directory is gone does not count.
fn checked_out_in(repo: &Repo, reference: &str) -> Result<Option<PathBuf>, GitError> {
    Ok(list_worktrees(repo)?
        .into_iter()
        .find(|w| !w.prunable && w.branch.as_deref() == Some(reference))
        .map(|w| w.path))
}

fn short_branch(reference: &str) -> &str {
    reference.strip_prefix("refs/heads/").unwrap_or(reference)
}

/// `<common>/br/merge.lock`, held by a landing merge queue for its whole run.
struct QueueLock {
    _file: File,
}

impl QueueLock {
    fn acquire(repo: &Repo) -> Result<QueueLock, MergeError> {
        Ok(QueueLock {
            _file: crate::worktree::lock_br_file(repo, "merge.lock")?,
        })
    }
}

/// Runs the session's verify command on merge candidates, each in a worktree slot checked out at
/// the candidate. The slot and the reaper are taken on first use and kept for the run.
struct Verifier<'a> {
    repo: &'a Repo,
    session: &'a Session,
    command: &'a str,
    options: &'a MergeOptions,
    slot: Option<WorktreeSlot>,
    reaper: Option<Reaper>,
}

impl Verifier<'_> {
    /// Runs the command on `candidate` (the merge of `task` onto `tip`); returns how it ended
    /// and where its output is.
    fn run(
        &mut self,
        task: &TaskId,
        candidate: &str,
        tip: &str,
    ) -> Result<(Outcome, PathBuf), MergeError> {
        let slot = match &mut self.slot {
            Some(slot) => slot,
            None => self.slot.insert(WorktreeSlot::acquire(self.repo)?),
        };
        // Attempt 0: not one of the task's attempts. Should this process die while the command
        // runs, whatever it left is kept at `refs/br/attempts/<session>/<task>/0` by the next
        // user of the slot, like any interrupted attempt.
        let spec = AttemptSpec {
            session_id: self.session.id.as_str(),
            session_name: &self.session.name,
            session_slug: &self.session.slug,
            task_id: task.as_str(),
            attempt: 0,
            base_commit: candidate,
        };
        let dir = slot.checkout(&spec)?;
        let log_path = self
            .repo
            .log_dir()
            .join(self.session.id.as_str())
            .join("merge")
            .join(format!(
                "{task}.{}.log",
                &candidate[..candidate.len().min(12)]
            ));
        // The same candidate verified again gets a fresh log.
        match fs::remove_file(&log_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &log_path)(e)),
        }
        let env: BTreeMap<String, String> = [
            ("BR_SESSION_ID", self.session.id.to_string()),
            ("BR_SESSION_NAME", self.session.name.clone()),
            ("BR_TASK_ID", task.to_string()),
            ("BR_MERGE_COMMIT", candidate.to_string()),
            ("BR_INTEGRATION_TIP", tip.to_string()),
            ("BR_WORKDIR", dir.to_string_lossy().into_owned()),
            (
                "BR_REPO_ROOT",
                self.repo.root.to_string_lossy().into_owned(),
            ),
            ("BR_LOG_PATH", log_path.to_string_lossy().into_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut process = TaskProcess::spawn(&TaskCommand {
            run: self.command.to_string(),
            dir,
            env,
            log_path: log_path.clone(),
        })
        .map_err(MergeError::Verify)?;
        let pgid = process.pgid();
        if self.reaper.is_none()
            && let Some(argv) = &self.options.reaper
        {
            // Without a reaper the command still dies with us on every path but SIGKILL.
            self.reaper = Reaper::spawn(argv).ok();
        }
        if let Some(reaper) = &mut self.reaper {
            let _ = reaper.watch(pgid);
        }
        let status = loop {
            if let Some(status) = process.wait_timeout(STOP_POLL) {
                break Some(status);
            }
            if self.options.stop.load(Ordering::SeqCst) {
                process.terminate(self.options.kill_grace);
                break None;
            }
        };
        if let Some(reaper) = &mut self.reaper {
            let _ = reaper.forget(pgid);
        }
        slot.discard()?;
        let Some(status) = status else {
            return Err(MergeError::Interrupted);
        };
        Ok((outcome_of(status), log_path))
    }
}

/// The outcome of fast-forwarding a branch to the integration result (`--into`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntoResult {
    FastForwarded,
    /// It already points there.
    UpToDate,
    /// `Check`: it could be fast-forwarded.
    WouldFastForward,
    /// It cannot be fast-forwarded; nothing was changed.
    Refused {
        reason: String,
    },
}

impl IntoResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            IntoResult::FastForwarded => "fast_forwarded",
            IntoResult::UpToDate => "up_to_date",
            IntoResult::WouldFastForward => "would_fast_forward",
            IntoResult::Refused { .. } => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntoReport {
    /// The branch's short name (`main`).
    pub branch: String,
    pub from: String,
    pub to: String,
    /// The worktree where it is checked out, which was updated with `git merge --ff-only`.
    pub worktree: Option<PathBuf>,
    pub result: IntoResult,
}

/// A local branch's full ref and commit; `NoSuchBranch` when there is none. Accepts `main` or
/// `refs/heads/main`.
pub fn local_branch(repo: &Repo, branch: &str) -> Result<(String, String), MergeError> {
    let name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    let reference = format!("refs/heads/{name}");
    let missing = || MergeError::NoSuchBranch {
        branch: name.to_string(),
    };
    if name.is_empty() {
        return Err(missing());
    }
    match resolve_ref(&repo.git(), &reference)? {
        Some(commit) => Ok((reference, commit)),
        None => Err(missing()),
    }
}

/// Fast-forwards local branch `branch` to `target` when `target` descends from it, and refuses
/// (changing nothing) otherwise. A branch checked out in a worktree — typically the user's main
/// checkout — is moved with `git merge --ff-only` there, so its files follow and local changes in
/// the way make git refuse; any other branch is moved with `git update-ref` (old value checked).
pub fn fast_forward(
    repo: &Repo,
    branch: &str,
    target: &str,
    mode: MergeMode,
) -> Result<IntoReport, MergeError> {
    let (reference, from) = local_branch(repo, branch)?;
    let git = repo.own_git(&repo.root)?;
    let worktree = checked_out_in(repo, &reference)?;
    let mut report = IntoReport {
        branch: short_branch(&reference).to_string(),
        from: from.clone(),
        to: target.to_string(),
        worktree: worktree.clone(),
        result: IntoResult::UpToDate,
    };
    if from == target {
        return Ok(report);
    }
    if !is_ancestor(&git, &from, target)? {
        report.result = IntoResult::Refused {
            reason: format!(
                "`{}` has commits that the integration result does not contain, so it cannot be \
                 fast-forwarded; merge the integration branch into it yourself",
                report.branch
            ),
        };
        return Ok(report);
    }
    if mode == MergeMode::Check {
        report.result = IntoResult::WouldFastForward;
        return Ok(report);
    }
    let message = "br: fast-forward to the integration branch";
    report.result = match &worktree {
        Some(dir) => {
            let _shared = SharedStateLock::acquire(repo)?;
            let out = repo.own_git(dir)?.output([
                "merge",
                "--ff-only",
                "--quiet",
                "--no-stat",
                "--end-of-options",
                target,
            ])?;
            if out.status.success() {
                IntoResult::FastForwarded
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                IntoResult::Refused {
                    reason: format!(
                        "`git merge --ff-only` in {} refused: {stderr}",
                        dir.display()
                    ),
                }
            }
        }
        None => {
            advance_ref(repo, &git, &reference, target, &from, message)?;
            IntoResult::FastForwarded
        }
    };
    Ok(report)
}

/// What cleanup does with one ref of a session it deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefFate {
    /// The full ref name.
    pub reference: String,
    pub commit: String,
    pub action: RefAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefAction {
    /// Every commit it holds is also in `merged_into` (the integration branch, the base, or for
    /// the integration branch itself a branch outside `br/`): deleting it loses nothing.
    Delete { merged_into: String },
    /// It holds `commits` commits that are in neither the integration branch nor the base.
    KeepUnmerged { commits: u32 },
    /// The integration branch, which no branch outside `br/` contains yet.
    KeepIntegration,
    /// Checked out in a worktree: br never deletes a branch under a checkout.
    KeepCheckedOut { worktree: PathBuf },
    /// Under the session's branch prefix but not a branch br makes (not a task id, not
    /// `integration`): not br's to delete.
    KeepForeign,
}

impl RefAction {
    pub fn is_delete(&self) -> bool {
        matches!(self, RefAction::Delete { .. })
    }
}

/// Decides, for each of the session's refs — its task branches `br/<slug>/<task>` (`tasks` are
/// its task ids), its attempt refs `refs/br/attempts/<session-id>/…` and its integration branch —
/// whether deleting it would lose work. Changes nothing. Branches under the session's prefix that
/// are not a task's are left alone. The integration branch comes last, so deleting in order never
/// leaves a task branch judged against an integration branch that is already gone.
pub fn session_ref_fates(
    repo: &Repo,
    session: &Session,
    tasks: &[TaskId],
) -> Result<Vec<RefFate>, GitError> {
    let git = &repo.git();
    let tasks: BTreeSet<&str> = tasks.iter().map(TaskId::as_str).collect();
    let branch_prefix = format!("refs/heads/br/{}", session.slug);
    let attempt_prefix = format!("refs/br/attempts/{}", session.id);
    let integration = integration_ref(session);
    let listed = git.run_raw([
        "for-each-ref",
        "--format=%(refname)%00%(objectname)",
        &branch_prefix,
        &attempt_prefix,
    ])?;
    let checked_out: BTreeMap<String, PathBuf> = list_worktrees(repo)?
        .into_iter()
        .filter(|w| !w.prunable)
        .filter_map(|w| w.branch.map(|b| (b, w.path)))
        .collect();
    let integration_commit = resolve_ref(git, &integration)?;
    let base = session.base_commit.clone();

    let mut fates = Vec::new();
    let mut integration_fate = None;
    for line in listed.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = String::from_utf8_lossy(line);
        let Some((reference, commit)) = line.split_once('\0') else {
            continue;
        };
        let (reference, commit) = (reference.to_string(), commit.to_string());
        if let Some(worktree) = checked_out.get(&reference) {
            let fate = RefFate {
                reference: reference.clone(),
                commit,
                action: RefAction::KeepCheckedOut {
                    worktree: worktree.clone(),
                },
            };
            if reference == integration {
                integration_fate = Some(fate);
            } else {
                fates.push(fate);
            }
            continue;
        }
        if reference == integration {
            let outside = branches_containing(git, &commit)?
                .into_iter()
                .find(|b| !b.starts_with("refs/heads/br/"));
            let action = match outside {
                Some(b) => RefAction::Delete {
                    merged_into: short_branch(&b).to_string(),
                },
                None => RefAction::KeepIntegration,
            };
            integration_fate = Some(RefFate {
                reference,
                commit,
                action,
            });
            continue;
        }
        if let Some(name) = reference.strip_prefix(&format!("{branch_prefix}/"))
            && !tasks.contains(name)
        {
            fates.push(RefFate {
                reference,
                commit,
                action: RefAction::KeepForeign,
            });
            continue;
        }
        let mut not: Vec<&str> = Vec::new();
        not.extend(integration_commit.as_deref());
        not.extend(base.as_deref());
        let unmerged = count_unmerged(git, &commit, &not)?;
        let action = if unmerged > 0 {
            RefAction::KeepUnmerged { commits: unmerged }
        } else {
            let in_integration = match &integration_commit {
                Some(i) => is_ancestor(git, &commit, i)?,
                None => false,
            };
            RefAction::Delete {
                merged_into: if in_integration {
                    short_branch(&integration).to_string()
                } else {
                    "the base".to_string()
                },
            }
        };
        fates.push(RefFate {
            reference,
            commit,
            action,
        });
    }
    fates.sort_by(|a, b| a.reference.cmp(&b.reference));
    fates.extend(integration_fate);
    Ok(fates)
}

/// Commits reachable from `commit` but from none of `not`.
fn count_unmerged(git: &Git, commit: &str, not: &[&str]) -> Result<u32, GitError> {
    let mut args = vec!["rev-list", "--count", commit];
    if !not.is_empty() {
        args.push("--not");
        args.extend(not);
    }
    let text = git.run(&args)?;
    Ok(text.trim().parse().unwrap_or(u32::MAX))
}

/// Local branches (full ref names, sorted) that contain `commit`.
fn branches_containing(git: &Git, commit: &str) -> Result<Vec<String>, GitError> {
    let text = git.run([
        "for-each-ref",
        "--format=%(refname)",
        "--contains",
        commit,
        "refs/heads",
    ])?;
    let mut branches: Vec<String> = text.lines().map(str::to_string).collect();
    branches.sort();
    Ok(branches)
}

/// Deletes the refs whose fate is `Delete`, in order, each only if it still points at the commit
/// it was judged by.
pub fn delete_merged_refs(repo: &Repo, fates: &[RefFate]) -> Result<(), MergeError> {
    let git = repo.own_git(&repo.root)?;
    for fate in fates.iter().filter(|f| f.action.is_delete()) {
        delete_ref(repo, &git, &fate.reference, &fate.commit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(tasks: &[(&str, &[&str])]) -> Vec<String> {
        let owned: Vec<(&str, Vec<String>)> = tasks
            .iter()
            .map(|(id, after)| (*id, after.iter().map(|a| a.to_string()).collect()))
            .collect();
        let graph: Vec<(&str, &[String])> =
            owned.iter().map(|(id, a)| (*id, a.as_slice())).collect();
        dependency_order(&graph)
            .into_iter()
            .map(|i| tasks[i].0.to_string())
            .collect()
    }

    #[test]
    fn tasks_land_after_their_dependencies_and_otherwise_in_plan_order() {
        assert_eq!(
            order(&[("c", &["b"]), ("b", &["a"]), ("a", &[])]),
            ["a", "b", "c"]
        );
        assert_eq!(
            order(&[("x", &[]), ("late", &["y"]), ("y", &[]), ("z", &[])]),
            ["x", "y", "late", "z"]
        );
        assert_eq!(
            order(&[("d", &["b", "c"]), ("c", &["a"]), ("b", &["a"]), ("a", &[])]),
            ["a", "c", "b", "d"]
        );
    }

    #[test]
    fn unknown_dependencies_and_cycles_still_give_every_task_a_turn() {
        assert_eq!(
            order(&[("a", &["gone", "a"]), ("b", &["c"]), ("c", &["b"])]),
            ["a", "b", "c"]
        );
    }
}
