//! Outbound TLS interception, end to end on 127.0.0.1: curl talks HTTPS
//! through an outbound forward whose target is a TLS server of the test's
//! own (tokio-rustls with a certificate from an "upstream" CA). Intercepted,
//! curl trusts only the interception CA (made by `make_ca`, or by the
//! binary's `tls make-ca`) and gets the upstream's answer over HTTP/1.1 or
//! HTTP/2, as the upstream chose; keep-alive reconnections to the upstream
//! are TLS; an upstream that does not verify gets nothing and the client an
//! alert; a name that is not intercepted passes through untouched.
//!
//! The upstream records what reached it: completed and failed handshakes,
//! connections whose first byte was not a TLS handshake record (plaintext),
//! and every request served, by connection.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_sidecar::{Forward, SidecarConfig, TlsConfig};
use l7inspect_test_support::{
    TempDir, eventually,
    pki::{Leaf, TestCa},
};
use l7inspect_tls::{InterceptConfig, UPSTREAM_ERROR};
use l7inspect_trace::span::SpanRecord;
use opentelemetry::trace::SpanKind;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use support::{Running, attr, have, spans_for, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufWriter},
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bound on one exchange, so a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(20);

/// The series counting intercepted connections, by result.
fn intercepted(result: &str) -> String {
    format!("l7inspect_tls_intercepted_connections_total{{result=\"{result}\"}}")
}

// ---------------------------------------------------------------------------
// The upstream: a TLS server that records what reached it

/// How the upstream answers.
#[derive(Clone, Copy, Debug)]
enum Serve {
    /// hyper, HTTP/2 when ALPN chose `h2`, else HTTP/1.1: `upstream saw
    /// {version} {path}`.
    Hyper,
    /// HTTP/1.1 by hand: `conn {n} saw {path}`, keep-alive (no `Connection:
    /// close`), and after the `n`th response on a connection the server
    /// closes it (close_notify and FIN written with that response, as a
    /// server closing an idle connection at once).
    CloseAfter(usize),
}

/// A request the upstream served.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// Which TLS connection (1 for the first completed handshake).
    conn: usize,
    /// `HTTP/1.1` or `HTTP/2.0`.
    version: String,
    path: String,
}

#[derive(Debug, Default)]
struct Record {
    handshakes: AtomicUsize,
    /// Why each failed handshake failed.
    failed: Mutex<Vec<String>>,
    /// The first bytes of each connection that did not start with a TLS
    /// handshake record.
    plaintext: Mutex<Vec<Vec<u8>>>,
    requests: Mutex<Vec<Seen>>,
}

struct Upstream {
    addr: SocketAddr,
    record: Arc<Record>,
}

impl Upstream {
    /// Serves `leaf` on 127.0.0.1, choosing among `alpn`.
    async fn start(leaf: &Leaf, alpn: &[&[u8]], serve: Serve) -> Self {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let rec = record.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(tcp, acceptor.clone(), serve, rec.clone()));
            }
        });
        Self { addr, record }
    }

    fn requests(&self) -> Vec<Seen> {
        self.record.requests.lock().unwrap().clone()
    }

    fn handshakes(&self) -> usize {
        self.record.handshakes.load(Ordering::SeqCst)
    }

    fn failed(&self) -> Vec<String> {
        self.record.failed.lock().unwrap().clone()
    }

    /// Nothing but TLS ever reached it.
    fn assert_no_plaintext(&self) {
        let plaintext = self.record.plaintext.lock().unwrap();
        assert!(
            plaintext.is_empty(),
            "plaintext reached the upstream: {:?}",
            plaintext
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, serve: Serve, record: Arc<Record>) {
    // A TLS connection starts with a handshake record (content type 22).
    let mut first = [0u8; 64];
    match timeout(BOUND, tcp.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
        Ok(Ok(n)) if first[0] != 0x16 => {
            record.plaintext.lock().unwrap().push(first[..n].to_vec());
            return;
        }
        Ok(Ok(_)) => {}
    }
    // Writes are buffered until a flush, so that a response and the
    // close_notify after it leave in one segment.
    let tls = match timeout(BOUND, acceptor.accept(BufWriter::new(tcp))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return record.failed.lock().unwrap().push(e.to_string()),
        Err(_) => return record.failed.lock().unwrap().push("timed out".into()),
    };
    let conn = record.handshakes.fetch_add(1, Ordering::SeqCst) + 1;
    match serve {
        Serve::Hyper => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let version = format!("{:?}", req.version());
                let path = req.uri().path().to_owned();
                let body = format!("upstream saw {version} {path}");
                record.requests.lock().unwrap().push(Seen {
                    conn,
                    version,
                    path,
                });
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
            });
            let io = TokioIo::new(tls);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            }
        }
        Serve::CloseAfter(n) => close_after(tls, conn, n, &record).await,
    }
}

