//! The span of a TLS connection passed through: [`PassthroughSpans`] and
//! the per-connection [`Watch`].

use crate::metrics::TlsMetrics;
use l7inspect_core::{ConnMeta, Direction};
use l7inspect_detect::{ClientHello, Parsed, parse_server_hello, tls_version_name};
use l7inspect_trace::{
    export::SamplerConfig,
    export::SpanSink,
    sampling::{Sampler, new_span_id, new_trace_id},
    span::{NetworkFields, SpanRecord, TlsFields},
};
use opentelemetry::{
    Array, KeyValue, StringValue, Value,
    trace::{SpanKind, TraceId},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use std::{
    borrow::Cow,
    error::Error,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

/// `l7inspect.tls.client.versions`: the TLS versions the ClientHello
/// offered (`1.2`, `1.3`).
pub const CLIENT_VERSIONS: &str = "l7inspect.tls.client.versions";
/// `l7inspect.tls.client.alpn`: the ALPN protocols the ClientHello offered.
pub const CLIENT_ALPN: &str = "l7inspect.tls.client.alpn";
/// `l7inspect.tls.upstream_error`: why an intercepted connection's
/// destination was refused (its certificate did not verify, say).
pub const UPSTREAM_ERROR: &str = "l7inspect.tls.upstream_error";
/// `l7inspect.bytes.to_server`: bytes from the client to the server.
pub const BYTES_TO_SERVER: &str = "l7inspect.bytes.to_server";
/// `l7inspect.bytes.to_client`: bytes from the server to the client.
pub const BYTES_TO_CLIENT: &str = "l7inspect.bytes.to_client";

/// The most bytes of the server's first flight kept to find its
/// ServerHello: one full record and its header.
const MAX_SERVER_HELLO: usize = 16 * 1024 + 5;

/// Makes one span per TLS connection that passes through, from what the
/// connection shows in clear: the ClientHello (SNI, offered versions and
/// ALPN), the ServerHello (negotiated version and cipher, and the ALPN up
/// to TLS 1.2), bytes each way and how long it lasted. Cheap to clone.
///
/// A span is CLIENT on outbound connections and SERVER on inbound ones,
/// named after the SNI (the destination address without one), and a root:
/// no trace context is visible inside TLS. Whether it is sampled is
/// decided when the connection starts, by `sampler` as for a request
/// without a parent; an unsampled connection costs nothing per byte.
#[derive(Clone, Debug)]
pub struct PassthroughSpans {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sink: SpanSink,
    sampler: Sampler,
}

/// What one connection's span is made of, gathered as its bytes pass.
///
/// The span is recorded once both the client stream (whose drop calls
/// [`Watch::stream_closed`]) and the future of the service relaying the
/// connection (its [`SpanEnd`]) are done, by whichever ends last: the
/// future's error is the only news of a failure on the upstream side (a
/// reset, a refused connect), which the client stream never sees, and a
/// stream that outlives the future (handed to a task of its own) still
/// gets its span.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    trace_id: TraceId,
    meta: ConnMeta,
    hello: Option<ClientHello>,
    start: SystemTime,
    to_server: u64,
    to_client: u64,
    server_hello: ServerHelloState,
    error: Option<&'static str>,
    /// Why it failed, when there is more to say than `error.type`.
    detail: Option<String>,
    /// Shared with the [`SpanEnd`]; taken when the stream closes (so that
    /// a parked watch does not hold the cell it is parked in).
    ending: Option<Arc<Ending>>,
}

/// The outcome of a watched connection's service, as its future sees it:
/// [`ResponseFuture`](crate::ResponseFuture) reports how the future ended
/// (dropped unfinished: as if it succeeded). One per watched connection,
/// made with its [`Watch`]; not constructible outside this crate.
pub struct SpanEnd {
    ending: Option<Arc<Ending>>,
}

/// Where the two ends of a watched connection meet: one allocation per
/// watched connection, one lock at each end, none per read or write.
pub(crate) struct Ending {
    state: Mutex<EndState>,
}

enum EndState {
    /// Both the stream and the future are running.
    Open,
    /// The stream is closed; its watch waits for the future's outcome.
    Parked(Box<Watch>),
    /// The future ended, failed with this error type or not; the stream's
    /// close records the span.
    Ended(Option<&'static str>),
    /// The span is recorded.
    Recorded,
}

enum ServerHelloState {
    /// The server's bytes so far.
    Reading(Vec<u8>),
    /// Found, or given up (`None`).
    Done(Option<l7inspect_detect::ServerHello>),
}

impl PassthroughSpans {
    /// Spans into `sink`, sampled by `sampler`.
    pub fn new(sink: SpanSink, sampler: SamplerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                sink,
                sampler: Sampler::new(sampler),
            }),
        }
    }

    /// The watch of a new connection and the end its service's future
    /// reports to, when its span is sampled.
    pub(crate) fn watch(
        &self,
        meta: ConnMeta,
        hello: Option<ClientHello>,
    ) -> Option<(Box<Watch>, SpanEnd)> {
        // Sampled or not, as a request with no parent would be; the trace
        // id is drawn now so the decision is the one the span would carry.
        let trace_id = new_trace_id();
        if !self.shared.sampler.should_sample(None, None, trace_id) {
            return None;
        }
        let ending = Arc::new(Ending {
            state: Mutex::new(EndState::Open),
        });
        let end = SpanEnd {
            ending: Some(ending.clone()),
        };
        let watch = Box::new(Watch {
            shared: self.shared.clone(),
            trace_id,
            meta,
            hello,
            start: SystemTime::now(),
            to_server: 0,
            to_client: 0,
            server_hello: ServerHelloState::Reading(Vec::new()),
            error: None,
            detail: None,
            ending: Some(ending),
        });
        Some((watch, end))
    }
}

