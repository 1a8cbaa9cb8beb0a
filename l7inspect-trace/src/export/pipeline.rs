//! The span sink, its bounded hand-off queue and the background task that
//! batches and exports.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Key;
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::resource::SERVICE_NAME;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::{ExportConfig, PemFile, UNKNOWN_SERVICE};
use super::console::ConsoleExporter;
use super::otlp::OtlpExporter;
use super::recent::RecentSpans;
use super::stats::{DropReason, ExportStats, ExporterKind};
use super::tls::TlsError;
use super::zipkin::ZipkinExporter;
use crate::span::SpanRecord;

/// How long the export task keeps flushing when every handle to it was
/// dropped without an explicit shutdown.
const DROPPED_HANDLES_DEADLINE: Duration = Duration::from_secs(5);
/// At most one warning per exporter (and one for a full queue) per interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A running export pipeline: the [`SpanSink`] that span sources hand
/// finished spans to, the background export task behind it, its counters
/// and its ring of recent spans.
///
/// Dropping every handle (this and all sink clones) lets the task flush for
/// up to 5 s and stop; call [`shutdown`](ExportPipeline::shutdown) to choose
/// the deadline and wait.
#[derive(Debug)]
pub struct ExportPipeline {
    sink: SpanSink,
}

/// Where finished spans go: [`record`](SpanSink::record) hands a span to
/// the export task and the ring of recent spans.
///
/// `record` never blocks or awaits: it `try_send`s the span into the
/// bounded queue; when the queue is full the span is dropped for export and
/// counted as `queue_full`. The export task puts what it takes off the
/// queue into [`RecentSpans`], one lock per wake-up rather than one per
/// span; with no exporter configured, `record` puts the span there itself.
///
/// Cloning shares the queue, counters and ring.
#[derive(Clone, Debug)]
pub struct SpanSink {
    inner: Arc<Inner>,
}

/// Whether a flush or shutdown got everything out before its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Every queued span was handed to every exporter (each export either
    /// succeeded or failed within its own timeout).
    Complete,
    /// The deadline passed first; what was left is counted as dropped for
    /// `shutdown`.
    DeadlineReached,
}

