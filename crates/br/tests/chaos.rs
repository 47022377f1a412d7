//! The chaos run: a session of tasks with dependencies and overlapping locks, in worktrees, while
//! the harness kill -9s workers (and starts others), freezes others past their lease (SIGSTOP),
//! and on PostgreSQL also terminates their database connections and cuts their network (a proxy
//! that holds every byte). Then it checks, from the store and git alone, that every task reached
//! one terminal state exactly once and succeeded, that no stale result was accepted, that no two
//! holders ever held overlapping locks, that no lock is left held, and that every task's work is
//! on its branch. The session's work travels through a git remote (a bare repository): every
//! branch is read from there, and on PostgreSQL half of the workers run in another clone, so a
//! task's start, its result and its landing cross between clones.
//!
//! Size knobs (CI runs the defaults on both backends; `scripts/chaos` runs a bigger one):
//! `BR_CHAOS_TASKS` (24), `BR_CHAOS_WORKERS` (4), `BR_CHAOS_ACTIONS` (12), `BR_CHAOS_SEED`
//! (random, printed, so a failing run can be replayed).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use br_core::EventKind;
use br_store::audit::{audit_fencing, audit_lock_order, audit_terminal_once};
use common::proxy::Proxy;
use common::{Guard, PgSchema, TestRepo};
use nix::sys::signal::Signal;

const LEASE: &str = "2s";
/// The longest a chaos run may take before it counts as stuck.
const STUCK: Duration = Duration::from_secs(300);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Tasks with dependencies (every fifth waits for the one five before it) and locks that
/// overlap: a shared file, a directory, and a file inside that directory.
fn plan(tasks: u64) -> String {
    let mut plan = format!(
        "name = \"chaos\"\nremote = \"origin\"\nheartbeat_timeout = \"{LEASE}\"\nretries = 30\n"
    );
    for i in 0..tasks {
        let lock = match i % 4 {
            0 => "shared.txt",
            1 => "dir/**",
            2 => "dir/x.txt",
            _ => "",
        };
        let after = if i >= 5 && i % 5 == 0 {
            format!("\"t{}\"", i - 5)
        } else {
            String::new()
        };
        let files = if lock.is_empty() {
            format!("\"out/t{i}.txt\"")
        } else {
            format!("\"out/t{i}.txt\", \"{lock}\"")
        };
        let touch = match lock {
            "" => String::new(),
            "dir/**" => format!(" && echo t{i} >> dir/t{i}.txt"),
            _ => format!(" && echo t{i} >> {lock}"),
        };
        let sleep = 0.6 + f64::from(u32::try_from(i % 5).expect("small")) * 0.2;
        plan.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\n\
             run = \"sleep {sleep:.1} && mkdir -p out dir && echo t{i} > out/t{i}.txt{touch}\"\n\
             files = [{files}]\nafter = [{after}]\n"
        ));
    }
    plan
}

/// One worker slot of the harness: the process serving it now, and (PostgreSQL) the proxy it
/// reaches the store through.
struct Slot {
    worker: Option<Guard>,
    proxy: Option<Proxy>,
    /// Frozen until then.
    frozen_until: Option<Instant>,
    /// Cut off until then.
    cut_until: Option<Instant>,
}

struct Harness<'a> {
    repo: &'a TestRepo,
    /// Another clone (PostgreSQL): odd slots' workers run there.
    elsewhere: Option<TestRepo>,
    session: String,
    /// The store URL workers use, with the proxy's address put in per slot.
    store_url: Option<String>,
    slots: Vec<Slot>,
    /// The application name every br connection of this run carries (PostgreSQL).
    app: Option<String>,
    admin: Option<String>,
    actions: BTreeMap<&'static str, u32>,
}

