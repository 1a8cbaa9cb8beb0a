//! What `h2` does not tell: whether a client's header block is unfinished
//! (and since when), and how many header blocks opening a stream the
//! client has sent. A light watcher on the read side of the client's
//! stream that reads only the 9-byte frame headers (after the 24-byte
//! preface) and skips payloads: O(frames) per read, nothing copied but
//! those 9 bytes, no allocation.
//!
//! `h2` decodes a header block whole before anything above it sees a
//! stream, and answers a block it rejects (over the header-list limit:
//! `431`; malformed or over the stream limit: RST_STREAM) without telling
//! its user. Counting the blocks that open a stream here, and the streams
//! `h2` hands over in [`server`](super::server), gives the number rejected
//! exactly, at the points where `h2` has processed everything read: when
//! the last read of the stream was `Pending` (`h2`'s codec reads only once
//! it has decoded every complete frame it holds).
//!
//! So that reads cannot carry an unbounded number of blocks past that
//! check, the watcher stops reading (answers `Pending`, without waking)
//! while more blocks than the budget have been read and not taken in: the
//! server then either takes them in (they were waiting) and the reading
//! goes on, or closes the connection (they were rejected). And so that one
//! poll of the connection decodes at most one read's worth of header
//! blocks (a connection's task must not hold the thread for milliseconds
//! of HPACK while other connections wait), it yields between reads that
//! ended blocks not yet taken in.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// The client connection preface (RFC 9113 3.4) before the first frame.
const PREFACE_LEN: u8 = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// What the watcher learnt, shared between the stream (inside `h2`) and
/// the server (one task: relaxed atomics, written by one side each).
#[derive(Debug)]
pub(crate) struct Watch {
    /// When the connection was made: `open_since` counts from it.
    base: Instant,
    /// When the unfinished header block started, in nanoseconds after
    /// `base`, plus one; 0: none is unfinished.
    open_since: AtomicU64,
    /// Header blocks read in full that open a new stream.
    opened: AtomicU32,
    /// Streams the server took in (written by the server).
    accepted: AtomicU32,
    /// Blocks read past `accepted` beyond which reading pauses (written by
    /// the server; `u32::MAX`: never).
    budget: AtomicU32,
    /// The last read of the stream was `Pending`: `h2` has processed every
    /// complete frame read so far.
    drained: AtomicBool,
}

/// The client's stream, watched: a transparent [`AsyncRead`] +
/// [`AsyncWrite`] whose reads update a [`Watch`].
#[derive(Debug)]
pub(crate) struct Watched<I> {
    io: I,
    watch: Arc<Watch>,
    parser: FrameHeaders,
    /// The last read ended header blocks that open streams.
    fresh_blocks: bool,
}

/// The state of the frame-header parser across reads.
#[derive(Debug)]
struct FrameHeaders {
    /// Bytes of the preface still to skip.
    preface_left: u8,
    /// The frame header being read, and how much of it is in.
    head: [u8; FRAME_HEADER_LEN],
    head_len: u8,
    /// Payload bytes of the current frame still to skip.
    payload_left: u32,
    /// The current frame's type and flags.
    kind: u8,
    flags: u8,
    /// A header block has started and not ended (END_HEADERS not yet
    /// read in full).
    block_open: bool,
    /// A header block has ended since the reader last took this flag.
    block_ended: bool,
    /// The open header block opens a new stream (not trailers).
    block_opens_stream: bool,
    /// The highest stream id a HEADERS frame has named.
    max_stream: u32,
}

// === impl Watch ===

impl Watch {
    /// A watch of a connection made now, reading paused past `budget`
    /// unaccepted blocks.
    pub(crate) fn new(budget: u32) -> Self {
        Self {
            base: Instant::now(),
            open_since: AtomicU64::new(0),
            opened: AtomicU32::new(0),
            accepted: AtomicU32::new(0),
            budget: AtomicU32::new(budget),
            drained: AtomicBool::new(false),
        }
    }

