//! The stores on sled, for one process without PostgreSQL. The same guarantees as
//! the PostgreSQL adapter where they matter: an order and its outbox rows commit in
//! one transaction, one order per (tenant, key), each effect commits together with its
//! dedup record, and nothing is answered before it is flushed to disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::Tree;
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use super::*;

/// The sled database shared by the stores, the work queues and the idempotency records.
pub struct Embedded {
    db: sled::Db,
    categories: Tree,
    products: Tree,
    orders: Tree,
    /// `tenant \0 key` → order id: the uniqueness back-stop of idempotency.
    order_keys: Tree,
    outbox: Tree,
    /// Ids of unpublished outbox rows (v7 UUIDs: oldest first).
    pending: Tree,
    /// Rows the relay gave up on: id → reason ‖ 0 ‖ the row as stored.
    parked: Tree,
    processed: Tree,
    /// `order id ‖ message id` → amount.
    payments: Tree,
    /// `order id ‖ channel ‖ message id` → recipient.
    notifications: Tree,
    /// `order id ‖ message id` → reason.
    dead_letters: Tree,
    written: Arc<Notify>,
    /// Claims and product ids are decided one at a time (one process owns the files).
    claim: Mutex<()>,
    product_ids: Mutex<()>,
}

#[derive(Serialize, Deserialize)]
struct OrderRecord {
    tenant: String,
    status: String,
    items: Vec<OrderItem>,
    total_cents: i64,
    email: String,
    phone: String,
    payment_method: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    response: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct OutboxRow {
    aggregate_id: Uuid,
    event_type: EventType,
    payload: serde_json::Value,
    headers: HashMap<String, String>,
    created_ms: i64,
    available_ms: i64,
    locked_until_ms: i64,
    attempts: i32,
    last_error: Option<String>,
    published: bool,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Malformed(e.to_string()))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Embedded(e),
    }
}

fn order_key(tenant: &str, key: &str) -> Vec<u8> {
    [tenant.as_bytes(), &[0], key.as_bytes()].concat()
}

