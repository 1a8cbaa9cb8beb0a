//! [`HttpLayer`]: serves connections detected as HTTP/1 (hyper's server,
//! and towards the server a client of our own, driven by the requests
//! themselves: see `http1`) or HTTP/2 (with `h2` directly on both sides: no
//! task per request; see `http2`) and
//! forwards each request over the connection's own upstream connection;
//! every other connection goes to the inner service (passthrough). Request
//! services take a [`RequestBody`] and answer with a body of their choice;
//! [`Forward`]'s is a [`ResponseBody`].

mod answer;
mod body;
mod deadline;
mod failure;
mod forward;
mod headers;
mod http1;
mod http2;
mod wake;

pub use body::{RequestBody, ResponseBody, local_response};
pub use failure::{FailureKind, ProxyError};
pub use forward::{Forward, ResponseFuture as ForwardFuture, UpstreamClosed};
pub use headers::remove_hop_by_hop;

use crate::{
    connect::Connecting,
    meta::{ConnMeta, Direction},
    metrics::{Metrics, Timeout},
};
use answer::AnswerErrors;
use bytes::Bytes;
use deadline::{Activity, Deadlines, HeadWatch, ResponseEnd};
use forward::Version;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use l7inspect_detect::{Detected, Outcome, Protocol};
use pin_project::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{BoxError, Layer, Service};
use wake::WakeFlag;

/// Builds the per-request service of each HTTP connection around its
/// [`Forward`]: the hook where request-level layers (spans and request
/// metrics: `l7inspect_trace::Observe`, and layers of your own) go, with
/// the connection's metadata at hand, so nothing is looked up per request.
///
/// A closure `Fn(&ConnMeta, Forward) -> S` is one, so a stack needs no type
/// of its own, nor its type named:
///
/// ```
/// # use l7inspect_core::{ConnMeta, Forward, HttpLayer};
/// # use tokio_util::sync::CancellationToken;
/// use std::time::Duration;
/// use tower::ServiceBuilder;
///
/// let layer = HttpLayer::new(CancellationToken::new()).with_requests(
///     |_meta: &ConnMeta, forward: Forward| {
///         ServiceBuilder::new()
///             .timeout(Duration::from_secs(30))
///             .service(forward)
///     },
/// );
/// ```
///
/// The service may fail (`Error: Into<BoxError>`, as tower's `Timeout`,
/// `LoadShed` and `Filter` do): the client then gets what it gets when the
/// server cannot be reached, `502 Bad Gateway` ("request failed in the
/// proxy": the error's own text stays in the log), or for gRPC a
/// trailers-only response with status 14 (UNAVAILABLE), and the error is
/// logged at debug. A layer outside the failing one sees the error, not the 502:
/// `l7inspect_trace::Observe` records it as that 502.
pub trait NewRequestService: Clone + Send + Sync + 'static {
    /// The per-request service.
    type Service: Service<
            Request<RequestBody>,
            Response = Response<Self::Body>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static;
    /// Its response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;

    /// The service for the requests of the connection described by `meta`.
    fn new_service(&self, meta: &ConnMeta, forward: Forward) -> Self::Service;
}

impl<F, S, B> NewRequestService for F
where
    F: Fn(&ConnMeta, Forward) -> S + Clone + Send + Sync + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error: Into<BoxError>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type Service = S;
    type Body = B;

    fn new_service(&self, meta: &ConnMeta, forward: Forward) -> S {
        self(meta, forward)
    }
}

