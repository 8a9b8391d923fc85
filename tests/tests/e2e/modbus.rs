//! Modbus TCP polling against a real Modbus TCP server on loopback (tokio-modbus server side).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parkwatch::sim::modbus::{serve, Unit, Units};
use parkwatch::source::modbus::decode::DataType;
use parkwatch::source::modbus::plan::Table;
use parkwatch::source::modbus::profile;
use parkwatch_e2e::{wait_until, Gateway};
use serde_json::Value;

/// A profile with every data type and byte order.
const TYPES: &str = r#"
name = "every type"
source = "test map"
max_gap = 0
[[points]]
name = "u16"
table = "holding"
address = 0
type = "u16"
[[points]]
name = "i16"
table = "holding"
address = 1
type = "i16"
[[points]]
name = "u32_cdab"
table = "holding"
address = 2
type = "u32"
order = "CDAB"
[[points]]
name = "i32_badc"
table = "holding"
address = 4
type = "i32"
order = "BADC"
[[points]]
name = "u64_dcba"
table = "holding"
address = 6
type = "u64"
order = "DCBA"
[[points]]
name = "i64_abcd"
table = "holding"
address = 10
type = "i64"
[[points]]
name = "f32_cdab"
table = "input"
address = 0
type = "f32"
order = "CDAB"
[[points]]
name = "f64_dcba"
table = "input"
address = 2
type = "f64"
order = "DCBA"
[[points]]
name = "scaled"
table = "input"
address = 6
type = "i16"
scale = 0.1
offset = -40.0
[[points]]
name = "bit3"
kind = "bool"
table = "holding"
address = 20
type = "bit"
bit = 3
event = "detector_alarm"
[[points]]
name = "coil"
kind = "bool"
table = "coil"
address = 5
type = "bit"
[[points]]
name = "discrete"
kind = "bool"
table = "discrete"
address = 7
type = "bit"
"#;

const EXPECTED: [(&str, f64); 12] = [
    ("u16", 51234.0),
    ("i16", -1234.0),
    ("u32_cdab", 3_000_000_000.0),
    ("i32_badc", -2_000_000_000.0),
    ("u64_dcba", 9_007_199_254_740_000.0),
    ("i64_abcd", -9_007_199_254_740_000.0),
    ("f32_cdab", 229.5),
    ("f64_dcba", -0.123_456_789_012_345),
    ("scaled", 21.5),
    ("bit3", 1.0),
    ("coil", 1.0),
    ("discrete", 1.0),
];

fn start_server(units: Units) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            serve(listener, units, tokio_util::sync::CancellationToken::new()).await;
        });
    });
    rx.recv().unwrap()
}

