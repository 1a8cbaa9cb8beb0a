//! How a request becomes a span name, attributes and metric labels, from
//! any request head (method, target, version, headers) and any attribute
//! limit:
//! - `RequestClass` never panics; with a limit, every string it gives
//!   (path, query, method, host, user agent, gRPC names) is at most the
//!   limit long and a prefix of the unlimited one (cut, never changed),
//!   and the span name at most twice the limit plus one;
//! - its facts are consistent: `_OTHER` exactly for an unknown method, a
//!   version of the four, a gRPC call only with a gRPC content type, with
//!   a non-empty service and method;
//! - through `Observe` (the middleware the proxy runs): the recorded
//!   span's string attributes taken from the request are at most the
//!   limit long, and the Prometheus text of the request histograms parses,
//!   with label values no longer than the limit.
#![no_main]

use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Method, Request, Response, Uri, Version};
use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig};
use l7inspect_trace::observe::is_grpc;
use l7inspect_trace::{ObserveConfig, Observer, Peer, RequestClass, RequestMetrics};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::SpanKind;
use tower::{Layer, Service, service_fn};

const LIMITS: [usize; 6] = [0, 1, 3, 16, 64, 2048];
const KNOWN: [&str; 11] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    "_OTHER",
];

/// A request from a raw HTTP/1 request head, read as hyper reads one
/// (httparse, then the `http` crate's method, target and header types),
/// with `version` in place of the head's; `None` for what hyper would
/// refuse before any middleware sees it.
fn request(head: &[u8], version: Version) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(head).ok()?;
    let mut req = Request::builder()
        .method(Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(parsed.path?).ok()?)
        .version(version);
    for h in parsed.headers.iter() {
        req = req.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    req.body(()).ok()
}

fn check_class(req: &Request<()>, limit: usize) {
    let full = RequestClass::of(req);
    let class = full.with_limit(limit);
    let cut = |short: &str, long: &str, what: &str| {
        assert!(short.len() <= limit, "{what} {short:?} over {limit}");
        assert!(
            long.starts_with(short),
            "{what} {short:?} not a prefix of {long:?}"
        );
    };
    cut(class.path(), full.path(), "path");
    cut(class.method_original(), full.method_original(), "method");
    if let (Some(q), Some(fq)) = (class.query(), full.query()) {
        cut(q, fq, "query");
    }
    assert_eq!(class.query().is_some(), full.query().is_some());
    if let (Some(ua), Some(fua)) = (class.user_agent(), full.user_agent()) {
        cut(ua, fua, "user agent");
    }
    if let (Some((host, port)), Some((fhost, fport))) = (class.server, full.server) {
        cut(host, fhost, "host");
        assert_eq!(port, fport);
    }
    assert_eq!(class.server.is_some(), full.server.is_some());
    assert_eq!(class.grpc.is_some(), full.grpc.is_some());
    if let (Some(call), Some(fcall)) = (class.grpc, full.grpc) {
        assert!(is_grpc(req.headers()));
        assert!(!fcall.service.is_empty() && !fcall.method.is_empty());
        assert!(!fcall.method.contains('/'));
        cut(call.service, fcall.service, "rpc.service");
        cut(call.method, fcall.method, "rpc.method");
    }
    assert!(
        class.span_name().len() <= limit.saturating_mul(2).saturating_add(1)
            || class.grpc.is_none()
    );
    assert_eq!(
        class.method == "_OTHER",
        !class.method_known,
        "{}",
        class.method
    );
    assert!(KNOWN.contains(&class.method));
    assert!(["1.0", "1.1", "2", "3"].contains(&class.version));
    if class.grpc.is_none() {
        let name = class.span_name();
        assert!(name == "HTTP" || KNOWN.contains(&&*name), "{name}");
    }
}

/// The attributes a span takes from the request (the rest come from the
/// connection or the response).
const FROM_REQUEST: [&str; 8] = [
    "url.path",
    "url.query",
    "url.scheme",
    "server.address",
    "user_agent.original",
    "http.request.method_original",
    "rpc.service",
    "rpc.method",
];

fn check_observed(req: Request<()>, limit: usize, kind: SpanKind) {
    let pipeline = ExportPipeline::start(
        ExportConfig {
            recent_capacity: 1,
            ..ExportConfig::default()
        },
        ResourceConfig::default().to_resource("fuzz", "0"),
    )
    .expect("no exporter: no runtime needed");
    let metrics = RequestMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let config = ObserveConfig {
        max_attribute_len: limit,
        record_query: true,
        ..ObserveConfig::new(kind)
    };
    let observer = Observer::new(config, pipeline.sink(), Some(metrics));
    let peer = Peer {
        client: "10.0.0.1:50000".parse().unwrap(),
        server: "10.0.0.2:8080".parse().unwrap(),
    };
    let mut svc = observer
        .layer(peer)
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
    let mut fut = std::pin::pin!(svc.call(req));
    let Poll::Ready(Ok(response)) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("the inner service answers at once");
    };
    drop(response);

    for span in pipeline.recent().snapshot() {
        assert!(
            span.name.len() <= limit.saturating_mul(2).saturating_add(1) || span.name.len() <= 7,
            "{:?}",
            span.name
        );
        span.for_each_attribute(|key, value| {
            let l7inspect_trace::span::AttrValue::Str(s) = value else {
                return;
            };
            // The connection's own values, when the request names none.
            let own = match key {
                "server.address" => s == "10.0.0.2",
                "url.scheme" => s == "http" || s == "https",
                _ => false,
            };
            if FROM_REQUEST.contains(&key) && !own {
                assert!(s.len() <= limit, "{key} = {s:?} over {limit}");
            }
        });
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        check_sample(line, limit);
    }
}

/// One sample line of the Prometheus text format: `name{k="v",...} value`,
/// label values escaped (`\\`, `\"`, `\n`) and at most `limit` long
/// (unescaped), or a fixed value (`_OTHER`, a method, a version).
fn check_sample(line: &str, limit: usize) {
    let mut rest = line;
    let name_end = rest.find(['{', ' ']).unwrap_or_else(|| panic!("{line}"));
    rest = &rest[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        rest = labels;
        loop {
            let eq = rest.find("=\"").unwrap_or_else(|| panic!("{line}"));
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line}"),
                }
            };
            assert!(
                value.len() <= limit.max(16),
                "label value {value:?} over {limit} in {line}"
            );
            rest = &rest[end + 1..];
            match rest.as_bytes().first() {
                Some(b',') => rest = &rest[1..],
                Some(b'}') => {
                    rest = &rest[1..];
                    break;
                }
                _ => panic!("{line}"),
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
    assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
}

// The input: one byte of settings (the limit, the span kind, the
// version), then a raw request head.
fuzz_target!(|data: &[u8]| {
    let Some((&settings, head)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(settings) % LIMITS.len()];
    let kind = if settings & 0x08 != 0 {
        SpanKind::Client
    } else {
        SpanKind::Server
    };
    let version = [
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ][usize::from(settings >> 4) % 4];
    let Some(req) = request(head, version) else {
        return;
    };
    check_class(&req, limit);
    check_class(&req, usize::MAX);
    check_observed(req, limit, kind);
});
