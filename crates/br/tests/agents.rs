//! Coding agents as tasks, through the real CLI, with stand-in agents (scripts that behave like
//! the real CLIs: read the prompt as the profile passes it, edit files): `br agents` shows the
//! profiles in effect, a task names an agent instead of a command, and a plan that gets them
//! wrong is refused before anything is recorded.

mod common;

use common::TestRepo;
use serde_json::Value;

#[test]
fn br_agents_lists_the_built_ins_and_the_plan_s_own_over_them() {
    let repo = TestRepo::new();
    let built_in = repo.br(&["agents", "--json"]);
    assert_eq!(built_in.code, 0, "{}", built_in.stderr);
    let list: Value = serde_json::from_str(&built_in.stdout).expect("JSON");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["claude", "codex", "aider", "gemini"]);

    repo.write(
        "br.toml",
        r#"[agent.claude]
pool = "anthropic"
[agent.stand-in]
run = "sh agent.sh"
[pool.anthropic]
size = 2
[[task]]
id = "a"
agent = "stand-in"
"#,
    );
    let with_plan = repo.br(&["agents"]);
    assert_eq!(with_plan.code, 0, "{}", with_plan.stderr);
    let claude = with_plan
        .stdout
        .lines()
        .find(|l| l.starts_with("claude"))
        .expect("claude");
    assert!(
        claude.contains("plan") && claude.contains("anthropic"),
        "{claude}"
    );
    assert!(
        claude.contains("CLAUDE_CONFIG_DIR"),
        "the rest of the built-in stays: {claude}"
    );
    assert!(
        with_plan.stdout.lines().any(|l| l.starts_with("stand-in")),
        "{}",
        with_plan.stdout
    );
}

#[test]
fn a_task_runs_its_agent_on_its_prompt_and_lands() {
    let repo = TestRepo::new();
    // Like `aider --message-file`: the prompt arrives as a file the profile names.
    repo.write(
        "agent.sh",
        "test -f \"$1\" || { echo 'no prompt file' >&2; exit 9; }\n\
         head -n 1 \"$1\" > answer.txt\n",
    );
    repo.commit_plan(
        r#"name = "agents"
[agent.stand-in]
run = 'sh agent.sh "$BR_PROMPT_FILE"'
[[task]]
id = "answer"
agent = "stand-in"
prompt = "Answer forty-two."
"#,
    );
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let status = repo.status(&repo.session_id());
    let task = &status["tasks"][0];
    assert_eq!(task["landing"], "landed", "{status:#}");
    assert_eq!(task["run"], "sh agent.sh \"$BR_PROMPT_FILE\"");
    let branch = format!("br/{}/integration", status["slug"].as_str().expect("slug"));
    assert_eq!(
        repo.git(&["show", &format!("{branch}:answer.txt")]),
        "Answer forty-two."
    );
}

