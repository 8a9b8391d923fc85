//! DL/T 645-2007 meters on a serial line: a socat pseudo-terminal pair, the simulated meters on one
//! end (in this process), the real gateway reading the other end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parkwatch::sim::dlt645::{run_serial, SimMeter};
use parkwatch::source::dlt645::codec::{Address, Di};
use parkwatch_e2e::{wait_until, Gateway};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A socat pseudo-terminal pair; killed on drop.
struct Line {
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    socat: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Line {
    fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
        let socat = std::process::Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat is not installed (apt-get install -y socat)");
        wait_until(Duration::from_secs(5), "the pseudo-terminal pair", || (a.exists() && b.exists()).then_some(()));
        Self { a, b, socat, _dir: dir }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

/// Serves `meters` on `path` from a thread of this process until `stop`.
fn meters_on(path: &std::path::Path, meters: Vec<SimMeter>, stop: CancellationToken) {
    let path = path.display().to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            run_serial(&path, Arc::new(Mutex::new(meters)), stop).await.unwrap();
        });
    });
}

fn points(gw: &Gateway, device: &str) -> BTreeMap<String, Value> {
    gw.json(&format!("/api/v1/points?device={device}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["point"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

fn status(gw: &Gateway, device: &str) -> Value {
    let devices = gw.json("/api/v1/devices");
    devices.as_array().unwrap().iter().find(|d| d["id"] == device).unwrap()["dlt645"].clone()
}

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 300;
const BACKOFF_MAX_MS: u64 = 2000;

#[test]
fn meters_over_a_serial_line_values_refusals_and_a_dead_neighbour() {
    let line = Line::open();
    let stop = CancellationToken::new();
    let live = Address::parse("000000000161").unwrap();
    let mut meter = SimMeter::typical(live);
    // A negative current and power (export), to see the sign bit through the whole path.
    let fmt = |di: u32| parkwatch::source::dlt645::codec::known(Di(di)).unwrap().format;
    meter.values.insert(Di(0x0202_0300), (fmt(0x0202_0300), -3.5));
    meter.values.insert(Di(0x0203_0000), (fmt(0x0203_0000), -1.25));
    // The phase A voltage comes in an answer that says more frames follow (B1).
    meter.more.push(Di(0x0201_0100));
    let dead = SimMeter { dead: true, ..SimMeter::typical(Address::parse("000000000999").unwrap()) };
    meters_on(&line.b, vec![meter, dead], stop.clone());
    let config = format!(
        r#"
[site]
id = "t"
[api]
listen = "{{api}}"
[rules]
builtin = false
[[grids]]
id = "g1"
[[dlt645.buses]]
id = "rs485a"
kind = "serial"
path = {path:?}
baud = 9600
timeout_ms = {TIMEOUT_MS}
offline_after = 2
backoff_max_ms = {BACKOFF_MAX_MS}
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
[devices.dlt645]
bus = "rs485a"
address = "000000000161"
interval_ms = {INTERVAL_MS}
points = [
  {{ di = "00 01 00 00" }},
  {{ di = "02 01 01 00" }},
  {{ di = "02 02 03 00" }},
  {{ di = "02 03 00 00" }},
  {{ di = "02 06 00 00" }},
  {{ di = "04 00 01 01", name = "date", bytes = 4, decimals = 0, unwatched = "clock" }},
]
[[devices]]
id = "m9"
grid = "g1"
category = "electrical"
dlt645 = {{ bus = "rs485a", address = "000000000999", interval_ms = {INTERVAL_MS} }}
"#,
        path = line.a.display().to_string()
    );
    let gw = Gateway::start(&config);

    // Decoded values, each worked out from the simulated meter's BCD bytes.
    let v = wait_until(Duration::from_secs(10), "the meter's values", || {
        let v = points(&gw, "m1");
        (v.get("pf")?["quality"] == "good").then_some(v)
    });
    assert_eq!(v["energy"]["value"], 12345.67, "{v:?}");
    assert_eq!(v["energy"]["unit"], "kWh");
    assert_eq!(v["ua"]["value"], 229.8);
    assert_eq!(v["ua"]["unit"], "V");
    assert_eq!(v["ic"]["value"], -3.5);
    // −1.25 kW on the line (sign bit set), W as a point.
    assert_eq!(v["p"]["value"], -1250.0);
    assert_eq!(v["p"]["unit"], "W");
    assert_eq!(v["pf"]["value"], 0.962);
    for p in ["energy", "ua", "ic", "p", "pf"] {
        assert_eq!(v[p]["quality"], "good", "{p}");
    }

    // The identifier the meter does not hold: a bad point, and the error named where operators look.
    assert_eq!(v["date"]["quality"], "bad", "{v:?}");
    let m1 = status(&gw, "m1");
    assert_eq!(m1["online"], true, "{m1}");
    assert_eq!(m1["address"], "000000000161");
    assert!(m1["followups"].as_u64().unwrap() >= 1, "the B1 answers are counted: {m1}");
    assert!(m1["errors"]["abnormal"].as_u64().unwrap() >= 1, "{m1}");
    assert_eq!(m1["last_error"], "04 00 01 01 (date): abnormal answer (D1): 无请求数据 (no such data)");
    let events = gw.json("/api/v1/events?limit=500");
    let refused: Vec<&Value> = events.as_array().unwrap().iter().filter(|e| e["kind"] == "dlt645_abnormal").collect();
    assert_eq!(refused.len(), 1, "raised once, not every cycle: {refused:?}");
    assert_eq!(refused[0]["attributes"]["error"], "无请求数据 (no such data)");
    assert_eq!(refused[0]["attributes"]["di"], "04 00 01 01");
    assert!(gw.metric("parkwatch_dlt645_abnormal_total{device=\"m1\",bus=\"rs485a\"}").unwrap() >= 1.0);

    // The dead neighbour: offline, and once its backoff is at the cap, it costs the live meter at most
    // one timeout per backoff period. Measured over a window well past the ramp (2^n × 200 ms ≥ 2 s
    // after 4 failures, about 3.3 s from the start).
    wait_until(Duration::from_secs(10), "the dead meter offline", || {
        (status(&gw, "m9")["online"] == false && status(&gw, "m9")["errors"]["timeout"].as_u64()? >= 4).then_some(())
    });
    let offline = gw.json("/api/v1/events?limit=500");
    assert!(offline.as_array().unwrap().iter().any(|e| e["kind"] == "offline" && e["device"] == "m9"), "{offline}");
    let health = gw.json("/api/v1/health");
    let bus = health["components"].as_array().unwrap().iter().find(|c| c["component"] == "dlt645:rs485a").cloned();
    let bus = bus.unwrap_or_else(|| panic!("no dlt645:rs485a in {health}"));
    assert_eq!((bus["status"].as_str(), bus["reason"].as_str()), (Some("degraded"), Some("offline: m9")), "{bus}");
    let t0 = Instant::now();
    let dead0 = status(&gw, "m9")["errors"]["timeout"].as_u64().unwrap();
    let live0 = status(&gw, "m1")["values"].as_u64().unwrap();
    // The live meter's readings, by their timestamps.
    let mut stamps: Vec<i64> = Vec::new();
    while t0.elapsed() < Duration::from_secs(8) {
        let ts = points(&gw, "m1")["ua"]["ts_ns"].as_i64().unwrap();
        if stamps.last() != Some(&ts) {
            stamps.push(ts);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let window = t0.elapsed();
    let dead = status(&gw, "m9")["errors"]["timeout"].as_u64().unwrap() - dead0;
    let live = status(&gw, "m1")["values"].as_u64().unwrap() - live0;
    let periods = window.as_millis() as u64 / BACKOFF_MAX_MS;
    assert!(dead <= periods + 1, "{dead} timeouts of the dead meter in {window:?} ({periods} backoff periods)");
    assert!(dead >= 1, "the dead meter is still tried");
    // The live meter keeps its pace: five values a cycle, a cycle every 200 ms except those the
    // timeouts took (each at most one cycle plus the timeout).
    let cycles = live / 5;
    let expected = window.as_millis() as u64 / INTERVAL_MS;
    let lost = dead * (1 + TIMEOUT_MS.div_ceil(INTERVAL_MS));
    assert!(
        cycles + lost + 2 >= expected,
        "{cycles} cycles of the live meter in {window:?}, {dead} timeouts next to it"
    );
    let gaps: Vec<i64> = stamps.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    let worst = gaps.iter().copied().max().unwrap_or(0);
    // A gap is one interval, or one interval plus one timeout when the dead meter's turn came.
    assert!(
        worst <= (INTERVAL_MS + TIMEOUT_MS + 150) as i64,
        "longest gap between the live meter's readings {worst} ms: {gaps:?}"
    );
    let long = gaps.iter().filter(|&&g| g > (INTERVAL_MS + 100) as i64).count() as u64;
    // The first gap starts at the reading before the window, so a timeout just before it may show.
    assert!(long <= dead + 1, "{long} delayed readings, {dead} timeouts: {gaps:?}");
    let overruns = status(&gw, "m1")["overruns"].as_u64().unwrap();
    println!(
        "dead neighbour: {dead} timeouts in {window:?}; live meter {cycles} cycles (of {expected}), longest gap {worst} ms, {overruns} overruns in all"
    );
    stop.cancel();
}

#[test]
fn a_meter_alone_on_its_line_is_found_by_its_address() {
    let line = Line::open();
    let stop = CancellationToken::new();
    meters_on(&line.b, vec![SimMeter::typical(Address::parse("201901020304").unwrap())], stop.clone());
    let config = format!(
        r#"
[site]
id = "t"
[api]
listen = "{{api}}"
[rules]
builtin = false
[[grids]]
id = "g1"
[[dlt645.buses]]
id = "p2p"
kind = "serial"
path = {path:?}
timeout_ms = 300
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
dlt645 = {{ bus = "p2p", interval_ms = 300 }}
"#,
        path = line.a.display().to_string()
    );
    let gw = Gateway::start(&config);
    let v = wait_until(Duration::from_secs(10), "the discovered meter's values", || {
        let v = points(&gw, "m1");
        (v.get("pf")?["quality"] == "good").then_some(v)
    });
    assert_eq!(v["ub"]["value"], 230.4);
    assert_eq!(v["ia"]["value"], 12.345);
    assert_eq!(status(&gw, "m1")["address"], "201901020304");
    assert!(gw.log().contains("DL/T 645 meter address read."), "{}", gw.log());
    stop.cancel();
}
