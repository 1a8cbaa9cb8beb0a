//! Export pipeline against real receivers on 127.0.0.1: the test-support
//! crate's collector (OTLP/gRPC through tonic and opentelemetry-proto's
//! TraceService, OTLP/HTTP with the protobuf body decoded by
//! opentelemetry-proto, Zipkin v2 JSON checked against the official spec),
//! and dead collectors (nothing listening; accepts and never answers).
//!
//! Spans are [`SpanRecord`]s handed to the pipeline's [`SpanSink`], as the
//! proxy's span sources do.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use l7inspect_test_support::collector::{Collector, Receiver::*, int_attr, str_attr};
use l7inspect_test_support::{closed_port, silent_server};
use l7inspect_trace::export::{
    Compression, DropReason, ExportConfig, ExportPipeline, ExporterKind, FlushOutcome, OtlpConfig,
    OtlpProtocol, ResourceConfig, SpanSink, ZipkinConfig,
};
use l7inspect_trace::span::{HttpFields, NetworkFields, SpanRecord};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanId, SpanKind, TraceFlags, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as ProtoStatusCode;
use tokio::time::timeout;

/// Only fires on a bug (a hang); never a timing assertion.
const GENEROUS: Duration = Duration::from_secs(60);
const SERVICE: &str = "svc-under-test";

// ---------------------------------------------------------------------------
// Spans

fn resource() -> opentelemetry_sdk::Resource {
    ResourceConfig {
        service_name: SERVICE.into(),
        attributes: vec![("deployment.environment.name".into(), "test".into())],
    }
    .to_resource("l7inspect", env!("CARGO_PKG_VERSION"))
}

