//! OTLP/HTTP: `POST /v1/{traces,logs,metrics}`, protobuf or JSON, optionally gzipped.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::decode::{decode, decompress, encode, too_large, Encoding};
use super::status::error_body;
use super::IngestError;
use crate::mapping::{Logs, Metrics, Signal, Traces};
use crate::pipeline::Pipeline;
use crate::telemetry::Outcome;

#[derive(Clone)]
struct Ctx {
    pipeline: Arc<Pipeline>,
    max_bytes: usize,
}

pub fn router(pipeline: Arc<Pipeline>, max_bytes: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/logs", post(export::<Logs>))
        .route("/v1/metrics", post(export::<Metrics>))
        // We enforce our own limit, before and after decompression.
        .layer(DefaultBodyLimit::disable())
        .with_state(Ctx {
            pipeline,
            max_bytes,
        })
}

async fn export<S: Signal>(State(ctx): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    // Errors about the content type itself are answered in JSON, the only guess left.
    let encoding = match Encoding::from_content_type(content_type) {
        Ok(e) => e,
        Err(e) => return refuse::<S>(&ctx, e, Encoding::Json),
    };
    match handle::<S>(&ctx, &headers, body, encoding).await {
        Ok(response) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoding.content_type())],
            encode(&response, encoding),
        )
            .into_response(),
        Err(e) => refuse::<S>(&ctx, e, encoding),
    }
}

async fn handle<S: Signal>(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<S::Response, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.max_bytes as u64) {
        return Err(too_large("request body", ctx.max_bytes));
    }
    let raw = Limited::new(body, ctx.max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large("request body", ctx.max_bytes)
            } else {
                IngestError::Malformed(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let body = decompress(raw, content_encoding, ctx.max_bytes)?;
    let request: S::Request = decode(&body, encoding)?;
    ctx.pipeline.accept::<S>(request).await
}

fn refuse<S: Signal>(ctx: &Ctx, err: IngestError, encoding: Encoding) -> Response {
    let outcome = match &err {
        IngestError::Malformed(_) => Some(Outcome::Malformed),
        IngestError::UnsupportedMediaType(_) => Some(Outcome::Unsupported),
        IngestError::TooLarge(_) => Some(Outcome::TooLarge),
        // The pipeline counted these itself.
        IngestError::Overloaded { .. } | IngestError::Unavailable(_) => None,
    };
    if let Some(o) = outcome {
        ctx.pipeline.metrics().request(S::NAME, o, 0, 0, 0);
    }
    let mut response = (
        err.http_status(),
        [(header::CONTENT_TYPE, encoding.content_type())],
        error_body(&err, encoding),
    )
        .into_response();
    if let Some(after) = err.retry_after() {
        let secs = after.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}
