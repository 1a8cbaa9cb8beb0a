//! The bodies of the messages the proxy forwards: [`RequestBody`] from the
//! client, [`ResponseBody`] back to it.

use super::http2::RecvBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project::pin_project;
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use tower::BoxError;

/// The body of a forwarded response: the server's own (streamed from an
/// HTTP/1 or HTTP/2 upstream connection), or one the proxy wrote itself,
/// such as its `502 Bad Gateway`.
///
/// A request layer that answers on its own builds one with
/// [`ResponseBody::full`] or [`ResponseBody::empty`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseBody {
    #[pin]
    kind: Kind,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind {
    Http1(#[pin] Incoming),
    Http2(#[pin] RecvBody),
    Local(#[pin] Full<Bytes>),
}

impl ResponseBody {
    /// A body made by the proxy, sent whole.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Local(Full::new(data.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The body of a response from an HTTP/1 upstream connection.
    pub(crate) fn http1(body: Incoming) -> Self {
        Self {
            kind: Kind::Http1(body),
        }
    }

    /// The body of a response from an HTTP/2 upstream connection.
    pub(crate) fn http2(body: RecvBody) -> Self {
        Self {
            kind: Kind::Http2(body),
        }
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Http1(b) => b.poll_frame(cx).map_err(Into::into),
            KindProj::Http2(b) => b.poll_frame(cx).map_err(Into::into),
            KindProj::Local(b) => b.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Http1(b) => b.is_end_stream(),
            Kind::Http2(b) => b.is_end_stream(),
            Kind::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Http1(b) => b.size_hint(),
            Kind::Http2(b) => b.size_hint(),
            Kind::Local(b) => b.size_hint(),
        }
    }
}

/// The body of a request from the client, as the proxy received it
/// (HTTP/1 or HTTP/2), streamed.
#[derive(Debug)]
pub struct RequestBody {
    kind: RequestKind,
}

#[derive(Debug)]
enum RequestKind {
    Http1(Incoming),
    Http2(RecvBody),
}

impl RequestBody {
    /// The body of a request received over HTTP/1.
    pub(crate) fn http1(body: Incoming) -> Self {
        Self {
            kind: RequestKind::Http1(body),
        }
    }

    /// The body of a request received over HTTP/2.
    pub(crate) fn http2(body: RecvBody) -> Self {
        Self {
            kind: RequestKind::Http2(body),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            RequestKind::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestKind::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Http1(b) => b.is_end_stream(),
            RequestKind::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Http1(b) => b.size_hint(),
            RequestKind::Http2(b) => b.size_hint(),
        }
    }
}
