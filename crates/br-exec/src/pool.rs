//! The local worker pool of `br run`: `br worker` processes for one session, kept at the session's
//! `workers_wanted` (which `br scale` changes), replaced when one dies, and stopped cleanly.
//!
//! Each worker gets its own process group (a Ctrl-C at the terminal reaches only `br run`, which
//! then stops the workers in order) and a stdin pipe that `br run` holds: if `br run` is killed,
//! the pipe closes and the workers stop their tasks and leave on their own.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use br_core::SessionId;
use br_store::{Store, StoreError, WorkerFilter};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{create_private_dir, create_private_file};

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// The br executable.
    pub program: PathBuf,
    /// Arguments that make it a worker of the session (`… worker --session S --watch-stdin`).
    pub args: Vec<OsString>,
    /// Each worker's stderr goes to `<log_dir>/worker-<n>.log`.
    pub log_dir: PathBuf,
    /// Written to each worker's stdin as its first line (the store URL: a secret that must not
    /// appear in arguments or environments other processes can read).
    pub stdin_line: Option<String>,
}

#[derive(Debug)]
struct PoolChild {
    child: Child,
    /// Held open for the child's lifetime: closing it tells the worker to stop.
    stdin: Option<ChildStdin>,
    index: usize,
    log: PathBuf,
    spawned_at: Instant,
    leaving: bool,
}

/// A worker process that has exited.
#[derive(Debug, Clone)]
pub struct ExitedWorker {
    pub index: usize,
    pub pid: u32,
    pub status: ExitStatus,
    pub log: PathBuf,
    /// It was asked to leave (scale down, or the pool is stopping).
    pub asked: bool,
    pub lived: Duration,
}

/// The last error a worker wrote to its log (`error: …` and the `caused by: …` lines after it),
/// on one line: why it exited, for the message of whoever started it.
pub fn last_error(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 8 * 1024;
    let mut file = File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().rposition(|l| l.starts_with("error: "))?;
    let mut why = lines[start]["error: ".len()..].to_string();
    for line in &lines[start + 1..] {
        match line.strip_prefix("caused by: ") {
            Some(cause) => {
                why.push_str(": ");
                why.push_str(cause);
            }
            None => break,
        }
    }
    Some(why)
}

/// What one supervision round did.
#[derive(Debug, Clone)]
pub enum PoolEvent {
    Spawned {
        index: usize,
        pid: u32,
    },
    Exited(ExitedWorker),
    /// Scale down: these workers were asked to leave after their current task.
    AskedToLeave {
        pids: Vec<u32>,
    },
    /// Workers kept dying right after they started; the pool stopped replacing them.
    GaveUp {
        log: PathBuf,
    },
}

/// Worker processes serving one session.
#[derive(Debug)]
pub struct LocalPool {
    spec: PoolSpec,
    children: Vec<PoolChild>,
    next_index: usize,
    /// Workers that died soon after starting, in a row: a sign that respawning cannot help.
    quick_failures: u32,
    gave_up: bool,
}

/// A worker that dies within this long of starting, with a failure status, counts as a quick
/// failure; after `MAX_QUICK_FAILURES` of them in a row the pool stops respawning.
const QUICK: Duration = Duration::from_secs(3);
const MAX_QUICK_FAILURES: u32 = 5;

impl LocalPool {
    pub fn new(spec: PoolSpec) -> LocalPool {
        LocalPool {
            spec,
            children: Vec::new(),
            next_index: 1,
            quick_failures: 0,
            gave_up: false,
        }
    }

    pub fn spawn_one(&mut self) -> std::io::Result<(usize, u32)> {
        create_private_dir(&self.spec.log_dir)?;
        let index = self.next_index;
        self.next_index += 1;
        let log = self.spec.log_dir.join(format!("worker-{index}.log"));
        let stderr = create_private_file(&log)?;
        let mut child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .spawn()?;
        let mut stdin = child.stdin.take();
        if let (Some(line), Some(pipe)) = (&self.spec.stdin_line, stdin.as_mut()) {
            use std::io::Write as _;
            // A worker that died before reading it is noticed as an exited worker.
            let _ = pipe
                .write_all(line.as_bytes())
                .and_then(|()| pipe.write_all(b"\n"))
                .and_then(|()| pipe.flush());
        }
        let pid = child.id();
        self.children.push(PoolChild {
            child,
            stdin,
            index,
            log,
            spawned_at: Instant::now(),
            leaving: false,
        });
        Ok((index, pid))
    }

