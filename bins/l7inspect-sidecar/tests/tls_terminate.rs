//! Inbound TLS termination, end to end on 127.0.0.1: curl (`--cacert`,
//! HTTP/1.1 and HTTP/2 by ALPN), `openssl s_client`, a tonic gRPC client
//! over TLS, client certificates, the certificate replaced while requests
//! run, and the startup errors. Certificates are made per test
//! (test-support's `pki`).

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_sidecar::{BuildError, SidecarConfig, TlsConfig};
use l7inspect_test_support::{
    PATIENCE, TempDir, closed_port, eventually,
    pki::{Leaf, TestCa},
};
use l7inspect_tls::{TerminateConfig, TerminatePort};
use l7inspect_trace::span::SpanRecord;
use rustls_pki_types::{CertificateDer, ServerName};
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use support::{Running, attr, forward_config, have, spans_for, start};
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::TlsConnector;

/// Bound on one exchange, so a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Fixtures

/// A backend that answers every request `200` with `backend saw {version}
/// {path}`, counting requests. `h2c`: it also speaks HTTP/2 with prior
/// knowledge (hyper's auto server); otherwise HTTP/1 only.
async fn backend(h2c: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let body = format!("backend saw {:?} {}", req.version(), req.uri().path());
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                });
                let io = TokioIo::new(io);
                if h2c {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, count)
}

/// The certificate files of a test: `cert.pem` and `key.pem` in `dir`.
fn install(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

/// Replaces `path` with `content` the way cert-manager and Vault agents
/// do: a new file renamed over the old one.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A sidecar with one inbound forward to `backend`, whose own port is
/// terminated with the pair in `cert` and `key`.
fn terminating(backend: SocketAddr, cert: PathBuf, key: PathBuf) -> SidecarConfig {
    let mut config = forward_config(backend);
    // The listener's port is not known before it is bound: terminate the
    // port the forward listens on, picked here.
    let port = closed_port().port();
    config.inbound_forwards[0].listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut terminate = TerminateConfig::new(
        vec![TerminatePort {
            port,
            app_port: None,
        }],
        cert,
        key,
    );
    terminate.reload_interval = Duration::from_millis(100);
    config.tls = TlsConfig {
        terminate: Some(terminate),
        ..TlsConfig::default()
    };
    config
}

/// A TLS client trusting only `ca`, offering `alpn`, optionally with a
/// client certificate.
fn connector(ca: &TestCa, alpn: &[&[u8]], client: Option<&Leaf>) -> TlsConnector {
    TlsConnector::from(Arc::new(ca.client_config(alpn, client)))
}

/// An HTTP/1.1 connection over TLS to `addr` (SNI `localhost`), and the
/// certificate the server presented.
async fn h1_over_tls(
    tls: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<(
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    CertificateDer<'static>,
)> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok((sender, cert))
}

/// `GET path` on `sender`; the status and body.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> Result<(u16, String), hyper::Error> {
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn wait_span(sidecar: &Running, path: &str) -> Arc<SpanRecord> {
    assert!(
        eventually(|| async { !spans_for(sidecar, path).is_empty() }).await,
        "no span for {path}"
    );
    spans_for(sidecar, path).remove(0)
}

async fn run(program: &str, args: &[&str]) -> std::process::Output {
    timeout(
        BOUND,
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} hung"))
    .unwrap()
}

// ---------------------------------------------------------------------------
// Tests

/// curl with `--cacert`, over HTTP/1.1 and (the application speaking h2c)
/// HTTP/2 by ALPN; an HTTP/1-only application gets HTTP/1.1 even when curl
/// asks for HTTP/2. Spans carry the session's attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2() {
    let test = "curl_over_http1_and_http2";
    if !have(test, "curl", "--version") {
        return;
    }
    let dir = TempDir::new(test);
    let ca = TestCa::new("curl test CA");
    let ca_file = ca.write_cert(dir.path());
    let (cert, key) = install(dir.path(), &ca.server(&["localhost"]));
    for h2c in [true, false] {
        let (app, _) = backend(h2c).await;
        let sidecar = start(terminating(app, cert.clone(), key.clone())).await;
        let port = sidecar.inbound().port();
        for (flag, path) in [("--http1.1", "/one"), ("--http2", "/two")] {
            let url = format!("https://localhost:{port}{path}");
            let resolve = format!("localhost:{port}:127.0.0.1");
            let out = run(
                "curl",
                &[
                    "-sS",
                    flag,
                    "--cacert",
                    ca_file.to_str().unwrap(),
                    "--resolve",
                    &resolve,
                    "-w",
                    "\n%{http_code} %{http_version}",
                    &url,
                ],
            )
            .await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "curl {flag} (h2c app: {h2c}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (body, status) = stdout.rsplit_once('\n').unwrap();
            let want_version = if flag == "--http2" && h2c { "2" } else { "1.1" };
            assert_eq!(
                status,
                format!("200 {want_version}"),
                "curl {flag}, h2c app: {h2c}"
            );
            // The application gets plaintext, in the version curl negotiated.
            let app_version = if want_version == "2" {
                "HTTP/2.0"
            } else {
                "HTTP/1.1"
            };
            assert_eq!(body, format!("backend saw {app_version} {path}"));

            let span = wait_span(&sidecar, path).await;
            assert_eq!(attr(&span, "url.scheme").as_deref(), Some("https"));
            assert_eq!(attr(&span, "tls.protocol.version").as_deref(), Some("1.3"));
            assert_eq!(
                attr(&span, "tls.client.server_name").as_deref(),
                Some("localhost")
            );
            let alpn = if want_version == "2" {
                "h2"
            } else {
                "http/1.1"
            };
            assert_eq!(attr(&span, "tls.next_protocol").as_deref(), Some(alpn));
            assert!(
                attr(&span, "tls.cipher").is_some_and(|c| c.starts_with("TLS_")),
                "{span:?}"
            );
            assert_eq!(
                attr(&span, "http.response.status_code").as_deref(),
                Some("200")
            );
        }
        sidecar
            .wait_metric(
                "l7inspect_tls_terminated_connections_total{tls_version=\"1.3\"}",
                2.0,
            )
            .await;
    }
}

