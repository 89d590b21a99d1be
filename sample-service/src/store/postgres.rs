//! The stores on PostgreSQL (sqlx). Every statement inside a request's trace
//! runs inside its own CLIENT span (transactions: one per statement).

use std::collections::HashMap;
use std::time::Duration;

use agent::Agent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::*;
use crate::telemetry::{traced, traced_expecting, Backend};

/// NOTIFY channel the API signals after committing outbox rows.
const OUTBOX_CHANNEL: &str = "shop_outbox";

pub struct Postgres {
    pool: PgPool,
    backend: Backend,
    listener: Mutex<Option<PgListener>>,
}

impl Postgres {
    /// Connects with short acquire and statement timeouts (a request waiting 30 s for
    /// a connection is worse than a quick 503) and applies the migrations.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        statement_timeout: Duration,
        agent: Agent,
    ) -> Result<Postgres> {
        let options: PgConnectOptions = url.parse()?;
        let statement_ms = statement_timeout.as_millis().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(move |conn, _| {
                let set = format!("SET statement_timeout = {statement_ms}");
                Box::pin(async move {
                    sqlx::query(&set).execute(conn).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        // Concurrent starts are safe: sqlx takes an advisory lock around migrations.
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        Ok(Postgres {
            pool,
            backend: Backend::postgres(agent, &options),
            listener: Mutex::new(None),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn span(&self, summary: &'static str) -> Option<agent::Span> {
        self.backend.span(summary)
    }
}

fn product(row: &PgRow) -> std::result::Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        category_id: row.try_get("category_id")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
        stock: row.try_get("stock")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const PRODUCT_COLUMNS: &str = "id, category_id, name, price_cents, stock, updated_at";

#[async_trait]
impl Catalog for Postgres {
    async fn categories(&self) -> Result<Vec<Category>> {
        let rows = traced(
            self.span("SELECT categories"),
            sqlx::query("SELECT id, name FROM categories ORDER BY id").fetch_all(&self.pool),
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Category {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                })
            })
            .collect()
    }

    async fn product(&self, id: i64) -> Result<Option<Product>> {
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1");
        let row = traced(
            self.span("SELECT products"),
            sqlx::query(&sql).bind(id).fetch_optional(&self.pool),
        )
        .await?;
        Ok(row.as_ref().map(product).transpose()?)
    }

    async fn products(&self, ids: &[i64]) -> Result<Vec<Product>> {
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ANY($1)");
        let rows = traced(
            self.span("SELECT products"),
            sqlx::query(&sql).bind(ids).fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .iter()
            .map(product)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn create_product(&self, p: NewProduct) -> Result<Product> {
        let sql = format!(
            "INSERT INTO products (category_id, name, price_cents, stock) VALUES ($1, $2, $3, $4) \
             RETURNING {PRODUCT_COLUMNS}"
        );
        let row = traced(
            self.span("INSERT products"),
            sqlx::query(&sql)
                .bind(p.category_id)
                .bind(&p.name)
                .bind(p.price_cents)
                .bind(p.stock)
                .fetch_one(&self.pool),
        )
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                StoreError::MissingReference("the category")
            }
            e => e.into(),
        })?;
        Ok(product(&row)?)
    }

    async fn update_product(&self, id: i64, patch: ProductPatch) -> Result<Option<Product>> {
        let sql = format!(
            "UPDATE products SET name = COALESCE($2, name), price_cents = COALESCE($3, price_cents), \
             stock = COALESCE($4, stock), updated_at = now() WHERE id = $1 RETURNING {PRODUCT_COLUMNS}"
        );
        let row = traced(
            self.span("UPDATE products"),
            sqlx::query(&sql)
                .bind(id)
                .bind(patch.name)
                .bind(patch.price_cents)
                .bind(patch.stock)
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(row.as_ref().map(product).transpose()?)
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

impl Postgres {
    async fn insert_order(&self, order: &NewOrder) -> std::result::Result<(), sqlx::Error> {
        let mut tx = traced(self.span("BEGIN"), self.pool.begin()).await?;
        // A duplicate key is the idempotency race the caller resolves, not a failure.
        traced_expecting(
            self.span("INSERT orders"),
            sqlx::query(
                "INSERT INTO orders (id, tenant, idempotency_key, status, items, total_cents, email, \
                 phone, payment_method, request_fingerprint, response) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(order.id)
            .bind(&order.tenant)
            .bind(&order.idempotency_key)
            .bind(sqlx::types::Json(&order.items))
            .bind(order.total_cents)
            .bind(&order.email)
            .bind(&order.phone)
            .bind(&order.payment_method)
            .bind(&order.fingerprint)
            .bind(&order.response)
            .execute(&mut *tx),
            is_unique_violation,
        )
        .await?;
        for event in &order.events {
            traced(
                self.span("INSERT outbox"),
                sqlx::query(
                    "INSERT INTO outbox (id, aggregate, aggregate_id, event_type, payload, headers) \
                     VALUES ($1, 'order', $2, $3, $4, $5)",
                )
                .bind(event.id)
                .bind(order.id)
                .bind(event.event_type.as_str())
                .bind(&event.payload)
                .bind(sqlx::types::Json(&event.headers))
                .execute(&mut *tx),
            )
            .await?;
        }
        // Delivered at commit: wakes the relay without waiting for its poll.
        traced(
            self.backend.statement("SELECT pg_notify", None),
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx),
        )
        .await?;
        traced(self.span("COMMIT"), tx.commit()).await
    }
}

#[async_trait]
impl Orders for Postgres {
    async fn create_order(&self, order: NewOrder) -> Result<CreateOrder> {
        match self.insert_order(&order).await {
            Ok(()) => Ok(CreateOrder::Created),
            Err(e) if is_unique_violation(&e) => {
                let (id, fingerprint, response) = traced(
                    self.span("SELECT orders"),
                    sqlx::query_as(
                        "SELECT id, request_fingerprint, response FROM orders \
                         WHERE tenant = $1 AND idempotency_key = $2",
                    )
                    .bind(&order.tenant)
                    .bind(&order.idempotency_key)
                    .fetch_one(&self.pool),
                )
                .await?;
                Ok(CreateOrder::Exists(ExistingOrder {
                    id,
                    fingerprint,
                    response,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn order(&self, tenant: &str, id: Uuid) -> Result<Option<Order>> {
        let row = traced(
            self.span("SELECT orders"),
            sqlx::query(
                "SELECT o.id, o.status, o.items, o.total_cents, o.payment_method, o.created_at, \
                 (SELECT count(*) FROM payments p WHERE p.order_id = o.id) AS payments, \
                 (SELECT count(*) FROM notifications n WHERE n.order_id = o.id AND n.channel = 'email') AS emails, \
                 (SELECT count(*) FROM notifications n WHERE n.order_id = o.id AND n.channel = 'sms') AS sms, \
                 (SELECT count(*) FROM dead_letters d WHERE d.order_id = o.id) AS dead_letters \
                 FROM orders o WHERE o.id = $1 AND o.tenant = $2",
            )
            .bind(id)
            .bind(tenant)
            .fetch_optional(&self.pool),
        )
        .await?;
        let Some(row) = row else { return Ok(None) };
        let items: sqlx::types::Json<Vec<OrderItem>> = row.try_get("items")?;
        Ok(Some(Order {
            id: row.try_get("id")?,
            status: row.try_get("status")?,
            items: items.0,
            total_cents: row.try_get("total_cents")?,
            payment_method: row.try_get("payment_method")?,
            created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
            effects: Effects {
                payments: row.try_get("payments")?,
                emails: row.try_get("emails")?,
                sms: row.try_get("sms")?,
                dead_letters: row.try_get("dead_letters")?,
            },
        }))
    }
}

fn outbox_message(row: &PgRow) -> Result<OutboxMessage> {
    let event_type: String = row.try_get("event_type")?;
    let headers: sqlx::types::Json<HashMap<String, String>> = row.try_get("headers")?;
    Ok(OutboxMessage {
        id: row.try_get("id")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| StoreError::Malformed(format!("unknown event type {event_type:?}")))?,
        payload: row.try_get("payload")?,
        headers: headers.0,
        attempts: row.try_get("attempts")?,
    })
}

#[async_trait]
impl Outbox for Postgres {
    async fn claim(&self, limit: i64, lease: Duration) -> Result<Claimed> {
        // SKIP LOCKED: relays on several replicas take disjoint rows without waiting
        // on each other; the lease hides claimed rows until published or released.
        let rows = traced(
            self.span("UPDATE outbox"),
            sqlx::query(
                "UPDATE outbox SET locked_until = now() + $2 * interval '1 millisecond' \
                 WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL \
                   AND available_at <= now() AND (locked_until IS NULL OR locked_until < now()) \
                   ORDER BY available_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, aggregate_id, event_type, payload, headers, attempts",
            )
            .bind(limit)
            .bind(lease.as_millis() as f64)
            .fetch_all(&self.pool),
        )
        .await?;
        // Row by row: one undecodable row must not fail the batch (and every later
        // batch that claims it).
        let mut claimed = Claimed::default();
        for row in &rows {
            match outbox_message(row) {
                Ok(m) => claimed.messages.push(m),
                Err(e) => claimed
                    .undecodable
                    .push((row.try_get("id")?, e.to_string())),
            }
        }
        Ok(claimed)
    }

    async fn park(&self, id: Uuid, reason: &str) -> Result<()> {
        traced(
            self.span("DELETE outbox"),
            sqlx::query(
                "WITH moved AS (DELETE FROM outbox WHERE id = $1 RETURNING *) \
                 INSERT INTO outbox_parked (id, row, reason) \
                 SELECT id, to_jsonb(moved), $2 FROM moved ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(reason)
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<()> {
        traced(
            self.span("UPDATE outbox"),
            sqlx::query(
                "UPDATE outbox SET published_at = now(), locked_until = NULL WHERE id = ANY($1)",
            )
            .bind(ids)
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    async fn release(&self, id: Uuid, retry_in: Duration, error: &str) -> Result<()> {
        traced(
            self.span("UPDATE outbox"),
            sqlx::query(
                "UPDATE outbox SET locked_until = NULL, attempts = attempts + 1, last_error = $3, \
                 available_at = now() + $2 * interval '1 millisecond' WHERE id = $1",
            )
            .bind(id)
            .bind(retry_in.as_millis() as f64)
            .bind(error)
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    async fn lag_seconds(&self) -> Result<f64> {
        let lag: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM outbox \
             WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(lag.unwrap_or(0.0).max(0.0))
    }

    async fn wait_for_rows(&self, timeout: Duration) {
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen(OUTBOX_CHANNEL).await {
                    Ok(()) => *guard = Some(l),
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; polling the outbox"),
                },
                Err(e) => tracing::warn!(error = %e, "LISTEN failed; polling the outbox"),
            }
        }
        match guard.as_mut() {
            Some(listener) => {
                if let Ok(Err(e)) = tokio::time::timeout(timeout, listener.recv()).await {
                    tracing::warn!(error = %e, "outbox notifications lost; reconnecting");
                    *guard = None;
                }
            }
            None => tokio::time::sleep(timeout).await,
        }
    }
}

impl Postgres {
    async fn apply_tx(
        &self,
        consumer: &str,
        m: &OutboxMessage,
    ) -> std::result::Result<Applied, sqlx::Error> {
        let mut tx = traced(self.span("BEGIN"), self.pool.begin()).await?;
        let fresh = traced(
            self.span("INSERT processed_messages"),
            sqlx::query(
                "INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(m.id)
            .execute(&mut *tx),
        )
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            traced(self.span("ROLLBACK"), tx.rollback()).await?;
            return Ok(Applied::Duplicate);
        }
        match m.event_type {
            EventType::Payment => {
                let amount = m.payload["total_cents"].as_i64().unwrap_or(0);
                traced(
                    self.span("INSERT payments"),
                    sqlx::query(
                        "INSERT INTO payments (order_id, amount_cents, message_id) VALUES ($1, $2, $3)",
                    )
                    .bind(m.aggregate_id)
                    .bind(amount)
                    .bind(m.id)
                    .execute(&mut *tx),
                )
                .await?;
                traced(
                    self.span("UPDATE orders"),
                    sqlx::query("UPDATE orders SET status = 'paid' WHERE id = $1")
                        .bind(m.aggregate_id)
                        .execute(&mut *tx),
                )
                .await?;
            }
            EventType::Email | EventType::Sms => {
                let recipient_field = if m.event_type == EventType::Email {
                    "email"
                } else {
                    "phone"
                };
                traced(
                    self.span("INSERT notifications"),
                    sqlx::query(
                        "INSERT INTO notifications (order_id, channel, recipient, message_id) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(m.aggregate_id)
                    .bind(m.event_type.as_str())
                    .bind(m.payload[recipient_field].as_str().unwrap_or_default())
                    .bind(m.id)
                    .execute(&mut *tx),
                )
                .await?;
            }
        }
        traced(self.span("COMMIT"), tx.commit()).await?;
        Ok(Applied::Done)
    }
}

#[async_trait]
impl SideEffects for Postgres {
    async fn apply(&self, consumer: &str, message: &OutboxMessage) -> Result<Applied> {
        Ok(self.apply_tx(consumer, message).await?)
    }

    async fn dead_letter(
        &self,
        queue: &str,
        m: &OutboxMessage,
        attempts: i32,
        reason: &str,
    ) -> Result<()> {
        let mut tx = traced(self.span("BEGIN"), self.pool.begin()).await?;
        traced(
            self.span("INSERT dead_letters"),
            sqlx::query(
                "INSERT INTO dead_letters (message_id, queue, order_id, attempts, reason) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(m.id)
            .bind(queue)
            .bind(m.aggregate_id)
            .bind(attempts)
            .bind(reason)
            .execute(&mut *tx),
        )
        .await?;
        if m.event_type == EventType::Payment {
            traced(
                self.span("UPDATE orders"),
                sqlx::query("UPDATE orders SET status = 'payment_failed' WHERE id = $1")
                    .bind(m.aggregate_id)
                    .execute(&mut *tx),
            )
            .await?;
        }
        traced(self.span("COMMIT"), tx.commit()).await?;
        Ok(())
    }
}
