//! gRPC through the sidecar, end to end: a real tonic client and server on
//! 127.0.0.1 with the sidecar's explicit inbound forward (and once its
//! outbound forward) between them. Every call type (unary, client-,
//! server- and bidirectional streaming), a deadline, a cancellation, error
//! statuses and a dead upstream; each call is checked on the wire, in its
//! span and in the `rpc_*_duration_seconds` histograms.
//!
//! No protoc: the messages derive `prost::Message` and the service is
//! written by hand over `tonic::server::Grpc` / `tonic::client::Grpc`, each
//! side on its own hyper HTTP/2 (prior knowledge) connection. Going through
//! hyper rather than tonic's `Channel` keeps the client from enforcing the
//! deadline itself (tonic reports its own timeouts as CANCELLED), so the
//! deadline test sees what the server sent through the proxy.
//!
//! Most tests' server sends its HTTP/2 SETTINGS only after the client's
//! first bytes ([`Preface::AfterClient`]), which RFC 9113 allows;
//! `server_settings_before_client_preface` covers the usual order (SETTINGS
//! on accept), which detection must not take for a server speaking first.

mod support;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_sidecar::{Forward, SidecarConfig};
use l7inspect_test_support::eventually;
use opentelemetry::{
    KeyValue, Value,
    trace::{SpanKind, Status as SpanStatus},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use std::{
    convert::Infallible,
    future::{Future, pending},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use support::{Running, forward_config, start};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

const SERVICE: &str = "l7inspect.test.Echo";
/// Bound on any single wait, so a failure ends the test instead of hanging
/// it. Not a timing assertion: healthy runs finish in milliseconds.
const BOUND: Duration = Duration::from_secs(10);

/// The one message type of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    /// A sequence number (echoed; summed by `Collect`).
    #[prost(uint64, tag = "1")]
    seq: u64,
    /// Opaque bytes (echoed; counted by `Collect`).
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
    /// A gRPC status code the server should answer with (0: OK).
    #[prost(int32, tag = "3")]
    code: i32,
    /// `Ticks`: how many messages to send (0: until cancelled). `Collect`'s
    /// reply: how many messages arrived.
    #[prost(uint64, tag = "4")]
    count: u64,
    /// `Collect`'s reply: the total payload length.
    #[prost(uint64, tag = "5")]
    bytes: u64,
}

// ---------------------------------------------------------------------------
// Server

/// What the server lets the test observe.
#[derive(Default)]
struct ServerEvents {
    /// Notified when a `Ticks` stream found its client gone (the reset
    /// reached the server).
    ticks_cancelled: Notify,
    /// Notified when a connection's first bytes (the server's SETTINGS) have
    /// been written to the socket.
    first_write: Notify,
}

/// When the test server sends its connection preface (a SETTINGS frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preface {
    /// Only once the client's first bytes have arrived. RFC 9113 3.4 allows
    /// it; detection then sees the client first.
    AfterClient,
    /// At once on accept, as hyper, tonic and grpc-go servers do.
    Immediate,
}

/// `l7inspect.test.Echo` on a hyper HTTP/2 (prior knowledge) server:
///
/// - `Unary`: echoes the request, or fails with its `code`.
/// - `Slow`: never answers (for deadlines).
/// - `Collect` (client streaming): the number of messages, the sum of their
///   `seq` and their total payload length.
/// - `Ticks` (server streaming): `count` messages (forever if 0), then OK or
///   the request's `code` in the trailers.
/// - `Chat` (bidirectional): echoes each message as it arrives.
///
/// Like grpc-go and grpc-java servers, it honours `grpc-timeout`: a call
/// whose response head is not ready by then is answered DEADLINE_EXCEEDED.
async fn grpc_server() -> (SocketAddr, Arc<ServerEvents>) {
    grpc_server_with(Preface::AfterClient).await
}

async fn grpc_server_with(preface: Preface) -> (SocketAddr, Arc<ServerEvents>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = Arc::new(ServerEvents::default());
    let shared = events.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            // As tonic's own server does (Nagle's delays would stall the
            // ping-pong of small messages).
            io.set_nodelay(true).unwrap();
            let events = shared.clone();
            let io = ServerIo {
                io,
                hold: preface == Preface::AfterClient,
                held: Vec::new(),
                wrote: false,
                events: events.clone(),
            };
            let svc = hyper::service::service_fn(move |req| handle(events.clone(), req));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, events)
}

