//! [`SpanRecord`]: the one span model of everything the proxy observes.
//!
//! A finished span is plain data: ids, kind, name, times and status, the
//! well-known attributes as typed fields grouped by what they describe
//! ([`NetworkFields`] per connection, [`HttpFields`], [`RpcFields`],
//! [`TlsFields`], [`DbFields`]), and a short list of [`KeyValue`]s for anything else. The
//! exporters (OTLP, Zipkin) and the ring of recent spans read it directly,
//! through [`SpanRecord::for_each_attribute`], which yields the typed fields
//! under their semantic-convention keys.
//!
//! # Why our own type
//! The OpenTelemetry SDK's `SpanData` keeps every attribute as a
//! `KeyValue` in a vector built before the sampling decision, goes through a
//! tracer, a sampler trait object and a span processor per span, and cost
//! about 3.7k instructions per request span (docs/benchmarks.md). A request
//! span here is one allocation (the `Arc` the exporters and the ring share),
//! made only when the request is sampled; the fields are written once and
//! encoded without an intermediate vector.
//!
//! # Span sources
//! Any source builds a `SpanRecord` and hands it to a
//! [`SpanSink`](crate::export::SpanSink): the HTTP observation layer
//! ([`crate::Observe`]) makes one per request; a span per connection (TLS
//! passthrough: SNI, bytes each way) sets [`SpanRecord::tls`] and puts the
//! byte counts in [`SpanRecord::attributes`]; a database command
//! ([`crate::db`]) sets [`SpanRecord::db`].
//!
//! # Example
//! ```
//! use std::time::{Duration, SystemTime};
//! use l7inspect_trace::span::{SpanRecord, TlsFields};
//! use opentelemetry::{KeyValue, trace::{SpanKind, TraceId, SpanId}};
//!
//! let start = SystemTime::now();
//! let mut span = SpanRecord::new(TraceId::from(7u128), SpanId::from(9u64), SpanKind::Client, "example.com", start);
//! span.tls = Some(std::sync::Arc::new(TlsFields { server_name: Some("example.com".into()), ..TlsFields::default() }));
//! span.attributes.push(KeyValue::new("l7inspect.bytes_sent", 517_i64));
//! span.end = start + Duration::from_millis(40);
//! let mut keys = Vec::new();
//! span.for_each_attribute(|key, _| keys.push(key.to_owned()));
//! assert_eq!(keys, ["tls.client.server_name", "l7inspect.bytes_sent"]);
//! ```

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as semconv;

/// One finished (or finishing) span. See the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// The trace it belongs to.
    pub trace_id: TraceId,
    /// Its own id.
    pub span_id: SpanId,
    /// The W3C trace flags it was sampled with.
    pub trace_flags: TraceFlags,
    /// The W3C `tracestate` it carries on.
    pub trace_state: TraceState,
    /// The parent's span id; [`SpanId::INVALID`] for a root.
    pub parent_span_id: SpanId,
    /// Whether the parent came from another process (a propagated context).
    pub parent_is_remote: bool,
    /// `Server` for inbound requests, `Client` for outbound ones.
    pub kind: SpanKind,
    /// `{method}`, `{rpc.service}/{rpc.method}`, an SNI, a database operation.
    pub name: Cow<'static, str>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended (equal to `start` until it has).
    pub end: SystemTime,
    /// Unset, or Error (the semantic conventions' rules per kind).
    pub status: Status,
    /// `error.type`: the status code or the failure's class, when it failed.
    pub error_type: Option<Cow<'static, str>>,
    /// The connection's ends, shared by every span of that connection.
    pub network: Option<Arc<NetworkFields>>,
    /// The HTTP request and response.
    pub http: Option<HttpFields>,
    /// The RPC (gRPC) call.
    pub rpc: Option<RpcFields>,
    /// The TLS session (shared by every span of a connection).
    pub tls: Option<Arc<TlsFields>>,
    /// The database command.
    pub db: Option<Box<DbFields>>,
    /// Links to other spans (an ambiguous call's candidate parents).
    pub links: Vec<SpanLink>,
    /// Everything else, in order.
    pub attributes: Vec<KeyValue>,
}

