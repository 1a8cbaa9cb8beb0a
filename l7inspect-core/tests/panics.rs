//! A panic while a connection is served ends that connection only: real
//! sockets on 127.0.0.1 through `serve` and a stack under
//! `CatchPanicLayer`. The panicking connection is closed, the panic is
//! counted in `l7inspect_connection_panics_total{direction}`, connections
//! open beside it go on, and the accept loop takes new ones.
//!
//! The panics print to this test's stderr (Rust's default hook); the
//! sidecar's own hook is tested in the sidecar.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use l7inspect_core::{
    Accepted, CatchPanicLayer, ConnMeta, ConnectConfig, ConnectLayer, Direction, DirectionLabels,
    FixedTargetLayer, Forward, HttpLayer, Metrics, Passthrough, PassthroughConfig, RequestBody,
    TrackLayer, bind, serve,
};
use l7inspect_detect::{Conn, DetectConfig, DetectLayer};
use l7inspect_test_support::eventually;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

/// The first byte on which the echo service below panics.
const MAGIC: u8 = b'!';

/// Serves `svc` under a `CatchPanicLayer` counting into `metrics`, on a new
/// port of 127.0.0.1, as inbound; its address.
fn serve_caught<S>(svc: S, metrics: &Metrics) -> SocketAddr
where
    S: tower::Service<Conn<Accepted, TcpStream>, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let svc = ServiceBuilder::new()
        .layer(CatchPanicLayer::new(metrics.clone()))
        .service(svc);
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Direction::Inbound,
        svc,
        TaskTracker::new(),
        std::future::pending(),
    ));
    addr
}

fn panics(metrics: &Metrics, direction: Direction) -> u64 {
    metrics
        .connection_panics
        .get_or_create(&DirectionLabels { direction })
        .get()
}

/// Writes `line` and reads back as many bytes: the echo service answered.
async fn echoes(conn: &mut TcpStream, line: &[u8]) {
    conn.write_all(line).await.unwrap();
    let mut back = vec![0; line.len()];
    conn.read_exact(&mut back).await.unwrap();
    assert_eq!(back, line);
}

/// Whether the peer closed `conn` (EOF or a reset) without answering.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    matches!(conn.read(&mut buf).await, Ok(0) | Err(_))
}

/// An echo service that panics in its future on a connection whose first
/// byte is [`MAGIC`], and in `call` itself (on the accept loop's task) for
/// the connection from the client port in `panic_in_call`.
#[tokio::test]
async fn a_panicking_connection_ends_alone_and_is_counted() {
    let metrics = Metrics::default();
    let panic_in_call = Arc::new(AtomicU16::new(0));
    let port = panic_in_call.clone();
    let echo = service_fn(move |mut conn: Conn<Accepted, TcpStream>| {
        assert_ne!(
            conn.meta.client.port(),
            port.load(Ordering::SeqCst),
            "a bug in call"
        );
        async move {
            let mut buf = [0; 1024];
            loop {
                let n = conn.io.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, BoxError>(());
                }
                assert_ne!(buf[0], MAGIC, "a bug in the connection's future");
                conn.io.write_all(&buf[..n]).await?;
            }
        }
    });
    let addr = serve_caught(echo, &metrics);

    // Connections open beside the one that panics.
    let mut others = Vec::new();
    for i in 0..3 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        echoes(&mut conn, format!("before {i}").as_bytes()).await;
        others.push(conn);
    }

    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(&[MAGIC, b'x']).await.unwrap();
    assert!(closed(&mut bad).await, "the panicking connection is closed");
    assert_eq!(panics(&metrics, Direction::Inbound), 1);
    assert_eq!(panics(&metrics, Direction::Outbound), 0);

    for (i, conn) in others.iter_mut().enumerate() {
        echoes(conn, format!("after {i}").as_bytes()).await;
    }
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    echoes(&mut fresh, b"a new connection").await;

    // A panic in `call`, which runs on the accept loop's task.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    panic_in_call.store(socket.local_addr().unwrap().port(), Ordering::SeqCst);
    let mut bad = socket.connect(addr).await.unwrap();
    let _ = bad.write_all(b"hello").await;
    assert!(closed(&mut bad).await, "the connection whose call panicked");
    assert_eq!(panics(&metrics, Direction::Inbound), 2);

    // The accept loop goes on, and so do the others.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    echoes(&mut fresh, b"after the panic in call").await;
    for conn in &mut others {
        echoes(conn, b"still here").await;
    }
}

