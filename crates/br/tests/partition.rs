//! Partitions: a worker cut off from its store — PostgreSQL behind a cut network, SQLite held
//! locked by another process — stops its task before anyone else may start it, and the session
//! completes once the store is back; a PostgreSQL restart in the middle of a run loses nothing.
//! The margins over many runs: `cargo bench -p br --bench partition`.
//!
//! The PostgreSQL tests need `BR_TEST_POSTGRES_URL` (a shared server) or PostgreSQL's server
//! binaries (a server of the test's own); without them they say they were skipped.

mod common;

use std::time::Duration;

use br_store::audit::{audit_fencing, audit_lock_order, audit_terminal_once};
use common::partition::{
    assert_no_overlap, describe, postgres_cut, postgres_frozen, sqlite_locked,
};
use common::pg_server::PgServer;
use common::{PgSchema, TestRepo, poll};

const LONG: Duration = Duration::from_secs(90);

#[test]
fn a_worker_cut_off_from_postgres_stops_its_task_before_another_worker_starts_it() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let measured = postgres_cut(&schema);
    println!("{}", describe(&measured));
    assert_no_overlap(&measured);
}

#[test]
fn a_worker_whose_sqlite_store_stays_locked_past_its_lease_stops_its_task_first() {
    let measured = sqlite_locked();
    println!("{}", describe(&measured));
    assert_no_overlap(&measured);
}

#[test]
fn a_worker_whose_postgres_server_stops_answering_stops_its_task_first() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let measured = postgres_frozen(&server);
    println!("{}", describe(&measured));
    assert_no_overlap(&measured);
}

#[test]
fn a_postgres_restart_in_the_middle_of_a_run_loses_nothing() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let repo = TestRepo::with_store(&server.url());
    let mut plan =
        String::from("name = \"restart\"\nisolation = \"shared\"\nheartbeat_timeout = \"3s\"\n");
    for i in 0..8 {
        // Half the tasks share a lock, so they also queue behind each other.
        let files = if i % 2 == 0 {
            "shared.txt".to_string()
        } else {
            format!("own{i}.txt")
        };
        let after = if i >= 4 {
            format!("after = [\"t{}\"]\n", i - 4)
        } else {
            String::new()
        };
        plan.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\nrun = \"sleep 0.7; echo t{i} >> {files}\"\nfiles = [\"{files}\"]\n{after}"
        ));
    }
    repo.write("br.toml", &plan);
    let run = repo.spawn(&["run", "--workers", "3", "--heartbeat-interval", "200ms"]);
    poll("a first task to finish", LONG, || {
        let store = repo.store();
        let s = store
            .list_sessions(&Default::default())
            .ok()?
            .into_iter()
            .next()?;
        (s.succeeded_tasks >= 1 && s.running_tasks >= 1).then_some(())
    });
    server.restart(Duration::from_millis(1500));
    let done = run.wait(LONG);
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, done.stderr);
    println!("{}", done.stdout);
    let status = repo.status("restart");
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["completed_tasks"], 8, "{status}");
    let events = repo.events();
    audit_lock_order(&events).expect("no two holders of a lock");
    audit_terminal_once(&events).expect("every task ended once");
    audit_fencing(&events).expect("no stale result accepted");
    assert!(repo.store().locks().expect("locks").is_empty());
}
