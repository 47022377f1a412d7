//! Which tasks `br retry` runs again: failed, skipped and cancelled ones — all of them, or the
//! ones named and the dependents they had skipped — and why a request is refused. A pure rule
//! over the session's task graph, so every store backend retries the same tasks.

use std::collections::{BTreeSet, HashMap};

use crate::state::{SessionStatus, TaskState};

/// Which tasks a retry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryScope<'a> {
    /// Every failed, skipped and cancelled task of the session.
    All,
    /// These tasks, and the dependents they skipped.
    Named(&'a [String]),
}

/// One task of the session, as the rule needs it.
#[derive(Debug, Clone, Copy)]
pub struct RetryNode<'a> {
    pub id: &'a str,
    pub state: TaskState,
    pub after: &'a [String],
}

/// Why a retry was refused. Nothing changes when one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    #[error("session {session} has no task `{task}`")]
    NoSuchTask { session: String, task: String },
    #[error(
        "cannot retry {} of session {session}: only failed, skipped and cancelled tasks run again",
        describe_states(.tasks)
    )]
    NotEnded {
        session: String,
        /// Each named task that is not failed, skipped or cancelled, with its state.
        tasks: Vec<(String, TaskState)>,
    },
    #[error(
        "cannot retry task {task} of session {session}: it waits for {after}, which is {state}; \
         retry {after} too"
    )]
    WaitsFor {
        session: String,
        task: String,
        after: String,
        state: TaskState,
    },
    #[error(
        "cannot retry session {session} yet: it was cancelled and {running} task(s) are still \
         stopping; retry once they have (br status {session} shows them)"
    )]
    StillStopping { session: String, running: usize },
    #[error(
        "session {session} has nothing to retry: it is {status}, and no task failed, was skipped \
         or was cancelled"
    )]
    Nothing {
        session: String,
        status: SessionStatus,
    },
}

/// "task a (succeeded)", "tasks a (succeeded) and b (running)".
fn describe_states(tasks: &[(String, TaskState)]) -> String {
    let items: Vec<String> = tasks.iter().map(|(t, s)| format!("{t} ({s})")).collect();
    let list = match items.as_slice() {
        [one] => return format!("task {one}"),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        [] => String::new(),
    };
    format!("tasks {list}")
}

/// Whether a task in this state can run again by `br retry`.
pub fn is_retryable(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
    )
}

