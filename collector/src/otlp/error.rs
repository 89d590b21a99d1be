//! Why a request was not accepted, and how each receiver says so.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    /// Over a memory or disk budget: the client should retry later.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// No or a wrong bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not ready to take data (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The client did not send its request in time.
    #[error("{0}")]
    TimedOut(String),
}

impl IngestError {
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            IngestError::Malformed(_) => S::BAD_REQUEST,
            IngestError::UnsupportedMediaType(_) => S::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge(_) => S::PAYLOAD_TOO_LARGE,
            IngestError::Overloaded { .. } => S::TOO_MANY_REQUESTS,
            IngestError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            IngestError::Unauthenticated(_) => S::UNAUTHORIZED,
            IngestError::TimedOut(_) => S::REQUEST_TIMEOUT,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            IngestError::Malformed(_) | IngestError::UnsupportedMediaType(_) => {
                tonic::Code::InvalidArgument
            }
            IngestError::TooLarge(_) | IngestError::Overloaded { .. } => {
                tonic::Code::ResourceExhausted
            }
            IngestError::Unavailable(_) => tonic::Code::Unavailable,
            IngestError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            IngestError::TimedOut(_) => tonic::Code::DeadlineExceeded,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
