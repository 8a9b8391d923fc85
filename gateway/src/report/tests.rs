//! A month of synthetic data, rolled up by the history's own code into a real `history.db`, with
//! planted exceedances, gaps and flagged data; the reports must equal the tables worked by hand in
//! `fixtures/emissions-2026-11.txt` and `fixtures/energy-2026-11.txt` (each number's computation is
//! written next to it there).

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone};

use super::*;
use crate::history::rollup::{Kind, Roller, Skipped};
use crate::model::Registry;

const MIN: i64 = 60_000;

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
[site]
id = "park"
name = "Test park"
timezone = "Asia/Shanghai"
[incidents]
path = "{}/incidents.db"
[[grids]]
id = "g1"
[[devices]]
id = "aq1"
grid = "g1"
category = "environment"
tags = {{ air_class = "2" }}
points = [{{ name = "so2", unit = "µg/m³" }}]
[[devices]]
id = "nz1"
grid = "g1"
category = "environment"
points = [{{ name = "noise", unit = "dB(A)" }}]
[[devices]]
id = "ww1"
grid = "g1"
category = "environment"
points = [{{ name = "cod", unit = "mg/L" }}, {{ name = "ph" }}]
[[devices]]
id = "em1"
grid = "g1"
category = "energy"
tags = {{ building = "B1", tenant = "T1" }}
points = [{{ name = "energy", unit = "kWh" }}]
[[devices]]
id = "em2"
grid = "g1"
category = "energy"
tags = {{ building = "B1", tenant = "T2" }}
points = [{{ name = "energy", unit = "kWh" }}]
[reports]
tou = [
  {{ bucket = "valley", from = "23:00", to = "07:00" }},
  {{ bucket = "peak", from = "08:00", to = "12:00" }},
  {{ bucket = "sharp", from = "19:00", to = "21:00" }},
]
[[reports.replacements]]
device = "em2"
at = "2026-11-20T11:59:30+08:00"
old_final = {old_final}
new_initial = 1000.0
"#,
        dir.display(),
        old_final = em2_counter(minute_index(local(2026, 11, 20, 11, 59))) + 0.5,
    );
    crate::config::from_str(&text, "t.toml".as_ref(), dir).unwrap()
}

fn tz() -> chrono_tz::Tz {
    chrono_tz::Asia::Shanghai
}

/// UTC ms of a local time.
fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    tz().with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_millis()
}

/// Data runs from 2026-10-31 23:00 to 2026-12-01 06:00 local, one reading a minute.
fn start() -> i64 {
    local(2026, 10, 31, 23, 0)
}
fn end() -> i64 {
    local(2026, 12, 1, 6, 0)
}
fn minute_index(t: i64) -> i64 {
    (t - start()) / MIN
}

/// em2's old meter: 5000 kWh at the start, 0.5 kWh a minute.
fn em2_counter(i: i64) -> f64 {
    5000.0 + 0.5 * i as f64
}

/// (day of November, hour, minute) of a local time.
fn dhm(t: i64) -> (u32, u32, u32, u32) {
    use chrono::{Datelike, Timelike};
    let l = tz().timestamp_millis_opt(t).unwrap();
    (l.month(), l.day(), l.hour(), l.minute())
}

/// The reading of `point` at minute `t` (UTC ms): value and whether it is of good quality; none when
/// the instrument sent nothing.
fn reading(point: &str, t: i64, em1: &mut f64) -> Option<(f64, bool)> {
    let (mo, d, h, mi) = dhm(t);
    let nov = mo == 11;
    match point {
        "so2" => {
            if nov && d == 20 && h < 6 {
                return None;
            }
            if nov && d == 25 && h == 8 && mi < 30 {
                // Maintenance (HJ 212 flag M): a high value that must not count.
                return Some((900.0, false));
            }
            let v = match (nov, d, h) {
                (true, 5, 10 | 11) => 600.0,
                (true, 10, _) => 200.0,
                (true, 11, _) => 160.0,
                _ => 100.0,
            };
            Some((v, true))
        }
        "noise" => {
            if nov && d == 28 && (10..16).contains(&h) {
                return None;
            }
            let night = !(6..22).contains(&h);
            let v = match (nov, d, h) {
                (true, 3, 22 | 23) => 60.0,
                (true, 15, 6..=21) => 66.0,
                (true, 16, 6..=13) => 70.0,
                _ if night => 50.0,
                _ => 60.0,
            };
            Some((v, true))
        }
        "cod" => {
            if nov && d == 22 && (10..16).contains(&h) {
                return None;
            }
            let v = match (nov, d, h) {
                (true, 8, _) => 120.0,
                (true, 9, _) => 50.0,
                (true, 12, 0..=11) => 150.0,
                (true, 12, _) => 60.0,
                _ => 80.0,
            };
            Some((v, true))
        }
        "ph" => {
            let v = match (nov, d, h, mi) {
                (true, 18, 14, 0..=20) => 5.5,
                (true, 19, 3 | 4, _) => 9.5,
                _ => 7.5,
            };
            Some((v, true))
        }
        "em1" => {
            if nov && d == 25 && (10..12).contains(&h) {
                // The meter still counts; the readings do not arrive.
                *em1 += 0.25;
                return None;
            }
            if nov && d == 10 && h == 12 && mi == 0 {
                // Reset to zero, then a quarter kWh in the minute.
                *em1 = 0.25;
                return Some((*em1, true));
            }
            *em1 += if nov && d == 7 && h == 14 && mi < 15 { 0.5 } else { 0.25 };
            Some((*em1, true))
        }
        _ => {
            let i = minute_index(t);
            let at = local(2026, 11, 20, 12, 0);
            if t < at {
                Some((em2_counter(i), true))
            } else {
                // The new meter: 1000 when connected, 0.5 kWh a minute.
                Some((1000.0 + 0.5 * ((t - at) / MIN + 1) as f64, true))
            }
        }
    }
}

