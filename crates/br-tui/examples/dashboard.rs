//! Runs the dashboard on a store, to try it by hand (or in tmux) without the CLI.
//!
//! `cargo run -p br-tui --example dashboard -- [STORE] [--compact] [--no-color] [--simulate]`
//!
//! With `--simulate` (the default when no STORE is given) it fills a temp store with a session
//! and runs a few in-process workers that claim tasks, write logs, sometimes fail, and finish,
//! so there is something live to watch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use br_core::outcome::Outcome;
use br_core::plan::{Isolation, OnConflict, ScopeMode};
use br_core::{LockPath, Plan, TaskId, TaskSpec};
use br_store::sqlite::SqliteStore;
use br_store::{Claim, ClaimRequest, NewSession, NewWorker, Store};
use br_tui::{DashboardOptions, run_dashboard};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let path = args.iter().find(|a| !a.starts_with("--"));
    let dir = tempfile::tempdir()?;
    let db = path.map_or_else(|| dir.path().join("br.db"), PathBuf::from);
    let store = Arc::new(SqliteStore::open(&db)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    if flag("--simulate") || path.is_none() {
        simulate(&store, dir.path(), &stop, &mut workers)?;
    }
    let options = DashboardOptions {
        compact: flag("--compact"),
        color: !flag("--no-color") && DashboardOptions::default().color,
        ..DashboardOptions::default()
    };
    let result = run_dashboard(&*store, &options, &AtomicBool::new(false));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    result?;
    Ok(())
}

fn simulate(
    store: &Arc<SqliteStore>,
    dir: &Path,
    stop: &Arc<AtomicBool>,
    workers: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<(), Error> {
    let areas = ["src/api", "src/ui", "src/db", "docs", "tests"];
    let tasks = (0..40)
        .map(|i| {
            let after = if i >= 5 {
                vec![TaskId::new(format!("step-{:02}", i - 5))?]
            } else {
                vec![]
            };
            Ok(TaskSpec {
                id: TaskId::new(format!("step-{i:02}"))?,
                run: format!("make step-{i:02}"),
                files: vec![LockPath::parse(areas[i % areas.len()])?],
                after,
                timeout: None,
                retries: u32::from(i % 7 == 3),
                env: BTreeMap::new(),
                start: br_core::StartMode::Tip,
                land: br_core::LandMode::Auto,
                on_conflict: br_core::OnConflict::Requeue,
                max_repairs: br_core::plan::DEFAULT_MAX_REPAIRS,
                prompt: None,
                prompt_file: None,
                agent: None,
                pool: None,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    store.create_session(&NewSession {
        plan: Plan {
            name: "demo".into(),
            workers: Some(3),
            base: "HEAD".into(),
            isolation: Isolation::Worktree,
            heartbeat_timeout: Duration::from_secs(5),
            retries: 0,
            scope: ScopeMode::Report,
            verify: None,
            on_conflict: OnConflict::Requeue,
            start: br_core::StartMode::Tip,
            land: br_core::LandMode::Auto,
            max_repairs: br_core::plan::DEFAULT_MAX_REPAIRS,
            keep: Vec::new(),
            agents: Vec::new(),
            pools: Default::default(),
            copy: Vec::new(),
            setup: None,
            setup_inputs: Vec::new(),
            ports: 0,
            remote: None,
            tasks,
        },
        repo_root: dir.to_path_buf(),
        repo_id: None,
        plan_path: None,
        base_commit: None,
        workers_wanted: 3,
    })?;
    for n in 0..3u64 {
        let store = Arc::clone(store);
        let stop = Arc::clone(stop);
        let log_dir = dir.join("logs");
        workers.push(std::thread::spawn(move || {
            if let Err(e) = work(&*store, &log_dir, &stop, n) {
                eprintln!("simulated worker {n}: {e}");
            }
        }));
    }
    Ok(())
}

/// One simulated worker: claim, write a few log lines over a few seconds, finish.
fn work(store: &dyn Store, log_dir: &Path, stop: &AtomicBool, n: u64) -> Result<(), Error> {
    let me = store.register_worker(&NewWorker {
        host: format!("sim-{n}"),
        pid: std::process::id(),
        session: None,
        heartbeat_timeout: Duration::from_secs(5),
    })?;
    let mut rng = fastrand::Rng::with_seed(n);
    while !stop.load(Ordering::Relaxed) {
        store.requeue_expired_leases()?;
        let claim = store.claim_next_task(&ClaimRequest {
            worker: &me,
            session: None,
            log_dir,
            repo_id: None,
            remote_only: false,
        })?;
        let Claim::Task(task) = claim else {
            store.heartbeat(&me, None)?;
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        if let Some(parent) = task.log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut log = std::fs::File::create(&task.log_path)?;
        let steps = rng.u32(5..30);
        for i in 0..steps {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            writeln!(
                log,
                "\u{1b}[32m[{i:02}/{steps}]\u{1b}[0m {} working…",
                task.run
            )?;
            store.heartbeat(&me, Some(&task.lease))?;
            std::thread::sleep(Duration::from_millis(rng.u64(100..400)));
        }
        let outcome = if rng.u8(..8) == 0 {
            writeln!(log, "error: something broke")?;
            Outcome::Failed { exit_code: 2 }
        } else {
            Outcome::Succeeded
        };
        store.finish_attempt(&task.lease, &outcome)?;
    }
    store.stop_worker(&me)?;
    Ok(())
}
