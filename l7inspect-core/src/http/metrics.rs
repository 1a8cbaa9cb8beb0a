//! [`RequestMetricsLayer`]: request duration histograms under the
//! OpenTelemetry semantic-convention names, as Prometheus exposes them.
//!
//! | metric | direction | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | inbound | `http_request_method`, `http_response_status_code`, `network_protocol_version` |
//! | `http_client_request_duration_seconds` | outbound | the same, plus `server_address`, `server_port` |
//! | `rpc_server_duration_seconds` | inbound gRPC | `rpc_service`, `rpc_method`, `rpc_grpc_status_code` |
//! | `rpc_client_duration_seconds` | outbound gRPC | the same |
//!
//! A request is timed from its head to the end of its response body (or the
//! response being dropped). gRPC calls count in the `rpc_` histograms only.
//! Label values stay bounded: unknown methods are `_OTHER`, and gRPC service
//! and method names and client-side server addresses share one budget of
//! [`MAX_RPC_LABELS`] distinct strings; once it is spent, new ones are
//! `_OTHER`.

use crate::meta::{ConnMeta, Direction};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::Instant,
};
use tower::{Layer, Service};

/// Histogram bounds, in seconds: the semantic conventions' advice (from
/// 5 ms) with finer bounds below it, since a proxy hop and a fast service
/// answer well under a millisecond.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The most distinct strings (gRPC service and method names, client-side
/// server addresses, counted together) that get label values of their own.
pub const MAX_RPC_LABELS: usize = 1000;

/// Labels of the `http_*_request_duration_seconds` histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The method, or `_OTHER`.
    pub http_request_method: &'static str,
    /// The response status code.
    pub http_response_status_code: u16,
    /// `1.0`, `1.1` or `2`.
    pub network_protocol_version: &'static str,
    /// The server's host (client side only).
    pub server_address: Option<Arc<str>>,
    /// The server's port (client side only).
    pub server_port: Option<u16>,
}

/// Labels of the `rpc_*_duration_seconds` histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The gRPC service (`package.Service`).
    pub rpc_service: Arc<str>,
    /// The gRPC method.
    pub rpc_method: Arc<str>,
    /// The gRPC status code; 1 (CANCELLED) when the response was dropped
    /// before its status arrived.
    pub rpc_grpc_status_code: i64,
}

/// The request histograms. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    http_server: Family<HttpLabels, Histogram>,
    http_client: Family<HttpLabels, Histogram>,
    rpc_server: Family<RpcLabels, Histogram>,
    rpc_client: Family<RpcLabels, Histogram>,
    interned: Arc<Mutex<HashSet<Arc<str>>>>,
}

/// A [`Layer`] timing the requests of one connection.
#[derive(Clone, Debug)]
pub struct RequestMetricsLayer {
    metrics: RequestMetrics,
    direction: Direction,
    /// The connection target's port, for `server_port` without a `Host` port.
    target_port: u16,
}

/// Times each request into the request histograms.
#[derive(Clone, Debug)]
pub struct RecordRequest<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

/// The future of [`RecordRequest`].
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    pending: Option<Pending>,
}

/// A response body that records its request when it ends.
#[pin_project(PinnedDrop)]
pub struct RecordedBody<B> {
    #[pin]
    inner: B,
    pending: Option<Pending>,
}

/// A request being timed.
struct Pending {
    start: Instant,
    kind: Kind,
}

enum Kind {
    Http(Family<HttpLabels, Histogram>, HttpLabels),
    Rpc(Family<RpcLabels, Histogram>, RpcLabels),
}

// === impl RequestMetrics ===

impl Default for RequestMetrics {
    fn default() -> Self {
        let new = || Histogram::new(DURATION_BUCKETS);
        Self {
            http_server: Family::new_with_constructor(new),
            http_client: Family::new_with_constructor(new),
            rpc_server: Family::new_with_constructor(new),
            rpc_client: Family::new_with_constructor(new),
            interned: Arc::default(),
        }
    }
}

impl RequestMetrics {
    /// Registers the four histograms in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of inbound HTTP requests, head to end of response body",
            Unit::Seconds,
            self.http_server.clone(),
        );
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of outbound HTTP requests, head to end of response body",
            Unit::Seconds,
            self.http_client.clone(),
        );
        registry.register_with_unit(
            "rpc_server_duration",
            "Duration of inbound gRPC calls",
            Unit::Seconds,
            self.rpc_server.clone(),
        );
        registry.register_with_unit(
            "rpc_client_duration",
            "Duration of outbound gRPC calls",
            Unit::Seconds,
            self.rpc_client.clone(),
        );
    }

    /// The layer for the requests of the connection `meta`.
    pub fn layer(&self, meta: &ConnMeta) -> RequestMetricsLayer {
        RequestMetricsLayer {
            metrics: self.clone(),
            direction: meta.direction,
            target_port: meta.target.port(),
        }
    }

    /// `value` as a shared label value, or `_OTHER` once
    /// [`MAX_RPC_LABELS`] distinct values exist.
    fn intern(&self, value: &str) -> Arc<str> {
        let mut set = self.interned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = set.get(value) {
            return v.clone();
        }
        if set.len() >= MAX_RPC_LABELS {
            return Arc::from("_OTHER");
        }
        let v: Arc<str> = Arc::from(value);
        set.insert(v.clone());
        v
    }
}

