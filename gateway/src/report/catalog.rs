//! The emission limits a monitoring point is judged against, from `../shared/domain/limits.md`,
//! with the standard and clause each comes from and the rule whose parameters a site overrides.
//!
//! A point is a monitoring point by its name, as the emission rules watch it (`noise`, `pm25`, `cod`…).
//! Its class comes from the device tag (`zone_class`, `air_class`, `water_class`), else from a
//! `[[rules.overrides]]` of the rule's class parameter, else the rule's default; a limit overridden for
//! the rule (an industry standard for one outfall) is used and marked as the site's.

use std::collections::BTreeMap;

use crate::config::{Config, ParamOverride};
use crate::model::{DeviceInfo, Registry};

/// What a point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Medium {
    Air,
    Noise,
    Wastewater,
}

/// The averaging window a limit is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Clock-hour mean (valid with `hour_min_minutes`).
    Hour,
    /// Local-day mean of valid hourly means.
    Day,
    /// Daily maximum of the running 8-hour means that start in the day (O3).
    Max8h,
    /// Leq over the day period (GB 12348: 06:00–22:00).
    NoiseDay,
    /// Leq over the night period, which belongs to the date it starts on.
    NoiseNight,
    /// Every clock hour's readings within a range (pH).
    HourRange,
}

impl Window {
    /// Short name used in CSV and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Max8h => "8h_max",
            Self::NoiseDay => "day",
            Self::NoiseNight => "night",
            Self::HourRange => "1h_range",
        }
    }
}

/// One limit of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub point: &'static str,
    pub medium: Medium,
    pub window: Window,
    pub unit: &'static str,
    /// Standard and clause, as cited in the report.
    pub standard: &'static str,
    pub clause: &'static str,
    /// The rule judging the same limit live; its parameters are the site's overrides.
    pub rule: &'static str,
    /// The rule's parameter holding the limit per class, or (`class1`, `class2`) parameters.
    pub param: Param,
    /// Limits per class: index 0 is the lowest class of the standard (noise class 0, air and water
    /// class 1). `NaN`: the standard sets none for that class.
    pub limits: &'static [f64],
    /// Lower bound (pH), when the limit is a range.
    pub low: Option<f64>,
    pub name_zh: &'static str,
    pub name_en: &'static str,
}

