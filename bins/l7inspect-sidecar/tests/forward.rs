//! End-to-end tests through the sidecar's explicit listeners, with real
//! sockets on 127.0.0.1: bytes pass exactly, half-close holds, large and
//! concurrent transfers work, metrics count what happened, shutdown drains.

mod support;

use l7inspect_test_support::eventually;
use std::{net::SocketAddr, time::Duration};
use support::{Pattern, forward_config, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A server that, per connection, reads until the client's FIN and then
/// answers `reply(request)` and closes.
async fn request_reply_server(reply: fn(Vec<u8>) -> Vec<u8>) -> SocketAddr {
    // A deep backlog: the tests open hundreds of connections at once.
    let listener = l7inspect_core::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut req = Vec::new();
                s.read_to_end(&mut req).await.unwrap();
                s.write_all(&reply(req)).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A server that echoes every byte back until EOF, then closes.
async fn echo_server() -> SocketAddr {
    // A deep backlog: the tests open hundreds of connections at once.
    let listener = l7inspect_core::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A port that refuses connections: bound (so no other test can take it)
/// but not listening. Keep the socket alive while the port is in use.
fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// Sends `req`, half-closes, and returns everything the server sent.
async fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(req).await.unwrap();
    c.shutdown().await.unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).await.unwrap();
    resp
}

/// A server that reads one HTTP/1 request head and answers with a fixed
/// head and, as the body, the exact head it received; then closes.
async fn head_echo_server() -> SocketAddr {
    let listener = l7inspect_core::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap() == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Odd:  spaced \r\nX-CaSe: kept\r\n\r\n",
                    head.len()
                )
                .into_bytes();
                resp.extend(head);
                s.write_all(&resp).await.unwrap();
            });
        }
    });
    addr
}

