//! `land_one` on a real repository: a landing merges on objects alone and moves the integration
//! branch by compare-and-swap; landing the same task again (a worker died after moving the
//! branch, before the store recorded it) merges nothing twice; a conflict names its files and
//! the landed task it collides with; a refused verify leaves the branch where it was.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use br_core::{Attempt, SessionId, TaskId, WorkerId};
use br_exec::landing::{VerifyRefusal, land_one};
use br_git::git::Repo;
use br_store::{LandingItem, LandingJob, LandingResult};

const INTEGRATION: &str = "refs/heads/br/s-1/integration";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@br.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@br.invalid")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// A repository whose base commit holds `a.txt`, with a branch per `(task, new a.txt)`, each
/// made on the base. Returns the base and the branch tips.
fn repository(dir: &Path, tasks: &[(&str, &str)]) -> (String, Vec<String>) {
    git(dir, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(dir.join("a.txt"), "one\ntwo\nthree\n").expect("write");
    git(dir, &["add", "a.txt"]);
    git(dir, &["commit", "--quiet", "-m", "base"]);
    let base = git(dir, &["rev-parse", "HEAD"]);
    let tips = tasks
        .iter()
        .map(|(task, content)| {
            git(
                dir,
                &["switch", "--quiet", "-c", &format!("br/s-1/{task}"), &base],
            );
            std::fs::write(dir.join("a.txt"), content).expect("write");
            git(dir, &["commit", "--quiet", "-am", task]);
            git(dir, &["rev-parse", "HEAD"])
        })
        .collect();
    git(dir, &["switch", "--quiet", "main"]);
    (base, tips)
}

fn job(base: &str, verify: Option<&str>) -> LandingJob {
    LandingJob {
        session_id: SessionId::from_string("0123456789ab"),
        session_name: "s".into(),
        session_slug: "s-1".into(),
        base_commit: Some(base.into()),
        integration_commit: None,
        verify: verify.map(str::to_string),
        heartbeat_timeout: Duration::from_secs(30),
        worker_id: WorkerId::from_string("w0123456789ab"),
        keep: Vec::new(),
        remote: None,
    }
}

fn item(task: &str, commit: &str, start: &str) -> LandingItem {
    LandingItem {
        task_id: TaskId::try_from(task.to_string()).expect("id"),
        attempt: Attempt(1),
        result_commit: Some(commit.into()),
        start_commit: Some(start.into()),
    }
}

fn no_verify(_: &str, _: &str) -> Result<Option<VerifyRefusal>, br_exec::landing::LandError> {
    panic!("no verify command: nothing to run")
}

#[test]
fn landing_the_same_task_again_merges_nothing_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, tips) = repository(dir.path(), &[("t", "one\nTWO\nthree\n")]);
    let repo = Repo::discover(dir.path()).expect("repo");
    let job = job(&base, None);
    let item = item("t", &tips[0], &base);
    let LandingResult::Landed { commit } =
        land_one(&repo, &job, &item, &mut no_verify).expect("land")
    else {
        panic!("not landed")
    };
    assert_eq!(git(dir.path(), &["rev-parse", INTEGRATION]), commit);
    assert_eq!(
        git(dir.path(), &["rev-parse", &format!("{commit}^1")]),
        base
    );
    assert_eq!(
        git(dir.path(), &["rev-parse", &format!("{commit}^2")]),
        tips[0]
    );

    // The worker died before the store heard of it; the next one lands the task again.
    let again = land_one(&repo, &job, &item, &mut no_verify).expect("land again");
    assert!(
        matches!(&again, LandingResult::Landed { commit: c } if *c == commit),
        "{again:?}"
    );
    assert_eq!(git(dir.path(), &["rev-parse", INTEGRATION]), commit);
    assert_eq!(
        git(
            dir.path(),
            &["rev-list", "--count", "--merges", INTEGRATION]
        ),
        "1"
    );
    // The user's checkout is untouched.
    assert_eq!(git(dir.path(), &["rev-parse", "HEAD"]), base);
    assert_eq!(git(dir.path(), &["status", "--porcelain"]), "");
}

#[test]
fn a_conflict_names_its_files_and_the_landed_task_and_moves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, tips) = repository(
        dir.path(),
        &[
            ("first", "one\nTWO\nthree\n"),
            ("second", "one\n2\nthree\n"),
        ],
    );
    let repo = Repo::discover(dir.path()).expect("repo");
    let job = job(&base, None);
    let first = land_one(&repo, &job, &item("first", &tips[0], &base), &mut no_verify);
    let Ok(LandingResult::Landed { commit: tip }) = first else {
        panic!("{first:?}")
    };
    let second = land_one(
        &repo,
        &job,
        &item("second", &tips[1], &base),
        &mut no_verify,
    )
    .expect("land");
    let LandingResult::Conflict {
        files,
        with,
        details,
        tip: at,
    } = second
    else {
        panic!("{second:?}")
    };
    assert_eq!(files, ["a.txt"]);
    assert_eq!(with, ["first"]);
    assert!(
        details.contains("TWO") && details.contains('2'),
        "{details}"
    );
    assert_eq!(at, tip);
    assert_eq!(git(dir.path(), &["rev-parse", INTEGRATION]), tip);
}

#[test]
fn a_refused_verify_leaves_the_branch_where_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, tips) = repository(dir.path(), &[("t", "one\nTWO\nthree\n")]);
    let repo = Repo::discover(dir.path()).expect("repo");
    let job = job(&base, Some("make check"));
    let mut asked = Vec::new();
    let mut refuse = |candidate: &str, tip: &str| {
        asked.push((candidate.to_string(), tip.to_string()));
        Ok(Some(VerifyRefusal {
            exit_code: Some(2),
            reason: "exit code 2".into(),
            log_tail: "check failed".into(),
        }))
    };
    let result = land_one(&repo, &job, &item("t", &tips[0], &base), &mut refuse).expect("land");
    let LandingResult::VerifyFailed {
        command,
        exit_code,
        log_tail,
        tip,
        ..
    } = result
    else {
        panic!("{result:?}")
    };
    assert_eq!(
        (command.as_str(), exit_code, log_tail.as_str()),
        ("make check", Some(2), "check failed")
    );
    assert_eq!(
        tip, base,
        "the branch was made at the base and stayed there"
    );
    assert_eq!(git(dir.path(), &["rev-parse", INTEGRATION]), base);
    // The verify saw the merge: the task's change on top of the tip.
    assert_eq!(asked.len(), 1);
    let (candidate, on) = &asked[0];
    assert_eq!(on, &base);
    assert_eq!(
        git(dir.path(), &["show", &format!("{candidate}:a.txt")]),
        "one\nTWO\nthree"
    );
}
