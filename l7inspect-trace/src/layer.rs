//! [`TraceLayer`]: one span per HTTP request, SERVER kind on inbound and
//! CLIENT kind on outbound, joined to the caller's trace.
//!
//! # Behaviour
//!
//! - **When**: the span starts when the request head reaches the layer and
//!   ends when the response body and trailers are done, or when the response
//!   is dropped unfinished (the client went away, the stream was reset).
//! - **Context**: the caller's context is extracted with the configured
//!   [`Propagators`] and becomes the parent; the new span's context is
//!   injected into the forwarded request in the formats the request arrived
//!   with (the first configured format if none), so the next hop, or the
//!   application behind an inbound sidecar, continues the trace. Malformed
//!   headers are ignored (logged at debug).
//! - **Names and attributes** follow the OpenTelemetry semantic conventions
//!   for HTTP and RPC spans: name `{method}` (`HTTP` for unknown methods), or
//!   `{rpc.service}/{rpc.method}` for gRPC.
//! - **Status**: Error for 5xx on SERVER spans, for 4xx and 5xx on CLIENT
//!   spans; for gRPC per the RPC conventions (`grpc-status` from the trailers,
//!   or from the headers of a trailers-only response). A gRPC call whose
//!   response is dropped before its status arrived is recorded as CANCELLED
//!   (1).
//! - **Tunnels**: when the response carries a
//!   [`CancellationToken`](tokio_util::sync::CancellationToken) in its
//!   extensions (the proxy's sign that the exchange became a tunnel: a
//!   WebSocket `101`, a `CONNECT`), the span ends when the token is
//!   cancelled, so it lasts as long as the tunnel.

use crate::{
    propagation::{Format, FormatSet, Propagators},
    sampling::CallerSampling,
};
use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    Context as OtelContext, KeyValue, StringValue, Value,
    trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use opentelemetry_semantic_conventions::attribute as semconv;
use pin_project::{pin_project, pinned_drop};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

/// What every traced request of a sidecar direction shares.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// `Server` for inbound requests, `Client` for outbound.
    pub kind: SpanKind,
    /// The formats extracted and injected.
    pub propagators: Propagators,
    /// Record `url.query` (off by default: queries carry secrets).
    pub record_query: bool,
}

/// The two ends of the connection a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub client: SocketAddr,
    /// Where the request goes: the connection's target.
    pub server: SocketAddr,
}

/// A tracer and its settings, shared by every connection of one direction;
/// [`Tracing::layer`] makes the per-connection layer.
#[derive(Clone, Debug)]
pub struct Tracing {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tracer: SdkTracer,
    config: TraceConfig,
    stats: PropagationStats,
}

/// Counts of trace-context headers that were present but malformed (and
/// ignored), per format. Cheap to clone; shared by the layers of a [`Tracing`].
#[derive(Clone, Debug, Default)]
pub struct PropagationStats {
    malformed: Arc<[AtomicU64; Format::ALL.len()]>,
}

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

/// A [`Layer`] that traces the requests of one connection.
#[derive(Clone, Debug)]
pub struct TraceLayer {
    shared: Arc<Shared>,
    conn: Arc<ConnAttributes>,
}

/// Traces each request and calls the inner service with the new span's
/// context injected.
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
    shared: Arc<Shared>,
    conn: Arc<ConnAttributes>,
}

/// The attributes that are the same for every request of a connection,
/// formatted once per connection.
#[derive(Debug)]
struct ConnAttributes {
    peer: Peer,
    /// `client.address`, `network.peer.address`, `network.peer.port`.
    attributes: Vec<KeyValue>,
    /// The target, for `server.address`/`server.port` when the request has
    /// no `Host`/`:authority`.
    server_address: StringValue,
}

/// The future of [`Trace`]: the inner future, then the response with its
/// body wrapped in a [`TracedBody`].
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    span: Option<RequestSpan>,
}

