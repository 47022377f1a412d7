//! Keeping a lease while a task runs: a thread of its own renews it (a renewal may block on a
//! locked or unreachable store for seconds, and the worker must still stop its task on time),
//! and the clock every fence deadline is measured on.
//!
//! The deadlines themselves are `br_core::lease::FenceTimeline`'s; the worker loop applies them
//! (`worker.rs`), and the reaper applies them too when the worker itself is frozen
//! (`reaper.rs`).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::Scope;
use std::time::{Duration, Instant};

use br_core::WorkerId;
use br_store::{Heartbeat, Lease, Store, StoreError};
use nix::time::{ClockId, clock_gettime};

/// A reading of the clock fence deadlines are measured on: `CLOCK_BOOTTIME`, which never jumps
/// (unlike the wall clock) and keeps counting while the machine is suspended (unlike
/// `CLOCK_MONOTONIC`, which `Instant` reads) — a laptop that slept through a lease wakes up
/// knowing the lease is gone. Every process of the machine reads the same clock, so a worker
/// can hand a deadline to its reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(Duration);

impl Moment {
    pub fn now() -> Moment {
        // The boot clock exists on every Linux since 2.6.39; fall back to the monotonic clock
        // rather than fail where it does not.
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
            .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
        let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
        let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0);
        Moment(Duration::new(secs, nanos))
    }

    /// The moment `d` after this one.
    pub fn plus(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d))
    }

    /// Time from `earlier` to this moment; zero if `earlier` is later.
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Time from now until this moment; zero if it passed.
    pub fn from_now(self) -> Duration {
        self.since(Moment::now())
    }

    /// Milliseconds on the clock: how a deadline travels to the reaper.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn from_millis(ms: u64) -> Moment {
        Moment(Duration::from_millis(ms))
    }
}

/// What the renewing thread reports.
#[derive(Debug)]
pub(crate) enum Renewal {
    /// The store answered a renewal sent at `sent`.
    Answered { sent: Moment, reply: Heartbeat },
    /// A renewal (or the requeue of others' expired leases) failed.
    Failed(StoreError),
}

/// The renewing thread of one running attempt. Dropping it asks the thread to end; the scope it
/// was started in waits for it (at most one store call).
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    renewals: Receiver<Renewal>,
    _stop: Sender<()>,
}

impl LeaseKeeper {
    /// Starts renewing `lease` every `every`, from `every` after now. Between renewals the
    /// thread also requeues other workers' expired leases: any worker may, and there is no
    /// coordinator to do it.
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        store: &'scope dyn Store,
        worker: &WorkerId,
        lease: &Lease,
        every: Duration,
    ) -> std::io::Result<LeaseKeeper> {
        let (report, renewals) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let worker = worker.clone();
        let lease = lease.clone();
        std::thread::Builder::new()
            .name("lease".into())
            .spawn_scoped(scope, move || {
                let mut next = Instant::now() + every;
                loop {
                    match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    next = Instant::now() + every;
                    let sent = Moment::now();
                    let (message, last) = match store.heartbeat(&worker, Some(&lease)) {
                        Ok(reply) => (
                            Renewal::Answered { sent, reply },
                            !reply.lease_held || reply.session_cancelled,
                        ),
                        Err(e) => (Renewal::Failed(e), false),
                    };
                    if report.send(message).is_err() || last {
                        return;
                    }
                    if let Err(e) = store.requeue_expired_leases()
                        && report.send(Renewal::Failed(e)).is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(LeaseKeeper {
            renewals,
            _stop: stop,
        })
    }

    /// The reports that arrived since the last call.
    pub(crate) fn reports(&self) -> impl Iterator<Item = Renewal> + '_ {
        self.renewals.try_iter()
    }
}
