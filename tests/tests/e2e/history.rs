//! The edge history end to end: readings published over MQTT to Mosquitto come back from
//! `GET /api/v1/points/{device}/{point}/history` as minute rollups, grid-scoped; a full disk under
//! `history.db` degrades history while readings and alarms go on, and history recovers after.

use std::time::Duration;

use parkwatch_e2e::{high_voltage_rule, login, now_ms, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::{json, Value};

fn config(mqtt: u16, rules: &std::path::Path, history: &str) -> String {
    format!(
        r#"
[site]
id = "xh"
timezone = "Asia/Shanghai"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"
[[grids]]
id = "g2"

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{{ name = "ua", unit = "V" }}, {{ name = "energy", unit = "kWh" }}]
[[devices]]
id = "e1"
grid = "g2"
category = "environment"
points = [{{ name = "noise", unit = "dB(A)" }}]

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt}

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/meter/{{device}}/telemetry"
qos = 1
timestamp = {{ pointer = "/ts", unit = "ms" }}

[rules]
builtin = false
dirs = [{rules:?}]

[history]
{history}
"#
    )
}

/// Three minutes of 1 Hz readings, half an hour ago, plus one that ends the last reading's hold.
fn publish_three_minutes(p: &Publisher, base: i64) {
    for i in 0..=180 {
        let ts = base + i * 1_000;
        p.publish(
            "park/g1/meter/m1/telemetry",
            1,
            json!({ "ts": ts, "ua": 220 + i % 3, "energy": 100.0 + i as f64 * 0.01 }).to_string(),
        );
        p.publish(
            "park/g2/meter/e1/telemetry",
            1,
            json!({ "ts": ts, "noise": if i % 2 == 0 { 50 } else { 60 } }).to_string(),
        );
    }
}

fn rows(gw: &Gateway, path: &str) -> Option<Vec<Value>> {
    let (status, body) = gw.get(path).ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body).ok()?["rows"].as_array().cloned()
}

#[test]
fn published_readings_come_back_as_minute_rollups() {
    let broker = Mosquitto::start("");
    let rules = high_voltage_rule();
    let gw = Gateway::start(&config(broker.port, rules.path(), ""));
    let p = Publisher::connect(broker.port, "history-pub");
    let base = (now_ms() / 60_000 - 30) * 60_000;
    // The subscription is up once a reading reaches point state; it sets the energy baseline too.
    wait_until(Duration::from_secs(30), "the subscription", || {
        let first = json!({ "ts": base - 60_000, "ua": 220, "energy": 99.99 });
        p.publish("park/g1/meter/m1/telemetry", 1, first.to_string());
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ua")
    });
    publish_three_minutes(&p, base);
    let (from, to) = (base, base + 180_000);
    let ua = format!("/api/v1/points/m1/ua/history?from={from}&to={to}&step=1m");
    let got = wait_until(Duration::from_secs(30), "three full minutes of ua", || {
        rows(&gw, &ua).filter(|r| r.len() == 3 && r.iter().all(|m| m["count"] == 60))
    });
    for m in &got {
        // 220, 221, 222 each held for 20 s of the minute.
        assert_eq!(
            (m["avg"].as_f64(), m["min"].as_f64(), m["max"].as_f64()),
            (Some(221.0), Some(220.0), Some(222.0)),
            "{m}"
        );
        assert_eq!(m["leq"], Value::Null);
    }
    assert_eq!(got[0]["t_ms"], base);
    // Energy: the counter rises 0.01 kWh a second; each minute's delta is 0.6 kWh.
    let energy = format!("/api/v1/points/m1/energy/history?from={from}&to={to}");
    let got = wait_until(Duration::from_secs(30), "three minutes of energy", || {
        rows(&gw, &energy).filter(|r| r.len() == 3 && r.iter().all(|m| m["count"] == 60))
    });
    for m in &got {
        assert!((m["avg"].as_f64().unwrap() - 0.6).abs() < 1e-9, "{m}");
    }
    // Noise: 50 and 60 dB(A) a second each, Leq 57.40 per limits.md; times in the site's zone.
    let noise = format!("/api/v1/points/e1/noise/history?from={from}&to={to}&tz=site");
    let got = wait_until(Duration::from_secs(30), "three minutes of noise", || {
        rows(&gw, &noise).filter(|r| r.len() == 3 && r.iter().all(|m| m["count"] == 60))
    });
    for m in &got {
        assert_eq!((m["leq"].as_f64().unwrap() * 100.0).round() / 100.0, 57.40, "{m}");
        assert!(m["t"].as_str().unwrap().ends_with("+08:00"), "{m}");
    }
    // An officer of g1 sees m1's history; e1 (g2) is as unknown as a point that does not exist.
    gw.add_user("root", "admin", &[], "root's long password");
    gw.add_user("li", "officer", &["g1"], "li's long password");
    let Ok(session) = login(gw.api, "li", "li's long password") else { panic!("li cannot log in") };
    assert_eq!(session.get(gw.api, &ua).status, 200);
    assert_eq!(session.get(gw.api, &noise).status, 404);
    assert_eq!(session.get(gw.api, "/api/v1/points/m1/nope/history").status, 404);
    assert!(gw.metric("parkwatch_history_samples_total").unwrap_or(0.0) >= 3.0 * 181.0);
    assert!(gw.metric("parkwatch_history_disk_bytes").unwrap_or(0.0) > 0.0);
    assert_eq!(gw.metric("parkwatch_history_dropped_samples_total"), Some(0.0));
}

