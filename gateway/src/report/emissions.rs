//! The emission compliance report: every monitoring point against every limit that applies to it, on
//! each standard's own averaging window, with exceedances, data availability and the windows that
//! cannot be judged.
//!
//! # Method (the fixture in `tests.rs` is worked by hand from these rules)
//! - Only readings of good quality (HJ 212 flag N) count; their time in force (`held`, up to the
//!   next reading or 15 minutes) is the valid data time. A day's availability is its valid seconds
//!   over its length.
//! - Clock-hour mean: time-weighted mean of the hour's valid readings, valid with at least
//!   `reports.hour_min_minutes` (45) minutes of them (GB 3095-2012 Table 4).
//! - 24-hour mean (air): arithmetic mean of the day's valid hourly means, valid with at least
//!   `reports.day_min_hours` (20) of them (GB 3095-2012 Table 4). Daily mean (wastewater): the same
//!   with `reports.water_day_min_hours`.
//! - O3 daily maximum 8-hour mean: the largest of the 8-hour means starting at 00:00…16:00 of the
//!   day (each the mean of its valid hourly means, valid with `o3_8h_min_hours` of 8), valid with
//!   `o3_day_min_8h` valid 8-hour means.
//! - Noise: Leq over the day period and over the night period (which belongs to the date it starts
//!   on) from the stored sound energy (`10·log10(∫10^(L/10)dt / T)`, never a mean of decibels),
//!   valid when valid readings cover `noise_min_coverage` of the period.
//! - pH: each valid clock hour's readings within the range (lowest and highest reading).
//! - A window exceeds when its value is strictly above (pH: outside) the limit. Consecutive
//!   exceeding windows are one exceedance: its start, duration, worst value and the emission
//!   incidents of the point active during it (or within one window after it, when the live rule
//!   raised at the window's end).

use serde::Serialize;

use super::catalog::{Medium, Resolved, Window};
use super::{above, below, buckets, local_ms, rfc3339, Day, Period, ReportError, Reporter, HOUR_MS};
use crate::history::Agg;
use crate::model::sound;

/// The report as data; rendered by `render`.
#[derive(Debug, Clone, Serialize)]
pub struct EmissionReport {
    #[serde(flatten)]
    pub head: super::Head,
    pub validity: Validity,
    pub points: Vec<PointReport>,
    /// Monitoring points not judged, and why.
    pub problems: Vec<String>,
}

/// The validity rules the report applied.
#[derive(Debug, Clone, Serialize)]
pub struct Validity {
    pub hour_min_minutes: u32,
    pub day_min_hours: u32,
    pub water_day_min_hours: u32,
    pub o3_8h_min_hours: u32,
    pub o3_day_min_8h: u32,
    pub noise_min_coverage: f64,
    /// GB 12348 night, local `HH:MM-HH:MM`.
    pub night: String,
}

/// One monitoring point.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    pub device: String,
    pub device_name: String,
    pub grid: String,
    pub point: String,
    pub unit: String,
    pub medium: Medium,
    /// Part of the period came from hourly rollups (minutes already pruned).
    pub hourly_only: bool,
    pub availability: Vec<DayShare>,
    pub limits: Vec<LimitReport>,
}

/// Share of a local day covered by valid data.
#[derive(Debug, Clone, Serialize)]
pub struct DayShare {
    pub date: String,
    pub share: f64,
}

/// One limit of a point over the period.
#[derive(Debug, Clone, Serialize)]
pub struct LimitReport {
    pub window: &'static str,
    pub name_zh: &'static str,
    pub name_en: &'static str,
    pub standard: &'static str,
    pub clause: &'static str,
    pub class: String,
    pub limit: f64,
    /// Lower bound of a range (pH).
    pub low: Option<f64>,
    pub unit: &'static str,
    /// The limit is the site's (`[[rules.overrides]]`), not the standard's default.
    pub site_override: bool,
    pub judged: usize,
    pub exceeded: usize,
    pub not_judgeable: usize,
    pub windows: Vec<WindowValue>,
    pub exceedances: Vec<Exceedance>,
}

/// One averaging window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowValue {
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    #[serde(skip)]
    pub end_ms: i64,
    /// The window's value (mean, Leq, daily maximum 8-hour mean); none when not judgeable.
    pub value: Option<f64>,
    /// Lowest and highest reading in the window.
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub valid: bool,
    pub exceeded: bool,
    /// What the window had and needed to be judged: minutes (1 h), valid hours (24 h), valid 8-hour
    /// means (8 h max), covered share (noise).
    pub have: f64,
    pub need: f64,
}

