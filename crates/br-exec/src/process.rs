//! Task processes: `sh -c` in a process group of its own, output streamed to a log file, and a
//! guard that kills the whole group on every exit path. Nothing of a task outlives its attempt.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use br_core::Outcome;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use br_git::git::GIT_LOCATION_VARS;

/// Variables br itself may be given that carry credentials: a task never inherits them (the
/// store's URL and password, the web dashboard's token).
pub const SECRET_VARS: &[&str] = &["BR_STORE", "PGPASSWORD", "BR_SERVE_TOKEN"];

/// What to run.
#[derive(Debug, Clone)]
pub struct TaskCommand {
    pub run: String,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub log_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the log file {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// Signalled once the leader has exited (it stays a zombie until reaped, which keeps its
    /// process group id from being reused while we still signal the group).
    exited: Receiver<()>,
    reaped: Option<ExitStatus>,
}

impl TaskProcess {
    pub fn spawn(cmd: &TaskCommand) -> Result<TaskProcess, SpawnError> {
        let log = open_log(&cmd.log_path)?;
        let log_err = log.try_clone().map_err(|source| SpawnError::Log {
            path: cmd.log_path.clone(),
            source,
        })?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&cmd.run)
            .current_dir(&cmd.dir)
            .stdin(Stdio::null())
            // The child writes straight into the log: nothing is buffered in br, and stdout and
            // stderr interleave exactly as the task wrote them.
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        for var in GIT_LOCATION_VARS.iter().chain(SECRET_VARS) {
            command.env_remove(var);
        }
        // The plan's own `env` comes last: a plan may give a task one of these on purpose.
        command.envs(&cmd.env);
        let child = command.spawn().map_err(|source| SpawnError::Spawn {
            dir: cmd.dir.clone(),
            source,
        })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
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
            })
            .map_err(|source| SpawnError::Spawn {
                dir: cmd.dir.clone(),
                source,
            })?;
        Ok(TaskProcess {
            child,
            pgid: pid,
            exited,
            reaped: None,
        })
    }

    /// The process group id (also the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Waits up to `timeout` for the leader to exit. When it has, kills whatever is left of its
    /// group (background jobs the task started), reaps it and returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return Some(status);
        }
        match self.exited.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => Some(self.reap()),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    fn reap(&mut self) -> ExitStatus {
        // The leader is a zombie here, so the group id cannot have been reused yet.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let status = loop {
            match self.child.wait() {
                Ok(status) => break status,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Only possible if someone else reaped it; report it as killed.
                Err(_) => break ExitStatus::from_raw(Signal::SIGKILL as i32),
            }
        };
        self.reaped = Some(status);
        status
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

fn open_log(path: &Path) -> Result<File, SpawnError> {
    let err = |source| SpawnError::Log {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)
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
}
