//! W3C Trace Context (`tracecontext`): `traceparent` and `tracestate`.
//!
//! The rules on the wire are in the [parent module's docs](super).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::header::{Single, header_value, single, trim_ows};
use super::hex::{hex, put_hex};
use super::{Ids, Parsed};

// Header names are statics rather than consts: a `HeaderName` holds `Bytes`,
// which clippy rightly flags as interior mutability in a const.
pub(super) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// W3C Trace Context allows at most 32 `tracestate` list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;

pub(super) fn parse_traceparent(headers: &HeaderMap) -> Parsed {
    let v = match single(headers, &TRACEPARENT) {
        Single::Absent => return Parsed::Absent,
        // traceparent is a single value; two fields cannot be combined into one.
        Single::Repeated => return Parsed::Malformed,
        Single::One(v) => v,
    };
    match traceparent(v) {
        Some(ids) => Parsed::Context(ids),
        None => Parsed::Malformed,
    }
}

/// A `traceparent` value carried outside HTTP headers (a SQL comment),
/// as a remote span context; `None` when it is not a valid one.
pub(crate) fn remote_context(v: &[u8]) -> Option<SpanContext> {
    let ids = traceparent(v)?;
    let flags = if ids.sampled == Some(true) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::NOT_SAMPLED
    };
    Some(SpanContext::new(
        TraceId::from(ids.trace_id),
        SpanId::from(ids.span_id),
        flags,
        true,
        TraceState::NONE,
    ))
}

/// `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex.
fn traceparent(v: &[u8]) -> Option<Ids> {
    // Higher versions: "If the size of the header is shorter than 55
    // characters, the vendor should not parse the header".
    if v.len() < 55 || v[2] != b'-' {
        return None;
    }
    let version = hex(&v[..2])?;
    // "Version ff is invalid." Version 00 is exactly 55 characters; a higher
    // version may append fields, each after a dash.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])? as u64;
    let flags = hex(&v[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    // Only the sampled bit is defined; other bits are ignored (and are not
    // propagated: the injected flags come from the new span).
    Some(Ids {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

/// The combined `tracestate` fields, or `None` when invalid (which drops the
/// whole `tracestate`, never the `traceparent`).
pub(super) fn parse_tracestate(headers: &HeaderMap) -> Option<TraceState> {
    let mut members = [("", ""); MAX_TRACESTATE_MEMBERS];
    let mut n = 0;
    // Several tracestate fields are one list joined by commas (RFC 9110
    // field order), so splitting each field alone is equivalent.
    for field in headers.get_all(&TRACESTATE) {
        for member in field.as_bytes().split(|&b| b == b',') {
            // OWS around list members is ignored; empty members are allowed.
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            if n == MAX_TRACESTATE_MEMBERS {
                return None;
            }
            let eq = member.iter().position(|&b| b == b'=')?;
            let (key, value) = (&member[..eq], &member[eq + 1..]);
            if !tracestate_key(key) || !tracestate_value(value) {
                return None;
            }
            // Validated as ASCII above, so these conversions cannot fail.
            let key = std::str::from_utf8(key).ok()?;
            let value = std::str::from_utf8(value).ok()?;
            // "Only one entry per key is allowed."
            if members[..n].iter().any(|(k, _)| *k == key) {
                return None;
            }
            members[n] = (key, value);
            n += 1;
        }
    }
    TraceState::from_key_value(members[..n].iter().copied()).ok()
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`,
/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`.
fn tracestate_key(key: &[u8]) -> bool {
    let Some((&first, rest)) = key.split_first() else {
        return false;
    };
    key.len() <= 256
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest.iter().all(|&b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
/// `chr = %x20 / nblk-chr`.
fn tracestate_value(value: &[u8]) -> bool {
    let nblk = |b: u8| matches!(b, 0x21..=0x7e) && b != b',' && b != b'=';
    match value.split_last() {
        Some((&last, rest)) => {
            value.len() <= 256 && nblk(last) && rest.iter().all(|&b| b == b' ' || nblk(b))
        }
        None => false,
    }
}

pub(super) fn inject(headers: &mut HeaderMap, cx: &SpanContext, trace_id: u128, span_id: u64) {
    // Always version 00: "Vendors MUST use these fields to construct the new
    // traceparent field according to the highest version of the
    // specification known to the implementation".
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut buf[3..35], trace_id);
    put_hex(&mut buf[36..52], span_id.into());
    if cx.is_sampled() {
        buf[54] = b'1';
    }
    headers.insert(TRACEPARENT.clone(), header_value(&buf));

    let state = cx.trace_state();
    if state.into_iter().len() == 0 {
        headers.remove(&TRACESTATE);
        return;
    }
    let size = state.into_iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut value = Vec::with_capacity(size);
    for (i, (k, v)) in state.into_iter().enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(k.as_bytes());
        value.push(b'=');
        value.extend_from_slice(v.as_bytes());
    }
    // `TraceState` forbids only `,` and `=` in values; a state built by code
    // with, say, a newline cannot be sent, and a stale one must not be.
    match HeaderValue::try_from(value) {
        Ok(value) => {
            headers.insert(TRACESTATE.clone(), value);
        }
        Err(_) => {
            headers.remove(&TRACESTATE);
        }
    }
}
