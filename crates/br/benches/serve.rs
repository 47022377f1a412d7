//! Measures `br serve` (the real binary, as a child process) under slow live-stream clients: a
//! real SQLite store holds one running session of 20,000 tasks that keeps changing (this process
//! plays its workers) and a newer small one (so the big one is not the default), while 30
//! clients follow the big session's `/api/stream?session=` — a third never read a byte, the
//! rest read a little at a time — and one client reads everything as a browser would. It prints
//! the server's memory (VmRSS and its peak VmHWM, from /proc) and the bytes each kind of client
//! received per second; it asserts nothing about them (benchmarks measure, tests assert
//! behaviour).
//!
//! Run: `cargo bench -p br --bench serve -- [TASKS] [CLIENTS] [SECONDS]`

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use br_core::Plan;
use br_core::outcome::Outcome;
use br_store::sqlite::SqliteStore;
use br_store::{Claim, ClaimRequest, Lease, NewSession, Store};

#[path = "shared/bench.rs"]
mod bench;
#[path = "shared/server.rs"]
mod server;

use bench::{arg, register_workers};
use server::{Error, Server};

/// How a stream client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Reads everything as soon as it comes, as a browser tab in front does.
    Eager,
    /// 1 KiB every 100 ms: a client on a poor link, or a tab the browser throttles.
    Slow,
    /// Sends its request and never reads a byte.
    Stuck,
}

