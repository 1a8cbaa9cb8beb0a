//! The l7inspect sidecar as a library: [`SidecarConfig`] → [`build`] →
//! [`Sidecar::run`].
//!
//! `main.rs` only parses flags into a [`SidecarConfig`]; tests build the
//! config directly and run the sidecar in-process.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! use l7inspect_sidecar::{build, Forward, SidecarConfig};
//!
//! let config = SidecarConfig {
//!     transparent: false,
//!     admin_listen: vec!["127.0.0.1:0".parse()?],
//!     inbound_forwards: vec![Forward {
//!         listen: "127.0.0.1:0".parse()?,
//!         target: "127.0.0.1:8080".parse()?,
//!     }],
//!     ..SidecarConfig::default()
//! };
//! let sidecar = build(config).await?;
//! println!("forwarding from {}", sidecar.addrs().inbound_forwards[0].listen);
//! sidecar.run(async { tokio::signal::ctrl_c().await.unwrap() }).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod requests;
mod telemetry;

use l7inspect_core::{
    Admin, AdminRoute, CatchPanicLayer, ConnectConfig, ConnectLayer, Connecting, Direction,
    FixedTargetLayer, HttpConfig, HttpLayer, LimitLayer, LoopGuard, Metrics, OrigDstLayer,
    Passthrough, PassthroughConfig, Readiness, TrackLayer, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use l7inspect_tls::{
    DEFAULT_MAX_SERVER_NAMES, InterceptConfig, InterceptError, Interceptor, PassthroughSpans,
    TerminateConfig, TerminateError, Terminator, TlsLayer, TlsMetrics,
};
use l7inspect_trace::{
    DEFAULT_MAX_ATTRIBUTE_LEN, ObserveConfig, Observer, ParentInference, Peer, Propagators,
    RequestMetrics,
    db::{DbConfig, DbMetrics, DbObserver},
    export::{
        ExportBuildError, ExportConfig, ExportPipeline, FlushOutcome, ResourceConfig,
        SamplerConfig, UNKNOWN_SERVICE,
    },
    infer::{InFlight, InferStats},
    inspect::Inspect,
};
use opentelemetry::trace::SpanKind;
use prometheus_client::registry::Registry;
use requests::Requests;
use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use telemetry::SpanStatsCollector;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceBuilder;

/// Everything the sidecar needs to start: parsed and validated flags.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    /// Open the transparent (SO_ORIGINAL_DST) listeners.
    pub transparent: bool,
    /// The transparent inbound listener's addresses (by default `0.0.0.0`
    /// and `[::]`). See [`build`] for an IPv6 address on a host without IPv6.
    pub inbound_listen: Vec<SocketAddr>,
    /// The transparent outbound listener's addresses (by default
    /// `127.0.0.1` and `[::1]`, where IPv4 and IPv6 REDIRECT rules deliver).
    pub outbound_listen: Vec<SocketAddr>,
    /// The admin server's addresses (by default `0.0.0.0` and `[::]`).
    pub admin_listen: Vec<SocketAddr>,
    /// Whether the admin endpoints that show request details (the live
    /// view, the span API, tap, the log level) answer clients that are not
    /// on loopback (default: no, 403).
    pub admin_allow_remote_inspect: bool,
    /// Explicit inbound listeners with fixed targets.
    pub inbound_forwards: Vec<Forward>,
    /// Explicit outbound listeners with fixed targets.
    pub outbound_forwards: Vec<Forward>,
    /// Protocol detection (opaque ports, timeouts, prefix size). Its
    /// `silent_timeout` applies to inbound connections only (default
    /// [`DEFAULT_INBOUND_SILENT_TIMEOUT`]): outbound ones are the
    /// application's own, and a pool may open them long before their first
    /// use.
    pub detect: DetectConfig,
    /// Upstream connects.
    pub connect: ConnectConfig,
    /// Passthrough (idle timeout).
    pub passthrough: PassthroughConfig,
    /// How long open connections may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// HTTP proxying: header case, request-head and idle timeouts, HTTP/2
    /// limits.
    pub http: HttpConfig,
    /// HTTP tracing: export, sampling, propagation.
    pub tracing: TracingConfig,
    /// TLS: inbound termination, spans of the TLS passed through.
    pub tls: TlsConfig,
    /// How many connections are held open at once.
    pub limits: LimitsConfig,
    /// Spans and metrics of database commands (Redis, PostgreSQL, MySQL)
    /// on connections passed through. `max_query_text` is set from
    /// [`TracingConfig::max_attribute_len`] when the sidecar is built.
    pub db: DbConfig,
}

