//! The CLI on a big session (issue 12): a plan of 20,000 tasks (a third of them waiting for one
//! or two earlier tasks, most locking a file or a module of their own), in a real git
//! repository in a temp dir with hermetic git config, timed through the real binary as a child
//! process:
//!
//! 1. `br submit` of the plan, each round into a fresh store;
//! 2. `br status --json` of the session just submitted, and of the same session once a quarter
//!    of its tasks ended (one in 25 of them failed, skipping what waited for it) and 8 run —
//!    this process plays the workers through the store, as `serve.rs` does; `br status` (text)
//!    too, which says why each waiting task waits;
//! 3. the dashboard: `br dashboard --once` (a full snapshot and one frame), and the refresh the
//!    terminal dashboard does every time the store changes (`SnapshotBuilder::refresh` after one
//!    task ends and the next starts, as `br-tui`'s `run.rs` calls it), in this process.
//!
//! Each figure is the median of the rounds, wall time, with the CPU time of the child (user +
//! system) beside it: the VM is shared and noisy. It prints numbers and asserts nothing.
//!
//! Run: `cargo bench -p br --bench scale -- [TASKS] [ROUNDS]` (20,000 tasks, 10 rounds). With
//! `BR_BENCH_BASELINE=/path/to/an/older/br`, every command is timed for that binary too, the
//! two taking turns round by round, so a before and an after come from the same minutes of a
//! noisy machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use br_core::outcome::Outcome;
use br_store::snapshot::{Snapshot, SnapshotBuilder};
use br_store::sqlite::SqliteStore;
use br_store::{Claim, ClaimRequest, Lease, Store};
use common::TestRepo;
use nix::sys::resource::{UsageWho, getrusage};

#[path = "shared/bench.rs"]
mod bench;

use bench::{arg, register_workers};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let (tasks, rounds) = (arg(0, 20_000_usize), arg(1, 10_usize).max(1));
    let mut binaries = vec![Binary {
        name: "br".into(),
        path: common::BR.into(),
    }];
    if let Some(path) = std::env::var_os("BR_BENCH_BASELINE") {
        binaries.push(Binary {
            name: "baseline".into(),
            path: path.into(),
        });
    }
    let repo = TestRepo::new();
    repo.commit_plan(&plan(tasks));
    println!(
        "br scale benchmark: a plan of {tasks} tasks ({} kB), {rounds} rounds, medians (wall, CPU of br)",
        repo.read("br.toml").len() / 1000
    );
    for b in &binaries {
        println!("  {}: {}", b.name, b.path.display());
    }

    // 1. Submit, into a fresh store each time (the last one stays for what follows).
    let submit_rounds = rounds.div_ceil(2).max(3);
    let mut session = String::new();
    compare(
        &format!("br submit ({submit_rounds} rounds, fresh store)"),
        &binaries,
        submit_rounds,
        |bin| {
            let _ = std::fs::remove_dir_all(repo.path().join(".git").join("br"));
            let out = run(&repo, bin, &["submit", "br.toml"]);
            session = out.lines().last().unwrap_or_default().to_string();
        },
    );

    // 2. Status of the session as submitted: every task queued.
    let bytes = run(&repo, &binaries[0], &["status", "--json"]).len();
    compare(
        &format!("br status --json, just submitted ({} kB)", bytes / 1000),
        &binaries,
        rounds,
        |bin| {
            run(&repo, bin, &["status", "--json"]);
        },
    );
    compare(
        "br status (text), just submitted",
        &binaries,
        rounds,
        |bin| {
            run(&repo, bin, &["status"]);
        },
    );

    // A quarter of the session done, 8 tasks running.
    let store = SqliteStore::open(&repo.store_path())?;
    let log_dir = repo.store_path().with_file_name("logs");
    let mut workers = Workers::register(&store, &session, 8, log_dir)?;
    let t = Instant::now();
    let ended = workers.end_tasks(tasks / 4)?;
    println!(
        "  (the store: {ended} tasks ended by 8 workers in {:.1} s, 8 running)",
        t.elapsed().as_secs_f64()
    );
    let bytes = run(&repo, &binaries[0], &["status", "--json"]).len();
    compare(
        &format!("br status --json, a quarter done ({} kB)", bytes / 1000),
        &binaries,
        rounds,
        |bin| {
            run(&repo, bin, &["status", "--json"]);
        },
    );
    compare(
        "br status (text), a quarter done",
        &binaries,
        rounds,
        |bin| {
            run(&repo, bin, &["status"]);
        },
    );

    // 3. The dashboard.
    compare("br dashboard --once", &binaries, rounds, |bin| {
        run(&repo, bin, &["dashboard", "--once"]);
    });
    let id = br_core::SessionId::from_string(session.clone());
    let mut builder = SnapshotBuilder::new(Some(id));
    let mut snapshot = Snapshot::empty(store.now()?);
    let t = Instant::now();
    builder.refresh(&store, &mut snapshot)?;
    println!(
        "  {:<58} {:>8.1} ms",
        "dashboard's first snapshot (in process)",
        ms(t.elapsed())
    );
    let mut refreshes = Vec::new();
    for _ in 0..rounds * 2 {
        workers.end_tasks(1)?;
        let t = Instant::now();
        builder.refresh(&store, &mut snapshot)?;
        refreshes.push((t.elapsed(), Duration::ZERO));
    }
    report(
        "dashboard refresh after a task ended (in process)",
        &refreshes,
    );
    Ok(())
}

/// A br binary to time: this build's, or the baseline's.
struct Binary {
    name: String,
    path: std::path::PathBuf,
}