fn start(config: ExportConfig) -> (ExportPipeline, SpanSink) {
    let pipeline = ExportPipeline::start(config, resource()).unwrap();
    let sink = pipeline.sink();
    (pipeline, sink)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh trace id, with hex letters in both halves (so the Zipkin check
/// has letters to find in lower case).
fn new_trace_id() -> TraceId {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    TraceId::from(0xabcd_ef01_0000_0000_fedc_ba98_0000_0000_u128 | u128::from(n))
}

/// A fresh span id, with hex letters.
fn new_span_id() -> SpanId {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    SpanId::from(0xfeed_0000_0000_0000_u64 | n)
}

/// The ids of a SERVER span and its CLIENT child.
struct Pair {
    trace_id: TraceId,
    server: SpanId,
    client: SpanId,
}

/// The inbound request's client.
const CLIENT_IP: &str = "10.1.2.3";
const CLIENT_PORT: u16 = 51234;

/// Records a SERVER span "GET" with a CLIENT child "GET /upstream", like an
/// inbound request proxied outbound: `GET /checkout` from 10.1.2.3 for
/// `shop.example`, forwarded to `backend` (127.0.0.1:8080), which answered
/// 404. The 404 is passed back: an error for the CLIENT span (`error.type`
/// 404), not for the SERVER span (the semantic conventions' rule for 4xx).
/// The child ends first and is recorded first, as the proxy does.
fn server_and_client(sink: &SpanSink) -> Pair {
    let trace_id = new_trace_id();
    let mut server = SpanRecord::new(
        trace_id,
        new_span_id(),
        SpanKind::Server,
        "GET",
        SystemTime::now(),
    );
    let client_ip: IpAddr = CLIENT_IP.parse().unwrap();
    server.network = Some(Arc::new(NetworkFields::new(
        SocketAddr::new(client_ip, CLIENT_PORT),
        Some(client_ip),
    )));
    server.http = Some(HttpFields {
        method: "GET",
        path: "/checkout".into(),
        scheme: "http".into(),
        server_address: "shop.example".into(),
        server_port: 80,
        protocol_version: "1.1",
        user_agent: Some("curl/8.5.0".into()),
        response_status_code: Some(404),
        response_body_size: Some(9),
        ..HttpFields::default()
    });
    server
        .attributes
        .push(KeyValue::new("l7inspect.listener", "inbound"));

    let mut client = SpanRecord::new(
        trace_id,
        new_span_id(),
        SpanKind::Client,
        "GET /upstream",
        // Never before its parent, even if the wall clock steps back.
        SystemTime::now().max(server.start),
    );
    client.parent_span_id = server.span_id;
    client.network = Some(Arc::new(NetworkFields::new(
        "127.0.0.1:8080".parse().unwrap(),
        None,
    )));
    client.http = Some(HttpFields {
        method: "GET",
        path: "/upstream".into(),
        scheme: "http".into(),
        server_address: "backend".into(),
        server_port: 8080,
        protocol_version: "1.1",
        response_status_code: Some(404),
        response_body_size: Some(9),
        ..HttpFields::default()
    });
    client.set_error("404");
    client
        .attributes
        .push(KeyValue::new("l7inspect.attempt", 1_i64));

    let pair = Pair {
        trace_id,
        server: server.span_id,
        client: client.span_id,
    };
    client.end = SystemTime::now().max(client.start);
    let client_end = client.end;
    sink.record(client);
    server.end = SystemTime::now().max(client_end);
    sink.record(server);
    pair
}

// ---------------------------------------------------------------------------
// OTLP checks

fn check_otlp(req: &ExportTraceServiceRequest, pair: &Pair) {
    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let res = rs.resource.as_ref().expect("resource");
    assert_eq!(str_attr(&res.attributes, "service.name"), Some(SERVICE));
    assert_eq!(
        str_attr(&res.attributes, "telemetry.distro.name"),
        Some("l7inspect")
    );
    assert_eq!(
        str_attr(&res.attributes, "telemetry.distro.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        str_attr(&res.attributes, "deployment.environment.name"),
        Some("test")
    );
    // Every span is under the scope `l7inspect`, this crate's version.
    for ss in &rs.scope_spans {
        let scope = ss.scope.as_ref().expect("scope");
        assert_eq!(scope.name, "l7inspect");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    }
    let spans: Vec<&ProtoSpan> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
    assert_eq!(spans.len(), 2);
    let find = |id: SpanId| {
        *spans
            .iter()
            .find(|s| s.span_id == id.to_bytes())
            .expect("span by id")
    };
    let server = find(pair.server);
    let client = find(pair.client);
    let trace_id = pair.trace_id.to_bytes().to_vec();
    assert_eq!(server.trace_id, trace_id);
    assert_eq!(client.trace_id, trace_id);

    assert_eq!(server.name, "GET");
    assert_eq!(server.kind, ProtoSpanKind::Server as i32);
    assert!(server.parent_span_id.is_empty(), "root span has no parent");
    assert_eq!(
        str_attr(&server.attributes, "http.request.method"),
        Some("GET")
    );
    assert_eq!(str_attr(&server.attributes, "url.path"), Some("/checkout"));
    assert_eq!(
        int_attr(&server.attributes, "http.response.status_code"),
        Some(404)
    );
    assert_eq!(
        str_attr(&server.attributes, "client.address"),
        Some(CLIENT_IP)
    );
    assert_eq!(
        int_attr(&server.attributes, "network.peer.port"),
        Some(CLIENT_PORT.into())
    );
    assert_eq!(
        str_attr(&server.attributes, "l7inspect.listener"),
        Some("inbound")
    );
    // A 4xx is not an error for a SERVER span: status unset.
    let status = server.status.as_ref().expect("status");
    assert_eq!(status.code, ProtoStatusCode::Unset as i32);
    assert_eq!(str_attr(&server.attributes, "error.type"), None);
    // The span model has no events or links.
    assert!(server.events.is_empty());
    assert!(server.links.is_empty());

    assert_eq!(client.name, "GET /upstream");
    assert_eq!(client.kind, ProtoSpanKind::Client as i32);
    assert_eq!(client.parent_span_id, pair.server.to_bytes().to_vec());
    assert_eq!(
        str_attr(&client.attributes, "server.address"),
        Some("backend")
    );
    assert_eq!(int_attr(&client.attributes, "server.port"), Some(8080));
    assert_eq!(
        str_attr(&client.attributes, "network.peer.address"),
        Some("127.0.0.1")
    );
    assert_eq!(
        int_attr(&client.attributes, "network.peer.port"),
        Some(8080)
    );
    assert_eq!(int_attr(&client.attributes, "l7inspect.attempt"), Some(1));
    assert_eq!(str_attr(&client.attributes, "error.type"), Some("404"));
    let status = client.status.as_ref().expect("status");
    assert_eq!(status.code, ProtoStatusCode::Error as i32);
    // Both sampled (W3C flags in the low byte).
    assert_eq!(server.flags & 0xff, 1);
    assert_eq!(client.flags & 0xff, 1);
    assert!(client.end_time_unix_nano >= client.start_time_unix_nano);
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(server.end_time_unix_nano >= client.end_time_unix_nano);
}

// ---------------------------------------------------------------------------
// Tests: delivery

#[tokio::test]
async fn otlp_grpc_delivers_spans_with_headers_and_gzip() {
    let collector = Collector::start();
    let mut otlp = OtlpConfig::new(collector.endpoint(OtlpGrpc), OtlpProtocol::Grpc);
    otlp.headers = vec![("x-api-key".into(), "secret".into())];
    otlp.compression = Some(Compression::Gzip);
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(otlp),
        ..ExportConfig::default()
    });

    // An unsampled span is ignored: not exported, not counted, not kept.
    let mut unsampled = root_span("unsampled".into());
    unsampled.trace_flags = TraceFlags::default();
    sink.record(unsampled);
    let pair = server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);

    let got = collector.wait_requests(OtlpGrpc, 1).await;
    assert_eq!(got[0].headers["x-api-key"], "secret");
    assert_eq!(got[0].headers["grpc-encoding"], "gzip");
    check_otlp(&collector.otlp_exports(OtlpGrpc)[0], &pair);

    let stats = pipeline.stats();
    assert_eq!(stats.exported(ExporterKind::Otlp), 2);
    assert_eq!(stats.exported(ExporterKind::Zipkin), 0);
    for reason in DropReason::ALL {
        assert_eq!(stats.dropped(reason), 0, "{reason:?}");
    }
    // The export task put the two spans it took in the ring before the
    // flush answered.
    let recent: Vec<SpanId> = pipeline
        .recent()
        .snapshot()
        .iter()
        .map(|s| s.span_id)
        .collect();
    assert_eq!(recent, [pair.client, pair.server]);
    assert_eq!(
        pipeline.shutdown(Duration::from_secs(5)).await,
        FlushOutcome::Complete
    );
}

