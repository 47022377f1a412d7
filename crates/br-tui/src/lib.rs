//! The live terminal dashboard of br: sessions, workers, locks, tasks and notable events, drawn
//! with ratatui from one [`Snapshot`] of the store.
//!
//! The shape is Model / update / view: [`Model`] holds the snapshot and the UI state,
//! [`update`] turns a [`Msg`] (a key, a refresh) into a new state and maybe an [`Action`] on the
//! store, and [`view`] draws a model without changing it. [`run_dashboard`] is the one loop that
//! touches the terminal; [`render_once`] draws one frame as plain text for scripts.
//!
//! The dashboard only reads the store, except for what a user asks of a session (pause, resume,
//! cancel, retry), which becomes a store request that workers act on.

mod diff;
mod follow;
mod model;
mod run;
mod task;
mod text;
mod theme;
mod view;

use std::time::Duration;

use br_core::SessionId;
pub use br_store::snapshot::Snapshot;

pub use diff::{DiffSource, DiffView, Differ};
pub use follow::LogTail;
pub use model::{Action, Focus, Mode, Model, Msg, Panels, perform, poll, update};
pub use run::{DashboardEnd, run_dashboard};
pub use task::{LogSize, TaskDetail, TaskView};
pub use view::view;

/// How the dashboard looks and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardOptions {
    /// How often to re-read the store when nothing signals a change (default 500 ms).
    pub refresh: Duration,
    /// The layout that fits 80×24.
    pub compact: bool,
    /// The session selected at start (with `br run`, the run's session).
    pub session: Option<SessionId>,
    /// Whether to use colours. The terminal dashboard never uses them while `NO_COLOR` is set.
    pub color: bool,
    /// Makes the diffs `d` shows (git is the CLI's to run); none: `d` says there are none.
    pub differ: Option<DiffSource>,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            refresh: Duration::from_millis(500),
            compact: false,
            session: None,
            color: !no_color(),
            differ: None,
        }
    }
}

/// Whether the user asked for no colours (<https://no-color.org>: `NO_COLOR` set and not empty).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Draws one frame of `snapshot` as plain text, with no escape codes and no key hints (no key
/// does anything there): for `br dashboard --once`, CI logs and tests. Trailing spaces and empty lines at the end are trimmed. Use
/// [`once_height`] for a height that shows every row.
pub fn render_once(
    snapshot: &Snapshot,
    width: u16,
    height: u16,
    options: &DashboardOptions,
) -> String {
    let mut model = Model::new(snapshot.clone(), options);
    model.hints = false;
    model.panels = Panels::Expanded;
    update(&mut model, Msg::Refreshed);
    text::render_to_text(&model, width, height)
}

/// A height at which [`render_once`] shows every session, worker, lock, task and event of
/// `snapshot` (capped, so a 10,000-task session does not make a 10,000-line frame).
pub fn once_height(snapshot: &Snapshot, options: &DashboardOptions) -> u16 {
    view::natural_height(snapshot, options.compact)
}
