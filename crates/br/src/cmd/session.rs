//! Commands about sessions: `status`, `list`, `pause`, `resume`, `retry`, `cancel`, `scale`,
//! `wait`, `summary`, `cleanup`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use br_core::outcome::human_bytes;
use br_core::retry::RetryScope;
use br_core::state::SessionAction;
use br_core::time::{ago, short_duration};
use br_core::{Isolation, LandMode, Landing, OutcomeKind, SessionStatus, TaskState};
use br_exec::cleanup::{self, CleanupReport, CleanupScope};
use br_exec::liveness::serving_workers;
use br_exec::watch::{WaitEnd, wait_for_end, wait_for_running_tasks};
use br_store::view::{SessionListView, SummaryView};
use br_store::{Session, SessionFilter, Store};

use crate::cli::{
    CancelArgs, CleanupArgs, ListArgs, MaxLog, ResumeArgs, RetryArgs, ScaleArgs, SessionArg,
    StatusArgs, WaitArgs,
};
use crate::context::Context;
use crate::drive::{
    DriveOptions, default_workers, drive, exit_for, final_report, finish, kill_grace,
};
use crate::escape::esc;
use crate::exit::{Exit, usage};
use crate::output::{count, print, print_json, print_status_json};
use crate::settings;
use crate::table::{Table, or_dash};

/// The session named on the command line, or the newest one.
pub(super) fn find_session(store: &dyn Store, reference: Option<&str>) -> anyhow::Result<Session> {
    match reference {
        Some(r) => Ok(store.resolve_session(r)?),
        None => store
            .list_sessions(&SessionFilter {
                limit: Some(1),
                ..Default::default()
            })?
            .into_iter()
            .next()
            .ok_or_else(|| usage("there are no sessions yet: start one with `br run`")),
    }
}

