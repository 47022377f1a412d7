//! Shared test harness: a real git repository in a temp dir with hermetic git configuration, the
//! real `br` binary, its store opened directly for assertions, and guards that make sure no
//! process a test starts outlives it.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) mod browser;
pub(crate) mod partition;
pub(crate) mod pg_server;
pub(crate) mod proxy;
pub(crate) mod served;
pub(crate) mod tmpfs;
pub(crate) mod xfs;

use br_store::sqlite::SqliteStore;
use br_store::{Event, EventFilter, Store, StoreLocation};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub(crate) const BR: &str = env!("CARGO_BIN_EXE_br");

/// A git repository in a temp dir, with br's state in its `.git/br`.
pub(crate) struct TestRepo {
    /// A tmpfs mounted over `dir`, if the repository lives on one: unmounted first.
    disk: Option<tmpfs::Tmpfs>,
    /// An XFS file system mounted over `dir`, if the repository lives on one: unmounted first.
    xfs: Option<xfs::Xfs>,
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    /// Where br keeps its state when not in the repository's own SQLite file (`BR_STORE`).
    store_url: Option<String>,
}

impl TestRepo {
    pub(crate) fn new() -> TestRepo {
        let repo = TestRepo::empty(None);
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.write("README.md", "test repository\n");
        repo.git(&["add", "--all"]);
        repo.git(&["commit", "--quiet", "-m", "initial"]);
        repo
    }

    /// A repository on a tmpfs of its own of `bytes`, with br's state in it or at `store_url`;
    /// `None` where nothing can be mounted.
    pub(crate) fn on_tmpfs(bytes: u64, store_url: Option<&str>) -> Option<TestRepo> {
        let mut repo = TestRepo::empty(store_url.map(str::to_string));
        repo.disk = Some(tmpfs::Tmpfs::mount(repo.path(), bytes)?);
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.write("README.md", "test repository\n");
        repo.git(&["add", "--all"]);
        repo.git(&["commit", "--quiet", "-m", "initial"]);
        Some(repo)
    }

    /// A repository on an XFS file system of its own of `bytes`, whose files can be cloned
    /// copy-on-write (reflink); `None` where none can be made and mounted.
    pub(crate) fn on_xfs(bytes: u64) -> Option<TestRepo> {
        let mut repo = TestRepo::empty(None);
        repo.xfs = Some(xfs::Xfs::mount(repo.path(), bytes)?);
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.write("README.md", "test repository\n");
        repo.git(&["add", "--all"]);
        repo.git(&["commit", "--quiet", "-m", "initial"]);
        Some(repo)
    }

    /// The XFS file system the repository lives on (see [`TestRepo::on_xfs`]).
    pub(crate) fn xfs(&self) -> &xfs::Xfs {
        self.xfs.as_ref().expect("a repository on XFS")
    }

    /// The tmpfs the repository lives on (see [`TestRepo::on_tmpfs`]).
    pub(crate) fn disk(&self) -> &tmpfs::Tmpfs {
        self.disk.as_ref().expect("a repository on a tmpfs")
    }

    /// A repository with its own history (its first commit differs from every `new()` one's),
    /// whose br commands keep their state at `store_url`: another project sharing the store.
    pub(crate) fn unrelated(store_url: &str) -> TestRepo {
        let mut repo = TestRepo::empty(None);
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.write("README.md", "another project\n");
        repo.git(&["add", "--all"]);
        repo.git(&["commit", "--quiet", "-m", "initial"]);
        repo.store_url = Some(store_url.to_string());
        repo
    }

    /// A repository whose br commands keep their state at `store_url` (via `BR_STORE`).
    pub(crate) fn with_store(store_url: &str) -> TestRepo {
        let mut repo = TestRepo::new();
        repo.store_url = Some(store_url.to_string());
        repo
    }

    /// A clone of this repository sharing its store: another machine, as far as br can tell.
    pub(crate) fn clone_elsewhere(&self) -> TestRepo {
        let repo = TestRepo::empty(self.store_url.clone());
        let source = self.path().display().to_string();
        let target = repo.path().display().to_string();
        repo.git(&["clone", "--quiet", &source, &target]);
        repo
    }

