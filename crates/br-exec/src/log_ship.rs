//! Shipping an attempt's output to the store while it runs: the process writes its log file on
//! this machine (`process.rs`), and the shipper copies what is new in the file to the store,
//! piece by piece, so any machine that reaches the store can read and follow the log.
//!
//! The lease's renewing thread ships a little after each renewal (never so much that the next
//! renewal waits), and the worker ships the rest once the process has ended, before it records
//! the outcome: whoever sees an attempt finished finds its whole log stored.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use br_store::{Lease, Store, StoreError};

/// The most one store write carries: large enough that a chatty task costs few writes, small
/// enough that one write never holds the store for long.
const PIECE: usize = 256 * 1024;

/// How many pieces the renewing thread ships per renewal: a task that writes faster than this
/// catches up when it ends, and a renewal is never late because of its log.
pub(crate) const PIECES_PER_RENEWAL: usize = 8;

/// Where one attempt's log is shipped from, and how much of it the store has.
#[derive(Debug)]
pub(crate) struct LogShipper {
    lease: Lease,
    path: PathBuf,
    shipped: u64,
    /// Why the log file could not be read, once it could not (shipping stops; the file stays).
    unreadable: Option<String>,
}

/// A shipper both the renewing thread and the worker use.
pub(crate) type SharedShipper = Arc<Mutex<LogShipper>>;

/// What one call shipped, or why it stopped.
#[derive(Debug)]
pub(crate) enum Shipped {
    /// Everything written so far is stored (or as many pieces as were asked for).
    Done,
    /// The store refused or could not be reached; the next call tries again from here.
    Store(StoreError),
}

impl LogShipper {
    pub(crate) fn shared(lease: &Lease, path: PathBuf) -> SharedShipper {
        Arc::new(Mutex::new(LogShipper {
            lease: lease.clone(),
            path,
            shipped: 0,
            unreadable: None,
        }))
    }

    /// The shipper, whoever panicked while holding it: its state is an offset and a path,
    /// nothing half-done.
    pub(crate) fn lock(shared: &SharedShipper) -> MutexGuard<'_, LogShipper> {
        shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the log could not be read, if it could not.
    pub(crate) fn unreadable(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }

    /// Ships what the file holds beyond what the store has, at most `max_pieces` pieces (`None`:
    /// all of it).
    pub(crate) fn ship(&mut self, store: &dyn Store, max_pieces: Option<usize>) -> Shipped {
        if self.unreadable.is_some() {
            return Shipped::Done;
        }
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            // The log is made on the first byte of output: no file, nothing to ship yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Shipped::Done,
            Err(e) => return self.cannot_read(&e),
        };
        if let Err(e) = file.seek(SeekFrom::Start(self.shipped)) {
            return self.cannot_read(&e);
        }
        let mut buf = vec![0u8; PIECE];
        let mut pieces = 0;
        while max_pieces.is_none_or(|max| pieces < max) {
            let n = match read_piece(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return self.cannot_read(&e),
            };
            if let Err(e) = store.append_log(&self.lease, self.shipped, &buf[..n]) {
                return Shipped::Store(e);
            }
            self.shipped += n as u64;
            pieces += 1;
        }
        Shipped::Done
    }

    fn cannot_read(&mut self, e: &std::io::Error) -> Shipped {
        self.unreadable = Some(format!("cannot read {}: {e}", self.path.display()));
        Shipped::Done
    }
}

/// Fills `buf` as far as the file goes now (a short read is not the end of a growing file).
fn read_piece(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
