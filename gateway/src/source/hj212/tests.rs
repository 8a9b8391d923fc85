//! The server against loggers on loopback, in process: samples, answers, refusals, split packets.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, CrcVariant, Header};
use super::*;

const CONFIG: &str = r#"
[site]
id = "p"
timezone = "Asia/Shanghai"
[[grids]]
id = "g1"
[[devices]]
id = "outfall"
grid = "g1"
category = "emission"
points = [{ name = "cod", unit = "mg/L" }, { name = "nh3n", unit = "mg/L" }, { name = "ph" }, { name = "flow" }]
[[hj212.listeners]]
id = "l"
listen = "127.0.0.1:0"
max_frames_per_sec = 50
[[hj212.loggers]]
mn = "MN0001"
pw = "123456"
device = "outfall"
[[hj212.loggers]]
mn = "MN0002"
pw = "654321"
crc = "modbus"
device = "outfall"
"#;

struct Harness {
    addr: SocketAddr,
    rx: mpsc::Receiver<Batch>,
    registry: Arc<Registry>,
    status: Arc<Hj212Status>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

async fn start() -> Harness {
    let config = crate::config::from_str(CONFIG, "t.toml".as_ref(), ".".as_ref()).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let metrics = Arc::new(Metrics::new(vec![], vec![], 100));
    let server = Server::new(&config, registry.clone(), metrics.clone());
    let status = server.status();
    let bound = server.bind().await.unwrap();
    let addr = bound.local_addrs()[0];
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    tokio::spawn(bound.run(tx, stop.clone()));
    Harness { addr, rx, registry, status, metrics, stop }
}

fn frame(variant: CrcVariant, cn: &str, mn: &str, pw: &str, flag: u8, cp: &str) -> Vec<u8> {
    let h = Header { qn: Some("20240301120000123"), st: "32", cn, pw, mn, flag, split: None };
    codec::frame(variant, &codec::data_segment(&h, cp)).unwrap()
}

impl Harness {
    async fn batch(&mut self) -> Batch {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await.expect("a batch in time").unwrap()
    }

