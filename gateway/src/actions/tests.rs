//! The engine against a real Modbus TCP server on loopback (the simulated devices' server, whose
//! units log every write) and a real core holding the interlock readings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::metrics::Metrics;
use crate::model::pool::SamplePool;
use crate::model::{Batch, PointId, Sample};
use crate::source::modbus::plan::Table;

fn config_with(port: u16, extra: &str) -> Config {
    let text = format!(
        r#"
[site]
id = "p"
[[grids]]
id = "g3"
[[grids]]
id = "g4"
[[modbus.connections]]
id = "acc"
kind = "tcp"
host = "127.0.0.1"
port = {port}
[[devices]]
id = "acc-b3"
grid = "g3"
category = "access"
modbus = {{ connection = "acc", unit = 1, profile = "access-controller" }}
[[devices]]
id = "acc-b4"
grid = "g4"
category = "access"
modbus = {{ connection = "acc", unit = 2, profile = "access-controller" }}
[[devices]]
id = "fd-b3"
grid = "g3"
category = "electrical"
points = [{{ name = "alarm_temperature", kind = "bool" }}]

[[actions]]
id = "unlock_b3"
title = "Unlock the exits of building 3"
device = "acc-b3"
kind = "modbus"
points = ["lock_1", "lock_2"]
value = 1
allowed = [0, 1]
rules = ["linkage.fire_unlock"]
role = "supervisor"
rate_limit = {{ count = 3, per_secs = 60 }}
readback_ms = 1000

[[actions]]
id = "relock_b3"
device = "acc-b3"
kind = "modbus"
points = ["lock_1", "lock_2"]
value = 0
allowed = [0]
role = "supervisor"
cooldown_secs = 60
interlocks = [{{ device = "fd-b3", point = "alarm_temperature", op = "==", value = 0, max_age_secs = 30 }}]

[[actions]]
id = "unlock_b4_all"
device = "acc-b4"
kind = "modbus"
points = ["lock_1", "lock_2", "lock_3", "lock_4"]
allowed = [1]
role = "supervisor"
critical = true
confirm_secs = 1
{extra}"#
    );
    crate::config::from_str(&text, "t.toml".as_ref(), ".".as_ref()).unwrap()
}

