//! Task processes: `sh -c` in a process group of its own, its output read from one pipe into the
//! attempt's log file, and a guard that kills the whole group on every exit path. Nothing of a
//! task outlives its attempt.
//!
//! Output goes through a pipe, not straight into the file, so that the log is made only when
//! there is something to log (creating a file per attempt costs more than a short task), the
//! output limit is exact, and the worker sees every byte as it comes (to send it on, one day). The
//! pipe carries stdout and stderr both, so they interleave exactly as the task wrote them. While
//! the worker waits for the task, it reads the pipe: a task is never blocked on a full pipe for
//! longer than the worker's own loop takes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{PipeReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use br_core::Outcome;
use br_git::git::GIT_LOCATION_VARS;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fd::{AsFd, OwnedFd};
use rustix::process::{PidfdFlags, pidfd_open};

/// Variables br itself may be given that carry credentials: a task never inherits them (the
/// store's URL and password, the web dashboard's token).
pub const SECRET_VARS: &[&str] = &["BR_STORE", "PGPASSWORD", "BR_SERVE_TOKEN"];

/// How much is read from the pipe at a time: on the stack, so a short task costs no allocation.
const CHUNK: usize = 16 * 1024;

/// After the leader exited, how long what is still in the pipe may take to drain (a process that
/// left the group and keeps writing must not keep the worker here).
const DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// With the thread fallback (no pidfd), how often the pipe is looked at while waiting.
const FALLBACK_SLICE: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct TaskCommand {
    pub run: String,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Created when the task first writes something.
    pub log_path: PathBuf,
    /// Output beyond this many bytes is not logged; [`TaskProcess::over_limit`] says so.
    pub max_log_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start `sh` in {}", dir.display())]
    Spawn {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running task: the leader `sh` and its process group (same id).
#[derive(Debug)]
pub struct TaskProcess {
    child: Child,
    pgid: Pid,
    /// How we learn that the leader exited, without reaping it (a zombie leader keeps its
    /// process group id from being reused while we still signal the group).
    exit: ExitWatch,
    /// The read end of the task's stdout and stderr; `None` once it reached end of file.
    output: Option<PipeReader>,
    log: Log,
    reaped: Option<ExitStatus>,
}

/// The attempt's log file, made on the first byte.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    limit: Option<u64>,
    over_limit: bool,
    /// Why writing the log failed, once it did (the task goes on; its output is lost).
    failed: Option<String>,
}

impl Log {
    fn write(&mut self, mut bytes: &[u8]) {
        if let Some(limit) = self.limit {
            let room = usize::try_from(limit.saturating_sub(self.written)).unwrap_or(usize::MAX);
            if bytes.len() > room {
                self.over_limit = true;
                bytes = &bytes[..room];
            }
        }
        if bytes.is_empty() || self.failed.is_some() {
            return;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => match open_log(&self.path) {
                Ok(file) => self.file.insert(file),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return;
                }
            },
        };
        match file.write_all(bytes) {
            Ok(()) => self.written += bytes.len() as u64,
            Err(e) => self.failed = Some(format!("cannot write {}: {e}", self.path.display())),
        }
    }
}

/// A pidfd becomes readable when its process exits: one `poll` waits for that and for output,
/// no thread needed. Kernels before 5.3 have none; there a thread waits with `WNOWAIT` instead.
#[derive(Debug)]
enum ExitWatch {
    Pidfd(OwnedFd),
    Thread(Receiver<()>),
}

impl ExitWatch {
    fn start(child: &Child, pid: Pid) -> std::io::Result<ExitWatch> {
        if let Ok(fd) = pidfd_open(rustix::process::Pid::from_child(child), PidfdFlags::empty()) {
            return Ok(ExitWatch::Pidfd(fd));
        }
        let (tx, exited) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                // WNOWAIT: learn that the leader exited without reaping it.
                while let Err(Errno::EINTR) =
                    waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
                {
                }
                let _ = tx.send(());
            })?;
        Ok(ExitWatch::Thread(exited))
    }
}

/// What one `poll` saw.
struct Ready {
    exited: bool,
    output: bool,
}

/// Waits up to `timeout` for the pidfd (if any) or the pipe (if any) to be ready.
fn wait_ready(pidfd: Option<&OwnedFd>, pipe: Option<&PipeReader>, timeout: Duration) -> Ready {
    let spec = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    let mut fds = Vec::with_capacity(2);
    if let Some(fd) = pidfd {
        fds.push(PollFd::new(fd, PollFlags::IN));
    }
    if let Some(pipe) = pipe {
        fds.push(PollFd::from_borrowed_fd(pipe.as_fd(), PollFlags::IN));
    }
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return Ready {
            exited: false,
            output: false,
        };
    }
    loop {
        match poll(&mut fds, Some(&spec)) {
            Err(rustix::io::Errno::INTR) => continue,
            // Not expected of a pidfd or a pipe: say both are ready, so the caller reads (EOF or
            // an error ends the pipe) and reaps (blocking only if the kernel lied).
            Err(_) => {
                return Ready {
                    exited: pidfd.is_some(),
                    output: pipe.is_some(),
                };
            }
            Ok(_) => {}
        }
        let ready = |i: usize| fds.get(i).is_some_and(|f| !f.revents().is_empty());
        let (exit_at, pipe_at) = (0, usize::from(pidfd.is_some()));
        return Ready {
            exited: pidfd.is_some() && ready(exit_at),
            output: pipe.is_some() && ready(pipe_at),
        };
    }
}