/// Settings of the HTTP proxying, the same for every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Keep the case of HTTP/1 header names as each side sent them, for
    /// peers that (against RFC 9110) depend on it. Off by default: names are
    /// lowercased, which spares two header maps per request (about a fifth of
    /// the proxy's per-request instructions; see docs/benchmarks.md).
    pub preserve_header_case: bool,
    /// How long a client may take to send a whole request head, from its
    /// first byte (more bytes do not extend it). Default 10 s; `None`: no
    /// bound. HTTP/1: past it the client is answered `408` and the
    /// connection closed. HTTP/2: a header block (HEADERS or PUSH_PROMISE
    /// and its CONTINUATION frames), from its first frame header to the end
    /// of the frame that carries END_HEADERS; the connection cannot carry
    /// anything else meanwhile, so on expiry it is closed (GOAWAY
    /// `NO_ERROR`, then the TCP connection). Counted as
    /// `l7inspect_timeouts_total{reason="request_head"}`.
    pub request_head_timeout: Option<Duration>,
    /// How long a connection may stay idle between requests before it is
    /// closed (gracefully; HTTP/2: a GOAWAY once no stream is open). Default 10 minutes: longer than the usual
    /// client pools keep an idle connection (Go's 90 s, OkHttp's 5 min), so
    /// the proxy is not the one to close a pooled connection; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long the server may take to start its response (its head), from
    /// the moment the proxy starts forwarding the request: a new upstream
    /// connection, if one is needed, and the part of the request body sent
    /// before the server answers count too. Past it the client gets
    /// `504 Gateway Timeout` (gRPC: status 4, DEADLINE_EXCEEDED). Default
    /// `None`: long polls and gRPC streams whose server sends its headers
    /// with the first message must not be cut by a proxy they do not know.
    pub response_timeout: Option<Duration>,
    /// The largest HTTP/1 request head, in bytes (at least 8 KiB); a larger
    /// one is answered `431`. It also bounds what a client that never
    /// finishes its head holds in memory (hyper's read buffer, up to about
    /// this much more). Default 32 KiB, the largest head nginx takes (4 ×
    /// 8 KiB buffers; haproxy's whole buffer is 16 KiB, Envoy's limit 60
    /// KiB): 500 clients that each stop just short of it hold about 20 MiB
    /// for the head timeout (see docs/robustness.md); hyper's own default,
    /// 400 KiB, let 500 such clients hold 200 MB.
    pub max_request_head: usize,
    /// Limits of the HTTP/2 server that clients talk to.
    pub http2: Http2Config,
}

impl HttpConfig {
    /// [`Self::request_head_timeout`]'s default.
    pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
    /// [`Self::idle_timeout`]'s default.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    /// [`Self::max_request_head`]'s default.
    pub const DEFAULT_MAX_REQUEST_HEAD: usize = 32 * 1024;
    /// The smallest [`Self::max_request_head`] (hyper's smallest buffer).
    pub const MIN_MAX_REQUEST_HEAD: usize = 8 * 1024;
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            preserve_header_case: false,
            request_head_timeout: Some(Self::DEFAULT_REQUEST_HEAD_TIMEOUT),
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
            response_timeout: None,
            max_request_head: Self::DEFAULT_MAX_REQUEST_HEAD,
            http2: Http2Config::default(),
        }
    }
}

/// Limits of the proxy's HTTP/2 server (the side clients talk to): what one
/// connection may cost in memory and CPU before it is refused or closed.
///
/// The first four are SETTINGS and counters of the `h2` crate; the last is
/// the proxy's own. Every close they cause is counted in
/// `l7inspect_http2_connections_closed_total{direction,reason}` (see
/// [`Http2Close`](crate::Http2Close)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Config {
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest request head, as HPACK
    /// counts it (names, values and 32 bytes per field, decoded), default
    /// 16 KiB. A header block that decodes to more is answered `431` and
    /// its stream closed; one that decodes to four times more closes the
    /// connection (GOAWAY ENHANCE_YOUR_CALM, `h2`'s own bound). It also
    /// bounds what an unfinished header block holds: `h2` takes at most
    /// about a quarter more CONTINUATION frames than this size needs.
    ///
    /// Why 16 KiB (hyper's default, what the proxy has always announced,
    /// and haproxy's whole-head buffer), while an HTTP/1 head may be
    /// larger: HPACK lets a block of a few bytes decode to many fields,
    /// and `h2` decodes a rejected block up to four times this size before
    /// giving up, so the CPU one rejected block costs grows with this
    /// limit. With two reconnecting HPACK-bomb clients, a normal client's
    /// median latency grew 2.8× at 16 KiB and 5.9× at 64 KiB (see
    /// docs/robustness.md). An HTTP/1 head costs what its bytes cost.
    pub max_header_list_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open at
    /// once (default 200); past it a new stream is refused with
    /// RST_STREAM(REFUSED_STREAM), which clients retry.
    pub max_concurrent_streams: u32,
    /// Streams a client may reset before the proxy took them in, in a row,
    /// before the connection is closed with GOAWAY ENHANCE_YOUR_CALM (the
    /// HTTP/2 rapid-reset attack; default 20, as `h2`'s).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the proxy may reset because of the client's errors (a
    /// malformed request, a refused stream), over the connection's life,
    /// before it is closed with GOAWAY ENHANCE_YOUR_CALM (default 1024, as
    /// hyper's).
    pub max_local_error_reset_streams: usize,
    /// Request header blocks a connection may have rejected (over
    /// `max_header_list_size`, malformed, or refused) before it is closed
    /// with GOAWAY ENHANCE_YOUR_CALM (default 8). Each one was decoded in
    /// full (HPACK state is per connection) and a small block can decode to
    /// many fields, so this bounds the CPU one connection can cost with
    /// header blocks it knows will fail (an HPACK bomb); a well-behaved
    /// client seldom has even one. Not applied while the connection drains
    /// (its streams past the GOAWAY are refused by design).
    pub max_rejected_header_blocks: u32,
}

