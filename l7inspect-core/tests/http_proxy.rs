//! HTTP proxying end to end on 127.0.0.1: real clients (curl, nghttp) and a
//! real hyper backend, through the connection stack the sidecar uses
//! (fixed target, connect, detect, track, HTTP, passthrough).
//!
//! curl and nghttp come from Debian (`curl`, `nghttp2-client`); without them
//! the tests that need them print `SKIPPED` (CI installs both).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_core::{
    ConnectConfig, ConnectLayer, Direction, FixedTargetLayer, HttpConfig, HttpLayer, Metrics,
    Passthrough, PassthroughConfig, TrackLayer, bind, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceBuilder;

/// Starts the proxy stack forwarding to `target`; returns its address.
async fn proxy(target: SocketAddr) -> SocketAddr {
    proxy_with(target, HttpConfig::default()).await
}

async fn proxy_with(target: SocketAddr, http: HttpConfig) -> SocketAddr {
    proxy_draining(target, http, CancellationToken::new()).await
}

/// The proxy stack, draining its connections once `drain` is cancelled.
async fn proxy_draining(
    target: SocketAddr,
    http: HttpConfig,
    drain: CancellationToken,
) -> SocketAddr {
    proxy_stack(target, HttpLayer::new(drain).with_config(http)).await
}

/// The proxy stack with per-request services built by `requests`.
async fn proxy_with_requests(
    target: SocketAddr,
    requests: impl l7inspect_core::NewRequestService,
) -> SocketAddr {
    let http = HttpLayer::new(CancellationToken::new()).with_requests(requests);
    proxy_stack(target, http).await
}

/// The connection stack the sidecar uses, with `http` as its HTTP layer,
/// serving on a new port; returns its address.
async fn proxy_stack<N: l7inspect_core::NewRequestService>(
    target: SocketAddr,
    http: HttpLayer<N>,
) -> SocketAddr {
    let metrics = Metrics::default();
    let stack = ServiceBuilder::new()
        .layer(FixedTargetLayer::new(target))
        .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics.clone()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .layer(TrackLayer::new(metrics.clone()))
        .layer(http)
        .service(Passthrough::new(PassthroughConfig::default()).with_metrics(metrics));
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Direction::Inbound,
        stack,
        TaskTracker::new(),
        std::future::pending(),
    ));
    addr
}

/// A hyper backend (HTTP/1 and HTTP/2) that describes each request in its
/// response body: method, target, version, headers in order, body length.
/// `/trailers` answers with a trailer; `/echo` streams the request body
/// back; `/ws` upgrades (HTTP/1) and echoes.
/// Returns its address and a count of the connections it accepted.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(describe);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

async fn describe(
    mut req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>, Infallible> {
    if req.uri().path() == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on_upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/echo" {
        // Streams the body back as it arrives: the response starts before
        // the request has ended.
        return Ok(Response::new(req.into_body().boxed()));
    }
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    let trailers_wanted = req.uri().path() == "/trailers";
    let body = req.into_body().collect().await.unwrap().to_bytes();
    text.push_str(&format!("body {}\n", body.len()));
    let body = Full::new(Bytes::from(text)).map_err(|e| match e {});
    let body = if trailers_wanted {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        body.with_trailers(async move { Some(Ok(trailers)) })
            .boxed()
    } else {
        body.boxed()
    };
    Ok(Response::new(body))
}

/// Runs a command, or prints SKIPPED and returns None when it is missing.
fn run(test: &str, cmd: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(cmd).args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            let reason = format!("{cmd} not available ({e})");
            l7inspect_test_support::skip(test, l7inspect_test_support::Need::Tools, reason);
            None
        }
    }
}

