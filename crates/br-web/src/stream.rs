//! `GET /api/stream[?session=S&offset=N&limit=M]`: server-sent events. An `event: snapshot` on
//! connect and after each change, at most every [`MIN_SEND_GAP`]; keep-alive comments in
//! between; an `event: store_error` when the store could not be read.
//!
//! What a client costs is bounded, however large the session and however slow the client:
//! - a message is the snapshot with one page of the selected session's tasks (`page.rs`);
//! - a message is made only when the client is ready for the next one, from the newest snapshot:
//!   a slow client skips what it had no time for and is resynced by the next message, so its
//!   queue is the one message being written (and the server drops a connection whose writes
//!   make no progress for a while: `server.rs`);
//! - every stream of one session shares one published snapshot (`state.rs`);
//! - at most [`MAX_STREAMS`](crate::MAX_STREAMS) streams are live; one more is a 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::page::{SnapshotPage, TaskPage};
use crate::state::{AppState, Published};

/// A client gets at most one snapshot this often, however busy the store.
pub const MIN_SEND_GAP: Duration = Duration::from_millis(250);

/// A comment this often keeps proxies and browsers from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How long a client refused for too many streams is asked to wait.
const RETRY_AFTER_SECONDS: &str = "5";

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    /// The session whose tasks to include — id, unique id prefix or name.
    session: Option<String>,
    /// The page of its tasks (not flattened from `TaskPage`: flattening loses the numbers'
    /// types in a query string).
    offset: Option<usize>,
    limit: Option<usize>,
}

pub(crate) async fn stream(
    State(state): State<AppState>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let page = TaskPage::new(q.offset, q.limit)?;
    let Some(permit) = state.admit_stream() else {
        let mut refused = ApiError::Unavailable(format!(
            "this server already keeps {} live streams; try again later",
            state.max_streams()
        ))
        .into_response();
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
        return Ok(refused);
    };
    let mut snapshots = match q.session {
        Some(reference) => {
            let id = state
                .blocking(move |store| Ok(store.resolve_session(&reference)?.id))
                .await?;
            state.follow(&id)
        }
        None => state.snapshots.clone(),
    };
    // The current one is sent at once; only later ones count as changes.
    snapshots.mark_changed();
    let feed = Feed {
        snapshots,
        stopping: state.stopping.clone(),
        page,
        last_sent: None,
        pending: Vec::new(),
        _permit: permit,
    };
    let events = stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// One client's position in the stream of snapshots.
struct Feed {
    snapshots: watch::Receiver<Arc<Published>>,
    stopping: watch::Receiver<bool>,
    page: TaskPage,
    last_sent: Option<Instant>,
    /// Events decided but not sent yet (an error and a snapshot may come together).
    pending: Vec<Event>,
    /// Its place among the live streams, given back when the client goes.
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    /// The next event to send; `None` ends the stream (the server is stopping). It is asked
    /// for only when the previous one has been handed to the connection.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop() {
                return Some(event);
            }
            if *self.stopping.borrow() {
                return None;
            }
            tokio::select! {
                changed = self.snapshots.changed() => changed.ok()?,
                _ = self.stopping.wait_for(|stop| *stop) => return None,
            }
            if let Some(last) = self.last_sent {
                // Coalesce: whatever arrives meanwhile is folded into the latest.
                tokio::select! {
                    () = tokio::time::sleep_until(last + MIN_SEND_GAP) => {}
                    _ = self.stopping.wait_for(|stop| *stop) => return None,
                }
            }
            let latest = Arc::clone(&self.snapshots.borrow_and_update());
            let Some(snapshot) = &latest.snapshot else {
                // The session has not been read yet: its first snapshot is a change too.
                continue;
            };
            let json = match serde_json::to_string(&SnapshotPage::of(snapshot, self.page)) {
                Ok(json) => json,
                Err(e) => {
                    let body = serde_json::json!({ "error": e.to_string() }).to_string();
                    return Some(Event::default().event("store_error").data(body));
                }
            };
            self.last_sent = Some(Instant::now());
            // Popped from the back: the snapshot goes first, then the error.
            if let Some(error) = &latest.error {
                let body = serde_json::json!({ "error": error }).to_string();
                self.pending
                    .push(Event::default().event("store_error").data(body));
            }
            self.pending
                .push(Event::default().event("snapshot").data(json));
        }
    }
}
