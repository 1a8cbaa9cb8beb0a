//! Spans made through the OpenTelemetry SDK, into the same pipeline as the
//! proxy's own: an embedder's `tracing` spans (with tracing-opentelemetry)
//! or SDK spans go to the same collectors, in the same batches, under the
//! same resource, as the request spans they are children of.

use super::SpanSink;
use crate::span::SpanRecord;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// An OpenTelemetry SDK [`SpanExporter`] that hands each span to a
/// [`SpanSink`], so that spans made through the SDK (a `tracing` span with
/// tracing-opentelemetry, a span from the SDK's tracer) are exported by the
/// pipeline with the request spans.
///
/// Handing over is the sink's non-blocking [`record`](SpanSink::record): a
/// queue push, never I/O. So the SDK's simple processor is the one to use
/// (`with_simple_exporter`): the pipeline batches already, and a second
/// batching stage would only add a thread and a delay.
///
/// What carries over: ids, parent (and whether it is remote), trace flags
/// and state, kind, name, start and end, status and attributes. The span
/// model has no events or links: those are not exported (a `tracing`
/// event inside a span is an event). Spans are exported under the
/// pipeline's resource and instrumentation scope, not the SDK tracer's.
///
/// # Example
/// ```
/// use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig, SdkExporter};
/// use opentelemetry::trace::{Tracer, TracerProvider as _};
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let pipeline = ExportPipeline::start(
///     ExportConfig::default(),
///     ResourceConfig::default().to_resource("my-proxy", "1.0"),
/// )?;
/// let provider = SdkTracerProvider::builder()
///     .with_simple_exporter(SdkExporter::new(pipeline.sink()))
///     .build();
/// provider.tracer("my-proxy").in_span("check-auth", |_cx| {});
/// assert_eq!(pipeline.recent().snapshot()[0].name, "check-auth");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SdkExporter {
    sink: SpanSink,
}

impl SdkExporter {
    /// Exports into `sink` (from [`ExportPipeline::sink`](super::ExportPipeline::sink)).
    pub fn new(sink: SpanSink) -> Self {
        Self { sink }
    }
}

impl SpanExporter for SdkExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        for span in batch {
            self.sink.record(span_record(span));
        }
        std::future::ready(Ok(()))
    }
}

/// The span model's copy of an SDK span.
fn span_record(span: SpanData) -> SpanRecord {
    let cx = &span.span_context;
    let mut record = SpanRecord::new(
        cx.trace_id(),
        cx.span_id(),
        span.span_kind,
        span.name,
        span.start_time,
    );
    record.trace_flags = cx.trace_flags();
    record.trace_state = cx.trace_state().clone();
    record.parent_span_id = span.parent_span_id;
    record.parent_is_remote = span.parent_span_is_remote;
    record.end = span.end_time;
    record.status = span.status;
    record.attributes = span.attributes;
    record
}

#[cfg(test)]
mod tests {
    use super::SdkExporter;
    use crate::export::{ExportConfig, ExportPipeline, ResourceConfig};
    use opentelemetry::trace::{
        Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    #[test]
    fn sdk_spans_keep_their_ids_parent_kind_status_and_attributes() {
        let pipeline = ExportPipeline::start(
            ExportConfig::default(),
            ResourceConfig::default().to_resource("t", "0"),
        )
        .unwrap();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(SdkExporter::new(pipeline.sink()))
            .build();
        let tracer = provider.tracer("t");
        let (parent_cx, child_cx) = tracer.in_span("parent", |cx: Context| {
            let child = tracer
                .span_builder("child")
                .with_kind(SpanKind::Client)
                .with_attributes([KeyValue::new("k", "v")])
                .start_with_context(&tracer, &cx);
            let mut child = child;
            let child_cx = child.span_context().clone();
            child.set_status(Status::error("boom"));
            drop(child);
            (cx.span().span_context().clone(), child_cx)
        });
        let spans = pipeline.recent().snapshot();
        assert_eq!(spans.len(), 2);
        let (child, parent) = (&spans[0], &spans[1]);
        assert_eq!(parent.name, "parent");
        assert_eq!(parent.kind, SpanKind::Internal);
        assert_eq!(parent.span_id, parent_cx.span_id());
        assert_eq!(parent.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert_eq!(child.name, "child");
        assert_eq!(child.kind, SpanKind::Client);
        assert_eq!(child.trace_id, parent_cx.trace_id());
        assert_eq!(child.span_id, child_cx.span_id());
        assert_eq!(child.parent_span_id, parent_cx.span_id());
        assert!(!child.parent_is_remote);
        assert_eq!(child.status, Status::error("boom"));
        assert_eq!(child.attributes, [KeyValue::new("k", "v")]);
        assert!(child.end >= child.start);
        let _ = provider.shutdown();
    }
}
