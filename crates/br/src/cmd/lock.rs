//! `br lock`, `br unlock`, `br locks`: manual session locks, all or nothing.

use std::fmt::Write as _;

use br_core::LockPath;
use br_core::time::ago;
use br_store::LockOutcome;
use br_store::view::LockListView;

use crate::cli::{LockArgs, UnlockArgs};
use crate::context::Context;
use crate::escape::esc;
use crate::exit::{Conflict, Exit, usage};
use crate::output::{print, print_json};
use crate::table::{Table, or_dash};

/// The paths as a plan's `files` would take them: the same rules, the same length limit.
fn parse_paths(paths: &[String]) -> anyhow::Result<Vec<LockPath>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        br_core::plan::lock_path_length(p).map_err(usage)?;
        out.push(LockPath::parse(p)?);
    }
    Ok(out)
}

pub(super) fn lock(ctx: &Context, args: LockArgs) -> anyhow::Result<Exit> {
    let paths = parse_paths(&args.paths)?;
    let store = ctx.open_store()?;
    let s = store.resolve_session(&args.session)?;
    match store.lock_paths(&s.id, &paths)? {
        LockOutcome::Acquired => {
            if ctx.json {
                print_json(
                    &serde_json::json!({ "acquired": true, "paths": paths, "conflicts": [] }),
                )?;
            } else {
                let names: Vec<&str> = paths.iter().map(LockPath::as_str).collect();
                print(&format!(
                    "locked for session {} ({}): {}\n",
                    esc(&s.name),
                    s.id,
                    names.join(", ")
                ))?;
            }
            Ok(Exit::Success)
        }
        LockOutcome::Conflict(conflicts) => {
            if ctx.json {
                print_json(
                    &serde_json::json!({ "acquired": false, "paths": paths, "conflicts": conflicts }),
                )?;
                return Ok(Exit::LockConflict);
            }
            let mut msg = String::from("nothing locked: ");
            for (i, c) in conflicts.iter().enumerate() {
                if i > 0 {
                    msg.push_str("; ");
                }
                let holder = match &c.held.task_id {
                    Some(t) => format!("task {t} of session {}", c.held.session_id),
                    None => format!("session {}", c.held.session_id),
                };
                let _ = write!(
                    msg,
                    "`{}` overlaps `{}` held by {holder}",
                    c.wanted, c.held.path
                );
            }
            Err(Conflict(msg).into())
        }
    }
}

pub(super) fn unlock(ctx: &Context, args: UnlockArgs) -> anyhow::Result<Exit> {
    let paths = if args.paths.is_empty() {
        None
    } else {
        Some(parse_paths(&args.paths)?)
    };
    let store = ctx.open_store()?;
    let s = store.resolve_session(&args.session)?;
    let released = store.unlock_paths(&s.id, paths.as_deref())?;
    let not_held: Vec<&str> = paths
        .iter()
        .flatten()
        .map(LockPath::as_str)
        .filter(|p| !released.iter().any(|r| r == p))
        .collect();
    if ctx.json {
        print_json(&serde_json::json!({ "released": released, "not_held": not_held }))?;
    } else {
        if released.is_empty() {
            print(&format!(
                "session {} ({}) held no such locks\n",
                esc(&s.name),
                s.id
            ))?;
        } else {
            print(&format!("released: {}\n", released.join(", ")))?;
        }
        if !not_held.is_empty() {
            eprintln!(
                "note: not held by this session: {}",
                esc(not_held.join(", "))
            );
        }
    }
    Ok(Exit::Success)
}

pub(super) fn locks(ctx: &Context) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let locks = LockListView::read(&*store)?;
    if ctx.json {
        print_json(&locks)?;
        return Ok(Exit::Success);
    }
    let locks = locks.0;
    let now = store.now()?;
    let mut table = Table::new(&["PATH", "SESSION", "TASK", "ATTEMPT", "ACQUIRED"]);
    for l in &locks {
        table.row(vec![
            l.path.clone(),
            l.session_id.to_string(),
            or_dash(l.task_id.as_ref()),
            or_dash(l.attempt),
            ago(now.since(l.acquired_at)),
        ]);
    }
    if table.is_empty() {
        print("no locks held\n")?;
    } else {
        print(&table.render())?;
    }
    Ok(Exit::Success)
}
