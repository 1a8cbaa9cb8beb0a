//! A bounded in-memory ring of the most recent finished spans, kept beside
//! the exporters (and instead of them when none is configured) for the
//! admin view.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use opentelemetry_sdk::trace::SpanData;

/// The most recent finished spans, oldest first, at most `capacity` of them.
///
/// Cloning shares the ring. Spans are stored behind `Arc`, so a push is
/// O(1) under a short lock and a [`snapshot`](RecentSpans::snapshot) copies
/// pointers, not span data.
#[derive(Clone, Debug)]
pub struct RecentSpans {
    inner: Arc<Mutex<VecDeque<Arc<SpanData>>>>,
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
    pub fn push(&self, span: Arc<SpanData>) {
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

    /// The spans now held, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<SpanData>> {
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

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<SpanData>>> {
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
