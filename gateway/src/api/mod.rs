//! The HTTP API (axum): liveness, readiness and component health, latest point values, recent events and rejects,
//! incidents, the audit trail, Prometheus metrics; served over plain TCP or in-process TLS (`tls.rs`).
//!
//! Only this module knows HTTP. Handlers read shared counters or ask the core through its handle; they
//! never touch point state directly.
//!
//! Owns: HTTP routes, `/metrics` rendering, the health evaluator, the API's TLS listener. May import
//! every room but `app`.

mod audit;
pub mod health;
mod incidents;
mod metrics;
pub mod tls;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::PointKind;
use crate::core::{CoreHandle, PointFilter};
use crate::metrics::Metrics;
use crate::model::time::fmt_ns;
use crate::model::{Batch, Quality, Registry};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub core: CoreHandle,
    pub metrics: Arc<Metrics>,
    /// Weak, so the API never keeps the core channel open at shutdown.
    pub batches: mpsc::WeakSender<Batch>,
    /// The incident store, when rules run.
    pub incidents: Option<crate::incident::IncidentStore>,
    /// Recompiles the rule packs on request.
    pub reloader: Option<crate::core::packs::Reloader>,
    /// Forwarding counters, when forwarding is on.
    pub forward: Option<Arc<crate::forward::ForwardMetrics>>,
    /// Health of Modbus-polled devices.
    pub modbus: Arc<crate::source::modbus::ModbusStatus>,
    /// Component health, for `/readyz`, `/api/v1/health` and `/metrics`.
    pub health: crate::model::health::Health,
    /// The central MQTT publisher's counters, when incidents go to a central broker.
    pub central: Option<Arc<crate::forward::central::CentralMetrics>>,
    /// The audit trail that actions are recorded in, when the gateway keeps one.
    pub audit: Option<crate::audit::AuditLog>,
}

/// An error as clients see it: a status and a one-line message, never internals.
#[derive(Debug, Clone)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Unavailable,
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::Internal(m) => {
                tracing::error!(error = %m, "API request failed.");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the gateway log".to_owned())
            }
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down".to_owned()),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<crate::core::CoreStopped> for ApiError {
    fn from(_: crate::core::CoreStopped) -> Self {
        Self::Unavailable
    }
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/v1/health", get(health::health))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/points", get(points))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/events", get(events))
        .route("/api/v1/rejects", get(rejects))
        .route("/api/v1/incidents", get(incidents::list))
        .route("/api/v1/incidents/{id}", get(incidents::one))
        .route("/api/v1/incidents/{id}/ack", post(incidents::ack))
        .route("/api/v1/incidents/{id}/shelve", post(incidents::shelve))
        .route("/api/v1/incidents/{id}/comment", post(incidents::comment))
        .route("/api/v1/incidents/{id}/close", post(incidents::close))
        .route("/api/v1/rules", get(incidents::rules))
        .route("/api/v1/forward", get(forward))
        .route("/api/v1/rules/reload", post(incidents::reload))
        .route("/api/v1/audit", get(audit::list))
        .with_state(state)
}

/// Liveness: answers while the process serves; whether it does its job is `/readyz`.
async fn healthz(State(st): State<AppState>) -> Json<Value> {
    let brokers: Vec<Value> = st
        .metrics
        .brokers
        .iter()
        .map(|b| json!({ "id": b.id, "connected": b.connected.load(std::sync::atomic::Ordering::Relaxed) }))
        .collect();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "site": st.registry.site.id,
        "uptime_s": st.metrics.started.elapsed().as_secs(),
        "mqtt": brokers,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsQuery {
    grid: Option<String>,
    device: Option<String>,
    category: Option<String>,
}

/// One point as the API shows it.
#[derive(Debug, Serialize)]
struct PointView<'a> {
    device: &'a str,
    point: &'a str,
    grid: &'a str,
    category: &'a str,
    unit: &'a str,
    value: Value,
    ts: String,
    ts_ns: i64,
    quality: Quality,
}

async fn points(
    State(st): State<AppState>,
    query: Result<Query<PointsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let reg = &st.registry;
    let filter = PointFilter {
        grid: match &q.grid {
            Some(g) => Some(reg.grid_id(g).ok_or_else(|| ApiError::BadRequest(format!("grid {g:?} is not defined")))?),
            None => None,
        },
        device: match &q.device {
            Some(d) => {
                Some(reg.device_id(d).ok_or_else(|| ApiError::BadRequest(format!("device {d:?} is not defined")))?)
            }
            None => None,
        },
        category: q.category.clone(),
    };
    let states = st.core.points(filter).await?;
    let views: Vec<PointView> = states
        .iter()
        .map(|(id, s)| {
            let p = reg.point(*id);
            let d = reg.device(p.device);
            PointView {
                device: &d.id,
                point: &p.name,
                grid: &reg.grid(d.grid).id,
                category: &d.category,
                unit: &p.unit,
                value: typed(p.kind, s.value),
                ts: fmt_ns(s.ts),
                ts_ns: s.ts,
                quality: s.quality,
            }
        })
        .collect();
    Ok(Json(views).into_response())
}

