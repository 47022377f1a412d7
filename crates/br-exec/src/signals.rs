//! Signals as requests: a Ctrl-C (SIGINT), SIGTERM or SIGHUP becomes a counted interrupt that the
//! run lifecycle acts on between steps — pause and stop on the first, kill on the second — or a
//! stop flag a worker or a verify command watches. Nothing here kills anything by itself.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// The signals that ask br to stop.
const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// How many times this process was asked to stop: by a signal, or by a caller (the terminal
/// dashboard, which owns Ctrl-C while it runs, passes its key on). Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    count: Arc<AtomicUsize>,
}

impl Interrupts {
    pub fn new() -> Interrupts {
        Interrupts::default()
    }

    /// One more request to stop.
    pub fn request(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn any(&self) -> bool {
        self.count() > 0
    }

    /// Counts SIGINT, SIGTERM and SIGHUP as requests for as long as the guard lives; while it
    /// does, they no longer end the process.
    pub fn on_signals(&self) -> std::io::Result<SignalGuard> {
        let mut signals = Signals::new(STOP_SIGNALS)?;
        let handle = signals.handle();
        let count = Arc::clone(&self.count);
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })?;
        Ok(SignalGuard {
            handle,
            thread: Some(thread),
        })
    }
}

/// Keeps signals counted as interrupts; dropping it restores their default effect.
#[derive(Debug)]
pub struct SignalGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A stop request a worker loop watches: set by a signal or when the parent goes away.
pub type StopFlag = Arc<AtomicBool>;

/// Sets `stop` on SIGINT, SIGTERM or SIGHUP, for the rest of the process's life.
pub fn stop_on_signals(stop: &StopFlag) -> std::io::Result<()> {
    for signal in STOP_SIGNALS {
        signal_hook::flag::register(signal, Arc::clone(stop))?;
    }
    Ok(())
}

/// Sets `stop` when standard input closes: a worker whose parent (`br run`) holds the other end
/// of the pipe stops when that parent dies, however it dies.
pub fn stop_when_stdin_closes(stop: &StopFlag) -> std::io::Result<()> {
    let stop = Arc::clone(stop);
    std::thread::Builder::new()
        .name("watch-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            stop.store(true, Ordering::SeqCst);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_shared_by_clones() {
        let interrupts = Interrupts::new();
        let seen_elsewhere = interrupts.clone();
        assert!(!seen_elsewhere.any());
        interrupts.request();
        interrupts.request();
        assert_eq!(seen_elsewhere.count(), 2);
    }
}