/// HTTP/1.1 by hand (GET only): `n` responses, then the close.
async fn close_after(
    mut tls: tokio_rustls::server::TlsStream<BufWriter<TcpStream>>,
    conn: usize,
    n: usize,
    record: &Record,
) {
    let mut buf = Vec::new();
    for served in 1..=n {
        let Some(head) = read_head(&mut tls, &mut buf).await else {
            return;
        };
        let line = head.lines().next().unwrap_or_default().to_owned();
        let mut parts = line.split(' ');
        let (path, version) = (parts.nth(1).unwrap_or_default(), parts.next());
        record.requests.lock().unwrap().push(Seen {
            conn,
            version: version.unwrap_or_default().to_owned(),
            path: path.to_owned(),
        });
        let body = format!("conn {conn} saw {path}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        let done = if served == n {
            // close_notify, then everything in one write, then FIN.
            tls.shutdown().await
        } else {
            tls.flush().await
        };
        if done.is_err() {
            return;
        }
    }
}

/// Reads one request head (up to its blank line) from `io`, keeping what
/// follows in `buf`; `None` at EOF or on an error.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Option<String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match timeout(BOUND, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The sidecar and its clients

/// An interception CA: its certificate and key files.
struct InterceptCa {
    cert: PathBuf,
    key: PathBuf,
}

/// A sidecar with one outbound forward to `upstream`, intercepting `sni`
/// with the CA in `ca`, trusting `upstream_ca` (else the system's roots).
fn intercepting(
    upstream: SocketAddr,
    ca: &InterceptCa,
    sni: &[&str],
    upstream_ca: Option<PathBuf>,
) -> SidecarConfig {
    let mut intercept = InterceptConfig::new(
        ca.cert.clone(),
        ca.key.clone(),
        sni.iter().map(|p| p.parse().unwrap()).collect(),
    );
    intercept.upstream_ca = upstream_ca;
    SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        outbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: upstream,
        }],
        tls: TlsConfig {
            intercept: Some(intercept),
            ..TlsConfig::default()
        },
        ..SidecarConfig::default()
    }
}

fn outbound(sidecar: &Running) -> SocketAddr {
    sidecar.addrs.outbound_forwards[0].listen
}

/// A CA by `l7inspect_tls::make_ca` in `dir`.
fn make_ca(dir: &Path) -> InterceptCa {
    let (cert, key) = l7inspect_tls::make_ca(dir, "test interception CA", 1).unwrap();
    InterceptCa { cert, key }
}

/// Writes the upstream CA's certificate to `dir/upstream-ca.pem`.
fn upstream_ca_file(dir: &Path, ca: &TestCa) -> PathBuf {
    let path = dir.join("upstream-ca.pem");
    std::fs::write(&path, &ca.cert_pem).unwrap();
    path
}