/// `openssl s_client`: the chain verifies against the CA, ALPN `h2` is
/// chosen for an application that speaks HTTP/2, TLS 1.2 works too, and the
/// served certificate's serial is the leaf's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sees_the_chain_and_alpn() {
    let test = "openssl_s_client_sees_the_chain_and_alpn";
    if !have(test, "openssl", "version") {
        return;
    }
    let dir = TempDir::new(test);
    let ca = TestCa::new("s_client test CA");
    let ca_file = ca.write_cert(dir.path());
    let leaf = ca.server(&["localhost"]);
    let (cert, key) = install(dir.path(), &leaf);
    let (app, _) = backend(true).await;
    let sidecar = start(terminating(app, cert, key)).await;
    let connect = sidecar.inbound().to_string();
    for (version, alpn) in [("-tls1_3", "h2"), ("-tls1_2", "http/1.1")] {
        let out = run(
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect,
                "-servername",
                "localhost",
                "-alpn",
                &format!("{alpn},x-other"),
                version,
                "-CAfile",
                ca_file.to_str().unwrap(),
                "-verify_return_error",
                "-showcerts",
            ],
        )
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("Verify return code: 0 (ok)"),
            "{version}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("ALPN protocol: {alpn}")),
            "{stdout}"
        );
        let want_protocol = if version == "-tls1_3" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert!(stdout.contains(want_protocol), "{stdout}");
        // The leaf served is ours: its serial, as `openssl x509` reads it.
        let pem_start = stdout.find("-----BEGIN CERTIFICATE-----").unwrap();
        let pem_end = stdout.find("-----END CERTIFICATE-----").unwrap() + 25;
        let pem = dir.path().join("served.pem");
        std::fs::write(&pem, &stdout[pem_start..pem_end]).unwrap();
        let serial = run(
            "openssl",
            &["x509", "-noout", "-serial", "-in", pem.to_str().unwrap()],
        )
        .await;
        let serial = String::from_utf8_lossy(&serial.stdout).to_lowercase();
        assert_eq!(serial.trim(), format!("serial={}", leaf.serial));
    }
    sidecar
        .wait_metric(
            "l7inspect_tls_terminated_connections_total{tls_version=\"1.2\"}",
            1.0,
        )
        .await;
}

