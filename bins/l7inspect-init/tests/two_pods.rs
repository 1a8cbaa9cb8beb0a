//! Two "pods" end to end: `l7inspect-init` and the `l7inspect-sidecar`
//! binary in each of two network namespaces, with real kernel redirection
//! between them, once per rule backend (iptables with the system's default
//! flavour, iptables legacy, native nftables).
//!
//! # Topology
//!
//! ```text
//!  pod A "client" (netns l7i-<pid>-<backend>-a)      pod B "server" (netns ...-b)
//!  eth0: 10.77.0.1/24, 10.78.0.1/24, fd77::1/64  <─veth─>  eth0: 10.77.0.2/24, 10.78.0.2/24, fd77::2/64
//!
//!  l7inspect-init --skip-outbound-ports 8081         l7inspect-init --skip-inbound-ports 9411
//!                 --skip-outbound-cidrs 10.78.0.0/24
//!  l7inspect-sidecar (uid 2102, service client-pod)  l7inspect-sidecar (uid 2102, service server-pod)
//!    (default listeners: IPv4 and IPv6)
//!  curl, redis-cli, raw TCP clients (uid 0)          HTTP app :8080 and :8081 (echoes the headers it got)
//!                                                    redis-server 10.77.0.2:6379
//!                                                    banner service :2525 (speaks first, then echoes)
//!                                                    Zipkin v2 receiver :9411 (both sidecars export here)
//! ```
//!
//! A client's connection to 10.77.0.2 leaves pod A through A's outbound
//! listener (OUTPUT REDIRECT to 4140), whose upstream connection (uid 2102,
//! not redirected) enters pod B through B's inbound listener (PREROUTING
//! REDIRECT to 4143), whose upstream connection reaches the service.
//!
//! # What is checked
//!
//! - HTTP (IPv4, and IPv6 where the kernel has an IPv6 nat table): the
//!   client gets the app's answer; A counts one outbound `http1` connection
//!   and request, B one inbound; the Zipkin receiver holds A's CLIENT span
//!   and B's SERVER span with one trace id, the SERVER span's parent being
//!   the CLIENT span, and the app received a `traceparent` of that trace
//!   whose parent is the SERVER span.
//! - Redis (`redis-cli` SET/GET and a raw client with all 256 byte values)
//!   and a server-speaks-first banner service pass byte for byte, counted as
//!   `redis` and `server_first` connections by both sidecars.
//! - A skipped outbound port and a skipped outbound CIDR bypass A's sidecar
//!   (its counters do not move; B's inbound still sees them, as it should).
//! - No loop: A counts exactly the connections the clients made, B's
//!   sidecar no outbound ones, and neither refuses anything (`loop`).
//! - `l7inspect-init --remove` in both pods puts the nat rules (another
//!   tool's rule included) back exactly as they were, and a request then goes
//!   directly: no sidecar counts it and the app gets no `traceparent`.
//!
//! Without root, `ip`, or the backend's tools the test prints
//! `SKIPPED <test>: <reason>` and passes, unless `L7INSPECT_REQUIRE_NETNS=1`;
//! without `curl`, `redis-server` or `redis-cli` likewise unless
//! `L7INSPECT_REQUIRE_TOOLS=1`. Waiting is done with bounded retry loops;
//! the time limits only guard against hangs.
//!
//! The sidecar binary comes from the same target directory as the init
//! binary (built by `cargo test --workspace`; `cargo test -p
//! l7inspect-init` alone uses whatever build is there). When it is missing,
//! the test builds it once into `target/two-pods` (a target directory of its
//! own: the running `cargo test` holds the lock of this one).

use l7inspect_test_support::{
    PATIENCE, Skip,
    collector::{Collector, Listeners},
    need_tool,
    netns::{NamedNetns, Proc},
    prom, run_or_skip, wait_for_blocking,
};
use serde_json::Value as Json;
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

const INIT: &str = env!("CARGO_BIN_EXE_l7inspect-init");
/// The sidecar's UID (l7inspect-init's default `--proxy-uid`).
const PROXY_UID: u32 = 2102;

