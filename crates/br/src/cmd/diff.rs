//! `br diff [SESSION] TASK [--attempt K] [--stat]`: what an attempt changed, against the commit
//! it started from — by default the attempt that landed, else the latest.

use std::io::Write;

use br_core::{Landing, OutcomeKind};
use br_store::AttemptRecord;

use crate::cli::DiffArgs;
use crate::context::Context;
use crate::exit::{Exit, usage};

pub(super) fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let (session, task) = super::session_and_task(&*store, &args.names)?;
    // With a remote, the attempt may have run (and landed) on another machine.
    let repo = ctx.repo()?;
    br_exec::travel::adopt_session(repo, &session).map_err(|e| anyhow::anyhow!(e))?;
    let record = store.task(&session.id, &task)?;
    let attempts = store.attempts(&session.id, &task)?;
    if attempts.is_empty() {
        return Err(usage(format!(
            "task {task} of session {} has not run yet",
            session.id
        )));
    }
    let chosen = pick(
        &attempts,
        args.attempt,
        record.landing == Some(Landing::Landed),
    )
    .ok_or_else(|| {
        usage(format!(
            "task {task} has no attempt {} (it has 1 to {})",
            args.attempt.unwrap_or(0),
            attempts.len()
        ))
    })?;
    let Some(commit) = chosen.detail.get("commit").and_then(|c| c.as_str()) else {
        return Err(usage(format!(
            "attempt {} of {task} kept no commit: it changed nothing, or it has not ended, or it \
             ran in shared isolation",
            chosen.attempt
        )));
    };
    let from = chosen
        .start_commit
        .clone()
        .or_else(|| session.base_commit.clone())
        .ok_or_else(|| {
            usage(format!(
                "attempt {} of {task} has no start commit",
                chosen.attempt
            ))
        })?;
    let repo = ctx.repo()?;
    let mut git_args = vec!["diff", "--no-color", "--no-ext-diff", "--find-renames"];
    if args.stat {
        git_args.push("--stat");
    }
    git_args.extend([from.as_str(), commit]);
    let text = repo.git().run_raw(&git_args).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "cannot show attempt {} of {task}: are its commits in this clone?",
            chosen.attempt
        ))
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(&text)?;
    out.flush()?;
    Ok(Exit::Success)
}

/// The attempt asked for; else the one that landed (the latest success) when the task landed;
/// else the latest.
fn pick(attempts: &[AttemptRecord], asked: Option<u32>, landed: bool) -> Option<&AttemptRecord> {
    if let Some(k) = asked {
        return attempts.iter().find(|a| a.attempt.0 == k);
    }
    if landed
        && let Some(a) = attempts
            .iter()
            .rev()
            .find(|a| a.outcome == Some(OutcomeKind::Succeeded))
    {
        return Some(a);
    }
    attempts.last()
}