/// How a rule names a limit's parameters.
#[derive(Debug, Clone, Copy)]
pub enum Param {
    /// An array indexed by class (`day_db`, `limits_mgl`), water classes starting at 1; only the
    /// class is overridden.
    Array(&'static str),
    /// `class1_ugm3` and `class2_ugm3`.
    TwoClasses(&'static str, &'static str),
    /// `low` and `high` (pH).
    Range,
    /// One value for every class (CO: `limit_mgm3`).
    Single(&'static str),
}

const GB3095: &str = "GB 3095-2012";
const T1: &str = "表1 / Table 1";
const GB12348: &str = "GB 12348-2008";
const GB8978: &str = "GB 8978-1996";
const T4: &str = "表4 / Table 4";

macro_rules! air {
    ($point:literal, $window:expr, $unit:literal, $rule:literal, $c1:expr, $c2:expr, $zh:literal, $en:literal) => {
        Entry {
            point: $point,
            medium: Medium::Air,
            window: $window,
            unit: $unit,
            standard: GB3095,
            clause: T1,
            rule: $rule,
            param: Param::TwoClasses("class1_ugm3", "class2_ugm3"),
            limits: &[$c1, $c2],
            low: None,
            name_zh: $zh,
            name_en: $en,
        }
    };
}

macro_rules! water {
    ($point:literal, $rule:literal, $limits:expr, $zh:literal, $en:literal) => {
        Entry {
            point: $point,
            medium: Medium::Wastewater,
            window: Window::Day,
            unit: "mg/L",
            standard: GB8978,
            clause: T4,
            rule: $rule,
            param: Param::Array("limits_mgl"),
            limits: $limits,
            low: None,
            name_zh: $zh,
            name_en: $en,
        }
    };
}

/// Every limit of limits.md the report judges.
pub const CATALOG: &[Entry] = &[
    Entry {
        point: "noise",
        medium: Medium::Noise,
        window: Window::NoiseDay,
        unit: "dB(A)",
        standard: GB12348,
        clause: "表1 昼间 / Table 1, day",
        rule: "emission.noise_leq",
        param: Param::Array("day_db"),
        limits: &[50.0, 55.0, 60.0, 65.0, 70.0],
        low: None,
        name_zh: "厂界噪声 昼间 Leq",
        name_en: "Boundary noise, day Leq",
    },
    Entry {
        point: "noise",
        medium: Medium::Noise,
        window: Window::NoiseNight,
        unit: "dB(A)",
        standard: GB12348,
        clause: "表1 夜间 / Table 1, night",
        rule: "emission.noise_leq",
        param: Param::Array("night_db"),
        limits: &[40.0, 45.0, 50.0, 55.0, 55.0],
        low: None,
        name_zh: "厂界噪声 夜间 Leq",
        name_en: "Boundary noise, night Leq",
    },
    air!("pm25", Window::Day, "µg/m³", "emission.pm25_24h", 35.0, 75.0, "PM2.5 24小时平均", "PM2.5 24-hour mean"),
    air!("pm10", Window::Day, "µg/m³", "emission.pm10_24h", 50.0, 150.0, "PM10 24小时平均", "PM10 24-hour mean"),
    air!("so2", Window::Hour, "µg/m³", "emission.so2_1h", 150.0, 500.0, "SO2 1小时平均", "SO2 1-hour mean"),
    air!("so2", Window::Day, "µg/m³", "emission.so2_24h", 50.0, 150.0, "SO2 24小时平均", "SO2 24-hour mean"),
    air!("no2", Window::Hour, "µg/m³", "emission.no2_1h", 200.0, 200.0, "NO2 1小时平均", "NO2 1-hour mean"),
    air!("no2", Window::Day, "µg/m³", "emission.no2_24h", 80.0, 80.0, "NO2 24小时平均", "NO2 24-hour mean"),
    Entry {
        param: Param::Single("limit_mgm3"),
        ..air!("co", Window::Hour, "mg/m³", "emission.co_1h", 10.0, 10.0, "CO 1小时平均", "CO 1-hour mean")
    },
    Entry {
        param: Param::Single("limit_mgm3"),
        ..air!("co", Window::Day, "mg/m³", "emission.co_24h", 4.0, 4.0, "CO 24小时平均", "CO 24-hour mean")
    },
    air!("o3", Window::Hour, "µg/m³", "emission.o3_1h", 160.0, 200.0, "O3 1小时平均", "O3 1-hour mean"),
    air!(
        "o3",
        Window::Max8h,
        "µg/m³",
        "emission.o3_8h",
        100.0,
        160.0,
        "O3 日最大8小时平均",
        "O3 daily maximum 8-hour mean"
    ),
    Entry {
        point: "ph",
        medium: Medium::Wastewater,
        window: Window::HourRange,
        unit: "",
        standard: GB8978,
        clause: T4,
        rule: "emission.wastewater_ph",
        param: Param::Range,
        limits: &[9.0, 9.0, 9.0],
        low: Some(6.0),
        name_zh: "pH 值 6–9",
        name_en: "pH 6–9",
    },
    water!("cod", "emission.wastewater_cod", &[100.0, 150.0, 500.0], "化学需氧量 COD 日均值", "COD daily mean"),
    water!("bod5", "emission.wastewater_bod5", &[20.0, 30.0, 300.0], "五日生化需氧量 BOD5 日均值", "BOD5 daily mean"),
    water!("ss", "emission.wastewater_ss", &[70.0, 150.0, 400.0], "悬浮物 SS 日均值", "SS daily mean"),
    water!("nh3n", "emission.wastewater_nh3n", &[15.0, 25.0, f64::NAN], "氨氮 NH3-N 日均值", "NH3-N daily mean"),
];

/// A limit resolved for one device: its class and values.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub entry: &'static Entry,
    /// The class as the standard names it (`"2"`, `"3"`).
    pub class: String,
    pub high: f64,
    pub low: Option<f64>,
    /// The site overrode the limit (not only the class).
    pub overridden: bool,
}

fn class_key(m: Medium) -> (&'static str, &'static str) {
    match m {
        Medium::Air => ("air_class", "2"),
        Medium::Noise => ("zone_class", "3"),
        Medium::Wastewater => ("water_class", "1"),
    }
}

/// The most specific override of `name` for `rule` on `device`: device, grid, type, category, site.
fn param<'a>(
    overrides: &'a [ParamOverride],
    reg: &Registry,
    d: &DeviceInfo,
    rule: &str,
    name: &str,
) -> Option<&'a toml::Value> {
    let grid = &reg.grid(d.grid).id;
    let rank = |o: &ParamOverride| -> Option<u8> {
        if o.rule != rule && o.rule != "*" {
            return None;
        }
        match (&o.device, &o.grid, &o.device_type, &o.category) {
            (Some(x), ..) => (x == &d.id).then_some(5),
            (_, Some(x), ..) => (x == grid).then_some(4),
            (_, _, Some(x), _) => (x == &d.device_type).then_some(3),
            (_, _, _, Some(x)) => (x == &d.category).then_some(2),
            _ => Some(1),
        }
    };
    overrides
        .iter()
        .filter(|o| o.params.contains_key(name))
        .filter_map(|o| Some((rank(o)?, o)))
        // The later of two equally specific overrides wins, as in the rules.
        .max_by_key(|(r, _)| *r)
        .and_then(|(_, o)| o.params.get(name))
}

