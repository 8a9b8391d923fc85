//! `[notify]`: who hears about incidents and how — receivers (group robots, mail, SMS, generic
//! webhooks), the routes that pick them by grid, category, severity, rule and device tags, grouping
//! and escalation timings, and the contacts that stand in for the site's people until rosters exist.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::validate::{expand_env, read_secret, Problem};

/// Notification delivery; off without receivers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Base URL of the incident view; messages link to `<base_url>/#/incidents/<id>`.
    #[serde(default)]
    pub base_url: String,
    /// Language of messages unless a receiver says otherwise.
    #[serde(default)]
    pub lang: Lang,
    /// The delivery ledger (relative to the config file); default `notify.db` next to the incident database.
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub receivers: Vec<Receiver>,
    /// Ordered: the first matching route decides, unless it says `continue = true`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// People reachable by role until duty rosters are configured.
    #[serde(default)]
    pub contacts: Vec<Contact>,
}

impl Notify {
    /// The ledger file: `path`, or `notify.db` beside `incidents`.
    pub fn db_path(&self, incidents: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| incidents.with_file_name("notify.db"))
    }
}

/// Language of a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    Zh,
    En,
}

/// What a receiver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// JSON POST with an idempotency key, HMAC-SHA256 signed when a secret is set.
    Webhook,
    /// WeCom (企业微信) group robot.
    Wecom,
    /// DingTalk (钉钉) custom robot, signed when a secret is set.
    Dingtalk,
    /// Feishu (飞书) custom bot, signed when a secret is set.
    Feishu,
    /// Mail over SMTP.
    Smtp,
    /// An SMS gateway's HTTP API, as a request template.
    Sms,
    /// A JSON message published at QoS 1 on a broker of `mqtt.brokers` (a control room's display,
    /// a site's own paging system).
    Mqtt,
}

impl ReceiverKind {
    /// The name used in config, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Wecom => "wecom",
            Self::Dingtalk => "dingtalk",
            Self::Feishu => "feishu",
            Self::Smtp => "smtp",
            Self::Sms => "sms",
            Self::Mqtt => "mqtt",
        }
    }

    /// Messages per minute the vendor documents (notify.md), or a cautious default.
    pub fn default_rate(self) -> u32 {
        match self {
            Self::Wecom | Self::Dingtalk => 20,
            Self::Feishu => 100,
            Self::Webhook => 60,
            Self::Smtp => 30,
            Self::Sms => 10,
            Self::Mqtt => 600,
        }
    }
}

/// People a receiver reaches besides its fixed addresses, resolved when a message is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeopleRef {
    /// The officers on duty in the incident's grid.
    OnDuty,
    /// The grid's supervisor (网格长).
    Supervisor,
    /// The site's safety manager.
    SafetyManager,
}

/// Mail transport security.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// No TLS; only for a relay on the same host or in tests.
    None,
}

/// One place messages go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    pub id: String,
    pub kind: ReceiverKind,
    /// Webhook, robot or SMS gateway URL (`${VAR}` expanded).
    pub url: Option<String>,
    /// Signing secret (webhook, DingTalk, Feishu) or the WeCom robot key; prefer `secret_file`.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Mobiles always @-mentioned (robots) or texted (SMS).
    #[serde(default)]
    pub mentions: Vec<String>,
    /// People resolved per incident: mentioned by robots, mailed, texted.
    #[serde(default)]
    pub people: Vec<PeopleRef>,
    /// Language of this receiver's messages; default `notify.lang`.
    pub lang: Option<Lang>,
    /// Messages per minute at most; default per kind (WeCom and DingTalk 20, Feishu 100, …).
    pub rate_per_minute: Option<u32>,
    /// DingTalk: a keyword the robot requires, put at the start of every message.
    pub keyword: Option<String>,
    /// Seconds per request.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// SMTP server.
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// SMTP login.
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// SMTP sender address.
    pub from: Option<String>,
    /// SMTP recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// SMS: HTTP method (default POST).
    pub method: Option<String>,
    /// SMS: request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// SMS: body template; `{mobiles}`, `{text}`, `{text_json}` (JSON-escaped), `{key}`, `{severity}`.
    pub body: Option<String>,
    /// SMS: the answer must contain this text to count as sent (besides a 2xx status).
    pub success_contains: Option<String>,
    /// MQTT: id of a broker in `mqtt.brokers`.
    pub broker: Option<String>,
    /// MQTT: topic; `{site}`, `{grid}` and `{severity}` (the worst of the message) are filled in.
    pub topic: Option<String>,
}

