//! Which ClickHouse failures are worth retrying, and how long to wait.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.min(20));
        let cap = exp.min(self.max);
        let jittered = rand::rng().random_range(cap.as_secs_f64() / 2.0..=cap.as_secs_f64());
        Duration::from_secs_f64(jittered)
    }
}

/// ClickHouse error codes that mean the data itself is bad: retrying cannot help.
const DATA_ERRORS: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    62,  // SYNTAX_ERROR
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
];

/// ClickHouse error codes that mean a table or column is gone: re-check the schema.
const SCHEMA_ERRORS: &[u32] = &[16, 47, 60, 81];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Retry,
    SchemaChanged,
    BadData,
}

pub fn classify(err: &clickhouse::error::Error) -> Failure {
    match err {
        clickhouse::error::Error::BadResponse(text) => match error_code(text) {
            Some(code) if DATA_ERRORS.contains(&code) => Failure::BadData,
            Some(code) if SCHEMA_ERRORS.contains(&code) => Failure::SchemaChanged,
            _ => Failure::Retry,
        },
        _ => Failure::Retry,
    }
}

/// The `N` of `Code: N. DB::Exception: …`.
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_exception_code() {
        let bad = clickhouse::error::Error::BadResponse(
            "Code: 33. DB::Exception: Cannot read all data".into(),
        );
        assert_eq!(classify(&bad), Failure::BadData);
        let gone =
            clickhouse::error::Error::BadResponse("Code: 60. DB::Exception: Unknown table".into());
        assert_eq!(classify(&gone), Failure::SchemaChanged);
        let busy = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts".into(),
        );
        assert_eq!(classify(&busy), Failure::Retry);
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut),
            Failure::Retry
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let cap = Duration::from_millis(100 * (1u64 << attempt.min(20))).min(b.max);
            assert!(d <= cap && d >= cap / 2, "attempt {attempt}: {d:?}");
        }
    }
}
