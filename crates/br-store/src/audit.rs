//! Audits of the event log: proofs, after the fact, that the store kept its promises. Tests use
//! them; so can a user who wants to check a past session (`br events --json` holds the same data).

use std::collections::{BTreeMap, HashMap};

use br_core::detail::TaskRequeued;
use br_core::{EventDetail, EventKind, LockPath};

use crate::model::Event;

/// Who holds a lock: a task of a session, or the session itself (a manual lock).
type Owner = (String, Option<String>);

/// Replays every `lock_acquired` / `lock_released` in `seq` order and checks that no lock was
/// ever acquired while an overlapping one was held by another owner. Returns how many
/// acquisitions were checked, or the first violation.
pub fn audit_lock_order(events: &[Event]) -> Result<usize, String> {
    let mut held: HashMap<Owner, Vec<LockPath>> = HashMap::new();
    let mut checked = 0;
    let mut last_seq = i64::MIN;
    for ev in events {
        if ev.seq <= last_seq {
            return Err(format!(
                "event seq {} follows {}: not increasing",
                ev.seq, last_seq
            ));
        }
        last_seq = ev.seq;
        let (Some(session), true) = (
            ev.session_id.as_ref(),
            matches!(ev.kind, EventKind::LockAcquired | EventKind::LockReleased),
        ) else {
            continue;
        };
        let owner: Owner = (
            session.as_str().to_string(),
            ev.task_id.as_ref().map(|t| t.as_str().to_string()),
        );
        let paths = paths_of(ev)?;
        match ev.kind {
            EventKind::LockAcquired => {
                for (other, other_paths) in &held {
                    // A session's manual locks never block that same session.
                    let same_session =
                        other.0 == owner.0 && (other.1.is_none() || owner.1.is_none());
                    if *other == owner || same_session {
                        continue;
                    }
                    for p in &paths {
                        if let Some(q) = other_paths.iter().find(|q| p.overlaps(q)) {
                            return Err(format!(
                                "seq {}: {:?} acquired `{p}` while {:?} held `{q}`",
                                ev.seq, owner, other
                            ));
                        }
                    }
                }
                checked += 1;
                held.entry(owner).or_default().extend(paths);
            }
            _ => {
                if let Some(mine) = held.get_mut(&owner) {
                    mine.retain(|p| !paths.contains(p));
                    if mine.is_empty() {
                        held.remove(&owner);
                    }
                }
            }
        }
    }
    Ok(checked)
}

fn paths_of(ev: &Event) -> Result<Vec<LockPath>, String> {
    let detail = ev.detail.known();
    let paths = match detail.as_deref() {
        Some(EventDetail::LockAcquired(d) | EventDetail::LockReleased(d)) => &d.paths,
        _ => return Err(format!("seq {}: {} without detail.paths", ev.seq, ev.kind)),
    };
    paths
        .iter()
        .map(|p| LockPath::parse(p).map_err(|e| format!("seq {}: {e}", ev.seq)))
        .collect()
}

/// Checks that every task named in the log reached exactly one terminal state — since it was
/// last queued again after it had ended (`br retry`, or the merge queue on a new base) — and
/// returns the terminal kind of each task (keyed by `session/task`).
pub fn audit_terminal_once(events: &[Event]) -> Result<BTreeMap<String, EventKind>, String> {
    let mut ends: BTreeMap<String, EventKind> = BTreeMap::new();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for ev in events {
        let (Some(session), Some(task)) = (&ev.session_id, &ev.task_id) else {
            continue;
        };
        let key = format!("{session}/{task}");
        seen.insert(key.clone(), ());
        let reopened = matches!(
            ev.detail.known().as_deref(),
            Some(EventDetail::TaskRequeued(
                TaskRequeued::Retried { .. } | TaskRequeued::OnNewBase { .. }
            ))
        );
        if reopened {
            ends.remove(&key);
            continue;
        }
        let terminal = matches!(
            ev.kind,
            EventKind::TaskSucceeded
                | EventKind::TaskFailed
                | EventKind::TaskSkipped
                | EventKind::TaskCancelled
        );
        if terminal && let Some(before) = ends.insert(key.clone(), ev.kind) {
            return Err(format!(
                "task {key} ended twice: {before} then {} (seq {})",
                ev.kind, ev.seq
            ));
        }
    }
    if let Some(open) = seen.keys().find(|k| !ends.contains_key(*k)) {
        return Err(format!("task {open} never reached a terminal state"));
    }
    Ok(ends)
}

