//! Commands that start from a plan: `init`, `submit`, `run`, `start`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use br_core::Plan;
use br_core::plan::Isolation;
use br_store::{NewSession, Session, Store};

use crate::cli::{DriveArgs, InitArgs, RunArgs, StartArgs, SubmitArgs};
use crate::context::Context;
use crate::drive::{DriveOptions, default_workers, drive, finish, kill_grace};
use crate::escape::esc;
use crate::exit::{Exit, usage};
use crate::output::{count, print, print_json};
use crate::settings;

pub(super) fn init(ctx: &Context, args: InitArgs) -> anyhow::Result<Exit> {
    let path = ctx.path(&args.path);
    if path.exists() && !args.force {
        return Err(usage(format!(
            "{} already exists (use --force to overwrite it)",
            path.display()
        )));
    }
    std::fs::write(&path, Plan::example())
        .with_context(|| format!("cannot write {}", path.display()))?;
    print(&format!(
        "wrote {}: edit it, then run it with `br run {}`\n",
        path.display(),
        args.path.display()
    ))?;
    Ok(Exit::Success)
}

/// Reads and validates a plan; errors name the file as the user typed it.
pub(super) fn load_plan(ctx: &Context, path: &Path) -> anyhow::Result<(Plan, PathBuf)> {
    // Outside a repository nothing can run: say that before anything about the plan.
    ctx.repo()?;
    let full = ctx.path(path);
    let bytes = read_plan(&full, path)?;
    let mut plan = Plan::parse_bytes(&bytes, path)?;
    read_prompt_files(&mut plan, &full, path)?;
    Ok((plan, full))
}

/// Reads each task's `prompt_file` (relative to the plan's directory) into its prompt: read
/// now, at submit, so that editing the file later does not change a session that runs.
fn read_prompt_files(plan: &mut Plan, full: &Path, shown: &Path) -> anyhow::Result<()> {
    let dir = full.parent().unwrap_or(Path::new("."));
    for task in &mut plan.tasks {
        let Some(file) = &task.prompt_file else {
            continue;
        };
        let at = dir.join(file);
        let problem = |why: String| {
            usage(format!(
                "{}: task `{}`: prompt_file {}: {why}",
                shown.display(),
                task.id,
                file.display()
            ))
        };
        let bytes = match std::fs::read(&at) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(problem(format!("no such file ({})", at.display())));
            }
            Err(e) => return Err(problem(e.to_string())),
        };
        if bytes.len() > br_core::plan::MAX_PROMPT_BYTES {
            return Err(problem(format!(
                "{} bytes; at most {} are allowed",
                bytes.len(),
                br_core::plan::MAX_PROMPT_BYTES
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            problem(format!(
                "not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        if text.trim().is_empty() {
            return Err(problem("the file is empty".into()));
        }
        task.prompt = Some(text);
    }
    Ok(())
}

/// A plan file's bytes. A plan that is not there, or not a file, is bad input; only a file
/// that cannot be read is trouble. (Bytes, not text: text that is not UTF-8 is a problem with
/// the plan, which `Plan::parse_bytes` reports where it is.)
fn read_plan(full: &Path, path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(full) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(usage(format!(
            "no plan at {}: write one with `br init`, or name yours: br run PLAN",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => Err(usage(format!(
            "{} is a directory, not a plan file",
            path.display()
        ))),
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot read plan {}", path.display())))
        }
    }
}

/// Creates the session: resolves the base, records the plan, queues the tasks.
pub(super) fn submit_plan(
    ctx: &Context,
    store: &dyn Store,
    plan: Plan,
    plan_path: Option<PathBuf>,
    workers: u32,
) -> anyhow::Result<Session> {
    let repo = ctx.repo()?;
    let base_commit = match repo.resolve_commit(&plan.base) {
        Ok(commit) => Some(commit),
        // Shared tasks run in the repository as it is; a commit is only needed to make worktrees.
        Err(_) if plan.isolation == Isolation::Shared && plan.base == "HEAD" => None,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "base `{}`: worktree isolation starts every task from a commit (make one first, \
                 or set isolation = \"shared\")",
                plan.base
            )));
        }
    };
    if plan.isolation == Isolation::Worktree && plan.base == "HEAD" {
        warn_about_uncommitted_changes(repo, base_commit.as_deref());
    }
    let mut plan = plan;
    if let Some(name) = &plan.remote {
        let git = repo.git();
        let url = br_git::remote::resolve(&git, name).map_err(|e| usage(e.to_string()))?;
        // Workers elsewhere start from the base: it must be on the remote before any claims.
        if let Some(base) = &base_commit {
            let remote = br_git::remote::Remote {
                git: &git,
                url: &url,
            };
            remote
                .push(&[br_git::remote::Update::Forward {
                    commit: base,
                    reference: &br_git::remote::base_ref(base),
                }])
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "cannot push the session's base to its remote {}",
                        br_git::remote::redact_url(&url)
                    ))
                })?;
        }
        plan.remote = Some(url);
    }
    Ok(store.create_session(&NewSession {
        plan,
        repo_root: repo.root.clone(),
        repo_id: Some(repo.identity()?),
        plan_path,
        base_commit,
        workers_wanted: workers,
    })?)
}

