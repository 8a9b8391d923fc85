//! Properties of the line protocol encoder, checked by a small parser that follows the InfluxDB
//! escaping rules: in measurements, tag keys, tag values and field keys a backslash escapes the
//! element's special characters (comma and space; tag and field keys and tag values also `=`) and
//! another backslash; any other backslash is literal. In string field values a backslash escapes `"`
//! and `\`. A line cannot carry a newline, so the encoder writes one as the two characters `\n`.

use proptest::prelude::*;

use super::*;
use crate::model::{PointId, Quality};

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Field)>,
    ts: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(String),
}

/// Reads an unquoted element up to an unescaped character of `stops`; returns it and the stop.
fn element(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    special: &[char],
    stops: &[char],
) -> Result<(String, Option<char>), String> {
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\n' => return Err("raw newline inside a line".into()),
            '\\' => match chars.peek() {
                Some(&n) if n == '\\' || special.contains(&n) => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c if stops.contains(&c) => return Ok((out, Some(c))),
            c => out.push(c),
        }
    }
    Ok((out, None))
}

fn parse_line(line: &str) -> Result<Line, String> {
    let mut chars = line.chars().peekable();
    let (measurement, mut stop) = element(&mut chars, &[',', ' '], &[',', ' '])?;
    if measurement.is_empty() {
        return Err("empty measurement".into());
    }
    let mut tags = Vec::new();
    while stop == Some(',') {
        let (k, s) = element(&mut chars, &[',', '=', ' '], &['=', ',', ' '])?;
        if s != Some('=') || k.is_empty() {
            return Err(format!("tag key {k:?} without a value"));
        }
        let (v, s) = element(&mut chars, &[',', '=', ' '], &[',', ' ', '='])?;
        if s == Some('=') || v.is_empty() {
            return Err(format!("tag {k:?} has a bad value {v:?}"));
        }
        tags.push((k, v));
        stop = s;
    }
    if stop != Some(' ') {
        return Err("no field set".into());
    }
    let mut fields = Vec::new();
    loop {
        let (k, s) = element(&mut chars, &[',', '=', ' '], &['=', ',', ' '])?;
        if s != Some('=') || k.is_empty() {
            return Err(format!("field key {k:?} without a value"));
        }
        let value;
        let s;
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some('"') => break,
                    Some('\n') => return Err("raw newline inside a string".into()),
                    Some('\\') => match chars.peek() {
                        Some(&n) if n == '"' || n == '\\' => {
                            text.push(n);
                            chars.next();
                        }
                        _ => text.push('\\'),
                    },
                    Some(c) => text.push(c),
                }
            }
            value = Field::Str(text);
            s = chars.next();
        } else {
            let (raw, stop) = element(&mut chars, &[], &[',', ' '])?;
            value = match raw.as_str() {
                "true" => Field::Bool(true),
                "false" => Field::Bool(false),
                r if r.ends_with('i') => Field::Int(r[..r.len() - 1].parse().map_err(|e| format!("{r}: {e}"))?),
                r if r.contains(['.', 'e', 'E']) || r.contains("inf") || r.contains("NaN") => {
                    let f: f64 = r.parse().map_err(|e| format!("{r}: {e}"))?;
                    if !f.is_finite() {
                        return Err(format!("non-finite float {r}"));
                    }
                    Field::Float(f)
                }
                r => return Err(format!("{r:?} is no field value (floats need a decimal point)")),
            };
            s = stop;
        }
        fields.push((k, value));
        match s {
            Some(',') => continue,
            Some(' ') => break,
            _ => return Err("no timestamp".into()),
        }
    }
    let rest: String = chars.collect();
    let ts = rest.parse().map_err(|e| format!("timestamp {rest:?}: {e}"))?;
    Ok(Line { measurement, tags, fields, ts })
}

fn parse(text: &str) -> Result<Vec<Line>, String> {
    let body = text.strip_suffix('\n').ok_or("output does not end with a newline")?;
    body.split('\n').map(parse_line).collect()
}