fn values(gw: &Gateway, device: &str) -> HashMap<String, Value> {
    gw.json(&format!("/api/v1/points?device={device}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["point"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

fn requests(units: &Units, unit: u8) -> u64 {
    units.lock().unwrap()[&unit].requests
}

#[test]
fn polls_decode_coalesce_and_isolate_a_dead_device() {
    let profiles = profile::load_all(&[]).unwrap();
    let types = profile::parse(TYPES).unwrap();
    let mut u1 = Unit::default();
    u1.load_profile(&profiles["eastron-sdm630"], |name| match name {
        "ua" => 230.5,
        "ia" => 12.25,
        "energy" => 12345.5,
        _ => 1.0,
    });
    let mut u2 = Unit::default();
    for (name, v) in EXPECTED {
        let p = types.points.iter().find(|p| p.name == name).unwrap();
        match p.table {
            Table::Coil => {
                u2.coils.insert(p.address, true);
            }
            Table::Discrete => {
                u2.discrete.insert(p.address, true);
            }
            _ if p.ty == DataType::Bit => u2.set_bit(p.table, p.address, p.bit, true),
            _ => u2.set(p.table, p.address, p.ty, p.order, (v - p.offset) / p.scale),
        }
    }
    let mut u3 = Unit::default();
    u3.load_profile(&profiles["acrel-adw300"], |name| if name == "ua" { 221.3 } else { 2.0 });
    // The energy register range is refused: an exception for that read only.
    u3.refuse.push((Table::Holding, 62, 63));
    let units: Units = Arc::new(Mutex::new(HashMap::from([(1, u1), (2, u2), (3, u3)])));
    let port = start_server(units.clone());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("every-type.toml"), TYPES).unwrap();
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
[modbus]
profile_dirs = [{dir:?}]
[[modbus.connections]]
id = "plant"
kind = "tcp"
host = "127.0.0.1"
port = {port}
timeout_ms = 200
offline_after = 2
backoff_max_ms = 1000
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
modbus = {{ connection = "plant", unit = 1, profile = "eastron-sdm630", interval_ms = 200 }}
[[devices]]
id = "t2"
grid = "g1"
category = "equipment"
modbus = {{ connection = "plant", unit = 2, profile = "every-type", interval_ms = 200 }}
[[devices]]
id = "a3"
grid = "g1"
category = "electrical"
modbus = {{ connection = "plant", unit = 3, profile = "acrel-adw300", interval_ms = 200 }}
"#,
        dir = dir.path().display().to_string()
    );
    let mut gw = Gateway::start(&config);

    // Every data type and byte order decoded right.
    let t2 = wait_until(Duration::from_secs(10), "the typed device", || {
        let v = values(&gw, "t2");
        (v.len() == EXPECTED.len()).then_some(v)
    });
    for (name, want) in EXPECTED {
        let got = &t2[name]["value"];
        let got = got.as_f64().unwrap_or_else(|| if got.as_bool() == Some(true) { 1.0 } else { 0.0 });
        assert!((got - want).abs() <= want.abs() * 1e-12, "{name}: {got} != {want}");
        assert_eq!(t2[name]["quality"], "good");
    }
    let m1 = values(&gw, "m1");
    assert_eq!(m1["ua"]["value"], 230.5);
    assert_eq!(m1["energy"]["value"], 12345.5);
    // The detector's own alarm bit became an event.
    let events = gw.json("/api/v1/events");
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == "detector_alarm" && e["device"] == "t2"),
        "{events}"
    );

    // An exception marks that read's points bad, names it, and keeps the rest.
    let a3 = wait_until(Duration::from_secs(5), "the refused read", || {
        let v = values(&gw, "a3");
        (v.get("energy")?["quality"] == "bad").then_some(v)
    });
    assert_eq!(a3["ua"]["value"], 221.3);
    assert_eq!(a3["ua"]["quality"], "good");
    let events = gw.json("/api/v1/events?limit=500");
    let ex =
        events.as_array().unwrap().iter().find(|e| e["kind"] == "modbus_exception").cloned().expect("exception event");
    assert_eq!(ex["attributes"]["exception"], "IllegalDataAddress");
    let devices = gw.json("/api/v1/devices");
    let a3s = devices.as_array().unwrap().iter().find(|d| d["id"] == "a3").unwrap();
    assert!(a3s["modbus"]["errors"]["exception"].as_u64().unwrap() > 0, "{a3s}");
    assert!(a3s["modbus"]["last_error"].as_str().unwrap().contains("IllegalDataAddress"));

    // Coalescing: the SDM630's 15 values take 3 requests a cycle (the server counts them).
    let (r0, c0) = (
        requests(&units, 1),
        gw.metric("parkwatch_modbus_requests_total{device=\"m1\",connection=\"plant\"}").unwrap(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (r1, c1) = (
        requests(&units, 1),
        gw.metric("parkwatch_modbus_requests_total{device=\"m1\",connection=\"plant\"}").unwrap(),
    );
    let cycles = (r1 - r0) as f64 / 3.0;
    assert!(cycles >= 6.0, "about 10 cycles in 2 s at 200 ms, got {cycles}");
    assert_eq!(r1 - r0, (c1 - c0) as u64, "the gateway counts what the server saw");
    let samples_per_cycle = 15.0;
    assert!((r1 - r0) as f64 <= cycles * samples_per_cycle / 5.0 + 0.1);

    // A unit that stops answering goes offline; its neighbours keep their poll rate.
    let rate = |unit: u8| {
        let a = requests(&units, unit);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        (requests(&units, unit) - a) as f64 / t.elapsed().as_secs_f64()
    };
    let before = rate(2);
    units.lock().unwrap().get_mut(&1).unwrap().dead = true;
    wait_until(Duration::from_secs(10), "m1 offline", || {
        let e = gw.json("/api/v1/events?limit=500");
        e.as_array()?.iter().find(|e| e["kind"] == "offline" && e["device"] == "m1").map(|_| ())
    });
    let during = rate(2);
    assert!(during >= before * 0.7, "t2 polled {before:.1}/s before, {during:.1}/s with m1 dead");
    let devices = gw.json("/api/v1/devices");
    let m1s = devices.as_array().unwrap().iter().find(|d| d["id"] == "m1").unwrap();
    assert_eq!(m1s["modbus"]["online"], false, "{m1s}");
    assert!(m1s["modbus"]["errors"]["timeout"].as_u64().unwrap() >= 2);
    units.lock().unwrap().get_mut(&1).unwrap().dead = false;
    wait_until(Duration::from_secs(10), "m1 online again", || {
        let e = gw.json("/api/v1/events?limit=500");
        e.as_array()?.iter().find(|e| e["kind"] == "online" && e["device"] == "m1").map(|_| ())
    });
    assert_eq!(gw.metric("parkwatch_modbus_online{device=\"m1\",connection=\"plant\"}"), Some(1.0));
    assert!(gw.signal("TERM").success());
}

/// CRC-16/MODBUS.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in data {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// A Modbus RTU slave on a serial line: answers function 3 for unit 5 with `value` in every register,
/// except answer number `corrupt_at`, which carries 999 and a broken CRC.
fn rtu_slave(path: std::path::PathBuf, corrupt_at: usize, answers: Arc<Mutex<usize>>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut port = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut req = [0u8; 8];
        loop {
            if port.read_exact(&mut req).is_err() {
                return;
            }
            let crc = u16::from_le_bytes([req[6], req[7]]);
            if req[0] != 5 || req[1] != 3 || crc16(&req[..6]) != crc {
                continue;
            }
            let count = u16::from_be_bytes([req[4], req[5]]);
            let n = {
                let mut a = answers.lock().unwrap();
                *a += 1;
                *a
            };
            let value: u16 = if n == corrupt_at { 9990 } else { 523 };
            let mut resp = vec![5, 3, (count * 2) as u8];
            for _ in 0..count {
                resp.extend(value.to_be_bytes());
            }
            let mut c = crc16(&resp);
            if n == corrupt_at {
                c ^= 0x5555;
            }
            resp.extend(c.to_le_bytes());
            if port.write_all(&resp).is_err() {
                return;
            }
        }
    });
}