/// How many connections the sidecar holds open at once; past a limit, a
/// new connection is reset as it is accepted, before any upstream connect,
/// and counted in `l7inspect_connections_refused_total`.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// The most connections each listener holds at once (`reason="limit"`):
    /// the transparent inbound listener (all its addresses together), the
    /// transparent outbound one, each explicit forward. 0: no limit.
    /// Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections_per_listener: usize,
    /// The most proxied connections the whole process holds at once
    /// (`reason="descriptors"`): `None` (the default) derives it from the
    /// descriptor limit (`RLIMIT_NOFILE`) when [`build`] runs, with
    /// [`descriptor_budget`], so that the admin server, the exporters and
    /// the listeners always have descriptors left.
    pub max_proxied_connections: Option<usize>,
}

/// The default of [`LimitsConfig::max_connections_per_listener`]: well
/// above what a pod's workload needs, well below what exhausts its memory
/// (each open connection costs the proxy tens of KiB; see
/// docs/robustness.md) or its ephemeral ports (about 28,000 connections to
/// one application port).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Descriptors left for everything but proxied connections, at the least:
/// the standard streams, the runtime's epoll and wake-up descriptors, the
/// listeners and each one's spare descriptor, the admin server's
/// connections (probes, scrapes, the live view), the exporters'
/// connections, and what a `/metrics` scrape opens under `/proc`.
pub const MIN_DESCRIPTOR_RESERVE: u64 = 64;

/// The descriptors a proxied connection holds: its client's and its
/// upstream's.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// The number of proxied connections a descriptor limit of `nofile` leaves
/// room for: `(nofile - reserve) / 2`, where the reserve is
/// [`MIN_DESCRIPTOR_RESERVE`] plus 1/32 of the limit (room for what grows
/// with the traffic: TLS termination's HTTP/2 probes of the application,
/// an HTTP upstream connection redialled while its client's is open).
///
/// | `nofile` | reserve | budget |
/// |---|---|---|
/// | 256 | 72 | 92 |
/// | 1024 (a common default) | 96 | 464 |
/// | 1048576 (containerd's, systemd's hard limit) | 32832 | 507872 |
pub fn descriptor_budget(nofile: u64) -> usize {
    let reserve = MIN_DESCRIPTOR_RESERVE + nofile / 32;
    let budget = nofile.saturating_sub(reserve) / DESCRIPTORS_PER_CONNECTION;
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// The descriptor limit (`RLIMIT_NOFILE`) before and after
/// [`raise_nofile_limit`]; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the process started with.
    pub before: Option<u64>,
    /// The soft limit now: what the process may open.
    pub soft: Option<u64>,
    /// The hard limit: the most the soft limit may be raised to.
    pub hard: Option<u64>,
}

/// Raises the soft descriptor limit (`RLIMIT_NOFILE`) to the hard limit, as
/// nginx's `worker_rlimit_nofile`, haproxy and Go programs do: the soft
/// limit of 1024 that many systems start processes with is a guard for
/// programs using `select(2)`, which this one does not, and at 1024 the
/// sidecar could proxy fewer than 500 connections. The binary calls it
/// once at start-up; an embedder decides for its own process.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let raise = match (current, maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        // An unlimited hard limit is not allowed for descriptors (it is
        // capped by fs.nr_open); there is nothing to raise to.
        _ => false,
    };
    if raise {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok(NofileLimit {
        before: current,
        soft: now.current,
        hard: now.maximum,
    })
}

