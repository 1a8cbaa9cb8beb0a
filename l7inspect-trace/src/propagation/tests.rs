use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::header::trim_ows;
use super::hex::{hex, put_hex};
use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const TRACE64: &str = "a3ce929d0e0e4736";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn only(format: Format) -> Propagators {
    Propagators::new([format])
}

fn trace_id(hex: &str) -> TraceId {
    TraceId::from_hex(hex).unwrap()
}

fn span_id(hex: &str) -> SpanId {
    SpanId::from_hex(hex).unwrap()
}

fn cx(trace: &str, span: &str, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::NOT_SAMPLED
    };
    SpanContext::new(
        trace_id(trace),
        span_id(span),
        flags,
        false,
        TraceState::NONE,
    )
}

/// Extracts with a single-format list and returns the parent's
/// (trace id, span id, sampled) and the decision, asserting the sets.
fn extract_one(
    format: Format,
    pairs: &[(&str, &str)],
) -> Option<(TraceId, SpanId, bool, Option<bool>)> {
    let got = only(format).extract(&headers(pairs));
    match &got.parent {
        Some(p) => {
            assert!(p.is_remote());
            assert_eq!(got.source, Some(format));
            assert_eq!(got.valid, format.into());
            assert_eq!(got.carried, format.into());
            assert!(got.malformed.is_empty());
            Some((p.trace_id(), p.span_id(), p.is_sampled(), got.sampled))
        }
        None => {
            assert!(got.valid.is_empty());
            assert_eq!(got.source, None);
            None
        }
    }
}

fn assert_malformed(format: Format, pairs: &[(&str, &str)]) {
    let got = only(format).extract(&headers(pairs));
    assert_eq!(got.parent, None, "{pairs:?}");
    assert_eq!(got.malformed, format.into(), "{pairs:?}");
    assert!(got.carried.is_empty(), "{pairs:?}");
    assert_eq!(got.sampled, None, "{pairs:?}");
}

fn get<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).map(|v| v.to_str().unwrap())
}

// --- Propagators ---

#[test]
fn default_lists_every_format_w3c_first() {
    let p = Propagators::default();
    assert_eq!(p.formats(), &Format::ALL);
    assert_eq!(p.to_string(), "tracecontext,baggage,b3,b3multi,jaeger");
    assert_eq!(Propagators::parse(&p.to_string()), Ok(p));
    assert_eq!(
        format!("{p:?}"),
        "Propagators(tracecontext,baggage,b3,b3multi,jaeger)"
    );
}

#[test]
fn parse_keeps_order_trims_and_dedups() {
    let p = Propagators::parse(" b3multi , Jaeger,,tracecontext,b3multi ").unwrap();
    assert_eq!(
        p.formats(),
        &[Format::B3Multi, Format::Jaeger, Format::TraceContext]
    );
    assert_eq!(p.to_string(), "b3multi,jaeger,tracecontext");
    assert_eq!(
        "b3".parse::<Propagators>().unwrap().formats(),
        &[Format::B3]
    );
}

#[test]
fn parse_none_is_the_empty_list() {
    let p = Propagators::parse("none").unwrap();
    assert!(p.is_empty());
    assert_eq!(p.to_string(), "none");
    assert_eq!(Propagators::parse("none"), Ok(Propagators::new([])));
}

