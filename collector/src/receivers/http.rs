//! OTLP/HTTP: `POST /v1/{traces,logs,metrics}`, protobuf or JSON, optionally gzipped.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::budget::{BodyError, Charge, GuardedBody};
use super::ingest::Ingest;
use super::status::error_body;
use crate::mapping::{Logs, Metrics, Signal, Traces};
use crate::otlp::IngestError;
use crate::otlp::{decompress, encode, too_large, Encoding};

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/logs", post(export::<Logs>))
        .route("/v1/metrics", post(export::<Metrics>))
        // We enforce our own limit, before and after decompression.
        .layer(DefaultBodyLimit::disable())
        .with_state(ingest)
}

async fn export<S: Signal>(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let encoding = Encoding::from_content_type(content_type);
    // First, and before the body is read: an unauthenticated client learns nothing
    // else and costs us no decoding.
    let caller = match ingest.authenticate::<S>(&headers) {
        Ok(c) => c,
        Err(e) => return refuse(e, *encoding.as_ref().unwrap_or(&Encoding::Json)),
    };
    // Errors about the content type itself are answered in JSON, the only guess left.
    let encoding = match encoding {
        Ok(e) => e,
        Err(e) => return refuse(ingest.refused::<S>(e), Encoding::Json),
    };
    let (body, charge) = ingest.guard(body);
    let request = match read::<S>(&ingest, &headers, body, &charge, encoding).await {
        Ok(r) => r,
        Err(Refusal::Body(why)) => {
            ingest.body_stopped::<S>(&why);
            let mut response = refuse(why.into(), encoding);
            // The rest of the body may still be on its way: this connection cannot
            // carry another request, and a slow client is let go.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        Err(Refusal::Other(e)) => return refuse(ingest.refused::<S>(e), encoding),
    };
    // The request's bytes stay paid for until it is answered.
    let _charge = charge;
    match ingest.accept::<S>(caller, request).await {
        Ok(response) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoding.content_type())],
            encode(&response, encoding),
        )
            .into_response(),
        Err(e) => refuse(e, encoding),
    }
}

enum Refusal {
    /// Stopped by the budget or the deadline; counted by [`Ingest::body_stopped`].
    Body(BodyError),
    Other(IngestError),
}

impl From<IngestError> for Refusal {
    fn from(e: IngestError) -> Self {
        Refusal::Other(e)
    }
}

/// The body, within the size limits, decompressed and decoded. What gzip inflates
/// the body to is paid for too.
async fn read<S: Signal>(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: GuardedBody<Body>,
    charge: &Charge,
    encoding: Encoding,
) -> Result<S::Request, Refusal> {
    let max = ingest.max_request_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large("request body", max).into());
    }
    let raw = Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| match e.downcast::<BodyError>() {
            Ok(stopped) => Refusal::Body(*stopped),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                too_large("request body", max).into()
            }
            Err(e) => {
                IngestError::Malformed(format!("could not read the request body: {e}")).into()
            }
        })?
        .to_bytes();
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let compressed = raw.len();
    let body = decompress(raw, content_encoding, max)?;
    if body.len() != compressed {
        charge.pay(body.len()).await.map_err(Refusal::Body)?;
    }
    Ok(S::decode(body, encoding)?)
}

/// Renders a refusal; counting it is the job of whoever made it.
fn refuse(err: IngestError, encoding: Encoding) -> Response {
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
    if matches!(err, IngestError::Unauthenticated(_)) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
