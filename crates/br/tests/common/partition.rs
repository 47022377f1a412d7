//! The partition scenarios, shared by `tests/partition.rs` (each once, asserting) and
//! `benches/partition.rs` (each many times, printing the margins): a worker running a task that
//! holds a lock on `shared.txt` is cut off from its store, and another worker takes the task
//! over once the lease has expired. The task itself writes a trace outside the repository —
//! when each attempt started, when attempt 1 was told to stop, and whether attempt 1's process
//! was still alive when attempt 2 started — so the check does not trust br's own records.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use br_core::EventKind;
use br_store::audit::{audit_fencing, audit_lock_order, audit_terminal_once};

use super::pg_server::PgServer;
use super::proxy::Proxy;
use super::{Guard, PgSchema, TestRepo, detail, poll};

const LONG: Duration = Duration::from_secs(60);

/// The lease of the scenario's session.
pub(crate) const LEASE: Duration = Duration::from_secs(3);

/// The plan: one task holding `shared.txt`; attempt 1 runs until it is stopped, attempt 2
/// looks whether attempt 1 still runs, then finishes.
pub(crate) fn plan(trace: &Path) -> String {
    format!(
        r#"name = "partition"
isolation = "shared"
heartbeat_timeout = "{}s"
[[task]]
id = "t"
files = ["shared.txt"]
env = {{ TRACE = "{}" }}
run = """
now() {{ date +%s%N; }}
if [ "$BR_ATTEMPT" = 1 ]; then
  echo $$ > "$TRACE.pid"
  echo "start 1 $(now)" >> "$TRACE"
  trap 'echo "stop 1 $(now)" >> "$TRACE"; exit 143' TERM
  while :; do sleep 0.02; done
fi
p=$(cat "$TRACE.pid")
alive=no
if [ -d /proc/$p ] && ! grep -q '^State:.*[ZX]' /proc/$p/status; then alive=yes; fi
echo "start $BR_ATTEMPT $(now) $alive" >> "$TRACE"
echo "attempt $BR_ATTEMPT" >> shared.txt
"""
"#,
        LEASE.as_secs(),
        trace.display()
    )
}

/// What the task's trace says.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    /// Nanoseconds since the epoch (the machine's wall clock: every attempt runs here).
    pub start1: u128,
    pub stop1: Option<u128>,
    pub start2: Option<u128>,
    /// Whether attempt 1's process was alive when attempt 2 started.
    pub overlap: bool,
}

impl Trace {
    pub(crate) fn read(path: &Path) -> Option<Trace> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut trace = Trace {
            start1: 0,
            stop1: None,
            start2: None,
            overlap: false,
        };
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["start", "1", t] => trace.start1 = t.parse().ok()?,
                ["stop", "1", t] => trace.stop1 = t.parse().ok(),
                ["start", "2", t, alive] => {
                    trace.start2 = t.parse().ok();
                    trace.overlap = *alive == "yes";
                }
                _ => {}
            }
        }
        (trace.start1 > 0).then_some(trace)
    }

    /// From attempt 1's stop to attempt 2's start: how much room was left.
    pub(crate) fn gap(&self) -> Option<Duration> {
        let (stop, start) = (self.stop1?, self.start2?);
        let nanos = start.checked_sub(stop)?;
        Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
    }
}

/// What one scenario run measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub trace: Trace,
    /// From the cut (or the lock) to attempt 1's stop.
    pub stopped_after: Duration,
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

fn since(start: u128, end: u128) -> Duration {
    Duration::from_nanos(u64::try_from(end.saturating_sub(start)).unwrap_or(u64::MAX))
}

fn worker_args(session: &str) -> Vec<&str> {
    vec![
        "worker",
        "--session",
        session,
        "--heartbeat-interval",
        "200ms",
    ]
}