/// Rolls the month up into `history.db` with the history's own code and writes the incidents the
/// report must link (and some it must not).
fn build(dir: &std::path::Path, config: &Config) -> Reporter {
    let reg = Arc::new(Registry::from_config(config));
    let names: Vec<(&str, &str)> =
        reg.points.iter().map(|p| (reg.device(p.device).id.as_str(), p.name.as_str())).collect();
    let mut conn = crate::history::store::open(&dir.join("history.db"), 1 << 30).unwrap();
    let series = crate::history::store::series(&mut conn, &names).unwrap();
    let mut roller = Roller::new(reg.points.iter().map(|p| Kind::of_unit(&p.unit)));
    let mut skipped = Skipped::default();
    let mut em1 = 100.0;
    let mut t = start();
    while t < end() {
        for (i, (dev, point)) in names.iter().enumerate() {
            let key = if *dev == "em1" || *dev == "em2" { dev } else { point };
            if let Some((v, good)) = reading(key, t, &mut em1) {
                roller.push(i as u32, t * 1_000_000, v, good, &mut skipped);
            }
        }
        t += MIN;
        if t % (60 * MIN) == 0 {
            roller.sweep(t * 1_000_000, 0);
            crate::history::store::write(&mut conn, &series, &roller.rows).unwrap();
            roller.rows.clear();
        }
    }
    roller.sweep(end() * 1_000_000 + 3_600_000_000_000, 0);
    roller.flush_all();
    crate::history::store::write(&mut conn, &series, &roller.rows).unwrap();

    let (inc, _, _) = crate::incident::open(&config.incidents.path).unwrap();
    let ns = |ms: i64| ms * 1_000_000;
    for (id, device, point, category, raised, returned) in [
        // The SO2 rise of Nov 5: linked.
        (7, "aq1", "so2", "emission", local(2026, 11, 5, 10, 20), Some(local(2026, 11, 5, 12, 5))),
        // Same point, a data-availability incident: not an emission result.
        (8, "aq1", "so2", "equipment", local(2026, 11, 20, 1, 0), Some(local(2026, 11, 20, 6, 5))),
        // The daily mean of Nov 10 judged at midnight, returned after Nov 11's: linked.
        (9, "aq1", "so2", "emission", local(2026, 11, 11, 0, 1), Some(local(2026, 11, 12, 0, 1))),
        // COD of Nov 8, still open: linked to Nov 8, and not to Nov 12 (it started before)… it is
        // active during Nov 12 too, so it is linked there as well.
        (10, "ww1", "cod", "emission", local(2026, 11, 8, 1, 0), None),
        // Another device's incident at the same time: not linked.
        (11, "nz1", "noise", "emission", local(2026, 11, 5, 10, 30), Some(local(2026, 11, 5, 11, 0))),
    ] {
        inc.execute(
            "INSERT INTO incidents(id, rule, title, category, severity, state, device, grid, point, message, plan,
                 raised_at, updated_at, returned_at)
             VALUES (?1, 'r', 't', ?2, 'major', 'returned', ?3, 'g1', ?4, '', '', ?5, ?5, ?6)",
            rusqlite::params![id, category, device, point, ns(raised), returned.map(ns)],
        )
        .unwrap();
    }
    Reporter::new(config, reg)
}

