//! The command line's contracts: the JSON shapes DESIGN.md fixes, the `parallel` alias, `--store`
//! and `BR_STORE`, `start`, `wait`, `logs --follow`, `events --follow`, `cleanup`.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{TestRepo, poll};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn json(run: &common::Run) -> Value {
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).expect("JSON output")
}

fn assert_keys(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(k).is_some(), "missing `{k}` in {v:#}");
    }
}

fn simple_plan(repo: &TestRepo) {
    repo.write(
        "br.toml",
        "name = \"shapes\"\nisolation = \"shared\"\n\
         [[task]]\nid = \"a\"\nrun = \"echo hello\"\nfiles = [\"a.txt\"]\n\
         [[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"a\"]\n",
    );
}

#[test]
fn json_outputs_have_the_documented_shapes() {
    let repo = TestRepo::new();
    simple_plan(&repo);
    let status = json(&repo.br(&["run", "--json"]));
    assert_keys(
        &status,
        &[
            "id",
            "name",
            "status",
            "created_at",
            "started_at",
            "completed_at",
            "progress_percent",
            "total_tasks",
            "completed_tasks",
            "failed_tasks",
            "running_tasks",
            "queued_tasks",
            "tasks",
        ],
    );
    for t in status["tasks"].as_array().expect("tasks") {
        assert_keys(
            t,
            &[
                "id",
                "state",
                "attempts",
                "worker_id",
                "branch",
                "exit_code",
                "started_at",
                "finished_at",
                "files",
                "after",
                "log_path",
            ],
        );
    }
    assert_eq!(status["tasks"][1]["after"], serde_json::json!(["a"]));
    let same = json(&repo.br(&["status", "shapes", "--json"]));
    assert_eq!(
        same, status,
        "br run --json prints what br status --json does"
    );
    let workers = json(&repo.br(&["workers", "--all", "--json"]));
    for w in workers.as_array().expect("workers") {
        assert_keys(
            w,
            &[
                "id",
                "status",
                "host",
                "pid",
                "session_id",
                "current_task",
                "attempt",
                "tasks_completed",
                "tasks_failed",
                "last_heartbeat",
                "started_at",
            ],
        );
    }
    let list = json(&repo.br(&["list", "--json"]));
    let mut without_tasks = status.clone();
    without_tasks
        .as_object_mut()
        .expect("object")
        .remove("tasks");
    assert_eq!(list[0], without_tasks);
    let summary = json(&repo.br(&["summary", "--json"]));
    assert_keys(&summary, &["timestamp", "workers", "sessions", "tasks"]);
    assert_keys(
        &summary["workers"],
        &["total", "idle", "busy", "offline", "utilization"],
    );
    assert_keys(&summary["sessions"], &["active", "total"]);
    assert_keys(
        &summary["tasks"],
        &["queued", "running", "completed", "failed"],
    );
    assert_eq!(summary["tasks"]["completed"], 2);
    let locks = json(&repo.br(&["locks", "--json"]));
    assert_eq!(
        locks.as_array().map(Vec::len),
        Some(0),
        "locks end with their tasks"
    );
    let events = repo.br(&["events", "--json"]);
    let mut last_seq = 0;
    for line in events.stdout.lines() {
        let ev: Value = serde_json::from_str(line).expect("NDJSON");
        assert_keys(
            &ev,
            &[
                "seq",
                "at",
                "kind",
                "session_id",
                "task_id",
                "worker_id",
                "attempt",
                "detail",
            ],
        );
        assert!(ev["detail"].is_object());
        let seq = ev["seq"].as_i64().expect("seq");
        assert!(seq > last_seq, "seq strictly increases");
        last_seq = seq;
        if ev["kind"] == "lock_acquired" || ev["kind"] == "lock_released" {
            assert!(ev["detail"]["paths"].is_array(), "{ev}");
        }
    }
}

#[test]
fn manual_lock_json_shape() {
    let repo = TestRepo::new();
    simple_plan(&repo);
    let submitted = repo.br(&["submit"]);
    let id = submitted.stdout.lines().last().expect("id").to_string();
    assert_eq!(
        json(&repo.br(&["lock", &id, "docs", "--json"]))["acquired"],
        true
    );
    let locks = json(&repo.br(&["locks", "--json"]));
    assert_keys(&locks[0], &["path", "session_id", "task_id", "acquired_at"]);
    assert_eq!(locks[0]["path"], "docs");
    assert!(locks[0]["task_id"].is_null());
}

