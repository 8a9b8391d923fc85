//! Semantic checks that serde cannot express: references between sections, duplicates, topic filters,
//! secrets. Every problem is collected with its key path; none stops the others from being found.

use std::collections::HashSet;
use std::path::Path;

use super::{Config, PayloadFormat};
use crate::source::mqtt::topic::{Capture, TopicPattern};

/// One configuration problem: where (key path) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }
}

/// Ids are letters (any script: parks name devices in Chinese), digits, `-`, `_` or `.`; no spaces
/// or MQTT wildcards, so they fit in topics, URLs and store tags without surprises.
pub(super) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= 64
        && s.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn known(ids: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = ids.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        s.push_str(&format!(", … ({} in all)", ids.len()));
    }
    if s.is_empty() {
        s.push_str("none defined");
    }
    s
}

/// Replaces `${VAR}` with the environment variable `VAR`.
///
/// # Errors
/// Names the variable that is not set, or an unterminated `${`.
pub fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated \"${{\" in {value:?}; expected ${{VARIABLE}}"));
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable {name} is not set (expected by \"${{{name}}}\")")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a secret file: `${VAR}` in the path is expanded (systemd's `LoadCredential=` puts secrets in
/// `${CREDENTIALS_DIRECTORY}`), a relative path is relative to the config file, and the trailing line
/// break is dropped.
///
/// # Errors
/// The variable is not set or the file cannot be read, said with the path tried.
pub fn read_secret(file: &Path, base: &Path) -> Result<String, String> {
    let expanded = expand_env(&file.to_string_lossy())?;
    let path = base.join(expanded);
    std::fs::read_to_string(&path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn expand_in_place(slot: &mut Option<String>, path: &str, problems: &mut Problems) {
    if let Some(v) = slot.as_mut() {
        match expand_env(v) {
            Ok(expanded) => *v = expanded,
            Err(e) => problems.push(path, e),
        }
    }
}

/// The content type of a site plan image, by its file extension.
fn plan_content_type(image: &Path) -> Option<&'static str> {
    let ext = image.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        _ => return None,
    })
}

/// Reads the site plan image and checks the grid outlines against the plan's size.
fn validate_plan(config: &mut Config, base: &Path, p: &mut Problems) {
    let size = match config.site.plan.as_mut() {
        Some(plan) => {
            let mut ok = true;
            for (key, v) in [("width", plan.width), ("height", plan.height)] {
                if !(v.is_finite() && v > 0.0) {
                    p.push(format!("site.plan.{key}"), format!("{v} is not a size; expected a positive number"));
                    ok = false;
                }
            }
            plan.image = base.join(&plan.image);
            if let Some(t) = plan_content_type(&plan.image) {
                plan.content_type = t;
                match std::fs::metadata(&plan.image) {
                    Ok(m) if m.len() > super::MAX_PLAN_BYTES => p.push(
                        "site.plan.image",
                        format!(
                            "{} is {} bytes; expected at most {} (the dashboard is read over mobile links)",
                            plan.image.display(),
                            m.len(),
                            super::MAX_PLAN_BYTES
                        ),
                    ),
                    Ok(_) => match std::fs::read(&plan.image) {
                        Ok(bytes) => plan.bytes = bytes,
                        Err(e) => p.push("site.plan.image", format!("cannot read {}: {e}", plan.image.display())),
                    },
                    Err(e) => p.push("site.plan.image", format!("cannot read {}: {e}", plan.image.display())),
                }
            } else {
                p.push(
                    "site.plan.image",
                    format!("{}: expected a .png, .jpg, .webp or .svg file", plan.image.display()),
                );
            }
            ok.then_some((plan.width, plan.height))
        }
        None => None,
    };
    for (i, g) in config.grids.iter().enumerate() {
        if g.outline.is_empty() {
            continue;
        }
        let key = format!("grids[{i}].outline");
        if config.site.plan.is_none() {
            p.push(key, "an outline needs a site plan; expected [site.plan] with image, width and height");
            continue;
        }
        if g.outline.len() < 3 {
            p.push(key, format!("{} corners; expected at least 3 [x, y] pairs", g.outline.len()));
            continue;
        }
        if let Some((w, h)) = size {
            if let Some((j, c)) =
                g.outline.iter().enumerate().find(|(_, [x, y])| !(0.0..=w).contains(x) || !(0.0..=h).contains(y))
            {
                p.push(
                    format!("{key}[{j}]"),
                    format!("[{}, {}] is off the plan; expected 0 <= x <= {w} and 0 <= y <= {h}", c[0], c[1]),
                );
            }
        }
    }
}

