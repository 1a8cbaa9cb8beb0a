//! [`ObservedBody`]: a response body that ends its request's observation
//! (span and histogram together) when it ends.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};

use super::pending::{End, Pending};

/// A response body that ends its request's observation when it ends: at
/// its last frame, at an error, or when dropped unfinished.
#[pin_project(PinnedDrop)]
pub struct ObservedBody<B> {
    #[pin]
    inner: B,
    pending: Option<Pending>,
}

// === impl ObservedBody ===

impl<B> ObservedBody<B> {
    pub(super) fn new(inner: B, pending: Option<Pending>) -> Self {
        Self { inner, pending }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(p) = this.pending.as_mut() {
                    if let Some(data) = f.data_ref() {
                        p.on_data(data.remaining());
                    } else if let Some(trailers) = f.trailers_ref() {
                        p.on_trailers(trailers);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(p) = this.pending.take() {
                    p.finish(End::BodyError);
                }
            }
            None => {
                if let Some(p) = this.pending.take() {
                    p.finish(End::Complete);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[pinned_drop]
impl<B> PinnedDrop for ObservedBody<B> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(p) = self.project().pending.take() {
            // Dropped before its end: the client went away or reset the stream.
            p.finish(End::Dropped);
        }
    }
}
