//! `parkwatch rules test`: rule unit tests in TOML, run offline on a virtual clock. Input series
//! (point, time, value), events and acknowledgements go in; the alarm transitions that come out are
//! compared with the expected ones, like `promtool test rules`.
//!
//! ```toml
//! [[test]]
//! name = "above 300 mA raises one critical alarm after the on-delay"
//! start = "2026-06-01T10:00:00+08:00"
//! rules = ["electrical.residual_current"]
//! device = { id = "m1", category = "electrical", tags = { voltage = "380" }, points = ["residual_current"] }
//! input = [{ at = "0s", point = "residual_current", value = 350.0 }]
//! until = "10s"
//! expect = [{ at = "3s", rule = "electrical.residual_current", kind = "raised", severity = "critical" }]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::core::engine::{Action, Change, Engine};
use crate::core::packs;
use crate::core::rules::{self, parse_duration, Limits};
use crate::core::PointState;
use crate::model::time::Now;
use crate::model::{Event, Quality, Registry, Sample};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    test: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// RFC 3339; the virtual clock starts here.
    #[serde(default = "default_start")]
    start: String,
    #[serde(default = "default_tz")]
    timezone: String,
    /// Only these rules' transitions are compared (default: all).
    #[serde(default)]
    rules: Vec<String>,
    device: TestDevice,
    /// Parameter overrides for the device.
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    input: Vec<Input>,
    /// Run the clock to here (offset) after the last input; default: last input.
    until: Option<String>,
    #[serde(default)]
    expect: Vec<Expect>,
}

fn default_start() -> String {
    "2026-01-01T12:00:00+08:00".into()
}
fn default_tz() -> String {
    "Asia/Shanghai".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestDevice {
    #[serde(default = "default_id")]
    id: String,
    #[serde(default = "default_grid")]
    grid: String,
    category: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    points: Vec<String>,
}

fn default_id() -> String {
    "dev".into()
}
fn default_grid() -> String {
    "g1".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    at: String,
    point: Option<String>,
    value: Option<f64>,
    /// Sample time offset, when the device clock differs from the gateway's (default: `at`).
    ts: Option<String>,
    event: Option<String>,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
    /// Acknowledge the open incident of this rule.
    ack: Option<String>,
    #[serde(default)]
    by: String,
    /// Repeat this input every `every` until `to` (offset), for long series.
    every: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Expect {
    at: String,
    rule: String,
    kind: String,
    severity: Option<String>,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub text: String,
}

/// Runs every test in `file` against packs `(name, source)`.
///
/// # Errors
/// The file or the packs cannot be read or compiled; each failing test is reported in [`Report`].
pub fn run_file(file: &Path, packs: &[(String, String)]) -> Result<Report, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let parsed: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut report = Report::default();
    for case in &parsed.test {
        match run_case(case, packs) {
            Ok(()) => {
                report.passed += 1;
                let _ = writeln!(report.text, "  ok    {}", case.name);
            }
            Err(why) => {
                report.failed += 1;
                let _ = writeln!(report.text, "  FAIL  {}\n{}", case.name, indent(&why));
            }
        }
    }
    Ok(report)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("        {l}\n")).collect()
}

fn offset(s: &str, what: &str) -> Result<i64, String> {
    parse_duration(s).ok_or_else(|| format!("{what} = {s:?}; expected an offset like \"90s\" or \"22h\""))
}

fn fmt_offset(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    if ms != 0 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{s}s")
    }
}

