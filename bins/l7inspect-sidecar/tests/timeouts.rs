//! The bounds on a peer's time, through the sidecar's explicit listeners
//! with real sockets on 127.0.0.1: a trickled HTTP/1 head is cut with 408
//! however often bytes come, an idle keep-alive connection is closed but a
//! slow response is not, a silent inbound client is closed but an outbound
//! one and a server that speaks first are not, an unanswered request gets
//! 504 (gRPC: status 4), an unreachable server's connect gets 504. Each is
//! counted in `l7inspect_timeouts_total`.
//!
//! The timeouts are short (hundreds of milliseconds) so the tests are quick;
//! nothing asserts how long anything took: each test checks what happened,
//! with bounded waits.

mod support;

use l7inspect_core::HttpConfig;
use l7inspect_sidecar::{Forward, SidecarConfig};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use support::{forward_config, have, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const SHORT: Duration = Duration::from_millis(400);
/// Longer than any bound here: how long a test waits for what must happen.
const PATIENCE: Duration = Duration::from_secs(10);

fn series(reason: &str, direction: &str) -> String {
    format!("l7inspect_timeouts_total{{direction=\"{direction}\",reason=\"{reason}\"}}")
}

/// A server that counts the bytes it receives and never answers.
async fn mute_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    count.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

/// An HTTP/1 server that answers every request `200` with body `ok`, after
/// `delay`, keeping its connections open.
async fn slow_http_server(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n @ 1..) = s.read(&mut chunk).await else {
                        return;
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads until EOF or an error, within [`PATIENCE`]; what was read.
async fn read_until_closed(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = c.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed; read {got:?}");
    got
}

/// Reads one HTTP/1 response head (and a small body) within [`PATIENCE`].
async fn read_response(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8_lossy(&got).into_owned()
}

fn http_config(f: impl FnOnce(&mut HttpConfig)) -> HttpConfig {
    let mut http = HttpConfig::default();
    f(&mut http);
    http
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_with_408_and_never_reaches_the_server() {
    let (server, received) = mute_server().await;
    let sidecar = start(SidecarConfig {
        http: http_config(|h| h.request_head_timeout = Some(SHORT)),
        ..forward_config(server)
    })
    .await;
    let c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    let (mut r, mut w) = c.into_split();
    // A head that never ends, one byte every 50 ms: for 20 s unless cut.
    let trickling = Arc::new(AtomicBool::new(true));
    let still = trickling.clone();
    let trickle = tokio::spawn(async move {
        if w.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if w.write_all(b"a").await.is_err() {
                break;
            }
        }
        still.store(false, Ordering::SeqCst);
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, r.read_to_end(&mut got)).await;
    // Cut while bytes were still coming: the trickle did not extend it.
    assert!(
        trickling.load(Ordering::SeqCst),
        "cut only after the trickle ended"
    );
    assert!(closed.is_ok(), "not cut within {PATIENCE:?}");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );
    trickle.abort();
    sidecar
        .wait_metric(&series("request_head", "inbound"), 1.0)
        .await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the server got bytes of the head"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_but_a_slow_response_is_not() {
    // The server takes three idle timeouts to answer.
    let server = slow_http_server(SHORT * 3).await;
    let sidecar = start(SidecarConfig {
        http: http_config(|h| {
            h.request_head_timeout = Some(SHORT);
            h.idle_timeout = Some(SHORT);
        }),
        ..forward_config(server)
    })
    .await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    for _ in 0..2 {
        c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut resp = read_response(&mut c).await;
        if !resp.ends_with("ok") {
            let mut body = [0u8; 2];
            c.read_exact(&mut body).await.unwrap();
            resp.push_str(&String::from_utf8_lossy(&body));
        }
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp:?}");
        assert!(resp.ends_with("\r\n\r\nok"), "{resp:?}");
    }
    // Then idle: closed by the proxy, with nothing more said.
    let rest = read_until_closed(&mut c).await;
    assert_eq!(String::from_utf8_lossy(&rest), "");
    sidecar.wait_metric(&series("idle", "inbound"), 1.0).await;
    assert_eq!(
        sidecar.metric(&series("request_head", "inbound")),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_inbound_client_is_closed_but_outbound_and_server_first_are_not() {
    // A server that greets at once, then echoes; and a mute one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                w.write_all(b"SSH-2.0-test\r\n").await.unwrap();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (mute, _) = mute_server().await;
    let mut config = forward_config(mute);
    config.detect.silent_timeout = Some(SHORT);
    config.inbound_forwards.push(Forward {
        listen: "127.0.0.1:0".parse().unwrap(),
        target: banner,
    });
    config.outbound_forwards.push(Forward {
        listen: "127.0.0.1:0".parse().unwrap(),
        target: banner,
    });
    let sidecar = start(config).await;

    // Inbound, nobody speaks: closed.
    let mut silent = TcpStream::connect(sidecar.inbound()).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    sidecar
        .wait_metric(&series("client_silent", "inbound"), 1.0)
        .await;

    // Inbound, the server speaks first: the client may think for longer.
    let mut greeted = TcpStream::connect(sidecar.addrs.inbound_forwards[1].listen)
        .await
        .unwrap();
    // Outbound, nobody speaks for a while: kept (the application's own).
    let mut outbound = TcpStream::connect(sidecar.addrs.outbound_forwards[0].listen)
        .await
        .unwrap();
    let mut buf = [0u8; 14];
    greeted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"SSH-2.0-test\r\n");
    tokio::time::sleep(SHORT * 3).await;
    for c in [&mut greeted, &mut outbound] {
        c.write_all(b"hello\r\n").await.unwrap();
    }
    // Outbound: the banner, then the echo.
    let mut got = [0u8; 21];
    outbound.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"SSH-2.0-test\r\nhello\r\n");
    let mut echo = [0u8; 7];
    greeted.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello\r\n");
    assert_eq!(
        sidecar.metric(&series("client_silent", "inbound")),
        Some(1.0)
    );
    assert_eq!(
        sidecar.metric(&series("client_silent", "outbound")),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_gets_504_and_its_connection_is_not_reused() {
    let (server, _) = mute_server().await;
    let sidecar = start(SidecarConfig {
        http: http_config(|h| h.response_timeout = Some(SHORT)),
        ..forward_config(server)
    })
    .await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    for n in 1..=2 {
        c.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut c).await;
        assert!(
            resp.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
            "{resp:?}"
        );
        sidecar
            .wait_metric(&series("upstream_response", "inbound"), n as f64)
            .await;
    }
    // The span says what the client saw.
    let spans = support::spans_for(&sidecar, "/slow");
    assert!(!spans.is_empty(), "no span for /slow");
    let status = |s: &l7inspect_trace::span::SpanRecord| {
        s.http.as_ref().and_then(|h| h.response_status_code)
    };
    assert!(spans.iter().all(|s| status(s) == Some(504)), "{spans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_grpc_call_gets_deadline_exceeded() {
    if !have(
        "an_unanswered_grpc_call_gets_deadline_exceeded",
        "curl",
        "--version",
    ) {
        return;
    }
    let (server, _) = mute_server().await;
    let sidecar = start(SidecarConfig {
        http: http_config(|h| h.response_timeout = Some(SHORT)),
        ..forward_config(server)
    })
    .await;
    let url = format!("http://{}/pkg.Svc/Call", sidecar.inbound());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["--data-binary", "", "--max-time", "10", &url])
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/2 200"), "{head:?} {out:?}");
    assert!(head.contains("grpc-status: 4\r\n"), "{head:?}");
    sidecar
        .wait_metric(&series("upstream_response", "inbound"), 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_never_completes_gets_504() {
    // A listener whose accept queue is full: Linux drops further SYNs, so a
    // connect to it hangs until its timeout.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let full: SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full)).await
        {
            fillers.push(s);
        }
    }
    let sidecar = start(SidecarConfig {
        connect: l7inspect_core::ConnectConfig { timeout: SHORT },
        ..forward_config(full)
    })
    .await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut c).await;
    assert!(
        resp.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{resp:?}"
    );
    sidecar
        .wait_metric(&series("upstream_connect", "inbound"), 1.0)
        .await;
    drop(socket);
}
