//! The OpenTelemetry SDK environment variables, and the flags that
//! override some of them, mapped to [`ExportConfig`],
//! [`ResourceConfig`](super::ResourceConfig) parts, [`SamplerConfig`] and
//! [`Propagators`].
//!
//! Pure: [`from_otel_env_with`] reads variables only through the lookup
//! closure it is given, so the library never touches the process
//! environment and tests pass a map. It is the one reader of the `OTEL_*`
//! variables: a program with flags for some settings passes their values in
//! as [`OtelOverrides`] rather than reading the variables itself, so that
//! each variable is read once and precedence is decided here (see
//! [`OtelOverrides`]). Meanings follow the OpenTelemetry specification
//! ("Environment Variable Specification" and "OTLP Exporter
//! Configuration"), with these choices:
//! - An empty value counts as unset, as the specification says; an empty
//!   flag value too.
//! - Enumerated values are case-insensitive.
//! - A value that cannot be used is an error naming the variable (or the
//!   flag it came from), the value and why; the sidecar turns it into exit
//!   code 2 instead of running with a silently different configuration.
//!   (`OTEL_EXPORTER_OTLP_HEADERS` values are redacted in errors: they
//!   often hold credentials.)
//! - Without `OTEL_TRACES_EXPORTER`, an exporter runs where its endpoint is
//!   set: without an OTLP endpoint (variable or override) there is no OTLP
//!   exporter (rather than the specification's `localhost` default), and
//!   the sidecar keeps spans in memory only. With it, exactly the exporters
//!   it lists run (`otlp`, `zipkin`), each at its endpoint or else the
//!   specification's default (`http://localhost:4317`,
//!   `http://localhost:4318/v1/traces`, `http://localhost:9411/api/v2/spans`);
//!   `none` runs none, whatever endpoints are set. `console` (one JSON line
//!   per span on standard output) runs only when listed.
//! - Endpoints are `http://` (plaintext; h2c for gRPC) or `https://` (TLS).
//!   An OTLP/gRPC endpoint may have no scheme (`collector:4317`): then
//!   `OTEL_EXPORTER_OTLP_INSECURE` decides, as the specification says,
//!   `true` giving `http://` and `false` (the default) `https://`; it is
//!   resolved here, so [`OtlpConfig::endpoint`] always has a scheme. For
//!   an endpoint with a scheme, and for `http/protobuf`, the variable has
//!   no effect (an `http/protobuf` endpoint needs a scheme).
//! - `OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE` and
//!   `..._CLIENT_KEY` (and their `TRACES_` forms, which win) are file paths
//!   put in [`OtlpConfig::tls`]; the files are read when the pipeline is
//!   built, not here (an unusable file is an
//!   [`ExportBuildError::TlsFile`](super::ExportBuildError::TlsFile) naming
//!   the variable and the file). Zipkin has no such variables: an
//!   `https://` Zipkin endpoint is checked against the system's roots.

use std::time::Duration;

use super::config::{
    Compression, ExportConfig, OtlpConfig, OtlpProtocol, PemFile, SamplerConfig, TlsConfig,
    ZipkinConfig,
};
use crate::Propagators;

/// `OTEL_SERVICE_NAME`
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_RESOURCE_ATTRIBUTES`
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_HEADERS`
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// `OTEL_EXPORTER_OTLP_COMPRESSION`
pub const OTEL_EXPORTER_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
/// `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`
pub const OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`: a PEM file of the CA certificates
/// to trust for an `https://` collector, instead of the system's roots.
pub const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`
pub const OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`: a PEM file of the client
/// certificate (chain) to present to the collector.
pub const OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE`
pub const OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: &str =
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_CLIENT_KEY`: a PEM file of the client
/// certificate's private key.
pub const OTEL_EXPORTER_OTLP_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
/// `OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY`
pub const OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY";
/// `OTEL_EXPORTER_OTLP_INSECURE`: `true` or `false`; whether an OTLP/gRPC
/// endpoint without a scheme is plaintext.
pub const OTEL_EXPORTER_OTLP_INSECURE: &str = "OTEL_EXPORTER_OTLP_INSECURE";
/// `OTEL_EXPORTER_OTLP_TRACES_INSECURE`
pub const OTEL_EXPORTER_OTLP_TRACES_INSECURE: &str = "OTEL_EXPORTER_OTLP_TRACES_INSECURE";
/// `OTEL_EXPORTER_ZIPKIN_ENDPOINT`
pub const OTEL_EXPORTER_ZIPKIN_ENDPOINT: &str = "OTEL_EXPORTER_ZIPKIN_ENDPOINT";
/// `OTEL_EXPORTER_ZIPKIN_TIMEOUT`
pub const OTEL_EXPORTER_ZIPKIN_TIMEOUT: &str = "OTEL_EXPORTER_ZIPKIN_TIMEOUT";
/// `OTEL_TRACES_EXPORTER`
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// `OTEL_TRACES_SAMPLER`
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `OTEL_BSP_MAX_QUEUE_SIZE`
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// `OTEL_BSP_SCHEDULE_DELAY`
pub const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// `OTEL_PROPAGATORS`
pub const OTEL_PROPAGATORS: &str = "OTEL_PROPAGATORS";
/// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`
pub const OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: &str = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT";
/// `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`
pub const OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: &str = "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT";

/// Every variable [`from_otel_env_with`] reads, e.g. for `--help` text or to
/// log which ones were set.
pub const VARIABLES: &[&str] = &[
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_COMPRESSION,
    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_INSECURE,
    OTEL_EXPORTER_OTLP_TRACES_INSECURE,
    OTEL_EXPORTER_ZIPKIN_ENDPOINT,
    OTEL_EXPORTER_ZIPKIN_TIMEOUT,
    OTEL_TRACES_EXPORTER,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
    OTEL_PROPAGATORS,
    OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
];

