//! Notifications against real peers on loopback: a small HTTP receiver that checks the robots'
//! exact payloads and signatures, and a real SMTP server; all timing on a manual clock.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::Value;

use super::*;
use crate::incident::{IncidentStore, Manual};
use crate::model::incident::{Change, NewIncident, State};
use crate::model::time::ManualClock;

const T0: i64 = 1_764_577_805_000_000_000; // 2025-12-01T08:30:05Z
const SEC: i64 = 1_000_000_000;

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    /// Manual clock reading when the request was sent (set by the test after each turn).
    at: i64,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 server: records every request and answers from a script (default: errcode 0).
#[derive(Clone)]
struct Peer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Scripted answers per path prefix, used once each.
    answers: Arc<Mutex<VecDeque<(String, u16, String)>>>,
}

impl Peer {
    fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Self {
        let peer =
            Peer { port: listener.local_addr().unwrap().port(), requests: Arc::default(), answers: Arc::default() };
        let p = peer.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                p.requests.lock().unwrap().push(Request {
                    path,
                    headers,
                    body: String::from_utf8(body).unwrap(),
                    at: 0,
                });
                let (status, answer) = {
                    let mut answers = p.answers.lock().unwrap();
                    let path = &p.requests.lock().unwrap().last().unwrap().path.clone();
                    match answers.iter().position(|(prefix, _, _)| path.starts_with(prefix.as_str())) {
                        Some(i) => answers.remove(i).map(|(_, s, b)| (s, b)).unwrap(),
                        None => (200, r#"{"errcode":0,"errmsg":"ok"}"#.to_owned()),
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        peer
    }

    fn answer(&self, prefix: &str, status: u16, body: &str) {
        self.answers.lock().unwrap().push_back((prefix.to_owned(), status, body.to_owned()));
    }

    fn at(&self, prefix: &str) -> Vec<Request> {
        self.requests.lock().unwrap().iter().filter(|r| r.path.starts_with(prefix)).cloned().collect()
    }

    /// Stamps requests not yet stamped with the clock reading `now`.
    fn stamp(&self, now: i64) {
        for r in self.requests.lock().unwrap().iter_mut().filter(|r| r.at == 0) {
            r.at = now;
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: IncidentStore,
    notifier: Notifier,
    clock: Arc<ManualClock>,
    config: Config,
    db: PathBuf,
}

const BASE: &str = r#"
[site]
id = "park1"
name = "测试园区"
[[grids]]
id = "g1"
name = "一号网格"
[[grids]]
id = "g2"
[[devices]]
id = "m1"
name = "1号配电柜"
grid = "g1"
category = "electrical"
points = [{ name = "ir", unit = "mA" }]
[[devices]]
id = "e1"
grid = "g2"
category = "electrical"
points = [{ name = "ir", unit = "mA" }]
[notify]
base_url = "http://park.lan:8080"
[[notify.contacts]]
name = "李工"
mobile = "13900000002"
email = "li@park.example"
feishu_id = "ou_li"
role = "officer"
grids = ["g1"]
[[notify.contacts]]
name = "Zhao"
mobile = "13900000003"
email = "zhao@park.example"
role = "supervisor"
grids = ["g1"]
[[notify.contacts]]
name = "Chen"
mobile = "13900000004"
email = "chen@park.example"
role = "safety_manager"
"#;

fn rig(notify: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}\n{notify}");
    let config = crate::config::from_str(&text, "t.toml".as_ref(), dir.path()).unwrap();
    let path = dir.path().join("incidents.db");
    let (conn, _, _) = crate::incident::open(&path).unwrap();
    let (store, _thread) = crate::incident::spawn(conn).unwrap();
    let clock = Arc::new(ManualClock::new(T0, 0));
    let db = dir.path().join("notify.db");
    let notifier = open_notifier(&config, &path, &db, clock.clone());
    Rig { _dir: dir, store, notifier, clock, config, db }
}

fn open_notifier(
    config: &Config,
    incidents: &std::path::Path,
    db: &std::path::Path,
    clock: Arc<ManualClock>,
) -> Notifier {
    let registry = Arc::new(Registry::from_config(config));
    let directory = Arc::new(people::StaticDirectory::new(config.notify.contacts.clone()));
    let planner = Planner::new(config, registry, directory);
    Notifier::open(planner, db, ChangeLog::open(incidents).unwrap(), clock).unwrap()
}

fn raised(id: i64, at: i64, severity: Severity, value: f64) -> Change {
    Change::Open(NewIncident {
        id,
        at,
        rule: "electrical.residual_current".into(),
        title: "剩余电流超限".into(),
        category: "electrical".into(),
        severity,
        state: State::ActiveUnacked,
        device: "m1".into(),
        grid: "g1".into(),
        point: "ir".into(),
        value,
        message: "剩余电流 350 mA 超过限值 300 mA（GB 14287.2）".into(),
        plan: String::new(),
    })
}

impl Rig {
    /// The notifier goes away (a crash: nothing is flushed) and a new one opens the same ledger.
    fn restart(self) -> Rig {
        let Rig { _dir, store, notifier, clock, config, db } = self;
        drop(notifier);
        let notifier = open_notifier(&config, &_dir.path().join("incidents.db"), &db, clock.clone());
        Rig { _dir, store, notifier, clock, config, db }
    }

    async fn raise(&self, changes: Vec<Change>) {
        self.store.apply(changes, None).await.unwrap();
        self.store.sync().await.unwrap();
    }

    async fn ack(&self, id: i64) {
        self.store.manual(id, Manual::Ack, "李工".into(), None, self.clock.wall_ns()).await.unwrap();
        self.store.sync().await.unwrap();
    }

    /// Turns at every `step` ns until `until`, stamping what each turn sent.
    fn run_until(&mut self, until: i64, step: i64, peer: &Peer) {
        while self.clock.wall_ns() < until {
            self.clock.advance(step);
            self.notifier.turn_blocking().unwrap();
            peer.stamp(self.clock.wall_ns());
        }
    }

    fn deliveries(&self, incident: Option<i64>) -> Vec<ledger::DeliveryView> {
        Ledger::open(&self.db, "park1").unwrap().deliveries(incident, None, 10_000).unwrap()
    }
}

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg);
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

fn query(path: &str, name: &str) -> String {
    let q = path.split_once('?').unwrap().1;
    q.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_owned()
}

#[tokio::test]
async fn robots_get_their_exact_payloads_and_signatures() {
    let peer = Peer::start();
    let p = peer.port;
    let mut rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "wx"
        kind = "wecom"
        url = "http://127.0.0.1:{p}/cgi-bin/webhook/send"
        secret = "WXKEY"
        mentions = ["13800000001"]
        people = ["on_duty"]
        [[notify.receivers]]
        id = "dd"
        kind = "dingtalk"
        url = "http://127.0.0.1:{p}/robot/send?access_token=TOKEN"
        secret = "SECxyz"
        keyword = "园区告警"
        people = ["on_duty"]
        [[notify.receivers]]
        id = "fs"
        kind = "feishu"
        url = "http://127.0.0.1:{p}/open-apis/bot/v2/hook/FSTOKEN"
        secret = "fsecret"
        people = ["on_duty"]
        lang = "en"
        [[notify.routes]]
        receivers = ["wx", "dd", "fs"]
        group_wait = "0s"
        "#
    ));
    // Feishu answers with `code`, the others with `errcode`; DingTalk refuses once "too fast".
    rig.raise(vec![raised(1, T0, Severity::Critical, 350.0)]).await;
    peer.answer("/robot/send", 200, r#"{"errcode":130101,"errmsg":"send too fast"}"#);
    peer.answer("/open-apis/", 200, r#"{"code":0,"msg":"success"}"#);
    rig.run_until(T0 + SEC, SEC, &peer);

    let wx = peer.at("/cgi-bin/webhook/send");
    assert_eq!(wx.len(), 1);
    assert_eq!(wx[0].path, "/cgi-bin/webhook/send?key=WXKEY");
    assert!(wx[0].header("content-type").unwrap().starts_with("application/json"));
    let body = wx[0].json();
    let content = body["text"]["content"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        serde_json::json!({"msgtype": "text", "text": {"content": content,
            "mentioned_mobile_list": ["13800000001", "13900000002"]}})
    );
    for want in [
        "【紧急】",
        "剩余电流超限",
        "一号网格",
        "1号配电柜",
        "350 mA",
        "GB 14287.2",
        "2025-12-01 16:30:05 CST",
        "http://park.lan:8080/#/incidents/1",
    ] {
        assert!(content.contains(want), "{want:?} missing from {content}");
    }

    let dd = peer.at("/robot/send");
    assert_eq!(dd.len(), 1, "refused once, not yet retried");
    let ts = query(&dd[0].path, "timestamp");
    let sign = query(&dd[0].path, "sign");
    let expected = hmac_b64(b"SECxyz", format!("{ts}\nSECxyz").as_bytes());
    assert_eq!(sign, expected.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"));
    assert_eq!(ts.parse::<i64>().unwrap(), rig.clock.wall_ns() / 1_000_000);
    let body = dd[0].json();
    let text = body["text"]["content"].as_str().unwrap();
    assert!(text.starts_with("园区告警 "), "{text}");
    assert!(text.contains("@13900000002"), "{text}");
    assert_eq!(body["msgtype"], "text");
    assert_eq!(body["at"], serde_json::json!({"atMobiles": ["13900000002"], "isAtAll": false}));

    let fs = peer.at("/open-apis/bot/v2/hook/FSTOKEN");
    assert_eq!(fs.len(), 1);
    let body = fs[0].json();
    let ts = body["timestamp"].as_str().unwrap();
    assert_eq!(ts.parse::<i64>().unwrap(), rig.clock.wall_ns() / SEC);
    assert_eq!(body["sign"].as_str().unwrap(), hmac_b64(format!("{ts}\nfsecret").as_bytes(), b""));
    assert_eq!(body["msg_type"], "text");
    let text = body["content"]["text"].as_str().unwrap();
    assert!(text.contains("[CRITICAL] 剩余电流超限") && text.contains("<at user_id=\"ou_li\">李工</at>"), "{text}");

    // The refused DingTalk message is retried after its backoff, signed afresh, and delivered once.
    let d = rig.deliveries(Some(1));
    let dd_status = |d: &[ledger::DeliveryView]| d.iter().find(|x| x.receiver == "dd").unwrap().status.clone();
    assert_eq!(dd_status(&d), "retrying");
    rig.run_until(T0 + 10 * SEC, SEC, &peer);
    let dd = peer.at("/robot/send");
    assert_eq!(dd.len(), 2);
    assert_ne!(query(&dd[1].path, "timestamp"), query(&dd[0].path, "timestamp"));
    assert_eq!(dd_status(&rig.deliveries(Some(1))), "delivered");
    let m = rig.notifier.metrics();
    let dd_m = m.receivers.iter().find(|r| r.id == "dd").unwrap();
    assert_eq!((dd_m.sent.load(Ordering::Relaxed), dd_m.retried.load(Ordering::Relaxed)), (1, 1));
}

#[tokio::test]
async fn a_permanent_refusal_with_http_200_is_given_up() {
    let peer = Peer::start();
    let p = peer.port;
    let mut rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "wx"
        kind = "wecom"
        url = "http://127.0.0.1:{p}/send?key=K"
        [[notify.routes]]
        receivers = ["wx"]
        group_wait = "0s"
        "#
    ));
    rig.raise(vec![raised(1, T0, Severity::Major, 320.0)]).await;
    peer.answer("/send", 200, r#"{"errcode":40058,"errmsg":"content too long"}"#);
    rig.run_until(T0 + 120 * SEC, SEC, &peer);
    assert_eq!(peer.at("/send").len(), 1, "a permanent refusal is not retried");
    let d = rig.deliveries(Some(1));
    assert_eq!(d[0].status, "failed");
    assert!(d[0].error.as_deref().unwrap().contains("40058"), "{:?}", d[0].error);
}

#[tokio::test]
async fn a_storm_becomes_a_few_summaries_within_the_rate_limit() {
    let peer = Peer::start();
    let p = peer.port;
    let mut rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "wx"
        kind = "wecom"
        url = "http://127.0.0.1:{p}/send?key=K"
        [[notify.routes]]
        receivers = ["wx"]
        group_wait = "10s"
        group_interval = "1m"
        "#
    ));
    // 500 incidents in grid g1 within one minute, while the notifier keeps turning.
    for batch in 0..50 {
        let at = rig.clock.wall_ns();
        let changes = (0..10)
            .map(|k| {
                let id = batch * 10 + k + 1;
                let severity = if id % 100 == 0 { Severity::Critical } else { Severity::Minor };
                raised(id, at, severity, 300.0 + id as f64)
            })
            .collect();
        rig.raise(changes).await;
        let until = rig.clock.wall_ns() + 1_200_000_000;
        rig.run_until(until, 200_000_000, &peer);
    }
    rig.run_until(T0 + 10 * 60 * SEC, SEC, &peer);
    let sent = peer.at("/send");
    assert!(sent.len() >= 2 && sent.len() <= 6, "{} messages", sent.len());
    for r in &sent {
        let window = sent.iter().filter(|x| x.at > r.at - 60 * SEC && x.at <= r.at).count();
        assert!(window <= 20, "{window} messages within a minute");
        let text = r.json()["text"]["content"].as_str().unwrap().to_owned();
        assert!(text.starts_with("【告警汇总】一号网格"), "{text}");
        assert!(text.contains("最严重的"), "{text}");
    }
    let worst = |r: &Request| r.json()["text"]["content"].as_str().unwrap().contains("[紧急]");
    assert!(sent.iter().any(worst), "the critical incidents are named among the worst");
    let covered: usize = rig.deliveries(None).iter().map(|d| d.incidents.len()).sum();
    assert_eq!(covered, 500, "every incident is in exactly one summary");
}

fn escalation_rig(peer: &Peer) -> Rig {
    let p = peer.port;
    rig(&format!(
        r#"
        [[notify.receivers]]
        id = "group"
        kind = "webhook"
        url = "http://127.0.0.1:{p}/group"
        [[notify.receivers]]
        id = "sup"
        kind = "webhook"
        url = "http://127.0.0.1:{p}/sup"
        people = ["supervisor"]
        [[notify.receivers]]
        id = "mgr"
        kind = "webhook"
        url = "http://127.0.0.1:{p}/mgr"
        people = ["safety_manager"]
        [[notify.routes]]
        receivers = ["group"]
        group_wait = "0s"
        repeat_interval = "24h"
        escalation = [{{ after = "10m", receivers = ["sup"] }}, {{ after = "30m", receivers = ["mgr"] }}]
        escalation_critical = [{{ after = "2m", receivers = ["sup"] }}, {{ after = "5m", receivers = ["mgr"] }}]
        "#
    ))
}

#[tokio::test]
async fn unacknowledged_incidents_escalate_to_supervisor_then_manager() {
    let peer = Peer::start();
    let mut rig = escalation_rig(&peer);
    rig.raise(vec![raised(1, T0, Severity::Major, 350.0)]).await;
    rig.run_until(T0 + 31 * 60 * SEC, 5 * SEC, &peer);
    let (group, sup, mgr) = (peer.at("/group"), peer.at("/sup"), peer.at("/mgr"));
    assert_eq!((group.len(), sup.len(), mgr.len()), (1, 1, 1));
    assert!(sup[0].at >= T0 + 600 * SEC && sup[0].at < T0 + 605 * SEC, "{}", (sup[0].at - T0) / SEC);
    assert!(mgr[0].at >= T0 + 1800 * SEC && mgr[0].at < T0 + 1805 * SEC, "{}", (mgr[0].at - T0) / SEC);
    let body = sup[0].json();
    assert_eq!(body["reason"], "escalation");
    assert_eq!(body["step"], 1);
    assert_eq!(body["recipients"][0]["name"], "Zhao");
    assert!(body["text"].as_str().unwrap().contains("升级第1级：10 分钟未确认"), "{body}");
    assert_eq!(mgr[0].json()["recipients"][0]["name"], "Chen");
    assert!(sup[0].header("idempotency-key").unwrap().starts_with("pw-park1-"));
    // Every step is a line of the incident's history.
    let reasons: Vec<String> = rig.deliveries(Some(1)).iter().map(|d| format!("{}:{}", d.receiver, d.reason)).collect();
    assert_eq!(reasons, ["mgr:escalation", "sup:escalation", "group:firing"]);
}

#[tokio::test]
async fn an_ack_a_second_before_the_step_stops_every_escalation() {
    let peer = Peer::start();
    let mut rig = escalation_rig(&peer);
    rig.raise(vec![raised(1, T0, Severity::Major, 350.0)]).await;
    rig.run_until(T0 + 599 * SEC, SEC, &peer);
    rig.ack(1).await;
    rig.run_until(T0 + 40 * 60 * SEC, 5 * SEC, &peer);
    assert_eq!((peer.at("/group").len(), peer.at("/sup").len(), peer.at("/mgr").len()), (1, 0, 0));
}

#[tokio::test]
async fn critical_incidents_escalate_on_shorter_steps() {
    let peer = Peer::start();
    let mut rig = escalation_rig(&peer);
    rig.raise(vec![raised(1, T0, Severity::Critical, 900.0)]).await;
    rig.run_until(T0 + 6 * 60 * SEC, 5 * SEC, &peer);
    let (sup, mgr) = (peer.at("/sup"), peer.at("/mgr"));
    assert_eq!((sup.len(), mgr.len()), (1, 1));
    assert!(sup[0].at >= T0 + 120 * SEC && sup[0].at < T0 + 125 * SEC);
    assert!(mgr[0].at >= T0 + 300 * SEC && mgr[0].at < T0 + 305 * SEC);
}

#[tokio::test]
async fn queued_while_the_receiver_is_down_is_delivered_once_after_a_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "hook"
        kind = "webhook"
        url = "http://127.0.0.1:{port}/hook"
        secret = "whsecret"
        [[notify.routes]]
        receivers = ["hook"]
        group_wait = "0s"
        "#
    ));
    rig.raise(vec![raised(1, T0, Severity::Major, 350.0)]).await;
    for _ in 0..3 {
        rig.clock.advance(SEC);
        rig.notifier.turn_blocking().unwrap();
    }
    let d = rig.deliveries(Some(1));
    assert_eq!((d.len(), d[0].status.as_str()), (1, "retrying"));
    // The notifier goes away with the delivery queued; the receiver comes back; a new one takes over.
    let peer = Peer::on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let mut rig = rig.restart();
    rig.run_until(T0 + 120 * SEC, SEC, &peer);
    let got = peer.at("/hook");
    assert_eq!(got.len(), 1, "delivered exactly once");
    let key = got[0].header("idempotency-key").unwrap();
    let body = got[0].json();
    assert_eq!(body["idempotency_key"], key);
    assert_eq!(body["incident_ids"], serde_json::json!([1]));
    let sig = got[0].header("x-parkwatch-signature").unwrap();
    assert_eq!(sig, channel::webhook_signature("whsecret", got[0].body.as_bytes()));
    assert_eq!(rig.deliveries(Some(1))[0].status, "delivered");
}

