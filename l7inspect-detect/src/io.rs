//! [`PrefixedIo`]: an I/O stream that first replays bytes already read from it.

use bytes::{Buf, Bytes};
use pin_project::pin_project;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps a stream so that reads return `prefix` first, then the stream's own
/// bytes; writes go straight to the stream.
///
/// Detection reads a connection's first bytes to look at them; handing the
/// connection on as a `PrefixedIo` gives the next service the byte stream
/// exactly as the client sent it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use l7inspect_detect::PrefixedIo;
/// use tokio::io::AsyncReadExt;
///
/// let mut io = PrefixedIo::new("GET ".into(), &b"/ HTTP/1.1\r\n"[..]);
/// let mut all = String::new();
/// io.read_to_string(&mut all).await.unwrap();
/// assert_eq!(all, "GET / HTTP/1.1\r\n");
/// # }
/// ```
#[pin_project]
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    #[pin]
    io: I,
}

// === impl PrefixedIo ===

impl<I> PrefixedIo<I> {
    /// Wraps `io`, replaying `prefix` before its own bytes.
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The wrapped stream, mutably. Reading from it directly skips the prefix.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// The bytes not yet replayed and the wrapped stream.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

/// Lets socket options (a reset on abort, say) reach the wrapped socket.
#[cfg(unix)]
impl<I: std::os::fd::AsFd> std::os::fd::AsFd for PrefixedIo<I> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Replayed: free the detection buffer now rather than with the
            // connection (it would stay allocated for the connection's life).
            *this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_prefix_in_small_reads_then_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        server.write_all(b" world").await.unwrap();
        drop(server);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), client);
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"he");
        assert_eq!(io.prefix().as_ref(), b"llo");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"llo world");
    }

    #[tokio::test]
    async fn writes_go_to_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"unread"), client);
        io.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(io.prefix().as_ref(), b"unread");
    }
}
