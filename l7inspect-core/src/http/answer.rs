//! Answers a per-request service's error as the proxy answers a server it
//! could not reach: `502 Bad Gateway`, or for gRPC a trailers-only response
//! with status 14 (UNAVAILABLE). So a request stack may hold fallible tower
//! layers (a timeout, load shedding, a filter) and the client still gets an
//! HTTP answer, where hyper would close the connection.

use super::{ResponseBody, forward::unavailable};
use http::{Request, Response};
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
    },
    NotReady {
        error: Option<BoxError>,
        grpc: bool,
    },
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
        let grpc = self.http2 && super::forward::is_grpc(&req);
        match self.not_ready.take() {
            None => AnswerFuture::Called {
                inner: self.inner.call(req),
                grpc,
            },
            Some(error) => AnswerFuture::NotReady {
                error: Some(error),
                grpc,
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
        let (error, grpc) = match self.project() {
            AnswerProj::Called { inner, grpc } => match ready!(inner.poll(cx)) {
                Ok(resp) => return Poll::Ready(Ok(resp.map(Either::Left))),
                Err(e) => (e.into(), *grpc),
            },
            AnswerProj::NotReady { error, grpc } => {
                (error.take().expect("polled after completion"), *grpc)
            }
        };
        tracing::debug!("request failed in the request stack: {error}");
        Poll::Ready(Ok(unavailable(grpc, &error).map(Either::Right)))
    }
}
