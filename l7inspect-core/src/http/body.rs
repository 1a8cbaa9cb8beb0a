//! The bodies of the messages the proxy forwards: [`RequestBody`] from the
//! client, [`ResponseBody`] back to it.

use super::{failure::ClientBodyError, http1::client::ClientBody, http2::RecvBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use tower::BoxError;

/// The body of a request from the client, as the proxy received it
/// (HTTP/1 or HTTP/2), streamed.
#[derive(Debug)]
pub struct RequestBody(Streamed);

/// The body of a forwarded response: the server's own (streamed from an
/// HTTP/1 or HTTP/2 upstream connection), or one the proxy wrote itself,
/// such as its `502 Bad Gateway`.
///
/// A request layer that answers on its own builds one with
/// [`ResponseBody::full`] or [`ResponseBody::empty`], or the whole response
/// with [`local_response`].
#[derive(Debug)]
pub struct ResponseBody(Kind);

#[derive(Debug)]
enum Kind {
    Streamed(Streamed),
    /// From our own HTTP/1 client (see `http1::client`).
    Http1Upstream(ClientBody),
    Local(Full<Bytes>),
}

/// A body arriving from a peer, in either HTTP version: what both the
/// request's and the response's bodies are when the proxy forwards them.
#[derive(Debug)]
enum Streamed {
    Http1(Incoming),
    Http2(RecvBody),
}

// === impl RequestBody ===

impl RequestBody {
    /// The body of a request received over HTTP/1.
    pub(crate) fn http1(body: Incoming) -> Self {
        Self(Streamed::Http1(body))
    }

    /// The body of a request received over HTTP/2.
    pub(crate) fn http2(body: RecvBody) -> Self {
        Self(Streamed::Http2(body))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    /// An error (the client's framing is malformed, or it went away
    /// mid-body) comes as a `ClientBodyError`, so that wherever forwarding
    /// fails because of it, the failure is known to be the client's.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_frame(cx).map_err(|e| ClientBodyError(e).into())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A response made by the proxy itself, for a request layer that answers
/// without forwarding: `status`, `headers` (a `Content-Length` is added
/// from `body`) and `body`, sent whole.
///
/// ```
/// use http::{HeaderValue, StatusCode, header};
///
/// let resp = l7inspect_core::local_response(
///     StatusCode::FORBIDDEN,
///     [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
///     "forbidden\n",
/// );
/// assert_eq!(resp.status(), StatusCode::FORBIDDEN);
/// assert_eq!(resp.headers()[header::CONTENT_LENGTH], "10");
/// ```
pub fn local_response(
    status: http::StatusCode,
    headers: impl IntoIterator<Item = (http::HeaderName, http::HeaderValue)>,
    body: impl Into<Bytes>,
) -> http::Response<ResponseBody> {
    let body = body.into();
    let mut resp = http::Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (name, value) in headers {
        h.append(name, value);
    }
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    *resp.body_mut() = ResponseBody::full(body);
    resp
}

// === impl ResponseBody ===

impl ResponseBody {
    /// A body made by the proxy, sent whole.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self(Kind::Local(Full::new(data.into())))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The body of a response from an HTTP/1 upstream connection.
    pub(crate) fn http1(body: Incoming) -> Self {
        Self(Kind::Streamed(Streamed::Http1(body)))
    }

    /// The body of a response from an HTTP/2 upstream connection.
    pub(crate) fn http2(body: RecvBody) -> Self {
        Self(Kind::Streamed(Streamed::Http2(body)))
    }

    /// The body of a response read by our own HTTP/1 client.
    pub(crate) fn http1_upstream(body: ClientBody) -> Self {
        Self(Kind::Http1Upstream(body))
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Streamed(b) => b.poll_frame(cx),
            Kind::Http1Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Streamed(b) => b.is_end_stream(),
            Kind::Http1Upstream(b) => b.is_end_stream(),
            Kind::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Streamed(b) => b.size_hint(),
            Kind::Http1Upstream(b) => b.size_hint(),
            Kind::Local(b) => b.size_hint(),
        }
    }
}

// === impl Streamed ===

// Every variant is `Unpin`, so no pin projection is needed.
impl Streamed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Streamed::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Streamed::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Streamed::Http1(b) => b.is_end_stream(),
            Streamed::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Streamed::Http1(b) => b.size_hint(),
            Streamed::Http2(b) => b.size_hint(),
        }
    }
}
