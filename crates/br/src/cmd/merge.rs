//! `br merge` (land a session's task branches on its integration branch, or `--check` what would
//! land; `--into` fast-forwards a branch to the result), and the merge rounds of `br run --merge`.

use std::fmt::Write as _;

use anyhow::Context as _;
use br_exec::merge::{
    Landing, MergeError, MergeMode, MergeOptions, MergeReport, Requeue, RoundEvent, RoundsEnd,
    RoundsError, merge_rounds, merge_session, pause_if_unserved, requeue_refused,
};
use br_exec::signals::Interrupts;
use br_git::promote::{
    IntoReport, IntoResult, PromoteError, PromoteMode, fast_forward, local_branch,
};
use br_git::refs::RefError;
use br_store::{Session, Store};

use crate::cli::MergeArgs;
use crate::context::Context;
use crate::drive::{DriveOptions, final_report, library_options, show_event};
use crate::escape::esc;
use crate::exit::{Exit, usage};
use crate::output::{count, print, print_json};
use crate::progress::{Progress, Style};

pub(super) fn merge(ctx: &Context, args: MergeArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store()?;
    let repo = ctx.repo()?;
    let session = store.resolve_session(&args.session)?;
    // A missing --into branch is bad input: say so before anything is merged.
    if let Some(branch) = &args.into {
        local_branch(repo, branch).map_err(|e| merge_error(e.into()))?;
    }
    let mode = if args.check {
        MergeMode::Check
    } else {
        MergeMode::Land
    };
    let stop = Interrupts::new();
    let _signals = stop
        .on_signals()
        .context("cannot install signal handlers")?;
    let options = MergeOptions {
        mode,
        reaper: Some(reaper_argv()?),
        stop,
        kill_grace: args.kill_grace,
    };
    // With a remote, the session's branches are there: any machine merges what landed.
    br_exec::travel::adopt_session(repo, &session).map_err(|e| anyhow::anyhow!(e))?;
    let mut report = match merge_session(&*store, repo, &session, &options) {
        Ok(report) => report,
        Err(MergeError::Interrupted) => return Ok(interrupted(&session)),
        Err(e) => return Err(merge_error(e)),
    };
    if mode == MergeMode::Land && report.landed_now() > 0 {
        br_exec::travel::publish_merge(repo, &session, &report.result_commit).map_err(|e| {
            anyhow::anyhow!("landed here, but cannot publish it on the remote: {e}")
        })?;
    }
    let requeued = requeue_refused(&*store, &session, &mut report).map_err(merge_error)?;
    // Requeued tasks make the session active again; with no worker serving it, it would sit
    // `running` with nobody to run it. Paused says what is true: it waits for `br resume`.
    let paused = requeued > 0 && pause_if_unserved(&*store, &session).map_err(merge_error)?;
    let into = match &args.into {
        Some(branch) => {
            let promote = match mode {
                MergeMode::Land => PromoteMode::Apply,
                MergeMode::Check => PromoteMode::Check,
            };
            Some(
                fast_forward(repo, branch, &report.result_commit, promote)
                    .map_err(|e| merge_error(e.into()))?,
            )
        }
        None => None,
    };
    if let Some(IntoReport {
        branch,
        result: IntoResult::Refused { reason },
        ..
    }) = &into
    {
        eprintln!("error: --into {} refused: {}", esc(branch), esc(reason));
    }
    if ctx.json {
        print_json(&report_json(&session, &report, into.as_ref()))?;
    } else {
        let mut text = String::new();
        write_report(&mut text, &session, &report)?;
        if let Some(into) = &into {
            write_into(&mut text, into)?;
        }
        write_hints(&mut text, &session, &report)?;
        if paused {
            writeln!(
                text,
                "no worker serves session {}: it is paused until `br resume {}` runs the requeued tasks",
                session.id, session.id
            )?;
        }
        print(&text)?;
    }
    let into_ok = into
        .as_ref()
        .is_none_or(|i| !matches!(i.result, IntoResult::Refused { .. }));
    Ok(if report.all_landed() && into_ok {
        Exit::Success
    } else {
        Exit::SessionFailed
    })
}