pub(super) fn status(ctx: &Context, args: StatusArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let s = find_session(&*store, args.session.as_deref())?;
    if ctx.json {
        print_status_json(&*store, &s)?;
        return Ok(Exit::Success);
    }
    let now = store.now()?;
    let mut out = String::new();
    writeln!(
        out,
        "session {} ({})  {}  {}/{} done ({}%), {} running, {} failed, {} skipped",
        esc(&s.name),
        s.id,
        s.status,
        s.finished_tasks(),
        s.total_tasks,
        s.progress_percent,
        s.running_tasks,
        s.failed_tasks,
        s.skipped_tasks
    )?;
    let base = s
        .base_commit
        .as_deref()
        .map_or("-", |c| &c[..c.len().min(12)]);
    let when = match (s.started_at, s.completed_at) {
        (Some(a), Some(b)) => format!("ran {}", short_duration(b.since(a))),
        (Some(a), None) => format!("started {}", ago(now.since(a))),
        _ => format!("created {}", ago(now.since(s.created_at))),
    };
    writeln!(
        out,
        "base {base} · {} isolation · {} wanted · {when}",
        s.isolation,
        crate::output::count(s.workers_wanted, "worker")
    )?;
    let tasks = store.tasks(&s.id)?;
    let lands =
        tasks.iter().any(|t| t.land == LandMode::Auto) && s.isolation == Isolation::Worktree;
    if lands {
        let branch = format!("br/{}/integration", s.slug);
        let tip = s
            .integration_commit
            .as_deref()
            .map_or("nothing yet".to_string(), |c| {
                format!("at {}", &c[..c.len().min(12)])
            });
        writeln!(
            out,
            "landed {}/{} on {} ({tip})",
            s.landed_tasks,
            s.total_tasks,
            esc(&branch)
        )?;
    }
    if let Some(spent) = s.spent_words() {
        writeln!(out, "{spent}")?;
    }
    // What each task spent, once any reported usage; and the pools, for what a ready task of
    // one waits for.
    let costs = tasks.iter().any(|t| !t.usage.is_zero());
    let pools = if tasks.iter().any(|t| t.pool.is_some()) {
        store.pools()?
    } else {
        Vec::new()
    };
    let mut headers = vec!["TASK", "STATE"];
    if lands {
        headers.push("LANDING");
    }
    headers.extend(["ATTEMPT", "WORKER", "EXIT", "TIME"]);
    if costs {
        headers.push("COST");
    }
    headers.extend(["FILES", "NOTE"]);
    let mut table = Table::new(&headers);
    let by_id = by_id(&tasks);
    for t in &tasks {
        let time = match (t.started_at, t.finished_at) {
            (Some(a), Some(b)) => short_duration(b.since(a)),
            (Some(a), None) if t.state == TaskState::Running => short_duration(now.since(a)),
            _ => "-".into(),
        };
        let mut row = vec![t.id.to_string(), t.state.to_string()];
        if lands {
            row.push(t.landing.map_or("-".to_string(), |l| l.to_string()));
        }
        row.extend([
            if t.attempts == 0 {
                "-".into()
            } else {
                t.attempts.to_string()
            },
            or_dash(t.worker_id.as_ref()),
            or_dash(t.exit_code),
            time,
        ]);
        if costs {
            row.push(if t.usage.is_zero() {
                "-".into()
            } else {
                t.usage.cost()
            });
        }
        row.extend([
            if t.files.is_empty() {
                "-".into()
            } else {
                t.files.join(",")
            },
            task_note(t, &by_id, &pools, now),
        ]);
        table.row(row);
    }
    out.push_str(&table.render());
    if args.verbose {
        // Every attempt of the session in one read (one per task was 0.8 s at 20,000 tasks),
        // each task's in order.
        let mut attempts: HashMap<&str, Vec<br_store::SessionAttempt>> = HashMap::new();
        let history = store.history(&s.id)?;
        for a in history.attempts {
            if let Some(t) = by_id.get(a.task_id.as_str()) {
                attempts.entry(t.id.as_str()).or_default().push(a);
            }
        }
        for t in &tasks {
            writeln!(out, "\n{}:\n  run: {}", esc(&t.id), esc(&t.run))?;
            // A task that never ran has no branch yet, whatever its name would be.
            if let Some(b) = t.branch.as_ref().filter(|_| t.attempts > 0) {
                writeln!(out, "  branch: {}", esc(b))?;
            }
            let mut own = attempts.remove(t.id.as_str()).unwrap_or_default();
            own.sort_by_key(|a| a.attempt);
            for a in own {
                let spent = if a.usage.is_zero() {
                    String::new()
                } else {
                    format!(", spent {}", a.usage.describe())
                };
                writeln!(
                    out,
                    "  attempt {} on {}: {}{spent} (log: {})",
                    a.attempt,
                    esc(&a.worker_id),
                    a.outcome.map_or("running", OutcomeKind::as_str),
                    esc(a.log_path.as_deref().unwrap_or("-"))
                )?;
            }
        }
    }
    print(&out)?;
    Ok(Exit::Success)
}

/// A session's tasks by id: the notes look up each task's dependencies, and a session may have
/// tens of thousands of tasks.
type TasksById<'a> = HashMap<&'a str, &'a br_store::Task>;

fn by_id(tasks: &[br_store::Task]) -> TasksById<'_> {
    tasks.iter().map(|t| (t.id.as_str(), t)).collect()
}

