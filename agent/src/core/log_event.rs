//! A captured `tracing` event as it waits to be written and exported, and who
//! may record one (not the agent's own thread, not the transport crates).

use std::cell::Cell;
use std::time::SystemTime;

use tracing::Level;

use crate::clock::unix_nanos;
use crate::context::SpanContext;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

#[derive(Debug)]
pub(crate) struct LogEvent {
    pub time_unix_nanos: u64,
    pub level: Level,
    pub target: &'static str,
    pub message: String,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub span: Option<SpanContext>,
    /// Also an OTLP record once its JSON line is written (captured once by the
    /// combined [`crate::logs::LogLayer`]); false for the JSON-only layer.
    pub export: bool,
}

impl LogEvent {
    /// A line about the agent itself (ignored settings, dropped telemetry).
    pub(crate) fn agent(level: Level, message: String) -> LogEvent {
        LogEvent {
            time_unix_nanos: unix_nanos(SystemTime::now()),
            level,
            target: "agent",
            message,
            fields: Vec::new(),
            span: None,
            export: true,
        }
    }
}

thread_local! {
    /// Set on the agent's own thread: whatever tonic, hyper or h2 log while
    /// exporting is neither printed nor exported, so export can never feed itself.
    static AGENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

pub(crate) fn mark_agent_thread() {
    AGENT_THREAD.with(|f| f.set(true));
}

pub(crate) fn on_agent_thread() -> bool {
    AGENT_THREAD.with(Cell::get)
}

/// Crates of the export transport; their events are never exported as records
/// (from any thread), whatever the filter lets through to stdout.
const TRANSPORT_TARGETS: [&str; 5] = ["tonic", "h2", "hyper", "hyper_util", "tower"];

pub(crate) fn is_transport_target(target: &str) -> bool {
    TRANSPORT_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// OTLP severity numbers for the five `tracing` levels.
pub(crate) fn severity_number(level: Level) -> i32 {
    match level {
        Level::TRACE => 1,
        Level::DEBUG => 5,
        Level::INFO => 9,
        Level::WARN => 13,
        Level::ERROR => 17,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_targets_match_whole_crate_names() {
        assert!(is_transport_target("h2::codec"));
        assert!(is_transport_target("tonic"));
        assert!(!is_transport_target("h2o_service"));
        assert!(!is_transport_target("shop"));
    }
}
