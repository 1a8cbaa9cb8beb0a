//! The OTLP protobuf encoder: `ExportTraceServiceRequest` written straight
//! from [`SpanRecord`]s into one reused buffer (see the [module
//! docs](super) for why and how).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, Value};
use opentelemetry_sdk::Resource;

use crate::span::{AttrValue, SCOPE_NAME, SCOPE_VERSION, SpanRecord};

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
/// `SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// Encodes batches of spans as an OTLP `ExportTraceServiceRequest`
/// (protobuf), for one resource, under the instrumentation scope
/// `l7inspect` (this crate's version).
///
/// The resource and the scope are encoded once, when the encoder is built.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use l7inspect_trace::{export::OtlpEncoder, span::SpanRecord};
///
/// let resource = opentelemetry_sdk::Resource::builder_empty().build();
/// let encoder = OtlpEncoder::new(&resource);
/// let mut buf = bytes::BytesMut::new();
/// let spans: Vec<Arc<SpanRecord>> = Vec::new();
/// encoder.encode(&spans, &mut buf);
/// assert!(!buf.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct OtlpEncoder {
    /// `ResourceSpans.resource` (field 1), tag and length included.
    resource_field: Bytes,
    /// `ResourceSpans.schema_url` (field 3), tag and length included;
    /// empty when the resource has no schema URL.
    schema_url_field: Bytes,
    /// `ScopeSpans.scope` (field 1), tag and length included.
    scope_field: Bytes,
}

/// Where a submessage's reserved length varint is.
struct Mark {
    at: usize,
    width: usize,
}

// === impl OtlpEncoder ===

impl OtlpEncoder {
    /// An encoder whose requests carry `resource` (its attributes in
    /// [`Resource::iter`] order, and its schema URL).
    pub fn new(resource: &Resource) -> Self {
        let mut out = BytesMut::new();
        // ResourceSpans.resource is always present, even when empty.
        let m = begin(&mut out, 0x0a, 2);
        for (key, value) in resource.iter() {
            put_kv(&mut out, 0x0a, key.as_str(), AttrValue::Other(value));
        }
        end(&mut out, m);
        let resource_field = out.split().freeze();
        put_str(&mut out, 0x1a, resource.schema_url().unwrap_or_default());
        let schema_url_field = out.split().freeze();
        // ScopeSpans.scope: name, version (no attributes).
        let m = begin(&mut out, 0x0a, 1);
        put_str(&mut out, 0x0a, SCOPE_NAME);
        put_str(&mut out, 0x12, SCOPE_VERSION);
        end(&mut out, m);
        Self {
            resource_field,
            schema_url_field,
            scope_field: out.freeze(),
        }
    }

    /// Appends one `ExportTraceServiceRequest` holding `spans` to `out`.
    pub fn encode(&self, spans: &[Arc<SpanRecord>], out: &mut BytesMut) {
        // ExportTraceServiceRequest.resource_spans
        let rs = begin(out, 0x0a, 3);
        out.extend_from_slice(&self.resource_field);
        if !spans.is_empty() {
            // ResourceSpans.scope_spans: one scope, every span.
            let ss = begin(out, 0x12, 3);
            out.extend_from_slice(&self.scope_field);
            for span in spans {
                // ScopeSpans.spans
                let m = begin(out, 0x12, 2);
                put_span(out, span);
                end(out, m);
            }
            end(out, ss);
        }
        out.extend_from_slice(&self.schema_url_field);
        end(out, rs);
    }
}

/// The fields of one `Span`, in tag order as prost writes them.
fn put_span(out: &mut BytesMut, span: &SpanRecord) {
    put_bytes(out, 0x0a, &span.trace_id.to_bytes());
    put_bytes(out, 0x12, &span.span_id.to_bytes());
    put_trace_state(out, 0x1a, &span.trace_state);
    if span.parent_span_id != SpanId::INVALID {
        put_bytes(out, 0x22, &span.parent_span_id.to_bytes());
    }
    put_str(out, 0x2a, &span.name);
    put_uint(out, 0x30, span_kind(&span.kind));
    put_fixed64(out, 0x39, nanos(span.start));
    put_fixed64(out, 0x41, nanos(span.end));
    span.for_each_attribute(|key, value| put_kv(out, 0x4a, key, value));
    // links (field 13): trace_id (1), span_id (2), flags (6, fixed32).
    for link in &span.links {
        let m = begin(out, 0x6a, 1);
        put_bytes(out, 0x0a, &link.trace_id.to_bytes());
        put_bytes(out, 0x12, &link.span_id.to_bytes());
        out.put_u8(0x35);
        out.put_u32_le(span_flags(false, link.flags.to_u8()));
        end(out, m);
    }
    // status: always present; message (2) before code (3).
    let m = begin(out, 0x7a, 1);
    let code = match &span.status {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { description } => {
            put_str(out, 0x12, description);
            2
        }
    };
    put_uint(out, 0x18, code);
    end(out, m);
    // flags: fixed32, field 16 (key 0x85 0x01), last: prost writes
    // fields in tag order.
    out.put_slice(&[0x85, 0x01]);
    out.put_u32_le(span_flags(span.parent_is_remote, span.trace_flags.to_u8()));
}

