//! A running `br serve` for tests: started on a free loopback port, asked for JSON with plain
//! HTTP/1.1, and stopped and reaped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::TestRepo;

/// How long the server may take to print its address.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `br serve`, stopped (SIGTERM, then SIGKILL) and reaped when dropped.
pub(crate) struct Served {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Served {
    pub(crate) fn start(repo: &TestRepo) -> Served {
        Served::start_with(repo, &[], &[])
    }

    /// `br serve --addr 127.0.0.1:0` with more arguments and environment variables.
    pub(crate) fn start_with(repo: &TestRepo, args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut command = repo.br_command(&["serve", "--addr", "127.0.0.1:0"]);
        command.args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn br serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child: Some(child),
            addr: "127.0.0.1:0".parse().expect("addr"),
        };
        let line = rx.recv_timeout(STARTUP).unwrap_or_else(|_| {
            let out = served.stop_and_collect();
            panic!("br serve printed no address; stderr:\n{out}")
        });
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        served.addr = addr.parse().expect("a socket address");
        assert!(served.addr.ip().is_loopback() && served.addr.port() != 0);
        served
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("child").id()).expect("pid")
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// Waits for it to exit on its own; its exit code and stderr.
    pub(crate) fn wait(mut self, limit: Duration) -> (i32, String) {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return (status.code().unwrap_or(-1), stderr);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("br serve did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop_and_collect(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Served {
    /// `GET path`: the answer's status code and its body as JSON.
    pub(crate) fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, _head, body) = self.request("GET", path, &[]);
        let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, body)
    }

    /// One request with `Host: <addr>` and the given header lines after it; the answer's
    /// status, head and body. Not for streams: it reads until the server closes.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let mut socket = TcpStream::connect(self.addr).expect("connect");
        socket
            .set_read_timeout(Some(STARTUP))
            .expect("read timeout");
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Connection: close\r\n\r\n");
        socket.write_all(text.as_bytes()).expect("send the request");
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).expect("read the answer");
        let answer = String::from_utf8(answer).expect("UTF-8");
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {answer:?}"));
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "an answer that is not a stream comes with its length: {head}"
        );
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        (status, head.to_string(), body.to_string())
    }
}
