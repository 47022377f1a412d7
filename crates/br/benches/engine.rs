//! The engine benchmark: prints numbers, asserts nothing (run `cargo bench -p br --bench engine`).
//!
//! 1. 1,000 trivial tasks (`true`) in shared mode on 4 workers, against the same 1,000 commands
//!    through `xargs -P 4`, in the same run: wall times, their ratio, and br's overhead per task.
//! 2. 16 × `sleep 0.5` on 4 workers: the makespan against the ideal 2.0 s.
//! 3. Claim latency straight on the store: a 10-task session against a 10,000-task one, at
//!    its start and at its end.
//! 4. Fresh trees for attempts on a 5,000-file repository: br's reused worktree slots, from a
//!    fixed base and from a moving tip, the short way against the thorough one, and against
//!    plain `git worktree add` + `git worktree remove` per attempt.
//! 5. A fleet: 12 tasks in worktrees on 4 workers, half of them appending to shared files,
//!    with `start = "tip"` and `start = "base"`: wall time, and how many landed without a repair.
//!
//! 6. An agent fleet: 16 stand-in coding agents (1-3 s each, a quarter on one shared file) on 4
//!    workers with a pool of 3 and one rate limit: wall time against the ideal, landed without
//!    a repair, and br's own CPU time per task against `xargs -P 3` running the same scripts.
//!
//! 7. With `BR_TEST_POSTGRES_URL` set, the first benchmark again with the store in PostgreSQL
//!    (a fresh schema, dropped afterwards).
//!
//! `cargo bench -p br --bench engine -- NAME` runs only the sections whose name contains NAME
//! (throughput, makespan, claim, worktrees, fleet, agents, postgres).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use br_core::outcome::Outcome;
use br_core::{Plan, SessionStatus};
use br_store::sqlite::SqliteStore;
use br_store::{Claim, ClaimRequest, NewSession, NewWorker, Store};

#[path = "engine/agents.rs"]
mod agents;
#[path = "engine/fleet.rs"]
mod fleet;
#[path = "engine/worktrees.rs"]
mod worktrees;

const BR: &str = env!("CARGO_BIN_EXE_br");

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!(
        "br engine benchmark ({} CPUs)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    if want("throughput") {
        throughput();
    }
    if want("makespan") {
        makespan();
    }
    if want("claim") {
        claim_latency();
    }
    if want("worktrees") {
        worktrees();
    }
    if want("fleet") {
        fleet::fleet();
    }
    if want("agents") {
        agents::agents();
    }
    if want("postgres") {
        postgres_throughput();
    }
}

/// 1,000 × `true` on 4 workers with the store in PostgreSQL, against the same with the store in
/// SQLite, in one run: the two take turns (a fresh schema and a fresh repository each round) and
/// the medians are compared, as the VM's noise is larger than a single round can tell apart.
fn postgres_throughput() {
    const N: usize = 1000;
    const ROUNDS: usize = 5;
    let Ok(admin) = std::env::var("BR_TEST_POSTGRES_URL") else {
        println!(
            "
(PostgreSQL: skipped, BR_TEST_POSTGRES_URL is not set)"
        );
        return;
    };
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
    let separator = if admin.contains('?') { '&' } else { '?' };
    let (mut pg_walls, mut pg_spans, mut sqlite_walls) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let plan = |name: &str| plan_of(name, (0..N).map(|_| "true".to_string()));
        let repo = Repo::new();
        let (wall, _) = repo.run(&plan(&format!("throughput-sqlite-{round}")), 4);
        sqlite_walls.push(wall);
        let schema = format!("br_bench_{:016x}", fastrand::u64(..));
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("create schema");
        let url = format!("{admin}{separator}options=-csearch_path%3D{schema}");
        let repo = Repo::new();
        let result = std::panic::catch_unwind(|| {
            repo.run_with_store(&plan(&format!("throughput-pg-{round}")), 4, Some(&url))
        });
        let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
        let (wall, span) = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
        pg_walls.push(wall);
        pg_spans.push(span);
    }
    let ratios: Vec<String> = pg_walls
        .iter()
        .zip(&sqlite_walls)
        .map(|(p, s)| format!("{:.2}", p.as_secs_f64() / s.as_secs_f64()))
        .collect();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (pg, sqlite) = (median(&mut pg_walls), median(&mut sqlite_walls));
    println!(
        "\n1,000 × `true`, shared mode, 4 workers: store in PostgreSQL (local server) against SQLite \
         (median of {ROUNDS} rounds, taking turns)"
    );
    println!(
        "  br run, PostgreSQL (wall)      {:>8.3} s",
        pg.as_secs_f64()
    );
    println!(
        "  br session makespan            {:>8.3} s",
        median(&mut pg_spans).as_secs_f64()
    );
    println!(
        "  br run, SQLite (wall)          {:>8.3} s",
        sqlite.as_secs_f64()
    );
    println!(
        "  ratio PostgreSQL / SQLite      {:>8.2}",
        pg.as_secs_f64() / sqlite.as_secs_f64()
    );
    println!("  each round's ratio             {}", ratios.join(" "));
}

