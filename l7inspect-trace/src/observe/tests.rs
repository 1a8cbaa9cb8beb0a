//! The observation layer: spans and histograms from one classification.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry::{
    Value,
    trace::{SpanId, SpanKind, Status, TraceId},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::{
    export::{ExportConfig, ExportPipeline, RecentSpans, ResourceConfig},
    infer::{InFlight, InferStats},
    span::SpanRecord,
};

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

struct Harness {
    recent: RecentSpans,
    metrics: RequestMetrics,
    observer: Observer,
    _pipeline: ExportPipeline,
}

fn harness(kind: SpanKind) -> Harness {
    harness_with(kind, SamplerConfig::ParentBasedAlwaysOn)
}

fn harness_with(kind: SpanKind, sampler: SamplerConfig) -> Harness {
    let pipeline = ExportPipeline::start(
        ExportConfig::default(),
        ResourceConfig::default().to_resource("test", "0"),
    )
    .unwrap();
    let metrics = RequestMetrics::default();
    let observer = Observer::new(
        ObserveConfig {
            sampler,
            ..ObserveConfig::new(kind)
        },
        pipeline.sink(),
        Some(metrics.clone()),
    );
    Harness {
        recent: pipeline.recent(),
        metrics,
        observer,
        _pipeline: pipeline,
    }
}

impl Harness {
    fn spans(&self) -> Vec<Arc<SpanRecord>> {
        self.recent.snapshot()
    }

    /// The histograms as `/metrics` shows them.
    fn metrics_text(&self) -> String {
        let mut registry = Registry::default();
        self.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// The `_sum` of the one series of histogram `name` (its only
    /// observation's value, in seconds), with the series' labels.
    fn only_observation(&self, name: &str) -> (String, f64) {
        let text = self.metrics_text();
        let sums: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_seconds_sum")))
            .collect();
        assert_eq!(sums.len(), 1, "{text}");
        let count = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}_seconds_count")))
            .unwrap();
        assert!(count.ends_with(" 1"), "{count}");
        let (series, value) = sums[0].rsplit_once(' ').unwrap();
        (series.to_owned(), value.parse().unwrap())
    }
}

fn peer() -> Peer {
    Peer {
        client: "10.0.0.9:40000".parse().unwrap(),
        server: "10.0.0.5:8080".parse().unwrap(),
    }
}

fn attr(span: &SpanRecord, key: &str) -> Option<Value> {
    span.attribute(key)
}

fn s(v: &str) -> Option<Value> {
    Some(Value::from(v.to_owned()))
}

/// Calls an observed service answering `status`, `headers` and a 5-byte
/// body; returns the headers of the request it forwarded.
async fn call(
    h: &Harness,
    req: Request<Full<Bytes>>,
    status: u16,
    resp_headers: &[(&'static str, &'static str)],
    read_body: bool,
) -> HeaderMap {
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen2 = seen.clone();
    let resp_headers: Vec<_> = resp_headers.to_vec();
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        *seen2.lock().unwrap() = req.headers().clone();
        let mut resp = Response::builder().status(status);
        for (k, v) in &resp_headers {
            resp = resp.header(*k, *v);
        }
        async move { Ok::<_, Infallible>(resp.body(Full::new(Bytes::from_static(b"hello"))).unwrap()) }
    });
    let svc = h.observer.layer(peer()).layer(inner);
    let resp = svc.oneshot(req).await.unwrap();
    if read_body {
        resp.into_body().collect().await.unwrap();
    }
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn server_span_continues_the_w3c_trace_and_injects_itself() {
    let h = harness(SpanKind::Server);
    let req = Request::get("/orders/7?secret=1")
        .header("host", "shop.example:8080")
        .header("user-agent", "curl/8")
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .body(Full::default())
        .unwrap();
    let forwarded = call(&h, req, 200, &[], true).await;
    let spans = h.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.trace_id, TraceId::from_hex(PARENT_TRACE).unwrap());
    assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT_SPAN).unwrap());
    assert!(span.parent_is_remote);
    assert_eq!(span.status, Status::Unset);
    assert_eq!(attr(span, semconv::HTTP_REQUEST_METHOD), s("GET"));
    assert_eq!(attr(span, semconv::URL_PATH), s("/orders/7"));
    assert_eq!(attr(span, semconv::URL_SCHEME), s("http"));
    assert_eq!(
        attr(span, semconv::URL_QUERY),
        None,
        "queries are off by default"
    );
    assert_eq!(attr(span, semconv::SERVER_ADDRESS), s("shop.example"));
    assert_eq!(attr(span, semconv::SERVER_PORT), Some(Value::I64(8080)));
    assert_eq!(attr(span, semconv::CLIENT_ADDRESS), s("10.0.0.9"));
    assert_eq!(attr(span, semconv::NETWORK_PEER_ADDRESS), s("10.0.0.9"));
    assert_eq!(
        attr(span, semconv::NETWORK_PEER_PORT),
        Some(Value::I64(40000))
    );
    assert_eq!(attr(span, semconv::NETWORK_PROTOCOL_VERSION), s("1.1"));
    assert_eq!(attr(span, semconv::USER_AGENT_ORIGINAL), s("curl/8"));
    assert_eq!(
        attr(span, semconv::HTTP_RESPONSE_STATUS_CODE),
        Some(Value::I64(200))
    );
    assert_eq!(
        attr(span, semconv::HTTP_RESPONSE_BODY_SIZE),
        Some(Value::I64(5))
    );
    // The forwarded request carries the new span as its parent.
    let tp = forwarded.get("traceparent").unwrap().to_str().unwrap();
    assert_eq!(tp, format!("00-{PARENT_TRACE}-{}-01", span.span_id));
}