#[tokio::test]
async fn a_change_committed_before_the_first_turn_is_notified_after_a_crash() {
    let peer = Peer::start();
    let rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "hook"
        kind = "webhook"
        url = "http://127.0.0.1:{}/hook"
        secret = "whsecret"
        [[notify.routes]]
        receivers = ["hook"]
        group_wait = "0s"
        "#,
        peer.port
    ));
    // The incident is committed, and the notifier dies before its first turn: a new ledger must not
    // make the next start begin at the head, past this incident.
    rig.raise(vec![raised(1, T0, Severity::Major, 350.0)]).await;
    let mut rig = rig.restart();
    rig.run_until(T0 + 30 * SEC, SEC, &peer);
    let got = peer.at("/hook");
    assert_eq!(got.len(), 1, "the incident raised before the crash is notified once");
    assert_eq!(got[0].json()["incident_ids"], serde_json::json!([1]));
}

#[tokio::test]
async fn mail_reaches_a_real_smtp_server() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new("python3")
        .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (pip install aiosmtpd)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::yield_now();
    }
    let mut rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "mail"
        kind = "smtp"
        host = "127.0.0.1"
        port = {port}
        security = "none"
        from = "parkwatch@park.example"
        to = ["ops@park.example"]
        people = ["supervisor"]
        lang = "en"
        [[notify.routes]]
        receivers = ["mail"]
        group_wait = "0s"
        "#
    ));
    rig.raise(vec![raised(7, T0, Severity::Critical, 350.0)]).await;
    rig.clock.advance(SEC);
    rig.notifier.turn_blocking().unwrap();
    assert_eq!(rig.deliveries(Some(7))[0].status, "delivered", "{:?}", rig.deliveries(Some(7)));
    let _ = child.kill();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = child.wait();
    assert!(out.contains("To: ops@park.example, zhao@park.example"), "{out}");
    assert!(out.contains("Message-ID: <pw-park1-1@parkwatch>"), "{out}");
    let b64 = |s: &str| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap();
    let subject = out.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap();
    let encoded = subject.split("=?utf-8?b?").nth(1).unwrap().split("?=").next().unwrap();
    let subject = subject.replace(&format!("=?utf-8?b?{encoded}?="), &b64(encoded));
    assert_eq!(subject, "[CRITICAL] 剩余电流超限 · Alarm");
    let body_b64: String = out
        .split("Content-Transfer-Encoding: base64")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .skip_while(|l| !l.trim().is_empty())
        .take_while(|l| !l.starts_with("------------"))
        .map(str::trim)
        .collect();
    let body = b64(&body_b64);
    for want in [
        "Grid: 一号网格",
        "Device: 1号配电柜",
        "Value: 350 mA",
        "Time: 2025-12-01 16:30:05 CST",
        "http://park.lan:8080/#/incidents/7",
    ] {
        assert!(body.contains(want), "{want:?} missing from {body}");
    }
}

