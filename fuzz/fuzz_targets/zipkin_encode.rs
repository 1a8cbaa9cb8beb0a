//! The Zipkin v2 JSON encoder (`encode_zipkin`): a batch of spans of any
//! shape (as for `otlp_encode`) encodes to JSON that parses, validates
//! against the Zipkin v2 spec's `ListOfSpans` (test-support's checker of
//! the vendored `zipkin2-api.yaml`), and carries the input spans' fields:
//! ids as lowercase hex (`parentId` absent for a root), name, kind,
//! timestamp and duration in microseconds (duration at least 1, rounded
//! up), the service name, and every attribute as a string tag.
#![no_main]

use std::time::{Duration, SystemTime};

use l7inspect_fuzz::zipkin_spec;
use l7inspect_trace::export::encode_zipkin;
use l7inspect_trace::span::{AttrValue, SpanRecord};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::{SpanId, SpanKind};
use serde_json::Value as Json;

/// Tags the encoder writes after the attributes, which win over an
/// attribute of the same key.
const OWN_TAGS: [&str; 4] = [
    "otel.scope.name",
    "otel.scope.version",
    "otel.status_code",
    "error",
];

fn input(u: &mut Unstructured<'_>) -> Result<(String, Vec<SpanRecord>)> {
    let service: String = u.arbitrary()?;
    let mut spans = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        spans.push(l7inspect_fuzz::span(u)?);
    }
    Ok((service, spans))
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fuzz_target!(|data: &[u8]| {
    let Ok((service, spans)) = input(&mut Unstructured::new(data)) else {
        return;
    };
    let body = encode_zipkin(&service, &spans);
    let json: Json = serde_json::from_slice(&body).expect("the encoding is JSON");
    if let Err(e) = zipkin_spec::check("ListOfSpans", &json) {
        panic!("not Zipkin v2: {e}\n{json}");
    }
    let list = json.as_array().expect("a list");
    assert_eq!(list.len(), spans.len());
    for (j, s) in list.iter().zip(&spans) {
        assert_eq!(j["traceId"], format!("{:032x}", s.trace_id));
        assert_eq!(j["id"], format!("{:016x}", s.span_id));
        if s.parent_span_id == SpanId::INVALID {
            assert!(j.get("parentId").is_none(), "{j}");
        } else {
            assert_eq!(j["parentId"], format!("{:016x}", s.parent_span_id));
        }
        assert_eq!(j["name"], *s.name);
        let kind = match s.kind {
            SpanKind::Client => Some("CLIENT"),
            SpanKind::Server => Some("SERVER"),
            SpanKind::Producer => Some("PRODUCER"),
            SpanKind::Consumer => Some("CONSUMER"),
            SpanKind::Internal => None,
        };
        assert_eq!(j.get("kind").and_then(Json::as_str), kind);
        if let Some(ts) = j.get("timestamp") {
            assert_eq!(ts.as_u64(), Some(micros(s.start)), "{j}");
        }
        if let Some(d) = j.get("duration") {
            let want = s.end.duration_since(s.start).unwrap_or(Duration::ZERO);
            let want = u64::try_from(want.as_nanos().div_ceil(1000).max(1)).unwrap_or(u64::MAX);
            assert_eq!(d.as_u64(), Some(want), "{j}");
        }
        assert_eq!(j["localEndpoint"]["serviceName"], *service);
        let tags = j["tags"].as_object().expect("tags");
        let mut want = serde_json::Map::new();
        s.for_each_attribute(|key, value| {
            let text = match value {
                AttrValue::Str(v) => Some(v.to_owned()),
                AttrValue::Int(i) => Some(i.to_string()),
                // Arrays and other values: their own rendering, checked by the spec only.
                AttrValue::Other(_) => None,
            };
            want.insert(key.to_owned(), text.map_or(Json::Null, Json::from));
        });
        for (key, value) in &want {
            if OWN_TAGS.contains(&key.as_str()) {
                continue;
            }
            let got = tags
                .get(key)
                .unwrap_or_else(|| panic!("tag {key} missing from {j}"));
            if !value.is_null() {
                assert_eq!(got, value, "tag {key}");
            }
        }
    }
});
