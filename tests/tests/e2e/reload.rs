//! SIGHUP reloads the configuration file of a running gateway: devices, grids, subscriptions and
//! rules change without a restart and without dropping the broker connection; an open alarm of a
//! device that stays continues; a removed device's incident is closed with the reason; a file that
//! does not load changes nothing.

use std::time::Duration;

use parkwatch_e2e::{high_voltage_rule, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::{json, Value};

/// Site `site` with one broker on `mqtt` and the rule pack in `rules`.
fn head(site: &str, mqtt: u16, rules: &std::path::Path) -> String {
    format!(
        r#"
[site]
id = "{site}"

[api]
listen = "{{api}}"

[rules]
builtin = false
dirs = [{rules:?}]

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt}
"#
    )
}

fn config(mqtt: u16, rules: &std::path::Path, grids: &[&str], devices: &[(&str, &str)], topics: &[&str]) -> String {
    let mut text = head("rl", mqtt, rules);
    for t in topics {
        text.push_str(&format!("\n[[mqtt.subscriptions]]\nbroker = \"local\"\ntopic = {t:?}\nqos = 1\n"));
    }
    for g in grids {
        text.push_str(&format!("\n[[grids]]\nid = \"{g}\"\n"));
    }
    for (id, grid) in devices {
        text.push_str(&format!(
            "\n[[devices]]\nid = \"{id}\"\ngrid = \"{grid}\"\ncategory = \"electrical\"\npoints = [{{ name = \"ua\", unit = \"V\" }}]\n"
        ));
    }
    text
}

const TOPIC: &str = "park/{grid}/meter/{device}/telemetry";
const SECOND_TOPIC: &str = "yard/{grid}/{device}/state";

fn open_incident(gw: &Gateway, device: &str) -> Option<Value> {
    let list = gw.json("/api/v1/incidents?state=open");
    list.as_array()?.iter().find(|i| i["device"] == device && i["rule"] == "t.high").cloned()
}

fn last_reload(gw: &Gateway) -> Value {
    gw.json("/api/v1/config/reload")["last"].clone()
}

/// The report of the reload after `previous`.
fn next_reload(gw: &Gateway, previous: &Value) -> Value {
    wait_until(Duration::from_secs(15), "the reload's report", || {
        let last = last_reload(gw);
        (last.is_object() && last != *previous).then_some(last)
    })
}

