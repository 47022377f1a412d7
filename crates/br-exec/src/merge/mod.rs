//! The merge queue: lands a session's succeeded task branches on its integration branch
//! `br/<session-slug>/integration`, one at a time and in dependency order. Every merge commit is
//! built from objects alone (`git merge-tree --write-tree`, then `git commit-tree`), so no
//! checkout, index or working tree is touched; with the session's `verify` command, each candidate
//! is checked in a worktree slot before the integration branch moves to it.
//!
//! `report.rs` holds what a run found for each task; `verify.rs` runs the verify command. The
//! refs themselves, `--into` and cleanup's "is this ref merged?" are br-git's.

mod report;
mod rounds;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use br_core::detail::{ConflictStage, MergeConflict};
use br_core::plan::{Isolation, OnConflict};
use br_core::{EventDetail, Outcome, SessionId, TaskId, TaskState};
use br_git::conflicts::{MergeTree, merge_tree};
use br_git::flock::RepoFlock;
use br_git::git::{Git, GitError, Repo};
use br_git::promote::PromoteError;
use br_git::refs::{
    RefError, advance_ref, checked_out_in, commit_tree, create_ref, integration_ref, is_ancestor,
    resolve_ref, short_branch,
};
use br_git::worktree::{WorktreeError, one_line};
use br_store::{NewEvent, Session, Store, StoreError, Task};

use crate::process::SpawnError;
use crate::signals::Interrupts;
pub use report::{Landing, MergeReport, Requeue, TaskLanding};
pub use rounds::{RoundEvent, RoundsEnd, RoundsError, merge_rounds};
use verify::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(
        "session {name} ({id}) ran with isolation = \"shared\": its tasks changed the repository \
         itself, so there are no task branches to merge"
    )]
    SharedIsolation { id: SessionId, name: String },
    #[error("session {id} has no base commit to start its integration branch from")]
    NoBaseCommit { id: SessionId },
    #[error(
        "`{branch}` is checked out in {}, and br does not move a branch under a checkout: \
         switch that worktree to another branch (or `git switch --detach`) and merge again",
        worktree.display()
    )]
    IntegrationCheckedOut { branch: String, worktree: PathBuf },
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
    Ref(#[from] RefError),
    #[error(transparent)]
    Promote(#[from] PromoteError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Worktree(#[from] WorktreeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(super) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> MergeError {
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
    /// Any request here stops the queue: between candidates, and by terminating a running
    /// verify command.
    pub stop: Interrupts,
    /// Between SIGTERM and SIGKILL when a verify command must stop.
    pub kill_grace: Duration,
}

/// The integration ref of `session`.
fn session_integration_ref(session: &Session) -> String {
    integration_ref(&session.slug)
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
    br_git::conflicts::require_merge_tree(repo, false)?;
    let git = repo.own_git(&repo.root)?;
    let reference = session_integration_ref(session);
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
        if options.stop.any() {
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
            // A branch still at its attempt's start commit holds no work of its own.
            let started_at = self
                .store
                .attempts(&self.session.id, &task.id)?
                .into_iter()
                .next_back()
                .and_then(|a| a.start_commit);
            if started_at.as_deref() == Some(commit.as_str()) {
                Landing::Unchanged
            } else {
                Landing::AlreadyLanded
            }
        } else {
            match merge_tree(self.repo, self.git, None, &self.tip, &commit)? {
                MergeTree::Conflicted { files, .. } => {
                    if self.options.mode == MergeMode::Land {
                        record_conflict(self.store, self.session, task, &files)?;
                    }
                    Landing::Conflict { files }
                }
                MergeTree::Clean { tree } => {
                    let message = merge_message(&self.session.name, &self.session.id, &task.id);
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
    for entry in &mut report.tasks {
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
        let why = match &entry.landing {
            Landing::VerifyFailed { .. } => br_core::RunReason::VerifyFailed,
            _ => br_core::RunReason::Conflict,
        };
        entry.requeue = match store.requeue_task(&session.id, &entry.task, &tip, &reason, why) {
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

/// After `requeue_refused` queued tasks of `session` (which makes it active again): pauses it
/// when no live worker serves it, so that it is never left `running` with nobody to run it; it
/// waits for `br resume`. Returns whether it paused it.
pub fn pause_if_unserved(store: &dyn Store, session: &Session) -> Result<bool, MergeError> {
    if crate::liveness::serving_workers(store, session)? > 0 {
        return Ok(false);
    }
    match store.change_session(&session.id, br_core::state::SessionAction::Pause) {
        Ok(_) => Ok(true),
        // Someone resumed or finished it meanwhile: nothing to pause.
        Err(StoreError::Transition(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
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

/// The message of a landing merge commit; its `Br-Task` trailer names the task, which is how a
/// conflict later finds who landed what.
pub(crate) fn merge_message(session_name: &str, session_id: &SessionId, task: &TaskId) -> String {
    let name = one_line(session_name);
    format!(
        "br: merge task {task} of session {name}\n\nBr-Session: {name}\nBr-Session-Id: {session_id}\nBr-Task: {task}\n"
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

/// `<common>/br/merge.lock`, held by a landing merge queue for its whole run, and by a worker
/// for each landing.
pub(crate) struct QueueLock {
    _flock: RepoFlock,
}

impl QueueLock {
    pub(crate) fn acquire(repo: &Repo) -> Result<QueueLock, MergeError> {
        Ok(QueueLock {
            _flock: RepoFlock::merge_queue(repo)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(tasks: &[(&str, &[&str])]) -> Vec<String> {
        let owned: Vec<(&str, Vec<String>)> = tasks
            .iter()
            .map(|(id, after)| {
                (
                    *id,
                    after.iter().map(std::string::ToString::to_string).collect(),
                )
            })
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