/// The flags `opentelemetry-proto` 0.33 sets: the W3C trace flags, and
/// "has is-remote" always, plus "is remote" when the parent was remote.
fn span_flags(remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        flags |= CONTEXT_IS_REMOTE;
    }
    flags
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Nanoseconds since the epoch; 0 before it (as `opentelemetry-proto`).
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The W3C `tracestate` header form (`k=v,k=v`), without building it.
fn put_trace_state(out: &mut BytesMut, key: u8, state: &TraceState) {
    let mut len = 0;
    for (k, v) in state {
        len += k.len() + 1 + v.len() + 1;
    }
    if len == 0 {
        return;
    }
    let len = len - 1;
    out.put_u8(key);
    put_varint(out, len as u64);
    for (i, (k, v)) in state.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(k.as_bytes());
        out.put_u8(b'=');
        out.put_slice(v.as_bytes());
    }
}

/// One `KeyValue` (`key` is the field's tag byte), value always present.
fn put_kv(out: &mut BytesMut, key: u8, k: &str, value: AttrValue<'_>) {
    // The typed fields' kinds, most of every span, when every length fits
    // one byte (nearly always): the tags and lengths are two short stores
    // around the key, then the value. The attributes are most of the
    // encoder's cost per span (docs/benchmarks.md); anything else goes the
    // general way.
    let (any_len, tail) = match value {
        AttrValue::Str(v) => (1 + varint_len(v.len() as u64) + v.len(), v.as_bytes()),
        AttrValue::Int(i) => (1 + varint_len(i as u64), &[][..]),
        AttrValue::Other(_) => return put_kv_other(out, key, k, value),
    };
    let kv_len =
        1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any_len as u64) + any_len;
    if kv_len >= 0x80 || k.is_empty() {
        return put_kv_other(out, key, k, value);
    }
    out.reserve(2 + kv_len);
    out.extend_from_slice(&[key, kv_len as u8, 0x0a, k.len() as u8]);
    out.extend_from_slice(k.as_bytes());
    match value {
        AttrValue::Int(i) => {
            out.extend_from_slice(&[0x12, any_len as u8, 0x18]);
            put_varint(out, i as u64);
        }
        _ => {
            out.extend_from_slice(&[0x12, any_len as u8, 0x0a, tail.len() as u8]);
            out.extend_from_slice(tail);
        }
    }
}

/// [`put_kv`] for any value: OpenTelemetry ones, arrays included, and
/// attributes with a length over one byte.
fn put_kv_other(out: &mut BytesMut, key: u8, k: &str, value: AttrValue<'_>) {
    let key_len = if k.is_empty() {
        0
    } else {
        1 + varint_len(k.len() as u64) + k.len()
    };
    match scalar_len(value) {
        Some(any_len) => {
            out.put_u8(key);
            put_varint(
                out,
                (key_len + 1 + varint_len(any_len as u64) + any_len) as u64,
            );
            put_str(out, 0x0a, k);
            out.put_u8(0x12);
            put_varint(out, any_len as u64);
            put_scalar(out, value);
        }
        None => {
            let m = begin(out, key, 1);
            put_str(out, 0x0a, k);
            let any = begin(out, 0x12, 1);
            if let AttrValue::Other(value) = value {
                put_any_array(out, value);
            }
            end(out, any);
            end(out, m);
        }
    }
}

/// The encoded length of an `AnyValue` holding a scalar, or `None` for an
/// array.
fn scalar_len(value: AttrValue<'_>) -> Option<usize> {
    match value {
        AttrValue::Str(s) => Some(1 + varint_len(s.len() as u64) + s.len()),
        AttrValue::Int(i) => Some(1 + varint_len(i as u64)),
        AttrValue::Other(v) => value_len(v),
    }
}

/// [`scalar_len`] of an OpenTelemetry value.
fn value_len(value: &Value) -> Option<usize> {
    Some(match value {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => 1 + varint_len(s.as_str().len() as u64) + s.as_str().len(),
        Value::Array(_) => return None,
        // A kind this encoder predates: sent as its string form.
        other => {
            let s = other.as_str();
            1 + varint_len(s.len() as u64) + s.len()
        }
    })
}

