//! TLS passing through the sidecar (not terminated), with real sockets on
//! 127.0.0.1: a rustls client and a rustls server on either side of an
//! explicit forward.
//!
//! - The client sees the upstream's certificate and its bytes unchanged.
//! - Each connection gets exactly one span (named after the SNI, with the
//!   offered versions and ALPN, the negotiated version, cipher and, up to
//!   TLS 1.2, ALPN) whose byte counts equal what both ends counted on
//!   their own sockets, and is counted by SNI in
//!   `l7inspect_tls_connections_total`. A reset on either side, or a
//!   refused upstream connect, fails the span.
//! - Malformed, truncated or slow ClientHellos reach a recording server
//!   byte for byte and leave the sidecar healthy.
//!
//! A connection is known to be over (its span recorded) when
//! `l7inspect_tcp_open_connections` is back to 0 for it: the span is
//! recorded once the client stream is dropped and the relaying future has
//! ended, both inside the future that keeps the gauge up.

mod support;

use l7inspect_sidecar::{Forward, SidecarConfig};
use l7inspect_test_support::{eventually, pki::TestCa};
use l7inspect_tls::{BYTES_TO_CLIENT, BYTES_TO_SERVER, CLIENT_ALPN, CLIENT_VERSIONS};
use l7inspect_trace::span::SpanRecord;
use opentelemetry::{Array, Value, trace::SpanKind};
use opentelemetry_semantic_conventions::attribute as semconv;
use rustls::{
    CipherSuite, ClientConfig, ProtocolVersion, RootCertStore, ServerConfig,
    SupportedProtocolVersion,
    crypto::{CryptoProvider, ring},
    version::{TLS12, TLS13},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Once,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use support::{Pattern, Running, start};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The ALPN protocols every test client offers, in its order.
const CLIENT_OFFERS: [&str; 2] = ["h2", "http/1.1"];

/// `tls.client.server_name`, deprecated in favour of `server.address`:
/// the spans carry both (l7inspect-trace writes it for the backends that
/// still read it).
#[allow(deprecated)]
const TLS_CLIENT_SERVER_NAME: &str = semconv::TLS_CLIENT_SERVER_NAME;

/// The seed of the servers' responses.
const RESPONSE_SEED: u64 = 0x7e57_7e57;

// === counting sockets ===

/// Bytes read from and written to one socket, as its owner counted them.
#[derive(Clone, Debug, Default)]
struct Tally {
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Tally {
    fn read(&self) -> u64 {
        self.read.load(Ordering::SeqCst)
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

/// A stream that counts what crosses it (under TLS: the bytes on the wire).
struct Counted<S> {
    io: S,
    tally: Tally,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = (buf.filled().len() - before) as u64;
            this.tally.read.fetch_add(n, Ordering::SeqCst);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.tally.written.fetch_add(n as u64, Ordering::SeqCst);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// === the TLS server ===

/// What a TLS server offers, and how it behaves.
#[derive(Clone, Copy)]
struct ServerSpec {
    versions: &'static [&'static SupportedProtocolVersion],
    /// The one cipher suite it accepts, so the span's is known in advance.
    suite: CipherSuite,
    /// Its ALPN protocols, in its order of preference.
    alpn: &'static [&'static str],
    /// The size of every response.
    response_len: usize,
    /// Accept only secp256r1 for the key exchange: a rustls client's first
    /// key share is X25519, so TLS 1.3 starts with a HelloRetryRequest.
    hello_retry: bool,
    /// Reset the connection (RST) after this many bytes of the response.
    reset_after: Option<usize>,
}

/// A rustls server on 127.0.0.1 presenting a leaf of the test CA.
struct TlsServer {
    addr: SocketAddr,
    /// The DER of the certificate it presents.
    cert: CertificateDer<'static>,
    /// One report per finished connection.
    done: mpsc::UnboundedReceiver<ServerConn>,
}

/// One connection as the server saw it.
#[derive(Debug)]
struct ServerConn {
    request: Vec<u8>,
    /// Bytes read from and written to its TCP socket.
    read: u64,
    written: u64,
    /// How it failed (a client that went away, a reset of its own).
    error: Option<io::ErrorKind>,
}

/// The names every test leaf is valid for.
const LEAF_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "b.test",
    "c0.test",
    "c1.test",
    "c2.test",
    "c3.test",
];

/// A CryptoProvider (ring) with only `suite`, or with all when `None`.
fn provider(suite: Option<CipherSuite>) -> CryptoProvider {
    let mut p = ring::default_provider();
    if let Some(suite) = suite {
        p.cipher_suites.retain(|s| s.suite() == suite);
        assert_eq!(p.cipher_suites.len(), 1, "ring has {suite:?}");
    }
    p
}

/// Starts a server that, per connection: completes the handshake, reads a
/// request (a 4-byte big-endian length and that many bytes), answers
/// `response_len` bytes of the response pattern, closes its side
/// (close_notify, FIN), reads until the client's close_notify, and reports.
/// Failures are reported, not panics: some tests make them on purpose.
async fn tls_server(ca: &TestCa, spec: ServerSpec) -> TlsServer {
    let leaf = ca.server(LEAF_NAMES);
    let cert = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut provider = provider(Some(spec.suite));
    if spec.hello_retry {
        provider
            .kx_groups
            .retain(|g| g.name() == rustls::NamedGroup::secp256r1);
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(spec.versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, done) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let tally = Tally::default();
                let mut request = Vec::new();
                let io = Counted {
                    io: tcp,
                    tally: tally.clone(),
                };
                let res = serve_tls(acceptor, io, spec, &mut request).await;
                let _ = tx.send(ServerConn {
                    request,
                    read: tally.read(),
                    written: tally.written(),
                    error: res.err().map(|e| e.kind()),
                });
            });
        }
    });
    TlsServer { addr, cert, done }
}

