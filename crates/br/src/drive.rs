//! Driving a session to its end from this terminal: the local worker pool, progress, and a clean
//! stop on Ctrl-C (the session is left paused, its running tasks stopped and queued again).
//! `br run`, `br start`, `br resume` and `br demo` all end here.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use br_core::SessionStatus;
use br_core::state::SessionAction;
use br_exec::pool::{LocalPool, PoolEvent, PoolSpec};
use br_exec::worktree::{KEEP_SLOTS, ReconcileMode, reconcile};
use br_store::{EventFilter, Session, Store};
use br_tui::{DashboardEnd, DashboardOptions, run_dashboard};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::context::Context;
use crate::exit::Exit;
use crate::progress::{Progress, Style};

#[derive(Debug, Clone)]
pub struct DriveOptions {
    pub workers: u32,
    pub plain: bool,
    pub heartbeat_interval: Duration,
    pub kill_grace: Duration,
    /// Show events from this seq on (0: the session's whole history).
    pub from_seq: i64,
}

/// The shortest time between two passes of the supervision loop.
const LOOP_MIN: Duration = Duration::from_millis(50);

/// How long the session's workers may take to leave after it ended before they are stopped.
const LEAVE_GRACE: Duration = Duration::from_secs(30);

/// What the dashboard and the supervision loop share while both run.
#[derive(Debug)]
struct Control {
    /// Interrupts the dashboard received (while it owns the terminal, Ctrl-C is a key).
    interrupts: AtomicUsize,
    /// Set when the supervision loop is over, so the dashboard closes.
    done: AtomicBool,
    /// Whether progress is printed (not while the dashboard owns the terminal).
    show_progress: AtomicBool,
}

impl Control {
    fn new(show_progress: bool) -> Control {
        Control {
            interrupts: AtomicUsize::new(0),
            done: AtomicBool::new(false),
            show_progress: AtomicBool::new(show_progress),
        }
    }
}

/// Drives the session to its end: with the live dashboard when on a terminal (unless
/// `--no-dashboard` or `--json`), else with plain progress lines.
pub fn drive(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
) -> anyhow::Result<Exit> {
    // Before new workers start, what attempts of a killed br left in free worktree slots is kept
    // at their attempt refs and stray slots are removed. Slots that live workers hold (another
    // `br run` in this repository) are not touched. A failure here costs nothing a worker's own
    // checkout would not redo, so it does not stop the run.
    if let Err(e) = ctx.repo().map_err(|e| e.to_string()).and_then(|repo| {
        reconcile(repo, ReconcileMode::Apply, KEEP_SLOTS).map_err(|e| e.to_string())
    }) {
        eprintln!("warning: could not reconcile br's worktrees: {e}");
    }
    let dashboard = !ctx.json && !opts.plain && std::io::stdout().is_terminal();
    if !dashboard {
        return supervise(ctx, store, session, opts, &Control::new(true));
    }
    // The dashboard reads through its own connection, so it never waits on the supervisor's.
    let ui_store = ctx.open_store()?;
    let control = Control::new(false);
    let options = DashboardOptions {
        session: Some(session.id.clone()),
        ..DashboardOptions::default()
    };
    std::thread::scope(|scope| {
        let supervisor = scope.spawn(|| {
            let result = supervise(ctx, store, session, opts, &control);
            control.done.store(true, Ordering::SeqCst);
            result
        });
        let ended = run_dashboard(&*ui_store, &options, &control.done);
        control.show_progress.store(true, Ordering::SeqCst);
        match ended {
            Ok(DashboardEnd::Interrupted) => {
                control.interrupts.fetch_add(1, Ordering::SeqCst);
            }
            Ok(DashboardEnd::Quit) => eprintln!(
                "dashboard closed; the session goes on (Ctrl-C stops it, `br dashboard` shows it again)"
            ),
            Ok(DashboardEnd::Stopped) => {}
            Err(e) => {
                eprintln!("warning: the dashboard failed ({e}); showing progress lines instead")
            }
        }
        supervisor
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the session's supervisor thread panicked")))
    })
}

