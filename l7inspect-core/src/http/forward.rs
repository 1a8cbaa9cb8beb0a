//! [`Forward`]: sends each request of one client connection over that
//! connection's upstream connection, and answers for the server when it
//! cannot be reached.

use super::{
    HttpConfig,
    body::{RequestBody, ResponseBody},
    failure::{FailureKind, failure_response, log_failure},
    headers::remove_hop_by_hop,
    http1::client::{self as http1_client, Conn, Slot},
    http2,
};
use crate::{
    connect::{Connecting, Connector, Upstream, UpstreamIo},
    meta::ConnMeta,
    metrics::{Metrics, Timeout},
    passthrough::relay,
};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};
use tokio::sync::Mutex;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::BoxError;

/// The HTTP version of a proxied connection (the same on both sides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Http1,
    Http2,
}

/// Forwards the requests of one client connection. Cheap to clone: every
/// clone shares the upstream connection.
#[derive(Clone, Debug)]
pub struct Forward {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    meta: ConnMeta,
    extensions: http::Extensions,
    version: Version,
    config: HttpConfig,
    connector: Connector,
    state: Mutex<State>,
    /// Cancelled when an upstream connection ends, unless it ended by
    /// handing itself over to a tunnel (an upgrade or CONNECT).
    upstream_closed: CancellationToken,
    /// Set when a request asked for a tunnel.
    tunnel_requested: AtomicBool,
    /// Our own HTTP/1 client: the connection dialled at accept is still in
    /// `state` (cleared when the first request takes it).
    first_pending: AtomicBool,
    /// HTTP/1 with our own client (`http1::client`): where the upstream
    /// connection waits between requests. `None` for HTTP/2, and for HTTP/1
    /// with `preserve_header_case` (hyper's client).
    slot: Option<Arc<Slot>>,
    /// Where response timeouts are counted.
    metrics: Metrics,
}

#[derive(Debug)]
enum State {
    /// The connection dialled when the client connected, not yet used.
    First(Option<Upstream>),
    /// An HTTP client connection over the upstream.
    Ready(Sender),
    /// Our own HTTP/1 client: the connection is in `Inner::slot` when idle.
    Slot,
}

#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(h2::client::SendRequest<Bytes>),
}

/// The future of [`Forward`] as a Tower service: one box per request, since
/// the forwarding future (connect, retry, upgrade) cannot be named. A named
/// state machine is the performance issue's to write if it shows up.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

// === impl Forward ===

impl tower::Service<Request<RequestBody>> for Forward {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> ResponseFuture {
        Box::pin(self.clone().forward(req))
    }
}

impl Forward {
    pub(crate) fn new(
        conn: Connecting,
        version: Version,
        config: HttpConfig,
        metrics: Metrics,
    ) -> Self {
        let upstream_closed = CancellationToken::new();
        let slot = (version == Version::Http1 && !config.preserve_header_case)
            .then(|| Arc::new(Slot::new(upstream_closed.clone())));
        Self {
            inner: Arc::new(Inner {
                meta: conn.meta,
                extensions: conn.extensions,
                version,
                config,
                connector: conn.connector,
                state: Mutex::new(State::First(Some(conn.upstream))),
                upstream_closed,
                tunnel_requested: AtomicBool::new(false),
                first_pending: AtomicBool::new(slot.is_some()),
                slot,
                metrics,
            }),
        }
    }

    /// What the connection layers learnt about this connection
    /// ([`Connecting::extensions`]): a TLS session's details, say.
    pub fn connection_extensions(&self) -> &http::Extensions {
        &self.inner.extensions
    }

