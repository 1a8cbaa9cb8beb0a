//! The upstream side of an HTTP/1 connection, driven by the futures of the
//! requests it carries: the request's future writes the head and body and
//! reads the response head; the response body reads the rest, and puts the
//! connection back for the next request when the exchange is complete.
//!
//! Written here rather than used from hyper, whose client sends every
//! request through a channel to a task of its own that owns the connection:
//! that costs a task, a channel (its first block of 32 request slots is
//! 10 KiB) and an 8 KiB write buffer per connection, plus two wake-ups per
//! request. Here an idle connection holds its socket and nothing else (the
//! read buffer is freed when empty). docs/benchmarks.md has the figures.
//! hyper's client is still used with `preserve_header_case`, which needs
//! the header-case map that only hyper's server and client share.

use super::decode::{BodyDecoder, DecodeError, Decoded, Framing, Head, content_length, parse_head};
use crate::{connect::UpstreamIo, http::body::RequestBody};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, Version, header, request::Parts};
use http_body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker, ready},
};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;
use tower::BoxError;

/// The first read buffer of an exchange; doubled (up to [`MAX_READ`]) while
/// reads fill it, as hyper's adaptive strategy does.
const INIT_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Body data up to this size is copied behind its chunk header into one
/// write; larger pieces are written from where they are.
const COPY_DATA: usize = 1024;
/// Body data already received, up to about this much, goes with the
/// request head in its write.
const COALESCE: usize = 16 * 1024;

/// One upstream connection, between or during exchanges.
#[derive(Debug)]
pub(crate) struct Conn {
    io: UpstreamIo,
    /// Bytes read and not yet consumed; no allocation while idle.
    buf: BytesMut,
    read_size: usize,
}

/// The upstream connection of one client connection while no request
/// uses it, and what watches it.
#[derive(Debug)]
pub(crate) struct Slot {
    idle: Mutex<Idle>,
    /// Cancelled when an upstream connection ends other than by becoming a
    /// tunnel, so that the client connection closes too.
    closed: CancellationToken,
}

#[derive(Debug, Default)]
struct Idle {
    conn: Option<Conn>,
    /// The waker of the task watching the idle connection: registered with
    /// each connection put back.
    watcher: Option<Waker>,
}

/// Why an exchange failed before the response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Writing or reading the upstream connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection without a response.
    #[error("upstream closed the connection before responding")]
    Closed,
    /// The server's response is not valid HTTP/1.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The request body failed (the client went away mid-body).
    #[error("request body: {0}")]
    Body(#[source] BoxError),
}

/// The body of a response from an HTTP/1 upstream connection. `None` once
/// the exchange is over (or when there was no body).
#[derive(Debug)]
pub(crate) struct ClientBody(Option<Box<Active>>);

/// An exchange whose response body is still being read.
#[derive(Debug)]
struct Active {
    conn: Conn,
    decoder: BodyDecoder,
    /// The rest of the request body, when the server answered before it
    /// was all sent (it goes on being sent while the response is read).
    writer: Option<BodyWriter>,
    keep_alive: bool,
    slot: Arc<Slot>,
}

// === impl Conn ===

impl Conn {
    /// A connection over `io`, not yet used.
    pub(crate) fn new(io: UpstreamIo) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            read_size: INIT_READ,
        }
    }

    /// Reads more of the response into the buffer; `Ready(Ok(0))` at the end
    /// of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == spare && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Whether the idle connection has ended (the server closed it, or sent
    /// something unasked, which only an error or a close can be). Registers
    /// `cx` for its next readiness otherwise.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.io.poll_idle_ended(cx)
    }

    /// Whether the connection is known to have ended, without waiting: the
    /// readiness already recorded says (no system call unless it is set).
    fn has_ended(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_ended(&mut cx).is_ready()
    }

    /// Ready for the next exchange: nothing left over, and the read buffer
    /// freed if nothing shares it.
    fn into_idle(mut self) -> Option<Self> {
        if !self.buf.is_empty() {
            // Bytes past the end of the response: not a server to reuse.
            return None;
        }
        self.buf = BytesMut::new();
        self.read_size = INIT_READ;
        Some(self)
    }

    /// The stream and the bytes read past the response head, for a tunnel.
    pub(crate) fn into_parts(self) -> (UpstreamIo, BytesMut) {
        (self.io, self.buf)
    }
}