/// A value as JSON of the point's type.
fn typed(kind: PointKind, v: f64) -> Value {
    match kind {
        PointKind::Float => json!(v),
        PointKind::Int => json!(v.round() as i64),
        PointKind::Bool => json!(v != 0.0),
    }
}

async fn devices(State(st): State<AppState>) -> Json<Value> {
    let reg = &st.registry;
    let list: Vec<Value> = reg
        .devices
        .iter()
        .map(|d| {
            let points: Vec<Value> = d
                .points
                .clone()
                .map(|i| {
                    let p = &reg.points[i as usize];
                    json!({ "name": p.name, "unit": p.unit, "kind": p.kind })
                })
                .collect();
            let mut v = json!({
                "id": d.id, "name": d.name, "grid": reg.grid(d.grid).id, "category": d.category,
                "tags": d.tags, "points": points,
            });
            if let Some(m) = st.modbus.devices.iter().find(|m| m.device == d.id) {
                v["modbus"] = modbus_status(m);
            }
            v
        })
        .collect();
    Json(Value::Array(list))
}

fn modbus_status(m: &crate::source::modbus::DeviceStatus) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let last = m.last_success_ns.load(Relaxed);
    json!({
        "connection": m.connection,
        "online": m.online.load(Relaxed),
        "last_success": if last > 0 { Value::String(fmt_ns(last)) } else { Value::Null },
        "requests": m.requests.load(Relaxed),
        "registers": m.registers.load(Relaxed),
        "errors": {
            "timeout": m.timeouts.load(Relaxed),
            "exception": m.exceptions.load(Relaxed),
            "transport": m.transport_errors.load(Relaxed),
        },
        "overruns": m.overruns.load(Relaxed),
        "latency_ms": m.last_latency_us.load(Relaxed) as f64 / 1e3,
        "last_error": m.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn events(
    State(st): State<AppState>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let events = st.core.events(q.limit.unwrap_or(100).min(10_000)).await?;
    let reg = &st.registry;
    let list: Vec<Value> = events
        .iter()
        .map(|e| {
            let d = reg.device(e.device);
            json!({
                "device": d.id, "grid": reg.grid(d.grid).id, "category": d.category, "kind": e.kind,
                "ts": fmt_ns(e.ts), "ts_ns": e.ts, "attributes": e.attributes,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)).into_response())
}

async fn rejects(State(st): State<AppState>) -> Json<Value> {
    Json(json!(st.metrics.rejects.recent()))
}

#[cfg(test)]
mod tests;

async fn forward(State(st): State<AppState>) -> Json<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(f) = st.forward.clone() else {
        return Json(json!({ "enabled": false }));
    };
    let now = crate::model::time::now_ns();
    let o = &f.outbox;
    let mut targets = Vec::new();
    for t in &f.targets {
        let path = f.outbox_path.clone();
        let id = t.id.clone();
        let dead = tokio::task::spawn_blocking(move || {
            crate::forward::outbox::Cursor::open(&path, &id).and_then(|c| c.dead_letters(20)).unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let writes = t.writes.load(Relaxed);
        let oldest = t.oldest_ns.load(Relaxed);
        targets.push(json!({
            "id": t.id,
            "url": t.url,
            "up": t.up.load(Relaxed),
            "backlog_batches": t.backlog_batches.load(Relaxed),
            "backlog_bytes": t.backlog_bytes.load(Relaxed),
            "oldest_age_secs": if oldest > 0 { (now - oldest) as f64 / 1e9 } else { 0.0 },
            "writes": writes,
            "lines": t.lines.load(Relaxed),
            "retries": t.retries.load(Relaxed),
            "dead_letters": t.dead_letters.load(Relaxed),
            "last_latency_ms": t.last_latency_us.load(Relaxed) as f64 / 1e3,
            "mean_latency_ms": if writes > 0 { t.latency_us_sum.load(Relaxed) as f64 / writes as f64 / 1e3 } else { 0.0 },
            "last_error": t.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
            "recent_dead_letters": dead.iter().map(|(seq, at, status, message)| json!({
                "seq": seq, "at": fmt_ns(*at), "status": status, "message": message
            })).collect::<Vec<_>>(),
        }));
    }
    Json(json!({
        "enabled": true,
        "outbox": {
            "path": f.outbox_path.display().to_string(),
            "batches": o.batches.load(Relaxed),
            "bytes": o.bytes.load(Relaxed),
            "committed_batches": o.committed_batches.load(Relaxed),
            "committed_lines": o.committed_lines.load(Relaxed),
            "dropped_batches": o.dropped_batches.load(Relaxed),
            "dropped_bytes": o.dropped_bytes.load(Relaxed),
            "dropped_incidents": o.dropped_incidents.load(Relaxed),
            "append_errors": o.append_errors.load(Relaxed),
            "lost_samples": o.lost_samples.load(Relaxed),
            "unacked_samples": o.unacked_samples.load(Relaxed),
            "incident_lines": o.incident_lines.load(Relaxed),
            "incident_lag": o.incident_lag.load(Relaxed),
            "audit_lines": o.audit_lines.load(Relaxed),
            "audit_lag": o.audit_lag.load(Relaxed),
            "failing": o.failing.load(Relaxed),
            "last_error": o.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        },
        "targets": targets,
    }))
}