/// Times `f` for each binary, `rounds` times, the binaries taking turns; prints each one's
/// figures.
fn compare(what: &str, binaries: &[Binary], rounds: usize, mut f: impl FnMut(&Binary)) {
    let mut samples: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); binaries.len()];
    for _ in 0..rounds {
        for (b, of) in binaries.iter().zip(&mut samples) {
            of.extend(timed(1, || f(b)));
        }
    }
    for (b, of) in binaries.iter().zip(&samples) {
        if binaries.len() == 1 {
            report(what, of);
        } else {
            report(&format!("{what} [{}]", b.name), of);
        }
    }
}

/// A plan of `n` tasks: ids in plan order; 7 in 10 lock one file of their own, 2 in 10 a
/// module's directory (64 modules, so some wait for each other's locks), the rest nothing; a
/// third wait for one or two of the 200 tasks before them.
fn plan(n: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(12);
    let mut text = String::from(
        "name = \"scale\"\nland = \"manual\"\nheartbeat_timeout = \"60s\"\nretries = 0\n",
    );
    for i in 0..n {
        let module = rng.usize(..64);
        let _ = write!(
            text,
            "\n[[task]]\nid = \"t{i:05}\"\nrun = \"make -C mod-{module} part-{i}\"\n"
        );
        match rng.u8(..10) {
            0..7 => {
                let _ = writeln!(text, "files = [\"src/mod-{module}/part-{i}.rs\"]");
            }
            7..9 => {
                let _ = writeln!(text, "files = [\"src/mod-{module}/**\"]");
            }
            _ => {}
        }
        if i >= 10 && rng.u8(..3) == 0 {
            let mut after = vec![rng.usize(i.saturating_sub(200)..i)];
            if rng.bool() {
                let other = rng.usize(i.saturating_sub(200)..i);
                if other != after[0] {
                    after.push(other);
                }
            }
            let after: Vec<String> = after.iter().map(|a| format!("\"t{a:05}\"")).collect();
            let _ = writeln!(text, "after = [{}]", after.join(", "));
        }
    }
    text
}

/// Workers played by this process through the store: each holds one running task.
struct Workers<'a> {
    store: &'a SqliteStore,
    session: br_core::SessionId,
    repo_id: Option<String>,
    log_dir: std::path::PathBuf,
    workers: Vec<br_core::WorkerId>,
    running: Vec<Option<Lease>>,
    ended: usize,
}

impl<'a> Workers<'a> {
    fn register(
        store: &'a SqliteStore,
        session: &str,
        n: u32,
        log_dir: std::path::PathBuf,
    ) -> Result<Workers<'a>, Error> {
        let session = store.resolve_session(session)?;
        let workers = register_workers(store, &session.id, n)?;
        let mut w = Workers {
            store,
            repo_id: session.repo_id.clone(),
            session: session.id,
            log_dir,
            running: vec![None; workers.len()],
            workers,
            ended: 0,
        };
        for i in 0..w.workers.len() {
            w.claim(i)?;
        }
        Ok(w)
    }

    fn claim(&mut self, i: usize) -> Result<(), Error> {
        self.running[i] = match self.store.claim_next_task(&ClaimRequest {
            worker: &self.workers[i],
            session: Some(&self.session),
            log_dir: &self.log_dir,
            repo_id: self.repo_id.as_deref(),
            remote_only: false,
        })? {
            Claim::Task(task) => Some(task.lease),
            Claim::Nothing | Claim::Stop | Claim::Land(_) => None,
        };
        Ok(())
    }

    /// Ends `n` running tasks (one in 25 failing), each worker claiming the next; returns how
    /// many ended.
    fn end_tasks(&mut self, n: usize) -> Result<usize, Error> {
        let mut ended = 0;
        let mut idle_rounds = 0;
        while ended < n && idle_rounds < self.workers.len() {
            let i = self.ended % self.workers.len();
            self.ended += 1;
            let Some(lease) = self.running[i].take() else {
                idle_rounds += 1;
                self.claim(i)?;
                continue;
            };
            idle_rounds = 0;
            let outcome = if self.ended.is_multiple_of(25) {
                Outcome::Failed { exit_code: 2 }
            } else {
                Outcome::Succeeded
            };
            self.store.finish_attempt(&lease, &outcome)?;
            ended += 1;
            self.claim(i)?;
        }
        Ok(ended)
    }
}

/// Runs `bin` in the repository to its end, its output read whole; returns its stdout.
fn run(repo: &TestRepo, bin: &Binary, args: &[&str]) -> String {
    // The harness's command (hermetic environment), with the program swapped.
    let harness = repo.br_command(args);
    let mut command = Command::new(&bin.path);
    command
        .args(harness.get_args())
        .current_dir(repo.path())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in harness.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let out = command.output().expect("run br");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `f` run `rounds` times: the wall time of each, and the CPU time of the children it waited
/// for.
fn timed(rounds: usize, mut f: impl FnMut()) -> Vec<(Duration, Duration)> {
    (0..rounds)
        .map(|_| {
            let cpu = children_cpu();
            let t = Instant::now();
            f();
            (t.elapsed(), children_cpu().saturating_sub(cpu))
        })
        .collect()
}

/// CPU time (user + system) of the children this process waited for.
fn children_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
        };
        t(u.user_time()) + t(u.system_time())
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, samples: &[(Duration, Duration)]) {
    let mut wall: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    let mut cpu: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    wall.sort();
    cpu.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    let cpu_text = if cpu.iter().all(Duration::is_zero) {
        String::new()
    } else {
        format!(", CPU {:.1} ms", ms(median(&cpu)))
    };
    println!(
        "  {what:<58} {:>8.1} ms (min {:.1}, max {:.1}{cpu_text})",
        ms(median(&wall)),
        ms(wall[0]),
        ms(wall[wall.len() - 1]),
    );
}