impl Harness<'_> {
    fn spawn_worker(&mut self, index: usize) {
        let args = [
            "worker",
            "--session",
            &self.session,
            "--heartbeat-interval",
            "200ms",
            "--kill-grace",
            "300ms",
        ];
        let repo = match &self.elsewhere {
            Some(clone) if index % 2 == 1 => clone,
            _ => self.repo,
        };
        let slot = &mut self.slots[index];
        let worker = match (&self.store_url, &slot.proxy) {
            (Some(url), Some(proxy)) => {
                repo.spawn_with_store(&args, &common::partition::through(url, proxy))
            }
            _ => repo.spawn(&args),
        };
        slot.worker = Some(worker);
        slot.frozen_until = None;
    }

    fn act(&mut self, rng: &mut fastrand::Rng) {
        let index = rng.usize(..self.slots.len());
        let postgres = self.admin.is_some();
        let choice = rng.u32(..if postgres { 4 } else { 2 });
        if self.slots[index].frozen_until.is_some() || self.slots[index].cut_until.is_some() {
            return;
        }
        match choice {
            0 => {
                // kill -9: its reaper ends its task; its lease expires; a new worker comes.
                if let Some(worker) = self.slots[index].worker.take() {
                    worker.signal(Signal::SIGKILL);
                    drop(worker);
                }
                self.spawn_worker(index);
                *self.actions.entry("kill -9 a worker").or_default() += 1;
            }
            1 => {
                let until = Instant::now() + Duration::from_millis(2_500 + rng.u64(..1_000));
                if let Some(worker) = &self.slots[index].worker {
                    worker.signal(Signal::SIGSTOP);
                    self.slots[index].frozen_until = Some(until);
                    *self
                        .actions
                        .entry("freeze a worker past its lease")
                        .or_default() += 1;
                }
            }
            2 => {
                let (Some(admin), Some(app)) = (&self.admin, &self.app) else {
                    return;
                };
                let mut client = postgres::Client::connect(admin, postgres::NoTls).expect("admin");
                let rows = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1 ORDER BY random() LIMIT 1",
                        &[app],
                    )
                    .expect("terminate a connection");
                if !rows.is_empty() {
                    *self
                        .actions
                        .entry("terminate a database connection")
                        .or_default() += 1;
                }
            }
            _ => {
                if let Some(proxy) = &self.slots[index].proxy {
                    proxy.cut();
                    self.slots[index].cut_until =
                        Some(Instant::now() + Duration::from_millis(1_000 + rng.u64(..2_500)));
                    *self
                        .actions
                        .entry("cut a worker off the network")
                        .or_default() += 1;
                }
            }
        }
    }

    /// Thaws and heals what is due.
    fn tick(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            if slot.frozen_until.is_some_and(|t| t <= now) {
                if let Some(worker) = &slot.worker {
                    worker.signal(Signal::SIGCONT);
                }
                slot.frozen_until = None;
            }
            if slot.cut_until.is_some_and(|t| t <= now) {
                if let Some(proxy) = &slot.proxy {
                    proxy.heal();
                }
                slot.cut_until = None;
            }
        }
    }

    fn release_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(worker) = &slot.worker
                && slot.frozen_until.take().is_some()
            {
                worker.signal(Signal::SIGCONT);
            }
            if let Some(proxy) = &slot.proxy
                && slot.cut_until.take().is_some()
            {
                proxy.heal();
            }
        }
    }
}

impl Drop for Harness<'_> {
    fn drop(&mut self) {
        // A test that fails midway must not leave a worker frozen: its guard could not stop it.
        self.release_all();
    }
}

