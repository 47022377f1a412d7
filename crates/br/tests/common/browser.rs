//! A real browser for tests and benchmarks: headless Chromium driven over WebDriver by
//! chromedriver (`BR_TEST_CHROMEDRIVER` names it), and background processes (chromedriver,
//! `br serve`) that print their address and are killed and reaped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The variable that names chromedriver's path.
pub(crate) const DRIVER_VAR: &str = "BR_TEST_CHROMEDRIVER";

const LONG: Duration = Duration::from_secs(60);

/// A background process (chromedriver, `br serve`) whose first output line matching `find`
/// carries its address; killed and reaped on drop.
pub(crate) struct Background {
    child: Child,
}

impl Background {
    /// Starts `command` and returns it with the first stdout line for which `find` gives
    /// something.
    pub(crate) fn start(
        mut command: Command,
        find: impl Fn(&str) -> Option<String>,
    ) -> (Background, String) {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start");
        let stdout = child.stdout.take().expect("stdout");
        let background = Background { child };
        let mut lines = BufReader::new(stdout).lines();
        let found = loop {
            let line = lines
                .next()
                .expect("it printed its address before exiting")
                .expect("a line");
            if let Some(found) = find(&line) {
                break found;
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        (background, found)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port`, with a JSON body when given; the JSON answer.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(LONG)).expect("read timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    // chromedriver keeps the connection open whatever the request says: read the headers,
    // then exactly Content-Length bytes.
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("answer");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("Content-Length");
        }
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).expect("the answer's body");
    serde_json::from_slice(&payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&payload)))
}

/// A browser session of chromedriver.
pub(crate) struct Browser {
    port: u16,
    session: String,
    _driver: Background,
}

impl Browser {
    pub(crate) fn open(driver: &str) -> Browser {
        let mut command = Command::new(driver);
        command.arg("--port=0");
        let (driver, port) = Background::start(command, |line| {
            line.strip_prefix("ChromeDriver was started successfully on port ")
                .map(|p| p.trim_end_matches('.').to_string())
        });
        let port: u16 = port.parse().expect("port");
        let created = http(
            port,
            "POST",
            "/session",
            Some(
                &json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage"]
                }}}}),
            ),
        );
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_string();
        Browser {
            port,
            session,
            _driver: driver,
        }
    }

    pub(crate) fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let answer = http(self.port, method, &path, body);
        assert!(answer["value"].get("error").is_none(), "{what}: {answer}");
        answer["value"].clone()
    }

    /// Makes the window `width` × `height` CSS pixels.
    pub(crate) fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "window/rect",
            Some(&json!({ "width": width, "height": height })),
        );
    }

    pub(crate) fn go(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })));
    }

    /// Runs `script` in the page and returns its value.
    pub(crate) fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The page's visible text once `done` holds for it.
    pub(crate) fn text_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            let text = self
                .eval("return document.body.innerText")
                .as_str()
                .unwrap_or_default()
                .to_string();
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page shows:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = std::panic::catch_unwind(|| http(self.port, "DELETE", &path, None));
    }
}