fn default_timeout() -> u64 {
    10
}

impl Receiver {
    /// The rate limit in effect, messages per minute.
    pub fn rate(&self) -> u32 {
        self.rate_per_minute.unwrap_or_else(|| self.kind.default_rate())
    }
}

/// One escalation step: unacknowledged this long after it was raised, tell these receivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Like "10m".
    pub after: String,
    pub receivers: Vec<String>,
}

/// Which incidents go to which receivers, and when.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Grid ids; empty matches every grid.
    #[serde(default)]
    pub grids: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    /// Minimum severity: warning, minor, major, critical.
    pub severity: Option<String>,
    /// Rule ids.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Device tags that must all match.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub receivers: Vec<String>,
    /// Wait this long for more changes before the first message of a group (like "30s").
    #[serde(default = "default_group_wait")]
    pub group_wait: String,
    /// Then at most one message per group this often.
    #[serde(default = "default_group_interval")]
    pub group_interval: String,
    /// Remind of still unacknowledged incidents this often.
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: String,
    /// Tell when an incident returns to normal or is closed.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    #[serde(default)]
    pub escalation: Vec<Step>,
    /// Escalation for critical incidents, when shorter steps are wanted; default `escalation`.
    pub escalation_critical: Option<Vec<Step>>,
    /// Keep matching later routes after this one.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

fn default_group_wait() -> String {
    "30s".into()
}
fn default_group_interval() -> String {
    "5m".into()
}
fn default_repeat_interval() -> String {
    "4h".into()
}
fn yes() -> bool {
    true
}

/// A person reachable by role, until rosters say who is on duty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: String,
    pub mobile: Option<String>,
    pub email: Option<String>,
    pub wecom_id: Option<String>,
    pub feishu_id: Option<String>,
    /// officer (on duty in `grids`), supervisor (of `grids`) or safety_manager.
    pub role: ContactRole,
    #[serde(default)]
    pub grids: Vec<String>,
}

/// The role of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactRole {
    Officer,
    Supervisor,
    SafetyManager,
}

