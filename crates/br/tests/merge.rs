//! The merge queue through the real CLI: task branches land on the integration branch in
//! dependency order without touching the user's checkout, conflicts and failed verifications are
//! reported (and with `on_conflict = "requeue"` redone on the new tip), `--check` writes nothing,
//! `--into` fast-forwards only when it can, and names from user input stay safe in refs.

mod common;

use br_core::EventKind;
use br_core::{SessionId, TaskId};
use common::{Run, TestRepo, detail};
use serde_json::Value;

/// Writes the plan and commits it, so the user's checkout starts clean. These tests are about
/// `br merge`: the plan lands by hand (`land = "manual"`), and a refused task is left as it is
/// unless the plan says `on_conflict = "requeue"`.
fn commit_plan(repo: &TestRepo, plan: &str) -> String {
    let mut settings = String::from("land = \"manual\"\n");
    if !plan.contains("on_conflict") {
        settings.push_str("on_conflict = \"fail\"\n");
    }
    repo.write("br.toml", &format!("{settings}{plan}"));
    repo.git(&["add", "--all"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
    repo.git(&["rev-parse", "HEAD"])
}

fn run_ok(repo: &TestRepo, args: &[&str]) -> Run {
    let run = repo.br(args);
    assert_eq!(run.code, 0, "br {args:?}\n{}\n{}", run.stdout, run.stderr);
    run
}

/// `br merge … --json`: the exit code and the report.
fn merge(repo: &TestRepo, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["merge"];
    all.extend(args);
    all.push("--json");
    let run = repo.br(&all);
    let report = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "br {all:?} did not print JSON ({e}):\n{}\n{}",
            run.stdout, run.stderr
        )
    });
    (run.code, report)
}

/// `(id, result)` of every task, in the report's (landing) order.
fn results(report: &Value) -> Vec<(String, String)> {
    report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["id"].as_str().expect("id").to_string(),
                t["result"].as_str().expect("result").to_string(),
            )
        })
        .collect()
}

fn entry<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == id)
        .expect("task in report")
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn slug(repo: &TestRepo, session: &str) -> String {
    repo.status(session)["slug"]
        .as_str()
        .expect("slug")
        .to_string()
}

/// Every ref with its commit: what "nothing was written" is checked against.
fn all_refs(repo: &TestRepo) -> String {
    repo.git(&["for-each-ref", "--format=%(refname) %(objectname)"])
}

fn exists(repo: &TestRepo, reference: &str) -> bool {
    !repo
        .git(&["for-each-ref", "--format=%(refname)", reference])
        .is_empty()
}

/// The user's checkout: still at `head`, on main, with no change of any kind.
fn untouched(repo: &TestRepo, head: &str) {
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head, "HEAD did not move");
    assert_eq!(repo.git(&["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert_eq!(
        repo.git(&[
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--ignored"
        ]),
        "",
        "the checkout is clean"
    );
}

fn two_way_clash(name: &str, extra: &str) -> String {
    format!(
        r#"name = "{name}"
{extra}
[[task]]
id = "left"
run = "echo left > shared.txt"
files = ["shared.txt"]
[[task]]
id = "right"
run = 'echo "right $BR_ATTEMPT" > shared.txt'
files = ["shared.txt"]
"#
    )
}

fn repo_with_shared_file() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("shared.txt", "base\n");
    repo
}

