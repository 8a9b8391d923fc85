//! Reports end to end: a day of rollups in the gateway's own `history.db`, the emission and energy
//! reports from the API (grid-scoped) and from `parkwatch report` equal to the byte, and the HTML
//! report rendered by headless Chromium to PNG and PDF (kept as test artifacts).

use chrono::TimeZone;
use parkwatch::history::rollup::{Kind, Roller, Skipped};
use parkwatch::history::store;
use parkwatch_e2e::{create_token, http_get_as, parkwatch_cli, wait_until, Gateway, Victoria};
use serde_json::Value;

use crate::dashboard::{artifacts, Browser};

const CONFIG: &str = r#"
[site]
id = "rp"
name = "报表园区"
timezone = "Asia/Shanghai"

[api]
listen = "{api}"

[[grids]]
id = "g1"
[[grids]]
id = "g2"

[[devices]]
id = "aq1"
name = "空气站"
grid = "g1"
category = "environment"
points = [{ name = "so2", unit = "µg/m³" }]
[[devices]]
id = "nz1"
name = "厂界噪声"
grid = "g2"
category = "environment"
points = [{ name = "noise", unit = "dB(A)" }]
[[devices]]
id = "em1"
name = "1号楼总表"
grid = "g1"
category = "energy"
tags = { building = "B1", tenant = "T1" }
points = [{ name = "energy", unit = "kWh" }]

[rules]
builtin = false

[reports]
tou = [{ bucket = "valley", from = "23:00", to = "07:00" }, { bucket = "peak", from = "08:00", to = "12:00" }]
"#;

/// 2026-11-05 (Asia/Shanghai) a reading a minute, from the evening before to the morning after:
/// SO2 100 µg/m³ with 600 from 10:00 to 11:59, noise 50 dB(A), a meter at 15 kW.
fn fill(history: &std::path::Path) {
    fill_day(history, chrono::NaiveDate::from_ymd_opt(2026, 11, 5).unwrap());
}

/// As [`fill`], for the local day `day`.
fn fill_day(history: &std::path::Path, day: chrono::NaiveDate) {
    let tz = chrono_tz::Asia::Shanghai;
    let local = |d: chrono::NaiveDate, h: u32| {
        tz.from_local_datetime(&d.and_hms_opt(h, 0, 0).unwrap()).single().unwrap().timestamp_millis()
    };
    let start = local(day.pred_opt().unwrap(), 23);
    let end = local(day.succ_opt().unwrap(), 7);
    let rise = day.format("%d").to_string();
    let names = [("aq1", "so2"), ("nz1", "noise"), ("em1", "energy")];
    let mut conn = store::open(history, 1 << 30).unwrap();
    let series = store::series(&mut conn, &names).unwrap();
    let mut roller = Roller::new([Kind::Level, Kind::Noise, Kind::Energy]);
    let mut skipped = Skipped::default();
    let mut t = start;
    let mut counter = 1_000.0;
    while t < end {
        let hour = tz.timestamp_millis_opt(t).unwrap().format("%d %H").to_string();
        let so2 = if hour == format!("{rise} 10") || hour == format!("{rise} 11") { 600.0 } else { 100.0 };
        counter += 0.25;
        for (i, v) in [so2, 50.0, counter].into_iter().enumerate() {
            roller.push(i as u32, t * 1_000_000, v, true, &mut skipped);
        }
        t += 60_000;
    }
    roller.sweep(end * 1_000_000 + 3_600_000_000_000, 0);
    roller.flush_all();
    store::write(&mut conn, &series, &roller.rows).unwrap();
}