impl TaskProcess {
    pub fn spawn(cmd: &TaskCommand) -> Result<TaskProcess, SpawnError> {
        let spawn_error = |source| SpawnError::Spawn {
            dir: cmd.dir.clone(),
            source,
        };
        let (output, writer) = std::io::pipe().map_err(spawn_error)?;
        let writer_err = writer.try_clone().map_err(spawn_error)?;
        let mut command = Command::new(shell());
        command
            .arg("-c")
            .arg(&cmd.run)
            .current_dir(&cmd.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer_err))
            .process_group(0);
        for var in GIT_LOCATION_VARS.iter().chain(SECRET_VARS) {
            command.env_remove(var);
        }
        // The plan's own `env` comes last: a plan may give a task one of these on purpose.
        command.envs(&cmd.env);
        let child = command.spawn().map_err(spawn_error)?;
        // The command held our copies of the write end; they closed with it, so the pipe ends
        // when every process of the task has closed its own.
        drop(command);
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let exit = ExitWatch::start(&child, pid).map_err(spawn_error)?;
        Ok(TaskProcess {
            child,
            pgid: pid,
            exit,
            output: Some(output),
            log: Log {
                path: cmd.log_path.clone(),
                file: None,
                written: 0,
                limit: cmd.max_log_bytes,
                over_limit: false,
                failed: None,
            },
            reaped: None,
        })
    }

    /// The process group id (also the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Bytes of output logged so far.
    pub fn output_bytes(&self) -> u64 {
        self.log.written
    }

    /// Whether the task wrote more than the output limit (what came after it was not logged).
    pub fn over_limit(&self) -> bool {
        self.log.over_limit
    }

    /// Why the log could not be written, if it could not.
    pub fn log_failure(&self) -> Option<&str> {
        self.log.failed.as_deref()
    }

    /// Appends a line of br's own to the log (past the limit: it says why the output ends).
    pub fn note(&mut self, line: &str) {
        let limit = self.log.limit.take();
        self.log.write(format!("\n[br: {line}]\n").as_bytes());
        self.log.limit = limit;
    }

    /// Reads what the pipe holds now (one chunk), into the log.
    fn read_output(&mut self) {
        let Some(pipe) = &mut self.output else { return };
        let mut buf = [0u8; CHUNK];
        match pipe.read(&mut buf) {
            Ok(0) => self.output = None,
            Ok(n) => self.log.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.output = None,
        }
    }

    /// Waits up to `timeout` for the leader to exit, logging output meanwhile. When it has
    /// exited, kills whatever is left of its group (background jobs the task started), reaps it,
    /// logs what is left in the pipe and returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (ready, exited) = match &self.exit {
                ExitWatch::Pidfd(fd) => {
                    let ready = wait_ready(Some(fd), self.output.as_ref(), left);
                    (ready.output, ready.exited)
                }
                ExitWatch::Thread(exited) => {
                    let ready = wait_ready(None, self.output.as_ref(), left.min(FALLBACK_SLICE));
                    let done = !matches!(
                        exited.recv_timeout(Duration::ZERO),
                        Err(RecvTimeoutError::Timeout)
                    );
                    (ready.output, done)
                }
            };
            if ready {
                self.read_output();
            }
            if exited {
                return Some(self.reap());
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    fn reap(&mut self) -> ExitStatus {
        // The leader is a zombie here, so the group id cannot have been reused yet.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let status = loop {
            match self.child.wait() {
                Ok(status) => break status,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Only possible if someone else reaped it; report it as killed.
                Err(_) => break ExitStatus::from_raw(Signal::SIGKILL as i32),
            }
        };
        self.reaped = Some(status);
        self.drain();
        status
    }

    /// Logs what the group wrote before it died. A process that left the group may hold the
    /// pipe open and go on writing: it gets `DRAIN_LIMIT`, then it is read no more.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.output.is_some() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_ready(None, self.output.as_ref(), left).output {
                break;
            }
            self.read_output();
        }
        self.output = None;
    }

    /// SIGTERM to the group, up to `grace` for it to exit, then SIGKILL. Always reaps.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let _ = killpg(self.pgid, Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return status;
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
        self.wait_timeout(Duration::from_secs(3600))
            .unwrap_or_else(|| self.reap())
    }
}

impl Drop for TaskProcess {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            self.reap();
        }
    }
}