/// Prints br's times for `n` trivial tasks on 4 workers against xargs's, and the overhead.
fn print_against_xargs(
    title: &str,
    br_wall: Duration,
    br_span: Duration,
    xargs_wall: Duration,
    n: usize,
) {
    let per_task = (br_wall.as_secs_f64() - xargs_wall.as_secs_f64()) / n as f64 * 1000.0;
    println!("\n{title}");
    println!(
        "  br run (wall, incl. startup)  {:>8.3} s",
        br_wall.as_secs_f64()
    );
    println!(
        "  br session makespan           {:>8.3} s",
        br_span.as_secs_f64()
    );
    println!(
        "  xargs -P 4                    {:>8.3} s",
        xargs_wall.as_secs_f64()
    );
    println!(
        "  ratio br / xargs              {:>8.2}",
        br_wall.as_secs_f64() / xargs_wall.as_secs_f64()
    );
    println!(
        "  overhead per task             {:>8.3} ms of wall time ({:.3} ms of worker time per task with 4 workers)",
        per_task,
        per_task * 4.0
    );
}

/// Runs `n` × `true` through `xargs -P 4` in `dir`; returns the wall time.
fn xargs_trues(dir: &Path, n: usize) -> Duration {
    let started = Instant::now();
    let mut xargs = Command::new("xargs")
        .args(["-P", "4", "-n", "1", "sh", "-c"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("xargs");
    {
        let mut stdin = xargs.stdin.take().expect("stdin");
        for _ in 0..n {
            writeln!(stdin, "true").expect("feed xargs");
        }
    }
    assert!(xargs.wait().expect("xargs").success());
    started.elapsed()
}

fn worktrees() {
    use worktrees::{bench_worktrees, build_repository};
    let dir = tempfile::tempdir().expect("temp dir");
    let repo =
        build_repository(&dir.path().join("repo"), 5000).expect("build a 5,000-file repository");
    let timings = bench_worktrees(&repo, 12, 6).expect("time worktrees");
    println!("\nfresh trees for attempts (5,000-file repository)\n{timings}");
}

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::Builder::new()
            .prefix("br-bench-")
            .tempdir()
            .expect("temp dir");
        let repo = Repo { dir };
        repo.git(&["init", "--quiet"]);
        std::fs::write(repo.path().join("README.md"), "bench\n").expect("write");
        repo.git(&["add", "--all"]);
        repo.git(&[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "--quiet",
            "-m",
            "init",
        ]);
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) {
        let ok = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    }

    /// Runs a plan with `br run`; returns the wall time and the session's makespan.
    fn run(&self, plan: &str, workers: u32) -> (Duration, Duration) {
        self.run_with_store(plan, workers, None)
    }

    /// The same, with the store at `store` (`BR_STORE`) when given.
    fn run_with_store(
        &self,
        plan: &str,
        workers: u32,
        store: Option<&str>,
    ) -> (Duration, Duration) {
        std::fs::write(self.path().join("br.toml"), plan).expect("write plan");
        let started = Instant::now();
        let mut command = Command::new(BR);
        command
            .args(["run", "--workers", &workers.to_string(), "--json"])
            .current_dir(self.path())
            .stderr(Stdio::inherit());
        if let Some(url) = store {
            command.env("BR_STORE", url);
        }
        let out = command.output().expect("br run");
        let wall = started.elapsed();
        assert!(
            out.status.success(),
            "br run failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let ms = |key: &str| {
            humantime::parse_rfc3339(status[key].as_str().expect("timestamp")).expect("rfc3339")
        };
        let makespan = ms("completed_at")
            .duration_since(ms("started_at"))
            .unwrap_or_default();
        (wall, makespan)
    }
}

