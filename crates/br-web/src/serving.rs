//! Which workers serve a session, as the store tells it: what the page says after a resume, so
//! that a session resumed with nobody to run it does not look as if it were running.

use br_core::Timestamp;
use br_store::{Session, Store, StoreError, WorkerFilter};

/// How many live workers serve `session`: its workers (their `--session`) that are idle or
/// busy and were heard from within the session's heartbeat timeout, by the store's clock.
///
/// This is `br_exec::liveness::serving_workers` as a dashboard may ask it. That one first
/// requeues expired leases (a write, which is the workers' business) and checks whether the
/// workers' processes exist on this host (a dashboard touches no process, and may run on
/// another machine). The heartbeat age stands in for both: a worker that died without
/// leaving still says idle or busy until someone marks it offline, but it stops heartbeating,
/// so it stops counting here at most one heartbeat timeout after it died.
pub(crate) fn serving_workers(store: &dyn Store, session: &Session) -> Result<usize, StoreError> {
    let now = store.now()?;
    let timeout_ms = i64::try_from(session.heartbeat_timeout_ms).unwrap_or(i64::MAX);
    let workers = store.workers(&WorkerFilter {
        session: Some(session.id.clone()),
        ..Default::default()
    })?;
    Ok(workers
        .iter()
        .filter(|w| w.status.is_live() && heard_within(w.last_heartbeat, now, timeout_ms))
        .count())
}

fn heard_within(last: Timestamp, now: Timestamp, timeout_ms: i64) -> bool {
    now.0.saturating_sub(last.0) <= timeout_ms
}
