//! Export configuration as plain data: what the sidecar builds from its
//! flags and the `OTEL_*` environment (see [`super::env`]) and hands to
//! [`super::ExportPipeline::start`].

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_semantic_conventions::resource::{
    SERVICE_NAME, TELEMETRY_DISTRO_NAME, TELEMETRY_DISTRO_VERSION,
};

/// Default bound of the span queue (`OTEL_BSP_MAX_QUEUE_SIZE`'s default).
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// Default largest batch handed to an exporter (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`'s default).
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Default longest time a span waits in a partial batch. The specification's
/// default is 5 s; a proxy's spans are more useful sooner, so 1 s.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);
/// Default number of finished spans kept in [`super::RecentSpans`].
pub const DEFAULT_RECENT_CAPACITY: usize = 1000;
/// Default bound on one export call (`OTEL_EXPORTER_OTLP_TIMEOUT`'s default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// `service.name` when nothing names the service, as the specification says.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Where and how finished spans are exported.
///
/// Any of the exporters may be configured at once; with none, spans are
/// only kept in [`super::RecentSpans`].
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    /// The OTLP exporter, if any.
    pub otlp: Option<OtlpConfig>,
    /// The Zipkin v2 JSON exporter, if any.
    pub zipkin: Option<ZipkinConfig>,
    /// Write each span to standard output, one JSON object per line (as
    /// the live view's span API shows it): `OTEL_TRACES_EXPORTER=console`.
    pub console: bool,
    /// Capacity of the bounded hand-off queue; a span ended while it is full
    /// is dropped and counted as `queue_full`. Must be at least 1.
    pub queue_size: usize,
    /// A batch is exported once it holds this many spans. Must be at least 1.
    pub max_batch: usize,
    /// ... or once its first span has waited this long, whichever comes first.
    pub batch_delay: Duration,
    /// How many of the most recent finished (sampled) spans to keep in
    /// memory for the admin view; 0 keeps none.
    pub recent_capacity: usize,
}

/// The OTLP exporter's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full traces URL, used as is: e.g. `http://collector:4317` for
    /// gRPC or `http://collector:4318/v1/traces` for HTTP/protobuf.
    /// `https://` speaks TLS (gRPC: h2 negotiated by ALPN) as
    /// [`tls`](Self::tls) says; `http://` is plaintext (gRPC: h2c).
    pub endpoint: String,
    /// The wire protocol.
    pub protocol: OtlpProtocol,
    /// Extra request headers (gRPC metadata for [`OtlpProtocol::Grpc`]),
    /// e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// Request body compression, if any.
    pub compression: Option<Compression>,
    /// Bound on one export call, retries included; on expiry the batch is
    /// dropped for this exporter and counted as `export_failed`.
    pub timeout: Duration,
    /// Whom to trust and what to present for an `https://` endpoint.
    pub tls: TlsConfig,
}

/// The OTLP wire protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`), the default.
    #[default]
    Grpc,
    /// OTLP/HTTP with a protobuf body (`http/protobuf`).
    HttpProtobuf,
}

/// Request body compression for OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip.
    Gzip,
}

/// The Zipkin exporter's settings (Zipkin v2 JSON over HTTP POST).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipkinConfig {
    /// The full URL spans are POSTed to, e.g. `http://zipkin:9411/api/v2/spans`;
    /// `https://` speaks TLS as [`tls`](Self::tls) says.
    pub endpoint: String,
    /// Bound on one export call; on expiry the batch is dropped for this
    /// exporter and counted as `export_failed`.
    pub timeout: Duration,
    /// Whom to trust and what to present for an `https://` endpoint.
    /// [`from_otel_env_with`](super::from_otel_env_with) leaves it at the
    /// default (the system's roots, no client certificate): the
    /// specification has no certificate variables for Zipkin, and the
    /// OTLP ones are not borrowed for it.
    pub tls: TlsConfig,
}

/// TLS settings of an exporter, used when its endpoint is `https://`.
///
/// The files are read once, when the pipeline is built
/// ([`ExportPipeline::start`](super::ExportPipeline::start)): a file that is
/// missing, unreadable or holds no usable PEM is an
/// [`ExportBuildError::TlsFile`](super::ExportBuildError::TlsFile) then, not
/// a failure at the first export. A configured file is read even when the
/// endpoint is `http://`, so a broken one is found at startup all the same.
///
/// The default trusts the system's roots (what `rustls-native-certs`
/// finds: the platform's CA bundle, or the files `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` name) and presents no client certificate. TLS 1.2 and
/// 1.3 are offered, with rustls's `ring` provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Trust the CA certificates in this PEM file (one or more) instead of
    /// the system's roots: `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub ca: Option<PemFile>,
    /// Present this certificate chain (PEM, the leaf first) when the
    /// collector asks for one: `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`.
    /// Needs [`client_key`](Self::client_key).
    pub client_cert: Option<PemFile>,
    /// The private key of [`client_cert`](Self::client_cert) (PEM:
    /// PKCS#8, PKCS#1 or SEC1): `OTEL_EXPORTER_OTLP_CLIENT_KEY`.
    pub client_key: Option<PemFile>,
}

/// A PEM file named in the configuration, and the setting that named it,
/// so that an error about the file can say where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFile {
    /// The file.
    pub path: PathBuf,
    /// The variable or flag that named it (e.g.
    /// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`); `None` for a configuration
    /// built in code.
    pub named_by: Option<&'static str>,
}