    /// Collects workers that have exited.
    pub fn reap(&mut self) -> Vec<ExitedWorker> {
        let mut exited = Vec::new();
        self.children.retain_mut(|c| match c.child.try_wait() {
            Ok(Some(status)) => {
                exited.push(ExitedWorker {
                    index: c.index,
                    pid: c.child.id(),
                    status,
                    log: c.log.clone(),
                    asked: c.leaving,
                    lived: c.spawned_at.elapsed(),
                });
                false
            }
            _ => true,
        });
        for e in &exited {
            if !e.asked && !e.status.success() && e.lived < QUICK {
                self.quick_failures += 1;
            } else if e.status.success() {
                self.quick_failures = 0;
            }
        }
        exited
    }

    /// Live workers not asked to leave.
    pub fn active(&self) -> usize {
        self.children.iter().filter(|c| !c.leaving).count()
    }

    /// Live workers.
    pub fn live(&self) -> usize {
        self.children.len()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.child.id()).collect()
    }

    fn mark_leaving(&mut self, pid: u32) -> bool {
        match self
            .children
            .iter_mut()
            .find(|c| c.child.id() == pid && !c.leaving)
        {
            Some(c) => {
                c.leaving = true;
                true
            }
            None => false,
        }
    }

    /// One supervision round for `session`: reap exited workers, then (while the session is not
    /// over) start or retire workers to match its `workers_wanted`.
    pub fn supervise(
        &mut self,
        store: &dyn Store,
        session: &SessionId,
    ) -> Result<Vec<PoolEvent>, StoreError> {
        let mut events: Vec<PoolEvent> = self.reap().into_iter().map(PoolEvent::Exited).collect();
        let s = store.session(session)?;
        if s.status.is_terminal() || self.gave_up {
            return Ok(events);
        }
        if self.quick_failures >= MAX_QUICK_FAILURES {
            self.gave_up = true;
            let log = self
                .spec
                .log_dir
                .join(format!("worker-{}.log", self.next_index - 1));
            events.push(PoolEvent::GaveUp { log });
            return Ok(events);
        }
        let wanted = s.workers_wanted as usize;
        let active = self.active();
        if active < wanted {
            for _ in active..wanted {
                match self.spawn_one() {
                    Ok((index, pid)) => events.push(PoolEvent::Spawned { index, pid }),
                    Err(e) => {
                        return Err(StoreError::Backend {
                            context: "start a worker process",
                            source: Box::new(e),
                        });
                    }
                }
            }
        } else if active > wanted {
            let excess = u32::try_from(active - wanted).unwrap_or(u32::MAX);
            let chosen = store.request_worker_stops(session, excess)?;
            if !chosen.is_empty() {
                let workers = store.workers(&WorkerFilter {
                    session: Some(session.clone()),
                    ..Default::default()
                })?;
                let pids: Vec<u32> = workers
                    .iter()
                    .filter(|w| chosen.contains(&w.id))
                    .map(|w| w.pid)
                    .filter(|pid| self.mark_leaving(*pid))
                    .collect();
                events.push(PoolEvent::AskedToLeave { pids });
            }
        }
        Ok(events)
    }

    /// Asks every worker to stop now: each interrupts its task (TERM, grace, KILL), records it
    /// as interrupted so it reruns later without losing a retry, and exits.
    pub fn stop_all(&mut self) {
        for c in &mut self.children {
            c.leaving = true;
            if let Ok(pid) = i32::try_from(c.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }

    /// SIGKILL to every worker (their reapers still end the tasks' process groups).
    pub fn kill_all(&mut self) {
        for c in &mut self.children {
            c.leaving = true;
            let _ = c.child.kill();
        }
    }

    /// Waits up to `limit` for every worker to exit; returns whether they all did. Exited
    /// workers are reaped, and reported by the next `reap` or `supervise`.
    pub fn wait_all(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self
                .children
                .iter_mut()
                .all(|c| matches!(c.child.try_wait(), Ok(Some(_))))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        // Closing the pipes asks the workers to stop; then make sure none is left behind.
        for c in &mut self.children {
            drop(c.stdin.take());
        }
        if !self.wait_all(Duration::from_secs(15)) {
            self.kill_all();
            self.wait_all(Duration::from_secs(5));
        }
    }
}
