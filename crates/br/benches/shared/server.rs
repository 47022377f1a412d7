//! `br serve` (the real binary) on a store file, for the benchmarks that measure it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// `br serve`, killed and reaped when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Server {
    pub(crate) fn start(db: &Path) -> Result<Server, Error> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_br"))
            .arg("--store")
            .arg(db)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse()?,
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        server.addr = line
            .trim_end()
            .strip_prefix("listening on http://")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(server)
    }

    /// A line of /proc/<pid>/status, in kB.
    #[allow(
        dead_code,
        reason = "the page benchmark does not read the server's memory"
    )]
    pub(crate) fn status_kb(&self, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
