//! Traces across two sidecars, end to end, with real peers on 127.0.0.1:
//!
//! ```text
//! client ──► sidecar A (outbound forward, "frontend", CLIENT spans)
//!        ──► sidecar B (inbound forward, "backend", SERVER spans)
//!        ──► backend (hyper, HTTP/1 and h2c; records the headers it got)
//!
//! A and B ──► test-support's collector: OTLP/HTTP or OTLP/gRPC, and Zipkin
//!             (each POST checked against the official Zipkin v2 spec)
//! ```
//!
//! Clients are curl (HTTP/1.1 and `--http2-prior-knowledge`) and a raw
//! HTTP/1.1 client that writes exact trace headers. Most tests stop both
//! sidecars before looking at the receivers: shutdown flushes the export
//! queue, so what the receivers hold then is everything, and "exactly N
//! spans" and "no span" are exact assertions, not waits for absence.
//!
//! Attribute keys are spelled out as strings here on purpose: the test
//! checks the wire names of the OpenTelemetry HTTP semantic conventions, not
//! that the code uses its own constants.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_sidecar::TracingConfig;
use l7inspect_test_support::collector::{Collector, OtlpSpan, Receiver, str_attr};
use l7inspect_test_support::{eventually, silent_server};
use l7inspect_trace::export::{
    ExportConfig, OtlpConfig, OtlpProtocol, ResourceConfig, SamplerConfig, ZipkinConfig,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use serde_json::Value as Json;
use support::{Running, forward_config, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Only fires on a bug (a hang); never a timing assertion.
const GENEROUS: Duration = Duration::from_secs(60);
/// What the raw client sends as `Host` and `User-Agent`.
const RAW_HOST: &str = "shop.test";
const RAW_PORT: u16 = 8080;
const RAW_UA: &str = "l7inspect-e2e/1";

// Client contexts, as a tracing application in front of A would send them.
// Distinct trace ids per request, so each request is its own trace.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B3: &str = "463ac35c9f6413ad48485a3953bb6124";
const TRACE_B3MULTI: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const TRACE64: &str = "a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

// ---------------------------------------------------------------------------
// Receivers: test-support's collector

type Store<T> = Arc<Mutex<Vec<T>>>;

/// The collector's receiver for `protocol`.
fn receiver(protocol: OtlpProtocol) -> Receiver {
    match protocol {
        OtlpProtocol::Grpc => Receiver::OtlpGrpc,
        OtlpProtocol::HttpProtobuf => Receiver::OtlpHttp,
    }
}

/// OTLP over `protocol` plus Zipkin to `collector`, exported 100 ms after a
/// span ends.
fn export(collector: &Collector, protocol: OtlpProtocol) -> ExportConfig {
    ExportConfig {
        otlp: Some(OtlpConfig::new(
            collector.endpoint(receiver(protocol)),
            protocol,
        )),
        zipkin: Some(ZipkinConfig::new(collector.endpoint(Receiver::Zipkin))),
        batch_delay: Duration::from_millis(100),
        ..ExportConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Backend

/// A request as the backend received it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    version: http::Version,
    headers: http::HeaderMap,
}

/// An HTTP/1.1 and h2c (prior knowledge) server that records each request
/// and answers `/status/{code}` with that code, anything else with 200.
async fn backend() -> (SocketAddr, Store<Seen>) {
    let listener = l7inspect_core::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Store::default();
    let store = seen.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let store = store.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let store = store.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    store.lock().unwrap().push(Seen {
                        path: path.clone(),
                        version: req.version(),
                        headers: req.headers().clone(),
                    });
                    let status = path
                        .strip_prefix("/status/")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(200);
                    let res = http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"hello from backend\n")))
                        .unwrap();
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

// ---------------------------------------------------------------------------
// The chain

/// Receivers, backend, and sidecars A ("frontend", outbound forward to B)
/// and B ("backend", inbound forward to the backend).
struct Chain {
    protocol: OtlpProtocol,
    receivers: Collector,
    seen: Store<Seen>,
    a: Running,
    b: Running,
}

/// Everything the receivers and the backend got, after both sidecars
/// stopped and flushed.
struct Collected {
    otlp: Vec<OtlpSpan>,
    zipkin: Vec<Json>,
    seen: Vec<Seen>,
    /// A's outbound forward listener (curl's `Host` port).
    a_port: u16,
    /// B's inbound forward listener (A's network peer).
    b_port: u16,
}

fn tracing_config(service: &str, export: ExportConfig, sampler: SamplerConfig) -> TracingConfig {
    TracingConfig {
        resource: ResourceConfig {
            service_name: service.into(),
            attributes: Vec::new(),
        },
        export,
        sampler,
        ..TracingConfig::default()
    }
}

impl Chain {
    async fn start(protocol: OtlpProtocol, sampler_a: SamplerConfig) -> Self {
        let receivers = Collector::start();
        let (backend, seen) = backend().await;

        let mut b = forward_config(backend);
        b.tracing = tracing_config(
            "backend",
            export(&receivers, protocol),
            SamplerConfig::default(),
        );
        let b = start(b).await;

        let mut a = forward_config(b.inbound());
        a.outbound_forwards = std::mem::take(&mut a.inbound_forwards);
        a.tracing = tracing_config("frontend", export(&receivers, protocol), sampler_a);
        let a = start(a).await;
        Self {
            protocol,
            receivers,
            seen,
            a,
            b,
        }
    }

    /// Where clients connect: A's outbound forward.
    fn entry(&self) -> SocketAddr {
        self.a.addrs.outbound_forwards[0].listen
    }

    /// Stops both sidecars (which flushes their spans) and returns what was
    /// received.
    async fn finish(mut self) -> Collected {
        self.a.shutdown();
        self.b.shutdown();
        timeout(GENEROUS, async {
            (&mut self.a.handle).await.unwrap();
            (&mut self.b.handle).await.unwrap();
        })
        .await
        .expect("sidecars stop and flush");
        Collected {
            otlp: self.receivers.otlp_spans(receiver(self.protocol)),
            zipkin: self.receivers.zipkin_spans(),
            seen: self.seen.lock().unwrap().clone(),
            a_port: self.a.addrs.outbound_forwards[0].listen.port(),
            b_port: self.b.inbound().port(),
        }
    }
}

/// A's CLIENT span and B's SERVER span of one request.
struct Pair<'a> {
    a: &'a OtlpSpan,
    b: &'a OtlpSpan,
    seen: &'a Seen,
}