/// Why a task is where it is, in a few words.
fn task_note(
    t: &br_store::Task,
    all: &TasksById<'_>,
    pools: &[br_store::Pool],
    now: br_core::Timestamp,
) -> String {
    // A claim asks the pool before the locks (as the dashboards say it).
    if t.state == TaskState::Ready
        && let Some(words) = pools
            .iter()
            .find(|p| Some(p.name.as_str()) == t.pool.as_deref())
            .and_then(|p| p.wait_words(now))
    {
        return words;
    }
    match t.state {
        TaskState::Pending => {
            let waiting: Vec<&str> = t
                .after
                .iter()
                .filter(|a| {
                    all.get(a.as_str()).is_some_and(|o| {
                        o.state != TaskState::Succeeded || o.landing == Some(Landing::Waiting)
                    })
                })
                .map(String::as_str)
                .collect();
            format!("waits for {}", waiting.join(","))
        }
        TaskState::Ready => match t.blocked_by.as_ref().map(|b| b.held_by.first()) {
            Some(Some(holder)) => {
                let who = match &holder.task_id {
                    Some(t) => format!("task {t}"),
                    None => format!("session {}", holder.session_id),
                };
                format!("lock {} held by {who}", holder.path)
            }
            Some(None) => "lock ? held by session ?".to_string(),
            None if t.repairs > 0 && t.outcome == Some(OutcomeKind::Succeeded) => {
                let conflict = t
                    .conflicts
                    .first()
                    .map(|c| format!(": conflict with {} on {}", c.with, c.files.join(", ")))
                    .unwrap_or_default();
                format!("repair {}{conflict}", t.repairs)
            }
            None if t.attempts > 0 => {
                format!("retry after {}", t.outcome.map_or("?", OutcomeKind::as_str))
            }
            None => String::new(),
        },
        TaskState::Failed | TaskState::Cancelled => {
            let mut notes = vec![
                t.outcome
                    .map(|o| o.as_str().to_string())
                    .unwrap_or_default(),
            ];
            if matches!(t.outcome, Some(OutcomeKind::Conflict)) {
                notes.extend(t.merge_notes());
            }
            notes.join("; ")
        }
        TaskState::Skipped => skipped_because(t, all),
        TaskState::Succeeded if t.landing == Some(Landing::Waiting) => {
            let mut notes = vec!["waiting to land".to_string()];
            notes.extend(t.merge_notes());
            notes.join("; ")
        }
        _ => t.merge_notes().join("; "),
    }
}

/// Which dependency a skipped task waited for in vain: one that failed or was cancelled, or one
/// skipped in turn, followed to the task that failed.
fn skipped_because(t: &br_store::Task, all: &TasksById<'_>) -> String {
    let find = |id: &str| all.get(id).copied();
    let Some(dep) = t
        .after
        .iter()
        .filter_map(|a| find(a))
        .find(|d| d.state != TaskState::Succeeded)
    else {
        return "skipped".to_string();
    };
    if dep.state != TaskState::Skipped {
        return format!("skipped: {} {}", dep.id, dep.state);
    }
    // Down the chain of skipped tasks to the one that ended badly; bounded, as a plan's
    // dependencies have no cycle but a damaged store might.
    let mut root = dep;
    for _ in 0..all.len() {
        match root
            .after
            .iter()
            .filter_map(|a| find(a))
            .find(|d| d.state != TaskState::Succeeded)
        {
            Some(next) if next.state == TaskState::Skipped => root = next,
            Some(next) => {
                return format!(
                    "skipped: {} was skipped ({} {})",
                    dep.id, next.id, next.state
                );
            }
            None => break,
        }
    }
    format!("skipped: {} was skipped", dep.id)
}

pub(super) fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let status = args
        .status
        .as_deref()
        .map(str::parse::<SessionStatus>)
        .transpose()
        .map_err(|e| usage(e.to_string()))?;
    let sessions = SessionListView::read(
        &*store,
        &SessionFilter {
            status,
            limit: Some(args.limit),
        },
    )?;
    if ctx.json {
        print_json(&sessions)?;
        return Ok(Exit::Success);
    }
    let sessions = sessions.0;
    let now = store.now()?;
    let mut table = Table::new(&[
        "ID", "NAME", "STATUS", "PROGRESS", "TASKS", "FAILED", "SKIPPED", "LANDED", "CREATED",
    ]);
    for s in &sessions {
        // Tasks whose work is on br/<slug>/integration, landed as the session ran; a shared
        // session has no branches to land.
        let landed = match s.isolation {
            Isolation::Worktree => format!("{}/{}", s.landed_tasks, s.total_tasks),
            Isolation::Shared => "-".to_string(),
        };
        table.row(vec![
            s.id.to_string(),
            s.name.clone(),
            s.status.to_string(),
            format!("{}%", s.progress_percent),
            format!("{}/{}", s.finished_tasks(), s.total_tasks),
            s.failed_tasks.to_string(),
            s.skipped_tasks.to_string(),
            landed,
            ago(now.since(s.created_at)),
        ]);
    }
    if table.is_empty() {
        print("no sessions\n")?;
    } else {
        print(&table.render())?;
    }
    Ok(Exit::Success)
}

