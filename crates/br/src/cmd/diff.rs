//! `br diff [SESSION] TASK [--attempt K] [--stat]`: what an attempt changed, against the commit
//! it started from — by default the attempt that landed, else the latest
//! (`br_exec::diff::attempt_diff`).

use std::io::Write;

use br_exec::diff::{DiffError, attempt_diff};

use crate::cli::DiffArgs;
use crate::context::Context;
use crate::exit::{Exit, usage};

/// What the terminal dashboard's `d` shows: the same diff as `br diff`, made in the repository
/// `br` runs in; none outside one (the dashboard then says it has no diffs).
pub(crate) fn dashboard_differ(ctx: &Context) -> Option<br_tui::DiffSource> {
    let repo = ctx.repo().ok()?.clone();
    Some(br_tui::DiffSource(std::sync::Arc::new(
        move |store, session, task, attempt| {
            attempt_diff(store, &repo, session, task, attempt, false).map_err(|e| e.to_string())
        },
    )))
}

pub(super) fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let (session, task) = super::session_and_task(&*store, &args.names)?;
    let repo = ctx.repo()?;
    let text = match attempt_diff(&*store, repo, &session, &task, args.attempt, args.stat) {
        Ok(text) => text,
        Err(DiffError::Missing(why)) => return Err(usage(why)),
        Err(DiffError::Store(e)) => return Err(e.into()),
        Err(DiffError::Git(why)) => anyhow::bail!(why),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&text)?;
    out.flush()?;
    Ok(Exit::Success)
}