/// The log file, and the directories above it, readable by the user only: a task's output can
/// hold what it was given in secret.
fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Creates `dir` and any missing parent as the user's alone (0700); existing ones are left as
/// they are.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) a log file only the user can read.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// The shell tasks run in: `/bin/sh` where it exists (as POSIX says it does), found without a
/// search of `PATH` (a failed `execve` per directory, for every attempt).
fn shell() -> &'static str {
    static SHELL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    SHELL.get_or_init(|| {
        if Path::new("/bin/sh").exists() {
            "/bin/sh"
        } else {
            "sh"
        }
    })
}

/// How a finished command's exit status reads as an outcome.
pub fn outcome_of(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Succeeded,
        (Some(code), _) => Outcome::Failed { exit_code: code },
        (None, Some(signal)) => Outcome::Signalled { signal },
        (None, None) => Outcome::Failed { exit_code: -1 },
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}

/// Polls `done` until it is true or `limit` passes; returns whether it became true.
pub(crate) fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(dir: &Path, run: &str) -> TaskCommand {
        TaskCommand {
            run: run.to_string(),
            dir: dir.to_path_buf(),
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            log_path: dir.join("logs").join("t.1.log"),
            max_log_bytes: None,
        }
    }

    #[test]
    fn output_and_exit_code_go_to_the_log_and_outcome() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = TaskProcess::spawn(&command(
            dir.path(),
            "echo $GREETING; echo oops >&2; pwd; exit 3",
        ))
        .expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert_eq!(outcome_of(status), Outcome::Failed { exit_code: 3 });
        let log = std::fs::read_to_string(dir.path().join("logs/t.1.log")).expect("log");
        let canonical = dir.path().canonicalize().expect("canonical");
        assert_eq!(log, format!("hello\noops\n{}\n", canonical.display()));
    }

    #[test]
    fn background_children_die_with_the_task() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p =
            TaskProcess::spawn(&command(dir.path(), "sleep 300 & echo started")).expect("spawn");
        let pgid = p.pgid();
        let status = p.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert_eq!(outcome_of(status), Outcome::Succeeded);
        assert!(
            poll_until(Duration::from_secs(5), || !group_alive(pgid)),
            "the background sleep was killed with its group"
        );
    }

    #[test]
    fn terminate_escalates_to_kill() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The shell ignores TERM, so only KILL ends it.
        let mut p = TaskProcess::spawn(&command(
            dir.path(),
            "trap '' TERM; while :; do sleep 0.05; done",
        ))
        .expect("spawn");
        let pgid = p.pgid();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let status = p.terminate(Duration::from_millis(200));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(outcome_of(status), Outcome::Signalled { signal: 9 });
        assert!(poll_until(Duration::from_secs(5), || !group_alive(pgid)));
    }

    #[test]
    fn dropping_the_guard_kills_the_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = TaskProcess::spawn(&command(dir.path(), "sleep 300")).expect("spawn");
        let pgid = p.pgid();
        drop(p);
        assert!(poll_until(Duration::from_secs(5), || !group_alive(pgid)));
    }

    #[test]
    fn missing_command_is_exit_127() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p =
            TaskProcess::spawn(&command(dir.path(), "definitely-not-a-command-br")).expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert_eq!(outcome_of(status), Outcome::Failed { exit_code: 127 });
    }

    #[test]
    fn unusable_directory_is_a_spawn_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = command(dir.path(), "true");
        cmd.dir = dir.path().join("missing");
        let err = TaskProcess::spawn(&cmd).expect_err("no such dir");
        assert!(err.to_string().contains("cannot start `sh`"), "{err}");
    }

    #[test]
    fn a_task_that_writes_nothing_makes_no_log_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = TaskProcess::spawn(&command(dir.path(), "true")).expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert_eq!(outcome_of(status), Outcome::Succeeded);
        assert_eq!(p.output_bytes(), 0);
        assert!(!dir.path().join("logs/t.1.log").exists());
    }

    #[test]
    fn output_past_the_limit_is_cut_exactly_and_said() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = command(dir.path(), "printf 0123456789; printf abcdef >&2");
        cmd.max_log_bytes = Some(12);
        let mut p = TaskProcess::spawn(&cmd).expect("spawn");
        p.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert!(p.over_limit());
        assert_eq!(p.output_bytes(), 12);
        p.note("cut");
        let log = std::fs::read_to_string(dir.path().join("logs/t.1.log")).expect("log");
        assert_eq!(log, "0123456789ab\n[br: cut]\n");
    }

    #[test]
    fn a_task_blocked_on_a_full_pipe_goes_on_while_the_worker_waits() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Far more than a pipe holds (64 KiB): it only finishes if the output is read as it
        // comes.
        let mut p =
            TaskProcess::spawn(&command(dir.path(), "head -c 2000000 /dev/zero")).expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(20)).expect("exits");
        assert_eq!(outcome_of(status), Outcome::Succeeded);
        assert_eq!(p.output_bytes(), 2_000_000);
    }
}
