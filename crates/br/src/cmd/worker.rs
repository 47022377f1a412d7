//! `br worker` (one worker process) and `br workers` (the list).

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use br_core::WorkerStatus;
use br_core::time::{ago, short_duration};
use br_exec::liveness::host_name;
use br_exec::signals::{StopFlag, stop_on_signals, stop_when_stdin_closes};
use br_exec::worker::{Leave, Note, WorkerConfig, run_worker};
use br_store::LandingRecorded;
use br_store::view::{WorkerListView, WorkerListing};

use crate::cli::{WorkerArgs, WorkersArgs};
use crate::context::Context;
use crate::escape::esc;
use crate::exit::{Exit, usage};
use crate::output::{print, print_json};
use crate::table::{Table, or_dash};

pub(super) fn worker(ctx: &Context, args: WorkerArgs) -> anyhow::Result<Exit> {
    let max_log = crate::settings::max_log(args.max_log)?;
    let repo = match &args.repo {
        Some(url) => own_clone(ctx, url)?,
        None => ctx.repo()?.clone(),
    };
    let store = ctx.open_store()?;
    let session = args
        .session
        .as_deref()
        .map(|s| store.resolve_session(s))
        .transpose()?;
    if let Some(s) = &session
        && args.repo.is_some()
        && s.remote.is_none()
    {
        return Err(usage(format!(
            "session {} ({}) has no remote: its work stays in the clone that submitted it, so \
             a worker with --repo (no checkout of its own) cannot serve it; name a `remote` in \
             its plan, or start the worker in a clone",
            s.name, s.id
        )));
    }
    let repo_id = repo.identity()?;
    if let Some(s) = &session
        && s.repo_id.as_ref().is_some_and(|theirs| *theirs != repo_id)
    {
        return Err(usage(format!(
            "session {} ({}) belongs to another repository ({}) than this one ({}): a worker \
             runs only its own repository's tasks; start it in a clone of that repository",
            s.name,
            s.id,
            s.repo_root,
            repo.root.display()
        )));
    }
    let stop = StopFlag::default();
    stop_on_signals(&stop).context("cannot install signal handlers")?;
    if args.watch_stdin {
        // Our parent (`br run`) holds the other end: when it dies, stop.
        stop_when_stdin_closes(&stop).context("cannot watch standard input")?;
    }
    let exe = std::env::current_exe().context("cannot find the br executable")?;
    let host = host_name();
    let config = WorkerConfig {
        repo_id,
        log_dir: repo.log_dir(),
        repo,
        session: session.as_ref().map(|s| s.id.clone()),
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_timeout: args
            .heartbeat_timeout
            .or(session.as_ref().map(br_store::Session::heartbeat_timeout))
            .unwrap_or(Duration::from_secs(30)),
        kill_grace: args.kill_grace,
        exit_when_idle: args.exit_when_idle,
        max_log_bytes: max_log.0,
        reaper: Some(vec![exe.into_os_string(), "__reaper".into()]),
        host,
        alive_file: args.alive_file.map(|p| ctx.path(&p)),
        remote_only: args.repo.is_some(),
    };
    let mut stderr = std::io::stderr();
    let mut notify = |note: Note| {
        let line = match note {
            Note::Registered(id) => format!("worker {id} registered (pid {})", std::process::id()),
            Note::Started(t) => format!(
                "started {}/{} attempt {}",
                t.session_name, t.lease.task_id, t.lease.attempt
            ),
            Note::Finished {
                task,
                outcome,
                recorded,
            } => format!(
                "finished {}/{} attempt {}: {}{}",
                task.session_name,
                task.lease.task_id,
                task.lease.attempt,
                outcome.describe(),
                if recorded {
                    ""
                } else {
                    " (refused: the lease was lost)"
                }
            ),
            Note::LeaseLost(t) => format!(
                "lost the lease on {}/{} attempt {}: stopped it",
                t.session_name, t.lease.task_id, t.lease.attempt
            ),
            Note::Fenced { task, silent_for } => format!(
                "stopped {}/{} attempt {}: the store acknowledged no heartbeat for {}, so its \
                 lease may soon expire and the task run elsewhere (lease_lost)",
                task.session_name,
                task.lease.task_id,
                task.lease.attempt,
                short_duration(silent_for)
            ),
            Note::GraceCut {
                session,
                lease,
                grace,
            } => format!(
                "note: session {session}'s leases ({}) are too short for the whole kill grace; a \
                 task this worker must stop because the store is unreachable gets {} between \
                 SIGTERM and SIGKILL",
                short_duration(lease),
                short_duration(grace)
            ),
            Note::StoreTrouble(e) => format!("warning: {e}"),
            Note::StraysKilled { task, count } => format!(
                "killed {count} process(es) that {}/{} attempt {} left running outside its \
                 process group",
                task.session_name, task.lease.task_id, task.lease.attempt
            ),
            Note::StoreBack { after } => {
                format!("the store answers again (after {})", short_duration(after))
            }
            Note::Landed {
                session,
                task,
                commit,
            } => format!(
                "landed {session}/{task}: integration branch at {}",
                &commit[..commit.len().min(12)]
            ),
            Note::NotLanded {
                session,
                task,
                why,
                recorded,
            } => format!(
                "{session}/{task} did not land ({why}); {}",
                match recorded {
                    LandingRecorded::Repair => "it runs again on the new tip, told why",
                    LandingRecorded::Failed => "it failed",
                    LandingRecorded::Landed | LandingRecorded::Stale => "",
                }
            ),
            Note::LandingTrouble(why) => format!("warning: {why}"),
        };
        // Session names and errors may hold anything a plan wrote.
        let _ = writeln!(stderr, "{}", esc(line));
    };
    let exit = run_worker(&*store, &config, &stop, &mut notify)?;
    let why = match exit {
        Leave::Stopped => "stopped",
        Leave::AskedToLeave => "asked to leave",
        Leave::SessionEnded => "its session ended",
        Leave::Idle => "nothing left to claim",
        Leave::DiskFull(path) => anyhow::bail!(
            "the disk holding {} is full: this worker stopped, and its attempt will run again \
             once there is space",
            path.display()
        ),
    };
    let _ = writeln!(std::io::stderr(), "worker left: {why}");
    Ok(Exit::Success)
}

