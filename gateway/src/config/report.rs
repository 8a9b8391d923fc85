//! `[reports]`: how emission results are judged for disclosure and how energy is accounted.
//!
//! The validity rules of GB 3095-2012 §8 (Table 4) are the defaults where the standard gives them;
//! the others are site parameters with a stated default (see each field).

use serde::Deserialize;

use super::validate::{parse_hhmm, Problem};

/// Emission compliance and energy reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reports {
    /// Minutes of valid readings a clock hour needs for its mean to count (GB 3095-2012 Table 4:
    /// at least 45 minutes of sampling per hour). Default 45.
    #[serde(default = "default_hour_min_minutes")]
    pub hour_min_minutes: u32,
    /// Valid hourly means a local day needs for a 24-hour mean of air pollutants (GB 3095-2012
    /// Table 4: at least 20 per day). Default 20.
    #[serde(default = "default_day_min_hours")]
    pub day_min_hours: u32,
    /// Valid hourly means an 8-hour O3 mean needs (GB 3095-2012 Table 4: at least 6 of 8). Default 6.
    #[serde(default = "default_o3_8h_min_hours")]
    pub o3_8h_min_hours: u32,
    /// Valid 8-hour means a day needs for its daily maximum 8-hour O3 mean (HJ 663-2013: 14 of the
    /// day's 17 windows; not checked against the text here, so a site parameter). Default 14.
    #[serde(default = "default_o3_day_min_8h")]
    pub o3_day_min_8h: u32,
    /// Valid hourly means a local day needs for a daily wastewater mean. HJ 356-2019 is not quoted
    /// here; the default follows GB 3095's 20 hours and is a site parameter. Default 20.
    #[serde(default = "default_day_min_hours")]
    pub water_day_min_hours: u32,
    /// Share of a day or night period that valid noise readings must cover for its Leq to be judged.
    /// GB 12348-2008 sets none for continuous monitoring; a site parameter. Default 0.75.
    #[serde(default = "default_noise_min_coverage")]
    pub noise_min_coverage: f64,
    /// Minutes without a reading after which an energy counter's next increment is a gap's, not
    /// that minute's: reported as energy across the gap, never spread or used for peak demand.
    /// Default 15.
    #[serde(default = "default_gap_minutes")]
    pub energy_gap_minutes: u32,
    /// Time-of-use periods (local time); minutes outside every period are `flat`.
    #[serde(default)]
    pub tou: Vec<TouPeriod>,
    /// Meter replacements: the old meter's last and the new meter's first counter reading.
    #[serde(default)]
    pub replacements: Vec<Replacement>,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            hour_min_minutes: default_hour_min_minutes(),
            day_min_hours: default_day_min_hours(),
            o3_8h_min_hours: default_o3_8h_min_hours(),
            o3_day_min_8h: default_o3_day_min_8h(),
            water_day_min_hours: default_day_min_hours(),
            noise_min_coverage: default_noise_min_coverage(),
            energy_gap_minutes: default_gap_minutes(),
            tou: Vec::new(),
            replacements: Vec::new(),
        }
    }
}

/// One time-of-use period of the site's tariff, `from` to `to` local time (across midnight when
/// `to` is not after `from`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouPeriod {
    /// `sharp` (尖峰), `peak` (峰), `flat` (平) or `valley` (谷).
    pub bucket: String,
    /// `HH:MM`.
    pub from: String,
    /// `HH:MM`.
    pub to: String,
}

/// A meter replaced at `at`: without it the new meter's first reading would count as consumption.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    pub device: String,
    /// The energy counter point. Default `energy`.
    #[serde(default = "default_energy_point")]
    pub point: String,
    /// When the new meter was connected (RFC 3339): its first reading is the first in a minute
    /// starting at or after this time.
    pub at: String,
    /// The old meter's reading when it was removed; without it the last reading stored is taken
    /// (consumption between that reading and the removal is then not counted).
    pub old_final: Option<f64>,
    /// The new meter's reading when it was connected.
    pub new_initial: f64,
}

/// The time-of-use buckets, in the order reports show them.
pub const TOU_BUCKETS: [&str; 4] = ["sharp", "peak", "flat", "valley"];

fn default_hour_min_minutes() -> u32 {
    45
}
fn default_day_min_hours() -> u32 {
    20
}
fn default_o3_8h_min_hours() -> u32 {
    6
}
fn default_o3_day_min_8h() -> u32 {
    14
}
fn default_noise_min_coverage() -> f64 {
    0.75
}
fn default_gap_minutes() -> u32 {
    15
}
fn default_energy_point() -> String {
    "energy".into()
}

