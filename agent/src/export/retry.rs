//! Which failed exports are worth another attempt, and when: the OTLP exporter
//! spec's retryable gRPC codes and HTTP statuses, the server's `RetryInfo` /
//! `Retry-After` when it sends one, otherwise capped exponential backoff with
//! jitter. The caller bounds the attempts by the export timeout and the shutdown
//! deadline and holds at most the one batch it is sending, so retries cannot
//! grow memory.

use std::time::{Duration, SystemTime};

use prost::Message;

const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a failed attempt says about the next one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Retry {
    /// Permanent (bad request, rejected data, …): drop the batch.
    Never,
    /// Retryable; the server may have said how long to wait.
    After(Option<Duration>),
}

/// gRPC codes the OTLP spec lists as retryable. RESOURCE_EXHAUSTED only when the
/// server says when to come back (`RetryInfo`); otherwise it is a permanent
/// overload the client cannot fix by hammering.
pub(crate) fn grpc(status: &tonic::Status) -> Retry {
    use tonic::Code;
    let hint = retry_info(status.details());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Retry::After(hint),
        Code::ResourceExhausted if hint.is_some() => Retry::After(hint),
        _ => Retry::Never,
    }
}

/// HTTP statuses the OTLP spec lists as retryable, with `Retry-After`.
pub(crate) fn http(status: u16, retry_after: Option<&str>) -> Retry {
    match status {
        429 | 502 | 503 | 504 => Retry::After(retry_after.and_then(parse_retry_after)),
        _ => Retry::Never,
    }
}

/// `Retry-After`: delta-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The wait before attempt `attempt + 1` (0-based) when the server gave no
/// hint: exponential from 200 ms, capped at 5 s, with full jitter so many
/// agents restarted together do not retry in step.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = INITIAL_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(rand::random::<f64>().max(0.1))
}

/// `google.rpc.Status` as sent in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
struct StatusDetails {
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn retry_info(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = StatusDetails::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        u64::try_from(delay.seconds).unwrap_or(0),
        u32::try_from(delay.nanos).unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retry_info(code: tonic::Code, delay: Duration) -> tonic::Status {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        let details = StatusDetails {
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: info.encode_to_vec(),
            }],
        };
        tonic::Status::with_details(code, "slow down", details.encode_to_vec().into())
    }

    #[test]
    fn grpc_codes_follow_the_otlp_spec() {
        assert_eq!(
            grpc(&tonic::Status::unavailable("down")),
            Retry::After(None)
        );
        assert_eq!(
            grpc(&tonic::Status::resource_exhausted("full")),
            Retry::Never
        );
        assert_eq!(
            grpc(&with_retry_info(
                tonic::Code::ResourceExhausted,
                Duration::from_millis(1500)
            )),
            Retry::After(Some(Duration::from_millis(1500)))
        );
        assert_eq!(grpc(&tonic::Status::invalid_argument("bad")), Retry::Never);
        assert_eq!(grpc(&tonic::Status::unauthenticated("who")), Retry::Never);
    }

    #[test]
    fn http_statuses_and_retry_after() {
        assert_eq!(
            http(503, Some("3")),
            Retry::After(Some(Duration::from_secs(3)))
        );
        assert_eq!(http(429, None), Retry::After(None));
        assert_eq!(http(502, Some("soon")), Retry::After(None));
        assert_eq!(http(400, Some("3")), Retry::Never);
        assert_eq!(http(500, None), Retry::Never);
        let later = SystemTime::now() + Duration::from_secs(120);
        let Retry::After(Some(wait)) = http(503, Some(&httpdate::fmt_http_date(later))) else {
            panic!("an HTTP date is a hint");
        };
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let wait = backoff(attempt);
            assert!(wait <= MAX_BACKOFF, "{attempt}: {wait:?}");
        }
        assert!(backoff(0) <= INITIAL_BACKOFF);
    }
}
