//! [`TlsIo`]: the client stream after the TLS layer, as bytes that came
//! (maybe watched for a span) or as the plaintext of a terminated session.

use crate::passthrough::Watch;
use l7inspect_detect::PrefixedIo;
use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// The client stream as [`Tls`](crate::Tls) hands it on (inside the
/// `PrefixedIo` that replays what detection read).
pub enum TlsIo<I> {
    /// The bytes as the client sent them: not TLS, or TLS passed through.
    /// A TLS connection passed through is watched for its span (bytes each
    /// way, the server's hello) when spans are on.
    Plain(Watched<I>),
    /// The plaintext of a TLS session the proxy terminated (over the
    /// client stream, replaying the ClientHello to the handshake). (Boxed: a session is a few
    /// kilobytes, which a connection that is not terminated should not
    /// carry.)
    Terminated(Box<TlsStream<PrefixedIo<I>>>),
}

/// A stream that, when watched (spans on), counts its bytes and reads the
/// server's first flight as it is written to the client; the span is
/// recorded once the stream is dropped (the connection is over) and the
/// future of the service that relayed it has ended (see [`Tls`](crate::Tls)).
pub struct Watched<I> {
    io: I,
    watch: Option<Box<Watch>>,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, watch: Option<Box<Watch>>) -> Self {
        Self { io, watch }
    }
}

impl<I> Drop for Watched<I> {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.stream_closed();
        }
    }
}

impl<I> std::fmt::Debug for TlsIo<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(w) => f
                .debug_struct("Plain")
                .field("watched", &w.watch.is_some())
                .finish_non_exhaustive(),
            Self::Terminated(_) => f.write_str("Terminated"),
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
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(watch) = &mut this.watch {
            match &res {
                Poll::Ready(Ok(())) => watch.sent_to_server(buf.filled().len() - before),
                Poll::Ready(Err(e)) => watch.failed(e),
                Poll::Pending => {}
            }
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Some(watch) = &mut this.watch {
            match &res {
                Poll::Ready(Ok(n)) => watch.sent_to_client(&buf[..*n]),
                Poll::Ready(Err(e)) => watch.failed(e),
                Poll::Pending => {}
            }
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.watch.is_some() {
            // One buffer at a time, so the bytes written are known.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.watch.is_none() && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_read(cx, buf),
            Self::Terminated(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Self::Terminated(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Terminated(t) => Pin::new(&mut **t).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(w) => w.is_write_vectored(),
            Self::Terminated(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_flush(cx),
            Self::Terminated(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Self::Terminated(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}

/// The client's socket, for a reset (the passthrough's on errors): through
/// a terminated session too, since its socket is the same.
impl<I: AsFd> AsFd for TlsIo<I> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Plain(w) => w.io.as_fd(),
            Self::Terminated(t) => t.get_ref().0.as_fd(),
        }
    }
}
