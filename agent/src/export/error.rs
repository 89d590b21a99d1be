//! Why the export could not start; the builder reports each as the matching
//! [`crate::InitError`] variant.

use thiserror::Error;

use super::tls::TlsError;

#[derive(Debug, Error)]
pub(crate) enum StartError {
    #[error("export header {name:?} is not a valid header")]
    InvalidHeader { name: String },
    #[error("export TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot start the agent's export thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the agent's export thread stopped while starting")]
    ThreadExited,
}