/// Worktrees start from a commit: changes not yet committed in the user's checkout do not reach
/// the tasks. That surprises people, so say it (on stderr; it is not an error).
fn warn_about_uncommitted_changes(repo: &br_git::Repo, base: Option<&str>) {
    let dirty = repo
        .git()
        .run(["status", "--porcelain", "--untracked-files=no"])
        .is_ok_and(|out| !out.is_empty());
    if dirty && let Some(base) = base {
        eprintln!(
            "note: your checkout has uncommitted changes; tasks start from HEAD ({}) without them",
            &base[..base.len().min(12)]
        );
    }
}

pub(super) fn submit(ctx: &Context, args: SubmitArgs) -> anyhow::Result<Exit> {
    let (plan, path) = load_plan(ctx, &args.plan)?;
    let workers = args
        .workers
        .unwrap_or_else(|| default_workers(plan.workers));
    let store = ctx.open_store()?;
    let session = submit_plan(ctx, &*store, plan, Some(path), workers)?;
    if ctx.json {
        print_json(&session)?;
    } else {
        print(&format!(
            "submitted session {} ({}); run it with `br resume {}` or `br worker`\n{}\n",
            esc(&session.name),
            count(session.total_tasks, "task"),
            session.id,
            session.id
        ))?;
    }
    Ok(Exit::Success)
}

pub(super) fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<Exit> {
    let (plan, path) = load_plan(ctx, &args.plan)?;
    if args.merge && plan.isolation == Isolation::Shared {
        return Err(usage(format!(
            "--merge merges task branches, but {} says isolation = \"shared\": its tasks change \
             the repository itself and make no branches",
            args.plan.display()
        )));
    }
    let then = if args.merge {
        AfterRun::Merge
    } else {
        AfterRun::Report
    };
    run_plan_then(ctx, plan, Some(path), &args.drive, then)
}

/// What `run_plan` does once the session has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterRun {
    /// Print the final report (or status JSON).
    Report,
    /// Merge the task branches, rerunning requeued tasks (`br run --merge`).
    Merge,
}

pub(super) fn run_plan(
    ctx: &Context,
    plan: Plan,
    plan_path: Option<PathBuf>,
    drive_args: &DriveArgs,
) -> anyhow::Result<Exit> {
    run_plan_then(ctx, plan, plan_path, drive_args, AfterRun::Report)
}

pub(super) fn run_plan_then(
    ctx: &Context,
    plan: Plan,
    plan_path: Option<PathBuf>,
    drive_args: &DriveArgs,
    then: AfterRun,
) -> anyhow::Result<Exit> {
    // Every setting the drive and its workers need is parsed before the session exists.
    let workers = drive_args
        .workers
        .unwrap_or_else(|| default_workers(plan.workers));
    let kill_grace = kill_grace(drive_args, plan.heartbeat_timeout)?;
    let max_log = settings::max_log(drive_args.max_log)?;
    let store = ctx.open_store()?;
    let session = submit_plan(ctx, &*store, plan, plan_path, workers)?;
    if !ctx.json {
        print(&format!(
            "session {} ({}): {}, {}, {} isolation\n",
            esc(&session.name),
            session.id,
            count(session.total_tasks, "task"),
            count(workers, "worker"),
            session.isolation
        ))?;
    }
    let opts = DriveOptions {
        workers,
        plain: drive_args.no_dashboard,
        heartbeat_interval: drive_args.heartbeat_interval,
        kill_grace,
        max_log,
        from_seq: 0,
    };
    let exit = drive(ctx, &*store, &session, &opts)?;
    match then {
        AfterRun::Merge if exit != Exit::Interrupted => {
            crate::cmd::merge::merge_after_run(ctx, &*store, &session, &opts, exit)
        }
        _ => finish(ctx, &*store, &session, exit),
    }
}