/// The pipeline could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ExportBuildError {
    /// A value in [`ExportConfig`] is out of range.
    #[error("invalid export configuration: {0}")]
    InvalidConfig(&'static str),
    /// The OTLP exporter rejected its settings.
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The Zipkin exporter rejected its settings.
    #[error("Zipkin exporter for {endpoint}: {reason}")]
    Zipkin {
        /// The configured endpoint.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A certificate or key file in an exporter's
    /// [`TlsConfig`](super::TlsConfig) is missing, unreadable or holds no
    /// usable PEM.
    ///
    /// Displayed as `OTLP exporter for URL: CA certificates
    /// "/path/ca.pem" (OTEL_EXPORTER_OTLP_CERTIFICATE): reason`.
    #[error("{exporter} exporter for {endpoint}: {role} {}: {reason}", super::tls::describe(.file))]
    TlsFile {
        /// `OTLP` or `Zipkin`.
        exporter: &'static str,
        /// The configured endpoint.
        endpoint: String,
        /// What the file was to hold: `CA certificates`, `client
        /// certificate` or `client key`.
        role: &'static str,
        /// The file, and the variable that named it.
        file: PemFile,
        /// Why it cannot be used, e.g. `cannot read it: No such file or
        /// directory (os error 2)` or `no PEM CERTIFICATE section in it`.
        reason: String,
    },
    /// An exporter is configured but there is no Tokio runtime to run the
    /// export task on.
    #[error("exporting spans needs a Tokio runtime; start the pipeline from within one")]
    NoRuntime,
}

struct Inner {
    /// `None` when no exporter is configured: spans only go to `recent`.
    queue: Option<mpsc::Sender<Arc<SpanRecord>>>,
    control: Option<mpsc::UnboundedSender<Control>>,
    recent: RecentSpans,
    /// This pipeline's `service.name`, as the ring shows it.
    service: Arc<str>,
    stats: ExportStats,
}

enum Control {
    /// Export what is queued now, then answer.
    Flush(Ack),
    /// Stop taking spans, export what is queued until the deadline, answer
    /// and stop.
    Shutdown(Instant, Ack),
}

type Ack = oneshot::Sender<FlushOutcome>;

struct Worker {
    queue: mpsc::Receiver<Arc<SpanRecord>>,
    recent: RecentSpans,
    service: Arc<str>,
    control: mpsc::UnboundedReceiver<Control>,
    otlp: Option<(OtlpExporter, Duration)>,
    zipkin: Option<(ZipkinExporter, Duration)>,
    console: Option<(ConsoleExporter, Duration)>,
    stats: ExportStats,
    max_batch: usize,
    batch_delay: Duration,
    warn: Warnings,
    /// The endpoints, as configured, for log lines: OTLP's, Zipkin's.
    endpoints: [Option<String>; 2],
}

/// What became of one batch at one exporter.
enum Outcome {
    NotConfigured,
    Exported,
    Failed(String),
    TimedOut,
    DeadlineReached,
}

/// Rate-limits the operator-facing warnings about dropped spans.
#[derive(Default)]
struct Warnings {
    last: HashMap<&'static str, Instant>,
    queue_full_seen: u64,
}

// === impl ExportBuildError ===

impl ExportBuildError {
    /// The error for TLS settings that cannot be used, naming the exporter
    /// (`Otlp` or `Zipkin`) and endpoint they were for.
    pub(crate) fn from_tls(kind: ExporterKind, endpoint: &str, e: TlsError) -> Self {
        let endpoint = endpoint.to_owned();
        let zipkin = kind == ExporterKind::Zipkin;
        match e {
            TlsError::File { role, file, reason } => Self::TlsFile {
                exporter: if zipkin { "Zipkin" } else { "OTLP" },
                endpoint,
                role,
                file,
                reason,
            },
            TlsError::Other(reason) if zipkin => Self::Zipkin { endpoint, reason },
            TlsError::Other(reason) => Self::Otlp { endpoint, reason },
        }
    }
}

// === impl ExportPipeline ===

impl ExportPipeline {
    /// Builds the exporters `config` names and spawns the export task on the
    /// current Tokio runtime (none is needed, and no task is spawned, when no
    /// exporter is configured).
    ///
    /// `resource` names this process in exported spans (Zipkin's
    /// `localEndpoint.serviceName` is its `service.name`); build it with
    /// [`super::ResourceConfig::to_resource`].
    ///
    /// Endpoints must be `http://` for now (no TLS to collectors).
    pub fn start(config: ExportConfig, resource: Resource) -> Result<Self, ExportBuildError> {
        let ring = RecentSpans::new(config.recent_capacity);
        Self::start_with_ring(config, resource, ring)
    }

    /// [`start`](Self::start), keeping recent spans in `ring` (shared with
    /// other pipelines: several services of one process in one view)
    /// instead of a ring of `config.recent_capacity` of its own. Each span
    /// goes in with this pipeline's `service.name`.
    pub fn start_with_ring(
        config: ExportConfig,
        resource: Resource,
        ring: RecentSpans,
    ) -> Result<Self, ExportBuildError> {
        if config.queue_size == 0 {
            return Err(ExportBuildError::InvalidConfig(
                "queue_size must be at least 1",
            ));
        }
        if config.max_batch == 0 {
            return Err(ExportBuildError::InvalidConfig(
                "max_batch must be at least 1",
            ));
        }
        let stats = ExportStats::default();
        let recent = ring;
        let service: Arc<str> = resource
            .get(&Key::from_static_str(SERVICE_NAME))
            .map(|v| v.as_str().into_owned())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned())
            .into();
        if config.otlp.is_none() && config.zipkin.is_none() && !config.console {
            let inner = Inner {
                queue: None,
                control: None,
                recent,
                service,
                stats,
            };
            return Ok(Self {
                sink: SpanSink {
                    inner: Arc::new(inner),
                },
            });
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExportBuildError::NoRuntime)?;
        // The HTTP clients are built inside the runtime they will run on.
        let _enter = runtime.enter();

        let otlp = match &config.otlp {
            Some(cfg) => Some((OtlpExporter::new(cfg, &resource)?, cfg.timeout)),
            None => None,
        };
        let zipkin = match &config.zipkin {
            Some(cfg) => Some((ZipkinExporter::new(cfg, service.to_string())?, cfg.timeout)),
            None => None,
        };

        // Bounded like the others: a stdout nobody reads must not stall
        // the task.
        let console = config.console.then(|| {
            (
                ConsoleExporter::new(service.clone()),
                super::DEFAULT_EXPORT_TIMEOUT,
            )
        });
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_size);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            queue: queue_rx,
            recent: recent.clone(),
            service: service.clone(),
            control: control_rx,
            otlp,
            zipkin,
            console,
            stats: stats.clone(),
            max_batch: config.max_batch,
            batch_delay: config.batch_delay,
            warn: Warnings::default(),
            endpoints: [
                config.otlp.as_ref().map(|c| c.endpoint.clone()),
                config.zipkin.as_ref().map(|c| c.endpoint.clone()),
            ],
        };
        runtime.spawn(worker.run());
        let inner = Inner {
            queue: Some(queue_tx),
            control: Some(control_tx),
            recent,
            service,
            stats,
        };
        Ok(Self {
            sink: SpanSink {
                inner: Arc::new(inner),
            },
        })
    }

    /// A handle for span sources: where they hand finished spans.
    pub fn sink(&self) -> SpanSink {
        self.sink.clone()
    }

    /// The export counters.
    pub fn stats(&self) -> ExportStats {
        self.sink.inner.stats.clone()
    }

    /// The ring of recent finished spans.
    pub fn recent(&self) -> RecentSpans {
        self.sink.inner.recent.clone()
    }

    /// Exports everything queued when called and waits for it (each export
    /// bounded by its exporter's timeout).
    pub async fn flush(&self) -> FlushOutcome {
        self.sink.request(Control::Flush).await
    }

    /// Stops taking spans (later ones are counted as dropped for
    /// `shutdown`), exports what is queued until `timeout` has passed, and
    /// stops the export task. Calling it again returns at once.
    pub async fn shutdown(&self, timeout: Duration) -> FlushOutcome {
        let deadline = Instant::now() + timeout;
        self.sink
            .request(|ack| Control::Shutdown(deadline, ack))
            .await
    }
}

