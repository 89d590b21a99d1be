//! How long the oldest unconfirmed part has waited in the spool.
//!
//! The spool's records carry no time, and stamping every append would cost the hot
//! path; instead a sampler notes, about once a second, how far the sequence
//! numbers have gone. The oldest part was appended between the last sample that
//! had not reached its sequence number and the first that had, so its age is
//! known to within one sampling period (reported as the upper bound).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples kept at most; past it every other one goes, halving the resolution for
/// old parts only when a part has waited for thousands of periods.
const MAX_SAMPLES: usize = 4096;

pub struct SpoolAge {
    started: Instant,
    /// (when, next sequence number then), oldest first.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl SpoolAge {
    pub fn new(started: Instant) -> SpoolAge {
        SpoolAge {
            started,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Notes that every part below `next_seq` was appended by `now`; `oldest` is
    /// the oldest unconfirmed part, so older samples can go.
    pub fn sample(&self, now: Instant, next_seq: u64, oldest: Option<u64>) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match s.back_mut() {
            // Nothing appended since: later parts come after `now`, a tighter bound.
            Some(last) if last.1 == next_seq => last.0 = now,
            _ => s.push_back((now, next_seq)),
        }
        let oldest = oldest.unwrap_or(next_seq);
        // Keep the last sample that had not reached `oldest`: it bounds its age.
        while s.len() >= 2 && s[1].1 <= oldest {
            s.pop_front();
        }
        if s.len() > MAX_SAMPLES {
            let thinned: VecDeque<_> = s
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0 || *i == s.len() - 1)
                .map(|(_, v)| *v)
                .collect();
            *s = thinned;
        }
    }

    /// The age of part `oldest` at `now` (zero when the spool is empty). A part
    /// older than every sample (e.g. replayed after a restart) is at least as old
    /// as the process.
    pub fn age(&self, now: Instant, oldest: Option<u64>) -> Duration {
        let Some(oldest) = oldest else {
            return Duration::ZERO;
        };
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let appended_after = s
            .iter()
            .take_while(|&&(_, n)| n <= oldest)
            .last()
            .map(|&(t, _)| t);
        let since = match appended_after {
            Some(t) => t,
            None => self.started,
        };
        now.saturating_duration_since(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spool_has_no_age() {
        let t0 = Instant::now();
        let a = SpoolAge::new(t0);
        a.sample(t0, 0, None);
        assert_eq!(a.age(t0 + Duration::from_secs(5), None), Duration::ZERO);
    }

    #[test]
    fn age_is_bounded_by_the_sample_before_the_part() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let a = SpoolAge::new(t0);
        a.sample(s(0), 10, None); // parts 0..10 appended and confirmed
        a.sample(s(1), 15, Some(10)); // 10..15 appended during (0, 1]
        a.sample(s(2), 20, Some(10));
        // Part 10 was appended after t0 + 0 s: at 5 s it is at most 5 s old.
        assert_eq!(a.age(s(5), Some(10)), Duration::from_secs(5));
        // Part 17: after the 1 s sample.
        assert_eq!(a.age(s(5), Some(17)), Duration::from_secs(4));
        // Once 10..15 are confirmed, older samples go and the age drops.
        a.sample(s(3), 20, Some(15));
        assert_eq!(a.age(s(5), Some(15)), Duration::from_secs(4));
    }

    #[test]
    fn idle_periods_do_not_age_the_next_part() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let a = SpoolAge::new(t0);
        for i in 0..100 {
            a.sample(s(i), 10, None);
        }
        a.sample(s(101), 11, Some(10)); // part 10 appended during (99, 101]
        assert_eq!(a.age(s(102), Some(10)), Duration::from_secs(3));
    }

    #[test]
    fn parts_from_before_the_first_sample_are_as_old_as_the_process() {
        let t0 = Instant::now();
        let a = SpoolAge::new(t0);
        a.sample(t0 + Duration::from_secs(1), 100, Some(3));
        assert_eq!(
            a.age(t0 + Duration::from_secs(9), Some(3)),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn samples_stay_bounded_while_a_part_is_stuck() {
        let t0 = Instant::now();
        let a = SpoolAge::new(t0);
        a.sample(t0, 1, Some(0));
        for i in 1..20_000u64 {
            a.sample(t0 + Duration::from_secs(i), i + 1, Some(0));
        }
        assert!(a.samples.lock().unwrap().len() <= MAX_SAMPLES);
        // The stuck part is still dated from before its append.
        assert_eq!(
            a.age(t0 + Duration::from_secs(20_000), Some(0)),
            Duration::from_secs(20_000)
        );
    }
}
