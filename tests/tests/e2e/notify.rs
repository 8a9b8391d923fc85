//! Notifications end to end: an incident raised from MQTT reaches a webhook that is down at first,
//! exactly once, across a SIGKILL of the gateway in between.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parkwatch_e2e::{free_port, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::Value;

/// A webhook receiver on `port`: records the idempotency key and body of every request, answers 200.
fn receiver(port: u16) -> Arc<Mutex<Vec<(String, Value)>>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut len, mut key) = (0usize, String::new());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "idempotency-key" => key = v.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            s.lock().unwrap().push((key, serde_json::from_slice(&body).unwrap()));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        }
    });
    seen
}

fn deliveries(gw: &Gateway) -> Vec<Value> {
    gw.json("/api/v1/notifications").as_array().cloned().unwrap_or_default()
}

#[test]
fn a_notification_queued_while_the_receiver_is_down_arrives_once_across_a_sigkill() {
    let broker = Mosquitto::start("");
    let hook = free_port();
    let config = format!(
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
points = [{{ name = "residual_current", unit = "mA" }}]

{source}
[notify]
base_url = "http://park.lan"
path = "notify.db"

[[notify.receivers]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:{hook}/hook"

[[notify.routes]]
receivers = ["hook"]
group_wait = "0s"
"#,
        source = parkwatch_e2e::numbers_over_mqtt(broker.port)
    );
    let mut gw = Gateway::start(&config);
    let p = Publisher::connect(broker.port, "notify-test");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish("park/g1/m1/residual_current", 0, "100");
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current")
    });
    p.publish("park/g1/m1/residual_current", 0, "350");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let queued = loop {
        let list = deliveries(&gw);
        if let Some(d) = list.iter().find(|d| d["status"] == "retrying") {
            break d.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery failing while the receiver is down: {list:?}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let incident = queued["incidents"][0].as_i64().unwrap();
    let shown = gw.json(&format!("/api/v1/incidents/{incident}"));
    assert_eq!(shown["deliveries"][0]["key"], queued["key"], "{shown}");

    assert!(!gw.signal("KILL").success());
    let seen = receiver(hook);
    gw.restart();
    let delivered = wait_until(Duration::from_secs(60), "the delivery after the restart", || {
        deliveries(&gw).into_iter().find(|d| d["status"] == "delivered")
    });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (key, body) = &seen[0];
    assert_eq!(key, queued["key"].as_str().unwrap());
    assert_eq!(delivered["key"], queued["key"]);
    assert_eq!(body["idempotency_key"], queued["key"]);
    assert_eq!(body["incident_ids"], serde_json::json!([incident]));
    assert!(body["text"].as_str().unwrap().contains(&format!("http://park.lan/#/incidents/{incident}")), "{body}");
    assert_eq!(deliveries(&gw).len(), 1, "one delivery in all");
    assert_eq!(gw.metric("parkwatch_notify_sent_total{receiver=\"hook\"}"), Some(1.0));
}

#[test]
fn an_mqtt_receiver_gets_the_on_duty_officer_and_the_plan_steps_at_qos_1() {
    use parkwatch_e2e::Subscriber;
    let broker = Mosquitto::start("");
    let config = format!(
        r#"
[site]
id = "t"
timezone = "Asia/Shanghai"
safety_manager = "zhou"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"
name = "北区"
supervisor = "wang"
officers = ["zhang"]

[[people]]
id = "zhou"
name = "周敏"
mobile = "13800000001"

[[people]]
id = "wang"
name = "王强"
mobile = "13800000002"

[[people]]
id = "zhang"
name = "张伟"
mobile = "13800000011"

[[plans]]
id = "electrical-fire"
title = "电气火灾应急处置"
steps = ["到现场确认", "断开上级断路器"]

[[devices]]
id = "m1"
name = "1号配电柜"
grid = "g1"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}]

{source}
[notify]
base_url = "http://park.lan"
path = "notify.db"

[[notify.receivers]]
id = "screen"
kind = "mqtt"
broker = "local"
topic = "notify/{{site}}/{{grid}}/{{severity}}"
people = ["on_duty"]

[[notify.routes]]
receivers = ["screen"]
group_wait = "0s"
"#,
        source = parkwatch_e2e::numbers_over_mqtt(broker.port)
    );
    let gw = Gateway::start(&config);
    let screen = Subscriber::connect(broker.port, "control-room", "notify/#");
    let p = Publisher::connect(broker.port, "notify-mqtt-test");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish("park/g1/m1/residual_current", 0, "100");
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current")
    });
    p.publish("park/g1/m1/residual_current", 0, "350");
    let (topic, payload, retained) =
        wait_until(Duration::from_secs(30), "the notification on MQTT", || screen.seen().into_iter().next());
    let body: Value = serde_json::from_str(&payload).unwrap();
    let severity = body["incidents"][0]["severity"].as_str().unwrap().to_owned();
    assert_eq!(topic, format!("notify/t/g1/{severity}"));
    assert!(!retained);
    assert_eq!(body["reason"], "firing");
    assert!(body["idempotency_key"].as_str().unwrap().starts_with("pw-t-"), "{body}");
    // No roster: every officer of the grid is on duty.
    assert_eq!(body["recipients"][0]["name"], "张伟", "{body}");
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("设备：1号配电柜"), "{text}");
    assert!(text.contains("350 mA"), "{text}");
    assert!(text.ends_with("处置预案：电气火灾应急处置\n1. 到现场确认\n2. 断开上级断路器"), "{text}");
    let delivered = wait_until(Duration::from_secs(10), "the delivery recorded", || {
        deliveries(&gw).into_iter().find(|d| d["status"] == "delivered")
    });
    assert_eq!(delivered["receiver"], "screen");
    assert_eq!(gw.metric("parkwatch_notify_sent_total{receiver=\"screen\"}"), Some(1.0));
}

#[test]
fn notify_test_sends_through_the_real_channel_and_answers_in_chinese_first() {
    let hook = free_port();
    let seen = receiver(hook);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.toml");
    std::fs::write(
        &file,
        format!(
            "[site]\nid = \"t\"\nname = \"测试园区\"\n[[grids]]\nid = \"g1\"\n[notify]\n[[notify.receivers]]\nid = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook}/hook\"\n[[notify.receivers]]\nid = \"down\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\n",
            free_port()
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let out = parkwatch_e2e::parkwatch_cli(&["notify", "test", "-c", config, "--receiver", "hook"], "");
    assert_eq!(out.trim(), "hook：测试消息已送达");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1["reason"], "test");
    assert!(got[0].1["text"].as_str().unwrap().contains("测试园区 通知通道工作正常"), "{:?}", got[0].1);
    let out = parkwatch_e2e::parkwatch_cli(&["notify", "test", "-c", config, "--receiver", "hook", "--lang", "en"], "");
    assert_eq!(out.trim(), "hook: delivered");
    // A receiver that does not answer, and one that is not configured: exit 1 with the reason.
    let run = |args: &[&str]| {
        let o = std::process::Command::new(parkwatch_e2e::gateway_bin()).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = run(&["notify", "test", "-c", config, "--receiver", "down"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("down：未送达，可稍后重试"), "{err}");
    let (code, err) = run(&["notify", "test", "-c", config, "--receiver", "ghost", "--lang", "en"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("receiver \"ghost\" is not in") && err.contains("configured receivers: hook, down"), "{err}");
}
