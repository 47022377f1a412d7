//! What an event says besides its ids: one typed detail per event kind ([`EventDetail`]), kept
//! in the store as the JSON object DESIGN.md shows (`paths` for lock events, `files` for merge
//! conflicts and scope violations), and the one plain-words rendering of it
//! ([`EventDetail::describe`]) that progress lines, the terminal dashboard and the web page all
//! show.
//!
//! Each detail serialises to exactly the JSON br has always written for its kind (same keys, same
//! order, nulls included), so stored events and `br events --json` keep their shape. Reading a
//! stored detail never fails on its shape: one this br cannot reproduce exactly (written by an
//! older or newer br, or edited) is kept as [`EventDetail::Raw`], untouched, and still described
//! as well as its fields allow.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::event::EventKind;
use crate::ids::{Attempt, SessionId, TaskId};
use crate::outcome::{Outcome, OutcomeKind};
use crate::plan::Isolation;
use crate::state::{SessionStatus, TaskState};

/// The detail of one event, by kind. Kinds with nothing to add (`session_started`, `task_ready`)
/// have a variant too, so every detail knows its kind and an event cannot be written with
/// another kind's detail.
#[derive(Debug, Clone, PartialEq)]
pub enum EventDetail {
    SessionCreated(SessionCreated),
    SessionStarted,
    SessionPaused(SessionChange),
    SessionResumed(SessionChange),
    SessionCompleted(SessionTally),
    SessionFailed(SessionTally),
    SessionCancelled(SessionChange),
    WorkerRegistered(WorkerRegistered),
    WorkerOffline(WorkerOffline),
    WorkerStopped(WorkerStopped),
    TaskReady,
    TaskStarted(TaskStarted),
    TaskSucceeded(TaskSucceeded),
    TaskFailed(TaskFailed),
    TaskRequeued(TaskRequeued),
    TaskSkipped(TaskSkipped),
    TaskCancelled(TaskCancelled),
    LockAcquired(LockPaths),
    LockReleased(LockPaths),
    LockConflict(LockConflict),
    StaleResultRejected(StaleResult),
    MergeConflict(MergeConflict),
    ScopeViolation(ScopeViolation),
    TaskLanded(TaskLanded),
    VerifyFailed(VerifyFailed),
    PoolParked(PoolParked),
    /// A stored detail whose shape this br does not reproduce exactly: kept as it was read, so
    /// nothing of it is lost when it is shown or served again.
    Raw {
        kind: EventKind,
        detail: serde_json::Value,
    },
}

/// `session_created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub name: String,
    /// How many tasks the plan has.
    pub tasks: u32,
    pub plan_path: Option<String>,
    pub base_commit: Option<String>,
    pub isolation: Isolation,
}

/// `session_paused`, `session_resumed`, `session_cancelled`: the state the session left, and
/// why when it was not a user's request (the merge queue resumes an ended session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChange {
    pub from: SessionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `session_completed`, `session_failed`: how its tasks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTally {
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub cancelled: u32,
}

/// `worker_registered`: a new worker, or one marked offline that is talking again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkerRegistered {
    New {
        host: String,
        pid: u32,
        /// The session it serves (`br worker --session`), if only one.
        session_id: Option<SessionId>,
    },
    Rejoined {
        rejoined: bool,
    },
}

/// `worker_offline`: its heartbeat timed out, or a lease it held expired first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkerOffline {
    Silent {
        last_heartbeat_ms: i64,
    },
    LeaseExpired {
        /// Always [`WorkerOffline::LEASE_EXPIRED`].
        reason: String,
        task_id: TaskId,
    },
}

impl WorkerOffline {
    pub const LEASE_EXPIRED: &'static str = "lease expired";

    pub fn lease_expired(task_id: TaskId) -> WorkerOffline {
        WorkerOffline::LeaseExpired {
            reason: WorkerOffline::LEASE_EXPIRED.to_string(),
            task_id,
        }
    }
}

/// `worker_stopped`: what it did before it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStopped {
    pub tasks_completed: u32,
    pub tasks_failed: u32,
}

