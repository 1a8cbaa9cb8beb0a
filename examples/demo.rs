//! A one-command demo: four small services in this process, each behind a
//! sidecar composed from l7inspect's layers, under a steady load with some
//! errors, and one live view of every service's spans.
//!
//! ```text
//! cargo run --release -p l7inspect-examples --example demo
//! # live view: http://127.0.0.1:4191/        (open it in a browser)
//! ```
//!
//! The topology (every arrow is a real TCP connection on 127.0.0.1; `[in]`
//! and `[out]` are the services' sidecar proxies):
//!
//! ```text
//!  load (3/s) ─HTTP─▶ [in] frontend ─gRPC──▶ [out] ─▶ [in] catalog ─redis─▶ [out] ─▶ [in] kv
//!                              │
//!                              └─HTTP──▶ [out] ─▶ [in] pricing
//! ```
//!
//! - `frontend` (HTTP/1.1, hyper) answers `GET /product/{id}` by calling
//!   `catalog` (gRPC unary `demo.Catalog/GetItem`, tonic over HTTP/2
//!   without TLS) and `pricing` (HTTP/1.1), each through its own outbound
//!   proxy; a failed call makes its answer a 502.
//! - `catalog` looks the item up in `kv` over a plain TCP connection per
//!   call; it answers NOT_FOUND for the one id (12) that `kv` lacks.
//! - `pricing` answers 503 to every 7th request.
//! - `kv` is a tiny Redis stand-in (RESP: `PING`, `GET`, `SET`). Its
//!   connections are detected as redis and passed through unchanged; each
//!   command is a span on both sides (catalog's CLIENT, kv's SERVER) and a
//!   `db_*_operation_duration_seconds` entry. Redis carries no trace
//!   context: catalog's command gets the gRPC request catalog was serving
//!   as its parent, inferred by catalog's sidecar (one request in flight);
//!   kv's are roots.
//!
//! Each sidecar is an inbound proxy in front of its service (SERVER spans)
//! and, for a service that calls others, one outbound proxy per callee
//! (CLIENT spans), all built by [`proxy`]. The services forward the trace
//! context as instrumented applications do: the inbound proxy puts its
//! SERVER span's `traceparent` on the request it forwards, and `frontend`
//! copies it onto its calls (an HTTP header, gRPC metadata), so one trace
//! runs frontend SERVER → frontend CLIENT → catalog SERVER (and pricing
//! likewise). Each service has its own export pipeline (its own
//! `service.name`) over one shared ring of recent spans, which the live
//! view shows.
//!
//! Flags: `--admin ADDR`, `--duration SECS`, `--otlp-endpoint URL`,
//! `--zipkin-endpoint URL`; a bad one is a one-line error and exit status 2.
//!
//! The admin server (`--admin ADDR`; without it 127.0.0.1:4191, or a free
//! port if that one is taken) serves the live view (`/`, `/api/spans`, `/api/traces/{id}`,
//! `/api/tap`; loopback clients only) and `/metrics`, the proxies' series
//! together (by direction and protocol; the spans tell the services
//! apart). Spans are also exported as the `OTEL_*` variables
//! say (`OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317`, ...), or
//! `--otlp-endpoint URL` / `--zipkin-endpoint URL`; `OTEL_SERVICE_NAME` is
//! not used, since every service names itself.
//!
//! Ctrl-C or SIGTERM (or `--duration SECS` passing) stops the load, drains
//! the proxies and services, flushes every pipeline and exits 0.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header, uri::PathAndQuery};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_core::{
    Admin, ConnMeta, ConnectConfig, ConnectLayer, Connecting, Direction, FixedTargetLayer, Forward,
    HttpLayer, Metrics, Passthrough, PassthroughConfig, Readiness, TrackLayer, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use l7inspect_trace::db::{DbConfig, DbMetrics, DbObserver};