#[test]
fn parse_errors_name_the_value() {
    let err = Propagators::parse("tracecontext,zipkin").unwrap_err();
    assert_eq!(err, ParsePropagatorsError::Unknown("zipkin".into()));
    assert!(err.to_string().contains("`zipkin`"), "{err}");

    // xray and ottrace are OTEL_PROPAGATORS values in the OpenTelemetry
    // specification: say they are unsupported, not unknown.
    for name in ["xray", "ottrace"] {
        let err = Propagators::parse(&format!("b3,{name}")).unwrap_err();
        assert_eq!(err, ParsePropagatorsError::Unsupported(name.into()));
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    let err = Propagators::parse("none,b3").unwrap_err();
    assert_eq!(err, ParsePropagatorsError::NoneWithOthers("none,b3".into()));
    assert_eq!(Propagators::parse(""), Err(ParsePropagatorsError::Empty));
    assert_eq!(Propagators::parse(" , "), Err(ParsePropagatorsError::Empty));
}

#[test]
fn format_set() {
    let set = FormatSet::EMPTY
        .with(Format::Jaeger)
        .with(Format::TraceContext);
    assert_eq!(set.len(), 2);
    assert!(set.contains(Format::Jaeger) && !set.contains(Format::B3));
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        [Format::TraceContext, Format::Jaeger]
    );
    assert_eq!(format!("{set:?}"), r#"{"tracecontext", "jaeger"}"#);
    assert_eq!(set & Format::Jaeger.into(), Format::Jaeger.into());
    assert_eq!(
        set | Format::B3.into(),
        [Format::B3, Format::Jaeger, Format::TraceContext]
            .into_iter()
            .collect()
    );
    assert!(!FormatSet::CONTEXT.contains(Format::Baggage));
    assert_eq!(FormatSet::CONTEXT.len(), 4);
}

// --- W3C Trace Context ---

#[test]
fn traceparent_sampled_and_unsampled() {
    for (flags, sampled) in [("01", true), ("00", false)] {
        let tp = format!("00-{TRACE}-{SPAN}-{flags}");
        let got = extract_one(Format::TraceContext, &[("traceparent", &tp)]);
        assert_eq!(
            got,
            Some((trace_id(TRACE), span_id(SPAN), sampled, Some(sampled)))
        );
    }
}

#[test]
fn traceparent_other_flags_are_masked() {
    // Trace Context: "you cannot interpret flags by decoding the hex value
    // ... forgetting to mask": 09 is sampled, 02 (random, Level 2) is not.
    for (flags, sampled) in [("09", true), ("02", false), ("ff", true)] {
        let tp = format!("00-{TRACE}-{SPAN}-{flags}");
        let got = only(Format::TraceContext).extract(&headers(&[("traceparent", &tp)]));
        let parent = got.parent.unwrap();
        assert_eq!(parent.is_sampled(), sampled, "{flags}");
        assert_eq!(parent.trace_flags().to_u8(), u8::from(sampled), "{flags}");
    }
}

#[test]
fn traceparent_malformed() {
    let cases = [
        // Version 00 is exactly 55 characters (ABNF), no more, no less.
        format!("00-{TRACE}-{SPAN}-0"),
        format!("00-{TRACE}-{SPAN}-011"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{}-{SPAN}-01", &TRACE[1..]),
        format!("00-{TRACE}0-{}-01", &SPAN[1..]),
        // HEXDIGLC: uppercase is not allowed anywhere.
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
        format!("00-{TRACE}-{SPAN}-0A"),
        format!("0A-{TRACE}-{SPAN}-01"),
        // Non-hex.
        format!("00-{}g-{SPAN}-01", &TRACE[1..]),
        format!("00-{TRACE}-{SPAN}-0x"),
        format!("x0-{TRACE}-{SPAN}-01"),
        // "All bytes as zero ... is considered an invalid value."
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        // "Version ff is invalid."
        format!("ff-{TRACE}-{SPAN}-01"),
        // Wrong separators and field counts.
        format!("00_{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}_{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}_01"),
        format!("00-{TRACE}-{SPAN}"),
        format!("00-{TRACE}{SPAN}-01"),
        String::new(),
    ];
    for tp in &cases {
        assert_malformed(Format::TraceContext, &[("traceparent", tp)]);
    }
}

#[test]
fn traceparent_future_versions_are_parsed_leniently() {
    // "If a higher version is detected, the implementation SHOULD try to
    // parse it": trace-id, parent-id and flags at their version-00
    // positions, flags "either at the end of the string or followed by a
    // dash"; unknown trailing fields are ignored.
    for tp in [
        format!("cc-{TRACE}-{SPAN}-01"),
        format!("cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like"),
    ] {
        let got = extract_one(Format::TraceContext, &[("traceparent", &tp)]);
        assert_eq!(
            got,
            Some((trace_id(TRACE), span_id(SPAN), true, Some(true))),
            "{tp}"
        );
    }
    for tp in [
        // Shorter than 55: "should not parse the header".
        format!("cc-{TRACE}-{SPAN}-1"),
        // Flags not followed by a dash.
        format!("cc-{TRACE}-{SPAN}-01what"),
        // Ids must still be lowercase hex and non-zero.
        format!("cc-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("cc-{TRACE}-{}-01-x", "0".repeat(16)),
    ] {
        assert_malformed(Format::TraceContext, &[("traceparent", &tp)]);
    }
}

#[test]
fn traceparent_repeated_is_malformed_and_ows_is_ignored() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    // Two traceparent fields cannot be combined into one value.
    assert_malformed(
        Format::TraceContext,
        &[("traceparent", &tp), ("traceparent", &tp)],
    );
    // Header names are case-insensitive; OWS is not part of the value.
    let padded = format!(" \t{tp} ");
    let got = extract_one(Format::TraceContext, &[("TraceParent", &padded)]);
    assert_eq!(got.map(|g| g.0), Some(trace_id(TRACE)));
}

#[test]
fn tracestate_kept_with_a_valid_traceparent() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let got = Propagators::default().extract(&headers(&[
        ("traceparent", &tp),
        ("tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
        // Multiple fields are one list; empty and OWS-only members are
        // allowed ("Empty and whitespace-only list members are allowed").
        ("tracestate", " ,\t, vendor@tenant=a b ,"),
    ]));
    let state = got.parent.unwrap().trace_state().clone();
    assert_eq!(
        state.header(),
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor@tenant=a b"
    );
}

#[test]
fn tracestate_dropped_with_a_malformed_traceparent() {
    // "If the vendor failed to parse traceparent, it MUST NOT attempt to
    // parse tracestate."
    let got = only(Format::TraceContext).extract(&headers(&[
        ("traceparent", "00-xyz"),
        ("tracestate", "rojo=1"),
    ]));
    assert_eq!(got.parent, None);
    assert_eq!(got.malformed, Format::TraceContext.into());
}

#[test]
fn invalid_tracestate_drops_only_the_tracestate() {
    // "failure to parse tracestate MUST NOT affect the parsing of
    // traceparent."
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let too_many = (0..33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let thirty_two = (0..32)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let long_value = format!("k={}", "v".repeat(257));
    for (state, kept) in [
        // "There can be a maximum of 32 list-members in a list."
        (too_many.as_str(), false),
        (thirty_two.as_str(), true),
        // "Only one entry per key is allowed."
        ("foo=1,foo=2", false),
        // Keys begin with a lowercase letter or digit, then keychars.
        ("Foo=1", false),
        ("_foo=1", false),
        ("foo!=1", false),
        ("=1", false),
        // Values: 1 to 256 printable characters except ',' and '='.
        ("foo=", false),
        ("foo=a=b", false),
        (long_value.as_str(), false),
        ("foo", false),
        ("", true),
    ] {
        let got = only(Format::TraceContext)
            .extract(&headers(&[("traceparent", &tp), ("tracestate", state)]));
        let parent = got.parent.expect("traceparent still valid");
        let members = parent.trace_state().into_iter().len();
        assert_eq!(members > 0, kept && !state.is_empty(), "{state}");
    }
}

#[test]
fn tracestate_follows_the_w3c_trace_to_another_formats_parent() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let b3_parent = Propagators::parse("b3,tracecontext").unwrap();
    // Same trace id: the tracestate describes this trace.
    let same = format!("{TRACE}-{}-1", "1111111111111111");
    let got = b3_parent.extract(&headers(&[
        ("b3", &same),
        ("traceparent", &tp),
        ("tracestate", "rojo=1"),
    ]));
    assert_eq!(got.source, Some(Format::B3));
    assert_eq!(got.parent.unwrap().trace_state().get("rojo"), Some("1"));
    // Another trace: it does not.
    let other = format!("{TRACE64}-{SPAN}-1");
    let got = b3_parent.extract(&headers(&[
        ("b3", &other),
        ("traceparent", &tp),
        ("tracestate", "rojo=1"),
    ]));
    assert_eq!(
        got.valid,
        FormatSet::EMPTY.with(Format::B3).with(Format::TraceContext)
    );
    assert_eq!(got.parent.unwrap().trace_state(), &TraceState::NONE);
}

// --- B3 single header ---

#[test]
fn b3_single() {
    let sixty_four = u128::from_str_radix(TRACE64, 16).unwrap();
    for (value, sampled) in [
        (format!("{TRACE}-{SPAN}-1"), Some(true)),
        (format!("{TRACE}-{SPAN}-0"), Some(false)),
        // "d" is debug, which implies sampled.
        (format!("{TRACE}-{SPAN}-d"), Some(true)),
        // No sampling state: deferred to the receiver.
        (format!("{TRACE}-{SPAN}"), None),
        (
            format!("{TRACE}-{SPAN}-1-{}", "05e3ac9a4f6e3b90"),
            Some(true),
        ),
    ] {
        let got = extract_one(Format::B3, &[("b3", &value)]);
        assert_eq!(
            got,
            Some((
                trace_id(TRACE),
                span_id(SPAN),
                sampled == Some(true),
                sampled
            )),
            "{value}"
        );
    }
    // A 64-bit trace id is the low half of a 128-bit one.
    let got = extract_one(Format::B3, &[("b3", &format!("{TRACE64}-{SPAN}-1"))]).unwrap();
    assert_eq!(got.0, TraceId::from(sixty_four));
}

#[test]
fn b3_sampling_only() {
    // B3: "b3: 0" is a deny decision without ids ("1" and "d" alone are
    // allowed too); there is no parent, only a decision, and b3 counts as
    // carried so the new context goes out in b3.
    for (value, sampled) in [("0", false), ("1", true), ("d", true)] {
        let got = Propagators::default().extract(&headers(&[("b3", value)]));
        assert_eq!(got.parent, None);
        assert_eq!(got.sampled, Some(sampled));
        assert_eq!(got.carried, Format::B3.into());
        assert!(got.valid.is_empty() && got.malformed.is_empty());
    }
}

#[test]
fn b3_single_malformed() {
    let zeros16 = "0".repeat(16);
    for value in [
        format!("{}-{SPAN}-1", &TRACE[..31]),
        format!("{}-{SPAN}-1", &TRACE[..20]),
        format!("{TRACE}-{}-1", &SPAN[..15]),
        format!("{TRACE}-{SPAN}0-1"),
        format!("{}-{SPAN}-1", TRACE.to_uppercase()),
        format!("{TRACE}-{SPAN}-x"),
        format!("{TRACE}-{SPAN}-true"),
        format!("{TRACE}-{SPAN}-"),
        format!("{TRACE}-{SPAN}-1-{}", &SPAN[..8]),
        format!("{TRACE}-{SPAN}-1-{SPAN}-extra"),
        format!("{}-{SPAN}-1", "0".repeat(32)),
        format!("{zeros16}-{SPAN}-1"),
        format!("{TRACE}-{zeros16}-1"),
        format!("{TRACE}-{SPAN}-1-{zeros16}"),
        TRACE.to_owned(),
        "2".into(),
        String::new(),
    ] {
        assert_malformed(Format::B3, &[("b3", &value)]);
    }
    let ok = format!("{TRACE}-{SPAN}-1");
    assert_malformed(Format::B3, &[("b3", &ok), ("b3", &ok)]);
}

// --- B3 multiple headers ---

#[test]
fn b3_multi() {
    for (sampled_header, flags, sampled) in [
        (Some("1"), None, Some(true)),
        (Some("0"), None, Some(false)),
        // Legacy values B3 asks receivers to accept.
        (Some("true"), None, Some(true)),
        (Some("false"), None, Some(false)),
        // Debug implies accept, even beside a deny.
        (None, Some("1"), Some(true)),
        (Some("0"), Some("1"), Some(true)),
        (Some("0"), Some("0"), Some(false)),
        // Deferred.
        (None, None, None),
    ] {
        let mut pairs = vec![
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
        ];
        pairs.extend(sampled_header.map(|s| ("X-B3-Sampled", s)));
        pairs.extend(flags.map(|f| ("X-B3-Flags", f)));
        let got = extract_one(Format::B3Multi, &pairs);
        assert_eq!(
            got,
            Some((
                trace_id(TRACE),
                span_id(SPAN),
                sampled == Some(true),
                sampled
            )),
            "{pairs:?}"
        );
    }
    let got = extract_one(
        Format::B3Multi,
        &[("x-b3-traceid", TRACE64), ("x-b3-spanid", SPAN)],
    )
    .unwrap();
    assert_eq!(got.0, trace_id(TRACE64));
}

#[test]
fn b3_multi_sampling_only() {
    for (pairs, sampled) in [
        (&[("X-B3-Sampled", "0")][..], false),
        (&[("X-B3-Sampled", "1")][..], true),
        (&[("X-B3-Flags", "1")][..], true),
    ] {
        let got = only(Format::B3Multi).extract(&headers(pairs));
        assert_eq!(got.parent, None);
        assert_eq!(got.sampled, Some(sampled), "{pairs:?}");
        assert_eq!(got.carried, Format::B3Multi.into());
    }
    // X-B3-Flags: 0 alone says nothing.
    let got = only(Format::B3Multi).extract(&headers(&[("X-B3-Flags", "0")]));
    assert_eq!(got, Extracted::default());
}

#[test]
fn b3_multi_malformed() {
    let cases: &[&[(&str, &str)]] = &[
        &[("X-B3-TraceId", TRACE)],
        &[("X-B3-SpanId", SPAN), ("X-B3-Sampled", "1")],
        &[("X-B3-ParentSpanId", SPAN)],
        &[("X-B3-TraceId", &TRACE[..31]), ("X-B3-SpanId", SPAN)],
        &[("X-B3-TraceId", TRACE), ("X-B3-SpanId", &SPAN[..15])],
        &[("X-B3-TraceId", "A3CE929D0E0E4736"), ("X-B3-SpanId", SPAN)],
        &[("X-B3-TraceId", "0000000000000000"), ("X-B3-SpanId", SPAN)],
        &[("X-B3-TraceId", TRACE), ("X-B3-SpanId", "0000000000000000")],
        &[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "2"),
        ],
        &[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "d"),
        ],
        &[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Flags", "2"),
        ],
        &[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-ParentSpanId", "xyz"),
        ],
        &[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-SpanId", SPAN),
        ],
        &[("X-B3-Sampled", "yes")],
    ];
    for pairs in cases {
        assert_malformed(Format::B3Multi, pairs);
    }
}