/// The certificate is replaced by rename while 200+ requests run, each on
/// a new connection: none fails, later handshakes get the new certificate,
/// and a connection opened before keeps working. A garbage key written
/// after that is rejected and the last good pair stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_by_rename_under_load() {
    let test = "certificate_replaced_by_rename_under_load";
    let dir = TempDir::new(test);
    let ca = TestCa::new("rotation test CA");
    let old = ca.server(&["localhost"]);
    let new = ca.server(&["localhost"]);
    let (cert, key) = install(dir.path(), &old);
    let (app, _) = backend(false).await;
    let sidecar = start(terminating(app, cert.clone(), key.clone())).await;
    let addr = sidecar.inbound();
    let tls = connector(&ca, &[b"http/1.1"], None);

    // A connection opened before the change.
    let (mut before, seen) = h1_over_tls(&tls, addr).await.unwrap();
    assert_eq!(seen, old.der());
    assert_eq!(get(&mut before, "/before").await.unwrap().0, 200);

    let mut failures = Vec::new();
    let mut sent = 0;
    let mut first_new = None;
    let one = |sent: &mut usize| {
        let tls = tls.clone();
        *sent += 1;
        let n = *sent;
        async move {
            let result = timeout(BOUND, async {
                let (mut sender, cert) = h1_over_tls(&tls, addr).await?;
                let (status, _) = get(&mut sender, &format!("/r{n}"))
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>((status, cert))
            })
            .await;
            (n, result)
        }
    };
    // 100 requests with the old pair.
    for _ in 0..100 {
        let (n, r) = one(&mut sent).await;
        match r {
            Ok(Ok((200, cert))) => assert_eq!(cert, old.der()),
            other => failures.push(format!("request {n}: {other:?}")),
        }
    }
    // The new pair, certificate first, then key (in between, a mismatched
    // pair is seen and rejected; the old one stays).
    replace(&cert, &new.cert_pem);
    replace(&key, &new.key_pem);
    // Requests go on until a handshake gets the new certificate, then 100 more.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut after = 0;
    while after < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served; metrics:\n{}",
            sidecar.metrics()
        );
        let (n, r) = one(&mut sent).await;
        match r {
            Ok(Ok((200, cert))) if cert == new.der() => {
                first_new.get_or_insert(n);
                after += 1;
            }
            Ok(Ok((200, cert))) => {
                assert_eq!(cert, old.der());
                assert!(
                    first_new.is_none(),
                    "request {n} got the old certificate after the new one"
                );
            }
            other => failures.push(format!("request {n}: {other:?}")),
        }
    }
    assert!(sent >= 200);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
    println!("{sent} requests, the new certificate from request {first_new:?}");
    assert!(
        sidecar.metric("l7inspect_tls_certificate_reloads_total{result=\"loaded\"}") >= Some(1.0)
    );

    // The connection opened before still works, in its old session.
    let (status, body) = get(&mut before, "/still").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "backend saw HTTP/1.1 /still")
    );

    // A garbage key: rejected, logged, counted; the new pair stays.
    let rejected = sidecar
        .metric("l7inspect_tls_certificate_reloads_total{result=\"rejected\"}")
        .unwrap_or(0.0);
    replace(
        &key,
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    );
    sidecar
        .wait_metric(
            "l7inspect_tls_certificate_reloads_total{result=\"rejected\"}",
            rejected + 1.0,
        )
        .await;
    for i in 0..20 {
        let (mut sender, cert) = h1_over_tls(&tls, addr).await.unwrap();
        assert_eq!(cert, new.der(), "after the garbage key, handshake {i}");
        assert_eq!(get(&mut sender, "/after-garbage").await.unwrap().0, 200);
    }
}

/// A Kubernetes secret volume swaps a `..data` symlink: the files the
/// sidecar was given are symlinks through it. The swap is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_symlink_swap() {
    let dir = TempDir::new("kubernetes_secret_symlink_swap");
    let ca = TestCa::new("secret test CA");
    let (first, second) = (ca.server(&["localhost"]), ca.server(&["localhost"]));
    let root = dir.path();
    // As the kubelet lays a secret out: ..2026_xx/tls.crt, ..data ->
    // ..2026_xx, tls.crt -> ..data/tls.crt.
    let write_version = |name: &str, leaf: &Leaf| {
        let v = root.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(v.join("tls.key"), &leaf.key_pem).unwrap();
    };
    write_version("..v1", &first);
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let (app, _) = backend(false).await;
    let sidecar = start(terminating(app, root.join("tls.crt"), root.join("tls.key"))).await;
    let tls = connector(&ca, &[b"http/1.1"], None);
    let (_, seen) = h1_over_tls(&tls, sidecar.inbound()).await.unwrap();
    assert_eq!(seen, first.der());

    write_version("..v2", &second);
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    let swapped = eventually(|| async {
        let (_, seen) = h1_over_tls(&tls, sidecar.inbound()).await.unwrap();
        seen == second.der()
    })
    .await;
    assert!(swapped, "the swapped secret was never served");
}