/// What the store reads back for a string the encoder was given.
fn stored(s: &str) -> String {
    s.replace('\n', "\\n")
}

/// Names with everything line protocol treats specially, plus unicode.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,6}",
        "[a-z ,=\"\\\\\n\\\\n\t'#\u{e9}\u{914d}\u{1f600}]{1,8}",
        "[ -~\u{0}-\u{1f}]{1,8}",
        "\\PC{1,6}",
    ]
}

/// A registry of one device whose every name is arbitrary.
fn registry(
    category: &str,
    id: &str,
    grid: &str,
    site: &str,
    tags: &[(String, String)],
    points: &[(String, PointKind)],
) -> Registry {
    let text = r#"
[site]
id = "s"
[[grids]]
id = "g"
[[devices]]
id = "d"
grid = "g"
category = "c"
"#;
    let mut reg = Registry::from_config(&crate::config::from_str(text, "t.toml".as_ref(), ".".as_ref()).unwrap());
    reg.site.id = site.to_owned();
    reg.grids[0].id = grid.to_owned();
    let d = &mut reg.devices[0];
    d.category = category.to_owned();
    d.id = id.to_owned();
    d.tags = tags.iter().cloned().collect();
    d.points = 0..points.len() as u32;
    reg.points = points
        .iter()
        .map(|(n, kind)| PointInfo {
            device: DeviceId(0),
            name: n.clone(),
            unit: String::new(),
            kind: *kind,
            event: None,
            unwatched: None,
        })
        .collect();
    reg
}

fn kind() -> impl Strategy<Value = PointKind> {
    prop::sample::select(&[PointKind::Float, PointKind::Int, PointKind::Bool][..])
}