/// A rustls client trusting only the CA certificate in `ca_pem`,
/// offering `alpn`, no session resumption (every connection shows the
/// server's certificate).
fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// A TLS session to `addr` with SNI `name`.
async fn tls_to(
    tls: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    timeout(
        BOUND,
        tls.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp),
    )
    .await
    .unwrap_or_else(|_| panic!("TLS handshake with {addr} hung"))
}

/// Reads one response (its body framed by `content-length`) from `io`,
/// keeping what follows in `buf`: the status, the head, the body.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> (u16, String, String) {
    let head = read_head(io, buf)
        .await
        .unwrap_or_else(|| panic!("no response head; got {:?}", String::from_utf8_lossy(buf)));
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = timeout(BOUND, io.read(&mut chunk))
            .await
            .expect("the body in time")
            .unwrap();
        assert!(n > 0, "EOF in the body of {head:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    (status, head, String::from_utf8(body).unwrap())
}

/// The first finished span that `pick` accepts (bounded wait).
async fn wait_span(
    sidecar: &Running,
    what: &str,
    pick: impl Fn(&SpanRecord) -> bool,
) -> Arc<SpanRecord> {
    let find = || sidecar.spans.snapshot().into_iter().find(|s| pick(s));
    assert!(
        eventually(|| async { find().is_some() }).await,
        "no span {what}; spans: {:#?}",
        sidecar.spans.snapshot()
    );
    find().unwrap()
}

