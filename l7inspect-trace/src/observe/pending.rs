//! An observation in flight: the request's start, its histogram labels and,
//! when sampled, its span; and how it ends (once, whatever ends it).

use std::{borrow::Cow, sync::Arc, time::Instant};

use http::HeaderMap;

use super::{
    Conn, GRPC_CANCELLED, GRPC_UNAVAILABLE, Shared,
    classify::grpc_status,
    metrics::{HttpLabels, RpcLabels},
};
use crate::span::SpanRecord;
use opentelemetry::{KeyValue, trace::Status};

/// The attribute that carries a [`ResponseFailure`]'s message (also the
/// span status's description). The semantic conventions' `error.message`
/// is deprecated for domain-specific keys; this is ours.
pub const ERROR_MESSAGE_ATTRIBUTE: &str = "l7inspect.error.message";

/// In the extensions of a response that a proxy made itself because
/// forwarding failed (a `502`, a `504`, a `400` for a malformed request
/// body): what failed. [`Observe`](super::Observe) records it on the span,
/// `error_type` as `error.type` (instead of the status code) and `message`
/// as the span status's description and [`ERROR_MESSAGE_ATTRIBUTE`]; the
/// response's body, which the client reads, need
/// not say as much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFailure {
    /// A short, stable identifier of the kind of failure
    /// (`upstream_connect_failed`, say).
    pub error_type: Cow<'static, str>,
    /// The full message, for the operator: the target address and the OS
    /// error may be in it.
    pub message: Arc<str>,
}

/// gRPC codes that are errors on a SERVER span (RPC semantic conventions);
/// on a CLIENT span every code but OK is.
const GRPC_SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// A request being observed.
pub(super) struct Pending {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: Arc<Conn>,
    pub(super) start: Instant,
    /// The histogram entry's labels; `None` without metrics.
    pub(super) labels: Option<Labels>,
    /// Whether the request is a gRPC call (its status is awaited).
    pub(super) grpc: bool,
    /// The gRPC status, once known.
    pub(super) grpc_status: Option<i64>,
    /// The span, when sampled. Not shared until the end, so it is written
    /// in place.
    pub(super) span: Option<Arc<SpanRecord>>,
    /// Response body bytes so far.
    pub(super) response_bytes: u64,
    /// An inbound request's place among those in flight (parent
    /// inference): left when the observation ends, or when the exchange
    /// becomes a tunnel.
    pub(super) in_flight: Option<crate::infer::InFlightGuard>,
}

/// The labels of the histogram entry a request makes.
pub(super) enum Labels {
    Http(HttpLabels),
    Rpc(RpcLabels),
}

/// How an observation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The response body (and trailers) ended, or the tunnel closed.
    Complete,
    /// The response was dropped before its end.
    Dropped,
    /// The response body failed.
    BodyError,
}

// === impl Pending ===

impl Pending {
    fn span_mut(&mut self) -> Option<&mut SpanRecord> {
        // Only this observation holds the span until `finish` hands it on.
        self.span.as_mut().and_then(Arc::get_mut)
    }

    fn is_server(&self) -> bool {
        self.shared.is_server()
    }

    /// The response head arrived.
    pub(super) fn on_response(&mut self, status: u16, headers: &HeaderMap) {
        if let Some(Labels::Http(labels)) = &mut self.labels {
            labels.http_response_status_code = status;
        }
        let error = if self.is_server() {
            status >= 500
        } else {
            status >= 400
        };
        if let Some(span) = self.span_mut() {
            if let Some(http) = &mut span.http {
                http.response_status_code = Some(status);
            }
            if error {
                span.set_error(status.to_string());
            }
        }
        // A trailers-only gRPC response carries its status in the headers.
        if self.grpc
            && let Some(code) = grpc_status(headers)
        {
            self.on_grpc_status(code);
        }
    }

    /// The response was made by the proxy for a failure: its kind becomes
    /// `error.type` (in place of the status code) and its message the
    /// status description and [`ERROR_MESSAGE_ATTRIBUTE`].
    pub(super) fn on_failure(&mut self, failure: &ResponseFailure) {
        if let Some(span) = self.span_mut() {
            span.error_type = Some(failure.error_type.clone());
            let message = failure.message.to_string();
            // The status stays what the response's status made it (a
            // client's `400` is no error on a SERVER span); an error gets
            // the message as its description.
            if matches!(span.status, Status::Error { .. }) {
                span.status = Status::error(message.clone());
            }
            span.attributes
                .push(KeyValue::new(ERROR_MESSAGE_ATTRIBUTE, message));
        }
    }

    /// The inner service failed: recorded as the answer l7inspect-core's
    /// HTTP layer gives the client for it, `502` (gRPC: a trailers-only
    /// `200` with status 14, UNAVAILABLE), as when the server cannot be
    /// reached.
    pub(super) fn on_service_error(&mut self) {
        if self.grpc {
            self.on_response(200, &HeaderMap::new());
            self.on_grpc_status(GRPC_UNAVAILABLE);
        } else {
            self.on_response(502, &HeaderMap::new());
        }
    }

    /// A frame of `n` data bytes went by.
    pub(super) fn on_data(&mut self, n: usize) {
        self.response_bytes += n as u64;
    }

    /// The trailers arrived.
    pub(super) fn on_trailers(&mut self, trailers: &HeaderMap) {
        if self.grpc
            && self.grpc_status.is_none()
            && let Some(code) = grpc_status(trailers)
        {
            self.on_grpc_status(code);
        }
    }

    /// The call's gRPC status is `code`; later ones do not override it.
    fn on_grpc_status(&mut self, code: i64) {
        if self.grpc_status.is_some() {
            return;
        }
        self.grpc_status = Some(code);
        let error = if self.is_server() {
            GRPC_SERVER_ERRORS.contains(&code)
        } else {
            code != 0
        };
        if let Some(span) = self.span_mut() {
            if let Some(rpc) = &mut span.rpc {
                rpc.grpc_status_code = Some(code);
            }
            if error {
                span.set_error(code.to_string());
            }
        }
    }

    /// Ends the observation: the span gets its end time and goes to the
    /// sink, and the histogram gets the same duration.
    pub(super) fn finish(mut self, end: End) {
        let elapsed = self.start.elapsed();
        // A call that ended without a status: CANCELLED, in both.
        if self.grpc && self.grpc_status.is_none() {
            self.on_grpc_status(GRPC_CANCELLED);
        }
        let bytes = self.response_bytes;
        if let Some(span) = self.span_mut() {
            span.end = span.start + elapsed;
            match end {
                End::Complete | End::Dropped => {
                    if let Some(http) = &mut span.http {
                        http.response_body_size = Some(bytes);
                    }
                }
                End::BodyError => span.set_error(Cow::Borrowed("_OTHER")),
            }
        }
        if let Some(span) = self.span.take() {
            self.shared.sink.record_shared(span);
        }
        let (Some(metrics), Some(labels)) = (&self.shared.metrics, self.labels.take()) else {
            return;
        };
        let server = self.is_server();
        let seconds = elapsed.as_secs_f64();
        match labels {
            Labels::Http(labels) => self
                .conn
                .observe_http(metrics.http(server), labels, seconds),
            Labels::Rpc(mut labels) => {
                labels.rpc_grpc_status_code = self.grpc_status.unwrap_or(GRPC_CANCELLED);
                self.conn.observe_rpc(metrics.rpc(server), labels, seconds);
            }
        }
    }
}
