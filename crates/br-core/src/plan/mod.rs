//! Plan files (`br.toml`): parsing and validation, with errors that name the file, line and reason.
//!
//! Parsing happens in two steps. First the TOML is read into a table of spanned keys and values;
//! the keys neither the plan nor a `[[task]]` knows are taken out there, each a problem, and the
//! rest is deserialised into raw structs whose fields are `toml::Spanned`, so every value
//! remembers where it was written (a syntax error, or a value of the wrong type, stops here,
//! because serde cannot carry on past it). Then the raw plan is validated as a whole, and every
//! problem found (unknown keys, bad ids, bad paths, unknown dependencies, cycles, out-of-range
//! values, ...) is reported at once, in file order, so that a user fixes a plan in one round
//! instead of one error per run.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::ids::TaskId;
use crate::lock::LockPath;

/// Where a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Each task gets its own git worktree on its own branch, created from the session's base.
    #[default]
    Worktree,
    /// Every task runs in the repository itself; file locks still keep tasks apart.
    Shared,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Worktree => "worktree",
            Isolation::Shared => "shared",
        }
    }

    const ALL: [Isolation; 2] = [Isolation::Worktree, Isolation::Shared];
}

/// What happens when a task changes files outside its `files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeMode {
    /// Record a `scope_violation` event; the attempt's result stands.
    #[default]
    Report,
    /// The attempt fails with a scope violation.
    Strict,
}

impl ScopeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeMode::Report => "report",
            ScopeMode::Strict => "strict",
        }
    }

    const ALL: [ScopeMode; 2] = [ScopeMode::Report, ScopeMode::Strict];
}

/// What happens when a task cannot land: its branch conflicts with the integration branch, or
/// the merge fails `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Run the task again on top of the new tip, told why (up to `max_repairs` times).
    #[default]
    Requeue,
    /// The task ends failed (`conflict` or `verify_failed`). Older plans and stores say
    /// `report`, which meant the same for the merge queue.
    #[serde(alias = "report")]
    Fail,
}

impl OnConflict {
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Requeue => "requeue",
            OnConflict::Fail => "fail",
        }
    }

    const ALL: [OnConflict; 2] = [OnConflict::Requeue, OnConflict::Fail];
}

/// Where an attempt's worktree starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// The session's integration tip at claim time: a dependent sees what its dependencies
    /// landed, the next holder of a lock what the previous holder landed.
    #[default]
    Tip,
    /// The session's base commit (a repair: the tip when it was queued again).
    Base,
}

impl StartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StartMode::Tip => "tip",
            StartMode::Base => "base",
        }
    }

    const ALL: [StartMode; 2] = [StartMode::Tip, StartMode::Base];
}

/// When a succeeded task's branch lands on the integration branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandMode {
    /// As soon as it succeeds, by the workers, one landing at a time per session.
    #[default]
    Auto,
    /// When `br merge` runs.
    Manual,
}

impl LandMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LandMode::Auto => "auto",
            LandMode::Manual => "manual",
        }
    }

    const ALL: [LandMode; 2] = [LandMode::Auto, LandMode::Manual];
}

impl fmt::Display for StartMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for LandMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ScopeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OnConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated plan: every id is valid and unique, every dependency exists, the dependency graph
/// has no cycle, every path stays inside the repository and every number is in range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub name: String,
    pub workers: Option<u32>,
    pub base: String,
    pub isolation: Isolation,
    #[serde(rename = "heartbeat_timeout_ms", serialize_with = "serialize_millis")]
    pub heartbeat_timeout: Duration,
    pub retries: u32,
    pub scope: ScopeMode,
    pub verify: Option<String>,
    pub on_conflict: OnConflict,
    pub start: StartMode,
    pub land: LandMode,
    pub max_repairs: u32,
    /// Ignored paths (gitignore patterns) a worktree slot keeps between attempts: caches.
    pub keep: Vec<String>,
    /// The plan's own `[agent.NAME]` tables (over br's built-ins, key by key); the profiles its
    /// tasks use are resolved into them.
    pub agents: Vec<AgentProfile>,
    /// `[pool.NAME]`: how many of its tasks may run at once, and how long a rate limit parks it.
    pub pools: BTreeMap<String, PoolSpec>,
    /// Untracked files copied from the checkout into each worktree before each attempt.
    pub copy: Vec<String>,
    /// Run once per worktree slot, and again when `setup_inputs` change.
    pub setup: Option<String>,
    pub setup_inputs: Vec<String>,
    /// Ports each running slot gets (`BR_PORT_BASE` ..+N-1); 0: none.
    pub ports: u32,
    /// Where the session's work travels between machines: a remote of the submitting
    /// repository (submit records its URL) or a URL.
    pub remote: Option<String>,
    pub tasks: Vec<TaskSpec>,
}

/// One validated `[[task]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub run: String,
    /// Normalised lock paths, without duplicates, in the order written.
    pub files: Vec<LockPath>,
    /// Tasks that must succeed first, without duplicates, in the order written.
    pub after: Vec<TaskId>,
    #[serde(rename = "timeout_ms", serialize_with = "serialize_optional_millis")]
    pub timeout: Option<Duration>,
    /// Extra attempts after a failed attempt: the task's own `retries`, or the plan's.
    pub retries: u32,
    pub env: BTreeMap<String, String>,
    /// The task's own setting, or the plan's.
    pub start: StartMode,
    pub land: LandMode,
    pub on_conflict: OnConflict,
    pub max_repairs: u32,
    /// What the task is asked to do, for a coding agent (`BR_PROMPT_FILE`): `prompt` as written,
    /// or, with `prompt_file`, the file's text once the plan is submitted.
    pub prompt: Option<String>,
    /// `prompt_file` as written (relative to the plan's directory), read at submit.
    pub prompt_file: Option<PathBuf>,
    /// The coding agent the task runs (`agent = "NAME"`), resolved: `run` is its command.
    pub agent: Option<AgentProfile>,
    /// The pool it runs in: its own `pool`, or its agent's.
    pub pool: Option<String>,
}

/// One thing wrong with a plan, at a 1-based line and column when it has a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Why a plan was refused: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    pub file: PathBuf,
    pub problems: Vec<PlanProblem>,
}

/// One line per problem, `file:line:column: message`, the form editors and terminals link to.
impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(col) = p.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

mod agents;

pub use crate::agent::{AgentProfile, PoolSpec};

const DEFAULT_BASE: &str = "HEAD";
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_NAME: &str = "plan";

/// The most characters a session name may have: it is shown in every list and progress line,
/// and a name longer than a line helps nobody (an older br allowed any length; tables cut those).
pub const MAX_NAME_CHARS: usize = 128;
/// The most bytes `base` may have: a revision, not a document.
pub const MAX_BASE_BYTES: usize = 1024;
/// The most tasks a plan may have. Ten times more than the largest plans br is tested with;
/// beyond it the plan is a mistake, and a store, a dashboard or `br status` holding it would be
/// too.
pub const MAX_TASKS: usize = 100_000;
/// The most bytes a command (`run`, `verify`) may have: it is run as `sh -c COMMAND`, and Linux
/// refuses to start a program with an argument longer than this (`MAX_ARG_STRLEN`, 128 KiB with
/// its NUL). A longer script belongs in a file the command runs.
pub const MAX_COMMAND_BYTES: usize = 128 * 1024 - 1;
/// The most paths a task's `files` may list: globs cover any number of files, and every claim
/// compares each path with every lock held.
pub const MAX_FILES: usize = 1000;
/// The most bytes one lock path may have.
pub const MAX_LOCK_PATH_BYTES: usize = 1024;
/// The most bytes an environment variable's name may have.
pub const MAX_ENV_NAME_BYTES: usize = 256;
/// The most bytes an environment variable's value may have.
pub const MAX_ENV_VALUE_BYTES: usize = 64 * 1024;
/// The most bytes a task's whole `env` may have, names and values together: it is passed to the
/// task's shell with br's own variables and the inherited environment, and all of them must fit
/// in what the system lets a program start with (2 MiB on a default Linux).
pub const MAX_ENV_BYTES: usize = 256 * 1024;

const WORKERS_MIN: i128 = 1;
const WORKERS_MAX: i128 = 256;
const RETRIES_MAX: i128 = 100;

/// A heartbeat timeout under a second would take every worker offline between two heartbeats;
/// over an hour, a dead worker's task would sit unnoticed for too long.
const HEARTBEAT_TIMEOUT_RANGE: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(60 * 60),
    text: "between 1s and 1h",
};

/// Timeouts are stored in milliseconds, so anything shorter than 1ms would become "no time at
/// all"; beyond 30 days the number is a typo, not a plan.
const TIMEOUT_RANGE: DurationRange = DurationRange {
    min: Duration::from_millis(1),
    max: Duration::from_secs(30 * 24 * 60 * 60),
    text: "between 1ms and 30 days",
};

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "workers",
    "base",
    "isolation",
    "heartbeat_timeout",
    "retries",
    "scope",
    "verify",
    "on_conflict",
    "start",
    "land",
    "max_repairs",
    "keep",
    "copy",
    "setup",
    "setup_inputs",
    "ports",
    "remote",
    "agent",
    "pool",
    "task",
];

const TASK_KEYS: &[&str] = &[
    "id",
    "run",
    "files",
    "after",
    "timeout",
    "retries",
    "env",
    "prompt",
    "prompt_file",
    "start",
    "land",
    "on_conflict",
    "max_repairs",
    "agent",
    "pool",
];

/// Keys that people bring from other tools, and the key br spells them with.
const KEY_ALIASES: &[(&str, &str)] = &[
    ("tasks", "task"),
    ("jobs", "task"),
    ("job", "task"),
    ("worker", "workers"),
    ("parallelism", "workers"),
    ("jobs_count", "workers"),
    ("retry", "retries"),
    ("heartbeat", "heartbeat_timeout"),
    ("depends_on", "after"),
    ("depends", "after"),
    ("dependencies", "after"),
    ("deps", "after"),
    ("needs", "after"),
    ("requires", "after"),
    ("cmd", "run"),
    ("command", "run"),
    ("script", "run"),
    ("paths", "files"),
    ("locks", "files"),
    ("environment", "env"),
];

impl Plan {
    /// Parses and validates a plan. `file` only names the plan in messages and gives the default
    /// session name (its stem); nothing is read from disk.
    pub fn parse(source: &str, file: &Path) -> Result<Plan, PlanError> {
        let lines = LineIndex::new(source);
        let one = |e: &toml::de::Error| PlanError {
            file: file.to_path_buf(),
            problems: vec![lines.problem(
                e.span().map(|span| span.start),
                &describe_toml_error(e, source),
            )],
        };
        let mut root = toml::de::DeTable::parse(source).map_err(|e| one(&e))?;
        // Unknown keys are reported with every other problem, not alone: they are taken out
        // here, each a problem, and the rest of the plan is read and validated as usual.
        let mut problems = Problems::default();
        let misplaced = take_unknown_keys(root.get_mut(), &mut problems);
        let raw: RawPlan = match RawPlan::deserialize(toml::de::Deserializer::from(root)) {
            Ok(raw) => raw,
            Err(e) if problems.list.is_empty() => return Err(one(&e)),
            Err(e) => {
                // Another problem stops serde (a value of the wrong type): it joins the unknown
                // keys found before.
                let at = e.span().unwrap_or(0..0);
                problems.at(&at, describe_toml_error(&e, source));
                return Err(problems.into_error(file, &lines));
            }
        };
        let valid = validate(raw, file, &lines, &mut problems);
        if misplaced {
            // The tasks may well be under the unknown key (`[[tasks]]`): that there are none
            // follows from it, and is not a problem of its own.
            problems
                .list
                .retain(|(at, message)| !(at.is_none() && message.starts_with(NO_TASKS)));
        }
        match valid {
            Some(plan) if problems.list.is_empty() => Ok(plan),
            _ => {
                if problems.list.is_empty() {
                    // Every rejected value reports why (the property tests check it); this only
                    // keeps a missed case from becoming an error with nothing in it.
                    problems.nowhere("invalid plan");
                }
                Err(problems.into_error(file, &lines))
            }
        }
    }

    /// Parses a plan file as read from disk: bytes that are not UTF-8 are refused where they
    /// stop being UTF-8, as a problem with the plan (bad input), not a failure to read it.
    pub fn parse_bytes(source: &[u8], file: &Path) -> Result<Plan, PlanError> {
        Plan::parse(plan_text(source, file)?, file)
    }

