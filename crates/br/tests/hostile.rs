//! No name breaks the CLI: text a hostile plan wrote (ESC and BEL in a session name and a
//! command) is shown escaped by every text output, and a store an older br wrote, with a
//! 70,000-character name and a task holding 12,000 lock paths, is still shown, cut to size.

mod common;

use std::path::PathBuf;

use br_core::{LockPath, Plan};
use br_store::NewSession;
use common::TestRepo;

/// An xterm "set the window title" sequence: ESC ] 0 ; title BEL.
const TITLE: &str = "\u{1b}]0;owned\u{7}";

/// Fails naming the output and the first character that would have reached the terminal raw.
fn assert_no_control_characters(what: &str, text: &str) {
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        panic!("{what} prints {c:?} raw:\n{text}");
    }
}

#[test]
fn a_hostile_plans_names_are_escaped_in_every_text_output() {
    let repo = TestRepo::new();
    // TOML's \u escapes put real ESC and BEL characters in the name and the command.
    repo.write(
        "evil.toml",
        "name = \"evil\\u001b]0;owned\\u0007\"\n\
         [[task]]\nid = \"ok\"\nrun = \"echo ok > ok.txt\"\nfiles = [\"ok.txt\"]\n\
         [[task]]\nid = \"bad\"\nrun = \"echo \\u001b[2J; exit 3\"\n\
         env = { SHOWN = \"\\u001b[5m\" }\n",
    );
    let run = repo.br(&["run", "evil.toml", "--no-dashboard"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let session = repo.session_id();
    let escaped_name = "evil\\u{1b}]0;owned\\u{7}";
    assert!(
        run.stdout.contains(&format!("session {escaped_name} (")),
        "{}",
        run.stdout
    );
    let mut outputs = vec![("br run".to_string(), run)];
    for args in [
        vec!["list"],
        vec!["status"],
        vec!["status", "-v", &session],
        vec!["events"],
        vec!["events", &session, "--limit", "3"],
        vec!["workers", "--all"],
        vec!["summary"],
        vec!["merge", &session, "--check"],
        vec!["merge", &session],
        vec!["cleanup", "--dry-run", "--days", "0"],
        vec!["wait", &session],
        vec!["retry", &session, "--no-dashboard"],
        vec!["pause", &session],
        vec!["logs", &session, "nosuch"],
        vec!["dashboard", "--once"],
    ] {
        outputs.push((format!("br {}", args.join(" ")), repo.br(&args)));
    }
    // BuildRunner's spelling takes the name from the command line.
    outputs.push((
        "br start".to_string(),
        repo.br(&[
            "start",
            &format!("flags{TITLE}"),
            "-t",
            "a=true",
            "--no-dashboard",
        ]),
    ));
    for (what, run) in &outputs {
        assert_ne!(run.code, 101, "{what} panicked: {}", run.stderr);
        assert_no_control_characters(&format!("{what} (stdout)"), &run.stdout);
        assert_no_control_characters(&format!("{what} (stderr)"), &run.stderr);
    }
    let shown = |what: &str| {
        outputs
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, r)| format!("{}{}", r.stdout, r.stderr))
            .expect("ran")
    };
    assert!(
        shown("br list").contains(escaped_name),
        "{}",
        shown("br list")
    );
    assert!(
        shown(&format!("br status -v {session}")).contains("run: echo \\u{1b}[2J; exit 3"),
        "{}",
        shown(&format!("br status -v {session}"))
    );
    let retried = shown(&format!("br retry {session} --no-dashboard"));
    assert!(
        retried.contains(&format!("retrying 1 task of session {escaped_name} (")),
        "{retried}"
    );
    assert!(shown("br start").contains("flags\\u{1b}]0;owned\\u{7}"));
    // JSON escapes what it carries: the name comes back as written.
    let list: serde_json::Value =
        serde_json::from_str(&repo.br(&["list", "--json"]).stdout).expect("json");
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|s| s["name"] == format!("evil{TITLE}"))
    );
}

#[test]
fn a_store_with_names_an_older_br_accepted_is_shown_cut_to_size() {
    let repo = TestRepo::new();
    // What an older br recorded without limits: written to the store directly, past validation.
    let mut plan = Plan::parse(
        "isolation = \"shared\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
        std::path::Path::new("old.toml"),
    )
    .expect("plan");
    plan.name = "n".repeat(70_000);
    plan.tasks[0].run = format!("echo {}", "r".repeat(2 << 20));
    plan.tasks[0].files = (0..12_000)
        .map(|i| LockPath::parse(&format!("dir/file-{i}")).expect("path"))
        .collect();
    let store = repo.store();
    let session = store
        .create_session(&NewSession {
            plan,
            repo_root: repo.path().to_path_buf(),
            plan_path: Some(PathBuf::from("old.toml")),
            base_commit: None,
            workers_wanted: 1,
            repo_id: None,
        })
        .expect("create the session");
    let id = session.id.to_string();
    let cut_name = format!("{}…", "n".repeat(127));
    for args in [
        vec!["list"],
        vec!["status"],
        vec!["status", "-v", &id],
        vec!["events"],
        vec!["dashboard", "--once"],
        vec!["lock", &id, "elsewhere"],
        vec!["locks"],
    ] {
        let run = repo.br(&args);
        assert_eq!(run.code, 0, "br {args:?}: {}", run.stderr);
        if args[0] == "list" {
            assert!(run.stdout.contains(&cut_name), "{}", run.stdout);
        }
        if args == ["status"] {
            let files = run
                .stdout
                .lines()
                .find(|l| l.starts_with("a "))
                .expect("the task's row");
            assert!(files.contains("dir/file-0,dir/file-1,"), "{files}");
            assert!(files.contains('…'), "{files}");
            assert!(files.chars().count() < 400, "{files}");
        }
    }
}
