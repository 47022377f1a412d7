//! `br dashboard`: the live terminal dashboard, or one frame of it as plain text (`--once`).

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;

use br_core::SessionStatus;
use br_store::snapshot::build_snapshot;
use br_store::{SessionFilter, Store};
use br_tui::{DashboardOptions, once_height, render_once, run_dashboard};

use crate::cli::DashboardArgs;
use crate::context::Context;
use crate::exit::{Exit, usage};
use crate::output::{print, print_json};

pub(super) fn dashboard(ctx: &Context, args: DashboardArgs) -> anyhow::Result<Exit> {
    // One frame only reads; a live dashboard watches for a store that may not exist yet (br run
    // in another terminal makes it), so it opens it as writers do.
    let store = if args.once {
        ctx.open_store_to_read()?
    } else {
        ctx.open_store()?
    };
    let session = match &args.session {
        Some(s) => Some(store.resolve_session(s)?.id),
        None => default_session(&*store)?,
    };
    let mut options = DashboardOptions {
        refresh: args.refresh,
        compact: args.compact,
        session: session.clone(),
        ..DashboardOptions::default()
    };
    if args.once {
        let snapshot = build_snapshot(&*store, session.as_ref())?;
        if ctx.json {
            print_json(&snapshot)?;
        } else {
            // Plain text for scripts and logs: never colours or escape codes.
            options.color = false;
            let height = once_height(&snapshot, &options);
            print(&format!(
                "{}\n",
                render_once(&snapshot, args.width, height, &options)
            ))?;
        }
        return Ok(Exit::Success);
    }
    if !std::io::stdout().is_terminal() {
        return Err(usage(
            "br dashboard needs a terminal; `br dashboard --once` prints one frame as text",
        ));
    }
    options.differ = super::diff::dashboard_differ(ctx);
    run_dashboard(&*store, &options, &AtomicBool::new(false))?;
    Ok(Exit::Success)
}

/// The newest session that is not over, else the newest.
fn default_session(store: &dyn Store) -> anyhow::Result<Option<br_core::SessionId>> {
    let sessions = store.list_sessions(&SessionFilter {
        limit: Some(50),
        ..Default::default()
    })?;
    let active = sessions.iter().find(|s| {
        matches!(
            s.status,
            SessionStatus::Created | SessionStatus::Running | SessionStatus::Paused
        )
    });
    Ok(active.or(sessions.first()).map(|s| s.id.clone()))
}
