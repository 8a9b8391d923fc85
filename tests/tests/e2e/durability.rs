//! Nothing acknowledged is lost: incident changes reach every sink from the incident store's change
//! log, poison messages cost one message, and failing storage stops acknowledgements instead of
//! dropping data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use parkwatch_e2e::{wait_until, Gateway, Mosquitto, Publisher, Subscriber, Victoria};
use serde_json::json;

/// Where the gateway under test keeps its state and what it subscribes with.
struct Setup<'a> {
    mqtt: u16,
    store: &'a str,
    rules_dir: &'a std::path::Path,
    grids: usize,
    devices: String,
    outbox: &'a str,
    incidents: &'a str,
    /// Extra keys of the subscription.
    subscription: &'a str,
}

/// A site config: one alarm rule pack directory, QoS 1 telemetry on `park/{grid}/meter/{device}/telemetry`,
/// forwarding to `store` and incidents to the central broker (the same Mosquitto).
fn site(s: &Setup<'_>) -> String {
    let grids: String = (1..=s.grids).map(|g| format!("[[grids]]\nid = \"g{g}\"\n")).collect();
    format!(
        r#"
[site]
id = "xh"

[api]
listen = "{{api}}"

{grids}
{devices}

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt}
client_id = "parkwatch-durable"
persistent_session = true
reconnect_min_ms = 100
reconnect_max_ms = 500

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/meter/{{device}}/telemetry"
qos = 1
timestamp = {{ pointer = "/ts", unit = "ms" }}
{subscription}

[rules]
builtin = false
dirs = [{rules:?}]

[incidents]
path = {incidents:?}

[forward]
outbox = {outbox:?}
batch_ms = 100
mqtt = {{ broker = "local" }}

[[forward.targets]]
id = "central"
url = "{store}"
org = "park"
bucket = "telemetry"
token = "t"
retry_min_ms = 100
retry_max_ms = 1000
"#,
        devices = s.devices,
        mqtt = s.mqtt,
        subscription = s.subscription,
        rules = s.rules_dir.display().to_string(),
        incidents = s.incidents,
        outbox = s.outbox,
        store = s.store,
    )
}

/// A park of `devices` meters with one point `ia` in four grids.
fn park(mqtt: u16, store: &str, devices: usize, rules_dir: &std::path::Path) -> String {
    let devices = (0..devices)
        .map(|d| {
            format!(
                "[[devices]]\nid = \"d{d:04}\"\ngrid = \"g{}\"\ncategory = \"electrical\"\npoints = [{{ name = \"ia\", unit = \"A\" }}]\n",
                d % 4 + 1
            )
        })
        .collect();
    site(&Setup {
        mqtt,
        store,
        rules_dir,
        grids: 4,
        devices,
        outbox: "outbox.db",
        incidents: "incidents.db",
        subscription: "",
    })
}

/// A Mosquitto with `extra` configuration, a VictoriaMetrics and a rules directory holding `t.high`.
fn peers(extra: &str) -> (Mosquitto, Victoria, tempfile::TempDir) {
    let broker = Mosquitto::start(extra);
    let store = Victoria::start();
    let rules = tempfile::tempdir().unwrap();
    high_rule(rules.path());
    (broker, store, rules)
}

fn high_rule(dir: &std::path::Path) {
    std::fs::write(
        dir.join("high.rhai"),
        r#"rule(#{ id: "t.high", category: "electrical", severity: "major", watch: #{ points: ["ia"] },
                  condition: |ctx| ctx.value > 100.0 });"#,
    )
    .unwrap();
}

fn topic(d: usize) -> String {
    format!("park/g{}/meter/d{d:04}/telemetry", d % 4 + 1)
}