const A_V4: &str = "10.77.0.1";
const B_V4: &str = "10.77.0.2";
const A_V6: &str = "fd77::1";
const B_V6: &str = "fd77::2";
/// Pod B's second address, in the CIDR pod A's init skips.
const B_SKIPPED_V4: &str = "10.78.0.2";
const A_SKIPPED_V4: &str = "10.78.0.1";
const SKIPPED_CIDR: &str = "10.78.0.0/24";

const HTTP_PORT: u16 = 8080;
/// A second port of the same HTTP app, skipped outbound in pod A.
const SKIPPED_PORT: u16 = 8081;
const BANNER_PORT: u16 = 2525;
const REDIS_PORT: u16 = 6379;
/// The Zipkin receiver's port. It is in pod B's `--skip-inbound-ports`:
/// otherwise pod A's sidecar's span exports would enter pod B through B's
/// inbound listener, which would trace them as HTTP requests and export
/// those spans in turn, so every export would make more spans. (Pod B's
/// sidecar reaches it over `lo` as uid 2102, which is never redirected.)
const ZIPKIN_PORT: u16 = 9411;
const ADMIN_PORT: u16 = 4191;

/// What the banner service writes as soon as a connection opens.
const BANNER: &[u8] = b"220 two-pods banner ready\r\n";
/// What the banner client writes once it has read the banner.
const PING: &[u8] = b"PING from a client that knows no proxy\r\n";

// === the tests: one per backend, one body ===

/// `l7inspect-init` with default flags: iptables, the system's flavour
/// (nft on current Debian).
#[test]
fn two_pods_iptables() {
    run("two_pods_iptables", Backend::Iptables);
}

/// `--iptables-flavour legacy` (x_tables).
#[test]
fn two_pods_iptables_legacy() {
    run("two_pods_iptables_legacy", Backend::IptablesLegacy);
}

/// `--backend nft`: native nftables.
#[test]
fn two_pods_nft() {
    run("two_pods_nft", Backend::Nft);
}

// === skips ===

fn run(test: &'static str, backend: Backend) {
    run_or_skip(test, || two_pods(test, backend));
}

// === the backends ===

#[derive(Clone, Copy, Debug)]
enum Backend {
    /// Default flags: `iptables-restore` of the system's flavour.
    Iptables,
    /// `--iptables-flavour legacy`.
    IptablesLegacy,
    /// `--backend nft`.
    Nft,
}

impl Backend {
    fn tag(self) -> &'static str {
        match self {
            Self::Iptables => "ipt",
            Self::IptablesLegacy => "leg",
            Self::Nft => "nft",
        }
    }

    fn init_flags(self) -> &'static [&'static str] {
        match self {
            Self::Iptables => &[],
            Self::IptablesLegacy => &["--iptables-flavour", "legacy"],
            Self::Nft => &["--backend", "nft"],
        }
    }

    /// The iptables programs (`iptables`, `iptables-save`, and IPv6's).
    fn iptables(self) -> Option<[&'static str; 4]> {
        match self {
            Self::Iptables => Some(["iptables", "iptables-save", "ip6tables", "ip6tables-save"]),
            Self::IptablesLegacy => Some([
                "iptables-legacy",
                "iptables-legacy-save",
                "ip6tables-legacy",
                "ip6tables-legacy-save",
            ]),
            Self::Nft => None,
        }
    }

    /// Checks the backend works in `pod` and adds a rule of "another tool"
    /// (which must survive, and which makes the tables exist before the
    /// snapshot, as they do after `--remove`). Returns whether IPv6 nat is
    /// there (iptables; nft always has the `ip6` family).
    fn prepare(self, pod: &NamedNetns) -> Result<bool, Skip> {
        let other = [
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "9999",
            "-m",
            "comment",
            "--comment",
            "other-tool",
            "-j",
            "RETURN",
        ];
        match self.iptables() {
            Some([ipt, save, ip6t, save6]) => {
                pod.tool(save, &["-t", "nat"])?;
                pod.tool(ipt, &other)?;
                let ipv6 = pod.tool(save6, &["-t", "nat"]).is_ok();
                if ipv6 {
                    pod.tool(ip6t, &other)?;
                }
                Ok(ipv6)
            }
            None => {
                pod.tool("nft", &["list", "ruleset"])?;
                pod.tool("nft", &["add", "table", "inet", "othertool"])?;
                pod.tool(
                    "nft",
                    &["add chain inet othertool out { type filter hook output priority 0; policy accept; }"],
                )?;
                pod.tool(
                    "nft",
                    &["add rule inet othertool out tcp dport 9999 accept comment \"other-tool\""],
                )?;
                Ok(true)
            }
        }
    }

    /// The pod's nat rules as text to compare: `iptables-save -t nat` (and
    /// IPv6's) without comments and chain counters, or `nft list ruleset`.
    fn snapshot(self, pod: &NamedNetns, ipv6: bool) -> String {
        let get = |program: &str, args: &[&str]| {
            pod.tool(program, args)
                .unwrap_or_else(|skip| panic!("{skip:?}"))
        };
        match self.iptables() {
            Some([_, save, _, save6]) => {
                let mut text = normalize_save(&get(save, &["-t", "nat"]));
                if ipv6 {
                    text.push_str("=== IPv6\n");
                    text.push_str(&normalize_save(&get(save6, &["-t", "nat"])));
                }
                text
            }
            None => get("nft", &["list", "ruleset"]),
        }
    }

    /// Whether our IPv6 rules are installed in `snapshot`.
    fn has_ipv6_rules(self, snapshot: &str) -> bool {
        match self {
            Self::Nft => snapshot.contains("table ip6 l7inspect"),
            _ => snapshot
                .split_once("=== IPv6\n")
                .is_some_and(|(_, v6)| v6.contains("l7inspect:")),
        }
    }
}

