//! HJ 212-2017 end to end: the real `parkwatch` binary with an HJ 212 listener, data loggers
//! connecting over loopback TCP. Frames are built here with a CRC written from the standard's
//! appendix, independently of the gateway's codec.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use parkwatch_e2e::{free_port, root, wait_until, Gateway};
use serde_json::Value;

/// The standard's CRC (`../shared/domain/protocols.md`), as four upper-case hex digits.
fn crc(data: &[u8]) -> String {
    let mut reg: u16 = 0xFFFF;
    for &b in data {
        reg = (reg >> 8) ^ u16::from(b);
        for _ in 0..8 {
            let lsb = reg & 1;
            reg >>= 1;
            if lsb != 0 {
                reg ^= 0xA001;
            }
        }
    }
    format!("{reg:04X}")
}

fn wire(data: &str) -> Vec<u8> {
    format!("##{:04}{data}{}\r\n", data.len(), crc(data.as_bytes())).into_bytes()
}

const WW: &str = "88888880000001";
const AIR: &str = "010000A8900016F000169DC0";

fn config(port: u16, frames_per_sec: u32) -> String {
    format!(
        r#"
[site]
id = "e2e"
timezone = "Asia/Shanghai"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"

[[devices]]
id = "outfall"
grid = "g1"
category = "emission"
points = [{{ name = "cod", unit = "mg/L" }}, {{ name = "nh3n", unit = "mg/L" }}, {{ name = "ph" }}, {{ name = "flow", unwatched = "flow" }}]

[[devices]]
id = "air"
grid = "g1"
category = "environment"
points = [{{ name = "so2", unit = "µg/m³" }}, {{ name = "pm25", unit = "µg/m³" }}, {{ name = "pm10", unit = "µg/m³" }}]

[[hj212.listeners]]
id = "env"
listen = "127.0.0.1:{port}"
max_frames_per_sec = {frames_per_sec}

[[hj212.loggers]]
mn = "{WW}"
pw = "123456"
device = "outfall"

[[hj212.loggers]]
mn = "{AIR}"
pw = "123456"
device = "air"
"#
    )
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HJ 212 listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one answer frame (up to CR LF).
fn answer(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            other => panic!("no answer: {other:?} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    out
}

/// Whether the gateway closed the connection without sending anything.
fn closed_silently(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0))
}

fn point(gw: &Gateway, device: &str, name: &str) -> Option<Value> {
    let points = gw.json(&format!("/api/v1/points?device={device}"));
    points.as_array()?.iter().find(|p| p["point"] == name).cloned()
}

fn wait_point(gw: &Gateway, device: &str, name: &str, value: f64) -> Value {
    wait_until(Duration::from_secs(10), &format!("{device}/{name} = {value}"), || {
        point(gw, device, name).filter(|p| p["value"].as_f64() == Some(value))
    })
}

/// The public vector of that name from `tests/vectors/hj212-public.tsv`.
fn vector(name: &str) -> Vec<u8> {
    let tsv = std::fs::read_to_string(root().join("tests/vectors/hj212-public.tsv")).unwrap();
    let line = tsv.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix('\t')).unwrap();
    line.replace("\\r\\n", "\r\n").into_bytes()
}

