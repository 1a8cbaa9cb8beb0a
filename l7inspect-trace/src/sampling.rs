//! [`Sampler`]: which spans are recorded, by the specification's
//! `OTEL_TRACES_SAMPLER` rules, plus the caller's B3 decisions that a
//! parent's flags cannot carry; and the random ids of new spans.
//!
//! The rules are the OpenTelemetry SDK's (same trace-id ratio test, so a
//! ratio sampler here and in an SDK-instrumented service agree on a trace):
//! a parent-based sampler follows a parent's sampled flag and decides roots
//! with its root sampler. Two B3 cases carry a decision, or the lack of one,
//! without a usable flag ([`CallerSampling`]):
//! - a **sampling-only** header (`b3: 0`, `b3: 1`, `b3: d`, or
//!   `X-B3-Sampled`/`X-B3-Flags` without ids): a decision but no parent; the
//!   new root follows it;
//! - a context that **deferred** the decision (ids, no sampling state): the
//!   parent's flags say "not sampled", which would drop the trace for every
//!   service downstream; it is decided as a new root would be (by ratio, on
//!   the caller's trace id).
//!
//! A sampler that is not parent-based ignores callers by definition, and
//! these hints too.
//!
//! The sampler is a plain value (no trait object, no [`Context`](opentelemetry::Context)
//! per request): a decision is a few comparisons and allocates nothing.

use std::cell::RefCell;

use opentelemetry::trace::{SpanContext, SpanId, TraceId};
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

use crate::export::SamplerConfig;

/// The caller's sampling state where the parent context's flags cannot
/// carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerSampling {
    /// A B3 sampling-only header without ids: sampled (`1`, `d`) or not
    /// (`0`). The new span is a root that follows it.
    Decided(bool),
    /// A B3 context without sampling state: decide as for a new root, on
    /// the caller's trace id.
    Deferred,
}

/// Decides whether a new span is sampled. Cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    config: SamplerConfig,
}

/// How roots (and, for the non-parent-based samplers, every span) are decided.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    On,
    Off,
    /// Sampled when the trace id's low 63 bits fall under this bound.
    Ratio(u64),
}

// === impl Sampler ===

impl Sampler {
    /// The sampler for `config`.
    pub fn new(config: SamplerConfig) -> Self {
        Self { config }
    }

    /// Its configuration.
    pub fn config(&self) -> SamplerConfig {
        self.config
    }

    /// Whether a span of trace `trace_id` is sampled, given its parent (a
    /// valid context, usually remote) and the caller's B3 hint.
    pub fn should_sample(
        &self,
        parent: Option<&SpanContext>,
        hint: Option<CallerSampling>,
        trace_id: TraceId,
    ) -> bool {
        let (root, parent_based) = match self.config {
            SamplerConfig::AlwaysOn => (Rule::On, false),
            SamplerConfig::AlwaysOff => (Rule::Off, false),
            SamplerConfig::TraceIdRatio(r) => (Rule::ratio(r), false),
            SamplerConfig::ParentBasedAlwaysOn => (Rule::On, true),
            SamplerConfig::ParentBasedAlwaysOff => (Rule::Off, true),
            SamplerConfig::ParentBasedTraceIdRatio(r) => (Rule::ratio(r), true),
        };
        if !parent_based {
            return root.decide(trace_id);
        }
        match (hint, parent.filter(|p| p.is_valid())) {
            (Some(CallerSampling::Decided(sampled)), _) => sampled,
            (Some(CallerSampling::Deferred), _) | (None, None) => root.decide(trace_id),
            (None, Some(parent)) => parent.is_sampled(),
        }
    }
}

// === impl Rule ===

impl Rule {
    /// The SDK's `TraceIdRatioBased`: ratios ≥ 1 sample everything.
    fn ratio(r: f64) -> Self {
        if r >= 1.0 {
            Self::On
        } else {
            Self::Ratio((r.max(0.0) * (1u64 << 63) as f64) as u64)
        }
    }