/// How long an inbound connection on which neither side has sent a byte is
/// kept (60 s, as PostgreSQL's `authentication_timeout` and nginx's
/// `client_header_timeout`).
pub const DEFAULT_INBOUND_SILENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the sidecar does with TLS.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Terminate the inbound TLS of these ports with this certificate;
    /// `None`: nothing is terminated.
    pub terminate: Option<TerminateConfig>,
    /// Intercept the outbound TLS of these names with this CA; `None`:
    /// nothing is intercepted.
    pub intercept: Option<InterceptConfig>,
    /// A span for every TLS connection passed through (default: on).
    pub passthrough_spans: bool,
    /// How many distinct SNI values `l7inspect_tls_connections_total`
    /// keeps as labels before counting others as `other`.
    pub max_server_names: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            terminate: None,
            intercept: None,
            passthrough_spans: true,
            max_server_names: DEFAULT_MAX_SERVER_NAMES,
        }
    }
}

/// How HTTP requests are traced and where spans go.
#[derive(Clone, Debug)]
pub struct TracingConfig {
    /// `service.name` and resource attributes of every span.
    pub resource: ResourceConfig,
    /// Exporters, queue and batching. With no exporter, spans are only kept
    /// in memory (for the admin view).
    pub export: ExportConfig,
    /// Which requests are sampled.
    pub sampler: SamplerConfig,
    /// Trace-context formats extracted and injected.
    pub propagators: Propagators,
    /// Record `url.query` on spans.
    pub record_query: bool,
    /// The longest a string from a request (path, query, host, user agent,
    /// gRPC names) may be on a span or a label, in bytes.
    pub max_attribute_len: usize,
    /// Infer the parent of outbound requests that carry no trace context
    /// from the inbound request in flight, when exactly one is
    /// ([`l7inspect_trace::infer`]; default: on).
    pub infer_parent: bool,
    /// The most links on the span of an outbound request made while two or
    /// more inbound requests were in flight.
    pub infer_max_links: usize,
}

/// An explicit listener: accept on `listen`, forward to `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Where to accept connections.
    pub listen: SocketAddr,
    /// Where every connection goes.
    pub target: SocketAddr,
}

/// The addresses the sidecar actually bound (port 0 resolved).
#[derive(Clone, Debug)]
pub struct BoundAddrs {
    /// The transparent inbound listener's addresses (none when not open).
    pub inbound: Vec<SocketAddr>,
    /// The transparent outbound listener's addresses (none when not open).
    pub outbound: Vec<SocketAddr>,
    /// The admin server's addresses.
    pub admin: Vec<SocketAddr>,
    /// The explicit inbound listeners, in configuration order.
    pub inbound_forwards: Vec<Forward>,
    /// The explicit outbound listeners, in configuration order.
    pub outbound_forwards: Vec<Forward>,
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} listener on {addr}: {source}")]
pub struct BindError {
    /// Which listener (`inbound`, `outbound forward`, `admin`...).
    pub what: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// The sidecar could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The span export pipeline could not start (a bad exporter setting).
    #[error("cannot start span export: {0}")]
    Export(#[from] ExportBuildError),
    /// TLS termination could not start (a certificate, key or CA file).
    #[error(transparent)]
    Tls(#[from] TerminateError),
    /// TLS interception could not start (its CA, or the upstream CA file).
    #[error(transparent)]
    Intercept(#[from] InterceptError),
}

/// A sidecar with every listener bound, ready to [`run`](Sidecar::run).
#[derive(Debug)]
pub struct Sidecar {
    config: SidecarConfig,
    addrs: BoundAddrs,
    /// Each listener's socket, direction, target, and the index of the
    /// listener it is an address of (its connection limit is shared).
    listeners: Vec<(TcpListener, Direction, Target, usize)>,
    max_proxied_connections: Option<usize>,
    admin: Vec<TcpListener>,
    admin_service: Admin,
    metrics: Metrics,
    registry: Arc<Registry>,
    guard: LoopGuard,
    ready: Readiness,
    export: ExportPipeline,
    inbound_requests: Requests,
    outbound_requests: Requests,
    inbound_db: DbObserver,
    outbound_db: DbObserver,
    tls: TlsLayer,
    terminator: Option<Terminator>,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    OrigDst,
    Fixed(SocketAddr),
}

// === impl SidecarConfig ===

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            transparent: true,
            inbound_listen: vec![
                (Ipv4Addr::UNSPECIFIED, 4143).into(),
                (Ipv6Addr::UNSPECIFIED, 4143).into(),
            ],
            outbound_listen: vec![
                (Ipv4Addr::LOCALHOST, 4140).into(),
                (Ipv6Addr::LOCALHOST, 4140).into(),
            ],
            admin_listen: vec![
                (Ipv4Addr::UNSPECIFIED, 4191).into(),
                (Ipv6Addr::UNSPECIFIED, 4191).into(),
            ],
            admin_allow_remote_inspect: false,
            inbound_forwards: Vec::new(),
            outbound_forwards: Vec::new(),
            detect: DetectConfig {
                silent_timeout: Some(DEFAULT_INBOUND_SILENT_TIMEOUT),
                ..DetectConfig::default()
            },
            connect: ConnectConfig::default(),
            passthrough: PassthroughConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            http: HttpConfig::default(),
            tracing: TracingConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            db: DbConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_listener: DEFAULT_MAX_CONNECTIONS,
            max_proxied_connections: None,
        }
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            resource: ResourceConfig {
                service_name: UNKNOWN_SERVICE.to_owned(),
                attributes: Vec::new(),
            },
            export: ExportConfig::default(),
            sampler: SamplerConfig::default(),
            propagators: Propagators::default(),
            record_query: false,
            max_attribute_len: DEFAULT_MAX_ATTRIBUTE_LEN,
            infer_parent: true,
            infer_max_links: l7inspect_trace::infer::DEFAULT_MAX_LINKS,
        }
    }
}

