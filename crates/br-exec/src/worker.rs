//! The worker loop: register, claim one task at a time, run it, heartbeat while it runs, report
//! its outcome under its lease, and leave cleanly. Any worker also requeues expired leases on each
//! heartbeat, so there is no coordinator to lose.
//!
//! A worker that cannot renew its lease — the store is locked, slow, restarting, or cut off by
//! the network — stops its task on its own before the lease can expire (self-fencing), so that
//! the task's next attempt elsewhere never overlaps this one: `br_core::lease::FenceTimeline`
//! sets the deadlines, docs/leases.md draws them. A store that cannot be reached is waited out,
//! not a reason to leave.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use br_core::detail::MergeConflict;
use br_core::lease::FenceTimeline;
use br_core::outcome::TaskNext;
use br_core::plan::{Isolation, ScopeMode};
use br_core::state::Landing;
use br_core::{
    EventDetail, Outcome, SessionId, SessionStatus, TaskId, TaskState, WorkerId, WorkerStatus,
};
use br_store::{
    AttemptReport, Claim, ClaimRequest, ClaimedTask, Finish, LandingItem, LandingJob,
    LandingRecorded, LandingResult, NewEvent, NewWorker, NextLanding, SessionFilter, Store,
    StoreError, WorkerFilter,
};

use crate::landing::{LandError, VerifyRefusal};
use crate::lease::{Moment, Renewal, Renewer};
use crate::liveness::{host_name, process_exists};
use crate::log_ship::{LogShipper, SharedShipper, Shipped};
use crate::process::{TaskCommand, TaskProcess, outcome_of};
use crate::reaper::Reaper;
use crate::strays::{become_subreaper, kill_strays};
use crate::travel::{StartError, Travel};
use br_git::conflicts::{FinishedBranch, conflicting_branches};
use br_git::git::Repo;
use br_git::worktree::{
    AttemptResult, AttemptSpec, Keep, Planting, Seeding, WorktreeSlot, scope_violations,
};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The repository tasks run in (its root, for `shared` isolation).
    pub repo: Repo,
    /// Its identity (`Repo::identity`): the worker claims only tasks of sessions of this
    /// repository.
    pub repo_id: String,
    /// Where attempt logs go.
    pub log_dir: PathBuf,
    /// Only run this session's tasks, and leave when it ends.
    pub session: Option<SessionId>,
    /// How often to heartbeat; shortened to a third of a task's lease when that is shorter.
    pub heartbeat_interval: Duration,
    /// Silent this long, this worker is marked offline.
    pub heartbeat_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a task must stop.
    pub kill_grace: Duration,
    /// Leave as soon as nothing is claimable.
    pub exit_when_idle: bool,
    /// A task whose log grows past this many bytes is killed (`output_limit`): one runaway
    /// task must not fill the disk that every other task and the store share.
    pub max_log_bytes: Option<u64>,
    /// The command that starts the reaper (normally `br __reaper`); none runs without it.
    pub reaper: Option<Vec<OsString>>,
    pub host: String,
    /// Touched (at most once a second) whenever the store answers this worker: how a liveness
    /// probe (Kubernetes, systemd's watchdog scripts) tells a live worker from a stuck one.
    pub alive_file: Option<PathBuf>,
    /// Claim only sessions with a git remote (a worker in a clone of its own, `--repo`).
    pub remote_only: bool,
}

/// Why the worker left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leave {
    /// A signal or the parent asked it to stop.
    Stopped,
    /// `br scale` (or `request_worker_stops`) asked it to leave.
    AskedToLeave,
    /// Its session ended.
    SessionEnded,
    /// Nothing was claimable and `exit_when_idle` was set.
    Idle,
    /// The disk holding the repository (this path) is full: no attempt can be prepared or
    /// kept. The attempt it was running was recorded as interrupted, to run again.
    DiskFull(PathBuf),
}

/// Something worth telling a human watching the worker.
#[derive(Debug, Clone)]
pub enum Note {
    Registered(WorkerId),
    Started(Box<ClaimedTask>),
    Finished {
        task: Box<ClaimedTask>,
        outcome: Outcome,
        recorded: bool,
    },
    LeaseLost(Box<ClaimedTask>),
    /// The lease went unrenewed too long: the worker stopped the task before the lease could
    /// expire (the store was unreachable or too slow for `silent_for`).
    Fenced {
        task: Box<ClaimedTask>,
        silent_for: Duration,
    },
    /// The kill grace does not fit in a session's leases: a self-fence uses this shorter one.
    GraceCut {
        session: String,
        lease: Duration,
        grace: Duration,
    },
    StoreTrouble(String),
    /// Processes an attempt detached from its process group outlived it and were killed.
    StraysKilled {
        task: Box<ClaimedTask>,
        count: usize,
    },
    /// The store answers again after it could not be reached.
    StoreBack {
        after: Duration,
    },
    /// A task's work is on its session's integration branch, whose tip is now `commit`.
    Landed {
        session: String,
        task: TaskId,
        commit: String,
    },
    /// A task could not land; `recorded` says what became of it (repaired or failed).
    NotLanded {
        session: String,
        task: TaskId,
        why: String,
        recorded: LandingRecorded,
    },
    /// Landing could not go on (git refused, the turn passed on): what waits is landed later.
    LandingTrouble(String),
}

pub use crate::signals::StopFlag;