/// `curl -sS --cacert {ca} --resolve {name}:{port}:127.0.0.1
/// https://{name}:{port}{path}`; the output, whose stdout ends with a line
/// `{status} {version}`.
async fn curl(ca: &Path, name: &str, port: u16, path: &str) -> std::process::Output {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    timeout(
        BOUND,
        tokio::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(ca)
            .args([
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl hung")
    .unwrap()
}

/// The body and the `{status} {version}` line of a successful curl.
fn curl_ok(out: &std::process::Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed ({:?}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (body.to_owned(), status.to_owned())
}

// ---------------------------------------------------------------------------
// Tests

/// curl trusts only the interception CA and gets the upstream's answer:
/// over HTTP/1.1 from an upstream that speaks only that (curl offers h2
/// too), over HTTP/2 from one that chose h2. The request's CLIENT span has
/// the session's attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_interception_http1_and_h2() {
    let test = "curl_through_interception_http1_and_h2";
    if !have(test, "curl", "--version") {
        return;
    }
    let dir = TempDir::new(test);
    let ca = make_ca(dir.path());
    let upstream_ca = TestCa::new("upstream CA");
    let upstream_ca_pem = upstream_ca_file(dir.path(), &upstream_ca);
    let leaf = upstream_ca.server(&["localhost"]);
    for (alpn, want_version, upstream_version) in [
        (&[&b"http/1.1"[..]][..], "1.1", "HTTP/1.1"),
        (&[&b"h2"[..], &b"http/1.1"[..]][..], "2", "HTTP/2.0"),
    ] {
        let upstream = Upstream::start(&leaf, alpn, Serve::Hyper).await;
        let sidecar = start(intercepting(
            upstream.addr,
            &ca,
            &["localhost"],
            Some(upstream_ca_pem.clone()),
        ))
        .await;
        let port = outbound(&sidecar).port();
        let path = format!("/inside-{want_version}");
        let out = curl(&ca.cert, "localhost", port, &path).await;
        let (body, status) = curl_ok(&out);
        assert_eq!(status, format!("200 {want_version}"));
        assert_eq!(body, format!("upstream saw {upstream_version} {path}"));
        assert_eq!(
            upstream.requests(),
            vec![Seen {
                conn: 1,
                version: upstream_version.into(),
                path: path.clone(),
            }]
        );

        let span = wait_span(&sidecar, &path, |s| {
            s.http.as_ref().is_some_and(|h| h.path == path)
        })
        .await;
        assert_eq!(span.kind, SpanKind::Client, "{span:?}");
        assert_eq!(attr(&span, "url.path").as_deref(), Some(path.as_str()));
        assert_eq!(attr(&span, "url.scheme").as_deref(), Some("https"));
        assert_eq!(
            attr(&span, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(
            attr(&span, "tls.client.server_name").as_deref(),
            Some("localhost")
        );
        let alpn_chosen = if want_version == "2" {
            "h2"
        } else {
            "http/1.1"
        };
        assert_eq!(
            attr(&span, "tls.next_protocol").as_deref(),
            Some(alpn_chosen)
        );
        sidecar.wait_metric(&intercepted("intercepted"), 1.0).await;

        // What curl verified: a leaf for the name, signed by the
        // interception CA, not the upstream's own.
        let ca_pem = std::fs::read_to_string(&ca.cert).unwrap();
        let stream = tls_to(
            &connector(&ca_pem, &[b"http/1.1"]),
            outbound(&sidecar),
            "localhost",
        )
        .await
        .expect("the minted leaf verifies against the interception CA");
        let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_ne!(served, leaf.der());
        drop(stream);
        sidecar.wait_metric(&intercepted("intercepted"), 2.0).await;
        upstream.assert_no_plaintext();
        assert!(upstream.failed().is_empty(), "{:?}", upstream.failed());
    }
}

/// The CA made by `l7inspect-sidecar tls make-ca --out DIR`: its key is
/// the owner's only, a second run refuses to overwrite (exit 1), and curl
/// trusting it gets through an interception that uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_the_binarys_make_ca() {
    use std::os::unix::fs::PermissionsExt;
    let test = "curl_with_the_binarys_make_ca";
    if !have(test, "curl", "--version") {
        return;
    }
    let dir = TempDir::new(test);
    let out_dir = dir.path().join("ca");
    let make_ca = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_l7inspect-sidecar"))
            .args(["tls", "make-ca", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    let out = make_ca();
    assert!(out.status.success(), "{out:?}");
    let ca = InterceptCa {
        cert: out_dir.join("ca.pem"),
        key: out_dir.join("ca.key"),
    };
    let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "ca.key mode {mode:o}");
    let (cert_before, key_before) = (
        std::fs::read(&ca.cert).unwrap(),
        std::fs::read(&ca.key).unwrap(),
    );
    let again = make_ca();
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains(&ca.key.display().to_string()),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&ca.cert).unwrap(), cert_before);
    assert_eq!(std::fs::read(&ca.key).unwrap(), key_before);

    let upstream_ca = TestCa::new("upstream CA");
    let upstream = Upstream::start(
        &upstream_ca.server(&["localhost"]),
        &[b"http/1.1"],
        Serve::Hyper,
    )
    .await;
    let sidecar = start(intercepting(
        upstream.addr,
        &ca,
        &["localhost"],
        Some(upstream_ca_file(dir.path(), &upstream_ca)),
    ))
    .await;
    let out = curl(&ca.cert, "localhost", outbound(&sidecar).port(), "/made").await;
    let (body, status) = curl_ok(&out);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200 1.1", "upstream saw HTTP/1.1 /made")
    );
    let span = wait_span(&sidecar, "/made", |s| {
        s.http.as_ref().is_some_and(|h| h.path == "/made")
    })
    .await;
    assert_eq!(attr(&span, "url.scheme").as_deref(), Some("https"));
    sidecar.wait_metric(&intercepted("intercepted"), 1.0).await;
    upstream.assert_no_plaintext();
}

/// Several requests on one keep-alive client connection; the upstream
/// closes its connection after the third response, while the fourth
/// request is already on the client's connection (pipelined behind the
/// third). The proxy opens a new upstream connection for it, in TLS: the
/// upstream, which only speaks TLS, answers it on a second session, and no
/// plaintext ever reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reconnection_is_tls() {
    let dir = TempDir::new("keep_alive_reconnection_is_tls");
    let ca = make_ca(dir.path());
    let ca_pem = std::fs::read_to_string(&ca.cert).unwrap();
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = Upstream::start(
        &upstream_ca.server(&["localhost"]),
        &[b"http/1.1"],
        Serve::CloseAfter(3),
    )
    .await;
    let sidecar = start(intercepting(
        upstream.addr,
        &ca,
        &["localhost"],
        Some(upstream_ca_file(dir.path(), &upstream_ca)),
    ))
    .await;
    let mut client = tls_to(
        &connector(&ca_pem, &[b"http/1.1"]),
        outbound(&sidecar),
        "localhost",
    )
    .await
    .unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let mut buf = Vec::new();
    for path in ["/r1", "/r2"] {
        client.write_all(get(path).as_bytes()).await.unwrap();
        let (status, _, body) = read_response(&mut client, &mut buf).await;
        assert_eq!(
            (status, body.as_str()),
            (200, &*format!("conn 1 saw {path}"))
        );
    }
    // The third and fourth requests in one write: the fourth waits in the
    // proxy while the upstream answers the third and closes.
    client
        .write_all(format!("{}{}", get("/r3"), get("/r4")).as_bytes())
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut client, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "conn 1 saw /r3"));
    let (status, _, body) = read_response(&mut client, &mut buf).await;
    // (A plaintext reconnection is reset by the upstream: the 502 would say
    // less than this.)
    upstream.assert_no_plaintext();
    assert_eq!((status, body.as_str()), (200, "conn 2 saw /r4"));

    let seen: Vec<(usize, String)> = upstream
        .requests()
        .into_iter()
        .map(|s| (s.conn, s.path))
        .collect();
    assert_eq!(
        seen,
        [(1, "/r1"), (1, "/r2"), (1, "/r3"), (2, "/r4")].map(|(c, p)| (c, p.to_owned()))
    );
    assert_eq!(upstream.handshakes(), 2);
    assert!(upstream.failed().is_empty(), "{:?}", upstream.failed());
    // One client connection, intercepted once; every request traced as
    // https.
    sidecar.wait_metric(&intercepted("intercepted"), 1.0).await;
    for path in ["/r1", "/r2", "/r3", "/r4"] {
        let span = wait_span(&sidecar, path, |s| {
            s.http.as_ref().is_some_and(|h| h.path == path)
        })
        .await;
        assert_eq!(attr(&span, "url.scheme").as_deref(), Some("https"));
        assert_eq!(
            attr(&span, "http.response.status_code").as_deref(),
            Some("200"),
            "{path}"
        );
    }
}

