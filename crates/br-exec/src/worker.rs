//! The worker loop: register, claim one task at a time, run it, heartbeat while it runs, report
//! its outcome under its lease, and leave cleanly. Any worker also requeues expired leases on each
//! heartbeat, so there is no coordinator to lose.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use br_core::plan::Isolation;
use br_core::{Outcome, SessionId, WorkerId};
use br_store::{Claim, ClaimRequest, ClaimedTask, Finish, NewWorker, Store, StoreError};

use crate::git::Repo;
use crate::process::{TaskCommand, TaskProcess, outcome_of};
use crate::reaper::Reaper;

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The repository tasks run in (its root, for `shared` isolation).
    pub repo: Repo,
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
    /// The command that starts the reaper (normally `br __reaper`); none runs without it.
    pub reaper: Option<Vec<OsString>>,
    pub host: String,
}

/// Why the worker loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A signal or the parent asked it to stop.
    Stopped,
    /// `br scale` (or `request_worker_stops`) asked it to leave.
    AskedToLeave,
    /// Its session ended.
    SessionEnded,
    /// Nothing was claimable and `exit_when_idle` was set.
    Idle,
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
    StoreTrouble(String),
}

/// Shared stop request: set by signal handlers or the parent-watch thread.
pub type StopFlag = Arc<AtomicBool>;

/// Runs a worker until it is told to stop, its session ends, or (with `exit_when_idle`) nothing
/// is left to claim. Records the worker as stopped on the way out, also after an error.
pub fn run_worker(
    store: &dyn Store,
    config: &WorkerConfig,
    stop: &StopFlag,
    notify: &mut dyn FnMut(Note),
) -> Result<Exit, StoreError> {
    let id = store.register_worker(&NewWorker {
        host: config.host.clone(),
        pid: std::process::id(),
        session: config.session.clone(),
        heartbeat_timeout: config.heartbeat_timeout,
    })?;
    notify(Note::Registered(id.clone()));
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
    let mut worker = Worker {
        store,
        config,
        id: id.clone(),
        stop,
        reaper: reaper.as_mut(),
        notify,
    };
    let result = worker.serve();
    // Leave a clean record even if serving failed; a failure here is secondary.
    let stopped = with_retries(|| store.stop_worker(&id));
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
}

/// The longest an idle worker sleeps between looks at the store; it also wakes on any change.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often a running task's worker checks its stop flag between heartbeats.
const STOP_POLL: Duration = Duration::from_millis(50);