use l7inspect_trace::export::{
    ExportPipeline, FlushOutcome, OtelEnv, OtelOverrides, Override, RecentSpans, ResourceConfig,
    from_otel_env_with,
};
use l7inspect_trace::infer::{InFlight, InferStats};
use l7inspect_trace::inspect::Inspect;
use l7inspect_trace::{ObserveConfig, Observer, ParentInference, Peer, RequestMetrics};
use opentelemetry::trace::SpanKind;
use prometheus_client::registry::Registry;
use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Status;
use tonic_prost::ProstCodec;
use tower::{BoxError, Layer, ServiceBuilder};

/// Requests per second from the load generator.
const RATE: u64 = 3;
/// The load generator prints a line every this many requests.
const REPORT_EVERY: u64 = 30;
/// Product ids the load cycles through; `kv` knows all but the last.
const PRODUCTS: u64 = 12;
/// `pricing` answers 503 to every this-many-th request.
const PRICING_FAILS_EVERY: u64 = 7;
/// The most a service or proxy connection may take to finish on shutdown,
/// and the most a pipeline may take to flush.
const DRAIN: Duration = Duration::from_secs(3);
const USAGE: &str =
    "usage: demo [--admin ADDR] [--duration SECS] [--otlp-endpoint URL] [--zipkin-endpoint URL]";

/// The command line.
#[derive(Debug, Default)]
struct Args {
    /// `None`: 127.0.0.1:4191, or a free port if that is taken.
    admin: Option<SocketAddr>,
    duration: Option<Duration>,
    otlp_endpoint: Option<String>,
    zipkin_endpoint: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag, None),
        };
        let known = [
            "--admin",
            "--duration",
            "--otlp-endpoint",
            "--zipkin-endpoint",
        ];
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown argument {name:?}"));
        }
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{name} needs a value"))?;
        match name.as_str() {
            "--admin" => {
                let addr = value
                    .parse()
                    .map_err(|_| format!("--admin {value:?}: not an address (IP:PORT)"))?;
                parsed.admin = Some(addr);
            }
            "--duration" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--duration {value:?}: not a positive number"))?;
                parsed.duration = Some(Duration::from_secs_f64(secs));
            }
            "--otlp-endpoint" => parsed.otlp_endpoint = Some(value),
            _ => parsed.zipkin_endpoint = Some(value),
        }
    }
    Ok(parsed)
}