impl Collected {
    /// The spans of the one request to `path`: exactly A's CLIENT span and
    /// B's SERVER span, forming one trace of their own with B under A; and
    /// what the backend got.
    fn pair(&self, path: &str) -> Pair<'_> {
        let spans: Vec<&OtlpSpan> = self
            .otlp
            .iter()
            .filter(|s| s.str_attr("url.path") == Some(path))
            .collect();
        assert_eq!(spans.len(), 2, "spans of {path}: {spans:#?}");
        let a = *spans
            .iter()
            .find(|s| s.service() == Some("frontend"))
            .unwrap_or_else(|| panic!("no frontend span for {path}: {spans:#?}"));
        let b = *spans
            .iter()
            .find(|s| s.service() == Some("backend"))
            .unwrap_or_else(|| panic!("no backend span for {path}: {spans:#?}"));
        assert_eq!(a.kind(), ProtoSpanKind::Client, "{path}: A's span");
        assert_eq!(b.kind(), ProtoSpanKind::Server, "{path}: B's span");
        assert_eq!(b.trace_id(), a.trace_id(), "{path}: one trace");
        assert_eq!(b.parent_id(), a.span_id(), "{path}: B's parent is A");
        let in_trace = self
            .otlp
            .iter()
            .filter(|s| s.trace_id() == a.trace_id())
            .count();
        assert_eq!(in_trace, 2, "{path}: the trace holds only these two spans");

        let seen: Vec<&Seen> = self.seen.iter().filter(|s| s.path == path).collect();
        assert_eq!(seen.len(), 1, "{path} reached the backend once");
        Pair {
            a,
            b,
            seen: seen[0],
        }
    }

    /// The Zipkin span with OTLP span `s`'s id.
    fn zipkin(&self, s: &OtlpSpan) -> &Json {
        let id = s.span_id();
        let found: Vec<&Json> = self.zipkin.iter().filter(|z| z["id"] == id).collect();
        assert_eq!(found.len(), 1, "zipkin span {id}");
        found[0]
    }
}