/// Commits the plan and submits it: the session id.
fn submit(repo: &TestRepo, trace: &Path) -> String {
    repo.write("br.toml", &plan(trace));
    repo.git(&["add", "br.toml"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    submitted
        .stdout
        .lines()
        .last()
        .expect("session id")
        .trim()
        .to_string()
}

fn wait_for_start(trace: &Path, attempt: u32) -> Trace {
    poll(&format!("attempt {attempt} to start"), LONG, || {
        Trace::read(trace).filter(|t| attempt == 1 || t.start2.is_some())
    })
}

/// Whether the cut-off worker's own report of attempt 1 must be refused: it must when it can
/// reach the store only after attempt 2 started; when it can as soon as anyone can (a lock
/// released), its report may come first and be the one that requeues the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Refused,
    RefusedOrRecorded,
}

/// Both workers leave once the session is over; then what the store says must hold: the task
/// ran twice, attempt 1 ended `lease_lost`, no lock was held twice at once, every task ended
/// once.
fn check_ending(repo: &TestRepo, session: &str, cut_off: Guard, other: Guard, report: Report) {
    let other = other.wait(LONG);
    assert_eq!(other.code, 0, "{}", other.stderr);
    let cut_off = cut_off.wait(LONG);
    assert_eq!(cut_off.code, 0, "{}", cut_off.stderr);
    let status = repo.status(session);
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["tasks"][0]["attempts"], 2, "{status}");
    let events = repo.events();
    let requeued = events
        .iter()
        .find(|e| e.kind == EventKind::TaskRequeued)
        .expect("task_requeued");
    assert_eq!(detail(requeued)["outcome"], "lease_lost");
    let attempts = repo
        .store()
        .attempts(
            &br_core::SessionId::from_string(session),
            &br_core::TaskId::new("t").expect("task id"),
        )
        .expect("attempts");
    assert_eq!(attempts[0].outcome, Some(br_core::OutcomeKind::LeaseLost));
    if report == Report::Refused {
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::StaleResultRejected),
            "the cut-off worker's late lease_lost was refused"
        );
    }
    audit_lock_order(&events).expect("no two holders of a lock");
    audit_terminal_once(&events).expect("the task ended once");
    audit_fencing(&events).expect("no stale result accepted");
    assert!(
        repo.store().locks().expect("locks").is_empty(),
        "no lock is held by a dead attempt"
    );
    assert!(
        cut_off.stderr.contains("stopped partition/t attempt 1"),
        "the cut-off worker says it fenced itself:\n{}",
        cut_off.stderr
    );
}

/// A PostgreSQL URL's parts: scheme, `user@` (or nothing), host:port, and the rest.
fn url_parts(url: &str) -> (&str, &str, &str, &str) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rfind('@') {
        Some(at) => (scheme, &authority[..=at], &authority[at + 1..], path),
        None => (scheme, "", authority, path),
    }
}

/// The server a PostgreSQL URL names (port 5432 by default).
pub(crate) fn upstream_of(url: &str) -> SocketAddr {
    let host = url_parts(url).2;
    let with_port = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    with_port
        .parse()
        .unwrap_or_else(|e| panic!("{with_port} is not an address: {e}"))
}

/// The same URL, through `proxy`.
pub(crate) fn through(url: &str, proxy: &Proxy) -> String {
    let (scheme, user, _, path) = url_parts(url);
    format!("{scheme}://{user}{}{path}", proxy.addr())
}

/// PostgreSQL behind a proxy that is cut while the task runs; the other worker reaches the
/// server directly. Healed once attempt 2 started.
pub(crate) fn postgres_cut(schema: &PgSchema) -> Measured {
    let proxy = Proxy::start(upstream_of(schema.url()));
    let repo = TestRepo::with_store(schema.url());
    let dir = tempfile::tempdir().expect("trace dir");
    let trace_path = dir.path().join("trace");
    let session = submit(&repo, &trace_path);
    let cut_off = repo.spawn_with_store(&worker_args(&session), &through(schema.url(), &proxy));
    wait_for_start(&trace_path, 1);
    proxy.cut();
    let cut_at = now_nanos();
    let other = repo.spawn(&worker_args(&session));
    let trace = wait_for_start(&trace_path, 2);
    proxy.heal();
    check_ending(&repo, &session, cut_off, other, Report::Refused);
    Measured {
        stopped_after: since(cut_at, trace.stop1.unwrap_or(cut_at)),
        trace,
    }
}

