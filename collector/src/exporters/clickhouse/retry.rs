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

/// ClickHouse error codes that mean these rows can never be inserted as they are:
/// retrying cannot help, so the batch is split to find them and they go to the
/// dead-letter store. Codes that a broken or cut transfer can also cause
/// (CANNOT_READ_ALL_DATA, SYNTAX_ERROR) are not here: those are retried.
const DATA_ERRORS: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    469, // VIOLATED_CONSTRAINT
];

/// TOO_MANY_PARTS: usually merges lagging (retry), but also "Too many partitions
/// for single INSERT block", which these rows will always hit.
const TOO_MANY_PARTS: u32 = 252;

/// ClickHouse error codes that mean a table or column is gone: re-check the schema.
const SCHEMA_ERRORS: &[u32] = &[16, 47, 60, 81];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer from ClickHouse (refused, reset, timed out, no error code): an
    /// outage. Retried for as long as it lasts; never counts toward giving up.
    Unavailable,
    /// ClickHouse answered with an error that may pass (or that a cut transfer can
    /// cause): retried, and counted toward the dead-letter bound.
    Refused,
    SchemaChanged,
    /// These rows can never be inserted as they are.
    BadData,
}

pub fn classify(err: &clickhouse::error::Error) -> Failure {
    match err {
        clickhouse::error::Error::BadResponse(text) => match error_code(text) {
            Some(code) if DATA_ERRORS.contains(&code) => Failure::BadData,
            Some(TOO_MANY_PARTS) if text.contains("partitions for single INSERT block") => {
                Failure::BadData
            }
            Some(code) if SCHEMA_ERRORS.contains(&code) => Failure::SchemaChanged,
            Some(_) => Failure::Refused,
            None => Failure::Unavailable,
        },
        _ => Failure::Unavailable,
    }
}

/// When a batch ClickHouse keeps refusing is given up (split, then dead-lettered).
#[derive(Debug, Clone, Copy)]
pub struct GiveUp {
    /// Refusals (answers with an error code) at least…
    pub attempts: u32,
    /// …over at least this long since the first one.
    pub after: Duration,
}

impl GiveUp {
    pub fn reached(&self, attempts: u32, failing_for: Duration) -> bool {
        attempts >= self.attempts.max(1) && failing_for >= self.after
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
            "Code: 469. DB::Exception: Constraint `c` for table t is violated".into(),
        );
        assert_eq!(classify(&bad), Failure::BadData);
        let partitions = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100)"
                .into(),
        );
        assert_eq!(classify(&partitions), Failure::BadData);
        // Ambiguous: a transfer cut short ends the same way. Retried, never dropped.
        for text in [
            "Code: 33. DB::Exception: Cannot read all data",
            "Code: 62. DB::Exception: Syntax error",
        ] {
            let e = clickhouse::error::Error::BadResponse(text.into());
            assert_eq!(classify(&e), Failure::Refused, "{text}");
        }
        let no_code = clickhouse::error::Error::BadResponse("502 Bad Gateway".into());
        assert_eq!(classify(&no_code), Failure::Unavailable);
        let gone =
            clickhouse::error::Error::BadResponse("Code: 60. DB::Exception: Unknown table".into());
        assert_eq!(classify(&gone), Failure::SchemaChanged);
        let busy = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts".into(),
        );
        assert_eq!(classify(&busy), Failure::Refused);
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut),
            Failure::Unavailable
        );
    }

    #[test]
    fn gives_up_only_past_both_bounds() {
        let g = GiveUp {
            attempts: 3,
            after: Duration::from_secs(10),
        };
        assert!(!g.reached(2, Duration::from_secs(60)));
        assert!(!g.reached(30, Duration::from_secs(9)));
        assert!(g.reached(3, Duration::from_secs(10)));
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
