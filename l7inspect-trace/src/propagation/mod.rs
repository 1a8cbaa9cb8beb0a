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
//!
//! [`HeaderValue`]: http::header::HeaderValue

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

mod b3;
mod header;
mod hex;
mod jaeger;
mod w3c;

pub(crate) use w3c::remote_context;

#[cfg(test)]
mod tests;

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
                Format::TraceContext => w3c::parse_traceparent(headers),
                Format::Baggage => continue,
                Format::B3 => b3::parse_single(headers),
                Format::B3Multi => b3::parse_multi(headers),
                Format::Jaeger => jaeger::parse(headers),
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
                    w3c::parse_tracestate(headers).unwrap_or_default()
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
                Format::TraceContext => w3c::inject(headers, cx, trace_id, span_id),
                Format::Baggage => {}
                Format::B3 => b3::inject_single(headers, trace_id, span_id, sampled),
                Format::B3Multi => b3::inject_multi(headers, trace_id, span_id, sampled),
                Format::Jaeger => jaeger::inject(headers, trace_id, span_id, sampled),
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

/// Whether `name` is a header some format's parser reads.
fn is_context_header(name: &HeaderName) -> bool {
    [
        &w3c::TRACEPARENT,
        &b3::B3,
        &b3::B3_TRACE_ID,
        &b3::B3_SPAN_ID,
        &b3::B3_PARENT_SPAN_ID,
        &b3::B3_SAMPLED,
        &b3::B3_FLAGS,
        &jaeger::UBER_TRACE_ID,
    ]
    .contains(&name)
}
