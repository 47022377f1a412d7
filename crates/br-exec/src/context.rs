//! What an attempt is told about why it runs: `BR_CONTEXT_FILE` (JSON, for scripts) and
//! `BR_PROMPT_FILE` (the task's prompt and, on a rerun, a section in plain words for a coding
//! agent to read: what happened to the previous attempt and what to do differently). Both are
//! written next to the attempt's log, readable by the user only, before the process starts.

use std::io::Write;
use std::path::{Path, PathBuf};

use br_core::RunReason;
use br_store::{AttemptRecord, ClaimedTask};
use serde_json::{Value, json};

use crate::process::{create_private_dir, create_private_file};

/// How much of a previous attempt's (or verify's) output the context holds.
const LOG_TAIL_LINES: usize = 40;
const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// The files an attempt is given.
#[derive(Debug, Clone)]
pub struct AttemptFiles {
    pub context: PathBuf,
    /// Only when the task has a prompt or the attempt is a rerun.
    pub prompt: Option<PathBuf>,
    /// `BR_USAGE_FILE`: empty until the task (or its agent) writes what it spent.
    pub usage: PathBuf,
}

/// The context of `task`'s attempt, as JSON (see DESIGN.md, "Integration as it runs").
/// `previous` is the attempt before it, if any.
pub fn context_json(task: &ClaimedTask, previous: Option<&AttemptRecord>) -> Value {
    let landing = previous.and_then(|p| p.detail.get("landing"));
    let conflict = landing.and_then(|l| l.get("conflict")).map(|c| {
        json!({
            "files": c.get("files").cloned().unwrap_or_else(|| json!([])),
            "with": c.get("with").cloned().unwrap_or_else(|| json!([])),
            "details": c.get("details").cloned().unwrap_or_else(|| json!("")),
        })
    });
    let verify = landing.and_then(|l| l.get("verify")).map(|v| {
        json!({
            "command": v.get("command").cloned().unwrap_or(Value::Null),
            "exit_code": v.get("exit_code").cloned().unwrap_or(Value::Null),
            "log_tail": v.get("log_tail").cloned().unwrap_or_else(|| json!("")),
        })
    });
    let previous = previous.map(|p| {
        json!({
            "attempt": p.attempt.0,
            "outcome": p.outcome,
            "exit_code": p.exit_code,
            "ref": p.detail.get("commit").cloned().unwrap_or(Value::Null),
            "log_tail": p.log_path.as_deref().map(|l| log_tail(Path::new(l))).unwrap_or_default(),
        })
    });
    json!({
        "task": task.lease.task_id,
        "attempt": task.lease.attempt.0,
        "reason": task.reason,
        "start_commit": task.base_commit,
        "previous": previous,
        "conflict": conflict,
        "verify": verify,
    })
}

/// Writes the attempt's context (and prompt, when it has one) next to its log.
pub fn write_attempt_files(
    task: &ClaimedTask,
    previous: Option<&AttemptRecord>,
) -> std::io::Result<AttemptFiles> {
    let context = json_path(&task.log_path, "context.json");
    if let Some(dir) = context.parent() {
        create_private_dir(dir)?;
    }
    let value = context_json(task, previous);
    let mut file = create_private_file(&context)?;
    file.write_all(serde_json::to_string_pretty(&value)?.as_bytes())?;
    file.write_all(b"\n")?;
    let rerun = task.reason != RunReason::First;
    let prompt = if task.prompt.is_some() || rerun {
        let path = json_path(&task.log_path, "prompt.md");
        let mut text = task.prompt.clone().unwrap_or_default();
        if rerun {
            if !text.is_empty() {
                text.push_str("\n\n---\n\n");
            }
            text.push_str(&why_again(task, &value));
        }
        let mut file = create_private_file(&path)?;
        file.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            file.write_all(b"\n")?;
        }
        Some(path)
    } else {
        None
    };
    let usage = usage_path(&task.log_path);
    // Made empty, so that what a rerun of the same attempt number left is never read.
    create_private_file(&usage)?;
    Ok(AttemptFiles {
        context,
        prompt,
        usage,
    })
}

/// Where an attempt's `BR_USAGE_FILE` is, next to its log.
pub(crate) fn usage_path(log_path: &Path) -> PathBuf {
    json_path(log_path, "usage.json")
}

/// `<dir>/<task>.<attempt>.log` → `<dir>/<task>.<attempt>.<suffix>`.
fn json_path(log_path: &Path, suffix: &str) -> PathBuf {
    let stem = log_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    log_path.with_file_name(format!("{stem}.{suffix}"))
}

