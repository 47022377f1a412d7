//! The reaper: a tiny process each worker starts beside itself. The worker tells it, over a pipe,
//! which task process groups are alive. When the pipe closes without a goodbye — the worker died,
//! even by SIGKILL — the reaper terminates those groups (TERM, grace, KILL) and exits. This is how
//! "when a worker dies, its task's process group dies too" holds with no `unsafe` and no
//! reliance on the task's cooperation.
//!
//! It is also the last line of self-fencing: the worker tells it by when each group must be dead
//! unless the lease is renewed (a moment on the boot clock, see `lease.rs`). A worker that is
//! frozen (SIGSTOP, a debugger, a stalled page-in) cannot stop its own task before its lease
//! expires; the reaper, a separate process, SIGKILLs the group at that deadline.
//!
//! Protocol, one line each: `+PGID` (watch), `-PGID` (forget), `!PGID MS` (kill the group if the
//! boot clock reaches MS milliseconds before a later deadline arrives). End of input means the
//! worker is gone; a worker that exits cleanly forgets every group first, so the reaper then
//! kills nothing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::lease::Moment;
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

    /// [`Reaper::watch`] and [`Reaper::fence`] in one message.
    pub fn watch_fenced(&mut self, pgid: i32, deadline: Moment) -> std::io::Result<()> {
        self.send(&format!("+{pgid}\n!{pgid} {}\n", deadline.as_millis()))
    }

    /// Group `pgid` must be dead by `deadline` unless a later deadline follows: the reaper
    /// SIGKILLs it then, even if this process is frozen.
    pub fn fence(&mut self, pgid: i32, deadline: Moment) -> std::io::Result<()> {
        self.send(&format!("!{pgid} {}\n", deadline.as_millis()))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the pipe lets the reaper exit; wait so it does not linger as a zombie.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// One line of the protocol.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Watch(i32),
    Forget(i32),
    Fence(i32, Moment),
}

fn parse(line: &str) -> Option<Line> {
    let (op, rest) = line.split_at(line.len().min(1));
    let mut words = rest.split_whitespace();
    let pgid = words.next()?.parse::<i32>().ok()?;
    // Never signal "every process" (0, -1) or something that is not a group we were given.
    if pgid <= 1 {
        return None;
    }
    match op {
        "+" => Some(Line::Watch(pgid)),
        "-" => Some(Line::Forget(pgid)),
        "!" => Some(Line::Fence(
            pgid,
            Moment::from_millis(words.next()?.parse().ok()?),
        )),
        _ => None,
    }
}

/// What the reaper did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Groups killed at their fence deadline while the worker lived.
    pub fenced: Vec<i32>,
    /// Groups terminated because the worker went away without forgetting them.
    pub orphaned: Vec<i32>,
}

/// The reaper's main loop: reads the protocol from `input` until it ends, killing groups whose
/// fence deadline passes meanwhile, then terminates every group still watched.
pub fn run_reaper(input: impl BufRead + Send + 'static, grace: Duration) -> Reaped {
    let (lines, received) = mpsc::channel();
    // Reading blocks; deadlines must not wait for the next line.
    let reader = std::thread::Builder::new()
        .name("reaper-input".into())
        .spawn(move || {
            for line in input.lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
    let mut reaped = Reaped::default();
    // Each watched group, with its fence deadline if it has one.
    let mut live: BTreeMap<i32, Option<Moment>> = BTreeMap::new();
    if reader.is_ok() {
        loop {
            let next_deadline = live.values().flatten().min().copied();
            let wait = next_deadline.map_or(Duration::from_secs(3600), Moment::from_now);
            match received.recv_timeout(wait) {
                Ok(line) => match parse(&line) {
                    Some(Line::Watch(g)) => {
                        live.insert(g, None);
                    }
                    Some(Line::Forget(g)) => {
                        live.remove(&g);
                    }
                    Some(Line::Fence(g, at)) => {
                        if let Some(deadline) = live.get_mut(&g) {
                            *deadline = Some(at);
                        }
                    }
                    None => {}
                },
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Moment::now();
            let due: Vec<i32> = live
                .iter()
                .filter(|(_, d)| d.is_some_and(|d| d <= now))
                .map(|(g, _)| *g)
                .collect();
            for g in due {
                // No grace: the worker should have stopped it already, and the lease is about
                // to expire.
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
                live.remove(&g);
                reaped.fenced.push(g);
            }
        }
    }
    let orphans: Vec<i32> = live.into_keys().filter(|g| group_alive(*g)).collect();
    for g in &orphans {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGTERM);
    }
    poll_until(grace, || orphans.iter().all(|g| !group_alive(*g)));
    for g in &orphans {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    reaped.orphaned = orphans;
    reaped
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
        let input = format!("+{g1}\n+{g2}\n-{g2}\ngarbage\n+0\n+-1\n!0 1\n");
        let reaped = run_reaper(Cursor::new(input), Duration::from_secs(2));
        assert_eq!(reaped.orphaned, vec![g1]);
        assert!(reaped.fenced.is_empty());
        watched.wait().expect("reap");
        assert!(poll_until(Duration::from_secs(5), || !group_alive(g1)));
        assert!(group_alive(g2), "a forgotten group is left alone");
        let _ = killpg(Pid::from_raw(g2), Signal::SIGKILL);
        forgotten.wait().expect("reap");
    }

    #[test]
    fn a_passed_fence_deadline_kills_the_group_while_the_worker_lives() {
        let (mut fenced, g1) = sleeper_group();
        let (mut renewed, g2) = sleeper_group();
        let (output, mut input) = std::io::pipe().expect("pipe");
        let soon = Moment::now().plus(Duration::from_millis(200));
        let later = Moment::now().plus(Duration::from_secs(3600));
        writeln!(input, "+{g1}\n!{g1} {}", soon.as_millis()).expect("write");
        // g2's first deadline is as near, but a renewal moves it before it passes.
        writeln!(
            input,
            "+{g2}\n!{g2} {}\n!{g2} {}",
            soon.as_millis(),
            later.as_millis()
        )
        .expect("write");
        let reaper = std::thread::spawn(move || {
            run_reaper(std::io::BufReader::new(output), Duration::from_secs(2))
        });
        fenced.wait().expect("reap the fenced group's leader");
        assert!(poll_until(Duration::from_secs(5), || !group_alive(g1)));
        assert!(group_alive(g2), "a renewed deadline is not due");
        // The worker leaves cleanly: it forgets g2 first, so nothing else is killed.
        writeln!(input, "-{g2}").expect("write");
        drop(input);
        let reaped = reaper.join().expect("reaper thread");
        assert_eq!(reaped.fenced, vec![g1]);
        assert!(reaped.orphaned.is_empty());
        assert!(group_alive(g2));
        let _ = killpg(Pid::from_raw(g2), Signal::SIGKILL);
        renewed.wait().expect("reap");
    }
}
