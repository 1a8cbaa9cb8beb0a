//! Inferred parents: a parent for the outbound calls of an application that
//! forwards no trace context, when only one is possible.
//!
//! The sidecar sees both sides of its workload: the inbound requests it
//! hands to the application, and the calls the application makes. When a
//! call carries no trace context and **exactly one** inbound request is in
//! flight as it starts, the call almost always belongs to that request (the
//! exception: a background task of the application calling out meanwhile,
//! which is why such a span says it was inferred). With two or more in
//! flight, nothing is guessed: the call's span is a root with links to (a
//! bounded number of) the candidates.
//!
//! [`InFlight`] is the set of inbound requests in flight, shared by one
//! workload's inbound and outbound observers; [`InFlight::infer`] is the
//! decision for a call, and [`InferStats`] counts the decisions by outcome.
//!
//! ```
//! use l7inspect_trace::infer::{InFlight, Inference};
//! use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
//!
//! let inflight = InFlight::default();
//! assert!(matches!(inflight.infer(4), Inference::None));
//! let request = SpanContext::new(TraceId::from(1u128), SpanId::from(2u64), TraceFlags::SAMPLED, false, TraceState::NONE);
//! let guard = inflight.enter(&request);
//! match inflight.infer(4) {
//!     Inference::Parent(p) => assert_eq!(p.span_id(), SpanId::from(2u64)),
//!     other => panic!("{other:?}"),
//! }
//! drop(guard); // the request ended
//! assert!(matches!(inflight.infer(4), Inference::None));
//! ```

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

pub use crate::span::SpanLink;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// `l7inspect.parent.inferred`: on a span whose parent was inferred.
pub const PARENT_INFERRED: &str = "l7inspect.parent.inferred";

/// The default most links of an ambiguous call's span.
pub const DEFAULT_MAX_LINKS: usize = 4;

/// The inbound requests in flight of one workload. Cheap to clone (clones
/// share the set).
///
/// Entering and leaving cost a lock each and a slot of a slab (no
/// allocation once the slab has grown to the most requests in flight at
/// once); asking costs an atomic load when nothing is in flight, a lock
/// otherwise.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Requests in flight (the slab's occupied slots).
    count: AtomicUsize,
    slab: Mutex<Slab>,
}

#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Option<Entry>>,
    /// Free slots, reused first.
    free: Vec<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

/// An inbound request's place in [`InFlight`]: it leaves when this is
/// dropped (its observation ended).
#[derive(Debug)]
pub struct InFlightGuard {
    inner: Arc<Inner>,
    slot: usize,
}

/// What [`InFlight::infer`] decided for a call that carries no context.
#[derive(Clone, Debug, PartialEq)]
pub enum Inference {
    /// No inbound request in flight: a root, as before.
    None,
    /// Exactly one: the call's parent (a local span: not remote).
    Parent(SpanContext),
    /// Two or more: a root, linked to (at most the asked number of) them.
    Ambiguous(Vec<SpanLink>),
}

impl InFlight {
    /// Registers an inbound request whose span context is `cx`, until the
    /// guard is dropped.
    pub fn enter(&self, cx: &SpanContext) -> InFlightGuard {
        let entry = Entry {
            trace_id: cx.trace_id(),
            span_id: cx.span_id(),
            flags: cx.trace_flags(),
        };
        let mut slab = self.inner.lock();
        let slot = match slab.free.pop() {
            Some(i) => {
                slab.slots[i] = Some(entry);
                i
            }
            None => {
                slab.slots.push(Some(entry));
                slab.slots.len() - 1
            }
        };
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        drop(slab);
        InFlightGuard {
            inner: self.inner.clone(),
            slot,
        }
    }