struct Rig {
    actions: Actions,
    units: crate::sim::modbus::Units,
    batches: mpsc::Sender<Batch>,
    registry: Arc<Registry>,
    _audit: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn rig() -> Rig {
    rig_with("").await
}

async fn rig_with(extra: &str) -> Rig {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let units: crate::sim::modbus::Units = Arc::new(Mutex::new(HashMap::new()));
    {
        let mut u = units.lock().unwrap();
        u.insert(1, crate::sim::modbus::Unit::default());
        u.insert(2, crate::sim::modbus::Unit::default());
    }
    let stop = CancellationToken::new();
    tokio::spawn(crate::sim::modbus::serve(listener, units.clone(), stop.clone()));
    let config = Arc::new(config_with(port, extra));
    let registry = Arc::new(Registry::from_config(&config));
    let (tx, rx) = mpsc::channel(8);
    let core = crate::core::Core::new(
        registry.clone(),
        Arc::new(Metrics::new(vec![], vec![], 10)),
        Arc::new(SamplePool::default()),
        10,
    );
    let (core, _task) = crate::core::spawn(core, rx, None, None);
    let dir = tempfile::tempdir().unwrap();
    let (audit, _writer) = AuditLog::open(&dir.path().join("audit.db"), Default::default()).unwrap();
    let (actions, _engine) = start(config, registry.clone(), core, audit, stop.clone());
    Rig { actions, units, batches: tx, registry, _audit: dir, stop }
}

fn person(name: &str, role: Role, grids: Option<&[&str]>) -> Trigger {
    Trigger::Manual(Caller {
        name: name.into(),
        role,
        grids: grids.map(|g| g.iter().map(|s| (*s).to_owned()).collect()),
        source: "test".into(),
        reason: "fire drill".into(),
    })
}

fn writes(rig: &Rig, unit: u8) -> Vec<(Table, u16, Vec<u16>)> {
    rig.units.lock().unwrap().get(&unit).map(|u| u.writes.clone()).unwrap_or_default()
}

impl Rig {
    /// Feeds the detector's alarm point with `value` read `age_secs` ago.
    async fn detector(&self, value: f64, age_secs: i64, quality: Quality) {
        let d = self.registry.device_id("fd-b3").unwrap();
        let p = self.registry.point_of(d, "alarm_temperature").unwrap();
        let ts = now_ns() - age_secs * 1_000_000_000;
        self.batches.send(Batch::new(vec![Sample { point: PointId(p.0), quality, ts, value }], vec![])).await.unwrap();
        // The core applies batches in order; a query after it sees this one.
        let _ = self.actions.recent();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fire-unlock rule acting on `incident` now, at critical severity.
fn fire_unlock(incident: i64) -> Trigger {
    Trigger::Rule { rule: "linkage.fire_unlock".into(), incident, at: now_ns(), severity: "critical".into() }
}

#[tokio::test]
async fn a_permitted_action_writes_its_points_once_and_reads_them_back() {
    let rig = rig().await;
    let r = rig.actions.request("unlock_b3", None, fire_unlock(7)).await.unwrap();
    assert_eq!(r.state, State::Done, "{r:?}");
    assert_eq!(r.read_back, [1.0, 1.0]);
    assert_eq!((r.incident, r.grid.as_str()), (Some(7), "g3"));
    // Building 3's lock coils only, each once; building 4's controller untouched.
    assert_eq!(writes(&rig, 1), [(Table::Coil, 0, vec![1]), (Table::Coil, 1, vec![1])]);
    assert!(writes(&rig, 2).is_empty());
    // By hand, as a supervisor of g3, with a reason.
    let r = rig.actions.request("unlock_b3", Some(1.0), person("li", Role::Supervisor, Some(&["g3"]))).await.unwrap();
    assert_eq!(r.state, State::Done, "{r:?}");
    assert_eq!(rig.actions.recent().len(), 2);
    assert_eq!(rig.actions.metrics.done.load(Relaxed), 2);
}

#[tokio::test]
async fn every_unsafe_request_is_refused_with_its_reason_and_nothing_is_written() {
    let rig = rig().await;
    let sup = || person("li", Role::Supervisor, None);
    let cases: Vec<(&str, Option<f64>, Trigger, &str)> = vec![
        ("open_everything", Some(1.0), sup(), "is not declared"),
        ("unlock_b3", Some(2.0), sup(), "is not one of the allowed values"),
        ("unlock_b3", Some(1.0), person("wang", Role::Officer, None), "role officer may not trigger"),
        ("unlock_b3", Some(1.0), person("zhao", Role::Supervisor, Some(&["g4"])), "outside the caller's grids"),
        (
            "unlock_b3",
            None,
            Trigger::Rule {
                rule: "electrical.overload".into(),
                incident: 1,
                at: now_ns(),
                severity: "critical".into(),
            },
            "may not trigger this action",
        ),
        (
            "unlock_b3",
            Some(1.0),
            Trigger::Manual(Caller {
                reason: " ".into(),
                ..match sup() {
                    Trigger::Manual(c) => c,
                    _ => unreachable!(),
                }
            }),
            "a reason is required",
        ),
        // No reading of the interlock's point yet.
        ("relock_b3", Some(0.0), sup(), "has no reading"),
    ];
    for (action, value, trigger, why) in cases {
        let r = rig.actions.request(action, value, trigger).await.unwrap();
        assert_eq!(r.state, State::Refused, "{action}: {r:?}");
        assert!(r.detail.contains(why), "{action}: {:?} should say {why:?}", r.detail);
    }
    // A stale interlock input, then one of bad quality, then one that does not hold.
    rig.detector(0.0, 120, Quality::Good).await;
    let r = rig.actions.request("relock_b3", None, sup()).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("is stale"), "{r:?}");
    rig.detector(0.0, 0, Quality::Bad).await;
    let r = rig.actions.request("relock_b3", None, sup()).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("quality"), "{r:?}");
    rig.detector(1.0, 0, Quality::Good).await;
    let r = rig.actions.request("relock_b3", None, sup()).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("does not hold"), "{r:?}");
    assert!(writes(&rig, 1).is_empty() && writes(&rig, 2).is_empty(), "nothing may have been written");
    // Fresh and true: done; the cool-down then refuses the next.
    rig.detector(0.0, 0, Quality::Good).await;
    let r = rig.actions.request("relock_b3", None, sup()).await.unwrap();
    assert_eq!(r.state, State::Done, "{r:?}");
    let r = rig.actions.request("relock_b3", None, sup()).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("cooling down"), "{r:?}");
    // Rate limit: three per minute, the fourth refused.
    for _ in 0..3 {
        assert_eq!(rig.actions.request("unlock_b3", None, sup()).await.unwrap().state, State::Done);
    }
    let before = writes(&rig, 1).len();
    let r = rig.actions.request("unlock_b3", None, sup()).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("rate limit"), "{r:?}");
    assert_eq!(writes(&rig, 1).len(), before);
}