/// `--tls-client-ca`: a client with a certificate from that CA gets through
/// and its subject is on the span; one without is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_recorded() {
    let dir = TempDir::new("client_certificates_are_required_and_recorded");
    let ca = TestCa::new("mtls test CA");
    let clients = TestCa::new("client CA");
    let (cert, key) = install(dir.path(), &ca.server(&["localhost"]));
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, &clients.cert_pem).unwrap();
    let (app, count) = backend(false).await;
    let mut config = terminating(app, cert, key);
    config.tls.terminate.as_mut().unwrap().client_ca = Some(client_ca);
    let sidecar = start(config).await;

    let with_cert = connector(&ca, &[b"http/1.1"], Some(&clients.client("client-one")));
    let (mut sender, _) = h1_over_tls(&with_cert, sidecar.inbound()).await.unwrap();
    assert_eq!(get(&mut sender, "/mtls").await.unwrap().0, 200);
    let span = wait_span(&sidecar, "/mtls").await;
    assert_eq!(
        attr(&span, "tls.client.subject").as_deref(),
        Some("CN=client-one")
    );

    // No certificate: with TLS 1.3 the client learns it from the server's
    // alert on its first read.
    let without = connector(&ca, &[b"http/1.1"], None);
    let refused = match h1_over_tls(&without, sidecar.inbound()).await {
        Err(_) => true,
        Ok((mut sender, _)) => get(&mut sender, "/no-cert").await.is_err(),
    };
    assert!(refused, "a client without a certificate got through");
    sidecar
        .wait_metric(
            "l7inspect_tls_handshake_errors_total{reason=\"client_certificate\"}",
            1.0,
        )
        .await;
    // A certificate from another CA is refused too.
    let stranger = TestCa::new("stranger CA").client("intruder");
    let other = connector(&ca, &[b"http/1.1"], Some(&stranger));
    let refused = match h1_over_tls(&other, sidecar.inbound()).await {
        Err(_) => true,
        Ok((mut sender, _)) => get(&mut sender, "/stranger").await.is_err(),
    };
    assert!(
        refused,
        "a client with an unknown CA's certificate got through"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "only the good client reached the app"
    );
}

