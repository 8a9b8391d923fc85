//! The channels: each vendor's payload, signature and answer. A robot can refuse with HTTP 200 and a
//! non-zero code in the body, so every answer is read and classified as delivered, worth retrying
//! (network, 5xx, 429, the vendors' rate-limit codes) or refused for good.
//!
//! Payload and signature builders are pure and tested against notify.md; [`send`] does the blocking
//! I/O and runs on a delivery thread, never on the planner.

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

use super::message::{clip, Message};
use crate::config::notify::{Receiver, ReceiverKind, SmtpSecurity};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth trying again later.
    Temporary(String),
    /// Refused for good (bad signature, bad request, unknown robot).
    Permanent(String),
}

/// WeCom text content limit, bytes.
const WECOM_MAX: usize = 2048;
/// DingTalk and Feishu bodies stay well under the 20 KB limit.
const ROBOT_MAX: usize = 4000;

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message).as_ref().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Percent-encodes what base64 can produce besides letters and digits.
fn url_encode(s: &str) -> String {
    s.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// DingTalk's sign: Base64(HMAC-SHA256(key = secret, message = "<ms>\n<secret>")), not yet URL-encoded.
pub fn dingtalk_sign(secret: &str, ts_ms: i64) -> String {
    b64(&hmac_sha256(secret.as_bytes(), format!("{ts_ms}\n{secret}").as_bytes()))
}

/// Feishu's sign: Base64(HMAC-SHA256(key = "<s>\n<secret>", message = empty)).
pub fn feishu_sign(secret: &str, ts_s: i64) -> String {
    b64(&hmac_sha256(format!("{ts_s}\n{secret}").as_bytes(), b""))
}

/// The generic webhook's `X-Parkwatch-Signature` value for `body`.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(secret.as_bytes(), body);
    format!("sha256={}", mac.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn mobiles(r: &Receiver, m: &Message) -> Vec<String> {
    let mut v: Vec<String> = r.mentions.clone();
    for p in &m.people {
        if let Some(mobile) = &p.mobile {
            if !v.contains(mobile) {
                v.push(mobile.clone());
            }
        }
    }
    v
}

/// The WeCom robot body: text, with mobiles in `mentioned_mobile_list`.
pub fn wecom_body(r: &Receiver, m: &Message) -> Value {
    json!({
        "msgtype": "text",
        "text": { "content": clip(&m.text, WECOM_MAX), "mentioned_mobile_list": mobiles(r, m) },
    })
}

/// The DingTalk robot body: keyword first, `@mobile` in the text and in `at.atMobiles`.
pub fn dingtalk_body(r: &Receiver, m: &Message) -> Value {
    let at = mobiles(r, m);
    let mut text = String::new();
    if let Some(k) = &r.keyword {
        if !m.text.contains(k.as_str()) {
            text.push_str(k);
            text.push(' ');
        }
    }
    text.push_str(&clip(&m.text, ROBOT_MAX));
    if !at.is_empty() {
        text.push('\n');
        text.push_str(&at.iter().map(|a| format!("@{a}")).collect::<Vec<_>>().join(" "));
    }
    json!({ "msgtype": "text", "text": { "content": text }, "at": { "atMobiles": at, "isAtAll": false } })
}

/// The DingTalk URL with `timestamp` and `sign` when the robot is signed.
pub fn dingtalk_url(url: &str, secret: Option<&str>, ts_ms: i64) -> String {
    match secret {
        Some(s) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}timestamp={ts_ms}&sign={}", url_encode(&dingtalk_sign(s, ts_ms)))
        }
        None => url.to_owned(),
    }
}

/// The Feishu bot body: text with `<at>` for people with a Feishu id; signed when a secret is set.
pub fn feishu_body(r: &Receiver, m: &Message, ts_s: i64) -> Value {
    let mut text = clip(&m.text, ROBOT_MAX);
    for p in &m.people {
        if let Some(id) = &p.feishu_id {
            text.push_str(&format!(" <at user_id=\"{id}\">{}</at>", p.name));
        }
    }
    let mut body = json!({ "msg_type": "text", "content": { "text": text } });
    if let Some(s) = &r.secret {
        body["timestamp"] = json!(ts_s.to_string());
        body["sign"] = json!(feishu_sign(s, ts_s));
    }
    body
}