pub(super) fn start(ctx: &Context, args: StartArgs) -> anyhow::Result<Exit> {
    // The name is checked as a plan's `name` is: with --plan it does not go through the TOML.
    let name = br_core::plan::session_name(&args.name)
        .map_err(|e| usage(format!("the session name {e}")))?;
    let mut text = String::new();
    let mut file = PathBuf::from("<command line>");
    let mut plan_path = None;
    if let Some(p) = &args.plan {
        let full = ctx.path(p);
        let bytes = read_plan(&full, p)?;
        text = br_core::plan::plan_text(&bytes, p)?.to_string();
        text.push('\n');
        file = PathBuf::from(format!("{} + command line", p.display()));
        plan_path = Some(full);
    } else {
        text.push_str(&format!("name = {}\n", toml_string(&args.name)));
        if let Some(i) = &args.isolation {
            text.push_str(&format!("isolation = {}\n", toml_string(i)));
        }
        if let Some(r) = args.retries {
            text.push_str(&format!("retries = {r}\n"));
        }
    }
    text.push_str(&tasks_from_flags(&args)?);
    let mut plan = Plan::parse(&text, &file)?;
    plan.name = name;
    if args.plan.is_some() {
        if let Some(i) = &args.isolation {
            plan.isolation = match i.as_str() {
                "shared" => Isolation::Shared,
                "worktree" => Isolation::Worktree,
                other => {
                    return Err(usage(format!(
                        "--isolation must be `worktree` or `shared`, got `{other}`"
                    )));
                }
            };
        }
        if let Some(r) = args.retries {
            plan.retries = r;
        }
    }
    run_plan(ctx, plan, plan_path, &args.drive)
}

/// `--task ID=CMD`, `--files ID=PATH`, `--after ID=OTHER` as `[[task]]` tables.
fn tasks_from_flags(args: &StartArgs) -> anyhow::Result<String> {
    fn split<'a>(flag: &str, value: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
        value
            .split_once('=')
            .filter(|(id, _)| !id.is_empty())
            .ok_or_else(|| usage(format!("{flag} takes ID=VALUE, got `{value}`")))
    }
    let mut order: Vec<&str> = Vec::new();
    let mut runs = std::collections::BTreeMap::new();
    for t in &args.tasks {
        let (id, cmd) = split("--task", t)?;
        if runs.insert(id, cmd).is_some() {
            return Err(usage(format!("--task `{id}` given twice")));
        }
        order.push(id);
    }
    if order.is_empty() && args.plan.is_none() {
        return Err(usage(
            "no tasks: give --task ID=COMMAND (repeat) or --plan FILE",
        ));
    }
    let mut files: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for f in &args.files {
        let (id, path) = split("--files", f)?;
        files.entry(id).or_default().push(path);
    }
    let mut after: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for a in &args.after {
        let (id, dep) = split("--after", a)?;
        after.entry(id).or_default().push(dep);
    }
    for id in files.keys().chain(after.keys()) {
        if !runs.contains_key(id) {
            return Err(usage(format!("`{id}` is not a task given with --task")));
        }
    }
    let list = |items: Option<&Vec<&str>>| {
        let quoted: Vec<String> = items
            .into_iter()
            .flatten()
            .map(|s| toml_string(s))
            .collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut text = String::new();
    for id in order {
        text.push_str(&format!(
            "\n[[task]]\nid = {}\nrun = {}\nfiles = {}\nafter = {}\n",
            toml_string(id),
            toml_string(runs[id]),
            list(files.get(id)),
            list(after.get(id)),
        ));
    }
    Ok(text)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