pub(super) fn validate(config: &mut Config, base: &Path) -> Vec<Problem> {
    let mut p = Problems(Vec::new());

    if !is_identifier(&config.site.id) {
        p.push(
            "site.id",
            format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", config.site.id),
        );
    }
    if config.site.timezone.parse::<chrono_tz::Tz>().is_err() {
        p.push(
            "site.timezone",
            format!("unknown time zone {:?}; expected an IANA name such as \"Asia/Shanghai\"", config.site.timezone),
        );
    }

    validate_plan(config, base, &mut p);
    load_device_files(config, base, &mut p);
    expand_device_types(config, &mut p);
    let mut grid_ids = HashSet::new();
    for (i, g) in config.grids.iter().enumerate() {
        if !is_identifier(&g.id) {
            p.push(
                format!("grids[{i}].id"),
                format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", g.id),
            );
        } else if !grid_ids.insert(g.id.as_str()) {
            p.push(format!("grids[{i}].id"), format!("duplicate grid id {:?}; expected each grid once", g.id));
        }
    }
    let grid_list: Vec<&str> = config.grids.iter().map(|g| g.id.as_str()).collect();

    let mut device_ids = HashSet::new();
    for (i, d) in config.devices.iter().enumerate() {
        let at = format!("devices[{i}]");
        if !is_identifier(&d.id) {
            p.push(
                format!("{at}.id"),
                format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", d.id),
            );
        } else if !device_ids.insert(d.id.as_str()) {
            p.push(format!("{at}.id"), format!("duplicate device id {:?}; expected each device once", d.id));
        }
        if !grid_ids.contains(d.grid.as_str()) {
            p.push(
                format!("{at}.grid"),
                format!("grid {:?} in device {:?} is not defined (known grids: {})", d.grid, d.id, known(&grid_list)),
            );
        }
        if !d.category.is_empty() && !is_identifier(&d.category) {
            p.push(
                format!("{at}.category"),
                format!(
                    "{:?} is not a valid category; expected a name such as \"electrical\" or \"environment\"",
                    d.category
                ),
            );
        }
        for key in d.tags.keys() {
            if matches!(key.as_str(), "site" | "grid" | "device") {
                p.push(
                    format!("{at}.tags.{key}"),
                    format!("tag {key:?} is set by parkwatch; expected another tag name"),
                );
            }
        }
        let mut names = HashSet::new();
        for (j, point) in d.points.iter().enumerate() {
            if !is_identifier(&point.name) {
                p.push(
                    format!("{at}.points[{j}].name"),
                    format!(
                        "{:?} is not a valid point name; expected 1-64 letters, digits, '-', '_' or '.'",
                        point.name
                    ),
                );
            } else if !names.insert(point.name.as_str()) {
                p.push(
                    format!("{at}.points[{j}].name"),
                    format!("duplicate point {:?} in device {:?}", point.name, d.id),
                );
            }
        }
    }
    let device_list: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();

    let mut broker_ids = HashSet::new();
    for (i, b) in config.mqtt.brokers.iter_mut().enumerate() {
        let at = format!("mqtt.brokers[{i}]");
        if !is_identifier(&b.id) {
            p.push(
                format!("{at}.id"),
                format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", b.id),
            );
        } else if !broker_ids.insert(b.id.clone()) {
            p.push(format!("{at}.id"), format!("duplicate broker id {:?}; expected each broker once", b.id));
        }
        match expand_env(&b.host) {
            Ok(h) if !h.trim().is_empty() => b.host = h,
            Ok(_) => p.push(format!("{at}.host"), "empty host; expected a host name or address"),
            Err(e) => p.push(format!("{at}.host"), e),
        }
        expand_in_place(&mut b.client_id, &format!("{at}.client_id"), &mut p);
        expand_in_place(&mut b.username, &format!("{at}.username"), &mut p);
        expand_in_place(&mut b.password, &format!("{at}.password"), &mut p);
        if let Some(file) = &b.password_file {
            if b.password.is_some() {
                p.push(format!("{at}.password_file"), "both password and password_file are set; expected one of them");
            }
            match read_secret(file, base) {
                Ok(s) => b.password = Some(s),
                Err(e) => p.push(format!("{at}.password_file"), e),
            }
        }
        if b.password.is_some() && b.username.is_none() {
            p.push(format!("{at}.username"), "a password is set without a username; expected both");
        }
        if b.keep_alive_secs == 0 || b.keep_alive_secs > 65_535 {
            p.push(
                format!("{at}.keep_alive_secs"),
                format!("{} is out of range; expected 1 to 65535 seconds", b.keep_alive_secs),
            );
        }
        if b.reconnect_min_ms == 0 || b.reconnect_min_ms > b.reconnect_max_ms {
            p.push(
                format!("{at}.reconnect_min_ms"),
                format!(
                    "{} ms; expected more than 0 and at most reconnect_max_ms ({} ms)",
                    b.reconnect_min_ms, b.reconnect_max_ms
                ),
            );
        }
        if !(1024..=crate::config::MQTT_MAX_PACKET).contains(&b.max_packet_bytes) {
            p.push(
                format!("{at}.max_packet_bytes"),
                format!(
                    "{} bytes; expected from 1024 to {} (MQTT's maximum, the default)",
                    b.max_packet_bytes,
                    crate::config::MQTT_MAX_PACKET
                ),
            );
        }
        if b.linger_ms > 100 {
            p.push(
                format!("{at}.linger_ms"),
                format!("{} ms; expected at most 100 (a read pauses this long; default 1)", b.linger_ms),
            );
        }
        if b.inflight == 0 {
            p.push(
                format!("{at}.inflight"),
                "0; expected the broker's in-flight window, at least 1 (Mosquitto's default is 20)",
            );
        }
        if let Some(tls) = &mut b.tls {
            tls.ca_file = base.join(&tls.ca_file);
            if !tls.ca_file.is_file() {
                p.push(
                    format!("{at}.tls.ca_file"),
                    format!("{} is not a readable file; expected a PEM CA bundle", tls.ca_file.display()),
                );
            }
            match (&mut tls.client_cert_file, &mut tls.client_key_file) {
                (Some(cert), Some(key)) => {
                    *cert = base.join(&*cert);
                    *key = base.join(&*key);
                    for (name, f) in [("client_cert_file", &*cert), ("client_key_file", &*key)] {
                        if !f.is_file() {
                            p.push(
                                format!("{at}.tls.{name}"),
                                format!("{} is not a readable file; expected a PEM file", f.display()),
                            );
                        }
                    }
                }
                (None, None) => {}
                _ => p.push(
                    format!("{at}.tls"),
                    "client_cert_file and client_key_file go together; expected both or neither",
                ),
            }
        }
    }
    let broker_list: Vec<String> = config.mqtt.brokers.iter().map(|b| b.id.clone()).collect();
    let broker_refs: Vec<&str> = broker_list.iter().map(String::as_str).collect();

    let mut seen_topics = HashSet::new();
    for (i, s) in config.mqtt.subscriptions.iter().enumerate() {
        let at = format!("mqtt.subscriptions[{i}]");
        if !broker_refs.contains(&s.broker.as_str()) {
            p.push(
                format!("{at}.broker"),
                format!("broker {:?} is not defined (known brokers: {})", s.broker, known(&broker_refs)),
            );
        }
        if !seen_topics.insert((s.broker.as_str(), s.topic.as_str())) {
            p.push(
                format!("{at}.topic"),
                format!(
                    "topic {:?} is subscribed twice on broker {:?}; expected one subscription per filter",
                    s.topic, s.broker
                ),
            );
        }
        if s.qos > 1 {
            p.push(format!("{at}.qos"), format!("{}; expected 0 or 1", s.qos));
        }
        if let Some(b) = config.mqtt.brokers.iter().find(|b| b.id == s.broker) {
            if s.max_payload_bytes > b.max_packet_bytes {
                p.push(
                    format!("{at}.max_payload_bytes"),
                    format!(
                        "{} bytes is more than broker {:?} reads ({} bytes, max_packet_bytes); expected at most that",
                        s.max_payload_bytes, b.id, b.max_packet_bytes
                    ),
                );
            }
        }
        let pattern = match TopicPattern::parse(&s.topic) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                p.push(format!("{at}.topic"), e);
                None
            }
        };
        let has = |c: Capture| pattern.as_ref().is_some_and(|pat| pat.has(c));
        match (&s.device, has(Capture::Device)) {
            (Some(_), true) => {
                p.push(format!("{at}.device"), "the topic has {device} and a fixed device is set; expected one of them")
            }
            (None, false) if pattern.is_some() => {
                p.push(format!("{at}.topic"), "no {device} segment and no fixed `device`; expected one of them")
            }
            (Some(d), false) if !device_list.contains(&d.as_str()) => p.push(
                format!("{at}.device"),
                format!("device {d:?} is not defined (known devices: {})", known(&device_list)),
            ),
            _ => {}
        }
        if let Some(pr) = &s.provision {
            if !config.device_types.iter().any(|t| t.id == pr.device_type) {
                let types: Vec<&str> = config.device_types.iter().map(|t| t.id.as_str()).collect();
                p.push(
                    format!("{at}.provision.type"),
                    format!("device type {:?} is not defined (known types: {})", pr.device_type, known(&types)),
                );
            }
            if pattern.is_some() && !(has(Capture::Device) && has(Capture::Grid)) {
                p.push(
                    format!("{at}.provision"),
                    "provisioned devices take their id and grid from the topic; expected {device} and {grid} in it",
                );
            }
            if pr.max == 0 {
                p.push(format!("{at}.provision.max"), "0; expected at least 1 device");
            }
        }
        let fixed_device = s.device.as_ref().and_then(|d| config.devices.iter().find(|x| &x.id == d));
        let point_known = |name: &str| fixed_device.is_none_or(|d| d.points.iter().any(|pt| pt.name == name));
        match s.format {
            PayloadFormat::Number => {
                match (&s.point, has(Capture::Point)) {
                    (Some(_), true) => p.push(
                        format!("{at}.point"),
                        "the topic has {point} and a fixed point is set; expected one of them",
                    ),
                    (None, false) if pattern.is_some() => {
                        p.push(format!("{at}.topic"), "a number payload needs {point} in the topic or a fixed `point`")
                    }
                    (Some(pt), false) if !point_known(pt) => p.push(
                        format!("{at}.point"),
                        format!("point {pt:?} is not a point of device {:?}", s.device.as_deref().unwrap_or("")),
                    ),
                    _ => {}
                }
                if !s.fields.is_empty() {
                    p.push(
                        format!("{at}.fields"),
                        "fields apply to json payloads; expected none for format = \"number\"",
                    );
                }
                if s.timestamp.is_some() {
                    p.push(
                        format!("{at}.timestamp"),
                        "a bare number carries no timestamp; expected none for format = \"number\"",
                    );
                }
            }
            PayloadFormat::Json => {
                if s.point.is_some() {
                    p.push(format!("{at}.point"), "a fixed point applies to number payloads; use fields for json");
                }
            }
            PayloadFormat::Event => {
                if !s.fields.is_empty() {
                    p.push(
                        format!("{at}.fields"),
                        "event payloads carry attributes, not fields; expected none for format = \"event\"",
                    );
                }
                if s.event_kind.is_some() && (s.kind_pointer.is_some() || has(Capture::Kind)) {
                    p.push(
                        format!("{at}.event_kind"),
                        "a fixed event kind and another source of the kind ({kind} or kind_pointer); expected one",
                    );
                }
            }
        }
        if s.format != PayloadFormat::Event && (s.event_kind.is_some() || s.kind_pointer.is_some()) {
            p.push(format!("{at}.event_kind"), "event_kind and kind_pointer apply to format = \"event\"");
        }
        if let Some(k) = &s.kind_pointer {
            check_pointer(k, &format!("{at}.kind_pointer"), &mut p);
        }
        for (j, f) in s.fields.iter().enumerate() {
            if let Some(ptr) = &f.pointer {
                check_pointer(ptr, &format!("{at}.fields[{j}].pointer"), &mut p);
            }
            if !point_known(&f.point) {
                p.push(
                    format!("{at}.fields[{j}].point"),
                    format!("point {:?} is not a point of device {:?}", f.point, s.device.as_deref().unwrap_or("")),
                );
            }
            if !f.scale.is_finite() || f.scale == 0.0 || !f.offset.is_finite() {
                p.push(format!("{at}.fields[{j}].scale"), "scale and offset must be finite and scale non-zero");
            }
        }
        if let Some(ts) = &s.timestamp {
            check_pointer(&ts.pointer, &format!("{at}.timestamp.pointer"), &mut p);
        }
        if s.max_payload_bytes == 0 {
            p.push(format!("{at}.max_payload_bytes"), "0; expected a positive number of bytes");
        }
    }

    validate_rules(config, base, &mut p);
    validate_forward(config, base, &mut p);
    validate_modbus(config, base, &mut p);
    p.0.extend(super::dlt645::validate(config));
    if config.core.channel_batches == 0 {
        p.push("core.channel_batches", "0; expected at least 1");
    }
    if config.core.batch_samples == 0 {
        p.push("core.batch_samples", "0; expected at least 1");
    }
    validate_api(config, base, &mut p);
    if let Some(a) = &mut config.audit.path {
        if a.is_relative() {
            *a = base.join(&*a);
        }
    }
    validate_auth(config, &mut p);
    super::people::validate(config, &mut |path, message| p.push(path, message));
    let grids: Vec<String> = config.grids.iter().map(|g| g.id.clone()).collect();
    let grids: Vec<&str> = grids.iter().map(String::as_str).collect();
    let brokers: Vec<String> = config.mqtt.brokers.iter().map(|b| b.id.clone()).collect();
    p.0.extend(super::notify::validate(&mut config.notify, &grids, &brokers, base));
    p.0.extend(super::history::validate(&mut config.history, base));
    p.0.extend(super::hj212::validate(config, base));
    p.0.extend(super::report::validate(&config.reports, &config.devices));
    validate_actions(config, &mut p);
    if config.broker.embedded && config.broker.listen == config.api.listen {
        p.push(
            "broker.listen",
            format!("{} is also api.listen; expected two different addresses", config.broker.listen),
        );
    }
    p.0
}