async fn run_async(
    test: &'static str,
    cmd: &'static str,
    args: Vec<String>,
) -> Option<std::process::Output> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(test, cmd, &args)
    })
    .await
    .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_keep_alive_reuses_one_upstream_connection() {
    let (backend, conns) = backend().await;
    let proxy = proxy(backend).await;
    let a = format!("http://{proxy}/a?x=1");
    let b = format!("http://{proxy}/b");
    let Some(out) = run_async(
        "curl_http1_keep_alive",
        "curl",
        vec![
            "-s".into(),
            "-H".into(),
            "Host: Example.COM:8080".into(),
            a,
            b,
        ],
    )
    .await
    else {
        return;
    };
    let text = stdout(&out);
    assert!(text.contains("GET /a?x=1 HTTP/1.1\n"), "{text}");
    assert!(text.contains("GET /b HTTP/1.1\n"), "{text}");
    // Host exactly as the client sent it, twice.
    assert_eq!(
        text.matches("host: Example.COM:8080\n").count(),
        2,
        "{text}"
    );
    // Two requests on one client connection: one upstream connection (1:1).
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_prior_knowledge_stays_http2() {
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let Some(out) = run_async(
        "curl_http2_prior_knowledge",
        "curl",
        vec![
            "-s".into(),
            "--http2-prior-knowledge".into(),
            "-w".into(),
            "version %{http_version}\n".into(),
            format!("http://{proxy}/h2?q=1"),
        ],
    )
    .await
    else {
        return;
    };
    let text = stdout(&out);
    assert!(
        text.contains(&format!("GET http://{proxy}/h2?q=1 HTTP/2.0\n")),
        "{text}"
    );
    assert!(text.ends_with("version 2\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nghttp_concurrent_streams_and_trailers() {
    let (backend, conns) = backend().await;
    let proxy = proxy(backend).await;
    let mut args = vec!["-n".to_string(), "-v".to_string()];
    for i in 0..20 {
        args.push(format!("http://{proxy}/trailers?i={i}"));
    }
    let Some(out) = run_async("nghttp_concurrent_streams", "nghttp", args).await else {
        return;
    };
    let text = stdout(&out);
    // nghttp -v prints each received trailer header.
    assert_eq!(text.matches("x-checksum: abc").count(), 20, "{text}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one upstream connection for all streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_post_with_expect_100_continue_streams_through() {
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let dir = std::env::temp_dir().join(format!("l7inspect-post-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("body.bin");
    std::fs::write(&file, vec![7u8; 5 << 20]).unwrap();
    let out = run_async(
        "large_post_with_expect_100_continue",
        "curl",
        vec![
            "-s".into(),
            "-H".into(),
            "Expect: 100-continue".into(),
            "--data-binary".into(),
            format!("@{}", file.display()),
            format!("http://{proxy}/upload"),
        ],
    )
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    let Some(out) = out else { return };
    let text = stdout(&out);
    assert!(text.contains("POST /upload HTTP/1.1\n"), "{text}");
    assert!(text.contains(&format!("body {}\n", 5 << 20)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_larger_than_the_windows_stream_both_ways() {
    // 12 MiB each way over HTTP/2, more than the stream (2 MiB) and
    // connection (5 MiB) windows of the proxy's upstream connection, echoed
    // while it is still being sent: the request body goes on streaming
    // after the response's head has come back. (`--max-time`: a stalled
    // stream fails the test instead of hanging it.)
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let dir = std::env::temp_dir().join(format!("l7inspect-h2echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sent, got) = (dir.join("sent.bin"), dir.join("got.bin"));
    let body: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(7) % 251) as u8)
        .collect();
    std::fs::write(&sent, &body).unwrap();
    let out = run_async(
        "http2_bodies_larger_than_the_windows",
        "curl",
        vec![
            "-sS".into(),
            "--max-time".into(),
            "120".into(),
            "--http2-prior-knowledge".into(),
            "--data-binary".into(),
            format!("@{}", sent.display()),
            "-o".into(),
            got.display().to_string(),
            "-w".into(),
            "%{http_code} %{http_version}".into(),
            format!("http://{proxy}/echo"),
        ],
    )
    .await;
    let echoed = std::fs::read(&got).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    let Some(out) = out else { return };
    assert_eq!(
        stdout(&out),
        "200 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echoed body differs from the one sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_empty_post_is_announced_empty() {
    // A POST whose body is known empty when it is forwarded goes with
    // `content-length: 0`, as hyper's client sends it.
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let Some(out) = run_async(
        "http2_empty_post",
        "curl",
        vec![
            "-s".into(),
            "--http2-prior-knowledge".into(),
            "-X".into(),
            "POST".into(),
            format!("http://{proxy}/empty"),
        ],
    )
    .await
    else {
        return;
    };
    let text = stdout(&out);
    assert!(text.contains("POST http://"), "{text}");
    assert!(text.contains("content-length: 0\n"), "{text}");
    assert!(text.ends_with("body 0\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed() {
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(
        b"GET /h HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, close\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-MiXeD-Case: yes\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(!resp.to_lowercase().contains("x-secret"), "{resp}");
    assert!(!resp.to_lowercase().contains("keep-alive: 5"), "{resp}");
    // The backend prints names lowercased (hyper's HeaderMap); it received them.
    assert!(resp.contains("x-mixed-case: yes\n"), "{resp}");
}

/// A raw HTTP/1 backend that answers each connection's first request with
/// the request head it received, byte for byte, as the body, and a
/// mixed-case header of its own.
async fn head_echo_backend() -> SocketAddr {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nX-Reply-CASE: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&head).await;
            });
        }
    });
    addr
}

/// Sends one request with mixed-case header names through `proxy`; returns
/// the whole response.
async fn mixed_case_exchange(proxy: SocketAddr) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET /case HTTP/1.1\r\nHost: a\r\nX-MiXeD-Case: yes\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_are_lowercased_unless_case_is_preserved() {
    let backend = head_echo_backend().await;

    let resp = mixed_case_exchange(proxy(backend).await).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\r\nx-reply-case: 1\r\n"), "{resp}");
    assert!(resp.contains("\r\nx-mixed-case: yes\r\n"), "{resp}");

    let preserving = HttpConfig {
        preserve_header_case: true,
        ..HttpConfig::default()
    };
    let resp = mixed_case_exchange(proxy_with(backend, preserving).await).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\r\nX-Reply-CASE: 1\r\n"), "{resp}");
    assert!(resp.contains("\r\nX-MiXeD-Case: yes\r\n"), "{resp}");
}

/// A raw HTTP/1 keep-alive backend: answers every request with a small
/// response and reports each connection's end (EOF from the proxy).
async fn eof_reporting_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_closes_when_the_client_closes() {
    let (backend, mut ended) = eof_reporting_backend().await;
    let proxy = proxy(backend).await;
    for close in [false, true] {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let req: &[u8] = if close {
            b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        } else {
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
        };
        c.write_all(req).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"ok") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "proxy closed early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        drop(c);
        // The backend must see the proxy close its side (a generous bound:
        // a leaked connection would stay open until the server's timeout).
        tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("upstream still open after the client closed (close={close})")
            })
            .unwrap();
    }
}

/// A raw HTTP/1 backend that answers one request per connection with a
/// fixed response and then closes the (idle) connection, signalling it.
async fn closing_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                drop(s);
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_an_idle_connection_closes_the_client_connection() {
    let (backend, mut closed) = closing_backend().await;
    let proxy = proxy(backend).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    // The response, then EOF: the proxy mirrors the server's close.
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut resp))
        .await
        .expect("the client connection is closed when the server's is")
        .unwrap();
    let resp = String::from_utf8(resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\nok"),
        "{resp}"
    );
    closed.recv().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_an_idle_http2_connection() {
    // On drain, an idle HTTP/2 client gets GOAWAY and its connection ends,
    // with nothing else happening on it to wake the connection up.
    let (backend, _) = backend().await;
    let drain = CancellationToken::new();
    let proxy = proxy_draining(backend, HttpConfig::default(), drain.clone()).await;
    let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{proxy}/idle"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/2 connection ends once the proxy drains")
        .unwrap()
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_gives_502_and_grpc_unavailable() {
    let dead = {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (s.local_addr().unwrap(), s)
    };
    let proxy = proxy(dead.0).await;
    let Some(out) = run_async(
        "unreachable_server_gives_502",
        "curl",
        vec![
            "-s".into(),
            "-w".into(),
            "%{http_code}".into(),
            format!("http://{proxy}/"),
        ],
    )
    .await
    else {
        return;
    };
    let text = stdout(&out);
    // The kind of failure, not the address or the OS error.
    assert!(
        text.starts_with("502 Bad Gateway: upstream connection failed\n"),
        "{text}"
    );
    assert!(text.ends_with("502"), "{text}");

    let text = grpc_call_head("unreachable_server_gives_grpc_unavailable", proxy)
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("grpc-status: 14"), "{text}");
    drop(dead);
}

/// A gRPC call (h2c, curl) through `proxy` with an empty body: the response
/// head as curl prints it, or `None` when curl is missing (skipped).
async fn grpc_call_head(test: &'static str, proxy: SocketAddr) -> Option<String> {
    let args = [
        "-s",
        "-D",
        "-",
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-X",
        "POST",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("http://{proxy}/pkg.Svc/Method"));
    let out = run_async(test, "curl", args).await?;
    Some(stdout(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_becomes_a_tunnel() {
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("upgrade: websocket\r\n") && head.contains("connection: upgrade\r\n"),
        "{head}"
    );
    // After the 101, bytes pass both ways untouched.
    for msg in [&b"\x81\x05hello"[..], b"\x00\xffbinary\x00"] {
        c.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        c.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_keep_their_order() {
    let (backend, conns) = backend().await;
    let proxy = proxy(backend).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    // Three requests in one write, before any response.
    c.write_all(
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\nGET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut all))
        .await
        .expect("three responses, then close")
        .unwrap();
    let order: Vec<_> = ["GET /first ", "GET /second ", "GET /third "]
        .iter()
        .map(|r| {
            all.find(r)
                .unwrap_or_else(|| panic!("{r} missing in {all}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{all}");
    assert_eq!(all.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{all}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

/// A raw HTTP/1 backend for the proxy's own HTTP/1 client: on each
/// connection, for each request (a head, then a body per `Content-Length`
/// or chunked framing), sends what `answer` returns for the request's
/// bytes; `None` closes the connection after the last answer. Reports the
/// bytes of every request, and counts connections.
async fn scripted_backend(
    answer: fn(&[u8]) -> (Vec<u8>, bool),
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let Some(len) = complete_request(&seen) else {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let req: Vec<u8> = seen.drain(..len).collect();
                    let (resp, close) = answer(&req);
                    let _ = tx.send(req);
                    if s.write_all(&resp).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, rx)
}

/// The length of the first complete request in `buf` (head and body).
fn complete_request(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        // Walk the chunks to the last one, then to the end of the trailers.
        let mut at = head;
        loop {
            let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&buf[at..at + line]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
            at += line + 2;
            if size == 0 {
                let end = buf[at - 2..].windows(4).position(|w| w == b"\r\n\r\n")?;
                return Some(at - 2 + end + 4);
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            at += size + 2;
        }
    }
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head + len).then_some(head + len)
}

/// Sends `req` on a hyper HTTP/1 client connection and returns status,
/// body and trailers.
async fn exchange_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, Bytes, Option<http::HeaderMap>) {
    // Ready once the previous exchange is over (an error if the proxy
    // closed the connection).
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_response_framings_all_reuse_one_upstream_connection() {
    fn answer(req: &[u8]) -> (Vec<u8>, bool) {
        let line = String::from_utf8_lossy(req);
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        let resp: &[u8] = match path.as_str() {
            "/chunked" => b"HTTP/1.1 200 OK\r\nTrailer: x-trailer\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n",
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
            "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        };
        (resp.to_vec(), false)
    }
    let (backend, conns, _) = scripted_backend(answer).await;
    let proxy = proxy(backend).await;
    let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(path)
            .header("host", "a")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (status, body, trailers) = exchange_on(&mut sender, get("/chunked")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
    assert_eq!(trailers.expect("trailers forwarded")["x-trailer"], "t");
    let head = Request::head("/head")
        .header("host", "a")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(head).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "1000");
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    for (path, status) in [
        ("/204", StatusCode::NO_CONTENT),
        ("/304", StatusCode::NOT_MODIFIED),
    ] {
        let (got, body, _) = exchange_on(&mut sender, get(path)).await;
        assert_eq!((got, body.len()), (status, 0), "{path}");
    }
    let (status, body, _) = exchange_on(&mut sender, get("/continue")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"abc"[..]));
    let (status, body, _) = exchange_on(&mut sender, get("/last")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"final"[..]));
    // Every framing left the upstream connection reusable.
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_close_delimited_response_is_whole_and_the_client_is_closed_after() {
    fn answer(_: &[u8]) -> (Vec<u8>, bool) {
        (
            b"HTTP/1.1 200 OK\r\n\r\neverything until the close".to_vec(),
            true,
        )
    }
    let (backend, _, _) = scripted_backend(answer).await;
    let proxy = proxy(backend).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut resp))
        .await
        .expect("the proxy closes the client connection after the response")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("everything until the close"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunked_upload_arrives_chunked_with_its_trailers() {
    fn answer(_: &[u8]) -> (Vec<u8>, bool) {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        )
    }
    let (backend, _, mut requests) = scripted_backend(answer).await;
    let proxy = proxy(backend).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\nx-sum: 7\r\n\r\n")
        .await
        .unwrap();
    let mut resp = vec![0u8; 1024];
    let n = c.read(&mut resp).await.unwrap();
    assert!(resp[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    let req = requests.recv().await.unwrap();
    let req = String::from_utf8(req).unwrap();
    assert!(req.starts_with("POST /up HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("transfer-encoding: chunked\r\n"), "{req}");
    let body = &req[req.find("\r\n\r\n").unwrap() + 4..];
    // The data and the trailer arrive; chunk boundaries are the proxy's.
    let data: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .take_while(|c| c[0] != "0")
        .map(|c| c[1])
        .collect();
    assert_eq!(data, "abcdefg", "{body:?}");
    assert!(body.ends_with("0\r\nx-sum: 7\r\n\r\n"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_early_response_to_an_upload_reaches_the_client() {
    // The server refuses the upload after its head, without reading the
    // body, and closes.
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let proxy = proxy(backend).await;
    let c = TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let size = 64 << 20;
    let upload = tokio::spawn(async move {
        let head = format!("PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut resp))
        .await
        .expect("the early response, then the close")
        .ok();
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "{resp}"
    );
    assert!(resp.ends_with("too big\n"), "{resp}");
    upload.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_invalid_upstream_responses_are_502() {
    fn answer(req: &[u8]) -> (Vec<u8>, bool) {
        let resp: &[u8] = if req.starts_with(b"GET /garbage ") {
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        };
        (resp.to_vec(), true)
    }
    let (backend, _, _) = scripted_backend(answer).await;
    let proxy = proxy(backend).await;
    for path in ["/garbage", "/two-lengths"] {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut resp = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut resp))
            .await
            .unwrap()
            .unwrap();
        let resp = String::from_utf8_lossy(&resp[..n]);
        assert!(
            resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{path}: {resp}"
        );
    }
}

/// Sends one HTTP/1.1 request on a new connection and reads the response
/// until the server closes or `limit` passes.
async fn http1_once(proxy: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the proxy answered within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A request stack given as a closure, with a fallible tower layer (a
/// timeout) around `Forward`: a server that never answers gets the client
/// the proxy's 502 (gRPC: status 14) when the timeout fires, as an
/// unreachable server does, not a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_layer_is_answered_as_an_unreachable_server() {
    // Accepts, reads, never answers.
    let silent = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = proxy_with_requests(
        target,
        |_: &l7inspect_core::ConnMeta, forward: l7inspect_core::Forward| {
            ServiceBuilder::new()
                .timeout(Duration::from_millis(300))
                .service(forward)
        },
    )
    .await;
    let text = http1_once(proxy, "/slow").await;
    assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
    assert!(
        text.ends_with("502 Bad Gateway: request failed in the proxy\n"),
        "{text}"
    );

    let Some(text) = grpc_call_head("a_failing_request_layer_is_answered_in_grpc", proxy).await
    else {
        return;
    };
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("grpc-status: 14"), "{text}");
}

/// A request layer that answers on its own, with `local_response`; what
/// it does not answer is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_layer_answers_locally_with_local_response() {
    use l7inspect_core::{Forward, RequestBody, local_response};
    use tower::ServiceExt;
    let (target, _) = backend().await;
    let proxy = proxy_with_requests(target, |_: &l7inspect_core::ConnMeta, forward: Forward| {
        tower::service_fn(move |req: Request<RequestBody>| {
            let forward = forward.clone();
            async move {
                if req.uri().path() == "/deny" {
                    let ct = (http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
                    return Ok(local_response(StatusCode::FORBIDDEN, [ct], "no\n"));
                }
                forward.oneshot(req).await
            }
        })
    })
    .await;
    let text = http1_once(proxy, "/deny").await;
    assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-length: 3\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nno\n"), "{text}");
    let text = http1_once(proxy, "/fine").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("GET /fine"), "{text}");
}

/// HTTP/2: a `host` field that names another server than `:authority`
/// (RFC 9113 8.3.1), or two `host` fields, get `400` (h2 itself lets
/// them through); the same request with a matching `host` is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_conflicting_with_authority_gets_400() {
    let (backend, _) = backend().await;
    let proxy = proxy(backend).await;
    let io = TcpStream::connect(proxy).await.unwrap();
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for (hosts, want) in [
        (&["b.example"][..], StatusCode::BAD_REQUEST),
        (&["a.example", "a.example"][..], StatusCode::BAD_REQUEST),
        (&["a.example:80"][..], StatusCode::OK),
        (&[][..], StatusCode::OK),
    ] {
        let mut req = Request::get("http://a.example/h2");
        for h in hosts {
            req = req.header("host", *h);
        }
        let mut client = client.clone().ready().await.unwrap();
        let (resp, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), want, "{hosts:?}");
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8_lossy(&text);
        if want == StatusCode::BAD_REQUEST {
            assert!(text.starts_with("400 Bad Request: "), "{text}");
        } else {
            assert!(
                text.starts_with("GET http://a.example/h2 HTTP/2.0\n"),
                "{text}"
            );
        }
    }
}