// ---------------------------------------------------------------------------
// Checks

/// What a request's spans should say about it.
struct Expect<'a> {
    path: &'a str,
    version: &'a str,
    status: i64,
    server_address: &'a str,
    server_port: u16,
    user_agent: &'a str,
}

/// HTTP semantic-convention attributes and resources of both spans.
fn check_attributes(c: &Collected, p: &Pair, want: &Expect) {
    for (who, s, service) in [("A", p.a, "frontend"), ("B", p.b, "backend")] {
        let path = want.path;
        assert_eq!(s.service(), Some(service), "{path} {who}");
        assert_eq!(
            str_attr(&s.resource, "telemetry.distro.name"),
            Some("l7inspect"),
            "{path} {who}"
        );
        assert_eq!(s.span.name, "GET", "{path} {who}");
        assert_eq!(
            s.str_attr("http.request.method"),
            Some("GET"),
            "{path} {who}"
        );
        assert_eq!(s.str_attr("url.path"), Some(path), "{path} {who}");
        assert_eq!(
            s.str_attr("server.address"),
            Some(want.server_address),
            "{path} {who}"
        );
        assert_eq!(
            s.int_attr("server.port"),
            Some(i64::from(want.server_port)),
            "{path} {who}"
        );
        assert_eq!(
            s.str_attr("network.peer.address"),
            Some("127.0.0.1"),
            "{path} {who}"
        );
        assert_eq!(
            s.int_attr("http.response.status_code"),
            Some(want.status),
            "{path} {who}"
        );
        assert_eq!(
            s.str_attr("network.protocol.version"),
            Some(want.version),
            "{path} {who}"
        );
        assert_eq!(
            s.str_attr("user_agent.original"),
            Some(want.user_agent),
            "{path} {who}"
        );
        assert!(
            s.span.end_time_unix_nano >= s.span.start_time_unix_nano,
            "{path} {who}"
        );
    }
    // A's peer is B's listener; B's is A's upstream socket.
    assert_eq!(
        p.a.int_attr("network.peer.port"),
        Some(i64::from(c.b_port)),
        "{}",
        want.path
    );
    assert_eq!(
        p.b.str_attr("client.address"),
        Some("127.0.0.1"),
        "{}",
        want.path
    );
}

/// The Zipkin copies of both spans: kinds, ids, linking, service names.
/// (The collector checked each against the official spec: field names, id
/// formats, string tags, `duration` at least 1.)
fn check_zipkin(c: &Collected, p: &Pair, a_parent: Option<&str>) {
    let za = c.zipkin(p.a);
    let zb = c.zipkin(p.b);
    for (z, s, kind, service) in [
        (za, p.a, "CLIENT", "frontend"),
        (zb, p.b, "SERVER", "backend"),
    ] {
        assert_eq!(z["traceId"], s.trace_id(), "{z}");
        assert_eq!(z["kind"], kind, "{z}");
        assert_eq!(z["name"], "GET", "{z}");
        assert_eq!(z["localEndpoint"]["serviceName"], service, "{z}");
        assert_eq!(z["tags"]["http.request.method"], "GET", "{z}");
    }
    assert_eq!(zb["parentId"], za["id"], "B's parent is A");
    assert_eq!(za.get("parentId").and_then(Json::as_str), a_parent, "{za}");
}

/// A W3C `traceparent` value split into (trace id, parent id, flags).
fn traceparent(seen: &Seen) -> (String, String, String) {
    let tp = seen
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("{}: no traceparent: {:?}", seen.path, seen.headers))
        .to_str()
        .unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The backend got B's SERVER span as its parent, as `traceparent`.
fn check_backend_w3c(p: &Pair, flags: &str) {
    let (trace, parent, got_flags) = traceparent(p.seen);
    assert_eq!(trace, p.b.trace_id(), "{}", p.seen.path);
    assert_eq!(parent, p.b.span_id(), "{}: parent is B's span", p.seen.path);
    assert_eq!(got_flags, flags, "{}", p.seen.path);
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    let mut all = seen.headers.get_all(name).iter();
    let one = all.next()?.to_str().unwrap();
    assert!(all.next().is_none(), "{}: repeated {name}", seen.path);
    Some(one)
}

