//! The per-request stack of an HTTP connection: request metrics around the
//! request's span around forwarding.

use l7inspect_core::{
    ConnMeta, Forward, NewRequestService, RecordRequest, RecordedBody, RequestMetrics, ResponseBody,
};
use l7inspect_trace::{Peer, PropagationStats, Trace, TracedBody, Tracing};
use tower::Layer;

/// Builds, per HTTP connection, `RecordRequest<Trace<Forward>>`.
#[derive(Clone, Debug)]
pub struct Requests {
    tracing: Tracing,
    metrics: RequestMetrics,
}

impl Requests {
    /// Traces with `tracing` (whose span kind matches the direction) and
    /// times into `metrics`.
    pub fn new(tracing: Tracing, metrics: RequestMetrics) -> Self {
        Self { tracing, metrics }
    }

    /// The malformed trace-context header counts of these requests.
    pub fn propagation_stats(&self) -> PropagationStats {
        self.tracing.stats()
    }
}

impl NewRequestService for Requests {
    type Service = RecordRequest<Trace<Forward>>;
    type Body = RecordedBody<TracedBody<ResponseBody>>;

    fn new_service(&self, meta: &ConnMeta, forward: Forward) -> Self::Service {
        let peer = Peer {
            client: meta.client,
            server: meta.target,
        };
        let traced = self.tracing.layer(peer).layer(forward);
        self.metrics.layer(meta).layer(traced)
    }
}
