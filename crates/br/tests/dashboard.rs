//! The dashboard end to end: frames and summaries read while a real `br run` works, BuildRunner 3.1's
//! multi-session display, and the interactive UI driven in a real pseudo-terminal.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestRepo, poll};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn summary(repo: &TestRepo) -> Value {
    serde_json::from_str(&repo.br(&["summary", "--json"]).stdout).expect("summary JSON")
}

#[test]
fn frames_read_during_a_run_show_progress_rising_to_the_final_status() {
    let repo = TestRepo::new();
    let mut plan = String::from("name = \"live\"\nisolation = \"shared\"\n");
    for i in 0..4 {
        plan.push_str(&format!("[[task]]\nid = \"p{i}\"\nrun = \"sleep 0.6\"\n"));
    }
    // One last task after the others: while it runs, the other worker is idle.
    plan.push_str(
        "[[task]]\nid = \"last\"\nrun = \"sleep 1\"\nafter = [\"p0\", \"p1\", \"p2\", \"p3\"]\n",
    );
    repo.write("br.toml", &plan);
    let run = repo.spawn(&["run", "--workers", "2"]);
    let mut completed = Vec::new();
    let mut busy_then_idle = false;
    let mut saw_busy = false;
    let mut frames = Vec::new();
    let deadline = Instant::now() + LONG;
    loop {
        let s = summary(&repo);
        let done = s["tasks"]["completed"].as_u64().unwrap_or(0);
        completed.push(done);
        let busy = s["workers"]["busy"].as_u64().unwrap_or(0);
        let idle = s["workers"]["idle"].as_u64().unwrap_or(0);
        saw_busy |= busy == 2;
        busy_then_idle |= saw_busy && busy == 1 && idle == 1;
        let frame = repo.br(&["dashboard", "--once", "--width", "100"]);
        assert_eq!(frame.code, 0, "{}", frame.stderr);
        assert!(
            !frame.stdout.contains('\u{1b}'),
            "a --once frame has no escape codes"
        );
        frames.push(frame.stdout);
        if done == 5 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    let out = run.wait(LONG);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        completed.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {completed:?}"
    );
    assert_eq!(completed.last(), Some(&5));
    assert!(
        completed.len() > 5,
        "several readings during the run: {completed:?}"
    );
    assert!(
        saw_busy && busy_then_idle,
        "workers went busy, then one went idle"
    );
    assert!(
        frames.iter().any(|f| f.contains("running")),
        "a frame showed the session running"
    );
    // The final numbers agree with `br status --json`.
    let status = repo.status("live");
    let s = summary(&repo);
    assert_eq!(s["tasks"]["completed"], status["completed_tasks"]);
    assert_eq!(s["tasks"]["failed"], status["failed_tasks"]);
    assert_eq!(s["tasks"]["running"], status["running_tasks"]);
    assert_eq!(s["tasks"]["queued"], status["queued_tasks"]);
    let last = repo.br(&["dashboard", "--once", "--json"]);
    let snap: Value = serde_json::from_str(&last.stdout).expect("snapshot JSON");
    assert_eq!(snap["sessions"][0]["completed_tasks"], 5);
    assert_eq!(snap["sessions"][0]["progress_percent"], 100.0);
    for part in ["workers", "sessions", "tasks"] {
        assert_eq!(
            snap["summary"][part], s[part],
            "the snapshot's {part} are the summary's"
        );
    }
    let frame = repo.br(&["dashboard", "--once"]).stdout;
    assert!(frame.contains("100.0%") && frame.contains("5/5"), "{frame}");
}

