//! A TCP proxy between br and its PostgreSQL server that a test can cut and heal, as a network
//! partition does: while cut, it accepts no connection and moves no byte in either direction,
//! but closes nothing — the peers' kernels keep the sockets open and acknowledge what was sent,
//! so nothing tells either side the other is gone. Healing forwards what was held.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a pump or the acceptor looks at the cut and closed flags.
const TICK: Duration = Duration::from_millis(10);

pub(crate) struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    /// Every socket opened, so dropping the proxy closes them all.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port that forwards to `upstream`.
    pub(crate) fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (cut, closed, sockets, threads) = (
                Arc::clone(&cut),
                Arc::clone(&closed),
                Arc::clone(&sockets),
                Arc::clone(&threads),
            );
            std::thread::spawn(move || {
                while !closed.load(Ordering::SeqCst) {
                    // Cut: leave new connections in the backlog, unanswered.
                    if cut.load(Ordering::SeqCst) {
                        std::thread::sleep(TICK);
                        continue;
                    }
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(TICK);
                            continue;
                        }
                        Err(_) => break,
                    };
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let mut open = sockets.lock().expect("sockets");
                    let mut pumps = threads.lock().expect("threads");
                    for (from, to) in [(&client, &server), (&server, &client)] {
                        let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                            continue;
                        };
                        let (cut, closed) = (Arc::clone(&cut), Arc::clone(&closed));
                        pumps.push(std::thread::spawn(move || pump(from, to, &cut, &closed)));
                    }
                    open.push(client);
                    open.push(server);
                }
            })
        };
        Proxy {
            addr,
            cut,
            closed,
            sockets,
            threads,
            acceptor: Some(acceptor),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, hold every byte and every new connection.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forward again, held bytes first.
    pub(crate) fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while not cut; ends when either side closes or the proxy is dropped.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, closed: &AtomicBool) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = [0u8; 16 * 1024];
    while !closed.load(Ordering::SeqCst) {
        if cut.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for socket in self.sockets.lock().expect("sockets").drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for thread in self.threads.lock().expect("threads").drain(..) {
            let _ = thread.join();
        }
    }
}
