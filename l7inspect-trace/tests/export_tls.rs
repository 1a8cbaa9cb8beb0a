//! Export to collectors behind TLS, on 127.0.0.1: the test-support
//! collector's receivers with a certificate from a per-test CA
//! (`test_support::pki`), trusted through `OTEL_EXPORTER_OTLP_*`
//! variables or the configuration's [`TlsConfig`]; one signed by a CA the
//! exporter does not trust; one that requires a client certificate.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use l7inspect_test_support::TempDir;
use l7inspect_test_support::collector::{Collector, Receiver, ServerTls};
use l7inspect_test_support::pki::TestCa;
use l7inspect_trace::export::{
    DropReason, ExportConfig, ExportPipeline, ExporterKind, FlushOutcome, OtlpConfig, OtlpProtocol,
    PemFile, ResourceConfig, SpanSink, TlsConfig, ZipkinConfig, from_otel_env,
};
use l7inspect_trace::span::SpanRecord;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use tokio::time::timeout;

/// Only fires on a bug (a hang); never a timing assertion.
const GENEROUS: Duration = Duration::from_secs(60);

fn start(config: ExportConfig) -> (ExportPipeline, SpanSink) {
    let resource = ResourceConfig {
        service_name: "tls-test".into(),
        attributes: Vec::new(),
    }
    .to_resource("l7inspect", env!("CARGO_PKG_VERSION"));
    let pipeline = ExportPipeline::start(config, resource).unwrap();
    let sink = pipeline.sink();
    (pipeline, sink)
}

fn record(sink: &SpanSink, n: u64) {
    for i in 1..=n {
        sink.record(SpanRecord::new(
            TraceId::from(u128::from(i)),
            SpanId::from(i),
            SpanKind::Server,
            "GET",
            SystemTime::now(),
        ));
    }
}

/// The export configuration `vars` give, as the sidecar reads it.
fn from_vars(vars: &[(&str, String)]) -> ExportConfig {
    let map: HashMap<&str, String> = vars.iter().cloned().collect();
    from_otel_env(|k| map.get(k).cloned()).unwrap().export
}

fn trust(ca: &TestCa, dir: &TempDir) -> TlsConfig {
    TlsConfig {
        ca: Some(PemFile::new(ca.write_cert(dir.path()))),
        ..TlsConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn otlp_grpc_over_tls_trusting_the_certificate_variable() {
    logs();
    let dir = TempDir::new("tls-grpc");
    let ca = TestCa::new("collector CA");
    let collector = Collector::start_tls(ServerTls::new(&ca.server(&["127.0.0.1"])));
    // The generic endpoint without a scheme: TLS (OTEL_EXPORTER_OTLP_INSECURE
    // unset), trusting the traces-specific certificate variable over the
    // generic one (which names a file that does not exist).
    let addr = collector.addr(Receiver::OtlpGrpc);
    let config = from_vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", addr.to_string()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            ca.write_cert(dir.path()).display().to_string(),
        ),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent.pem".into()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
    ]);
    assert_eq!(
        config.otlp.as_ref().unwrap().endpoint,
        collector.endpoint(Receiver::OtlpGrpc)
    );
    let (pipeline, sink) = start(config);
    record(&sink, 3);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);

    assert_eq!(
        collector.wait_otlp_spans(Receiver::OtlpGrpc, 3).await.len(),
        3
    );
    let handshakes = collector.handshakes(Receiver::OtlpGrpc);
    assert_eq!(handshakes.len(), 1, "one connection, reused");
    assert_eq!(handshakes[0].alpn.as_deref(), Some("h2"));
    assert_eq!(handshakes[0].client_certs, 0);
    assert_eq!(pipeline.stats().exported(ExporterKind::Otlp), 3);

    // The connection is reused for the next batch.
    record(&sink, 2);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
    assert_eq!(pipeline.stats().exported(ExporterKind::Otlp), 5);
    assert_eq!(collector.handshakes(Receiver::OtlpGrpc).len(), 1);
}

