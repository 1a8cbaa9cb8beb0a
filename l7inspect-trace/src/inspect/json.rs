//! Spans as the span API, the live view and tap show them: one JSON object
//! each.

use super::query::{Direction, Protocol, authority, method, server};
use crate::span::{AttrValue, SpanRecord};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use serde_json::{Map, Value, json};
use std::time::UNIX_EPOCH;

/// `span` of `service` as JSON: ids (hex), `parent_span_id` (null for a root),
/// `service`, `kind`, `name`, `start_unix_us` and `duration_us` (integers:
/// microseconds fit a JavaScript number), `status` (`unset`, `ok`,
/// `error`) and `status_message`, the request's summary (`direction`,
/// `protocol`, `method`, `authority`, `path`, `http_status`,
/// `grpc_status`, each null when it does not apply; a database command has
/// its protocol and authority), and every attribute.
pub fn span_json(service: &str, span: &SpanRecord) -> Value {
    let parent = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
    let (status, message) = match &span.status {
        Status::Unset => ("unset", None),
        Status::Ok => ("ok", None),
        Status::Error { description } => ("error", Some(description.to_string())),
    };
    let start_us = span
        .start
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let http = span.http.as_ref();
    let mut attributes = Map::new();
    span.for_each_attribute(|key, value| {
        let v = match value {
            AttrValue::Str(s) => Value::from(s),
            AttrValue::Int(i) => Value::from(i),
            AttrValue::Other(v) => match v {
                opentelemetry::Value::Bool(b) => Value::from(*b),
                opentelemetry::Value::I64(i) => Value::from(*i),
                opentelemetry::Value::F64(f) => Value::from(*f),
                other => Value::from(other.as_str().into_owned()),
            },
        };
        attributes.insert(key.to_owned(), v);
    });
    json!({
        "trace_id": span.trace_id.to_string(),
        "span_id": span.span_id.to_string(),
        "parent_span_id": parent,
        "service": service,
        "kind": kind(span.kind.clone()),
        "name": &*span.name,
        "start_unix_us": start_us,
        "duration_us": span.duration().as_micros() as u64,
        "status": status,
        "status_message": message,
        "direction": Direction::of(span).map(Direction::as_str),
        "protocol": Protocol::of(span).map(Protocol::as_str),
        "method": http.map(method),
        "authority": server(span).map(|(host, port)| authority(host, port)),
        "path": http.map(|h| h.path.as_str()),
        "http_status": http.and_then(|h| h.response_status_code),
        "grpc_status": span.rpc.as_ref().and_then(|r| r.grpc_status_code),
        "attributes": attributes,
    })
}

fn kind(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}