/// Every committed change in the incident database: seq → (incident, kind, state).
fn changes_in_db(gw: &Gateway) -> BTreeMap<i64, (i64, String, String)> {
    let conn = rusqlite::Connection::open(gw.dir.path().join("incidents.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, incident, kind, state FROM incident_events WHERE kind != 'comment' ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get::<_, Option<String>>(3)?.unwrap_or_default()))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The `seq` field of every incident point in the store, one entry per stored point.
fn seqs_in_store(store: &Victoria) -> Vec<i64> {
    let mut out = Vec::new();
    for s in store.export(r#"{__name__="incident_seq"}"#) {
        for v in s["values"].as_array().into_iter().flatten() {
            out.push(v.as_f64().unwrap_or(-1.0) as i64);
        }
    }
    out.sort_unstable();
    out
}

/// Seqs of the changes published on central MQTT, in the order received.
fn seqs_on_mqtt(watcher: &Subscriber) -> Vec<i64> {
    watcher
        .seen()
        .iter()
        .filter(|(t, _, _)| t.starts_with("parkwatch/xh/incidents/"))
        .filter_map(|(_, m, _)| serde_json::from_str::<serde_json::Value>(m).ok()?["seq"].as_i64())
        .collect()
}

const DEVICES: usize = 1000;
const ROUNDS: usize = 20;

/// Publishes ROUNDS readings per device, alternating above and below the limit: every reading changes
/// its device's incident.
fn flip_all(p: &Publisher, base_ms: i64) {
    for r in 0..ROUNDS {
        for d in 0..DEVICES {
            let ia = if r % 2 == 0 { 200.0 } else { 3.0 };
            p.publish(&topic(d), 1, json!({ "ts": base_ms + r as i64, "ia": ia }).to_string());
        }
    }
}

fn wait_connected(gw: &Gateway, p: &Publisher) {
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish(&topic(0), 1, json!({ "ts": parkwatch_e2e::now_ms() - 3_600_000, "ia": 1.0 }).to_string());
        std::thread::sleep(Duration::from_millis(100));
        gw.point("d0000", "ia")
    });
}

/// Waits until every seq of `want` was received on central MQTT; on time-out, says which are missing
/// and what the gateway's publisher and the watcher report, so a failure points at its side.
fn wait_published(gw: &Gateway, watcher: &Subscriber, want: &[i64], timeout: Duration) -> Vec<i64> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = seqs_on_mqtt(watcher);
        let set: BTreeSet<i64> = got.iter().copied().collect();
        let missing: Vec<i64> = want.iter().copied().filter(|s| !set.contains(s)).collect();
        if missing.is_empty() {
            return got;
        }
        if std::time::Instant::now() > deadline {
            let log = gw.log();
            let central: Vec<&str> = log.lines().filter(|l| l.contains("Central MQTT")).take(20).collect();
            panic!(
                "timed out after {timeout:?} waiting for every change on central MQTT: {} of {} missing \
                 (first {:?}, last {:?}); received {} messages over {} connection(s); gateway: delivered {:?}, \
                 lag {:?}, connected {:?}; its central MQTT log:\n{}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(10)],
                missing.last(),
                got.len(),
                watcher.connects.load(std::sync::atomic::Ordering::SeqCst),
                gw.metric("parkwatch_central_mqtt_delivered_total"),
                gw.metric("parkwatch_central_mqtt_lag"),
                gw.metric("parkwatch_central_mqtt_connected"),
                central.join("\n"),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Checks that every committed change is its own point in the store and was published on central
/// MQTT (in order when `in_order`), and that the state is readable as a number.
fn assert_sinks_complete(gw: &Gateway, store: &Victoria, watcher: &Subscriber, in_order: bool) {
    let db = changes_in_db(gw);
    let want: Vec<i64> = db.keys().copied().collect();
    let stored = wait_until(Duration::from_secs(300), "every change as its own point in the store", || {
        let got = seqs_in_store(store);
        (got == want).then_some(got)
    });
    assert_eq!(stored.len(), db.len());
    let published = wait_published(gw, watcher, &want, Duration::from_secs(300));
    if in_order {
        assert!(published.windows(2).all(|w| w[0] < w[1]), "central MQTT changes in order, none twice");
    }
    wait_until(Duration::from_secs(30), "no lag on either sink", || {
        (gw.metric("parkwatch_central_mqtt_lag")? == 0.0 && gw.metric("parkwatch_outbox_incident_lag")? == 0.0)
            .then_some(())
    });
    let codes = store.export(r#"{__name__="incident_state_code"}"#);
    let values: BTreeSet<i64> = codes
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_f64().unwrap_or(-1.0) as i64)
        .collect();
    assert_eq!(values, BTreeSet::from([1, 3]), "active (1) and returned (3) stored as numbers");
}

#[test]
fn an_incident_storm_reaches_the_store_and_central_mqtt_change_by_change() {
    let (broker, store, rules) = peers("max_inflight_messages 1000");
    let gw = Gateway::start(&park(broker.port, &store.url(), DEVICES, rules.path()));
    let watcher = Subscriber::connect(broker.port, "central-watch", "parkwatch/xh/incidents/#");
    let p = Publisher::connect(broker.port, "storm-pub");
    wait_connected(&gw, &p);
    let started = std::time::Instant::now();
    flip_all(&p, parkwatch_e2e::now_ms() - 1_800_000);
    wait_until(Duration::from_secs(120), "every reading's change committed", || {
        let flips = changes_in_db(&gw).values().filter(|(_, kind, _)| kind != "chattering").count();
        (flips >= DEVICES * ROUNDS).then_some(())
    });
    let secs = started.elapsed().as_secs_f64();
    let db = changes_in_db(&gw);
    eprintln!("{} incident changes committed in {secs:.1} s ({:.0}/s)", db.len(), db.len() as f64 / secs);
    let flips = db.values().filter(|(_, kind, _)| kind != "chattering").count();
    assert_eq!(flips, DEVICES * ROUNDS, "one change per reading (plus chattering notices)");
    assert_sinks_complete(&gw, &store, &watcher, true);
}

#[test]
fn a_crash_in_an_incident_storm_loses_no_acknowledged_change() {
    let (broker, store, rules) = peers("max_inflight_messages 1000");
    let mut gw = Gateway::start(&park(broker.port, &store.url(), DEVICES, rules.path()));
    let watcher = Subscriber::connect(broker.port, "central-watch-2", "parkwatch/xh/incidents/#");
    let p = Publisher::connect(broker.port, "storm-pub-2");
    wait_connected(&gw, &p);
    flip_all(&p, parkwatch_e2e::now_ms() - 1_800_000);
    wait_until(Duration::from_secs(60), "the storm half way", || {
        (changes_in_db(&gw).len() >= DEVICES * ROUNDS / 2).then_some(())
    });
    assert!(gw.signal("KILL").code().is_none(), "killed");
    gw.restart();
    // Every reading was published before the crash; the broker delivers what was not acknowledged.
    // The last reading of every device is low, so every incident ends returned, and the history of
    // each device ends with that return.
    wait_until(Duration::from_secs(120), "every device's last reading applied", || {
        let db = changes_in_db(&gw);
        let mut last: BTreeMap<i64, String> = BTreeMap::new();
        for (incident, _, state) in db.values() {
            last.insert(*incident, state.clone());
        }
        let devices = gw.json("/api/v1/incidents?state=active_unacked&limit=1000");
        (devices.as_array().is_some_and(Vec::is_empty) && last.values().all(|s| s == "returned_unacked")).then_some(())
    });
    assert_sinks_complete(&gw, &store, &watcher, false);
}

#[test]
fn a_gateway_killed_before_its_first_central_delivery_publishes_every_change_after_restart() {
    // The central broker is down for the first run, so the publisher delivers nothing and has moved no
    // cursor when the gateway dies; the next run must continue from the first change, not take itself
    // for a new sink that starts near the head.
    let (broker, store, rules) = peers("max_inflight_messages 1000");
    let mut central = Mosquitto::start("max_inflight_messages 1000");
    central.stop();
    let config = park(broker.port, &store.url(), 300, rules.path()).replace(
        "mqtt = { broker = \"local\" }",
        &format!(
            "mqtt = {{ broker = \"central\" }}\n\n[[mqtt.brokers]]\nid = \"central\"\nhost = \"127.0.0.1\"\nport = {}\n\
             client_id = \"parkwatch-central\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n",
            central.port
        ),
    );
    let mut gw = Gateway::start(&config);
    let p = Publisher::connect(broker.port, "first-run-pub");
    wait_connected(&gw, &p);
    let base = parkwatch_e2e::now_ms() - 1_800_000;
    for r in 0..6 {
        for d in 0..300 {
            let ia = if r % 2 == 0 { 200.0 } else { 3.0 };
            p.publish(&topic(d), 1, json!({ "ts": base + r as i64, "ia": ia }).to_string());
        }
    }
    wait_until(Duration::from_secs(60), "1,800 changes committed", || {
        let flips = changes_in_db(&gw).values().filter(|(_, kind, _)| kind != "chattering").count();
        (flips >= 1800).then_some(())
    });
    assert!(gw.signal("KILL").code().is_none(), "killed");
    central.run();
    let watcher = Subscriber::connect(central.port, "central-first-run", "parkwatch/xh/incidents/#");
    gw.restart();
    let want: Vec<i64> = changes_in_db(&gw).keys().copied().collect();
    assert!(want.len() > 1000, "more changes than a new sink would start behind the head");
    wait_published(&gw, &watcher, &want, Duration::from_secs(120));
}

/// One meter with ten points; the outbox and the incident database at the paths given (relative ones
/// live in the test's directory).
fn meter(mqtt: u16, store: &str, outbox: &str, incidents: &str, rules_dir: &std::path::Path, extra: &str) -> String {
    let points: String = (0..9).map(|p| format!(", {{ name = \"p{p}\" }}")).collect();
    site(&Setup {
        mqtt,
        store,
        rules_dir,
        grids: 1,
        devices: format!(
            "[[devices]]\nid = \"m1\"\ngrid = \"g1\"\ncategory = \"electrical\"\npoints = [{{ name = \"ia\", unit = \"A\" }}{points}]\n"
        ),
        outbox,
        incidents,
        subscription: extra,
    })
}

fn reading(ts: i64, ia: f64) -> String {
    let mut m = json!({ "ts": ts, "ia": ia });
    for p in 0..9 {
        m[format!("p{p}")] = json!(ts % 1000 + p);
    }
    m.to_string()
}

const METER: &str = "park/g1/meter/m1/telemetry";

/// `Some(())` when `/readyz` says 503 naming `failed`, or 200 when `failed` is `None`.
fn ready(gw: &Gateway, failed: Option<&str>) -> Option<()> {
    let (status, body) = gw.get("/readyz").ok()?;
    match failed {
        Some(component) => (status == 503 && body.contains(&format!("\"{component}\""))).then_some(()),
        None => (status == 200).then_some(()),
    }
}

#[test]
fn a_full_outbox_disk_stops_acknowledgements_and_loses_nothing() {
    let (broker, store, rules) = peers("max_inflight_messages 1000");
    let disk = parkwatch_e2e::SmallDisk::mount(16 << 20);
    let outbox = disk.path.join("outbox.db");
    // Small batches: what the appender holds while the disk is full soon exceeds its bound, so the
    // rest is left unacknowledged for the broker to deliver again.
    let text = meter(broker.port, &store.url(), &outbox.display().to_string(), "incidents.db", rules.path(), "")
        .replace("batch_ms = 100", "batch_ms = 100\nbatch_lines = 50");
    let gw = Gateway::start(&text);
    let p = Publisher::connect(broker.port, "disk-pub");
    let base = parkwatch_e2e::now_ms() - 1_800_000;
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish(METER, 1, reading(base, 1.0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ia")
    });
    disk.fill();
    const N: i64 = 5_000;
    for i in 1..=N {
        p.publish(METER, 1, reading(base + i, 1.0));
    }
    wait_until(Duration::from_secs(30), "the outbox to fail", || {
        (gw.metric("parkwatch_outbox_failing") == Some(1.0)).then_some(())
    });
    let t0 = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "/readyz 503 naming the outbox", || ready(&gw, Some("outbox")));
    eprintln!("/readyz named the outbox {:?} after the failure was counted", t0.elapsed());
    // While the disk is full, what arrives still reaches point state (alarms keep working) but is not
    // acknowledged: the appender holds what fits in its bound and withdraws the acknowledgement of the
    // rest, so the broker keeps those (and, its in-flight window full, holds back the others).
    std::thread::sleep(Duration::from_secs(3));
    disk.free();
    wait_until(Duration::from_secs(60), "a new session to receive them again", || {
        (gw.metric("parkwatch_mqtt_redelivery_sessions_total{broker=\"local\"}")? > 0.0).then_some(())
    });
    let (distinct, _) = wait_until(Duration::from_secs(120), "every reading in the store", || {
        let c = store.count(r#"{__name__=~"electrical_.*"}"#);
        (c.0 >= (N as usize + 1) * 10).then_some(c)
    });
    assert_eq!(distinct, (N as usize + 1) * 10, "every acknowledged reading, every point");
    let unacked = gw.metric("parkwatch_mqtt_unacked_total{broker=\"local\"}").unwrap_or_default();
    assert!(unacked > 0.0, "some readings were left to the broker and delivered again");
    let incidents = gw.json("/api/v1/incidents?limit=100");
    let failing: Vec<_> =
        incidents.as_array().unwrap().iter().filter(|i| i["rule"] == "system.forward.outbox_failing").collect();
    assert_eq!(failing.len(), 1, "one system incident for the episode: {incidents}");
    let log = gw.log();
    let lines = log.lines().filter(|l| l.contains("outbox") && (l.contains("ERROR") || l.contains("WARN"))).count();
    assert!(lines <= 5, "bounded log lines about the outbox, got {lines}:\n{log}");
    assert_eq!(gw.metric("parkwatch_outbox_failing"), Some(0.0));
    wait_until(Duration::from_secs(5), "/readyz 200 again", || ready(&gw, None));
}

#[test]
fn a_full_incident_disk_keeps_the_incident_visible_and_delivers_it_when_space_returns() {
    let (broker, store, rules) = peers("");
    let disk = parkwatch_e2e::SmallDisk::mount(16 << 20);
    let incidents = disk.path.join("incidents.db");
    let gw = Gateway::start(&meter(
        broker.port,
        &store.url(),
        "outbox.db",
        &incidents.display().to_string(),
        rules.path(),
        "",
    ));
    let watcher = Subscriber::connect(broker.port, "incident-disk-watch", "parkwatch/xh/incidents/#");
    let p = Publisher::connect(broker.port, "incident-disk-pub");
    let base = parkwatch_e2e::now_ms() - 1_800_000;
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish(METER, 1, reading(base, 1.0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ia")
    });
    disk.fill();
    p.publish(METER, 1, reading(base + 1, 350.0));
    let shown = wait_until(Duration::from_secs(10), "the incident in the API at once", || {
        let list = gw.json("/api/v1/incidents?state=open");
        list.as_array()?.iter().find(|i| i["rule"] == "t.high").cloned()
    });
    assert_eq!(shown["persisted"], false, "{shown}");
    wait_until(Duration::from_secs(5), "/readyz 503 naming the incident store", || ready(&gw, Some("incidents")));
    assert!(seqs_on_mqtt(&watcher).is_empty(), "nothing is told before it is committed");
    std::thread::sleep(Duration::from_secs(2));
    disk.free();
    // No further change: the retry alone writes it, and both sinks get it.
    wait_until(Duration::from_secs(30), "the incident persisted", || {
        let list = gw.json("/api/v1/incidents?state=open");
        list.as_array()?.iter().find(|i| i["rule"] == "t.high" && i["persisted"] == true).cloned()
    });
    wait_until(Duration::from_secs(5), "/readyz 200 again", || ready(&gw, None));
    wait_until(Duration::from_secs(30), "the incident on central MQTT", || {
        (!seqs_on_mqtt(&watcher).is_empty()).then_some(())
    });
    wait_until(Duration::from_secs(30), "the incident in the store", || {
        let s = store.export(r#"{__name__="incident_state_code"}"#);
        (s.first()?["metric"]["rule"] == "t.high").then_some(())
    });
}

#[test]
fn poison_messages_cost_one_message_each() {
    // The broker must not drop queued QoS 1 messages itself (Mosquitto's default queue is 1,000):
    // what is measured is the gateway.
    let (broker, store, rules) = peers("max_queued_messages 0");
    let gw = Gateway::start(&meter(
        broker.port,
        &store.url(),
        "outbox.db",
        "incidents.db",
        rules.path(),
        "max_payload_bytes = 65536",
    ));
    let p = Publisher::connect(broker.port, "poison-pub");
    let base = parkwatch_e2e::now_ms() - 1_800_000;
    wait_until(Duration::from_secs(30), "the subscription", || {
        p.publish(METER, 1, reading(base, 1.0));
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "ia")
    });
    let connections = gw.metric("parkwatch_mqtt_connections_total{broker=\"local\"}").unwrap();
    let big = Publisher::connect_large(broker.port, "poison-big-pub");
    for (i, size) in [(1, 2 << 20), (2, 20 << 20)] {
        big.publish(METER, 1, vec![b'{'; size]);
        big.publish(METER, 1, reading(base + i, i as f64 + 0.5));
        wait_until(Duration::from_secs(1), "the next valid reading within 1 s", || {
            (gw.point("m1", "ia")?.as_f64()? == i as f64 + 0.5).then_some(())
        });
    }
    let too_large = gw.metric("parkwatch_mqtt_rejects_total{broker=\"local\",subscription=\"park/{grid}/meter/{device}/telemetry\",reason=\"too_large\"}");
    assert_eq!(too_large, Some(2.0), "one reject each");
    assert_eq!(gw.metric("parkwatch_mqtt_connections_total{broker=\"local\"}"), Some(connections), "no reconnect");
    // A flood of malformed messages for 30 s with a valid reading every 200 ms. Before the fix a
    // valid point went stale for more than 6 s; it must now apply within 3 s at worst even on a
    // loaded 2-core machine (typically well under 100 ms), and within 1 s at the median.
    let flood = std::thread::spawn({
        let port = broker.port;
        move || {
            let f = Publisher::connect(port, "flood-pub");
            let until = std::time::Instant::now() + Duration::from_secs(30);
            let mut n = 0u64;
            // 3,000 malformed messages a second, what a misconfigured fleet of devices sends; the
            // test binary is a debug build on a shared machine, so this is not a throughput test.
            let start = std::time::Instant::now();
            while std::time::Instant::now() < until {
                f.publish(METER, 1, b"{\"ts\": oops".to_vec());
                n += 1;
                if n.is_multiple_of(100) {
                    let due = start + Duration::from_micros(n * 333);
                    if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            n
        }
    });
    let mut worst = Duration::ZERO;
    let mut all = Vec::new();
    let start = std::time::Instant::now();
    let mut i = 10;
    while start.elapsed() < Duration::from_secs(30) {
        let sent = std::time::Instant::now();
        p.publish(METER, 1, reading(base + i, i as f64 + 0.5));
        loop {
            let seen = gw.point("m1", "ia").and_then(|v| v.as_f64());
            if seen == Some(i as f64 + 0.5) || sent.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        worst = worst.max(sent.elapsed());
        all.push(sent.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let flooded = flood.join().unwrap();
    all.sort();
    let median = all[all.len() / 2];
    eprintln!("{flooded} malformed messages in 30 s; staleness of a valid reading median {median:?}, worst {worst:?}");
    assert!(median <= Duration::from_secs(1), "a valid reading took {median:?} at the median to apply");
    assert!(worst <= Duration::from_secs(3), "a valid reading took {worst:?} to apply");
    assert!(flooded > 60_000, "the flood was a flood ({flooded})");
}
