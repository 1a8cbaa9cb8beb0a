//! [`Observe`]: the service that starts each request's observation, and
//! its [`ResponseFuture`].

use std::{
    borrow::Cow,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Instant, SystemTime},
};

use http::{Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use pin_project::pin_project;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{
    Conn, ParentInference, Shared,
    body::ObservedBody,
    classify::RequestClass,
    metrics::{HttpLabels, RpcLabels},
    pending::{End, Labels, Pending, ResponseFailure},
};
use crate::{
    infer::{Inference, Outcome, PARENT_INFERRED},
    sampling::{CallerSampling, new_span_id, new_trace_id},
    span::{HttpFields, RpcFields, SpanRecord},
};

/// Observes each request (span and request histogram) and calls the inner
/// service with the request's span context injected. See the [module
/// docs](super).
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

/// The future of [`Observe`]: the inner future, then the response with its
/// body wrapped in an [`ObservedBody`].
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    pending: Option<Pending>,
    /// Current while `inner` is polled ([`ObserveConfig::inner_context`]).
    context: Option<opentelemetry::Context>,
}

// === impl Observe ===

impl<S> Observe<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>, conn: Arc<Conn>) -> Self {
        Self {
            inner,
            shared,
            conn,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Observe<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ObservedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let config = &shared.config;
        let server = shared.is_server();
        let start = Instant::now();

        let extracted = config.propagators.extract(req.headers());
        if !extracted.malformed.is_empty() {
            shared.stats.record(extracted.malformed);
            tracing::debug!(formats = ?extracted.malformed, "ignoring malformed trace context headers");
        }
        let parent = extracted.parent.as_ref();
        // B3 decisions the parent's flags cannot carry (`crate::sampling`).
        let hint = match (parent, extracted.sampled) {
            (None, Some(sampled)) => Some(CallerSampling::Decided(sampled)),
            (Some(_), None) => Some(CallerSampling::Deferred),
            _ => None,
        };
        // An outbound request with no context of its own (not even a B3
        // sampling decision): its parent may be inferred (`crate::infer`).
        let (inferred, links) = match &shared.inference {
            Some(ParentInference::Infer {
                inflight,
                max_links,
                stats,
            }) => {
                if parent.is_some() || hint.is_some() {
                    stats.count(Outcome::context);
                    (None, Vec::new())
                } else {
                    let inference = inflight.infer(*max_links);
                    stats.count(inference.outcome());
                    match inference {
                        Inference::Parent(p) => (Some(p), Vec::new()),
                        Inference::Ambiguous(links) => (None, links),
                        Inference::None => (None, Vec::new()),
                    }
                }
            }
            _ => (None, Vec::new()),
        };
        let parent = parent.or(inferred.as_ref());
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id());
        let sampled = shared.sampler.should_sample(parent, hint, trace_id);
        let span_id = new_span_id();
        let flags = parent
            .map_or(TraceFlags::default(), |p| p.trace_flags())
            .with_sampled(sampled);
        // A deferred B3 context is decided as a root: no state of its own.
        let trace_state = match (parent, hint) {
            (Some(p), None) => p.trace_state().clone(),
            _ => TraceState::NONE,
        };

        let class = RequestClass::of(&req).with_limit(config.max_attribute_len);
        // The named host, shared: for the span's server.address (when
        // sampled) and the HTTP client histogram's label (when counted).
        let labelled = shared
            .metrics
            .as_ref()
            .filter(|_| !server && class.grpc.is_none());
        let host = match class.server {
            Some((host, _)) if sampled || labelled.is_some() => {
                Some(self.conn.host(host, labelled))
            }
            _ => None,
        };
        let labels = shared.metrics.as_ref().map(|m| match class.grpc {
            Some(call) => Labels::Rpc(RpcLabels {
                rpc_service: m.intern(call.service),
                rpc_method: m.intern(call.method),
                rpc_grpc_status_code: 0,
            }),
            None => {
                // Client side only: the server as the client named it.
                let (server_address, server_port) = match (server, class.server) {
                    (true, _) => (None, None),
                    (false, Some((_, port))) => (
                        host.as_ref().and_then(|(_, label)| label.clone()),
                        Some(port.unwrap_or(self.conn.peer.server.port())),
                    ),
                    (false, None) => (None, Some(self.conn.peer.server.port())),
                };
                Labels::Http(HttpLabels {
                    http_request_method: class.method,
                    http_response_status_code: 0,
                    network_protocol_version: class.version,
                    server_address,
                    server_port,
                })
            }
        });
        // Per request: a span (one allocation, and its strings) only when
        // sampled.
        let span = sampled.then(|| {
            let mut span = SpanRecord::new(
                trace_id,
                span_id,
                config.kind.clone(),
                class.span_name(),
                SystemTime::now(),
            );
            span.trace_flags = flags;
            span.trace_state = trace_state.clone();
            if let Some(p) = parent {
                span.parent_span_id = p.span_id();
                span.parent_is_remote = p.is_remote();
            }
            if inferred.is_some() {
                span.attributes.push(KeyValue::new(PARENT_INFERRED, true));
            }
            span.links = links;
            span.network = Some(self.conn.network(server));
            let named = host.as_ref().map(|(named, _)| named.clone());
            span.http = Some(http_fields(&class, named, &self.conn, config.record_query));
            span.tls = self.conn.tls.clone();
            span.rpc = class.grpc.map(|call| RpcFields {
                system: "grpc",
                service: call.service.to_owned(),
                method: call.method.to_owned(),
                grpc_status_code: None,
            });
            Arc::new(span)
        });
        let grpc = class.grpc.is_some();