fn run_case(case: &Case, packs: &[(String, String)]) -> Result<(), String> {
    let start = chrono::DateTime::parse_from_rfc3339(&case.start)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| format!("start = {:?}; expected RFC 3339", case.start))?;
    let d = &case.device;
    let mut points = d.points.clone();
    for i in &case.input {
        if let Some(p) = &i.point {
            if !points.contains(p) {
                points.push(p.clone());
            }
        }
    }
    let tags: String = d.tags.iter().map(|(k, v)| format!("{k:?} = {v:?}")).collect::<Vec<_>>().join(", ");
    let pts: String = points.iter().map(|p| format!("{{ name = {p:?} }}")).collect::<Vec<_>>().join(", ");
    let params: String = case.params.iter().map(|(k, v)| format!("{k:?} = {v}")).collect::<Vec<_>>().join(", ");
    let overrides = if case.params.is_empty() {
        String::new()
    } else {
        format!("[[rules.overrides]]\nrule = \"*\"\ndevice = {:?}\nparams = {{ {params} }}\n", d.id)
    };
    let toml_text = format!(
        "[site]\nid = \"test\"\ntimezone = {:?}\n[[grids]]\nid = {:?}\n[[devices]]\nid = {:?}\ngrid = {:?}\n\
         category = {:?}\ntags = {{ {tags} }}\npoints = [{pts}]\n[rules]\nbuiltin = false\n{overrides}",
        case.timezone, d.grid, d.id, d.grid, d.category
    );
    let config = crate::config::from_str(&toml_text, Path::new("(test)"), Path::new("."))
        .map_err(|e| format!("test device: {e}"))?;
    let registry = Arc::new(Registry::from_config(&config));
    let set = rules::load(packs, Limits::default())
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    for r in &case.rules {
        if !set.rules.iter().any(|x| &x.id == r) {
            return Err(format!("rule {r:?} is not in the packs"));
        }
    }
    let settings = packs::settings(&config, &registry);
    let mut engine = Engine::new(set, registry.clone(), settings, 1);
    let device = registry.device_id(&d.id).ok_or("test device missing")?;

    // Expand repeated inputs, then order by time (stable: file order breaks ties).
    let mut steps: Vec<(i64, &Input)> = Vec::new();
    for i in &case.input {
        let at = offset(&i.at, "input.at")?;
        match (&i.every, &i.to) {
            (Some(every), Some(to)) => {
                let (every, to) = (offset(every, "input.every")?, offset(to, "input.to")?);
                if every <= 0 {
                    return Err("input.every must be positive".into());
                }
                let mut t = at;
                while t <= to {
                    steps.push((t, i));
                    t += every;
                }
            }
            (None, None) => steps.push((at, i)),
            _ => return Err("input.every and input.to go together".into()),
        }
    }
    steps.sort_by_key(|(t, _)| *t);
    let until = match &case.until {
        Some(u) => offset(u, "until")?,
        None => steps.last().map_or(0, |s| s.0),
    };

    let mut states = vec![PointState::default(); registry.points.len()];
    let mut actual: Vec<(i64, String, String, Option<String>)> = Vec::new();
    let mut rule_of: HashMap<i64, String> = HashMap::new();
    let collect = |engine: &mut Engine, actual: &mut Vec<_>, rule_of: &mut HashMap<i64, String>| {
        for c in engine.take_changes() {
            match c {
                Change::Open(n) => {
                    rule_of.insert(n.id, n.rule.clone());
                    actual.push((n.at - start, n.rule, "raised".to_string(), Some(n.severity.as_str().to_string())));
                }
                Change::Update(u) => {
                    let rule = rule_of.get(&u.id).cloned().unwrap_or_default();
                    actual.push((u.at - start, rule, u.kind.to_string(), u.severity.map(|s| s.as_str().to_string())));
                }
            }
        }
    };
    // The virtual clock drives both readings: the monotonic one is the offset from `start`.
    let clock = |at: i64| Now { wall: start + at, mono: at };
    let advance = |engine: &mut Engine, states: &[PointState], to: i64| {
        // Fire every timer due up to `to`, each at its own time.
        for _ in 0..100_000 {
            match engine.next_deadline() {
                Some(d) if d <= to => engine.tick(states, clock(d.max(0))),
                _ => break,
            }
            if engine.next_deadline().is_some_and(|d2| d2 <= 0) {
                break;
            }
        }
    };
    for (at, input) in steps {
        let now = clock(at);
        advance(&mut engine, &states, at);
        collect(&mut engine, &mut actual, &mut rule_of);
        if let (Some(p), Some(v)) = (&input.point, input.value) {
            let point = registry.point_of(device, p).ok_or_else(|| format!("no point {p:?}"))?;
            let ts = match &input.ts {
                Some(t) => start + offset(t, "input.ts")?,
                None => now.wall,
            };
            let st = &mut states[point.0 as usize];
            let old = st.has_value.then_some(st.value);
            *st = PointState { value: v, ts, quality: Quality::Good, has_value: true };
            engine.on_sample(&Sample { point, quality: Quality::Good, ts, value: v }, old);
            engine.evaluate_dirty(&states, now);
        } else if let Some(kind) = &input.event {
            let ev = Event { device, kind: kind.clone(), ts: now.wall, attributes: input.attributes.clone() };
            engine.on_event(&ev, &states, now);
        } else if let Some(rule) = &input.ack {
            collect(&mut engine, &mut actual, &mut rule_of);
            let id = rule_of.iter().filter(|(_, r)| *r == rule).map(|(id, _)| *id).max();
            let id = id.ok_or_else(|| format!("ack at {}: no incident of rule {rule:?}", fmt_offset(at)))?;
            engine.act(id, Action::Ack, &input.by, now).map_err(|e| e.to_string())?;
        } else {
            return Err(format!("input at {}: expected point + value, event, or ack", input.at));
        }
        collect(&mut engine, &mut actual, &mut rule_of);
    }
    advance(&mut engine, &states, until);
    collect(&mut engine, &mut actual, &mut rule_of);

    let wanted = |rule: &str| case.rules.is_empty() || case.rules.iter().any(|r| r == rule);
    let got: Vec<String> = actual
        .iter()
        .filter(|(_, rule, _, _)| wanted(rule))
        .map(|(at, rule, kind, sev)| line(*at, rule, kind, sev.as_deref()))
        .collect();
    let mut expected = Vec::new();
    for e in &case.expect {
        let at = offset(&e.at, "expect.at")?;
        expected.push((at, e));
    }
    // An expectation without severity matches any severity.
    let matches = got.len() == expected.len()
        && actual.iter().filter(|(_, r, _, _)| wanted(r)).zip(&expected).all(|((at, rule, kind, sev), (eat, e))| {
            at == eat
                && *rule == e.rule
                && *kind == e.kind
                && e.severity.as_ref().is_none_or(|s| Some(s) == sev.as_ref())
        });
    if matches {
        return Ok(());
    }
    let want: Vec<String> = expected.iter().map(|(at, e)| line(*at, &e.rule, &e.kind, e.severity.as_deref())).collect();
    Err(format!("expected:\n{}\ngot:\n{}", list(&want), list(&got)))
}

