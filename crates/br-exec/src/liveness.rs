//! Which workers are really alive. A worker's row says `busy` or `idle` until its heartbeat
//! times out, also after a crash; on this host, whether its process still exists settles it at
//! once. Used to decide whether anyone serves a session (`br resume`, `br scale`).

use br_store::{Session, Store, StoreError, WorkerFilter};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// This machine's name, as workers record it.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .map_or_else(|_| "localhost".into(), |h| h.to_string_lossy().into_owned())
}

/// How many live workers serve `session`: first the leases of silent workers are requeued (so
/// their rows say offline), then workers on this host whose process is gone are not counted.
pub fn serving_workers(store: &dyn Store, session: &Session) -> Result<usize, StoreError> {
    match store.requeue_expired_leases() {
        Ok(_) => {}
        // Counting from slightly stale rows is still an answer; a store that cannot be written
        // now is not a reason to refuse one.
        Err(e) if e.is_transient() => {}
        Err(e) => return Err(e),
    }
    let host = host_name();
    let workers = store.workers(&WorkerFilter {
        session: Some(session.id.clone()),
        ..Default::default()
    })?;
    Ok(workers
        .iter()
        .filter(|w| w.status.is_live())
        .filter(|w| w.host != host || process_exists(w.pid))
        .count())
}

/// Whether a process with this pid exists (signal 0 checks; EPERM means it exists but belongs to
/// someone else).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_exists_and_an_impossible_pid_does_not() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(u32::MAX));
    }
}