use crate::model::{DeviceId, PointInfo};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Samples of a device with arbitrary names parse back to the same measurement, tags, fields and
    /// timestamps, one line per (device, timestamp) run.
    #[test]
    fn samples_parse_back(
        (category, id, grid, site) in (name(), name(), name(), name()),
        tags in prop::collection::btree_map(name(), name(), 0..4),
        points in prop::collection::vec((name(), kind()), 1..4),
        values in prop::collection::vec((0usize..4, -3i64..3, prop_oneof![any::<f64>(), -1e6f64..1e6, (-1000i64..1000).prop_map(|x| x as f64)]), 1..8),
    ) {
        let tags: Vec<(String, String)> = tags.into_iter().collect();
        let reg = registry(&category, &id, &grid, &site, &tags, &points);
        let enc = Encoder::new(&reg);
        let samples: Vec<Sample> = values
            .iter()
            .map(|&(p, ts, value)| Sample { point: PointId((p % points.len()) as u32), quality: Quality::Good, ts, value })
            .collect();
        let mut out = String::new();
        let n = enc.samples(&reg, &samples, &mut out);
        // What the store should see: runs of finite samples with one timestamp.
        let mut expected: Vec<Line> = Vec::new();
        // In the order of the keys as configured.
        let mut want_tags: Vec<(String, String)> = vec![("device".into(), id.clone()), ("grid".into(), grid.clone()), ("site".into(), site.clone())];
        for (k, v) in &tags {
            if !matches!(k.as_str(), "device" | "grid" | "site") && !v.is_empty() {
                want_tags.push((k.clone(), v.clone()));
            }
        }
        want_tags.sort_by(|a, b| a.0.cmp(&b.0));
        let want_tags: Vec<(String, String)> = want_tags.iter().map(|(k, v)| (stored(k), stored(v))).collect();
        for s in samples.iter().filter(|s| s.value.is_finite()) {
            let (pname, kind) = &points[s.point.0 as usize];
            let field = match kind {
                PointKind::Float => Field::Float(s.value),
                PointKind::Int => Field::Int(s.value.round() as i64),
                PointKind::Bool => Field::Bool(s.value != 0.0),
            };
            match expected.last_mut() {
                Some(l) if l.ts == s.ts => l.fields.push((stored(pname), field)),
                _ => expected.push(Line { measurement: stored(&category), tags: want_tags.clone(), fields: vec![(stored(pname), field)], ts: s.ts }),
            }
        }
        prop_assert_eq!(n, expected.len());
        if expected.is_empty() {
            prop_assert!(out.is_empty());
        } else {
            let got = parse(&out).map_err(|e| TestCaseError::fail(format!("{e} in {out:?}")))?;
            prop_assert_eq!(got, expected, "{}", out);
        }
    }

    /// Incident lines parse back with every tag, the state, value and message as given.
    #[test]
    fn incidents_parse_back(
        (rule, severity, category, grid, device) in (name(), name(), prop_oneof![Just(String::new()), name()], prop_oneof![Just(String::new()), name()], prop_oneof![Just(String::new()), name()]),
        site in name(),
        state in name(),
        change in prop_oneof![Just("raised".to_owned()), Just("closed".to_owned()), name()],
        message in prop_oneof![Just(String::new()), name(), any::<String>()],
        value in prop_oneof![any::<f64>(), Just(f64::NAN)],
        (id, at) in (any::<i64>(), any::<i64>()),
    ) {
        let reg = registry("c", "d", "g", &site, &[], &[("p".to_owned(), PointKind::Float)]);
        let enc = Encoder::new(&reg);
        let mut out = String::new();
        let value = value.is_finite().then_some(value);
        let line = ChangeRow {
            seq: id.wrapping_add(1),
            ts: at,
            at: String::new(),
            change: change.clone(),
            id,
            rule: rule.clone(),
            title: String::new(),
            category: category.clone(),
            severity: severity.clone(),
            state: state.clone(),
            device: device.clone(),
            grid: grid.clone(),
            point: String::new(),
            value,
            message: message.clone(),
            plan: String::new(),
            who: None,
            note: None,
        };
        enc.incident(&line, &mut out);
        let got = parse(&out).map_err(|e| TestCaseError::fail(format!("{e} in {out:?}")))?;
        let mut tags = Vec::new();
        for (k, v) in [("category", &category), ("device", &device), ("grid", &grid), ("rule", &rule), ("severity", &severity), ("site", &site)] {
            if !v.is_empty() {
                tags.push((k.to_owned(), stored(v)));
            }
        }
        let mut fields = vec![
            ("id".to_owned(), Field::Int(id)),
            ("seq".to_owned(), Field::Int(id.wrapping_add(1))),
            ("state_code".to_owned(), Field::Int(state_code(&state))),
            ("severity_level".to_owned(), Field::Int(severity_level(&severity))),
            ("change_code".to_owned(), Field::Int(change_code(&change))),
            ("state".to_owned(), Field::Str(stored(&state))),
            ("change".to_owned(), Field::Str(stored(&change))),
        ];
        if let Some(v) = value {
            fields.push(("value".to_owned(), Field::Float(v)));
        }
        fields.push(("message".to_owned(), Field::Str(stored(&message))));
        prop_assert_eq!(got, vec![Line { measurement: "incident".into(), tags, fields, ts: at }], "{}", out);
    }
}

