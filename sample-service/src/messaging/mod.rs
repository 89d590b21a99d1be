//! Asynchronous work: the outbox relay publishes committed events to the broker, and
//! workers apply them exactly once (a dedup record commits with the side effect),
//! retrying with backoff and dead-lettering after the last attempt.

pub mod embedded;
pub mod rabbitmq;
pub mod relay;
pub mod worker;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{EventType, OutboxMessage};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message: {0}")]
    Refused(String),
    #[error("undecodable message: {0}")]
    Malformed(String),
}

/// The message body on the wire; routing, ids and trace context travel as properties
/// and headers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Wire {
    pub id: Uuid,
    pub aggregate_id: Uuid,
    pub event_type: EventType,
    pub payload: serde_json::Value,
}

impl Wire {
    pub fn of(m: &OutboxMessage) -> Wire {
        Wire {
            id: m.id,
            aggregate_id: m.aggregate_id,
            event_type: m.event_type,
            payload: m.payload.clone(),
        }
    }

    pub fn into_message(self, headers: HashMap<String, String>) -> OutboxMessage {
        OutboxMessage {
            id: self.id,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            payload: self.payload,
            headers,
            attempts: 0,
        }
    }
}

/// Our own attempt counter (1 = first delivery), kept in a header because broker
/// redelivery counts do not survive a trip through a delay queue.
pub const ATTEMPT_HEADER: &str = "x-shop-attempt";

/// One message handed to a worker. Exactly one of the four ends it. A settlement that
/// fails hands the delivery back to the broker itself (never just drops it: an
/// unsettled delivery would hold a prefetch slot until the consumer starved).
#[async_trait]
pub trait Delivery: Send {
    /// The message, or why it could not be decoded (retrying cannot fix that).
    fn message(&self) -> Result<&OutboxMessage, &str>;
    /// 1 for the first attempt.
    fn attempt(&self) -> u32;
    /// Done: the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Again after `delay`, as attempt `attempt() + 1`.
    async fn retry(self: Box<Self>, level: u32) -> Result<(), BrokerError>;
    /// Parked in the dead-letter queue.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BrokerError>;
    /// Not settled (the worker could not record its outcome): back to the broker,
    /// to be delivered again.
    async fn abandon(self: Box<Self>);
}

pub type Deliveries = BoxStream<'static, Result<Box<dyn Delivery>, BrokerError>>;

#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes each message (with its trace headers) and waits for the broker's
    /// confirmation of each; one result per message, in order.
    async fn publish_batch(
        &self,
        batch: &[(OutboxMessage, HashMap<String, String>)],
    ) -> Vec<Result<(), BrokerError>>;
    /// The deliveries of one work queue.
    async fn consume(&self, queue: EventType) -> Result<Deliveries, BrokerError>;
    /// The destination name the spans and metrics show for a queue.
    fn queue_name(&self, queue: EventType) -> String;
    /// The broker's host and port, for the messaging spans' `server.address` /
    /// `server.port` (none for an in-process broker).
    fn server(&self) -> Option<(&str, u16)> {
        None
    }
    async fn healthy(&self) -> bool;
    /// Messages parked in the dead-letter queue.
    async fn dead_letter_count(&self) -> Result<u64, BrokerError>;
}

/// Sets `server.address` / `server.port` on a messaging span when the broker has them.
pub fn record_server(span: &mut agent::Span, broker: &dyn Broker) {
    if let Some((host, port)) = broker.server() {
        if span.is_recording() {
            span.set_attribute("server.address", host.to_owned());
            span.set_attribute("server.port", i64::from(port));
        }
    }
}

/// Delay before attempt `level + 1`: `base · 4^(level − 1)`.
pub fn retry_delay(base: Duration, level: u32) -> Duration {
    base * 4u32.saturating_pow(level.saturating_sub(1))
}
