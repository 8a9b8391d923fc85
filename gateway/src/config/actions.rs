//! `[[actions]]`: the only things the gateway may command. Each names its device and target, the
//! values that may be written, which rules and which roles may trigger it, its rate limit, cool-down,
//! interlocks and read-back deadline. Nothing undeclared can be written.

use serde::Deserialize;

use super::validate::Problem;

/// One commandable thing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub id: String,
    /// What a person reads (Chinese first is fine).
    pub title: Option<String>,
    /// The device acted on (its grid scopes who may trigger the action by hand).
    pub device: String,
    /// `modbus` (write points of the device's profile declared writable), `mqtt` (a command
    /// published at QoS 1, with an optional correlated reply) or `http` (a call to an access-control
    /// or video system).
    pub kind: ActionKind,
    /// MQTT: the `[[mqtt.brokers]]` id, the command topic and payload (`{correlation}`, `{action}`,
    /// `{value}`, `{device}`, `{reason}` replaced), and the topic the device answers on; the answer
    /// must carry the correlation id and arrive within `readback_ms`.
    pub broker: Option<String>,
    pub topic: Option<String>,
    pub payload: Option<String>,
    pub reply_topic: Option<String>,
    /// Modbus: the writable points written, each with the same value.
    #[serde(default)]
    pub points: Vec<String>,
    /// HTTP: method (`POST`, `PUT`, `GET`), URL and body; `{action}`, `{value}`, `{device}`,
    /// `{reason}` are replaced.
    pub method: Option<String>,
    pub url: Option<String>,
    pub body: Option<String>,
    /// HTTP: the status that means done. Default 200.
    pub expect_status: Option<u16>,
    /// The value a rule's trigger writes.
    pub value: Option<f64>,
    /// Every value that may be written (a rule's `value` among them); anything else is refused.
    #[serde(default)]
    pub allowed: Vec<f64>,
    /// Rules that may trigger the action when they raise or return.
    #[serde(default)]
    pub rules: Vec<String>,
    /// A rule acts only when its incident is at least this severe (`warning`, `minor`, `major`,
    /// `critical`); an incident escalating to it acts then. Default: any.
    pub min_severity: Option<String>,
    /// The least role that may trigger it by hand (`officer`, `supervisor`, `safety_manager`,
    /// `admin`); without it, only rules can.
    pub role: Option<String>,
    /// At most `count` executions per `per_secs`; more are refused.
    pub rate_limit: Option<RateLimit>,
    /// Seconds after an execution during which another is refused. Default 0.
    #[serde(default)]
    pub cooldown_secs: u64,
    /// A manual trigger needs a second authorised person's confirmation (two-person rule).
    #[serde(default)]
    pub critical: bool,
    /// Seconds a critical action waits for its confirmation. Default 120.
    #[serde(default = "default_confirm")]
    pub confirm_secs: u64,
    /// Milliseconds within which the written points must read back the value. Default 3000.
    #[serde(default = "default_readback")]
    pub readback_ms: u64,
    /// Conditions that must hold, on fresh good-quality readings, or the action is refused.
    #[serde(default)]
    pub interlocks: Vec<Interlock>,
}

/// The kinds of command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Modbus,
    Mqtt,
    Http,
}

/// A rate limit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub count: u32,
    pub per_secs: u64,
}

/// A condition on a point's latest reading.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interlock {
    pub device: String,
    pub point: String,
    /// `==`, `!=`, `>`, `>=`, `<`, `<=`.
    pub op: String,
    pub value: f64,
    /// The reading must be at most this old (seconds). Default 60.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
}

impl Interlock {
    /// Whether `v` satisfies the condition (an unknown operator never does).
    pub fn holds(&self, v: f64) -> bool {
        match self.op.as_str() {
            "==" => v == self.value,
            "!=" => v != self.value,
            ">" => v > self.value,
            ">=" => v >= self.value,
            "<" => v < self.value,
            "<=" => v <= self.value,
            _ => false,
        }
    }
}

/// Operators an interlock may use.
pub const OPS: [&str; 6] = ["==", "!=", ">", ">=", "<", "<="];
/// Severities, least first.
pub const SEVERITIES: [&str; 4] = ["warning", "minor", "major", "critical"];
/// Roles that may be named in `role`.
pub const ROLES: [&str; 4] = ["officer", "supervisor", "safety_manager", "admin"];

fn default_confirm() -> u64 {
    120
}
fn default_readback() -> u64 {
    3_000
}
fn default_max_age() -> u64 {
    60
}

