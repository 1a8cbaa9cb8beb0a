//! What the fuzz targets share: reading a fuzz input as request headers,
//! the propagation round trip every format's target checks, and building
//! spans from fuzz input for the encoder targets.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use l7inspect_trace::span::{HttpFields, NetworkFields, RpcFields, SpanRecord, TlsFields};
use l7inspect_trace::{Format, Propagators};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, KeyValue, StringValue, Value};

/// The Zipkin v2 spec checker of the workspace's tests (test-support),
/// included by path: it needs only serde_json, serde_norway and regex.
#[path = "../../test-support/src/zipkin_spec.rs"]
pub mod zipkin_spec;

/// The input as an HTTP header block: one `name: value` per line (`\n`,
/// an optional `\r` before it), the form the seed files are written in.
/// Lines that are not a valid header are skipped; a name may repeat.
pub fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The ids, sampled flag and `tracestate` entries of a context: what must
/// survive a round trip through the headers.
fn essence(cx: &SpanContext) -> (TraceId, SpanId, bool, String) {
    (
        cx.trace_id(),
        cx.span_id(),
        cx.is_sampled(),
        cx.trace_state().header(),
    )
}

/// The propagation properties, for the propagators `p` and the headers
/// `input` (arbitrary, from the fuzzer):
///
/// 1. Extraction is consistent: a parent iff a source, the parent remote
///    and valid, valid formats carried, malformed ones neither.
/// 2. Round trip: the extracted context, injected into empty headers and
///    extracted again, is the same context (trace id, span id, sampled
///    flag, `tracestate` entries), from the same source format, and
///    injecting it again writes the same header values.
/// 3. Injection replaces: any valid context `fresh` injected into `input`
///    itself (stale and malformed values of the format included) is what
///    extraction then finds.
pub fn check_round_trip(p: Propagators, input: &HeaderMap, fresh: &SpanContext) {
    let ex = p.extract(input);
    assert_eq!(ex.parent.is_some(), ex.source.is_some(), "{ex:?}");
    assert!((ex.malformed & ex.carried).is_empty(), "{ex:?}");
    assert_eq!(ex.valid & ex.carried, ex.valid, "{ex:?}");
    for format in (ex.carried | ex.malformed).iter() {
        assert!(p.contains(format) && format.carries_context(), "{ex:?}");
    }
    if let Some(parent) = &ex.parent {
        assert!(parent.is_valid() && parent.is_remote(), "{ex:?}");
        let source = ex.source.expect("a parent has a source");
        assert!(ex.valid.contains(source), "{ex:?}");
        if let Some(sampled) = ex.sampled {
            assert_eq!(sampled, parent.is_sampled(), "{ex:?}");
        }
        // The W3C rule: tracestate only with a traceparent of that trace.
        if parent.trace_state().header() != "" {
            assert!(ex.valid.contains(Format::TraceContext), "{ex:?}");
        }

        let mut out = HeaderMap::new();
        p.inject(&mut out, parent, ex.carried);
        let again = p.extract(&out);
        let cx = again
            .parent
            .as_ref()
            .unwrap_or_else(|| panic!("{parent:?} injected as {out:?} extracts nothing"));
        assert_eq!(essence(cx), essence(parent), "injected as {out:?}");
        // Every carried format is written; the first listed one (a B3
        // sampling-only header may precede the source) is found first.
        let first_carried = p
            .formats()
            .iter()
            .copied()
            .find(|f| ex.carried.contains(*f));
        assert_eq!(again.source, first_carried, "injected as {out:?}");
        assert_eq!(again.sampled, Some(parent.is_sampled()), "{out:?}");
        assert!(again.malformed.is_empty(), "injected as {out:?}");
        // Injecting what was extracted from the injected headers writes
        // the same values: the round trip is a fixed point after one step.
        let mut twice = HeaderMap::new();
        p.inject(&mut twice, cx, again.carried);
        assert_eq!(twice, out);
    }

    let mut replaced = input.clone();
    p.inject(&mut replaced, fresh, ex.carried);
    let after = p.extract(&replaced);
    let got = after
        .parent
        .as_ref()
        .unwrap_or_else(|| panic!("{fresh:?} injected into {replaced:?} extracts nothing"));
    // Every listed context format that was carried is written, or the
    // first listed one when none was. A format listed before it was not
    // carried: it was absent or malformed, and is left so. So extraction
    // finds `fresh` in the first written format.
    let written = ex.carried & p.set();
    let first_written = p
        .formats()
        .iter()
        .copied()
        .find(|f| written.contains(*f) || (written.is_empty() && f.carries_context()));
    assert_eq!(after.source, first_written, "{replaced:?}");
    // tracestate is written only in W3C headers, and kept only with them.
    let (t, s, sampled, state) = essence(fresh);
    let state = if first_written == Some(Format::TraceContext) {
        state
    } else {
        String::new()
    };
    assert_eq!(essence(got), (t, s, sampled, state), "{replaced:?}");
    for format in written.iter() {
        assert!(
            after.valid.contains(format),
            "{format} written into {replaced:?}"
        );
    }
}

