//! Two repositories sharing one store (a `--store` path, or a PostgreSQL URL): a worker serves
//! only its own repository's sessions. A foreign task stays ready for a worker of its own
//! repository, and a clone counts as the same repository.

mod common;

use common::TestRepo;
use serde_json::Value;

/// Two unrelated repositories whose br commands share the store at `store`.
fn two_repositories(store: &str) -> (TestRepo, TestRepo) {
    (TestRepo::with_store(store), TestRepo::unrelated(store))
}

fn submit(repo: &TestRepo, plan: &str) -> String {
    repo.write("br.toml", plan);
    repo.git(&["add", "br.toml"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
    let run = repo.br(&["submit"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout.lines().last().expect("id").trim().to_string()
}

fn task_state(repo: &TestRepo, session: &str) -> String {
    let status: Value = repo.status(session);
    status["tasks"][0]["state"]
        .as_str()
        .expect("state")
        .to_string()
}

#[test]
fn a_worker_never_runs_another_repositorys_tasks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("shared.db").display().to_string();
    let (a, b) = two_repositories(&store);
    for isolation in ["shared", "worktree"] {
        let session = submit(
            &a,
            &format!(
                "name = \"{isolation}\"\nisolation = \"{isolation}\"\n[[task]]\nid = \"t\"\nrun = \"rm README.md\"\nfiles = [\"README.md\"]\n"
            ),
        );
        // B's idle worker looks, finds nothing of its own, and leaves: A's task is untouched.
        let idle = b.br(&["worker", "--exit-when-idle"]);
        assert_eq!(idle.code, 0, "{}", idle.stderr);
        assert!(
            b.path().join("README.md").exists(),
            "{isolation}: B's worker ran A's task in B"
        );
        assert_eq!(
            task_state(&a, &session),
            "ready",
            "{isolation}: it stays ready"
        );
        // Named outright, A's session is refused, with the reason.
        let named = b.br(&["worker", "--session", &session, "--exit-when-idle"]);
        assert_eq!(named.code, 2, "{}", named.stderr);
        assert!(
            named.stderr.contains("another repository"),
            "{}",
            named.stderr
        );
        // A's own worker runs it.
        let own = a.br(&["worker", "--session", &session, "--exit-when-idle"]);
        assert_eq!(own.code, 0, "{}", own.stderr);
        assert_eq!(task_state(&a, &session), "succeeded", "{isolation}");
    }
}

#[test]
fn a_clone_serves_the_sessions_of_its_origin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("shared.db").display().to_string();
    let here = TestRepo::with_store(&store);
    let session = submit(
        &here,
        "name = \"c\"\nisolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"pwd > ran-in\"\n",
    );
    let there = here.clone_elsewhere();
    let worked = there.br(&["worker", "--exit-when-idle"]);
    assert_eq!(worked.code, 0, "{}", worked.stderr);
    assert_eq!(task_state(&here, &session), "succeeded");
    assert!(there.path().join("ran-in").exists(), "the clone ran it");
    let status: Value = here.status(&session);
    assert!(
        status["repo_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("root:")),
        "{status}"
    );
}