#[test]
fn sighup_changes_devices_grids_and_subscriptions_without_dropping_the_broker() {
    let broker = Mosquitto::start("");
    let rules = high_voltage_rule();
    let before = config(broker.port, rules.path(), &["g1"], &[("m1", "g1"), ("m3", "g1")], &[TOPIC]);
    let gw = Gateway::start(&before);
    let p = Publisher::connect(broker.port, "reload-pub");
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish("park/g1/meter/m1/telemetry", 1, json!({ "ua": 220 }).to_string());
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ua")
    });
    for d in ["m1", "m3"] {
        p.publish(&format!("park/g1/meter/{d}/telemetry"), 1, json!({ "ua": 350 }).to_string());
    }
    let m1 = wait_until(Duration::from_secs(10), "m1's alarm", || open_incident(&gw, "m1"));
    let m3 = wait_until(Duration::from_secs(10), "m3's alarm", || open_incident(&gw, "m3"));
    // m2 is not configured yet: its readings are rejected.
    p.publish("park/g2/meter/m2/telemetry", 1, json!({ "ua": 350 }).to_string());
    let unknown = r#"parkwatch_mqtt_rejects_total{broker="local",subscription="park/{grid}/meter/{device}/telemetry",reason="unknown_device"}"#;
    wait_until(Duration::from_secs(10), "m2 rejected", || gw.metric(unknown).filter(|n| *n >= 1.0));
    let connections = r#"parkwatch_mqtt_connections_total{broker="local"}"#;
    let connected_before = gw.metric(connections);
    assert_eq!(connected_before, Some(1.0));

    // A grid and device added, m3 removed, a second subscription.
    let previous = last_reload(&gw);
    assert_eq!(previous, Value::Null, "no reload yet");
    let after = config(broker.port, rules.path(), &["g1", "g2"], &[("m1", "g1"), ("m2", "g2")], &[TOPIC, SECOND_TOPIC]);
    gw.reload_with(&after);
    let report = next_reload(&gw, &previous);
    assert_eq!(report["applied"], true, "{report}");
    assert_eq!(report["trigger"], "SIGHUP");
    let changes = report["changes"].to_string();
    for c in
        ["grids added: g2", "devices added: m2", "devices removed: m3", "MQTT subscriptions: 1 new or changed, 0 gone"]
    {
        assert!(changes.contains(c), "{c:?} not in {changes}");
    }
    assert_eq!(report["restart_needed"], json!([]), "{report}");

    // m2 alarms now; the new subscription delivers; m1's alarm is the same incident.
    wait_until(Duration::from_secs(10), "m2's alarm", || {
        p.publish("park/g2/meter/m2/telemetry", 1, json!({ "ua": 351 }).to_string());
        std::thread::sleep(Duration::from_millis(100));
        open_incident(&gw, "m2")
    });
    wait_until(Duration::from_secs(10), "a reading on the new subscription", || {
        p.publish("yard/g1/m1/state", 1, json!({ "ua": 352 }).to_string());
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ua").filter(|v| *v == json!(352.0))
    });
    assert_eq!(open_incident(&gw, "m1").map(|i| i["id"].clone()), Some(m1["id"].clone()), "m1's alarm continues");
    // m3's incident is closed, with the reason.
    let detail = wait_until(Duration::from_secs(10), "m3's incident closed", || {
        let d = gw.json(&format!("/api/v1/incidents/{}", m3["id"]));
        (open_incident(&gw, "m3").is_none()).then_some(d)
    });
    assert!(detail.to_string().contains(r#"device \"m3\" was removed by a reload"#), "{detail}");
    let devices: Vec<String> =
        gw.json("/api/v1/devices").as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(devices, ["m1", "m2"]);
    assert_eq!(gw.metric(connections), connected_before, "the broker connection stayed up");

    // A file that does not load changes nothing, and says where it is wrong.
    let previous = report.clone();
    let broken = after.replace("id = \"m2\"\ngrid = \"g2\"", "id = \"m2\"\ngrid = \"nowhere\"");
    gw.reload_with(&broken);
    let report = next_reload(&gw, &previous);
    assert_eq!(report["applied"], false, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("parkwatch.toml") && errors.contains("devices[1].grid"), "{errors}");
    p.publish("park/g2/meter/m2/telemetry", 1, json!({ "ua": 200 }).to_string());
    wait_until(Duration::from_secs(10), "m2 still known", || gw.point("m2", "ua").filter(|v| *v == json!(200.0)));
    assert!(gw.log().contains("Configuration reload refused"), "{}", gw.log());
}

fn provisioning_config(mqtt: u16, rules: &std::path::Path) -> String {
    head("pv", mqtt, rules)
        + r#"
[[mqtt.subscriptions]]
broker = "local"
topic = "park/{grid}/meter/{device}/telemetry"
provision = { type = "meter", max = 2 }

[[mqtt.subscriptions]]
broker = "local"
topic = "lab/{grid}/{device}"
provision = { type = "meter", approve = true }

[[device_types]]
id = "meter"
category = "electrical"
points = [{ name = "ua", unit = "V" }, { name = "ia", unit = "A" }]
tags = { model = "sdm630" }

[[grids]]
id = "g1"
[[grids]]
id = "g2"

[[devices]]
id = "m0"
grid = "g1"
type = "meter"
"#
}

fn device(gw: &Gateway, id: &str) -> Option<Value> {
    gw.json("/api/v1/devices").as_array()?.iter().find(|d| d["id"] == id).cloned()
}

#[test]
fn unknown_meters_are_provisioned_from_their_topic_up_to_the_cap_and_kept_across_a_restart() {
    let broker = Mosquitto::start("");
    let rules = high_voltage_rule();
    let mut gw = Gateway::start(&provisioning_config(broker.port, rules.path()));
    let p = Publisher::connect(broker.port, "provision-pub");
    // n1 is not configured: its first messages provision it, later ones are its readings.
    let n1 = wait_until(Duration::from_secs(30), "n1 provisioned", || {
        p.publish("park/g1/meter/n1/telemetry", 1, json!({ "ua": 220, "ia": 5 }).to_string());
        std::thread::sleep(Duration::from_millis(200));
        // Points of a device not (yet) known are refused: ask for the device first.
        device(&gw, "n1").filter(|_| gw.point("n1", "ua").is_some())
    });
    assert_eq!(n1["provisioned"], true, "{n1}");
    assert_eq!((n1["grid"].as_str(), n1["type"].as_str()), (Some("g1"), Some("meter")), "{n1}");
    assert_eq!(n1["tags"]["model"], "sdm630", "{n1}");
    assert_eq!(n1["points"].as_array().map(Vec::len), Some(2), "{n1}");
    // The rules watch it like a configured meter.
    p.publish("park/g1/meter/n1/telemetry", 1, json!({ "ua": 350 }).to_string());
    let alarm = wait_until(Duration::from_secs(10), "n1's alarm", || open_incident(&gw, "n1"));
    // n2 fills the cap of 2; n3 is refused and counted; a grid that does not exist is refused.
    wait_until(Duration::from_secs(30), "n2 provisioned", || {
        p.publish("park/g2/meter/n2/telemetry", 1, json!({ "ua": 221 }).to_string());
        std::thread::sleep(Duration::from_millis(200));
        device(&gw, "n2").and_then(|_| gw.point("n2", "ua"))
    });
    for _ in 0..3 {
        p.publish("park/g1/meter/n3/telemetry", 1, json!({ "ua": 222 }).to_string());
        p.publish("park/g9/meter/n4/telemetry", 1, json!({ "ua": 223 }).to_string());
    }
    wait_until(Duration::from_secs(10), "n3 and n4 refused", || {
        let cap = gw.metric(r#"parkwatch_provision_refused_total{reason="cap"}"#)?;
        let grid = gw.metric(r#"parkwatch_provision_refused_total{reason="grid"}"#)?;
        (cap >= 1.0 && grid >= 1.0).then_some(())
    });
    assert!(device(&gw, "n3").is_none() && device(&gw, "n4").is_none());
    assert!(gw.log().contains("Device not provisioned."), "{}", gw.log());
    // With approval, the device waits until an admin approves it.
    wait_until(Duration::from_secs(10), "x1 pending", || {
        p.publish("lab/g1/x1", 1, json!({ "ua": 224 }).to_string());
        std::thread::sleep(Duration::from_millis(200));
        let status = gw.json("/api/v1/provisioning");
        status["pending"].as_array()?.iter().find(|e| e["device"] == "x1").map(|_| ())
    });
    assert!(device(&gw, "x1").is_none(), "not before approval");
    let (status, body) = gw.post("/api/v1/provisioning/x1/approve", &json!({})).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.post("/api/v1/provisioning/x9/approve", &json!({})).unwrap().0, 404);
    wait_until(Duration::from_secs(10), "x1's readings", || {
        p.publish("lab/g1/x1", 1, json!({ "ua": 225 }).to_string());
        std::thread::sleep(Duration::from_millis(200));
        gw.point("x1", "ua").filter(|v| *v == json!(225.0))
    });
    assert_eq!(gw.metric("parkwatch_provisioned_devices"), Some(3.0));
    // A restart keeps the provisioned devices, and n1's alarm continues as the same incident.
    gw.signal("TERM");
    gw.restart();
    for id in ["n1", "n2", "x1"] {
        assert_eq!(device(&gw, id).map(|d| d["provisioned"].clone()), Some(json!(true)), "{id} after restart");
    }
    assert_eq!(open_incident(&gw, "n1").map(|i| i["id"].clone()), Some(alarm["id"].clone()));
    let status = gw.json("/api/v1/provisioning");
    assert_eq!(status["subscriptions"][0]["provisioned"], 2, "{status}");
    assert_eq!(status["subscriptions"][1]["provisioned"], 1, "{status}");
}