/// `task_started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub log_path: String,
}

/// `task_succeeded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSucceeded {
    /// Always 0.
    pub exit_code: i32,
    /// The commit holding its work (worktree isolation).
    pub commit: Option<String>,
    pub changed_files: u32,
}

/// `task_failed`: the attempt's outcome, in words and as its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub reason: String,
    pub outcome: OutcomeKind,
    pub exit_code: Option<i32>,
}

impl TaskFailed {
    pub fn of(outcome: &Outcome) -> TaskFailed {
        TaskFailed {
            reason: outcome.describe(),
            outcome: outcome.kind(),
            exit_code: outcome.exit_code(),
        }
    }
}

/// `task_requeued`: after an attempt that did not succeed (retried, or its lease lost), or by
/// the merge queue, on top of a new base, after the task had ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskRequeued {
    AttemptEnded {
        reason: String,
        outcome: OutcomeKind,
        next_attempt: u32,
    },
    OnNewBase {
        reason: String,
        base_commit: String,
        from: TaskState,
    },
    /// Someone asked for a task that had ended to run again (`br retry`).
    Retried {
        reason: String,
        from: TaskState,
        next_attempt: u32,
    },
}

impl TaskRequeued {
    /// The reason of a [`TaskRequeued::Retried`].
    pub const RETRY_ASKED: &'static str = "retry asked for";

    pub fn after(outcome: &Outcome, next_attempt: u32) -> TaskRequeued {
        TaskRequeued::AttemptEnded {
            reason: outcome.describe(),
            outcome: outcome.kind(),
            next_attempt,
        }
    }
}

/// `task_skipped`: the task it waited for (`because`) did not succeed, since `failed` failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSkipped {
    pub because: TaskId,
    pub failed: TaskId,
}

/// `task_cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancelled {
    pub reason: String,
}

impl TaskCancelled {
    /// Why the tasks that were not running end when their session is cancelled.
    pub const SESSION_CANCELLED: &'static str = "session cancelled";
}

/// `lock_acquired`, `lock_released`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockPaths {
    pub paths: Vec<String>,
}

/// `lock_conflict`, and a ready task's `blocked_by`: the paths it wants, and the held locks
/// they overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConflict {
    pub paths: Vec<String>,
    pub held_by: Vec<HeldLock>,
}

/// A held lock, named by its holder: a task, or a session's manual lock (`br lock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    pub path: String,
    pub session_id: SessionId,
    pub task_id: Option<TaskId>,
    /// The holding task's attempt (absent for a manual lock, and in what an older br wrote):
    /// once that attempt let go, this conflict is over, even if a later attempt of the same
    /// task takes the lock again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
}

impl HeldLock {
    /// Whether this is the lock `path` held by `session_id`/`task_id` at `attempt`.
    pub fn is(
        &self,
        path: &str,
        session_id: &SessionId,
        task_id: Option<&TaskId>,
        attempt: Option<Attempt>,
    ) -> bool {
        self.path == path
            && &self.session_id == session_id
            && self.task_id.as_ref() == task_id
            && (self.attempt.is_none() || self.attempt == attempt)
    }
}

impl HeldLock {
    /// Who holds it, in words: the task, or the session's manual lock.
    pub fn holder(&self) -> String {
        match &self.task_id {
            Some(task) => task.to_string(),
            None => format!("session {} (br lock)", self.session_id),
        }
    }
}

/// `stale_result_rejected`: the refused outcome, and where the task is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleResult {
    pub outcome: OutcomeKind,
    pub reason: String,
    pub task_state: TaskState,
    pub task_attempt: u32,
}

impl StaleResult {
    pub fn of(outcome: &Outcome, task_state: TaskState, task_attempt: u32) -> StaleResult {
        StaleResult {
            outcome: outcome.kind(),
            reason: outcome.describe(),
            task_state,
            task_attempt,
        }
    }
}

