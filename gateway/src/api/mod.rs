//! The HTTP API (axum): liveness, readiness and component health, latest point values and their history, recent events and rejects,
//! incidents and their notifications, the audit trail, Prometheus metrics; served over plain TCP or in-process TLS (`tls.rs`).
//!
//! Only this module knows HTTP. Handlers read shared counters or ask the core through its handle; they
//! never touch point state directly.
//!
//! Deny by default: every route is declared once in [`routes`] with what it needs ([`Need`]), and the
//! router puts the gate of `access.rs` in front of each; only `/healthz`, the dashboard's page and
//! assets (`dashboard.rs`, no data in them) and `/metrics` when `api.metrics_auth = false` are open. A grid-scoped caller's grids go into the query of every
//! handler that reads grid data, so other grids' ids answer 404. Logins, refusals by the gate,
//! incident actions and rule reloads are recorded in the audit trail under the authenticated caller
//! and the client's address.
//!
//! Owns: HTTP routes and their roles, `/metrics` rendering, the health evaluator, the API's TLS
//! listener. May import every room but `app`.

pub mod access;
mod actions;
mod audit;
pub mod dashboard;
mod grids;
pub mod health;
mod history;
mod incidents;
mod metrics;
mod people;
mod reports;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub use self::access::{Need, Principal};
use crate::auth::Role;
use crate::config::PointKind;
use crate::core::{CoreHandle, PointFilter};
use crate::metrics::Metrics;
use crate::model::time::fmt_ns;
use crate::model::{Batch, Quality, SharedRegistry};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Swapped by reloads and auto-provisioning; load it per request.
    pub registry: SharedRegistry,
    pub core: CoreHandle,
    pub metrics: Arc<Metrics>,
    /// Weak, so the API never keeps the core channel open at shutdown.
    pub batches: mpsc::WeakSender<Batch>,
    /// The incident store, when rules run.
    pub incidents: Option<crate::incident::IncidentStore>,
    /// Recompiles the rule packs on request.
    pub reloader: Option<crate::core::packs::Reloader>,
    /// Reloads the configuration file (devices, grids, subscriptions, rules).
    pub config_reload: Option<Arc<crate::reload::ConfigReload>>,
    /// Devices created from topics, when a subscription provisions.
    pub provisioning: Option<crate::reload::Provisioner>,
    /// Forwarding counters, when forwarding is on.
    pub forward: Option<Arc<crate::forward::ForwardMetrics>>,
    /// Health of Modbus-polled devices.
    pub modbus: Arc<crate::source::modbus::ModbusStatus>,
    /// Health of DL/T 645 meters.
    pub dlt645: Arc<crate::source::dlt645::Dlt645Status>,
    /// Component health, for `/readyz`, `/api/v1/health` and `/metrics`.
    pub health: crate::model::health::Health,
    /// The central MQTT publisher's counters, when incidents go to a central broker.
    pub central: Option<Arc<crate::forward::central::CentralMetrics>>,
    /// The audit trail that logins, refusals, actions and reloads are recorded in.
    pub audit: crate::audit::AuditLog,
    /// People, rosters and plans.
    pub people: Arc<crate::people::Directory>,
    /// The notification ledger and counters, when receivers are configured.
    pub notify: Option<crate::notify::NotifyHandle>,
    /// The edge history, when `[history]` is enabled.
    pub history: Option<crate::history::HistoryReader>,
    /// Who may ask.
    pub access: Access,
    /// The bound on live incident streams.
    pub streams: stream::Streams,
    /// HJ 212 listeners and loggers.
    pub hj212: Arc<crate::source::hj212::Hj212Status>,
    /// Emission and energy reports from the history.
    pub reports: Arc<crate::report::Reporter>,
    /// The linkage engine, when `[[actions]]` are declared.
    pub actions: Option<crate::actions::Actions>,
}

/// Authentication and what the config says about it.
#[derive(Clone, Debug)]
pub struct Access {
    pub auth: crate::auth::Auth,
    /// `api.metrics_auth`: `/metrics` needs credentials.
    pub metrics_auth: bool,
    /// The session cookie is marked `Secure` (the API is served over TLS).
    pub cookie_secure: bool,
}