// === impl Sidecar ===

/// Binds every listener of `config`, starts span export and registers the
/// metrics. Fails with a [`BindError`] naming the first listener that could
/// not be bound, or an export error. Must run inside a Tokio runtime.
///
/// The budget of proxied connections is derived here from the descriptor
/// limit in force, unless the config sets it (see [`LimitsConfig`]); a
/// budget under 100 is logged as a warning.
///
/// A listener with several addresses (IPv4 and IPv6) leaves out an IPv6
/// address, with a log line, when the host has no IPv6 (the address family
/// is not supported, or `::1` does not exist) and another of its addresses
/// was bound; any other failure is an error.
pub async fn build(config: SidecarConfig) -> Result<Sidecar, BuildError> {
    async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
        l7inspect_core::bind(addr).map_err(|source| BindError { what, addr, source })
    }
    fn local(
        what: &'static str,
        l: &TcpListener,
        addr: SocketAddr,
    ) -> Result<SocketAddr, BindError> {
        l.local_addr()
            .map_err(|source| BindError { what, addr, source })
    }
    async fn bind_all(
        what: &'static str,
        addrs: &[SocketAddr],
    ) -> Result<Vec<(TcpListener, SocketAddr)>, BindError> {
        let mut bound = Vec::with_capacity(addrs.len());
        let mut no_ipv6 = None;
        for &addr in addrs {
            match bind(what, addr).await {
                Ok(l) => {
                    let local = local(what, &l, addr)?;
                    bound.push((l, local));
                }
                Err(e) if addrs.len() > 1 && host_has_no_ipv6(addr, &e.source) => {
                    no_ipv6.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match no_ipv6 {
            Some(e) if bound.is_empty() => Err(e),
            Some(e) => {
                tracing::info!("{e}; no IPv6 on this host, listening on IPv4 only");
                Ok(bound)
            }
            None => Ok(bound),
        }
    }

    // The loop guard knows every proxy listener; not the admin server, since
    // a connection to it cannot loop.
    let guard = LoopGuard::default();
    let admin = bind_all("admin", &config.admin_listen).await?;
    let mut addrs = BoundAddrs {
        inbound: Vec::new(),
        outbound: Vec::new(),
        admin: admin.iter().map(|(_, a)| *a).collect(),
        inbound_forwards: Vec::new(),
        outbound_forwards: Vec::new(),
    };
    let admin = admin.into_iter().map(|(l, _)| l).collect();
    let mut listeners = Vec::new();
    // Which listener a socket is an address of: its connection limit.
    let mut group = 0;
    if config.transparent {
        for (what, list, direction) in [
            ("inbound", &config.inbound_listen, Direction::Inbound),
            ("outbound", &config.outbound_listen, Direction::Outbound),
        ] {
            for (l, bound) in bind_all(what, list).await? {
                guard.add_listener(bound);
                match direction {
                    Direction::Inbound => addrs.inbound.push(bound),
                    Direction::Outbound => addrs.outbound.push(bound),
                }
                listeners.push((l, direction, Target::OrigDst, group));
            }
            group += 1;
        }
    }
    for (what, forwards, direction) in [
        (
            "inbound forward",
            &config.inbound_forwards,
            Direction::Inbound,
        ),
        (
            "outbound forward",
            &config.outbound_forwards,
            Direction::Outbound,
        ),
    ] {
        for f in forwards {
            let l = bind(what, f.listen).await?;
            let bound = Forward {
                listen: local(what, &l, f.listen)?,
                target: f.target,
            };
            guard.add_listener(bound.listen);
            match direction {
                Direction::Inbound => addrs.inbound_forwards.push(bound),
                Direction::Outbound => addrs.outbound_forwards.push(bound),
            }
            listeners.push((l, direction, Target::Fixed(f.target), group));
            group += 1;
        }
    }
    let max_proxied_connections = config.limits.max_proxied_connections.or_else(|| {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        nofile.map(descriptor_budget)
    });
    if let Some(budget) = max_proxied_connections.filter(|&b| b < 100) {
        tracing::warn!(
            "the descriptor limit leaves room for only {budget} proxied connections; \
             raise its hard limit (LimitNOFILE= in systemd, ulimit -Hn, the container \
             runtime's nofile setting)"
        );
    }

    let metrics = Metrics::default();
    let request_metrics = RequestMetrics::default();
    let tls_metrics = TlsMetrics::new(config.tls.max_server_names);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    request_metrics.register(&mut registry);
    tls_metrics.register(&mut registry);
    let db_metrics = DbMetrics::default();
    db_metrics.register(&mut registry);
    let terminator = match &config.tls.terminate {
        Some(t) => Some(Terminator::new(t.clone(), tls_metrics.clone())?),
        None => None,
    };
    let interceptor = match &config.tls.intercept {
        Some(i) => Some(Interceptor::new(i.clone(), tls_metrics.clone())?),
        None => None,
    };

    let t = &config.tracing;
    let resource = t
        .resource
        .to_resource("l7inspect", env!("CARGO_PKG_VERSION"));
    let export = ExportPipeline::start(t.export.clone(), resource)?;
    let requests = |kind, inference: Option<ParentInference>| {
        let config = ObserveConfig {
            kind,
            sampler: t.sampler,
            propagators: t.propagators,
            record_query: t.record_query,
            // Nothing inside (the request goes straight to `Forward`)
            // would read it.
            inner_context: false,
            max_attribute_len: t.max_attribute_len,
        };
        let observer = Observer::new(config, export.sink(), Some(request_metrics.clone()));
        Requests::new(match inference {
            Some(i) => observer.with_inference(i),
            None => observer,
        })
    };
    // Inferred parents: the inbound observer registers its requests in
    // flight, the outbound one reads them.
    let infer_stats = InferStats::default();
    infer_stats.register(&mut registry);
    let inflight = InFlight::default();
    let (register, infer) = match t.infer_parent {
        true => (
            Some(ParentInference::Register(inflight.clone())),
            Some(ParentInference::Infer {
                inflight,
                max_links: t.infer_max_links,
                stats: infer_stats,
            }),
        ),
        false => (None, None),
    };
    let inbound_requests = requests(SpanKind::Server, register);
    let outbound_requests = requests(SpanKind::Client, infer.clone());
    let db = |kind| {
        let config = DbConfig {
            max_query_text: t.max_attribute_len,
            ..config.db
        };
        DbObserver::new(
            kind,
            config,
            t.sampler,
            export.sink(),
            Some(db_metrics.clone()),
        )
    };
    let inbound_db = db(SpanKind::Server);
    let outbound_db = match infer {
        Some(i) => db(SpanKind::Client).with_inference(i),
        None => db(SpanKind::Client),
    };
    registry.register_collector(Box::new(SpanStatsCollector::new(
        export.stats(),
        vec![
            inbound_requests.propagation_stats(),
            outbound_requests.propagation_stats(),
        ],
    )));
    let registry = Arc::new(registry);
    let mut tls = TlsLayer::new()
        .with_metrics(tls_metrics)
        .with_detect(config.detect.clone());
    if config.tls.passthrough_spans {
        tls = tls.with_spans(PassthroughSpans::new(export.sink(), t.sampler));
    }
    if let Some(terminator) = &terminator {
        tls = tls.with_termination(terminator.clone());
    }
    if let Some(interceptor) = interceptor {
        tls = tls.with_interception(interceptor);
    }
    let ready = Readiness::default();
    let inspect = Inspect::new(export.recent());
    let admin_service = Admin::new(registry.clone(), ready.clone())
        .allow_remote_inspect(config.admin_allow_remote_inspect)
        .route(move |req: &http::Request<bytes::Bytes>| {
            inspect.respond(req.method(), req.uri().path(), req.uri().query())
        });
    Ok(Sidecar {
        config,
        addrs,
        listeners,
        max_proxied_connections,
        admin,
        admin_service,
        metrics,
        registry,
        guard,
        ready,
        export,
        inbound_requests,
        outbound_requests,
        inbound_db,
        outbound_db,
        tls,
        terminator,
    })
}

impl Sidecar {
    /// Adds an admin endpoint (answered, like the live view, to loopback
    /// clients only unless `admin_allow_remote_inspect`), tried after the
    /// live view's paths.
    pub fn admin_route(mut self, route: impl AdminRoute) -> Self {
        self.admin_service = self.admin_service.route(route);
        self
    }

    /// The bound addresses.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// The most proxied connections the process holds at once (`None`:
    /// no budget, the descriptor limit being unlimited).
    pub fn max_proxied_connections(&self) -> Option<usize> {
        self.max_proxied_connections
    }

    /// The metrics registry (what `/metrics` serves).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The most recent finished spans, kept in memory whether or not an
    /// exporter is configured. The handle shares the ring, so it keeps
    /// seeing new spans after [`run`](Sidecar::run) takes the sidecar.
    pub fn recent_spans(&self) -> l7inspect_trace::export::RecentSpans {
        self.export.recent()
    }

    /// Serves until `shutdown` completes, then drains: stops accepting, marks
    /// itself not ready, and waits up to the shutdown grace period for open
    /// connections to finish. Connections still open after that are dropped
    /// when the caller's runtime stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Sidecar {
            config,
            listeners,
            max_proxied_connections,
            admin,
            admin_service,
            metrics,
            guard,
            ready,
            export,
            inbound_requests,
            outbound_requests,
            inbound_db,
            outbound_db,
            tls,
            terminator,
            ..
        } = self;
        let stop = CancellationToken::new();
        let conns = TaskTracker::new();
        let admin_tasks = TaskTracker::new();
        let mut loops = JoinSet::new();

        let detect_inbound = DetectLayer::new(config.detect.clone());
        let detect_outbound = DetectLayer::new(DetectConfig {
            silent_timeout: None,
            ..config.detect.clone()
        });
        let connect = ConnectLayer::new(config.connect.clone())
            .with_metrics(metrics.clone())
            .with_loop_guard(guard.clone());
        let track = TrackLayer::new(metrics.clone());
        let passthrough =
            Passthrough::new(config.passthrough.clone()).with_metrics(metrics.clone());
        // One budget for every listener; one limit per listener, shared by
        // its addresses.
        let budget = LimitLayer::descriptor_budget(max_proxied_connections.unwrap_or(usize::MAX))
            .with_metrics(metrics.clone());
        let per_listener = match config.limits.max_connections_per_listener {
            0 => usize::MAX,
            max => max,
        };
        let mut limits: Vec<LimitLayer> = Vec::new();
        // Outermost: a panic anywhere in a connection's stack ends that
        // connection only, counted.
        let catch_panic = CatchPanicLayer::new(metrics.clone());
        // HTTP connections close gracefully (GOAWAY, close after the
        // in-flight request) as soon as shutdown starts.
        let http = HttpLayer::new(stop.clone())
            .with_config(config.http)
            .with_metrics(metrics.clone());
        let orig_dst = OrigDstLayer::new(guard).with_metrics(metrics.clone());
        for (listener, direction, target, group) in listeners {
            let (requests, detect, db) = match direction {
                Direction::Inbound => (inbound_requests.clone(), &detect_inbound, &inbound_db),
                Direction::Outbound => (outbound_requests.clone(), &detect_outbound, &outbound_db),
            };
            // The stack after the target is the same for every listener of
            // a direction.
            let stack = ServiceBuilder::new()
                .option_layer(terminator.as_ref().map(Terminator::target_layer))
                .layer(connect.clone())
                .layer(detect.clone())
                .layer(track.clone())
                .layer(tls.clone())
                .layer(http.clone().with_requests(requests))
                .layer(db.layer(db_peer as fn(&Connecting) -> Peer))
                .service(passthrough.clone());
            let stopped = stop.clone().cancelled_owned();
            let tracker = conns.clone();
            while limits.len() <= group {
                limits.push(LimitLayer::new(per_listener).with_metrics(metrics.clone()));
            }
            // Refused past the listener's limit, then past the process's
            // budget, before anything else is done with a connection.
            let limited = ServiceBuilder::new()
                .layer(catch_panic.clone())
                .layer(limits[group].clone())
                .layer(budget.clone());
            match target {
                Target::OrigDst => {
                    let svc = limited.layer(orig_dst.clone()).service(stack);
                    loops.spawn(serve(listener, direction, svc, tracker, stopped));
                }
                Target::Fixed(t) => {
                    let svc = limited.layer(FixedTargetLayer::new(t)).service(stack);
                    loops.spawn(serve(listener, direction, svc, tracker, stopped));
                }
            }
        }
        // The admin server outlives the drain, so probes see 503, not a refusal.
        let stop_admin = CancellationToken::new();
        let mut admin_servers = JoinSet::new();
        for listener in admin {
            admin_servers.spawn(admin_service.clone().serve(
                listener,
                admin_tasks.clone(),
                stop_admin.clone().cancelled_owned(),
            ));
        }
        // Every listener was bound in `build`.
        ready.set(true);
        tracing::info!("ready");

        shutdown.await;
        ready.set(false);
        tracing::info!(
            grace = %humantime::format_duration(config.shutdown_grace),
            open = conns.len(),
            "shutting down: no longer accepting, draining open connections"
        );
        stop.cancel();
        while loops.join_next().await.is_some() {}
        conns.close();
        if tokio::time::timeout(config.shutdown_grace, conns.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = conns.len(),
                "grace period over; closing remaining connections"
            );
        }
        // Spans of the drained requests go out within what is left of the
        // grace period (at least a second).
        let flush = config.shutdown_grace.max(Duration::from_secs(1));
        if let FlushOutcome::DeadlineReached = export.shutdown(flush).await {
            tracing::warn!(
                "span export did not finish before its deadline; remaining spans dropped"
            );
        }
        stop_admin.cancel();
        while admin_servers.join_next().await.is_some() {}
        admin_tasks.close();
    }
}

