//! TLS termination on the transparent inbound listener, under real
//! iptables REDIRECT rules in a network namespace of the test's own (root
//! only; skips elsewhere unless `L7INSPECT_REQUIRE_NETNS=1`).
//!
//! ```text
//!   lo: 127.0.0.1, 10.78.0.1 (the pod's address), 10.78.0.2 (a client)
//!
//!   client 10.78.0.2 ──TLS to 10.78.0.1:8443──┐  nat OUTPUT REDIRECT
//!                                              ▼
//!   inbound listener (SO_ORIGINAL_DST 10.78.0.1:8443, terminated)
//!                                              ▼ plaintext, over loopback
//!   application: HTTP/1.1 on 127.0.0.1:APP_PORT only
//! ```
//!
//! The application listens on loopback only, as an application behind a
//! TLS-terminating sidecar should: had the proxy dialled the original
//! destination (10.78.0.1), the connection would have been refused.

#[path = "support/netns.rs"]
mod netns;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use l7inspect_sidecar::{SidecarConfig, TlsConfig};
use l7inspect_test_support::{TempDir, pki::TestCa};
use l7inspect_tls::{TerminateConfig, TerminatePort};
use netns::{Sidecar, Skip, ThreadNetns};
use rustls_pki_types::ServerName;
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsConnector;

const POD: &str = "10.78.0.1";
const CLIENT: &str = "10.78.0.2";
const TLS_PORT: u16 = 8443;

/// `--tls-terminate 8443` (the application on 127.0.0.1:8443) and
/// `--tls-terminate 8443=8080` (on 127.0.0.1:8080).
#[test]
fn terminated_on_the_original_port_to_a_loopback_application() {
    for app_port in [None, Some(8080)] {
        netns::run(
            "terminated_on_the_original_port_to_a_loopback_application",
            move |ns, logs| async move {
                terminate_via_redirect(ns, app_port).await?;
                assert_eq!(logs.text(), "", "nothing worth a warning happened");
                Ok(())
            },
        );
    }
}

async fn terminate_via_redirect(ns: ThreadNetns, app_port: Option<u16>) -> Result<(), Skip> {
    ns.add_addr(&format!("{POD}/32"))?;
    ns.add_addr(&format!("{CLIENT}/32"))?;
    let pod: IpAddr = POD.parse().unwrap();
    let service = SocketAddr::new(pod, TLS_PORT);

    // The application: plaintext HTTP/1.1, on loopback only.
    let app = TcpListener::bind(("127.0.0.1", app_port.unwrap_or(TLS_PORT)))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((io, peer)) = app.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| async move {
                    let body = format!("app saw {} from {}", req.uri().path(), peer.ip());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });

    let dir = TempDir::new("tls-netns");
    let ca = TestCa::new("netns test CA");
    let (cert, key) = ca.server(&["pod.test"]).write(dir.path(), "pod");
    let config = SidecarConfig {
        transparent: true,
        inbound_listen: vec!["0.0.0.0:0".parse().unwrap()],
        outbound_listen: vec!["127.0.0.1:0".parse().unwrap()],
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        shutdown_grace: Duration::from_secs(5),
        tls: TlsConfig {
            terminate: Some(TerminateConfig::new(
                vec![TerminatePort {
                    port: TLS_PORT,
                    app_port,
                }],
                cert,
                key,
            )),
            ..TlsConfig::default()
        },
        ..SidecarConfig::default()
    };
    let sidecar = Sidecar::start(config).await;
    ns.redirect(Some(CLIENT), service, sidecar.inbound().port())?;

    // A client that knows nothing of the proxy: TLS to the pod's address.
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(CLIENT.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(service).await.unwrap();
    let tls = TlsConnector::from(Arc::new(ca.client_config(&[b"http/1.1"], None)));
    let stream = tls
        .connect(ServerName::try_from("pod.test").unwrap(), tcp)
        .await
        .expect("the sidecar's handshake, with the pod's certificate");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/orders")
        .header("host", "pod.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    // Plaintext over loopback: the application saw the proxy's loopback
    // connection.
    assert_eq!(body, "app saw /orders from 127.0.0.1");

    let m = sidecar
        .wait_for_line("l7inspect_tls_terminated_connections_total{tls_version=\"1.3\"} 1")
        .await;
    assert!(
        m.contains(r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200""#),
        "{m}"
    );
    sidecar.stop().await;
    Ok(())
}
