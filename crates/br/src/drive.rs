//! Driving a session from this terminal: `br run`, `br start`, `br resume` and `br demo` end
//! here. The lifecycle itself is br-exec's (`br_exec::drive`); this module turns the command's
//! arguments into its options, shows its events as progress lines or hands the terminal to the
//! live dashboard, and turns how it ended into a message and an exit code.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use br_core::SessionStatus;
use br_core::time::short_duration;
use br_exec::drive::{DriveEnd, DriveEvent, error_chain};
use br_exec::signals::Interrupts;
use br_store::{Session, Store, StoreLocation};
use br_tui::{DashboardEnd, DashboardOptions, run_dashboard};

use crate::cli::{DEFAULT_KILL_GRACE, DriveArgs, MaxLog};
use crate::context::Context;
use crate::escape::esc;
use crate::exit::{Exit, usage};
use crate::progress::{Progress, Style};

#[derive(Debug, Clone)]
pub(crate) struct DriveOptions {
    pub workers: u32,
    pub plain: bool,
    pub heartbeat_interval: Duration,
    pub kill_grace: Duration,
    /// The output limit of one attempt, given to each worker.
    pub max_log: MaxLog,
    /// Show events from this seq on (0: the session's whole history).
    pub from_seq: i64,
}

/// The default number of local workers: the plan's, else one per CPU.
pub(crate) fn default_workers(plan_workers: Option<u32>) -> u32 {
    plan_workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| u32::try_from(n.get()).unwrap_or(4))
            .clamp(1, 16)
    })
}

/// The kill grace for the workers of a session whose leases last `lease`. One given with
/// `--kill-grace` must fit in the lease whole: a worker cut off from the store stops its task
/// (SIGTERM, the grace, SIGKILL) before the lease can expire, so that no other worker starts
/// the task while it still runs. The default is cut to fit when a self-fence needs it.
pub(crate) fn kill_grace(args: &DriveArgs, lease: Duration) -> anyhow::Result<Duration> {
    use br_core::lease::{max_grace, min_ttl_for};
    let Some(grace) = args.kill_grace else {
        return Ok(DEFAULT_KILL_GRACE);
    };
    let fits = max_grace(lease, args.heartbeat_interval);
    if grace <= fits {
        return Ok(grace);
    }
    let raise = match min_ttl_for(grace, args.heartbeat_interval) {
        Some(ttl) => format!("set heartbeat_timeout to at least {}", short_duration(ttl)),
        None => "no heartbeat_timeout is long enough".to_string(),
    };
    Err(usage(format!(
        "--kill-grace {} does not fit in the session's leases (heartbeat_timeout = {}): a worker \
         cut off from the store must stop its task, grace included, before its lease can expire, \
         which leaves at most {} here; {raise}, or give a shorter --kill-grace",
        short_duration(grace),
        short_duration(lease),
        short_duration(fits)
    )))
}

/// The library's options for a drive of this command.
pub(crate) fn library_options(
    ctx: &Context,
    opts: &DriveOptions,
) -> anyhow::Result<br_exec::drive::DriveOptions> {
    Ok(br_exec::drive::DriveOptions {
        workers: opts.workers,
        program: std::env::current_exe().context("cannot find the br executable")?,
        store_url: ctx.store_url_for_children()?,
        heartbeat_interval: opts.heartbeat_interval,
        kill_grace: opts.kill_grace,
        max_log_bytes: opts.max_log.0,
        from_seq: opts.from_seq,
    })
}

/// Drives the session to its end: with the live dashboard when on a terminal (unless
/// `--no-dashboard` or `--json`), else with plain progress lines.
pub(crate) fn drive(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
) -> anyhow::Result<Exit> {
    let interrupts = Interrupts::new();
    let _signals = interrupts
        .on_signals()
        .context("cannot install signal handlers")?;
    drive_with(ctx, store, session, opts, &interrupts)
}

