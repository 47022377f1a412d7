//! Several machines for real: a session whose work travels through a git remote (`remote = …`).
//! Each "machine" is a clone of its own with its own HOME; the remote is a bare repository; the
//! store is one PostgreSQL schema. The submitting machine never runs a task, yet the session
//! lands everything on the remote's integration branch, and a fresh clone reads any attempt's
//! log and merges the result into its `main`.
//!
//! Needs `BR_TEST_POSTGRES_URL` (CI sets it); without it each test says it was skipped.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{PgSchema, TestRepo, git_dir, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

/// A bare remote holding `here`'s history, known to `here` as `origin`.
fn remote_of(here: &TestRepo) -> tempfile::TempDir {
    let bare = tempfile::tempdir().expect("temp dir");
    let path = bare.path().display().to_string();
    here.git(&["init", "--quiet", "--bare", "--initial-branch=main", &path]);
    here.git(&["remote", "add", "origin", &path]);
    bare
}

fn submit(here: &TestRepo, plan: &str) -> (String, String) {
    here.write("br.toml", plan);
    here.git(&["add", "br.toml"]);
    here.git(&["commit", "--quiet", "-m", "plan"]);
    here.git(&["push", "--quiet", "origin", "main"]);
    let submitted = here.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let session = submitted
        .stdout
        .lines()
        .last()
        .expect("id")
        .trim()
        .to_string();
    let status = here.status(&session);
    let slug = status["tasks"][0]["branch"]
        .as_str()
        .and_then(|b| b.strip_prefix("br/"))
        .and_then(|b| b.rsplit_once('/'))
        .map(|(slug, _)| slug.to_string())
        .expect("br/<slug>/<task>");
    (session, slug)
}

/// `a` hangs in its first attempt (whose worker the test kills) and writes its file in its second.
fn plan(started: &Path) -> String {
    format!(
        r#"name = "travel"
remote = "origin"
heartbeat_timeout = "2s"
[[task]]
id = "a"
run = 'echo making a; if [ "$BR_ATTEMPT" = 1 ]; then touch {started}; exec sleep 60; fi; echo a > a.txt'
files = ["a.txt"]
[[task]]
id = "b"
run = "echo making b; echo b > b.txt"
files = ["b.txt"]
[[task]]
id = "c"
run = "echo making c; cat a.txt b.txt > c.txt"
files = ["c.txt"]
after = ["a", "b"]
"#,
        started = started.display()
    )
}