// === impl SpanSink ===

impl SpanSink {
    /// Hands a finished span to the exporters and the ring of recent spans.
    /// Constant time; never blocks. Spans whose trace flags say "not
    /// sampled" are ignored.
    pub fn record(&self, span: SpanRecord) {
        if span.trace_flags.is_sampled() {
            self.record_shared(Arc::new(span));
        }
    }

    /// [`record`](Self::record) for a span already behind an `Arc` (one
    /// allocation per span: the ring and the queue share it).
    pub fn record_shared(&self, span: Arc<SpanRecord>) {
        let Some(queue) = &self.inner.queue else {
            self.inner.recent.push(&self.inner.service, span);
            return;
        };
        // Counted here; the export task logs it, rate-limited. The ring
        // still gets the span: it shows every sampled span.
        match queue.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(span)) => {
                self.inner.stats.add_dropped(DropReason::QueueFull, 1);
                self.inner.recent.push(&self.inner.service, span);
            }
            Err(mpsc::error::TrySendError::Closed(span)) => {
                self.inner.stats.add_dropped(DropReason::Shutdown, 1);
                self.inner.recent.push(&self.inner.service, span);
            }
        }
    }

    /// The export counters.
    pub fn stats(&self) -> ExportStats {
        self.inner.stats.clone()
    }

    async fn request(&self, control: impl FnOnce(Ack) -> Control) -> FlushOutcome {
        let Some(tx) = &self.inner.control else {
            return FlushOutcome::Complete;
        };
        let (ack, done) = oneshot::channel();
        if tx.send(control(ack)).is_err() {
            // The task has stopped: nothing is left to flush.
            return FlushOutcome::Complete;
        }
        done.await.unwrap_or(FlushOutcome::Complete)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanSink")
            .field("exporting", &self.queue.is_some())
            .field("recent_capacity", &self.recent.capacity())
            .field("stats", &self.stats)
            .finish()
    }
}

