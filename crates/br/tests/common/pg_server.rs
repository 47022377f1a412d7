//! A PostgreSQL server of the test's own, on a spare loopback port, that the test may stop,
//! start and restart (the shared server of `BR_TEST_POSTGRES_URL` is not ours to restart).
//! Made with the machine's `initdb` and `pg_ctl`, run as the `postgres` user when the tests run
//! as root (PostgreSQL refuses to run as root). Stopped and deleted when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub(crate) struct PgServer {
    bin: PathBuf,
    /// Holds the data directory; world-readable so the `postgres` user can reach it.
    dir: tempfile::TempDir,
    port: u16,
    /// Run PostgreSQL's programs as this user (the tests run as root).
    run_as: Option<String>,
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

impl PgServer {
    /// Starts a fresh server, or says why not and returns `None` — unless `CI` is set, where a
    /// missing PostgreSQL is a failure, never a silent skip.
    pub(crate) fn start() -> Option<PgServer> {
        PgServer::start_with(None)
    }

    /// A server whose TCP connections must log in with `password` (SCRAM) as `postgres`.
    pub(crate) fn start_with_password(password: &str) -> Option<PgServer> {
        PgServer::start_with(Some(password))
    }

    /// A server that speaks TLS with a throwaway certificate for `localhost`, signed by a
    /// throwaway CA whose certificate is returned (PEM file), made with `openssl`.
    pub(crate) fn start_with_tls() -> Option<(PgServer, PathBuf)> {
        let server = PgServer::start_with(None)?;
        server.stop();
        let data = server.data();
        let dir = server.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (install it: the TLS tests make their certificates with it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=br test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        for (from, to) in [("server.pem", "server.crt"), ("server.key", "server.key")] {
            std::fs::copy(dir.join(from), data.join(to)).expect("copy the certificate");
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod the key");
        }
        if let Some(user) = &server.run_as {
            for file in ["server.crt", "server.key"] {
                let chown = Command::new("chown")
                    .arg(user)
                    .arg(data.join(file))
                    .output();
                assert!(chown.is_ok_and(|o| o.status.success()), "chown {file}");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("postgresql.conf");
        server.start_again();
        let ca = dir.join("ca.pem");
        Some((server, ca))
    }

    fn start_with(password: Option<&str>) -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but initdb is not installed: this test needs PostgreSQL's server binaries"
            );
            println!("skipped: no PostgreSQL server binaries (initdb) on this machine");
            return None;
        };
        // /proc/self belongs to the process's effective user.
        let root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").expect("/proc/self"),
        ) == 0;
        let run_as = root.then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("br-pg-")
            .tempdir()
            .expect("temp dir");
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            run_as,
        };
        let data = server.data();
        std::fs::create_dir(&data).expect("data dir");
        if let Some(user) = &server.run_as {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            let chown = Command::new("chown")
                .arg(user)
                .arg(&data)
                .output()
                .expect("chown");
            assert!(chown.status.success(), "chown: {chown:?}");
        }
        let data_arg = data.display().to_string();
        let mut args = vec!["-D", &data_arg, "-U", "postgres", "--no-sync"];
        let pwfile = server.dir.path().join("pwfile");
        let pwfile_arg = pwfile.display().to_string();
        match password {
            None => args.extend(["-A", "trust"]),
            Some(password) => {
                std::fs::write(&pwfile, format!("{password}\n")).expect("password file");
                if let Some(user) = &server.run_as {
                    let chown = Command::new("chown").arg(user).arg(&pwfile).output();
                    assert!(
                        chown.is_ok_and(|o| o.status.success()),
                        "chown the password file"
                    );
                }
                args.extend([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--pwfile",
                    &pwfile_arg,
                ]);
            }
        }
        let init = server.pg("initdb", &args);
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        server.port = spare_port();
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs, as the `postgres` user when needed.
    fn pg(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
    }

    /// Starts the server (after `stop`) and waits until it accepts connections.
    pub(crate) fn start_again(&self) {
        let data = self.data().display().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data().display()
        );
        // In the data directory: the server's user may write there.
        let log = self.data().join("server.log").display().to_string();
        let out = self.pg(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server: fast (clients are disconnected, open transactions roll back).
    pub(crate) fn stop(&self) {
        let data = self.data().display().to_string();
        let out = self.pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server, waits `down_for`, and starts it again.
    pub(crate) fn restart(&self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// The server's processes: the postmaster and its children (backends, background workers).
    fn processes(&self) -> Vec<i32> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid: the server runs");
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("the postmaster's pid");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The parent's pid is the second field after the parenthesised command name.
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Freezes every process of the server (SIGSTOP): it accepts connections in the kernel's
    /// backlog and answers nothing, like a server that stopped responding.
    pub(crate) fn freeze(&self) {
        for pid in self.processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        }
    }

    /// Lets a frozen server go on.
    pub(crate) fn thaw(&self) {
        for pid in self.processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A store URL on this server.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A port nothing listens on now (the kernel's pick of a free one).
fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.thaw();
        let data = self.data().display().to_string();
        let _ = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
