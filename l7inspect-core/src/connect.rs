//! [`ConnectLayer`]: dials each connection's target as soon as it is accepted.

use crate::{
    loop_guard::{LoopGuard, Registration},
    meta::{ConnMeta, Direction},
    metrics::{ConnLabels, ConnectErrorLabels, Metrics},
    ratelimit::RateLimited,
    track::{DETECTING, OpenGuard},
};
use l7inspect_detect::{
    Conn, DetectMeta, SERVER_GREETING_LEN, ServerEvent, is_http2_server_preface,
};
use prometheus_client::metrics::gauge::Gauge;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tower::{Layer, Service};

/// Settings of [`Connect`].
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// How long a connect may take before it fails with a timeout. Default 10 s.
    pub timeout: Duration,
}

/// A [`Layer`] that wraps a service in [`Connect`].
///
/// Every downstream connection gets its own upstream connection, 1:1, as the
/// application itself opened it: no pooling, no balancing. The dial starts
/// before protocol detection and runs beside it, so that a server that speaks
/// first (SSH, SMTP, MySQL) is heard at once, and a client that speaks first
/// waits for no more than the slower of its own first segment and the connect.
///
/// It takes a [`Conn`] whose metadata is a [`ConnMeta`] (the layer above it,
/// [`FixedTargetLayer`](crate::FixedTargetLayer) or
/// [`OrigDstLayer`](crate::OrigDstLayer), supplies the target) and calls the
/// inner service with a [`Connecting`] in its place; the stream is passed on
/// untouched. The connect itself runs as the [`Upstream`] is polled: by
/// detection (which watches for a server that speaks first) and by whoever
/// takes the connection.
///
/// A failed connect is counted in `l7inspect_upstream_connect_errors_total`
/// (when [metrics](Self::with_metrics) are given) and logged (rate-limited)
/// with the target and the OS error; whoever takes the [`Upstream`] then
/// gets the [`ConnectError`].
///
/// From the call on, the connection is counted in
/// `l7inspect_tcp_open_connections{protocol="detecting"}` of those metrics,
/// until a [`TrackLayer`](crate::TrackLayer) below detection moves it to its
/// protocol, or until the [`Connecting`] is dropped (detection failed).
///
/// # Example
///
/// A connection to a fixed target, dialled on loopback; the inner service
/// waits for the upstream connection:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// use l7inspect_core::{
///     Accepted, ConnectConfig, ConnectLayer, Connecting, Direction, FixedTargetLayer,
/// };
/// use l7inspect_detect::Conn;
/// use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
///
/// let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let svc = ServiceBuilder::new()
///     .layer(FixedTargetLayer::new(server.local_addr()?))
///     .layer(ConnectLayer::new(ConnectConfig::default()))
///     .service(service_fn(|conn: Conn<Connecting, ()>| async move {
///         let upstream = conn.meta.upstream.established().await?;
///         Ok::<_, BoxError>(upstream.get_ref().peer_addr()?)
///     }));
/// let accepted = Accepted {
///     client: "127.0.0.1:50000".parse()?,
///     local: "127.0.0.1:7000".parse()?,
///     direction: Direction::Outbound,
/// };
/// let dialled = svc.oneshot(Conn { meta: accepted, io: () }).await?;
/// assert_eq!(dialled, server.local_addr()?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConnectLayer {
    connector: Connector,
}

/// Starts the upstream connect of each connection and calls the inner service
/// with a [`Connecting`] at once, without waiting for it.
#[derive(Clone, Debug)]
pub struct Connect<S> {
    inner: S,
    connector: Connector,
}

/// Opens upstream connections: the connect timeout, the error metrics and
/// log, and the loop-guard registration, in one cheap-to-clone handle.
#[derive(Clone, Debug)]
pub struct Connector {
    shared: Arc<Shared>,
    /// Applied to every connection this connector opens (TLS origination).
    wrap: Option<Arc<dyn WrapUpstream>>,
}

/// What a [`Connector`] does to each connection it opens, once dialled:
/// TLS origination wraps it in a client session (see
/// [`Connector::with_wrap`]).
pub trait WrapUpstream: Send + Sync + std::fmt::Debug + 'static {
    /// `io` wrapped, or why it could not be.
    fn wrap(&self, io: UpstreamIo) -> Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;
}

