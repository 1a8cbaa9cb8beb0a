//! Trace collectors on real sockets: OTLP/gRPC (tonic's `TraceService`
//! from opentelemetry-proto), OTLP/HTTP (`POST /v1/traces`, protobuf) and
//! Zipkin v2 (`POST /api/v2/spans`, JSON checked against the official spec
//! by [`zipkin_spec`](crate::zipkin_spec)).
//!
//! [`Collector::start_tls`] puts all three behind TLS ([`ServerTls`]: a
//! certificate from [`pki`](crate::pki), ALPN `h2` for gRPC and
//! `http/1.1` for the others, optionally requiring a client certificate),
//! and records each handshake ([`Handshake`]) and each failed one.
//!
//! A [`Collector`] runs the three on a thread and runtime of its own, so
//! that a synchronous test (processes in a network namespace) and an async
//! one (on a current-thread runtime that the code under test shares) use it
//! the same way. It keeps every request and every span it decoded; a
//! request it could not accept (wrong path or content type, a body that
//! does not decode, Zipkin JSON that breaks the spec) is answered 400 or
//! 404 and recorded as a rejection, and the span accessors fail the test
//! when there is one.

#[cfg(doc)]
use crate::PATIENCE;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use serde_json::Value as Json;
use std::convert::Infallible;
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::{Leaf, TestCa};

/// What a [`Collector`] started with [`Collector::start_tls`] presents,
/// and whom it lets in.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate chain, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// When set, a client must present a certificate that chains to these
    /// CA certificates (PEM), or the handshake fails.
    pub client_ca_pem: Option<String>,
}

impl ServerTls {
    /// Presents `leaf` (e.g. `ca.server(&["127.0.0.1"])`), asks for no
    /// client certificate.
    pub fn new(leaf: &Leaf) -> Self {
        Self {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
            client_ca_pem: None,
        }
    }

    /// Requires a client certificate signed by `ca`.
    pub fn require_client_cert(mut self, ca: &TestCa) -> Self {
        self.client_ca_pem = Some(ca.cert_pem.clone());
        self
    }

    /// The rustls configuration for one receiver, offering `alpn`.
    fn server_config(&self, alpn: &[u8]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS 1.2 and 1.3 with ring");
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs(pem) {
                    roots.add(cert).expect("a usable client CA certificate");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("a client certificate verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("a PEM key");
        let mut config = builder
            .with_single_cert(certs(&self.cert_pem), key)
            .expect("a usable server certificate and key");
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A TLS handshake a [`Collector`]'s receiver completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The protocol ALPN settled on (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// How many certificates the client presented (0: none).
    pub client_certs: usize,
}

/// One of a [`Collector`]'s three receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// OTLP over gRPC (HTTP/2 with prior knowledge; gzip accepted).
    OtlpGrpc,
    /// OTLP over HTTP/1.1, `POST /v1/traces`, `application/x-protobuf`
    /// (gzip accepted).
    OtlpHttp,
    /// Zipkin v2, `POST /api/v2/spans`, `application/json`.
    Zipkin,
}

impl Receiver {
    const ALL: [Receiver; 3] = [Receiver::OtlpGrpc, Receiver::OtlpHttp, Receiver::Zipkin];

    fn index(self) -> usize {
        self as usize
    }

    /// The one protocol the receiver offers in ALPN.
    fn alpn(self) -> &'static [u8] {
        match self {
            Receiver::OtlpGrpc => b"h2",
            Receiver::OtlpHttp | Receiver::Zipkin => b"http/1.1",
        }
    }
}

/// A request a receiver got, as it came (the body still compressed if it
/// was). For gRPC the headers are the call's metadata and the body is
/// empty (tonic decodes the message).
#[derive(Clone, Debug)]
pub struct Request {
    /// The request method.
    pub method: http::Method,
    /// The request path.
    pub path: String,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The request body as sent.
    pub body: Bytes,
}

/// One span an OTLP receiver decoded, with its resource's attributes and
/// its instrumentation scope.
#[derive(Clone, Debug)]
pub struct OtlpSpan {
    /// The resource's attributes (`service.name`...).
    pub resource: Vec<KeyValue>,
    /// The instrumentation scope the span was under.
    pub scope: Option<InstrumentationScope>,
    /// The span.
    pub span: Span,
}

impl OtlpSpan {
    /// The resource's `service.name`.
    pub fn service(&self) -> Option<&str> {
        str_attr(&self.resource, "service.name")
    }