#[tokio::test]
async fn a_device_that_ignores_the_write_fails_the_action_within_the_deadline() {
    let rig = rig().await;
    rig.units.lock().unwrap().get_mut(&1).unwrap().ignore_writes = true;
    let t = Instant::now();
    let r = rig.actions.request("unlock_b3", None, fire_unlock(3)).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(1_000), "within readback_ms");
    assert_eq!(r.state, State::Failed, "{r:?}");
    assert!(r.detail.contains("read-back mismatch") && r.detail.contains("lock_1 reads 0"), "{r:?}");
    assert_eq!(rig.actions.metrics.failed.load(Relaxed), 1);
    // A dead unit: the deadline, then failed.
    {
        let mut u = rig.units.lock().unwrap();
        let unit = u.get_mut(&1).unwrap();
        unit.ignore_writes = false;
        unit.dead = true;
    }
    let t = Instant::now();
    let r = rig.actions.request("unlock_b3", None, fire_unlock(3)).await.unwrap();
    assert_eq!(r.state, State::Failed, "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_critical_action_waits_for_a_second_person_and_expires_without_one() {
    let rig = rig().await;
    let r = rig.actions.request("unlock_b4_all", None, person("li", Role::Supervisor, None)).await.unwrap();
    // Without a value given and none declared: refused. With one: waiting.
    assert_eq!(r.state, State::Refused, "{r:?}");
    let r = rig.actions.request("unlock_b4_all", Some(1.0), person("li", Role::Supervisor, None)).await.unwrap();
    assert_eq!(r.state, State::AwaitingConfirmation, "{r:?}");
    let caller = |name: &str, role| match person(name, role, None) {
        Trigger::Manual(c) => c,
        Trigger::Rule { .. } => unreachable!(),
    };
    // The one who asked cannot confirm; an officer may not.
    let c = rig.actions.confirm(r.id, caller("li", Role::Supervisor)).await.unwrap();
    assert!(c.state == State::AwaitingConfirmation && c.detail.contains("someone other"), "{c:?}");
    let c = rig.actions.confirm(r.id, caller("wang", Role::Officer)).await.unwrap();
    assert!(c.state == State::AwaitingConfirmation && c.detail.contains("confirmation refused"), "{c:?}");
    assert!(writes(&rig, 2).is_empty());
    let c = rig.actions.confirm(r.id, caller("zhang", Role::SafetyManager)).await.unwrap();
    assert_eq!((c.state, c.confirmed_by.as_deref()), (State::Done, Some("zhang")), "{c:?}");
    assert_eq!(writes(&rig, 2).len(), 4);
    // Nobody confirms the next one: expired after confirm_secs, nothing written.
    let r = rig.actions.request("unlock_b4_all", Some(1.0), person("li", Role::Supervisor, None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let kept = rig.actions.recent();
    let last = kept.iter().find(|x| x.id == r.id && x.state == State::Expired);
    assert!(last.is_some(), "{kept:?}");
    let c = rig.actions.confirm(r.id, caller("zhang", Role::SafetyManager)).await.unwrap();
    assert!(c.detail.contains("not awaiting confirmation"), "{c:?}");
    assert_eq!(writes(&rig, 2).len(), 4);
}

/// A one-connection-at-a-time HTTP receiver answering `status`; the requests it read (head and body).
fn receiver(status: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            while let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if n == 0 || text.contains("\r\n\r\n") && text.contains("}") {
                    break;
                }
            }
            log.lock().unwrap().push(String::from_utf8_lossy(&got).to_string());
            let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

#[tokio::test]
async fn an_http_action_calls_the_system_and_fails_on_another_status() {
    let (ok, seen) = receiver(200);
    let (bad, _) = receiver(500);
    let extra = format!(
        r#"
[[actions]]
id = "camera_preset"
device = "acc-b3"
kind = "http"
method = "POST"
url = "http://127.0.0.1:{ok}/cameras/3/preset/{{value}}"
body = '{{"action": "{{action}}", "reason": "{{reason}}"}}'
allowed = [2]
role = "officer"
readback_ms = 2000
[[actions]]
id = "camera_broken"
device = "acc-b3"
kind = "http"
url = "http://127.0.0.1:{bad}/preset"
allowed = [1]
role = "officer"
"#
    );
    let rig = rig_with(&extra).await;
    let r =
        rig.actions.request("camera_preset", Some(2.0), person("wang", Role::Officer, Some(&["g3"]))).await.unwrap();
    assert_eq!(r.state, State::Done, "{r:?}");
    let got = seen.lock().unwrap().join("\n");
    assert!(got.starts_with("POST /cameras/3/preset/2 HTTP/1.1"), "{got}");
    assert!(got.contains(r#"{"action": "camera_preset", "reason": "fire drill"}"#), "{got}");
    let r = rig.actions.request("camera_broken", Some(1.0), person("wang", Role::Officer, None)).await.unwrap();
    assert!(r.state == State::Failed && r.detail.contains("answered 500, expected 200"), "{r:?}");
}

#[test]
fn action_ids_are_filled_from_the_device() {
    let tags = std::collections::BTreeMap::from([("building".to_owned(), "B3".to_owned())]);
    assert_eq!(fill_template("unlock_exits_{building}", "fd-1", "g3", &tags).as_deref(), Some("unlock_exits_B3"));
    assert_eq!(fill_template("trip_{device}_{grid}", "fd-1", "g3", &tags).as_deref(), Some("trip_fd-1_g3"));
    assert_eq!(fill_template("plain", "d", "g", &tags).as_deref(), Some("plain"));
    assert_eq!(fill_template("unlock_{tenant}", "d", "g", &tags), None);
    assert_eq!(fill_template("broken_{building", "d", "g", &tags), None);
}

#[tokio::test]
async fn a_rule_acts_only_at_the_action_s_severity_and_only_while_fresh() {
    let extra = r#"
[[actions]]
id = "trip_feeder_fd-b3"
device = "acc-b4"
kind = "modbus"
points = ["lock_3"]
value = 1
allowed = [1]
rules = ["electrical.cable_temperature"]
min_severity = "critical"
"#;
    let rig = rig_with(extra).await;
    let rule = |severity: &str, age_secs: i64| Trigger::Rule {
        rule: "electrical.cable_temperature".into(),
        incident: 9,
        at: now_ns() - age_secs * 1_000_000_000,
        severity: severity.into(),
    };
    let r = rig.actions.request("trip_feeder_fd-b3", None, rule("warning", 0)).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("needs critical"), "{r:?}");
    let r = rig.actions.request("trip_feeder_fd-b3", None, rule("critical", 120)).await.unwrap();
    assert!(r.state == State::Refused && r.detail.contains("at most 60 s old"), "{r:?}");
    assert!(writes(&rig, 2).is_empty());
    let r = rig.actions.request("trip_feeder_fd-b3", None, rule("critical", 0)).await.unwrap();
    assert_eq!(r.state, State::Done, "{r:?}");
    assert_eq!(writes(&rig, 2), [(Table::Coil, 2, vec![1])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_command_is_correlated_with_its_reply_and_fails_without_one() {
    let mqtt_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broker = crate::config::EmbeddedBroker {
        embedded: true,
        listen: format!("127.0.0.1:{mqtt_port}").parse().unwrap(),
        ..Default::default()
    };
    std::thread::spawn(move || crate::broker::start(&broker));
    // A device that answers commands on park/cmd/gate-1 with the correlation id they carry.
    let mut o = rumqttc::MqttOptions::new("gate-1", "127.0.0.1", mqtt_port);
    o.set_keep_alive(Duration::from_secs(5));
    let (device, mut conn) = rumqttc::Client::new(o, 8);
    device.subscribe("park/cmd/gate-1", rumqttc::QoS::AtLeastOnce).unwrap();
    let answering = device.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let cmd: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    let reply = serde_json::json!({ "id": cmd["id"], "ok": true }).to_string();
                    let _ = answering.publish("park/reply/gate-1", rumqttc::QoS::AtLeastOnce, false, reply);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    let extra = format!(
        r#"
[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt_port}
[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/{{device}}/{{point}}"
format = "number"
[[actions]]
id = "open_gate"
device = "acc-b3"
kind = "mqtt"
broker = "local"
topic = "park/cmd/gate-1"
payload = '{{"id": "{{correlation}}", "cmd": "open", "value": {{value}}}}'
reply_topic = "park/reply/gate-1"
allowed = [1]
role = "officer"
readback_ms = 3000
[[actions]]
id = "open_silent_gate"
device = "acc-b3"
kind = "mqtt"
broker = "local"
topic = "park/cmd/gate-2"
payload = '{{"id": "{{correlation}}"}}'
reply_topic = "park/reply/gate-2"
allowed = [1]
role = "officer"
readback_ms = 1000
"#
    );
    let rig = rig_with(&extra).await;
    // The device's subscription is in place once a command of its own comes back.
    let mut answered = None;
    for _ in 0..50 {
        let r = rig.actions.request("open_gate", Some(1.0), person("wang", Role::Officer, None)).await.unwrap();
        if r.state == State::Done {
            answered = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = answered.expect("the gate never answered");
    assert!(r.detail.contains("the device answered") && r.detail.contains(&format!("pw-{}-", r.id)), "{r:?}");
    let t = Instant::now();
    let r = rig.actions.request("open_silent_gate", Some(1.0), person("wang", Role::Officer, None)).await.unwrap();
    assert!(r.state == State::Failed && r.detail.contains("no correlated reply"), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
}
