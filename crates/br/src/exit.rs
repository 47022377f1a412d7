//! Exit codes, decided in one place from what happened (see `br --help`).

use std::process::ExitCode;

use br_core::{IdError, LockPathError, PlanError};
use br_git::GitError;
use br_store::StoreError;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Success,
    /// The session ended with failed, skipped or cancelled tasks.
    SessionFailed,
    BadInput,
    LockConflict,
    Trouble,
    WaitTimedOut,
    Interrupted,
}

impl Exit {
    pub(crate) fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Exit::Success => 0,
            Exit::SessionFailed => 1,
            Exit::BadInput => 2,
            Exit::LockConflict => 3,
            Exit::Trouble => 4,
            Exit::WaitTimedOut => 124,
            Exit::Interrupted => 130,
        })
    }
}

/// Bad input from the user that is not covered by a library error type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub String);

/// `br lock` found the paths held by someone else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Conflict(pub String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

pub(crate) fn code_for_error(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if cause.is::<Usage>()
            || cause.is::<PlanError>()
            || cause.is::<LockPathError>()
            || cause.is::<IdError>()
        {
            return Exit::BadInput;
        }
        if cause.is::<Conflict>() {
            return Exit::LockConflict;
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return match e {
                StoreError::NoSuchSession(_)
                | StoreError::AmbiguousSession { .. }
                | StoreError::NoSuchTask { .. }
                | StoreError::NoSuchWorker(_)
                | StoreError::Transition(_)
                | StoreError::Retry(_)
                | StoreError::UnsupportedUrl { .. } => Exit::BadInput,
                _ => Exit::Trouble,
            };
        }
        if let Some(e) = cause.downcast_ref::<GitError>() {
            return match e {
                GitError::NotARepository { .. }
                | GitError::Bare { .. }
                | GitError::UnknownRevision { .. } => Exit::BadInput,
                _ => Exit::Trouble,
            };
        }
    }
    Exit::Trouble
}

/// Writing to a closed pipe (`br events | head`) is not an error.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}