// === impl Worker ===

impl Worker {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut incoming = Vec::with_capacity(self.max_batch);
        // When the oldest span of a partial batch has waited `batch_delay`.
        let mut flush_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Flush(ack)) => {
                        let queued = self.queue.len();
                        let outcome = self.drain(&mut batch, queued, None).await;
                        flush_at = None;
                        let _ = ack.send(outcome);
                    }
                    Some(Control::Shutdown(deadline, ack)) => {
                        let _ = ack.send(self.finish(batch, deadline).await);
                        return;
                    }
                    None => {
                        self.finish(batch, Instant::now() + DROPPED_HANDLES_DEADLINE).await;
                        return;
                    }
                },
                n = self.queue.recv_many(&mut incoming, self.max_batch) => {
                    if n == 0 {
                        self.finish(batch, Instant::now() + DROPPED_HANDLES_DEADLINE).await;
                        return;
                    }
                    // Into the ring with one lock for all that arrived.
                    self.recent.extend(&self.service, &incoming);
                    for span in incoming.drain(..) {
                        if batch.is_empty() {
                            flush_at = Some(Instant::now() + self.batch_delay);
                        }
                        batch.push(span);
                        if batch.len() >= self.max_batch {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(self.max_batch));
                            self.export(full, None).await;
                            flush_at = None;
                        }
                    }
                }
                () = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    let due = std::mem::replace(&mut batch, Vec::with_capacity(self.max_batch));
                    self.export(due, None).await;
                    flush_at = None;
                }
            }
        }
    }

    /// Closes the queue (later `on_end`s count `shutdown` drops), exports
    /// what is left until `deadline`, and shuts the exporters down.
    async fn finish(&mut self, mut batch: Vec<Arc<SpanRecord>>, deadline: Instant) -> FlushOutcome {
        self.queue.close();
        let left = batch.len() + self.queue.len();
        if left > 0 && (self.otlp.is_some() || self.zipkin.is_some() || self.console.is_some()) {
            tracing::info!(
                spans = left,
                within = ?deadline.saturating_duration_since(Instant::now()),
                "exporting the last spans before stopping"
            );
        }
        let outcome = self.drain(&mut batch, usize::MAX, Some(deadline)).await;
        tracing::debug!(?outcome, "span export stopped");
        outcome
    }

    /// Exports `batch` and up to `budget` queued spans, in batches.
    async fn drain(
        &mut self,
        batch: &mut Vec<Arc<SpanRecord>>,
        mut budget: usize,
        deadline: Option<Instant>,
    ) -> FlushOutcome {
        loop {
            while batch.len() < self.max_batch && budget > 0 {
                match self.queue.try_recv() {
                    Ok(span) => {
                        self.recent.push(&self.service, span.clone());
                        batch.push(span);
                        budget -= 1;
                    }
                    Err(_) => {
                        budget = 0;
                    }
                }
            }
            if batch.is_empty() {
                return FlushOutcome::Complete;
            }
            let next = std::mem::replace(batch, Vec::with_capacity(self.max_batch));
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Never handed to any exporter: count each span once.
                let left = next.len() as u64 + self.discard_queued();
                self.stats.add_dropped(DropReason::Shutdown, left);
                return FlushOutcome::DeadlineReached;
            }
            if self.export(next, deadline).await {
                // `export` counted the batch it was cutting short; count
                // what is still queued once.
                let left = self.discard_queued();
                self.stats.add_dropped(DropReason::Shutdown, left);
                return FlushOutcome::DeadlineReached;
            }
        }
    }

    fn discard_queued(&mut self) -> u64 {
        let mut n = 0;
        while let Ok(span) = self.queue.try_recv() {
            self.recent.push(&self.service, span);
            n += 1;
        }
        n
    }

    /// Hands one batch to every exporter at once, each bounded by its own
    /// timeout and by `deadline`. Returns whether the deadline cut an
    /// export short.
    async fn export(&mut self, batch: Vec<Arc<SpanRecord>>, deadline: Option<Instant>) -> bool {
        let n = batch.len() as u64;
        let Self {
            otlp,
            zipkin,
            console,
            ..
        } = self;
        let otlp = async {
            let Some((exporter, timeout)) = otlp else {
                return Outcome::NotConfigured;
            };
            // Encoded straight from the shared spans: no copies.
            bounded(exporter.export(&batch), *timeout, deadline).await
        };
        let zipkin = async {
            let Some((exporter, timeout)) = zipkin else {
                return Outcome::NotConfigured;
            };
            bounded(exporter.export(&batch), *timeout, deadline).await
        };
        let console = async {
            let Some((exporter, timeout)) = console else {
                return Outcome::NotConfigured;
            };
            bounded(exporter.export(&batch), *timeout, deadline).await
        };
        let (otlp, zipkin, console) = tokio::join!(otlp, zipkin, console);
        let cut = [&otlp, &zipkin, &console]
            .iter()
            .any(|o| matches!(o, Outcome::DeadlineReached));
        self.account(ExporterKind::Otlp, otlp, n);
        self.account(ExporterKind::Zipkin, zipkin, n);
        self.account(ExporterKind::Console, console, n);
        self.warn_queue_full();
        cut
    }

    fn account(&mut self, kind: ExporterKind, outcome: Outcome, n: u64) {
        let why = match outcome {
            Outcome::NotConfigured => return,
            Outcome::Exported => {
                self.stats.add_exported(kind, n);
                return;
            }
            Outcome::DeadlineReached => {
                self.stats.add_dropped(DropReason::Shutdown, n);
                return;
            }
            Outcome::Failed(why) => why,
            Outcome::TimedOut => "timed out".to_owned(),
        };
        self.stats.add_dropped(DropReason::ExportFailed, n);
        let endpoint = match kind {
            ExporterKind::Otlp => self.endpoints[0].as_deref(),
            ExporterKind::Zipkin => self.endpoints[1].as_deref(),
            ExporterKind::Console => Some("stdout"),
        };
        let endpoint = endpoint.unwrap_or("?");
        if self.warn.due(kind.as_str()) {
            tracing::warn!(
                exporter = kind.as_str(),
                endpoint,
                spans = n,
                error = %why,
                "span export failed; batch dropped"
            );
        } else {
            tracing::debug!(exporter = kind.as_str(), endpoint, spans = n, error = %why, "span export failed; batch dropped");
        }
    }

    fn warn_queue_full(&mut self) {
        let total = self.stats.dropped(DropReason::QueueFull);
        if total > self.warn.queue_full_seen && self.warn.due("queue_full") {
            tracing::warn!(
                dropped = total - self.warn.queue_full_seen,
                total,
                "spans dropped: export queue full"
            );
            self.warn.queue_full_seen = total;
        }
    }
}

async fn bounded(
    export: impl Future<Output = Result<(), String>>,
    timeout: Duration,
    deadline: Option<Instant>,
) -> Outcome {
    let own = Instant::now() + timeout;
    let (at, is_deadline) = match deadline {
        Some(d) if d < own => (d, true),
        _ => (own, false),
    };
    match tokio::time::timeout_at(at, export).await {
        Ok(Ok(())) => Outcome::Exported,
        Ok(Err(why)) => Outcome::Failed(why),
        Err(_) if is_deadline => Outcome::DeadlineReached,
        Err(_) => Outcome::TimedOut,
    }
}

// === impl Warnings ===

impl Warnings {
    fn due(&mut self, what: &'static str) -> bool {
        let now = Instant::now();
        match self.last.get(what) {
            Some(at) if now.duration_since(*at) < WARN_INTERVAL => false,
            _ => {
                self.last.insert(what, now);
                true
            }
        }
    }
}
