//! Export counters, shared between the hand-off, the export task and
//! whoever reports them (the core crate registers them as Prometheus
//! `l7inspect_spans_exported_total{exporter}` and
//! `l7inspect_spans_dropped_total{reason}`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cheaply cloneable export counters; every clone sees the same values.
#[derive(Clone, Debug, Default)]
pub struct ExportStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    exported: [AtomicU64; 3],
    dropped: [AtomicU64; 3],
}

/// An exporter, as named in the `exporter` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExporterKind {
    /// OTLP, over gRPC or HTTP/protobuf.
    Otlp,
    /// Zipkin v2 JSON.
    Zipkin,
    /// One JSON line per span on standard output.
    Console,
}

/// Why spans were dropped, as named in the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The hand-off queue was full when the span ended. Counted once per
    /// span.
    QueueFull,
    /// An export failed or timed out. Counted once per span for each
    /// exporter that failed it.
    ExportFailed,
    /// The pipeline was shutting down: the span ended after shutdown began,
    /// or was still queued (counted once) or being exported (counted per
    /// exporter) when the shutdown deadline passed.
    Shutdown,
}

// === impl ExportStats ===

impl ExportStats {
    /// Spans the collector behind `exporter` accepted.
    pub fn exported(&self, exporter: ExporterKind) -> u64 {
        self.inner.exported[exporter as usize].load(Ordering::Relaxed)
    }

    /// Spans dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.inner.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn add_exported(&self, exporter: ExporterKind, n: u64) {
        self.inner.exported[exporter as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_dropped(&self, reason: DropReason, n: u64) {
        self.inner.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

// === impl ExporterKind ===

impl ExporterKind {
    /// Every exporter, for registering one series each.
    pub const ALL: [Self; 3] = [Self::Otlp, Self::Zipkin, Self::Console];

    /// The label value: `otlp`, `zipkin` or `console`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Otlp => "otlp",
            Self::Zipkin => "zipkin",
            Self::Console => "console",
        }
    }
}

// === impl DropReason ===

impl DropReason {
    /// Every reason, for registering one series each.
    pub const ALL: [Self; 3] = [Self::QueueFull, Self::ExportFailed, Self::Shutdown];

    /// The label value: `queue_full`, `export_failed` or `shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ExportFailed => "export_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters() {
        let a = ExportStats::default();
        let b = a.clone();
        a.add_exported(ExporterKind::Zipkin, 3);
        a.add_dropped(DropReason::Shutdown, 2);
        assert_eq!(b.exported(ExporterKind::Zipkin), 3);
        assert_eq!(b.exported(ExporterKind::Otlp), 0);
        assert_eq!(b.dropped(DropReason::Shutdown), 2);
        assert_eq!(b.dropped(DropReason::QueueFull), 0);
        let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["queue_full", "export_failed", "shutdown"]);
    }
}
