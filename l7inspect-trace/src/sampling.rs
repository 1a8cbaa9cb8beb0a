//! Sampling that also follows the caller's B3 decisions the SDK cannot see.
//!
//! The SDK's parent-based sampler reads the caller's decision from the
//! parent span context's sampled flag. Two B3 cases carry a decision (or the
//! lack of one) without a usable flag:
//! - a **sampling-only** header (`b3: 0`, `b3: 1`, `b3: d`, or
//!   `X-B3-Sampled`/`X-B3-Flags` without ids): a decision but no parent, so
//!   the SDK would sample a new root by ratio and ignore it;
//! - a context that **deferred** the decision (ids, no sampling state): the
//!   parent's flags then say "not sampled", so the SDK would never sample it,
//!   and every service downstream would follow.
//!
//! [`Trace`](crate::Trace) puts a [`CallerSampling`] into the parent
//! [`Context`] in those two cases only; [`CallerAwareSampler`] follows a
//! decision, and decides a deferred context as it would decide a new root
//! (by ratio, on the caller's trace id). Everything else goes to the
//! configured sampler unchanged. A sampler that is not parent-based ignores
//! callers by definition, and these hints too.

use crate::export::SamplerConfig;
use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SpanKind, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

/// The caller's sampling state where the parent context's flags cannot
/// carry it; a [`Context`] value read by [`CallerAwareSampler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerSampling {
    /// A B3 sampling-only header without ids: sampled (`1`, `d`) or not
    /// (`0`). The new span is a root that follows it.
    Decided(bool),
    /// A B3 context without sampling state: decide as for a new root, on
    /// the caller's trace id.
    Deferred,
}

/// The configured sampler, plus [`CallerSampling`] hints for parent-based
/// configurations. Give it to
/// [`ExportPipeline::tracer_provider`](crate::export::ExportPipeline::tracer_provider).
#[derive(Clone, Debug)]
pub struct CallerAwareSampler {
    /// The configured sampler.
    inner: Sampler,
    /// Its root sampler when it is parent-based; `None`: hints are ignored.
    root: Option<Sampler>,
}

impl CallerAwareSampler {
    /// The sampler for `config`.
    pub fn new(config: SamplerConfig) -> Self {
        let root = match config {
            SamplerConfig::ParentBasedAlwaysOn => Some(Sampler::AlwaysOn),
            SamplerConfig::ParentBasedAlwaysOff => Some(Sampler::AlwaysOff),
            SamplerConfig::ParentBasedTraceIdRatio(r) => Some(Sampler::TraceIdRatioBased(r)),
            SamplerConfig::AlwaysOn | SamplerConfig::AlwaysOff | SamplerConfig::TraceIdRatio(_) => {
                None
            }
        };
        Self {
            inner: config.to_sampler(),
            root,
        }
    }
}

impl ShouldSample for CallerAwareSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let hint = parent_context.and_then(|cx| cx.get::<CallerSampling>());
        match (hint, &self.root) {
            (Some(CallerSampling::Decided(sampled)), Some(_)) => SamplingResult {
                decision: if *sampled {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            },
            // As a root: no parent context, so no parent-based rule applies;
            // the trace id is the caller's.
            (Some(CallerSampling::Deferred), Some(root)) => {
                root.should_sample(None, trace_id, name, span_kind, attributes, links)
            }
            _ => self.inner.should_sample(
                parent_context,
                trace_id,
                name,
                span_kind,
                attributes,
                links,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags};

    fn decide(sampler: &CallerAwareSampler, cx: &Context, trace: u128) -> SamplingDecision {
        sampler
            .should_sample(
                Some(cx),
                TraceId::from(trace),
                "GET",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision
    }

    fn remote_parent(sampled: bool) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7),
            SpanId::from(9),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn a_sampling_only_decision_overrides_the_ratio() {
        let none = CallerAwareSampler::new(SamplerConfig::ParentBasedTraceIdRatio(0.0));
        let all = CallerAwareSampler::new(SamplerConfig::ParentBasedAlwaysOn);
        let accept = Context::new().with_value(CallerSampling::Decided(true));
        let deny = Context::new().with_value(CallerSampling::Decided(false));
        assert_eq!(decide(&none, &accept, 1), SamplingDecision::RecordAndSample);
        assert_eq!(decide(&all, &deny, 1), SamplingDecision::Drop);
        // Without a hint: the configured ratio.
        assert_eq!(decide(&none, &Context::new(), 1), SamplingDecision::Drop);
        assert_eq!(
            decide(&all, &Context::new(), 1),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn a_deferred_parent_is_decided_as_a_root() {
        let deferred = remote_parent(false).with_value(CallerSampling::Deferred);
        let on = CallerAwareSampler::new(SamplerConfig::ParentBasedAlwaysOn);
        let off = CallerAwareSampler::new(SamplerConfig::ParentBasedTraceIdRatio(0.0));
        assert_eq!(decide(&on, &deferred, 7), SamplingDecision::RecordAndSample);
        assert_eq!(decide(&off, &deferred, 7), SamplingDecision::Drop);
        // The same parent whose flag says "not sampled" is followed.
        assert_eq!(
            decide(&on, &remote_parent(false), 7),
            SamplingDecision::Drop
        );
        assert_eq!(
            decide(&off, &remote_parent(true), 7),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn samplers_that_ignore_parents_ignore_hints() {
        let on = CallerAwareSampler::new(SamplerConfig::AlwaysOn);
        let deny = Context::new().with_value(CallerSampling::Decided(false));
        assert_eq!(decide(&on, &deny, 1), SamplingDecision::RecordAndSample);
    }
}
