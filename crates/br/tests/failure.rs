//! What happens when processes die, stall or are interrupted: BuildRunner 3.1's worker-failure,
//! zombie, scaling and heartbeat scenarios, plus Ctrl-C and kill -9 of `br run`. Real processes,
//! real signals, a real store.

mod common;

use std::time::Duration;

use br_core::EventKind;
use br_store::audit::audit_terminal_once;
use common::{Guard, TestRepo, alive, detail, poll, stop_outside_transaction};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn task<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == id)
        .expect("task present")
}

/// The worker currently running `task` (from `br workers --json`).
fn worker_running(repo: &TestRepo, task: &str) -> Option<Value> {
    repo.workers()
        .into_iter()
        .find(|w| w["status"] == "busy" && w["current_task"] == task)
}

fn pid_of(w: &Value) -> i32 {
    i32::try_from(w["pid"].as_i64().expect("pid")).expect("fits")
}

fn read_pid(repo: &TestRepo, file: &str) -> Option<i32> {
    std::fs::read_to_string(repo.path().join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn spawn_run(repo: &TestRepo, workers: &str) -> Guard {
    repo.spawn(&[
        "run",
        "--workers",
        workers,
        "--heartbeat-interval",
        "200ms",
        "--kill-grace",
        "500ms",
    ])
}

#[test]
fn a_killed_worker_s_task_reruns_elsewhere_as_attempt_2() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "kill"
isolation = "shared"
heartbeat_timeout = "2s"
[[task]]
id = "slow"
run = 'echo $$ > slow.pid.$BR_ATTEMPT; if [ "$BR_ATTEMPT" = 1 ]; then exec sleep 60; fi; echo done > slow.out'
files = ["slow.out"]
"#,
    );
    let run = spawn_run(&repo, "2");
    let task_pid = poll("attempt 1 to start", LONG, || read_pid(&repo, "slow.pid.1"));
    let victim = poll("a busy worker", LONG, || worker_running(&repo, "slow"));
    kill(Pid::from_raw(pid_of(&victim)), Signal::SIGKILL).expect("kill -9 the worker");
    // Its reaper ends the task's process group; another worker reruns the task.
    poll("the dead worker's task process to die", LONG, || {
        (!alive(task_pid)).then_some(())
    });
    let done = run.wait(LONG);
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, done.stderr);
    let status = repo.status("kill");
    assert_eq!(status["status"], "completed");
    let slow = task(&status, "slow");
    assert_eq!(
        (slow["state"].as_str(), slow["attempts"].as_u64()),
        (Some("succeeded"), Some(2))
    );
    assert_ne!(
        slow["worker_id"], victim["id"],
        "the rerun ran on another worker"
    );
    assert_eq!(repo.read("slow.out"), "done\n");
    let dead = repo
        .workers()
        .into_iter()
        .find(|w| w["id"] == victim["id"])
        .expect("the dead worker is still listed");
    assert_eq!(dead["status"], "offline");
    let events = repo.events();
    let requeued = events
        .iter()
        .find(|e| e.kind == EventKind::TaskRequeued)
        .expect("task_requeued");
    assert_eq!(detail(requeued)["outcome"], "lease_lost");
    assert!(events.iter().any(|e| e.kind == EventKind::WorkerOffline));
    audit_terminal_once(&events).expect("the task ended once");
}