// === impl Slot ===

impl Slot {
    /// An empty slot, which cancels `closed` when a connection ends.
    pub(crate) fn new(closed: CancellationToken) -> Self {
        Self {
            idle: Mutex::new(Idle::default()),
            closed,
        }
    }

    /// Takes the idle connection for a request, unless there is none (a
    /// request is using it, or it ended) or it has ended meanwhile.
    pub(crate) fn take(&self) -> Option<Conn> {
        let mut conn = self.lock().conn.take()?;
        if conn.has_ended() {
            self.closed.cancel();
            return None;
        }
        Some(conn)
    }

    /// Puts a connection back after an exchange, or, if it cannot carry
    /// another, closes it and says so.
    fn put(&self, conn: Option<Conn>) {
        let Some(mut conn) = conn.and_then(Conn::into_idle) else {
            self.closed.cancel();
            return;
        };
        let mut idle = self.lock();
        // A request that found the slot empty dialled a connection of its
        // own; the first one back stays, any other closes.
        if idle.conn.is_some() {
            return;
        }
        // The watcher's wake-up is registered with the connection here,
        // rather than by waking the watcher to do it: that would poll the
        // client connection's task once more per request.
        if let Some(watcher) = &idle.watcher
            && conn
                .poll_ended(&mut Context::from_waker(watcher))
                .is_ready()
        {
            drop(idle);
            self.closed.cancel();
            return;
        }
        idle.conn = Some(conn);
    }