#[tokio::test]
async fn deliveries_are_scoped_to_the_callers_grids() {
    let peer = Peer::start();
    let p = peer.port;
    let mut rig = rig(&format!(
        r#"
        [[notify.receivers]]
        id = "hook"
        kind = "webhook"
        url = "http://127.0.0.1:{p}/hook"
        [[notify.routes]]
        receivers = ["hook"]
        group_wait = "0s"
        "#
    ));
    let mut other = raised(2, T0, Severity::Major, 310.0);
    if let Change::Open(n) = &mut other {
        n.device = "e1".into();
        n.grid = "g2".into();
    }
    rig.raise(vec![raised(1, T0, Severity::Major, 350.0), other]).await;
    rig.run_until(T0 + 5 * SEC, SEC, &peer);
    assert_eq!(peer.at("/hook").len(), 2, "one message per grid");
    let handle = NotifyHandle { path: rig.db.clone(), site: "park1".into(), metrics: rig.notifier.metrics() };
    let grids = |g: Option<&[String]>| -> Vec<String> {
        handle.deliveries(None, g, 100).unwrap().into_iter().map(|d| d.grid).collect()
    };
    assert_eq!(grids(None), ["g2", "g1"]);
    assert_eq!(grids(Some(&["g1".to_owned()])), ["g1"]);
    assert!(grids(Some(&[])).is_empty());
    assert_eq!(handle.deliveries(Some(2), Some(&["g2".to_owned()]), 100).unwrap()[0].incidents, [2]);
}