/// `merge_conflict`: the task's branch and `with` (another task, or `integration`) change
/// `files` in ways that do not merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeConflict {
    pub files: Vec<String>,
    pub with: String,
    /// Both sides.
    pub tasks: Vec<String>,
    /// Where it was found: predicted by a worker when none, or when landing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<ConflictStage>,
}

/// Where a merge conflict was found, when not predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStage {
    /// Merging the task's branch into the integration branch.
    Merge,
}

/// `task_landed`: a succeeded task's branch is on the integration branch, at `commit` (the
/// integration tip it made, or that already held it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLanded {
    pub commit: String,
    /// The task's own commit that landed; none when it changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_commit: Option<String>,
}

/// `pool_parked`: an attempt of a task of `pool` hit a rate limit; none of the pool's tasks is
/// claimed before `until` (RFC 3339), `backoff_ms` after it was parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolParked {
    pub pool: String,
    pub until: String,
    pub backoff_ms: u64,
    /// The output line that showed the rate limit.
    pub reason: String,
}

/// `verify_failed`: the merge of a task's branch onto the integration tip failed the session's
/// `verify` command, so it did not land.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyFailed {
    pub command: String,
    pub exit_code: Option<i32>,
    /// How the command ended, in words ("exit 2", "timed out").
    pub reason: String,
}

/// `scope_violation`: paths an attempt changed outside its declared `files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeViolation {
    pub files: Vec<String>,
}

impl EventDetail {
    pub fn kind(&self) -> EventKind {
        use EventDetail as D;
        use EventKind as K;
        match self {
            D::SessionCreated(_) => K::SessionCreated,
            D::SessionStarted => K::SessionStarted,
            D::SessionPaused(_) => K::SessionPaused,
            D::SessionResumed(_) => K::SessionResumed,
            D::SessionCompleted(_) => K::SessionCompleted,
            D::SessionFailed(_) => K::SessionFailed,
            D::SessionCancelled(_) => K::SessionCancelled,
            D::WorkerRegistered(_) => K::WorkerRegistered,
            D::WorkerOffline(_) => K::WorkerOffline,
            D::WorkerStopped(_) => K::WorkerStopped,
            D::TaskReady => K::TaskReady,
            D::TaskStarted(_) => K::TaskStarted,
            D::TaskSucceeded(_) => K::TaskSucceeded,
            D::TaskFailed(_) => K::TaskFailed,
            D::TaskRequeued(_) => K::TaskRequeued,
            D::TaskSkipped(_) => K::TaskSkipped,
            D::TaskCancelled(_) => K::TaskCancelled,
            D::LockAcquired(_) => K::LockAcquired,
            D::LockReleased(_) => K::LockReleased,
            D::LockConflict(_) => K::LockConflict,
            D::StaleResultRejected(_) => K::StaleResultRejected,
            D::MergeConflict(_) => K::MergeConflict,
            D::ScopeViolation(_) => K::ScopeViolation,
            D::TaskLanded(_) => K::TaskLanded,
            D::VerifyFailed(_) => K::VerifyFailed,
            D::PoolParked(_) => K::PoolParked,
            D::Raw { kind, .. } => *kind,
        }
    }

