//! The session integrates as it runs, through the real CLI in worktree isolation: each task lands
//! on `br/<slug>/integration` as soon as it succeeds, attempts start from that tip (so a dependent
//! sees its dependency's files and the next holder of a lock sees the previous holder's work), a
//! task that cannot land is rerun on the new tip and told why, prompts reach the task, and a
//! session run only by `br worker` processes lands too — also when one of them is killed in the
//! middle of a landing.

mod common;

use std::path::Path;
use std::time::Duration;

use br_core::EventKind;
use common::{Run, TestRepo, detail, poll};
use nix::sys::signal::Signal;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn run_ok(repo: &TestRepo, args: &[&str]) -> Run {
    let run = repo.br(args);
    assert_eq!(run.code, 0, "br {args:?}\n{}\n{}", run.stdout, run.stderr);
    run
}

fn task<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {status:#}"))
}

/// The integration branch of the only session.
fn integration(status: &Value) -> String {
    format!("br/{}/integration", status["slug"].as_str().expect("slug"))
}

/// A file as the integration branch holds it.
fn landed_file(repo: &TestRepo, branch: &str, file: &str) -> String {
    repo.git(&["show", &format!("{branch}:{file}")])
}

/// Every task landed, each exactly once, and the session says so.
fn assert_all_landed(repo: &TestRepo, status: &Value, ids: &[&str]) {
    assert_eq!(status["status"], "completed", "{status:#}");
    assert_eq!(status["landed_tasks"], ids.len(), "{status:#}");
    let branch = integration(status);
    let tip = repo.git(&["rev-parse", &branch]);
    assert_eq!(status["integration_commit"], tip.as_str(), "{status:#}");
    for id in ids {
        let t = task(status, id);
        assert_eq!(t["landing"], "landed", "{id}: {t:#}");
        let landed = t["landed_commit"].as_str().expect("landed_commit");
        // The landed commit is on the integration branch's first-parent line.
        let line = repo.git(&["rev-list", "--first-parent", &branch]);
        assert!(line.lines().any(|c| c == landed), "{id} not on {branch}");
    }
    let landings = repo
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::TaskLanded)
        .count();
    assert_eq!(landings, ids.len(), "one task_landed per task");
}

#[test]
fn a_dependent_builds_on_its_dependency_s_landed_files() {
    let repo = TestRepo::new();
    let head = repo.commit_plan(
        r#"name = "pipeline"
[[task]]
id = "build"
after = ["version"]
files = ["build/**"]
run = "mkdir -p build && cat include/version.h > build/out.txt"
[[task]]
id = "version"
files = ["include/**"]
run = "mkdir -p include && echo '#define VERSION 7' > include/version.h"
"#,
    );
    run_ok(&repo, &["run", "--workers", "2", "--no-dashboard"]);
    let status = repo.status(&repo.session_id());
    assert_all_landed(&repo, &status, &["version", "build"]);
    let branch = integration(&status);
    assert_eq!(
        landed_file(&repo, &branch, "build/out.txt"),
        "#define VERSION 7"
    );
    // The user's checkout is untouched.
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head);
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

#[test]
fn three_tasks_under_one_lock_stack_and_all_land() {
    let repo = TestRepo::new();
    repo.write("log.txt", "");
    repo.commit_plan(
        r#"name = "stack"
[[task]]
id = "one"
files = ["log.txt"]
run = "echo one >> log.txt"
[[task]]
id = "two"
files = ["log.txt"]
run = "echo two >> log.txt"
[[task]]
id = "three"
files = ["log.txt"]
run = "echo three >> log.txt"
"#,
    );
    run_ok(&repo, &["run", "--workers", "3", "--no-dashboard"]);
    let status = repo.status(&repo.session_id());
    assert_all_landed(&repo, &status, &["one", "two", "three"]);
    for id in ["one", "two", "three"] {
        assert_eq!(task(&status, id)["repairs"], 0, "{id} needed no repair");
    }
    let log = landed_file(&repo, &integration(&status), "log.txt");
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["one", "three", "two"], "{log}");
    assert!(
        !repo
            .events()
            .iter()
            .any(|e| e.kind == EventKind::MergeConflict),
        "no conflict"
    );
}