/// `br run --merge`, after the session's first drive ended (not interrupted): the merge rounds
/// (`br_exec::merge::merge_rounds`), printed as they go. Exit 0 iff every task succeeded and
/// landed.
pub(super) fn merge_after_run(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
    first: Exit,
) -> anyhow::Result<Exit> {
    if first == Exit::Interrupted {
        return Ok(first);
    }
    let repo = ctx.repo()?;
    if !ctx.json {
        let mut out = std::io::stdout().lock();
        final_report(store, &store.session(&session.id)?, &mut out)?;
    }
    let interrupts = Interrupts::new();
    let _signals = interrupts
        .on_signals()
        .context("cannot install signal handlers")?;
    let merge = MergeOptions {
        mode: MergeMode::Land,
        reaper: Some(reaper_argv()?),
        stop: interrupts.clone(),
        kill_grace: opts.kill_grace,
    };
    let rerun = library_options(ctx, opts)?;
    let mut progress = Progress::new(
        std::io::stdout(),
        if ctx.json { Style::Quiet } else { Style::Lines },
    );
    let end = merge_rounds(
        store,
        repo,
        session,
        &merge,
        &rerun,
        &interrupts,
        &mut |event| match event {
            RoundEvent::Merged {
                round,
                session,
                report,
            } if !ctx.json => {
                let mut text = String::new();
                if round > 1 {
                    let _ = writeln!(text, "merge round {round}:");
                }
                write_report(&mut text, session, report).map_err(std::io::Error::other)?;
                progress.note(text.trim_end())
            }
            RoundEvent::Rerunning {
                requeued,
                integration_branch,
            } if !ctx.json => progress.note(&format!(
                "running {} again on top of {integration_branch}",
                count(requeued as u64, "requeued task")
            )),
            RoundEvent::Drive(event) => show_event(&mut progress, &event),
            RoundEvent::RerunEnded(s) if !ctx.json => {
                progress.finish()?;
                let mut out = std::io::stdout().lock();
                final_report(store, s, &mut out).map_err(std::io::Error::other)
            }
            _ => Ok(()),
        },
    );
    let (s, report, rounds) = match end {
        Ok(RoundsEnd::Done {
            session,
            report,
            rounds,
        }) => (session, report, rounds),
        Ok(RoundsEnd::Interrupted(s)) => return Ok(interrupted(&s)),
        Err(RoundsError::Merge(e)) => return Err(merge_error(e)),
        Err(RoundsError::Drive(e)) => return Err(e.into()),
    };
    progress.finish()?;
    if ctx.json {
        let mut value = crate::output::status_json(store, &s)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("merge".into(), report_json(&s, &report, None));
            map.insert("merge_rounds".into(), rounds.into());
        }
        print_json(&value)?;
    } else {
        let mut text = String::new();
        write_hints(&mut text, &s, &report)?;
        print(&text)?;
    }
    Ok(
        if s.status == br_core::SessionStatus::Completed && report.all_landed() {
            Exit::Success
        } else {
            Exit::SessionFailed
        },
    )
}

/// Library errors the user can fix become bad input (exit 2); store and git errors keep their
/// type so the exit code follows them.
fn merge_error(e: MergeError) -> anyhow::Error {
    match e {
        MergeError::SharedIsolation { .. }
        | MergeError::Promote(PromoteError::NoSuchBranch { .. })
        | MergeError::IntegrationCheckedOut { .. } => usage(e.to_string()),
        MergeError::Store(e) => e.into(),
        MergeError::Git(e)
        | MergeError::Ref(RefError::Git(e))
        | MergeError::Promote(PromoteError::Git(e) | PromoteError::Ref(RefError::Git(e))) => {
            e.into()
        }
        other => anyhow::Error::new(other),
    }
}

fn interrupted(session: &Session) -> Exit {
    eprintln!(
        "interrupted: the merge of session {} ({}) stopped; what landed stays on br/{}/integration. \
         Continue with: br merge {}",
        esc(&session.name),
        session.id,
        esc(&session.slug),
        session.id
    );
    Exit::Interrupted
}