fn assert_absent(seen: &Seen, names: &[&str]) {
    for name in names {
        assert!(
            header(seen, name).is_none(),
            "{}: unexpected {name} in {:?}",
            seen.path,
            seen.headers
        );
    }
}

// ---------------------------------------------------------------------------
// Clients

/// Sends one HTTP/1.1 GET with `Connection: close`, `Host: shop.test:8080`,
/// a fixed `User-Agent` and `headers`; returns the response status.
async fn raw_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {RAW_HOST}:{RAW_PORT}\r\nUser-Agent: {RAW_UA}\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let resp = timeout(GENEROUS, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        resp
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} hung"));
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    status.unwrap_or_else(|| panic!("GET {path}: bad response {text:?}"))
}

/// Whether `tool` runs; if not, prints `SKIPPED <test>: ...` (saying which
/// `part` of the test is skipped) and returns false, or panics when
/// `L7INSPECT_REQUIRE_TOOLS=1` (as in CI).
fn have_tool(test: &str, tool: &str, part: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let reason = format!("{tool} not found; skipping {part}");
        l7inspect_test_support::skip(test, l7inspect_test_support::Need::Tools, reason);
    }
    ok
}

/// Runs curl on `http://{addr}{path}` with `args`; returns the status.
async fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> u16 {
    let out = timeout(
        GENEROUS,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("http://{addr}{path}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {path}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().parse().unwrap()
}

fn curl_version() -> String {
    let out = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap();
    format!("curl/{version}")
}

// ---------------------------------------------------------------------------
// Tests: one trace per request, through both OTLP protocols and Zipkin

/// Requests with no incoming context from the raw client and from curl:
/// A starts a trace, B continues it, the backend gets B's span as parent;
/// OTLP and Zipkin agree.
async fn chain_traces_each_request(test: &str, protocol: OtlpProtocol) {
    let chain = Chain::start(protocol, SamplerConfig::default()).await;
    let entry = chain.entry();
    let mut paths = vec!["/raw/1", "/raw/2"];
    for path in &paths {
        assert_eq!(raw_get(entry, path, &[]).await, 200);
    }
    let curl_ok = have_tool(test, "curl", "the curl requests");
    if curl_ok {
        assert_eq!(curl(entry, "/curl", &["--http1.1"]).await, 200);
        paths.push("/curl");
    }
    let c = chain.finish().await;

    assert_eq!(c.otlp.len(), 2 * paths.len(), "{:#?}", c.otlp);
    assert_eq!(c.zipkin.len(), 2 * paths.len(), "{:#?}", c.zipkin);
    let mut traces: Vec<String> = c.otlp.iter().map(OtlpSpan::trace_id).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), paths.len(), "one trace per request");

    for path in &paths {
        let p = c.pair(path);
        assert!(p.a.parent_id().is_empty(), "{path}: A's span is the root");
        check_backend_w3c(&p, "01");
        // No context came in, so the first listed format (tracecontext) is
        // the only one injected.
        assert_absent(p.seen, &["b3", "x-b3-traceid", "uber-trace-id"]);
        check_zipkin(&c, &p, None);
        assert_eq!(p.seen.version, http::Version::HTTP_11);
    }
    for path in ["/raw/1", "/raw/2"] {
        let p = c.pair(path);
        let want = Expect {
            path,
            version: "1.1",
            status: 200,
            server_address: RAW_HOST,
            server_port: RAW_PORT,
            user_agent: RAW_UA,
        };
        check_attributes(&c, &p, &want);
    }
    if curl_ok {
        let p = c.pair("/curl");
        let ua = curl_version();
        let want = Expect {
            path: "/curl",
            version: "1.1",
            status: 200,
            // curl names A's listener in Host; both sidecars keep it.
            server_address: "127.0.0.1",
            server_port: c.a_port,
            user_agent: &ua,
        };
        check_attributes(&c, &p, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_otlp_http_protobuf_and_zipkin() {
    chain_traces_each_request(
        "chain_otlp_http_protobuf_and_zipkin",
        OtlpProtocol::HttpProtobuf,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_otlp_grpc_and_zipkin() {
    chain_traces_each_request("chain_otlp_grpc_and_zipkin", OtlpProtocol::Grpc).await;
}

/// Spans arrive while the sidecars run, within the batch delay, not only
/// on the flush at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_without_shutdown() {
    let chain = Chain::start(OtlpProtocol::HttpProtobuf, SamplerConfig::default()).await;
    assert_eq!(raw_get(chain.entry(), "/live", &[]).await, 200);
    let rx = &chain.receivers;
    let arrived = eventually(|| async {
        rx.otlp_spans(Receiver::OtlpHttp).len() == 2 && rx.zipkin_spans().len() == 2
    })
    .await;
    assert!(arrived, "spans were not exported while running");
    let c = chain.finish().await;
    c.pair("/live");
}

// ---------------------------------------------------------------------------
// Tests: incoming context

/// The client's context in each format becomes A's parent, and each hop
/// forwards the new context in the format it arrived in, and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_context_is_honoured_in_its_own_format() {
    let chain = Chain::start(OtlpProtocol::HttpProtobuf, SamplerConfig::default()).await;
    let entry = chain.entry();
    let traceparent_in = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let b3_in = format!("{TRACE_B3}-{CLIENT_SPAN}-1");
    let uber_in = format!("{TRACE64}:{CLIENT_SPAN}:0:1");
    let requests: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "/w3c",
            vec![
                ("traceparent", &traceparent_in),
                ("tracestate", "vendor=opaque"),
                ("baggage", "user=42"),
            ],
        ),
        ("/b3", vec![("b3", &b3_in)]),
        (
            "/b3multi",
            vec![
                ("X-B3-TraceId", TRACE_B3MULTI),
                ("X-B3-SpanId", CLIENT_SPAN),
                ("X-B3-Sampled", "1"),
            ],
        ),
        ("/jaeger", vec![("uber-trace-id", &uber_in)]),
    ];
    for (path, headers) in &requests {
        assert_eq!(raw_get(entry, path, headers).await, 200, "{path}");
    }
    let c = chain.finish().await;
    assert_eq!(c.otlp.len(), 8);

    // W3C: the trace continues, tracestate and baggage pass.
    let p = c.pair("/w3c");
    assert_eq!(p.a.trace_id(), TRACE);
    assert_eq!(p.a.parent_id(), CLIENT_SPAN, "A's parent is the client");
    check_backend_w3c(&p, "01");
    assert_eq!(header(p.seen, "tracestate"), Some("vendor=opaque"));
    assert_eq!(header(p.seen, "baggage"), Some("user=42"));
    assert_absent(p.seen, &["b3", "x-b3-traceid", "uber-trace-id"]);
    check_zipkin(&c, &p, Some(CLIENT_SPAN));

    // B3 single.
    let p = c.pair("/b3");
    assert_eq!(p.a.trace_id(), TRACE_B3);
    assert_eq!(p.a.parent_id(), CLIENT_SPAN);
    assert_eq!(
        header(p.seen, "b3"),
        Some(format!("{TRACE_B3}-{}-1", p.b.span_id()).as_str())
    );
    assert_absent(p.seen, &["traceparent", "x-b3-traceid", "uber-trace-id"]);

    // B3 multi.
    let p = c.pair("/b3multi");
    assert_eq!(p.a.trace_id(), TRACE_B3MULTI);
    assert_eq!(p.a.parent_id(), CLIENT_SPAN);
    assert_eq!(header(p.seen, "x-b3-traceid"), Some(TRACE_B3MULTI));
    assert_eq!(header(p.seen, "x-b3-spanid"), Some(p.b.span_id().as_str()));
    assert_eq!(header(p.seen, "x-b3-sampled"), Some("1"));
    assert_absent(p.seen, &["traceparent", "b3", "uber-trace-id"]);

    // Jaeger, with a 64-bit trace id: it goes out in 16 hex digits again.
    let p = c.pair("/jaeger");
    assert_eq!(p.a.trace_id(), format!("{:0>32}", TRACE64));
    assert_eq!(p.a.parent_id(), CLIENT_SPAN);
    assert_eq!(
        header(p.seen, "uber-trace-id"),
        Some(format!("{TRACE64}:{}:0:1", p.b.span_id()).as_str())
    );
    assert_absent(p.seen, &["traceparent", "b3", "x-b3-traceid"]);
}

// ---------------------------------------------------------------------------
// Tests: HTTP/2, errors, sampling

/// curl --http2-prior-knowledge: h2c end to end, traced like HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_traced() {
    let test = "http2_prior_knowledge_is_traced";
    if !have_tool(test, "curl", "the whole test") {
        return;
    }
    let chain = Chain::start(OtlpProtocol::Grpc, SamplerConfig::default()).await;
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let tp_header = format!("traceparent: {tp}");
    let status = curl(
        chain.entry(),
        "/h2",
        &["--http2-prior-knowledge", "-H", &tp_header],
    )
    .await;
    assert_eq!(status, 200);
    let c = chain.finish().await;
    assert_eq!(c.otlp.len(), 2);
    let p = c.pair("/h2");
    assert_eq!(p.seen.version, http::Version::HTTP_2);
    assert_eq!(p.a.trace_id(), TRACE);
    assert_eq!(p.a.parent_id(), CLIENT_SPAN);
    check_backend_w3c(&p, "01");
    let ua = curl_version();
    let want = Expect {
        path: "/h2",
        version: "2",
        status: 200,
        // :authority, as curl sent it.
        server_address: "127.0.0.1",
        server_port: c.a_port,
        user_agent: &ua,
    };
    check_attributes(&c, &p, &want);
    check_zipkin(&c, &p, Some(CLIENT_SPAN));
}