    fn name(&self, s: &Sample) -> String {
        self.registry.point(s.point).name.clone()
    }
}

async fn read_answer(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while !out.ends_with(b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed before the answer");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[tokio::test]
async fn values_become_samples_with_local_data_time_flags_and_answers() {
    let mut h = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let cp =
        "DataTime=20240301120000;w01018-Rtd=35.2,w01018-Flag=N;w21003-Rtd=1.5,w21003-Flag=C;w01001-Rtd=7.1;zz999-Rtd=1";
    s.write_all(&frame(CrcVariant::Standard, "2011", "MN0001", "123456", 5, cp)).await.unwrap();
    let answer = read_answer(&mut s).await;
    let expected = codec::data_answer(CrcVariant::Standard, Some("20240301120000123"), "123456", "MN0001");
    assert_eq!(answer, expected);
    let b = h.batch().await;
    let got: Vec<(String, f64, Quality, i64)> =
        b.samples.iter().map(|x| (h.name(x), x.value, x.quality, x.ts)).collect();
    // 12:00 in Shanghai is 04:00 UTC.
    let ts = chrono::DateTime::parse_from_rfc3339("2024-03-01T04:00:00Z").unwrap().timestamp_nanos_opt().unwrap();
    assert_eq!(
        got,
        [
            ("cod".to_owned(), 35.2, Quality::Good, ts),
            ("nh3n".to_owned(), 1.5, Quality::Calibration, ts),
            ("ph".to_owned(), 7.1, Quality::Good, ts)
        ]
    );
    let st = h.status.loggers[0].clone();
    assert_eq!(st.unmapped.load(Ordering::Relaxed), 1);
    // Hourly data: statistics points, no answer without the A bit, 17-digit DataTime.
    let cp = "DataTime=20240301110000000;w01018-Avg=30.0,w01018-Min=20.0,w01018-Max=40.0,w01018-Cou=1.5,w01018-Flag=N";
    s.write_all(&frame(CrcVariant::Standard, "2061", "MN0001", "123456", 4, cp)).await.unwrap();
    let b = h.batch().await;
    let names: Vec<String> = b.samples.iter().map(|x| h.name(x)).collect();
    assert_eq!(names, ["cod_1h_avg", "cod_1h_min", "cod_1h_max", "cod_1h_cou"]);
    assert_eq!(st.answers.load(Ordering::Relaxed), 1);
    h.stop.cancel();
}

#[tokio::test]
async fn bad_frames_are_counted_and_the_good_ones_around_them_survive() {
    let mut h = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let good = |v: f64| {
        frame(CrcVariant::Standard, "2011", "MN0001", "123456", 4, &format!("DataTime=20240301120000;w01018-Rtd={v}"))
    };
    let mut bad_crc = good(2.0);
    let n = bad_crc.len();
    bad_crc[n - 3] = if bad_crc[n - 3] == b'0' { b'1' } else { b'0' };
    let mut stream = good(1.0);
    stream.extend_from_slice(b"\x00\xff garbage \x01");
    stream.extend_from_slice(&bad_crc);
    stream.extend_from_slice(&good(3.0)[..30]);
    stream.extend_from_slice(&good(4.0));
    // The Modbus-CRC logger's frame has the wrong variant here: refused as bad CRC.
    s.write_all(&stream).await.unwrap();
    let mut values = Vec::new();
    while values.len() < 2 {
        values.extend(h.batch().await.samples.iter().map(|x| x.value));
    }
    assert_eq!(values, [1.0, 4.0]);
    let st = &h.status.loggers[0];
    // The garbage came after the first valid frame named the logger: counted against it.
    assert_eq!(st.rejected(Reject::NotAFrame), 1);
    assert_eq!(st.rejected(Reject::BadCrc), 1);
    assert_eq!(st.rejected(Reject::Truncated), 1);
    let reasons: Vec<&str> = h.metrics.rejects.recent().iter().map(|r| r.reason).collect();
    assert_eq!(reasons, ["truncated", "bad_crc", "not_a_frame"]);
    h.stop.cancel();
}

#[tokio::test]
async fn unknown_mn_and_wrong_password_close_the_connection() {
    let mut h = start().await;
    let cp = "DataTime=20240301120000;w01018-Rtd=1";
    for (mn, pw, reason) in [("NOPE", "123456", Reject::UnknownMn), ("MN0001", "000000", Reject::WrongPassword)] {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(&frame(CrcVariant::Standard, "2011", mn, pw, 5, cp)).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        let counted = match reason {
            Reject::UnknownMn => h.status.listeners[0].rejects[reason.index()].load(Ordering::Relaxed),
            _ => h.status.loggers[0].rejected(reason),
        };
        assert_eq!(counted, 1, "{reason:?}");
    }
    // Modbus CRC for the logger configured with it is accepted.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(&frame(CrcVariant::Modbus, "2011", "MN0002", "654321", 5, cp)).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert_eq!(codec::check_crc(&answer, CrcVariant::Modbus), Ok(()));
    assert_eq!(h.batch().await.samples.len(), 1);
    h.stop.cancel();
}

#[tokio::test]
async fn split_packets_are_reassembled() {
    let mut h = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let part = |no: u32, cp: &str| {
        let hd =
            Header { qn: Some("1"), st: "32", cn: "2051", pw: "123456", mn: "MN0001", flag: 7, split: Some((2, no)) };
        codec::frame(CrcVariant::Standard, &codec::data_segment(&hd, cp)).unwrap()
    };
    s.write_all(&part(2, "DataTime=20240301120000;w21003-Avg=2.5")).await.unwrap();
    read_answer(&mut s).await;
    s.write_all(&part(1, "DataTime=20240301120000;w01018-Avg=40")).await.unwrap();
    read_answer(&mut s).await;
    let b = h.batch().await;
    let got: Vec<(String, f64)> = b.samples.iter().map(|x| (h.name(x), x.value)).collect();
    assert_eq!(got, [("cod_1m_avg".to_owned(), 40.0), ("nh3n_1m_avg".to_owned(), 2.5)]);
    assert_eq!(h.status.loggers[0].answers.load(Ordering::Relaxed), 2);
    h.stop.cancel();
}

#[tokio::test]
async fn field_captures_of_2005_era_loggers_become_samples_events_and_heartbeats() {
    let extra = r#"
[[hj212.loggers]]
mn = "LD130102000172"
pw = "123456"
device = "outfall"
[[hj212.loggers]]
mn = "ZG130182201401"
pw = "123456"
device = "outfall"
[[hj212.loggers]]
mn = "ZG130182201205"
pw = "123456"
device = "outfall"
"#;
    let config = crate::config::from_str(&format!("{CONFIG}{extra}"), "t.toml".as_ref(), ".".as_ref()).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let metrics = Arc::new(Metrics::new(vec![], vec![], 100));
    let server = Server::new(&config, registry.clone(), metrics);
    let status = server.status();
    let bound = server.bind().await.unwrap();
    let addr = bound.local_addrs()[0];
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    tokio::spawn(bound.run(tx, stop.clone()));
    let captures = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/hj212-field-capture-2016.txt"),
    )
    .unwrap();
    let line = |mn: &str| format!("{}\r\n", captures.lines().find(|l| l.contains(&format!("MN={mn};"))).unwrap());
    let shanghai = |s: &str| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp_nanos_opt().unwrap()
            - 8 * 3_600_000_000_000
    };

    // 2005 codes (B01 flow, 011 COD, 060 NH3-N flagged D), no QN, no Flag: samples, no answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(line("LD130102000172").as_bytes()).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let got: Vec<(String, f64, Quality)> =
        b.samples.iter().map(|x| (registry.point(x.point).name.clone(), x.value, x.quality)).collect();
    assert_eq!(
        got,
        [
            ("flow".to_owned(), 12.359, Quality::Good),
            ("cod".to_owned(), 39.694, Quality::Good),
            ("nh3n".to_owned(), 2.68, Quality::Fault)
        ]
    );
    assert!(b.samples.iter().all(|x| x.ts == shanghai("2016-08-23 23:56:00")));

    // An alarm (CN 2072, Flag=1 asks for an answer): an event stamped with its AlarmTime, answered.
    let mut a = TcpStream::connect(addr).await.unwrap();
    a.write_all(line("ZG130182201401").as_bytes()).await.unwrap();
    let answer = read_answer(&mut a).await;
    assert_eq!(answer, codec::data_answer(CrcVariant::Standard, Some("20160823235559979"), "123456", "ZG130182201401"));
    let b = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(b.events.len(), 1);
    let e = &b.events[0];
    assert_eq!((e.kind.as_str(), e.ts), ("hj212_alarm", shanghai("2016-08-23 23:55:59")));
    assert_eq!(e.attributes["code"], "B01");
    assert_eq!(e.attributes["point"], "flow");
    assert_eq!(e.attributes["value"], 16.0);
    assert_eq!(e.attributes["alarm_type"], "1");

    // A heartbeat (CN 8013, Flag=0): taken, no answer, no batch.
    let mut h = TcpStream::connect(addr).await.unwrap();
    h.write_all(line("ZG130182201205").as_bytes()).await.unwrap();
    let beat = status.loggers.iter().find(|l| l.mn == "ZG130182201205").unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while beat.frames.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the heartbeat was not taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(beat.last_frame_ns.load(Ordering::Relaxed) > 0);
    assert_eq!(beat.answers.load(Ordering::Relaxed), 0);
    assert!(rx.try_recv().is_err());
    stop.cancel();
}

#[tokio::test]
async fn frames_over_the_rate_are_refused_and_counted() {
    let mut h = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    // 60 frames in one write; the listener allows 50 a second.
    let burst: Vec<u8> = (0..60)
        .flat_map(|i| {
            frame(
                CrcVariant::Standard,
                "2011",
                "MN0001",
                "123456",
                4,
                &format!("DataTime=20240301120000;w01018-Rtd={i}"),
            )
        })
        .collect();
    s.write_all(&burst).await.unwrap();
    let mut taken = 0;
    while taken < 50 {
        taken += h.batch().await.samples.len();
    }
    assert_eq!(taken, 50);
    let st = h.status.loggers[0].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while st.rejected(Reject::RateLimited) < 10 {
        assert!(tokio::time::Instant::now() < deadline, "rate-limited frames not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(st.rejected(Reject::RateLimited), 10);
    assert_eq!(st.frames.load(Ordering::Relaxed), 50);
    h.stop.cancel();
}

#[tokio::test]
async fn idle_connections_are_closed_and_connections_are_bounded() {
    let text = CONFIG
        .replace("max_frames_per_sec = 50", "max_frames_per_sec = 50\nidle_timeout_secs = 1\nmax_connections = 2");
    let config = crate::config::from_str(&text, "t.toml".as_ref(), ".".as_ref()).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let server = Server::new(&config, registry, Arc::new(Metrics::new(vec![], vec![], 10)));
    let status = server.status();
    let bound = server.bind().await.unwrap();
    let addr = bound.local_addrs()[0];
    let (tx, _rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    tokio::spawn(bound.run(tx, stop.clone()));
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    let l = status.listeners[0].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while l.open.load(Ordering::Relaxed) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "two connections open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A third is closed at once.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap_or(0), 0);
    assert_eq!(l.refused.load(Ordering::Relaxed), 1);
    // The two that say nothing are closed after the idle timeout.
    for s in [&mut a, &mut b] {
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0), 0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while l.open.load(Ordering::Relaxed) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "connections closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(l.idle_closed.load(Ordering::Relaxed), 2);
    stop.cancel();
}
