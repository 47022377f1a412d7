//! What every handler shares: the store, and the latest [`Snapshot`]s that one background thread
//! keeps up to date and publishes on watch channels — the default one (the first listed session
//! selected), and one per session that a live stream follows.
//!
//! The [`Store`] is synchronous and each call may block, so nothing here calls it on the async
//! runtime: the publisher is a plain thread, and handlers go through [`AppState::blocking`].
//!
//! What this costs does not grow with the clients: a session followed by any number of streams
//! has one builder and one published snapshot, and what a stream sends is cut from it (see
//! `page.rs`), never queued per client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use br_core::{SessionId, TaskId};
use br_store::snapshot::{Snapshot, SnapshotBuilder};
use br_store::{Session, Store, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::access::Access;
use crate::error::ApiError;

/// However busy the store, a snapshot is rebuilt at most this often.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(250);

/// How many live streams the server keeps at once, by default; one more is refused (503).
/// Each holds a connection and its buffers, and a session's builder while anyone follows it.
pub const MAX_STREAMS: usize = 64;

/// How long one wait for a store change lasts: short, so a stop or a user action is noticed
/// quickly.
const TICK: Duration = Duration::from_millis(100);

/// One published picture of the store.
#[derive(Debug)]
pub struct Published {
    /// The snapshot; `None` for a session's view that has not been read yet.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Why the last refresh failed, when it did (the snapshot is then the last good one).
    pub error: Option<String>,
}

impl Published {
    fn of(snapshot: Arc<Snapshot>) -> Published {
        Published {
            snapshot: Some(snapshot),
            error: None,
        }
    }

    /// The session whose tasks it includes.
    pub fn selected(&self) -> Option<&SessionId> {
        Some(&self.snapshot.as_ref()?.selected.as_ref()?.id)
    }
}

/// The channels of the sessions that streams follow, shared by the handlers (which subscribe)
/// and the publisher (which feeds them, and forgets those nobody follows any more).
type Followed = Arc<Mutex<HashMap<SessionId, watch::Sender<Arc<Published>>>>>;

/// The state behind the router. Cheap to clone; the publisher thread stops when the last clone
/// is dropped or [`AppState::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) store: Arc<dyn Store>,
    /// How an attempt's diff is made (git is the CLI's to run, not this crate's); none when the
    /// server runs outside a repository.
    pub(crate) differ: Option<DifferHandle>,
    pub(crate) snapshots: watch::Receiver<Arc<Published>>,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) access: Arc<Access>,
    followed: Followed,
    streams: Arc<Semaphore>,
    max_streams: usize,
    shared: Arc<Shared>,
}

/// Makes the unified diff of an attempt of a task (`None`: the landed one, else the latest).
pub type Differ = dyn Fn(&dyn Store, &Session, &TaskId, Option<u32>) -> Result<Vec<u8>, DiffFailure>
    + Send
    + Sync;

/// The differ the state holds (a closure has no `Debug` of its own).
#[derive(Clone)]
pub(crate) struct DifferHandle(pub(crate) Arc<Differ>);

impl std::fmt::Debug for DifferHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Differ")
    }
}

/// Why a diff could not be made.
#[derive(Debug)]
pub enum DiffFailure {
    /// No such attempt, or it kept no commit (404).
    Missing(String),
    Store(StoreError),
    /// Git could not show it (500).
    Failed(String),
}

#[derive(Debug)]
struct Shared {
    /// Asks the publisher to refresh now (after a user action, or for a newly followed session).
    kick: Arc<AtomicBool>,
    /// Tells the publisher thread to end.
    stop: Arc<AtomicBool>,
    /// Tells the streams to end, so a graceful shutdown does not wait for them.
    stopping: watch::Sender<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stopping.send(true);
    }
}

impl AppState {
    /// The same state, serving `GET …/tasks/T/diff` with `differ`.
    #[must_use]
    pub fn with_differ(mut self, differ: Arc<Differ>) -> AppState {
        self.differ = Some(DifferHandle(differ));
        self
    }

    /// Builds the first snapshot (blocking: call it outside the async runtime, or before it
    /// starts) and starts the thread that refreshes it when the store changes, or at least
    /// every `refresh`.
    pub fn new(
        store: Arc<dyn Store>,
        refresh: Duration,
        access: Access,
    ) -> Result<AppState, StoreError> {
        AppState::with_publisher_store(Arc::clone(&store), store, refresh, access)
    }

