use super::*;
use crate::export::RecentSpans;
use crate::span::{DbFields, HttpFields, RpcFields, SpanRecord};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A request span: `kind`, `path`, `status`, in trace `trace`.
fn span(
    trace: u128,
    id: u64,
    parent: u64,
    kind: SpanKind,
    path: &str,
    status: u16,
) -> Arc<SpanRecord> {
    let start =
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(id);
    let mut s = SpanRecord::new(TraceId::from(trace), SpanId::from(id), kind, "GET", start);
    s.end = start + Duration::from_micros(1500);
    s.parent_span_id = SpanId::from(parent);
    s.http = Some(HttpFields {
        method: "GET",
        path: path.into(),
        server_address: "shop".into(),
        server_port: 8080,
        protocol_version: "1.1",
        response_status_code: Some(status),
        ..HttpFields::default()
    });
    if status >= 500 {
        s.set_error(status.to_string());
    }
    Arc::new(s)
}

fn ring() -> RecentSpans {
    let ring = RecentSpans::new(100);
    let front: Arc<str> = "front".into();
    let back: Arc<str> = "back".into();
    ring.push(&front, span(1, 1, 0, SpanKind::Server, "/checkout", 200));
    ring.push(&front, span(1, 2, 1, SpanKind::Client, "/stock", 503));
    ring.push(&back, span(1, 3, 2, SpanKind::Server, "/stock", 503));
    let mut grpc = (*span(2, 4, 0, SpanKind::Server, "/shop.Cart/Add", 200)).clone();
    grpc.http.as_mut().unwrap().protocol_version = "2";
    grpc.rpc = Some(RpcFields {
        system: "grpc",
        service: "shop.Cart".into(),
        method: "Add".into(),
        grpc_status_code: Some(0),
    });
    ring.push(&back, Arc::new(grpc));
    ring
}

async fn get(inspect: &Inspect, path: &str, query: Option<&str>) -> (StatusCode, Value) {
    let resp = inspect.respond(&Method::GET, path, query).expect("ours");
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["span_id"]
                .as_str()
                .unwrap()
                .trim_start_matches('0')
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn spans_newest_first_with_filters() {
    let inspect = Inspect::new(ring());
    let (status, all) = get(&inspect, "/api/spans", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), ["4", "3", "2", "1"]);
    for (query, want) in [
        ("limit=2", &["4", "3"][..]),
        ("direction=outbound", &["2"]),
        ("direction=inbound&service=back", &["4", "3"]),
        ("protocol=grpc", &["4"]),
        ("protocol=http1", &["3", "2", "1"]),
        ("status=5xx", &["3", "2"]),
        ("status=error", &["3", "2"]),
        ("status=2xx", &["4", "1"]),
        ("method=GET&path=stock", &["3", "2"]),
        ("authority=shop", &["4", "3", "2", "1"]),
        ("authority=shop:8080&path=%2Fcheckout", &["1"]),
        ("authority=shop:9090", &[]),
        ("method=POST", &[]),
    ] {
        let (_, got) = get(&inspect, "/api/spans", Some(query)).await;
        assert_eq!(ids(&got), want, "{query}");
    }
}

#[tokio::test]
async fn a_span_as_json() {
    let inspect = Inspect::new(ring());
    let (_, list) = get(&inspect, "/api/spans", Some("direction=outbound")).await;
    let s = &list[0];
    assert_eq!(s["trace_id"], "00000000000000000000000000000001");
    assert_eq!(s["span_id"], "0000000000000002");
    assert_eq!(s["parent_span_id"], "0000000000000001");
    assert_eq!(s["service"], "front");
    assert_eq!(s["kind"], "client");
    assert_eq!(s["name"], "GET");
    assert_eq!(s["start_unix_us"], 1_700_000_000_002_000_u64);
    assert_eq!(s["duration_us"], 1500);
    assert_eq!(s["status"], "error");
    assert_eq!(s["direction"], "outbound");
    assert_eq!(s["protocol"], "http1");
    assert_eq!(s["method"], "GET");
    assert_eq!(s["authority"], "shop:8080");
    assert_eq!(s["path"], "/stock");
    assert_eq!(s["http_status"], 503);
    assert_eq!(s["grpc_status"], Value::Null);
    assert_eq!(s["attributes"]["url.path"], "/stock");
    assert_eq!(s["attributes"]["http.response.status_code"], 503);
    assert_eq!(s["attributes"]["error.type"], "503");
    let (_, root) = get(&inspect, "/api/spans", Some("protocol=grpc")).await;
    assert_eq!(root[0]["parent_span_id"], Value::Null);
    assert_eq!(root[0]["grpc_status"], 0);
    assert_eq!(root[0]["protocol"], "grpc");
}

#[tokio::test]
async fn one_trace_oldest_first() {
    let inspect = Inspect::new(ring());
    let (status, trace) = get(
        &inspect,
        "/api/traces/00000000000000000000000000000001",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&trace), ["1", "2", "3"]);
    let (status, err) = get(
        &inspect,
        "/api/traces/000000000000000000000000000000ff",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].as_str().unwrap().contains("no span of trace"));
    let (status, err) = get(&inspect, "/api/traces/xyz", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("not a trace id"),
        "{err}"
    );
}

