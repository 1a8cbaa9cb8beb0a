//! [`OrigDstLayer`] and [`FixedTargetLayer`]: decide where an accepted
//! connection goes, turning an [`Accepted`] into a [`ConnMeta`].

use crate::{
    loop_guard::{Loop, LoopGuard},
    meta::{Accepted, ConnMeta},
    metrics::{Metrics, Refusal},
    ratelimit::RateLimited,
};
use l7inspect_detect::Conn;
use pin_project::pin_project;
use socket2::SockRef;
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::net::TcpStream;
use tower::{Layer, Service};

/// A [`Layer`] that wraps a service in [`OrigDst`].
///
/// A transparent listener receives connections that iptables redirected to
/// it; the kernel remembers where each was going (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` for IPv6) and [`OrigDst`] asks it. An explicit
/// listener forwards everything to one configured address ([`FixedTarget`]).
///
/// A connection that cannot be forwarded is closed with a TCP reset (as a
/// refused connect would look to the client), counted in
/// `l7inspect_connections_refused_total` and logged (rate-limited):
/// - `no_original_dst`: the kernel has no original destination for it
///   (it reached the listener without a NAT rule, and conntrack is off);
/// - `loop`: forwarding it would reach the proxy itself (see [`LoopGuard`]).
///
/// It takes a [`Conn`] of [`Accepted`] metadata and a [`TcpStream`], as
/// [`serve`](crate::serve) hands them out, and calls the inner service with
/// a [`ConnMeta`] naming the target, which [`ConnectLayer`](crate::ConnectLayer)
/// below it dials. Give that layer the same [`LoopGuard`]
/// ([`ConnectLayer::with_loop_guard`](crate::ConnectLayer::with_loop_guard)):
/// it registers the proxy's own upstream connections there, so that one
/// that iptables redirects back is refused here rather than looping.
///
/// # Example
///
/// A transparent outbound listener (it needs an iptables `REDIRECT` rule to
/// receive anything, so this is not run):
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use l7inspect_core::*;
/// use l7inspect_detect::{DetectConfig, DetectLayer};
/// use tower::ServiceBuilder;
///
/// let guard = LoopGuard::default();
/// let listener = bind("0.0.0.0:15001".parse().unwrap())?;
/// guard.add_listener(listener.local_addr()?);
/// let svc = ServiceBuilder::new()
///     .layer(OrigDstLayer::new(guard.clone()))
///     .layer(ConnectLayer::new(ConnectConfig::default()).with_loop_guard(guard))
///     .layer(DetectLayer::new(DetectConfig::default()))
///     .service(Passthrough::new(PassthroughConfig::default()));
/// let tracker = tokio_util::task::TaskTracker::new();
/// serve(listener, Direction::Outbound, svc, tracker, std::future::pending()).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct OrigDstLayer {
    shared: Arc<OrigDstShared>,
}

/// Looks up each redirected connection's original destination and calls the
/// inner service with it as the target, unless that would loop.
#[derive(Clone, Debug)]
pub struct OrigDst<S> {
    inner: S,
    shared: Arc<OrigDstShared>,
}

#[derive(Debug)]
struct OrigDstShared {
    guard: LoopGuard,
    metrics: Metrics,
    log: RateLimited,
}

/// The future of [`OrigDst`]: the inner service's, or done at once for a
/// refused connection.
#[pin_project(project = ResponseFutureProj)]
pub enum ResponseFuture<F> {
    /// Forwarded to the inner service.
    Forward(#[pin] F),
    /// Refused (and already reset).
    Refused,
}

/// A [`Layer`] that wraps a service in [`FixedTarget`]: the target of an
/// explicit listener, which forwards every connection to one address.
///
/// It takes a [`Conn`] of [`Accepted`] metadata, as [`serve`](crate::serve)
/// hands them out, and calls the inner service with a [`ConnMeta`] whose
/// target is the fixed address, which [`ConnectLayer`](crate::ConnectLayer)
/// below it dials. The stream (any type) is passed on untouched; nothing is
/// refused, and no loop is checked: the target is the operator's choice.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// use l7inspect_core::{Accepted, ConnMeta, Direction, FixedTargetLayer};
/// use l7inspect_detect::Conn;
/// use std::{convert::Infallible, net::SocketAddr};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let redis: SocketAddr = "127.0.0.1:6379".parse()?;
/// let svc = ServiceBuilder::new()
///     .layer(FixedTargetLayer::new(redis))
///     .service(service_fn(|conn: Conn<ConnMeta, ()>| async move {
///         Ok::<_, Infallible>(conn.meta.target)
///     }));
/// let accepted = Accepted {
///     client: "127.0.0.1:50000".parse()?,
///     local: "127.0.0.1:7000".parse()?,
///     direction: Direction::Outbound,
/// };
/// let target = svc.oneshot(Conn { meta: accepted, io: () }).await?;
/// assert_eq!(target, redis);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FixedTargetLayer {
    target: SocketAddr,
}