/// An upstream whose certificate does not verify (the system's roots, or
/// another CA, trusted): curl's handshake gets an alert (exit 35), the
/// upstream gets no request, and a span, a count and the reason say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_is_refused() {
    let test = "untrusted_upstream_is_refused";
    if !have(test, "curl", "--version") {
        return;
    }
    let dir = TempDir::new(test);
    let ca = make_ca(dir.path());
    let upstream_ca = TestCa::new("upstream CA");
    let other_dir = TempDir::new("untrusted_upstream_is_refused-other");
    let other_ca = upstream_ca_file(other_dir.path(), &TestCa::new("another CA"));
    for trusted in [None, Some(other_ca)] {
        let upstream = Upstream::start(
            &upstream_ca.server(&["localhost"]),
            &[b"h2", b"http/1.1"],
            Serve::Hyper,
        )
        .await;
        let sidecar = start(intercepting(
            upstream.addr,
            &ca,
            &["localhost"],
            trusted.clone(),
        ))
        .await;
        let out = curl(&ca.cert, "localhost", outbound(&sidecar).port(), "/secret").await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(35),
            "trusting {trusted:?}: {stderr}"
        );
        assert!(stderr.contains("alert"), "{stderr}");

        let span = wait_span(&sidecar, "with error.type tls_upstream", |s| {
            s.error_type.as_deref() == Some("tls_upstream")
        })
        .await;
        assert_eq!(span.name, "localhost");
        assert!(span.http.is_none(), "{span:?}");
        let why = attr(&span, UPSTREAM_ERROR).unwrap_or_default();
        assert!(why.contains("UnknownIssuer"), "{why:?}");
        sidecar
            .wait_metric(&intercepted("upstream_refused"), 1.0)
            .await;
        assert_eq!(sidecar.metric(&intercepted("intercepted")), None);

        // No request reached it: the proxy gave up in the handshake.
        assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
        assert_eq!(upstream.handshakes(), 0);
        upstream.assert_no_plaintext();
        assert!(
            eventually(|| async { upstream.failed().len() == 1 }).await,
            "{:?}",
            upstream.failed()
        );
        assert!(spans_for(&sidecar, "/secret").is_empty());
    }
}