/// One connection of [`tls_server`]; the socket is closed when it returns.
async fn serve_tls(
    acceptor: TlsAcceptor,
    io: Counted<TcpStream>,
    spec: ServerSpec,
    request: &mut Vec<u8>,
) -> io::Result<()> {
    let mut tls = acceptor.accept(io).await?;
    let len = tls.read_u32().await?;
    request.resize(len as usize, 0);
    tls.read_exact(request).await?;
    let mut pattern = Pattern::new(RESPONSE_SEED);
    let mut chunk = vec![0; 64 * 1024];
    let mut sent = 0;
    while sent < spec.response_len {
        if let Some(at) = spec.reset_after
            && sent >= at
        {
            tls.flush().await?;
            l7inspect_core::reset(tls.into_inner().0.io);
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = (spec.response_len - sent).min(chunk.len());
        pattern.fill(&mut chunk[..n]);
        tls.write_all(&chunk[..n]).await?;
        sent += n;
    }
    tls.shutdown().await?;
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await?;
    if !rest.is_empty() {
        return Err(io::Error::other(format!(
            "the client sent {} more bytes",
            rest.len()
        )));
    }
    Ok(())
}

impl TlsServer {
    /// The report of the next connection to finish (bounded wait).
    async fn next_conn(&mut self) -> ServerConn {
        tokio::time::timeout(l7inspect_test_support::PATIENCE, self.done.recv())
            .await
            .expect("the server finished a connection")
            .expect("the server runs")
    }
}

// === the TLS client ===

/// One connection as the client saw it.
#[derive(Debug)]
struct ClientConn {
    /// Bytes read from and written to its TCP socket.
    read: u64,
    written: u64,
    /// The DER of the certificate the server presented.
    peer_cert: CertificateDer<'static>,
    version: ProtocolVersion,
    suite: CipherSuite,
    alpn: Option<String>,
}

/// A client trusting only `ca`, offering TLS 1.3 and 1.2, every cipher
/// suite of ring, and ALPN [`CLIENT_OFFERS`].
fn client_config(ca: &TestCa) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider(None)))
        .with_protocol_versions(&[&TLS13, &TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = CLIENT_OFFERS
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Arc::new(config)
}

/// Connects to `proxy` over TLS as `name` (with `config`), sends
/// `request`, reads a response of `response_len` bytes and checks it is
/// the server's pattern, then closes (close_notify, FIN) and reads the
/// socket to its end, so that every byte either way has been counted.
async fn tls_client(
    proxy: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
    request: &[u8],
    response_len: usize,
) -> ClientConn {
    let tally = Tally::default();
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let io = Counted {
        io: tcp,
        tally: tally.clone(),
    };
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(name, io)
        .await
        .expect("client handshake through the sidecar");
    tls.write_u32(request.len() as u32).await.unwrap();
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = Vec::with_capacity(response_len);
    tls.read_to_end(&mut response).await.unwrap();
    assert_eq!(response.len(), response_len, "response length");
    assert!(
        Pattern::new(RESPONSE_SEED).check(&response, &mut Vec::new()),
        "the response is the server's, byte for byte"
    );
    let (_, session) = tls.get_ref();
    let peer_cert = session.peer_certificates().expect("a server certificate")[0].clone();
    let version = session.protocol_version().expect("negotiated");
    let suite = session
        .negotiated_cipher_suite()
        .expect("negotiated")
        .suite();
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8(p.to_vec()).unwrap());
    tls.shutdown().await.unwrap();
    let (mut raw, _) = tls.into_inner();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{} bytes after close_notify", rest.len());
    ClientConn {
        read: tally.read(),
        written: tally.written(),
        peer_cert,
        version,
        suite,
        alpn,
    }
}

