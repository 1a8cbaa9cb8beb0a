//! The command line: the proxy's flags, each with its `L7INSPECT_*` or
//! `OTEL_*` variable, read once into a [`SidecarConfig`], logging set up
//! from them; and the `inject` subcommand. Only the binary has this module:
//! embedders link the library without it.
//!
//! Two readers, one for each kind of variable: clap reads the flags and the
//! `L7INSPECT_*` variables; the `OTEL_*` variables are read only by
//! l7inspect-trace's [`from_otel_env_with`], to which the tracing flags are
//! passed as [`OtelOverrides`], so that the OpenTelemetry precedence (flag,
//! then `OTEL_EXPORTER_OTLP_TRACES_*`, then `OTEL_EXPORTER_OTLP_*`) is
//! decided in one place.

pub(crate) mod inject;
mod log_level;
mod log_limit;
mod panic_hook;
mod tap;
mod tls;

pub(crate) use log_level::LogLevel;
pub(crate) use log_limit::LogLimit;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum, error::ErrorKind};
use l7inspect_core::{ConnectConfig, Http2Config, HttpConfig, PassthroughConfig};
use l7inspect_detect::DetectConfig;
use l7inspect_sidecar::{Forward, LimitsConfig, SidecarConfig, TlsConfig, TracingConfig};
use l7inspect_tls::{InterceptConfig, SniPattern, TerminateConfig, TerminatePort};
use l7inspect_trace::db::DbConfig;
use l7inspect_trace::export::{
    ExportConfig, OtelOverrides, Override, ResourceConfig, from_otel_env_with,
};
use std::{net::SocketAddr, net::ToSocketAddrs, path::PathBuf, process::ExitCode, time::Duration};

/// What the command line asked for.
pub(crate) enum Invocation {
    /// Run the proxy with this configuration on this many threads (logging
    /// is set up).
    Run {
        config: Box<SidecarConfig>,
        threads: u16,
        /// The log filter, for the admin port's `/log-level`.
        log_level: LogLevel,
        /// The dependencies' log rate limit, whose summaries a task flushes.
        log_limit: LogLimit,
    },
    /// A subcommand ran (`inject`) and exited with this code.
    Done(ExitCode),
}

/// Reads the flags and the environment. A bad flag or value exits here, 2,
/// with one line naming it (clap's usage error).
pub(crate) fn parse() -> Invocation {
    let mut command = Args::command();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "inject" || a == "tap" || a == "tls")
    {
        // The proxy's L7INSPECT_* variables are not inject's (nor are the
        // OTEL_* ones, read only when the proxy runs).
        command = command.mut_args(|a| a.env(None));
    }
    let matches = command.get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match args.command.take() {
        Some(Command::Inject(inject_args)) => return Invocation::Done(inject::run(inject_args)),
        Some(Command::Tap(tap_args)) => return Invocation::Done(tap::run(tap_args)),
        Some(Command::Tls(tls_args)) => return Invocation::Done(tls::run(tls_args)),
        None => {}
    }
    let threads = args.threads;
    let (log_level, log_limit) = init_logging(args.log_level.as_deref(), args.log_format)
        .unwrap_or_else(|e| Args::command().error(ErrorKind::ValueValidation, e).exit());
    panic_hook::install();
    let tracing = args
        .tracing()
        .unwrap_or_else(|e| Args::command().error(ErrorKind::ValueValidation, e).exit());
    Invocation::Run {
        config: Box::new(args.into_config(tracing)),
        threads,
        log_level,
        log_limit,
    }
}