/// A server connection that, while `hold` is set, keeps what the server
/// writes until the client's first bytes arrive (h2 flushes its SETTINGS
/// before it reads the client preface, so the bytes are buffered, not the
/// writer blocked), and that reports its first write.
struct ServerIo {
    io: TcpStream,
    hold: bool,
    held: Vec<u8>,
    wrote: bool,
    events: Arc<ServerEvents>,
}

impl ServerIo {
    /// Writes out what was held; Ready once nothing is.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.hold && !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            self.held.drain(..n);
            self.on_write();
        }
        Poll::Ready(Ok(()))
    }

    fn on_write(&mut self) {
        if !self.wrote {
            self.wrote = true;
            self.events.first_write.notify_one();
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.hold = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.hold {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(self.poll_release(cx))?;
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.on_write();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.hold {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.hold = false;
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn handle(
    events: Arc<ServerEvents>,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
    let call = route(events, req);
    Ok(match deadline {
        Some(d) => match tokio::time::timeout(d, call).await {
            Ok(resp) => resp,
            Err(_) => Status::deadline_exceeded("deadline exceeded").into_http(),
        },
        None => call.await,
    })
}

async fn route(
    events: Arc<ServerEvents>,
    req: http::Request<Incoming>,
) -> http::Response<tonic::body::Body> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    let method = req
        .uri()
        .path()
        .strip_prefix(&format!("/{SERVICE}/"))
        .unwrap_or("")
        .to_owned();
    match method.as_str() {
        "Unary" => {
            let svc = tower::service_fn(|req: Request<Msg>| async move {
                let msg = req.into_inner();
                match msg.code {
                    0 => Ok(Response::new(msg)),
                    code => Err(Status::new(Code::from_i32(code), "as asked")),
                }
            });
            grpc.unary(svc, req).await
        }
        "Slow" => {
            let svc =
                tower::service_fn(|_: Request<Msg>| pending::<Result<Response<Msg>, Status>>());
            grpc.unary(svc, req).await
        }
        "Collect" => {
            let svc = tower::service_fn(|req: Request<Streaming<Msg>>| async move {
                let mut stream = req.into_inner();
                let mut reply = Msg::default();
                while let Some(m) = stream.message().await? {
                    reply.count += 1;
                    reply.seq += m.seq;
                    reply.bytes += m.payload.len() as u64;
                }
                Ok::<_, Status>(Response::new(reply))
            });
            grpc.client_streaming(svc, req).await
        }
        "Ticks" => {
            let svc = tower::service_fn(move |req: Request<Msg>| {
                let events = events.clone();
                async move {
                    let msg = req.into_inner();
                    let (tx, rx) = mpsc::channel(4);
                    tokio::spawn(async move {
                        let mut seq = 0;
                        while msg.count == 0 || seq < msg.count {
                            let tick = Msg {
                                seq,
                                ..Msg::default()
                            };
                            if tx.send(Ok(tick)).await.is_err() {
                                // The response stream was dropped: the
                                // client's reset reached this server.
                                events.ticks_cancelled.notify_one();
                                return;
                            }
                            seq += 1;
                        }
                        if msg.code != 0 {
                            let _ = tx
                                .send(Err(Status::new(Code::from_i32(msg.code), "as asked")))
                                .await;
                        }
                    });
                    Ok::<_, Status>(Response::new(ReceiverStream::new(rx)))
                }
            });
            grpc.server_streaming(svc, req).await
        }
        "Chat" => {
            let svc = tower::service_fn(|req: Request<Streaming<Msg>>| async move {
                let mut inbound = req.into_inner();
                let (tx, rx) = mpsc::channel(16);
                tokio::spawn(async move {
                    loop {
                        let next = match inbound.message().await {
                            Ok(Some(m)) => Ok(m),
                            Ok(None) => return,
                            Err(e) => Err(e),
                        };
                        if tx.send(next).await.is_err() {
                            return;
                        }
                    }
                });
                Ok::<_, Status>(Response::new(ReceiverStream::new(rx)))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented(method).into_http(),
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Client

/// A hyper HTTP/2 client connection as the transport of a tonic client.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A tonic client for `l7inspect.test.Echo` over one HTTP/2 connection.
struct Client {
    grpc: tonic::client::Grpc<H2>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Self::handshake(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Sends the HTTP/2 preface over a connected socket.
    async fn handshake(io: TcpStream) -> Client {
        // As tonic's `Channel` does.
        io.set_nodelay(true).unwrap();
        let addr = io.peer_addr().unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let origin = format!("http://{addr}").parse().unwrap();
        Client {
            grpc: tonic::client::Grpc::with_origin(H2(sender), origin),
        }
    }

    fn path(method: &str) -> PathAndQuery {
        format!("/{SERVICE}/{method}").parse().unwrap()
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn unary(&mut self, method: &str, req: Request<Msg>) -> Result<Msg, Status> {
        self.ready().await?;
        let resp = self
            .grpc
            .unary(req, Self::path(method), ProstCodec::default())
            .await?;
        Ok(resp.into_inner())
    }

    async fn collect(&mut self, msgs: Vec<Msg>) -> Result<Msg, Status> {
        self.ready().await?;
        let resp = self
            .grpc
            .client_streaming(
                Request::new(tokio_stream::iter(msgs)),
                Self::path("Collect"),
                ProstCodec::default(),
            )
            .await?;
        Ok(resp.into_inner())
    }

    async fn ticks(&mut self, req: Msg) -> Result<Streaming<Msg>, Status> {
        self.ready().await?;
        let resp = self
            .grpc
            .server_streaming(
                Request::new(req),
                Self::path("Ticks"),
                ProstCodec::default(),
            )
            .await?;
        Ok(resp.into_inner())
    }

    /// Opens `Chat`; the returned sender feeds the request stream (drop it to
    /// half-close).
    async fn chat(&mut self) -> Result<(mpsc::Sender<Msg>, Streaming<Msg>), Status> {
        self.ready().await?;
        let (tx, rx) = mpsc::channel(16);
        let resp = self
            .grpc
            .streaming(
                Request::new(ReceiverStream::new(rx)),
                Self::path("Chat"),
                ProstCodec::default(),
            )
            .await?;
        Ok((tx, resp.into_inner()))
    }
}

// ---------------------------------------------------------------------------
// Spans and metrics

/// A finished span, copied out of the sidecar's ring.
#[derive(Debug)]
struct SpanView {
    name: String,
    kind: SpanKind,
    status: SpanStatus,
    attributes: Vec<KeyValue>,
}

impl SpanView {
    fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    fn grpc_code(&self) -> Option<i64> {
        #[allow(deprecated)] // what the trace layer records; see its docs.
        match self.attr(semconv::RPC_GRPC_STATUS_CODE) {
            Some(Value::I64(code)) => Some(*code),
            _ => None,
        }
    }

    /// Asserts what every gRPC span of the test service carries.
    #[allow(deprecated)] // rpc.system/service/method: what the trace layer records.
    fn assert_rpc(&self, kind: SpanKind, method: &str, code: i64, error: bool) {
        assert_eq!(self.name, format!("{SERVICE}/{method}"), "{self:#?}");
        assert_eq!(self.kind, kind, "{self:#?}");
        let s = |v: &str| Some(Value::from(v.to_owned()));
        assert_eq!(
            self.attr(semconv::RPC_SYSTEM).cloned(),
            s("grpc"),
            "{self:#?}"
        );
        assert_eq!(
            self.attr(semconv::RPC_SERVICE).cloned(),
            s(SERVICE),
            "{self:#?}"
        );
        assert_eq!(
            self.attr(semconv::RPC_METHOD).cloned(),
            s(method),
            "{self:#?}"
        );
        assert_eq!(self.grpc_code(), Some(code), "{self:#?}");
        assert_eq!(
            matches!(self.status, SpanStatus::Error { .. }),
            error,
            "span status for gRPC code {code} on a {kind:?} span: {self:#?}"
        );
    }
}

/// The spans the sidecar has finished so far, oldest first.
fn spans(sidecar: &Running) -> Vec<SpanView> {
    sidecar
        .spans
        .snapshot()
        .iter()
        .map(|s| {
            let mut attributes = Vec::new();
            s.for_each_attribute(|k, v| attributes.push(KeyValue::new(k.to_owned(), v.to_value())));
            SpanView {
                name: s.name.to_string(),
                kind: s.kind.clone(),
                status: s.status.clone(),
                attributes,
            }
        })
        .collect()
}

/// Waits (bounded) for the finished span of `method` with gRPC status
/// `code`; a span ends when the proxied response does, just after the client
/// has it.
async fn span(sidecar: &Running, method: &str, code: i64) -> SpanView {
    let name = format!("{SERVICE}/{method}");
    let found = |s: &SpanView| s.name == name && s.grpc_code() == Some(code);
    let ok = eventually(|| async { spans(sidecar).iter().any(found) }).await;
    assert!(
        ok,
        "no span {name} with code {code}: {:#?}\n{}",
        spans(sidecar),
        sidecar.metrics()
    );
    let mut matching: Vec<_> = spans(sidecar).into_iter().filter(found).collect();
    assert_eq!(matching.len(), 1, "{matching:#?}");
    matching.remove(0)
}

/// The count series of the `rpc_{side}_duration_seconds` histogram.
fn rpc_count(side: &str, method: &str, code: i64) -> String {
    format!(
        "rpc_{side}_duration_seconds_count{{rpc_service=\"{SERVICE}\",rpc_method=\"{method}\",rpc_grpc_status_code=\"{code}\"}}"
    )
}

/// gRPC calls are counted in the rpc_ histograms only.
fn assert_no_http_series(sidecar: &Running) {
    let text = sidecar.metrics();
    let http: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("http_") && !l.starts_with('#'))
        .collect();
    assert!(
        http.is_empty(),
        "gRPC calls in the http_ histograms: {http:#?}"
    );
}

/// A sidecar whose inbound forward targets `target`.
async fn inbound_sidecar(target: SocketAddr) -> Running {
    start(forward_config(target)).await
}

fn msg(seq: u64) -> Msg {
    Msg {
        seq,
        ..Msg::default()
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary() {
    let (server, _) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    let req = Msg {
        seq: 7,
        payload: b"hello".to_vec(),
        ..Msg::default()
    };
    let resp = client
        .unary("Unary", Request::new(req.clone()))
        .await
        .unwrap();
    assert_eq!(resp, req);

    span(&sidecar, "Unary", 0)
        .await
        .assert_rpc(SpanKind::Server, "Unary", 0, false);
    sidecar
        .wait_metric(&rpc_count("server", "Unary", 0), 1.0)
        .await;
    assert_no_http_series(&sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming() {
    let (server, _) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    let msgs: Vec<Msg> = (0..200)
        .map(|i| Msg {
            seq: i,
            payload: vec![i as u8; 1000],
            ..Msg::default()
        })
        .collect();
    let resp = client.collect(msgs).await.unwrap();
    assert_eq!(resp.count, 200);
    assert_eq!(resp.seq, (0..200).sum::<u64>());
    assert_eq!(resp.bytes, 200 * 1000);

    span(&sidecar, "Collect", 0)
        .await
        .assert_rpc(SpanKind::Server, "Collect", 0, false);
    sidecar
        .wait_metric(&rpc_count("server", "Collect", 0), 1.0)
        .await;
    assert_no_http_series(&sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming() {
    let (server, _) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    let mut stream = client
        .ticks(Msg {
            count: 500,
            ..Msg::default()
        })
        .await
        .unwrap();
    for seq in 0..500 {
        assert_eq!(stream.message().await.unwrap(), Some(msg(seq)));
    }
    assert_eq!(stream.message().await.unwrap(), None);
    // The OK status came in the trailers, through the proxy.
    assert!(stream.trailers().await.unwrap().is_some());

    span(&sidecar, "Ticks", 0)
        .await
        .assert_rpc(SpanKind::Server, "Ticks", 0, false);
    sidecar
        .wait_metric(&rpc_count("server", "Ticks", 0), 1.0)
        .await;
    assert_no_http_series(&sidecar);
}

/// A long-lived stream: a thousand round trips, then a burst both ways far
/// larger than the HTTP/2 flow-control windows, then a clean half-close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_streaming() {
    let (server, _) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    let (tx, mut rx) = client.chat().await.unwrap();
    for seq in 0..1000u64 {
        let m = Msg {
            seq,
            payload: vec![seq as u8; (seq as usize * 7) % 4096],
            ..Msg::default()
        };
        tx.send(m.clone()).await.unwrap();
        assert_eq!(rx.message().await.unwrap(), Some(m), "round trip {seq}");
    }
    // 256 x 16 KiB each way (4 MiB), sent while the echoes come back.
    let burst = |seq: u64| Msg {
        seq,
        payload: vec![seq as u8; 16 * 1024],
        ..Msg::default()
    };
    let sender = tokio::spawn(async move {
        for seq in 1000..1256 {
            tx.send(burst(seq)).await.unwrap();
        }
        // `tx` dropped: the request stream ends.
    });
    for seq in 1000..1256 {
        assert_eq!(rx.message().await.unwrap(), Some(burst(seq)));
    }
    sender.await.unwrap();
    assert_eq!(rx.message().await.unwrap(), None);

    span(&sidecar, "Chat", 0)
        .await
        .assert_rpc(SpanKind::Server, "Chat", 0, false);
    sidecar
        .wait_metric(&rpc_count("server", "Chat", 0), 1.0)
        .await;
    assert_no_http_series(&sidecar);
}

/// The client's `grpc-timeout` reaches the server through the proxy, and the
/// server's DEADLINE_EXCEEDED reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded() {
    let (server, _) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    let mut req = Request::new(msg(1));
    req.set_timeout(Duration::from_millis(50));
    // `Slow` never answers: only a server that got the deadline ends the call.
    let status = tokio::time::timeout(BOUND, client.unary("Slow", req))
        .await
        .expect("the server answers at the deadline")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // DEADLINE_EXCEEDED (4) is a server error per the RPC conventions.
    span(&sidecar, "Slow", 4)
        .await
        .assert_rpc(SpanKind::Server, "Slow", 4, true);
    sidecar
        .wait_metric(&rpc_count("server", "Slow", 4), 1.0)
        .await;
    assert_no_http_series(&sidecar);
}

/// A client that drops a server stream mid-way resets it; the reset reaches
/// the server, and the span and metric record CANCELLED (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_by_client() {
    let (server, events) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    // count 0: the server sends until it sees the client go.
    let mut stream = client.ticks(Msg::default()).await.unwrap();
    for seq in 0..10 {
        assert_eq!(stream.message().await.unwrap(), Some(msg(seq)));
    }
    drop(stream); // RST_STREAM(CANCEL) to the proxy

    tokio::time::timeout(BOUND, events.ticks_cancelled.notified())
        .await
        .expect("the server sees the cancellation");

    // CANCELLED is not a server error per the RPC conventions.
    span(&sidecar, "Ticks", 1)
        .await
        .assert_rpc(SpanKind::Server, "Ticks", 1, false);
    sidecar
        .wait_metric(&rpc_count("server", "Ticks", 1), 1.0)
        .await;
    assert_no_http_series(&sidecar);

    // The connection is still good for the next call.
    assert_eq!(
        client.unary("Unary", Request::new(msg(2))).await.unwrap(),
        msg(2)
    );
}

/// Error statuses pass to the client, in a trailers-only response (unary)
/// or after messages in the trailers (streaming). On a SERVER span
/// NOT_FOUND (5) is not an error and INTERNAL (13) is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses() {
    let (server, _) = grpc_server().await;
    let sidecar = inbound_sidecar(server).await;
    let mut client = Client::connect(sidecar.inbound()).await;

    for (code, want) in [(5, Code::NotFound), (13, Code::Internal)] {
        let req = Msg {
            code,
            ..Msg::default()
        };
        let status = client.unary("Unary", Request::new(req)).await.unwrap_err();
        assert_eq!(status.code(), want, "{status:?}");
        assert_eq!(status.message(), "as asked");
    }
    span(&sidecar, "Unary", 5)
        .await
        .assert_rpc(SpanKind::Server, "Unary", 5, false);
    span(&sidecar, "Unary", 13)
        .await
        .assert_rpc(SpanKind::Server, "Unary", 13, true);

    // Three messages, then INTERNAL in the trailers.
    let mut stream = client
        .ticks(Msg {
            count: 3,
            code: 13,
            ..Msg::default()
        })
        .await
        .unwrap();
    for seq in 0..3 {
        assert_eq!(stream.message().await.unwrap(), Some(msg(seq)));
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    span(&sidecar, "Ticks", 13)
        .await
        .assert_rpc(SpanKind::Server, "Ticks", 13, true);

    for (method, code) in [("Unary", 5), ("Unary", 13), ("Ticks", 13)] {
        sidecar
            .wait_metric(&rpc_count("server", method, code), 1.0)
            .await;
    }
    assert_no_http_series(&sidecar);
}

/// Nothing listens at the target: the proxy answers UNAVAILABLE (14) itself,
/// trailers-only (`grpc-status` in the one HEADERS frame, which ends the
/// stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_unavailable() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let sidecar = inbound_sidecar(closed).await;

    // A tonic client sees UNAVAILABLE.
    let mut client = Client::connect(sidecar.inbound()).await;
    let status = client
        .unary("Unary", Request::new(msg(1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // On the wire: 200, grpc-status in the headers, nothing after them.
    let io = TcpStream::connect(sidecar.inbound()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/{SERVICE}/Unary", sidecar.inbound()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // One empty, uncompressed message.
        .body(http_body_util::Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(
        resp.body().is_end_stream(),
        "trailers-only: END_STREAM on HEADERS"
    );
    let body = resp.into_body().collect().await.unwrap();
    assert!(body.trailers().is_none());
    assert!(body.to_bytes().is_empty());

    // UNAVAILABLE is a server error; both calls were recorded.
    let ok = eventually(|| async {
        spans(&sidecar)
            .iter()
            .filter(|s| s.grpc_code() == Some(14))
            .count()
            == 2
    })
    .await;
    assert!(ok, "{:#?}", spans(&sidecar));
    for s in spans(&sidecar) {
        s.assert_rpc(SpanKind::Server, "Unary", 14, true);
    }
    sidecar
        .wait_metric(&rpc_count("server", "Unary", 14), 2.0)
        .await;
    assert_no_http_series(&sidecar);
}

/// Through the outbound forward: CLIENT spans, the client-side histogram,
/// and every non-OK code an error (RPC conventions for CLIENT spans).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_unary() {
    let (server, _) = grpc_server().await;
    let sidecar = start(SidecarConfig {
        inbound_forwards: Vec::new(),
        outbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: server,
        }],
        ..forward_config(server)
    })
    .await;
    let mut client = Client::connect(sidecar.addrs.outbound_forwards[0].listen).await;

    assert_eq!(
        client.unary("Unary", Request::new(msg(3))).await.unwrap(),
        msg(3)
    );
    let req = Msg {
        code: 5,
        ..Msg::default()
    };
    let status = client.unary("Unary", Request::new(req)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    span(&sidecar, "Unary", 0)
        .await
        .assert_rpc(SpanKind::Client, "Unary", 0, false);
    span(&sidecar, "Unary", 5)
        .await
        .assert_rpc(SpanKind::Client, "Unary", 5, true);
    sidecar
        .wait_metric(&rpc_count("client", "Unary", 0), 1.0)
        .await;
    sidecar
        .wait_metric(&rpc_count("client", "Unary", 5), 1.0)
        .await;
    let text = sidecar.metrics();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("rpc_server_duration_seconds_count")),
        "{text}"
    );
    assert_no_http_series(&sidecar);
}

/// An HTTP/2 server may send its SETTINGS frame as soon as it accepts (RFC
/// 9113 3.4), and hyper, tonic and grpc-go servers do; inbound, those bytes
/// usually reach the sidecar before the remote client's preface. Detection
/// must not call that `server_first` (which would relay the call as opaque
/// bytes: no span, no `rpc_` metric): this test caught it doing so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_settings_before_client_preface() {
    let (server, events) = grpc_server_with(Preface::Immediate).await;
    let sidecar = inbound_sidecar(server).await;

    // Connect, and send the client preface only once the server's SETTINGS
    // are in the sidecar's socket buffer (written on loopback).
    let io = TcpStream::connect(sidecar.inbound()).await.unwrap();
    tokio::time::timeout(BOUND, events.first_write.notified())
        .await
        .expect("the server sends its SETTINGS on accept");
    let mut client = Client::handshake(io).await;

    // The call itself works either way (the bytes pass)...
    assert_eq!(
        client.unary("Unary", Request::new(msg(1))).await.unwrap(),
        msg(1)
    );
    // ...but it must be seen as HTTP/2 and traced as gRPC.
    sidecar
        .wait_metric(
            "l7inspect_protocol_detections_total{direction=\"inbound\",protocol=\"http2\"}",
            1.0,
        )
        .await;
    span(&sidecar, "Unary", 0)
        .await
        .assert_rpc(SpanKind::Server, "Unary", 0, false);
    sidecar
        .wait_metric(&rpc_count("server", "Unary", 0), 1.0)
        .await;
}