    /// As [`AppState::new`], with a store handle of its own for the thread that builds the
    /// snapshots: a handle is one connection, and a request (a run page's history, a task)
    /// then never waits behind the rebuild of a 20,000-task snapshot.
    pub fn with_publisher_store(
        store: Arc<dyn Store>,
        publisher_store: Arc<dyn Store>,
        refresh: Duration,
        access: Access,
    ) -> Result<AppState, StoreError> {
        let mut default = View::new(None);
        default
            .builder
            .refresh(&*publisher_store, &mut default.snapshot)?;
        let first = Arc::new(default.snapshot.clone());
        default.published = Some(Arc::clone(&first));
        let (tx, rx) = watch::channel(Arc::new(Published::of(first)));
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let kick = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let followed = Followed::default();
        let publisher = Publisher {
            store: publisher_store,
            default,
            tx,
            followed: Arc::clone(&followed),
            views: HashMap::new(),
            refresh,
            kick: Arc::clone(&kick),
            stop: Arc::clone(&stop),
        };
        std::thread::Builder::new()
            .name("br-web-snapshot".into())
            .spawn(move || publisher.run())
            .map_err(|e| StoreError::Backend {
                context: "start the snapshot thread",
                source: Box::new(e),
            })?;
        Ok(AppState {
            store,
            differ: None,
            snapshots: rx,
            stopping: stopping_rx,
            access: Arc::new(access),
            followed,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            max_streams: MAX_STREAMS,
            shared: Arc::new(Shared {
                kick,
                stop,
                stopping: stopping_tx,
            }),
        })
    }

    /// Keeps at most `max` live streams instead of [`MAX_STREAMS`].
    #[must_use]
    pub fn with_max_streams(mut self, max: usize) -> AppState {
        self.streams = Arc::new(Semaphore::new(max));
        self.max_streams = max;
        self
    }

    /// The latest published default snapshot.
    pub fn latest(&self) -> Arc<Published> {
        Arc::clone(&self.snapshots.borrow())
    }

    /// How many streams are live now.
    pub fn live_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// Ends every live stream, and tells the publisher thread to stop (it does within one
    /// tick; nothing waits for it).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.stopping.send(true);
    }

    /// Asks the publisher to refresh as soon as it may: something was just changed here.
    pub(crate) fn kick(&self) {
        self.shared.kick.store(true, Ordering::SeqCst);
    }

    /// A place among the live streams, or `None` when all are taken.
    pub(crate) fn admit_stream(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.streams).try_acquire_owned().ok()
    }

    pub(crate) fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// The snapshots of `session`, kept up to date while the receiver lives. The first may be
    /// a pending one (no snapshot yet) until the publisher has read the session.
    pub(crate) fn follow(&self, session: &SessionId) -> watch::Receiver<Arc<Published>> {
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = followed.entry(session.clone()).or_insert_with(|| {
            // The default snapshot may already show it; otherwise wait for the publisher.
            let latest = self.latest();
            let first = if latest.selected() == Some(session) {
                latest
            } else {
                Arc::new(Published {
                    snapshot: None,
                    error: None,
                })
            };
            watch::channel(first).0
        });
        let rx = tx.subscribe();
        drop(followed);
        self.kick();
        rx
    }

    /// Runs a store call on tokio's blocking pool, never on the async runtime.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| ApiError::Internal(format!("a store call did not finish: {e}")))?
    }
}

/// One snapshot the publisher keeps up to date: its builder, the working copy the builder
/// updates in place, and the copy last published (which readers share).
struct View {
    builder: SnapshotBuilder,
    snapshot: Snapshot,
    published: Option<Arc<Snapshot>>,
}

impl View {
    fn new(session: Option<SessionId>) -> View {
        View {
            builder: SnapshotBuilder::new(session),
            snapshot: Snapshot::empty(br_core::Timestamp(0)),
            published: None,
        }
    }

