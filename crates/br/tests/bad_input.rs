//! Bad input gets one clear message and a non-zero exit, and nothing already recorded is lost:
//! bad plans, a directory that is not a repository, unknown sessions, a locked store, a store
//! from a newer br, a damaged store.

mod common;

use common::TestRepo;

/// The messages, with the temp dir's path replaced so snapshots are stable.
fn shown(repo: &TestRepo, run: &common::Run) -> String {
    let path = repo.path().to_string_lossy().into_owned();
    let canonical = repo
        .path()
        .canonicalize()
        .expect("canonical")
        .to_string_lossy()
        .into_owned();
    let mut text = format!(
        "exit: {}\nstdout:\n{}stderr:\n{}",
        run.code, run.stdout, run.stderr
    )
    .replace(&canonical, "[REPO]")
    .replace(&path, "[REPO]");
    // Session ids are random; a store br refuses to read has none to hide.
    let listed = repo.br(&["list", "--json"]).stdout;
    if let Ok(serde_json::Value::Array(sessions)) = serde_json::from_str(&listed) {
        for s in sessions {
            text = text.replace(s["id"].as_str().expect("id"), "[SESSION]");
        }
    }
    text
}

fn no_session_recorded(repo: &TestRepo) {
    if repo.store_path().exists() {
        let list = repo.br(&["list", "--json"]);
        assert_eq!(list.stdout.trim(), "[]", "a refused plan records nothing");
    }
}