#[tokio::test]
async fn otlp_http_and_zipkin_over_tls_trusting_the_configured_ca() {
    logs();
    let dir = TempDir::new("tls-http");
    let ca = TestCa::new("collector CA");
    let collector = Collector::start_tls(ServerTls::new(&ca.server(&["localhost", "127.0.0.1"])));
    let mut otlp = OtlpConfig::new(
        collector.endpoint(Receiver::OtlpHttp),
        OtlpProtocol::HttpProtobuf,
    );
    otlp.tls = trust(&ca, &dir);
    let mut zipkin = ZipkinConfig::new(collector.endpoint(Receiver::Zipkin));
    zipkin.tls = trust(&ca, &dir);
    assert!(zipkin.endpoint.starts_with("https://127.0.0.1:"));
    let (pipeline, sink) = start(ExportConfig {
        otlp: Some(otlp),
        zipkin: Some(zipkin),
        ..ExportConfig::default()
    });
    record(&sink, 2);
    assert_eq!(pipeline.flush().await, FlushOutcome::Complete);

    assert_eq!(
        collector.wait_otlp_spans(Receiver::OtlpHttp, 2).await.len(),
        2
    );
    assert_eq!(collector.wait_zipkin_spans(2).await.len(), 2);
    for receiver in [Receiver::OtlpHttp, Receiver::Zipkin] {
        let handshakes = collector.handshakes(receiver);
        assert_eq!(handshakes.len(), 1, "{receiver:?}");
        assert_eq!(handshakes[0].alpn.as_deref(), Some("http/1.1"));
    }
    let stats = pipeline.stats();
    assert_eq!(stats.exported(ExporterKind::Otlp), 2);
    assert_eq!(stats.exported(ExporterKind::Zipkin), 2);
}

// ---------------------------------------------------------------------------
// An untrusted collector

/// Warnings of every test in this binary, captured by a global subscriber
/// that the first test to start installs. Global, not a per-test
/// `set_default`: `tracing` caches each call site's interest process-wide,
/// and another test's thread hitting the warning first without a
/// subscriber left it disabled for this one's (seen 1 run in 30).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

/// The captured warnings; call it at the start of every test, before any
/// exporter runs.
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A collector whose certificate was signed by a CA the exporter does not
/// trust receives nothing; every span is counted as failed; recording
/// never waits; the warning names the reason.
#[tokio::test]
async fn untrusted_collector_receives_nothing_and_failures_are_counted() {
    let logs = logs();
    let dir = TempDir::new("tls-untrusted");
    let trusted = TestCa::new("trusted CA");
    let impostor = TestCa::new("impostor CA");
    let collector = Collector::start_tls(ServerTls::new(&impostor.server(&["127.0.0.1"])));
    let mut otlp_grpc = OtlpConfig::new(collector.endpoint(Receiver::OtlpGrpc), OtlpProtocol::Grpc);
    otlp_grpc.tls = trust(&trusted, &dir);
    let mut otlp_http = OtlpConfig::new(
        collector.endpoint(Receiver::OtlpHttp),
        OtlpProtocol::HttpProtobuf,
    );
    otlp_http.tls = trust(&trusted, &dir);
    let mut zipkin = ZipkinConfig::new(collector.endpoint(Receiver::Zipkin));
    zipkin.tls = trust(&trusted, &dir);

    for (otlp, receiver) in [
        (otlp_grpc, Receiver::OtlpGrpc),
        (otlp_http, Receiver::OtlpHttp),
    ] {
        let (pipeline, sink) = start(ExportConfig {
            otlp: Some(otlp),
            zipkin: Some(zipkin.clone()),
            max_batch: 10,
            ..ExportConfig::default()
        });
        // Synchronous and constant-time whatever the collector does.
        record(&sink, 30);
        timeout(GENEROUS, pipeline.flush())
            .await
            .expect("the flush returns");
        let stats = pipeline.stats();
        assert_eq!(stats.exported(ExporterKind::Otlp), 0, "{receiver:?}");
        assert_eq!(stats.exported(ExporterKind::Zipkin), 0);
        // 30 spans, failed once for each of the two exporters.
        assert_eq!(stats.dropped(DropReason::ExportFailed), 60, "{receiver:?}");
        assert_eq!(stats.dropped(DropReason::QueueFull), 0);
        pipeline.shutdown(Duration::from_secs(1)).await;

        let failures = collector.wait_handshake_failures(receiver, 1).await;
        assert!(failures[0].contains("UnknownCA"), "{failures:?}");
        assert!(collector.handshakes(receiver).is_empty());
    }
    assert!(collector.otlp_spans(Receiver::OtlpGrpc).is_empty());
    assert!(collector.otlp_spans(Receiver::OtlpHttp).is_empty());
    assert!(collector.zipkin_spans().is_empty());

    let logs = logs.text();
    for (exporter, receiver) in [
        ("otlp", Receiver::OtlpGrpc),
        ("otlp", Receiver::OtlpHttp),
        ("zipkin", Receiver::Zipkin),
    ] {
        // This test's lines: the collector's ports are its own.
        let endpoint = collector.endpoint(receiver);
        let line = logs
            .lines()
            .find(|l| {
                l.contains("span export failed")
                    && l.contains(&format!("exporter=\"{exporter}\""))
                    && l.contains(&endpoint)
            })
            .unwrap_or_else(|| panic!("no warning for {exporter}: {logs}"));
        assert!(
            line.contains("invalid peer certificate: UnknownIssuer"),
            "{line}"
        );
    }
}

