//! `br retry` through the real CLI: a task that failed (and the dependent it skipped) runs again
//! as its next attempt, told why, and the session completes and lands; refused retries change
//! nothing and exit 2.

mod common;

use br_core::EventKind;
use common::{TestRepo, detail};
use serde_json::Value;

fn task<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == id)
        .expect("task")
}

fn states(status: &Value) -> Vec<(String, String)> {
    status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["id"].as_str().expect("id").to_string(),
                t["state"].as_str().expect("state").to_string(),
            )
        })
        .collect()
}

/// A plan whose `flaky` task fails until a marker file outside the repository exists (the
/// first attempt makes it), with a dependent and an independent task. Each attempt of `flaky`
/// and `dependent` keeps its context and prompt files in `out`.
fn flaky_plan(repo: &TestRepo, out: &std::path::Path) {
    let out = out.display();
    repo.write(
        "br.toml",
        &format!(
            r#"name = "flaky"
[[task]]
id = "flaky"
files = ["flaky.txt"]
run = '''
cp "$BR_CONTEXT_FILE" "{out}/flaky.$BR_ATTEMPT.context.json"
if [ -n "$BR_PROMPT_FILE" ]; then cp "$BR_PROMPT_FILE" "{out}/flaky.$BR_ATTEMPT.prompt.md"; fi
if [ ! -e "{out}/marker" ]; then touch "{out}/marker"; echo "not yet" >&2; exit 1; fi
echo fixed > flaky.txt
'''
[[task]]
id = "dependent"
after = ["flaky"]
files = ["dependent.txt"]
run = '''
cp "$BR_CONTEXT_FILE" "{out}/dependent.$BR_ATTEMPT.context.json"
cp "$BR_PROMPT_FILE" "{out}/dependent.$BR_ATTEMPT.prompt.md"
cat flaky.txt > dependent.txt
'''
[[task]]
id = "independent"
files = ["independent.txt"]
run = "echo alone > independent.txt"
"#
        ),
    );
}

