//! Helpers for end-to-end tests: real peers (Mosquitto, the gateway binary) on free loopback ports,
//! each test in its own temporary directory, and waits on conditions instead of sleeps.

pub mod bench;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

/// The config of a broker on loopback `port` with one subscription of bare numbers on
/// `park/{grid}/{device}/{point}`: how most end-to-end tests feed their gateway.
pub fn numbers_over_mqtt(port: u16) -> String {
    format!(
        r#"[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {port}
reconnect_min_ms = 100
reconnect_max_ms = 500

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/{{device}}/{{point}}"
format = "number"
"#
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Calls `f` until it returns `Some`, failing the test with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until `read` returns `target`, for as long as it keeps moving: fails when it has not changed
/// for `stall`, or after `limit` in all. A loaded machine is slow, not stuck; a stuck pipeline is.
pub fn wait_for_count(
    what: &str,
    target: f64,
    stall: Duration,
    limit: Duration,
    mut read: impl FnMut() -> Option<f64>,
) {
    let start = Instant::now();
    let mut last = None;
    let mut moved = Instant::now();
    loop {
        let now = read();
        if now == Some(target) {
            return;
        }
        if now != last {
            last = now;
            moved = Instant::now();
        }
        assert!(
            moved.elapsed() < stall && start.elapsed() < limit,
            "waiting for {what}: reached {last:?} of {target} after {:?}, unchanged for {:?}",
            start.elapsed(),
            moved.elapsed()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The `parkwatch` binary, built once per test run in the profile the tests are built in.
/// `PARKWATCH_BIN` names another one (a profiler wrapper, an installed build).
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PARKWATCH_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test binary>
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "parkwatch", "--bin", "parkwatch"]).current_dir(root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the parkwatch binary failed");
        // Checkouts sharing one target directory overwrite `target/<profile>/parkwatch` with their own
        // build: run a copy made right after this checkout's build.
        let checkout = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            root().hash(&mut h);
            h.finish()
        };
        let copy = profile_dir.join(format!("parkwatch-e2e-{checkout:016x}"));
        let tmp = profile_dir.join(format!("parkwatch-e2e-{checkout:016x}.{}", std::process::id()));
        std::fs::copy(profile_dir.join("parkwatch"), &tmp).expect("copy the parkwatch binary");
        std::fs::rename(&tmp, &copy).expect("put the parkwatch binary in place");
        copy
    })
    .clone()
}

fn find(program: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(dirs.iter().copied()).map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// A directory with one rule pack: `t.high`, major, when a device's `ua` is above 300 V.
pub fn high_voltage_rule() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("high.rhai"),
        r#"rule(#{ id: "t.high", category: "electrical", severity: "major", watch: #{ points: ["ua"] },
                  condition: |ctx| ctx.value > 300.0 });"#,
    )
    .unwrap();
    dir
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    wait_until(Duration::from_secs(10), what, || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
}

/// A Mosquitto broker on a free port, stopped on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto with `extra` lines of configuration.
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n\
                 max_queued_messages 1000000\n{extra}\n"
            ),
        )
        .unwrap();
        let mut m = Self { port, child: None, dir };
        m.run();
        m
    }

    /// Starts the broker (again) on the same port and configuration.
    pub fn run(&mut self) {
        let bin = find("mosquitto", &["/usr/sbin"]).expect("mosquitto is not installed (apt-get install -y mosquitto)");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto to listen");
    }

    /// Stops the broker (SIGKILL: like a crash or a cut cable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `parkwatch run` with its own directory and API port.
pub struct Gateway {
    pub api: SocketAddr,
    pub dir: tempfile::TempDir,
    /// An admin API token, made with `parkwatch token create` before the gateway started.
    pub token: String,
    child: Option<Child>,
    /// When the gateway counts as started; `None`: plain `GET /healthz` answers 200.
    ready: Option<Box<dyn Fn(SocketAddr) -> bool>>,
}

