//! The store's error type: what went wrong when br itself could not read or write its state.

use std::path::PathBuf;
use std::time::Duration;

use br_core::retry::RetryError;
use br_core::state::TransitionError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A backend's own error, kept as the source so messages show the database's words.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("store {} is not a br store, or is damaged", path.display())]
    NotAStore {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error(
        "store {} was written by a newer br (schema version {found}; this br knows up to \
         {supported}): upgrade br, or use another store with --store",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "store {} has schema version {found}, older than this br's {supported}: a command that \
         writes (br submit, run, resume, worker) upgrades it; reading commands leave a store as \
         they find it",
        path.display()
    )]
    OlderSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("store {} is locked by another process (waited {waited:?})", path.display())]
    Busy { path: PathBuf, waited: Duration },
    /// The store was open, and now cannot be reached (the server restarted or stopped
    /// answering, the network is cut). Trying again later may succeed.
    #[error("store {} is unreachable", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    /// The filesystem holding the store has no space left: nothing more can be recorded until
    /// some is freed; what was recorded before is intact.
    #[error(
        "the disk holding store {} is full: nothing more can be recorded until space is freed",
        path.display()
    )]
    Full {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("unsupported store `{url}`: {reason}")]
    UnsupportedUrl { url: String, reason: String },
    #[error("no session matches `{0}`")]
    NoSuchSession(String),
    #[error("`{reference}` matches several sessions: {}", candidates.join(", "))]
    AmbiguousSession {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("session {session} has no task `{task}`")]
    NoSuchTask { session: String, task: String },
    #[error("no worker `{0}`")]
    NoSuchWorker(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// `br retry` was refused: a named task had not ended badly, or nothing had.
    #[error(transparent)]
    Retry(RetryError),
    #[error("store data is damaged: {0}")]
    Damaged(String),
    #[error("store operation failed: {context}")]
    Backend {
        context: &'static str,
        #[source]
        source: BackendError,
    },
}

impl From<RetryError> for StoreError {
    /// An unknown task is the same error wherever it is named.
    fn from(e: RetryError) -> StoreError {
        match e {
            RetryError::NoSuchTask { session, task } => StoreError::NoSuchTask { session, task },
            other => StoreError::Retry(other),
        }
    }
}

impl StoreError {
    /// Whether trying again later may succeed (the store was busy, or could not be reached for
    /// now), as opposed to a fault that will not go away by itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Busy { .. } | StoreError::Unreachable { .. }
        )
    }
}
