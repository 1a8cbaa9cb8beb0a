//! A custom TCP proxy built from l7inspect's layers: it forwards one port to
//! a fixed target, detects each connection's protocol, prints it, and passes
//! the bytes through untouched.
//!
//! ```text
//! cargo run -p l7inspect-examples --example tcp_proxy -- 127.0.0.1:7000 127.0.0.1:6379
//! redis-cli -p 7000 ping      # prints: 127.0.0.1:54321 -> 127.0.0.1:6379 speaks redis
//! ```
//!
//! The stack is the sidecar's, minus metrics, plus one service of our own
//! between detection and passthrough: that is where an embedder branches on
//! the protocol (send HTTP to an HTTP stack, say).

use l7inspect_core::{
    ConnectConfig, ConnectLayer, Connecting, Direction, FixedTargetLayer, Passthrough,
    PassthroughConfig, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer, Detected};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target)) = (args.next(), args.next()) else {
        eprintln!("usage: tcp_proxy LISTEN_ADDR TARGET_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse()?;
    let target: SocketAddr = target.parse()?;

    let passthrough = Passthrough::new(PassthroughConfig::default());

    // Our own step: print what detection found, then pass through.
    let announce = service_fn(move |d: Detected<Connecting, TcpStream>| {
        println!(
            "{} -> {} speaks {}",
            d.meta.meta.client, d.meta.meta.target, d.outcome
        );
        passthrough.clone().oneshot(d)
    });

    let stack = ServiceBuilder::new()
        .layer(FixedTargetLayer::new(target))
        .layer(ConnectLayer::new(ConnectConfig::default()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .service(announce);
    check_service(&stack);

    let listener = TcpListener::bind(listen).await?;
    println!("forwarding {} -> {target}", listener.local_addr()?);
    let tracker = tokio_util::task::TaskTracker::new();
    serve(listener, Direction::Outbound, stack, tracker, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

/// Compile-time check that the composed stack is a connection service.
fn check_service<S: Service<l7inspect_detect::Conn<l7inspect_core::Accepted, TcpStream>>>(_: &S) {}
