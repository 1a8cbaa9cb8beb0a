//! B3, single header (`b3`) and multiple headers (`b3multi`). The two share
//! their id and sampling-state syntax.
//!
//! The rules on the wire are in the [parent module's docs](super).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::header::{Single, header_value, single};
use super::hex::{hex, put_hex, put_trace_id};
use super::{Ids, Parsed};

// Header names are statics rather than consts: a `HeaderName` holds `Bytes`,
// which clippy rightly flags as interior mutability in a const.
pub(super) static B3: HeaderName = HeaderName::from_static("b3");
pub(super) static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(super) static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(super) static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(super) static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(super) static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

pub(super) fn parse_single(headers: &HeaderMap) -> Parsed {
    match single(headers, &B3) {
        Single::Absent => Parsed::Absent,
        Single::Repeated => Parsed::Malformed,
        Single::One(v) => b3(v),
    }
}

/// `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or
/// `{SamplingState}` alone.
fn b3(v: &[u8]) -> Parsed {
    // "b3: 0" is the deny-only form; B3 also allows 1 and d alone.
    if let Some(sampled) = b3_sampling_state(v) {
        return Parsed::Decision(sampled);
    }
    let mut fields = v.split(|&b| b == b'-');
    let (Some(trace), Some(span)) = (fields.next(), fields.next()) else {
        return Parsed::Malformed;
    };
    let sampled = match fields.next() {
        // No sampling state: the decision is deferred to the receiver.
        None => None,
        Some(state) => match b3_sampling_state(state) {
            Some(sampled) => Some(sampled),
            None => return Parsed::Malformed,
        },
    };
    if fields
        .next()
        .is_some_and(|parent| b3_span_id(parent).is_none())
    {
        return Parsed::Malformed;
    }
    if fields.next().is_some() {
        return Parsed::Malformed;
    }
    match (b3_trace_id(trace), b3_span_id(span)) {
        (Some(trace_id), Some(span_id)) => Parsed::Context(Ids {
            trace_id,
            span_id,
            sampled,
        }),
        _ => Parsed::Malformed,
    }
}

pub(super) fn parse_multi(headers: &HeaderMap) -> Parsed {
    let mut values = [None; 5];
    for (slot, name) in values.iter_mut().zip([
        &B3_TRACE_ID,
        &B3_SPAN_ID,
        &B3_PARENT_SPAN_ID,
        &B3_SAMPLED,
        &B3_FLAGS,
    ]) {
        match single(headers, name) {
            Single::Absent => {}
            Single::One(v) => *slot = Some(v),
            Single::Repeated => return Parsed::Malformed,
        }
    }
    let [trace, span, parent, sampled, flags] = values;
    let sampled = match sampled {
        None => None,
        Some(b"1") => Some(true),
        Some(b"0") => Some(false),
        // B3: "some tracers propagated X-B3-Sampled as true|false ...
        // instrumentation libraries are encouraged to also accept" them.
        Some(v) if v.eq_ignore_ascii_case(b"true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case(b"false") => Some(false),
        Some(_) => return Parsed::Malformed,
    };
    let debug = match flags {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(_) => return Parsed::Malformed,
    };
    // "Debug implies an accept decision."
    let sampled = if debug { Some(true) } else { sampled };
    if parent.is_some_and(|parent| b3_span_id(parent).is_none()) {
        return Parsed::Malformed;
    }
    match (trace, span) {
        (None, None) if parent.is_some() => Parsed::Malformed,
        (None, None) => match sampled {
            Some(sampled) => Parsed::Decision(sampled),
            None => Parsed::Absent,
        },
        (Some(trace), Some(span)) => match (b3_trace_id(trace), b3_span_id(span)) {
            (Some(trace_id), Some(span_id)) => Parsed::Context(Ids {
                trace_id,
                span_id,
                sampled,
            }),
            _ => Parsed::Malformed,
        },
        _ => Parsed::Malformed,
    }
}

fn b3_sampling_state(v: &[u8]) -> Option<bool> {
    match v {
        b"0" => Some(false),
        // `d` is debug, which implies accept.
        b"1" | b"d" => Some(true),
        _ => None,
    }
}

/// 16 or 32 lowercase hex digits, not all zero; 64-bit ids are the low half.
fn b3_trace_id(v: &[u8]) -> Option<u128> {
    if v.len() != 16 && v.len() != 32 {
        return None;
    }
    hex(v).filter(|&id| id != 0)
}

/// 16 lowercase hex digits, not all zero.
fn b3_span_id(v: &[u8]) -> Option<u64> {
    if v.len() != 16 {
        return None;
    }
    hex(v).filter(|&id| id != 0).map(|id| id as u64)
}

/// Writes `b3: {trace}-{span}-{1|0}`.
pub(super) fn inject_single(headers: &mut HeaderMap, trace_id: u128, span_id: u64, sampled: bool) {
    // {trace:16|32}-{span:16}-{1|0}: at most 51 bytes.
    let mut buf = [0u8; 51];
    let mut n = put_trace_id(&mut buf, trace_id);
    buf[n] = b'-';
    n += 1;
    put_hex(&mut buf[n..n + 16], span_id.into());
    n += 16;
    buf[n] = b'-';
    buf[n + 1] = if sampled { b'1' } else { b'0' };
    headers.insert(B3.clone(), header_value(&buf[..n + 2]));
}

/// Writes `X-B3-TraceId`, `X-B3-SpanId` and `X-B3-Sampled`, and removes
/// `X-B3-ParentSpanId` and `X-B3-Flags`.
pub(super) fn inject_multi(headers: &mut HeaderMap, trace_id: u128, span_id: u64, sampled: bool) {
    let mut buf = [0u8; 32];
    let n = put_trace_id(&mut buf, trace_id);
    headers.insert(B3_TRACE_ID.clone(), header_value(&buf[..n]));
    put_hex(&mut buf[..16], span_id.into());
    headers.insert(B3_SPAN_ID.clone(), header_value(&buf[..16]));
    let sampled = HeaderValue::from_static(if sampled { "1" } else { "0" });
    headers.insert(B3_SAMPLED.clone(), sampled);
    headers.remove(&B3_PARENT_SPAN_ID);
    headers.remove(&B3_FLAGS);
}