    /// What each worktree slot gets besides its checkout.
    pub fn slot_setup(&self) -> crate::agent::SlotSetup {
        crate::agent::SlotSetup {
            copy: self.copy.clone(),
            setup: self.setup.clone(),
            setup_inputs: self.setup_inputs.clone(),
            ports: self.ports,
        }
    }

    /// The task with this id, if the plan has one.
    pub fn task(&self, id: &TaskId) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| &t.id == id)
    }

    /// The commented example plan that `br init` writes. It documents every key, and its tasks
    /// work in any git repository with a POSIX shell.
    pub fn example() -> &'static str {
        EXAMPLE
    }
}

/// A plan file's bytes as text, or the error that says, with its line, column and byte offset,
/// where they stop being UTF-8 (for callers that add text of their own before parsing).
pub fn plan_text<'a>(source: &'a [u8], file: &Path) -> Result<&'a str, PlanError> {
    let e = match std::str::from_utf8(source) {
        Ok(text) => return Ok(text),
        Err(e) => e,
    };
    let offset = e.valid_up_to();
    // Everything before the first bad byte is UTF-8, so it has lines and columns.
    let before = std::str::from_utf8(&source[..offset]).unwrap_or_default();
    let byte = source.get(offset).copied().unwrap_or_default();
    let hint = if source.starts_with(&[0xff, 0xfe]) || source.starts_with(&[0xfe, 0xff]) {
        " (the file looks like UTF-16: save it as UTF-8)"
    } else {
        " (save it as UTF-8)"
    };
    let problem = LineIndex::new(before).problem(
        Some(offset),
        &format!("the plan is not UTF-8 text: byte 0x{byte:02x} at byte offset {offset}{hint}"),
    );
    Err(PlanError {
        file: file.to_path_buf(),
        problems: vec![problem],
    })
}

const EXAMPLE: &str = r#"# A br plan: shell commands that br runs in parallel, each in its own git worktree, never
# letting two running tasks hold overlapping files.
#
#   br run              run the plan in br.toml, with live progress
#   br status           every task: state, attempts, branch, exit code, log
#
# In worktree isolation the session integrates as it runs: each task that succeeds lands on
# the branch br/<session-slug>/integration at once, and later attempts start from what landed.
#
# Every top-level key is optional. A key that is commented out shows its default (for `verify`,
# which has none, an example): uncomment it to change it.
# Durations are written like "500ms", "30s", "10m" or "1h 30m".

# The session's name (at most 128 characters), shown by `br list` and used in branch names.
# Default: this file's name without ".toml".
name = "example"

# How many workers `br run` starts (1 to 256). `br run --workers N` overrides it.
workers = 2

# The revision the session starts from: the integration branch begins here, and so does every
# attempt when `start` is "base". It is resolved to a commit when the plan is submitted, so
# commits made while the session runs do not change it.
# base = "HEAD"

# Where tasks run. "worktree": each task gets a fresh git worktree, on its own branch
# br/<session>/<task-id>, and br commits what the task changed onto that branch when it
# succeeds. "shared": every task runs in the repository itself (file locks still apply).
# isolation = "worktree"

# A worker that sends no heartbeat for this long (1s to 1h) is marked offline, and its task is
# rerun by another worker as the next attempt.
# heartbeat_timeout = "30s"

# Extra attempts after a failed attempt (0 to 100), for every task that does not set its own.
# retries = 0

# A task that changes files outside its `files`: "report" records a scope_violation event and
# keeps the result; "strict" fails the attempt.
# scope = "report"

# Where each attempt starts: "tip", the integration branch as it is when the attempt starts
# (so a task sees what its `after` tasks and the previous holder of its files landed); "base",
# the base commit (for tasks that need nothing of each other).
# start = "tip"

# When a succeeded task lands on the integration branch: "auto", at once; "manual", when
# `br merge` runs.
# land = "auto"

# A command run (with `sh -c`, in a worktree) on each merge before it lands on the integration
# branch; a merge whose check fails does not land. Default: none.
# verify = "make test"

# When a task cannot land (its branch conflicts, or `verify` failed): "requeue" runs it again on
# top of the integration branch, told why (BR_CONTEXT_FILE, BR_PROMPT_FILE); "fail" ends it.
# on_conflict = "requeue"

# How many times a task is run again because it could not land (0 to 100).
# max_repairs = 3

# Ignored paths a worktree keeps between attempts (build caches); everything else is reset.
# keep = ["target/", "node_modules/"]

# Untracked files copied from your checkout into each worktree before each attempt (never
# committed onto a task's branch): what a build or an agent needs, such as secrets.
# copy = [".env"]

# A command run once in each worktree before its first attempt, and again when the content of
# `setup_inputs` changes. Its failure is reported as a setup failure, not the task's.
# setup = "npm ci"
# setup_inputs = ["package-lock.json"]

# Ports each running worktree gets, as BR_PORT_BASE .. BR_PORT_BASE+N-1, which no other
# running worktree on the machine holds (0 to 1000; 0: none).
# ports = 0

# Where the session's work travels between machines (a remote of this repository, or a URL):
# workers push attempts and task branches there, and landing moves the integration branch
# there, so workers in other clones (and `br worker --repo`) serve the session.
# remote = "origin"

# Coding agents. A task may name one with `agent` instead of `run` (built in: "claude",
# "codex", "aider", "gemini"; `br agents` shows what each runs). An [agent.NAME] table
# changes a built-in key by key, or adds an agent with its own `run`.
# agent.claude.pool = "anthropic"

# Pools: at most `size` tasks of a pool run at once, across every worker and machine; a rate
# limit in an agent's output parks its pool for `backoff`.
# pool.anthropic.size = 3
# pool.anthropic.backoff = "60s"

# Each [[task]] is one command. Only `id` and `run` are required.

[[task]]
# Unique in the plan: letters, digits, ".", "_" and "-", at most 64 characters; not
# "integration", which names the session's integration branch.
id = "notes"
# Run with `sh -c` in the task's directory; exit status 0 means success. At most 128 KiB:
# a longer script belongs in a file that the command runs.
run = "mkdir -p notes && echo 'Written by br.' > notes/README.md"
# The paths or globs, relative to the repository root, that the task may change. They are
# locked while it runs, and tasks whose files overlap never run at the same time. A directory
# covers everything under it.
files = ["notes"]

[[task]]
id = "greeting"
run = 'mkdir -p notes && echo "$GREETING from br" > notes/greeting.md'
# notes/greeting.md is inside `notes`, locked by the task above, so the two take turns.
files = ["notes/greeting.md"]
# Extra environment variables for the command. Names starting with BR_ are reserved for br.
env = { GREETING = "Hello" }
# What the task is asked to do, for a coding agent: the command reads it from the file
# $BR_PROMPT_FILE (with, on a rerun, why it runs again). Or name a file with `prompt_file`,
# read when the plan is submitted.
prompt = "Greet the reader of the notes."
# Any of the plan's start, land, on_conflict and max_repairs, for this task only.
# start = "base"
# The pool the task runs in (by default its agent's, if it has one).
# pool = "anthropic"
# Stop the task's processes after this long (up to 30 days): the attempt fails as timed out.
timeout = "1m"

[[task]]
id = "summary"
run = "mkdir -p out && echo 'notes and greeting are done' > out/summary.txt"
files = ["out/**"]
# Start only after these tasks have landed: this task starts from a tip that holds their
# files.
after = ["notes", "greeting"]
# This task's own extra attempts, instead of the plan's `retries`.
retries = 1
"#;

fn serialize_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(*d))
}

#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with passes the field by reference"
)]
fn serialize_optional_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&millis(*d)),
        None => s.serialize_none(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// The raw plan, as written. Scalars that need checking keep their span; so do the tables, so
// that a problem with a whole task (a missing `run`) can point at its `[[task]]` header.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a plan")]
struct RawPlan {
    name: Option<Spanned<String>>,
    workers: Option<Spanned<Integer>>,
    base: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    heartbeat_timeout: Option<Spanned<DurationText>>,
    retries: Option<Spanned<Integer>>,
    scope: Option<Spanned<String>>,
    verify: Option<Spanned<String>>,
    on_conflict: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    land: Option<Spanned<String>>,
    max_repairs: Option<Spanned<Integer>>,
    #[serde(default)]
    keep: Strings,
    #[serde(default)]
    copy: Strings,
    setup: Option<Spanned<String>>,
    #[serde(default)]
    setup_inputs: Strings,
    ports: Option<Spanned<Integer>>,
    remote: Option<Spanned<String>>,
    #[serde(default)]
    agent: BTreeMap<Spanned<String>, Spanned<agents::RawAgent>>,
    #[serde(default)]
    pool: BTreeMap<Spanned<String>, Spanned<agents::RawPool>>,
    #[serde(default)]
    task: TaskTables,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[task]] table")]
struct RawTask {
    id: Option<Spanned<String>>,
    run: Option<Spanned<String>>,
    #[serde(default)]
    files: Strings,
    #[serde(default)]
    after: Strings,
    timeout: Option<Spanned<DurationText>>,
    retries: Option<Spanned<Integer>>,
    #[serde(default)]
    env: EnvTable,
    prompt: Option<Spanned<String>>,
    prompt_file: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    land: Option<Spanned<String>>,
    on_conflict: Option<Spanned<String>>,
    max_repairs: Option<Spanned<Integer>>,
    agent: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
}

/// Any TOML integer, kept wide so that an out-of-range value is reported with its range instead
/// of as a type error.
#[derive(Debug, Clone, Copy)]
struct Integer(i128);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IntegerVisitor;
        impl Visitor<'_> for IntegerVisitor {
            type Value = Integer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integer, E> {
                Ok(Integer(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integer, E> {
                Ok(Integer(i128::from(v)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Integer, E> {
                Ok(Integer(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Integer, E> {
                Ok(Integer(i128::try_from(v).unwrap_or(i128::MAX)))
            }
        }
        d.deserialize_any(IntegerVisitor)
    }
}

/// A duration as written (`"10m"`); parsed during validation so that its problems are collected
/// with the others. Only strings are accepted: a bare number would leave the unit to guesswork.
#[derive(Debug, Clone)]
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\", \"10m\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        d.deserialize_str(DurationVisitor)
    }
}

/// An array of strings, each with its span.
#[derive(Debug, Default)]
struct Strings(Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element()? {
                    out.push(s);
                }
                Ok(Strings(out))
            }
        }
        d.deserialize_seq(StringsVisitor)
    }
}

/// The `[[task]]` tables, each spanning its header.
#[derive(Debug, Default)]
struct TaskTables(Vec<Spanned<RawTask>>);

impl<'de> Deserialize<'de> for TaskTables {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TasksVisitor;
        impl<'de> Visitor<'de> for TasksVisitor {
            type Value = TaskTables;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tables, each written as [[task]]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TaskTables, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = seq.next_element()? {
                    out.push(t);
                }
                Ok(TaskTables(out))
            }
        }
        d.deserialize_seq(TasksVisitor)
    }
}

/// A task's `env` table, in file order, names and values with their spans.
#[derive(Debug, Default)]
struct EnvTable(Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for EnvTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of strings, such as { RUST_LOG = \"info\" }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvTable, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(EnvTable(out))
            }
        }
        d.deserialize_map(EnvVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// Problems found so far, each at a byte offset into the source (or nowhere in particular).
#[derive(Debug, Default)]
struct Problems {
    list: Vec<(Option<usize>, String)>,
}

impl Problems {
    fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.list.push((Some(span.start), message.into()));
    }

    fn nowhere(&mut self, message: impl Into<String>) {
        self.list.push((None, message.into()));
    }

    fn into_error(mut self, file: &Path, lines: &LineIndex) -> PlanError {
        // File order; problems with no place (such as "no tasks") come first. The sort is stable,
        // so two problems at one place keep the order they were found in.
        self.list
            .sort_by_key(|(offset, _)| offset.map_or(0, |o| o + 1));
        PlanError {
            file: file.to_path_buf(),
            problems: self
                .list
                .iter()
                .map(|(offset, message)| lines.problem(*offset, message))
                .collect(),
        }
    }
}