/// `iptables-save` output without its timestamped comments and with chain
/// counters zeroed (the nat table counts connections).
fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]\n", &l[..i]),
            _ => format!("{l}\n"),
        })
        .collect()
}

// === the body ===

fn two_pods(test: &'static str, backend: Backend) -> Result<(), Skip> {
    let tag = backend.tag();
    let a = NamedNetns::new(&format!("l7i-{}-{tag}-a", std::process::id()))?;
    let b = NamedNetns::new(&format!("l7i-{}-{tag}-b", std::process::id()))?;
    need_tool("curl", "curl")?;
    need_tool("redis-server", "redis-server")?;
    need_tool("redis-cli", "redis-tools")?;
    let sidecar_bin = sidecar_binary();

    // The wire between the pods: a veth pair made in A with its peer in B,
    // so no interface name is ever visible in the root namespace.
    for pod in [&a, &b] {
        pod.tool("ip", &["link", "set", "lo", "up"])?;
    }
    a.tool(
        "ip",
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b.name(),
        ],
    )?;
    for (pod, addrs) in [
        (&a, [A_V4, A_SKIPPED_V4, A_V6]),
        (&b, [B_V4, B_SKIPPED_V4, B_V6]),
    ] {
        pod.tool(
            "ip",
            &["addr", "add", &format!("{}/24", addrs[0]), "dev", "eth0"],
        )?;
        pod.tool(
            "ip",
            &["addr", "add", &format!("{}/24", addrs[1]), "dev", "eth0"],
        )?;
        pod.tool(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/64", addrs[2]),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        pod.tool("ip", &["link", "set", "eth0", "up"])?;
    }
    let v6_nat_a = backend.prepare(&a)?;
    let v6_nat_b = backend.prepare(&b)?;
    let before_a = backend.snapshot(&a, v6_nat_a);
    let before_b = backend.snapshot(&b, v6_nat_b);

    // Pod B's services, dual-stack where the test owns them.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let _http = {
        let seen = seen.clone();
        serve(b.bind(HTTP_PORT), move |s| http_app(s, &seen))
    };
    let _http_skipped = {
        let seen = seen.clone();
        serve(b.bind(SKIPPED_PORT), move |s| http_app(s, &seen))
    };
    let _banner = serve(b.bind(BANNER_PORT), banner_service);
    // The collector: Zipkin on its port (the one pod B's rules skip); its
    // OTLP ports are not used here.
    let collector = Collector::on(Listeners {
        otlp_grpc: b.bind(4317),
        otlp_http: b.bind(4318),
        zipkin: b.bind(ZIPKIN_PORT),
    });
    let redis_dir = std::env::temp_dir().join(format!("{}-redis", b.name()));
    std::fs::create_dir_all(&redis_dir).expect("redis working directory");
    let _redis_dir = RemoveDir(redis_dir.clone());
    let mut redis = Command::new("redis-server");
    redis
        .args(["--port", &REDIS_PORT.to_string(), "--bind", B_V4])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "no"])
        .current_dir(&redis_dir);
    let _redis = b.spawn("redis-server", redis, &log_path(&b, "redis"));
    wait_for_blocking("redis-server answers PING", || {
        let out = b.output(Command::new("redis-cli").args(["-h", B_V4, "PING"]));
        (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
    });

    // The rules, then the sidecars (as a pod's init container and sidecar).
    let flags = backend.init_flags();
    ok(&a.output(Command::new(INIT).args(flags).args([
        "--skip-outbound-ports",
        &SKIPPED_PORT.to_string(),
        "--skip-outbound-cidrs",
        SKIPPED_CIDR,
    ])));
    ok(&b.output(
        Command::new(INIT)
            .args(flags)
            .args(["--skip-inbound-ports", &ZIPKIN_PORT.to_string()]),
    ));
    let installed_a = backend.snapshot(&a, v6_nat_a);
    let installed_b = backend.snapshot(&b, v6_nat_b);
    assert_ne!(installed_a, before_a, "no rules installed in pod A");
    assert_ne!(installed_b, before_b, "no rules installed in pod B");
    let ipv6 = backend.has_ipv6_rules(&installed_a) && backend.has_ipv6_rules(&installed_b);
    if !ipv6 {
        println!("NOTE {test}: no IPv6 nat table here, the IPv6 request is not made");
    }
    let zipkin = format!("http://{B_V4}:{ZIPKIN_PORT}/api/v2/spans");
    let _sidecar_a = start_sidecar(&a, &sidecar_bin, "client-pod", &zipkin);
    let _sidecar_b = start_sidecar(&b, &sidecar_bin, "server-pod", &zipkin);
    for pod in [&a, &b] {
        wait_for_blocking(&format!("{}'s sidecar is ready", pod.name()), || {
            let (head, _) = admin_get(pod, "/ready").ok()?;
            is_ok_status(&head).then_some(())
        });
    }

    // --- HTTP, IPv4 and IPv6: both sidecars, one trace ---
    let mut http_requests = 0.0;
    let mut targets = vec![format!("{B_V4}:{HTTP_PORT}")];
    if ipv6 {
        targets.push(format!("[{B_V6}]:{HTTP_PORT}"));
    }
    for (i, target) in targets.iter().enumerate() {
        let path = format!("/hello-{i}");
        let body = curl(&a, &format!("http://{target}{path}"));
        assert!(body.starts_with(&format!("path {path}\n")), "{body}");
        http_requests += 1.0;
        let traceparent = seen_request(&seen, &path)
            .header("traceparent")
            .unwrap_or_else(|| panic!("the app got no traceparent for {path}: {body}"));
        assert!(
            body.contains(&format!("traceparent: {traceparent}\n")),
            "{body}"
        );
        let fields: Vec<&str> = traceparent.split('-').collect();
        let [_, trace_id, parent_id, _] = fields[..] else {
            panic!("traceparent {traceparent}");
        };

        expect_metric(
            &a,
            TCP_CONNECTIONS,
            &[OUT, ("protocol", "http1")],
            http_requests,
        );
        expect_metric(
            &b,
            TCP_CONNECTIONS,
            &[IN, ("protocol", "http1")],
            http_requests,
        );
        expect_metric(&a, HTTP_CLIENT_COUNT, &[], http_requests);
        expect_metric(&b, HTTP_SERVER_COUNT, &[], http_requests);

        let (client, server) = wait_for_blocking(&format!("the spans of trace {trace_id}"), || {
            let spans = collector.zipkin_spans();
            let of = |service: &str, kind: &str| -> Vec<Json> {
                spans
                    .iter()
                    .filter(|s| {
                        s["traceId"] == trace_id
                            && s["kind"] == kind
                            && s["localEndpoint"]["serviceName"] == service
                    })
                    .cloned()
                    .collect()
            };
            let (client, server) = (of("client-pod", "CLIENT"), of("server-pod", "SERVER"));
            (!client.is_empty() && !server.is_empty()).then_some((client, server))
        });
        assert_eq!(client.len(), 1, "{client:#?}");
        assert_eq!(server.len(), 1, "{server:#?}");
        let (client, server) = (&client[0], &server[0]);
        assert_eq!(
            server["parentId"], client["id"],
            "the SERVER span's parent is the CLIENT span\nclient: {client:#}\nserver: {server:#}"
        );
        assert!(client["id"].is_string() && client["id"] != server["id"]);
        assert_eq!(
            server["id"], parent_id,
            "the app's traceparent names pod B's SERVER span as its parent"
        );
    }

    // --- opaque TCP: redis, byte for byte ---
    let set =
        a.output(Command::new("redis-cli").args(["-h", B_V4, "SET", "l7i-key", "l7i value\r\n"]));
    assert_eq!(String::from_utf8_lossy(&set.stdout), "OK\n", "{set:?}");
    let get = a.output(Command::new("redis-cli").args(["-h", B_V4, "--no-raw", "GET", "l7i-key"]));
    assert_eq!(
        String::from_utf8_lossy(&get.stdout),
        "\"l7i value\\r\\n\"\n",
        "{get:?}"
    );
    // A raw client with every byte value in the key's value.
    let value: Vec<u8> = (0..=255u8).collect();
    let mut conversation = b"*3\r\n".to_vec();
    for part in [&b"SET"[..], b"l7i-bytes", &value] {
        conversation.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        conversation.extend_from_slice(part);
        conversation.extend_from_slice(b"\r\n");
    }
    conversation.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$9\r\nl7i-bytes\r\n");
    let mut expected = b"+OK\r\n$256\r\n".to_vec();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    let mut redis_conn = a
        .connect(&format!("{B_V4}:{REDIS_PORT}"))
        .expect("connect to redis");
    redis_conn.write_all(&conversation).expect("write to redis");
    let mut got = vec![0; expected.len()];
    redis_conn.read_exact(&mut got).expect("read from redis");
    assert_eq!(
        got,
        expected,
        "redis answered {:?}",
        String::from_utf8_lossy(&got)
    );
    drop(redis_conn);
    let redis_conns = 3.0;
    expect_metric(
        &a,
        TCP_CONNECTIONS,
        &[OUT, ("protocol", "redis")],
        redis_conns,
    );
    expect_metric(
        &b,
        TCP_CONNECTIONS,
        &[IN, ("protocol", "redis")],
        redis_conns,
    );

    // --- the server speaks first: the banner flows before the client writes ---
    let mut conn = a
        .connect(&format!("{B_V4}:{BANNER_PORT}"))
        .expect("connect to the banner service");
    let mut banner = vec![0; BANNER.len()];
    conn.read_exact(&mut banner).expect("read the banner");
    assert_eq!(banner, BANNER);
    conn.write_all(PING).expect("write the ping");
    conn.shutdown(Shutdown::Write).expect("shutdown");
    let mut echo = Vec::new();
    conn.read_to_end(&mut echo).expect("read the echo");
    assert_eq!(echo, PING);
    expect_metric(
        &a,
        TCP_CONNECTIONS,
        &[OUT, ("protocol", "server_first")],
        1.0,
    );
    expect_metric(
        &b,
        TCP_CONNECTIONS,
        &[IN, ("protocol", "server_first")],
        1.0,
    );
    for (pod, direction) in [(&a, OUT), (&b, IN)] {
        let labels = [direction, ("protocol", "server_first")];
        expect_metric(
            pod,
            "l7inspect_tcp_read_bytes_total",
            &labels,
            PING.len() as f64,
        );
        expect_metric(
            pod,
            "l7inspect_tcp_write_bytes_total",
            &labels,
            (BANNER.len() + PING.len()) as f64,
        );
    }

    // --- the proxy's own traffic is not looped ---
    // Pod A's sidecar counts exactly the clients' connections (not its own
    // upstream connections or span exports), pod B's sidecar no outbound
    // connection at all (its upstream dials to the app are not redirected),
    // and neither refused a connection.
    let through_a = http_requests + redis_conns + 1.0;
    expect_metric(&a, TCP_CONNECTIONS, &[OUT], through_a);
    expect_metric(&b, TCP_CONNECTIONS, &[IN], through_a);
    for (pod, idle) in [(&a, IN), (&b, OUT)] {
        let m = metrics(pod);
        assert_eq!(
            prom::sum(&m, TCP_CONNECTIONS, &[idle]),
            0.0,
            "{}: {m}",
            pod.name()
        );
        assert_eq!(prom::sum(&m, REFUSED, &[]), 0.0, "{}: {m}", pod.name());
        assert_eq!(prom::sum(&m, REFUSED, &[("reason", "loop")]), 0.0, "{m}");
    }

    // --- skipped port and CIDR: past pod A's sidecar ---
    let mut into_b = through_a;
    for (url, path) in [
        (
            format!("http://{B_V4}:{SKIPPED_PORT}/skipped-port"),
            "/skipped-port",
        ),
        (
            format!("http://{B_SKIPPED_V4}:{HTTP_PORT}/skipped-cidr"),
            "/skipped-cidr",
        ),
    ] {
        let body = curl(&a, &url);
        assert!(body.starts_with(&format!("path {path}\n")), "{body}");
        into_b += 1.0;
        // Pod B's inbound rules still apply: its sidecar counted it, and
        // counts before it forwards, so by now pod A's would have too.
        expect_metric(&b, TCP_CONNECTIONS, &[IN], into_b);
        assert_eq!(
            prom::sum(&metrics(&a), TCP_CONNECTIONS, &[]),
            through_a,
            "{url} went through pod A's sidecar"
        );
    }

    // --- --remove restores the tables; then traffic goes directly ---
    ok(&a.output(Command::new(INIT).args(flags).arg("--remove")));
    ok(&b.output(Command::new(INIT).args(flags).arg("--remove")));
    assert_eq!(
        backend.snapshot(&a, v6_nat_a),
        before_a,
        "pod A's rules after --remove"
    );
    assert_eq!(
        backend.snapshot(&b, v6_nat_b),
        before_b,
        "pod B's rules after --remove"
    );
    let (metrics_a, metrics_b) = (metrics(&a), metrics(&b));
    let body = curl(&a, &format!("http://{B_V4}:{HTTP_PORT}/after-remove"));
    assert!(body.starts_with("path /after-remove\n"), "{body}");
    assert_eq!(
        seen_request(&seen, "/after-remove").header("traceparent"),
        None,
        "a sidecar saw the request after --remove: {body}"
    );
    for (pod, before) in [(&a, &metrics_a), (&b, &metrics_b)] {
        let now = metrics(pod);
        assert_eq!(
            prom::sum(&now, TCP_CONNECTIONS, &[]),
            prom::sum(before, TCP_CONNECTIONS, &[]),
            "{}'s sidecar counted a connection after --remove:\n{now}",
            pod.name()
        );
    }
    Ok(())
}

