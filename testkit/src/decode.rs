//! What a receiver does to a request body before the pipeline, for fuzz and property
//! tests and the ingest bench.

use collector::mapping::{Logs, Mapped, Metrics, Signal, Traces};
use collector::otlp::{Encoding, IngestError};
use collector::receivers::ReceiversConfig;

/// Decode, item and attribute limits, mapping to encoded RowBinary rows — without
/// network, auth or pipeline. `signal` is `traces`, `logs` or `metrics`. Returns the
/// mapped rows and the note the limits would add to the response.
pub fn decode_for_tests(
    signal: &str,
    body: &[u8],
    encoding: Encoding,
    config: &ReceiversConfig,
) -> Result<(Mapped, String), IngestError> {
    fn run<S: Signal>(
        body: &[u8],
        encoding: Encoding,
        config: &ReceiversConfig,
    ) -> Result<(Mapped, String), IngestError> {
        let limits = config.limits();
        let request = S::decode(bytes::Bytes::copy_from_slice(body), encoding)?;
        if S::items(&request) > limits.max_items {
            return Err(IngestError::TooLarge("too many items".into()));
        }
        let (mapped, report) = S::map(request, &limits)?;
        Ok((mapped, report.note(&limits)))
    }
    match signal {
        "traces" => run::<Traces>(body, encoding, config),
        "logs" => run::<Logs>(body, encoding, config),
        "metrics" => run::<Metrics>(body, encoding, config),
        other => Err(IngestError::Malformed(format!("unknown signal {other}"))),
    }
}