/// A 500 from the application is an error on the SERVER span (5xx) and on
/// the CLIENT span (4xx and 5xx), in OTLP and in Zipkin; the client still
/// gets the 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_500_is_an_error_on_both_spans() {
    let chain = Chain::start(OtlpProtocol::HttpProtobuf, SamplerConfig::default()).await;
    assert_eq!(raw_get(chain.entry(), "/status/500", &[]).await, 500);
    assert_eq!(raw_get(chain.entry(), "/status/404", &[]).await, 404);
    let c = chain.finish().await;

    let p = c.pair("/status/500");
    for (who, s) in [("A", p.a), ("B", p.b)] {
        assert!(s.is_error(), "{who}: {:?}", s.span.status);
        assert_eq!(s.int_attr("http.response.status_code"), Some(500), "{who}");
        assert_eq!(s.str_attr("error.type"), Some("500"), "{who}");
        let tags = &c.zipkin(s)["tags"];
        assert_eq!(tags["otel.status_code"], "ERROR", "{who}");
        assert!(tags.get("error").is_some(), "{who}: {tags}");
    }
    // 404: an error for the client, not for the server.
    let p = c.pair("/status/404");
    assert!(p.a.is_error(), "{:?}", p.a.span.status);
    assert!(!p.b.is_error(), "{:?}", p.b.span.status);
}

