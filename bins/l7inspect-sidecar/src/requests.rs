//! The per-request stack of an HTTP connection: the request's observation
//! (span and request metrics) around forwarding.

use l7inspect_core::{ConnMeta, Forward, NewRequestService, ResponseBody};
use l7inspect_trace::{Observe, ObservedBody, Observer, Peer, PropagationStats, span::TlsFields};
use std::sync::Arc;
use tower::Layer;

/// Builds, per HTTP connection, `Observe<Forward>`.
#[derive(Clone, Debug)]
pub struct Requests {
    observer: Observer,
}

impl Requests {
    /// Observes with `observer` (whose span kind matches the direction).
    pub fn new(observer: Observer) -> Self {
        Self { observer }
    }

    /// The malformed trace-context header counts of these requests.
    pub fn propagation_stats(&self) -> PropagationStats {
        self.observer.stats()
    }
}

impl NewRequestService for Requests {
    type Service = Observe<Forward>;
    type Body = ObservedBody<ResponseBody>;

    fn new_service(&self, meta: &ConnMeta, forward: Forward) -> Self::Service {
        let peer = Peer {
            client: meta.client,
            server: meta.target,
        };
        let layer = self.observer.layer(peer);
        // A terminated connection: its requests' spans carry its TLS session.
        let layer = match forward.connection_extensions().get::<Arc<TlsFields>>() {
            Some(tls) => layer.with_tls(tls.clone()),
            None => layer,
        };
        layer.layer(forward)
    }
}
