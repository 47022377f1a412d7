//! Running the router on a socket until SIGINT or SIGTERM, then stopping gracefully: live
//! streams end, requests in flight finish (within [`SHUTDOWN_GRACE`]), and nothing is left
//! running.
//!
//! Every connection is dropped when its writes make no progress for [`WRITE_STALL`]: a client
//! that stops reading (a stream left open in a suspended laptop, or a hostile one) would
//! otherwise hold its connection, its buffers and its place among the streams for ever.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Sleep;

use crate::api::router;
use crate::state::AppState;

/// How long requests in flight may take to finish once a stop is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A connection whose writes make no progress this long is dropped: long enough for a slow
/// link or a busy browser, short enough that a client that stopped reading does not keep its
/// buffers and its place among the streams.
pub const WRITE_STALL: Duration = Duration::from_secs(20);

/// A bound socket, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    write_stall: Duration,
}

/// Why the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
}

impl Server {
    /// Binds `addr` now, so that a bad address or a port in use is reported before anything
    /// else happens. Port 0 lets the OS choose; [`Server::local_addr`] tells which.
    pub fn bind(addr: SocketAddr) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            write_stall: WRITE_STALL,
        })
    }

    /// Drops a connection whose writes make no progress for `stall` instead of
    /// [`WRITE_STALL`].
    #[must_use]
    pub fn with_write_stall(mut self, stall: Duration) -> Server {
        self.write_stall = stall;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT or SIGTERM. `ready` is called once the signals are handled and
    /// requests are accepted (the listener is already bound), so a caller may announce the
    /// address then and a signal sent after that stops the server cleanly.
    pub fn run(self, state: AppState, ready: impl FnOnce(SocketAddr)) -> io::Result<Stop> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("br-web")
            .enable_all()
            .build()?;
        let stop = runtime.block_on(async move {
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut terminate = signal(SignalKind::terminate())?;
            let addr = self.addr;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
            let serving = tokio::spawn(self.serve(state, async move {
                stop_rx.await.unwrap_or(Stop::Terminated)
            }));
            ready(addr);
            let stop = tokio::select! {
                _ = interrupt.recv() => Stop::Interrupted,
                _ = terminate.recv() => Stop::Terminated,
            };
            let _ = stop_tx.send(stop);
            match serving.await {
                Ok(result) => result,
                Err(join) => Err(io::Error::other(join)),
            }
        })?;
        // A store call still running on the blocking pool is not waited for.
        runtime.shutdown_timeout(Duration::from_millis(200));
        Ok(stop)
    }

    /// Serves on the current tokio runtime until `stop` completes, then stops gracefully
    /// (streams end first; requests in flight get [`SHUTDOWN_GRACE`]) and returns what `stop`
    /// gave. [`Server::run`] is this with a runtime of its own and the signals as `stop`.
    pub async fn serve<T>(
        self,
        state: AppState,
        stop: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T>
    where
        T: Send + 'static,
    {
        let listener = StallListener {
            inner: tokio::net::TcpListener::from_std(self.listener)?,
            stall: self.write_stall,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        let serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        let stopped = stop.await;
        // Streams end first: a graceful shutdown waits for every open response.
        state.shutdown();
        let _ = stop_tx.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => return Err(io::Error::other(join)),
            // Someone's request did not finish in time: stop anyway.
            Err(_elapsed) => {}
        }
        Ok(stopped)
    }
}

/// The listener whose connections are [`StallGuard`]s.
struct StallListener {
    inner: tokio::net::TcpListener,
    stall: Duration,
}

impl axum::serve::Listener for StallListener {
    type Io = StallGuard<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (StallGuard::new(io, self.stall), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection whose writes fail (`TimedOut`) once they have made no progress for `stall`;
/// the server then drops it. Reads are untouched: an idle client that reads everything is
/// welcome to stay.
pub(crate) struct StallGuard<T> {
    inner: T,
    stall: Duration,
    /// Armed when a write could not proceed, disarmed by any write that does.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    pub(crate) fn new(inner: T, stall: Duration) -> StallGuard<T> {
        StallGuard {
            inner,
            stall,
            deadline: None,
        }
    }

    /// Passes a write's result on, unless it has been pending for longer than `stall`.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.deadline = None;
            return result;
        }
        let stall = self.stall;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        // Polled so that its waker wakes this connection when the time is up.
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {stall:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_takes_nothing_of_fails_after_the_stall() {
        let (near, _far) = tokio::io::duplex(64);
        let mut guard = StallGuard::new(near, Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        let error = guard
            .write_all(&[0; 4096])
            .await
            .expect_err("the peer never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_slow_reader_keeps_its_connection() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut guard = StallGuard::new(near, Duration::from_millis(200));
        // Reads 64 bytes every 20 ms: far slower than the writer, never stalled for 200 ms.
        let reader = tokio::spawn(async move {
            let mut buf = [0; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                total += far.read(&mut buf).await.expect("read");
            }
            total
        });
        guard
            .write_all(&[0; 4096])
            .await
            .expect("progress all along");
        assert_eq!(reader.await.expect("reader"), 4096);
    }
}