#[test]
fn three_running_sessions_and_one_completed_are_counted_as_such() {
    let repo = TestRepo::new();
    repo.write(
        "done.toml",
        "name = \"finished\"\nisolation = \"shared\"\n[[task]]\nid = \"x\"\nrun = \"true\"\n",
    );
    assert_eq!(repo.br(&["run", "done.toml"]).code, 0);
    let mut guards = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        repo.write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\nisolation = \"shared\"\n[[task]]\nid = \"wait\"\n\
                 run = 'while [ ! -f release ]; do sleep 0.05; done'\n"
            ),
        );
        let submitted = repo.br(&["submit", &format!("{name}.toml")]);
        let id = submitted.stdout.lines().last().expect("id").to_string();
        guards.push(repo.spawn(&["worker", "--session", &id]));
    }
    let s = poll("three running sessions", LONG, || {
        let s = summary(&repo);
        (s["tasks"]["running"] == 3).then_some(s)
    });
    assert_eq!(
        (
            s["sessions"]["active"].as_u64(),
            s["sessions"]["total"].as_u64()
        ),
        (Some(3), Some(4))
    );
    assert_eq!(
        (
            s["tasks"]["completed"].as_u64(),
            s["tasks"]["queued"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(
        (
            s["workers"]["busy"].as_u64(),
            s["workers"]["utilization"].as_f64()
        ),
        (Some(3), Some(1.0))
    );
    let frame = repo.br(&["dashboard", "--once", "--width", "120"]).stdout;
    assert!(frame.contains("Sessions 3/4 active"), "{frame}");
    for name in ["alpha", "beta", "gamma", "finished"] {
        assert!(
            frame.contains(name),
            "{name} missing from the frame:\n{frame}"
        );
    }
    repo.write("release", "");
    for g in guards {
        assert_eq!(g.wait(LONG).code, 0);
    }
    let s = summary(&repo);
    assert_eq!(
        (
            s["sessions"]["active"].as_u64(),
            s["tasks"]["completed"].as_u64()
        ),
        (Some(0), Some(4))
    );
}

#[test]
fn without_a_terminal_br_run_prints_plain_lines_and_the_dashboard_refuses() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"plain\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 0);
    assert!(
        !run.stdout.contains('\u{1b}') && !run.stderr.contains('\u{1b}'),
        "no escape codes"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with('+') && l.contains(" task_succeeded task=a")),
        "{}",
        run.stdout
    );
    let live = repo.br(&["dashboard"]);
    assert_eq!(live.code, 2);
    assert!(live.stderr.contains("needs a terminal"), "{}", live.stderr);
}

/// A program running in a real pseudo-terminal, its screen kept by a terminal emulator (vt100),
/// so the test sees what a user would and can type at it. Killed when dropped.
struct Pty {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Pty {
    /// Runs `script` with `sh -c` in the repository, in a 140×50 terminal.
    fn start(repo: &TestRepo, script: &str) -> Pty {
        Pty::start_sized(repo, script, (50, 140), &[])
    }

    /// Runs `script` in a terminal of `(rows, cols)`, with `env` added to its environment.
    fn start_sized(
        repo: &TestRepo,
        script: &str,
        (rows, cols): (u16, u16),
        env: &[(&str, &str)],
    ) -> Pty {
        let pair = portable_pty::native_pty_system()
            .openpty(portable_pty::PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pty");
        let mut cmd = portable_pty::CommandBuilder::new("sh");
        cmd.args(["-c", script]);
        cmd.cwd(repo.path());
        cmd.env_clear();
        for (k, v) in [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", repo.path().display().to_string()),
            ("GIT_CONFIG_NOSYSTEM", "1".into()),
            ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
            ("TERM", "xterm-256color".into()),
            ("LC_ALL", "C.UTF-8".into()),
        ] {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pair.slave.spawn_command(cmd).expect("spawn in the pty");
        drop(pair.slave);
        let (non_zero_rows, non_zero_cols) = (
            std::num::NonZeroU16::new(rows).expect("rows"),
            std::num::NonZeroU16::new(cols).expect("cols"),
        );
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            non_zero_rows,
            non_zero_cols,
            0,
        )));
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer: Arc<Mutex<Box<dyn Write + Send>>> =
            Arc::new(Mutex::new(pair.master.take_writer().expect("pty writer")));
        let (feed, answer) = (Arc::clone(&screen), Arc::clone(&writer));
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends at EOF or EIO, when the program and everything it started have exited.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut parser = feed.lock().expect("screen");
                parser.process(&buf[..n]);
                // Answer "where is the cursor?" (DSR 6) as a real terminal does.
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let (row, col) = parser.screen().cursor_position();
                    let reply = format!("\x1b[{};{}R", row + 1, col + 1);
                    let _ = answer.lock().expect("writer").write_all(reply.as_bytes());
                }
            }
        });
        Pty {
            screen,
            writer,
            child,
            _master: pair.master,
        }
    }

    fn screen(&self) -> String {
        self.screen.lock().expect("screen").screen().contents()
    }

    /// The colour of the first character of the first line that contains `needle`.
    fn colour_of(&self, needle: &str) -> Option<vt100::Color> {
        let parser = self.screen.lock().expect("screen");
        let screen = parser.screen();
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        for row in 0..rows {
            let line = screen.contents_between(row, 0, row, cols);
            if let Some(at) = line.find(needle) {
                let col = u16::try_from(line[..at].chars().count()).expect("column");
                return screen.cell(row, col).map(vt100::Cell::fgcolor);
            }
        }
        None
    }

    /// Whether the program left the terminal as it found it: main screen, cursor shown.
    fn screen_restored(&self) -> bool {
        let parser = self.screen.lock().expect("screen");
        !parser.screen().alternate_screen() && !parser.screen().hide_cursor()
    }

    fn keys(&mut self, bytes: &[u8]) {
        let mut writer = self.writer.lock().expect("writer");
        writer.write_all(bytes).expect("type");
        writer.flush().expect("flush");
    }

    fn wait_for(&self, what: &str, needle: &str) -> String {
        self.wait_until(what, |screen| screen.contains(needle))
    }

    /// Waits for a screen that satisfies `done`. A frame arrives in pieces, so a test
    /// waits for everything it will look at, never for one part and then reads the rest.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TAB: &[u8] = b"\t";