// --- Jaeger ---

#[test]
fn jaeger() {
    for (value, sampled) in [
        (format!("{TRACE}:{SPAN}:0:1"), true),
        (format!("{TRACE}:{SPAN}:0:0"), false),
        (format!("{TRACE}:{SPAN}:0:01"), true),
        // Flag bit 2 is debug, which implies sampled; bit 4 is ignored.
        (format!("{TRACE}:{SPAN}:0:2"), true),
        (format!("{TRACE}:{SPAN}:0:4"), false),
        (format!("{TRACE}:{SPAN}:05e3ac9a4f6e3b90:1"), true),
        // URL-encoded separators, either case.
        (format!("{TRACE}%3A{SPAN}%3A0%3A1"), true),
        (format!("{TRACE}%3a{SPAN}%3a0%3a1"), true),
    ] {
        let got = extract_one(Format::Jaeger, &[("uber-trace-id", &value)]);
        assert_eq!(
            got,
            Some((trace_id(TRACE), span_id(SPAN), sampled, Some(sampled))),
            "{value}"
        );
    }
}

#[test]
fn jaeger_short_ids_are_left_padded() {
    // Jaeger: "Receivers MUST accept hex-strings shorter than 32
    // characters and 0-pad them on the left."
    for (trace, span) in [
        (TRACE64, SPAN),
        ("3ce929d0e0e4736", "f067aa0ba902b7"),
        ("1", "2"),
    ] {
        let value = format!("{trace}:{span}:0:1");
        let got = extract_one(Format::Jaeger, &[("uber-trace-id", &value)]).unwrap();
        assert_eq!(got.0, trace_id(trace), "{value}");
        assert_eq!(got.1, span_id(span), "{value}");
    }
}