/// Checks the fencing rule after the fact: every event that ends or requeues an attempt names
/// the task's current attempt — the one started last — and ends it once; a result reported by a
/// worker comes from the worker that started it; attempt numbers only grow. An accepted stale
/// result would show as a second ending of an attempt, or an ending of an attempt that is no
/// longer current. Returns how many endings were checked.
pub fn audit_fencing(events: &[Event]) -> Result<usize, String> {
    /// The attempt started last: its number, its worker, and whether it has ended.
    struct Current {
        attempt: u32,
        worker: Option<String>,
        open: bool,
    }
    let mut tasks: HashMap<String, Current> = HashMap::new();
    let mut checked = 0;
    for ev in events {
        let (Some(session), Some(task), Some(attempt)) = (&ev.session_id, &ev.task_id, ev.attempt)
        else {
            continue;
        };
        let key = format!("{session}/{task}");
        let attempt = attempt.0;
        let worker = ev.worker_id.as_ref().map(ToString::to_string);
        match ev.kind {
            EventKind::TaskStarted => {
                if let Some(before) = tasks.get(&key)
                    && (before.attempt >= attempt || before.open)
                {
                    return Err(format!(
                        "seq {}: {key} attempt {attempt} started while attempt {} was {}",
                        ev.seq,
                        before.attempt,
                        if before.open { "running" } else { "newer" }
                    ));
                }
                tasks.insert(
                    key,
                    Current {
                        attempt,
                        worker,
                        open: true,
                    },
                );
            }
            EventKind::TaskSucceeded
            | EventKind::TaskFailed
            | EventKind::TaskRequeued
            | EventKind::TaskCancelled => {
                checked += 1;
                let Some(current) = tasks.get_mut(&key) else {
                    return Err(format!(
                        "seq {}: {key} attempt {attempt} ended ({}) but never started",
                        ev.seq, ev.kind
                    ));
                };
                if current.attempt != attempt || !current.open {
                    return Err(format!(
                        "seq {}: {key} attempt {attempt} ended ({}) when the current attempt \
                         was {} ({})",
                        ev.seq,
                        ev.kind,
                        current.attempt,
                        if current.open { "running" } else { "ended" }
                    ));
                }
                if ev.kind == EventKind::TaskSucceeded && worker != current.worker {
                    return Err(format!(
                        "seq {}: {key} attempt {attempt} succeeded as reported by {:?}, but \
                         {:?} ran it",
                        ev.seq, worker, current.worker
                    ));
                }
                current.open = false;
            }
            _ => {}
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use br_core::{Attempt, SessionId, TaskId, Timestamp, WorkerId};

    use super::*;

    fn ev(seq: i64, kind: EventKind, attempt: u32, worker: &str) -> Event {
        Event {
            seq,
            at: Timestamp(seq),
            kind,
            session_id: Some(SessionId::from_string("s")),
            task_id: Some(TaskId::new("t").expect("task id")),
            worker_id: Some(WorkerId::from_string(worker)),
            attempt: Some(Attempt(attempt)),
            // The fencing audit reads who and which attempt, not what the detail says.
            detail: EventDetail::Raw {
                kind,
                detail: serde_json::Value::Null,
            },
        }
    }

    #[test]
    fn a_rerun_after_a_lost_lease_passes_the_fencing_audit() {
        let log = [
            ev(1, EventKind::TaskStarted, 1, "a"),
            ev(2, EventKind::TaskRequeued, 1, "a"),
            ev(3, EventKind::TaskStarted, 2, "b"),
            ev(4, EventKind::StaleResultRejected, 1, "a"),
            ev(5, EventKind::TaskSucceeded, 2, "b"),
        ];
        assert_eq!(audit_fencing(&log), Ok(2));
    }

    #[test]
    fn a_task_queued_again_after_it_ended_may_end_again() {
        let with = |seq, detail: EventDetail| Event {
            kind: detail.kind(),
            detail,
            ..ev(seq, EventKind::TaskReady, 1, "a")
        };
        let failed = || {
            EventDetail::TaskFailed(br_core::detail::TaskFailed::of(&br_core::Outcome::Failed {
                exit_code: 1,
            }))
        };
        let succeeded = EventDetail::TaskSucceeded(br_core::detail::TaskSucceeded {
            exit_code: 0,
            commit: None,
            changed_files: 0,
        });
        let retried = EventDetail::TaskRequeued(TaskRequeued::Retried {
            reason: TaskRequeued::RETRY_ASKED.into(),
            from: br_core::TaskState::Failed,
            next_attempt: 2,
        });
        let log = [with(1, failed()), with(2, retried), with(3, succeeded)];
        let ends = audit_terminal_once(&log).expect("retried, then ended once more");
        assert_eq!(ends.get("s/t"), Some(&EventKind::TaskSucceeded));
        let twice = [with(1, failed()), with(2, failed())];
        assert!(audit_terminal_once(&twice).is_err());
    }

    #[test]
    fn an_accepted_stale_result_fails_the_fencing_audit() {
        let stale_after_requeue = [
            ev(1, EventKind::TaskStarted, 1, "a"),
            ev(2, EventKind::TaskRequeued, 1, "a"),
            ev(3, EventKind::TaskSucceeded, 1, "a"),
        ];
        assert!(audit_fencing(&stale_after_requeue).is_err());
        let stale_after_rerun = [
            ev(1, EventKind::TaskStarted, 1, "a"),
            ev(2, EventKind::TaskRequeued, 1, "a"),
            ev(3, EventKind::TaskStarted, 2, "b"),
            ev(4, EventKind::TaskSucceeded, 1, "a"),
        ];
        assert!(audit_fencing(&stale_after_rerun).is_err());
        let someone_else_s = [
            ev(1, EventKind::TaskStarted, 1, "a"),
            ev(2, EventKind::TaskSucceeded, 1, "b"),
        ];
        assert!(audit_fencing(&someone_else_s).is_err());
        let twice_at_once = [
            ev(1, EventKind::TaskStarted, 1, "a"),
            ev(2, EventKind::TaskStarted, 2, "b"),
        ];
        assert!(audit_fencing(&twice_at_once).is_err());
    }
}