/// A response body that ends its request's span when it ends.
#[pin_project(PinnedDrop)]
pub struct TracedBody<B> {
    #[pin]
    inner: B,
    span: Option<RequestSpan>,
    bytes: u64,
}

/// An open request span and what its end needs to know.
struct RequestSpan {
    span: Span,
    kind: SpanKind,
    grpc: bool,
}

// === impl Tracing ===

impl Tracing {
    /// Traces with `tracer` and `config`.
    pub fn new(tracer: SdkTracer, config: TraceConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                tracer,
                config,
                stats: PropagationStats::default(),
            }),
        }
    }

    /// Counts of malformed trace-context headers seen by every layer made
    /// from this `Tracing` (and its clones).
    pub fn stats(&self) -> PropagationStats {
        self.shared.stats.clone()
    }

    /// The layer for the requests of the connection between `peer`'s ends.
    pub fn layer(&self, peer: Peer) -> TraceLayer {
        let kind = &self.shared.config.kind;
        // The network peer is the other end of this hop: the client for a
        // SERVER span, the server for a CLIENT span.
        let net_peer = if matches!(kind, SpanKind::Server) {
            peer.client
        } else {
            peer.server
        };
        // Shared strings: each request's span clones these by reference count.
        let ip = |addr: SocketAddr| StringValue::from(Arc::<str>::from(addr.ip().to_string()));
        let mut attributes = vec![
            KeyValue::new(semconv::NETWORK_PEER_ADDRESS, ip(net_peer)),
            KeyValue::new(semconv::NETWORK_PEER_PORT, i64::from(net_peer.port())),
        ];
        if matches!(kind, SpanKind::Server) {
            attributes.push(KeyValue::new(semconv::CLIENT_ADDRESS, ip(peer.client)));
        }
        TraceLayer {
            shared: self.shared.clone(),
            conn: Arc::new(ConnAttributes {
                peer,
                attributes,
                server_address: ip(peer.server),
            }),
        }
    }
}

// === impl TraceLayer ===

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            shared: self.shared.clone(),
            conn: self.conn.clone(),
        }
    }
}

// === impl Trace ===

impl<S, ReqB, ResB> Service<Request<ReqB>> for Trace<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let config = &self.shared.config;
        let extracted = config.propagators.extract(req.headers());
        if !extracted.malformed.is_empty() {
            self.shared.stats.record(extracted.malformed);
            tracing::debug!(formats = ?extracted.malformed, "ignoring malformed trace context headers");
        }
        let mut parent = match &extracted.parent {
            Some(cx) => OtelContext::new().with_remote_span_context(cx.clone()),
            None => OtelContext::new(),
        };
        // B3 decisions the parent's flags cannot carry (rare: no cost
        // otherwise), for the sampler (`crate::sampling`).
        match (&extracted.parent, extracted.sampled) {
            (None, Some(sampled)) => parent = parent.with_value(CallerSampling::Decided(sampled)),
            (Some(_), None) => parent = parent.with_value(CallerSampling::Deferred),
            _ => {}
        }
        let (name, grpc) = span_name(&req);
        // Per request: the attributes are built only for a span that records
        // (sampled), into a vector sized for them up front.
        let builder = self
            .shared
            .tracer
            .span_builder(name)
            .with_kind(config.kind.clone())
            .with_attributes(Vec::with_capacity(MAX_REQUEST_ATTRIBUTES));
        let mut span = self.shared.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            request_attributes(&req, &self.conn, config, grpc, &mut span);
        }
        let grpc = grpc.is_some();
        config
            .propagators
            .inject(req.headers_mut(), span.span_context(), extracted.carried);
        ResponseFuture {
            inner: self.inner.call(req),
            span: Some(RequestSpan {
                span,
                kind: config.kind.clone(),
                grpc,
            }),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut span = this.span.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(resp) => {
                span.on_response(resp.status().as_u16(), resp.headers());
                let span = match resp.extensions().get::<CancellationToken>() {
                    Some(tunnel_closed) => {
                        let closed = tunnel_closed.clone();
                        tokio::spawn(async move {
                            closed.cancelled().await;
                            span.finish(0, false);
                        });
                        None
                    }
                    None => Some(span),
                };
                Ok(resp.map(|inner| TracedBody {
                    inner,
                    span,
                    bytes: 0,
                }))
            }
            Err(e) => {
                span.fail("_OTHER");
                Err(e)
            }
        })
    }
}