impl Worker<'_> {
    fn serve(&mut self) -> Result<Exit, StoreError> {
        let interval = self
            .config
            .heartbeat_interval
            .min(self.config.heartbeat_timeout / 3)
            .max(Duration::from_millis(10));
        let mut next_beat = Instant::now() + interval;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(Exit::Stopped);
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + interval;
                match self.store.heartbeat(&self.id, None) {
                    Ok(hb) if hb.stop_requested => return Ok(Exit::AskedToLeave),
                    Ok(_) => {}
                    Err(e) if e.is_transient() => self.trouble(&e),
                    Err(e) => return Err(e),
                }
                self.requeue_expired();
            }
            let request = ClaimRequest {
                worker: &self.id,
                session: self.config.session.as_ref(),
                log_dir: &self.config.log_dir,
            };
            match self.store.claim_next_task(&request) {
                Ok(Claim::Task(task)) => {
                    self.run_attempt(*task)?;
                    next_beat = Instant::now() + interval;
                }
                Ok(Claim::Stop) => return Ok(Exit::AskedToLeave),
                Ok(Claim::Nothing) => {
                    if let Some(session) = &self.config.session
                        && self.store.session(session)?.status.is_terminal()
                    {
                        return Ok(Exit::SessionEnded);
                    }
                    if self.config.exit_when_idle {
                        return Ok(Exit::Idle);
                    }
                    let until_beat = next_beat.saturating_duration_since(Instant::now());
                    self.store.wait_for_change(until_beat.min(IDLE_POLL))?;
                }
                Err(e) if e.is_transient() => {
                    self.trouble(&e);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn trouble(&mut self, e: &StoreError) {
        (self.notify)(Note::StoreTrouble(e.to_string()));
    }

    fn requeue_expired(&mut self) {
        if let Err(e) = self.store.requeue_expired_leases() {
            self.trouble(&e);
        }
    }

    fn run_attempt(&mut self, task: ClaimedTask) -> Result<(), StoreError> {
        let lease = task.lease.clone();
        (self.notify)(Note::Started(Box::new(task.clone())));
        let outcome = self.execute(&task);
        let lease_lost = matches!(outcome, Execution::LeaseLost(_));
        let outcome = match outcome {
            Execution::Done(o) | Execution::LeaseLost(o) => o,
        };
        if lease_lost {
            (self.notify)(Note::LeaseLost(Box::new(task.clone())));
        }
        let finish = with_retries(|| self.store.finish_attempt(&lease, &outcome))?;
        (self.notify)(Note::Finished {
            task: Box::new(task),
            outcome,
            recorded: matches!(finish, Finish::Recorded(_)),
        });
        Ok(())
    }

    /// Runs the attempt's process to its end, heartbeating, and decides its outcome.
    fn execute(&mut self, task: &ClaimedTask) -> Execution {
        let dir = match task.isolation {
            Isolation::Shared => self.config.repo.root.clone(),
            Isolation::Worktree => {
                return Execution::Done(Outcome::SpawnFailed {
                    reason: "this br cannot run worktree-isolated tasks yet".into(),
                });
            }
        };
        let command = TaskCommand {
            run: task.run.clone(),
            dir: dir.clone(),
            env: task_env(task, &dir, &self.config.repo),
            log_path: task.log_path.clone(),
        };
        let mut process = match TaskProcess::spawn(&command) {
            Ok(p) => p,
            Err(e) => {
                return Execution::Done(Outcome::SpawnFailed {
                    reason: error_chain(&e),
                });
            }
        };
        let pgid = process.pgid();
        // A failure to reach the reaper only weakens the kill-on-death guarantee; the task runs.
        if let Some(reaper) = self.reaper.as_deref_mut()
            && let Err(e) = reaper.watch(pgid)
        {
            (self.notify)(Note::StoreTrouble(format!("reaper unreachable: {e}")));
        }
        let execution = self.supervise(task, &mut process);
        if let Some(reaper) = self.reaper.as_deref_mut() {
            let _ = reaper.forget(pgid);
        }
        execution
    }

    fn supervise(&mut self, task: &ClaimedTask, process: &mut TaskProcess) -> Execution {
        let started = Instant::now();
        let deadline = task.timeout.map(|t| started + t);
        let interval = self
            .config
            .heartbeat_interval
            .min(task.lease_ttl / 3)
            .max(Duration::from_millis(10));
        let mut next_beat = started + interval;
        let grace = self.config.kill_grace;
        loop {
            let now = Instant::now();
            let mut wait = next_beat.saturating_duration_since(now).min(STOP_POLL);
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            if let Some(status) = process.wait_timeout(wait) {
                return Execution::Done(outcome_of(status));
            }
            if self.stop.load(Ordering::SeqCst) {
                process.terminate(grace);
                return Execution::Done(Outcome::Interrupted);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                process.terminate(grace);
                return Execution::Done(Outcome::TimedOut);
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + interval;
                match self.store.heartbeat(&self.id, Some(&task.lease)) {
                    Ok(hb) if !hb.lease_held => {
                        // Someone else owns this task now: stop at once, our result will be
                        // refused anyway.
                        let status = process.terminate(Duration::ZERO);
                        return Execution::LeaseLost(outcome_of(status));
                    }
                    Ok(hb) if hb.session_cancelled => {
                        process.terminate(grace);
                        return Execution::Done(Outcome::Cancelled);
                    }
                    Ok(_) => {}
                    // The lease is still ours until it expires; keep running and try again.
                    Err(e) => self.trouble(&e),
                }
                self.requeue_expired();
            }
        }
    }
}

enum Execution {
    Done(Outcome),
    LeaseLost(Outcome),
}

/// The environment a task runs with: its plan `env`, plus `BR_*` variables that tell it where
/// and what it is.
fn task_env(task: &ClaimedTask, dir: &std::path::Path, repo: &Repo) -> BTreeMap<String, String> {
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

/// Retries a store write while the store is busy, for up to about a minute: an outcome must not
/// be dropped because another process held the write lock for a moment.
fn with_retries<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f() {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