#[test]
fn jaeger_malformed() {
    for value in [
        format!("{TRACE}:{SPAN}:0"),
        format!("{TRACE}:{SPAN}:0:1:extra"),
        format!("{TRACE}0:{SPAN}:0:1"),
        format!("{TRACE}:{SPAN}0:0:1"),
        format!("{TRACE}:{SPAN}:{SPAN}0:1"),
        format!("{}:{SPAN}:0:1", TRACE.to_uppercase()),
        format!("{TRACE}:xyz:0:1"),
        format!("0:{SPAN}:0:1"),
        format!("{TRACE}:0000000000000000:0:1"),
        format!("{TRACE}::0:1"),
        format!("{TRACE}:{SPAN}::1"),
        format!("{TRACE}:{SPAN}:0:"),
        format!("{TRACE}:{SPAN}:0:001"),
        format!("{TRACE}:{SPAN}:0:g"),
        format!("{TRACE}%3{SPAN}%3A0%3A1"),
        format!("{TRACE}-{SPAN}-0-1"),
        String::new(),
    ] {
        assert_malformed(Format::Jaeger, &[("uber-trace-id", &value)]);
    }
}

// --- precedence ---

fn all_formats_with_distinct_spans() -> HeaderMap {
    headers(&[
        ("traceparent", &format!("00-{TRACE}-1111111111111111-01")),
        ("b3", &format!("{TRACE}-2222222222222222-1")),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", "3333333333333333"),
        ("x-b3-sampled", "1"),
        ("uber-trace-id", &format!("{TRACE}:4444444444444444:0:1")),
        ("baggage", "k=v"),
    ])
}

