//! The hand-written OTLP encoder against `opentelemetry-proto`'s decoder:
//! a batch of spans of any shape (built from the input: ids, kind, name,
//! times before the epoch or far ahead, status, `tracestate`, every typed
//! field group, extra attributes of every value kind, any Unicode) and a
//! resource with any attributes encodes to an `ExportTraceServiceRequest`
//! that prost decodes, with each span's fields equal to the input span's
//! (ids, parent, name, kind, times, flags, `tracestate`, status, every
//! attribute in order), and whose bytes are prost's own encoding of
//! `opentelemetry-proto`'s conversion of the same spans.
#![no_main]

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use l7inspect_trace::export::OtlpEncoder;
use l7inspect_trace::span::{AttrValue, SpanRecord};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use prost::Message as _;

fn input(u: &mut Unstructured<'_>) -> Result<(Resource, Vec<SpanRecord>)> {
    let mut attrs = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let key: String = u.arbitrary()?;
        attrs.push(KeyValue::new(key, u.arbitrary::<String>()?));
    }
    let mut resource = Resource::builder_empty().with_attributes(attrs);
    if u.arbitrary()? {
        resource = resource.with_schema_url(Vec::<KeyValue>::new(), u.arbitrary::<String>()?);
    }
    let mut spans = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        spans.push(l7inspect_fuzz::span(u)?);
    }
    Ok((resource.build(), spans))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether `got` is `want`'s encoding (floats bit for bit: NaN too).
fn same_value(got: &Option<AnyValue>, want: &AttrValue<'_>) -> bool {
    use any_value::Value as V;
    let got = got.as_ref().and_then(|v| v.value.as_ref());
    let scalar = |got: Option<&V>, want: &Value| match (got, want) {
        (Some(V::BoolValue(a)), Value::Bool(b)) => a == b,
        (Some(V::IntValue(a)), Value::I64(b)) => a == b,
        (Some(V::DoubleValue(a)), Value::F64(b)) => a.to_bits() == b.to_bits(),
        (Some(V::StringValue(a)), Value::String(b)) => a == b.as_str(),
        _ => false,
    };
    match want {
        AttrValue::Str(s) => matches!(got, Some(V::StringValue(a)) if a == s),
        AttrValue::Int(i) => matches!(got, Some(V::IntValue(a)) if a == i),
        AttrValue::Other(Value::Array(array)) => {
            let Some(V::ArrayValue(list)) = got else {
                return false;
            };
            let want: Vec<Value> = match array {
                Array::Bool(a) => a.iter().map(|v| Value::Bool(*v)).collect(),
                Array::I64(a) => a.iter().map(|v| Value::I64(*v)).collect(),
                Array::F64(a) => a.iter().map(|v| Value::F64(*v)).collect(),
                Array::String(a) => a.iter().map(|v| Value::String(v.clone())).collect(),
                _ => return true,
            };
            list.values.len() == want.len()
                && list
                    .values
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| scalar(g.value.as_ref(), w))
        }
        AttrValue::Other(v) => scalar(got, v),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((resource, spans)) = input(&mut Unstructured::new(data)) else {
        return;
    };
    let arcs: Vec<Arc<SpanRecord>> = spans.iter().cloned().map(Arc::new).collect();
    let mut buf = BytesMut::new();
    OtlpEncoder::new(&resource).encode(&arcs, &mut buf);
    let decoded = ExportTraceServiceRequest::decode(&buf[..]).expect("prost decodes the encoding");

    let [rs] = &decoded.resource_spans[..] else {
        panic!("one ResourceSpans, got {}", decoded.resource_spans.len());
    };
    let got = rs.resource.as_ref().expect("the resource is always there");
    assert_eq!(got.attributes.len(), resource.len());
    for (kv, (k, v)) in got.attributes.iter().zip(resource.iter()) {
        assert_eq!(kv.key, k.as_str());
        assert!(
            same_value(&kv.value, &AttrValue::Other(v)),
            "{kv:?} != {v:?}"
        );
    }
    assert_eq!(rs.schema_url, resource.schema_url().unwrap_or_default());
    let decoded_spans: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
    assert_eq!(decoded_spans.len(), spans.len());
    for (d, s) in decoded_spans.iter().zip(&spans) {
        assert_eq!(d.trace_id, s.trace_id.to_bytes());
        assert_eq!(d.span_id, s.span_id.to_bytes());
        let parent = if s.parent_span_id == SpanId::INVALID {
            vec![]
        } else {
            s.parent_span_id.to_bytes().to_vec()
        };
        assert_eq!(d.parent_span_id, parent);
        assert_eq!(d.name, s.name);
        let kind = match s.kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        };
        assert_eq!(d.kind, kind);
        assert_eq!(d.start_time_unix_nano, nanos(s.start));
        assert_eq!(d.end_time_unix_nano, nanos(s.end));
        assert_eq!(d.trace_state, s.trace_state.header());
        let remote = if s.parent_is_remote { 0x300 } else { 0x100 };
        assert_eq!(d.flags, u32::from(s.trace_flags.to_u8()) | remote);
        let status = d.status.as_ref().expect("the status is always there");
        match &s.status {
            Status::Unset => assert_eq!((status.code, &*status.message), (0, "")),
            Status::Ok => assert_eq!((status.code, &*status.message), (1, "")),
            Status::Error { description } => {
                assert_eq!((status.code, &*status.message), (2, &**description))
            }
        }
        let mut i = 0;
        s.for_each_attribute(|key, value| {
            let kv = d
                .attributes
                .get(i)
                .unwrap_or_else(|| panic!("attribute {i} ({key}) missing"));
            assert_eq!(kv.key, key);
            assert!(
                same_value(&kv.value, &value),
                "{key}: {:?} != {value:?}",
                kv.value
            );
            i += 1;
        });
        assert_eq!(d.attributes.len(), i);
    }

    // Byte for byte what prost makes of opentelemetry-proto's conversion.
    let reference = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans.iter().map(SpanRecord::to_sdk).collect(),
            &ResourceAttributesWithSchema::from(&resource),
        ),
    };
    if !spans.is_empty() {
        assert_eq!(
            &buf[..],
            &reference.encode_to_vec()[..],
            "bytes differ from prost's"
        );
    }
});