    /// Completes when the idle connection ends. While a request uses the
    /// connection, `cx`'s waker is kept, and registered with the connection
    /// when it is put back.
    pub(crate) fn poll_idle_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut idle = self.lock();
        if !idle
            .watcher
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            idle.watcher = Some(cx.waker().clone());
        }
        match idle.conn.as_mut() {
            None => Poll::Pending,
            Some(conn) => {
                ready!(conn.poll_ended(cx));
                idle.conn = None;
                drop(idle);
                self.closed.cancel();
                Poll::Ready(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // Nothing panics while holding it; a poisoned slot is still consistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === send ===

/// Sends `req` over `conn` and reads the response head. A tunnel (a `101`
/// to an upgrade, a `2xx` to `CONNECT`) comes back with the connection,
/// which is the tunnel's from then on.
///
/// The head is encoded here, before the first poll; the [`Exchange`] keeps
/// only what writing the body and reading the response need (a named
/// future rather than an `async fn`, whose state would hold the request
/// as well: it is moved with the request's future, once per request).
pub(crate) fn send(conn: Conn, req: Request<RequestBody>, slot: &Arc<Slot>) -> Exchange {
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let mut writer = BodyWriter::new(&mut parts, body);
    // `Expect: 100-continue` (RFC 9110 10.1.1): the head goes at once, the
    // body once the server says `100` (reading the body is what makes
    // hyper's server send the client its one `100`, so the client sees the
    // server's), or after a bounded wait for a server that ignores the
    // expectation. HTTP/1.0 servers ignore it: nothing to wait for.
    let expect =
        (!writer.ended && parts.version == Version::HTTP_11 && expects_continue(&parts.headers))
            .then(|| Box::pin(tokio::time::sleep(EXPECT_CONTINUE_WAIT)));
    writer.held = expect.is_some();
    Exchange {
        conn: Some(conn),
        method: parts.method,
        upgrade,
        writer: Some(writer),
        write_error: None,
        expect,
        slot: slot.clone(),
    }
}

/// How long a request that expects `100 Continue` waits for it before its
/// body goes anyway (to a server that ignores `Expect`); curl waits as long
/// before it sends the body unasked.
const EXPECT_CONTINUE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the request has `Expect: 100-continue`.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The future of [`send`]: the response head, with the body to read, and
/// the connection for a tunnel.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// `None` once the exchange completed.
    conn: Option<Conn>,
    method: Method,
    /// The request asked for an upgrade.
    upgrade: bool,
    /// The rest of the request; `None` once it is all sent.
    writer: Option<BodyWriter>,
    /// Writing failed: reported if the server does not answer.
    write_error: Option<io::Error>,
    /// The request expects `100 Continue` and its body waits for it: the
    /// bound on that wait (`None` once the body may go).
    expect: Option<Pin<Box<tokio::time::Sleep>>>,
    slot: Arc<Slot>,
}

impl Future for Exchange {
    type Output = Result<(Response<ClientBody>, Option<Conn>), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let conn = this
            .conn
            .as_mut()
            .expect("Exchange polled after completion");
        let head = 'head: loop {
            if let Some(expect) = &mut this.expect
                && expect.as_mut().poll(cx).is_ready()
            {
                // No `100` in time: the body goes (hyper's server sends the
                // client its `100` as it is first read).
                this.expect = None;
                if let Some(w) = this.writer.as_mut() {
                    w.held = false;
                }
            }
            if let Some(w) = this.writer.as_mut() {
                match w.poll_write(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => this.writer = None,
                    // The server may have answered and closed early: read what
                    // it said before reporting the write's failure.
                    Poll::Ready(Err(WriteError::Io(e))) => {
                        this.writer = None;
                        this.write_error = Some(e);
                    }
                    Poll::Ready(Err(WriteError::Body(e))) => {
                        return Poll::Ready(Err(SendError::Body(e)));
                    }
                    Poll::Pending => {}
                }
            }
            loop {
                let mut continued = false;
                let head = parse_head(&mut conn.buf, &this.method, this.upgrade, &mut continued)?;
                if continued && this.expect.take().is_some() {
                    if let Some(w) = this.writer.as_mut() {
                        w.held = false;
                    }
                    if head.is_none() {
                        // The body may go now.
                        continue 'head;
                    }
                }
                if let Some(head) = head {
                    break 'head head;
                }
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        return Poll::Ready(Err(this
                            .write_error
                            .take()
                            .map_or(SendError::Closed, SendError::Io)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Poll::Ready(Err(this.write_error.take().unwrap_or(e).into()));
                    }
                }
            }
        };
        let conn = this.conn.take().expect("checked above");
        Poll::Ready(Ok(this.complete(conn, head)))
    }
}

impl Exchange {
    /// The response once its head is read: its body reads the rest, or,
    /// with no body left either way, the connection goes back at once.
    fn complete(&mut self, conn: Conn, head: Head) -> (Response<ClientBody>, Option<Conn>) {
        let Head {
            parts: head,
            framing,
            keep_alive,
        } = head;
        if framing == Framing::Tunnel {
            return (Response::from_parts(head, ClientBody(None)), Some(conn));
        }
        let mut keep_alive = keep_alive && self.write_error.is_none();
        let decoder = BodyDecoder::new(framing);
        let mut writer = self.writer.take();
        if writer.as_ref().is_some_and(|w| w.held) {
            // A final answer to a request that expected `100 Continue`,
            // before the `100`: the body is not sent, nor read from the
            // client (RFC 9110 10.1.1). The head announced one, so this
            // connection carries nothing more; hyper's server closes the
            // client's after the answer, as the body was never asked for
            // (RFC 9112 9.6).
            writer = None;
            keep_alive = false;
        }
        self.expect = None;
        if decoder.is_done() && writer.is_none() {
            self.slot.put(keep_alive.then_some(conn));
            return (Response::from_parts(head, ClientBody(None)), None);
        }
        let active = Active {
            conn,
            decoder,
            writer,
            keep_alive,
            slot: self.slot.clone(),
        };
        (
            Response::from_parts(head, ClientBody(Some(Box::new(active)))),
            None,
        )
    }
}

