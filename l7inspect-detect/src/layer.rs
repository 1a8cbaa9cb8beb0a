//! [`DetectLayer`]: reads a connection's first bytes and tells the inner
//! service which protocol it speaks. Its behaviour on the wire is
//! documented on [`DetectLayer`], where rustdoc shows it.

use crate::{
    ClientHello, Detection, ParsedHello, PrefixedIo, Protocol, detect, detect_server_greeting,
    parse_client_hello,
};
use bytes::BytesMut;
use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tower::{BoxError, Layer, Service};

/// Settings of [`Detect`].
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// The most bytes read before giving up (answering [`Outcome::Unknown`]).
    /// Default 8 KiB: enough for a long request line or a post-quantum
    /// ClientHello.
    pub max_prefix: usize,
    /// How long to wait for the rest of a protocol's first message once the
    /// client has started sending. Default 1 s.
    pub detect_timeout: Duration,
    /// Destination ports whose connections skip detection
    /// ([`Outcome::Opaque`]).
    pub opaque_ports: Vec<u16>,
    /// How long a connection on which neither side has sent a byte is kept
    /// before it is closed ([`SilentClient`]). Default `None`: kept until
    /// one side speaks, since an application may open a connection long
    /// before its first use. Meant for connections from untrusted clients,
    /// which could otherwise hold a descriptor (and its upstream
    /// connection) each for free. A server that speaks first, or a client
    /// that has sent a byte, is never cut by it.
    pub silent_timeout: Option<Duration>,
}

/// What the detector may ask of a connection's metadata.
///
/// Every method has a default, so `impl DetectMeta for MyMeta {}` is enough for
/// metadata that knows neither its target port nor its server.
pub trait DetectMeta {
    /// The destination port, checked against [`DetectConfig::opaque_ports`].
    fn target_port(&self) -> Option<u16> {
        None
    }

    /// Polled while the client has sent nothing yet: ready with
    /// [`ServerEvent::Spoke`] when the server has sent bytes (or closed), or
    /// [`ServerEvent::Unreachable`] when there is no server to wait for (its
    /// connection failed). Pending forever when there is no server to watch.
    fn poll_server_first(&mut self, cx: &mut Context<'_>) -> Poll<ServerEvent> {
        let _ = cx;
        Poll::Pending
    }

    /// The first bytes the server sent, once [`poll_server_first`] answered
    /// [`ServerEvent::Spoke`]: peeked, never taken (they must still reach the
    /// client unchanged), at most [`SERVER_GREETING_LEN`] of them. Detection
    /// looks for a greeting in them ([`detect_server_greeting`]: MySQL), so
    /// that such a connection is labelled by its protocol instead of
    /// [`Outcome::ServerFirst`]. Empty by default: the server's bytes are
    /// unknown, and the outcome stays `ServerFirst`.
    ///
    /// [`poll_server_first`]: Self::poll_server_first
    fn server_first_bytes(&self) -> &[u8] {
        &[]
    }

    /// Told when [`DetectConfig::silent_timeout`] expires, just before the
    /// connection ends with [`SilentClient`] (to count it, say).
    fn on_silent_timeout(&mut self) {}
}

/// What [`DetectMeta::poll_server_first`] saw of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The server sent bytes or closed before the client spoke: detection
    /// ends with [`Outcome::ServerFirst`], or with the protocol of a
    /// greeting it recognises in [`DetectMeta::server_first_bytes`].
    Spoke,
    /// The server cannot be reached. Detection no longer waits for a banner
    /// that will never come: it gives a silent client
    /// [`DetectConfig::detect_timeout`] to speak, then ends with
    /// [`Outcome::Unknown`], so the inner service can answer the client (an
    /// HTTP 502, a reset) without hanging.
    Unreachable,
}

impl DetectMeta for () {}

/// An accepted connection: its metadata and its byte stream.
#[derive(Debug)]
pub struct Conn<M, I> {
    /// What is known about the connection (addresses, direction...).
    pub meta: M,
    /// The client's byte stream.
    pub io: I,
}

