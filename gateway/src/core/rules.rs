//! Rule packs in Rhai: loading, compiling and sandboxing them, and the context a condition sees.
//!
//! A pack is a `.rhai` file that calls `rule(#{ ... })` once per rule. Metadata is data; the condition
//! (and the optional clear condition) are closures over a context `ctx`. The engine has no module
//! loader, no `eval`, and limits on operations, call depth and sizes, so a script can neither touch
//! files or the network nor run away with the core.
//!
//! Helpers read the core's state through [`EvalEnv`], installed for the duration of one evaluation
//! (see [`with_env`]); nothing in a script can keep a reference to it.
//!
//! # Window helpers
//!
//! They read the point's [`Window`] (time buckets, see `core/window.rs`) over a span ending at the
//! triggering sample and starting at most one bucket earlier than asked (1 s buckets for windows up
//! to 10 min, 1 min beyond). Only good, finite readings count; each holds its value until the next
//! reading, for at most 15 minutes. Each takes the span, optionally after a point name of the device:
//! - `avg`: time-weighted mean (a burst of fast samples does not outweigh an hour of slow ones);
//! - `leq`: time-weighted energy mean of sound levels, 10·log10(mean of 10^(L/10));
//! - `min`, `max`: of the samples; `count`: the number of valid samples;
//! - `delta`: last value minus the value in force at the span's start; `rate`: delta per second;
//! - `coverage`: the fraction of the span covered by valid readings, 0 to 1.
//!
//! All but `count` and `coverage` are NaN (every comparison false) until the window has seen the
//! whole span.
//!
//! # Calendar helpers
//!
//! Averages as GB 3095-2012 §8 (data validity) defines them, on the site's local clock; each takes an
//! optional point name:
//! - `hour_mean()`: time-weighted mean of the last complete clock hour, NaN unless valid readings
//!   cover at least 45 minutes of it (`valid_hour()`); needs a declared `window` of 1 h or more;
//! - `day_mean()`: mean of the valid hourly means of the last complete local calendar day, NaN
//!   unless at least 20 hours are valid (`valid_day()`); needs a declared `window` of 24 h or more.
//!
//! NaN means "not judgeable": a rule that must tell it from a value asks `valid_hour` / `valid_day`.
//! `ran_through_hour()` says whether the gateway ran through the whole of that last complete clock
//! hour, so a rule can tell an hour the instrument left without data from one lost to a restart.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Timelike};
use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, Map, AST};

use super::alarm::{Behaviour, Severity};
use super::window::{Agg, Window};
use crate::core::PointState;
use crate::model::{DeviceId, Event, PointId, Quality, Registry};

/// Categories a rule may declare.
pub const CATEGORIES: [&str; 5] = ["electrical", "emission", "access", "equipment", "system"];

/// A rule pack that failed to load.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackError {
    pub pack: String,
    pub rule: Option<String>,
    pub message: String,
    /// The problem is in the site's configuration (a point in a unit the rule's limits are not in),
    /// not in the pack: `parkwatch check` refuses it whatever `rules.strict` says.
    pub config: bool,
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "{}: rule \"{r}\": {}", self.pack, self.message),
            None => write!(f, "{}: {}", self.pack, self.message),
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub points: Vec<String>,
    pub events: Vec<String>,
    pub categories: Vec<String>,
    pub grids: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub category: String,
    pub severity: Severity,
    pub pack: usize,
    pub watch: Watch,
    pub condition: FnPtr,
    pub clear: Option<FnPtr>,
    pub behaviour: Behaviour,
    pub message: String,
    pub plan: String,
    pub params: BTreeMap<String, Dynamic>,
    /// How much history (ns) the rule's window helpers may ask for.
    pub window: i64,
    /// Periodic evaluation (ns), for rules about silence (stale data); 0 = only on change.
    pub every: i64,
    /// For event rules: the result holds until another watched event says otherwise.
    pub hold: bool,
    /// The unit the rule's limits are written in, per watched point (`residual_current` → `mA`).
    pub units: BTreeMap<String, String>,
    /// Linkage actions (`[[actions]]` ids) run when an incident of the rule is raised, once per
    /// episode, and when it returns.
    pub on_raise: Vec<String>,
    pub on_return: Vec<String>,
}

/// Sandbox limits for rule scripts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string: usize,
    pub max_array: usize,
    pub max_map: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_operations: 50_000, max_call_levels: 16, max_string: 4096, max_array: 1024, max_map: 256 }
    }
}