#[test]
fn first_listed_valid_format_wins() {
    let map = all_formats_with_distinct_spans();
    for (list, source, span) in [
        (
            "tracecontext,baggage,b3,b3multi,jaeger",
            Format::TraceContext,
            "1111111111111111",
        ),
        ("baggage,b3,tracecontext", Format::B3, "2222222222222222"),
        ("b3multi,b3", Format::B3Multi, "3333333333333333"),
        ("jaeger,tracecontext", Format::Jaeger, "4444444444444444"),
    ] {
        let p = Propagators::parse(list).unwrap();
        let got = p.extract(&map);
        assert_eq!(got.source, Some(source), "{list}");
        assert_eq!(got.parent.unwrap().span_id(), span_id(span), "{list}");
        // Every listed context format was read, and only those.
        assert_eq!(got.valid, p.set() & FormatSet::CONTEXT, "{list}");
        assert_eq!(got.carried, got.valid, "{list}");
    }
}

#[test]
fn malformed_first_format_falls_through_to_the_next() {
    let map = headers(&[
        (
            "traceparent",
            &format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        ),
        ("b3", "garbage"),
        ("uber-trace-id", &format!("{TRACE}:{SPAN}:0:0")),
    ]);
    let got = Propagators::default().extract(&map);
    assert_eq!(got.source, Some(Format::Jaeger));
    assert_eq!(
        got.malformed,
        FormatSet::EMPTY.with(Format::TraceContext).with(Format::B3)
    );
    assert_eq!(got.valid, Format::Jaeger.into());
    assert_eq!(got.sampled, Some(false));
}