/// A stream that replaces an upstream connection's TCP stream (a TLS
/// client session over it, say), showing the TCP stream it runs on.
pub trait UpstreamStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;
}

#[derive(Debug)]
struct Shared {
    config: ConnectConfig,
    metrics: Metrics,
    guard: LoopGuard,
    log: RateLimited,
    /// `l7inspect_tcp_open_connections{protocol="detecting"}`, inbound and
    /// outbound: looked up once, not per connection.
    detecting: [Gauge; 2],
}

/// A connection whose upstream connect is under way: the metadata the
/// detection layer and the services after it receive.
#[derive(Debug)]
pub struct Connecting {
    /// The connection's metadata.
    pub meta: ConnMeta,
    /// The upstream connection, or its connect in progress.
    pub upstream: Upstream,
    /// Opens further connections to the same target: HTTP uses it when the
    /// server closed a keep-alive connection before the client's next request.
    pub connector: Connector,
    /// What layers learnt about the connection, for the layers after them
    /// (TLS termination puts the session's details here, which the
    /// per-request services read through
    /// [`Forward::connection_extensions`](crate::Forward::connection_extensions)).
    /// Empty, and allocation-free, unless a layer adds something.
    pub extensions: http::Extensions,
    /// The connection's place in `l7inspect_tcp_open_connections` while
    /// detection runs, which [`Track`](crate::Track) takes over.
    pub(crate) open: Option<OpenGuard>,
}

/// An upstream connection in the making.
pub struct Upstream {
    state: State,
    /// The server sent an HTTP/2 connection preface before the client spoke.
    http2_server_preface: bool,
    /// The server's first bytes, peeked when it spoke before the client
    /// (for [`DetectMeta::server_first_bytes`]). Empty, and allocation-free,
    /// for every other connection.
    server_first: Vec<u8>,
}

enum State {
    Connecting(Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>),
    Connected(UpstreamIo),
    Failed(ConnectError),
    Taken,
}

/// The upstream connection's byte stream: the TCP stream, or what a layer
/// wrapped it in ([`UpstreamIo::wrap`]). While it lives, the [`LoopGuard`]
/// knows its local address.
#[derive(Debug)]
pub struct UpstreamIo {
    stream: Stream,
    _registration: Registration,
}

enum Stream {
    Tcp(TcpStream),
    Wrapped(Box<dyn UpstreamStream>),
}

/// Connecting to a connection's target failed.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {target} failed: {source}")]
pub struct ConnectError {
    /// The address that was dialled.
    pub target: SocketAddr,
    /// The OS error (`TimedOut` for the connect timeout).
    #[source]
    pub source: io::Error,
}

// === impl ConnectConfig ===

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

// === impl ConnectLayer ===

impl ConnectLayer {
    /// A layer that dials with `config`. Its connect errors go to a
    /// [`Metrics`] of its own, which nothing serves, and its upstream
    /// connections to a [`LoopGuard`] of its own, which no listener asks;
    /// see [`with_metrics`](Self::with_metrics) and
    /// [`with_loop_guard`](Self::with_loop_guard).
    pub fn new(config: ConnectConfig) -> Self {
        Self::from_parts(config, Metrics::default(), LoopGuard::default())
    }

    /// The same layer, counting connect errors in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let shared = &self.connector.shared;
        Self::from_parts(shared.config.clone(), metrics, shared.guard.clone())
    }

    /// The same layer, registering the local address of every upstream
    /// connection with `guard`.
    ///
    /// Behind [`OrigDstLayer`](crate::OrigDstLayer), pass it the same guard:
    /// that is how a connection of the proxy's own that iptables redirected
    /// back to it is recognised and refused, instead of looping.
    pub fn with_loop_guard(self, guard: LoopGuard) -> Self {
        let shared = &self.connector.shared;
        Self::from_parts(shared.config.clone(), shared.metrics.clone(), guard)
    }

    fn from_parts(config: ConnectConfig, metrics: Metrics, guard: LoopGuard) -> Self {
        let detecting = [Direction::Inbound, Direction::Outbound].map(|direction| {
            metrics
                .open_connections
                .get_or_create(&ConnLabels {
                    direction,
                    protocol: DETECTING,
                })
                .clone()
        });
        Self {
            connector: Connector {
                shared: Arc::new(Shared {
                    config,
                    metrics,
                    guard,
                    log: RateLimited::default(),
                    detecting,
                }),
                wrap: None,
            },
        }
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = Connect<S>;

    fn layer(&self, inner: S) -> Connect<S> {
        Connect {
            inner,
            connector: self.connector.clone(),
        }
    }
}