#[test]
fn a_session_lands_on_its_remote_and_a_fresh_clone_merges_it() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let here = TestRepo::with_store(schema.url());
    let bare = remote_of(&here);
    let signal = tempfile::tempdir().expect("temp dir");
    let started = signal.path().join("started");
    let (session, slug) = submit(&here, &plan(&started));
    // The base is on the remote before any worker looks for it.
    let base = here.status(&session)["base_commit"]
        .as_str()
        .expect("base")
        .to_string();
    assert_eq!(
        git_dir(
            bare.path(),
            &["rev-parse", &format!("refs/br/bases/{base}")]
        )
        .as_deref(),
        Some(base.as_str())
    );
    let worker_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(ToString::to_string).collect();
        args.extend(["--session", &session, "--heartbeat-interval", "200ms"].map(str::to_string));
        args
    };
    // Machine B, a clone of the remote, takes `a` (first in plan order), which hangs.
    let there = TestRepo::clone_of(bare.path(), schema.url());
    let args = worker_args(&["worker"]);
    let victim = there.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    poll("attempt 1 of a to start on B", LONG, || {
        started.exists().then_some(())
    });
    // Machine D has no checkout: `br worker --repo` keeps a clone of its own.
    let nomad = TestRepo::no_checkout(schema.url());
    let url = bare.path().display().to_string();
    let args = worker_args(&["worker", "--repo", &url]);
    let rescuer = nomad.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // B dies mid-task: D reruns `a` once B's lease has expired, and lands everything.
    kill(Pid::from_raw(victim.pid()), Signal::SIGKILL).expect("kill -9 B's worker");
    let waited = here.br(&["wait", &session, "--timeout", "60s"]);
    assert_eq!(waited.code, 0, "{}\n{}", waited.stdout, waited.stderr);
    let left = rescuer.wait(LONG);
    assert_eq!(left.code, 0, "{}", left.stderr);
    drop(victim);
    let clones = std::fs::read_dir(nomad.home().join(".cache/br/repos"))
        .expect("D's clone is in its cache directory")
        .count();
    assert_eq!(clones, 1);
    let status = here.status(&session);
    assert_eq!(status["status"], "completed", "{status}");
    let tasks = status["tasks"].as_array().expect("tasks");
    assert!(tasks.iter().all(|t| t["landing"] == "landed"), "{status}");
    assert_eq!(tasks[0]["attempts"], 2, "a was handed over: {status}");
    // The work is on the remote: every task branch, and the integration branch with all of it.
    let integration = format!("br/{slug}/integration");
    assert_eq!(
        git_dir(bare.path(), &["show", &format!("{integration}:c.txt")]).as_deref(),
        Some("a\nb")
    );
    for task in ["a", "b", "c"] {
        assert!(
            git_dir(
                bare.path(),
                &["rev-parse", "--verify", &format!("br/{slug}/{task}")]
            )
            .is_some(),
            "br/{slug}/{task} is on the remote"
        );
    }
    // `c` lands last (it waits for both): its landed commit is the tip the store recorded.
    let landed = tasks[2]["landed_commit"].as_str();
    assert_eq!(
        git_dir(bare.path(), &["rev-parse", &integration]).as_deref(),
        landed,
        "the remote's branch is what the store recorded"
    );
    // The submitting machine ran nothing: it has none of the branches yet.
    assert!(
        git_dir(
            &here.path().join(".git"),
            &["rev-parse", "--verify", &integration]
        )
        .is_none(),
        "nothing ran here"
    );
    // Machine C, a fresh clone with only the remote and the store, reads any attempt's log and
    // lands the session on its main.
    let fresh = TestRepo::clone_of(bare.path(), schema.url());
    let log = fresh.br(&["logs", &session, "c"]);
    assert_eq!(
        (log.code, log.stdout.as_str()),
        (0, "making c\n"),
        "{}",
        log.stderr
    );
    let diff = fresh.br(&["diff", &session, "a", "--stat"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    assert!(diff.stdout.contains("a.txt"), "{}", diff.stdout);
    let merged = fresh.br(&["merge", &session, "--into", "main"]);
    assert_eq!(merged.code, 0, "{}\n{}", merged.stdout, merged.stderr);
    assert_eq!(fresh.read("c.txt"), "a\nb\n");
    assert_eq!(fresh.git(&["show", "main:a.txt"]), "a");

    // Cleaned up from machine C, the session takes its refs on the remote with it: every task
    // branch and attempt ref is in the integration branch — which goes once a branch of the
    // remote holds it: C's main, merged here but not yet pushed, does not count.
    let remote_refs = || {
        git_dir(
            bare.path(),
            &[
                "for-each-ref",
                "--format=%(refname)",
                &format!("refs/heads/br/{slug}"),
                &format!("refs/br/attempts/{session}"),
                &format!("refs/br/landed/{session}"),
            ],
        )
        .unwrap_or_default()
    };
    assert!(remote_refs().contains("integration"), "{}", remote_refs());
    let integration_ref = format!("refs/heads/br/{slug}/integration");
    let planned = fresh.br(&["cleanup", &session, "--dry-run", "--json"]);
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    let planned: serde_json::Value = serde_json::from_str(&planned.stdout).expect("JSON");
    let kept = planned["sessions"][0]["refs"]
        .as_array()
        .expect("refs")
        .iter()
        .find(|r| r["ref"] == integration_ref.as_str())
        .cloned()
        .expect("the remote's integration branch");
    assert_eq!(kept["action"], "keep", "{kept}");
    fresh.git(&["push", "--quiet", "origin", "main"]);
    let cleaned = fresh.br(&["cleanup", &session, "--json"]);
    assert_eq!(cleaned.code, 0, "{}\n{}", cleaned.stdout, cleaned.stderr);
    let report: serde_json::Value = serde_json::from_str(&cleaned.stdout).expect("JSON");
    let refs = report["sessions"][0]["refs"].as_array().expect("refs");
    assert!(
        refs.iter().any(|r| r["ref"] == integration_ref.as_str()
            && r["action"] == "delete"
            && r["merged_into"] == "main"
            && r["remote"].is_string()),
        "{refs:?}"
    );
    assert!(
        refs.iter().all(|r| r["action"] == "delete"),
        "nothing holds unmerged work: {refs:?}"
    );
    assert_eq!(remote_refs(), "", "the session's refs left the remote");
    assert_eq!(
        fresh.git(&[
            "for-each-ref",
            "--format=%(refname)",
            "refs/br/remote/heads/br"
        ]),
        "",
        "and their copies here"
    );
    assert_eq!(fresh.git(&["show", "main:a.txt"]), "a", "main is untouched");
}

#[test]
fn a_worker_that_lost_its_lease_moves_no_remote_branch() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let here = TestRepo::with_store(schema.url());
    let bare = remote_of(&here);
    let signal = tempfile::tempdir().expect("temp dir");
    let started = signal.path().join("started");
    let plan = format!(
        r#"name = "stale"
remote = "origin"
heartbeat_timeout = "2s"
[[task]]
id = "a"
run = 'if [ "$BR_ATTEMPT" = 1 ]; then echo stale > a.txt; touch {started}; sleep 30; else echo fresh > a.txt; fi'
files = ["a.txt"]
"#,
        started = started.display()
    );
    let (session, slug) = submit(&here, &plan);
    let worker_args = [
        "worker",
        "--session",
        &session,
        "--heartbeat-interval",
        "200ms",
    ];
    // Machine B starts attempt 1, then freezes (SIGSTOP) past its lease.
    let there = TestRepo::clone_of(bare.path(), schema.url());
    let frozen = there.spawn(&worker_args);
    poll("attempt 1 to start on B", LONG, || {
        started.exists().then_some(())
    });
    kill(Pid::from_raw(frozen.pid()), Signal::SIGSTOP).expect("SIGSTOP");
    // Machine C takes the task over and lands attempt 2.
    let other = TestRepo::clone_of(bare.path(), schema.url());
    let rescuer = other.br(&worker_args);
    assert_eq!(rescuer.code, 0, "{}", rescuer.stderr);
    // B wakes up late: its lease is gone, and so is any right to move a branch.
    kill(Pid::from_raw(frozen.pid()), Signal::SIGCONT).expect("SIGCONT");
    let woke = frozen.wait(LONG);
    assert_eq!(woke.code, 0, "{}", woke.stderr);
    let status = here.status(&session);
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["tasks"][0]["attempts"], 2, "{status}");
    for branch in [format!("br/{slug}/a"), format!("br/{slug}/integration")] {
        assert_eq!(
            git_dir(bare.path(), &["show", &format!("{branch}:a.txt")]).as_deref(),
            Some("fresh"),
            "{branch} holds attempt 2's work only"
        );
    }
    assert!(
        git_dir(
            bare.path(),
            &[
                "rev-parse",
                "--verify",
                &format!("refs/br/attempts/{session}/a/1")
            ]
        )
        .is_none(),
        "the stale attempt published nothing"
    );
}