fn change(ctx: &Context, reference: &str, action: SessionAction) -> anyhow::Result<Session> {
    let store = ctx.open_store()?;
    let s = store.resolve_session(reference)?;
    let s = store.change_session(&s.id, action)?;
    Ok(s)
}

pub(super) fn pause(ctx: &Context, args: SessionArg) -> anyhow::Result<Exit> {
    let s = change(ctx, &args.session, SessionAction::Pause)?;
    if ctx.json {
        print_json(&s)?;
    } else {
        print(&format!(
            "paused session {} ({}): nothing new starts; {} finish\n",
            esc(&s.name),
            s.id,
            count(s.running_tasks, "running task")
        ))?;
    }
    Ok(Exit::Success)
}

pub(super) fn resume(ctx: &Context, args: ResumeArgs) -> anyhow::Result<Exit> {
    let max_log = settings::max_log(args.drive.max_log)?;
    let store = ctx.open_store()?;
    let s = store.resolve_session(&args.session)?;
    let serve = ServeOptions::check(&args, &s, max_log)?;
    // A session whose `br run` was killed is still `running`: resuming it means serving it
    // again. Paused becomes running; an ended session is refused by the store.
    let s = match s.status {
        SessionStatus::Created | SessionStatus::Running => s,
        _ => store.change_session(&s.id, SessionAction::Resume)?,
    };
    serve_resumed(ctx, &*store, s, &args, serve)
}

/// `br retry`: the store queues the tasks again (and makes the session running), then it goes
/// on exactly as `br resume`.
pub(super) fn retry(ctx: &Context, args: RetryArgs) -> anyhow::Result<Exit> {
    let max_log = settings::max_log(args.resume.drive.max_log)?;
    let store = ctx.open_store()?;
    let s = store.resolve_session(&args.resume.session)?;
    let serve = ServeOptions::check(&args.resume, &s, max_log)?;
    let scope = if args.tasks.is_empty() {
        RetryScope::All
    } else {
        RetryScope::Named(&args.tasks)
    };
    let retried = store.retry_tasks(&s.id, scope)?;
    if !ctx.json {
        let tasks: Vec<String> = retried
            .tasks
            .iter()
            .map(|(t, was)| format!("{t} ({was})"))
            .collect();
        print(&format!(
            "retrying {} of session {} ({}): {}\n",
            count(retried.tasks.len() as u64, "task"),
            esc(&retried.session.name),
            retried.session.id,
            tasks.join(", ")
        ))?;
    }
    serve_resumed(ctx, &*store, retried.session, &args.resume, serve)
}

/// The options of `br resume` and `br retry` that are checked before the session changes, so
/// that a bad one changes nothing: the output limit (before the store is even opened, as every
/// setting), and the kill grace against the session's leases.
#[derive(Debug, Clone, Copy)]
struct ServeOptions {
    max_log: MaxLog,
    kill_grace: Duration,
}

impl ServeOptions {
    fn check(args: &ResumeArgs, s: &Session, max_log: MaxLog) -> anyhow::Result<ServeOptions> {
        Ok(ServeOptions {
            max_log,
            kill_grace: kill_grace(&args.drive, s.heartbeat_timeout())?,
        })
    }
}