fn validate_api(config: &mut Config, base: &Path, p: &mut Problems) {
    let api = &mut config.api;
    for (name, file) in [("api.tls_cert", &mut api.tls_cert), ("api.tls_key", &mut api.tls_key)] {
        if let Some(f) = file {
            *f = base.join(&*f);
            if !f.is_file() {
                p.push(name, format!("{} is not a readable file; expected a PEM file", f.display()));
            }
        }
    }
    let tls = match (&api.tls_cert, &api.tls_key) {
        (Some(_), Some(_)) => true,
        (None, None) => false,
        _ => {
            p.push("api", "tls_cert and tls_key go together; expected both or neither");
            false
        }
    };
    if !api.listen.ip().is_loopback() && !tls && !api.insecure_lan {
        p.push(
            "api.listen",
            format!(
                "{} is not a loopback address and the API has no TLS; expected api.tls_cert and api.tls_key, \
                 or insecure_lan = true to serve plain HTTP on the network, or a 127.0.0.1 address",
                api.listen
            ),
        );
    }
}

fn validate_auth(config: &Config, p: &mut Problems) {
    let a = &config.auth;
    if a.session_idle_secs == 0 {
        p.push("auth.session_idle_secs", "0; expected a positive number of seconds");
    }
    if a.session_max_secs < a.session_idle_secs {
        p.push(
            "auth.session_max_secs",
            format!(
                "{} is shorter than auth.session_idle_secs ({}); expected at least that",
                a.session_max_secs, a.session_idle_secs
            ),
        );
    }
    if a.user_failures == 0 {
        p.push("auth.user_failures", "0; expected at least 1");
    }
    if a.source_failures == 0 {
        p.push("auth.source_failures", "0; expected at least 1");
    }
    if a.lockout_secs == 0 {
        p.push("auth.lockout_secs", "0; expected a positive number of seconds");
    }
}

