//! [`TlsMetrics`]: TLS connections by server name, terminations,
//! handshake failures and the served certificate.

use l7inspect_core::Direction;
use l7inspect_trace::BoundedLabels;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::{Arc, atomic::AtomicI64};

/// The default [`TlsMetrics::new`] bound on distinct server names: 100.
pub const DEFAULT_MAX_SERVER_NAMES: usize = 100;

/// The TLS metrics. Cheap to clone; clones share the series.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    /// `l7inspect_tls_connections_total{direction, server_name}`: TLS
    /// connections passed through (not terminated), by SNI (bounded;
    /// `none` without SNI, `other` past the bound).
    pub connections: Family<ServerNameLabels, Counter>,
    /// `l7inspect_tls_terminated_connections_total{tls_version}`:
    /// connections whose handshake the proxy completed.
    pub terminated: Family<VersionLabels, Counter>,
    /// `l7inspect_tls_handshake_errors_total{reason}`: terminations that
    /// failed, by reason.
    pub handshake_errors: Family<ReasonLabels, Counter>,
    /// `l7inspect_tls_intercepted_connections_total{result}`: outbound
    /// connections whose name is intercepted: `intercepted`,
    /// `upstream_refused` (the destination's TLS failed or was not
    /// trusted: nothing was sent), `client_handshake`, `leaf_error`,
    /// `bad_server_name`.
    pub intercepted: Family<ResultLabels, Counter>,
    /// `l7inspect_tls_certificate_reloads_total{result}`: certificate
    /// files that changed, `loaded` or `rejected`.
    pub reloads: Family<ResultLabels, Counter>,
    /// `l7inspect_tls_certificate_expiry_timestamp_seconds`: when the
    /// certificate in use expires (Unix time), 0 when none is served.
    pub expiry: Gauge<i64, AtomicI64>,
    names: BoundedLabels,
}

/// Labels of [`TlsMetrics::connections`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerNameLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The SNI, bounded.
    pub server_name: Arc<str>,
}

/// Labels of [`TlsMetrics::terminated`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// `1.2` or `1.3`.
    pub tls_version: &'static str,
}

/// Labels of [`TlsMetrics::handshake_errors`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why the handshake failed: `not_tls`, `timeout`, `eof`,
    /// `client_certificate`, `no_common_alpn`, `incompatible`, `alert`,
    /// `invalid_message`, `io` or `other`.
    pub reason: &'static str,
}

/// Labels of [`TlsMetrics::reloads`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `loaded` or `rejected` (reloads); an interception's result.
    pub result: &'static str,
}

impl Default for TlsMetrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERVER_NAMES)
    }
}

impl TlsMetrics {
    /// Metrics keeping at most `max_server_names` distinct SNI label
    /// values; further names are counted as `other`.
    pub fn new(max_server_names: usize) -> Self {
        Self {
            connections: Family::default(),
            terminated: Family::default(),
            handshake_errors: Family::default(),
            intercepted: Family::default(),
            reloads: Family::default(),
            expiry: Gauge::default(),
            names: BoundedLabels::new(max_server_names, "other"),
        }
    }

    /// Registers every family in `registry` (prefixed `l7inspect_tls_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("l7inspect_tls");
        r.register(
            "connections",
            "TLS connections passed through (not terminated), by SNI",
            self.connections.clone(),
        );
        r.register(
            "terminated_connections",
            "Inbound TLS connections terminated by the proxy, by negotiated version",
            self.terminated.clone(),
        );
        r.register(
            "handshake_errors",
            "TLS terminations that failed, by reason",
            self.handshake_errors.clone(),
        );
        r.register(
            "intercepted_connections",
            "Outbound connections to intercepted names, by result",
            self.intercepted.clone(),
        );
        r.register(
            "certificate_reloads",
            "Changes of the certificate files: loaded, or rejected (the previous pair stays)",
            self.reloads.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the served certificate expires (Unix time); 0 when none",
            self.expiry.clone(),
        );
    }

    /// Counts a passed-through TLS connection to `server_name`.
    pub(crate) fn connection(&self, direction: Direction, server_name: Option<&str>) {
        let server_name = match server_name {
            Some(name) => self.names.get(name),
            None => Arc::from("none"),
        };
        self.connections
            .get_or_create(&ServerNameLabels {
                direction,
                server_name,
            })
            .inc();
    }

    pub(crate) fn handshake_error(&self, reason: &'static str) {
        self.handshake_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
