//! The admin port's added routes end to end, over real sockets with real
//! clients (hyper, and the `tap` subcommand of the built binary):
//!
//! - the live view's span API, trace lookup, page and tap stream, on an
//!   in-process sidecar proxying to a hyper backend;
//! - who may use them: loopback clients only, unless
//!   `admin_allow_remote_inspect`, while `/live`, `/ready` and `/metrics`
//!   answer everyone (in a network namespace, so that a second local
//!   address, 10.77.0.1, can be a client that is not on loopback);
//! - the binary: `l7inspect-sidecar tap` against a running sidecar, its exit
//!   codes, and `/log-level` changing the log filter of a running process.
//!
//! ```text
//!   client ──► sidecar (inbound forward on 127.0.0.1) ──► hyper backend
//!                 │ spans
//!                 ▼
//!   client ──► admin port: /api/spans, /api/traces/{id}, /, /api/tap, /log-level
//!   tap    ──► admin port: /api/tap (server-sent events)
//! ```
//!
//! Waiting is done with bounded retries (`eventually`, `wait_for`) and
//! timeouts that only guard against hangs; nothing asserts a duration.

mod support;

#[path = "support/netns.rs"]
mod netns;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use l7inspect_core::AdminBody;
use l7inspect_sidecar::SidecarConfig;
use l7inspect_test_support::{PATIENCE, closed_port, eventually, netns::output_within, wait_for};
use serde_json::Value;
use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    net::{TcpSocket, TcpStream},
    time::timeout,
};

const BIN: &str = env!("CARGO_BIN_EXE_l7inspect-sidecar");

/// The `Host` every client request to the backend carries, so spans have a
/// known authority.
const HOST: &str = "shop.test:8080";
/// The trace and span of a client that sends a W3C `traceparent`.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// The `service.name` the sidecars under test are given.
const SERVICE: &str = "shop";
/// What the 403 of a route answered only on loopback names: the way out.
const FLAG: &str = "--admin-allow-remote-inspect";

// ---------------------------------------------------------------------------
// A backend, and an HTTP/1.1 client

/// A hyper HTTP/1.1 server on 127.0.0.1 that answers paths starting with
/// `/fail` with 500, anything else with 200, on the caller's runtime.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let status = if req.uri().path().starts_with("/fail") {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                let resp = http::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"hello from backend\n")))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    addr
}

/// A whole response.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The body as a JSON array.
    fn list(&self) -> Vec<Value> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        match self.json() {
            Value::Array(list) => list,
            other => panic!("not a JSON array: {other}"),
        }
    }
}

/// Sends one request on `stream` (HTTP/1.1, hyper's client, `Host:
/// shop.test:8080`, `headers` added) and reads the whole response.
async fn send_on(
    stream: TcpStream,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let what = format!("{method} {path}");
    timeout(PATIENCE, async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, HOST);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} hung"))
}

/// [`send_on`] a new connection to `addr`.
async fn send(addr: SocketAddr, method: Method, path: &str, body: &str) -> Resp {
    send_on(connect(addr).await, method, path, &[], body).await
}

/// `GET path` on a new connection to `addr`.
async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, Method::GET, path, "").await
}

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} hung"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A connection to `to` from the local address `from` (bound before
/// connecting): the admin server sees `from` as its client.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    timeout(PATIENCE, socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect from {from} to {to} hung"))
        .unwrap_or_else(|e| panic!("connect from {from} to {to}: {e}"))
}

/// Request headers, name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// The string field `key` of a span.
fn field<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {span}"))
}

/// The paths of `spans`, in order.
fn paths(spans: &[Value]) -> Vec<&str> {
    spans.iter().map(|s| field(s, "path")).collect()
}

// ---------------------------------------------------------------------------
// 1. The live view's API, in-process