#[test]
fn a_parent_outranks_a_sampling_only_decision() {
    // A B3 deny without ids listed first does not override a context.
    let map = headers(&[
        ("b3", "0"),
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
    ]);
    let got = Propagators::parse("b3,tracecontext").unwrap().extract(&map);
    assert_eq!(got.source, Some(Format::TraceContext));
    assert_eq!(got.sampled, Some(true));
    assert_eq!(
        got.carried,
        FormatSet::EMPTY.with(Format::B3).with(Format::TraceContext)
    );
}

#[test]
fn unlisted_formats_and_baggage_are_not_extracted() {
    let map = all_formats_with_distinct_spans();
    assert_eq!(
        Propagators::parse("baggage").unwrap().extract(&map),
        Extracted::default()
    );
    assert_eq!(
        Propagators::parse("none").unwrap().extract(&map),
        Extracted::default()
    );
    assert_eq!(
        Propagators::default().extract(&HeaderMap::new()),
        Extracted::default()
    );
}

// --- inject ---

#[test]
fn inject_writes_each_format() {
    let new = cx(TRACE, SPAN, true);
    for (format, expected) in [
        (
            Format::TraceContext,
            vec![("traceparent", format!("00-{TRACE}-{SPAN}-01"))],
        ),
        (Format::B3, vec![("b3", format!("{TRACE}-{SPAN}-1"))]),
        (
            Format::B3Multi,
            vec![
                ("x-b3-traceid", TRACE.into()),
                ("x-b3-spanid", SPAN.into()),
                ("x-b3-sampled", "1".into()),
            ],
        ),
        (
            Format::Jaeger,
            vec![("uber-trace-id", format!("{TRACE}:{SPAN}:0:1"))],
        ),
    ] {
        let mut map = HeaderMap::new();
        Propagators::default().inject(&mut map, &new, format.into());
        let got: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(got, expected, "{format}");
    }
}

