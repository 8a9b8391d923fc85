//! Emission compliance and disclosure reports and energy accounts, computed from the edge history's
//! rollups (`history.db`) and the incidents they are linked to, for a period of local days.
//!
//! Reports are pure functions of the stored data and the configuration: the same period over the
//! same data gives the same bytes (CSV and JSON carry no generation time). Times are shown in the
//! site's time zone; days are local calendar days.
//!
//! Owns: the limit catalog, the report math and its renderings. May import: `config`, `history` (its
//! reader), `incident` (its read side).

pub mod catalog;
pub mod emissions;
pub mod energy;
pub mod render;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, TimeZone};

use crate::config::{report::Reports, Config};
use crate::history::{store, Agg, HistoryError, Res};
use crate::model::Registry;

pub use crate::config::Lang;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// A report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("period {0:?}: expected a month (2026-11), a day (2026-11-05) or days (2026-11-01..2026-11-15)")]
    Period(String),
    #[error("format {0:?}: expected html, csv or json")]
    Format(String),
    #[error("{0}")]
    Unknown(String),
    #[error("history is not kept on this gateway (history.enabled = false); reports are computed from it")]
    NoHistory,
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Incidents(#[from] crate::incident::StoreError),
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Csv,
    Json,
}

impl Format {
    /// `html`, `csv` or `json`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self, ReportError> {
        match s {
            "html" => Ok(Self::Html),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            _ => Err(ReportError::Format(s.into())),
        }
    }

    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Html => "text/html; charset=utf-8",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
        }
    }
}

/// A run of local calendar days, both ends included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// As asked (`2026-11`).
    pub label: String,
    pub first: NaiveDate,
    pub last: NaiveDate,
}

impl Period {
    /// `2026-11` (a month), `2026-11-05` (a day) or `2026-11-01..2026-11-15` (days, both included;
    /// at most 366).
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self, ReportError> {
        let bad = || ReportError::Period(s.into());
        let day = |d: &str| NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").map_err(|_| bad());
        let (first, last) = if let Some((a, b)) = s.split_once("..") {
            (day(a)?, day(b)?)
        } else if s.len() == 7 {
            let first = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").map_err(|_| bad())?;
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            };
            (first, next.and_then(|n| n.pred_opt()).ok_or_else(bad)?)
        } else {
            let d = day(s)?;
            (d, d)
        };
        if last < first || (last - first).num_days() > 365 {
            return Err(bad());
        }
        Ok(Self { label: s.into(), first, last })
    }

    /// The period's days with their bounds in UTC ms.
    pub fn days(&self, tz: chrono_tz::Tz) -> Vec<Day> {
        self.first
            .iter_days()
            .take_while(|d| *d <= self.last)
            .map(|date| {
                let next = date.succ_opt().unwrap_or(date);
                Day { date, start: local_ms(tz, date, 0), end: local_ms(tz, next, 0) }
            })
            .collect()
    }
}

/// One local day: `[start, end)` in UTC ms (23 or 25 hours long across a DST change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub start: i64,
    pub end: i64,
}

/// UTC ms of local `date` at `minutes` after midnight (the earlier instant when ambiguous, the first
/// instant after a skipped hour).
pub fn local_ms(tz: chrono_tz::Tz, date: NaiveDate, minutes: u32) -> i64 {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default() + chrono::Duration::minutes(i64::from(minutes));
    let mut n = naive;
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&n).earliest() {
            return t.timestamp_millis();
        }
        n += chrono::Duration::minutes(30);
    }
    chrono::Utc.from_utc_datetime(&naive).timestamp_millis()
}

/// `2026-11-05 14:00` in the site's zone.
pub fn fmt_local(tz: chrono_tz::Tz, ms: i64) -> String {
    tz.timestamp_millis_opt(ms).single().map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()
}

/// RFC 3339 with the site's offset (machines).
pub fn rfc3339(tz: chrono_tz::Tz, ms: i64) -> String {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
        .unwrap_or_default()
}

/// What every report starts with: the site, its time zone and the period (local dates).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Head {
    pub site: String,
    pub site_name: String,
    pub timezone: String,
    pub period: String,
    /// First and last local date.
    pub from: String,
    pub to: String,
}

/// Makes reports for one configuration; cheap to share.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub registry: Arc<Registry>,
    pub settings: Reports,
    /// GB 12348 night period, minutes after local midnight.
    pub night: (u32, u32),
    /// Monitoring points (device index, point) and their limits.
    pub points: catalog::Points,
    /// Why a monitoring point has no limit (an unknown class).
    pub problems: Vec<String>,
    pub history: Option<PathBuf>,
    pub incidents: PathBuf,
}

