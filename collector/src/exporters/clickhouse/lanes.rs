//! One lane per table: its own INSERT permits and its own health.
//!
//! A batch that keeps failing holds a permit of its table's lane while it backs
//! off; with one shared pool, four such batches stopped every table. Health is per
//! lane too, and a lane is failing while any of its batches is: a success of
//! another batch does not flip it back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::schema::{TableId, ALL_TABLES};

pub struct Lane {
    pub table: &'static str,
    pub permits: Arc<Semaphore>,
    per_lane: usize,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    /// Batches whose latest INSERT failed.
    failing: usize,
    /// When the lane's current run of failures began.
    since: Option<Instant>,
    last_error: String,
    dead_letters: u64,
}

/// What `/health/ready` says about one lane.
#[derive(Debug, Clone)]
pub struct LaneReport {
    pub table: &'static str,
    pub in_flight: usize,
    /// (batches failing, for how long, the latest error)
    pub failing: Option<(usize, Duration, String)>,
    /// Batches (or parts of them) this process moved to the dead-letter store.
    pub dead_letters: u64,
}

impl LaneReport {
    pub fn describe(&self) -> String {
        let state = match &self.failing {
            None => "exporting".to_string(),
            Some((batches, since, error)) => format!(
                "failing for {} s ({batches} batches retrying): {error}",
                since.as_secs()
            ),
        };
        let mut line = format!(
            "lane {}: {state}; {} INSERTs in flight",
            self.table, self.in_flight
        );
        if self.dead_letters > 0 {
            line.push_str(&format!("; {} batches dead-lettered", self.dead_letters));
        }
        line
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Lanes(Arc<Vec<Lane>>);

impl Lanes {
    pub fn new(per_lane: usize) -> Lanes {
        let per_lane = per_lane.max(1);
        Lanes(Arc::new(
            ALL_TABLES
                .iter()
                .map(|t| Lane {
                    table: t.name,
                    permits: Arc::new(Semaphore::new(per_lane)),
                    per_lane,
                    state: Mutex::default(),
                })
                .collect(),
        ))
    }

    pub fn lane(&self, table: TableId) -> &Lane {
        &self.0[table as usize]
    }

    pub fn report(&self) -> Vec<LaneReport> {
        self.0.iter().map(Lane::report).collect()
    }

    /// The first failing lane, described (None: every lane exports).
    pub fn failing(&self) -> Option<String> {
        self.report()
            .into_iter()
            .find(|l| l.failing.is_some())
            .map(|l| l.describe())
    }
}

impl Lane {
    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self) -> LaneReport {
        let s = self.state();
        LaneReport {
            table: self.table,
            in_flight: self.per_lane - self.permits.available_permits(),
            failing: (s.failing > 0).then(|| {
                (
                    s.failing,
                    s.since.map_or(Duration::ZERO, |t| t.elapsed()),
                    s.last_error.clone(),
                )
            }),
            dead_letters: s.dead_letters,
        }
    }

    /// A batch's INSERT failed; `mark` is that batch's, set on its first failure.
    pub fn failed<'a>(&'a self, mark: &mut Option<Failing<'a>>, error: String) {
        let mut s = self.state();
        if mark.is_none() {
            if s.failing == 0 {
                s.since = Some(Instant::now());
            }
            s.failing += 1;
            *mark = Some(Failing(self));
        }
        s.last_error = error;
    }

    pub fn dead_lettered(&self) {
        self.state().dead_letters += 1;
    }
}

/// Held by a batch while it is failing; the lane is healthy again once none is.
pub struct Failing<'a>(&'a Lane);

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.failing = s.failing.saturating_sub(1);
        if s.failing == 0 {
            s.since = None;
            s.last_error.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_fails_while_any_of_its_batches_does_and_alone() {
        let lanes = Lanes::new(2);
        let traces = lanes.lane(TableId::Traces);
        let (mut a, mut b) = (None, None);
        traces.failed(&mut a, "first".into());
        traces.failed(&mut b, "second".into());
        traces.failed(&mut a, "third".into());
        let report = lanes.report();
        assert_eq!(
            report[TableId::Traces as usize].failing.as_ref().unwrap().0,
            2
        );
        assert!(report[TableId::Logs as usize].failing.is_none());
        drop(a);
        assert!(lanes
            .failing()
            .unwrap()
            .contains("(1 batches retrying): third"));
        drop(b);
        assert!(lanes.failing().is_none());
        assert!(lanes.report()[0]
            .describe()
            .starts_with("lane otel_traces: exporting"));
    }
}
