//! `GET /api/tap`: requests as they complete, as server-sent events.

use super::json::span_json;
use super::query::SpanQuery;
use crate::export::RecentSpans;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// How often the stream looks for new spans in the ring.
const POLL: Duration = Duration::from_millis(100);
/// A comment line after this many empty looks, so that proxies and clients
/// between keep an idle stream open (15 s).
const KEEPALIVE_POLLS: u32 = 150;

/// An endless event stream: one `data:` event (a span's JSON, on one line)
/// per span that reaches the ring after the stream started and matches the
/// query. It reads the ring every 100 ms: no cost on the request path, and
/// none at all while nobody taps. A reader slower than the ring skips what
/// was evicted before it looked.
pub struct TapBody {
    ring: RecentSpans,
    query: SpanQuery,
    last_seq: u64,
    interval: tokio::time::Interval,
    idle_polls: u32,
    pending: VecDeque<Bytes>,
}

impl TapBody {
    /// A stream of the spans that reach `ring` from now on and match
    /// `query` (its `limit` is ignored). Needs a Tokio runtime with time.
    pub fn new(ring: RecentSpans, query: SpanQuery) -> Self {
        let last_seq = ring.last_seq();
        let mut interval = tokio::time::interval(POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A first comment at once: the client sees the stream is open.
        let pending = VecDeque::from([Bytes::from_static(b": tap started\n\n")]);
        Self {
            ring,
            query,
            last_seq,
            interval,
            idle_polls: 0,
            pending,
        }
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            ready!(this.interval.poll_tick(cx));
            let new = this.ring.since(this.last_seq);
            if let Some(last) = new.last() {
                this.last_seq = last.seq;
            }
            for entry in new.iter().filter(|e| this.query.matches(e)) {
                let mut event = b"data: ".to_vec();
                // serde_json escapes newlines: one event, one line.
                serde_json::to_writer(&mut event, &span_json(&entry.service, &entry.span))
                    .expect("a JSON value serializes");
                event.extend_from_slice(b"\n\n");
                this.pending.push_back(Bytes::from(event));
            }
            if this.pending.is_empty() {
                this.idle_polls += 1;
                if this.idle_polls >= KEEPALIVE_POLLS {
                    this.idle_polls = 0;
                    this.pending
                        .push_back(Bytes::from_static(b": keep-alive\n\n"));
                }
            } else {
                this.idle_polls = 0;
            }
        }
    }
}

impl std::fmt::Debug for TapBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapBody")
            .field("query", &self.query)
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}
