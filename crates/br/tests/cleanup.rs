//! `br cleanup` never destroys work: after a killed `br run` it reclaims the orphaned worktree
//! slots (keeping what their attempts left), deletes a finished session's refs only when every
//! commit they hold is merged, leaves the user's own branches and worktrees alone, and with
//! `--dry-run` changes nothing at all.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{TestRepo, alive, poll, processes_mentioning};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn commit_file(repo: &TestRepo, name: &str, content: &str) {
    repo.write(name, content);
    repo.git(&["add", name]);
    repo.git(&["commit", "--quiet", "-m", name]);
}

/// Every ref and its commit.
fn refs(repo: &TestRepo) -> BTreeMap<String, String> {
    repo.git(&["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect()
}

/// Registered worktrees with their branches (not their HEADs, which move with commits).
fn worktrees(repo: &TestRepo) -> String {
    repo.git(&["worktree", "list", "--porcelain"])
        .lines()
        .filter(|l| !l.starts_with("HEAD "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cleanup_json(repo: &TestRepo, args: &[&str]) -> Value {
    let mut all = vec!["cleanup", "--days", "0", "--json"];
    all.extend(args);
    let run = repo.br(&all);
    assert_eq!(run.code, 0, "br {all:?}\n{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).expect("cleanup JSON")
}

/// `(ref, action)` for one session in a cleanup report.
fn fates(report: &Value, name: &str) -> BTreeMap<String, (String, Value)> {
    report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("session {name} in {report:#}"))["refs"]
        .as_array()
        .expect("refs")
        .iter()
        .map(|r| {
            (
                r["ref"].as_str().expect("ref").to_string(),
                (
                    r["action"].as_str().expect("action").to_string(),
                    r["unmerged_commits"].clone(),
                ),
            )
        })
        .collect()
}

fn session_id(repo: &TestRepo, name: &str) -> String {
    repo.status(name)["id"].as_str().expect("id").to_string()
}

fn slug(repo: &TestRepo, name: &str) -> String {
    repo.status(name)["slug"]
        .as_str()
        .expect("slug")
        .to_string()
}

/// A finished session whose merge landed `a` and `left` and not `right` (a conflict).
fn finished_session_with_an_unmerged_branch(repo: &TestRepo) {
    commit_file(
        repo,
        "done.toml",
        r#"name = "done"
land = "manual"
on_conflict = "fail"
[[task]]
id = "a"
run = "echo a > a.txt"
files = ["a.txt"]
[[task]]
id = "left"
run = "echo left > shared.txt"
files = ["shared.txt"]
[[task]]
id = "right"
run = "echo right > shared.txt"
files = ["shared.txt"]
"#,
    );
    let run = repo.br(&["run", "done.toml", "--workers", "3"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let merge = repo.br(&["merge", "done"]);
    assert_eq!(merge.code, 1, "right conflicts: {}", merge.stdout);
}

/// Commits `killed.toml` (two worktree tasks that write a file and sleep), runs it, and kills
/// `br run` and both its workers with kill -9 while the tasks run; waits until every process of
/// theirs is gone. Returns the commit the run started from.
fn kill_a_run_with_its_workers_mid_task(repo: &TestRepo) -> String {
    let markers = tempfile::tempdir().expect("temp dir");
    let marker = |id: &str| markers.path().join(id);
    let task = |id: &str| {
        format!(
            "[[task]]\nid = \"{id}\"\nrun = 'echo partial > {id}.txt; touch {}; exec sleep 60'\nfiles = [\"{id}.txt\"]\n",
            marker(id).display()
        )
    };
    commit_file(
        repo,
        "killed.toml",
        &format!(
            "name = \"killed\"\nheartbeat_timeout = \"1s\"\n{}{}",
            task("k1"),
            task("k2")
        ),
    );
    let head = repo.git(&["rev-parse", "HEAD"]);
    let run = repo.spawn(&[
        "run",
        "killed.toml",
        "--workers",
        "2",
        "--heartbeat-interval",
        "200ms",
        "--no-dashboard",
    ]);
    poll("both tasks to start", LONG, || {
        (marker("k1").exists() && marker("k2").exists()).then_some(())
    });
    let busy: Vec<i32> = poll("two busy workers", LONG, || {
        let pids: Vec<i32> = repo
            .workers()
            .into_iter()
            .filter(|w| w["status"] == "busy")
            .map(|w| i32::try_from(w["pid"].as_i64().expect("pid")).expect("pid"))
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    // Stopped first, so it cannot replace the workers it is about to lose.
    run.signal(Signal::SIGSTOP);
    for pid in &busy {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).expect("kill -9 a worker");
    }
    run.signal(Signal::SIGKILL);
    let _ = run.wait(LONG);
    for pid in &busy {
        poll("the worker to die", LONG, || (!alive(*pid)).then_some(()));
    }
    let needle = markers.path().to_string_lossy().into_owned();
    poll("the tasks' processes to die", LONG, || {
        processes_mentioning(&needle).is_empty().then_some(())
    });
    head
}

#[test]
fn cleanup_after_a_killed_run_leaves_no_stray_worktree_and_deletes_no_unmerged_work() {
    let repo = TestRepo::new();
    commit_file(&repo, "shared.txt", "base\n");
    // The user's own branch and worktree, which br must never touch.
    repo.git(&["branch", "mine"]);
    let outside = tempfile::tempdir().expect("temp dir");
    let extra = outside.path().join("extra");
    repo.git(&[
        "worktree",
        "add",
        "--quiet",
        "-b",
        "wt",
        extra.to_str().expect("utf-8"),
    ]);
    std::fs::write(extra.join("notes.txt"), "uncommitted notes\n").expect("write");
    let user_worktrees = worktrees(&repo);
    let head = repo.git(&["rev-parse", "HEAD"]);

    finished_session_with_an_unmerged_branch(&repo);

    let head_before_run = kill_a_run_with_its_workers_mid_task(&repo);
    let killed_id = session_id(&repo, "killed");
    let done_slug = slug(&repo, "done");
    let orphaned = worktrees(&repo);
    assert!(orphaned.contains("/br/worktrees/slot-"), "{orphaned}");

    // A dry run shows the plan and changes nothing.
    let refs_before = refs(&repo);
    let dry = cleanup_json(&repo, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    let saved: Vec<&str> = dry["worktrees"]["saved"]
        .as_array()
        .expect("saved")
        .iter()
        .map(|s| s["ref"].as_str().expect("ref"))
        .collect();
    for id in ["k1", "k2"] {
        let reference = format!("refs/br/attempts/{killed_id}/{id}/1");
        assert!(
            saved.contains(&reference.as_str()),
            "{reference} in {dry:#}"
        );
    }
    assert!(
        dry["worktrees"]["removed"]
            .as_array()
            .is_some_and(|r| r.len() >= 2),
        "{dry:#}"
    );
    let done = fates(&dry, "done");
    let branch = |id: &str| format!("refs/heads/br/{done_slug}/{id}");
    assert_eq!(done[&branch("a")].0, "delete");
    assert_eq!(done[&branch("left")].0, "delete");
    assert_eq!(done[&branch("right")], ("keep".to_string(), 1.into()));
    assert_eq!(done[&branch("integration")].0, "keep");
    assert_eq!(
        dry["sessions"].as_array().map(Vec::len),
        Some(1),
        "the killed session has not ended"
    );
    let text = repo.br(&["cleanup", "--days", "0", "--dry-run"]);
    assert!(
        text.stdout.contains(&format!(
            "kept: br/{done_slug}/right holds 1 unmerged commit"
        )),
        "{}",
        text.stdout
    );
    // It says how much disk the free slots take: what cleaning up gives back.
    assert!(
        dry["worktrees"]["removed_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{dry:#}"
    );
    assert!(
        text.stdout.contains("worktree slots: ") && text.stdout.contains(" to reclaim"),
        "{}",
        text.stdout
    );
    assert_eq!(refs(&repo), refs_before, "a dry run writes no ref");
    assert_eq!(worktrees(&repo), orphaned, "a dry run removes no worktree");
    assert_eq!(repo.status("done")["status"], "completed");

    // End the killed session, then clean up for real.
    let cancel = repo.br(&["cancel", "killed"]);
    assert_eq!(cancel.code, 0, "{}\n{}", cancel.stdout, cancel.stderr);
    let report = cleanup_json(&repo, &[]);
    assert_eq!(
        report["sessions"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );
    let killed = fates(&report, "killed");
    for id in ["k1", "k2"] {
        let reference = format!("refs/br/attempts/{killed_id}/{id}/1");
        assert_eq!(
            killed[&reference],
            ("keep".to_string(), 1.into()),
            "{report:#}"
        );
        assert_eq!(
            repo.git(&["show", &format!("{reference}:{id}.txt")]),
            "partial",
            "what the killed attempt wrote is kept"
        );
    }
    let refs_after = refs(&repo);
    let integration = format!("refs/heads/br/{done_slug}/integration");
    for (reference, commit) in &refs_before {
        if refs_after.contains_key(reference) {
            assert_eq!(&refs_after[reference], commit, "{reference} did not move");
            continue;
        }
        // Whatever was deleted is merged: its commits are on the kept integration branch.
        repo.git(&["merge-base", "--is-ancestor", commit, &integration]);
    }
    assert!(refs_after.contains_key(&format!("refs/heads/br/{done_slug}/right")));
    assert!(!refs_after.contains_key(&format!("refs/heads/br/{done_slug}/a")));
    assert_eq!(refs_after["refs/heads/mine"], head);
    assert_eq!(refs_after["refs/heads/wt"], head);
    assert_eq!(refs_after["refs/heads/main"], head_before_run);
    assert_eq!(
        worktrees(&repo),
        user_worktrees,
        "no stray worktree is left"
    );
    assert_eq!(
        std::fs::read_to_string(extra.join("notes.txt")).expect("notes"),
        "uncommitted notes\n",
        "the user's worktree is untouched"
    );
    assert!(!Path::new(&repo.path().join(".git/br/logs").join(&killed_id)).exists());
    assert!(repo.br(&["list"]).stdout.contains("no sessions"));
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

#[test]
fn an_integration_branch_merged_into_main_is_deleted_with_its_task_branches() {
    let repo = TestRepo::new();
    commit_file(
        &repo,
        "br.toml",
        r#"name = "shipped"
[[task]]
id = "a"
run = "echo a > a.txt"
files = ["a.txt"]
[[task]]
id = "b"
run = "echo b > b.txt"
files = ["b.txt"]
"#,
    );
    let run = repo.br(&["run", "--workers", "2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let merge = repo.br(&["merge", "shipped", "--into", "main"]);
    assert_eq!(merge.code, 0, "{}\n{}", merge.stdout, merge.stderr);
    let main = repo.git(&["rev-parse", "main"]);
    let slug = slug(&repo, "shipped");
    let text = repo.br(&["cleanup", "--days", "0"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .contains(&format!("deleted br/{slug}/integration (merged into main)")),
        "{}",
        text.stdout
    );
    assert!(
        repo.git(&["for-each-ref", "refs/heads/br", "refs/br"])
            .is_empty(),
        "every br ref of the session is gone"
    );
    assert_eq!(repo.git(&["rev-parse", "main"]), main, "main is untouched");
    assert_eq!(repo.read("a.txt"), "a\n");
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

#[test]
fn cleanup_during_a_run_leaves_the_busy_slot_alone() {
    let repo = TestRepo::new();
    let markers = tempfile::tempdir().expect("temp dir");
    let started = markers.path().join("started");
    let go = markers.path().join("go");
    commit_file(
        &repo,
        "br.toml",
        &format!(
            "name = \"busy\"\n[[task]]\nid = \"t\"\nrun = 'touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo done > t.txt'\nfiles = [\"t.txt\"]\n",
            started.display(),
            go.display()
        ),
    );
    let run = repo.spawn(&["run", "--workers", "1", "--no-dashboard"]);
    poll("the task to start", LONG, || started.exists().then_some(()));
    let before = worktrees(&repo);
    let report = cleanup_json(&repo, &[]);
    let in_use = report["worktrees"]["in_use"].as_array().expect("in_use");
    assert_eq!(in_use.len(), 1, "{report:#}");
    assert!(
        report["worktrees"]["removed"]
            .as_array()
            .expect("removed")
            .is_empty()
    );
    assert_eq!(
        worktrees(&repo),
        before,
        "the busy slot is still registered"
    );
    std::fs::write(&go, "").expect("go");
    let out = run.wait(LONG);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let slug = slug(&repo, "busy");
    assert_eq!(repo.git(&["show", &format!("br/{slug}/t:t.txt")]), "done");
}

#[test]
fn br_run_starts_by_keeping_what_a_killed_run_left_in_its_worktrees() {
    let repo = TestRepo::new();
    kill_a_run_with_its_workers_mid_task(&repo);
    let killed_id = session_id(&repo, "killed");
    assert!(
        repo.git(&["for-each-ref", "refs/br/attempts"]).is_empty(),
        "nothing saved yet"
    );
    // A shared session's workers never touch a worktree slot: only br run's own start can
    // have saved the leftovers.
    commit_file(
        &repo,
        "other.toml",
        "name = \"other\"\nisolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"true\"\n",
    );
    let run = repo.br(&["run", "other.toml"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for id in ["k1", "k2"] {
        assert_eq!(
            repo.git(&[
                "show",
                &format!("refs/br/attempts/{killed_id}/{id}/1:{id}.txt")
            ]),
            "partial"
        );
    }
}

/// `br cleanup SESSION` removes that one finished session, whatever its age, and nothing of
/// another; a session that has not ended is refused with a reason, and nothing is removed.
#[test]
fn cleanup_of_one_session_removes_it_alone_and_refuses_one_that_has_not_ended() {
    let repo = TestRepo::new();
    for name in ["first", "second"] {
        commit_file(
            &repo,
            "br.toml",
            &format!(
                "name = \"{name}\"\nisolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"true\"\n"
            ),
        );
        let run = repo.br(&["run", "--workers", "1"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }
    commit_file(
        &repo,
        "br.toml",
        "name = \"waiting\"\nisolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"true\"\n",
    );
    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);

    let refused = repo.br(&["cleanup", "waiting"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("is created") && refused.stderr.contains("br cancel"),
        "{}",
        refused.stderr
    );
    let one = repo.br(&["cleanup", "first"]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert!(
        one.stdout.contains("deleted session first"),
        "{}",
        one.stdout
    );
    assert!(
        one.stdout.contains("deleted 1 finished session;"),
        "{}",
        one.stdout
    );
    let left: Vec<String> = serde_json::from_str::<Value>(&repo.br(&["list", "--json"]).stdout)
        .expect("list JSON")
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&"second".to_string()) && left.contains(&"waiting".to_string()));
}