#[test]
fn a_stalled_worker_s_late_result_is_refused_and_the_rerun_s_stands() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "zombie"
isolation = "shared"
heartbeat_timeout = "2s"
[[task]]
id = "t"
run = """
if [ "$BR_ATTEMPT" = 1 ]; then echo $$ > t.pid.1; exec sleep 60; fi
# Attempt 2 looks whether attempt 1 still runs (a zombie waiting for its frozen parent is dead).
p=$(cat t.pid.1)
if [ -d /proc/$p ] && ! grep -q '^State:.*[ZX]' /proc/$p/status; then echo overlap > t.overlap; fi
echo "attempt $BR_ATTEMPT" > t.out
"""
"#,
    );
    let run = spawn_run(&repo, "2");
    let first_pid = poll("attempt 1 to start", LONG, || read_pid(&repo, "t.pid.1"));
    let zombie = poll("the busy worker", LONG, || worker_running(&repo, "t"));
    let zombie_pid = pid_of(&zombie);
    stop_outside_transaction(zombie_pid, &repo.store_path());
    // Past its lease, the other worker requeues the task and runs attempt 2 to the end.
    poll("attempt 2 to succeed", LONG, || {
        let s = repo.status("zombie");
        (task(&s, "t")["state"] == "succeeded").then_some(())
    });
    // The frozen worker could not stop its task, but its reaper did, at the lease's fence
    // deadline: attempt 2 never ran beside attempt 1.
    assert!(
        !repo.path().join("t.overlap").exists(),
        "attempt 2 started while attempt 1 still ran"
    );
    assert!(!alive(first_pid), "the reaper stopped attempt 1");
    kill(Pid::from_raw(zombie_pid), Signal::SIGCONT).expect("SIGCONT");
    // Woken, the zombie finds its task stopped and its lease gone; its result is refused.
    let rejected = poll("stale_result_rejected", LONG, || {
        repo.events()
            .into_iter()
            .find(|e| e.kind == EventKind::StaleResultRejected)
    });
    assert_eq!(
        rejected.worker_id.as_ref().map(br_core::WorkerId::as_str),
        zombie["id"].as_str()
    );
    assert_eq!(rejected.attempt.map(|a| a.0), Some(1));
    poll("attempt 1's process to be killed", LONG, || {
        (!alive(first_pid)).then_some(())
    });
    let done = run.wait(LONG);
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, done.stderr);
    let status = repo.status("zombie");
    let t = task(&status, "t");
    assert_eq!(
        (
            t["state"].as_str(),
            t["attempts"].as_u64(),
            t["exit_code"].as_i64()
        ),
        (Some("succeeded"), Some(2), Some(0))
    );
    assert_ne!(t["worker_id"], zombie["id"]);
    assert_eq!(repo.read("t.out"), "attempt 2\n");
    br_store::audit::audit_fencing(&repo.events()).expect("no stale result accepted");
}

