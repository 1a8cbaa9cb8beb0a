//! Encoding one export batch as an OTLP `ExportTraceServiceRequest`: the
//! sidecar's hand-written [`OtlpEncoder`] beside what `opentelemetry-otlp`
//! did before it, `opentelemetry-proto`'s `SpanData` conversion
//! (`group_spans_by_resource_and_scope`) followed by prost's `encode`.
//!
//! The batch is 512 spans (the default `max_batch`), each a realistic HTTP
//! SERVER span as the observation layer records it: 14 attributes (method,
//! path, query, scheme, server address and port, protocol version, peer
//! address and port, client address, user agent, request body size,
//! response status code, response body size), a W3C parent, status unset;
//! the sidecar's resource.
//!
//! Cases:
//! - `hand-written`: [`OtlpEncoder::encode`] from the shared
//!   `Arc<SpanRecord>` batch (typed fields) into a reused buffer, as the
//!   export task does.
//! - `opentelemetry-proto+prost`: what the SDK exporter cost for the same
//!   spans as the SDK's `SpanData` (attribute vectors): each span copied
//!   out of its `Arc` (the exporter takes them by value), converted into
//!   proto structs, encoded into a reused buffer, and the structs dropped.
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench otlp_encode
//! ```

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use l7inspect_trace::export::{OtlpEncoder, ResourceConfig};
use l7inspect_trace::span::{HttpFields, NetworkFields, SpanRecord};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::SpanData;
use prost::Message as _;

const BATCH: usize = 512;

fn span(i: u64, network: &Arc<NetworkFields>) -> SpanRecord {
    let start = SystemTime::now() + Duration::from_micros(i * 37);
    let mut span = SpanRecord::new(
        TraceId::from(0x5b8e_fff7_9803_8103_d269_b633_813f_c60c_u128 ^ u128::from(i)),
        SpanId::from(0xeee1_9b7e_c3c1_b174 ^ i),
        SpanKind::Server,
        "GET",
        start,
    );
    span.parent_span_id = SpanId::from(0x0020_0000_0000_0001 + i);
    span.parent_is_remote = true;
    span.end = start + Duration::from_micros(850);
    span.network = Some(network.clone());
    span.http = Some(HttpFields {
        method: "GET",
        method_original: None,
        path: format!("/api/v1/orders/{i}"),
        scheme: "http".into(),
        query: Some("expand=items&limit=20".into()),
        server_address: "orders.default.svc.cluster.local".into(),
        server_port: 8080,
        protocol_version: "1.1",
        user_agent: Some("curl/8.5.0".into()),
        request_body_size: Some(0),
        response_status_code: Some(200),
        response_body_size: Some(1432),
    });
    span
}

fn bench(c: &mut Criterion) {
    let resource = ResourceConfig {
        service_name: "orders".into(),
        attributes: vec![("deployment.environment.name".into(), "prod".into())],
    }
    .to_resource("l7inspect", "0.1.0");
    let network = Arc::new(NetworkFields::new(
        "10.244.1.17:40000".parse().expect("address"),
        Some("10.244.1.17".parse().expect("address")),
    ));
    let batch: Vec<Arc<SpanRecord>> = (0..BATCH as u64)
        .map(|i| Arc::new(span(i, &network)))
        .collect();
    let sdk_batch: Vec<Arc<SpanData>> = batch.iter().map(|s| Arc::new(s.to_sdk())).collect();

    let mut group = c.benchmark_group("otlp_encode");
    group.throughput(Throughput::Elements(BATCH as u64));

    let encoder = OtlpEncoder::new(&resource);
    let mut buf = BytesMut::new();
    group.bench_function("hand-written", |b| {
        b.iter(|| {
            buf.clear();
            encoder.encode(black_box(&batch), &mut buf);
            black_box(buf.len())
        })
    });

    let proto_resource = ResourceAttributesWithSchema::from(&resource);
    let mut out: Vec<u8> = Vec::new();
    group.bench_function("opentelemetry-proto+prost", |b| {
        b.iter(|| {
            let spans: Vec<SpanData> = black_box(&sdk_batch)
                .iter()
                .map(|s| SpanData::clone(s))
                .collect();
            let req = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(spans, &proto_resource),
            };
            out.clear();
            req.encode(&mut out).expect("a Vec grows");
            black_box(out.len())
        })
    });
    group.finish();

    // Same bytes, or the comparison is moot.
    buf.clear();
    encoder.encode(&batch, &mut buf);
    let spans: Vec<SpanData> = sdk_batch.iter().map(|s| SpanData::clone(s)).collect();
    let want = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(spans, &proto_resource),
    }
    .encode_to_vec();
    assert_eq!(&buf[..], &want[..], "the encoders disagree");
}

criterion_group! {
    name = benches;
    // Short by default, like the other benches; the command line
    // (--warm-up-time, --measurement-time) still wins.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
