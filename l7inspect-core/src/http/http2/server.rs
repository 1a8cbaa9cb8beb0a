//! The client side: an HTTP/2 connection from a client, served on the
//! connection's own task.
//!
//! Besides serving streams, the server enforces what `h2` leaves to its
//! user (see [`watch`](super::watch)): the request-head timeout (an
//! unfinished header block), the idle timeout (no stream in flight), and
//! the budget of rejected header blocks.

use super::watch::{Watch, Watched};
use super::{RecvBody, SendBody};
use crate::http::{HttpConfig, body::RequestBody, headers::remove_hop_by_hop, wake::WakeFlag};
use crate::meta::Direction;
use crate::metrics::{Http2Close, Metrics, Timeout};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::Reason;
use h2::server::{Connection, Handshake, SendResponse};
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use pin_project::pin_project;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

// hyper's HTTP/2 server defaults (hyper 1.x `proto::h2::server`); the
// limits a client can abuse are in `Http2Config`.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONN_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER_SIZE: usize = 400 * 1024;

/// How long a connection the proxy decided to close (a timeout, the
/// rejected-block budget) may take to read its GOAWAY and close before its
/// TCP connection is dropped: a client that reads nothing would otherwise
/// hold it (the GOAWAY never flushes, an idle one never acks the PING).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one HTTP/2 connection with `S`: each stream is a future polled by
/// this one (no task per stream); resolves when the connection has closed.
pub(crate) struct Server<I, S, B>
where
    S: Service<Request<RequestBody>>,
{
    state: State<Watched<I>>,
    service: S,
    streams: FuturesUnordered<Stream<S::Future, B>>,
    /// The waker the connection is polled with: it notes that the
    /// connection asked to be polled, so that a wake-up for a stream alone
    /// (an upstream answered) does not also poll the connection.
    conn_wake: WakeFlag,
    /// A graceful shutdown was asked for (possibly before the handshake).
    closing: bool,
    /// What the frame watcher on the client's stream saw.
    watch: Arc<Watch>,
    limits: Limits,
    /// Where the timeouts and closes are counted.
    metrics: Metrics,
    direction: Direction,
    /// The one timer of the connection, if it has a timeout at all.
    timer: Option<Timer>,
    /// Since when no stream has been in flight (`None`: one is).
    idle_since: Option<Instant>,
    /// The proxy closes the connection on its own account: dropped at this
    /// deadline if it has not closed by then.
    close_by: Option<Instant>,
}

/// The bounds of one connection, from [`HttpConfig`].
#[derive(Clone, Copy, Debug)]
struct Limits {
    head_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_rejected: u32,
}

/// One sleep, re-armed lazily: it may be set earlier than the deadline it
/// serves (it is then re-armed when it fires), never later. A stream
/// starting and ending thus costs no timer operation.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// The deadline the sleep is set to, if it is armed.
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }
}

enum State<I> {
    Handshaking(Handshake<I, Bytes>),
    Serving(Connection<I, Bytes>),
    Closed,
}

/// What the timer was for, when it expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    RequestHead,
    Idle,
    /// The close the proxy started did not finish in [`CLOSE_GRACE`].
    Close,
}

impl<I, S, B> Server<I, S, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RequestBody>>,
{
    /// Serves `io` (the client's preface not yet read) with `service`,
    /// within the limits of `config`, counting timeouts and closes in
    /// `metrics` under `direction`.
    pub(crate) fn new(
        io: I,
        service: S,
        config: &HttpConfig,
        metrics: Metrics,
        direction: Direction,
    ) -> Self {
        let h2 = &config.http2;
        let watch = Arc::new(Watch::new(h2.max_rejected_header_blocks));
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(h2.max_header_list_size)
            .max_local_error_reset_streams(Some(h2.max_local_error_reset_streams))
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
            .max_concurrent_streams(h2.max_concurrent_streams)
            .handshake(Watched::new(io, watch.clone()));
        let limits = Limits {
            head_timeout: config.request_head_timeout,
            idle_timeout: config.idle_timeout,
            max_rejected: h2.max_rejected_header_blocks,
        };
        // One allocation per connection, only if it has a timeout (or, see
        // `close`, once the proxy closes it).
        let timer =
            (limits.head_timeout.is_some() || limits.idle_timeout.is_some()).then(Timer::new);
        Self {
            state: State::Handshaking(handshake),
            service,
            streams: FuturesUnordered::new(),
            conn_wake: WakeFlag::new(),
            closing: false,
            watch,
            limits,
            metrics,
            direction,
            idle_since: limits.idle_timeout.map(|_| Instant::now()),
            timer,
            close_by: None,
        }
    }

    /// Starts a graceful shutdown: GOAWAY, no new streams; the streams in
    /// flight finish.
    pub(crate) fn graceful_shutdown(&mut self) {
        self.closing = true;
        // Streams past the GOAWAY are refused by design, and those in
        // flight need their frames read: no budget while draining.
        self.watch.unlimit();
        if let State::Serving(conn) = &mut self.state {
            conn.graceful_shutdown();
        }
        // The GOAWAY is written when the connection is next polled, which
        // must not wait for the connection to wake us (an idle one never
        // would).
        self.conn_wake.set();
    }

