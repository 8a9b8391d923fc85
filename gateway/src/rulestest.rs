//! `parkwatch rules test`: rule unit tests in TOML, run offline on a virtual clock. Input series
//! (point, time, value), events and acknowledgements go in; the alarm transitions that come out are
//! compared with the expected ones, like `promtool test rules`. The virtual clock drives both the wall
//! and the monotonic reading the engine takes. [`boundary_gaps`] finds limits that no test case sits
//! on exactly.
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
//!
//! An expectation may also name the linkage actions the transition would ask for (`actions =
//! ["unlock_exits_B3"]`: the rule's `on_raise` for a raise or escalation, `on_return` for a return,
//! filled in with the test device's id, grid and tags); nothing is sent.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::core::engine::{Action, Change, Engine, Override, Scope};
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
    /// Modbus poll interval (ms) of the device; 0: it sends on its own.
    #[serde(default)]
    poll_ms: u64,
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
    /// The linkage actions this transition asks for (offline: nothing is sent).
    actions: Option<Vec<String>>,
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

/// A limit parameter of one rule moved by a hair (relative 1e-9, at least 1e-9), to find out whether a
/// test case sits on that limit: a case on the boundary changes its outcome when the limit moves one
/// way or the other; a case merely near it does not.
#[derive(Debug, Clone, PartialEq)]
pub struct Nudge {
    pub rule: String,
    pub param: String,
    /// The element, for a table of limits (one per class).
    pub index: Option<usize>,
    pub up: bool,
}

/// The numeric limits of `rule`: every number (or table of numbers) among its parameters, except class
/// selectors (`*_class`).
pub fn limit_params(rule: &rules::Rule) -> Vec<(String, Option<usize>)> {
    let mut out = Vec::new();
    for (name, v) in &rule.params {
        if name.ends_with("_class") {
            continue;
        }
        if v.is_float() || v.is_int() {
            out.push((name.clone(), None));
        } else if let Some(a) = v.clone().try_cast::<rhai::Array>() {
            for (i, x) in a.iter().enumerate() {
                if x.is_float() || x.is_int() {
                    out.push((name.clone(), Some(i)));
                }
            }
        }
    }
    out
}

fn number(v: &rhai::Dynamic) -> Option<f64> {
    v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// The parameter `nudge` names, as the case sets it (or the rule's default), moved by a hair.
fn nudged(nudge: &Nudge, case: &Case, rule: &rules::Rule) -> Result<rhai::Dynamic, String> {
    let base = match case.params.get(&nudge.param) {
        Some(toml::Value::Float(f)) => rhai::Dynamic::from(*f),
        Some(toml::Value::Integer(i)) => rhai::Dynamic::from(*i as f64),
        Some(other) => return Err(format!("parameter {:?} = {other}; expected a number", nudge.param)),
        None => rule.params.get(&nudge.param).cloned().ok_or_else(|| format!("no parameter {:?}", nudge.param))?,
    };
    let shift = |x: f64| x + if nudge.up { 1.0 } else { -1.0 } * x.abs().max(1.0) * 1e-9;
    match nudge.index {
        None => number(&base).map(|x| rhai::Dynamic::from(shift(x))).ok_or_else(|| "not a number".into()),
        Some(i) => {
            let mut a = base.try_cast::<rhai::Array>().ok_or("not a table")?;
            let x = a.get(i).and_then(number).ok_or("no such element")?;
            a[i] = rhai::Dynamic::from(shift(x));
            Ok(rhai::Dynamic::from_array(a))
        }
    }
}

fn run_case(case: &Case, packs: &[(String, String)]) -> Result<(), String> {
    let (_, actual) = transitions(case, packs, None)?;
    check(case, &actual)?;
    check_actions(case, packs)
}

/// The linkage actions each expectation names against what its rule would ask for, filled in for the
/// test device.
fn check_actions(case: &Case, packs: &[(String, String)]) -> Result<(), String> {
    if case.expect.iter().all(|e| e.actions.is_none()) {
        return Ok(());
    }
    let set = rules::load(packs, Limits::default())
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    let d = &case.device;
    for e in &case.expect {
        let Some(want) = &e.actions else { continue };
        let rule = set.rules.iter().find(|r| r.id == e.rule).ok_or_else(|| format!("no rule {:?}", e.rule))?;
        let names = match e.kind.as_str() {
            "raised" | "escalated" => &rule.on_raise,
            "returned" => &rule.on_return,
            _ => &Vec::new(),
        };
        let got: Vec<String> = names.iter().filter_map(|n| rules::fill_template(n, &d.id, &d.grid, &d.tags)).collect();
        if &got != want {
            return Err(format!(
                "at {} {} {}: expected actions {want:?}, the rule asks for {got:?}",
                e.at, e.rule, e.kind
            ));
        }
    }
    Ok(())
}

/// Which shipped limits no test case sits on: for every rule and every limit parameter, some case of
/// `files` that names the rule must change its transitions when the limit is nudged up or down. Returns
/// `rule.param` (or `rule.param[i]`) for every limit without such a case.
///
/// # Errors
/// A file or the packs cannot be read, or a case cannot run.
pub fn boundary_gaps(files: &[std::path::PathBuf], packs: &[(String, String)]) -> Result<Vec<String>, String> {
    let set = rules::load(packs, Limits::default())
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    let mut cases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let parsed: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        cases.extend(parsed.test);
    }
    let mut gaps = Vec::new();
    for rule in &set.rules {
        let mine: Vec<&Case> = cases.iter().filter(|c| c.rules.contains(&rule.id)).collect();
        let mut base = Vec::new();
        for c in &mine {
            base.push(transitions(c, packs, None)?.1);
        }
        for (param, index) in limit_params(rule) {
            let mut covered = false;
            'cases: for (c, base) in mine.iter().zip(&base) {
                for up in [true, false] {
                    let nudge = Nudge { rule: rule.id.clone(), param: param.clone(), index, up };
                    let (_, moved) = transitions(c, packs, Some(&nudge))?;
                    let only = |t: &Vec<Transition>| t.iter().filter(|x| x.1 == rule.id).cloned().collect::<Vec<_>>();
                    if only(&moved) != only(base) {
                        covered = true;
                        break 'cases;
                    }
                }
            }
            if !covered {
                gaps.push(match index {
                    Some(i) => format!("{}.{param}[{i}]", rule.id),
                    None => format!("{}.{param}", rule.id),
                });
            }
        }
    }
    Ok(gaps)
}

