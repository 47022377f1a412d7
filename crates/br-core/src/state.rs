//! The state machines of sessions, tasks and workers, with the transitions a user may ask for and
//! the one rule for where a task goes when an attempt ends ([`TaskState::after`]).

use crate::outcome::TaskNext;

pub use crate::words::UnknownState;
use crate::words::string_enum;

string_enum!(
    /// `created → running ⇄ paused → completed | failed | cancelled`.
    SessionStatus ("session status") {
        Created = "created",
        Running = "running",
        Paused = "paused",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

string_enum!(
    /// `pending → ready → running → succeeded | failed`, and `skipped`, `cancelled`.
    TaskState ("task state") {
        Pending = "pending",
        Ready = "ready",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Skipped = "skipped",
        Cancelled = "cancelled",
    }
);

string_enum!(
    /// Where a succeeded task's work is, with `land = "auto"` in worktree isolation: `waiting`
    /// to land, `landed` on the integration branch, or for good not, because it conflicts or
    /// failed `verify`. None for a task that has not succeeded (or runs in shared isolation).
    Landing ("landing") {
        Waiting = "waiting",
        Landed = "landed",
        Conflict = "conflict",
        VerifyFailed = "verify_failed",
    }
);

string_enum!(
    /// Why an attempt runs (`BR_CONTEXT_FILE`'s `reason`): the first attempt, or what ended the
    /// one before.
    RunReason ("reason") {
        First = "first",
        Failed = "failed",
        TimedOut = "timed_out",
        LeaseLost = "lease_lost",
        Interrupted = "interrupted",
        Conflict = "conflict",
        VerifyFailed = "verify_failed",
        Retry = "retry",
    }
);

string_enum!(
    /// `idle ⇄ busy`, then `offline` (heartbeat timed out) or `stopped` (left cleanly).
    WorkerStatus ("worker status") {
        Idle = "idle",
        Busy = "busy",
        Offline = "offline",
        Stopped = "stopped",
    }
);

/// A transition a user asked for that the session's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} session {session}: it is {status}")]
pub struct TransitionError {
    pub session: String,
    pub action: &'static str,
    pub status: SessionStatus,
}

/// What a user can ask of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAction {
    Pause,
    Resume,
    Cancel,
}

impl SessionAction {
    pub fn verb(self) -> &'static str {
        match self {
            SessionAction::Pause => "pause",
            SessionAction::Resume => "resume",
            SessionAction::Cancel => "cancel",
        }
    }
}

impl SessionStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether workers may start tasks of a session in this state.
    pub fn is_claimable(self) -> bool {
        matches!(self, Self::Created | Self::Running)
    }

    /// The states of a session that is not over.
    pub const ACTIVE: [SessionStatus; 3] = [
        SessionStatus::Created,
        SessionStatus::Running,
        SessionStatus::Paused,
    ];

    /// The states whose sessions' tasks workers may start.
    pub const CLAIMABLE: [SessionStatus; 2] = [SessionStatus::Created, SessionStatus::Running];

    /// The state after `action`, or why it is refused.
    pub fn apply(
        self,
        action: SessionAction,
        session: &str,
    ) -> Result<SessionStatus, TransitionError> {
        let next = match (self, action) {
            (Self::Created | Self::Running, SessionAction::Pause) => Some(Self::Paused),
            (Self::Paused, SessionAction::Resume) => Some(Self::Running),
            (s, SessionAction::Cancel) if !s.is_terminal() => Some(Self::Cancelled),
            _ => None,
        };
        next.ok_or_else(|| TransitionError {
            session: session.to_string(),
            action: action.verb(),
            status: self,
        })
    }
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    /// Where a running task goes when its attempt ends and the core rule
    /// ([`next_after`](crate::outcome::next_after)) says `next`: a retried or requeued task is
    /// ready again (as its next attempt), the others end.
    pub fn after(next: TaskNext) -> TaskState {
        match next {
            TaskNext::Succeed => TaskState::Succeeded,
            TaskNext::Retry | TaskNext::Requeue => TaskState::Ready,
            TaskNext::Fail => TaskState::Failed,
            TaskNext::Cancel => TaskState::Cancelled,
        }
    }

    /// The states of a task that has not started its next attempt: what cancelling a session
    /// cancels at once (running tasks end when their workers report).
    pub const WAITING: [TaskState; 2] = [TaskState::Pending, TaskState::Ready];
}

impl WorkerStatus {
    pub fn is_live(self) -> bool {
        matches!(self, Self::Idle | Self::Busy)
    }

    /// The states of a worker that is there: heartbeating, and able to claim or running a task.
    pub const LIVE: [WorkerStatus; 2] = [WorkerStatus::Idle, WorkerStatus::Busy];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_transitions() {
        use SessionAction::*;
        use SessionStatus::*;
        let table = [
            (Created, Pause, Some(Paused)),
            (Running, Pause, Some(Paused)),
            (Paused, Pause, None),
            (Paused, Resume, Some(Running)),
            (Running, Resume, None),
            (Completed, Resume, None),
            (Running, Cancel, Some(Cancelled)),
            (Paused, Cancel, Some(Cancelled)),
            (Failed, Cancel, None),
            (Cancelled, Cancel, None),
        ];
        for (from, action, want) in table {
            assert_eq!(from.apply(action, "s1").ok(), want, "{from} {action:?}");
        }
        let err = Completed.apply(Resume, "abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot resume session abc: it is completed"
        );
    }

    #[test]
    fn an_ended_attempt_moves_its_task_by_the_core_rule() {
        let table = [
            (TaskNext::Succeed, TaskState::Succeeded),
            (TaskNext::Retry, TaskState::Ready),
            (TaskNext::Requeue, TaskState::Ready),
            (TaskNext::Fail, TaskState::Failed),
            (TaskNext::Cancel, TaskState::Cancelled),
        ];
        for (next, want) in table {
            assert_eq!(TaskState::after(next), want, "{next:?}");
            // Only a task that runs again is not terminal.
            assert_eq!(
                want.is_terminal(),
                !matches!(next, TaskNext::Retry | TaskNext::Requeue)
            );
        }
    }

    #[test]
    fn the_state_groups_agree_with_the_predicates() {
        for s in SessionStatus::ALL {
            assert_eq!(SessionStatus::ACTIVE.contains(s), !s.is_terminal(), "{s}");
            assert_eq!(
                SessionStatus::CLAIMABLE.contains(s),
                s.is_claimable(),
                "{s}"
            );
        }
        for t in TaskState::ALL {
            assert_eq!(
                TaskState::WAITING.contains(t),
                matches!(t, TaskState::Pending | TaskState::Ready),
                "{t}"
            );
        }
        for w in WorkerStatus::ALL {
            assert_eq!(WorkerStatus::LIVE.contains(w), w.is_live(), "{w}");
        }
    }

    #[test]
    fn names_round_trip() {
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>().unwrap(), *s);
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), *s);
        }
        let err = "bogus".parse::<WorkerStatus>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown worker status `bogus` (expected one of: idle, busy, offline, stopped)"
        );
    }
}
