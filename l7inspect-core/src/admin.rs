//! The admin HTTP server: `/live`, `/ready` and `/metrics`, and the
//! routes a proxy adds (a live view, a log level).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
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

/// What an admin answer carries: a whole body, or a stream (a tap).
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// The most a request to an added route may send (`PUT /log-level`).
pub const MAX_ROUTE_BODY: usize = 64 * 1024;

/// Endpoints added to the admin server ([`Admin::route`]): given the
/// request with its whole body, the answer, or `None` for a path it does
/// not serve. A closure of that shape is one.
pub trait AdminRoute: Send + Sync + 'static {
    /// Answers `req`, or `None` when its path is not this route's.
    fn respond(&self, req: &Request<Bytes>) -> Option<Response<AdminBody>>;
}

impl<F> AdminRoute for F
where
    F: Fn(&Request<Bytes>) -> Option<Response<AdminBody>> + Send + Sync + 'static,
{
    fn respond(&self, req: &Request<Bytes>) -> Option<Response<AdminBody>> {
        self(req)
    }
}

/// What the admin server serves.
///
/// | path | answer |
/// |------|--------|
/// | `GET /live` | `200 live` while the process runs |
/// | `GET /ready` | `200 ready` once every listener is bound; `503 not ready` before that and during shutdown |
/// | `GET /metrics` | the Prometheus registry in OpenMetrics text |
/// | anything else | the added [routes](Admin::route), first match; else 404 |
///
/// `/live`, `/ready` and `/metrics` answer every client (Prometheus, the
/// kubelet's probes). The added routes show request details or change
/// state, so they answer only clients on loopback (`127.0.0.0/8`, `::1`;
/// `kubectl port-forward` arrives as one) unless
/// [`allow_remote_inspect`](Admin::allow_remote_inspect); others get 403.
/// A route's request body may be at most [`MAX_ROUTE_BODY`] (413 beyond).
///
/// Other methods on the three fixed paths get 405 (with `Allow: GET,
/// HEAD`). HTTP/1.1 only; a scrape is small and rare, so this server
/// favours simplicity.
///
/// # Example
/// ```
/// use l7inspect_core::{Admin, AdminBody, Readiness};
/// use http_body_util::{BodyExt, Full};
/// use std::sync::Arc;
///
/// let admin = Admin::new(Arc::default(), Readiness::default()).route(
///     |req: &http::Request<bytes::Bytes>| -> Option<http::Response<AdminBody>> {
///         (req.uri().path() == "/hello")
///             .then(|| http::Response::new(Full::from("hi\n").boxed_unsync()))
///     },
/// );
/// // admin.serve(listener, tracker, shutdown).await
/// # drop(admin);
/// ```
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: Readiness,
    routes: Vec<Arc<dyn AdminRoute>>,
    allow_remote_inspect: bool,
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
    /// Serves `registry` and reports `ready`, with no added route.
    pub fn new(registry: Arc<Registry>, ready: Readiness) -> Self {
        Self {
            registry,
            ready,
            routes: Vec::new(),
            allow_remote_inspect: false,
        }
    }

    /// Adds `route`, tried after the routes added before it.
    pub fn route(mut self, route: impl AdminRoute) -> Self {
        self.routes.push(Arc::new(route));
        self
    }

    /// Whether the added routes answer clients that are not on loopback
    /// (default: no, 403).
    pub fn allow_remote_inspect(mut self, allow: bool) -> Self {
        self.allow_remote_inspect = allow;
        self
    }

    /// Answers one admin request from `peer`.
    pub async fn respond<B>(&self, peer: SocketAddr, req: Request<B>) -> Response<AdminBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if matches!(path, "/live" | "/ready" | "/metrics") {
            return fixed(&self.registry, &self.ready, req.method(), path)
                .map(|b| b.boxed_unsync());
        }
        if !self.allow_remote_inspect && !is_loopback(peer.ip()) {
            return text(
                StatusCode::FORBIDDEN,
                "this admin endpoint shows request details and answers clients on loopback only \
                 (l7inspect-sidecar: --admin-allow-remote-inspect allows others)\n",
            );
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_ROUTE_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return text(StatusCode::PAYLOAD_TOO_LARGE, "request body over 64 KiB\n");
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, "could not read the request body\n"),
        };
        let req = Request::from_parts(parts, body);
        self.routes
            .iter()
            .find_map(|r| r.respond(&req))
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"))
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
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
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
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(peer, req).await) }
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

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.ready.get())
            .field("routes", &self.routes.len())
            .field("allow_remote_inspect", &self.allow_remote_inspect)
            .finish_non_exhaustive()
    }
}

/// Whether `ip` is a loopback address (an IPv4 one mapped into IPv6 too:
/// a dual-stack listener sees 127.0.0.1 as `::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut resp = Response::new(Full::from(body).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `/live`, `/ready` and `/metrics`.
fn fixed(
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
        _ => {
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
        let status = |m: Method, p: &str| fixed(&registry, &ready, &m, p).status();
        assert_eq!(status(Method::GET, "/live"), StatusCode::OK);
        assert_eq!(
            status(Method::GET, "/ready"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.set(true);
        assert_eq!(status(Method::GET, "/ready"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(
            status(Method::POST, "/live"),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    fn echo_route() -> Admin {
        Admin::new(Arc::default(), Readiness::default()).route(
            |req: &Request<Bytes>| -> Option<Response<AdminBody>> {
                (req.uri().path() == "/echo")
                    .then(|| Response::new(Full::new(req.body().clone()).boxed_unsync()))
            },
        )
    }

    async fn call(admin: &Admin, peer: &str, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        let req = Request::put(path)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = admin.respond(peer.parse().unwrap(), req).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn added_routes_answer_loopback_only_unless_allowed() {
        let admin = echo_route();
        for peer in [
            "127.0.0.1:5000",
            "127.9.9.9:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert_eq!(
                call(&admin, peer, "/echo", b"hi".to_vec()).await,
                (StatusCode::OK, "hi".into()),
                "{peer}"
            );
        }
        for peer in ["10.1.2.3:5000", "[fd00::1]:5000", "[::ffff:10.0.0.1]:5000"] {
            let (status, body) = call(&admin, peer, "/echo", b"hi".to_vec()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{peer}");
            assert!(body.contains("--admin-allow-remote-inspect"), "{body}");
            // The fixed paths answer everyone.
            let req = Request::get("/live").body(Full::new(Bytes::new())).unwrap();
            assert_eq!(
                admin.respond(peer.parse().unwrap(), req).await.status(),
                StatusCode::OK
            );
        }
        let open = echo_route().allow_remote_inspect(true);
        assert_eq!(
            call(&open, "10.1.2.3:5000", "/echo", b"x".to_vec()).await.0,
            StatusCode::OK
        );
        // Unknown paths, and bodies over the limit.
        assert_eq!(
            call(&admin, "127.0.0.1:1", "/nope", vec![]).await.0,
            StatusCode::NOT_FOUND
        );
        let big = vec![b'a'; MAX_ROUTE_BODY + 1];
        assert_eq!(
            call(&admin, "127.0.0.1:1", "/echo", big).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