/// Byte offsets to 1-based lines and columns (columns count characters, not bytes).
#[derive(Debug)]
struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { source, starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line(offset);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = match self.source.get(start..offset) {
            // An editor does not count the byte-order mark as a column.
            Some(text) => text.trim_start_matches('\u{feff}').chars().count() + 1,
            None => offset - start + 1,
        };
        (line, column)
    }

    fn problem(&self, offset: Option<usize>, message: &str) -> PlanProblem {
        let (line, column) = match offset {
            Some(o) => {
                let (l, c) = self.line_column(o);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PlanProblem {
            line,
            column,
            message: one_line(message),
        }
    }
}

/// Control characters (a newline in a task id, say) would break the one-line-per-problem form.
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Takes the keys that are neither the plan's nor a task's out of `root` (and out of each
/// `[[task]]`), each a problem at its place, in the words serde's refusal would have had.
/// The start of the problem of a plan without tasks.
const NO_TASKS: &str = "no tasks";

/// Returns whether a plan-wide key was unknown.
fn take_unknown_keys<'i>(root: &mut toml::de::DeTable<'i>, problems: &mut Problems) -> bool {
    fn unknown<'i>(
        table: &toml::de::DeTable<'i>,
        known: &[&str],
    ) -> Vec<Spanned<toml::de::DeString<'i>>> {
        table
            .keys()
            .filter(|k| !known.contains(&k.get_ref().as_ref()))
            .cloned()
            .collect()
    }
    let top = unknown(root, TOP_LEVEL_KEYS);
    let misplaced = !top.is_empty();
    for key in top {
        problems.at(&key.span(), unknown_key_message(key.get_ref(), false));
        root.remove(&key);
    }
    let Some(tasks) = root
        .iter_mut()
        .find(|(k, _)| k.get_ref().as_ref() == "task")
    else {
        return misplaced;
    };
    if let toml::de::DeValue::Array(tasks) = tasks.1.get_mut() {
        for task in tasks.iter_mut() {
            if let toml::de::DeValue::Table(table) = task.get_mut() {
                for key in unknown(table, TASK_KEYS) {
                    problems.at(&key.span(), unknown_key_message(key.get_ref(), true));
                    table.remove(&key);
                }
            }
        }
    }
    misplaced
}

/// What is said of an unknown key: where it is, what was perhaps meant, what is allowed.
fn unknown_key_message(key: &str, in_task: bool) -> String {
    let (keys, other_keys, place) = if in_task {
        (TASK_KEYS, TOP_LEVEL_KEYS, " in [[task]]")
    } else {
        (TOP_LEVEL_KEYS, TASK_KEYS, "")
    };
    let hint = if other_keys.contains(&key) {
        // TOML puts every key after a `[[task]]` header into that task, so a plan-wide key
        // written below the tasks lands in the last one.
        if in_task {
            " (plan-wide keys go above the first [[task]])".to_string()
        } else {
            " (task keys go in a [[task]] table)".to_string()
        }
    } else {
        suggest_key(key, keys)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default()
    };
    let allowed = keys
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("unknown key `{key}`{place}{hint}; allowed keys: {allowed}")
}

/// The plain reason from a TOML or serde error: toml's own rendering repeats the source line and
/// a caret over several lines, but our callers want `file:line:column: reason` on one line.
fn describe_toml_error(e: &toml::de::Error, source: &str) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = message.as_str();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, expected)) = rest.split_once('`')
    {
        // serde lists the fields it expected; which list it is tells which table the key is in.
        return unknown_key_message(key, expected.contains("`run`"));
    }
    if message == "duplicate key"
        && let Some(key) = e.span().and_then(|span| source.get(span))
        && !key.is_empty()
    {
        return format!("duplicate key `{key}`");
    }
    // serde's words for TOML's types.
    let message = message
        .replace("invalid type: map,", "invalid type: table,")
        .replace("invalid type: sequence,", "invalid type: array,");
    if message.is_empty() {
        "invalid TOML".to_string()
    } else {
        message
    }
}

/// The allowed key a mistyped one most likely meant: a known alias, or a key a typo or two away
/// (one for short keys, where two edits would turn almost anything into a suggestion).
fn suggest_key(key: &str, allowed: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    if let Some(&k) = allowed.iter().find(|k| **k == lower) {
        return Some(k);
    }
    if let Some((_, k)) = KEY_ALIASES
        .iter()
        .find(|(alias, k)| *alias == lower && allowed.contains(k))
    {
        return Some(k);
    }
    let max_edits = if lower.chars().count() <= 4 { 1 } else { 2 };
    allowed
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d <= max_edits)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

struct DurationRange {
    min: Duration,
    max: Duration,
    text: &'static str,
}

/// Validates a duration; `what` names it in messages ("`timeout`", "task `a`: `timeout`").
fn duration(
    value: &Spanned<DurationText>,
    range: &DurationRange,
    what: &str,
    problems: &mut Problems,
) -> Option<Duration> {
    let text = &value.get_ref().0;
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d >= range.min && d <= range.max => Some(d),
        Ok(_) => {
            problems.at(
                &value.span(),
                format!("{what} must be {}, got `{text}`", range.text),
            );
            None
        }
        Err(e) => {
            problems.at(
                &value.span(),
                format!(
                    "{what} is not a duration: `{text}` ({e}); write e.g. `30s`, `10m` or `1h 30m`"
                ),
            );
            None
        }
    }
}

/// Validates an integer in `min..=max`.
fn integer(
    value: &Spanned<Integer>,
    min: i128,
    max: i128,
    what: &str,
    problems: &mut Problems,
) -> Option<u32> {
    let n = value.get_ref().0;
    match u32::try_from(n) {
        Ok(v) if (min..=max).contains(&n) => Some(v),
        _ => {
            problems.at(
                &value.span(),
                format!("{what} must be between {min} and {max}, got {n}"),
            );
            None
        }
    }
}

/// Validates one of a fixed set of names (`isolation = "shared"`).
fn choice<T: Copy>(
    value: &Spanned<String>,
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
    problems: &mut Problems,
) -> Option<T> {
    let text = value.get_ref();
    if let Some(&v) = all.iter().find(|v| name(**v) == text.trim()) {
        return Some(v);
    }
    let allowed = all
        .iter()
        .map(|v| format!("`{}`", name(*v)))
        .collect::<Vec<_>>()
        .join(" or ");
    problems.at(
        &value.span(),
        format!("{what} must be {allowed}, got `{text}`"),
    );
    None
}

/// Validates a string that must hold something other than whitespace.
fn non_empty(value: &Spanned<String>, what: &str, problems: &mut Problems) -> Option<String> {
    let text = value.get_ref();
    if text.trim().is_empty() {
        problems.at(&value.span(), format!("{what} is empty"));
        return None;
    }
    Some(text.clone())
}

/// A command or environment value cannot hold a NUL: the operating system would cut it there.
fn no_nul(value: &Spanned<String>, what: &str, problems: &mut Problems) -> bool {
    if value.get_ref().contains('\0') {
        problems.at(&value.span(), format!("{what} contains a NUL character"));
        return false;
    }
    true
}

/// A string of at most `max` bytes; `what` names it in the message.
fn at_most_bytes(value: &Spanned<String>, max: usize, what: &str, problems: &mut Problems) -> bool {
    let len = value.get_ref().len();
    if len > max {
        problems.at(
            &value.span(),
            format!("{what} is {len} bytes long; at most {max} are allowed"),
        );
        return false;
    }
    true
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A task's label in messages: its id as written, or its place in the file when it has none.
fn task_label(raw: &RawTask, index: usize) -> String {
    match &raw.id {
        // An id too long to be valid is cut: every message about the task names it.
        Some(id) if id.get_ref().chars().count() > 64 => format!(
            "task `{}…`",
            id.get_ref().chars().take(64).collect::<String>()
        ),
        Some(id) if !id.get_ref().is_empty() => format!("task `{}`", id.get_ref()),
        _ => format!("task #{}", index + 1),
    }
}

/// A dependency edge in the task graph: the task that must finish first, and where it is named.
#[derive(Debug)]
struct Dep {
    task: usize,
    span: Range<usize>,
}

fn validate(
    raw: RawPlan,
    file: &Path,
    lines: &LineIndex<'_>,
    problems: &mut Problems,
) -> Option<Plan> {
    let name = match &raw.name {
        Some(n) => match session_name(n.get_ref()) {
            Ok(name) => Some(name),
            Err(e) => {
                problems.at(&n.span(), format!("`name` {e}"));
                None
            }
        },
        None => Some(default_name(file)),
    };
    let workers = match &raw.workers {
        Some(w) => integer(w, WORKERS_MIN, WORKERS_MAX, "`workers`", problems).map(Some),
        None => Some(None),
    };
    let base = match &raw.base {
        Some(b) => non_empty(b, "`base`", problems)
            .filter(|_| at_most_bytes(b, MAX_BASE_BYTES, "`base`", problems))
            .map(|b| b.trim().to_string()),
        None => Some(DEFAULT_BASE.to_string()),
    };
    let isolation = match &raw.isolation {
        Some(v) => choice(
            v,
            &Isolation::ALL,
            Isolation::as_str,
            "`isolation`",
            problems,
        ),
        None => Some(Isolation::default()),
    };
    let heartbeat_timeout = match &raw.heartbeat_timeout {
        Some(d) => duration(d, &HEARTBEAT_TIMEOUT_RANGE, "`heartbeat_timeout`", problems),
        None => Some(DEFAULT_HEARTBEAT_TIMEOUT),
    };
    let retries = match &raw.retries {
        Some(r) => integer(r, 0, RETRIES_MAX, "`retries`", problems),
        None => Some(0),
    };
    let scope = match &raw.scope {
        Some(v) => choice(v, &ScopeMode::ALL, ScopeMode::as_str, "`scope`", problems),
        None => Some(ScopeMode::default()),
    };
    let verify = match &raw.verify {
        Some(v) => {
            let ok = no_nul(v, "`verify`", problems)
                & at_most_bytes(v, MAX_COMMAND_BYTES, "`verify`", problems);
            non_empty(v, "`verify`", problems).filter(|_| ok).map(Some)
        }
        None => Some(None),
    };
    let remote = match &raw.remote {
        Some(r) => {
            let ok = no_nul(r, "`remote`", problems)
                & at_most_bytes(r, MAX_BASE_BYTES, "`remote`", problems);
            non_empty(r, "`remote`", problems)
                .filter(|_| ok)
                .map(|r| Some(r.trim().to_string()))
        }
        None => Some(None),
    };
    let settings = LandingSettings::read(
        &RawLanding {
            start: raw.start.as_ref(),
            land: raw.land.as_ref(),
            on_conflict: raw.on_conflict.as_ref(),
            max_repairs: raw.max_repairs.as_ref(),
        },
        LandingSettings::default(),
        "",
        problems,
    );
    let keep = keep_patterns(&raw.keep, problems);
    let fleet = agents::read_fleet(
        &agents::RawFleet {
            agent: &raw.agent,
            pool: &raw.pool,
            copy: &raw.copy,
            setup: raw.setup.as_ref(),
            setup_inputs: &raw.setup_inputs,
            ports: raw.ports.as_ref(),
        },
        problems,
    );

    if raw.task.0.is_empty() {
        problems.nowhere(format!(
            "{NO_TASKS}: add at least one [[task]] table with an `id` and a `run`"
        ));
    }
    if let Some(first_extra) = raw.task.0.get(MAX_TASKS) {
        problems.at(
            &first_extra.span(),
            format!(
                "the plan has {} tasks; at most {MAX_TASKS} are allowed (this is the first one \
                 too many)",
                raw.task.0.len()
            ),
        );
    }
    // Tasks inherit the plan's retries; if that value is bad it has been reported, and 0 keeps
    // the tasks' own checks going.
    let tasks = validate_tasks(
        &raw.task.0,
        retries.unwrap_or(0),
        settings.unwrap_or_default(),
        fleet.as_ref(),
        lines,
        problems,
    );
    let fleet = fleet?;

    Some(Plan {
        name: name?,
        workers: workers?,
        base: base?,
        isolation: isolation?,
        heartbeat_timeout: heartbeat_timeout?,
        retries: retries?,
        scope: scope?,
        verify: verify?,
        on_conflict: settings?.on_conflict,
        start: settings?.start,
        land: settings?.land,
        max_repairs: settings?.max_repairs,
        keep: keep?,
        agents: fleet.agents.into_values().filter(|a| a.from_plan).collect(),
        pools: fleet.pools,
        copy: fleet.copy,
        setup: fleet.setup,
        setup_inputs: fleet.setup_inputs,
        ports: fleet.ports,
        remote: remote?,
        tasks: tasks?,
    })
}

/// Checks a session name as the plan's `name` or `br start NAME` gives it, and returns it
/// trimmed; the error completes a sentence about the name ("is empty").
pub fn session_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() {
        return Err("is empty".to_string());
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "is {chars} characters long; at most {MAX_NAME_CHARS} are allowed"
        ));
    }
    Ok(name.to_string())
}

