//! The state machines of sessions, tasks and workers, with the transitions a user may ask for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident ($what:literal) { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        what: $what,
                        value: s.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// A state name that none of the known states has (from the command line or a damaged store).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (expected one of: {})", expected.join(", "))]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

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
}

impl WorkerStatus {
    pub fn is_live(self) -> bool {
        matches!(self, Self::Idle | Self::Busy)
    }
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