#[tokio::test]
async fn database_commands_have_their_protocol_and_authority() {
    let ring = ring();
    // A Redis command of the checkout (trace 1), failed, and a PostgreSQL
    // query in a trace of its own.
    let front: Arc<str> = "front".into();
    for (trace, id, parent, system, operation, address, port, code) in [
        (
            1,
            5,
            1,
            "redis",
            "LPUSH",
            "10.0.0.7",
            6379,
            Some("WRONGTYPE"),
        ),
        (3, 6, 0, "postgresql", "SELECT", "10.0.0.7", 5432, None),
        (4, 7, 0, "mysql", "SELECT", "fd00::7", 3306, None),
    ] {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001);
        let mut s = SpanRecord::new(
            TraceId::from(trace),
            SpanId::from(id),
            SpanKind::Client,
            operation,
            start,
        );
        s.end = start + Duration::from_micros(250);
        s.parent_span_id = SpanId::from(parent);
        s.db = Some(Box::new(DbFields {
            system,
            operation,
            namespace: None,
            collection: None,
            query_text: None,
            status_code: code.map(Into::into),
            returned_rows: None,
            server_address: address.into(),
            server_port: port,
        }));
        if let Some(code) = code {
            s.set_error(code);
        }
        ring.push(&front, Arc::new(s));
    }
    let inspect = Inspect::new(ring);
    for (query, want) in [
        ("protocol=redis", &["5"][..]),
        ("protocol=postgresql", &["6"]),
        ("protocol=mysql", &["7"]),
        ("authority=fd00::7", &["7"]),
        ("authority=%5Bfd00::7%5D:3306", &["7"]),
        ("authority=fd00::7:3306", &[]),
        ("protocol=http1", &["3", "2", "1"]),
        ("authority=10.0.0.7", &["6", "5"]),
        ("authority=10.0.0.7:5432", &["6"]),
        ("authority=10.0.0.7:543", &[]),
        ("direction=outbound&status=error", &["5", "2"]),
        ("method=LPUSH", &[]),
        ("path=%2F", &["4", "3", "2", "1"]),
    ] {
        let (_, got) = get(&inspect, "/api/spans", Some(query)).await;
        assert_eq!(ids(&got), want, "{query}");
    }
    let (_, list) = get(&inspect, "/api/spans", Some("protocol=redis")).await;
    let s = &list[0];
    assert_eq!(s["protocol"], "redis");
    assert_eq!(s["authority"], "10.0.0.7:6379");
    assert_eq!(s["name"], "LPUSH");
    assert_eq!(s["method"], Value::Null);
    assert_eq!(s["path"], Value::Null);
    assert_eq!(s["status"], "error");
    assert_eq!(s["attributes"]["db.system.name"], "redis");
    assert_eq!(s["attributes"]["db.response.status_code"], "WRONGTYPE");
    let (_, list) = get(&inspect, "/api/spans", Some("protocol=mysql")).await;
    assert_eq!(list[0]["authority"], "[fd00::7]:3306");
    // In its trace, under the request that made it.
    let (_, trace) = get(
        &inspect,
        "/api/traces/00000000000000000000000000000001",
        None,
    )
    .await;
    assert_eq!(ids(&trace), ["1", "2", "3", "5"]);
    let (_, err) = get(&inspect, "/api/spans", Some("protocol=memcached")).await;
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("http1, h2, grpc, redis, postgresql or mysql"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_requests_are_named() {
    let inspect = Inspect::new(ring());
    let (status, err) = get(&inspect, "/api/spans", Some("direction=up")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("direction"),
        "{err}"
    );
    let (status, _) = get(&inspect, "/api/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = inspect.respond(&Method::POST, "/api/spans", None).unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert!(inspect.respond(&Method::GET, "/metrics", None).is_none());
    assert!(inspect.respond(&Method::GET, "/apis", None).is_none());
}

#[tokio::test]
async fn the_page_is_self_contained() {
    let inspect = Inspect::new(ring());
    let resp = inspect.respond(&Method::GET, "/", None).unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let page = std::str::from_utf8(&body).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);
    // Nothing from another origin: no URL with a scheme or a protocol-relative one.
    for needle in ["http://", "https://", "src=\"//", "href=\"//"] {
        assert!(!page.contains(needle), "the page refers to {needle}");
    }
    for api in ["/api/spans", "/api/traces/", "/metrics"] {
        assert!(page.contains(api), "the page does not use {api}");
    }
}

#[tokio::test]
async fn tap_streams_new_matching_spans() {
    let ring = ring();
    let inspect = Inspect::new(ring.clone());
    let resp = inspect
        .respond(&Method::GET, "/api/tap", Some("status=5xx"))
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut next = async || {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("a frame within the hang guard")
            .unwrap()
            .unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    };
    assert_eq!(next().await, ": tap started\n\n");
    // Spans already in the ring are not sent; new ones that match are, in
    // order; others are not.
    let svc: Arc<str> = "front".into();
    ring.push(&svc, span(9, 10, 0, SpanKind::Server, "/ok", 200));
    ring.push(&svc, span(9, 11, 0, SpanKind::Server, "/broken", 500));
    ring.push(&svc, span(9, 12, 0, SpanKind::Server, "/gone", 502));
    for want in ["/broken", "/gone"] {
        let event = next().await;
        let line = event
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["path"], want);
    }
}