/// The session name when the plan sets none: the file's stem, as `br list` shows it.
fn default_name(file: &Path) -> String {
    file.file_stem()
        // A file name may be longer than a session name: the name is cut, not refused.
        .map(|s| {
            s.to_string_lossy()
                .trim()
                .chars()
                .take(MAX_NAME_CHARS)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_string())
}

fn validate_tasks(
    raw: &[Spanned<RawTask>],
    default_retries: u32,
    defaults: LandingSettings,
    fleet: Option<&agents::Fleet>,
    lines: &LineIndex<'_>,
    problems: &mut Problems,
) -> Option<Vec<TaskSpec>> {
    let ids = TaskIds::collect(raw, lines, problems);
    let mut specs: Vec<Option<TaskSpec>> = Vec::with_capacity(raw.len());
    let mut deps: Vec<Vec<Dep>> = Vec::with_capacity(raw.len());
    for (i, task) in raw.iter().enumerate() {
        let (spec, edges) =
            validate_task(i, task, &ids, default_retries, defaults, fleet, problems);
        specs.push(spec);
        // Only tasks that own their id are nodes of the graph.
        deps.push(if ids.owned[i].is_some() {
            edges
        } else {
            Vec::new()
        });
    }
    report_cycles(raw, &deps, problems);
    specs.into_iter().collect()
}

/// The tasks' ids. The first task with a given id owns it; later ones are duplicates.
#[derive(Debug)]
struct TaskIds<'a> {
    /// Per task, in file order: its id if it is valid and the task owns it.
    owned: Vec<Option<TaskId>>,
    index_of: HashMap<TaskId, usize>,
    /// Every id as written, valid or not, so that `after` naming a task whose id is invalid is
    /// not reported a second time as an unknown dependency.
    written: HashSet<&'a str>,
}

impl<'a> TaskIds<'a> {
    fn collect(
        raw: &'a [Spanned<RawTask>],
        lines: &LineIndex<'_>,
        problems: &mut Problems,
    ) -> Self {
        let mut owned = Vec::with_capacity(raw.len());
        let mut index_of: HashMap<TaskId, usize> = HashMap::with_capacity(raw.len());
        let mut first_line: HashMap<usize, usize> = HashMap::new();
        for (i, task) in raw.iter().enumerate() {
            let id = match &task.get_ref().id {
                None => {
                    problems.at(&task.span(), format!("task #{} has no `id`", i + 1));
                    None
                }
                Some(id) => match TaskId::new(id.get_ref().as_str()) {
                    Err(e) => {
                        problems.at(&id.span(), e.to_string());
                        None
                    }
                    Ok(tid) if tid.is_reserved() => {
                        problems.at(
                            &id.span(),
                            format!(
                                "task id `{tid}` is reserved: a task's branch is \
                                 br/<session-slug>/<task-id>, and br/<session-slug>/integration \
                                 is the session's integration branch (in any case); rename the \
                                 task"
                            ),
                        );
                        None
                    }
                    Ok(tid) => match index_of.get(&tid) {
                        Some(first) => {
                            let line = first_line.get(first).copied().unwrap_or_default();
                            problems.at(
                                &id.span(),
                                format!("duplicate task id `{tid}` (first used on line {line})"),
                            );
                            None
                        }
                        None => {
                            index_of.insert(tid.clone(), i);
                            first_line.insert(i, lines.line(id.span().start));
                            Some(tid)
                        }
                    },
                },
            };
            owned.push(id);
        }
        let written = raw
            .iter()
            .filter_map(|t| t.get_ref().id.as_ref().map(|id| id.get_ref().as_str()))
            .collect();
        Self {
            owned,
            index_of,
            written,
        }
    }
}

/// Everything about one task but its id (checked with all the ids) and cycles (checked once the
/// whole graph is known). Returns the task, if it is valid, and its dependency edges.
fn validate_task(
    i: usize,
    task: &Spanned<RawTask>,
    ids: &TaskIds<'_>,
    default_retries: u32,
    defaults: LandingSettings,
    fleet: Option<&agents::Fleet>,
    problems: &mut Problems,
) -> (Option<TaskSpec>, Vec<Dep>) {
    let t = task.get_ref();
    let label = task_label(t, i);

    let runs = agents::task_agent(task, &label, fleet, problems);
    let files = lock_paths(&t.files, &label, problems);
    let (after, edges) = dependencies(t, ids, &label, problems);
    let timeout = match &t.timeout {
        Some(d) => duration(d, &TIMEOUT_RANGE, &format!("{label}: `timeout`"), problems).map(Some),
        None => Some(None),
    };
    let retries = match &t.retries {
        Some(r) => integer(r, 0, RETRIES_MAX, &format!("{label}: `retries`"), problems),
        None => Some(default_retries),
    };
    let env = environment(&t.env, &label, problems);
    let settings = LandingSettings::read(
        &RawLanding {
            start: t.start.as_ref(),
            land: t.land.as_ref(),
            on_conflict: t.on_conflict.as_ref(),
            max_repairs: t.max_repairs.as_ref(),
        },
        defaults,
        &format!("{label}: "),
        problems,
    );
    let prompt = prompt(t, &label, problems);

    let spec = (|| {
        let settings = settings?;
        let (prompt, prompt_file) = prompt?;
        let runs = runs?;
        Some(TaskSpec {
            id: ids.owned[i].clone()?,
            run: runs.run,
            agent: runs.agent,
            pool: runs.pool,
            files: files?,
            after,
            timeout: timeout?,
            retries: retries?,
            env: env?,
            start: settings.start,
            land: settings.land,
            on_conflict: settings.on_conflict,
            max_repairs: settings.max_repairs,
            prompt,
            prompt_file,
        })
    })();
    (spec, edges)
}

/// The most `max_repairs` may be.
const MAX_REPAIRS_MAX: i128 = 100;
/// The default `max_repairs`.
pub const DEFAULT_MAX_REPAIRS: u32 = 3;
/// The longest `prompt` (and `prompt_file`, once read).
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
/// At most this many `keep` patterns.
const MAX_KEEP: usize = 100;

/// How a task starts and lands: the plan's settings, which each task may override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LandingSettings {
    start: StartMode,
    land: LandMode,
    on_conflict: OnConflict,
    max_repairs: u32,
}

impl Default for LandingSettings {
    fn default() -> Self {
        LandingSettings {
            start: StartMode::default(),
            land: LandMode::default(),
            on_conflict: OnConflict::default(),
            max_repairs: DEFAULT_MAX_REPAIRS,
        }
    }
}

/// The landing keys as written, at the top level or in a task.
struct RawLanding<'a> {
    start: Option<&'a Spanned<String>>,
    land: Option<&'a Spanned<String>>,
    on_conflict: Option<&'a Spanned<String>>,
    max_repairs: Option<&'a Spanned<Integer>>,
}

impl LandingSettings {
    /// The settings `raw` writes, the others from `defaults`; `None` when one is wrong (and
    /// reported, its message starting with `label`).
    fn read(
        raw: &RawLanding<'_>,
        defaults: LandingSettings,
        label: &str,
        problems: &mut Problems,
    ) -> Option<LandingSettings> {
        let start = match raw.start {
            Some(v) => choice(
                v,
                &StartMode::ALL,
                StartMode::as_str,
                &format!("{label}`start`"),
                problems,
            ),
            None => Some(defaults.start),
        };
        let land = match raw.land {
            Some(v) => choice(
                v,
                &LandMode::ALL,
                LandMode::as_str,
                &format!("{label}`land`"),
                problems,
            ),
            None => Some(defaults.land),
        };
        let on_conflict = match raw.on_conflict {
            // What older plans wrote for "fail".
            Some(v) if v.get_ref().trim() == "report" => Some(OnConflict::Fail),
            Some(v) => choice(
                v,
                &OnConflict::ALL,
                OnConflict::as_str,
                &format!("{label}`on_conflict`"),
                problems,
            ),
            None => Some(defaults.on_conflict),
        };
        let max_repairs = match raw.max_repairs {
            Some(r) => integer(
                r,
                0,
                MAX_REPAIRS_MAX,
                &format!("{label}`max_repairs`"),
                problems,
            ),
            None => Some(defaults.max_repairs),
        };
        Some(LandingSettings {
            start: start?,
            land: land?,
            on_conflict: on_conflict?,
            max_repairs: max_repairs?,
        })
    }
}

/// A task's `prompt` or `prompt_file` (not both).
#[allow(clippy::type_complexity)]
fn prompt(
    t: &RawTask,
    label: &str,
    problems: &mut Problems,
) -> Option<(Option<String>, Option<PathBuf>)> {
    match (&t.prompt, &t.prompt_file) {
        (Some(_), Some(file)) => {
            problems.at(
                &file.span(),
                format!("{label}: has both `prompt` and `prompt_file`; give one"),
            );
            None
        }
        (Some(p), None) => {
            let what = format!("{label}: `prompt`");
            let ok =
                no_nul(p, &what, problems) & at_most_bytes(p, MAX_PROMPT_BYTES, &what, problems);
            non_empty(p, &what, problems)
                .filter(|_| ok)
                .map(|p| (Some(p), None))
        }
        (None, Some(file)) => {
            let what = format!("{label}: `prompt_file`");
            let ok = no_nul(file, &what, problems);
            let path = non_empty(file, &what, problems).filter(|_| ok)?;
            Some((None, Some(PathBuf::from(path))))
        }
        (None, None) => Some((None, None)),
    }
}

/// The plan's `keep` patterns: gitignore-style, relative to the repository, never outside it.
fn keep_patterns(keep: &Strings, problems: &mut Problems) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(keep.0.len());
    let mut ok = true;
    if let Some(extra) = keep.0.get(MAX_KEEP) {
        problems.at(
            &extra.span(),
            format!(
                "`keep` lists {} patterns; at most {MAX_KEEP} are allowed",
                keep.0.len()
            ),
        );
        ok = false;
    }
    for k in &keep.0 {
        let text = k.get_ref().trim();
        let shown = || text.chars().take(60).collect::<String>();
        // `.` and `..` components: gitignore patterns are not normalised, so `./target/` would
        // match nothing and `../x` would name something outside the repository.
        let escapes = text.split('/').any(|c| c == ".." || c == ".");
        if text.is_empty()
            || escapes
            || text.starts_with('/')
            || text.starts_with('!')
            || text.contains('\0')
            || text.len() > MAX_LOCK_PATH_BYTES
        {
            problems.at(
                &k.span(),
                format!(
                    "`keep`: `{}` is not a path inside the repository (write an ignored \
                     directory such as `target/`)",
                    shown()
                ),
            );
            ok = false;
            continue;
        }
        // git never cleans its own directory, so keeping it means nothing; a pattern that names
        // it is a mistake worth saying (any case: some file systems ignore it).
        if text.split('/').any(|c| c.eq_ignore_ascii_case(".git")) {
            problems.at(
                &k.span(),
                format!(
                    "`keep`: `{}` names git's own `.git`, which a worktree never cleans (write \
                     an ignored directory such as `target/`)",
                    shown()
                ),
            );
            ok = false;
            continue;
        }
        if !out.iter().any(|o: &String| o == text) {
            out.push(text.to_string());
        }
    }
    ok.then_some(out)
}

fn lock_paths(files: &Strings, label: &str, problems: &mut Problems) -> Option<Vec<LockPath>> {
    let mut paths: Vec<LockPath> = Vec::with_capacity(files.0.len());
    let mut seen: HashSet<String> = HashSet::with_capacity(files.0.len());
    let mut ok = true;
    if let Some(first_extra) = files.0.get(MAX_FILES) {
        ok = false;
        problems.at(
            &first_extra.span(),
            format!(
                "{label}: `files` lists {} paths; at most {MAX_FILES} are allowed (a glob such \
                 as `src/**` covers any number of files)",
                files.0.len()
            ),
        );
    }
    for f in &files.0 {
        if let Err(e) = lock_path_length(f.get_ref()) {
            ok = false;
            problems.at(&f.span(), format!("{label}: {e}"));
            continue;
        }
        match LockPath::parse(f.get_ref()) {
            Ok(p) => {
                // `src/` and `src` are one lock; listing it twice is harmless.
                if seen.insert(p.as_str().to_string()) {
                    paths.push(p);
                }
            }
            Err(e) => {
                ok = false;
                problems.at(&f.span(), format!("{label}: {e}"));
            }
        }
    }
    ok.then_some(paths)
}

