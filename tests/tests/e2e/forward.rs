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

#[test]
fn retries_do_as_told() {
    use parkwatch_e2e::{Fault, FaultProxy};
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let proxy = FaultProxy::start(store.url(), vec![Fault::TooMany(1), Fault::Status(503, "starting up")]);
    let gw = Gateway::start(&config(broker.port, &proxy.url(), ""));
    let p = Publisher::connect(broker.port, "retry-pub");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish(TOPIC, 1, message(0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    // Later batches, in groups a little apart so they are separate writes.
    for group in 0..5 {
        for i in 1..=20 {
            p.publish(TOPIC, 1, message(group * 20 + i));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = wait_until(Duration::from_secs(30), "the writes after the faults", || {
        let seen = proxy.seen.lock().unwrap().clone();
        (seen.len() >= 4
            && seen.iter().skip(2).all(|s| s.status == 204)
            && gw.json("/api/v1/forward")["targets"][0]["backlog_batches"] == 0)
            .then_some(seen)
    });
    assert_eq!(seen.iter().take(2).map(|s| s.status).collect::<Vec<_>>(), [429, 503]);
    // 429 said "Retry-After: 1": the same batch came again no sooner.
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(950), "{:?}", seen[1].at - seen[0].at);
    assert_eq!(seen[0].body, seen[1].body, "the batch is retried, not skipped");
    assert_eq!(seen[1].body, seen[2].body);
    let fwd = gw.json("/api/v1/forward");
    let t = &fwd["targets"][0];
    assert_eq!(t["dead_letters"], 0, "{fwd}");
    assert!(t["retries"].as_u64().unwrap() >= 2);
    let ia = wait_until(Duration::from_secs(10), "every batch in the store", || {
        let s = store.export(r#"{__name__="electrical_ia"}"#);
        (s.first()?["values"].as_array()?.len() == 101).then(|| s[0].clone())
    });
    let stored: Vec<i64> = ia["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as i64).collect();
    assert_eq!(stored, (0..=100).collect::<Vec<_>>());
}

#[test]
fn a_refused_token_pauses_the_target_and_loses_nothing() {
    use parkwatch_e2e::{Fault, FaultProxy};
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    // 8 s of 401 (a token rotated centrally, then fixed); long enough for the writer's first pause
    // retry (5 s) to be refused too.
    let proxy =
        FaultProxy::start(store.url(), vec![Fault::StatusFor(401, "unauthorized access", Duration::from_secs(8))]);
    let gw = Gateway::start(&config(broker.port, &proxy.url(), ""));
    let p = Publisher::connect(broker.port, "paused-pub");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish(TOPIC, 1, message(0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    let paused = "parkwatch_forward_paused{target=\"central\"}";
    wait_until(Duration::from_secs(10), "the target to pause", || (gw.metric(paused)? == 1.0).then_some(()));
    let fwd = gw.json("/api/v1/forward");
    let status = fwd["targets"][0]["last_error"].as_str().unwrap().to_owned();
    assert_eq!(status, "paused: credentials: 401: unauthorized access", "{fwd}");
    assert_eq!(fwd["targets"][0]["up"], false);
    wait_until(Duration::from_secs(5), "/readyz 503 naming the paused target", || {
        let (status, body) = gw.get("/readyz").ok()?;
        (status == 503 && body.contains("target:central")).then_some(())
    });
    // Data keeps coming while the target is paused.
    for i in 1..50 {
        p.publish(TOPIC, 1, message(i));
    }
    let incident = wait_until(Duration::from_secs(10), "the system incident about the pause", || {
        gw.json("/api/v1/incidents?category=system")
            .as_array()?
            .iter()
            .find(|i| i["rule"] == "system.forward.paused")
            .cloned()
    });
    assert!(incident["message"].as_str().unwrap().contains("401: unauthorized access"), "{incident}");
    wait_until(Duration::from_secs(60), "50 samples of 10 points in the store", || {
        (store.count(r#"{__name__=~"electrical_.*"}"#).0 == 500).then_some(())
    });
    wait_until(Duration::from_secs(10), "the target to resume", || (gw.metric(paused)? == 0.0).then_some(()));
    wait_until(Duration::from_secs(5), "/readyz 200 again", || (gw.get("/readyz").ok()?.0 == 200).then_some(()));
    let seen = proxy.seen.lock().unwrap().clone();
    let refused: Vec<_> = seen.iter().filter(|s| s.status == 401).collect();
    assert!(refused.len() >= 2, "the store refused more than once: {}", refused.len());
    assert!(refused.iter().all(|s| s.body == refused[0].body), "the paused batch was kept, not skipped");
    let first_ok = seen.iter().find(|s| s.status == 204).unwrap();
    assert_eq!(first_ok.body, refused[0].body, "the same batch went first once the store accepted");
    assert!(first_ok.at - refused[0].at >= Duration::from_secs(8));
    let fwd = gw.json("/api/v1/forward");
    assert_eq!(fwd["targets"][0]["dead_letters"], 0, "{fwd}");
    assert_eq!(fwd["targets"][0]["up"], true, "{fwd}");
    let incidents = gw.json("/api/v1/incidents?category=system");
    let pauses = incidents.as_array().unwrap().iter().filter(|i| i["rule"] == "system.forward.paused").count();
    assert_eq!(pauses, 1, "one incident for one pause: {incidents}");
}

#[test]
fn a_refused_line_is_isolated_parked_and_replayed() {
    use parkwatch_e2e::{Fault, FaultProxy};
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let proxy = FaultProxy::start(store.url(), vec![Fault::RejectMarked("ia=987654", "unable to parse 'ia=987654'")]);
    let gw = Gateway::start(&config(broker.port, &proxy.url(), ""));
    let p = Publisher::connect(broker.port, "marked-pub");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish(TOPIC, 1, message(0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    // One burst at QoS 0 (nothing waits for an acknowledgement): one batch, one line in it marked.
    for i in 1..=40 {
        if i == 20 {
            p.publish(TOPIC, 0, json!({ "ts": base_ms() + i, "ua": 1.5, "ia": 987654.0 }).to_string());
        } else {
            p.publish(TOPIC, 0, message(i));
        }
    }
    wait_until(Duration::from_secs(30), "the batch to be settled", || {
        let t = &gw.json("/api/v1/forward")["targets"][0];
        (gw.point("配电柜A1", "ia")? == json!(40.0) && t["backlog_batches"] == 0 && t["dead_letters"] == 1)
            .then_some(())
    });
    let seen = proxy.seen.lock().unwrap().clone();
    let whole = seen.iter().find(|s| s.body.contains("ia=987654")).unwrap();
    let lines = whole.body.lines().count();
    assert!(lines > 1, "the marked line came in a batch with others: {}", whole.body);
    assert_eq!(whole.status, 400);
    // Every other line of that batch reached the store.
    let ia = wait_until(Duration::from_secs(10), "the other lines in the store", || {
        let s = store.export(r#"{__name__="electrical_ia"}"#);
        (s.first()?["values"].as_array()?.len() == 40).then(|| s[0].clone())
    });
    let stored: Vec<i64> = ia["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as i64).collect();
    assert_eq!(stored, (0..=40).filter(|i| *i != 20).collect::<Vec<_>>());
    let fwd = gw.json("/api/v1/forward");
    let letter = &fwd["targets"][0]["recent_dead_letters"][0];
    assert_eq!(letter["status"], 400, "{fwd}");
    assert_eq!(letter["message"], "unable to parse 'ia=987654'");
    assert_eq!(fwd["targets"][0]["recent_dead_letters"].as_array().unwrap().len(), 1);

    // The store is fixed; the dead letter goes again, while the gateway runs.
    proxy.clear();
    let config = gw.dir.path().join("parkwatch.toml");
    let out = std::process::Command::new(parkwatch_e2e::gateway_bin())
        .args(["forward", "replay", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("target \"central\": 1 dead letters, 1 lines,"), "{stdout}");
    wait_until(Duration::from_secs(30), "the replayed line in the store", || {
        let s = store.export(r#"{__name__="electrical_ia"}"#);
        let values = s.first()?["values"].as_array()?.clone();
        (values.len() == 41 && values.contains(&json!(987654))).then_some(())
    });
    let fwd = gw.json("/api/v1/forward");
    assert!(fwd["targets"][0]["recent_dead_letters"].as_array().unwrap().is_empty(), "{fwd}");
    // Nothing left: a second replay has nothing to do.
    let again = std::process::Command::new(parkwatch_e2e::gateway_bin())
        .args(["forward", "replay", "--dry-run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("dry run: 0 dead letters"));
}

#[test]
fn a_full_outbox_drops_the_oldest_telemetry_and_keeps_incidents() {
    let broker = Mosquitto::start("max_inflight_messages 1000");
    let store = Victoria::reserve();
    let dir = tempfile::tempdir().unwrap();
    // A rule that flickers on p0 (= 10·i): every 500th message raises, the next one returns.
    std::fs::write(
        dir.path().join("spike.rhai"),
        r#"rule(#{ id: "t.spike", category: "equipment", severity: "minor", watch: #{ points: ["p0"] },
                  condition: |ctx| ctx.value % 5000.0 == 0.0 });"#,
    )
    .unwrap();
    let dirs = format!("[rules]\nbuiltin = false\ndirs = [{:?}]\n", dir.path().display().to_string());
    let text = config(broker.port, &store.url(), "")
        .replace("[rules]\nbuiltin = false\n", &dirs)
        .replace("[forward]\n", "[forward]\nmax_outbox_bytes = 1048576\n");
    let gw = Gateway::start(&text);
    let p = Publisher::connect(broker.port, "full-pub");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish(TOPIC, 1, message(0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    const N: i64 = 20_000;
    for i in 1..N {
        p.publish(TOPIC, 1, message(i));
    }
    wait_until(Duration::from_secs(60), "every message in point state", || {
        (gw.point("配电柜A1", "ia")? == json!((N - 1) as f64)).then_some(())
    });
    let dropped = wait_until(Duration::from_secs(10), "the drop counter", || {
        gw.metric("parkwatch_outbox_dropped_batches_total").filter(|d| *d > 0.0)
    });
    assert!(dropped > 0.0);
    assert!(gw.metric("parkwatch_outbox_bytes").unwrap() <= 1_048_576.0);
    let system = wait_until(Duration::from_secs(10), "the system incident about the drop", || {
        gw.json("/api/v1/incidents?category=system")
            .as_array()?
            .iter()
            .find(|i| i["rule"] == "system.forward.dropped")
            .cloned()
    });
    assert!(system["message"].as_str().unwrap().contains("dropped"), "{system}");

    // Every incident change is still in the outbox, waiting for the store.
    let mut changes = 0;
    for i in gw.json("/api/v1/incidents?limit=1000").as_array().unwrap() {
        let full = gw.json(&format!("/api/v1/incidents/{}", i["id"]));
        changes += full["history"].as_array().unwrap().iter().filter(|h| !h["state"].is_null()).count();
    }
    assert!(changes >= 40, "only {changes} incident changes");
    let outbox = gw.dir.path().join("outbox.db");
    let cursor = parkwatch::forward::outbox::Cursor::open(&outbox, "central").unwrap();
    let (mut seq, mut incident_lines, mut telemetry_lines) = (0, 0, 0);
    while let Some(b) = cursor.next_after(seq, i64::MAX, 1 << 20).unwrap() {
        seq = b.seq;
        for l in String::from_utf8(b.body).unwrap().lines() {
            if l.starts_with("incident,") {
                incident_lines += 1;
            } else {
                telemetry_lines += 1;
            }
        }
    }
    assert_eq!(incident_lines, changes, "incident lines kept in the outbox");
    assert!(telemetry_lines < N, "the oldest telemetry went");
}

#[test]
fn incidents_and_status_reach_the_central_broker() {
    use parkwatch_e2e::Subscriber;
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("high.rhai"),
        r#"rule(#{ id: "t.high", category: "electrical", severity: "major", watch: #{ points: ["ia"] },
                  condition: |ctx| ctx.value > 100.0 });"#,
    )
    .unwrap();
    let dirs = format!("[rules]\nbuiltin = false\ndirs = [{:?}]\n", dir.path().display().to_string());
    let text = config(broker.port, &store.url(), "")
        .replace("[rules]\nbuiltin = false\n", &dirs)
        .replace("[forward]\n", "[forward]\nmqtt = { broker = \"local\" }\n");
    let mut gw = Gateway::start(&text);
    let p = Publisher::connect(broker.port, "central-pub");
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish(TOPIC, 1, message(1));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("配电柜A1", "ua")
    });
    let watcher = Subscriber::connect(broker.port, "central-watch", "parkwatch/xh/#");
    wait_until(Duration::from_secs(30), "the retained online status", || {
        watcher.seen().into_iter().find(|(t, m, r)| t == "parkwatch/xh/status" && *r && m.contains("online"))
    });
    p.publish(TOPIC, 1, message(200)); // ia = 200 > 100: raised
    let raised = wait_until(Duration::from_secs(30), "the incident on the central broker", || {
        watcher.seen().into_iter().find(|(t, _, _)| t == "parkwatch/xh/incidents/g1")
    });
    let inc: serde_json::Value = serde_json::from_str(&raised.1).unwrap();
    assert_eq!(inc["rule"], "t.high");
    assert_eq!(inc["state"], "active_unacked");
    assert_eq!(inc["change"], "raised");
    let id = inc["id"].as_i64().unwrap();
    let alarm_topic = format!("parkwatch/xh/alarms/{id}");
    wait_until(Duration::from_secs(30), "the retained active alarm", || {
        watcher.seen().into_iter().find(|(t, m, _)| *t == alarm_topic && !m.is_empty())
    });
    // Back to normal and acknowledged: the retained alarm is cleared.
    p.publish(TOPIC, 1, json!({ "ts": base_ms() + 300, "ia": 3.0 }).to_string());
    wait_until(Duration::from_secs(30), "the return", || {
        (gw.json(&format!("/api/v1/incidents/{id}"))["state"] == "returned_unacked").then_some(())
    });
    let (status, body) = gw.post(&format!("/api/v1/incidents/{id}/ack"), &json!({})).unwrap();
    assert_eq!(status, 200, "{body}");
    wait_until(Duration::from_secs(30), "the cleared retained alarm", || {
        watcher.seen().into_iter().find(|(t, m, _)| *t == alarm_topic && m.is_empty())
    });
    // The incident also reached the store.
    wait_until(Duration::from_secs(60), "the incident in the store", || {
        let s = store.export(r#"{__name__="incident_id"}"#);
        (s.first()?["metric"]["rule"] == "t.high").then_some(())
    });
    // A late subscriber sees no retained alarm for it, and the gateway says offline when it stops.
    assert!(gw.signal("TERM").success());
    wait_until(Duration::from_secs(30), "the offline status", || {
        watcher.seen().into_iter().find(|(t, m, _)| t == "parkwatch/xh/status" && m.contains("offline"))
    });
}
