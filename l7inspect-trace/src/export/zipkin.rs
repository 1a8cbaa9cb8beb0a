//! Zipkin v2 JSON encoding and upload.
//!
//! Written here rather than taken from `opentelemetry-zipkin` (0.33, and
//! deprecated since 0.32): that crate never sets `localEndpoint.serviceName`
//! (so every span would land under an unknown service), writes
//! `parentId: "0000000000000000"` for root spans where the model wants it
//! absent, and truncates sub-microsecond durations to 0 where the API says
//! `minimum: 1`. The mapping follows Zipkin's model (zipkin.proto /
//! zipkin2-api.yaml) and the OpenTelemetry specification's Zipkin exporter
//! mapping.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::CONTENT_TYPE;
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, Key, Value};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute::{
    NETWORK_PEER_ADDRESS, NETWORK_PEER_PORT, SERVER_ADDRESS, SERVICE_PEER_NAME,
};
use serde_json::{Map, Value as Json, json};

use super::ExportBuildError;
use super::config::ZipkinConfig;

/// POSTs batches as a Zipkin v2 JSON list.
#[derive(Debug)]
pub(crate) struct ZipkinExporter {
    client: HyperClient,
    endpoint: http::Uri,
    service_name: String,
}

// === impl ZipkinExporter ===

impl ZipkinExporter {
    pub(crate) fn new(cfg: &ZipkinConfig, service_name: String) -> Result<Self, ExportBuildError> {
        let fail = |reason: String| ExportBuildError::Zipkin {
            endpoint: cfg.endpoint.clone(),
            reason,
        };
        let endpoint = cfg
            .endpoint
            .parse::<http::Uri>()
            .map_err(|e| fail(e.to_string()))?;
        if endpoint.scheme_str() != Some("http") {
            return Err(fail("only http:// endpoints are supported".into()));
        }
        Ok(Self {
            client: HyperClient::with_default_connector(cfg.timeout, None),
            endpoint,
            service_name,
        })
    }

    pub(crate) async fn export(&self, spans: &[Arc<SpanData>]) -> Result<(), String> {
        let body = encode(&self.service_name, spans.iter().map(|s| &**s));
        let req = http::Request::post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Bytes::from(body))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .send_bytes(req)
            .await
            .map_err(|e| e.to_string())?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {}", res.status()))
        }
    }
}

/// Encodes spans as a Zipkin v2 JSON list (`ListOfSpans`).
pub(crate) fn encode<'a>(service_name: &str, spans: impl Iterator<Item = &'a SpanData>) -> Vec<u8> {
    let list: Vec<Json> = spans.map(|s| span_json(service_name, s)).collect();
    // Serializing a `serde_json::Value` cannot fail.
    serde_json::to_vec(&list).unwrap_or_default()
}

