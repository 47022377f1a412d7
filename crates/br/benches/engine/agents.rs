//! The agent fleet benchmark: 16 stand-in coding agents (shell scripts that sleep 1–3 s as if
//! thinking, then edit files; a quarter append to one shared file, under its lock) on 4 workers
//! with a pool of 3, through the real `br`, one attempt hitting an injected rate limit (its pool
//! parks for 2 s). Prints the wall time against the ideal, how many tasks landed without a
//! repair, and br's own CPU time per task: the CPU of `br run` and everything it ran, less the
//! CPU of the same 16 scripts run by `xargs -P 3` in the same process.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fleet::git;
use crate::worktrees::cpu_so_far;

const BR: &str = env!("CARGO_BIN_EXE_br");
const AGENTS: u32 = 16;
const WORKERS: u32 = 4;
const POOL: u32 = 3;
const BACKOFF_SECONDS: u32 = 2;

/// Seconds agent `i` "thinks": 1, 2 or 3.
fn think(i: u32) -> u32 {
    1 + i % 3
}

/// Whether agent `i` appends to the shared file (a quarter of them).
fn shares(i: u32) -> bool {
    i.is_multiple_of(4)
}

const AGENT: &str = r#"#!/bin/sh
# A stand-in coding agent: thinks, edits, reports what it spent. Agent 5's first attempt hits
# the usage limit.
i=$1; seconds=$2; shared=$3
if [ "$i" = 5 ] && [ "${BR_ATTEMPT:-1}" = 1 ]; then echo "usage limit reached"; exit 1; fi
sleep "$seconds"
mkdir -p own
echo "agent $i" > "own/$i.txt"
if [ "$shared" = 1 ]; then echo "agent $i" >> shared.txt; fi
echo '{"type":"result","total_cost_usd":0.02,"usage":{"input_tokens":1500,"output_tokens":300}}'
"#;

pub(crate) fn agents() {
    println!(
        "\nagent fleet: {AGENTS} stand-in agents (1-3 s each, a quarter appending to one shared \
         file under its lock), {WORKERS} workers, a pool of {POOL}, one rate limit (backoff \
         {BACKOFF_SECONDS} s)"
    );
    let dir = tempfile::Builder::new()
        .prefix("br-agents-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();
    git(root, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(root.join("agent.sh"), AGENT).expect("write");
    std::fs::write(root.join("shared.txt"), "shared\n").expect("write");
    std::fs::write(root.join(".git/info/exclude"), "br.toml\n").expect("write");
    git(root, &["add", "--all"]);
    git(root, &["commit", "--quiet", "-m", "fleet base"]);

    // The peer: the same scripts, three at a time (the pool's size), nothing landed.
    let peer_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(peer_dir.path().join("agent.sh"), AGENT).expect("write");
    let cpu_before = cpu_so_far();
    let started = Instant::now();
    let mut xargs = Command::new("xargs")
        .args(["-P", &POOL.to_string(), "-L", "1", "sh", "agent.sh"])
        .current_dir(peer_dir.path())
        .env("BR_ATTEMPT", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("xargs");
    {
        let mut stdin = xargs.stdin.take().expect("stdin");
        for i in 0..AGENTS {
            writeln!(stdin, "{i} {} {}", think(i), u8::from(shares(i))).expect("write");
        }
    }
    xargs.wait().expect("xargs");
    let peer_wall = started.elapsed();
    let peer_cpu = cpu_so_far() - cpu_before;

    let mut plan = format!(
        "name = \"agents\"\n\
         [agent.stand-in]\nrun = 'sh agent.sh \"$AGENT_I\" \"$AGENT_SECONDS\" \"$AGENT_SHARED\"'\n\
         usage = \"claude_json\"\nrate_limit = \"usage limit reached\"\npool = \"model\"\n\
         [pool.model]\nsize = {POOL}\nbackoff = \"{BACKOFF_SECONDS}s\"\n"
    );
    for i in 0..AGENTS {
        let files = if shares(i) {
            format!("[\"own/{i}.txt\", \"shared.txt\"]")
        } else {
            format!("[\"own/{i}.txt\"]")
        };
        plan.push_str(&format!(
            "[[task]]\nid = \"agent-{i}\"\nagent = \"stand-in\"\nprompt = \"agent {i}\"\n\
             files = {files}\n\
             env = {{ AGENT_I = \"{i}\", AGENT_SECONDS = \"{}\", AGENT_SHARED = \"{}\" }}\n",
            think(i),
            u8::from(shares(i))
        ));
    }
    std::fs::write(root.join("br.toml"), plan).expect("write plan");
    let cpu_before = cpu_so_far();
    let started = Instant::now();
    let out = Command::new(BR)
        .args(["run", "--workers", &WORKERS.to_string(), "--json"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .expect("br run");
    let wall = started.elapsed();
    let br_cpu = cpu_so_far() - cpu_before;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "br run printed no status ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    let landed = tasks.iter().filter(|t| t["landing"] == "landed").count();
    let without_repair = tasks
        .iter()
        .filter(|t| t["landing"] == "landed" && t["repairs"] == 0)
        .count();

    // The ideal: the pool runs three at a time, so the work takes at least a third of its sum,
    // and the shared file's appenders one after another; the rate-limited agent adds its
    // backoff before it can run again.
    let work: u32 = (0..AGENTS).map(think).sum();
    let shared: u32 = (0..AGENTS).filter(|i| shares(*i)).map(think).sum();
    let ideal = f64::from(work) / f64::from(POOL);
    let ideal = ideal.max(f64::from(shared));
    let per_task_cpu = br_cpu.saturating_sub(peer_cpu) / AGENTS;
    println!(
        "  br: {:.2} s wall, status {}; landed {landed}/{AGENTS}, {without_repair} without a \
         repair; spent ${:.2}",
        wall.as_secs_f64(),
        status["status"].as_str().unwrap_or("?"),
        status["usage"]["cost_usd"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  ideal (work / pool of {POOL}, or the shared file's appenders in a row): {ideal:.2} s; \
         br at {:.2}× the ideal, {:.2} s over it, of which the rate limit's backoff is up to \
         {BACKOFF_SECONDS} s",
        wall.as_secs_f64() / ideal,
        wall.as_secs_f64() - ideal,
    );
    println!(
        "  xargs -P {POOL} (same scripts, no landing, no rate limit): {:.2} s wall",
        peer_wall.as_secs_f64()
    );
    println!(
        "  CPU: br run and all it ran {:.0} ms, the scripts alone {:.0} ms: br's own {:.1} ms \
         per task (claims, worktree slots, commits, landing, store)",
        ms(br_cpu),
        ms(peer_cpu),
        ms(per_task_cpu)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
