//! Trace-context extraction and injection (`l7inspect_trace::Propagators`)
//! on the header maps of typical requests.
//!
//! Both run once per proxied HTTP request, traced or not, so their cost is
//! per request. The default list (`tracecontext,baggage,b3,b3multi,jaeger`)
//! looks up every format's headers whichever one is present, which is why
//! `extract/none` (a request with no trace headers) is not free. Baselines:
//! `baseline/get-absent`, one `HeaderMap` lookup of a header that is not
//! there (the floor for a single format), and `baseline/insert`, one insert of
//! a static value over an existing header (the floor for writing one header).
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench propagation
//! ```

#![forbid(unsafe_code)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use l7inspect_trace::{Format, FormatSet, Propagators};
use std::hint::black_box;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// A request head as a browser-ish client sends it, plus `trace`.
fn request(trace: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in [
        ("host", "reviews.default.svc.cluster.local:9080"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
    ] {
        map.insert(name, HeaderValue::from_static(value));
    }
    for (name, value) in trace {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn fixtures() -> Vec<(&'static str, Format, HeaderMap)> {
    vec![
        (
            "tracecontext",
            Format::TraceContext,
            request(&[("traceparent", format!("00-{TRACE}-{SPAN}-01"))]),
        ),
        (
            "tracecontext+tracestate",
            Format::TraceContext,
            request(&[
                ("traceparent", format!("00-{TRACE}-{SPAN}-01")),
                (
                    "tracestate",
                    "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into(),
                ),
            ]),
        ),
        (
            "b3",
            Format::B3,
            request(&[("b3", format!("{TRACE}-{SPAN}-1"))]),
        ),
        (
            "b3multi",
            Format::B3Multi,
            request(&[
                ("x-b3-traceid", TRACE.into()),
                ("x-b3-spanid", SPAN.into()),
                ("x-b3-sampled", "1".into()),
            ]),
        ),
        (
            "jaeger",
            Format::Jaeger,
            request(&[("uber-trace-id", format!("{TRACE}:{SPAN}:0:1"))]),
        ),
    ]
}

fn extract(c: &mut Criterion) {
    let propagators = Propagators::default();
    let mut group = c.benchmark_group("extract");
    for (name, _, headers) in fixtures() {
        group.bench_with_input(BenchmarkId::from_parameter(name), &headers, |b, h| {
            b.iter(|| propagators.extract(black_box(h)))
        });
    }
    let untraced = request(&[]);
    group.bench_with_input(BenchmarkId::from_parameter("none"), &untraced, |b, h| {
        b.iter(|| propagators.extract(black_box(h)))
    });
    group.bench_with_input(
        BenchmarkId::from_parameter("baseline/get-absent"),
        &untraced,
        |b, h| b.iter(|| black_box(h).get("traceparent").is_some()),
    );
    group.finish();
}

fn inject(c: &mut Criterion) {
    let propagators = Propagators::default();
    // The new span: same trace, another span id, and the tracestate the
    // request came with (only the tracestate fixture has one).
    let w3c = Propagators::new([Format::TraceContext]);
    let new_span = HeaderValue::from_str(&format!("00-{TRACE}-b7ad6b7169203331-01")).unwrap();
    let mut group = c.benchmark_group("inject");
    for (name, format, headers) in fixtures() {
        let mut next = headers.clone();
        next.insert("traceparent", new_span.clone());
        let cx = w3c.extract(&next).parent.unwrap();
        let carried = FormatSet::from(format);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| propagators.inject(h, black_box(&cx), carried),
                BatchSize::SmallInput,
            )
        });
    }
    // Replacing the header of a request that has one, like the injects.
    let traced = request(&[("traceparent", format!("00-{TRACE}-{SPAN}-01"))]);
    group.bench_function(BenchmarkId::from_parameter("baseline/insert"), |b| {
        b.iter_batched_ref(
            || traced.clone(),
            |h| h.insert("traceparent", HeaderValue::from_static("x")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, extract, inject);
criterion_main!(benches);