fn line(at: i64, rule: &str, kind: &str, sev: Option<&str>) -> String {
    match sev {
        Some(s) => format!("{:>8}  {rule}  {kind}  {s}", fmt_offset(at)),
        None => format!("{:>8}  {rule}  {kind}", fmt_offset(at)),
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "  (nothing)".into()
    } else {
        v.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped rule test passes against the packs in `rules/`.
    #[test]
    fn shipped_rule_tests_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        let packs: Vec<(String, String)> = packs::pack_files(&root)
            .unwrap()
            .into_iter()
            .map(|f| (f.display().to_string(), std::fs::read_to_string(&f).unwrap()))
            .collect();
        let mut files: Vec<_> = std::fs::read_dir(root.join("tests"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "rule tests for every pack");
        let mut failed = String::new();
        let mut passed = 0;
        for f in &files {
            let r = run_file(f, &packs).unwrap_or_else(|e| panic!("{e}"));
            passed += r.passed;
            if r.failed > 0 {
                failed.push_str(&format!("{}:\n{}", f.display(), r.text));
            }
        }
        assert!(failed.is_empty(), "{failed}");
        assert!(passed >= 20, "only {passed} rule tests");
    }

    #[test]
    fn a_wrong_expectation_fails() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            r#"[[test]]
name = "wrong on purpose"
device = { category = "electrical", points = ["x"] }
input = [{ at = "0s", point = "x", value = 5.0 }]
until = "5s"
expect = [{ at = "1s", rule = "t.x", kind = "raised" }]
"#,
        )
        .unwrap();
        let packs = vec![(
            "t.rhai".to_string(),
            r#"rule(#{ id: "t.x", category: "electrical", severity: "minor", watch: #{ points: ["x"] },
                      condition: |c| c.value > 1.0, on_delay: "2s" });"#
                .to_string(),
        )];
        let r = run_file(&f, &packs).unwrap();
        assert_eq!((r.passed, r.failed), (0, 1), "{}", r.text);
        assert!(r.text.contains("2s  t.x  raised  minor"), "{}", r.text);
    }
}
