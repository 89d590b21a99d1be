//! What both receivers do between the wire and the pipeline, written once: check the
//! token (before the body is read), then, on the decoded request, the item limit,
//! the rate limit, and mapping with the attribute limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::auth::{Auth, TokenId};
use super::budget::{BodyError, Charge, GuardedBody, RequestBudget};
use super::rate_limit::RateLimiter;
use crate::mapping::limits::Limits;
use crate::mapping::Signal;
use crate::otlp::IngestError;
use crate::pipeline::Pipeline;
use crate::telemetry::Outcome;

/// Who sent a request: the token it presented (`None` when auth is off).
#[derive(Debug, Clone, Copy)]
pub struct Caller(Option<TokenId>);

pub struct Ingest {
    pipeline: Arc<Pipeline>,
    auth: Option<Auth>,
    rate: Option<RateLimiter>,
    limits: Limits,
    pub max_request_bytes: usize,
    budget: Arc<RequestBudget>,
    body_timeout: Duration,
}

impl Ingest {
    pub fn new(
        pipeline: Arc<Pipeline>,
        auth: Option<Auth>,
        rate: Option<RateLimiter>,
        limits: Limits,
        max_request_bytes: usize,
        budget: Arc<RequestBudget>,
        body_timeout: Duration,
    ) -> Ingest {
        Ingest {
            pipeline,
            auth,
            rate,
            limits,
            max_request_bytes,
            budget,
            body_timeout,
        }
    }

    /// `body` paying for its bytes from the shared budget as they arrive, and cut
    /// at the body timeout; the charge is what the request holds until answered.
    pub fn guard<B>(&self, body: B) -> (GuardedBody<B>, Charge) {
        let charge = Charge::new(self.budget.clone());
        (
            GuardedBody::new(body, charge.clone(), self.body_timeout),
            charge,
        )
    }

    /// Counts a body that stopped at the budget or the deadline.
    pub fn body_stopped<S: Signal>(&self, why: &BodyError) {
        let metrics = self.pipeline.metrics();
        match why {
            BodyError::OverBudget { .. } => {
                metrics.over_budget(S::NAME);
                metrics.request(S::NAME, Outcome::Overloaded, 0, 0, 0);
            }
            BodyError::TimedOut(_) => metrics.body_timeout(S::NAME),
            BodyError::Read(_) => metrics.request(S::NAME, Outcome::Malformed, 0, 0, 0),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// From the headers only; a refusal is counted here.
    pub fn authenticate<S: Signal>(&self, headers: &HeaderMap) -> Result<Caller, IngestError> {
        let Some(auth) = &self.auth else {
            return Ok(Caller(None));
        };
        auth.check(headers)
            .map(|t| Caller(Some(t)))
            .inspect_err(|_| {
                self.pipeline.metrics().unauthenticated(S::NAME);
            })
    }

    /// Counts a refusal made by a receiver before [`Ingest::accept`] (bad body,
    /// content type…) and hands it back.
    pub fn refused<S: Signal>(&self, err: IngestError) -> IngestError {
        let outcome = match &err {
            IngestError::Malformed(_) => Some(Outcome::Malformed),
            IngestError::UnsupportedMediaType(_) => Some(Outcome::Unsupported),
            IngestError::TooLarge(_) => Some(Outcome::TooLarge),
            _ => None,
        };
        if let Some(o) = outcome {
            self.pipeline.metrics().request(S::NAME, o, 0, 0, 0);
        }
        err
    }

    /// Limits the request, hands it to the pipeline and notes on the response what
    /// the limits changed. Every refusal is counted (here or by the pipeline).
    pub async fn accept<S: Signal>(
        &self,
        caller: Caller,
        request: S::Request,
    ) -> Result<S::Response, IngestError> {
        let metrics = self.pipeline.metrics();
        let items = S::items(&request);
        if items > self.limits.max_items {
            metrics.request(S::NAME, Outcome::TooLarge, items, 0, 0);
            return Err(IngestError::TooLarge(format!(
                "the request holds {items} {}, over the limit of {} per request \
                 (receivers.max_items_per_request): split it",
                S::ITEMS,
                self.limits.max_items
            )));
        }
        if let Some(rate) = &self.rate {
            if let Err(wait) = rate.take(caller.0, items, Instant::now()) {
                metrics.rate_limited(S::NAME);
                return Err(IngestError::Overloaded {
                    message: format!(
                        "ingestion rate limit of {} items/s exceeded for this client; retry later",
                        rate.per_second()
                    ),
                    // Whole seconds, rounded up: Retry-After has no fractions.
                    retry_after: Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64),
                });
            }
        }
        self.pipeline.has_room::<S>(items)?;
        // Traces are read in full only here; a malformed span deep inside is found now.
        let (mapped, report) = S::map(request, &self.limits).map_err(|e| self.refused::<S>(e))?;
        metrics.limited(
            S::NAME,
            report.attributes_dropped,
            report.values_truncated,
            report.values_too_deep,
        );
        let mut response = self.pipeline.accept::<S>(mapped).await?;
        if !report.is_empty() {
            S::add_note(&mut response, &report.note(&self.limits));
        }
        Ok(response)
    }
}