    /// A clone of the repository at `source` (a bare "remote"), with its state at `store_url`:
    /// a machine that has only what the remote has.
    pub(crate) fn clone_of(source: &Path, store_url: &str) -> TestRepo {
        let repo = TestRepo::empty(Some(store_url.to_string()));
        let target = repo.path().display().to_string();
        repo.git(&["clone", "--quiet", &source.display().to_string(), &target]);
        repo
    }

    /// A machine with no checkout at all, only a HOME and the store (`br worker --repo URL`).
    pub(crate) fn no_checkout(store_url: &str) -> TestRepo {
        TestRepo::empty(Some(store_url.to_string()))
    }

    fn empty(store_url: Option<String>) -> TestRepo {
        let dir = tempfile::Builder::new()
            .prefix("br-test-")
            .tempdir()
            .expect("temp dir");
        let home = tempfile::tempdir().expect("temp home");
        TestRepo {
            disk: None,
            xfs: None,
            dir,
            home,
            store_url,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `HOME` br runs with here (empty but for what a test puts there).
    pub(crate) fn home(&self) -> &Path {
        self.home.path()
    }

    /// Environment that keeps git and br away from the developer's configuration.
    fn hermetic(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.invalid")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("LC_ALL", "C")
            .env("BR_BUSY_TIMEOUT", "20s");
        if let Some(url) = &self.store_url {
            cmd.env("BR_STORE", url);
        }
    }

    pub(crate) fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.args(args).current_dir(self.path());
        self.hermetic(&mut cmd);
        let out = cmd.output().expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    pub(crate) fn write(&self, name: &str, content: &str) {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    /// Writes the plan as `br.toml` and commits everything, so the checkout starts clean;
    /// returns the commit.
    pub(crate) fn commit_plan(&self, plan: &str) -> String {
        self.write("br.toml", plan);
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "-m", "plan"]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub(crate) fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).expect("read")
    }

    pub(crate) fn br_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BR);
        cmd.args(args).current_dir(self.path());
        self.hermetic(&mut cmd);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// br as run on another machine: a host of another name (its own UTS namespace), so br
    /// does not take this machine's files for that one's. `None` where this process cannot
    /// make one (it needs root; CI runs as root, and there the test must run).
    pub(crate) fn br_command_on_host(&self, host: &str, args: &[&str]) -> Option<Command> {
        let can = Command::new("unshare")
            .args(["--uts", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !can {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but `unshare --uts` fails: the tests of other machines must run in CI"
            );
            eprintln!("skipped: cannot give br another host name here (unshare --uts needs root)");
            return None;
        }
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--uts",
            "sh",
            "-c",
            r#"hostname "$0" && exec "$@""#,
            host,
            BR,
        ])
        .args(args)
        .current_dir(self.path());
        self.hermetic(&mut cmd);
        cmd.stdin(Stdio::null());
        Some(cmd)
    }

    /// Runs br to completion.
    pub(crate) fn br(&self, args: &[&str]) -> Run {
        let out = self.br_command(args).output().expect("run br");
        Run::from(out)
    }

    /// Starts br in the background; the guard kills it (and waits) if the test ends first.
    pub(crate) fn spawn(&self, args: &[&str]) -> Guard {
        let child = self
            .br_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn br");
        Guard { child: Some(child) }
    }

    /// Starts br in the background with its state at `store_url` instead of the repository's
    /// (a worker that reaches the same store another way, e.g. through a proxy).
    pub(crate) fn spawn_with_store(&self, args: &[&str], store_url: &str) -> Guard {
        let child = self
            .br_command(args)
            .env("BR_STORE", store_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn br");
        Guard { child: Some(child) }
    }

    pub(crate) fn store_path(&self) -> PathBuf {
        self.path().join(".git").join("br").join("br.db")
    }

    /// The store, opened directly: the tests check what br recorded.
    pub(crate) fn store(&self) -> Box<dyn Store> {
        match &self.store_url {
            Some(url) => StoreLocation::parse(url)
                .and_then(|l| l.open())
                .expect("open the store"),
            None => Box::new(SqliteStore::open(&self.store_path()).expect("open the store")),
        }
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        self.store()
            .events(&EventFilter::default())
            .expect("events")
    }

    pub(crate) fn status(&self, session: &str) -> Value {
        let run = self.br(&["status", session, "--json"]);
        assert_eq!(run.code, 0, "status failed: {}", run.stderr);
        serde_json::from_str(&run.stdout).expect("status JSON")
    }

    pub(crate) fn workers(&self) -> Vec<Value> {
        let run = self.br(&["workers", "--all", "--json"]);
        assert_eq!(run.code, 0, "workers failed: {}", run.stderr);
        serde_json::from_str(&run.stdout).expect("workers JSON")
    }

    /// The only session in the store (tests that submit one).
    pub(crate) fn session_id(&self) -> String {
        let run = self.br(&["list", "--json"]);
        let list: Value = serde_json::from_str(&run.stdout).expect("list JSON");
        list[0]["id"].as_str().expect("a session").to_string()
    }
}

