//! Linkage actions: `GET /api/v1/actions` (the declared actions and the recent outcomes, of the
//! caller's grids), `POST /api/v1/actions/{id}` (`{"value": 1, "reason": "…"}`) and
//! `POST /api/v1/actions/requests/{n}/confirm` (the second person of a critical action).
//!
//! Answers carry the request's record: 200 done, 202 awaiting confirmation, 409 refused (with why;
//! nothing was written), 502 failed (written but not confirmed by the read-back, or the call failed).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, Principal};
use crate::actions::{Caller, Record, State as Outcome, Trigger};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Ask {
    value: Option<f64>,
    #[serde(default)]
    reason: String,
}

fn engine(st: &AppState) -> Result<crate::actions::Actions, ApiError> {
    st.actions.clone().ok_or_else(|| ApiError::NotFound("no [[actions]] are declared on this gateway".into()))
}

fn caller(who: &Principal, reason: String) -> Caller {
    Caller {
        name: who.identity.name.clone(),
        role: who.identity.role,
        grids: who.identity.grids.clone(),
        source: who.source.clone(),
        reason,
    }
}

fn answer(r: Record) -> Response {
    let status = match r.state {
        Outcome::Done => StatusCode::OK,
        Outcome::AwaitingConfirmation => StatusCode::ACCEPTED,
        Outcome::Refused | Outcome::Expired => StatusCode::CONFLICT,
        Outcome::Failed => StatusCode::BAD_GATEWAY,
    };
    (status, Json(r)).into_response()
}

pub(super) async fn list(State(st): State<AppState>, Extension(who): Extension<Principal>) -> Json<serde_json::Value> {
    let Some(a) = st.actions.clone() else { return Json(json!({ "declared": [], "recent": [] })) };
    let reg = st.registry.load();
    let grid_of =
        |device: &str| reg.device_id(device).map(|d| reg.grid(reg.device(d).grid).id.clone()).unwrap_or_default();
    let declared: Vec<serde_json::Value> = a
        .declared
        .iter()
        .filter(|x| who.identity.sees(&grid_of(&x.device)))
        .map(|x| {
            json!({
                "id": x.id, "title": x.title, "device": x.device, "grid": grid_of(&x.device), "kind": x.kind,
                "points": x.points, "value": x.value, "allowed": x.allowed, "rules": x.rules, "role": x.role,
                "critical": x.critical, "cooldown_secs": x.cooldown_secs, "readback_ms": x.readback_ms,
                "interlocks": x.interlocks.iter().map(|l| json!({
                    "device": l.device, "point": l.point, "op": l.op, "value": l.value, "max_age_secs": l.max_age_secs
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let recent: Vec<Record> = a.recent().into_iter().filter(|r| who.identity.sees(&r.grid)).collect();
    Json(json!({ "declared": declared, "recent": recent }))
}

pub(super) async fn run(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Json<Ask>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(ask) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let a = engine(&st)?;
    let r = a
        .request(&id, ask.value, Trigger::Manual(caller(&who, ask.reason)))
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(answer(r))
}

pub(super) async fn confirm(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(n): Path<u64>,
) -> Result<Response, ApiError> {
    let a = engine(&st)?;
    let r = a.confirm(n, caller(&who, String::new())).await.map_err(|_| ApiError::Unavailable)?;
    Ok(answer(r))
}