/// The rest of `br resume` once the session is running again: nothing more when workers serve
/// it or with `--detach`, else local workers drive it to its end.
fn serve_resumed(
    ctx: &Context,
    store: &dyn Store,
    s: Session,
    args: &ResumeArgs,
    serve: ServeOptions,
) -> anyhow::Result<Exit> {
    let serving = serving_workers(store, &s)?;
    if args.detach || serving > 0 {
        if !ctx.json {
            print(&format!(
                "resumed session {} ({}); {} serving it\n",
                esc(&s.name),
                s.id,
                count(serving as u64, "worker")
            ))?;
        } else {
            print_json(&s)?;
        }
        return Ok(Exit::Success);
    }
    let workers = args.drive.workers.unwrap_or(if s.workers_wanted > 0 {
        s.workers_wanted
    } else {
        default_workers(None)
    });
    if !ctx.json {
        print(&format!(
            "resuming session {} ({}): {} of {} left, {}\n",
            esc(&s.name),
            s.id,
            s.total_tasks - s.finished_tasks(),
            count(s.total_tasks, "task"),
            count(workers, "worker")
        ))?;
    }
    let opts = DriveOptions {
        workers,
        plain: args.drive.no_dashboard,
        heartbeat_interval: args.drive.heartbeat_interval,
        kill_grace: serve.kill_grace,
        max_log: serve.max_log,
        from_seq: store.last_seq()?,
    };
    let exit = drive(ctx, store, &s, &opts)?;
    finish(ctx, store, &s, exit)
}

pub(super) fn cancel(ctx: &Context, args: CancelArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store()?;
    let s = store.resolve_session(&args.session)?;
    let s = store.change_session(&s.id, SessionAction::Cancel)?;
    let mut s = s;
    if !args.force && s.running_tasks > 0 {
        if !ctx.json {
            print(&format!(
                "cancelling session {} ({}): stopping {}…\n",
                esc(&s.name),
                s.id,
                count(s.running_tasks, "running task")
            ))?;
        }
        // Workers see the cancellation at their next heartbeat; dead workers' tasks end when
        // their leases expire. Wait for both, within reason.
        let limit = s.heartbeat_timeout() * 2 + Duration::from_secs(30);
        s = match wait_for_running_tasks(&*store, &s.id, limit)? {
            WaitEnd::Ended(s) | WaitEnd::TimedOut(s) => s,
        };
    }
    if ctx.json {
        print_json(&s)?;
    } else if s.running_tasks > 0 {
        print(&format!(
            "cancelled session {} ({}); {} still stopping\n",
            esc(&s.name),
            s.id,
            count(s.running_tasks, "task")
        ))?;
    } else {
        print(&format!(
            "cancelled session {} ({}): {} cancelled, {} succeeded before\n",
            esc(&s.name),
            s.id,
            count(s.cancelled_tasks, "task"),
            s.succeeded_tasks
        ))?;
    }
    Ok(Exit::Success)
}

pub(super) fn scale(ctx: &Context, args: ScaleArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store()?;
    let s = store.resolve_session(&args.session)?;
    store.set_workers_wanted(&s.id, args.workers)?;
    let serving = serving_workers(&*store, &s)?;
    if ctx.json {
        print_json(
            &serde_json::json!({ "session_id": s.id, "workers_wanted": args.workers, "workers_live": serving }),
        )?;
    } else if serving == 0 {
        print(&format!(
            "session {} ({}) will keep {} workers, but no `br run` is serving it now: \
             the change applies when one does (br resume {})\n",
            esc(&s.name),
            s.id,
            args.workers,
            s.id
        ))?;
    } else {
        print(&format!(
            "session {} ({}): {} → {} workers (idle ones leave first)\n",
            esc(&s.name),
            s.id,
            serving,
            args.workers
        ))?;
    }
    Ok(Exit::Success)
}

