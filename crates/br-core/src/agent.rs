//! Coding agents as tasks: the profiles that say how to run one headless on an attempt's
//! `BR_PROMPT_FILE` (built in for `claude`, `codex`, `aider` and `gemini`; a plan's
//! `[agent.NAME]` table overrides one key by key, or adds a profile), and what br reads from
//! an attempt: its usage (`BR_USAGE_FILE`, or the agent's own JSON output) and whether it hit a
//! rate limit. docs/agents.md says what each built-in runs and why.

use std::time::Duration;

use serde::{Deserialize, Serialize};

crate::words::string_enum!(
    /// How br reads an attempt's usage besides `BR_USAGE_FILE`: `none`, or `claude_json`
    /// (`claude -p --output-format json`'s result object: `total_cost_usd` and `usage`).
    UsageFormat ("usage format") {
        None = "none",
        ClaudeJson = "claude_json",
    }
);

/// How to run one coding agent as a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProfile {
    pub name: String,
    /// The command (`sh -c`), which reads the prompt from `$BR_PROMPT_FILE`.
    pub run: String,
    /// The variable that points the agent at its config directory; br sets it to a per-slot
    /// copy of `config_from`, so no two running agents share one and the user's is never
    /// written.
    pub config_env: Option<String>,
    /// Where the config is copied from (`~/` is the worker's home).
    pub config_from: Option<String>,
    /// A regular expression: output matching it means the attempt hit a rate limit.
    pub rate_limit: Option<String>,
    /// The pool the agent's tasks run in, unless a task names its own.
    pub pool: Option<String>,
    pub usage: UsageFormat,
    /// Whether the plan wrote (part of) it, rather than br's built-in.
    #[serde(default)]
    pub from_plan: bool,
}

/// The rate-limit pattern of the built-in profiles: the words the agents and their APIs use.
const RATE_LIMIT_WORDS: &str = r"(?i)rate[ _-]?limit|\b429\b|usage limit|too many requests|quota exceeded|resource[ _]exhausted";

/// br's built-in profiles, by name.
pub fn builtin_profiles() -> Vec<AgentProfile> {
    let profile = |name: &str, run: &str, config: Option<(&str, &str)>, usage| AgentProfile {
        name: name.to_string(),
        run: run.to_string(),
        config_env: config.map(|(env, _)| env.to_string()),
        config_from: config.map(|(_, from)| from.to_string()),
        rate_limit: Some(RATE_LIMIT_WORDS.to_string()),
        pool: None,
        usage,
        from_plan: false,
    };
    vec![
        profile(
            "claude",
            r#"claude -p --output-format json --permission-mode acceptEdits < "$BR_PROMPT_FILE""#,
            Some(("CLAUDE_CONFIG_DIR", "~/.claude")),
            UsageFormat::ClaudeJson,
        ),
        profile(
            "codex",
            r#"codex exec --sandbox workspace-write --skip-git-repo-check - < "$BR_PROMPT_FILE""#,
            Some(("CODEX_HOME", "~/.codex")),
            UsageFormat::None,
        ),
        profile(
            "aider",
            r#"aider --yes-always --no-auto-commits --no-check-update --message-file "$BR_PROMPT_FILE""#,
            None,
            UsageFormat::None,
        ),
        profile(
            "gemini",
            r#"gemini --yolo --prompt "$(cat "$BR_PROMPT_FILE")""#,
            None,
            UsageFormat::None,
        ),
    ]
}

/// The built-in profile `name`.
pub fn builtin(name: &str) -> Option<AgentProfile> {
    builtin_profiles().into_iter().find(|p| p.name == name)
}

/// What each worktree slot of a session gets besides its checkout: `copy`, `setup`,
/// `setup_inputs` and `ports`, as the plan says them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSetup {
    #[serde(default)]
    pub copy: Vec<String>,
    #[serde(default)]
    pub setup: Option<String>,
    #[serde(default)]
    pub setup_inputs: Vec<String>,
    #[serde(default)]
    pub ports: u32,
}

/// A `[pool.NAME]`: at most `size` of its tasks run at once, across every worker and machine of
/// the store; a rate limit parks it for `backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub size: u32,
    #[serde(rename = "backoff_ms", with = "millis")]
    pub backoff: Duration,
}

/// The default `backoff` of a pool.
pub const DEFAULT_POOL_BACKOFF: Duration = Duration::from_secs(60);

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A profile's `rate_limit` as a regular expression, or why it is not one.
pub fn rate_limit_pattern(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            e.to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
}

/// Whether `output` (an attempt's output, or its tail) shows the rate limit `pattern` names.
pub fn is_rate_limited(pattern: &regex::Regex, output: &str) -> bool {
    pattern.is_match(output)
}