// === metrics ===

const TCP_CONNECTIONS: &str = "l7inspect_tcp_connections_total";
const HTTP_CLIENT_COUNT: &str = "http_client_request_duration_seconds_count";
const HTTP_SERVER_COUNT: &str = "http_server_request_duration_seconds_count";
const REFUSED: &str = "l7inspect_connections_refused_total";
const OUT: (&str, &str) = ("direction", "outbound");
const IN: (&str, &str) = ("direction", "inbound");

/// Waits until `pod`'s sidecar reports at least `want` for the metric, then
/// asserts it is exactly `want`.
fn expect_metric(pod: &NamedNetns, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = String::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        last = metrics_or(pod, last);
        let got = prom::sum(&last, name, labels);
        if got >= want || Instant::now() > deadline {
            assert_eq!(got, want, "{} {name}{labels:?}\n{last}", pod.name());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === the pods' admin ports ===

/// `GET path` on `pod`'s sidecar admin port over 127.0.0.1 (loopback to
/// 127.0.0.1 is never redirected): the response head and body.
fn admin_get(pod: &NamedNetns, path: &str) -> io::Result<(String, String)> {
    let mut conn = pod.connect(&format!("127.0.0.1:{ADMIN_PORT}"))?;
    // HTTP/1.0: no chunked encoding, the body ends at EOF.
    conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((head.to_owned(), body.to_owned()))
}

/// `pod`'s sidecar's Prometheus metrics.
fn metrics(pod: &NamedNetns) -> String {
    let (head, body) =
        admin_get(pod, "/metrics").unwrap_or_else(|e| panic!("{}'s /metrics: {e}", pod.name()));
    assert!(is_ok_status(&head), "{head}");
    body
}

/// The metrics, or `last` when the scrape failed (checked by the caller's
/// assertion on the values).
fn metrics_or(pod: &NamedNetns, last: String) -> String {
    match admin_get(pod, "/metrics") {
        Ok((head, body)) if is_ok_status(&head) => body,
        _ => last,
    }
}

/// Removes a directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a response head's status is 200 (`HTTP/1.0 200 OK`: the
/// admin server answers in the request's version).
fn is_ok_status(head: &str) -> bool {
    head.split_whitespace().nth(1) == Some("200")
}

fn log_path(pod: &NamedNetns, what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{what}.log", pod.name()))
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "l7inspect-init failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl` in `pod` (a client that knows nothing of proxies): the body of a
/// 200 response.
fn curl(pod: &NamedNetns, url: &str) -> String {
    let out = pod.output(Command::new("curl").args([
        "-sS",
        "-g",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        url,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl {url}: {out:?}");
    let (body, code) = text.rsplit_once('\n').expect("curl -w output");
    assert_eq!(code, "200", "curl {url}: {text}");
    body.to_owned()
}

// === the sidecar ===

fn start_sidecar(pod: &NamedNetns, bin: &Path, service: &str, zipkin: &str) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(["--service-name", service, "--zipkin-endpoint", zipkin])
        // The default listeners are dual-stack (0.0.0.0 and [::] inbound,
        // 127.0.0.1 and [::1] outbound), where l7inspect-init's IPv4 and
        // IPv6 REDIRECT rules deliver: no listener flags.
        .env_clear()
        // Export 100 ms after a span ends rather than 1 s (waits are shorter).
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .uid(PROXY_UID)
        .gid(PROXY_UID);
    pod.spawn(
        &format!("l7inspect-sidecar {service}"),
        cmd,
        &log_path(pod, "sidecar"),
    )
}

/// The sidecar binary: next to the init binary (a workspace build), else
/// built once per process into a target directory of this test's own (the
/// running `cargo test` holds the lock of the shared one).
fn sidecar_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let next_to_init = Path::new(INIT).with_file_name("l7inspect-sidecar");
        if next_to_init.is_file() {
            return next_to_init;
        }
        let target = Path::new(INIT)
            .parent()
            .and_then(Path::parent)
            .expect("the target directory")
            .join("two-pods");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "l7inspect-sidecar",
                "--bin",
                "l7inspect-sidecar",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p l7inspect-sidecar: {status}"
        );
        target.join("debug").join("l7inspect-sidecar")
    })
    .clone()
}

// === pod B's services ===

/// An accept loop on its own thread; stops (and is joined) on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn serve(listener: TcpListener, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let handle = Arc::new(handle);
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let handle = handle.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(PATIENCE));
                            let _ = conn.set_write_timeout(Some(PATIENCE));
                            handle(conn);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    Server {
        stop,
        thread: Some(thread),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A request the HTTP app answered.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// The one request the app saw for `path`.
fn seen_request(seen: &Mutex<Vec<Seen>>, path: &str) -> Seen {
    let seen = seen.lock().unwrap();
    let found: Vec<&Seen> = seen.iter().filter(|s| s.path == path).collect();
    assert_eq!(found.len(), 1, "requests for {path}: {seen:#?}");
    found[0].clone()
}

/// One HTTP/1 request's head as the app reads it (its requests are GETs).
struct Request {
    path: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
}

/// Reads one HTTP/1 request head.
fn read_request(conn: &TcpStream) -> io::Result<Request> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok(Request { path, headers })
}

fn respond(mut conn: &TcpStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Write);
}

/// The app: 200 with a body of `path <path>` and the headers it got.
fn http_app(conn: TcpStream, seen: &Mutex<Vec<Seen>>) {
    let Ok(Request { path, headers }) = read_request(&conn) else {
        return;
    };
    let mut body = format!("path {path}\n");
    for (n, v) in &headers {
        body.push_str(&format!("{n}: {v}\n"));
    }
    seen.lock().unwrap().push(Seen { path, headers });
    respond(&conn, "200 OK", &body);
}

/// Writes the banner at once, then echoes until the client is done.
fn banner_service(mut conn: TcpStream) {
    if conn.write_all(BANNER).is_err() {
        return;
    }
    let mut buf = [0; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}