/// How detection ended: the label a connection is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The connection speaks this protocol: the client's first bytes said
    /// so, or, for [`Protocol::Mysql`], the server's greeting (the server
    /// spoke first).
    Protocol(Protocol),
    /// The server spoke before the client sent anything, and its first bytes
    /// are no greeting detection recognises (a MySQL greeting is
    /// `Protocol(Protocol::Mysql)` instead).
    ServerFirst,
    /// The destination port is configured opaque: nothing was read.
    Opaque,
    /// No recognised protocol (or the client closed or stalled mid-prefix).
    Unknown,
}

/// A connection after detection: what the inner service of [`Detect`] receives.
#[derive(Debug)]
pub struct Detected<M, I> {
    /// How detection ended.
    pub outcome: Outcome,
    /// The parsed ClientHello when the outcome is TLS and it was complete
    /// within [`DetectConfig::max_prefix`].
    pub client_hello: Option<ClientHello>,
    /// The connection's metadata, as given to [`Detect`].
    pub meta: M,
    /// The client's stream, replaying the bytes detection read.
    pub io: PrefixedIo<I>,
}

/// A [`Layer`] that wraps a service in [`Detect`]: it reads a connection's
/// first bytes and tells the inner service what protocol they are.
///
/// It takes a [`Conn`] and calls the inner service with a [`Detected`]: the
/// [`Outcome`], the ClientHello of a TLS connection, the metadata as given,
/// and the client stream in a [`PrefixedIo`] that replays the bytes read
/// here before any others. From the layer above it needs metadata that
/// implements [`DetectMeta`]: for the opaque ports, the target port; to end
/// detection when the server speaks first, a way to watch the server
/// (l7inspect-core's `ConnectLayer` provides both).
///
/// # Behaviour on the wire
///
/// - **Client speaks first** (HTTP, TLS, databases...): the layer reads the
///   client's first segment, runs [`detect`](crate::detect) and calls the
///   inner service at once. It reads more only while the bytes are a
///   consistent but incomplete prefix (a request line split over segments, a
///   ClientHello over several records), for at most
///   [`DetectConfig::detect_timeout`] after the first byte and at most
///   [`DetectConfig::max_prefix`] bytes. Nothing is forwarded while it reads.
/// - **Server speaks first** (SSH, SMTP, MySQL, FTP, NATS): the caller dials
///   the server while detection runs and reports, through
///   [`DetectMeta::poll_server_first`], when the server has something to say.
///   Detection then ends at once with [`Outcome::ServerFirst`], so the
///   banner is not held back by any timeout. If the metadata can show the
///   server's first bytes ([`DetectMeta::server_first_bytes`]) and they are
///   a MySQL greeting, the outcome is `Protocol(Protocol::Mysql)` instead.
///   Those bytes are judged as they were when the server was first heard,
///   with no wait for more: a greeting split across TCP segments (servers
///   write it whole, in one segment of about 100 bytes) stays
///   `ServerFirst`, so that no banner is ever delayed for a label.
/// - **Nobody speaks**: by default the layer waits, with no timeout of its
///   own: a silent connection (a pre-opened pool connection, say) is still
///   detected when its client finally writes. With
///   [`DetectConfig::silent_timeout`] (for untrusted clients), a connection
///   on which neither side sent a byte in that time ends with
///   [`SilentClient`].
/// - **Client EOF** before a decision: whatever was read is judged as is and
///   handed on; the inner service sees the EOF after the replayed bytes.
/// - **Opaque ports** (see [`DetectConfig::opaque_ports`]) skip reading
///   entirely: [`Outcome::Opaque`].
///
/// The inner service always receives every byte the client sent, in order:
/// the bytes read here are replayed by [`PrefixedIo`].
///
/// # Example
///
/// Connections to port 3306 are configured opaque and not read; others are
/// detected, and their bytes replayed:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// use l7inspect_detect::{
///     Conn, DetectConfig, DetectLayer, DetectMeta, Detected, Outcome, Protocol,
/// };
/// use tokio::io::AsyncReadExt;
/// use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
///
/// struct Port(u16);
/// impl DetectMeta for Port {
///     fn target_port(&self) -> Option<u16> {
///         Some(self.0)
///     }
/// }
///
/// let config = DetectConfig { opaque_ports: vec![3306], ..DetectConfig::default() };
/// let svc = ServiceBuilder::new()
///     .layer(DetectLayer::new(config))
///     .service(service_fn(|mut d: Detected<Port, &'static [u8]>| async move {
///         let mut bytes = Vec::new();
///         d.io.read_to_end(&mut bytes).await?; // every byte, the ones read first included
///         Ok::<_, BoxError>((d.outcome, bytes))
///     }));
///
/// let ping = b"*1\r\n$4\r\nPING\r\n";
/// let conn = Conn { meta: Port(6379), io: &ping[..] };
/// let (outcome, bytes) = svc.clone().oneshot(conn).await?;
/// assert_eq!(outcome, Outcome::Protocol(Protocol::Redis));
/// assert_eq!(bytes, ping);
///
/// let conn = Conn { meta: Port(3306), io: &b""[..] };
/// assert_eq!(svc.oneshot(conn).await?.0, Outcome::Opaque);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct DetectLayer {
    config: Arc<DetectConfig>,
}