impl WindowValue {
    /// A window `[start, end)` (UTC ms) not yet judged.
    fn new(start_ms: i64, end_ms: i64, have: f64, need: f64) -> Self {
        Self {
            start: String::new(),
            end: String::new(),
            start_ms,
            end_ms,
            value: None,
            lo: None,
            hi: None,
            valid: false,
            exceeded: false,
            have,
            need,
        }
    }
}

/// Consecutive exceeding windows.
#[derive(Debug, Clone, Serialize)]
pub struct Exceedance {
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    pub duration_s: i64,
    pub worst: f64,
    pub windows: usize,
    pub incidents: Vec<i64>,
}

/// Valid data per local hour.
#[derive(Debug, Clone, Copy)]
struct Hour {
    start: i64,
    end: i64,
    held: f64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hour {
    fn mean(&self) -> Option<f64> {
        (self.held > 0.0).then(|| self.sum / self.held)
    }
}

fn hours_of(days: &[Day], rows: &[Agg]) -> Vec<Hour> {
    let mut hours: Vec<Hour> = Vec::with_capacity(days.len() * 25);
    for d in days {
        let mut t = d.start;
        while t < d.end {
            let end = (t + HOUR_MS).min(d.end);
            hours.push(Hour { start: t, end, held: 0.0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY });
            t = end;
        }
    }
    let mut i = 0;
    for r in rows {
        while i < hours.len() && r.t >= hours[i].end {
            i += 1;
        }
        let Some(h) = hours.get_mut(i) else { break };
        if r.t < h.start {
            continue;
        }
        h.held += r.held;
        h.sum += r.sum;
        h.min = h.min.min(r.min);
        h.max = h.max.max(r.max);
    }
    hours
}

/// Rows with a start in `[from, to)` (rows are sorted).
fn slice(rows: &[Agg], from: i64, to: i64) -> &[Agg] {
    let a = rows.partition_point(|r| r.t < from);
    let b = rows.partition_point(|r| r.t < to);
    &rows[a..b]
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl Reporter {
    /// The emission report for `period`, for the points `only` names (none: all) in grids `sees`
    /// accepts.
    ///
    /// # Errors
    /// An unknown point in `only`, history off, or a database that cannot be read.
    pub fn emissions(
        &self,
        period: &Period,
        only: &[String],
        sees: &dyn Fn(&str) -> bool,
    ) -> Result<EmissionReport, ReportError> {
        self.check_filters(only)?;
        let tz = self.tz();
        let days = period.days(tz);
        let conn = self.open_history()?;
        let incidents = crate::incident::kpi::open_reader(&self.incidents).ok();
        let reg = &self.registry;
        let s = &self.settings;
        let mut points = Vec::new();
        for ((di, name), limits) in &self.points {
            if !self.wanted(*di, name, only, sees) {
                continue;
            }
            let d = &reg.devices[*di];
            let (Some(first), Some(last)) = (days.first(), days.last()) else { continue };
            // The last night runs into the next morning.
            let (rows, coarse) = buckets(&conn, &d.id, name, first.start, last.end + 86_400_000)?;
            let hours = hours_of(&days, &rows);
            let availability = days
                .iter()
                .map(|day| {
                    let held: f64 = slice(&rows, day.start, day.end).iter().map(|r| r.held).sum();
                    DayShare { date: day.date.to_string(), share: held / ((day.end - day.start) as f64 / 1000.0) }
                })
                .collect();
            let unit = reg.device_id(&d.id).and_then(|id| reg.point_of(id, name)).map(|p| reg.point(p).unit.clone());
            let mut out = Vec::new();
            for l in limits {
                let windows = match l.entry.window {
                    Window::Hour | Window::HourRange => self.hourly(&hours, l),
                    Window::Day => {
                        let need =
                            if l.entry.medium == Medium::Wastewater { s.water_day_min_hours } else { s.day_min_hours };
                        self.daily(&days, &hours, l, need)
                    }
                    Window::Max8h => self.max8h(&days, &hours, l),
                    Window::NoiseDay | Window::NoiseNight => self.noise(&days, &rows, l),
                };
                let windows: Vec<WindowValue> = windows
                    .into_iter()
                    .map(|mut w| {
                        w.start = rfc3339(tz, w.start_ms);
                        w.end = rfc3339(tz, w.end_ms);
                        w
                    })
                    .collect();
                let exceedances = exceedances(&windows, l, |from, to| {
                    incidents
                        .as_ref()
                        .and_then(|c| {
                            crate::incident::kpi::active_between(
                                c,
                                &d.id,
                                name,
                                "emission",
                                from * 1_000_000,
                                to * 1_000_000,
                            )
                            .ok()
                        })
                        .map(|v| v.into_iter().map(|i| i.id).collect())
                        .unwrap_or_default()
                });
                let exceedances = exceedances
                    .into_iter()
                    .map(|mut e| {
                        e.start = rfc3339(tz, e.start_ms);
                        e.end = rfc3339(tz, e.start_ms + e.duration_s * 1000);
                        e
                    })
                    .collect();
                out.push(LimitReport {
                    window: l.entry.window.as_str(),
                    name_zh: l.entry.name_zh,
                    name_en: l.entry.name_en,
                    standard: l.entry.standard,
                    clause: l.entry.clause,
                    class: l.class.clone(),
                    limit: l.high,
                    low: l.low,
                    unit: l.entry.unit,
                    site_override: l.overridden,
                    judged: windows.iter().filter(|w| w.valid).count(),
                    exceeded: windows.iter().filter(|w| w.exceeded).count(),
                    not_judgeable: windows.iter().filter(|w| !w.valid).count(),
                    windows,
                    exceedances,
                });
            }
            points.push(PointReport {
                device: d.id.clone(),
                device_name: d.name.clone(),
                grid: reg.grid(d.grid).id.clone(),
                point: name.clone(),
                unit: unit.unwrap_or_else(|| limits[0].entry.unit.to_owned()),
                medium: limits[0].entry.medium,
                hourly_only: coarse.is_some(),
                availability,
                limits: out,
            });
        }
        let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        Ok(EmissionReport {
            head: self.head(period),
            validity: Validity {
                hour_min_minutes: s.hour_min_minutes,
                day_min_hours: s.day_min_hours,
                water_day_min_hours: s.water_day_min_hours,
                o3_8h_min_hours: s.o3_8h_min_hours,
                o3_day_min_8h: s.o3_day_min_8h,
                noise_min_coverage: s.noise_min_coverage,
                night: format!("{}-{}", hhmm(self.night.0), hhmm(self.night.1)),
            },
            points,
            problems: self.problems.clone(),
        })
    }

    fn hour_valid(&self, h: &Hour) -> bool {
        // Seconds are floats summed over minutes: a whole 45 minutes may come out a hair short.
        h.held + 1e-6 >= f64::from(self.settings.hour_min_minutes) * 60.0
    }

    fn hourly(&self, hours: &[Hour], l: &Resolved) -> Vec<WindowValue> {
        hours
            .iter()
            .map(|h| {
                let valid = self.hour_valid(h);
                let (lo, hi) = (finite(h.min), finite(h.max));
                let (value, exceeded) = match (valid, l.entry.window) {
                    (false, _) => (None, false),
                    (true, Window::HourRange) => {
                        let low = l.low.unwrap_or(f64::NEG_INFINITY);
                        match (lo, hi) {
                            (Some(a), _) if below(a, low) => (Some(a), true),
                            (_, Some(b)) if above(b, l.high) => (Some(b), true),
                            _ => (h.mean(), false),
                        }
                    }
                    (true, _) => {
                        let m = h.mean();
                        (m, m.is_some_and(|m| above(m, l.high)))
                    }
                };
                WindowValue {
                    value,
                    lo,
                    hi,
                    valid,
                    exceeded,
                    ..WindowValue::new(
                        h.start,
                        h.end,
                        (h.held / 60.0 * 1e6).round() / 1e6,
                        f64::from(self.settings.hour_min_minutes),
                    )
                }
            })
            .collect()
    }

    fn daily(&self, days: &[Day], hours: &[Hour], l: &Resolved, need: u32) -> Vec<WindowValue> {
        days.iter()
            .map(|d| {
                let of_day: Vec<&Hour> = hours.iter().filter(|h| h.start >= d.start && h.start < d.end).collect();
                let means: Vec<f64> = of_day.iter().filter(|h| self.hour_valid(h)).filter_map(|h| h.mean()).collect();
                let valid = means.len() >= need as usize;
                let value = valid.then(|| means.iter().sum::<f64>() / means.len() as f64);
                WindowValue {
                    value,
                    lo: of_day.iter().filter_map(|h| finite(h.min)).reduce(f64::min),
                    hi: of_day.iter().filter_map(|h| finite(h.max)).reduce(f64::max),
                    valid,
                    exceeded: value.is_some_and(|v| above(v, l.high)),
                    ..WindowValue::new(d.start, d.end, means.len() as f64, f64::from(need))
                }
            })
            .collect()
    }

    fn max8h(&self, days: &[Day], hours: &[Hour], l: &Resolved) -> Vec<WindowValue> {
        let s = &self.settings;
        days.iter()
            .map(|d| {
                let of_day: Vec<&Hour> = hours.iter().filter(|h| h.start >= d.start && h.start < d.end).collect();
                let means: Vec<f64> = (0..=16usize)
                    .filter(|k| k + 8 <= of_day.len())
                    .filter_map(|k| {
                        let v: Vec<f64> =
                            of_day[k..k + 8].iter().filter(|h| self.hour_valid(h)).filter_map(|h| h.mean()).collect();
                        (v.len() >= s.o3_8h_min_hours as usize).then(|| v.iter().sum::<f64>() / v.len() as f64)
                    })
                    .collect();
                let valid = means.len() >= s.o3_day_min_8h as usize;
                let value = if valid { means.iter().copied().reduce(f64::max) } else { None };
                WindowValue {
                    value,
                    lo: of_day.iter().filter_map(|h| finite(h.min)).reduce(f64::min),
                    hi: of_day.iter().filter_map(|h| finite(h.max)).reduce(f64::max),
                    valid,
                    exceeded: value.is_some_and(|v| above(v, l.high)),
                    ..WindowValue::new(d.start, d.end, means.len() as f64, f64::from(s.o3_day_min_8h))
                }
            })
            .collect()
    }

    fn noise(&self, days: &[Day], rows: &[Agg], l: &Resolved) -> Vec<WindowValue> {
        let tz = self.tz();
        let (ns, ne) = self.night;
        days.iter()
            .map(|d| {
                let next = d.date.succ_opt().unwrap_or(d.date);
                let (from, to) = if l.entry.window == Window::NoiseNight {
                    (local_ms(tz, d.date, ns), local_ms(tz, if ne <= ns { next } else { d.date }, ne))
                } else {
                    (local_ms(tz, d.date, ne), local_ms(tz, if ns <= ne { next } else { d.date }, ns))
                };
                let part = slice(rows, from, to);
                let (energy, held) = part.iter().fold((0.0, 0.0), |(e, h), r| (e + r.energy, h + r.held));
                let share = held / ((to - from) as f64 / 1000.0);
                let valid = share + 1e-9 >= self.settings.noise_min_coverage;
                // Leq to 0.01 dB: sums of floats in another order must not change the report's bytes.
                let value = (valid && held > 0.0).then(|| (sound::level(energy / held) * 100.0).round() / 100.0);
                WindowValue {
                    value,
                    lo: part.iter().filter_map(|r| finite(r.min)).reduce(f64::min),
                    hi: part.iter().filter_map(|r| finite(r.max)).reduce(f64::max),
                    valid,
                    exceeded: value.is_some_and(|v| above(v, l.high)),
                    ..WindowValue::new(from, to, (share * 1e4).round() / 1e4, self.settings.noise_min_coverage)
                }
            })
            .collect()
    }
}

/// Runs of consecutive exceeding windows; `linked(from, to)` (UTC ms) gives the incident ids.
fn exceedances(windows: &[WindowValue], l: &Resolved, linked: impl Fn(i64, i64) -> Vec<i64>) -> Vec<Exceedance> {
    let worse = |a: f64, b: f64| {
        // For a range the worst is the farthest outside it.
        let dist = |v: f64| if l.low.is_some_and(|lo| v < lo) { l.low.unwrap_or(v) - v } else { v - l.high };
        if dist(b) > dist(a) {
            b
        } else {
            a
        }
    };
    let mut out: Vec<(i64, i64, f64, usize)> = Vec::new();
    for w in windows.iter().filter(|w| w.exceeded) {
        let v = w.value.unwrap_or(f64::NAN);
        match out.last_mut() {
            Some(last) if last.1 == w.start_ms => {
                last.1 = w.end_ms;
                last.2 = worse(last.2, v);
                last.3 += 1;
            }
            _ => out.push((w.start_ms, w.end_ms, v, 1)),
        }
    }
    out.into_iter()
        .map(|(start, end, worst, n)| {
            // The live rule may raise when a window closes: look one window (at least an hour) on.
            let span =
                windows.iter().find(|w| w.end_ms == end).map_or(HOUR_MS, |w| (w.end_ms - w.start_ms).max(HOUR_MS));
            Exceedance {
                start: String::new(),
                end: String::new(),
                start_ms: start,
                duration_s: (end - start) / 1000,
                worst,
                windows: n,
                incidents: linked(start, end + span),
            }
        })
        .collect()
}
