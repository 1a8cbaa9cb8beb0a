//! OTLP export: a hand-written protobuf encoder for
//! `ExportTraceServiceRequest` and the two transports, OTLP/HTTP
//! (protobuf body) and OTLP/gRPC (unary `TraceService/Export` over h2c, or
//! h2 over TLS for `https://`).
//!
//! # Why hand-written
//! With 100% sampling, proxying one HTTP/1.1 request cost ~40k instructions
//! (callgrind) and exporting its span through `opentelemetry-otlp` added
//! ~27k more, on the proxy's only thread: ~9k converting `SpanData` into
//! `opentelemetry-proto` structs (every attribute string cloned into a
//! `KeyValue`), ~7k prost encoding (`encoded_len` recomputed at each level
//! of nesting), ~5k dropping those structs, and ~2k for a copy of each
//! `SpanData` out of its `Arc`, because the SDK exporter takes spans by
//! value. [`OtlpEncoder`] writes the same message straight from the shared
//! [`SpanRecord`](crate::span::SpanRecord)s into one reused buffer: no
//! intermediate structs, no string copies, no copy of the spans; typed
//! fields are written as they are, without a `KeyValue` each. The
//! `otlp_encode` bench in `benches/` compares it with the SDK conversion
//! plus prost.
//!
//! # Wire equivalence
//! The output is what `opentelemetry-proto` 0.33's `SpanData` conversion
//! (`group_spans_by_resource_and_scope`) followed by prost's `encode`
//! produces for the same span as a `SpanData` (the attributes in
//! [`SpanRecord::for_each_attribute`](crate::span::SpanRecord::for_each_attribute)
//! order): one `ResourceSpans`, one `ScopeSpans` (`l7inspect`), fields in
//! prost's order, default scalars left out, and minimal varints. The tests
//! decode it with `opentelemetry-proto`'s types and compare it, byte for
//! byte, with that conversion.
//!
//! # Layout
//! - `encode`: [`OtlpEncoder`].
//! - `transport`: the exporter: OTLP/HTTP and OTLP/gRPC over hyper (TLS
//!   from `export::tls`).
//!
//! # Lengths of nested messages
//! A submessage's length precedes it but is only known after it. Instead
//! of a sizing pass over every span (what prost's `encoded_len` does, once
//! per level of nesting), [`begin`] reserves a guessed number of bytes for
//! the length varint and [`end`] writes it once the body is in place. The
//! guesses fit almost always (1 byte for attributes and events, 2 for a
//! span, 3 for the per-batch wrappers); when a length needs more or fewer
//! bytes, the body is moved by the difference with one `copy_within`, so
//! the varint stays minimal and the output byte-identical to prost's.
//! Scalar attributes, the common case, have their lengths computed exactly
//! up front and need no patching at all.

mod encode;
mod transport;

pub use encode::OtlpEncoder;
pub(crate) use transport::OtlpExporter;

#[cfg(test)]
mod tests;
