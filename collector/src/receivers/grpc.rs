//! OTLP/gRPC: the trace, logs and metrics `Export` services, gzip accepted.
//!
//! The services are written here instead of taking the generated servers so that we
//! decode the protobuf ourselves, like the HTTP receiver does: the codec hands over
//! the message bytes and [`Signal::decode`] reads them, so a malformed message is the
//! client's fault (INVALID_ARGUMENT, where the generated code answers INTERNAL) and
//! traces are mapped from the bytes without prost's message types.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderValue;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};

use super::budget::{BodyError, Charge};
use super::ingest::{Caller, Ingest};
use super::status::retry_info_details;
use crate::mapping::Signal;
use crate::otlp::{Encoding, IngestError};
use crate::pipeline::Pipeline;
use crate::telemetry::Outcome;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub struct OtlpCodec<S>(PhantomData<fn() -> S>);

impl<S: Signal> Codec for OtlpCodec<S> {
    type Encode = S::Response;
    type Decode = Bytes;
    type Encoder = OtlpEncoder<S>;
    type Decoder = OtlpDecoder<S>;

    fn encoder(&mut self) -> Self::Encoder {
        OtlpEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        OtlpDecoder(PhantomData)
    }
}

pub struct OtlpEncoder<S>(PhantomData<fn() -> S>);

impl<S: Signal> Encoder for OtlpEncoder<S> {
    type Item = S::Response;
    type Error = Status;

    fn encode(&mut self, item: S::Response, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

pub struct OtlpDecoder<S>(PhantomData<fn() -> S>);

impl<S: Signal> Decoder for OtlpDecoder<S> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The status for a refusal; an overload carries `RetryInfo`, as OTLP asks.
pub fn to_status(err: &IngestError) -> Status {
    match err.retry_after() {
        Some(after) => Status::with_details(
            err.grpc_code(),
            err.to_string(),
            retry_info_details(err.grpc_code() as i32, &err.to_string(), after).into(),
        ),
        None => Status::new(err.grpc_code(), err.to_string()),
    }
}

/// One signal's `Export` service.
pub struct ExportService<S> {
    ingest: Arc<Ingest>,
    _signal: PhantomData<fn() -> S>,
}

impl<S> Clone for ExportService<S> {
    fn clone(&self) -> Self {
        ExportService {
            ingest: self.ingest.clone(),
            _signal: PhantomData,
        }
    }
}

impl<S: Signal> ExportService<S> {
    pub fn new(ingest: Arc<Ingest>) -> Self {
        ExportService {
            ingest,
            _signal: PhantomData,
        }
    }
}

impl<S: Signal> NamedService for ExportService<S> {
    const NAME: &'static str = S::GRPC_SERVICE;
}

struct Export<S> {
    ingest: Arc<Ingest>,
    caller: Caller,
    /// What the request's bytes paid; the inflated message is paid for too.
    charge: Charge,
    compressed: bool,
    _signal: PhantomData<fn() -> S>,
}

impl<S: Signal> UnaryService<Bytes> for Export<S> {
    type Response = S::Response;
    type Future = BoxFuture<Result<tonic::Response<S::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (ingest, caller, charge) = (self.ingest.clone(), self.caller, self.charge.clone());
        let compressed = self.compressed;
        Box::pin(async move {
            let message = request.into_inner();
            if compressed {
                // A refusal here is counted with the body's, from the charge.
                if let Err(why) = charge.pay(message.len()).await {
                    return Err(to_status(&why.into()));
                }
            }
            let request = S::decode(message, Encoding::Protobuf)
                .map_err(|e| to_status(&ingest.refused::<S>(e)))?;
            ingest
                .accept::<S>(caller, request)
                .await
                .map(tonic::Response::new)
                .map_err(|e| to_status(&e))
        })
    }
}

impl<S: Signal, B> tower::Service<http::Request<B>> for ExportService<S>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if !req.uri().path().ends_with("/Export") {
                return Ok(Status::unimplemented("only Export is served").into_http());
            }
            // Before tonic reads the message: metadata are HTTP/2 headers.
            let caller = match this.ingest.authenticate::<S>(req.headers()) {
                Ok(c) => c,
                Err(e) => return Ok(to_status(&e).into_http()),
            };
            let mut grpc = tonic::server::Grpc::new(OtlpCodec::<S>(PhantomData))
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(this.ingest.max_request_bytes);
            let compressed = req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() != b"identity");
            // The message's bytes pay from the shared budget as they arrive and must
            // all be there before the body timeout; a stop is answered with the
            // refusal's own status (tonic keeps a `Status` a body fails with).
            let (parts, body) = req.into_parts();
            let (body, charge) = this.ingest.guard(body);
            let body = body.map_err(|why: BodyError| to_status(&why.into()));
            let req = http::Request::from_parts(parts, body);
            let export = Export::<S> {
                ingest: this.ingest.clone(),
                caller,
                charge: charge.clone(),
                compressed,
                _signal: PhantomData,
            };
            let mut response = grpc.unary(export, req).await;
            if let Some(why) = charge.stopped() {
                this.ingest.body_stopped::<S>(&why);
            }
            count_framing_refusals::<S>(this.ingest.pipeline(), &mut response);
            Ok(response)
        })
    }
}

/// Tonic refuses an oversized message before our code runs, as OUT_OF_RANGE; OTLP
/// says a payload that is too large is RESOURCE_EXHAUSTED. That refusal is counted
/// here; malformed messages are counted where they are decoded.
fn count_framing_refusals<S: Signal>(pipeline: &Pipeline, response: &mut http::Response<Body>) {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from);
    let outcome = match code {
        Some(Code::OutOfRange) => {
            response.headers_mut().insert(
                "grpc-status",
                HeaderValue::from(Code::ResourceExhausted as i32),
            );
            Outcome::TooLarge
        }
        _ => return,
    };
    pipeline.metrics().request(S::NAME, outcome, 0, 0, 0);
}
