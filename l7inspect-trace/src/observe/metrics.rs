//! [`RequestMetrics`]: request duration histograms under the OpenTelemetry
//! semantic-convention names, as Prometheus exposes them, recorded by
//! [`Observe`](super::Observe) when a request's observation ends.
//!
//! | metric | direction | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | inbound | `http_request_method`, `http_response_status_code`, `network_protocol_version` |
//! | `http_client_request_duration_seconds` | outbound | the same, plus `server_address`, `server_port` |
//! | `rpc_server_duration_seconds` | inbound gRPC | `rpc_service`, `rpc_method`, `rpc_grpc_status_code` |
//! | `rpc_client_duration_seconds` | outbound gRPC | the same |
//!
//! A request is timed from its head to the end of its response body (or the
//! response being dropped; or, for a WebSocket or `CONNECT` tunnel, the
//! tunnel closing): the same instants as its span, so a span's duration and
//! its histogram observation are the same number. gRPC calls count in the
//! `rpc_` histograms only.
//! Label values stay bounded: unknown methods are `_OTHER`, and gRPC service
//! and method names and client-side server addresses share one budget of
//! [`MAX_RPC_LABELS`] distinct strings; once it is spent, new ones are
//! `_OTHER`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

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
    interned: BoundedLabels,
}

/// Label values taken from traffic (hosts, gRPC names, TLS server names),
/// shared and bounded: the first `max` distinct values are kept, any
/// further one becomes the overflow value, so a client inventing names
/// cannot grow the metrics without end. Cheap to clone (clones share the
/// set).
///
/// ```
/// use l7inspect_trace::BoundedLabels;
///
/// let labels = BoundedLabels::new(2, "other");
/// assert_eq!(&*labels.get("a.example"), "a.example");
/// assert_eq!(&*labels.get("b.example"), "b.example");
/// assert_eq!(&*labels.get("c.example"), "other");
/// assert_eq!(&*labels.get("a.example"), "a.example");
/// ```
#[derive(Clone, Debug)]
pub struct BoundedLabels {
    shared: Arc<Bounded>,
}

#[derive(Debug)]
struct Bounded {
    max: usize,
    overflow: Arc<str>,
    set: Mutex<HashSet<Arc<str>>>,
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
            interned: BoundedLabels::new(MAX_RPC_LABELS, "_OTHER"),
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

    /// The HTTP histogram of a SERVER (`server`) or CLIENT span's requests.
    pub(crate) fn http(&self, server: bool) -> &Family<HttpLabels, Histogram> {
        if server {
            &self.http_server
        } else {
            &self.http_client
        }
    }

    /// The gRPC histogram of a SERVER (`server`) or CLIENT span's calls.
    pub(crate) fn rpc(&self, server: bool) -> &Family<RpcLabels, Histogram> {
        if server {
            &self.rpc_server
        } else {
            &self.rpc_client
        }
    }

    /// `value` as a shared label value, or `_OTHER` once
    /// [`MAX_RPC_LABELS`] distinct values exist.
    pub(crate) fn intern(&self, value: &str) -> Arc<str> {
        self.interned.get(value)
    }
}

// === impl BoundedLabels ===

impl BoundedLabels {
    /// Keeps up to `max` distinct values; the rest are `overflow`.
    pub fn new(max: usize, overflow: &str) -> Self {
        Self {
            shared: Arc::new(Bounded {
                max,
                overflow: Arc::from(overflow),
                set: Mutex::default(),
            }),
        }
    }

    /// `value` as a shared label value, or the overflow value once `max`
    /// distinct values exist.
    pub fn get(&self, value: &str) -> Arc<str> {
        let b = &*self.shared;
        let mut set = b.set.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = set.get(value) {
            return v.clone();
        }
        if set.len() >= b.max {
            return b.overflow.clone();
        }
        let v: Arc<str> = Arc::from(value);
        set.insert(v.clone());
        v
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
