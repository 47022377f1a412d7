//! How an attempt ended, and the rule that decides what its task does next. A failing task is
//! data, not an error: every ending is an `Outcome`, and its [`OutcomeKind`] is the word the
//! store keeps and the JSON shows.

use serde::Serialize;

use crate::words::string_enum;

string_enum!(
    /// How an attempt ended, without its data (exit code, signal, reasons): the word the store
    /// keeps in its `outcome` columns, `br status --json` shows, and views compare.
    OutcomeKind ("outcome") {
        Succeeded = "succeeded",
        Failed = "failed",
        Signalled = "signalled",
        TimedOut = "timed_out",
        OutputLimit = "output_limit",
        SpawnFailed = "spawn_failed",
        Interrupted = "interrupted",
        Cancelled = "cancelled",
        LeaseLost = "lease_lost",
        ScopeViolation = "scope_violation",
        Unrecorded = "unrecorded",
        RateLimited = "rate_limited",
        // A task's outcome, never an attempt's: the task never ran because an `after` task
        // failed. No `Outcome` has this kind.
        Skipped = "skipped",
        // A task's outcome when it could not land, for good: its branch conflicts with the
        // integration branch, or the merge failed `verify` (no repair left, or
        // `on_conflict = "fail"`). No `Outcome` has these kinds either.
        Conflict = "conflict",
        VerifyFailed = "verify_failed",
    }
);

impl OutcomeKind {
    /// The word for people: `timed out`, `lease lost`.
    pub fn words(self) -> String {
        self.as_str().replace('_', " ")
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The command exited 0.
    Succeeded,
    /// The command exited non-zero.
    Failed { exit_code: i32 },
    /// The command was killed by a signal that br did not send.
    Signalled { signal: i32 },
    /// The task's `timeout` passed; br killed its process group.
    TimedOut,
    /// The task wrote more output than the worker allows (`--max-log`); br killed its process
    /// group rather than let one task fill the disk.
    OutputLimit { limit_bytes: u64 },
    /// br could not start the command (e.g. the log file or working directory is unusable).
    SpawnFailed { reason: String },
    /// The worker was told to stop (Ctrl-C on `br run`, SIGTERM), or failed an attempt on a
    /// full disk: not the task's fault.
    Interrupted,
    /// The task's session was cancelled.
    Cancelled,
    /// The lease ended before the attempt: its worker went silent (requeued by whoever noticed),
    /// or stopped the task itself because it could not renew the lease in time.
    LeaseLost,
    /// The command succeeded but changed files outside its declared `files`, and the plan says
    /// `scope = "strict"`.
    ScopeViolation { files: Vec<String> },
    /// The command succeeded but br could not keep what it changed (a git failure in its
    /// worktree); nothing is on the task branch.
    Unrecorded { reason: String },
    /// Its output showed its agent's rate limit (`rate_limit`): not the task's fault, so no
    /// retry is spent; the task is ready again, and its pool is parked for a while.
    RateLimited {
        reason: String,
        /// When the limit resets, as the output said it (milliseconds since the epoch): the
        /// pool stays parked until then instead of its backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resets_at_ms: Option<i64>,
    },
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Succeeded => OutcomeKind::Succeeded,
            Outcome::Failed { .. } => OutcomeKind::Failed,
            Outcome::Signalled { .. } => OutcomeKind::Signalled,
            Outcome::TimedOut => OutcomeKind::TimedOut,
            Outcome::OutputLimit { .. } => OutcomeKind::OutputLimit,
            Outcome::SpawnFailed { .. } => OutcomeKind::SpawnFailed,
            Outcome::Interrupted => OutcomeKind::Interrupted,
            Outcome::Cancelled => OutcomeKind::Cancelled,
            Outcome::LeaseLost => OutcomeKind::LeaseLost,
            Outcome::ScopeViolation { .. } => OutcomeKind::ScopeViolation,
            Outcome::Unrecorded { .. } => OutcomeKind::Unrecorded,
            Outcome::RateLimited { .. } => OutcomeKind::RateLimited,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Succeeded | Outcome::ScopeViolation { .. } => Some(0),
            Outcome::Failed { exit_code } => Some(*exit_code),
            _ => None,
        }
    }

    /// A short reason for humans: "exit 1", "killed by signal 9", "timed out".
    pub fn describe(&self) -> String {
        match self {
            Outcome::Succeeded => "succeeded".into(),
            Outcome::Failed { exit_code: 127 } => "exit 127 (command not found)".into(),
            Outcome::Failed { exit_code } => format!("exit {exit_code}"),
            Outcome::Signalled { signal } => format!("killed by signal {signal}"),
            Outcome::TimedOut => "timed out".into(),
            Outcome::OutputLimit { limit_bytes } => {
                format!(
                    "killed: its output passed the log limit ({})",
                    human_bytes(*limit_bytes)
                )
            }
            Outcome::SpawnFailed { reason } => format!("could not start: {reason}"),
            Outcome::Interrupted => "interrupted".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::LeaseLost => "lease lost (its worker went silent or lost the store)".into(),
            Outcome::ScopeViolation { files } => {
                format!("changed files outside its scope: {}", files.join(", "))
            }
            Outcome::Unrecorded { reason } => format!("its changes could not be kept: {reason}"),
            Outcome::RateLimited { reason, .. } => format!("rate limited: {reason}"),
        }
    }
}

