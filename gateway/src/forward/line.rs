//! InfluxDB line protocol for samples and incidents (DESIGN.md, store schema): measurement = the
//! device's category; tags `site`, `grid`, `device` and the device's configured tags; one field per
//! point; the sample's timestamp in ns. Incidents are measurement `incident`, audit records `audit`.
//!
//! Each device's escaped `measurement,tags ` prefix and each point's escaped field key are built once
//! at start, so encoding a sample only appends to the output buffer.
//!
//! The measurement names, tag keys and field keys below are the store's schema: the encoder writes
//! with them and [`schema`] lists them, so the Grafana dashboards in `dashboards/` can be checked
//! against what the gateway really writes.

use std::fmt::Write as _;

use crate::audit::Record;
use crate::config::PointKind;
use crate::incident::changes::{change_code, severity_level, state_code, ChangeRow};
use crate::model::{DeviceInfo, Registry, Sample};

mod schema;
pub use schema::{schema, FieldType, Measurement, Schema, SchemaField};

/// Tag keys of every sample line, in the order written; the device's configured tags follow, and
/// never shadow them. The measurement is the device's category, the fields its points.
pub const SAMPLE_TAGS: [&str; 3] = ["device", "grid", "site"];

/// Measurement of incident changes.
pub const INCIDENT: &str = "incident";
/// Tag keys of an incident line, in the order written (an empty value is left out).
pub const INCIDENT_TAGS: [&str; 6] = ["category", "device", "grid", "rule", "severity", "site"];
/// Field keys of an incident line, in the order written; `value` only when the change has a finite one.
pub const INCIDENT_FIELDS: [(&str, FieldType); 9] = [
    ("id", FieldType::Int),
    ("seq", FieldType::Int),
    ("state_code", FieldType::Int),
    ("severity_level", FieldType::Int),
    ("change_code", FieldType::Int),
    ("state", FieldType::String),
    ("change", FieldType::String),
    ("value", FieldType::Float),
    ("message", FieldType::String),
];

/// Measurement of audit records.
pub const AUDIT: &str = "audit";
/// Tag keys of an audit line (few values, so few series).
pub const AUDIT_TAGS: [&str; 3] = ["action", "outcome", "site"];
/// Field keys of an audit line, in the order written.
pub const AUDIT_FIELDS: [(&str, FieldType); 7] = [
    ("seq", FieldType::Int),
    ("actor", FieldType::String),
    ("source", FieldType::String),
    ("target", FieldType::String),
    ("detail", FieldType::String),
    ("prev_hash", FieldType::String),
    ("hash", FieldType::String),
];

/// Measurement of the gateway's own health, written once a minute ([`GatewayHealth`]).
pub const GATEWAY: &str = "gateway";
/// Tag keys of a gateway health line.
pub const GATEWAY_TAGS: [&str; 1] = ["site"];
/// Field keys of a gateway health line, in the order written (all integers; see [`GatewayHealth`]).
pub const GATEWAY_FIELDS: [(&str, FieldType); 8] = [
    ("samples_total", FieldType::Int),
    ("rejects_total", FieldType::Int),
    ("outbox_batches", FieldType::Int),
    ("outbox_bytes", FieldType::Int),
    ("write_retries_total", FieldType::Int),
    ("dead_letters_total", FieldType::Int),
    ("incident_lag", FieldType::Int),
    ("history_dropped_samples_total", FieldType::Int),
];

// ---- energy_daily -------------------------------------------------------------------------------
// Written by the reports (issue 14), not by this encoder: one line per (metered device, point, local
// day), stamped with the start of the local day in ns. Its names live here so the writer and
// [`schema`] share one definition.

/// Measurement of daily energy figures.
pub const ENERGY_DAILY: &str = "energy_daily";
/// Tag keys every energy_daily line has.
pub const ENERGY_DAILY_TAGS: [&str; 4] = ["device", "grid", "point", "site"];
/// Tag keys an energy_daily line has when the device has a (non-empty) tag of that name.
pub const ENERGY_DAILY_DEVICE_TAGS: [&str; 2] = ["building", "tenant"];
/// Fields of every energy_daily line: kWh of the day, the largest 15-minute demand in kW, and the
/// minutes of the day without readings.
pub const ENERGY_DAILY_FIELDS: [(&str, FieldType); 3] =
    [("kwh", FieldType::Float), ("peak_kw", FieldType::Float), ("gap_minutes", FieldType::Float)];