fn check_pointer(ptr: &str, path: &str, p: &mut Problems) {
    if !ptr.is_empty() && !ptr.starts_with('/') {
        p.push(
            path,
            format!("{ptr:?} is not a JSON pointer; expected \"\" or a path starting with '/', like \"/data/ua\""),
        );
    }
}

/// Checks `[[actions]]`, Modbus targets against the profiles: only points a profile declares
/// writable, in a table and type that can be written alone, on a Modbus TCP connection.
fn validate_actions(config: &Config, p: &mut Problems) {
    use crate::source::modbus::{profile, writable_table};
    if config.actions.is_empty() {
        return;
    }
    let profiles = profile::load_all(&config.modbus.profile_dirs).unwrap_or_default();
    let writable = |d: &super::Device, point: &str| -> Result<(), String> {
        let m = d.modbus.as_ref().ok_or_else(|| format!("device {:?} is not polled over Modbus", d.id))?;
        let kind = config.modbus.connections.iter().find(|c| c.id == m.connection).map(|c| c.kind);
        if kind != Some(super::ModbusKind::Tcp) {
            return Err(format!(
                "device {:?} is on connection {:?}, which is not Modbus TCP; writes over a serial line would collide with its poller and are refused",
                d.id, m.connection
            ));
        }
        let prof = profiles.get(&m.profile).ok_or_else(|| format!("profile {:?} is not known", m.profile))?;
        let pt =
            prof.points.iter().find(|x| x.name == point).ok_or_else(|| {
                format!("{point:?} is not a point of profile {:?}; expected a writable point", m.profile)
            })?;
        if !pt.writable {
            return Err(format!(
                "{point:?} is read-only in profile {:?}; expected a point declared `writable = true`",
                m.profile
            ));
        }
        if !writable_table(pt.table, pt.ty) {
            return Err(format!(
                "{point:?} of profile {:?} cannot be written alone (an input, a discrete input, a bit inside a register or a string)",
                m.profile
            ));
        }
        Ok(())
    };
    let brokers: Vec<&str> = config.mqtt.brokers.iter().map(|b| b.id.as_str()).collect();
    p.0.extend(super::actions::validate(&config.actions, &config.devices, &brokers, &writable));
}