// === impl ClientBody ===

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(active) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = active.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Done or failed: put the connection back, or close it.
            if let Some(active) = self.0.take() {
                active.finish();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|a| a.decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|a| a.decoder.remaining()) {
            None => SizeHint::with_exact(0),
            Some(Some(n)) => SizeHint::with_exact(n),
            Some(None) => SizeHint::default(),
        }
    }
}

impl Active {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(w) = self.writer.as_mut() {
            match w.poll_write(&mut self.conn.io, cx) {
                Poll::Ready(Ok(())) => self.writer = None,
                // The server stopped reading: the response goes on; the
                // connection is not reused.
                Poll::Ready(Err(WriteError::Io(_))) => {
                    self.writer = None;
                    self.keep_alive = false;
                }
                // The client's body failed (malformed framing, or it went
                // away) while the response streams: the request will never
                // be whole, so the exchange ends here, both ways. The
                // response fails (hyper's server closes the client's
                // connection), and the upstream one, which has a partial
                // body, closes (`finish`).
                Poll::Ready(Err(WriteError::Body(e))) => {
                    self.writer = None;
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
        }
        loop {
            match self.decoder.decode(&mut self.conn.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::Incomplete) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => {
                    if let Err(e) = self.decoder.eof() {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    self.keep_alive = false;
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

impl Active {
    /// Ends the exchange: complete both ways, the connection can carry the
    /// next request; otherwise (the client went away mid-response, the
    /// request body is unsent, or the server closes) it closes.
    fn finish(self: Box<Self>) {
        let Active {
            conn,
            decoder,
            writer,
            keep_alive,
            slot,
        } = *self;
        let reusable = keep_alive && decoder.is_done() && writer.is_none();
        slot.put(reusable.then_some(conn));
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(active) = self.0.take() {
            active.finish();
        }
    }
}

// === BodyWriter ===

/// Writes a request's head and body in HTTP/1 framing: as they are with
/// `Content-Length`, chunked otherwise.
#[derive(Debug)]
struct BodyWriter {
    body: RequestBody,
    /// Framing and copied data not yet written.
    out: BytesMut,
    /// A larger piece of data, written after `out`.
    data: Bytes,
    framing: WriteFraming,
    ended: bool,
    /// The body waits (for `100 Continue`): only the head is written.
    held: bool,
    /// Nothing written yet.
    head_unsent: bool,
}

#[derive(Debug, Clone, Copy)]
enum WriteFraming {
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    /// Chunked; `true` once a chunk's data needs its closing CRLF.
    Chunked(bool),
}

enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

impl BodyWriter {
    fn new(parts: &mut Parts, body: RequestBody) -> Self {
        // The length, read as the response's is (hyper's server has already
        // refused lists and bad values); a value that does not read as one
        // number is not passed on beside chunked framing.
        let length = content_length(&parts.headers).unwrap_or_else(|_| {
            parts.headers.remove(header::CONTENT_LENGTH);
            None
        });
        let ended = body.is_end_stream();
        let chunked = length.is_none() && !ended && parts.version != Version::HTTP_10;
        let mut out = BytesMut::with_capacity(128 + parts.headers.len() * 32);
        encode_head(parts, chunked, &mut out);
        let framing = match length {
            Some(n) => WriteFraming::Length(n),
            None if chunked => WriteFraming::Chunked(false),
            // No framing for a body (an HTTP/1.0 request without a length
            // has none).
            None => WriteFraming::Length(0),
        };
        Self {
            ended: ended || (length.is_none() && !chunked),
            body,
            out,
            data: Bytes::new(),
            framing,
            held: false,
            head_unsent: true,
        }
    }

    /// Writes until everything is sent (`Ready(Ok)`), or the socket or the
    /// body must wait.
    fn poll_write(
        &mut self,
        io: &mut UpstreamIo,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        if self.head_unsent {
            // Before the head's write, the body the client has already sent
            // joins it (one write, not two): and a body whose framing fails
            // within those bytes fails before the server sees one of them.
            // A body still to come does not hold the head back.
            self.head_unsent = false;
            while !self.ended && !self.held && self.data.is_empty() && self.out.len() < COALESCE {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(frame) => self.on_frame(frame)?,
                    Poll::Pending => break,
                }
            }
        }
        loop {
            while !self.out.is_empty() || !self.data.is_empty() {
                let n = if self.data.is_empty() {
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.out))
                } else if self.out.is_empty() {
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.data))
                } else {
                    let slices = [io::IoSlice::new(&self.out), io::IoSlice::new(&self.data)];
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))
                }
                .map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                let from_out = n.min(self.out.len());
                let _ = self.out.split_to(from_out);
                let _ = self.data.split_to(n - from_out);
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if self.held {
                // Woken by the response's read or the wait's bound.
                return Poll::Pending;
            }
            let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
            self.on_frame(frame)?;
        }
    }

