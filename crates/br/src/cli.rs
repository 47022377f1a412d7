//! The command line: every command, flag and help text. Parsing only; `cmd/` does the work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Sessions can be named by full id, a unique id prefix, or name (the latest with that name).
`br parallel <command> …` is accepted as an alias of `br <command> …`.

Exit codes:
  0    success (for run/wait/resume/retry: every task succeeded)
  1    the session ended with failed, skipped or cancelled tasks; for merge (and run --merge):
       some task did not land, or --into was refused
  2    bad input: invalid plan, unknown session or task, refused transition or retry, bad
       arguments
  3    lock conflict (br lock)
  4    br could not do its job: store locked, damaged or from a newer br; git or I/O failure
  124  br wait --timeout passed before the session ended
  130  interrupted (Ctrl-C); the session is left paused and nothing recorded is lost";

/// `br --version`: the release and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BR_COMMIT"), ")");

/// br runs a plan of tasks on a git repository in parallel: each task on a worker, two running
/// tasks never holding overlapping file locks, everything recorded durably so that nothing is
/// lost when any process dies.
#[derive(Debug, Parser)]
#[command(name = "br", version = VERSION, after_help = AFTER_HELP, max_term_width = 100)]
pub(crate) struct Cli {
    /// Run as if br was started in DIR (the repository).
    #[arg(short = 'C', value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,

    /// Where state lives: a SQLite file path, sqlite://PATH, or postgres://… [default:
    /// <git common dir>/br/br.db]
    #[arg(
        long,
        env = "BR_STORE",
        hide_env_values = true,
        value_name = "URL",
        global = true
    )]
    pub store: Option<String>,

    /// Print JSON instead of text (where the command has a JSON form).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Make a throwaway repository with a sample plan and run it live
    Demo(DemoArgs),
    /// Write a commented example plan (br.toml)
    Init(InitArgs),
    /// Submit a plan and run it to the end with local workers
    Run(RunArgs),
    /// Create a session from a plan and queue its tasks; run nothing
    Submit(SubmitArgs),
    /// Run one worker process: claim tasks, run them, report, until stopped
    Worker(WorkerArgs),
    /// Wait until a session ends; exit as `br run` does
    Wait(WaitArgs),
    /// Submit and run a plan given by flags (or --plan): BuildRunner's spelling
    Start(StartArgs),
    /// Show one session with every task
    Status(StatusArgs),
    /// List sessions, newest first
    List(ListArgs),
    /// Start nothing new in a session (running tasks finish)
    Pause(SessionArg),
    /// Resume a paused session; runs local workers if none are serving it
    Resume(ResumeArgs),
    /// Run failed, skipped and cancelled tasks again as their next attempts, then carry on as
    /// `br resume`
    ///
    /// Without TASK, every task of the session that failed, was skipped or was cancelled runs
    /// again; with TASK…, those tasks and the dependents they skipped. Each runs as its next
    /// attempt, told why (reason "retry" in BR_CONTEXT_FILE), with its retries and repairs
    /// given back; its earlier attempts and logs stay. A named task that did not fail, was not
    /// skipped or cancelled, or that waits for one that stays failed is refused, and nothing
    /// changes.
    Retry(RetryArgs),
    /// Cancel a session: stop its running tasks (TERM, grace, KILL), release its locks
    Cancel(CancelArgs),
    /// Change how many local workers a running `br run` keeps
    Scale(ScaleArgs),
    /// List workers with status, host, pid, current task and last heartbeat
    Workers(WorkersArgs),
    /// Take manual locks for a session, all or none
    Lock(LockArgs),
    /// Release a session's manual locks (all of them without PATH)
    Unlock(UnlockArgs),
    /// List held locks
    Locks,
    /// List pools: how many of their tasks run out of their size, and a rate limit's park
    Pools,
    /// Show the event log (NDJSON with --json)
    Events(EventsArgs),
    /// Show a task's output
    Logs(LogsArgs),
    /// Show what a task's attempt changed, against the commit it started from
    Diff(DiffArgs),
    /// The live dashboard: sessions, workers, locks, tasks and events as they happen
    Dashboard(DashboardArgs),
    /// The web dashboard and JSON API, with live updates (binds 127.0.0.1 unless told otherwise)
    Serve(ServeArgs),
    /// Land a session's task branches on br/<session-slug>/integration, one at a time in
    /// dependency order; report conflicts by file
    ///
    /// Every merge commit is built without a checkout. With `verify` in the plan, that command
    /// runs on each candidate (in a worktree) before the integration branch moves. A candidate
    /// that conflicts or fails verification is not landed; with on_conflict = "requeue" its task
    /// is queued again on top of the integration tip. Running it again lands only what is new.
    Merge(MergeArgs),
    /// The summary of workers, sessions and tasks
    Summary,
    /// The coding-agent profiles in effect (built in, and the plan's) and what each runs
    Agents(AgentsArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `br completions bash > ~/.local/share/bash-completion/completions/br`
    Completions(CompletionsArgs),
    /// Print br's manual page (roff), made from the same definitions as --help, e.g.
    /// `br man > ~/.local/share/man/man1/br.1`
    Man,
    /// Delete old finished sessions and their logs; remove free worktree slots and the seeds of
    /// kept caches; prune stale workers
    Cleanup(CleanupArgs),
    /// Internal: the reaper that stops a dead worker's task processes
    #[command(name = "__reaper", hide = true)]
    Reaper,
}

