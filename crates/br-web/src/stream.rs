//! `GET /api/stream`: server-sent events. An `event: snapshot` carrying the whole snapshot JSON
//! on connect and after each change, at most every [`MIN_SEND_GAP`]; keep-alive comments in
//! between; an `event: store_error` when the store could not be read.
//!
//! Without `?session=` every client shares the published snapshot (serialised once). With it,
//! the stream keeps its own [`SnapshotBuilder`] for that session and refreshes it, off the
//! runtime, whenever the shared one changes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use br_core::SessionId;
use br_store::snapshot::{Snapshot, SnapshotBuilder};
use futures_util::stream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::query::SessionQuery;
use crate::state::{AppState, Published};

/// A client gets at most one snapshot this often, however busy the store.
pub const MIN_SEND_GAP: Duration = Duration::from_millis(250);

/// A comment this often keeps proxies and browsers from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub(crate) async fn stream(
    State(state): State<AppState>,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let own = match q.session {
        Some(reference) => {
            let id = state
                .blocking(move |store| Ok(store.resolve_session(&reference)?.id))
                .await?;
            Some(Own {
                builder: SnapshotBuilder::new(Some(id.clone())),
                snapshot: None,
                id,
            })
        }
        None => None,
    };
    let mut snapshots = state.snapshots.clone();
    // The current one is sent at once; only later ones count as changes.
    snapshots.mark_changed();
    let feed = Feed {
        state: state.clone(),
        snapshots,
        stopping: state.stopping.clone(),
        own,
        last_sent: None,
        pending: Vec::new(),
    };
    let events = stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A stream's own snapshot of one session.
struct Own {
    id: SessionId,
    builder: SnapshotBuilder,
    snapshot: Option<Snapshot>,
}

/// One client's position in the stream of snapshots.
struct Feed {
    state: AppState,
    snapshots: watch::Receiver<Arc<Published>>,
    stopping: watch::Receiver<bool>,
    own: Option<Own>,
    last_sent: Option<Instant>,
    /// Events decided but not sent yet (an error and a snapshot may come together).
    pending: Vec<Event>,
}

impl Feed {
    /// The next event to send; `None` ends the stream (the server is stopping).
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
            self.last_sent = Some(Instant::now());
            let (json, error) = match &mut self.own {
                None => (Some(Arc::clone(&latest.json)), latest.error.clone()),
                Some(own) if latest.selected.as_ref() == Some(&own.id) => {
                    // The shared snapshot already shows this session.
                    (Some(Arc::clone(&latest.json)), latest.error.clone())
                }
                Some(_) => match self.refresh_own().await {
                    Ok(json) => (Some(json), None),
                    Err(e) => (None, Some(e.message())),
                },
            };
            // Popped from the back: the snapshot goes first, then the error.
            if let Some(error) = error {
                let body = serde_json::json!({ "error": error }).to_string();
                self.pending
                    .push(Event::default().event("store_error").data(body));
            }
            if let Some(json) = json {
                self.pending
                    .push(Event::default().event("snapshot").data(&*json));
            }
        }
    }

    /// Brings this stream's own snapshot up to date, on the blocking pool.
    async fn refresh_own(&mut self) -> Result<Arc<str>, ApiError> {
        let Some(mut own) = self.own.take() else {
            return Err(ApiError::Internal("no session of its own".into()));
        };
        let (own, result) = self
            .state
            .blocking(move |store| {
                let mut snapshot = own
                    .snapshot
                    .take()
                    .unwrap_or_else(|| Snapshot::empty(br_core::Timestamp(0)));
                let result = own
                    .builder
                    .refresh(store, &mut snapshot)
                    .map_err(ApiError::from)
                    .and_then(|()| {
                        serde_json::to_string(&snapshot)
                            .map(Arc::from)
                            .map_err(|e| ApiError::Internal(e.to_string()))
                    });
                own.snapshot = Some(snapshot);
                Ok((own, result))
            })
            .await?;
        self.own = Some(own);
        result
    }
}
