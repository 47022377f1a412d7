//! `br serve`, the real binary: its live stream follows a real `br run` from running to
//! completed, agreeing with `br status --json`; it stops cleanly on SIGTERM and SIGINT; a port
//! in use is one clear error.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::served::Served;
use common::{PgSchema, TestRepo, alive};
use nix::sys::signal::Signal;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// A server-sent-events client over a plain HTTP/1.1 connection (chunked transfer encoding).
struct EventStream {
    reader: BufReader<TcpStream>,
    /// Event text received but not yet split into events.
    text: String,
    ended: bool,
}

impl EventStream {
    fn open(addr: SocketAddr, path: &str) -> EventStream {
        let mut socket = TcpStream::connect(addr).expect("connect");
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send the request");
        let mut reader = BufReader::new(socket);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut head = String::new();
        let deadline = Instant::now() + LONG;
        while !head.ends_with("\r\n\r\n") {
            assert!(Instant::now() < deadline, "no response head: {head}");
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => panic!("connection closed before the head: {head}"),
                Ok(_) => head.push_str(&line),
                Err(e) if is_timeout(&e) => head.push_str(&line),
                Err(e) => panic!("reading the head: {e}"),
            }
        }
        let lower = head.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{head}");
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        EventStream {
            reader,
            text: String::new(),
            ended: false,
        }
    }

    /// The next `snapshot` event's JSON, or `None` when the server closed the stream.
    fn next_snapshot(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                let mut kind = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = Some(k.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if kind.as_deref() == Some("snapshot") {
                    return Some(serde_json::from_str(&data).expect("snapshot JSON"));
                }
            }
            if self.ended {
                return None;
            }
            assert!(Instant::now() < deadline, "no snapshot in time");
            match self.read_chunk() {
                Some(bytes) => self
                    .text
                    .push_str(&String::from_utf8(bytes).expect("UTF-8")),
                None => self.ended = true,
            }
        }
    }

    /// One chunk of the body; `None` at the last chunk or when the connection closes.
    fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let mut size_line = String::new();
        loop {
            match self.reader.read_line(&mut size_line) {
                Ok(0) => return None,
                Ok(_) if size_line.ends_with("\r\n") => break,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    if size_line.is_empty() {
                        // Nothing yet: let the caller check its deadline.
                        return Some(Vec::new());
                    }
                }
                Err(e) => panic!("reading a chunk size: {e}"),
            }
        }
        let size_text = size_line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        if size == 0 {
            return None;
        }
        let mut chunk = vec![0; size + 2];
        let mut filled = 0;
        while filled < chunk.len() {
            match self.reader.read(&mut chunk[filled..]) {
                Ok(0) => return None,
                Ok(n) => filled += n,
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("reading a chunk: {e}"),
            }
        }
        assert_eq!(&chunk[size..], b"\r\n", "chunk not followed by CRLF");
        chunk.truncate(size);
        Some(chunk)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The session named `name` in a snapshot's list.
fn session<'a>(snapshot: &'a Value, name: &str) -> Option<&'a Value> {
    snapshot["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

#[test]
fn the_stream_follows_a_run_to_completion_and_sigterm_stops_the_server() {
    follow_a_run_to_completion(&TestRepo::new());
}

#[test]
fn the_stream_follows_a_run_with_the_store_in_postgres() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    follow_a_run_to_completion(&TestRepo::with_store(schema.url()));
}