/// The report's numbers, one line per limit and per exceedance, in the fixture's format.
fn emission_summary(r: &emissions::EmissionReport) -> String {
    let mut s = String::new();
    for p in &r.points {
        let days: Vec<String> = p
            .availability
            .iter()
            .filter(|a| (a.share - 1.0).abs() > 1e-9)
            .map(|a| format!("{}={:.6}", &a.date[8..], a.share))
            .collect();
        let days = if days.is_empty() { "all-complete".to_owned() } else { days.join(" ") };
        let _ = writeln!(s, "{}/{} availability {days}", p.device, p.point);
        for l in &p.limits {
            let _ = writeln!(
                s,
                "{}/{} {} limit={} judged={} exceeded={} not_judgeable={}",
                p.device, p.point, l.window, l.limit, l.judged, l.exceeded, l.not_judgeable
            );
            for w in l.windows.iter().filter(|w| !w.valid) {
                let _ = writeln!(s, "  not judgeable {} have={}", &w.start[..16], w.have);
            }
            for w in l.windows.iter().filter(|w| w.exceeded) {
                let _ = writeln!(s, "  exceeded {} value={:.2}", &w.start[..16], w.value.unwrap_or(f64::NAN));
            }
            for e in &l.exceedances {
                let _ = writeln!(
                    s,
                    "  exceedance {} {}s worst={:.2} windows={} incidents={:?}",
                    &e.start[..16],
                    e.duration_s,
                    e.worst,
                    e.windows,
                    e.incidents
                );
            }
        }
    }
    s
}

fn energy_summary(r: &energy::EnergyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "buckets {}", r.buckets.join(" "));
    for m in &r.meters {
        let _ = writeln!(
            s,
            "{} kwh={} tou={:?} peak={:?}@{} gaps={} resets={:?} replacements={}",
            m.device,
            m.kwh,
            m.tou,
            m.peak_kw,
            m.peak_at.as_deref().map_or("", |p| &p[..16]),
            m.gaps
                .iter()
                .map(|g| format!("{}..{} {}min {}kWh", &g.from[..16], &g.to[..16], g.minutes, g.kwh))
                .collect::<Vec<_>>()
                .join(";"),
            m.resets,
            m.replacements.len()
        );
        for d in m.days.iter().filter(|d| ["07", "10", "20", "25"].contains(&&d.date[8..])) {
            let _ = writeln!(
                s,
                "  {} kwh={} tou={:?} gap_kwh={} gap_minutes={} peak={:?}@{}",
                d.date,
                d.kwh,
                d.tou,
                d.gap_kwh,
                d.gap_minutes,
                d.peak_kw,
                d.peak_at.as_deref().map_or("", |p| &p[11..16])
            );
        }
    }
    for g in &r.groups {
        let _ = writeln!(
            s,
            "{} {} meters={} kwh={} peak={:?}@{}",
            g.kind,
            g.id,
            g.meters,
            g.kwh,
            g.peak_kw,
            g.peak_at.as_deref().map_or("", |p| &p[..16])
        );
    }
    s
}

/// The fixture without its comment lines.
fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/fixtures").join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_month_of_synthetic_data_gives_the_hand_computed_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let reporter = build(dir.path(), &config);
    let period = Period::parse("2026-11").unwrap();
    let all = |_: &str| true;
    let e = reporter.emissions(&period, &[], &all).unwrap();
    assert_eq!(emission_summary(&e), fixture("emissions-2026-11.txt"));
    let n = reporter.energy(&period, &[], &all).unwrap();
    assert_eq!(energy_summary(&n), fixture("energy-2026-11.txt"));

    // Reproducible: the same period over the same data gives the same bytes.
    let csv = render::emissions(&e, Format::Csv, Lang::Zh);
    let again = render::emissions(&reporter.emissions(&period, &[], &all).unwrap(), Format::Csv, Lang::En);
    assert_eq!(csv, again);
    assert_eq!(csv.lines().filter(|l| l.starts_with("window,aq1,so2,g1,1h,")).count(), 720);
    let ecsv = render::energy(&n, Format::Csv, Lang::Zh);
    assert_eq!(ecsv, render::energy(&reporter.energy(&period, &[], &all).unwrap(), Format::Csv, Lang::Zh));
    assert!(ecsv.contains("\r\nperiod,em1,energy,g1,B1,T1,2026-11-01..2026-11-30,10803.750,"), "{ecsv}");

    // Filters: one point, and a grid the reader may not see.
    let one = reporter.emissions(&period, &["ww1/ph".into()], &all).unwrap();
    assert_eq!(one.points.len(), 1);
    assert_eq!(one.points[0].limits[0].window, "1h_range");
    assert!(reporter.emissions(&period, &[], &|g| g != "g1").unwrap().points.is_empty());
    assert!(matches!(reporter.emissions(&period, &["nope".into()], &all), Err(ReportError::Unknown(_))));

    // HTML in both languages holds the chart and the standard.
    let html = render::emissions(&e, Format::Html, Lang::Zh);
    assert!(html.contains("<svg") && html.contains("GB 3095-2012") && html.contains("排放达标"));
    assert!(
        !html.contains("http://")
            || html.matches("http://").all(|_| html.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    );
    assert!(render::energy(&n, Format::Html, Lang::En).contains("Peak demand"));
}

