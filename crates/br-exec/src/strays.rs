//! Processes that escape their attempt's process group (`setsid`, a daemon that double-forks)
//! and would outlive it. The process that runs tasks makes itself their *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`): an orphan among its descendants re-parents to it rather than to
//! init, so once an attempt ended, every child it has beyond the ones it knows is a stray of that
//! attempt, and is killed and reaped. docs/processes.md says what this guarantees and what not.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long a stray may take to die after SIGKILL before it is left (a process in
/// uninterruptible sleep cannot be killed sooner); it stays a child and is tried again next time.
const DEATH_WAIT: Duration = Duration::from_secs(5);

/// Makes this process the subreaper of everything it starts from now on.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// The children of this process's main thread (zombies included), from
/// `/proc/self/task/<pid>/children`: the processes it started, and every orphan re-parented to
/// this process (the kernel hands them to the main thread while it lives). A worker starts all
/// its processes from its main thread, so this is all of its children; reading one file keeps
/// the check cheap enough to make after every attempt.
pub fn children() -> BTreeSet<i32> {
    let path = format!("/proc/self/task/{}/children", std::process::id());
    std::fs::read_to_string(path)
        .map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills and reaps every child of this process that is not in `keep`, and each orphan that
/// re-parents to it as those die, until none is left (or what is left will not die). Returns the
/// pids killed.
pub fn kill_strays(keep: &BTreeSet<i32>) -> Vec<i32> {
    let mut killed = Vec::new();
    let deadline = Instant::now() + DEATH_WAIT;
    loop {
        let strays: Vec<i32> = children().difference(keep).copied().collect();
        let pending: Vec<i32> = strays
            .iter()
            .copied()
            .filter(|pid| !killed.contains(pid))
            .collect();
        if strays.is_empty() || (pending.is_empty() && Instant::now() >= deadline) {
            return killed;
        }
        for pid in &pending {
            // Children only: these are ours to signal and to reap.
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            killed.push(*pid);
        }
        for pid in strays {
            reap(pid, deadline);
        }
    }
}

/// Waits (until `deadline`) for child `pid` to exit and reaps it.
fn reap(pid: i32, deadline: Instant) {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(Errno::EINTR) => {}
            // Reaped, gone, not ours after all, or still dying past the deadline.
            _ => return,
        }
    }
}
