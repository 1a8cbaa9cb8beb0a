//! An HTTP reverse proxy with spans, built from l7inspect's layers: it
//! forwards one port to a fixed target; HTTP/1 and HTTP/2 requests get a
//! span each (exported as the OpenTelemetry variables say: OTLP, Zipkin, or
//! only kept in memory) and a request-duration histogram entry; a middleware
//! of our own refuses `/admin` with 403 and marks every response, inside a
//! `tracing` span that is exported as the request span's child; any other
//! protocol passes through untouched.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 \
//!   cargo run -p l7inspect-examples --example http_proxy -- 127.0.0.1:7000 127.0.0.1:8080
//! curl -i localhost:7000/admin   # 403, x-proxy: l7inspect-example
//! ```
//!
//! On Ctrl-C it stops accepting, lets open connections finish (HTTP/1 after
//! the request in flight, HTTP/2 after a GOAWAY), flushes the spans, prints
//! the request metrics and exits.

use http::{HeaderValue, Request, Response, StatusCode, header::HeaderName};
use l7inspect_core::{
    ConnMeta, ConnectConfig, ConnectLayer, Direction, FixedTargetLayer, Forward, HttpLayer,
    Passthrough, PassthroughConfig, RequestBody, local_response, serve,
};
use l7inspect_detect::{DetectConfig, DetectLayer};
use l7inspect_trace::export::{ExportPipeline, SdkExporter, from_otel_env};
use l7inspect_trace::{ObserveConfig, Observer, Peer, RequestMetrics};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::registry::Registry;
use std::{net::SocketAddr, time::Duration};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tracing::Instrument;
use tracing_subscriber::{Layer as _, filter::LevelFilter, layer::SubscriberExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target)) = (args.next(), args.next()) else {
        eprintln!("usage: http_proxy LISTEN_ADDR TARGET_ADDR");
        std::process::exit(2);
    };
    let (listen, target): (SocketAddr, SocketAddr) = (listen.parse()?, target.parse()?);

    // Spans: exporters and sampler from the OTEL_* variables.
    let otel = from_otel_env(|var| std::env::var(var).ok())?;
    let service = otel.service_name.unwrap_or_else(|| "http-proxy".into());
    let resource = l7inspect_trace::export::ResourceConfig {
        service_name: service,
        attributes: otel.resource_attributes,
    };
    let export = ExportPipeline::start(otel.export, resource.to_resource("http_proxy", "0.1"))?;
    // Our `tracing` spans, through tracing-opentelemetry and the SDK, into
    // the same pipeline as the request spans.
    let sdk = SdkTracerProvider::builder()
        .with_simple_exporter(SdkExporter::new(export.sink()))
        .build();
    // INFO and above: debug spans (the proxy's per-connection span, h2's)
    // would become spans, and the parents of ours.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(sdk.tracer("http_proxy"))
        .with_filter(LevelFilter::INFO);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel_layer))?;
    let request_metrics = RequestMetrics::default();
    let config = ObserveConfig {
        sampler: otel.sampler,
        // The request's span in each request's extensions, and current
        // while our middleware runs: its `tracing` spans are children.
        inner_context: true,
        ..ObserveConfig::new(SpanKind::Server)
    };
    let observer = Observer::new(config, export.sink(), Some(request_metrics.clone()));

    // Per connection, the request stack: the observation (span and
    // histogram) around our middleware around forwarding. A closure is
    // enough; no type of the stack needs a name.
    let requests = move |meta: &ConnMeta, forward: Forward| {
        let peer = Peer {
            client: meta.client,
            server: meta.target,
        };
        ServiceBuilder::new()
            .layer(observer.layer(peer))
            .map_response(|mut resp: Response<_>| {
                let name = HeaderName::from_static("x-proxy");
                resp.headers_mut()
                    .insert(name, HeaderValue::from_static("l7inspect-example"));
                resp
            })
            .service(deny_admin(forward))
    };

    let drain = CancellationToken::new();
    let stack = ServiceBuilder::new()
        .layer(FixedTargetLayer::new(target))
        .layer(ConnectLayer::new(ConnectConfig::default()))
        .layer(DetectLayer::new(DetectConfig::default()))
        .layer(HttpLayer::new(drain.clone()).with_requests(requests))
        .service(Passthrough::new(PassthroughConfig::default()));

    let listener = TcpListener::bind(listen).await?;
    println!("forwarding {} -> {target}", listener.local_addr()?);
    let tracker = TaskTracker::new();
    let stopped = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(
        listener,
        Direction::Inbound,
        stack,
        tracker.clone(),
        stopped,
    )
    .await;
    drain.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    let _ = export.shutdown(Duration::from_secs(5)).await;

    let mut registry = Registry::default();
    request_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    print!("{text}");
    Ok(())
}

/// Our middleware: `/admin` is refused here with 403; everything else is
/// forwarded.
fn deny_admin(
    forward: Forward,
) -> impl Service<
    Request<RequestBody>,
    Response = Response<l7inspect_core::ResponseBody>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone {
    service_fn(move |req: Request<RequestBody>| {
        let forward = forward.clone();
        let span = tracing::info_span!("deny_admin", url.path = req.uri().path());
        async move {
            if req.uri().path().starts_with("/admin") {
                let text = HeaderValue::from_static("text/plain");
                let headers = [(http::header::CONTENT_TYPE, text)];
                return Ok(local_response(
                    StatusCode::FORBIDDEN,
                    headers,
                    "forbidden\n",
                ));
            }
            forward.oneshot(req).await
        }
        .instrument(span)
    })
}