/// Prints a one-line error and exits 2, as for a usage error.
fn usage_error(message: impl std::fmt::Display) -> ! {
    eprintln!("demo: {message} (demo --help shows the flags)");
    std::process::exit(2);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| usage_error(e));
    let overrides = OtelOverrides {
        otlp_endpoint: args
            .otlp_endpoint
            .map(|v| Override::new("--otlp-endpoint", v)),
        zipkin_endpoint: args
            .zipkin_endpoint
            .map(|v| Override::new("--zipkin-endpoint", v)),
        ..OtelOverrides::default()
    };
    let otel = from_otel_env_with(&overrides, |var| std::env::var(var).ok())
        .unwrap_or_else(|e| usage_error(e));

    // The admin port first: an address that cannot be had stops the demo
    // before anything starts.
    let admin_listener = match args.admin {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("demo: --admin {addr}: {e}");
                std::process::exit(1);
            }
        },
        None => match TcpListener::bind("127.0.0.1:4191").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("demo: 127.0.0.1:4191 is not available ({e}); using a free port");
                TcpListener::bind("127.0.0.1:0").await?
            }
        },
    };
    // The signals before any service: a Ctrl-C during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let ring = RecentSpans::new(otel.export.recent_capacity);
    // One set of metrics for every proxy, registered once: /metrics is one
    // process's exposition, each family once (prometheus-client would
    // repeat a family per labelled sub-registry, which OpenMetrics
    // parsers reject). The spans keep each service apart.
    let mut registry = Registry::default();
    let metrics = Metrics::default();
    let requests = RequestMetrics::default();
    let db = DbMetrics::default();
    let infer = InferStats::default();
    metrics.register(&mut registry);
    requests.register(&mut registry);
    db.register(&mut registry);
    infer.register(&mut registry);
    let shared = Shared {
        metrics: &metrics,
        requests: &requests,
        db: &db,
        infer: &infer,
    };
    let run = Run::default();

    // Callees before callers: each needs its callees' inbound proxies.
    let kv_sidecar = Sidecar::new("kv", &otel, &ring, shared)?;
    let kv = spawn_kv(&run).await?;
    let kv_in = kv_sidecar.inbound(kv, &run).await?;

    let catalog_sidecar = Sidecar::new("catalog", &otel, &ring, shared)?;
    let catalog_to_kv = catalog_sidecar.outbound(kv_in, &run).await?;
    let catalog = spawn_catalog(catalog_to_kv, &run).await?;
    let catalog_in = catalog_sidecar.inbound(catalog, &run).await?;

    let pricing_sidecar = Sidecar::new("pricing", &otel, &ring, shared)?;
    let pricing = spawn_pricing(&run).await?;
    let pricing_in = pricing_sidecar.inbound(pricing, &run).await?;

    let frontend_sidecar = Sidecar::new("frontend", &otel, &ring, shared)?;
    let frontend_to_catalog = frontend_sidecar.outbound(catalog_in, &run).await?;
    let frontend_to_pricing = frontend_sidecar.outbound(pricing_in, &run).await?;
    let frontend = spawn_frontend(frontend_to_catalog, frontend_to_pricing, &run).await?;
    let frontend_in = frontend_sidecar.inbound(frontend, &run).await?;

    // One admin server: the live view over the shared ring, and /metrics.
    let admin_addr = admin_listener.local_addr()?;
    let ready = Readiness::default();
    let inspect = Inspect::new(ring);
    let admin = Admin::new(Arc::new(registry), ready.clone()).route(move |req: &Request<Bytes>| {
        inspect.respond(req.method(), req.uri().path(), req.uri().query())
    });
    let stop_admin = CancellationToken::new();
    let admin_tasks = TaskTracker::new();
    let admin_server = tokio::spawn(admin.serve(
        admin_listener,
        admin_tasks.clone(),
        stop_admin.clone().cancelled_owned(),
    ));
    ready.set(true);

    println!("live view: http://{admin_addr}/");
    println!(
        "running: frontend (HTTP) -> catalog (gRPC) -> kv (redis), frontend -> pricing (HTTP); \
         4 services behind 7 proxies, {RATE} requests/s; metrics: http://{admin_addr}/metrics; \
         Ctrl-C stops"
    );
    if let Some(exporting) = exporters(&otel) {
        println!("exporting spans to {exporting}");
    }

    let stop_load = CancellationToken::new();
    let load = tokio::spawn(load(frontend_in, stop_load.clone()));

    let duration = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
        () = duration => {}
    }

    // Stop in order: the load (its request in flight finishes), then every
    // listener (HTTP connections close after their request in flight, gRPC
    // ones after a GOAWAY), then the spans, then the admin server.
    stop_load.cancel();
    let tally = load.await?;
    run.stop.cancel();
    run.tasks.close();
    let drained = tokio::time::timeout(DRAIN, run.tasks.wait()).await.is_ok();
    let mut flushes = tokio::task::JoinSet::new();
    for sidecar in [
        kv_sidecar,
        catalog_sidecar,
        pricing_sidecar,
        frontend_sidecar,
    ] {
        flushes.spawn(async move { (sidecar.name, sidecar.export.shutdown(DRAIN).await) });
    }
    while let Some(flushed) = flushes.join_next().await {
        if let (name, FlushOutcome::DeadlineReached) = flushed? {
            eprintln!("demo: {name}: span export did not finish in time; the rest were dropped");
        }
    }
    ready.set(false);
    stop_admin.cancel();
    admin_server.await?;
    admin_tasks.close();
    let left = if drained {
        String::new()
    } else {
        format!(" ({} connections cut at the deadline)", run.tasks.len())
    };
    println!("stopped after {}{left}", tally.summary());
    Ok(())
}

