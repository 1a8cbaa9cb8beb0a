//! Answers a per-request service's error as the proxy answers a server it
//! could not reach: `502 Bad Gateway`, or for gRPC a trailers-only response
//! with status 14 (UNAVAILABLE). So a request stack may hold fallible tower
//! layers (a timeout, load shedding, a filter) and the client still gets an
//! HTTP answer, where hyper would close the connection.
//!
//! Before any of that, a request whose `Host` fields conflict (see
//! [`check_host`]) is answered `400 Bad Request` here, and never reaches
//! the request stack.

use super::{
    ResponseBody,
    failure::{FailureKind, failure_response},
    headers::{HostRefusal, check_host},
};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Either;
use pin_project::pin_project;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tower::{BoxError, Service};

/// The per-request service as the connection serves it: `S`, with its
/// errors answered.
#[derive(Debug)]
pub(crate) struct AnswerErrors<S> {
    inner: S,
    /// gRPC is looked for in a request only where it can be (HTTP/2), and
    /// only so that an error can be answered in gRPC's terms.
    http2: bool,
    /// The inner service failed to become ready: the next request is
    /// answered with this error rather than given to it.
    not_ready: Option<BoxError>,
}

#[pin_project(project = AnswerProj)]
pub(crate) enum AnswerFuture<F> {
    Called {
        #[pin]
        inner: F,
        grpc: bool,
        http2: bool,
    },
    NotReady {
        error: Option<BoxError>,
        grpc: bool,
        http2: bool,
    },
    /// Refused before the request stack: `400`.
    Refused { refusal: HostRefusal, http2: bool },
}

/// The response body of [`AnswerErrors`]: the inner service's (left), or
/// the proxy's answer to its error (right).
pub(crate) type AnsweredBody<B> = Either<B, ResponseBody>;

impl<S: Clone> Clone for AnswerErrors<S> {
    fn clone(&self) -> Self {
        // A readiness error belongs to the clone that saw it.
        Self::new(self.inner.clone(), self.http2)
    }
}

impl<S> AnswerErrors<S> {
    pub(crate) fn new(inner: S, http2: bool) -> Self {
        Self {
            inner,
            http2,
            not_ready: None,
        }
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for AnswerErrors<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<AnsweredBody<B>>;
    type Error = Infallible;
    type Future = AnswerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A service that fails to become ready fails the request it was
        // about to take, which is answered with the error without reaching
        // it (tower's contract: no call after a failed `poll_ready`).
        if self.not_ready.is_none()
            && let Err(e) = ready!(self.inner.poll_ready(cx))
        {
            self.not_ready = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if let Err(refusal) = check_host(&req) {
            return AnswerFuture::Refused {
                refusal,
                http2: self.http2,
            };
        }
        let grpc = self.http2 && super::forward::is_grpc(&req);
        match self.not_ready.take() {
            None => AnswerFuture::Called {
                inner: self.inner.call(req),
                grpc,
                http2: self.http2,
            },
            Some(error) => AnswerFuture::NotReady {
                error: Some(error),
                grpc,
                http2: self.http2,
            },
        }
    }
}

impl<F, B, E> Future for AnswerFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<AnsweredBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (error, grpc, http2) = match self.project() {
            AnswerProj::Called { inner, grpc, http2 } => match ready!(inner.poll(cx)) {
                Ok(resp) => return Poll::Ready(Ok(resp.map(Either::Left))),
                Err(e) => (e.into(), *grpc, *http2),
            },
            AnswerProj::NotReady { error, grpc, http2 } => (
                error.take().expect("polled after completion"),
                *grpc,
                *http2,
            ),
            AnswerProj::Refused { refusal, http2 } => {
                tracing::debug!("request refused: {}", refusal.description());
                return Poll::Ready(Ok(refused(*refusal, *http2).map(Either::Right)));
            }
        };
        tracing::debug!("request failed in the request stack: {error}");
        let kind = FailureKind::of(&error, FailureKind::RequestLayer);
        Poll::Ready(Ok(
            failure_response(kind, &error, grpc, !http2).map(Either::Right)
        ))
    }
}

/// The `400` for a request refused for its `Host`: the connection closes
/// after it (HTTP/1), as the request's intent is unknown.
fn refused(refusal: HostRefusal, http2: bool) -> Response<ResponseBody> {
    let body = format!("400 Bad Request: {}\n", refusal.description());
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !http2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.map(|()| ResponseBody::full(body))
}
