//! `br demo`: a throwaway repository with a sample plan — a dependent using its dependency's
//! output, two tasks stacking under a lock, a flaky task that succeeds on retry, a conflict
//! repaired from its context, everything landing on one integration branch — run live, so a new
//! user sees br work in one command.

use std::path::Path;

use anyhow::Context as _;
use br_git::Git;

use crate::cli::{DemoArgs, DriveArgs};
use crate::cmd::plan::{load_plan, run_plan};
use crate::context::Context;
use crate::exit::Exit;
use crate::output::print;

const DEMO_PLAN: &str = r#"# The br demo: eight tasks on a pool of workers, each in its own git worktree and branch. Each
# lands on the session's integration branch as soon as it succeeds, and later attempts start from
# what has landed.
name = "demo"
heartbeat_timeout = "10s"

[[task]]
id = "schema"
run = "sleep 0.4 && mkdir -p gen && echo 'create table users (id int);' > gen/schema.sql"
files = ["gen/**"]

# api and web use schema's output (they start from a tip that holds it), and both add a line to
# CHANGELOG.md: under that lock they run one after the other, the second on top of the first.
[[task]]
id = "api"
run = "sleep 0.6 && echo \"api for: $(cat gen/schema.sql)\" > src/api/lib.txt && echo '- api: users table' >> CHANGELOG.md"
files = ["src/api/**", "CHANGELOG.md"]
after = ["schema"]

[[task]]
id = "web"
run = "sleep 0.6 && echo \"web for: $(cat gen/schema.sql)\" > src/web/app.txt && echo '- web: users page' >> CHANGELOG.md"
files = ["src/web/**", "CHANGELOG.md"]
after = ["schema"]

[[task]]
id = "docs"
run = "sleep 0.5 && echo '## API' >> docs/guide.md"
files = ["docs/**"]

# Fails on its first attempt, succeeds on the retry.
[[task]]
id = "flaky"
run = '''sleep 0.3; if [ "$BR_ATTEMPT" -lt 2 ]; then echo "attempt $BR_ATTEMPT fails on purpose" >&2; exit 1; fi; echo "attempt $BR_ATTEMPT passes"'''
retries = 1

[[task]]
id = "title"
run = "sleep 0.3 && sed -i '1s/.*/# demo: many hands, one branch/' README.md"
files = ["README.md"]

# Like an agent working from an old checkout (start = "base"), tagline rewrites the line title
# changed: it cannot land. br reruns it on the new tip, and its context file says why; reading it,
# the rerun keeps title's line and adds its own below.
[[task]]
id = "tagline"
start = "base"
after = ["title"]
files = ["README.md"]
run = '''sleep 0.3
if grep -q '"reason": *"conflict"' "$BR_CONTEXT_FILE"; then
  echo "attempt $BR_ATTEMPT, told why: a conflict on README.md; keeping the other change"
  echo 'Parallel work, integrated as it runs.' >> README.md
else
  sed -i '1s/.*/# demo: parallel work/' README.md
fi'''

[[task]]
id = "package"
run = "sleep 0.3 && mkdir -p dist && cat src/api/lib.txt src/web/app.txt CHANGELOG.md > dist/package.txt"
files = ["dist/**"]
after = ["api", "web", "docs", "flaky", "tagline"]
"#;

const FILES: &[(&str, &str)] = &[
    (
        "README.md",
        "# demo\n\nA throwaway repository made by `br demo`.\n",
    ),
    ("CHANGELOG.md", "# Changes\n"),
    ("src/api/lib.txt", "api\n"),
    ("src/web/app.txt", "web\n"),
    ("docs/guide.md", "# Guide\n"),
];

/// `br demo --agents`: a fleet of stand-in coding agents (a script shipped in the demo
/// repository, not a model: no API key, no network) through prompts, a pool, a rate limit, a
/// conflict repaired from its context, landing, and what it all cost.
const AGENTS_PLAN: &str = r#"# The br agents demo: six coding-agent tasks on a pool of workers. The agent is a stand-in
# (agent.sh): it reads its prompt, edits files, and prints a result with what it spent, as
# `claude -p --output-format json` does. With a real agent, `agent = "claude"` is all it takes.
name = "agents"
heartbeat_timeout = "10s"