#[test]
fn three_clean_branches_land_in_dependency_order_and_merging_again_lands_nothing() {
    let repo = TestRepo::new();
    // Plan order is the reverse of the dependency order.
    let head = commit_plan(
        &repo,
        r#"name = "three"
[[task]]
id = "c"
run = "echo c > c.txt"
files = ["c.txt"]
after = ["b"]
[[task]]
id = "b"
run = "echo b > b.txt"
files = ["b.txt"]
after = ["a"]
[[task]]
id = "a"
run = "echo a > a.txt"
files = ["a.txt"]
"#,
    );
    run_ok(&repo, &["run", "--workers", "3"]);
    let slug = slug(&repo, "three");
    let (code, report) = merge(&repo, &["three"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        results(&report),
        pairs(&[("a", "landed"), ("b", "landed"), ("c", "landed")])
    );
    let integration = format!("br/{slug}/integration");
    assert_eq!(
        report["integration"]["ref"],
        format!("refs/heads/{integration}")
    );
    let tip = repo.git(&["rev-parse", &integration]);
    assert_eq!(report["integration"]["commit"], tip.as_str());

    // One merge commit per task, in dependency order, each merging exactly its task's branch.
    let subjects = repo.git(&[
        "log",
        "--first-parent",
        "--format=%s",
        &format!("{head}..{integration}"),
    ]);
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        [
            "br: merge task c of session three",
            "br: merge task b of session three",
            "br: merge task a of session three",
        ]
    );
    for (i, id) in ["c", "b", "a"].iter().enumerate() {
        let merged = repo.git(&["rev-parse", &format!("{integration}~{i}^2")]);
        assert_eq!(merged, repo.git(&["rev-parse", &format!("br/{slug}/{id}")]));
        assert_eq!(
            entry(&report, id)["merge_commit"],
            repo.git(&["rev-parse", &format!("{integration}~{i}")])
                .as_str()
        );
    }
    assert_eq!(
        repo.git(&["rev-parse", &format!("{integration}~3")]),
        head,
        "it starts at the base"
    );
    let files = repo.git(&["ls-tree", "--name-only", &integration]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "a.txt", "b.txt", "br.toml", "c.txt"]
    );
    for id in ["a", "b", "c"] {
        assert_eq!(repo.git(&["show", &format!("{integration}:{id}.txt")]), id);
        assert!(!repo.path().join(format!("{id}.txt")).exists());
    }
    untouched(&repo, &head);

    let (code, again) = merge(&repo, &["three"]);
    assert_eq!(code, 0, "{again:#}");
    assert_eq!(
        results(&again),
        pairs(&[
            ("a", "already_landed"),
            ("b", "already_landed"),
            ("c", "already_landed")
        ])
    );
    assert_eq!(
        repo.git(&["rev-parse", &integration]),
        tip,
        "nothing new landed"
    );
    untouched(&repo, &head);
}