#[test]
fn scaling_up_adds_workers_and_scaling_down_retires_idle_ones_first() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "scale"
isolation = "shared"
[[task]]
id = "long"
run = 'while [ ! -f release ]; do sleep 0.05; done'
"#,
    );
    let run = spawn_run(&repo, "2");
    let session = poll("the session", LONG, || {
        let r = repo.br(&["list", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        v[0]["id"].as_str().map(String::from)
    });
    let live = |repo: &TestRepo| -> Vec<Value> {
        repo.workers()
            .into_iter()
            .filter(|w| w["status"] == "idle" || w["status"] == "busy")
            .collect()
    };
    let busy = poll("two workers, one busy", LONG, || {
        let l = live(&repo);
        (l.len() == 2)
            .then(|| l.into_iter().find(|w| w["status"] == "busy"))
            .flatten()
    });
    let up = repo.br(&["scale", &session, "4"]);
    assert_eq!(up.code, 0, "{}", up.stderr);
    poll("four live workers", LONG, || {
        (live(&repo).len() == 4).then_some(())
    });
    let down = repo.br(&["scale", &session, "1"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    poll("one live worker", LONG, || {
        (live(&repo).len() == 1).then_some(())
    });
    let survivor = live(&repo).pop().expect("one left");
    assert_eq!(
        survivor["id"], busy["id"],
        "the busy worker stays; idle ones left first"
    );
    let stopped: Vec<Value> = repo
        .workers()
        .into_iter()
        .filter(|w| w["status"] == "stopped")
        .collect();
    assert_eq!(stopped.len(), 3);
    assert!(stopped.iter().all(|w| w["tasks_completed"] == 0));
    repo.write("release", "");
    let done = run.wait(LONG);
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, done.stderr);
}

#[test]
fn silent_workers_are_marked_offline_and_healthy_ones_stay() {
    let repo = TestRepo::new();
    let worker_args = [
        "worker",
        "--heartbeat-timeout",
        "1s",
        "--heartbeat-interval",
        "100ms",
    ];
    let a = repo.spawn(&worker_args);
    let b = repo.spawn(&worker_args);
    let ids = poll("two idle workers", LONG, || {
        let w = repo.workers();
        (w.len() == 2 && w.iter().all(|w| w["status"] == "idle")).then_some(w)
    });
    let id_of = |pid: i32| ids.iter().find(|w| pid_of(w) == pid).expect("registered")["id"].clone();
    let (silent, healthy) = (id_of(a.pid()), id_of(b.pid()));
    stop_outside_transaction(a.pid(), &repo.store_path());
    let status_of = |id: &Value| {
        repo.workers()
            .into_iter()
            .find(|w| w["id"] == *id)
            .expect("listed")["status"]
            .clone()
    };
    poll("the silent worker to be marked offline", LONG, || {
        (status_of(&silent) == "offline").then_some(())
    });
    assert_eq!(
        status_of(&healthy),
        "idle",
        "a worker that heartbeats stays"
    );
    let summary: Value =
        serde_json::from_str(&repo.br(&["summary", "--json"]).stdout).expect("json");
    assert_eq!(
        (
            summary["workers"]["offline"].as_u64(),
            summary["workers"]["idle"].as_u64()
        ),
        (Some(1), Some(1))
    );
    a.signal(Signal::SIGCONT);
    poll("the silent worker to come back", LONG, || {
        (status_of(&silent) == "idle").then_some(())
    });
    a.signal(Signal::SIGTERM);
    b.signal(Signal::SIGTERM);
    assert_eq!(a.wait(LONG).code, 0);
    assert_eq!(b.wait(LONG).code, 0);
    assert!(repo.workers().iter().all(|w| w["status"] == "stopped"));
}

fn waiting_plan(name: &str) -> String {
    format!(
        r#"name = "{name}"
isolation = "shared"
[[task]]
id = "one"
run = 'echo $$ > one.pid.$BR_ATTEMPT; while [ ! -f release ]; do sleep 0.05; done'
files = ["one.txt"]
[[task]]
id = "two"
run = 'echo $$ > two.pid.$BR_ATTEMPT; while [ ! -f release ]; do sleep 0.05; done'
files = ["two.txt"]
[[task]]
id = "three"
run = "true"
after = ["one", "two"]
"#
    )
}

#[test]
fn ctrl_c_pauses_the_session_stops_its_tasks_and_resume_finishes_it() {
    let repo = TestRepo::new();
    repo.write("br.toml", &waiting_plan("ctrlc"));
    let run = spawn_run(&repo, "2");
    let one = poll("task one", LONG, || read_pid(&repo, "one.pid.1"));
    let two = poll("task two", LONG, || read_pid(&repo, "two.pid.1"));
    run.signal(Signal::SIGINT);
    let out = run.wait(LONG);
    assert_eq!(out.code, 130, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is paused"), "{}", out.stderr);
    assert!(!alive(one) && !alive(two), "running tasks were stopped");
    let status = repo.status("ctrlc");
    assert_eq!(status["status"], "paused");
    for id in ["one", "two"] {
        let t = task(&status, id);
        assert_eq!(
            (t["state"].as_str(), t["outcome"].as_str()),
            (Some("ready"), Some("interrupted"))
        );
    }
    assert_eq!(task(&status, "three")["state"], "pending");
    let locks: Value = serde_json::from_str(&repo.br(&["locks", "--json"]).stdout).expect("json");
    assert_eq!(locks, serde_json::json!([]), "locks released");
    assert!(
        repo.workers().iter().all(|w| w["status"] == "stopped"),
        "no worker left running"
    );
    repo.write("release", "");
    let session = repo.session_id();
    let resumed = repo.br(&["resume", &session, "--workers", "2"]);
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    let status = repo.status("ctrlc");
    assert_eq!(status["status"], "completed");
    assert_eq!(
        task(&status, "one")["attempts"],
        2,
        "the interrupted attempt ran again"
    );
    audit_terminal_once(&repo.events()).expect("each task ended once");
}

#[test]
fn after_ctrl_c_no_task_waits_for_a_lock_nobody_holds() {
    let repo = TestRepo::new();
    let plan = format!(
        "{}\n[[task]]\nid = \"four\"\nrun = \"true\"\nfiles = [\"one.txt\"]\n",
        waiting_plan("stale-lock")
    );
    repo.write("br.toml", &plan);
    let run = spawn_run(&repo, "3");
    poll("task one", LONG, || read_pid(&repo, "one.pid.1"));
    // The third worker passes `four` over: `one` holds one.txt.
    poll("four to wait for one's lock", LONG, || {
        let status = repo.status("stale-lock");
        (!task(&status, "four")["blocked_by"].is_null()).then_some(())
    });
    run.signal(Signal::SIGINT);
    assert_eq!(run.wait(LONG).code, 130);
    let locks: Value = serde_json::from_str(&repo.br(&["locks", "--json"]).stdout).expect("json");
    assert_eq!(locks, serde_json::json!([]), "locks released");
    let status = repo.status("stale-lock");
    assert_eq!(
        task(&status, "four")["blocked_by"],
        Value::Null,
        "br status agrees with br locks: {status}"
    );
    let text = repo.br(&["status", "stale-lock"]);
    assert!(!text.stdout.contains("held by"), "{}", text.stdout);
}

#[test]
fn kill_9_of_br_run_loses_nothing_and_resume_carries_on() {
    let repo = TestRepo::new();
    repo.write("br.toml", &waiting_plan("killrun"));
    let run = spawn_run(&repo, "2");
    let one = poll("task one", LONG, || read_pid(&repo, "one.pid.1"));
    let two = poll("task two", LONG, || read_pid(&repo, "two.pid.1"));
    let workers: Vec<i32> = repo.workers().iter().map(pid_of).collect();
    run.signal(Signal::SIGKILL);
    let _ = run.wait(LONG);
    // Its workers see their pipe close, stop their tasks and leave.
    poll("the workers to leave", LONG, || {
        workers.iter().all(|p| !alive(*p)).then_some(())
    });
    poll("the tasks to stop", LONG, || {
        (!alive(one) && !alive(two)).then_some(())
    });
    let session = repo.session_id();
    let status = repo.status(&session);
    assert_eq!(
        status["status"], "running",
        "nobody paused it: br run was killed"
    );
    assert_eq!(task(&status, "one")["state"], "ready");
    repo.write("release", "");
    let resumed = repo.br(&["resume", &session, "--workers", "2"]);
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    assert_eq!(repo.status(&session)["status"], "completed");
}

#[test]
fn cancel_stops_running_tasks_and_releases_their_locks() {
    let repo = TestRepo::new();
    repo.write("br.toml", &waiting_plan("cancel"));
    let run = spawn_run(&repo, "2");
    let one = poll("task one", LONG, || read_pid(&repo, "one.pid.1"));
    let session = repo.session_id();
    let cancel = repo.br(&["cancel", &session]);
    assert_eq!(cancel.code, 0, "{}\n{}", cancel.stdout, cancel.stderr);
    assert!(
        cancel.stdout.contains("cancelled session"),
        "{}",
        cancel.stdout
    );
    assert!(!alive(one), "cancel waited for the running task to stop");
    let out = run.wait(LONG);
    assert_eq!(
        out.code, 1,
        "a cancelled session is not a success: {}",
        out.stdout
    );
    let status = repo.status(&session);
    assert_eq!(status["status"], "cancelled");
    for id in ["one", "two", "three"] {
        assert_eq!(task(&status, id)["state"], "cancelled");
    }
    let locks: Value = serde_json::from_str(&repo.br(&["locks", "--json"]).stdout).expect("json");
    assert_eq!(locks, serde_json::json!([]));
    let again = repo.br(&["resume", &session]);
    assert_eq!(
        again.code, 2,
        "resuming a cancelled session is refused: {}",
        again.stderr
    );
    assert!(
        again.stderr.contains("cannot resume session"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_fresh_idle_worker_rescues_an_expired_lease_before_it_leaves() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        r#"name = "rescue"
isolation = "shared"
heartbeat_timeout = "2s"
[[task]]
id = "t"
run = 'if [ "$BR_ATTEMPT" = 1 ]; then echo $$ > t.pid.1; exec sleep 60; fi; echo "attempt $BR_ATTEMPT" > t.out'
"#,
    );
    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let session = submitted
        .stdout
        .lines()
        .last()
        .expect("id")
        .trim()
        .to_string();
    let frozen = repo.spawn(&[
        "worker",
        "--session",
        &session,
        "--heartbeat-interval",
        "200ms",
    ]);
    poll("attempt 1 to start", LONG, || read_pid(&repo, "t.pid.1"));
    stop_outside_transaction(frozen.pid(), &repo.store_path());
    // Wait until the store's clock is past the frozen worker's lease.
    let store = repo.store();
    let id = br_core::SessionId::from_string(&session);
    poll("the lease to expire", LONG, || {
        let w = store
            .workers(&Default::default())
            .ok()?
            .into_iter()
            .find(|w| w.current_task.is_some())?;
        let now = store.now().ok()?;
        (now.since(w.last_heartbeat) > Duration::from_secs(3)).then_some(())
    });
    // A worker started now finds nothing ready at first; it must requeue the expired lease
    // before it decides there is nothing to do.
    let fresh = repo.br(&["worker", "--session", &session, "--exit-when-idle"]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    let s = store.session(&id).expect("session");
    assert_eq!(
        s.status,
        br_core::SessionStatus::Completed,
        "{}",
        fresh.stderr
    );
    assert_eq!(repo.read("t.out"), "attempt 2\n");
    frozen.signal(Signal::SIGCONT);
    let rejected = poll("the frozen worker's result to be refused", LONG, || {
        repo.events()
            .into_iter()
            .find(|e| e.kind == EventKind::StaleResultRejected)
    });
    assert_eq!(rejected.attempt.map(|a| a.0), Some(1));
    assert_eq!(frozen.wait(LONG).code, 0);
    br_store::audit::audit_fencing(&repo.events()).expect("no stale result accepted");
}
