//! [`serve`]: the accept loop.

use crate::{meta::Accepted, meta::Direction, ratelimit::RateLimited};
use l7inspect_detect::Conn;
use pin_project::pin_project;
use std::{
    future::Future,
    io,
    net::SocketAddr,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll, Waker, ready},
    time::Duration,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::task::TaskTracker;
use tower::{BoxError, Service, ServiceExt, util::Oneshot};
use tracing::Instrument;

/// The listen backlog of [`bind`]: bursts of connects queue here while the
/// accept loop catches up (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (a restarted proxy can
/// rebind while old connections linger in TIME_WAIT) and a backlog of
/// [`LISTEN_BACKLOG`].
///
/// An IPv6 address is bound IPv6-only (`IPV6_V6ONLY`, as nginx does): `[::]`
/// and `0.0.0.0` on the same port are two listeners, and IPv4 connections
/// never arrive as v4-mapped addresses, whose original destination would
/// have to be read with the IPv4 socket option.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            socket2::SockRef::from(&socket).set_only_v6(true)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` until `shutdown` completes, serving each
/// on a task of `tracker` (so the caller can wait for them to drain).
///
/// Accepted sockets get `TCP_NODELAY`. A failed accept is retried: at once
/// for errors of one connection (aborted), after 50 ms for exhausted
/// resources (too many open files), with a rate-limited warning.
///
/// A plain function, not a service: it accepts connections until `shutdown`
/// completes and hands each one, as a [`Conn`] of [`Accepted`] metadata and
/// its TCP stream, to a fresh clone of a connection service on its own task.
///
/// A service that panics while it is made ready or called (which happens
/// here, on the accept loop's task) loses that connection only: it is
/// dropped and the loop goes on. A panic of a connection's task ends that
/// task; put a [`CatchPanicLayer`](crate::CatchPanicLayer) outermost in the
/// stack to count such panics and end the connection cleanly.
pub async fn serve<S>(
    listener: TcpListener,
    direction: Direction,
    service: S,
    tracker: TaskTracker,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Conn<Accepted, TcpStream>, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(%direction, "listener has no local address: {e}");
            return;
        }
    };
    let log = RateLimited::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        log.warn(|suppressed| tracing::warn!(%local, suppressed, "accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // The accepted socket's own local address: the original one when
        // the listener is bound to a wildcard address.
        let local = stream.local_addr().unwrap_or(local);
        let conn = Conn {
            meta: Accepted {
                client,
                local,
                direction,
            },
            io: stream,
        };
        let span = tracing::debug_span!("conn", %direction, %client);
        // A panic of the service here, on the accept loop's task, would end
        // the listener: it ends this connection only (the panic hook has
        // reported it). Panics of the connection's task end that task
        // (tokio), or are counted by a `CatchPanicLayer` in the stack.
        let fut = match catch_unwind(AssertUnwindSafe(|| start(service.clone(), conn))) {
            Ok(Ok(fut)) => fut,
            Ok(Err(e)) => {
                tracing::debug!(parent: &span, "connection ended: {e}");
                continue;
            }
            Err(_) => {
                tracing::debug!(parent: &span, "connection ended: the service panicked");
                continue;
            }
        };
        tracker.spawn(LogError::new(fut).instrument(span));
    }
    tracing::debug!(%local, %direction, "stopped accepting");
}

/// Starts serving `conn` on `svc`. A service that is ready at once (ours
/// always are) is called here, so that the task, which lives as long as the
/// connection, holds only its future and not also room for a clone of the
/// whole service stack. One that is not ready waits on the task, boxed.
#[allow(clippy::type_complexity)]
fn start<S, R>(mut svc: S, conn: R) -> Result<Started<S::Future, Pin<Box<Oneshot<S, R>>>>, BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => Ok(Started::Called(svc.call(conn))),
        Poll::Ready(Err(e)) => Err(e.into()),
        Poll::Pending => Ok(Started::Waiting(Box::pin(svc.oneshot(conn)))),
    }
}

/// A connection's future, logging how it failed. A named future rather than
/// an async block, which would hold the service and the connection twice
/// (captured, and again inside the `Oneshot` it awaits) in a task that lives
/// as long as the connection.
#[pin_project]
struct LogError<F> {
    #[pin]
    inner: F,
}

/// A connection's future: the service's, or, when the service was not ready
/// at accept, the wait for it and then its future (boxed: the rare case).
#[pin_project(project = StartedProj)]
enum Started<F, W> {
    Called(#[pin] F),
    Waiting(#[pin] W),
}

impl<F, W> Future for Started<F, W>
where
    F: Future,
    W: Future<Output = F::Output>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            StartedProj::Called(f) => f.poll(cx),
            StartedProj::Waiting(w) => w.poll(cx),
        }
    }
}

impl<F> LogError<F> {
    fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F, E> Future for LogError<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Err(e) = ready!(self.project().inner.poll(cx)) {
            tracing::debug!("connection ended: {}", e.into());
        }
        Poll::Ready(())
    }
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