[agent.stand-in]
run = 'sh agent.sh'
usage = "claude_json"                  # read what each attempt spent from its JSON result
rate_limit = "usage limit reached"     # output like this parks the pool, and spends no retry
pool = "model"

# At most two agents at once, whatever the number of workers; a rate limit parks the pool.
[pool.model]
size = 2
backoff = "2s"

[[task]]
id = "search"
agent = "stand-in"
prompt = "write src/search.txt: find users by name"
files = ["src/search.txt"]

[[task]]
id = "export"
agent = "stand-in"
prompt = "write src/export.txt: export users as CSV"
files = ["src/export.txt"]

# Its first attempt hits the usage limit: the pool waits out its backoff, then it runs again.
[[task]]
id = "audit"
agent = "stand-in"
prompt = "write src/audit.txt: log every login"
files = ["src/audit.txt"]

[[task]]
id = "title"
agent = "stand-in"
prompt = "title: Users, searched and exported"
files = ["README.md"]

# Works from an old checkout (start = "base"), so its title collides with the one that landed;
# rerun on the new tip, it reads why in its prompt and keeps the other title.
[[task]]
id = "tagline"
agent = "stand-in"
start = "base"
after = ["title"]
prompt = "title: Users, fast"
files = ["README.md"]

[[task]]
id = "changelog"
agent = "stand-in"
after = ["search", "export", "audit"]
prompt = "write CHANGELOG.md: search, export and audit landed"
files = ["CHANGELOG.md"]
"#;

/// The stand-in agent: follows a one-line prompt (`write FILE: TEXT` or `title: TEXT`); on a
/// rerun after a conflict its context file says so, and it keeps what landed. Prints a result object
/// with what it "spent", like `claude -p --output-format json`.
const STAND_IN_AGENT: &str = r#"#!/bin/sh
# A stand-in for a coding agent, for `br demo --agents`.
set -e
sleep 0.5
if [ "$BR_TASK_ID" = audit ] && [ "$BR_ATTEMPT" = 1 ]; then
  echo "Claude AI usage limit reached (stand-in)"
  exit 1
fi
ask=$(head -n 1 "$BR_PROMPT_FILE")
case "$ask" in
  "write "*)
    file=${ask#write }; file=${file%%:*}; text=${ask#*: }
    mkdir -p "$(dirname "$file")"
    echo "$text" > "$file"
    ;;
  "title: "*)
    if grep -q '"reason": *"conflict"' "$BR_CONTEXT_FILE"; then
      echo "told why: a conflict; keeping the landed title and adding a tagline"
      echo "${ask#title: }." >> README.md
    else
      sed -i "1s/.*/# ${ask#title: }/" README.md
    fi
    ;;
esac
words=$(wc -w < "$BR_PROMPT_FILE")
printf '{"type":"result","subtype":"success","total_cost_usd":0.0%s,"usage":{"input_tokens":%s,"output_tokens":%s}}\n' \
  "$((words + 10))" "$((words * 40 + 1200))" "$((words * 9 + 80))"
"#;

const AGENTS_FILES: &[(&str, &str)] = &[
    (
        "README.md",
        "# Users\n\nA throwaway repository made by `br demo --agents`.\n",
    ),
    ("src/users.txt", "users\n"),
    ("agent.sh", STAND_IN_AGENT),
];