/// Checks the length of a lock path, as written in a plan or given to `br lock`. (Not a rule of
/// [`LockPath`] itself: a store an older br wrote may hold longer paths, and must still read.)
pub fn lock_path_length(path: &str) -> Result<(), String> {
    if path.len() > MAX_LOCK_PATH_BYTES {
        return Err(format!(
            "lock path `{}…` is {} bytes long; at most {MAX_LOCK_PATH_BYTES} are allowed",
            path.chars().take(40).collect::<String>(),
            path.len()
        ));
    }
    Ok(())
}

/// The task's `after` ids, without repeats, and the graph edges they make.
fn dependencies(
    t: &RawTask,
    ids: &TaskIds<'_>,
    label: &str,
    problems: &mut Problems,
) -> (Vec<TaskId>, Vec<Dep>) {
    let mut after: Vec<TaskId> = Vec::with_capacity(t.after.0.len());
    let mut seen: HashSet<usize> = HashSet::with_capacity(t.after.0.len());
    let mut edges: Vec<Dep> = Vec::with_capacity(t.after.0.len());
    for a in &t.after.0 {
        let name = a.get_ref();
        let own_id = t.id.as_ref().is_some_and(|id| id.get_ref() == name);
        let known = TaskId::new(name.as_str())
            .ok()
            .and_then(|dep| ids.index_of.get(&dep).map(|&j| (dep, j)));
        match known {
            _ if own_id => {
                problems.at(&a.span(), format!("{label}: depends on itself in after"));
            }
            Some((dep, j)) => {
                if seen.insert(j) {
                    after.push(dep);
                    edges.push(Dep {
                        task: j,
                        span: a.span(),
                    });
                }
            }
            None if ids.written.contains(name.as_str()) => {
                // Names a task whose id is invalid: that id is already reported.
            }
            None => problems.at(
                &a.span(),
                format!("{label}: unknown dependency `{name}` in after"),
            ),
        }
    }
    (after, edges)
}

fn environment(
    env: &EnvTable,
    label: &str,
    problems: &mut Problems,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    let mut total = 0usize;
    for (key, value) in &env.0 {
        let k = key.get_ref();
        let before = total;
        total = total.saturating_add(k.len() + value.get_ref().len());
        // Said once, at the variable that goes past the limit.
        if before <= MAX_ENV_BYTES && total > MAX_ENV_BYTES {
            ok = false;
            problems.at(
                &key.span(),
                format!(
                    "{label}: `env` holds more than {MAX_ENV_BYTES} bytes of names and values \
                     (from this variable on); put large data in a file the task reads"
                ),
            );
        }
        if k.len() > MAX_ENV_NAME_BYTES {
            ok = false;
            problems.at(
                &key.span(),
                format!(
                    "{label}: environment variable name `{}…` is {} bytes long; at most \
                     {MAX_ENV_NAME_BYTES} are allowed",
                    k.chars().take(40).collect::<String>(),
                    k.len()
                ),
            );
        } else if !is_env_name(k) {
            ok = false;
            problems.at(
                &key.span(),
                format!(
                    "{label}: `{k}` is not a valid environment variable name \
                     (letters, digits and `_`, not starting with a digit)"
                ),
            );
        } else if k.starts_with("BR_") {
            ok = false;
            problems.at(
                &key.span(),
                format!("{label}: `{k}` is reserved: br sets the `BR_` variables itself"),
            );
        }
        let what = format!("{label}: `env` value `{k}`");
        if !no_nul(value, &what, problems)
            | !at_most_bytes(value, MAX_ENV_VALUE_BYTES, &what, problems)
        {
            ok = false;
        }
        out.insert(k.clone(), value.get_ref().clone());
    }
    ok.then_some(out)
}

/// Reports each dependency cycle once, by strongly connected component: a component with more
/// than one task holds at least one cycle, and naming one of them (the shortest through the
/// component's first task) tells the user where to cut. Reporting every elementary cycle could
/// take exponential time and would bury the plan under repeats of one mistake.
fn report_cycles(raw: &[Spanned<RawTask>], deps: &[Vec<Dep>], problems: &mut Problems) {
    let edges: Vec<Vec<usize>> = deps
        .iter()
        .map(|d| d.iter().map(|dep| dep.task).collect())
        .collect();
    let components = strongly_connected_components(&edges);
    let mut component_of = vec![usize::MAX; edges.len()];
    for (c, members) in components.iter().enumerate() {
        for &m in members {
            component_of[m] = c;
        }
    }
    // Shared across searches: each task belongs to one component, so each is visited once.
    let mut came_from = vec![usize::MAX; edges.len()];
    for (c, members) in components.iter().enumerate() {
        if members.len() < 2 {
            continue;
        }
        let Some(&start) = members.iter().min() else {
            continue;
        };
        let Some(cycle) = shortest_cycle(start, c, &edges, &component_of, &mut came_from) else {
            continue;
        };
        let names: Vec<String> = cycle
            .iter()
            .map(|&t| {
                raw[t]
                    .get_ref()
                    .id
                    .as_ref()
                    .map_or_else(String::new, |id| format!("`{}`", id.get_ref()))
            })
            .collect();
        // Point at the `after` entry where the cycle leaves its first task.
        let span = cycle
            .get(1)
            .and_then(|next| deps[start].iter().find(|d| d.task == *next))
            .map_or_else(|| raw[start].span(), |d| d.span.clone());
        problems.at(&span, format!("dependency cycle: {}", names.join(" → ")));
    }
}