/// The OpenTelemetry variables read that no flag above names (each tracing
/// flag names its own variables in its help), and the precedence: listed in
/// `--help` so that it names every variable the proxy reads.
const OTEL_VARS_HELP: &str = "\
Also read, as the OpenTelemetry SDKs read them:
  OTEL_TRACES_EXPORTER (otlp, zipkin, console, none), OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
  OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TRACES_HEADERS,
  OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_COMPRESSION,
  OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, OTEL_EXPORTER_ZIPKIN_TIMEOUT,
  for https:// collectors OTEL_EXPORTER_OTLP_CERTIFICATE, OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE
  (trusted CAs, PEM; else the system's roots), OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
  OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY,
  OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, OTEL_EXPORTER_OTLP_INSECURE,
  OTEL_EXPORTER_OTLP_TRACES_INSECURE (a grpc endpoint without a scheme: true for plaintext),
  OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
  OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT (else OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT; default 2048);
  and RUST_LOG (see --log-level).
Tracing precedence, for each setting: the flag (or its L7INSPECT_* variable), else the
OTEL_EXPORTER_OTLP_TRACES_* variable, else the OTEL_EXPORTER_OTLP_* one, else the default.
An empty value counts as unset.";

/// A layer-7 sidecar proxy: detects the protocol of every TCP connection
/// crossing a workload and forwards its bytes untouched.
#[derive(Debug, Parser)]
#[command(
    name = "l7inspect-sidecar",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = OTEL_VARS_HELP
)]
struct Args {
    /// Without a subcommand: run the proxy with the options below.
    #[command(subcommand)]
    command: Option<Command>,

    /// Transparent inbound listener (iptables PREROUTING redirects here):
    /// addresses, comma-separated. An IPv6 one is left out on a host without
    /// IPv6.
    #[arg(
        long,
        env = "L7INSPECT_INBOUND_LISTEN",
        default_value = "0.0.0.0:4143,[::]:4143",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    inbound_listen: Vec<SocketAddr>,

    /// Transparent outbound listener (iptables OUTPUT redirects here):
    /// addresses, comma-separated.
    #[arg(
        long,
        env = "L7INSPECT_OUTBOUND_LISTEN",
        default_value = "127.0.0.1:4140,[::1]:4140",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    outbound_listen: Vec<SocketAddr>,

    /// Admin server (/live, /ready, /metrics, and the live view): addresses,
    /// comma-separated.
    #[arg(
        long,
        env = "L7INSPECT_ADMIN_LISTEN",
        default_value = "0.0.0.0:4191,[::]:4191",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    admin_listen: Vec<SocketAddr>,

    /// Let clients that are not on loopback use the admin endpoints that show
    /// request details or change state (/, /api/*, /log-level); without it
    /// they get 403. /live, /ready and /metrics answer everyone.
    #[arg(long, env = "L7INSPECT_ADMIN_ALLOW_REMOTE_INSPECT")]
    admin_allow_remote_inspect: bool,

