//! The HTTP/1 request-head and idle deadlines of a client connection.
//!
//! hyper's own `header_read_timeout` starts as soon as hyper waits for a
//! head, so on a keep-alive connection it also bounds the wait between
//! requests: it cannot be both a short bound on a head that has started
//! (a slowloris client) and a long one on an idle connection (a pooled
//! one). So the connection's state is tracked here, at the three places
//! that see it change, with one atomic per connection:
//!
//! - [`HeadWatch`], the client stream as hyper reads it: bytes arriving on
//!   an idle connection start a head (`Idle` → `Head`);
//! - the request service, called once a head is complete (→ `Busy`);
//! - [`ResponseEnd`], the response body, dropped by hyper once the response
//!   is written (→ `Idle`).
//!
//! [`Deadlines`], polled by the connection's future, arms one timer for the
//! state it last saw: the head timeout from the moment a head started (more
//! bytes do not push it back, so a trickle is cut as surely as silence),
//! the idle timeout from the end of the last response, none while a request
//! is in flight (the response timeout, if any, is the request's).

use crate::metrics::Timeout;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
/// The head timeout expired: the next read answers 408 and fails.
const EXPIRED: u8 = 3;

/// What the client sees when its request head took too long (haproxy and
/// nginx answer the same), written as the connection closes.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Where an HTTP/1 client connection is: shared by the pieces that see it
/// change (see the module docs).
#[derive(Debug)]
pub(crate) struct Activity(AtomicU8);

impl Activity {
    /// A connection whose first head has started (detection read its first
    /// bytes).
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(AtomicU8::new(HEAD)))
    }

    /// A head is complete and its request is being served.
    pub(crate) fn request_started(&self) {
        self.0.store(BUSY, Ordering::Relaxed);
    }

    /// The response is written: the connection waits for the next request.
    fn response_ended(&self) {
        // Not over `EXPIRED`: that connection is closing.
        let _ = self
            .0
            .compare_exchange(BUSY, IDLE, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        let _ = self
            .0
            .compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client stream as hyper's HTTP/1 server reads it: notes when bytes
/// start a head, and answers `408` once the head timeout has expired.
#[pin_project]
#[derive(Debug)]
pub(crate) struct HeadWatch<I> {
    #[pin]
    io: I,
    activity: Arc<Activity>,
}

impl<I> HeadWatch<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for HeadWatch<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.activity.get() == EXPIRED {
            // hyper is waiting for the rest of a head (nothing else is
            // being written): best effort, the connection closes next.
            let _ = this.io.as_mut().poll_write(cx, REQUEST_TIMEOUT);
            let _ = this.io.as_mut().poll_flush(cx);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head timeout",
            )));
        }
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for HeadWatch<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A response body that marks the connection idle when hyper drops it
/// (once the response is written, or the connection failed).
#[pin_project(PinnedDrop)]
pub(crate) struct ResponseEnd<B> {
    #[pin]
    body: B,
    activity: Arc<Activity>,
}

impl<B> ResponseEnd<B> {
    pub(crate) fn new(body: B, activity: Arc<Activity>) -> Self {
        Self { body, activity }
    }
}

#[pinned_drop]
impl<B> PinnedDrop for ResponseEnd<B> {
    fn drop(self: Pin<&mut Self>) {
        self.activity.response_ended();
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseEnd<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The timer of one HTTP/1 connection: the head or the idle timeout,
/// whichever the connection's state calls for.
#[pin_project]
#[derive(Debug)]
pub(crate) struct Deadlines {
    activity: Arc<Activity>,
    head: Option<Duration>,
    idle: Option<Duration>,
    /// The state the timer was armed for.
    seen: u8,
    armed: bool,
    #[pin]
    sleep: Sleep,
}

impl Deadlines {
    pub(crate) fn new(
        activity: Arc<Activity>,
        head: Option<Duration>,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            activity,
            head,
            idle,
            // Not a state: the first poll arms the timer.
            seen: u8::MAX,
            armed: false,
            sleep: tokio::time::sleep_until(Instant::now()),
        }
    }

    /// Whether a timeout expired. `woke`: the timer may have fired since the
    /// last poll (polling it only then spares a timer registration per poll
    /// of a busy connection); `cx` wakes the connection's task.
    pub(crate) fn poll_expired(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        woke: bool,
    ) -> Poll<Timeout> {
        let mut this = self.project();
        let state = this.activity.get();
        let changed = state != *this.seen;
        if changed {
            *this.seen = state;
            let timeout = match state {
                IDLE => *this.idle,
                HEAD => *this.head,
                _ => None,
            };
            *this.armed = timeout.is_some();
            if let Some(timeout) = timeout {
                this.sleep.as_mut().reset(Instant::now() + timeout);
            }
        }
        if !*this.armed || !(changed || woke) || this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.armed = false;
        Poll::Ready(if state == IDLE {
            Timeout::Idle
        } else {
            this.activity.0.store(EXPIRED, Ordering::Relaxed);
            Timeout::RequestHead
        })
    }
}