/// The most attributes a request span gets (the connection's, the
/// request's, and the response's, set when it arrives).
const MAX_REQUEST_ATTRIBUTES: usize = 20;

/// The span name (`{method}`, or `{service}/{method}` for gRPC), and the
/// gRPC service and method when the request is a gRPC call.
fn span_name<B>(req: &Request<B>) -> (std::borrow::Cow<'static, str>, Option<(&str, &str)>) {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        .then(|| grpc_service_method(req.uri().path()))
        .flatten();
    match grpc {
        Some(_) => (req.uri().path()[1..].to_owned().into(), grpc),
        None => match method_name(req.method()) {
            (method, true) => (method.into(), None),
            (_, false) => ("HTTP".into(), None),
        },
    }
}

/// Sets the request's attributes on its (recording) span.
#[allow(deprecated)] // rpc.system/rpc.service: what today's backends show; see RequestSpan::on_grpc_status.
fn request_attributes<B>(
    req: &Request<B>,
    conn: &ConnAttributes,
    config: &TraceConfig,
    grpc: Option<(&str, &str)>,
    span: &mut Span,
) {
    for kv in &conn.attributes {
        span.set_attribute(kv.clone());
    }
    let (method, known) = method_name(req.method());
    span.set_attribute(KeyValue::new(semconv::HTTP_REQUEST_METHOD, method));
    if !known {
        span.set_attribute(KeyValue::new(
            semconv::HTTP_REQUEST_METHOD_ORIGINAL,
            req.method().as_str().to_owned(),
        ));
    }
    let uri = req.uri();
    span.set_attribute(KeyValue::new(semconv::URL_PATH, uri.path().to_owned()));
    let scheme = match uri.scheme_str() {
        None | Some("http") => Value::from("http"),
        Some("https") => Value::from("https"),
        Some(other) => Value::from(other.to_owned()),
    };
    span.set_attribute(KeyValue::new(semconv::URL_SCHEME, scheme));
    if config.record_query
        && let Some(q) = uri.query()
    {
        span.set_attribute(KeyValue::new(semconv::URL_QUERY, q.to_owned()));
    }
    // server.address/port: the request's authority (HTTP/2) or Host header
    // (HTTP/1), as the client named the server; else the connection target.
    let named = match uri.authority() {
        Some(a) => Some((a.host(), a.port_u16())),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(split_host_port),
    };
    let (address, port) = match named {
        Some((host, port)) => (
            Value::from(host.to_owned()),
            port.unwrap_or(conn.peer.server.port()),
        ),
        None => (
            Value::String(conn.server_address.clone()),
            conn.peer.server.port(),
        ),
    };
    span.set_attribute(KeyValue::new(semconv::SERVER_ADDRESS, address));
    span.set_attribute(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
    span.set_attribute(KeyValue::new(
        semconv::NETWORK_PROTOCOL_VERSION,
        match req.version() {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "1.1",
        },
    ));
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        span.set_attribute(KeyValue::new(semconv::USER_AGENT_ORIGINAL, ua.to_owned()));
    }
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
    {
        span.set_attribute(KeyValue::new(semconv::HTTP_REQUEST_BODY_SIZE, len));
    }
    if let Some((service, rpc_method)) = grpc {
        span.set_attribute(KeyValue::new(semconv::RPC_SYSTEM, "grpc"));
        span.set_attribute(KeyValue::new(semconv::RPC_SERVICE, service.to_owned()));
        span.set_attribute(KeyValue::new(semconv::RPC_METHOD, rpc_method.to_owned()));
    }
}

