//! Base-2 exponential histograms (the OTLP `ExponentialHistogram` data point):
//! buckets whose bounds grow by `2^(2^-scale)`, so histograms of different
//! replicas and intervals merge by adding counts of the same bucket index.
//!
//! At [`DEFAULT_SCALE`] (6) a bucket spans 1.09 %; reading a quantile as the
//! bucket's geometric midpoint is then within 0.55 % of the true value. Buckets
//! are a dense run of at most [`MAX_BUCKETS`] counts per sign; a value outside
//! that run halves the resolution (scale − 1) until it fits, as the
//! OpenTelemetry SDKs do, so memory stays bounded whatever is recorded.

/// 2^(2^-6) ≈ 1.0109: the finest scale whose midpoints are well within 1 %.
pub const DEFAULT_SCALE: i32 = 6;
/// Dense buckets per sign before downscaling: 32 octaves at scale 6 (1 µs to
/// 71 minutes in one histogram), 16 KiB at most.
pub const MAX_BUCKETS: usize = 2048;
const MIN_SCALE: i32 = -10;

/// A dense run of bucket counts starting at bucket index `offset`.
#[derive(Clone, Debug, Default)]
struct Buckets {
    offset: i32,
    counts: Vec<u64>,
}

impl Buckets {
    fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The bucket indexes the run would span with `index` in it.
    fn span_with(&self, index: i32) -> usize {
        if self.is_empty() {
            return 1;
        }
        let low = self.offset.min(index) as i64;
        let high = (self.offset as i64 + self.counts.len() as i64 - 1).max(index as i64);
        (high - low + 1) as usize
    }

    /// Adds one to `index`, widening the run (no allocation once the vector has
    /// reached the widest run seen: `reset` keeps its capacity).
    fn increment(&mut self, index: i32) {
        if self.is_empty() {
            self.offset = index;
            self.counts.push(1);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let at = (index - self.offset) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] += 1;
    }

    /// Merges each run of `2^by` buckets into one (the index at scale − `by`).
    fn downscale(&mut self, by: u32) {
        if by == 0 || self.is_empty() {
            return;
        }
        let new_offset = self.offset >> by;
        let mut merged = 0usize;
        for i in 0..self.counts.len() {
            let target = (((self.offset + i as i32) >> by) - new_offset) as usize;
            if i == 0 || target != merged {
                merged = target;
                if target != i {
                    self.counts[target] = 0;
                }
            }
            if target != i {
                self.counts[target] += self.counts[i];
            }
        }
        let len = (((self.offset + self.counts.len() as i32 - 1) >> by) - new_offset + 1) as usize;
        self.counts.truncate(len);
        self.offset = new_offset;
    }

    fn reset(&mut self) {
        self.counts.clear();
        self.offset = 0;
    }
}

/// The bucket index of `value` (> 0, finite) at `scale`: bucket `i` holds
/// `(base^i, base^(i+1)]`, the OTLP rule. Exact powers of two are computed from
/// the exponent so they land on their own boundary.
pub fn bucket_index(value: f64, scale: i32) -> i32 {
    let value = value.max(f64::MIN_POSITIVE);
    let bits = value.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let power_of_two = bits & ((1u64 << 52) - 1) == 0;
    if scale <= 0 {
        let e = if power_of_two { exponent - 1 } else { exponent };
        return e >> -scale;
    }
    if power_of_two {
        return (exponent << scale) - 1;
    }
    let scaled = value.log2() * f64::from(1u32 << scale);
    scaled.ceil() as i32 - 1
}

/// The lower bound of bucket `index` at `scale`.
pub fn lower_bound(index: i32, scale: i32) -> f64 {
    (f64::from(index) / f64::from(scale).exp2()).exp2()
}

/// One exponential histogram; not synchronized (its owner holds the lock).
#[derive(Clone, Debug)]
pub(crate) struct ExpHistogram {
    initial_scale: i32,
    scale: i32,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    zero_count: u64,
    positive: Buckets,
    negative: Buckets,
}

impl Default for ExpHistogram {
    fn default() -> Self {
        ExpHistogram::new(DEFAULT_SCALE)
    }
}

impl ExpHistogram {
    pub(crate) fn new(scale: i32) -> ExpHistogram {
        ExpHistogram {
            initial_scale: scale,
            scale,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            zero_count: 0,
            positive: Buckets::default(),
            negative: Buckets::default(),
        }
    }

    /// Records `value`; NaN and infinities are not recordable and are ignored.
    pub(crate) fn record(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if value == 0.0 {
            self.zero_count += 1;
            return;
        }
        let magnitude = value.abs();
        let mut index = bucket_index(magnitude, self.scale);
        let store = if value > 0.0 {
            &self.positive
        } else {
            &self.negative
        };
        if store.span_with(index) > MAX_BUCKETS {
            let mut by = 0;
            while self.scale - by as i32 > MIN_SCALE {
                by += 1;
                let fits = |b: &Buckets, i: i32| {
                    b.is_empty() || {
                        let low = (b.offset.min(i)) >> by;
                        let high = (b.offset + b.counts.len() as i32 - 1).max(i) >> by;
                        ((high - low + 1) as usize) <= MAX_BUCKETS
                    }
                };
                if fits(store, index) {
                    break;
                }
            }
            self.positive.downscale(by);
            self.negative.downscale(by);
            self.scale -= by as i32;
            index = bucket_index(magnitude, self.scale);
        }
        if value > 0.0 {
            self.positive.increment(index);
        } else {
            self.negative.increment(index);
        }
    }