/// The plain per-request service: [`Forward`] alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainForward;

/// A [`Layer`] that wraps a connection service in [`Http`].
///
/// It goes below [`DetectLayer`](l7inspect_detect::DetectLayer): a
/// connection detected as HTTP/1 or HTTP/2 is served here, each request
/// through the service [`with_requests`](Self::with_requests) builds and
/// then over the connection's upstream connection (the [`Connecting`] that
/// [`ConnectLayer`](crate::ConnectLayer) started); every other connection
/// goes to the inner service, untouched (usually
/// [`Passthrough`](crate::Passthrough)).
///
/// # Example
///
/// An HTTP-aware connection stack that tells each server its client's
/// address, passing everything that is not HTTP through:
///
/// ```
/// use http::{HeaderValue, Request};
/// use l7inspect_core::*;
/// use l7inspect_detect::{DetectConfig, DetectLayer};
/// use tokio_util::sync::CancellationToken;
/// use tower::ServiceBuilder;
///
/// let drain = CancellationToken::new();
/// let http = HttpLayer::new(drain.clone()).with_requests(|meta: &ConnMeta, forward: Forward| {
///     // Once per connection, not per request.
///     let client = HeaderValue::from_str(&meta.client.ip().to_string()).unwrap();
///     ServiceBuilder::new()
///         .map_request(move |mut req: Request<RequestBody>| {
///             req.headers_mut().insert("x-forwarded-for", client.clone());
///             req
///         })
///         .service(forward)
/// });
/// let stack = ServiceBuilder::new()
///     .layer(FixedTargetLayer::new("127.0.0.1:8080".parse().unwrap()))
///     .layer(ConnectLayer::new(ConnectConfig::default()))
///     .layer(DetectLayer::new(DetectConfig::default()))
///     .layer(http)
///     .service(Passthrough::new(PassthroughConfig::default()));
/// # fn conn_service<S: tower::Service<l7inspect_detect::Conn<Accepted, tokio::net::TcpStream>, Response = ()>>(_: &S) {}
/// # conn_service(&stack);
/// // Serve `stack` with `serve`; on shutdown, cancel `drain`: HTTP/1
/// // connections close after the request in flight, HTTP/2 ones get a GOAWAY.
/// drain.cancel();
/// ```
///
/// # Behaviour on the wire
///
/// - **Versions**: a request is forwarded in the HTTP version the client
///   chose (HTTP/1.x stays HTTP/1.x, prior-knowledge HTTP/2 stays HTTP/2),
///   over the upstream connection dialled when the client connected (1:1).
/// - **Bodies and trailers** stream both ways, frame by frame; nothing is
///   buffered whole.
/// - **Headers**: `Host` and `:authority` stay as the client sent them.
///   HTTP/1 header names are written lowercase (as HTTP/2 requires, and as
///   Envoy, haproxy and linkerd2-proxy do by default), unless
///   [`HttpConfig::preserve_header_case`] keeps the case each side sent.
///   Hop-by-hop headers (`Connection` and the
///   headers it lists, `Keep-Alive`, `Proxy-Connection`, `TE` except
///   `trailers`, `Transfer-Encoding`, `Upgrade`) are handled per RFC 9110
///   7.6.1: each hop frames its own message; an `Upgrade` is passed on.
/// - **Upgrades**: an HTTP/1 `Upgrade` (WebSocket) answered with `101`, and a
///   `CONNECT` answered with `2xx`, become a byte tunnel between client and
///   server for the rest of the connection. The response then carries a
///   [`CancellationToken`] in its extensions, cancelled when the tunnel
///   closes: request layers use it to make the exchange's span and timing
///   last as long as the tunnel.
/// - **Keep-alive**: HTTP/1 requests keep their order (hyper answers them in
///   sequence, pipelined or not). When the server closes its connection, the
///   proxy closes the client's gracefully (HTTP/1: after the response in
///   flight; HTTP/2: GOAWAY), so the client sees what it would have seen on
///   a direct connection. A request that arrives in between, and that the
///   closed connection never took, goes over a new connection to the same
///   target instead of failing.
/// - **HTTP/1 responses** are framed per RFC 9112 6.3 (none for `HEAD`,
///   `204` and `304`; chunked, `Content-Length`, or until the server
///   closes); interim `1xx` responses other than `101` are not passed on (as
///   with hyper's client), except that a `100 Continue` answering the
///   client's `Expect` becomes the client's own (below); a reason phrase
///   other than the standard one is passed on.
///   An invalid head, conflicting `Content-Length` values or a head over
///   408 KiB get `502`. A server that answers before it has read the whole
///   request body gets the rest of it while its answer streams back; if the
///   answer ends first, that upstream connection is closed rather than
///   reused, and the client's after the answer.
/// - **Strict framing** (RFC 9112 3.2, RFC 9113 8.3.1): a request with more
///   than one `Host` field (even with the same value), or whose target
///   names an authority (absolute form; HTTP/2's `:authority`) that `Host`
///   contradicts, gets `400 Bad Request` and is never forwarded; over
///   HTTP/1 the connection closes after it. A request body whose framing is
///   malformed (a bad chunk size, a missing CRLF) gets `400` if no response
///   has started: the request head is written with the body bytes that
///   came with it, so an error among those reaches no server, and the
///   upstream connection closes rather than carry a partial body. After the
///   response started, both connections close.
/// - **`Expect: 100-continue`** (RFC 9110 10.1.1) is handled once, end to
///   end: forwarded, and the client's body is read (which is what makes
///   hyper's server send the client its one `100 Continue`) only once the
///   server sent its `100`, or after a second (`EXPECT_CONTINUE_WAIT`) for a
///   server that ignores the expectation. A final answer before any `100`
///   (a `417`, a `401`) goes to the client without the body being read or
///   sent, and both connections close after it (RFC 9112 9.6). With
///   [`HttpConfig::preserve_header_case`] (hyper's client upstream), the
///   client's `100` is sent as soon as the request is forwarded, and the
///   server's is not passed on.
/// - **Failures**: when the server cannot be reached or fails before it
///   answers, the client gets `502 Bad Gateway` (`504 Gateway Timeout` when
///   the connect or [`HttpConfig::response_timeout`] expired), or for gRPC
///   a trailers-only response with `grpc-status: 14` (UNAVAILABLE; 4,
///   DEADLINE_EXCEEDED, for a timeout). The body (or `grpc-message`) says the kind of failure
///   ([`FailureKind`]: "upstream connection failed", "upstream closed the
///   connection", "invalid response from upstream"...), never the target's
///   address or the OS error: those are in the debug log (and, at most
///   every 10 s, a warning) and in the [`ProxyError`] the response carries
///   for request layers (the span's `error.type` and message). A failure
///   after the response started resets the stream (HTTP/2) or closes the
///   connection (HTTP/1), as the server's own failure would. A request
///   layer's error (see [`NewRequestService`]) is answered the same way
///   ("request failed in the proxy").
/// - **Drain**: when the drain token is cancelled (shutdown), HTTP/1
///   connections close after their in-flight request and HTTP/2 connections
///   send GOAWAY.
#[derive(Clone, Debug)]
pub struct HttpLayer<N = PlainForward> {
    drain: CancellationToken,
    config: HttpConfig,
    requests: N,
    metrics: Metrics,
}

