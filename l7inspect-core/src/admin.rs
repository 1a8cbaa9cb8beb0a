//! The admin HTTP server: `/live`, `/ready` and `/metrics`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Whether the proxy is ready for traffic; shared with the admin server.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

/// What the admin server serves.
///
/// | path | answer |
/// |------|--------|
/// | `GET /live` | `200 live` while the process runs |
/// | `GET /ready` | `200 ready` once every listener is bound; `503 not ready` before that and during shutdown |
/// | `GET /metrics` | the Prometheus registry in OpenMetrics text |
///
/// Other paths get 404, other methods 405 (with `Allow: GET, HEAD`). HTTP/1.1
/// only; a scrape is small and rare, so this server favours simplicity.
#[derive(Clone, Debug)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: Readiness,
}

// === impl Readiness ===

impl Readiness {
    /// Marks the proxy ready (`true`) or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the proxy is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

// === impl Admin ===

impl Admin {
    /// Serves `registry` and reports `ready`.
    pub fn new(registry: Arc<Registry>, ready: Readiness) -> Self {
        Self { registry, ready }
    }

    /// Answers one admin request.
    pub fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        respond(&self.registry, &self.ready, req.method(), req.uri().path())
    }

    /// Serves admin requests on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        tracker: TaskTracker,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("admin accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            tracker.spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = admin.respond(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!("admin connection: {e}");
                }
            });
        }
    }
}

fn respond(
    registry: &Registry,
    ready: &Readiness,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Full::from("method not allowed\n"))
            .expect("static response");
    }
    let (status, content_type, body) = match path {
        "/live" => (StatusCode::OK, "text/plain", Bytes::from_static(b"live\n")),
        "/ready" if ready.get() => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"not ready\n"),
        ),
        "/metrics" => {
            let mut text = String::with_capacity(8 * 1024);
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    Bytes::from(text),
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    Bytes::from_static(b"metrics encoding failed\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let registry = Registry::default();
        let ready = Readiness::default();
        let status = |m: Method, p: &str| respond(&registry, &ready, &m, p).status();
        assert_eq!(status(Method::GET, "/live"), StatusCode::OK);
        assert_eq!(
            status(Method::GET, "/ready"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.set(true);
        assert_eq!(status(Method::GET, "/ready"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/nope"), StatusCode::NOT_FOUND);
        assert_eq!(
            status(Method::POST, "/live"),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