/// The section of a rerun's prompt that says why it runs again, for a coding agent to read.
fn why_again(task: &ClaimedTask, context: &Value) -> String {
    let attempt = task.lease.attempt.0;
    let previous = &context["previous"];
    let before = previous["attempt"]
        .as_u64()
        .unwrap_or(u64::from(attempt) - 1);
    let start = task
        .base_commit
        .as_deref()
        .map(|c| format!(" (commit {})", &c[..c.len().min(12)]))
        .unwrap_or_default();
    let mut out = format!("## Why this is attempt {attempt}\n\n");
    let tail = |label: &str, text: &str| {
        if text.trim().is_empty() {
            String::new()
        } else {
            format!("\n{label}:\n\n```\n{}\n```\n", text.trim_end())
        }
    };
    match task.reason {
        RunReason::Conflict => {
            let conflict = &context["conflict"];
            let files = words(&conflict["files"]);
            let with = words(&conflict["with"]);
            out.push_str(&format!(
                "Attempt {before} finished, but its changes could not be merged onto the \
                 integration branch: {files} changed there since it started"
            ));
            if !with.is_empty() {
                out.push_str(&format!(", in work that {with} landed"));
            }
            out.push_str(&format!(
                ".\n\nThis attempt starts from the integration branch as it is now{start}, which \
                 already holds that work. Make your change again on top of it, and keep what \
                 the others did in those files: do not undo or overwrite their changes.\n"
            ));
            out.push_str(&tail(
                "Where the two versions disagreed (your attempt's side and the integration \
                 branch's)",
                conflict["details"].as_str().unwrap_or_default(),
            ));
        }
        RunReason::VerifyFailed => {
            let verify = &context["verify"];
            out.push_str(&format!(
                "Attempt {before} finished and merged cleanly, but the session's check `{}` \
                 failed on the merge (exit code {}), so it was not landed.\n\nThis attempt \
                 starts from the integration branch as it is now{start}. Make your change \
                 again so that the check passes.\n",
                verify["command"].as_str().unwrap_or("?"),
                verify["exit_code"]
                    .as_i64()
                    .map_or("none".to_string(), |c| c.to_string()),
            ));
            out.push_str(&tail(
                "The end of the check's output",
                verify["log_tail"].as_str().unwrap_or_default(),
            ));
        }
        RunReason::Failed | RunReason::TimedOut => {
            let ended = match task.reason {
                RunReason::TimedOut => "ran out of time (the task's `timeout`)".to_string(),
                _ => match previous["exit_code"].as_i64() {
                    Some(code) => format!("failed with exit code {code}"),
                    None => format!(
                        "failed ({})",
                        previous["outcome"].as_str().unwrap_or("unknown")
                    ),
                },
            };
            out.push_str(&format!(
                "Attempt {before} {ended}. This attempt starts afresh{start}; find out what \
                 went wrong and do differently.\n"
            ));
            out.push_str(&tail(
                "The end of its output",
                previous["log_tail"].as_str().unwrap_or_default(),
            ));
        }
        RunReason::LeaseLost | RunReason::Interrupted => {
            out.push_str(&format!(
                "Attempt {before} was stopped before it finished, for a reason outside the \
                 task (its worker was interrupted or lost contact). Nothing it did was kept. \
                 This attempt starts afresh{start}: do the whole task.\n"
            ));
        }
        RunReason::Retry if previous.is_null() => {
            // Skipped, or cancelled before it started: there is no earlier attempt to tell of.
            out.push_str(
                "The task had not run: it was skipped or cancelled before it started, and \
                 someone asked for it to run (`br retry`). Do the whole task",
            );
            match task.base_commit.as_deref() {
                Some(c) => out.push_str(&format!(
                    "; this attempt starts from commit {}.\n",
                    &c[..c.len().min(12)]
                )),
                None => out.push_str(".\n"),
            }
        }
        RunReason::Retry => {
            out.push_str(&format!(
                "The task ended ({}) and someone asked for it to run again (`br retry`). This \
                 attempt starts afresh{start}.\n",
                previous["outcome"].as_str().unwrap_or("unknown")
            ));
            out.push_str(&tail(
                "The end of the last attempt's output",
                previous["log_tail"].as_str().unwrap_or_default(),
            ));
        }
        RunReason::First => {}
    }
    out
}

/// A JSON list of words as "a, b and c".
fn words(list: &Value) -> String {
    let items: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match items.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The last lines of a log (at most `LOG_TAIL_LINES` and `LOG_TAIL_BYTES`); empty when there is
/// none.
pub fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(LOG_TAIL_BYTES);
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    // A cut first line is not one.
    let skip = usize::from(from > 0);
    let keep = lines.len().saturating_sub(skip).min(LOG_TAIL_LINES);
    lines[lines.len() - keep..].join("\n")
}