/// Runs `parkwatch` with `args` (and `stdin` piped in) and returns its standard output; fails the test
/// when it fails.
pub fn parkwatch_cli(args: &[&str], stdin: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(gateway_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run parkwatch");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "parkwatch {args:?} failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Creates an API token with `parkwatch token create` against `config`; returns the token.
pub fn create_token(config: &Path, name: &str, role: &str, grids: &[&str]) -> String {
    let config = config.to_str().unwrap();
    let mut args = vec!["token", "create", "-c", config, "--name", name, "--role", role];
    for g in grids {
        args.extend(["--grid", g]);
    }
    let out = parkwatch_cli(&args, "");
    out.lines()
        .find_map(|l| l.strip_prefix("PARKWATCH_TOKEN="))
        .unwrap_or_else(|| panic!("no PARKWATCH_TOKEN line in:\n{out}"))
        .to_owned()
}

impl Gateway {
    /// Writes `config` (with `{api}` replaced by a free address) and starts the gateway on it.
    pub fn start(config: &str) -> Self {
        Self::start_probed(config, None)
    }

    /// As [`Gateway::start`], started once `ready(api)` holds (an HTTPS API does not answer plain HTTP).
    pub fn start_with(config: &str, ready: impl Fn(SocketAddr) -> bool + 'static) -> Self {
        Self::start_probed(config, Some(Box::new(ready)))
    }

    fn start_probed(config: &str, ready: Option<Box<dyn Fn(SocketAddr) -> bool>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut text = config.replace("{api}", &api.to_string());
        if !text.contains("[incidents]") {
            // Incidents live in the test's own directory (the path is relative to the config).
            text.push_str("\n[incidents]\npath = \"incidents.db\"\n");
        }
        let config = dir.path().join("parkwatch.toml");
        std::fs::write(&config, text).unwrap();
        let token = create_token(&config, "e2e", "admin", &[]);
        let mut gw = Self { api, dir, token, child: None, ready };
        gw.restart();
        gw
    }

    /// Starts the process again on the same config and directory.
    pub fn restart(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("gateway.log")).unwrap();
        let child = Command::new(gateway_bin())
            .arg("run")
            .arg("-c")
            .arg(self.dir.path().join("parkwatch.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start parkwatch");
        self.child = Some(child);
        let api = self.api;
        wait_until(Duration::from_secs(15), "the gateway's /healthz", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the gateway exited early with {status}:\n{}", self.log());
            }
            match &self.ready {
                Some(ready) => ready(api).then_some(()),
                None => http_get(api, "/healthz").ok().filter(|(s, _)| *s == 200).map(|_| ()),
            }
        });
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") and waits for the exit.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("gateway running");
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit on SIG{signal}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `config` (with `{api}` replaced by this gateway's address) over its configuration file
    /// and sends SIGHUP, as `systemctl reload` does.
    pub fn reload_with(&self, config: &str) {
        let mut text = config.replace("{api}", &self.api.to_string());
        if !text.contains("[incidents]") {
            text.push_str("\n[incidents]\npath = \"incidents.db\"\n");
        }
        std::fs::write(self.dir.path().join("parkwatch.toml"), text).unwrap();
        let ok = Command::new("kill").arg("-HUP").arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success(), "kill -HUP failed");
    }

    /// Adds a user with `parkwatch user add` against this gateway's config (the password on standard
    /// input, never as an argument).
    pub fn add_user(&self, name: &str, role: &str, grids: &[&str], password: &str) {
        let config = self.dir.path().join("parkwatch.toml");
        let mut args = vec!["user", "add", name, "--role", role, "-c", config.to_str().unwrap()];
        for g in grids {
            args.extend(["--grid", g]);
        }
        parkwatch_cli(&args, &format!("{password}\n"));
    }

    /// `GET path` with the admin token: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get_as(self.api, path, Some(&self.token))
    }

    /// `POST path` with the admin token: status and body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, String), String> {
        http_post_as(self.api, path, body, Some(&self.token))
    }

    /// `GET path` as JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The value of one metric line, `name{labels}` exactly as exposed.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").ok()?;
        metric_value(&text, series)
    }

    /// The latest value of `device`/`point`, if it has one.
    pub fn point(&self, device: &str, point: &str) -> Option<serde_json::Value> {
        let points = self.json(&format!("/api/v1/points?device={device}"));
        points.as_array()?.iter().find(|p| p["point"] == point).map(|p| p["value"].clone())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of `series` in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET` on the API without credentials: status and body; 4xx and 5xx are answers, not errors.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_get_as(addr, path, None)
}

/// `GET` on the API with a bearer token.
pub fn http_get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let url = format!("http://{addr}{path}");
    let mut req = ureq::get(&url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => Ok((r.status(), r.into_string().map_err(|e| e.to_string())?)),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// `POST` JSON on the API without credentials: status and body.
pub fn http_post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Result<(u16, String), String> {
    http_post_as(addr, path, body, None)
}

/// `POST` JSON on the API with a bearer token.
pub fn http_post_as(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let url = format!("http://{addr}{path}");
    let mut req = ureq::post(&url).timeout(Duration::from_secs(10)).set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.send_string(&body.to_string()) {
        Ok(r) => Ok((r.status(), r.into_string().map_err(|e| e.to_string())?)),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// One HTTP exchange: status, the `Set-Cookie` and `Retry-After` headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of header `name`, when the answer had it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; fails the test when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request to the API over plain HTTP, with `headers` and a JSON body.
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Answer {
    let mut req = ureq::request(method, &format!("http://{addr}{path}")).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let headers = ["set-cookie", "retry-after"]
        .iter()
        .filter_map(|h| Some((h.to_string(), resp.header(h)?.to_owned())))
        .collect();
    Answer { status, headers, body: resp.into_string().unwrap_or_default() }
}

/// A logged-in browser: its cookie and CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// `POST /api/v1/login`: the session, or the answer that refused it.
pub fn login(addr: SocketAddr, user: &str, password: &str) -> Result<Session, Answer> {
    let a = send(addr, "POST", "/api/v1/login", &[], Some(&json!({ "user": user, "password": password })));
    if a.status != 200 {
        return Err(a);
    }
    let cookie = a.header("set-cookie").expect("a session cookie").split(';').next().unwrap().to_owned();
    let csrf = a.json()["csrf_token"].as_str().unwrap().to_owned();
    Ok(Session { cookie, csrf })
}

impl Session {
    /// `GET` with the session cookie.
    pub fn get(&self, addr: SocketAddr, path: &str) -> Answer {
        send(addr, "GET", path, &[("Cookie", &self.cookie)], None)
    }

    /// `POST` JSON with the session cookie and its CSRF token.
    pub fn post(&self, addr: SocketAddr, path: &str, body: &Value) -> Answer {
        send(addr, "POST", path, &[("Cookie", &self.cookie), ("X-CSRF-Token", &self.csrf)], Some(body))
    }
}

/// A real MQTT publisher (rumqttc), its connection driven by a thread; counts acknowledged QoS 1 messages.
pub struct Publisher {
    client: Client,
    pub acked: Arc<AtomicUsize>,
}

impl Publisher {
    /// Connects to the broker on `port`.
    pub fn connect(port: u16, id: &str) -> Self {
        Self::connect_with(port, id, 4 << 20)
    }

    /// Connects with room for messages of up to 64 MiB (poison tests).
    pub fn connect_large(port: u16, id: &str) -> Self {
        Self::connect_with(port, id, 64 << 20)
    }

    fn connect_with(port: u16, id: &str, max_packet: usize) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(max_packet, max_packet).set_inflight(1000);
        let (client, mut connection) = Client::new(opts, 100_000);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Self { client, acked }
    }

    /// Publishes and returns at once; QoS 1 acknowledgements are counted in `acked`.
    pub fn publish(&self, topic: &str, qos: u8, payload: impl Into<Vec<u8>>) {
        let qos = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        self.client.publish(topic, qos, false, payload).expect("queue a publish");
    }

    /// Waits until `n` QoS 1 messages in all were acknowledged by the broker.
    pub fn wait_acked(&self, n: usize) {
        wait_until(Duration::from_secs(30), "the broker to acknowledge publishes", || {
            (self.acked.load(Ordering::Relaxed) >= n).then_some(())
        });
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A VictoriaMetrics single-node store (Debian `victoria-metrics`) on a port of its own, accepting the
/// InfluxDB v2 write API. Deduplicates samples of one series at one millisecond, so a batch written
/// twice overwrites rather than adds.
pub struct Victoria {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Victoria {
    /// Starts on a free port.
    pub fn start() -> Self {
        let mut v = Self::reserve();
        v.run();
        v
    }

    /// Picks a port and a data directory without starting: the store is "down".
    pub fn reserve() -> Self {
        Self { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() }
    }

    /// Base URL for the gateway's config.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data.
    pub fn run(&mut self) {
        let bin = find("victoria-metrics", &["/usr/bin"])
            .expect("victoria-metrics is not installed (apt-get install -y victoria-metrics)");
        let log = File::create(self.dir.path().join("vm.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!("-storageDataPath={}", self.dir.path().join("data").display()))
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-search.latencyOffset=0s")
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start victoria-metrics");
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "victoria-metrics to answer", || {
            let (status, _) = http_get(SocketAddr::from(([127, 0, 0, 1], self.port)), "/health").ok()?;
            (status == 200).then_some(())
        });
    }

    /// Stops the store (SIGKILL: like a crash or a cut cable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every series matching `selector` (like `{__name__=~"electrical_.*"}`), as the export API gives them:
    /// `{"metric": {...}, "values": [...], "timestamps": [...]}`.
    pub fn export(&self, selector: &str) -> Vec<serde_json::Value> {
        let base = self.url();
        let _ = ureq::get(&format!("{base}/internal/force_flush")).call();
        let body = match ureq::get(&format!("{base}/api/v1/export")).query("match[]", selector).call() {
            Ok(r) => r.into_string().unwrap_or_default(),
            Err(_) => return Vec::new(),
        };
        body.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// (series, timestamp ms) pairs and the total number of values matching `selector`.
    pub fn count(&self, selector: &str) -> (usize, usize) {
        let mut distinct = std::collections::HashSet::new();
        let mut total = 0;
        for s in self.export(selector) {
            let key = s["metric"].to_string();
            for t in s["timestamps"].as_array().into_iter().flatten() {
                total += 1;
                distinct.insert((key.clone(), t.as_i64().unwrap_or_default()));
            }
        }
        (distinct.len(), total)
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the fault-injecting proxy does with one write request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward to the store.
    Pass,
    /// Answer with this status and body without forwarding.
    Status(u16, &'static str),
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// Answer every request with this status and body for this long, counted from the first request
    /// it answers; then the plan goes on.
    StatusFor(u16, &'static str, Duration),
    /// Answer 400 with this message to every request whose body contains the marker, and forward the
    /// others; stays in force until [`FaultProxy::clear`].
    RejectMarked(&'static str, &'static str),
}

/// One request the proxy saw: when, what it answered, and the body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub status: u16,
    pub body: String,
}

/// A small HTTP proxy in front of a store that answers each request with the next planned fault
/// (then passes everything), recording what it saw.
pub struct FaultProxy {
    pub port: u16,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    plan: Arc<std::sync::Mutex<std::collections::VecDeque<Fault>>>,
}

impl FaultProxy {
    /// Listens on a free port, forwarding to `upstream` (base URL).
    pub fn start(upstream: String, plan: Vec<Fault>) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let plan = Arc::new(std::sync::Mutex::new(plan.into_iter().collect::<std::collections::VecDeque<_>>()));
        let (log, faults) = (seen.clone(), plan.clone());
        std::thread::spawn(move || {
            // When the `StatusFor` at the head of the plan answered first.
            let mut since: Option<Instant> = None;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let text = String::from_utf8_lossy(&body).into_owned();
                // `None` forwards the request; `Some` answers it here.
                let answer: Option<(u16, String, String)> = {
                    let mut plan = faults.lock().unwrap();
                    loop {
                        match plan.front().cloned() {
                            Some(Fault::StatusFor(s, msg, d)) => {
                                if since.get_or_insert_with(Instant::now).elapsed() < d {
                                    break Some((s, String::new(), msg.to_owned()));
                                }
                                since = None;
                                plan.pop_front();
                            }
                            Some(Fault::RejectMarked(marker, msg)) => {
                                break text.contains(marker).then(|| (400, String::new(), msg.to_owned()));
                            }
                            Some(f) => {
                                plan.pop_front();
                                break match f {
                                    Fault::Status(s, msg) => Some((s, String::new(), msg.to_owned())),
                                    Fault::TooMany(secs) => {
                                        Some((429, format!("Retry-After: {secs}\r\n"), "slow down".to_owned()))
                                    }
                                    _ => None,
                                };
                            }
                            None => break None,
                        }
                    }
                };
                let (status, extra, reply) =
                    answer.unwrap_or_else(|| match ureq::post(&format!("{upstream}{path}")).send_bytes(&body) {
                        Ok(r) => (r.status(), String::new(), String::new()),
                        Err(ureq::Error::Status(s, r)) => (s, String::new(), r.into_string().unwrap_or_default()),
                        Err(e) => (502, String::new(), e.to_string()),
                    });
                log.lock().unwrap().push(Seen { at: Instant::now(), status, body: text });
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        Self { port, seen, plan }
    }

    /// Drops what is left of the plan: from now on every request passes.
    pub fn clear(&self) {
        self.plan.lock().unwrap().clear();
    }

    /// Base URL for the gateway's config.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A real MQTT subscriber collecting (topic, payload, retained) of everything it receives.
pub struct Subscriber {
    pub received: Arc<std::sync::Mutex<Vec<(String, String, bool)>>>,
    /// Connections made (1 while the first one holds).
    pub connects: Arc<AtomicUsize>,
    client: Client,
}

impl Subscriber {
    /// Connects to the broker on `port` and subscribes to `filter` (QoS 1); returns once the broker
    /// acknowledged the subscription, so nothing published after this call can pass it by.
    /// A kept session: should its connection drop (a loaded machine can stall it past a timeout),
    /// the broker holds the subscription and the QoS 1 messages meanwhile, and a lost session is
    /// subscribed again, so the test sees everything the gateway published.
    pub fn connect(port: u16, id: &str, filter: &str) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(false);
        let (client, mut connection) = Client::new(opts, 100);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let received: Arc<std::sync::Mutex<Vec<(String, String, bool)>>> = Arc::default();
        let connects = Arc::new(AtomicUsize::new(0));
        let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, count, suback) = (received.clone(), connects.clone(), subscribed.clone());
        let again = client.clone();
        let filter = filter.to_owned();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        if count.fetch_add(1, Ordering::SeqCst) > 0 && !c.session_present {
                            let _ = again.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => suback.store(true, Ordering::SeqCst),
                    Ok(Event::Incoming(Packet::Publish(p))) => log.lock().unwrap().push((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                        p.retain,
                    )),
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        wait_until(Duration::from_secs(30), "the subscription's SUBACK", || {
            subscribed.load(Ordering::SeqCst).then_some(())
        });
        Self { received, connects, client }
    }

    /// What was received so far.
    pub fn seen(&self) -> Vec<(String, String, bool)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// A small tmpfs volume (mounted as root, as the tests and CI run) that a test can fill to the last
/// byte and free again: a full disk under the gateway's files.
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on a fresh directory.
    pub fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs on {} (the tests run as root)", path.display());
        Self { path, _dir: dir }
    }

    /// Writes a filler file until the volume is full.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    /// Deletes the filler: space is back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