/// Breadth-first search from `start` back to itself inside one component; returns the path
/// `start, …, start`.
fn shortest_cycle(
    start: usize,
    component: usize,
    edges: &[Vec<usize>],
    component_of: &[usize],
    came_from: &mut [usize],
) -> Option<Vec<usize>> {
    let mut queue = VecDeque::from([start]);
    came_from[start] = start;
    while let Some(v) = queue.pop_front() {
        for &w in &edges[v] {
            if component_of[w] != component {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if came_from[w] == usize::MAX {
                came_from[w] = v;
                queue.push_back(w);
            }
        }
    }
    None
}

/// Tarjan's algorithm with an explicit stack, so a 10,000-task chain cannot overflow the call
/// stack. Linear in tasks plus dependencies.
fn strongly_connected_components(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut components = Vec::new();
    let mut next_index = 0;
    // (task, how many of its edges have been followed)
    let mut calls: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(frame) = calls.last_mut() {
            let (v, followed) = *frame;
            if let Some(&w) = edges[v].get(followed) {
                frame.1 += 1;
                if index[w] == UNSEEN {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    const FILE: &str = "plans/br.toml";

    fn parse(source: &str) -> Result<Plan, PlanError> {
        Plan::parse(source, Path::new(FILE))
    }

    fn id(s: &str) -> TaskId {
        TaskId::new(s).unwrap()
    }

    fn lock(s: &str) -> LockPath {
        LockPath::parse(s).unwrap()
    }

    /// A valid task, to put the key under test after.
    const TASK_A: &str = "[[task]]\nid = \"a\"\nrun = \"true\"\n";

    /// Each bad plan, and the complete error it must produce: file, line, column and reason.
    #[test]
    fn bad_plans_are_refused_with_file_line_and_reason() {
        let cases: &[(&str, &str)] = &[
            // br's own ref names.
            (
                "[[task]]\nid = \"INTEGRATION\"\nrun = \"true\"\n",
                "plans/br.toml:2:6: task id `INTEGRATION` is reserved: a task's branch is \
                 br/<session-slug>/<task-id>, and br/<session-slug>/integration is the session's \
                 integration branch (in any case); rename the task",
            ),
            // TOML syntax: toml's reason, on one line.
            (
                "name = \n",
                "plans/br.toml:1:8: string values must be quoted, expected literal string",
            ),
            (
                "[[task]\nid = \"a\"\n",
                "plans/br.toml:1:8: unclosed array table, expected `]`",
            ),
            (
                "name = \"a\"\nname = \"b\"\n",
                "plans/br.toml:2:1: duplicate key `name`",
            ),
            // Unknown keys: named, with the allowed ones and a likely fix.
            (
                "[[tasks]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:3: unknown key `tasks` (did you mean `task`?); allowed keys: \
                 `name`, `workers`, `base`, `isolation`, `heartbeat_timeout`, `retries`, \
                 `scope`, `verify`, `on_conflict`, `start`, `land`, `max_repairs`, `keep`, `copy`, `setup`, `setup_inputs`, `ports`, `remote`, `agent`, `pool`, `task`",
            ),
            (
                "colour = \"blue\"\n",
                "plans/br.toml:1:1: unknown key `colour`; allowed keys: `name`, `workers`, \
                 `base`, `isolation`, `heartbeat_timeout`, `retries`, `scope`, `verify`, \
                 `on_conflict`, `start`, `land`, `max_repairs`, `keep`, `copy`, `setup`, `setup_inputs`, `ports`, `remote`, `agent`, `pool`, `task`",
            ),
            // Short keys get no guess: two edits would turn almost anything into one.
            (
                "ab = 1\n",
                "plans/br.toml:1:1: unknown key `ab`; allowed keys: `name`, `workers`, `base`, \
                 `isolation`, `heartbeat_timeout`, `retries`, `scope`, `verify`, \
                 `on_conflict`, `start`, `land`, `max_repairs`, `keep`, `copy`, `setup`, `setup_inputs`, `ports`, `remote`, `agent`, `pool`, `task`",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ndepends_on = [\"b\"]\n",
                "plans/br.toml:4:1: unknown key `depends_on` in [[task]] (did you mean \
                 `after`?); allowed keys: `id`, `run`, `files`, `after`, `timeout`, `retries`, \
                 `env`, `prompt`, `prompt_file`, `start`, `land`, `on_conflict`, `max_repairs`, `agent`, `pool`",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ntimout = \"1m\"\n",
                "plans/br.toml:4:1: unknown key `timout` in [[task]] (did you mean \
                 `timeout`?); allowed keys: `id`, `run`, `files`, `after`, `timeout`, \
                 `retries`, `env`, `prompt`, `prompt_file`, `start`, `land`, `on_conflict`, `max_repairs`, `agent`, `pool`",
            ),
            // Keys in the wrong table: TOML puts keys below a [[task]] header into that task.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nworkers = 4\n",
                "plans/br.toml:4:1: unknown key `workers` in [[task]] (plan-wide keys go above \
                 the first [[task]]); allowed keys: `id`, `run`, `files`, `after`, `timeout`, \
                 `retries`, `env`, `prompt`, `prompt_file`, `start`, `land`, `on_conflict`, `max_repairs`, `agent`, `pool`",
            ),
            (
                "run = \"make\"\n",
                "plans/br.toml:1:1: unknown key `run` (task keys go in a [[task]] table); \
                 allowed keys: `name`, `workers`, `base`, `isolation`, `heartbeat_timeout`, \
                 `retries`, `scope`, `verify`, `on_conflict`, `start`, `land`, `max_repairs`, `keep`, `copy`, `setup`, `setup_inputs`, `ports`, `remote`, `agent`, `pool`, `task`",
            ),
            (
                "on-conflict = \"report\"\n",
                "plans/br.toml:1:1: unknown key `on-conflict` (did you mean `on_conflict`?); \
                 allowed keys: `name`, `workers`, `base`, `isolation`, `heartbeat_timeout`, \
                 `retries`, `scope`, `verify`, `on_conflict`, `start`, `land`, `max_repairs`, `keep`, `copy`, `setup`, `setup_inputs`, `ports`, `remote`, `agent`, `pool`, `task`",
            ),
            // Wrong types.
            (
                "workers = \"four\"\n",
                "plans/br.toml:1:11: invalid type: string \"four\", expected an integer",
            ),
            (
                "retries = 1.5\n",
                "plans/br.toml:1:11: invalid type: floating point `1.5`, expected an integer",
            ),
            (
                "name = 3\n",
                "plans/br.toml:1:8: invalid type: integer `3`, expected a string",
            ),
            (
                "[task]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:1: invalid type: table, expected an array of tables, each \
                 written as [[task]]",
            ),
            (
                "task = [\"a\"]\n",
                "plans/br.toml:1:9: invalid type: string \"a\", expected a [[task]] table",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = \"src\"\n",
                "plans/br.toml:4:9: invalid type: string \"src\", expected an array of strings",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [1]\n",
                "plans/br.toml:4:10: invalid type: integer `1`, expected a string",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = 10\n",
                "plans/br.toml:4:11: invalid type: integer `10`, expected a duration string \
                 such as \"30s\", \"10m\" or \"1h 30m\"",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nenv = { A = 1 }\n",
                "plans/br.toml:4:13: invalid type: integer `1`, expected a string",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nenv = [\"A=1\"]\n",
                "plans/br.toml:4:7: invalid type: array, expected a table of strings, such as \
                 { RUST_LOG = \"info\" }",
            ),
            // `keep` patterns stay inside the repository and out of `.git`.
            (
                "keep = [\"target/\", \"../cache/\"]\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:20: `keep`: `../cache/` is not a path inside the repository \
                 (write an ignored directory such as `target/`)",
            ),
            (
                "keep = [\"/tmp/cache\"]\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:9: `keep`: `/tmp/cache` is not a path inside the repository \
                 (write an ignored directory such as `target/`)",
            ),
            (
                "keep = [\"./target/\"]\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:9: `keep`: `./target/` is not a path inside the repository \
                 (write an ignored directory such as `target/`)",
            ),
            (
                "keep = [\"sub/.GIT/hooks\"]\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:9: `keep`: `sub/.GIT/hooks` names git's own `.git`, which a \
                 worktree never cleans (write an ignored directory such as `target/`)",
            ),
            // Ids.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\n\n[[task]]\nid = \"a\"\nrun = \"false\"\n",
                "plans/br.toml:6:6: duplicate task id `a` (first used on line 2)",
            ),
            (
                "[[task]]\nid = \"a b\"\nrun = \"true\"\n",
                "plans/br.toml:2:6: task id `a b` contains ` `: only letters, digits, `.`, `_` \
                 and `-` are allowed",
            ),
            (
                "[[task]]\nid = \"\"\nrun = \"true\"\n",
                "plans/br.toml:2:6: task id is empty",
            ),
            (
                "[[task]]\nid = \"x.lock\"\nrun = \"true\"\n",
                "plans/br.toml:2:6: task id `x.lock` is not a valid git ref component: it must \
                 not start with `.` or `-`, contain `..`, or end with `.` or `.lock`",
            ),
            (
                "[[task]]\nid = \"a\\nb\"\nrun = \"true\"\n",
                "plans/br.toml:2:6: task id `a\\nb` contains `\\n`: only letters, digits, `.`, \
                 `_` and `-` are allowed",
            ),
            (
                "[[task]]\nrun = \"true\"\n",
                "plans/br.toml:1:1: task #1 has no `id`",
            ),
            // A task without a usable id is named by its place among the tasks.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\n[[task]]\nid = \"\"\nrun = \"\"\n",
                "plans/br.toml:5:6: task id is empty\n\
                 plans/br.toml:6:7: task #2: `run` is empty",
            ),
            // Dependencies.
            (
                "[[task]]\nid = \"api\"\nrun = \"true\"\nafter = [\"schema\"]\n",
                "plans/br.toml:4:10: task `api`: unknown dependency `schema` in after",
            ),
            (
                "[[task]]\nid = \"api\"\nrun = \"true\"\nafter = [\"the schema\"]\n",
                "plans/br.toml:4:10: task `api`: unknown dependency `the schema` in after",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [\"a\"]\n",
                "plans/br.toml:4:10: task `a`: depends on itself in after",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [\"c\"]\n\
                 [[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"a\"]\n\
                 [[task]]\nid = \"c\"\nrun = \"true\"\nafter = [\"b\"]\n",
                "plans/br.toml:4:10: dependency cycle: `a` → `c` → `b` → `a`",
            ),
            // Reported at the cycle's first task, whichever task the search meets first.
            (
                "[[task]]\nid = \"x\"\nrun = \"true\"\nafter = [\"b\"]\n\
                 [[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"c\"]\n\
                 [[task]]\nid = \"c\"\nrun = \"true\"\nafter = [\"d\"]\n\
                 [[task]]\nid = \"d\"\nrun = \"true\"\nafter = [\"b\"]\n",
                "plans/br.toml:8:10: dependency cycle: `b` → `c` → `d` → `b`",
            ),
            // Two separate cycles: each reported once.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [\"b\"]\n\
                 [[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"a\"]\n\
                 [[task]]\nid = \"c\"\nrun = \"true\"\nafter = [\"d\"]\n\
                 [[task]]\nid = \"d\"\nrun = \"true\"\nafter = [\"c\"]\n",
                "plans/br.toml:4:10: dependency cycle: `a` → `b` → `a`\n\
                 plans/br.toml:12:10: dependency cycle: `c` → `d` → `c`",
            ),
            // Two cycles sharing a task are one tangle: one report, the shortest cycle.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nafter = [\"b\"]\n\
                 [[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"c\", \"a\"]\n\
                 [[task]]\nid = \"c\"\nrun = \"true\"\nafter = [\"b\"]\n",
                "plans/br.toml:4:10: dependency cycle: `a` → `b` → `a`",
            ),
            // Paths.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"/etc/passwd\"]\n",
                "plans/br.toml:4:10: task `a`: `/etc/passwd` is absolute: lock paths are \
                 relative to the repository root",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"src\", \"src/../../x\"]\n",
                "plans/br.toml:4:17: task `a`: `src/../../x` leaves the repository (`..`)",
            ),
            // Durations.
            (
                "heartbeat_timeout = \"0s\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:21: `heartbeat_timeout` must be between 1s and 1h, got `0s`",
            ),
            (
                "heartbeat_timeout = \"500ms\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:21: `heartbeat_timeout` must be between 1s and 1h, got `500ms`",
            ),
            (
                "heartbeat_timeout = \"2h\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:21: `heartbeat_timeout` must be between 1s and 1h, got `2h`",
            ),
            (
                "heartbeat_timeout = \"30\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:21: `heartbeat_timeout` is not a duration: `30` (time unit \
                 needed, for example 30sec or 30ms); write e.g. `30s`, `10m` or `1h 30m`",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = \"0s\"\n",
                "plans/br.toml:4:11: task `a`: `timeout` must be between 1ms and 30 days, got \
                 `0s`",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = \"500us\"\n",
                "plans/br.toml:4:11: task `a`: `timeout` must be between 1ms and 30 days, got \
                 `500us`",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = \"1y\"\n",
                "plans/br.toml:4:11: task `a`: `timeout` must be between 1ms and 30 days, got \
                 `1y`",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\ntimeout = \"ten minutes\"\n",
                "plans/br.toml:4:11: task `a`: `timeout` is not a duration: `ten minutes` \
                 (expected number at 0); write e.g. `30s`, `10m` or `1h 30m`",
            ),
            // Numbers.
            (
                "workers = 0\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:11: `workers` must be between 1 and 256, got 0",
            ),
            (
                "workers = 257\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:11: `workers` must be between 1 and 256, got 257",
            ),
            (
                "retries = -1\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:11: `retries` must be between 0 and 100, got -1",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nretries = 101\n",
                "plans/br.toml:4:11: task `a`: `retries` must be between 0 and 100, got 101",
            ),
            // No tasks: nowhere in particular, so no line.
            (
                "",
                "plans/br.toml: no tasks: add at least one [[task]] table with an `id` and a \
                 `run`",
            ),
            (
                "name = \"empty\"\nworkers = 2\n",
                "plans/br.toml: no tasks: add at least one [[task]] table with an `id` and a \
                 `run`",
            ),
            // Commands.
            (
                "[[task]]\nid = \"a\"\n",
                "plans/br.toml:1:1: task `a` has no `run` command (or `agent`)",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \" \\t \"\n",
                "plans/br.toml:3:7: task `a`: `run` is empty",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"echo \\u0000\"\n",
                "plans/br.toml:3:7: task `a`: `run` contains a NUL character",
            ),
            (
                "verify = \"\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:10: `verify` is empty",
            ),
            // Environment.
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nenv = { BR_TASK = \"x\" }\n",
                "plans/br.toml:4:9: task `a`: `BR_TASK` is reserved: br sets the `BR_` \
                 variables itself",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nenv = { \"2FA\" = \"x\", \"A-B\" = \"y\" }\n",
                "plans/br.toml:4:9: task `a`: `2FA` is not a valid environment variable name \
                 (letters, digits and `_`, not starting with a digit)\n\
                 plans/br.toml:4:22: task `a`: `A-B` is not a valid environment variable name \
                 (letters, digits and `_`, not starting with a digit)",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"true\"\nenv = { A = \"x\\u0000y\" }\n",
                "plans/br.toml:4:13: task `a`: `env` value `A` contains a NUL character",
            ),
            // Choices.
            (
                "isolation = \"container\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:13: `isolation` must be `worktree` or `shared`, got `container`",
            ),
            (
                "scope = \"loose\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:9: `scope` must be `report` or `strict`, got `loose`",
            ),
            (
                "on_conflict = \"ignore\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:15: `on_conflict` must be `requeue` or `fail`, got `ignore`",
            ),
            // Strings that must say something.
            (
                "name = \"  \"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:8: `name` is empty",
            ),
            (
                "base = \"\"\n[[task]]\nid = \"a\"\nrun = \"true\"\n",
                "plans/br.toml:1:8: `base` is empty",
            ),
        ];
        let mut failures = Vec::new();
        for (source, want) in cases {
            match parse(source) {
                Ok(plan) => failures.push(format!("{source:?}\n  accepted: {plan:?}")),
                Err(e) if e.to_string() != *want => {
                    failures.push(format!("{source:?}\n  want: {want}\n  got:  {e}"));
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    }

    /// Lock path rules (what is a valid glob, how paths are normalised) belong to `LockPath`;
    /// the plan reports its reason at the entry, for the task.
    #[test]
    fn invalid_globs_are_refused_with_the_lock_paths_reason() {
        for glob in ["src/[", "src/{a,b", "src/**/[z-a]"] {
            let reason = LockPath::parse(glob).unwrap_err();
            let source = format!("{TASK_A}files = [\"ok\", {glob:?}]\n");
            let want = format!("plans/br.toml:4:16: task `a`: {reason}");
            assert_eq!(parse(&source).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn all_problems_are_reported_in_file_order() {
        let source = "\
workers = 0
retries = 101
isolation = \"none\"

[[task]]
id = \"a b\"
run = \"\"
timeout = \"0s\"
files = [\"/etc\", \"../x\"]
env = { BR_X = \"1\" }
after = [\"nope\"]

[[task]]
id = \"c\"
after = [\"c\"]
";
        let want = "\
plans/br.toml:1:11: `workers` must be between 1 and 256, got 0
plans/br.toml:2:11: `retries` must be between 0 and 100, got 101
plans/br.toml:3:13: `isolation` must be `worktree` or `shared`, got `none`
plans/br.toml:6:6: task id `a b` contains ` `: only letters, digits, `.`, `_` and `-` are allowed
plans/br.toml:7:7: task `a b`: `run` is empty
plans/br.toml:8:11: task `a b`: `timeout` must be between 1ms and 30 days, got `0s`
plans/br.toml:9:10: task `a b`: `/etc` is absolute: lock paths are relative to the repository root
plans/br.toml:9:18: task `a b`: `../x` leaves the repository (`..`)
plans/br.toml:10:9: task `a b`: `BR_X` is reserved: br sets the `BR_` variables itself
plans/br.toml:11:10: task `a b`: unknown dependency `nope` in after
plans/br.toml:13:1: task `c` has no `run` command (or `agent`)
plans/br.toml:15:10: task `c`: depends on itself in after";
        let err = parse(source).unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_eq!(err.problems.len(), 12);
        assert_eq!(err.file, Path::new(FILE));
        assert_eq!(
            err.problems[0],
            PlanProblem {
                line: Some(1),
                column: Some(11),
                message: "`workers` must be between 1 and 256, got 0".into()
            }
        );
    }

    /// Unknown keys are not reported alone, one run at a time: they come with every other
    /// problem of the plan, in file order.
    #[test]
    fn unknown_keys_come_with_every_other_problem() {
        let source = "\
naem = \"typo\"
workers = 0

[[task]]
id = \"a\"
run = \"true\"
timout = \"5s\"
after = [\"nope\"]
";
        let err = parse(source).unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(
            lines[0].starts_with("plans/br.toml:1:1: unknown key `naem`"),
            "{err}"
        );
        assert_eq!(
            lines[1],
            "plans/br.toml:2:11: `workers` must be between 1 and 256, got 0"
        );
        assert!(
            lines[2].starts_with(
                "plans/br.toml:7:1: unknown key `timout` in [[task]] (did you mean `timeout`?)"
            ),
            "{err}"
        );
        assert_eq!(
            lines[3],
            "plans/br.toml:8:10: task `a`: unknown dependency `nope` in after"
        );
    }

    /// Every limit, at its edge: the largest value passes, one more is refused with the place
    /// and the reason, and all the problems are reported at once.
    #[test]
    fn lengths_and_counts_are_limited_with_file_line_and_reason() {
        let at_limit = format!(
            "name = \"{name}\"\nbase = \"{base}\"\nverify = \"{command}\"\n[[task]]\nid = \"{id}\"\n\
             run = \"{command}\"\nfiles = [{files}]\nenv = {{ {key} = \"{value}\" }}\n",
            name = "é".repeat(MAX_NAME_CHARS),
            base = "b".repeat(MAX_BASE_BYTES),
            command = "c".repeat(MAX_COMMAND_BYTES),
            id = "i".repeat(64),
            files = (0..MAX_FILES)
                .map(|i| format!("\"f{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
            key = "K".repeat(MAX_ENV_NAME_BYTES),
            value = "v".repeat(MAX_ENV_VALUE_BYTES),
        );
        let plan = parse(&at_limit).unwrap();
        assert_eq!(plan.name.chars().count(), MAX_NAME_CHARS);
        assert_eq!(plan.tasks[0].files.len(), MAX_FILES);

        let values: Vec<String> = (0..4)
            .map(|i| format!("V{i} = \"{}\"", "v".repeat(MAX_ENV_VALUE_BYTES)))
            .collect();
        let over = format!(
            "name = \"{name}\"\nbase = \"{base}\"\nverify = \"{command}\"\n[[task]]\nid = \"{id}\"\n\
             run = \"{command}\"\nfiles = [{files}, \"{path}\"]\n\
             env = {{ {key} = \"x\", BIG = \"{value}\", {values} }}\n",
            name = "é".repeat(MAX_NAME_CHARS + 1),
            base = "b".repeat(MAX_BASE_BYTES + 1),
            command = "c".repeat(MAX_COMMAND_BYTES + 1),
            id = "i".repeat(70_000),
            files = (0..MAX_FILES)
                .map(|i| format!("\"f{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
            path = "p".repeat(MAX_LOCK_PATH_BYTES + 1),
            key = "K".repeat(MAX_ENV_NAME_BYTES + 1),
            value = "v".repeat(MAX_ENV_VALUE_BYTES + 1),
            values = values.join(", "),
        );
        let err = parse(&over).unwrap_err();
        let cut_id = format!("{}…", "i".repeat(64));
        let task = format!("task `{cut_id}`");
        let want: Vec<(usize, String)> = vec![
            (
                1,
                format!("`name` is 129 characters long; at most {MAX_NAME_CHARS} are allowed"),
            ),
            (
                2,
                "`base` is 1025 bytes long; at most 1024 are allowed".into(),
            ),
            (
                3,
                "`verify` is 131072 bytes long; at most 131071 are allowed".into(),
            ),
            (
                5,
                format!("task id `{cut_id}` is longer than 64 characters"),
            ),
            (
                6,
                format!("{task}: `run` is 131072 bytes long; at most 131071 are allowed"),
            ),
            (
                7,
                format!(
                    "{task}: `files` lists 1001 paths; at most 1000 are allowed (a glob such as \
                     `src/**` covers any number of files)"
                ),
            ),
            (
                7,
                format!(
                    "{task}: lock path `{}…` is 1025 bytes long; at most 1024 are allowed",
                    "p".repeat(40)
                ),
            ),
            (
                8,
                format!(
                    "{task}: environment variable name `{}…` is 257 bytes long; at most 256 are \
                     allowed",
                    "K".repeat(40)
                ),
            ),
            (
                8,
                format!("{task}: `env` value `BIG` is 65537 bytes long; at most 65536 are allowed"),
            ),
            (
                8,
                format!(
                    "{task}: `env` holds more than 262144 bytes of names and values (from this \
                     variable on); put large data in a file the task reads"
                ),
            ),
        ];
        let got: Vec<(usize, String)> = err
            .problems
            .iter()
            .map(|p| (p.line.unwrap(), p.message.clone()))
            .collect();
        assert_eq!(got, want);
        // The limit counts tasks, not lines: the problem points at the first task too many.
        let many = chain(MAX_TASKS + 2, false);
        let err = parse(&many).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].line, Some(MAX_TASKS * 4));
        assert_eq!(
            err.problems[0].message,
            "the plan has 100002 tasks; at most 100000 are allowed (this is the first one too many)"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_where_they_start() {
        let err = Plan::parse_bytes(b"name = \"x\"\n# caf\xe9\n", Path::new(FILE)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plans/br.toml:2:6: the plan is not UTF-8 text: byte 0xe9 at byte offset 16 (save \
             it as UTF-8)"
        );
        let err = Plan::parse_bytes(b"\xff\xfen\0a\0", Path::new(FILE)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plans/br.toml:1:1: the plan is not UTF-8 text: byte 0xff at byte offset 0 (the \
             file looks like UTF-16: save it as UTF-8)"
        );
        let plan = Plan::parse_bytes(TASK_A.as_bytes(), Path::new(FILE)).unwrap();
        assert_eq!(plan.tasks[0].id, id("a"));
    }

    #[test]
    fn a_long_file_name_gives_a_cut_default_name() {
        let stem = "s".repeat(200);
        let plan = Plan::parse(
            "[[task]]\nid = \"a\"\nrun = \"true\"\n",
            Path::new(&format!("{stem}.toml")),
        )
        .unwrap();
        assert_eq!(plan.name, "s".repeat(MAX_NAME_CHARS));
        assert_eq!(session_name("  ok  "), Ok("ok".to_string()));
        assert_eq!(session_name(" "), Err("is empty".to_string()));
    }

    #[test]
    fn a_dependency_on_a_task_with_an_invalid_id_is_not_reported_twice() {
        let source = "[[task]]\nid = \"a b\"\nrun = \"true\"\n\
                      [[task]]\nid = \"c\"\nrun = \"true\"\nafter = [\"a b\"]\n";
        assert_eq!(
            parse(source).unwrap_err().to_string(),
            "plans/br.toml:2:6: task id `a b` contains ` `: only letters, digits, `.`, `_` and \
             `-` are allowed"
        );
    }

    #[test]
    fn columns_count_characters_and_ignore_crlf_and_bom() {
        let source =
            "\u{feff}name = \"é\"\r\nworkers = 0\r\n[[task]]\r\nid = \"ü ü\"\r\nrun = \"true\"\r\n";
        assert_eq!(
            parse(source).unwrap_err().to_string(),
            "plans/br.toml:2:11: `workers` must be between 1 and 256, got 0\n\
             plans/br.toml:4:6: task id `ü ü` contains `ü`: only letters, digits, `.`, `_` and \
             `-` are allowed"
        );
    }

    #[test]
    fn minimal_plan_gets_the_defaults() {
        let plan = parse("[[task]]\nid = \"a\"\nrun = \"true\"\n").unwrap();
        assert_eq!(
            plan,
            Plan {
                name: "br".into(),
                workers: None,
                base: "HEAD".into(),
                isolation: Isolation::Worktree,
                heartbeat_timeout: Duration::from_secs(30),
                retries: 0,
                scope: ScopeMode::Report,
                verify: None,
                on_conflict: OnConflict::Requeue,
                start: StartMode::Tip,
                land: LandMode::Auto,
                max_repairs: DEFAULT_MAX_REPAIRS,
                keep: vec![],
                agents: Vec::new(),
                pools: BTreeMap::new(),
                copy: Vec::new(),
                setup: None,
                setup_inputs: Vec::new(),
                ports: 0,
                remote: None,
                tasks: vec![TaskSpec {
                    id: id("a"),
                    run: "true".into(),
                    files: vec![],
                    after: vec![],
                    timeout: None,
                    retries: 0,
                    env: BTreeMap::new(),
                    start: StartMode::Tip,
                    land: LandMode::Auto,
                    on_conflict: OnConflict::Requeue,
                    max_repairs: DEFAULT_MAX_REPAIRS,
                    prompt: None,
                    prompt_file: None,
                    agent: None,
                    pool: None,
                }],
            }
        );
    }

    #[test]
    fn full_plan_sets_every_key() {
        let source = r#"
name = "  build-v3.1  "
workers = 4
base = "main"
isolation = "shared"
heartbeat_timeout = "1m 30s"
retries = 2
scope = "strict"
verify = "make check"
on_conflict = "requeue"
start = "base"
land = "manual"
max_repairs = 5
keep = ["target/", "node_modules/"]

[[task]]
id = "schema"
run = "make schema"
files = ["db/schema.sql"]
prompt = "Write the schema."

[[task]]
id = "api"
run = "make api"
files = ["src/api/**", "Cargo.lock"]
after = ["schema"]
timeout = "10m"
retries = 1
env = { RUST_LOG = "info", _PRIVATE = "1" }
prompt_file = "specs/api.md"
start = "tip"
land = "auto"
on_conflict = "fail"
max_repairs = 0
"#;
        let plan = parse(source).unwrap();
        assert_eq!(
            plan,
            Plan {
                name: "build-v3.1".into(),
                workers: Some(4),
                base: "main".into(),
                isolation: Isolation::Shared,
                heartbeat_timeout: Duration::from_secs(90),
                retries: 2,
                scope: ScopeMode::Strict,
                verify: Some("make check".into()),
                on_conflict: OnConflict::Requeue,
                start: StartMode::Base,
                land: LandMode::Manual,
                max_repairs: 5,
                keep: vec!["target/".into(), "node_modules/".into()],
                agents: Vec::new(),
                pools: BTreeMap::new(),
                copy: Vec::new(),
                setup: None,
                setup_inputs: Vec::new(),
                ports: 0,
                remote: None,
                tasks: vec![
                    TaskSpec {
                        id: id("schema"),
                        run: "make schema".into(),
                        files: vec![lock("db/schema.sql")],
                        after: vec![],
                        timeout: None,
                        retries: 2,
                        env: BTreeMap::new(),
                        start: StartMode::Base,
                        land: LandMode::Manual,
                        on_conflict: OnConflict::Requeue,
                        max_repairs: 5,
                        prompt: Some("Write the schema.".into()),
                        prompt_file: None,
                        agent: None,
                        pool: None,
                    },
                    TaskSpec {
                        id: id("api"),
                        run: "make api".into(),
                        files: vec![lock("src/api/**"), lock("Cargo.lock")],
                        after: vec![id("schema")],
                        timeout: Some(Duration::from_secs(600)),
                        retries: 1,
                        env: BTreeMap::from([
                            ("RUST_LOG".into(), "info".into()),
                            ("_PRIVATE".into(), "1".into()),
                        ]),
                        start: StartMode::Tip,
                        land: LandMode::Auto,
                        on_conflict: OnConflict::Fail,
                        max_repairs: 0,
                        prompt: None,
                        prompt_file: Some(PathBuf::from("specs/api.md")),
                        agent: None,
                        pool: None,
                    },
                ],
            }
        );
        assert_eq!(plan.task(&id("api")).map(|t| t.retries), Some(1));
        assert_eq!(plan.task(&id("nope")), None);
    }

    #[test]
    fn tasks_inherit_the_plans_retries_unless_they_set_their_own() {
        let source = "retries = 3\n\
                      [[task]]\nid = \"inherits\"\nrun = \"true\"\n\
                      [[task]]\nid = \"own\"\nrun = \"true\"\nretries = 0\n";
        let plan = parse(source).unwrap();
        assert_eq!(plan.retries, 3);
        assert_eq!(plan.task(&id("inherits")).unwrap().retries, 3);
        assert_eq!(plan.task(&id("own")).unwrap().retries, 0);
    }

    #[test]
    fn the_default_name_is_the_files_stem() {
        let source = "[[task]]\nid = \"a\"\nrun = \"true\"\n";
        let name = |file: &str| Plan::parse(source, Path::new(file)).unwrap().name;
        assert_eq!(name("plans/nightly.toml"), "nightly");
        assert_eq!(name("release.v2.toml"), "release.v2");
        assert_eq!(name("Plan"), "Plan");
        // No stem at all: still a usable name.
        assert_eq!(name(""), "plan");
    }

    #[test]
    fn duplicate_files_and_dependencies_are_dropped_silently() {
        let source = "[[task]]\nid = \"a\"\nrun = \"true\"\n\
                      [[task]]\nid = \"b\"\nrun = \"true\"\n\
                      files = [\"src\", \"src/\", \"docs\", \"src\"]\n\
                      after = [\"a\", \"a\"]\n";
        let plan = parse(source).unwrap();
        let b = plan.task(&id("b")).unwrap();
        assert_eq!(b.files, vec![lock("src"), lock("docs")]);
        assert_eq!(b.after, vec![id("a")]);
    }

    #[test]
    fn tasks_may_be_written_inline_and_env_as_a_sub_table() {
        let source = "task = [{ id = \"a\", run = \"true\" }]\n\
                      [[task]]\nid = \"b\"\nrun = \"true\"\n[task.env]\nGREETING = \"hi\"\n";
        // TOML does not allow extending an inline array with [[task]], so try them apart.
        assert!(parse(source).is_err());
        let inline = parse("task = [{ id = \"a\", run = \"true\", after = [] }]\n").unwrap();
        assert_eq!(inline.tasks.len(), 1);
        let sub_table =
            parse("[[task]]\nid = \"b\"\nrun = \"true\"\n[task.env]\nGREETING = \"hi\"\n").unwrap();
        assert_eq!(sub_table.tasks[0].env["GREETING"], "hi");
    }

    #[test]
    fn the_example_parses_and_shows_every_key() {
        let plan = Plan::example();
        let parsed = Plan::parse(plan, Path::new("br.toml")).unwrap();
        // A task's own start, land, on_conflict and max_repairs are the top-level keys again;
        // `prompt_file`, exclusive of `prompt`, and `agent`, exclusive of `run`, are said in
        // words; the `agent` and `pool` tables are shown as dotted keys.
        let task_only = TASK_KEYS
            .iter()
            .filter(|k| !TOP_LEVEL_KEYS.contains(k) && **k != "prompt_file" && **k != "agent");
        for key in TOP_LEVEL_KEYS
            .iter()
            .filter(|k| !matches!(**k, "task" | "agent"))
            .chain(task_only)
        {
            assert!(plan.contains(&format!("{key} = ")), "example lacks `{key}`");
        }
        assert!(plan.contains("[[task]]"));
        // It shows dependencies and two tasks whose files overlap, so they take turns.
        assert!(parsed.tasks.iter().any(|t| !t.after.is_empty()));
        let (notes, greeting) = (&parsed.tasks[0], &parsed.tasks[1]);
        assert!(notes.files[0].overlaps(&greeting.files[0]));
        // Every commented-out key shows a value that parses, so uncommenting one is safe.
        let uncommented: String = plan
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        Plan::parse(&uncommented, Path::new("br.toml")).unwrap();
    }

    #[test]
    fn serialises_durations_as_milliseconds() {
        let source = "name = \"n\"\nworkers = 2\n\
                      [[task]]\nid = \"a\"\nrun = \"true\"\nfiles = [\"src\"]\n\
                      timeout = \"1.5s\"\nenv = { K = \"v\" }\n\
                      [[task]]\nid = \"b\"\nrun = \"true\"\nafter = [\"a\"]\n";
        let json = serde_json::to_value(parse(source).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "n",
                "workers": 2,
                "base": "HEAD",
                "isolation": "worktree",
                "heartbeat_timeout_ms": 30000,
                "retries": 0,
                "scope": "report",
                "verify": null,
                "on_conflict": "requeue",
                "start": "tip",
                "land": "auto",
                "max_repairs": 3,
                "keep": [],
                "agents": [],
                "pools": {},
                "copy": [],
                "setup": null,
                "setup_inputs": [],
                "ports": 0,
                "remote": null,
                "tasks": [
                    {
                        "id": "a",
                        "run": "true",
                        "files": ["src"],
                        "after": [],
                        "timeout_ms": 1500,
                        "retries": 0,
                        "env": {"K": "v"},
                        "start": "tip",
                        "land": "auto",
                        "on_conflict": "requeue",
                        "max_repairs": 3,
                        "prompt": null,
                        "prompt_file": null,
                        "agent": null,
                        "pool": null,
                    },
                    {
                        "id": "b",
                        "run": "true",
                        "files": [],
                        "after": ["a"],
                        "timeout_ms": null,
                        "retries": 0,
                        "env": {},
                        "start": "tip",
                        "land": "auto",
                        "on_conflict": "requeue",
                        "max_repairs": 3,
                        "prompt": null,
                        "prompt_file": null,
                        "agent": null,
                        "pool": null,
                    },
                ],
            })
        );
    }

    #[test]
    fn choice_names_match_their_serde_names() {
        for v in Isolation::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(v.to_string(), v.as_str());
        }
        for v in ScopeMode::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(v.to_string(), v.as_str());
        }
        for v in OnConflict::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(v.to_string(), v.as_str());
        }
    }

    fn chain(n: usize, close_the_loop: bool) -> String {
        let mut source = String::with_capacity(n * 48);
        for i in 0..n {
            source.push_str(&format!("[[task]]\nid = \"t{i}\"\nrun = \"true\"\n"));
            if i > 0 {
                source.push_str(&format!("after = [\"t{}\"]\n", i - 1));
            } else if close_the_loop {
                source.push_str(&format!("after = [\"t{}\"]\n", n - 1));
            }
        }
        source
    }

    /// The graph checks are iterative: a long chain neither overflows the stack nor takes
    /// quadratic time (a slow algorithm shows up as a slow test, not as an assertion).
    #[test]
    fn a_ten_thousand_task_chain_parses() {
        let plan = parse(&chain(10_000, false)).unwrap();
        assert_eq!(plan.tasks.len(), 10_000);
        assert_eq!(plan.tasks[9_999].after, vec![id("t9998")]);
    }

    #[test]
    fn a_ten_thousand_task_cycle_is_named_once() {
        let err = parse(&chain(10_000, true)).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        let problem = &err.problems[0];
        assert_eq!((problem.line, problem.column), (Some(4), Some(10)));
        assert!(
            problem
                .message
                .starts_with("dependency cycle: `t0` → `t9999` → `t9998` → "),
            "{}",
            &problem.message[..80]
        );
        assert!(problem.message.ends_with(" → `t1` → `t0`"));
        assert_eq!(problem.message.matches(" → ").count(), 10_000);
    }

    #[test]
    fn a_task_after_ten_thousand_others_parses() {
        let mut source = chain(10_000, false);
        let all: Vec<String> = (0..10_000).map(|i| format!("\"t{i}\"")).collect();
        source.push_str(&format!(
            "[[task]]\nid = \"last\"\nrun = \"true\"\nafter = [{}]\n",
            all.join(", ")
        ));
        let plan = parse(&source).unwrap();
        assert_eq!(plan.task(&id("last")).unwrap().after.len(), 10_000);
    }

    #[test]
    fn the_strongly_connected_components_of_a_small_graph() {
        // 0 → 1 → 2 → 0, 2 → 3, 3 → 4 → 3, 5 alone.
        let edges = vec![vec![1], vec![2], vec![0, 3], vec![4], vec![3], vec![]];
        let mut components: Vec<Vec<usize>> = strongly_connected_components(&edges)
            .into_iter()
            .map(|mut c| {
                c.sort_unstable();
                c
            })
            .collect();
        components.sort();
        assert_eq!(components, vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
    }

    fn check_never_panics_and_reports_on_one_line(source: &str) {
        if let Err(e) = Plan::parse(source, Path::new(FILE)) {
            assert!(!e.problems.is_empty());
            let lines = source.split('\n').count();
            for p in &e.problems {
                assert_ne!(p.message, "invalid plan", "a problem without a reason");
                assert!(!p.message.is_empty());
                assert!(!p.message.contains(['\n', '\r']), "{:?}", p.message);
                assert!(p.line.is_none_or(|l| (1..=lines).contains(&l)), "{p:?}");
                assert_eq!(p.line.is_some(), p.column.is_some());
            }
            assert_eq!(e.to_string().lines().count(), e.problems.len());
        }
    }

    /// Whether `edges` (task → the tasks it waits for) has a cycle, the slow and obvious way:
    /// repeatedly remove tasks that wait for nothing left.
    fn has_cycle(n: usize, edges: &[(usize, usize)]) -> bool {
        let mut left: Vec<usize> = (0..n).collect();
        loop {
            let free: Vec<usize> = left
                .iter()
                .copied()
                .filter(|t| !edges.iter().any(|(a, b)| a == t && left.contains(b)))
                .collect();
            if free.is_empty() {
                return !left.is_empty();
            }
            left.retain(|t| !free.contains(t));
        }
    }

    proptest! {
        /// A plan is refused for cycles exactly when its graph has one, and every cycle named is
        /// a real one: each task in it waits for the next, and it ends where it starts.
        #[test]
        fn cycles_are_found_exactly_and_named_truly(
            n in 1..9usize,
            raw_edges in prop::collection::vec((0..9usize, 0..9usize), 0..20),
        ) {
            let edges: Vec<(usize, usize)> = raw_edges
                .into_iter()
                .map(|(a, b)| (a % n, b % n))
                .filter(|(a, b)| a != b)
                .collect();
            let mut source = String::new();
            for t in 0..n {
                let after: Vec<String> = edges
                    .iter()
                    .filter(|(a, _)| *a == t)
                    .map(|(_, b)| format!("\"t{b}\""))
                    .collect();
                source.push_str(&format!(
                    "[[task]]\nid = \"t{t}\"\nrun = \"true\"\nafter = [{}]\n",
                    after.join(", ")
                ));
            }
            match parse(&source) {
                Ok(_) => prop_assert!(!has_cycle(n, &edges)),
                Err(e) => {
                    prop_assert!(has_cycle(n, &edges));
                    for p in &e.problems {
                        let cycle = p.message.strip_prefix("dependency cycle: ");
                        prop_assert!(cycle.is_some(), "{}", p.message);
                        let names: Vec<usize> = cycle
                            .unwrap()
                            .split(" → ")
                            .map(|s| s.trim_matches('`').trim_start_matches('t').parse().unwrap())
                            .collect();
                        prop_assert!(names.len() >= 3);
                        prop_assert_eq!(names.first(), names.last());
                        for pair in names.windows(2) {
                            prop_assert!(edges.contains(&(pair[0], pair[1])), "{}", p.message);
                        }
                    }
                    // Each cycle once: no task is in two reported cycles (the first name of
                    // each cycle repeats as its last, so skip it).
                    let mut seen = HashSet::new();
                    for p in &e.problems {
                        let names: Vec<&str> = p.message.split(" → ").skip(1).collect();
                        for name in names {
                            prop_assert!(seen.insert(name.to_string()), "{e}");
                        }
                    }
                }
            }
        }

        #[test]
        fn random_text_never_panics(source in any::<String>()) {
            check_never_panics_and_reports_on_one_line(&source);
        }

        #[test]
        fn toml_like_text_never_panics(source in "[\\[\\]a-z_=\"' \n0-9.{},#\\\\/*-]{0,300}") {
            check_never_panics_and_reports_on_one_line(&source);
        }

        #[test]
        fn mutated_example_never_panics(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0..40usize, ".{0,8}"), 1..6)
        ) {
            let mut source = Plan::example().to_string();
            for (at, delete, insert) in edits {
                let mut start = at.index(source.len() + 1);
                while !source.is_char_boundary(start) {
                    start -= 1;
                }
                let mut end = (start + delete).min(source.len());
                while !source.is_char_boundary(end) {
                    end += 1;
                }
                source.replace_range(start..end, &insert);
            }
            check_never_panics_and_reports_on_one_line(&source);
        }
    }
}
