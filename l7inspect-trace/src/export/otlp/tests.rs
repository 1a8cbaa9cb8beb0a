//! The encoder against `opentelemetry-proto`'s own conversion and prost.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use prost::Message as _;

use super::OtlpEncoder;
use super::encode::{put_varint, varint_len};
use crate::span::{HttpFields, NetworkFields, RpcFields, SpanRecord, TlsFields};

/// What opentelemetry-proto's own conversion makes of the batch.
fn reference(spans: &[SpanRecord], resource: &Resource) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans.iter().map(SpanRecord::to_sdk).collect(),
            &ResourceAttributesWithSchema::from(resource),
        ),
    }
}

fn ours(spans: &[SpanRecord], resource: &Resource) -> BytesMut {
    let arcs: Vec<Arc<SpanRecord>> = spans.iter().cloned().map(Arc::new).collect();
    let mut buf = BytesMut::new();
    OtlpEncoder::new(resource).encode(&arcs, &mut buf);
    buf
}

/// Decodes equal to the reference conversion, and is byte-identical to
/// prost's encoding of it.
fn check(spans: &[SpanRecord], resource: &Resource) {
    let want = reference(spans, resource);
    let got = ours(spans, resource);
    let decoded = ExportTraceServiceRequest::decode(&got[..]).expect("decodes");
    assert_eq!(decoded, want);
    let prost = want.encode_to_vec();
    if let Some(i) = (0..got.len().min(prost.len())).find(|&i| got[i] != prost[i]) {
        let from = i.saturating_sub(16);
        panic!(
            "bytes differ from prost's at {i} of {}/{}: ours {:?}, prost {:?}",
            got.len(),
            prost.len(),
            &got[from..(i + 16).min(got.len())],
            &prost[from..(i + 16).min(prost.len())],
        );
    }
    assert_eq!(got.len(), prost.len(), "lengths differ from prost's");
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "checkout"),
            KeyValue::new("host.cpus", 8_i64),
            KeyValue::new("empty", ""),
            KeyValue::new("ratio", 0.5),
            KeyValue::new("flag", true),
            KeyValue::new(
                "tags",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
        ])
        .build()
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

/// Every attribute value kind, scalars at their edges.
fn every_value() -> Vec<KeyValue> {
    vec![
        KeyValue::new("s", "GET"),
        KeyValue::new("empty", ""),
        KeyValue::new("long", long(300)),
        KeyValue::new("t", true),
        KeyValue::new("f", false),
        KeyValue::new("zero", 0_i64),
        KeyValue::new("neg", -1_i64),
        KeyValue::new("max", i64::MAX),
        KeyValue::new("min", i64::MIN),
        KeyValue::new("pi", std::f64::consts::PI),
        KeyValue::new("fzero", 0.0),
        KeyValue::new("fneg", -0.0),
        KeyValue::new("", "empty key"),
        KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("ints", Value::Array(Array::I64(vec![0, -5, i64::MAX]))),
        KeyValue::new("floats", Value::Array(Array::F64(vec![0.0, 1.5, -2.25]))),
        KeyValue::new(
            "strings",
            Value::Array(Array::String(vec![
                StringValue::from(""),
                StringValue::from("b"),
                StringValue::from(long(200)),
            ])),
        ),
        KeyValue::new("no_strings", Value::Array(Array::String(vec![]))),
        KeyValue::new("no_ints", Value::Array(Array::I64(vec![]))),
        KeyValue::new(
            "big_array",
            Value::Array(Array::I64((0..100).map(|i| i * 1_000_000_007).collect())),
        ),
    ]
}

