//! What every handler shares: the store, and the latest [`Snapshot`] that one background thread
//! keeps up to date and publishes (serialised once) on a watch channel.
//!
//! The [`Store`] is synchronous and each call may block, so nothing here calls it on the async
//! runtime: the publisher is a plain thread, and handlers go through [`AppState::blocking`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use br_core::SessionId;
use br_store::snapshot::{Snapshot, SnapshotBuilder};
use br_store::{Store, StoreError};
use tokio::sync::watch;

use crate::access::Access;
use crate::error::ApiError;

/// However busy the store, the shared snapshot is rebuilt at most this often.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(250);

/// How long one wait for a store change lasts: short, so a stop or a user action is noticed
/// quickly.
const TICK: Duration = Duration::from_millis(100);

/// One published picture of the store.
#[derive(Debug)]
pub struct Published {
    /// The snapshot as JSON: serialised once, sent to every client.
    pub json: Arc<str>,
    /// The session whose tasks it includes.
    pub selected: Option<SessionId>,
    /// The newest event it reflects.
    pub last_seq: i64,
    /// Why the last refresh failed, when it did (the snapshot is then the last good one).
    pub error: Option<String>,
}

impl Published {
    fn of(snapshot: &Snapshot) -> Result<Published, serde_json::Error> {
        Ok(Published {
            json: serde_json::to_string(snapshot)?.into(),
            selected: snapshot.selected.as_ref().map(|s| s.id.clone()),
            last_seq: snapshot.last_seq,
            error: None,
        })
    }
}

/// The state behind the router. Cheap to clone; the publisher thread stops when the last clone
/// is dropped or [`AppState::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) snapshots: watch::Receiver<Arc<Published>>,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) access: Arc<Access>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Asks the publisher to refresh now (after a user action).
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
    /// Builds the first snapshot (blocking: call it outside the async runtime, or before it
    /// starts) and starts the thread that refreshes it when the store changes, or at least
    /// every `refresh`.
    pub fn new(
        store: Arc<dyn Store>,
        refresh: Duration,
        access: Access,
    ) -> Result<AppState, StoreError> {
        let mut builder = SnapshotBuilder::new(None);
        let mut snapshot = Snapshot::empty(store.now()?);
        builder.refresh(&*store, &mut snapshot)?;
        let first = Published::of(&snapshot).map_err(|e| StoreError::Backend {
            context: "serialise the snapshot",
            source: Box::new(e),
        })?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let kick = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = Publisher {
            store: Arc::clone(&store),
            builder,
            published: snapshot.clone(),
            snapshot,
            refresh,
            kick: Arc::clone(&kick),
            stop: Arc::clone(&stop),
            tx,
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
            snapshots: rx,
            stopping: stopping_rx,
            access: Arc::new(access),
            shared: Arc::new(Shared {
                kick,
                stop,
                stopping: stopping_tx,
            }),
        })
    }

    /// The latest published snapshot.
    pub fn latest(&self) -> Arc<Published> {
        Arc::clone(&self.snapshots.borrow())
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

/// The one thread that owns the shared [`SnapshotBuilder`].
struct Publisher {
    store: Arc<dyn Store>,
    builder: SnapshotBuilder,
    snapshot: Snapshot,
    /// The snapshot last published, to tell whether a refresh changed anything.
    published: Snapshot,
    refresh: Duration,
    kick: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tx: watch::Sender<Arc<Published>>,
}

impl Publisher {
    fn run(mut self) {
        let mut last_refresh = Instant::now();
        let mut seen_seq = self.snapshot.last_seq;
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
            let published = match self.builder.refresh(&*self.store, &mut self.snapshot) {
                Ok(())
                    if self.tx.borrow().error.is_none()
                        && same_apart_from_time(&self.published, &self.snapshot) =>
                {
                    // Only the clock moved: nothing a client would show differently.
                    continue;
                }
                Ok(()) => {
                    self.published = self.snapshot.clone();
                    Published::of(&self.snapshot).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let published = match published {
                Ok(p) => p,
                Err(error) => {
                    // Keep showing the last good snapshot, and say why it is not newer.
                    let last = self.tx.borrow().clone();
                    Published {
                        json: Arc::clone(&last.json),
                        selected: last.selected.clone(),
                        last_seq: last.last_seq,
                        error: Some(error),
                    }
                }
            };
            seen_seq = published.last_seq;
            if self.tx.send(Arc::new(published)).is_err() {
                // Nobody is listening any more.
                return;
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
