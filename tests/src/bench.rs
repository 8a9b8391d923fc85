//! What the benchmarks share: a bare MQTT 3.1.1 client over a blocking socket (cheap enough not to be
//! the bottleneck it measures), process CPU and memory from `/proc`, and order statistics.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// An environment variable parsed as `T`, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// MQTT's variable-length "remaining length".
pub fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// (remaining length, header bytes) of the packet at the start of `b`, once its header is complete.
pub fn frame_len(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((len, 2 + i));
        }
    }
    None
}

/// A clean-session MQTT connection, CONNACK read.
pub fn connect(port: u16, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut pkt = vec![0x10];
    remaining_length(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack[0], 0x20, "no CONNACK");
    s
}

/// Subscribes to `filters` at `qos` (packet id 1) and reads the SUBACK.
pub fn subscribe(s: &mut TcpStream, filters: &[&str], qos: u8) {
    let mut body = vec![0, 1];
    for f in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
        body.push(qos);
    }
    let mut pkt = vec![0x82];
    remaining_length(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "broker closed before SUBACK");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((len, header)) = frame_len(&buf) {
            if buf.len() >= header + len {
                assert_eq!(buf[0], 0x90, "no SUBACK");
                assert!(buf[header + 2..header + len].iter().all(|&c| c != 0x80), "subscription refused");
                return;
            }
        }
    }
}

/// Appends a PUBLISH (QoS 0, or QoS 1 with `packet_id`) to `out`.
pub fn publish_frame(out: &mut Vec<u8>, topic: &str, payload: &[u8], qos: u8, packet_id: u16) {
    out.push(if qos == 0 { 0x30 } else { 0x32 });
    let id_len = if qos == 0 { 0 } else { 2 };
    remaining_length(2 + topic.len() + id_len + payload.len(), out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// One incoming PUBLISH.
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// Reads packets from `s` until `stop` is set or the connection ends: each PUBLISH is handed to `f`
/// (and acknowledged when it is QoS 1); other packets are skipped.
pub fn read_publishes(s: &mut TcpStream, stop: &AtomicBool, mut f: impl FnMut(Incoming<'_>)) {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: Vec<u8> = Vec::new();
    let mut acks: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let got = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        };
        pending.extend_from_slice(&buf[..got]);
        let mut pos = 0;
        while let Some((len, header)) = frame_len(&pending[pos..]) {
            if pending.len() - pos < header + len {
                break;
            }
            let p = &pending[pos..pos + header + len];
            if p[0] >> 4 == 3 && len >= 2 {
                let qos = (p[0] >> 1) & 3;
                let body = &p[header..];
                let tlen = (u16::from_be_bytes([body[0], body[1]]) as usize).min(body.len() - 2);
                let topic = std::str::from_utf8(&body[2..2 + tlen]).unwrap_or("");
                let mut rest = &body[2 + tlen..];
                if qos > 0 && rest.len() >= 2 {
                    acks.extend_from_slice(&[0x40, 2, rest[0], rest[1]]);
                    rest = &rest[2..];
                }
                f(Incoming { topic, payload: rest });
            }
            pos += header + len;
        }
        pending.drain(..pos);
        if !acks.is_empty() {
            if s.write_all(&acks).is_err() {
                return;
            }
            acks.clear();
        }
    }
}

/// CPU seconds (user + system) of process `pid` so far.
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Peak resident memory of process `pid`, MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The median of `v` (nearest rank: the lower middle for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// The nearest-rank percentile `p` (0–100) of `v`; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The machine, kernel, peer package versions, compiler and commit, as lines of a results file.
pub fn machine(repo: &std::path::Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let t = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&t).lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_else(|| "not found".into())
    };
    // The peers are Debian's packages; their own version flags print nothing useful.
    let package = |name: &str| {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", name])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "not installed".into())
    };
    let (mosquitto, vm) = (package("mosquitto"), package("victoria-metrics"));
    let rustc = version("rustc", "-V");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "- machine: {cores} cores, {cpu}\n- kernel: {}\n- mosquitto (Debian) {mosquitto}\n- victoria-metrics (Debian) {vm}\n- {rustc}\n- parkwatch commit: {commit}\n",
        version("uname", "-r")
    )
}

/// Counts PUBACKs (the broker's receipt of each QoS 1 publish) on a publisher's connection that reads
/// nothing else after its CONNACK.
pub fn count_pubacks(s: &mut TcpStream, acked: &AtomicU64, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut carry = 0usize;
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            // PUBACKs are 4 bytes each and the generator reads nothing else after CONNACK.
            Ok(n) => {
                carry += n;
                acked.fetch_add((carry / 4) as u64, Ordering::Relaxed);
                carry %= 4;
            }
            Err(_) => continue,
        }
    }
}

