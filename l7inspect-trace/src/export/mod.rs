//! Span export: a bounded, non-blocking hand-off from finished spans to
//! OTLP (gRPC or HTTP/protobuf) and Zipkin v2 JSON collectors, over
//! `http://` or `https://` (TLS as [`TlsConfig`] says), plus an
//! in-memory ring of recent spans. Both wire formats are encoded here,
//! straight from the finished spans ([`OtlpEncoder`], [`encode_zipkin`]).
//!
//! # How spans flow
//! Span sources (the request layer [`Observe`](crate::Observe), and any
//! other) hand each finished, sampled [`SpanRecord`](crate::span::SpanRecord)
//! to a [`SpanSink`]. [`SpanSink::record`] runs in the middle of request
//! handling, so it only does constant-time work: one `Arc` and a `try_send`
//! into a bounded queue of [`ExportConfig::queue_size`] spans. A background
//! Tokio task takes spans off the queue, puts them in the [`RecentSpans`]
//! ring (one lock per wake-up, not per span), and exports a batch when it
//! holds [`ExportConfig::max_batch`] spans or its oldest span has waited
//! [`ExportConfig::batch_delay`], whichever comes first, to every configured
//! exporter at once.
//!
//! # Hand-off guarantees
//! - `record` never blocks, awaits, allocates more than the one `Arc`, or
//!   does I/O; a slow or dead collector cannot slow the caller.
//! - A span recorded while the queue is full is dropped for export and
//!   counted (`queue_full`); it still goes into the ring. Nothing ever waits
//!   for room.
//! - Each export is bounded by its exporter's timeout. A batch that fails
//!   or times out is dropped for that exporter and counted
//!   (`export_failed`, once per span per exporter); it is not retried.
//!   While an export is in flight the queue keeps filling, so a stalled
//!   collector turns into `queue_full` drops, not memory growth.
//! - [`ExportPipeline::shutdown`] stops taking spans (later ones count as
//!   `shutdown`), exports what is queued until its deadline, and counts
//!   what is left as `shutdown`.
//! - With no exporter configured there is no queue and no task: `record`
//!   puts spans in the ring itself.
//!
//! Every sampled span that reaches `record` is therefore, per exporter,
//! either exported or counted in exactly one drop reason.
//!
//! # Example
//! ```
//! use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig};
//! use l7inspect_trace::span::SpanRecord;
//! use opentelemetry::trace::{SpanKind, SpanId, TraceId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env = l7inspect_trace::export::from_otel_env(|k| std::env::var(k).ok())?;
//! let resource = ResourceConfig {
//!     service_name: env.service_name.unwrap_or_else(|| "my-host".into()),
//!     attributes: env.resource_attributes,
//! }
//! .to_resource("l7inspect", env!("CARGO_PKG_VERSION"));
//! let pipeline = ExportPipeline::start(env.export, resource)?;
//! let span = SpanRecord::new(TraceId::from(1u128), SpanId::from(2u64), SpanKind::Server, "GET", std::time::SystemTime::now());
//! pipeline.sink().record(span);
//! pipeline.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod config;
mod console;
pub mod env;
mod otlp;
mod pipeline;
mod recent;
mod sdk;
mod stats;
mod tls;
mod zipkin;

pub use config::{
    Compression, DEFAULT_BATCH_DELAY, DEFAULT_EXPORT_TIMEOUT, DEFAULT_MAX_BATCH,
    DEFAULT_QUEUE_SIZE, DEFAULT_RECENT_CAPACITY, ExportConfig, OtlpConfig, OtlpProtocol, PemFile,
    ResourceConfig, SamplerConfig, TlsConfig, UNKNOWN_SERVICE, ZipkinConfig,
};
pub use env::{
    EnvError, OtelEnv, OtelOverrides, Override, VARIABLES, from_otel_env, from_otel_env_with,
};
pub use otlp::OtlpEncoder;
pub use pipeline::{ExportBuildError, ExportPipeline, FlushOutcome, SpanSink};
pub use recent::{RecentSpan, RecentSpans};
pub use sdk::SdkExporter;
pub use stats::{DropReason, ExportStats, ExporterKind};
pub use zipkin::encode_zipkin;

/// An error with its sources, `outer: inner: ...` (a client's "client error
/// (Connect)" says little; the OS error at the end of its chain says why),
/// each source skipped when the text before already carries it.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = source.source();
    }
    out
}

#[cfg(test)]
mod error_chain_tests {
    #[test]
    fn sources_are_joined_once() {
        let os = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped = std::io::Error::other(os);
        // io::Error::other displays its source: not repeated.
        let text = super::error_chain(&wrapped);
        assert_eq!(text, "connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Client(#[source] std::io::Error);
        let text = super::error_chain(&Client(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(text, "client error (Connect): connection refused");
    }
}