/// The ends of the connection a span was observed on, formatted once per
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkFields {
    /// The other end of this hop: the client for a SERVER span, the server
    /// for a CLIENT span (`network.peer.address`, `network.peer.port`).
    pub peer: SocketAddr,
    /// `peer`'s address as text.
    pub peer_address: Arc<str>,
    /// `client.address` (SERVER spans).
    pub client_address: Option<Arc<str>>,
}

/// HTTP attributes (semantic conventions for HTTP spans).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpFields {
    /// `http.request.method`: the method, or `_OTHER`.
    pub method: &'static str,
    /// `http.request.method_original`, for a method outside the known ones.
    pub method_original: Option<String>,
    /// `url.path`.
    pub path: String,
    /// `url.scheme`.
    pub scheme: Cow<'static, str>,
    /// `url.query`, when recording queries is on.
    pub query: Option<String>,
    /// `server.address`: the host the client named, or the target address.
    pub server_address: Arc<str>,
    /// `server.port`.
    pub server_port: u16,
    /// `network.protocol.version`: `1.0`, `1.1`, `2`.
    pub protocol_version: &'static str,
    /// `user_agent.original` (shared: a connection's requests usually
    /// carry the same one).
    pub user_agent: Option<Arc<str>>,
    /// `http.request.body.size`, from `Content-Length`.
    pub request_body_size: Option<u64>,
    /// `http.response.status_code`.
    pub response_status_code: Option<u16>,
    /// `http.response.body.size`: the bytes of body the response carried.
    pub response_body_size: Option<u64>,
}

/// RPC attributes (semantic conventions for gRPC spans).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RpcFields {
    /// `rpc.system`: `grpc`.
    pub system: &'static str,
    /// `rpc.service`: `package.Service`.
    pub service: String,
    /// `rpc.method`.
    pub method: String,
    /// `rpc.grpc.status_code`, once known.
    pub grpc_status_code: Option<i64>,
}

/// TLS attributes (semantic conventions for TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFields {
    /// `tls.client.server_name`: the SNI.
    pub server_name: Option<String>,
    /// `tls.protocol.version`: `1.2`, `1.3`.
    pub protocol_version: Option<Cow<'static, str>>,
    /// `tls.cipher`.
    pub cipher: Option<Cow<'static, str>>,
    /// `tls.next_protocol`: the ALPN protocol.
    pub next_protocol: Option<String>,
    /// `tls.client.subject`: a verified client certificate's subject.
    pub client_subject: Option<String>,
}

/// A link from a span to another (OTLP `Span.Link`): an inbound request
/// that was in flight when an ambiguous call started
/// ([`crate::infer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLink {
    /// The linked span's trace.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
    /// Its W3C trace flags.
    pub flags: TraceFlags,
}

/// Database attributes (semantic conventions for database spans).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbFields {
    /// `db.system.name`: `redis`, `postgresql`, `mysql`.
    pub system: &'static str,
    /// `db.operation.name`: `GET`, `SELECT`.
    pub operation: &'static str,
    /// `db.namespace`: the Redis database index, the PostgreSQL database,
    /// the MySQL schema (shared by a connection's commands).
    pub namespace: Option<Arc<str>>,
    /// `db.collection.name`: the one table a statement names.
    pub collection: Option<String>,
    /// `db.query.text`, sanitized.
    pub query_text: Option<String>,
    /// `db.response.status_code`: an error prefix, a SQLSTATE, an error number.
    pub status_code: Option<Cow<'static, str>>,
    /// `db.response.returned_rows`.
    pub returned_rows: Option<u64>,
    /// `server.address`: the database's address.
    pub server_address: Arc<str>,
    /// `server.port`.
    pub server_port: u16,
}

/// An attribute value as the encoders see it: borrowed, never copied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// Any other OpenTelemetry value (from [`SpanRecord::attributes`]).
    Other(&'a Value),
}

// === impl SpanRecord ===