#[tokio::test]
async fn otlp_http_protobuf_delivers_spans() {
    let collector = Collector::start();
    let mut otlp = OtlpConfig::new(collector.endpoint(OtlpHttp), OtlpProtocol::HttpProtobuf);
    otlp.headers = vec![("x-api-key".into(), "secret".into())];
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(otlp),
        ..ExportConfig::default()
    });

    let pair = server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);

    let got = &collector.wait_requests(OtlpHttp, 1).await[0];
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.path, "/v1/traces");
    assert_eq!(got.headers["content-type"], "application/x-protobuf");
    assert_eq!(got.headers["x-api-key"], "secret");
    assert!(got.headers.get("content-encoding").is_none());
    check_otlp(&collector.otlp_exports(OtlpHttp)[0], &pair);
    assert_eq!(pipeline.stats().exported(ExporterKind::Otlp), 2);
}

#[tokio::test]
async fn otlp_http_protobuf_gzip() {
    let collector = Collector::start();
    let mut otlp = OtlpConfig::new(collector.endpoint(OtlpHttp), OtlpProtocol::HttpProtobuf);
    otlp.compression = Some(Compression::Gzip);
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(otlp),
        ..ExportConfig::default()
    });

    let pair = server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);

    let got = &collector.wait_requests(OtlpHttp, 1).await[0];
    assert_eq!(got.headers["content-type"], "application/x-protobuf");
    assert_eq!(got.headers["content-encoding"], "gzip");
    // The body as sent is gzip, not protobuf; the collector decoded it.
    assert_eq!(&got.body[..2], [0x1f, 0x8b]);
    check_otlp(&collector.otlp_exports(OtlpHttp)[0], &pair);
    assert_eq!(pipeline.stats().exported(ExporterKind::Otlp), 2);
}

