//! `tracing` events as JSON lines on stdout and as OTLP log records: two
//! layers, each behind its own filter ([`JsonLogLayer`], [`OtlpLogLayer`]),
//! and [`LogLayer`], both in one, which captures an event once when the two
//! filters are the same (what [`crate::init`] installs then).
//!
//! On the calling thread an event is only captured (fields copied, trace ids read
//! from the current context) and queued. The agent's thread writes the JSON lines
//! in batches and exports the records, so neither formatting nor the write
//! syscall lands on the request path.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::Layer;

use crate::clock::unix_nanos;
use crate::context::current_span_context;
use crate::core::log_event::{is_transport_target, on_agent_thread, FieldValue, LogEvent};
use crate::core::Shared;

/// Copies an event's fields and the current trace ids.
fn capture(event: &Event<'_>, export: bool) -> LogEvent {
    let meta = event.metadata();
    let mut visitor = Capture::default();
    event.record(&mut visitor);
    LogEvent {
        time_unix_nanos: unix_nanos(SystemTime::now()),
        level: *meta.level(),
        target: meta.target(),
        message: visitor.message,
        fields: visitor.fields,
        span: current_span_context(),
        export,
    }
}

/// JSON lines and OTLP records from one capture: the layer [`crate::init`]
/// installs when the JSON and OTLP log filters are the same. Get one from
/// [`crate::Agent::log_layer`] to compose your own subscriber.
pub struct LogLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        if on_agent_thread() {
            return;
        }
        // The line writer hands it on to the export (transport crates excluded).
        self.shared.logs.push(capture(event, true));
    }
}

/// JSON lines only ([`crate::Agent::json_log_layer`]), behind the JSON log filter.
pub struct JsonLogLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S: Subscriber> Layer<S> for JsonLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        if on_agent_thread() {
            return;
        }
        self.shared.logs.push(capture(event, false));
    }
}

/// OTLP log records only ([`crate::Agent::otlp_log_layer`]), behind the OTLP
/// log filter; the transport crates' events are never records.
pub struct OtlpLogLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S: Subscriber> Layer<S> for OtlpLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        if !self.shared.log_records
            || on_agent_thread()
            || is_transport_target(event.metadata().target())
        {
            return;
        }
        self.shared.log_export.push(capture(event, true));
    }
}

#[derive(Default)]
struct Capture {
    message: String,
    fields: Vec<(&'static str, FieldValue)>,
}

impl Visit for Capture {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .push((field.name(), FieldValue::Str(format!("{value:?}"))));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push((field.name(), FieldValue::Str(value.to_string())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), FieldValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), FieldValue::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), FieldValue::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), FieldValue::Bool(value)));
    }
}

#[cfg(all(test, feature = "test-support"))]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer as _;

    use crate::{AgentBuilder, Config, InMemoryExporter};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_and_records_follow_their_own_filters() {
        let exported = InMemoryExporter::new();
        let lines = Lines::default();
        let guard = AgentBuilder::from_config(Config::default())
            .endpoint("http://127.0.0.1:9")
            .exporter(exported.clone())
            .log_writer(lines.clone())
            .start()
            .expect("agent starts");
        let agent = guard.agent().clone();
        let subscriber = tracing_subscriber::registry()
            .with(agent.json_log_layer().with_filter(LevelFilter::DEBUG))
            .with(agent.otlp_log_layer().with_filter(LevelFilter::WARN));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("only a line");
            tracing::warn!("a line and a record");
        });
        guard.shutdown().expect("flushed");
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        assert!(text.contains("only a line"), "{text}");
        assert!(text.contains("a line and a record"), "{text}");
        let bodies: Vec<String> = exported
            .log_records()
            .iter()
            .filter_map(|r| r.body.as_ref().and_then(|b| b.value.as_ref()))
            .map(|v| format!("{v:?}"))
            .collect();
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        assert!(bodies[0].contains("a line and a record"), "{bodies:?}");
    }
}
