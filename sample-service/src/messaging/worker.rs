//! Workers: one consumer per queue, applying each message's side effect together with
//! its dedup record, then acknowledging. A failure is retried from a delay queue; after
//! the last attempt the message goes to the dead-letter queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, Destination, FutureExt, Status};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Broker, Delivery};
use crate::metrics::PatternMetrics;
use crate::store::{Applied, EventType, OutboxMessage, SideEffects};

#[derive(Clone)]
pub struct Workers {
    pub broker: Arc<dyn Broker>,
    pub effects: Arc<dyn SideEffects>,
    pub agent: Agent,
    pub metrics: PatternMetrics,
    pub max_attempts: u32,
    pub concurrency: usize,
    /// Test hook: abort the process after this many commits, before acknowledging.
    pub abort_after_commits: Option<u64>,
    pub commits: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("payment declined: the poison payment method always fails")]
    Poison,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Workers {
    /// Consumes every queue until `stop`; reconnects after broker failures.
    pub async fn run(self, stop: CancellationToken) {
        let tasks: Vec<_> = EventType::ALL
            .into_iter()
            .map(|queue| tokio::spawn(self.clone().consume(queue, stop.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn consume(self, queue: EventType, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() {
            match self.broker.consume(queue).await {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(200);
                    let run = deliveries.for_each_concurrent(self.concurrency, |delivery| async {
                        match delivery {
                            Ok(d) => self.handle(queue, d).await,
                            Err(e) => tracing::warn!(error = %e, queue = queue.as_str(), "delivery failed"),
                        }
                    });
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = run => tracing::warn!(queue = queue.as_str(), "consumer ended; reconnecting"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = queue.as_str(), "cannot consume; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn handle(&self, queue: EventType, delivery: Box<dyn Delivery>) {
        let destination = self.broker.queue_name(queue);
        let dest_attr = || [("messaging.destination.name", destination.as_str())];
        let message = match delivery.message() {
            Ok(m) => m.clone(),
            Err(reason) => {
                let reason = format!("undecodable: {reason}");
                tracing::error!(queue = %destination, %reason, "dead-lettering a malformed message");
                self.metrics.queue_dead_letters.add(1, &dest_attr());
                if let Err(e) = delivery.dead_letter(&reason).await {
                    tracing::warn!(error = %e, "dead-lettering failed; handed back to the broker");
                }
                return;
            }
        };
        let mut span = self.agent.consumer_span(
            Destination {
                system: "rabbitmq",
                name: &destination,
            },
            &message.headers,
        );
        let attempt = delivery.attempt();
        if span.is_recording() {
            span.set_attribute("messaging.message.id", message.id.to_string());
            span.set_attribute("messaging.rabbitmq.attempt", attempt as i64);
        }
        super::record_server(&mut span, self.broker.as_ref());
        let context = span.context().clone();
        let result = self
            .apply(queue, &message)
            .with_context(context.clone())
            .await;
        let outcome = async {
            match result {
                Ok(applied) => {
                    let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
                    if self.abort_after_commits.is_some_and(|limit| n >= limit) {
                        tracing::error!(message_id = %message.id, "fault injection: aborting after commit, before ack");
                        std::process::abort();
                    }
                    let result = if applied == Applied::Duplicate { "duplicate" } else { "ok" };
                    self.metrics.queue_processed.add(1, &[("messaging.destination.name", destination.as_str()), ("result", result)]);
                    tracing::info!(message_id = %message.id, order_id = %message.aggregate_id, attempt, result, "message processed");
                    delivery.ack().await.map_err(|e| e.to_string())
                }
                Err(failure) if attempt >= self.max_attempts => {
                    let reason = failure.to_string();
                    tracing::error!(message_id = %message.id, order_id = %message.aggregate_id, attempt, %reason, "giving up: dead-lettering");
                    if let Err(e) = self
                        .effects
                        .dead_letter(&destination, &message, attempt as i32, &reason)
                        .await
                    {
                        delivery.abandon().await;
                        return Err(format!("recording the dead letter: {e}"));
                    }
                    self.metrics.queue_dead_letters.add(1, &dest_attr());
                    delivery.dead_letter(&reason).await.map_err(|e| e.to_string())
                }
                Err(failure) => {
                    tracing::warn!(message_id = %message.id, attempt, error = %failure, "attempt failed; retrying later");
                    self.metrics.queue_retries.add(1, &dest_attr());
                    delivery.retry(attempt).await.map_err(|e| e.to_string())
                }
            }
        }
        .with_context(context)
        .await;
        if let Err(e) = outcome {
            // Handed back to the broker: it redelivers it, and the dedup record makes
            // the repeat harmless.
            span.set_status(Status::Error(e.clone().into()));
            tracing::warn!(error = %e, message_id = %message.id, "could not settle the message");
        }
        span.end();
    }

    async fn apply(&self, queue: EventType, m: &OutboxMessage) -> Result<Applied, Failure> {
        if queue == EventType::Payment && m.payload["payment_method"] == "poison" {
            return Err(Failure::Poison);
        }
        Ok(self.effects.apply(queue.as_str(), m).await?)
    }
}