/// A valid context from fuzz input: any non-zero ids (64-bit trace ids
/// too, which B3 and Jaeger write with 16 digits), either sampled flag,
/// and the `tracestate` `state`.
pub fn context(u: &mut Unstructured<'_>, state: TraceState) -> Result<SpanContext> {
    let trace = match u.int_in_range(0..=2)? {
        0 => u128::from(u.arbitrary::<u64>()?),
        _ => u.arbitrary::<u128>()?,
    };
    let span: u64 = u.arbitrary()?;
    let flags = if u.arbitrary()? {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::NOT_SAMPLED
    };
    Ok(SpanContext::new(
        TraceId::from(trace.max(1)),
        SpanId::from(span.max(1)),
        flags,
        false,
        state,
    ))
}

/// The propagation target of `format`: the input is a header block
/// ([`headers`]); the fresh context of [`check_round_trip`] is made from
/// the same bytes. Checks the round trip with `format` alone, and with
/// every format listed (the default list), where `format` competes with
/// the others.
pub fn propagation_target(format: Format, data: &[u8]) {
    let input = headers(data);
    let state = Propagators::new([Format::TraceContext])
        .extract(&input)
        .parent
        .map(|p| p.trace_state().clone())
        .unwrap_or_default();
    let Ok(fresh) = context(&mut Unstructured::new(data), state) else {
        return;
    };
    check_round_trip(Propagators::new([format]), &input, &fresh);
    check_round_trip(Propagators::default(), &input, &fresh);
}

/// A string from fuzz input, up to `max` bytes.
fn text(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let len = u.int_in_range(0..=max)?;
    let mut s: String = u.arbitrary()?;
    if s.len() > len {
        let mut end = len;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    Ok(s)
}

fn opt<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn value(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Value::Bool(u.arbitrary()?),
        1 => Value::I64(u.arbitrary()?),
        2 => Value::F64(u.arbitrary()?),
        3 => Value::String(text(u, 300)?.into()),
        4 => Value::Array(Array::Bool(u.arbitrary()?)),
        5 => Value::Array(Array::I64(u.arbitrary()?)),
        6 => Value::Array(Array::F64(u.arbitrary()?)),
        _ => {
            let n = u.int_in_range(0..=4)?;
            let mut list: Vec<StringValue> = Vec::with_capacity(n);
            for _ in 0..n {
                list.push(text(u, 40)?.into());
            }
            Value::Array(Array::String(list))
        }
    })
}

fn kind(u: &mut Unstructured<'_>) -> Result<SpanKind> {
    Ok(match u.int_in_range(0..=4)? {
        0 => SpanKind::Internal,
        1 => SpanKind::Server,
        2 => SpanKind::Client,
        3 => SpanKind::Producer,
        _ => SpanKind::Consumer,
    })
}

fn time(u: &mut Unstructured<'_>) -> Result<SystemTime> {
    // Before the epoch too (the encoders write 0), and up to far ahead.
    let nanos: i64 = u.arbitrary()?;
    let d = Duration::from_nanos(nanos.unsigned_abs());
    Ok(if nanos < 0 {
        SystemTime::UNIX_EPOCH
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        SystemTime::UNIX_EPOCH + d
    })
}