/// When a rate limit resets, as the line that showed it says: `Claude AI usage limit
/// reached|1767225600` (seconds since the epoch after a `|`, as claude prints it), in
/// milliseconds since the epoch. `None` when the line names no time.
pub fn reset_time(line: &str) -> Option<i64> {
    let (_, after) = line.rsplit_once('|')?;
    let digits: String = after
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    // Ten digits: a time in seconds between 2001 and 2286, not a count or a code.
    if digits.len() != 10 {
        return None;
    }
    digits.parse::<i64>().ok().map(|s| s * 1000)
}

/// Tokens and money one attempt (or a task, or a session: they add up) spent. Money is kept in
/// millionths of a dollar, so that totals add up exactly and the store keeps integers; JSON
/// says `cost_usd`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "UsageJson", into = "UsageJson")]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
}

/// [`Usage`] as JSON shows it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct UsageJson {
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl From<UsageJson> for Usage {
    fn from(u: UsageJson) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_micros: micros(u.cost_usd),
        }
    }
}

impl From<Usage> for UsageJson {
    fn from(u: Usage) -> UsageJson {
        UsageJson {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_usd: u.cost_usd(),
        }
    }
}

/// Dollars in millionths, rounded; what is not a finite amount ≥ 0 is 0.
fn micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        // Rounded, and saturating in `as` for amounts past u64 (no one spends that).
        (usd * 1_000_000.0).round() as u64
    } else {
        0
    }
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    pub fn cost_usd(&self) -> f64 {
        self.cost_micros as f64 / 1_000_000.0
    }

    /// `$0.0123 · 1.2k in / 345 out`, for tables and lines.
    pub fn describe(&self) -> String {
        format!(
            "{} · {} in / {} out",
            self.cost(),
            tokens(self.input_tokens),
            tokens(self.output_tokens)
        )
    }

    /// The money alone, `$0.0123`: to four places, since one agent run often costs cents.
    pub fn cost(&self) -> String {
        dollars(self.cost_micros)
    }

    /// What a session (or every session) spent, in one line for people: `spent $0.0300 · 300
    /// in / 30 out tokens`, and when `landed` tasks are on the integration branch, what each
    /// cost (`· $0.0100 per landed task`): the whole spend over the work that counted, so
    /// attempts that failed, were rate-limited or could not land are paid for by what landed.
    pub fn spent(&self, landed: u32) -> String {
        let mut line = format!("spent {} tokens", self.describe());
        if landed > 0 {
            let landed = u64::from(landed);
            let each = self.cost_micros.saturating_add(landed / 2) / landed;
            line.push_str(&format!(" · {} per landed task", dollars(each)));
        }
        line
    }

    /// What a task wrote to `BR_USAGE_FILE`: `{"input_tokens": N, "output_tokens": N,
    /// "cost_usd": X}`, each optional. Anything else is an error that says what was expected.
    pub fn from_usage_file(text: &str) -> Result<Usage, String> {
        if text.trim().is_empty() {
            return Ok(Usage::default());
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("BR_USAGE_FILE is not JSON ({e})"))?;
        if !value.is_object() {
            return Err("BR_USAGE_FILE must hold one JSON object".into());
        }
        Usage::from_fields(&value, "input_tokens", "output_tokens", "cost_usd").ok_or_else(|| {
            "BR_USAGE_FILE: input_tokens and output_tokens must be whole numbers ≥ 0, \
                 cost_usd a number ≥ 0"
                .to_string()
        })
    }

    /// The usage in `claude -p --output-format json`'s result object: the last line of
    /// `output` that is a JSON object with `total_cost_usd` or `usage`. `None` when there is none.
    pub fn from_claude_json(output: &str) -> Option<Usage> {
        output.lines().rev().find_map(|line| {
            let line = line.trim();
            if !line.starts_with('{') {
                return None;
            }
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if value.get("total_cost_usd").is_none() && value.get("usage").is_none() {
                return None;
            }
            let tokens = value.get("usage").cloned().unwrap_or_default();
            let input = count(&tokens, "input_tokens")?
                + count(&tokens, "cache_creation_input_tokens")?
                + count(&tokens, "cache_read_input_tokens")?;
            Some(Usage {
                input_tokens: input,
                output_tokens: count(&tokens, "output_tokens")?,
                cost_micros: micros(money(&value, "total_cost_usd")?),
            })
        })
    }

    fn from_fields(
        value: &serde_json::Value,
        input: &str,
        output: &str,
        cost: &str,
    ) -> Option<Usage> {
        Some(Usage {
            input_tokens: count(value, input)?,
            output_tokens: count(value, output)?,
            cost_micros: micros(money(value, cost)?),
        })
    }
}

/// Millionths of a dollar as dollars, to four places: `$0.0123`.
fn dollars(micros: u64) -> String {
    format!("${:.4}", micros as f64 / 1_000_000.0)
}

