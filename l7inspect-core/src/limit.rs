//! [`LimitLayer`]: caps the connections open at once, refusing the ones past
//! the cap as they are accepted; and the descriptor held in reserve by each
//! accept loop ([`SpareFd`]).

use crate::{
    meta::Accepted,
    metrics::{Metrics, Refusal},
    orig_dst::reset,
    ratelimit::RateLimited,
};
use l7inspect_detect::Conn;
use pin_project::pin_project;
use std::{
    fs::File,
    future::Future,
    io,
    os::fd::AsFd,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};
use tokio::net::TcpListener;
use tower::{Layer, Service};

/// A [`Layer`] that wraps a service in [`Limit`]: at most a fixed number of
/// connections at once go through it; past that, a new connection is
/// refused as it is accepted.
///
/// It goes at the top of a listener's connection stack, above
/// [`OrigDstLayer`](crate::OrigDstLayer) or
/// [`FixedTargetLayer`](crate::FixedTargetLayer), and takes a [`Conn`] of
/// [`Accepted`] metadata as [`serve`](crate::serve) hands them out. Clones
/// of a layer, and the services it builds, share one count: make one layer
/// per listener for a per-listener limit ([`new`](Self::new)), and one
/// for the whole process, added to every listener's stack, for a budget of
/// descriptors ([`descriptor_budget`](Self::descriptor_budget)). A
/// connection holds its place from the call until its future completes or
/// is dropped.
///
/// # Behaviour on the wire
///
/// A connection past the limit is closed at once with a TCP reset (the
/// client's next read or write fails with "connection reset"), before
/// anything else happens to it: no original-destination lookup, no
/// upstream connect, no byte read. It is counted in
/// `l7inspect_connections_refused_total{reason="limit"}` (or
/// `"descriptors"`) and logged as a warning, rate-limited to one line per
/// 10 s with the number of others. The connections already open are not
/// touched; as soon as one ends, a new one is admitted again. Refusing,
/// rather than leaving connections unaccepted in the listen backlog as
/// haproxy's `maxconn` does, tells a client at once to go elsewhere instead
/// of letting it hang until its own timeout.
///
/// # Example
///
/// A listener that holds at most 100 connections, each forwarded to a
/// fixed target:
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use l7inspect_core::*;
/// use l7inspect_detect::{DetectConfig, DetectLayer};
/// use tower::ServiceBuilder;
///
/// let metrics = Metrics::default();
/// let listener = bind("127.0.0.1:7000".parse().unwrap())?;
/// let svc = ServiceBuilder::new()
///     .layer(LimitLayer::new(100).with_metrics(metrics.clone()))
///     .layer(FixedTargetLayer::new("127.0.0.1:6379".parse().unwrap()))
///     .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics))
///     .layer(DetectLayer::new(DetectConfig::default()))
///     .service(Passthrough::new(PassthroughConfig::default()));
/// let tracker = tokio_util::task::TaskTracker::new();
/// serve(listener, Direction::Inbound, svc, tracker, std::future::pending()).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LimitLayer {
    shared: Arc<Shared>,
}

/// Admits connections while fewer than its limit are open, and refuses the
/// others with a reset.
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The future of [`Limit`]: the inner future, holding the connection's
/// place until it completes or is dropped; or done at once for a refused
/// connection.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    /// `None`: refused (and already reset).
    #[pin]
    inner: Option<F>,
    _permit: Option<Permit>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    open: AtomicUsize,
    reason: Refusal,
    metrics: Metrics,
    log: RateLimited,
}

/// A connection's place under a [`Limit`], given back on drop.
#[derive(Debug)]
struct Permit {
    shared: Arc<Shared>,
}

// === impl LimitLayer ===

impl LimitLayer {
    /// A limit of `max` connections at once (a listener's), whose
    /// refusals are counted as `limit`. `usize::MAX`: no limit in practice.
    /// Its refusals go to a [`Metrics`] of its own, which nothing serves;
    /// see [`with_metrics`](Self::with_metrics).
    pub fn new(max: usize) -> Self {
        Self::from_parts(max, Refusal::Limit, Metrics::default())
    }

    /// A budget of `max` proxied connections at once for the whole process,
    /// whose refusals are counted as `descriptors`: each proxied connection
    /// holds a descriptor for its client and one for its upstream, and a
    /// process that runs out of descriptors can accept nothing, not even a
    /// health check. Share one layer among every listener of the process,
    /// and pick `max` so that what is left of `RLIMIT_NOFILE` covers
    /// everything else (the admin server, exporters, listeners).
    pub fn descriptor_budget(max: usize) -> Self {
        Self::from_parts(max, Refusal::Descriptors, Metrics::default())
    }

