//! Who is on duty in a grid (`GET /api/v1/duty`) and its patrol coverage (`GET /api/v1/patrols`).
//! Times for people are RFC 3339 in the site's time zone; a grid outside the caller's grids is
//! answered like one that does not exist.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::TimeZone;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, Principal};
use crate::model::time::now_ns;

/// A time as the site's people read it: RFC 3339 with the site's offset.
fn local(st: &AppState, ns: i64) -> String {
    let tz = st.people.tz;
    tz.from_utc_datetime(&chrono::DateTime::from_timestamp_nanos(ns).naive_utc())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn instant(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|v| {
        chrono::DateTime::parse_from_rfc3339(v).ok().and_then(|t| t.timestamp_nanos_opt()).ok_or_else(|| {
            ApiError::BadRequest(format!("{name} {v:?}; expected RFC 3339 like 2026-06-03T08:00:00+08:00"))
        })
    })
    .transpose()
}

/// The grid `id` if it exists and the caller may see it.
fn visible_grid(st: &AppState, who: &Principal, id: &str) -> Result<String, ApiError> {
    st.registry
        .peek()
        .grid_id(id)
        .filter(|_| who.identity.sees(id))
        .map(|_| id.to_owned())
        .ok_or_else(|| ApiError::NotFound(format!("grid {id:?} not found")))
}

fn person(st: &AppState, id: &str) -> Value {
    match st.people.person(id) {
        Some(p) => json!({ "id": p.id, "name": p.name, "mobile": p.mobile }),
        // Validation refuses unknown ids; an answer still names whom the roster meant.
        None => json!({ "id": id, "name": id, "mobile": null }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DutyQuery {
    grid: String,
    /// RFC 3339; now when absent.
    at: Option<String>,
}

pub(super) async fn duty(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    query: Result<Query<DutyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let grid = visible_grid(&st, &who, &q.grid)?;
    let at = instant("at", q.at.as_deref())?.unwrap_or_else(now_ns);
    let staff = st.people.grid(&grid);
    let supervisor = staff.and_then(|g| g.supervisor.as_deref()).map(|p| person(&st, p));
    let shift = st.people.duty(&grid, at).map(|d| {
        json!({
            "id": d.shift,
            "name": d.shift_name,
            "date": d.date.to_string(),
            "start": local(&st, d.start),
            "end": local(&st, d.end),
            "override": d.overridden,
            "people": d.people.iter().map(|p| person(&st, p)).collect::<Vec<_>>(),
        })
    });
    Ok(Json(json!({
        "grid": grid,
        "at": local(&st, at),
        "timezone": st.people.tz.name(),
        "shift": shift,
        "supervisor": supervisor,
        "safety_manager": st.people.safety_manager.as_deref().map(|p| person(&st, p)),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatrolsQuery {
    /// One grid; every grid the caller sees when absent.
    grid: Option<String>,
    /// RFC 3339; 24 h before `to` when absent.
    from: Option<String>,
    /// RFC 3339; now when absent.
    to: Option<String>,
}

pub(super) async fn patrols(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    query: Result<Query<PatrolsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let grids: Vec<String> = match &q.grid {
        Some(g) => vec![visible_grid(&st, &who, g)?],
        None => st.registry.load().live_grids().map(|(_, g)| g.id.clone()).filter(|g| who.identity.sees(g)).collect(),
    };
    let to = instant("to", q.to.as_deref())?.unwrap_or_else(now_ns);
    let from = instant("from", q.from.as_deref())?.unwrap_or(to - 86_400 * 1_000_000_000);
    if from >= to {
        return Err(ApiError::BadRequest("from is not before to; expected a period".into()));
    }
    let mut out = Vec::with_capacity(grids.len());
    for grid in grids {
        let roster = st.people.roster(&grid).cloned();
        let coverage = st.core.patrols(grid.clone(), roster, from, to).await?;
        let mut v =
            serde_json::to_value(coverage.unwrap_or_default()).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(shifts) = v.get_mut("shifts").and_then(Value::as_array_mut) {
            for s in shifts {
                for key in ["start", "end"] {
                    if let Some(ns) = s.get(key).and_then(Value::as_i64) {
                        s[key] = Value::String(local(&st, ns));
                    }
                }
            }
        }
        v["grid"] = Value::String(grid);
        out.push(v);
    }
    Ok(Json(json!({ "from": local(&st, from), "to": local(&st, to), "grids": out })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KpisQuery {
    /// How far back from `to`: `24h` (default), `7d`, `30m`…
    window: Option<String>,
    to: Option<String>,
}

/// Longest KPI window: a month of annunciations, still one row per grid and minute.
const MAX_WINDOW_NS: i64 = 31 * 86_400 * 1_000_000_000;

/// `GET /api/v1/grids/{id}/kpis`: what the grid's supervisor answers for over a window — open
/// incidents, time to acknowledge and to close, alarm rates against the ISA-18.2 targets, the most
/// frequent and the standing alarms, patrol coverage.
pub(super) async fn kpis(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Path(id): axum::extract::Path<String>,
    query: Result<Query<KpisQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let grid = visible_grid(&st, &who, &id)?;
    let window = match q.window.as_deref() {
        None => 86_400 * 1_000_000_000,
        Some(w) => {
            crate::config::notify::duration_ns(w).filter(|n| *n > 0 && *n <= MAX_WINDOW_NS).ok_or_else(|| {
                ApiError::BadRequest(format!("window {w:?}; expected a duration like 1h, 24h or 7d, at most 31d"))
            })?
        }
    };
    let to = instant("to", q.to.as_deref())?.unwrap_or_else(now_ns);
    let from = to - window;
    let store = st.incidents.as_ref().ok_or_else(|| ApiError::NotFound("incidents are not enabled".into()))?;
    let mut all = store.kpis(vec![grid.clone()], from, to).await?;
    let k = all.remove(&grid).unwrap_or_default();
    let roster = st.people.roster(&grid).cloned();
    let patrol = st.core.patrols(grid.clone(), roster, from, to).await?.unwrap_or_default().total;
    let standing: Vec<Value> = k
        .standing
        .iter()
        .map(|s| {
            json!({ "id": s.id, "rule": s.rule, "device": s.device, "title": s.title, "severity": s.severity,
                    "since": local(&st, s.since), "age_s": s.age_s })
        })
        .collect();
    let reg = st.registry.peek();
    let name = reg.grid_id(&grid).map(|g| reg.grid(g).name.clone()).unwrap_or_default();
    Ok(Json(json!({
        "grid": grid,
        "name": name,
        "window_s": window / 1_000_000_000,
        "from": local(&st, from),
        "to": local(&st, to),
        "open": k.open,
        "ack_time_s": k.ack_time_s,
        "close_time_s": k.close_time_s,
        "alarm_rate": k.alarm_rate,
        "chattering": k.chattering,
        "standing": standing,
        "standing_total": k.standing_total,
        "patrol": patrol,
    }))
    .into_response())
}