/// Serves HTTP connections; hands every other connection to the inner service.
#[derive(Clone, Debug)]
pub struct Http<S, N = PlainForward> {
    inner: S,
    drain: CancellationToken,
    config: HttpConfig,
    requests: N,
    metrics: Metrics,
}

/// The future of [`Http`]: one box per connection.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Serves one HTTP connection until it closes, closing it gracefully when
/// the proxy drains or the upstream connection ends.
#[pin_project]
struct Serving<C> {
    #[pin]
    conn: C,
    #[pin]
    drain: WaitForCancellationFutureOwned,
    #[pin]
    upstream_closed: UpstreamClosed,
    /// The connection's `graceful_shutdown` (HTTP/1 and HTTP/2 have one each).
    shutdown: fn(Pin<&mut C>),
    /// HTTP/1's head and idle timers.
    #[pin]
    deadlines: Option<Deadlines>,
    /// Where timeouts are counted.
    timeouts: (Metrics, Direction),
    /// The graceful shutdown has started.
    closing: bool,
    /// Polls `drain` and `upstream_closed` only when one of them woke the
    /// task (an HTTP/2 connection's task is woken for each of its streams).
    signals: WakeFlag,
}

// === impl Http2Config ===

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_header_list_size: 16 * 1024,
            max_concurrent_streams: 200,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_rejected_header_blocks: 8,
        }
    }
}