    /// A stored detail (the JSON text in the store) of a `kind` event: typed when serialising
    /// the typed detail gives back exactly `text`, else kept raw. Fails only when `text` is not
    /// JSON at all.
    pub fn from_stored(kind: EventKind, text: &str) -> Result<EventDetail, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if let Some(typed) = EventDetail::read(kind, &value)
            && serde_json::to_string(&typed).is_ok_and(|again| again == text)
        {
            return Ok(typed);
        }
        Ok(EventDetail::Raw {
            kind,
            detail: value,
        })
    }

    /// The typed detail of a `kind` event in `value`, leniently: fields it does not know are
    /// ignored, missing optional ones are none. `None` when the fields it needs are not there.
    pub fn read(kind: EventKind, value: &serde_json::Value) -> Option<EventDetail> {
        fn field<T: DeserializeOwned>(value: &serde_json::Value) -> Option<T> {
            T::deserialize(value).ok()
        }
        use EventDetail as D;
        use EventKind as K;
        Some(match kind {
            K::SessionCreated => D::SessionCreated(field(value)?),
            K::SessionStarted => value.is_object().then_some(D::SessionStarted)?,
            K::SessionPaused => D::SessionPaused(field(value)?),
            K::SessionResumed => D::SessionResumed(field(value)?),
            K::SessionCompleted => D::SessionCompleted(field(value)?),
            K::SessionFailed => D::SessionFailed(field(value)?),
            K::SessionCancelled => D::SessionCancelled(field(value)?),
            K::WorkerRegistered => D::WorkerRegistered(field(value)?),
            K::WorkerOffline => D::WorkerOffline(field(value)?),
            K::WorkerStopped => D::WorkerStopped(field(value)?),
            K::TaskReady => value.is_object().then_some(D::TaskReady)?,
            K::TaskStarted => D::TaskStarted(field(value)?),
            K::TaskSucceeded => D::TaskSucceeded(field(value)?),
            K::TaskFailed => D::TaskFailed(field(value)?),
            K::TaskRequeued => D::TaskRequeued(field(value)?),
            K::TaskSkipped => D::TaskSkipped(field(value)?),
            K::TaskCancelled => D::TaskCancelled(field(value)?),
            K::LockAcquired => D::LockAcquired(field(value)?),
            K::LockReleased => D::LockReleased(field(value)?),
            K::LockConflict => D::LockConflict(field(value)?),
            K::StaleResultRejected => D::StaleResultRejected(field(value)?),
            K::MergeConflict => D::MergeConflict(field(value)?),
            K::ScopeViolation => D::ScopeViolation(field(value)?),
            K::TaskLanded => D::TaskLanded(field(value)?),
            K::VerifyFailed => D::VerifyFailed(field(value)?),
            K::PoolParked => D::PoolParked(field(value)?),
        })
    }

    /// The typed detail: this one, or for a raw one, what [`EventDetail::read`] makes of it.
    /// For readers that need a field (the audits, the dashboards), not an exact copy.
    pub fn known(&self) -> Option<Cow<'_, EventDetail>> {
        match self {
            EventDetail::Raw { kind, detail } => EventDetail::read(*kind, detail).map(Cow::Owned),
            typed => Some(Cow::Borrowed(typed)),
        }
    }

    /// The detail in plain words, for people: what the progress lines, the terminal dashboard
    /// and the web page show after the event's kind and subject. `None` when the kind and the
    /// subject say it all (`task_ready`).
    pub fn describe(&self) -> Option<String> {
        use EventDetail as D;
        let text = match self {
            // Its name is the event's subject already.
            D::SessionCreated(d) => {
                format!(
                    "{}, {} isolation",
                    count(d.tasks, "task"),
                    d.isolation.as_str()
                )
            }
            D::SessionStarted | D::TaskReady => return None,
            // Started tasks are the routine flow; their log path is in `br status`.
            D::TaskStarted(_) => return None,
            D::SessionPaused(d) | D::SessionCancelled(d) | D::SessionResumed(d) => {
                match &d.reason {
                    Some(reason) => format!("was {}: {reason}", d.from),
                    None => format!("was {}", d.from),
                }
            }
            D::SessionCompleted(t) | D::SessionFailed(t) => {
                let mut parts = vec![format!("{} succeeded", t.succeeded)];
                for (n, what) in [
                    (t.failed, "failed"),
                    (t.skipped, "skipped"),
                    (t.cancelled, "cancelled"),
                ] {
                    if n > 0 {
                        parts.push(format!("{n} {what}"));
                    }
                }
                parts.join(", ")
            }
            D::WorkerRegistered(WorkerRegistered::New {
                host,
                pid,
                session_id,
            }) => match session_id {
                Some(s) => format!("on {host}, pid {pid}, for session {s}"),
                None => format!("on {host}, pid {pid}"),
            },
            D::WorkerRegistered(WorkerRegistered::Rejoined { .. }) => {
                "back after it was marked offline".to_string()
            }
            D::WorkerOffline(WorkerOffline::Silent { .. }) => "heartbeat timed out".to_string(),
            D::WorkerOffline(WorkerOffline::LeaseExpired { task_id, .. }) => {
                format!("its lease on {task_id} expired")
            }
            D::WorkerStopped(d) => format!(
                "{} completed, {} failed",
                count(d.tasks_completed, "task"),
                d.tasks_failed
            ),
            D::TaskSucceeded(d) => {
                let commit = d.commit.as_deref()?;
                format!(
                    "committed {} ({} changed)",
                    short_commit(commit),
                    count(d.changed_files, "file")
                )
            }
            D::TaskFailed(d) => d.reason.clone(),
            D::TaskRequeued(TaskRequeued::AttemptEnded {
                reason,
                next_attempt,
                ..
            }) => format!("{reason}; attempt {next_attempt} next"),
            D::TaskRequeued(TaskRequeued::OnNewBase {
                reason,
                base_commit,
                ..
            }) => format!("{reason}; runs again from {}", short_commit(base_commit)),
            D::TaskRequeued(TaskRequeued::Retried {
                reason,
                from,
                next_attempt,
            }) => format!("{reason} (it was {from}); attempt {next_attempt} next"),
            D::TaskSkipped(d) if d.because == d.failed => format!("{} failed", d.failed),
            D::TaskSkipped(d) => format!("{} was skipped ({} failed)", d.because, d.failed),
            D::TaskCancelled(d) => d.reason.clone(),
            D::LockAcquired(d) | D::LockReleased(d) => d.paths.join(", "),
            D::LockConflict(d) => d.describe(),
            D::StaleResultRejected(d) => format!(
                "late {} refused: the task is {} at attempt {}",
                d.outcome.words(),
                d.task_state,
                d.task_attempt
            ),
            D::MergeConflict(d) => match d.stage {
                None => format!("would conflict with {} on {}", d.with, d.files.join(", ")),
                Some(ConflictStage::Merge) => {
                    format!("conflicts with {} on {}", d.with, d.files.join(", "))
                }
            },
            D::ScopeViolation(d) => format!("changed outside its files: {}", d.files.join(", ")),
            D::TaskLanded(d) => format!("integration branch at {}", short_commit(&d.commit)),
            D::VerifyFailed(d) => format!("`{}` failed: {}", d.command, d.reason),
            D::PoolParked(d) => format!(
                "pool {} parked until {} after a rate limit: {}",
                d.pool, d.until, d.reason
            ),
            D::Raw { kind, detail } => {
                return match EventDetail::read(*kind, detail) {
                    Some(typed) => typed.describe(),
                    // Nothing of its shape is known: its reason, if it gives one.
                    None => detail
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .map(str::to_string),
                };
            }
        };
        Some(text)
    }
}

