//! `serve --otlp`: a cheap OTLP sink for the sidecar's exporters, so that
//! the receiver does not take the load CPU's time away from the load
//! generator.
//!
//! One port, HTTP/1.1 and h2c (prior knowledge) both (hyper-util's auto
//! connection). It answers:
//!
//! - `POST /v1/traces` (OTLP/HTTP, protobuf): 200 with an empty body
//!   (an empty `ExportTraceServiceResponse`);
//! - `POST /opentelemetry.proto.collector.trace.v1.TraceService/Export`
//!   (OTLP/gRPC): 200, `content-type: application/grpc`, one empty message
//!   (the 5-byte frame prefix), then `grpc-status: 0` in the trailers, as a
//!   collector answers;
//! - `GET /stats`: `{"posts":N,"grpc_calls":N,"bytes":N}` (posts counts
//!   both kinds of export; bytes is the request bodies' length).
//!
//! Request bodies are read frame by frame and dropped, never decoded.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio::net::TcpListener;

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Default)]
struct Counts {
    posts: AtomicU64,
    grpc_calls: AtomicU64,
    bytes: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves the sink on every connection `listener` accepts.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let counts = Arc::new(Counts::default());
    loop {
        let (io, _) = listener.accept().await?;
        let _ = io.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, counts.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, counts: Arc<Counts>) -> Result<Response<Body>, Infallible> {
    let grpc = req.uri().path() == GRPC_EXPORT;
    let post = req.method() == Method::POST && (grpc || req.uri().path() == "/v1/traces");
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        let body = serde_json::json!({
            "posts": counts.posts.load(Ordering::Relaxed),
            "grpc_calls": counts.grpc_calls.load(Ordering::Relaxed),
            "bytes": counts.bytes.load(Ordering::Relaxed),
        })
        .to_string();
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)).boxed())
            .expect("static response"));
    }
    // Read and drop the body, counting its bytes.
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    if !post {
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()).boxed())
            .expect("static response"));
    }
    counts.posts.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(n, Ordering::Relaxed);
    if !grpc {
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::new()).boxed())
            .expect("static response"));
    }
    counts.grpc_calls.fetch_add(1, Ordering::Relaxed);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    // One empty ExportTraceServiceResponse: uncompressed, length 0.
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .expect("static response"))
}
