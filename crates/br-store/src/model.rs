//! The records the store hands out and takes in. The JSON forms of those that have one are their
//! views (`view.rs`), where the contracts of `br status --json`, `br workers --json`,
//! `br locks --json` and `br events --json` (DESIGN.md) are written down once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use br_core::agent::{AgentProfile, SlotSetup, Usage};
use br_core::detail::HeldLock;
use br_core::detail::LockConflict as BlockedBy;
use br_core::outcome::TaskNext;
use br_core::plan::{Isolation, OnConflict, ScopeMode};
use br_core::{Attempt, EventDetail, EventKind, LockPath, Plan, SessionId, SessionStatus, TaskId};
use br_core::{LandMode, Landing, RunReason, StartMode};
use br_core::{OutcomeKind, TaskState, Timestamp, WorkerId, WorkerStatus};
use serde::Serialize;

/// What `submit` needs to create a session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub plan: Plan,
    /// The repository root the session was submitted from.
    pub repo_root: PathBuf,
    /// The identity of its repository (`br_git::Repo::identity`): only workers serving that
    /// repository claim its tasks.
    pub repo_id: Option<String>,
    /// The plan file, when there is one.
    pub plan_path: Option<PathBuf>,
    /// `plan.base` resolved to a commit, when the caller resolved it.
    pub base_commit: Option<String>,
    /// How many local workers `br run` should keep (changed by `br scale`).
    pub workers_wanted: u32,
}

/// One session, with the counts that `br status` and the dashboards show.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub name: String,
    pub slug: String,
    pub status: SessionStatus,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub progress_percent: f64,
    pub total_tasks: u32,
    pub succeeded_tasks: u32,
    pub failed_tasks: u32,
    pub running_tasks: u32,
    pub queued_tasks: u32,
    pub skipped_tasks: u32,
    pub cancelled_tasks: u32,
    pub repo_root: String,
    /// Which repository it belongs to (`None` in a store from before br recorded it).
    pub repo_id: Option<String>,
    pub plan_path: Option<String>,
    pub base: String,
    pub base_commit: Option<String>,
    pub isolation: Isolation,
    pub scope: ScopeMode,
    pub verify: Option<String>,
    pub on_conflict: OnConflict,
    pub heartbeat_timeout_ms: u64,
    pub workers_wanted: u32,
    /// The integration branch's tip as the last landing left it (none before any landing).
    pub integration_commit: Option<String>,
    /// Tasks whose work is on the integration branch (`land = "auto"`).
    pub landed_tasks: u32,
    /// The worker whose turn it is to land the session's waiting tasks (a lease, like a
    /// task's), while one has it.
    pub lander: Option<WorkerId>,
    /// Ignored paths its worktree slots keep between attempts.
    pub keep: Vec<String>,
    /// What its slots get besides their checkout (`copy`, `setup`, `ports`).
    pub slot_setup: SlotSetup,
    /// What its tasks' attempts spent.
    pub usage: Usage,
    /// The git remote its work travels through (a URL, or a path), when it has one.
    pub remote: Option<String>,
}