#[tokio::test]
async fn client_span_names_the_target_when_the_request_does_not() {
    let h = harness(SpanKind::Client);
    let req = Request::get("/").body(Full::default()).unwrap();
    call(&h, req, 200, &[], true).await;
    let span = &h.spans()[0];
    assert_eq!(attr(span, semconv::SERVER_ADDRESS), s("10.0.0.5"));
    assert_eq!(attr(span, semconv::SERVER_PORT), Some(Value::I64(8080)));
    // A CLIENT span's network peer is the server; no client.address.
    assert_eq!(attr(span, semconv::NETWORK_PEER_ADDRESS), s("10.0.0.5"));
    assert_eq!(attr(span, semconv::CLIENT_ADDRESS), None);
    assert_eq!(span.parent_span_id, SpanId::INVALID);
    let (series, _) = h.only_observation("http_client_request_duration");
    assert!(
        series.contains(r#"server_address="",server_port="8080""#),
        "{series}"
    );
}

#[tokio::test]
async fn error_status_depends_on_kind() {
    for (kind, status, error) in [
        (SpanKind::Server, 404, false),
        (SpanKind::Server, 503, true),
        (SpanKind::Client, 404, true),
        (SpanKind::Client, 302, false),
    ] {
        let h = harness(kind.clone());
        let req = Request::get("/").body(Full::default()).unwrap();
        call(&h, req, status, &[], true).await;
        let span = &h.spans()[0];
        assert_eq!(
            matches!(span.status, Status::Error { .. }),
            error,
            "{kind:?} {status}"
        );
        assert_eq!(
            attr(span, semconv::ERROR_TYPE),
            error.then(|| Value::from(status.to_string())),
            "{kind:?} {status}"
        );
    }
}

/// A failing inner service (a tower layer inside: a timeout, say) is
/// recorded as the 502 the HTTP layer answers it with (gRPC: status 14),
/// in the span and in the histogram alike.
#[tokio::test]
async fn an_inner_error_is_recorded_as_the_proxys_answer() {
    for (content_type, status, grpc_status) in
        [(None, 502, None), (Some("application/grpc"), 200, Some(14))]
    {
        let h = harness(SpanKind::Server);
        let failing = service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(tower::BoxError::from("request timed out"))
        });
        let mut req = Request::post("/shop.Cart/Add");
        if let Some(ct) = content_type {
            req = req
                .header("content-type", ct)
                .version(http::Version::HTTP_2);
        }
        let svc = h.observer.layer(peer()).layer(failing);
        let Err(err) = svc.oneshot(req.body(Full::default()).unwrap()).await else {
            panic!("the error went missing");
        };
        assert_eq!(err.to_string(), "request timed out");
        let spans = h.spans();
        assert_eq!(spans.len(), 1, "{content_type:?}");
        let span = &spans[0];
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{content_type:?}"
        );
        assert_eq!(
            attr(span, semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(Value::I64(status))
        );
        assert_eq!(
            span.rpc.as_ref().and_then(|rpc| rpc.grpc_status_code),
            grpc_status
        );
        let text = h.metrics_text();
        let counted = match grpc_status {
            None => format!("http_response_status_code=\"{status}\""),
            Some(code) => format!("rpc_grpc_status_code=\"{code}\""),
        };
        assert!(
            text.lines()
                .any(|l| l.contains("_seconds_count") && l.contains(&counted) && l.ends_with(" 1")),
            "{counted}: {text}"
        );
    }
}

