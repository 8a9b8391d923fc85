//! The audit trail over HTTP: how an answer is told in a record (outcome and reason), and
//! `GET /api/v1/audit`, which pages through the committed records by sequence number.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::audit::AuditReader;

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
        Err(
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooMany { message: m, .. },
        ) => m.clone(),
        Err(ApiError::Internal(_)) => "internal error".to_owned(),
        Err(ApiError::Unavailable) => "the gateway is shutting down".to_owned(),
    }
}

/// `detail`, followed by why the request failed when it did.
pub(super) fn with_reason<T>(detail: String, r: &Result<T, ApiError>) -> String {
    let why = reason(r);
    match (detail.is_empty(), why.is_empty()) {
        (_, true) => detail,
        (true, false) => why,
        (false, false) => format!("{detail}; {why}"),
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
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest(format!("after={after}; expected a sequence number, 0 or more")));
    }
    let limit = match q.limit.unwrap_or(100) {
        n @ 1..=1000 => n,
        n => return Err(ApiError::BadRequest(format!("limit={n}; expected 1 to 1000"))),
    };
    let path = st.audit.path().to_owned();
    let records = tokio::task::spawn_blocking(move || AuditReader::open(&path)?.after(after, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let next = records.last().map_or(after, |r| r.seq);
    Ok(Json(json!({ "records": records, "next": next })).into_response())
}
