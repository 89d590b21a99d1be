//! Sending one OTLP request: gRPC (tonic), HTTP/protobuf or HTTP/JSON (reqwest),
//! each with the configured headers, compression, TLS and timeout. A batch is
//! encoded once; retries (see `retry.rs`, driven by the export loop) resend the
//! same bytes.

use std::io::Write as _;
use std::str::FromStr;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use thiserror::Error;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::error::StartError;
use super::retry::{self, Retry};
use super::tls::TlsMaterial;
use crate::config::{Compression, Config, Protocol, Signal};

#[derive(Debug, Error)]
pub(crate) enum ExportError {
    #[error("gRPC export failed: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("HTTP export failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP export answered {status}")]
    HttpStatus {
        status: u16,
        retry_after: Option<String>,
    },
    #[error("export timed out")]
    Timeout,
    #[error("the collector rejected {0} items")]
    Rejected(i64),
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

impl ExportError {
    /// Whether another attempt could succeed, per the OTLP exporter spec.
    pub(crate) fn retry(&self) -> Retry {
        match self {
            ExportError::Grpc(status) => retry::grpc(status),
            // Not connected, or the connection broke before an answer: the
            // collector never took the batch.
            ExportError::Http(e) if e.is_connect() || e.is_request() => Retry::After(None),
            ExportError::HttpStatus {
                status,
                retry_after,
            } => retry::http(*status, retry_after.as_deref()),
            _ => Retry::Never,
        }
    }
}

pub(crate) enum Payload {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

enum Kind {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
        path: PathAndQuery,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: http::HeaderMap,
        json: bool,
    },
}

pub(crate) struct Transport {
    kind: Kind,
    gzip: bool,
}

fn grpc_path(signal: Signal) -> PathAndQuery {
    PathAndQuery::from_static(match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    })
}

impl Transport {
    /// Must run inside a Tokio runtime (the lazy gRPC channel spawns its worker).
    /// `endpoint` is one of [`Config::connect_url`]'s (see `endpoints.rs`).
    pub(crate) fn new(
        config: &Config,
        signal: Signal,
        endpoint: String,
    ) -> Result<Transport, StartError> {
        let export = config.export(signal);
        let bad_endpoint = |reason: String| StartError::InvalidEndpoint {
            endpoint: endpoint.clone(),
            reason,
        };
        let tls = TlsMaterial::load(&export.tls)?;
        let kind = match export.protocol {
            Protocol::Grpc => {
                let mut channel = Endpoint::from_str(&endpoint)
                    .map_err(|e| bad_endpoint(e.to_string()))?
                    .connect_timeout(export.timeout);
                let uri = channel.uri().clone();
                if uri.scheme_str() == Some("https") {
                    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
                    channel = channel
                        .tls_config(tls.grpc(host))
                        .map_err(|e| bad_endpoint(e.to_string()))?;
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &export.headers {
                    let invalid = || StartError::InvalidHeader { name: name.clone() };
                    let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| invalid())?;
                    let value = MetadataValue::try_from(value.as_str()).map_err(|_| invalid())?;
                    metadata.insert(key, value);
                }
                Kind::Grpc {
                    channel: channel.connect_lazy(),
                    metadata,
                    path: grpc_path(signal),
                }
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let mut headers = http::HeaderMap::new();
                for (name, value) in &export.headers {
                    let invalid = || StartError::InvalidHeader { name: name.clone() };
                    headers.insert(
                        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?,
                        http::HeaderValue::from_str(value).map_err(|_| invalid())?,
                    );
                }
                let client = tls
                    .http(reqwest::Client::builder().connect_timeout(export.timeout))?
                    .build()
                    .map_err(|e| bad_endpoint(e.to_string()))?;
                Kind::Http {
                    client,
                    url: endpoint.clone(),
                    headers,
                    json: export.protocol == Protocol::HttpJson,
                }
            }
        };
        Ok(Transport {
            kind,
            gzip: export.compression == Compression::Gzip,
        })
    }

