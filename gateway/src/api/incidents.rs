//! Incident and rule routes: list and inspect incidents, acknowledge, shelve, comment, close; the
//! loaded rules and a reload. Actions on a live alarm go through the core (it owns alarm state); the
//! answer is given once the change is on disk. Every action is recorded under the authenticated
//! caller's name and audited; a caller sees and acts only on incidents of their grids.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::{outcome, with_reason};
use super::{ApiError, AppState, Principal};
use crate::auth::Role;
use crate::core::engine::{Action, ActionError};
use crate::core::rules::parse_duration;
use crate::incident::{Filter, Incident, IncidentStore, Manual, StoreError};
use crate::model::time::now_ns;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound(e.to_string()),
            StoreError::Closed(_) => Self::Conflict(e.to_string()),
            StoreError::Stopped => Self::Unavailable,
            other => Self::Internal(other.to_string()),
        }
    }
}

fn store(st: &AppState) -> Result<&IncidentStore, ApiError> {
    st.incidents.as_ref().ok_or_else(|| ApiError::NotFound("incidents are not enabled".into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    grid: Option<String>,
    severity: Option<String>,
    category: Option<String>,
    device: Option<String>,
    /// RFC 3339.
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

fn time(name: &str, v: Option<&String>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s).ok().and_then(|t| t.timestamp_nanos_opt()).ok_or_else(|| {
            ApiError::BadRequest(format!("{name}={s:?}; expected RFC 3339 like 2026-11-24T08:00:00+08:00"))
        })
    })
    .transpose()
}

pub(super) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    const STATES: [&str; 6] = ["open", "closed", "active_unacked", "active_acked", "returned_unacked", "normal"];
    if let Some(s) = &q.state {
        if !STATES.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!("state={s:?}; expected one of {}", STATES.join(", "))));
        }
    }
    let filter = Filter {
        since: time("since", q.since.as_ref())?,
        until: time("until", q.until.as_ref())?,
        state: q.state,
        grid: q.grid,
        scope: who.scope(),
        severity: q.severity,
        category: q.category,
        device: q.device,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(store(&st)?.list(filter).await?).into_response())
}

/// The incident `id` if the caller may see it; another grid's incident is not found.
async fn visible(st: &AppState, who: &Principal, id: i64) -> Result<Incident, ApiError> {
    store(st)?.get(id, who.scope()).await?.ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))
}

pub(super) async fn one(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let incident = visible(&st, &who, id).await?;
    let mut v = serde_json::to_value(&incident).map_err(|e| ApiError::Internal(e.to_string()))?;
    // The steps of the emergency plan the rule names, when the site has written it.
    if let Some(plan) = st.people.plan(&incident.plan) {
        v["plan_detail"] = serde_json::json!({
            "id": plan.id,
            "title": plan.title,
            "steps": plan.steps.iter().enumerate()
                .map(|(i, s)| serde_json::json!({ "n": i + 1, "text": s }))
                .collect::<Vec<_>>(),
        });
    }
    if let Some(n) = st.notify.clone() {
        // The incident is visible to the caller, so all of its deliveries are too.
        v["deliveries"] = json!(deliveries(n, Some(id), None, 200).await?);
    }
    Ok(Json(v).into_response())
}