fn at(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn span(name: impl Into<Cow<'static, str>>) -> SpanRecord {
    let mut s = SpanRecord::new(
        TraceId::from(7),
        SpanId::from(9),
        SpanKind::Server,
        name,
        at(1_700_000_000_000_000_001),
    );
    s.end = at(1_700_000_000_123_456_789);
    s
}

fn http_fields() -> HttpFields {
    HttpFields {
        method: "_OTHER",
        method_original: Some("PROPFIND".into()),
        path: "/dav/ü".into(),
        scheme: "http".into(),
        query: Some("a=1".into()),
        server_address: "shop.example".into(),
        server_port: 8080,
        protocol_version: "1.1",
        user_agent: Some(long(130).into()),
        request_body_size: Some(u64::MAX),
        response_status_code: Some(503),
        response_body_size: Some(0),
    }
}

fn varied() -> Vec<SpanRecord> {
    let kinds = [
        SpanKind::Internal,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ];
    let mut spans = Vec::new();

    // A root with every typed field and every value kind.
    let mut s = span("GET");
    s.network = Some(Arc::new(NetworkFields::new(
        "[2001:db8::1]:40000".parse().unwrap(),
        Some("2001:db8::1".parse().unwrap()),
    )));
    s.http = Some(http_fields());
    s.rpc = Some(RpcFields {
        system: "grpc",
        service: "shop.Orders".into(),
        method: "Get".into(),
        grpc_status_code: Some(14),
    });
    s.tls = Some(std::sync::Arc::new(TlsFields {
        server_name: Some("shop.example".into()),
        protocol_version: Some("1.3".into()),
        cipher: Some("TLS_AES_128_GCM_SHA256".into()),
        next_protocol: Some("h2".into()),
        client_subject: Some("CN=client".into()),
    }));
    s.set_error("503");
    s.attributes = every_value();
    s.status = Status::Ok;
    spans.push(s);

    // A child of a remote parent, with trace state, an error status.
    let mut s = span("GET /upstream");
    s.trace_id = TraceId::from(u128::MAX);
    s.span_id = SpanId::from(u64::MAX);
    s.trace_state = "k=v,vendor=a".parse::<TraceState>().unwrap();
    s.parent_span_id = SpanId::from(42);
    s.parent_is_remote = true;
    s.kind = SpanKind::Client;
    s.status = Status::error("backend answered 503");
    s.network = Some(Arc::new(NetworkFields::new(
        "10.0.0.5:80".parse().unwrap(),
        None,
    )));
    s.http = Some(HttpFields {
        method: "GET",
        path: "/".into(),
        scheme: "http".into(),
        server_address: "backend".into(),
        server_port: 80,
        protocol_version: "2",
        ..HttpFields::default()
    });
    spans.push(s);

    // A child of a local parent, error with an empty message, unsampled flags.
    let mut s = span("");
    s.trace_id = TraceId::from(1);
    s.span_id = SpanId::from(2);
    s.trace_flags = TraceFlags::default();
    s.parent_span_id = SpanId::from(3);
    s.status = Status::error("");
    spans.push(s);

    // Times before the epoch and at it.
    let mut s = span(long(1000));
    s.start = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
    s.end = SystemTime::UNIX_EPOCH;
    spans.push(s);

    // Many small spans over all kinds.
    for i in 0..40_u64 {
        let mut s = span(format!("span-{i}"));
        s.kind = kinds[i as usize % kinds.len()].clone();
        s.trace_id = TraceId::from(u128::from(i) << 64 | 1);
        s.span_id = SpanId::from(i + 1);
        if i % 2 == 1 {
            s.trace_flags = TraceFlags::default();
        }
        s.attributes = (0..i)
            .map(|j| KeyValue::new(format!("k{j}"), long(j as usize * 7)))
            .collect();
        spans.push(s);
    }
    spans
}

#[test]
fn matches_opentelemetry_proto_conversion() {
    check(&varied(), &resource());
}

#[test]
fn matches_for_every_single_span_and_prefix() {
    let spans = varied();
    let resource = resource();
    for s in &spans {
        check(std::slice::from_ref(s), &resource);
    }
    for n in 0..=spans.len() {
        check(&spans[..n], &resource);
    }
}

#[test]
fn matches_with_an_empty_resource_and_a_schema_url() {
    check(&varied(), &Resource::builder_empty().build());
    let with_schema = Resource::builder_empty()
        .with_schema_url(
            [KeyValue::new("service.name", "x")],
            "https://opentelemetry.io/schemas/1.30.0",
        )
        .build();
    check(&varied(), &with_schema);
}

/// Lengths that straddle varint widths: the guessed widths must be
/// corrected in both directions.
#[test]
fn lengths_across_varint_boundaries() {
    let resource = resource();
    for n in [
        0, 1, 100, 110, 120, 127, 128, 129, 200, 16_000, 16_383, 16_384, 20_000,
    ] {
        let mut s = span(long(n));
        s.http = Some(HttpFields {
            path: long(n),
            ..http_fields()
        });
        s.attributes = vec![
            KeyValue::new("k", long(n)),
            KeyValue::new("a", Value::Array(Array::String(vec![long(n).into()]))),
        ];
        check(&[s], &resource);
    }
    // A batch larger than 2 MiB: the outer lengths need 4 bytes.
    let spans: Vec<SpanRecord> = (0..300)
        .map(|i| {
            let mut s = span(format!("s{i}"));
            s.attributes = vec![KeyValue::new("big", long(8000))];
            s
        })
        .collect();
    check(&spans, &resource);
}

#[test]
fn the_buffer_is_appended_to_and_reusable() {
    let spans: Vec<Arc<SpanRecord>> = varied().into_iter().map(Arc::new).collect();
    let encoder = OtlpEncoder::new(&resource());
    let mut buf = BytesMut::new();
    encoder.encode(&spans, &mut buf);
    let first = buf.split().freeze();
    buf.put_slice(b"prefix");
    encoder.encode(&spans, &mut buf);
    assert_eq!(&buf[..6], b"prefix");
    assert_eq!(&buf[6..], &first[..]);
}

#[test]
fn varint_lengths() {
    for (v, n) in [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (u64::MAX, 10),
    ] {
        assert_eq!(varint_len(v), n, "{v}");
        let mut b = BytesMut::new();
        put_varint(&mut b, v);
        assert_eq!(b.len(), n, "{v}");
    }
}

#[test]
fn database_fields_and_links_match() {
    let mut s = span("GET".to_owned());
    s.db = Some(Box::new(crate::span::DbFields {
        system: "redis",
        operation: "GET",
        namespace: Some("3".into()),
        collection: Some("orders".into()),
        query_text: Some("SELECT * FROM orders WHERE id = ?".into()),
        status_code: Some(Cow::Borrowed("WRONGTYPE")),
        returned_rows: Some(12),
        server_address: "10.0.0.5".into(),
        server_port: 6379,
    }));
    s.links = (1..=3u64)
        .map(|i| crate::span::SpanLink {
            trace_id: TraceId::from(u128::from(i) << 64 | 7),
            span_id: SpanId::from(i),
            flags: if i == 2 {
                TraceFlags::default()
            } else {
                TraceFlags::SAMPLED
            },
        })
        .collect();
    check(&[s.clone(), span("plain".to_owned())], &resource());
}
