//! Linkage end to end: a real gateway, a real Modbus TCP server on loopback (the simulated devices'
//! server, whose units log every write) and Mosquitto. A fire alarm rule with `on_raise` unlocks the
//! exits of its own building exactly once however much the alarm chatters; a person's action is
//! refused or done over the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parkwatch::sim::modbus::{serve, Unit, Units};
use parkwatch::source::modbus::plan::Table;
use parkwatch_e2e::{numbers_over_mqtt, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::{json, Value};

const RULE: &str = r#"
rule(#{
    id: "linkage.fire_unlock",
    title: "Fire alarm: unlock the exits",
    category: "electrical",
    severity: "critical",
    watch: #{ points: ["alarm_temperature"] },
    condition: |ctx| ctx.value > 0.5,
    on_raise: ["unlock_b3"],
});
"#;

fn config(mqtt: u16, modbus: u16, rules: &std::path::Path) -> String {
    format!(
        r#"
[site]
id = "lk"
[api]
listen = "{{api}}"
[[grids]]
id = "g3"
[[grids]]
id = "g4"
[[modbus.connections]]
id = "acc"
kind = "tcp"
host = "127.0.0.1"
port = {modbus}
timeout_ms = 500
[[devices]]
id = "acc-b3"
grid = "g3"
category = "access"
modbus = {{ connection = "acc", unit = 1, profile = "access-controller", interval_ms = 1000 }}
[[devices]]
id = "acc-b4"
grid = "g4"
category = "access"
modbus = {{ connection = "acc", unit = 2, profile = "access-controller", interval_ms = 1000 }}
[[devices]]
id = "fd-b3"
grid = "g3"
category = "electrical"
points = [{{ name = "alarm_temperature", kind = "bool" }}]
{mqtt}
[rules]
builtin = false
dirs = [{rules:?}]

[[actions]]
id = "unlock_b3"
title = "3号楼疏散门解锁"
device = "acc-b3"
kind = "modbus"
points = ["lock_1", "lock_2"]
value = 1
allowed = [0, 1]
rules = ["linkage.fire_unlock"]
role = "supervisor"
readback_ms = 2000
"#,
        mqtt = numbers_over_mqtt(mqtt)
    )
}

#[test]
fn a_fire_alarm_unlocks_its_building_once_however_it_chatters() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let units: Units = Arc::new(Mutex::new(HashMap::from([(1, Unit::default()), (2, Unit::default())])));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    rt.spawn(serve(listener, units.clone(), stop.clone()));
    let broker = Mosquitto::start("");
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("linkage.rhai"), RULE).unwrap();
    let gw = Gateway::start(&config(broker.port, port, rules.path()));
    let p = Publisher::connect(broker.port, "fd");
    let writes = |unit: u8| units.lock().unwrap().get(&unit).map(|u| u.writes.clone()).unwrap_or_default();
    // The subscription is up once a first reading is seen.
    wait_until(Duration::from_secs(10), "the detector's first reading", || {
        p.publish("park/g3/fd-b3/alarm_temperature", 1, "0");
        gw.point("fd-b3", "alarm_temperature").map(|_| ())
    });
    p.publish("park/g3/fd-b3/alarm_temperature", 1, "1");
    let found = (0..100).find_map(|_| {
        let a = gw.json("/api/v1/actions");
        let r = a["recent"].as_array().and_then(|r| r.iter().find(|x| x["action"] == "unlock_b3").cloned());
        if r.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    });
    let done = found.unwrap_or_else(|| {
        panic!(
            "no unlock action within 10 s; incidents: {}\nactions: {}\nlog:\n{}",
            gw.json("/api/v1/incidents"),
            gw.json("/api/v1/actions"),
            gw.log()
        )
    });
    assert_eq!((done["state"].as_str(), done["trigger"].as_str()), (Some("done"), Some("rule")), "{done}");
    assert_eq!(done["read_back"], json!([1.0, 1.0]));
    // Building 3's two lock coils, once each; building 4's controller untouched.
    assert_eq!(writes(1), [(Table::Coil, 0, vec![1]), (Table::Coil, 1, vec![1])]);
    assert!(writes(2).is_empty());
    // The outcome is on the incident's history.
    let id = done["incident"].as_i64().unwrap();
    let incident = gw.json(&format!("/api/v1/incidents/{id}"));
    assert!(incident.to_string().contains("Linkage unlock_b3: done"), "{incident}");

    // The alarm chatters ten times: the episode's one raise already acted.
    for i in 0..10 {
        p.publish("park/g3/fd-b3/alarm_temperature", 1, if i % 2 == 0 { "0" } else { "1" });
        std::thread::sleep(Duration::from_millis(100));
    }
    p.publish("park/g3/fd-b3/alarm_temperature", 1, "1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writes(1).len(), 2, "the chattering alarm wrote again: {:?}", writes(1));
    let recent = gw.json("/api/v1/actions")["recent"].as_array().cloned().unwrap_or_default();
    assert_eq!(recent.iter().filter(|r| r["action"] == "unlock_b3").count(), 1, "{recent:?}");

    // By hand: a value outside the allowed set is refused and nothing written; 0 relocks.
    let (status, body) = gw.post("/api/v1/actions/unlock_b3", &json!({ "value": 5, "reason": "drill" })).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not one of the allowed values"), "{body}");
    let (status, body) =
        gw.post("/api/v1/actions/unlock_b3", &json!({ "value": 0, "reason": "relock after the drill" })).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["read_back"], json!([0.0, 0.0]));
    assert_eq!(writes(1).len(), 4);
    let metrics = http_metrics(&gw);
    assert!(metrics.contains("parkwatch_actions_total{outcome=\"done\"} 2"), "{metrics}");
    assert!(metrics.contains("parkwatch_actions_total{outcome=\"refused\"} 1"), "{metrics}");
    // A controller that ignores the command: the read-back fails the action within its deadline and
    // an incident of its own says so.
    units.lock().unwrap().get_mut(&1).unwrap().ignore_writes = true;
    let (status, body) = gw.post("/api/v1/actions/unlock_b3", &json!({ "value": 1, "reason": "drill" })).unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("read-back mismatch"), "{body}");
    let failed = wait_until(Duration::from_secs(5), "the action-failed incident", || {
        let open = gw.json("/api/v1/incidents");
        open.as_array()?.iter().find(|i| i["rule"] == "system.linkage.action_failed").cloned()
    });
    assert!(failed["message"].as_str().unwrap_or_default().contains("unlock_b3"), "{failed}");
    // About the controller, in its grid: the grid's people see it.
    assert_eq!((failed["device"].as_str(), failed["grid"].as_str()), (Some("acc-b3"), Some("g3")), "{failed}");
    stop.cancel();
}

fn http_metrics(gw: &Gateway) -> String {
    gw.get("/metrics").map(|(_, b)| b).unwrap_or_default()
}
