//! A full disk, for real: a small tmpfs holds the store (or the whole repository), a task fills
//! it mid-run, and br must say what happened, lose nothing, and carry on with `br resume` once
//! there is space again.

mod common;

use br_core::{OutcomeKind, SessionId, TaskId};
use br_store::audit::{audit_lock_order, audit_terminal_once};
use common::TestRepo;
use common::tmpfs::Tmpfs;

const MIB: u64 = 1 << 20;

/// Task `a` fills the disk at `filler`'s directory (once: its marker is outside that disk), then
/// tasks `b` and `c` follow it.
fn plan(filler: &std::path::Path, marker: &std::path::Path) -> String {
    format!(
        r#"name = "full"
heartbeat_timeout = "3s"
[[task]]
id = "a"
files = ["a.txt"]
run = "if [ ! -e {marker} ]; then touch {marker}; dd if=/dev/zero of={filler} bs=4096 2>/dev/null; fi; echo a > a.txt"
[[task]]
id = "b"
files = ["b.txt"]
run = "echo b > b.txt"
after = ["a"]
[[task]]
id = "c"
files = ["c.txt"]
run = "echo c > c.txt"
after = ["a"]
"#,
        marker = marker.display(),
        filler = filler.display()
    )
}

fn commit_plan(repo: &TestRepo, plan: &str) {
    repo.write("br.toml", plan);
    repo.git(&["add", "br.toml"]);
    repo.git(&["commit", "--quiet", "-m", "plan"]);
}

fn only_session(repo: &TestRepo) -> String {
    let list = repo.br(&["list", "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let sessions: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON");
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    sessions[0]["id"].as_str().expect("an id").to_string()
}

/// The run stopped on the full disk: what it said, and that the session waits to be resumed.
fn assert_stopped_on_full_disk(repo: &TestRepo, run: &common::Run) -> String {
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("is full"),
        "says the disk is full:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("failed to start"),
        "does not blame the workers' start:\n{}",
        run.stderr
    );
    let id = only_session(repo);
    assert!(
        run.stderr.contains(&format!("br resume {id}")),
        "says how to carry on:\n{}",
        run.stderr
    );
    let status = repo.status(&id);
    assert_eq!(status["status"], "running", "{status}");
    id
}

/// Resumed with space again: everything succeeds, and no attempt was blamed on its task.
fn assert_resumes(repo: &TestRepo, id: &str) {
    let resumed = repo.br(&["resume", id, "--workers", "2", "--no-dashboard"]);
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    let status = repo.status(id);
    assert_eq!(status["status"], "completed", "{status}");
    let store = repo.store();
    for task in ["a", "b", "c"] {
        let attempts = store
            .attempts(
                &SessionId::from_string(id),
                &TaskId::new(task).expect("task id"),
            )
            .expect("attempts");
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes.last(),
            Some(&Some(OutcomeKind::Succeeded)),
            "{task}: {outcomes:?}"
        );
        for outcome in &outcomes[..outcomes.len() - 1] {
            assert!(
                matches!(
                    outcome,
                    Some(OutcomeKind::LeaseLost | OutcomeKind::Interrupted)
                ),
                "{task}: an attempt lost to the full disk is not the task's failure: {outcomes:?}"
            );
        }
    }
    let events = repo.events();
    audit_lock_order(&events).expect("no two holders of a lock");
    audit_terminal_once(&events).expect("every task ended once");
}

#[test]
fn a_store_whose_disk_fills_up_stops_the_run_saying_so_and_resume_carries_on() {
    let outside = tempfile::tempdir().expect("temp dir");
    let mount = outside.path().join("disk");
    std::fs::create_dir(&mount).expect("mount point");
    let Some(disk) = Tmpfs::mount(&mount, 2 * MIB) else {
        return;
    };
    let store = disk.path().join("br.db");
    let repo = TestRepo::with_store(&store.display().to_string());
    let filler = disk.path().join("filler");
    commit_plan(&repo, &plan(&filler, &outside.path().join("filled")));

    let run = repo.br(&["run", "--workers", "2", "--no-dashboard"]);
    let id = assert_stopped_on_full_disk(&repo, &run);
    assert!(
        run.stderr
            .contains(&format!("the disk holding store {}", store.display())),
        "names the store's disk:\n{}",
        run.stderr
    );

    std::fs::remove_file(&filler).expect("free the disk");
    assert_resumes(&repo, &id);
}

#[test]
fn a_repository_whose_disk_fills_up_stops_the_run_saying_so_and_resume_carries_on() {
    let Some(repo) = TestRepo::on_tmpfs(6 * MIB, None) else {
        return;
    };
    let outside = tempfile::tempdir().expect("temp dir");
    let filler = repo.path().join(".git").join("filler");
    commit_plan(&repo, &plan(&filler, &outside.path().join("filled")));

    let run = repo.br(&["run", "--workers", "2", "--no-dashboard"]);
    let id = assert_stopped_on_full_disk(&repo, &run);

    std::fs::remove_file(&filler).expect("free the disk");
    assert_resumes(&repo, &id);
    // What the tasks did is on their branches, whatever the full disk interrupted.
    let status = repo.status(&id);
    for task in status["tasks"].as_array().expect("tasks") {
        let (id, branch) = (
            task["id"].as_str().unwrap(),
            task["branch"].as_str().unwrap(),
        );
        let file = repo.git(&["show", &format!("{branch}:{id}.txt")]);
        assert_eq!(file, id);
    }
}

#[test]
fn a_store_on_a_disk_already_full_records_nothing_and_leaves_no_empty_store() {
    let outside = tempfile::tempdir().expect("temp dir");
    let mount = outside.path().join("disk");
    std::fs::create_dir(&mount).expect("mount point");
    let Some(disk) = Tmpfs::mount(&mount, MIB) else {
        return;
    };
    let filler = disk.fill();
    let store = disk.path().join("br.db");
    let repo = TestRepo::with_store(&store.display().to_string());
    commit_plan(
        &repo,
        "name = \"full\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );

    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the disk holding store {} is full",
            store.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("error:").count(),
        1,
        "one message:\n{}",
        run.stderr
    );

    std::fs::remove_file(&filler).expect("free the disk");
    // Not a zero-byte file the next br would refuse: the store is simply not made yet.
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn a_full_repository_disk_with_the_store_elsewhere_fails_no_task() {
    let outside = tempfile::tempdir().expect("temp dir");
    let store = outside.path().join("br.db");
    let Some(repo) = TestRepo::on_tmpfs(6 * MIB, Some(&store.display().to_string())) else {
        return;
    };
    let filler = repo.path().join(".git").join("filler");
    commit_plan(&repo, &plan(&filler, &outside.path().join("filled")));

    let run = repo.br(&["run", "--workers", "2", "--no-dashboard"]);
    let id = assert_stopped_on_full_disk(&repo, &run);
    assert!(
        run.stderr
            .contains(&format!("the disk holding {}/", repo.path().display())),
        "names the repository's disk:\n{}",
        run.stderr
    );

    std::fs::remove_file(&filler).expect("free the disk");
    assert_resumes(&repo, &id);
}
