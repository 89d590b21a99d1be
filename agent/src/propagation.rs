//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage, read from and
//! written to any carrier of string headers: HTTP headers, message headers
//! (AMQP field tables behind the `lapin` feature), plain maps.

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::baggage::Baggage;
use crate::context::{Context, SpanContext, SpanId, TraceId};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";

/// Writes one header into a carrier.
pub trait Injector {
    fn set(&mut self, key: &str, value: String);
}

/// Reads one header from a carrier (keys are lowercase).
pub trait Extractor {
    fn get(&self, key: &str) -> Option<&str>;
}

impl Injector for http::HeaderMap {
    fn set(&mut self, key: &str, value: String) {
        // Our own values are ASCII; a baggage value a caller put in that is not a
        // valid header value is skipped rather than failing the request.
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.insert(name, value);
        }
    }
}

impl Extractor for http::HeaderMap {
    fn get(&self, key: &str) -> Option<&str> {
        http::HeaderMap::get(self, key).and_then(|v| v.to_str().ok())
    }
}

impl Injector for HashMap<String, String> {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_string(), value);
    }
}

impl Extractor for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
}

#[cfg(feature = "lapin")]
mod amqp {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

    use super::{Extractor, Injector};

    impl Injector for FieldTable {
        fn set(&mut self, key: &str, value: String) {
            self.insert(
                ShortString::from(key),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    }

    impl Extractor for FieldTable {
        fn get(&self, key: &str) -> Option<&str> {
            match self.inner().get(&ShortString::from(key))? {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            }
        }
    }
}

/// Which propagation formats are active (`OTEL_PROPAGATORS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propagators {
    pub trace_context: bool,
    pub baggage: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Propagators {
            trace_context: true,
            baggage: true,
        }
    }
}

impl Propagators {
    pub const NONE: Propagators = Propagators {
        trace_context: false,
        baggage: false,
    };

    /// Reads the incoming context; `None` when the carrier has nothing usable.
    pub fn extract(&self, carrier: &impl Extractor) -> Option<Context> {
        let mut context = Context::default();
        if self.trace_context {
            if let Some(span) = carrier.get(TRACEPARENT).and_then(parse_traceparent) {
                context.span = Some(span);
                context.trace_state = carrier
                    .get(TRACESTATE)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Arc::from);
            }
        }
        if self.baggage {
            if let Some(header) = carrier.get(BAGGAGE) {
                let baggage = Baggage::parse(header);
                if !baggage.is_empty() {
                    context.baggage = Some(Arc::new(baggage));
                }
            }
        }
        (context != Context::default()).then_some(context)
    }

    /// Writes the context into the carrier.
    pub fn inject(&self, context: &Context, carrier: &mut impl Injector) {
        if self.trace_context {
            if let Some(span) = &context.span {
                carrier.set(TRACEPARENT, format_traceparent(span));
                if let Some(state) = &context.trace_state {
                    carrier.set(TRACESTATE, state.to_string());
                }
            }
        }
        if self.baggage {
            if let Some(baggage) = context.baggage.as_deref().filter(|b| !b.is_empty()) {
                carrier.set(BAGGAGE, baggage.header_value());
            }
        }
    }
}

/// `version-traceid-spanid-flags`; a future version may append fields, which are
/// ignored as the spec asks.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    let version = u8::from_str_radix(version, 16).ok()?;
    if version == 0 && parts.next().is_some() {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId(u128::from_str_radix(trace_id, 16).ok()?.to_be_bytes());
    let span_id = SpanId(u64::from_str_radix(span_id, 16).ok()?.to_be_bytes());
    if !trace_id.is_valid() || !span_id.is_valid() || !is_lower_hex(value) {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        flags: u8::from_str_radix(flags, 16).ok()?,
        remote: true,
    })
}

fn is_lower_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn format_traceparent(span: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", span.trace_id, span.span_id, span.flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = parse_traceparent(header).expect("valid");
        assert!(span.is_sampled());
        assert_eq!(span.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format_traceparent(&span), header);
    }

    #[test]
    fn invalid_traceparents_are_rejected() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn extract_then_inject_keeps_state_and_baggage() {
        let mut incoming = HashMap::new();
        incoming.set(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        incoming.set(TRACESTATE, "congo=t61rcWkgMzE".into());
        incoming.set(BAGGAGE, "userId=alice%20smith,tier=gold;ttl=3".into());
        let context = Propagators::default().extract(&incoming).expect("context");
        let baggage = context.baggage.as_deref().expect("baggage");
        assert_eq!(baggage.get("userId"), Some("alice smith"));
        assert_eq!(baggage.get("tier"), Some("gold"));

        let mut outgoing = HashMap::new();
        Propagators::default().inject(&context, &mut outgoing);
        assert_eq!(outgoing.get(TRACEPARENT), incoming.get(TRACEPARENT));
        assert_eq!(outgoing[TRACESTATE], "congo=t61rcWkgMzE");
        assert_eq!(outgoing[BAGGAGE], "userId=alice%20smith,tier=gold");
    }

    #[test]
    fn disabled_propagators_neither_read_nor_write() {
        let mut incoming = HashMap::new();
        incoming.set(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        assert_eq!(Propagators::NONE.extract(&incoming), None);
    }
}
