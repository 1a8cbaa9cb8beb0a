//! Zipkin v2 JSON encoding and upload (HTTP/1.1 POST, over TLS for an
//! `https://` endpoint).
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
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::Array;
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient};
use opentelemetry_semantic_conventions::attribute::SERVICE_PEER_NAME;
use serde_json::{Map, Value as Json, json};

use super::config::ZipkinConfig;
use super::tls::{self, ALPN_HTTP11};
use super::{ExportBuildError, ExporterKind};
use crate::span::{AttrValue, SCOPE_NAME, SCOPE_VERSION, SpanRecord};

/// POSTs batches as a Zipkin v2 JSON list.
#[derive(Debug)]
pub(crate) struct ZipkinExporter {
    client: HyperClient<HttpsConnector<HttpConnector>>,
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
        let https = match endpoint.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(fail(
                    "the endpoint must be an http:// or https:// URL".into(),
                ));
            }
        };
        let connector = tls::connector(&cfg.tls, https, ALPN_HTTP11, HttpConnector::new())
            .map_err(|e| ExportBuildError::from_tls(ExporterKind::Zipkin, &cfg.endpoint, e))?;
        Ok(Self {
            client: HyperClient::new(connector, cfg.timeout, None),
            endpoint,
            service_name,
        })
    }

    pub(crate) async fn export(&self, spans: &[Arc<SpanRecord>]) -> Result<(), String> {
        let body = encode_zipkin(&self.service_name, spans.iter().map(|s| &**s));
        let req = http::Request::post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Bytes::from(body))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .send_bytes(req)
            .await
            .map_err(|e| crate::export::error_chain(e.as_ref()))?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {}", res.status()))
        }
    }
}

/// Encodes spans as a Zipkin v2 JSON list (`ListOfSpans`), the body the
/// Zipkin exporter POSTs to `/api/v2/spans`: for an embedder that ships
/// spans its own way (a file, a queue) or checks what a collector receives.
///
/// Each span's `localEndpoint.serviceName` is `service_name`. Ids are
/// lowercase hex (`parentId` absent for a root), `timestamp` and
/// `duration` are microseconds (a duration is rounded up, at least 1, as
/// the model says), `kind` is absent for an internal span, every attribute
/// is a string tag (arrays as a JSON list), plus `otel.scope.*` and, for a
/// set status, `otel.status_code` (and `error`). `remoteEndpoint` holds
/// the peer's address and port and, for a client span, its
/// `service.peer.name` or `server.address`.
///
/// ```
/// use std::time::SystemTime;
/// use l7inspect_trace::{export::encode_zipkin, span::SpanRecord};
/// use opentelemetry::trace::{SpanId, SpanKind, TraceId};
///
/// let span = SpanRecord::new(TraceId::from(1u128), SpanId::from(2u64), SpanKind::Server, "GET", SystemTime::UNIX_EPOCH);
/// let json: serde_json::Value = serde_json::from_slice(&encode_zipkin("checkout", [&span]))?;
/// assert_eq!(json[0]["traceId"], "00000000000000000000000000000001");
/// assert_eq!(json[0]["localEndpoint"]["serviceName"], "checkout");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn encode_zipkin<'a>(
    service_name: &str,
    spans: impl IntoIterator<Item = &'a SpanRecord>,
) -> Vec<u8> {
    let list: Vec<Json> = spans
        .into_iter()
        .map(|s| span_json(service_name, s))
        .collect();
    // Serializing a `serde_json::Value` cannot fail.
    serde_json::to_vec(&list).unwrap_or_default()
}

fn span_json(service_name: &str, span: &SpanRecord) -> Json {
    let mut o = Map::new();
    o.insert("traceId".into(), span.trace_id.to_string().into());
    o.insert("id".into(), span.span_id.to_string().into());
    if span.parent_span_id != SpanId::INVALID {
        o.insert("parentId".into(), span.parent_span_id.to_string().into());
    }
    let kind = match span.kind {
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
    o.insert("timestamp".into(), micros_since_epoch(span.start).into());
    let duration = span
        .end
        .duration_since(span.start)
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
    let mut tags = Map::new();
    span.for_each_attribute(|key, value| {
        tags.insert(key.to_owned(), tag_string(value).into());
    });
    tags.insert("otel.scope.name".into(), SCOPE_NAME.into());
    tags.insert("otel.scope.version".into(), SCOPE_VERSION.into());
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
    o.insert("tags".into(), tags.into());
    Json::Object(o)
}

/// The peer: its address and port (`network.peer.*`), and for CLIENT and
/// PRODUCER spans its name from `service.peer.name` or `server.address`.
fn remote_endpoint(span: &SpanRecord) -> Option<Json> {
    if span.kind == SpanKind::Internal {
        return None;
    }
    let mut o = Map::new();
    if matches!(span.kind, SpanKind::Client | SpanKind::Producer) {
        let name = span
            .attribute(SERVICE_PEER_NAME)
            .map(|v| v.as_str().into_owned())
            .or_else(|| span.http.as_ref().map(|h| h.server_address.to_string()));
        if let Some(name) = name {
            o.insert("serviceName".into(), name.into());
        }
    }
    if let Some(network) = &span.network {
        match network.peer.ip() {
            IpAddr::V4(v4) => o.insert("ipv4".into(), v4.to_string().into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // zipkin.proto: "Prefer using the ipv4 field for mapped addresses."
                Some(v4) => o.insert("ipv4".into(), v4.to_string().into()),
                None => o.insert("ipv6".into(), v6.to_string().into()),
            },
        };
        o.insert("port".into(), network.peer.port().into());
    }
    (!o.is_empty()).then_some(Json::Object(o))
}

/// Tags are strings: scalars as their text, arrays as a JSON list (the
/// OpenTelemetry Zipkin mapping).
fn tag_string(v: AttrValue<'_>) -> String {
    match v {
        AttrValue::Str(s) => s.to_owned(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Other(v @ opentelemetry::Value::Array(a)) => {
            let list: Json = match a {
                Array::Bool(a) => a.clone().into(),
                Array::I64(a) => a.clone().into(),
                Array::F64(a) => a.clone().into(),
                Array::String(a) => a.iter().map(|s| s.as_str()).collect::<Vec<_>>().into(),
                _ => return v.as_str().into_owned(),
            };
            list.to_string()
        }
        AttrValue::Other(v) => v.as_str().into_owned(),
    }
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
