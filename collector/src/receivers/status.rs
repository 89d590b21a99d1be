//! `google.rpc.Status`, the body of OTLP/HTTP error responses.

use crate::otlp::IngestError;
use crate::otlp::{encode, Encoding};

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

/// `google.rpc.Status` with details, as sent in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct DetailedStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The encoded status details telling a gRPC client how long to back off; OTLP
/// exporters honour `RetryInfo` on RESOURCE_EXHAUSTED.
pub fn retry_info_details(code: i32, message: &str, after: std::time::Duration) -> Vec<u8> {
    use prost::Message as _;
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: after.as_secs() as i64,
            nanos: after.subsec_nanos() as i32,
        }),
    };
    DetailedStatus {
        code,
        message: message.into(),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn retry_info_round_trips() {
        let bytes = retry_info_details(8, "slow down", std::time::Duration::from_millis(1500));
        let status = DetailedStatus::decode(&bytes[..]).unwrap();
        assert_eq!((status.code, status.message.as_str()), (8, "slow down"));
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let info = RetryInfo::decode(&status.details[0].value[..]).unwrap();
        let d = info.retry_delay.unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
