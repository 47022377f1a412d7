//! What one stream message carries: the snapshot with one page of the selected session's tasks
//! and the newest notable events, so that a message stays small whatever the size of the
//! session (a 20,000-task snapshot is megabytes of JSON; a page of it is tens of kilobytes).
//!
//! The keys are the snapshot's; `selected` gains `tasks_offset` and `tasks_total`.

use br_core::{SessionId, TaskId, Timestamp};
use br_store::snapshot::{DescribedTaskRow, LockRow, PoolRow, SessionRow, Snapshot, Throughput};
use br_store::view::DescribedEventView;
use br_store::{Summary, Worker};
use serde::Serialize;

use crate::error::ApiError;

/// How many tasks a page has unless the client asks for another number.
pub const DEFAULT_TASK_PAGE: usize = 200;

/// The most tasks a page may have.
pub const MAX_TASK_PAGE: usize = 1000;

/// How many of the newest notable events a stream message carries (the page shows 50).
pub const STREAM_EVENTS: usize = 50;

/// `?offset=N&limit=M`: which of the selected session's tasks, in plan order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskPage {
    offset: usize,
    limit: usize,
}

impl TaskPage {
    pub(crate) fn new(offset: Option<usize>, limit: Option<usize>) -> Result<TaskPage, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_TASK_PAGE);
        if limit == 0 || limit > MAX_TASK_PAGE {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_TASK_PAGE}"
            )));
        }
        Ok(TaskPage {
            offset: offset.unwrap_or(0),
            limit,
        })
    }
}

/// A snapshot as a stream sends it.
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotPage<'a> {
    now: Timestamp,
    last_seq: i64,
    summary: &'a Summary,
    throughput: &'a Throughput,
    sessions: &'a [SessionRow],
    selected: Option<SelectedPage<'a>>,
    workers: &'a [Worker],
    locks: &'a [LockRow],
    pools: &'a [PoolRow],
    events: Vec<DescribedEventView<'a>>,
}

/// One page of the selected session's tasks.
#[derive(Debug, Serialize)]
struct SelectedPage<'a> {
    id: &'a SessionId,
    tasks: Vec<DescribedTaskRow<'a>>,
    lands: bool,
    landing_task: Option<&'a TaskId>,
    /// The position of the first task of the page among the session's tasks.
    tasks_offset: usize,
    /// How many tasks the session has.
    tasks_total: usize,
}

impl<'a> SnapshotPage<'a> {
    pub(crate) fn of(snapshot: &'a Snapshot, page: TaskPage) -> SnapshotPage<'a> {
        let selected = snapshot.selected.as_ref().map(|s| {
            let start = page.offset.min(s.tasks.len());
            let end = start.saturating_add(page.limit).min(s.tasks.len());
            SelectedPage {
                id: &s.id,
                tasks: s.described_tasks(start..end),
                lands: s.lands,
                landing_task: s.landing_task.as_ref(),
                tasks_offset: start,
                tasks_total: s.tasks.len(),
            }
        });
        let newest = snapshot.events.len().saturating_sub(STREAM_EVENTS);
        SnapshotPage {
            now: snapshot.now,
            last_seq: snapshot.last_seq,
            summary: &snapshot.summary,
            throughput: &snapshot.throughput,
            sessions: &snapshot.sessions,
            selected,
            workers: &snapshot.workers,
            locks: &snapshot.locks,
            pools: &snapshot.pools,
            events: snapshot.events[newest..]
                .iter()
                .map(DescribedEventView::from)
                .collect(),
        }
    }
}
