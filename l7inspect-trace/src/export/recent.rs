//! A bounded in-memory ring of the most recent finished spans, kept beside
//! the exporters (and instead of them when none is configured) for the
//! admin view.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::span::SpanRecord;

/// The most recent finished spans, at most `capacity` of them, in the order
/// they reached the ring: the order they finished in, except that while the
/// export queue is full, spans it could not take arrive before the ones
/// still queued.
///
/// Cloning shares the ring. Spans are stored behind `Arc`, so a push is
/// O(1) under a short lock and a [`snapshot`](RecentSpans::snapshot) copies
/// pointers, not span data. While exporting, the export task fills it a
/// batch at a time ([`extend`](RecentSpans::extend): one lock for many
/// spans), so the request path takes no lock for it.
#[derive(Clone, Debug)]
pub struct RecentSpans {
    inner: Arc<Mutex<VecDeque<Arc<SpanRecord>>>>,
    capacity: usize,
}

// === impl RecentSpans ===

impl RecentSpans {
    /// An empty ring keeping at most `capacity` spans (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        Self {
            // Grows to `capacity` as spans arrive rather than up front.
            inner: Arc::new(Mutex::new(VecDeque::new())),
            capacity,
        }
    }

    /// The most spans kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a span, evicting the oldest when full.
    pub fn push(&self, span: Arc<SpanRecord>) {
        if self.capacity == 0 {
            return;
        }
        let evicted = {
            let mut ring = self.lock();
            let evicted = if ring.len() >= self.capacity {
                ring.pop_front()
            } else {
                None
            };
            ring.push_back(span);
            evicted
        };
        // The oldest span (and its attributes) is freed outside the lock.
        drop(evicted);
    }

    /// Adds spans in order (one lock for all), evicting the oldest.
    pub fn extend(&self, spans: &[Arc<SpanRecord>]) {
        if self.capacity == 0 || spans.is_empty() {
            return;
        }
        // Only the newest `capacity` can stay.
        let spans = &spans[spans.len().saturating_sub(self.capacity)..];
        let evicted: Vec<_> = {
            let mut ring = self.lock();
            let over = (ring.len() + spans.len()).saturating_sub(self.capacity);
            let evicted = ring.drain(..over).collect();
            ring.extend(spans.iter().cloned());
            evicted
        };
        // The evicted spans are freed outside the lock.
        drop(evicted);
    }

    /// The spans now held, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<SpanRecord>> {
        self.lock().iter().cloned().collect()
    }

    /// How many spans are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<SpanRecord>>> {
        // Nothing panics while the lock is held, and a ring of complete
        // `Arc`s is valid whatever happened: ignore poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for RecentSpans {
    fn default() -> Self {
        Self::new(super::config::DEFAULT_RECENT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, SpanKind, TraceId};
    use std::time::SystemTime;

    fn span(i: u64) -> Arc<SpanRecord> {
        Arc::new(SpanRecord::new(
            TraceId::from(1),
            SpanId::from(i),
            SpanKind::Server,
            "GET",
            SystemTime::UNIX_EPOCH,
        ))
    }

    fn ids(r: &RecentSpans) -> Vec<u64> {
        r.snapshot()
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id.to_bytes()))
            .collect()
    }

    #[test]
    fn push_and_extend_keep_the_newest_in_order() {
        let r = RecentSpans::new(4);
        r.push(span(1));
        r.extend(&[span(2), span(3)]);
        assert_eq!(ids(&r), [1, 2, 3]);
        r.extend(&[span(4), span(5)]);
        assert_eq!(ids(&r), [2, 3, 4, 5]);
        r.extend(&(6..=11).map(span).collect::<Vec<_>>());
        assert_eq!(ids(&r), [8, 9, 10, 11]);
        r.push(span(12));
        assert_eq!(ids(&r), [9, 10, 11, 12]);
        let none = RecentSpans::new(0);
        none.extend(&[span(1)]);
        none.push(span(2));
        assert!(none.is_empty());
    }
}
