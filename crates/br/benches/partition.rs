//! The partition benchmark: the partition scenarios of `tests/partition.rs`, many times over,
//! printing for each run how long after the cut attempt 1 was stopped and how much room was left
//! before attempt 2 started. Asserts nothing; a run where attempt 1 still ran when attempt 2
//! started is printed as OVERLAP and counted.
//!
//! `cargo bench -p br --bench partition [-- postgres|sqlite] [RUNS]` (20 runs each by default).
//! The PostgreSQL scenario needs `BR_TEST_POSTGRES_URL`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::PgSchema;
use common::partition::{Measured, postgres_cut, sqlite_locked};

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
