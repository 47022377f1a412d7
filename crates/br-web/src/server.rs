//! Running the router on a socket until SIGINT or SIGTERM, then stopping gracefully: live
//! streams end, requests in flight finish (within [`SHUTDOWN_GRACE`]), and nothing is left
//! running.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::api::router;
use crate::state::AppState;

/// How long requests in flight may take to finish once a stop is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A bound socket, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
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
        Ok(Server { listener, addr })
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
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let app = router(state.clone());
            let serving = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            });
            ready(self.addr);
            let stop = tokio::select! {
                _ = interrupt.recv() => Stop::Interrupted,
                _ = terminate.recv() => Stop::Terminated,
            };
            // Streams end first: a graceful shutdown waits for every open response.
            state.shutdown();
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
                Ok(Ok(result)) => result?,
                Ok(Err(join)) => return Err(io::Error::other(join)),
                // Someone's request did not finish in time: stop anyway.
                Err(_elapsed) => {}
            }
            Ok::<Stop, io::Error>(stop)
        })?;
        // A store call still running on the blocking pool is not waited for.
        runtime.shutdown_timeout(Duration::from_millis(200));
        Ok(stop)
    }
}