/// Whether binding `addr` failed because the host has no IPv6: the address
/// family is not supported (IPv6 module absent), or `::1` or `::` does not
/// exist (IPv6 disabled). Any other IPv6 address that does not exist is a
/// mistake to report, not to skip.
fn host_has_no_ipv6(addr: SocketAddr, e: &io::Error) -> bool {
    // EAFNOSUPPORT is 97 on every Linux architecture.
    const EAFNOSUPPORT: i32 = 97;
    let IpAddr::V6(ip) = addr.ip() else {
        return false;
    };
    e.raw_os_error() == Some(EAFNOSUPPORT)
        || ((ip.is_loopback() || ip.is_unspecified())
            && e.kind() == io::ErrorKind::AddrNotAvailable)
}

/// The two ends of a connection, for its database spans.
fn db_peer(c: &Connecting) -> Peer {
    Peer {
        client: c.meta.client,
        server: c.meta.target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_budget_leaves_a_reserve() {
        // The table in `descriptor_budget`'s doc.
        assert_eq!(descriptor_budget(256), 92);
        assert_eq!(descriptor_budget(1024), 464);
        assert_eq!(descriptor_budget(1_048_576), 507_872);
        // Too few to proxy anything: nothing, rather than an underflow.
        assert_eq!(descriptor_budget(50), 0);
    }
}
