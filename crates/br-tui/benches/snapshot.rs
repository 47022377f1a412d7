//! Measures what a dashboard refresh costs at scale: a temp SQLite store with 10,000 tasks and
//! 50 workers, ~200 random store operations, and after each one an incremental refresh of a
//! `SnapshotBuilder` against a full rebuild from scratch. It prints timings; it asserts nothing
//! about them (benchmarks measure, tests assert behaviour).
//!
//! Run: `cargo bench -p br-tui --bench snapshot -- [TASKS] [WORKERS] [OPS]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use br_core::outcome::Outcome;
use br_core::plan::{Isolation, OnConflict, ScopeMode};
use br_core::{LockPath, Plan, TaskId, TaskSpec};
use br_store::snapshot::{Snapshot, SnapshotBuilder, build_snapshot};
use br_store::sqlite::SqliteStore;
use br_store::{Claim, ClaimRequest, Lease, NewSession, NewWorker, Store};

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (task_count, worker_count, ops) = (arg(1, 10_000), arg(2, 50), arg(3, 200));
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("br.db"))?;
    let mut rng = fastrand::Rng::with_seed(42);

    let t = Instant::now();
    let files = ["src", "docs", "tests", "Cargo.lock", "build.rs"];
    let tasks: Vec<TaskSpec> = (0..task_count)
        .map(|i| {
            let mut after = Vec::new();
            if i >= 100 && rng.u8(..3) == 0 {
                after.push(TaskId::new(format!("t{}", rng.usize(..i)))?);
            }
            let file = format!("{}/{}", files[rng.usize(..files.len())], i % 97);
            Ok(TaskSpec {
                id: TaskId::new(format!("t{i}"))?,
                run: format!("make t{i}"),
                files: vec![LockPath::parse(&file)?],
                after,
                timeout: None,
                retries: 1,
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
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let session = store.create_session(&NewSession {
        plan: Plan {
            name: "bench".into(),
            workers: None,
            base: "HEAD".into(),
            isolation: Isolation::Worktree,
            heartbeat_timeout: Duration::from_secs(60),
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
        repo_root: PathBuf::from("/repo"),
        repo_id: None,
        plan_path: None,
        base_commit: None,
        workers_wanted: u32::try_from(worker_count)?,
    })?;
    let workers = (0..worker_count)
        .map(|i| {
            store.register_worker(&NewWorker {
                host: format!("host-{}", i % 5),
                pid: u32::try_from(1000 + i).unwrap_or(0),
                session: None,
                heartbeat_timeout: Duration::from_secs(60),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "store: {task_count} tasks, {worker_count} workers, set up in {:?}",
        t.elapsed()
    );

    let log_dir = dir.path().join("logs");
    let mut builder = SnapshotBuilder::new(Some(session.id.clone()));
    let mut snap = Snapshot::empty(store.now()?);
    let t = Instant::now();
    builder.refresh(&store, &mut snap)?;
    println!("first build (reads everything once): {:?}", t.elapsed());

    // Warm up: get most workers busy so the operations below are a realistic mix.
    let mut running: Vec<Option<Lease>> = vec![None; worker_count];
    for (i, w) in workers.iter().enumerate() {
        if let Claim::Task(c) = store.claim_next_task(&ClaimRequest {
            worker: w,
            session: None,
            log_dir: &log_dir,
            repo_id: None,
            remote_only: false,
        })? {
            running[i] = Some(c.lease);
        }
    }
    builder.refresh(&store, &mut snap)?;

    let mut incremental = Vec::new();
    let mut full = Vec::new();
    let mut cloned = Vec::new();
    let mut done = 0;
    while done < ops {
        let i = rng.usize(..worker_count);
        let w = &workers[i];
        match running[i].take() {
            Some(lease) => {
                let outcome = if rng.u8(..10) == 0 {
                    Outcome::Failed { exit_code: 1 }
                } else {
                    Outcome::Succeeded
                };
                store.finish_attempt(&lease, &outcome)?;
            }
            None => {
                if let Claim::Task(c) = store.claim_next_task(&ClaimRequest {
                    worker: w,
                    session: None,
                    log_dir: &log_dir,
                    repo_id: None,
                    remote_only: false,
                })? {
                    running[i] = Some(c.lease);
                } else {
                    store.heartbeat(w, None)?;
                }
            }
        }
        done += 1;

        let t = Instant::now();
        builder.refresh(&store, &mut snap)?;
        incremental.push(t.elapsed());
        // What the builder saves by updating in place rather than handing out a copy.
        let t = Instant::now();
        let copy = snap.clone();
        cloned.push(t.elapsed());
        drop(copy);

        let t = Instant::now();
        let fresh = build_snapshot(&store, Some(&session.id))?;
        full.push(t.elapsed());
        drop(fresh);
    }
    println!(
        "after {ops} operations: {} done, {} running, {} events in the log, last seq {}",
        snap.summary.tasks.completed + snap.summary.tasks.failed,
        snap.summary.tasks.running,
        snap.events.len(),
        snap.last_seq
    );
    report("incremental refresh", &incremental);
    report("full rebuild", &full);
    report("clone of the snapshot", &cloned);

    // A dashboard that fell behind (a slow terminal, a burst of work): many operations between
    // two refreshes, so one refresh reads hundreds of changed tasks.
    let mut bursts = Vec::new();
    for _ in 0..5 {
        for _ in 0..ops * 2 {
            let i = rng.usize(..worker_count);
            match running[i].take() {
                Some(lease) => {
                    store.finish_attempt(&lease, &Outcome::Succeeded)?;
                }
                None => {
                    if let Claim::Task(c) = store.claim_next_task(&ClaimRequest {
                        worker: &workers[i],
                        session: None,
                        log_dir: &log_dir,
                        repo_id: None,
                        remote_only: false,
                    })? {
                        running[i] = Some(c.lease);
                    }
                }
            }
        }
        let t = Instant::now();
        builder.refresh(&store, &mut snap)?;
        bursts.push(t.elapsed());
    }
    report(&format!("refresh after {} ops", ops * 2), &bursts);
    Ok(())
}

fn report(what: &str, times: &[Duration]) {
    let total: Duration = times.iter().sum();
    let mean = total / u32::try_from(times.len().max(1)).unwrap_or(1);
    let max = times.iter().max().copied().unwrap_or_default();
    let mut sorted = times.to_vec();
    sorted.sort();
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    println!(
        "{what:>22}: mean {:>9.3} ms  median {:>9.3} ms  max {:>9.3} ms  ({} runs)",
        mean.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        times.len()
    );
}
