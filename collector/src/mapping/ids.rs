//! Trace and span ids: length checks and lowercase hex.

pub fn hex(bytes: &[u8]) -> String {
    const_hex::encode(bytes)
}

/// A trace id must be 16 bytes and not all zero; a span id 8 bytes and not all zero.
pub fn valid_trace_id(id: &[u8]) -> bool {
    id.len() == 16 && id.iter().any(|b| *b != 0)
}

pub fn valid_span_id(id: &[u8]) -> bool {
    id.len() == 8 && id.iter().any(|b| *b != 0)
}

/// Ids that may be absent (a root's parent, a log outside a trace) must be empty or valid.
pub fn optional_trace_id(id: &[u8]) -> bool {
    id.is_empty() || id.len() == 16
}

pub fn optional_span_id(id: &[u8]) -> bool {
    id.is_empty() || id.len() == 8
}

/// DateTime64(9) holds an Int64; OTLP times are u64 nanoseconds.
pub fn nanos(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// DateTime holds u32 seconds.
pub fn seconds(t: u64) -> u32 {
    u32::try_from(t / 1_000_000_000).unwrap_or(u32::MAX)
}