/// The component `history` as `/api/v1/health` shows it: status and reason.
fn history_health(gw: &Gateway) -> (String, String) {
    let health = gw.json("/api/v1/health");
    let c = health["components"].as_array().and_then(|c| c.iter().find(|c| c["component"] == "history").cloned());
    let c = c.unwrap_or_else(|| panic!("no history component in {health}"));
    (c["status"].as_str().unwrap_or_default().to_owned(), c["reason"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn a_full_disk_degrades_history_never_readings_or_alarms() {
    let broker = Mosquitto::start("");
    let rules = high_voltage_rule();
    let disk = parkwatch_e2e::SmallDisk::mount(8 << 20);
    let path = disk.path.join("history.db");
    let gw = Gateway::start(&config(broker.port, rules.path(), &format!("path = {:?}", path.display().to_string())));
    let p = Publisher::connect(broker.port, "history-disk-pub");
    let base = (now_ms() / 60_000 - 30) * 60_000;
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish("park/g1/meter/m1/telemetry", 1, json!({ "ts": base - 60_000, "ua": 220 }).to_string());
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ua")
    });
    wait_until(Duration::from_secs(10), "history ok", || (history_health(&gw).0 == "ok").then_some(()));
    disk.fill();
    publish_three_minutes(&p, base);
    wait_until(Duration::from_secs(30), "history to degrade", || {
        let (status, reason) = history_health(&gw);
        (status == "degraded" && reason.contains("cannot write")).then_some(())
    });
    assert_eq!(gw.metric("parkwatch_history_failing"), Some(1.0));
    // Readings still reach point state, and alarms still raise incidents; readiness is not affected.
    p.publish("park/g1/meter/m1/telemetry", 1, json!({ "ts": base + 200_000, "ua": 350 }).to_string());
    wait_until(Duration::from_secs(10), "the alarm", || {
        let list = gw.json("/api/v1/incidents?state=open");
        list.as_array()?.iter().find(|i| i["rule"] == "t.high").map(|_| ())
    });
    assert_eq!(gw.point("m1", "ua"), Some(json!(350.0)));
    assert_eq!(gw.get("/readyz").unwrap().0, 200, "history does not fail readiness");
    // Space comes back: the held rows are written on a retry, and history is ok again.
    disk.free();
    let ua = format!("/api/v1/points/m1/ua/history?from={base}&to={}", base + 180_000);
    wait_until(Duration::from_secs(90), "the held minutes written", || {
        rows(&gw, &ua).filter(|r| r.len() == 3 && r.iter().all(|m| m["count"] == 60))
    });
    wait_until(Duration::from_secs(10), "history ok again", || (history_health(&gw).0 == "ok").then_some(()));
    assert!(gw.metric("parkwatch_history_write_errors_total").unwrap_or(0.0) >= 1.0);
    assert!(gw.log().matches("History cannot write").count() == 1, "logged once per episode:\n{}", gw.log());
}
