//! Application instruments: counters, gauges, up-down counters and histograms a
//! service records itself, read
//! locally with the RED series and exported by the agent's thread. Each
//! instrument keeps its series in its own map keyed by the attribute set and
//! capped like the RED series.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::exponential::{ExpHistogram, ExpHistogramSnapshot};
use crate::clock::unix_nanos;

/// Set (to `true`) on the one series new attribute sets fold into once an
/// instrument has reached its cap.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// The longest instrument name the OpenTelemetry API accepts.
const MAX_NAME_LEN: usize = 255;

#[derive(Clone, Copy)]
enum Op {
    Add(u64),
    /// An up-down counter's change: two's complement makes a wrapping add of
    /// the `u64` bits an `i64` add.
    AddSigned(i64),
    Set(f64),
    /// A gauge moved by a delta (the `metrics` facade's increment/decrement).
    AddFloat(f64),
}

/// What one series holds: an atomic for counters and gauges, a locked
/// exponential histogram for histograms.
trait Cell: Default + Send + Sync {
    type Op: Copy;
    fn apply(&self, op: Self::Op);
}

impl Cell for AtomicU64 {
    type Op = Op;
    fn apply(&self, op: Op) {
        match op {
            Op::Add(n) => {
                self.fetch_add(n, Ordering::Relaxed);
            }
            Op::AddSigned(n) => {
                self.fetch_add(n as u64, Ordering::Relaxed);
            }
            Op::Set(v) => self.store(v.to_bits(), Ordering::Relaxed),
            Op::AddFloat(d) => {
                let _ = self.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    Some((f64::from_bits(bits) + d).to_bits())
                });
            }
        }
    }
}

/// A histogram series: cumulative count and sum, and the values of the open
/// window (one export interval) as an exponential histogram.
#[derive(Default)]
struct HistogramCell(Mutex<HistogramState>);

#[derive(Default)]
struct HistogramState {
    count: u64,
    sum: f64,
    window: ExpHistogram,
    window_start_unix_nanos: u64,
    /// The last closed window, copied at the close (off the request path).
    closed: Option<(ExpHistogramSnapshot, u64, u64)>,
}

impl Cell for HistogramCell {
    type Op = f64;
    fn apply(&self, value: f64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if value.is_finite() {
            s.count += 1;
            s.sum += value;
        }
        s.window.record(value);
    }
}

impl HistogramCell {
    fn close_window(&self, now_unix_nanos: u64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = s.window_start_unix_nanos;
        s.closed = Some((s.window.snapshot(), start, now_unix_nanos));
        s.window.reset();
        s.window_start_unix_nanos = now_unix_nanos;
    }

    fn read(&self, created_unix_nanos: u64) -> HistogramValue {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (window, start, end) = match &s.closed {
            Some((w, start, end)) => (w.clone(), *start, Some(*end)),
            None => (
                s.window.snapshot(),
                s.window_start_unix_nanos.max(created_unix_nanos),
                None,
            ),
        };
        HistogramValue {
            count: s.count,
            sum: s.sum,
            window,
            window_start_unix_nanos: start,
            window_end_unix_nanos: end,
        }
    }
}

/// A histogram series at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue {
    /// Finite values recorded since the instrument was created.
    pub count: u64,
    pub sum: f64,
    /// The last closed window (one export interval), or the open one before
    /// the first export closed it.
    pub window: ExpHistogramSnapshot,
    pub window_start_unix_nanos: u64,
    pub window_end_unix_nanos: Option<u64>,
}

