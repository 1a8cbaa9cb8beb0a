//! Tracing for l7inspect: what turns proxied HTTP requests into spans that
//! join distributed traces.
//!
//! # Layout
//! - `propagation`: extract and inject trace context in W3C `traceparent` /
//!   `tracestate`, B3 single and multi header, and Jaeger `uber-trace-id`.
//! - `layer`: [`Tracing`] and [`TraceLayer`]: one span per HTTP request.
//! - `sampling`: the configured sampler, plus the B3 decisions (sampling-only
//!   headers, deferred contexts) that the SDK's parent-based sampler cannot
//!   see.
//! - `export`: a bounded, non-blocking span queue in front of OTLP (gRPC,
//!   HTTP/protobuf) and Zipkin exporters.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod export;
mod layer;
pub mod propagation;
pub mod sampling;
pub use layer::{
    Peer, PropagationStats, ResponseFuture, Trace, TraceConfig, TraceLayer, TracedBody, Tracing,
};
pub use propagation::{Extracted, Format, FormatSet, ParsePropagatorsError, Propagators};