impl Embedded {
    /// Opens (or creates) the database in `dir`, seeding the demo catalog once.
    pub fn open(dir: &Path) -> Result<Embedded> {
        let db = sled::Config::new().path(dir).open()?;
        let tree = |name: &str| db.open_tree(name);
        let store = Embedded {
            categories: tree("categories")?,
            products: tree("products")?,
            orders: tree("orders")?,
            order_keys: tree("order_keys")?,
            outbox: tree("outbox")?,
            pending: tree("outbox_pending")?,
            parked: tree("outbox_parked")?,
            processed: tree("processed_messages")?,
            payments: tree("payments")?,
            notifications: tree("notifications")?,
            dead_letters: tree("dead_letters")?,
            db,
            written: Arc::new(Notify::new()),
            claim: Mutex::new(()),
            product_ids: Mutex::new(()),
        };
        store.seed()?;
        Ok(store)
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The same catalog the PostgreSQL migration seeds: 8 categories, 200 products.
    fn seed(&self) -> Result<()> {
        if !self.categories.is_empty() {
            return Ok(());
        }
        let names = [
            "books", "music", "garden", "kitchen", "toys", "tools", "games", "sports",
        ];
        for (i, name) in names.iter().enumerate() {
            let c = Category {
                id: i as i64 + 1,
                name: name.to_string(),
            };
            self.categories.insert(c.id.to_be_bytes(), json(&c))?;
        }
        let now = Utc::now();
        for g in 1..=200i64 {
            let p = Product {
                id: g,
                category_id: 1 + g % 8,
                name: format!("product {g}"),
                price_cents: 100 + (g * 37) % 9900,
                stock: 1000,
                updated_at: now,
            };
            self.products.insert(g.to_be_bytes(), json(&p))?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<()> {
        flush(&self.db).await.map_err(StoreError::Embedded)
    }

    fn count_prefix(tree: &Tree, prefix: &[u8]) -> i64 {
        tree.scan_prefix(prefix).count() as i64
    }
}

#[async_trait]
impl Catalog for Embedded {
    async fn categories(&self) -> Result<Vec<Category>> {
        self.categories.iter().map(|kv| parse(&kv?.1)).collect()
    }

    async fn product(&self, id: i64) -> Result<Option<Product>> {
        self.products
            .get(id.to_be_bytes())?
            .map(|v| parse(&v))
            .transpose()
    }

    async fn products(&self, ids: &[i64]) -> Result<Vec<Product>> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(p) = self.product(*id).await? {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn create_product(&self, new: NewProduct) -> Result<Product> {
        if self
            .categories
            .get(new.category_id.to_be_bytes())?
            .is_none()
        {
            return Err(StoreError::MissingReference("the category"));
        }
        let _one_at_a_time = self.product_ids.lock().await;
        let id = match self.products.last()? {
            Some((k, _)) => {
                i64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Malformed("product key".into()))?,
                ) + 1
            }
            None => 1,
        };
        let p = Product {
            id,
            category_id: new.category_id,
            name: new.name,
            price_cents: new.price_cents,
            stock: new.stock,
            updated_at: Utc::now(),
        };
        self.products.insert(id.to_be_bytes(), json(&p))?;
        self.flush().await?;
        Ok(p)
    }

    async fn update_product(&self, id: i64, patch: ProductPatch) -> Result<Option<Product>> {
        let _one_at_a_time = self.product_ids.lock().await;
        let Some(mut p) = self.product(id).await? else {
            return Ok(None);
        };
        if let Some(name) = patch.name {
            p.name = name;
        }
        if let Some(price) = patch.price_cents {
            p.price_cents = price;
        }
        if let Some(stock) = patch.stock {
            p.stock = stock;
        }
        p.updated_at = Utc::now();
        self.products.insert(id.to_be_bytes(), json(&p))?;
        self.flush().await?;
        Ok(Some(p))
    }
}

#[async_trait]
impl Orders for Embedded {
    async fn create_order(&self, order: NewOrder) -> Result<CreateOrder> {
        let key = order_key(&order.tenant, &order.idempotency_key);
        let record = json(&OrderRecord {
            tenant: order.tenant.clone(),
            status: "pending".into(),
            items: order.items.clone(),
            total_cents: order.total_cents,
            email: order.email.clone(),
            phone: order.phone.clone(),
            payment_method: order.payment_method.clone(),
            created_at: Utc::now(),
            fingerprint: Some(order.fingerprint.clone()),
            response: Some(order.response.clone()),
        });
        let now = now_ms();
        let rows: Vec<(Uuid, Vec<u8>)> = order
            .events
            .iter()
            .map(|e| {
                let row = OutboxRow {
                    aggregate_id: order.id,
                    event_type: e.event_type,
                    payload: e.payload.clone(),
                    headers: e.headers.clone(),
                    created_ms: now,
                    available_ms: now,
                    locked_until_ms: 0,
                    attempts: 0,
                    last_error: None,
                    published: false,
                };
                (e.id, json(&row))
            })
            .collect();
        let result = (&self.orders, &self.order_keys, &self.outbox, &self.pending)
            .transaction(|(orders, keys, outbox, pending)| {
                if let Some(existing) = keys.get(&key)? {
                    let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
                    let id = Uuid::from_slice(&existing)
                        .map_err(|e| abort(StoreError::Malformed(e.to_string())))?;
                    let stored = orders.get(id.as_bytes())?.ok_or_else(|| {
                        abort(StoreError::Malformed(format!("order {id} is missing")))
                    })?;
                    let stored: OrderRecord = parse(&stored).map_err(abort)?;
                    return Ok(CreateOrder::Exists(ExistingOrder {
                        id,
                        fingerprint: stored.fingerprint,
                        response: stored.response,
                    }));
                }
                keys.insert(key.as_slice(), order.id.as_bytes().as_slice())?;
                orders.insert(order.id.as_bytes().as_slice(), record.as_slice())?;
                for (id, row) in &rows {
                    outbox.insert(id.as_bytes().as_slice(), row.as_slice())?;
                    pending.insert(id.as_bytes().as_slice(), &[] as &[u8])?;
                }
                Ok(CreateOrder::Created)
            })
            .map_err(tx_error)?;
        // On disk before the 202: an accepted order survives a crash.
        self.flush().await?;
        self.written.notify_waiters();
        Ok(result)
    }

    async fn order(&self, tenant: &str, id: Uuid) -> Result<Option<Order>> {
        let Some(raw) = self.orders.get(id.as_bytes())? else {
            return Ok(None);
        };
        let r: OrderRecord = parse(&raw)?;
        if r.tenant != tenant {
            return Ok(None);
        }
        let prefix = id.as_bytes();
        let channel = |c: &str| {
            Self::count_prefix(
                &self.notifications,
                &[prefix.as_slice(), c.as_bytes(), &[0]].concat(),
            )
        };
        Ok(Some(Order {
            id,
            status: r.status,
            items: r.items,
            total_cents: r.total_cents,
            payment_method: r.payment_method,
            created_at: r.created_at,
            effects: Effects {
                payments: Self::count_prefix(&self.payments, prefix),
                emails: channel("email"),
                sms: channel("sms"),
                dead_letters: Self::count_prefix(&self.dead_letters, prefix),
            },
        }))
    }
}

#[async_trait]
impl Outbox for Embedded {
    async fn claim(&self, limit: i64, lease: Duration) -> Result<Claimed> {
        let _one_at_a_time = self.claim.lock().await;
        let now = now_ms();
        let mut claimed = Claimed::default();
        for key in self.pending.iter().keys() {
            if (claimed.messages.len() + claimed.undecodable.len()) as i64 >= limit {
                break;
            }
            let key = key?;
            let id = Uuid::from_slice(&key).map_err(|e| StoreError::Malformed(e.to_string()))?;
            let Some(raw) = self.outbox.get(&key)? else {
                continue;
            };
            let mut row: OutboxRow = match parse(&raw) {
                Ok(row) => row,
                Err(e) => {
                    claimed.undecodable.push((id, e.to_string()));
                    continue;
                }
            };
            if row.published || row.available_ms > now || row.locked_until_ms > now {
                continue;
            }
            row.locked_until_ms = now + lease.as_millis() as i64;
            self.outbox.insert(&key, json(&row))?;
            claimed.messages.push(OutboxMessage {
                id,
                aggregate_id: row.aggregate_id,
                event_type: row.event_type,
                payload: row.payload,
                headers: row.headers,
                attempts: row.attempts,
            });
        }
        Ok(claimed)
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<()> {
        for id in ids {
            if let Some(raw) = self.outbox.get(id.as_bytes())? {
                let mut row: OutboxRow = parse(&raw)?;
                row.published = true;
                row.locked_until_ms = 0;
                (&self.outbox, &self.pending)
                    .transaction(|(outbox, pending)| {
                        outbox.insert(id.as_bytes().as_slice(), json(&row))?;
                        pending.remove(id.as_bytes().as_slice())?;
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(tx_error)?;
            }
        }
        Ok(())
    }

    async fn release(&self, id: Uuid, retry_in: Duration, error: &str) -> Result<()> {
        if let Some(raw) = self.outbox.get(id.as_bytes())? {
            let mut row: OutboxRow = parse(&raw)?;
            row.locked_until_ms = 0;
            row.attempts += 1;
            row.available_ms = now_ms() + retry_in.as_millis() as i64;
            row.last_error = Some(error.to_string());
            self.outbox.insert(id.as_bytes(), json(&row))?;
        }
        Ok(())
    }

    async fn park(&self, id: Uuid, reason: &str) -> Result<()> {
        let key = id.as_bytes().as_slice();
        (&self.outbox, &self.pending, &self.parked)
            .transaction(|(outbox, pending, parked)| {
                if let Some(raw) = outbox.remove(key)? {
                    parked.insert(key, [reason.as_bytes(), &[0], &raw].concat())?;
                }
                pending.remove(key)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.flush().await
    }

    async fn lag_seconds(&self) -> Result<f64> {
        let Some(key) = self.pending.first()?.map(|(k, _)| k) else {
            return Ok(0.0);
        };
        let Some(raw) = self.outbox.get(&key)? else {
            return Ok(0.0);
        };
        let row: OutboxRow = parse(&raw)?;
        Ok(((now_ms() - row.created_ms) as f64 / 1000.0).max(0.0))
    }

    async fn wait_for_rows(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.written.notified()).await;
    }
}

#[async_trait]
impl SideEffects for Embedded {
    async fn apply(&self, consumer: &str, m: &OutboxMessage) -> Result<Applied> {
        let dedup = [consumer.as_bytes(), &[0], m.id.as_bytes()].concat();
        let order = m.aggregate_id.as_bytes();
        let applied = (
            &self.processed,
            &self.payments,
            &self.notifications,
            &self.orders,
        )
            .transaction(|(processed, payments, notifications, orders)| {
                if processed.get(&dedup)?.is_some() {
                    return Ok(Applied::Duplicate);
                }
                processed.insert(dedup.as_slice(), &[] as &[u8])?;
                match m.event_type {
                    EventType::Payment => {
                        let amount = m.payload["total_cents"].as_i64().unwrap_or(0);
                        payments.insert(
                            [order.as_slice(), m.id.as_bytes()].concat(),
                            &amount.to_be_bytes(),
                        )?;
                        set_status(orders, order, "paid")?;
                    }
                    EventType::Email | EventType::Sms => {
                        let field = if m.event_type == EventType::Email {
                            "email"
                        } else {
                            "phone"
                        };
                        let key = [
                            order.as_slice(),
                            m.event_type.as_str().as_bytes(),
                            &[0],
                            m.id.as_bytes(),
                        ]
                        .concat();
                        notifications.insert(
                            key,
                            m.payload[field].as_str().unwrap_or_default().as_bytes(),
                        )?;
                    }
                }
                Ok(Applied::Done)
            })
            .map_err(tx_error)?;
        // On disk before the worker acknowledges.
        self.flush().await?;
        Ok(applied)
    }

    async fn dead_letter(
        &self,
        _queue: &str,
        m: &OutboxMessage,
        _attempts: i32,
        reason: &str,
    ) -> Result<()> {
        let order = m.aggregate_id.as_bytes();
        (&self.dead_letters, &self.orders)
            .transaction(|(dead, orders)| {
                dead.insert(
                    [order.as_slice(), m.id.as_bytes()].concat(),
                    reason.as_bytes(),
                )?;
                if m.event_type == EventType::Payment {
                    set_status(orders, order, "payment_failed")?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.flush().await
    }
}

fn set_status(
    orders: &sled::transaction::TransactionalTree,
    order: &[u8],
    status: &str,
) -> std::result::Result<(), ConflictableTransactionError<StoreError>> {
    if let Some(raw) = orders.get(order)? {
        let mut r: OrderRecord = parse(&raw).map_err(ConflictableTransactionError::Abort)?;
        r.status = status.to_string();
        orders.insert(order, json(&r))?;
    }
    Ok(())
}

/// `Db::flush` on a blocking thread: what is written before it returns survives a
/// crash (sled's `flush_async` was seen to return before that, losing a commit).
pub async fn flush(db: &sled::Db) -> std::result::Result<(), sled::Error> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.flush()).await {
        Ok(r) => r.map(drop),
        Err(e) => Err(sled::Error::Io(std::io::Error::other(e.to_string()))),
    }
}