pub(super) fn wait(ctx: &Context, args: WaitArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let s = store.resolve_session(&args.session)?;
    match wait_for_end(&*store, &s.id, args.timeout)? {
        WaitEnd::Ended(s) => {
            if ctx.json {
                print_status_json(&*store, &s)?;
            } else {
                let mut out = std::io::stdout().lock();
                final_report(&*store, &s, &mut out)?;
            }
            Ok(exit_for(&s))
        }
        WaitEnd::TimedOut(s) => {
            eprintln!(
                "error: session {} ({}) is still {} after {}",
                esc(&s.name),
                s.id,
                s.status,
                humantime::format_duration(args.timeout.unwrap_or_default())
            );
            Ok(Exit::WaitTimedOut)
        }
    }
}

pub(super) fn summary(ctx: &Context) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let s = store.summary()?;
    if ctx.json {
        print_json(&SummaryView::from(&s))?;
        return Ok(Exit::Success);
    }
    let mut text = format!(
        "workers   {} total: {} idle, {} busy, {} offline · utilization {:.0}%\n\
         sessions  {} active of {}\n\
         tasks     {} queued, {} running, {} completed, {} failed\n",
        s.workers.total,
        s.workers.idle,
        s.workers.busy,
        s.workers.offline,
        s.workers.utilization * 100.0,
        s.sessions.active,
        s.sessions.total,
        s.tasks.queued,
        s.tasks.running,
        s.tasks.completed,
        s.tasks.failed
    );
    // What every session's attempts spent, once any reported usage.
    if !s.usage.is_zero() {
        text.push_str(&format!("spent     {} tokens\n", s.usage.describe()));
    }
    print(&text)?;
    Ok(Exit::Success)
}

/// `br cleanup`: reconciles br's worktree slots with git's registrations (keeping what dead
/// attempts left, removing free slots), removes the seeds of kept caches, then deletes finished sessions older than `--days` with
/// their logs and those of their refs whose commits are all merged; refs holding unmerged work
/// are kept and listed. Never touches the user's own branches or worktrees. The dry run shows
/// the plan; the real run applies that same plan.
pub(super) fn cleanup(ctx: &Context, args: CleanupArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store()?;
    // A store given with --store may be used outside a repository: then there are no worktrees
    // or refs to look at, only records and logs.
    let repo = ctx.repo().ok();
    let log_dir = ctx.log_dir().ok();
    let session = args
        .session
        .as_deref()
        .map(|reference| store.resolve_session(reference).map(|s| s.id))
        .transpose()?;
    let scope = CleanupScope {
        older_than_days: args.days,
        session,
    };
    let plan = cleanup::plan(&*store, repo, log_dir.as_deref(), scope)?;
    let report = if args.dry_run {
        plan
    } else {
        cleanup::apply(&*store, repo, &plan)?
    };
    if ctx.json {
        print_json(&report)?;
    } else {
        print(&cleanup_text(&report, args.days, args.session.is_some())?)?;
    }
    Ok(Exit::Success)
}

