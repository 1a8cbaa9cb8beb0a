//! A server that speaks first, through the connection stack the sidecar
//! uses (fixed target, connect, detect, track, passthrough) on 127.0.0.1
//! sockets: a MySQL greeting is detected as `mysql` from the bytes peeked
//! on the upstream socket, an SSH banner stays `server_first`, and either
//! reaches the silent client byte for byte.

use l7inspect_core::{
    ConnLabels, ConnectConfig, ConnectLayer, Direction, FixedTargetLayer, Metrics, Passthrough,
    PassthroughConfig, TrackLayer, bind, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use l7inspect_test_support::eventually;
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

/// What MariaDB 10.11 sent a client that had said nothing.
const MYSQL_GREETING: &[u8] =
    include_bytes!("../../l7inspect-detect/testdata/mysql_mariadb_greeting.bin");

/// Guards against a hang only: a proxy that held the banner back would
/// otherwise wait forever for a client that never speaks.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1 that sends `banner` on accept, then echoes.
async fn banner_server(banner: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                conn.write_all(banner).await?;
                let (mut r, mut w) = conn.split();
                tokio::io::copy(&mut r, &mut w).await
            });
        }
    });
    addr
}

/// The sidecar's stack, forwarding to `target`; returns the proxy's address.
async fn proxy(target: SocketAddr, metrics: &Metrics) -> SocketAddr {
    let svc = ServiceBuilder::new()
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

fn detections(metrics: &Metrics, protocol: &'static str) -> u64 {
    metrics
        .detections
        .get_or_create(&ConnLabels {
            direction: Direction::Inbound,
            protocol,
        })
        .get()
}

/// Connects through a proxy to a server that sends `banner`: the silent
/// client gets the banner unchanged, its own bytes still pass, and the
/// connection is counted under `label` (and under no other label).
async fn banner_is_detected_as(banner: &'static [u8], label: &'static str, other: &'static str) {
    let metrics = Metrics::default();
    let proxy = proxy(banner_server(banner).await, &metrics).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut got = vec![0; banner.len()];
    tokio::time::timeout(HANG_GUARD, client.read_exact(&mut got))
        .await
        .expect("the banner reaches the silent client")
        .unwrap();
    assert_eq!(got, banner, "the banner passes byte for byte");
    client.write_all(b"after\n").await.unwrap();
    let mut echo = [0; 6];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"after\n");
    assert!(
        eventually(|| async { detections(&metrics, label) == 1 }).await,
        "counted as {label}"
    );
    assert_eq!(detections(&metrics, other), 0, "not counted as {other}");
}

#[tokio::test]
async fn a_mysql_greeting_is_detected_as_mysql() {
    banner_is_detected_as(MYSQL_GREETING, "mysql", "server_first").await;
}

#[tokio::test]
async fn an_ssh_banner_stays_server_first() {
    banner_is_detected_as(
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
        "server_first",
        "mysql",
    )
    .await;
}