    /// Empties the histogram and returns to its initial scale, keeping the
    /// buckets' memory for the next interval.
    pub(crate) fn reset(&mut self) {
        self.scale = self.initial_scale;
        self.count = 0;
        self.sum = 0.0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        self.zero_count = 0;
        self.positive.reset();
        self.negative.reset();
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn snapshot(&self) -> ExpHistogramSnapshot {
        let empty = self.count == 0;
        ExpHistogramSnapshot {
            scale: self.scale,
            count: self.count,
            sum: self.sum,
            min: if empty { 0.0 } else { self.min },
            max: if empty { 0.0 } else { self.max },
            zero_count: self.zero_count,
            positive_offset: self.positive.offset,
            positive_counts: self.positive.counts.clone(),
            negative_offset: self.negative.offset,
            negative_counts: self.negative.counts.clone(),
        }
    }
}

/// An exponential histogram at one moment, as exported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpHistogramSnapshot {
    pub scale: i32,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub zero_count: u64,
    /// Bucket `positive_offset + i` counts `positive_counts[i]` values in
    /// `(base^(offset+i), base^(offset+i+1)]`, `base = 2^(2^-scale)`.
    pub positive_offset: i32,
    pub positive_counts: Vec<u64>,
    pub negative_offset: i32,
    pub negative_counts: Vec<u64>,
}

impl ExpHistogramSnapshot {
    /// The `q` quantile (0..=1) read as the geometric midpoint of the bucket
    /// holding the ⌈q·count⌉-th value, clamped to the recorded min and max:
    /// the same answer the ClickHouse merge query gives for one histogram.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let midpoint = |index: i32| {
            lower_bound(index, self.scale) * (0.5 / f64::from(self.scale).exp2()).exp2()
        };
        let mut seen = 0;
        // Negative buckets, most negative first.
        for (i, n) in self.negative_counts.iter().enumerate().rev() {
            seen += n;
            if seen >= rank {
                return (-midpoint(self.negative_offset + i as i32)).clamp(self.min, self.max);
            }
        }
        seen += self.zero_count;
        if seen >= rank {
            return 0.0;
        }
        for (i, n) in self.positive_counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return midpoint(self.positive_offset + i as i32).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_the_upper_inclusive_rule() {
        // Scale 0: (1, 2] is bucket 0, (2, 4] bucket 1, exact powers close a bucket.
        assert_eq!(bucket_index(1.0, 0), -1);
        assert_eq!(bucket_index(1.5, 0), 0);
        assert_eq!(bucket_index(2.0, 0), 0);
        assert_eq!(bucket_index(2.1, 0), 1);
        assert_eq!(bucket_index(0.5, 0), -2);
        assert_eq!(bucket_index(4.0, 1), 3);
        assert_eq!(bucket_index(5.0, -1), 1);
        for scale in [-2, 0, 3, 6] {
            for v in [1e-6, 0.003, 0.7, 1.0, 3.0, 1234.5] {
                let i = bucket_index(v, scale);
                let (low, high) = (lower_bound(i, scale), lower_bound(i + 1, scale));
                assert!(
                    low < v * (1.0 + 1e-12) && v <= high * (1.0 + 1e-12),
                    "{v} at {scale}: ({low}, {high}]"
                );
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_percent_of_the_exact_values() {
        let mut h = ExpHistogram::default();
        let mut values: Vec<f64> = (1..=20_000).map(|i| 1e-4 * (1.0003f64).powi(i)).collect();
        for v in &values {
            h.record(*v);
        }
        values.sort_by(f64::total_cmp);
        let s = h.snapshot();
        assert_eq!(s.scale, DEFAULT_SCALE);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
            let got = s.quantile(q);
            assert!(
                (got - exact).abs() <= exact * 0.0055,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(s.positive_counts.iter().sum::<u64>(), 20_000);
    }

    #[test]
    fn a_wide_range_downscales_and_keeps_every_count() {
        let mut h = ExpHistogram::default();
        h.record(1e-9);
        h.record(1e9);
        h.record(0.0);
        h.record(-3.0);
        h.record(f64::NAN);
        let s = h.snapshot();
        assert!(s.scale < DEFAULT_SCALE, "scale {}", s.scale);
        assert!(s.positive_counts.len() <= MAX_BUCKETS);
        assert_eq!(s.positive_counts.iter().sum::<u64>(), 2);
        assert_eq!((s.zero_count, s.count), (1, 4));
        assert_eq!(s.negative_counts.iter().sum::<u64>(), 1);
        assert_eq!(
            bucket_index(1e9, s.scale),
            s.positive_offset + s.positive_counts.len() as i32 - 1
        );
        assert_eq!(bucket_index(1e-9, s.scale), s.positive_offset);
        h.reset();
        assert_eq!(h.snapshot().scale, DEFAULT_SCALE);
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn downscaling_merges_neighbouring_buckets() {
        let mut b = Buckets::default();
        for i in [-3, -2, -1, 0, 1, 2, 3] {
            b.increment(i);
        }
        b.downscale(1);
        // Floor halves: -3 → -2; -2,-1 → -1; 0,1 → 0; 2,3 → 1.
        assert_eq!(b.offset, -2);
        assert_eq!(b.counts, vec![1, 2, 2, 2]);
    }
}