/// Sends one odd but legal HTTP/1 request through a sidecar (preserving
/// header case or not) to `head_echo_server`; returns the response head and
/// body (the request head the server received).
async fn odd_request_roundtrip(preserve_header_case: bool) -> (String, String) {
    let server = head_echo_server().await;
    let mut config = forward_config(server);
    config.http.preserve_header_case = preserve_header_case;
    let sidecar = start(config).await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    c.write_all(format!("{ODD_REQUEST_LINE}{ODD_HEADERS}\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = vec![0u8; 4096];
    let mut len = 0;
    let text = loop {
        let n = c.read(&mut resp[len..]).await.unwrap();
        assert!(
            n > 0,
            "closed early: {:?}",
            String::from_utf8_lossy(&resp[..len])
        );
        len += n;
        let text = String::from_utf8_lossy(&resp[..len]).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Some(cl) = head.lines().find_map(|l| {
                let (name, value) = l.split_once(": ")?;
                name.eq_ignore_ascii_case("content-length").then_some(value)
            })
            && body.len() >= cl.parse().unwrap()
        {
            break text;
        }
    };
    sidecar
        .wait_metric(
            "l7inspect_protocol_detections_total{direction=\"inbound\",protocol=\"http1\"}",
            1.0,
        )
        .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

// Odd but legal bytes that a normalising proxy would change.
const ODD_REQUEST_LINE: &str = "GET /a%20b?x=1&y=%zz HTTP/1.1\r\n";
const ODD_HEADERS: &str = "host: Example.COM\r\nX-Dup: 1\r\nx-dup: 2\r\n";

/// HTTP/1 is proxied by hyper on both sides, so framing is the proxy's own,
/// but with `--http1-preserve-header-case` the request and response arrive
/// intact: request line, header names (case included), values and order,
/// plus only the trace context the sidecar adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_and_response_arrive_intact() {
    let (head, body) = odd_request_roundtrip(true).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nX-Odd: spaced\r\n"), "{head}");
    assert!(head.contains("\r\nX-CaSe: kept"), "{head}");
    // What the server received: the client's request line and headers in
    // order, then the injected trace context.
    assert!(
        body.starts_with(&format!("{ODD_REQUEST_LINE}{ODD_HEADERS}")),
        "{body}"
    );
    assert!(body.contains("traceparent: 00-"), "{body}");
}

/// By default the same exchange differs only in the case of header names,
/// which are lowercase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_header_names_are_lowercase_by_default() {
    let (head, body) = odd_request_roundtrip(false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nx-odd: spaced\r\n"), "{head}");
    assert!(head.contains("\r\nx-case: kept"), "{head}");
    let lowered = format!(
        "{ODD_REQUEST_LINE}{}",
        ODD_HEADERS.replace("X-Dup", "x-dup")
    );
    assert!(body.starts_with(&lowered), "{body}");
    assert!(body.contains("traceparent: 00-"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_half_closes_after_its_request_gets_the_answer() {
    let server = head_echo_server().await;
    let sidecar = start(forward_config(server)).await;
    let resp = exchange(
        sidecar.inbound(),
        b"GET /half HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("GET /half HTTP/1.1\r\n"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_binary_bytes_pass_byte_for_byte() {
    let server = echo_server().await;
    let sidecar = start(forward_config(server)).await;
    let mut req = vec![0u8; 70_000];
    Pattern::new(7).fill(&mut req);
    let resp = exchange(sidecar.inbound(), &req).await;
    assert_eq!(resp, req);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_server_answer_after_the_client_fin() {
    let server = request_reply_server(|req| {
        let mut out = b"got ".to_vec();
        out.extend(req.len().to_string().into_bytes());
        out
    })
    .await;
    let sidecar = start(forward_config(server)).await;
    // The server only answers after it has seen EOF: this passes only if
    // the client's FIN reaches it while the other direction stays open.
    let resp = exchange(sidecar.inbound(), b"*1\r\n$4\r\nPING\r\n").await;
    assert_eq!(resp, b"got 14");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_both_ways_at_once() {
    const EACH_WAY: usize = 192 << 20;
    let server = echo_server().await;
    let sidecar = start(forward_config(server)).await;
    let c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        let mut p = Pattern::new(42);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < EACH_WAY {
            p.fill(&mut buf);
            w.write_all(&buf).await.unwrap();
            sent += buf.len();
        }
        w.shutdown().await.unwrap();
    });
    let mut p = Pattern::new(42);
    let (mut buf, mut scratch) = (vec![0u8; 64 * 1024], Vec::new());
    let mut received = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(
            p.check(&buf[..n], &mut scratch),
            "corrupt at byte {received}"
        );
        received += n;
    }
    writer.await.unwrap();
    assert_eq!(received, EACH_WAY);
    let total = EACH_WAY as f64;
    sidecar
        .wait_metric(
            "l7inspect_tcp_read_bytes_total{direction=\"inbound\",protocol=\"unknown\"}",
            total,
        )
        .await;
    sidecar
        .wait_metric(
            "l7inspect_tcp_write_bytes_total{direction=\"inbound\",protocol=\"unknown\"}",
            total,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    const CONNS: usize = 500;
    let server = echo_server().await;
    let sidecar = start(forward_config(server)).await;
    let addr = sidecar.inbound();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONNS {
        tasks.spawn(async move {
            let msg = format!("connection {i} says hello\n").into_bytes();
            (exchange(addr, &msg).await, msg)
        });
    }
    while let Some(res) = tasks.join_next().await {
        let (got, want) = res.unwrap();
        assert_eq!(got, want);
    }
    sidecar
        .wait_metric(
            "l7inspect_tcp_connections_total{direction=\"inbound\",protocol=\"unknown\"}",
            CONNS as f64,
        )
        .await;
    sidecar
        .wait_metric(
            "l7inspect_tcp_open_connections{direction=\"inbound\",protocol=\"unknown\"}",
            0.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_one_redis_connection_exactly() {
    let server = request_reply_server(|_| b"+PONG\r\n".to_vec()).await;
    let sidecar = start(forward_config(server)).await;
    let req = b"*1\r\n$4\r\nPING\r\n";
    assert_eq!(exchange(sidecar.inbound(), req).await, b"+PONG\r\n");
    let labels = "{direction=\"inbound\",protocol=\"redis\"}";
    for (name, want) in [
        ("l7inspect_protocol_detections_total", 1.0),
        ("l7inspect_tcp_connections_total", 1.0),
        ("l7inspect_tcp_read_bytes_total", req.len() as f64),
        ("l7inspect_tcp_write_bytes_total", 7.0),
        ("l7inspect_tcp_open_connections", 0.0),
    ] {
        sidecar.wait_metric(&format!("{name}{labels}"), want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_resets_the_client_and_is_counted() {
    let (_reserved, dead) = refusing_port();
    let sidecar = start(forward_config(dead)).await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    // Not HTTP: an HTTP client would get a 502 instead (see the core tests).
    let _ = c.write_all(b"*1\r\n$4\r\nPING\r\n").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the proxy answers a refused connect instead of hanging");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    sidecar
        .wait_metric(
            "l7inspect_upstream_connect_errors_total{direction=\"inbound\",error=\"refused\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_does_not_hang_a_silent_client() {
    let (_reserved, dead) = refusing_port();
    let sidecar = start(forward_config(dead)).await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    let mut buf = [0u8; 16];
    // The client waits for a banner; the proxy gives up after the detection
    // timeout (1 s by default) and resets it.
    let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("a silent client of an unreachable server is not left hanging");
    assert!(read.is_err() || read.unwrap() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_connections_and_stops_accepting() {
    let server = echo_server().await;
    let mut config = forward_config(server);
    config.shutdown_grace = Duration::from_secs(30);
    let mut sidecar = start(config).await;
    let admin = sidecar.addrs.admin[0];
    let ready = || async move {
        let mut c = TcpStream::connect(admin).await.unwrap();
        c.write_all(b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).await.unwrap();
        resp
    };
    assert!(ready().await.starts_with("HTTP/1.1 200"));

    let mut open = TcpStream::connect(sidecar.inbound()).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();

    sidecar.shutdown();
    // Draining: not ready, no longer accepting...
    assert!(eventually(|| async { ready().await.starts_with("HTTP/1.1 503") }).await);
    let inbound = sidecar.inbound();
    assert!(
        eventually(|| async { TcpStream::connect(inbound).await.is_err() }).await,
        "listener still accepting after shutdown"
    );
    // ...but the open connection still works both ways.
    open.write_all(b"during").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    // Once it closed, the drain ends well before the 30 s grace period.
    tokio::time::timeout(Duration::from_secs(20), &mut sidecar.handle)
        .await
        .expect("run() returns once open connections are done")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_ports_skip_detection() {
    let server = echo_server().await;
    let mut config = forward_config(server);
    config.detect.opaque_ports = vec![server.port()];
    let sidecar = start(config).await;
    assert_eq!(
        exchange(sidecar.inbound(), b"GET / HTTP/1.1\r\n\r\n")
            .await
            .len(),
        18
    );
    sidecar
        .wait_metric(
            "l7inspect_protocol_detections_total{direction=\"inbound\",protocol=\"opaque\"}",
            1.0,
        )
        .await;
}