fn number(v: &toml::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// The limits that apply to the point `point` of device `d`, with problems (an unknown class) as
/// text: the report names them rather than judging against a guess.
pub fn resolve(config: &Config, reg: &Registry, d: &DeviceInfo, point: &str) -> (Vec<Resolved>, Vec<String>) {
    let ov = &config.rules.overrides;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for e in CATALOG.iter().filter(|e| e.point == point) {
        let (tag, default) = class_key(e.medium);
        let class = d
            .tags
            .get(tag)
            .cloned()
            .or_else(|| {
                param(ov, reg, d, e.rule, tag)
                    .map(|v| number(v).map_or_else(|| v.as_str().unwrap_or("").to_owned(), |n| format!("{n}")))
            })
            .unwrap_or_else(|| default.to_owned());
        let n: Option<usize> =
            class.trim().parse::<f64>().ok().filter(|n| n.fract() == 0.0 && *n >= 0.0).map(|n| n as usize);
        // Noise classes start at 0, air and water classes at 1.
        let index = match (e.medium, n) {
            (Medium::Noise, Some(n)) => Some(n),
            (_, Some(n)) if n >= 1 => Some(n - 1),
            _ => None,
        };
        let Some(index) = index.filter(|i| *i < e.limits.len()) else {
            problems.push(format!("{}/{}: class {class:?} (tag {tag}) has no {} limit", d.id, point, e.standard));
            continue;
        };
        let mut high = e.limits[index];
        let mut low = e.low;
        let mut overridden = false;
        match e.param {
            // Overrides are scalars: an array is indexed by the class, which is overridable.
            Param::Array(_) => {}
            Param::TwoClasses(c1, c2) => {
                let name = if index == 0 { c1 } else { c2 };
                if let Some(v) = param(ov, reg, d, e.rule, name).and_then(number) {
                    overridden = v != high;
                    high = v;
                }
            }
            Param::Single(name) => {
                if let Some(v) = param(ov, reg, d, e.rule, name).and_then(number) {
                    overridden = v != high;
                    high = v;
                }
            }
            Param::Range => {
                if let Some(v) = param(ov, reg, d, e.rule, "high").and_then(number) {
                    overridden |= v != high;
                    high = v;
                }
                if let Some(v) = param(ov, reg, d, e.rule, "low").and_then(number) {
                    overridden |= Some(v) != low;
                    low = Some(v);
                }
            }
        }
        if high.is_nan() {
            // The standard sets no limit for this class (NH3-N class 3): nothing to judge.
            continue;
        }
        out.push(Resolved { entry: e, class, high, low, overridden });
    }
    (out, problems)
}

/// Monitoring points by (device index, point name), with their limits.
pub type Points = BTreeMap<(usize, String), Vec<Resolved>>;

/// The monitoring points of the configuration, and why any of them has no limit.
pub fn monitoring_points(config: &Config, reg: &Registry) -> (Points, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, d) in reg.live_devices() {
        let di = id.0 as usize;
        for p in d.points.clone() {
            let name = &reg.points[p as usize].name;
            if !CATALOG.iter().any(|e| e.point == name) {
                continue;
            }
            let (limits, mut pr) = resolve(config, reg, d, name);
            problems.append(&mut pr);
            if !limits.is_empty() {
                out.insert((di, name.clone()), limits);
            }
        }
    }
    (out, problems)
}