impl Session {
    /// Tasks that reached a terminal state.
    pub fn finished_tasks(&self) -> u32 {
        self.succeeded_tasks + self.failed_tasks + self.skipped_tasks + self.cancelled_tasks
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    /// What its attempts spent, in words (`spent $0.0300 · 300 in / 30 out tokens · $0.0100
    /// per landed task`): every output says it so. `None` while nothing reported usage.
    pub fn spent_words(&self) -> Option<String> {
        (!self.usage.is_zero()).then(|| self.usage.spent(self.landed_tasks))
    }

    /// The branch a task of this session works on (worktree isolation only).
    pub fn task_branch(&self, task: &TaskId) -> Option<String> {
        match self.isolation {
            Isolation::Worktree => Some(format!("br/{}/{}", self.slug, task)),
            Isolation::Shared => None,
        }
    }
}

/// Percent of tasks that reached a terminal state, to one decimal.
pub fn progress_percent(finished: u32, total: u32) -> f64 {
    if total == 0 {
        return 100.0;
    }
    (f64::from(finished) * 1000.0 / f64::from(total)).floor() / 10.0
}

/// One task of a session, as `br status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub state: TaskState,
    /// How many attempts have started.
    pub attempts: u32,
    pub worker_id: Option<WorkerId>,
    pub branch: Option<String>,
    pub exit_code: Option<i32>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub files: Vec<String>,
    pub after: Vec<String>,
    pub log_path: Option<String>,
    pub run: String,
    /// How the latest attempt ended (`succeeded`, `failed`, `timed_out`, `lease_lost`, …), or
    /// `skipped`.
    pub outcome: Option<OutcomeKind>,
    /// Why a ready task is not running: the lock that holds it back and who holds it (the
    /// detail of its latest `lock_conflict`), reduced to the locks still held when read.
    pub blocked_by: Option<BlockedBy>,
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    /// The commit this task's next attempt starts from, when it differs from the session's
    /// (the merge queue requeues a task on top of the integration branch).
    pub base_commit: Option<String>,
    /// Paths its latest attempt changed outside its declared `files`.
    pub scope_violations: Vec<String>,
    /// Predicted merge conflicts with other tasks' branches (or `integration`).
    pub conflicts: Vec<TaskConflict>,
    /// Where its succeeded work is (`land = "auto"` in worktree isolation): none before it
    /// succeeds and for other tasks.
    pub landing: Option<Landing>,
    /// The integration commit that holds its work, once landed.
    pub landed_commit: Option<String>,
    /// Times it was run again because it could not land.
    pub repairs: u32,
    pub start: StartMode,
    pub land: LandMode,
    /// The coding agent it runs, by profile name.
    pub agent: Option<String>,
    /// The pool it runs in.
    pub pool: Option<String>,
    /// What its attempts spent.
    pub usage: Usage,
}

impl Task {
    /// Keeps of `blocked_by` only the holders whose lock `still_held` says is held; none left
    /// (or the task is not ready): `None`. A conflict is recorded when a claim passes the task
    /// over, and its holders may let go (finish, be interrupted, unlock) without anyone claiming
    /// again: a paused session must not name a lock `br locks` says nobody holds.
    pub(crate) fn forget_released_locks(&mut self, still_held: impl Fn(&HeldLock) -> bool) {
        if self.state != TaskState::Ready {
            self.blocked_by = None;
        }
        if let Some(blocked) = &mut self.blocked_by {
            blocked.held_by.retain(|h| still_held(h));
            if blocked.held_by.is_empty() {
                self.blocked_by = None;
            }
        }
    }
}

impl Task {
    /// Whether the tasks that wait for it may start: it succeeded and, if it lands as it runs,
    /// landed (a dependent starts from a tip that holds its work).
    pub fn releases_dependents(&self) -> bool {
        self.state == TaskState::Succeeded && self.landing != Some(Landing::Waiting)
    }

    /// What its finished work means for merging, in words: files it changed outside its
    /// declared ones, and the tasks its branch is predicted to conflict with. Every view of a
    /// task (status, dashboards) says it the same way.
    pub fn merge_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.scope_violations.is_empty() {
            notes.push(format!(
                "outside its files: {}",
                self.scope_violations.join(", ")
            ));
        }
        for c in &self.conflicts {
            notes.push(format!(
                "conflicts with {} on {}",
                c.with,
                c.files.join(", ")
            ));
        }
        notes
    }
}

/// A predicted merge conflict, seen from one of its two sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskConflict {
    /// The other task (or `integration`).
    pub with: String,
    pub files: Vec<String>,
}

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    /// Why it ran (none in a store from before br recorded it).
    pub reason: Option<RunReason>,
    /// The commit its worktree started from (worktree isolation).
    pub start_commit: Option<String>,
    pub worker_id: WorkerId,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub outcome: Option<OutcomeKind>,
    pub exit_code: Option<i32>,
    pub detail: serde_json::Value,
    pub log_path: Option<String>,
    /// What it spent (none reported: all zero).
    pub usage: Usage,
}