// === impl PlainForward ===

impl NewRequestService for PlainForward {
    type Service = Forward;
    type Body = ResponseBody;

    fn new_service(&self, _: &ConnMeta, forward: Forward) -> Forward {
        forward
    }
}

// === impl HttpLayer ===

impl HttpLayer {
    /// A layer whose connections close gracefully once `drain` is cancelled.
    pub fn new(drain: CancellationToken) -> Self {
        Self {
            drain,
            config: HttpConfig::default(),
            requests: PlainForward,
            metrics: Metrics::default(),
        }
    }
}

impl<N> HttpLayer<N> {
    /// The same layer, with per-request services built by `requests`.
    pub fn with_requests<M: NewRequestService>(self, requests: M) -> HttpLayer<M> {
        HttpLayer {
            drain: self.drain,
            config: self.config,
            requests,
            metrics: self.metrics,
        }
    }

    /// The same layer, with `config`.
    pub fn with_config(self, config: HttpConfig) -> Self {
        Self { config, ..self }
    }

    /// The same layer, counting the connections it cuts (timeouts, HTTP/2
    /// closes) in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self { metrics, ..self }
    }
}

impl<S, N: Clone> Layer<S> for HttpLayer<N> {
    type Service = Http<S, N>;

    fn layer(&self, inner: S) -> Http<S, N> {
        Http {
            inner,
            drain: self.drain.clone(),
            config: self.config,
            requests: self.requests.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

// === impl Http ===

impl<S, N, I> Service<Detected<Connecting, I>> for Http<S, N>
where
    S: Service<Detected<Connecting, I>, Response = ()>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    N: NewRequestService,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, d: Detected<Connecting, I>) -> ResponseFuture {
        let version = match d.outcome {
            Outcome::Protocol(Protocol::Http1) => Version::Http1,
            Outcome::Protocol(Protocol::Http2) => Version::Http2,
            _ => {
                let fut = self.inner.call(d);
                return Box::pin(async move { fut.await.map_err(Into::into) });
            }
        };
        // One box per version, each the size of its own connection: an
        // HTTP/1 connection does not carry room for an HTTP/2 server's state
        // (one async fn over both would be the size of the larger) for as
        // long as it stays open, idle or not. The connection is built here
        // and moved into the box once: an async fn would hold it twice (its
        // argument and the pinned local).
        let Detected { meta, io, .. } = d;
        let conn_meta = meta.meta;
        let forward = Forward::new(meta, version, self.config, self.metrics.clone());
        let upstream_closed = forward.upstream_closed();
        let svc = AnswerErrors::new(
            self.requests.new_service(&conn_meta, forward),
            version == Version::Http2,
        );
        let drain = self.drain.clone().cancelled_owned();
        let timeouts = (self.metrics.clone(), conn_meta.direction);
        match version {
            Version::Http1 => {
                let config = &self.config;
                let activity = Activity::new();
                let svc = TowerToHyperService::new(Http1Requests {
                    inner: svc,
                    activity: activity.clone(),
                });
                let io = HeadWatch::new(io, activity.clone());
                // A client may send its request and shut down its write
                // side (a half-close) while it waits for the answer: it
                // gets the answer, as directly from most servers (hyper's
                // default would close the connection at the EOF).
                let conn = hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .preserve_header_case(config.preserve_header_case)
                    .max_buf_size(
                        config
                            .max_request_head
                            .max(HttpConfig::MIN_MAX_REQUEST_HEAD),
                    )
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                let deadlines = (config.request_head_timeout.is_some()
                    || config.idle_timeout.is_some())
                .then(|| {
                    Deadlines::new(activity, config.request_head_timeout, config.idle_timeout)
                });
                Box::pin(Serving::new(
                    conn,
                    drain,
                    upstream_closed,
                    |c| c.graceful_shutdown(),
                    deadlines,
                    timeouts,
                ))
            }
            Version::Http2 => {
                let conn = http2::server::Server::new(
                    io,
                    svc,
                    &self.config,
                    self.metrics.clone(),
                    conn_meta.direction,
                );
                Box::pin(Serving::new(
                    conn,
                    drain,
                    upstream_closed,
                    |c| c.get_mut().graceful_shutdown(),
                    None,
                    timeouts,
                ))
            }
        }
    }
}

/// The per-request service seen by hyper's HTTP/1 server: the request's
/// body becomes a [`RequestBody`], the type every request service takes,
/// and the connection's [`Activity`] follows each exchange (for the head
/// and idle timeouts).
#[derive(Clone)]
struct Http1Requests<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// The future of [`Http1Requests`]: the response, its body marking the end
/// of the exchange.
#[pin_project]
struct Http1Response<F> {
    #[pin]
    inner: F,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<Incoming>> for Http1Requests<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
{
    type Response = Response<ResponseEnd<B>>;
    type Error = S::Error;
    type Future = Http1Response<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        Http1Response {
            inner: self.inner.call(req.map(RequestBody::http1)),
            activity: self.activity.clone(),
        }
    }
}

impl<F, B, E> Future for Http1Response<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseEnd<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        let activity = this.activity.clone();
        Poll::Ready(Ok(resp.map(|body| ResponseEnd::new(body, activity))))
    }
}

