//! Alarm rules end to end: MQTT in, incidents out, across restarts, with broken packs next to good ones.

use std::time::{Duration, Instant};

use parkwatch_e2e::{now_ms, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::{json, Value};

fn config(port: u16, rules: &str) -> String {
    let source = parkwatch_e2e::numbers_over_mqtt(port);
    format!(
        r#"
[site]
id = "t"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}, {{ name = "x" }}]

{source}
[rules]
{rules}
"#
    )
}

fn incidents(gw: &Gateway, query: &str) -> Vec<Value> {
    gw.json(&format!("/api/v1/incidents{query}")).as_array().cloned().unwrap_or_default()
}

fn rfc3339_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn publish_rc(p: &Publisher, v: f64) {
    p.publish("park/g1/m1/residual_current", 0, v.to_string());
}

#[test]
fn residual_current_raises_one_incident_that_survives_a_restart() {
    let broker = Mosquitto::start("");
    let mut gw = Gateway::start(&config(broker.port, "builtin = true"));
    let p = Publisher::connect(broker.port, "rc-test");
    wait_until(Duration::from_secs(10), "the subscription", || {
        publish_rc(&p, 100.0);
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current")
    });

    // Past 300 mA: one critical incident once the 3 s on-delay is over, not later than 100 ms after it.
    let sent = now_ms();
    publish_rc(&p, 350.0);
    let started = Instant::now();
    let raised = wait_until(Duration::from_secs(10), "the residual-current incident", || {
        let open = incidents(&gw, "?state=open&category=electrical");
        (!open.is_empty()).then_some(open)
    });
    assert_eq!(raised.len(), 1, "{raised:?}");
    let inc = &raised[0];
    assert_eq!(inc["rule"], "electrical.residual_current");
    assert_eq!(inc["severity"], "critical");
    assert_eq!(inc["device"], "m1");
    assert_eq!(inc["value"], 350.0);
    let delay = rfc3339_ms(inc["raised_at"].as_str().unwrap()) - sent;
    assert!((3000..=3100).contains(&delay), "raised {delay} ms after the sample (on-delay 3000 ms)");
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = inc["id"].as_i64().unwrap();

    // Oscillating inside the hysteresis band (clear below 220 mA): no new incident, still active.
    for v in [230.0, 290.0, 225.0, 299.0, 260.0, 305.0, 240.0] {
        publish_rc(&p, v);
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_until(Duration::from_secs(5), "the last sample", || {
        (gw.point("m1", "residual_current") == Some(json!(240.0))).then_some(())
    });
    let all = incidents(&gw, "?category=electrical");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["state"], "active_unacked");
    assert_eq!(all[0]["peak"], 350.0);

    // Restart with the condition still true: the same incident, still active, no second one.
    assert!(gw.signal("TERM").success());
    gw.restart();
    wait_until(Duration::from_secs(10), "the restarted gateway", || {
        publish_rc(&p, 320.0);
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current")
    });
    std::thread::sleep(Duration::from_millis(3500));
    let all = incidents(&gw, "?category=electrical");
    assert_eq!(all.len(), 1, "a second incident after restart: {all:?}");
    assert_eq!(all[0]["id"], id);
    assert_eq!(all[0]["state"], "active_unacked");

    // Cleared, then acknowledged by an officer: closed, with the whole history.
    publish_rc(&p, 100.0);
    wait_until(Duration::from_secs(5), "the return to normal", || {
        let i = gw.json(&format!("/api/v1/incidents/{id}"));
        (i["state"] == "returned_unacked").then_some(())
    });
    let (status, body) = gw.post(&format!("/api/v1/incidents/{id}/ack"), &json!({"note": "breaker checked"})).unwrap();
    assert_eq!(status, 200, "{body}");
    let i: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(i["state"], "normal");
    assert_eq!(i["acked_by"], "token:e2e", "the authenticated caller is recorded");
    let kinds: Vec<&str> = i["history"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["raised", "returned", "acked", "closed", "comment"], "{i}");
    let (status, _) = gw.post(&format!("/api/v1/incidents/{id}/ack"), &json!({})).unwrap();
    assert_eq!(status, 409, "acknowledging a closed incident is a conflict");
    let (status, _) = gw.post("/api/v1/incidents/999/ack", &json!({})).unwrap();
    assert_eq!(status, 404);
}

