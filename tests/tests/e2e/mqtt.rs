//! MQTT ingestion through a real Mosquitto into the gateway's point state.

use std::time::Duration;

use parkwatch_e2e::{now_ms, wait_for_count, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::json;

fn config(port: u16, extra: &str) -> String {
    format!(
        r#"
[site]
id = "t"

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
points = [{{ name = "ua", unit = "V" }}, {{ name = "ia", unit = "A" }}, {{ name = "rc", unit = "mA" }}]

[[devices]]
id = "ww1"
grid = "g2"
category = "water"
points = [{{ name = "ph" }}]

[[devices]]
id = "door1"
grid = "g1"
category = "access"

[[devices]]
id = "sink"
grid = "g2"
category = "other"
points = [{points}]

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {port}
client_id = "parkwatch-test"
reconnect_min_ms = 100
reconnect_max_ms = 500

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/meter/{{device}}/telemetry"
timestamp = {{ pointer = "/ts", unit = "ms" }}
fields = [{{ point = "ua", pointer = "/u" }}, {{ point = "ia", pointer = "/i", scale = 0.01 }}, {{ point = "rc", optional = true }}]
max_payload_bytes = 1024

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/{{device}}/{{point}}"
format = "number"

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/access/{{device}}/event"
format = "event"

[[mqtt.subscriptions]]
broker = "local"
topic = "seq/{{point}}"
device = "sink"
format = "number"
{extra}
"#,
        points = (0..200).map(|i| format!("{{ name = \"p{i}\" }}")).collect::<Vec<_>>().join(", ")
    )
}

fn value_is(gw: &Gateway, device: &str, point: &str, expected: serde_json::Value) {
    wait_until(Duration::from_secs(10), &format!("{device}/{point} = {expected}"), || {
        (gw.point(device, point) == Some(expected.clone())).then_some(())
    });
}

#[test]
fn telemetry_numbers_and_events_reach_point_state() {
    let broker = Mosquitto::start("");
    let mut gw = Gateway::start(&config(broker.port, ""));
    wait_until(Duration::from_secs(10), "the gateway to connect", || {
        (gw.metric("parkwatch_mqtt_connected{broker=\"local\"}") == Some(1.0)).then_some(())
    });
    let publisher = Publisher::connect(broker.port, "test-pub");
    let ts = now_ms() - 1500;
    publisher.publish("park/g1/meter/m1/telemetry", 1, json!({"ts": ts, "u": 229.7, "i": 1250, "rc": 35}).to_string());
    publisher.publish("park/g2/ww1/ph", 1, "7.25");
    publisher.publish("park/g1/access/door1/event", 1, json!({"event": "card_denied", "card": "C001"}).to_string());

    value_is(&gw, "m1", "ua", json!(229.7));
    value_is(&gw, "m1", "ia", json!(12.5));
    value_is(&gw, "m1", "rc", json!(35.0));
    value_is(&gw, "ww1", "ph", json!(7.25));
    let points = gw.json("/api/v1/points?device=m1");
    assert_eq!(points[0]["ts_ns"], json!(ts * 1_000_000), "the payload's timestamp is kept");
    assert_eq!(points[0]["grid"], "g1");
    let events = wait_until(Duration::from_secs(10), "the event", || {
        let e = gw.json("/api/v1/events");
        (!e.as_array().unwrap().is_empty()).then_some(e)
    });
    assert_eq!(events[0]["kind"], "card_denied");
    assert_eq!(events[0]["device"], "door1");
    assert_eq!(events[0]["attributes"], json!({"card": "C001"}));
    assert_eq!(gw.json("/api/v1/points?grid=g2").as_array().unwrap().len(), 1);
    assert_eq!(
        gw.metric(
            "parkwatch_mqtt_samples_total{broker=\"local\",subscription=\"park/{grid}/meter/{device}/telemetry\"}"
        ),
        Some(3.0)
    );

    // SIGTERM: a clean stop with exit code 0.
    let status = gw.signal("TERM");
    assert!(status.success(), "exit status {status}:\n{}", gw.log());
    assert!(gw.log().contains("Stopped."), "{}", gw.log());
}

#[test]
fn bad_input_is_counted_and_ingestion_goes_on() {
    let broker = Mosquitto::start("");
    let gw = Gateway::start(&config(broker.port, ""));
    wait_until(Duration::from_secs(10), "the gateway to connect", || {
        (gw.metric("parkwatch_mqtt_connected{broker=\"local\"}") == Some(1.0)).then_some(())
    });
    let p = Publisher::connect(broker.port, "test-bad");
    let now = now_ms();
    let tele = "park/g1/meter/m1/telemetry";
    let cases: Vec<(&str, String, &str)> = vec![
        (tele, "{\"ts\": 1, \"u\": ".into(), "malformed_json"),
        (tele, json!({"ts": now, "i": 100}).to_string(), "missing_field"),
        (tele, json!({"ts": now, "u": "high", "i": 100}).to_string(), "wrong_type"),
        (tele, json!({"ts": now, "u": "NaN", "i": 100}).to_string(), "non_finite"),
        (tele, format!("{{\"ts\": {now}, \"u\": 1, \"i\": 1, \"pad\": \"{}\"}}", "x".repeat(2000)), "too_large"),
        ("park/g1/meter/m404/telemetry", json!({"ts": now, "u": 1, "i": 1}).to_string(), "unknown_device"),
        (tele, json!({"ts": now + 86_400_000, "u": 1, "i": 1}).to_string(), "timestamp_future"),
        (tele, json!({"ts": now - 30 * 86_400_000_i64, "u": 1, "i": 1}).to_string(), "timestamp_past"),
        ("park/g2/ww1/ph", "inf".into(), "non_finite"),
        ("park/g2/ww1/ph", "seven".into(), "malformed_number"),
        ("park/g1/ww1/ph", "7".into(), "grid_mismatch"),
        ("park/g1/access/door1/event", json!({"card": "x"}).to_string(), "missing_field"),
    ];
    for (topic, payload, _) in &cases {
        p.publish(topic, 1, payload.clone());
    }
    p.publish(tele, 1, json!({"ts": now_ms(), "u": 231.0, "i": 500}).to_string());
    p.publish("park/g2/ww1/ph", 1, "6.9");
    value_is(&gw, "m1", "ua", json!(231.0));
    value_is(&gw, "ww1", "ph", json!(6.9));

    let sub_of = |topic: &str| match topic {
        t if t.ends_with("/telemetry") => "park/{grid}/meter/{device}/telemetry",
        t if t.ends_with("/event") => "park/{grid}/access/{device}/event",
        _ => "park/{grid}/{device}/{point}",
    };
    let mut expected = std::collections::BTreeMap::new();
    for (topic, _, reason) in &cases {
        *expected.entry((sub_of(topic), *reason)).or_insert(0.0) += 1.0;
    }
    for ((sub, reason), n) in &expected {
        let series =
            format!("parkwatch_mqtt_rejects_total{{broker=\"local\",subscription=\"{sub}\",reason=\"{reason}\"}}");
        assert_eq!(gw.metric(&series), Some(*n), "{series}");
    }
    let rejects = gw.json("/api/v1/rejects");
    let reasons: Vec<&str> = rejects.as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), cases.len(), "{rejects}");
    for (_, _, reason) in &cases {
        assert!(reasons.contains(reason), "{reason} missing from {reasons:?}");
    }
    let first = rejects.as_array().unwrap().last().unwrap();
    assert_eq!(first["topic"], tele);
    assert!(first["detail"].as_str().unwrap().contains("EOF"), "{first}");
    assert_eq!(gw.point("m1", "ia"), Some(json!(5.0)));
}