    /// How many recent spans the live view keeps, the newest (memory: about
    /// 0.6 KiB per HTTP span, at most 18 KiB with every string attribute at
    /// its 2 KiB limit).
    #[arg(
        long,
        env = "L7INSPECT_RECENT_SPANS",
        value_name = "N",
        default_value_t = 1000
    )]
    recent_spans: usize,

    /// Explicit inbound listener with a fixed target, LISTEN=TARGET (repeatable;
    /// comma-separated in the environment variable).
    #[arg(long, env = "L7INSPECT_INBOUND_FORWARD", value_name = "LISTEN=TARGET", value_delimiter = ',', value_parser = parse_forward)]
    inbound_forward: Vec<Forward>,

    /// Explicit outbound listener with a fixed target, LISTEN=TARGET (repeatable;
    /// comma-separated in the environment variable).
    #[arg(long, env = "L7INSPECT_OUTBOUND_FORWARD", value_name = "LISTEN=TARGET", value_delimiter = ',', value_parser = parse_forward)]
    outbound_forward: Vec<Forward>,

    /// Do not open the two transparent listeners (explicit forwards only).
    #[arg(long, env = "L7INSPECT_NO_TRANSPARENT")]
    no_transparent: bool,

    /// Keep the case of HTTP/1 header names as each side sent it (default:
    /// lowercase, as HTTP/2 and most proxies do; costs CPU per request).
    #[arg(long, env = "L7INSPECT_HTTP1_PRESERVE_HEADER_CASE")]
    http1_preserve_header_case: bool,

    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: the largest request head (decoded,
    /// 32 bytes per field included); larger gets 431.
    #[arg(long, env = "L7INSPECT_HTTP2_MAX_HEADER_LIST_SIZE", value_name = "BYTES", default_value_t = Http2Config::default().max_header_list_size, value_parser = clap::value_parser!(u32).range(1024..), help_heading = "HTTP limits")]
    http2_max_header_list_size: u32,

    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open
    /// at once; more are refused (REFUSED_STREAM).
    #[arg(long, env = "L7INSPECT_HTTP2_MAX_CONCURRENT_STREAMS", value_name = "N", default_value_t = Http2Config::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..), help_heading = "HTTP limits")]
    http2_max_concurrent_streams: u32,

    /// HTTP/2 streams a client may reset before the proxy took them in
    /// (rapid reset), before its connection is closed (GOAWAY
    /// ENHANCE_YOUR_CALM).
    #[arg(long, env = "L7INSPECT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS", value_name = "N", default_value_t = Http2Config::default().max_pending_accept_reset_streams, help_heading = "HTTP limits")]
    http2_max_pending_accept_reset_streams: usize,

    /// HTTP/2 streams the proxy may reset for a client's errors over a
    /// connection's life before closing it (GOAWAY ENHANCE_YOUR_CALM).
    #[arg(long, env = "L7INSPECT_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS", value_name = "N", default_value_t = Http2Config::default().max_local_error_reset_streams, help_heading = "HTTP limits")]
    http2_max_local_error_reset_streams: usize,

    /// HTTP/2 request header blocks a connection may have rejected (too
    /// large, malformed, refused) before it is closed (GOAWAY
    /// ENHANCE_YOUR_CALM): bounds the CPU of HPACK bombs.
    #[arg(long, env = "L7INSPECT_HTTP2_MAX_REJECTED_HEADER_BLOCKS", value_name = "N", default_value_t = Http2Config::default().max_rejected_header_blocks, help_heading = "HTTP limits")]
    http2_max_rejected_header_blocks: u32,

    /// Destination ports whose connections skip protocol detection, e.g. 25,3306
    /// (ranges like 5000-5010 work too).
    #[arg(long, env = "L7INSPECT_OPAQUE_PORTS", value_name = "LIST", value_parser = parse_ports)]
    opaque_ports: Option<PortList>,

    /// Close passthrough connections on which no bytes moved for this long
    /// (e.g. 1h, 30m). Default: never.
    #[arg(long, env = "L7INSPECT_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// How long open connections may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "L7INSPECT_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// How long to wait for the rest of a protocol's first message once the
    /// client started sending.
    #[arg(long, env = "L7INSPECT_DETECT_TIMEOUT", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    detect_timeout: Duration,

    /// How long an upstream connect may take (HTTP clients then get 504,
    /// gRPC status 4).
    #[arg(long, env = "L7INSPECT_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Close an inbound connection on which neither side sent a byte for
    /// this long (0: never). Outbound connections are never cut by it.
    #[arg(long, env = "L7INSPECT_SILENT_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_bound)]
    silent_timeout: Bound,

    /// How long a client may take to send a whole HTTP request head, from its
    /// first byte (0: no bound); a trickle does not extend it. HTTP/1: 408
    /// and close; HTTP/2 (a header block with its CONTINUATION frames):
    /// GOAWAY and close.
    #[arg(long, env = "L7INSPECT_HTTP_REQUEST_HEAD_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_bound)]
    http_request_head_timeout: Bound,

    /// Close an HTTP connection idle this long between requests (0: never;
    /// HTTP/2: a graceful GOAWAY once no stream is open).
    #[arg(long, env = "L7INSPECT_HTTP_IDLE_TIMEOUT", value_name = "DURATION", default_value = "10m", value_parser = parse_bound)]
    http_idle_timeout: Bound,

    /// How long a server may take to start its response; then 504 (gRPC
    /// status 4). Default 0: no bound (long polls, gRPC streams).
    #[arg(long, env = "L7INSPECT_HTTP_RESPONSE_TIMEOUT", value_name = "DURATION", default_value = "0", value_parser = parse_bound)]
    http_response_timeout: Bound,

    /// The largest HTTP/1 request head in bytes (at least 8192); a larger one
    /// gets 431.
    #[arg(long, env = "L7INSPECT_HTTP_MAX_REQUEST_HEAD", value_name = "BYTES", default_value_t = HttpConfig::DEFAULT_MAX_REQUEST_HEAD as u32, value_parser = clap::value_parser!(u32).range(8192..))]
    http_max_request_head: u32,

    /// The most connections each listener holds open at once (the
    /// transparent inbound one, the outbound one, each forward); past it a
    /// new connection is reset at once and counted as refused (limit). 0:
    /// no limit. Besides, the proxied connections of all listeners together
    /// are kept within what the descriptor limit (RLIMIT_NOFILE, raised to
    /// its hard limit at start) leaves room for (descriptors).
    #[arg(long, env = "L7INSPECT_MAX_CONNECTIONS", value_name = "N", default_value_t = l7inspect_sidecar::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Worker threads. One suits a sidecar that shares its pod's CPU.
    #[arg(long, env = "L7INSPECT_THREADS", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// Log filter: a level (error, warn, info, debug, trace) or a
    /// tracing-subscriber directive list. Default: RUST_LOG, else info.
    #[arg(long, env = "L7INSPECT_LOG_LEVEL", value_name = "LEVEL")]
    log_level: Option<String>,

    /// Log line format.
    #[arg(
        long,
        env = "L7INSPECT_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    // The OTEL_* variables of the flags below are not clap's to read (no
    // `env = "OTEL_..."`): the flags go to l7inspect-trace's reader as
    // overrides, and each doc comment names the variables for --help.
    /// service.name of the spans. Default: a service.name in
    /// OTEL_RESOURCE_ATTRIBUTES, else the host name [env: OTEL_SERVICE_NAME]
    #[arg(long, value_name = "NAME", help_heading = "Tracing")]
    service_name: Option<String>,

    /// OTLP traces endpoint: the full URL (http://collector:4317 for grpc,
    /// http://collector:4318/v1/traces for http/protobuf; https:// for
    /// TLS). OTEL_EXPORTER_OTLP_ENDPOINT
    /// is a base URL, to which /v1/traces is appended for http/protobuf
    /// [env: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT]
    #[arg(long, value_name = "URL", help_heading = "Tracing")]
    otlp_endpoint: Option<String>,

    /// OTLP transport: grpc or http/protobuf [default: grpc] [env:
    /// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL]
    #[arg(long, value_name = "PROTOCOL", help_heading = "Tracing")]
    otlp_protocol: Option<String>,

    /// Zipkin v2 endpoint, e.g. http://zipkin:9411/api/v2/spans (https://:
    /// TLS, checked against the system's roots) [env:
    /// OTEL_EXPORTER_ZIPKIN_ENDPOINT]
    #[arg(long, value_name = "URL", help_heading = "Tracing")]
    zipkin_endpoint: Option<String>,

    /// Sample this fraction of new traces (parentbased_traceidratio; an
    /// incoming sampled flag is honoured). Default: OTEL_TRACES_SAMPLER with
    /// OTEL_TRACES_SAMPLER_ARG, else 1.0.
    #[arg(long, env = "L7INSPECT_SAMPLE_RATIO", value_name = "R", value_parser = parse_ratio, help_heading = "Tracing")]
    sample_ratio: Option<f64>,

    /// Trace-context formats to extract and inject, in order [default:
    /// tracecontext,baggage,b3,b3multi,jaeger] [env: OTEL_PROPAGATORS]
    #[arg(long, value_name = "LIST", help_heading = "Tracing")]
    propagators: Option<String>,

    /// Record url.query on spans (off: queries often carry secrets).
    #[arg(long, env = "L7INSPECT_RECORD_QUERY", help_heading = "Tracing")]
    record_query: bool,

    /// Do not infer parents: an outbound request that carries no trace
    /// context stays a root even while exactly one inbound request is in
    /// flight (by default it becomes that request's child, marked
    /// l7inspect.parent.inferred, and the context is injected).
    #[arg(long, env = "L7INSPECT_NO_INFER_PARENT", help_heading = "Tracing")]
    no_infer_parent: bool,

    /// The most span links on an outbound request made while two or more
    /// inbound requests were in flight (its candidate parents).
    #[arg(long, env = "L7INSPECT_INFER_MAX_LINKS", value_name = "N", default_value_t = l7inspect_trace::infer::DEFAULT_MAX_LINKS, help_heading = "Tracing")]
    infer_max_links: usize,

    /// Terminate inbound TLS on PORT (a redirected connection's original
    /// port, or an --inbound-forward listener's own port) and send the
    /// plaintext to the application on APP_PORT over loopback (default: the
    /// same port; on an --inbound-forward listener, its target). Non-TLS
    /// clients of PORT are refused. Repeatable; comma-separated in the
    /// variable. Needs --tls-cert and --tls-key.
    #[arg(long, env = "L7INSPECT_TLS_TERMINATE", value_name = "PORT[=APP_PORT]", value_delimiter = ',', requires_all = ["tls_cert", "tls_key"], help_heading = "TLS")]
    tls_terminate: Vec<TerminatePort>,

    /// Certificate chain served on --tls-terminate ports (PEM, leaf first).
    /// Reloaded within seconds when the file changes (rename or symlink
    /// swap); a bad new file is logged and the previous pair kept.
    #[arg(
        long,
        env = "L7INSPECT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_terminate",
        help_heading = "TLS"
    )]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "L7INSPECT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_terminate",
        help_heading = "TLS"
    )]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by a CA in FILE (PEM) on
    /// --tls-terminate ports; the verified subject goes on spans.
    #[arg(
        long,
        env = "L7INSPECT_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_terminate",
        help_heading = "TLS"
    )]
    tls_client_ca: Option<PathBuf>,

    /// Intercept outbound TLS to these server names (repeatable;
    /// comma-separated in the variable): exact names, or *.example.com for
    /// any name one label under example.com. The sidecar answers with a
    /// certificate for the name signed by --tls-intercept-ca-cert, traces
    /// the HTTP inside, and opens TLS to the real destination, verified
    /// against the system's roots or --tls-upstream-ca.
    #[arg(long, env = "L7INSPECT_TLS_INTERCEPT_SNI", value_name = "PATTERN", value_delimiter = ',', requires_all = ["tls_intercept_ca_cert", "tls_intercept_ca_key"], help_heading = "TLS")]
    tls_intercept_sni: Vec<SniPattern>,

    /// The CA certificate (PEM) intercepted connections' certificates are
    /// signed with; the applications must trust it (see `tls make-ca`).
    #[arg(
        long,
        env = "L7INSPECT_TLS_INTERCEPT_CA_CERT",
        value_name = "FILE",
        requires = "tls_intercept_sni",
        help_heading = "TLS"
    )]
    tls_intercept_ca_cert: Option<PathBuf>,

    /// Its private key (PEM, PKCS#8).
    #[arg(
        long,
        env = "L7INSPECT_TLS_INTERCEPT_CA_KEY",
        value_name = "FILE",
        requires = "tls_intercept_sni",
        help_heading = "TLS"
    )]
    tls_intercept_ca_key: Option<PathBuf>,

    /// Trust the CAs in FILE (PEM), instead of the system's roots, for the
    /// destinations of intercepted connections.
    #[arg(
        long,
        env = "L7INSPECT_TLS_UPSTREAM_CA",
        value_name = "FILE",
        requires = "tls_intercept_sni",
        help_heading = "TLS"
    )]
    tls_upstream_ca: Option<PathBuf>,

    /// No span per TLS connection passed through (they are counted in
    /// metrics all the same).
    #[arg(long, env = "L7INSPECT_NO_TLS_SPANS", help_heading = "TLS")]
    no_tls_spans: bool,

    /// No spans and no operation histograms for database commands: Redis,
    /// PostgreSQL and MySQL connections are passed through unparsed, as
    /// any other protocol (still counted in the connection metrics).
    #[arg(long, env = "L7INSPECT_NO_DB_SPANS", help_heading = "Databases")]
    no_db_spans: bool,

    /// Do not parse these databases' connections (comma-separated: redis,
    /// postgresql, mysql); the others still get spans.
    #[arg(
        long,
        env = "L7INSPECT_NO_DB_PARSER",
        value_name = "LIST",
        value_enum,
        value_delimiter = ',',
        help_heading = "Databases"
    )]
    no_db_parser: Vec<DbParser>,

    /// Record db.query.text: SQL statements with their literals replaced by
    /// `?`, cut at OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT (2048 bytes by
    /// default). Off: even sanitized, a query may say more than wanted.
    #[arg(long, env = "L7INSPECT_DB_QUERY_TEXT", help_heading = "Databases")]
    db_query_text: bool,

    /// The most commands of one database connection waiting for their
    /// replies that are tracked; the commands of a deeper pipeline past it
    /// get no span (counted in l7inspect_db_commands_untracked_total).
    #[arg(long, env = "L7INSPECT_DB_MAX_PENDING", value_name = "N", default_value_t = l7inspect_trace::db::DEFAULT_MAX_PENDING, value_parser = clap::value_parser!(usize), help_heading = "Databases")]
    db_max_pending: usize,

    /// How many distinct SNI values l7inspect_tls_connections_total keeps as
    /// labels; further names are counted as "other".
    #[arg(long, env = "L7INSPECT_TLS_SNI_LABEL_LIMIT", value_name = "N", default_value_t = l7inspect_tls::DEFAULT_MAX_SERVER_NAMES, help_heading = "TLS")]
    tls_sni_label_limit: usize,

    /// How long a TLS client of a terminated or intercepted connection may
    /// take to complete its handshake.
    #[arg(long, env = "L7INSPECT_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration, help_heading = "TLS")]
    tls_handshake_timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Inject(InjectArgs),
    Tap(tap::TapArgs),
    /// TLS helpers: `tls make-ca` writes a CA for interception.
    Tls(tls::TlsArgs),
}