/// `b3: 0` without ids: the caller's deny wins over an always-on
/// sampler; `b3: 1` wins over a ratio of 0. Either way the forwarded
/// request says so, under the new root's ids.
#[tokio::test]
async fn a_b3_sampling_only_header_decides() {
    for (sampler, b3, recorded) in [
        (SamplerConfig::ParentBasedAlwaysOn, "0", false),
        (SamplerConfig::ParentBasedTraceIdRatio(0.0), "1", true),
    ] {
        let h = harness_with(SpanKind::Server, sampler);
        let req = Request::get("/")
            .header("b3", b3)
            .body(Full::default())
            .unwrap();
        let forwarded = call(&h, req, 200, &[], true).await;
        assert_eq!(h.spans().len(), usize::from(recorded), "b3: {b3}");
        let out = forwarded.get("b3").unwrap().to_str().unwrap();
        assert!(out.ends_with(&format!("-{b3}")), "b3: {b3} → {out}");
        // Sampled or not, the histogram counts the request.
        h.only_observation("http_server_request_duration");
    }
}

/// A B3 context without sampling state (the caller deferred): decided as
/// a new root would be, continuing the caller's trace, where following
/// the flags alone would read "not sampled" and drop the whole trace.
#[tokio::test]
async fn a_deferred_b3_context_is_sampled_as_a_root() {
    let h = harness(SpanKind::Server);
    let req = Request::get("/")
        .header("x-b3-traceid", PARENT_TRACE)
        .header("x-b3-spanid", PARENT_SPAN)
        .body(Full::default())
        .unwrap();
    let forwarded = call(&h, req, 200, &[], true).await;
    let spans = h.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].trace_id, TraceId::from_hex(PARENT_TRACE).unwrap());
    assert_eq!(
        spans[0].parent_span_id,
        SpanId::from_hex(PARENT_SPAN).unwrap()
    );
    assert_eq!(forwarded.get("x-b3-sampled").unwrap(), "1");
}

#[tokio::test]
async fn malformed_context_is_ignored_and_counted() {
    let h = harness(SpanKind::Server);
    let req = Request::get("/")
        .header("traceparent", "00-not-hex-01")
        .body(Full::default())
        .unwrap();
    let forwarded = call(&h, req, 200, &[], true).await;
    let span = &h.spans()[0];
    // A new root: no parent, a fresh valid traceparent forwarded.
    assert_eq!(span.parent_span_id, SpanId::INVALID);
    let tp = forwarded.get("traceparent").unwrap().to_str().unwrap();
    assert!(tp.starts_with("00-") && tp.contains(&span.span_id.to_string()));
    assert_eq!(h.observer.stats().malformed(Format::TraceContext), 1);
    assert_eq!(h.observer.stats().malformed(Format::B3), 0);
}

/// An unsampled request still propagates (a new span id, not sampled)
/// and still counts in the histogram, but records no span.
#[tokio::test]
async fn an_unsampled_request_propagates_and_counts() {
    let h = harness_with(SpanKind::Server, SamplerConfig::ParentBasedAlwaysOff);
    let req = Request::get("/").body(Full::default()).unwrap();
    let forwarded = call(&h, req, 200, &[], true).await;
    assert!(h.spans().is_empty());
    let tp = forwarded.get("traceparent").unwrap().to_str().unwrap();
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    h.only_observation("http_server_request_duration");
}