/// A samples no roots (parentbased_traceidratio, ratio 0): a sampled
/// incoming parent is still followed by both sidecars, an unsampled one is
/// followed too (nothing exported), and requests succeed either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_incoming_parent() {
    let chain = Chain::start(
        OtlpProtocol::HttpProtobuf,
        SamplerConfig::ParentBasedTraceIdRatio(0.0),
    )
    .await;
    let entry = chain.entry();
    let sampled = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    assert_eq!(
        raw_get(entry, "/sampled", &[("traceparent", &sampled)]).await,
        200
    );
    assert_eq!(
        raw_get(entry, "/unsampled", &[("traceparent", &unsampled)]).await,
        200
    );
    assert_eq!(raw_get(entry, "/root", &[]).await, 200);
    let c = chain.finish().await;

    // Only the sampled request's two spans were exported.
    assert_eq!(c.otlp.len(), 2, "{:#?}", c.otlp);
    assert_eq!(c.zipkin.len(), 2, "{:#?}", c.zipkin);
    let p = c.pair("/sampled");
    assert_eq!(p.a.trace_id(), TRACE);
    assert_eq!(p.a.parent_id(), CLIENT_SPAN);
    check_backend_w3c(&p, "01");

    // The unsampled decision travels on to the application.
    for (path, trace) in [("/unsampled", Some(unsampled_trace)), ("/root", None)] {
        let seen: Vec<&Seen> = c.seen.iter().filter(|s| s.path == path).collect();
        assert_eq!(seen.len(), 1, "{path}");
        let (got_trace, parent, flags) = traceparent(seen[0]);
        assert_eq!(flags, "00", "{path}");
        if let Some(trace) = trace {
            assert_eq!(got_trace, trace, "{path}");
        }
        assert_ne!(parent, CLIENT_SPAN, "{path}: B injected its own span id");
    }
}