/// Runs a worker until it is told to stop, its session ends, or (with `exit_when_idle`) nothing
/// is left to claim. Records the worker as stopped on the way out, also after an error.
pub fn run_worker(
    store: &dyn Store,
    config: &WorkerConfig,
    stop: &StopFlag,
    notify: &mut dyn FnMut(Note),
) -> Result<Leave, StoreError> {
    let new = NewWorker {
        host: config.host.clone(),
        pid: std::process::id(),
        session: config.session.clone(),
        heartbeat_timeout: config.heartbeat_timeout,
    };
    // A store that is away (or a connection cut mid-write) is waited out here as everywhere
    // else. A registration whose answer was lost may have been recorded: that row never
    // heartbeats and shows offline after a lease, which is all it can do.
    let mut wait = Duration::from_millis(50);
    let id = loop {
        match store.register_worker(&new) {
            Ok(id) => break id,
            Err(e) if e.is_transient() && !stop.load(Ordering::SeqCst) => {
                notify(Note::StoreTrouble(format!(
                    "{} (trying again)",
                    error_chain(&e)
                )));
                std::thread::sleep(wait);
                wait = (wait * 2).min(UNREACHABLE_BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    };
    notify(Note::Registered(id.clone()));
    // Orphans among the tasks' descendants (`setsid`, double forks) re-parent to this process
    // instead of init, so each attempt's strays can be found and killed when it ends.
    if let Err(e) = become_subreaper() {
        notify(Note::StoreTrouble(format!(
            "cannot become the subreaper of its tasks ({e}): a process a task detaches from its \
             group may outlive the attempt"
        )));
    }
    let mut reaper = match &config.reaper {
        Some(argv) => match Reaper::spawn(argv) {
            Ok(r) => Some(r),
            Err(e) => {
                notify(Note::StoreTrouble(format!(
                    "could not start the reaper ({e}): task processes may outlive a killed worker"
                )));
                None
            }
        },
        None => None,
    };
    let (result, stopped) = std::thread::scope(|scope| {
        let renewer = match Renewer::start(scope, store, &id) {
            Ok(renewer) => renewer,
            Err(e) => {
                let e = StoreError::Backend {
                    context: "start the lease thread",
                    source: Box::new(e),
                };
                return (Err(e), Ok(()));
            }
        };
        let mut worker = Worker {
            store,
            config,
            id: id.clone(),
            stop,
            reaper: reaper.as_mut(),
            notify,
            renewer,
            slot: None,
            seed_due: None,
            seeds_tried: HashSet::new(),
            changes: HashMap::new(),
            trouble_since: None,
            trouble_shown: None,
            grace_cut_said: std::collections::HashSet::new(),
            leave: None,
            alive_at: None,
        };
        let result = worker.serve();
        // Leave a clean record even if serving failed; a failure here is secondary.
        let stopped = worker.record(|| store.stop_worker(&id));
        (result, stopped)
    });
    drop(reaper);
    let exit = result?;
    stopped?;
    Ok(exit)
}

struct Worker<'a> {
    store: &'a dyn Store,
    config: &'a WorkerConfig,
    id: WorkerId,
    stop: &'a StopFlag,
    reaper: Option<&'a mut Reaper>,
    notify: &'a mut dyn FnMut(Note),
    /// Renews the running attempt's lease on a thread of its own.
    renewer: Renewer,
    /// The worktree slot this worker runs worktree-isolated tasks in, taken on first use and
    /// held until the worker leaves.
    slot: Option<WorktreeSlot>,
    /// The `keep` patterns of the last attempt in the slot: once the worker finds nothing to
    /// claim, it seeds them from the slot (see `seed_from_slot`).
    seed_due: Option<Vec<String>>,
    /// The `keep` patterns this process has seeded, or found it cannot: tried once each.
    seeds_tried: HashSet<Vec<String>>,
    /// What each finished task's attempt changed, as read from the store: conflict prediction
    /// needs every other finished task's changes after each success, and reading them afresh
    /// each time would cost a store read per task per success.
    changes: HashMap<(SessionId, TaskId), (u32, Vec<String>)>,
    /// Since when the store could not be reached (or stayed locked), if it cannot now.
    trouble_since: Option<Instant>,
    /// When the last warning about it was shown, so an outage is not a line every 50 ms.
    trouble_shown: Option<Instant>,
    /// Sessions whose leases are too short for the whole kill grace, already said so.
    grace_cut_said: std::collections::HashSet<SessionId>,
    /// Set when an attempt found the worker cannot go on (its disk is full).
    leave: Option<Leave>,
    /// When `alive_file` was last touched.
    alive_at: Option<Instant>,
}

/// The longest an idle worker sleeps between looks at the store; it also wakes on any change.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often a running task's worker checks its stop flag between heartbeats.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often a fence deadline is looked at: finer than `STOP_POLL`, since the margin of a short
/// lease is 100 ms.
const FENCE_POLL: Duration = Duration::from_millis(10);
/// While the store cannot be reached, the wait between tries grows to this.
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// While the store cannot be reached, a warning at most this often.
const TROUBLE_EVERY: Duration = Duration::from_secs(10);
/// How long a worker waits before it claims again after the session's remote did not answer:
/// the task it gave back would otherwise come straight back to it, and fail to fetch again.
const REMOTE_BACKOFF: Duration = Duration::from_secs(2);

/// How long a worker that was told to stop keeps trying to record an outcome in a store it
/// cannot reach. Giving up loses nothing: the lease expires and the store records the attempt
/// as `lease_lost` itself.
const STOPPING_PATIENCE: Duration = Duration::from_secs(10);

impl Worker<'_> {
    fn serve(&mut self) -> Result<Leave, StoreError> {
        let interval = self
            .config
            .heartbeat_interval
            .min(self.config.heartbeat_timeout / 3)
            .max(Duration::from_millis(10));
        let mut next_beat = Instant::now() + interval;
        // The next claim, made in the transaction that recorded the last attempt's outcome.
        let mut chained: Option<Chained> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(Leave::Stopped);
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + interval;
                match self.store.heartbeat(&self.id, None) {
                    Ok(hb) if hb.stop_requested => return Ok(Leave::AskedToLeave),
                    Ok(_) => self.store_back(),
                    Err(e) if e.is_transient() => {
                        self.trouble(&e);
                        self.back_off();
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                self.requeue_expired();
            }
            let (claim, claimed_at) = match chained.take() {
                Some(chained) => chained,
                None => {
                    let request = ClaimRequest {
                        worker: &self.id,
                        session: self.config.session.as_ref(),
                        log_dir: &self.config.log_dir,
                        repo_id: Some(&self.config.repo_id),
                        remote_only: self.config.remote_only,
                    };
                    // The lease the claim grants runs from when the store received the claim,
                    // which is after this moment: fence deadlines counted from here are never
                    // late.
                    let claimed_at = Moment::now();
                    (self.store.claim_next_task(&request), claimed_at)
                }
            };
            match claim {
                Ok(Claim::Task(task)) => {
                    self.store_back();
                    chained = self.run_attempt(*task, claimed_at)?;
                    if let Some(leave) = self.leave.take() {
                        return Ok(leave);
                    }
                    next_beat = Instant::now() + interval;
                }
                Ok(Claim::Land(job)) => {
                    self.store_back();
                    self.land(&job)?;
                    next_beat = Instant::now() + interval;
                }
                Ok(Claim::Stop) => return Ok(Leave::AskedToLeave),
                Ok(Claim::Nothing) => {
                    self.store_back();
                    self.seed_from_slot();
                    let ended = match &self.config.session {
                        Some(session) => match self.store.session(session) {
                            Ok(s) => s.status.is_terminal(),
                            Err(e) if e.is_transient() => {
                                self.trouble(&e);
                                self.back_off();
                                continue;
                            }
                            Err(e) => return Err(e),
                        },
                        None => false,
                    };
                    if ended {
                        return Ok(Leave::SessionEnded);
                    }
                    if self.config.exit_when_idle {
                        match self.worth_staying() {
                            Ok(true) => continue,
                            Ok(false) => return Ok(Leave::Idle),
                            Err(e) if e.is_transient() => {
                                self.trouble(&e);
                                self.back_off();
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    let until_beat = next_beat.saturating_duration_since(Instant::now());
                    match self.store.wait_for_change(until_beat.min(IDLE_POLL)) {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => self.trouble(&e),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if e.is_transient() => {
                    self.trouble(&e);
                    self.back_off();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Before an idle worker leaves (`exit_when_idle`), whether it should look again instead:
    /// a task may be held under a lease that expired (nobody requeued it yet: this worker's
    /// own heartbeat pass has not come), or under the lease of a worker that went silent — its
    /// process is gone, or it has not heartbeated for a third of the lease, which a live worker
    /// running a task always does. Such a task becomes claimable when its lease expires; a
    /// worker that left now might leave the session with nobody to rerun it.
    fn worth_staying(&mut self) -> Result<bool, StoreError> {
        let expired = self.store.requeue_expired_leases()?;
        if !expired.leases.is_empty() {
            return Ok(true);
        }
        let now = self.store.now()?;
        let host = host_name();
        let workers = self.store.workers(&WorkerFilter {
            session: self.config.session.clone(),
            ..Default::default()
        })?;
        for w in workers {
            if w.id == self.id || w.status != WorkerStatus::Busy {
                continue;
            }
            let Some(session) = &w.session_id else {
                continue;
            };
            let lease = self.store.session(session)?.heartbeat_timeout();
            let silent = now.since(w.last_heartbeat) > lease / 3
                || (w.host == host && !process_exists(w.pid));
            if silent {
                self.store.wait_for_change(IDLE_POLL)?;
                return Ok(true);
            }
        }
        // A task waiting to land while claim found nothing: another worker holds the session's
        // landing turn. It lands the task and gives the turn back, or it died and the turn
        // expires for this worker to take; either way the session needs someone to stay until
        // then (landing workers do not show as busy, and may be on another host).
        if self.something_waits_to_land()? {
            self.store.wait_for_change(IDLE_POLL)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether a task of a session this worker serves waits to land.
    fn something_waits_to_land(&self) -> Result<bool, StoreError> {
        let sessions = match &self.config.session {
            Some(session) => vec![session.clone()],
            None => self
                .store
                .list_sessions(&SessionFilter {
                    status: Some(SessionStatus::Running),
                    limit: None,
                })?
                .into_iter()
                .map(|s| s.id)
                .collect(),
        };
        for session in sessions {
            if self
                .store
                .tasks(&session)?
                .iter()
                .any(|t| t.landing == Some(Landing::Waiting))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Says that the store is in trouble: at once the first time, then now and then while it
    /// lasts.
    fn trouble(&mut self, e: &StoreError) {
        let now = Instant::now();
        let since = *self.trouble_since.get_or_insert(now);
        if self
            .trouble_shown
            .is_some_and(|shown| now.duration_since(shown) < TROUBLE_EVERY)
        {
            return;
        }
        self.trouble_shown = Some(now);
        let mut text = error_chain(e);
        if e.is_transient() && now.duration_since(since) >= Duration::from_secs(1) {
            text.push_str(&format!(
                " (for {}s now; trying again)",
                now.duration_since(since).as_secs()
            ));
        }
        (self.notify)(Note::StoreTrouble(text));
    }

    /// The store answered: if it had been in trouble, say it is back.
    fn store_back(&mut self) {
        if let Some(path) = &self.config.alive_file
            && self
                .alive_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.alive_at = Some(Instant::now());
            if let Err(e) = touch(path) {
                (self.notify)(Note::StoreTrouble(format!(
                    "cannot touch the alive file {}: {e}",
                    path.display()
                )));
            }
        }
        if let Some(since) = self.trouble_since.take() {
            self.trouble_shown = None;
            (self.notify)(Note::StoreBack {
                after: since.elapsed(),
            });
        }
    }

    /// Waits before trying the store again: longer the longer it has been in trouble, up to
    /// `UNREACHABLE_BACKOFF_MAX`, and never past a stop request.
    fn back_off(&self) {
        let out_for = self.trouble_since.map_or(Duration::ZERO, |t| t.elapsed());
        let wait = (out_for / 4).clamp(Duration::from_millis(50), UNREACHABLE_BACKOFF_MAX);
        self.pause(wait);
    }

    /// Waits `wait`, never past a stop request.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(STOP_POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }

    fn requeue_expired(&mut self) {
        if let Err(e) = self.store.requeue_expired_leases() {
            self.trouble(&e);
        }
    }

    /// Runs a store write until it is done, waiting out a busy or unreachable store: an outcome
    /// must not be dropped because the store was away for a while. Once the worker is told to
    /// stop, it tries for `STOPPING_PATIENCE` more at most.
    fn record<T>(
        &mut self,
        mut write: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut stopping_since: Option<Instant> = None;
        loop {
            match write() {
                Err(e) if e.is_transient() => {
                    if self.stop.load(Ordering::SeqCst)
                        && stopping_since.get_or_insert_with(Instant::now).elapsed()
                            >= STOPPING_PATIENCE
                    {
                        return Err(e);
                    }
                    self.trouble(&e);
                    self.back_off();
                    if self.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Ok(out) => {
                    self.store_back();
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one attempt and records its outcome. Unless the worker is stopping, the same store
    /// transaction also claims its next task, which is returned (with when it was asked for).
    fn run_attempt(
        &mut self,
        task: ClaimedTask,
        claimed_at: Moment,
    ) -> Result<Option<Chained>, StoreError> {
        let lease = task.lease.clone();
        (self.notify)(Note::Started(Box::new(task.clone())));
        // With a remote, the attempt's start comes from there (it may have landed elsewhere).
        // A remote that does not answer is waited out: the task goes back to the queue without
        // spending a retry, and this worker waits a little before it claims again.
        let mut remote_down = false;
        let (travel, prepared) = match Travel::start(&self.config.repo, &task) {
            Ok(travel) => (travel, self.prepare(&task)),
            Err(StartError::Unreachable(reason)) => {
                (self.notify)(Note::StoreTrouble(format!(
                    "task {}: {reason}; it goes back to the queue, no retry spent",
                    task.lease.task_id
                )));
                remote_down = true;
                (None, Err(reason))
            }
            Err(StartError::Other(reason)) => (None, Err(reason)),
        };
        let (outcome, lease_lost, report, result) = match prepared {
            Err(_) if remote_down => (Outcome::Interrupted, false, AttemptReport::default(), None),
            Err(reason) => (
                Outcome::SpawnFailed { reason },
                false,
                AttemptReport::default(),
                None,
            ),
            Ok(dir) => {
                match crate::slot_setup::prepare(&self.config.repo, &dir, &self.slot_name(), &task)
                {
                    Err(reason) => (
                        Outcome::SpawnFailed { reason },
                        false,
                        AttemptReport::default(),
                        None,
                    ),
                    Ok(extras) => {
                        let (execution, output_bytes) =
                            self.execute(&task, &dir, &extras, claimed_at);
                        // What `copy` put there is the checkout's, never the task's result.
                        crate::slot_setup::remove_copies(&dir, &extras);
                        let lease_lost = !matches!(execution, Execution::Done(_));
                        let outcome = match execution {
                            Execution::Done(o) | Execution::LeaseLost(o) => o,
                            Execution::Fenced { silent_for } => {
                                (self.notify)(Note::Fenced {
                                    task: Box::new(task.clone()),
                                    silent_for,
                                });
                                Outcome::LeaseLost
                            }
                        };
                        // A rate limit is the agent's, not the task's: it spends no retry, and parks
                        // the task's pool.
                        let outcome =
                            match crate::agent::rate_limit(&task, &outcome, &task.log_path) {
                                Some((reason, resets_at_ms)) if !lease_lost => {
                                    Outcome::RateLimited {
                                        reason,
                                        resets_at_ms,
                                    }
                                }
                                _ => outcome,
                            };
                        let outcome = extras.setup_outcome(outcome);
                        let (outcome, mut report, result) =
                            self.conclude(&task, outcome, lease_lost);
                        // Whoever lands it (on any machine) fetches it from the remote: a result
                        // that cannot be pushed is not a result anyone can use.
                        let outcome =
                            match (&travel, result.as_ref().and_then(|r| r.commit.as_deref())) {
                                (Some(travel), Some(commit)) if outcome == Outcome::Succeeded => {
                                    match travel.publish_result(commit) {
                                        Ok(()) => outcome,
                                        Err(reason) => Outcome::Unrecorded { reason },
                                    }
                                }
                                _ => outcome,
                            };
                        report.output_bytes = Some(output_bytes);
                        let usage_file = crate::context::usage_path(&task.log_path);
                        report.usage =
                            match crate::agent::usage_of(&task, &usage_file, &task.log_path) {
                                Ok(usage) => usage,
                                Err(why) => {
                                    (self.notify)(Note::StoreTrouble(format!(
                                        "task {}: {why}; its usage is not counted",
                                        task.lease.task_id
                                    )));
                                    None
                                }
                            };
                        // Held until the attempt's result is kept: its ports, among others.
                        drop(extras);
                        (outcome, lease_lost, report, result)
                    }
                }
            }
        };
        if lease_lost && outcome != Outcome::LeaseLost {
            (self.notify)(Note::LeaseLost(Box::new(task.clone())));
        }
        // An attempt that failed on a full disk failed through no fault of its task: it runs
        // again once there is space, and this worker, which can do nothing meanwhile, leaves.
        let disk = &self.config.repo.common_dir;
        let failed = matches!(
            outcome,
            Outcome::Failed { .. } | Outcome::SpawnFailed { .. } | Outcome::Unrecorded { .. }
        );
        let outcome = if failed && br_store::disk_full(disk) {
            self.leave = Some(Leave::DiskFull(disk.clone()));
            Outcome::Interrupted
        } else {
            outcome
        };
        // Recorded when the store can be reached again; refused harmlessly if the lease expired
        // meanwhile and another attempt ran.
        let store = self.store;
        let (finish, chained) = if self.stop.load(Ordering::SeqCst) || self.leave.is_some() {
            let finish = self.record(|| store.finish_attempt_with(&lease, &outcome, &report))?;
            (finish, None)
        } else if remote_down {
            let finish = self.record(|| store.finish_attempt_with(&lease, &outcome, &report))?;
            self.pause(REMOTE_BACKOFF);
            (finish, None)
        } else {
            let (id, config) = (self.id.clone(), self.config);
            let next = ClaimRequest {
                worker: &id,
                session: config.session.as_ref(),
                log_dir: &config.log_dir,
                repo_id: Some(&config.repo_id),
                remote_only: config.remote_only,
            };
            // The new lease counts from when the try that succeeded was sent, not the first
            // try: `record` may have waited out a locked store for longer than a lease.
            let mut asked_at = Moment::now();
            let (finish, claim) = self.record(|| {
                asked_at = Moment::now();
                store.finish_attempt_and_claim(&lease, &outcome, &report, &next)
            })?;
            (finish, Some((Ok(claim), asked_at)))
        };
        if finish == Finish::Recorded(TaskNext::Succeed)
            && let Some(result) = &result
        {
            // Only now, with the result accepted, does the task's branch move on the remote.
            if let (Some(travel), Some(commit)) = (&travel, &result.commit)
                && let Err(why) = travel.publish_branch(commit)
            {
                (self.notify)(Note::StoreTrouble(format!(
                    "the branch of {}/{} was not moved on the remote: {why}",
                    task.session_name, task.lease.task_id
                )));
            }
            self.predict_conflicts(&task, result);
        }
        (self.notify)(Note::Finished {
            task: Box::new(task),
            outcome,
            recorded: matches!(finish, Finish::Recorded(_)),
        });
        Ok(chained)
    }

    /// What owns the attempt's directory, for the things kept per directory (an agent's config):
    /// the worktree slot, or in shared isolation this worker.
    fn slot_name(&self) -> String {
        self.slot
            .as_ref()
            .and_then(|slot| slot.path().file_name())
            .map_or_else(
                || format!("worker-{}", self.id),
                |name| name.to_string_lossy().into_owned(),
            )
    }

    /// The directory the attempt runs in: the repository itself, or a worktree slot reset to the
    /// attempt's base commit.
    fn prepare(&mut self, task: &ClaimedTask) -> Result<PathBuf, String> {
        match task.isolation {
            Isolation::Shared => Ok(self.config.repo.root.clone()),
            Isolation::Worktree => {
                let base = task.base_commit.as_deref().ok_or_else(|| {
                    "the session has no base commit to make a worktree from".to_string()
                })?;
                let slot = match &mut self.slot {
                    Some(slot) => slot,
                    None => self.slot.insert(
                        WorktreeSlot::acquire(&self.config.repo).map_err(|e| error_chain(&e))?,
                    ),
                };
                let dir = slot
                    .checkout(&spec(task, base))
                    .map_err(|e| error_chain(&e))?;
                // A slot just made goes without the seed's caches when they could not be
                // cloned: the task builds them, as in any new slot.
                if let Some(Planting::Failed(e)) = slot.last_planting() {
                    let warning = format!(
                        "{} starts without the kept caches of the repository's seed: {}",
                        dir.display(),
                        error_chain(e)
                    );
                    (self.notify)(Note::StoreTrouble(warning));
                }
                Ok(dir)
            }
        }
    }

    /// Remembers that the slot's kept caches (`keep`) may seed slots made later.
    fn seed_due_for(&mut self, keep: &[String]) {
        if !keep.is_empty() {
            self.seed_due = Some(keep.to_vec());
        }
    }

    /// When nothing is left to claim: makes the repository's seed of the caches the last
    /// attempt kept in the slot, if it has none (see `br_git::worktree::seed`). Now, because no
    /// task runs in the slot and nothing waits for this worker: a failure costs a warning, never
    /// an attempt or the time of one. Tried once per process for each set of patterns.
    fn seed_from_slot(&mut self) {
        let (Some(keep), Some(slot)) = (self.seed_due.take(), &self.slot) else {
            return;
        };
        if self.stop.load(Ordering::SeqCst) || self.seeds_tried.contains(&keep) {
            return;
        }
        match slot.seed(&keep) {
            // The next attempt in the slot may have built them.
            Ok(Seeding::NothingKept) => {}
            // On a file system that cannot clone, nothing is shared, by design: no warning.
            Ok(Seeding::Made(_) | Seeding::Exists | Seeding::CannotClone(_)) => {
                self.seeds_tried.insert(keep);
            }
            Err(e) => {
                let warning = format!(
                    "could not seed the caches kept in {} for slots made later: {}",
                    slot.path().display(),
                    error_chain(&e)
                );
                self.seeds_tried.insert(keep);
                (self.notify)(Note::StoreTrouble(warning));
            }
        }
    }

    /// For a worktree attempt: commits what it left, checks its scope, and keeps the result on
    /// the task branch (success) or at its attempt ref (anything else: never thrown away).
    fn conclude(
        &mut self,
        task: &ClaimedTask,
        outcome: Outcome,
        lease_lost: bool,
    ) -> (Outcome, AttemptReport, Option<AttemptResult>) {
        let (Some(slot), Some(base)) = (self.slot.as_mut(), task.base_commit.as_deref()) else {
            return (outcome, AttemptReport::default(), None);
        };
        if task.isolation != Isolation::Worktree {
            return (outcome, AttemptReport::default(), None);
        }
        let spec = spec(task, base);
        let result = match slot.commit_result(&spec) {
            Ok(r) => r,
            Err(e) => {
                let reason = error_chain(&e);
                let outcome = if outcome == Outcome::Succeeded && !lease_lost {
                    Outcome::Unrecorded { reason }
                } else {
                    (self.notify)(Note::StoreTrouble(format!(
                        "could not keep the attempt's changes: {reason}"
                    )));
                    outcome
                };
                return (outcome, AttemptReport::default(), None);
            }
        };
        let violations = scope_violations(&result.changed, &task.files);
        let mut outcome = outcome;
        if outcome == Outcome::Succeeded
            && !violations.is_empty()
            && task.scope == ScopeMode::Strict
        {
            outcome = Outcome::ScopeViolation {
                files: violations.clone(),
            };
        }
        let keep = if outcome == Outcome::Succeeded && !lease_lost {
            Keep::Branch
        } else {
            Keep::AttemptRef
        };
        if let Err(e) = slot.keep(&spec, &result, keep) {
            let reason = error_chain(&e);
            if keep == Keep::Branch {
                outcome = Outcome::Unrecorded { reason };
            } else {
                (self.notify)(Note::StoreTrouble(format!(
                    "could not keep the attempt's changes: {reason}"
                )));
            }
        }
        self.seed_due_for(&task.keep);
        let report = AttemptReport {
            commit: result.commit.clone(),
            changed: result.changed.clone(),
            scope_violations: violations,
            output_bytes: None,
            usage: None,
        };
        let kept = (keep == Keep::Branch && outcome == Outcome::Succeeded).then_some(result);
        (outcome, report, kept)
    }

    /// After a task's success is recorded: compares its branch with the session's other finished
    /// task branches (and the integration branch) without touching any working tree, and records
    /// a `merge_conflict` for each pair that would not merge. Only pairs that changed a common
    /// path (or one a directory of the other's) can conflict, so only those are merged.
    fn predict_conflicts(&mut self, task: &ClaimedTask, result: &AttemptResult) {
        if result.commit.is_none() {
            return;
        }
        let session = &task.lease.session_id;
        let mine = FinishedBranch {
            task: task.lease.task_id.to_string(),
            branch: format!("refs/heads/br/{}/{}", task.session_slug, task.lease.task_id),
            changed: result.changed.clone(),
        };
        let others = match self.finished_branches(task) {
            Ok(o) => o,
            Err(e) => return self.trouble(&e),
        };
        let integration = format!("refs/heads/br/{}/integration", task.session_slug);
        let found = conflicting_branches(&self.config.repo, &mine, &others, &integration);
        for (with, files) in found.unwrap_or_else(|e| {
            (self.notify)(Note::StoreTrouble(format!(
                "conflict prediction failed: {}",
                error_chain(&e)
            )));
            Vec::new()
        }) {
            let event = NewEvent {
                session_id: Some(session.clone()),
                task_id: Some(task.lease.task_id.clone()),
                worker_id: Some(self.id.clone()),
                attempt: Some(task.lease.attempt),
                detail: EventDetail::MergeConflict(MergeConflict {
                    tasks: vec![task.lease.task_id.to_string(), with.clone()],
                    files,
                    with,
                    stage: None,
                }),
            };
            let store = self.store;
            if let Err(e) = self.record(|| store.append_event(&event)) {
                self.trouble(&e);
            }
        }
    }

    /// The session's other succeeded tasks, with what their latest attempt changed. Only the
    /// attempts of tasks not seen at their current attempt before are read.
    fn finished_branches(&mut self, task: &ClaimedTask) -> Result<Vec<FinishedBranch>, StoreError> {
        let session = &task.lease.session_id;
        // A worker serving many sessions remembers only the current one's.
        self.changes.retain(|(s, _), _| s == session);
        let mut out = Vec::new();
        for t in self.store.tasks(session)? {
            if t.state != TaskState::Succeeded || t.id == task.lease.task_id {
                continue;
            }
            let key = (session.clone(), t.id.clone());
            let known = self
                .changes
                .get(&key)
                .is_some_and(|(attempt, _)| *attempt == t.attempts);
            if !known {
                let attempts = self.store.attempts(session, &t.id)?;
                let changed: Vec<String> = attempts
                    .last()
                    .and_then(|a| a.detail.get("changed"))
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .unwrap_or_default();
                self.changes.insert(key.clone(), (t.attempts, changed));
            }
            let changed = &self.changes[&key].1;
            if changed.is_empty() {
                continue;
            }
            out.push(FinishedBranch {
                branch: format!("refs/heads/br/{}/{}", task.session_slug, t.id),
                task: t.id.to_string(),
                changed: changed.clone(),
            });
        }
        Ok(out)
    }

    /// Runs the attempt's process in `dir` to its end, keeping its lease, and decides its
    /// outcome.
    fn execute(
        &mut self,
        task: &ClaimedTask,
        dir: &std::path::Path,
        extras: &crate::slot_setup::SlotExtras,
        claimed_at: Moment,
    ) -> (Execution, u64) {
        // What it is told about why it runs: the attempt before it, when there is one.
        let previous = if task.lease.attempt.0 > 1 {
            self.store
                .attempts(&task.lease.session_id, &task.lease.task_id)
                .ok()
                .and_then(|all| {
                    all.into_iter()
                        .rev()
                        .find(|a| a.attempt.0 < task.lease.attempt.0)
                })
        } else {
            None
        };
        let files = match crate::context::write_attempt_files(task, previous.as_ref()) {
            Ok(files) => files,
            Err(e) => {
                let failed = Outcome::SpawnFailed {
                    reason: format!("cannot write the attempt's context: {e}"),
                };
                return (Execution::Done(failed), 0);
            }
        };
        let command = TaskCommand {
            // A slot's `setup` runs first, in the same shell, lease and process group.
            run: match &extras.setup {
                Some(setup) => format!("{}{}", setup.prelude, task.run),
                None => task.run.clone(),
            },
            dir: dir.to_path_buf(),
            env: {
                let mut env = task_env(task, dir, &self.config.repo, &files);
                env.extend(extras.env.iter().map(|(k, v)| (k.clone(), v.clone())));
                env
            },
            log_path: task.log_path.clone(),
            max_log_bytes: self.config.max_log_bytes,
        };
        let timeline = FenceTimeline::new(
            task.heartbeat_timeout,
            self.config.heartbeat_interval,
            self.config.kill_grace,
        );
        if timeline.grace_cut(self.config.kill_grace)
            && self.grace_cut_said.insert(task.lease.session_id.clone())
        {
            (self.notify)(Note::GraceCut {
                session: task.session_name.clone(),
                lease: task.heartbeat_timeout,
                grace: timeline.grace,
            });
        }
        let Some(claimed_at) = self.confirm_lease(task, claimed_at, &timeline) else {
            return (Execution::LeaseLost(Outcome::LeaseLost), 0);
        };
        let mut process = match TaskProcess::spawn(&command) {
            Ok(p) => p,
            Err(e) => {
                let failed = Outcome::SpawnFailed {
                    reason: error_chain(&e),
                };
                return (Execution::Done(failed), 0);
            }
        };
        let pgid = process.pgid();
        // A failure to reach the reaper only weakens the kill-on-death guarantee; the task runs.
        if let Some(reaper) = self.reaper.as_deref_mut()
            && let Err(e) = reaper.watch_fenced(pgid, reaper_deadline(claimed_at, &timeline))
        {
            (self.notify)(Note::StoreTrouble(format!("reaper unreachable: {e}")));
        }
        let log = LogShipper::shared(&task.lease, task.log_path.clone());
        self.renewer
            .keep(&task.lease, timeline.renew_every, Some(Arc::clone(&log)));
        let execution = self.supervise(task, &mut process, &timeline, claimed_at);
        // The rest of the log goes to the store before the outcome does, while the lease is
        // still renewed: whoever sees the attempt finished finds all of its output. A task that
        // wrote nothing has no log to look for.
        if process.output_bytes() > 0 {
            self.ship_rest(task, &log);
        }
        self.renewer.release();
        if let Some(why) = process.log_failure() {
            (self.notify)(Note::StoreTrouble(format!(
                "the output of {}/{} attempt {} was not logged: {why}",
                task.session_name, task.lease.task_id, task.lease.attempt
            )));
        }
        if let Some(reaper) = self.reaper.as_deref_mut() {
            let _ = reaper.forget(pgid);
        }
        // The attempt is over: whatever of it left its process group and re-parented here goes
        // too. The reaper is this worker's only other child.
        let keep: BTreeSet<i32> = self
            .reaper
            .as_deref()
            .and_then(|r| i32::try_from(r.pid()).ok())
            .into_iter()
            .collect();
        let strays = kill_strays(&keep);
        if !strays.is_empty() {
            (self.notify)(Note::StraysKilled {
                task: Box::new(task.clone()),
                count: strays.len(),
            });
        }
        (execution, process.output_bytes())
    }

    /// Ships what the store does not have yet of the attempt's log.
    fn ship_rest(&mut self, task: &ClaimedTask, log: &SharedShipper) {
        let mut log = LogShipper::lock(log);
        if let Shipped::Store(e) = log.ship(self.store, None) {
            // The file stays on this machine; only other machines miss the end of it.
            self.trouble(&e);
        }
        if let Some(why) = log.unreadable() {
            (self.notify)(Note::StoreTrouble(format!(
                "the output of {}/{} attempt {} was not stored: {why}",
                task.session_name, task.lease.task_id, task.lease.attempt
            )));
        }
    }

    /// Where the attempt's fence deadlines count from, just before its process starts. The
    /// claim's own moment when it is recent; when it is not — the claim waited out a locked
    /// store, or preparing the worktree took long — the lease is renewed first, so the task is
    /// not stopped the moment it starts. `None`: the lease is already someone else's.
    fn confirm_lease(
        &mut self,
        task: &ClaimedTask,
        claimed_at: Moment,
        timeline: &FenceTimeline,
    ) -> Option<Moment> {
        if Moment::now() < claimed_at.plus(timeline.renew_every) {
            return Some(claimed_at);
        }
        let sent = Moment::now();
        match self.store.heartbeat(&self.id, Some(&task.lease)) {
            Ok(reply) if !reply.lease_held => None,
            Ok(_) => {
                self.store_back();
                Some(sent)
            }
            // The store is away again: the task starts and is stopped as soon as its deadlines
            // say so, as if the store had gone while it ran.
            Err(e) => {
                self.trouble(&e);
                Some(claimed_at)
            }
        }
    }

    /// Lands what waits in `job`'s session, one task after another, until nothing waits (the
    /// store then takes the turn back) or the turn is lost.
    fn land(&mut self, job: &LandingJob) -> Result<(), StoreError> {
        let store = self.store;
        // With a remote, the tip is the store's record, and the remote's branch is brought to it
        // first (a worker may have died between recording a landing and publishing it).
        let mut tip = job
            .integration_commit
            .clone()
            .or_else(|| job.base_commit.clone());
        if let (Some(url), Some(tip)) = (&job.remote, &tip)
            && let Err(e) = crate::landing::publish_integration(&self.config.repo, job, url, tip)
        {
            (self.notify)(Note::LandingTrouble(format!(
                "cannot bring the remote's integration branch of {} to what the store recorded: {}",
                job.session_name,
                error_chain(&e)
            )));
            return Ok(());
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let item = match self.record(|| store.next_landing(job))? {
                NextLanding::Task(item) => *item,
                NextLanding::Done | NextLanding::Lost => return Ok(()),
            };
            let repo = self.config.repo.clone();
            let landed = match (&job.remote, &tip) {
                (Some(url), Some(at)) => crate::landing::land_one_remote(
                    &repo,
                    job,
                    &item,
                    at,
                    url,
                    &mut |candidate: &str, tip: &str| self.verify_merge(job, &item, candidate, tip),
                ),
                _ => crate::landing::land_one(
                    &repo,
                    job,
                    &item,
                    &mut |candidate: &str, tip: &str| self.verify_merge(job, &item, candidate, tip),
                ),
            };
            let result = match landed {
                Ok(result) => result,
                Err(LandError::TurnLost | LandError::Interrupted) => return Ok(()),
                Err(e) => {
                    // The task keeps waiting; the turn lapses and whoever takes it next tries
                    // again (after a lease, so a lasting cause is not retried in a loop).
                    (self.notify)(Note::LandingTrouble(format!(
                        "cannot land {}/{}: {}",
                        job.session_name,
                        item.task_id,
                        error_chain(&e)
                    )));
                    return Ok(());
                }
            };
            let recorded =
                self.record(|| store.record_landing(job, &item.task_id, item.attempt, &result))?;
            match (&result, recorded) {
                (_, LandingRecorded::Stale) => return Ok(()),
                (LandingResult::Landed { commit }, _) => {
                    // Recorded: now, and only now, the remote's branch moves to it.
                    if let Some(url) = &job.remote {
                        tip = Some(commit.clone());
                        if let Err(e) =
                            crate::landing::publish_integration(&self.config.repo, job, url, commit)
                        {
                            (self.notify)(Note::LandingTrouble(format!(
                                "landed {}/{} but cannot publish it on the remote yet: {}",
                                job.session_name,
                                item.task_id,
                                error_chain(&e)
                            )));
                            return Ok(());
                        }
                    }
                    (self.notify)(Note::Landed {
                        session: job.session_name.clone(),
                        task: item.task_id.clone(),
                        commit: commit.clone(),
                    });
                }
                (LandingResult::Conflict { files, .. }, _) => (self.notify)(Note::NotLanded {
                    session: job.session_name.clone(),
                    task: item.task_id.clone(),
                    why: format!("conflict on {}", files.join(", ")),
                    recorded,
                }),
                (LandingResult::VerifyFailed { reason, .. }, _) => {
                    (self.notify)(Note::NotLanded {
                        session: job.session_name.clone(),
                        task: item.task_id.clone(),
                        why: format!("verify failed: {reason}"),
                        recorded,
                    });
                }
            }
        }
    }

    /// Runs the session's verify command on a merge, in this worker's slot, renewing the landing
    /// turn while it runs. `None`: it passed.
    fn verify_merge(
        &mut self,
        job: &LandingJob,
        item: &LandingItem,
        candidate: &str,
        tip: &str,
    ) -> Result<Option<VerifyRefusal>, LandError> {
        let Some(command) = job.verify.clone() else {
            return Ok(None);
        };
        let slot = match &mut self.slot {
            Some(slot) => slot,
            None => self.slot.insert(
                WorktreeSlot::acquire(&self.config.repo)
                    .map_err(|e| LandError::Verify(error_chain(&e)))?,
            ),
        };
        // Attempt 0: not one of the task's attempts. Should this worker die while the command
        // runs, the next user of the slot keeps what it left at the attempt-0 ref.
        let spec = AttemptSpec {
            session_id: job.session_id.as_str(),
            session_name: &job.session_name,
            session_slug: &job.session_slug,
            task_id: item.task_id.as_str(),
            attempt: 0,
            base_commit: candidate,
            // The verify command builds what the task built: the same caches serve it.
            keep: &job.keep,
        };
        let dir = slot
            .checkout(&spec)
            .map_err(|e| LandError::Verify(error_chain(&e)))?;
        let log_path = self
            .config
            .log_dir
            .join(job.session_id.as_str())
            .join("verify")
            .join(format!("{}.{}.log", item.task_id, item.attempt));
        let _ = std::fs::remove_file(&log_path);
        let env: BTreeMap<String, String> = [
            ("BR_SESSION_ID", job.session_id.to_string()),
            ("BR_SESSION_NAME", job.session_name.clone()),
            ("BR_TASK_ID", item.task_id.to_string()),
            ("BR_MERGE_COMMIT", candidate.to_string()),
            ("BR_INTEGRATION_TIP", tip.to_string()),
            ("BR_WORKDIR", dir.to_string_lossy().into_owned()),
            (
                "BR_REPO_ROOT",
                self.config.repo.root.to_string_lossy().into_owned(),
            ),
            ("BR_LOG_PATH", log_path.to_string_lossy().into_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut process = TaskProcess::spawn(&TaskCommand {
            run: command,
            dir,
            env,
            log_path: log_path.clone(),
            max_log_bytes: self.config.max_log_bytes,
        })
        .map_err(|e| LandError::Verify(error_chain(&e)))?;
        let pgid = process.pgid();
        if let Some(reaper) = self.reaper.as_deref_mut() {
            let _ = reaper.watch(pgid);
        }
        let renew_every = (job.heartbeat_timeout / 3).max(Duration::from_millis(50));
        let mut renewed = Instant::now();
        let status = loop {
            if let Some(status) = process.wait_timeout(STOP_POLL) {
                break Ok(status);
            }
            if self.stop.load(Ordering::SeqCst) {
                process.terminate(self.config.kill_grace);
                break Err(LandError::Interrupted);
            }
            if renewed.elapsed() >= renew_every {
                renewed = Instant::now();
                match self.store.renew_landing(job) {
                    Ok(true) => self.store_back(),
                    Ok(false) => {
                        process.terminate(Duration::ZERO);
                        break Err(LandError::TurnLost);
                    }
                    // The branch moves by compare-and-swap: a turn that lapsed meanwhile costs
                    // at most this merge.
                    Err(e) => self.trouble(&e),
                }
            }
        };
        if let Some(reaper) = self.reaper.as_deref_mut() {
            let _ = reaper.forget(pgid);
        }
        if let Some(slot) = &mut self.slot {
            let _ = slot.discard();
        }
        self.seed_due_for(&job.keep);
        let outcome = outcome_of(status?);
        if outcome == Outcome::Succeeded {
            return Ok(None);
        }
        Ok(Some(VerifyRefusal {
            exit_code: outcome.exit_code(),
            reason: outcome.describe(),
            log_tail: crate::context::log_tail(&log_path),
        }))
    }

    fn supervise(
        &mut self,
        task: &ClaimedTask,
        process: &mut TaskProcess,
        timeline: &FenceTimeline,
        claimed_at: Moment,
    ) -> Execution {
        let started = Instant::now();
        let deadline = task.timeout.map(|t| started + t);
        let grace = self.config.kill_grace;
        // When the last renewal the store acknowledged was sent: the lease cannot expire before
        // this plus its length.
        let mut renewed_at = claimed_at;
        loop {
            let term_at = renewed_at.plus(timeline.term_after);
            let now = Instant::now();
            let mut wait = STOP_POLL
                .min(term_at.from_now())
                .max(FENCE_POLL.min(STOP_POLL));
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            if let Some(status) = process.wait_timeout(wait) {
                // Killed while this worker could not act (frozen): the reaper fenced it.
                if Moment::now() >= reaper_deadline(renewed_at, timeline) {
                    return Execution::Fenced {
                        silent_for: Moment::now().since(renewed_at),
                    };
                }
                return Execution::Done(outcome_of(status));
            }
            let reports: Vec<Renewal> = self.renewer.reports().collect();
            for report in reports {
                match report {
                    Renewal::Answered { reply, .. } if !reply.lease_held => {
                        // Someone else owns this task now: stop at once, our result will be
                        // refused anyway.
                        let status = process.terminate(Duration::ZERO);
                        return Execution::LeaseLost(outcome_of(status));
                    }
                    Renewal::Answered { reply, .. } if reply.session_cancelled => {
                        process.terminate(grace);
                        return Execution::Done(Outcome::Cancelled);
                    }
                    Renewal::Answered { sent, .. } => {
                        self.store_back();
                        if sent > renewed_at {
                            renewed_at = sent;
                            if let Some(reaper) = self.reaper.as_deref_mut() {
                                let _ = reaper
                                    .fence(process.pgid(), reaper_deadline(renewed_at, timeline));
                            }
                        }
                    }
                    Renewal::Failed(e) => self.trouble(&e),
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                process.terminate(grace);
                return Execution::Done(Outcome::Interrupted);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                process.terminate(grace);
                return Execution::Done(Outcome::TimedOut);
            }
            if process.over_limit() {
                // No grace: a task flooding its log would only write more while it shuts down.
                process.terminate(Duration::ZERO);
                let limit = self.config.max_log_bytes.unwrap_or_default();
                process.note(&format!(
                    "output passed the log limit ({}); the task was killed",
                    br_core::outcome::human_bytes(limit)
                ));
                return Execution::Done(Outcome::OutputLimit { limit_bytes: limit });
            }
            if Moment::now() >= renewed_at.plus(timeline.term_after) {
                // The store has not acknowledged a renewal for too long: stop the task while
                // the lease is surely still ours, so that it is dead before anyone may start
                // the next attempt. SIGKILL comes at `kill_after` at the latest, whatever the
                // grace was.
                let kill_at = renewed_at.plus(timeline.kill_after);
                process.terminate(kill_at.from_now());
                return Execution::Fenced {
                    silent_for: Moment::now().since(renewed_at),
                };
            }
        }
    }
}

/// Sets `path`'s modification time to now, making the file if needed.
fn touch(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)?
        .set_modified(std::time::SystemTime::now())
}

/// When the reaper SIGKILLs a group whose lease was last renewed (sent) at `renewed_at`: half
/// the margin after the worker itself would have, so a worker that is alive always acts first,
/// and still before the lease can expire.
fn reaper_deadline(renewed_at: Moment, timeline: &FenceTimeline) -> Moment {
    renewed_at.plus(timeline.kill_after + timeline.margin / 2)
}

/// A claim made in the transaction that recorded the previous attempt, with when it was asked
/// for (where its lease's fence deadlines count from).
type Chained = (Result<Claim, StoreError>, Moment);

enum Execution {
    Done(Outcome),
    /// The store said the lease is someone else's now; the process was killed at once.
    LeaseLost(Outcome),
    /// No renewal was acknowledged for too long; the worker stopped the task itself.
    Fenced {
        silent_for: Duration,
    },
}

fn spec<'a>(task: &'a ClaimedTask, base: &'a str) -> AttemptSpec<'a> {
    AttemptSpec {
        session_id: task.lease.session_id.as_str(),
        session_name: &task.session_name,
        session_slug: &task.session_slug,
        task_id: task.lease.task_id.as_str(),
        attempt: task.lease.attempt.0,
        base_commit: base,
        keep: &task.keep,
    }
}

/// The environment a task runs with: its plan `env`, plus `BR_*` variables that tell it where
/// and what it is.
fn task_env(
    task: &ClaimedTask,
    dir: &std::path::Path,
    repo: &Repo,
    files: &crate::context::AttemptFiles,
) -> BTreeMap<String, String> {
    let mut env = task.env.clone();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("BR_SESSION_ID", task.lease.session_id.to_string());
    set("BR_SESSION_NAME", task.session_name.clone());
    set("BR_TASK_ID", task.lease.task_id.to_string());
    set("BR_ATTEMPT", task.lease.attempt.to_string());
    set("BR_WORKER_ID", task.lease.worker_id.to_string());
    set("BR_WORKDIR", dir.to_string_lossy().into_owned());
    set("BR_REPO_ROOT", repo.root.to_string_lossy().into_owned());
    set("BR_LOG_PATH", task.log_path.to_string_lossy().into_owned());
    set(
        "BR_CONTEXT_FILE",
        files.context.to_string_lossy().into_owned(),
    );
    if let Some(prompt) = &files.prompt {
        set("BR_PROMPT_FILE", prompt.to_string_lossy().into_owned());
    }
    set("BR_USAGE_FILE", files.usage.to_string_lossy().into_owned());
    if let Some(start) = &task.base_commit {
        set("BR_START_COMMIT", start.clone());
    }
    env
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