struct Client {
    pace: Pace,
    received: Arc<AtomicU64>,
    /// Whether the server closed the connection.
    closed: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn open_stream(addr: SocketAddr, path: &str, pace: Pace, stop: &Arc<AtomicBool>) -> Client {
    let received = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (r, c, stop) = (Arc::clone(&received), Arc::clone(&closed), Arc::clone(stop));
    let path = path.to_string();
    let thread = std::thread::spawn(move || {
        let Ok(mut socket) = TcpStream::connect(addr) else {
            c.store(true, Ordering::SeqCst);
            return;
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        if socket.write_all(request.as_bytes()).is_err() {
            c.store(true, Ordering::SeqCst);
            return;
        }
        let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = vec![0u8; if pace == Pace::Slow { 1024 } else { 64 * 1024 }];
        while !stop.load(Ordering::SeqCst) {
            if pace == Pace::Stuck {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match socket.read(&mut buf) {
                Ok(0) => {
                    c.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => {
                    r.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    c.store(true, Ordering::SeqCst);
                    return;
                }
            }
            if pace == Pace::Slow {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if pace == Pace::Stuck {
            // Did the server give up on it? Drain what the kernel holds, then look for the end.
            let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
            loop {
                match socket.read(&mut buf) {
                    Ok(0) => {
                        c.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        c.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    Client {
        pace,
        received,
        closed,
        thread,
    }
}

/// A session of `tasks` independent tasks, each with a file of its own.
fn big_session(store: &SqliteStore, tasks: u64) -> Result<br_store::Session, Error> {
    let mut text =
        String::from("name = \"bench\"\nisolation = \"shared\"\nheartbeat_timeout = \"60s\"\n");
    for i in 0..tasks {
        writeln!(
            text,
            "[[task]]\nid = \"task-{i:05}\"\nrun = \"make part-{i}\"\nfiles = [\"src/part-{i}.rs\"]"
        )?;
    }
    let plan = Plan::parse(&text, Path::new("bench.toml"))?;
    Ok(store.create_session(&NewSession {
        plan,
        repo_root: PathBuf::from("/repo"),
        plan_path: None,
        base_commit: None,
        workers_wanted: 8,
        repo_id: None,
    })?)
}

fn main() -> Result<(), Error> {
    let (tasks, clients, seconds) = (arg(0, 20_000_u64), arg(1, 30_u64), arg(2, 40_u64));
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("br.db");
    let store = SqliteStore::open(&db)?;
    let t = Instant::now();
    let session = big_session(&store, tasks)?;
    println!(
        "store: one session of {tasks} tasks, made in {:.1?}",
        t.elapsed()
    );

    // Eight workers keep eight tasks running, so the session is running and changes all along.
    let log_dir = dir.path().join("logs");
    let workers = register_workers(&store, &session.id, 8)?;
    let claim = |w| -> Result<Option<Lease>, Error> {
        Ok(
            match store.claim_next_task(&ClaimRequest {
                worker: w,
                session: Some(&session.id),
                log_dir: &log_dir,
                repo_id: None,
                remote_only: false,
            })? {
                Claim::Task(task) => Some(task.lease),
                Claim::Nothing | Claim::Stop | Claim::Land(_) => None,
            },
        )
    };
    let mut running: Vec<Option<Lease>> = workers.iter().map(claim).collect::<Result<_, _>>()?;
    // A newer session, which the dashboard shows by default.
    let newer = Plan::parse(
        "name = \"newer\"\nisolation = \"shared\"\n[[task]]\nid = \"one\"\nrun = \"true\"\n",
        Path::new("newer.toml"),
    )?;
    store.create_session(&NewSession {
        plan: newer,
        repo_root: PathBuf::from("/repo"),
        plan_path: None,
        base_commit: None,
        workers_wanted: 1,
        repo_id: None,
    })?;

    let server = Server::start(&db)?;
    println!(
        "br serve pid {} on {}: VmRSS {} kB before any client",
        server.child.id(),
        server.addr,
        server.status_kb("VmRSS:")
    );
    let stop = Arc::new(AtomicBool::new(false));
    // What the page asks for once the big session is clicked (it is not the one shown by
    // default: a newer session is).
    let path = format!("/api/stream?session={}", session.id);
    let mut all: Vec<Client> = (0..clients)
        .map(|i| {
            let pace = if i % 3 == 0 { Pace::Stuck } else { Pace::Slow };
            open_stream(server.addr, &path, pace, &stop)
        })
        .collect();
    all.push(open_stream(server.addr, &path, Pace::Eager, &stop));

    // Keep the session changing: finish a running task and start the next, 40 times a second.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut changes = 0u64;
    let mut peak_rss = 0;
    let mut next_sample = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let i = (changes as usize) % workers.len();
        if let Some(lease) = running[i].take() {
            store.finish_attempt(&lease, &Outcome::Succeeded)?;
        }
        running[i] = claim(&workers[i])?;
        for w in &workers {
            store.heartbeat(w, None)?;
        }
        changes += 1;
        if Instant::now() >= next_sample {
            let rss = server.status_kb("VmRSS:");
            peak_rss = peak_rss.max(rss);
            samples.push(rss);
            next_sample += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = server.status_kb("VmRSS:");
    let hwm = server.status_kb("VmHWM:");
    stop.store(true, Ordering::SeqCst);
    let mut rows: Vec<(Pace, u64, bool)> = Vec::new();
    for c in all.drain(..) {
        let _ = c.thread.join();
        rows.push((
            c.pace,
            c.received.load(Ordering::SeqCst),
            c.closed.load(Ordering::SeqCst),
        ));
    }
    drop(server);

    println!("{changes} changes to the session in {elapsed:.1} s");
    println!(
        "server RSS: peak sampled {:.1} MB, VmHWM {:.1} MB, at the end {:.1} MB (samples each second, MB: {})",
        mb(peak_rss),
        mb(hwm),
        mb(rss_end),
        samples
            .iter()
            .map(|kb| format!("{:.0}", mb(*kb)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for pace in [Pace::Eager, Pace::Slow, Pace::Stuck] {
        let of: Vec<&(Pace, u64, bool)> = rows.iter().filter(|r| r.0 == pace).collect();
        if of.is_empty() {
            continue;
        }
        let total: u64 = of.iter().map(|r| r.1).sum();
        let closed = of.iter().filter(|r| r.2).count();
        println!(
            "{pace:?} clients: {}, received {:.1} kB per client per second; closed by the server: {closed}",
            of.len(),
            total as f64 / of.len() as f64 / elapsed / 1000.0,
        );
    }
    Ok(())
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
