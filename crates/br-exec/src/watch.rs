//! Waiting on a session from outside its workers (`br wait`, `br cancel`): the waiter also
//! requeues expired leases while it waits — any process may, and when every worker is dead, the
//! waiter is the one left to notice.

use std::time::{Duration, Instant};

use br_core::SessionId;
use br_store::{Session, Store, StoreError};

/// How often a waiter requeues expired leases.
const REQUEUE_EVERY: Duration = Duration::from_secs(1);
/// The longest a waiter sleeps between looks; it also wakes on any change.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitEnd {
    /// The session ended and none of its tasks runs.
    Ended(Session),
    /// The limit passed first; the session as it was then.
    TimedOut(Session),
}

/// Waits until the session has ended and none of its tasks runs, or `limit` passes.
pub fn wait_for_end(
    store: &dyn Store,
    id: &SessionId,
    limit: Option<Duration>,
) -> Result<WaitEnd, StoreError> {
    wait_until(store, id, limit, |s| {
        s.status.is_terminal() && s.running_tasks == 0
    })
}

/// Waits until none of the session's tasks runs (after a cancel: its workers stop them at their
/// next heartbeat; dead workers' tasks end when their leases expire), or `limit` passes.
pub fn wait_for_running_tasks(
    store: &dyn Store,
    id: &SessionId,
    limit: Duration,
) -> Result<WaitEnd, StoreError> {
    wait_until(store, id, Some(limit), |s| s.running_tasks == 0)
}

fn wait_until(
    store: &dyn Store,
    id: &SessionId,
    limit: Option<Duration>,
    done: impl Fn(&Session) -> bool,
) -> Result<WaitEnd, StoreError> {
    let deadline = limit.map(|l| Instant::now() + l);
    let mut last_requeue: Option<Instant> = None;
    loop {
        if last_requeue.is_none_or(|t| t.elapsed() >= REQUEUE_EVERY) {
            last_requeue = Some(Instant::now());
            match store.requeue_expired_leases() {
                Ok(_) => {}
                // Busy for a moment: the next look tries again.
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
        }
        let s = store.session(id)?;
        if done(&s) {
            return Ok(WaitEnd::Ended(s));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(WaitEnd::TimedOut(s));
        }
        let left = deadline.map_or(LOOK_EVERY, |d| d.saturating_duration_since(Instant::now()));
        store.wait_for_change(left.min(LOOK_EVERY))?;
    }
}
