//! The transparent listeners under real iptables REDIRECT rules.
//!
//! Each test runs in its own network namespace (see `support/netns.rs`),
//! as root, and skips elsewhere (`SKIPPED <test>: <reason>`), unless
//! `L7INSPECT_REQUIRE_NETNS=1`. What only a namespace can show:
//! - the kernel's `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` answer reaches
//!   the proxy, and the proxy dials it: an application that knows nothing of
//!   the proxy talks to its server byte for byte;
//! - the loop guard refuses both loops a real rule set can make: a direct
//!   connection to the proxy port, and the proxy's own upstream connection
//!   redirected back into the proxy.
//!
//! # Topology (in every namespace)
//!
//! ```text
//!   lo: 127.0.0.1, 10.77.0.1 and 10.77.0.2 (fd77::1 and fd77::2 for IPv6)
//!
//!   client (bound to 10.77.0.2) ──connect 10.77.0.1:8080──┐
//!        nat OUTPUT: -s 10.77.0.2 -d 10.77.0.1 --dport 8080 -j REDIRECT
//!                                                        ▼
//!   sidecar listener 127.0.0.1:<port> ──SO_ORIGINAL_DST = 10.77.0.1:8080
//!        upstream connect from 10.77.0.1 (not matched by -s 10.77.0.2)
//!                                                        ▼
//!   banner/echo server 10.77.0.1:8080
//! ```
//!
//! In a pod the proxy's own traffic is exempted by its UID
//! (`-m owner ! --uid-owner`); here the proxy and the test share a process,
//! so the rule matches the client's source address instead.

#[path = "support/netns.rs"]
mod netns;

use l7inspect_sidecar::SidecarConfig;
use l7inspect_test_support::prom::{has_line, sum};
use netns::{Logs, Sidecar, Skip, ThreadNetns};
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

/// What the server sends as soon as a connection opens (it speaks first,
/// like SMTP), before echoing.
const BANNER: &[u8] = b"220 netns-echo ready\r\n";
/// What the client sends once it has the banner.
const PING: &[u8] = b"PING from an app that knows no proxy\r\n";
/// The service's port, redirected by the rules.
const SERVICE_PORT: u16 = 8080;
/// The metric line of one outbound connection refused as a loop.
const ONE_LOOP_REFUSED: &str =
    r#"l7inspect_connections_refused_total{direction="outbound",reason="loop"} 1"#;
/// The metric line of one outbound connection refused for want of an
/// original destination.
const ONE_NO_DST_REFUSED: &str =
    r#"l7inspect_connections_refused_total{direction="outbound",reason="no_original_dst"} 1"#;
/// How long a refused connection may take to be closed. Only a bug (a
/// connection left hanging) reaches it.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses of one address family's topology.
#[derive(Clone, Copy, Debug)]
struct Addrs {
    /// The service's address (with prefix length, for `ip addr add`).
    service_cidr: &'static str,
    /// The client's source address (with prefix length).
    client_cidr: &'static str,
    /// The loopback address, where REDIRECT in OUTPUT delivers.
    loopback: IpAddr,
    /// The wildcard address.
    wildcard: IpAddr,
}

const V4: Addrs = Addrs {
    service_cidr: "10.77.0.1/32",
    client_cidr: "10.77.0.2/32",
    loopback: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    wildcard: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
};

const V6: Addrs = Addrs {
    service_cidr: "fd77::1/128",
    client_cidr: "fd77::2/128",
    loopback: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    wildcard: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
};

