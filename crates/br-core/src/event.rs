//! The kinds of event in the append-only log. Dashboards and tests read events; nothing depends on
//! a process's memory.

use serde::{Deserialize, Serialize};

use crate::words::UnknownState;

macro_rules! event_kinds {
    ($($variant:ident = $text:literal),+ $(,)?) => {
        /// One kind of event, named as in DESIGN.md.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventKind { $($variant),+ }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for EventKind {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(EventKind::$variant),)+
                    _ => Err(UnknownState {
                        what: "event kind",
                        value: s.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

event_kinds! {
    SessionCreated = "session_created",
    SessionStarted = "session_started",
    SessionPaused = "session_paused",
    SessionResumed = "session_resumed",
    SessionCompleted = "session_completed",
    SessionFailed = "session_failed",
    SessionCancelled = "session_cancelled",
    WorkerRegistered = "worker_registered",
    WorkerOffline = "worker_offline",
    WorkerStopped = "worker_stopped",
    TaskReady = "task_ready",
    TaskStarted = "task_started",
    TaskSucceeded = "task_succeeded",
    TaskFailed = "task_failed",
    TaskRequeued = "task_requeued",
    TaskSkipped = "task_skipped",
    TaskCancelled = "task_cancelled",
    LockAcquired = "lock_acquired",
    LockReleased = "lock_released",
    LockConflict = "lock_conflict",
    StaleResultRejected = "stale_result_rejected",
    MergeConflict = "merge_conflict",
    ScopeViolation = "scope_violation",
    TaskLanded = "task_landed",
    VerifyFailed = "verify_failed",
    PoolParked = "pool_parked",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