/// What the live view shows of real requests through the sidecar, over the
/// admin port from loopback: `/api/spans` lists them newest first with
/// their path, status, direction and service; its filters narrow the list
/// (and a filter nothing matches gives an empty list, not an error);
/// `/api/traces/{id}` finds the span of a request that arrived with a
/// W3C `traceparent` and shows the client's span as its parent, and is 404
/// for a trace it never saw; a bad filter is a 400 whose JSON error names
/// it; `/` is the HTML page under a Content-Security-Policy; and `/api/tap`
/// streams, as a server-sent event, a request made after it opened (and
/// only the ones its filter matches).
#[tokio::test]
async fn live_view_api_shows_the_requests() {
    let mut config = support::forward_config(backend().await);
    config.tracing.resource.service_name = SERVICE.to_owned();
    let sidecar = support::start(config).await;
    let admin = sidecar.addrs.admin[0];
    let inbound = sidecar.inbound();

    // One at a time, each in the ring before the next is sent, so that
    // "newest first" has one right answer.
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let requests: [(&str, Headers, u16); 3] = [
        ("/first", &[], 200),
        ("/traced", &[("traceparent", &traceparent)], 200),
        ("/fail/once", &[], 500),
    ];
    for (n, (path, headers, status)) in requests.iter().enumerate() {
        let resp = send_on(connect(inbound).await, Method::GET, path, headers, "").await;
        assert_eq!(resp.status.as_u16(), *status, "{path}: {}", resp.body);
        let in_ring = eventually(|| async { sidecar.spans.entries().len() == n + 1 }).await;
        assert!(in_ring, "the span of {path} never reached the ring");
    }

    // Every span, newest first, with what the request was.
    let spans = get(admin, "/api/spans").await.list();
    assert_eq!(paths(&spans), ["/fail/once", "/traced", "/first"]);
    for (span, status) in spans.iter().zip([500, 200, 200]) {
        assert_eq!(span["http_status"], status, "{span}");
        assert_eq!(field(span, "direction"), "inbound", "{span}");
        assert_eq!(field(span, "kind"), "server", "{span}");
        assert_eq!(field(span, "service"), SERVICE, "{span}");
        assert_eq!(field(span, "method"), "GET", "{span}");
        assert_eq!(field(span, "protocol"), "http1", "{span}");
        assert_eq!(field(span, "authority"), HOST, "{span}");
    }
    assert_eq!(field(&spans[0], "status"), "error", "{}", spans[0]);
    assert_ne!(field(&spans[1], "status"), "error", "{}", spans[1]);

    // Filters.
    for (query, want) in [
        ("status=5xx", &["/fail/once"][..]),
        ("status=2xx", &["/traced", "/first"]),
        ("status=error", &["/fail/once"]),
        ("path=/tra", &["/traced"]),
        ("direction=inbound&status=2xx&limit=1", &["/traced"]),
        ("limit=2", &["/fail/once", "/traced"]),
        (
            "method=GET&authority=shop.test",
            &["/fail/once", "/traced", "/first"],
        ),
        ("service=shop&protocol=http1&path=%2Ffirst", &["/first"]),
        ("direction=outbound", &[]),
        ("service=elsewhere", &[]),
        ("protocol=grpc", &[]),
    ] {
        let spans = get(admin, &format!("/api/spans?{query}")).await.list();
        assert_eq!(paths(&spans), want, "?{query}");
    }

    // The traced request: its span, child of the client's.
    let trace = get(admin, &format!("/api/traces/{TRACE}")).await.list();
    assert_eq!(trace.len(), 1, "{trace:?}");
    let span = &trace[0];
    assert_eq!(field(span, "trace_id"), TRACE);
    assert_eq!(field(span, "parent_span_id"), CLIENT_SPAN);
    assert_eq!(field(span, "path"), "/traced");
    assert_eq!(field(span, "span_id"), field(&spans[1], "span_id"));
    // The other two started their own traces: roots.
    assert_eq!(spans[0]["parent_span_id"], Value::Null, "{}", spans[0]);
    assert_ne!(field(&spans[0], "trace_id"), TRACE);

    let unknown = "0123456789abcdef0123456789abcdef";
    let resp = get(admin, &format!("/api/traces/{unknown}")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "{}", resp.body);
    assert!(
        field(&resp.json(), "error").contains(unknown),
        "{}",
        resp.body
    );

    // Bad filters: 400, the JSON error naming the parameter.
    for (query, named) in [
        ("status=6xx", "status"),
        ("direction=sideways", "direction"),
        ("limit=many", "limit"),
        ("colour=red", "colour"),
    ] {
        let resp = get(admin, &format!("/api/spans?{query}")).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "?{query}: {}",
            resp.body
        );
        let error = field(&resp.json(), "error").to_owned();
        assert!(error.contains(named), "?{query}: {error}");
    }
    let resp = get(admin, "/api/traces/not-a-trace").await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);

    // The page: HTML, locked down by its CSP.
    let page = get(admin, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        page.body.to_ascii_lowercase().contains("<html"),
        "{}",
        page.body
    );

    // The tap: a stream opened with a filter, then one request it does not
    // match and one it does; the first event is the second request.
    let (mut events, _conn) = open_tap(admin, "/api/tap?path=/after").await;
    let resp = get(inbound, "/not-this-one").await;
    assert_eq!(resp.status, StatusCode::OK);
    let resp = get(inbound, "/after-tap").await;
    assert_eq!(resp.status, StatusCode::OK);
    let event = timeout(PATIENCE, events.next_data())
        .await
        .expect("no event from the tap for a request made after it opened");
    assert_eq!(field(&event, "path"), "/after-tap", "{event}");
    assert_eq!(event["http_status"], 200, "{event}");
    assert_eq!(field(&event, "direction"), "inbound", "{event}");
    assert_eq!(field(&event, "service"), SERVICE, "{event}");
    // The same span as the API lists.
    let listed = get(admin, "/api/spans?path=/after-tap").await.list();
    assert_eq!(listed, [event]);
}