    /// Forwards one request. Never fails: when the server cannot answer, the
    /// response is the proxy's own (`502`, `504` on a timeout, `400` for a
    /// malformed request body; gRPC: a trailers-only status 14 or 4), see
    /// [`FailureKind`](crate::FailureKind).
    ///
    /// The request's head is prepared before the returned future is first
    /// polled. (A plain function returning an `async` block rather than an
    /// `async fn`, whose state would hold `self` and the request twice:
    /// the future is moved whole into its box on every request.)
    pub fn forward(
        self,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        let grpc = is_grpc(&req);
        let upgrade = req.headers().get(header::UPGRADE).cloned();
        let opts = remove_hop_by_hop(req.headers_mut());
        // An HTTP/1 upgrade or CONNECT turns into a tunnel if the server agrees.
        let tunnel = self.inner.version == Version::Http1
            && (req.method() == Method::CONNECT || (opts.upgrade && upgrade.is_some()));
        if let (true, Some(upgrade)) = (tunnel, &upgrade) {
            let h = req.headers_mut();
            h.insert(header::UPGRADE, upgrade.clone());
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let client_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
        if tunnel {
            self.inner.tunnel_requested.store(true, Ordering::Release);
        }
        let is_connect = req.method() == Method::CONNECT;
        async move {
            // The two clients' futures are awaited here rather than in a common
            // `async fn send`: each level of async fn holds the request again
            // and moves it into the next.
            let send = async {
                let Some(slot) = &self.inner.slot else {
                    return self.send_hyper_or_h2(req).await.map(|resp| (resp, None));
                };
                let conn = self.http1_conn(slot).await?;
                http1_client::send(conn, req, slot)
                    .await
                    .map(|(resp, tunnel)| (resp.map(ResponseBody::http1_upstream), tunnel))
                    .map_err(BoxError::from)
            };
            // Dropped on expiry: an HTTP/1 upstream connection with the
            // request in flight is closed (its late answer must not reach
            // the next request), an HTTP/2 stream is reset.
            let sent = match self.inner.config.response_timeout {
                None => send.await,
                Some(timeout) => match tokio::time::timeout(timeout, send).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        (self.inner.metrics)
                            .timed_out(self.inner.meta.direction, Timeout::UpstreamResponse);
                        Err(ResponseTimeout(timeout).into())
                    }
                },
            };
            let (mut resp, tunnel_conn) = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    let kind = FailureKind::of(&e, FailureKind::UpstreamIo);
                    log_failure(kind, self.inner.meta.target, &e);
                    let http1 = self.inner.version == Version::Http1;
                    return Ok(failure_response(kind, &e, grpc, http1));
                }
            };

            let upgraded = match client_upgrade {
                Some(client)
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        || (is_connect && resp.status().is_success()) =>
                {
                    let upgrade = resp.headers().get(header::UPGRADE).cloned();
                    let server = match tunnel_conn {
                        Some(conn) => ServerSide::Own(conn),
                        None => ServerSide::Hyper(hyper::upgrade::on(&mut resp)),
                    };
                    // Cancelled when the tunnel closes, so that request layers
                    // (the request's span) can last as long as the exchange.
                    let closed = CancellationToken::new();
                    resp.extensions_mut().insert(closed.clone());
                    tokio::spawn(tunnel_bytes(client, server, closed));
                    upgrade
                }
                _ => None,
            };
            let resp_opts = remove_hop_by_hop(resp.headers_mut());
            let h = resp.headers_mut();
            if let Some(upgrade) = upgraded {
                h.insert(header::UPGRADE, upgrade);
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            } else if resp_opts.close && self.inner.version == Version::Http1 {
                // The server closes its connection after this response; so does
                // the proxy, so the client sees what it would have seen.
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        }
    }

    /// Completes when an upstream connection has ended (the server closed
    /// it, or it failed). The caller closes the client connection gracefully
    /// then, so the client sees the close it would have seen directly. The
    /// future owns what it waits on, so a connection's future can hold it
    /// beside the `Forward` it came from.
    pub fn upstream_closed(&self) -> UpstreamClosed {
        UpstreamClosed {
            cancelled: self.inner.upstream_closed.clone().cancelled_owned(),
            slot: self.inner.slot.clone(),
        }
    }

    /// The upstream connection for a request over our own HTTP/1 client:
    /// the one dialled at accept for the first request, then the idle one,
    /// or, when there is none (it ended, or is still busy), a new one.
    async fn http1_conn(&self, slot: &Slot) -> Result<Conn, BoxError> {
        let inner = &self.inner;
        // The state is looked at only until the first connection is taken:
        // no lock per request.
        let first = if inner.first_pending.load(Ordering::Acquire) {
            let mut state = inner.state.lock().await;
            inner.first_pending.store(false, Ordering::Release);
            match std::mem::replace(&mut *state, State::Slot) {
                State::First(upstream) => upstream,
                _ => None,
            }
        } else {
            None
        };
        let conn = match first {
            // The connection dialled at accept (if it failed, this request
            // gets the 502 and the next one dials again).
            Some(upstream) => Some(Conn::new(Box::pin(upstream.established()).await?)),
            None => slot.take(),
        };
        Ok(match conn {
            Some(conn) => conn,
            None => Conn::new(Box::pin(inner.connector.connect(&inner.meta)).await?),
        })
    }

    /// Sends `req` over hyper's HTTP/1 client or our HTTP/2 one. A request
    /// that the upstream connection could not take (it was closed while
    /// idle) goes over a new connection once.
    /// (An `async` block: an `async fn` would hold the request twice.)
    #[allow(clippy::manual_async_fn)]
    fn send_hyper_or_h2(
        &self,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, BoxError>> + Send + '_ {
        async move {
            for attempt in 0..2 {
                let sent = {
                    let mut state = self.inner.state.lock().await;
                    let sender = self.ready_sender(&mut state, attempt > 0).await?;
                    match sender {
                        Sender::Http1(s) => s.try_send_request(req),
                        // A request h2 refused once the sender was ready is not
                        // retried: the head went with it (a closed or draining
                        // connection is caught by `ready` above, and redialled).
                        Sender::Http2(s) => {
                            let exchange = http2::client::send(s, req)?;
                            drop(state);
                            let resp = exchange.await?;
                            return Ok(resp.map(ResponseBody::http2));
                        }
                    }
                };
                match sent.await {
                    Ok(resp) => return Ok(resp.map(ResponseBody::http1)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if attempt == 0 => {
                            tracing::debug!(
                                "upstream connection closed before the request was sent; reconnecting"
                            );
                            req = unsent;
                        }
                        _ => return Err(e.into_error().into()),
                    },
                }
            }
            unreachable!("the second attempt returns")
        }
    }

    /// The upstream sender, ready for a request: the first connection, or a
    /// new one when `redial` is set or the current one has closed.
    async fn ready_sender<'a>(
        &self,
        state: &'a mut State,
        redial: bool,
    ) -> Result<&'a mut Sender, BoxError> {
        // Dialling and handshaking are boxed: they happen once per
        // connection (or after the upstream closed), and inline they would
        // make every request's future as large as theirs, to be moved into
        // its box on every request.
        match state {
            // The connection dialled at accept; if it failed, a new attempt.
            State::First(upstream) => {
                let upstream = upstream.take();
                *state = State::Ready(Box::pin(self.dial(upstream)).await?);
            }
            State::Ready(sender) if redial || sender.is_closed() => {
                *state = State::Ready(Box::pin(self.dial(None)).await?);
            }
            State::Ready(_) => {}
            State::Slot => unreachable!("only HTTP/1 with our own client has a slot"),
        }
        let State::Ready(sender) = state else {
            unreachable!("a sender was just made ready")
        };
        if let Err(e) = sender.ready().await {
            // Closed between requests: one fresh connection.
            tracing::debug!("upstream connection not ready ({e}); reconnecting");
            *sender = Box::pin(self.dial(None)).await?;
            sender.ready().await?;
        }
        Ok(sender)
    }

    /// A new upstream connection with its HTTP client: `upstream` (the one
    /// dialled at accept) once it is established, else a new dial.
    async fn dial(&self, upstream: Option<Upstream>) -> Result<Sender, BoxError> {
        let inner = &self.inner;
        let io = match upstream {
            Some(upstream) => upstream.established().await?,
            None => inner.connector.connect(&inner.meta).await?,
        };
        handshake(io, inner).await
    }
}

