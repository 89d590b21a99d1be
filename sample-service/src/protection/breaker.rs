//! A circuit breaker per dependency: closed → open when the failure rate over the
//! last calls passes a threshold (after a minimum number of calls) → half-open after
//! a pause, letting one probe through → closed on its success, open again on failure.
//! While open, calls fail at once instead of waiting on a dependency that is down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::metrics::{Counter, Gauge};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Outcomes remembered.
    pub window: usize,
    /// Calls needed in the window before the rate counts.
    pub min_calls: usize,
    pub failure_rate: f64,
    pub open_for: Duration,
}

impl Settings {
    pub fn with_open_for(open_for: Duration) -> Self {
        Settings {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            open_for,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

struct Inner {
    state: State,
    opened_at: Instant,
    probe_in_flight: bool,
    outcomes: VecDeque<bool>,
}

#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    settings: Settings,
    inner: Arc<Mutex<Inner>>,
    state_gauge: Gauge,
    rejections: Counter,
}

/// Refused without calling: the breaker is open.
#[derive(Debug, thiserror::Error)]
#[error("circuit breaker for {0} is open")]
pub struct Open(pub &'static str);

/// Permission for one call; report how it went with [`Permit::record`].
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    pub fn new(
        name: &'static str,
        settings: Settings,
        state_gauge: Gauge,
        rejections: Counter,
    ) -> Self {
        state_gauge.set(0.0, &[("dependency", name)]);
        Breaker {
            name,
            settings,
            inner: Arc::new(Mutex::new(Inner {
                state: State::Closed,
                opened_at: Instant::now(),
                probe_in_flight: false,
                outcomes: VecDeque::new(),
            })),
            state_gauge,
            rejections,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    fn set_state(&self, inner: &mut Inner, state: State) {
        if inner.state != state {
            tracing::info!(
                dependency = self.name,
                from = inner.state.as_str(),
                to = state.as_str(),
                "circuit breaker changed state"
            );
            inner.state = state;
            self.state_gauge
                .set(state.gauge(), &[("dependency", self.name)]);
        }
    }

    pub fn try_acquire(&self) -> Result<Permit, Open> {
        let mut inner = self.lock();
        if inner.state == State::Open && inner.opened_at.elapsed() >= self.settings.open_for {
            self.set_state(&mut inner, State::HalfOpen);
        }
        let probe = match inner.state {
            State::Closed => false,
            State::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                true
            }
            State::HalfOpen | State::Open => {
                self.rejections.add(1, &[("dependency", self.name)]);
                return Err(Open(self.name));
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        })
    }

    fn record(&self, probe: bool, ok: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
            if ok {
                inner.outcomes.clear();
                self.set_state(&mut inner, State::Closed);
            } else {
                inner.opened_at = Instant::now();
                self.set_state(&mut inner, State::Open);
            }
            return;
        }
        if inner.state != State::Closed {
            return;
        }
        inner.outcomes.push_back(ok);
        while inner.outcomes.len() > self.settings.window {
            inner.outcomes.pop_front();
        }
        let calls = inner.outcomes.len();
        let failures = inner.outcomes.iter().filter(|ok| !**ok).count();
        if calls >= self.settings.min_calls
            && failures as f64 / calls as f64 >= self.settings.failure_rate
        {
            inner.opened_at = Instant::now();
            inner.outcomes.clear();
            self.set_state(&mut inner, State::Open);
        }
    }
}

impl Permit {
    pub fn record(mut self, ok: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, ok);
    }
}

impl Drop for Permit {
    /// A call abandoned before it finished (the client went away, the request
    /// deadline passed) says nothing about the dependency: no outcome is counted, and
    /// an abandoned probe only frees the probe slot for the next caller.
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        let agent = agent::builder()
            .disabled(true)
            .json_logs(false)
            .start()
            .unwrap();
        let a = agent.agent().clone();
        Breaker::new(
            "dep",
            Settings {
                window: 10,
                min_calls: 4,
                failure_rate: 0.5,
                open_for,
            },
            a.gauge("test.breaker.state"),
            a.counter("test.breaker.rejections"),
        )
    }

    #[test]
    fn opens_on_failures_probes_and_closes() {
        // Long enough that a descheduled test thread does not see it half-open early.
        let b = breaker(Duration::from_millis(300));
        // Three failures are below the minimum number of calls.
        for _ in 0..3 {
            b.try_acquire().unwrap().record(false);
        }
        assert_eq!(b.state(), State::Closed);
        b.try_acquire().unwrap().record(false);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().is_err());

        std::thread::sleep(Duration::from_millis(350));
        let probe = b.try_acquire().unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        // Only one probe at a time.
        assert!(b.try_acquire().is_err());
        probe.record(false);
        assert_eq!(b.state(), State::Open);

        std::thread::sleep(Duration::from_millis(350));
        b.try_acquire().unwrap().record(true);
        assert_eq!(b.state(), State::Closed);
        b.try_acquire().unwrap().record(true);
    }

    #[test]
    fn abandoned_calls_are_not_failures() {
        let b = breaker(Duration::from_millis(300));
        // Callers cancelled (client gone, request deadline) before the call ended.
        for _ in 0..10 {
            drop(b.try_acquire().unwrap());
        }
        assert_eq!(
            b.state(),
            State::Closed,
            "cancelled calls opened the breaker"
        );
        for _ in 0..4 {
            b.try_acquire().unwrap().record(false);
        }
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(350));
        // An abandoned probe frees the probe slot and decides nothing.
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), State::HalfOpen);
        b.try_acquire().unwrap().record(true);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn successes_keep_it_closed() {
        let b = breaker(Duration::from_secs(60));
        for i in 0..100 {
            b.try_acquire().unwrap().record(i % 4 != 0);
        }
        assert_eq!(b.state(), State::Closed);
    }
}
