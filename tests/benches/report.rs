//! Report benchmark: the monthly emission report for 50 monitoring points, and the energy report for
//! 50 meters, from one-minute rollups.
//!
//! The database is built first with the history's own rollup code: 10 air stations × 5 pollutants
//! (SO2, NO2, PM10, PM2.5, O3: 1-hour, 24-hour and daily maximum 8-hour limits) and 50 energy meters,
//! one reading a minute for November 2026 (44,640 minute rows per point, 4.5 million in all). Then
//! each report is made `PARKWATCH_BENCH_RUNS` times (default 7) as `parkwatch report` does (a fresh
//! read-only connection each time, rendered to CSV and HTML); the median and the slowest are
//! reported against the 2 s target.
//!
//! `cargo bench -p parkwatch-e2e --bench report`

use std::sync::Arc;
use std::time::Instant;

use chrono::TimeZone;
use parkwatch::history::rollup::{Kind, Roller, Skipped};
use parkwatch::history::store;
use parkwatch::model::Registry;
use parkwatch::report::{render, Format, Lang, Period, Reporter};

const STATIONS: usize = 10;
const POLLUTANTS: [(&str, &str, f64); 5] = [
    ("so2", "µg/m³", 40.0),
    ("no2", "µg/m³", 50.0),
    ("pm10", "µg/m³", 90.0),
    ("pm25", "µg/m³", 60.0),
    ("o3", "µg/m³", 120.0),
];
const METERS: usize = 50;

fn config(dir: &std::path::Path) -> parkwatch::config::Config {
    let mut text = format!(
        "[site]\nid = \"bench\"\n[incidents]\npath = \"{}/incidents.db\"\n[[grids]]\nid = \"g1\"\n",
        dir.display()
    );
    for s in 0..STATIONS {
        let points: Vec<String> =
            POLLUTANTS.iter().map(|(p, u, _)| format!("{{ name = \"{p}\", unit = \"{u}\" }}")).collect();
        text.push_str(&format!(
            "[[devices]]\nid = \"aq{s}\"\ngrid = \"g1\"\ncategory = \"environment\"\npoints = [{}]\n",
            points.join(", ")
        ));
    }
    for m in 0..METERS {
        text.push_str(&format!(
            "[[devices]]\nid = \"em{m}\"\ngrid = \"g1\"\ncategory = \"energy\"\ntags = {{ building = \"B{}\" }}\npoints = [{{ name = \"energy\", unit = \"kWh\" }}]\n",
            m % 5
        ));
    }
    text.push_str(
        "[reports]\ntou = [{ bucket = \"valley\", from = \"23:00\", to = \"07:00\" }, { bucket = \"peak\", from = \"08:00\", to = \"12:00\" }]\n",
    );
    parkwatch::config::from_str(&text, "bench.toml".as_ref(), dir).expect("bench config")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("PARKWATCH_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let registry = Arc::new(Registry::from_config(&config));
    let tz = chrono_tz::Asia::Shanghai;
    let start = tz.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap().timestamp_millis();
    let end = tz.with_ymd_and_hms(2026, 12, 1, 6, 0, 0).unwrap().timestamp_millis();

    let built = Instant::now();
    let names: Vec<(&str, &str)> =
        registry.points.iter().map(|p| (registry.device(p.device).id.as_str(), p.name.as_str())).collect();
    let mut conn = store::open(&dir.path().join("history.db"), 1 << 34).unwrap();
    let series = store::series(&mut conn, &names).unwrap();
    let mut roller = Roller::new(registry.points.iter().map(|p| Kind::of_unit(&p.unit)));
    let mut skipped = Skipped::default();
    let mut counters = vec![1_000.0; names.len()];
    let mut t = start;
    let mut minute = 0u64;
    while t < end {
        for (i, p) in registry.points.iter().enumerate() {
            let base = POLLUTANTS.iter().find(|x| x.0 == p.name).map_or(0.0, |x| x.2);
            let v = if base > 0.0 {
                // A daily wave, and a one-hour rise on the 10th of each station.
                base * (1.0 + 0.4 * ((minute % 1_440) as f64 / 1_440.0 * std::f64::consts::TAU).sin())
                    + if minute / 1_440 == 10 && minute % 1_440 / 60 == 9 { 500.0 } else { 0.0 }
            } else {
                counters[i] += 0.2 + (i % 7) as f64 * 0.01;
                counters[i]
            };
            roller.push(i as u32, t * 1_000_000, v, true, &mut skipped);
        }
        t += 60_000;
        minute += 1;
        if minute.is_multiple_of(60) {
            roller.sweep(t * 1_000_000, 0);
            store::write(&mut conn, &series, &roller.rows).unwrap();
            roller.rows.clear();
        }
    }
    roller.sweep(end * 1_000_000 + 3_600_000_000_000, 0);
    roller.flush_all();
    store::write(&mut conn, &series, &roller.rows).unwrap();
    drop(conn);
    let rows = minute * names.len() as u64;
    let size = std::fs::metadata(dir.path().join("history.db")).map(|m| m.len()).unwrap_or(0);
    println!(
        "built: {} points × {minute} minutes = {rows} minute rows, history.db {:.1} MB, in {:.1} s",
        names.len(),
        size as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );

    let reporter = Reporter::new(&config, registry.clone());
    let period = Period::parse("2026-11").unwrap();
    let all = |_: &str| true;
    let mut emission = Vec::new();
    let mut energy = Vec::new();
    let mut check = (0, 0, 0);
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = reporter.emissions(&period, &[], &all).unwrap();
        let csv = render::emissions(&r, Format::Csv, Lang::Zh);
        let html = render::emissions(&r, Format::Html, Lang::Zh);
        emission.push(t0.elapsed().as_secs_f64());
        check.0 = r.points.len();
        check.1 = r.points.iter().flat_map(|p| &p.limits).map(|l| l.exceeded).sum::<usize>();
        check.2 = csv.len() + html.len();
        let t0 = Instant::now();
        let e = reporter.energy(&period, &[], &all).unwrap();
        let _ = render::energy(&e, Format::Csv, Lang::Zh);
        let _ = render::energy(&e, Format::Html, Lang::Zh);
        energy.push(t0.elapsed().as_secs_f64());
        assert_eq!(e.meters.len(), METERS);
    }
    assert_eq!(check.0, STATIONS * POLLUTANTS.len());
    let (m, worst) = (median(emission.clone()), emission.iter().copied().fold(0.0, f64::max));
    println!(
        "emission report, 2026-11, {} monitoring points ({} windows exceeded, {:.1} MB of CSV + HTML): median {:.3} s, slowest {:.3} s of {runs} -> {} (target <= 2 s)",
        check.0,
        check.1,
        check.2 as f64 / 1e6,
        m,
        worst,
        if m <= 2.0 { "PASS" } else { "FAIL" }
    );
    println!(
        "energy report, 2026-11, {METERS} meters: median {:.3} s, slowest {:.3} s",
        median(energy.clone()),
        energy.iter().copied().fold(0.0, f64::max)
    );
}