const ENTER: &[u8] = b"\r";
const ESCAPE: &[u8] = b"\x1b";
const CTRL_C: &[u8] = b"\x03";

fn session_status(repo: &TestRepo, name: &str) -> String {
    repo.status(name)["status"]
        .as_str()
        .expect("status")
        .to_string()
}

/// The session's status JSON once it exists (a background `br run` creates it).
fn status_when_there(repo: &TestRepo, name: &str) -> Option<Value> {
    let run = repo.br(&["status", name, "--json"]);
    (run.code == 0).then(|| serde_json::from_str(&run.stdout).expect("status JSON"))
}

#[test]
fn the_interactive_dashboard_reacts_to_keys_and_restores_the_terminal() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "interactive"
isolation = "shared"
[[task]]
id = "talker"
run = 'echo "hello from the task"; while [ ! -f release ]; do sleep 0.05; done'
[[task]]
id = "second"
run = 'while [ ! -f release ]; do sleep 0.05; done'
"#,
    );
    let run = repo.spawn(&["run", "--workers", "2", "--no-dashboard"]);
    poll("both tasks running", LONG, || {
        let s = status_when_there(&repo, "interactive")?;
        (s["running_tasks"] == 2).then_some(())
    });
    let br = Path::new(common::BR).display().to_string();
    let mut pty = Pty::start(
        &repo,
        &format!(
            "{br} dashboard --refresh 100ms; echo DASHBOARD-EXIT=$?; \
             stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; \
             echo TTY-CHECKED"
        ),
    );
    // The first frame is drawn in pieces: wait for the task rows, not just the header.
    pty.wait_until("the dashboard showing the running task", |screen| {
        screen.contains("interactive") && screen.contains("talker") && screen.contains("running")
    });
    // Select the tasks panel, then the running task, and open its live log.
    pty.keys(TAB);
    pty.keys(ENTER);
    pty.wait_for("the task's log", "hello from the task");
    pty.keys(ESCAPE);
    pty.wait_for("back to the panels", "Sessions");
    pty.keys(b"p");
    poll("the session paused", LONG, || {
        (session_status(&repo, "interactive") == "paused").then_some(())
    });
    pty.wait_for("paused shown", "paused");
    pty.keys(b"r");
    poll("the session running again", LONG, || {
        (session_status(&repo, "interactive") == "running").then_some(())
    });
    pty.keys(b"q");
    let after = pty.wait_for("the dashboard to exit", "TTY-CHECKED");
    assert!(after.contains("DASHBOARD-EXIT=0"), "{after}");
    assert!(
        after.contains("icanon") && !after.contains("-icanon"),
        "cooked mode restored: {after}"
    );
    assert!(
        after.contains("echo") && !after.contains("-echo"),
        "echo restored: {after}"
    );
    assert!(pty.screen_restored(), "main screen and cursor are back");
    repo.write("release", "");
    assert_eq!(run.wait(LONG).code, 0);
}