/// A server that writes [`BANNER`], then echoes until EOF, and records the
/// peer address of every connection it accepts.
struct BannerServer {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

// === the tests ===

/// An outbound connection to a redirected IPv4 service reaches the service
/// through the proxy: exact bytes both ways, the server sees the proxy's
/// socket rather than the client's, and the proxy counts one outbound
/// connection detected as server-first.
#[test]
fn original_dst_is_honoured_ipv4() {
    netns::run("original_dst_is_honoured_ipv4", |ns, logs| {
        passthrough_via_redirect(ns, logs, V4, Listener::Outbound)
    });
}

/// The same over IPv6: ip6tables REDIRECT and `IP6T_SO_ORIGINAL_DST`.
/// Skips if the kernel has no IPv6 nat table.
#[test]
fn original_dst_is_honoured_ipv6() {
    netns::run("original_dst_is_honoured_ipv6", |ns, logs| {
        passthrough_via_redirect(ns, logs, V6, Listener::Outbound)
    });
}

/// The inbound transparent listener honours the original destination too,
/// and labels the connection `direction="inbound"`. (An inbound rule lives
/// in PREROUTING, which locally generated traffic does not cross; an OUTPUT
/// rule to the inbound port exercises the same listener.) The inbound
/// listener is on the wildcard address, as by default.
#[test]
fn original_dst_is_honoured_inbound() {
    netns::run("original_dst_is_honoured_inbound", |ns, logs| {
        passthrough_via_redirect(ns, logs, V4, Listener::Inbound)
    });
}

/// A connection made straight to the outbound listener's own address (the
/// rules are in place, but this client bypasses them) has that listener as
/// its original destination. The proxy must not dial itself: the client is
/// reset without a byte, `reason="loop"` is counted once, one warning is
/// logged, and nothing is forwarded.
#[test]
fn loop_guard_refuses_direct_connection() {
    netns::run(
        "loop_guard_refuses_direct_connection",
        |ns, logs| async move {
            let service = setup_addrs(&ns, V4)?;
            let _server = BannerServer::start(service).await;
            let sidecar = Sidecar::start(config(V4)).await;
            // The usual rule: it also turns conntrack on in this namespace, so
            // the kernel has an original destination to report (the listener).
            ns.redirect(
                Some(ip_of(V4.client_cidr)),
                service,
                sidecar.outbound().port(),
            )?;

            expect_refused(TcpStream::connect(sidecar.outbound()).await).await;

            let m = sidecar.wait_for_line(ONE_LOOP_REFUSED).await;
            assert_eq!(
                sum(&m, "l7inspect_connections_refused_total", &[]),
                1.0,
                "{m}"
            );
            assert_eq!(sum(&m, "l7inspect_tcp_connections_total", &[]), 0.0, "{m}");
            assert_eq!(logs.count("connection refused"), 1, "{}", logs.text());
            assert_eq!(logs.count("proxy's own listener"), 1, "{}", logs.text());
            sidecar.stop().await;
            Ok(())
        },
    );
}

/// A rule that does not exempt the proxy's own traffic redirects the
/// proxy's upstream connection back into the proxy. The guard recognises
/// its own socket as the client and refuses it, once: the application's
/// connection fails (reset or EOF, without hanging), the server is never
/// reached, and exactly one loop is counted and logged, not an endless
/// chain of connections.
#[test]
fn loop_guard_refuses_redirected_own_traffic() {
    netns::run(
        "loop_guard_refuses_redirected_own_traffic",
        |ns, logs| async move {
            let service = setup_addrs(&ns, V4)?;
            let server = BannerServer::start(service).await;
            let sidecar = Sidecar::start(config(V4)).await;
            // No `-s`: the proxy's own connect to the service matches too.
            ns.redirect(None, service, sidecar.outbound().port())?;

            expect_refused(TcpStream::connect(service).await).await;

            sidecar.wait_for_line(ONE_LOOP_REFUSED).await;
            // Once the application's connection is gone nothing is left open,
            // and the refusal count has stopped at one.
            let m = sidecar
                .wait_for("no open connections", |m| {
                    sum(m, "l7inspect_tcp_open_connections", &[]) == 0.0
                })
                .await;
            assert_eq!(
                sum(&m, "l7inspect_connections_refused_total", &[]),
                1.0,
                "{m}"
            );
            // Only the application's connection was forwarded (to the proxy).
            assert_eq!(sum(&m, "l7inspect_tcp_connections_total", &[]), 1.0, "{m}");
            assert!(server.peers().is_empty(), "the server must not be reached");
            assert_eq!(logs.count("connection refused"), 1, "{}", logs.text());
            assert_eq!(
                logs.count("proxy's own upstream connection"),
                1,
                "{}",
                logs.text()
            );
            sidecar.stop().await;
            Ok(())
        },
    );
}

/// A connection to a transparent listener in a namespace without any nat
/// rule: conntrack is off there (the kernel turns it on per namespace only
/// when a rule needs it), so the kernel has no original destination. The
/// client is reset without a byte and `reason="no_original_dst"` is counted
/// and logged once, with a hint at the missing rule.
#[test]
fn no_original_dst_without_nat_rules() {
    netns::run(
        "no_original_dst_without_nat_rules",
        |_ns, logs| async move {
            let sidecar = Sidecar::start(config(V4)).await;

            expect_refused(TcpStream::connect(sidecar.outbound()).await).await;

            let m = sidecar.wait_for_line(ONE_NO_DST_REFUSED).await;
            assert_eq!(
                sum(&m, "l7inspect_connections_refused_total", &[]),
                1.0,
                "{m}"
            );
            assert_eq!(sum(&m, "l7inspect_tcp_connections_total", &[]), 0.0, "{m}");
            assert_eq!(logs.count("connection refused"), 1, "{}", logs.text());
            assert_eq!(logs.count("no original destination"), 1, "{}", logs.text());
            sidecar.stop().await;
            Ok(())
        },
    );
}

/// `loop_guard_refuses_redirected_own_traffic` on a multi-thread runtime
/// (how the sidecar binary runs with more than one thread), twenty times
/// over: every application connection must cost exactly one forwarded
/// connection and one refusal.
///
/// This caught a race: the proxy used to register its upstream socket with
/// the loop guard only once the connect had completed, when the kernel had
/// already queued the redirected copy on the listener for another worker to
/// accept. It now registers right after `connect(2)` sends the SYN.
#[test]
fn loop_guard_refuses_redirected_own_traffic_multi_thread() {
    const CLIENTS: u32 = 20;
    netns::run_multi_thread(
        "loop_guard_refuses_redirected_own_traffic_multi_thread",
        4,
        |ns, _logs| async move {
            let service = setup_addrs(&ns, V4)?;
            let server = BannerServer::start(service).await;
            let sidecar = Sidecar::start(config(V4)).await;
            ns.redirect(None, service, sidecar.outbound().port())?;

            for _ in 0..CLIENTS {
                expect_refused(TcpStream::connect(service).await).await;
            }

            let refused = format!(
                r#"l7inspect_connections_refused_total{{direction="outbound",reason="loop"}} {CLIENTS}"#
            );
            sidecar.wait_for_line(&refused).await;
            let m = sidecar
                .wait_for("no open connections", |m| {
                    sum(m, "l7inspect_tcp_open_connections", &[]) == 0.0
                })
                .await;
            assert_eq!(
                sum(&m, "l7inspect_connections_refused_total", &[]),
                f64::from(CLIENTS),
                "{m}"
            );
            assert_eq!(
                sum(&m, "l7inspect_tcp_connections_total", &[]),
                f64::from(CLIENTS),
                "{m}"
            );
            assert!(server.peers().is_empty(), "the server must not be reached");
            sidecar.stop().await;
            Ok(())
        },
    );
}

// === helpers ===

/// Builds a sidecar whose ports a sidecar just dropped had bound. Another
/// test thread spawning a process (iptables) copies every descriptor of
/// this process into its child until the child execs, so a listener just
/// dropped here may live on for that moment and its port be briefly in
/// use: retried while that is the error, for a bounded time.
async fn build_again(
    config: SidecarConfig,
) -> Result<l7inspect_sidecar::Sidecar, l7inspect_sidecar::BuildError> {
    let deadline = tokio::time::Instant::now() + l7inspect_test_support::PATIENCE;
    loop {
        match l7inspect_sidecar::build(config.clone()).await {
            Err(l7inspect_sidecar::BuildError::Bind(e))
                if e.source.kind() == io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Which transparent listener a test redirects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Inbound,
    Outbound,
}

/// The body of the `original_dst_is_honoured_*` tests.
async fn passthrough_via_redirect(
    ns: ThreadNetns,
    logs: Logs,
    addrs: Addrs,
    listener: Listener,
) -> Result<(), Skip> {
    let service = setup_addrs(&ns, addrs)?;
    let client_ip: IpAddr = ip_of(addrs.client_cidr).parse().unwrap();
    let server = BannerServer::start(service).await;
    let sidecar = Sidecar::start(config(addrs)).await;
    let (port, direction) = match listener {
        Listener::Inbound => (sidecar.inbound().port(), "inbound"),
        Listener::Outbound => (sidecar.outbound().port(), "outbound"),
    };
    ns.redirect(Some(ip_of(addrs.client_cidr)), service, port)?;

    // The application dials the service; the proxy is invisible to it.
    let client = connect_from(client_ip, service).await;
    assert_eq!(client.peer_addr().unwrap(), service);
    let received = converse(client).await;
    assert_eq!(
        received,
        [BANNER, PING].concat(),
        "{}",
        String::from_utf8_lossy(&received)
    );

    // The server was reached by the proxy's socket, not the client's.
    let peers = server.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_ne!(
        peers[0].ip(),
        client_ip,
        "the connection bypassed the proxy"
    );

    let labels = format!(r#"{{direction="{direction}",protocol="server_first"}}"#);
    let m = sidecar
        .wait_for_line(&format!("l7inspect_tcp_open_connections{labels} 0"))
        .await;
    for line in [
        format!("l7inspect_tcp_connections_total{labels} 1"),
        format!("l7inspect_protocol_detections_total{labels} 1"),
        format!("l7inspect_tcp_read_bytes_total{labels} {}", PING.len()),
        format!(
            "l7inspect_tcp_write_bytes_total{labels} {}",
            BANNER.len() + PING.len()
        ),
    ] {
        assert!(has_line(&m, &line), "missing {line:?} in\n{m}");
    }
    assert_eq!(sum(&m, "l7inspect_tcp_connections_total", &[]), 1.0, "{m}");
    assert_eq!(
        sum(&m, "l7inspect_connections_refused_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(logs.text(), "", "nothing worth a warning happened");
    sidecar.stop().await;
    Ok(())
}

/// Adds the service and client addresses to `lo`; returns the service's
/// socket address.
fn setup_addrs(ns: &ThreadNetns, addrs: Addrs) -> Result<SocketAddr, Skip> {
    ns.add_addr(addrs.service_cidr)?;
    ns.add_addr(addrs.client_cidr)?;
    let ip: IpAddr = ip_of(addrs.service_cidr).parse().unwrap();
    Ok(SocketAddr::new(ip, SERVICE_PORT))
}

/// `10.77.0.1/32` → `10.77.0.1`.
fn ip_of(cidr: &str) -> &str {
    cidr.split_once('/').map_or(cidr, |(ip, _)| ip)
}

/// Transparent listeners on ephemeral ports: outbound on loopback (where
/// REDIRECT in OUTPUT sends connections), inbound on the wildcard address.
fn config(addrs: Addrs) -> SidecarConfig {
    SidecarConfig {
        transparent: true,
        inbound_listen: vec![SocketAddr::new(addrs.wildcard, 0)],
        outbound_listen: vec![SocketAddr::new(addrs.loopback, 0)],
        admin_listen: vec![SocketAddr::new(addrs.loopback, 0)],
        shutdown_grace: Duration::from_secs(5),
        ..SidecarConfig::default()
    }
}

/// Connects to `to` from the address `from` (any port).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Plays the application's side: waits for the banner, sends [`PING`],
/// waits for its echo, finishes sending and reads to EOF. Returns every byte
/// received.
async fn converse(mut stream: TcpStream) -> Vec<u8> {
    let mut received = vec![0; BANNER.len()];
    stream.read_exact(&mut received).await.unwrap();
    stream.write_all(PING).await.unwrap();
    let mut echo = vec![0; PING.len()];
    stream.read_exact(&mut echo).await.unwrap();
    received.extend_from_slice(&echo);
    stream.shutdown().await.unwrap();
    stream.read_to_end(&mut received).await.unwrap();
    received
}

/// Asserts that the proxy closes a connection (reset or EOF) without
/// sending a byte, within [`REFUSAL_TIMEOUT`]. `connected` is the result of
/// the client's connect: the reset may arrive before the client task has
/// seen its connect complete, so a reset connect counts as refused too.
async fn expect_refused(connected: io::Result<TcpStream>) {
    let is_reset = |e: &io::Error| e.kind() == io::ErrorKind::ConnectionReset;
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e) if is_reset(&e) => return,
        Err(e) => panic!("connect failed: {e}"),
    };
    let mut buf = [0; 64];
    let read = tokio::time::timeout(REFUSAL_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("a refused connection must be closed, not left open");
    match read {
        Ok(0) => {}
        Err(e) if is_reset(&e) => {}
        other => panic!("expected a reset or EOF, got {other:?} ({buf:?})"),
    }
}

// === impl BannerServer ===

impl BannerServer {
    /// Binds `addr` and serves on a task of the test's runtime.
    async fn start(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, peer) = listener.accept().await.unwrap();
                seen.lock().unwrap().push(peer);
                tokio::spawn(async move {
                    stream.write_all(BANNER).await?;
                    let (mut r, mut w) = stream.split();
                    tokio::io::copy(&mut r, &mut w).await?;
                    w.shutdown().await
                });
            }
        });
        Self { peers }
    }

    /// The peer address of every connection accepted so far.
    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// The default listeners are dual-stack, as l7inspect-init installs IPv4
/// and IPv6 rules: inbound and admin on `0.0.0.0` and `[::]`, outbound on
/// `127.0.0.1` and `[::1]`, four listeners of one port pair that do not
/// collide (IPv6 ones are IPv6-only). With IPv6 disabled in the namespace
/// (`::1` gone), the sidecar still starts, on IPv4 only for outbound.
#[test]
fn default_listeners_are_dual_stack() {
    netns::run(
        "default_listeners_are_dual_stack",
        |_ns, _logs| async move {
            if !std::path::Path::new("/proc/net/if_inet6").exists() {
                return Err(Skip::netns("the kernel has no IPv6"));
            }
            let defaults = SidecarConfig::default;
            let sidecar = l7inspect_sidecar::build(defaults())
                .await
                .expect("the default listeners bind");
            let a = sidecar.addrs().clone();
            let v4_v6 = |port: u16, v4: Ipv4Addr, v6: Ipv6Addr| {
                vec![SocketAddr::from((v4, port)), SocketAddr::from((v6, port))]
            };
            assert_eq!(
                a.inbound,
                v4_v6(4143, Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
            );
            assert_eq!(
                a.outbound,
                v4_v6(4140, Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST)
            );
            assert_eq!(
                a.admin,
                v4_v6(4191, Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
            );
            drop(sidecar);

            // An IPv6 address this host does not have is a mistake, not a
            // missing IPv6: reported, even beside an IPv4 address.
            let typo = SidecarConfig {
                outbound_listen: vec![
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    "[fd00::99]:0".parse().unwrap(),
                ],
                ..defaults()
            };
            let err = build_again(typo).await.expect_err("fd00::99 is not here");
            assert!(err.to_string().contains("[fd00::99]:0"), "{err}");

            // The listeners are gone with the sidecar; now without IPv6.
            std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
                .and_then(|()| std::fs::write("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "1"))
                .map_err(|e| Skip::netns(format!("cannot disable IPv6 in the namespace: {e}")))?;
            let sidecar = build_again(defaults()).await.expect("starts without IPv6");
            assert_eq!(
                sidecar.addrs().outbound,
                vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 4140))]
            );
            // An address list of IPv6 only still fails, naming the address.
            let only_v6 = SidecarConfig {
                outbound_listen: vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 4141))],
                admin_listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
                inbound_listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
                ..defaults()
            };
            let err = l7inspect_sidecar::build(only_v6).await.expect_err("no ::1");
            assert!(
                err.to_string().contains("outbound listener on [::1]:4141"),
                "{err}"
            );
            Ok(())
        },
    );
}