fn plan_of(name: &str, commands: impl Iterator<Item = String>) -> String {
    let mut plan = format!("name = \"{name}\"\nisolation = \"shared\"\n");
    for (i, run) in commands.enumerate() {
        plan.push_str(&format!("[[task]]\nid = \"t{i}\"\nrun = \"{run}\"\n"));
    }
    plan
}

/// The rounds of the throughput benchmark: one run on a 2-core VM varies by ±15%, so br and xargs
/// take turns and the medians are compared.
const THROUGHPUT_ROUNDS: usize = 7;

fn throughput() {
    const N: usize = 1000;
    let mut br_walls = Vec::new();
    let mut br_spans = Vec::new();
    let mut xargs_walls = Vec::new();
    for round in 0..THROUGHPUT_ROUNDS {
        let repo = Repo::new();
        let (br_wall, br_span) = repo.run(
            &plan_of(
                &format!("throughput-{round}"),
                (0..N).map(|_| "true".to_string()),
            ),
            4,
        );
        br_walls.push(br_wall);
        br_spans.push(br_span);
        xargs_walls.push(xargs_trues(repo.path(), N));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let ratios: Vec<String> = br_walls
        .iter()
        .zip(&xargs_walls)
        .map(|(b, x)| format!("{:.2}", b.as_secs_f64() / x.as_secs_f64()))
        .collect();
    print_against_xargs(
        &format!("1,000 × `true`, shared mode, 4 workers (median of {THROUGHPUT_ROUNDS} rounds)"),
        median(&mut br_walls),
        median(&mut br_spans),
        median(&mut xargs_walls),
        N,
    );
    println!("  each round's ratio            {}", ratios.join(" "));
}

fn makespan() {
    let repo = Repo::new();
    let (wall, span) = repo.run(
        &plan_of("makespan", (0..16).map(|_| "sleep 0.5".to_string())),
        4,
    );
    println!("\n16 × `sleep 0.5`, 4 workers (ideal makespan 2.000 s)");
    println!(
        "  session makespan  {:>8.3} s  ({:+.1}% of ideal)",
        span.as_secs_f64(),
        (span.as_secs_f64() / 2.0 - 1.0) * 100.0
    );
    println!("  br run wall time  {:>8.3} s", wall.as_secs_f64());
}

fn claim_latency() {
    println!("\nclaim + finish latency on the store (SQLite), one worker");
    for n in [10usize, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("br.db")).expect("store");
        let text = plan_of("claims", (0..n).map(|_| "true".to_string()));
        let plan = Plan::parse(&text, Path::new("bench.toml")).expect("plan");
        let created = Instant::now();
        let session = store
            .create_session(&NewSession {
                plan,
                repo_root: dir.path().to_path_buf(),
                repo_id: None,
                plan_path: None,
                base_commit: None,
                workers_wanted: 1,
            })
            .expect("session");
        let create_time = created.elapsed();
        let worker = store
            .register_worker(&NewWorker {
                host: "bench".into(),
                pid: std::process::id(),
                session: None,
                heartbeat_timeout: Duration::from_secs(30),
            })
            .expect("worker");
        // Every claim and finish of the whole session, so the last claims (where a scan past
        // finished tasks would show) are measured as well as the first.
        let mut claims = Vec::with_capacity(n);
        let mut finishes = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let claim = store
                .claim_next_task(&ClaimRequest {
                    worker: &worker,
                    session: None,
                    log_dir: dir.path(),
                    repo_id: None,
                    remote_only: false,
                })
                .expect("claim");
            claims.push(t.elapsed());
            let Claim::Task(task) = claim else {
                panic!("expected a task")
            };
            let t = Instant::now();
            store
                .finish_attempt(&task.lease, &Outcome::Succeeded)
                .expect("finish");
            finishes.push(t.elapsed());
        }
        assert_eq!(
            store.session(&session.id).expect("session").status,
            SessionStatus::Completed
        );
        let k = 10.min(n);
        println!(
            "  {n:>6}-task session: claim median {:>6.0} µs (first {k}: {:>6.0} µs, last {k}: {:>6.0} µs); finish median {:>6.0} µs; submit {:.1} ms",
            median_us(&claims),
            median_us(&claims[..k]),
            median_us(&claims[n - k..]),
            median_us(&finishes),
            create_time.as_secs_f64() * 1e3,
        );
    }
}

fn median_us(samples: &[Duration]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2].as_secs_f64() * 1e6
}
