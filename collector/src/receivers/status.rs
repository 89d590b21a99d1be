//! `google.rpc.Status`, the body of OTLP/HTTP error responses.

use super::decode::{encode, Encoding};
use super::IngestError;

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

pub fn error_body(err: &IngestError, encoding: Encoding) -> Vec<u8> {
    let status = RpcStatus {
        code: err.grpc_code() as i32,
        message: err.to_string(),
    };
    encode(&status, encoding)
}