    /// Since when a header block is unfinished, if one is.
    pub(crate) fn open_since(&self) -> Option<Instant> {
        match self.open_since.load(Relaxed) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_nanos(n - 1)),
        }
    }

    /// Notes a stream taken in from `h2`.
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    /// How many header blocks that opened a stream `h2` rejected, if that
    /// is known now: `h2` has processed all that was read (the last read
    /// was `Pending`) and has no stream waiting to be taken in (the
    /// caller's `poll_accept` was `Pending`).
    pub(crate) fn rejected(&self) -> Option<u32> {
        self.drained.load(Relaxed).then(|| self.unaccepted())
    }

    /// Never pause reading again (the connection drains: streams past its
    /// GOAWAY are ignored by design, and the ones in flight need reads).
    pub(crate) fn unlimit(&self) {
        self.budget.store(u32::MAX, Relaxed);
    }

    fn unaccepted(&self) -> u32 {
        self.opened
            .load(Relaxed)
            .wrapping_sub(self.accepted.load(Relaxed))
    }
}

// === impl Watched ===

impl<I> Watched<I> {
    /// Watches `io`, whose first bytes are the client's preface.
    pub(crate) fn new(io: I, watch: Arc<Watch>) -> Self {
        Self {
            io,
            watch,
            parser: FrameHeaders::new(),
            fresh_blocks: false,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let watch = &*this.watch;
        let unaccepted = watch.unaccepted();
        if unaccepted > watch.budget.load(Relaxed) {
            // Not woken: the server wakes the connection once it has taken
            // the waiting streams in, or closes it.
            watch.drained.store(true, Relaxed);
            return Poll::Pending;
        }
        if std::mem::take(&mut this.fresh_blocks) && unaccepted > 1 {
            // The last read ended blocks, and more than one is not taken
            // in: yield (woken at once) before reading more, so that one
            // poll of the connection decodes at most one read of header
            // blocks and the server sees them between reads. A lone
            // request does not pay this extra poll; a batch of requests
            // pays it once per read.
            watch.drained.store(true, Relaxed);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                watch.drained.store(true, Relaxed);
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                watch.drained.store(false, Relaxed);
                let opened = this.parser.feed(&buf.filled()[before..]);
                if opened > 0 {
                    watch.opened.fetch_add(opened, Relaxed);
                    this.fresh_blocks = true;
                }
                let since = watch.open_since.load(Relaxed);
                let ended = std::mem::take(&mut this.parser.block_ended);
                if this.parser.block_open {
                    // A block open at the end of the read is timed from
                    // this read if an earlier one ended in it: back-to-back
                    // requests whose reads end mid-block are not one block.
                    if since == 0 || ended {
                        let nanos = Instant::now().duration_since(watch.base).as_nanos();
                        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
                        watch.open_since.store(nanos + 1, Relaxed);
                    }
                } else if since != 0 {
                    watch.open_since.store(0, Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === impl FrameHeaders ===

impl FrameHeaders {
    fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload_left: 0,
            kind: 0,
            flags: 0,
            block_open: false,
            block_ended: false,
            block_opens_stream: false,
            max_stream: 0,
        }
    }

    /// Follows the frames in `bytes`, the next bytes of the stream; returns
    /// how many header blocks opening a stream ended in them.
    fn feed(&mut self, mut bytes: &[u8]) -> u32 {
        let mut opened = 0;
        if self.preface_left > 0 {
            let n = bytes.len().min(usize::from(self.preface_left));
            // n <= preface_left, a u8.
            self.preface_left -= n as u8;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                // n <= payload_left, a u32.
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    opened += self.frame_end();
                }
                continue;
            }
            let have = usize::from(self.head_len);
            let n = bytes.len().min(FRAME_HEADER_LEN - have);
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            // have + n <= 9.
            self.head_len += n as u8;
            bytes = &bytes[n..];
            if usize::from(self.head_len) == FRAME_HEADER_LEN {
                self.head_len = 0;
                self.frame_start();
                if self.payload_left == 0 {
                    opened += self.frame_end();
                }
            }
        }
        opened
    }

    /// A frame header has been read in full (RFC 9113 4.1).
    fn frame_start(&mut self) {
        let h = &self.head;
        self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        self.kind = h[3];
        self.flags = h[4];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match self.kind {
            HEADERS => {
                self.block_open = true;
                // Stream ids only grow: a HEADERS frame on a stream seen
                // before is trailers (or an error `h2` will catch).
                self.block_opens_stream = stream > self.max_stream;
                self.max_stream = self.max_stream.max(stream);
            }
            PUSH_PROMISE => {
                // A client may not send one: `h2` closes the connection.
                self.block_open = true;
                self.block_opens_stream = false;
            }
            CONTINUATION => self.block_open = true,
            _ => {}
        }
    }

    /// The current frame has been read in full: 1 if it ended a header
    /// block that opens a stream.
    fn frame_end(&mut self) -> u32 {
        let ends_block = matches!(self.kind, HEADERS | PUSH_PROMISE | CONTINUATION)
            && self.flags & END_HEADERS != 0;
        if !ends_block {
            return 0;
        }
        self.block_open = false;
        self.block_ended = true;
        u32::from(std::mem::take(&mut self.block_opens_stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A connection's bytes: preface, SETTINGS, a request (HEADERS with
    /// END_HEADERS), a split block (HEADERS + 2 CONTINUATION), trailers on
    /// stream 1, DATA, an unfinished block on stream 7.
    fn conversation() -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        b.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        b.extend(frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86, 0x84]));
        b.extend(frame(HEADERS, 0, 3, &[0x82]));
        b.extend(frame(CONTINUATION, 0, 3, &[0x86]));
        b.extend(frame(CONTINUATION, END_HEADERS, 3, &[0x84]));
        b.extend(frame(0x0, 0, 1, &[7; 40]));
        b.extend(frame(
            HEADERS,
            END_HEADERS | 0x1,
            1,
            &[0x40, 1, b'a', 1, b'b'],
        ));
        b.extend(frame(HEADERS, 0, 7, &[0x82, 0x86]));
        b
    }

    /// (blocks opening a stream, a block open) after feeding `chunks`.
    fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (u32, bool) {
        let mut p = FrameHeaders::new();
        let opened = chunks.into_iter().map(|c| p.feed(c)).sum();
        (opened, p.block_open)
    }

    #[test]
    fn counts_blocks_that_open_streams() {
        assert_eq!(run([&conversation()[..]]), (2, true));
    }

    #[test]
    fn one_byte_at_a_time() {
        let b = conversation();
        assert_eq!(run(b.chunks(1)), (2, true));
    }

    #[test]
    fn every_split() {
        let b = conversation();
        for at in 0..=b.len() {
            let (x, y) = b.split_at(at);
            assert_eq!(run([x, y]), (2, true), "split at {at}");
        }
    }

    #[test]
    fn a_block_that_ends_is_noted_even_when_another_starts() {
        let mut p = FrameHeaders::new();
        p.feed(PREFACE);
        let mut b = frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86, 0x84]);
        b.extend(&frame(HEADERS, END_HEADERS, 3, &[0x82, 0x86, 0x84])[..10]);
        assert_eq!(p.feed(&b), 1);
        assert!(p.block_open, "the second block is open");
        assert!(std::mem::take(&mut p.block_ended), "the first one ended");
        p.feed(&[0x82]);
        assert!(!p.block_ended, "nothing ended in that read");
    }

    #[test]
    fn block_open_until_end_headers_payload_is_in() {
        let mut p = FrameHeaders::new();
        p.feed(PREFACE);
        let f = frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86, 0x84]);
        // Header in, payload not all in: still open.
        assert_eq!(p.feed(&f[..11]), 0);
        assert!(p.block_open);
        assert_eq!(p.feed(&f[11..]), 1);
        assert!(!p.block_open);
    }
}