#[test]
fn rtu_over_a_serial_line_rejects_a_corrupted_crc() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let mut socat = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("socat is not installed (apt-get install -y socat)");
    wait_until(Duration::from_secs(5), "the pseudo-terminal pair", || (a.exists() && b.exists()).then_some(()));
    let answers = Arc::new(Mutex::new(0));
    rtu_slave(b.clone(), 3, answers.clone());
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
[[modbus.connections]]
id = "rs485"
kind = "rtu"
path = {path:?}
baud = 9600
timeout_ms = 300
gap_ms = 5
offline_after = 5
backoff_max_ms = 500
[[devices]]
id = "noise1"
grid = "g1"
category = "environment"
modbus = {{ connection = "rs485", unit = 5, profile = "noise-transmitter", interval_ms = 200 }}
"#,
        path = a.display().to_string()
    );
    let gw = Gateway::start(&config);
    let noise = wait_until(Duration::from_secs(10), "readings over RTU", || {
        let v = values(&gw, "noise1");
        let n = v.get("noise")?.clone();
        (*answers.lock().unwrap() >= 6).then_some(n)
    });
    assert_eq!(noise["value"], 52.3);
    // The corrupted answer was rejected: its value never reached point state, and it was counted.
    let devices = gw.json("/api/v1/devices");
    let d = devices.as_array().unwrap().iter().find(|d| d["id"] == "noise1").unwrap();
    let errors = &d["modbus"]["errors"];
    assert!(errors["timeout"].as_u64().unwrap() + errors["transport"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(d["modbus"]["online"], true);
    let events = gw.json("/api/v1/events?limit=500");
    assert!(!events.as_array().unwrap().iter().any(|e| e["kind"] == "offline"), "one bad frame is not offline");
    for _ in 0..5 {
        assert_eq!(values(&gw, "noise1")["noise"]["value"], 52.3);
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = socat.kill();
    let _ = socat.wait();
}
