//! The OTLP vocabulary the receivers and the mapping share: how a body is encoded and
//! decoded, and why a request is refused ([`IngestError`], with its HTTP status and
//! gRPC code). It depends on no other module, so both sides can use it.

mod decode;
mod error;

pub use decode::{decode, decompress, encode, too_large, Encoding};
pub use error::IngestError;
