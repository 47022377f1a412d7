//! The web dashboard in a real browser: headless Chromium, driven over WebDriver by chromedriver,
//! loads the page `br serve` serves (with a token: opened once as `/?token=…`, then on its
//! cookie) while `br run` works, and the page's own JavaScript shows the session live, escapes
//! what the store holds, follows it to the end, pauses it from its button, says so when a
//! session it resumes has no worker to run it, and pages through a large session's tasks.
//!
//! Needs `BR_TEST_CHROMEDRIVER` (the path of chromedriver, with Chromium installed; `.ci/run`
//! installs both and sets it); without it the test says it was skipped.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestRepo, poll};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
const DRIVER_VAR: &str = "BR_TEST_CHROMEDRIVER";

/// A background process (chromedriver, `br serve`) whose first output line matching `find`
/// carries its address; killed and reaped on drop.
struct Background {
    child: Child,
}

impl Background {
    /// Starts `command` and returns it with the first stdout line for which `find` gives
    /// something.
    fn start(mut command: Command, find: impl Fn(&str) -> Option<String>) -> (Background, String) {
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
struct Browser {
    port: u16,
    session: String,
    _driver: Background,
}

impl Browser {
    fn open(driver: &str) -> Browser {
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

    fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let answer = http(self.port, method, &path, body);
        assert!(answer["value"].get("error").is_none(), "{what}: {answer}");
        answer["value"].clone()
    }

    fn go(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })));
    }

    /// Runs `script` in the page and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The page's visible text once `done` holds for it.
    fn text_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
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

#[test]
fn the_page_shows_a_run_live_escapes_store_text_and_pauses_from_its_button() {
    let Ok(driver) = std::env::var(DRIVER_VAR) else {
        // CI must never be green by skipping: there the browser is required.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {DRIVER_VAR} is not: the browser test must run in CI"
        );
        println!(
            "skipped: {DRIVER_VAR} is not set (set it to chromedriver's path to run this test)"
        );
        return;
    };
    let repo = TestRepo::new();
    // The session's name is markup: the page must show it as text.
    repo.write(
        "br.toml",
        "name = \"web <b>bold</b>\"\nisolation = \"shared\"\n\
         [[task]]\nid = \"waiter\"\nrun = 'while [ ! -f release ]; do sleep 0.05; done'\n\
         files = [\"out\"]\n\
         [[task]]\nid = \"after-it\"\nrun = 'true'\nafter = [\"waiter\"]\n",
    );
    let run = repo.spawn(&["run", "--workers", "1", "--no-dashboard"]);
    // With a token, as beyond loopback: the page must work on the cookie alone.
    let token = "browser-Token_1";
    let mut serve = repo.br_command(&["serve", "--addr", "127.0.0.1:0"]);
    serve.env("BR_SERVE_TOKEN", token);
    let (_server, url) = Background::start(serve, |line| {
        line.strip_prefix("listening on ").map(str::to_string)
    });
    let browser = Browser::open(&driver);
    browser.go(&url);
    browser.text_when("the refusal without the token", |t| {
        t.contains("needs its token")
    });
    browser.go(&format!("{url}/?token={token}"));
    // The token went into a cookie no script can read, and out of the address.
    assert_eq!(
        browser.eval("return location.pathname + location.search"),
        "/"
    );
    assert_eq!(browser.eval("return document.cookie"), "");

    let running = browser.text_when("the running session", |t| {
        t.contains("web <b>bold</b>") && t.contains("waiter") && t.contains("running")
    });
    assert!(running.contains("waits for waiter"), "{running}");
    // Events read as the terminal says them (EventDetail::describe), not as raw JSON.
    assert!(running.contains("2 tasks, shared isolation"), "{running}");
    assert!(!running.contains("\"isolation\""), "{running}");
    assert_eq!(
        browser.eval("return document.getElementById('conn').className"),
        "live"
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('b').length"),
        0,
        "the session name was not parsed as HTML"
    );

    // The page's pause button pauses the session in the store.
    browser.eval(
        "for (const b of document.querySelectorAll('button')) \
         { if (b.textContent === 'pause') { b.click(); return true; } } return false;",
    );
    poll("the session paused", LONG, || {
        (repo.status("web <b>bold</b>")["status"] == "paused").then_some(())
    });
    browser.text_when("paused shown, and why in words", |t| {
        t.contains("paused") && t.contains("was running")
    });
    browser.eval(
        "for (const b of document.querySelectorAll('button')) \
         { if (b.textContent === 'resume') { b.click(); return true; } } return false;",
    );
    poll("the session running again", LONG, || {
        (repo.status("web <b>bold</b>")["status"] == "running").then_some(())
    });

    repo.write("release", "");
    // The status cell (cells are tab-separated in the text), not the statistics' "completed".
    let done = browser.text_when("the completed session", |t| {
        t.contains("\tcompleted\t") && t.contains("100%")
    });
    assert!(done.contains("after-it"), "{done}");
    assert_eq!(run.wait(LONG).code, 0);

    // Resumed from the page while no worker serves it: the session is running in the store,
    // but nothing runs, and the page says so instead of showing it at work.
    repo.write(
        "idle.toml",
        "name = \"idle\"\nisolation = \"shared\"\n[[task]]\nid = \"later\"\nrun = 'true'\n",
    );
    assert_eq!(repo.br(&["submit", "idle.toml"]).code, 0);
    assert_eq!(repo.br(&["pause", "idle"]).code, 0);
    browser.text_when("the paused session", |t| t.contains("\tpaused\t"));
    // Its row's resume button is the only one (the other session has ended).
    poll("the resume button of the paused session", LONG, || {
        let clicked = browser.eval(
            "for (const b of document.querySelectorAll('button')) \
             { if (b.textContent === 'resume') { b.click(); return true; } } return false;",
        );
        (clicked == true).then_some(())
    });
    let shown = browser.text_when("that no worker serves it", |t| {
        t.contains("no worker serves session idle") && t.contains("running, no worker serves it")
    });
    assert!(shown.contains("br resume"), "{shown}");
    assert_eq!(repo.status("idle")["status"], "running");

    // A large session's tasks come one page at a time, and the pager moves through them.
    let mut plan = String::from("name = \"many\"\nisolation = \"shared\"\n");
    for i in 0..205 {
        plan.push_str(&format!("[[task]]\nid = \"m{i:03}\"\nrun = 'true'\n"));
    }
    repo.write("many.toml", &plan);
    assert_eq!(repo.br(&["submit", "many.toml"]).code, 0);
    poll("the many session's row, clicked", LONG, || {
        let clicked = browser.eval(
            "for (const r of document.querySelectorAll('tr.session')) \
             { if (r.children[0].textContent === 'many') { r.click(); return true; } } \
             return false;",
        );
        (clicked == true).then_some(())
    });
    let first = browser.text_when("the first page", |t| {
        t.contains("TASKS OF MANY") && t.contains("tasks 1–200 of 205")
    });
    assert!(first.contains("m199") && !first.contains("m200"), "{first}");
    browser.eval(
        "for (const b of document.querySelectorAll('#pager button')) \
         { if (b.textContent === 'next') { b.click(); return true; } } return false;",
    );
    let last = browser.text_when("the last page", |t| t.contains("tasks 201–205 of 205"));
    assert!(last.contains("m204") && !last.contains("m199"), "{last}");
    assert_eq!(
        browser.eval("return location.hash.includes('offset=200')"),
        true
    );
}
