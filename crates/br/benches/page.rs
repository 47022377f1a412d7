//! Measures the web run page on a big session, in a real browser on the same machine: a real
//! SQLite store gets a session of 20,000 tasks (dependencies in chains of ten, every 40th task
//! failing its first attempt and passing its retry), run to the end by eight workers played by
//! this process; `br serve` (the real binary) serves it and headless Chromium, driven by
//! chromedriver, opens its run page and task views. The page times itself (`brTimings`):
//!
//! - `history`: from asking for the session's history to having it parsed;
//! - `timeline`: from asking for the session's history to its timeline drawn;
//! - `timeline_since_load`: from the page's navigation start to the same moment;
//! - `task_view`: from a click on a task to its view drawn with its attempts.
//!
//! It prints the median of each over several loads; it asserts nothing about them (benchmarks
//! measure, tests assert behaviour). Needs `BR_TEST_CHROMEDRIVER` (chromedriver's path).
//!
//! Run: `cargo bench -p br --bench page -- [TASKS] [LOADS]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use br_core::Plan;
use br_core::outcome::Outcome;
use br_store::sqlite::SqliteStore;
use br_store::{Claim, ClaimRequest, NewSession, Store};
use common::browser::{Browser, DRIVER_VAR};
use serde_json::Value;

#[path = "shared/bench.rs"]
mod bench;
#[path = "shared/server.rs"]
mod server;

use bench::{arg, register_workers};
use server::{Error, Server};

/// A session of `tasks` tasks in chains of ten, each with a file of its own, one retry each.
fn big_session(store: &SqliteStore, tasks: u64) -> Result<br_store::Session, Error> {
    let mut text = String::from(
        "name = \"page-bench\"\nisolation = \"shared\"\nretries = 1\nheartbeat_timeout = \"60s\"\n",
    );
    for i in 0..tasks {
        write!(
            text,
            "[[task]]\nid = \"task-{i:05}\"\nrun = \"make part-{i}\"\nfiles = [\"src/part-{i}.rs\"]\n"
        )?;
        if i % 10 != 0 {
            writeln!(text, "after = [\"task-{:05}\"]", i - 1)?;
        }
    }
    let plan = Plan::parse(&text, Path::new("page.toml"))?;
    Ok(store.create_session(&NewSession {
        plan,
        repo_root: PathBuf::from("/repo"),
        plan_path: None,
        base_commit: None,
        workers_wanted: 8,
        repo_id: None,
    })?)
}

/// Runs the session to its end with eight workers: every 40th task fails its first attempt.
fn run_it(store: &SqliteStore, session: &br_store::Session, logs: &Path) -> Result<u64, Error> {
    let workers = register_workers(store, &session.id, 8)?;
    let mut attempts = 0;
    loop {
        let mut claimed = Vec::new();
        for w in &workers {
            let request = ClaimRequest {
                worker: w,
                session: Some(&session.id),
                log_dir: logs,
                repo_id: None,
                remote_only: false,
            };
            if let Claim::Task(task) = store.claim_next_task(&request)? {
                claimed.push(task.lease);
            }
        }
        if claimed.is_empty() {
            return Ok(attempts);
        }
        for lease in claimed {
            attempts += 1;
            let n: u64 = lease.task_id.as_str()[5..].parse()?;
            let outcome = if n % 40 == 7 && lease.attempt.0 == 1 {
                Outcome::Failed { exit_code: 1 }
            } else {
                Outcome::Succeeded
            };
            store.append_log(&lease, 0, format!("building part {n}\n").as_bytes())?;
            store.finish_attempt(&lease, &outcome)?;
        }
    }
}

/// Waits until the page's `brTimings[name]` is set, and returns it.
fn timing(browser: &Browser, name: &str) -> Result<f64, Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = browser.eval(&format!(
            "return typeof brTimings === 'undefined' ? null : (brTimings[{}] ?? null)",
            Value::from(name)
        ));
        if let Some(ms) = value.as_f64() {
            return Ok(ms);
        }
        if Instant::now() > deadline {
            return Err(format!("the page never reported `{name}`").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long `GET path` takes to answer whole, in ms, and how many bytes it answered.
fn get(addr: SocketAddr, path: &str) -> Result<(f64, usize), Error> {
    let t = Instant::now();
    let mut socket = TcpStream::connect(addr)?;
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer)?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, answer.len()))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Error> {
    let Ok(driver) = std::env::var(DRIVER_VAR) else {
        println!("skipped: set {DRIVER_VAR} to chromedriver's path to run this benchmark");
        return Ok(());
    };
    let (tasks, loads) = (arg(0, 20_000_u64), arg(1, 5_u64).max(1));
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("br.db");
    let store = SqliteStore::open(&db)?;
    let t = Instant::now();
    let session = big_session(&store, tasks)?;
    let attempts = run_it(&store, &session, &dir.path().join("logs"))?;
    println!(
        "store: a session of {tasks} tasks run to its end in {attempts} attempts ({:.1?})",
        t.elapsed()
    );
    // To look into the store afterwards (e.g. with sqlite3), keep a copy of it.
    if let Some(keep) = std::env::var_os("BR_BENCH_KEEP_STORE") {
        std::fs::copy(&db, &keep)?;
    }
    let server = Server::start(&db)?;
    let path = format!("/api/sessions/{}/history", session.id);
    let mut served = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let (ms, n) = get(server.addr, &path)?;
        served.push(ms);
        bytes = n;
    }
    println!(
        "GET {path} alone: {:.0} ms (median of 5), {:.1} MB",
        median(served),
        bytes as f64 / 1e6
    );
    let browser = Browser::open(&driver);
    browser.resize(1280, 1000);
    let (mut history, mut timeline, mut since_load, mut task_view) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for load in 0..loads {
        // A fresh page each time (about:blank in between, so the fragment is a navigation).
        browser.go("about:blank");
        browser.go(&format!("http://{}/#session={}", server.addr, session.id));
        timeline.push(timing(&browser, "timeline")?);
        history.push(timing(&browser, "history")?);
        since_load.push(timing(&browser, "timeline_since_load")?);
        let task = format!("task-{:05}", (load * 3_917 + 7) % tasks);
        browser.eval(&format!(
            "showTask({}, null); return true",
            Value::from(task)
        ));
        task_view.push(timing(&browser, "task_view")?);
    }
    println!(
        "run page of {tasks} tasks ({loads} loads, medians): timeline {:.0} ms from asking \
         for the history (which came in {:.0} ms; {:.0} ms from navigation start); task view \
         {:.0} ms from click to drawn",
        median(timeline),
        median(history),
        median(since_load),
        median(task_view)
    );
    drop(browser);
    drop(server);
    Ok(())
}