impl PassthroughSpans {
    /// Records the span of an intercepted connection refused because the
    /// destination's TLS failed: an error, `error.type`
    /// `tls_upstream`, and why in [`UPSTREAM_ERROR`].
    pub(crate) fn refused(&self, meta: ConnMeta, hello: ClientHello, why: &str) {
        if let Some((mut watch, _)) = self.watch(meta, Some(hello)) {
            // Nothing to wait for: the connection ends here.
            watch.ending = None;
            watch.error = Some("tls_upstream");
            watch.detail = Some(why.to_owned());
            watch.finish();
        }
    }
}

/// Counts the connection in `metrics`, by SNI.
pub(crate) fn count(metrics: &TlsMetrics, meta: &ConnMeta, hello: Option<&ClientHello>) {
    metrics.connection(meta.direction, hello.and_then(|h| h.server_name.as_deref()));
}

impl Watch {
    pub(crate) fn sent_to_server(&mut self, n: usize) {
        self.to_server += n as u64;
    }

    pub(crate) fn sent_to_client(&mut self, bytes: &[u8]) {
        self.to_client += bytes.len() as u64;
        if let ServerHelloState::Reading(buf) = &mut self.server_hello {
            buf.extend_from_slice(&bytes[..bytes.len().min(MAX_SERVER_HELLO - buf.len())]);
            self.server_hello = match parse_server_hello(buf) {
                Parsed::Complete(hello) => ServerHelloState::Done(Some(hello)),
                Parsed::NeedMore if buf.len() < MAX_SERVER_HELLO => return,
                Parsed::NeedMore | Parsed::Invalid => ServerHelloState::Done(None),
            };
        }
    }

    pub(crate) fn failed(&mut self, e: &io::Error) {
        self.error.get_or_insert(io_error_type(e));
    }

    /// The client stream is closed: records the span if the service's
    /// future has ended, else leaves it for the future's [`SpanEnd`].
    pub(crate) fn stream_closed(mut self: Box<Self>) {
        let Some(ending) = self.ending.take() else {
            return self.finish();
        };
        let mut state = ending.lock();
        match std::mem::replace(&mut *state, EndState::Recorded) {
            EndState::Open => *state = EndState::Parked(self),
            EndState::Ended(error) => {
                drop(state);
                self.finish_with(error);
            }
            // A stream closes once: only the future's end gets here.
            other @ (EndState::Parked(_) | EndState::Recorded) => {
                *state = other;
                drop(state);
                self.finish();
            }
        }
    }

    fn finish_with(mut self: Box<Self>, error: Option<&'static str>) {
        // The stream's own error came first, if any.
        if let Some(e) = error {
            self.error.get_or_insert(e);
        }
        self.finish();
    }