/// Add l7inspect to Kubernetes manifests and write them to stdout.
///
/// Every Deployment, StatefulSet, DaemonSet, ReplicaSet,
/// ReplicationController, Job, CronJob and Pod (also in a List) gets the
/// l7inspect containers, e.g.
/// `l7inspect-sidecar inject app.yaml | kubectl apply -f -`.
///
/// What is added is deploy/kubernetes/inject/l7inspect-pod-patch.yaml: the
/// l7inspect-init init container and the l7inspect-sidecar native sidecar
/// first in initContainers, their volume, the prometheus.io annotations
/// (unless the pod has its own) and terminationGracePeriodSeconds: 30 when
/// the pod has none or less. Other documents, workloads already injected,
/// workloads annotated l7inspect.io/inject: disabled and hostNetwork pods
/// are written back unchanged, byte for byte. A changed document is
/// re-written from its parsed value: key order is kept, its comments are
/// lost. One summary line per workload goes to stderr.
///
/// Exit codes: 0 when done; 2 for a bad flag, an unreadable file or input
/// that is not YAML (nothing is written to stdout); 1 when stdout cannot be
/// written.
#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// Manifest file (one or more YAML documents, or JSON); "-" or none:
    /// standard input.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,

    /// Image of the l7inspect-sidecar container.
    #[arg(long, value_name = "IMAGE", default_value_t = inject::default_sidecar_image())]
    sidecar_image: String,

    /// Image of the l7inspect-init container.
    #[arg(long, value_name = "IMAGE", default_value_t = inject::default_init_image())]
    init_image: String,

    /// The sidecar's OTEL_EXPORTER_OTLP_ENDPOINT: where spans go (a base
    /// URL: http://collector:4317 for grpc, http://collector:4318 for
    /// http/protobuf).
    #[arg(long, value_name = "URL", default_value = inject::DEFAULT_OTLP_ENDPOINT)]
    otlp_endpoint: String,

    /// The sidecar's OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL", default_value = inject::DEFAULT_OTLP_PROTOCOL, value_parser = ["grpc", "http/protobuf"])]
    otlp_protocol: String,

    /// Inbound ports the init container does not redirect to the proxy, e.g.
    /// 22,8000-8010 (its L7INSPECT_SKIP_INBOUND_PORTS).
    #[arg(long, value_name = "LIST", value_parser = parse_port_list_text)]
    skip_inbound_ports: Option<String>,

    /// Outbound ports the init container does not redirect to the proxy,
    /// e.g. 25,3306 (its L7INSPECT_SKIP_OUTBOUND_PORTS).
    #[arg(long, value_name = "LIST", value_parser = parse_port_list_text)]
    skip_outbound_ports: Option<String>,
}

