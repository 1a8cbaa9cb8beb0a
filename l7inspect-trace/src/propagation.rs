//! Trace-context propagation: read the caller's context from request headers
//! and write the new span's context into the forwarded request, in W3C Trace
//! Context, B3 (single and multi header) and Jaeger formats.
//!
//! Everything here is plain data and pure functions over [`http::HeaderMap`]:
//! no global propagator registry, no OpenTelemetry global state, no logging.
//! The HTTP layer owns the request, calls [`Propagators::extract`] when the
//! head arrives, counts and logs what [`Extracted::malformed`] reports, and
//! calls [`Propagators::inject`] with the new span's [`SpanContext`].
//!
//! # Which context becomes the parent
//!
//! [`Propagators`] is the ordered list from `OTEL_PROPAGATORS` (default
//! `tracecontext,baggage,b3,b3multi,jaeger`). Extraction looks at every listed
//! format and takes the parent from the **first listed format whose headers
//! hold a valid context**. A malformed header is not an error: it is recorded
//! in [`Extracted::malformed`] and the next format is tried. Formats that are
//! not listed are neither read nor written; their headers pass through.
//!
//! The parent is a remote [`SpanContext`] (`is_remote == true`). Its sampled
//! flag is the caller's decision; [`Extracted::sampled`] says whether the
//! caller made one at all (`None` when B3 deferred the decision, so that a
//! sampler may decide afresh). With no valid context anywhere, a B3
//! sampling-only header (`b3: 0`, or `X-B3-Sampled: 0` without ids) still
//! gives [`Extracted::sampled`] a value. ([`crate::sampling`] makes the
//! sampler follow both.) `tracestate` is kept only next to a
//! valid `traceparent`, and attached to the parent only when the parent has
//! the same trace id (it describes positions in that trace).
//!
//! # What is injected, and when
//!
//! [`Propagators::inject`] writes the new context in every listed format the
//! request arrived with ([`Extracted::carried`]: formats that held a valid
//! context or a B3 sampling decision), so that each downstream reads the format
//! its caller spoke. A request that carried none of them gets the first listed
//! context format (`baggage` never counts: it is not a trace context). Writing
//! a format replaces every header of that format, stale values included:
//!
//! | format | headers written | headers removed |
//! |---|---|---|
//! | `tracecontext` | `traceparent: 00-{trace}-{span}-{01\|00}`, `tracestate` from the context's [`TraceState`] | `tracestate` when the context's state is empty |
//! | `b3` | `b3: {trace}-{span}-{1\|0}` | |
//! | `b3multi` | `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled: {1\|0}` | `X-B3-ParentSpanId`, `X-B3-Flags` |
//! | `jaeger` | `uber-trace-id: {trace}:{span}:0:{1\|0}` | |
//!
//! B3 and Jaeger trace ids are written with 16 hex digits when the upper 64
//! bits are zero (a trace that came in with a 64-bit id goes out the same
//! way), otherwise with 32; W3C always uses 32. `X-B3-ParentSpanId` is removed
//! rather than set because [`SpanContext`] does not carry the parent span id
//! and the header is optional in B3; `X-B3-Flags` (debug) is removed because
//! B3 says debug must not be sent beside `X-B3-Sampled`. The `baggage` header
//! is never touched. Headers of a listed format that was malformed and is not
//! written pass through unchanged: a proxy does not delete what it did not
//! understand.
//!
//! # Allocation
//!
//! Extraction allocates only for a kept `tracestate` (the [`TraceState`]
//! owns its strings). Injection formats ids into stack buffers and builds one
//! [`HeaderValue`] per header, which copies the bytes once; the `1`/`0`
//! values of `X-B3-Sampled` are static.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

// Header names are statics rather than consts: a `HeaderName` holds `Bytes`,
// which clippy rightly flags as interior mutability in a const.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
static UBER_TRACE_ID: HeaderName = HeaderName::from_static("uber-trace-id");

