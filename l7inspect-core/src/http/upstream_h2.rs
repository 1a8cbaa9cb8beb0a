//! The HTTP/2 side of [`Forward`](super::Forward)'s upstream: requests sent
//! with `h2` directly rather than through hyper's HTTP/2 client.
//!
//! Written by hand because it is the per-request path of every HTTP/2 and
//! gRPC call, and hyper's client costs a task per request there: each
//! request goes through a channel to the connection's task, which spawns a
//! task to wait for the response and another to send the request body, and
//! answers through two oneshot channels. Here the request is opened on the
//! connection by the caller, and the response and the request body are
//! driven by the request's own future, so an exchange costs no task and no
//! channel (a request body still being sent when the response's head
//! arrives, as in a streaming call, goes on on a task of its own). The connection itself still runs
//! on its own task ([`Driver`](super::forward)), as hyper's does. Settings
//! are hyper's client defaults, so the server sees the same connection.

use bytes::Bytes;
use h2::{
    RecvStream, SendStream,
    client::{Connection, ResponseFuture, SendRequest},
};
use http::{HeaderMap, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite};

// hyper's HTTP/2 client defaults (hyper 1.x `proto::h2::client`).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// Starts an HTTP/2 client connection over `io`: the handle that opens
/// streams, and the connection future that must be polled to completion.
pub(crate) async fn handshake<T>(
    io: T,
) -> Result<(SendRequest<Bytes>, Connection<T, Bytes>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
        .enable_push(false)
        .handshake(io)
        .await
}

/// Opens a stream for `req` on `sender` (which must be ready) and returns
/// the exchange: a future of the response that also sends the request body.
pub(crate) fn send(
    sender: &mut SendRequest<Bytes>,
    req: Request<Incoming>,
) -> Result<Exchange, h2::Error> {
    let (parts, body) = req.into_parts();
    let mut head = Request::from_parts(parts, ());
    let eos = body.is_end_stream();
    // As hyper's client does: a body known to be empty is announced as
    // such where the method gives a body meaning.
    if eos
        && !matches!(
            *head.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        )
        && !head.headers().contains_key(header::CONTENT_LENGTH)
    {
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    }
    let (response, stream) = sender.send_request(head, eos)?;
    let pipe = (!eos).then(|| RequestPipe { body, stream });
    Ok(Exchange { response, pipe })
}

/// A request in flight: resolves to the response once its head arrives,
/// sending the request body meanwhile. A body not all sent by then (a
/// streaming call) goes on on a task of its own, as hyper's does, so that it
/// never waits for the client to read the response.
pub(crate) struct Exchange {
    response: ResponseFuture,
    pipe: Option<RequestPipe>,
}

impl Future for Exchange {
    type Output = Result<Response<H2Body>, h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(pipe) = &mut this.pipe
            && pipe.poll(cx).is_ready()
        {
            this.pipe = None;
        }
        let resp = ready!(Pin::new(&mut this.response).poll(cx))?;
        if let Some(mut pipe) = this.pipe.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(std::future::poll_fn(move |cx| pipe.poll(cx)));
        }
        let (parts, recv) = resp.into_parts();
        let remaining = content_length(&parts.headers);
        let body = H2Body {
            recv,
            data_done: false,
            remaining,
        };
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// The rest of a request's body on its way upstream.
struct RequestPipe {
    body: Incoming,
    stream: SendStream<Bytes>,
}

impl RequestPipe {
    /// Sends what the body has, until it ends (ready) or waits (pending).
    /// Failures end the pipe: a body that fails resets the stream, and a
    /// stream the server reset stops the body.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Any send capacity at all: h2 queues a chunk larger than the
            // window and sends it as the window opens, as hyper relies on.
            self.stream.reserve_capacity(1);
            if self.stream.capacity() == 0 {
                loop {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return self.stop(&e),
                        None => return Poll::Ready(()),
                    }
                }
            } else if let Poll::Ready(reset) = self.stream.poll_reset(cx) {
                let e = reset.map_or_else(|e| e, h2::Error::from);
                return self.stop(&e);
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::debug!("client request body failed: {e}");
                    self.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    // Ended without an end-of-stream DATA frame or trailers.
                    let sent = self.stream.send_data(Bytes::new(), true);
                    return sent.map_or_else(|e| self.stop(&e), Poll::Ready);
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let eos = self.body.is_end_stream();
                    if let Err(e) = self.stream.send_data(data, eos) {
                        return self.stop(&e);
                    }
                    if eos {
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.stream.reserve_capacity(0);
                        if let Err(e) = self.stream.send_trailers(trailers) {
                            return self.stop(&e);
                        }
                        return Poll::Ready(());
                    }
                }
            }
        }
    }

    fn stop(&self, e: &h2::Error) -> Poll<()> {
        tracing::debug!("upstream HTTP/2 request body: {e}");
        Poll::Ready(())
    }
}

/// The body of a response from an HTTP/2 upstream: its DATA frames, then
/// its trailers.
#[derive(Debug)]
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is left, if the server sent one.
    remaining: Option<u64>,
}

impl Body for H2Body {
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
                    // The window reopens as the client takes the data, so
                    // a slow client slows the server (backpressure).
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

/// The `content-length` of a response, if it has one that parses.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