fn reaper_argv() -> anyhow::Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().context("cannot find the br executable")?;
    Ok(vec![exe.into_os_string(), "__reaper".into()])
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn write_report(out: &mut String, s: &Session, report: &MergeReport) -> anyhow::Result<()> {
    let branch = report.integration_branch();
    let check = report.mode == MergeMode::Check;
    match (&report.integration_commit, check) {
        (None, _) => writeln!(
            out,
            "checking session {} ({}) against {branch} (not created yet: it would start at the base {})",
            esc(&s.name),
            s.id,
            short(s.base_commit.as_deref().unwrap_or("?"))
        )?,
        (Some(_), true) => writeln!(
            out,
            "checking session {} ({}) against {branch}",
            esc(&s.name),
            s.id
        )?,
        (Some(_), false) if report.created => writeln!(
            out,
            "merging session {} ({}) onto {branch} (created at the base {})",
            esc(&s.name),
            s.id,
            short(s.base_commit.as_deref().unwrap_or("?"))
        )?,
        (Some(_), false) => writeln!(
            out,
            "merging session {} ({}) onto {branch}",
            esc(&s.name),
            s.id
        )?,
    }
    let width = report
        .tasks
        .iter()
        .map(|t| t.task.as_str().len())
        .max()
        .unwrap_or(0);
    for t in &report.tasks {
        let (word, note) = match &t.landing {
            Landing::Landed { commit, verify_log } => (
                "landed",
                match verify_log {
                    Some(log) => {
                        format!(
                            "merge {} (verified; log: {})",
                            short(commit),
                            esc(log.display())
                        )
                    }
                    None => format!("merge {}", short(commit)),
                },
            ),
            Landing::AlreadyLanded => ("already landed", String::new()),
            Landing::Unchanged => ("changed nothing", String::new()),
            Landing::WouldLand => ("would land", String::new()),
            Landing::Conflict { files } => (
                if check { "would conflict" } else { "conflict" },
                // File names come from the repository: git allows a newline in them.
                format!("in {}", esc(files.join(", "))),
            ),
            Landing::VerifyFailed { log_path, outcome } => (
                "verify failed",
                format!(
                    "{} (log: {})",
                    esc(outcome.describe()),
                    esc(log_path.display())
                ),
            ),
            Landing::NotSucceeded => ("not landed", format!("task {}", t.state)),
            Landing::NoBranch => ("not landed", format!("its branch {} is gone", t.branch)),
        };
        let mut line = format!("  {word:<15} {:<width$}", t.task.as_str());
        if !note.is_empty() {
            line.push_str("  ");
            line.push_str(&note);
        }
        match &t.requeue {
            Requeue::No => {}
            Requeue::Queued {
                base_commit,
                attempt,
            } => write!(
                line,
                "; requeued: attempt {attempt} starts from {}",
                short(base_commit)
            )?,
            Requeue::Refused { reason } => write!(line, "; not requeued: {}", esc(reason))?,
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    let landed = report
        .tasks
        .iter()
        .filter(|t| t.landing.is_landed())
        .count();
    if check {
        if let Some(verify) = &report.verify {
            writeln!(out, "verify = {verify:?} is not run by --check")?;
        }
        writeln!(
            out,
            "{landed} of {} would be on {branch}",
            count(report.tasks.len() as u64, "task")
        )?;
    } else {
        writeln!(
            out,
            "{branch} is at {}: {landed} of {} landed ({} now)",
            short(report.integration_commit.as_deref().unwrap_or("?")),
            count(report.tasks.len() as u64, "task"),
            report.landed_now()
        )?;
    }
    Ok(())
}

fn write_into(out: &mut String, into: &IntoReport) -> anyhow::Result<()> {
    let at = into
        .worktree
        .as_ref()
        .map(|w| format!(" (and its checkout at {})", w.display()))
        .unwrap_or_default();
    match &into.result {
        IntoResult::FastForwarded => writeln!(
            out,
            "{}: fast-forwarded {} → {}{at}",
            into.branch,
            short(&into.from),
            short(&into.to)
        )?,
        IntoResult::UpToDate => writeln!(out, "{}: already at {}", into.branch, short(&into.to))?,
        IntoResult::WouldFastForward => writeln!(
            out,
            "{}: would fast-forward {} → {}{at}",
            into.branch,
            short(&into.from),
            short(&into.to)
        )?,
        IntoResult::Refused { reason } => writeln!(
            out,
            "{}: not fast-forwarded, left at {}: {reason}",
            into.branch,
            short(&into.from)
        )?,
    }
    Ok(())
}

/// What to do next, when something did not land.
fn write_hints(out: &mut String, s: &Session, report: &MergeReport) -> anyhow::Result<()> {
    if report.mode == MergeMode::Land && report.requeued() > 0 {
        writeln!(
            out,
            "requeued tasks run when workers serve the session (`br resume {}`); then `br merge {}` lands them",
            s.id, s.id
        )?;
    }
    let unresolved = report
        .tasks
        .iter()
        .any(|t| t.landing.is_refused() && t.requeue == Requeue::No);
    if unresolved && report.mode == MergeMode::Land {
        if s.on_conflict == br_core::OnConflict::Requeue {
            writeln!(
                out,
                "a task that did not land after its repairs keeps its branch; merge it into {} by hand, or `br retry {}` to run it again",
                report.integration_branch(),
                s.id
            )?;
        } else {
            writeln!(
                out,
                "a task that did not land keeps its branch; merge it by hand, or set on_conflict = \"requeue\" to have it redone on top of {}",
                report.integration_branch()
            )?;
        }
    }
    Ok(())
}

fn report_json(s: &Session, report: &MergeReport, into: Option<&IntoReport>) -> serde_json::Value {
    let tasks: Vec<serde_json::Value> = report
        .tasks
        .iter()
        .map(|t| {
            let (files, log_path, outcome, merge_commit) = match &t.landing {
                Landing::Conflict { files } => (files.clone(), None, None, None),
                Landing::VerifyFailed { log_path, outcome } => (
                    Vec::new(),
                    Some(log_path.display().to_string()),
                    Some(outcome.describe()),
                    None,
                ),
                Landing::Landed { commit, verify_log } => (
                    Vec::new(),
                    verify_log.as_ref().map(|l| l.display().to_string()),
                    None,
                    Some(commit.clone()),
                ),
                _ => (Vec::new(), None, None, None),
            };
            let (requeue, refused) = match &t.requeue {
                Requeue::No => (serde_json::Value::Null, None),
                Requeue::Queued {
                    base_commit,
                    attempt,
                } => (
                    serde_json::json!({ "attempt": attempt, "base_commit": base_commit }),
                    None,
                ),
                Requeue::Refused { reason } => (serde_json::Value::Null, Some(reason.clone())),
            };
            serde_json::json!({
                "id": t.task,
                "state": t.state,
                "branch": t.branch,
                "commit": t.commit,
                "result": t.landing.as_str(),
                "merge_commit": merge_commit,
                "files": files,
                "log_path": log_path,
                "verify_outcome": outcome,
                "requeued": matches!(t.requeue, Requeue::Queued { .. }),
                "requeue": requeue,
                "requeue_refused": refused,
            })
        })
        .collect();
    serde_json::json!({
        "session_id": s.id,
        "session_name": s.name,
        "check": report.mode == MergeMode::Check,
        "integration": {
            "ref": report.integration_ref,
            "branch": report.integration_branch(),
            "commit": report.integration_commit,
            "created": report.created,
        },
        "result_commit": report.result_commit,
        "verify": report.verify,
        "all_landed": report.all_landed(),
        "tasks": tasks,
        "into": into.map(|i| serde_json::json!({
            "branch": i.branch,
            "result": i.result.as_str(),
            "from": i.from,
            "to": i.to,
            "worktree": i.worktree.as_ref().map(|w| w.display().to_string()),
            "reason": match &i.result { IntoResult::Refused { reason } => Some(reason.clone()), _ => None },
        })),
    })
}