/// Every line the encoder writes names a measurement, tag keys and field keys (of the right type)
/// that [`schema`] lists: what the dashboards are checked against is what the store gets.
#[test]
fn every_line_written_is_in_the_schema() {
    let text = r#"
[site]
id = "xh"
[[grids]]
id = "g1"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
tags = { building = "B 1", empty = "" }
points = [{ name = "ua" }, { name = "door_open", kind = "bool" }, { name = "n", kind = "int" }]
[[devices]]
id = "e1"
grid = "g1"
category = "environment"
tags = { zone_class = "3" }
points = [{ name = "noise" }]
"#;
    let reg = Registry::from_config(&crate::config::from_str(text, "t.toml".as_ref(), ".".as_ref()).unwrap());
    let enc = Encoder::new(&reg);
    let mut out = String::new();
    let samples: Vec<Sample> = (0..reg.points.len() as u32)
        .map(|p| Sample { point: PointId(p), quality: Quality::Good, ts: 5, value: 1.0 })
        .collect();
    enc.samples(&reg, &samples, &mut out);
    let change = ChangeRow {
        seq: 2,
        ts: 9,
        at: String::new(),
        change: "raised".into(),
        id: 1,
        rule: "r".into(),
        title: String::new(),
        category: "electrical".into(),
        severity: "high".into(),
        state: "active_unacked".into(),
        device: "m1".into(),
        grid: "g1".into(),
        point: "ua".into(),
        value: Some(1.5),
        message: "m".into(),
        plan: String::new(),
        who: None,
        note: None,
    };
    enc.incident(&change, &mut out);
    let record = crate::audit::Record {
        seq: 1,
        time_ns: 3,
        at: String::new(),
        actor: "a".into(),
        source: "s".into(),
        action: "login".into(),
        target: "t".into(),
        outcome: "ok".into(),
        detail: "d".into(),
        prev_hash: "p".into(),
        hash: "h".into(),
    };
    enc.audit(&record, &mut out);
    enc.gateway(&GatewayHealth { ts: 7, samples_total: 1, ..GatewayHealth::default() }, &mut out);
    enc.energy_day(
        &EnergyDay {
            day_ns: 11,
            device: "m1".into(),
            point: "energy".into(),
            grid: "g1".into(),
            building: "B 1".into(),
            tenant: "T1".into(),
            kwh: 360.0,
            peak_kw: Some(15.0),
            gap_minutes: 0.0,
            tou: ENERGY_DAILY_TOU_BUCKETS.iter().map(|b| (*b, 1.0)).collect(),
        },
        &mut out,
    );
    assert!(
        out.ends_with("energy_daily,building=B\\ 1,device=m1,grid=g1,point=energy,site=xh,tenant=T1 kwh=360.0,peak_kw=15.0,gap_minutes=0.0,tou_sharp=1.0,tou_peak=1.0,tou_flat=1.0,tou_valley=1.0 11\n"),
        "{out}"
    );
    let lines = parse(&out).unwrap();
    let schema = schema(&reg);
    let mut seen = std::collections::BTreeSet::new();
    for l in &lines {
        let m = schema.get(&l.measurement).unwrap_or_else(|| panic!("{} is not in the schema", l.measurement));
        seen.insert(l.measurement.clone());
        for (k, _) in &l.tags {
            assert!(m.has_tag(k), "tag {k} of {} is not in the schema {m:?}", l.measurement);
        }
        for (k, v) in &l.fields {
            let kind = match v {
                Field::Float(_) => FieldType::Float,
                Field::Int(_) => FieldType::Int,
                Field::Bool(_) => FieldType::Bool,
                Field::Str(_) => FieldType::String,
            };
            assert_eq!(m.field(k), Some(kind), "field {k} of {}", l.measurement);
        }
    }
    // Each measurement the encoder writes was written, with every tag and field the schema lists.
    let written = ["audit", "electrical", "energy_daily", "environment", "gateway", "incident"];
    assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), written);
    for name in written {
        let m = schema.get(name).unwrap();
        let tags: std::collections::BTreeSet<&str> = lines
            .iter()
            .filter(|l| l.measurement == name)
            .flat_map(|l| l.tags.iter().map(|(k, _)| k.as_str()))
            .collect();
        let fields: std::collections::BTreeSet<&str> = lines
            .iter()
            .filter(|l| l.measurement == name)
            .flat_map(|l| l.fields.iter().map(|(k, _)| k.as_str()))
            .collect();
        assert_eq!(tags, m.tags.iter().map(String::as_str).collect(), "tags of {name}");
        assert_eq!(fields, m.fields.iter().map(|f| f.name.as_str()).collect(), "fields of {name}");
    }
}