// === the sidecar ===

/// No transparent listeners, the admin server on an ephemeral port, and
/// one outbound forward from an ephemeral port to each of `targets`.
fn outbound_config(targets: &[SocketAddr]) -> SidecarConfig {
    SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        outbound_forwards: targets
            .iter()
            .map(|&target| Forward {
                listen: "127.0.0.1:0".parse().unwrap(),
                target,
            })
            .collect(),
        ..SidecarConfig::default()
    }
}

/// Waits (bounded) until `n` connections of `direction` detected as
/// `protocol` were handled and none is open any more: their spans, if
/// any, are recorded.
async fn wait_closed(sidecar: &Running, direction: &str, protocol: &str, n: u64) {
    let labels = format!("{{direction=\"{direction}\",protocol=\"{protocol}\"}}");
    let total = format!("l7inspect_tcp_connections_total{labels}");
    let open = format!("l7inspect_tcp_open_connections{labels}");
    let ok = eventually(|| async {
        sidecar.metric(&total) == Some(n as f64) && sidecar.metric(&open) == Some(0.0)
    })
    .await;
    assert!(
        ok,
        "{n} {direction} {protocol} connections never all closed; metrics:\n{}",
        sidecar.metrics()
    );
}

fn tls_connections(direction: &str, server_name: &str) -> String {
    format!(
        "l7inspect_tls_connections_total{{direction=\"{direction}\",server_name=\"{server_name}\"}}"
    )
}

// === reading spans ===

