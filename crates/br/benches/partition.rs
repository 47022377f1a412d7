//! The partition benchmark: the partition scenarios of `tests/partition.rs`, many times over,
//! printing for each run how long after the cut attempt 1 was stopped and how much room was left
//! before attempt 2 started. Asserts nothing; a run where attempt 1 still ran when attempt 2
//! started is printed as OVERLAP and counted.
//!
//! `cargo bench -p br --bench partition [-- postgres|sqlite|killed] [RUNS]` (20 runs each by
//! default). `killed` measures the time from a worker's `kill -9` to its task running elsewhere.
//! The PostgreSQL scenario needs `BR_TEST_POSTGRES_URL`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::PgSchema;
use common::partition::{LEASE, Measured, Trace, postgres_cut, sqlite_locked, worker_killed};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let only = args.iter().find(|a| a.parse::<u32>().is_err()).cloned();
    let runs = args
        .iter()
        .find_map(|a| a.parse::<u32>().ok())
        .unwrap_or(20);
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!(
        "br partition benchmark: {runs} runs each, lease {}s, heartbeat every 200ms",
        common::partition::LEASE.as_secs()
    );
    if want("postgres") {
        if std::env::var_os(common::POSTGRES_URL_VAR).is_none() {
            println!(
                "\nPostgreSQL cut: skipped, {} is not set",
                common::POSTGRES_URL_VAR
            );
        } else {
            report("PostgreSQL behind a cut proxy", runs, || {
                let schema = PgSchema::create().expect("a schema");
                postgres_cut(&schema)
            });
        }
    }
    if want("sqlite") {
        report("SQLite held locked past the lease", runs, sqlite_locked);
    }
    if want("killed") {
        takeover("a worker killed mid-task, SQLite", runs, || {
            worker_killed(None)
        });
        if std::env::var_os(common::POSTGRES_URL_VAR).is_some() {
            takeover("a worker killed mid-task, PostgreSQL", runs, || {
                let schema = PgSchema::create().expect("a schema");
                worker_killed(Some(&schema))
            });
        }
    }
}

/// From a worker's `kill -9` to its task's next attempt starting on another worker: the lease
/// must expire first (by design), then any process's next requeue frees the task and the waiting
/// worker claims it.
fn takeover(title: &str, runs: u32, mut scenario: impl FnMut() -> (Trace, Duration)) {
    println!(
        "\n{title}: from the kill to attempt 2 starting elsewhere (lease {}s)",
        LEASE.as_secs()
    );
    let mut took: Vec<Duration> = Vec::new();
    let mut overlaps = 0;
    for _ in 0..runs {
        let (trace, d) = scenario();
        overlaps += u32::from(trace.overlap);
        took.push(d);
    }
    took.sort();
    println!(
        "  min {} ms, median {} ms, max {} ms; attempt 1 still running at attempt 2: {overlaps} of {runs}",
        took[0].as_millis(),
        took[took.len() / 2].as_millis(),
        took[took.len() - 1].as_millis()
    );
}

fn report(title: &str, runs: u32, mut scenario: impl FnMut() -> Measured) {
    println!("\n{title}");
    println!("  run  stopped after cut  room before attempt 2");
    let mut rooms = Vec::new();
    let mut overlaps = 0;
    for i in 1..=runs {
        let m = scenario();
        let room = m.trace.gap();
        if m.trace.overlap || room.is_none() {
            overlaps += 1;
        }
        println!(
            "  {i:>3}  {:>14} ms  {:>17}{}",
            m.stopped_after.as_millis(),
            room.map_or("?".to_string(), |r| format!("{} ms", r.as_millis())),
            if m.trace.overlap { "  OVERLAP" } else { "" }
        );
        rooms.extend(room);
    }
    rooms.sort();
    let ms = |d: Option<&Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
    println!(
        "  room before attempt 2: min {} ms, median {} ms, max {} ms; overlaps: {overlaps} of {runs}",
        ms(rooms.first()),
        ms(rooms.get(rooms.len() / 2)),
        ms(rooms.last())
    );
}
