//! [`TrackLayer`]: connection metrics, recorded once detection has named the
//! protocol; and a connection's place in the open-connections gauge.

use crate::{
    connect::Connecting,
    metrics::{ConnLabels, Metrics},
};
use l7inspect_detect::{Detected, PrefixedIo};
use pin_project::pin_project;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::{Layer, Service};

/// A [`Layer`] that wraps a service in [`Track`]: connection and byte
/// metrics, by direction and detected protocol.
///
/// It goes below [`DetectLayer`](l7inspect_detect::DetectLayer), whose
/// [`Detected`] outcome labels the metrics, and **wraps the client stream
/// in a [`CountingIo`]**: the inner service receives a
/// `Detected<Connecting, CountingIo<I>>` where the layer above gave a
/// `Detected<Connecting, I>` (still replaying the bytes detection read, in
/// a [`PrefixedIo`]). The wrapper costs one counter increment per read or
/// write. The layer exists only to count, so it takes its [`Metrics`] in
/// [`new`](Self::new): a proxy without metrics leaves it out.
///
/// For each connection it counts the detection outcome
/// (`l7inspect_protocol_detections_total`) and the connection
/// (`l7inspect_tcp_connections_total`), keeps `l7inspect_tcp_open_connections`
/// up while the inner service runs, and counts the client's bytes in
/// `l7inspect_tcp_read_bytes_total` and `l7inspect_tcp_write_bytes_total`.
/// The bytes read during detection are counted here, since the counting
/// stream only sees later reads.
///
/// [`ConnectLayer`](crate::ConnectLayer), above detection, counts each
/// connection in `l7inspect_tcp_open_connections{protocol="detecting"}`
/// from accept on; this layer moves it to its protocol when detection ends
/// (one gauge down, the other up: never counted twice, and no cost per
/// byte), so that the gauge counts every open connection, silent ones
/// included.
///
/// # Example
///
/// A Redis client's first command, through detection and tracking (the
/// upstream is a loopback listener that never answers):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// use l7inspect_core::*;
/// use l7inspect_detect::{Conn, DetectConfig, DetectLayer, Detected};
/// use tokio::io::AsyncReadExt;
/// use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
///
/// let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let metrics = Metrics::default();
/// let svc = ServiceBuilder::new()
///     .layer(FixedTargetLayer::new(server.local_addr()?))
///     .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics.clone()))
///     .layer(DetectLayer::new(DetectConfig::default()))
///     .layer(TrackLayer::new(metrics.clone()))
///     .service(service_fn(|mut d: Detected<Connecting, CountingIo<&'static [u8]>>| async move {
///         let mut rest = Vec::new();
///         d.io.read_to_end(&mut rest).await?; // the replayed prefix and the rest
///         Ok::<_, BoxError>(rest.len())
///     }));
/// let accepted = Accepted {
///     client: "127.0.0.1:50000".parse()?,
///     local: "127.0.0.1:7000".parse()?,
///     direction: Direction::Outbound,
/// };
/// let ping = b"*1\r\n$4\r\nPING\r\n";
/// assert_eq!(svc.oneshot(Conn { meta: accepted, io: &ping[..] }).await?, ping.len());
/// let labels = ConnLabels { direction: Direction::Outbound, protocol: "redis" };
/// assert_eq!(metrics.connections.get_or_create(&labels).get(), 1);
/// // Open while detection ran (`detecting`), then as `redis`; closed now.
/// let open = |protocol| {
///     let labels = ConnLabels { direction: Direction::Outbound, protocol };
///     metrics.open_connections.get_or_create(&labels).get()
/// };
/// assert_eq!((open("detecting"), open("redis")), (0, 0));
/// assert_eq!(metrics.read_bytes.get_or_create(&labels).get(), ping.len() as u64);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TrackLayer {
    metrics: Metrics,
}

/// Records connection metrics around the inner service, and hands it the
/// client stream wrapped in a [`CountingIo`].
#[derive(Clone, Debug)]
pub struct Track<S> {
    inner: S,
    metrics: Metrics,
}

/// A stream that counts the bytes read from and written to it: the client
/// stream as [`Track`] hands it to its inner service.
#[pin_project]
#[derive(Debug)]
pub struct CountingIo<I> {
    #[pin]
    io: I,
    read: Counter,
    written: Counter,
}

/// The future of [`Track`]: the inner future, holding the connection's place
/// in `l7inspect_tcp_open_connections` until it completes or is dropped.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    _open: OpenGuard,
}

/// The `protocol` label of `l7inspect_tcp_open_connections` for connections
/// whose detection has not ended.
pub(crate) const DETECTING: &str = "detecting";

/// A connection's place in `l7inspect_tcp_open_connections`: one up on
/// creation, one down on drop, and [`move_to`](Self::move_to) another
/// label in between. Holds a handle to the gauge (an `Arc`), so it costs
/// no allocation and no label lookup of its own.
#[derive(Debug)]
pub(crate) struct OpenGuard {
    gauge: Gauge,
}

// === impl TrackLayer ===

impl TrackLayer {
    /// A layer recording into `metrics`, wrapping each client stream in a
    /// [`CountingIo`].
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

// === impl Track ===

impl<S, I> Service<Detected<Connecting, I>> for Track<S>
where
    S: Service<Detected<Connecting, CountingIo<I>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut d: Detected<Connecting, I>) -> Self::Future {
        let labels = ConnLabels {
            direction: d.meta.meta.direction,
            protocol: d.outcome.as_str(),
        };
        let m = &self.metrics;
        m.detections.get_or_create(&labels).inc();
        m.connections.get_or_create(&labels).inc();
        let gauge = m.open_connections.get_or_create(&labels).clone();
        let open = match d.meta.open.take() {
            Some(mut open) => {
                open.move_to(gauge);
                open
            }
            None => OpenGuard::new(gauge),
        };
        let read = m.read_bytes.get_or_create(&labels).clone();
        let written = m.write_bytes.get_or_create(&labels).clone();
        let (prefix, io) = d.io.into_parts();
        read.inc_by(prefix.len() as u64);
        let io = PrefixedIo::new(prefix, CountingIo { io, read, written });
        ResponseFuture {
            inner: self.inner.call(Detected {
                outcome: d.outcome,
                client_hello: d.client_hello,
                meta: d.meta,
                io,
            }),
            _open: open,
        }
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

// === impl OpenGuard ===

impl OpenGuard {
    /// Counts a connection in `gauge`.
    pub(crate) fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self { gauge }
    }

    /// Moves the connection to `gauge` (from `detecting` to its protocol).
    /// Down first, then up: a scrape in between may miss the connection,
    /// but never counts it twice.
    pub(crate) fn move_to(&mut self, gauge: Gauge) {
        self.gauge.dec();
        gauge.inc();
        self.gauge = gauge;
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

// === impl CountingIo ===

impl<I> CountingIo<I> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: std::os::fd::AsFd> std::os::fd::AsFd for CountingIo<I> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl<I: AsyncRead> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.inc_by(n as u64);
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.written.inc_by(n as u64);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.written.inc_by(n as u64);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
