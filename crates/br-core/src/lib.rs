//! The domain of br: identifiers, states, plans, lock overlap and the rules that decide what happens
//! to a task after an attempt. Nothing here does I/O or reads a clock: callers pass the time in, so
//! every rule can be tested as a plain function and every store backend applies the same rules.

pub mod agent;
pub mod detail;
pub mod event;
mod glob;
pub mod ids;
pub mod lease;
pub mod lock;
pub mod outcome;
pub mod plan;
pub mod retry;
pub mod state;
pub mod time;
mod words;

pub use detail::EventDetail;
pub use event::EventKind;
pub use ids::{Attempt, IdError, SessionId, TaskId, WorkerId};
pub use lock::{LockPath, LockPathError};
pub use outcome::{Outcome, OutcomeKind, TaskNext};
pub use plan::{Isolation, LandMode, OnConflict, Plan, PlanError, ScopeMode, StartMode, TaskSpec};
pub use state::{Landing, RunReason, SessionStatus, TaskState, TransitionError, WorkerStatus};
pub use time::Timestamp;