#[test]
fn a_plan_that_gets_an_agent_wrong_is_refused_before_anything_is_recorded() {
    let repo = TestRepo::new();
    for (plan, says) in [
        (
            "[[task]]\nid = \"a\"\nrun = \"x\"\nagent = \"claude\"\n",
            "has both `run` and `agent`",
        ),
        (
            "[[task]]\nid = \"a\"\nagent = \"gpt-9\"\n",
            "unknown agent `gpt-9`",
        ),
        (
            "[[task]]\nid = \"a\"\nagent = \"claude\"\npool = \"nope\"\n",
            "unknown pool `nope`",
        ),
    ] {
        repo.write("br.toml", plan);
        let run = repo.br(&["run", "--no-dashboard"]);
        assert_eq!(run.code, 2, "{plan}\n{}", run.stderr);
        assert!(run.stderr.contains(says), "{plan}\n{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    assert!(!repo.store_path().exists(), "nothing recorded");
}

/// `setup` runs once per slot before its first attempt and again when its inputs change, with
/// its output kept (`keep`); a setup that fails says so instead of the task's outcome.
#[test]
fn setup_runs_once_per_slot_and_again_when_its_inputs_change() {
    let repo = TestRepo::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let log = outside.path().join("setup.log");
    repo.write(".gitignore", "deps/\n");
    repo.write("deps.lock", "v1\n");
    repo.commit_plan(&format!(
        r#"name = "setup"
keep = ["deps/"]
setup = "echo ran >> {log} && mkdir -p deps && cp deps.lock deps/installed"
setup_inputs = ["deps.lock"]
[[task]]
id = "a"
run = "cat deps/installed > a.txt"
[[task]]
id = "b"
after = ["a"]
run = "cat deps/installed > b.txt && echo v2 > deps.lock"
[[task]]
id = "c"
after = ["b"]
run = "cat deps/installed > c.txt"
"#,
        log = log.display()
    ));
    let run = repo.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status(&repo.session_id());
    let branch = format!("br/{}/integration", status["slug"].as_str().expect("slug"));
    let show = |f: &str| repo.git(&["show", &format!("{branch}:{f}")]);
    assert_eq!(
        (show("a.txt"), show("b.txt"), show("c.txt")),
        ("v1".into(), "v1".into(), "v2".into())
    );
    assert_eq!(
        std::fs::read_to_string(&log)
            .expect("setup log")
            .lines()
            .count(),
        2,
        "once for the slot, once more when deps.lock changed"
    );

    let failing = TestRepo::new();
    failing.commit_plan(
        "setup = \"echo broken >&2; exit 3\"\n[[task]]\nid = \"a\"\nrun = \"echo never > a.txt\"\n",
    );
    let run = failing.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let status = failing.status(&failing.session_id());
    assert_eq!(status["tasks"][0]["outcome"], "spawn_failed", "{status:#}");
    let events = failing.br(&["events"]);
    assert!(
        events
            .stdout
            .contains("setup `echo broken >&2; exit 3` failed (exit 3)"),
        "{}",
        events.stdout
    );
}

/// A stand-in for `claude -p --output-format json`: works a little, prints its result object
/// with what it spent; task `b`'s first attempt hits the usage limit instead. Each attempt
/// writes `+`/`-` lines with a clock to a trace outside the repository.
const STAND_IN: &str = r#"trace="$1"
echo "+ $BR_TASK_ID $BR_ATTEMPT" >> "$trace"
sleep 0.3
if [ "$BR_TASK_ID" = b ] && [ "$BR_ATTEMPT" = 1 ]; then
  echo "- $BR_TASK_ID $BR_ATTEMPT" >> "$trace"
  echo "Claude AI usage limit reached|1767225600"
  exit 1
fi
cat "$BR_PROMPT_FILE" > "$BR_TASK_ID.txt"
echo "- $BR_TASK_ID $BR_ATTEMPT" >> "$trace"
echo '{"type":"result","subtype":"success","total_cost_usd":0.01,"usage":{"input_tokens":100,"output_tokens":10}}'
"#;

#[test]
fn a_pool_caps_its_agents_a_rate_limit_parks_it_and_usage_adds_up() {
    let repo = TestRepo::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let trace = outside.path().join("trace");
    repo.write("agent.sh", STAND_IN);
    repo.commit_plan(&format!(
        r#"name = "fleet"
[agent.stand-in]
run = 'sh agent.sh {trace}'
usage = "claude_json"
rate_limit = "usage limit reached"
pool = "p"
[pool.p]
size = 2
backoff = "1s"
[[task]]
id = "a"
agent = "stand-in"
prompt = "a"
[[task]]
id = "b"
agent = "stand-in"
prompt = "b"
[[task]]
id = "c"
agent = "stand-in"
prompt = "c"
[[task]]
id = "d"
agent = "stand-in"
prompt = "d"
"#,
        trace = trace.display()
    ));
    let run = repo.br(&["run", "--workers", "4", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let status = repo.status(&repo.session_id());
    assert_eq!(status["status"], "completed", "{status:#}");

    // Never more than two of the pool at once, with four workers free.
    let mut running = 0;
    let mut most = 0;
    for line in std::fs::read_to_string(&trace).expect("trace").lines() {
        running += if line.starts_with('+') { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!(most, 2, "the pool of 2 ran {most} at once");

    // b's rate limit spent no retry (retries = 0) and parked the pool; b ran again once the
    // backoff had passed.
    let b = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == "b")
        .expect("b");
    assert_eq!(
        (b["state"].as_str(), b["attempts"].as_u64()),
        (Some("succeeded"), Some(2))
    );
    let events = repo.events();
    let parked: Vec<_> = events
        .iter()
        .filter(|e| e.kind == br_core::EventKind::PoolParked)
        .collect();
    assert_eq!(parked.len(), 1, "{events:?}");
    let detail = common::detail(parked[0]);
    assert_eq!(detail["pool"], "p");
    assert!(
        detail["reason"]
            .as_str()
            .is_some_and(|r| r.contains("usage limit reached")),
        "{detail}"
    );
    let resumed = events
        .iter()
        .find(|e| {
            e.kind == br_core::EventKind::TaskStarted
                && e.task_id.as_ref().is_some_and(|t| t.as_str() == "b")
                && e.attempt == Some(br_core::Attempt(2))
        })
        .expect("b's second attempt");
    assert!(
        resumed.at.millis() >= parked[0].at.millis() + 1000,
        "b ran again only after the pool's backoff"
    );
    let outcomes = repo.br(&["events", "--json"]);
    assert!(
        outcomes.stdout.contains("rate_limited"),
        "{}",
        outcomes.stdout
    );

    // Four successful attempts spent 100 in, 10 out and $0.01 each.
    assert_eq!(
        status["usage"],
        serde_json::json!({"input_tokens": 400, "output_tokens": 40, "cost_usd": 0.04})
    );
    assert_eq!(b["usage"]["input_tokens"], 100);
    assert_eq!(b["agent"], "stand-in");
    assert_eq!(b["pool"], "p");
    let summary = repo.br(&["summary", "--json"]);
    let summary: Value = serde_json::from_str(&summary.stdout).expect("summary JSON");
    assert_eq!(summary["usage"]["cost_usd"], 0.04);
}

/// Two agents at once: each has its own config directory (a copy of `config_from`), its own
/// block of ports, and the checkout's untracked `.env` — which never reaches a branch. The
/// user's own config directory is never written.
#[test]
fn concurrent_agents_get_their_own_config_ports_and_env_file() {
    let repo = TestRepo::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let user_config = outside.path().join("user-config");
    std::fs::create_dir_all(user_config.join("projects")).expect("mkdir");
    std::fs::write(user_config.join("settings.json"), "{\"model\": \"x\"}\n").expect("write");
    std::fs::write(user_config.join("projects/huge.jsonl"), "history\n").expect("write");
    let seen = outside.path().join("seen");
    std::fs::create_dir_all(&seen).expect("mkdir");
    repo.write(
        "agent.sh",
        &format!(
            r#"out={seen}/$BR_TASK_ID
echo "$STAND_IN_HOME" > $out.config
echo "$BR_PORT_BASE $BR_PORT_COUNT" > $out.ports
cat .env > $out.env
test -f "$STAND_IN_HOME/settings.json" && echo yes > $out.settings
test -e "$STAND_IN_HOME/projects" && echo copied > $out.history
echo "written by $BR_TASK_ID" > "$STAND_IN_HOME/state.json"
echo $BR_TASK_ID >> {seen}/started
n=0; while [ $(wc -l < {seen}/started) -lt 2 ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
echo done > $BR_TASK_ID.txt
"#,
            seen = seen.display()
        ),
    );
    repo.write(".gitignore", ".env\n");
    repo.git(&["add", "--all"]);
    repo.git(&["commit", "--quiet", "-m", "agent"]);
    // Untracked (and ignored) in the user's checkout, as secrets are.
    repo.write(".env", "TOKEN=s3cret\n");
    repo.write(
        "br.toml",
        &format!(
            r#"name = "isolated"
copy = [".env"]
ports = 5
[agent.stand-in]
run = "sh agent.sh"
config_env = "STAND_IN_HOME"
config_from = "{config}"
[[task]]
id = "a"
agent = "stand-in"
[[task]]
id = "b"
agent = "stand-in"
"#,
            config = user_config.display()
        ),
    );
    let run = repo.br(&["run", "--workers", "2", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let read = |f: &str| std::fs::read_to_string(seen.join(f)).unwrap_or_default();
    let (config_a, config_b) = (read("a.config"), read("b.config"));
    assert!(!config_a.trim().is_empty());
    assert_ne!(config_a, config_b, "each agent its own config directory");
    assert!(!config_a.starts_with(&*user_config.to_string_lossy()));
    assert_eq!(
        (read("a.settings"), read("b.settings")),
        ("yes\n".into(), "yes\n".into())
    );
    assert_eq!(read("a.history"), "", "the agent's history is not copied");
    assert!(
        !user_config.join("state.json").exists(),
        "the user's own config is never written"
    );
    let ports = |f: &str| -> u32 {
        read(f)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port base")
    };
    let (pa, pb) = (ports("a.ports"), ports("b.ports"));
    assert!(
        pa.abs_diff(pb) >= 5,
        "overlapping port blocks: {pa} and {pb}"
    );
    assert!(read("a.ports").ends_with(" 5\n"));
    assert_eq!(read("a.env"), "TOKEN=s3cret\n");
    assert_eq!(read("b.env"), "TOKEN=s3cret\n");
    let status = repo.status(&repo.session_id());
    assert_eq!(status["landed_tasks"], 2, "{status:#}");
    for task in ["a", "b"] {
        let branch = format!("br/{}/{task}", status["slug"].as_str().expect("slug"));
        let files = repo.git(&["ls-tree", "-r", "--name-only", &branch]);
        assert!(files.lines().any(|f| f == format!("{task}.txt")), "{files}");
        assert!(
            !files.lines().any(|f| f == ".env"),
            "the copy never lands: {files}"
        );
    }
}

/// A stand-in for `claude -p --output-format json` that does its task and prints its result
/// object: 100 tokens in, 10 out, a cent.
const SPENDS_A_CENT: &str = r#"cat "$BR_PROMPT_FILE" > "$BR_TASK_ID.txt"
echo '{"type":"result","total_cost_usd":0.01,"usage":{"input_tokens":100,"output_tokens":10}}'
"#;

#[test]
fn status_and_summary_say_what_the_agents_spent() {
    let repo = TestRepo::new();
    repo.write("agent.sh", SPENDS_A_CENT);
    repo.commit_plan(
        r#"name = "spend"
[agent.stand-in]
run = 'sh agent.sh'
usage = "claude_json"
[[task]]
id = "a"
agent = "stand-in"
prompt = "a"
[[task]]
id = "b"
agent = "stand-in"
prompt = "b"
[[task]]
id = "plain"
run = "true"
"#,
    );
    let run = repo.br(&["run", "--workers", "2", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let status = repo.br(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let text = &status.stdout;
    // Two agents spent a cent each; all three tasks landed.
    assert!(
        text.lines()
            .any(|l| l == "spent $0.0200 · 200 in / 20 out tokens · $0.0067 per landed task"),
        "{text}"
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("TASK"))
        .expect("header");
    assert!(header.contains(" COST "), "{header}");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row {id}: {text}"))
    };
    assert!(row("a").contains("$0.0100"), "{}", row("a"));
    assert!(row("b").contains("$0.0100"), "{}", row("b"));
    assert!(!row("plain").contains('$'), "{}", row("plain"));

    let summary = repo.br(&["summary"]);
    assert_eq!(summary.code, 0, "{}", summary.stderr);
    assert!(
        summary
            .stdout
            .lines()
            .any(|l| l == "spent     $0.0200 · 200 in / 20 out tokens"),
        "{}",
        summary.stdout
    );

    // A store where nothing reported usage says nothing of it.
    let other = TestRepo::new();
    other.commit_plan("[[task]]\nid = \"t\"\nrun = \"true\"\n");
    let run = other.br(&["run", "--workers", "1", "--no-dashboard"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let quiet = other.br(&["status"]).stdout + &other.br(&["summary"]).stdout;
    assert!(
        !quiet.contains("spent") && !quiet.contains("COST"),
        "{quiet}"
    );
}

#[test]
fn a_parked_pool_shows_in_br_pools_status_and_the_dashboard() {
    let repo = TestRepo::new();
    // The line that shows the limit, in bold: an agent's output may hold anything, and is
    // shown escaped.
    repo.write(
        "agent.sh",
        "printf '\\033[1mClaude AI usage limit reached|1767225600\\033[0m\\n'\nexit 1\n",
    );
    repo.commit_plan(
        r#"name = "limited"
[agent.stand-in]
run = 'sh agent.sh'
rate_limit = "usage limit reached"
pool = "p"
[pool.p]
size = 2
backoff = "1h"
[pool.spare]
size = 1
[[task]]
id = "a"
agent = "stand-in"
prompt = "a"
[[task]]
id = "b"
agent = "stand-in"
prompt = "b"
"#,
    );
    let before = repo.br(&["pools", "--json"]);
    assert_eq!(before.code, 0, "{}", before.stderr);
    assert_eq!(before.stdout.trim(), "[]", "no pool before a plan made one");
    assert_eq!(
        repo.br(&["pools"]).stdout.lines().next(),
        Some("no pools: a plan's [pool.NAME] tables (or an agent's `pool`) make them")
    );

    let submitted = repo.br(&["submit"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let session = repo.session_id();
    // One worker: the first attempt hits the limit and parks the pool for an hour, so it finds
    // nothing more to claim and leaves.
    let worker = repo.br(&["worker", "--session", &session, "--exit-when-idle"]);
    assert_eq!(worker.code, 0, "{}\n{}", worker.stdout, worker.stderr);

    let pools = repo.br(&["pools", "--json"]);
    assert_eq!(pools.code, 0, "{}", pools.stderr);
    let pools: Value = serde_json::from_str(&pools.stdout).expect("JSON");
    let names: Vec<&str> = pools
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["p", "spare"]);
    let p = &pools[0];
    assert_eq!(
        (&p["size"], &p["running"], &p["backoff_ms"], &p["parked"]),
        (
            &Value::from(2),
            &Value::from(0),
            &Value::from(3_600_000),
            &Value::Bool(true)
        ),
        "{p}"
    );
    assert!(p["parked_until"].is_string(), "{p}");
    assert_eq!(
        p["parked_reason"],
        "\u{1b}[1mClaude AI usage limit reached|1767225600\u{1b}[0m"
    );
    assert_eq!(
        (
            &pools[1]["size"],
            &pools[1]["parked"],
            &pools[1]["backoff_ms"]
        ),
        (&Value::from(1), &Value::Bool(false), &Value::from(60_000)),
        "a pool no task ran in, with the default backoff"
    );

    let text = repo.br(&["pools"]).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("POOL"), "{text}");
    assert!(
        lines[1].starts_with("p ")
            && lines[1].contains(" 1h ")
            && lines[1].contains("parked until ")
            && lines[1].ends_with("\\u{1b}[1mClaude AI usage limit reached|1767225600\\u{1b}[0m"),
        "{text}"
    );
    assert!(
        lines[2].split_whitespace().collect::<Vec<_>>() == ["spare", "1", "0", "1m", "-", "-"],
        "{text}"
    );

    // Both tasks are ready, and wait for the pool.
    let status = repo.br(&["status", &session]).stdout;
    for id in ["a", "b"] {
        let row = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row {id}: {status}"));
        assert!(
            row.contains("ready") && row.contains("waiting: pool p parked until "),
            "{row}"
        );
    }
    let frame = repo.br(&["dashboard", "--once"]);
    assert_eq!(frame.code, 0, "{}", frame.stderr);
    let pools_line = frame
        .stdout
        .lines()
        .find(|l| l.contains("Pools "))
        .unwrap_or_else(|| panic!("{}", frame.stdout));
    assert!(
        pools_line.contains("p 0/2 running, parked until ")
            && pools_line.contains("spare 0/1 running"),
        "{pools_line}"
    );
    assert!(frame.stdout.contains("parked"), "{}", frame.stdout);
    for (what, text) in [
        ("pools", &text),
        ("status", &status),
        ("dashboard", &frame.stdout),
    ] {
        assert!(
            !text.contains('\u{1b}'),
            "br {what} let an ESC through: {text}"
        );
    }
}

/// The built-in `claude` profile, with a stand-in `claude` on PATH that behaves like the real CLI
/// in print mode: the prompt on stdin, `-p --output-format json` on its command line, its
/// config directory in `CLAUDE_CONFIG_DIR`, one JSON result object on stdout.
#[test]
fn the_built_in_claude_profile_passes_the_prompt_and_reads_usage_from_its_json() {
    let repo = TestRepo::new();
    let bin = tempfile::tempdir().expect("temp dir");
    let seen = tempfile::tempdir().expect("temp dir");
    let claude = bin.path().join("claude");
    std::fs::write(
        &claude,
        format!(
            r#"#!/bin/sh
echo "$*" > {seen}/args
echo "$CLAUDE_CONFIG_DIR" > {seen}/config
prompt=$(cat)
echo "$prompt" > {seen}/prompt
echo "$prompt" | head -n 1 > answer.txt
echo '{{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":0.0421,"usage":{{"input_tokens":1200,"cache_read_input_tokens":300,"output_tokens":150}}}}'
"#,
            seen = seen.path().display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&claude, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    repo.commit_plan("name = \"claude\"\n[[task]]\nid = \"answer\"\nagent = \"claude\"\nprompt = \"Say hello.\"\n",
    );
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = repo
        .br_command(&["run", "--workers", "1", "--no-dashboard"])
        .env("PATH", path)
        .output()
        .expect("br run");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(seen.path().join(f)).expect(f);
    let args = read("args");
    assert!(
        args.contains("-p") && args.contains("--output-format json"),
        "{args}"
    );
    assert!(
        read("prompt").starts_with("Say hello."),
        "{}",
        read("prompt")
    );
    let config = read("config");
    assert!(
        config.contains("/br/agents/"),
        "a config dir of its own: {config}"
    );
    let status = repo.status(&repo.session_id());
    let task = &status["tasks"][0];
    assert_eq!(task["agent"], "claude");
    assert_eq!(
        task["usage"],
        serde_json::json!({"input_tokens": 1500, "output_tokens": 150, "cost_usd": 0.0421})
    );
    assert_eq!(task["landing"], "landed", "{status:#}");
    // And per attempt.
    let verbose = repo.br(&["status", "-v"]);
    assert!(
        verbose.stdout.contains("attempt 1 on ")
            && verbose
                .stdout
                .contains("succeeded, spent $0.0421 · 1.5k in / 150 out"),
        "{}",
        verbose.stdout
    );
}
