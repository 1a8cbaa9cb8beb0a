//! The proxy's own answers to failures: what kind of failure it was
//! ([`FailureKind`]), the response the client gets for it, and the
//! [`ProxyError`] that the response carries for the request's span.
//!
//! The client learns the kind of failure and nothing else: never the
//! target's address, nor the OS error, which belong to the operator (the
//! log, rate-limited, and the span's `error.message`), not to whoever can
//! send a request.

use super::{
    ResponseBody, forward::ResponseTimeout, http1::client::SendError, http1::decode::DecodeError,
};
use crate::{connect::ConnectError, ratelimit::RateLimited};
use http::{HeaderValue, Response, StatusCode, header};
use std::{error::Error as StdError, io, sync::Arc, sync::LazyLock};
use tower::BoxError;

/// What kind of failure made the proxy answer instead of the server: the
/// status and the words of the answer, and `error.type` on the span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The upstream connection could not be opened (refused, unreachable):
    /// `502`, gRPC status 14 (UNAVAILABLE).
    ConnectFailed,
    /// Opening the upstream connection timed out: `504`, gRPC status 4
    /// (DEADLINE_EXCEEDED).
    ConnectTimeout,
    /// The server did not start its response within
    /// [`HttpConfig::response_timeout`](super::HttpConfig::response_timeout):
    /// `504`, gRPC status 4.
    ResponseTimeout,
    /// The server closed the connection before its response was complete
    /// (the head, or a framed body cut short): `502`, gRPC 14.
    UpstreamClosed,
    /// Reading from or writing to the server failed (a reset, say): `502`,
    /// gRPC 14.
    UpstreamIo,
    /// The server's response is not valid HTTP: `502`, gRPC 14.
    InvalidResponse,
    /// The client's request body failed (malformed chunked framing, a body
    /// cut short): `400`; the connection closes. Towards an HTTP/2 server
    /// the failure reaches the proxy only as a reset stream, answered as
    /// [`Self::UpstreamIo`].
    InvalidRequestBody,
    /// A request layer failed (a timeout, load shedding: see
    /// [`NewRequestService`](super::NewRequestService)): `502`, gRPC 14.
    RequestLayer,
}

/// Carried in the extensions of a response the proxy made for a failure, so
/// that request layers (the request's span) can record what happened: the
/// [`FailureKind`] and the error's full message, which names the target and
/// the OS error (what the response body leaves out).
#[derive(Clone, Debug)]
pub struct ProxyError {
    kind: FailureKind,
    message: Arc<str>,
}

/// The error of a request body from the client: marks the failure as the
/// client's own (answered `400`), wherever it surfaces.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub(crate) struct ClientBodyError(#[source] pub(crate) BoxError);

// === impl FailureKind ===