/// Prefix of the per time-of-use bucket kWh fields: `tou_<bucket>`, one float per configured bucket.
pub const ENERGY_DAILY_TOU_PREFIX: &str = "tou_";
/// The time-of-use buckets a site may configure (`[[reports.tou]]`), so the `tou_<bucket>` fields.
pub const ENERGY_DAILY_TOU_BUCKETS: [&str; 4] = crate::config::report::TOU_BUCKETS;
// ---- end of energy_daily ------------------------------------------------------------------------

/// One meter's figures for one local day, written as measurement [`ENERGY_DAILY`] so central
/// dashboards need not recompute them from raw counters.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyDay {
    /// Start of the local day, UTC ns (the line's timestamp: a day sent again overwrites itself).
    pub day_ns: i64,
    pub device: String,
    pub point: String,
    pub grid: String,
    /// The device's `building` and `tenant` tags (empty: left out).
    pub building: String,
    pub tenant: String,
    pub kwh: f64,
    /// The largest 15-minute demand; none when no quarter of the day was complete.
    pub peak_kw: Option<f64>,
    pub gap_minutes: f64,
    /// kWh per configured time-of-use bucket (of [`ENERGY_DAILY_TOU_BUCKETS`]).
    pub tou: Vec<(&'static str, f64)>,
}

/// What the gateway itself writes into the outbox besides telemetry, incidents and audit records.
#[derive(Debug, Clone, PartialEq)]
pub enum Extra {
    /// The gateway's health counters (measurement [`GATEWAY`]).
    Health(GatewayHealth),
    /// Closed local days of the energy accounts (measurement [`ENERGY_DAILY`]).
    EnergyDays(Vec<EnergyDay>),
}

/// The gateway's health counters at one time, as `/metrics` shows them: written once a minute into
/// the outbox as measurement [`GATEWAY`] with fields [`GATEWAY_FIELDS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayHealth {
    /// When the counters were read, UTC ns.
    pub ts: i64,
    /// Samples applied by the core.
    pub samples_total: u64,
    /// Messages or values refused by the sources (MQTT subscriptions and HJ 212), all reasons.
    pub rejects_total: u64,
    /// Batches held in the outbox.
    pub outbox_batches: u64,
    /// Bytes of line protocol held in the outbox.
    pub outbox_bytes: u64,
    /// Failed writes to the stores that will be retried, all targets.
    pub write_retries_total: u64,
    /// Lines the stores refused, parked as dead letters, all targets.
    pub dead_letters_total: u64,
    /// Incident changes committed in the incident store but not yet in the outbox.
    pub incident_lag: u64,
    /// Samples the edge history dropped because its channel was full.
    pub history_dropped_samples_total: u64,
}

impl GatewayHealth {
    /// The values in the order of [`GATEWAY_FIELDS`].
    fn values(&self) -> [u64; GATEWAY_FIELDS.len()] {
        [
            self.samples_total,
            self.rejects_total,
            self.outbox_batches,
            self.outbox_bytes,
            self.write_retries_total,
            self.dead_letters_total,
            self.incident_lag,
            self.history_dropped_samples_total,
        ]
    }
}

/// The tags of a device's sample lines, sorted by key: [`SAMPLE_TAGS`] and the device's configured
/// tags with a value. Shared by the encoder and [`schema`].
fn device_tags<'a>(registry: &'a Registry, d: &'a DeviceInfo, site: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut tags: Vec<(&str, &str)> =
        SAMPLE_TAGS.iter().copied().zip([d.id.as_str(), &registry.grid(d.grid).id, site]).collect();
    for (k, v) in &d.tags {
        if !SAMPLE_TAGS.contains(&k.as_str()) && !v.is_empty() {
            tags.push((k, v));
        }
    }
    // Tag keys in lexical order, as InfluxDB prefers.
    tags.sort_by(|a, b| a.0.cmp(b.0));
    tags
}

/// Escapes a measurement name: commas and spaces.
pub fn escape_measurement(s: &str, out: &mut String) {
    escape(s, &[',', ' '], out);
}

/// Escapes a tag key, tag value or field key: commas, equals signs and spaces.
pub fn escape_key(s: &str, out: &mut String) {
    escape(s, &[',', '=', ' '], out);
}

