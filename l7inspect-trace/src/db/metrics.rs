//! [`DbMetrics`]: the database operation histograms and the parsers'
//! counters.
//!
//! | metric | direction | labels |
//! |---|---|---|
//! | `db_client_operation_duration_seconds` | outbound | `db_system_name`, `db_operation_name`, `error_type` |
//! | `db_server_operation_duration_seconds` | inbound | the same |
//! | `l7inspect_db_parse_stopped_total` | both | `db_system_name`, `reason` (`tls`, `unsupported`, `malformed`) |
//! | `l7inspect_db_commands_untracked_total` | both | `db_system_name` |
//!
//! The first is the semantic conventions' `db.client.operation.duration`;
//! the second, its counterpart for a database this sidecar stands in front
//! of. Label values are bounded: operations come from each parser's fixed
//! list (else `_OTHER`), and error types share a budget of
//! [`MAX_ERROR_LABELS`] distinct values (then `_OTHER`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::sync::Arc;

use super::{DbSystem, StopReason};
use crate::observe::{BoundedLabels, DURATION_BUCKETS};

/// The most distinct `error_type` values (Redis error prefixes,
/// SQLSTATEs, MySQL error numbers) with series of their own.
pub const MAX_ERROR_LABELS: usize = 200;

/// Labels of the operation histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    /// `redis`, `postgresql`, `mysql`.
    pub db_system_name: &'static str,
    /// The command or the statement's first keyword, or `_OTHER`.
    pub db_operation_name: &'static str,
    /// Why it failed (empty when it did not).
    pub error_type: Arc<str>,
}

/// Labels of `l7inspect_db_parse_stopped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StopLabels {
    /// `redis`, `postgresql`, `mysql`.
    pub db_system_name: &'static str,
    /// `tls`, `unsupported`, `malformed`.
    pub reason: &'static str,
}

/// Labels of `l7inspect_db_commands_untracked_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SystemLabels {
    db_system_name: &'static str,
}

/// The database metrics. Cheap to clone (clones share the series).
#[derive(Clone, Debug)]
pub struct DbMetrics {
    client: Family<DbLabels, Histogram>,
    server: Family<DbLabels, Histogram>,
    stopped: Family<StopLabels, Counter>,
    untracked: Family<SystemLabels, Counter>,
    errors: BoundedLabels,
    no_error: Arc<str>,
}

const SYSTEMS: [DbSystem; 3] = [DbSystem::Redis, DbSystem::Postgresql, DbSystem::Mysql];
const REASONS: [StopReason; 3] = [
    StopReason::Tls,
    StopReason::Unsupported,
    StopReason::Malformed,
];

impl Default for DbMetrics {
    fn default() -> Self {
        let new = || Histogram::new(DURATION_BUCKETS);
        let metrics = Self {
            client: Family::new_with_constructor(new),
            server: Family::new_with_constructor(new),
            stopped: Family::default(),
            untracked: Family::default(),
            errors: BoundedLabels::new(MAX_ERROR_LABELS, "_OTHER"),
            no_error: Arc::from(""),
        };
        // Every counter series from zero, so that a rate is defined
        // before the first event.
        for system in SYSTEMS {
            for reason in REASONS {
                let _ = metrics.stopped.get_or_create(&StopLabels {
                    db_system_name: system.as_str(),
                    reason: reason.as_str(),
                });
            }
            let _ = metrics.untracked.get_or_create(&SystemLabels {
                db_system_name: system.as_str(),
            });
        }
        metrics
    }
}

impl DbMetrics {
    /// Registers the histograms and counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "db_client_operation_duration",
            "Duration of database commands sent through the sidecar (outbound), first byte of the command to last byte of its reply",
            Unit::Seconds,
            self.client.clone(),
        );
        registry.register_with_unit(
            "db_server_operation_duration",
            "Duration of database commands answered behind the sidecar (inbound), first byte of the command to last byte of its reply",
            Unit::Seconds,
            self.server.clone(),
        );
        registry.register(
            "l7inspect_db_parse_stopped",
            "Database connections whose commands the sidecar stopped following (TLS, replication or MONITOR, bytes it could not parse); their bytes still pass",
            self.stopped.clone(),
        );
        registry.register(
            "l7inspect_db_commands_untracked",
            "Database commands that got no span or histogram entry: past the bound on commands waiting for replies, or sent with replies off",
            self.untracked.clone(),
        );
    }

    /// The histogram of `system`'s `operation` that ended with
    /// `error_type`, on the SERVER (`server`) or CLIENT side.
    pub(crate) fn histogram(
        &self,
        server: bool,
        system: DbSystem,
        operation: &'static str,
        error_type: Option<&str>,
    ) -> (DbLabels, Histogram) {
        let labels = DbLabels {
            db_system_name: system.as_str(),
            db_operation_name: operation,
            error_type: match error_type {
                None => self.no_error.clone(),
                Some(e) => self.errors.get(e),
            },
        };
        let family = if server { &self.server } else { &self.client };
        let h = family.get_or_create(&labels).clone();
        (labels, h)
    }

    /// Counts a parser of `system` stopping for `reason`.
    pub(crate) fn stopped(&self, system: DbSystem, reason: StopReason) {
        self.stopped
            .get_or_create(&StopLabels {
                db_system_name: system.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts `n` untracked commands of `system`.
    pub(crate) fn untracked(&self, system: DbSystem, n: u64) {
        self.untracked
            .get_or_create(&SystemLabels {
                db_system_name: system.as_str(),
            })
            .inc_by(n);
    }
}
