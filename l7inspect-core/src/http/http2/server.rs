//! The client side: an HTTP/2 connection from a client, served on the
//! connection's own task.

use super::{RecvBody, SendBody};
use crate::http::{body::RequestBody, headers::remove_hop_by_hop, wake::WakeFlag};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, Handshake, SendResponse};
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use pin_project::pin_project;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{BoxError, Service};

// hyper's HTTP/2 server defaults (hyper 1.x `proto::h2::server`).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONN_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER_SIZE: usize = 400 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;

/// Serves one HTTP/2 connection with `S`: each stream is a future polled by
/// this one (no task per stream); resolves when the connection has closed.
pub(crate) struct Server<I, S, B>
where
    S: Service<Request<RequestBody>>,
{
    state: State<I>,
    service: S,
    streams: FuturesUnordered<Stream<S::Future, B>>,
    /// The waker the connection is polled with: it notes that the
    /// connection asked to be polled, so that a wake-up for a stream alone
    /// (an upstream answered) does not also poll the connection.
    conn_wake: WakeFlag,
    /// A graceful shutdown was asked for (possibly before the handshake).
    closing: bool,
}

enum State<I> {
    Handshaking(Handshake<I, Bytes>),
    Serving(Connection<I, Bytes>),
    Closed,
}

impl<I, S, B> Server<I, S, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RequestBody>>,
{
    /// Serves `io` (the client's preface not yet read) with `service`.
    pub(crate) fn new(io: I, service: S) -> Self {
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .handshake(io);
        Self {
            state: State::Handshaking(handshake),
            service,
            streams: FuturesUnordered::new(),
            conn_wake: WakeFlag::new(),
            closing: false,
        }
    }

    /// Starts a graceful shutdown: GOAWAY, no new streams; the streams in
    /// flight finish.
    pub(crate) fn graceful_shutdown(&mut self) {
        self.closing = true;
        if let State::Serving(conn) = &mut self.state {
            conn.graceful_shutdown();
        }
        // The GOAWAY is written when the connection is next polled, which
        // must not wait for the connection to wake us (an idle one never
        // would).
        self.conn_wake.set();
    }
}

impl<I, S, B> Future for Server<I, S, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes, Error: Into<BoxError>>,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.conn_wake.register(cx.waker());
        loop {
            let conn = match &mut this.state {
                State::Handshaking(handshake) => {
                    let mut conn = ready!(Pin::new(handshake).poll(cx))?;
                    if this.closing {
                        conn.graceful_shutdown();
                    }
                    this.state = State::Serving(conn);
                    continue;
                }
                State::Serving(conn) => conn,
                State::Closed => return Poll::Ready(Ok(())),
            };
            // The streams first, so that what they have ready is queued
            // before the connection writes.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            // The connection only if it asked (its I/O is ready, or a
            // stream queued frames), as hyper's connection task is.
            if !this.conn_wake.take() {
                return Poll::Pending;
            }
            let mut conn_cx = this.conn_wake.context();
            let accepted = match this.service.poll_ready(cx) {
                Poll::Ready(Ok(())) => conn.poll_accept(&mut conn_cx),
                Poll::Ready(Err(never)) => match never {},
                // Not ready for another request: the connection is still
                // driven for the streams in flight, and polled again once
                // the service is ready (the service's wake-up, not the
                // connection's).
                Poll::Pending => {
                    let closed = conn.poll_closed(&mut conn_cx);
                    this.conn_wake.set();
                    closed.map(|r| r.err().map(Err))
                }
            };
            match accepted {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let (parts, recv) = req.into_parts();
                    let body = RequestBody::http2(RecvBody::new(recv, &parts.headers));
                    let fut = this.service.call(Request::from_parts(parts, body));
                    this.streams.push(Stream {
                        state: StreamState::Responding { fut },
                        respond: Some(respond),
                    });
                    // More streams may be buffered: accept again.
                    this.conn_wake.set();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.state = State::Closed;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => {
                    this.state = State::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// Nothing in a `Server` needs to stay pinned: its streams are pinned in
// their own allocations by `FuturesUnordered`, the connection is `Unpin`
// with its I/O, and the service is only ever used through `&mut`.
impl<I: Unpin, S: Service<Request<RequestBody>>, B> Unpin for Server<I, S, B> {}

/// One stream: the service's response, then its body.
#[pin_project]
struct Stream<F, B> {
    #[pin]
    state: StreamState<F, B>,
    respond: Option<SendResponse<Bytes>>,
}

#[pin_project(project = StreamStateProj)]
enum StreamState<F, B> {
    Responding {
        #[pin]
        fut: F,
    },
    Sending {
        #[pin]
        body: SendBody<B>,
    },
}

impl<F, B> Future for Stream<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes, Error: Into<BoxError>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let resp = match this.state.as_mut().project() {
            StreamStateProj::Sending { body } => return body.poll(cx),
            StreamStateProj::Responding { fut } => match fut.poll(cx) {
                Poll::Ready(Ok(resp)) => resp,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => {
                    // A client that resets the stream cancels the request:
                    // its future is dropped (as hyper does).
                    let respond = this.respond.as_mut().expect("responding");
                    if let Poll::Ready(reset) = respond.poll_reset(cx) {
                        tracing::debug!("client reset the stream: {reset:?}");
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            },
        };
        let mut respond = this.respond.take().expect("responds once");
        let (mut parts, body) = resp.into_parts();
        // A response made by an inner layer may carry what HTTP/2 forbids.
        remove_hop_by_hop(&mut parts.headers);
        let eos = body.is_end_stream();
        if !eos
            && let Some(len) = body.size_hint().exact()
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        match respond.send_response(Response::from_parts(parts, ()), eos) {
            Ok(stream) if !eos => {
                this.state.set(StreamState::Sending {
                    body: SendBody::new(body, stream, "response body"),
                });
                // Polled now: the body often has its first frame ready.
                match this.state.project() {
                    StreamStateProj::Sending { body } => body.poll(cx),
                    StreamStateProj::Responding { .. } => unreachable!("just set"),
                }
            }
            Ok(_) => Poll::Ready(()),
            Err(e) => {
                tracing::debug!("HTTP/2 response: {e}");
                Poll::Ready(())
            }
        }
    }
}