#[test]
fn reports_from_the_api_and_the_cli_agree_and_render_in_chromium() {
    let gw = Gateway::start(CONFIG);
    fill(&gw.dir.path().join("history.db"));
    let config = gw.dir.path().join("parkwatch.toml");
    let get = |path: &str, token: &str| {
        let (status, body) = http_get_as(gw.api, path, Some(token)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    };

    // JSON for the site: the SO2 hour exceedance of Nov 5, both grids' points.
    let json: Value = serde_json::from_str(&get("/api/v1/reports/emissions?period=2026-11-05", &gw.token)).unwrap();
    let points: Vec<&str> = json["points"].as_array().unwrap().iter().map(|p| p["device"].as_str().unwrap()).collect();
    assert_eq!(points, ["aq1", "nz1"]);
    let so2 = &json["points"][0]["limits"][0];
    assert_eq!(
        (so2["window"].as_str(), so2["exceeded"].as_u64(), so2["judged"].as_u64()),
        (Some("1h"), Some(2), Some(24))
    );
    assert_eq!(so2["exceedances"][0]["start"], "2026-11-05T10:00:00+08:00");

    // A g2 viewer's report holds g2's points only.
    let viewer = create_token(&config, "g2-viewer", "viewer", &["g2"]);
    let scoped: Value = serde_json::from_str(&get("/api/v1/reports/emissions?period=2026-11-05", &viewer)).unwrap();
    let points: Vec<&str> =
        scoped["points"].as_array().unwrap().iter().map(|p| p["device"].as_str().unwrap()).collect();
    assert_eq!(points, ["nz1"]);
    let energy: Value = serde_json::from_str(&get("/api/v1/reports/energy?period=2026-11-05", &viewer)).unwrap();
    assert!(energy["meters"].as_array().unwrap().is_empty(), "{energy}");
    let (status, body) = http_get_as(gw.api, "/api/v1/reports/emissions?period=2026-13", Some(&gw.token)).unwrap();
    assert_eq!(status, 400, "{body}");

    // The API and the command line give the same bytes.
    let c = config.to_str().unwrap();
    let cli = parkwatch_cli(&["report", "emissions", "-c", c, "--period", "2026-11-05", "--format", "csv"], "");
    assert_eq!(cli, get("/api/v1/reports/emissions?period=2026-11-05&format=csv", &gw.token));
    let cli = parkwatch_cli(&["report", "energy", "-c", c, "--period", "2026-11-05", "--format", "csv"], "");
    assert!(cli.contains("\r\nday,em1,energy,g1,B1,T1,2026-11-05,360.000,"), "{cli}");

    // The HTML reports in headless Chromium: rendered with their charts, to PNG and PDF.
    let dir = artifacts();
    let browser = Browser::start();
    browser.viewport(1280, 900);
    for (kind, lang) in [("emissions", "zh"), ("energy", "en")] {
        let html = get(&format!("/api/v1/reports/{kind}?period=2026-11-05&format=html&lang={lang}"), &gw.token);
        let file = dir.join(format!("report-{kind}-{lang}.html"));
        std::fs::write(&file, &html).unwrap();
        browser.open(&format!("file://{}", file.display()));
        let seen = browser.js(
            "return { svgs: document.querySelectorAll('svg').length, title: document.querySelector('h1').textContent,
                      width: document.querySelector('svg').getBoundingClientRect().width };",
            serde_json::json!([]),
        );
        assert!(seen["svgs"].as_u64().unwrap_or(0) >= 1, "{seen}");
        assert!(seen["width"].as_f64().unwrap_or(0.0) > 600.0, "the chart is laid out: {seen}");
        let title = seen["title"].as_str().unwrap_or_default();
        assert!(if lang == "zh" { title.contains("排放达标") } else { title.contains("Energy accounts") }, "{title}");
        browser.screenshot(&dir.join(format!("report-{kind}-{lang}.png")), 1280);
        let size = browser.print_pdf(&dir.join(format!("report-{kind}-{lang}.pdf")));
        assert!(size > 2_000, "a PDF of {size} bytes");
    }
}

/// Yesterday's energy accounts reach the central store as `energy_daily` (VictoriaMetrics maps it to
/// `energy_daily_<field>`), sent again after a restart without changing the stored figures.
#[test]
fn closed_days_of_the_energy_accounts_reach_the_central_store() {
    let tz = chrono_tz::Asia::Shanghai;
    // The day is handed over ten minutes after it ends: not in the first ten minutes of a day.
    wait_until(std::time::Duration::from_secs(660), "ten minutes into the local day", || {
        let now = chrono::Utc::now().with_timezone(&tz);
        (now.time() >= chrono::NaiveTime::from_hms_opt(0, 10, 30).unwrap()).then_some(())
    });
    let store = Victoria::start();
    let config = CONFIG.replace(
        "[rules]",
        &format!(
            "[forward]\noutbox = \"outbox.db\"\n[[forward.targets]]\nid = \"central\"\nurl = \"{}\"\norg = \"park\"\nbucket = \"telemetry\"\ntoken = \"t\"\n\n[rules]",
            store.url()
        ),
    );
    let mut gw = Gateway::start(&config);
    let yesterday = chrono::Utc::now().with_timezone(&tz).date_naive().pred_opt().unwrap();
    fill_day(&gw.dir.path().join("history.db"), yesterday);
    // The first turn at start found no readings for yesterday; after a restart the day goes again.
    gw.signal("TERM");
    gw.restart();
    let day_start =
        tz.from_local_datetime(&yesterday.and_hms_opt(0, 0, 0).unwrap()).single().unwrap().timestamp_millis();
    let series = wait_until(std::time::Duration::from_secs(60), "energy_daily in the store", || {
        let s = store.export(r#"{__name__=~"energy_daily_.*",device="em1"}"#);
        (s.len() >= 4).then_some(s)
    });
    let value = |name: &str| -> (f64, i64) {
        let s = series.iter().find(|s| s["metric"]["__name__"] == name).unwrap_or_else(|| panic!("{name}: {series:?}"));
        assert_eq!(
            (s["metric"]["building"].as_str(), s["metric"]["tenant"].as_str(), s["metric"]["site"].as_str()),
            (Some("B1"), Some("T1"), Some("rp"))
        );
        (s["values"][0].as_f64().unwrap(), s["timestamps"][0].as_i64().unwrap())
    };
    // 1,440 readings of 0.25 kWh; 15 kW in every quarter; valley 23:00-07:00 is 480 minutes.
    assert_eq!(value("energy_daily_kwh"), (360.0, day_start));
    assert_eq!(value("energy_daily_peak_kw"), (15.0, day_start));
    assert_eq!(value("energy_daily_tou_valley"), (120.0, day_start));
    assert_eq!(value("energy_daily_tou_peak"), (60.0, day_start));
    assert!(gw.log().contains("Daily energy accounts handed to the outbox."), "{}", gw.log());
}