/// `host[:port]` or `[v6]:port` from a `Host` header, without allocating
/// (unlike parsing it as a URI authority). `None` when it is not one.
fn split_host_port(value: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match value.strip_prefix('[') {
        // An IPv6 literal: the brackets belong to the authority, as in
        // http::uri::Authority::host.
        Some(rest) => {
            let (_, after) = rest.split_once(']')?;
            let host = &value[..value.len() - after.len()];
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return None,
            }
        }
        None => match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        },
    };
    if host.is_empty() || host.contains(|c: char| c.is_ascii_whitespace() || c == '@' || c == '/') {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(p) => Some((host, Some(p.parse().ok()?))),
    }
}

/// The method's semantic-convention value and whether it is a known one
/// (unknown methods are `_OTHER`, so label values stay bounded).
fn method_name(method: &http::Method) -> (&'static str, bool) {
    use http::Method as M;
    let known = match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::CONNECT => "CONNECT",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::PATCH => "PATCH",
        _ if method.as_str() == "QUERY" => "QUERY",
        _ => return ("_OTHER", false),
    };
    (known, true)
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

// === impl RequestSpan ===

/// gRPC codes that are errors on a SERVER span (RPC semantic conventions);
/// on a CLIENT span every code but OK is.
const GRPC_SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];
const GRPC_CANCELLED: i64 = 1;

impl RequestSpan {
    fn on_response(&mut self, status: u16, headers: &HeaderMap) {
        self.span.set_attribute(KeyValue::new(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            i64::from(status),
        ));
        let error = match self.kind {
            SpanKind::Server => status >= 500,
            _ => status >= 400,
        };
        if error {
            self.span
                .set_attribute(KeyValue::new(semconv::ERROR_TYPE, status.to_string()));
            self.span.set_status(Status::error(""));
        }
        // A trailers-only gRPC response carries its status in the headers.
        if self.grpc
            && let Some(code) = grpc_status(headers)
        {
            self.on_grpc_status(code);
        }
    }

    #[allow(deprecated)] // rpc.grpc.status_code: the attribute gRPC backends read today.
    fn on_grpc_status(&mut self, code: i64) {
        self.grpc = false; // recorded; later trailers cannot override it
        self.span
            .set_attribute(KeyValue::new(semconv::RPC_GRPC_STATUS_CODE, code));
        let error = match self.kind {
            SpanKind::Server => GRPC_SERVER_ERRORS.contains(&code),
            _ => code != 0,
        };
        if error {
            self.span
                .set_attribute(KeyValue::new(semconv::ERROR_TYPE, code.to_string()));
            self.span.set_status(Status::error(""));
        }
    }

    fn fail(&mut self, error_type: &'static str) {
        self.span
            .set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
        self.span.set_status(Status::error(""));
        self.span.end();
    }

