//! Energy accounts: daily and period kWh per meter, building, tenant and grid from the meters' energy
//! counters, peak demand (the largest 15-minute average power) and time-of-use buckets.
//!
//! # Method
//! - The edge history keeps each minute's counter increments (a counter that goes down was reset:
//!   the new reading counts from zero) and the minute's last reading. Each reading's increment is
//!   the day's and the time-of-use bucket's of its minute (local time).
//! - A reading more than `reports.energy_gap_minutes` after the one before closes a gap: its
//!   increment is the gap's energy. It is counted in the day when the gap lies within one day (in
//!   no time-of-use bucket: when in the day is unknown), else only in the period's total, and never
//!   in peak demand. Gaps are listed, never filled in.
//! - A meter replaced (`[[reports.replacements]]`): the minute of the new meter's first reading
//!   counts the old meter's last stretch (`old_final` − its last stored reading) plus the new
//!   meter's increase over `new_initial`.
//! - Peak demand: energy in each local quarter hour × 4 (kW), quarters without a gap only; per
//!   building, tenant and grid from the sum of their meters' quarters.
//! - Counters in Wh or MWh are converted to kWh; reactive energy (varh) is not an account.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{buckets, fmt_local, rfc3339, Period, ReportError, Reporter, MINUTE_MS};
use crate::config::report::{in_period, TOU_BUCKETS};
use crate::config::validate::parse_hhmm;
use crate::history::Agg;

const QUARTER_MS: i64 = 15 * MINUTE_MS;

/// The energy report as data.
#[derive(Debug, Clone, Serialize)]
pub struct EnergyReport {
    #[serde(flatten)]
    pub head: super::Head,
    /// The time-of-use buckets in use, in order.
    pub buckets: Vec<&'static str>,
    pub meters: Vec<MeterReport>,
    /// Per building, tenant and grid.
    pub groups: Vec<GroupReport>,
}

/// One meter's counter.
#[derive(Debug, Clone, Serialize)]
pub struct MeterReport {
    pub device: String,
    pub device_name: String,
    pub point: String,
    pub grid: String,
    pub building: String,
    pub tenant: String,
    pub kwh: f64,
    pub tou: Vec<f64>,
    /// Energy of gaps that span days: in `kwh`, in no day.
    pub gap_kwh_between_days: f64,
    pub peak_kw: Option<f64>,
    pub peak_at: Option<String>,
    pub days: Vec<DayEnergy>,
    pub gaps: Vec<Gap>,
    /// Times the counter went down (a reset, counted from zero).
    pub resets: Vec<String>,
    /// Replacements applied.
    pub replacements: Vec<String>,
    /// Part of the period came from hourly rollups: no peak demand or time of use there.
    pub hourly_only: bool,
}

/// One local day of a meter.
#[derive(Debug, Clone, Serialize)]
pub struct DayEnergy {
    pub date: String,
    #[serde(skip)]
    pub start_ms: i64,
    pub kwh: f64,
    pub tou: Vec<f64>,
    /// Energy of a gap within the day (in `kwh`, in no bucket).
    pub gap_kwh: f64,
    pub gap_minutes: f64,
    pub peak_kw: Option<f64>,
    pub peak_at: Option<String>,
}

/// Readings missing for longer than `energy_gap_minutes`.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub from: String,
    pub to: String,
    pub minutes: f64,
    pub kwh: f64,
}

/// A building, tenant or grid.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// `building`, `tenant` or `grid`.
    pub kind: &'static str,
    pub id: String,
    pub meters: usize,
    pub kwh: f64,
    pub tou: Vec<f64>,
    pub peak_kw: Option<f64>,
    pub peak_at: Option<String>,
}

/// kWh per unit of the counter, or none for a counter that is not active energy.
fn to_kwh(unit: &str) -> Option<f64> {
    match unit.trim() {
        "Wh" => Some(0.001),
        "kWh" => Some(1.0),
        "MWh" => Some(1000.0),
        _ => None,
    }
}