const BAD_PLANS: &[(&str, &str)] = &[
    (
        "unknown_key",
        "name = \"x\"\n[[task]]\nid = \"a\"\nrun = \"true\"\nfles = [\"a\"]\n",
    ),
    (
        "duplicate_id",
        "[[task]]\nid = \"a\"\nrun = \"true\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    ),
    (
        "unknown_after",
        "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [\"schema\"]\n",
    ),
    (
        "cycle",
        "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [\"c\"]\n[[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"a\"]\n[[task]]\nid = \"c\"\nrun = \"true\"\nafter = [\"b\"]\n",
    ),
    (
        "absolute_path",
        "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"/etc/passwd\"]\n",
    ),
    (
        "escaping_path",
        "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"src/../../secret\"]\n",
    ),
    (
        "invalid_glob",
        "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"src/[a\"]\n",
    ),
    (
        "zero_duration",
        "heartbeat_timeout = \"0s\"\n[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = \"0s\"\n",
    ),
    (
        "absurd_duration",
        "[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = \"400days\"\n",
    ),
    (
        "bad_task_id",
        "[[task]]\nid = \"has space\"\nrun = \"true\"\n",
    ),
    ("syntax", "[[task]\nid = \"a\"\n"),
    ("no_tasks", "name = \"empty\"\n"),
];

#[test]
fn every_bad_plan_is_refused_with_file_line_and_reason() {
    let repo = TestRepo::new();
    let mut all = String::new();
    for (name, text) in BAD_PLANS {
        let file = format!("{name}.toml");
        repo.write(&file, text);
        let run = repo.br(&["run", &file]);
        assert_eq!(run.code, 2, "{name}: {}", run.stderr);
        assert!(
            run.stderr.starts_with(&format!("error: {file}")),
            "{name}: names the file: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{name}: nothing ran: {}", run.stdout);
        all.push_str(&format!("--- {name}\n{}", shown(&repo, &run)));
        no_session_recorded(&repo);
    }
    insta::assert_snapshot!(all);
}

/// The sizes that broke `br list` and `br status` (a 70,000-character name, 12,000 lock paths)
/// are refused at validation, as are the other limits README.md lists; `br start` and
/// `br lock` apply the same ones to what they are given.
#[test]
fn oversized_plans_are_refused_before_anything_is_recorded() {
    let repo = TestRepo::new();
    let files: Vec<String> = (0..12_000).map(|i| format!("\"dir/f{i}\"")).collect();
    let plans = [
        (
            "long_name",
            format!(
                "name = \"{}\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "x".repeat(70_000)
            ),
        ),
        (
            "many_files",
            format!(
                "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [{}]\n",
                files.join(", ")
            ),
        ),
        (
            "long_command",
            format!(
                "[[task]]\nid = \"a\"\nrun = \"echo {}\"\nenv = {{ X = \"{}\" }}\n",
                "r".repeat(200_000),
                "v".repeat(100_000)
            ),
        ),
    ];
    let mut all = String::new();
    for (name, text) in &plans {
        let file = format!("{name}.toml");
        repo.write(&file, text);
        let run = repo.br(&["run", &file]);
        assert_eq!(run.code, 2, "{name}: {}", run.stderr);
        all.push_str(&format!("--- {name}\n{}", shown(&repo, &run)));
        no_session_recorded(&repo);
    }
    let (name, path) = ("s".repeat(200), "p".repeat(2_000));
    for args in [
        vec!["start", name.as_str(), "-t", "a=true"],
        vec!["lock", "any", &path],
    ] {
        let run = repo.br(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        all.push_str(&format!("--- br {}\n{}", args[0], shown(&repo, &run)));
        no_session_recorded(&repo);
    }
    insta::assert_snapshot!(all);
}

/// Every setting `br run` and its workers need is parsed before anything is recorded: a bad one
/// exits 2 naming the variable and its value, and no session is left behind (a bad BR_MAX_LOG
/// used to create the session, then kill every worker as it parsed it). A plan that is not
/// UTF-8 is bad input too, not an I/O failure.
#[test]
fn bad_settings_and_plans_that_are_not_utf8_are_refused_before_anything_is_recorded() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"p\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    std::fs::write(
        repo.path().join("latin1.toml"),
        b"name = \"caf\xe9\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    )
    .expect("write");
    let mut text = String::new();
    let mut refused = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = repo.br_command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let run = common::Run::from(cmd.output().expect("run br"));
        assert_eq!(run.code, 2, "{env:?} {args:?}: {}", run.stderr);
        no_session_recorded(&repo);
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        text.push_str(&format!(
            "--- {}br {}\n{}",
            env.concat(),
            args.join(" "),
            shown(&repo, &run)
        ));
    };
    refused(&[("BR_MAX_LOG", "abc")], &["run", "--no-dashboard"]);
    refused(&[("BR_MAX_LOG", "0")], &["run", "--no-dashboard"]);
    refused(&[("BR_MAX_LOG", "abc")], &["start", "s", "-t", "a=true"]);
    refused(&[("BR_MAX_LOG", "abc")], &["demo"]);
    refused(&[("BR_BUSY_TIMEOUT", "soon")], &["run", "--no-dashboard"]);
    refused(&[], &["run", "--max-log", "lots"]);
    refused(&[], &["run", "latin1.toml"]);
    refused(&[], &["start", "s", "--plan", "latin1.toml"]);
    refused(&[], &["run", ".git"]);
    // A worker refuses before it registers.
    refused(&[("BR_MAX_LOG", "abc")], &["worker", "--exit-when-idle"]);
    assert_eq!(repo.br(&["workers", "--all", "--json"]).stdout.trim(), "[]");
    // A submitted session is not resumed (nor marked running) on a bad setting.
    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let session = repo.session_id();
    let mut resume = repo.br_command(&["resume", &session, "--no-dashboard"]);
    resume.env("BR_MAX_LOG", "abc");
    let resumed = common::Run::from(resume.output().expect("run br"));
    assert_eq!(resumed.code, 2, "{}", resumed.stderr);
    assert_eq!(repo.status(&session)["status"], "created");
    assert_eq!(repo.br(&["workers", "--all", "--json"]).stdout.trim(), "[]");
    text.push_str(&format!(
        "--- BR_MAX_LOG=abc br resume\n{}",
        shown(&repo, &resumed)
    ));
    insta::assert_snapshot!(text);
    // The workers `br run` starts get the limit on their command line, so the environment they
    // inherit cannot stop them.
    let mut run = repo.br_command(&["run", "--max-log", "10MiB", "--no-dashboard"]);
    run.env("BR_MAX_LOG", "abc");
    let ran = common::Run::from(run.output().expect("run br"));
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
}

#[test]
fn a_missing_plan_and_a_directory_outside_git_are_refused() {
    let repo = TestRepo::new();
    let missing = repo.br(&["run"]);
    assert_eq!(missing.code, 2);
    let outside = tempfile::tempdir().expect("temp dir");
    let not_git = repo.br(&["-C", outside.path().to_str().expect("utf8"), "run"]);
    assert_eq!(not_git.code, 2);
    let text = shown(&repo, &missing)
        + &shown(&repo, &not_git)
            .replace(&outside.path().to_string_lossy().into_owned(), "[OUTSIDE]");
    insta::assert_snapshot!(text);
}

#[test]
fn unknown_sessions_and_tasks_are_refused() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"p\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    assert_eq!(repo.br(&["run"]).code, 0);
    let mut text = String::new();
    for args in [
        vec!["status", "deadbeef"],
        vec!["logs", "p", "nope"],
        vec!["resume", "p"],
        vec!["lock", "nosuch", "x"],
        vec!["lock", "p", "../x"],
        vec!["list", "--status", "bogus"],
    ] {
        let run = repo.br(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        text.push_str(&format!(
            "--- br {}\n{}",
            args.join(" "),
            shown(&repo, &run)
        ));
    }
    insta::assert_snapshot!(text);
}

#[test]
fn a_locked_store_is_reported_and_keeps_its_data() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"p\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    assert_eq!(repo.br(&["run"]).code, 0);
    let holder = rusqlite::Connection::open(repo.store_path()).expect("open");
    holder
        .execute_batch("BEGIN EXCLUSIVE;")
        .expect("lock the store");
    let mut cmd = repo.br_command(&["submit"]);
    cmd.env("BR_BUSY_TIMEOUT", "300ms");
    let run = common::Run::from(cmd.output().expect("run br"));
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("is locked by another process"),
        "{}",
        run.stderr
    );
    holder.execute_batch("ROLLBACK;").expect("unlock");
    let list = repo.br(&["list", "--json"]);
    let sessions: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
    assert_eq!(
        sessions.as_array().expect("array").len(),
        1,
        "the earlier session is intact"
    );
    assert_eq!(sessions[0]["status"], "completed");
}

