//! Keeping a lease while a task runs: a thread of its own renews it (a renewal may block on a
//! locked or unreachable store for seconds, and the worker must still stop its task on time),
//! and the clock every fence deadline is measured on.
//!
//! The deadlines themselves are `br_core::lease::FenceTimeline`'s; the worker loop applies them
//! (`worker.rs`), and the reaper applies them too when the worker itself is frozen
//! (`reaper.rs`).

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::Scope;
use std::time::{Duration, Instant};

use br_core::WorkerId;
use br_store::{Heartbeat, Lease, Store, StoreError};

use crate::log_ship::{PIECES_PER_RENEWAL, SharedShipper, Shipped};
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

/// The lease the renewing thread keeps, and when it plans to wake.
#[derive(Debug, Default)]
struct State {
    /// The lease being renewed: its generation, the lease, how often, and when next.
    job: Option<(u64, Lease, Duration, Instant)>,
    /// The attempt's log, shipped to the store a little after each renewal.
    log: Option<SharedShipper>,
    /// When the thread will look again (it waits for a notification only if a job needs it
    /// sooner): a short attempt starts and ends without waking it at all.
    planned_wake: Option<Instant>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state holds no invariant a panicking holder could break halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long the renewing thread sleeps when it has nothing to renew.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The worker's renewing thread: one for the worker's life (starting a thread per attempt costs
/// more than a short task), renewing the lease of whatever attempt runs. Dropping it ends the
/// thread; the scope it was started in waits for it (at most one store call).
#[derive(Debug)]
pub(crate) struct Renewer {
    shared: Arc<Shared>,
    reports: Receiver<(u64, Renewal)>,
    generation: u64,
}

impl Renewer {
    /// Starts the thread, idle until [`Renewer::keep`]. Between renewals it also requeues other
    /// workers' expired leases: any worker may, and there is no coordinator to do it.
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        store: &'scope dyn Store,
        worker: &WorkerId,
    ) -> std::io::Result<Renewer> {
        let (report, reports) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let worker = worker.clone();
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("lease".into())
            .spawn_scoped(scope, move || renew(&theirs, store, &worker, &report))?;
        Ok(Renewer {
            shared,
            reports,
            generation: 0,
        })
    }

    /// Renews `lease` every `every` from now on, until [`Renewer::release`] (or a reply that
    /// says the lease is gone or its session cancelled), shipping some of `log` after each
    /// renewal.
    pub(crate) fn keep(&mut self, lease: &Lease, every: Duration, log: Option<SharedShipper>) {
        self.generation += 1;
        // Reports about an earlier lease are of no use any more.
        while self.reports.try_recv().is_ok() {}
        let next = Instant::now() + every;
        let mut state = self.shared.lock();
        state.job = Some((self.generation, lease.clone(), every, next));
        state.log = log;
        if state.planned_wake.is_none_or(|w| w > next) {
            self.shared.wake.notify_one();
        }
    }

    /// Stops renewing the current lease (the thread notices when it next wakes).
    pub(crate) fn release(&mut self) {
        let mut state = self.shared.lock();
        state.job = None;
        state.log = None;
    }

    /// The reports about the current lease that arrived since the last call.
    pub(crate) fn reports(&self) -> impl Iterator<Item = Renewal> + '_ {
        let generation = self.generation;
        self.reports
            .try_iter()
            .filter(move |(g, _)| *g == generation)
            .map(|(_, r)| r)
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The renewing thread's loop.
fn renew(
    shared: &Shared,
    store: &dyn Store,
    worker: &WorkerId,
    report: &mpsc::Sender<(u64, Renewal)>,
) {
    let mut state = shared.lock();
    loop {
        if state.closed {
            return;
        }
        let now = Instant::now();
        let due = match &mut state.job {
            Some((generation, lease, every, next)) if *next <= now => {
                *next = now + *every;
                Some((*generation, lease.clone(), state.log.clone()))
            }
            Some((_, _, _, next)) => {
                let next = *next;
                state.planned_wake = Some(next);
                state = shared
                    .wake
                    .wait_timeout(state, next - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                None
            }
            None => {
                let wake = now + IDLE_TICK;
                state.planned_wake = Some(wake);
                state = shared
                    .wake
                    .wait_timeout(state, IDLE_TICK)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                None
            }
        };
        let Some((generation, lease, log)) = due else {
            continue;
        };
        // The store call may block: not while holding the state.
        state.planned_wake = None;
        drop(state);
        let sent = Moment::now();
        let (message, last) = match store.heartbeat(worker, Some(&lease)) {
            Ok(reply) => (
                Renewal::Answered { sent, reply },
                !reply.lease_held || reply.session_cancelled,
            ),
            Err(e) => (Renewal::Failed(e), false),
        };
        if report.send((generation, message)).is_err() {
            return;
        }
        if let Err(e) = store.requeue_expired_leases()
            && report.send((generation, Renewal::Failed(e))).is_err()
        {
            return;
        }
        // Only if the worker is not shipping it itself (the attempt has ended): never wait for
        // it, the next renewal is due.
        if let Some(mut log) = log.as_ref().and_then(|l| l.try_lock().ok())
            && let Shipped::Store(e) = log.ship(store, Some(PIECES_PER_RENEWAL))
            && report.send((generation, Renewal::Failed(e))).is_err()
        {
            return;
        }
        state = shared.lock();
        if last && state.job.as_ref().is_some_and(|j| j.0 == generation) {
            state.job = None;
        }
    }
}
