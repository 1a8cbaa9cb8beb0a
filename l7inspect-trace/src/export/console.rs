//! `OTEL_TRACES_EXPORTER=console`: every span on standard output, one JSON
//! object per line, as the live view's span API shows it. For trying the
//! proxy and for debugging, like the SDKs' console exporters.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::inspect::span_json;
use crate::span::SpanRecord;

/// Writes batches of spans to standard output.
pub(crate) struct ConsoleExporter {
    service: Arc<str>,
}

impl ConsoleExporter {
    pub(crate) fn new(service: Arc<str>) -> Self {
        Self { service }
    }

    /// Writes `batch`, one line per span, in one write.
    pub(crate) async fn export(&self, batch: &[Arc<SpanRecord>]) -> Result<(), String> {
        let mut out = Vec::with_capacity(batch.len() * 512);
        for span in batch {
            serde_json::to_writer(&mut out, &span_json(&self.service, span))
                .map_err(|e| e.to_string())?;
            out.push(b'\n');
        }
        let mut stdout = tokio::io::stdout();
        stdout
            .write_all(&out)
            .await
            .map_err(|e| format!("standard output: {e}"))?;
        stdout
            .flush()
            .await
            .map_err(|e| format!("standard output: {e}"))
    }
}