// === impl Connect ===

impl<S, I> Service<Conn<ConnMeta, I>> for Connect<S>
where
    S: Service<Conn<Connecting, I>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<ConnMeta, I>) -> S::Future {
        let detecting = match conn.meta.direction {
            Direction::Inbound => &self.connector.shared.detecting[0],
            Direction::Outbound => &self.connector.shared.detecting[1],
        };
        let open = OpenGuard::new(detecting.clone());
        let upstream = Upstream::connect(conn.meta, self.connector.clone());
        self.inner.call(Conn {
            meta: Connecting {
                meta: conn.meta,
                upstream,
                connector: self.connector.clone(),
                extensions: http::Extensions::new(),
                open: Some(open),
            },
            io: conn.io,
        })
    }
}

// === impl Connector ===

impl Connector {
    /// Opens a new connection to `meta.upstream_addr()` (the target,
    /// unless a layer redirected it), bounded by the connect
    /// timeout. A failure is counted in
    /// `l7inspect_upstream_connect_errors_total` and logged (rate-limited).
    ///
    /// With a [wrap](Self::with_wrap), the connection is wrapped before it
    /// is returned, within the same timeout; a failure to wrap is a connect
    /// error like the others (its `error` label is `tls` for an
    /// `InvalidData` error, which is what a TLS handshake fails with).
    pub async fn connect(&self, meta: &ConnMeta) -> Result<UpstreamIo, ConnectError> {
        let shared = &self.shared;
        let target = meta.upstream_addr();
        let connect = async {
            let (stream, registration) = dial(target, &shared.guard).await?;
            let io = UpstreamIo {
                stream: Stream::Tcp(stream),
                _registration: registration,
            };
            match &self.wrap {
                Some(wrap) => wrap.wrap(io).await,
                None => Ok(io),
            }
        };
        let dialled = match tokio::time::timeout(shared.config.timeout, connect).await {
            Ok(dialled) => dialled,
            Err(_) => {
                let reason = crate::metrics::Timeout::UpstreamConnect;
                shared.metrics.timed_out(meta.direction, reason);
                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            }
        };
        match dialled {
            Ok(io) => Ok(io),
            Err(source) => {
                let error = ConnectError { target, source };
                shared
                    .metrics
                    .connect_errors
                    .get_or_create(&ConnectErrorLabels {
                        direction: meta.direction,
                        error: error.kind_label(),
                    })
                    .inc();
                shared.log.warn(|suppressed| {
                    tracing::warn!(
                        client = %meta.client,
                        direction = %meta.direction,
                        suppressed,
                        "{error}"
                    )
                });
                Err(error)
            }
        }
    }
}

impl Connector {
    /// Counts a timeout of a connection of `direction` in this connector's
    /// `l7inspect_timeouts_total`.
    pub fn count_timeout(
        &self,
        direction: crate::meta::Direction,
        reason: crate::metrics::Timeout,
    ) {
        self.shared.metrics.timed_out(direction, reason);
    }