/// The fields of an `AnyValue` holding a scalar (oneof: always written,
/// even when zero or empty).
fn put_scalar(out: &mut BytesMut, value: AttrValue<'_>) {
    match value {
        AttrValue::Str(s) => put_str_always(out, 0x0a, s),
        AttrValue::Int(i) => {
            out.put_u8(0x18);
            put_varint(out, i as u64);
        }
        AttrValue::Other(v) => put_value(out, v),
    }
}

/// [`put_scalar`] of an OpenTelemetry value.
fn put_value(out: &mut BytesMut, value: &Value) {
    match value {
        Value::Bool(b) => {
            out.put_u8(0x10);
            out.put_u8(u8::from(*b));
        }
        Value::I64(i) => {
            out.put_u8(0x18);
            put_varint(out, *i as u64);
        }
        Value::F64(f) => {
            out.put_u8(0x21);
            out.put_f64_le(*f);
        }
        Value::String(s) => put_str_always(out, 0x0a, s.as_str()),
        Value::Array(_) => {}
        other => put_str_always(out, 0x0a, &other.as_str()),
    }
}

/// The fields of an `AnyValue` holding an array: `array_value` (field 5),
/// an `ArrayValue` of `AnyValue`s.
fn put_any_array(out: &mut BytesMut, value: &Value) {
    let Value::Array(array) = value else {
        return;
    };
    let m = begin(out, 0x2a, 1);
    let mut element = |v: Value| {
        let len = value_len(&v).unwrap_or(0);
        out.put_u8(0x0a);
        put_varint(out, len as u64);
        put_value(out, &v);
    };
    match array {
        Array::Bool(a) => a.iter().for_each(|b| element(Value::Bool(*b))),
        Array::I64(a) => a.iter().for_each(|i| element(Value::I64(*i))),
        Array::F64(a) => a.iter().for_each(|f| element(Value::F64(*f))),
        Array::String(a) => {
            for s in a {
                let s = s.as_str();
                out.put_u8(0x0a);
                put_varint(out, (1 + varint_len(s.len() as u64) + s.len()) as u64);
                put_str_always(out, 0x0a, s);
            }
        }
        // An array kind this encoder predates: left empty.
        _ => {}
    }
    end(out, m);
}

// Wire primitives. `key` is the field's tag byte: (field << 3) | wire type.

#[inline]
pub(super) fn varint_len(v: u64) -> usize {
    // Nearly every length and tag here is under 128: one compare for them,
    // instead of a bit count and a division.
    if v < 0x80 {
        1
    } else {
        // 1 byte per 7 significant bits.
        (64 - v.leading_zeros() as usize).div_ceil(7)
    }
}

pub(super) fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A varint field, left out when 0 (proto3 default).
fn put_uint(out: &mut BytesMut, key: u8, v: u64) {
    if v != 0 {
        out.put_u8(key);
        put_varint(out, v);
    }
}

/// A fixed64 field, left out when 0.
fn put_fixed64(out: &mut BytesMut, key: u8, v: u64) {
    if v != 0 {
        out.put_u8(key);
        out.put_u64_le(v);
    }
}

/// A string field, left out when empty.
fn put_str(out: &mut BytesMut, key: u8, s: &str) {
    put_bytes(out, key, s.as_bytes());
}

/// A string field that is part of a oneof: written even when empty.
fn put_str_always(out: &mut BytesMut, key: u8, s: &str) {
    out.put_u8(key);
    put_varint(out, s.len() as u64);
    out.put_slice(s.as_bytes());
}

/// A bytes field, left out when empty.
fn put_bytes(out: &mut BytesMut, key: u8, b: &[u8]) {
    if !b.is_empty() {
        out.put_u8(key);
        put_varint(out, b.len() as u64);
        out.put_slice(b);
    }
}

/// Starts a length-delimited submessage: its tag, then `width` bytes kept
/// for the length, which [`end`] fills in.
fn begin(out: &mut BytesMut, key: u8, width: usize) -> Mark {
    out.put_u8(key);
    let at = out.len();
    out.put_bytes(0, width);
    Mark { at, width }
}

/// Writes the length of the submessage started at `m` as a minimal varint,
/// moving its body when the length needs more or fewer bytes than kept.
fn end(out: &mut BytesMut, m: Mark) {
    let body = m.at + m.width;
    let len = out.len() - body;
    let need = varint_len(len as u64);
    if need != m.width {
        let old_end = out.len();
        if need > m.width {
            out.put_bytes(0, need - m.width);
        }
        out.copy_within(body..old_end, m.at + need);
        out.truncate(m.at + need + len);
    }
    let mut v = len as u64;
    for b in &mut out[m.at..m.at + need] {
        *b = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    out[m.at + need - 1] &= 0x7f;
}