/// What the `OTEL_*` variables, and the [`OtelOverrides`] over them, say;
/// unset variables leave defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelEnv {
    /// [`OtelOverrides::service_name`], else `OTEL_SERVICE_NAME`, else a
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `None` (the caller
    /// picks a default, e.g. the host name).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, percent-decoded, in order.
    pub resource_attributes: Vec<(String, String)>,
    /// [`OtelOverrides::sample_ratio`] (`parentbased_traceidratio`), else
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`; default
    /// `parentbased_always_on`.
    pub sampler: SamplerConfig,
    /// Exporters and batching; [`ExportConfig::default`] where unset.
    pub export: ExportConfig,
    /// [`OtelOverrides::propagators`], else `OTEL_PROPAGATORS`, read by
    /// [`Propagators::parse`]; default [`Propagators::default`].
    pub propagators: Propagators,
    /// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else
    /// `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`: the longest string attribute, in
    /// bytes (`None`: unset, the caller's default).
    pub attribute_value_limit: Option<usize>,
}

/// A value given for a setting by something other than its `OTEL_*`
/// variable, typically a command-line flag, and the name to blame when it
/// cannot be used.
#[derive(Clone, Debug, PartialEq)]
pub struct Override<T> {
    /// Where the value came from as the user wrote it, e.g.
    /// `--otlp-endpoint`: errors name it instead of a variable.
    pub flag: &'static str,
    /// The value as given.
    pub value: T,
}

impl<T> Override<T> {
    /// `value`, given by `flag`.
    pub fn new(flag: &'static str, value: T) -> Self {
        Override { flag, value }
    }
}

/// Settings given by flags, which take precedence over the `OTEL_*`
/// variables for the same setting.
///
/// [`from_otel_env_with`] decides every setting it reads in one place, in
/// this order:
///
/// 1. the override here, when set and not empty;
/// 2. else the signal-specific variable (`OTEL_EXPORTER_OTLP_TRACES_*`);
/// 3. else the generic variable (`OTEL_EXPORTER_OTLP_*`);
/// 4. else the default.
///
/// A setting with one variable (`OTEL_SERVICE_NAME`,
/// `OTEL_EXPORTER_ZIPKIN_ENDPOINT`, `OTEL_PROPAGATORS`) has one step
/// between the override and the default; what each override replaces is on
/// its field. `OTEL_TRACES_EXPORTER` has no override: when
/// set, it still picks which exporters run, so
/// `OTEL_TRACES_EXPORTER=none` turns off an exporter whose endpoint was
/// given by a flag.
///
/// A value that cannot be used is an [`EnvError`] naming the flag
/// ([`Override::flag`]) when it came from here, else the variable.
/// `Default` overrides nothing: the variables alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OtelOverrides {
    /// `service.name`; over `OTEL_SERVICE_NAME` and a `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_name: Option<Override<String>>,
    /// The OTLP traces endpoint, a full URL used as is (no `/v1/traces` is
    /// appended); over `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<Override<String>>,
    /// The OTLP protocol, `grpc` or `http/protobuf`; over
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` and `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub otlp_protocol: Option<Override<String>>,
    /// The Zipkin endpoint; over `OTEL_EXPORTER_ZIPKIN_ENDPOINT`.
    pub zipkin_endpoint: Option<Override<String>>,
    /// Sample this fraction of new traces with `parentbased_traceidratio`
    /// (0 to 1); over `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sample_ratio: Option<Override<f64>>,
    /// A propagator list as [`Propagators::parse`] reads it; over
    /// `OTEL_PROPAGATORS`.
    pub propagators: Option<Override<String>>,
}

/// A variable's or flag's value that cannot be used.
///
/// Displayed as `VARIABLE="value": reason`, or `--flag="value": reason`
/// when it came from an [`Override`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    /// The variable the value was read from; when [`flag`](Self::flag) is
    /// set, the variable that flag overrides (the signal-specific one where
    /// there are two, `OTEL_TRACES_SAMPLER_ARG` for a sample ratio).
    pub var: &'static str,
    /// The flag the value came from ([`Override::flag`]), `None` when it
    /// was read from `var`.
    pub flag: Option<&'static str>,
    /// The value (redacted for header variables).
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.flag.unwrap_or(self.var);
        write!(f, "{name}={:?}: {}", self.value, self.reason)
    }
}

impl std::error::Error for EnvError {}

/// One setting's value and where it came from, as [`pick`] chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Given {
    /// As given, untrimmed.
    value: String,
    /// The variable read, or for a flag the first variable of the setting.
    var: &'static str,
    /// The flag, when the value came from an override.
    flag: Option<&'static str>,
}

impl Given {
    /// Whether the value was read from the variable `var` (not a flag).
    fn is_var(&self, var: &str) -> bool {
        self.flag.is_none() && self.var == var
    }

    /// The error for this value, naming where it came from.
    fn err(&self, reason: impl Into<String>) -> EnvError {
        EnvError {
            var: self.var,
            flag: self.flag,
            value: self.value.clone(),
            reason: reason.into(),
        }
    }
}