/// One attempt of a session as its timeline draws it (a bar: whose, who ran it, when, why, how
/// it ended) and `br status -v` lists it (where its log is, what it spent) — without what only
/// its task's view needs (its report, its commits).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionAttempt {
    pub task_id: TaskId,
    pub attempt: Attempt,
    pub reason: Option<RunReason>,
    pub outcome: Option<OutcomeKind>,
    pub worker_id: WorkerId,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub log_path: Option<String>,
    pub usage: Usage,
}

/// What a session did, as a run page draws it: every attempt (by start time), and its landing
/// record (its `task_landed`, `merge_conflict` and `verify_failed` events, oldest first, and
/// the tasks that succeeded and wait to land, in plan order).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionHistory {
    pub attempts: Vec<SessionAttempt>,
    pub landing: Vec<Event>,
    pub waiting: Vec<TaskId>,
}

/// What `retry_tasks` did: the session afterwards, and the tasks queued again, in plan order,
/// with the state each had.
#[derive(Debug, Clone, PartialEq)]
pub struct Retried {
    pub session: Session,
    pub tasks: Vec<(TaskId, TaskState)>,
}

/// What a worker says about itself when it registers.
#[derive(Debug, Clone)]
pub struct NewWorker {
    pub host: String,
    pub pid: u32,
    /// Only claim tasks of this session.
    pub session: Option<SessionId>,
    /// Silent this long, the worker is offline.
    pub heartbeat_timeout: Duration,
}

/// A worker, as `br workers` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: WorkerId,
    pub status: WorkerStatus,
    pub host: String,
    pub pid: u32,
    /// The session of its current task, or else the session it serves.
    pub session_id: Option<SessionId>,
    pub current_task: Option<TaskId>,
    pub attempt: Option<Attempt>,
    pub tasks_completed: u32,
    pub tasks_failed: u32,
    pub last_heartbeat: Timestamp,
    pub started_at: Timestamp,
    /// When its current task started.
    pub task_started_at: Option<Timestamp>,
    pub stop_requested: bool,
}

/// Which workers to list.
#[derive(Debug, Clone, Default)]
pub struct WorkerFilter {
    pub status: Option<WorkerStatus>,
    /// Only workers serving this session (their `--session`).
    pub session: Option<SessionId>,
}

/// A worker's right to run one attempt. Every write for the attempt carries it, and the store
/// refuses writes whose lease is no longer current (fencing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub session_id: SessionId,
    pub task_id: TaskId,
    pub attempt: Attempt,
    pub worker_id: WorkerId,
}

/// Everything a worker needs to run a claimed attempt.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub lease: Lease,
    pub session_name: String,
    pub session_slug: String,
    pub run: String,
    pub env: BTreeMap<String, String>,
    pub files: Vec<LockPath>,
    pub timeout: Option<Duration>,
    /// The lease lasts this long after each heartbeat.
    pub heartbeat_timeout: Duration,
    pub isolation: Isolation,
    pub scope: ScopeMode,
    /// The commit the attempt starts from: the integration tip (`start = "tip"`) or the base.
    pub base_commit: Option<String>,
    pub repo_root: String,
    pub log_path: PathBuf,
    /// Why this attempt runs.
    pub reason: RunReason,
    /// The task's prompt, for `BR_PROMPT_FILE`.
    pub prompt: Option<String>,
    /// Ignored paths the slot keeps between attempts.
    pub keep: Vec<String>,
    /// The coding agent it runs (its profile, resolved at submit).
    pub agent: Option<AgentProfile>,
    /// The pool it runs in.
    pub pool: Option<String>,
    /// What the slot gets besides its checkout.
    pub slot_setup: SlotSetup,
    /// The session's git remote: where the attempt's start comes from and its result goes.
    pub remote: Option<String>,
}

/// A worker's turn to land what waits in one session: its right to move the integration
/// branch, renewed like a task's lease (`renew_landing`) and given back when nothing waits.
#[derive(Debug, Clone)]
pub struct LandingJob {
    pub session_id: SessionId,
    pub session_name: String,
    pub session_slug: String,
    pub base_commit: Option<String>,
    /// The integration tip as recorded by the last landing.
    pub integration_commit: Option<String>,
    pub verify: Option<String>,
    /// Ignored paths the worktree slot that verifies keeps between uses (the session's `keep`).
    pub keep: Vec<String>,
    pub heartbeat_timeout: Duration,
    pub worker_id: WorkerId,
    /// The session's git remote: the integration branch that counts is there.
    pub remote: Option<String>,
}