    /// Refreshes the snapshot; what to publish, if anything changed (or the refresh failed).
    fn refresh(&mut self, store: &dyn Store, failing: bool) -> Option<Published> {
        match self.builder.refresh(store, &mut self.snapshot) {
            Ok(())
                if !failing
                    && self
                        .published
                        .as_ref()
                        .is_some_and(|p| same_apart_from_time(p, &self.snapshot)) =>
            {
                // Only the clock moved: nothing a client would show differently.
                None
            }
            Ok(()) => {
                let published = Arc::new(self.snapshot.clone());
                self.published = Some(Arc::clone(&published));
                Some(Published::of(published))
            }
            // Keep showing the last good snapshot, and say why it is not newer.
            Err(e) => Some(Published {
                snapshot: self.published.clone(),
                error: Some(e.to_string()),
            }),
        }
    }
}

/// The one thread that owns the builders.
struct Publisher {
    store: Arc<dyn Store>,
    /// The default snapshot: the first listed session selected.
    default: View,
    tx: watch::Sender<Arc<Published>>,
    followed: Followed,
    /// A builder for each followed session that the default snapshot does not show.
    views: HashMap<SessionId, View>,
    refresh: Duration,
    kick: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Publisher {
    fn run(mut self) {
        let mut last_refresh = Instant::now();
        let mut seen_seq = self.default.snapshot.last_seq;
        while !self.stop.load(Ordering::SeqCst) {
            // Returns early when another process wrote to the store; heartbeats wake it too,
            // which is why a new event (one indexed read) decides whether to rebuild early.
            if self.store.wait_for_change(TICK).is_err() {
                // The store is unreachable for now: do not spin; the refresh below reports it.
                std::thread::sleep(TICK);
            }
            let since = last_refresh.elapsed();
            let early = since >= MIN_REFRESH_GAP
                && (self.kick.load(Ordering::SeqCst)
                    || self.store.last_seq().is_ok_and(|seq| seq != seen_seq));
            if !(early || since >= self.refresh) {
                continue;
            }
            self.kick.store(false, Ordering::SeqCst);
            last_refresh = Instant::now();
            let failing = self.tx.borrow().error.is_some();
            if let Some(published) = self.default.refresh(&*self.store, failing)
                && self.tx.send(Arc::new(published)).is_err()
            {
                // Nobody is listening any more.
                return;
            }
            seen_seq = self.default.snapshot.last_seq;
            self.refresh_followed();
        }
    }

    /// Feeds every followed session's channel, from the default snapshot when it shows that
    /// session, else from a builder of its own; forgets the sessions nobody follows any more.
    fn refresh_followed(&mut self) {
        let followed: Vec<(SessionId, watch::Sender<Arc<Published>>)> = {
            let mut map = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
            // Under the lock, so that a stream subscribing now finds its channel kept.
            map.retain(|_, tx| tx.receiver_count() > 0);
            map.iter()
                .map(|(id, tx)| (id.clone(), tx.clone()))
                .collect()
        };
        self.views
            .retain(|id, _| followed.iter().any(|(followed, _)| followed == id));
        let default = self.tx.borrow().clone();
        for (id, tx) in followed {
            if default.selected() == Some(&id) {
                // One builder for both: drop the session's own, and share the default's.
                self.views.remove(&id);
                tx.send_if_modified(|current| {
                    let same = Arc::ptr_eq(current, &default);
                    if !same {
                        *current = Arc::clone(&default);
                    }
                    !same
                });
                continue;
            }
            let view = self
                .views
                .entry(id.clone())
                .or_insert_with(|| View::new(Some(id)));
            let failing = tx.borrow().error.is_some();
            if let Some(published) = view.refresh(&*self.store, failing) {
                let _ = tx.send(Arc::new(published));
            }
        }
    }
}

/// Whether two snapshots differ in nothing but the time they were taken. Elapsed times count as
/// a difference: a running session's clock ticks on the page.
fn same_apart_from_time(a: &Snapshot, b: &Snapshot) -> bool {
    a.last_seq == b.last_seq
        && a.summary.workers == b.summary.workers
        && a.summary.sessions == b.summary.sessions
        && a.summary.tasks == b.summary.tasks
        && a.throughput == b.throughput
        && a.sessions == b.sessions
        && a.selected == b.selected
        && a.workers == b.workers
        && a.locks == b.locks
        && a.events == b.events
}