/// The precedence, in one place (documented on [`OtelOverrides`]): the
/// flag's value unless empty, else the first of `vars` that is set (the
/// signal-specific variable is listed before the generic one), else `None`
/// for the caller's default. `get` treats empty variables as unset.
fn pick(
    flag: Option<&Override<String>>,
    vars: &[&'static str],
    get: impl Fn(&'static str) -> Option<String>,
) -> Option<Given> {
    if let Some(o) = flag.filter(|o| !o.value.trim().is_empty()) {
        return Some(Given {
            value: o.value.clone(),
            var: vars[0],
            flag: Some(o.flag),
        });
    }
    vars.iter().find_map(|&var| {
        get(var).map(|value| Given {
            value,
            var,
            flag: None,
        })
    })
}

/// [`from_otel_env_with`] without overrides: the variables alone.
pub fn from_otel_env(lookup: impl Fn(&str) -> Option<String>) -> Result<OtelEnv, EnvError> {
    from_otel_env_with(&OtelOverrides::default(), lookup)
}

/// Maps the OpenTelemetry SDK environment variables, read through
/// `lookup` (e.g. `|k| std::env::var(k).ok()`) once each, and the
/// `overrides` given by flags, to configuration.
///
/// Precedence, for every setting: the flag in `overrides`, else the
/// signal-specific `OTEL_EXPORTER_OTLP_TRACES_*` variable, else the generic
/// `OTEL_EXPORTER_OTLP_*` one, else the default (see [`OtelOverrides`]).
/// An endpoint given by [`OtelOverrides::otlp_endpoint`] or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is the full URL, used as is;
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL to which `/v1/traces` is
/// appended for `http/protobuf`, and which is used as is for `grpc` (the
/// default protocol).
///
/// # Errors
/// The first value that cannot be used, naming its flag or variable.
pub fn from_otel_env_with(
    overrides: &OtelOverrides,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<OtelEnv, EnvError> {
    // The specification: an empty value is the same as unset.
    let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty());
    let choose = |flag: Option<&Override<String>>, vars: &[&'static str]| pick(flag, vars, get);

    let resource_attributes = match get(OTEL_RESOURCE_ATTRIBUTES) {
        Some(v) => {
            parse_key_values(&v).map_err(|reason| err(OTEL_RESOURCE_ATTRIBUTES, &v, reason))?
        }
        None => Vec::new(),
    };
    let service_name = choose(overrides.service_name.as_ref(), &[OTEL_SERVICE_NAME])
        .map(|g| g.value.trim().to_owned())
        .or_else(|| {
            resource_attributes
                .iter()
                .rev()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        });

    // The one override that is not a string and stands for two variables:
    // the same precedence as `pick`'s, flag first.
    let sampler = match &overrides.sample_ratio {
        Some(o) if (0.0..=1.0).contains(&o.value) => {
            SamplerConfig::ParentBasedTraceIdRatio(o.value)
        }
        Some(o) => {
            return Err(EnvError {
                var: OTEL_TRACES_SAMPLER_ARG,
                flag: Some(o.flag),
                value: o.value.to_string(),
                reason: "must be between 0 and 1".into(),
            });
        }
        None => parse_sampler(get(OTEL_TRACES_SAMPLER), get(OTEL_TRACES_SAMPLER_ARG))?,
    };
    let propagators = match choose(overrides.propagators.as_ref(), &[OTEL_PROPAGATORS]) {
        Some(g) => Propagators::parse(&g.value).map_err(|e| g.err(e.to_string()))?,
        None => Propagators::default(),
    };
    // `None`: not set, every exporter whose endpoint is set runs.
    let exporters = get(OTEL_TRACES_EXPORTER)
        .map(|v| parse_exporters(&v))
        .transpose()?;
    let wants = |name: &str| exporters.as_ref().is_none_or(|list| list.contains(&name));

    let protocol = match choose(
        overrides.otlp_protocol.as_ref(),
        &[
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ],
    ) {
        Some(g) => match g.value.trim().to_ascii_lowercase().as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            "http/json" => {
                return Err(g.err("http/json is not supported; use grpc or http/protobuf"));
            }
            _ => return Err(g.err("expected grpc or http/protobuf")),
        },
        None => OtlpProtocol::Grpc,
    };
    let insecure = match choose(
        None,
        &[
            OTEL_EXPORTER_OTLP_TRACES_INSECURE,
            OTEL_EXPORTER_OTLP_INSECURE,
        ],
    ) {
        Some(g) => match g.value.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(g.err("expected true or false")),
        },
        None => false,
    };

    let endpoint = match choose(
        overrides.otlp_endpoint.as_ref(),
        &[
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            OTEL_EXPORTER_OTLP_ENDPOINT,
        ],
    ) {
        Some(g) => {
            let url = otlp_url(g.value.trim(), protocol, insecure).map_err(|r| g.err(r))?;
            let url = url.as_str();
            // Only the generic variable is a base URL; the flag and the
            // traces variable are the full URL.
            Some(match protocol {
                OtlpProtocol::HttpProtobuf if g.is_var(OTEL_EXPORTER_OTLP_ENDPOINT) => {
                    format!("{}/v1/traces", url.trim_end_matches('/'))
                }
                _ => url.to_owned(),
            })
        }
        // Listed in OTEL_TRACES_EXPORTER without an endpoint: the
        // specification's default.
        None if exporters.is_some() => Some(match protocol {
            OtlpProtocol::Grpc => DEFAULT_OTLP_GRPC_ENDPOINT.to_owned(),
            OtlpProtocol::HttpProtobuf => DEFAULT_OTLP_HTTP_ENDPOINT.to_owned(),
        }),
        None => None,
    };

    let otlp = match endpoint.filter(|_| wants("otlp")) {
        None => None,
        Some(endpoint) => {
            let headers = match choose(
                None,
                &[
                    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
                    OTEL_EXPORTER_OTLP_HEADERS,
                ],
            ) {
                Some(g) => parse_headers(&g.value).map_err(|reason| EnvError {
                    value: format!("<redacted, {} bytes>", g.value.len()),
                    ..g.err(reason)
                })?,
                None => Vec::new(),
            };
            let compression = match choose(
                None,
                &[
                    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
                    OTEL_EXPORTER_OTLP_COMPRESSION,
                ],
            ) {
                Some(g) => match g.value.trim().to_ascii_lowercase().as_str() {
                    "gzip" => Some(Compression::Gzip),
                    "none" => None,
                    _ => return Err(g.err("expected gzip or none")),
                },
                None => None,
            };
            let timeout = match choose(
                None,
                &[
                    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
                    OTEL_EXPORTER_OTLP_TIMEOUT,
                ],
            ) {
                Some(g) => parse_millis(g.var, &g.value)?,
                None => super::config::DEFAULT_EXPORT_TIMEOUT,
            };
            // Paths only: the files are read when the pipeline is built.
            let file = |vars: &[&'static str]| {
                choose(None, vars).map(|g| PemFile {
                    path: g.value.trim().into(),
                    named_by: Some(g.var),
                })
            };
            let tls = TlsConfig {
                ca: file(&[
                    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
                    OTEL_EXPORTER_OTLP_CERTIFICATE,
                ]),
                client_cert: file(&[
                    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
                    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
                ]),
                client_key: file(&[
                    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
                    OTEL_EXPORTER_OTLP_CLIENT_KEY,
                ]),
            };
            Some(OtlpConfig {
                endpoint,
                protocol,
                headers,
                compression,
                timeout,
                tls,
            })
        }
    };

    let zipkin_endpoint = choose(
        overrides.zipkin_endpoint.as_ref(),
        &[OTEL_EXPORTER_ZIPKIN_ENDPOINT],
    )
    .or_else(|| {
        // Listed in OTEL_TRACES_EXPORTER without an endpoint: the
        // specification's default.
        exporters.is_some().then(|| Given {
            value: DEFAULT_ZIPKIN_ENDPOINT.to_owned(),
            var: OTEL_EXPORTER_ZIPKIN_ENDPOINT,
            flag: None,
        })
    });
    let zipkin = match zipkin_endpoint.filter(|_| wants("zipkin")) {
        None => None,
        Some(g) => {
            let endpoint = g.value.trim().to_owned();
            check_url(&endpoint).map_err(|reason| g.err(reason))?;
            let mut cfg = ZipkinConfig::new(endpoint);
            if let Some(t) = get(OTEL_EXPORTER_ZIPKIN_TIMEOUT) {
                cfg.timeout = parse_millis(OTEL_EXPORTER_ZIPKIN_TIMEOUT, &t)?;
            }
            Some(cfg)
        }
    };

    let mut export = ExportConfig {
        otlp,
        zipkin,
        // Only when named: it writes to standard output.
        console: exporters.as_ref().is_some_and(|l| l.contains(&"console")),
        ..ExportConfig::default()
    };
    if let Some(v) = get(OTEL_BSP_MAX_QUEUE_SIZE) {
        export.queue_size = parse_positive(OTEL_BSP_MAX_QUEUE_SIZE, &v)?;
    }
    if let Some(v) = get(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) {
        export.max_batch = parse_positive(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, &v)?;
        if export.max_batch > export.queue_size {
            return Err(err(
                OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
                &v,
                format!(
                    "must not exceed the queue size {} (OTEL_BSP_MAX_QUEUE_SIZE)",
                    export.queue_size
                ),
            ));
        }
    }
    if let Some(v) = get(OTEL_BSP_SCHEDULE_DELAY) {
        export.batch_delay = parse_millis(OTEL_BSP_SCHEDULE_DELAY, &v)?;
    }

    let attribute_value_limit = match choose(
        None,
        &[
            OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT,
            OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
        ],
    ) {
        Some(g) => Some(parse_positive(g.var, &g.value)?),
        None => None,
    };

    Ok(OtelEnv {
        service_name,
        resource_attributes,
        sampler,
        export,
        propagators,
        attribute_value_limit,
    })
}

/// The specification's OTLP/gRPC endpoint when `OTEL_TRACES_EXPORTER`
/// names `otlp` and no endpoint is set.
pub const DEFAULT_OTLP_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// The same for `http/protobuf`.
pub const DEFAULT_OTLP_HTTP_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// The specification's Zipkin endpoint when `OTEL_TRACES_EXPORTER` names
/// `zipkin` and `OTEL_EXPORTER_ZIPKIN_ENDPOINT` is not set.
pub const DEFAULT_ZIPKIN_ENDPOINT: &str = "http://localhost:9411/api/v2/spans";

/// `OTEL_TRACES_EXPORTER`: a comma-separated list of `otlp`, `zipkin` and
/// `console`, or `none` alone (an empty list: no exporter).
fn parse_exporters(v: &str) -> Result<Vec<&'static str>, EnvError> {
    let mut list = Vec::new();
    let names: Vec<String> = v
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for name in &names {
        match name.as_str() {
            "otlp" => list.push("otlp"),
            "zipkin" => list.push("zipkin"),
            "console" => list.push("console"),
            "none" if names.len() == 1 => {}
            "none" => return Err(err(OTEL_TRACES_EXPORTER, v, "none cannot be combined")),
            "jaeger" => {
                return Err(err(
                    OTEL_TRACES_EXPORTER,
                    v,
                    "the jaeger exporter is deprecated; Jaeger takes otlp",
                ));
            }
            _ => {
                return Err(err(
                    OTEL_TRACES_EXPORTER,
                    v,
                    format!(
                        "unsupported exporter {name:?}; expected otlp, zipkin, console or none"
                    ),
                ));
            }
        }
    }
    Ok(list)
}

