//! Plan files (`br.toml`): parsing and validation, with errors that name the file, line and reason.
//!
//! PLACEHOLDER: being rewritten.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::TaskId;
use crate::lock::LockPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    #[default]
    Worktree,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeMode {
    #[default]
    Report,
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    #[default]
    Report,
    Requeue,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub name: String,
    pub workers: Option<u32>,
    pub base: String,
    pub isolation: Isolation,
    pub heartbeat_timeout: Duration,
    pub retries: u32,
    pub scope: ScopeMode,
    pub verify: Option<String>,
    pub on_conflict: OnConflict,
    pub tasks: Vec<TaskSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub run: String,
    pub files: Vec<LockPath>,
    pub after: Vec<TaskId>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    pub file: PathBuf,
    pub problems: Vec<PlanProblem>,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Option<String>,
    workers: Option<u32>,
    base: Option<String>,
    isolation: Option<Isolation>,
    heartbeat_timeout: Option<String>,
    retries: Option<u32>,
    #[serde(default)]
    task: Vec<RawTask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: String,
    run: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

impl Plan {
    pub fn parse(source: &str, file: &Path) -> Result<Plan, PlanError> {
        let err = |message: String| PlanError {
            file: file.to_path_buf(),
            problems: vec![PlanProblem {
                line: None,
                column: None,
                message,
            }],
        };
        let raw: RawPlan = toml::from_str(source).map_err(|e| err(e.message().to_string()))?;
        let retries = raw.retries.unwrap_or(0);
        let mut tasks = Vec::new();
        for t in raw.task {
            tasks.push(TaskSpec {
                id: TaskId::new(t.id).map_err(|e| err(e.to_string()))?,
                run: t.run,
                files: t
                    .files
                    .iter()
                    .map(|f| LockPath::parse(f))
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(e.to_string()))?,
                after: t
                    .after
                    .into_iter()
                    .map(TaskId::new)
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(e.to_string()))?,
                timeout: t
                    .timeout
                    .map(|d| humantime::parse_duration(&d))
                    .transpose()
                    .map_err(|e| err(e.to_string()))?,
                retries: t.retries.unwrap_or(retries),
                env: t.env,
            });
        }
        Ok(Plan {
            name: raw.name.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plan".into())
            }),
            workers: raw.workers,
            base: raw.base.unwrap_or_else(|| "HEAD".into()),
            isolation: raw.isolation.unwrap_or_default(),
            heartbeat_timeout: raw
                .heartbeat_timeout
                .map(|d| humantime::parse_duration(&d))
                .transpose()
                .map_err(|e| err(e.to_string()))?
                .unwrap_or(Duration::from_secs(30)),
            retries,
            scope: ScopeMode::Report,
            verify: None,
            on_conflict: OnConflict::Report,
            tasks,
        })
    }

    pub fn example() -> &'static str {
        "name = \"example\"\nisolation = \"shared\"\n\n[[task]]\nid = \"hello\"\nrun = \"echo hello\"\n"
    }
}
