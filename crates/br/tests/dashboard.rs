//! The dashboard end to end: frames and summaries read while a real `br run` works, the seed's
//! multi-session display, and the interactive UI driven in a real pseudo-terminal (tmux).

mod common;

use std::path::Path;
use std::process::Command;
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

/// A tmux server of the test's own (own socket, no user configuration), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(repo: &TestRepo, command: &str) -> Tmux {
        let socket = format!("br-test-{}-{}", std::process::id(), fastrand::u64(..));
        let tmux = Tmux { socket };
        let env = [
            format!("HOME={}", repo.path().display()),
            "GIT_CONFIG_NOSYSTEM=1".into(),
            "GIT_CONFIG_GLOBAL=/dev/null".into(),
            "TERM=xterm-256color".into(),
            "LC_ALL=C.UTF-8".into(),
        ];
        let mut args: Vec<String> = vec![
            "-f".into(),
            "/dev/null".into(),
            "new-session".into(),
            "-d".into(),
        ];
        args.extend([
            "-x".into(),
            "140".into(),
            "-y".into(),
            "50".into(),
            "-s".into(),
            "t".into(),
        ]);
        for e in &env {
            args.push("-e".into());
            args.push(e.clone());
        }
        args.push("-c".into());
        args.push(repo.path().display().to_string());
        args.push(command.into());
        let ok = tmux
            .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .status
            .success();
        assert!(ok, "tmux new-session failed");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        assert!(self.cmd(&args).status.success());
    }

    fn wait_for(&self, what: &str, needle: &str) -> String {
        poll(what, LONG, || {
            let screen = self.screen();
            screen.contains(needle).then_some(screen)
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

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
    let tmux = Tmux::start(
        &repo,
        &format!(
            "{br} dashboard --refresh 100ms; echo DASHBOARD-EXIT=$?; \
             stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; \
             echo TTY-CHECKED; sleep 60"
        ),
    );
    let screen = tmux.wait_for("the dashboard", "interactive");
    assert!(
        screen.contains("talker") && screen.contains("running"),
        "{screen}"
    );
    // Select the tasks panel, then the running task, and open its live log.
    tmux.keys(&["Tab"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the task's log", "hello from the task");
    tmux.keys(&["Escape"]);
    tmux.wait_for("back to the panels", "Sessions");
    tmux.keys(&["p"]);
    poll("the session paused", LONG, || {
        (session_status(&repo, "interactive") == "paused").then_some(())
    });
    tmux.wait_for("paused shown", "paused");
    tmux.keys(&["r"]);
    poll("the session running again", LONG, || {
        (session_status(&repo, "interactive") == "running").then_some(())
    });
    tmux.keys(&["q"]);
    let after = tmux.wait_for("the dashboard to exit", "TTY-CHECKED");
    assert!(after.contains("DASHBOARD-EXIT=0"), "{after}");
    assert!(
        after.contains("icanon") && !after.contains("-icanon"),
        "cooked mode restored: {after}"
    );
    assert!(
        after.contains("echo") && !after.contains("-echo"),
        "echo restored: {after}"
    );
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
    let tmux = Tmux::start(&repo, &format!("{br} run; echo RUN-EXIT=$?; sleep 60"));
    let screen = tmux.wait_for("the dashboard of the run", "waiter");
    assert!(screen.contains("onscreen"), "{screen}");
    poll("the task running", LONG, || {
        (status_when_there(&repo, "onscreen")?["running_tasks"] == 1).then_some(())
    });
    tmux.keys(&["C-c"]);
    let after = tmux.wait_for("br run to exit", "RUN-EXIT=");
    assert!(after.contains("RUN-EXIT=130"), "{after}");
    assert!(after.contains("is paused"), "{after}");
    assert_eq!(session_status(&repo, "onscreen"), "paused");
    assert!(repo.workers().iter().all(|w| w["status"] == "stopped"));
}