/// [`drive`], with interrupts the caller already counts.
pub(crate) fn drive_with(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
    interrupts: &Interrupts,
) -> anyhow::Result<Exit> {
    let dashboard = !ctx.json && !opts.plain && std::io::stdout().is_terminal();
    let show = AtomicBool::new(!dashboard);
    if !dashboard {
        return supervise(ctx, store, session, opts, interrupts, &show);
    }
    // The dashboard reads through its own connection, so it never waits on the supervisor's.
    let ui_store = ctx.open_store()?;
    let done = AtomicBool::new(false);
    let options = DashboardOptions {
        session: Some(session.id.clone()),
        differ: crate::cmd::diff::dashboard_differ(ctx),
        ..DashboardOptions::default()
    };
    std::thread::scope(|scope| {
        let supervisor = scope.spawn(|| {
            let result = supervise(ctx, store, session, opts, interrupts, &show);
            done.store(true, Ordering::SeqCst);
            result
        });
        let ended = run_dashboard(&*ui_store, &options, &done);
        show.store(true, Ordering::SeqCst);
        match ended {
            // While it owns the terminal, Ctrl-C is a key: pass it on.
            Ok(DashboardEnd::Interrupted) => interrupts.request(),
            Ok(DashboardEnd::Quit) => eprintln!(
                "dashboard closed; the session goes on (Ctrl-C stops it, `br dashboard` shows it again)"
            ),
            Ok(DashboardEnd::Stopped) => {}
            Err(e) => {
                eprintln!(
                    "warning: the dashboard failed ({}); showing progress lines instead",
                    esc(e)
                );
            }
        }
        supervisor
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the session's supervisor thread panicked")))
    })
}

/// Runs the library's drive, printing its events as progress once `show` is set (not while the
/// dashboard owns the terminal), and says how it ended.
fn supervise(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
    interrupts: &Interrupts,
    show: &AtomicBool,
) -> anyhow::Result<Exit> {
    let repo = ctx.repo()?;
    let options = library_options(ctx, opts)?;
    // Progress goes to stdout, unless stdout is for the final JSON.
    let (out, style): (Box<dyn Write>, Style) = if ctx.json {
        (Box::new(std::io::stderr()), Style::Quiet)
    } else if std::io::stdout().is_terminal() && !opts.plain {
        (Box::new(std::io::stdout()), Style::Terminal)
    } else {
        (Box::new(std::io::stdout()), Style::Lines)
    };
    let mut progress = Progress::new(out, Style::Quiet);
    let mut showing = false;
    let end = br_exec::drive::drive(store, repo, session, &options, interrupts, &mut |event| {
        if !showing && show.load(Ordering::SeqCst) {
            showing = true;
            progress.set_style(style);
        }
        show_event(&mut progress, &event)
    })?;
    progress.finish()?;
    match end {
        DriveEnd::Ended(s) => Ok(exit_for(&s)),
        DriveEnd::Interrupted(s) => {
            let _ = std::io::stdout().lock().flush();
            eprintln!(
                "interrupted: session {} ({}) is {}; its running tasks were stopped and will run again. \
                 Continue with: br resume {}",
                esc(&s.name),
                s.id,
                s.status,
                s.id
            );
            Ok(Exit::Interrupted)
        }
        DriveEnd::WorkersFailed { session: s, why } => {
            let why = why.or_else(|| full_disk(ctx)).unwrap_or_else(|| {
                "its workers exit as soon as they start, and their logs do not say why".into()
            });
            Err(anyhow::anyhow!(
                "session {} ({}) stopped: {}. Nothing recorded is lost: once that is fixed, \
                 carry on with: br resume {}",
                esc(&s.name),
                s.id,
                esc(&why),
                s.id
            ))
        }
    }
}

/// Which of the disks br writes to here (the store's, the logs') is full, said as a reason: a
/// worker that cannot write even its log dies without saying so.
fn full_disk(ctx: &Context) -> Option<String> {
    let store = match ctx.store_location().ok()? {
        StoreLocation::Sqlite(path) => Some(path),
        StoreLocation::Postgres(_) => None,
    };
    let logs = ctx.log_dir().ok();
    [store, logs]
        .into_iter()
        .flatten()
        .find(|p| br_store::disk_full(p))
        .map(|p| format!("the disk holding {} is full", p.display()))
}

