//! The store alone: how many no-op tasks per second workers claim and complete, with 1, 4 and 16
//! workers at once (threads, each with its own store handle as a worker process has), on SQLite
//! and on PostgreSQL (`BR_TEST_POSTGRES_URL`, a fresh schema dropped afterwards). No process is
//! spawned: this is the store's share of a task's cost, what `br run`'s workers pay per task on
//! top of running it. Each worker claims, then records the outcome and claims the next in one
//! transaction, as `br worker` does.
//!
//! `cargo bench -p br-store --bench claims [sqlite|postgres]`

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use br_core::outcome::Outcome;
use br_store::Store;
use br_store::conformance::{Record, plan, submit, task, work_session};
use br_store::postgres::PostgresStore;
use br_store::sqlite::SqliteStore;

/// Tasks per run: enough that startup is noise against the run.
const TASKS: usize = 3000;

const WORKERS: [usize; 3] = [1, 4, 16];

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    println!(
        "br store benchmark: claim + complete of {TASKS} no-op tasks ({} CPUs)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    if want("sqlite") {
        for workers in WORKERS {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("br.db");
            let open = move || -> Box<dyn Store> {
                Box::new(SqliteStore::open(&path).expect("open sqlite store"))
            };
            report("SQLite", workers, run(&open, workers));
        }
    }
    if want("postgres") {
        let Ok(admin) = std::env::var("BR_TEST_POSTGRES_URL") else {
            println!("PostgreSQL: skipped, BR_TEST_POSTGRES_URL is not set");
            return;
        };
        for workers in WORKERS {
            let schema = Schema::create(&admin);
            let url = schema.url.clone();
            let open = move || -> Box<dyn Store> {
                Box::new(PostgresStore::open(&url).expect("open postgres store"))
            };
            report("PostgreSQL", workers, run(&open, workers));
        }
    }
}

fn report(backend: &str, workers: usize, elapsed: Duration) {
    let per_second = TASKS as f64 / elapsed.as_secs_f64();
    println!(
        "  {backend:<10} {workers:>2} workers  {:>7.3} s  {per_second:>7.0} tasks/s  {:>6.3} ms per task per worker",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 * workers as f64 / TASKS as f64
    );
}

/// Submits `TASKS` no-op tasks and has `workers` threads claim and complete them all; returns
/// the time from the workers' start to the last completion.
fn run(open: &(dyn Fn() -> Box<dyn Store> + Sync), workers: usize) -> Duration {
    let setup = open();
    let tasks = (0..TASKS)
        .map(|i| task(&format!("t{i}"), &[], &[]))
        .collect();
    let session = submit(&*setup, plan("claims", tasks)).id;
    let start = Arc::new(Barrier::new(workers + 1));
    let started = std::thread::scope(|scope| {
        for _ in 0..workers {
            let (start, session) = (Arc::clone(&start), session.clone());
            scope.spawn(move || {
                let store = open();
                start.wait();
                work_session(&*store, &session, Record::WithNextClaim, |_| {
                    Outcome::Succeeded
                });
            });
        }
        start.wait();
        Instant::now()
    });
    let elapsed = started.elapsed();
    let end = setup.session(&session).expect("session");
    assert_eq!(
        end.succeeded_tasks as usize, TASKS,
        "every task completed once"
    );
    elapsed
}

/// A fresh schema for one run, dropped afterwards.
struct Schema {
    admin: String,
    name: String,
    url: String,
}

impl Schema {
    fn create(admin: &str) -> Schema {
        let name = format!("br_bench_{:016x}", fastrand::u64(..));
        let mut client = postgres::Client::connect(admin, postgres::NoTls).expect("connect");
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        let separator = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{separator}options=-csearch_path%3D{name}");
        Schema {
            admin: admin.to_string(),
            name,
            url,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
