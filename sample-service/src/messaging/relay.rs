//! The outbox relay: claims committed events, publishes them with confirms, marks
//! them published. Woken by NOTIFY, with polling as the fallback; a failed publish
//! puts the row back with a growing delay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, Destination};
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError};
use crate::metrics::PatternMetrics;
use crate::store::{Outbox, OutboxMessage};

const BATCH: i64 = 100;
/// Longer than a batch's publish and confirm can take, so a live relay keeps its rows.
const LEASE: Duration = Duration::from_secs(30);

pub struct Relay {
    pub outbox: Arc<dyn Outbox>,
    pub broker: Arc<dyn Broker>,
    pub agent: Agent,
    pub metrics: PatternMetrics,
    pub poll: Duration,
    /// Publishes the broker may refuse (unroutable, nacked) before the row is parked.
    pub max_attempts: u32,
}

impl Relay {
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let published = match self.relay_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay pass failed");
                    0
                }
            };
            if let Ok(lag) = self.outbox.lag_seconds().await {
                self.metrics.outbox_lag.set(lag, &[]);
            }
            if published < BATCH as usize {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.outbox.wait_for_rows(self.poll) => {}
                }
            }
        }
    }

    /// One batch; returns how many rows were published.
    pub async fn relay_once(&self) -> Result<usize, crate::store::StoreError> {
        let claimed = self.outbox.claim(BATCH, LEASE).await?;
        for (id, reason) in &claimed.undecodable {
            tracing::error!(message_id = %id, %reason, "undecodable outbox row; parking it");
            self.outbox
                .park(*id, &format!("undecodable: {reason}"))
                .await?;
        }
        let claimed = claimed.messages;
        if claimed.is_empty() {
            return Ok(0);
        }
        let mut spans = Vec::with_capacity(claimed.len());
        let mut batch: Vec<(OutboxMessage, HashMap<String, String>)> =
            Vec::with_capacity(claimed.len());
        for m in claimed {
            // The PRODUCER span continues the trace of the request that wrote the row.
            let parent = self.agent.extract(&m.headers);
            let _entered = parent.as_ref().map(|p| p.enter());
            let mut headers = HashMap::new();
            let queue = self.broker.queue_name(m.event_type);
            let mut span = self.agent.producer_span(
                Destination {
                    system: "rabbitmq",
                    name: &queue,
                },
                &mut headers,
            );
            if span.is_recording() {
                span.set_attribute("messaging.message.id", m.id.to_string());
            }
            super::record_server(&mut span, self.broker.as_ref());
            spans.push(span);
            batch.push((m, headers));
        }
        let results = self.broker.publish_batch(&batch).await;
        let mut published = Vec::new();
        for ((m, _), (result, mut span)) in batch.iter().zip(results.into_iter().zip(spans)) {
            match result {
                Ok(()) => published.push(m.id),
                // The broker itself refused this message as often as we allow: park
                // it. (A broker that is down or slow is no reason: those rows wait.)
                Err(e @ BrokerError::Refused(_))
                    if m.attempts.max(0) as u32 + 1 >= self.max_attempts =>
                {
                    span.set_status(agent::Status::Error(e.to_string().into()));
                    tracing::error!(error = %e, message_id = %m.id, attempts = m.attempts + 1, "the broker keeps refusing this message; parking it");
                    self.outbox
                        .park(m.id, &format!("refused {} times: {e}", m.attempts + 1))
                        .await?;
                }
                Err(e) => {
                    span.set_status(agent::Status::Error(e.to_string().into()));
                    let backoff = Duration::from_millis(200)
                        * 2u32.saturating_pow(m.attempts.clamp(0, 8) as u32);
                    tracing::warn!(error = %e, message_id = %m.id, ?backoff, "publish failed; the row stays in the outbox");
                    self.outbox.release(m.id, backoff, &e.to_string()).await?;
                }
            }
            span.end();
        }
        if !published.is_empty() {
            self.outbox.mark_published(&published).await?;
            self.metrics
                .outbox_published
                .add(published.len() as u64, &[]);
        }
        Ok(published.len())
    }
}
