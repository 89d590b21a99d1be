//! Catalog reads through the layered cache; writes invalidate it.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;

use super::problem::Problem;
use crate::app::AppState;
use crate::auth::Principal;
use crate::cache::Cached;
use crate::store::{NewProduct, ProductPatch, StoreError};

fn json_bytes(bytes: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Malformed(e.to_string()))
}

/// Ids are validated before any cache layer sees them, so junk ids cannot fill it.
fn product_id(raw: &str) -> Result<i64, Problem> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Problem::bad_request(format!(
            "product id {raw:?} is not a positive integer"
        ))),
    }
}

pub fn product_key(id: i64) -> String {
    format!("product:{id}")
}

pub async fn categories(State(s): State<AppState>) -> Result<Response, Problem> {
    let cached = s
        .cache
        .get_or_load("categories", || async {
            s.metrics.db_reads.add(1, &[("entity", "category")]);
            Ok(Some(encode(&s.catalog.categories().await?)?))
        })
        .await?;
    match cached {
        Cached::Found(bytes) => Ok(json_bytes(bytes)),
        Cached::Missing => Ok(json_bytes(Bytes::from_static(b"[]"))),
    }
}

pub async fn product(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = product_id(&raw)?;
    let cached = s
        .cache
        .get_or_load(&product_key(id), || async {
            s.metrics.db_reads.add(1, &[("entity", "product")]);
            s.catalog.product(id).await?.map(|p| encode(&p)).transpose()
        })
        .await?;
    match cached {
        Cached::Found(bytes) => Ok(json_bytes(bytes)),
        Cached::Missing => Err(Problem::not_found(format!("product {id} does not exist"))),
    }
}

fn validate_name(name: &str) -> Result<(), Problem> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(Problem::bad_request("name must have 1 to 200 characters"));
    }
    Ok(())
}

pub async fn create_product(
    State(s): State<AppState>,
    principal: Principal,
    Json(new): Json<NewProduct>,
) -> Result<Response, Problem> {
    principal.require("catalog:write")?;
    validate_name(&new.name)?;
    if new.price_cents < 0 || new.stock < 0 {
        return Err(Problem::bad_request(
            "price_cents and stock must not be negative",
        ));
    }
    let product = s.catalog.create_product(new).await.map_err(|e| match e {
        StoreError::MissingReference(what) => {
            Problem::unprocessable(format!("{what} does not exist"))
        }
        e => e.into(),
    })?;
    // A "does not exist" entry for this id may be cached from before.
    s.cache.invalidate(&product_key(product.id)).await;
    let location = format!("/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(product),
    )
        .into_response())
}

pub async fn update_product(
    State(s): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
    Json(patch): Json<ProductPatch>,
) -> Result<Response, Problem> {
    principal.require("catalog:write")?;
    let id = product_id(&raw)?;
    if let Some(name) = &patch.name {
        validate_name(name)?;
    }
    if patch.price_cents.is_some_and(|p| p < 0) || patch.stock.is_some_and(|s| s < 0) {
        return Err(Problem::bad_request(
            "price_cents and stock must not be negative",
        ));
    }
    let updated = s.catalog.update_product(id, patch).await?;
    // Commit first, then invalidate: a reader in between re-caches the new row.
    s.cache.invalidate(&product_key(id)).await;
    match updated {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(Problem::not_found(format!("product {id} does not exist"))),
    }
}
