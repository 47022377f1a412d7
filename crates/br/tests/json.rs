//! Every JSON shape DESIGN.md names, from the real binary, snapshotted byte for byte (ids, times,
//! paths, hosts and pids filtered): `br summary --json`, `br status --json`, `br workers --json`,
//! `br locks --json`, `br list --json`, `br pools --json` and each `br events --json` line; the
//! web API answers
//! with the same JSON; and the progress lines of the same run.

mod common;

use common::TestRepo;
use common::served::Served;
use serde_json::Value;

/// A session with a task that succeeds, one that fails and one skipped because of it; then a
/// second session, only submitted, holding a manual lock, whose task is in a pool.
fn run_the_scenario(repo: &TestRepo) -> (String, String) {
    repo.write(
        "shapes.toml",
        "name = \"shapes\"\n\
         [[task]]\nid = \"make\"\nrun = \"echo made > made.txt\"\nfiles = [\"made.txt\"]\n\
         [[task]]\nid = \"check\"\nrun = \"exit 3\"\nafter = [\"make\"]\nfiles = [\"check/**\"]\n\
         [[task]]\nid = \"ship\"\nrun = \"true\"\nafter = [\"check\"]\n",
    );
    repo.write(
        "held.toml",
        "name = \"held\"\nisolation = \"shared\"\nworkers = 2\n\
         [pool.writers]\nsize = 2\nbackoff = \"30s\"\n\
         [[task]]\nid = \"docs\"\nrun = \"true\"\npool = \"writers\"\n",
    );
    let run = repo.br(&["run", "shapes.toml", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 1, "one task fails: {}", run.stderr);
    let submit = repo.br(&["submit", "held.toml"]);
    assert_eq!(submit.code, 0, "{}", submit.stderr);
    let held = submit.stdout.lines().last().expect("the id").to_string();
    let lock = repo.br(&["lock", &held, "docs/**"]);
    assert_eq!(lock.code, 0, "{}", lock.stderr);
    (run.stdout, held)
}

/// `text` with what differs from run to run replaced by placeholders.
fn scrub(repo: &TestRepo, text: &str) -> String {
    let mut text = text.to_string();
    let canonical = repo.path().canonicalize().expect("canonical");
    for path in [canonical.as_path(), repo.path()] {
        text = text.replace(&*path.to_string_lossy(), "[REPO]");
    }
    let sessions: Value =
        serde_json::from_str(&repo.br(&["list", "--json"]).stdout).expect("list JSON");
    for (i, s) in sessions.as_array().expect("sessions").iter().enumerate() {
        let id = s["id"].as_str().expect("id");
        text = text.replace(id, &format!("[SESSION{i}]"));
        // Slugs end with the id's first six characters.
        text = text.replace(&format!("-{}", &id[..6]), &format!("-[SLUG{i}]"));
    }
    for (i, w) in repo.workers().iter().enumerate() {
        text = text.replace(w["id"].as_str().expect("id"), &format!("[WORKER{i}]"));
        text = text.replace(w["host"].as_str().expect("host"), "[HOST]");
    }
    text
}

/// Times, durations, commits and pids, which `scrub` cannot know in advance.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
        (r"\b[0-9a-f]{40}\b", "[COMMIT]"),
        (r"committed [0-9a-f]{12}\b", "committed [COMMIT]"),
        (
            r"integration branch at [0-9a-f]{12}\b",
            "integration branch at [COMMIT]",
        ),
        (r"\(at [0-9a-f]{12}\)", "(at [COMMIT])"),
        (r#""pid":( ?)\d+"#, r#""pid":$1[PID]"#),
        (r"(?m)^\+\d+\.\d{3}s ", "+[OFFSET] "),
        (r"(?m) in [0-9][0-9.hms]*: ", " in [DURATION]: "),
    ]
}

fn assert_scrubbed(name: &str, text: &str) {
    insta::with_settings!({ filters => filters(), prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn every_json_shape_is_stable_and_the_web_api_answers_the_same() {
    let repo = TestRepo::new();
    let (progress, held) = run_the_scenario(&repo);
    let out = |args: &[&str]| {
        let run = repo.br(args);
        assert_eq!(run.code, 0, "br {args:?}: {}", run.stderr);
        run.stdout
    };
    let status = out(&["status", "shapes", "--json"]);
    let list = out(&["list", "--json"]);
    let workers = out(&["workers", "--all", "--json"]);
    let locks = out(&["locks", "--json"]);
    let events = out(&["events", "--json"]);
    let summary = out(&["summary", "--json"]);
    let pools = out(&["pools", "--json"]);

    assert_scrubbed("json_status", &scrub(&repo, &status));
    assert_scrubbed("json_list", &scrub(&repo, &list));
    assert_scrubbed("json_workers", &scrub(&repo, &workers));
    assert_scrubbed("json_locks", &scrub(&repo, &locks));
    assert_scrubbed("json_events", &scrub(&repo, &events));
    assert_scrubbed("json_summary", &scrub(&repo, &summary));
    assert_scrubbed("json_pools", &scrub(&repo, &pools));
    assert_scrubbed("progress_lines", &scrub(&repo, &progress));

    // The web API answers with the CLI's JSON.
    let served = Served::start(&repo);
    let parse = |text: &str| -> Value { serde_json::from_str(text).expect("JSON") };
    let shapes_id = parse(&status)["id"].as_str().expect("id").to_string();
    let api = |path: &str| {
        let (code, body) = served.get_json(path);
        assert_eq!(code, 200, "{path}: {body}");
        body
    };
    assert_eq!(api(&format!("/api/sessions/{shapes_id}")), parse(&status));
    assert_eq!(api("/api/sessions"), parse(&list));
    assert_eq!(api("/api/workers?all=true"), parse(&workers));
    assert_eq!(api("/api/locks"), parse(&locks));
    assert_eq!(api("/api/pools"), parse(&pools));
    let lines: Vec<Value> = events.lines().map(parse).collect();
    assert_eq!(api("/api/events"), Value::Array(lines));
    // The summary's timestamp is the store's clock when asked: the rest is the same.
    let mut cli_summary = parse(&summary);
    let mut api_summary = api("/api/summary");
    for s in [&mut cli_summary, &mut api_summary] {
        s.as_object_mut().expect("object").remove("timestamp");
    }
    assert_eq!(api_summary, cli_summary);
    assert!(!held.is_empty());
}