#[derive(Debug, Args)]
pub(crate) struct AgentsArgs {
    /// The plan whose [agent.NAME] tables apply [default: ./br.toml, if there is one]
    #[arg(long)]
    pub plan: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many workers
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Keep the demo repository to explore
    #[arg(long)]
    pub keep: bool,
    /// A fleet of stand-in coding agents instead: prompts, a pool, a rate limit, a repaired
    /// conflict, landing and what it cost (no API key needed)
    #[arg(long)]
    pub agents: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Where to write the plan
    #[arg(default_value = "br.toml")]
    pub path: PathBuf,
    /// Overwrite an existing file
    #[arg(long)]
    pub force: bool,
}

/// How `br run`, `br start`, `br resume` and `br retry` drive a session.
#[derive(Debug, Args, Clone)]
pub(crate) struct DriveArgs {
    /// Local workers to run [default: the plan's `workers`, else the number of CPUs]
    #[arg(long, short = 'w', value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
    /// Print plain progress lines even on a terminal
    #[arg(long)]
    pub no_dashboard: bool,
    /// How often workers heartbeat
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub heartbeat_interval: Duration,
    /// Between SIGTERM and SIGKILL when a task must stop [default: 5s]. A worker cut off from
    /// the store stops its task within the lease, so it must fit in heartbeat_timeout
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub kill_grace: Option<Duration>,
    /// Kill a task whose log grows past this size (e.g. 200MiB, 2GB; `none` for no limit)
    /// [env: BR_MAX_LOG] [default: 1GiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_log: Option<MaxLog>,
}

/// `--kill-grace` when not given.
pub(crate) const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The plan file
    #[arg(default_value = "br.toml")]
    pub plan: PathBuf,
    #[command(flatten)]
    pub drive: DriveArgs,
    /// When the session ends, merge its task branches (as `br merge`); with
    /// on_conflict = "requeue", run requeued tasks again and merge again. Exit 0 iff every task
    /// succeeded and landed
    #[arg(long)]
    pub merge: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The plan file
    #[arg(default_value = "br.toml")]
    pub plan: PathBuf,
    /// Workers that `br run`/`br resume` should keep for it [default: the plan's `workers`]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Only run this session's tasks, and leave when it ends
    #[arg(long, value_name = "SESSION")]
    pub session: Option<String>,
    /// Serve sessions of the repository at URL without a checkout: br keeps its own clone under
    /// the user's cache directory (made once, reused). Needs a shared store (--store/BR_STORE)
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// Touch FILE whenever the store answers (at most once a second): a liveness probe checks
    /// its age (older than a few heartbeats: the worker is stuck or cut off)
    #[arg(long, value_name = "FILE")]
    pub alive_file: Option<std::path::PathBuf>,
    /// Leave as soon as nothing is claimable
    #[arg(long)]
    pub exit_when_idle: bool,
    /// How often to heartbeat
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub heartbeat_interval: Duration,
    /// Silent this long, this worker is shown offline [default: the session's, else 30s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat_timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when a task must stop
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub kill_grace: Duration,
    /// Kill a task whose log grows past this size (e.g. 200MiB, 2GB; `none` for no limit)
    /// [env: BR_MAX_LOG] [default: 1GiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_log: Option<MaxLog>,
    /// Stop when standard input closes (used by `br run` for the workers it starts)
    #[arg(long, hide = true)]
    pub watch_stdin: bool,
    /// Read the store URL from the first line of standard input (how `br run` passes it to
    /// the workers it starts: never in their arguments, where `ps` shows it to every user)
    #[arg(long, hide = true)]
    pub store_from_stdin: bool,
}

