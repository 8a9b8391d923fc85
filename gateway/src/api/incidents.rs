//! Incident and rule routes: list and inspect incidents, acknowledge, shelve, comment, close; the
//! loaded rules and a reload. Actions on a live alarm go through the core (it owns alarm state); the
//! answer is given once the change is on disk.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::audit::{outcome, reason, Source};
use super::{ApiError, AppState};
use crate::audit::AuditEvent;
use crate::core::engine::{Action, ActionError};
use crate::core::rules::parse_duration;
use crate::incident::{Filter, IncidentStore, Manual, StoreError};
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
        severity: q.severity,
        category: q.category,
        device: q.device,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(store(&st)?.list(filter).await?).into_response())
}

pub(super) async fn one(State(st): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    match store(&st)?.get(id).await? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(ApiError::NotFound(format!("incident {id} not found"))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActBody {
    /// Who acts (an officer's id or name).
    by: String,
    note: Option<String>,
    /// For shelve: how long, like "30m".
    duration: Option<String>,
    /// For comment.
    text: Option<String>,
}

type Body = Result<Json<ActBody>, axum::extract::rejection::JsonRejection>;

fn body(b: Body) -> Result<ActBody, ApiError> {
    let Json(b) = b.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if b.by.trim().is_empty() {
        return Err(ApiError::BadRequest("`by` is empty; say who acts".into()));
    }
    Ok(b)
}

async fn act(st: &AppState, id: i64, action: Action, b: ActBody) -> Result<Response, ApiError> {
    let store = store(st)?;
    let handled = st.core.act(id, action.clone(), b.by.clone()).await?.map_err(|e| match e {
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
        store.manual(id, manual, b.by.clone(), b.note.clone(), now).await?;
    } else if let Some(note) = b.note.filter(|n| !n.trim().is_empty()) {
        store.comment(id, b.by, note, now).await?;
    }
    // The core queued its changes before answering; this waits until they are on disk.
    store.sync().await?;
    match store.get(id).await? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(ApiError::NotFound(format!("incident {id} not found"))),
    }
}

/// What an action request asked for, as its audit record's detail (never more than the client sent).
fn describe(b: &ActBody) -> String {
    let mut parts = Vec::new();
    for (k, v) in [("duration", &b.duration), ("note", &b.note), ("text", &b.text)] {
        if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
            parts.push(format!("{k}: {v}"));
        }
    }
    parts.join("; ")
}

/// Records an action on incident `id` with the actor the request named, and passes its answer on.
fn audited(
    st: &AppState,
    Source(source): Source,
    action: &'static str,
    id: i64,
    b: Option<&ActBody>,
    r: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let mut detail = b.map(describe).unwrap_or_default();
    let why = reason(&r);
    if !why.is_empty() {
        detail = if detail.is_empty() { why } else { format!("{detail}; {why}") };
    }
    st.audit(AuditEvent {
        actor: b.map_or_else(|| "unknown".to_owned(), |b| b.by.clone()),
        source,
        action,
        target: format!("incident:{id}"),
        outcome: outcome(&r),
        detail,
    });
    r
}

pub(super) async fn ack(
    State(st): State<AppState>,
    src: Source,
    Path(id): Path<i64>,
    b: Body,
) -> Result<Response, ApiError> {
    let b = body(b);
    let r = match &b {
        Ok(b) => act(&st, id, Action::Ack, b.clone()).await,
        Err(e) => Err(e.clone()),
    };
    audited(&st, src, "incident.ack", id, b.as_ref().ok(), r)
}

pub(super) async fn close(
    State(st): State<AppState>,
    src: Source,
    Path(id): Path<i64>,
    b: Body,
) -> Result<Response, ApiError> {
    let b = body(b);
    let r = match &b {
        Ok(b) => act(&st, id, Action::Close, b.clone()).await,
        Err(e) => Err(e.clone()),
    };
    audited(&st, src, "incident.close", id, b.as_ref().ok(), r)
}

pub(super) async fn shelve(
    State(st): State<AppState>,
    src: Source,
    Path(id): Path<i64>,
    b: Body,
) -> Result<Response, ApiError> {
    let b = body(b);
    let action = b.as_ref().ok().and_then(|b| b.duration.as_deref()).map(|d| match d {
        "0" | "0s" => Ok(Action::Unshelve),
        d => parse_duration(d)
            .filter(|ns| *ns > 0 && *ns <= 7 * 86_400 * 1_000_000_000)
            .map(|ns| Action::Shelve(now_ns() + ns))
            .ok_or_else(|| ApiError::BadRequest(format!("duration={d:?}; expected 1s to 7d, like \"30m\""))),
    });
    let name = if matches!(action, Some(Ok(Action::Unshelve))) { "incident.unshelve" } else { "incident.shelve" };
    let r = match (&b, action) {
        (Err(e), _) => Err(e.clone()),
        (Ok(_), None) => Err(ApiError::BadRequest("`duration` is missing, like \"30m\" (\"0s\" unshelves)".into())),
        (Ok(_), Some(Err(e))) => Err(e),
        (Ok(b), Some(Ok(action))) => act(&st, id, action, b.clone()).await,
    };
    audited(&st, src, name, id, b.as_ref().ok(), r)
}

pub(super) async fn comment(
    State(st): State<AppState>,
    src: Source,
    Path(id): Path<i64>,
    b: Body,
) -> Result<Response, ApiError> {
    let b = body(b);
    let r = match &b {
        Ok(b) => add_comment(&st, id, b.clone()).await,
        Err(e) => Err(e.clone()),
    };
    audited(&st, src, "incident.comment", id, b.as_ref().ok(), r)
}

async fn add_comment(st: &AppState, id: i64, b: ActBody) -> Result<Response, ApiError> {
    let text = b.text.filter(|t| !t.trim().is_empty()).ok_or_else(|| ApiError::BadRequest("`text` is empty".into()))?;
    let store = store(st)?;
    store.comment(id, b.by, text, now_ns()).await?;
    match store.get(id).await? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(ApiError::NotFound(format!("incident {id} not found"))),
    }
}

pub(super) async fn rules(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(st.core.rules().await?).into_response())
}

pub(super) async fn reload(State(st): State<AppState>, Source(source): Source) -> Result<Response, ApiError> {
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
    // Until users exist, every request to the API acts as `api`.
    st.audit(AuditEvent {
        actor: "api".into(),
        source,
        action: "rules.reload",
        target: "rules".into(),
        outcome,
        detail,
    });
    r
}