/// One succeeded task waiting to land.
#[derive(Debug, Clone)]
pub struct LandingItem {
    pub task_id: TaskId,
    /// Its succeeded attempt.
    pub attempt: Attempt,
    /// The commit of that attempt on the task branch; none when it changed nothing.
    pub result_commit: Option<String>,
    /// The commit that attempt started from.
    pub start_commit: Option<String>,
}

/// What `next_landing` answers.
#[derive(Debug, Clone)]
pub enum NextLanding {
    Task(Box<LandingItem>),
    /// Nothing waits: the turn is given back.
    Done,
    /// The turn is no longer this worker's (it expired and another took it).
    Lost,
}

/// How one landing went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandingResult {
    /// On the integration branch, whose tip is now `commit`.
    Landed { commit: String },
    /// Its branch does not merge onto the tip: `files` conflict, with what `with` landed since
    /// the task started; `details` shows the conflicting hunks.
    Conflict {
        files: Vec<String>,
        with: Vec<String>,
        details: String,
        tip: String,
    },
    /// The merge failed the session's verify command.
    VerifyFailed {
        command: String,
        exit_code: Option<i32>,
        reason: String,
        log_tail: String,
        tip: String,
    },
}

/// What became of a task after `record_landing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandingRecorded {
    Landed,
    /// Queued again on top of the tip, told why.
    Repair,
    /// Failed for good (no repair left, or `on_conflict = "fail"`).
    Failed,
    /// Not this worker's turn any more: nothing recorded.
    Stale,
}

/// The answer to `claim_next_task`.
#[derive(Debug, Clone)]
pub enum Claim {
    Task(Box<ClaimedTask>),
    /// Landing what waits in a session is this worker's turn.
    Land(Box<LandingJob>),
    /// Nothing is claimable now.
    Nothing,
    /// This worker was asked to stop (e.g. `br scale` down).
    Stop,
}

/// What a worker asks `claim_next_task` for.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub worker: &'a WorkerId,
    /// Only this session's tasks.
    pub session: Option<&'a SessionId>,
    /// Logs go to `<log_dir>/<session>/<task>.<attempt>.log`.
    pub log_dir: &'a std::path::Path,
    /// The identity of the repository the worker serves: it claims only tasks of sessions of
    /// that repository (and of sessions that record none, from older stores).
    pub repo_id: Option<&'a str>,
    /// Only sessions whose work travels through a git remote: a worker with no checkout of its
    /// own (`br worker --repo`) could neither start nor land anything else.
    pub remote_only: bool,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Whether the worker still holds the lease it named (true when it named none).
    pub lease_held: bool,
    /// The leased task's session was cancelled: stop the task.
    pub session_cancelled: bool,
    /// The worker was asked to stop after its current task.
    pub stop_requested: bool,
    /// The worker had been marked offline and is now back.
    pub rejoined: bool,
}

/// What a worker found out about an attempt besides its outcome (worktree isolation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttemptReport {
    /// The commit holding the attempt's result (on the task branch, or its attempt ref).
    pub commit: Option<String>,
    /// Repo-relative paths the attempt changed, relative to its base.
    pub changed: Vec<String>,
    /// Changed paths outside the task's declared `files` (recorded as `scope_violation`).
    pub scope_violations: Vec<String>,
    /// Bytes of output the attempt logged (its log file exists only if this is not 0).
    pub output_bytes: Option<u64>,
    /// What it spent, when the task or its agent said (`BR_USAGE_FILE`, the agent's output).
    pub usage: Option<Usage>,
}

/// The answer to `finish_attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The outcome was recorded; the task does `next`.
    Recorded(TaskNext),
    /// The lease was no longer current: the outcome was refused (`stale_result_rejected`).
    Stale,
}

