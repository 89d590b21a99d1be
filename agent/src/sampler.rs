//! Head sampling, as `OTEL_TRACES_SAMPLER` names it.

use crate::context::{SpanContext, TraceId};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps this fraction of traces, decided from the trace id so every service
    /// of a trace decides the same.
    TraceIdRatio(f64),
    /// Follows the parent's sampled flag; roots use the inner sampler.
    ParentBased(RootSampler),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::ParentBased(RootSampler::AlwaysOn)
    }
}

impl Sampler {
    /// Parses `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub fn from_env(name: &str, arg: Option<&str>) -> Result<Sampler, String> {
        let ratio = || -> Result<f64, String> {
            match arg {
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("sampler argument {a:?} is not a ratio in [0, 1]")),
            }
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(RootSampler::TraceIdRatio(ratio()?)),
            other => return Err(format!("unsupported sampler {other:?}")),
        })
    }

    pub(crate) fn should_sample(&self, parent: Option<&SpanContext>, trace_id: &TraceId) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => ratio_keeps(*r, trace_id),
            Sampler::ParentBased(root) => match parent {
                Some(p) => p.is_sampled(),
                None => match root {
                    RootSampler::AlwaysOn => true,
                    RootSampler::AlwaysOff => false,
                    RootSampler::TraceIdRatio(r) => ratio_keeps(*r, trace_id),
                },
            },
        }
    }
}

/// The same rule as the OpenTelemetry SDKs: the low 8 bytes of the trace id
/// against the ratio scaled to the u64 range.
fn ratio_keeps(ratio: f64, trace_id: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    x < (ratio * (1u64 << 63) as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_based_follows_the_parent_flag() {
        let sampler = Sampler::default();
        let parent = SpanContext {
            trace_id: TraceId([1; 16]),
            span_id: crate::context::SpanId([1; 8]),
            flags: 0,
            remote: true,
        };
        assert!(!sampler.should_sample(Some(&parent), &parent.trace_id));
        assert!(sampler.should_sample(None, &parent.trace_id));
    }

    #[test]
    fn ratio_keeps_about_that_fraction() {
        let sampler = Sampler::from_env("traceidratio", Some("0.25")).expect("valid");
        let kept = (0..10_000)
            .filter(|_| sampler.should_sample(None, &TraceId::random()))
            .count();
        assert!((2_000..3_000).contains(&kept), "kept {kept} of 10000");
    }

    #[test]
    fn bad_names_and_ratios_are_errors() {
        assert!(Sampler::from_env("jaeger_remote", None).is_err());
        assert!(Sampler::from_env("traceidratio", Some("1.5")).is_err());
    }
}