/// Detects the protocol of each [`Conn`] and calls the inner service with a
/// [`Detected`].
#[derive(Clone, Debug)]
pub struct Detect<S> {
    inner: S,
    config: Arc<DetectConfig>,
}

/// The future returned by [`Detect`]: one box per connection, none per byte.
pub type ResponseFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

/// The first bytes of a connection could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's first bytes failed: {0}")]
pub struct DetectIoError(#[source] pub io::Error);

/// Neither the client nor the server sent a byte within
/// [`DetectConfig::silent_timeout`]: the connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing for {0:?}")]
pub struct SilentClient(pub Duration);

/// The most of a server's first bytes [`DetectMeta::server_first_bytes`]
/// needs to hold: enough for [`detect_server_greeting`] to decide on any
/// greeting it accepts (a MySQL greeting is decided by its 83rd byte at
/// the latest).
pub const SERVER_GREETING_LEN: usize = 128;

/// Initial buffer; grown by doubling up to `max_prefix`. Most first segments
/// (request lines, ClientHellos, database startups) fit, and a silent
/// connection holds no more than this.
const INITIAL_BUFFER: usize = 1024;

// === impl DetectConfig ===

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            max_prefix: 8 * 1024,
            detect_timeout: Duration::from_secs(1),
            opaque_ports: Vec::new(),
            silent_timeout: None,
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// The metrics label: a [`Protocol::as_str`], `server_first`, `opaque` or `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Protocol(p) => p.as_str(),
            Outcome::ServerFirst => "server_first",
            Outcome::Opaque => "opaque",
            Outcome::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl DetectLayer ===

impl DetectLayer {
    /// A layer with these settings.
    pub fn new(config: DetectConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for DetectLayer {
    type Service = Detect<S>;

    fn layer(&self, inner: S) -> Detect<S> {
        Detect {
            inner,
            config: self.config.clone(),
        }
    }
}

// === impl Detect ===

impl<S> Detect<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: DetectConfig) -> Self {
        DetectLayer::new(config).layer(inner)
    }

    /// A layer with these settings.
    pub fn layer(config: DetectConfig) -> DetectLayer {
        DetectLayer::new(config)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, I> Service<Conn<M, I>> for Detect<S>
where
    S: Service<Detected<M, I>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    M: DetectMeta + Send + 'static,
    I: AsyncRead + Unpin + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<M, I>) -> Self::Future {
        // Take the service that was made ready; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Detection runs in a box of its own that owns the connection and
        // is freed once detection ends. The returned future lives as long as
        // the connection: it captures only that box and the inner service,
        // not room for the sniffing state (reads, timers) or a second copy
        // of the connection.
        let detecting = Box::pin(detect_conn(self.config.clone(), conn));
        Box::pin(async move {
            let detected = detecting.await?;
            inner.call(detected).await.map_err(Into::into)
        })
    }
}

/// Detects the protocol of `conn`: [`Outcome::Opaque`] for an opaque port,
/// else what [`sniff`] decides.
async fn detect_conn<M, I>(
    config: Arc<DetectConfig>,
    conn: Conn<M, I>,
) -> Result<Detected<M, I>, BoxError>
where
    M: DetectMeta,
    I: AsyncRead + Unpin,
{
    let Conn { mut meta, mut io } = conn;
    let opaque = meta
        .target_port()
        .is_some_and(|p| config.opaque_ports.contains(&p));
    let sniffed = if opaque {
        Sniffed::new(Outcome::Opaque, BytesMut::new())
    } else {
        sniff(&config, &mut meta, &mut io).await?
    };
    Ok(Detected {
        outcome: sniffed.outcome,
        client_hello: sniffed.client_hello,
        meta,
        io: PrefixedIo::new(sniffed.prefix.freeze(), io),
    })
}

/// What [`sniff`] read and decided.
struct Sniffed {
    outcome: Outcome,
    client_hello: Option<ClientHello>,
    prefix: BytesMut,
}

impl Sniffed {
    fn new(outcome: Outcome, prefix: BytesMut) -> Self {
        Self {
            outcome,
            client_hello: None,
            prefix,
        }
    }
}

/// Reads the client's first bytes until they decide the outcome.
async fn sniff<M, I>(config: &DetectConfig, meta: &mut M, io: &mut I) -> Result<Sniffed, BoxError>
where
    M: DetectMeta,
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER.min(config.max_prefix.max(1)));

    // Phase 1: the first bytes, racing the server. No timeout (see module
    // docs) unless the server is unreachable, or a silent client is bounded.
    let mut unreachable_deadline = None;
    let silent_deadline = config
        .silent_timeout
        .map(|t| tokio::time::Instant::now() + t);
    loop {
        tokio::select! {
            biased;
            read = io.read_buf(&mut buf) => {
                if read.map_err(DetectIoError)? == 0 {
                    return Ok(Sniffed::new(Outcome::Unknown, buf));
                }
                break;
            }
            event = poll_fn(|cx| meta.poll_server_first(cx)), if unreachable_deadline.is_none() => {
                match event {
                    ServerEvent::Spoke => {
                        let outcome = server_first_outcome(meta.server_first_bytes());
                        return Ok(Sniffed::new(outcome, buf));
                    }
                    ServerEvent::Unreachable => {
                        unreachable_deadline =
                            Some(tokio::time::Instant::now() + config.detect_timeout);
                    }
                }
            }
            () = sleep_until_some(unreachable_deadline) => {
                return Ok(Sniffed::new(Outcome::Unknown, buf));
            }
            () = sleep_until_some(silent_deadline), if unreachable_deadline.is_none() => {
                meta.on_silent_timeout();
                let timeout = config.silent_timeout.unwrap_or_default();
                return Err(SilentClient(timeout).into());
            }
        }
    }

    // Phase 2: complete the first message, bounded by time and size. The
    // server may answer a partial message; then the client is waiting for it
    // and detection must stop, so keep watching it.
    let deadline = tokio::time::Instant::now() + config.detect_timeout;
    let mut hello_pending = false;
    loop {
        let verdict = if hello_pending {
            match parse_client_hello(&buf) {
                ParsedHello::Complete(hello) => {
                    return Ok(Sniffed {
                        outcome: Outcome::Protocol(Protocol::Tls),
                        client_hello: Some(hello),
                        prefix: buf,
                    });
                }
                ParsedHello::Invalid => {
                    return Ok(Sniffed::new(Outcome::Protocol(Protocol::Tls), buf));
                }
                ParsedHello::NeedMore => None,
            }
        } else {
            match detect(&buf) {
                Detection::Found(Protocol::Tls) => {
                    hello_pending = true;
                    continue;
                }
                Detection::Found(p) => Some(Outcome::Protocol(p)),
                Detection::Unknown => Some(Outcome::Unknown),
                Detection::NeedMore => None,
            }
        };
        if let Some(outcome) = verdict {
            return Ok(Sniffed::new(outcome, buf));
        }
        // Still incomplete: what we can say if no more bytes come.
        let fallback = if hello_pending {
            Outcome::Protocol(Protocol::Tls)
        } else {
            Outcome::Unknown
        };
        if buf.len() >= config.max_prefix {
            return Ok(Sniffed::new(fallback, buf));
        }
        if buf.len() == buf.capacity() {
            let grow = buf.capacity().min(config.max_prefix - buf.len());
            buf.reserve(grow);
        }
        tokio::select! {
            biased;
            read = io.read_buf(&mut buf) => {
                if read.map_err(DetectIoError)? == 0 {
                    return Ok(Sniffed::new(fallback, buf));
                }
            }
            _ = poll_fn(|cx| meta.poll_server_first(cx)) => return Ok(Sniffed::new(fallback, buf)),
            () = tokio::time::sleep_until(deadline) => return Ok(Sniffed::new(fallback, buf)),
        }
    }
}