    /// The same connector, wrapping every connection it opens with `wrap`
    /// (TLS origination: the keep-alive reconnections of an intercepted
    /// connection must be TLS too, never plaintext).
    pub fn with_wrap(&self, wrap: Arc<dyn WrapUpstream>) -> Self {
        Self {
            shared: self.shared.clone(),
            wrap: Some(wrap),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    /// An upstream connection already established: what a layer that
    /// replaced the connection (wrapped it in TLS) hands on.
    pub fn ready(io: UpstreamIo) -> Self {
        Self {
            state: State::Connected(io),
            http2_server_preface: false,
            server_first: Vec::new(),
        }
    }

    /// An upstream connection that failed: whoever takes it gets `error`.
    pub fn failed(error: ConnectError) -> Self {
        Self {
            state: State::Failed(error),
            http2_server_preface: false,
            server_first: Vec::new(),
        }
    }

    fn connect(meta: ConnMeta, connector: Connector) -> Self {
        Self {
            state: State::Connecting(Box::pin(async move { connector.connect(&meta).await })),
            http2_server_preface: false,
            server_first: Vec::new(),
        }
    }

    /// Drives the connect; ready once it has succeeded or failed.
    pub fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Connecting(fut) = &mut self.state {
            self.state = match ready!(fut.as_mut().poll(cx)) {
                Ok(io) => State::Connected(io),
                Err(e) => State::Failed(e),
            };
        }
        Poll::Ready(())
    }

    /// Waits for the connect and takes the connection (or its error).
    pub async fn established(mut self) -> Result<UpstreamIo, ConnectError> {
        std::future::poll_fn(|cx| self.poll_connected(cx)).await;
        match std::mem::replace(&mut self.state, State::Taken) {
            State::Connected(io) => Ok(io),
            State::Failed(e) => Err(e),
            State::Connecting(_) | State::Taken => {
                unreachable!("poll_connected finished the connect")
            }
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Connecting(_) => "connecting",
            State::Connected(_) => "connected",
            State::Failed(_) => "failed",
            State::Taken => "taken",
        };
        f.debug_struct("Upstream").field("state", &state).finish()
    }
}

/// Connects to `target`, registering the socket's local address with the
/// loop guard as soon as the SYN is sent rather than when the handshake
/// completes: a connection that iptables redirects back to the proxy is
/// already queued on the proxy's listener by then, and another worker thread
/// could accept it before a late registration. What remains is the window
/// between the `connect(2)` and `getsockname(2)` calls.
async fn dial(target: SocketAddr, guard: &LoopGuard) -> io::Result<(TcpStream, Registration)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    // Interactive protocols must not wait on Nagle.
    socket.set_tcp_nodelay(true)?;
    // Registered below; until then the loop guard waits for us.
    let pending = guard.begin_dial();
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("local address is not an IP address"))?;
    let registration = guard.register_upstream(local);
    drop(pending);
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    // A failed connect can leave no pending error; the peer address tells.
    stream.peer_addr()?;
    Ok((stream, registration))
}

// === impl Connecting ===

impl Connecting {
    /// Counts a timeout that cut this connection, in the connector's
    /// `l7inspect_timeouts_total` (for layers after detection: the TLS
    /// handshake's, say).
    pub fn count_timeout(&self, reason: crate::metrics::Timeout) {
        self.connector.count_timeout(self.meta.direction, reason);
    }
}

impl DetectMeta for Connecting {
    fn target_port(&self) -> Option<u16> {
        Some(self.meta.target.port())
    }

    /// Counted in `l7inspect_timeouts_total{reason="client_silent"}`.
    fn on_silent_timeout(&mut self) {
        self.count_timeout(crate::metrics::Timeout::ClientSilent);
    }

    /// Ready when the server sent bytes (or closed) before the client spoke,
    /// or when the connect failed.
    ///
    /// An HTTP/2 server's connection preface (a SETTINGS frame, which
    /// servers send as soon as they accept) does not count: the client of
    /// such a server speaks too, so detection goes on waiting for it. The
    /// bytes are only peeked at; the server's stream is left untouched.
    /// Up to [`SERVER_GREETING_LEN`] of them are peeked, once, and kept
    /// for [`server_first_bytes`](Self::server_first_bytes) when the server
    /// spoke first (so a MySQL greeting is labelled `mysql`).
    fn poll_server_first(&mut self, cx: &mut Context<'_>) -> Poll<ServerEvent> {
        ready!(self.upstream.poll_connected(cx));
        if self.upstream.http2_server_preface {
            // Nothing more to learn from the server; the client decides.
            return Poll::Pending;
        }
        let State::Connected(io) = &self.upstream.state else {
            return Poll::Ready(ServerEvent::Unreachable);
        };
        if io.is_wrapped() {
            // Its bytes cannot be peeked at without taking them (a TLS 1.3
            // server's session tickets would look like a banner): the
            // client decides.
            return Poll::Pending;
        }
        let mut head = [0u8; SERVER_GREETING_LEN];
        let mut buf = ReadBuf::new(&mut head);
        match ready!(io.get_ref().poll_peek(cx, &mut buf)) {
            Ok(n) if is_http2_server_preface(&head[..n]) => {
                self.upstream.http2_server_preface = true;
                Poll::Pending
            }
            Ok(n) => {
                self.upstream.server_first = head[..n].to_vec();
                Poll::Ready(ServerEvent::Spoke)
            }
            // EOF or an error: the server spoke first, with nothing to show.
            Err(_) => Poll::Ready(ServerEvent::Spoke),
        }
    }

