//! The web dashboard of br: [`router`] serves one self-contained page, a JSON API with the
//! CLI's `--json` shapes, and a server-sent-events stream of the same [`Snapshot`] the terminal
//! dashboard renders, so the two cannot disagree.
//!
//! It reads the store and nothing else: a user action (pause, resume, cancel) becomes one store
//! request that workers act on; this crate never touches processes or worktrees.
//!
//! [`Snapshot`]: br_store::snapshot::Snapshot

mod access;
mod api;
mod error;
mod page;
mod query;
mod server;
mod serving;
mod state;
mod stream;

pub use access::{Access, TOKEN_COOKIE, Token, TokenError};
pub use api::{ACTION_HEADER, PAGE, router};
pub use error::ApiError;
pub use page::{DEFAULT_TASK_PAGE, MAX_TASK_PAGE, STREAM_EVENTS};
pub use server::{SHUTDOWN_GRACE, Server, Stop, WRITE_STALL};
pub use state::{AppState, DiffFailure, Differ, MAX_STREAMS, MIN_REFRESH_GAP, Published};
pub use stream::MIN_SEND_GAP;