#[test]
fn periods_parse_months_days_and_ranges() {
    let p = Period::parse("2026-02").unwrap();
    assert_eq!(
        (p.first, p.last),
        (NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(), NaiveDate::from_ymd_opt(2026, 2, 28).unwrap())
    );
    let p = Period::parse("2026-12").unwrap();
    assert_eq!(p.last, NaiveDate::from_ymd_opt(2026, 12, 31).unwrap());
    let p = Period::parse("2026-11-05").unwrap();
    assert_eq!(p.first, p.last);
    assert_eq!(Period::parse("2026-11-01..2026-11-15").unwrap().days(tz()).len(), 15);
    for bad in ["2026-13", "nov", "2026-11-15..2026-11-01", "2020-01-01..2026-01-01", ""] {
        assert!(Period::parse(bad).is_err(), "{bad}");
    }
    // A DST day has 23 hours.
    let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let d = Period::parse("2026-03-08").unwrap().days(ny)[0];
    assert_eq!(d.end - d.start, 23 * 3_600_000);
}

#[test]
fn limits_follow_tags_and_rule_overrides() {
    let text = r#"
[site]
id = "p"
[[grids]]
id = "g1"
[[devices]]
id = "out1"
grid = "g1"
category = "environment"
tags = { water_class = "2" }
points = [{ name = "cod", unit = "mg/L" }, { name = "nh3n", unit = "mg/L" }]
[[devices]]
id = "out2"
grid = "g1"
category = "environment"
tags = { water_class = "3" }
points = [{ name = "nh3n", unit = "mg/L" }]
[[devices]]
id = "n1"
grid = "g1"
category = "environment"
points = [{ name = "noise", unit = "dB(A)" }, { name = "pm25", unit = "µg/m³" }]
[[rules.overrides]]
rule = "emission.noise_leq"
params = { zone_class = "2" }
[[rules.overrides]]
rule = "emission.pm25_24h"
grid = "g1"
params = { class2_ugm3 = 60.0 }
[[rules.overrides]]
rule = "emission.pm25_24h"
params = { class2_ugm3 = 70.0 }
"#;
    let config = crate::config::from_str(text, "t.toml".as_ref(), ".".as_ref()).unwrap();
    let reg = Registry::from_config(&config);
    let (points, problems) = catalog::monitoring_points(&config, &reg);
    assert!(problems.is_empty(), "{problems:?}");
    let get = |d: usize, p: &str| points.get(&(d, p.to_owned())).cloned().unwrap_or_default();
    let cod = get(0, "cod");
    assert_eq!((cod[0].class.as_str(), cod[0].high, cod[0].overridden), ("2", 150.0, false));
    assert_eq!(get(0, "nh3n")[0].high, 25.0);
    // GB 8978 sets no NH3-N limit for class 3: nothing to judge.
    assert!(get(1, "nh3n").is_empty());
    let noise = get(2, "noise");
    assert_eq!(noise.iter().map(|l| (l.class.as_str(), l.high)).collect::<Vec<_>>(), [("2", 60.0), ("2", 50.0)]);
    // The grid's override is more specific than the site's.
    let pm = get(2, "pm25");
    assert_eq!((pm[0].class.as_str(), pm[0].high, pm[0].overridden), ("2", 60.0, true));
}

#[test]
fn energy_days_are_due_once_each_and_again_after_a_start() {
    let at = |d: u32, h: u32, m: u32| local(2026, 11, d, h, m);
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let due =
        |now, last, first| energy_days_due(tz(), now, last, first, 10 * MIN, 35).map(|p| (p.first.day(), p.last.day()));
    use chrono::Datelike;
    // Nothing sent yet: yesterday, once today is ten minutes old.
    assert_eq!(due(at(5, 0, 5), None, true), None);
    assert_eq!(due(at(5, 0, 10), None, true), Some((4, 4)));
    // Running: the next day only when it has closed.
    assert_eq!(due(at(5, 12, 0), Some(day(4)), false), None);
    assert_eq!(due(at(6, 0, 30), Some(day(4)), false), Some((5, 5)));
    // After a start the last day sent goes again (it may not have been committed), then the rest.
    assert_eq!(due(at(9, 8, 0), Some(day(4)), true), Some((4, 8)));
    // A long stop: at most 35 days back, the newest.
    let p = energy_days_due(tz(), at(30, 8, 0), Some(NaiveDate::from_ymd_opt(2026, 9, 1).unwrap()), true, 10 * MIN, 35)
        .unwrap();
    assert_eq!((p.first, p.last), (NaiveDate::from_ymd_opt(2026, 10, 26).unwrap(), day(29)));
}