const GOOD: &str = r#"rule(#{ id: "t.good", category: "equipment", severity: "minor", watch: #{ points: ["x"] },
    condition: |ctx| ctx.value > 10.0 });"#;
const LOOPING: &str = r#"rule(#{ id: "t.loop", category: "equipment", severity: "minor", watch: #{ points: ["x"] },
    condition: |ctx| { let n = 0; loop { n += 1; } } });"#;
const FAILING: &str = r#"rule(#{ id: "t.fail", category: "equipment", severity: "minor", watch: #{ points: ["x"] },
    condition: |ctx| ctx.get("no_such_point") > 1.0 });"#;
const BROKEN: &str = r#"rule(#{ id: "t.broken", category: "equipment" severity: "minor" "#;

#[test]
fn broken_packs_are_reported_and_the_other_rules_keep_running() {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    for (name, text) in [("good.rhai", GOOD), ("loop.rhai", LOOPING), ("fail.rhai", FAILING), ("broken.rhai", BROKEN)] {
        std::fs::write(rules.join(name), text).unwrap();
    }
    let gw = Gateway::start(&config(
        broker.port,
        &format!("builtin = false\nreload_secs = 1\ndirs = [{:?}]", rules.display().to_string()),
    ));
    let p = Publisher::connect(broker.port, "broken-test");
    let report = wait_until(Duration::from_secs(10), "the rules report", || {
        let r = gw.json("/api/v1/rules");
        (r["rules"].as_array()?.len() == 3).then_some(r)
    });
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(errors[0]["pack"].as_str().unwrap().ends_with("broken.rhai"));
    assert!(errors[0]["message"].as_str().unwrap().contains("syntax error"), "{report}");

    wait_until(Duration::from_secs(10), "the good rule's incident", || {
        p.publish("park/g1/m1/x", 0, "20");
        std::thread::sleep(Duration::from_millis(100));
        incidents(&gw, "?state=open").iter().find(|i| i["rule"] == "t.good").cloned()
    });
    let system: Vec<String> =
        incidents(&gw, "?category=system").iter().map(|i| i["message"].as_str().unwrap().to_owned()).collect();
    assert!(system.iter().any(|m| m.contains("broken.rhai")), "{system:?}");
    assert!(system.iter().any(|m| m.contains("\"t.loop\"") && m.contains("operations")), "{system:?}");
    assert!(system.iter().any(|m| m.contains("\"t.fail\"") && m.contains("no_such_point")), "{system:?}");
    let report = gw.json("/api/v1/rules");
    let by_id = |id: &str| report["rules"].as_array().unwrap().iter().find(|r| r["id"] == id).cloned().unwrap();
    assert_eq!(by_id("t.loop")["disabled_sources"], 1);
    assert_eq!(by_id("t.fail")["errors"], 1);

    // The good rule still runs: the value drops, its alarm returns.
    p.publish("park/g1/m1/x", 0, "5");
    wait_until(Duration::from_secs(5), "the good rule to return", || {
        incidents(&gw, "?state=returned_unacked").iter().find(|i| i["rule"] == "t.good").map(|_| ())
    });

    // A reload that fails keeps the running rules and says why; a fixed pack loads.
    std::fs::write(rules.join("good.rhai"), "rule(#{ id: ").unwrap();
    let (status, body) = gw.post("/api/v1/rules/reload", &json!({})).unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(gw.json("/api/v1/rules")["rules"].as_array().unwrap().len(), 3);
    assert!(incidents(&gw, "?category=system")
        .iter()
        .any(|i| i["message"].as_str().unwrap().contains("reload failed")));
    std::fs::write(rules.join("good.rhai"), GOOD).unwrap();
    std::fs::remove_file(rules.join("broken.rhai")).unwrap();
    std::fs::remove_file(rules.join("loop.rhai")).unwrap();
    // Noticed by the directory watch (every second), no request needed.
    wait_until(Duration::from_secs(10), "the fixed packs to load", || {
        let r = gw.json("/api/v1/rules");
        (r["rules"].as_array()?.len() == 2 && r["errors"].as_array()?.is_empty()).then_some(())
    });
    assert!(gw.log().contains("Rules reloaded."));
}