fn chaos(repo: &TestRepo, store_url: Option<&str>, admin: Option<&str>, app: Option<&str>) {
    let tasks = knob("BR_CHAOS_TASKS", 24);
    let workers = usize::try_from(knob("BR_CHAOS_WORKERS", 4)).expect("workers");
    let actions = knob("BR_CHAOS_ACTIONS", 12);
    let seed = knob("BR_CHAOS_SEED", fastrand::u64(..));
    println!("chaos: {tasks} tasks, {workers} workers, {actions} actions, BR_CHAOS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let bare = tempfile::tempdir().expect("temp dir");
    let remote = bare.path().display().to_string();
    repo.git(&[
        "init",
        "--quiet",
        "--bare",
        "--initial-branch=main",
        &remote,
    ]);
    repo.git(&["remote", "add", "origin", &remote]);
    repo.write("br.toml", &plan(tasks));
    repo.git(&["add", "br.toml"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
    repo.git(&["push", "--quiet", "origin", "main"]);
    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let session = submitted
        .stdout
        .lines()
        .last()
        .expect("session id")
        .trim()
        .to_string();
    let mut harness = Harness {
        repo,
        elsewhere: store_url.map(|_| repo.clone_elsewhere()),
        session: session.clone(),
        store_url: store_url.map(str::to_string),
        slots: (0..workers)
            .map(|_| Slot {
                worker: None,
                proxy: store_url.map(|url| Proxy::start(common::partition::upstream_of(url))),
                frozen_until: None,
                cut_until: None,
            })
            .collect(),
        app: app.map(str::to_string),
        admin: admin.map(str::to_string),
        actions: BTreeMap::new(),
    };
    for i in 0..workers {
        harness.spawn_worker(i);
    }
    let started = Instant::now();
    let mut done_actions = 0;
    let mut next_action = Instant::now() + Duration::from_millis(800);
    let store = repo.store();
    let id = br_core::SessionId::from_string(&session);
    loop {
        harness.tick();
        let s = store.session(&id).expect("session");
        if s.status.is_terminal() {
            break;
        }
        assert!(
            started.elapsed() < STUCK,
            "the session did not end within {STUCK:?} (seed {seed}): {s:?}"
        );
        if done_actions < actions && Instant::now() >= next_action {
            harness.act(&mut rng);
            done_actions += 1;
            next_action = Instant::now() + Duration::from_millis(400 + rng.u64(..400));
        }
        if done_actions >= actions {
            harness.release_all();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    harness.release_all();
    // Every worker leaves on its own once its session ended.
    for slot in &mut harness.slots {
        if let Some(worker) = slot.worker.take() {
            let run = worker.wait(Duration::from_secs(60));
            assert_eq!(
                run.code, 0,
                "a worker failed (seed {seed}):\n{}",
                run.stderr
            );
        }
    }
    println!(
        "chaos: ended in {:.1}s after {:?}",
        started.elapsed().as_secs_f64(),
        harness.actions
    );
    verify(repo, bare.path(), &session, seed);
}

/// git in the bare remote, which must succeed.
fn remote_git(bare: &std::path::Path, args: &[&str]) -> String {
    common::git_dir(bare, args).unwrap_or_else(|| panic!("git {args:?} in the remote failed"))
}

/// What must hold after any chaos, read from the store and the remote alone.
fn verify(repo: &TestRepo, bare: &std::path::Path, session: &str, seed: u64) {
    let status = repo.status(session);
    assert_eq!(status["status"], "completed", "seed {seed}: {status}");
    let events = repo.events();
    let ends = audit_terminal_once(&events).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(
        ends.values().all(|k| *k == EventKind::TaskSucceeded),
        "seed {seed}: every task succeeded: {ends:?}"
    );
    audit_fencing(&events).unwrap_or_else(|e| panic!("seed {seed}: a stale result: {e}"));
    let checked = audit_lock_order(&events).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(checked > 0);
    assert!(
        repo.store().locks().expect("locks").is_empty(),
        "seed {seed}: no lock is left held"
    );
    let count = |kind| events.iter().filter(|e| e.kind == kind).count();
    println!(
        "chaos: {} attempts, {} requeued, {} stale results refused, {} lock acquisitions audited",
        count(EventKind::TaskStarted),
        count(EventKind::TaskRequeued),
        count(EventKind::StaleResultRejected),
        checked
    );
    let tasks = status["tasks"].as_array().expect("tasks");
    for task in tasks {
        let id = task["id"].as_str().expect("id");
        let branch = task["branch"].as_str().expect("a branch");
        assert_eq!(
            remote_git(bare, &["show", &format!("{branch}:out/{id}.txt")]),
            id,
            "seed {seed}: {id}'s work is on its branch on the remote"
        );
    }
    // Everything landed, each task exactly once, whatever was killed in the middle of a landing;
    // and every line appended under a lock is on the integration branch once.
    assert_eq!(
        status["landed_tasks"],
        tasks.len(),
        "seed {seed}: all landed"
    );
    let integration = format!("br/{}/integration", status["slug"].as_str().expect("slug"));
    let merges = remote_git(
        bare,
        &["log", "--first-parent", "--format=%s", &integration],
    );
    for task in tasks {
        let id = task["id"].as_str().expect("id");
        assert_eq!(task["landing"], "landed", "seed {seed}: {id}");
        assert_eq!(
            remote_git(bare, &["show", &format!("{integration}:out/{id}.txt")]),
            id,
            "seed {seed}: {id}'s work landed on the remote"
        );
        let times = merges
            .lines()
            .filter(|s| *s == format!("br: merge task {id} of session chaos"))
            .count();
        assert_eq!(times, 1, "seed {seed}: {id} merged once");
    }
    for file in ["shared.txt", "dir/x.txt"] {
        let text = remote_git(bare, &["show", &format!("{integration}:{file}")]);
        let mut lines: Vec<&str> = text.lines().collect();
        let all = lines.len();
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), all, "seed {seed}: no line of {file} twice");
    }
}

#[test]
fn chaos_on_sqlite_loses_nothing_and_never_overlaps() {
    let repo = TestRepo::new();
    chaos(&repo, None, None, None);
}

#[test]
fn chaos_on_postgres_loses_nothing_and_never_overlaps() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let app = format!("br_chaos_{:08x}", fastrand::u32(..));
    let url = format!("{}&application_name={app}", schema.url());
    let repo = TestRepo::with_store(&url);
    let admin = std::env::var(common::POSTGRES_URL_VAR).expect("admin URL");
    chaos(&repo, Some(&url), Some(&admin), Some(&app));
}