    /// What [`poll_server_first`](Self::poll_server_first) peeked when the
    /// server spoke first.
    fn server_first_bytes(&self) -> &[u8] {
        &self.upstream.server_first
    }
}

// === impl ConnectError ===

impl ConnectError {
    /// The `error` label: `refused`, `timeout`, `unreachable`, `reset`,
    /// `tls` (a wrapped connection's handshake failed), `descriptors` (the
    /// process or the system is out of file descriptors: `EMFILE`,
    /// `ENFILE`) or `other`.
    pub fn kind_label(&self) -> &'static str {
        use io::ErrorKind::*;
        if crate::limit::is_out_of_descriptors(&self.source) {
            return "descriptors";
        }
        match self.source.kind() {
            ConnectionRefused => "refused",
            TimedOut => "timeout",
            HostUnreachable | NetworkUnreachable | AddrNotAvailable => "unreachable",
            ConnectionReset | ConnectionAborted => "reset",
            InvalidData => "tls",
            _ => "other",
        }
    }
}

// === impl UpstreamIo ===

impl UpstreamIo {
    /// The TCP stream (underneath the wrapping, if any).
    pub fn get_ref(&self) -> &TcpStream {
        match &self.stream {
            Stream::Tcp(s) => s,
            Stream::Wrapped(w) => w.tcp(),
        }
    }

    /// Whether a layer wrapped the TCP stream.
    pub fn is_wrapped(&self) -> bool {
        matches!(self.stream, Stream::Wrapped(_))
    }

    /// The connection with its TCP stream replaced by `f(stream)` (a TLS
    /// client session over it, say); the loop guard's registration goes
    /// with it. An already wrapped connection is an `InvalidInput` error.
    pub async fn wrap<S, F, Fut>(self, f: F) -> io::Result<UpstreamIo>
    where
        S: UpstreamStream,
        F: FnOnce(TcpStream) -> Fut,
        Fut: Future<Output = io::Result<S>>,
    {
        let Stream::Tcp(tcp) = self.stream else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the upstream connection is already wrapped",
            ));
        };
        Ok(UpstreamIo {
            stream: Stream::Wrapped(Box::new(f(tcp).await?)),
            _registration: self._registration,
        })
    }

    /// Ready once the idle connection has ended: the server closed it, or
    /// sent something unasked, which only an error or a close can be.
    /// Registers `cx` for its next readiness otherwise.
    pub(crate) fn poll_idle_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.stream {
            Stream::Tcp(stream) => loop {
                if ready!(stream.poll_read_ready(cx)).is_err() {
                    return Poll::Ready(());
                }
                match stream.try_read(&mut [0u8; 1]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => return Poll::Ready(()),
                }
            },
            // A session's own messages (TLS 1.3 tickets) are taken by the
            // session and give no bytes: only data, a close or an error end it.
            Stream::Wrapped(w) => {
                let mut one = [0u8; 1];
                let mut buf = ReadBuf::new(&mut one);
                match Pin::new(w).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(()),
                }
            }
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(s) => s.fmt(f),
            Self::Wrapped(w) => f.debug_tuple("Wrapped").field(w.tcp()).finish(),
        }
    }
}

impl std::os::fd::AsFd for UpstreamIo {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.get_ref().as_fd()
    }
}

/// One `match` per call: the TCP stream, or the wrapping.
macro_rules! on_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().stream {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Wrapped($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Wrapped(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_shutdown(cx))
    }
}