pub(super) fn workers(ctx: &Context, args: WorkersArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let status = args
        .status
        .as_deref()
        .map(str::parse::<WorkerStatus>)
        .transpose()
        .map_err(|e| usage(e.to_string()))?;
    let workers = WorkerListView::read(
        &*store,
        WorkerListing {
            status,
            include_stopped: args.all,
        },
    )?;
    if ctx.json {
        print_json(&workers)?;
        return Ok(Exit::Success);
    }
    let workers = workers.0;
    let now = store.now()?;
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "HOST",
        "PID",
        "SESSION",
        "TASK",
        "ELAPSED",
        "DONE",
        "FAILED",
        "HEARTBEAT",
    ]);
    for w in &workers {
        table.row(vec![
            w.id.to_string(),
            w.status.to_string(),
            w.host.clone(),
            w.pid.to_string(),
            or_dash(w.session_id.as_ref()),
            match (&w.current_task, w.attempt) {
                (Some(t), Some(a)) => format!("{t}#{a}"),
                _ => "-".into(),
            },
            or_dash(w.task_started_at.map(|t| short_duration(now.since(t)))),
            w.tasks_completed.to_string(),
            w.tasks_failed.to_string(),
            ago(now.since(w.last_heartbeat)),
        ]);
    }
    if table.is_empty() {
        print("no workers\n")?;
    } else {
        print(&table.render())?;
    }
    Ok(Exit::Success)
}

/// `--repo URL`: br's own clone of the repository in the user's cache directory
/// (`$XDG_CACHE_HOME/br/repos`, else `~/.cache/br/repos`).
fn own_clone(ctx: &Context, url: &str) -> anyhow::Result<br_git::Repo> {
    if !ctx.has_store_url() {
        return Err(usage(
            "--repo needs the store the sessions are in: give --store or BR_STORE (a \
             PostgreSQL URL shared by the machines)",
        ));
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => std::path::PathBuf::from(home).join(".cache"),
            None => return Err(usage("--repo needs HOME or XDG_CACHE_HOME for its clone")),
        },
    }
    .join("br")
    .join("repos");
    br_git::remote::own_clone(url, &cache).with_context(|| {
        format!(
            "cannot keep a clone of {} in {}",
            br_git::remote::redact_url(url),
            cache.display()
        )
    })
}