/// Both tasks wait for each other before their first attempt's change, so both start from the
/// same tip and change the same line: whichever lands second conflicts. On its rerun the script
/// (standing in for a coding agent) reads its context, checks that it names the file and the
/// other task, and writes a line that keeps both.
#[test]
fn a_conflict_is_rerun_on_the_new_tip_with_a_context_that_says_why_and_lands() {
    let repo = TestRepo::new();
    repo.write("greeting.txt", "hello\n");
    let outside = tempfile::tempdir().expect("temp dir");
    let dir = outside.path().display();
    let agent = format!(
        r#"set -e
echo "$BR_TASK_ID" >> {dir}/started
if [ "$BR_ATTEMPT" = 1 ]; then
  n=0; while [ $(wc -l < {dir}/started) -lt 2 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done
  echo "hello from $BR_TASK_ID" > greeting.txt
else
  cp "$BR_CONTEXT_FILE" {dir}/context.$BR_TASK_ID.json
  cp "$BR_PROMPT_FILE" {dir}/prompt.$BR_TASK_ID.md
  grep -q greeting.txt "$BR_CONTEXT_FILE"
  echo "$(cat greeting.txt) and from $BR_TASK_ID" > greeting.txt
fi
"#
    );
    repo.write("agent.sh", &agent);
    repo.commit_plan(
        r#"name = "clash"
[[task]]
id = "left"
run = "sh agent.sh"
[[task]]
id = "right"
run = "sh agent.sh"
"#,
    );
    run_ok(&repo, &["run", "--workers", "2", "--no-dashboard"]);
    let status = repo.status(&repo.session_id());
    assert_all_landed(&repo, &status, &["left", "right"]);
    let repaired: Vec<&str> = ["left", "right"]
        .into_iter()
        .filter(|id| task(&status, id)["repairs"] == 1)
        .collect();
    assert_eq!(repaired.len(), 1, "exactly one repair: {status:#}");
    let second = repaired[0];
    let first = if second == "left" { "right" } else { "left" };
    assert_eq!(task(&status, second)["attempts"], 2);

    let context: Value = serde_json::from_str(
        &std::fs::read_to_string(outside.path().join(format!("context.{second}.json")))
            .expect("the rerun's context"),
    )
    .expect("context JSON");
    assert_eq!(context["task"], second);
    assert_eq!(context["attempt"], 2);
    assert_eq!(context["reason"], "conflict");
    assert_eq!(
        context["conflict"]["files"][0], "greeting.txt",
        "{context:#}"
    );
    assert_eq!(context["conflict"]["with"][0], first, "{context:#}");
    assert!(
        context["conflict"]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from"),
        "the hunks: {context:#}"
    );
    assert_eq!(context["previous"]["attempt"], 1);
    assert_eq!(
        context["start_commit"],
        task(&status, first)["landed_commit"],
        "the rerun starts from the tip holding the other task's work"
    );
    let prompt = std::fs::read_to_string(outside.path().join(format!("prompt.{second}.md")))
        .expect("the rerun's prompt");
    assert!(prompt.contains("greeting.txt"), "{prompt}");
    assert!(prompt.contains(first), "{prompt}");

    assert_eq!(
        landed_file(&repo, &integration(&status), "greeting.txt"),
        format!("hello from {first} and from {second}")
    );
    // Predictions (no stage) may name the pair too; the landing found exactly one.
    let conflicts: Vec<_> = repo
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::MergeConflict && detail(e)["stage"] == "merge")
        .collect();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        conflicts[0].task_id.as_ref().map(br_core::TaskId::as_str),
        Some(second)
    );
}

