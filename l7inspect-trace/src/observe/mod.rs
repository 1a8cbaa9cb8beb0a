//! [`Observe`]: one observation per HTTP request, which makes both its span
//! (SERVER kind on inbound, CLIENT on outbound, joined to the caller's
//! trace) and its request-duration histogram entry.
//!
//! # Behaviour
//!
//! - **One classification**: the request head is read once into a
//!   [`RequestClass`] (method and whether it is known, version, gRPC service
//!   and method, the server the client named); the span's attributes and
//!   the histogram labels both come from it, and a gRPC status is parsed in
//!   one place.
//! - **When**: the observation starts when the request head reaches the
//!   layer and ends when the response body and trailers are done, when the
//!   response is dropped unfinished (the client went away, the stream was
//!   reset), or, when the response carries a
//!   [`CancellationToken`](tokio_util::sync::CancellationToken) in its
//!   extensions (the proxy's sign that the exchange became a tunnel: a
//!   WebSocket `101`, a `CONNECT`), when the token is cancelled. The span
//!   and the histogram end at that same instant, so a span's duration is its
//!   histogram observation. An error from the inner service (a failing tower
//!   layer inside: a timeout, load shedding) ends the observation at once
//!   and is recorded as the answer l7inspect-core's HTTP layer gives the
//!   client for it, as for a server it could not reach: status `502` (gRPC:
//!   status 14, UNAVAILABLE), in the span and in the histogram.
//! - **Context**: the caller's context is extracted with the configured
//!   [`Propagators`] and becomes the parent; the new span's context is
//!   injected into the forwarded request in the formats the request arrived
//!   with (the first configured format if none), so the next hop, or the
//!   application behind an inbound sidecar, continues the trace. This
//!   happens for unsampled requests too. Malformed headers are ignored,
//!   counted ([`PropagationStats`]) and logged at debug. With
//!   [`ObserveConfig::inner_context`], the services inside see the new span
//!   too: in the request's extensions, and as the current OpenTelemetry
//!   context while they run (so `tracing` spans there become its children).
//! - **Sampling**: the [`Sampler`] decides per request; only a sampled
//!   request builds a [`SpanRecord`] (one allocation). An unsampled request
//!   allocates nothing for its observation.
//! - **Names and attributes** follow the OpenTelemetry semantic conventions
//!   for HTTP and RPC spans: name `{method}` (`HTTP` for unknown methods), or
//!   `{rpc.service}/{rpc.method}` for gRPC.
//! - **Status**: Error for 5xx on SERVER spans, for 4xx and 5xx on CLIENT
//!   spans; for gRPC per the RPC conventions (`grpc-status` from the
//!   trailers, or from the headers of a trailers-only response). A gRPC call
//!   whose response is dropped before its status arrived is recorded as
//!   CANCELLED (1), in the span and in the histogram.
//! - **Failures the proxy answered for**: a response carrying a
//!   [`ResponseFailure`] in its extensions (a `502` made because the server
//!   could not be reached, say) gets its `error.type` (in place of the
//!   status code) and its message (status description and
//!   [`ERROR_MESSAGE_ATTRIBUTE`]) on the span; the histogram keeps the status.
//!
//! # Example
//! ```
//! use l7inspect_trace::{Observer, ObserveConfig, Peer, RequestMetrics};
//! use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig, SamplerConfig};
//! use opentelemetry::trace::SpanKind;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let resource = ResourceConfig::default().to_resource("my-proxy", "0.1.0");
//! let pipeline = ExportPipeline::start(ExportConfig::default(), resource)?;
//! let observer = Observer::new(
//!     ObserveConfig::new(SpanKind::Server),
//!     pipeline.sink(),
//!     Some(RequestMetrics::default()),
//! );
//! let peer = Peer { client: "10.0.0.9:40000".parse()?, server: "10.0.0.5:8080".parse()? };
//! let svc = observer.layer(peer).layer(service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
//! }));
//! let resp = svc.oneshot(http::Request::new(String::new())).await?;
//! drop(resp); // the observation ends with the response body
//! assert_eq!(pipeline.recent().len(), 1);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `classify`: [`RequestClass`], [`grpc_status`].
//! - `metrics`: [`RequestMetrics`], the histograms.
//! - `pending`: an observation in flight and how it ends.
//! - `service`: [`Observe`] and its [`ResponseFuture`].
//! - `body`: [`ObservedBody`].