/// Starts an HTTP client connection over `io`; its driver runs on its own
/// task and, when the connection ends, tells the client side (see
/// [`Forward::upstream_closed`]).
async fn handshake(io: UpstreamIo, inner: &Arc<Inner>) -> Result<Sender, BoxError> {
    // Weak: `Inner` owns the connection's sender, and a connection whose
    // sender is alive never ends; a strong reference here would keep the
    // upstream connection open after the client's had closed.
    let ended = Arc::downgrade(inner);
    let closed = move || {
        if let Some(ended) = ended.upgrade()
            && !ended.tunnel_requested.load(Ordering::Acquire)
        {
            ended.upstream_closed.cancel();
        }
    };
    match inner.version {
        Version::Http1 => {
            let (sender, conn) = http1::Builder::new()
                .preserve_header_case(inner.config.preserve_header_case)
                .handshake(TokioIo::new(io))
                .await?;
            tokio::spawn(Driver::new(conn.with_upgrades(), "HTTP/1", closed));
            Ok(Sender::Http1(sender))
        }
        Version::Http2 => {
            let (sender, conn) = http2::client::handshake(io).await?;
            tokio::spawn(Driver::new(conn, "HTTP/2", closed));
            Ok(Sender::Http2(sender))
        }
    }
}

/// Drives an upstream connection on its own task, then calls `ended`. A
/// named future rather than an async block, which would hold the connection
/// twice (captured, and again where it is awaited) for as long as it is open.
#[pin_project::pin_project]
struct Driver<C, F> {
    #[pin]
    conn: C,
    version: &'static str,
    ended: Option<F>,
}