/// Puts a backslash before each `special` character. A backslash is literal to the store unless it
/// precedes a special character or another backslash, so one that does (or that ends the text, where
/// it would escape the separator after it, or that precedes a newline, written as `\n`) is doubled.
/// A newline cannot be carried by a line and becomes the two characters `\n`.
fn escape(s: &str, special: &[char], out: &mut String) {
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push('\\');
                if chars.peek().is_none_or(|n| matches!(n, '\\' | '\n') || special.contains(n)) {
                    out.push('\\');
                }
            }
            '\n' => out.push_str("\\n"),
            c if special.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

/// Escapes a string field value and quotes it.
pub fn quote_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
}

/// Line protocol encoder for one registry.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Per device: `measurement,site=..,grid=..,device=..,tag=.. ` (with the trailing space).
    prefixes: Vec<String>,
    /// Per point: escaped field key and kind.
    fields: Vec<(String, PointKind)>,
    site: String,
}

impl Encoder {
    /// Precomputes prefixes and field keys for every device and point.
    pub fn new(registry: &Registry) -> Self {
        let site = registry.site.id.clone();
        let prefixes = registry
            .devices
            .iter()
            .map(|d| {
                let mut p = String::new();
                escape_measurement(&d.category, &mut p);
                for (k, v) in device_tags(registry, d, &site) {
                    p.push(',');
                    escape_key(k, &mut p);
                    p.push('=');
                    escape_key(v, &mut p);
                }
                p.push(' ');
                p
            })
            .collect();
        let fields = registry
            .points
            .iter()
            .map(|pt| {
                let mut k = String::new();
                escape_key(&pt.name, &mut k);
                (k, pt.kind)
            })
            .collect();
        Self { prefixes, fields, site }
    }

    /// Appends samples as lines; consecutive samples of one device with one timestamp share a line.
    /// Non-finite values (never accepted by the sources) are skipped. Returns the number of lines.
    pub fn samples(&self, registry: &Registry, samples: &[Sample], out: &mut String) -> usize {
        let mut lines = 0;
        let mut open: Option<(u32, i64)> = None;
        for s in samples {
            if !s.value.is_finite() {
                continue;
            }
            let Some(point) = registry.points.get(s.point.0 as usize) else { continue };
            let device = point.device.0;
            if open == Some((device, s.ts)) {
                out.push(',');
            } else {
                if let Some((_, ts)) = open {
                    let _ = writeln!(out, " {ts}");
                }
                out.push_str(&self.prefixes[device as usize]);
                open = Some((device, s.ts));
                lines += 1;
            }
            let (key, kind) = &self.fields[s.point.0 as usize];
            out.push_str(key);
            out.push('=');
            match kind {
                PointKind::Float => push_float(s.value, out),
                PointKind::Int => {
                    let _ = write!(out, "{}i", s.value.round() as i64);
                }
                PointKind::Bool => out.push_str(if s.value != 0.0 { "true" } else { "false" }),
            }
        }
        if let Some((_, ts)) = open {
            let _ = writeln!(out, " {ts}");
        }
        lines
    }

    /// Appends one incident change: tags site, grid, device, rule, severity, category; the state, the
    /// severity and the kind of change both as strings and as numbers (for stores that keep only
    /// numbers), the incident id and the change's sequence number; at the change's unique timestamp.
    pub fn incident(&self, c: &ChangeRow, out: &mut String) {
        out.push_str(INCIDENT);
        let values = [c.category.as_str(), &c.device, &c.grid, &c.rule, &c.severity, &self.site];
        push_tags(&INCIDENT_TAGS, values, out);
        let [id, seq, state_code_key, severity_level_key, change_code_key, state, change, value, message] =
            INCIDENT_FIELDS.map(|(k, _)| k);
        let _ = write!(
            out,
            " {id}={}i,{seq}={}i,{state_code_key}={}i,{severity_level_key}={}i,{change_code_key}={}i,{state}=",
            c.id,
            c.seq,
            state_code(&c.state),
            severity_level(&c.severity),
            change_code(&c.change)
        );
        quote_string(&c.state, out);
        let _ = write!(out, ",{change}=");
        quote_string(&c.change, out);
        if let Some(v) = c.value.filter(|v| v.is_finite()) {
            let _ = write!(out, ",{value}=");
            push_float(v, out);
        }
        let _ = write!(out, ",{message}=");
        quote_string(&c.message, out);
        let _ = writeln!(out, " {}", c.ts);
    }
}

