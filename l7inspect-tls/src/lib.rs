//! TLS for l7inspect, as Tower layers: inbound termination with a
//! certificate reloaded when its files change ([`Terminator`],
//! [`TerminateTargetLayer`]), and one span per TLS connection that passes
//! through ([`PassthroughSpans`]), both applied by [`TlsLayer`].
//!
//! rustls with the `ring` provider; certificates and keys are PEM files.
//!
//! - **Termination**: [`Terminator::new`] loads and checks the pair
//!   ([`CertPair::load`]: a missing, unreadable, mismatched or expired pair
//!   is an error naming the file), then [`ReloadingCert`] watches the
//!   files. [`Terminator::target_layer`] (before the upstream connect)
//!   sends the plaintext to the application's port on loopback;
//!   [`TlsLayer::with_termination`] (after detection) does the handshake
//!   and hands the plaintext on, detected again, as a [`TlsIo`].
//! - **Passthrough spans**: a TLS connection that is not terminated passes
//!   through byte for byte; [`TlsLayer::with_spans`] gives it a span (the
//!   one span model of l7inspect-trace, `SpanRecord`) named after its SNI,
//!   with the versions and ALPN offered and chosen, and the bytes each way.
//!
//! # Example
//!
//! The smallest use: spans for the TLS passing through, nothing
//! terminated (the whole stack is in [`TlsLayer`]'s example):
//!
//! ```
//! use l7inspect_tls::{PassthroughSpans, TlsLayer};
//! use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig, SamplerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let resource = ResourceConfig::default().to_resource("my-proxy", "0.1.0");
//! let pipeline = ExportPipeline::start(ExportConfig::default(), resource)?;
//! let tls = TlsLayer::new().with_spans(PassthroughSpans::new(pipeline.sink(), SamplerConfig::default()));
//! # let _ = tls;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod certs;
mod intercept;
mod io;
mod layer;
mod metrics;
mod passthrough;
mod terminate;

pub use certs::{CertError, CertPair, ReloadingCert};
pub use intercept::{
    InterceptConfig, InterceptError, Interceptor, ParseSniPatternError, SniPattern, make_ca,
};
pub use io::{TlsIo, Watched};
pub use layer::{ResponseFuture, Tls, TlsLayer};
pub use metrics::{
    DEFAULT_MAX_SERVER_NAMES, ReasonLabels, ResultLabels, ServerNameLabels, TlsMetrics,
    VersionLabels,
};
pub use passthrough::{
    BYTES_TO_CLIENT, BYTES_TO_SERVER, CLIENT_ALPN, CLIENT_VERSIONS, PassthroughSpans,
    UPSTREAM_ERROR,
};
pub use terminate::{
    ParsePortError, TerminateConfig, TerminateError, TerminatePort, TerminateTarget,
    TerminateTargetLayer, Terminator,
};