/// Where spans go besides the live view, for the start-up message.
fn exporters(otel: &OtelEnv) -> Option<String> {
    let export = &otel.export;
    let mut to = Vec::new();
    if let Some(o) = &export.otlp {
        to.push(format!("OTLP {} ({})", o.endpoint, o.protocol.as_str()));
    }
    if let Some(z) = &export.zipkin {
        to.push(format!("Zipkin {}", z.endpoint));
    }
    if export.console {
        to.push("the console".to_owned());
    }
    (!to.is_empty()).then(|| to.join(" and "))
}

// ---------------------------------------------------------------------------
// Sidecars

/// A database connection's two ends, for its commands' spans.
fn db_peer(c: &Connecting) -> Peer {
    Peer {
        client: c.meta.client,
        server: c.meta.target,
    }
}

/// What the demo's listeners and connections share: the signal to stop and
/// the tasks to wait for.
#[derive(Clone, Default)]
struct Run {
    /// Stops every accept loop and starts the graceful close of every HTTP
    /// connection (the proxies' and the services').
    stop: CancellationToken,
    /// Accept loops and connections, proxies' and services'.
    tasks: TaskTracker,
}

/// What every sidecar of the demo counts in (registered once).
#[derive(Clone, Copy)]
struct Shared<'a> {
    metrics: &'a Metrics,
    requests: &'a RequestMetrics,
    db: &'a DbMetrics,
    infer: &'a InferStats,
}

/// One service's sidecar: its export pipeline (spans under its own
/// `service.name`, into the shared ring), the observers of its two
/// directions (requests, and database commands), and the demo's metrics
/// its proxies count in.
struct Sidecar {
    name: &'static str,
    export: ExportPipeline,
    metrics: Metrics,
    inbound: (Observer, DbObserver),
    outbound: (Observer, DbObserver),
}

impl Sidecar {
    /// Starts the pipeline of service `name` over `ring`; its proxies count
    /// in the demo's `shared` metrics. Its outbound calls without a trace
    /// context (the Redis commands of `catalog`) get the inbound request in
    /// flight as their parent, as the sidecar infers it.
    fn new(
        name: &'static str,
        otel: &OtelEnv,
        ring: &RecentSpans,
        shared: Shared<'_>,
    ) -> Result<Self, BoxError> {
        let resource = ResourceConfig {
            service_name: name.to_owned(),
            attributes: otel.resource_attributes.clone(),
        }
        .to_resource("l7inspect-demo", env!("CARGO_PKG_VERSION"));
        let export = ExportPipeline::start_with_ring(otel.export.clone(), resource, ring.clone())?;
        let observer = |kind| {
            let config = ObserveConfig {
                sampler: otel.sampler,
                propagators: otel.propagators,
                ..ObserveConfig::new(kind)
            };
            Observer::new(config, export.sink(), Some(shared.requests.clone()))
        };
        let db = |kind| {
            DbObserver::new(
                kind,
                DbConfig::default(),
                otel.sampler,
                export.sink(),
                Some(shared.db.clone()),
            )
        };
        let inflight = InFlight::default();
        let infer = ParentInference::Infer {
            inflight: inflight.clone(),
            max_links: l7inspect_trace::infer::DEFAULT_MAX_LINKS,
            stats: shared.infer.clone(),
        };
        Ok(Self {
            name,
            inbound: (
                observer(SpanKind::Server).with_inference(ParentInference::Register(inflight)),
                db(SpanKind::Server),
            ),
            outbound: (
                observer(SpanKind::Client).with_inference(infer.clone()),
                db(SpanKind::Client).with_inference(infer),
            ),
            export,
            metrics: shared.metrics.clone(),
        })
    }