/// Checks `[reports]`; `devices` are the configured devices with their points.
pub(super) fn validate(r: &Reports, devices: &[super::Device]) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut push = |path: String, message: String| p.push(Problem { path, message });
    for (key, v, max) in [
        ("hour_min_minutes", r.hour_min_minutes, 60),
        ("day_min_hours", r.day_min_hours, 24),
        ("o3_8h_min_hours", r.o3_8h_min_hours, 8),
        ("o3_day_min_8h", r.o3_day_min_8h, 17),
        ("water_day_min_hours", r.water_day_min_hours, 24),
    ] {
        if !(1..=max).contains(&v) {
            push(format!("reports.{key}"), format!("{v}; expected 1 to {max}"));
        }
    }
    if !(r.noise_min_coverage > 0.0 && r.noise_min_coverage <= 1.0) {
        push(
            "reports.noise_min_coverage".into(),
            format!("{}; expected a share above 0 and at most 1", r.noise_min_coverage),
        );
    }
    if !(1..=1_440).contains(&r.energy_gap_minutes) {
        push("reports.energy_gap_minutes".into(), format!("{}; expected 1 to 1440 minutes", r.energy_gap_minutes));
    }
    for (i, t) in r.tou.iter().enumerate() {
        if !TOU_BUCKETS.contains(&t.bucket.as_str()) {
            push(
                format!("reports.tou[{i}].bucket"),
                format!("{:?}; expected one of {}", t.bucket, TOU_BUCKETS.join(", ")),
            );
        }
        for (key, v) in [("from", &t.from), ("to", &t.to)] {
            if parse_hhmm(v).is_none() {
                push(format!("reports.tou[{i}].{key}"), format!("{v:?}; expected local time HH:MM"));
            }
        }
        if t.from == t.to {
            push(format!("reports.tou[{i}].to"), format!("{:?} equals from; expected a period of some length", t.to));
        }
    }
    // Overlapping periods would count a minute twice.
    let minutes: Vec<Option<(u32, u32)>> =
        r.tou.iter().map(|t| Some((parse_hhmm(&t.from)?, parse_hhmm(&t.to)?))).collect();
    for m in 0..1_440u32 {
        let hits: Vec<usize> = minutes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some_and(|(f, t)| in_period(m, f, t)))
            .map(|(i, _)| i)
            .collect();
        if hits.len() > 1 {
            push(
                format!("reports.tou[{}]", hits[1]),
                format!(
                    "overlaps reports.tou[{}] at {:02}:{:02}; expected periods that do not overlap",
                    hits[0],
                    m / 60,
                    m % 60
                ),
            );
            break;
        }
    }
    for (i, rep) in r.replacements.iter().enumerate() {
        match devices.iter().find(|d| d.id == rep.device) {
            None => push(
                format!("reports.replacements[{i}].device"),
                format!("{:?} is not a configured device", rep.device),
            ),
            Some(d) if !d.points.iter().any(|pt| pt.name == rep.point) => push(
                format!("reports.replacements[{i}].point"),
                format!("{:?} is not a point of device {:?}", rep.point, rep.device),
            ),
            Some(_) => {}
        }
        if chrono::DateTime::parse_from_rfc3339(&rep.at).is_err() {
            push(
                format!("reports.replacements[{i}].at"),
                format!("{:?}; expected RFC 3339 (2026-11-15T10:00:00+08:00)", rep.at),
            );
        }
        for (key, v) in [("old_final", rep.old_final.unwrap_or(0.0)), ("new_initial", rep.new_initial)] {
            if !(v.is_finite() && v >= 0.0) {
                push(
                    format!("reports.replacements[{i}].{key}"),
                    format!("{v}; expected a counter reading of at least 0"),
                );
            }
        }
    }
    p
}

/// Whether minute-of-day `m` lies in `[from, to)`, across midnight when `to <= from`.
pub fn in_period(m: u32, from: u32, to: u32) -> bool {
    if from < to {
        (from..to).contains(&m)
    } else {
        m >= from || m < to
    }
}

#[cfg(test)]
mod tests {
    fn problems(reports: &str) -> Vec<(String, String)> {
        let text = format!(
            "[site]\nid = \"p\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"m1\"\ngrid = \"g1\"\ncategory = \"energy\"\npoints = [{{ name = \"energy\", unit = \"kWh\" }}]\n[reports]\n{reports}"
        );
        match crate::config::from_str(&text, "t.toml".as_ref(), ".".as_ref()) {
            Ok(_) => Vec::new(),
            Err(crate::config::ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.path, p.message)).collect()
            }
            Err(e) => vec![("?".into(), e.to_string())],
        }
    }

    #[test]
    fn reports_settings_are_checked_with_their_key_paths() {
        assert!(problems("tou = [{ bucket = \"valley\", from = \"23:00\", to = \"07:00\" }]").is_empty());
        let p = problems(
            r#"hour_min_minutes = 61
noise_min_coverage = 0.0
tou = [
  { bucket = "valley", from = "23:00", to = "07:00" },
  { bucket = "offpeak", from = "25:00", to = "08:00" },
  { bucket = "peak", from = "06:00", to = "09:00" },
]
[[reports.replacements]]
device = "m2"
at = "yesterday"
new_initial = -1.0
"#,
        );
        let paths: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            paths,
            [
                "reports.hour_min_minutes",
                "reports.noise_min_coverage",
                "reports.tou[1].bucket",
                "reports.tou[1].from",
                "reports.tou[2]",
                "reports.replacements[0].device",
                "reports.replacements[0].at",
                "reports.replacements[0].new_initial",
            ],
            "{p:?}"
        );
        assert!(p[4].1.contains("overlaps reports.tou[0] at 06:00"), "{p:?}");
    }

    #[test]
    fn periods_across_midnight() {
        use super::in_period;
        assert!(
            in_period(23 * 60, 23 * 60, 7 * 60) && in_period(0, 23 * 60, 7 * 60) && in_period(419, 23 * 60, 7 * 60)
        );
        assert!(!in_period(420, 23 * 60, 7 * 60) && !in_period(22 * 60 + 59, 23 * 60, 7 * 60));
        assert!(in_period(8 * 60, 8 * 60, 12 * 60) && !in_period(12 * 60, 8 * 60, 12 * 60));
    }
}