type SeriesAttributes = Arc<[(&'static str, Box<str>)]>;

struct Series<C> {
    attributes: SeriesAttributes,
    /// The counter's total, the gauge's last value as `f64` bits, or the
    /// histogram's state.
    value: C,
}

#[derive(Default)]
struct Metadata {
    description: String,
    unit: String,
}

struct Instrument<C = AtomicU64> {
    name: Arc<str>,
    metadata: Mutex<Metadata>,
    start_unix_nanos: u64,
    max_series: usize,
    series: RwLock<HashMap<Box<str>, Series<C>>>,
    overflow: C,
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

impl<C: Cell> Instrument<C> {
    fn new(name: &str, max_series: usize) -> Instrument<C> {
        Instrument {
            name: Arc::from(name),
            metadata: Mutex::new(Metadata::default()),
            start_unix_nanos: unix_nanos(SystemTime::now()),
            max_series: max_series.max(1),
            series: RwLock::new(HashMap::new()),
            overflow: C::default(),
            overflowed: AtomicBool::new(false),
        }
    }

    fn metadata(&self) -> std::sync::MutexGuard<'_, Metadata> {
        self.metadata.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, attributes: &[(&'static str, &str)], op: C::Op) {
        // A thread whose locals are already torn down still records, with
        // buffers of its own.
        if SCRATCH
            .try_with(|s| self.record_with(attributes, op, &mut s.borrow_mut()))
            .is_err()
        {
            self.record_with(attributes, op, &mut Scratch::default());
        }
    }

    fn record_with(&self, attributes: &[(&'static str, &str)], op: C::Op, scratch: &mut Scratch) {
        series_key(attributes, scratch);
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(scratch.key.as_str())
        {
            s.value.apply(op);
            return;
        }
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(scratch.key.as_str()) {
            s.value.apply(op);
            return;
        }
        if map.len() >= self.max_series {
            self.overflow.apply(op);
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
            value: C::default(),
        };
        series.value.apply(op);
        map.insert(scratch.key.as_str().into(), series);
    }

    fn snapshot<T>(&self, read: impl Fn(&C) -> T) -> InstrumentSnapshot<T> {
        let mut series: Vec<InstrumentSeries<T>> = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| InstrumentSeries {
                attributes: s.attributes.clone(),
                overflow: false,
                value: read(&s.value),
            })
            .collect();
        series.sort_by(|a, b| a.attributes.cmp(&b.attributes));
        if self.overflowed.load(Ordering::Acquire) {
            series.push(InstrumentSeries {
                attributes: Arc::from([]),
                overflow: true,
                value: read(&self.overflow),
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

/// What every instrument handle offers besides recording: its metadata (set
/// through the shared instrument, so any clone may set it), its name, `Debug`.
macro_rules! instrument_handle {
    ($handle:ident) => {
        impl $handle {
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

            pub fn name(&self) -> &str {
                &self.inner.name
            }
        }

        impl fmt::Debug for $handle {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($handle))
                    .field("name", &self.inner.name)
                    .finish()
            }
        }
    };
}

/// A monotonic counter: cumulative `u64` totals per attribute set, exported as
/// an OTLP Sum. Cheap to clone; every clone and every `agent.counter(name)` with
/// the same name records into the same instrument.
#[derive(Clone)]
pub struct Counter {
    inner: Arc<Instrument>,
}

impl Counter {
    /// Adds `n` to the series of `attributes` (in any order; a repeated key
    /// keeps its last value). Takes a short lock and one atomic add; allocates
    /// only the first time an attribute set is seen.
    pub fn add(&self, n: u64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, Op::Add(n));
    }
}

instrument_handle!(Counter);

/// A gauge: the last `f64` value set per attribute set, exported as an OTLP
/// Gauge. Cheap to clone, like [`Counter`].
#[derive(Clone)]
pub struct Gauge {
    inner: Arc<Instrument>,
}

impl Gauge {
    /// Sets the value of the series of `attributes`, as [`Counter::add`] records.
    pub fn set(&self, value: f64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, Op::Set(value));
    }

    /// Moves the value of the series of `attributes` by `delta` (a new series
    /// starts at 0).
    pub fn adjust(&self, delta: f64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, Op::AddFloat(delta));
    }
}

instrument_handle!(Gauge);

/// An up-down counter: cumulative `i64` totals per attribute set that may go
/// down (queue depth, connections in use), exported as a non-monotonic OTLP Sum.
#[derive(Clone)]
pub struct UpDownCounter {
    inner: Arc<Instrument>,
}

impl UpDownCounter {
    /// Adds `n` (negative to subtract), as [`Counter::add`] records.
    pub fn add(&self, n: i64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, Op::AddSigned(n));
    }
}

instrument_handle!(UpDownCounter);

/// A histogram: the distribution of `f64` values per attribute set, as a
/// base-2 exponential histogram (scale 6, ≤ 0.55 % error at the bucket
/// midpoint; fewer buckets when the range is very wide). Exported per export
/// interval (delta temporality), so ClickHouse merges series, replicas and
/// intervals by adding buckets. Series are capped like counters.
#[derive(Clone)]
pub struct Histogram {
    inner: Arc<Instrument<HistogramCell>>,
}

impl Histogram {
    /// Records `value` into the series of `attributes` (NaN and infinities are
    /// ignored). A short lock; allocates only for a new attribute set or a
    /// value beyond the range the series has seen.
    pub fn record(&self, value: f64, attributes: &[(&'static str, &str)]) {
        self.inner.record(attributes, value);
    }
}

instrument_handle!(Histogram);

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
pub type UpDownCounterSnapshot = InstrumentSnapshot<i64>;
pub type HistogramSnapshot = InstrumentSnapshot<HistogramValue>;

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
    up_down_counters: BTreeMap<Arc<str>, Arc<Instrument>>,
    histograms: BTreeMap<Arc<str>, Arc<Instrument<HistogramCell>>>,
}

impl Registry {
    /// The kind of another instrument already named `name`, if any.
    fn other_kind(&self, name: &str, own: &str) -> Option<&'static str> {
        [
            ("counter", self.counters.contains_key(name)),
            ("gauge", self.gauges.contains_key(name)),
            ("up-down counter", self.up_down_counters.contains_key(name)),
            ("histogram", self.histograms.contains_key(name)),
        ]
        .into_iter()
        .find(|(kind, taken)| *taken && *kind != own)
        .map(|(kind, _)| kind)
    }
}

/// Every counter, gauge, up-down counter and histogram of one agent, by name.
pub(crate) struct Instruments {
    max_series: usize,
    registry: Mutex<Registry>,
}

/// Looks `name` up in the map `kind` picks, creating it on first use; the
/// warning is for the service's log when the name is questionable.
fn get_or_create<C: Cell>(
    registry: &Mutex<Registry>,
    max_series: usize,
    name: &str,
    kind: &'static str,
    map: impl FnOnce(&mut Registry) -> &mut BTreeMap<Arc<str>, Arc<Instrument<C>>>,
) -> (Arc<Instrument<C>>, Option<String>) {
    let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
    let other_kind = registry.other_kind(name, kind);
    let own = map(&mut registry);
    if let Some(existing) = own.get(name) {
        return (existing.clone(), None);
    }
    // Still recorded and exported as asked: losing the data would be worse
    // than a name a backend may not like.
    let warning = if let Some(reason) = invalid_name(name) {
        Some(format!(
            "metric instrument name {name:?} is not a valid OpenTelemetry instrument name: {reason}"
        ))
    } else {
        other_kind.map(|other_kind| format!(
            "metric instrument name {name:?} is used by a {other_kind} too; both are exported under the same name"
        ))
    };
    let instrument = Arc::new(Instrument::new(name, max_series));
    own.insert(instrument.name.clone(), instrument.clone());
    (instrument, warning)
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
        let (inner, warning) =
            get_or_create(&self.registry, self.max_series, name, "counter", |r| {
                &mut r.counters
            });
        (Counter { inner }, warning)
    }

    pub(crate) fn gauge(&self, name: &str) -> (Gauge, Option<String>) {
        let (inner, warning) = get_or_create(&self.registry, self.max_series, name, "gauge", |r| {
            &mut r.gauges
        });
        (Gauge { inner }, warning)
    }

    pub(crate) fn up_down_counter(&self, name: &str) -> (UpDownCounter, Option<String>) {
        let (inner, warning) = get_or_create(
            &self.registry,
            self.max_series,
            name,
            "up-down counter",
            |r| &mut r.up_down_counters,
        );
        (UpDownCounter { inner }, warning)
    }

    pub(crate) fn histogram(&self, name: &str) -> (Histogram, Option<String>) {
        let (inner, warning) =
            get_or_create(&self.registry, self.max_series, name, "histogram", |r| {
                &mut r.histograms
            });
        (Histogram { inner }, warning)
    }

    fn all(&self) -> (Vec<Arc<Instrument>>, Vec<Arc<Instrument>>) {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        (
            registry.counters.values().cloned().collect(),
            registry.gauges.values().cloned().collect(),
        )
    }

    /// Up-down counters sorted by name, those without a series left out.
    pub(crate) fn up_down_snapshot(&self) -> Vec<UpDownCounterSnapshot> {
        let all: Vec<Arc<Instrument>> = {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry.up_down_counters.values().cloned().collect()
        };
        all.iter()
            .map(|c| c.snapshot(|v| v.load(Ordering::Relaxed) as i64))
            .filter(|s| !s.series.is_empty())
            .collect()
    }

    /// Histograms sorted by name, those without a series left out.
    pub(crate) fn histogram_snapshot(&self) -> Vec<HistogramSnapshot> {
        let all = self.histograms();
        all.iter()
            .map(|h| h.snapshot(|c| c.read(h.start_unix_nanos)))
            .filter(|s| !s.series.is_empty())
            .collect()
    }

    fn histograms(&self) -> Vec<Arc<Instrument<HistogramCell>>> {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.histograms.values().cloned().collect()
    }

    /// Closes every histogram series' window (at each metrics export).
    pub(crate) fn close_window(&self, now_unix_nanos: u64) {
        for h in self.histograms() {
            for s in h.series.read().unwrap_or_else(|p| p.into_inner()).values() {
                s.value.close_window(now_unix_nanos);
            }
            h.overflow.close_window(now_unix_nanos);
        }
    }

    /// Counters and gauges sorted by name; instruments without a series yet are
    /// left out.
    pub(crate) fn snapshot(&self) -> (Vec<CounterSnapshot>, Vec<GaugeSnapshot>) {
        // The registry lock is not held while reading the series.
        let (counters, gauges) = self.all();
        (
            counters
                .iter()
                .map(|c| c.snapshot(|v| v.load(Ordering::Relaxed)))
                .filter(|s| !s.series.is_empty())
                .collect(),
            gauges
                .iter()
                .map(|g| g.snapshot(|v| f64::from_bits(v.load(Ordering::Relaxed))))
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

    #[test]
    fn up_down_counters_go_both_ways_and_histograms_close_windows() {
        let instruments = Instruments::new(16);
        let (c, warning) = instruments.up_down_counter("pool.in_use");
        assert_eq!(warning, None);
        c.add(5, &[("pool", "db")]);
        c.add(-7, &[("pool", "db")]);
        assert_eq!(instruments.up_down_snapshot()[0].series[0].value, -2);

        let (h, _) = instruments.histogram("jobs.duration");
        for v in [0.1, 0.2, 0.4] {
            h.record(v, &[("queue", "email")]);
        }
        h.record(f64::NAN, &[("queue", "email")]);
        let open = &instruments.histogram_snapshot()[0].series[0].value;
        assert_eq!(
            (open.count, open.window.count, open.window_end_unix_nanos),
            (3, 3, None)
        );
        instruments.close_window(42);
        h.record(0.8, &[("queue", "email")]);
        let closed = &instruments.histogram_snapshot()[0].series[0].value;
        // The last closed window, with cumulative count and sum beside it.
        assert_eq!((closed.count, closed.window.count), (4, 3));
        assert_eq!(closed.window_end_unix_nanos, Some(42));
        assert!((closed.sum - 1.5).abs() < 1e-12);
        let p50 = closed.window.quantile(0.5);
        assert!((p50 - 0.2).abs() <= 0.2 * 0.0055, "{p50}");
        instruments.close_window(43);
        let next = &instruments.histogram_snapshot()[0].series[0].value;
        assert_eq!(next.window.count, 1);
        assert_eq!(next.window_start_unix_nanos, 42);
    }
}