    /// The inbound proxy in front of this service at `service`.
    async fn inbound(&self, service: SocketAddr, run: &Run) -> io::Result<SocketAddr> {
        let observers = self.inbound.clone();
        proxy(Direction::Inbound, service, observers, &self.metrics, run).await
    }

    /// An outbound proxy for this service's calls to `callee` (the callee's
    /// inbound proxy).
    async fn outbound(&self, callee: SocketAddr, run: &Run) -> io::Result<SocketAddr> {
        let observers = self.outbound.clone();
        proxy(Direction::Outbound, callee, observers, &self.metrics, run).await
    }
}

/// One proxy, the sidecar's stack in explicit-forward mode: a listener on
/// a free loopback port whose connections all go to `target`; HTTP and
/// gRPC requests observed (a span of the observer's kind and a histogram
/// entry each), Redis, PostgreSQL and MySQL commands too (`db`), any
/// other protocol passed through; connections counted in `metrics` by
/// direction and detected protocol. Returns the listener's address.
async fn proxy(
    direction: Direction,
    target: SocketAddr,
    (observer, db): (Observer, DbObserver),
    metrics: &Metrics,
    run: &Run,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let requests = move |meta: &ConnMeta, forward: Forward| {
        let peer = Peer {
            client: meta.client,
            server: meta.target,
        };
        observer.layer(peer).layer(forward)
    };
    let stack = ServiceBuilder::new()
        .layer(FixedTargetLayer::new(target))
        .layer(ConnectLayer::new(ConnectConfig::default()).with_metrics(metrics.clone()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .layer(TrackLayer::new(metrics.clone()))
        .layer(HttpLayer::new(run.stop.clone()).with_requests(requests))
        .layer(db.layer(db_peer as fn(&Connecting) -> Peer))
        .service(Passthrough::new(PassthroughConfig::default()).with_metrics(metrics.clone()));
    let stopped = run.stop.clone().cancelled_owned();
    run.tasks.spawn(serve(
        listener,
        direction,
        stack,
        run.tasks.clone(),
        stopped,
    ));
    Ok(addr)
}

// ---------------------------------------------------------------------------
// Trace context, as an instrumented application forwards it

/// The W3C trace-context headers of the request a service is handling, to
/// put on the calls it makes for it.
#[derive(Clone, Debug, Default)]
struct TraceContext(HeaderMap);

impl TraceContext {
    fn of(headers: &HeaderMap) -> Self {
        let mut found = HeaderMap::new();
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = headers.get(name) {
                found.insert(name, v.clone());
            }
        }
        Self(found)
    }

    /// Onto an outgoing HTTP request's headers.
    fn inject(&self, headers: &mut HeaderMap) {
        headers.extend(self.0.clone());
    }

    /// As an outgoing gRPC call's metadata.
    fn metadata(&self) -> tonic::metadata::MetadataMap {
        tonic::metadata::MetadataMap::from_headers(self.0.clone())
    }
}

// ---------------------------------------------------------------------------
// Services

type HttpResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accepts on `listener` until the demo stops, serving each connection
/// with `serve` (given the stop signal) on a task of its own.
fn accept_each<F, Fut>(listener: TcpListener, run: &Run, serve: F)
where
    F: Fn(TcpStream, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let run2 = run.clone();
    run.tasks.spawn(async move {
        let run = run2;
        loop {
            let io = tokio::select! {
                () = run.stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((io, _)) => io,
                    Err(_) => continue,
                },
            };
            run.tasks.spawn(serve(io, run.stop.clone()));
        }
    });
}

/// Accepts HTTP connections (HTTP/2 without TLS when `http2`, else
/// HTTP/1.1) for `handle` on a free loopback port until the demo stops;
/// open connections then close gracefully.
async fn spawn_http<F, Fut, B>(http2: bool, handle: F, run: &Run) -> io::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    accept_each(listener, run, move |io, stop| {
        let _ = io.set_nodelay(true);
        let handle = handle.clone();
        let svc = hyper::service::service_fn(move |req| {
            let resp = handle(req);
            async move { Ok::<_, Infallible>(resp.await) }
        });
        let io = TokioIo::new(io);
        async move {
            if http2 {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc);
                let mut conn = pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            } else {
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
                let mut conn = pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            }
        }
    });
    Ok(addr)
}

