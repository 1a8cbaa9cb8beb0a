//! Protocol detection on the first flights of real clients
//! (`l7inspect-detect/testdata/`), and ClientHello parsing.
//!
//! `detect` runs once per connection on the client's first segment, so its
//! cost is per connection, not per byte; these benches keep it honest. The
//! `baseline/len` bench is the floor: touching the same slice and nothing else.
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench detect
//! ```

#![forbid(unsafe_code)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use l7inspect_detect::{detect, parse_client_hello};
use std::hint::black_box;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name.trim_end_matches(".bin"),
            &include_bytes!(concat!("../../l7inspect-detect/testdata/", $name))[..],
        )
    };
}

fn detection(c: &mut Criterion) {
    let fixtures = [
        fixture!("http1_curl_get.bin"),
        fixture!("http2_curl_prior_knowledge.bin"),
        fixture!("tls_curl_https.bin"),
        fixture!("redis_cli_ping.bin"),
        fixture!("postgres_psql_startup.bin"),
        fixture!("kafka_kcat_apiversions.bin"),
        fixture!("mongodb_hello.bin"),
        fixture!("memcached_text_get.bin"),
        fixture!("garbage_random.bin"),
    ];
    let mut group = c.benchmark_group("detect");
    for (name, bytes) in fixtures {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("detect", name), bytes, |b, bytes| {
            b.iter(|| detect(black_box(bytes)))
        });
        group.bench_with_input(BenchmarkId::new("baseline/len", name), bytes, |b, bytes| {
            b.iter(|| black_box(bytes).len())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("parse_client_hello");
    for (name, bytes) in [
        fixture!("tls_curl_https.bin"),
        fixture!("tls_openssl_sni_alpn.bin"),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), bytes, |b, bytes| {
            b.iter(|| parse_client_hello(black_box(bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, detection);
criterion_main!(benches);