/// Checks `[[actions]]` against the devices (and, for Modbus, against what `writable(device, point)`
/// says of the device's profile: `Err` with why a point cannot be written).
pub(super) fn validate(
    actions: &[Action],
    devices: &[super::Device],
    brokers: &[&str],
    writable: &dyn Fn(&super::Device, &str) -> Result<(), String>,
) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut push = |path: String, message: String| p.push(Problem { path, message });
    for (i, a) in actions.iter().enumerate() {
        let at = |k: &str| format!("actions[{i}].{k}");
        if a.id.is_empty() || actions[..i].iter().any(|b| b.id == a.id) {
            push(at("id"), format!("{:?}; expected a non-empty id used once", a.id));
        }
        let device = devices.iter().find(|d| d.id == a.device);
        if device.is_none() {
            push(at("device"), format!("{:?} is not a configured device", a.device));
        }
        match a.kind {
            ActionKind::Modbus => {
                if a.points.is_empty() {
                    push(at("points"), "empty; expected the writable points the action writes".into());
                }
                if let Some(d) = device {
                    if d.modbus.is_none() {
                        push(
                            at("device"),
                            format!("{:?} is not polled over Modbus; expected a Modbus device", a.device),
                        );
                    } else {
                        for (j, pt) in a.points.iter().enumerate() {
                            if let Err(why) = writable(d, pt) {
                                push(format!("actions[{i}].points[{j}]"), why);
                            }
                        }
                    }
                }
                for k in ["method", "url", "body"] {
                    let set = match k {
                        "method" => a.method.is_some(),
                        "url" => a.url.is_some(),
                        _ => a.body.is_some(),
                    };
                    if set {
                        push(at(k), "set on a modbus action; expected it only with kind = \"http\"".into());
                    }
                }
            }
            ActionKind::Mqtt => {
                match a.broker.as_deref() {
                    Some(b) if brokers.contains(&b) => {}
                    other => push(
                        at("broker"),
                        format!("{other:?}; expected the id of one of [[mqtt.brokers]] ({})", brokers.join(", ")),
                    ),
                }
                match a.topic.as_deref() {
                    Some(t) if !t.is_empty() && !t.contains(['+', '#']) => {}
                    other => push(at("topic"), format!("{other:?}; expected a topic without wildcards")),
                }
                if a.payload.is_none() {
                    push(at("payload"), "missing; expected the command's payload template".into());
                }
                if let Some(r) = &a.reply_topic {
                    if r.is_empty() || r.contains('#') {
                        push(at("reply_topic"), format!("{r:?}; expected a topic (+ is allowed, # is not)"));
                    }
                    if !a.payload.as_deref().unwrap_or_default().contains("{correlation}") {
                        push(
                            at("payload"),
                            "has no {correlation}; expected it when a reply is awaited, so the reply can be matched"
                                .into(),
                        );
                    }
                }
            }
            ActionKind::Http => {
                match a.url.as_deref() {
                    Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                    other => push(at("url"), format!("{other:?}; expected an http:// or https:// URL")),
                }
                if let Some(m) = &a.method {
                    if !["GET", "POST", "PUT"].contains(&m.as_str()) {
                        push(at("method"), format!("{m:?}; expected GET, POST or PUT"));
                    }
                }
                if !a.points.is_empty() {
                    push(at("points"), "set on an http action; expected it only with kind = \"modbus\"".into());
                }
            }
        }
        if a.allowed.is_empty() {
            push(at("allowed"), "empty; expected the values that may be written".into());
        }
        if let Some(v) = a.value {
            if !a.allowed.contains(&v) {
                push(at("value"), format!("{v} is not in allowed {:?}", a.allowed));
            }
        } else if !a.rules.is_empty() {
            push(at("value"), "missing; expected the value the rules' trigger writes".into());
        }
        if let Some(s) = &a.min_severity {
            if !SEVERITIES.contains(&s.as_str()) {
                push(at("min_severity"), format!("{s:?}; expected one of {}", SEVERITIES.join(", ")));
            }
        }
        if let Some(r) = &a.role {
            if !ROLES.contains(&r.as_str()) {
                push(at("role"), format!("{r:?}; expected one of {}", ROLES.join(", ")));
            }
        }
        if a.role.is_none() && a.rules.is_empty() {
            push(at("rules"), "empty and no role; expected the rules or the role that may trigger it".into());
        }
        if let Some(r) = a.rate_limit {
            if r.count == 0 || r.per_secs == 0 {
                push(
                    at("rate_limit"),
                    format!("{} per {} s; expected at least 1 per at least 1 s", r.count, r.per_secs),
                );
            }
        }
        if a.critical && a.role.is_none() {
            push(at("critical"), "true without a role; expected the role whose members confirm".into());
        }
        if !(100..=60_000).contains(&a.readback_ms) {
            push(at("readback_ms"), format!("{}; expected 100 to 60000 ms", a.readback_ms));
        }
        for (j, l) in a.interlocks.iter().enumerate() {
            let at = |k: &str| format!("actions[{i}].interlocks[{j}].{k}");
            match devices.iter().find(|d| d.id == l.device) {
                None => push(at("device"), format!("{:?} is not a configured device", l.device)),
                Some(d) if !d.points.iter().any(|pt| pt.name == l.point) => {
                    push(at("point"), format!("{:?} is not a point of device {:?}", l.point, l.device));
                }
                Some(_) => {}
            }
            if !OPS.contains(&l.op.as_str()) {
                push(at("op"), format!("{:?}; expected one of {}", l.op, OPS.join(" ")));
            }
            if l.max_age_secs == 0 {
                push(at("max_age_secs"), "0; expected at least 1 second".into());
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    fn problems(extra: &str) -> Vec<(String, String)> {
        let text = format!(
            r#"
[site]
id = "p"
[[grids]]
id = "g1"
[[modbus.connections]]
id = "tcp1"
kind = "tcp"
host = "127.0.0.1"
port = 502
[[modbus.connections]]
id = "bus1"
kind = "rtu"
path = "/dev/ttyUSB0"
[[devices]]
id = "acc"
grid = "g1"
category = "access"
modbus = {{ connection = "tcp1", unit = 1, profile = "access-controller" }}
[[devices]]
id = "fd"
grid = "g1"
category = "electrical"
modbus = {{ connection = "tcp1", unit = 2, profile = "fire-detector" }}
[[devices]]
id = "acc-rtu"
grid = "g1"
category = "access"
modbus = {{ connection = "bus1", unit = 3, profile = "access-controller" }}
{extra}"#
        );
        match crate::config::from_str(&text, "t.toml".as_ref(), ".".as_ref()) {
            Ok(_) => Vec::new(),
            Err(crate::config::ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.path, p.message)).collect()
            }
            Err(e) => vec![("?".into(), e.to_string())],
        }
    }

    #[test]
    fn only_writable_points_of_declared_devices_can_be_commanded() {
        let ok = r#"
[[actions]]
id = "unlock"
device = "acc"
kind = "modbus"
points = ["lock_1"]
value = 1
allowed = [0, 1]
rules = ["linkage.fire_unlock"]
interlocks = [{ device = "fd", point = "alarm_temperature", op = "==", value = 1, max_age_secs = 30 }]
"#;
        assert!(problems(ok).is_empty(), "{:?}", problems(ok));
        let bad = r#"
[[actions]]
id = "trip"
device = "fd"
kind = "modbus"
points = ["residual_current", "alarm_residual", "nope"]
value = 2
allowed = [0, 1]
rules = ["r"]
[[actions]]
id = "rtu"
device = "acc-rtu"
kind = "modbus"
points = ["lock_1"]
allowed = [1]
role = "boss"
interlocks = [{ device = "fd", point = "x", op = "=~", value = 1 }]
[[actions]]
id = "cam"
device = "acc"
kind = "http"
url = "ftp://camera"
allowed = [1]
critical = true
"#;
        let p = problems(bad);
        let paths: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            paths,
            [
                "actions[0].points[0]",
                "actions[0].points[1]",
                "actions[0].points[2]",
                "actions[0].value",
                "actions[1].points[0]",
                "actions[1].role",
                "actions[1].interlocks[0].point",
                "actions[1].interlocks[0].op",
                "actions[2].url",
                "actions[2].rules",
                "actions[2].critical",
            ],
            "{p:?}"
        );
        assert!(p[0].1.contains("read-only in profile \"fire-detector\""), "{p:?}");
        assert!(p[1].1.contains("read-only"), "{p:?}");
        // A bit inside a holding register, an input or a string cannot be written alone.
        use crate::source::modbus::decode::DataType;
        use crate::source::modbus::plan::Table;
        use crate::source::modbus::writable_table;
        assert!(writable_table(Table::Coil, DataType::Bit) && writable_table(Table::Holding, DataType::F32));
        assert!(!writable_table(Table::Holding, DataType::Bit) && !writable_table(Table::Input, DataType::U16));
        assert!(p[4].1.contains("not Modbus TCP"), "{p:?}");
    }

    #[test]
    fn an_mqtt_command_names_its_broker_and_can_be_correlated() {
        let p = problems(
            r#"
[[actions]]
id = "gate"
device = "acc"
kind = "mqtt"
broker = "nowhere"
topic = "park/cmd/#"
payload = '{"cmd": "open"}'
reply_topic = "park/reply"
allowed = [1]
role = "officer"
"#,
        );
        let paths: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(paths, ["actions[0].broker", "actions[0].topic", "actions[0].payload"], "{p:?}");
        assert!(p[2].1.contains("{correlation}"), "{p:?}");
    }
}