// === impl Serving ===

impl<C> Serving<C> {
    fn new(
        conn: C,
        drain: WaitForCancellationFutureOwned,
        upstream_closed: UpstreamClosed,
        shutdown: fn(Pin<&mut C>),
        deadlines: Option<Deadlines>,
        timeouts: (Metrics, Direction),
    ) -> Self {
        Self {
            conn,
            drain,
            upstream_closed,
            shutdown,
            deadlines,
            timeouts,
            closing: false,
            signals: WakeFlag::new(),
        }
    }
}

impl<C, E> Future for Serving<C>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(res) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(Into::into));
        }
        this.signals.register(cx.waker());
        let woke = this.signals.take();
        let mut signals = this.signals.context();
        if let Some(deadlines) = this.deadlines.as_pin_mut()
            && let Poll::Ready(expired) = deadlines.poll_expired(&mut signals, woke)
        {
            let (metrics, direction) = this.timeouts;
            metrics.timed_out(*direction, expired);
            tracing::debug!("closing the connection: {} timeout", expired.as_str());
            if expired == Timeout::RequestHead {
                // The connection answers 408 as it fails (see `HeadWatch`).
                let _ = this.conn.poll(cx);
                return Poll::Ready(Err("request head timeout".into()));
            }
            if !*this.closing {
                *this.closing = true;
                (this.shutdown)(this.conn.as_mut());
                return this.conn.poll(cx).map_err(Into::into);
            }
        }
        if *this.closing || !woke {
            return Poll::Pending;
        }
        if this.drain.poll(&mut signals).is_ready()
            || this.upstream_closed.poll(&mut signals).is_ready()
        {
            *this.closing = true;
            (this.shutdown)(this.conn.as_mut());
            // Polled again so that the shutdown starts (and registers its wakeups).
            return this.conn.poll(cx).map_err(Into::into);
        }
        Poll::Pending
    }
}