/// Serves `repo`'s store while `br run` works through a session whose tasks wait for a release
/// file: the stream shows it running, then completed with the numbers of `br status --json`;
/// SIGTERM then stops the server promptly.
fn follow_a_run_to_completion(repo: &TestRepo) {
    repo.write(
        "web.toml",
        "name = \"web\"\nisolation = \"shared\"\nworkers = 2\n\
         [[task]]\nid = \"first\"\nrun = 'while [ ! -f release ]; do sleep 0.05; done'\n\
         files = [\"a\"]\n\
         [[task]]\nid = \"second\"\nrun = 'while [ ! -f release ]; do sleep 0.05; done'\n\
         files = [\"b\"]\n\
         [[task]]\nid = \"last\"\nrun = 'true'\nafter = [\"first\", \"second\"]\n",
    );
    let served = Served::start(repo);
    let mut stream = EventStream::open(served.addr, "/api/stream");
    let first = stream
        .next_snapshot(Instant::now() + LONG)
        .expect("a snapshot on connect");
    assert!(
        first["sessions"].as_array().is_some_and(Vec::is_empty),
        "{first}"
    );

    let run = repo.spawn(&["run", "web.toml", "--no-dashboard"]);
    let deadline = Instant::now() + LONG;
    let running = loop {
        let snapshot = stream.next_snapshot(deadline).expect("the stream goes on");
        if let Some(s) = session(&snapshot, "web")
            && s["status"] == "running"
            && s["running_tasks"] == 2
        {
            break snapshot;
        }
    };
    let tasks = running["selected"]["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[2]["id"], "last");
    assert_eq!(tasks[2]["waiting_for"]["kind"], "dependencies", "{running}");
    assert_eq!(running["summary"]["workers"]["busy"], 2, "{running}");

    repo.write("release", "");
    let deadline = Instant::now() + LONG;
    let completed = loop {
        let snapshot = stream.next_snapshot(deadline).expect("the stream goes on");
        if session(&snapshot, "web").is_some_and(|s| s["status"] == "completed") {
            break snapshot;
        }
    };
    assert_eq!(run.wait(LONG).code, 0, "br run succeeded");
    let id = session(&completed, "web").expect("web")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let status = repo.status(&id);
    let shown = session(&completed, "web").expect("web");
    for key in [
        "id",
        "status",
        "total_tasks",
        "completed_tasks",
        "failed_tasks",
        "running_tasks",
        "queued_tasks",
        "progress_percent",
        "started_at",
        "completed_at",
    ] {
        assert_eq!(shown[key], status[key], "{key}");
    }
    assert_eq!(shown["completed_tasks"], 3);
    for (task, expected) in completed["selected"]["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .zip(status["tasks"].as_array().expect("tasks"))
    {
        assert_eq!(task["id"], expected["id"]);
        assert_eq!(task["state"], "succeeded");
        assert_eq!(task["attempts"], expected["attempts"]);
    }

    // SIGTERM: it stops promptly, ends the open stream, exits 0 and leaves nothing behind.
    let pid = served.pid();
    served.signal(Signal::SIGTERM);
    let (code, stderr) = served.wait(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    assert!(!alive(pid));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream.next_snapshot(deadline).is_some() {}
}

#[test]
fn ctrl_c_stops_the_server_as_interrupted() {
    let repo = TestRepo::new();
    let served = Served::start(&repo);
    // A request answered shows it serves before it is stopped.
    let mut stream = EventStream::open(served.addr, "/api/stream");
    assert!(stream.next_snapshot(Instant::now() + LONG).is_some());
    served.signal(Signal::SIGINT);
    let (code, stderr) = served.wait(Duration::from_secs(10));
    assert_eq!(code, 130, "{stderr}");
}

#[test]
fn a_port_in_use_is_one_clear_error() {
    let repo = TestRepo::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = repo.br(&["serve", "--addr", &addr]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot listen on {addr}\n")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("in use"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    drop(taken);

    let run = repo.br(&["serve", "--addr", "localhost-ish"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--addr"), "{}", run.stderr);
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused() {
    let repo = TestRepo::new();
    // Documentation addresses (never this machine's), so that even a server that failed to
    // refuse could not listen beyond loopback.
    for addr in ["192.0.2.1:7878", "[2001:db8::1]:7878"] {
        let run = repo.br(&["serve", "--addr", addr]);
        assert_eq!(run.code, 2, "{addr}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "one clear message: {}",
            run.stderr
        );
        for needed in [addr, "not a loopback address", "--token", "BR_SERVE_TOKEN"] {
            assert!(run.stderr.contains(needed), "{needed}: {}", run.stderr);
        }
    }
    // An empty token is no token.
    let run = repo
        .br_command(&["serve", "--addr", "192.0.2.1:7878"])
        .env("BR_SERVE_TOKEN", "")
        .output()
        .expect("run br");
    assert_eq!(run.status.code(), Some(2));
}

#[test]
fn with_a_token_every_request_needs_it_and_help_never_shows_it() {
    let repo = TestRepo::new();
    let token = "s3cret-Token_for.br";
    for served in [
        Served::start_with(&repo, &["--token", token], &[]),
        Served::start_with(&repo, &[], &[("BR_SERVE_TOKEN", token)]),
    ] {
        let (status, _, body) = served.request("GET", "/api/summary", &[]);
        assert_eq!(status, 401, "{body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("token")),
            "{body}"
        );
        let (status, _, body) = served.request("GET", "/", &[]);
        assert_eq!(status, 401, "{body}");

        let bearer = format!("Bearer {token}");
        let (status, _, body) =
            served.request("GET", "/api/summary", &[("Authorization", &bearer)]);
        assert_eq!(status, 200, "{body}");
        let (status, _, _) =
            served.request("GET", "/api/summary", &[("Authorization", "Bearer wrong")]);
        assert_eq!(status, 401);

        // The page, opened once with the token, keeps it in a cookie and drops it from the
        // address.
        let (status, head, _) = served.request("GET", &format!("/?token={token}"), &[]);
        assert_eq!(status, 303, "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nlocation: /\r\n"), "{head}");
        let cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no cookie: {head}"));
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().expect("name=value");
        let (status, _, page) = served.request("GET", "/", &[("Cookie", pair)]);
        assert_eq!(status, 200);
        assert!(page.starts_with("<!doctype html>"));
    }

    let run = repo
        .br_command(&["serve", "--help"])
        .env("BR_SERVE_TOKEN", token)
        .output()
        .expect("run br");
    let help = String::from_utf8_lossy(&run.stdout);
    assert!(help.contains("BR_SERVE_TOKEN"), "{help}");
    assert!(!help.contains(token), "{help}");
}

#[test]
fn more_than_one_host_header_is_refused() {
    let repo = TestRepo::new();
    let served = Served::start(&repo);
    // The first Host is this server's; a check of the first alone would let the second through.
    let (status, _, body) = served.request("GET", "/api/summary", &[("Host", "attacker.example")]);
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Host")),
        "{body}"
    );
    let (status, _, _) = served.request("GET", "/api/summary", &[]);
    assert_eq!(status, 200);
}

#[test]
fn a_task_s_diff_and_log_are_served_from_the_repository_and_the_store() {
    let repo = TestRepo::new();
    repo.commit_plan(
        "name = \"shown\"\n[[task]]\nid = \"a\"\nrun = \"echo writing; echo hello > a.txt\"\nfiles = [\"a.txt\"]\n",
    );
    let run = repo.br(&["run", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let served = Served::start(&repo);
    let (status, _, diff) = served.request("GET", "/api/sessions/shown/tasks/a/diff", &[]);
    assert_eq!(status, 200, "{diff}");
    assert!(
        diff.contains("+++ b/a.txt") && diff.contains("+hello"),
        "a unified diff of what it changed: {diff}"
    );
    let (status, _, log) = served.request("GET", "/api/sessions/shown/tasks/a/log", &[]);
    assert_eq!((status, log.as_str()), (200, "writing\n"));
    let (status, body) = served.get_json("/api/sessions/shown/tasks/a/diff?attempt=7");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.to_string().contains("no attempt 7"),
        "the error says why: {body}"
    );
}
