//! InfluxDB line protocol for samples and incidents (DESIGN.md, store schema): measurement = the
//! device's category; tags `site`, `grid`, `device` and the device's configured tags; one field per
//! point; the sample's timestamp in ns. Incidents are measurement `incident`, audit records `audit`.
//!
//! Each device's escaped `measurement,tags ` prefix and each point's escaped field key are built once
//! at start, so encoding a sample only appends to the output buffer.

use std::fmt::Write as _;

use crate::audit::Record;
use crate::config::PointKind;
use crate::incident::changes::{change_code, severity_level, state_code, ChangeRow};
use crate::model::{Registry, Sample};

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
                // Tag keys in lexical order, as InfluxDB prefers; configured tags never shadow ours.
                let mut tags: Vec<(&str, &str)> =
                    vec![("device", &d.id), ("grid", &registry.grid(d.grid).id), ("site", &site)];
                for (k, v) in &d.tags {
                    if !matches!(k.as_str(), "device" | "grid" | "site") && !v.is_empty() {
                        tags.push((k, v));
                    }
                }
                tags.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in tags {
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
        out.push_str("incident");
        for (k, v) in [
            ("category", c.category.as_str()),
            ("device", &c.device),
            ("grid", &c.grid),
            ("rule", &c.rule),
            ("severity", &c.severity),
            ("site", self.site.as_str()),
        ] {
            if v.is_empty() {
                continue;
            }
            out.push(',');
            out.push_str(k);
            out.push('=');
            escape_key(v, out);
        }
        let _ = write!(
            out,
            " id={}i,seq={}i,state_code={}i,severity_level={}i,change_code={}i,state=",
            c.id,
            c.seq,
            state_code(&c.state),
            severity_level(&c.severity),
            change_code(&c.change)
        );
        quote_string(&c.state, out);
        out.push_str(",change=");
        quote_string(&c.change, out);
        if let Some(v) = c.value.filter(|v| v.is_finite()) {
            out.push_str(",value=");
            push_float(v, out);
        }
        out.push_str(",message=");
        quote_string(&c.message, out);
        let _ = writeln!(out, " {}", c.ts);
    }
}

impl Encoder {
    /// Appends one audit record: tags site, action and outcome (few values, so few series); actor,
    /// source, target, detail and both hashes as string fields, `seq` as an integer; at the record's
    /// time, which the audit log keeps unique and increasing.
    pub fn audit(&self, r: &Record, out: &mut String) {
        out.push_str("audit");
        for (k, v) in [("action", r.action.as_str()), ("outcome", &r.outcome), ("site", &self.site)] {
            if v.is_empty() {
                continue;
            }
            out.push(',');
            out.push_str(k);
            out.push('=');
            escape_key(v, out);
        }
        let _ = write!(out, " seq={}i", r.seq);
        for (k, v) in [
            ("actor", &r.actor),
            ("source", &r.source),
            ("target", &r.target),
            ("detail", &r.detail),
            ("prev_hash", &r.prev_hash),
            ("hash", &r.hash),
        ] {
            out.push(',');
            out.push_str(k);
            out.push('=');
            quote_string(v, out);
        }
        let _ = writeln!(out, " {}", r.time_ns);
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
