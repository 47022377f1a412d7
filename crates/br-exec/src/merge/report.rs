//! What a merge queue run found for each task: landed, already there, conflicting, failing
//! verification, or with nothing to land; and whether a refused task was queued again.

use std::path::PathBuf;

use br_core::{Outcome, SessionId, TaskId, TaskState};

use super::MergeMode;

/// What happened to one task's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// Merged onto the integration branch by this run, as merge commit `commit`; `verify_log`
    /// holds the output of the session's verify command on it, when there is one.
    Landed {
        commit: String,
        verify_log: Option<PathBuf>,
    },
    /// Its branch is already contained in the integration branch: it landed earlier.
    AlreadyLanded,
    /// Its branch is where its attempt started: it changed nothing, so there is nothing of its
    /// own to land (not the same as having landed).
    Unchanged,
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
            Landing::Unchanged => "unchanged",
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
            Landing::Landed { .. }
                | Landing::AlreadyLanded
                | Landing::Unchanged
                | Landing::WouldLand
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