// ---------------------------------------------------------------------------
// Tests: dead collectors

/// `l7inspect_spans_dropped_total{reason}` by reason, from the encoded
/// registry.
fn dropped(sidecar: &Running) -> Vec<(String, f64)> {
    sidecar
        .metrics()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("l7inspect_spans_dropped_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A collector with nothing listening, or one that accepts and never
/// answers, over either OTLP protocol: 200 requests all succeed (the
/// timeout only fires on a hang) and spans are counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_collectors_never_block_requests() {
    let (backend, seen) = backend().await;
    // Bound but not listening: connects are refused, and no other test can
    // take the port while the socket lives.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = refusing.local_addr().unwrap();
    let silent = silent_server().await;
    let cases = [
        ("grpc, nothing listening", closed, OtlpProtocol::Grpc),
        ("grpc, never answers", silent, OtlpProtocol::Grpc),
        (
            "http/protobuf, nothing listening",
            closed,
            OtlpProtocol::HttpProtobuf,
        ),
        (
            "http/protobuf, never answers",
            silent,
            OtlpProtocol::HttpProtobuf,
        ),
    ];
    for (name, collector, protocol) in cases {
        let endpoint = match protocol {
            OtlpProtocol::Grpc => format!("http://{collector}"),
            OtlpProtocol::HttpProtobuf => format!("http://{collector}/v1/traces"),
        };
        let mut otlp = OtlpConfig::new(endpoint, protocol);
        otlp.timeout = Duration::from_millis(500);
        let mut config = forward_config(backend);
        config.tracing = tracing_config(
            "dead-collector",
            ExportConfig {
                otlp: Some(otlp),
                batch_delay: Duration::from_millis(100),
                ..ExportConfig::default()
            },
            SamplerConfig::default(),
        );
        let mut sidecar = start(config).await;
        let entry = sidecar.inbound();
        let before = seen.lock().unwrap().len();

        // 10 clients, 20 requests each.
        timeout(GENEROUS, async {
            let mut clients = tokio::task::JoinSet::new();
            for client in 0..10 {
                clients.spawn(async move {
                    for i in 0..20 {
                        let path = format!("/dead/{client}/{i}");
                        assert_eq!(raw_get(entry, &path, &[]).await, 200, "{path}");
                    }
                });
            }
            while let Some(r) = clients.join_next().await {
                r.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: requests hung behind a dead collector"));
        assert_eq!(seen.lock().unwrap().len() - before, 200, "{name}");

        // Every reason is a series; failed exports are counted while the
        // sidecar runs.
        let reasons: Vec<String> = dropped(&sidecar).into_iter().map(|(r, _)| r).collect();
        assert_eq!(
            reasons,
            ["queue_full", "export_failed", "shutdown"],
            "{name}"
        );
        let export_failed = || {
            dropped(&sidecar)
                .iter()
                .find(|(r, _)| r == "export_failed")
                .map_or(0.0, |(_, v)| *v)
        };
        let rose = eventually(|| async { export_failed() > 0.0 }).await;
        assert!(
            rose,
            "{name}: no span counted as export_failed:\n{}",
            sidecar.metrics()
        );
        // After shutdown (which gives export a deadline), every span is
        // accounted for: none exported, all 200 dropped for some reason.
        sidecar.shutdown();
        timeout(GENEROUS, &mut sidecar.handle)
            .await
            .unwrap_or_else(|_| panic!("{name}: shutdown hung"))
            .unwrap();
        let total: f64 = dropped(&sidecar).iter().map(|(_, v)| v).sum();
        assert_eq!(total, 200.0, "{name}:\n{}", sidecar.metrics());
        assert_eq!(
            sidecar.metric("l7inspect_spans_exported_total{exporter=\"otlp\"}"),
            Some(0.0),
            "{name}"
        );
    }
}
