//! One HTTP request's observation, start to finish, as the sidecar makes it:
//! the public [`ObserveLayer`] (span and request histogram) around a trivial
//! in-memory service, `baseline` beside the observed cases.
//!
//! One iteration is one whole exchange: `poll_ready`, `call` (extract the
//! caller's context, classify the request, ask the sampler, build the span
//! when sampled, inject its context into the forwarded request), the
//! response (status), then the body polled to its end, which ends the span,
//! hands it to the span sink and records the histogram entry. The sink is
//! the sidecar's own with no exporter configured, so a sampled span ends in
//! the in-memory [`RecentSpans`] ring (1000 spans, full after warm-up, so
//! each push also evicts and frees the oldest span), as it does in a
//! sidecar that exports nowhere. With an exporter the span would be
//! `try_send` into the export queue instead, and the export task would put
//! it in the ring a batch at a time; not measured here.
//!
//! Cases: `server/*` (inbound, SERVER kind) and `client/*` (outbound, CLIENT
//! kind), each `sampled` (`traceidratio` 1.0) and `unsampled` (`traceidratio`
//! 0.0); and, sampled, with parent inference as the sidecar runs it
//! (`server/sampled/registering`: each request enters the set of those in
//! flight; `client/sampled/inferring-none` and `-one`: the request asks it,
//! with nothing and with one inbound request in flight). The request is a plain `GET` with `Host`, `User-Agent` and `Accept`
//! and no trace context, so every span is a root (the default propagators
//! then inject W3C `traceparent`). Baseline: `baseline/untraced`, the same
//! service called the same way without the layer: the floor of the exchange
//! itself.
//!
//! The service answers at once, so everything is polled with a no-op waker
//! on criterion's thread: no runtime, no I/O, nothing but the layer. The
//! request is built outside the timed region ([`Bencher::iter_batched`]).
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench span
//! ```
//!
//! [`Bencher::iter_batched`]: criterion::Bencher::iter_batched

#![forbid(unsafe_code)]

use bytes::{Buf, Bytes};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::{Empty, Full};
use l7inspect_trace::{
    ObserveConfig, ObserveLayer, Observer, ParentInference, Peer, RequestMetrics,
    export::{ExportConfig, ExportPipeline, RecentSpans, ResourceConfig, SamplerConfig},
    infer::{InFlight, InferStats},
};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};
use std::{
    convert::Infallible,
    fmt::Debug,
    future::{Future, ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};
use tower::{Layer, Service, service_fn};

/// What the trivial service answers.
const BODY: &[u8] = b"hello from backend\n";

fn span(c: &mut Criterion) {
    let mut group = c.benchmark_group("span");
    group.bench_function("baseline/untraced", |b| {
        let mut svc = backend();
        b.iter_batched(
            request,
            |req| exchange(&mut svc, req),
            BatchSize::SmallInput,
        )
    });
    for (kind, kind_name) in [(SpanKind::Server, "server"), (SpanKind::Client, "client")] {
        for (ratio, sampled) in [(1.0, "sampled"), (0.0, "unsampled")] {
            let (layer, recent) = observe_layer(kind.clone(), ratio, None);
            let mut svc = layer.layer(backend());
            group.bench_function(format!("{kind_name}/{sampled}"), |b| {
                b.iter_batched(
                    request,
                    |req| exchange(&mut svc, req),
                    BatchSize::SmallInput,
                )
            });
            // What was measured is what the name says: spans ended in the
            // ring, or none did.
            assert_eq!(
                recent.is_empty(),
                ratio == 0.0,
                "{kind_name}/{sampled}: {} spans in the ring",
                recent.len()
            );
        }
    }
    // Parent inference, as the sidecar runs it by default: the inbound
    // observer registers each request in flight; the outbound one asks,
    // with nothing in flight (`none`) and with one inbound request in
    // flight (`inferred`: the span becomes its child).
    let inflight = InFlight::default();
    let stats = InferStats::default();
    let infer = ParentInference::Infer {
        inflight: inflight.clone(),
        max_links: l7inspect_trace::infer::DEFAULT_MAX_LINKS,
        stats,
    };
    let cases = [
        (
            "server/sampled/registering",
            SpanKind::Server,
            ParentInference::Register(inflight.clone()),
            false,
        ),
        (
            "client/sampled/inferring-none",
            SpanKind::Client,
            infer.clone(),
            false,
        ),
        (
            "client/sampled/inferring-one",
            SpanKind::Client,
            infer,
            true,
        ),
    ];
    for (name, kind, inference, one_in_flight) in cases {
        let (layer, _recent) = observe_layer(kind, 1.0, Some(inference));
        let mut svc = layer.layer(backend());
        let request_in_flight = one_in_flight.then(|| {
            inflight.enter(&SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ))
        });
        group.bench_function(name, |b| {
            b.iter_batched(
                request,
                |req| exchange(&mut svc, req),
                BatchSize::SmallInput,
            )
        });
        drop(request_in_flight);
    }
    group.finish();
}

