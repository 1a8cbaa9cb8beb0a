//! The proxy out of file descriptors (`EMFILE`), on 127.0.0.1 sockets.
//!
//! The only test of its binary, since it takes every free descriptor of its
//! process (with the soft limit lowered to 256 first, to be quick about it):
//! any other test running beside it would fail for want of one.

use l7inspect_core::{
    ConnectConfig, ConnectErrorLabels, ConnectLayer, Direction, FixedTargetLayer, Metrics,
    Passthrough, PassthroughConfig, TrackLayer, bind, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use l7inspect_test_support::eventually;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use socket2::{Domain, Socket, Type};
use std::{fs::File, io, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

const LINE: &[u8] = b"hello descriptors\n";

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

/// A client whose line came back through the proxy.
async fn echoed(proxy: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(LINE).await.unwrap();
    let mut back = vec![0; LINE.len()];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, LINE);
    c
}

/// Connects a socket made earlier (connecting needs no new descriptor) and
/// hands it to the runtime.
fn connect(socket: Socket, to: SocketAddr) -> TcpStream {
    socket.connect(&to.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpStream::from_std(socket.into()).unwrap()
}

/// Whether the proxy closed `c` (a reset or an end of stream) rather than
/// leaving it hanging; the bound only guards against a hang.
async fn closed_by_proxy(c: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
        Ok(Ok(0)) => true,
        Ok(Err(e)) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Every descriptor the process may still open, held.
fn take_every_descriptor() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "EMFILE, not {e}");
                return held;
            }
        }
    }
}

/// With no descriptor free, connections queued on the listener are reset
/// one by one (through the accept loop's spare descriptor) instead of
/// hanging in the backlog; an upstream connect that finds none fails as
/// `descriptors` and resets its client; once descriptors are free, a
/// connection is proxied again.
#[tokio::test(flavor = "current_thread")]
async fn out_of_descriptors_refuses_new_work_and_recovers() {
    let Rlimit { maximum, .. } = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum,
        },
    )
    .unwrap();

    let server = echo_server().await;
    let metrics = Metrics::default();
    let svc = ServiceBuilder::new()
        .layer(FixedTargetLayer::new(server))
        .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics.clone()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .layer(TrackLayer::new(metrics.clone()))
        .service(Passthrough::new(PassthroughConfig::default()).with_metrics(metrics.clone()));
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Direction::Inbound,
        svc,
        TaskTracker::new(),
        std::future::pending(),
    ));
    // The accept loop runs (and holds its spare descriptor); nothing is
    // left open of this first connection.
    drop(echoed(proxy).await);
    let open = || {
        metrics
            .open_connections
            .get_or_create(&l7inspect_core::ConnLabels {
                direction: Direction::Inbound,
                protocol: "unknown",
            })
            .get()
    };
    assert!(eventually(|| async { open() == 0 }).await);

    // The clients' sockets exist before the descriptors run out.
    let sockets: Vec<Socket> = (0..6)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let mut sockets = sockets.into_iter();
    let mut held = take_every_descriptor();

    // Queued connections: each is reset, none hangs.
    let mut queued: Vec<TcpStream> = sockets
        .by_ref()
        .take(5)
        .map(|s| connect(s, proxy))
        .collect();
    for (i, c) in queued.iter_mut().enumerate() {
        assert!(closed_by_proxy(c).await, "queued connection {i} is refused");
    }

    // One descriptor free: the connection is accepted, its upstream
    // connect finds none.
    held.pop();
    let mut c = connect(sockets.next().unwrap(), proxy);
    c.write_all(LINE).await.unwrap();
    assert!(
        closed_by_proxy(&mut c).await,
        "reset after the failed connect"
    );
    let errors = metrics
        .connect_errors
        .get_or_create(&ConnectErrorLabels {
            direction: Direction::Inbound,
            error: "descriptors",
        })
        .get();
    assert_eq!(errors, 1);

    // Descriptors back: proxied as before.
    drop((held, queued, c));
    drop(echoed(proxy).await);
}