/// A name the patterns do not match passes through untouched: the client
/// sees the upstream's own certificate, and the connection gets a
/// passthrough span, not an interception. A name they match, on the same
/// sidecar, is intercepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_pass_through_untouched() {
    let test = "other_names_pass_through_untouched";
    if !have(test, "curl", "--version") {
        return;
    }
    let dir = TempDir::new(test);
    let ca = make_ca(dir.path());
    let upstream_ca = TestCa::new("upstream CA");
    let upstream_ca_pem = upstream_ca_file(dir.path(), &upstream_ca);
    let leaf = upstream_ca.server(&["localhost", "api.example.test"]);
    let upstream = Upstream::start(&leaf, &[b"http/1.1"], Serve::Hyper).await;
    let sidecar = start(intercepting(
        upstream.addr,
        &ca,
        &["*.example.test"],
        Some(upstream_ca_pem.clone()),
    ))
    .await;
    let port = outbound(&sidecar).port();

    let out = curl(&upstream_ca_pem, "localhost", port, "/through").await;
    let (body, status) = curl_ok(&out);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200 1.1", "upstream saw HTTP/1.1 /through")
    );
    // The certificate a client sees is the upstream's own.
    let stream = tls_to(
        &connector(&upstream_ca.cert_pem, &[b"http/1.1"]),
        outbound(&sidecar),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        stream.get_ref().1.peer_certificates().unwrap()[0],
        leaf.der()
    );
    drop(stream);
    let span = wait_span(&sidecar, "named localhost", |s| s.name == "localhost").await;
    assert!(span.http.is_none(), "{span:?}");
    assert_eq!(span.kind, SpanKind::Client);
    // Not a refused interception. (curl may close with the upstream's
    // close_notify unread, a reset the span reports as `connection_reset`.)
    assert_ne!(span.error_type.as_deref(), Some("tls_upstream"), "{span:?}");
    assert_eq!(attr(&span, UPSTREAM_ERROR), None, "{span:?}");
    assert_eq!(
        span.tls.as_ref().and_then(|t| t.server_name.as_deref()),
        Some("localhost")
    );
    assert!(spans_for(&sidecar, "/through").is_empty());
    sidecar
        .wait_metric(
            "l7inspect_tls_connections_total{direction=\"outbound\",server_name=\"localhost\"}",
            2.0,
        )
        .await;
    assert_eq!(sidecar.metric(&intercepted("intercepted")), None);

    // One label under the wildcard: intercepted.
    let out = curl(&ca.cert, "api.example.test", port, "/wild").await;
    let (body, _) = curl_ok(&out);
    assert_eq!(body, "upstream saw HTTP/1.1 /wild");
    sidecar.wait_metric(&intercepted("intercepted"), 1.0).await;
    let span = wait_span(&sidecar, "/wild", |s| {
        s.http.as_ref().is_some_and(|h| h.path == "/wild")
    })
    .await;
    assert_eq!(
        attr(&span, "tls.client.server_name").as_deref(),
        Some("api.example.test")
    );
    upstream.assert_no_plaintext();
}