/// One transition: offset from the start, rule, kind, severity.
type Transition = (i64, String, String, Option<String>);

/// Runs `case` (with one limit nudged) and returns its start and every transition.
fn transitions(
    case: &Case,
    packs: &[(String, String)],
    nudge: Option<&Nudge>,
) -> Result<(i64, Vec<Transition>), String> {
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
    let mut registry = Registry::from_config(&config);
    // The poll interval without a Modbus connection and profile for the test device.
    for dev in &mut registry.devices {
        dev.poll_ms = d.poll_ms;
    }
    let registry = Arc::new(registry);
    let set = rules::load(packs, Limits::default())
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    for r in &case.rules {
        if !set.rules.iter().any(|x| &x.id == r) {
            return Err(format!("rule {r:?} is not in the packs"));
        }
    }
    let mut settings = packs::settings(&config, &registry);
    if let Some(n) = nudge {
        let rule = set
            .rules
            .iter()
            .find(|r| r.id == n.rule)
            .ok_or_else(|| format!("rule {:?} is not in the packs", n.rule))?;
        let value = nudged(n, case, rule)?;
        // A rule's own override at device scope wins over the case's `*` overrides.
        settings.overrides.push(Override {
            rule: n.rule.clone(),
            scope: Scope::Device(d.id.clone()),
            params: [(n.param.clone(), value)].into_iter().collect(),
        });
    }
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
    let mut actual: Vec<Transition> = Vec::new();
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
            engine.on_sample(&Sample { point, quality: Quality::Good, ts, value: v }, old, now);
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
    Ok((start, actual))
}

fn check(case: &Case, actual: &[Transition]) -> Result<(), String> {
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

    /// The packs in `rules/` and the test files in `rules/tests/`.
    fn shipped() -> (Vec<(String, String)>, Vec<std::path::PathBuf>) {
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
        (packs, files)
    }

    /// Every numeric limit of every shipped rule has a test case exactly on its boundary.
    #[test]
    fn every_shipped_limit_has_a_boundary_case() {
        let (packs, files) = shipped();
        let gaps = boundary_gaps(&files, &packs).unwrap();
        assert!(gaps.is_empty(), "limits without a rule test on their boundary (add one to rules/tests/): {gaps:?}");
    }

    /// A case near a limit but not on it does not count; one on it does, scaled limits included.
    #[test]
    fn boundary_gaps_finds_a_case_off_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let packs = vec![(
            "t.rhai".to_string(),
            r#"rule(#{ id: "t.x", category: "electrical", severity: "minor", watch: #{ points: ["x"] },
                      params: #{ nominal: 220.0, pct: 7.0, zone_class: 3.0, name: "n" },
                      condition: |c| above(c.value, c.param("nominal") * (100.0 + c.param("pct")) / 100.0) });"#
                .to_string(),
        )];
        let case = |v: f64| {
            format!(
                "[[test]]\nname = \"x\"\nrules = [\"t.x\"]\ndevice = {{ category = \"electrical\", points = [\"x\"] }}\n\
                 input = [{{ at = \"0s\", point = \"x\", value = {v:?} }}]\nexpect = []\n"
            )
        };
        let f = dir.path().join("t.toml");
        std::fs::write(&f, case(235.3)).unwrap();
        let gaps = boundary_gaps(std::slice::from_ref(&f), &packs).unwrap();
        assert_eq!(gaps, ["t.x.nominal", "t.x.pct"]);
        std::fs::write(&f, case(235.4)).unwrap();
        assert!(boundary_gaps(std::slice::from_ref(&f), &packs).unwrap().is_empty());
    }

    /// Every shipped rule test passes against the packs in `rules/`.
    #[test]
    fn shipped_rule_tests_pass() {
        let (packs, files) = shipped();
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