#[test]
fn parallel_alias_store_flag_and_env_select_the_same_things() {
    let repo = TestRepo::new();
    simple_plan(&repo);
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let db = elsewhere.path().join("other.db");
    let db_text = db.to_str().expect("utf8");
    let run = repo.br(&["parallel", "--store", db_text, "run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(db.exists(), "the session went to --store");
    assert!(!repo.store_path().exists(), "and not to the default store");
    let mut cmd = repo.br_command(&["parallel", "list", "--json"]);
    cmd.env("BR_STORE", format!("sqlite://{db_text}"));
    let listed: Value = serde_json::from_slice(&cmd.output().expect("run").stdout).expect("json");
    assert_eq!(listed[0]["name"], "shapes");
    let plain = repo.br(&["list"]);
    assert!(plain.stdout.contains("no sessions"), "{}", plain.stdout);
}

#[test]
fn start_builds_a_plan_from_flags() {
    let repo = TestRepo::new();
    let run = repo.br(&[
        "start",
        "flags",
        "--isolation",
        "shared",
        "-t",
        "gen=echo generated > gen.txt",
        "-f",
        "gen=gen.txt",
        "-t",
        "use=cat gen.txt > used.txt",
        "-a",
        "use=gen",
        "-f",
        "use=used.txt",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(repo.read("used.txt"), "generated\n");
    let status = repo.status("flags");
    assert_eq!(status["tasks"][1]["after"], serde_json::json!(["gen"]));
    let bad = repo.br(&["start", "oops", "-t", "noequals"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--task takes ID=VALUE"),
        "{}",
        bad.stderr
    );
}

#[test]
fn wait_times_out_then_reports_the_end() {
    let repo = TestRepo::new();
    simple_plan(&repo);
    let submitted = repo.br(&["submit"]);
    let id = submitted.stdout.lines().last().expect("id").to_string();
    let early = repo.br(&["wait", &id, "--timeout", "300ms"]);
    assert_eq!(early.code, 124, "{}", early.stderr);
    assert!(early.stderr.contains("still created"), "{}", early.stderr);
    let waiter = repo.spawn(&["wait", &id]);
    let worker = repo.br(&["worker", "--session", &id]);
    assert_eq!(worker.code, 0, "{}", worker.stderr);
    assert!(
        worker.stderr.contains("its session ended"),
        "{}",
        worker.stderr
    );
    let done = waiter.wait(LONG);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert!(done.stdout.contains("completed"), "{}", done.stdout);
}

#[test]
fn logs_and_events_follow_a_running_task() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"follow\"\nisolation = \"shared\"\n\
         [[task]]\nid = \"talk\"\nrun = 'echo one; while [ ! -f go ]; do sleep 0.05; done; echo two'\n",
    );
    let run = repo.spawn(&["run"]);
    poll("the task to start", LONG, || {
        let s = repo.br(&["status", "--json"]);
        let v: Value = serde_json::from_str(&s.stdout).ok()?;
        (v["tasks"][0]["state"] == "running").then_some(())
    });
    let mut follow = repo
        .br_command(&["logs", "follow", "talk", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn logs --follow");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "one");
    repo.write("go", "");
    assert_eq!(lines.next().expect("a line").expect("read"), "two");
    assert!(
        follow.wait().expect("wait").success(),
        "logs --follow ends with the attempt"
    );
    assert_eq!(run.wait(LONG).code, 0);
}

#[test]
fn a_log_not_on_this_machine_is_read_from_the_store() {
    let repo = TestRepo::new();
    simple_plan(&repo);
    assert_eq!(repo.br(&["run"]).code, 0);
    assert_eq!(repo.br(&["logs", "shapes", "a"]).stdout, "hello\n");
    // One argument: the task of the latest session.
    assert_eq!(repo.br(&["logs", "a"]).stdout, "hello\n");
    let status = repo.status("shapes");
    let log = status["tasks"][0]["log_path"].as_str().expect("log path");
    // Removed here (or run on another machine, as far as this one can tell): the store has the
    // output the worker shipped while the task ran.
    std::fs::remove_file(log).expect("delete the log");
    let stored = repo.br(&["logs", "shapes", "a"]);
    assert_eq!(
        (stored.code, stored.stdout.as_str()),
        (0, "hello\n"),
        "{}",
        stored.stderr
    );
    let store = rusqlite::Connection::open(repo.store_path()).expect("open the store");
    store
        .execute("UPDATE workers SET host = 'build-07'", [])
        .expect("move the workers");
    assert_eq!(repo.br(&["logs", "shapes", "a"]).stdout, "hello\n");
    // Neither here nor stored (an attempt of an older br): said, not printed as empty.
    store
        .execute("DELETE FROM log_chunks", [])
        .expect("forget the output");
    drop(store);
    let gone = repo.br(&["logs", "shapes", "a"]);
    assert_eq!(gone.code, 4, "{}", gone.stderr);
    assert!(
        gone.stderr.contains("the store holds no output") && gone.stderr.contains(log),
        "{}",
        gone.stderr
    );
}

#[test]
fn cleanup_deletes_finished_sessions_and_their_logs() {
    let repo = TestRepo::new();
    simple_plan(&repo);
    assert_eq!(repo.br(&["run"]).code, 0);
    let id = repo.session_id();
    let log_dir = repo.path().join(".git/br/logs").join(&id);
    assert!(log_dir.exists());
    let dry = repo.br(&["cleanup", "--days", "0", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would delete session shapes"),
        "{}",
        dry.stdout
    );
    assert!(log_dir.exists(), "a dry run changes nothing");
    let keep = repo.br(&["cleanup"]);
    assert!(
        keep.stdout
            .contains("deleted 0 finished sessions older than 7 days"),
        "{}",
        keep.stdout
    );
    // It says why it kept the session.
    assert!(
        keep.stdout
            .contains("kept: 1 session ended within the last 7 days"),
        "{}",
        keep.stdout
    );
    let real = repo.br(&["cleanup", "--days", "0", "--json"]);
    let report = json(&real);
    assert_eq!(report["sessions"][0]["session_id"], id.as_str());
    assert!(!log_dir.exists());
    assert!(repo.br(&["list"]).stdout.contains("no sessions"));
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let repo = TestRepo::new();
    let help = repo.br(&["--help"]);
    assert_eq!(help.code, 0);
    for command in [
        "demo", "init", "run", "submit", "worker", "wait", "start", "status", "list", "pause",
        "resume", "cancel", "scale", "workers", "lock", "unlock", "locks", "pools", "events",
        "logs", "summary", "cleanup",
    ] {
        assert!(
            help.stdout.contains(&format!("\n  {command} ")),
            "`{command}` missing from --help"
        );
    }
    assert!(help.stdout.contains("Exit codes:"));
    assert!(
        !help.stdout.contains("__reaper"),
        "internal commands stay hidden"
    );
}

#[test]
fn the_plan_br_init_writes_runs_in_a_fresh_repository() {
    let repo = TestRepo::new();
    let init = repo.br(&["init"]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    assert_eq!(
        repo.br(&["init"]).code,
        2,
        "it does not overwrite without --force"
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status("example");
    assert_eq!(status["completed_tasks"], 3);
    let slug = status["slug"].as_str().expect("slug");
    assert_eq!(
        repo.git(&["show", &format!("br/{slug}/greeting:notes/greeting.md")]),
        "Hello from br"
    );
    // The example's two note tasks lock overlapping paths (a directory and a file in it): they
    // never ran at the same time.
    let tasks = status["tasks"].as_array().expect("tasks");
    let span = |id: &str| {
        let t = tasks.iter().find(|t| t["id"] == id).expect("task");
        (
            common::millis(&t["started_at"]),
            common::millis(&t["finished_at"]),
        )
    };
    let (a, b) = (span("notes"), span("greeting"));
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "overlapping locks ran at once: {a:?} {b:?}"
    );
}

#[test]
fn the_demo_runs_to_completion_and_cleans_up_after_itself() {
    let repo = TestRepo::new();
    let demo = repo.br(&["demo", "--workers", "4"]);
    assert_eq!(demo.code, 0, "{}\n{}", demo.stdout, demo.stderr);
    assert!(demo.stdout.contains("completed"), "{}", demo.stdout);
    assert!(
        demo.stdout.contains("task_requeued task=flaky"),
        "the flaky task retried: {}",
        demo.stdout
    );
    assert!(
        demo.stdout.contains("lock_conflict"),
        "api and web took turns: {}",
        demo.stdout
    );
    assert!(
        demo.stdout.contains("merge_conflict task=tagline"),
        "tagline collided with title: {}",
        demo.stdout
    );
    assert!(
        demo.stdout.contains("8 of 8 tasks landed"),
        "everything landed: {}",
        demo.stdout
    );
    // What landed: both CHANGELOG lines stacked, and the rerun of tagline, reading in its
    // context that it conflicted, kept title's line and added its own.
    for line in [
        "# demo: many hands, one branch",
        "Parallel work, integrated as it runs.",
        "- api: users table",
        "- web: users page",
    ] {
        assert!(demo.stdout.contains(line), "{line} landed: {}", demo.stdout);
    }
    let dir = demo
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("br demo: a throwaway repository at "))
        .expect("the demo names its repository");
    assert!(
        !std::path::Path::new(dir).exists(),
        "the throwaway repository is removed"
    );
}

#[test]
fn the_agents_demo_runs_a_fleet_through_a_rate_limit_and_a_repair_and_says_what_it_cost() {
    let repo = TestRepo::new();
    let demo = repo.br(&["demo", "--agents", "--workers", "4"]);
    assert_eq!(demo.code, 0, "{}\n{}", demo.stdout, demo.stderr);
    for (what, line) in [
        ("the rate limit parked the pool", "pool_parked task=audit"),
        (
            "no retry spent: it ran again",
            "task_started task=audit attempt=2",
        ),
        ("tagline collided", "merge_conflict task=tagline"),
        ("everything landed", "6 of 6 tasks landed"),
        (
            "the rerun kept the landed title",
            "# Users, searched and exported",
        ),
        ("and added its own", "Users, fast."),
        ("the cost", "the agents spent $"),
        ("per landed task", "per landed task"),
    ] {
        assert!(demo.stdout.contains(line), "{what}: {}", demo.stdout);
    }
}

#[test]
fn a_worker_touches_its_alive_file_when_the_store_answers() {
    let repo = TestRepo::new();
    let alive = repo.home().join("alive");
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    let worker = repo.br(&[
        "worker",
        "--exit-when-idle",
        "--alive-file",
        &alive.display().to_string(),
    ]);
    assert_eq!(worker.code, 0, "{}", worker.stderr);
    let touched = std::fs::metadata(&alive)
        .and_then(|m| m.modified())
        .expect("the alive file exists");
    assert!(touched >= before, "touched by this worker");
}

#[test]
fn completions_a_manual_and_a_version_that_names_its_commit() {
    let repo = TestRepo::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = repo.br(&["completions", shell]);
        assert_eq!(script.code, 0, "{shell}: {}", script.stderr);
        assert!(
            script.stdout.contains("worker") && script.stdout.contains("alive-file"),
            "{shell}: the script knows br's commands and flags"
        );
    }
    let bash = repo.br(&["completions", "bash"]).stdout;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("br.bash");
    std::fs::write(&path, bash).expect("write");
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .status()
        .expect("bash");
    assert!(checked.success(), "the bash script parses");
    let unknown = repo.br(&["completions", "tcsh"]);
    assert_eq!(unknown.code, 2);
    let man = repo.br(&["man"]);
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH br 1"),
        "roff"
    );
    assert!(man.stdout.contains("completions"), "every command is in it");
    let version = repo.br(&["--version"]).stdout;
    let (release, commit) = version
        .trim()
        .strip_prefix("br ")
        .and_then(|v| v.split_once(" ("))
        .unwrap_or_else(|| panic!("br X.Y.Z (commit): {version}"));
    assert_eq!(release, env!("CARGO_PKG_VERSION"));
    let commit = commit.strip_suffix(')').expect("(commit)");
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        commit == "unknown" || (hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "the commit it was built from: {version}"
    );
}