/// An open `/api/tap` stream: the body of its response, read as
/// server-sent events.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    /// The next `data:` event's JSON (waits as long as it takes; callers
    /// bound it).
    async fn next_data(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let event = String::from_utf8(event).unwrap();
                if let Some(json) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(json).unwrap();
                }
                continue; // a comment (": tap started", ": keep-alive")
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("the tap stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// Opens `path` (a tap) on `admin` and waits for its first comment: once
/// the response has started, the stream's starting point in the ring is
/// set, and every span that reaches the ring later is the stream's.
async fn open_tap(admin: SocketAddr, path: &str) -> (Events, tokio::task::JoinHandle<()>) {
    let stream = connect(admin).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header(header::HOST, "admin")
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("the tap did not answer")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut events = Events {
        body: resp.into_body(),
        buf: Vec::new(),
    };
    let frame = timeout(PATIENCE, events.body.frame())
        .await
        .expect("the tap sent nothing")
        .expect("the tap stream ended")
        .unwrap();
    let first = frame.into_data().unwrap();
    assert_eq!(&first[..], b": tap started\n\n");
    (events, conn)
}

// ---------------------------------------------------------------------------
// 2. Loopback only, in a network namespace

/// A client address on `lo` that is not a loopback address.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The paths that answer only on loopback, and how each is asked for:
/// the live view's (page, span API, trace, tap) and an added route (the
/// binary's `/log-level`; here a stand-in added the same way, through
/// `Sidecar::admin_route`), read and changed.
const GATED: &[(Method, &str)] = &[
    (Method::GET, "/"),
    (Method::GET, "/api/spans"),
    (Method::GET, "/api/traces/4bf92f3577b34da6a3ce929d0e0e4736"),
    (Method::GET, "/api/tap"),
    (Method::GET, "/log-level"),
    (Method::PUT, "/log-level"),
];

/// In a namespace: a sidecar whose admin server listens on 0.0.0.0 (as in
/// a pod) with a stand-in `/log-level` route, `allow_remote_inspect` as
/// given.
async fn start_admin(ns: &netns::ThreadNetns, allow: bool) -> Result<netns::Sidecar, netns::Skip> {
    ns.add_addr(&format!("{REMOTE}/32"))?;
    let config = SidecarConfig {
        transparent: false,
        admin_listen: vec!["0.0.0.0:0".parse().unwrap()],
        admin_allow_remote_inspect: allow,
        ..SidecarConfig::default()
    };
    let sidecar = l7inspect_sidecar::build(config)
        .await
        .expect("the sidecar binds")
        .admin_route(
            |req: &Request<Bytes>| -> Option<http::Response<AdminBody>> {
                (req.uri().path() == "/log-level")
                    .then(|| http::Response::new(Full::from("info\n").boxed_unsync()))
            },
        );
    let sidecar = netns::Sidecar::run_built(sidecar);
    let admin = sidecar.addrs.admin[0];
    let up = eventually(|| async { get(admin, "/ready").await.status == StatusCode::OK }).await;
    assert!(up, "the admin server never became ready");
    Ok(sidecar)
}

/// `method path` on the admin port from `from` (to the admin port at that
/// same address).
async fn admin_from(from: IpAddr, port: u16, method: &Method, path: &str) -> Resp {
    let stream = connect_from(from, SocketAddr::new(from, port)).await;
    // `/api/tap` answers with an endless stream: only its head is read.
    if path == "/api/tap" {
        return tap_head(stream, path).await;
    }
    let body = if method == Method::PUT { "debug" } else { "" };
    send_on(stream, method.clone(), path, &[], body).await
}

/// The status and headers of `GET path` on `stream`, and its body if it
/// ends; a streamed body (an open tap) is dropped.
async fn tap_head(stream: TcpStream, path: &str) -> Resp {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("no answer")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = if parts.status == StatusCode::OK {
        String::new()
    } else {
        let body = timeout(PATIENCE, body.collect()).await.expect("body hung");
        String::from_utf8_lossy(&body.unwrap().to_bytes()).into_owned()
    };
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A client that is not on loopback (10.77.0.1, an address on `lo` of a
/// fresh namespace) gets 403 naming `--admin-allow-remote-inspect` from
/// every route that shows request details or changes state (the live
/// view's page, span API, trace lookup and tap, and a route added like the
/// binary's `/log-level`, to read or change), while `/live`, `/ready` and
/// `/metrics` answer it (Prometheus and the kubelet are such clients);
/// the same admin server answers those routes to a client on 127.0.0.1.
#[test]
fn added_routes_answer_loopback_clients_only() {
    netns::run(
        "added_routes_answer_loopback_clients_only",
        |ns, _logs| async move {
            let sidecar = start_admin(&ns, false).await?;
            let port = sidecar.addrs.admin[0].port();
            let remote = IpAddr::V4(REMOTE);
            let local = IpAddr::V4(Ipv4Addr::LOCALHOST);

            for (method, path) in GATED {
                let resp = admin_from(remote, port, method, path).await;
                assert_eq!(
                    resp.status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} from {remote}"
                );
                assert!(resp.body.contains(FLAG), "{method} {path}: {}", resp.body);
            }
            for path in ["/live", "/ready", "/metrics"] {
                let resp = admin_from(remote, port, &Method::GET, path).await;
                assert_eq!(
                    resp.status,
                    StatusCode::OK,
                    "{path} from {remote}: {}",
                    resp.body
                );
            }
            for (method, path) in GATED {
                let resp = admin_from(local, port, method, path).await;
                // The trace was never seen: 404, past the gate.
                let want = if path.starts_with("/api/traces/") {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                assert_eq!(
                    resp.status, want,
                    "{method} {path} from {local}: {}",
                    resp.body
                );
            }
            sidecar.stop().await;
            Ok(())
        },
    );
}

/// With `admin_allow_remote_inspect` (`--admin-allow-remote-inspect`), the
/// same client that is not on loopback gets the routes' own answers.
#[test]
fn allow_remote_inspect_opens_added_routes() {
    netns::run(
        "allow_remote_inspect_opens_added_routes",
        |ns, _logs| async move {
            let sidecar = start_admin(&ns, true).await?;
            let port = sidecar.addrs.admin[0].port();
            let remote = IpAddr::V4(REMOTE);
            for (method, path) in GATED {
                let resp = admin_from(remote, port, method, path).await;
                let want = if path.starts_with("/api/traces/") {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                assert_eq!(
                    resp.status, want,
                    "{method} {path} from {remote}: {}",
                    resp.body
                );
            }
            let spans = admin_from(remote, port, &Method::GET, "/api/spans").await;
            assert_eq!(spans.list(), Vec::<Value>::new());
            sidecar.stop().await;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// The binary

/// A process this test started: killed (SIGKILL, by its PID) and reaped on
/// drop; its stderr is printed if the test is failing.
struct Guard {
    what: &'static str,
    child: Child,
    stderr: Lines,
}

/// The lines a child writes to a pipe, read on a thread of their own as
/// they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn read(pipe: impl Read + Send + 'static) -> Self {
        let lines = Self::default();
        let store = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                store.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn find(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.all().into_iter().find(|l| pred(l))
    }
}

impl Guard {
    /// Starts `cmd` with stderr piped (and read into [`Guard::stderr`]).
    fn spawn(what: &'static str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stderr = Lines::read(child.stderr.take().unwrap());
        Self {
            what,
            child,
            stderr,
        }
    }

    /// Sends `signal` (e.g. `-INT`) to the process, by its PID.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Waits (bounded) for the process to exit; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let child = &mut self.child;
        let what = self.what;
        wait_for(&format!("{what} to exit"), || child.try_wait().unwrap())
            .await
            .code()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) stderr:\n{}",
                self.what,
                self.child.id(),
                self.stderr.all().join("\n")
            );
        }
    }
}

/// The sidecar binary, started by the test.
struct Binary {
    proc: Guard,
    admin: SocketAddr,
    /// The inbound forwards' listeners, in the order given.
    forwards: Vec<SocketAddr>,
    /// The first of them (to the backend).
    forward: SocketAddr,
}

/// Starts the sidecar binary with its admin server and one inbound forward
/// to `backend` on ephemeral ports of 127.0.0.1, JSON logs, and `extra`
/// flags; reads the bound addresses from its "listening" line and waits
/// for `/ready`.
async fn start_binary(backend: SocketAddr, extra: &[&str]) -> Binary {
    let forward = format!("127.0.0.1:0={backend}");
    let mut cmd = Command::new(BIN);
    cmd.args(["--no-transparent", "--admin-listen", "127.0.0.1:0"])
        .args(["--inbound-forward", &forward])
        .args(["--service-name", SERVICE, "--log-format", "json"])
        .args(extra)
        .env_remove("RUST_LOG");
    // Spans stay in memory; nothing is exported.
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(var);
    }
    let proc = Guard::spawn("l7inspect-sidecar", &mut cmd);
    let stderr = proc.stderr.clone();
    let listening: Value = wait_for("the sidecar's \"listening\" line", || {
        stderr.all().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "listening").then_some(v)
        })
    })
    .await;
    let admin = field(&listening, "admin").parse().unwrap();
    // LISTEN=TARGET,LISTEN=TARGET...
    let forwards: Vec<SocketAddr> = field(&listening, "inbound_forwards")
        .split(',')
        .map(|f| f.split('=').next().unwrap().parse().unwrap())
        .collect();
    let ready = eventually(|| async { get(admin, "/ready").await.status == StatusCode::OK }).await;
    assert!(ready, "the sidecar never became ready");
    Binary {
        proc,
        admin,
        forward: forwards[0],
        forwards,
    }
}

