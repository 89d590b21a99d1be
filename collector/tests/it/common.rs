//! OTLP fixtures with hand-written expected rows, and clients for every transport.

use std::io::Write;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tonic::codec::CompressionEncoding;

pub const TRACE: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
pub const TRACE_HEX: &str = "0102030405060708090a0b0c0d0e0f10";
pub const SPAN: [u8; 8] = [0x11; 8];
pub const SPAN_HEX: &str = "1111111111111111";
pub const PARENT: [u8; 8] = [0xaa; 8];
pub const PARENT_HEX: &str = "aaaaaaaaaaaaaaaa";
pub const T0: u64 = 1_700_000_000_123_456_789;

pub fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

pub fn int(v: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::IntValue(v)),
    })
}

pub fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

pub fn map(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", s(service)), kv("host.name", s("h1"))],
        ..Default::default()
    })
}

pub fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "scope-a".into(),
        version: "1.2.3".into(),
        attributes: vec![kv("scope.attr", s("x"))],
        dropped_attributes_count: 2,
    })
}

pub fn resource_map(service: &str) -> Vec<(String, String)> {
    map(&[("host.name", "h1"), ("service.name", service)])
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// One resource (with `service`) and one scope holding `spans`.
pub fn traces_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// How a request travels to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    GrpcGzip,
    HttpProtobuf,
    HttpProtobufGzip,
    HttpJson,
    HttpJsonGzip,
}

pub const ALL_TRANSPORTS: [Transport; 6] = [
    Transport::Grpc,
    Transport::GrpcGzip,
    Transport::HttpProtobuf,
    Transport::HttpProtobufGzip,
    Transport::HttpJson,
    Transport::HttpJsonGzip,
];

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::GrpcGzip => "grpc-gzip",
            Transport::HttpProtobuf => "http-protobuf",
            Transport::HttpProtobufGzip => "http-protobuf-gzip",
            Transport::HttpJson => "http-json",
            Transport::HttpJsonGzip => "http-json-gzip",
        }
    }

    fn gzip(self) -> bool {
        matches!(
            self,
            Transport::GrpcGzip | Transport::HttpProtobufGzip | Transport::HttpJsonGzip
        )
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// POSTs a body; returns status, content type and body.
pub async fn post(
    endpoint: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    gzipped: bool,
) -> (u16, String, Vec<u8>) {
    let mut req = reqwest::Client::new()
        .post(format!("{endpoint}{path}"))
        .header("content-type", content_type);
    let body = if gzipped {
        req = req.header("content-encoding", "gzip");
        gzip(&body)
    } else {
        body
    };
    let resp = req.body(body).send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

/// Sends one request of any signal over `transport`; returns the HTTP status (200
/// for gRPC success) so callers can assert acceptance.
pub async fn send<M>(collector: &testkit::TestCollector, transport: Transport, path: &str, req: M)
where
    M: prost::Message + serde::Serialize + Clone + 'static + Into<AnyRequest>,
{
    match transport {
        Transport::Grpc | Transport::GrpcGzip => {
            send_grpc(&collector.grpc_endpoint(), req.into(), transport.gzip()).await
        }
        Transport::HttpProtobuf | Transport::HttpProtobufGzip => {
            let (status, _, body) = post(
                &collector.http_endpoint(),
                path,
                "application/x-protobuf",
                req.encode_to_vec(),
                transport.gzip(),
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        }
        Transport::HttpJson | Transport::HttpJsonGzip => {
            let json = serde_json::to_vec(&req).unwrap();
            let (status, ct, body) = post(
                &collector.http_endpoint(),
                path,
                "application/json",
                json,
                transport.gzip(),
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            assert_eq!(ct, "application/json");
        }
    }
}

pub enum AnyRequest {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl From<ExportTraceServiceRequest> for AnyRequest {
    fn from(r: ExportTraceServiceRequest) -> Self {
        AnyRequest::Traces(r)
    }
}
impl From<ExportLogsServiceRequest> for AnyRequest {
    fn from(r: ExportLogsServiceRequest) -> Self {
        AnyRequest::Logs(r)
    }
}
impl From<ExportMetricsServiceRequest> for AnyRequest {
    fn from(r: ExportMetricsServiceRequest) -> Self {
        AnyRequest::Metrics(r)
    }
}

pub async fn send_grpc(endpoint: &str, req: AnyRequest, gzipped: bool) {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connect");
    macro_rules! export {
        ($client:ident, $req:expr) => {{
            let mut c = $client::new(channel);
            if gzipped {
                c = c.send_compressed(CompressionEncoding::Gzip);
            }
            let resp = c.export($req).await.expect("gRPC export").into_inner();
            assert!(resp.partial_success.is_none(), "{:?}", resp.partial_success);
        }};
    }
    match req {
        AnyRequest::Traces(r) => export!(TraceServiceClient, r),
        AnyRequest::Logs(r) => export!(LogsServiceClient, r),
        AnyRequest::Metrics(r) => export!(MetricsServiceClient, r),
    }
}

/// A gRPC client that sends arbitrary bytes as the request message, to test what
/// the server does with input no well-behaved client would produce.
pub mod raw_grpc {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RespDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ExportTraceServiceResponse;
        type Encoder = RawEncoder;
        type Decoder = RespDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RespDecoder {
            RespDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }

    impl Decoder for RespDecoder {
        type Item = ExportTraceServiceResponse;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
            prost::Message::decode(src)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        }
    }

    /// Sends `body` to the trace Export method.
    pub async fn export_traces(
        endpoint: &str,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        );
        grpc.unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(|r| r.into_inner())
    }
}

/// Creates `database` and runs a fixture's statements in it (`;`-separated, `--`
/// comment lines, `{db}` standing for the database).
pub async fn create_fixture(client: &clickhouse::Client, fixture: &str, database: &str) {
    client
        .query(&format!("CREATE DATABASE `{database}`"))
        .execute()
        .await
        .unwrap();
    for statement in testkit::upstream::statements(fixture, database) {
        client
            .query(&statement)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}
