//! br with its state in PostgreSQL (`BR_STORE=postgres://…`): a run in worktrees exactly as on
//! SQLite, workers from two clones of the repository (two machines, as far as br can tell)
//! sharing one session, and a killed worker's task rerun by the other. Each test works in a
//! schema of its own, dropped afterwards. (An unreachable server is in bad_input.rs.)
//!
//! Needs `BR_TEST_POSTGRES_URL` (CI sets it); without it each test says it was skipped.

mod common;

use std::time::Duration;

use br_core::EventKind;
use br_store::audit::{audit_lock_order, audit_terminal_once};
use common::{PgSchema, TestRepo, alive, detail, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
/// Commits `here`'s plan, clones the repository (another machine), and submits the plan from
/// `here`: the clone and the session id.
fn commit_clone_and_submit(here: &TestRepo) -> (TestRepo, String) {
    here.git(&["add", "br.toml"]);
    here.git(&["commit", "--quiet", "-m", "plan"]);
    let there = here.clone_elsewhere();
    let submitted = here.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let session = submitted.stdout.lines().last().expect("session id").trim();
    (there, session.to_string())
}

fn tasks(status: &Value) -> &Vec<Value> {
    status["tasks"].as_array().expect("tasks")
}

#[test]
fn a_run_in_worktrees_keeps_all_its_state_in_postgres() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let repo = TestRepo::with_store(schema.url());
    repo.write(
        "br.toml",
        r#"name = "pg"
[[task]]
id = "one"
run = "echo 1 > one.txt"
files = ["one.txt"]
[[task]]
id = "two"
run = "echo 2 > two.txt"
files = ["two.txt"]
[[task]]
id = "both"
run = "files=$(ls); echo $files > both.txt"
files = ["both.txt"]
after = ["one", "two"]
"#,
    );
    repo.git(&["add", "br.toml"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
    let run = repo.br(&["run", "--workers", "2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status("pg");
    assert_eq!(status["status"], "completed");
    assert_eq!(status["completed_tasks"], 3);
    // Each task's work is on its branch, in this repository.
    let slug = tasks(&status)[0]["branch"]
        .as_str()
        .expect("branch")
        .rsplit_once('/')
        .expect("br/<slug>/<task>")
        .0
        .to_string();
    assert_eq!(repo.git(&["show", &format!("{slug}/one:one.txt")]), "1");
    assert_eq!(repo.git(&["show", &format!("{slug}/two:two.txt")]), "2");
    // A dependent starts from the integration tip, which holds what its `after` tasks landed;
    // and everything landed there.
    assert_eq!(
        repo.git(&["show", &format!("{slug}/both:both.txt")]),
        "README.md br.toml one.txt two.txt"
    );
    assert_eq!(
        repo.git(&["ls-tree", "--name-only", &format!("{slug}/integration")]),
        "README.md\nboth.txt\nbr.toml\none.txt\ntwo.txt"
    );
    assert!(
        tasks(&status).iter().all(|t| t["landing"] == "landed"),
        "{status}"
    );
    assert!(
        !repo.store_path().exists(),
        "nothing was written to the repository's own SQLite store"
    );
    let events = repo
        .store()
        .events(&Default::default())
        .expect("events from PostgreSQL");
    audit_terminal_once(&events).expect("each task ended once");
    audit_lock_order(&events).expect("no overlapping locks");
}

#[test]
fn workers_in_two_clones_share_one_session() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let here = TestRepo::with_store(schema.url());
    let rendezvous = tempfile::tempdir().expect("temp dir");
    // Each task waits until both have started: the session only ends if two workers, one per
    // clone, run them at the same time.
    let wait_for_both = format!(
        "echo $BR_TASK_ID >> {dir}/started; \
         while [ $(wc -l < {dir}/started) -lt 2 ]; do sleep 0.05; done; \
         pwd > ran-in.$BR_TASK_ID",
        dir = rendezvous.path().display()
    );
    here.write(
        "br.toml",
        &format!(
            "name = \"two-machines\"\nisolation = \"shared\"\n\
             [[task]]\nid = \"a\"\nrun = '{wait_for_both}'\n\
             [[task]]\nid = \"b\"\nrun = '{wait_for_both}'\n"
        ),
    );
    let (there, session) = commit_clone_and_submit(&here);
    let worker_args = [
        "worker",
        "--session",
        &session,
        "--heartbeat-interval",
        "200ms",
    ];
    let first = here.spawn(&worker_args);
    let second = there.spawn(&worker_args);
    let waited = there.br(&["wait", &session, "--timeout", "60s"]);
    assert_eq!(waited.code, 0, "{}\n{}", waited.stdout, waited.stderr);
    for worker in [first, second] {
        let left = worker.wait(LONG);
        assert_eq!(left.code, 0, "{}", left.stderr);
    }
    let status = here.status(&session);
    let ran_on: Vec<&str> = tasks(&status)
        .iter()
        .map(|t| t["worker_id"].as_str().expect("worker"))
        .collect();
    assert_ne!(ran_on[0], ran_on[1], "one task per worker");
    // One task ran in each clone.
    let ran_here = ["a", "b"]
        .iter()
        .filter(|t| here.path().join(format!("ran-in.{t}")).exists())
        .count();
    let ran_there = ["a", "b"]
        .iter()
        .filter(|t| there.path().join(format!("ran-in.{t}")).exists())
        .count();
    assert_eq!((ran_here, ran_there), (1, 1));
}

#[test]
fn a_killed_worker_s_task_is_rerun_by_a_worker_of_the_other_clone() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let here = TestRepo::with_store(schema.url());
    here.write(
        "br.toml",
        r#"name = "pg-kill"
isolation = "shared"
heartbeat_timeout = "2s"
[[task]]
id = "slow"
run = 'echo $$ > slow.pid; if [ "$BR_ATTEMPT" = 1 ]; then exec sleep 60; fi; echo done > slow.out'
"#,
    );
    let (there, session) = commit_clone_and_submit(&here);
    let worker_args = [
        "worker",
        "--session",
        &session,
        "--heartbeat-interval",
        "200ms",
    ];
    let victim = here.spawn(&worker_args);
    let task_pid: i32 = poll("attempt 1 to start here", LONG, || {
        std::fs::read_to_string(here.path().join("slow.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    let rescuer = there.spawn(&worker_args);
    kill(Pid::from_raw(victim.pid()), Signal::SIGKILL).expect("kill -9 the worker");
    poll("the dead worker's task to die", LONG, || {
        (!alive(task_pid)).then_some(())
    });
    let waited = there.br(&["wait", &session, "--timeout", "60s"]);
    assert_eq!(waited.code, 0, "{}\n{}", waited.stdout, waited.stderr);
    assert_eq!(rescuer.wait(LONG).code, 0);
    drop(victim);
    let status = there.status(&session);
    let slow = &tasks(&status)[0];
    assert_eq!(
        (slow["state"].as_str(), slow["attempts"].as_u64()),
        (Some("succeeded"), Some(2))
    );
    assert_eq!(there.read("slow.out"), "done\n");
    let offline = there
        .workers()
        .into_iter()
        .filter(|w| w["status"] == "offline")
        .count();
    assert_eq!(offline, 1, "the killed worker is shown offline");
    let events = there.store().events(&Default::default()).expect("events");
    let requeued = events
        .iter()
        .find(|e| e.kind == EventKind::TaskRequeued)
        .expect("task_requeued");
    assert_eq!(detail(requeued)["outcome"], "lease_lost");
    audit_terminal_once(&events).expect("the task ended once");
}

#[test]
fn the_store_password_reaches_no_task_no_argument_and_no_log() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    // The test server trusts every connection, so any password is accepted: a marker to look
    // for.
    let marker = format!("s3cret{:08x}", fastrand::u32(..));
    let url = schema.url().replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{marker}@"),
        1,
    );
    assert!(url.contains(&marker), "{url}");
    let repo = TestRepo::with_store(&url);
    repo.write(
        "br.toml",
        r#"name = "secrets"
isolation = "shared"
[[task]]
id = "look"
run = "env > env.txt; tr '\\0' ' ' < /proc/$PPID/cmdline > parent.txt; ps -eo args > ps.txt"
"#,
    );
    let mut run = repo.br_command(&["run", "--workers", "1"]);
    run.env("PGPASSWORD", &marker);
    let out = common::Run::from(run.output().expect("run br"));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for (what, text) in [
        ("the task's environment", repo.read("env.txt")),
        ("the worker's arguments", repo.read("parent.txt")),
        ("any process's arguments", repo.read("ps.txt")),
        ("br run's output", format!("{}{}", out.stdout, out.stderr)),
    ] {
        assert!(
            !text.contains(&marker),
            "{what} shows the password:\n{text}"
        );
    }
    let env = repo.read("env.txt");
    assert!(!env.contains("BR_STORE="), "{env}");
    assert!(!env.contains("PGPASSWORD="), "{env}");
    assert!(
        repo.read("parent.txt").contains("worker"),
        "the parent is the worker"
    );
}

#[test]
fn reading_commands_create_no_tables_in_an_empty_schema() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let repo = TestRepo::with_store(schema.url());
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["summary"],
        &["locks"],
        &["workers"],
        &["events"],
        &["dashboard", "--once"],
    ] {
        let run = repo.br(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    }
    assert_eq!(schema.tables(), Vec::<String>::new(), "nothing was created");
    // The first command that writes makes the store.
    repo.write(
        "br.toml",
        "name = \"p\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(schema.tables().contains(&"sessions".to_string()));
}

#[test]
fn another_machine_follows_a_log_live_and_reads_it_after_the_file_is_gone() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let here = TestRepo::with_store(schema.url());
    let go = tempfile::tempdir().expect("temp dir");
    let go = go.path().join("go");
    here.write(
        "br.toml",
        &format!(
            "name = \"talk\"\nisolation = \"shared\"\n\
             [[task]]\nid = \"talk\"\n\
             run = 'echo one; while [ ! -f {go} ]; do sleep 0.05; done; echo two'\n",
            go = go.display()
        ),
    );
    let (there, session) = commit_clone_and_submit(&here);
    let worker = there.spawn(&[
        "worker",
        "--session",
        &session,
        "--heartbeat-interval",
        "200ms",
    ]);
    poll("the task to run on the other machine", LONG, || {
        (tasks(&here.status(&session))[0]["state"] == "running").then_some(())
    });
    // This machine has no file of that log: what it reads came through the store, while the
    // task still runs.
    let Some(mut follow) = here.br_command_on_host("machine-a", &["logs", "talk", "--follow"])
    else {
        return;
    };
    let mut follow = follow
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn br logs --follow");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        follow.stdout.take().expect("stdout"),
    ));
    assert_eq!(lines.next().expect("a line").expect("read"), "one");
    std::fs::write(&go, "").expect("let the task end");
    assert_eq!(lines.next().expect("a line").expect("read"), "two");
    assert!(
        follow.wait().expect("wait").success(),
        "ends with the attempt"
    );
    assert_eq!(worker.wait(LONG).code, 0);
    // The worker's own file is gone (cleanup, a lost machine): the store still has the log.
    let log = tasks(&here.status(&session))[0]["log_path"]
        .as_str()
        .expect("log path")
        .to_string();
    std::fs::remove_file(&log).expect("remove the worker's log");
    for br in [
        here.br_command_on_host("machine-a", &["logs", &session, "talk", "--attempt", "1"]),
        there.br_command_on_host("machine-b", &["logs", "talk"]),
    ] {
        let out = br.expect("root").output().expect("run br logs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    }
}