/// A hyper HTTP/1 backend on 127.0.0.1 answering `ok` to everything.
async fn backend() -> SocketAddr {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc),
            );
        }
    });
    addr
}

/// One HTTP/1.1 request for `path` on `conn`, keep-alive: the response's
/// head and body (`ok`), or `None` when the connection closed instead.
async fn get(conn: &mut TcpStream, path: &str) -> Option<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: backend.test\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8(got).unwrap())
}

/// The sidecar's stack (fixed target, connect, detect, track, HTTP,
/// passthrough) with a request service that panics on `/panic`: the panic
/// unwinds out of hyper's HTTP/1 server, through every layer, to
/// `CatchPanicLayer`. That connection closes without a response; another
/// keep-alive connection goes on serving requests, and new ones are taken.
#[tokio::test]
async fn a_request_service_panic_ends_its_connection_only() {
    let metrics = Metrics::default();
    let requests = |_: &ConnMeta, forward: Forward| {
        service_fn(move |req: Request<RequestBody>| {
            let forward = forward.clone();
            async move {
                assert_ne!(req.uri().path(), "/panic", "a bug in a request service");
                forward.oneshot(req).await
            }
        })
    };
    let stack = ServiceBuilder::new()
        .layer(CatchPanicLayer::new(metrics.clone()))
        .layer(FixedTargetLayer::new(backend().await))
        .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics.clone()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .layer(TrackLayer::new(metrics.clone()))
        .layer(HttpLayer::new(CancellationToken::new()).with_requests(requests))
        .service(Passthrough::new(PassthroughConfig::default()).with_metrics(metrics.clone()));
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Direction::Outbound,
        stack,
        TaskTracker::new(),
        std::future::pending(),
    ));

    let mut good = TcpStream::connect(addr).await.unwrap();
    let resp = get(&mut good, "/first").await.expect("a response");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

    let mut bad = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut bad, "/fine").await.is_some());
    assert_eq!(get(&mut bad, "/panic").await, None, "closed, no response");
    assert_eq!(panics(&metrics, Direction::Outbound), 1);
    assert_eq!(panics(&metrics, Direction::Inbound), 0);
    // The connection's gauge went down with it: the panicking connection's
    // future was dropped, not leaked (only `good` is left open).
    let open = || {
        metrics
            .open_connections
            .get_or_create(&l7inspect_core::ConnLabels {
                direction: Direction::Outbound,
                protocol: "http1",
            })
            .get()
    };
    assert!(
        eventually(|| async { open() == 1 }).await,
        "open: {}",
        open()
    );

    let resp = get(&mut good, "/second").await.expect("a response");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut fresh, "/new").await.is_some());
}

/// Without a `CatchPanicLayer`, a service that panics in `call` (on the
/// accept loop's task) loses that connection, not the listener: `serve`
/// goes on accepting.
#[tokio::test]
async fn serve_goes_on_when_call_panics_without_the_layer() {
    let panic_in_call = Arc::new(AtomicU16::new(0));
    let port = panic_in_call.clone();
    let svc = service_fn(move |mut conn: Conn<Accepted, TcpStream>| {
        assert_ne!(
            conn.meta.client.port(),
            port.load(Ordering::SeqCst),
            "a bug"
        );
        async move {
            conn.io.write_all(b"hello\n").await?;
            Ok::<_, BoxError>(())
        }
    });
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(serve(
        listener,
        Direction::Inbound,
        svc,
        TaskTracker::new(),
        std::future::pending(),
    ));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    panic_in_call.store(socket.local_addr().unwrap().port(), Ordering::SeqCst);
    let mut bad = socket.connect(addr).await.unwrap();
    assert!(closed(&mut bad).await);
    let mut good = TcpStream::connect(addr).await.unwrap();
    let mut hello = [0; 6];
    good.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello\n");
    assert!(!accepting.is_finished());
}