/// A byte count for humans: "512 B", "64 KiB", "1 GiB" (rounded down to the unit).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024 && value.is_multiple_of(1024) && unit < UNITS.len() - 1 {
        value /= 1024;
        unit += 1;
    }
    if unit == 0 && n >= 10 * 1024 {
        // Not a round number: say it approximately in the largest fitting unit.
        let mut approx = n as f64;
        while approx >= 1024.0 && unit < UNITS.len() - 1 {
            approx /= 1024.0;
            unit += 1;
        }
        return format!("{approx:.1} {}", UNITS[unit]);
    }
    format!("{value} {}", UNITS[unit])
}

/// How many times a task may lose its lease (its worker died or went silent) before it is
/// failed instead of requeued. A lost lease is not the task's fault, so it does not spend the
/// plan's `retries`; this bound only stops a task that kills every worker it runs on from
/// looping forever.
pub const MAX_LOST_LEASES: u32 = 3;

/// What a task does after an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskNext {
    /// The task succeeded; its dependents may become ready.
    Succeed,
    /// The attempt failed and retries remain: the task is ready again as the next attempt.
    Retry,
    /// The attempt did not finish for a reason outside the task (lost lease, interruption): the
    /// task is ready again as the next attempt.
    Requeue,
    /// The task failed for good; its dependents are skipped.
    Fail,
    /// The session was cancelled.
    Cancel,
}

/// The counts of earlier endings that bound how often a task is run again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// The task's `retries`: extra attempts allowed after failed attempts.
    pub retries: u32,
    /// Failed attempts before this one.
    pub failures: u32,
    /// Lost leases before this one.
    pub lost: u32,
}