    /// The trace id in lower-case hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id in lower-case hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id in lower-case hex (empty for a root).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// The span kind.
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).expect("a known span kind")
    }

    /// Whether the status is ERROR.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32)
    }

    /// The span's string attribute `key`.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        str_attr(&self.span.attributes, key)
    }

    /// The span's integer attribute `key`.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        int_attr(&self.span.attributes, key)
    }
}

/// Bytes in lower-case hex (how trace and span ids are written).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The string value of the attribute `key` in `attrs`.
pub fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The integer value of the attribute `key` in `attrs`.
pub fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

/// The three listeners a [`Collector`] serves on, bound by the caller (in
/// a network namespace, on a fixed port) or by [`Listeners::loopback`].
#[derive(Debug)]
pub struct Listeners {
    /// For OTLP/gRPC.
    pub otlp_grpc: std::net::TcpListener,
    /// For OTLP/HTTP.
    pub otlp_http: std::net::TcpListener,
    /// For Zipkin.
    pub zipkin: std::net::TcpListener,
}

impl Listeners {
    /// Three listeners on ephemeral ports of 127.0.0.1.
    pub fn loopback() -> io::Result<Self> {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0");
        Ok(Self {
            otlp_grpc: bind()?,
            otlp_http: bind()?,
            zipkin: bind()?,
        })
    }
}

/// OTLP/gRPC, OTLP/HTTP and Zipkin receivers, running until dropped.
///
/// ```no_run
/// use l7inspect_test_support::collector::{Collector, Receiver};
///
/// let collector = Collector::start();
/// let endpoint = collector.endpoint(Receiver::OtlpHttp); // http://127.0.0.1:N/v1/traces
/// // ... run the code under test, exporting to `endpoint` ...
/// let spans = collector.wait_spans_blocking(Receiver::OtlpHttp, 2);
/// assert_eq!(spans[0].span.name, "GET");
/// ```
pub struct Collector {
    addrs: [SocketAddr; 3],
    tls: bool,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What one receiver holds and how it answers.
#[derive(Default)]
struct Port {
    connections: usize,
    requests: Vec<Request>,
    otlp: Vec<ExportTraceServiceRequest>,
    zipkin: Vec<Vec<Json>>,
    /// Answer the next this many requests with an error.
    fail_next: usize,
    /// Answer every request with this status (HTTP; gRPC: any non-2xx is
    /// UNAVAILABLE).
    status: Option<http::StatusCode>,
    /// Accept the next this many connections and never read from them.
    stall_next: usize,
    /// TLS handshakes completed.
    handshakes: Vec<Handshake>,
    /// TLS handshakes failed, and why (as the server saw it).
    handshake_failures: Vec<String>,
}

#[derive(Default)]
struct State {
    ports: [Port; 3],
    rejections: Vec<String>,
}

impl Collector {
    /// The three receivers on ephemeral ports of 127.0.0.1.
    pub fn start() -> Self {
        Self::on(Listeners::loopback().expect("bind the collector's listeners"))
    }

    /// The three receivers on ephemeral ports of 127.0.0.1, behind TLS.
    pub fn start_tls(tls: ServerTls) -> Self {
        Self::on_tls(
            Listeners::loopback().expect("bind the collector's listeners"),
            tls,
        )
    }

    /// The three receivers on listeners the caller bound.
    pub fn on(listeners: Listeners) -> Self {
        Self::serve(listeners, None)
    }

    /// The three receivers on listeners the caller bound, behind TLS.
    pub fn on_tls(listeners: Listeners, tls: ServerTls) -> Self {
        Self::serve(listeners, Some(tls))
    }

