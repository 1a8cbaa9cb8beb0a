//! Connection limits through the connection stack the sidecar uses (limit,
//! fixed target, connect, detect, track, passthrough) on 127.0.0.1 sockets:
//! a listener's limit refuses the connection past it at once and frees a
//! place when one closes; the open-connections gauge counts connections
//! still in detection.

use l7inspect_core::{
    ConnLabels, ConnectConfig, ConnectLayer, Direction, FixedTargetLayer, LimitLayer, Metrics,
    Passthrough, PassthroughConfig, Refusal, RefusedLabels, TrackLayer, bind, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use l7inspect_test_support::eventually;
use std::{io, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

/// An echo server on 127.0.0.1.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// The sidecar's stack, forwarding to `target`, behind `limit`; returns the
/// proxy's address.
async fn proxy(target: SocketAddr, limit: LimitLayer, metrics: &Metrics) -> SocketAddr {
    let svc = ServiceBuilder::new()
        .layer(limit)
        .layer(FixedTargetLayer::new(target))
        .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics.clone()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .layer(TrackLayer::new(metrics.clone()))
        .service(Passthrough::new(PassthroughConfig::default()).with_metrics(metrics.clone()));
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

/// A client whose line came back through the proxy: proxied, and counted.
async fn echoed(proxy: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"hello limit\n").await.unwrap();
    let mut back = [0; 12];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello limit\n");
    c
}

/// Whether the proxy closed `c`: a reset or an end of stream, within a
/// bound that only guards against a hang.
async fn closed_by_proxy(c: &mut TcpStream) -> bool {
    let mut buf = [0; 16];
    match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
        Ok(Ok(0)) => true,
        Ok(Err(e)) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(Ok(_)) | Err(_) => false,
    }
}

fn refused(metrics: &Metrics, reason: Refusal) -> u64 {
    metrics
        .refused
        .get_or_create(&RefusedLabels {
            direction: Direction::Inbound,
            reason,
        })
        .get()
}

fn open(metrics: &Metrics, protocol: &'static str) -> i64 {
    metrics
        .open_connections
        .get_or_create(&ConnLabels {
            direction: Direction::Inbound,
            protocol,
        })
        .get()
}

/// A limit of 2: the third connection is reset at once, without reaching
/// the server, and counted; once one of the two closes, a new one is
/// proxied again.
#[tokio::test]
async fn listener_limit_refuses_the_connection_past_it_until_one_closes() {
    let server = echo_server().await;
    let metrics = Metrics::default();
    let limit = LimitLayer::new(2).with_metrics(metrics.clone());
    let proxy = proxy(server, limit.clone(), &metrics).await;

    let first = echoed(proxy).await;
    let _second = echoed(proxy).await;
    assert_eq!(limit.open(), 2);

    let mut third = TcpStream::connect(proxy).await.unwrap();
    // It may write before it learns (the reset comes after the handshake).
    let _ = third.write_all(b"hello limit\n").await;
    assert!(closed_by_proxy(&mut third).await, "the third is refused");
    assert_eq!(refused(&metrics, Refusal::Limit), 1);
    assert_eq!(refused(&metrics, Refusal::Descriptors), 0);
    // Never dialled, never detected: the two are all that is open.
    assert_eq!(open(&metrics, "unknown"), 2);
    assert_eq!(open(&metrics, "detecting"), 0);

    drop(first);
    assert!(
        eventually(|| async { limit.open() == 1 }).await,
        "the closed connection's place is freed"
    );
    let _fourth = echoed(proxy).await;
    assert_eq!(limit.open(), 2);
    assert_eq!(refused(&metrics, Refusal::Limit), 1);
}

/// Connections whose client has not spoken are open too: counted as
/// `detecting` until detection names their protocol, then under it, and
/// never twice. (The echo server does not speak first, so detection waits
/// for each client.)
#[tokio::test]
async fn open_connections_count_connections_in_detection() {
    const SILENT: usize = 5;
    let server = echo_server().await;
    let metrics = Metrics::default();
    let proxy = proxy(server, LimitLayer::new(usize::MAX), &metrics).await;

    let mut clients = Vec::new();
    for _ in 0..SILENT {
        clients.push(TcpStream::connect(proxy).await.unwrap());
    }
    assert!(
        eventually(|| async { open(&metrics, "detecting") == SILENT as i64 }).await,
        "{} detecting, want {SILENT}",
        open(&metrics, "detecting")
    );
    // One speaks Redis: it moves from `detecting` to `redis`.
    clients[0].write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    assert!(
        eventually(|| async { open(&metrics, "redis") == 1 }).await,
        "the Redis client is counted as redis"
    );
    assert_eq!(open(&metrics, "detecting"), SILENT as i64 - 1);

    // Closed before speaking: detection ends at their end of stream
    // (`unknown`), and the server closes its side in turn.
    drop(clients);
    let all = |m: &Metrics| [open(m, "detecting"), open(m, "redis"), open(m, "unknown")];
    assert!(
        eventually(|| async { all(&metrics) == [0, 0, 0] }).await,
        "left open (detecting, redis, unknown): {:?}",
        all(&metrics)
    );
}