mod body;
mod classify;
mod metrics;
mod pending;
mod service;
#[cfg(test)]
mod tests;

pub use body::ObservedBody;
pub use classify::{
    GRPC_CANCELLED, GRPC_UNAVAILABLE, GrpcCall, RequestClass, grpc_status, is_grpc, method_name,
    truncate,
};
pub use metrics::{
    BoundedLabels, DURATION_BUCKETS, HttpLabels, MAX_RPC_LABELS, RequestMetrics, RpcLabels,
};
pub use pending::{ERROR_MESSAGE_ATTRIBUTE, ResponseFailure};
pub use service::{Observe, ResponseFuture};

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry::trace::SpanKind;
use prometheus_client::metrics::{family::Family, histogram::Histogram};
use tower::Layer;

use crate::{
    export::{SamplerConfig, SpanSink},
    infer::{InFlight, InferStats},
    propagation::{Format, FormatSet, Propagators},
    sampling::Sampler,
    span::{NetworkFields, TlsFields},
};

#[cfg(doc)]
use crate::span::SpanRecord;

/// What every observed request of one direction shares.
#[derive(Clone, Debug)]
pub struct ObserveConfig {
    /// `Server` for inbound requests, `Client` for outbound.
    pub kind: SpanKind,
    /// Which requests are sampled.
    pub sampler: SamplerConfig,
    /// The formats extracted and injected.
    pub propagators: Propagators,
    /// Record `url.query` (off by default: queries carry secrets).
    pub record_query: bool,
    /// Make the request's span visible to the services inside (off by
    /// default): its context goes into the request's extensions as an
    /// [`opentelemetry::Context`], and is the current OpenTelemetry context
    /// while the inner service is called and its future polled. So with
    /// `tracing-opentelemetry` in the application's subscriber, a
    /// `tracing` span made in a middleware inside (with no `tracing` span
    /// around it) is a child of the request's span, in its trace, with a
    /// local parent; and an unsampled request's inner spans are unsampled
    /// too. It costs a few allocations per request, sampled or not, which
    /// is why the sidecar, with nothing inside, leaves it off.
    pub inner_context: bool,
    /// The longest a string taken from a request (path, query, scheme, host, user
    /// agent, gRPC names) may be in a span or a metric label, in bytes; a
    /// longer one is cut at a character boundary. Default
    /// [`DEFAULT_MAX_ATTRIBUTE_LEN`]. (OpenTelemetry's
    /// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`.)
    pub max_attribute_len: usize,
}

/// The default [`ObserveConfig::max_attribute_len`]: 2 KiB. OpenTelemetry's
/// default is no limit; a proxy sees what any client sends, and keeps
/// spans in memory, so it has one.
pub const DEFAULT_MAX_ATTRIBUTE_LEN: usize = 2048;

/// The two ends of the connection a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub client: SocketAddr,
    /// Where the request goes: the connection's target.
    pub server: SocketAddr,
}