fn str_attr(span: &SpanRecord, key: &str) -> Option<String> {
    match span.attribute(key)? {
        Value::String(s) => Some(s.as_str().to_owned()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int_attr(span: &SpanRecord, key: &str) -> Option<i64> {
    match span.attribute(key)? {
        Value::I64(i) => Some(i),
        other => panic!("{key} is not an integer: {other:?}"),
    }
}

fn strs_attr(span: &SpanRecord, key: &str) -> Option<Vec<String>> {
    match span.attribute(key)? {
        Value::Array(Array::String(v)) => Some(v.iter().map(|s| s.as_str().to_owned()).collect()),
        other => panic!("{key} is not a string array: {other:?}"),
    }
}

/// What a passthrough span of one rustls connection should say.
struct Expect<'a> {
    kind: SpanKind,
    sni: Option<&'a str>,
    /// `server.port`: the upstream's.
    port: u16,
    version: &'a str,
    cipher: &'a str,
    next_protocol: Option<&'a str>,
}

/// Checks `span` against `want` and the byte counts of both ends.
fn check_span(span: &SpanRecord, want: &Expect<'_>, client: &ClientConn, server: &ServerConn) {
    assert_eq!(server.error, None, "the server's side of the connection");
    let name = want
        .sni
        .map_or_else(|| format!("127.0.0.1:{}", want.port), str::to_owned);
    assert_eq!(span.kind, want.kind, "{span:#?}");
    assert_eq!(span.name, name, "{span:#?}");
    assert!(span.error_type.is_none(), "{span:#?}");
    assert_eq!(str_attr(span, TLS_CLIENT_SERVER_NAME).as_deref(), want.sni);
    assert_eq!(
        str_attr(span, semconv::SERVER_ADDRESS).as_deref(),
        Some(want.sni.unwrap_or("127.0.0.1"))
    );
    assert_eq!(
        int_attr(span, semconv::SERVER_PORT),
        Some(i64::from(want.port))
    );
    assert_eq!(
        str_attr(span, semconv::TLS_PROTOCOL_VERSION).as_deref(),
        Some(want.version),
        "{span:#?}"
    );
    assert_eq!(
        str_attr(span, semconv::TLS_CIPHER).as_deref(),
        Some(want.cipher)
    );
    assert_eq!(
        str_attr(span, semconv::TLS_NEXT_PROTOCOL).as_deref(),
        want.next_protocol
    );
    assert_eq!(
        strs_attr(span, CLIENT_VERSIONS),
        Some(vec!["1.3".to_owned(), "1.2".to_owned()])
    );
    assert_eq!(
        strs_attr(span, CLIENT_ALPN),
        Some(CLIENT_OFFERS.map(str::to_owned).to_vec())
    );
    // Exact: the bytes the proxy read from the client are those the client
    // wrote and the server read; the other way round for the response.
    let to_server = int_attr(span, BYTES_TO_SERVER).expect("bytes to server") as u64;
    let to_client = int_attr(span, BYTES_TO_CLIENT).expect("bytes to client") as u64;
    assert_eq!(
        (to_server, to_client),
        (client.written, client.read),
        "span bytes (to server, to client) against the client's socket"
    );
    assert_eq!(
        (to_server, to_client),
        (server.read, server.written),
        "span bytes (to server, to client) against the server's socket"
    );
}

/// Asserts what the client saw of the negotiation.
fn check_client(client: &ClientConn, server: &TlsServer, spec: (ProtocolVersion, CipherSuite)) {
    assert_eq!(client.peer_cert, server.cert, "the upstream's certificate");
    assert_eq!((client.version, client.suite), spec);
}

fn request(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

// === tests ===

const MIB: usize = 1024 * 1024;

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&TLS13];
static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&TLS12];

fn tls13_server() -> ServerSpec {
    ServerSpec {
        versions: TLS13_ONLY,
        suite: CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        alpn: &["h2", "http/1.1"],
        response_len: MIB,
        hello_retry: false,
        reset_after: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_passes_through_with_one_client_span() {
    let ca = TestCa::new("tls passthrough CA");
    let mut server = tls_server(&ca, tls13_server()).await;
    let sidecar = start(outbound_config(&[server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let req = request(64 * 1024, 1);
    let client = tls_client(proxy, client_config(&ca), "localhost", &req, MIB).await;
    let seen = server.next_conn().await;
    assert_eq!(seen.request, req, "the request, byte for byte");
    check_client(
        &client,
        &server,
        (
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    );
    // TLS 1.3 chooses the ALPN in EncryptedExtensions: the client knows,
    // the proxy cannot.
    assert_eq!(client.alpn.as_deref(), Some("h2"));

    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "one span for one connection: {spans:#?}");
    check_span(
        &spans[0],
        &Expect {
            kind: SpanKind::Client,
            sni: Some("localhost"),
            port: server.addr.port(),
            version: "1.3",
            cipher: "TLS_CHACHA20_POLY1305_SHA256",
            next_protocol: None,
        },
        &client,
        &seen,
    );
    assert!(client.written > req.len() as u64 && client.read > MIB as u64);
    sidecar
        .wait_metric(&tls_connections("outbound", "localhost"), 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_span_shows_the_negotiated_alpn() {
    let ca = TestCa::new("tls passthrough CA");
    // The server speaks only http/1.1 of the two the client offers: the
    // span's negotiated ALPN differs from the offered list.
    let mut server = tls_server(
        &ca,
        ServerSpec {
            versions: TLS12_ONLY,
            suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            alpn: &["http/1.1"],
            ..tls13_server()
        },
    )
    .await;
    let sidecar = start(outbound_config(&[server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let req = request(1000, 2);
    let client = tls_client(proxy, client_config(&ca), "localhost", &req, MIB).await;
    let seen = server.next_conn().await;
    assert_eq!(seen.request, req);
    check_client(
        &client,
        &server,
        (
            ProtocolVersion::TLSv1_2,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    );
    assert_eq!(client.alpn.as_deref(), Some("http/1.1"));

    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    check_span(
        &spans[0],
        &Expect {
            kind: SpanKind::Client,
            sni: Some("localhost"),
            port: server.addr.port(),
            version: "1.2",
            cipher: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            next_protocol: Some("http/1.1"),
        },
        &client,
        &seen,
    );
    sidecar
        .wait_metric(&tls_connections("outbound", "localhost"), 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_gets_its_own_span() {
    let ca = TestCa::new("tls passthrough CA");
    let spec = ServerSpec {
        response_len: 100 * 1024,
        ..tls13_server()
    };
    let mut server = tls_server(&ca, spec).await;
    let sidecar = start(outbound_config(&[server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    // Concurrent connections, told apart by their SNI (and request size).
    let names = ["c0.test", "c1.test", "c2.test", "c3.test"];
    let mut tasks = Vec::new();
    let config = client_config(&ca);
    for (i, name) in names.into_iter().enumerate() {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let req = request(1000 * (i + 1), i as u8);
            let client = tls_client(proxy, config, name, &req, 100 * 1024).await;
            (name, req, client)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let mut seen = Vec::new();
    for _ in &names {
        seen.push(server.next_conn().await);
    }

    wait_closed(&sidecar, "outbound", "tls", names.len() as u64).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), names.len(), "one span each: {spans:#?}");
    for (name, req, client) in &clients {
        let mine: Vec<_> = spans.iter().filter(|s| s.name == *name).collect();
        assert_eq!(mine.len(), 1, "one span named {name}: {spans:#?}");
        let server_side = seen
            .iter()
            .find(|s| s.request == *req)
            .expect("the server saw the request");
        check_span(
            mine[0],
            &Expect {
                kind: SpanKind::Client,
                sni: Some(name),
                port: server.addr.port(),
                version: "1.3",
                cipher: "TLS_CHACHA20_POLY1305_SHA256",
                next_protocol: None,
            },
            client,
            server_side,
        );
        sidecar
            .wait_metric(&tls_connections("outbound", name), 1.0)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_past_the_limit_count_as_other() {
    let ca = TestCa::new("tls passthrough CA");
    let spec = ServerSpec {
        response_len: 4096,
        ..tls13_server()
    };
    let mut server = tls_server(&ca, spec).await;
    let mut config = outbound_config(&[server.addr]);
    config.tls.max_server_names = 1;
    let sidecar = start(config).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    // The first name keeps its label, the second is `other`; without SNI
    // (rustls sends none for an IP address) it is `none`. The spans keep
    // the real names.
    let mut conns = Vec::new();
    for name in ["localhost", "b.test", "127.0.0.1"] {
        let req = request(100, 3);
        let client = tls_client(proxy, client_config(&ca), name, &req, 4096).await;
        conns.push((name, client, server.next_conn().await));
    }
    sidecar
        .wait_metric(&tls_connections("outbound", "localhost"), 1.0)
        .await;
    sidecar
        .wait_metric(&tls_connections("outbound", "other"), 1.0)
        .await;
    sidecar
        .wait_metric(&tls_connections("outbound", "none"), 1.0)
        .await;
    assert_eq!(
        sidecar.metric(&tls_connections("outbound", "b.test")),
        None,
        "{}",
        sidecar.metrics()
    );

    wait_closed(&sidecar, "outbound", "tls", 3).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    for (name, client, seen) in &conns {
        let sni = (*name != "127.0.0.1").then_some(*name);
        let span_name = sni.map_or_else(|| server.addr.to_string(), str::to_owned);
        let span = spans
            .iter()
            .find(|s| s.name == span_name)
            .unwrap_or_else(|| panic!("a span named {span_name}: {spans:#?}"));
        check_span(
            span,
            &Expect {
                kind: SpanKind::Client,
                sni,
                port: server.addr.port(),
                version: "1.3",
                cipher: "TLS_CHACHA20_POLY1305_SHA256",
                next_protocol: None,
            },
            client,
            seen,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spans_connections_are_still_counted() {
    let ca = TestCa::new("tls passthrough CA");
    let mut server = tls_server(&ca, tls13_server()).await;
    let mut config = outbound_config(&[server.addr]);
    config.tls.passthrough_spans = false;
    let sidecar = start(config).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let req = request(5000, 4);
    let client = tls_client(proxy, client_config(&ca), "localhost", &req, MIB).await;
    let seen = server.next_conn().await;
    assert_eq!(seen.request, req);
    assert_eq!(seen.error, None);
    assert_eq!(
        (client.written, client.read),
        (seen.read, seen.written),
        "the bytes pass unchanged"
    );
    check_client(
        &client,
        &server,
        (
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    );

    wait_closed(&sidecar, "outbound", "tls", 1).await;
    sidecar
        .wait_metric(&tls_connections("outbound", "localhost"), 1.0)
        .await;
    let spans = sidecar.spans.snapshot();
    assert!(spans.is_empty(), "no span with spans off: {spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_passthrough_gets_a_server_span() {
    let ca = TestCa::new("tls passthrough CA");
    let mut server = tls_server(&ca, tls13_server()).await;
    let sidecar = start(support::forward_config(server.addr)).await;

    let req = request(20_000, 5);
    let client = tls_client(
        sidecar.inbound(),
        client_config(&ca),
        "localhost",
        &req,
        MIB,
    )
    .await;
    let seen = server.next_conn().await;
    assert_eq!(seen.request, req);
    check_client(
        &client,
        &server,
        (
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    );

    wait_closed(&sidecar, "inbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    check_span(
        &spans[0],
        &Expect {
            kind: SpanKind::Server,
            sni: Some("localhost"),
            port: server.addr.port(),
            version: "1.3",
            cipher: "TLS_CHACHA20_POLY1305_SHA256",
            next_protocol: None,
        },
        &client,
        &seen,
    );
    // A SERVER span's peer is its client.
    assert_eq!(
        str_attr(&spans[0], semconv::CLIENT_ADDRESS).as_deref(),
        Some("127.0.0.1")
    );
    sidecar
        .wait_metric(&tls_connections("inbound", "localhost"), 1.0)
        .await;
    assert_eq!(
        sidecar.metric(&tls_connections("outbound", "localhost")),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_retry_request_still_gives_the_negotiated_version_and_cipher() {
    let ca = TestCa::new("tls passthrough CA");
    let spec = ServerSpec {
        hello_retry: true,
        response_len: 4096,
        ..tls13_server()
    };
    let mut server = tls_server(&ca, spec).await;
    // The server answers a first ClientHello (key share X25519) with a
    // HelloRetryRequest: a ServerHello with a special random.
    let mut probe = TcpStream::connect(server.addr).await.unwrap();
    probe.write_all(&client_hello("localhost")).await.unwrap();
    let mut first = Vec::new();
    let hrr = loop {
        let mut buf = [0; 4096];
        let n = probe.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server answers");
        first.extend_from_slice(&buf[..n]);
        match l7inspect_detect::parse_server_hello(&first) {
            l7inspect_detect::Parsed::Complete(h) => break h,
            l7inspect_detect::Parsed::NeedMore => {}
            l7inspect_detect::Parsed::Invalid => panic!("not a ServerHello: {first:?}"),
        }
    };
    assert!(hrr.hello_retry_request, "{hrr:?}");
    drop(probe);
    assert!(server.next_conn().await.error.is_some(), "the probe's end");

    let sidecar = start(outbound_config(&[server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    // Through the sidecar the client then sends a second ClientHello: the
    // span describes the session all the same, and counts both hellos.
    let req = request(300, 9);
    let client = tls_client(proxy, client_config(&ca), "localhost", &req, 4096).await;
    let seen = server.next_conn().await;
    assert_eq!(seen.request, req);
    check_client(
        &client,
        &server,
        (
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    );
    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    check_span(
        &spans[0],
        &Expect {
            kind: SpanKind::Client,
            sni: Some("localhost"),
            port: server.addr.port(),
            version: "1.3",
            cipher: "TLS_CHACHA20_POLY1305_SHA256",
            next_protocol: None,
        },
        &client,
        &seen,
    );
}

/// Connects through `proxy` as `localhost`, sends `request` and reads
/// the response until `stop` bytes have come, or an error or EOF; returns
/// the stream (its TCP socket is `.get_ref().0.io`) and the read's result.
async fn tls_client_partial(
    proxy: SocketAddr,
    config: Arc<ClientConfig>,
    request: &[u8],
    stop: usize,
) -> (
    tokio_rustls::client::TlsStream<Counted<TcpStream>>,
    io::Result<usize>,
) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let io = Counted {
        io: tcp,
        tally: Tally::default(),
    };
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
        .expect("client handshake through the sidecar");
    tls.write_u32(request.len() as u32).await.unwrap();
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = 0;
    let mut buf = vec![0; 16 * 1024];
    let res = loop {
        match tls.read(&mut buf).await {
            Ok(0) => break Ok(got),
            Ok(n) => {
                got += n;
                if got >= stop {
                    break Ok(got);
                }
            }
            Err(e) => break Err(e),
        }
    };
    (tls, res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_ends_the_span_as_failed() {
    let ca = TestCa::new("tls passthrough CA");
    let mut server = tls_server(&ca, tls13_server()).await;
    let sidecar = start(outbound_config(&[server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let (tls, res) = tls_client_partial(proxy, client_config(&ca), b"reset", 64 * 1024).await;
    assert!(res.unwrap() >= 64 * 1024);
    l7inspect_core::reset(tls.into_inner().0.io);
    let seen = server.next_conn().await;
    assert!(seen.error.is_some(), "the server sees the reset: {seen:?}");

    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "one span, failed: {spans:#?}");
    let span = &spans[0];
    assert_eq!(span.name, "localhost");
    assert_eq!(
        str_attr(span, semconv::TLS_PROTOCOL_VERSION).as_deref(),
        Some("1.3")
    );
    assert!(
        matches!(
            span.error_type.as_deref(),
            Some("connection_reset" | "broken_pipe")
        ),
        "{span:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_ends_the_span_as_failed() {
    let ca = TestCa::new("tls passthrough CA");
    let spec = ServerSpec {
        reset_after: Some(128 * 1024),
        ..tls13_server()
    };
    let mut server = tls_server(&ca, spec).await;
    let sidecar = start(outbound_config(&[server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let (_tls, res) = tls_client_partial(proxy, client_config(&ca), b"reset", MIB).await;
    assert!(
        res.is_err(),
        "the client does not mistake the reset for an end: {res:?}"
    );
    let seen = server.next_conn().await;
    assert_eq!(seen.error, Some(io::ErrorKind::ConnectionReset));

    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "one span, failed: {spans:#?}");
    let span = &spans[0];
    assert_eq!(span.name, "localhost");
    assert!(
        matches!(
            span.error_type.as_deref(),
            Some("connection_reset" | "broken_pipe")
        ),
        "{span:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_ends_the_span_as_failed() {
    let ca = TestCa::new("tls passthrough CA");
    let upstream = l7inspect_test_support::closed_port();
    let sidecar = start(outbound_config(&[upstream])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    // The sidecar resets the client once its ClientHello is read; the span
    // has the ClientHello's bytes and the connect's failure.
    let tally = Tally::default();
    let io = Counted {
        io: TcpStream::connect(proxy).await.unwrap(),
        tally: tally.clone(),
    };
    let res = TlsConnector::from(client_config(&ca))
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await;
    assert!(res.is_err(), "no handshake without an upstream");

    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.name, "localhost");
    assert_eq!(
        span.error_type.as_deref(),
        Some("connection_refused"),
        "{span:#?}"
    );
    assert_eq!(
        int_attr(span, BYTES_TO_SERVER),
        Some(tally.written() as i64)
    );
    assert_eq!(int_attr(span, BYTES_TO_CLIENT), Some(0));
    assert_eq!(tally.read(), 0);
}

// === robustness ===

/// Panics on the runtimes' worker threads (the sidecar's tasks, and the
/// test servers'), counted from the first call on.
static WORKER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_worker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                WORKER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// The reply of the recording server.
const RECORDED: &[u8] = b"recorded";

/// A plain TCP server that, per connection, reads until the client's FIN,
/// reports what it received, answers [`RECORDED`] and closes.
async fn recording_server() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                let _ = tx.send(got);
                s.write_all(RECORDED).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    (addr, rx)
}

async fn next_recorded(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(l7inspect_test_support::PATIENCE, rx.recv())
        .await
        .expect("the recording server finished a connection")
        .expect("the recording server runs")
}

/// A real ClientHello (rustls's first flight) with SNI `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let ca = TestCa::new("unused CA");
    let mut conn = rustls::ClientConnection::new(
        client_config(&ca),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

/// Sends `bytes` in writes of `chunk` bytes (each its own segment, with a
/// pause between them when `pause` is set), then FIN; returns what came
/// back until the sidecar's FIN.
async fn send_in_pieces(
    proxy: SocketAddr,
    bytes: &[u8],
    chunk: usize,
    pause: Option<Duration>,
) -> io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(proxy).await?;
    c.set_nodelay(true)?;
    for piece in bytes.chunks(chunk) {
        c.write_all(piece).await?;
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    c.shutdown().await?;
    let mut back = Vec::new();
    c.read_to_end(&mut back).await?;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_hellos_pass_through_byte_for_byte() {
    count_worker_panics();
    let ca = TestCa::new("tls passthrough CA");
    let (recorder, mut recorded) = recording_server().await;
    let mut server = tls_server(
        &ca,
        ServerSpec {
            response_len: 4096,
            ..tls13_server()
        },
    )
    .await;
    let sidecar = start(outbound_config(&[recorder, server.addr])).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let hello = client_hello("localhost");
    let mut garbage_after_header = vec![0x16, 0x03, 0x01, 0x00, 0x80];
    garbage_after_header.extend(request(0x80, 0xa5).iter().map(|b| b | 0x80));
    // A header and handshake type that look right, then nonsense.
    let mut bad_body = vec![0x16, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00, 0x00, 0x7c];
    bad_body.extend(std::iter::repeat_n(0xff, 0x7c));
    let mut huge = vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01];
    huge.extend(request(64, 7));
    // A plausible length of a ClientHello longer than detection keeps:
    // 20 KiB follow the header, past the 8 KiB detection reads.
    let mut longer_than_prefix = vec![0x16, 0x03, 0x01, 0x41, 0x00, 0x01, 0x00, 0x40, 0xfc];
    longer_than_prefix.extend(request(20 * 1024, 8));
    // What each is, whether it looks like TLS (the start of a
    // ClientHello), and its bytes.
    let cases: [(&str, bool, Vec<u8>); 5] = [
        (
            "half a ClientHello",
            true,
            hello[..hello.len() / 2].to_vec(),
        ),
        ("garbage after a record header", false, garbage_after_header),
        ("a bad ClientHello body", true, bad_body),
        ("a record header claiming 65535 bytes", false, huge),
        (
            "a ClientHello longer than detection reads",
            true,
            longer_than_prefix,
        ),
    ];
    for (what, _, bytes) in &cases {
        let back = send_in_pieces(proxy, bytes, bytes.len(), None).await;
        let got = next_recorded(&mut recorded).await;
        assert!(
            got == *bytes,
            "{what}: the server received {} of {} bytes, or others",
            got.len(),
            bytes.len()
        );
        assert_eq!(back.unwrap(), RECORDED, "{what}: the answer comes back");
    }

    // What starts like a ClientHello is TLS (no SNI to read: `none`) and
    // gets a span named after the destination, with the bytes it passed;
    // the rest is unknown and passed through without one.
    let tls_cases: Vec<_> = cases.iter().filter(|c| c.1).collect();
    wait_closed(&sidecar, "outbound", "tls", tls_cases.len() as u64).await;
    wait_closed(
        &sidecar,
        "outbound",
        "unknown",
        (cases.len() - tls_cases.len()) as u64,
    )
    .await;
    sidecar
        .wait_metric(&tls_connections("outbound", "none"), tls_cases.len() as f64)
        .await;
    let spans = sidecar.spans.snapshot();
    let mut counted: Vec<_> = spans
        .iter()
        .map(|s| {
            assert_eq!(s.name, recorder.to_string(), "{s:#?}");
            assert_eq!(str_attr(s, TLS_CLIENT_SERVER_NAME), None);
            assert_eq!(str_attr(s, semconv::TLS_PROTOCOL_VERSION), None);
            assert!(s.error_type.is_none(), "{s:#?}");
            (int_attr(s, BYTES_TO_SERVER), int_attr(s, BYTES_TO_CLIENT))
        })
        .collect();
    counted.sort();
    let mut want: Vec<_> = tls_cases
        .iter()
        .map(|c| (Some(c.2.len() as i64), Some(RECORDED.len() as i64)))
        .collect();
    want.sort();
    assert_eq!(
        counted, want,
        "bytes (to server, to client) of the TLS-looking cases"
    );

    // Still healthy: a TLS connection through the other forward works.
    let other = sidecar.addrs.outbound_forwards[1].listen;
    let client = tls_client(other, client_config(&ca), "localhost", b"after", 4096).await;
    let seen = server.next_conn().await;
    assert_eq!(seen.request, b"after");
    assert_eq!(seen.error, None);
    assert_eq!((client.written, client.read), (seen.read, seen.written));
    assert!(!sidecar.handle.is_finished(), "the sidecar still runs");
    assert_eq!(WORKER_PANICS.load(Ordering::SeqCst), 0, "a task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_in_tiny_writes_is_still_read() {
    count_worker_panics();
    let (recorder, mut recorded) = recording_server().await;
    let mut config = outbound_config(&[recorder]);
    // Detection waits for the rest of a ClientHello for this long: longer
    // than the pauses below can add up to on any machine, so the outcome
    // does not depend on timing.
    config.detect.detect_timeout = l7inspect_test_support::PATIENCE;
    let sidecar = start(config).await;
    let proxy = sidecar.addrs.outbound_forwards[0].listen;

    let hello = client_hello("split.test");
    let back = send_in_pieces(proxy, &hello, 3, Some(Duration::from_millis(2)))
        .await
        .unwrap();
    assert_eq!(back, RECORDED);
    let got = next_recorded(&mut recorded).await;
    assert!(got == hello, "the ClientHello arrives byte for byte");

    // Read whole despite the pieces: counted and named by its SNI. The
    // server's answer is no ServerHello: no version or cipher.
    sidecar
        .wait_metric(&tls_connections("outbound", "split.test"), 1.0)
        .await;
    wait_closed(&sidecar, "outbound", "tls", 1).await;
    let spans = sidecar.spans.snapshot();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.name, "split.test");
    assert_eq!(
        str_attr(span, TLS_CLIENT_SERVER_NAME).as_deref(),
        Some("split.test")
    );
    assert_eq!(str_attr(span, semconv::TLS_PROTOCOL_VERSION), None);
    assert_eq!(str_attr(span, semconv::TLS_CIPHER), None);
    assert_eq!(
        int_attr(span, BYTES_TO_SERVER),
        Some(hello.len() as i64),
        "{span:#?}"
    );
    assert_eq!(int_attr(span, BYTES_TO_CLIENT), Some(RECORDED.len() as i64));
    assert!(!sidecar.handle.is_finished(), "the sidecar still runs");
    assert_eq!(WORKER_PANICS.load(Ordering::SeqCst), 0, "a task panicked");
}