fn cleanup_text(report: &CleanupReport, days: u32, one: bool) -> anyhow::Result<String> {
    use crate::output::count;
    let dry = report.dry_run;
    let would = |done: &'static str, planned: &'static str| if dry { planned } else { done };
    let verb = would("deleted", "would delete");
    let mut out = String::new();
    if let Some(w) = &report.worktrees {
        for saved in &w.saved {
            writeln!(
                out,
                "{} what an interrupted attempt left in {} at {}",
                would("kept", "would keep"),
                esc(saved.slot.display()),
                esc(&saved.reference)
            )?;
        }
        for path in &w.pruned {
            writeln!(
                out,
                "{} the registration of missing worktree {}",
                would("pruned", "would prune"),
                esc(path.display())
            )?;
        }
        for path in &w.removed {
            writeln!(
                out,
                "{} free worktree slot {}",
                would("removed", "would remove"),
                esc(path.display())
            )?;
        }
        for path in &w.in_use {
            writeln!(
                out,
                "left alone: {} (in use by a live worker)",
                esc(path.display())
            )?;
        }
        for path in &w.other {
            writeln!(
                out,
                "left alone: {} (not a br worktree slot)",
                esc(path.display())
            )?;
        }
        if !w.removed.is_empty() || !w.in_use.is_empty() {
            writeln!(
                out,
                "worktree slots: {} {}, {} in use",
                human_bytes(w.removed_bytes),
                if report.dry_run {
                    "to reclaim"
                } else {
                    "reclaimed"
                },
                human_bytes(w.in_use_bytes)
            )?;
        }
        for path in &w.seeds {
            writeln!(
                out,
                "{} seed of kept caches {}",
                would("removed", "would remove"),
                esc(path.display())
            )?;
        }
        if !w.seeds.is_empty() {
            // Slots cloned from a seed share its blocks: those stay in use as long as the
            // slots keep them, so the seeds' size is what cleanup gives back at most.
            writeln!(
                out,
                "seeds of kept caches: {} {}, less what slots still share with them",
                human_bytes(w.seeds_bytes),
                if report.dry_run {
                    "to reclaim"
                } else {
                    "reclaimed"
                }
            )?;
        }
    }
    for s in &report.sessions {
        writeln!(
            out,
            "{verb} session {} ({}, {}){}",
            esc(&s.name),
            s.session_id,
            s.status,
            s.logs
                .as_ref()
                .map(|l| format!(" and its logs {}", esc(l.display())))
                .unwrap_or_default()
        )?;
        if let Some(root) = &s.other_repository {
            writeln!(
                out,
                "  its refs were not examined: it ran in another repository ({})",
                esc(root)
            )?;
        }
        for r in &s.refs {
            let name = r
                .reference
                .strip_prefix("refs/heads/")
                .unwrap_or(&r.reference);
            let name = match &r.remote {
                Some(remote) => format!("{name} on {remote}"),
                None => name.to_string(),
            };
            let (name, reason) = (esc(&name), esc(&r.reason));
            if r.action == "delete" {
                writeln!(out, "  {verb} {name} ({reason})")?;
            } else if r.foreign {
                writeln!(out, "  left alone: {name} ({reason})")?;
            } else if r.unmerged_commits.is_some() {
                writeln!(out, "  kept: {name} {reason}")?;
            } else {
                writeln!(out, "  kept: {name} ({reason})")?;
            }
        }
    }
    let kept_refs = report.kept_refs();
    if kept_refs > 0 {
        writeln!(
            out,
            "{} kept because deleting them would lose work; delete one yourself with \
             `git update-ref -d REF` (or `git branch -D BRANCH`) when it is no longer needed",
            count(u64::try_from(kept_refs).unwrap_or(u64::MAX), "ref")
        )?;
    }
    let sessions = count(
        u64::try_from(report.sessions.len()).unwrap_or(u64::MAX),
        "finished session",
    );
    let workers = count(report.workers_pruned, "stale worker record");
    if one {
        writeln!(
            out,
            "{verb} {sessions}; {} {workers}",
            would("pruned", "would prune")
        )?;
    } else {
        writeln!(
            out,
            "{verb} {sessions} older than {}; {} {workers}",
            count(days, "day"),
            would("pruned", "would prune"),
        )?;
        // What was left, and why, so that nobody wonders where a session went or why it is
        // still listed.
        let kept = &report.kept_sessions;
        let mut why = Vec::new();
        if kept.unfinished > 0 {
            why.push(format!("{} not ended", count(kept.unfinished, "session")));
        }
        if kept.recent > 0 {
            why.push(format!(
                "{} ended within the last {} (`--days 0` or `br cleanup SESSION` for those)",
                count(kept.recent, "session"),
                count(days, "day")
            ));
        }
        if kept.remote_unreachable > 0 {
            why.push(format!(
                "{} whose git remote could not be reached (they go, with their refs there, once                  it answers)",
                count(kept.remote_unreachable, "session")
            ));
        }
        if !why.is_empty() {
            writeln!(out, "kept: {}", why.join("; "))?;
        }
    }
    Ok(out)
}
