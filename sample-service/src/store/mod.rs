//! The shop's durable state behind small traits, so the handlers, the relay and the
//! workers are written once whatever holds the data: PostgreSQL, or sled on local disk
//! when the service runs on embedded defaults.

mod embedded;
mod postgres;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use embedded::{flush, Embedded};
pub use postgres::Postgres;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("embedded storage: {0}")]
    Embedded(#[from] sled::Error),
    #[error("stored data is malformed: {0}")]
    Malformed(String),
    /// The write names a row that does not exist (a product's category).
    #[error("{0} does not exist")]
    MissingReference(&'static str),
    /// A failure of a load other callers waited for (they share its error).
    #[error("{0}")]
    Shared(std::sync::Arc<StoreError>),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Category {
    pub id: i64,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub id: i64,
    pub category_id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewProduct {
    pub category_id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderItem {
    pub product_id: i64,
    pub quantity: i32,
    pub price_cents: i64,
}

/// What the API writes in one transaction: the order and its outbox events.
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub id: Uuid,
    pub tenant: String,
    pub idempotency_key: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub email: String,
    pub phone: String,
    pub payment_method: String,
    /// The request's idempotency fingerprint and the answer given to it, kept with the
    /// order for the back-stop.
    pub fingerprint: String,
    pub response: serde_json::Value,
    pub events: Vec<NewEvent>,
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: EventType,
    pub payload: serde_json::Value,
    /// The trace context at write time, so the relay and workers continue the trace.
    pub headers: HashMap<String, String>,
}

/// The kinds of work an order causes; each has its own queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Payment,
    Email,
    Sms,
}

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::Payment, EventType::Email, EventType::Sms];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Payment => "payment",
            EventType::Email => "email",
            EventType::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

pub enum CreateOrder {
    Created,
    /// The UNIQUE (tenant, idempotency_key) back-stop fired: this order already exists.
    Exists(ExistingOrder),
}

/// The order a key already placed, as the back-stop found it.
#[derive(Debug)]
pub struct ExistingOrder {
    pub id: Uuid,
    /// None for orders stored before fingerprints were kept.
    pub fingerprint: Option<String>,
    pub response: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Order {
    pub id: Uuid,
    pub status: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub payment_method: String,
    pub created_at: DateTime<Utc>,
    pub effects: Effects,
}

/// How many times each side effect happened: exactly once each is the goal.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Effects {
    pub payments: i64,
    pub emails: i64,
    pub sms: i64,
    pub dead_letters: i64,
}

/// An outbox row claimed by the relay.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub aggregate_id: Uuid,
    pub event_type: EventType,
    pub payload: serde_json::Value,
    pub headers: HashMap<String, String>,
    pub attempts: i32,
}

/// What one claim took: the rows to publish, and those that could not be decoded
/// (id and why), to be parked.
#[derive(Debug, Default)]
pub struct Claimed {
    pub messages: Vec<OutboxMessage>,
    pub undecodable: Vec<(Uuid, String)>,
}

/// The outcome of a consumer applying one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// This consumer had already committed this message's effects.
    Duplicate,
}

#[async_trait]
pub trait Catalog: Send + Sync {
    async fn categories(&self) -> Result<Vec<Category>>;
    async fn product(&self, id: i64) -> Result<Option<Product>>;
    async fn products(&self, ids: &[i64]) -> Result<Vec<Product>>;
    async fn create_product(&self, product: NewProduct) -> Result<Product>;
    async fn update_product(&self, id: i64, patch: ProductPatch) -> Result<Option<Product>>;
}

#[async_trait]
pub trait Orders: Send + Sync {
    /// The order and its outbox rows in one transaction.
    async fn create_order(&self, order: NewOrder) -> Result<CreateOrder>;
    async fn order(&self, tenant: &str, id: Uuid) -> Result<Option<Order>>;
}

#[async_trait]
pub trait Outbox: Send + Sync {
    /// Claims up to `limit` due, unpublished rows for `lease` (rows claimed by another
    /// relay are skipped, not waited for).
    async fn claim(&self, limit: i64, lease: std::time::Duration) -> Result<Claimed>;
    async fn mark_published(&self, ids: &[Uuid]) -> Result<()>;
    /// Puts a row back for a later attempt after a failed publish.
    async fn release(&self, id: Uuid, retry_in: std::time::Duration, error: &str) -> Result<()>;
    /// Moves a row out of the outbox into the parked rows, with `reason`.
    async fn park(&self, id: Uuid, reason: &str) -> Result<()>;
    /// Age of the oldest unpublished row, in seconds (0 when none).
    async fn lag_seconds(&self) -> Result<f64>;
    /// Resolves when new rows may be waiting, or after `timeout` (the polling fallback).
    async fn wait_for_rows(&self, timeout: std::time::Duration);
}

/// The consumers' side: each effect and its dedup record commit together.
#[async_trait]
pub trait SideEffects: Send + Sync {
    async fn apply(&self, consumer: &str, message: &OutboxMessage) -> Result<Applied>;
    async fn dead_letter(
        &self,
        queue: &str,
        message: &OutboxMessage,
        attempts: i32,
        reason: &str,
    ) -> Result<()>;
}