/// Nanoseconds of a duration like `500ms`, `30s`, `10m`, `4h`, `1d`.
pub fn duration_ns(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)?.checked_mul(1_000_000)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 64 && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks `[notify]` against the grids and reads its secrets; every problem with its key path.
pub(super) fn validate(n: &mut Notify, grids: &[&str], brokers: &[String], base: &Path) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut push = |path: String, message: String| p.push(Problem { path, message });
    if !n.base_url.is_empty() && !n.base_url.starts_with("http://") && !n.base_url.starts_with("https://") {
        push("notify.base_url".into(), format!("{:?}; expected an http:// or https:// URL", n.base_url));
    }
    if let Some(path) = n.path.as_mut() {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    }
    let mut ids = HashSet::new();
    for (i, r) in n.receivers.iter_mut().enumerate() {
        let at = format!("notify.receivers[{i}]");
        if !valid_id(&r.id) {
            push(
                format!("{at}.id"),
                format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", r.id),
            );
        } else if !ids.insert(r.id.clone()) {
            push(format!("{at}.id"), format!("duplicate receiver id {:?}; expected each receiver once", r.id));
        }
        if let Some(u) = r.url.as_mut() {
            match expand_env(u) {
                Ok(v) => *u = v,
                Err(e) => push(format!("{at}.url"), e),
            }
        }
        let needs_url = !matches!(r.kind, ReceiverKind::Smtp | ReceiverKind::Mqtt);
        match &r.url {
            Some(u) if !u.starts_with("http://") && !u.starts_with("https://") => {
                push(format!("{at}.url"), format!("{u:?}; expected an http:// or https:// URL"));
            }
            None if needs_url => {
                push(format!("{at}.url"), format!("missing; a {} receiver needs a URL", r.kind.as_str()))
            }
            _ => {}
        }
        for (slot, file, name) in
            [(&mut r.secret, &r.secret_file, "secret"), (&mut r.password, &r.password_file, "password")]
        {
            if let Some(v) = slot.as_mut() {
                match expand_env(v) {
                    Ok(x) => *v = x,
                    Err(e) => push(format!("{at}.{name}"), e),
                }
            }
            if let Some(f) = file {
                if slot.is_some() {
                    push(
                        format!("{at}.{name}_file"),
                        format!("both {name} and {name}_file are set; expected one of them"),
                    );
                }
                match read_secret(f, base) {
                    Ok(s) => *slot = Some(s),
                    Err(e) => push(format!("{at}.{name}_file"), e),
                }
            }
        }
        if r.kind == ReceiverKind::Dingtalk {
            if let Some(s) = &r.secret {
                if !s.starts_with("SEC") {
                    push(format!("{at}.secret"), "a DingTalk signing secret starts with \"SEC\"".into());
                }
            }
        }
        if r.kind == ReceiverKind::Mqtt {
            match &r.broker {
                Some(b) if !brokers.contains(b) => push(
                    format!("{at}.broker"),
                    format!("unknown broker {b:?}; expected one of mqtt.brokers: {}", brokers.join(", ")),
                ),
                None => push(format!("{at}.broker"), "missing; an mqtt receiver needs a broker of mqtt.brokers".into()),
                _ => {}
            }
            match &r.topic {
                Some(t) if t.is_empty() || t.contains(['+', '#']) => {
                    push(format!("{at}.topic"), format!("{t:?}; expected a topic to publish on, without wildcards"))
                }
                None => push(format!("{at}.topic"), "missing; an mqtt receiver needs a topic".into()),
                _ => {}
            }
        }
        if r.kind == ReceiverKind::Smtp {
            if r.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
                push(format!("{at}.host"), "missing; an smtp receiver needs the mail server's host".into());
            }
            match &r.from {
                Some(f) if f.parse::<lettre::message::Mailbox>().is_err() => {
                    push(format!("{at}.from"), format!("{f:?} is not a mail address"));
                }
                None => push(format!("{at}.from"), "missing; an smtp receiver needs a sender address".into()),
                _ => {}
            }
            for (j, t) in r.to.iter().enumerate() {
                if t.parse::<lettre::message::Mailbox>().is_err() {
                    push(format!("{at}.to[{j}]"), format!("{t:?} is not a mail address"));
                }
            }
            if r.to.is_empty() && r.people.is_empty() {
                push(format!("{at}.to"), "empty; expected recipients in `to` or `people`".into());
            }
            if r.password.is_some() && r.user.is_none() {
                push(format!("{at}.user"), "a password is set without a user; expected both".into());
            }
        }
        if r.kind == ReceiverKind::Sms {
            if r.body.is_none() {
                push(format!("{at}.body"), "missing; an sms receiver needs a body template with {text}".into());
            }
            if let Some(m) = &r.method {
                if !matches!(m.as_str(), "GET" | "POST" | "PUT") {
                    push(format!("{at}.method"), format!("{m:?}; expected GET, POST or PUT"));
                }
            }
            if r.mentions.is_empty() && r.people.is_empty() {
                push(format!("{at}.mentions"), "empty; expected mobiles in `mentions` or `people`".into());
            }
        }
        if r.rate() == 0 {
            push(format!("{at}.rate_per_minute"), "0; expected at least 1 message per minute".into());
        }
        if r.timeout_secs == 0 {
            push(format!("{at}.timeout_secs"), "0; expected at least 1 second".into());
        }
    }
    let known: Vec<String> = n.receivers.iter().map(|r| r.id.clone()).collect();
    let check_receivers = |list: &[String], at: &str, push: &mut dyn FnMut(String, String)| {
        if list.is_empty() {
            push(at.to_owned(), "empty; expected at least one receiver id".into());
        }
        for (j, id) in list.iter().enumerate() {
            if !known.contains(id) {
                push(
                    format!("{at}[{j}]"),
                    format!("receiver {id:?} is not defined (known receivers: {})", known.join(", ")),
                );
            }
        }
    };
    for (i, r) in n.routes.iter().enumerate() {
        let at = format!("notify.routes[{i}]");
        for (j, g) in r.grids.iter().enumerate() {
            if !grids.contains(&g.as_str()) {
                push(
                    format!("{at}.grids[{j}]"),
                    format!("grid {g:?} is not defined (known grids: {})", grids.join(", ")),
                );
            }
        }
        if let Some(s) = &r.severity {
            if crate::model::incident::Severity::parse(s).is_none() {
                push(format!("{at}.severity"), format!("{s:?}; expected warning, minor, major or critical"));
            }
        }
        check_receivers(&r.receivers, &format!("{at}.receivers"), &mut push);
        for (name, v) in [
            ("group_wait", &r.group_wait),
            ("group_interval", &r.group_interval),
            ("repeat_interval", &r.repeat_interval),
        ] {
            if duration_ns(v).is_none() {
                push(format!("{at}.{name}"), format!("{v:?}; expected a duration like \"30s\", \"5m\" or \"4h\""));
            }
        }
        if duration_ns(&r.group_interval).is_some_and(|d| d <= 0) {
            push(format!("{at}.group_interval"), "0; expected a positive duration".into());
        }
        for (name, steps) in
            [("escalation", Some(&r.escalation)), ("escalation_critical", r.escalation_critical.as_ref())]
        {
            let Some(steps) = steps else { continue };
            let mut last = 0;
            for (j, s) in steps.iter().enumerate() {
                match duration_ns(&s.after) {
                    Some(d) if d > last => last = d,
                    Some(_) => push(
                        format!("{at}.{name}[{j}].after"),
                        format!("{:?}; expected steps in increasing order of time", s.after),
                    ),
                    None => push(
                        format!("{at}.{name}[{j}].after"),
                        format!("{:?}; expected a duration like \"10m\"", s.after),
                    ),
                }
                check_receivers(&s.receivers, &format!("{at}.{name}[{j}].receivers"), &mut push);
            }
        }
    }
    for (i, c) in n.contacts.iter().enumerate() {
        for (j, g) in c.grids.iter().enumerate() {
            if !grids.contains(&g.as_str()) {
                push(
                    format!("notify.contacts[{i}].grids[{j}]"),
                    format!("grid {g:?} is not defined (known grids: {})", grids.join(", ")),
                );
            }
        }
        if c.mobile.is_none() && c.email.is_none() {
            push(
                format!("notify.contacts[{i}]"),
                "neither mobile nor email; expected a way to reach the person".into(),
            );
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<(String, String)> {
        let mut n: Notify = toml::from_str(toml_text).unwrap();
        validate(&mut n, &["g1", "g2"], &["local".to_owned()], Path::new("."))
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect()
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("10m"), Some(600_000_000_000));
        assert_eq!(duration_ns("0s"), Some(0));
        assert_eq!(duration_ns("10"), None);
        assert_eq!(duration_ns("m"), None);
    }

    #[test]
    fn problems_name_their_key_paths() {
        let p = problems(
            r#"
            base_url = "park.lan"
            [[receivers]]
            id = "dd"
            kind = "dingtalk"
            secret = "nope"
            [[receivers]]
            id = "mail"
            kind = "smtp"
            from = "not an address"
            [[receivers]]
            id = "screen"
            kind = "mqtt"
            broker = "central"
            topic = "park/+/alarms"
            [[routes]]
            grids = ["g9"]
            severity = "huge"
            receivers = ["dd", "ghost"]
            group_wait = "soon"
            escalation = [{ after = "10m", receivers = ["mail"] }, { after = "5m", receivers = ["dd"] }]
            "#,
        );
        let paths: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "notify.base_url",
            "notify.receivers[0].url",
            "notify.receivers[0].secret",
            "notify.receivers[1].host",
            "notify.receivers[1].from",
            "notify.receivers[1].to",
            "notify.receivers[2].broker",
            "notify.receivers[2].topic",
            "notify.routes[0].grids[0]",
            "notify.routes[0].severity",
            "notify.routes[0].receivers[1]",
            "notify.routes[0].group_wait",
            "notify.routes[0].escalation[1].after",
        ] {
            assert!(paths.contains(&want), "{want} missing from {p:#?}");
        }
        assert_eq!(p.len(), 13, "{p:#?}");
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dd.secret"), "SECabc\n").unwrap();
        let mut n: Notify = toml::from_str(
            r#"
            [[receivers]]
            id = "dd"
            kind = "dingtalk"
            url = "https://oapi.dingtalk.com/robot/send?access_token=t"
            secret_file = "dd.secret"
            "#,
        )
        .unwrap();
        assert!(validate(&mut n, &[], &[], dir.path()).is_empty());
        assert_eq!(n.receivers[0].secret.as_deref(), Some("SECabc"));
        assert_eq!(n.receivers[0].rate(), 20);
        let mut n: Notify = toml::from_str("path = \"n.db\"").unwrap();
        assert!(validate(&mut n, &[], &[], dir.path()).is_empty());
        assert_eq!(n.db_path(Path::new("/x/incidents.db")), dir.path().join("n.db"), "relative to the config file");
    }
}
