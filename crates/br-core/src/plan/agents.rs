//! The plan's keys for fleets of coding agents: `[agent.NAME]` profiles (over br's built-ins,
//! key by key), `[pool.NAME]` caps, a task's `agent` and `pool`, and what each worktree slot
//! gets: `copy`, `setup`, `setup_inputs`, `ports`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    DurationRange, DurationText, Integer, MAX_COMMAND_BYTES, Problems, RawTask, Strings,
    at_most_bytes, duration, integer, is_env_name, no_nul, non_empty,
};
use crate::agent::{
    AgentProfile, DEFAULT_POOL_BACKOFF, PoolSpec, UsageFormat, builtin, builtin_profiles,
    rate_limit_pattern,
};
use crate::lock::LockPath;

/// An `[agent.NAME]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [agent.NAME] table")]
pub(super) struct RawAgent {
    run: Option<Spanned<String>>,
    config_env: Option<Spanned<String>>,
    config_from: Option<Spanned<String>>,
    rate_limit: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
    usage: Option<Spanned<String>>,
}

/// A `[pool.NAME]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [pool.NAME] table")]
pub(super) struct RawPool {
    size: Option<Spanned<Integer>>,
    backoff: Option<Spanned<DurationText>>,
}

/// The fleet keys of a plan as written.
#[derive(Debug)]
pub(super) struct RawFleet<'a> {
    pub(super) agent: &'a BTreeMap<Spanned<String>, Spanned<RawAgent>>,
    pub(super) pool: &'a BTreeMap<Spanned<String>, Spanned<RawPool>>,
    pub(super) copy: &'a Strings,
    pub(super) setup: Option<&'a Spanned<String>>,
    pub(super) setup_inputs: &'a Strings,
    pub(super) ports: Option<&'a Spanned<Integer>>,
}

/// The fleet keys, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Fleet {
    /// Every profile in effect: br's built-ins, with the plan's tables over them.
    pub(super) agents: BTreeMap<String, AgentProfile>,
    pub(super) pools: BTreeMap<String, PoolSpec>,
    pub(super) copy: Vec<String>,
    pub(super) setup: Option<String>,
    pub(super) setup_inputs: Vec<String>,
    pub(super) ports: u32,
}

/// The most tasks a pool may run at once.
const POOL_SIZE_MAX: i128 = 10_000;
/// The most ports a slot may ask for.
const PORTS_MAX: i128 = 1000;
/// At most this many `copy` or `setup_inputs` entries.
const MAX_PATHS: usize = 1000;
/// The longest `rate_limit` pattern.
const MAX_PATTERN_BYTES: usize = 4096;

const BACKOFF_RANGE: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(24 * 60 * 60),
    text: "between 1s and 24h",
};

/// Agent and pool names: what a task id may be, so they print and sort plainly.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn read_fleet(raw: &RawFleet<'_>, problems: &mut Problems) -> Option<Fleet> {
    let mut ok = true;
    let mut pools = BTreeMap::new();
    for (name, table) in raw.pool {
        match read_pool(name, table, problems) {
            Some(spec) => {
                pools.insert(name.get_ref().clone(), spec);
            }
            None => ok = false,
        }
    }
    let mut agents: BTreeMap<String, AgentProfile> = builtin_profiles()
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    for (name, table) in raw.agent {
        match read_agent(name, table, &pools, problems) {
            Some(profile) => {
                agents.insert(profile.name.clone(), profile);
            }
            None => ok = false,
        }
    }
    let copy = repo_paths(raw.copy, "`copy`", problems);
    let setup = match raw.setup {
        Some(v) => {
            let fine = no_nul(v, "`setup`", problems)
                & at_most_bytes(v, MAX_COMMAND_BYTES, "`setup`", problems);
            non_empty(v, "`setup`", problems).filter(|_| fine).map(Some)
        }
        None => Some(None),
    };
    let setup_inputs = repo_paths(raw.setup_inputs, "`setup_inputs`", problems);
    if raw.setup.is_none()
        && let Some(first) = raw.setup_inputs.0.first()
    {
        problems.at(
            &first.span(),
            "`setup_inputs` without `setup`: they say when `setup` runs again; add `setup`",
        );
        ok = false;
    }
    let ports = match raw.ports {
        Some(p) => integer(p, 0, PORTS_MAX, "`ports`", problems),
        None => Some(0),
    };
    let fleet = Fleet {
        agents,
        pools,
        copy: copy?,
        setup: setup?,
        setup_inputs: setup_inputs?,
        ports: ports?,
    };
    ok.then_some(fleet)
}