#[test]
fn injected_ids_are_never_indexed_by_hpack() {
    // Values new on every request: HTTP/2 sends them as never-indexed
    // literals instead of inserting each into the peer's HPACK table.
    let mut map = HeaderMap::new();
    Propagators::default().inject(&mut map, &cx(TRACE, SPAN, true), FormatSet::CONTEXT);
    for name in [
        "traceparent",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "uber-trace-id",
    ] {
        assert!(map[name].is_sensitive(), "{name}");
    }
}

#[test]
fn inject_round_trips_through_extract() {
    for format in FormatSet::CONTEXT.iter() {
        for sampled in [true, false] {
            for trace in [TRACE, TRACE64] {
                let new = cx(trace, SPAN, sampled);
                let mut map = HeaderMap::new();
                let p = Propagators::default();
                p.inject(&mut map, &new, format.into());
                let got = p.extract(&map);
                let parent = got.parent.unwrap();
                assert_eq!(got.source, Some(format));
                assert_eq!(got.carried, format.into());
                assert_eq!(parent.trace_id(), new.trace_id(), "{format} {trace}");
                assert_eq!(parent.span_id(), new.span_id());
                assert_eq!(parent.is_sampled(), sampled);
                assert_eq!(got.sampled, Some(sampled));
            }
        }
    }
}

#[test]
fn inject_keeps_64_bit_trace_ids_64_bit_except_in_w3c() {
    let mut map = HeaderMap::new();
    Propagators::default().inject(&mut map, &cx(TRACE64, SPAN, false), FormatSet::CONTEXT);
    assert_eq!(
        get(&map, "traceparent"),
        Some(format!("00-0000000000000000{TRACE64}-{SPAN}-00").as_str())
    );
    assert_eq!(
        get(&map, "b3"),
        Some(format!("{TRACE64}-{SPAN}-0").as_str())
    );
    assert_eq!(get(&map, "x-b3-traceid"), Some(TRACE64));
    assert_eq!(get(&map, "x-b3-sampled"), Some("0"));
    assert_eq!(
        get(&map, "uber-trace-id"),
        Some(format!("{TRACE64}:{SPAN}:0:0").as_str())
    );
}

#[test]
fn inject_without_carried_uses_the_first_listed_context_format() {
    let new = cx(TRACE, SPAN, true);
    for (list, written) in [
        ("tracecontext,b3", &["traceparent"][..]),
        ("baggage,jaeger,tracecontext", &["uber-trace-id"][..]),
        (
            "b3multi",
            &["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"][..],
        ),
    ] {
        let mut map = HeaderMap::new();
        Propagators::parse(list)
            .unwrap()
            .inject(&mut map, &new, FormatSet::EMPTY);
        assert_eq!(
            map.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            written,
            "{list}"
        );
    }
    // Carried formats that are not listed do not count.
    let mut map = HeaderMap::new();
    Propagators::parse("b3")
        .unwrap()
        .inject(&mut map, &new, Format::Jaeger.into());
    assert_eq!(map.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["b3"]);
}