/// Today's date (UTC), for results file names.
pub fn today() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let days = (now.as_secs() / 86_400) as i64;
    let d = chrono::NaiveDate::from_num_days_from_ce_opt(719_163 + days as i32).unwrap_or_default();
    d.format("%Y-%m-%d").to_string()
}

/// Readings of the four telemetry fields (`electrical_residual_ma`, `_temp_c`, `_voltage_v`,
/// `_current_a`) the store holds, over every site; 0 when it does not answer.
pub fn stored_readings(store: &crate::Victoria) -> u64 {
    let base = store.url();
    let _ = ureq::get(&format!("{base}/internal/force_flush")).call();
    let Ok(r) = ureq::get(&format!("{base}/api/v1/query"))
        .query(
            "query",
            r#"sum(count_over_time({__name__=~"electrical_(residual_ma|temp_c|voltage_v|current_a)"}[1d]))"#,
        )
        .call()
    else {
        return 0;
    };
    let v: serde_json::Value = r.into_string().ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// Incident changes committed in a gateway's incident database (comments aside); 0 when unreadable.
pub fn incident_changes(gw: &crate::Gateway) -> u64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        gw.dir.path().join("incidents.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row("SELECT COUNT(*) FROM incident_events WHERE kind != 'comment'", [], |r| r.get::<_, i64>(0))
        .unwrap_or(0) as u64
}

/// The alarm rule of the meter-park benchmarks: residual current above 300 mA, cleared below 250 mA.
pub const RESIDUAL_RULE: &str = r#"rule(#{ id: "bench.residual", title: "Residual current", category: "electrical", severity: "critical",
    watch: #{ points: ["residual_ma"] },
    condition: |ctx| ctx.value > 300.0,
    clear: |ctx| ctx.value < 250.0 });"#;

/// A meter park as the whole-job and fleet benchmarks run it.
pub struct MeterPark<'a> {
    pub site: &'a str,
    pub client_id: &'a str,
    /// First topic level before `{grid}/meter/{device}/telemetry`.
    pub prefix: &'a str,
    pub qos: u8,
    pub port: u16,
    pub store: &'a str,
    pub rules: &'a std::path::Path,
    pub builtin: bool,
    pub grids: usize,
    /// Device ids; device `i` is in grid `g{i % grids + 1}`.
    pub devices: Vec<String>,
}

impl MeterPark<'_> {
    /// The gateway config: JSON telemetry `{"ts_ns", "residual_ma", "temp_c", "voltage_v", "current_a"}`
    /// subscribed at `qos` (a kept session at QoS 1), forwarded with gzip to `store`, incidents on
    /// the same broker.
    pub fn config(&self) -> String {
        use std::fmt::Write as _;
        let mut c = format!(
            r#"[site]
id = "{site}"
[api]
listen = "{{api}}"
[rules]
builtin = {builtin}
dirs = [{rules:?}]
[[mqtt.brokers]]
id = "park"
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
persistent_session = {persistent}
[[mqtt.subscriptions]]
broker = "park"
topic = "{prefix}/{{grid}}/meter/{{device}}/telemetry"
qos = {qos}
timestamp = {{ pointer = "/ts_ns", unit = "ns" }}
[forward]
outbox = "outbox.db"
mqtt = {{ broker = "park" }}
[[forward.targets]]
id = "central"
url = "{store}"
org = "park"
bucket = "telemetry"
token = "t"
gzip = true
"#,
            site = self.site,
            builtin = self.builtin,
            rules = self.rules.display().to_string(),
            port = self.port,
            client_id = self.client_id,
            persistent = self.qos == 1,
            prefix = self.prefix,
            qos = self.qos,
            store = self.store,
        );
        for g in 1..=self.grids {
            let _ = writeln!(c, "[[grids]]\nid = \"g{g}\"");
        }
        for (i, d) in self.devices.iter().enumerate() {
            let _ = writeln!(
                c,
                "[[devices]]\nid = \"{d}\"\ngrid = \"g{}\"\ncategory = \"electrical\"\npoints = [{{ name = \"residual_ma\", unit = \"mA\" }}, {{ name = \"temp_c\", unit = \"°C\" }}, {{ name = \"voltage_v\", unit = \"V\" }}, {{ name = \"current_a\", unit = \"A\" }}]",
                i % self.grids + 1
            );
        }
        c
    }
}

/// One telemetry message of the meter park into `out` (cleared first); `noise` varies the other fields.
pub fn meter_reading(out: &mut String, ts_ns: i64, residual_ma: f64, noise: u64) {
    use std::fmt::Write as _;
    out.clear();
    let _ = write!(
        out,
        "{{\"ts_ns\":{ts_ns},\"residual_ma\":{residual_ma:.2},\"temp_c\":{:.1},\"voltage_v\":{:.1},\"current_a\":{:.2}}}",
        35.0 + (noise % 100) as f64 / 10.0,
        215.0 + (noise % 97) as f64 / 10.0,
        (noise % 5000) as f64 / 100.0
    );
}