impl SpanRecord {
    /// A sampled span with no parent, no attributes and an unset status,
    /// ending when it starts until [`end`](Self::end) is set.
    pub fn new(
        trace_id: TraceId,
        span_id: SpanId,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
        start: SystemTime,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            trace_flags: TraceFlags::SAMPLED,
            trace_state: TraceState::NONE,
            parent_span_id: SpanId::INVALID,
            parent_is_remote: false,
            kind,
            name: name.into(),
            start,
            end: start,
            status: Status::Unset,
            error_type: None,
            network: None,
            http: None,
            rpc: None,
            tls: None,
            db: None,
            links: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// How long it lasted (zero if the clock went backwards).
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }

    /// Marks it failed, with `error.type` = `error_type`.
    pub fn set_error(&mut self, error_type: impl Into<Cow<'static, str>>) {
        self.error_type = Some(error_type.into());
        self.status = Status::error("");
    }

    /// Calls `f` with every attribute, typed fields first under their
    /// semantic-convention keys (connection, request, RPC, response, TLS),
    /// then [`attributes`](Self::attributes) in order.
    #[allow(deprecated)] // rpc.system, rpc.service, rpc.grpc.status_code: what today's backends read.
    pub fn for_each_attribute(&self, mut f: impl FnMut(&str, AttrValue<'_>)) {
        use AttrValue::{Int, Str};
        if let Some(n) = &self.network {
            f(semconv::NETWORK_PEER_ADDRESS, Str(&n.peer_address));
            f(semconv::NETWORK_PEER_PORT, Int(n.peer.port().into()));
            if let Some(client) = &n.client_address {
                f(semconv::CLIENT_ADDRESS, Str(client));
            }
        }
        if let Some(h) = &self.http {
            f(semconv::HTTP_REQUEST_METHOD, Str(h.method));
            if let Some(m) = &h.method_original {
                f(semconv::HTTP_REQUEST_METHOD_ORIGINAL, Str(m));
            }
            f(semconv::URL_PATH, Str(&h.path));
            f(semconv::URL_SCHEME, Str(&h.scheme));
            if let Some(q) = &h.query {
                f(semconv::URL_QUERY, Str(q));
            }
            f(semconv::SERVER_ADDRESS, Str(&h.server_address));
            f(semconv::SERVER_PORT, Int(h.server_port.into()));
            f(semconv::NETWORK_PROTOCOL_VERSION, Str(h.protocol_version));
            if let Some(ua) = &h.user_agent {
                f(semconv::USER_AGENT_ORIGINAL, Str(ua));
            }
            if let Some(n) = h.request_body_size {
                f(semconv::HTTP_REQUEST_BODY_SIZE, Int(saturating_i64(n)));
            }
        }
        if let Some(r) = &self.rpc {
            f(semconv::RPC_SYSTEM, Str(r.system));
            f(semconv::RPC_SERVICE, Str(&r.service));
            f(semconv::RPC_METHOD, Str(&r.method));
        }
        if let Some(status) = self.http.as_ref().and_then(|h| h.response_status_code) {
            f(semconv::HTTP_RESPONSE_STATUS_CODE, Int(status.into()));
        }
        if let Some(code) = self.rpc.as_ref().and_then(|r| r.grpc_status_code) {
            f(semconv::RPC_GRPC_STATUS_CODE, Int(code));
        }
        if let Some(d) = &self.db {
            f(semconv::DB_SYSTEM_NAME, Str(d.system));
            f(semconv::DB_OPERATION_NAME, Str(d.operation));
            if let Some(ns) = &d.namespace {
                f(semconv::DB_NAMESPACE, Str(ns));
            }
            if let Some(c) = &d.collection {
                f(semconv::DB_COLLECTION_NAME, Str(c));
            }
            if let Some(q) = &d.query_text {
                f(semconv::DB_QUERY_TEXT, Str(q));
            }
            f(semconv::SERVER_ADDRESS, Str(&d.server_address));
            f(semconv::SERVER_PORT, Int(d.server_port.into()));
            if let Some(code) = &d.status_code {
                f(semconv::DB_RESPONSE_STATUS_CODE, Str(code));
            }
            if let Some(n) = d.returned_rows {
                f(semconv::DB_RESPONSE_RETURNED_ROWS, Int(saturating_i64(n)));
            }
        }
        if let Some(e) = &self.error_type {
            f(semconv::ERROR_TYPE, Str(e));
        }
        if let Some(n) = self.http.as_ref().and_then(|h| h.response_body_size) {
            f(semconv::HTTP_RESPONSE_BODY_SIZE, Int(saturating_i64(n)));
        }
        if let Some(t) = &self.tls {
            let strs = [
                (semconv::TLS_CLIENT_SERVER_NAME, t.server_name.as_deref()),
                (semconv::TLS_PROTOCOL_VERSION, t.protocol_version.as_deref()),
                (semconv::TLS_CIPHER, t.cipher.as_deref()),
                (semconv::TLS_NEXT_PROTOCOL, t.next_protocol.as_deref()),
                (semconv::TLS_CLIENT_SUBJECT, t.client_subject.as_deref()),
            ];
            for (key, value) in strs {
                if let Some(v) = value {
                    f(key, Str(v));
                }
            }
        }
        for kv in &self.attributes {
            f(kv.key.as_str(), AttrValue::Other(&kv.value));
        }
    }

    /// The value of attribute `key` as an OpenTelemetry [`Value`] (for
    /// tests and views; encoders use [`for_each_attribute`](Self::for_each_attribute)).
    pub fn attribute(&self, key: &str) -> Option<Value> {
        let mut found = None;
        self.for_each_attribute(|k, v| {
            if found.is_none() && k == key {
                found = Some(v.to_value());
            }
        });
        found
    }
}

impl SpanRecord {
    /// The same span as the OpenTelemetry SDK's `SpanData` (attributes in
    /// [`for_each_attribute`](Self::for_each_attribute) order, the
    /// `l7inspect` instrumentation scope), for code that speaks the SDK's
    /// exporter interface. Copies every string: not for the hot path.
    pub fn to_sdk(&self) -> opentelemetry_sdk::trace::SpanData {
        use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
        let mut attributes = Vec::new();
        self.for_each_attribute(|k, v| attributes.push(KeyValue::new(k.to_owned(), v.to_value())));
        SpanData {
            span_context: opentelemetry::trace::SpanContext::new(
                self.trace_id,
                self.span_id,
                self.trace_flags,
                false,
                self.trace_state.clone(),
            ),
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind.clone(),
            name: self.name.clone(),
            start_time: self.start,
            end_time: self.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: {
                let mut links = SpanLinks::default();
                links.links = self
                    .links
                    .iter()
                    .map(|l| {
                        opentelemetry::trace::Link::with_context(
                            opentelemetry::trace::SpanContext::new(
                                l.trace_id,
                                l.span_id,
                                l.flags,
                                false,
                                TraceState::NONE,
                            ),
                        )
                    })
                    .collect();
                links
            },
            status: self.status.clone(),
            instrumentation_scope: opentelemetry::InstrumentationScope::builder(SCOPE_NAME)
                .with_version(SCOPE_VERSION)
                .build(),
        }
    }
}

/// The instrumentation scope of every span: this crate.
pub(crate) const SCOPE_NAME: &str = "l7inspect";
/// The scope's version: this crate's.
pub(crate) const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// === impl NetworkFields ===

impl NetworkFields {
    /// The fields of a connection whose other end is `peer`, with
    /// `client.address` when the span is a SERVER span (`client`).
    pub fn new(peer: SocketAddr, client: Option<IpAddr>) -> Self {
        let peer_address: Arc<str> = peer.ip().to_string().into();
        let client_address = client.map(|ip| {
            if ip == peer.ip() {
                // A SERVER span's peer is its client: share the string.
                peer_address.clone()
            } else {
                ip.to_string().into()
            }
        });
        Self {
            peer,
            peer_address,
            client_address,
        }
    }
}

// === impl AttrValue ===

impl AttrValue<'_> {
    /// As an owned OpenTelemetry value.
    pub fn to_value(self) -> Value {
        match self {
            Self::Str(s) => Value::from(s.to_owned()),
            Self::Int(i) => Value::I64(i),
            Self::Other(v) => v.clone(),
        }
    }
}