fn read_pool(
    name: &Spanned<String>,
    table: &Spanned<RawPool>,
    problems: &mut Problems,
) -> Option<PoolSpec> {
    let what = format!("[pool.{}]", name.get_ref());
    if !valid_name(name.get_ref()) {
        problems.at(
            &name.span(),
            format!("{what}: a pool name is 1 to 64 characters of [A-Za-z0-9._-]"),
        );
        return None;
    }
    let t = table.get_ref();
    let size = match &t.size {
        Some(s) => integer(s, 1, POOL_SIZE_MAX, &format!("{what} `size`"), problems),
        None => {
            problems.at(
                &table.span(),
                format!("{what} has no `size` (how many of its tasks may run at once)"),
            );
            None
        }
    };
    let backoff = match &t.backoff {
        Some(d) => duration(d, &BACKOFF_RANGE, &format!("{what} `backoff`"), problems),
        None => Some(DEFAULT_POOL_BACKOFF),
    };
    Some(PoolSpec {
        size: size?,
        backoff: backoff?,
    })
}

fn read_agent(
    name: &Spanned<String>,
    table: &Spanned<RawAgent>,
    pools: &BTreeMap<String, PoolSpec>,
    problems: &mut Problems,
) -> Option<AgentProfile> {
    let what = format!("[agent.{}]", name.get_ref());
    if !valid_name(name.get_ref()) {
        problems.at(
            &name.span(),
            format!("{what}: an agent name is 1 to 64 characters of [A-Za-z0-9._-]"),
        );
        return None;
    }
    let t = table.get_ref();
    // A table named like a built-in changes only the keys it writes.
    let base = builtin(name.get_ref());
    let mut ok = true;
    let run = match (&t.run, &base) {
        (Some(run), _) => {
            let label = format!("{what} `run`");
            let fine = no_nul(run, &label, problems)
                & at_most_bytes(run, MAX_COMMAND_BYTES, &label, problems);
            non_empty(run, &label, problems).filter(|_| fine)
        }
        (None, Some(b)) => Some(b.run.clone()),
        (None, None) => {
            problems.at(
                &table.span(),
                format!(
                    "{what} has no `run` (the command that runs the agent on \
                     \"$BR_PROMPT_FILE\"); br's own profiles are claude, codex, aider and gemini"
                ),
            );
            None
        }
    };
    let config_env = match &t.config_env {
        Some(v) => {
            let name = v.get_ref().trim();
            if is_env_name(name) && !name.starts_with("BR_") {
                Some(name.to_string())
            } else {
                problems.at(
                    &v.span(),
                    format!(
                        "{what} `config_env`: `{name}` is not an environment variable name \
                         (letters, digits and _, not starting with a digit or BR_)"
                    ),
                );
                ok = false;
                None
            }
        }
        None => base.as_ref().and_then(|b| b.config_env.clone()),
    };
    let config_from = match &t.config_from {
        Some(v) => {
            let fine = no_nul(v, &format!("{what} `config_from`"), problems);
            let text = non_empty(v, &format!("{what} `config_from`"), problems).filter(|_| fine);
            ok &= text.is_some();
            text
        }
        None => base.as_ref().and_then(|b| b.config_from.clone()),
    };
    if config_from.is_some() && config_env.is_none() {
        problems.at(
            &table.span(),
            format!(
                "{what}: `config_from` without `config_env` — name the variable that points the \
                 agent at its config directory"
            ),
        );
        ok = false;
    }
    let rate_limit = match &t.rate_limit {
        Some(v) => {
            let label = format!("{what} `rate_limit`");
            let fine =
                no_nul(v, &label, problems) & at_most_bytes(v, MAX_PATTERN_BYTES, &label, problems);
            match non_empty(v, &label, problems).filter(|_| fine) {
                Some(pattern) => match rate_limit_pattern(&pattern) {
                    Ok(_) => Some(pattern),
                    Err(e) => {
                        problems.at(
                            &v.span(),
                            format!("{label} is not a regular expression: {e}"),
                        );
                        ok = false;
                        None
                    }
                },
                None => {
                    ok = false;
                    None
                }
            }
        }
        None => base.as_ref().and_then(|b| b.rate_limit.clone()),
    };
    let pool = match &t.pool {
        Some(p) => {
            ok &= known_pool(p, pools, &format!("{what} `pool`"), problems);
            Some(p.get_ref().trim().to_string())
        }
        None => base.as_ref().and_then(|b| b.pool.clone()),
    };
    let usage = match &t.usage {
        Some(v) => super::choice(
            v,
            UsageFormat::ALL,
            UsageFormat::as_str,
            &format!("{what} `usage`"),
            problems,
        ),
        None => Some(base.as_ref().map_or(UsageFormat::None, |b| b.usage)),
    };
    let profile = AgentProfile {
        name: name.get_ref().clone(),
        run: run?,
        config_env,
        config_from,
        rate_limit,
        pool,
        usage: usage?,
        from_plan: true,
    };
    ok.then_some(profile)
}

