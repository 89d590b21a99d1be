//! When the run may send: the request budget and deadline shared by all workers, and the
//! per-principal hold that a Retry-After (429 / 503) puts on a user.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// `--requests` and `--duration`: a request may start only while both allow it.
pub struct Budget {
    limit: u64,
    taken: AtomicU64,
    deadline: Instant,
    stopped: AtomicBool,
    /// Wakes the one task that sleeps between bursts when the run is stopped.
    wake: Notify,
}

impl Budget {
    pub fn new(limit: u64, deadline: Instant) -> Self {
        Self {
            limit,
            taken: AtomicU64::new(0),
            deadline,
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Claims one request; false once the count is spent, the deadline passed or the run
    /// was stopped.
    pub fn take(&self) -> bool {
        if self.is_over() {
            return false;
        }
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        if n >= self.limit {
            self.taken.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if n + 1 == self.limit {
            // The last request: wake everyone who sleeps towards a next one.
            self.stop();
        }
        true
    }

    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed).min(self.limit)
    }

    pub fn count_spent(&self) -> bool {
        self.taken.load(Ordering::Relaxed) >= self.limit
    }

    pub fn is_over(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
            || self.count_spent()
            || Instant::now() >= self.deadline
    }

    /// No request starts after this; every sleeper wakes up.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Resolves once [`Budget::stop`] was called (also when that happened before).
    pub async fn stopped(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Register before checking the flag, so a stop in between is not lost.
            notified.as_mut().enable();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps until `t`, the deadline or a stop, whichever comes first; false unless `t`
    /// came first.
    pub async fn sleep_until(&self, t: Instant) -> bool {
        let wake = t.min(self.deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => t <= self.deadline && !self.is_over(),
            _ = self.stopped() => false,
        }
    }
}

/// Retry-After when a 429 / 503 carries none (or one that is not a number of seconds).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A service asking for more than this is honoured only up to it, so one odd header cannot
/// park a principal for the whole run.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// `Retry-After` as delta-seconds (RFC 9110); an HTTP-date falls back to the default.
pub fn parse_retry_after(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

/// Per principal: no request before this instant.
pub struct Holds {
    until: Mutex<Vec<Option<Instant>>>,
    held_back: AtomicU64,
}

impl Holds {
    pub fn new(principals: u32) -> Self {
        Self {
            until: Mutex::new(vec![None; principals as usize]),
            held_back: AtomicU64::new(0),
        }
    }

    /// Hold `principal` until `until` (a later hold wins over an earlier one).
    pub fn hold(&self, principal: u32, until: Instant) {
        let mut v = self.until.lock().expect("holds poisoned");
        let slot = &mut v[principal as usize];
        if slot.is_none_or(|t| t < until) {
            *slot = Some(until);
        }
    }

    pub fn held_until(&self, principal: u32, now: Instant) -> Option<Instant> {
        let v = self.until.lock().expect("holds poisoned");
        v[principal as usize].filter(|t| *t > now)
    }

    /// `preferred` when free, else the next free principal after it; when every principal is
    /// held, the instant the first one is free again.
    pub fn pick(&self, preferred: u32, now: Instant) -> Result<u32, Instant> {
        let v = self.until.lock().expect("holds poisoned");
        let n = v.len() as u32;
        let mut earliest: Option<Instant> = None;
        for i in 0..n {
            let p = (preferred + i) % n;
            match v[p as usize].filter(|t| *t > now) {
                None => {
                    if i > 0 {
                        self.held_back.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(p);
                }
                Some(t) => earliest = Some(earliest.map_or(t, |e| e.min(t))),
            }
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        Err(earliest.expect("at least one principal"))
    }

    /// Waits until `principal` is free; false when the run ends first.
    pub async fn wait(&self, principal: u32, budget: &Budget) -> bool {
        let mut counted = false;
        loop {
            let now = Instant::now();
            if budget.is_over() {
                return false;
            }
            // Re-read after every sleep: another answer may have extended the hold.
            match self.held_until(principal, now) {
                None => return true,
                Some(t) => {
                    if !counted {
                        self.held_back.fetch_add(1, Ordering::Relaxed);
                        counted = true;
                    }
                    if !budget.sleep_until(t).await {
                        return false;
                    }
                }
            }
        }
    }

    pub fn held_back(&self) -> u64 {
        self.held_back.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_and_stops() {
        let b = Budget::new(3, Instant::now() + Duration::from_secs(60));
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        assert_eq!(b.taken(), 3);
        assert!(b.count_spent());
        let b = Budget::new(10, Instant::now() + Duration::from_secs(60));
        b.stop();
        assert!(!b.take());
        assert!(b.is_over());
    }

    #[test]
    fn budget_ends_at_the_deadline() {
        let b = Budget::new(10, Instant::now());
        assert!(!b.take());
        assert!(b.is_over());
        assert!(!b.count_spent());
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(Some("2")), Duration::from_secs(2));
        assert_eq!(parse_retry_after(Some(" 0 ")), Duration::ZERO);
        assert_eq!(parse_retry_after(Some("0.5")), Duration::from_millis(500));
        assert_eq!(parse_retry_after(None), DEFAULT_RETRY_AFTER);
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(parse_retry_after(Some("-3")), DEFAULT_RETRY_AFTER);
        assert_eq!(parse_retry_after(Some("99999")), MAX_RETRY_AFTER);
    }

    #[test]
    fn holds_pick_the_next_free_principal() {
        let h = Holds::new(3);
        let now = Instant::now();
        assert_eq!(h.pick(1, now), Ok(1));
        h.hold(1, now + Duration::from_secs(5));
        assert_eq!(h.pick(1, now), Ok(2));
        h.hold(2, now + Duration::from_secs(3));
        assert_eq!(h.pick(1, now), Ok(0));
        h.hold(0, now + Duration::from_secs(4));
        assert_eq!(h.pick(1, now), Err(now + Duration::from_secs(3)));
        // Expired holds no longer count.
        assert_eq!(h.pick(1, now + Duration::from_secs(6)), Ok(1));
        assert_eq!(h.held_back(), 3);
    }

    #[test]
    fn a_later_hold_wins() {
        let h = Holds::new(1);
        let now = Instant::now();
        h.hold(0, now + Duration::from_secs(5));
        h.hold(0, now + Duration::from_secs(1));
        assert_eq!(h.held_until(0, now), Some(now + Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_until_the_hold_ends_or_the_deadline() {
        let h = Holds::new(2);
        let start = Instant::now();
        let budget = Budget::new(100, start + Duration::from_secs(10));
        h.hold(0, start + Duration::from_secs(2));
        assert!(h.wait(0, &budget).await);
        assert!(Instant::now() >= start + Duration::from_secs(2));
        h.hold(1, Instant::now() + Duration::from_secs(30));
        assert!(!h.wait(1, &budget).await, "the deadline comes first");
        assert_eq!(Instant::now(), start + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_wakes_every_sleeper() {
        let budget =
            std::sync::Arc::new(Budget::new(100, Instant::now() + Duration::from_secs(60)));
        let h = std::sync::Arc::new(Holds::new(1));
        let start = Instant::now();
        h.hold(0, start + Duration::from_secs(50));
        let waiter = {
            let (b, h) = (budget.clone(), h.clone());
            tokio::spawn(async move { h.wait(0, &b).await })
        };
        let sleeper = {
            let b = budget.clone();
            tokio::spawn(async move { b.sleep_until(start + Duration::from_secs(40)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        budget.stop();
        assert!(!waiter.await.unwrap());
        assert!(!sleeper.await.unwrap());
        assert!(Instant::now() < start + Duration::from_secs(2));
        // A stop before the wait is not lost either.
        budget.stopped().await;
    }

    #[test]
    fn taking_the_last_request_stops_the_budget() {
        let b = Budget::new(2, Instant::now() + Duration::from_secs(60));
        assert!(b.take());
        assert!(!b.is_over());
        assert!(b.take());
        assert!(b.is_over());
        assert_eq!(b.taken(), 2);
    }
}