fn err(var: &'static str, value: &str, reason: impl Into<String>) -> EnvError {
    EnvError {
        var,
        flag: None,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerConfig, EnvError> {
    let Some(name) = name else {
        return Ok(SamplerConfig::default());
    };
    // The ratio samplers' argument: a probability, 1.0 when unset.
    let ratio = || -> Result<f64, EnvError> {
        match &arg {
            None => Ok(1.0),
            Some(a) => match a.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(err(
                    OTEL_TRACES_SAMPLER_ARG,
                    a,
                    format!(
                        "{} needs a probability between 0 and 1",
                        name.trim().to_ascii_lowercase()
                    ),
                )),
            },
        }
    };
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "always_on" => SamplerConfig::AlwaysOn,
        "always_off" => SamplerConfig::AlwaysOff,
        "traceidratio" => SamplerConfig::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerConfig::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerConfig::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerConfig::ParentBasedTraceIdRatio(ratio()?),
        "jaeger_remote" | "parentbased_jaeger_remote" | "xray" => {
            return Err(err(OTEL_TRACES_SAMPLER, &name, "sampler not supported"));
        }
        _ => {
            return Err(err(
                OTEL_TRACES_SAMPLER,
                &name,
                "expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

/// An exporter endpoint: `http://` or `https://`, and a host.
fn check_url(v: &str) -> Result<(), String> {
    let uri: http::Uri = v.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("scheme {other} is not http or https")),
        None => return Err("no scheme: expected http:// or https://".into()),
    }
    if uri.authority().is_none() {
        return Err("no host".into());
    }
    Ok(())
}

/// An OTLP endpoint with its scheme: as given when it has one (checked by
/// [`check_url`]); for gRPC without one (`host:port`), `http://` when
/// `insecure`, else `https://` (the specification's
/// `OTEL_EXPORTER_OTLP_INSECURE`, which applies to nothing else).
fn otlp_url(v: &str, protocol: OtlpProtocol, insecure: bool) -> Result<String, String> {
    let uri: http::Uri = v.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme().is_none() && protocol == OtlpProtocol::Grpc && uri.authority().is_some() {
        let scheme = if insecure { "http" } else { "https" };
        return Ok(format!("{scheme}://{v}"));
    }
    check_url(v)?;
    Ok(v.to_owned())
}

fn parse_millis(var: &'static str, v: &str) -> Result<Duration, EnvError> {
    match v.trim().parse::<u64>() {
        Ok(0) => Err(err(var, v, "must be more than 0 milliseconds")),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err(err(var, v, "expected a whole number of milliseconds")),
    }
}

fn parse_positive(var: &'static str, v: &str) -> Result<usize, EnvError> {
    match v.trim().parse::<usize>() {
        Ok(0) => Err(err(var, v, "must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(err(var, v, "expected a positive whole number")),
    }
}

/// `key=value,key=value` with percent-encoded keys and values (the W3C
/// Baggage-like format of `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS`). Empty members are skipped; surrounding
/// whitespace is trimmed.
fn parse_key_values(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, member) in v.split(',').enumerate() {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let n = i + 1;
        let Some((k, val)) = member.split_once('=') else {
            return Err(format!("member {n} has no '='"));
        };
        let k = percent_decode(k.trim()).map_err(|e| format!("member {n} key: {e}"))?;
        if k.is_empty() {
            return Err(format!("member {n} has an empty key"));
        }
        let val = percent_decode(val.trim()).map_err(|e| format!("member {n} value: {e}"))?;
        out.push((k, val));
    }
    Ok(out)
}

/// Like [`parse_key_values`], and each pair must be a valid HTTP header
/// (names are lower-cased, as gRPC metadata requires). Reasons never
/// quote values: they often are credentials.
fn parse_headers(v: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse_key_values(v)?;
    pairs
        .into_iter()
        .enumerate()
        .map(|(i, (k, val))| {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("header {} has an invalid name", i + 1))?;
            http::HeaderValue::from_str(&val)
                .map_err(|_| format!("header {} ({name}) has an invalid value", i + 1))?;
            Ok((name.as_str().to_owned(), val))
        })
        .collect()
}

/// Strict percent-decoding: `%` must be followed by two hex digits and the
/// result must be UTF-8 (the specification discards a value that fails to
/// decode; we report it).
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(format!("bad percent-encoding at byte {i}")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decodes to invalid UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<OtelEnv, EnvError> {
        env_with(&OtelOverrides::default(), pairs)
    }

    fn env_with(overrides: &OtelOverrides, pairs: &[(&str, &str)]) -> Result<OtelEnv, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_otel_env_with(overrides, |k| map.get(k).cloned())
    }

    fn flag<T>(name: &'static str, value: T) -> Option<Override<T>> {
        Some(Override::new(name, value))
    }

    #[test]
    fn pick_flag_then_signal_specific_then_generic_then_none() {
        let vars = [
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ];
        let lookup = |set: &'static [(&'static str, &'static str)]| {
            move |var: &'static str| {
                set.iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both: &[(&str, &str)] = &[
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "specific"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "generic"),
        ];
        let given = |value: &str, var, flag| Given {
            value: value.into(),
            var,
            flag,
        };
        let f = Override::new("--otlp-protocol", "flag".to_owned());

        // The flag beats both variables, and is blamed as the flag for
        // the signal-specific variable.
        assert_eq!(
            pick(Some(&f), &vars, lookup(both)),
            Some(given(
                "flag",
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
                Some("--otlp-protocol")
            ))
        );
        // The signal-specific variable beats the generic one.
        assert_eq!(
            pick(None, &vars, lookup(both)),
            Some(given("specific", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, None))
        );
        let generic: &[(&str, &str)] = &[(OTEL_EXPORTER_OTLP_PROTOCOL, "generic")];
        let g = pick(None, &vars, lookup(generic)).unwrap();
        assert_eq!(g, given("generic", OTEL_EXPORTER_OTLP_PROTOCOL, None));
        assert!(g.is_var(OTEL_EXPORTER_OTLP_PROTOCOL));
        // Nothing set: the caller's default.
        assert_eq!(pick(None, &vars, lookup(&[])), None);
        // An empty flag counts as unset, as an empty variable does.
        let empty = Override::new("--otlp-protocol", " ".to_owned());
        assert_eq!(
            pick(Some(&empty), &vars, lookup(generic)),
            Some(given("generic", OTEL_EXPORTER_OTLP_PROTOCOL, None))
        );

        // Errors name the flag, else the variable.
        let e = pick(Some(&f), &vars, lookup(both)).unwrap().err("bad");
        assert_eq!(e.to_string(), "--otlp-protocol=\"flag\": bad");
        let e = pick(None, &vars, lookup(both)).unwrap().err("bad");
        assert_eq!(e.flag, None);
        assert_eq!(
            e.to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"specific\": bad"
        );
    }

    #[test]
    fn overrides_beat_the_variables() {
        let vars = [
            (OTEL_SERVICE_NAME, "from-var"),
            (OTEL_RESOURCE_ATTRIBUTES, "service.name=from-attrs"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4318"),
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://traces:4318/x"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "grpc"),
            (
                OTEL_EXPORTER_ZIPKIN_ENDPOINT,
                "http://zipkin-var/api/v2/spans",
            ),
            (OTEL_TRACES_SAMPLER, "always_off"),
            (OTEL_PROPAGATORS, "b3"),
        ];
        let overrides = OtelOverrides {
            service_name: flag("--service-name", "from-flag".into()),
            otlp_endpoint: flag("--otlp-endpoint", "http://flag:4318/v1/traces".into()),
            otlp_protocol: flag("--otlp-protocol", "http/protobuf".into()),
            zipkin_endpoint: flag(
                "--zipkin-endpoint",
                "http://zipkin-flag/api/v2/spans".into(),
            ),
            sample_ratio: flag("--sample-ratio", 0.25),
            propagators: flag("--propagators", "jaeger,tracecontext".into()),
        };
        let e = env_with(&overrides, &vars).unwrap();
        assert_eq!(e.service_name.as_deref(), Some("from-flag"));
        let otlp = e.export.otlp.unwrap();
        // The flag's endpoint is the full URL, whatever the protocol.
        assert_eq!(otlp.endpoint, "http://flag:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            e.export.zipkin.unwrap().endpoint,
            "http://zipkin-flag/api/v2/spans"
        );
        assert_eq!(e.sampler, SamplerConfig::ParentBasedTraceIdRatio(0.25));
        assert_eq!(
            e.propagators,
            Propagators::parse("jaeger,tracecontext").unwrap()
        );

        // Without overrides, the variables.
        let e = env(&vars).unwrap();
        assert_eq!(e.service_name.as_deref(), Some("from-var"));
        assert_eq!(e.export.otlp.unwrap().endpoint, "http://traces:4318/x");
        assert_eq!(e.sampler, SamplerConfig::AlwaysOff);
        assert_eq!(e.propagators, Propagators::parse("b3").unwrap());

        // An override of the endpoint only: the protocol still comes from
        // the variables, the flag's URL is still used as is.
        let only_endpoint = OtelOverrides {
            otlp_endpoint: flag("--otlp-endpoint", "http://flag:4318".into()),
            ..OtelOverrides::default()
        };
        let e = env_with(
            &only_endpoint,
            &[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")],
        )
        .unwrap();
        let otlp = e.export.otlp.unwrap();
        assert_eq!(
            (otlp.endpoint.as_str(), otlp.protocol),
            ("http://flag:4318", OtlpProtocol::HttpProtobuf)
        );
        // OTEL_TRACES_EXPORTER still picks the exporters.
        let e = env_with(&only_endpoint, &[(OTEL_TRACES_EXPORTER, "none")]).unwrap();
        assert_eq!(e.export.otlp, None);
    }

    #[test]
    fn propagators_default_and_variable() {
        assert_eq!(env(&[]).unwrap().propagators, Propagators::default());
        assert_eq!(
            env(&[(OTEL_PROPAGATORS, "")]).unwrap().propagators,
            Propagators::default()
        );
        assert_eq!(
            env(&[(OTEL_PROPAGATORS, "none")]).unwrap().propagators,
            Propagators::parse("none").unwrap()
        );
        let e = env(&[(OTEL_PROPAGATORS, "tracecontext,xray")]).unwrap_err();
        assert_eq!(
            (e.var, e.flag, e.value.as_str()),
            (OTEL_PROPAGATORS, None, "tracecontext,xray")
        );
        assert_eq!(
            e.reason,
            crate::ParsePropagatorsError::Unsupported("xray".into()).to_string()
        );
    }

    #[test]
    fn bad_overrides_name_the_flag() {
        // (overrides, the flag blamed, its value, the reason)
        let cases: &[(OtelOverrides, &str, &str, &str)] = &[
            (
                OtelOverrides {
                    otlp_protocol: flag("--otlp-protocol", "udp".into()),
                    ..OtelOverrides::default()
                },
                "--otlp-protocol",
                "udp",
                "expected grpc or http/protobuf",
            ),
            (
                OtelOverrides {
                    otlp_endpoint: flag("--otlp-endpoint", "tcp://c:4317".into()),
                    ..OtelOverrides::default()
                },
                "--otlp-endpoint",
                "tcp://c:4317",
                "scheme tcp is not http or https",
            ),
            (
                OtelOverrides {
                    zipkin_endpoint: flag("--zipkin-endpoint", "zipkin:9411".into()),
                    ..OtelOverrides::default()
                },
                "--zipkin-endpoint",
                "zipkin:9411",
                "no scheme: expected http:// or https://",
            ),
            (
                OtelOverrides {
                    sample_ratio: flag("--sample-ratio", 1.5),
                    ..OtelOverrides::default()
                },
                "--sample-ratio",
                "1.5",
                "must be between 0 and 1",
            ),
            (
                OtelOverrides {
                    propagators: flag("--propagators", "none,b3".into()),
                    ..OtelOverrides::default()
                },
                "--propagators",
                "none,b3",
                "`none` cannot be combined with other propagators (got `none,b3`)",
            ),
        ];
        for (overrides, name, value, reason) in cases {
            // A good variable for the same setting does not hide the flag's
            // mistake.
            let e = env_with(
                overrides,
                &[
                    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "grpc"),
                    (OTEL_PROPAGATORS, "b3"),
                ],
            )
            .unwrap_err();
            assert_eq!(
                (e.flag, e.value.as_str(), e.reason.as_str()),
                (Some(*name), *value, *reason),
                "{overrides:?}"
            );
            assert!(e.to_string().starts_with(&format!("{name}=")), "{e}");
        }
    }

    #[test]
    fn attribute_value_length_limit() {
        assert_eq!(env(&[]).unwrap().attribute_value_limit, None);
        let e = env(&[(OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "300")]).unwrap();
        assert_eq!(e.attribute_value_limit, Some(300));
        // The span-specific variable wins over the general one.
        let e = env(&[
            (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "300"),
            (OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, "128"),
        ])
        .unwrap();
        assert_eq!(e.attribute_value_limit, Some(128));
        let e = env(&[(OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, "0")]).unwrap_err();
        assert_eq!(
            (e.var, e.reason.as_str()),
            (OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, "must be at least 1")
        );
    }

    #[test]
    fn nothing_set_gives_defaults() {
        let e = env(&[]).unwrap();
        assert_eq!(e.service_name, None);
        assert!(e.resource_attributes.is_empty());
        assert_eq!(e.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert_eq!(e.export, ExportConfig::default());
    }

    #[test]
    fn empty_values_are_unset() {
        let e = env(&[(OTEL_SERVICE_NAME, ""), (OTEL_EXPORTER_OTLP_ENDPOINT, " ")]).unwrap();
        assert_eq!(e.service_name, None);
        assert_eq!(e.export.otlp, None);
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let e = env(&[(
            OTEL_RESOURCE_ATTRIBUTES,
            "service.name=from-attrs, team=a%2Cb%3Dc ,,note=caf%C3%A9",
        )])
        .unwrap();
        assert_eq!(e.service_name.as_deref(), Some("from-attrs"));
        assert_eq!(
            e.resource_attributes,
            vec![
                ("service.name".to_owned(), "from-attrs".to_owned()),
                ("team".to_owned(), "a,b=c".to_owned()),
                ("note".to_owned(), "café".to_owned()),
            ]
        );
        let e = env(&[
            (OTEL_RESOURCE_ATTRIBUTES, "service.name=from-attrs"),
            (OTEL_SERVICE_NAME, "from-var"),
        ])
        .unwrap();
        assert_eq!(e.service_name.as_deref(), Some("from-var"));
    }

    #[test]
    fn bad_resource_attributes() {
        for (v, why) in [
            ("a=b,novalue", "member 2 has no '='"),
            ("=b", "member 1 has an empty key"),
            ("a=%zz", "member 1 value: bad percent-encoding at byte 0"),
            ("a=%C3", "member 1 value: percent-decodes to invalid UTF-8"),
            ("a=%4", "member 1 value: bad percent-encoding at byte 0"),
        ] {
            let e = env(&[(OTEL_RESOURCE_ATTRIBUTES, v)]).unwrap_err();
            assert_eq!(e.var, OTEL_RESOURCE_ATTRIBUTES);
            assert_eq!(e.value, v);
            assert_eq!(e.reason, why, "{v}");
        }
    }

    #[test]
    fn generic_endpoint_is_a_base_for_http_and_as_is_for_grpc() {
        let e = env(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")]).unwrap();
        let otlp = e.export.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://c:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.timeout, Duration::from_secs(10));

        for base in ["http://c:4318", "http://c:4318/"] {
            let e = env(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, base),
                (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            ])
            .unwrap();
            assert_eq!(e.export.otlp.unwrap().endpoint, "http://c:4318/v1/traces");
        }
        let e = env(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c/prefix"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "HTTP/PROTOBUF"),
        ])
        .unwrap();
        assert_eq!(e.export.otlp.unwrap().endpoint, "http://c/prefix/v1/traces");
    }

    #[test]
    fn traces_variables_take_precedence() {
        let e = env(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4318"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://traces:9999/custom",
            ),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_OTLP_HEADERS, "a=1"),
            (OTEL_EXPORTER_OTLP_TRACES_HEADERS, "Api-Key=s%20ecret,b=2"),
            (OTEL_EXPORTER_OTLP_COMPRESSION, "none"),
            (OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, "GZIP"),
            (OTEL_EXPORTER_OTLP_TIMEOUT, "1000"),
            (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "250"),
        ])
        .unwrap();
        assert_eq!(
            e.export.otlp.unwrap(),
            OtlpConfig {
                // The traces endpoint is used as is, whatever the protocol.
                endpoint: "http://traces:9999/custom".into(),
                protocol: OtlpProtocol::HttpProtobuf,
                headers: vec![
                    ("api-key".into(), "s ecret".into()),
                    ("b".into(), "2".into())
                ],
                compression: Some(Compression::Gzip),
                timeout: Duration::from_millis(250),
                tls: TlsConfig::default(),
            }
        );
        let e = env(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4317"),
            (OTEL_EXPORTER_OTLP_HEADERS, "a=1"),
            (OTEL_EXPORTER_OTLP_COMPRESSION, "gzip"),
            (OTEL_EXPORTER_OTLP_TIMEOUT, "1500"),
        ])
        .unwrap();
        let otlp = e.export.otlp.unwrap();
        assert_eq!(otlp.headers, vec![("a".into(), "1".into())]);
        assert_eq!(otlp.compression, Some(Compression::Gzip));
        assert_eq!(otlp.timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_otlp_values_name_variable_value_and_reason() {
        let base = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317");
        // (variables, the variable blamed, its value, the reason)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
        let cases: &[Case] = &[
            (
                // Only gRPC endpoints may leave the scheme out.
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "c:4318"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
                ],
                OTEL_EXPORTER_OTLP_ENDPOINT,
                "c:4318",
                "no scheme: expected http:// or https://",
            ),
            (
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "ftp://c/otel")],
                OTEL_EXPORTER_OTLP_ENDPOINT,
                "ftp://c/otel",
                "scheme ftp is not http or https",
            ),
            (
                &[(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "/v1/traces")],
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "/v1/traces",
                "no scheme: expected http:// or https://",
            ),
            (
                &[(OTEL_EXPORTER_OTLP_INSECURE, "yes")],
                OTEL_EXPORTER_OTLP_INSECURE,
                "yes",
                "expected true or false",
            ),
            (
                &[base, (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json")],
                OTEL_EXPORTER_OTLP_PROTOCOL,
                "http/json",
                "http/json is not supported; use grpc or http/protobuf",
            ),
            (
                &[base, (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "udp")],
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
                "udp",
                "expected grpc or http/protobuf",
            ),
            (
                &[base, (OTEL_EXPORTER_OTLP_COMPRESSION, "zstd")],
                OTEL_EXPORTER_OTLP_COMPRESSION,
                "zstd",
                "expected gzip or none",
            ),
            (
                &[base, (OTEL_EXPORTER_OTLP_TIMEOUT, "10s")],
                OTEL_EXPORTER_OTLP_TIMEOUT,
                "10s",
                "expected a whole number of milliseconds",
            ),
            (
                &[base, (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "0")],
                OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
                "0",
                "must be more than 0 milliseconds",
            ),
            (
                &[(OTEL_EXPORTER_ZIPKIN_ENDPOINT, "http://")],
                OTEL_EXPORTER_ZIPKIN_ENDPOINT,
                "http://",
                "not a URL: empty string",
            ),
        ];
        for (vars, var, value, reason) in cases {
            let e = env(vars).unwrap_err();
            assert_eq!(
                (e.var, e.value.as_str(), e.reason.as_str()),
                (*var, *value, *reason),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn https_endpoints() {
        let e = env(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_ZIPKIN_ENDPOINT, "https://z:9411/api/v2/spans"),
        ])
        .unwrap();
        assert_eq!(e.export.otlp.unwrap().endpoint, "https://c:4318/v1/traces");
        let zipkin = e.export.zipkin.unwrap();
        assert_eq!(zipkin.endpoint, "https://z:9411/api/v2/spans");
        // No Zipkin certificate variables: the system's roots.
        assert_eq!(zipkin.tls, TlsConfig::default());
        let e = env(&[(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "https://c:4317")]).unwrap();
        assert_eq!(e.export.otlp.unwrap().endpoint, "https://c:4317");
    }

    #[test]
    fn insecure_decides_the_scheme_of_grpc_endpoints_without_one() {
        let endpoint = |vars: &[(&str, &str)]| env(vars).unwrap().export.otlp.unwrap().endpoint;
        let bare = (OTEL_EXPORTER_OTLP_ENDPOINT, "c:4317");
        assert_eq!(endpoint(&[bare]), "https://c:4317");
        assert_eq!(
            endpoint(&[bare, (OTEL_EXPORTER_OTLP_INSECURE, "false")]),
            "https://c:4317"
        );
        assert_eq!(
            endpoint(&[bare, (OTEL_EXPORTER_OTLP_INSECURE, "TRUE")]),
            "http://c:4317"
        );
        // The traces variable wins over the generic one.
        assert_eq!(
            endpoint(&[
                bare,
                (OTEL_EXPORTER_OTLP_INSECURE, "true"),
                (OTEL_EXPORTER_OTLP_TRACES_INSECURE, "false"),
            ]),
            "https://c:4317"
        );
        // A scheme is never overridden.
        assert_eq!(
            endpoint(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                (OTEL_EXPORTER_OTLP_INSECURE, "false"),
            ]),
            "http://c:4317"
        );
        assert_eq!(
            endpoint(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4317"),
                (OTEL_EXPORTER_OTLP_INSECURE, "true"),
            ]),
            "https://c:4317"
        );
        // The flag follows the same rule.
        let overrides = OtelOverrides {
            otlp_endpoint: flag("--otlp-endpoint", "c:4317".into()),
            ..OtelOverrides::default()
        };
        let e = env_with(&overrides, &[(OTEL_EXPORTER_OTLP_TRACES_INSECURE, "true")]).unwrap();
        assert_eq!(e.export.otlp.unwrap().endpoint, "http://c:4317");
    }

    #[test]
    fn certificate_variables_traces_first() {
        let tls = |vars: &[(&str, &str)]| {
            let mut all = vec![(OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4317")];
            all.extend_from_slice(vars);
            env(&all).unwrap().export.otlp.unwrap().tls
        };
        let file = |path: &str, var: &'static str| {
            Some(PemFile {
                path: path.into(),
                named_by: Some(var),
            })
        };
        assert_eq!(tls(&[]), TlsConfig::default());
        assert_eq!(
            tls(&[
                (OTEL_EXPORTER_OTLP_CERTIFICATE, "/g/ca.pem"),
                (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, "/g/client.crt"),
                (OTEL_EXPORTER_OTLP_CLIENT_KEY, " /g/client.key "),
            ]),
            TlsConfig {
                ca: file("/g/ca.pem", OTEL_EXPORTER_OTLP_CERTIFICATE),
                client_cert: file("/g/client.crt", OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE),
                client_key: file("/g/client.key", OTEL_EXPORTER_OTLP_CLIENT_KEY),
            }
        );
        assert_eq!(
            tls(&[
                (OTEL_EXPORTER_OTLP_CERTIFICATE, "/g/ca.pem"),
                (OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, "/t/ca.pem"),
                (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, "/g/client.crt"),
                (
                    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
                    "/t/client.crt"
                ),
                (OTEL_EXPORTER_OTLP_CLIENT_KEY, "/g/client.key"),
                (OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, "/t/client.key"),
                // Empty counts as unset.
                (OTEL_EXPORTER_OTLP_TRACES_INSECURE, ""),
            ]),
            TlsConfig {
                ca: file("/t/ca.pem", OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE),
                client_cert: file(
                    "/t/client.crt",
                    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE
                ),
                client_key: file("/t/client.key", OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY),
            }
        );
        assert_eq!(
            tls(&[
                (OTEL_EXPORTER_OTLP_CERTIFICATE, "/g/ca.pem"),
                (OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, ""),
            ])
            .ca,
            file("/g/ca.pem", OTEL_EXPORTER_OTLP_CERTIFICATE)
        );
    }

    /// The files are read when the pipeline is built: an unusable one
    /// stops it, and the error names the variable and the file.
    #[tokio::test]
    async fn unusable_certificate_files_name_variable_and_file() {
        use crate::export::{ExportBuildError, ExportPipeline};
        use l7inspect_test_support::TempDir;

        let dir = TempDir::new("env-certs");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM").unwrap();
        let missing = dir.path().join("missing.pem");
        let build = |vars: &[(&str, &str)]| {
            let mut all = vec![(OTEL_EXPORTER_OTLP_ENDPOINT, "https://127.0.0.1:4317")];
            all.extend_from_slice(vars);
            let e = env(&all).unwrap();
            let resource = opentelemetry_sdk::Resource::builder_empty().build();
            ExportPipeline::start(e.export, resource).unwrap_err()
        };
        let garbage_s = garbage.to_str().unwrap();
        let missing_s = missing.to_str().unwrap();
        for (var, path, role, why) in [
            (
                OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
                garbage_s,
                "CA certificates",
                "no PEM CERTIFICATE section in it",
            ),
            (
                OTEL_EXPORTER_OTLP_CERTIFICATE,
                missing_s,
                "CA certificates",
                "cannot read it: No such file or directory (os error 2)",
            ),
        ] {
            let err = build(&[(var, path)]);
            assert!(
                matches!(&err, ExportBuildError::TlsFile { file, .. } if file.named_by == Some(var)),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("OTLP exporter for https://127.0.0.1:4317: {role} {path:?} ({var}): {why}")
            );
        }
        let err = build(&[
            (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, garbage_s),
            (OTEL_EXPORTER_OTLP_CLIENT_KEY, missing_s),
        ]);
        let text = err.to_string();
        assert!(
            text.contains(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) && text.contains(garbage_s),
            "{text}"
        );
    }

    #[test]
    fn header_errors_redact_the_value() {
        let e = env(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
            (OTEL_EXPORTER_OTLP_HEADERS, "authorization=Bearer%20tok%0A"),
        ])
        .unwrap_err();
        assert_eq!(e.var, OTEL_EXPORTER_OTLP_HEADERS);
        assert_eq!(e.reason, "header 1 (authorization) has an invalid value");
        assert!(!e.to_string().contains("tok"), "{e}");
        let e = env(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
            (OTEL_EXPORTER_OTLP_HEADERS, "bad name=x"),
        ])
        .unwrap_err();
        assert_eq!(e.reason, "header 1 has an invalid name");
    }

    #[test]
    fn zipkin() {
        let e = env(&[
            (
                OTEL_EXPORTER_ZIPKIN_ENDPOINT,
                "http://zipkin:9411/api/v2/spans",
            ),
            (OTEL_EXPORTER_ZIPKIN_TIMEOUT, "500"),
        ])
        .unwrap();
        assert_eq!(
            e.export.zipkin,
            Some(ZipkinConfig {
                endpoint: "http://zipkin:9411/api/v2/spans".into(),
                timeout: Duration::from_millis(500),
                tls: TlsConfig::default(),
            })
        );
        assert_eq!(e.export.otlp, None);
    }

    #[test]
    fn traces_exporter_picks_the_exporters() {
        let grpc = |e: &OtelEnv| e.export.otlp.as_ref().map(|o| o.endpoint.clone());
        let zipkin = |e: &OtelEnv| e.export.zipkin.as_ref().map(|z| z.endpoint.clone());

        // Listed without an endpoint: the specification's defaults.
        let e = env(&[(OTEL_TRACES_EXPORTER, "OTLP, zipkin")]).unwrap();
        assert_eq!(grpc(&e).as_deref(), Some(DEFAULT_OTLP_GRPC_ENDPOINT));
        assert_eq!(zipkin(&e).as_deref(), Some(DEFAULT_ZIPKIN_ENDPOINT));
        let e = env(&[
            (OTEL_TRACES_EXPORTER, "otlp"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(grpc(&e).as_deref(), Some(DEFAULT_OTLP_HTTP_ENDPOINT));
        assert_eq!(zipkin(&e), None);

        // Listed with an endpoint: that endpoint; not listed: not run even
        // though its endpoint is set.
        let endpoints = [
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317"),
            (
                OTEL_EXPORTER_ZIPKIN_ENDPOINT,
                "http://zipkin:9411/api/v2/spans",
            ),
        ];
        let e = env(&[&endpoints[..], &[(OTEL_TRACES_EXPORTER, "zipkin")]].concat()).unwrap();
        assert_eq!(grpc(&e), None);
        assert_eq!(
            zipkin(&e).as_deref(),
            Some("http://zipkin:9411/api/v2/spans")
        );
        let e = env(&[&endpoints[..], &[(OTEL_TRACES_EXPORTER, "none")]].concat()).unwrap();
        assert_eq!((grpc(&e), zipkin(&e)), (None, None));
        // Unset: whatever has an endpoint.
        let e = env(&endpoints).unwrap();
        assert_eq!(grpc(&e).as_deref(), Some("http://collector:4317"));
        assert!(zipkin(&e).is_some());
        assert!(!e.export.console, "console only when named");
        let e = env(&[(OTEL_TRACES_EXPORTER, "console")]).unwrap();
        assert!(e.export.console);
        assert_eq!((grpc(&e), zipkin(&e)), (None, None));
        let e = env(&[&endpoints[..], &[(OTEL_TRACES_EXPORTER, "otlp,console")]].concat()).unwrap();
        assert!(e.export.console && grpc(&e).is_some() && zipkin(&e).is_none());

        for (value, reason) in [
            (
                "xray",
                "unsupported exporter \"xray\"; expected otlp, zipkin, console or none",
            ),
            ("none,otlp", "none cannot be combined"),
            (
                "jaeger",
                "the jaeger exporter is deprecated; Jaeger takes otlp",
            ),
        ] {
            let e = env(&[(OTEL_TRACES_EXPORTER, value)]).unwrap_err();
            assert_eq!((e.var, e.reason.as_str()), (OTEL_TRACES_EXPORTER, reason));
        }
    }

    #[test]
    fn samplers() {
        let s = |name: &str, arg: Option<&str>| {
            let mut vars = vec![(OTEL_TRACES_SAMPLER, name)];
            if let Some(a) = arg {
                vars.push((OTEL_TRACES_SAMPLER_ARG, a));
            }
            env(&vars).map(|e| e.sampler)
        };
        assert_eq!(s("always_on", None), Ok(SamplerConfig::AlwaysOn));
        assert_eq!(s("always_off", Some("0.5")), Ok(SamplerConfig::AlwaysOff));
        assert_eq!(
            s("traceidratio", None),
            Ok(SamplerConfig::TraceIdRatio(1.0))
        );
        assert_eq!(
            s("TraceIdRatio", Some("0.25")),
            Ok(SamplerConfig::TraceIdRatio(0.25))
        );
        assert_eq!(
            s("parentbased_always_on", None),
            Ok(SamplerConfig::ParentBasedAlwaysOn)
        );
        assert_eq!(
            s("parentbased_always_off", None),
            Ok(SamplerConfig::ParentBasedAlwaysOff)
        );
        assert_eq!(
            s("parentbased_traceidratio", Some("0")),
            Ok(SamplerConfig::ParentBasedTraceIdRatio(0.0))
        );
        let e = s("parentbased_traceidratio", Some("1.5")).unwrap_err();
        assert_eq!(
            (e.var, e.value.as_str(), e.reason.as_str()),
            (
                OTEL_TRACES_SAMPLER_ARG,
                "1.5",
                "parentbased_traceidratio needs a probability between 0 and 1"
            )
        );
        let e = s("traceidratio", Some("half")).unwrap_err();
        assert_eq!(e.var, OTEL_TRACES_SAMPLER_ARG);
        let e = s("jaeger_remote", None).unwrap_err();
        assert_eq!(
            (e.var, e.reason.as_str()),
            (OTEL_TRACES_SAMPLER, "sampler not supported")
        );
        let e = s("sometimes", None).unwrap_err();
        assert_eq!(
            (e.var, e.value.as_str()),
            (OTEL_TRACES_SAMPLER, "sometimes")
        );
    }

    #[test]
    fn batch_processor_variables() {
        let e = env(&[
            (OTEL_BSP_MAX_QUEUE_SIZE, "100"),
            (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "10"),
            (OTEL_BSP_SCHEDULE_DELAY, "200"),
        ])
        .unwrap();
        assert_eq!(e.export.queue_size, 100);
        assert_eq!(e.export.max_batch, 10);
        assert_eq!(e.export.batch_delay, Duration::from_millis(200));

        let e = env(&[(OTEL_BSP_MAX_QUEUE_SIZE, "0")]).unwrap_err();
        assert_eq!(
            (e.var, e.reason.as_str()),
            (OTEL_BSP_MAX_QUEUE_SIZE, "must be at least 1")
        );
        let e = env(&[(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "-1")]).unwrap_err();
        assert_eq!(e.var, OTEL_BSP_MAX_EXPORT_BATCH_SIZE);
        let e = env(&[(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "4096")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=\"4096\": must not exceed the queue size 2048 \
             (OTEL_BSP_MAX_QUEUE_SIZE)"
        );
        let e = env(&[(OTEL_BSP_SCHEDULE_DELAY, "1.5")]).unwrap_err();
        assert_eq!(e.var, OTEL_BSP_SCHEDULE_DELAY);
    }
}