/// An observation layer as the sidecar builds one (`build()` in
/// l7inspect-sidecar): an export pipeline with no exporter, the sidecar's
/// sampler (`parentbased_traceidratio`, B3-aware), the default propagators,
/// request histograms; and the pipeline's ring.
fn observe_layer(
    kind: SpanKind,
    ratio: f64,
    inference: Option<ParentInference>,
) -> (ObserveLayer, RecentSpans) {
    let resource = ResourceConfig::default().to_resource("l7inspect", env!("CARGO_PKG_VERSION"));
    let pipeline =
        ExportPipeline::start(ExportConfig::default(), resource).expect("no exporter to build");
    let config = ObserveConfig {
        sampler: SamplerConfig::ParentBasedTraceIdRatio(ratio),
        ..ObserveConfig::new(kind)
    };
    let observer = Observer::new(config, pipeline.sink(), Some(RequestMetrics::default()));
    let observer = match inference {
        Some(i) => observer.with_inference(i),
        None => observer,
    };
    let peer = Peer {
        client: "10.0.0.9:40000".parse().expect("address"),
        server: "10.0.0.5:8080".parse().expect("address"),
    };
    (observer.layer(peer), pipeline.recent())
}

/// The trivial service: a small response, ready at once (its future is
/// [`std::future::Ready`]).
fn backend()
-> impl Service<Request<Empty<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> {
    service_fn(|_req: Request<Empty<Bytes>>| {
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(BODY)))
            .expect("static header");
        ready(Ok(resp))
    })
}

/// A request head as curl sends it, without trace context.
fn request() -> Request<Empty<Bytes>> {
    Request::get("/orders/7")
        .header(header::HOST, "reviews.default.svc.cluster.local:9080")
        .header(header::USER_AGENT, "curl/8.5.0")
        .header(header::ACCEPT, "*/*")
        .body(Empty::new())
        .expect("static request")
}

/// Sends `req` through `svc` and polls the response body to its end;
/// returns the body's length. Panics if anything is not ready at once.
fn exchange<S, B>(svc: &mut S, req: Request<Empty<Bytes>>) -> usize
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(ready) = svc.poll_ready(&mut cx) else {
        panic!("the trivial service is always ready");
    };
    ready.expect("infallible");
    let Poll::Ready(resp) = pin!(svc.call(black_box(req))).poll(&mut cx) else {
        panic!("the trivial service answers at once");
    };
    let mut body = pin!(resp.expect("infallible").into_body());
    let mut len = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                if let Some(data) = frame.expect("infallible").data_ref() {
                    len += data.remaining();
                }
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("an in-memory body is never pending"),
        }
    }
    assert_eq!(len, BODY.len(), "the whole body");
    len
}

criterion_group! {
    name = benches;
    // Short by default so the whole bench suite stays a few minutes; the
    // command line (--warm-up-time, --measurement-time) still wins.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = span
}
criterion_main!(benches);