#[test]
fn inject_writes_every_carried_format() {
    let map = all_formats_with_distinct_spans();
    let p = Propagators::default();
    let got = p.extract(&map);
    let new = cx(TRACE, "5555555555555555", true);
    let mut out = map.clone();
    p.inject(&mut out, &new, got.carried);
    assert_eq!(
        get(&out, "traceparent"),
        Some(format!("00-{TRACE}-5555555555555555-01").as_str())
    );
    assert_eq!(
        get(&out, "b3"),
        Some(format!("{TRACE}-5555555555555555-1").as_str())
    );
    assert_eq!(get(&out, "x-b3-spanid"), Some("5555555555555555"));
    assert_eq!(
        get(&out, "uber-trace-id"),
        Some(format!("{TRACE}:5555555555555555:0:1").as_str())
    );
    // Baggage passes untouched.
    assert_eq!(get(&out, "baggage"), Some("k=v"));
    // Everything now agrees on the new span.
    let again = p.extract(&out);
    assert_eq!(again.valid, FormatSet::CONTEXT);
    assert_eq!(again.parent.unwrap().span_id(), new.span_id());
}

#[test]
fn inject_replaces_stale_headers() {
    let mut map = headers(&[
        ("traceparent", "00-stale"),
        ("traceparent", "00-stale-too"),
        ("tracestate", "stale=1"),
        ("b3", "stale"),
        ("X-B3-TraceId", "stale"),
        ("X-B3-SpanId", "stale"),
        ("X-B3-ParentSpanId", "stale"),
        ("X-B3-Sampled", "1"),
        ("X-B3-Flags", "1"),
        ("uber-trace-id", "stale"),
        ("baggage", "k=v"),
    ]);
    let new = cx(TRACE, SPAN, false);
    Propagators::default().inject(&mut map, &new, FormatSet::CONTEXT);
    let mut got: Vec<_> = map
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "b3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0".to_owned(),
            "baggage: k=v".into(),
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
            "uber-trace-id: 4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:0".into(),
            "x-b3-sampled: 0".into(),
            "x-b3-spanid: 00f067aa0ba902b7".into(),
            "x-b3-traceid: 4bf92f3577b34da6a3ce929d0e0e4736".into(),
        ]
    );
}

#[test]
fn inject_writes_the_contexts_tracestate() {
    let state: TraceState = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".parse().unwrap();
    let new = SpanContext::new(
        trace_id(TRACE),
        span_id(SPAN),
        TraceFlags::SAMPLED,
        false,
        state,
    );
    let mut map = headers(&[("tracestate", "stale=1"), ("tracestate", "stale=2")]);
    Propagators::default().inject(&mut map, &new, Format::TraceContext.into());
    let got: Vec<_> = map.get_all("tracestate").iter().collect();
    assert_eq!(got, ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]);

    // Round trip: the extracted parent carries the same state.
    let parent = Propagators::default().extract(&map).parent.unwrap();
    assert_eq!(parent.trace_state(), new.trace_state());
}

#[test]
fn inject_of_an_invalid_context_or_with_no_formats_writes_nothing() {
    let mut map = headers(&[("traceparent", "00-keep")]);
    Propagators::default().inject(&mut map, &SpanContext::NONE, FormatSet::CONTEXT);
    assert_eq!(get(&map, "traceparent"), Some("00-keep"));
    for list in ["none", "baggage"] {
        Propagators::parse(list).unwrap().inject(
            &mut map,
            &cx(TRACE, SPAN, true),
            FormatSet::CONTEXT,
        );
        assert_eq!(map.len(), 1, "{list}");
    }
}

#[test]
fn hex_helpers() {
    assert_eq!(hex(b"0"), Some(0));
    assert_eq!(hex(b"ff"), Some(255));
    assert_eq!(hex(b"FF"), None);
    assert_eq!(hex(b""), None);
    assert_eq!(hex(&[b'f'; 32]), Some(u128::MAX));
    assert_eq!(hex(&[b'f'; 33]), None);
    let mut buf = [0u8; 4];
    put_hex(&mut buf, 0xab);
    assert_eq!(&buf, b"00ab");
    // Every length, odd ones too, against the formatter.
    for v in [0u128, 0xab, 0x0123_4567_89ab_cdef, u128::MAX, 7 << 100] {
        for len in 1..=32 {
            let mut buf = [0u8; 32];
            put_hex(&mut buf[..len], v);
            let want = format!("{v:032x}");
            assert_eq!(&buf[..len], &want.as_bytes()[32 - len..], "{v:x} in {len}");
        }
    }
    assert_eq!(trim_ows(b" \t a b\t "), b"a b");
    assert_eq!(trim_ows(b"  "), b"");
}