impl<C, F> Driver<C, F> {
    fn new(conn: C, version: &'static str, ended: F) -> Self {
        Self {
            conn,
            version,
            ended: Some(ended),
        }
    }
}

impl<C, E, F> Future for Driver<C, F>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    F: FnOnce(),
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Err(e) = std::task::ready!(this.conn.poll(cx)) {
            tracing::debug!("upstream {} connection: {e}", this.version);
        }
        if let Some(ended) = this.ended.take() {
            ended();
        }
        Poll::Ready(())
    }
}

/// The server's side of a tunnel.
enum ServerSide {
    /// From our own HTTP/1 client: the connection, with any bytes the server
    /// sent right after its response head.
    Own(Conn),
    /// From hyper's client.
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Copies bytes both ways between the client's and the server's upgraded
/// connections until both sides are done, then cancels `closed`.
async fn tunnel_bytes(
    client: hyper::upgrade::OnUpgrade,
    server: ServerSide,
    closed: CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    let _closed = closed.drop_guard();
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let relayed = match server {
        ServerSide::Own(conn) => {
            let (mut server, early) = conn.into_parts();
            match client.write_all(&early).await {
                Ok(()) => relay(&mut client, &mut server, None).await,
                Err(e) => Err(e),
            }
        }
        ServerSide::Hyper(server) => match server.await {
            Ok(server) => relay(&mut client, &mut TokioIo::new(server), None).await,
            Err(e) => {
                tracing::debug!("upgrade failed: {e}");
                return;
            }
        },
    };
    if let Err(e) = relayed {
        tracing::debug!("upgraded connection: {e}");
    }
}

/// The future of [`Forward::upstream_closed`].
#[pin_project::pin_project]
#[derive(Debug)]
pub struct UpstreamClosed {
    #[pin]
    cancelled: WaitForCancellationFutureOwned,
    /// With our own HTTP/1 client, the idle connection is watched here: no
    /// task drives it between requests.
    slot: Option<Arc<Slot>>,
}

impl Future for UpstreamClosed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.cancelled.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        match this.slot {
            Some(slot) => slot.poll_idle_ended(cx),
            None => Poll::Pending,
        }
    }
}

/// Whether a request is a gRPC call (`content-type: application/grpc...`).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| l7inspect_detect::is_grpc_content_type(v.as_bytes()))
}

/// The server did not start its response within
/// [`HttpConfig::response_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the server did not answer within {0:?}")]
pub(crate) struct ResponseTimeout(pub std::time::Duration);

// === impl Sender ===

impl Sender {
    /// Known closed without asking (HTTP/2 finds out in [`Self::ready`]).
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(_) => false,
        }
    }

    async fn ready(&mut self) -> Result<(), BoxError> {
        match self {
            Sender::Http1(s) => s.ready().await.map_err(Into::into),
            Sender::Http2(s) => std::future::poll_fn(|cx| s.poll_ready(cx))
                .await
                .map_err(Into::into),
        }
    }
}