/// A port list as written, once [`parse_ports`] accepts it.
fn parse_port_list_text(s: &str) -> Result<String, String> {
    let ports = parse_ports(s)?;
    if ports.0.is_empty() {
        return Err("no port in the list".into());
    }
    Ok(s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(","))
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Ok(_) => Err("must be between 0 and 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A database parser `--no-db-parser` turns off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DbParser {
    Redis,
    Postgresql,
    Mysql,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Default)]
struct PortList(Vec<u16>);

/// A timeout flag's value: `0` means none.
#[derive(Clone, Copy, Debug)]
struct Bound(Option<Duration>);

fn parse_bound(s: &str) -> Result<Bound, String> {
    if s.trim() == "0" {
        return Ok(Bound(None));
    }
    parse_duration(s).map(|d| Bound((!d.is_zero()).then_some(d)))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    // host:port, resolved once at startup.
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address (host:port): {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolved to no address"))
}

fn parse_forward(s: &str) -> Result<Forward, String> {
    let (listen, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LISTEN=TARGET"))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("listen address {listen:?}: {e}"))?;
    let target = parse_addr(target)?;
    if listen == target {
        return Err(format!("{s:?} would forward the listener to itself"));
    }
    Ok(Forward { listen, target })
}

/// A port list (`22,8000-8010`), read by l7inspect-init's parser: the one
/// for every port list, so that `inject` accepts exactly what the init
/// container will.
fn parse_ports(s: &str) -> Result<PortList, String> {
    let mut ports: Vec<u16> = l7inspect_init::parse_port_list(s)?
        .into_iter()
        .flat_map(|r| r.start..=r.end)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(PortList(ports))
}

impl Args {
    /// The tracing settings: the OpenTelemetry environment variables, read
    /// once by l7inspect-trace's reader, with the tracing flags as its
    /// overrides (precedence is decided there). A bad value is named as the
    /// user gave it: the flag, else the variable.
    fn tracing(&self) -> Result<TracingConfig, String> {
        let flag = |name, value: &Option<String>| value.clone().map(|v| Override::new(name, v));
        let overrides = OtelOverrides {
            service_name: flag("--service-name", &self.service_name),
            otlp_endpoint: flag("--otlp-endpoint", &self.otlp_endpoint),
            otlp_protocol: flag("--otlp-protocol", &self.otlp_protocol),
            zipkin_endpoint: flag("--zipkin-endpoint", &self.zipkin_endpoint),
            // Given as the flag or as L7INSPECT_SAMPLE_RATIO, both read by
            // clap, which names the flag for either.
            sample_ratio: self
                .sample_ratio
                .map(|r| Override::new("--sample-ratio", r)),
            propagators: flag("--propagators", &self.propagators),
        };
        let env =
            from_otel_env_with(&overrides, |var| std::env::var(var).ok()).map_err(|e| {
                match e.flag {
                    Some(flag) => format!("invalid value {:?} for {flag}: {}", e.value, e.reason),
                    None => format!("invalid value for {e}"),
                }
            })?;
        Ok(TracingConfig {
            resource: ResourceConfig {
                service_name: env.service_name.unwrap_or_else(host_name),
                attributes: env.resource_attributes,
            },
            export: ExportConfig {
                recent_capacity: self.recent_spans,
                ..env.export
            },
            sampler: env.sampler,
            propagators: env.propagators,
            record_query: self.record_query,
            infer_parent: !self.no_infer_parent,
            infer_max_links: self.infer_max_links,
            max_attribute_len: env
                .attribute_value_limit
                .unwrap_or(l7inspect_trace::DEFAULT_MAX_ATTRIBUTE_LEN),
        })
    }

    fn into_config(self, tracing: TracingConfig) -> SidecarConfig {
        SidecarConfig {
            transparent: !self.no_transparent,
            inbound_listen: self.inbound_listen,
            outbound_listen: self.outbound_listen,
            admin_listen: self.admin_listen,
            admin_allow_remote_inspect: self.admin_allow_remote_inspect,
            inbound_forwards: self.inbound_forward,
            outbound_forwards: self.outbound_forward,
            detect: DetectConfig {
                detect_timeout: self.detect_timeout,
                opaque_ports: self.opaque_ports.unwrap_or_default().0,
                silent_timeout: self.silent_timeout.0,
                ..DetectConfig::default()
            },
            connect: ConnectConfig {
                timeout: self.connect_timeout,
            },
            passthrough: PassthroughConfig {
                idle_timeout: self.idle_timeout,
            },
            shutdown_grace: self.shutdown_grace,
            http: HttpConfig {
                preserve_header_case: self.http1_preserve_header_case,
                request_head_timeout: self.http_request_head_timeout.0,
                idle_timeout: self.http_idle_timeout.0,
                response_timeout: self.http_response_timeout.0,
                max_request_head: self.http_max_request_head as usize,
                http2: Http2Config {
                    max_header_list_size: self.http2_max_header_list_size,
                    max_concurrent_streams: self.http2_max_concurrent_streams,
                    max_pending_accept_reset_streams: self.http2_max_pending_accept_reset_streams,
                    max_local_error_reset_streams: self.http2_max_local_error_reset_streams,
                    max_rejected_header_blocks: self.http2_max_rejected_header_blocks,
                },
            },
            tracing,
            tls: TlsConfig {
                terminate: match (self.tls_cert, self.tls_key) {
                    // clap requires both with --tls-terminate, and it with them.
                    (Some(cert), Some(key)) if !self.tls_terminate.is_empty() => {
                        Some(TerminateConfig {
                            client_ca: self.tls_client_ca,
                            handshake_timeout: self.tls_handshake_timeout,
                            ..TerminateConfig::new(self.tls_terminate, cert, key)
                        })
                    }
                    _ => None,
                },
                intercept: match (self.tls_intercept_ca_cert, self.tls_intercept_ca_key) {
                    // clap requires both with --tls-intercept-sni, and it with them.
                    (Some(cert), Some(key)) if !self.tls_intercept_sni.is_empty() => {
                        Some(InterceptConfig {
                            upstream_ca: self.tls_upstream_ca,
                            handshake_timeout: self.tls_handshake_timeout,
                            ..InterceptConfig::new(cert, key, self.tls_intercept_sni)
                        })
                    }
                    _ => None,
                },
                passthrough_spans: !self.no_tls_spans,
                max_server_names: self.tls_sni_label_limit,
            },
            limits: LimitsConfig {
                max_connections_per_listener: self.max_connections,
                ..LimitsConfig::default()
            },
            db: {
                let on = |p| !self.no_db_spans && !self.no_db_parser.contains(&p);
                DbConfig {
                    redis: on(DbParser::Redis),
                    postgresql: on(DbParser::Postgresql),
                    mysql: on(DbParser::Mysql),
                    query_text: self.db_query_text,
                    max_pending: self.db_max_pending.max(1),
                    ..DbConfig::default()
                }
            },
        }
    }
}

/// The host name, the default service.name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

/// Sets up logging to stderr with a filter that `/log-level` can change,
/// and the rate limit on dependencies' events after it ([`LogLimit`]).
fn init_logging(level: Option<&str>, format: LogFormat) -> Result<(LogLevel, LogLimit), String> {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};
    let (filter, text) = match level {
        Some(l) => (
            EnvFilter::try_new(l)
                .map_err(|e| format!("invalid value {l:?} for '--log-level': {e}"))?,
            l.to_owned(),
        ),
        None => match std::env::var("RUST_LOG") {
            Ok(v) if EnvFilter::try_new(&v).is_ok() => (EnvFilter::new(&v), v),
            _ => (EnvFilter::new("info"), "info".to_owned()),
        },
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let limit = LogLimit::default();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(limit.clone());
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
    Ok((LogLevel::new(handle, text), limit))
}