#[test]
fn qos1_persistent_session_survives_sigkill() {
    let broker = Mosquitto::start("");
    let mut gw = Gateway::start(&config(broker.port, ""));
    wait_until(Duration::from_secs(10), "the gateway to connect", || {
        (gw.metric("parkwatch_mqtt_connections_total{broker=\"local\"}") == Some(1.0)).then_some(())
    });
    let p = Publisher::connect(broker.port, "test-seq");
    p.publish("seq/p0", 1, "0");
    value_is(&gw, "sink", "p0", json!(0.0));

    // Killed without a chance to flush or say goodbye, while the publisher keeps going.
    let killed = gw.signal("KILL");
    assert!(!killed.success());
    for i in 1..200 {
        p.publish(&format!("seq/p{i}"), 1, i.to_string());
    }
    p.wait_acked(200);
    gw.restart();
    wait_until(Duration::from_secs(20), "every message published while down", || {
        // p0 was acknowledged before the kill, so only what came after is delivered again.
        let points = gw.json("/api/v1/points?device=sink");
        (points.as_array().unwrap().len() == 199).then_some(())
    });
    for i in [1, 57, 199] {
        assert_eq!(gw.point("sink", &format!("p{i}")), Some(json!(i as f64)));
    }
}

#[test]
fn back_pressure_slows_reading_and_drops_nothing() {
    let broker = Mosquitto::start("max_inflight_messages 100");
    // One batch in flight and at most 2 samples a batch: the core channel is always full.
    let gw = Gateway::start(&config(broker.port, "\n[core]\nchannel_batches = 1\nbatch_samples = 2\n"));
    wait_until(Duration::from_secs(10), "the gateway to connect", || {
        (gw.metric("parkwatch_mqtt_connected{broker=\"local\"}") == Some(1.0)).then_some(())
    });
    let p = Publisher::connect(broker.port, "test-burst");
    let n = 5000;
    for i in 0..n {
        p.publish("park/g1/meter/m1/telemetry", 1, json!({"ts": now_ms(), "u": i, "i": 1}).to_string());
    }
    p.wait_acked(n);
    // Slow on a loaded machine (one sample pair per batch), but it must keep moving and land exactly:
    // a duplicate (redelivery) or a loss would never reach the count.
    wait_for_count(
        "every sample of the burst",
        2.0 * n as f64,
        Duration::from_secs(20),
        Duration::from_secs(240),
        || gw.metric("parkwatch_core_samples_total"),
    );
    assert_eq!(
        gw.metric(
            "parkwatch_mqtt_messages_total{broker=\"local\",subscription=\"park/{grid}/meter/{device}/telemetry\"}"
        ),
        Some(n as f64)
    );
    value_is(&gw, "m1", "ua", json!((n - 1) as f64));
}