    /// Queues what the body gave: data, trailers, its end or its failure.
    fn on_frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, BoxError>>,
    ) -> Result<(), WriteError> {
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.queue_data(data)?,
                Err(frame) => {
                    if let (Ok(trailers), WriteFraming::Chunked(crlf)) =
                        (frame.into_trailers(), self.framing)
                    {
                        self.end_chunked(crlf, Some(&trailers));
                    }
                    // Without chunked framing trailers cannot be sent.
                }
            },
            Some(Err(e)) => return Err(WriteError::Body(e)),
            None => match self.framing {
                WriteFraming::Chunked(crlf) => self.end_chunked(crlf, None),
                WriteFraming::Length(0) => self.ended = true,
                WriteFraming::Length(_) => {
                    return Err(WriteError::Body(
                        "request body shorter than its content-length".into(),
                    ));
                }
            },
        }
        Ok(())
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            WriteFraming::Length(left) => {
                let len = data.len() as u64;
                if len > *left {
                    return Err(WriteError::Body(
                        "request body longer than its content-length".into(),
                    ));
                }
                *left -= len;
            }
            WriteFraming::Chunked(crlf) => {
                if std::mem::replace(crlf, true) {
                    self.out.put_slice(b"\r\n");
                }
                put_hex(&mut self.out, data.len());
                self.out.put_slice(b"\r\n");
            }
        }
        if data.len() <= COPY_DATA {
            self.out.put_slice(&data);
        } else {
            self.data = data;
        }
        Ok(())
    }

    fn end_chunked(&mut self, crlf: bool, trailers: Option<&HeaderMap>) {
        if self.ended {
            return;
        }
        if crlf {
            self.out.put_slice(b"\r\n");
        }
        self.out.put_slice(b"0\r\n");
        for (name, value) in trailers.into_iter().flatten() {
            put_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
        }
        self.out.put_slice(b"\r\n");
        self.ended = true;
    }
}

/// Writes the request line and the header fields (names lowercase, as the
/// `http` crate stores them), with `Transfer-Encoding: chunked` when
/// `chunked`.
fn encode_head(parts: &Parts, chunked: bool, out: &mut BytesMut) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let uri = &parts.uri;
    match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        // Origin form, the usual case: written as it came.
        (None, None, Some(pq)) => out.put_slice(pq.as_str().as_bytes()),
        // Authority form (CONNECT) and absolute form, as hyper writes them.
        _ if parts.method == Method::CONNECT && uri.authority().is_some() => {
            out.put_slice(uri.authority().map_or("", |a| a.as_str()).as_bytes());
        }
        _ => {
            use std::fmt::Write as _;
            let _ = write!(out, "{uri}");
        }
    }
    out.put_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &parts.headers {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"\r\n");
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_hex(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}
