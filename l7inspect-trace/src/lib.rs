//! Tracing for l7inspect: what turns proxied HTTP requests into spans that
//! join distributed traces, and into request metrics.
//!
//! # Layout
//! - `span`: [`SpanRecord`](span::SpanRecord), the one span model of
//!   everything the proxy observes (a request, a connection, a command),
//!   which the exporters and the ring of recent spans read directly.
//! - `observe`: [`Observer`] and [`Observe`]: one observation per HTTP
//!   request, making its span and its request-duration histogram entry
//!   from one classification of the request ([`RequestClass`]).
//! - `propagation`: extract and inject trace context in W3C `traceparent` /
//!   `tracestate`, B3 single and multi header, and Jaeger `uber-trace-id`.
//! - `sampling`: [`Sampler`](sampling::Sampler): the configured sampler,
//!   plus the B3 decisions (sampling-only headers, deferred contexts) a
//!   parent's flags cannot carry; span and trace ids.
//! - `export`: a bounded, non-blocking span queue ([`SpanSink`](export::SpanSink))
//!   in front of OTLP (gRPC, HTTP/protobuf) and Zipkin exporters (over
//!   `http://` or `https://`), and the ring of recent spans.
//! - `inspect`: [`Inspect`](inspect::Inspect), the live view of the ring:
//!   a web page, a JSON span API and a tap stream, for an admin server.
//!
//! # Example
//! A traced service: spans of the requests it answers go to the ring of
//! recent spans (and to a collector, when the export configuration names
//! one).
//! ```
//! use l7inspect_trace::{Observer, ObserveConfig, Peer, export::{ExportConfig, ExportPipeline, ResourceConfig}};
//! use opentelemetry::trace::SpanKind;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = ExportPipeline::start(ExportConfig::default(), ResourceConfig::default().to_resource("demo", "0.1"))?;
//! let observer = Observer::new(ObserveConfig::new(SpanKind::Server), pipeline.sink(), None);
//! let peer = Peer { client: "127.0.0.1:50000".parse()?, server: "127.0.0.1:8080".parse()? };
//! let svc = observer.layer(peer).layer(service_fn(|_: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! drop(svc.oneshot(http::Request::get("/orders").body(String::new())?).await?);
//! assert_eq!(pipeline.recent().snapshot()[0].name, "GET");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod db;
pub mod export;
pub mod infer;
pub mod inspect;
pub mod observe;
pub mod propagation;
pub mod sampling;
pub mod span;

pub use observe::{
    BoundedLabels, DEFAULT_MAX_ATTRIBUTE_LEN, ERROR_MESSAGE_ATTRIBUTE, Observe, ObserveConfig,
    ObserveLayer, ObservedBody, Observer, ParentInference, Peer, PropagationStats, RequestClass,
    RequestMetrics, ResponseFailure, ResponseFuture,
};
pub use propagation::{Extracted, Format, FormatSet, ParsePropagatorsError, Propagators};
