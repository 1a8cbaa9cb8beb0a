//! [`CatchPanicLayer`]: a panic in a connection's service ends that
//! connection, is counted, and goes no further.

use crate::{
    meta::{Accepted, Direction},
    metrics::{DirectionLabels, Metrics},
};
use l7inspect_detect::Conn;
use pin_project::pin_project;
use prometheus_client::metrics::counter::Counter;
use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};
use tower::{BoxError, Layer, Service};

/// A [`Layer`] that wraps a connection service in [`CatchPanic`].
///
/// A bug that panics while a connection is served (in detection, the HTTP
/// server, a request's services, passthrough: anything the connection's
/// task polls) unwinds to here: the connection's future is dropped, which
/// closes the client's socket and the upstream one (the client sees its
/// connection close, or a reset if unread bytes were pending), the panic is
/// counted in `l7inspect_connection_panics_total{direction}`, and the
/// service's future ends with a [`Panicked`] error carrying the panic's
/// message. Every other connection, and the accept loop, go on.
///
/// What the panic printed is the process's panic hook's business: Rust's
/// default hook writes every panic to stderr; the sidecar installs one that
/// rate-limits them through its log. Tasks a connection spawns (upstream
/// connection drivers, HTTP/2 request bodies still being sent after the
/// response began, upgrade tunnels) are not under this layer: tokio ends
/// such a task alone when it panics, and the connection sees its upstream
/// side fail (a 502, or the tunnel closing).
///
/// Put it outermost, directly under [`serve`](crate::serve), so that it
/// covers every layer. A panic leaves the state it unwound through
/// half-changed; the only state that outlives a connection is behind locks
/// that tolerate poisoning (the loop guard, caches) or atomics (metrics).
/// In a build with `panic = "abort"` nothing can be caught, and the
/// process ends at the first panic.
///
/// # Example
///
/// A service that panics on a connection whose first byte is `!`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use l7inspect_core::*;
/// use l7inspect_detect::Conn;
/// use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
///
/// let metrics = Metrics::default();
/// let svc = ServiceBuilder::new()
///     .layer(CatchPanicLayer::new(metrics.clone()))
///     .service(service_fn(|conn: Conn<Accepted, &'static [u8]>| async move {
///         assert_ne!(conn.io.first(), Some(&b'!'), "a bug");
///         Ok::<_, BoxError>(())
///     }));
/// let accepted = Accepted {
///     client: "127.0.0.1:50000".parse().unwrap(),
///     local: "127.0.0.1:7000".parse().unwrap(),
///     direction: Direction::Inbound,
/// };
/// let err = svc.oneshot(Conn { meta: accepted, io: &b"!boom"[..] }).await.unwrap_err();
/// assert!(err.is::<Panicked>());
/// let labels = DirectionLabels { direction: Direction::Inbound };
/// assert_eq!(metrics.connection_panics.get_or_create(&labels).get(), 1);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CatchPanicLayer {
    metrics: Metrics,
}

/// A connection service whose panics end only the connection; see
/// [`CatchPanicLayer`].
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
    /// `l7inspect_connection_panics_total`, inbound and outbound: looked up
    /// once, so that a connection carries one counter handle, not every
    /// metric's.
    panics: [Counter; 2],
}

/// The error of a connection whose service panicked: the panic's message.
#[derive(Debug, thiserror::Error)]
#[error("the connection's task panicked: {message}")]
pub struct Panicked {
    message: String,
}

/// The future of [`CatchPanic`]: the inner service's, polled so that a
/// panic becomes a [`Panicked`] error.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    /// `None` once the inner future panicked (and was dropped), or when
    /// `call` itself panicked.
    #[pin]
    inner: Option<F>,
    /// The panic of `call`, reported on the first poll.
    early: Option<Panicked>,
    /// The connection's direction's panic counter.
    panics: Counter,
}

// === impl CatchPanicLayer ===

impl CatchPanicLayer {
    /// A layer counting caught panics in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic::new(inner, self.metrics.clone())
    }
}

// === impl CatchPanic ===

impl<S> CatchPanic<S> {
    /// Wraps `inner`, counting caught panics in `metrics`.
    pub fn new(inner: S, metrics: Metrics) -> Self {
        let panics = [Direction::Inbound, Direction::Outbound].map(|direction| {
            metrics
                .connection_panics
                .get_or_create(&DirectionLabels { direction })
                .clone()
        });
        Self { inner, panics }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, I> Service<Conn<Accepted, I>> for CatchPanic<S>
where
    S: Service<Conn<Accepted, I>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<Accepted, I>) -> Self::Future {
        let panics = match conn.meta.direction {
            Direction::Inbound => &self.panics[0],
            Direction::Outbound => &self.panics[1],
        }
        .clone();
        // `call` runs on the accept loop's task: a panic here would end the
        // listener, not one connection.
        let (inner, early) = match catch_unwind(AssertUnwindSafe(|| self.inner.call(conn))) {
            Ok(fut) => (Some(fut), None),
            Err(payload) => (None, Some(Panicked::new(payload))),
        };
        ResponseFuture {
            inner,
            early,
            panics,
        }
    }
}

// === impl Panicked ===

impl Panicked {
    /// From a panic's payload: its message when it has one (`panic!` with a
    /// literal or a format string), else a placeholder.
    fn new(payload: Box<dyn Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_owned(),
                Err(_) => "(a panic without a message)".to_owned(),
            },
        };
        Self { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// === impl ResponseFuture ===

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let panicked = match this.inner.as_mut().as_pin_mut() {
            Some(inner) => match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(out)) => return Poll::Ready(out.map_err(Into::into)),
                Err(payload) => {
                    // Dropped now, not with this future: it must not be
                    // polled again. Its destructors may panic too.
                    let _ = catch_unwind(AssertUnwindSafe(|| this.inner.set(None)));
                    Panicked::new(payload)
                }
            },
            None => match this.early.take() {
                Some(panicked) => panicked,
                None => panic!("polled after completion"),
            },
        };
        this.panics.inc();
        Poll::Ready(Err(panicked.into()))
    }
}