/// The generic webhook body: a stable schema with the idempotency key.
pub fn webhook_body(site: &str, r: &Receiver, key: &str, m: &Message) -> Value {
    json!({
        "idempotency_key": key,
        "site": site,
        "receiver": r.id,
        "reason": m.reason,
        "step": m.step,
        "grid": m.grid,
        "subject": m.subject,
        "text": m.text,
        "total": m.total,
        "counts": m.counts,
        "incident_ids": m.ids,
        "incidents": m.items,
        "recipients": m.people,
    })
}

/// The WeCom URL: the key goes into `?key=` when it is kept as the receiver's secret.
fn wecom_url(url: &str, secret: Option<&str>) -> String {
    match secret {
        Some(k) if !url.contains("key=") => format!("{url}{}key={k}", if url.contains('?') { '&' } else { '?' }),
        _ => url.to_owned(),
    }
}

/// Reads a robot's answer: `errcode` (WeCom, DingTalk) or `code` (Feishu), 0 meaning delivered.
pub fn robot_answer(kind: ReceiverKind, body: &str) -> Outcome {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Outcome::Temporary(format!("answer is not JSON: {}", clip(body, 200)));
    };
    let code = match kind {
        ReceiverKind::Feishu => v.get("code").or_else(|| v.get("StatusCode")),
        _ => v.get("errcode"),
    }
    .and_then(Value::as_i64);
    let msg = v.get("errmsg").or_else(|| v.get("msg")).and_then(Value::as_str).unwrap_or_default();
    match (kind, code) {
        (_, Some(0)) => Outcome::Delivered,
        (_, None) => Outcome::Temporary(format!("answer without a result code: {}", clip(body, 200))),
        // Rate limits and "system busy": later.
        (ReceiverKind::Wecom, Some(c @ (45009 | -1))) | (ReceiverKind::Dingtalk, Some(c @ (130101 | -1))) => {
            Outcome::Temporary(format!("code {c}: {msg}"))
        }
        (ReceiverKind::Feishu, Some(c @ 11232)) => Outcome::Temporary(format!("code {c}: {msg}")),
        (_, Some(c)) => Outcome::Permanent(format!("code {c}: {msg}")),
    }
}

fn status_outcome(status: u16, body: &str) -> Outcome {
    let text = format!("HTTP {status}: {}", clip(body, 200));
    match status {
        200..=299 => Outcome::Delivered,
        408 | 425 | 429 | 500..=599 => Outcome::Temporary(text),
        _ => Outcome::Permanent(text),
    }
}

/// One HTTP request; the status and body, or a transport error (always temporary).
fn http(
    timeout: Duration,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = if method == "GET" { req.call() } else { req.send_string(body) };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let mut text = String::new();
    let _ = resp.into_reader().take(64 * 1024).read_to_string(&mut text);
    Ok((status, text))
}

fn json_post(r: &Receiver, url: &str, body: &Value, extra: &[(String, String)]) -> Result<(u16, String), Outcome> {
    let mut headers = vec![("Content-Type".to_owned(), "application/json; charset=utf-8".to_owned())];
    headers.extend_from_slice(extra);
    http(Duration::from_secs(r.timeout_secs), "POST", url, &headers, &body.to_string()).map_err(Outcome::Temporary)
}

/// Sends `m` through receiver `r` once; `now` (UTC ns) stamps the vendors' signatures. An MQTT
/// receiver publishes with `mqtt`, the connection options of its broker.
pub fn send(
    site: &str,
    r: &Receiver,
    key: &str,
    m: &Message,
    now: i64,
    mqtt: Option<&rumqttc::MqttOptions>,
) -> Outcome {
    let url = r.url.as_deref().unwrap_or_default();
    let robot = |url: &str, body: Value| match json_post(r, url, &body, &[]) {
        Ok((200..=299, text)) => robot_answer(r.kind, &text),
        Ok((status, text)) => status_outcome(status, &text),
        Err(o) => o,
    };
    match r.kind {
        ReceiverKind::Wecom => robot(&wecom_url(url, r.secret.as_deref()), wecom_body(r, m)),
        ReceiverKind::Dingtalk => robot(&dingtalk_url(url, r.secret.as_deref(), now / 1_000_000), dingtalk_body(r, m)),
        ReceiverKind::Feishu => robot(url, feishu_body(r, m, now / 1_000_000_000)),
        ReceiverKind::Webhook => {
            let body = webhook_body(site, r, key, m).to_string();
            let mut headers = vec![
                ("Content-Type".to_owned(), "application/json; charset=utf-8".to_owned()),
                ("Idempotency-Key".to_owned(), key.to_owned()),
            ];
            if let Some(s) = &r.secret {
                headers.push(("X-Parkwatch-Signature".to_owned(), webhook_signature(s, body.as_bytes())));
            }
            match http(Duration::from_secs(r.timeout_secs), "POST", url, &headers, &body) {
                Ok((status, text)) => status_outcome(status, &text),
                Err(e) => Outcome::Temporary(e),
            }
        }
        ReceiverKind::Sms => sms(r, key, m),
        ReceiverKind::Smtp => mail(r, key, m),
        ReceiverKind::Mqtt => match mqtt {
            Some(o) => {
                mqtt_publish(o, &mqtt_topic(site, r, m), webhook_body(site, r, key, m).to_string(), r.timeout_secs)
            }
            None => Outcome::Permanent(format!("broker {:?} is not connected for notifications", r.broker)),
        },
    }
}