#[test]
fn br_run_on_a_terminal_shows_the_dashboard_and_ctrl_c_stops_the_run() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "onscreen"
isolation = "shared"
[[task]]
id = "waiter"
run = 'while [ ! -f release ]; do sleep 0.05; done'
"#,
    );
    let br = Path::new(common::BR).display().to_string();
    let mut pty = Pty::start(&repo, &format!("{br} run; echo RUN-EXIT=$? RUN-END"));
    pty.wait_until("the dashboard of the run", |screen| {
        screen.contains("waiter") && screen.contains("onscreen")
    });
    poll("the task running", LONG, || {
        (status_when_there(&repo, "onscreen")?["running_tasks"] == 1).then_some(())
    });
    pty.keys(CTRL_C);
    let after = pty.wait_for("br run to exit", "RUN-END");
    assert!(after.contains("RUN-EXIT=130"), "{after}");
    assert!(after.contains("is paused"), "{after}");
    assert!(pty.screen_restored(), "main screen and cursor are back");
    assert_eq!(session_status(&repo, "onscreen"), "paused");
    assert!(repo.workers().iter().all(|w| w["status"] == "stopped"));
}

/// The task rows of a dashboard screen: the lines of the tasks table that name one of `ids`.
fn task_rows<'a>(screen: &'a str, ids: &[String]) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.starts_with('│') && ids.iter().any(|id| l.contains(&format!(" {id} "))))
        .collect()
}

#[test]
fn a_35_row_terminal_shows_all_20_tasks_beside_one_line_of_workers_and_one_of_locks() {
    let repo = TestRepo::new();
    let mut plan = String::from("name = \"twenty\"\nisolation = \"shared\"\n");
    for i in 1..=20 {
        // The first four each hold a lock and wait: four busy workers, four locks held.
        let files = if i <= 4 {
            format!("files = [\"part{i}/**\"]\n")
        } else {
            String::new()
        };
        plan.push_str(&format!(
            "[[task]]\nid = \"task-{i:02}\"\n{files}run = 'while [ ! -f release ]; do sleep 0.05; done'\n"
        ));
    }
    repo.write("br.toml", &plan);
    let run = repo.spawn(&["run", "--workers", "4", "--no-dashboard"]);
    poll("four tasks running", LONG, || {
        let s = status_when_there(&repo, "twenty")?;
        (s["running_tasks"] == 4).then_some(())
    });
    let ids: Vec<String> = (1..=20).map(|i| format!("task-{i:02}")).collect();
    let br = Path::new(common::BR).display().to_string();
    let mut pty = Pty::start_sized(
        &repo,
        &format!("{br} dashboard --refresh 100ms"),
        (35, 120),
        &[],
    );
    let screen = pty.wait_until("every task in the table", |screen| {
        task_rows(screen, &ids).len() == 20
            && screen.contains("▸ Workers 4 (4 busy, 0 idle)")
            && screen.contains("▸ Locks 4 held by 4 tasks")
    });
    for id in &ids {
        assert!(
            task_rows(&screen, std::slice::from_ref(id)).len() == 1,
            "{id} is not in the table:\n{screen}"
        );
    }
    // Focused, the workers open (and the task list gives up the room).
    pty.keys(TAB);
    pty.keys(TAB);
    pty.wait_until("the workers' panel", |screen| {
        screen.contains("Workers (4)") && screen.contains("Heartbeat")
    });
    pty.keys(TAB);
    pty.wait_until("the locks' panel", |screen| {
        screen.contains("Locks (4)") && screen.contains("part1/**") && screen.contains("Held by")
    });
    pty.keys(b"q");
    repo.write("release", "");
    assert_eq!(run.wait(LONG).code, 0);
}

