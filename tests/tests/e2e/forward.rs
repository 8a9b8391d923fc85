//! Forwarding to a real store (VictoriaMetrics over the InfluxDB v2 write API) through the outbox.

use std::time::Duration;

use parkwatch_e2e::{wait_until, Gateway, Mosquitto, Publisher, Victoria};
use serde_json::json;

fn config(mqtt: u16, store: &str, extra: &str) -> String {
    format!(
        r#"
[site]
id = "xh"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"

[[devices]]
id = "配电柜A1"
grid = "g1"
category = "electrical"
tags = {{ building = "B 11, east=wing", voltage = "380" }}
points = [{{ name = "ua", unit = "V" }}, {{ name = "ia", unit = "A" }}, {{ name = "p0" }}, {{ name = "p1" }}, {{ name = "p2" }}, {{ name = "p3" }}, {{ name = "p4" }}, {{ name = "p5" }}, {{ name = "p6" }}, {{ name = "p7" }}]

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt}
client_id = "parkwatch-fwd"
persistent_session = true
reconnect_min_ms = 100
reconnect_max_ms = 500

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/meter/{{device}}/telemetry"
qos = 1
timestamp = {{ pointer = "/ts", unit = "ms" }}

[rules]
builtin = false

[forward]
outbox = "outbox.db"
batch_ms = 200

[[forward.targets]]
id = "central"
url = "{store}"
org = "park"
bucket = "telemetry"
token = "not-checked-by-this-store"
retry_min_ms = 100
retry_max_ms = 1000
{extra}
"#
    )
}

const TOPIC: &str = "park/g1/meter/配电柜A1/telemetry";
/// Samples are an hour old, one millisecond apart: inside the accepted past, distinct in the store.
fn base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| parkwatch_e2e::now_ms() - 3_600_000)
}

fn message(i: i64) -> String {
    let mut m = json!({ "ts": base_ms() + i, "ua": 220.0 + (i % 100) as f64 / 10.0, "ia": i as f64 });
    for p in 0..8 {
        m[format!("p{p}")] = json!(i * 10 + p);
    }
    m.to_string()
}

#[test]
fn every_point_reaches_the_store_with_tags_field_and_time() {
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let gw = Gateway::start(&config(broker.port, &store.url(), ""));
    let p = Publisher::connect(broker.port, "fwd-pub");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish(TOPIC, 1, message(0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    for i in 1..50 {
        p.publish(TOPIC, 1, message(i));
    }
    let series = wait_until(Duration::from_secs(20), "50 samples of 10 points in the store", || {
        let s = store.export(r#"{__name__=~"electrical_.*"}"#);
        let n: usize = s.iter().map(|x| x["timestamps"].as_array().map_or(0, Vec::len)).sum();
        (s.len() == 10 && n == 500).then_some(s)
    });
    let ua = series.iter().find(|s| s["metric"]["__name__"] == "electrical_ua").expect("electrical_ua");
    assert_eq!(
        ua["metric"],
        json!({"__name__": "electrical_ua", "site": "xh", "grid": "g1", "device": "配电柜A1", "building": "B 11, east=wing", "voltage": "380"})
    );
    let ts: Vec<i64> = ua["timestamps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(ts, (0..50).map(|i| base_ms() + i).collect::<Vec<_>>());
    let values: Vec<f64> = ua["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(values, (0..50).map(|i| 220.0 + (i % 100) as f64 / 10.0).collect::<Vec<_>>());
    let p7 = series.iter().find(|s| s["metric"]["__name__"] == "electrical_p7").unwrap();
    assert_eq!(p7["values"][49].as_f64(), Some(497.0));
    let fwd = gw.json("/api/v1/forward");
    assert_eq!(fwd["targets"][0]["up"], true, "{fwd}");
    assert_eq!(fwd["targets"][0]["dead_letters"], 0);
    assert!(gw.metric("parkwatch_forward_lines_total{target=\"central\"}").unwrap() >= 50.0);
}

#[test]
fn an_outage_with_a_crash_loses_nothing() {
    // The broker keeps the gateway's unacknowledged QoS 1 messages while it is down.
    let broker = Mosquitto::start("max_inflight_messages 1000");
    let mut store = Victoria::reserve();
    let mut gw = Gateway::start(&config(broker.port, &store.url(), ""));
    let p = Publisher::connect(broker.port, "outage-pub");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish(TOPIC, 1, message(0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    // 10,000 messages × 10 points = 100,000 samples while the store is down; a crash half-way.
    const N: i64 = 10_000;
    for i in 1..N {
        p.publish(TOPIC, 1, message(i));
        if i == N / 2 {
            wait_until(Duration::from_secs(30), "some batches in the outbox", || {
                (gw.metric("parkwatch_outbox_committed_lines_total")? > 1000.0).then_some(())
            });
            let status = gw.signal("KILL");
            assert!(!status.success());
        }
    }
    p.wait_acked(N as usize);
    gw.restart();
    wait_until(Duration::from_secs(60), "the rest of the messages in the outbox", || {
        let lines = gw.metric("parkwatch_outbox_batches")?;
        (lines > 0.0 && gw.point("配电柜A1", "ia")? == json!((N - 1) as f64)).then_some(())
    });
    let backlog = gw.json("/api/v1/forward");
    assert!(backlog["targets"][0]["backlog_batches"].as_u64().unwrap() > 0, "{backlog}");
    assert!(backlog["targets"][0]["retries"].as_u64().unwrap() > 0, "the writer kept retrying: {backlog}");

    store.run();
    let (distinct, total) = wait_until(Duration::from_secs(120), "all 100,000 samples in the store", || {
        let (d, t) = store.count(r#"{__name__=~"electrical_.*"}"#);
        (d >= 100_000).then_some((d, t))
    });
    // Redelivered messages carried the same series and timestamps: they overwrote, nothing was added.
    assert_eq!(distinct, 100_000);
    assert_eq!(total, 100_000);
    let ia = store.export(r#"{__name__="electrical_ia"}"#);
    let values: Vec<i64> = ia[0]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as i64).collect();
    assert_eq!(values, (0..N).collect::<Vec<_>>());
    let ts: Vec<i64> = ia[0]["timestamps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(ts, (0..N).map(|i| base_ms() + i).collect::<Vec<_>>());
    wait_until(Duration::from_secs(30), "the outbox to empty", || {
        (gw.metric("parkwatch_outbox_batches")? == 0.0).then_some(())
    });
}