pub(super) fn demo(ctx: &Context, args: DemoArgs) -> anyhow::Result<Exit> {
    // Settings first: a bad one is said before a repository is made for nothing.
    let max_log = crate::settings::max_log(None)?;
    let dir = tempfile::Builder::new()
        .prefix("br-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo")?;
    let (plan_text, files) = if args.agents {
        (AGENTS_PLAN, AGENTS_FILES)
    } else {
        (DEMO_PLAN, FILES)
    };
    make_repository(dir.path(), plan_text, files)?;
    if args.agents && !ctx.json {
        print(&format!(
            "br demo --agents: a throwaway repository at {}\n\
             six coding-agent tasks (a stand-in agent: no API key needed) in a pool of two: each\n\
             reads its prompt, edits files and says what it spent; audit hits the usage limit and\n\
             its pool waits it out; tagline collides with title and is rerun, told why; every\n\
             task lands on one integration branch\n",
            dir.path().display(),
        ))?;
    } else if !ctx.json {
        print(&format!(
            "br demo: a throwaway repository at {}\n\
             eight tasks, each in its own worktree, each landing on one integration branch as it\n\
             succeeds: api and web build on schema's output and take turns on CHANGELOG.md; flaky\n\
             fails once and passes on its retry; tagline collides with title and is rerun, told\n\
             why; package last, on top of everything\n",
            dir.path().display(),
        ))?;
    }
    // The demo keeps its own store inside the throwaway repository, whatever BR_STORE says.
    let demo_ctx = Context::new(Some(dir.path().to_path_buf()), None, ctx.json)?;
    let (plan, path) = load_plan(&demo_ctx, Path::new("br.toml"))?;
    let drive = DriveArgs {
        workers: Some(args.workers),
        no_dashboard: false,
        heartbeat_interval: std::time::Duration::from_secs(1),
        kill_grace: None,
        max_log: Some(max_log),
    };
    let exit = run_plan(&demo_ctx, plan, Some(path), &drive)?;
    if !ctx.json {
        print(&integrated(dir.path())?)?;
        if args.agents {
            print(&spent(&demo_ctx)?)?;
        }
    }
    if !ctx.json {
        if args.keep {
            let kept = dir.keep();
            print(&format!(
                "kept the demo repository: explore it with\n  br -C {} status -v\n  br -C {} events\n",
                kept.display(),
                kept.display()
            ))?;
        } else {
            print("removed the demo repository (br demo --keep leaves it to explore)\n")?;
        }
    } else if args.keep {
        let _ = dir.keep();
    }
    Ok(exit)
}

/// What the session left on its integration branch: its commits and the files the tasks shared.
fn integrated(dir: &Path) -> anyhow::Result<String> {
    let git = Git::new(dir);
    let branches = git
        .run([
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/br/*/integration",
        ])
        .unwrap_or_default();
    let Some(branch) = branches.lines().next() else {
        return Ok("nothing landed\n".into());
    };
    let log = git
        .run([
            "log",
            "--first-parent",
            "--format=  %h %s",
            &format!("main..{branch}"),
        ])
        .unwrap_or_default();
    let show = |file: &str| -> String {
        git.run(["show", &format!("{branch}:{file}")])
            .unwrap_or_default()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect()
    };
    Ok(format!(
        "what landed on {branch}, a merge per task that changed something (your own branches \
         are untouched):\n{log}\n\
         README.md there:\n{}CHANGELOG.md there:\n{}",
        show("README.md"),
        show("CHANGELOG.md")
    ))
}

/// What the session's agents spent, in all and per landed task.
fn spent(ctx: &Context) -> anyhow::Result<String> {
    let store = ctx.open_store()?;
    let Some(session) = store
        .list_sessions(&br_store::SessionFilter {
            status: None,
            limit: Some(1),
        })?
        .into_iter()
        .next()
    else {
        return Ok(String::new());
    };
    let per_landed = if session.landed_tasks > 0 {
        format!(
            ", ${:.4} per landed task",
            session.usage.cost_usd() / f64::from(session.landed_tasks)
        )
    } else {
        String::new()
    };
    Ok(format!(
        "the agents spent {}{per_landed} (br status --json has it per attempt and task)\n",
        session.usage.describe()
    ))
}

fn make_repository(dir: &Path, plan: &str, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (name, content) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    std::fs::write(dir.join("br.toml"), plan)?;
    let git = Git::new(dir);
    // The demo must work whatever the user's git configuration: no hooks, a fixed identity.
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = git
            .command(args)
            .env("GIT_AUTHOR_NAME", "br demo")
            .env("GIT_AUTHOR_EMAIL", "demo@br.invalid")
            .env("GIT_COMMITTER_NAME", "br demo")
            .env("GIT_COMMITTER_EMAIL", "demo@br.invalid")
            .output()
            .context("cannot run git (is it installed?)")?;
        if !out.status.success() {
            anyhow::bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    run(&["init", "--quiet", "--initial-branch=main"])?;
    run(&["add", "--all"])?;
    run(&[
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "--quiet",
        "--no-verify",
        "-m",
        "demo: initial commit",
    ])?;
    Ok(())
}
