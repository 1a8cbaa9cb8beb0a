//! Span export counters as Prometheus metrics.

use l7inspect_trace::{
    Format, PropagationStats,
    export::{DropReason, ExportStats, ExporterKind},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
};

/// Encodes `l7inspect_spans_exported_total{exporter}` and
/// `l7inspect_spans_dropped_total{reason}` from the export pipeline's
/// counters on each scrape.
#[derive(Debug)]
pub struct SpanStatsCollector {
    stats: ExportStats,
    propagation: Vec<PropagationStats>,
}

impl SpanStatsCollector {
    /// Reads `stats` and the malformed-header counts of `propagation` (one
    /// per direction) on each scrape.
    pub fn new(stats: ExportStats, propagation: Vec<PropagationStats>) -> Self {
        Self { stats, propagation }
    }
}

impl Collector for SpanStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "l7inspect_spans_exported",
            "Spans accepted by a collector, by exporter",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for exporter in ExporterKind::ALL {
            let c = ConstCounter::new(self.stats.exported(exporter));
            c.encode(family.encode_family(&[("exporter", exporter.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "l7inspect_spans_dropped",
            "Spans not exported, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for reason in DropReason::ALL {
            let c = ConstCounter::new(self.stats.dropped(reason));
            c.encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "l7inspect_trace_context_malformed",
            "Requests with a malformed trace-context header (ignored), by format",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for format in Format::ALL {
            if !format.carries_context() {
                continue;
            }
            let n: u64 = self.propagation.iter().map(|p| p.malformed(format)).sum();
            c_encode(&mut family, format.name(), n)?;
        }
        Ok(())
    }
}

fn c_encode(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    format: &str,
    n: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(n).encode(family.encode_family(&[("format", format)])?)
}