/// A finished br run.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A background br process that is killed and reaped when dropped.
pub(crate) struct Guard {
    child: Option<Child>,
}

impl Guard {
    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("child").id()).expect("pid")
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// Waits for it to exit on its own, up to `limit`.
    pub(crate) fn wait(mut self, limit: Duration) -> Run {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(_status) = child.try_wait().expect("try_wait") {
                return Run::from(child.wait_with_output().expect("output"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "br did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so a `br run` stops its workers; then make sure.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
/// `git --git-dir DIR …` (a bare remote) with no user or system config: its output without the
/// final newline, or `None` when git failed.
pub(crate) fn git_dir(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

pub(crate) fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a process exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name, which is in parentheses.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Processes whose command line mentions `needle` (to prove none was left behind).
pub(crate) fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

/// An event's detail as JSON: what `br events --json` shows of it.
pub(crate) fn detail(ev: &Event) -> Value {
    serde_json::to_value(&ev.detail).expect("a detail is JSON")
}

/// Parses an RFC 3339 timestamp from status JSON into milliseconds.
pub(crate) fn millis(v: &Value) -> i64 {
    let text = v.as_str().expect("a timestamp");
    let t = humantime::parse_rfc3339(text).expect("RFC 3339");
    i64::try_from(
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after epoch")
            .as_millis(),
    )
    .expect("fits")
}

/// Waits until no process holds the store's write lock (a SIGSTOPped worker could, for the
/// few microseconds of a transaction), so a test that stops a worker does not stop the world.
pub(crate) fn store_write_lock_free(store_path: &Path) -> bool {
    let conn = rusqlite::Connection::open(store_path).expect("open store");
    conn.busy_timeout(Duration::ZERO).expect("busy timeout");
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Ok(()) => true,
        Err(_) => false,
    }
}

/// Stops a process with SIGSTOP at a moment it holds no store lock.
pub(crate) fn stop_outside_transaction(pid: i32, store_path: &Path) {
    for _ in 0..200 {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
        std::thread::sleep(Duration::from_millis(5));
        if store_write_lock_free(store_path) {
            return;
        }
        kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("could not stop {pid} outside a store transaction");
}

pub(crate) const POSTGRES_URL_VAR: &str = "BR_TEST_POSTGRES_URL";

/// A schema of the test database that br's store URL points into; dropped with it.
pub(crate) struct PgSchema {
    admin: String,
    name: String,
    url: String,
}

impl PgSchema {
    /// `None`, after saying so, when there is no test database.
    pub(crate) fn create() -> Option<PgSchema> {
        let Ok(admin) = std::env::var(POSTGRES_URL_VAR) else {
            // CI must never be green by skipping: there the server is required.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {POSTGRES_URL_VAR} is not: the PostgreSQL tests must run in CI"
            );
            println!(
                "skipped: {POSTGRES_URL_VAR} is not set (set it to a PostgreSQL URL to run this test)"
            );
            return None;
        };
        let name = format!("br_cli_{:016x}", fastrand::u64(..));
        postgres::Client::connect(&admin, postgres::NoTls)
            .and_then(|mut c| c.batch_execute(&format!("CREATE SCHEMA {name}")))
            .unwrap_or_else(|e| panic!("create a schema at {POSTGRES_URL_VAR}: {e}"));
        let separator = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{separator}options=-csearch_path%3D{name}");
        Some(PgSchema { admin, name, url })
    }

    /// The store URL that puts br's tables in this schema.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The tables in this schema, by name.
    pub(crate) fn tables(&self) -> Vec<String> {
        let mut client =
            postgres::Client::connect(&self.admin, postgres::NoTls).expect("connect as admin");
        client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
                &[&self.name],
            )
            .expect("list the tables")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let dropped = postgres::Client::connect(&self.admin, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}