    /// The same layer, counting refusals in `metrics`. It starts a new
    /// count: call it before the layer is used or cloned.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self::from_parts(self.shared.max, self.shared.reason, metrics)
    }

    /// How many connections it admits at once.
    pub fn max(&self) -> usize {
        self.shared.max
    }

    /// How many connections hold a place now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    fn from_parts(max: usize, reason: Refusal, metrics: Metrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                max,
                open: AtomicUsize::new(0),
                reason,
                metrics,
                log: RateLimited::default(),
            }),
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Limit ===

impl<S, I> Service<Conn<Accepted, I>> for Limit<S>
where
    S: Service<Conn<Accepted, I>, Response = ()>,
    I: AsFd,
{
    type Response = ();
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<Accepted, I>) -> Self::Future {
        match Shared::acquire(&self.shared) {
            Some(permit) => ResponseFuture {
                inner: Some(self.inner.call(conn)),
                _permit: Some(permit),
            },
            None => {
                self.shared.refuse(&conn.meta);
                reset(conn.io);
                ResponseFuture {
                    inner: None,
                    _permit: None,
                }
            }
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), E>>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.as_pin_mut() {
            Some(inner) => inner.poll(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// A place, if one is free.
    fn acquire(this: &Arc<Self>) -> Option<Permit> {
        this.open
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |open| {
                (open < this.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Permit {
                shared: this.clone(),
            })
    }

    fn refuse(&self, accepted: &Accepted) {
        self.metrics
            .connection_refused(accepted.direction, self.reason);
        let max = self.max;
        self.log.warn(|suppressed| match self.reason {
            Refusal::Descriptors => tracing::warn!(
                client = %accepted.client,
                listener = %accepted.local,
                direction = %accepted.direction,
                suppressed,
                "connection refused: {max} proxied connections are open, as many as the \
                 descriptor limit (RLIMIT_NOFILE) leaves room for"
            ),
            _ => tracing::warn!(
                client = %accepted.client,
                listener = %accepted.local,
                direction = %accepted.direction,
                suppressed,
                "connection refused: its listener has {max} connections open, its limit"
            ),
        });
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Release);
    }
}

// === impl SpareFd ===

/// A descriptor an accept loop holds in reserve (`/dev/null`, opened at
/// start), for when `accept(2)` fails for want of descriptors (`EMFILE`,
/// `ENFILE`).
///
/// Without it, the connections queued on the listener stay there: the
/// listener stays readable, each retry fails the same way, and their
/// clients hang until their own timeout. With it, [`refuse_one`]
/// closes the spare, accepts one queued connection into the descriptor
/// that frees, resets it at once and takes the spare back: each failed
/// accept refuses one client instead of spinning or stalling (the trick of
/// libev's documentation and of nginx-like servers).
///
/// [`refuse_one`]: Self::refuse_one
#[derive(Debug)]
pub(crate) struct SpareFd(Option<File>);

impl SpareFd {
    pub(crate) fn new() -> Self {
        Self(open_spare())
    }

    /// Takes the spare back if an earlier attempt could not (another
    /// thread took the freed descriptor first); a no-op otherwise.
    pub(crate) fn rearm(&mut self) {
        if self.0.is_none() {
            self.0 = open_spare();
        }
    }

    /// After an accept failed with `EMFILE` or `ENFILE`: refuses one queued
    /// connection of `listener` with a reset, through the spare descriptor.
    /// False when there is no spare to free (the caller should back off) or
    /// nothing was queued.
    pub(crate) fn refuse_one(&mut self, listener: &TcpListener) -> bool {
        let Some(spare) = self.0.take() else {
            self.rearm();
            return false;
        };
        drop(spare);
        // The listener is non-blocking: this accepts a queued connection or
        // fails at once, and tokio's readiness is left for its own accept
        // to clear.
        let refused = match socket2::SockRef::from(listener).accept() {
            Ok((socket, _)) => {
                reset(socket);
                true
            }
            Err(_) => false,
        };
        self.rearm();
        refused
    }
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Whether `e` is the process (`EMFILE`) or the system (`ENFILE`) being out
/// of file descriptors.
pub(crate) fn is_out_of_descriptors(e: &io::Error) -> bool {
    let errno = e.raw_os_error();
    errno == Some(rustix::io::Errno::MFILE.raw_os_error())
        || errno == Some(rustix::io::Errno::NFILE.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let layer = LimitLayer::new(2);
        let a = Shared::acquire(&layer.shared).expect("first place");
        let b = Shared::acquire(&layer.shared).expect("second place");
        assert!(Shared::acquire(&layer.shared).is_none(), "no third place");
        assert_eq!(layer.open(), 2);
        drop(a);
        assert_eq!(layer.open(), 1);
        let _c = Shared::acquire(&layer.shared).expect("a freed place");
        drop(b);
        assert_eq!(layer.open(), 1);
    }

    #[test]
    fn out_of_descriptors_is_emfile_or_enfile() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(104)));
    }
}