/// A client that does not speak TLS to a terminated port never reaches the
/// application: closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_terminated_port_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("plaintext_to_a_terminated_port_is_refused");
    let ca = TestCa::new("plaintext test CA");
    let (cert, key) = install(dir.path(), &ca.server(&["localhost"]));
    let (app, count) = backend(false).await;
    let sidecar = start(terminating(app, cert, key)).await;
    let mut s = TcpStream::connect(sidecar.inbound()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Closed (a reset is an error here): nothing comes back.
    let _ = timeout(BOUND, s.read_to_end(&mut buf)).await.unwrap();
    assert!(buf.is_empty(), "got {:?}", String::from_utf8_lossy(&buf));
    sidecar
        .wait_metric(
            "l7inspect_tls_handshake_errors_total{reason=\"not_tls\"}",
            1.0,
        )
        .await;
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

/// A missing, mismatched or expired pair, or a bad client CA, is an error
/// at build naming the file and the reason.
#[tokio::test]
async fn bad_files_at_startup_are_named() {
    let dir = TempDir::new("bad_files_at_startup_are_named");
    let ca = TestCa::new("startup test CA");
    let (good_cert, good_key) = ca.server(&["localhost"]).write(dir.path(), "good");
    let (_, other_key) = ca.server(&["localhost"]).write(dir.path(), "other");
    let (expired, expired_key) = ca
        .expired_server(&["localhost"])
        .write(dir.path(), "expired");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(PathBuf, PathBuf, Option<PathBuf>, &Path, &str); 5] = [
        (
            missing.clone(),
            good_key.clone(),
            None,
            &missing,
            "no such file",
        ),
        (
            good_cert.clone(),
            other_key.clone(),
            None,
            &other_key,
            "does not match",
        ),
        (
            expired.clone(),
            expired_key.clone(),
            None,
            &expired,
            "expired",
        ),
        (
            garbage.clone(),
            good_key.clone(),
            None,
            &garbage,
            "no certificate",
        ),
        (
            good_cert.clone(),
            good_key.clone(),
            Some(garbage.clone()),
            &garbage,
            "no certificate",
        ),
    ];
    for (cert, key, client_ca, named, reason) in cases {
        let mut config = terminating("127.0.0.1:9".parse().unwrap(), cert, key);
        config.tls.terminate.as_mut().unwrap().client_ca = client_ca;
        let err = match l7inspect_sidecar::build(config).await {
            Err(e) => e,
            Ok(_) => panic!("built with a bad {}", named.display()),
        };
        assert!(matches!(err, BuildError::Tls(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&named.display().to_string()) && text.contains(reason),
            "{text:?} should name {} and say {reason:?}",
            named.display()
        );
        assert!(!text.contains('\n'), "one line: {text:?}");
    }
}

/// The binary: a bad pair exits 1 with one line on stderr naming the file.
#[test]
fn binary_exits_1_naming_the_bad_file() {
    let dir = TempDir::new("binary_exits_1_naming_the_bad_file");
    let ca = TestCa::new("binary test CA");
    let (cert, _) = ca.server(&["localhost"]).write(dir.path(), "a");
    let (_, key) = ca.server(&["localhost"]).write(dir.path(), "b");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l7inspect-sidecar"))
        .args(["--no-transparent", "--admin-listen", "127.0.0.1:0"])
        .args(["--inbound-forward", "127.0.0.1:0=127.0.0.1:9"])
        .args(["--tls-terminate", "8443", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: TLS certificate: ")
            && lines[0].contains(&key.display().to_string())
            && lines[0].contains("does not match"),
        "{stderr}"
    );
    // --tls-terminate without a certificate is a usage error (2).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l7inspect-sidecar"))
        .args(["--no-transparent", "--tls-terminate", "8443"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

// ---------------------------------------------------------------------------
// gRPC over TLS

/// The message of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

/// `l7inspect.test.Echo/Unary`: answers `echo {text}`.
#[derive(Clone, Copy)]
struct Echo;

impl tonic::server::UnaryService<Msg> for Echo {
    type Response = Msg;
    type Future = std::future::Ready<Result<tonic::Response<Msg>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let text = format!("echo {}", req.into_inner().text);
        std::future::ready(Ok(tonic::Response::new(Msg { text })))
    }
}

/// A gRPC server on HTTP/2 with prior knowledge (as gRPC servers behind a
/// TLS-terminating proxy run).
async fn grpc_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<Incoming>| async move {
                    let mut grpc =
                        tonic::server::Grpc::new(tonic_prost::ProstCodec::<Msg, Msg>::default());
                    Ok::<_, Infallible>(grpc.unary(Echo, req).await)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    addr
}

/// A hyper HTTP/2 connection as a tonic client's transport.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A tonic client over TLS (ALPN `h2`, the CA trusted) calls a gRPC server
/// behind a terminated port: the call succeeds and its span has the RPC
/// and the TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_over_tls() {
    let dir = TempDir::new("tonic_client_over_tls");
    let ca = TestCa::new("grpc test CA");
    let (cert, key) = install(dir.path(), &ca.server(&["localhost"]));
    let app = grpc_backend().await;
    let sidecar = start(terminating(app, cert, key)).await;
    let tls = connector(&ca, &[b"h2"], None);
    let tcp = TcpStream::connect(sidecar.inbound()).await.unwrap();
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let origin = "https://localhost".parse().unwrap();
    let mut client = tonic::client::Grpc::with_origin(H2(sender), origin);
    for i in 0..3 {
        client.ready().await.unwrap();
        let reply: tonic::Response<Msg> = timeout(
            BOUND,
            client.unary(
                tonic::Request::new(Msg {
                    text: format!("hello {i}"),
                }),
                "/l7inspect.test.Echo/Unary".parse().unwrap(),
                tonic_prost::ProstCodec::<Msg, Msg>::default(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(reply.into_inner().text, format!("echo hello {i}"));
    }
    assert!(
        eventually(|| async { spans_for(&sidecar, "/l7inspect.test.Echo/Unary").len() == 3 }).await
    );
    let span = spans_for(&sidecar, "/l7inspect.test.Echo/Unary").remove(0);
    assert_eq!(span.name, "l7inspect.test.Echo/Unary");
    assert_eq!(attr(&span, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(attr(&span, "tls.next_protocol").as_deref(), Some("h2"));
    assert_eq!(attr(&span, "url.scheme").as_deref(), Some("https"));
}