#[tokio::test]
async fn otlp_http_error_status_is_a_failed_export() {
    let collector = Collector::start();
    collector.answer_with(OtlpHttp, http::StatusCode::SERVICE_UNAVAILABLE);
    let otlp = OtlpConfig::new(collector.endpoint(OtlpHttp), OtlpProtocol::HttpProtobuf);
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(otlp),
        ..ExportConfig::default()
    });
    server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    collector.wait_requests(OtlpHttp, 1).await;
    let stats = pipeline.stats();
    assert_eq!(stats.exported(ExporterKind::Otlp), 0);
    assert_eq!(stats.dropped(DropReason::ExportFailed), 2);
}

/// A gRPC status other than OK fails the export (and counts its spans as
/// `export_failed`); the next export, on the same connection, succeeds.
#[tokio::test]
async fn otlp_grpc_non_ok_status_is_a_failed_export() {
    let collector = Collector::start();
    collector.fail_next(OtlpGrpc, 1);
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(OtlpConfig::new(
            collector.endpoint(OtlpGrpc),
            OtlpProtocol::Grpc,
        )),
        ..ExportConfig::default()
    });
    let stats = pipeline.stats();

    server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    collector.wait_requests(OtlpGrpc, 1).await;
    assert_eq!(stats.exported(ExporterKind::Otlp), 0);
    assert_eq!(stats.dropped(DropReason::ExportFailed), 2);

    let pair = server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    collector.wait_requests(OtlpGrpc, 2).await;
    // The failed call's spans were not kept: the one export is the second.
    check_otlp(&collector.otlp_exports(OtlpGrpc)[0], &pair);
    assert_eq!(stats.exported(ExporterKind::Otlp), 2);
    assert_eq!(stats.dropped(DropReason::ExportFailed), 2);
    assert_eq!(
        collector.connections(OtlpGrpc),
        1,
        "one connection for both exports"
    );
}

/// After an export times out on a connection that never answers, the next
/// export dials a new connection instead of queueing behind the stuck one.
#[tokio::test]
async fn otlp_grpc_reconnects_after_a_timeout() {
    let collector = Collector::start();
    // The first connection is accepted and never read from.
    collector.stall_next_connection(OtlpGrpc);
    let mut otlp = OtlpConfig::new(collector.endpoint(OtlpGrpc), OtlpProtocol::Grpc);
    otlp.timeout = Duration::from_millis(300);
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(otlp),
        ..ExportConfig::default()
    });
    let stats = pipeline.stats();

    server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    assert_eq!(stats.dropped(DropReason::ExportFailed), 2);

    let pair = server_and_client(&sink);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    collector.wait_requests(OtlpGrpc, 1).await;
    check_otlp(&collector.otlp_exports(OtlpGrpc)[0], &pair);
    assert_eq!(stats.exported(ExporterKind::Otlp), 2);
    assert_eq!(collector.connections(OtlpGrpc), 2);
}

