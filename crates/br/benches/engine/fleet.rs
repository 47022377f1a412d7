//! The fleet benchmark: 12 tasks in worktrees on 4 workers through the real `br`, 6 of them
//! appending a line to one of two shared files (3 each), 6 writing files of their own — once
//! with `start = "tip"` and once with `start = "base"`, each with the shared files locked
//! (`files = ["shared/a.txt"]`: holders run one at a time) and unlocked (they run at once).
//!
//! Two appends to one file made from the same commit conflict when the second lands. What
//! decides whether they were made from the same commit: with `start = "base"`, every first
//! attempt is; with `start = "tip"`, only attempts that ran at the same time are, since an
//! attempt starts from whatever had landed when it was claimed, and the lock holds the next
//! appender back until the previous one has landed. A conflict costs a repair: the task runs
//! again on the new tip, told why.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BR: &str = env!("CARGO_BIN_EXE_br");
const WORKERS: u32 = 4;
/// How long each task works before it writes: long enough that a rerun shows in the makespan.
const TASK_SECONDS: &str = "0.5";

/// Whether the appenders lock the file they append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locks {
    Shared,
    None,
}

/// What one run of the plan did.
#[derive(Debug)]
struct FleetRun {
    wall: Duration,
    /// From the session's start to its end, as the store recorded them.
    makespan: Duration,
    landed: usize,
    landed_without_repair: usize,
    repairs: u64,
    attempts: u64,
    /// Whether each shared file ends with its three lines on the integration branch.
    shared_complete: bool,
}

pub(crate) fn fleet() {
    println!(
        "\nfleet: 12 tasks in worktrees, {WORKERS} workers, each sleeping {TASK_SECONDS} s first; 6 \
         append a line to one of two shared files (3 each), 6 write a file of their own"
    );
    for locks in [Locks::Shared, Locks::None] {
        let how = match locks {
            Locks::Shared => "shared files locked (files = [\"shared/a.txt\"])",
            Locks::None => "shared files not locked (the appenders run at once)",
        };
        println!("  {how}:");
        for start in ["tip", "base"] {
            let run = run_fleet(start, locks);
            println!(
                "    start = {start:<6} {:>5.2} s wall, makespan {:>5.2} s; landed {}/12, {} without \
                 a repair; {} repairs, {} attempts; shared files complete: {}",
                run.wall.as_secs_f64(),
                run.makespan.as_secs_f64(),
                run.landed,
                run.landed_without_repair,
                run.repairs,
                run.attempts,
                if run.shared_complete { "yes" } else { "NO" }
            );
        }
    }
}

fn run_fleet(start: &str, locks: Locks) -> FleetRun {
    let dir = tempfile::Builder::new()
        .prefix("br-fleet-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();
    git(root, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::create_dir_all(root.join("shared")).expect("mkdir");
    std::fs::create_dir_all(root.join("own")).expect("mkdir");
    for name in ["a", "b"] {
        std::fs::write(
            root.join(format!("shared/{name}.txt")),
            format!("shared file {name}\n"),
        )
        .expect("write");
    }
    std::fs::write(root.join("own/README"), "one file per task\n").expect("write");
    // The plan stays out of the commit, and out of `git status`.
    std::fs::write(root.join(".git/info/exclude"), "br.toml\n").expect("write");
    git(root, &["add", "--all"]);
    git(root, &["commit", "--quiet", "-m", "fleet base"]);

    let lock = |file: &str| match locks {
        Locks::Shared => format!("files = [\"{file}\"]\n"),
        // Declaring nothing: a change outside `files` is only reported (scope = "report").
        Locks::None => String::new(),
    };
    let mut plan = format!(
        "name = \"fleet-{start}\"\nstart = \"{start}\"\n\
         # Room for every repair the base start needs: a failure would hide the difference.\n\
         max_repairs = 10\n"
    );
    // Interleaved, so that each batch of claims holds both kinds.
    for i in 1..=6 {
        let file = if i % 2 == 1 {
            "shared/a.txt"
        } else {
            "shared/b.txt"
        };
        plan.push_str(&format!(
            "[[task]]\nid = \"s{i}\"\nrun = \"sleep {TASK_SECONDS}; echo s{i} >> {file}\"\n{}",
            lock(file)
        ));
        plan.push_str(&format!(
            "[[task]]\nid = \"i{i}\"\nrun = \"sleep {TASK_SECONDS}; echo i{i} > own/i{i}.txt\"\n\
             files = [\"own/i{i}.txt\"]\n"
        ));
    }
    std::fs::write(root.join("br.toml"), plan).expect("write plan");

    let started = Instant::now();
    let out = Command::new(BR)
        .args(["run", "--workers", &WORKERS.to_string(), "--json"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .expect("br run");
    let wall = started.elapsed();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "br run printed no status ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    let landed: Vec<&Value> = tasks.iter().filter(|t| t["landing"] == "landed").collect();
    let count = |key: &str| tasks.iter().filter_map(|t| t[key].as_u64()).sum::<u64>();
    let slug = status["slug"].as_str().unwrap_or_default();
    let integration = format!("br/{slug}/integration");
    let shared_complete = ["a", "b"].iter().all(|name| {
        let text = git(root, &["show", &format!("{integration}:shared/{name}.txt")]);
        text.lines().count() == 4
    });
    let at = |key: &str| {
        status[key]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let makespan = match (at("started_at"), at("completed_at")) {
        (Some(start), Some(end)) => end.duration_since(start).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    FleetRun {
        wall,
        makespan,
        landed: landed.len(),
        landed_without_repair: landed.iter().filter(|t| t["repairs"] == 0).count(),
        repairs: count("repairs"),
        attempts: count("attempts"),
        shared_complete,
    }
}

/// Runs git in `dir` with a hermetic configuration; its output, whole.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stderr(Stdio::inherit())
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
