//! Component health against real peers: `/readyz` follows a broker that dies and comes back, a forward
//! target that never answers goes from degraded to failed, and `parkwatch status` tells a person.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use parkwatch_e2e::{free_port, gateway_bin, http_get, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::Value;

fn config(mqtt: u16, forward: &str) -> String {
    format!(
        r#"
[site]
id = "xh"
timezone = "Asia/Shanghai"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{{ name = "ua", unit = "V" }}]

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt}
reconnect_min_ms = 100
reconnect_max_ms = 1000

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/meter/{{device}}/telemetry"
qos = 1

[rules]
builtin = false
{forward}
"#
    )
}

/// `/readyz`: status and body.
fn readyz(gw: &Gateway) -> (u16, Value) {
    let (status, body) = gw.get("/readyz").expect("GET /readyz");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The named component of `/api/v1/health`.
fn component(gw: &Gateway, name: &str) -> Value {
    let health = gw.json("/api/v1/health");
    health["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["component"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} is not in {health}"))
}

/// Runs `parkwatch status` against `gw` with its token: exit code and standard output.
fn status(gw: &Gateway, lang: &str) -> (i32, String) {
    let out = Command::new(gateway_bin())
        .args(["status", "--url", &format!("http://{}", gw.api), "--lang", lang])
        .env("PARKWATCH_TOKEN", &gw.token)
        .output()
        .expect("run parkwatch status");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn failed_names(body: &Value) -> Vec<String> {
    body["failed"].as_array().into_iter().flatten().filter_map(|f| f["component"].as_str().map(str::to_owned)).collect()
}

#[test]
fn readyz_follows_the_broker_down_and_back() {
    let mut broker = Mosquitto::start("");
    let gw = Gateway::start(&config(broker.port, ""));
    wait_until(Duration::from_secs(10), "/readyz to be 200 once connected", || (readyz(&gw).0 == 200).then_some(()));
    let c = component(&gw, "broker:local");
    assert_eq!(c["status"], "ok", "{c}");
    assert!(c["since"].as_str().unwrap().ends_with("+08:00"), "{c}");
    let (code, table) = status(&gw, "en");
    assert_eq!(code, 0, "{table}");
    let line = table.lines().find(|l| l.starts_with("broker:local")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains(" ok "), "{table}");

    broker.stop();
    let lost = Instant::now();
    let body = wait_until(Duration::from_secs(5), "/readyz to be 503 naming the broker", || {
        let (code, body) = readyz(&gw);
        (code == 503 && failed_names(&body) == ["broker:local"]).then_some(body)
    });
    assert!(lost.elapsed() < Duration::from_secs(5));
    assert!(body["failed"][0]["reason"].as_str().unwrap().starts_with("connection lost"), "{body}");
    assert_eq!(gw.metric("parkwatch_component_status{component=\"broker:local\"}"), Some(2.0));
    assert_eq!(gw.metric("parkwatch_up"), Some(1.0));
    // Liveness is not readiness: the process still serves.
    assert_eq!(http_get(gw.api, "/healthz").unwrap().0, 200);
    let (code, table) = status(&gw, "zh");
    assert_eq!(code, 2, "{table}");
    let line = table.lines().find(|l| l.starts_with("broker:local")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("故障") && line.contains("connection lost"), "{table}");

    broker.run();
    let back = Instant::now();
    wait_until(Duration::from_secs(5), "/readyz to be 200 again after the broker came back", || {
        (readyz(&gw).0 == 200).then_some(())
    });
    assert!(back.elapsed() < Duration::from_secs(5));
    assert_eq!(status(&gw, "en").0, 0);
    assert!(gw.log().contains("Component recovered."), "{}", gw.log());
}

#[test]
fn status_says_when_the_gateway_cannot_be_reached() {
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = Command::new(gateway_bin())
        .args(["status", "--url", &format!("http://{closed}"), "--lang", "en"])
        .output()
        .expect("run parkwatch status");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway"), "{out:?}");
}

#[test]
fn a_target_that_never_answers_is_degraded_then_failed() {
    let broker = Mosquitto::start("");
    // Nothing listens here: every write is refused.
    let forward = format!(
        r#"
[forward]
outbox = "outbox.db"
batch_ms = 100

[[forward.targets]]
id = "central"
url = "http://127.0.0.1:{}"
org = "park"
bucket = "telemetry"
retry_min_ms = 100
retry_max_ms = 1000
"#,
        free_port()
    );
    let gw = Gateway::start(&config(broker.port, &forward));
    let publisher = Publisher::connect(broker.port, "health-pub");
    wait_until(Duration::from_secs(10), "the broker connection", || (readyz(&gw).0 == 200).then_some(()));
    publisher.publish("park/g1/meter/m1/telemetry", 1, r#"{"ua": 230.5}"#);
    let first = wait_until(Duration::from_secs(10), "the target to be degraded", || {
        let c = component(&gw, "target:central");
        (c["status"] == "degraded").then_some(c)
    });
    assert!(first["reason"].as_str().unwrap().starts_with("retrying: "), "{first}");
    // Degraded is still ready: the data waits in the outbox.
    assert_eq!(readyz(&gw).0, 200);
    let failed = wait_until(Duration::from_secs(75), "the target to be failed", || {
        let c = component(&gw, "target:central");
        (c["status"] == "failed").then_some(c)
    });
    let failing_for = failed["since_ns"].as_i64().unwrap() - first["since_ns"].as_i64().unwrap();
    // The 60 s are measured on the monotonic clock; `since_ns` is wall time read separately, so the
    // two stamps may differ from the monotonic interval by a read or two (155 ns was seen).
    assert!(
        failing_for > 60_000_000_000 - 1_000_000,
        "failed after only {failing_for} ns of retrying: {first} {failed}"
    );
    assert!(failed["reason"].as_str().unwrap().starts_with("no successful write for over 60 s"), "{failed}");
    let (code, body) = readyz(&gw);
    assert_eq!((code, failed_names(&body)), (503, vec!["target:central".to_owned()]), "{body}");
    assert_eq!(status(&gw, "en").0, 2);
}