/// The SQLite store held locked by another process past the lease; a second worker waits for
/// the lock, then takes the task over.
pub(crate) fn sqlite_locked() -> Measured {
    let repo = TestRepo::new();
    let dir = tempfile::tempdir().expect("trace dir");
    let trace_path = dir.path().join("trace");
    let session = submit(&repo, &trace_path);
    let cut_off = repo.spawn(&worker_args(&session));
    wait_for_start(&trace_path, 1);
    let holder = rusqlite::Connection::open(repo.store_path()).expect("open the store");
    holder
        .busy_timeout(Duration::from_secs(20))
        .expect("busy timeout");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let locked_at = now_nanos();
    let other = repo.spawn(&worker_args(&session));
    // Past the lease: when the lock goes, the lease has expired and the task is free to take.
    std::thread::sleep(LEASE + Duration::from_secs(1));
    holder.execute_batch("ROLLBACK").expect("release the lock");
    drop(holder);
    let trace = wait_for_start(&trace_path, 2);
    check_ending(&repo, &session, cut_off, other, Report::RefusedOrRecorded);
    Measured {
        stopped_after: since(locked_at, trace.stop1.unwrap_or(locked_at)),
        trace,
    }
}

/// A PostgreSQL server that stops answering (every process frozen) past the lease, then goes
/// on; a second worker, waiting for the same server, takes the task over.
pub(crate) fn postgres_frozen(server: &PgServer) -> Measured {
    let repo = TestRepo::with_store(&server.url());
    let dir = tempfile::tempdir().expect("trace dir");
    let trace_path = dir.path().join("trace");
    let session = submit(&repo, &trace_path);
    let cut_off = repo.spawn(&worker_args(&session));
    wait_for_start(&trace_path, 1);
    server.freeze();
    let frozen_at = now_nanos();
    let other = repo.spawn(&worker_args(&session));
    std::thread::sleep(LEASE + Duration::from_secs(1));
    server.thaw();
    let trace = wait_for_start(&trace_path, 2);
    check_ending(&repo, &session, cut_off, other, Report::RefusedOrRecorded);
    Measured {
        stopped_after: since(frozen_at, trace.stop1.unwrap_or(frozen_at)),
        trace,
    }
}

/// Asserts the one promise: attempt 1 had stopped before attempt 2 started.
pub(crate) fn assert_no_overlap(m: &Measured) {
    let t = &m.trace;
    assert!(
        !t.overlap,
        "attempt 1 still ran when attempt 2 started: {t:?}"
    );
    let gap = t.gap().unwrap_or_else(|| panic!("both ends traced: {t:?}"));
    assert!(
        gap > Duration::ZERO,
        "attempt 1 stopped before 2 started: {t:?}"
    );
}

/// The scenario's margins in words.
pub(crate) fn describe(m: &Measured) -> String {
    format!(
        "attempt 1 stopped {} ms after the cut; attempt 2 started {} ms after that{}",
        m.stopped_after.as_millis(),
        m.trace
            .gap()
            .map_or("?".into(), |g| g.as_millis().to_string()),
        if m.trace.overlap { " (OVERLAP)" } else { "" }
    )
}

/// A worker killed (`kill -9`) while its task runs, with another worker waiting: the task's next
/// attempt starts on the other once the lease has expired and a requeue has run. Returns the
/// trace and the time from the kill to attempt 2's start. On `schema`'s PostgreSQL, else SQLite.
pub(crate) fn worker_killed(schema: Option<&PgSchema>) -> (Trace, Duration) {
    let repo = schema.map_or_else(TestRepo::new, |s| TestRepo::with_store(s.url()));
    let dir = tempfile::tempdir().expect("trace dir");
    let trace_path = dir.path().join("trace");
    let session = submit(&repo, &trace_path);
    let victim = repo.spawn(&worker_args(&session));
    wait_for_start(&trace_path, 1);
    let other = repo.spawn(&worker_args(&session));
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    let killed_at = now_nanos();
    let trace = wait_for_start(&trace_path, 2);
    let other = other.wait(LONG);
    assert_eq!(other.code, 0, "{}", other.stderr);
    let status = repo.status(&session);
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["tasks"][0]["attempts"], 2, "{status}");
    let events = repo.events();
    audit_lock_order(&events).expect("no two holders of a lock");
    audit_terminal_once(&events).expect("the task ended once");
    audit_fencing(&events).expect("no stale result accepted");
    let took = since(killed_at, trace.start2.unwrap_or(killed_at));
    (trace, took)
}