impl Encoder {
    /// Appends one audit record: tags site, action and outcome (few values, so few series); actor,
    /// source, target, detail and both hashes as string fields, `seq` as an integer; at the record's
    /// time, which the audit log keeps unique and increasing.
    pub fn audit(&self, r: &Record, out: &mut String) {
        out.push_str(AUDIT);
        push_tags(&AUDIT_TAGS, [r.action.as_str(), &r.outcome, &self.site], out);
        let [(seq, _), strings @ ..] = &AUDIT_FIELDS;
        let _ = write!(out, " {seq}={}i", r.seq);
        for ((k, _), v) in strings.iter().zip([&r.actor, &r.source, &r.target, &r.detail, &r.prev_hash, &r.hash]) {
            out.push(',');
            out.push_str(k);
            out.push('=');
            quote_string(v, out);
        }
        let _ = writeln!(out, " {}", r.time_ns);
    }

    /// Appends one line of the gateway's own health: measurement [`GATEWAY`], tag `site`, the
    /// counters as integers, at the time they were read.
    pub fn gateway(&self, h: &GatewayHealth, out: &mut String) {
        out.push_str(GATEWAY);
        push_tags(&GATEWAY_TAGS, [self.site.as_str()], out);
        for (i, ((k, _), v)) in GATEWAY_FIELDS.iter().zip(h.values()).enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            let _ = write!(out, "{k}={}i", v.min(i64::MAX as u64));
        }
        let _ = writeln!(out, " {}", h.ts);
    }
}

impl Encoder {
    /// Appends one `energy_daily` line: tags in lexical order (building, device, grid, point, site,
    /// tenant; empty ones left out), then `kwh`, `peak_kw` (when known), `gap_minutes` and one
    /// `tou_<bucket>` per bucket.
    pub fn energy_day(&self, d: &EnergyDay, out: &mut String) {
        out.push_str(ENERGY_DAILY);
        push_tags(
            &["building", "device", "grid", "point", "site", "tenant"],
            [d.building.as_str(), &d.device, &d.grid, &d.point, &self.site, &d.tenant],
            out,
        );
        out.push_str(" kwh=");
        push_float(d.kwh, out);
        if let Some(p) = d.peak_kw.filter(|p| p.is_finite()) {
            out.push_str(",peak_kw=");
            push_float(p, out);
        }
        out.push_str(",gap_minutes=");
        push_float(d.gap_minutes, out);
        for (b, v) in &d.tou {
            let _ = write!(out, ",{ENERGY_DAILY_TOU_PREFIX}{b}=");
            push_float(*v, out);
        }
        let _ = writeln!(out, " {}", d.day_ns);
    }
}

/// Appends `,key=value` for each tag with a value (keys are plain names, values escaped).
fn push_tags<const N: usize>(keys: &[&str; N], values: [&str; N], out: &mut String) {
    for (k, v) in keys.iter().zip(values) {
        if v.is_empty() {
            continue;
        }
        out.push(',');
        out.push_str(k);
        out.push('=');
        escape_key(v, out);
    }
}