    /// Closes the connection on the proxy's own account: a GOAWAY with
    /// `reason`, graceful (the streams in flight finish) or abrupt (they
    /// end now), and the TCP connection within [`CLOSE_GRACE`] whatever
    /// the client does.
    fn close(&mut self, reason: Reason, abrupt: bool) {
        self.closing = true;
        self.watch.unlimit();
        match &mut self.state {
            State::Serving(conn) if abrupt => conn.abrupt_shutdown(reason),
            State::Serving(conn) => conn.graceful_shutdown(),
            // No connection to send a GOAWAY on yet: dropped.
            State::Handshaking(_) if abrupt => self.state = State::Closed,
            // The GOAWAY follows the handshake (`closing`).
            State::Handshaking(_) | State::Closed => {}
        }
        self.conn_wake.set();
        self.close_by
            .get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
        // With both timeouts off there was no timer: the close deadline
        // needs one.
        self.timer.get_or_insert_with(Timer::new);
    }

    /// Polls the connection's timer; what expired, if anything did.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        let timer = self.timer.as_mut()?;
        let head = match self.close_by {
            // Closing on the proxy's account already.
            Some(_) => None,
            None => self
                .watch
                .open_since()
                .zip(self.limits.head_timeout)
                .map(|(since, d)| (since + d, Expired::RequestHead)),
        };
        let idle = match self.close_by {
            Some(by) => Some((by, Expired::Close)),
            None if self.closing => None,
            None => self
                .idle_since
                .zip(self.limits.idle_timeout)
                .map(|(since, d)| (since + d, Expired::Idle)),
        };
        let (deadline, what) = match (head, idle) {
            (Some(h), Some(i)) => {
                if h.0 <= i.0 {
                    h
                } else {
                    i
                }
            }
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => return None,
        };
        if timer.armed.is_none_or(|armed| armed > deadline) {
            timer.sleep.as_mut().reset(deadline);
            timer.armed = Some(deadline);
        }
        if timer.sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        // Armed earlier than the deadline it now serves: re-armed.
        if Instant::now() < deadline {
            timer.sleep.as_mut().reset(deadline);
            timer.armed = Some(deadline);
            let _ = timer.sleep.as_mut().poll(cx);
            return None;
        }
        timer.armed = None;
        Some(what)
    }

    /// Acts on an expired timer; `true` if the connection must be dropped
    /// now.
    fn expired(&mut self, what: Expired) -> bool {
        match what {
            Expired::RequestHead => {
                tracing::debug!("HTTP/2 header block unfinished at the request-head timeout");
                self.metrics.timed_out(self.direction, Timeout::RequestHead);
                // The connection cannot carry anything else until the block
                // ends: closed now, with the streams in flight.
                self.close(Reason::NO_ERROR, true);
                false
            }
            Expired::Idle => {
                tracing::debug!("HTTP/2 connection idle: GOAWAY");
                self.metrics.timed_out(self.direction, Timeout::Idle);
                self.close(Reason::NO_ERROR, false);
                false
            }
            Expired::Close => {
                tracing::debug!("HTTP/2 connection still open after its GOAWAY: dropped");
                true
            }
        }
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
            match this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Serving(_) => {
                    // The streams first, so that what they have ready is
                    // queued before the connection writes.
                    while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
                }
                State::Handshaking(_) => {}
            }
            if this.limits.idle_timeout.is_some()
                && this.idle_since.is_none()
                && this.streams.is_empty()
            {
                this.idle_since = Some(Instant::now());
            }
            if let Some(what) = this.poll_timer(cx) {
                if this.expired(what) {
                    this.state = State::Closed;
                }
                continue;
            }
            let conn = match &mut this.state {
                State::Handshaking(handshake) => match Pin::new(handshake).poll(cx) {
                    Poll::Ready(Ok(mut conn)) => {
                        if this.closing {
                            conn.graceful_shutdown();
                        }
                        this.state = State::Serving(conn);
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = State::Closed;
                        this.count_error(&e);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Serving(conn) => conn,
                State::Closed => continue,
            };
            // The connection only if it asked (its I/O is ready, or a
            // stream queued frames), as hyper's connection task is.
            if !this.conn_wake.take() {
                return Poll::Pending;
            }
            let mut conn_cx = this.conn_wake.context();
            let ready = this.service.poll_ready(cx);
            let accepted = match ready {
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
                    this.watch.accepted();
                    this.idle_since = None;
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
                    this.count_error(&e);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => {
                    this.state = State::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {
                    // `h2` has nothing left to hand over: if it also has
                    // processed all that was read, every block not taken in
                    // was rejected. (Not while the service was not ready:
                    // then blocks wait in `h2` because nothing asked for
                    // them.)
                    if !this.closing
                        && ready.is_ready()
                        && let Some(rejected) = this.watch.rejected()
                        && rejected > this.limits.max_rejected
                    {
                        tracing::debug!(
                            rejected,
                            "HTTP/2 client past the budget of rejected header blocks: GOAWAY"
                        );
                        this.metrics
                            .http2_closed(this.direction, Http2Close::RejectedHeaderBlocks);
                        this.close(Reason::ENHANCE_YOUR_CALM, true);
                        continue;
                    }
                    // The reads just made may have started a header block:
                    // its deadline is armed before the task parks, or a
                    // client that then goes silent would wait for another
                    // wake-up (the idle timer, or none) to be cut.
                    if let Some(what) = this.poll_timer(cx) {
                        if this.expired(what) {
                            this.state = State::Closed;
                        }
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<I, S: Service<Request<RequestBody>>, B> Server<I, S, B> {
    /// Counts a connection error `h2` closed the connection for (it sent
    /// the GOAWAY), unless the proxy was closing it anyway.
    fn count_error(&self, e: &h2::Error) {
        if self.close_by.is_some() || !(e.is_go_away() && e.is_library()) {
            return;
        }
        let reason = match e.reason() {
            Some(Reason::ENHANCE_YOUR_CALM) => Http2Close::EnhanceYourCalm,
            _ => Http2Close::ProtocolError,
        };
        self.metrics.http2_closed(self.direction, reason);
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