/// A WebSocket upgrade through `observer`: the service answers `101` with
/// `closed` in the response (the proxy's sign of a tunnel, cancelled when
/// it closes).
async fn websocket(
    observer: &Observer,
    closed: CancellationToken,
) -> Response<ObservedBody<Full<Bytes>>> {
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        let mut resp = Response::builder()
            .status(101)
            .body(Full::new(Bytes::new()))
            .unwrap();
        resp.extensions_mut().insert(closed.clone());
        async move { Ok::<_, Infallible>(resp) }
    });
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .body(Full::default())
        .unwrap();
    observer
        .layer(peer())
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap()
}

/// The span and the histogram end at the same instant: a WebSocket
/// tunnel's histogram entry lasts as long as its span, until the tunnel
/// closes (before, the histogram stopped at the 101).
#[tokio::test]
async fn a_tunnel_is_observed_until_it_closes_in_span_and_histogram() {
    let h = harness(SpanKind::Server);
    let closed = CancellationToken::new();
    let resp = websocket(&h.observer, closed.clone()).await;
    drop(resp);
    assert!(
        h.spans().is_empty(),
        "the span ended before the tunnel closed"
    );
    assert!(
        !h.metrics_text()
            .contains("http_server_request_duration_seconds_count"),
        "the histogram recorded before the tunnel closed"
    );
    // The tunnel stays open for a while.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    closed.cancel();
    let mut spans = Vec::new();
    for _ in 0..1000 {
        spans = h.spans();
        if !spans.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(
        attr(span, semconv::HTTP_RESPONSE_STATUS_CODE),
        Some(Value::I64(101))
    );
    let (series, seconds) = h.only_observation("http_server_request_duration");
    assert!(
        series.contains(r#"http_response_status_code="101""#),
        "{series}"
    );
    assert_eq!(seconds, span.duration().as_secs_f64());
    assert!(seconds >= 0.03, "{seconds}");
}

/// A QUERY request (RFC 9110's safe method with a body) is a known
/// method for both: `QUERY` in the span and in the histogram (the
/// histogram said `_OTHER` before).
#[tokio::test]
async fn query_is_a_known_method_for_span_and_histogram() {
    let h = harness(SpanKind::Server);
    let req = Request::builder()
        .method("QUERY")
        .uri("/search")
        .body(Full::default())
        .unwrap();
    call(&h, req, 200, &[], true).await;
    let span = &h.spans()[0];
    assert_eq!(span.name, "QUERY");
    assert_eq!(attr(span, semconv::HTTP_REQUEST_METHOD), s("QUERY"));
    assert_eq!(attr(span, semconv::HTTP_REQUEST_METHOD_ORIGINAL), None);
    let (series, seconds) = h.only_observation("http_server_request_duration");
    assert!(
        series.contains(r#"http_request_method="QUERY""#),
        "{series}"
    );
    assert_eq!(seconds, span.duration().as_secs_f64());
}

/// A gRPC content type with a path that is not `/Service/Method` is an
/// HTTP request for both (the histogram counted `/a/b/c` as an RPC of
/// service `a`, method `b/c`, before).
#[tokio::test]
async fn a_non_rpc_path_is_http_for_span_and_histogram() {
    let h = harness(SpanKind::Server);
    let req = Request::post("/a/b/c")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    call(&h, req, 200, &[("grpc-status", "0")], true).await;
    let span = &h.spans()[0];
    assert_eq!(span.name, "POST");
    assert!(span.rpc.is_none());
    assert_eq!(attr(span, "rpc.system"), None);
    let (series, _) = h.only_observation("http_server_request_duration");
    assert!(series.contains(r#"http_request_method="POST""#), "{series}");
    assert!(
        !h.metrics_text()
            .contains("rpc_server_duration_seconds_count")
    );
}

#[tokio::test]
async fn unknown_methods_are_other() {
    let h = harness(SpanKind::Client);
    let req = Request::builder()
        .method("PROPFIND")
        .uri("/dav/")
        .body(Full::default())
        .unwrap();
    call(&h, req, 207, &[], true).await;
    let span = &h.spans()[0];
    assert_eq!(span.name, "HTTP");
    assert_eq!(attr(span, semconv::HTTP_REQUEST_METHOD), s("_OTHER"));
    assert_eq!(
        attr(span, semconv::HTTP_REQUEST_METHOD_ORIGINAL),
        s("PROPFIND")
    );
    let (series, _) = h.only_observation("http_client_request_duration");
    assert!(
        series.contains(r#"http_request_method="_OTHER""#),
        "{series}"
    );
}

#[tokio::test]
async fn grpc_status_from_trailers_only_headers_and_cancellation() {
    let grpc_req = || {
        Request::post("/shop.Orders/Get")
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap()
    };
    let h = harness(SpanKind::Client);
    call(&h, grpc_req(), 200, &[("grpc-status", "14")], true).await;
    let span = &h.spans()[0];
    assert_eq!(span.name, "shop.Orders/Get");
    assert_eq!(attr(span, "rpc.system"), s("grpc"));
    assert_eq!(attr(span, "rpc.service"), s("shop.Orders"));
    assert_eq!(attr(span, "rpc.method"), s("Get"));
    assert_eq!(attr(span, "rpc.grpc.status_code"), Some(Value::I64(14)));
    assert!(matches!(span.status, Status::Error { .. }));
    let (series, seconds) = h.only_observation("rpc_client_duration");
    assert!(
        series.contains(r#"rpc_service="shop.Orders",rpc_method="Get",rpc_grpc_status_code="14""#),
        "{series}"
    );
    assert_eq!(seconds, span.duration().as_secs_f64());

    // The body is dropped before the status arrived: CANCELLED in both.
    let h = harness(SpanKind::Server);
    call(&h, grpc_req(), 200, &[], false).await;
    let span = &h.spans()[0];
    assert_eq!(attr(span, "rpc.grpc.status_code"), Some(Value::I64(1)));
    // CANCELLED is not an error on a SERVER span.
    assert_eq!(span.status, Status::Unset);
    let (series, _) = h.only_observation("rpc_server_duration");
    assert!(series.contains(r#"rpc_grpc_status_code="1""#), "{series}");
}

/// With no metrics, only spans; the observation works the same.
#[tokio::test]
async fn metrics_are_optional() {
    let pipeline = ExportPipeline::start(
        ExportConfig::default(),
        ResourceConfig::default().to_resource("test", "0"),
    )
    .unwrap();
    let observer = Observer::new(ObserveConfig::new(SpanKind::Server), pipeline.sink(), None);
    let inner = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
    });
    let resp = observer
        .layer(peer())
        .layer(inner)
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(pipeline.recent().len(), 1);
}

/// The requests of one connection share its last host and series, but a
/// request that differs gets its own: nothing of one request leaks into
/// the next.
#[tokio::test]
async fn one_connection_different_requests() {
    let h = harness(SpanKind::Client);
    let statuses = Arc::new(Mutex::new(vec![200u16, 404, 200]));
    let inner = {
        let statuses = statuses.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            let status = statuses.lock().unwrap().remove(0);
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"x")))
                        .unwrap(),
                )
            }
        })
    };
    let mut svc = h.observer.layer(peer()).layer(inner);
    for host in ["a.example", "b.example:81", "a.example"] {
        let req = Request::get("/")
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let spans = h.spans();
    let hosts: Vec<_> = spans
        .iter()
        .map(|s| {
            let http = s.http.as_ref().unwrap();
            (
                http.server_address.to_string(),
                http.server_port,
                http.response_status_code,
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            ("a.example".to_owned(), 8080, Some(200)),
            ("b.example".to_owned(), 81, Some(404)),
            ("a.example".to_owned(), 8080, Some(200)),
        ]
    );
    let text = h.metrics_text();
    let counts: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("http_client_request_duration_seconds_count"))
        .collect();
    assert_eq!(counts.len(), 2, "{text}");
    assert!(
        counts
            .iter()
            .any(|l| l.contains(r#"http_response_status_code="200""#)
                && l.contains(r#"server_address="a.example",server_port="8080""#)
                && l.ends_with(" 2")),
        "{text}"
    );
    assert!(
        counts
            .iter()
            .any(|l| l.contains(r#"http_response_status_code="404""#)
                && l.contains(r#"server_address="b.example",server_port="81""#)
                && l.ends_with(" 1")),
        "{text}"
    );
}

/// A response the proxy made for a failure carries a [`ResponseFailure`]:
/// its kind is `error.type` (not the status code) and its message the
/// status description and `l7inspect.error.message`; a client error (a
/// `400` for a malformed body) gets them too, without the Error status a
/// SERVER span keeps for 5xx.
#[tokio::test]
async fn a_proxy_failure_is_recorded_with_its_kind_and_message() {
    for (status, error_type, error) in [
        (502, "upstream_connect_failed", true),
        (400, "invalid_request_body", false),
    ] {
        let h = harness(SpanKind::Server);
        let inner = service_fn(move |_req: Request<Full<Bytes>>| async move {
            let resp = Response::builder()
                .status(status)
                .extension(ResponseFailure {
                    error_type: error_type.into(),
                    message: "connecting to 10.0.0.5:8080 failed: refused".into(),
                })
                .body(Full::new(Bytes::from_static(b"502 Bad Gateway")))
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
        let svc = h.observer.layer(peer()).layer(inner);
        let resp = svc
            .oneshot(Request::get("/").body(Full::default()).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        let span = &h.spans()[0];
        assert_eq!(attr(span, semconv::ERROR_TYPE), s(error_type));
        assert_eq!(
            attr(span, ERROR_MESSAGE_ATTRIBUTE),
            s("connecting to 10.0.0.5:8080 failed: refused")
        );
        let want = if error {
            Status::error("connecting to 10.0.0.5:8080 failed: refused")
        } else {
            Status::Unset
        };
        assert_eq!(span.status, want, "{status}");
    }
}

/// Calls `observer`'s observed service (answering 200 and a body) with
/// `req`, reading the response to its end; the headers it forwarded.
async fn call_observed(observer: &Observer, req: Request<Full<Bytes>>) -> HeaderMap {
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen2 = seen.clone();
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        *seen2.lock().unwrap() = req.headers().clone();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    });
    let resp = observer
        .layer(peer())
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    seen.lock().unwrap().clone()
}

/// An inbound request, observed and left in flight (its response not
/// read) until the returned response is dropped.
async fn inbound_in_flight(
    observer: &Observer,
    headers: &[(&str, &str)],
) -> Response<ObservedBody<Full<Bytes>>> {
    let inner = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
    });
    let mut req = Request::get("/checkout");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    observer
        .layer(peer())
        .layer(inner)
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap()
}

/// An inbound and an outbound observer of one workload, sharing what is in
/// flight: (inbound, outbound, their harnesses, the outcome counts).
fn workload(max_links: usize) -> (Observer, Observer, Harness, Harness, InferStats) {
    let inflight = InFlight::default();
    let stats = InferStats::default();
    let inbound = harness(SpanKind::Server);
    let outbound = harness(SpanKind::Client);
    let i = inbound
        .observer
        .clone()
        .with_inference(ParentInference::Register(inflight.clone()));
    let o = outbound
        .observer
        .clone()
        .with_inference(ParentInference::Infer {
            inflight,
            max_links,
            stats: stats.clone(),
        });
    (i, o, inbound, outbound, stats)
}

#[tokio::test]
async fn a_call_without_context_during_one_inbound_request_is_its_child() {
    use crate::infer::Outcome;
    let (inbound, outbound, hin, hout, stats) = workload(4);
    let request = inbound_in_flight(&inbound, &[]).await;
    let forwarded = call_observed(
        &outbound,
        Request::get("/stock").body(Full::default()).unwrap(),
    )
    .await;
    drop(request);
    let server = &hin.spans()[0];
    let client = &hout.spans()[0];
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    assert!(!client.parent_is_remote);
    assert_eq!(
        attr(client, crate::infer::PARENT_INFERRED),
        Some(Value::Bool(true))
    );
    assert!(client.links.is_empty());
    // The next service continues the same trace.
    let traceparent = forwarded["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", server.trace_id, client.span_id)
    );
    assert_eq!(stats.get(Outcome::inferred), 1);
    // Once the inbound request is over, a call is a root again.
    call_observed(
        &outbound,
        Request::get("/later").body(Full::default()).unwrap(),
    )
    .await;
    let later = hout
        .spans()
        .into_iter()
        .find(|s| s.http.as_ref().unwrap().path == "/later")
        .unwrap();
    assert_ne!(later.trace_id, server.trace_id);
    assert_eq!(later.parent_span_id, SpanId::INVALID);
    assert_eq!(attr(&later, crate::infer::PARENT_INFERRED), None);
    assert_eq!(stats.get(Outcome::none), 1);
}

#[tokio::test]
async fn an_open_websocket_is_no_request_in_flight() {
    use crate::infer::Outcome;
    let (inbound, outbound, _hin, hout, stats) = workload(4);
    let closed = CancellationToken::new();
    let ws = websocket(&inbound, closed.clone()).await;
    // The tunnel is open; one request comes, and makes a call.
    let request = inbound_in_flight(&inbound, &[]).await;
    call_observed(
        &outbound,
        Request::get("/stock").body(Full::default()).unwrap(),
    )
    .await;
    let client = &hout.spans()[0];
    assert_eq!(
        attr(client, crate::infer::PARENT_INFERRED),
        Some(Value::Bool(true)),
        "the request's child, not ambiguous with the WebSocket"
    );
    assert_eq!(stats.get(Outcome::inferred), 1);
    drop(request);
    // With only the WebSocket open, a call has no parent to infer.
    call_observed(
        &outbound,
        Request::get("/background").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(stats.get(Outcome::none), 1);
    closed.cancel();
    drop(ws);
}

#[tokio::test]
async fn a_call_during_two_inbound_requests_is_a_root_with_links() {
    use crate::infer::Outcome;
    let (inbound, outbound, hin, hout, stats) = workload(1);
    let a = inbound_in_flight(&inbound, &[]).await;
    let b = inbound_in_flight(&inbound, &[]).await;
    call_observed(
        &outbound,
        Request::get("/stock").body(Full::default()).unwrap(),
    )
    .await;
    drop((a, b));
    let servers = hin.spans();
    let client = &hout.spans()[0];
    assert_eq!(client.parent_span_id, SpanId::INVALID);
    assert!(servers.iter().all(|s| s.trace_id != client.trace_id));
    assert_eq!(attr(client, crate::infer::PARENT_INFERRED), None);
    // Bounded at one link, to one of the two.
    assert_eq!(client.links.len(), 1);
    assert!(servers.iter().any(|s| s.span_id == client.links[0].span_id
        && s.trace_id == client.links[0].trace_id));
    assert_eq!(stats.get(Outcome::ambiguous), 1);
}

#[tokio::test]
async fn a_call_that_carries_context_is_never_changed() {
    use crate::infer::Outcome;
    let (inbound, outbound, _hin, hout, stats) = workload(4);
    let request = inbound_in_flight(&inbound, &[]).await;
    let req = Request::get("/stock")
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .body(Full::default())
        .unwrap();
    call_observed(&outbound, req).await;
    drop(request);
    let client = &hout.spans()[0];
    assert_eq!(client.trace_id, TraceId::from_hex(PARENT_TRACE).unwrap());
    assert_eq!(
        client.parent_span_id,
        SpanId::from_hex(PARENT_SPAN).unwrap()
    );
    assert_eq!(attr(client, crate::infer::PARENT_INFERRED), None);
    assert_eq!(stats.get(Outcome::context), 1);
    assert_eq!(stats.get(Outcome::inferred), 0);
}

#[tokio::test]
async fn sampling_follows_an_inferred_parent() {
    let (inbound, outbound, hin, hout, _stats) = workload(4);
    // The inbound request arrived unsampled (its caller decided).
    let request = inbound_in_flight(
        &inbound,
        &[(
            "traceparent",
            &format!("00-{PARENT_TRACE}-{PARENT_SPAN}-00"),
        )],
    )
    .await;
    let forwarded = call_observed(
        &outbound,
        Request::get("/stock").body(Full::default()).unwrap(),
    )
    .await;
    drop(request);
    assert!(
        hin.spans().is_empty() && hout.spans().is_empty(),
        "not sampled"
    );
    let traceparent = forwarded["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{PARENT_TRACE}-")),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-00"), "{traceparent}");
}