    /// Records the span: the connection is over.
    fn finish(self: Box<Self>) {
        let Watch {
            shared,
            trace_id,
            meta,
            hello,
            start,
            to_server,
            to_client,
            server_hello,
            error,
            detail,
            ending: _,
        } = *self;
        let server_name = hello.as_ref().and_then(|h| h.server_name.clone());
        let (kind, network) = match meta.direction {
            Direction::Inbound => (
                SpanKind::Server,
                NetworkFields::new(meta.client, Some(meta.client.ip())),
            ),
            Direction::Outbound => (SpanKind::Client, NetworkFields::new(meta.target, None)),
        };
        let server_address: String = server_name
            .clone()
            .unwrap_or_else(|| meta.target.ip().to_string());
        let name = match &server_name {
            Some(sni) => sni.clone(),
            None => meta.target.to_string(),
        };
        let mut span = SpanRecord::new(trace_id, new_span_id(), kind, name, start);
        span.end = SystemTime::now();
        span.network = Some(Arc::new(network));
        let server = match server_hello {
            ServerHelloState::Done(Some(h)) => Some(h),
            _ => None,
        };
        span.tls = Some(Arc::new(TlsFields {
            server_name,
            protocol_version: server
                .as_ref()
                .and_then(|h| tls_version_name(h.version))
                .map(Cow::Borrowed),
            cipher: server.as_ref().map(|h| cipher_name(h.cipher_suite)),
            next_protocol: server
                .as_ref()
                .and_then(|h| h.alpn.as_deref())
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_subject: None,
        }));
        let attrs = &mut span.attributes;
        attrs.push(KeyValue::new(semconv::SERVER_ADDRESS, server_address));
        attrs.push(KeyValue::new(
            semconv::SERVER_PORT,
            i64::from(meta.target.port()),
        ));
        if let Some(h) = &hello {
            let versions: Vec<StringValue> = h
                .versions
                .iter()
                .filter_map(|v| tls_version_name(*v))
                .map(StringValue::from)
                .collect();
            if !versions.is_empty() {
                attrs.push(KeyValue::new(
                    CLIENT_VERSIONS,
                    Value::Array(Array::String(versions)),
                ));
            }
            if !h.alpn.is_empty() {
                let alpn = h
                    .alpn
                    .iter()
                    .map(|p| StringValue::from(String::from_utf8_lossy(p).into_owned()))
                    .collect();
                attrs.push(KeyValue::new(
                    CLIENT_ALPN,
                    Value::Array(Array::String(alpn)),
                ));
            }
        }
        attrs.push(KeyValue::new(BYTES_TO_SERVER, saturating(to_server)));
        attrs.push(KeyValue::new(BYTES_TO_CLIENT, saturating(to_client)));
        if let Some(e) = error {
            span.set_error(e);
        }
        if let Some(why) = detail {
            span.attributes.push(KeyValue::new(UPSTREAM_ERROR, why));
        }
        shared.sink.record(span);
    }
}

// === impl SpanEnd ===

impl SpanEnd {
    /// The service's future ended, with `error` if it failed.
    pub(crate) fn ended(&mut self, error: Option<&(dyn Error + 'static)>) {
        if let Some(ending) = self.ending.take() {
            ending.future_ended(error.map(error_type));
        }
    }
}

impl Drop for SpanEnd {
    fn drop(&mut self) {
        self.ended(None);
    }
}

impl std::fmt::Debug for SpanEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanEnd")
            .field("ended", &self.ending.is_none())
            .finish()
    }
}

// === impl Ending ===

impl Ending {
    fn lock(&self) -> std::sync::MutexGuard<'_, EndState> {
        // The state is valid after any panic: every change is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn future_ended(&self, error: Option<&'static str>) {
        let mut state = self.lock();
        let parked = match std::mem::replace(&mut *state, EndState::Recorded) {
            EndState::Open => {
                *state = EndState::Ended(error);
                None
            }
            EndState::Parked(watch) => Some(watch),
            // A future ends once.
            other @ (EndState::Ended(_) | EndState::Recorded) => {
                *state = other;
                None
            }
        };
        drop(state);
        if let Some(watch) = parked {
            watch.finish_with(error);
        }
    }
}

/// `error.type` of a failed connection: from the first I/O error in the
/// chain (a reset, a broken pipe, a refused connect...), else `other`.
fn error_type(e: &(dyn Error + 'static)) -> &'static str {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_error_type(io);
        }
        next = e.source();
    }
    "other"
}

fn io_error_type(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "connection_reset",
        io::ErrorKind::BrokenPipe => "broken_pipe",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionRefused => "connection_refused",
        _ => "io",
    }
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `tls.cipher`: the IANA name of a cipher suite (`TLS_AES_128_GCM_SHA256`),
/// or its value in hex when rustls does not know it.
pub(crate) fn cipher_name(suite: u16) -> Cow<'static, str> {
    let suite = rustls::CipherSuite::from(suite);
    match suite.as_str() {
        // rustls names the TLS 1.3 suites TLS13_*; IANA, TLS_*.
        Some(name) => match name.strip_prefix("TLS13_") {
            Some(rest) => Cow::Owned(format!("TLS_{rest}")),
            None => Cow::Borrowed(name),
        },
        None => Cow::Owned(format!("0x{:04x}", u16::from(suite))),
    }
}
