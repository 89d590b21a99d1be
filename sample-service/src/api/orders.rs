//! Orders: an idempotent create that writes the order and its outbox events in one
//! transaction and answers 202 with where to poll; reads; the fan-out summary.

use std::collections::{HashMap, HashSet};

use agent::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::problem::Problem;
use crate::app::AppState;
use crate::auth::Principal;
use crate::idempotency::{self, Begin, Outcome, StoredResponse};
use crate::store::{CreateOrder, EventType, NewEvent, NewOrder, OrderItem};

const ROUTE: &str = "/orders";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    items: Vec<ItemRequest>,
    email: String,
    phone: String,
    #[serde(default = "card")]
    payment_method: String,
}

fn card() -> String {
    "card".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemRequest {
    product_id: i64,
    quantity: i32,
}

/// Checks done before the idempotency claim: a request failing them did not run, so
/// its key stays free for a corrected retry.
fn validate(body: &Bytes) -> Result<(serde_json::Value, OrderRequest), Problem> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    let order: OrderRequest = serde_json::from_value(value.clone())
        .map_err(|e| Problem::bad_request(format!("invalid order: {e}")))?;
    if order.items.is_empty() || order.items.len() > 50 {
        return Err(Problem::bad_request("an order has 1 to 50 items"));
    }
    let mut seen = HashSet::new();
    for item in &order.items {
        if item.product_id <= 0 || !(1..=100).contains(&item.quantity) {
            return Err(Problem::bad_request(
                "each item needs a positive product_id and a quantity of 1 to 100",
            ));
        }
        if !seen.insert(item.product_id) {
            return Err(Problem::bad_request(format!(
                "product {} appears twice; use its quantity",
                item.product_id
            )));
        }
    }
    if !order.email.contains('@') || order.email.len() > 254 {
        return Err(Problem::bad_request("email is not an email address"));
    }
    let digits = order.phone.chars().filter(char::is_ascii_digit).count();
    if !(5..=20).contains(&digits) {
        return Err(Problem::bad_request("phone needs 5 to 20 digits"));
    }
    if !["card", "poison"].contains(&order.payment_method.as_str()) {
        return Err(Problem::bad_request(
            "payment_method is card (or poison, to demo dead letters)",
        ));
    }
    Ok((value, order))
}

fn accepted(id: Uuid, body: serde_json::Value) -> StoredResponse {
    StoredResponse {
        status: StatusCode::ACCEPTED.as_u16(),
        content_type: "application/json".into(),
        location: format!("/orders/{id}"),
        body: body.to_string().into_bytes(),
    }
}

fn stored_problem(p: &Problem) -> StoredResponse {
    StoredResponse {
        status: p.status.as_u16(),
        content_type: "application/problem+json".into(),
        location: String::new(),
        body: p.body().to_string().into_bytes(),
    }
}

pub async fn create(
    State(s): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require("orders:write")?;
    let count = |outcome: &str| {
        s.metrics
            .idempotency
            .add(1, &[("idempotency.outcome", outcome)]);
    };
    let key = idempotency::parse_key(&headers).inspect_err(|_| count("missing"))?;
    let (value, order) = validate(&body)?;
    let fingerprint = idempotency::fingerprint("POST", ROUTE, &principal.subject, &value);

    let ownership = if s.faults.idempotency_enabled() {
        let scoped = idempotency::scope(&principal.subject, &key);
        let (begin, outcome) =
            idempotency::begin(&s.idempotency, &scoped, &fingerprint, s.idempotency_lease).await?;
        count(outcome.as_str());
        match begin {
            Begin::Answer(response) => {
                if matches!(outcome, Outcome::Replayed) {
                    tracing::info!(key = %key, "idempotent replay");
                }
                return Ok(response);
            }
            Begin::Proceed(ownership) => Some(ownership),
        }
    } else {
        None
    };

    let (stored, replayed) = match place_order(&s, &principal, &key, &fingerprint, order).await {
        Ok(placed) => placed,
        // Business refusals are the request's answer: stored and replayed.
        Err(Refusal::Business(p)) => (stored_problem(&p), false),
        // The back-stop found the key used with another body. Not recorded under
        // this body: the claim is released (on drop).
        Err(Refusal::Mismatch) => {
            count("backstop_mismatch");
            return Err(Problem::unprocessable(
                "this Idempotency-Key was already used with a different request payload",
            ));
        }
        // Backend failures are not an answer: the claim is released (on drop) so a
        // retry with the same key runs again.
        Err(Refusal::Backend(p)) => return Err(p),
    };
    if let Some(ownership) = ownership {
        ownership.complete(&stored, s.idempotency_retention).await;
    }
    Ok(stored.into_response(replayed))
}