#[test]
fn a_failed_verify_is_rerun_with_its_reason_and_log_tail_and_lands() {
    let repo = TestRepo::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let dir = outside.path().display();
    repo.write(
        "check.sh",
        "if [ -e broken.txt ]; then echo 'VERIFY SAYS: broken.txt must not exist'; exit 3; fi\n",
    );
    repo.write(
        "agent.sh",
        &format!(
            r#"if [ "$BR_ATTEMPT" = 1 ]; then echo oops > broken.txt; else
cp "$BR_CONTEXT_FILE" {dir}/context.json; echo fine > fixed.txt; fi
"#
        ),
    );
    repo.commit_plan(
        r#"name = "verified"
verify = "sh check.sh"
[[task]]
id = "fix"
run = "sh agent.sh"
"#,
    );
    run_ok(&repo, &["run", "--workers", "1", "--no-dashboard"]);
    let status = repo.status(&repo.session_id());
    assert_all_landed(&repo, &status, &["fix"]);
    assert_eq!(task(&status, "fix")["repairs"], 1);
    let context: Value = serde_json::from_str(
        &std::fs::read_to_string(outside.path().join("context.json")).expect("context"),
    )
    .expect("context JSON");
    assert_eq!(context["reason"], "verify_failed", "{context:#}");
    assert_eq!(context["verify"]["command"], "sh check.sh");
    assert_eq!(context["verify"]["exit_code"], 3);
    assert!(
        context["verify"]["log_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("VERIFY SAYS: broken.txt must not exist"),
        "{context:#}"
    );
    let branch = integration(&status);
    assert_eq!(landed_file(&repo, &branch, "fixed.txt"), "fine");
    assert!(
        repo.git(&["ls-tree", "--name-only", &branch])
            .lines()
            .all(|f| f != "broken.txt")
    );
    assert_eq!(
        repo.events()
            .iter()
            .filter(|e| e.kind == EventKind::VerifyFailed)
            .count(),
        1
    );
}

#[test]
fn a_task_that_cannot_land_after_its_repairs_fails_and_its_dependents_are_skipped() {
    let repo = TestRepo::new();
    repo.commit_plan(
        r#"name = "hopeless"
verify = "false"
max_repairs = 1
[[task]]
id = "never"
run = "echo x > x.txt"
[[task]]
id = "after-never"
after = ["never"]
run = "echo y > y.txt"
"#,
    );
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status(&repo.session_id());
    assert_eq!(status["status"], "failed", "{status:#}");
    let never = task(&status, "never");
    assert_eq!(never["state"], "failed", "{never:#}");
    assert_eq!(never["landing"], "verify_failed", "{never:#}");
    assert_eq!(never["repairs"], 1);
    assert_eq!(never["attempts"], 2);
    assert_eq!(task(&status, "after-never")["state"], "skipped");
    assert_eq!(status["landed_tasks"], 0);
    // In words: the task that ran has its branch; the one that never ran has none to show, and
    // says which dependency it waited for in vain.
    let text = repo.br(&["status", "-v", &repo.session_id()]).stdout;
    let section = |task: &str| {
        let start = text
            .find(&format!("\n{task}:\n"))
            .unwrap_or_else(|| panic!("no section for {task}:\n{text}"));
        let rest = &text[start + 1..];
        rest[..rest[1..].find("\n\n").map_or(rest.len(), |e| e + 1)].to_string()
    };
    let never = section("never");
    assert!(
        never.contains("branch: br/hopeless-") && never.contains("/never\n"),
        "{text}"
    );
    assert!(text.contains("· 1 worker wanted ·"), "{text}");
    assert!(!section("after-never").contains("branch:"), "{text}");
    assert!(text.contains("skipped: never failed"), "{text}");
}

/// The prompt file is read at submit: editing it afterwards (here, by the first task, in the
/// user's checkout) changes nothing for the running session.
#[test]
fn prompts_reach_the_task_as_they_were_at_submit() {
    let repo = TestRepo::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let dir = outside.path().display();
    repo.write("specs/b.md", "Write the second part.\n");
    let checkout = repo.path().display();
    repo.commit_plan(&format!(
            r#"name = "prompts"
[[task]]
id = "a"
prompt = "Write the first part."
run = 'cp "$BR_PROMPT_FILE" {dir}/a.md; echo changed > {checkout}/specs/b.md'
[[task]]
id = "b"
after = ["a"]
prompt_file = "specs/b.md"
run = 'cp "$BR_PROMPT_FILE" {dir}/b.md'
[[task]]
id = "none"
run = 'test -z "$BR_PROMPT_FILE" || test ! -e "$BR_PROMPT_FILE"; test -s "$BR_CONTEXT_FILE"; test -n "$BR_START_COMMIT"'
"#
        ),
    );
    run_ok(&repo, &["run", "--workers", "2", "--no-dashboard"]);
    let read = |f: &str| std::fs::read_to_string(outside.path().join(f)).expect(f);
    assert!(
        read("a.md").starts_with("Write the first part."),
        "{}",
        read("a.md")
    );
    assert!(
        read("b.md").starts_with("Write the second part."),
        "{}",
        read("b.md")
    );
    assert_eq!(repo.read("specs/b.md"), "changed\n");
    let status = repo.status(&repo.session_id());
    assert_all_landed(&repo, &status, &["a", "b", "none"]);
}

fn submit(repo: &TestRepo) -> String {
    let submitted = run_ok(repo, &["submit"]);
    submitted
        .stdout
        .lines()
        .last()
        .expect("session id")
        .trim()
        .to_string()
}

#[test]
fn a_session_run_only_by_workers_lands_its_tasks() {
    let repo = TestRepo::new();
    repo.commit_plan(
        r#"name = "workers-only"
[[task]]
id = "a"
run = "echo a > a.txt"
[[task]]
id = "b"
after = ["a"]
run = "cat a.txt > b.txt"
[[task]]
id = "c"
run = "echo c > c.txt"
"#,
    );
    let session = submit(&repo);
    let args = [
        "worker",
        "--session",
        &session,
        "--exit-when-idle",
        "--heartbeat-interval",
        "200ms",
    ];
    let workers = [repo.spawn(&args), repo.spawn(&args)];
    let waited = repo.br(&["wait", &session, "--timeout", "60s"]);
    assert_eq!(waited.code, 0, "{}\n{}", waited.stdout, waited.stderr);
    for worker in workers {
        let left = worker.wait(LONG);
        assert_eq!(left.code, 0, "{}", left.stderr);
    }
    let status = repo.status(&session);
    assert_all_landed(&repo, &status, &["a", "b", "c"]);
    assert_eq!(landed_file(&repo, &integration(&status), "b.txt"), "a");
}

/// A verify that takes a while gives the test time to kill the worker holding the landing turn.
/// Another worker takes the turn over once its lease expires and finishes the landing: every task
/// is merged onto the integration branch exactly once, and the branch and the store agree.
#[test]
fn a_worker_killed_in_the_middle_of_a_landing_leaves_the_branch_and_store_consistent() {
    let repo = TestRepo::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let marks = outside.path().display();
    repo.commit_plan(&format!(
        r#"name = "kill-landing"
heartbeat_timeout = "3s"
verify = 'echo "$$" >> {marks}/verifying; sleep 2'
[[task]]
id = "a"
run = "echo a > a.txt"
[[task]]
id = "b"
run = "echo b > b.txt"
"#
    ));
    let session = submit(&repo);
    let args = [
        "worker",
        "--session",
        &session,
        "--heartbeat-interval",
        "200ms",
    ];
    let victim = repo.spawn(&args);
    let verifying = outside.path().join("verifying");
    poll("a verify to start", LONG, || {
        verifying.exists().then_some(())
    });
    victim.signal(Signal::SIGKILL);
    drop(victim);
    let rescuer = repo.spawn(&[
        "worker",
        "--session",
        &session,
        "--exit-when-idle",
        "--heartbeat-interval",
        "200ms",
    ]);
    let waited = repo.br(&["wait", &session, "--timeout", "60s"]);
    assert_eq!(
        waited.code,
        0,
        "{}\n{}\n{}\n{}",
        waited.stdout,
        waited.stderr,
        repo.br(&["status", &session, "-v"]).stdout,
        repo.br(&["events", &session]).stdout
    );
    assert_eq!(rescuer.wait(LONG).code, 0);
    let status = repo.status(&session);
    assert_all_landed(&repo, &status, &["a", "b"]);
    let branch = integration(&status);
    // Exactly one merge commit per task on the integration branch.
    let subjects = repo.git(&["log", "--first-parent", "--format=%s", &branch]);
    for id in ["a", "b"] {
        let merges = subjects
            .lines()
            .filter(|s| s.contains(&format!("task {id} ")))
            .count();
        assert_eq!(merges, 1, "{id}:\n{subjects}");
    }
    assert_eq!(landed_file(&repo, &branch, "a.txt"), "a");
    assert_eq!(landed_file(&repo, &branch, "b.txt"), "b");
    assert_no_stray_verify(Path::new(&verifying));
}

/// The killed worker's verify ran in its own process group: nothing of it may outlive the test.
fn assert_no_stray_verify(pids: &Path) {
    let text = std::fs::read_to_string(pids).expect("verify pids");
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        poll("verify processes to be gone", LONG, || {
            (!common::alive(pid)).then_some(())
        });
    }
}

/// `br diff`: the landed attempt's change by default, any attempt's with `--attempt` (a failed
/// one's work is kept at its attempt ref), `--stat`, and a clear error for what does not exist.
#[test]
fn br_diff_shows_what_an_attempt_changed_against_its_start() {
    let repo = TestRepo::new();
    repo.commit_plan(
        r#"name = "diffs"
retries = 1
[[task]]
id = "t"
run = 'echo "attempt $BR_ATTEMPT" > f.txt; test "$BR_ATTEMPT" = 2'
"#,
    );
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let landed = run_ok(&repo, &["diff", "t"]);
    assert!(landed.stdout.contains("+attempt 2"), "{}", landed.stdout);
    let first = run_ok(&repo, &["diff", "diffs", "t", "--attempt", "1"]);
    assert!(first.stdout.contains("+attempt 1"), "{}", first.stdout);
    let stat = run_ok(&repo, &["diff", "t", "--stat"]);
    assert!(stat.stdout.contains("1 file changed"), "{}", stat.stdout);
    let missing = repo.br(&["diff", "t", "--attempt", "9"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("no attempt 9"),
        "{}",
        missing.stderr
    );
}