/// `frontend`: `GET /product/{id}` asks `catalog` for the item and
/// `pricing` for its price, at once, through its outbound proxies, with
/// the trace context of the request; either failing is a 502.
async fn spawn_frontend(
    catalog: SocketAddr,
    pricing: SocketAddr,
    run: &Run,
) -> io::Result<SocketAddr> {
    let catalog = Arc::new(CatalogClient::new(catalog));
    let handle = move |req: Request<Incoming>| {
        let catalog = catalog.clone();
        async move {
            let Some(id) = req
                .uri()
                .path()
                .strip_prefix("/product/")
                .and_then(|id| id.parse::<u64>().ok())
            else {
                return respond(StatusCode::NOT_FOUND, "try /product/1\n");
            };
            let trace = TraceContext::of(req.headers());
            let price_path = format!("/price/{id}");
            let (item, price) = tokio::join!(
                catalog.get_item(id, &trace),
                http_get(pricing, "pricing", &price_path, &trace),
            );
            match (item, price) {
                (Ok(item), Ok((StatusCode::OK, price))) => {
                    let price = String::from_utf8_lossy(&price);
                    respond(StatusCode::OK, format!("{}: {}\n", item.name, price.trim()))
                }
                (Err(status), _) => respond(
                    StatusCode::BAD_GATEWAY,
                    format!("catalog: {:?}: {}\n", status.code(), status.message()),
                ),
                (_, Ok((status, _))) => {
                    respond(StatusCode::BAD_GATEWAY, format!("pricing: {status}\n"))
                }
                (_, Err(e)) => respond(StatusCode::BAD_GATEWAY, format!("pricing: {e}\n")),
            }
        }
    };
    spawn_http(false, handle, run).await
}

/// `pricing`: `GET /price/{id}`, a made-up price; every 7th request a 503.
async fn spawn_pricing(run: &Run) -> io::Result<SocketAddr> {
    let served = Arc::new(AtomicU64::new(0));
    let handle = move |req: Request<Incoming>| {
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let Some(id) = req
                .uri()
                .path()
                .strip_prefix("/price/")
                .and_then(|id| id.parse::<u64>().ok())
            else {
                return respond(StatusCode::NOT_FOUND, "no such price\n");
            };
            if n.is_multiple_of(PRICING_FAILS_EVERY) {
                return respond(StatusCode::SERVICE_UNAVAILABLE, "pricing is overloaded\n");
            }
            let cents = 199 + id * 150;
            respond(
                StatusCode::OK,
                format!("${}.{:02}\n", cents / 100, cents % 100),
            )
        }
    };
    spawn_http(false, handle, run).await
}

/// The gRPC method `catalog` serves.
const GET_ITEM: &str = "/demo.Catalog/GetItem";

/// `demo.Catalog/GetItem`'s request.
#[derive(Clone, PartialEq, prost::Message)]
struct ItemRequest {
    #[prost(uint64, tag = "1")]
    id: u64,
}

/// `demo.Catalog/GetItem`'s reply.
#[derive(Clone, PartialEq, prost::Message)]
struct Item {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    name: String,
}