/// An error as clients see it: a status and a one-line message, never internals.
#[derive(Debug, Clone)]
pub enum ApiError {
    BadRequest(String),
    /// No or invalid credentials.
    Unauthorized(String),
    /// Known caller, not allowed.
    Forbidden(String),
    /// Too many failed logins; retry after this many seconds.
    TooMany {
        message: String,
        retry_after: u64,
    },
    NotFound(String),
    Conflict(String),
    Unavailable,
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized(m) => {
                let mut r = (StatusCode::UNAUTHORIZED, Json(json!({ "error": m }))).into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::TooMany { message, retry_after } => {
                let mut r =
                    (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "error": message, "retry_after_secs": retry_after })))
                        .into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                return r;
            }
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

/// One route: method, path, what it needs from the caller, and its handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub need: Need,
    handler: MethodRouter<AppState>,
}

impl Route {
    /// The handler without its gate, for the benchmark that measures what the gate costs; it expects
    /// a [`Principal`] extension. Serving it would skip every access check, so `router` never does.
    pub fn handler_without_gate(self) -> MethodRouter<AppState> {
        self.handler
    }
}

fn get_r<H: Handler<T, AppState>, T: 'static>(path: &'static str, need: Need, h: H) -> Route {
    Route { method: "GET", path, need, handler: get(h) }
}

fn post_r<H: Handler<T, AppState>, T: 'static>(path: &'static str, need: Need, h: H) -> Route {
    Route { method: "POST", path, need, handler: post(h) }
}

/// Every route of the API with the role it needs: the one place a route is added.
pub fn routes() -> Vec<Route> {
    use Need::{Login, Metrics, Open};
    let viewer = Need::Role(Role::Viewer);
    let officer = Need::Role(Role::Officer);
    let site = Need::Role(Role::SafetyManager);
    let admin = Need::Role(Role::Admin);
    vec![
        get_r("/healthz", Open, healthz),
        // The dashboard holds no data (it asks the API below like any client), so it is open.
        get_r("/", Open, dashboard::page),
        get_r("/assets/{name}", Open, dashboard::asset),
        get_r("/metrics", Metrics, metrics::render),
        post_r("/api/v1/login", Login, access::login),
        post_r("/api/v1/logout", viewer, access::logout),
        get_r("/api/v1/me", viewer, access::me),
        get_r("/readyz", viewer, health::readyz),
        get_r("/api/v1/health", viewer, health::health),
        get_r("/api/v1/points", viewer, points),
        // Grid-scoped like the points: another grid's point answers 404.
        get_r("/api/v1/points/{device}/{point}/history", viewer, history::point_history),
        get_r("/api/v1/devices", viewer, devices),
        get_r("/api/v1/events", viewer, events),
        // Raw rejected messages of every grid, and the forwarding internals: site-wide readers only.
        get_r("/api/v1/rejects", site, rejects),
        get_r("/api/v1/forward", site, forward),
        get_r("/api/v1/grids", viewer, grids::list),
        // The park's layout is not for strangers: the page fetches it with the session like any read.
        get_r("/api/v1/site/plan", viewer, grids::plan),
        get_r("/api/v1/incidents", viewer, incidents::list),
        get_r("/api/v1/incidents/stream", viewer, stream::incidents),
        get_r("/api/v1/incidents/{id}", viewer, incidents::one),
        post_r("/api/v1/incidents/{id}/ack", officer, incidents::ack),
        // Shelving a critical alarm needs a supervisor; the handler checks the severity.
        post_r("/api/v1/incidents/{id}/shelve", officer, incidents::shelve),
        post_r("/api/v1/incidents/{id}/comment", officer, incidents::comment),
        post_r("/api/v1/incidents/{id}/close", officer, incidents::close),
        // Who is on duty and how patrols went: grid-scoped, like the incidents.
        get_r("/api/v1/duty", viewer, people::duty),
        get_r("/api/v1/patrols", viewer, people::patrols),
        get_r("/api/v1/grids/{id}/kpis", viewer, people::kpis),
        // Grid-scoped like the points: a caller's report holds the monitoring points of their grids.
        get_r("/api/v1/reports/emissions", viewer, reports::emissions),
        get_r("/api/v1/reports/energy", viewer, reports::energy),
        // Linkage: each action names the role that may trigger it by hand; the engine checks it, the
        // grid and everything else, and answers why it refused.
        get_r("/api/v1/actions", viewer, actions::list),
        post_r("/api/v1/actions/{id}", officer, actions::run),
        post_r("/api/v1/actions/requests/{n}/confirm", officer, actions::confirm),
        get_r("/api/v1/notifications", viewer, incidents::notifications),
        get_r("/api/v1/rules", viewer, incidents::rules),
        post_r("/api/v1/rules/reload", admin, incidents::reload),
        // The same as SIGHUP: the file is read again; the answer says what changed and what waits.
        post_r("/api/v1/config/reload", admin, incidents::config_reload),
        get_r("/api/v1/config/reload", admin, incidents::last_config_reload),
        get_r("/api/v1/provisioning", admin, incidents::provisioning),
        post_r("/api/v1/provisioning/{device}/approve", admin, incidents::approve),
        // Who did what, site-wide: for those who answer for the site.
        get_r("/api/v1/audit", site, audit::list),
    ]
}

