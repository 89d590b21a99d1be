//! Sending one OTLP request: gRPC (tonic) or HTTP/protobuf (reqwest), each with
//! the configured headers, compression and timeout. One attempt per batch: the
//! agent prefers dropping (and counting) to holding memory for retries.

use std::io::Write as _;
use std::str::FromStr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use thiserror::Error;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::agent::InitError;
use crate::config::{Compression, Config, Protocol, Signal};

#[derive(Debug, Error)]
pub(crate) enum ExportError {
    #[error("gRPC export failed: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("HTTP export failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP export answered {0}")]
    HttpStatus(u16),
    #[error("export timed out")]
    Timeout,
    #[error("the collector rejected {0} items")]
    Rejected(i64),
    #[error("cannot compress the request: {0}")]
    Compress(#[from] std::io::Error),
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
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: http::HeaderMap,
    },
}

pub(crate) struct Transport {
    kind: Kind,
    gzip: bool,
    timeout: Duration,
}

impl Transport {
    /// Must run inside a Tokio runtime (the lazy gRPC channel spawns its worker).
    pub(crate) fn new(config: &Config, signal: Signal) -> Result<Transport, InitError> {
        let export = config.export(signal);
        let endpoint = config.resolved_endpoint(signal);
        let bad_endpoint = |reason: String| InitError::InvalidEndpoint {
            endpoint: endpoint.clone(),
            reason,
        };
        let kind = match export.protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from_str(&endpoint)
                    .map_err(|e| bad_endpoint(e.to_string()))?
                    .connect_timeout(export.timeout)
                    .timeout(export.timeout)
                    .connect_lazy();
                let mut metadata = MetadataMap::new();
                for (name, value) in &export.headers {
                    let invalid = || InitError::InvalidHeader { name: name.clone() };
                    let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| invalid())?;
                    let value = MetadataValue::try_from(value.as_str()).map_err(|_| invalid())?;
                    metadata.insert(key, value);
                }
                Kind::Grpc { channel, metadata }
            }
            Protocol::HttpProtobuf => {
                let mut headers = http::HeaderMap::new();
                for (name, value) in &export.headers {
                    let invalid = || InitError::InvalidHeader { name: name.clone() };
                    headers.insert(
                        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?,
                        http::HeaderValue::from_str(value).map_err(|_| invalid())?,
                    );
                }
                let client = reqwest::Client::builder()
                    .timeout(export.timeout)
                    .build()
                    .map_err(|e| bad_endpoint(e.to_string()))?;
                Kind::Http {
                    client,
                    url: endpoint.clone(),
                    headers,
                }
            }
        };
        Ok(Transport {
            kind,
            gzip: export.compression == Compression::Gzip,
            timeout: export.timeout,
        })
    }

    pub(crate) async fn send(&self, payload: Payload) -> Result<(), ExportError> {
        // The transport's own timeouts cover connect and request; this one also
        // bounds anything they miss (a stalled h2 stream).
        match tokio::time::timeout(
            self.timeout + Duration::from_millis(100),
            self.send_inner(payload),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout),
        }
    }

    async fn send_inner(&self, payload: Payload) -> Result<(), ExportError> {
        match &self.kind {
            Kind::Grpc { channel, metadata } => {
                // The three generated clients share no trait; one arm shape for all.
                macro_rules! export {
                    ($client:ident, $request:expr, $rejected:ident) => {{
                        let mut client = $client::new(channel.clone());
                        if self.gzip {
                            client = client.send_compressed(CompressionEncoding::Gzip);
                        }
                        let response = client.export(request($request, metadata)).await?;
                        response
                            .into_inner()
                            .partial_success
                            .map_or(0, |p| p.$rejected)
                    }};
                }
                let rejected = match payload {
                    Payload::Traces(r) => export!(TraceServiceClient, r, rejected_spans),
                    Payload::Logs(r) => export!(LogsServiceClient, r, rejected_log_records),
                    Payload::Metrics(r) => export!(MetricsServiceClient, r, rejected_data_points),
                };
                if rejected > 0 {
                    return Err(ExportError::Rejected(rejected));
                }
                Ok(())
            }
            Kind::Http {
                client,
                url,
                headers,
            } => {
                let body = match payload {
                    Payload::Traces(r) => r.encode_to_vec(),
                    Payload::Logs(r) => r.encode_to_vec(),
                    Payload::Metrics(r) => r.encode_to_vec(),
                };
                let mut request = client
                    .post(url)
                    .headers(headers.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if self.gzip {
                    request = request.header(http::header::CONTENT_ENCODING, "gzip");
                    let mut encoder =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    encoder.write_all(&body)?;
                    encoder.finish()?
                } else {
                    body
                };
                let response = request.body(body).send().await?;
                if !response.status().is_success() {
                    return Err(ExportError::HttpStatus(response.status().as_u16()));
                }
                Ok(())
            }
        }
    }
}

fn request<T>(message: T, metadata: &MetadataMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request
}