/// Field names, formats and meanings are those of Zipkin's v2 model: the
/// collector checks every POST against the official zipkin2-api.yaml (field
/// names, id formats, `duration` at least 1, string tags); this test checks
/// the values.
#[tokio::test]
async fn zipkin_v2_json_matches_the_model_alongside_otlp() {
    let collector = Collector::start();
    let before_us = micros_now();
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(OtlpConfig::new(
            collector.endpoint(OtlpGrpc),
            OtlpProtocol::Grpc,
        )),
        zipkin: Some(ZipkinConfig::new(collector.endpoint(Zipkin))),
        ..ExportConfig::default()
    });

    let pair = server_and_client(&sink);
    let after_us = micros_now();
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);

    let got = &collector.wait_requests(Zipkin, 1).await[0];
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.path, "/api/v2/spans");
    assert_eq!(got.headers["content-type"], "application/json");
    let spans = &collector.zipkin_batches()[0];
    assert_eq!(spans.len(), 2);

    for s in spans {
        // The trace id in its long form: the ids are 128-bit.
        assert_eq!(s["traceId"].as_str().unwrap().len(), 32, "{s}");
        // timestamp: epoch microseconds; duration: microseconds, at least 1.
        let ts = s["timestamp"].as_u64().unwrap();
        assert!(
            before_us <= ts && ts <= after_us,
            "{before_us} <= {ts} <= {after_us}"
        );
        // local_endpoint.service_name: the resource's service.name.
        assert_eq!(s["localEndpoint"]["serviceName"], SERVICE);
        // The instrumentation scope: always this crate.
        assert_eq!(s["tags"]["otel.scope.name"], "l7inspect");
        assert_eq!(s["tags"]["otel.scope.version"], env!("CARGO_PKG_VERSION"));
        // The span model has no events: no annotations.
        assert!(s.get("annotations").is_none(), "{s}");
    }
    let by_id = |id: SpanId| {
        spans
            .iter()
            .find(|s| s["id"] == id.to_string())
            .expect("span by id")
    };
    let server = by_id(pair.server);
    let client = by_id(pair.client);
    let trace_id = pair.trace_id.to_string();
    assert_eq!(server["traceId"], trace_id);
    assert_eq!(client["traceId"], trace_id);

    // The root: parent_id absent; remote_endpoint is the client it served
    // (network.peer.*), unnamed.
    assert_eq!(server["name"], "GET");
    assert_eq!(server["kind"], "SERVER");
    assert!(server.get("parentId").is_none(), "{server}");
    assert_eq!(server["tags"]["http.request.method"], "GET");
    assert_eq!(server["tags"]["http.response.status_code"], "404");
    assert_eq!(server["tags"]["url.path"], "/checkout");
    assert_eq!(server["tags"]["server.address"], "shop.example");
    assert_eq!(server["tags"]["client.address"], CLIENT_IP);
    assert_eq!(server["tags"]["network.peer.port"], CLIENT_PORT.to_string());
    assert_eq!(server["tags"]["user_agent.original"], "curl/8.5.0");
    assert_eq!(server["tags"]["l7inspect.listener"], "inbound");
    assert_eq!(
        server["remoteEndpoint"],
        serde_json::json!({ "ipv4": CLIENT_IP, "port": CLIENT_PORT })
    );
    // Status unset: no otel.status_code, no error.
    assert!(server["tags"].get("otel.status_code").is_none(), "{server}");
    assert!(server["tags"].get("error").is_none(), "{server}");
    assert!(server["tags"].get("error.type").is_none(), "{server}");

    // The child: parent_id is the SERVER span's id; remote_endpoint is the
    // server it called, named by server.address.
    assert_eq!(client["name"], "GET /upstream");
    assert_eq!(client["kind"], "CLIENT");
    assert_eq!(client["parentId"], pair.server.to_string());
    assert_eq!(client["tags"]["server.port"], "8080");
    assert_eq!(client["tags"]["l7inspect.attempt"], "1");
    assert_eq!(
        client["remoteEndpoint"],
        serde_json::json!({ "serviceName": "backend", "ipv4": "127.0.0.1", "port": 8080 })
    );
    // Error status: otel.status_code ERROR and `error` (the description,
    // empty here), beside error.type.
    assert_eq!(client["tags"]["otel.status_code"], "ERROR");
    assert_eq!(client["tags"]["error"], "");
    assert_eq!(client["tags"]["error.type"], "404");

    // The same batch went to OTLP too.
    collector.wait_requests(OtlpGrpc, 1).await;
    check_otlp(&collector.otlp_exports(OtlpGrpc)[0], &pair);
    let stats = pipeline.stats();
    assert_eq!(stats.exported(ExporterKind::Zipkin), 2);
    assert_eq!(stats.exported(ExporterKind::Otlp), 2);
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

// ---------------------------------------------------------------------------
// Tests: drops

/// A sampled root SERVER span that started and ended just now.
fn root_span(name: String) -> SpanRecord {
    let now = SystemTime::now();
    SpanRecord::new(new_trace_id(), new_span_id(), SpanKind::Server, name, now)
}

/// Records `n` root spans `{prefix}-{i}`; returns once every `record` has
/// returned.
fn record_spans(sink: &SpanSink, prefix: &str, n: usize) {
    for i in 0..n {
        sink.record(root_span(format!("{prefix}-{i}")));
    }
}