async fn deliveries(
    n: crate::notify::NotifyHandle,
    incident: Option<i64>,
    grids: Option<Vec<String>>,
    limit: usize,
) -> Result<Vec<crate::notify::ledger::DeliveryView>, ApiError> {
    tokio::task::spawn_blocking(move || n.deliveries(incident, grids.as_deref(), limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NotificationsQuery {
    incident: Option<i64>,
    limit: Option<usize>,
}

/// Recent deliveries, newest first; a grid-scoped caller sees those of their grids only.
pub(super) async fn notifications(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<NotificationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(id) = q.incident {
        visible(&st, &who, id).await?;
    }
    let Some(n) = st.notify.clone() else {
        return Ok(Json(json!([])).into_response());
    };
    Ok(Json(deliveries(n, q.incident, who.scope(), q.limit.unwrap_or(100).min(1000)).await?).into_response())
}

/// The body of an action; the actor is the authenticated caller, never a field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActBody {
    /// A note kept in the history; required to close by hand.
    note: Option<String>,
    /// For shelve: how long, like "30m" ("0s" unshelves).
    duration: Option<String>,
    /// For shelve: why; required to shelve a critical alarm.
    reason: Option<String>,
    /// For comment.
    text: Option<String>,
}

/// An empty body is an empty object, so `curl -X POST` acknowledges without `-d '{}'`.
fn body(b: &[u8]) -> Result<ActBody, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActBody::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn filled(s: Option<String>) -> Option<String> {
    s.filter(|t| !t.trim().is_empty())
}

/// What an action request asked for, as its audit record's detail (never more than the client sent).
fn describe(b: &Result<ActBody, ApiError>) -> String {
    let Ok(b) = b else { return String::new() };
    let mut parts = Vec::new();
    for (k, v) in [("duration", &b.duration), ("reason", &b.reason), ("note", &b.note), ("text", &b.text)] {
        if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
            parts.push(format!("{k}: {v}"));
        }
    }
    parts.join("; ")
}

/// Records an action of `who` on incident `id` in the audit trail, and passes its answer on.
fn audited(
    st: &AppState,
    who: &Principal,
    action: &'static str,
    id: i64,
    detail: String,
    r: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    st.audit.record(who.event(action, format!("incident:{id}"), outcome(&r), with_reason(detail, &r)));
    r
}

async fn act(
    st: &AppState,
    who: &Principal,
    id: i64,
    action: Action,
    note: Option<String>,
) -> Result<Response, ApiError> {
    let store = store(st)?;
    let handled = st.core.act(id, action.clone(), who.name().to_owned()).await?.map_err(|e| match e {
        ActionError::NotOpen(_) => ApiError::Conflict(e.to_string()),
        ActionError::StillActive(_) => ApiError::Conflict(e.to_string()),
    })?;
    let now = now_ns();
    if !handled {
        let manual = match action {
            Action::Ack => Manual::Ack,
            Action::Close => Manual::Close,
            Action::Shelve(_) | Action::Unshelve => {
                return Err(ApiError::Conflict(format!("incident {id} has no live alarm to shelve")));
            }
        };
        store.manual(id, manual, who.name().to_owned(), note, now).await?;
    } else if let Some(note) = note {
        store.comment(id, who.name().to_owned(), note, now).await?;
    }
    // The core queued its changes before answering; this waits until they are on disk.
    store.sync().await?;
    Ok(Json(visible(st, who, id).await?).into_response())
}

pub(super) async fn ack(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let b = body(&b);
    let detail = describe(&b);
    let r = async {
        let b = b?;
        visible(&st, &who, id).await?;
        act(&st, &who, id, Action::Ack, filled(b.note)).await
    }
    .await;
    audited(&st, &who, "incident.ack", id, detail, r)
}

pub(super) async fn close(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let b = body(&b);
    let detail = describe(&b);
    let r = async {
        let b = b?;
        visible(&st, &who, id).await?;
        let note = filled(b.note)
            .ok_or_else(|| ApiError::BadRequest("`note` is missing; say why the incident is closed by hand".into()))?;
        act(&st, &who, id, Action::Close, Some(note)).await
    }
    .await;
    audited(&st, &who, "incident.close", id, detail, r)
}

pub(super) async fn shelve(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let b = body(&b);
    let detail = describe(&b);
    let unshelve = b.as_ref().is_ok_and(|b| matches!(b.duration.as_deref(), Some("0" | "0s")));
    let r = async {
        let b = b?;
        let incident = visible(&st, &who, id).await?;
        let action = match b.duration.as_deref() {
            Some("0") | Some("0s") => Action::Unshelve,
            Some(d) => {
                let ns = parse_duration(d)
                    .filter(|ns| *ns > 0 && *ns <= 7 * 86_400 * 1_000_000_000)
                    .ok_or_else(|| ApiError::BadRequest(format!("duration={d:?}; expected 1s to 7d, like \"30m\"")))?;
                Action::Shelve(now_ns() + ns)
            }
            None => return Err(ApiError::BadRequest("`duration` is missing, like \"30m\" (\"0s\" unshelves)".into())),
        };
        let reason = filled(b.reason).or(filled(b.note));
        if matches!(action, Action::Shelve(_)) && incident.severity == "critical" {
            if who.identity.role < Role::Supervisor {
                return Err(ApiError::Forbidden("shelving a critical alarm needs role supervisor or above".into()));
            }
            if reason.is_none() {
                return Err(ApiError::BadRequest("`reason` is missing; shelving a critical alarm needs one".into()));
            }
        }
        act(&st, &who, id, action, reason).await
    }
    .await;
    let name = if unshelve { "incident.unshelve" } else { "incident.shelve" };
    audited(&st, &who, name, id, detail, r)
}

pub(super) async fn comment(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let b = body(&b);
    let detail = describe(&b);
    let r = async {
        let b = b?;
        let text = filled(b.text).ok_or_else(|| ApiError::BadRequest("`text` is empty".into()))?;
        visible(&st, &who, id).await?;
        store(&st)?.comment(id, who.name().to_owned(), text, now_ns()).await?;
        Ok(Json(visible(&st, &who, id).await?).into_response())
    }
    .await;
    audited(&st, &who, "incident.comment", id, detail, r)
}

pub(super) async fn rules(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(st.core.rules().await?).into_response())
}