#[test]
fn minute_and_hourly_data_become_samples_and_answers_are_exact() {
    let port = free_port();
    let gw = Gateway::start(&config(port, 200));
    let mut s = connect(port);

    // Minute data, Flag=5 (2017 edition, answer wanted), COD normal, NH3-N under maintenance.
    let qn = "20240301120100001";
    let data = format!(
        "QN={qn};ST=32;CN=2051;PW=123456;MN={WW};Flag=5;CP=&&DataTime=20240301120000;w01018-Avg=42.5,w01018-Min=40.1,w01018-Max=45.0,w01018-Flag=N;w21003-Avg=3.2,w21003-Flag=M&&"
    );
    s.write_all(&wire(&data)).unwrap();
    let expected = wire(&format!("QN={qn};ST=91;CN=9014;PW=123456;MN={WW};Flag=4;CP=&&&&"));
    assert_eq!(String::from_utf8(answer(&mut s)).unwrap(), String::from_utf8(expected).unwrap());
    let cod = wait_point(&gw, "outfall", "cod_1m_avg", 42.5);
    // 12:00 in Shanghai is 04:00 UTC.
    assert_eq!(cod["ts"], "2024-03-01T04:00:00.000Z", "{cod}");
    assert_eq!(cod["quality"], "good");
    assert_eq!(cod["unit"], "mg/L");
    assert_eq!(point(&gw, "outfall", "cod_1m_max").unwrap()["value"], 45.0);
    let nh3 = wait_point(&gw, "outfall", "nh3n_1m_avg", 3.2);
    assert_eq!(nh3["quality"], "maintenance", "{nh3}");

    // Hourly data with a 17-digit DataTime, no answer asked (Flag=4), then real-time data answered.
    let data = format!(
        "QN=20240301120500002;ST=32;CN=2061;PW=123456;MN={WW};Flag=4;CP=&&DataTime=20240301110000000;w01018-Avg=41.0,w01018-Cou=12.5,w01018-Flag=N;w01001-Avg=7.2,w01001-Flag=D&&"
    );
    s.write_all(&wire(&data)).unwrap();
    let hour = wait_point(&gw, "outfall", "cod_1h_avg", 41.0);
    assert_eq!(hour["ts"], "2024-03-01T03:00:00.000Z", "{hour}");
    assert_eq!(point(&gw, "outfall", "cod_1h_cou").unwrap()["value"], 12.5);
    assert_eq!(wait_point(&gw, "outfall", "ph_1h_avg", 7.2)["quality"], "fault");
    let data = format!(
        "QN=20240301120600003;ST=32;CN=2011;PW=123456;MN={WW};Flag=5;CP=&&DataTime=20240301120600;w01018-Rtd=44.0,w01018-Flag=N;B01-Rtd=12.5&&"
    );
    s.write_all(&wire(&data)).unwrap();
    let a = answer(&mut s);
    assert!(String::from_utf8_lossy(&a).contains("QN=20240301120600003;ST=91;CN=9014;"), "{a:?}");
    let rt = wait_point(&gw, "outfall", "cod", 44.0);
    assert_eq!(rt["ts"], "2024-03-01T04:06:00.000Z");
    wait_point(&gw, "outfall", "flow", 12.5);

    // A published logger frame (t212_0453, Flag=7) is answered with exactly the published answer
    // (t212_9014), CRC included.
    let mut air = connect(port);
    air.write_all(&vector("t212_0453")).unwrap();
    assert_eq!(String::from_utf8(answer(&mut air)).unwrap(), String::from_utf8(vector("t212_9014")).unwrap());
    let so2 = wait_point(&gw, "air", "so2", 58.0);
    assert_eq!(so2["ts"], "2016-08-01T00:40:00.000Z");
    assert_eq!(point(&gw, "air", "pm25").unwrap()["value"], 207.0);

    // The device list shows the loggers' status.
    let devices = gw.json("/api/v1/devices");
    let outfall = devices.as_array().unwrap().iter().find(|d| d["id"] == "outfall").unwrap();
    let st = &outfall["hj212"][0];
    assert_eq!(st["mn"], WW);
    assert_eq!(st["connected"], true);
    assert_eq!(st["frames"], 3);
    assert_eq!(st["answers"], 2);
    assert_eq!(gw.metric(&format!("parkwatch_hj212_frames_total{{mn=\"{WW}\",device=\"outfall\"}}")), Some(3.0));
}

