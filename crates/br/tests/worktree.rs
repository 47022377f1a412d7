//! Worktree isolation through the real CLI: each task in its own worktree on its own branch, the
//! user's checkout untouched, every kind of change recorded, reruns from a clean tree, scope
//! checks and conflict prediction.

mod common;

use std::time::Duration;

use br_core::EventKind;
use common::{TestRepo, alive, detail, poll};
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
        .expect("task")
}

/// Files a branch changed relative to `base`, with their status letters.
fn changes(repo: &TestRepo, base: &str, branch: &str) -> Vec<String> {
    repo.git(&["diff", "--name-status", "--no-renames", base, branch])
        .lines()
        .map(|l| l.replace('\t', " "))
        .collect()
}

fn untouched(repo: &TestRepo, head_before: &str) {
    assert_eq!(
        repo.git(&["rev-parse", "HEAD"]),
        head_before,
        "the user's HEAD did not move"
    );
    let status = repo.git(&["status", "--porcelain", "--untracked-files=all"]);
    let extra: Vec<&str> = status.lines().filter(|l| !l.ends_with("br.toml")).collect();
    assert!(extra.is_empty(), "the user's checkout is clean: {extra:?}");
}

#[test]
fn four_tasks_in_four_worktrees_make_four_branches_and_leave_the_checkout_alone() {
    let repo = TestRepo::new();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let mut plan = String::from("name = \"four\"\n");
    for id in ["a", "b", "c", "d"] {
        plan.push_str(&format!(
            "[[task]]\nid = \"{id}\"\nrun = \"sleep 0.5; echo {id} > {id}.txt\"\nfiles = [\"{id}.txt\"]\n"
        ));
    }
    repo.write("br.toml", &plan);
    let run = repo.br(&["run", "--workers", "4"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status("four");
    assert_eq!(status["isolation"], "worktree");
    let slug = status["slug"].as_str().expect("slug");
    for id in ["a", "b", "c", "d"] {
        let branch = format!("br/{slug}/{id}");
        assert_eq!(task(&status, id)["branch"], branch.as_str());
        assert_eq!(
            changes(&repo, &head, &branch),
            [format!("A {id}.txt")],
            "branch {branch} has exactly its own file"
        );
        assert_eq!(repo.git(&["show", &format!("{branch}:{id}.txt")]), id);
        let message = repo.git(&["log", "-1", "--format=%s", &branch]);
        assert_eq!(message, format!("br: task {id} of session four, attempt 1"));
    }
    untouched(&repo, &head);
    for id in ["a", "b", "c", "d"] {
        assert!(
            !repo.path().join(format!("{id}.txt")).exists(),
            "nothing leaked into the checkout"
        );
    }
}

#[test]
fn deletes_renames_and_the_task_s_own_commits_are_recorded() {
    let repo = TestRepo::new();
    repo.write("old.txt", "old\n");
    repo.write("gone.txt", "bye\n");
    repo.git(&["add", "--all"]);
    repo.git(&["commit", "--quiet", "-m", "more files"]);
    let head = repo.git(&["rev-parse", "HEAD"]);
    repo.write(
        "br.toml",
        r#"name = "kinds"
[[task]]
id = "shuffle"
run = "git rm -q gone.txt && git mv old.txt new.txt && echo added > added.txt"
files = ["gone.txt", "old.txt", "new.txt", "added.txt"]
[[task]]
id = "committer"
run = 'echo one > one.txt && git add one.txt && git commit -qm "task commit one" && echo two > two.txt && git add two.txt && git commit -qm "task commit two" && echo three > three.txt'
files = ["one.txt", "two.txt", "three.txt"]
"#,
    );
    let run = repo.br(&["run", "--workers", "2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let slug = repo.status("kinds")["slug"]
        .as_str()
        .expect("slug")
        .to_string();
    let shuffle = format!("br/{slug}/shuffle");
    assert_eq!(
        changes(&repo, &head, &shuffle),
        ["A added.txt", "D gone.txt", "A new.txt", "D old.txt"]
    );
    let committer = format!("br/{slug}/committer");
    let log = repo.git(&["log", "--format=%s", &format!("{head}..{committer}")]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "br: task committer of session kinds, attempt 1",
            "task commit two",
            "task commit one"
        ],
        "the task's own commits are kept, br's commit on top"
    );
    assert_eq!(
        changes(&repo, &head, &committer),
        ["A one.txt", "A three.txt", "A two.txt"]
    );
    untouched(&repo, &head);
}

#[test]
fn a_rerun_after_kill_9_starts_from_a_clean_tree_and_the_partial_work_is_kept_aside() {
    let repo = TestRepo::new();
    let head = repo.git(&["rev-parse", "HEAD"]);
    repo.write(
        "br.toml",
        r#"name = "rerun"
heartbeat_timeout = "2s"
[[task]]
id = "t"
run = 'if [ "$BR_ATTEMPT" = 1 ]; then echo partial > partial.txt; echo $$ > "$BR_REPO_ROOT/.git/t.pid"; exec sleep 60; fi; ls > listing.txt; echo final > final.txt'
files = ["partial.txt", "final.txt", "listing.txt"]
"#,
    );
    let run = repo.spawn(&["run", "--workers", "2", "--heartbeat-interval", "200ms"]);
    let pid_file = repo.path().join(".git/t.pid");
    let task_pid: i32 = poll("attempt 1", LONG, || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let victim = poll("the busy worker", LONG, || {
        repo.workers().into_iter().find(|w| w["status"] == "busy")
    });
    let victim_pid = i32::try_from(victim["pid"].as_i64().expect("pid")).expect("pid");
    kill(Pid::from_raw(victim_pid), Signal::SIGKILL).expect("kill -9");
    poll("the task process to die", LONG, || {
        (!alive(task_pid)).then_some(())
    });
    let out = run.wait(LONG);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let status = repo.status("rerun");
    assert_eq!(task(&status, "t")["attempts"], 2);
    let branch = format!("br/{}/t", status["slug"].as_str().expect("slug"));
    assert_eq!(
        changes(&repo, &head, &branch),
        ["A final.txt", "A listing.txt"],
        "attempt 1's partial file is not on the branch"
    );
    let listing = repo.git(&["show", &format!("{branch}:listing.txt")]);
    assert!(
        !listing.contains("partial.txt"),
        "attempt 2 started from a clean tree: {listing}"
    );
    untouched(&repo, &head);
}

#[test]
fn a_failed_attempt_keeps_its_changes_at_its_attempt_ref() {
    let repo = TestRepo::new();
    let head = repo.git(&["rev-parse", "HEAD"]);
    repo.write(
        "br.toml",
        "name = \"keep\"\n[[task]]\nid = \"broken\"\nrun = \"echo work > work.txt; exit 1\"\nfiles = [\"work.txt\"]\n",
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 1);
    let status = repo.status("keep");
    let id = status["id"].as_str().expect("id");
    let attempt_ref = format!("refs/br/attempts/{id}/broken/1");
    assert_eq!(
        repo.git(&["show", &format!("{attempt_ref}:work.txt")]),
        "work"
    );
    let branches = repo.git(&["for-each-ref", "--format=%(refname)", "refs/heads/br"]);
    assert!(
        branches.is_empty(),
        "a failure does not make a task branch: {branches}"
    );
    untouched(&repo, &head);
}

#[test]
fn changes_outside_the_declared_files_are_reported_and_fail_in_strict_mode() {
    for (scope, code, state) in [("report", 0, "succeeded"), ("strict", 1, "failed")] {
        let repo = TestRepo::new();
        repo.write("b.txt", "b\n");
        repo.git(&["add", "b.txt"]);
        repo.git(&["commit", "--quiet", "-m", "b"]);
        repo.write(
            "br.toml",
            &format!(
                "name = \"scope\"\nscope = \"{scope}\"\n[[task]]\nid = \"stray\"\n\
                 run = \"mkdir -p a && echo x > a/x.txt && echo changed >> b.txt\"\nfiles = [\"a/**\"]\n"
            ),
        );
        let run = repo.br(&["run"]);
        assert_eq!(run.code, code, "{scope}: {}\n{}", run.stdout, run.stderr);
        let status = repo.status("scope");
        let t = task(&status, "stray");
        assert_eq!(t["state"], state, "{scope}");
        assert_eq!(
            t["scope_violations"],
            serde_json::json!(["b.txt"]),
            "{scope}"
        );
        let events = repo.events();
        let v = events
            .iter()
            .find(|e| e.kind == EventKind::ScopeViolation)
            .expect("scope_violation");
        assert_eq!(detail(v)["files"], serde_json::json!(["b.txt"]));
        let shown = repo.br(&["status"]).stdout;
        if scope == "report" {
            assert!(shown.contains("outside its files: b.txt"), "{shown}");
        } else {
            assert!(shown.contains("scope_violation"), "{shown}");
            let id = status["id"].as_str().expect("id");
            let kept = repo.git(&["show", &format!("refs/br/attempts/{id}/stray/1:b.txt")]);
            assert!(
                kept.contains("changed"),
                "the strict failure's work is kept aside"
            );
        }
    }
}

#[test]
fn two_tasks_editing_the_same_lines_are_reported_as_a_conflict_when_the_second_finishes() {
    let repo = TestRepo::new();
    repo.write("config.txt", "value = 1\n");
    repo.git(&["add", "config.txt"]);
    repo.git(&["commit", "--quiet", "-m", "config"]);
    repo.write(
        "br.toml",
        // Started from the base and landed by hand, the two results are branches that do not
        // merge: what the prediction is for. (Landing as they go, the second would start
        // from the first's work and not conflict at all.)
        r#"name = "clash"
start = "base"
land = "manual"
[[task]]
id = "left"
run = "echo 'value = 2' > config.txt"
files = ["config.txt"]
[[task]]
id = "right"
run = "echo 'value = 3' > config.txt"
files = ["config.txt"]
[[task]]
id = "elsewhere"
run = "echo other > other.txt"
files = ["other.txt"]
"#,
    );
    let run = repo.br(&["run", "--workers", "3"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let conflicts: Vec<_> = repo
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::MergeConflict)
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    let shown = detail(c);
    let mut pair: Vec<&str> = shown["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t.as_str().expect("id"))
        .collect();
    pair.sort();
    assert_eq!(pair, ["left", "right"]);
    assert_eq!(shown["files"], serde_json::json!(["config.txt"]));
    let status = repo.status("clash");
    for id in ["left", "right"] {
        assert_eq!(
            task(&status, id)["conflicts"][0]["files"],
            serde_json::json!(["config.txt"])
        );
    }
    assert_eq!(
        task(&status, "elsewhere")["conflicts"],
        serde_json::json!([])
    );
    assert!(
        run.stdout.contains("merge_conflict"),
        "shown as it happens: {}",
        run.stdout
    );
}

#[test]
fn a_session_name_that_is_no_ref_component_is_slugged() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"my build: v1..2/x\"\n[[task]]\nid = \"t\"\nrun = \"echo t > t.txt\"\nfiles = [\"t.txt\"]\n",
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status("my build: v1..2/x");
    let branch = task(&status, "t")["branch"]
        .as_str()
        .expect("branch")
        .to_string();
    assert!(branch.starts_with("br/my-build-v1.2-x-"), "{branch}");
    repo.git(&["check-ref-format", &format!("refs/heads/{branch}")]);
    assert_eq!(repo.git(&["show", &format!("{branch}:t.txt")]), "t");
}

#[test]
fn uncommitted_changes_do_not_reach_the_tasks_and_br_says_so() {
    let repo = TestRepo::new();
    repo.write("README.md", "edited but not committed\n");
    repo.write(
        "br.toml",
        "name = \"dirty\"\n[[task]]\nid = \"look\"\nrun = \"cp README.md seen.txt\"\nfiles = [\"seen.txt\"]\n",
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("uncommitted changes; tasks start from HEAD"),
        "{}",
        run.stderr
    );
    let branch = task(&repo.status("dirty"), "look")["branch"]
        .as_str()
        .expect("branch")
        .to_string();
    assert_eq!(
        repo.git(&["show", &format!("{branch}:seen.txt")]),
        "test repository"
    );
    assert_eq!(
        repo.read("README.md"),
        "edited but not committed\n",
        "the checkout keeps its edit"
    );
}

#[test]
fn keep_hands_a_tasks_ignored_build_output_to_the_next_attempt_in_its_slot() {
    let repo = TestRepo::new();
    repo.write(".gitignore", "target/\n*.log\n");
    repo.git(&["add", ".gitignore"]);
    repo.git(&["commit", "--quiet", "-m", "ignore build output"]);
    // One worker, so both tasks run in the same slot, one after the other. The first leaves a
    // cache in the ignored `target/` and an ignored log; the second needs the cache and must
    // not see the log.
    let plan = |name: &str, keep: &str| {
        format!(
            "name = \"{name}\"\n{keep}\n\
             [[task]]\nid = \"build\"\n\
             run = \"mkdir -p target && echo cached > target/cache.txt && echo noise > build.log \
             && echo built > built.txt\"\nfiles = [\"built.txt\"]\n\
             [[task]]\nid = \"reuse\"\nafter = [\"build\"]\n\
             run = \"test -f target/cache.txt && test ! -e build.log && echo reused > reused.txt\"\n\
             files = [\"reused.txt\"]\n"
        )
    };
    repo.write("br.toml", &plan("kept", "keep = [\"target/\"]"));
    let run = repo.br(&["run", "--workers", "1"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status("kept");
    assert_eq!(task(&status, "reuse")["state"], "succeeded");
    let slug = status["slug"].as_str().expect("slug");
    assert_eq!(
        repo.git(&["show", &format!("br/{slug}/integration:reused.txt")]),
        "reused"
    );

    // Without `keep`, the slot is cleaned of it like of anything else.
    repo.write("br.toml", &plan("not-kept", ""));
    let run = repo.br(&["run", "--workers", "1"]);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status("not-kept");
    assert_eq!(task(&status, "build")["state"], "succeeded");
    assert_eq!(task(&status, "reuse")["state"], "failed");
}