/// W3C Trace Context allows at most 32 `tracestate` list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One trace-context format, named as in `OTEL_PROPAGATORS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// W3C Trace Context (`tracecontext`): `traceparent` and `tracestate`.
    TraceContext,
    /// W3C Baggage (`baggage`). Not a trace context: it may be listed, but it
    /// is never extracted or injected, and the `baggage` header passes
    /// through untouched.
    Baggage,
    /// B3 single header (`b3`):
    /// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`, or a
    /// sampling state alone (`b3: 0`).
    B3,
    /// B3 multiple headers (`b3multi`): `X-B3-TraceId`, `X-B3-SpanId`,
    /// `X-B3-ParentSpanId`, `X-B3-Sampled` and `X-B3-Flags`.
    B3Multi,
    /// Jaeger (`jaeger`):
    /// `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`, with
    /// `:` possibly URL-encoded as `%3A`.
    Jaeger,
}

/// A set of [`Format`]s, as a bitset: which formats a request carried, which
/// held a valid context, which were malformed.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FormatSet(u8);

/// The ordered list of formats to extract and inject (`OTEL_PROPAGATORS`).
///
/// Build it with [`Propagators::parse`] (the `OTEL_PROPAGATORS` syntax),
/// [`Propagators::new`] or [`Default`] (`tracecontext,baggage,b3,b3multi,jaeger`).
/// It is `Copy`: a layer can hold it by value and clone it per connection
/// without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Propagators {
    // Unused slots hold `Format::TraceContext` so that derived equality only
    // depends on `list[..len]`.
    list: [Format; Format::ALL.len()],
    len: u8,
}

/// What [`Propagators::extract`] found in a request's headers.
///
/// `valid` and the formats of B3 sampling-only headers make up `carried`;
/// `malformed` is disjoint from `carried`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's context, from the first listed format that held a valid
    /// one; remote, to be the parent of the new span.
    pub parent: Option<SpanContext>,
    /// The format `parent` came from.
    pub source: Option<Format>,
    /// The caller's sampling decision, if it made one. With a parent: its
    /// sampled flag, or `None` when B3 deferred the decision (no sampling
    /// state; the parent's flags then say "not sampled"). Without a parent:
    /// the decision of a B3 sampling-only header (`b3: 0|1|d`, or
    /// `X-B3-Sampled`/`X-B3-Flags` without ids), B3 debug meaning sampled.
    pub sampled: Option<bool>,
    /// The formats the request arrived with: a valid context or a B3
    /// sampling decision. Pass this to [`Propagators::inject`].
    pub carried: FormatSet,
    /// The formats that held a valid context.
    pub valid: FormatSet,
    /// The formats whose headers were present but unusable (wrong length,
    /// non-hex or uppercase hex, all-zero ids, bad version or flags, wrong
    /// field count, repeated header). To be counted and logged at debug.
    pub malformed: FormatSet,
}

/// An `OTEL_PROPAGATORS` value that [`Propagators::parse`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParsePropagatorsError {
    /// The list names nothing (`none` is how to say "no propagation").
    #[error(
        "empty propagator list: name one or more of tracecontext, baggage, b3, b3multi, jaeger, or `none`"
    )]
    Empty,
    /// A name that is not a propagator at all.
    #[error(
        "unknown propagator `{0}`: expected tracecontext, baggage, b3, b3multi, jaeger or none"
    )]
    Unknown(String),
    /// A propagator the OpenTelemetry specification defines (`xray`,
    /// `ottrace`) that l7inspect does not implement.
    #[error(
        "propagator `{0}` is defined by OpenTelemetry but not supported by l7inspect: use tracecontext, baggage, b3, b3multi or jaeger"
    )]
    Unsupported(String),
    /// `none` listed together with other propagators.
    #[error("`none` cannot be combined with other propagators (got `{0}`)")]
    NoneWithOthers(String),
}

/// The ids and decision read from one format's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ids {
    trace_id: u128,
    span_id: u64,
    /// `None`: B3 deferred the sampling decision.
    sampled: Option<bool>,
}

/// What one format's headers held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parsed {
    Absent,
    Malformed,
    /// A B3 sampling decision without ids.
    Decision(bool),
    Context(Ids),
}

