//! One connection to the server and the runtime that drives it. Every round trip is bounded by a
//! deadline: a server that stops answering, or a network that swallows every packet without
//! closing anything, becomes an error the caller can act on (connect again, tell the user), not a
//! thread blocked for the kernel's TCP timeout — minutes, or forever when something in between
//! keeps acknowledging the bytes. A connection that timed out is never used again, and dropping
//! it never waits for the server.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::runtime::Runtime;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification, Socket};

/// Why a round trip on a [`Link`] failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    /// No answer within the deadline: the server or the network is gone as far as this
    /// connection can tell.
    #[error("the server did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("cannot start the connection's runtime")]
    Runtime(#[source] std::io::Error),
}

impl LinkError {
    /// Whether the connection is unusable after this error.
    pub(super) fn lost(&self) -> bool {
        match self {
            LinkError::Pg(e) => super::connection_lost(e),
            LinkError::TimedOut(_) | LinkError::Closed | LinkError::Runtime(_) => true,
        }
    }
}

type Messages =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send + 'static>>;

/// The driving half of a connection: the runtime, the connection's message stream, and the
/// notifications it delivered.
pub(super) struct Link {
    runtime: Runtime,
    messages: Messages,
    notifications: VecDeque<Notification>,
    /// The longest a round trip may take.
    io_timeout: Duration,
    /// The connection ended, or a round trip timed out.
    broken: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("io_timeout", &self.io_timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// `connecting`, given up after `limit`.
async fn limited<T>(
    limit: Duration,
    connecting: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(limit, connecting).await {
        Ok(connected) => connected.map_err(LinkError::Pg),
        Err(_) => Err(LinkError::TimedOut(limit)),
    }
}

/// The connection's messages as a stream, as `poll_message` yields them.
struct MessageStream<T>(tokio_postgres::Connection<Socket, T>);

impl<T> Stream for MessageStream<T>
where
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    type Item = Result<AsyncMessage, tokio_postgres::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_message(cx)
    }
}

impl Link {
    /// Connects, bounded by `connect_limit` for the whole start-up (TCP, TLS, authentication):
    /// a server behind a cut network may accept the TCP connection and then say nothing.
    pub(super) fn connect(
        config: &Config,
        tls: &super::tls::Tls,
        connect_limit: Duration,
        io_timeout: Duration,
    ) -> Result<(Link, Client), LinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LinkError::Runtime)?;
        let (client, messages): (Client, Messages) = match tls {
            super::tls::Tls::None => {
                let (client, connection) =
                    runtime.block_on(limited(connect_limit, config.connect(NoTls)))?;
                (client, Box::pin(MessageStream::<NoTlsStream>(connection)))
            }
            super::tls::Tls::Rustls(make) => {
                let (client, connection) =
                    runtime.block_on(limited(connect_limit, config.connect(make.clone())))?;
                (client, Box::pin(MessageStream(connection)))
            }
        };
        let link = Link {
            runtime,
            messages,
            notifications: VecDeque::new(),
            io_timeout,
            broken: false,
        };
        Ok((link, client))
    }

    pub(super) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Runs one round trip (`future`, which talks through this link's client) to its end,
    /// driving the connection meanwhile, for at most the I/O timeout.
    pub(super) fn run<T>(
        &mut self,
        future: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, LinkError> {
        let mut future = pin!(future);
        let limit = self.io_timeout;
        let out = self.drive(limit, |cx, _| future.as_mut().poll(cx).map(Some));
        match out {
            Ok(Some(Ok(value))) => Ok(value),
            Ok(Some(Err(e))) => {
                if super::connection_lost(&e) {
                    self.broken = true;
                }
                Err(LinkError::Pg(e))
            }
            Ok(None) => {
                self.broken = true;
                Err(LinkError::TimedOut(limit))
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Waits up to `limit` for a notification; returns those that arrived (none after
    /// `limit`). An error means the connection ended.
    pub(super) fn notifications(
        &mut self,
        limit: Duration,
    ) -> Result<Vec<Notification>, LinkError> {
        let got = self.drive(limit, |_, queued| {
            if queued.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(Some(()))
            }
        });
        match got {
            Ok(_) => Ok(self.notifications.drain(..).collect()),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Polls `step` while driving the connection, until it is ready or `limit` passes
    /// (`Ok(None)`). An error of the connection itself ends the wait.
    fn drive<T>(
        &mut self,
        limit: Duration,
        mut step: impl FnMut(&mut Context<'_>, &VecDeque<Notification>) -> Poll<Option<T>>,
    ) -> Result<Option<T>, LinkError> {
        if self.broken {
            return Err(LinkError::Closed);
        }
        let Link {
            runtime,
            messages,
            notifications,
            ..
        } = self;
        runtime.block_on(async {
            let mut deadline = pin!(tokio::time::sleep(limit));
            let mut ended = false;
            std::future::poll_fn(|cx| {
                // The connection makes progress only while it is polled: read what the server
                // sent (answers reach the client's futures; notifications queue here).
                while !ended {
                    match messages.as_mut().poll_next(cx) {
                        Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                            notifications.push_back(n);
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(LinkError::Pg(e))),
                        Poll::Ready(None) => ended = true,
                        Poll::Pending => break,
                    }
                }
                if let Poll::Ready(Some(out)) = step(cx, notifications) {
                    return Poll::Ready(Ok(Some(out)));
                }
                if ended {
                    // Nothing more will come, and the client's futures may not learn it while
                    // the connection object lives.
                    return Poll::Ready(Err(LinkError::Closed));
                }
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Ok(None)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        })
    }
}