    fn finish(mut self, response_bytes: u64, cancelled: bool) {
        self.span.set_attribute(KeyValue::new(
            semconv::HTTP_RESPONSE_BODY_SIZE,
            response_bytes as i64,
        ));
        if cancelled && self.grpc {
            self.on_grpc_status(GRPC_CANCELLED);
        }
        self.span.end();
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

// === impl TracedBody ===

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    *this.bytes += data.remaining() as u64;
                } else if let (Some(trailers), Some(span)) = (f.trailers_ref(), this.span.as_mut())
                    && span.grpc
                    && let Some(code) = grpc_status(trailers)
                {
                    span.on_grpc_status(code);
                }
            }
            Some(Err(_)) => {
                if let Some(mut span) = this.span.take() {
                    span.fail("_OTHER");
                }
            }
            None => {
                if let Some(span) = this.span.take() {
                    span.finish(*this.bytes, false);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[pinned_drop]
impl<B> PinnedDrop for TracedBody<B> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(span) = this.span.take() {
            // Dropped before its end: the client went away or reset the stream.
            span.finish(*this.bytes, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::SamplerConfig, sampling::CallerAwareSampler};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use std::sync::Mutex;
    use tower::{ServiceExt, service_fn};

    #[test]
    fn split_host_port_reads_host_headers_as_authorities_do() {
        for (value, want) in [
            ("example.com", Some(("example.com", None))),
            ("example.com:8080", Some(("example.com", Some(8080)))),
            ("10.0.0.1:80", Some(("10.0.0.1", Some(80)))),
            ("[::1]", Some(("[::1]", None))),
            ("[::1]:9000", Some(("[::1]", Some(9000)))),
            ("example.com:http", None),
            ("example.com:70000", None),
            ("[::1", None),
            ("[::1]x", None),
            ("", None),
            ("user@example.com", None),
        ] {
            assert_eq!(split_host_port(value), want, "{value:?}");
            // Where both accept the value, they agree.
            if let (Some((host, port)), Ok(a)) = (want, value.parse::<http::uri::Authority>()) {
                assert_eq!((host, port), (a.host(), a.port_u16()), "{value:?}");
            }
        }
    }

    const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_SPAN: &str = "00f067aa0ba902b7";

    struct Harness {
        exporter: InMemorySpanExporter,
        provider: SdkTracerProvider,
        tracing: Tracing,
    }

    fn harness(kind: SpanKind) -> Harness {
        harness_with(kind, SamplerConfig::ParentBasedAlwaysOn)
    }

    fn harness_with(kind: SpanKind, sampler: SamplerConfig) -> Harness {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(CallerAwareSampler::new(sampler))
            .build();
        let tracing = Tracing::new(
            provider.tracer("test"),
            TraceConfig {
                kind,
                propagators: Propagators::default(),
                record_query: false,
            },
        );
        Harness {
            exporter,
            provider,
            tracing,
        }
    }

    impl Harness {
        fn spans(&self) -> Vec<SpanData> {
            self.provider.force_flush().unwrap();
            self.exporter.get_finished_spans().unwrap()
        }
    }

    fn peer() -> Peer {
        Peer {
            client: "10.0.0.9:40000".parse().unwrap(),
            server: "10.0.0.5:8080".parse().unwrap(),
        }
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// Calls a traced service answering `status`, `headers` and `body`;
    /// returns the headers of the request it forwarded.
    async fn call(
        h: &Harness,
        req: Request<Full<Bytes>>,
        status: u16,
        resp_headers: &[(&'static str, &'static str)],
        read_body: bool,
    ) -> HeaderMap {
        let seen = Arc::new(Mutex::new(HeaderMap::new()));
        let seen2 = seen.clone();
        let resp_headers: Vec<_> = resp_headers.to_vec();
        let inner = service_fn(move |req: Request<Full<Bytes>>| {
            *seen2.lock().unwrap() = req.headers().clone();
            let mut resp = Response::builder().status(status);
            for (k, v) in &resp_headers {
                resp = resp.header(*k, *v);
            }
            async move {
                Ok::<_, std::convert::Infallible>(
                    resp.body(Full::new(Bytes::from_static(b"hello"))).unwrap(),
                )
            }
        });
        let svc = h.tracing.layer(peer()).layer(inner);
        let resp = svc.oneshot(req).await.unwrap();
        if read_body {
            resp.into_body().collect().await.unwrap();
        }
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn server_span_continues_the_w3c_trace_and_injects_itself() {
        let h = harness(SpanKind::Server);
        let req = Request::get("/orders/7?secret=1")
            .header("host", "shop.example:8080")
            .header("user-agent", "curl/8")
            .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
            .body(Full::default())
            .unwrap();
        let forwarded = call(&h, req, 200, &[], true).await;
        let spans = h.spans();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "GET");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_hex(PARENT_TRACE).unwrap()
        );
        assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT_SPAN).unwrap());
        assert_eq!(span.status, Status::Unset);
        let s = |v: &str| Some(Value::from(v.to_owned()));
        assert_eq!(attr(span, semconv::HTTP_REQUEST_METHOD).cloned(), s("GET"));
        assert_eq!(attr(span, semconv::URL_PATH).cloned(), s("/orders/7"));
        assert_eq!(
            attr(span, semconv::URL_QUERY),
            None,
            "queries are off by default"
        );
        assert_eq!(
            attr(span, semconv::SERVER_ADDRESS).cloned(),
            s("shop.example")
        );
        assert_eq!(attr(span, semconv::SERVER_PORT), Some(&Value::I64(8080)));
        assert_eq!(attr(span, semconv::CLIENT_ADDRESS).cloned(), s("10.0.0.9"));
        assert_eq!(
            attr(span, semconv::NETWORK_PEER_PORT),
            Some(&Value::I64(40000))
        );
        assert_eq!(
            attr(span, semconv::USER_AGENT_ORIGINAL).cloned(),
            s("curl/8")
        );
        assert_eq!(
            attr(span, semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(&Value::I64(200))
        );
        assert_eq!(
            attr(span, semconv::HTTP_RESPONSE_BODY_SIZE),
            Some(&Value::I64(5))
        );
        // The forwarded request carries the new span as its parent.
        let tp = forwarded.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            tp,
            format!("00-{PARENT_TRACE}-{}-01", span.span_context.span_id())
        );
    }

    #[tokio::test]
    async fn error_status_depends_on_kind() {
        for (kind, status, error) in [
            (SpanKind::Server, 404, false),
            (SpanKind::Server, 503, true),
            (SpanKind::Client, 404, true),
            (SpanKind::Client, 302, false),
        ] {
            let h = harness(kind.clone());
            let req = Request::get("/").body(Full::default()).unwrap();
            call(&h, req, status, &[], true).await;
            let span = &h.spans()[0];
            assert_eq!(
                matches!(span.status, Status::Error { .. }),
                error,
                "{kind:?} {status}"
            );
            assert_eq!(
                attr(span, semconv::ERROR_TYPE).is_some(),
                error,
                "{kind:?} {status}"
            );
        }
    }

    /// `b3: 0` without ids: the caller's deny wins over an always-on
    /// sampler; `b3: 1` wins over a ratio of 0. Either way the forwarded
    /// request says so, under the new root's ids.
    #[tokio::test]
    async fn a_b3_sampling_only_header_decides() {
        for (sampler, b3, recorded) in [
            (SamplerConfig::ParentBasedAlwaysOn, "0", false),
            (SamplerConfig::ParentBasedTraceIdRatio(0.0), "1", true),
        ] {
            let h = harness_with(SpanKind::Server, sampler);
            let req = Request::get("/")
                .header("b3", b3)
                .body(Full::default())
                .unwrap();
            let forwarded = call(&h, req, 200, &[], true).await;
            assert_eq!(h.spans().len(), usize::from(recorded), "b3: {b3}");
            let out = forwarded.get("b3").unwrap().to_str().unwrap();
            assert!(out.ends_with(&format!("-{b3}")), "b3: {b3} → {out}");
        }
    }

    /// A B3 context without sampling state (the caller deferred): decided as
    /// a new root would be, continuing the caller's trace, where the SDK
    /// alone would read "not sampled" and drop the whole trace.
    #[tokio::test]
    async fn a_deferred_b3_context_is_sampled_as_a_root() {
        let h = harness(SpanKind::Server);
        let req = Request::get("/")
            .header("x-b3-traceid", PARENT_TRACE)
            .header("x-b3-spanid", PARENT_SPAN)
            .body(Full::default())
            .unwrap();
        let forwarded = call(&h, req, 200, &[], true).await;
        let spans = h.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].span_context.trace_id(),
            TraceId::from_hex(PARENT_TRACE).unwrap()
        );
        assert_eq!(
            spans[0].parent_span_id,
            SpanId::from_hex(PARENT_SPAN).unwrap()
        );
        assert_eq!(forwarded.get("x-b3-sampled").unwrap(), "1");
    }

    #[tokio::test]
    async fn malformed_context_is_ignored_and_counted() {
        let h = harness(SpanKind::Server);
        let req = Request::get("/")
            .header("traceparent", "00-not-hex-01")
            .body(Full::default())
            .unwrap();
        let forwarded = call(&h, req, 200, &[], true).await;
        let span = &h.spans()[0];
        // A new root: no parent, a fresh valid traceparent forwarded.
        assert_eq!(span.parent_span_id, SpanId::INVALID);
        let tp = forwarded.get("traceparent").unwrap().to_str().unwrap();
        assert!(tp.starts_with("00-") && tp.contains(&span.span_context.span_id().to_string()));
        assert_eq!(h.tracing.stats().malformed(Format::TraceContext), 1);
        assert_eq!(h.tracing.stats().malformed(Format::B3), 0);
    }

    #[tokio::test]
    async fn a_tunnel_span_lasts_until_the_tunnel_closes() {
        let h = harness(SpanKind::Server);
        let closed = CancellationToken::new();
        let token = closed.clone();
        let inner = service_fn(move |_req: Request<Full<Bytes>>| {
            let mut resp = Response::builder()
                .status(101)
                .body(Full::new(Bytes::new()))
                .unwrap();
            resp.extensions_mut().insert(token.clone());
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        let req = Request::get("/ws").body(Full::default()).unwrap();
        let resp = h
            .tracing
            .layer(peer())
            .layer(inner)
            .oneshot(req)
            .await
            .unwrap();
        drop(resp);
        assert!(
            h.spans().is_empty(),
            "the span ended before the tunnel closed"
        );
        closed.cancel();
        let mut spans = Vec::new();
        for _ in 0..1000 {
            spans = h.spans();
            if !spans.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attr(&spans[0], semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(&Value::I64(101))
        );
    }

    #[tokio::test]
    async fn unknown_methods_are_other() {
        let h = harness(SpanKind::Client);
        let req = Request::builder()
            .method("PROPFIND")
            .uri("/dav/")
            .body(Full::default())
            .unwrap();
        call(&h, req, 207, &[], true).await;
        let span = &h.spans()[0];
        assert_eq!(span.name, "HTTP");
        assert_eq!(
            attr(span, semconv::HTTP_REQUEST_METHOD).cloned(),
            Some(Value::from("_OTHER"))
        );
    }

    #[tokio::test]
    #[allow(deprecated)]
    async fn grpc_status_from_trailers_only_headers_and_cancellation() {
        let grpc_req = || {
            Request::post("/shop.Orders/Get")
                .header("content-type", "application/grpc")
                .body(Full::default())
                .unwrap()
        };
        let h = harness(SpanKind::Client);
        call(&h, grpc_req(), 200, &[("grpc-status", "14")], true).await;
        let span = &h.spans()[0];
        assert_eq!(span.name, "shop.Orders/Get");
        assert_eq!(
            attr(span, semconv::RPC_SERVICE).cloned(),
            Some(Value::from("shop.Orders"))
        );
        assert_eq!(
            attr(span, semconv::RPC_METHOD).cloned(),
            Some(Value::from("Get"))
        );
        assert_eq!(
            attr(span, semconv::RPC_GRPC_STATUS_CODE),
            Some(&Value::I64(14))
        );
        assert!(matches!(span.status, Status::Error { .. }));

        // The body is dropped before the status arrived: CANCELLED.
        let h = harness(SpanKind::Server);
        call(&h, grpc_req(), 200, &[], false).await;
        let span = &h.spans()[0];
        assert_eq!(
            attr(span, semconv::RPC_GRPC_STATUS_CODE),
            Some(&Value::I64(1))
        );
        // CANCELLED is not an error on a SERVER span.
        assert_eq!(span.status, Status::Unset);
    }
}