/// `catalog`: `demo.Catalog/GetItem` over HTTP/2 without TLS, written over
/// `tonic::server::Grpc` (no protoc); the item's name is a `GET` to `kv`
/// on a new TCP connection (through its outbound proxy) per call.
async fn spawn_catalog(kv: SocketAddr, run: &Run) -> io::Result<SocketAddr> {
    let handle = move |req: Request<Incoming>| async move {
        if req.uri().path() != GET_ITEM {
            return Status::unimplemented(req.uri().path().to_owned()).into_http();
        }
        let lookup = tower::service_fn(move |req: tonic::Request<ItemRequest>| async move {
            let id = req.into_inner().id;
            match kv_get(kv, &format!("item:{id}")).await {
                Ok(Some(name)) => Ok(tonic::Response::new(Item { id, name })),
                Ok(None) => Err(Status::not_found(format!("no item {id}"))),
                Err(e) => Err(Status::unavailable(format!("kv: {e}"))),
            }
        });
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Item, ItemRequest>::default());
        grpc.unary(lookup, req).await
    };
    spawn_http(true, handle, run).await
}

/// `kv`: a Redis stand-in speaking RESP (arrays of bulk strings):
/// `PING`, `GET key`, `SET key value`; it starts with the names of the
/// products but the last.
async fn spawn_kv(run: &Run) -> io::Result<SocketAddr> {
    const NAMES: [&str; 6] = ["lamp", "chair", "desk", "mug", "rug", "clock"];
    let store: HashMap<Vec<u8>, Vec<u8>> = (1..PRODUCTS)
        .map(|id| {
            let name = format!("{} #{id}", NAMES[id as usize % NAMES.len()]);
            (format!("item:{id}").into_bytes(), name.into_bytes())
        })
        .collect();
    let store = Arc::new(Mutex::new(store));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    accept_each(listener, run, move |io, stop| {
        let store = store.clone();
        async move {
            tokio::select! {
                _ = kv_connection(io, &store) => {}
                () = stop.cancelled() => {}
            }
        }
    });
    Ok(addr)
}

/// Answers the commands of one `kv` connection until it closes.
async fn kv_connection(io: TcpStream, store: &Mutex<HashMap<Vec<u8>, Vec<u8>>>) -> io::Result<()> {
    let (read, mut write) = io.into_split();
    let mut read = BufReader::new(read);
    while let Some(command) = read_command(&mut read).await? {
        let reply: Vec<u8> = match command.as_slice() {
            [name] if name.eq_ignore_ascii_case(b"PING") => b"+PONG\r\n".to_vec(),
            [name, key] if name.eq_ignore_ascii_case(b"GET") => {
                match store.lock().unwrap().get(key) {
                    Some(v) => bulk(v),
                    None => b"$-1\r\n".to_vec(),
                }
            }
            [name, key, value] if name.eq_ignore_ascii_case(b"SET") => {
                store.lock().unwrap().insert(key.clone(), value.clone());
                b"+OK\r\n".to_vec()
            }
            _ => b"-ERR unknown command\r\n".to_vec(),
        };
        write.write_all(&reply).await?;
    }
    Ok(())
}

/// One RESP command (`*N` then N `$len` bulk strings); `None` at the end of
/// the stream.
async fn read_command(
    read: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> io::Result<Option<Vec<Vec<u8>>>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if read.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let n: usize = line
        .strip_prefix('*')
        .and_then(|n| n.trim_end().parse().ok())
        .filter(|n| *n <= 16)
        .ok_or_else(|| bad("expected an array"))?;
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        read.read_line(&mut line).await?;
        let len: usize = line
            .strip_prefix('$')
            .and_then(|n| n.trim_end().parse().ok())
            .filter(|n| *n <= 1 << 20)
            .ok_or_else(|| bad("expected a bulk string"))?;
        let mut part = vec![0; len + 2];
        read.read_exact(&mut part).await?;
        part.truncate(len);
        parts.push(part);
    }
    Ok(Some(parts))
}

/// A RESP bulk string.
fn bulk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------
// Clients

