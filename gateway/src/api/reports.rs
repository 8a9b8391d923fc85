//! `GET /api/v1/reports/emissions` and `GET /api/v1/reports/energy`: the reports of `parkwatch
//! report`, for the points of the caller's grids.
//!
//! Query: `period` (`2026-11`, `2026-11-05`, `2026-11-01..2026-11-15`; default the previous local
//! month), `format` (`html`, `csv`, `json`; default `json`), `lang` (`zh`, `en`; default `zh`),
//! `point` (`device` or `device/point`, repeatable as a comma-separated list).

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{Datelike, TimeZone};
use serde::Deserialize;

use super::{ApiError, AppState, Principal};
use crate::report::{render, Format, Lang, Period, ReportError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    period: Option<String>,
    format: Option<String>,
    lang: Option<String>,
    point: Option<String>,
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Period(_) | ReportError::Format(_) => Self::BadRequest(e.to_string()),
            ReportError::Unknown(_) | ReportError::NoHistory => Self::NotFound(e.to_string()),
            ReportError::History(_) | ReportError::Incidents(_) => Self::Internal(e.to_string()),
        }
    }
}

pub(super) async fn emissions(
    st: State<AppState>,
    who: Extension<Principal>,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    make(st, who, q, false).await
}

pub(super) async fn energy(
    st: State<AppState>,
    who: Extension<Principal>,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    make(st, who, q, true).await
}

async fn make(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
    energy: bool,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let tz = st.registry.load().site.timezone;
    let period = match &q.period {
        Some(p) => Period::parse(p)?,
        None => {
            let today =
                tz.timestamp_millis_opt(crate::model::time::now_ns() / 1_000_000).single().map(|t| t.date_naive());
            let first = today.and_then(|d| d.with_day(1)).and_then(|d| d.pred_opt()).and_then(|d| d.with_day(1));
            Period::parse(&first.map(|d| d.format("%Y-%m").to_string()).unwrap_or_default())?
        }
    };
    let format = Format::parse(q.format.as_deref().unwrap_or("json"))?;
    let lang = match q.lang.as_deref() {
        None | Some("zh") => Lang::Zh,
        Some("en") => Lang::En,
        Some(other) => return Err(ApiError::BadRequest(format!("lang={other:?}; expected zh or en"))),
    };
    let only: Vec<String> =
        q.point.iter().flat_map(|p| p.split(',')).map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    let reporter = st.reports.clone();
    let identity = who.identity.clone();
    // SQLite reads of a month of minutes: off the async workers.
    let text = tokio::task::spawn_blocking(move || -> Result<String, ReportError> {
        let sees = |grid: &str| identity.sees(grid);
        Ok(if energy {
            render::energy(&reporter.energy(&period, &only, &sees)?, format, lang)
        } else {
            render::emissions(&reporter.emissions(&period, &only, &sees)?, format, lang)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}