/// The positions in `tasks` (plan order) of the tasks a retry of `scope` runs again.
///
/// With [`RetryScope::Named`], each named task must be failed, skipped or cancelled; their
/// skipped dependents (transitively) come along, except one that also waits for a task that
/// ended badly and stays so — it would wait forever. A named task that waits for such a task
/// is refused: name that one too. With [`RetryScope::All`], every task that ended badly runs
/// again, so none waits for one that stays.
pub fn tasks_to_retry(
    session: &str,
    status: SessionStatus,
    tasks: &[RetryNode<'_>],
    scope: RetryScope<'_>,
) -> Result<Vec<usize>, RetryError> {
    // A cancelled session's running tasks end as cancelled when their workers report, whatever
    // the session is by then: running again, it would end with them cancelled anew.
    let running = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .count();
    if status == SessionStatus::Cancelled && running > 0 {
        return Err(RetryError::StillStopping {
            session: session.to_string(),
            running,
        });
    }
    let by_id: HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let chosen: BTreeSet<usize> = match scope {
        RetryScope::All => (0..tasks.len())
            .filter(|&i| is_retryable(tasks[i].state))
            .collect(),
        RetryScope::Named(names) => named(session, tasks, &by_id, names)?,
    };
    if chosen.is_empty() {
        return Err(RetryError::Nothing {
            session: session.to_string(),
            status,
        });
    }
    Ok(chosen.into_iter().collect())
}

fn named(
    session: &str,
    tasks: &[RetryNode<'_>],
    by_id: &HashMap<&str, usize>,
    names: &[String],
) -> Result<BTreeSet<usize>, RetryError> {
    let mut asked = BTreeSet::new();
    let mut not_ended = Vec::new();
    for name in names {
        let &i = by_id
            .get(name.as_str())
            .ok_or_else(|| RetryError::NoSuchTask {
                session: session.to_string(),
                task: name.clone(),
            })?;
        if !is_retryable(tasks[i].state) {
            not_ended.push((name.clone(), tasks[i].state));
        }
        asked.insert(i);
    }
    if !not_ended.is_empty() {
        not_ended.dedup();
        return Err(RetryError::NotEnded {
            session: session.to_string(),
            tasks: not_ended,
        });
    }
    // The skipped tasks that wait, directly or not, for a named one.
    let mut dependents: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in tasks.iter().enumerate() {
        for dep in t.after {
            dependents.entry(dep.as_str()).or_default().push(i);
        }
    }
    let mut chosen = asked.clone();
    let mut stack: Vec<usize> = asked.iter().copied().collect();
    while let Some(i) = stack.pop() {
        for &d in dependents.get(tasks[i].id).into_iter().flatten() {
            if tasks[d].state == TaskState::Skipped && chosen.insert(d) {
                stack.push(d);
            }
        }
    }
    // A task whose `after` holds one that ended badly and does not run again would wait
    // forever: a named one is refused, a dependent stays skipped (and so do its own). Until
    // nothing changes, since dropping one can strand another.
    loop {
        let stranded = chosen.iter().copied().find_map(|i| {
            tasks[i].after.iter().find_map(|dep| {
                let &d = by_id.get(dep.as_str())?;
                (is_retryable(tasks[d].state) && !chosen.contains(&d)).then_some((i, d))
            })
        });
        let Some((i, d)) = stranded else { break };
        if asked.contains(&i) {
            return Err(RetryError::WaitsFor {
                session: session.to_string(),
                task: tasks[i].id.to_string(),
                after: tasks[d].id.to_string(),
                state: tasks[d].state,
            });
        }
        chosen.remove(&i);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    /// `(id, state, after)` rows as nodes.
    fn graph<'a>(rows: &'a [(&'a str, TaskState, Vec<String>)]) -> Vec<RetryNode<'a>> {
        rows.iter()
            .map(|(id, state, after)| RetryNode {
                id,
                state: *state,
                after,
            })
            .collect()
    }

    fn after(ids: &[&str]) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    fn names(ids: &[&str]) -> Vec<String> {
        after(ids)
    }

    fn ids(rows: &[(&str, TaskState, Vec<String>)], chosen: &[usize]) -> Vec<String> {
        chosen.iter().map(|&i| rows[i].0.to_string()).collect()
    }

    #[test]
    fn all_retries_every_task_that_ended_badly() {
        let rows = [
            ("a", Succeeded, after(&[])),
            ("b", Failed, after(&["a"])),
            ("c", Skipped, after(&["b"])),
            ("d", Cancelled, after(&[])),
            ("e", Running, after(&[])),
        ];
        let chosen =
            tasks_to_retry("s", SessionStatus::Running, &graph(&rows), RetryScope::All).unwrap();
        assert_eq!(ids(&rows, &chosen), ["b", "c", "d"]);
    }

    #[test]
    fn a_named_task_brings_the_dependents_it_skipped() {
        let rows = [
            ("a", Failed, after(&[])),
            ("b", Skipped, after(&["a"])),
            ("c", Skipped, after(&["b"])),
            ("x", Failed, after(&[])),
            ("y", Skipped, after(&["x"])),
            // Waits for a and for x: x stays failed, so it would wait forever.
            ("both", Skipped, after(&["a", "x"])),
            ("after-both", Skipped, after(&["both"])),
        ];
        let n = names(&["a"]);
        let chosen = tasks_to_retry(
            "s",
            SessionStatus::Failed,
            &graph(&rows),
            RetryScope::Named(&n),
        )
        .unwrap();
        assert_eq!(ids(&rows, &chosen), ["a", "b", "c"]);
        let n = names(&["a", "x"]);
        let chosen = tasks_to_retry(
            "s",
            SessionStatus::Failed,
            &graph(&rows),
            RetryScope::Named(&n),
        )
        .unwrap();
        assert_eq!(
            ids(&rows, &chosen),
            ["a", "b", "c", "x", "y", "both", "after-both"]
        );
    }

    #[test]
    fn refusals_name_the_task_and_why() {
        let rows = [
            ("a", Succeeded, after(&[])),
            ("b", Running, after(&[])),
            ("c", Cancelled, after(&[])),
            ("d", Cancelled, after(&["c"])),
        ];
        let g = graph(&rows);
        let refuse = |asked: &[&str]| {
            let n = names(asked);
            tasks_to_retry("s1", SessionStatus::Running, &g, RetryScope::Named(&n))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refuse(&["a"]),
            "cannot retry task a (succeeded) of session s1: only failed, skipped and cancelled \
             tasks run again"
        );
        assert_eq!(
            refuse(&["c", "a", "b"]),
            "cannot retry tasks a (succeeded) and b (running) of session s1: only failed, \
             skipped and cancelled tasks run again"
        );
        assert_eq!(refuse(&["zz"]), "session s1 has no task `zz`");
        assert_eq!(
            refuse(&["d"]),
            "cannot retry task d of session s1: it waits for c, which is cancelled; retry c too"
        );
        let n = names(&["d", "c"]);
        let chosen = tasks_to_retry("s1", SessionStatus::Running, &g, RetryScope::Named(&n));
        assert_eq!(chosen, Ok(vec![2, 3]));
    }

    #[test]
    fn a_cancelled_session_is_retried_once_its_tasks_stopped() {
        let rows = [("a", Running, after(&[])), ("b", Cancelled, after(&[]))];
        let err = tasks_to_retry(
            "s1",
            SessionStatus::Cancelled,
            &graph(&rows),
            RetryScope::All,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot retry session s1 yet: it was cancelled and 1 task(s) are still stopping; \
             retry once they have (br status s1 shows them)"
        );
        let rows = [("a", Cancelled, after(&[])), ("b", Cancelled, after(&[]))];
        let chosen = tasks_to_retry(
            "s1",
            SessionStatus::Cancelled,
            &graph(&rows),
            RetryScope::All,
        );
        assert_eq!(chosen, Ok(vec![0, 1]));
    }

    #[test]
    fn nothing_to_retry_says_so() {
        let rows = [("a", Succeeded, after(&[]))];
        let err = tasks_to_retry(
            "s1",
            SessionStatus::Completed,
            &graph(&rows),
            RetryScope::All,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "session s1 has nothing to retry: it is completed, and no task failed, was skipped \
             or was cancelled"
        );
    }
}
