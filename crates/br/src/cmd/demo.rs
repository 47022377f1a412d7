//! `br demo`: a throwaway repository with a sample plan — dependencies, a shared file, a flaky
//! task that succeeds on retry — run live, so a new user sees br work in one command.

use std::path::Path;

use anyhow::Context as _;
use br_git::Git;

use crate::cli::{DemoArgs, DriveArgs};
use crate::cmd::plan::{load_plan, run_plan};
use crate::context::Context;
use crate::exit::Exit;
use crate::output::print;

const DEMO_PLAN: &str = r#"# The br demo: seven tasks on a pool of workers, each in its own git worktree and branch.
name = "demo"
heartbeat_timeout = "10s"

[[task]]
id = "schema"
run = "sleep 0.4 && mkdir -p gen && echo 'create table users (id int);' > gen/schema.sql"
files = ["gen/**"]

# api and web wait for schema, and both write VERSION: br never runs them at once.
[[task]]
id = "api"
run = "sleep 0.8 && echo 'api v2' > src/api/lib.txt && echo 3.1 > VERSION"
files = ["src/api/**", "VERSION"]
after = ["schema"]

[[task]]
id = "web"
run = "sleep 0.8 && echo 'web v2' > src/web/app.txt && echo 3.1 > VERSION"
files = ["src/web/**", "VERSION"]
after = ["schema"]

[[task]]
id = "docs"
run = "sleep 0.6 && echo '## API' >> docs/guide.md"
files = ["docs/**"]

[[task]]
id = "lint"
run = "sleep 0.5 && test -f README.md"

# Fails on its first attempt, succeeds on the retry.
[[task]]
id = "flaky"
run = '''sleep 0.3; if [ "$BR_ATTEMPT" -lt 2 ]; then echo "attempt $BR_ATTEMPT fails on purpose" >&2; exit 1; fi; echo "attempt $BR_ATTEMPT passes"'''
retries = 1

[[task]]
id = "package"
run = "sleep 0.3 && mkdir -p dist && echo packaged > dist/package.txt"
files = ["dist/**"]
after = ["api", "web", "docs", "lint", "flaky"]
"#;

const FILES: &[(&str, &str)] = &[
    (
        "README.md",
        "# demo\n\nA throwaway repository made by `br demo`.\n",
    ),
    ("src/api/lib.txt", "api\n"),
    ("src/web/app.txt", "web\n"),
    ("docs/guide.md", "# Guide\n"),
    ("VERSION", "3.0\n"),
];

pub(super) fn demo(ctx: &Context, args: DemoArgs) -> anyhow::Result<Exit> {
    // Settings first: a bad one is said before a repository is made for nothing.
    let max_log = crate::settings::max_log(None)?;
    let dir = tempfile::Builder::new()
        .prefix("br-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo")?;
    make_repository(dir.path())?;
    if !ctx.json {
        print(&format!(
            "br demo: a throwaway repository at {}\n\
             seven tasks, each in its own worktree: schema first; api and web after it, never at\n\
             once (both write VERSION); docs and lint alongside; flaky fails once and passes on\n\
             its retry; package last\n",
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
        let branches = Git::new(dir.path())
            .run([
                "for-each-ref",
                "--format=  %(refname:short)  %(subject)",
                "refs/heads/br",
            ])
            .unwrap_or_default();
        print(&format!(
            "each task's work is on its own branch:\n{branches}\n"
        ))?;
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

fn make_repository(dir: &Path) -> anyhow::Result<()> {
    for (name, content) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    std::fs::write(dir.join("br.toml"), DEMO_PLAN)?;
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
    run(&["init", "--quiet"])?;
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
