//! The worker's side of a lease: when it renews, and when — having failed to renew — it must
//! stop its task so that the task is dead before the store can consider the lease expired and
//! let another worker start the next attempt. docs/leases.md draws this timeline.
//!
//! Every offset here is measured on the worker's own clock from the moment it *sent* its last
//! renewal that the store acknowledged (or its claim). The store stamps the renewal when it
//! receives it, so the lease it records expires no earlier than `sent + heartbeat_timeout`: network delay
//! and a slow store only move the real expiry later, never the worker's deadlines.

use std::time::Duration;

/// The margin kept between a self-fenced task's SIGKILL and the earliest moment its lease can
/// expire, as a fraction of the lease (1/10) and at least this much. It absorbs clock drift
/// between the worker and the store over one lease, the worker's own scheduling delay, and the
/// time the kernel takes to deliver SIGKILL.
const MARGIN_MIN: Duration = Duration::from_millis(100);
const MARGIN_DIVISOR: u32 = 10;

/// A worker renews at least this many times per lease.
const RENEWALS_PER_LEASE: u32 = 3;

/// How many renewal intervals must pass without an acknowledged renewal before a worker may
/// fence: one lost renewal alone must never stop a task.
const TOLERATED_INTERVALS: u32 = 2;

/// The renewal interval is never shorter than this (a 1 ms lease would otherwise spin).
const RENEW_MIN: Duration = Duration::from_millis(10);

/// The timeline of one lease as a worker keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceTimeline {
    /// The lease's length: the session's `heartbeat_timeout`.
    pub heartbeat_timeout: Duration,
    /// How often the worker renews.
    pub renew_every: Duration,
    /// Kept free between the SIGKILL and the earliest expiry.
    pub margin: Duration,
    /// SIGTERM to SIGKILL when the worker stops its task on its own: the kill grace, cut to what
    /// fits in the lease.
    pub grace: Duration,
    /// From the last acknowledged renewal's sending to SIGTERM.
    pub term_after: Duration,
    /// From the last acknowledged renewal's sending to SIGKILL: `heartbeat_timeout - margin`.
    pub kill_after: Duration,
}

impl FenceTimeline {
    /// The timeline for a lease of `heartbeat_timeout`, a worker heartbeating every `heartbeat_interval` (or
    /// more often, when the lease needs it) and asked for `kill_grace` between SIGTERM and
    /// SIGKILL. The grace is cut to [`max_grace`] when the lease is too short for it.
    pub fn new(
        heartbeat_timeout: Duration,
        heartbeat_interval: Duration,
        kill_grace: Duration,
    ) -> Self {
        let renew_every = renew_every(heartbeat_timeout, heartbeat_interval);
        let margin = margin(heartbeat_timeout);
        let grace = kill_grace.min(max_grace(heartbeat_timeout, heartbeat_interval));
        let kill_after = heartbeat_timeout.saturating_sub(margin);
        FenceTimeline {
            heartbeat_timeout,
            renew_every,
            margin,
            grace,
            term_after: kill_after.saturating_sub(grace),
            kill_after,
        }
    }

    /// Whether the kill grace had to be cut to fit in the lease.
    pub fn grace_cut(&self, kill_grace: Duration) -> bool {
        self.grace < kill_grace
    }
}

/// How often a worker renews a lease of `heartbeat_timeout`: its heartbeat interval, or more often so that a
/// lease sees at least three renewals.
pub fn renew_every(heartbeat_timeout: Duration, heartbeat_interval: Duration) -> Duration {
    heartbeat_interval
        .min(heartbeat_timeout / RENEWALS_PER_LEASE)
        .max(RENEW_MIN)
}

/// The safety margin of a lease of `heartbeat_timeout`.
pub fn margin(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / MARGIN_DIVISOR).max(MARGIN_MIN)
}

/// The longest SIGTERM-to-SIGKILL grace that fits in a lease of `heartbeat_timeout`. Before the grace come
/// two renewal intervals (one lost renewal never stops a task) and at least half of the lease
/// that is left after the margin: a long grace must not make a worker give up on a store that
/// was only slow for a moment.
pub fn max_grace(heartbeat_timeout: Duration, heartbeat_interval: Duration) -> Duration {
    let kill_after = heartbeat_timeout.saturating_sub(margin(heartbeat_timeout));
    let tolerated = renew_every(heartbeat_timeout, heartbeat_interval) * TOLERATED_INTERVALS;
    kill_after.saturating_sub(tolerated).min(kill_after / 2)
}

