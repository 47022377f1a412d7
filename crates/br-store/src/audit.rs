//! Audits of the event log: proofs, after the fact, that the store kept its promises. Tests use
//! them; so can a user who wants to check a past session (`br events --json` holds the same data).

use std::collections::{BTreeMap, HashMap};

use br_core::{EventKind, LockPath};

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
    let list = ev
        .detail
        .get("paths")
        .and_then(|p| p.as_array())
        .ok_or_else(|| format!("seq {}: {} without detail.paths", ev.seq, ev.kind))?;
    list.iter()
        .map(|p| {
            let text = p
                .as_str()
                .ok_or_else(|| format!("seq {}: a path is not a string", ev.seq))?;
            LockPath::parse(text).map_err(|e| format!("seq {}: {e}", ev.seq))
        })
        .collect()
}

/// Checks that every task named in the log reached exactly one terminal state, and returns the
/// terminal kind of each task (keyed by `session/task`).
pub fn audit_terminal_once(events: &[Event]) -> Result<BTreeMap<String, EventKind>, String> {
    let mut ends: BTreeMap<String, EventKind> = BTreeMap::new();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for ev in events {
        let (Some(session), Some(task)) = (&ev.session_id, &ev.task_id) else {
            continue;
        };
        let key = format!("{session}/{task}");
        seen.insert(key.clone(), ());
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