/// The spans and metrics of one direction's requests, shared by every
/// connection; [`Observer::layer`] makes the per-connection layer. Cheap to
/// clone.
///
/// It holds what the connections of a direction share: the span kind, the
/// sampler and propagators ([`ObserveConfig`]), the [`SpanSink`] sampled
/// spans go to (an `ExportPipeline`'s), and the [`RequestMetrics`], which
/// are optional.
///
/// # Example
///
/// Inbound spans into an export pipeline (which, with the default
/// configuration, keeps them in its ring of recent spans), and request
/// histograms registered for scraping:
///
/// ```
/// use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig};
/// use l7inspect_trace::{ObserveConfig, Observer, RequestMetrics};
/// use opentelemetry::trace::SpanKind;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let resource = ResourceConfig::default().to_resource("my-proxy", "0.1.0");
/// let pipeline = ExportPipeline::start(ExportConfig::default(), resource)?;
/// let metrics = RequestMetrics::default();
/// let mut registry = prometheus_client::registry::Registry::default();
/// metrics.register(&mut registry);
/// let config = ObserveConfig::new(SpanKind::Server);
/// let inbound = Observer::new(config, pipeline.sink(), Some(metrics));
/// // Per connection: `inbound.layer(peer)` (see `ObserveLayer`).
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Observer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ObserveConfig,
    sampler: Sampler,
    sink: SpanSink,
    metrics: Option<RequestMetrics>,
    stats: PropagationStats,
    inference: Option<ParentInference>,
}

/// What an [`Observer`] does for [inferred parents](crate::infer).
#[derive(Clone, Debug)]
pub enum ParentInference {
    /// Inbound: every request is in `InFlight` while it is observed.
    Register(InFlight),
    /// Outbound: a request that carries no trace context gets its parent
    /// from the inbound requests in flight, when only one is; with two or
    /// more, its span is a root with links to at most `max_links` of them.
    /// Every request is counted in `stats` by outcome.
    Infer {
        /// The workload's inbound requests in flight.
        inflight: InFlight,
        /// The most links of an ambiguous request's span.
        max_links: usize,
        /// Requests by outcome.
        stats: InferStats,
    },
}

/// Counts of trace-context headers that were present but malformed (and
/// ignored), per format. Cheap to clone; shared by the layers of an
/// [`Observer`].
#[derive(Clone, Debug, Default)]
pub struct PropagationStats {
    malformed: Arc<[AtomicU64; Format::ALL.len()]>,
}

/// A [`Layer`] that observes the requests of one connection: it wraps the
/// connection's request service in [`Observe`]. Made by [`Observer::layer`].
///
/// Each request gets a span (when sampled) and a histogram entry, both
/// ending with the response body. The request is passed on with the new
/// span's context injected in its trace-context headers (and, with
/// [`ObserveConfig::inner_context`], in its extensions); the response is
/// passed back with its body wrapped in an [`ObservedBody`], which ends the
/// observation. It needs nothing from the service inside but
/// `http::Request` in, `http::Response` out; in l7inspect-core it goes in
/// the per-request stack of `HttpLayer::with_requests`, made from the
/// connection's addresses ([`Peer`]).
///
/// # Example
///
/// ```
/// use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig};
/// use l7inspect_trace::{ObserveConfig, Observer, Peer};
/// use opentelemetry::trace::SpanKind;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let resource = ResourceConfig::default().to_resource("my-proxy", "0.1.0");
/// let pipeline = ExportPipeline::start(ExportConfig::default(), resource)?;
/// let observer = Observer::new(ObserveConfig::new(SpanKind::Server), pipeline.sink(), None);
/// let peer = Peer { client: "10.0.0.9:40000".parse()?, server: "10.0.0.5:8080".parse()? };
/// let svc = ServiceBuilder::new()
///     .layer(observer.layer(peer))
///     .service(service_fn(|req: http::Request<String>| async move {
///         // The server behind sees the request's span as its parent.
///         assert!(req.headers().contains_key("traceparent"));
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
///     }));
/// let resp = svc.oneshot(http::Request::get("/orders").body(String::new())?).await?;
/// drop(resp); // the observation ends with the response body
/// let span = &pipeline.recent().snapshot()[0];
/// assert_eq!(span.name, "GET");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

