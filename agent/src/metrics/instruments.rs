//! Application instruments: counters and gauges a service records itself, read
//! locally with the RED series and exported by the agent's thread. Each
//! instrument keeps its series in its own map keyed by the attribute set and
//! capped like the RED series.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::clock::unix_nanos;

/// Set (to `true`) on the one series new attribute sets fold into once an
/// instrument has reached its cap.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// The longest instrument name the OpenTelemetry API accepts.
const MAX_NAME_LEN: usize = 255;

#[derive(Clone, Copy)]
enum Op {
    Add(u64),
    Set(f64),
}

impl Op {
    fn apply(self, value: &AtomicU64) {
        match self {
            Op::Add(n) => {
                value.fetch_add(n, Ordering::Relaxed);
            }
            Op::Set(v) => value.store(v.to_bits(), Ordering::Relaxed),
        }
    }
}

type SeriesAttributes = Arc<[(&'static str, Box<str>)]>;

struct Series {
    attributes: SeriesAttributes,
    /// The counter's total, or the gauge's last value as `f64` bits.
    value: AtomicU64,
}

#[derive(Default)]
struct Metadata {
    description: String,
    unit: String,
}

struct Instrument {
    name: Arc<str>,
    metadata: Mutex<Metadata>,
    start_unix_nanos: u64,
    max_series: usize,
    series: RwLock<HashMap<Box<str>, Series>>,
    overflow: AtomicU64,
    /// Whether anything folded into `overflow` yet (a gauge's 0.0 is a value).
    overflowed: AtomicBool,
}

/// Per-thread buffers for the series key, so recording into an existing series
/// allocates nothing once the thread has recorded once.
#[derive(Default)]
struct Scratch {
    order: Vec<usize>,
    key: String,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Writes the canonical key of `attributes` (sorted by key, a repeated key keeps
/// its last value) and leaves in `order` the indices it kept, in key order.
/// Lengths prefix each part, so no key or value can run into the next.
fn series_key(attributes: &[(&'static str, &str)], scratch: &mut Scratch) {
    let Scratch { order, key } = scratch;
    order.clear();
    order.extend(0..attributes.len());
    // The later of two equal keys sorts first and survives the dedup.
    order.sort_unstable_by(|&a, &b| attributes[a].0.cmp(attributes[b].0).then(b.cmp(&a)));
    order.dedup_by(|a, b| attributes[*a].0 == attributes[*b].0);
    key.clear();
    for &i in order.iter() {
        let (k, v) = attributes[i];
        let _ = write!(key, "{}:{k}{}:{v}", k.len(), v.len());
    }
}

impl Instrument {
    fn new(name: &str, max_series: usize) -> Instrument {
        Instrument {
            name: Arc::from(name),
            metadata: Mutex::new(Metadata::default()),
            start_unix_nanos: unix_nanos(SystemTime::now()),
            max_series: max_series.max(1),
            series: RwLock::new(HashMap::new()),
            overflow: AtomicU64::new(0),
            overflowed: AtomicBool::new(false),
        }
    }

    fn metadata(&self) -> std::sync::MutexGuard<'_, Metadata> {
        self.metadata.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, attributes: &[(&'static str, &str)], op: Op) {
        // A thread whose locals are already torn down still records, with
        // buffers of its own.
        if SCRATCH
            .try_with(|s| self.record_with(attributes, op, &mut s.borrow_mut()))
            .is_err()
        {
            self.record_with(attributes, op, &mut Scratch::default());
        }
    }

    fn record_with(&self, attributes: &[(&'static str, &str)], op: Op, scratch: &mut Scratch) {
        series_key(attributes, scratch);
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(scratch.key.as_str())
        {
            op.apply(&s.value);
            return;
        }
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(scratch.key.as_str()) {
            op.apply(&s.value);
            return;
        }
        if map.len() >= self.max_series {
            op.apply(&self.overflow);
            // After the value, so a reader that sees the flag sees a value too.
            self.overflowed.store(true, Ordering::Release);
            return;
        }
        let series = Series {
            attributes: scratch
                .order
                .iter()
                .map(|&i| (attributes[i].0, Box::from(attributes[i].1)))
                .collect(),
            value: AtomicU64::new(0),
        };
        op.apply(&series.value);
        map.insert(scratch.key.as_str().into(), series);
    }

    fn snapshot<T>(&self, read: impl Fn(u64) -> T) -> InstrumentSnapshot<T> {
        let mut series: Vec<InstrumentSeries<T>> = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| InstrumentSeries {
                attributes: s.attributes.clone(),
                overflow: false,
                value: read(s.value.load(Ordering::Relaxed)),
            })
            .collect();
        series.sort_by(|a, b| a.attributes.cmp(&b.attributes));
        if self.overflowed.load(Ordering::Acquire) {
            series.push(InstrumentSeries {
                attributes: Arc::from([]),
                overflow: true,
                value: read(self.overflow.load(Ordering::Relaxed)),
            });
        }
        let metadata = self.metadata();
        InstrumentSnapshot {
            name: self.name.clone(),
            description: metadata.description.clone(),
            unit: metadata.unit.clone(),
            start_unix_nanos: self.start_unix_nanos,
            series,
        }
    }
}

/// A monotonic counter: cumulative `u64` totals per attribute set, exported as
/// an OTLP Sum. Cheap to clone; every clone and every `agent.counter(name)` with
/// the same name records into the same instrument.
#[derive(Clone)]
pub struct Counter {
    inner: Arc<Instrument>,
}

impl Counter {
    /// Sets the description exported with the instrument (the last one set wins).
    pub fn with_description(self, description: impl Into<String>) -> Self {
        self.inner.metadata().description = description.into();
        self
    }

    /// Sets the unit (UCUM, such as `s`, `By`, `{request}`).
    pub fn with_unit(self, unit: impl Into<String>) -> Self {
        self.inner.metadata().unit = unit.into();
        self
    }

    /// Adds `n` to the series of `attributes` (in any order; a repeated key
    /// keeps its last value). Takes a short lock and one atomic add; allocates
    /// only the first time an attribute set is seen.
    pub fn add(&self, n: u64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, Op::Add(n));
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// A gauge: the last `f64` value set per attribute set, exported as an OTLP
/// Gauge. Cheap to clone, like [`Counter`].
#[derive(Clone)]
pub struct Gauge {
    inner: Arc<Instrument>,
}

impl Gauge {
    /// Sets the description exported with the instrument (the last one set wins).
    pub fn with_description(self, description: impl Into<String>) -> Self {
        self.inner.metadata().description = description.into();
        self
    }

    /// Sets the unit (UCUM, such as `s`, `By`, `1`).
    pub fn with_unit(self, unit: impl Into<String>) -> Self {
        self.inner.metadata().unit = unit.into();
        self
    }

    /// Sets the value of the series of `attributes`, as [`Counter::add`] records.
    pub fn set(&self, value: f64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, Op::Set(value));
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gauge")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// One instrument at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct InstrumentSnapshot<T> {
    pub name: Arc<str>,
    pub description: String,
    pub unit: String,
    /// When the instrument was created: the start of its cumulative totals.
    pub start_unix_nanos: u64,
    /// Sorted by attributes; the overflow series, if any, comes last.
    pub series: Vec<InstrumentSeries<T>>,
}

/// One attribute set of an instrument.
#[derive(Clone, Debug, PartialEq)]
pub struct InstrumentSeries<T> {
    /// Sorted by key; empty on the overflow series.
    pub attributes: Arc<[(&'static str, Box<str>)]>,
    /// The series attribute sets past the cap folded into
    /// ([`OVERFLOW_ATTRIBUTE`]).
    pub overflow: bool,
    pub value: T,
}

impl<T> InstrumentSeries<T> {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| &**v)
    }
}

impl<T> InstrumentSnapshot<T> {
    /// The series whose attributes are exactly `attributes` (in any order).
    pub fn series_with(&self, attributes: &[(&str, &str)]) -> Option<&InstrumentSeries<T>> {
        self.series.iter().find(|s| {
            !s.overflow
                && s.attributes.len() == attributes.len()
                && attributes.iter().all(|(k, v)| s.attribute(k) == Some(*v))
        })
    }

    pub fn overflow(&self) -> Option<&InstrumentSeries<T>> {
        self.series.iter().find(|s| s.overflow)
    }
}

pub type CounterSnapshot = InstrumentSnapshot<u64>;
pub type GaugeSnapshot = InstrumentSnapshot<f64>;

/// Why the OpenTelemetry API would reject `name`, if it would.
fn invalid_name(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Some("it is empty"),
        Some(c) if !c.is_ascii_alphabetic() => Some("it does not start with a letter"),
        _ if name.len() > MAX_NAME_LEN => Some("it is longer than 255 characters"),
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')) => {
            Some("it has characters other than letters, digits, '_', '.', '-' and '/'")
        }
        _ => None,
    }
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<Arc<str>, Arc<Instrument>>,
    gauges: BTreeMap<Arc<str>, Arc<Instrument>>,
}

/// Every counter and gauge of one agent, by name.
pub(crate) struct Instruments {
    max_series: usize,
    registry: Mutex<Registry>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Instruments {
    pub(crate) fn new(max_series: usize) -> Instruments {
        Instruments {
            max_series,
            registry: Mutex::new(Registry::default()),
        }
    }

    /// The counter named `name`, created on first use; the second value is a
    /// warning for the service's log when the name is questionable.
    pub(crate) fn counter(&self, name: &str) -> (Counter, Option<String>) {
        let (inner, warning) = self.get_or_create(name, Kind::Counter);
        (Counter { inner }, warning)
    }

    pub(crate) fn gauge(&self, name: &str) -> (Gauge, Option<String>) {
        let (inner, warning) = self.get_or_create(name, Kind::Gauge);
        (Gauge { inner }, warning)
    }

    fn get_or_create(&self, name: &str, kind: Kind) -> (Arc<Instrument>, Option<String>) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let Registry { counters, gauges } = &mut *registry;
        let (own, other, other_kind) = match kind {
            Kind::Counter => (counters, &*gauges, "gauge"),
            Kind::Gauge => (gauges, &*counters, "counter"),
        };
        if let Some(existing) = own.get(name) {
            return (existing.clone(), None);
        }
        // Still recorded and exported as asked: losing the data would be worse
        // than a name a backend may not like.
        let warning = if let Some(reason) = invalid_name(name) {
            Some(format!(
                "metric instrument name {name:?} is not a valid OpenTelemetry instrument name: {reason}"
            ))
        } else if other.contains_key(name) {
            Some(format!(
                "metric instrument name {name:?} is used by a {other_kind} too; both are exported under the same name"
            ))
        } else {
            None
        };
        let instrument = Arc::new(Instrument::new(name, self.max_series));
        own.insert(instrument.name.clone(), instrument.clone());
        (instrument, warning)
    }

    fn all(&self) -> (Vec<Arc<Instrument>>, Vec<Arc<Instrument>>) {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        (
            registry.counters.values().cloned().collect(),
            registry.gauges.values().cloned().collect(),
        )
    }

    /// Counters and gauges sorted by name; instruments without a series yet are
    /// left out.
    pub(crate) fn snapshot(&self) -> (Vec<CounterSnapshot>, Vec<GaugeSnapshot>) {
        // The registry lock is not held while reading the series.
        let (counters, gauges) = self.all();
        (
            counters
                .iter()
                .map(|c| c.snapshot(|v| v))
                .filter(|s| !s.series.is_empty())
                .collect(),
            gauges
                .iter()
                .map(|g| g.snapshot(f64::from_bits))
                .filter(|s| !s.series.is_empty())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(instruments: &Instruments, name: &str) -> Counter {
        let (c, warning) = instruments.counter(name);
        assert_eq!(warning, None);
        c
    }

    #[test]
    fn attribute_order_does_not_make_a_new_series() {
        let instruments = Instruments::new(16);
        let c = counter(&instruments, "shop.cache.requests");
        c.add(1, &[("cache.layer", "memory"), ("cache.result", "hit")]);
        c.add(2, &[("cache.result", "hit"), ("cache.layer", "memory")]);
        c.add(5, &[("cache.layer", "redis"), ("cache.result", "hit")]);
        let (counters, gauges) = instruments.snapshot();
        assert!(gauges.is_empty());
        assert_eq!(counters.len(), 1);
        let s = &counters[0];
        assert_eq!(s.series.len(), 2);
        let memory = s
            .series_with(&[("cache.result", "hit"), ("cache.layer", "memory")])
            .expect("memory series");
        assert_eq!(memory.value, 3);
        assert_eq!(
            memory
                .attributes
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>(),
            ["cache.layer", "cache.result"]
        );
        assert_eq!(
            s.series_with(&[("cache.layer", "redis"), ("cache.result", "hit")])
                .map(|s| s.value),
            Some(5)
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let instruments = Instruments::new(16);
        let c = counter(&instruments, "jobs");
        c.add(1, &[("queue", "a"), ("result", "ok"), ("queue", "b")]);
        c.add(1, &[("result", "ok"), ("queue", "b")]);
        let (counters, _) = instruments.snapshot();
        assert_eq!(counters[0].series.len(), 1);
        let s = &counters[0].series[0];
        assert_eq!(s.attribute("queue"), Some("b"));
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(s.value, 2);
    }

    #[test]
    fn keys_and_values_cannot_run_into_each_other() {
        let instruments = Instruments::new(16);
        let c = counter(&instruments, "ambiguous");
        c.add(1, &[("a", "b:c")]);
        c.add(1, &[("a", "b"), ("c", "")]);
        c.add(1, &[]);
        let (counters, _) = instruments.snapshot();
        assert_eq!(counters[0].series.len(), 3);
        assert!(counters[0].series.iter().all(|s| s.value == 1));
    }

    #[test]
    fn the_same_name_is_the_same_instrument() {
        let instruments = Instruments::new(16);
        let first = counter(&instruments, "shop.shed").with_description("Requests shed");
        let second = counter(&instruments, "shop.shed").with_unit("{request}");
        first.add(1, &[]);
        second.add(2, &[]);
        let (counters, _) = instruments.snapshot();
        assert_eq!(counters.len(), 1);
        assert_eq!(counters[0].series[0].value, 3);
        assert_eq!(counters[0].description, "Requests shed");
        assert_eq!(counters[0].unit, "{request}");
    }

    #[test]
    fn attribute_sets_beyond_the_cap_fold_into_overflow() {
        let instruments = Instruments::new(2);
        let c = counter(&instruments, "capped");
        for (i, route) in ["a", "b", "c", "d", "c"].iter().enumerate() {
            c.add(i as u64 + 1, &[("key", route)]);
        }
        let (counters, _) = instruments.snapshot();
        let s = &counters[0];
        assert_eq!(s.series.len(), 3);
        assert_eq!(s.series_with(&[("key", "a")]).map(|s| s.value), Some(1));
        assert_eq!(s.series_with(&[("key", "b")]).map(|s| s.value), Some(2));
        let overflow = s.overflow().expect("overflow series");
        assert_eq!(overflow.value, 3 + 4 + 5);
        assert!(overflow.attributes.is_empty());
        assert!(std::ptr::eq(overflow, s.series.last().expect("last")));

        let (g, _) = instruments.gauge("capped.gauge");
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            g.set(i as f64 + 0.5, &[("key", key)]);
        }
        let (_, gauges) = instruments.snapshot();
        assert_eq!(gauges[0].overflow().map(|s| s.value), Some(2.5));
    }

    #[test]
    fn gauges_keep_the_last_value_and_share_names_with_counters() {
        let instruments = Instruments::new(16);
        let (g, warning) = instruments.gauge("shop.breaker.state");
        assert_eq!(warning, None);
        g.set(2.0, &[("dependency", "inventory")]);
        g.set(0.0, &[("dependency", "inventory")]);
        g.set(-1.25, &[("dependency", "shipping")]);
        let (c, warning) = instruments.counter("shop.breaker.state");
        assert!(warning.expect("warning").contains("gauge"), "conflict");
        c.add(1, &[]);
        let (counters, gauges) = instruments.snapshot();
        assert_eq!(counters.len(), 1);
        let g = &gauges[0];
        assert_eq!(
            g.series_with(&[("dependency", "inventory")])
                .map(|s| s.value),
            Some(0.0)
        );
        assert_eq!(
            g.series_with(&[("dependency", "shipping")])
                .map(|s| s.value),
            Some(-1.25)
        );
        assert!(g.overflow().is_none());
    }

    #[test]
    fn instruments_without_series_are_not_in_the_snapshot() {
        let instruments = Instruments::new(16);
        let _unused = counter(&instruments, "never.added");
        let (counters, gauges) = instruments.snapshot();
        assert!(counters.is_empty() && gauges.is_empty());
    }

    #[test]
    fn invalid_names_are_reported_but_still_recorded() {
        let instruments = Instruments::new(16);
        for name in ["", "1st", "with space", &"x".repeat(256)] {
            let (c, warning) = instruments.counter(name);
            assert!(warning.is_some(), "{name:?} accepted silently");
            c.add(1, &[]);
        }
        assert_eq!(instruments.snapshot().0.len(), 4);
        for name in ["a", "shop.cache.requests", "a_b-c/d.E9"] {
            assert_eq!(invalid_name(name), None, "{name:?}");
        }
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        const THREADS: u64 = 8;
        const ADDS: u64 = 10_000;
        let instruments = Instruments::new(4);
        let c = counter(&instruments, "concurrent");
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let c = c.clone();
                scope.spawn(move || {
                    let results = ["ok", "error", "timeout", "other", "more"];
                    for i in 0..ADDS {
                        let result = results[((i + t) % 5) as usize];
                        // Alternate the order to exercise the canonical key.
                        if i % 2 == 0 {
                            c.add(1, &[("result", result), ("layer", "memory")]);
                        } else {
                            c.add(1, &[("layer", "memory"), ("result", result)]);
                        }
                    }
                });
            }
        });
        let (counters, _) = instruments.snapshot();
        let s = &counters[0];
        // 4 series kept, the fifth result folded into overflow.
        assert_eq!(s.series.len(), 5);
        assert_eq!(
            s.series.iter().map(|s| s.value).sum::<u64>(),
            THREADS * ADDS
        );
        for series in s.series.iter().filter(|s| !s.overflow) {
            assert_eq!(series.value, THREADS * ADDS / 5, "{series:?}");
        }
        assert_eq!(s.overflow().map(|s| s.value), Some(THREADS * ADDS / 5));
    }
}