        let cx = SpanContext::new(trace_id, span_id, flags, false, trace_state);
        // Inbound: in flight until the observation ends.
        let in_flight = match &shared.inference {
            Some(ParentInference::Register(inflight)) => Some(inflight.enter(&cx)),
            _ => None,
        };
        config
            .propagators
            .inject(req.headers_mut(), &cx, extracted.carried);
        // (`with_remote_span_context` only stores the span context; it is
        // local, `is_remote` false, as built above.)
        let context = config
            .inner_context
            .then(|| opentelemetry::Context::new().with_remote_span_context(cx));
        let inner = match &context {
            Some(context) => {
                req.extensions_mut().insert(context.clone());
                let _current = context.clone().attach();
                self.inner.call(req)
            }
            None => self.inner.call(req),
        };
        ResponseFuture {
            inner,
            context,
            pending: Some(Pending {
                shared: shared.clone(),
                conn: self.conn.clone(),
                start,
                labels,
                grpc,
                grpc_status: None,
                span,
                response_bytes: 0,
                in_flight,
            }),
        }
    }
}

/// The span's HTTP attributes, from the request's class (and `host`, its
/// named host, shared).
fn http_fields(
    class: &RequestClass<'_>,
    host: Option<Arc<str>>,
    conn: &Conn,
    record_query: bool,
) -> HttpFields {
    // server.address/port: the host the client named; else the target.
    let (server_address, server_port) = match (class.server, host) {
        (Some((_, port)), Some(host)) => (host, port.unwrap_or(conn.peer.server.port())),
        _ => (conn.target_address(), conn.peer.server.port()),
    };
    HttpFields {
        method: class.method,
        method_original: (!class.method_known).then(|| class.method_original().to_owned()),
        path: class.path().to_owned(),
        scheme: match class.scheme_or(if conn.tls.is_some() { "https" } else { "http" }) {
            "http" => Cow::Borrowed("http"),
            "https" => Cow::Borrowed("https"),
            other => Cow::Owned(other.to_owned()),
        },
        query: record_query
            .then(|| class.query())
            .flatten()
            .map(str::to_owned),
        server_address,
        server_port,
        protocol_version: class.version,
        user_agent: class.user_agent().map(|ua| conn.user_agent(ua)),
        request_body_size: class.request_body_size(),
        response_status_code: None,
        response_body_size: None,
    }
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _current = this.context.as_ref().map(|c| c.clone().attach());
        let result = ready!(this.inner.poll(cx));
        let mut pending = this.pending.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(resp) => {
                pending.on_response(resp.status().as_u16(), resp.headers());
                if let Some(failure) = resp.extensions().get::<ResponseFailure>() {
                    pending.on_failure(failure);
                }
                let pending = match resp.extensions().get::<CancellationToken>() {
                    // A tunnel: observed until it closes. It is no
                    // request in flight any more (parent inference): an
                    // open WebSocket would otherwise be the parent of every
                    // call, or make every call ambiguous, while it lasts.
                    Some(tunnel_closed) => {
                        pending.in_flight = None;
                        let closed = tunnel_closed.clone();
                        tokio::spawn(async move {
                            closed.cancelled().await;
                            pending.finish(End::Complete);
                        });
                        None
                    }
                    None => Some(pending),
                };
                Ok(resp.map(|inner| ObservedBody::new(inner, pending)))
            }
            Err(e) => {
                pending.on_service_error();
                pending.finish(End::Complete);
                Err(e)
            }
        })
    }
}
