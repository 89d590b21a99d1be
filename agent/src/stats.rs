//! The agent's own counters (exported, dropped per signal): a leaf both the
//! core state and the metrics snapshot use.

/// Exported and dropped counts of one signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    pub exported: u64,
    /// Dropped because a bounded queue was full.
    pub queue_full: u64,
    /// Dropped because the export failed (collector down, rejected, timed out).
    pub export_failed: u64,
}

impl SignalStats {
    pub fn dropped(&self) -> u64 {
        self.queue_full + self.export_failed
    }
}

/// The agent's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub spans: SignalStats,
    pub logs: SignalStats,
    pub metric_points: SignalStats,
}

impl AgentStats {
    pub fn by_signal(&self) -> [(&'static str, SignalStats); 3] {
        [
            ("spans", self.spans),
            ("logs", self.logs),
            ("metric_points", self.metric_points),
        ]
    }
}
