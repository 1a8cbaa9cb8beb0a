//! Jaeger (`jaeger`): `uber-trace-id`.
//!
//! The rules on the wire are in the [parent module's docs](super).

use http::header::{HeaderMap, HeaderName};

use super::header::{Single, header_value, single};
use super::hex::{hex, put_hex, put_trace_id};
use super::{Ids, Parsed};

// A static rather than a const: a `HeaderName` holds `Bytes`, which clippy
// rightly flags as interior mutability in a const.
pub(super) static UBER_TRACE_ID: HeaderName = HeaderName::from_static("uber-trace-id");

pub(super) fn parse(headers: &HeaderMap) -> Parsed {
    let v = match single(headers, &UBER_TRACE_ID) {
        Single::Absent => return Parsed::Absent,
        Single::Repeated => return Parsed::Malformed,
        Single::One(v) => v,
    };
    match jaeger(v) {
        Some(ids) => Parsed::Context(ids),
        None => Parsed::Malformed,
    }
}

/// `{trace-id}:{span-id}:{parent-span-id}:{flags}`, `:` possibly
/// URL-encoded as `%3A` (as when the value went through a URL or a client
/// that encodes header values).
fn jaeger(v: &[u8]) -> Option<Ids> {
    let mut fields: [&[u8]; 4] = [&[]; 4];
    let mut n = 0;
    let (mut start, mut i) = (0, 0);
    while i < v.len() {
        let sep = match v[i] {
            b':' => 1,
            // Percent-encoding is case-insensitive: %3A and %3a.
            b'%' if v.len() >= i + 3 && v[i + 1] == b'3' && v[i + 2] | 0x20 == b'a' => 3,
            _ => 0,
        };
        if sep == 0 {
            i += 1;
            continue;
        }
        if n == 3 {
            return None;
        }
        fields[n] = &v[start..i];
        n += 1;
        i += sep;
        start = i;
    }
    if n != 3 {
        return None;
    }
    fields[3] = &v[start..];
    let [trace, span, parent, flags] = fields;
    // Jaeger: "Receivers MUST accept hex-strings shorter than 32 characters
    // and 0-pad them on the left"; the same holds for span ids.
    let trace_id = hex(trace).filter(|&id| id != 0)?;
    if span.len() > 16 {
        return None;
    }
    let span_id = hex(span).filter(|&id| id != 0)?;
    // The parent span id is deprecated (usually `0`) but must be hex.
    if parent.len() > 16 || hex(parent).is_none() {
        return None;
    }
    // One byte of flags as one or two hex digits: bit 1 sampled, bit 2 debug
    // (which implies sampled); other bits are ignored.
    if flags.len() > 2 {
        return None;
    }
    let flags = hex(flags)?;
    Some(Ids {
        trace_id,
        span_id: span_id as u64,
        sampled: Some(flags & 0b11 != 0),
    })
}

/// Writes `uber-trace-id: {trace}:{span}:0:{1|0}`.
pub(super) fn inject(headers: &mut HeaderMap, trace_id: u128, span_id: u64, sampled: bool) {
    // {trace:16|32}:{span:16}:0:{1|0}: at most 53 bytes. The parent span id
    // field is deprecated in Jaeger; `0` is what Jaeger clients send.
    let mut buf = [0u8; 53];
    let mut n = put_trace_id(&mut buf, trace_id);
    buf[n] = b':';
    n += 1;
    put_hex(&mut buf[n..n + 16], span_id.into());
    n += 16;
    buf[n..n + 3].copy_from_slice(b":0:");
    buf[n + 3] = if sampled { b'1' } else { b'0' };
    headers.insert(UBER_TRACE_ID.clone(), header_value(&buf[..n + 4]));
}