/// Parses local `HH:MM` into minutes since midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

/// Adds the devices of `device_files` (paths made absolute) after the config's own.
fn load_device_files(config: &mut Config, base: &Path, p: &mut Problems) {
    for (i, f) in config.device_files.iter_mut().enumerate() {
        if f.is_relative() {
            *f = base.join(&*f);
        }
        match std::fs::read_to_string(&*f) {
            Ok(text) => {
                let (devices, problems) = super::device_files::parse(&text, &f.display().to_string());
                for r in problems {
                    p.push(format!("device_files[{i}]: {}", r.at), r.message);
                }
                config.devices.extend(devices);
            }
            Err(e) => p.push(format!("device_files[{i}]"), format!("cannot read {}: {e}", f.display())),
        }
    }
}

/// Fills each device that names a `[[device_types]]` entry from it (the device's own category,
/// points, tags and Modbus profile win) and turns the types' rule parameters into overrides scoped to
/// the type, ahead of the written ones so those win at the same scope.
fn expand_device_types(config: &mut Config, p: &mut Problems) {
    let mut ids = HashSet::new();
    for (i, t) in config.device_types.iter().enumerate() {
        let at = format!("device_types[{i}]");
        if !is_identifier(&t.id) {
            p.push(
                format!("{at}.id"),
                format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", t.id),
            );
        } else if !ids.insert(t.id.as_str()) {
            p.push(format!("{at}.id"), format!("duplicate device type {:?}; expected each type once", t.id));
        }
        for (rule, params) in &t.params {
            for (k, v) in params {
                if !matches!(
                    v,
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::String(_) | toml::Value::Boolean(_)
                ) {
                    p.push(format!("{at}.params.{rule}.{k}"), "expected a number, string or boolean");
                }
            }
        }
    }
    let types = &config.device_types;
    for (i, d) in config.devices.iter_mut().enumerate() {
        let Some(name) = &d.device_type else {
            if d.category.is_empty() {
                p.push(
                    format!("devices[{i}].category"),
                    "missing; expected a category such as \"electrical\" (or a type from [[device_types]])",
                );
            }
            continue;
        };
        let Some(t) = types.iter().find(|t| t.id == *name) else {
            let defined: Vec<&str> = types.iter().map(|t| t.id.as_str()).collect();
            p.push(
                format!("devices[{i}].type"),
                format!("device type {name:?} is not defined (known types: {})", known(&defined)),
            );
            continue;
        };
        if d.category.is_empty() {
            d.category.clone_from(&t.category);
        }
        let own = std::mem::take(&mut d.points);
        d.points = t.points.iter().filter(|tp| !own.iter().any(|o| o.name == tp.name)).cloned().collect();
        d.points.extend(own);
        for (k, v) in &t.tags {
            d.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let (Some(m), Some(profile)) = (d.modbus.as_mut(), &t.profile) {
            if m.profile.is_empty() {
                m.profile.clone_from(profile);
            }
        }
    }
    let from_types: Vec<crate::config::ParamOverride> = types
        .iter()
        .flat_map(|t| {
            t.params.iter().map(|(rule, params)| crate::config::ParamOverride {
                rule: rule.clone(),
                device: None,
                grid: None,
                device_type: Some(t.id.clone()),
                category: None,
                params: params.clone(),
            })
        })
        .collect();
    config.rules.overrides.splice(0..0, from_types);
}

fn validate_rules(config: &mut Config, base: &Path, p: &mut Problems) {
    let grids: Vec<&str> = config.grids.iter().map(|g| g.id.as_str()).collect();
    let devices: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    let r = &mut config.rules;
    for (key, v) in [("rules.night_start", &r.night_start), ("rules.night_end", &r.night_end)] {
        if parse_hhmm(v).is_none() {
            p.push(key, format!("\"{v}\"; expected local time as HH:MM, like \"22:00\""));
        }
    }
    if r.window_samples == 0 {
        p.push("rules.window_samples", "0; expected at least 1");
    }
    if r.max_operations < 100 {
        p.push("rules.max_operations", format!("{}; expected at least 100", r.max_operations));
    }
    for d in &mut r.dirs {
        if d.is_relative() {
            *d = base.join(&*d);
        }
    }
    for (i, d) in r.dirs.iter().enumerate() {
        if !d.is_dir() {
            p.push(format!("rules.dirs[{i}]"), format!("{} is not a directory", d.display()));
        }
    }
    // The device types' parameters were put first and checked where they were written.
    let from_types: usize = config.device_types.iter().map(|t| t.params.len()).sum();
    for (i, o) in r.overrides.iter().skip(from_types).enumerate() {
        let at = format!("rules.overrides[{i}]");
        let scopes = [o.device.is_some(), o.grid.is_some(), o.device_type.is_some(), o.category.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if scopes > 1 {
            p.push(at.clone(), "names more than one of device, grid, type, category; expected at most one");
        }
        if let Some(t) = &o.device_type {
            if !config.device_types.iter().any(|dt| dt.id == *t) {
                p.push(format!("{at}.type"), format!("device type \"{t}\" is not defined in [[device_types]]"));
            }
        }
        if let Some(g) = &o.grid {
            if !grids.contains(&g.as_str()) {
                p.push(format!("{at}.grid"), format!("grid \"{g}\" is not defined"));
            }
        }
        if let Some(d) = &o.device {
            if !devices.contains(&d.as_str()) {
                p.push(format!("{at}.device"), format!("device \"{d}\" is not defined"));
            }
        }
        for (k, v) in &o.params {
            if !matches!(
                v,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::String(_) | toml::Value::Boolean(_)
            ) {
                p.push(format!("{at}.params.{k}"), "expected a number, string or boolean");
            }
        }
    }
    for (i, m) in r.maintenance.iter().enumerate() {
        let at = format!("rules.maintenance[{i}]");
        if m.devices.is_empty() && m.grids.is_empty() {
            p.push(at.clone(), "names no devices and no grids");
        }
        for (j, d) in m.devices.iter().enumerate() {
            if !devices.contains(&d.as_str()) {
                p.push(format!("{at}.devices[{j}]"), format!("device \"{d}\" is not defined"));
            }
        }
        for (j, g) in m.grids.iter().enumerate() {
            if !grids.contains(&g.as_str()) {
                p.push(format!("{at}.grids[{j}]"), format!("grid \"{g}\" is not defined"));
            }
        }
        for (key, v) in [("from", Some(&m.from)), ("to", m.to.as_ref())] {
            if let Some(v) = v {
                if chrono::DateTime::parse_from_rfc3339(v).is_err() {
                    p.push(format!("{at}.{key}"), format!("\"{v}\"; expected RFC 3339 like 2026-11-24T08:00:00+08:00"));
                }
            }
        }
    }
    if config.incidents.path.is_relative() {
        config.incidents.path = base.join(&config.incidents.path);
    }
}

fn validate_forward(config: &mut Config, base: &Path, p: &mut Problems) {
    if let Some(m) = &config.forward.mqtt {
        if !config.mqtt.brokers.iter().any(|b| b.id == m.broker) {
            let ids: Vec<&str> = config.mqtt.brokers.iter().map(|b| b.id.as_str()).collect();
            p.push(
                "forward.mqtt.broker",
                format!("broker \"{}\" is not defined (known brokers: {})", m.broker, known(&ids)),
            );
        }
    }
    let f = &mut config.forward;
    if f.outbox.is_relative() {
        f.outbox = base.join(&f.outbox);
    }
    if f.batch_lines == 0 {
        p.push("forward.batch_lines", "0; expected at least 1");
    }
    if f.batch_ms == 0 || f.batch_ms > 60_000 {
        p.push("forward.batch_ms", format!("{}; expected 1 to 60000 ms", f.batch_ms));
    }
    if f.max_outbox_bytes < 64 * 1024 {
        p.push("forward.max_outbox_bytes", format!("{}; expected at least 65536", f.max_outbox_bytes));
    }
    if f.dead_letter_max_count == 0 {
        p.push("forward.dead_letter_max_count", "0; expected at least 1 dead letter");
    }
    if f.dead_letter_max_bytes == 0 {
        p.push("forward.dead_letter_max_bytes", "0; expected at least 1 byte");
    }
    let mut ids = HashSet::new();
    for (i, t) in f.targets.iter_mut().enumerate() {
        let at = format!("forward.targets[{i}]");
        if !ids.insert(t.id.clone()) {
            p.push(format!("{at}.id"), format!("duplicate target id \"{}\"", t.id));
        }
        if !(t.url.starts_with("http://") || t.url.starts_with("https://")) || t.url.len() < 10 {
            p.push(format!("{at}.url"), format!("\"{}\"; expected http://host:port or https://host:port", t.url));
        }
        if t.org.is_empty() {
            p.push(format!("{at}.org"), "empty; expected the organisation name");
        }
        if t.bucket.is_empty() {
            p.push(format!("{at}.bucket"), "empty; expected the bucket name");
        }
        if t.token.is_some() && t.token_file.is_some() {
            p.push(format!("{at}.token_file"), "both token and token_file are set; expected one");
        }
        expand_in_place(&mut t.token, &format!("{at}.token"), p);
        if let Some(file) = &t.token_file {
            match read_secret(file, base) {
                Ok(v) => t.token = Some(v.trim().to_owned()),
                Err(e) => p.push(format!("{at}.token_file"), e),
            }
        }
        if t.retry_min_ms == 0 || t.retry_min_ms > t.retry_max_ms {
            p.push(format!("{at}.retry_min_ms"), "expected 1 ms up to retry_max_ms");
        }
        if t.timeout_secs == 0 {
            p.push(format!("{at}.timeout_secs"), "0; expected at least 1");
        }
    }
}

fn validate_modbus(config: &mut Config, base: &Path, p: &mut Problems) {
    use super::ModbusKind;
    for d in &mut config.modbus.profile_dirs {
        if d.is_relative() {
            *d = base.join(&*d);
        }
    }
    let mut ids = HashSet::new();
    for (i, c) in config.modbus.connections.iter().enumerate() {
        let at = format!("modbus.connections[{i}]");
        if !ids.insert(c.id.clone()) {
            p.push(format!("{at}.id"), format!("duplicate connection id \"{}\"", c.id));
        }
        match c.kind {
            ModbusKind::Tcp | ModbusKind::RtuOverTcp => {
                if c.host.as_deref().is_none_or(str::is_empty) {
                    p.push(format!("{at}.host"), "missing; expected the server's host name or address");
                }
                if c.port.is_none() {
                    p.push(format!("{at}.port"), "missing; expected the TCP port (502 for Modbus TCP)");
                }
            }
            ModbusKind::Rtu => {
                if c.path.is_none() {
                    p.push(format!("{at}.path"), "missing; expected the serial device, like /dev/ttyUSB0");
                }
                if !matches!(c.data_bits, 5..=8) {
                    p.push(format!("{at}.data_bits"), format!("{}; expected 5 to 8", c.data_bits));
                }
                if !matches!(c.stop_bits, 1 | 2) {
                    p.push(format!("{at}.stop_bits"), format!("{}; expected 1 or 2", c.stop_bits));
                }
            }
        }
        if c.timeout_ms == 0 {
            p.push(format!("{at}.timeout_ms"), "0; expected at least 1");
        }
        if c.offline_after == 0 {
            p.push(format!("{at}.offline_after"), "0; expected at least 1 cycle");
        }
    }
    let uses_modbus = config.devices.iter().any(|d| d.modbus.is_some());
    if !uses_modbus {
        return;
    }
    let profiles = match crate::source::modbus::profile::load_all(&config.modbus.profile_dirs) {
        Ok(p) => p,
        Err(problems) => {
            for (k, m) in problems {
                p.push(format!("modbus.profile_dirs: {k}"), m);
            }
            return;
        }
    };
    let conns: Vec<(String, ModbusKind)> = config.modbus.connections.iter().map(|c| (c.id.clone(), c.kind)).collect();
    for (i, d) in config.devices.iter_mut().enumerate() {
        let Some(m) = &d.modbus else { continue };
        let at = format!("devices[{i}].modbus");
        match conns.iter().find(|(id, _)| *id == m.connection) {
            None => {
                let known: Vec<&str> = conns.iter().map(|(id, _)| id.as_str()).collect();
                p.push(
                    format!("{at}.connection"),
                    format!("connection \"{}\" is not defined (known: {})", m.connection, known.join(", ")),
                );
            }
            Some((_, ModbusKind::Rtu | ModbusKind::RtuOverTcp)) if !(1..=247).contains(&m.unit) => {
                p.push(format!("{at}.unit"), format!("{}; expected 1 to 247 on a serial bus", m.unit));
            }
            Some(_) => {}
        }
        if m.interval_ms < 10 {
            p.push(format!("{at}.interval_ms"), format!("{}; expected at least 10", m.interval_ms));
        }
        match profiles.get(&m.profile) {
            None if m.profile.is_empty() => {
                p.push(format!("{at}.profile"), "missing; expected a profile id (or a device type with `profile`)");
            }
            None => {
                let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
                p.push(
                    format!("{at}.profile"),
                    format!("profile \"{}\" is not known (known: {})", m.profile, known.join(", ")),
                );
            }
            Some(profile) => {
                for pt in &profile.points {
                    if !d.points.iter().any(|x| x.name == pt.name) {
                        d.points.push(super::Point {
                            name: pt.name.clone(),
                            unit: pt.unit.clone(),
                            kind: pt.kind,
                            unwatched: pt.unwatched.clone(),
                            event: pt.event.clone(),
                        });
                    }
                }
            }
        }
    }
}