/// Appends the shortest decimal that reads back to the same f64, always with a decimal point, so the
/// store types the field as a float even when the first value is whole.
fn push_float(v: f64, out: &mut String) {
    let start = out.len();
    let _ = write!(out, "{v}");
    if !out[start..].contains('.') {
        out.push_str(".0");
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PointId, Quality};

    fn registry() -> Registry {
        let toml = r#"
[site]
id = "xh"
[[grids]]
id = "g1"
[[devices]]
id = "配电柜1"
grid = "g1"
category = "electrical"
tags = { building = "B 11, east=wing", voltage = "380" }
points = [{ name = "ua" }, { name = "door_open", kind = "bool" }, { name = "count", kind = "int" }]
[[devices]]
id = "m2"
grid = "g1"
category = "energy"
points = [{ name = "kwh" }]
"#;
        let c = crate::config::from_str(toml, std::path::Path::new("t.toml"), std::path::Path::new(".")).unwrap();
        Registry::from_config(&c)
    }

    fn s(point: u32, ts: i64, value: f64) -> Sample {
        Sample { point: PointId(point), quality: Quality::Good, ts, value }
    }

    #[test]
    fn audit_records_keep_free_text_in_fields_and_few_tags() {
        let enc = Encoder::new(&registry());
        let r = crate::audit::Record {
            seq: 7,
            time_ns: 1_700_000_000_000_000_123,
            at: String::new(),
            actor: "王 工".into(),
            source: "10.0.0.7:51000".into(),
            action: "incident.shelve".into(),
            target: "incident:42".into(),
            outcome: "ok".into(),
            detail: "duration: 30m; note: \"检修\"\nline 2".into(),
            prev_hash: "ab".into(),
            hash: "cd".into(),
        };
        let mut out = String::new();
        enc.audit(&r, &mut out);
        assert_eq!(
            out,
            "audit,action=incident.shelve,outcome=ok,site=xh seq=7i,actor=\"王 工\",source=\"10.0.0.7:51000\",\
             target=\"incident:42\",detail=\"duration: 30m; note: \\\"检修\\\"\\nline 2\",prev_hash=\"ab\",hash=\"cd\" \
             1700000000000000123\n"
        );
    }

    #[test]
    fn escapes_and_merges_fields_of_one_device_and_time() {
        let reg = registry();
        let enc = Encoder::new(&reg);
        let mut out = String::new();
        let n =
            enc.samples(&reg, &[s(0, 5, 229.5), s(1, 5, 1.0), s(2, 5, 3.0), s(0, 6, 230.0), s(3, 6, 12.0)], &mut out);
        assert_eq!(n, 3);
        assert_eq!(
            out,
            "electrical,building=B\\ 11\\,\\ east\\=wing,device=配电柜1,grid=g1,site=xh,voltage=380 ua=229.5,door_open=true,count=3i 5\n\
             electrical,building=B\\ 11\\,\\ east\\=wing,device=配电柜1,grid=g1,site=xh,voltage=380 ua=230.0 6\n\
             energy,device=m2,grid=g1,site=xh kwh=12.0 6\n"
        );
    }

    #[test]
    fn gateway_health_is_one_line_of_integers_tagged_with_the_site() {
        let enc = Encoder::new(&registry());
        let h = GatewayHealth {
            ts: 1_700_000_000_000_000_000,
            samples_total: 12_345,
            rejects_total: 7,
            outbox_batches: 3,
            outbox_bytes: 4096,
            write_retries_total: 2,
            dead_letters_total: 1,
            incident_lag: 0,
            history_dropped_samples_total: u64::MAX,
        };
        let mut out = String::new();
        enc.gateway(&h, &mut out);
        assert_eq!(
            out,
            "gateway,site=xh samples_total=12345i,rejects_total=7i,outbox_batches=3i,outbox_bytes=4096i,\
             write_retries_total=2i,dead_letters_total=1i,incident_lag=0i,history_dropped_samples_total=9223372036854775807i \
             1700000000000000000\n"
        );
    }

    #[test]
    fn backslashes_never_escape_a_separator() {
        let check = |s: &str, expected: &str| {
            let mut out = String::new();
            escape_key(s, &mut out);
            assert_eq!(out, expected, "{s:?}");
        };
        check("C:\\temp", "C:\\temp");
        // A trailing backslash would otherwise escape the ',' or ' ' after the value.
        check("a\\", "a\\\\");
        check("a\\,b", "a\\\\\\,b");
        check("a\\\\b", "a\\\\\\b");
        check("x\\ y=1", "x\\\\\\ y\\=1");
        check("a\\\nb", "a\\\\\\nb");
        let mut out = String::new();
        escape_measurement("m\\", &mut out);
        assert_eq!(out, "m\\\\");
    }

    #[test]
    fn skips_non_finite_values() {
        let reg = registry();
        let enc = Encoder::new(&reg);
        let mut out = String::new();
        assert_eq!(enc.samples(&reg, &[s(0, 1, f64::NAN)], &mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn incidents_quote_strings() {
        let reg = registry();
        let enc = Encoder::new(&reg);
        let mut out = String::new();
        enc.incident(
            &ChangeRow {
                seq: 41,
                ts: 9,
                at: String::new(),
                change: "raised".into(),
                id: 7,
                rule: "electrical.residual_current".into(),
                title: String::new(),
                category: "electrical".into(),
                severity: "critical".into(),
                state: "active_unacked".into(),
                device: "m 1".into(),
                grid: "g,1".into(),
                point: String::new(),
                value: Some(350.0),
                message: "say \"hi\"\\".into(),
                plan: String::new(),
                who: None,
                note: None,
            },
            &mut out,
        );
        assert_eq!(
            out,
            "incident,category=electrical,device=m\\ 1,grid=g\\,1,rule=electrical.residual_current,severity=critical,site=xh \
             id=7i,seq=41i,state_code=1i,severity_level=4i,change_code=1i,state=\"active_unacked\",change=\"raised\",value=350.0,message=\"say \\\"hi\\\"\\\\\" 9\n"
        );
    }
}