pub(super) async fn config_reload(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let Some(reload) = st.config_reload.as_ref() else {
        return Err(ApiError::NotFound("configuration reload is not available".into()));
    };
    let report = reload.reload("api").await;
    let (status, outcome, detail) = if report.applied {
        (axum::http::StatusCode::OK, "ok", report.changes.join("; "))
    } else {
        // Refused: the configuration that runs stays as it was.
        (axum::http::StatusCode::UNPROCESSABLE_ENTITY, "refused", report.errors.join("; "))
    };
    st.audit.record(who.event("config.reload", "config".into(), outcome, detail));
    Ok((status, Json(report)).into_response())
}

pub(super) async fn last_config_reload(State(st): State<AppState>) -> Result<Response, ApiError> {
    let last = st.config_reload.as_ref().and_then(|r| r.last());
    Ok(Json(json!({ "last": last })).into_response())
}

pub(super) async fn provisioning(State(st): State<AppState>) -> Result<Response, ApiError> {
    use crate::reload::provision::Refusal;
    let Some(p) = st.provisioning.as_ref() else {
        return Err(ApiError::NotFound("no subscription provisions devices".into()));
    };
    let subscriptions: Vec<Value> = p
        .subscriptions()
        .into_iter()
        .map(|(broker, topic, pr, n)| {
            json!({ "broker": broker, "topic": topic, "type": pr.device_type, "max": pr.max,
                    "approve": pr.approve, "provisioned": n })
        })
        .collect();
    let refused: serde_json::Map<String, Value> =
        Refusal::ALL.iter().map(|r| (r.as_str().to_owned(), json!(p.status.refused(*r)))).collect();
    Ok(Json(json!({
        "subscriptions": subscriptions,
        "provisioned": p.status.provisioned(),
        "pending": p.status.pending(),
        "refused": refused,
    }))
    .into_response())
}

pub(super) async fn approve(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    use crate::reload::provision::ProvisionError;
    let Some(p) = st.provisioning.as_ref() else {
        return Err(ApiError::NotFound("no subscription provisions devices".into()));
    };
    let (r, outcome, detail) = match p.approve(&device).await {
        Ok(e) => (Ok(Json(json!({ "provisioned": e })).into_response()), "ok", format!("grid {}", e.grid)),
        Err(e @ ProvisionError::NotPending(_)) => (Err(ApiError::NotFound(e.to_string())), "refused", e.to_string()),
        Err(e) => (Err(ApiError::Unavailable), "failed", e.to_string()),
    };
    st.audit.record(who.event("device.provision", device, outcome, detail));
    r
}

pub(super) async fn reload(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    use crate::core::packs::ReloadError;
    let (r, outcome, detail) = match st.reloader.as_ref() {
        None => (Err(ApiError::NotFound("rules are not enabled".into())), "refused", "rules are not enabled".into()),
        Some(r) => match r.reload().await {
            Ok(n) => (Ok(Json(json!({ "reloaded": true, "rules": n })).into_response()), "ok", format!("{n} rules")),
            // Refused: the packs have errors, and the rules that run stay as they were.
            Err(ReloadError::Failed(errors)) => (
                Ok((
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({ "reloaded": false, "errors": errors })),
                )
                    .into_response()),
                "refused",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            ),
            Err(ReloadError::Stopped) => (Err(ApiError::Unavailable), "failed", "the gateway is shutting down".into()),
        },
    };
    st.audit.record(who.event("rules.reload", "rules".into(), outcome, detail));
    r
}
