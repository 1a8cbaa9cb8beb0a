//! HTTP/2 on both sides of the proxy, with `h2` directly rather than
//! through hyper's HTTP/2 server and client.
//!
//! Written by hand because it is the per-request path of every HTTP/2 and
//! gRPC call, and hyper costs a task per request on each side there: its
//! server spawns one per stream, and its client sends each request through
//! a channel to the connection's task, which spawns a task to wait for the
//! response (and another to send the request body) and answers through two
//! oneshot channels. Here a connection's streams are futures polled by the
//! connection's own task ([`server`]), and a request is opened on the
//! upstream connection by that stream's future, which also awaits the
//! response and sends the request body ([`client`]): no task, channel or
//! oneshot per request. Each upstream connection still runs on a task of
//! its own, as hyper's does. Settings are hyper's defaults on each side, so
//! peers see the connections they saw before.
//!
//! This module holds what both sides share: a stream's received body
//! ([`RecvBody`]) and sending a body on a stream ([`SendBody`]).

pub(crate) mod client;
pub(crate) mod server;
mod watch;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tower::BoxError;

/// A body received on an HTTP/2 stream: its DATA frames, then its trailers.
/// Taking data reopens the flow-control window by as much, so a slow reader
/// slows the sender (backpressure).
#[derive(Debug)]
pub(crate) struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is left, if the message had one.
    remaining: Option<u64>,
}

impl RecvBody {
    /// The body of a message with `headers`, arriving on `recv`.
    pub(crate) fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Self {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// Sends a body on an HTTP/2 stream, frame by frame, as the peer's window
/// allows; completes when the body has ended (or failed: the stream is
/// reset) or the peer reset the stream.
#[pin_project]
pub(crate) struct SendBody<B> {
    #[pin]
    body: B,
    stream: SendStream<Bytes>,
    /// What is being sent, for the log line of a failure.
    what: &'static str,
}

impl<B> SendBody<B> {
    pub(crate) fn new(body: B, stream: SendStream<Bytes>, what: &'static str) -> Self {
        Self { body, stream, what }
    }
}

impl<B> Future for SendBody<B>
where
    B: Body<Data = Bytes, Error: Into<BoxError>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let stream = this.stream;
        let what = *this.what;
        let stop = |e: h2::Error| {
            tracing::debug!("HTTP/2 {what}: {e}");
            Poll::Ready(())
        };
        loop {
            // Any send capacity at all: h2 queues a chunk larger than the
            // window and sends it as the window opens (as hyper does).
            stream.reserve_capacity(1);
            if stream.capacity() == 0 {
                loop {
                    match ready!(stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return stop(e),
                        None => return Poll::Ready(()),
                    }
                }
            } else if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return stop(reset.map_or_else(|e| e, h2::Error::from));
            }
            let frame = match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    let e = e.into();
                    tracing::debug!("HTTP/2 {what} failed: {e}");
                    stream.send_reset(reset_reason(&*e));
                    return Poll::Ready(());
                }
                None => {
                    // Ended without an end-of-stream DATA frame or trailers.
                    return match stream.send_data(Bytes::new(), true) {
                        Ok(()) => Poll::Ready(()),
                        Err(e) => stop(e),
                    };
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let eos = this.body.is_end_stream();
                    if let Err(e) = stream.send_data(data, eos) {
                        return stop(e);
                    }
                    if eos {
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.reserve_capacity(0);
                        return match stream.send_trailers(trailers) {
                            Ok(()) => Poll::Ready(()),
                            Err(e) => stop(e),
                        };
                    }
                }
            }
        }
    }
}

/// The reset to send on for a body that failed: the peer's own reason when
/// the body failed because the other side reset its stream (a client's
/// CANCEL goes on as CANCEL), else INTERNAL_ERROR.
fn reset_reason(mut e: &(dyn std::error::Error + 'static)) -> Reason {
    loop {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        match e.source() {
            Some(source) => e = source,
            None => return Reason::INTERNAL_ERROR,
        }
    }
}