/// `GET key` on a new connection to `kv` (at `addr`): the value, or `None`.
async fn kv_get(addr: SocketAddr, key: &str) -> io::Result<Option<String>> {
    let io = TcpStream::connect(addr).await?;
    let mut io = BufReader::new(io);
    let mut command = b"*2\r\n".to_vec();
    command.extend(bulk(b"GET"));
    command.extend(bulk(key.as_bytes()));
    io.get_mut().write_all(&command).await?;
    let mut line = String::new();
    io.read_line(&mut line).await?;
    let len = match line.trim_end().strip_prefix('$') {
        Some("-1") => return Ok(None),
        Some(len) => len.parse::<usize>().ok(),
        None => None,
    };
    let len = len.ok_or_else(|| io::Error::other(format!("kv answered {:?}", line.trim_end())))?;
    let mut value = vec![0; len + 2];
    io.read_exact(&mut value).await?;
    value.truncate(len);
    Ok(Some(String::from_utf8_lossy(&value).into_owned()))
}

/// `GET path` with `Host: host` on a new HTTP/1.1 connection to `addr`,
/// with the trace context: the status and the whole body.
async fn http_get(
    addr: SocketAddr,
    host: &'static str,
    path: &str,
    trace: &TraceContext,
) -> Result<(StatusCode, Bytes), BoxError> {
    let io = TcpStream::connect(addr).await?;
    io.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    trace.inject(req.headers_mut());
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A gRPC client of `catalog` over one HTTP/2 connection (to the caller's
/// outbound proxy at `addr`), made when first needed and again when it
/// closes.
struct CatalogClient {
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<H2>>,
}

impl CatalogClient {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<H2, BoxError> {
        let mut conn = self.conn.lock().await;
        if let Some(h2) = conn.as_ref().filter(|h2| !h2.0.is_closed()) {
            return Ok(h2.clone());
        }
        let io = TcpStream::connect(self.addr).await?;
        io.set_nodelay(true)?;
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(connection);
        let h2 = H2(send);
        *conn = Some(h2.clone());
        Ok(h2)
    }

    async fn get_item(&self, id: u64, trace: &TraceContext) -> Result<Item, Status> {
        let h2 = self
            .connection()
            .await
            .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
        let origin = "http://catalog".parse().expect("a valid URI");
        let mut grpc = tonic::client::Grpc::with_origin(h2, origin);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let req = tonic::Request::from_parts(
            trace.metadata(),
            tonic::Extensions::default(),
            ItemRequest { id },
        );
        let path = PathAndQuery::from_static(GET_ITEM);
        let resp = grpc.unary(req, path, ProstCodec::default()).await?;
        Ok(resp.into_inner())
    }
}

/// A hyper HTTP/2 client connection as the transport of a tonic client.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<Request<tonic::body::Body>> for H2 {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

// ---------------------------------------------------------------------------
// Load

/// What the load generator saw: responses by status, and failures to get
/// one.
#[derive(Default)]
struct Tally {
    sent: u64,
    statuses: BTreeMap<u16, u64>,
    failed: u64,
}

impl Tally {
    fn summary(&self) -> String {
        let mut out = format!("{} requests:", self.sent);
        for (status, n) in &self.statuses {
            out.push_str(&format!(" {status} x{n},"));
        }
        if self.failed > 0 {
            out.push_str(&format!(" no answer x{},", self.failed));
        }
        out.pop();
        out
    }
}

/// `RATE` requests a second to `frontend` (its inbound proxy) until
/// `stop`, one at a time, cycling through the product ids; a line every
/// `REPORT_EVERY` requests.
async fn load(frontend: SocketAddr, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return tally,
            _ = tick.tick() => {}
        }
        tally.sent += 1;
        let id = (tally.sent - 1) % PRODUCTS + 1;
        let path = format!("/product/{id}");
        let no_context = TraceContext::default();
        let get = http_get(frontend, "frontend", &path, &no_context);
        match tokio::time::timeout(Duration::from_secs(5), get).await {
            Ok(Ok((status, _))) => *tally.statuses.entry(status.as_u16()).or_default() += 1,
            _ => tally.failed += 1,
        }
        if tally.sent.is_multiple_of(REPORT_EVERY) {
            println!("{}", tally.summary());
        }
    }
}
