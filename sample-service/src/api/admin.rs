//! Run-time fault switches (scope `admin`).

use axum::extract::State;
use axum::Json;

use super::problem::Problem;
use crate::app::AppState;
use crate::auth::Principal;
use crate::faults::Faults;

pub async fn get_faults(
    State(s): State<AppState>,
    principal: Principal,
) -> Result<Json<Faults>, Problem> {
    principal.require("admin")?;
    Ok(Json(s.faults.get()))
}

pub async fn put_faults(
    State(s): State<AppState>,
    principal: Principal,
    Json(faults): Json<Faults>,
) -> Result<Json<Faults>, Problem> {
    principal.require("admin")?;
    faults.validate().map_err(Problem::bad_request)?;
    tracing::warn!(?faults, by = %principal.subject, "fault switches changed");
    s.faults.set(faults.clone());
    Ok(Json(faults))
}