    /// The request body, encoded (and for HTTP compressed) once for all attempts.
    pub(crate) fn encode(&self, payload: Payload) -> Result<Bytes, ExportError> {
        let json = matches!(self.kind, Kind::Http { json: true, .. });
        let body = if json {
            let encoded = match &payload {
                Payload::Traces(r) => serde_json::to_vec(r),
                Payload::Logs(r) => serde_json::to_vec(r),
                Payload::Metrics(r) => serde_json::to_vec(r),
            };
            encoded.map_err(|e| ExportError::Encode(e.to_string()))?
        } else {
            match payload {
                Payload::Traces(r) => r.encode_to_vec(),
                Payload::Logs(r) => r.encode_to_vec(),
                Payload::Metrics(r) => r.encode_to_vec(),
            }
        };
        // gRPC compresses per message itself.
        if self.gzip && matches!(self.kind, Kind::Http { .. }) {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder
                .write_all(&body)
                .map_err(|e| ExportError::Encode(e.to_string()))?;
            let gz = encoder
                .finish()
                .map_err(|e| ExportError::Encode(e.to_string()))?;
            return Ok(gz.into());
        }
        Ok(body.into())
    }

    /// One attempt, given `timeout` at most.
    pub(crate) async fn send(&self, body: Bytes, timeout: Duration) -> Result<(), ExportError> {
        // The transport's own timeouts cover connect and request; this one also
        // bounds anything they miss (a stalled h2 stream).
        match tokio::time::timeout(timeout, self.send_inner(body, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout),
        }
    }

    async fn send_inner(&self, body: Bytes, timeout: Duration) -> Result<(), ExportError> {
        let rejected = match &self.kind {
            Kind::Grpc {
                channel,
                metadata,
                path,
            } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if self.gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(timeout);
                let response = grpc.unary(request, path.clone(), RawCodec).await?;
                response.into_inner().rejected()
            }
            Kind::Http {
                client,
                url,
                headers,
                json,
            } => {
                let content_type = if *json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                };
                let mut request = client
                    .post(url)
                    .timeout(timeout)
                    .headers(headers.clone())
                    .header(http::header::CONTENT_TYPE, content_type);
                if self.gzip {
                    request = request.header(http::header::CONTENT_ENCODING, "gzip");
                }
                let response = request.body(body).send().await?;
                let status = response.status();
                if !status.is_success() {
                    let retry_after = response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    return Err(ExportError::HttpStatus {
                        status: status.as_u16(),
                        retry_after,
                    });
                }
                let answer = response.bytes().await?;
                if *json {
                    json_rejected(&answer)
                } else {
                    ExportResponse::decode(answer).map_or(0, |r| r.rejected())
                }
            }
        };
        if rejected > 0 {
            return Err(ExportError::Rejected(rejected));
        }
        Ok(())
    }
}

/// The three `Export*ServiceResponse` messages share this shape on the wire:
/// `partial_success { rejected_<items> = 1; error_message = 2 }`.
#[derive(Clone, PartialEq, Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

impl ExportResponse {
    fn rejected(&self) -> i64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected)
    }
}

/// `{"partialSuccess":{"rejectedSpans":"3",…}}`; int64 may be a string in OTLP/JSON.
fn json_rejected(body: &[u8]) -> i64 {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let Some(partial) = value.get("partialSuccess").and_then(|p| p.as_object()) else {
        return 0;
    };
    partial
        .iter()
        .filter(|(k, _)| k.starts_with("rejected"))
        .filter_map(|(_, v)| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
        .sum()
}

/// Sends already encoded message bytes and reads the shared response shape, so a
/// batch is encoded once and retried without re-encoding.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ExportResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportResponse>, tonic::Status> {
        ExportResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_success_is_read_from_protobuf_and_json() {
        let answer = ExportResponse {
            partial_success: Some(PartialSuccess {
                rejected: 3,
                error_message: "too old".into(),
            }),
        };
        let decoded = ExportResponse::decode(answer.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.rejected(), 3);
        // The generated response type agrees on the wire.
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        let real = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 7,
                error_message: String::new(),
            }),
        };
        let decoded = ExportResponse::decode(real.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.rejected(), 7);
        assert_eq!(
            json_rejected(br#"{"partialSuccess":{"rejectedLogRecords":"2"}}"#),
            2
        );
        assert_eq!(json_rejected(br#"{"partialSuccess":{}}"#), 0);
        assert_eq!(json_rejected(b""), 0);
    }
}
