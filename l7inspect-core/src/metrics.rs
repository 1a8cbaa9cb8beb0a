//! The proxy's Prometheus metrics: [`Metrics`] and the process collector.

use crate::meta::Direction;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge,
    },
    registry::{Registry, Unit},
};
/// Labels of per-connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// The detection outcome's label (`http1`, `server_first`, `unknown`...).
    pub protocol: &'static str,
}

/// Labels of metrics that only know the direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
}

/// Labels of upstream connect errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectErrorLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// `refused`, `timeout`, `unreachable`, `reset`, `tls`, `descriptors` or `other`.
    pub error: &'static str,
}

/// Labels of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// Why it was refused.
    pub reason: Refusal,
}

/// Why a connection was refused before any upstream connect: the `reason`
/// label of `l7inspect_connections_refused_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// Forwarding it would reach the proxy itself (`loop`).
    Loop,
    /// The kernel has no original destination for it (`no_original_dst`).
    NoOriginalDst,
    /// Its listener already held as many connections as its limit allows
    /// (`limit`; see [`LimitLayer`](crate::LimitLayer)).
    Limit,
    /// The process already held as many proxied connections as its
    /// descriptor limit leaves room for (`descriptors`; see
    /// [`LimitLayer::descriptor_budget`](crate::LimitLayer::descriptor_budget)).
    Descriptors,
}

/// Labels of `l7inspect_timeouts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// Which bound expired.
    pub reason: Timeout,
}

/// Labels of `l7inspect_http2_connections_closed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Http2CloseLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// Why the proxy closed the connection.
    pub reason: Http2Close,
}

/// Why the proxy closed a client's HTTP/2 connection on its own account
/// (with a GOAWAY naming an error): the `reason` label of
/// `l7inspect_http2_connections_closed_total`. Timeouts are counted in
/// `l7inspect_timeouts_total` instead.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Http2Close {
    /// More request header blocks rejected (too large, malformed, refused)
    /// than `Http2Config::max_rejected_header_blocks` allows
    /// (`rejected_header_blocks`): an HPACK bomb, or a client that ignores
    /// SETTINGS.
    RejectedHeaderBlocks,
    /// The `h2` library's own flood guards (GOAWAY ENHANCE_YOUR_CALM):
    /// too many resets (rapid reset), CONTINUATION frames, or a header list
    /// four times over the limit (`enhance_your_calm`).
    EnhanceYourCalm,
    /// Any other connection error the client caused: a PROTOCOL_ERROR,
    /// COMPRESSION_ERROR, FLOW_CONTROL_ERROR... GOAWAY (`protocol_error`).
    ProtocolError,
}

/// The bounds the proxy puts on a peer's time: the `reason` label of
/// `l7inspect_timeouts_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Timeout {
    /// A client sent part of an HTTP/1 request head, or an HTTP/2 header
    /// block, and did not finish it in time (`request_head`).
    RequestHead,
    /// An HTTP connection stayed idle between requests (`idle`).
    Idle,
    /// A client sent nothing, and its server nothing either, before
    /// detection could start (`client_silent`).
    ClientSilent,
    /// The upstream connect did not complete (`upstream_connect`).
    UpstreamConnect,
    /// The upstream server did not start its response in time
    /// (`upstream_response`).
    UpstreamResponse,
    /// A TLS client did not finish its handshake in time (`tls_handshake`).
    TlsHandshake,
}

impl Timeout {
    /// Every reason, for registering each series at zero.
    pub const ALL: [Timeout; 6] = [
        Timeout::RequestHead,
        Timeout::Idle,
        Timeout::ClientSilent,
        Timeout::UpstreamConnect,
        Timeout::UpstreamResponse,
        Timeout::TlsHandshake,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::RequestHead => "request_head",
            Timeout::Idle => "idle",
            Timeout::ClientSilent => "client_silent",
            Timeout::UpstreamConnect => "upstream_connect",
            Timeout::UpstreamResponse => "upstream_response",
            Timeout::TlsHandshake => "tls_handshake",
        }
    }
}