impl LockConflict {
    /// "waits for shared.txt held by t0"; when the held lock is not the wanted path itself,
    /// both: "waits for src/a.rs: src/** held by api".
    pub fn describe(&self) -> String {
        let mut holders: Vec<String> = Vec::new();
        for h in &self.held_by {
            let text = format!("{} held by {}", h.path, h.holder());
            if !holders.contains(&text) {
                holders.push(text);
            }
        }
        let mut held: Vec<&str> = self.held_by.iter().map(|h| h.path.as_str()).collect();
        let mut wanted: Vec<&str> = self.paths.iter().map(String::as_str).collect();
        held.sort_unstable();
        held.dedup();
        wanted.sort_unstable();
        wanted.dedup();
        if holders.is_empty() {
            format!("waits for {}", self.paths.join(", "))
        } else if held == wanted {
            format!("waits for {}", holders.join(", "))
        } else {
            format!(
                "waits for {}: {}",
                self.paths.join(", "),
                holders.join(", ")
            )
        }
    }
}

/// Each detail is the JSON object of its kind; kinds without details are `{}`.
impl Serialize for EventDetail {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use EventDetail as D;
        match self {
            D::SessionCreated(d) => d.serialize(s),
            D::SessionStarted | D::TaskReady => s.serialize_map(Some(0))?.end(),
            D::SessionPaused(d) | D::SessionResumed(d) | D::SessionCancelled(d) => d.serialize(s),
            D::SessionCompleted(d) | D::SessionFailed(d) => d.serialize(s),
            D::WorkerRegistered(d) => d.serialize(s),
            D::WorkerOffline(d) => d.serialize(s),
            D::WorkerStopped(d) => d.serialize(s),
            D::TaskStarted(d) => d.serialize(s),
            D::TaskSucceeded(d) => d.serialize(s),
            D::TaskFailed(d) => d.serialize(s),
            D::TaskRequeued(d) => d.serialize(s),
            D::TaskSkipped(d) => d.serialize(s),
            D::TaskCancelled(d) => d.serialize(s),
            D::LockAcquired(d) | D::LockReleased(d) => d.serialize(s),
            D::LockConflict(d) => d.serialize(s),
            D::StaleResultRejected(d) => d.serialize(s),
            D::MergeConflict(d) => d.serialize(s),
            D::ScopeViolation(d) => d.serialize(s),
            D::TaskLanded(d) => d.serialize(s),
            D::VerifyFailed(d) => d.serialize(s),
            D::PoolParked(d) => d.serialize(s),
            D::Raw { detail, .. } => detail.serialize(s),
        }
    }
}