/// Rounds to 0.001 kWh, so the report's bytes do not depend on the order floats were added in.
fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Reporter {
    /// The energy report for `period`, for the meters `only` names (none: all) in grids `sees`
    /// accepts.
    ///
    /// # Errors
    /// An unknown meter in `only`, history off, or a database that cannot be read.
    pub fn energy(
        &self,
        period: &Period,
        only: &[String],
        sees: &dyn Fn(&str) -> bool,
    ) -> Result<EnergyReport, ReportError> {
        self.check_filters(only)?;
        let tz = self.tz();
        let days = period.days(tz);
        let conn = self.open_history()?;
        let reg = &self.registry;
        let s = &self.settings;
        let tou: Vec<(usize, u32, u32)> = s
            .tou
            .iter()
            .filter_map(|t| {
                let b = TOU_BUCKETS.iter().position(|b| *b == t.bucket)?;
                Some((b, parse_hhmm(&t.from)?, parse_hhmm(&t.to)?))
            })
            .collect();
        let flat = TOU_BUCKETS.iter().position(|b| *b == "flat").unwrap_or(0);
        // Buckets shown: those configured, and flat for the rest of the day.
        let used: Vec<usize> =
            (0..TOU_BUCKETS.len()).filter(|b| *b == flat || tou.iter().any(|(t, ..)| t == b)).collect();
        let bucket_of = |minute_of_day: u32| {
            tou.iter().find(|(_, f, t)| in_period(minute_of_day, *f, *t)).map_or(flat, |(b, ..)| *b)
        };
        let gap_ms = i64::from(s.energy_gap_minutes) * MINUTE_MS;
        let (Some(first), Some(last)) = (days.first().copied(), days.last().copied()) else {
            return Err(ReportError::Period(period.label.clone()));
        };
        let mut meters = Vec::new();
        // Group → quarter start → kWh, for group peaks.
        let mut quarters: BTreeMap<(&'static str, String), BTreeMap<i64, f64>> = BTreeMap::new();
        for (id, d) in reg.live_devices() {
            let di = id.0 as usize;
            for p in d.points.clone() {
                let info = &reg.points[p as usize];
                let Some(factor) = to_kwh(&info.unit) else { continue };
                if !self.wanted(di, &info.name, only, sees) {
                    continue;
                }
                // Look back far enough to know whether the first reading closes a gap.
                let (rows, coarse) = buckets(&conn, &d.id, &info.name, first.start - gap_ms - MINUTE_MS, last.end)?;
                let reps: Vec<(i64, &crate::config::report::Replacement)> = s
                    .replacements
                    .iter()
                    .filter(|r| r.device == d.id && r.point == info.name)
                    .filter_map(|r| Some((chrono::DateTime::parse_from_rfc3339(&r.at).ok()?.timestamp_millis(), r)))
                    .collect();
                let mut m = MeterReport {
                    device: d.id.clone(),
                    device_name: d.name.clone(),
                    point: info.name.clone(),
                    grid: reg.grid(d.grid).id.clone(),
                    building: d.tags.get("building").cloned().unwrap_or_default(),
                    tenant: d.tags.get("tenant").cloned().unwrap_or_default(),
                    kwh: 0.0,
                    tou: vec![0.0; TOU_BUCKETS.len()],
                    gap_kwh_between_days: 0.0,
                    peak_kw: None,
                    peak_at: None,
                    days: days
                        .iter()
                        .map(|day| DayEnergy {
                            date: day.date.to_string(),
                            start_ms: day.start,
                            kwh: 0.0,
                            tou: vec![0.0; TOU_BUCKETS.len()],
                            gap_kwh: 0.0,
                            gap_minutes: 0.0,
                            peak_kw: None,
                            peak_at: None,
                        })
                        .collect(),
                    gaps: Vec::new(),
                    resets: Vec::new(),
                    replacements: Vec::new(),
                    hourly_only: coarse.is_some(),
                };
                let mut q: BTreeMap<i64, (f64, bool)> = BTreeMap::new();
                let day_of = |t: i64| days.iter().position(|day| t >= day.start && t < day.end);
                let mut prev: Option<&Agg> = None;
                for r in rows.iter().filter(|r| r.count > 0) {
                    let before = prev.replace(r);
                    if r.t < first.start {
                        continue;
                    }
                    let mut inc = r.sum;
                    let mut gap = false;
                    if let Some(b) = before {
                        if let Some((at, rep)) = reps.iter().find(|(at, _)| *at > b.t && *at <= r.t) {
                            let old_final = rep.old_final.unwrap_or(b.last);
                            inc = (old_final - b.last).max(0.0) + (r.last - rep.new_initial).max(0.0);
                            m.replacements.push(format!(
                                "{}: {} → {}",
                                fmt_local(tz, *at),
                                rep.old_final.map_or_else(|| format!("({})", b.last), |v| v.to_string()),
                                rep.new_initial
                            ));
                        } else if r.last < b.last {
                            m.resets.push(fmt_local(tz, r.t));
                        }
                        // Hourly rows are an hour apart by nature.
                        let step = if coarse.is_some_and(|c| b.t < c) { 3_600_000 } else { MINUTE_MS };
                        if r.t - b.t > gap_ms + step - MINUTE_MS {
                            gap = true;
                            let kwh = inc * factor;
                            let (from, to) = (b.t + MINUTE_MS, r.t);
                            m.gaps.push(Gap {
                                from: rfc3339(tz, from),
                                to: rfc3339(tz, to),
                                minutes: ((to - from) / MINUTE_MS) as f64,
                                kwh: r3(kwh),
                            });
                            m.kwh += kwh;
                            match (day_of(from), day_of(to - 1)) {
                                (Some(a), Some(b)) if a == b => {
                                    m.days[a].kwh += kwh;
                                    m.days[a].gap_kwh += kwh;
                                    m.days[a].gap_minutes += ((to - from) / MINUTE_MS) as f64;
                                }
                                (a, b) => {
                                    m.gap_kwh_between_days += kwh;
                                    // Each day's share of the missing minutes is still reported.
                                    for (i, day) in days.iter().enumerate() {
                                        let overlap = (to.min(day.end) - from.max(day.start)).max(0);
                                        if overlap > 0
                                            && (Some(i) == a || Some(i) == b || (from < day.start && to > day.end))
                                        {
                                            m.days[i].gap_minutes += (overlap / MINUTE_MS) as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    if gap {
                        // The quarter of a gap's end cannot be a demand figure.
                        q.entry(r.t - (r.t - first.start).rem_euclid(QUARTER_MS)).or_insert((0.0, false)).1 = true;
                        continue;
                    }
                    let kwh = inc * factor;
                    let Some(di) = day_of(r.t) else { continue };
                    let day = &mut m.days[di];
                    day.kwh += kwh;
                    m.kwh += kwh;
                    if coarse.is_some_and(|c| r.t < c) {
                        // An hourly row: no time of use or demand within it.
                        continue;
                    }
                    let minute = ((r.t - day.start_ms) / MINUTE_MS) as u32;
                    let b = bucket_of(minute % 1_440);
                    day.tou[b] += kwh;
                    m.tou[b] += kwh;
                    q.entry(r.t - (r.t - first.start).rem_euclid(QUARTER_MS)).or_insert((0.0, false)).0 += kwh;
                }
                for (t, (kwh, gap)) in &q {
                    if *gap {
                        continue;
                    }
                    let kw = r3(kwh * 4.0);
                    if m.peak_kw.is_none_or(|p| kw > p) {
                        m.peak_kw = Some(kw);
                        m.peak_at = Some(rfc3339(tz, *t));
                    }
                    if let Some(i) = day_of(*t) {
                        let day = &mut m.days[i];
                        if day.peak_kw.is_none_or(|p| kw > p) {
                            day.peak_kw = Some(kw);
                            day.peak_at = Some(rfc3339(tz, *t));
                        }
                    }
                    for key in [("building", &m.building), ("tenant", &m.tenant), ("grid", &m.grid)] {
                        if !key.1.is_empty() {
                            *quarters.entry((key.0, key.1.clone())).or_default().entry(*t).or_default() += kwh;
                        }
                    }
                }
                m.kwh = r3(m.kwh);
                m.gap_kwh_between_days = r3(m.gap_kwh_between_days);
                for v in &mut m.tou {
                    *v = r3(*v);
                }
                for day in &mut m.days {
                    day.kwh = r3(day.kwh);
                    day.gap_kwh = r3(day.gap_kwh);
                    for v in &mut day.tou {
                        *v = r3(*v);
                    }
                    day.tou = used.iter().map(|b| day.tou[*b]).collect();
                }
                m.tou = used.iter().map(|b| m.tou[*b]).collect();
                meters.push(m);
            }
        }
        let mut groups = Vec::new();
        for kind in ["building", "tenant", "grid"] {
            let mut ids: Vec<&String> = meters
                .iter()
                .map(|m| match kind {
                    "building" => &m.building,
                    "tenant" => &m.tenant,
                    _ => &m.grid,
                })
                .filter(|id| !id.is_empty())
                .collect();
            ids.sort();
            ids.dedup();
            for id in ids {
                let of: Vec<&MeterReport> = meters
                    .iter()
                    .filter(|m| match kind {
                        "building" => &m.building == id,
                        "tenant" => &m.tenant == id,
                        _ => &m.grid == id,
                    })
                    .collect();
                let peak = quarters.get(&(kind, id.clone())).and_then(|q| {
                    q.iter().map(|(t, k)| (r3(k * 4.0), *t)).reduce(|a, b| if b.0 > a.0 { b } else { a })
                });
                groups.push(GroupReport {
                    kind,
                    id: id.clone(),
                    meters: of.len(),
                    kwh: r3(of.iter().map(|m| m.kwh).sum()),
                    tou: (0..used.len()).map(|i| r3(of.iter().map(|m| m.tou[i]).sum())).collect(),
                    peak_kw: peak.map(|p| p.0),
                    peak_at: peak.map(|p| rfc3339(tz, p.1)),
                });
            }
        }
        Ok(EnergyReport {
            head: self.head(period),
            buckets: used.iter().map(|b| TOU_BUCKETS[*b]).collect(),
            meters,
            groups,
        })
    }
}