/// The names of the spans in the ring, oldest first.
fn ring_names(pipeline: &ExportPipeline) -> Vec<String> {
    pipeline
        .recent()
        .snapshot()
        .iter()
        .map(|s| s.name.to_string())
        .collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// A collector that is down or stalled never holds up `record`, and every
/// span is accounted for: exported or dropped for exactly one reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_collectors_never_block_and_count_drops() {
    const N: usize = 10_000;
    let closed = closed_port();
    let silent = silent_server().await;
    let short = Duration::from_millis(200);
    let otlp = |addr: SocketAddr, protocol| {
        let endpoint = match protocol {
            OtlpProtocol::Grpc => format!("http://{addr}"),
            OtlpProtocol::HttpProtobuf => format!("http://{addr}/v1/traces"),
        };
        let mut cfg = OtlpConfig::new(endpoint, protocol);
        cfg.timeout = short;
        ExportConfig {
            otlp: Some(cfg),
            ..ExportConfig::default()
        }
    };
    let zipkin = |addr: SocketAddr| ExportConfig {
        zipkin: Some(ZipkinConfig {
            timeout: short,
            ..ZipkinConfig::new(format!("http://{addr}/api/v2/spans"))
        }),
        ..ExportConfig::default()
    };
    let cases = [
        (
            "grpc, nothing listening",
            otlp(closed, OtlpProtocol::Grpc),
            ExporterKind::Otlp,
        ),
        (
            "grpc, never answers",
            otlp(silent, OtlpProtocol::Grpc),
            ExporterKind::Otlp,
        ),
        (
            "http/protobuf, nothing listening",
            otlp(closed, OtlpProtocol::HttpProtobuf),
            ExporterKind::Otlp,
        ),
        (
            "http/protobuf, never answers",
            otlp(silent, OtlpProtocol::HttpProtobuf),
            ExporterKind::Otlp,
        ),
        (
            "zipkin, nothing listening",
            zipkin(closed),
            ExporterKind::Zipkin,
        ),
        (
            "zipkin, never answers",
            zipkin(silent),
            ExporterKind::Zipkin,
        ),
    ];
    for (name, config, kind) in cases {
        let (pipeline, sink) = start(config);
        timeout(GENEROUS, async {
            record_spans(&sink, "span", N);
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: recording spans hung"));

        let stats = pipeline.stats();
        // Drops rise while the pipeline runs: at once for a full queue, or
        // as exports fail. Bounded wait, no timing assertion.
        timeout(GENEROUS, async {
            while stats.dropped(DropReason::QueueFull) + stats.dropped(DropReason::ExportFailed)
                == 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: no drop was counted"));

        timeout(GENEROUS, pipeline.shutdown(Duration::from_secs(2)))
            .await
            .unwrap_or_else(|_| panic!("{name}: shutdown hung"));
        let dropped: u64 = DropReason::ALL.iter().map(|r| stats.dropped(*r)).sum();
        assert_eq!(stats.exported(kind), 0, "{name}");
        assert_eq!(dropped, N as u64, "{name}: every span accounted for");
        assert!(stats.dropped(DropReason::ExportFailed) > 0, "{name}");
        // The ring keeps the most recent spans whatever the collector does.
        // (Queued spans reach it through the export task, dropped ones
        // through `record`; after shutdown every span has.)
        assert_eq!(pipeline.recent().len(), 1000, "{name}");
        drop(sink);
    }
}

/// On a current-thread runtime the export task cannot run while the test
/// records spans, so exactly `queue_size` spans are queued and the rest are
/// dropped as `queue_full`.
#[tokio::test(flavor = "current_thread")]
async fn full_queue_drops_and_counts() {
    let collector = Collector::start();
    let (pipeline, sink) = start(ExportConfig {
        zipkin: Some(ZipkinConfig::new(collector.endpoint(Zipkin))),
        queue_size: 4,
        max_batch: 4,
        batch_delay: Duration::from_secs(3600),
        recent_capacity: 10,
        ..ExportConfig::default()
    });

    record_spans(&sink, "span", 100);
    let stats = pipeline.stats();
    assert_eq!(stats.dropped(DropReason::QueueFull), 96);
    // Dropped spans still go to the ring, put there by `record` itself: it
    // holds the 10 most recent, oldest first. The 4 queued ones reach it
    // when the export task takes them, which it has not yet.
    assert_eq!(ring_names(&pipeline), names("span", 90..100));

    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    collector.wait_requests(Zipkin, 1).await;
    let batches = collector.zipkin_batches();
    let exported: Vec<&str> = batches[0]
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(exported, ["span-0", "span-1", "span-2", "span-3"]);
    assert_eq!(stats.exported(ExporterKind::Zipkin), 4);

    // The export task put the 4 it took in the ring after them: the ring is
    // in the order spans reached it, the 10 most recent of those.
    let mut want = names("span", 94..100);
    want.extend(names("span", 0..4));
    assert_eq!(ring_names(&pipeline), want);

    // After shutdown, recorded spans are dropped as `shutdown`, and still
    // go to the ring.
    assert_eq!(
        pipeline.shutdown(Duration::from_secs(5)).await,
        FlushOutcome::Complete
    );
    record_spans(&sink, "late", 3);
    assert_eq!(stats.dropped(DropReason::Shutdown), 3);
    assert_eq!(ring_names(&pipeline)[7..], names("late", 0..3));
    // A second shutdown returns at once.
    assert_eq!(
        pipeline.shutdown(Duration::from_secs(5)).await,
        FlushOutcome::Complete
    );
}

/// A partial batch is exported once its first span has waited
/// `batch_delay`, with no flush. (Real time, not paused: paused time would
/// auto-advance past the export timeout while the request is on the wire.)
#[tokio::test]
async fn partial_batch_goes_out_after_batch_delay() {
    let collector = Collector::start();
    let (pipeline, sink) = start(ExportConfig {
        zipkin: Some(ZipkinConfig::new(collector.endpoint(Zipkin))),
        batch_delay: Duration::from_millis(50),
        ..ExportConfig::default()
    });
    record_spans(&sink, "span", 3);
    collector.wait_requests(Zipkin, 1).await;
    assert_eq!(collector.zipkin_batches()[0].len(), 3);
    assert_eq!(
        pipeline.shutdown(Duration::from_secs(5)).await,
        FlushOutcome::Complete
    );
    assert_eq!(pipeline.stats().exported(ExporterKind::Zipkin), 3);
}

/// With no exporter there is no task and no runtime is needed: spans are
/// only kept in the ring, put there by `record`; unsampled spans are not
/// kept.
#[test]
fn without_exporters_spans_stay_in_memory() {
    let pipeline = ExportPipeline::start(ExportConfig::default(), resource()).unwrap();
    let sink = pipeline.sink();
    record_spans(&sink, "span", 4);
    // `record_shared` too: the same `Arc` is what the ring holds.
    let shared = Arc::new(root_span("span-4".into()));
    sink.record_shared(shared.clone());
    let recent = pipeline.recent().snapshot();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[4].name, "span-4");
    assert!(Arc::ptr_eq(&recent[4], &shared));
    let stats = pipeline.stats();
    for reason in DropReason::ALL {
        assert_eq!(stats.dropped(reason), 0);
    }

    // Unsampled: trace flags without SAMPLED.
    for i in 0..5 {
        let mut span = root_span(format!("off-{i}"));
        span.trace_flags = TraceFlags::default();
        sink.record(span);
    }
    assert_eq!(ring_names(&pipeline), names("span", 0..5));

    // Shutdown, off any runtime, returns at once (the first poll).
    let mut shutdown = std::pin::pin!(pipeline.shutdown(Duration::from_secs(5)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert_eq!(
        shutdown.as_mut().poll(&mut cx),
        std::task::Poll::Ready(FlushOutcome::Complete)
    );
}

#[test]
fn exporters_need_a_runtime_and_sane_sizes() {
    let with_otlp = ExportConfig {
        otlp: Some(OtlpConfig::new("http://127.0.0.1:4317", OtlpProtocol::Grpc)),
        ..ExportConfig::default()
    };
    let err = ExportPipeline::start(with_otlp, resource()).unwrap_err();
    assert!(
        matches!(err, l7inspect_trace::export::ExportBuildError::NoRuntime),
        "{err}"
    );
    let err = ExportPipeline::start(
        ExportConfig {
            queue_size: 0,
            ..ExportConfig::default()
        },
        resource(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid export configuration: queue_size must be at least 1"
    );
}