impl Refusal {
    /// Every reason, for registering each series at zero.
    pub const ALL: [Refusal; 4] = [
        Refusal::Loop,
        Refusal::NoOriginalDst,
        Refusal::Limit,
        Refusal::Descriptors,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Loop => "loop",
            Refusal::NoOriginalDst => "no_original_dst",
            Refusal::Limit => "limit",
            Refusal::Descriptors => "descriptors",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Refusal {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

// === impl Http2Close ===

impl Http2Close {
    /// Every reason, for registering each at zero.
    pub const ALL: [Http2Close; 3] = [
        Http2Close::RejectedHeaderBlocks,
        Http2Close::EnhanceYourCalm,
        Http2Close::ProtocolError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Http2Close::RejectedHeaderBlocks => "rejected_header_blocks",
            Http2Close::EnhanceYourCalm => "enhance_your_calm",
            Http2Close::ProtocolError => "protocol_error",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Http2Close {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Timeout {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Handles to every metric the proxy records. Cheap to clone (each family is
/// an `Arc`).
///
/// Every metric of this crate is registered here, in one place, so that the
/// README's table can be checked against it; the request-duration
/// histograms are `l7inspect_trace::RequestMetrics`, made by the layer that
/// makes the request's span. Names follow `l7inspect_<noun>_<unit>`;
/// counters get their `_total` suffix from the OpenMetrics encoder.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// `l7inspect_tcp_open_connections`: connections open now, by their
    /// detected protocol, or `detecting` while detection runs.
    pub open_connections: Family<ConnLabels, Gauge>,
    /// `l7inspect_tcp_connections_total`: connections handled, counted when detection ends.
    pub connections: Family<ConnLabels, Counter>,
    /// `l7inspect_tcp_read_bytes_total`: bytes read from clients.
    pub read_bytes: Family<ConnLabels, Counter>,
    /// `l7inspect_tcp_write_bytes_total`: bytes written to clients.
    pub write_bytes: Family<ConnLabels, Counter>,
    /// `l7inspect_protocol_detections_total`: detection outcomes.
    pub detections: Family<ConnLabels, Counter>,
    /// `l7inspect_upstream_connect_errors_total`: failed upstream connects.
    pub connect_errors: Family<ConnectErrorLabels, Counter>,
    /// `l7inspect_connections_refused_total`: connections refused before
    /// any upstream connect, by direction and [`Refusal`].
    pub refused: Family<RefusedLabels, Counter>,
    /// `l7inspect_tcp_idle_timeouts_total`: passthrough connections closed as idle.
    pub idle_timeouts: Family<DirectionLabels, Counter>,
    /// `l7inspect_timeouts_total`: connections and requests cut by a
    /// timeout, by direction and [`Timeout`].
    pub timeouts: Family<TimeoutLabels, Counter>,
    /// `l7inspect_connection_panics_total`: connections ended because
    /// their task panicked ([`CatchPanicLayer`](crate::CatchPanicLayer)).
    pub connection_panics: Family<DirectionLabels, Counter>,
    /// `l7inspect_http2_connections_closed_total`: client HTTP/2
    /// connections the proxy closed with an error GOAWAY, by direction and
    /// [`Http2Close`].
    pub http2_closed: Family<Http2CloseLabels, Counter>,
}

/// Collects the standard `process_*` metrics from `/proc` on each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    _private: (),
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric, and the process collector, in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "l7inspect_tcp_open_connections",
            "TCP connections open now, by direction and detected protocol (detecting: not yet detected)",
            self.open_connections.clone(),
        );
        registry.register(
            "l7inspect_tcp_connections",
            "TCP connections handled, by direction and detected protocol",
            self.connections.clone(),
        );
        registry.register_with_unit(
            "l7inspect_tcp_read",
            "Bytes read from clients (including the bytes read for detection)",
            Unit::Bytes,
            self.read_bytes.clone(),
        );
        registry.register_with_unit(
            "l7inspect_tcp_write",
            "Bytes written to clients",
            Unit::Bytes,
            self.write_bytes.clone(),
        );
        registry.register(
            "l7inspect_protocol_detections",
            "Protocol detection outcomes, by direction and protocol",
            self.detections.clone(),
        );
        registry.register(
            "l7inspect_upstream_connect_errors",
            "Failed connects to a connection's target, by direction and error",
            self.connect_errors.clone(),
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            for reason in Refusal::ALL {
                let _ = self
                    .refused
                    .get_or_create(&RefusedLabels { direction, reason });
            }
        }
        registry.register(
            "l7inspect_connections_refused",
            "Connections refused before any upstream connect (loop, no original destination, \
             listener limit, descriptor budget)",
            self.refused.clone(),
        );
        registry.register(
            "l7inspect_tcp_idle_timeouts",
            "Passthrough connections closed by the idle timeout",
            self.idle_timeouts.clone(),
        );
        // Every reason from zero, so that a rate or an alert has a series
        // before the first timeout.
        for direction in [Direction::Inbound, Direction::Outbound] {
            for reason in Timeout::ALL {
                let _ = self
                    .timeouts
                    .get_or_create(&TimeoutLabels { direction, reason });
            }
        }
        registry.register(
            "l7inspect_timeouts",
            "Connections and requests cut by a timeout, by direction and reason",
            self.timeouts.clone(),
        );
        // Both directions from zero: an alert on any increase needs a series
        // before the first panic.
        for direction in [Direction::Inbound, Direction::Outbound] {
            let _ = self
                .connection_panics
                .get_or_create(&DirectionLabels { direction });
        }
        registry.register(
            "l7inspect_connection_panics",
            "Connections ended because their task panicked (a bug; the process goes on)",
            self.connection_panics.clone(),
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            for reason in Http2Close::ALL {
                let _ = self
                    .http2_closed
                    .get_or_create(&Http2CloseLabels { direction, reason });
            }
        }
        registry.register(
            "l7inspect_http2_connections_closed",
            "Client HTTP/2 connections closed with an error GOAWAY (flood, HPACK bomb, protocol error), by direction and reason",
            self.http2_closed.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector::new()));
    }

    /// Counts one connection refused for `reason`.
    pub fn connection_refused(&self, direction: Direction, reason: Refusal) {
        self.refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }

    /// Counts one client HTTP/2 connection closed for `reason`.
    pub fn http2_closed(&self, direction: Direction, reason: Http2Close) {
        self.http2_closed
            .get_or_create(&Http2CloseLabels { direction, reason })
            .inc();
    }
    /// Counts one expiry of `reason`.
    pub fn timed_out(&self, direction: Direction, reason: Timeout) {
        self.timeouts
            .get_or_create(&TimeoutLabels { direction, reason })
            .inc();
    }

    /// Counts one connection of `direction` ended by a panic.
    pub fn connection_panicked(&self, direction: Direction) {
        self.connection_panics
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }
}

// === impl ProcessCollector ===

impl ProcessCollector {
    /// A collector for this process.
    pub fn new() -> Self {
        Self { _private: () }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// What `/proc/self/stat` says (proc(5)), in base units.
struct Stat {
    cpu_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    threads: u64,
    start_seconds: Option<f64>,
}

fn read_stat() -> Option<Stat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); field N is f[N - 3].
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_seconds: boot
            .zip(field(22))
            .map(|(b, s)| b as f64 + s as f64 / ticks),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn gauge(
            e: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            unit: Option<&Unit>,
            v: f64,
        ) -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
        }
        if let Some(stat) = read_stat() {
            let c = ConstCounter::new(stat.cpu_seconds);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                stat.resident_bytes as f64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(&Unit::Bytes),
                stat.virtual_bytes as f64,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                None,
                stat.threads as f64,
            )?;
            if let Some(start) = stat.start_seconds {
                gauge(
                    &mut encoder,
                    "process_start_time",
                    "Start time of the process since unix epoch in seconds",
                    Some(&Unit::Seconds),
                    start,
                )?;
            }
        }
        if let Some(fds) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                None,
                fds as f64,
            )?;
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = limit.current {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now_seconds() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn process_metrics_have_standard_names_and_sane_values() {
        let mut registry = Registry::default();
        Metrics::default().register(&mut registry);
        let text = encode(&registry);
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e5);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let start = value("process_start_time_seconds");
        assert!(start > 1e9 && start <= now_seconds() + 1.0, "{start}");
    }

    #[test]
    fn connection_metrics_encode_with_labels() {
        let mut registry = Registry::default();
        let m = Metrics::default();
        m.register(&mut registry);
        let labels = ConnLabels {
            direction: Direction::Inbound,
            protocol: "redis",
        };
        m.detections.get_or_create(&labels).inc();
        m.read_bytes.get_or_create(&labels).inc_by(42);
        let text = encode(&registry);
        assert!(
            text.contains(
                "l7inspect_protocol_detections_total{direction=\"inbound\",protocol=\"redis\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "l7inspect_tcp_read_bytes_total{direction=\"inbound\",protocol=\"redis\"} 42\n"
            ),
            "{text}"
        );
    }
}