impl Reporter {
    /// From a validated configuration and its registry.
    pub fn new(config: &Config, registry: Arc<Registry>) -> Self {
        let (points, problems) = catalog::monitoring_points(config, &registry);
        let hhmm = |s: &str, d| crate::config::validate::parse_hhmm(s).unwrap_or(d);
        Self {
            night: (hhmm(&config.rules.night_start, 22 * 60), hhmm(&config.rules.night_end, 6 * 60)),
            points,
            problems,
            settings: config.reports.clone(),
            history: config.history.enabled.then(|| config.history.db_path(&config.incidents.path)),
            incidents: config.incidents.path.clone(),
            registry,
        }
    }

    fn tz(&self) -> chrono_tz::Tz {
        self.registry.site.timezone
    }

    fn head(&self, period: &Period) -> Head {
        Head {
            site: self.registry.site.id.clone(),
            site_name: self.registry.site.name.clone(),
            timezone: self.tz().name().to_owned(),
            period: period.label.clone(),
            from: period.first.to_string(),
            to: period.last.to_string(),
        }
    }

    fn open_history(&self) -> Result<rusqlite::Connection, ReportError> {
        let path = self.history.as_ref().ok_or(ReportError::NoHistory)?;
        Ok(store::open_read(path)?)
    }

    /// Whether `device` (an id) is in a grid `sees` accepts and matches the `only` filters
    /// (`device` or `device/point`; none: every point).
    fn wanted(&self, device: usize, point: &str, only: &[String], sees: &dyn Fn(&str) -> bool) -> bool {
        let d = &self.registry.devices[device];
        sees(&self.registry.grid(d.grid).id)
            && (only.is_empty()
                || only.iter().any(|o| match o.split_once('/') {
                    Some((dev, p)) => dev == d.id && p == point,
                    None => o == &d.id,
                }))
    }

    /// Checks that every `only` filter names a device (and point) of the configuration.
    fn check_filters(&self, only: &[String]) -> Result<(), ReportError> {
        for o in only {
            let (dev, p) = o.split_once('/').map_or((o.as_str(), None), |(d, p)| (d, Some(p)));
            let Some(d) = self.registry.device_id(dev) else {
                return Err(ReportError::Unknown(format!("--point {o:?}: no device {dev:?} in the configuration")));
            };
            if let Some(p) = p {
                if self.registry.point_of(d, p).is_none() {
                    return Err(ReportError::Unknown(format!("--point {o:?}: device {dev:?} has no point {p:?}")));
                }
            }
        }
        Ok(())
    }
}

/// The minute rollups of one point over `[from, to)` (UTC ms); where minutes were already pruned,
/// hourly ones, and then the time before which rows are hourly.
fn buckets(
    conn: &rusqlite::Connection,
    device: &str,
    point: &str,
    from: i64,
    to: i64,
) -> Result<(Vec<Agg>, Option<i64>), ReportError> {
    let minutes = store::read(conn, device, point, Res::Minute, from, to)?;
    let first_minute = minutes.first().map_or(to, |m| m.t);
    if first_minute - from < HOUR_MS {
        return Ok((minutes, None));
    }
    // Minutes are kept for weeks, hours for a year: the part before the first minute from hours.
    let mut hours = store::read(conn, device, point, Res::Hour, from, first_minute.div_euclid(HOUR_MS) * HOUR_MS)?;
    let Some(cut) = hours.last().map(|h| h.t + HOUR_MS) else { return Ok((minutes, None)) };
    hours.extend(minutes.into_iter().filter(|m| m.t >= cut));
    Ok((hours, Some(cut)))
}

/// The local days whose energy accounts are due for the central store at `now_ms`: from the day
/// after `last_sent` (from `last_sent` itself on the first turn after a start, since a crash may have
/// come between handing it over and its commit) to yesterday, once today is `settle_ms` old (the
/// history writes a minute a few seconds after it ends); at most `max_days`, the newest.
pub fn energy_days_due(
    tz: chrono_tz::Tz,
    now_ms: i64,
    last_sent: Option<NaiveDate>,
    first_turn: bool,
    settle_ms: i64,
    max_days: i64,
) -> Option<Period> {
    let today = tz.timestamp_millis_opt(now_ms).single()?.date_naive();
    if now_ms < local_ms(tz, today, 0) + settle_ms {
        return None;
    }
    let yesterday = today.pred_opt()?;
    let first = match last_sent {
        Some(d) if first_turn => d,
        Some(d) => d.succ_opt()?,
        None => yesterday,
    };
    let first = first.max(yesterday - chrono::Duration::days(max_days - 1));
    (first <= yesterday).then(|| Period { label: format!("{first}..{yesterday}"), first, last: yesterday })
}

/// Whether `v` exceeds `limit` as the standards word it (strictly), treating values within a few
/// ULPs of the limit as on it, like the rules' `above`.
pub fn above(v: f64, limit: f64) -> bool {
    v > limit && (v - limit) > limit.abs().max(1.0) * 4.0 * f64::EPSILON
}

/// Whether `v` falls short of `limit` (strictly), as [`above`].
pub fn below(v: f64, limit: f64) -> bool {
    v < limit && (limit - v) > limit.abs().max(1.0) * 4.0 * f64::EPSILON
}

#[cfg(test)]
mod tests;
