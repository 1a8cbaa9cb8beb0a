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
/// Cloning shares the ring. Several pipelines may share one (each service
/// of a process, one view: [`ExportPipeline::start_with_ring`]); each span
/// keeps the `service.name` of the pipeline that recorded it.
///
/// Spans are stored behind `Arc`, so a push is O(1) under a short lock and
/// a [`snapshot`](RecentSpans::snapshot) copies pointers, not span data.
/// While exporting, the export task fills it a batch at a time (one lock
/// for many spans), so the request path takes no lock for it. Every span
/// gets a sequence number, one more than the span before it, so that a
/// reader can ask for what arrived since it last looked
/// ([`since`](RecentSpans::since)).
///
/// Memory: at most `capacity` spans, each bounded by the span layer's
/// attribute limits.
///
/// [`ExportPipeline::start_with_ring`]: super::ExportPipeline::start_with_ring
#[derive(Clone, Debug)]
pub struct RecentSpans {
    inner: Arc<Mutex<Ring>>,
    capacity: usize,
}

/// One span in the ring.
#[derive(Clone, Debug)]
pub struct RecentSpan {
    /// Its place in the order spans reached the ring, from 1.
    pub seq: u64,
    /// The `service.name` of the pipeline that recorded it.
    pub service: Arc<str>,
    /// The span.
    pub span: Arc<SpanRecord>,
}

#[derive(Debug, Default)]
struct Ring {
    spans: VecDeque<RecentSpan>,
    /// The sequence number of the last span pushed (0: none yet).
    last_seq: u64,
}

// === impl RecentSpans ===

impl RecentSpans {
    /// An empty ring keeping at most `capacity` spans (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        Self {
            // Grows to `capacity` as spans arrive rather than up front.
            inner: Arc::new(Mutex::new(Ring::default())),
            capacity,
        }
    }

    /// The most spans kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a span of `service`, evicting the oldest when full. On the
    /// request path (with no exporter, `record` calls it): no allocation
    /// beyond the ring's own growth to `capacity`.
    pub fn push(&self, service: &Arc<str>, span: Arc<SpanRecord>) {
        if self.capacity == 0 {
            return;
        }
        let evicted = {
            let mut ring = self.lock();
            let evicted = if ring.spans.len() >= self.capacity {
                ring.spans.pop_front()
            } else {
                None
            };
            ring.last_seq += 1;
            let seq = ring.last_seq;
            ring.spans.push_back(RecentSpan {
                seq,
                service: service.clone(),
                span,
            });
            evicted
        };
        // The oldest span (and its attributes) is freed outside the lock.
        drop(evicted);
    }

    /// Adds spans of `service` in order (one lock for all), evicting the
    /// oldest.
    pub fn extend(&self, service: &Arc<str>, spans: &[Arc<SpanRecord>]) {
        if self.capacity == 0 || spans.is_empty() {
            return;
        }
        let evicted: Vec<RecentSpan> = {
            let mut ring = self.lock();
            // Every span gets its number, even one evicted at once.
            let first_seq = ring.last_seq + 1;
            ring.last_seq += spans.len() as u64;
            // Only the newest `capacity` can stay.
            let skip = spans.len().saturating_sub(self.capacity);
            let over = (ring.spans.len() + spans.len() - skip).saturating_sub(self.capacity);
            let evicted = ring.spans.drain(..over).collect();
            for (i, span) in spans.iter().enumerate().skip(skip) {
                ring.spans.push_back(RecentSpan {
                    seq: first_seq + i as u64,
                    service: service.clone(),
                    span: span.clone(),
                });
            }
            evicted
        };
        // The evicted spans are freed outside the lock.
        drop(evicted);
    }

    /// The spans now held, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<SpanRecord>> {
        self.lock().spans.iter().map(|e| e.span.clone()).collect()
    }

    /// The spans now held with their services and numbers, oldest first.
    pub fn entries(&self) -> Vec<RecentSpan> {
        self.lock().spans.iter().cloned().collect()
    }

    /// The spans held that arrived after the one numbered `seq`, oldest
    /// first (all of them for 0). Spans evicted before the call are
    /// missing: a reader that falls behind by more than the capacity skips.
    pub fn since(&self, seq: u64) -> Vec<RecentSpan> {
        let ring = self.lock();
        let newer = ring.spans.iter().rev().take_while(|e| e.seq > seq).count();
        ring.spans
            .iter()
            .skip(ring.spans.len() - newer)
            .cloned()
            .collect()
    }

    /// The number of the last span pushed (0 when none has been).
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// How many spans are held.
    pub fn len(&self) -> usize {
        self.lock().spans.len()
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
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
        let svc: Arc<str> = "svc".into();
        let r = RecentSpans::new(4);
        r.push(&svc, span(1));
        r.extend(&svc, &[span(2), span(3)]);
        assert_eq!(ids(&r), [1, 2, 3]);
        r.extend(&svc, &[span(4), span(5)]);
        assert_eq!(ids(&r), [2, 3, 4, 5]);
        r.extend(&svc, &(6..=11).map(span).collect::<Vec<_>>());
        assert_eq!(ids(&r), [8, 9, 10, 11]);
        r.push(&svc, span(12));
        assert_eq!(ids(&r), [9, 10, 11, 12]);
        let none = RecentSpans::new(0);
        none.extend(&svc, &[span(1)]);
        none.push(&svc, span(2));
        assert!(none.is_empty());
    }

    #[test]
    fn numbers_and_services_let_readers_follow() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let r = RecentSpans::new(3);
        assert_eq!(r.last_seq(), 0);
        r.push(&a, span(1));
        r.extend(&b, &[span(2), span(3)]);
        let seqs = |v: Vec<RecentSpan>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.since(0)), [1, 2, 3]);
        assert_eq!(seqs(r.since(1)), [2, 3]);
        assert!(r.since(3).is_empty());
        let services: Vec<String> = r.entries().iter().map(|e| e.service.to_string()).collect();
        assert_eq!(services, ["a", "b", "b"]);
        // Five more: spans 4 and 5 are evicted before anyone read them, and
        // a reader that last saw 3 gets what is left, 6 to 8.
        r.extend(&a, &(4..=8).map(span).collect::<Vec<_>>());
        assert_eq!(r.last_seq(), 8);
        assert_eq!(seqs(r.since(3)), [6, 7, 8]);
        assert_eq!(ids(&r), [6, 7, 8]);
    }
}
