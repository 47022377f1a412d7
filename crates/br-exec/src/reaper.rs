//! The reaper: a tiny process each worker starts beside itself. The worker tells it, over a pipe,
//! which task process groups are alive. When the pipe closes without a goodbye — the worker died,
//! even by SIGKILL — the reaper terminates those groups (TERM, grace, KILL) and exits. This is how
//! "when a worker dies, its task's process group dies too" holds with no `unsafe` and no
//! reliance on the task's cooperation.
//!
//! Protocol, one line each: `+PGID` (watch), `-PGID` (forget). End of input means the worker is
//! gone; a worker that exits cleanly forgets every group first, so the reaper then kills nothing.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::process::{group_alive, poll_until};

/// The worker's end of the pipe.
#[derive(Debug)]
pub struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper from `argv` (normally `br __reaper`), in its own process group so a
    /// Ctrl-C meant for the worker does not reach it.
    pub fn spawn(argv: &[OsString]) -> std::io::Result<Reaper> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty reaper command"))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Reaper { child, stdin })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        match &mut self.stdin {
            Some(stdin) => {
                stdin.write_all(line.as_bytes())?;
                stdin.flush()
            }
            None => Err(std::io::Error::other("reaper already closed")),
        }
    }

    /// From now on, the reaper kills group `pgid` if this process dies.
    pub fn watch(&mut self, pgid: i32) -> std::io::Result<()> {
        self.send(&format!("+{pgid}\n"))
    }

    /// Group `pgid` is gone (or handled); the reaper forgets it.
    pub fn forget(&mut self, pgid: i32) -> std::io::Result<()> {
        self.send(&format!("-{pgid}\n"))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the pipe lets the reaper exit; wait so it does not linger as a zombie.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The reaper's main loop: reads the protocol from `input` until it ends, then terminates every
/// group still watched. Returns the groups it had to terminate.
pub fn run_reaper(input: impl BufRead, grace: Duration) -> Vec<i32> {
    let mut live = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.trim().parse::<i32>() else {
            continue;
        };
        // Never signal "every process" (0, -1) or something that is not a group we were given.
        if pgid <= 1 {
            continue;
        }
        match op {
            "+" => {
                live.insert(pgid);
            }
            "-" => {
                live.remove(&pgid);
            }
            _ => {}
        }
    }
    let orphans: Vec<i32> = live.into_iter().filter(|g| group_alive(*g)).collect();
    for g in &orphans {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGTERM);
    }
    poll_until(grace, || orphans.iter().all(|g| !group_alive(*g)));
    for g in &orphans {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    orphans
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::os::unix::process::CommandExt;

    use super::*;

    fn sleeper_group() -> (Child, i32) {
        let child = Command::new("sh")
            .args(["-c", "sleep 300 & sleep 300"])
            .process_group(0)
            .spawn()
            .expect("spawn sleeper");
        let pgid = i32::try_from(child.id()).expect("pid");
        (child, pgid)
    }

    #[test]
    fn end_of_input_kills_watched_groups_only() {
        let (mut watched, g1) = sleeper_group();
        let (mut forgotten, g2) = sleeper_group();
        let input = format!("+{g1}\n+{g2}\n-{g2}\ngarbage\n+0\n+-1\n");
        let killed = run_reaper(Cursor::new(input), Duration::from_secs(2));
        assert_eq!(killed, vec![g1]);
        watched.wait().expect("reap");
        assert!(poll_until(Duration::from_secs(5), || !group_alive(g1)));
        assert!(group_alive(g2), "a forgotten group is left alone");
        let _ = killpg(Pid::from_raw(g2), Signal::SIGKILL);
        forgotten.wait().expect("reap");
    }
}
