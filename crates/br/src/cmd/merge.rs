//! `br merge` (land a session's task branches on its integration branch, or `--check` what would
//! land; `--into` fast-forwards a branch to the result), and the merge rounds of `br run --merge`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use br_exec::merge::{
    Landing, MergeError, MergeMode, MergeOptions, MergeReport, Requeue, merge_session,
    requeue_refused,
};
use br_git::promote::{
    IntoReport, IntoResult, PromoteError, PromoteMode, fast_forward, local_branch,
};
use br_git::refs::RefError;
use br_store::{Session, Store};
use signal_hook::SigId;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cli::MergeArgs;
use crate::cmd::{print, print_json};
use crate::context::Context;
use crate::drive::{DriveOptions, drive, final_report};
use crate::exit::{Exit, usage};

pub fn merge(ctx: &Context, args: MergeArgs) -> anyhow::Result<Exit> {
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
    let stop = StopOnSignal::install()?;
    let options = MergeOptions {
        mode,
        reaper: Some(reaper_argv()?),
        stop: stop.flag(),
        kill_grace: args.kill_grace,
    };
    let mut report = match merge_session(&*store, repo, &session, &options) {
        Ok(report) => report,
        Err(MergeError::Interrupted) => return Ok(interrupted(&session)),
        Err(e) => return Err(merge_error(e)),
    };
    requeue_refused(&*store, &session, &mut report).map_err(merge_error)?;
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
        eprintln!("error: --into {branch} refused: {reason}");
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

/// `br run --merge`, after the session's first drive ended (not interrupted): merges; while
/// `on_conflict = "requeue"` queued tasks again, runs them again with the same local pool and
/// merges again. A round after the first requeues only if it landed something, and there are at
/// most one more rounds than tasks, so a task that can never land does not loop forever.
/// Exit 0 iff every task succeeded and landed.
pub fn merge_after_run(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
    first: Exit,
) -> anyhow::Result<Exit> {
    let repo = ctx.repo()?;
    if !ctx.json {
        let mut out = std::io::stdout().lock();
        final_report(store, &store.session(&session.id)?, &mut out)?;
    }
    let stop = StopOnSignal::install()?;
    let options = MergeOptions {
        mode: MergeMode::Land,
        reaper: Some(reaper_argv()?),
        stop: stop.flag(),
        kill_grace: opts.kill_grace,
    };
    let max_rounds = session.total_tasks.saturating_add(1);
    let mut round = 1u32;
    if first == Exit::Interrupted {
        return Ok(first);
    }
    let report = loop {
        let s = store.session(&session.id)?;
        let mut report = match merge_session(store, repo, &s, &options) {
            Ok(report) => report,
            Err(MergeError::Interrupted) => return Ok(interrupted(&s)),
            Err(e) => return Err(merge_error(e)),
        };
        if round < max_rounds && (round == 1 || report.landed_now() > 0) {
            requeue_refused(store, &s, &mut report).map_err(merge_error)?;
        }
        if !ctx.json {
            let mut text = String::new();
            if round > 1 {
                writeln!(text, "merge round {round}:")?;
            }
            write_report(&mut text, &s, &report)?;
            print(&text)?;
        }
        let requeued = report.requeued();
        if requeued == 0 {
            break report;
        }
        if !ctx.json {
            print(&format!(
                "running {requeued} requeued task(s) again on top of {}\n",
                report.integration_branch()
            ))?;
        }
        let again = DriveOptions {
            from_seq: store.last_seq()?,
            ..opts.clone()
        };
        let s = store.session(&session.id)?;
        if drive(ctx, store, &s, &again)? == Exit::Interrupted {
            return Ok(Exit::Interrupted);
        }
        if !ctx.json {
            let mut out = std::io::stdout().lock();
            final_report(store, &store.session(&session.id)?, &mut out)?;
        }
        round += 1;
    };
    let s = store.session(&session.id)?;
    if ctx.json {
        let mut value = crate::cmd::session::status_json(store, &s)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("merge".into(), report_json(&s, &report, None));
            map.insert("merge_rounds".into(), round.into());
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
        session.name, session.id, session.slug, session.id
    );
    Exit::Interrupted
}

fn reaper_argv() -> anyhow::Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().context("cannot find the br executable")?;
    Ok(vec![exe.into_os_string(), "__reaper".into()])
}

/// A stop flag set by SIGINT, SIGTERM and SIGHUP for as long as it lives: a verify command is
/// then terminated (TERM, grace, KILL) instead of br dying under it.
struct StopOnSignal {
    flag: Arc<AtomicBool>,
    ids: Vec<SigId>,
}

impl StopOnSignal {
    fn install() -> anyhow::Result<StopOnSignal> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            ids.push(
                signal_hook::flag::register(signal, Arc::clone(&flag))
                    .context("cannot install signal handlers")?,
            );
        }
        Ok(StopOnSignal { flag, ids })
    }

    fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
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
            s.name,
            s.id,
            short(s.base_commit.as_deref().unwrap_or("?"))
        )?,
        (Some(_), true) => writeln!(
            out,
            "checking session {} ({}) against {branch}",
            s.name, s.id
        )?,
        (Some(_), false) if report.created => writeln!(
            out,
            "merging session {} ({}) onto {branch} (created at the base {})",
            s.name,
            s.id,
            short(s.base_commit.as_deref().unwrap_or("?"))
        )?,
        (Some(_), false) => writeln!(out, "merging session {} ({}) onto {branch}", s.name, s.id)?,
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
                        format!("merge {} (verified; log: {})", short(commit), log.display())
                    }
                    None => format!("merge {}", short(commit)),
                },
            ),
            Landing::AlreadyLanded => ("already landed", String::new()),
            Landing::WouldLand => ("would land", String::new()),
            Landing::Conflict { files } => (
                if check { "would conflict" } else { "conflict" },
                format!("in {}", files.join(", ")),
            ),
            Landing::VerifyFailed { log_path, outcome } => (
                "verify failed",
                format!("{} (log: {})", outcome.describe(), log_path.display()),
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
            Requeue::Refused { reason } => write!(line, "; not requeued: {reason}")?,
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
            "{landed} of {} task(s) would be on {branch}",
            report.tasks.len()
        )?;
    } else {
        writeln!(
            out,
            "{branch} is at {}: {landed} of {} task(s) landed ({} now)",
            short(report.integration_commit.as_deref().unwrap_or("?")),
            report.tasks.len(),
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
        writeln!(
            out,
            "a task that did not land keeps its branch; merge it by hand, or set on_conflict = \"requeue\" to have it redone on top of {}",
            report.integration_branch()
        )?;
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
