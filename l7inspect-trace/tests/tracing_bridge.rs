//! The request's span seen from inside the request stack, with
//! `ObserveConfig::inner_context` on: its context is in the request's
//! extensions, and a `tracing` span made by a middleware inside (exported
//! through the OpenTelemetry SDK by `tracing-opentelemetry`, as an
//! application embedding the layers would) is its child: same trace, the
//! request span as its local parent. Off, the same span starts a trace of
//! its own, which is what the option fixes.

use http::{Request, Response};
use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig};
use l7inspect_trace::{ObserveConfig, Observer, Peer};
use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::convert::Infallible;
use tower::{Layer, ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt;

/// One request through `Observe` around a middleware that makes a
/// `tracing` span; returns the request's span (from the ring of recent
/// spans), the middleware's span (from the SDK) and the context the
/// middleware found in the request's extensions.
async fn exchange(
    inner_context: bool,
) -> (
    std::sync::Arc<l7inspect_trace::span::SpanRecord>,
    SpanData,
    Option<opentelemetry::Context>,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")));
    let _default = tracing::subscriber::set_default(subscriber);

    let pipeline = ExportPipeline::start(
        ExportConfig::default(),
        ResourceConfig::default().to_resource("bridge", "0"),
    )
    .unwrap();
    let config = ObserveConfig {
        inner_context,
        ..ObserveConfig::new(opentelemetry::trace::SpanKind::Server)
    };
    let observer = Observer::new(config, pipeline.sink(), None);
    let peer = Peer {
        client: "10.0.0.9:40000".parse().unwrap(),
        server: "10.0.0.5:8080".parse().unwrap(),
    };
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let middleware = service_fn(move |req: Request<String>| {
        let seen = seen_tx.clone();
        async move {
            let _ = seen.send(req.extensions().get::<opentelemetry::Context>().cloned());
            let span = tracing::info_span!("check-auth");
            span.in_scope(|| tracing::info!("checked"));
            drop(span);
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }
    });
    let svc = observer.layer(peer).layer(middleware);
    let resp = svc.oneshot(Request::new(String::new())).await.unwrap();
    drop(resp); // ends the request's span
    let request_span = pipeline
        .recent()
        .snapshot()
        .pop()
        .expect("the request's span");
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let _ = provider.shutdown();
    (
        request_span,
        spans.into_iter().next().unwrap(),
        seen_rx.recv().unwrap(),
    )
}

#[tokio::test]
async fn a_tracing_span_inside_is_a_child_of_the_request_span() {
    let (request, child, seen) = exchange(true).await;
    assert_eq!(child.name, "check-auth");
    assert_eq!(child.span_context.trace_id(), request.trace_id);
    assert_eq!(child.parent_span_id, request.span_id);
    assert!(
        !child.parent_span_is_remote,
        "the parent is in this process"
    );
    // And the context itself, for code that reads it without `tracing`.
    let seen = seen.expect("the request's context in its extensions");
    let sc = seen.span().span_context().clone();
    assert_eq!(sc.trace_id(), request.trace_id);
    assert_eq!(sc.span_id(), request.span_id);
    assert!(sc.is_sampled());
}

#[tokio::test]
async fn without_inner_context_the_span_inside_starts_its_own_trace() {
    let (request, child, seen) = exchange(false).await;
    assert!(seen.is_none());
    assert_ne!(child.span_context.trace_id(), request.trace_id);
    assert_eq!(child.parent_span_id, SpanId::INVALID);
}
