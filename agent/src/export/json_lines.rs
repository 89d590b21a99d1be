//! The JSON-lines format of log events (one object per line on stdout),
//! written by the agent's thread in batches.

use crate::core::log_event::{FieldValue, LogEvent};

/// Appends one JSON object and a newline:
/// `{"timestamp","level","target","message","fields",("trace_id","span_id"),"service"}`.
/// Written by hand into one reused buffer: this runs for every event.
pub(crate) fn write_json_line(out: &mut Vec<u8>, event: &LogEvent, service: &str) {
    use std::io::Write as _;
    out.extend_from_slice(b"{\"timestamp\":\"");
    push_rfc3339(out, event.time_unix_nanos);
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(event.level.as_str().as_bytes());
    out.extend_from_slice(b"\",\"target\":");
    json_string(out, event.target);
    out.extend_from_slice(b",\"message\":");
    json_string(out, &event.message);
    out.extend_from_slice(b",\"fields\":{");
    for (i, (name, value)) in event.fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(out, name);
        out.push(b':');
        // Writing into a Vec cannot fail.
        let _ = match value {
            FieldValue::Str(s) => {
                json_string(out, s);
                Ok(())
            }
            FieldValue::I64(v) => write!(out, "{v}"),
            FieldValue::U64(v) => write!(out, "{v}"),
            FieldValue::F64(v) if v.is_finite() => write!(out, "{v}"),
            FieldValue::F64(v) => write!(out, "\"{v}\""),
            FieldValue::Bool(v) => write!(out, "{v}"),
        };
    }
    out.push(b'}');
    if let Some(span) = &event.span {
        out.extend_from_slice(b",\"trace_id\":\"");
        push_hex(out, &span.trace_id.0);
        out.extend_from_slice(b"\",\"span_id\":\"");
        push_hex(out, &span.span_id.0);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"service\":");
    json_string(out, service);
    out.extend_from_slice(b"}\n");
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 0xf) as usize]);
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Most strings need no escaping: copy them straight.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn push_digits(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut v = value;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// `2026-12-01T18:04:05.123456789Z`, without a date-time crate.
fn push_rfc3339(out: &mut Vec<u8>, unix_nanos: u64) {
    let secs = unix_nanos / 1_000_000_000;
    let nanos = unix_nanos % 1_000_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    push_digits(out, y.max(0) as u64, 4);
    out.push(b'-');
    push_digits(out, u64::from(m), 2);
    out.push(b'-');
    push_digits(out, u64::from(d), 2);
    out.push(b'T');
    push_digits(out, rem / 3600, 2);
    out.push(b':');
    push_digits(out, (rem % 3600) / 60, 2);
    out.push(b':');
    push_digits(out, rem % 60, 2);
    out.push(b'.');
    push_digits(out, nanos, 9);
    out.push(b'Z');
}

#[cfg(test)]
fn rfc3339(unix_nanos: u64) -> String {
    let mut out = Vec::new();
    push_rfc3339(&mut out, unix_nanos);
    String::from_utf8(out).unwrap_or_default()
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;
    use crate::context::{SpanContext, SpanId, TraceId};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T12:34:56.000000007Z
        assert_eq!(
            rfc3339(1_709_210_096_000_000_007),
            "2024-02-29T12:34:56.000000007Z"
        );
    }

    #[test]
    fn json_line_carries_ids_fields_and_service() {
        let event = LogEvent {
            time_unix_nanos: 0,
            level: Level::WARN,
            target: "shop::cart",
            message: "item \"x\" gone".into(),
            fields: vec![
                ("count", FieldValue::U64(3)),
                ("ok", FieldValue::Bool(false)),
            ],
            span: Some(SpanContext {
                trace_id: TraceId([0xab; 16]),
                span_id: SpanId([0xcd; 8]),
                flags: 1,
                remote: false,
            }),
            export: true,
        };
        let mut out = Vec::new();
        write_json_line(&mut out, &event, "shop");
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "item \"x\" gone");
        assert_eq!(v["fields"]["count"], 3);
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "cd".repeat(8));
        assert_eq!(v["service"], "shop");
    }
}