/// A task that changed nothing has nothing of its own to land: the queue says so, and does not
/// call it landed.
#[test]
fn a_task_that_changed_nothing_is_told_apart_from_one_that_landed() {
    let repo = TestRepo::new();
    commit_plan(
        &repo,
        r#"name = "idle"
[[task]]
id = "noop"
run = "true"
[[task]]
id = "writes"
run = "echo w > w.txt"
"#,
    );
    run_ok(&repo, &["run", "--workers", "2"]);
    let (code, report) = merge(&repo, &["idle"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(entry(&report, "noop")["result"], "unchanged", "{report:#}");
    assert_eq!(entry(&report, "writes")["result"], "landed", "{report:#}");
    // Again: the one that wrote has landed by now; the other still changed nothing.
    let again = run_ok(&repo, &["merge", "idle"]).stdout;
    let line = |task: &str| {
        again
            .lines()
            .find(|l| l.split_whitespace().last() == Some(task))
            .unwrap_or_else(|| panic!("no line for {task}:\n{again}"))
            .to_string()
    };
    assert!(line("noop").contains("changed nothing"), "{again}");
    assert!(line("writes").contains("already landed"), "{again}");
}

#[test]
fn a_conflict_is_reported_by_file_and_check_predicts_it_without_writing_anything() {
    let repo = repo_with_shared_file();
    let head = commit_plan(&repo, &two_way_clash("clash", ""));
    run_ok(&repo, &["run", "--workers", "2"]);
    let slug = slug(&repo, "clash");

    // The worker that finished second already saw the conflict coming.
    let predicted = repo
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::MergeConflict)
        .expect("a merge_conflict event from the worker");
    let mut pair: Vec<String> = detail(&predicted)["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t.as_str().expect("id").to_string())
        .collect();
    pair.sort();
    assert_eq!(pair, ["left", "right"]);
    assert_eq!(
        detail(&predicted)["files"],
        serde_json::json!(["shared.txt"])
    );

    let refs_before = all_refs(&repo);
    let worktrees_before = repo.git(&["worktree", "list", "--porcelain"]);
    let events_before = repo.events().len();
    let (code, check) = merge(&repo, &["clash", "--check"]);
    assert_eq!(code, 1, "{check:#}");
    assert_eq!(check["check"], true);
    assert_eq!(
        results(&check),
        pairs(&[("left", "would_land"), ("right", "conflict")])
    );
    assert_eq!(
        entry(&check, "right")["files"],
        serde_json::json!(["shared.txt"])
    );
    assert_eq!(
        check["integration"]["commit"],
        Value::Null,
        "not created by a check"
    );
    assert_eq!(all_refs(&repo), refs_before, "--check writes no ref");
    assert_eq!(
        repo.git(&["worktree", "list", "--porcelain"]),
        worktrees_before
    );
    assert_eq!(
        repo.events().len(),
        events_before,
        "--check records no event"
    );

    let (code, report) = merge(&repo, &["clash"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        results(&report),
        pairs(&[("left", "landed"), ("right", "conflict")])
    );
    assert_eq!(
        entry(&report, "right")["files"],
        serde_json::json!(["shared.txt"])
    );
    assert_eq!(entry(&report, "right")["requeued"], false);
    let integration = format!("br/{slug}/integration");
    assert_eq!(
        repo.git(&["show", &format!("{integration}:shared.txt")]),
        "left"
    );
    let at_merge: Vec<_> = repo
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::MergeConflict && detail(e)["stage"] == "merge")
        .collect();
    assert_eq!(at_merge.len(), 1, "{at_merge:?}");
    assert_eq!(
        at_merge[0].task_id.as_ref().map(TaskId::as_str),
        Some("right")
    );
    assert_eq!(
        detail(&at_merge[0])["tasks"],
        serde_json::json!(["right", "integration"])
    );
    assert_eq!(detail(&at_merge[0])["with"], "integration");
    assert_eq!(
        detail(&at_merge[0])["files"],
        serde_json::json!(["shared.txt"])
    );
    // on_conflict = "report" (the default): the task is left as it is.
    let status = repo.status("clash");
    let right = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == "right")
        .expect("right");
    assert_eq!(
        (right["state"].as_str(), right["attempts"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    untouched(&repo, &head);

    let text = repo.br(&["merge", "clash"]);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout.contains("conflict") && text.stdout.contains("right  in shared.txt"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_failing_verify_command_lands_nothing() {
    let repo = TestRepo::new();
    let head = commit_plan(
        &repo,
        r#"name = "strict"
verify = "echo checking; false"
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
    run_ok(&repo, &["run", "--workers", "2"]);
    let slug = slug(&repo, "strict");
    let (code, report) = merge(&repo, &["strict"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        results(&report),
        pairs(&[("a", "verify_failed"), ("b", "verify_failed")])
    );
    for id in ["a", "b"] {
        let log = entry(&report, id)["log_path"].as_str().expect("a log path");
        assert!(log.contains("/merge/"), "{log}");
        assert_eq!(std::fs::read_to_string(log).expect("the log"), "checking\n");
    }
    assert_eq!(
        repo.git(&["rev-parse", &format!("br/{slug}/integration")]),
        head,
        "the integration branch stays at the base"
    );
    untouched(&repo, &head);
}

#[test]
fn the_verify_command_runs_on_each_candidate_s_content() {
    let repo = TestRepo::new();
    let head = commit_plan(
        &repo,
        r#"name = "needs-a"
verify = "ls; test -f a.txt"
[[task]]
id = "first"
run = "echo first > first.txt"
files = ["first.txt"]
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
    run_ok(&repo, &["run", "--workers", "3"]);
    let slug = slug(&repo, "needs-a");
    let (code, report) = merge(&repo, &["needs-a"]);
    assert_eq!(code, 1, "{report:#}");
    // `first` is tried before a.txt exists anywhere; `b` is tried on top of the landed `a`.
    assert_eq!(
        results(&report),
        pairs(&[("first", "verify_failed"), ("a", "landed"), ("b", "landed")])
    );
    let log = entry(&report, "first")["log_path"].as_str().expect("log");
    let listing = std::fs::read_to_string(log).expect("log");
    let passed = entry(&report, "b")["log_path"]
        .as_str()
        .expect("log of a pass");
    let passed = std::fs::read_to_string(passed).expect("log");
    assert!(
        passed.contains("a.txt") && passed.contains("b.txt"),
        "{passed}"
    );
    assert!(
        listing.contains("first.txt") && !listing.contains("a.txt"),
        "{listing}"
    );
    let integration = format!("br/{slug}/integration");
    let files = repo.git(&["ls-tree", "--name-only", &integration]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "a.txt", "b.txt", "br.toml"]
    );
    untouched(&repo, &head);
}

#[test]
fn with_on_conflict_requeue_the_loser_reruns_on_the_integration_tip_and_then_lands() {
    let repo = repo_with_shared_file();
    let head = commit_plan(&repo, &two_way_clash("redo", "on_conflict = \"requeue\""));
    run_ok(&repo, &["run", "--workers", "2"]);
    let slug = slug(&repo, "redo");
    let integration = format!("br/{slug}/integration");

    let (code, report) = merge(&repo, &["redo"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        results(&report),
        pairs(&[("left", "landed"), ("right", "conflict")])
    );
    let tip = repo.git(&["rev-parse", &integration]);
    let right = entry(&report, "right");
    assert_eq!(right["requeued"], true);
    assert_eq!(right["requeue"]["attempt"], 2);
    assert_eq!(right["requeue"]["base_commit"], tip.as_str());

    let store = repo.store();
    let id = SessionId::from_string(repo.session_id());
    let task_id = TaskId::new("right").expect("task id");
    let queued = store.task(&id, &task_id).expect("task");
    assert_eq!(queued.state.to_string(), "ready");
    assert_eq!(
        queued.base_commit.as_deref(),
        Some(tip.as_str()),
        "attempt 2 starts from the tip"
    );
    let requeued = repo
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::TaskRequeued)
        .expect("task_requeued");
    assert_eq!(detail(&requeued)["base_commit"], tip.as_str());
    assert!(
        detail(&requeued)["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("merge conflict: shared.txt")),
        "{}",
        detail(&requeued)
    );
    // The session has work again, and no worker serves it: paused (not `running` with nobody to
    // run it) until `br resume`.
    assert_eq!(repo.status("redo")["status"], "paused");

    run_ok(&repo, &["resume", "redo", "--no-dashboard"]);
    let status = repo.status("redo");
    assert_eq!(status["status"], "completed");
    let after = store.task(&id, &task_id).expect("task");
    assert_eq!(after.attempts, 2);
    let branch = format!("br/{slug}/right");
    assert_eq!(
        repo.git(&["rev-parse", &format!("{branch}^")]),
        tip,
        "attempt 2's result sits right on the integration tip"
    );
    repo.git(&["merge-base", "--is-ancestor", &tip, &branch]);

    let (code, report) = merge(&repo, &["redo"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        results(&report),
        pairs(&[("left", "already_landed"), ("right", "landed")])
    );
    assert_eq!(
        repo.git(&["show", &format!("{integration}:shared.txt")]),
        "right 2"
    );
    untouched(&repo, &head);
}

#[test]
fn run_with_merge_does_the_whole_requeue_dance_and_exits_0() {
    let repo = repo_with_shared_file();
    let head = commit_plan(&repo, &two_way_clash("dance", "on_conflict = \"requeue\""));
    let run = repo.br(&["run", "--workers", "2", "--merge", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(out["status"], "completed");
    assert_eq!(out["merge_rounds"], 2);
    assert_eq!(out["merge"]["all_landed"], true);
    assert_eq!(
        results(&out["merge"]),
        pairs(&[("left", "already_landed"), ("right", "landed")])
    );
    let right = out["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == "right")
        .expect("right");
    assert_eq!(right["attempts"], 2);
    let slug = out["slug"].as_str().expect("slug");
    assert_eq!(
        repo.git(&["show", &format!("br/{slug}/integration:shared.txt")]),
        "right 2"
    );
    untouched(&repo, &head);
}

#[test]
fn run_with_merge_stops_when_a_round_lands_nothing() {
    let plan = r#"name = "hopeless"
verify = "false"
on_conflict = "requeue"
[[task]]
id = "a"
run = "echo $BR_ATTEMPT > a.txt"
files = ["a.txt"]
"#;
    let repo = TestRepo::new();
    commit_plan(&repo, plan);
    let run = repo.br(&["run", "--merge", "--json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let out: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(out["status"], "completed", "left ended, not running");
    assert_eq!(out["merge_rounds"], 2, "one rerun, then nothing landed");
    assert_eq!(results(&out["merge"]), pairs(&[("a", "verify_failed")]));
    assert_eq!(out["merge"]["tasks"][0]["requeued"], false);

    // In text, the hint does not ask for the setting the plan already has.
    let again = TestRepo::new();
    commit_plan(&again, plan);
    let text = again.br(&["run", "--merge"]);
    assert_eq!(text.code, 1, "{}\n{}", text.stdout, text.stderr);
    assert!(!text.stdout.contains("set on_conflict"), "{}", text.stdout);
    assert!(text.stdout.contains("br retry"), "{}", text.stdout);
}

#[test]
fn into_main_fast_forwards_a_clean_checkout() {
    let repo = TestRepo::new();
    commit_plan(
        &repo,
        r#"name = "ship"
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
    run_ok(&repo, &["run", "--workers", "2"]);
    let slug = slug(&repo, "ship");
    let (code, report) = merge(&repo, &["ship", "--into", "main"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["into"]["result"], "fast_forwarded");
    let tip = repo.git(&["rev-parse", &format!("br/{slug}/integration")]);
    assert_eq!(repo.git(&["rev-parse", "main"]), tip);
    assert_eq!(repo.read("a.txt"), "a\n", "the checked-out files followed");
    assert_eq!(repo.read("b.txt"), "b\n");
    untouched(&repo, &tip);

    let (code, again) = merge(&repo, &["ship", "--into", "main"]);
    assert_eq!(code, 0, "{again:#}");
    assert_eq!(again["into"]["result"], "up_to_date");
}

#[test]
fn into_refuses_a_diverged_branch_local_changes_in_the_way_and_a_missing_branch() {
    let repo = TestRepo::new();
    commit_plan(
        &repo,
        r#"name = "refuse"
[[task]]
id = "a"
run = "echo a > a.txt"
files = ["a.txt"]
"#,
    );
    run_ok(&repo, &["run"]);
    let slug = slug(&repo, "refuse");

    let missing = repo.br(&["merge", "refuse", "--into", "nope"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no branch `nope`"),
        "{}",
        missing.stderr
    );
    assert!(
        !exists(&repo, &format!("refs/heads/br/{slug}/integration")),
        "nothing merged"
    );

    // An untracked file the result would overwrite: git refuses, main stays.
    repo.write("a.txt", "mine\n");
    let main = repo.git(&["rev-parse", "main"]);
    let (code, report) = merge(&repo, &["refuse", "--into", "main"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["into"]["result"], "refused");
    assert!(
        report["into"]["reason"]
            .as_str()
            .expect("reason")
            .contains("a.txt"),
        "{report:#}"
    );
    assert_eq!(repo.git(&["rev-parse", "main"]), main);
    assert_eq!(repo.read("a.txt"), "mine\n", "the user's file is untouched");
    std::fs::remove_file(repo.path().join("a.txt")).expect("rm");

    // main moved on: it cannot be fast-forwarded.
    repo.write("user.txt", "user work\n");
    repo.git(&["add", "user.txt"]);
    repo.git(&["commit", "--quiet", "-m", "user work"]);
    let diverged = repo.git(&["rev-parse", "main"]);
    let run = repo.br(&["merge", "refuse", "--into", "main"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--into main refused"), "{}", run.stderr);
    assert!(
        run.stdout.contains("main: not fast-forwarded"),
        "{}",
        run.stdout
    );
    assert_eq!(
        repo.git(&["rev-parse", "main"]),
        diverged,
        "main is unchanged"
    );
    untouched(&repo, &diverged);
}

#[test]
fn shared_sessions_and_unknown_sessions_are_bad_input() {
    let repo = TestRepo::new();
    commit_plan(
        &repo,
        "name = \"inplace\"\nisolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"true\"\n",
    );
    run_ok(&repo, &["run"]);
    let shared = repo.br(&["merge", "inplace"]);
    assert_eq!(shared.code, 2);
    assert!(
        shared.stderr.contains("no task branches to merge"),
        "{}",
        shared.stderr
    );
    let unknown = repo.br(&["merge", "no-such-session"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    let run_merge = repo.br(&["run", "--merge"]);
    assert_eq!(run_merge.code, 2, "{}", run_merge.stderr);
    assert!(run_merge.stderr.contains("--merge"), "{}", run_merge.stderr);
    assert_eq!(
        repo.br(&["list", "--json"])
            .stdout
            .matches("\"id\"")
            .count(),
        1,
        "refused before a second session was made"
    );
    assert!(!exists(&repo, "refs/heads/br"));
}

#[test]
fn a_session_name_that_is_no_ref_component_is_slugged_and_never_reaches_a_shell() {
    let repo = TestRepo::new();
    let head = commit_plan(
        &repo,
        "name = \"my build: v1..2/x $(touch pwned)\"\n[[task]]\nid = \"t\"\nrun = \"echo t > t.txt\"\nfiles = [\"t.txt\"]\n",
    );
    run_ok(&repo, &["run"]);
    let id = repo.session_id();
    let slug = slug(&repo, &id);
    assert!(slug.starts_with("my-build-v1.2-x-touch-pwned-"), "{slug}");
    let (code, report) = merge(&repo, &[&id]);
    assert_eq!(code, 0, "{report:#}");
    let integration = format!("refs/heads/br/{slug}/integration");
    assert_eq!(report["integration"]["ref"], integration.as_str());
    repo.git(&["check-ref-format", &integration]);
    repo.git(&["check-ref-format", &format!("refs/heads/br/{slug}/t")]);
    let subject = repo.git(&["log", "-1", "--format=%s", &integration]);
    assert_eq!(
        subject,
        "br: merge task t of session my build: v1..2/x $(touch pwned)"
    );
    assert!(!repo.path().join("pwned").exists(), "no shell saw the name");
    untouched(&repo, &head);
}

#[test]
fn a_task_id_that_is_no_ref_component_is_refused_and_nothing_is_created() {
    for (id, reason) in [
        ("a/b", "contains `/`"),
        ("x..y", "not a valid git ref component"),
        ("-x", "not a valid git ref component"),
        ("end.lock", "not a valid git ref component"),
        ("$(touch pwned)", "contains `$`"),
    ] {
        let repo = TestRepo::new();
        let head = commit_plan(
            &repo,
            &format!("name = \"bad\"\n[[task]]\nid = {id:?}\nrun = \"true\"\n"),
        );
        let run = repo.br(&["run"]);
        assert_eq!(run.code, 2, "{id}: {}\n{}", run.stdout, run.stderr);
        assert!(
            // The two lines commit_plan puts first.
            run.stderr.contains("br.toml:5:"),
            "{id}: names file and line: {}",
            run.stderr
        );
        assert!(run.stderr.contains(reason), "{id}: {}", run.stderr);
        assert!(
            !repo.path().join(".git/br").exists(),
            "{id}: no store, log or worktree"
        );
        assert!(!exists(&repo, "refs/heads/br"), "{id}: no branch");
        assert_eq!(
            repo.git(&["worktree", "list", "--porcelain"])
                .matches("worktree ")
                .count(),
            1
        );
        assert!(!repo.path().join("pwned").exists());
        untouched(&repo, &head);
    }
}

/// A task's branch is `br/<slug>/<task-id>`, beside the integration branch
/// `br/<slug>/integration`: a task named `integration` would have its branch be the integration
/// branch, so plans (and `br start`) refuse that id, in any case.
#[test]
fn a_task_id_that_names_the_integration_branch_is_refused() {
    for id in ["integration", "Integration"] {
        let repo = TestRepo::new();
        let head = commit_plan(
            &repo,
            &format!("name = \"x\"\n[[task]]\nid = {id:?}\nrun = \"true\"\n"),
        );
        let run = repo.br(&["run"]);
        assert_eq!(run.code, 2, "{id}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .starts_with(&format!("error: br.toml:5:6: task id `{id}` is reserved: ")),
            "{id}: {}",
            run.stderr
        );
        let start = repo.br(&["start", "x", "-t", &format!("{id}=true")]);
        assert_eq!(start.code, 2, "{id}: {}\n{}", start.stdout, start.stderr);
        assert!(
            start
                .stderr
                .contains(&format!("task id `{id}` is reserved")),
            "{}",
            start.stderr
        );
        assert!(!repo.path().join(".git/br").exists(), "{id}: no store");
        assert!(!exists(&repo, "refs/heads/br"), "{id}: no branch");
        untouched(&repo, &head);
    }
}

/// A store an older br wrote may hold a task named `integration`. Run now, it fails before it
/// can keep anything on its branch, and the integration branch holds only what landed (an older
/// br moved it to the task's commit, dropping what had landed).
#[test]
fn a_reserved_task_id_from_an_older_store_never_takes_the_integration_branch() {
    let repo = TestRepo::new();
    let head = commit_plan(&repo, "[[task]]\nid = \"a\"\nrun = \"true\"\n");
    let mut plan = br_core::Plan::parse(
        "name = \"old\"\nland = \"manual\"\n\
         [[task]]\nid = \"a\"\nrun = \"echo a > a.txt\"\nfiles = [\"a.txt\"]\n\
         [[task]]\nid = \"late\"\nrun = \"echo late > late.txt\"\nfiles = [\"late.txt\"]\n",
        std::path::Path::new("old.toml"),
    )
    .expect("plan");
    plan.tasks[1].id = TaskId::new("integration").expect("an id TaskId accepts");
    let session = repo
        .store()
        .create_session(&br_store::NewSession {
            plan,
            repo_root: repo.path().to_path_buf(),
            plan_path: None,
            base_commit: Some(head.clone()),
            workers_wanted: 2,
            repo_id: None,
        })
        .expect("create the session");
    let id = session.id.to_string();
    let resumed = repo.br(&["resume", &id, "--no-dashboard"]);
    assert_eq!(resumed.code, 1, "{}\n{}", resumed.stdout, resumed.stderr);
    assert!(
        resumed
            .stdout
            .contains("task_failed task=integration attempt=1 worker=w")
            && resumed
                .stdout
                .contains("task id `integration` is reserved: its branch"),
        "{}",
        resumed.stdout
    );
    let status = repo.status(&id);
    let state = |task: &str| {
        status["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["id"] == task)
            .map(|t| t["state"].as_str().expect("state").to_string())
            .expect("task")
    };
    assert_eq!(state("a"), "succeeded");
    assert_eq!(state("integration"), "failed");
    let slug = slug(&repo, &id);
    let integration = format!("refs/heads/br/{slug}/integration");
    assert!(!exists(&repo, &integration), "the task made no branch");
    let (code, report) = merge(&repo, &[&id]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(entry(&report, "a")["result"], "landed");
    let tree = repo.git(&["ls-tree", "--name-only", &integration]);
    assert!(tree.lines().any(|f| f == "a.txt"), "{tree}");
    assert!(!tree.lines().any(|f| f == "late.txt"), "{tree}");
    untouched(&repo, &head);
}

#[test]
fn an_integration_branch_checked_out_somewhere_is_not_moved_under_it() {
    let repo = TestRepo::new();
    let head = commit_plan(
        &repo,
        r#"name = "held"
verify = 'test -e "$BR_REPO_ROOT/.git/allow"'
[[task]]
id = "a"
run = "echo a > a.txt"
files = ["a.txt"]
"#,
    );
    run_ok(&repo, &["run"]);
    let slug = slug(&repo, "held");
    let integration = format!("br/{slug}/integration");
    let (code, report) = merge(&repo, &["held"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(results(&report), pairs(&[("a", "verify_failed")]));
    assert_eq!(repo.git(&["rev-parse", &integration]), head);

    let outside = tempfile::tempdir().expect("temp dir");
    let checkout = outside.path().join("look");
    repo.git(&[
        "worktree",
        "add",
        "--quiet",
        checkout.to_str().expect("utf-8"),
        &integration,
    ]);
    repo.write(".git/allow", "");
    let refused = repo.br(&["merge", "held"]);
    assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("is checked out in"),
        "{}",
        refused.stderr
    );
    assert_eq!(repo.git(&["rev-parse", &integration]), head, "not moved");
    let (code, check) = merge(&repo, &["held", "--check"]);
    assert_eq!(code, 0, "a check still works: {check:#}");

    repo.git(&["worktree", "remove", checkout.to_str().expect("utf-8")]);
    let (code, report) = merge(&repo, &["held"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(results(&report), pairs(&[("a", "landed")]));
    untouched(&repo, &head);
}

#[test]
fn a_merge_stopped_during_verification_leaves_no_verify_process_behind() {
    use common::{alive, poll};
    use nix::sys::signal::Signal;
    use std::time::Duration;

    let repo = TestRepo::new();
    let head = commit_plan(
        &repo,
        r#"name = "slow-verify"
verify = 'echo $$ > "$BR_REPO_ROOT/.git/verify.pid"; exec sleep 60'
[[task]]
id = "a"
run = "echo a > a.txt"
files = ["a.txt"]
"#,
    );
    run_ok(&repo, &["run"]);
    let slug = slug(&repo, "slow-verify");
    let pid_file = repo.path().join(".git/verify.pid");
    for signal in [Signal::SIGINT, Signal::SIGKILL] {
        let _ = std::fs::remove_file(&pid_file);
        let merging = repo.spawn(&["merge", "slow-verify"]);
        let pid: i32 = poll(
            "the verify command to start",
            Duration::from_secs(60),
            || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok(),
        );
        merging.signal(signal);
        let out = merging.wait(Duration::from_secs(60));
        if signal == Signal::SIGINT {
            assert_eq!(out.code, 130, "{}\n{}", out.stdout, out.stderr);
            assert!(out.stderr.contains("interrupted"), "{}", out.stderr);
        }
        poll(
            "the verify command to die with its merge",
            Duration::from_secs(60),
            || (!alive(pid)).then_some(()),
        );
        assert_eq!(
            repo.git(&["rev-parse", &format!("br/{slug}/integration")]),
            head,
            "nothing landed unverified"
        );
    }
    untouched(&repo, &head);
}
