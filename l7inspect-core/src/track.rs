//! [`TrackLayer`]: connection metrics, recorded once detection has named the
//! protocol.

use crate::{
    connect::Connecting,
    metrics::{ConnLabels, Metrics},
};
use l7inspect_detect::{Detected, PrefixedIo};
use pin_project::{pin_project, pinned_drop};
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
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    open: Gauge,
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

    fn call(&mut self, d: Detected<Connecting, I>) -> Self::Future {
        let labels = ConnLabels {
            direction: d.meta.meta.direction,
            protocol: d.outcome.as_str(),
        };
        let m = &self.metrics;
        m.detections.get_or_create(&labels).inc();
        m.connections.get_or_create(&labels).inc();
        let open = m.open_connections.get_or_create(&labels).clone();
        open.inc();
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
            open,
        }
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

#[pinned_drop]
impl<F> PinnedDrop for ResponseFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        self.open.dec();
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