/// The API's routes over `state`, each behind its gate.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for r in routes() {
        let gate = access::Gate { state: state.clone(), need: r.need };
        router = router.route(r.path, r.handler.layer(axum::middleware::from_fn_with_state(gate, access::gate)));
    }
    router.fallback(access::fallback).with_state(state)
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
        "site": st.registry.load().site.id,
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
    Extension(who): Extension<Principal>,
    query: Result<Query<PointsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let reg = st.registry.load();
    // A grid or device outside the caller's grids is answered like one that does not exist.
    let filter = PointFilter {
        grid: match &q.grid {
            Some(g) => Some(
                reg.grid_id(g)
                    .filter(|_| who.identity.sees(g))
                    .ok_or_else(|| ApiError::BadRequest(format!("grid {g:?} is not defined")))?,
            ),
            None => None,
        },
        device: match &q.device {
            Some(d) => Some(
                reg.device_id(d)
                    .filter(|id| who.identity.sees(&reg.grid(reg.device(*id).grid).id))
                    .ok_or_else(|| ApiError::BadRequest(format!("device {d:?} is not defined")))?,
            ),
            None => None,
        },
        scope: who.grid_ids(&reg),
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

async fn devices(State(st): State<AppState>, Extension(who): Extension<Principal>) -> Json<Value> {
    let reg = st.registry.load();
    let list: Vec<Value> = reg
        .live_devices()
        .filter(|(_, d)| who.identity.sees(&reg.grid(d.grid).id))
        .map(|(_, d)| {
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
            if !d.device_type.is_empty() {
                v["type"] = json!(d.device_type);
            }
            if d.provisioned {
                v["provisioned"] = json!(true);
            }
            if let Some(m) = st.modbus.devices.iter().find(|m| m.device == d.id) {
                v["modbus"] = modbus_status(m);
            }
            if let Some(m) = st.dlt645.meters.iter().find(|m| m.device == d.id) {
                v["dlt645"] = dlt645_status(m);
            }
            let loggers: Vec<Value> = st
                .hj212
                .loggers
                .iter()
                .filter(|l| l.device == d.id)
                .map(|l| crate::source::hj212::status_json(l))
                .collect();
            if !loggers.is_empty() {
                v["hj212"] = Value::Array(loggers);
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

fn dlt645_status(m: &crate::source::dlt645::MeterStatus) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let last = m.last_success_ns.load(Relaxed);
    let address = m.address.lock().map(|a| a.clone()).unwrap_or_default();
    json!({
        "bus": m.bus,
        "address": if address.is_empty() { Value::Null } else { Value::String(address) },
        "online": m.online.load(Relaxed),
        "last_success": if last > 0 { Value::String(fmt_ns(last)) } else { Value::Null },
        "requests": m.requests.load(Relaxed),
        "values": m.values.load(Relaxed),
        "followups": m.followups.load(Relaxed),
        "errors": {
            "timeout": m.timeouts.load(Relaxed),
            "abnormal": m.abnormal.load(Relaxed),
            "bad_value": m.bad_values.load(Relaxed),
            "transport": m.transport_errors.load(Relaxed),
        },
        "noise_bytes": m.noise_bytes.load(Relaxed),
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
    Extension(who): Extension<Principal>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let events = st.core.events(q.limit.unwrap_or(100).min(10_000), who.grid_ids(&st.registry.load())).await?;
    let reg = st.registry.load();
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
