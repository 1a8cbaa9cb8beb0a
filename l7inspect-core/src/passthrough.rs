//! [`Passthrough`]: forwards a connection's bytes to its upstream, untouched.

use crate::{
    connect::Connecting,
    metrics::{DirectionLabels, Metrics},
    orig_dst::reset,
};
use l7inspect_detect::Detected;
use std::{
    future::Future,
    io,
    os::fd::AsFd,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tower::{BoxError, Service};

/// Settings of [`Passthrough`].
#[derive(Clone, Debug, Default)]
pub struct PassthroughConfig {
    /// Close connections on which no bytes moved for this long. Default: never.
    pub idle_timeout: Option<Duration>,
}

/// Copies bytes both ways between a client and its upstream connection.
///
/// # Behaviour on the wire
///
/// - The bytes read for detection are sent first (the client stream is a
///   [`PrefixedIo`](l7inspect_detect::PrefixedIo)), then everything else, in
///   order, both ways.
/// - **Half-close**: when one side finishes sending (FIN), the proxy shuts
///   down its write half towards the other side and keeps the opposite
///   direction flowing until that side finishes too.
/// - **Errors**: when either side resets, or a read or write fails, both
///   connections are closed with a reset, so that neither peer mistakes a
///   broken stream for a complete one.
/// - **Connect failure**: the client is reset, as a refused connect would.
/// - **Idle timeout** (optional): when no bytes have moved either way for
///   the timeout, both connections are closed (FIN) and
///   `l7inspect_tcp_idle_timeouts_total` counts it (when
///   [metrics](Self::with_metrics) are given).
///
/// It is the innermost service of a connection stack: it takes a
/// [`Detected`] connection, so it goes below
/// [`DetectLayer`](l7inspect_detect::DetectLayer) (and
/// [`ConnectLayer`](crate::ConnectLayer) above that, which dialled the
/// upstream connection), and its client stream must be a socket (`AsFd`),
/// to be reset on errors.
///
/// # Example
///
/// The end of a TCP forwarder, with its idle timeouts counted in the
/// proxy's metrics ([the crate's example](crate#example) runs one):
///
/// ```
/// use l7inspect_core::{Metrics, Passthrough, PassthroughConfig};
/// use std::time::Duration;
///
/// let metrics = Metrics::default();
/// let config = PassthroughConfig { idle_timeout: Some(Duration::from_secs(3600)) };
/// let passthrough = Passthrough::new(config).with_metrics(metrics.clone());
/// let mut registry = prometheus_client::registry::Registry::default();
/// metrics.register(&mut registry); // served by `Admin` on `/metrics`
/// ```
#[derive(Clone, Debug)]
pub struct Passthrough {
    config: PassthroughConfig,
    metrics: Metrics,
}

/// The future of [`Passthrough`]: one box per connection.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// How a passthrough connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// Both sides finished sending.
    Done {
        /// Bytes sent from the client to the server.
        to_server: u64,
        /// Bytes sent from the server to the client.
        to_client: u64,
    },
    /// Nothing moved for the idle timeout.
    Idle,
}

// === impl Passthrough ===

impl Passthrough {
    /// A passthrough service with `config`. Its idle timeouts go to a
    /// [`Metrics`] of its own, which nothing serves; see
    /// [`with_metrics`](Self::with_metrics).
    pub fn new(config: PassthroughConfig) -> Self {
        Self {
            config,
            metrics: Metrics::default(),
        }
    }

    /// The same service, counting idle timeouts in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self { metrics, ..self }
    }
}

impl<I> Service<Detected<Connecting, I>> for Passthrough
where
    I: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, d: Detected<Connecting, I>) -> ResponseFuture {
        let idle_timeout = self.config.idle_timeout;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let Detected { meta, mut io, .. } = d;
            let direction = meta.meta.direction;
            let mut upstream = match meta.upstream.established().await {
                Ok(upstream) => upstream,
                Err(e) => {
                    // Already counted and logged by the connect.
                    reset(io);
                    return Err(e.into());
                }
            };
            match relay(&mut io, &mut upstream, idle_timeout).await {
                Ok(Closed::Done {
                    to_server,
                    to_client,
                }) => {
                    tracing::debug!(to_server, to_client, "passthrough closed");
                    Ok(())
                }
                Ok(Closed::Idle) => {
                    metrics
                        .idle_timeouts
                        .get_or_create(&DirectionLabels { direction })
                        .inc();
                    tracing::debug!("passthrough idle timeout");
                    Ok(())
                }
                Err(e) => {
                    reset(io);
                    reset(upstream);
                    Err(e.into())
                }
            }
        })
    }
}

/// Bytes buffered per direction of a relay: tokio's default (8 KiB) made
/// twice the syscalls per byte and ran bulk copies at 0.6-0.8 GiB/s where
/// 16 KiB (haproxy's size) gave 1.13 GiB/s (32 KiB: no better); see
/// docs/benchmarks.md.
const RELAY_BUFFER: usize = 16 * 1024;

/// Copies both ways between `a` (the client) and `b` (the server) until both
/// sides finished sending, either failed, or nothing moved for `idle`.
///
/// The copy itself is tokio's `copy_bidirectional` (half-close included);
/// the idle timer watches a timestamp that both streams' reads update.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> io::Result<Closed>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let Some(idle) = idle else {
        let (to_server, to_client) =
            tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await?;
        return Ok(Closed::Done {
            to_server,
            to_client,
        });
    };
    let clock = Activity::new();
    let mut a = Touch {
        io: a,
        clock: &clock,
    };
    let mut b = Touch {
        io: b,
        clock: &clock,
    };
    tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, RELAY_BUFFER, RELAY_BUFFER) => {
            let (to_server, to_client) = res?;
            Ok(Closed::Done { to_server, to_client })
        }
        () = clock.idle_for(idle) => Ok(Closed::Idle),
    }
}

/// When bytes last moved, as milliseconds since the relay started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`. Wakes once per `idle` at
    /// most while traffic flows, never per byte.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream whose reads update an [`Activity`].
struct Touch<'a, T: ?Sized> {
    io: &'a mut T,
    clock: &'a Activity,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Touch<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Touch<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_flowing() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b, None).await });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut req = Vec::new();
        server.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        // The client's FIN reached the server; the server still answers.
        server.write_all(b"response after FIN").await.unwrap();
        server.shutdown().await.unwrap();
        let mut resp = Vec::new();
        client.read_to_end(&mut resp).await.unwrap();
        assert_eq!(resp, b"response after FIN");
        assert_eq!(
            relay.await.unwrap().unwrap(),
            Closed::Done {
                to_server: 7,
                to_client: 18
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_without_traffic() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(10);
        let relay =
            tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b, Some(idle)).await });
        let start = Instant::now();
        // Traffic every 6 s keeps it alive past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            server.read_exact(&mut one).await.unwrap();
        }
        assert_eq!(relay.await.unwrap().unwrap(), Closed::Idle);
        // Last byte at 18 s, so idle at 28 s.
        assert_eq!(start.elapsed(), Duration::from_secs(28));
    }
}
