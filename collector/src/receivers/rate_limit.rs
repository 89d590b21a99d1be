//! Per-token ingestion rate limit: a token bucket of items (spans, log records, data
//! points) per second.
//!
//! Each auth token has its own bucket; without auth every client shares one. A
//! request larger than the bucket holds is admitted when the bucket is full and
//! leaves it in debt, so large requests neither starve forever nor beat the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::TokenId;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Option<TokenId>, Bucket>>,
}

struct Bucket {
    /// May go negative (debt) after a request larger than the burst.
    items: f64,
    at: Instant,
}

impl RateLimiter {
    /// `burst` 0 means one second's worth.
    pub fn new(items_per_second: u64, burst: u64) -> RateLimiter {
        let burst = if burst == 0 { items_per_second } else { burst };
        RateLimiter {
            per_second: items_per_second.max(1) as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `items` from `token`'s bucket, or says how long to wait before the
    /// request would fit. The bucket set is bounded by the configured tokens.
    pub fn take(&self, token: Option<TokenId>, items: u64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(token).or_insert(Bucket {
            items: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.items = (bucket.items + elapsed * self.per_second).min(self.burst);
        bucket.at = bucket.at.max(now);
        let cost = items as f64;
        let needed = cost.min(self.burst);
        if bucket.items >= needed {
            bucket.items -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (needed - bucket.items) / self.per_second,
            ))
        }
    }

    pub fn per_second(&self) -> u64 {
        self.per_second as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let l = RateLimiter::new(100, 200);
        let t0 = Instant::now();
        assert!(l.take(None, 150, t0).is_ok());
        assert!(l.take(None, 50, t0).is_ok());
        let wait = l.take(None, 10, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // After 100 ms, 10 items are back.
        assert!(l.take(None, 10, t0 + Duration::from_millis(100)).is_ok());
        assert!(l.take(None, 1, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn tokens_have_their_own_buckets() {
        let l = RateLimiter::new(10, 0);
        let t0 = Instant::now();
        assert!(l.take(Some(0), 10, t0).is_ok());
        assert!(l.take(Some(0), 1, t0).is_err());
        assert!(l.take(Some(1), 10, t0).is_ok());
        assert!(l.take(None, 10, t0).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_burst_passes_when_full_and_leaves_debt() {
        let l = RateLimiter::new(100, 100);
        let t0 = Instant::now();
        assert!(l.take(None, 300, t0).is_ok());
        // 200 in debt: 3 s until the next 100-item request fits.
        let wait = l.take(None, 100, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3));
        assert!(l.take(None, 100, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn the_bucket_never_exceeds_the_burst() {
        let l = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        assert!(l.take(None, 1, t0).is_ok());
        let later = t0 + Duration::from_secs(3600);
        assert!(l.take(None, 20, later).is_ok());
        assert!(l.take(None, 1, later).is_err());
    }
}