/// What the requests of one connection share.
#[derive(Debug)]
struct Conn {
    peer: Peer,
    /// The span's network fields, formatted on the first sampled request.
    network: OnceLock<Arc<NetworkFields>>,
    /// The target, for `server.address` when the request names no server;
    /// formatted on the first sampled request that needs it.
    target_address: OnceLock<Arc<str>>,
    /// What the last request of this connection used, for the next one.
    last: Mutex<Last>,
    /// The TLS session the requests arrived in (a terminated connection).
    tls: Option<Arc<TlsFields>>,
}

/// The last request's host and histogram series on a connection.
///
/// Why: the requests of one keep-alive connection almost always name the
/// same host and land in the same series (`GET`, `200`, `1.1`), and
/// finding a series in its family hashes the labels with SipHash under a
/// lock (about 600 instructions a request), as does interning a host for
/// the outbound label. Comparing with the last request's is a few
/// instructions; anything else takes the long way and becomes the last.
#[derive(Debug, Default)]
struct Last {
    /// The host as named, and its interned label value (outbound metrics).
    host: Option<(Arc<str>, Option<Arc<str>>)>,
    /// The `User-Agent`, for spans.
    user_agent: Option<Arc<str>>,
    http: Option<(metrics::HttpLabels, Histogram)>,
    rpc: Option<(metrics::RpcLabels, Histogram)>,
}

// === impl ObserveConfig ===

impl ObserveConfig {
    /// `kind`'s spans, sampled parent-based (roots always), W3C
    /// propagation, no queries.
    pub fn new(kind: SpanKind) -> Self {
        Self {
            kind,
            sampler: SamplerConfig::default(),
            propagators: Propagators::default(),
            record_query: false,
            inner_context: false,
            max_attribute_len: DEFAULT_MAX_ATTRIBUTE_LEN,
        }
    }
}

// === impl Observer ===

impl Observer {
    /// Observes with `config`, hands sampled spans to `sink`, and records
    /// the request histograms in `metrics` (none: no metrics).
    pub fn new(config: ObserveConfig, sink: SpanSink, metrics: Option<RequestMetrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                sampler: Sampler::new(config.sampler),
                config,
                sink,
                metrics,
                stats: PropagationStats::default(),
                inference: None,
            }),
        }
    }

    /// The same observer, taking part in [parent inference](crate::infer)
    /// as `inference` says: `Register` for the inbound observer, `Infer`
    /// for the outbound one of the same workload, sharing one `InFlight`.
    pub fn with_inference(self, inference: ParentInference) -> Self {
        let s = &self.shared;
        Self {
            shared: Arc::new(Shared {
                config: s.config.clone(),
                sampler: Sampler::new(s.config.sampler),
                sink: s.sink.clone(),
                metrics: s.metrics.clone(),
                stats: s.stats.clone(),
                inference: Some(inference),
            }),
        }
    }

    /// Counts of malformed trace-context headers seen by every layer made
    /// from this `Observer` (and its clones).
    pub fn stats(&self) -> PropagationStats {
        self.shared.stats.clone()
    }

    /// The layer for the requests of the connection between `peer`'s ends.
    pub fn layer(&self, peer: Peer) -> ObserveLayer {
        ObserveLayer {
            shared: self.shared.clone(),
            conn: Arc::new(Conn {
                peer,
                network: OnceLock::new(),
                target_address: OnceLock::new(),
                last: Mutex::default(),
                tls: None,
            }),
        }
    }
}

// === impl ObserveLayer ===

impl ObserveLayer {
    /// The same layer, for requests that arrived inside the TLS session
    /// `tls` (a connection the proxy terminated): their spans carry its
    /// `tls.*` attributes, and `url.scheme` is `https` where the request
    /// names none.
    pub fn with_tls(mut self, tls: Arc<TlsFields>) -> Self {
        match Arc::get_mut(&mut self.conn) {
            Some(conn) => conn.tls = Some(tls),
            None => {
                self.conn = Arc::new(Conn {
                    peer: self.conn.peer,
                    network: OnceLock::new(),
                    target_address: OnceLock::new(),
                    last: Mutex::default(),
                    tls: Some(tls),
                })
            }
        }
        self
    }
}