/// What `requeue_expired_leases` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Attempts whose lease expired, with what their task does next.
    pub leases: Vec<(Lease, TaskNext)>,
    /// Workers marked offline.
    pub workers: Vec<WorkerId>,
}

/// A held lock, as `br locks` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub path: String,
    pub session_id: SessionId,
    /// The task holding it; none for a session's manual lock (`br lock`).
    pub task_id: Option<TaskId>,
    pub attempt: Option<Attempt>,
    pub acquired_at: Timestamp,
}

/// One way a wanted lock overlaps a held one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockConflict {
    pub wanted: String,
    pub held: Lock,
}

/// The answer to `lock_paths`: all acquired, or none and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Acquired,
    Conflict(Vec<LockConflict>),
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub at: Timestamp,
    pub kind: EventKind,
    pub session_id: Option<SessionId>,
    pub task_id: Option<TaskId>,
    pub worker_id: Option<WorkerId>,
    pub attempt: Option<Attempt>,
    /// What it says besides its ids; of the event's `kind`.
    pub detail: EventDetail,
}

/// An event that a caller outside the store records (merge conflicts). Its kind is its
/// detail's.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub session_id: Option<SessionId>,
    pub task_id: Option<TaskId>,
    pub worker_id: Option<WorkerId>,
    pub attempt: Option<Attempt>,
    pub detail: EventDetail,
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events with a larger `seq`.
    pub after_seq: Option<i64>,
    pub session: Option<SessionId>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub status: Option<SessionStatus>,
    pub limit: Option<usize>,
}

/// A pool of the store (`[pool.NAME]`, or an agent's own): at most `size` of its tasks run at
/// once (none: any number); a rate limit parks it until `parked_until`. Its JSON is
/// [`PoolView`](crate::view::PoolView)'s, which also says whether it is parked now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub size: Option<u32>,
    pub backoff_ms: u64,
    pub parked_until: Option<Timestamp>,
    pub parked_reason: Option<String>,
    /// Its tasks running now.
    pub running: u32,
}

impl Pool {
    /// Whether a rate limit parks it at `now`.
    pub fn parked_at(&self, now: Timestamp) -> bool {
        self.parked_until.is_some_and(|until| until > now)
    }

    /// `parked until 15:30:15 (in 42s)` while a rate limit parks it at `now`: the words every
    /// output uses (`br pools`, `br status`, both dashboards).
    pub fn parked_words(&self, now: Timestamp) -> Option<String> {
        self.parked_until
            .filter(|until| *until > now)
            .map(|until| format!("parked {}", br_core::time::until(until, now)))
    }

    /// Whether it runs as many tasks as its size allows, so its ready tasks wait.
    pub fn is_full(&self) -> bool {
        self.size.is_some_and(|size| self.running >= size)
    }

    /// What a ready task of this pool waits for at `now`, if the pool holds it back: `waiting:
    /// pool P parked until 15:30:15 (in 42s)`, or `waiting: pool P full (3/3 running)`.
    pub fn wait_words(&self, now: Timestamp) -> Option<String> {
        let name = &self.name;
        if let Some(parked) = self.parked_words(now) {
            return Some(format!("waiting: pool {name} {parked}"));
        }
        self.is_full()
            .then(|| format!("waiting: pool {name} full ({})", self.running_words()))
    }

    /// `2/3 running`, or `2 running` when nothing caps it.
    pub fn running_words(&self) -> String {
        match self.size {
            Some(size) => format!("{}/{size} running", self.running),
            None => format!("{} running", self.running),
        }
    }
}

/// BuildRunner's summary (`br summary --json`), plus running tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub timestamp: Timestamp,
    pub workers: WorkerCounts,
    pub sessions: SessionCounts,
    pub tasks: TaskCounts,
    /// What every session's attempts spent.
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerCounts {
    pub total: u32,
    pub idle: u32,
    pub busy: u32,
    pub offline: u32,
    /// Busy workers over live (idle + busy) workers, 0.0 to 1.0.
    pub utilization: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionCounts {
    pub active: u32,
    pub total: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskCounts {
    pub queued: u32,
    pub running: u32,
    pub completed: u32,
    pub failed: u32,
}