/// The topic of an MQTT receiver with `{site}`, `{grid}` and `{severity}` (the message's worst) filled in.
pub fn mqtt_topic(site: &str, r: &Receiver, m: &Message) -> String {
    let worst = m.items.iter().max_by_key(|i| i.rank()).map_or("none", |i| i.severity.as_str());
    r.topic
        .as_deref()
        .unwrap_or_default()
        .replace("{site}", site)
        .replace("{grid}", &m.grid)
        .replace("{severity}", worst)
}

/// Publishes `body` at QoS 1 on a connection of its own and waits for the broker's PUBACK: a message
/// counts as delivered only once the broker has it. The idempotency key in the body lets
/// subscribers drop the copy a retry after a lost PUBACK sends.
fn mqtt_publish(options: &rumqttc::MqttOptions, topic: &str, body: String, timeout_secs: u64) -> Outcome {
    use rumqttc::{ConnectReturnCode, ConnectionError, Event, Packet, QoS};
    let mut options = options.clone();
    options.set_clean_session(true);
    let (client, mut connection) = rumqttc::Client::new(options, 4);
    if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, body.into_bytes()) {
        return Outcome::Temporary(format!("mqtt: {e}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs.max(1));
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                let _ = client.disconnect();
                // Lets the DISCONNECT out before the connection is dropped; its outcome changes nothing.
                let _ = connection.recv_timeout(Duration::from_millis(100));
                return Outcome::Delivered;
            }
            Ok(Ok(_)) => {}
            Ok(Err(ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ))) => return Outcome::Permanent(format!("mqtt: the broker refused the login: {code:?}")),
            Ok(Err(e)) => return Outcome::Temporary(format!("mqtt: {e}")),
            Err(_) => return Outcome::Temporary(format!("mqtt: no PUBACK within {timeout_secs} s")),
        }
    }
}

fn sms(r: &Receiver, key: &str, m: &Message) -> Outcome {
    let text = clip(&m.text, 500);
    let text_json = serde_json::to_string(&text).unwrap_or_default();
    let fill = |s: &str| {
        s.replace("{mobiles}", &mobiles(r, m).join(","))
            .replace("{text_json}", text_json.trim_matches('"'))
            .replace("{text}", &text)
            .replace("{key}", key)
            .replace("{severity}", m.items.first().map_or("", |i| i.severity.as_str()))
    };
    let url = fill(r.url.as_deref().unwrap_or_default());
    let body = fill(r.body.as_deref().unwrap_or_default());
    let headers: Vec<(String, String)> = r.headers.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
    match http(Duration::from_secs(r.timeout_secs), r.method.as_deref().unwrap_or("POST"), &url, &headers, &body) {
        Ok((status, text)) => match status_outcome(status, &text) {
            Outcome::Delivered => match &r.success_contains {
                Some(want) if !text.contains(want.as_str()) => {
                    Outcome::Permanent(format!("answer lacks {want:?}: {}", clip(&text, 200)))
                }
                _ => Outcome::Delivered,
            },
            other => other,
        },
        Err(e) => Outcome::Temporary(e),
    }
}