/// A token count for people: `345`, `1.2k`, `3.4M`.
fn tokens(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1000..=999_999 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

/// A whole number ≥ 0 at `key` (absent is 0); `None` when it is something else.
fn count(value: &serde_json::Value, key: &str) -> Option<u64> {
    match value.get(key) {
        None | Some(serde_json::Value::Null) => Some(0),
        Some(v) => v.as_u64(),
    }
}

/// A finite number ≥ 0 at `key` (absent is 0); `None` when it is something else.
fn money(value: &serde_json::Value, key: &str) -> Option<f64> {
    match value.get(key) {
        None | Some(serde_json::Value::Null) => Some(0.0),
        Some(v) => v.as_f64().filter(|x| x.is_finite() && *x >= 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_profiles_read_the_prompt_file_and_claude_isolates_its_config() {
        let names: Vec<String> = builtin_profiles().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["claude", "codex", "aider", "gemini"]);
        for p in builtin_profiles() {
            assert!(p.run.contains("$BR_PROMPT_FILE"), "{}: {}", p.name, p.run);
            assert!(!p.from_plan);
        }
        let claude = builtin("claude").expect("claude");
        assert_eq!(claude.config_env.as_deref(), Some("CLAUDE_CONFIG_DIR"));
        assert_eq!(claude.usage, UsageFormat::ClaudeJson);
        assert_eq!(
            builtin("codex").expect("codex").config_env.as_deref(),
            Some("CODEX_HOME")
        );
    }

    #[test]
    fn the_built_in_rate_limit_words_match_what_the_agents_print_and_nothing_else() {
        let pattern = rate_limit_pattern(RATE_LIMIT_WORDS).expect("a pattern");
        for limited in [
            "API Error: 429 Too Many Requests",
            "Claude AI usage limit reached|1767225600",
            "You've hit your rate limit. Please try again later.",
            "error: RESOURCE_EXHAUSTED: Quota exceeded for quota metric",
        ] {
            assert!(is_rate_limited(&pattern, limited), "{limited}");
        }
        for fine in ["All 4290 tests passed", "limited edition", "rated 5 stars"] {
            assert!(!is_rate_limited(&pattern, fine), "{fine}");
        }
        assert!(rate_limit_pattern("(").is_err());
        assert_eq!(
            reset_time("Claude AI usage limit reached|1767225600"),
            Some(1_767_225_600_000)
        );
        assert_eq!(reset_time("usage limit reached"), None);
        assert_eq!(reset_time("error|429"), None);
    }

    #[test]
    fn claude_json_output_gives_its_usage_and_anything_else_none() {
        let output = "progress\n{\"type\":\"result\",\"subtype\":\"success\",\"total_cost_usd\":0.0123,\
                      \"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":50,\"output_tokens\":7}}\n";
        assert_eq!(
            Usage::from_claude_json(output),
            Some(Usage {
                input_tokens: 150,
                output_tokens: 7,
                cost_micros: 12_300
            })
        );
        assert_eq!(
            Usage::from_claude_json("no json here\n{\"other\": 1}"),
            None
        );
        assert_eq!(
            Usage::from_claude_json("{\"total_cost_usd\": -1}"),
            None,
            "a negative cost is no usage"
        );
    }

    #[test]
    fn a_usage_file_is_one_object_of_numbers() {
        assert_eq!(
            Usage::from_usage_file(r#"{"input_tokens": 3, "output_tokens": 4, "cost_usd": 0.5}"#),
            Ok(Usage {
                input_tokens: 3,
                output_tokens: 4,
                cost_micros: 500_000
            })
        );
        assert_eq!(Usage::from_usage_file(""), Ok(Usage::default()));
        assert!(Usage::from_usage_file("[1]").is_err());
        assert!(Usage::from_usage_file(r#"{"input_tokens": "3"}"#).is_err());
        assert!(Usage::from_usage_file("not json").is_err());
        let mut total = Usage::default();
        total.add(&Usage {
            input_tokens: 1,
            output_tokens: 2,
            cost_micros: 250_000,
        });
        total.add(&Usage {
            input_tokens: 10,
            output_tokens: 1200,
            cost_micros: 500_000,
        });
        assert_eq!(
            (total.input_tokens, total.output_tokens, total.cost_usd()),
            (11, 1202, 0.75)
        );
        assert_eq!(total.describe(), "$0.7500 · 11 in / 1.2k out");
        assert_eq!(total.cost(), "$0.7500");
        assert_eq!(total.spent(0), "spent $0.7500 · 11 in / 1.2k out tokens");
        assert_eq!(
            total.spent(3),
            "spent $0.7500 · 11 in / 1.2k out tokens · $0.2500 per landed task"
        );
        assert_eq!(
            serde_json::to_value(total).expect("JSON"),
            serde_json::json!({"input_tokens": 11, "output_tokens": 1202, "cost_usd": 0.75})
        );
    }
}