/// Calls the inner service with a fixed target for every connection.
#[derive(Clone, Debug)]
pub struct FixedTarget<S> {
    inner: S,
    target: SocketAddr,
}

/// The original destination of a redirected connection, as the kernel
/// recorded it before NAT. `local` picks the address family to ask about.
pub fn original_dst(stream: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let is_v4 = match local {
        SocketAddr::V4(_) => true,
        // An IPv4 client of a dual-stack listener is NATed by iptables, not ip6tables.
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let addr = if is_v4 {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

/// Closes a connection with a TCP reset rather than a FIN.
pub fn reset<T: std::os::fd::AsFd>(io: T) {
    let _ = SockRef::from(&io).set_linger(Some(Duration::ZERO));
    drop(io);
}

// === impl OrigDstLayer ===

impl OrigDstLayer {
    /// A layer that refuses loops known to `guard`. Its refusals go to a
    /// [`Metrics`] of its own, which nothing serves; see
    /// [`with_metrics`](Self::with_metrics).
    pub fn new(guard: LoopGuard) -> Self {
        Self::from_parts(guard, Metrics::default())
    }

    /// The same layer, counting refusals in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self::from_parts(self.shared.guard.clone(), metrics)
    }

    fn from_parts(guard: LoopGuard, metrics: Metrics) -> Self {
        Self {
            shared: Arc::new(OrigDstShared {
                guard,
                metrics,
                log: RateLimited::default(),
            }),
        }
    }
}

impl<S> Layer<S> for OrigDstLayer {
    type Service = OrigDst<S>;

    fn layer(&self, inner: S) -> OrigDst<S> {
        OrigDst {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl OrigDst ===

impl<S> Service<Conn<Accepted, TcpStream>> for OrigDst<S>
where
    S: Service<Conn<ConnMeta, TcpStream>, Response = ()>,
{
    type Response = ();
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<Accepted, TcpStream>) -> Self::Future {
        let Conn { meta: accepted, io } = conn;
        let refuse = |reason: Refusal, message: &dyn std::fmt::Display| {
            self.shared
                .metrics
                .connection_refused(accepted.direction, reason);
            self.shared.log.warn(|suppressed| {
                tracing::warn!(
                    client = %accepted.client,
                    listener = %accepted.local,
                    direction = %accepted.direction,
                    suppressed,
                    "connection refused: {message}"
                )
            });
        };
        let target = match original_dst(&io, accepted.local) {
            Ok(target) => target,
            Err(e) => {
                refuse(
                    Refusal::NoOriginalDst,
                    &format_args!(
                        "no original destination ({e}); is the iptables REDIRECT rule in place?"
                    ),
                );
                reset(io);
                return ResponseFuture::Refused;
            }
        };
        if let Some(kind) = self
            .shared
            .guard
            .check(accepted.client, accepted.local, target)
        {
            let why = match kind {
                Loop::TargetIsListener => {
                    "its original destination is the proxy's own listener (no redirect rule, or a direct connection to the proxy port)"
                }
                Loop::ClientIsProxy => {
                    "it is the proxy's own upstream connection, redirected back to the proxy (exempt the proxy's UID from the redirect)"
                }
            };
            refuse(Refusal::Loop, &format_args!("{target} would loop: {why}"));
            reset(io);
            return ResponseFuture::Refused;
        }
        ResponseFuture::Forward(self.inner.call(Conn {
            meta: ConnMeta::new(accepted, target),
            io,
        }))
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), E>>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Forward(f) => f.poll(cx),
            ResponseFutureProj::Refused => Poll::Ready(Ok(())),
        }
    }
}

// === impl FixedTargetLayer ===

impl FixedTargetLayer {
    /// A layer that sends every connection to `target`.
    pub fn new(target: SocketAddr) -> Self {
        Self { target }
    }
}

impl<S> Layer<S> for FixedTargetLayer {
    type Service = FixedTarget<S>;

    fn layer(&self, inner: S) -> FixedTarget<S> {
        FixedTarget {
            inner,
            target: self.target,
        }
    }
}

// === impl FixedTarget ===

impl<S, I> Service<Conn<Accepted, I>> for FixedTarget<S>
where
    S: Service<Conn<ConnMeta, I>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<Accepted, I>) -> S::Future {
        self.inner.call(Conn {
            meta: ConnMeta::new(conn.meta, self.target),
            io: conn.io,
        })
    }
}