/// "1 task", "3 tasks".
fn count(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A commit as people read it: its first 12 hex digits.
fn short_commit(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(id: &str) -> TaskId {
        TaskId::new(id).unwrap()
    }

    /// One detail of every shape br writes, with the JSON text it has always written for it.
    fn written() -> Vec<(EventDetail, &'static str)> {
        use EventDetail as D;
        let change = |from, reason: Option<&str>| SessionChange {
            from,
            reason: reason.map(str::to_string),
        };
        let tally = SessionTally {
            succeeded: 2,
            failed: 1,
            skipped: 1,
            cancelled: 0,
        };
        let exit2 = Outcome::Failed { exit_code: 2 };
        vec![
            (
                D::SessionCreated(SessionCreated {
                    name: "build".into(),
                    tasks: 3,
                    plan_path: Some("/repo/br.toml".into()),
                    base_commit: None,
                    isolation: Isolation::Worktree,
                }),
                r#"{"name":"build","tasks":3,"plan_path":"/repo/br.toml","base_commit":null,"isolation":"worktree"}"#,
            ),
            (D::SessionStarted, "{}"),
            (
                D::SessionPaused(change(SessionStatus::Running, None)),
                r#"{"from":"running"}"#,
            ),
            (
                D::SessionResumed(change(SessionStatus::Failed, Some("merge conflict"))),
                r#"{"from":"failed","reason":"merge conflict"}"#,
            ),
            (
                D::SessionCompleted(tally),
                r#"{"succeeded":2,"failed":1,"skipped":1,"cancelled":0}"#,
            ),
            (
                D::WorkerRegistered(WorkerRegistered::New {
                    host: "box".into(),
                    pid: 42,
                    session_id: None,
                }),
                r#"{"host":"box","pid":42,"session_id":null}"#,
            ),
            (
                D::WorkerRegistered(WorkerRegistered::Rejoined { rejoined: true }),
                r#"{"rejoined":true}"#,
            ),
            (
                D::WorkerOffline(WorkerOffline::Silent {
                    last_heartbeat_ms: 1_700_000_000_000,
                }),
                r#"{"last_heartbeat_ms":1700000000000}"#,
            ),
            (
                D::WorkerOffline(WorkerOffline::lease_expired(task("api"))),
                r#"{"reason":"lease expired","task_id":"api"}"#,
            ),
            (
                D::WorkerStopped(WorkerStopped {
                    tasks_completed: 3,
                    tasks_failed: 1,
                }),
                r#"{"tasks_completed":3,"tasks_failed":1}"#,
            ),
            (D::TaskReady, "{}"),
            (
                D::TaskStarted(TaskStarted {
                    log_path: "/logs/api.1.log".into(),
                }),
                r#"{"log_path":"/logs/api.1.log"}"#,
            ),
            (
                D::TaskSucceeded(TaskSucceeded {
                    exit_code: 0,
                    commit: Some("c0ffee".into()),
                    changed_files: 2,
                }),
                r#"{"exit_code":0,"commit":"c0ffee","changed_files":2}"#,
            ),
            (
                D::TaskFailed(TaskFailed::of(&exit2)),
                r#"{"reason":"exit 2","outcome":"failed","exit_code":2}"#,
            ),
            (
                D::TaskRequeued(TaskRequeued::after(&Outcome::LeaseLost, 2)),
                r#"{"reason":"lease lost (its worker went silent or lost the store)","outcome":"lease_lost","next_attempt":2}"#,
            ),
            (
                D::TaskRequeued(TaskRequeued::OnNewBase {
                    reason: "merge conflict".into(),
                    base_commit: "abc".into(),
                    from: TaskState::Succeeded,
                }),
                r#"{"reason":"merge conflict","base_commit":"abc","from":"succeeded"}"#,
            ),
            (
                D::TaskRequeued(TaskRequeued::Retried {
                    reason: TaskRequeued::RETRY_ASKED.into(),
                    from: TaskState::Skipped,
                    next_attempt: 1,
                }),
                r#"{"reason":"retry asked for","from":"skipped","next_attempt":1}"#,
            ),
            (
                D::TaskSkipped(TaskSkipped {
                    because: task("b"),
                    failed: task("a"),
                }),
                r#"{"because":"b","failed":"a"}"#,
            ),
            (
                D::TaskCancelled(TaskCancelled {
                    reason: TaskCancelled::SESSION_CANCELLED.into(),
                }),
                r#"{"reason":"session cancelled"}"#,
            ),
            (
                D::LockAcquired(LockPaths {
                    paths: vec!["a.txt".into()],
                }),
                r#"{"paths":["a.txt"]}"#,
            ),
            (
                D::LockConflict(LockConflict {
                    paths: vec!["src/a.rs".into()],
                    held_by: vec![HeldLock {
                        path: "src/**".into(),
                        session_id: SessionId::from_string("abc"),
                        task_id: None,
                        attempt: None,
                    }],
                }),
                r#"{"paths":["src/a.rs"],"held_by":[{"path":"src/**","session_id":"abc","task_id":null}]}"#,
            ),
            (
                D::StaleResultRejected(StaleResult::of(&Outcome::Succeeded, TaskState::Running, 2)),
                r#"{"outcome":"succeeded","reason":"succeeded","task_state":"running","task_attempt":2}"#,
            ),
            (
                D::MergeConflict(MergeConflict {
                    files: vec!["x".into()],
                    with: "b".into(),
                    tasks: vec!["a".into(), "b".into()],
                    stage: None,
                }),
                r#"{"files":["x"],"with":"b","tasks":["a","b"]}"#,
            ),
            (
                D::MergeConflict(MergeConflict {
                    files: vec!["x".into()],
                    with: "integration".into(),
                    tasks: vec!["a".into(), "integration".into()],
                    stage: Some(ConflictStage::Merge),
                }),
                r#"{"files":["x"],"with":"integration","tasks":["a","integration"],"stage":"merge"}"#,
            ),
            (
                D::ScopeViolation(ScopeViolation {
                    files: vec!["b.txt".into()],
                }),
                r#"{"files":["b.txt"]}"#,
            ),
        ]
    }

    #[test]
    fn every_detail_is_stored_as_it_always_was_and_read_back_typed() {
        for (detail, text) in written() {
            assert_eq!(serde_json::to_string(&detail).unwrap(), text);
            let read = EventDetail::from_stored(detail.kind(), text).unwrap();
            assert_eq!(read, detail, "{text}");
        }
    }

    #[test]
    fn a_detail_of_another_shape_is_kept_whole_and_still_described() {
        // An older br's detail with a field this one does not write, one without a field,
        // and one in another key order: each comes back byte for byte.
        let cases = [
            (
                EventKind::TaskFailed,
                r#"{"reason":"exit 2","outcome":"failed","exit_code":2,"signal":null}"#,
                Some("exit 2"),
            ),
            (
                EventKind::TaskFailed,
                r#"{"reason":"exit 2"}"#,
                Some("exit 2"),
            ),
            (
                EventKind::LockAcquired,
                r#"{"paths":["a"],"holder":"t"}"#,
                Some("a"),
            ),
            (EventKind::ScopeViolation, r#"{"files":"not a list"}"#, None),
            (EventKind::TaskReady, r#"{"note":1}"#, None),
            (
                EventKind::SessionCreated,
                r#"{"tasks":3,"name":"b","plan_path":null,"base_commit":null,"isolation":"shared"}"#,
                Some("3 tasks, shared isolation"),
            ),
        ];
        for (kind, text, words) in cases {
            let read = EventDetail::from_stored(kind, text).unwrap();
            assert!(matches!(read, EventDetail::Raw { .. }), "{text}: {read:?}");
            assert_eq!(read.kind(), kind);
            assert_eq!(serde_json::to_string(&read).unwrap(), text);
            assert_eq!(read.describe().as_deref(), words, "{text}");
        }
        assert!(EventDetail::from_stored(EventKind::TaskReady, "{oops").is_err());
    }

    #[test]
    fn details_read_as_plain_words() {
        let words: Vec<Option<String>> = written().iter().map(|(d, _)| d.describe()).collect();
        let want = [
            Some("3 tasks, worktree isolation"),
            None,
            Some("was running"),
            Some("was failed: merge conflict"),
            Some("2 succeeded, 1 failed, 1 skipped"),
            Some("on box, pid 42"),
            Some("back after it was marked offline"),
            Some("heartbeat timed out"),
            Some("its lease on api expired"),
            Some("3 tasks completed, 1 failed"),
            None,
            None,
            Some("committed c0ffee (2 files changed)"),
            Some("exit 2"),
            Some("lease lost (its worker went silent or lost the store); attempt 2 next"),
            Some("merge conflict; runs again from abc"),
            Some("retry asked for (it was skipped); attempt 1 next"),
            Some("b was skipped (a failed)"),
            Some("session cancelled"),
            Some("a.txt"),
            Some("waits for src/a.rs: src/** held by session abc (br lock)"),
            Some("late succeeded refused: the task is running at attempt 2"),
            Some("would conflict with b on x"),
            Some("conflicts with integration on x"),
            Some("changed outside its files: b.txt"),
        ];
        assert_eq!(words.len(), want.len());
        for (got, want) in words.iter().zip(want) {
            assert_eq!(got.as_deref(), want);
        }
    }

    #[test]
    fn a_lock_conflict_names_what_it_waits_for_and_who_holds_it() {
        let held = |path: &str, task: Option<&str>| HeldLock {
            path: path.into(),
            session_id: SessionId::from_string("abc"),
            task_id: task.map(|t| TaskId::new(t).unwrap()),
            attempt: None,
        };
        let same = LockConflict {
            paths: vec!["shared.txt".into()],
            held_by: vec![held("shared.txt", Some("t0"))],
        };
        assert_eq!(same.describe(), "waits for shared.txt held by t0");
        let two = LockConflict {
            paths: vec!["a".into(), "b".into()],
            held_by: vec![held("b", Some("t1")), held("a", Some("t0"))],
        };
        assert_eq!(two.describe(), "waits for b held by t1, a held by t0");
        let none = LockConflict {
            paths: vec!["a".into()],
            held_by: vec![],
        };
        assert_eq!(none.describe(), "waits for a");
        let value = json!({"paths": ["a"], "held_by": [{"path": "a", "session_id": "abc"}]});
        let lenient = EventDetail::read(EventKind::LockConflict, &value).unwrap();
        assert_eq!(
            lenient.describe().as_deref(),
            Some("waits for a held by session abc (br lock)")
        );
    }
}