fn addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    let ip = match u.int_in_range(0..=2)? {
        0 => IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)),
        // IPv4-mapped IPv6, which Zipkin wants as ipv4.
        1 => IpAddr::V6(Ipv4Addr::from(u.arbitrary::<u32>()?).to_ipv6_mapped()),
        _ => IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?)),
    };
    Ok(SocketAddr::new(ip, u.arbitrary()?))
}

const METHODS: [&str; 4] = ["GET", "POST", "_OTHER", "QUERY"];
const VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];

/// A span of any shape from fuzz input: any ids (the invalid zero ids
/// too), kind, name, times (either order), status, `tracestate`, every
/// typed field group present or not, and extra attributes of every value
/// kind, strings of any Unicode.
pub fn span(u: &mut Unstructured<'_>) -> Result<SpanRecord> {
    let trace_id = TraceId::from(u.arbitrary::<u128>()?);
    let span_id = SpanId::from(u.arbitrary::<u64>()?);
    let name: Cow<'static, str> = text(u, 200)?.into();
    let mut s = SpanRecord::new(trace_id, span_id, kind(u)?, name, time(u)?);
    s.end = time(u)?;
    s.trace_flags = TraceFlags::new(u.arbitrary()?);
    s.parent_span_id = SpanId::from(u.arbitrary::<u64>()?);
    s.parent_is_remote = u.arbitrary()?;
    let n = u.int_in_range(0..=3)?;
    let mut entries = Vec::new();
    for i in 0..n {
        // Valid keys; values without `,` and `=` (TraceState's own rule).
        let v: String = text(u, 30)?
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != ',' && *c != '=')
            .collect();
        entries.push((
            format!("k{i}"),
            if v.is_empty() { "v".to_owned() } else { v },
        ));
    }
    s.trace_state = TraceState::from_key_value(entries).unwrap_or_default();
    s.status = match u.int_in_range(0..=2)? {
        0 => Status::Unset,
        1 => Status::Ok,
        _ => Status::error(text(u, 100)?),
    };
    s.error_type = opt(u, |u| Ok(Cow::Owned(text(u, 40)?)))?;
    s.network = opt(u, |u| {
        let peer = addr(u)?;
        let client = opt(u, |u| Ok(addr(u)?.ip()))?;
        Ok(Arc::new(NetworkFields::new(peer, client)))
    })?;
    s.http = opt(u, |u| {
        Ok(HttpFields {
            method: *u.choose(&METHODS)?,
            method_original: opt(u, |u| text(u, 40))?,
            path: text(u, 300)?,
            scheme: Cow::Owned(text(u, 10)?),
            query: opt(u, |u| text(u, 100))?,
            server_address: text(u, 100)?.into(),
            server_port: u.arbitrary()?,
            protocol_version: *u.choose(&VERSIONS)?,
            user_agent: opt(u, |u| Ok(text(u, 100)?.into()))?,
            request_body_size: u.arbitrary()?,
            response_status_code: u.arbitrary()?,
            response_body_size: u.arbitrary()?,
        })
    })?;
    s.rpc = opt(u, |u| {
        Ok(RpcFields {
            system: "grpc",
            service: text(u, 60)?,
            method: text(u, 60)?,
            grpc_status_code: u.arbitrary()?,
        })
    })?;
    s.tls = opt(u, |u| {
        Ok(Arc::new(TlsFields {
            server_name: opt(u, |u| text(u, 60))?,
            protocol_version: opt(u, |u| Ok(Cow::Owned(text(u, 5)?)))?,
            cipher: opt(u, |u| Ok(Cow::Owned(text(u, 40)?)))?,
            next_protocol: opt(u, |u| text(u, 10))?,
            client_subject: opt(u, |u| text(u, 60))?,
        }))
    })?;
    let n = u.int_in_range(0..=4)?;
    for _ in 0..n {
        let key = match u.int_in_range(0..=2)? {
            // The key Zipkin reads for the remote endpoint's name.
            0 => "peer.service".to_owned(),
            1 => "service.peer.name".to_owned(),
            _ => text(u, 30)?,
        };
        s.attributes.push(KeyValue::new(key, value(u)?));
    }
    Ok(s)
}