impl FailureKind {
    /// The finding of a failed forwarding from its error, by the types in
    /// its source chain (never its text); `fallback` when none is known.
    pub(crate) fn of(error: &BoxError, fallback: FailureKind) -> Self {
        let mut next: Option<&(dyn StdError + 'static)> = Some(&**error);
        while let Some(e) = next {
            if e.is::<ClientBodyError>() {
                return Self::InvalidRequestBody;
            }
            if e.is::<ResponseTimeout>() {
                return Self::ResponseTimeout;
            }
            if let Some(e) = e.downcast_ref::<ConnectError>() {
                return match e.source.kind() {
                    io::ErrorKind::TimedOut => Self::ConnectTimeout,
                    _ => Self::ConnectFailed,
                };
            }
            if let Some(e) = e.downcast_ref::<SendError>() {
                match e {
                    SendError::Closed => return Self::UpstreamClosed,
                    SendError::Io(_) => return Self::UpstreamIo,
                    SendError::Decode(DecodeError::Truncated) => return Self::UpstreamClosed,
                    SendError::Decode(_) => return Self::InvalidResponse,
                    SendError::Body(_) => return Self::InvalidRequestBody,
                }
            }
            if let Some(e) = e.downcast_ref::<DecodeError>() {
                return match e {
                    DecodeError::Truncated => Self::UpstreamClosed,
                    _ => Self::InvalidResponse,
                };
            }
            if let Some(e) = e.downcast_ref::<hyper::Error>() {
                // hyper's client (`preserve_header_case`); a failing request
                // body is found further down the chain.
                if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                    return Self::UpstreamClosed;
                }
                if e.is_parse() || e.is_parse_status() {
                    return Self::InvalidResponse;
                }
                if !e.is_user() && e.source().is_none() {
                    return Self::UpstreamIo;
                }
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                // An I/O error may carry another (its `source` skips it).
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<ClientBodyError>())
                {
                    return Self::InvalidRequestBody;
                }
                return Self::UpstreamIo;
            }
            if e.is::<h2::Error>() {
                // h2's errors carry no source: a client body that failed on
                // its way to an HTTP/2 server shows only as the stream's
                // reset (see `InvalidRequestBody`).
                return Self::UpstreamIo;
            }
            next = e.source();
        }
        fallback
    }

    /// `error.type` on the span: a short, stable identifier.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ConnectFailed => "upstream_connect_failed",
            Self::ConnectTimeout => "upstream_connect_timeout",
            Self::ResponseTimeout => "upstream_response_timeout",
            Self::UpstreamClosed => "upstream_closed",
            Self::UpstreamIo => "upstream_io",
            Self::InvalidResponse => "upstream_invalid_response",
            Self::InvalidRequestBody => "invalid_request_body",
            Self::RequestLayer => "request_layer",
        }
    }

    /// What the client is told, in the body (and gRPC's `grpc-message`).
    pub fn description(&self) -> &'static str {
        match self {
            Self::ConnectFailed => "upstream connection failed",
            Self::ConnectTimeout => "upstream connection timed out",
            Self::ResponseTimeout => "upstream response timed out",
            Self::UpstreamClosed => "upstream closed the connection",
            Self::UpstreamIo => "upstream connection error",
            Self::InvalidResponse => "invalid response from upstream",
            Self::InvalidRequestBody => "invalid request body",
            Self::RequestLayer => "request failed in the proxy",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ConnectTimeout | Self::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::InvalidRequestBody => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC status of the answer to a gRPC call (`None`: answered in
    /// HTTP, as a client error is).
    fn grpc_status(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequestBody => None,
            Self::ConnectTimeout | Self::ResponseTimeout => Some("4"),
            _ => Some("14"),
        }
    }

    /// `grpc-message`: the description, percent-encoded (spaces only).
    fn grpc_message(&self) -> &'static str {
        match self {
            Self::ConnectFailed => "upstream%20connection%20failed",
            Self::ConnectTimeout => "upstream%20connection%20timed%20out",
            Self::ResponseTimeout => "upstream%20response%20timed%20out",
            Self::UpstreamClosed => "upstream%20closed%20the%20connection",
            Self::UpstreamIo => "upstream%20connection%20error",
            Self::InvalidResponse => "invalid%20response%20from%20upstream",
            Self::InvalidRequestBody => "invalid%20request%20body",
            Self::RequestLayer => "request%20failed%20in%20the%20proxy",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

// === impl ProxyError ===

impl ProxyError {
    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error's full message (target address and OS error included):
    /// for the operator's eyes (a span attribute), not the client's.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The proxy's answer to a failed request: `kind`'s status with its
/// description as the body (for gRPC, a trailers-only response with
/// `kind`'s gRPC status, except for a client error, answered in HTTP);
/// `Connection: close` over HTTP/1 for a client error, whose connection is
/// not to be read further. The response carries a [`ProxyError`] with
/// `error`'s message; the client's bytes carry neither.
pub(crate) fn failure_response(
    kind: FailureKind,
    error: &BoxError,
    grpc: bool,
    http1: bool,
) -> Response<ResponseBody> {
    let builder = Response::builder().extension(ProxyError {
        kind,
        message: error.to_string().into(),
    });
    let resp = match kind.grpc_status().filter(|_| grpc) {
        Some(code) => builder
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", code)
            .header("grpc-message", kind.grpc_message())
            .body(ResponseBody::empty()),
        None => {
            let status = kind.status();
            let body = format!("{status}: {kind}\n");
            let mut b = builder
                .status(status)
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if http1 && status.is_client_error() {
                b = b.header(header::CONNECTION, "close");
            }
            b.body(ResponseBody::full(body))
        }
    };
    resp.expect("static header names and values are valid")
}

/// Logs a failure the proxy answered for: every one at debug, with the
/// target and the error; at most one line per 10 s at warn (failures to
/// connect have their own warning, in `connect`; a client's own error is
/// not the operator's to act on).
pub(crate) fn log_failure(kind: FailureKind, target: std::net::SocketAddr, error: &BoxError) {
    static WARN: LazyLock<RateLimited> = LazyLock::new(RateLimited::default);
    tracing::debug!(%target, error.type = kind.as_str(), "upstream failed before responding: {error}");
    if matches!(
        kind,
        FailureKind::ConnectFailed | FailureKind::ConnectTimeout | FailureKind::InvalidRequestBody
    ) {
        return;
    }
    WARN.warn(|suppressed| {
        tracing::warn!(
            %target,
            error.type = kind.as_str(),
            suppressed,
            "upstream failed before responding ({kind}): {error}"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn connect_error(kind: io::ErrorKind) -> BoxError {
        ConnectError {
            target: "10.1.2.3:8080".parse().unwrap(),
            source: io::Error::new(kind, "os says no"),
        }
        .into()
    }

    #[test]
    fn kinds_come_from_the_error_types() {
        use FailureKind::*;
        let cases: Vec<(BoxError, FailureKind)> = vec![
            (
                connect_error(io::ErrorKind::ConnectionRefused),
                ConnectFailed,
            ),
            (connect_error(io::ErrorKind::TimedOut), ConnectTimeout),
            (
                crate::http::forward::ResponseTimeout(std::time::Duration::from_secs(1)).into(),
                FailureKind::ResponseTimeout,
            ),
            (SendError::Closed.into(), UpstreamClosed),
            (
                SendError::Decode(DecodeError::Truncated).into(),
                UpstreamClosed,
            ),
            (
                SendError::Decode(DecodeError::HeadTooLarge).into(),
                InvalidResponse,
            ),
            (
                SendError::Io(io::ErrorKind::ConnectionReset.into()).into(),
                UpstreamIo,
            ),
            (SendError::Body("short".into()).into(), InvalidRequestBody),
            (
                ClientBodyError("bad chunk".into()).into(),
                InvalidRequestBody,
            ),
            (
                io::Error::from(io::ErrorKind::BrokenPipe).into(),
                UpstreamIo,
            ),
            // Found under a wrapper of its own (as hyper's client wraps a
            // failing request body).
            (
                Box::new(io::Error::other(ClientBodyError("bad chunk".into()))),
                InvalidRequestBody,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(FailureKind::of(&error, RequestLayer), want, "{error}");
        }
        let layer: BoxError = "request timed out".into();
        assert_eq!(FailureKind::of(&layer, RequestLayer), RequestLayer);
    }

    /// The body names the kind; the [`ProxyError`] keeps the message, with
    /// the address and the OS error the body leaves out.
    #[tokio::test]
    async fn answers_say_the_kind_and_keep_the_message_aside() {
        let error = connect_error(io::ErrorKind::ConnectionRefused);
        for (kind, status, body) in [
            (
                FailureKind::ConnectFailed,
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: upstream connection failed\n",
            ),
            (
                FailureKind::ConnectTimeout,
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout: upstream connection timed out\n",
            ),
            (
                FailureKind::InvalidRequestBody,
                StatusCode::BAD_REQUEST,
                "400 Bad Request: invalid request body\n",
            ),
        ] {
            let resp = failure_response(kind, &error, false, true);
            assert_eq!(resp.status(), status);
            let proxy_error = resp.extensions().get::<ProxyError>().unwrap();
            assert_eq!(proxy_error.kind(), kind);
            assert!(proxy_error.message().contains("10.1.2.3:8080"));
            assert_eq!(
                resp.headers().get(header::CONNECTION).is_some(),
                status.is_client_error()
            );
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, body.as_bytes());
        }
        let grpc = failure_response(FailureKind::ConnectTimeout, &error, true, false);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "4");
        assert_eq!(
            grpc.headers()["grpc-message"],
            "upstream%20connection%20timed%20out"
        );
    }

    #[test]
    fn grpc_messages_are_the_descriptions_encoded() {
        use FailureKind::*;
        for kind in [
            ConnectFailed,
            ConnectTimeout,
            FailureKind::ResponseTimeout,
            UpstreamClosed,
            UpstreamIo,
            InvalidResponse,
            InvalidRequestBody,
            RequestLayer,
        ] {
            assert_eq!(kind.grpc_message().replace("%20", " "), kind.description());
        }
    }
}
