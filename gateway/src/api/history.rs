//! `GET /api/v1/points/{device}/{point}/history`: the edge history of one point.
//!
//! Query: `from`, `to` (RFC 3339 or epoch milliseconds; default the last 24 h), `step` (`auto`, `1m`,
//! `1h`; `auto` picks 1m for spans up to 2 days and 1h beyond), `tz=site` to render times in the
//! site's time zone (default UTC). Rows are the buckets whose start lies in `[from, to)`, `from`
//! rounded down to the step. A span of more than [`MAX_ROWS`] buckets at the asked step is refused.
//!
//! Per row: `t` and `t_ms` (bucket start), `count` (good readings), `avg` (time-weighted), `min`,
//! `max`, `last` (of the readings; null in a bucket a reading's hold reaches without a reading of its
//! own), `leq` (noise points in dB(A): energy average, else null). For energy counters (kWh, …) `avg`
//! is the energy of the bucket (the sum of the counter's increments, a reset counting from zero),
//! `min`/`max` the smallest and largest increment between two readings, `last` the counter.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::TimeZone;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, Principal};
use crate::history::{Kind, Res};

/// Most buckets one answer holds.
pub const MAX_ROWS: i64 = 100_000;
/// `step=auto` answers 1-minute rows for spans up to this (ms), hourly ones beyond.
const AUTO_MINUTES_UP_TO: i64 = 2 * 86_400_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    tz: Option<String>,
}

/// Epoch milliseconds or RFC 3339.
fn instant(key: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v).map(|t| t.timestamp_millis()).map_err(|_| {
        ApiError::BadRequest(format!(
            "{key}={v:?} is not a time; expected RFC 3339 (2026-12-01T08:00:00+08:00) or epoch milliseconds"
        ))
    })
}

pub(super) async fn point_history(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((device, point)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let reg = st.registry.load();
    // A device of another grid is answered like one that does not exist.
    let not_found = || ApiError::NotFound(format!("no point {point:?} of device {device:?}"));
    let d = reg
        .device_id(&device)
        .filter(|id| who.identity.sees(&reg.grid(reg.device(*id).grid).id))
        .ok_or_else(not_found)?;
    let p = reg.point_of(d, &point).ok_or_else(not_found)?;
    let info = reg.point(p);
    let Some(history) = st.history.clone() else {
        return Err(ApiError::NotFound("history is not kept on this gateway (history.enabled = false)".into()));
    };
    let to = match &q.to {
        Some(v) => instant("to", v)?,
        None => crate::model::time::now_ns() / 1_000_000,
    };
    let from = match &q.from {
        Some(v) => instant("from", v)?,
        None => to - DAY_MS,
    };
    if from >= to {
        return Err(ApiError::BadRequest(format!("from ({from} ms) is not before to ({to} ms); expected from < to")));
    }
    let res = match q.step.as_deref().unwrap_or("auto") {
        "auto" if to - from <= AUTO_MINUTES_UP_TO => Res::Minute,
        "auto" => Res::Hour,
        "1m" => Res::Minute,
        "1h" => Res::Hour,
        other => return Err(ApiError::BadRequest(format!("step={other:?}; expected auto, 1m or 1h"))),
    };
    let tz = match q.tz.as_deref() {
        None | Some("utc" | "UTC") => None,
        Some("site") => Some(reg.site.timezone),
        Some(other) => return Err(ApiError::BadRequest(format!("tz={other:?}; expected site or utc"))),
    };
    let start = from.div_euclid(res.ms()) * res.ms();
    if (to - start) / res.ms() > MAX_ROWS {
        return Err(ApiError::BadRequest(format!(
            "{} buckets of {} from {from} to {to}; expected at most {MAX_ROWS} (use step=1h or a shorter span)",
            (to - start) / res.ms(),
            res.as_str()
        )));
    }
    let (dev, pt) = (device.clone(), point.clone());
    let rows = tokio::task::spawn_blocking(move || history.read(&dev, &pt, res, start, to))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let kind = Kind::of_unit(&info.unit);
    let fmt = |ms: i64| match tz {
        Some(tz) => tz
            .timestamp_millis_opt(ms)
            .single()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default(),
        None => crate::model::time::fmt_ns(ms.saturating_mul(1_000_000)),
    };
    let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    let rows: Vec<Value> = rows
        .iter()
        .map(|a| {
            json!({
                "t": fmt(a.t),
                "t_ms": a.t,
                "avg": a.avg(kind).map_or(Value::Null, num),
                "min": num(a.min),
                "max": num(a.max),
                "count": a.count,
                "last": num(a.last),
                "leq": a.leq(kind).map_or(Value::Null, num),
            })
        })
        .collect();
    Ok(Json(json!({
        "device": device,
        "point": point,
        "unit": info.unit,
        "step": res.as_str(),
        "from": fmt(from),
        "to": fmt(to),
        "rows": rows,
    }))
    .into_response())
}
