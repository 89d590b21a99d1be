//! A [`metrics::Recorder`] for the `metrics` crate facade (feature
//! `metrics-rs`): `metrics::counter!`, `gauge!` and `histogram!` with their
//! labels land in the agent's counters, gauges and histograms, so they are
//! exported over OTLP and rendered in the Prometheus text like the agent's own.
//!
//! ```no_run
//! # fn f(agent: &agent::Agent) {
//! agent::metrics::facade::install(agent).expect("no other recorder installed");
//! metrics::counter!("jobs.done", "queue" => "email").increment(1);
//! metrics::histogram!("jobs.duration", "queue" => "email").record(0.25);
//! # }
//! ```
//!
//! Label keys become attribute keys, which the agent keeps as `&'static str`:
//! each distinct key is interned once for the life of the process (label keys
//! are a small, fixed vocabulary; values are not interned).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    CounterFn, GaugeFn, HistogramFn, Key, KeyName, Metadata, Recorder, SetRecorderError,
    SharedString, Unit,
};

use crate::Agent;

/// Installs an [`AgentRecorder`] for `agent` as the process-wide recorder.
pub fn install(agent: &Agent) -> Result<(), SetRecorderError<AgentRecorder>> {
    metrics::set_global_recorder(AgentRecorder::new(agent))
}

/// Records the facade's metrics into one agent.
pub struct AgentRecorder {
    agent: Agent,
    /// One handle per counter key, so `absolute` totals compare against the
    /// last one whatever call site registered the key.
    counters: Mutex<HashMap<Key, Arc<FacadeCounter>>>,
}

impl AgentRecorder {
    pub fn new(agent: &Agent) -> AgentRecorder {
        AgentRecorder {
            agent: agent.clone(),
            counters: Mutex::new(HashMap::new()),
        }
    }
}

/// The interned copy of a label key.
fn intern(key: &str) -> &'static str {
    static KEYS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut keys = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(k) = keys.get(key) {
        return k;
    }
    let leaked: &'static str = Box::leak(key.to_owned().into_boxed_str());
    keys.insert(leaked);
    leaked
}