// ---------------------------------------------------------------------------
// Client certificates

/// A collector that requires a client certificate gets spans from an
/// exporter given one through the `OTEL_EXPORTER_OTLP_CLIENT_*` variables,
/// and none from one without.
#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    logs();
    let dir = TempDir::new("tls-client");
    let server_ca = TestCa::new("collector CA");
    let client_ca = TestCa::new("exporters' CA");
    let collector = Collector::start_tls(
        ServerTls::new(&server_ca.server(&["127.0.0.1"])).require_client_cert(&client_ca),
    );
    let ca_file = server_ca.write_cert(dir.path()).display().to_string();
    let (cert, key) = client_ca.client("l7inspect").write(dir.path(), "client");

    for (receiver, protocol) in [
        (Receiver::OtlpGrpc, "grpc"),
        (Receiver::OtlpHttp, "http/protobuf"),
    ] {
        let endpoint = collector.endpoint(receiver);
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.clone()),
        ];

        // Without a client certificate: refused at the handshake.
        let (pipeline, sink) = start(from_vars(&vars));
        record(&sink, 2);
        assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
        let stats = pipeline.stats();
        assert_eq!(stats.exported(ExporterKind::Otlp), 0, "{protocol}");
        assert_eq!(stats.dropped(DropReason::ExportFailed), 2, "{protocol}");
        let failures = collector.wait_handshake_failures(receiver, 1).await;
        assert!(
            failures[0].contains("peer sent no certificates"),
            "{protocol}: {failures:?}"
        );

        // With one (the traces-specific key over a generic one that is not
        // a key file at all).
        vars.extend([
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                cert.display().to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                key.display().to_string(),
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", ca_file.clone()),
        ]);
        let (pipeline, sink) = start(from_vars(&vars));
        record(&sink, 2);
        assert_eq!(pipeline.flush().await, FlushOutcome::Complete);
        assert_eq!(collector.wait_otlp_spans(receiver, 2).await.len(), 2);
        assert_eq!(pipeline.stats().exported(ExporterKind::Otlp), 2);
        let handshakes = collector.handshakes(receiver);
        assert_eq!(handshakes.len(), 1, "{protocol}");
        assert_eq!(handshakes[0].client_certs, 1, "{protocol}");
    }
}
