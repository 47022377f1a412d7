//! Timestamps. They always come from the store's clock (one time source for every process and
//! machine); this crate only carries them and formats them.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

/// Milliseconds since the Unix epoch, as read from the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    fn as_system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-27T15:29:34.123Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.as_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// "just now", "12s ago", "3m ago", "2h ago", "4d ago": for humans reading a heartbeat.
pub fn ago(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..=1 => "just now".to_string(),
        2..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A short duration for tables: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", d.as_secs_f64()),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// `HH:MM:SS` of a timestamp, in UTC (the store's clock has no time zone).
pub fn hms(at: Timestamp) -> String {
    at.to_string().get(11..19).unwrap_or("").to_string()
}

/// `until 15:30:34 (in 42s)`: when something that waits for `until` is over, as a clock time
/// and as the time left from `now` (rounded up, so it never says `in 0s` while it waits).
pub fn until(until: Timestamp, now: Timestamp) -> String {
    let left = until.since(now);
    let secs = left.as_millis().div_ceil(1000);
    let left = match u64::try_from(secs) {
        Ok(s @ 0..=59) => format!("{s}s"),
        Ok(s) => short_duration(Duration::from_secs(s)),
        Err(_) => "ages".to_string(),
    };
    format!("until {} (in {left})", hms(until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_millis() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_795_793_374_123).to_string(),
            "2026-11-27T15:29:34.123Z"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(ago(Duration::from_millis(300)), "just now");
        assert_eq!(ago(Duration::from_secs(12)), "12s ago");
        assert_eq!(ago(Duration::from_secs(185)), "3m ago");
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(short_duration(Duration::from_secs(245)), "4m05s");
    }

    #[test]
    fn clock_times_and_the_time_left_until_one() {
        let now = Timestamp(1_795_793_374_123);
        assert_eq!(hms(now), "15:29:34");
        assert_eq!(
            until(Timestamp(now.0 + 41_200), now),
            "until 15:30:15 (in 42s)"
        );
        assert_eq!(until(Timestamp(now.0 + 1), now), "until 15:29:34 (in 1s)");
        assert_eq!(
            until(Timestamp(now.0 + 3_600_000), now),
            "until 16:29:34 (in 1h00m)"
        );
    }
}
