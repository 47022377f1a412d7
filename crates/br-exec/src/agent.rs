//! What a worker reads from an attempt of a coding agent once it ended: what it spent
//! (`BR_USAGE_FILE`, or the agent's own JSON output when its profile says how to read it) and
//! whether it stopped on its agent's rate limit (a pattern over the end of its output).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use br_core::Outcome;
use br_core::agent::{Usage, UsageFormat, is_rate_limited, rate_limit_pattern};
use br_store::ClaimedTask;

/// How much of the end of an attempt's output is read: an agent's result object (one line of
/// JSON with its whole answer) or its rate-limit message is there.
const OUTPUT_END_BYTES: u64 = 256 * 1024;

/// The longest reason kept for a rate limit: the line that showed it.
const REASON_MAX_CHARS: usize = 200;

/// What the attempt spent: what the task wrote to its usage file, else what its agent's output
/// says. `Err` names what was wrong with a usage file the task did write.
pub(crate) fn usage_of(
    task: &ClaimedTask,
    usage_file: &Path,
    log_path: &Path,
) -> Result<Option<Usage>, String> {
    let written = std::fs::read_to_string(usage_file).unwrap_or_default();
    if !written.trim().is_empty() {
        return Usage::from_usage_file(&written).map(Some);
    }
    let reads_output = task
        .agent
        .as_ref()
        .is_some_and(|a| a.usage == UsageFormat::ClaudeJson);
    if !reads_output {
        return Ok(None);
    }
    Ok(Usage::from_claude_json(&output_end(log_path)))
}

/// For an attempt that did not succeed: the line of its output that shows its agent's rate
/// limit, if one does, and when the limit resets if that line says so.
pub(crate) fn rate_limit(
    task: &ClaimedTask,
    outcome: &Outcome,
    log_path: &Path,
) -> Option<(String, Option<i64>)> {
    if !matches!(outcome, Outcome::Failed { .. } | Outcome::Signalled { .. }) {
        return None;
    }
    let pattern = rate_limit_pattern(task.agent.as_ref()?.rate_limit.as_deref()?).ok()?;
    let output = output_end(log_path);
    if !is_rate_limited(&pattern, &output) {
        return None;
    }
    let line = output
        .lines()
        .rev()
        .find(|l| pattern.is_match(l))
        .unwrap_or("rate limited")
        .trim();
    Some((
        line.chars().take(REASON_MAX_CHARS).collect(),
        br_core::agent::reset_time(line),
    ))
}

/// The end of a log file, as text (empty when there is none).
fn output_end(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if file
        .seek(SeekFrom::Start(len.saturating_sub(OUTPUT_END_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
