//! Protocol sniffing for l7inspect.
//!
//! A transparent proxy sees a TCP connection and nothing else. This crate
//! tells, from the first bytes the client sends, what the connection speaks,
//! so that HTTP can be traced and everything else labelled and passed through.
//!
//! It has two halves:
//! - a **pure function**, [`detect`], over a byte prefix, answering
//!   [`Detection::Found`], [`Detection::NeedMore`] or [`Detection::Unknown`],
//!   [`detect_server_greeting`] for the first bytes of a server that speaks
//!   first (a MySQL greeting), and [`parse_client_hello`] for the SNI, ALPN and versions of a TLS
//!   ClientHello;
//! - a **Tower layer**, [`DetectLayer`], that owns the I/O: it reads the
//!   first bytes of a [`Conn`] (bounded in size and time), races them against
//!   a server that speaks first, and calls its inner service with a
//!   [`Detected`] whose [`PrefixedIo`] replays what it read.
//!
//! The layer is generic over the connection's metadata `M` (anything that
//! implements [`DetectMeta`]) and its stream `I`; l7inspect-core binds them to
//! its `ConnMeta` and a TCP stream.
//!
//! # Example
//!
//! The pure function, on bytes at hand (a captured segment, a fuzz input):
//!
//! ```
//! use l7inspect_detect::{Detection, Protocol, detect};
//!
//! assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detection::Found(Protocol::Http1));
//! assert_eq!(detect(b"GET / HT"), Detection::NeedMore); // a request line cut short
//! assert_eq!(detect(b"\xff\x01garbage"), Detection::Unknown);
//! ```
//!
//! The layer, on a connection: it reads the first bytes, and the inner
//! service gets the outcome and a stream that replays them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use l7inspect_detect::{Conn, DetectConfig, DetectLayer, Detected, Outcome, Protocol};
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(DetectLayer::new(DetectConfig::default()))
//!     .service(service_fn(|d: Detected<(), &'static [u8]>| async move {
//!         Ok::<_, BoxError>(d.outcome)
//!     }));
//! let conn = Conn { meta: (), io: &b"GET / HTTP/1.1\r\n\r\n"[..] };
//! assert_eq!(svc.oneshot(conn).await.unwrap(), Outcome::Protocol(Protocol::Http1));
//! # }
//! ```
//!
//! # Layout
//! - `sniff`: [`detect`], [`detect_server_greeting`], [`Protocol`],
//!   [`Detection`]: the pure detectors.
//! - `tls`: [`parse_client_hello`], [`ClientHello`].
//! - `io`: [`PrefixedIo`].
//! - `layer`: [`DetectLayer`], [`Detect`], [`DetectConfig`], [`DetectMeta`],
//!   [`Conn`], [`Detected`], [`Outcome`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod io;
mod layer;
mod sniff;
mod tls;

#[cfg(test)]
mod fixtures;

pub use io::PrefixedIo;
pub use layer::{
    Conn, Detect, DetectConfig, DetectIoError, DetectLayer, DetectMeta, Detected, Outcome,
    ResponseFuture, SERVER_GREETING_LEN, ServerEvent, SilentClient,
};
pub use sniff::{
    Detection, HTTP2_FRAME_HEADER_LEN, Protocol, detect, detect_server_greeting,
    is_grpc_content_type, is_http2_server_preface,
};
pub use tls::{
    ClientHello, Parsed, ParsedHello, ParsedServerHello, ServerHello, parse_client_hello,
    parse_server_hello, tls_version_name,
};