/// Whether `pool` names a `[pool.NAME]` of the plan; says so when not.
fn known_pool(
    pool: &Spanned<String>,
    pools: &BTreeMap<String, PoolSpec>,
    label: &str,
    problems: &mut Problems,
) -> bool {
    let name = pool.get_ref().trim();
    if pools.contains_key(name) {
        return true;
    }
    let known: Vec<&str> = pools.keys().map(String::as_str).collect();
    problems.at(
        &pool.span(),
        format!(
            "{label}: unknown pool `{name}`; add [pool.{name}] with a `size`{}",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (pools: {})", known.join(", "))
            }
        ),
    );
    false
}

/// A task's command, agent and pool: `run` or `agent` (one of the two), and the task's `pool` or
/// its agent's. `None` when something is wrong (and reported).
pub(super) struct TaskAgent {
    pub(super) run: String,
    pub(super) agent: Option<AgentProfile>,
    pub(super) pool: Option<String>,
}

pub(super) fn task_agent(
    task: &Spanned<RawTask>,
    label: &str,
    fleet: Option<&Fleet>,
    problems: &mut Problems,
) -> Option<TaskAgent> {
    let t = task.get_ref();
    let agent = match (&t.run, &t.agent) {
        (Some(run), Some(agent)) => {
            problems.at(
                &agent.span(),
                format!(
                    "{label} has both `run` and `agent`: give one (the agent's profile says \
                     what runs)"
                ),
            );
            let _ = run;
            return None;
        }
        (None, None) => {
            problems.at(
                &task.span(),
                format!("{label} has no `run` command (or `agent`)"),
            );
            return None;
        }
        (Some(run), None) => {
            let what = format!("{label}: `run`");
            let fine = no_nul(run, &what, problems)
                & at_most_bytes(run, MAX_COMMAND_BYTES, &what, problems);
            let run = non_empty(run, &what, problems).filter(|_| fine);
            let pool = task_pool(t, label, fleet, None, problems)?;
            return Some(TaskAgent {
                run: run?,
                agent: None,
                pool,
            });
        }
        (None, Some(agent)) => agent,
    };
    // The plan's fleet keys were wrong: that has been said; a task naming an agent is not
    // judged against a half-read list.
    let fleet = fleet?;
    let name = agent.get_ref().trim();
    let Some(profile) = fleet.agents.get(name) else {
        let known: Vec<&str> = fleet.agents.keys().map(String::as_str).collect();
        problems.at(
            &agent.span(),
            format!(
                "{label}: unknown agent `{name}` (agents: {}); add an [agent.{name}] table with \
                 a `run`",
                known.join(", ")
            ),
        );
        return None;
    };
    // Without a pool of its own, an agent's tasks share one named after it, with no cap: a
    // rate limit then parks every task of that agent, not only the one that hit it.
    let default = profile.pool.clone().or_else(|| Some(profile.name.clone()));
    let pool = task_pool(t, label, Some(fleet), default, problems)?;
    Some(TaskAgent {
        run: profile.run.clone(),
        agent: Some(profile.clone()),
        pool,
    })
}