/// The rule every store backend applies when an attempt ends.
pub fn next_after(outcome: &Outcome, budget: Budget, session_cancelled: bool) -> TaskNext {
    if session_cancelled {
        return match outcome {
            Outcome::Succeeded => TaskNext::Succeed,
            _ => TaskNext::Cancel,
        };
    }
    match outcome {
        Outcome::Succeeded => TaskNext::Succeed,
        Outcome::Cancelled => TaskNext::Cancel,
        Outcome::Interrupted | Outcome::RateLimited { .. } => TaskNext::Requeue,
        Outcome::LeaseLost if budget.lost < MAX_LOST_LEASES.max(budget.retries) => {
            TaskNext::Requeue
        }
        Outcome::LeaseLost => TaskNext::Fail,
        Outcome::Failed { .. }
        | Outcome::Signalled { .. }
        | Outcome::TimedOut
        | Outcome::OutputLimit { .. }
        | Outcome::SpawnFailed { .. }
        | Outcome::ScopeViolation { .. }
        | Outcome::Unrecorded { .. } => {
            if budget.failures < budget.retries {
                TaskNext::Retry
            } else {
                TaskNext::Fail
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(retries: u32, failures: u32, lost: u32) -> Budget {
        Budget {
            retries,
            failures,
            lost,
        }
    }

    #[test]
    fn next_state_table() {
        let fail = Outcome::Failed { exit_code: 1 };
        let cases = [
            (
                Outcome::Succeeded,
                budget(0, 0, 0),
                false,
                TaskNext::Succeed,
            ),
            (fail.clone(), budget(0, 0, 0), false, TaskNext::Fail),
            (fail.clone(), budget(1, 0, 0), false, TaskNext::Retry),
            (fail.clone(), budget(1, 1, 0), false, TaskNext::Fail),
            (Outcome::TimedOut, budget(2, 1, 0), false, TaskNext::Retry),
            (
                Outcome::LeaseLost,
                budget(0, 0, 0),
                false,
                TaskNext::Requeue,
            ),
            (
                Outcome::LeaseLost,
                budget(0, 0, 2),
                false,
                TaskNext::Requeue,
            ),
            (Outcome::LeaseLost, budget(0, 0, 3), false, TaskNext::Fail),
            (
                Outcome::LeaseLost,
                budget(5, 0, 4),
                false,
                TaskNext::Requeue,
            ),
            (
                Outcome::Interrupted,
                budget(0, 9, 9),
                false,
                TaskNext::Requeue,
            ),
            (fail.clone(), budget(3, 0, 0), true, TaskNext::Cancel),
            (Outcome::Succeeded, budget(0, 0, 0), true, TaskNext::Succeed),
            (Outcome::Cancelled, budget(3, 0, 0), false, TaskNext::Cancel),
        ];
        for (outcome, b, cancelled, want) in cases {
            assert_eq!(
                next_after(&outcome, b, cancelled),
                want,
                "{outcome:?} {b:?} {cancelled}"
            );
        }
    }

    #[test]
    fn outcome_words_are_the_same_everywhere() {
        let every = [
            Outcome::Succeeded,
            Outcome::Failed { exit_code: 2 },
            Outcome::Signalled { signal: 9 },
            Outcome::TimedOut,
            Outcome::OutputLimit { limit_bytes: 1 },
            Outcome::SpawnFailed { reason: "x".into() },
            Outcome::Interrupted,
            Outcome::Cancelled,
            Outcome::LeaseLost,
            Outcome::ScopeViolation { files: vec![] },
            Outcome::Unrecorded { reason: "x".into() },
            Outcome::RateLimited {
                reason: "x".into(),
                resets_at_ms: None,
            },
        ];
        for outcome in &every {
            let kind = outcome.kind();
            // The tag of the outcome's own JSON (the attempt's detail) is its kind's word.
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(json["outcome"], kind.as_str());
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(kind.as_str().parse::<OutcomeKind>().unwrap(), kind);
        }
        // Every kind but a task's own (`skipped`, `conflict`, `verify_failed`) is some outcome's.
        let kinds: Vec<OutcomeKind> = every.iter().map(Outcome::kind).collect();
        for kind in OutcomeKind::ALL {
            let tasks_only = [
                OutcomeKind::Skipped,
                OutcomeKind::Conflict,
                OutcomeKind::VerifyFailed,
            ];
            assert_eq!(kinds.contains(kind), !tasks_only.contains(kind), "{kind}");
        }
        assert_eq!(
            "exploded".parse::<OutcomeKind>().unwrap_err().what,
            "outcome"
        );
        assert_eq!(OutcomeKind::TimedOut.words(), "timed out");
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 * 1024), "64 KiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(1536), "1536 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 1), "3.0 MiB");
    }

    #[test]
    fn describes_command_not_found() {
        assert_eq!(
            Outcome::Failed { exit_code: 127 }.describe(),
            "exit 127 (command not found)"
        );
    }
}