    fn serve(listeners: Listeners, tls: Option<ServerTls>) -> Self {
        let acceptors = Receiver::ALL.map(|r| {
            tls.as_ref()
                .map(|t| TlsAcceptor::from(t.server_config(r.alpn())))
        });
        let list = [listeners.otlp_grpc, listeners.otlp_http, listeners.zipkin];
        let addrs = [0, 1, 2].map(|i| list[i].local_addr().expect("a bound listener"));
        for l in &list {
            l.set_nonblocking(true).expect("a non-blocking listener");
        }
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("test-collector".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the collector's runtime");
                rt.block_on(async move {
                    let all = list.into_iter().zip(Receiver::ALL).zip(acceptors);
                    for ((listener, receiver), acceptor) in all {
                        let listener = TcpListener::from_std(listener).expect("a tokio listener");
                        tokio::spawn(accept(listener, receiver, acceptor, shared.clone()));
                    }
                    let _ = stopped.await;
                });
            })
            .expect("spawn the collector's thread");
        Self {
            addrs,
            tls: tls.is_some(),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where `receiver` listens.
    pub fn addr(&self, receiver: Receiver) -> SocketAddr {
        self.addrs[receiver.index()]
    }

    /// The URL an exporter sends to: `http://ADDR` for OTLP/gRPC,
    /// `http://ADDR/v1/traces` for OTLP/HTTP, `http://ADDR/api/v2/spans`
    /// for Zipkin; `https://` behind TLS.
    pub fn endpoint(&self, receiver: Receiver) -> String {
        let addr = self.addr(receiver);
        let scheme = if self.tls { "https" } else { "http" };
        match receiver {
            Receiver::OtlpGrpc => format!("{scheme}://{addr}"),
            Receiver::OtlpHttp => format!("{scheme}://{addr}/v1/traces"),
            Receiver::Zipkin => format!("{scheme}://{addr}/api/v2/spans"),
        }
    }

    /// The TLS handshakes `receiver` completed, oldest first.
    pub fn handshakes(&self, receiver: Receiver) -> Vec<Handshake> {
        self.state().ports[receiver.index()].handshakes.clone()
    }

    /// Why `receiver`'s failed TLS handshakes failed, oldest first (e.g.
    /// `received fatal alert: UnknownCA` when the client did not trust the
    /// certificate).
    pub fn handshake_failures(&self, receiver: Receiver) -> Vec<String> {
        self.state().ports[receiver.index()]
            .handshake_failures
            .clone()
    }

    /// Waits until `receiver` has seen at least `n` failed TLS handshakes,
    /// and returns why each failed; fails the test after [`PATIENCE`].
    pub async fn wait_handshake_failures(&self, receiver: Receiver, n: usize) -> Vec<String> {
        let what = format!("{n} failed TLS handshakes at {receiver:?}");
        crate::wait_for(&what, || {
            let got = self.handshake_failures(receiver);
            (got.len() >= n).then_some(got)
        })
        .await
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers every following request to `receiver` with `status` (for
    /// gRPC, anything but 2xx is the status UNAVAILABLE).
    pub fn answer_with(&self, receiver: Receiver, status: http::StatusCode) {
        self.state().ports[receiver.index()].status = Some(status);
    }

    /// Answers the next `n` requests to `receiver` with an error (HTTP
    /// 503, gRPC UNAVAILABLE), then as before.
    pub fn fail_next(&self, receiver: Receiver, n: usize) {
        self.state().ports[receiver.index()].fail_next = n;
    }

    /// Accepts the next connection to `receiver` and never reads from it
    /// or answers (a stuck collector), then serves as before.
    pub fn stall_next_connection(&self, receiver: Receiver) {
        self.state().ports[receiver.index()].stall_next += 1;
    }

    /// How many connections `receiver` accepted.
    pub fn connections(&self, receiver: Receiver) -> usize {
        self.state().ports[receiver.index()].connections
    }

    /// Every request `receiver` got, oldest first.
    pub fn requests(&self, receiver: Receiver) -> Vec<Request> {
        self.state().ports[receiver.index()].requests.clone()
    }

    /// What was rejected, and why (empty when all was well).
    pub fn rejections(&self) -> Vec<String> {
        self.state().rejections.clone()
    }

    /// Fails the test if anything was rejected.
    fn assert_no_rejections(&self) {
        let rejections = self.rejections();
        assert!(
            rejections.is_empty(),
            "the collector rejected: {rejections:#?}"
        );
    }

    /// The OTLP export requests `receiver` decoded, oldest first.
    pub fn otlp_exports(&self, receiver: Receiver) -> Vec<ExportTraceServiceRequest> {
        self.assert_no_rejections();
        self.state().ports[receiver.index()].otlp.clone()
    }

    /// Every span `receiver` (an OTLP one) decoded, in arrival order.
    pub fn otlp_spans(&self, receiver: Receiver) -> Vec<OtlpSpan> {
        let mut spans = Vec::new();
        for export in self.otlp_exports(receiver) {
            for rs in export.resource_spans {
                let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        spans.push(OtlpSpan {
                            resource: resource.clone(),
                            scope: ss.scope.clone(),
                            span,
                        });
                    }
                }
            }
        }
        spans
    }

    /// The Zipkin spans, each POST's list in arrival order.
    pub fn zipkin_batches(&self) -> Vec<Vec<Json>> {
        self.assert_no_rejections();
        self.state().ports[Receiver::Zipkin.index()].zipkin.clone()
    }

    /// Every Zipkin span, in arrival order.
    pub fn zipkin_spans(&self) -> Vec<Json> {
        self.zipkin_batches().into_iter().flatten().collect()
    }

    fn span_count(&self, receiver: Receiver) -> usize {
        match receiver {
            Receiver::Zipkin => self.zipkin_spans().len(),
            _ => self.otlp_spans(receiver).len(),
        }
    }

    /// Waits until `receiver` has got at least `n` requests, and returns
    /// them all; fails the test after [`PATIENCE`] (a hang).
    pub async fn wait_requests(&self, receiver: Receiver, n: usize) -> Vec<Request> {
        let what = format!("{n} requests to {receiver:?}");
        crate::wait_for(&what, || {
            let got = self.requests(receiver);
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Waits until `receiver` (an OTLP one) holds at least `n` spans, and
    /// returns them all; fails the test after [`PATIENCE`].
    pub async fn wait_otlp_spans(&self, receiver: Receiver, n: usize) -> Vec<OtlpSpan> {
        let what = format!("{n} spans at {receiver:?}");
        crate::wait_for(&what, || {
            (self.span_count(receiver) >= n).then(|| self.otlp_spans(receiver))
        })
        .await
    }

    /// Waits until the Zipkin receiver holds at least `n` spans, and
    /// returns them all; fails the test after [`PATIENCE`].
    pub async fn wait_zipkin_spans(&self, n: usize) -> Vec<Json> {
        let what = format!("{n} Zipkin spans");
        crate::wait_for(&what, || {
            let spans = self.zipkin_spans();
            (spans.len() >= n).then_some(spans)
        })
        .await
    }

    /// [`wait_otlp_spans`](Self::wait_otlp_spans) for a synchronous test.
    pub fn wait_spans_blocking(&self, receiver: Receiver, n: usize) -> Vec<OtlpSpan> {
        let what = format!("{n} spans at {receiver:?}");
        crate::wait_for_blocking(&what, || {
            (self.span_count(receiver) >= n).then(|| self.otlp_spans(receiver))
        })
    }

    /// [`wait_zipkin_spans`](Self::wait_zipkin_spans) for a synchronous
    /// test.
    pub fn wait_zipkin_spans_blocking(&self, n: usize) -> Vec<Json> {
        let what = format!("{n} Zipkin spans");
        crate::wait_for_blocking(&what, || {
            let spans = self.zipkin_spans();
            (spans.len() >= n).then_some(spans)
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("otlp_grpc", &self.addrs[0])
            .field("otlp_http", &self.addrs[1])
            .field("zipkin", &self.addrs[2])
            .finish()
    }
}

// === serving ===

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a request is answered, decided when it arrives.
fn take_answer(port: &mut Port, ok: http::StatusCode) -> http::StatusCode {
    if port.fail_next > 0 {
        port.fail_next -= 1;
        return http::StatusCode::SERVICE_UNAVAILABLE;
    }
    port.status.unwrap_or(ok)
}

async fn accept(
    listener: TcpListener,
    receiver: Receiver,
    acceptor: Option<TlsAcceptor>,
    state: Arc<Mutex<State>>,
) {
    let mut stalled = Vec::new();
    while let Ok((io, _)) = listener.accept().await {
        {
            let mut st = lock(&state);
            let port = &mut st.ports[receiver.index()];
            port.connections += 1;
            if port.stall_next > 0 {
                port.stall_next -= 1;
                stalled.push(io);
                continue;
            }
        }
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve(io, receiver, state).await;
            };
            match acceptor.accept(io).await {
                Ok(tls) => {
                    let (_, session) = tls.get_ref();
                    let handshake = Handshake {
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_certs: session.peer_certificates().map_or(0, <[_]>::len),
                    };
                    lock(&state).ports[receiver.index()]
                        .handshakes
                        .push(handshake);
                    serve(tls, receiver, state).await;
                }
                Err(e) => lock(&state).ports[receiver.index()]
                    .handshake_failures
                    .push(e.to_string()),
            }
        });
    }
}

/// Serves one connection (plaintext or TLS) as `receiver`.
async fn serve<I>(io: I, receiver: Receiver, state: Arc<Mutex<State>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    match receiver {
        Receiver::OtlpGrpc => {
            let server = TraceServiceServer::new(Grpc { state })
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, TowerToHyperService::new(server))
                .await;
        }
        Receiver::OtlpHttp | Receiver::Zipkin => {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(http_request(receiver, &state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        }
    }
}

async fn http_request(
    receiver: Receiver,
    state: &Mutex<State>,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return respond(http::StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let request = Request {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    let decoded = decode_http(receiver, &parts, &body);
    let mut st = lock(state);
    st.ports[receiver.index()].requests.push(request);
    let what = format!("{receiver:?} {} {}", parts.method, parts.uri.path());
    match decoded {
        Err((status, why)) => {
            st.rejections.push(format!("{what}: {why}"));
            respond(status, why)
        }
        Ok(decoded) => {
            let port = &mut st.ports[receiver.index()];
            let ok = match receiver {
                Receiver::Zipkin => http::StatusCode::ACCEPTED,
                _ => http::StatusCode::OK,
            };
            let status = take_answer(port, ok);
            if status.is_success() {
                match decoded {
                    Decoded::Otlp(export) => port.otlp.push(export),
                    Decoded::Zipkin(list) => port.zipkin.push(list),
                }
            }
            if receiver == Receiver::OtlpHttp && status.is_success() {
                let body = ExportTraceServiceResponse::default().encode_to_vec();
                let mut res = http::Response::new(Full::new(Bytes::from(body)));
                *res.status_mut() = status;
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                return res;
            }
            respond(status, String::new())
        }
    }
}

enum Decoded {
    Otlp(ExportTraceServiceRequest),
    Zipkin(Vec<Json>),
}

fn decode_http(
    receiver: Receiver,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<Decoded, (http::StatusCode, String)> {
    let (path, content_type) = match receiver {
        Receiver::OtlpHttp => ("/v1/traces", "application/x-protobuf"),
        _ => ("/api/v2/spans", "application/json"),
    };
    if parts.method != http::Method::POST || parts.uri.path() != path {
        return Err((http::StatusCode::NOT_FOUND, format!("not POST {path}")));
    }
    let got_type = parts.headers.get(http::header::CONTENT_TYPE);
    if got_type.is_none_or(|t| t != content_type) {
        return Err((
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {got_type:?}, not {content_type}"),
        ));
    }
    let body = match parts.headers.get(http::header::CONTENT_ENCODING) {
        None => body.to_vec(),
        Some(e) if e == "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .map_err(|e| (http::StatusCode::BAD_REQUEST, format!("gzip: {e}")))?;
            out
        }
        Some(e) => {
            return Err((
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {e:?}"),
            ));
        }
    };
    let bad = |why: String| (http::StatusCode::BAD_REQUEST, why);
    match receiver {
        Receiver::OtlpHttp => ExportTraceServiceRequest::decode(&body[..])
            .map(Decoded::Otlp)
            .map_err(|e| bad(format!("protobuf: {e}"))),
        _ => {
            let json: Json =
                serde_json::from_slice(&body).map_err(|e| bad(format!("JSON: {e}")))?;
            crate::zipkin_spec::check("ListOfSpans", &json)
                .map_err(|e| bad(format!("not Zipkin v2 (zipkin2-api.yaml): {e}")))?;
            match json {
                Json::Array(list) => Ok(Decoded::Zipkin(list)),
                _ => unreachable!("ListOfSpans is an array"),
            }
        }
    }
}

fn respond(status: http::StatusCode, body: String) -> http::Response<Full<Bytes>> {
    let mut res = http::Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res
}

#[derive(Clone)]
struct Grpc {
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let export = request.into_inner();
        let mut st = lock(&self.state);
        let port = &mut st.ports[Receiver::OtlpGrpc.index()];
        port.requests.push(Request {
            method: http::Method::POST,
            path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
            headers,
            body: Bytes::new(),
        });
        if !take_answer(port, http::StatusCode::OK).is_success() {
            return Err(tonic::Status::unavailable(
                "the test collector fails this call",
            ));
        }
        port.otlp.push(export);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