    /// How many inbound requests are in flight.
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parent of a call that starts now and carries no context, with at
    /// most `max_links` links when it is ambiguous.
    pub fn infer(&self, max_links: usize) -> Inference {
        if self.is_empty() {
            return Inference::None;
        }
        let slab = self.inner.lock();
        let mut entries = slab.slots.iter().flatten();
        let Some(first) = entries.next() else {
            return Inference::None;
        };
        let Some(second) = entries.next() else {
            return Inference::Parent(SpanContext::new(
                first.trace_id,
                first.span_id,
                first.flags,
                false,
                TraceState::NONE,
            ));
        };
        let links = [first, second]
            .into_iter()
            .chain(entries)
            .take(max_links)
            .map(|e| SpanLink {
                trace_id: e.trace_id,
                span_id: e.span_id,
                flags: e.flags,
            })
            .collect();
        Inference::Ambiguous(links)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab> {
        // Every change is complete before anything can panic.
        self.slab.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut slab = self.inner.lock();
        if let Some(slot) = slab.slots.get_mut(self.slot)
            && slot.take().is_some()
        {
            slab.free.push(self.slot);
            self.inner.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How a call's parent was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// The call carried a trace context: left as it was.
    context,
    /// Exactly one inbound request was in flight: its child.
    inferred,
    /// Two or more were: a root with links.
    ambiguous,
    /// None was (or inference is off): a root.
    none,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// `l7inspect_parent_inference_total{outcome}`: outbound calls (HTTP,
/// gRPC, database commands) by how their parent was decided. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct InferStats {
    family: Family<OutcomeLabels, Counter>,
    /// The four counters, looked up once.
    counters: Arc<[Counter; 4]>,
}

impl Default for InferStats {
    fn default() -> Self {
        let family = Family::<OutcomeLabels, Counter>::default();
        let get = |outcome| family.get_or_create(&OutcomeLabels { outcome }).clone();
        let counters = Arc::new([
            get(Outcome::context),
            get(Outcome::inferred),
            get(Outcome::ambiguous),
            get(Outcome::none),
        ]);
        Self { family, counters }
    }
}

impl InferStats {
    /// Registers the counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "l7inspect_parent_inference",
            "Outbound calls (HTTP, gRPC, database commands) by how their parent was decided: context (carried one), inferred (the one inbound request in flight), ambiguous (two or more were: a root with links), none",
            self.family.clone(),
        );
    }

    /// Counts one call.
    pub fn count(&self, outcome: Outcome) {
        let i = match outcome {
            Outcome::context => 0,
            Outcome::inferred => 1,
            Outcome::ambiguous => 2,
            Outcome::none => 3,
        };
        self.counters[i].inc();
    }

    /// The count of `outcome` so far.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.family.get_or_create(&OutcomeLabels { outcome }).get()
    }
}

impl Inference {
    /// Its outcome label.
    pub fn outcome(&self) -> Outcome {
        match self {
            Inference::None => Outcome::none,
            Inference::Parent(_) => Outcome::inferred,
            Inference::Ambiguous(_) => Outcome::ambiguous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(n: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(u128::from(n)),
            SpanId::from(n),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        )
    }

    #[test]
    fn one_in_flight_is_the_parent_two_are_links() {
        let inflight = InFlight::default();
        let a = inflight.enter(&cx(1));
        match inflight.infer(4) {
            Inference::Parent(p) => {
                assert_eq!(p.trace_id(), TraceId::from(1u128));
                assert_eq!(p.span_id(), SpanId::from(1u64));
                assert!(!p.is_remote(), "the inbound span is this process's");
            }
            other => panic!("{other:?}"),
        }
        let b = inflight.enter(&cx(2));
        let c = inflight.enter(&cx(3));
        match inflight.infer(2) {
            Inference::Ambiguous(links) => {
                assert_eq!(links.len(), 2, "bounded");
                assert_eq!(links[0].span_id, SpanId::from(1u64));
            }
            other => panic!("{other:?}"),
        }
        drop(a);
        drop(c);
        // Slots are reused; what is left is the one in flight.
        let d = inflight.enter(&cx(4));
        assert_eq!(inflight.len(), 2);
        drop(b);
        match inflight.infer(4) {
            Inference::Parent(p) => assert_eq!(p.span_id(), SpanId::from(4u64)),
            other => panic!("{other:?}"),
        }
        drop(d);
        assert_eq!(inflight.infer(4), Inference::None);
        assert!(inflight.is_empty());
    }

    #[test]
    fn stats_count_by_outcome() {
        let stats = InferStats::default();
        stats.count(Outcome::inferred);
        stats.count(Outcome::inferred);
        stats.count(Outcome::none);
        assert_eq!(stats.get(Outcome::inferred), 2);
        assert_eq!(stats.get(Outcome::ambiguous), 0);
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("l7inspect_parent_inference_total{outcome=\"inferred\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("l7inspect_parent_inference_total{outcome=\"ambiguous\"} 0"),
            "{text}"
        );
    }
}