#[test]
fn enter_shows_the_attempts_of_a_retried_task_and_the_log_of_each() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "again"
isolation = "shared"
[[task]]
id = "flaky"
retries = 1
prompt = "Say it again, louder."
run = 'if [ -f tried ]; then echo "second try"; else touch tried; echo "first try"; exit 3; fi'
"#,
    );
    let run = repo.br(&["run", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let br = Path::new(common::BR).display().to_string();
    let mut pty = Pty::start(&repo, &format!("{br} dashboard --refresh 100ms"));
    pty.wait_until("the dashboard", |screen| {
        screen.contains("flaky") && screen.contains("succeeded")
    });
    pty.keys(TAB);
    pty.keys(ENTER);
    let screen = pty.wait_until("the task with its two attempts", |screen| {
        screen.contains("Attempts (2)")
            && screen.contains("second try")
            && screen.contains("Say it again, louder.")
    });
    assert!(
        screen.contains("┌ Prompt"),
        "the prompt has its panel:\n{screen}"
    );
    let row = |n: &str| {
        screen
            .lines()
            .find(|l| {
                l.split_whitespace().take(2).any(|w| w == n)
                    && l.contains("first") | l.contains("failed")
            })
            .unwrap_or_else(|| panic!("no row for attempt {n}:\n{screen}"))
            .to_string()
    };
    let first = row("1");
    let words: Vec<&str> = first.split_whitespace().collect();
    assert!(
        words.windows(3).any(|w| w == ["first", "failed", "3"]),
        "attempt 1: the first, failed with exit 3: {first}"
    );
    let second = row("2");
    let words: Vec<&str> = second.split_whitespace().collect();
    assert!(
        words.windows(2).any(|w| w == ["failed", "succeeded"]),
        "attempt 2: run because the first failed, succeeded: {second}"
    );
    assert!(
        screen.contains("task_requeued") && screen.contains("exit 3; attempt 2 next"),
        "why it ran again:\n{screen}"
    );
    // The attempt before: its own log.
    pty.keys(b"[");
    pty.wait_until("the first attempt's log", |screen| {
        screen.contains("first try") && screen.contains("Log of attempt 1")
    });
    pty.keys(ESCAPE);
    pty.wait_for("back to the panels", "Sessions (1)");
    pty.keys(b"q");
}

#[test]
fn d_shows_the_diff_of_a_task_that_changed_a_file_in_colour_unless_no_color() {
    let repo = TestRepo::new();
    repo.commit_plan(
        r#"name = "changes"
[[task]]
id = "greeter"
run = 'echo "hello from greeter" > greeting.txt'
"#,
    );
    let run = repo.br(&["run", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let br = Path::new(common::BR).display().to_string();
    for (env, coloured) in [(vec![], true), (vec![("NO_COLOR", "1")], false)] {
        let mut pty = Pty::start_sized(
            &repo,
            &format!("{br} dashboard --refresh 100ms"),
            (50, 140),
            &env,
        );
        pty.wait_for("the dashboard", "greeter");
        pty.keys(TAB);
        pty.keys(b"d");
        let screen = pty.wait_until("the diff", |screen| {
            screen.contains("+hello from greeter") && screen.contains("greeting.txt")
        });
        assert!(screen.contains("Diff of changes/greeter"), "{screen}");
        let added = pty.colour_of("+hello from greeter");
        if coloured {
            assert_eq!(added, Some(vt100::Color::Idx(2)), "added lines are green");
        } else {
            assert_eq!(added, Some(vt100::Color::Default), "NO_COLOR: no colour");
        }
        pty.keys(ESCAPE);
        pty.wait_for("back to the panels", "Sessions (1)");
        // From the task view, `d` shows the attempt's diff too.
        pty.keys(ENTER);
        pty.wait_for("the task", "Attempts (1)");
        pty.keys(b"d");
        pty.wait_until("the attempt's diff", |screen| {
            screen.contains("attempt 1 against its start commit")
                && screen.contains("+hello from greeter")
        });
        pty.keys(ESCAPE);
        pty.wait_for("back to the task", "Attempts (1)");
        pty.keys(b"q");
        pty.keys(b"q");
    }
}