/// The supervision loop: keeps the local pool at the session's size, prints progress, and stops
/// everything cleanly on an interrupt.
fn supervise(
    ctx: &Context,
    store: &dyn Store,
    session: &Session,
    opts: &DriveOptions,
    control: &Control,
) -> anyhow::Result<Exit> {
    let id = session.id.clone();
    if session.workers_wanted != opts.workers {
        store.set_workers_wanted(&id, opts.workers)?;
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let repo = ctx.repo()?;
    let exe = std::env::current_exe().context("cannot find the br executable")?;
    let spec = PoolSpec {
        program: exe,
        args: [
            "-C".into(),
            repo.root.clone().into_os_string(),
            "--store".into(),
            ctx.store_url_for_children()?.into(),
            "worker".into(),
            "--session".into(),
            id.as_str().into(),
            "--heartbeat-timeout".into(),
            humantime::format_duration(session.heartbeat_timeout())
                .to_string()
                .into(),
            "--heartbeat-interval".into(),
            humantime::format_duration(opts.heartbeat_interval)
                .to_string()
                .into(),
            "--kill-grace".into(),
            humantime::format_duration(opts.kill_grace)
                .to_string()
                .into(),
            "--watch-stdin".into(),
        ]
        .into(),
        log_dir: repo.log_dir().join(id.as_str()).join("workers"),
    };
    let mut pool = LocalPool::new(spec);
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
    let mut last_seq = opts.from_seq;
    let mut interrupts = 0usize;
    let mut ended_at: Option<Instant> = None;
    let mut gave_up = false;
    let mut last_requeue = Instant::now();
    let mut loop_started = Instant::now();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if !showing && control.show_progress.load(Ordering::SeqCst) {
            showing = true;
            progress.set_style(style);
        }
        let new_signals = signals.pending().count() + control.interrupts.swap(0, Ordering::SeqCst);
        if new_signals > 0 {
            let first = interrupts == 0;
            interrupts += new_signals;
            if first {
                interrupt(store, &id, &mut pool, &mut progress)?;
            }
            if interrupts >= 2 {
                progress.note("interrupted again: killing workers now")?;
                pool.kill_all();
            }
        }
        if unreachable_since.is_some() {
            // The store could not be reached a moment ago: do not hammer it.
            std::thread::sleep(Duration::from_millis(250));
        }
        match supervise_pass(
            store,
            &id,
            &mut pool,
            &mut progress,
            &mut last_seq,
            interrupts,
            gave_up,
        ) {
            Ok(pass) => {
                if let Some(since) = unreachable_since.take() {
                    progress.note(&format!(
                        "the store answers again (after {})",
                        br_core::time::short_duration(since.elapsed())
                    ))?;
                }
                gave_up |= pass.gave_up;
                if pass.finished {
                    break;
                }
                if pass.ended {
                    let since = *ended_at.get_or_insert_with(Instant::now);
                    if since.elapsed() > LEAVE_GRACE {
                        pool.stop_all();
                    }
                }
            }
            Err(e) if e.is_transient() => {
                // A store that is restarting or cut off is waited out: the workers wait too,
                // and stop their tasks themselves if their leases are at risk.
                if unreachable_since.is_none() {
                    unreachable_since = Some(Instant::now());
                    progress.note(&format!("warning: {}; waiting for it", error_chain(&e)))?;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if last_requeue.elapsed() >= Duration::from_secs(1) {
            last_requeue = Instant::now();
            // Workers do this too; br run helps in case all of them are gone.
            if let Err(e) = store.requeue_expired_leases()
                && !e.is_transient()
            {
                return Err(e.into());
            }
        }
        // Wake on changes, but at most every LOOP_MIN: the workers' commits come in bursts, and
        // one pass per burst shows the same progress for a fraction of the CPU they need.
        let since = loop_started.elapsed();
        if since < LOOP_MIN {
            std::thread::sleep(LOOP_MIN - since);
        }
        if let Err(e) = store.wait_for_change(Duration::from_millis(100))
            && !e.is_transient()
        {
            return Err(e.into());
        }
        loop_started = Instant::now();
    }
    progress.finish()?;
    let s = store.session(&id)?;
    if interrupts > 0 {
        let stdout = std::io::stdout();
        let mut err = std::io::stderr().lock();
        let _ = stdout.lock().flush();
        writeln!(
            err,
            "interrupted: session {} ({}) is {}; its running tasks were stopped and will run again. \
             Continue with: br resume {}",
            s.name, s.id, s.status, s.id
        )?;
        return Ok(Exit::Interrupted);
    }
    if gave_up && !s.status.is_terminal() {
        return Err(anyhow::anyhow!(
            "session {} ({}) could not run: its workers failed to start",
            s.name,
            s.id
        ));
    }
    Ok(exit_for(&s))
}

/// What one pass of the supervision loop found.
struct Pass {
    /// The session ended.
    ended: bool,
    /// The pool stopped replacing workers.
    gave_up: bool,
    /// Nothing is left to watch: the loop is over.
    finished: bool,
}

/// One pass: keep the pool, print new events and the session's state.
fn supervise_pass(
    store: &dyn Store,
    id: &br_core::SessionId,
    pool: &mut LocalPool,
    progress: &mut Progress<Box<dyn Write>>,
    last_seq: &mut i64,
    interrupts: usize,
    gave_up: bool,
) -> Result<Pass, br_store::StoreError> {
    let io = |e: std::io::Error| br_store::StoreError::Backend {
        context: "print progress",
        source: Box::new(e),
    };
    let mut newly_gave_up = false;
    if interrupts == 0 && !gave_up {
        for event in pool.supervise(store, id)? {
            match event {
                PoolEvent::Exited(w) if !w.asked && !w.status.success() => {
                    progress
                        .note(&format!(
                            "worker {} (pid {}) exited unexpectedly ({}); see {}",
                            w.index,
                            w.pid,
                            w.status,
                            w.log.display()
                        ))
                        .map_err(io)?;
                }
                PoolEvent::GaveUp { log } => {
                    newly_gave_up = true;
                    progress
                        .note(&format!(
                            "workers keep failing right after they start; stopped replacing them. See {}",
                            log.display()
                        ))
                        .map_err(io)?;
                }
                _ => {}
            }
        }
    } else {
        pool.reap();
    }
    let events = store.events(&EventFilter {
        after_seq: Some(*last_seq),
        session: Some(id.clone()),
        limit: Some(1000),
    })?;
    for ev in &events {
        progress.event(ev).map_err(io)?;
        *last_seq = ev.seq;
    }
    let s = store.session(id)?;
    progress.status(&s, store.now()?).map_err(io)?;
    let ended = s.status.is_terminal();
    let finished = (ended || interrupts > 0 || gave_up || newly_gave_up)
        && pool.live() == 0
        && events.len() < 1000;
    Ok(Pass {
        ended,
        gave_up: newly_gave_up,
        finished,
    })
}

/// First Ctrl-C: start nothing new, stop what runs (each worker interrupts its task and records
/// it as interrupted, so it reruns later without spending a retry), and leave.
fn interrupt(
    store: &dyn Store,
    id: &br_core::SessionId,
    pool: &mut LocalPool,
    progress: &mut Progress<Box<dyn Write>>,
) -> anyhow::Result<()> {
    // The workers stop whatever the store says: a store that cannot be reached must not keep
    // tasks running after a Ctrl-C.
    let paused = store.session(id).and_then(|s| {
        if matches!(s.status, SessionStatus::Created | SessionStatus::Running) {
            store.change_session(id, SessionAction::Pause)?;
        }
        Ok(s)
    });
    pool.stop_all();
    match paused {
        Ok(s) => progress.note(&format!(
            "interrupted: pausing session {} and stopping {} running task(s) (Ctrl-C again to kill at once)",
            s.name, s.running_tasks
        ))?,
        Err(e) => progress.note(&format!(
            "interrupted: stopping the workers; the session could not be paused ({})",
            error_chain(&e)
        ))?,
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub fn exit_for(s: &Session) -> Exit {
    match s.status {
        SessionStatus::Completed => Exit::Success,
        _ => Exit::SessionFailed,
    }
}

/// `session demo (3f9a1c0b7d2e) completed in 2.3s: 7 succeeded, 1 failed, 2 skipped`, then a
/// line per task that did not succeed.
pub fn final_report(store: &dyn Store, s: &Session, out: &mut dyn Write) -> anyhow::Result<()> {
    let took = match (s.started_at, s.completed_at) {
        (Some(a), Some(b)) => format!(" in {}", br_core::time::short_duration(b.since(a))),
        _ => String::new(),
    };
    writeln!(
        out,
        "session {} ({}) {}{took}: {} succeeded, {} failed, {} skipped, {} cancelled",
        s.name,
        s.id,
        s.status,
        s.completed_tasks,
        s.failed_tasks,
        s.skipped_tasks,
        s.cancelled_tasks
    )?;
    if s.completed_tasks < s.total_tasks {
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
            write!(out, "  {} {}: {}", t.state, t.id, reason)?;
            if let Some(log) = &t.log_path {
                write!(out, " (log: {log})")?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}