/// What names this process in every exported span: the OpenTelemetry
/// resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceConfig {
    /// `service.name`; wins over a `service.name` in `attributes`.
    pub service_name: String,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), all strings.
    pub attributes: Vec<(String, String)>,
}

/// The sampler, as plain data (the specification's `OTEL_TRACES_SAMPLER`
/// values); [`SamplerConfig::to_sampler`] maps it to the SDK's [`Sampler`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum SamplerConfig {
    /// `always_on`: sample every trace, ignoring the parent's decision.
    AlwaysOn,
    /// `always_off`: sample nothing.
    AlwaysOff,
    /// `traceidratio`: sample this fraction (0.0 ..= 1.0) of trace ids,
    /// ignoring the parent's decision.
    TraceIdRatio(f64),
    /// `parentbased_always_on`: follow the parent; sample roots. The default.
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: follow the parent; sample no roots.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: follow the parent; sample this fraction
    /// of roots.
    ParentBasedTraceIdRatio(f64),
}

// === impl ExportConfig ===

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            zipkin: None,
            console: false,
            queue_size: DEFAULT_QUEUE_SIZE,
            max_batch: DEFAULT_MAX_BATCH,
            batch_delay: DEFAULT_BATCH_DELAY,
            recent_capacity: DEFAULT_RECENT_CAPACITY,
        }
    }
}

// === impl OtlpConfig ===

impl OtlpConfig {
    /// An exporter to `endpoint` over `protocol`, with no headers, no
    /// compression, the default 10 s timeout and, for `https://`, the
    /// system's roots.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            compression: None,
            timeout: DEFAULT_EXPORT_TIMEOUT,
            tls: TlsConfig::default(),
        }
    }
}

// === impl OtlpProtocol ===

impl OtlpProtocol {
    /// The specification's name: `grpc` or `http/protobuf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

// === impl ZipkinConfig ===

impl ZipkinConfig {
    /// An exporter POSTing to `endpoint` with the default 10 s timeout
    /// (and, for `https://`, the system's roots).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            timeout: DEFAULT_EXPORT_TIMEOUT,
            tls: TlsConfig::default(),
        }
    }
}

// === impl PemFile ===

impl PemFile {
    /// The file at `path`, named in code (no variable to blame).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            named_by: None,
        }
    }
}

// === impl ResourceConfig ===

impl Default for ResourceConfig {
    fn default() -> Self {
        Self {
            service_name: UNKNOWN_SERVICE.to_owned(),
            attributes: Vec::new(),
        }
    }
}

impl ResourceConfig {
    /// Builds the resource without reading the environment (unlike
    /// `Resource::builder()`).
    ///
    /// It holds the SDK's own `telemetry.sdk.{name,language,version}`, then
    /// `attributes`, then `telemetry.distro.name` = `distro_name` and
    /// `telemetry.distro.version` = `distro_version` (the semantic
    /// conventions' attributes for a distribution built on the SDK, which is
    /// what l7inspect is: pass `"l7inspect"` and the caller's
    /// `env!("CARGO_PKG_VERSION")`), then `service.name`. Later entries win.
    pub fn to_resource(&self, distro_name: &str, distro_version: &str) -> Resource {
        Resource::builder_empty()
            .with_detector(Box::new(TelemetryResourceDetector))
            .with_attributes(
                self.attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attributes([
                KeyValue::new(TELEMETRY_DISTRO_NAME, distro_name.to_owned()),
                KeyValue::new(TELEMETRY_DISTRO_VERSION, distro_version.to_owned()),
                KeyValue::new(SERVICE_NAME, self.service_name.clone()),
            ])
            .build()
    }
}

// === impl SamplerConfig ===

impl SamplerConfig {
    /// The SDK sampler this stands for.
    pub fn to_sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::{Key, Value};

    #[test]
    fn resource_has_service_distro_and_sdk_attributes() {
        let cfg = ResourceConfig {
            service_name: "checkout".into(),
            attributes: vec![
                ("deployment.environment.name".into(), "prod".into()),
                ("service.name".into(), "overridden".into()),
                ("telemetry.distro.name".into(), "overridden".into()),
            ],
        };
        let r = cfg.to_resource("l7inspect", "1.2.3");
        let get = |k: &'static str| r.get(&Key::from_static_str(k));
        assert_eq!(get("service.name"), Some(Value::from("checkout")));
        assert_eq!(get("telemetry.distro.name"), Some(Value::from("l7inspect")));
        assert_eq!(get("telemetry.distro.version"), Some(Value::from("1.2.3")));
        assert_eq!(
            get("deployment.environment.name"),
            Some(Value::from("prod"))
        );
        assert_eq!(get("telemetry.sdk.language"), Some(Value::from("rust")));
        assert_eq!(
            get("telemetry.sdk.name"),
            Some(Value::from("opentelemetry"))
        );
        assert!(get("telemetry.sdk.version").is_some());
    }

    #[test]
    fn sampler_mapping() {
        assert!(matches!(
            SamplerConfig::default().to_sampler(),
            Sampler::ParentBased(_)
        ));
        assert!(matches!(
            SamplerConfig::TraceIdRatio(0.25).to_sampler(),
            Sampler::TraceIdRatioBased(r) if r == 0.25
        ));
        assert!(matches!(
            SamplerConfig::AlwaysOff.to_sampler(),
            Sampler::AlwaysOff
        ));
    }
}