enum Refusal {
    Business(Problem),
    Mismatch,
    Backend(Problem),
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal::Backend(e.into())
    }
}

/// Places the order, or finds the one this key placed before (then the answer is
/// that order's stored answer, a replay).
async fn place_order(
    s: &AppState,
    principal: &Principal,
    key: &str,
    fingerprint: &str,
    order: OrderRequest,
) -> Result<(StoredResponse, bool), Refusal> {
    let ids: Vec<i64> = order.items.iter().map(|i| i.product_id).collect();
    let products: HashMap<i64, i64> = s
        .catalog
        .products(&ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p.price_cents))
        .collect();
    let mut items = Vec::with_capacity(order.items.len());
    for item in &order.items {
        let Some(price) = products.get(&item.product_id) else {
            return Err(Refusal::Business(Problem::unprocessable(format!(
                "product {} does not exist",
                item.product_id
            ))));
        };
        items.push(OrderItem {
            product_id: item.product_id,
            quantity: item.quantity,
            price_cents: *price,
        });
    }
    let total_cents: i64 = items
        .iter()
        .map(|i| i.price_cents * i.quantity as i64)
        .sum();
    let id = Uuid::now_v7();
    // The trace context now, stored with each event: the relay and the workers
    // continue this request's trace.
    let mut trace_headers = HashMap::new();
    if let Some(current) = Context::current() {
        s.agent.inject(&current, &mut trace_headers);
    }
    let events = EventType::ALL
        .into_iter()
        .map(|event_type| NewEvent {
            id: Uuid::now_v7(),
            event_type,
            payload: match event_type {
                EventType::Payment => json!({"order_id": id, "total_cents": total_cents, "payment_method": order.payment_method}),
                EventType::Email => json!({"order_id": id, "email": order.email}),
                EventType::Sms => json!({"order_id": id, "phone": order.phone}),
            },
            headers: trace_headers.clone(),
        })
        .collect();
    let response =
        json!({"id": id, "status": "pending", "items": items, "total_cents": total_cents});
    let new = NewOrder {
        id,
        tenant: principal.subject.clone(),
        idempotency_key: key.to_string(),
        items: items.clone(),
        total_cents,
        email: order.email,
        phone: order.phone,
        payment_method: order.payment_method,
        fingerprint: fingerprint.to_string(),
        response: response.clone(),
        events,
    };
    match s.orders.create_order(new).await? {
        CreateOrder::Created => {
            tracing::info!(order_id = %id, total_cents, "order accepted");
            Ok((accepted(id, response), false))
        }
        CreateOrder::Exists(existing) => {
            if existing
                .fingerprint
                .as_deref()
                .is_some_and(|f| f != fingerprint)
            {
                tracing::info!(order_id = %existing.id, "key already used with another payload (database constraint)");
                return Err(Refusal::Mismatch);
            }
            tracing::info!(order_id = %existing.id, "order already exists for this key (database constraint)");
            let response = match existing.response {
                Some(r) => r,
                // Stored before answers were kept: the order as it is stored now.
                None => {
                    let o = s
                        .orders
                        .order(&principal.subject, existing.id)
                        .await?
                        .ok_or_else(|| {
                            Refusal::Backend(Problem::from(crate::store::StoreError::Malformed(
                                format!("order {} vanished", existing.id),
                            )))
                        })?;
                    json!({"id": o.id, "status": "pending", "items": o.items, "total_cents": o.total_cents})
                }
            };
            s.metrics
                .idempotency
                .add(1, &[("idempotency.outcome", "backstop_replayed")]);
            Ok((accepted(existing.id, response), true))
        }
    }
}

fn order_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw)
        .map_err(|_| Problem::bad_request(format!("order id {raw:?} is not a UUID")))
}

/// The caller's order `raw`: orders are scoped to the principal that placed them.
async fn owned_order(
    s: &AppState,
    principal: &Principal,
    raw: &str,
) -> Result<crate::store::Order, Problem> {
    principal
        .require("orders:read")
        .or_else(|_| principal.require("orders:write"))?;
    let id = order_id(raw)?;
    s.orders
        .order(&principal.subject, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("order {id} does not exist")))
}

pub async fn get(
    State(s): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(owned_order(&s, &principal, &raw).await?).into_response())
}

pub async fn summary(
    State(s): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let order = owned_order(&s, &principal, &raw).await?;
    let mut parts = s.fanout.summary(&s.agent, &order.id.to_string()).await;
    parts["order"] = json!(order);
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(parts)).into_response())
}