/// Whether `line` is a JSON log line at level DEBUG.
fn is_debug(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["level"] == "DEBUG")
}

// ---------------------------------------------------------------------------
// 3. `tap`

/// `l7inspect-sidecar tap --status 5xx` against the running binary prints
/// a line for a 500 answered through the sidecar (its path, status,
/// direction and trace id, the same trace id `/api/spans` shows) and none
/// for the 200 before it, and exits 0 on SIGINT.
///
/// The tap sees only spans that reach the ring after its stream opened, and
/// it says nothing when it has, so requests are made in rounds (a 200,
/// seen in the ring, then a 500) until a 500 shows up: a bounded retry, not
/// a timing assertion. Then one more round, wholly after the tap's start:
/// its 200 reached the ring before its 500, so a tap that printed that 500
/// had read past the 200, and left it out.
#[tokio::test]
async fn tap_prints_matching_requests_until_interrupted() {
    let sidecar = start_binary(backend().await, &[]).await;
    let admin = sidecar.admin.to_string();
    let mut tap = Guard::spawn(
        "l7inspect-sidecar tap",
        Command::new(BIN)
            .args(["tap", "--admin", &admin, "--status", "5xx"])
            .stdout(Stdio::piped()),
    );
    let stdout = Lines::read(tap.child.stdout.take().unwrap());

    // Rounds until the tap shows it is reading...
    let has_word = |line: &str, word: &str| line.split_whitespace().any(|w| w == word);
    let mut round = 0;
    loop {
        assert!(
            round < 200,
            "the tap never printed a 500: {:?}",
            stdout.all()
        );
        tap_round(&sidecar, round).await;
        // The tap reads the ring every 100 ms: give this round a few looks.
        let printed = async {
            while stdout.find(|l| l.contains("/fail/")).is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if timeout(Duration::from_millis(500), printed).await.is_ok() {
            break;
        }
        round += 1;
    }
    // ...then one more, all of it after the tap's start.
    round += 1;
    tap_round(&sidecar, round).await;
    let fail = format!("/fail/{round}");
    let line = wait_for(&format!("the tap's line for {fail}"), || {
        stdout.find(|l| has_word(l, &fail))
    })
    .await;

    let words: Vec<&str> = line.split_whitespace().collect();
    for want in ["inbound", "GET", HOST, "500"] {
        assert!(words.contains(&want), "{want} missing: {line}");
    }
    let spans = get(sidecar.admin, &format!("/api/spans?path={fail}"))
        .await
        .list();
    let trace = field(&spans[0], "trace_id");
    assert!(line.contains(&format!("trace={trace}")), "{line}");
    let all = stdout.all();
    assert!(
        !all.iter().any(|l| l.contains("/ok/")),
        "a 200 was printed under --status 5xx: {all:?}"
    );

    tap.signal("-INT");
    assert_eq!(tap.exit_code().await, Some(0), "{:?}", tap.stderr.all());
}

/// One round of [`tap_prints_matching_requests_until_interrupted`]: a 200
/// (`/ok/{n}`) through the sidecar, waited for in its ring, then a 500
/// (`/fail/{n}`).
async fn tap_round(sidecar: &Binary, n: usize) {
    let ok = format!("/ok/{n}");
    assert_eq!(get(sidecar.forward, &ok).await.status, StatusCode::OK);
    let in_ring = eventually(|| async {
        !get(sidecar.admin, &format!("/api/spans?path={ok}"))
            .await
            .list()
            .is_empty()
    })
    .await;
    assert!(in_ring, "{ok} never reached the ring");
    let fail = format!("/fail/{n}");
    let resp = get(sidecar.forward, &fail).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
}

/// `tap` exits 1 with one line naming the address when nothing listens
/// there, and 2 (clap's usage error) for a status class it does not know.
#[test]
fn tap_exit_codes() {
    let closed = closed_port().to_string();
    let out = output_within(
        Command::new(BIN).args(["tap", "--admin", &closed]),
        PATIENCE,
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&closed), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = output_within(
        Command::new(BIN).args(["tap", "--admin", &closed, "--status", "6xx"]),
        PATIENCE,
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("6xx") && stderr.contains("--status"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// 4. `/log-level`

/// `/log-level` on the running binary: `GET` shows the filter it started
/// with (`--log-level info`); `PUT debug` changes it at once, for the
/// whole process: the same request then writes a DEBUG line that it did
/// not write under `info`; `PUT` of a filter that does not parse is a 400
/// naming it, and changes nothing; `POST` is a 405.
///
/// The request is one to a forward whose target refuses connections (the
/// client gets a 502): the proxy logs "upstream failed before responding"
/// at debug for it. A plain request that succeeds writes no DEBUG line at
/// all over HTTP/1 (the sidecar's per-connection `conn` span has no event
/// then, and hyper does not log), so it could not show the change.
#[tokio::test]
async fn log_level_changes_at_runtime() {
    let dead = format!("127.0.0.1:0={}", closed_port());
    let sidecar = start_binary(
        backend().await,
        &["--log-level", "info", "--inbound-forward", &dead],
    )
    .await;
    let (admin, stderr) = (sidecar.admin, sidecar.proc.stderr.clone());
    let dead = sidecar.forwards[1];
    let upstream_failed = |line: &str| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v["level"] == "DEBUG"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("upstream failed before responding"))
        })
    };

    let resp = get(admin, "/log-level").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body.trim(), "info");

    // Under `info`: the failed request writes no DEBUG line (its WARN about
    // the refused connect is there).
    assert_eq!(get(dead, "/before").await.status, StatusCode::BAD_GATEWAY);
    let before = stderr.all();
    assert!(!before.iter().any(|l| is_debug(l)), "{before:#?}");

    let resp = send(admin, Method::PUT, "/log-level", "debug").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.body.trim(), "debug");
    let resp = get(admin, "/log-level").await;
    assert_eq!(resp.body.trim(), "debug");
    // The sidecar logs the change; its stderr is read on a thread.
    wait_for("the \"log level changed\" line", || {
        stderr.find(|l| l.contains("log level changed"))
    })
    .await;

    // Under `debug`: the same request writes its DEBUG line.
    assert_eq!(get(dead, "/after").await.status, StatusCode::BAD_GATEWAY);
    wait_for("the DEBUG line of the failed request", || {
        stderr.find(upstream_failed)
    })
    .await;

    let bad = "info,[[";
    let resp = send(admin, Method::PUT, "/log-level", bad).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);
    assert!(resp.body.contains(&format!("{bad:?}")), "{}", resp.body);
    assert_eq!(get(admin, "/log-level").await.body.trim(), "debug");

    let resp = send(admin, Method::POST, "/log-level", "warn").await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED, "{}", resp.body);
    let allow = resp.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("PUT"), "{allow}");
    assert_eq!(get(admin, "/log-level").await.body.trim(), "debug");
}