/// Loaded rule packs: the engine, every pack's AST and the rules they declared.
pub struct RuleSet {
    pub engine: Engine,
    pub packs: Vec<(String, AST)>,
    pub rules: Vec<Rule>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet").field("packs", &self.packs.len()).field("rules", &self.rules.len()).finish()
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1d` into ns.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return None,
    };
    let ns = n * mult;
    (0.0..400.0 * 86_400e9).contains(&ns).then_some(ns as i64)
}

/// A sandboxed engine with the helpers registered.
pub fn engine(limits: Limits) -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(limits.max_operations);
    e.set_max_call_levels(limits.max_call_levels);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(limits.max_string);
    e.set_max_array_size(limits.max_array);
    e.set_max_map_size(limits.max_map);
    e.set_max_variables(256);
    // Every condition closure is a function: a pack of a thousand rules needs a few thousand.
    e.set_max_functions(20_000);
    e.disable_symbol("eval");
    e.on_print(|s| tracing::info!(script = s, "Rule print."));
    e.on_debug(|s, src, pos| tracing::debug!(script = s, source = src.unwrap_or(""), %pos, "Rule debug."));
    register_ctx(&mut e);
    e
}

/// Compiles packs `(name, source)` into a rule set. All or nothing: any error fails the whole set.
///
/// # Errors
/// Every problem found: syntax errors, bad metadata, duplicate rule ids.
pub fn load(packs: &[(String, String)], limits: Limits) -> Result<RuleSet, Vec<PackError>> {
    let mut engine = engine(limits);
    let declared: Arc<Mutex<Vec<Map>>> = Arc::default();
    {
        let declared = declared.clone();
        engine.register_fn("rule", move |m: Map| {
            if let Ok(mut d) = declared.lock() {
                d.push(m);
            }
        });
    }
    let mut errors = Vec::new();
    let mut asts = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    for (pack_index, (name, source)) in packs.iter().enumerate() {
        let err =
            |rule: Option<String>, message: String| PackError { pack: name.clone(), rule, message, config: false };
        let ast = match engine.compile(source) {
            Ok(ast) => ast,
            Err(e) => {
                errors.push(err(None, format!("syntax error: {e}")));
                continue;
            }
        };
        if let Ok(mut d) = declared.lock() {
            d.clear();
        }
        if let Err(e) = engine.run_ast(&ast) {
            errors.push(err(None, format!("pack failed to run: {e}")));
            continue;
        }
        let maps = declared.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        if maps.is_empty() {
            errors.push(err(None, "declares no rule (expected calls to rule(#{ id: ..., ... }))".into()));
        }
        for m in maps {
            match rule_from_map(m, pack_index) {
                Ok(r) => {
                    if rules.iter().any(|x| x.id == r.id) {
                        errors.push(err(Some(r.id.clone()), "duplicate rule id".into()));
                    } else {
                        rules.push(r);
                    }
                }
                Err((id, message)) => errors.push(err(id, message)),
            }
        }
        asts.push((name.clone(), ast));
    }
    if errors.is_empty() {
        Ok(RuleSet { engine, packs: asts, rules })
    } else {
        Err(errors)
    }
}

fn rule_from_map(mut m: Map, pack: usize) -> Result<Rule, (Option<String>, String)> {
    let id = take_str(&mut m, "id").map_err(|e| (None, e))?.ok_or((None, "missing `id`".to_string()))?;
    let fail = |msg: String| (Some(id.clone()), msg);
    let title = take_str(&mut m, "title").map_err(fail)?.unwrap_or_else(|| id.clone());
    let category = take_str(&mut m, "category").map_err(fail)?.ok_or_else(|| fail("missing `category`".into()))?;
    if !CATEGORIES.contains(&category.as_str()) {
        return Err(fail(format!("category \"{category}\"; expected one of {}", CATEGORIES.join(", "))));
    }
    let severity = take_str(&mut m, "severity").map_err(fail)?.ok_or_else(|| fail("missing `severity`".into()))?;
    let severity = Severity::parse(&severity)
        .ok_or_else(|| fail(format!("severity \"{severity}\"; expected warning, minor, major or critical")))?;
    let condition = match m.remove("condition") {
        Some(c) if c.is_fnptr() => c.cast::<FnPtr>(),
        Some(_) => return Err(fail("`condition` must be a closure like |ctx| ctx.value > 1.0".into())),
        None => return Err(fail("missing `condition`".into())),
    };
    let clear = match m.remove("clear") {
        Some(c) if c.is_fnptr() => Some(c.cast::<FnPtr>()),
        Some(c) if c.is_unit() => None,
        Some(_) => return Err(fail("`clear` must be a closure".into())),
        None => None,
    };
    let duration = |m: &mut Map, key: &str| -> Result<i64, (Option<String>, String)> {
        match take_str(m, key).map_err(fail)? {
            Some(s) => parse_duration(&s).ok_or_else(|| {
                fail(format!("`{key}` = \"{s}\"; expected a duration like \"500ms\", \"30s\", \"5m\", \"1h\""))
            }),
            None => Ok(0),
        }
    };
    let on_delay = duration(&mut m, "on_delay")?;
    let off_delay = duration(&mut m, "off_delay")?;
    let window = duration(&mut m, "window")?;
    let every = duration(&mut m, "every")?;
    let latch = take_bool(&mut m, "latch").map_err(fail)?;
    let hold = take_bool(&mut m, "hold").map_err(fail)?;
    let message = take_str(&mut m, "message").map_err(fail)?.unwrap_or_else(|| title.clone());
    let plan = take_str(&mut m, "plan").map_err(fail)?.unwrap_or_default();
    let on_raise = take_list(&mut m, "on_raise").map_err(fail)?;
    let on_return = take_list(&mut m, "on_return").map_err(fail)?;
    let mut params = BTreeMap::new();
    if let Some(p) = m.remove("params") {
        let Some(p) = p.try_cast::<Map>() else { return Err(fail("`params` must be a map".into())) };
        for (k, v) in p {
            params.insert(k.to_string(), v);
        }
    }
    let mut units = BTreeMap::new();
    if let Some(u) = m.remove("units") {
        let Some(u) = u.try_cast::<Map>() else {
            return Err(fail("`units` must be a map of point name to unit, like #{ residual_current: \"mA\" }".into()));
        };
        for (k, v) in u {
            let Some(v) = v.clone().into_immutable_string().ok() else {
                return Err(fail(format!("`units.{k}` must be a string such as \"mA\"")));
            };
            units.insert(k.to_string(), v.to_string());
        }
    }
    let mut watch = Watch::default();
    if let Some(w) = m.remove("watch") {
        let Some(mut w) = w.try_cast::<Map>() else { return Err(fail("`watch` must be a map".into())) };
        watch.points = take_list(&mut w, "points").map_err(fail)?;
        watch.events = take_list(&mut w, "events").map_err(fail)?;
        watch.categories = take_list(&mut w, "categories").map_err(fail)?;
        watch.grids = take_list(&mut w, "grids").map_err(fail)?;
        if let Some(t) = w.remove("tags") {
            let Some(t) = t.try_cast::<Map>() else { return Err(fail("`watch.tags` must be a map".into())) };
            for (k, v) in t {
                watch.tags.insert(k.to_string(), v.to_string());
            }
        }
        if let Some(k) = w.keys().next() {
            return Err(fail(format!("unknown key `watch.{k}`; expected points, events, categories, grids, tags")));
        }
    }
    if watch.points.is_empty() && watch.events.is_empty() && every == 0 {
        return Err(fail(
            "`watch` names no points and no events and the rule has no `every`: it would never run".into(),
        ));
    }
    if !watch.points.is_empty() && !watch.events.is_empty() {
        return Err(fail("`watch` names both points and events; split it into two rules".into()));
    }
    if let Some(k) = m.keys().next() {
        return Err(fail(format!(
            "unknown key `{k}`; expected id, title, category, severity, watch, condition, clear, on_delay, off_delay, \
             window, every, latch, hold, message, plan, params, units, on_raise, on_return"
        )));
    }
    if let Some(p) = units.keys().find(|p| !watch.points.contains(p)) {
        return Err(fail(format!("`units.{p}` names a point the rule does not watch")));
    }
    Ok(Rule {
        id,
        title,
        category,
        severity,
        pack,
        watch,
        condition,
        clear,
        behaviour: Behaviour { on_delay, off_delay, latch, ..Behaviour::default() },
        message,
        plan,
        params,
        window,
        every,
        hold,
        units,
        on_raise,
        on_return,
    })
}

/// Fills `{device}`, `{grid}` and `{<tag>}` (the device's tags, such as `{building}`) in an action id
/// a rule names; `None` when a placeholder has no value (the device has no such tag).
pub fn fill_template(id: &str, device: &str, grid: &str, tags: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = id;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        let key = &rest[open + 1..close];
        let v = match key {
            "device" => device,
            "grid" => grid,
            k => tags.get(k).map(String::as_str).filter(|v| !v.is_empty())?,
        };
        out.push_str(v);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether two spellings name the same unit: `µg/m³` = `ug/m3` = `μg/m³`, `°C` = `℃`, `dB(A)` = `dBA`,
/// `mg/L` = `mg/l`. Otherwise exact: `mA` is not `A`, `mg/m³` is not `µg/m³`.
pub fn same_unit(a: &str, b: &str) -> bool {
    canonical_unit(a) == canonical_unit(b)
}

fn canonical_unit(u: &str) -> String {
    let s: String = u.trim().chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.replace('μ', "µ").replace('³', "3").replace('℃', "°C");
    let s = if let Some(rest) = s.strip_prefix('u').filter(|r| r.starts_with("g/")) { format!("µ{rest}") } else { s };
    match s.as_str() {
        "mg/l" => "mg/L".to_owned(),
        "dBA" | "dba" | "db(A)" => "dB(A)".to_owned(),
        "degC" | "degreeC" => "°C".to_owned(),
        _ => s,
    }
}

fn take_str(m: &mut Map, key: &str) -> Result<Option<String>, String> {
    match m.remove(key) {
        None => Ok(None),
        Some(v) if v.is_string() => Ok(Some(v.into_string().unwrap_or_default())),
        Some(v) => Err(format!("`{key}` must be a string, found {}", v.type_name())),
    }
}

fn take_bool(m: &mut Map, key: &str) -> Result<bool, String> {
    match m.remove(key) {
        None => Ok(false),
        Some(v) => v.as_bool().map_err(|t| format!("`{key}` must be true or false, found {t}")),
    }
}

fn take_list(m: &mut Map, key: &str) -> Result<Vec<String>, String> {
    match m.remove(key) {
        None => Ok(Vec::new()),
        Some(v) if v.is_string() => Ok(vec![v.to_string()]),
        Some(v) => match v.try_cast::<rhai::Array>() {
            Some(a) => Ok(a.into_iter().map(|x| x.to_string()).collect()),
            None => Err(format!("`{key}` must be a list of strings")),
        },
    }
}

/// The park calendar: time zone and night hours (GB 12348: night 22:00–06:00 unless set otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub tz: chrono_tz::Tz,
    pub night_start_min: u32,
    pub night_end_min: u32,
}

impl Calendar {
    /// Minutes since local midnight at `ts` (UTC ns).
    pub fn local_minutes(&self, ts: i64) -> u32 {
        let t = self.tz.timestamp_nanos(ts);
        t.hour() * 60 + t.minute()
    }

    /// The start (UTC ns) of the local clock hour containing `ts`.
    pub fn hour_start(&self, ts: i64) -> i64 {
        let t = self.tz.timestamp_nanos(ts);
        ts - (i64::from(t.minute()) * 60 + i64::from(t.second())) * NS - i64::from(t.nanosecond())
    }

    /// The start (UTC ns) of the local calendar day containing `ts`.
    pub fn day_start(&self, ts: i64) -> i64 {
        let t = self.tz.timestamp_nanos(ts);
        let midnight = t.date_naive().and_time(chrono::NaiveTime::MIN);
        self.tz
            .from_local_datetime(&midnight)
            .earliest()
            .and_then(|d| d.timestamp_nanos_opt())
            // Midnight skipped by a daylight-saving change: the day starts when the clock says 00:xx.
            .unwrap_or_else(|| ts - i64::from(t.num_seconds_from_midnight()) * NS - i64::from(t.nanosecond()))
    }

    /// Whether `ts` falls in the night period.
    pub fn is_night(&self, ts: i64) -> bool {
        let m = self.local_minutes(ts);
        if self.night_start_min > self.night_end_min {
            m >= self.night_start_min || m < self.night_end_min
        } else {
            m >= self.night_start_min && m < self.night_end_min
        }
    }
}

/// What helpers may read during one evaluation.
pub struct EvalEnv<'a> {
    pub registry: &'a Registry,
    pub states: &'a [PointState],
    pub prev: &'a [f64],
    pub changed_at: &'a [i64],
    /// When each point's latest sample arrived (monotonic ns; `i64::MIN`: never).
    pub received_at: &'a [i64],
    /// When each device was last heard from (monotonic ns; `i64::MIN`: never).
    pub device_heard: &'a [i64],
    /// When the engine first ran (monotonic ns).
    pub started: i64,
    pub windows: &'a [Window],
    pub device_events: &'a [(String, i64)],
    pub params: &'a BTreeMap<String, Dynamic>,
    pub calendar: Calendar,
    /// The rule's declared window (ns): helpers may not ask for more.
    pub window: i64,
    /// Wall-clock now (UTC ns).
    pub now: i64,
    /// Monotonic now (ns), for how long the gateway has heard nothing.
    pub mono: i64,
}

thread_local! {
    static ENV: Cell<*const EvalEnv<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `env` visible to the script helpers on this thread.
pub fn with_env<R>(env: &EvalEnv<'_>, f: impl FnOnce() -> R) -> R {
    struct Reset(*const EvalEnv<'static>);
    impl Drop for Reset {
        fn drop(&mut self) {
            ENV.with(|c| c.set(self.0));
        }
    }
    // The pointer only lives while `env` is borrowed here: it is reset on every exit path.
    let ptr = (env as *const EvalEnv<'_>).cast::<EvalEnv<'static>>();
    let _reset = Reset(ENV.with(|c| c.replace(ptr)));
    f()
}

fn env<R>(f: impl FnOnce(&EvalEnv<'_>) -> Result<R, Box<EvalAltResult>>) -> Result<R, Box<EvalAltResult>> {
    let ptr = ENV.with(Cell::get);
    if ptr.is_null() {
        return Err("rule helpers are only available while a rule is evaluated".into());
    }
    // SAFETY: `with_env` installs the pointer for exactly the duration of a borrow of a live
    // `EvalEnv` on this thread and resets it before that borrow ends.
    f(unsafe { &*ptr })
}

/// The context a condition sees: which device and point triggered it, and when.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub device: DeviceId,
    pub point: Option<PointId>,
    /// Time of the triggering sample or event (UTC ns).
    pub ts: i64,
    pub event: Option<Arc<Event>>,
}

fn point_by_name(env: &EvalEnv<'_>, device: DeviceId, name: &str) -> Result<PointId, Box<EvalAltResult>> {
    env.registry
        .point_of(device, name)
        .ok_or_else(|| format!("device \"{}\" has no point \"{name}\"", env.registry.device(device).id).into())
}

fn span(env: &EvalEnv<'_>, s: &str) -> Result<i64, Box<EvalAltResult>> {
    let ns = parse_duration(s).ok_or_else(|| format!("\"{s}\" is not a duration like \"5m\""))?;
    if ns > env.window {
        return Err(format!("window \"{s}\" is longer than the rule's declared `window`").into());
    }
    Ok(ns)
}

fn aggregate(ctx: &Ctx, point: Option<&str>, agg: Agg, s: &str) -> Result<f64, Box<EvalAltResult>> {
    env(|env| {
        let p = match point {
            Some(name) => point_by_name(env, ctx.device, name)?,
            None => ctx.point.ok_or("this rule runs on events: name the point, e.g. avg(\"pm25\", \"24h\")")?,
        };
        let span = span(env, s)?;
        Ok(env.windows.get(p.0 as usize).map_or(f64::NAN, |w| w.aggregate(agg, span, ctx.ts)))
    })
}

/// Nanoseconds per second.
const NS: i64 = 1_000_000_000;
/// Nanoseconds per hour.
const HOUR_NS: i64 = 3_600 * NS;
/// Seconds of valid readings that make a clock hour's mean valid (GB 3095-2012 §8).
const HOUR_VALID_SECS: f64 = 45.0 * 60.0;
/// Valid hourly means that make a calendar day's mean valid (GB 3095-2012 §8).
const DAY_VALID_HOURS: usize = 20;

/// The mean of the clock hour starting at `h`, NaN unless it is valid.
fn hour_mean_at(w: &Window, h: i64) -> f64 {
    let st = w.interval(h, h + HOUR_NS);
    if st.held >= HOUR_VALID_SECS {
        st.mean()
    } else {
        f64::NAN
    }
}

/// The mean of the valid hourly means of the local day before the one containing `ts`, NaN unless
/// enough hours are valid; and how many are.
fn day_mean_at(w: &Window, cal: &Calendar, ts: i64) -> (f64, usize) {
    let today = cal.day_start(ts);
    let (mut sum, mut n) = (0.0, 0usize);
    let mut h = cal.day_start(today - 1);
    while h < today {
        let m = hour_mean_at(w, h);
        if !m.is_nan() {
            sum += m;
            n += 1;
        }
        h += HOUR_NS;
    }
    (if n >= DAY_VALID_HOURS { sum / n as f64 } else { f64::NAN }, n)
}

/// Runs a calendar helper on the window of `point` (or the triggering point); `need` is the
/// declared window it requires.
fn calendar_helper(
    ctx: &Ctx,
    point: Option<&str>,
    name: &str,
    need: i64,
    f: impl FnOnce(&Window, &Calendar, i64) -> f64,
) -> Result<f64, Box<EvalAltResult>> {
    env(|env| {
        let p = match point {
            Some(n) => point_by_name(env, ctx.device, n)?,
            None => {
                ctx.point.ok_or_else(|| format!("this rule runs on events: name the point, e.g. {name}(\"pm25\")"))?
            }
        };
        if env.window < need {
            return Err(format!("{name} needs the rule to declare a `window` of at least {}h", need / HOUR_NS).into());
        }
        Ok(env.windows.get(p.0 as usize).map_or(f64::NAN, |w| f(w, &env.calendar, ctx.ts)))
    })
}

fn hour_mean(c: &Ctx, p: Option<&str>) -> Result<f64, Box<EvalAltResult>> {
    calendar_helper(c, p, "hour_mean", HOUR_NS, |w, cal, ts| hour_mean_at(w, cal.hour_start(ts) - HOUR_NS))
}

fn day_mean(c: &Ctx, p: Option<&str>) -> Result<f64, Box<EvalAltResult>> {
    calendar_helper(c, p, "day_mean", 24 * HOUR_NS, |w, cal, ts| day_mean_at(w, cal, ts).0)
}

/// Whether the engine has run since before the last complete local clock hour before `ts` began
/// (carried across reloads; a restart starts it again). The start is placed on the wall clock by
/// taking the monotonic time since it from the wall-clock now.
fn ran_through_hour(env: &EvalEnv<'_>, ts: i64) -> bool {
    if env.started == i64::MIN {
        return false;
    }
    let started_wall = env.now.saturating_sub(env.mono.saturating_sub(env.started));
    started_wall <= env.calendar.hour_start(ts).saturating_sub(HOUR_NS)
}

fn coverage(ctx: &Ctx, point: Option<&str>, s: &str) -> Result<f64, Box<EvalAltResult>> {
    env(|env| {
        let p = match point {
            Some(name) => point_by_name(env, ctx.device, name)?,
            None => ctx.point.ok_or("this rule runs on events: name the point, e.g. coverage(\"pm25\", \"24h\")")?,
        };
        let span = span(env, s)?;
        Ok(env.windows.get(p.0 as usize).map_or(0.0, |w| w.coverage(span, ctx.ts)))
    })
}

fn register_ctx(e: &mut Engine) {
    e.register_type_with_name::<Ctx>("Ctx");
    e.register_get("value", |c: &mut Ctx| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let p = c.point.ok_or("`value` needs a point; this rule runs on events")?;
            // A value a device flagged as not valid (maintenance, calibration…) is judged on no limit.
            Ok(env.states.get(p.0 as usize).map_or(f64::NAN, |s| {
                if s.has_value && s.quality.judgeable() {
                    s.value
                } else {
                    f64::NAN
                }
            }))
        })
    });
    e.register_get("prev", |c: &mut Ctx| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let p = c.point.ok_or("`prev` needs a point; this rule runs on events")?;
            Ok(env.prev.get(p.0 as usize).copied().unwrap_or(f64::NAN))
        })
    });
    e.register_get("ts", |c: &mut Ctx| c.ts);
    e.register_get("quality", |c: &mut Ctx| -> Result<String, Box<EvalAltResult>> {
        env(|env| {
            let q = c.point.and_then(|p| env.states.get(p.0 as usize)).map_or(Quality::Bad, |s| s.quality);
            Ok(q.as_str().to_string())
        })
    });
    e.register_get("point", |c: &mut Ctx| -> Result<String, Box<EvalAltResult>> {
        env(|env| Ok(c.point.map(|p| env.registry.point(p).name.clone()).unwrap_or_default()))
    });
    e.register_get("device", |c: &mut Ctx| -> Result<String, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.device(c.device).id.clone()))
    });
    e.register_get("grid", |c: &mut Ctx| -> Result<String, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.grids[env.registry.device(c.device).grid.0 as usize].id.clone()))
    });
    e.register_get("category", |c: &mut Ctx| -> Result<String, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.device(c.device).category.clone()))
    });
    e.register_fn("tag", |c: &mut Ctx, k: &str| -> Result<String, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.device(c.device).tags.get(k).cloned().unwrap_or_default()))
    });
    e.register_get("kind", |c: &mut Ctx| c.event.as_ref().map(|e| e.kind.clone()).unwrap_or_default());
    e.register_fn("attr", |c: &mut Ctx, k: &str| -> Dynamic {
        c.event
            .as_ref()
            .and_then(|e| e.attributes.get(k))
            .map(|v| match v {
                serde_json::Value::String(s) => Dynamic::from(s.clone()),
                serde_json::Value::Bool(b) => Dynamic::from(*b),
                serde_json::Value::Number(n) => Dynamic::from(n.as_f64().unwrap_or(f64::NAN)),
                other => Dynamic::from(other.to_string()),
            })
            .unwrap_or(Dynamic::UNIT)
    });
    e.register_fn("get", |c: &mut Ctx, name: &str| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let p = point_by_name(env, c.device, name)?;
            let s = env.states[p.0 as usize];
            Ok(if s.has_value { s.value } else { f64::NAN })
        })
    });
    e.register_fn("has", |c: &mut Ctx, name: &str| -> Result<bool, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.point_of(c.device, name).is_some_and(|p| env.states[p.0 as usize].has_value)))
    });
    e.register_fn("age", |c: &mut Ctx, name: &str| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let p = point_by_name(env, c.device, name)?;
            let s = env.states[p.0 as usize];
            Ok(if s.has_value { (env.now - s.ts) as f64 / 1e9 } else { f64::INFINITY })
        })
    });
    // Seconds since the gateway last received the point, on the monotonic clock: staleness that a
    // step of the wall clock neither fakes nor hides (`age` is the sample's own age, by wall time).
    e.register_fn("silent_for", |c: &mut Ctx, name: &str| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let p = point_by_name(env, c.device, name)?;
            // Never received: silent since the engine started, so a restart does not hide a dead channel.
            let at = env.received_at.get(p.0 as usize).copied().unwrap_or(i64::MIN).max(env.started);
            Ok(if at == i64::MIN { f64::INFINITY } else { env.mono.saturating_sub(at).max(0) as f64 / 1e9 })
        })
    });
    // Seconds since the gateway last heard from the device at all (a usable sample or an event), or
    // since it started when the device was never heard from: silence that survives a restart.
    e.register_fn("device_silent_for", |c: &mut Ctx| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let heard = env.device_heard.get(c.device.0 as usize).copied().unwrap_or(i64::MIN);
            let since = heard.max(env.started);
            Ok(if since == i64::MIN { 0.0 } else { env.mono.saturating_sub(since).max(0) as f64 / 1e9 })
        })
    });
    // The device's Modbus poll interval in seconds; 0 for a device that sends on its own.
    e.register_fn("poll_secs", |c: &mut Ctx| -> Result<f64, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.device(c.device).poll_ms as f64 / 1e3))
    });
    // Whether the device has this point configured, heard from or not (`has`: has a value).
    e.register_fn("configured", |c: &mut Ctx, name: &str| -> Result<bool, Box<EvalAltResult>> {
        env(|env| Ok(env.registry.point_of(c.device, name).is_some()))
    });
    e.register_fn("unchanged_for", |c: &mut Ctx, name: &str| -> Result<f64, Box<EvalAltResult>> {
        env(|env| {
            let p = point_by_name(env, c.device, name)?;
            let s = env.states[p.0 as usize];
            let since = env.changed_at.get(p.0 as usize).copied().unwrap_or(0);
            Ok(if s.has_value && since > 0 { (s.ts - since) as f64 / 1e9 } else { 0.0 })
        })
    });
    e.register_fn("skew", |c: &mut Ctx| -> Result<f64, Box<EvalAltResult>> {
        env(|env| Ok((env.now - c.ts) as f64 / 1e9))
    });
    e.register_fn("param", |_c: &mut Ctx, name: &str| -> Result<Dynamic, Box<EvalAltResult>> {
        env(|env| env.params.get(name).cloned().ok_or_else(|| format!("unknown parameter \"{name}\"").into()))
    });
    e.register_fn("is_night", |c: &mut Ctx| -> Result<bool, Box<EvalAltResult>> {
        env(|env| Ok(env.calendar.is_night(c.ts)))
    });
    e.register_fn("local_hour", |c: &mut Ctx| -> Result<i64, Box<EvalAltResult>> {
        env(|env| Ok(i64::from(env.calendar.local_minutes(c.ts) / 60)))
    });
    e.register_fn("events", |c: &mut Ctx, kind: &str, s: &str| -> Result<i64, Box<EvalAltResult>> {
        env(|env| {
            let span = span(env, s)?;
            let start = c.ts.saturating_sub(span);
            Ok(env.device_events.iter().filter(|(k, t)| k == kind && *t > start && *t <= c.ts).count() as i64)
        })
    });
    for name in ["avg", "min", "max", "count", "delta", "rate", "leq"] {
        let agg = Agg::parse(name).unwrap_or(Agg::Avg);
        e.register_fn(name, move |c: &mut Ctx, s: &str| aggregate(c, None, agg, s));
        e.register_fn(name, move |c: &mut Ctx, p: &str, s: &str| aggregate(c, Some(p), agg, s));
    }
    e.register_fn("coverage", |c: &mut Ctx, s: &str| coverage(c, None, s));
    e.register_fn("coverage", |c: &mut Ctx, p: &str, s: &str| coverage(c, Some(p), s));
    e.register_fn("hour_mean", |c: &mut Ctx| hour_mean(c, None));
    e.register_fn("hour_mean", |c: &mut Ctx, p: &str| hour_mean(c, Some(p)));
    e.register_fn("valid_hour", |c: &mut Ctx| hour_mean(c, None).map(|m| !m.is_nan()));
    e.register_fn("valid_hour", |c: &mut Ctx, p: &str| hour_mean(c, Some(p)).map(|m| !m.is_nan()));
    e.register_fn("ran_through_hour", |c: &mut Ctx| env(|env| Ok(ran_through_hour(env, c.ts))));
    e.register_fn("day_mean", |c: &mut Ctx| day_mean(c, None));
    e.register_fn("day_mean", |c: &mut Ctx, p: &str| day_mean(c, Some(p)));
    e.register_fn("valid_day", |c: &mut Ctx| day_mean(c, None).map(|m| !m.is_nan()));
    e.register_fn("valid_day", |c: &mut Ctx, p: &str| day_mean(c, Some(p)).map(|m| !m.is_nan()));
    // Limit comparisons that do not depend on float rounding (see `on_limit`).
    e.register_fn("above", |v: f64, limit: f64| above(v, limit));
    e.register_fn("below", |v: f64, limit: f64| below(v, limit));
    e.register_fn("at_least", |v: f64, limit: f64| !below(v, limit));
    e.register_fn("at_most", |v: f64, limit: f64| !above(v, limit));
    e.register_fn("above", |v: i64, limit: f64| above(v as f64, limit));
    e.register_fn("below", |v: i64, limit: f64| below(v as f64, limit));
    e.register_fn("at_least", |v: i64, limit: f64| !below(v as f64, limit));
    e.register_fn("at_most", |v: i64, limit: f64| !above(v as f64, limit));
    // Energy average of levels given directly, for scripts that combine points.
    e.register_fn("leq_of", |a: rhai::Array| -> f64 {
        let v: Vec<f64> = a.into_iter().filter_map(|x| x.as_float().ok()).collect();
        crate::model::sound::leq(&v).unwrap_or(f64::NAN)
    });
}

/// How far apart (relative, in units of `f64::EPSILON`) a value and a limit may be and still count as
/// equal: a few ULPs, more than the rounding of the arithmetic that scales a limit or a deviation
/// ((235.4 − 220) / 220 × 100 is 7.000000000000002 in f64) and far less than any instrument resolves.
const LIMIT_ULPS: f64 = 8.0;

/// Whether `v` equals `limit` up to the rounding of computing the limit.
pub fn on_limit(v: f64, limit: f64) -> bool {
    (v - limit).abs() <= LIMIT_ULPS * f64::EPSILON * v.abs().max(limit.abs())
}

/// `v` exceeds `limit`: strictly above and not on it. False for NaN.
pub fn above(v: f64, limit: f64) -> bool {
    v > limit && !on_limit(v, limit)
}

/// `v` falls short of `limit`: strictly below and not on it. False for NaN.
pub fn below(v: f64, limit: f64) -> bool {
    v < limit && !on_limit(v, limit)
}

/// Reads the result of a condition: `true` or a severity name holds, `false` or `()` does not.
///
/// # Errors
/// Any other value, or an unknown severity name.
pub fn verdict(v: Dynamic, default: Severity) -> Result<Option<Severity>, String> {
    if v.is_unit() {
        return Ok(None);
    }
    if let Ok(b) = v.as_bool() {
        return Ok(b.then_some(default));
    }
    if v.is_string() {
        let s = v.into_string().unwrap_or_default();
        if s.is_empty() || s == "normal" {
            return Ok(None);
        }
        return Severity::parse(&s)
            .map(Some)
            .ok_or_else(|| format!("condition returned \"{s}\"; expected a bool or warning/minor/major/critical"));
    }
    Err(format!("condition returned a {}; expected a bool or a severity name", v.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(src: &str) -> Result<RuleSet, Vec<PackError>> {
        load(&[("test.rhai".into(), src.into())], Limits::default())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("5m"), Some(300_000_000_000));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn loads_a_rule() {
        let set = pack(
            r#"rule(#{ id: "x", category: "electrical", severity: "critical", watch: #{ points: ["ir"] },
                       condition: |ctx| ctx.value > ctx.param("limit"), params: #{ limit: 300.0 },
                       on_delay: "10s", window: "5m" });"#,
        )
        .unwrap();
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].behaviour.on_delay, 10_000_000_000);
        assert_eq!(set.rules[0].window, 300_000_000_000);
    }

    #[test]
    fn reports_every_problem_with_the_rule() {
        let errs = pack(
            r#"rule(#{ id: "a", category: "fire", severity: "critical", watch: #{ points: ["x"] }, condition: |c| true });
               rule(#{ id: "b", category: "electrical", severity: "huge", watch: #{ points: ["x"] }, condition: |c| true });
               rule(#{ id: "c", category: "electrical", severity: "minor", watch: #{ points: ["x"] }, condition: |c| true, on_delay: "soon" });
               rule(#{ id: "d", category: "electrical", severity: "minor", watch: #{}, condition: |c| true });"#,
        )
        .unwrap_err();
        let rules: Vec<_> = errs.iter().map(|e| e.rule.clone().unwrap()).collect();
        assert_eq!(rules, ["a", "b", "c", "d"], "{errs:?}");
        assert!(errs[2].message.contains("on_delay"));
    }

    #[test]
    fn syntax_error_names_the_pack() {
        let errs = pack("rule(#{ id: ").unwrap_err();
        assert_eq!(errs[0].pack, "test.rhai");
        assert!(errs[0].message.starts_with("syntax error"), "{}", errs[0].message);
    }

    #[test]
    fn no_eval_no_modules() {
        assert!(pack(r#"eval("1"); rule(#{})"#).is_err());
        assert!(pack(r#"import "x" as y;"#).is_err());
    }

    #[test]
    fn runaway_pack_is_stopped() {
        let errs = pack("loop { }").unwrap_err();
        assert!(errs[0].message.contains("pack failed to run"), "{}", errs[0].message);
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Dynamic::from(true), Severity::Major), Ok(Some(Severity::Major)));
        assert_eq!(verdict(Dynamic::from(false), Severity::Major), Ok(None));
        assert_eq!(verdict(Dynamic::UNIT, Severity::Major), Ok(None));
        assert_eq!(verdict(Dynamic::from("warning".to_string()), Severity::Major), Ok(Some(Severity::Warning)));
        assert!(verdict(Dynamic::from(3_i64), Severity::Major).is_err());
    }

    #[test]
    fn units_are_compared_by_meaning_not_spelling() {
        for (a, b) in
            [("µg/m³", "ug/m3"), ("µg/m³", "μg/m³"), ("°C", "℃"), ("dB(A)", "dBA"), ("mg/L", "mg/l"), ("mA", " mA ")]
        {
            assert!(same_unit(a, b), "{a} = {b}");
        }
        for (a, b) in [("mA", "A"), ("mg/m³", "µg/m³"), ("V", "kV"), ("mA", "MA")] {
            assert!(!same_unit(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn a_point_in_another_unit_is_a_load_error_naming_the_device() {
        let config = crate::config::from_str(
            "[site]\nid = \"t\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"fd-7\"\ngrid = \"g1\"\n\
             category = \"electrical\"\npoints = [{ name = \"residual_current\", unit = \"A\" }]\n\
             [[devices]]\nid = \"fd-8\"\ngrid = \"g1\"\ncategory = \"electrical\"\n\
             points = [{ name = \"residual_current\", unit = \"mA\" }]\n",
            std::path::Path::new("(test)"),
            std::path::Path::new("."),
        )
        .unwrap();
        let registry = std::sync::Arc::new(crate::model::Registry::from_config(&config));
        let errors =
            crate::core::packs::build(&config, registry.clone(), 1).expect_err("a unit mismatch fails the load");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("electrical.residual_current") && e.contains("\"fd-7\"") && e.contains("\"mA\"")),
            "{text:?}"
        );
        assert!(!text.iter().any(|e| e.contains("fd-8")), "{text:?}");
        // At start the other devices keep the rule; the mismatched one does not get it.
        let (engine, _, errors) = crate::core::packs::build_lenient(&config, registry, 1).unwrap();
        assert!(!errors.is_empty());
        let cov = crate::core::coverage::coverage(engine.rules(), &crate::model::Registry::from_config(&config));
        assert_eq!(cov[1].points[0].alarms, ["electrical.residual_current"]);
        assert!(cov[0].points[0].alarms.is_empty(), "{:?}", cov[0]);
        assert!(cov[0].points[0].not_applied[0].contains("rule limits in \"mA\""), "{:?}", cov[0]);
        assert_eq!(engine.unit_mismatches().iter().filter(|m| m.device == "fd-7").count(), 2);
    }

    #[test]
    fn limits_are_decided_exactly() {
        let dev = (235.4 - 220.0) / 220.0 * 100.0;
        assert!(dev > 7.0, "the rounding this guards against");
        assert!(!above(dev, 7.0) && !below(dev, 7.0));
        let upper = 220.0 * (100.0 + 7.0) / 100.0;
        assert!(!above(235.4, upper) && !below(235.4, upper));
        assert!(above(235.400_000_001, upper) && below(235.399_999_999, upper));
        assert!(below(197.999_999_9, 220.0 * 0.9) && !below(198.0, 220.0 * 0.9));
        assert!(!above(f64::NAN, 1.0) && !below(f64::NAN, 1.0));
        assert!(on_limit(0.0, 0.0) && above(1e-9, 0.0) && below(-1e-9, 0.0));
    }

    #[test]
    fn calendar_night_in_shanghai() {
        let cal = Calendar { tz: chrono_tz::Asia::Shanghai, night_start_min: 22 * 60, night_end_min: 6 * 60 };
        // 2026-06-01 13:59:59 UTC = 21:59:59 local: day; one second later: night.
        let t = chrono::Utc.with_ymd_and_hms(2026, 6, 1, 13, 59, 59).unwrap().timestamp_nanos_opt().unwrap();
        assert!(!cal.is_night(t));
        assert!(cal.is_night(t + 1_000_000_000));
    }

    fn shanghai() -> Calendar {
        Calendar { tz: chrono_tz::Asia::Shanghai, night_start_min: 22 * 60, night_end_min: 6 * 60 }
    }

    /// 2026-06-01T00:00:00+08:00.
    fn local_midnight() -> i64 {
        chrono::Utc.with_ymd_and_hms(2026, 5, 31, 16, 0, 0).unwrap().timestamp_nanos_opt().unwrap()
    }

    #[test]
    fn calendar_hours_and_days_are_local() {
        let (cal, m) = (shanghai(), local_midnight());
        assert_eq!(cal.day_start(m), m);
        assert_eq!(cal.day_start(m - 1), m - 24 * HOUR_NS);
        assert_eq!(cal.day_start(m + 23 * HOUR_NS + 59 * 60 * NS), m);
        assert_eq!(cal.hour_start(m + 5 * HOUR_NS + 17 * 60 * NS + 3), m + 5 * HOUR_NS);
        // Kolkata is UTC+05:30: its clock hours start on the half hour of UTC.
        let kolkata = Calendar { tz: chrono_tz::Asia::Kolkata, ..cal };
        let utc_hour = chrono::Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap().timestamp_nanos_opt().unwrap();
        assert_eq!(kolkata.hour_start(utc_hour), utc_hour - 30 * 60 * NS);
    }

    /// A window of a day's history fed every minute over `minutes` of each hour listed, at `v`.
    fn fed(hours: impl Iterator<Item = i64>, minutes: i64, v: f64) -> Window {
        let mut w = Window::new(24 * HOUR_NS, 20_000);
        let m = local_midnight();
        for h in hours {
            for min in 0..minutes {
                w.push(m + h * HOUR_NS + min * 60 * NS, v, true);
            }
            // The reading that ends the last one's hold.
            w.push(m + h * HOUR_NS + minutes * 60 * NS, f64::NAN, false);
        }
        w
    }

    #[test]
    fn an_hour_is_valid_with_45_minutes_of_readings() {
        let m = local_midnight();
        assert_eq!(hour_mean_at(&fed(0..1, 45, 30.0), m), 30.0);
        assert!(hour_mean_at(&fed(0..1, 44, 30.0), m).is_nan());
    }

    #[test]
    fn a_day_is_valid_with_20_valid_hours() {
        let (cal, m) = (shanghai(), local_midnight());
        let next_day = m + 24 * HOUR_NS + NS;
        assert_eq!(day_mean_at(&fed(0..20, 60, 40.0), &cal, next_day), (40.0, 20));
        let (mean, hours) = day_mean_at(&fed(0..19, 60, 40.0), &cal, next_day);
        assert!(mean.is_nan());
        assert_eq!(hours, 19);
        // Hours with too few readings do not count, and do not drag the mean.
        let mut w = fed(0..20, 60, 40.0);
        for min in 0..30 {
            w.push(m + 20 * HOUR_NS + min * 60 * NS, 1000.0, true);
        }
        assert_eq!(day_mean_at(&w, &cal, next_day), (40.0, 20));
    }
}