/// `--max-log`: a byte count, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaxLog(pub Option<u64>);

/// A size as `--max-log` and `BR_MAX_LOG` take it.
pub(crate) fn parse_size(text: &str) -> Result<MaxLog, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(MaxLog(None));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    // The caller names the value (clap, or the BR_MAX_LOG message): this says what is wrong.
    let bad = || "not a size; write e.g. 500MiB, 2GB, 1048576 or none".to_string();
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(scale).ok_or_else(bad)?;
    if bytes == 0 {
        return Err("must be more than zero (or `none`)".into());
    }
    Ok(MaxLog(Some(bytes)))
}

#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    pub session: String,
    /// Give up after this long (exit 124)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// The session's name
    pub name: String,
    /// Take tasks (and settings) from this plan file; flags add to it
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// A task: ID=COMMAND (repeat)
    #[arg(long = "task", short = 't', value_name = "ID=COMMAND")]
    pub tasks: Vec<String>,
    /// A file a task modifies: ID=PATH (repeat)
    #[arg(long = "files", short = 'f', value_name = "ID=PATH")]
    pub files: Vec<String>,
    /// A dependency: ID=OTHER_ID, ID waits for OTHER_ID (repeat)
    #[arg(long = "after", short = 'a', value_name = "ID=OTHER")]
    pub after: Vec<String>,
    /// worktree or shared
    #[arg(long)]
    pub isolation: Option<String>,
    /// Extra attempts after a failed attempt
    #[arg(long)]
    pub retries: Option<u32>,
    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The session [default: the newest]
    pub session: Option<String>,
    /// Also show each task's command, log path and attempts
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only sessions in this state
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub(crate) struct SessionArg {
    pub session: String,
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    pub session: String,
    /// Only mark the session running; do not start local workers
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    #[command(flatten)]
    pub resume: ResumeArgs,
    /// The tasks to run again (with the dependents they skipped) [default: every failed,
    /// skipped and cancelled task]
    #[arg(value_name = "TASK")]
    pub tasks: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    pub session: String,
    /// Do not wait for running tasks to stop
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ScaleArgs {
    pub session: String,
    /// The number of local workers to keep
    #[arg(value_parser = clap::value_parser!(u32).range(0..=256))]
    pub workers: u32,
}

#[derive(Debug, Args)]
pub(crate) struct WorkersArgs {
    /// Only workers in this state (idle, busy, offline, stopped)
    #[arg(long)]
    pub status: Option<String>,
    /// Include stopped workers
    #[arg(long, short)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    pub session: String,
    /// Repo-relative paths or globs
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UnlockArgs {
    pub session: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only this session's events
    pub session: Option<String>,
    /// Keep printing new events as they happen
    #[arg(long, short)]
    pub follow: bool,
    /// Only the last N events
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// TASK (of the latest session), or SESSION TASK
    #[arg(required = true, num_args = 1..=2, value_names = ["SESSION", "TASK"])]
    pub names: Vec<String>,
    /// Which attempt [default: the latest]
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Keep printing output as the attempt writes it, until it ends
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// TASK (of the latest session), or SESSION TASK
    #[arg(required = true, num_args = 1..=2, value_names = ["SESSION", "TASK"])]
    pub names: Vec<String>,
    /// Which attempt [default: the one that landed, else the latest]
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Only the files changed and how much (git's --stat)
    #[arg(long)]
    pub stat: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Re-read the store at least this often (and sooner when something happens)
    #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub refresh: Duration,
    /// Print one frame as plain text and exit (with --json: the snapshot it shows)
    #[arg(long)]
    pub once: bool,
    /// The width of the --once frame
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(20..=1000))]
    pub width: u16,
    /// A layout that fits 80×24
    #[arg(long)]
    pub compact: bool,
    /// The session to select [default: the newest active one]
    #[arg(long)]
    pub session: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: IP:PORT (or localhost:PORT). Port 0 lets the system choose (the printed
    /// URL tells which). Only a loopback address is private to this machine: any other needs a
    /// token
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "IP:PORT", value_parser = parse_listen_addr)]
    pub addr: std::net::SocketAddr,
    /// The secret every request must carry (`Authorization: Bearer TOKEN`, or the cookie the
    /// page gets when opened once as /?token=TOKEN). Needed to listen beyond loopback. Prefer
    /// the environment variable: a command line is visible to every user of the machine
    #[arg(
        long,
        env = "BR_SERVE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Re-read the store at least this often (and sooner when something happens)
    #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub refresh: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    pub session: String,
    /// Afterwards, fast-forward BRANCH to the integration branch (refused unless BRANCH is an
    /// ancestor of it); a checked-out BRANCH is updated with `git merge --ff-only`
    #[arg(long, value_name = "BRANCH")]
    pub into: Option<String>,
    /// Only predict what would land; change nothing
    #[arg(long)]
    pub check: bool,
    /// Between SIGTERM and SIGKILL when the verify command must stop (Ctrl-C)
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub kill_grace: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Clean up this one finished session (name or id), whatever its age
    pub session: Option<String>,
    /// Delete sessions that ended more than N days ago
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Show what would be done, do nothing
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 500ms, 30s, 10m"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// `IP:PORT`, or `localhost:PORT` (127.0.0.1: the name must not depend on a resolver).
fn parse_listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.rsplit_once(':')
        .filter(|(host, _)| host.eq_ignore_ascii_case("localhost"))
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .ok_or_else(|| format!("`{text}` is not IP:PORT (e.g. 127.0.0.1:7878) or localhost:PORT"))
}