    fn decide(self, trace_id: TraceId) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Ratio(bound) => {
                let bytes = trace_id.to_bytes();
                let mut low = [0; 8];
                low.copy_from_slice(&bytes[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

// === ids ===

thread_local! {
    /// A fast generator per thread, seeded from the OS, as the SDK's
    /// `RandomIdGenerator` does: ids need to be unique, not secret.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// A new random trace id (never the invalid all-zero one).
pub fn new_trace_id() -> TraceId {
    IDS.with(|rng| {
        let mut rng = rng.borrow_mut();
        loop {
            let id: u128 = rng.random();
            if id != 0 {
                return TraceId::from(id);
            }
        }
    })
}

/// A new random span id (never the invalid all-zero one).
pub fn new_span_id() -> SpanId {
    IDS.with(|rng| {
        let mut rng = rng.borrow_mut();
        loop {
            let id: u64 = rng.random();
            if id != 0 {
                return SpanId::from(id);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceState};

    fn decide(
        sampler: SamplerConfig,
        parent: Option<&SpanContext>,
        hint: Option<CallerSampling>,
        trace: u128,
    ) -> bool {
        Sampler::new(sampler).should_sample(parent, hint, TraceId::from(trace))
    }

    fn remote_parent(sampled: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(7),
            SpanId::from(9),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }

    #[test]
    fn a_sampling_only_decision_overrides_the_ratio() {
        let none = SamplerConfig::ParentBasedTraceIdRatio(0.0);
        let all = SamplerConfig::ParentBasedAlwaysOn;
        let accept = Some(CallerSampling::Decided(true));
        let deny = Some(CallerSampling::Decided(false));
        assert!(decide(none, None, accept, 1));
        assert!(!decide(all, None, deny, 1));
        // Without a hint: the configured ratio.
        assert!(!decide(none, None, None, 1));
        assert!(decide(all, None, None, 1));
    }

    #[test]
    fn a_deferred_parent_is_decided_as_a_root() {
        let deferred = Some(CallerSampling::Deferred);
        let on = SamplerConfig::ParentBasedAlwaysOn;
        let off = SamplerConfig::ParentBasedTraceIdRatio(0.0);
        let unsampled = remote_parent(false);
        assert!(decide(on, Some(&unsampled), deferred, 7));
        assert!(!decide(off, Some(&unsampled), deferred, 7));
        // The same parent whose flag says "not sampled" is followed.
        assert!(!decide(on, Some(&unsampled), None, 7));
        assert!(decide(off, Some(&remote_parent(true)), None, 7));
    }

    #[test]
    fn samplers_that_ignore_parents_ignore_hints() {
        let deny = Some(CallerSampling::Decided(false));
        assert!(decide(SamplerConfig::AlwaysOn, None, deny, 1));
        assert!(!decide(
            SamplerConfig::AlwaysOff,
            Some(&remote_parent(true)),
            None,
            1
        ));
    }

    /// The same decisions as the SDK's samplers, which services
    /// instrumented with the Rust SDK make for the same trace ids.
    #[test]
    fn ratio_decisions_match_the_sdk() {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        for ratio in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let sdk = SamplerConfig::TraceIdRatio(ratio).to_sampler();
            for i in 0..2000u128 {
                let trace = i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 1;
                let want = sdk
                    .should_sample(None, TraceId::from(trace), "x", &SpanKind::Server, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(
                    decide(SamplerConfig::TraceIdRatio(ratio), None, None, trace),
                    want
                );
            }
        }
    }

    #[test]
    fn ids_are_valid_and_differ() {
        let a = (new_trace_id(), new_span_id());
        let b = (new_trace_id(), new_span_id());
        assert!(a.0 != TraceId::INVALID && a.1 != SpanId::INVALID);
        assert_ne!(a, b);
    }
}