// === impl RequestMetricsLayer ===

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RecordRequest<S>;

    fn layer(&self, inner: S) -> RecordRequest<S> {
        RecordRequest {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl RecordRequest ===

impl<S, ReqB, ResB> Service<Request<ReqB>> for RecordRequest<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<RecordedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let l = &self.layer;
        let m = &l.metrics;
        let inbound = l.direction == Direction::Inbound;
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let rpc = grpc
            .then(|| {
                let (service, method) = req.uri().path().strip_prefix('/')?.split_once('/')?;
                Some((service, method))
            })
            .flatten();
        let kind = match rpc {
            Some((service, method)) => Kind::Rpc(
                if inbound {
                    m.rpc_server.clone()
                } else {
                    m.rpc_client.clone()
                },
                RpcLabels {
                    rpc_service: m.intern(service),
                    rpc_method: m.intern(method),
                    rpc_grpc_status_code: 0,
                },
            ),
            None => {
                let (server_address, server_port) = if inbound {
                    (None, None)
                } else {
                    let authority = req.uri().authority().cloned().or_else(|| {
                        req.headers()
                            .get(http::header::HOST)?
                            .to_str()
                            .ok()?
                            .parse()
                            .ok()
                    });
                    match authority {
                        Some(a) => (
                            Some(m.intern(a.host())),
                            Some(a.port_u16().unwrap_or(l.target_port)),
                        ),
                        None => (None, Some(l.target_port)),
                    }
                };
                Kind::Http(
                    if inbound {
                        m.http_server.clone()
                    } else {
                        m.http_client.clone()
                    },
                    HttpLabels {
                        http_request_method: method_label(req.method()),
                        http_response_status_code: 0,
                        network_protocol_version: match req.version() {
                            http::Version::HTTP_10 => "1.0",
                            http::Version::HTTP_2 => "2",
                            _ => "1.1",
                        },
                        server_address,
                        server_port,
                    },
                )
            }
        };
        ResponseFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                start: Instant::now(),
                kind,
            }),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RecordedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = this.pending.take().expect("polled after completion");
        Poll::Ready(result.map(|resp| {
            pending.on_response(resp.status().as_u16(), resp.headers());
            resp.map(|inner| RecordedBody {
                inner,
                pending: Some(pending),
            })
        }))
    }
}

/// The method label: the method, or `_OTHER` for methods outside RFC 9110
/// and PATCH, so label values stay bounded.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::CONNECT => "CONNECT",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

// === impl Pending ===

const GRPC_CANCELLED: i64 = 1;
/// No status yet: set by a trailers-only response or the trailers.
const GRPC_UNSET: i64 = -1;

impl Pending {
    fn on_response(&mut self, status: u16, headers: &HeaderMap) {
        match &mut self.kind {
            Kind::Http(_, labels) => labels.http_response_status_code = status,
            Kind::Rpc(_, labels) => {
                labels.rpc_grpc_status_code = grpc_status(headers).unwrap_or(GRPC_UNSET);
            }
        }
    }

    fn on_trailers(&mut self, trailers: &HeaderMap) {
        if let Kind::Rpc(_, labels) = &mut self.kind
            && labels.rpc_grpc_status_code == GRPC_UNSET
            && let Some(code) = grpc_status(trailers)
        {
            labels.rpc_grpc_status_code = code;
        }
    }

    fn record(mut self) {
        let elapsed = self.start.elapsed().as_secs_f64();
        match &mut self.kind {
            Kind::Http(family, labels) => family.get_or_create(labels).observe(elapsed),
            Kind::Rpc(family, labels) => {
                if labels.rpc_grpc_status_code == GRPC_UNSET {
                    labels.rpc_grpc_status_code = GRPC_CANCELLED;
                }
                family.get_or_create(labels).observe(elapsed);
            }
        }
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

// === impl RecordedBody ===

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(trailers), Some(p)) = (f.trailers_ref(), this.pending.as_mut()) {
                    p.on_trailers(trailers);
                }
            }
            Some(Err(_)) | None => {
                if let Some(p) = this.pending.take() {
                    p.record();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[pinned_drop]
impl<B> PinnedDrop for RecordedBody<B> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(p) = self.project().pending.take() {
            p.record();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_bounded() {
        let m = RequestMetrics::default();
        for i in 0..MAX_RPC_LABELS {
            assert_eq!(&*m.intern(&format!("svc{i}")), format!("svc{i}"));
        }
        // Known values keep theirs; a new one past the budget is _OTHER.
        assert_eq!(&*m.intern("svc7"), "svc7");
        assert_eq!(&*m.intern("one.too.many"), "_OTHER");
    }
}