/// A registered key's labels, ready to be passed as attributes.
struct Labels(Vec<(&'static str, Box<str>)>);

impl Labels {
    fn of(key: &Key) -> Labels {
        Labels(
            key.labels()
                .map(|l| (intern(l.key()), Box::from(l.value())))
                .collect(),
        )
    }

    /// Calls `f` with the labels as an attribute slice, on the stack for up to
    /// eight labels (a record then allocates nothing).
    fn with<R>(&self, f: impl FnOnce(&[(&'static str, &str)]) -> R) -> R {
        const INLINE: usize = 8;
        if self.0.len() <= INLINE {
            let mut buf: [(&'static str, &str); INLINE] = [("", ""); INLINE];
            for (slot, (k, v)) in buf.iter_mut().zip(&self.0) {
                *slot = (k, v);
            }
            f(&buf[..self.0.len()])
        } else {
            let attrs: Vec<(&'static str, &str)> = self.0.iter().map(|(k, v)| (*k, &**v)).collect();
            f(&attrs)
        }
    }
}

/// The UCUM unit OpenTelemetry expects for a facade unit.
fn ucum(unit: Unit) -> &'static str {
    match unit {
        Unit::Count => "1",
        Unit::Percent => "%",
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Tebibytes => "TiBy",
        Unit::Gibibytes => "GiBy",
        Unit::Mebibytes => "MiBy",
        Unit::Kibibytes => "KiBy",
        Unit::Bytes => "By",
        Unit::TerabitsPerSecond => "Tbit/s",
        Unit::GigabitsPerSecond => "Gbit/s",
        Unit::MegabitsPerSecond => "Mbit/s",
        Unit::KilobitsPerSecond => "kbit/s",
        Unit::BitsPerSecond => "bit/s",
        Unit::CountPerSecond => "1/s",
    }
}

struct FacadeCounter {
    counter: crate::metrics::Counter,
    labels: Labels,
    /// The last `absolute` value, so an absolute total becomes an add.
    absolute: AtomicU64,
}

impl CounterFn for FacadeCounter {
    fn increment(&self, value: u64) {
        self.labels.with(|attrs| self.counter.add(value, attrs));
    }

    fn absolute(&self, value: u64) {
        let previous = self.absolute.fetch_max(value, Ordering::Relaxed);
        if value > previous {
            self.increment(value - previous);
        }
    }
}

struct FacadeGauge {
    gauge: crate::metrics::Gauge,
    labels: Labels,
}

impl GaugeFn for FacadeGauge {
    fn increment(&self, value: f64) {
        self.labels.with(|attrs| self.gauge.adjust(value, attrs));
    }

    fn decrement(&self, value: f64) {
        self.labels.with(|attrs| self.gauge.adjust(-value, attrs));
    }

    fn set(&self, value: f64) {
        self.labels.with(|attrs| self.gauge.set(value, attrs));
    }
}

struct FacadeHistogram {
    histogram: crate::metrics::Histogram,
    labels: Labels,
}

impl HistogramFn for FacadeHistogram {
    fn record(&self, value: f64) {
        self.labels
            .with(|attrs| self.histogram.record(value, attrs));
    }
}

impl Recorder for AgentRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let counter = self
            .agent
            .counter(key.as_str())
            .with_description(description.into_owned());
        if let Some(unit) = unit {
            let _ = counter.with_unit(ucum(unit));
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let gauge = self
            .agent
            .gauge(key.as_str())
            .with_description(description.into_owned());
        if let Some(unit) = unit {
            let _ = gauge.with_unit(ucum(unit));
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let histogram = self
            .agent
            .histogram(key.as_str())
            .with_description(description.into_owned());
        if let Some(unit) = unit {
            let _ = histogram.with_unit(ucum(unit));
        }
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Counter {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let counter = counters
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(FacadeCounter {
                    counter: self.agent.counter(key.name()),
                    labels: Labels::of(key),
                    absolute: AtomicU64::new(0),
                })
            })
            .clone();
        metrics::Counter::from_arc(counter)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(FacadeGauge {
            gauge: self.agent.gauge(key.name()),
            labels: Labels::of(key),
        }))
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(Arc::new(FacadeHistogram {
            histogram: self.agent.histogram(key.name()),
            labels: Labels::of(key),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentBuilder, Config};

    #[test]
    fn facade_metrics_land_in_the_agents_instruments() {
        let guard = AgentBuilder::from_config(Config::default())
            .service_name("facade")
            .disabled(true)
            .json_logs(false)
            .start()
            .expect("agent starts");
        let recorder = AgentRecorder::new(guard.agent());
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_histogram!("jobs.duration", Unit::Seconds, "Job durations");
            metrics::counter!("jobs.done", "queue" => "email").increment(2);
            metrics::counter!("jobs.done", "queue" => "email").increment(3);
            metrics::counter!("jobs.total").absolute(10);
            metrics::counter!("jobs.total").absolute(12);
            let g = metrics::gauge!("jobs.running", "queue" => "email");
            g.increment(3.0);
            g.decrement(1.0);
            for v in [0.1, 0.2, 0.3] {
                metrics::histogram!("jobs.duration", "queue" => "email").record(v);
            }
        });
        let snapshot = guard.agent().metrics_snapshot();
        let counter = |name: &str| {
            snapshot
                .counters
                .iter()
                .find(|c| &*c.name == name)
                .unwrap_or_else(|| panic!("{name} in {snapshot:?}"))
        };
        assert_eq!(
            counter("jobs.done")
                .series_with(&[("queue", "email")])
                .map(|s| s.value),
            Some(5)
        );
        assert_eq!(counter("jobs.total").series[0].value, 12);
        assert_eq!(snapshot.gauges[0].series[0].value, 2.0);
        let h = &snapshot.histograms[0];
        assert_eq!((&*h.name, h.unit.as_str()), ("jobs.duration", "s"));
        assert_eq!(h.description, "Job durations");
        assert_eq!(h.series[0].value.count, 3);
        assert!((h.series[0].value.sum - 0.6).abs() < 1e-9);
        guard.shutdown().expect("shut down");
    }
}