#[test]
fn a_remote_that_names_nothing_is_refused_before_anything_is_recorded() {
    let here = TestRepo::new();
    here.write(
        "br.toml",
        "name = \"r\"\nremote = \"upstream\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    here.git(&["add", "br.toml"]);
    here.git(&["commit", "--quiet", "-m", "plan"]);
    let refused = here.br(&["submit"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("`remote = \"upstream\"` is neither a remote of this repository"),
        "{}",
        refused.stderr
    );
    assert_eq!(here.br(&["list", "--json"]).stdout.trim(), "[]");
}

#[test]
fn a_worker_without_a_checkout_serves_only_sessions_with_a_remote() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let here = TestRepo::with_store(schema.url());
    let bare = remote_of(&here);
    let (session, _) = submit(
        &here,
        "name = \"local\"\n[[task]]\nid = \"a\"\nrun = \"echo a > a.txt\"\nfiles = [\"a.txt\"]\n",
    );
    let nomad = TestRepo::no_checkout(schema.url());
    let url = bare.path().display().to_string();
    // Asked for it by name: refused, saying why.
    let refused = nomad.br(&["worker", "--repo", &url, "--session", &session]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("has no remote"),
        "{}",
        refused.stderr
    );
    // Serving whatever comes: it leaves the session to workers in a clone.
    let idle = nomad.br(&["worker", "--repo", &url, "--exit-when-idle"]);
    assert_eq!(idle.code, 0, "{}", idle.stderr);
    assert_eq!(here.status(&session)["tasks"][0]["state"], "ready");
}

/// A remote that does not answer when an attempt starts is waited out, as an unreachable store
/// is: the attempt goes back to the queue as interrupted, spending no retry (the task has
/// none), and the task runs once the remote is back. (SQLite: the store is not the point.)
#[test]
fn a_remote_that_does_not_answer_at_an_attempt_s_start_costs_no_retry() {
    let here = TestRepo::new();
    let bare = remote_of(&here);
    let (session, _) = submit(
        &here,
        "name = \"away\"\nremote = \"origin\"\n[[task]]\nid = \"a\"\nrun = \"echo a > a.txt\"\n",
    );
    // The remote goes away after the session was submitted to it, before any attempt.
    let away = bare.path().with_extension("away");
    std::fs::rename(bare.path(), &away).expect("move the remote away");
    let worker = here.spawn(&["worker", "--session", &session]);
    let (id, task) = (
        br_core::SessionId::from_string(&session),
        br_core::TaskId::new("a").expect("task id"),
    );
    poll("an attempt to be given back", LONG, || {
        let attempts = here.store().attempts(&id, &task).ok()?;
        attempts
            .first()
            .filter(|a| a.outcome == Some(br_core::OutcomeKind::Interrupted))
            .map(drop)
    });
    std::fs::rename(&away, bare.path()).expect("bring the remote back");
    let done = worker.wait(LONG);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert!(
        done.stderr
            .contains("cannot fetch from the session's remote")
            && done.stderr.contains("no retry spent"),
        "the worker says why it gave the task back:\n{}",
        done.stderr
    );
    let status = here.status(&session);
    assert_eq!(status["status"], "completed", "{status:#}");
    let attempts = here.store().attempts(&id, &task).expect("attempts");
    assert_eq!(
        attempts.last().and_then(|a| a.outcome),
        Some(br_core::OutcomeKind::Succeeded),
        "{attempts:?}"
    );
    // The work travelled once the remote was back: the task's branch is there.
    let branches = git_dir(
        bare.path(),
        &["for-each-ref", "--format=%(refname)", "refs/heads/br"],
    )
    .expect("the remote's branches");
    assert!(branches.lines().any(|b| b.ends_with("/a")), "{branches}");
}
