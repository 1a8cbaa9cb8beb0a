//! Shared helpers for the sidecar's integration tests: an in-process sidecar
//! with explicit forwards on 127.0.0.1, metrics scraping, bounded retries.

#![allow(dead_code)]

use l7inspect_sidecar::{BoundAddrs, Forward, SidecarConfig, build};
use l7inspect_test_support::eventually;
use l7inspect_trace::{export::RecentSpans, span::SpanRecord};
use prometheus_client::registry::Registry;
use std::{net::SocketAddr, sync::Arc};
use tokio::{sync::oneshot, task::JoinHandle};

/// A sidecar running in this process.
pub struct Running {
    pub addrs: BoundAddrs,
    pub registry: Arc<Registry>,
    /// The sidecar's in-memory ring of finished spans.
    pub spans: RecentSpans,
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<()>,
}

impl Running {
    /// Signals shutdown (as SIGTERM would) and returns the run task.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The first explicit inbound listener's address.
    pub fn inbound(&self) -> SocketAddr {
        self.addrs.inbound_forwards[0].listen
    }

    /// The metrics as `/metrics` serves them.
    pub fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// The value of the sample line starting with `series` (name and labels), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        l7inspect_test_support::prom::value(&self.metrics(), series)
    }

    /// Waits (bounded) until `series` has the value `want`; panics otherwise.
    pub async fn wait_metric(&self, series: &str, want: f64) {
        let ok = eventually(|| async { self.metric(series) == Some(want) }).await;
        assert!(
            ok,
            "{series} never became {want}; metrics:\n{}",
            self.metrics()
        );
    }
}

/// A config with no transparent listeners, the admin server on an ephemeral
/// port and one inbound forward from an ephemeral port to `target`.
pub fn forward_config(target: SocketAddr) -> SidecarConfig {
    SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        inbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target,
        }],
        ..SidecarConfig::default()
    }
}

/// Builds and runs a sidecar on the current runtime.
pub async fn start(config: SidecarConfig) -> Running {
    let sidecar = build(config).await.expect("sidecar binds");
    let addrs = sidecar.addrs().clone();
    let registry = sidecar.registry();
    let spans = sidecar.recent_spans();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addrs,
        registry,
        spans,
        stop: Some(stop),
        handle,
    }
}

/// A deterministic pseudo-random byte stream (xorshift): the sender fills
/// buffers from one, the receiver checks against another with the same seed,
/// in whatever chunk sizes each sees, without holding the transfer in memory.
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }

    /// Whether `got` is the next `got.len()` bytes of the stream.
    pub fn check(&mut self, got: &[u8], scratch: &mut Vec<u8>) -> bool {
        scratch.resize(got.len(), 0);
        self.fill(scratch);
        scratch[..] == *got
    }
}

/// The finished spans whose `url.path` is `path`.
pub fn spans_for(sidecar: &Running, path: &str) -> Vec<Arc<SpanRecord>> {
    sidecar
        .spans
        .snapshot()
        .into_iter()
        .filter(|s| s.http.as_ref().is_some_and(|h| h.path == path))
        .collect()
}

/// Attribute `key` of `span` as text (a string as it is, anything else
/// as OpenTelemetry prints it).
pub fn attr(span: &SpanRecord, key: &str) -> Option<String> {
    span.attribute(key).map(|v| match v {
        opentelemetry::Value::String(s) => s.as_str().to_owned(),
        other => other.to_string(),
    })
}

/// Whether `program version_arg` runs; if not, the test is skipped (a
/// failure when `L7INSPECT_REQUIRE_TOOLS=1`).
pub fn have(test: &str, program: &str, version_arg: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        l7inspect_test_support::skip(
            test,
            l7inspect_test_support::Need::Tools,
            format!("{program} not found"),
        );
    }
    ok
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Whether the tests run as root (database servers then run as a user of
/// their own, or are told to run as root).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A redis-server on 127.0.0.1, in a temporary directory, stopped (by its
/// PID) when dropped.
pub struct Redis {
    pub addr: SocketAddr,
    _dir: l7inspect_test_support::TempDir,
    _process: l7inspect_test_support::KillOnDrop,
}

/// Starts a [`Redis`] and waits until it accepts connections.
pub fn redis_server() -> Redis {
    let dir = l7inspect_test_support::TempDir::new("l7inspect-redis");
    let port = free_port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let process = l7inspect_test_support::KillOnDrop(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    l7inspect_test_support::wait_for_blocking("redis-server to accept", || {
        std::net::TcpStream::connect(addr).ok()
    });
    Redis {
        addr,
        _dir: dir,
        _process: process,
    }
}

/// Export to `collector`: OTLP/HTTP and Zipkin, 50 ms after a span ends.
pub fn export_to(
    collector: &l7inspect_test_support::collector::Collector,
) -> l7inspect_trace::export::ExportConfig {
    use l7inspect_test_support::collector::Receiver;
    use l7inspect_trace::export::{ExportConfig, OtlpConfig, OtlpProtocol, ZipkinConfig};
    ExportConfig {
        otlp: Some(OtlpConfig::new(
            collector.endpoint(Receiver::OtlpHttp),
            OtlpProtocol::HttpProtobuf,
        )),
        zipkin: Some(ZipkinConfig::new(collector.endpoint(Receiver::Zipkin))),
        batch_delay: std::time::Duration::from_millis(50),
        ..ExportConfig::default()
    }
}

/// Stops the sidecar (shutdown flushes the export queue) and returns the
/// spans `collector` got over OTLP/HTTP, once `n` arrived; every Zipkin
/// batch it got passed the Zipkin v2 spec.
pub async fn finish_export(
    mut s: Running,
    collector: &l7inspect_test_support::collector::Collector,
    n: usize,
) -> Vec<l7inspect_test_support::collector::OtlpSpan> {
    use l7inspect_test_support::collector::Receiver;
    s.shutdown();
    tokio::time::timeout(std::time::Duration::from_secs(60), s.handle)
        .await
        .unwrap()
        .unwrap();
    let spans = collector.wait_otlp_spans(Receiver::OtlpHttp, n).await;
    assert_eq!(collector.rejections(), Vec::<String>::new(), "Zipkin spec");
    spans
}

/// Stops the sidecar and checks that the `system` database spans in its
/// ring all reached `collector` (OTLP/HTTP; Zipkin against its spec), a
/// `SELECT` among them.
pub async fn check_db_spans_exported(
    s: Running,
    collector: &l7inspect_test_support::collector::Collector,
    system: &str,
) {
    let ring = s
        .spans
        .snapshot()
        .iter()
        .filter(|sp| attr(sp, "db.system.name").as_deref() == Some(system))
        .count();
    let received = finish_export(s, collector, ring).await;
    let received: Vec<_> = received
        .iter()
        .filter(|sp| sp.str_attr("db.system.name") == Some(system))
        .collect();
    assert_eq!(received.len(), ring);
    assert!(
        received
            .iter()
            .any(|sp| sp.str_attr("db.operation.name") == Some("SELECT"))
    );
}

/// Runs `cmd` with `input` on its standard input; its output (standard
/// output and error captured).
pub fn run_with_input(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
