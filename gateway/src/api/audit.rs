//! The audit trail over HTTP: where a request came from (for its records), recording, and
//! `GET /api/v1/audit`, which pages through the committed records by sequence number.

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::tls::Peer;
use super::{ApiError, AppState};
use crate::audit::{AuditEvent, AuditReader};

/// The peer address of a request, for audit records; `unknown` when served without a socket.
#[derive(Debug, Clone)]
pub(super) struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(match parts.extensions.get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(Peer(addr))) => addr.to_string(),
            None => "unknown".to_owned(),
        }))
    }
}

impl AppState {
    /// Records `event` in the audit trail, when there is one.
    pub(super) fn audit(&self, event: AuditEvent) {
        if let Some(log) = &self.audit {
            log.record(event);
        }
    }
}

/// The outcome of an answer, as audit records say it: `ok`, `refused` (the request was not
/// acceptable) or `failed` (the gateway could not do it).
pub(super) fn outcome<T>(r: &Result<T, ApiError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(ApiError::Internal(_) | ApiError::Unavailable) => "failed",
        Err(_) => "refused",
    }
}

/// Why a request failed, for the record's detail.
pub(super) fn reason<T>(r: &Result<T, ApiError>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(ApiError::BadRequest(m) | ApiError::NotFound(m) | ApiError::Conflict(m)) => m.clone(),
        Err(ApiError::Internal(_)) => "internal error".to_owned(),
        Err(ApiError::Unavailable) => "the gateway is shutting down".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Records after this sequence number (0: from the first).
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// `GET /api/v1/audit?after=SEQ&limit=N`: committed records in order, and the cursor for the next page.
pub(super) async fn list(
    State(st): State<AppState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let log = st.audit.as_ref().ok_or_else(|| ApiError::NotFound("the audit trail is not enabled".into()))?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest(format!("after={after}; expected a sequence number, 0 or more")));
    }
    let limit = match q.limit.unwrap_or(100) {
        n @ 1..=1000 => n,
        n => return Err(ApiError::BadRequest(format!("limit={n}; expected 1 to 1000"))),
    };
    let path = log.path().to_owned();
    let records = tokio::task::spawn_blocking(move || AuditReader::open(&path)?.after(after, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let next = records.last().map_or(after, |r| r.seq);
    Ok(Json(json!({ "records": records, "next": next })).into_response())
}