/// The LANDED column of the only session in `br list`.
fn landed_in_list(repo: &TestRepo) -> String {
    let list = repo.br(&["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let mut lines = list.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    let column = header
        .iter()
        .position(|h| *h == "LANDED")
        .expect("a LANDED column");
    let row: Vec<&str> = lines
        .next()
        .expect("a session")
        .split_whitespace()
        .collect();
    row[column].to_string()
}

fn read_json(path: std::path::PathBuf) -> Value {
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("context JSON")
}

#[test]
fn a_failed_task_and_the_dependent_it_skipped_run_again_and_the_session_completes() {
    let repo = TestRepo::new();
    let out = tempfile::tempdir().expect("temp dir");
    flaky_plan(&repo, out.path());
    let run = repo.br(&["run", "--workers", "2", "--no-dashboard"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let failed = repo.status("flaky");
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        states(&failed),
        [
            ("flaky".into(), "failed".into()),
            ("dependent".into(), "skipped".into()),
            ("independent".into(), "succeeded".into())
        ]
    );
    let id = failed["id"].as_str().expect("id").to_string();
    assert_eq!(landed_in_list(&repo), "1/3", "only independent landed");

    let retry = repo.br(&["retry", &id, "--workers", "2", "--no-dashboard"]);
    assert_eq!(retry.code, 0, "{}\n{}", retry.stdout, retry.stderr);
    assert!(
        retry.stdout.contains(&format!(
            "retrying 2 tasks of session flaky ({id}): flaky (failed), dependent (skipped)"
        )),
        "{}",
        retry.stdout
    );
    assert!(
        retry.stdout.contains("resuming session flaky"),
        "it goes on as br resume: {}",
        retry.stdout
    );
    let done = repo.status("flaky");
    assert_eq!(done["status"], "completed");
    assert_eq!(
        (done["landed_tasks"].as_u64(), done["total_tasks"].as_u64()),
        (Some(3), Some(3))
    );
    let flaky = task(&done, "flaky");
    assert_eq!(
        (
            flaky["state"].as_str(),
            flaky["attempts"].as_u64(),
            flaky["landing"].as_str()
        ),
        (Some("succeeded"), Some(2), Some("landed"))
    );
    let dependent = task(&done, "dependent");
    assert_eq!(
        (dependent["state"].as_str(), dependent["attempts"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    assert_eq!(
        task(&done, "independent")["attempts"],
        1,
        "it did not run again"
    );
    assert_eq!(landed_in_list(&repo), "3/3");
    let listed: Value = serde_json::from_str(&repo.br(&["list", "--json"]).stdout).expect("JSON");
    assert_eq!(listed[0]["landed_tasks"], 3);

    // Each rerun was told why it runs.
    let first = read_json(out.path().join("flaky.1.context.json"));
    assert_eq!(first["reason"], "first");
    let second = read_json(out.path().join("flaky.2.context.json"));
    assert_eq!(
        (second["attempt"].as_u64(), second["reason"].as_str()),
        (Some(2), Some("retry"))
    );
    assert_eq!(second["previous"]["attempt"], 1);
    assert_eq!(second["previous"]["outcome"], "failed");
    assert_eq!(second["previous"]["exit_code"], 1);
    assert!(
        second["previous"]["log_tail"]
            .as_str()
            .is_some_and(|t| t.contains("not yet")),
        "{second}"
    );
    let prompt = std::fs::read_to_string(out.path().join("flaky.2.prompt.md")).expect("prompt");
    assert!(prompt.contains("## Why this is attempt 2"), "{prompt}");
    assert!(prompt.contains("`br retry`"), "{prompt}");
    assert!(
        !out.path().join("flaky.1.prompt.md").exists(),
        "no prompt for a first attempt"
    );
    let dependent_prompt =
        std::fs::read_to_string(out.path().join("dependent.1.prompt.md")).expect("prompt");
    assert!(
        dependent_prompt.contains("The task had not run: it was skipped or cancelled"),
        "{dependent_prompt}"
    );
    let dependent_context = read_json(out.path().join("dependent.1.context.json"));
    assert_eq!(
        (
            dependent_context["attempt"].as_u64(),
            dependent_context["reason"].as_str()
        ),
        (Some(1), Some("retry"))
    );

    // The integration branch holds every task's work; the dependent started from a tip that
    // held what flaky landed.
    let integration = format!("br/{}/integration", done["slug"].as_str().expect("slug"));
    assert_eq!(
        repo.git(&["show", &format!("{integration}:flaky.txt")]),
        "fixed"
    );
    assert_eq!(
        repo.git(&["show", &format!("{integration}:dependent.txt")]),
        "fixed"
    );
    assert_eq!(
        repo.git(&["show", &format!("{integration}:independent.txt")]),
        "alone"
    );

    let events = repo.events();
    let retried: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e.kind == EventKind::TaskRequeued)
        .map(|e| (e.task_id.as_ref().expect("task").to_string(), detail(e)))
        .collect();
    assert_eq!(retried.len(), 2, "{retried:?}");
    assert_eq!(retried[0].0, "flaky");
    assert_eq!(retried[0].1["from"], "failed");
    assert_eq!(retried[0].1["next_attempt"], 2);
    assert_eq!(retried[1].0, "dependent");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::SessionResumed && detail(e)["reason"] == "retry")
    );
    br_store::audit::audit_terminal_once(&events).expect("each task ended once per run");

    let again = repo.br(&["retry", &id]);
    assert_eq!(again.code, 2, "{}\n{}", again.stdout, again.stderr);
    assert!(
        again
            .stderr
            .contains("has nothing to retry: it is completed"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_refused_retry_changes_nothing_and_a_named_one_runs_only_what_it_names() {
    let repo = TestRepo::new();
    let out = tempfile::tempdir().expect("temp dir");
    flaky_plan(&repo, out.path());
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let before = repo.status("flaky");
    let id = before["id"].as_str().expect("id").to_string();
    let events_before = repo.events().len();

    for (args, message) in [
        (
            vec!["retry", id.as_str(), "independent"],
            "cannot retry task independent (succeeded) of session",
        ),
        (
            vec!["retry", id.as_str(), "dependent"],
            "it waits for flaky, which is failed; retry flaky too",
        ),
        (vec!["retry", id.as_str(), "nope"], "has no task `nope`"),
        (
            vec!["retry", "no-such-session"],
            "no session matches `no-such-session`",
        ),
    ] {
        let refused = repo.br(&args);
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(
            refused.stderr.starts_with("error: ") && refused.stderr.contains(message),
            "{args:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(repo.status("flaky"), before, "nothing changed");
    assert_eq!(repo.events().len(), events_before, "nothing recorded");

    // Named, detached: only flaky and the dependent it skipped are queued; nothing runs yet.
    let detached = repo.br(&["retry", &id, "flaky", "--detach"]);
    assert_eq!(detached.code, 0, "{}", detached.stderr);
    assert!(
        detached.stdout.contains("0 workers serving it"),
        "{}",
        detached.stdout
    );
    let queued = repo.status("flaky");
    assert_eq!(queued["status"], "running");
    assert_eq!(
        states(&queued),
        [
            ("flaky".into(), "ready".into()),
            ("dependent".into(), "pending".into()),
            ("independent".into(), "succeeded".into())
        ]
    );
    let resumed = repo.br(&["resume", &id, "--no-dashboard", "--json"]);
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    let end: Value = serde_json::from_str(&resumed.stdout).expect("final status JSON");
    assert_eq!(end["status"], "completed");
    assert_eq!(task(&end, "flaky")["attempts"], 2);
}