/// The shortest `heartbeat_timeout` (to the next 100 ms up to 1 h) in which `kill_grace` fits
/// whole; `None` if none does.
pub fn min_ttl_for(kill_grace: Duration, heartbeat_interval: Duration) -> Option<Duration> {
    (1..=36_000u64)
        .map(|tenths| Duration::from_millis(tenths * 100))
        .find(|heartbeat_timeout| max_grace(*heartbeat_timeout, heartbeat_interval) >= kill_grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_lease_keeps_the_whole_grace() {
        // heartbeat_timeout 30s, --heartbeat-interval 1s, --kill-grace 5s.
        let t = FenceTimeline::new(ms(30_000), ms(1_000), ms(5_000));
        assert_eq!(t.renew_every, ms(1_000));
        assert_eq!(t.margin, ms(3_000));
        assert_eq!(t.grace, ms(5_000));
        assert_eq!(t.term_after, ms(22_000));
        assert_eq!(t.kill_after, ms(27_000));
        assert!(!t.grace_cut(ms(5_000)));
    }

    #[test]
    fn short_lease_cuts_the_grace_to_what_fits() {
        let t = FenceTimeline::new(ms(3_000), ms(1_000), ms(5_000));
        assert_eq!(t.renew_every, ms(1_000));
        assert_eq!(t.margin, ms(300));
        assert_eq!(t.grace, ms(700));
        assert_eq!(t.term_after, ms(2_000));
        assert_eq!(t.kill_after, ms(2_700));
        assert!(t.grace_cut(ms(5_000)));
    }

    #[test]
    fn a_long_grace_does_not_make_a_worker_give_up_early() {
        // Renewing every 200 ms, a 5 s grace would leave only two intervals before SIGTERM;
        // half of the lease's usable part is kept for the store to answer.
        let t = FenceTimeline::new(ms(3_000), ms(200), ms(5_000));
        assert_eq!(t.kill_after, ms(2_700));
        assert_eq!(t.grace, ms(1_350));
        assert_eq!(t.term_after, ms(1_350));
    }

    #[test]
    fn renewals_come_at_least_three_times_per_lease() {
        assert_eq!(renew_every(ms(1_000), ms(1_000)), ms(1_000) / 3);
        assert_eq!(renew_every(ms(30), ms(1_000)), ms(10));
    }

    #[test]
    fn every_timeline_stops_the_task_before_the_lease_can_expire() {
        for heartbeat_timeout in [1_000, 1_500, 2_000, 3_000, 10_000, 30_000, 3_600_000] {
            for interval in [10, 100, 1_000, 5_000] {
                for grace in [0, 200, 5_000, 60_000] {
                    let t = FenceTimeline::new(ms(heartbeat_timeout), ms(interval), ms(grace));
                    assert!(t.term_after + t.grace <= t.kill_after, "{t:?}");
                    assert!(t.kill_after + t.margin <= t.heartbeat_timeout, "{t:?}");
                    // One renewal may be lost without stopping the task, and half the lease
                    // passes before anything is stopped.
                    assert!(t.term_after >= t.renew_every * 2, "{t:?}");
                    assert!(t.term_after >= t.kill_after / 2, "{t:?}");
                }
            }
        }
    }

    #[test]
    fn minimal_lease_for_a_grace() {
        // 5s grace: (heartbeat_timeout - heartbeat_timeout/10) / 2 >= 5s, so heartbeat_timeout >= 11.2s (to the next 100 ms).
        assert_eq!(min_ttl_for(ms(5_000), ms(1_000)), Some(ms(11_200)));
        assert!(max_grace(ms(11_200), ms(1_000)) >= ms(5_000));
        assert!(max_grace(ms(11_100), ms(1_000)) < ms(5_000));
        assert_eq!(
            min_ttl_for(Duration::from_secs(4_000), ms(1_000)),
            None,
            "more than an hour of grace fits in no lease"
        );
    }
}