/// `br parallel <command> …` is BuildRunner's spelling: drop the word before clap sees it.
pub(crate) fn strip_parallel_alias(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut stripped = false;
    let mut expect_value = false;
    for arg in iter {
        if !stripped && !expect_value {
            let text = arg.to_string_lossy();
            if text == "parallel" {
                stripped = true;
                continue;
            }
            if text == "-C" || text == "--store" {
                expect_value = true;
                out.push(arg);
                continue;
            }
            if !text.starts_with('-') {
                // The first positional is the command: no alias here.
                stripped = true;
            }
        } else {
            expect_value = false;
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(args: &[&str]) -> Vec<String> {
        strip_parallel_alias(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn parallel_alias_is_dropped_once() {
        assert_eq!(strip(&["br", "parallel", "status"]), ["br", "status"]);
        assert_eq!(
            strip(&["br", "-C", "parallel", "parallel", "list"]),
            ["br", "-C", "parallel", "list"]
        );
        assert_eq!(
            strip(&["br", "--json", "parallel", "list"]),
            ["br", "--json", "list"]
        );
        assert_eq!(strip(&["br", "run", "parallel"]), ["br", "run", "parallel"]);
    }

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("1GiB"), Ok(MaxLog(Some(1 << 30))));
        assert_eq!(parse_size("2GB"), Ok(MaxLog(Some(2_000_000_000))));
        assert_eq!(parse_size("512 kib"), Ok(MaxLog(Some(512 * 1024))));
        assert_eq!(parse_size("4096"), Ok(MaxLog(Some(4096))));
        assert_eq!(parse_size("none"), Ok(MaxLog(None)));
        for bad in [
            "",
            "0",
            "GiB",
            "1.5GiB",
            "12 parsecs",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
