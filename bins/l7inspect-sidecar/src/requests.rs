//! The per-request stack of an HTTP connection: the request's observation
//! (span and request metrics) around forwarding.

use http::Response;
use l7inspect_core::{ConnMeta, Forward, NewRequestService, ProxyError, ResponseBody};
use l7inspect_trace::{
    Observe, ObservedBody, Observer, Peer, PropagationStats, ResponseFailure, span::TlsFields,
};
use std::sync::Arc;
use tower::{Layer, util::MapResponse};

/// Forwarding, with the proxy's own failures told to the observation.
type Forwarding = MapResponse<Forward, fn(Response<ResponseBody>) -> Response<ResponseBody>>;

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
    type Service = Observe<Forwarding>;
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
        layer.layer(MapResponse::new(forward, note_failure as fn(_) -> _))
    }
}

/// A response the proxy made for a failure (a 502, say) carries a
/// [`ProxyError`]: its kind and message go on the span as a
/// [`ResponseFailure`] (l7inspect-trace knows nothing of l7inspect-core).
/// Other responses pass untouched (one look at empty extensions).
fn note_failure(mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
    if let Some(e) = resp.extensions().get::<ProxyError>() {
        let failure = ResponseFailure {
            error_type: e.kind().as_str().into(),
            message: e.message().into(),
        };
        resp.extensions_mut().insert(failure);
    }
    resp
}