#[test]
fn refused_loggers_and_a_garbage_flood_leave_other_loggers_intact() {
    let port = free_port();
    // The flood's broken frames count against the rate limit too: set it out of the way here.
    let gw = Gateway::start(&config(port, 1_000_000));
    let frame = |mn: &str, pw: &str, qn: u32, v: f64| {
        wire(&format!(
            "QN={qn:017};ST=32;CN=2011;PW={pw};MN={mn};Flag=5;CP=&&DataTime=20240301120000;w01018-Rtd={v},w01018-Flag=N;a34004-Rtd={v}&&"
        ))
    };

    // An unknown MN: closed without an answer, counted on the listener.
    let mut s = connect(port);
    s.write_all(&frame("99999999999999", "123456", 1, 1.0)).unwrap();
    assert!(closed_silently(&mut s));
    // A wrong password: closed without an answer, counted on that logger, no value taken.
    let mut s = connect(port);
    s.write_all(&frame(WW, "000000", 2, 1.0)).unwrap();
    assert!(closed_silently(&mut s));
    wait_until(Duration::from_secs(5), "the refusals counted", || {
        let unknown = gw.metric("parkwatch_hj212_rejects_total{listener=\"env\",mn=\"\",reason=\"unknown_mn\"}")?;
        let wrong = gw
            .metric(&format!("parkwatch_hj212_rejects_total{{listener=\"\",mn=\"{WW}\",reason=\"wrong_password\"}}"))?;
        (unknown == 1.0 && wrong == 1.0).then_some(())
    });
    assert!(point(&gw, "outfall", "cod").is_none(), "a refused frame gave no value");

    // One logger floods garbage and broken frames on its connection after a valid frame, while the
    // other reports every 10 ms; every one of its frames is answered and taken.
    let mut flooder = connect(port);
    flooder.write_all(&frame(AIR, "123456", 3, 5.0)).unwrap();
    answer(&mut flooder);
    let flood = std::thread::spawn(move || {
        let mut rng = 7u32;
        let until = Instant::now() + Duration::from_secs(2);
        let mut sent = 0usize;
        while Instant::now() < until {
            let mut junk: Vec<u8> = (0..4096)
                .map(|_| {
                    rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let b = (rng >> 16) as u8;
                    if b == b'#' {
                        b'x'
                    } else {
                        b
                    }
                })
                .collect();
            // A frame cut short by a frame with a broken CRC, in the middle of the noise.
            let mut bad = frame(AIR, "123456", 4, 6.0);
            let n = bad.len();
            bad[n - 3] = if bad[n - 3] == b'0' { b'1' } else { b'0' };
            junk.extend_from_slice(&frame(AIR, "123456", 5, 6.0)[..40]);
            junk.extend_from_slice(&bad);
            if flooder.write_all(&junk).is_err() {
                break;
            }
            sent += junk.len();
        }
        (flooder, sent)
    });
    let mut good = connect(port);
    for i in 0..50u32 {
        good.write_all(&frame(WW, "123456", 100 + i, f64::from(i))).unwrap();
        let a = answer(&mut good);
        assert!(String::from_utf8_lossy(&a).contains(&format!("QN={:017};", 100 + i)), "{a:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut flooder, sent) = flood.join().unwrap();
    assert!(sent > 100_000, "the flood sent {sent} bytes");
    wait_point(&gw, "outfall", "cod", 49.0);
    // The flooding connection still works: its next valid frame is answered and taken.
    flooder.write_all(&frame(AIR, "123456", 999, 77.0)).unwrap();
    let a = answer(&mut flooder);
    assert!(String::from_utf8_lossy(&a).contains(&format!("QN={:017};", 999)), "{a:?}");
    wait_point(&gw, "air", "pm25", 77.0);

    let rejects = |mn: &str, reason: &str| {
        gw.metric(&format!("parkwatch_hj212_rejects_total{{listener=\"\",mn=\"{mn}\",reason=\"{reason}\"}}"))
            .unwrap_or(0.0)
    };
    for reason in ["not_a_frame", "bad_crc", "truncated", "wrong_password", "bad_length", "oversized"] {
        assert_eq!(rejects(WW, reason), if reason == "wrong_password" { 1.0 } else { 0.0 }, "{reason}");
    }
    assert!(rejects(AIR, "not_a_frame") >= 1.0);
    assert!(rejects(AIR, "bad_crc") >= 1.0);
    assert!(rejects(AIR, "truncated") >= 1.0);
    let kept = gw.json("/api/v1/rejects");
    let reasons: Vec<&str> = kept.as_array().unwrap().iter().filter_map(|r| r["reason"].as_str()).collect();
    for r in ["not_a_frame", "bad_crc", "truncated", "unknown_mn", "wrong_password"] {
        assert!(reasons.contains(&r), "{r} in {reasons:?}");
    }
    let rec = kept.as_array().unwrap().iter().find(|r| r["reason"] == "bad_crc").unwrap();
    assert_eq!(rec["broker"], "hj212:env");
    assert_eq!(rec["subscription"], AIR);
}

#[test]
fn the_demo_raises_an_emission_alarm_from_hj212_data() {
    use std::process::{Command, Stdio};
    let api = format!("127.0.0.1:{}", free_port());
    let mqtt = format!("127.0.0.1:{}", free_port());
    let modbus = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(parkwatch_e2e::gateway_bin())
        .args(["demo", "--listen", &api, "--mqtt-listen", &mqtt, "--modbus-listen", &modbus, "--duration", "150"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let token = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "the demo printed no PARKWATCH_TOKEN line");
        if let Some(t) = line.trim().strip_prefix("PARKWATCH_TOKEN=") {
            break t.to_owned();
        }
    };
    let addr = api.parse().unwrap();
    let get = |path: &str| -> Option<Value> {
        let (status, body) = parkwatch_e2e::http_get_as(addr, path, Some(&token)).ok()?;
        serde_json::from_str(&body).ok().filter(|_| status == 200)
    };
    // The simulated outfall logger reports acid water over HJ 212 at start: the pH rule raises an
    // alarm on the logger's device once its minute of on-delay is over.
    let incident = wait_until(Duration::from_secs(120), "emission.wastewater_ph on ww-g3", || {
        let list = get("/api/v1/incidents")?;
        let list = list.as_array().cloned().or_else(|| list["incidents"].as_array().cloned())?;
        list.into_iter().find(|i| i["rule"] == "emission.wastewater_ph" && i["device"] == "ww-g3")
    });
    assert!(incident["value"].as_f64().is_some_and(|v| v < 6.0), "{incident}");
    let devices = get("/api/v1/devices").unwrap();
    let ww = devices.as_array().unwrap().iter().find(|d| d["id"] == "ww-g3").unwrap().clone();
    assert_eq!(ww["hj212"][0]["connected"], true, "{ww}");
    assert!(ww["hj212"][0]["answers"].as_u64().is_some_and(|n| n > 0), "{ww}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_relayed_logger_s_frames_reach_the_upstream_platform_unchanged_once_it_is_up() {
    let port = free_port();
    let upstream = free_port();
    let text = config(port, 200).replace(
        "device = \"outfall\"\n",
        &format!("device = \"outfall\"\nrelay = {{ address = \"127.0.0.1:{upstream}\", queue_frames = 100 }}\n"),
    );
    let gw = Gateway::start(&text);
    let mut s = connect(port);
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            wire(&format!(
                "QN=2024030112000000{i};ST=32;CN=2011;PW=123456;MN={WW};Flag=5;CP=&&DataTime=20240301120000;w01018-Rtd=1{i}.5&&"
            ))
        })
        .collect();
    // The platform is down: the frames are taken and answered all the same, and queued.
    for f in &frames {
        s.write_all(f).unwrap();
        answer(&mut s);
    }
    wait_until(Duration::from_secs(10), "three frames queued for the platform", || {
        (gw.metric(&format!("parkwatch_hj212_relay_queued{{mn=\"{WW}\"}}"))? == 3.0).then_some(())
    });
    // The platform comes up: the relay reconnects and sends them in order, byte for byte.
    let platform = std::net::TcpListener::bind(("127.0.0.1", upstream)).unwrap();
    let (mut up, _) = platform.accept().unwrap();
    up.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let late = wire(&format!(
        "QN=20240301120000009;ST=32;CN=2051;PW=123456;MN={WW};Flag=4;CP=&&DataTime=20240301120000;w01018-Avg=9&&"
    ));
    s.write_all(&late).unwrap();
    let want: Vec<u8> = frames.iter().chain(std::iter::once(&late)).flatten().copied().collect();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < want.len() {
        let n = up.read(&mut buf).unwrap();
        assert!(n > 0, "the relay closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
    // Counted once the write returned, which may be just after the platform read the bytes.
    wait_until(Duration::from_secs(10), "four frames counted as relayed", || {
        (gw.metric(&format!("parkwatch_hj212_relay_sent_total{{mn=\"{WW}\"}}"))? == 4.0).then_some(())
    });
    assert_eq!(gw.metric(&format!("parkwatch_hj212_relay_dropped_total{{mn=\"{WW}\"}}")), Some(0.0));
}