/// How detection ends when the server spoke first and sent `bytes` (as far
/// as they are known): the protocol of a greeting recognised in them, or
/// [`Outcome::ServerFirst`], also for a greeting not complete enough to tell.
fn server_first_outcome(bytes: &[u8]) -> Outcome {
    match detect_server_greeting(bytes) {
        Detection::Found(p) => Outcome::Protocol(p),
        Detection::NeedMore | Detection::Unknown => Outcome::ServerFirst,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tower::{ServiceExt, service_fn};

    /// An inner service that returns what detection decided and every byte
    /// of the stream it was handed.
    fn recorder() -> impl Service<
        Detected<(), tokio_test::io::Mock>,
        Response = (Outcome, Option<ClientHello>, Vec<u8>),
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        service_fn(|mut d: Detected<(), tokio_test::io::Mock>| async move {
            let mut all = Vec::new();
            d.io.read_to_end(&mut all).await?;
            Ok::<_, BoxError>((d.outcome, d.client_hello, all))
        })
    }

    async fn run(io: tokio_test::io::Mock) -> (Outcome, Option<ClientHello>, Vec<u8>) {
        Detect::new(recorder(), DetectConfig::default())
            .oneshot(Conn { meta: (), io })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn whole_request_in_one_read() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let io = tokio_test::io::Builder::new().read(req).build();
        let (outcome, _, bytes) = run(io).await;
        assert_eq!(outcome, Outcome::Protocol(Protocol::Http1));
        assert_eq!(bytes, req);
    }

    #[tokio::test]
    async fn one_byte_at_a_time_gives_the_same_answer() {
        let req = b"POST /x HTTP/1.1\r\n";
        let mut b = tokio_test::io::Builder::new();
        for byte in req.chunks(1) {
            b.read(byte);
        }
        let (outcome, _, bytes) = run(b.build()).await;
        assert_eq!(outcome, Outcome::Protocol(Protocol::Http1));
        assert_eq!(bytes, req);
    }

    #[tokio::test]
    async fn client_eof_mid_prefix_is_unknown_and_replayed() {
        let io = tokio_test::io::Builder::new().read(b"GET /pa").build();
        let (outcome, _, bytes) = run(io).await;
        assert_eq!(outcome, Outcome::Unknown);
        assert_eq!(bytes, b"GET /pa");
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_prefix_times_out_as_unknown() {
        let io = tokio_test::io::Builder::new()
            .read(b"GET /slow")
            .wait(Duration::from_secs(5))
            .read(b" HTTP/1.1\r\n")
            .build();
        let (outcome, _, bytes) = run(io).await;
        assert_eq!(outcome, Outcome::Unknown);
        assert_eq!(bytes, b"GET /slow HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_not_timed_out() {
        let io = tokio_test::io::Builder::new()
            .wait(Duration::from_secs(60))
            .read(b"GET / HTTP/1.1\r\n")
            .build();
        let (outcome, _, _) = run(io).await;
        assert_eq!(outcome, Outcome::Protocol(Protocol::Http1));
    }

    #[tokio::test]
    async fn over_max_prefix_is_unknown() {
        let long = [b'a'; 300];
        let io = tokio_test::io::Builder::new().read(&long).build();
        let config = DetectConfig {
            max_prefix: 100,
            ..Default::default()
        };
        let (outcome, _, bytes) = Detect::new(recorder(), config)
            .oneshot(Conn { meta: (), io })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Unknown);
        assert_eq!(bytes.len(), 300);
    }

    /// Metadata whose server speaks first immediately.
    struct Banner;
    impl DetectMeta for Banner {
        fn poll_server_first(&mut self, _: &mut Context<'_>) -> Poll<ServerEvent> {
            Poll::Ready(ServerEvent::Spoke)
        }
        fn target_port(&self) -> Option<u16> {
            Some(22)
        }
    }

    #[tokio::test]
    async fn server_first_ends_detection_without_reading() {
        let (client, _peer) = tokio::io::duplex(64);
        let inner = service_fn(|d: Detected<Banner, tokio::io::DuplexStream>| async move {
            Ok::<_, BoxError>((d.outcome, d.io.prefix().len()))
        });
        let out = Detect::new(inner, DetectConfig::default())
            .oneshot(Conn {
                meta: Banner,
                io: client,
            })
            .await
            .unwrap();
        assert_eq!(out, (Outcome::ServerFirst, 0));
    }

    /// Metadata whose server spoke first with these bytes.
    struct Greeting(&'static [u8]);
    impl DetectMeta for Greeting {
        fn poll_server_first(&mut self, _: &mut Context<'_>) -> Poll<ServerEvent> {
            Poll::Ready(ServerEvent::Spoke)
        }
        fn server_first_bytes(&self) -> &[u8] {
            self.0
        }
    }

    async fn run_greeting(bytes: &'static [u8]) -> (Outcome, usize) {
        let (client, _peer) = tokio::io::duplex(64);
        let inner = service_fn(
            |d: Detected<Greeting, tokio::io::DuplexStream>| async move {
                Ok::<_, BoxError>((d.outcome, d.io.prefix().len()))
            },
        );
        Detect::new(inner, DetectConfig::default())
            .oneshot(Conn {
                meta: Greeting(bytes),
                io: client,
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_mysql_greeting_is_mysql_other_banners_server_first() {
        let greeting = include_bytes!("../testdata/mysql_mariadb_greeting.bin");
        assert_eq!(
            run_greeting(greeting).await,
            (Outcome::Protocol(Protocol::Mysql), 0)
        );
        // Only what detection needs is peeked at.
        assert_eq!(
            run_greeting(&greeting[..SERVER_GREETING_LEN.min(greeting.len())]).await,
            (Outcome::Protocol(Protocol::Mysql), 0)
        );
        // Cut before it can tell: no waiting for more, server_first.
        assert_eq!(
            run_greeting(&greeting[..8]).await,
            (Outcome::ServerFirst, 0)
        );
        assert_eq!(
            run_greeting(b"SSH-2.0-OpenSSH_9.2p1\r\n").await,
            (Outcome::ServerFirst, 0)
        );
        assert_eq!(run_greeting(b"").await, (Outcome::ServerFirst, 0));
    }

    /// Metadata whose server could not be reached.
    struct Unreachable;
    impl DetectMeta for Unreachable {
        fn poll_server_first(&mut self, _: &mut Context<'_>) -> Poll<ServerEvent> {
            Poll::Ready(ServerEvent::Unreachable)
        }
    }

    async fn run_unreachable(io: tokio_test::io::Mock) -> Outcome {
        let inner = service_fn(
            |d: Detected<Unreachable, tokio_test::io::Mock>| async move { Ok::<_, BoxError>(d.outcome) },
        );
        Detect::new(inner, DetectConfig::default())
            .oneshot(Conn {
                meta: Unreachable,
                io,
            })
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_server_still_detects_a_prompt_client() {
        let io = tokio_test::io::Builder::new()
            .wait(Duration::from_millis(500))
            .read(b"GET / HTTP/1.1\r\n")
            .build();
        assert_eq!(
            run_unreachable(io).await,
            Outcome::Protocol(Protocol::Http1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_server_and_silent_client_end_as_unknown() {
        let start = tokio::time::Instant::now();
        // The mock is never read: it would panic on an unexpected read
        // result, and it outlives the timeout.
        let io = tokio_test::io::Builder::new()
            .wait(Duration::from_secs(3600))
            .build();
        assert_eq!(run_unreachable(io).await, Outcome::Unknown);
        assert_eq!(start.elapsed(), DetectConfig::default().detect_timeout);
    }

    #[tokio::test]
    async fn opaque_port_skips_detection() {
        // The mock fails the test if it is read from.
        let io = tokio_test::io::Builder::new().build();
        let inner = service_fn(|d: Detected<Banner, tokio_test::io::Mock>| async move {
            Ok::<_, BoxError>(d.outcome)
        });
        let config = DetectConfig {
            opaque_ports: vec![22],
            ..Default::default()
        };
        let out = Detect::new(inner, config)
            .oneshot(Conn { meta: Banner, io })
            .await
            .unwrap();
        assert_eq!(out, Outcome::Opaque);
    }
}