fn span_json(service_name: &str, span: &SpanData) -> Json {
    let mut o = Map::new();
    o.insert(
        "traceId".into(),
        span.span_context.trace_id().to_string().into(),
    );
    o.insert("id".into(), span.span_context.span_id().to_string().into());
    if span.parent_span_id != SpanId::INVALID {
        o.insert("parentId".into(), span.parent_span_id.to_string().into());
    }
    let kind = match span.span_kind {
        SpanKind::Client => Some("CLIENT"),
        SpanKind::Server => Some("SERVER"),
        SpanKind::Producer => Some("PRODUCER"),
        SpanKind::Consumer => Some("CONSUMER"),
        SpanKind::Internal => None,
    };
    if let Some(kind) = kind {
        o.insert("kind".into(), kind.into());
    }
    o.insert("name".into(), span.name.as_ref().into());
    o.insert(
        "timestamp".into(),
        micros_since_epoch(span.start_time).into(),
    );
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or(Duration::ZERO);
    // "Durations of less than one are rounded up": ceil, at least 1.
    let micros = duration.as_nanos().div_ceil(1000).max(1);
    o.insert(
        "duration".into(),
        u64::try_from(micros).unwrap_or(u64::MAX).into(),
    );
    o.insert(
        "localEndpoint".into(),
        json!({ "serviceName": service_name }),
    );
    if let Some(remote) = remote_endpoint(span) {
        o.insert("remoteEndpoint".into(), remote);
    }
    if !span.events.events.is_empty() {
        let annotations: Vec<Json> = span
            .events
            .iter()
            .map(|e| {
                let value = if e.attributes.is_empty() {
                    e.name.to_string()
                } else {
                    let attrs: Map<String, Json> = e
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
                        .collect();
                    format!("\"{}\":{}", e.name, Json::Object(attrs))
                };
                json!({ "timestamp": micros_since_epoch(e.timestamp), "value": value })
            })
            .collect();
        o.insert("annotations".into(), annotations.into());
    }
    let mut tags = Map::new();
    for kv in &span.attributes {
        tags.insert(kv.key.to_string(), tag_string(&kv.value).into());
    }
    let scope = &span.instrumentation_scope;
    if !scope.name().is_empty() {
        tags.insert("otel.scope.name".into(), scope.name().into());
    }
    if let Some(v) = scope.version() {
        tags.insert("otel.scope.version".into(), v.into());
    }
    match &span.status {
        Status::Unset => {}
        Status::Ok => {
            tags.insert("otel.status_code".into(), "OK".into());
        }
        Status::Error { description } => {
            tags.insert("otel.status_code".into(), "ERROR".into());
            tags.insert("error".into(), description.as_ref().into());
        }
    }
    if span.dropped_attributes_count > 0 {
        tags.insert(
            "otel.dropped_attributes_count".into(),
            span.dropped_attributes_count.to_string().into(),
        );
    }
    if span.events.dropped_count > 0 {
        tags.insert(
            "otel.dropped_events_count".into(),
            span.events.dropped_count.to_string().into(),
        );
    }
    if !tags.is_empty() {
        o.insert("tags".into(), tags.into());
    }
    Json::Object(o)
}

/// The peer: its address and port from `network.peer.*`, and for CLIENT and
/// PRODUCER spans its name from `service.peer.name` or `server.address`.
fn remote_endpoint(span: &SpanData) -> Option<Json> {
    if span.span_kind == SpanKind::Internal {
        return None;
    }
    let attr = |key: &'static str| {
        let key = Key::from_static_str(key);
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    };
    let mut o = Map::new();
    if matches!(span.span_kind, SpanKind::Client | SpanKind::Producer)
        && let Some(name) = attr(SERVICE_PEER_NAME).or_else(|| attr(SERVER_ADDRESS))
    {
        o.insert("serviceName".into(), name.as_str().into_owned().into());
    }
    if let Some(ip) = attr(NETWORK_PEER_ADDRESS).and_then(|v| v.as_str().parse::<IpAddr>().ok()) {
        match ip {
            IpAddr::V4(v4) => o.insert("ipv4".into(), v4.to_string().into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // zipkin.proto: "Prefer using the ipv4 field for mapped addresses."
                Some(v4) => o.insert("ipv4".into(), v4.to_string().into()),
                None => o.insert("ipv6".into(), v6.to_string().into()),
            },
        };
    }
    let port = attr(NETWORK_PEER_PORT).and_then(|v| match v {
        Value::I64(p) => u16::try_from(*p).ok(),
        Value::String(s) => s.as_str().parse::<u16>().ok(),
        _ => None,
    });
    if let Some(port) = port {
        o.insert("port".into(), port.into());
    }
    (!o.is_empty()).then_some(Json::Object(o))
}

/// Tags are strings: scalars as their text, arrays as a JSON list (the
/// OpenTelemetry Zipkin mapping).
fn tag_string(v: &Value) -> String {
    match v {
        Value::Array(_) => value_json(v).to_string(),
        other => other.as_str().into_owned(),
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => (*b).into(),
        Value::I64(i) => (*i).into(),
        Value::F64(f) => (*f).into(),
        Value::String(s) => s.as_str().into(),
        Value::Array(Array::Bool(a)) => a.clone().into(),
        Value::Array(Array::I64(a)) => a.clone().into(),
        Value::Array(Array::F64(a)) => a.clone().into(),
        Value::Array(Array::String(a)) => a.iter().map(|s| s.as_str()).collect::<Vec<_>>().into(),
        other => other.as_str().into_owned().into(),
    }
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