#[test]
fn a_store_from_a_newer_br_is_refused_untouched() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"p\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    assert_eq!(repo.br(&["run"]).code, 0);
    {
        let conn = rusqlite::Connection::open(repo.store_path()).expect("open");
        conn.pragma_update(None, "user_version", 999).expect("bump");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL");
    }
    let before = std::fs::read(repo.store_path()).expect("read");
    let mut text = String::new();
    for args in [vec!["status"], vec!["run"]] {
        let run = repo.br(&args);
        assert_eq!(run.code, 4, "{}", run.stderr);
        text.push_str(&shown(&repo, &run));
    }
    assert_eq!(
        std::fs::read(repo.store_path()).expect("read"),
        before,
        "not a byte changed"
    );
    insta::assert_snapshot!(text);
}

#[test]
fn a_damaged_store_is_refused_untouched() {
    let repo = TestRepo::new();
    std::fs::create_dir_all(repo.store_path().parent().expect("dir")).expect("mkdir");
    let garbage = b"not a database at all, just bytes ".repeat(100);
    std::fs::write(repo.store_path(), &garbage).expect("write");
    let run = repo.br(&["list"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(std::fs::read(repo.store_path()).expect("read"), garbage);
    insta::assert_snapshot!(shown(&repo, &run));
}

#[test]
fn an_unreachable_postgres_server_is_reported_without_its_password() {
    let repo = TestRepo::new();
    // Nothing listens on port 1: the connection is refused at once.
    let run = repo.br(&["--store", "postgres://user:secret@127.0.0.1:1/br", "list"]);
    assert_eq!(run.code, 4);
    let help = repo
        .br_command(&["--help"])
        .env("BR_STORE", "postgres://user:secret@127.0.0.1:1/br")
        .output()
        .expect("br --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("BR_STORE") && !help.contains("secret"),
        "--help names the variable, not its value: {help}"
    );
    assert!(
        !run.stderr.contains("secret"),
        "the password is not shown: {}",
        run.stderr
    );
    insta::assert_snapshot!(shown(&repo, &run));
}

#[test]
fn a_kill_grace_that_does_not_fit_in_the_lease_is_refused_before_anything_is_recorded() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "heartbeat_timeout = \"3s\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    // A worker cut off from the store must stop its task, grace included, within the lease.
    let run = repo.br(&["run", "--kill-grace", "5s"]);
    insta::assert_snapshot!(shown(&repo, &run));
    no_session_recorded(&repo);
    // What fits runs.
    let run = repo.br(&["run", "--kill-grace", "500ms"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn an_empty_store_file_is_refused_and_left_as_it_is() {
    let repo = TestRepo::new();
    let store = repo.store_path();
    std::fs::create_dir_all(store.parent().expect("dir")).expect("mkdir");
    std::fs::write(&store, b"").expect("an empty file");
    let listed = repo.br(&["list"]);
    assert_ne!(listed.code, 0, "{}", listed.stdout);
    assert!(listed.stderr.contains("empty"), "{}", listed.stderr);
    assert_eq!(std::fs::metadata(&store).expect("still there").len(), 0);
}

#[test]
fn the_store_and_the_logs_are_the_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "isolation = \"shared\"\n[[task]]\nid = \"t\"\nrun = \"echo secret output\"\n",
    );
    let run = repo.br(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    let store = repo.store_path();
    assert_eq!(mode(&store), 0o600, "{}", store.display());
    let logs = store.parent().expect("br dir").join("logs");
    assert_eq!(mode(&logs), 0o700, "{}", logs.display());
    let status = repo.status("br");
    let log = status["tasks"][0]["log_path"].as_str().expect("log path");
    assert_eq!(mode(std::path::Path::new(log)), 0o600, "{log}");
    assert_eq!(
        mode(std::path::Path::new(log).parent().expect("dir")),
        0o700
    );
}

/// Every command that only reads, with the arguments it needs.
const READING: [&[&str]; 11] = [
    &["list"],
    &["list", "--json"],
    &["summary"],
    &["locks"],
    &["pools"],
    &["pools", "--json"],
    &["workers"],
    &["events"],
    &["dashboard", "--once"],
    &["status", "nothing"],
    &["wait", "nothing"],
];

#[test]
fn reading_commands_make_no_store_where_there_is_none() {
    let repo = TestRepo::new();
    for args in READING {
        let run = repo.br(args);
        assert!(
            run.code == 0 || run.stderr.contains("no session matches `nothing`"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert!(
        !repo.path().join(".git").join("br").exists(),
        "reading made nothing under .git/br"
    );
    let list = repo.br(&["list", "--json"]);
    assert_eq!(list.stdout.trim(), "[]");
}

#[test]
fn reading_commands_do_not_migrate_an_older_store() {
    let repo = TestRepo::new();
    repo.write(
        "br.toml",
        "name = \"p\"\nisolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
    );
    assert_eq!(repo.br(&["run"]).code, 0);
    {
        let conn = rusqlite::Connection::open(repo.store_path()).expect("open");
        conn.pragma_update(None, "user_version", 1)
            .expect("an older version");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL");
    }
    let before = std::fs::read(repo.store_path()).expect("read");
    for args in READING {
        let run = repo.br(args);
        assert_eq!(run.code, 4, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("has schema version 1, older than this br's")
                && run.stderr.contains("a command that writes"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(
        std::fs::read(repo.store_path()).expect("read"),
        before,
        "not a byte changed"
    );
}