fn mail(r: &Receiver, key: &str, m: &Message) -> Outcome {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{SmtpTransport, Transport};

    let host = r.host.as_deref().unwrap_or_default();
    let builder = match r.security {
        SmtpSecurity::Starttls => SmtpTransport::starttls_relay(host),
        SmtpSecurity::Tls => SmtpTransport::relay(host),
        SmtpSecurity::None => Ok(SmtpTransport::builder_dangerous(host)),
    };
    let mut builder = match builder {
        Ok(b) => b.timeout(Some(Duration::from_secs(r.timeout_secs))),
        Err(e) => return Outcome::Permanent(format!("mail server {host:?}: {e}")),
    };
    if let Some(port) = r.port {
        builder = builder.port(port);
    }
    if let (Some(u), Some(p)) = (&r.user, &r.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let Some(Ok(from)) = r.from.as_deref().map(str::parse::<Mailbox>) else {
        return Outcome::Permanent("no valid sender address".into());
    };
    let mut email = lettre::Message::builder()
        .from(from)
        .subject(m.subject.clone())
        .message_id(Some(format!("<{key}@parkwatch>")))
        .header(ContentType::TEXT_PLAIN);
    let mut any = false;
    let people = m.people.iter().filter_map(|p| p.email.as_deref());
    for to in r.to.iter().map(String::as_str).chain(people) {
        if let Ok(mb) = to.parse::<Mailbox>() {
            email = email.to(mb);
            any = true;
        }
    }
    if !any {
        return Outcome::Permanent("no recipient has a mail address".into());
    }
    let email = match email.body(m.text.clone()) {
        Ok(e) => e,
        Err(e) => return Outcome::Permanent(format!("cannot build the mail: {e}")),
    };
    match builder.build().send(&email) {
        Ok(_) => Outcome::Delivered,
        Err(e) if e.is_permanent() => Outcome::Permanent(e.to_string()),
        Err(e) => Outcome::Temporary(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dingtalk_sign_matches_the_documented_recipe() {
        // Recomputed independently: HMAC-SHA256(key = secret, message = "1700000000000\nSECtest").
        let s = dingtalk_sign("SECtest", 1_700_000_000_000);
        let again = b64(&hmac_sha256(b"SECtest", b"1700000000000\nSECtest"));
        assert_eq!(s, again);
        let url = dingtalk_url("http://h/robot/send?access_token=t", Some("SECtest"), 1_700_000_000_000);
        assert!(url.starts_with("http://h/robot/send?access_token=t&timestamp=1700000000000&sign="), "{url}");
        assert!(
            !url["http://h/robot/send?access_token=t&timestamp=1700000000000&sign=".len()..].contains(['+', '/', '='])
        );
    }

    #[test]
    fn robot_answers_with_http_200_can_fail() {
        use ReceiverKind::*;
        assert_eq!(robot_answer(Wecom, r#"{"errcode":0,"errmsg":"ok"}"#), Outcome::Delivered);
        assert!(matches!(robot_answer(Wecom, r#"{"errcode":45009,"errmsg":"freq"}"#), Outcome::Temporary(_)));
        assert!(matches!(robot_answer(Wecom, r#"{"errcode":40058,"errmsg":"long"}"#), Outcome::Permanent(_)));
        assert!(matches!(robot_answer(Dingtalk, r#"{"errcode":130101,"errmsg":"too fast"}"#), Outcome::Temporary(_)));
        assert!(matches!(robot_answer(Dingtalk, r#"{"errcode":310000,"errmsg":"sign"}"#), Outcome::Permanent(_)));
        assert_eq!(robot_answer(Feishu, r#"{"code":0,"msg":"success"}"#), Outcome::Delivered);
        assert!(matches!(robot_answer(Feishu, r#"{"code":11232,"msg":"limited"}"#), Outcome::Temporary(_)));
        assert!(matches!(robot_answer(Feishu, r#"{"code":19021,"msg":"sign"}"#), Outcome::Permanent(_)));
        assert!(matches!(status_outcome(503, ""), Outcome::Temporary(_)));
        assert!(matches!(status_outcome(429, ""), Outcome::Temporary(_)));
        assert!(matches!(status_outcome(404, ""), Outcome::Permanent(_)));
    }

    #[test]
    fn wecom_key_goes_into_the_url() {
        assert_eq!(wecom_url("http://h/cgi-bin/webhook/send", Some("K")), "http://h/cgi-bin/webhook/send?key=K");
        assert_eq!(wecom_url("http://h/send?key=A", Some("K")), "http://h/send?key=A");
    }
}