// === impl Shared ===

impl Shared {
    fn is_server(&self) -> bool {
        matches!(self.config.kind, SpanKind::Server)
    }
}

// === impl Conn ===

impl Conn {
    fn network(&self, server: bool) -> Arc<NetworkFields> {
        self.network
            .get_or_init(|| {
                // The network peer is the other end of this hop: the client
                // for a SERVER span, the server for a CLIENT span.
                let fields = if server {
                    NetworkFields::new(self.peer.client, Some(self.peer.client.ip()))
                } else {
                    NetworkFields::new(self.peer.server, None)
                };
                Arc::new(fields)
            })
            .clone()
    }

    fn target_address(&self) -> Arc<str> {
        self.target_address
            .get_or_init(|| self.peer.server.ip().to_string().into())
            .clone()
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        // Plain data, valid whatever a panicking holder left: ignore poison.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `host` as a shared string, and its interned label value when
    /// `metrics` is given; the last request's when it named the same host.
    fn host(&self, host: &str, metrics: Option<&RequestMetrics>) -> (Arc<str>, Option<Arc<str>>) {
        let mut last = self.last();
        if let Some((named, label)) = &last.host
            && &**named == host
            && (label.is_some() || metrics.is_none())
        {
            return (named.clone(), label.clone());
        }
        let named: Arc<str> = Arc::from(host);
        let label = metrics.map(|m| m.intern(host));
        last.host = Some((named.clone(), label.clone()));
        (named, label)
    }

    /// `ua` shared: the last request's when it is the same (a span would
    /// otherwise copy it per request).
    fn user_agent(&self, ua: &str) -> Arc<str> {
        let mut last = self.last();
        if let Some(same) = &last.user_agent
            && &**same == ua
        {
            return same.clone();
        }
        let ua: Arc<str> = Arc::from(ua);
        last.user_agent = Some(ua.clone());
        ua
    }

    /// Observes `seconds` in `family`'s series for `labels` (HTTP).
    fn observe_http(
        &self,
        family: &Family<metrics::HttpLabels, Histogram>,
        labels: metrics::HttpLabels,
        seconds: f64,
    ) {
        observe(&mut self.last().http, family, labels, seconds);
    }

    /// [`observe_http`](Self::observe_http) for gRPC calls.
    fn observe_rpc(
        &self,
        family: &Family<metrics::RpcLabels, Histogram>,
        labels: metrics::RpcLabels,
        seconds: f64,
    ) {
        observe(&mut self.last().rpc, family, labels, seconds);
    }
}

/// Observes `seconds` in the series for `labels`: `last`'s when it is that
/// series, else `family`'s, which becomes `last`.
fn observe<L>(
    last: &mut Option<(L, Histogram)>,
    family: &Family<L, Histogram>,
    labels: L,
    seconds: f64,
) where
    L: Clone + std::hash::Hash + Eq,
{
    match last {
        Some((l, h)) if *l == labels => h.observe(seconds),
        _ => {
            let h = family.get_or_create(&labels).clone();
            h.observe(seconds);
            *last = Some((labels, h));
        }
    }
}

// === impl PropagationStats ===

impl PropagationStats {
    /// How many requests carried a malformed header of `format`.
    pub fn malformed(&self, format: Format) -> u64 {
        self.malformed[index(format)].load(Ordering::Relaxed)
    }

    fn record(&self, formats: FormatSet) {
        for f in formats.iter() {
            self.malformed[index(f)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `format`'s position in [`Format::ALL`].
fn index(format: Format) -> usize {
    Format::ALL
        .iter()
        .position(|f| *f == format)
        .expect("Format::ALL lists every format")
}

// === impl ObserveLayer ===

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe::new(inner, self.shared.clone(), self.conn.clone())
    }
}
