//! The proxy core of l7inspect: listeners, upstream connect, TCP passthrough,
//! admin server and metrics.
//!
//! A connection's path through the pieces of this crate:
//!
//! ```text
//! serve(listener)                       accept loop, one task per connection
//!   -> CatchPanicLayer                  a panic ends its connection only, counted
//!   -> LimitLayer                       listener limit, descriptor budget: refuse past them
//!   -> OrigDstLayer | FixedTargetLayer  where it goes (SO_ORIGINAL_DST or fixed), loop guard
//!   -> ConnectLayer                     dial the target now, 1:1, beside detection
//!   -> l7inspect_detect::DetectLayer    what it speaks (server-first aware)
//!   -> TrackLayer                       connection and byte metrics
//!   -> HttpLayer                        HTTP/1 (hyper's server, our client) and HTTP/2 (h2), 1:1 upstream
//!   -> Passthrough                      everything else: bytes both ways, half-close, idle timeout
//! ```
//!
//! Each step is a Tower layer or service, so an embedder can compose them
//! with `tower::ServiceBuilder` (the `examples/` crate does).
//!
//! # Example
//!
//! The smallest complete proxy: a TCP forwarder from an ephemeral port to
//! one server (here an echo server of its own), with protocol detection and
//! passthrough:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! use l7inspect_core::*;
//! use l7inspect_detect::{DetectConfig, DetectLayer};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::ServiceBuilder;
//!
//! let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let target = server.local_addr()?;
//! tokio::spawn(async move {
//!     let (mut conn, _) = server.accept().await?;
//!     let (mut r, mut w) = conn.split();
//!     tokio::io::copy(&mut r, &mut w).await
//! });
//!
//! let svc = ServiceBuilder::new()
//!     .layer(FixedTargetLayer::new(target))
//!     .layer(ConnectLayer::new(ConnectConfig::default()))
//!     .layer(DetectLayer::new(DetectConfig::default()))
//!     .service(Passthrough::new(PassthroughConfig::default()));
//! let listener = bind("127.0.0.1:0".parse().unwrap())?;
//! let proxy = listener.local_addr()?;
//! let tracker = tokio_util::task::TaskTracker::new();
//! tokio::spawn(serve(listener, Direction::Outbound, svc, tracker, std::future::pending()));
//!
//! let mut client = tokio::net::TcpStream::connect(proxy).await?;
//! client.write_all(b"*1\r\n$4\r\nPING\r\n").await?; // a Redis PING
//! let mut echoed = [0; 14];
//! client.read_exact(&mut echoed).await?;
//! assert_eq!(&echoed, b"*1\r\n$4\r\nPING\r\n");
//! # Ok(()) }
//! ```
//!
//! With metrics, give one [`Metrics`] to each layer's `with_metrics`, add a
//! [`TrackLayer`] after detection and register the metrics where
//! [`Admin`] serves them; behind iptables, [`OrigDstLayer`] replaces
//! [`FixedTargetLayer`] and shares a [`LoopGuard`] with [`ConnectLayer`].
//!
//! # Layout
//! - `meta`: [`Accepted`], [`ConnMeta`], [`Direction`].
//! - `serve`: [`serve`], the accept loop, and [`bind`].
//! - `catch_panic`: [`CatchPanicLayer`], [`Panicked`].
//! - `limit`: [`LimitLayer`]: a listener's connection limit, the process's
//!   descriptor budget.
//! - `orig_dst`: [`OrigDstLayer`], [`FixedTargetLayer`], [`original_dst`].
//! - `loop_guard`: [`LoopGuard`].
//! - `connect`: [`ConnectLayer`], [`Connecting`], [`Upstream`], [`ConnectError`].
//! - `http`: [`HttpLayer`]: HTTP/1 and HTTP/2 proxying, upgrades, 502s (its
//!   behaviour on the wire), the per-request stack ([`NewRequestService`],
//!   [`Forward`], [`local_response`]).
//! - `track`: [`TrackLayer`], [`CountingIo`].
//! - `passthrough`: [`Passthrough`], [`relay`].
//! - `metrics`: [`Metrics`] (every metric), [`ProcessCollector`].
//! - `admin`: [`Admin`], [`Readiness`].
//! - `ratelimit`: [`RateLimited`] log lines.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod catch_panic;
mod connect;
mod http;
mod limit;
mod loop_guard;
mod meta;
mod metrics;
mod orig_dst;
mod passthrough;
mod ratelimit;
mod serve;
mod track;

pub use admin::{Admin, AdminBody, AdminRoute, MAX_ROUTE_BODY, Readiness};
pub use catch_panic::{CatchPanic, CatchPanicLayer, Panicked, ResponseFuture as CatchPanicFuture};
pub use connect::{
    Connect, ConnectConfig, ConnectError, ConnectLayer, Connecting, Connector, Upstream,
    UpstreamIo, UpstreamStream, WrapUpstream,
};
pub use http::{
    FailureKind, Forward, ForwardFuture, Http, Http2Config, HttpConfig, HttpLayer,
    NewRequestService, PlainForward, ProxyError, RequestBody, ResponseBody, UpstreamClosed,
    local_response, remove_hop_by_hop,
};
pub use limit::{Limit, LimitLayer, ResponseFuture as LimitFuture};
pub use loop_guard::{Loop, LoopGuard, PendingDial, Registration};
pub use meta::{Accepted, ConnMeta, Direction};
pub use metrics::{
    ConnLabels, ConnectErrorLabels, DirectionLabels, Http2Close, Http2CloseLabels, Metrics,
    ProcessCollector, Refusal, RefusedLabels, Timeout, TimeoutLabels,
};
pub use orig_dst::{
    FixedTarget, FixedTargetLayer, OrigDst, OrigDstLayer, ResponseFuture as OrigDstFuture,
    original_dst, reset,
};
pub use passthrough::{Closed, Passthrough, PassthroughConfig, relay};
pub use ratelimit::RateLimited;
pub use serve::{LISTEN_BACKLOG, bind, serve};
pub use track::{CountingIo, Track, TrackLayer};