/// One event of a drive, as progress.
pub(crate) fn show_event<W: Write>(
    progress: &mut Progress<W>,
    event: &DriveEvent<'_>,
) -> std::io::Result<()> {
    match event {
        DriveEvent::Event(ev) => progress.event(ev),
        DriveEvent::Status { session, now } => progress.status(session, *now),
        DriveEvent::WorkerDied(w) => progress.note(&format!(
            "worker {} (pid {}) exited unexpectedly ({}); see {}",
            w.index,
            w.pid,
            w.status,
            w.log.display()
        )),
        DriveEvent::GaveUp { log } => progress.note(&format!(
            "workers keep failing right after they start; stopped replacing them. See {}",
            log.display()
        )),
        DriveEvent::StoreUnreachable(e) => {
            progress.note(&format!("warning: {}; waiting for it", error_chain(*e)))
        }
        DriveEvent::StoreBack { after } => progress.note(&format!(
            "the store answers again (after {})",
            short_duration(*after)
        )),
        DriveEvent::Interrupting {
            session: Some(s), ..
        } => progress.note(&format!(
            "interrupted: pausing session {} and stopping {} (Ctrl-C again to kill at once)",
            s.name,
            crate::output::count(s.running_tasks, "running task")
        )),
        DriveEvent::Interrupting { error, .. } => progress.note(&format!(
            "interrupted: stopping the workers; the session could not be paused ({})",
            error.map(|e| error_chain(e)).unwrap_or_default()
        )),
        DriveEvent::Killing => progress.note("interrupted again: killing workers now"),
        DriveEvent::ReconcileFailed(e) => {
            // Printed at once: the dashboard has not taken the terminal yet.
            eprintln!("warning: could not reconcile br's worktrees: {}", esc(e));
            Ok(())
        }
    }
}

/// After a drive: the final report (or JSON status) and the exit code.
pub(crate) fn finish(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    exit: Exit,
) -> anyhow::Result<Exit> {
    let s = store.session(&session.id)?;
    if ctx.json {
        crate::output::print_status_json(store, &s)?;
    } else if exit != Exit::Interrupted {
        let mut out = std::io::stdout().lock();
        final_report(store, &s, &mut out)?;
    }
    Ok(exit)
}

pub(crate) fn exit_for(s: &Session) -> Exit {
    match s.status {
        SessionStatus::Completed => Exit::Success,
        _ => Exit::SessionFailed,
    }
}

/// `session demo (3f9a1c0b7d2e) completed in 2.3s: 7 succeeded, 1 failed, 2 skipped`, then a
/// line per task that did not succeed.
pub(crate) fn final_report(
    store: &dyn Store,
    s: &Session,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let took = match (s.started_at, s.completed_at) {
        (Some(a), Some(b)) => format!(" in {}", br_core::time::short_duration(b.since(a))),
        _ => String::new(),
    };
    writeln!(
        out,
        "session {} ({}) {}{took}: {} succeeded, {} failed, {} skipped, {} cancelled",
        esc(&s.name),
        s.id,
        s.status,
        s.succeeded_tasks,
        s.failed_tasks,
        s.skipped_tasks,
        s.cancelled_tasks
    )?;
    if s.landed_tasks > 0 {
        let tip = s
            .integration_commit
            .as_deref()
            .map(|c| format!(" (at {})", &c[..c.len().min(12)]))
            .unwrap_or_default();
        writeln!(
            out,
            "{} of {} landed on br/{}/integration{tip}; `br merge {} --into BRANCH` \
             promotes it",
            s.landed_tasks,
            crate::output::count(s.total_tasks, "task"),
            esc(&s.slug),
            s.id
        )?;
    }
    if s.succeeded_tasks < s.total_tasks {
        for t in store.tasks(&s.id)? {
            if t.state == br_core::TaskState::Succeeded {
                continue;
            }
            let reason = match (t.outcome, t.exit_code) {
                (Some(br_core::OutcomeKind::Failed), Some(code)) => {
                    br_core::Outcome::Failed { exit_code: code }.describe()
                }
                (Some(o), _) => o.words(),
                (None, _) => t.state.to_string(),
            };
            write!(out, "  {} {}: {}", t.state, esc(&t.id), esc(reason))?;
            if let Some(log) = &t.log_path {
                write!(out, " (log: {})", esc(log))?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}