fn task_pool(
    t: &RawTask,
    label: &str,
    fleet: Option<&Fleet>,
    default: Option<String>,
    problems: &mut Problems,
) -> Option<Option<String>> {
    match &t.pool {
        None => Some(default),
        Some(p) => {
            let fleet = fleet?;
            known_pool(p, &fleet.pools, &format!("{label}: `pool`"), problems)
                .then(|| Some(p.get_ref().trim().to_string()))
        }
    }
}

/// `copy` and `setup_inputs`: repo-relative paths or globs, as lock paths are written.
fn repo_paths(paths: &Strings, what: &str, problems: &mut Problems) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(paths.0.len());
    let mut ok = true;
    if let Some(extra) = paths.0.get(MAX_PATHS) {
        problems.at(
            &extra.span(),
            format!(
                "{what} lists {} paths; at most {MAX_PATHS} are allowed",
                paths.0.len()
            ),
        );
        ok = false;
    }
    for p in &paths.0 {
        let text = p.get_ref().trim();
        match LockPath::parse(text) {
            Ok(path) if path.as_str() != ".git" && !path.as_str().starts_with(".git/") => {
                out.push(path.as_str().to_string());
            }
            Ok(_) => {
                problems.at(&p.span(), format!("{what}: `{text}` is inside .git"));
                ok = false;
            }
            Err(e) => {
                problems.at(&p.span(), format!("{what}: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::Plan;
    use crate::agent::UsageFormat;

    fn parse(source: &str) -> Result<Plan, String> {
        Plan::parse(source, Path::new("br.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_task_names_an_agent_and_runs_its_profile_in_its_pool() {
        let plan = parse(
            r#"
[agent.claude]
pool = "anthropic"
[agent.stand-in]
run = "sh agent.sh"
usage = "claude_json"
rate_limit = "slow down"
[pool.anthropic]
size = 3
[pool.local]
size = 1
backoff = "5s"
[[task]]
id = "a"
agent = "claude"
prompt = "Do it."
[[task]]
id = "b"
agent = "stand-in"
pool = "local"
[[task]]
id = "c"
run = "make"
pool = "local"
"#,
        )
        .expect("parses");
        let (a, b, c) = (&plan.tasks[0], &plan.tasks[1], &plan.tasks[2]);
        let claude = a.agent.as_ref().expect("an agent");
        assert_eq!(a.run, claude.run);
        assert!(a.run.starts_with("claude -p"), "{}", a.run);
        assert_eq!(claude.config_env.as_deref(), Some("CLAUDE_CONFIG_DIR"));
        assert!(claude.from_plan, "the plan changed it");
        assert_eq!(a.pool.as_deref(), Some("anthropic"));
        assert_eq!(b.run, "sh agent.sh");
        assert_eq!(
            b.agent.as_ref().map(|p| p.usage),
            Some(UsageFormat::ClaudeJson)
        );
        assert_eq!(b.pool.as_deref(), Some("local"));
        assert_eq!((c.agent.as_ref(), c.pool.as_deref()), (None, Some("local")));
        let d = parse("[[task]]\nid = \"d\"\nagent = \"codex\"\n").expect("parses");
        assert_eq!(
            d.tasks[0].pool.as_deref(),
            Some("codex"),
            "an uncapped pool of its own"
        );
        assert_eq!(plan.pools["anthropic"].size, 3);
        assert_eq!(plan.pools["anthropic"].backoff, Duration::from_secs(60));
        assert_eq!(plan.pools["local"].backoff, Duration::from_secs(5));
        let names: Vec<&str> = plan.agents.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["claude", "stand-in"], "only the plan's own tables");
    }

    #[test]
    fn the_slot_keys_are_read_and_checked() {
        let plan = parse(
            "copy = [\".env\", \"config/*.local\"]\nsetup = \"npm ci\"\n\
             setup_inputs = [\"package-lock.json\"]\nports = 10\n\
             [[task]]\nid = \"a\"\nrun = \"true\"\n",
        )
        .expect("parses");
        assert_eq!(plan.copy, [".env", "config/*.local"]);
        assert_eq!(plan.setup.as_deref(), Some("npm ci"));
        assert_eq!(plan.setup_inputs, ["package-lock.json"]);
        assert_eq!(plan.ports, 10);
    }

    #[test]
    fn every_wrong_agent_key_is_said_with_its_place() {
        let cases: &[(&str, &str)] = &[
            (
                "[[task]]\nid = \"a\"\nrun = \"x\"\nagent = \"claude\"\n",
                "br.toml:4:9: task `a` has both `run` and `agent`",
            ),
            (
                "[[task]]\nid = \"a\"\nagent = \"gpt\"\n",
                "br.toml:3:9: task `a`: unknown agent `gpt` (agents: aider, claude, codex, gemini)",
            ),
            (
                "[[task]]\nid = \"a\"\nrun = \"x\"\npool = \"p\"\n",
                "br.toml:4:8: task `a`: `pool`: unknown pool `p`; add [pool.p] with a `size`",
            ),
            (
                "[agent.x]\nrun = \"x\"\nrate_limit = \"(\"\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:3:14: [agent.x] `rate_limit` is not a regular expression",
            ),
            (
                "[agent.x]\nrun = \"x\"\nconfig_env = \"BR_HOME\"\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:3:14: [agent.x] `config_env`: `BR_HOME` is not an environment variable name",
            ),
            (
                "[agent.mine]\npool = \"p\"\n[pool.p]\nsize = 1\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:1:1: [agent.mine] has no `run`",
            ),
            (
                "[pool.p]\nbackoff = \"1m\"\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:1:1: [pool.p] has no `size`",
            ),
            (
                "[pool.p]\nsize = 0\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:2:8: [pool.p] `size` must be between 1 and 10000, got 0",
            ),
            (
                "setup_inputs = [\"a.lock\"]\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:1:17: `setup_inputs` without `setup`",
            ),
            (
                "copy = [\"../secrets\"]\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:1:9: `copy`: `../secrets` leaves the repository",
            ),
            (
                "ports = 5000\n[[task]]\nid = \"a\"\nrun = \"x\"\n",
                "br.toml:1:9: `ports` must be between 0 and 1000, got 5000",
            ),
            (
                "[agent.claude]\nusage = \"tokens\"\n[[task]]\nid = \"a\"\nagent = \"claude\"\n",
                "br.toml:2:9: [agent.claude] `usage` must be `none` or `claude_json`, got `tokens`",
            ),
        ];
        for (source, want) in cases {
            let got = parse(source).expect_err(source);
            assert!(
                got.starts_with(want),
                "{source:?}\n  want: {want}\n  got:  {got}"
            );
        }
    }
}