/// A header that must appear at most once.
enum Single<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

// === impl Format ===

impl Format {
    /// Every format, in the order of the default list.
    pub const ALL: [Format; 5] = [
        Format::TraceContext,
        Format::Baggage,
        Format::B3,
        Format::B3Multi,
        Format::Jaeger,
    ];

    /// The format's name in `OTEL_PROPAGATORS`.
    pub const fn name(self) -> &'static str {
        match self {
            Format::TraceContext => "tracecontext",
            Format::Baggage => "baggage",
            Format::B3 => "b3",
            Format::B3Multi => "b3multi",
            Format::Jaeger => "jaeger",
        }
    }

    /// Whether the format carries a trace context: all but [`Format::Baggage`].
    pub const fn carries_context(self) -> bool {
        !matches!(self, Format::Baggage)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    fn from_name(name: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl FormatSet ===

impl FormatSet {
    /// The empty set.
    pub const EMPTY: FormatSet = FormatSet(0);

    /// The set of every context format (all but [`Format::Baggage`]).
    pub const CONTEXT: FormatSet = FormatSet(
        Format::TraceContext.bit()
            | Format::B3.bit()
            | Format::B3Multi.bit()
            | Format::Jaeger.bit(),
    );

    /// This set with `format` added.
    #[must_use]
    pub const fn with(self, format: Format) -> FormatSet {
        FormatSet(self.0 | format.bit())
    }

    /// Adds `format`.
    pub fn insert(&mut self, format: Format) {
        self.0 |= format.bit();
    }

    /// Whether `format` is in the set.
    pub const fn contains(self, format: Format) -> bool {
        self.0 & format.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The number of formats in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The formats in the set, in [`Format::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Format> {
        Format::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl From<Format> for FormatSet {
    fn from(format: Format) -> Self {
        FormatSet(format.bit())
    }
}

impl FromIterator<Format> for FormatSet {
    fn from_iter<T: IntoIterator<Item = Format>>(iter: T) -> Self {
        iter.into_iter().fold(FormatSet::EMPTY, FormatSet::with)
    }
}

impl BitOr for FormatSet {
    type Output = FormatSet;

    fn bitor(self, rhs: FormatSet) -> FormatSet {
        FormatSet(self.0 | rhs.0)
    }
}

impl BitOrAssign for FormatSet {
    fn bitor_assign(&mut self, rhs: FormatSet) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for FormatSet {
    type Output = FormatSet;

    fn bitand(self, rhs: FormatSet) -> FormatSet {
        FormatSet(self.0 & rhs.0)
    }
}

impl fmt::Debug for FormatSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Format::name))
            .finish()
    }
}

// === impl Propagators ===

impl Propagators {
    /// The list of `formats`, in order; a repeated format keeps its first
    /// position.
    pub fn new(formats: impl IntoIterator<Item = Format>) -> Self {
        let mut propagators = Propagators {
            list: [Format::TraceContext; Format::ALL.len()],
            len: 0,
        };
        for format in formats {
            if !propagators.contains(format) {
                propagators.list[propagators.len as usize] = format;
                propagators.len += 1;
            }
        }
        propagators
    }

    /// Parses an `OTEL_PROPAGATORS` value: comma-separated names
    /// (`tracecontext`, `baggage`, `b3`, `b3multi`, `jaeger`), ASCII
    /// case-insensitive, whitespace around names and empty items ignored,
    /// repeats collapsed; `none` alone means the empty list.
    ///
    /// The error names the offending value; `xray` and `ottrace` (in the
    /// OpenTelemetry specification, not implemented here) get their own
    /// error. An empty value is refused: the OpenTelemetry specification
    /// treats an empty variable as unset, which is for the caller reading
    /// the environment to decide.
    pub fn parse(s: &str) -> Result<Self, ParsePropagatorsError> {
        let mut formats = Vec::with_capacity(Format::ALL.len());
        let mut none = false;
        let mut items = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            items += 1;
            if name.eq_ignore_ascii_case("none") {
                none = true;
            } else if let Some(format) = Format::from_name(name) {
                formats.push(format);
            } else if name.eq_ignore_ascii_case("xray") || name.eq_ignore_ascii_case("ottrace") {
                return Err(ParsePropagatorsError::Unsupported(name.to_owned()));
            } else {
                return Err(ParsePropagatorsError::Unknown(name.to_owned()));
            }
        }
        match (items, none) {
            (0, _) => Err(ParsePropagatorsError::Empty),
            (1, true) => Ok(Propagators::new([])),
            (_, true) => Err(ParsePropagatorsError::NoneWithOthers(s.trim().to_owned())),
            (_, false) => Ok(Propagators::new(formats)),
        }
    }

    /// The formats, in order.
    pub fn formats(&self) -> &[Format] {
        &self.list[..self.len as usize]
    }

    /// Whether `format` is listed.
    pub fn contains(&self, format: Format) -> bool {
        self.formats().contains(&format)
    }

    /// Whether the list is empty (`none`): nothing is extracted or injected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The listed formats as a set.
    pub fn set(&self) -> FormatSet {
        self.formats().iter().copied().collect()
    }

    /// Reads the caller's trace context from `headers`.
    ///
    /// Every listed context format is examined, in order; the first one whose
    /// headers hold a valid context gives [`Extracted::parent`], with
    /// `is_remote == true`. Malformed headers never fail the request: they
    /// are reported in [`Extracted::malformed`] and the next format is used.
    /// See the [module docs](self) for each format's rules.
    pub fn extract(&self, headers: &HeaderMap) -> Extracted {
        let mut out = Extracted::default();
        // Per request: one pass over the names spares a request that
        // carries no context (every first hop) a hash lookup per header
        // name per format.
        if !headers.keys().any(is_context_header) {
            return out;
        }
        let mut parent: Option<Ids> = None;
        let mut decision = None;
        let mut w3c_trace_id = None;
        for &format in self.formats() {
            let parsed = match format {
                Format::TraceContext => parse_traceparent(headers),
                Format::Baggage => continue,
                Format::B3 => parse_b3(headers),
                Format::B3Multi => parse_b3_multi(headers),
                Format::Jaeger => parse_jaeger(headers),
            };
            match parsed {
                Parsed::Absent => {}
                Parsed::Malformed => out.malformed.insert(format),
                Parsed::Decision(sampled) => {
                    out.carried.insert(format);
                    decision.get_or_insert(sampled);
                }
                Parsed::Context(ids) => {
                    out.carried.insert(format);
                    out.valid.insert(format);
                    if format == Format::TraceContext {
                        w3c_trace_id = Some(ids.trace_id);
                    }
                    if parent.is_none() {
                        parent = Some(ids);
                        out.source = Some(format);
                    }
                }
            }
        }

        match parent {
            Some(ids) => {
                // W3C: "If the vendor failed to parse traceparent, it MUST NOT
                // attempt to parse tracestate." Its entries describe positions
                // in one trace, so they only go with a parent of that trace.
                let trace_state = if w3c_trace_id == Some(ids.trace_id) {
                    parse_tracestate(headers).unwrap_or_default()
                } else {
                    TraceState::NONE
                };
                let flags = if ids.sampled == Some(true) {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::NOT_SAMPLED
                };
                out.parent = Some(SpanContext::new(
                    TraceId::from(ids.trace_id),
                    SpanId::from(ids.span_id),
                    flags,
                    true,
                    trace_state,
                ));
                out.sampled = ids.sampled;
            }
            None => out.sampled = decision,
        }
        out
    }

    /// Writes `cx` into `headers` for the downstream.
    ///
    /// The formats written are the listed context formats in `carried`
    /// (normally [`Extracted::carried`] of the incoming request), or, when
    /// none of them is, the first listed context format. Each written format
    /// replaces all of its headers; see the [module docs](self) for the
    /// exact headers. An invalid `cx` (all-zero trace or span id) writes
    /// nothing, as does an empty list.
    pub fn inject(&self, headers: &mut HeaderMap, cx: &SpanContext, carried: FormatSet) {
        if !cx.is_valid() {
            return;
        }
        let listed = self.set() & FormatSet::CONTEXT;
        let mut targets = carried & listed;
        if targets.is_empty() {
            match self.formats().iter().find(|f| f.carries_context()) {
                Some(&first) => targets = first.into(),
                None => return,
            }
        }

        let trace_id = u128::from_be_bytes(cx.trace_id().to_bytes());
        let span_id = u64::from_be_bytes(cx.span_id().to_bytes());
        let sampled = cx.is_sampled();
        for format in targets.iter() {
            match format {
                Format::TraceContext => inject_tracecontext(headers, cx, trace_id, span_id),
                Format::Baggage => {}
                Format::B3 => {
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
                Format::B3Multi => {
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
                Format::Jaeger => {
                    // {trace:16|32}:{span:16}:0:{1|0}: at most 53 bytes. The
                    // parent span id field is deprecated in Jaeger; `0` is
                    // what Jaeger clients send.
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
            }
        }
    }
}

impl Default for Propagators {
    /// `tracecontext,baggage,b3,b3multi,jaeger`: every supported format, W3C first.
    fn default() -> Self {
        Propagators::new(Format::ALL)
    }
}

impl FromStr for Propagators {
    type Err = ParsePropagatorsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Propagators::parse(s)
    }
}

impl fmt::Display for Propagators {
    /// The `OTEL_PROPAGATORS` form: `tracecontext,baggage`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, format) in self.formats().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(format.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Propagators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Propagators({self})")
    }
}

// === W3C Trace Context ===

fn parse_traceparent(headers: &HeaderMap) -> Parsed {
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
fn parse_tracestate(headers: &HeaderMap) -> Option<TraceState> {
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

fn inject_tracecontext(headers: &mut HeaderMap, cx: &SpanContext, trace_id: u128, span_id: u64) {
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

// === B3 ===

fn parse_b3(headers: &HeaderMap) -> Parsed {
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

fn parse_b3_multi(headers: &HeaderMap) -> Parsed {
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

// === Jaeger ===

/// Whether `name` is a header some format's parser reads.
fn is_context_header(name: &HeaderName) -> bool {
    [
        &TRACEPARENT,
        &B3,
        &B3_TRACE_ID,
        &B3_SPAN_ID,
        &B3_PARENT_SPAN_ID,
        &B3_SAMPLED,
        &B3_FLAGS,
        &UBER_TRACE_ID,
    ]
    .contains(&name)
}

fn parse_jaeger(headers: &HeaderMap) -> Parsed {
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

// === helpers ===

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Single<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Single::Absent,
        (Some(v), None) => Single::One(trim_ows(v.as_bytes())),
        (Some(_), Some(_)) => Single::Repeated,
    }
}

/// Strips RFC 9110 optional whitespace (spaces and tabs); hyper already
/// does, but a `HeaderMap` built by hand may not have.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// 1 to 32 lowercase hex digits. Every format here specifies lowercase hex;
/// uppercase is malformed.
fn hex(v: &[u8]) -> Option<u128> {
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    let mut n: u128 = 0;
    for &b in v {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        n = n << 4 | u128::from(digit);
    }
    Some(n)
}

/// Writes `v` as `dst.len()` lowercase hex digits, zero-padded on the left.
fn put_hex(dst: &mut [u8], mut v: u128) {
    for b in dst.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Writes a B3/Jaeger trace id at the start of `buf`: 16 digits when the
/// upper half is zero, so a 64-bit trace stays 64-bit, else 32. Returns the
/// length written.
fn put_trace_id(buf: &mut [u8], trace_id: u128) -> usize {
    let n = if trace_id >> 64 == 0 { 16 } else { 32 };
    put_hex(&mut buf[..n], trace_id);
    n
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes)
        .expect("hex digits, '-', ':' and '0'/'1' are valid header value bytes")
}

#[cfg(test)]
mod tests {
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
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
    }
}
