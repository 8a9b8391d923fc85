//! The rule engine: which rules run for which point, evaluating them once per source device when a
//! watched point changes, driving each (rule, source) alarm, and turning alarm outcomes into incident
//! changes. Synchronous and clock-free (every call takes `now`, both its wall and its monotonic
//! reading), so the live core and the offline `parkwatch rules test` runner drive the very same code.
//! Timers (alarm delays, shelving, periodic rules) run on the monotonic reading; incident times,
//! maintenance windows and the site calendar use wall time.
//!
//! A rule that fails (runtime error, operation limit) is disabled for that source only and raises a
//! `system` incident; the other rules and sources keep running.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rhai::Dynamic;
use serde::Serialize;

use super::alarm::{Alarm, Outcome, Severity, State};
use super::rules::{self, Calendar, Ctx, EvalEnv, Rule, RuleSet};
use super::window::Window;
use super::PointState;
use crate::model::time::Now;
use crate::model::{DeviceId, Event, PointId, Quality, Registry, Sample};

/// Most recent events kept per device for `events(kind, span)`.
const DEVICE_EVENTS_KEPT: usize = 256;

/// A parameter override from the config, most specific wins: device, grid, category, site.
#[derive(Debug, Clone)]
pub struct Override {
    /// Rule id, or `*` for every rule that has the parameter.
    pub rule: String,
    pub scope: Scope,
    pub params: BTreeMap<String, Dynamic>,
}

/// Where an override or a maintenance window applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Site,
    Category(String),
    /// The devices of a `[[device_types]]` entry.
    Type(String),
    Grid(String),
    Device(String),
}

impl Scope {
    fn rank(&self) -> u8 {
        match self {
            Self::Site => 0,
            Self::Category(_) => 1,
            Self::Type(_) => 2,
            Self::Grid(_) => 3,
            Self::Device(_) => 4,
        }
    }

    fn covers(&self, registry: &Registry, device: DeviceId) -> bool {
        let d = registry.device(device);
        match self {
            Self::Site => true,
            Self::Category(c) => d.category == *c,
            Self::Type(t) => d.device_type == *t,
            Self::Grid(g) => registry.grid(d.grid).id == *g,
            Self::Device(id) => d.id == *id,
        }
    }
}

/// A period during which alarms of the covered devices are suppressed (maintenance, out of service).
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub scope: Scope,
    pub from: i64,
    /// `None`: until further notice (out of service).
    pub to: Option<i64>,
}

/// Engine settings from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub calendar: Calendar,
    /// Most time buckets a point's window keeps (`rules.window_samples`); longer spans use coarser buckets.
    pub window_cap: usize,
    pub chatter_count: usize,
    pub chatter_window: i64,
    pub overrides: Vec<Override>,
    pub maintenance: Vec<Maintenance>,
}

pub use crate::model::incident::{Change, IncidentUpdate, NewIncident, OpenIncident};

/// Per-rule counters for `GET /api/v1/rules`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleStats {
    pub evaluations: u64,
    pub errors: u64,
    pub eval_ns: u64,
    pub sources: usize,
    pub disabled_sources: usize,
}

/// One (rule, source device) pair and its alarm.
#[derive(Debug)]
struct Slot {
    rule: u32,
    device: DeviceId,
    alarm: Alarm,
    params: Arc<BTreeMap<String, Dynamic>>,
    incident: Option<i64>,
    disabled: bool,
    /// The triggering point of the last evaluation, and its value.
    point: Option<PointId>,
    value: f64,
    peak: f64,
    /// Restored from the store and not evaluated since.
    restored: bool,
}

/// An operator's action on an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Ack,
    /// Shelve until this time (UTC ns).
    Shelve(i64),
    Unshelve,
    Close,
}

/// Why an operator's action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("incident {0} is not open")]
    NotOpen(i64),
    #[error("incident {0} is still active; acknowledge it, or shelve it")]
    StillActive(i64),
}

/// The rule engine.
pub struct Engine {
    set: RuleSet,
    registry: Arc<Registry>,
    settings: Settings,
    slots: Vec<Slot>,
    /// Slots to evaluate when a point changes.
    point_slots: Vec<Vec<u32>>,
    /// Slots to evaluate on an event, by device and kind.
    event_slots: HashMap<(DeviceId, String), Vec<u32>>,
    /// Slots of periodic rules and when each rule is due next (monotonic ns).
    periodic: Vec<(u32, i64, Vec<u32>)>,
    windows: Vec<Window>,
    prev: Vec<f64>,
    /// When each point's value last changed (sample time, UTC ns): stuck-value checks in O(1).
    changed_at: Vec<i64>,
    /// When the gateway last received a sample of each point (monotonic ns; `i64::MIN`: never), so
    /// silence is measured on the clock that does not step.
    received_at: Vec<i64>,
    /// When the gateway last heard from each device (a usable sample or an event other than
    /// `offline`; monotonic ns, `i64::MIN`: never).
    device_heard: Vec<i64>,
    /// When this engine (or the one it replaced) first ran (monotonic ns): a device never heard from
    /// has been silent since then, so a dead detector is not invisible after a restart.
    started: i64,
    device_events: HashMap<DeviceId, VecDeque<(String, i64)>>,
    dirty: Vec<u32>,
    dirty_mark: Vec<bool>,
    by_incident: HashMap<i64, u32>,
    next_incident: i64,
    stats: Vec<RuleStats>,
    changes: Vec<Change>,
    outcomes: Vec<Outcome>,
    /// When maintenance windows were last checked (monotonic ns).
    suppressed_checked: Option<i64>,
    /// No timer is due before this (monotonic ns): a cheap lower bound of [`Engine::next_deadline`],
    /// lowered as alarms start their delays and made exact by every tick. `i64::MIN`: unknown.
    wake_at: i64,
    /// Devices left out of a rule because a point's unit is not the one the rule's limits are in.
    unit_mismatches: Vec<UnitMismatch>,
}

/// A watched point whose configured unit differs from the unit a rule's limits are written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitMismatch {
    pub rule: String,
    pub device: String,
    pub point: String,
    pub expected: String,
    pub found: String,
}

impl std::fmt::Display for UnitMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device \"{}\": point \"{}\" is in {:?} but rule \"{}\" has its limits in {:?}; the rule does not run for this device (fix the point's unit or scale)",
            self.device, self.point, self.found, self.rule, self.expected
        )
    }
}

/// A parameter a rule declares without a default (`()`) that no override sets for a device the rule
/// applies to: until it is set, the rule fails on that device's first reading and stays off for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingParam {
    pub rule: String,
    pub device: String,
    pub param: String,
}

impl std::fmt::Display for MissingParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device \"{}\": rule \"{}\" needs parameter \"{}\", which has no default and is not set; the rule judges nothing on this device until a [[rules.overrides]] entry sets it",
            self.device, self.rule, self.param
        )
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("rules", &self.set.rules.len()).field("slots", &self.slots.len()).finish()
    }
}

impl Engine {
    /// Builds the index from points and events to (rule, device) slots.
    pub fn new(set: RuleSet, registry: Arc<Registry>, settings: Settings, next_incident: i64) -> Self {
        let n_points = registry.points.len();
        let n_devices = registry.devices.len();
        let mut e = Self {
            set,
            registry,
            settings,
            slots: Vec::new(),
            point_slots: vec![Vec::new(); n_points],
            event_slots: HashMap::new(),
            periodic: Vec::new(),
            windows: Vec::new(),
            prev: vec![f64::NAN; n_points],
            changed_at: vec![0; n_points],
            received_at: vec![i64::MIN; n_points],
            device_heard: vec![i64::MIN; n_devices],
            started: i64::MIN,
            device_events: HashMap::new(),
            dirty: Vec::new(),
            dirty_mark: Vec::new(),
            by_incident: HashMap::new(),
            next_incident: next_incident.max(1),
            stats: Vec::new(),
            changes: Vec::new(),
            outcomes: Vec::new(),
            suppressed_checked: None,
            wake_at: i64::MIN,
            unit_mismatches: Vec::new(),
        };
        e.index();
        e
    }

    fn index(&mut self) {
        let reg = self.registry.clone();
        let mut retention = vec![0i64; reg.points.len()];
        self.stats = vec![RuleStats::default(); self.set.rules.len()];
        for (ri, rule) in self.set.rules.iter().enumerate() {
            let mut rule_slots = Vec::new();
            for (device, dev) in reg.live_devices() {
                let w = &rule.watch;
                if w.excludes(&reg, device).is_some() {
                    continue;
                }
                let points: Vec<PointId> = w.points.iter().filter_map(|p| reg.point_of(device, p)).collect();
                if !w.points.is_empty() && points.is_empty() {
                    continue;
                }
                // A limit in mA compared with a reading in A is silently wrong by a factor of 1000:
                // such a device does not get the rule, and the mismatch is reported.
                let mismatched: Vec<UnitMismatch> = points
                    .iter()
                    .filter_map(|&p| {
                        let info = reg.point(p);
                        let expected = rule.units.get(&info.name)?;
                        (!info.unit.is_empty() && !rules::same_unit(&info.unit, expected)).then(|| UnitMismatch {
                            rule: rule.id.clone(),
                            device: dev.id.clone(),
                            point: info.name.clone(),
                            expected: expected.clone(),
                            found: info.unit.clone(),
                        })
                    })
                    .collect();
                if !mismatched.is_empty() {
                    self.unit_mismatches.extend(mismatched);
                    continue;
                }
                let slot = self.slots.len() as u32;
                let params = Arc::new(resolve_params(rule, &self.settings.overrides, &reg, device));
                self.slots.push(Slot {
                    rule: ri as u32,
                    device,
                    alarm: Alarm::default(),
                    params,
                    incident: None,
                    disabled: false,
                    point: None,
                    value: f64::NAN,
                    peak: f64::NAN,
                    restored: false,
                });
                for p in points {
                    self.point_slots[p.0 as usize].push(slot);
                }
                // Window helpers may name any point of the device. A rule that watches only events
                // (counting them over its window) applies to every device: point windows for it
                // would give every point of the park an hour of buckets (67 KB each, 680 MB for
                // 10,000 points) that nothing reads.
                if rule.window > 0 && !w.points.is_empty() {
                    for p in dev.points.clone() {
                        retention[p as usize] = retention[p as usize].max(rule.window);
                    }
                }
                for kind in &w.events {
                    self.event_slots.entry((device, kind.clone())).or_default().push(slot);
                }
                rule_slots.push(slot);
            }
            self.stats[ri].sources = rule_slots.len();
            if rule.every > 0 {
                self.periodic.push((ri as u32, i64::MIN, rule_slots));
            }
        }
        let cap = self.settings.window_cap;
        self.windows = retention.into_iter().map(|r| Window::new(r, cap)).collect();
        self.dirty_mark = vec![false; self.slots.len()];
        for s in &mut self.slots {
            let b = &mut self.set.rules[s.rule as usize].behaviour;
            b.chatter_count = self.settings.chatter_count;
            b.chatter_window = self.settings.chatter_window;
        }
    }

    /// Points whose unit differs from the one a rule expects; those devices do not get the rule.
    pub fn unit_mismatches(&self) -> &[UnitMismatch] {
        &self.unit_mismatches
    }

    /// Required parameters left unset: for every (rule, device) slot, each parameter the rule
    /// declares as `()` that the site, category, grid and device overrides leave at `()`.
    pub fn missing_params(&self) -> Vec<MissingParam> {
        let mut out = Vec::new();
        for slot in &self.slots {
            let rule = &self.set.rules[slot.rule as usize];
            for (name, _) in slot.params.iter().filter(|(_, v)| v.is_unit()) {
                out.push(MissingParam {
                    rule: rule.id.clone(),
                    device: self.registry.device(slot.device).id.clone(),
                    param: name.clone(),
                });
            }
        }
        out
    }

    /// The registry the engine's slots were built from.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The loaded rules.
    pub fn rules(&self) -> &[Rule] {
        &self.set.rules
    }

    /// Per-rule counters, in the order of [`Engine::rules`].
    pub fn stats(&self) -> Vec<RuleStats> {
        let mut s = self.stats.clone();
        for st in &mut s {
            st.disabled_sources = 0;
        }
        for slot in self.slots.iter().filter(|s| s.disabled) {
            s[slot.rule as usize].disabled_sources += 1;
        }
        s
    }

    /// The next incident id this engine will hand out.
    pub fn next_incident(&self) -> i64 {
        self.next_incident
    }

    /// A fresh incident id for an incident raised beside the rules (a missed patrol), so every
    /// incident of the site draws from one sequence.
    pub fn allocate_incident(&mut self) -> i64 {
        let id = self.next_incident;
        self.next_incident += 1;
        id
    }

    /// Queues changes of incidents raised beside the rules; they go to the store with the rules' own.
    pub fn push_changes(&mut self, changes: &mut Vec<Change>) {
        self.changes.append(changes);
    }

    /// Takes the incident changes produced so far.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Whether changes are waiting to be taken.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Records a sample that the core accepted at `now`; `old` is the point's value before it.
    pub fn on_sample(&mut self, s: &Sample, old: Option<f64>, now: Now) {
        let i = s.point.0 as usize;
        // A bad reading (a Modbus exception, NaN) is not news from the device: it never counts as fresh.
        if s.quality != Quality::Bad {
            if let Some(r) = self.received_at.get_mut(i) {
                *r = now.mono;
            }
            if let Some(d) = self.registry.points.get(i).map(|p| p.device.0 as usize) {
                if let Some(h) = self.device_heard.get_mut(d) {
                    *h = now.mono;
                }
            }
        }
        if let Some(p) = self.prev.get_mut(i) {
            *p = old.unwrap_or(f64::NAN);
        }
        if old != Some(s.value) {
            if let Some(c) = self.changed_at.get_mut(i) {
                *c = s.ts;
            }
        }
        if let Some(w) = self.windows.get_mut(i) {
            w.push(s.ts, s.value, s.quality == Quality::Good);
        }
        if let Some(slots) = self.point_slots.get(i) {
            for &slot in slots {
                let m = &mut self.dirty_mark[slot as usize];
                if !*m {
                    *m = true;
                    self.dirty.push(slot);
                }
                let sl = &mut self.slots[slot as usize];
                sl.point = Some(s.point);
            }
        }
    }

    /// Evaluates every slot a sample touched since the last call, once each.
    pub fn evaluate_dirty(&mut self, states: &[PointState], now: Now) {
        self.check_maintenance(now);
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            self.dirty_mark[slot as usize] = false;
            let sl = &self.slots[slot as usize];
            let ctx = Ctx {
                device: sl.device,
                point: sl.point,
                ts: sl.point.map_or(now.wall, |p| states[p.0 as usize].ts),
                event: None,
            };
            self.evaluate(slot, ctx, states, now, false);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Evaluates the rules watching this event kind on its device.
    pub fn on_event(&mut self, event: &Event, states: &[PointState], now: Now) {
        self.check_maintenance(now);
        // Offline and exception reports come from the gateway's poller, not from the device.
        if event.kind != "offline" && event.kind != "modbus_exception" {
            if let Some(h) = self.device_heard.get_mut(event.device.0 as usize) {
                *h = now.mono;
            }
        }
        let q = self.device_events.entry(event.device).or_default();
        if q.len() >= DEVICE_EVENTS_KEPT {
            q.pop_front();
        }
        q.push_back((event.kind.clone(), event.ts));
        let Some(slots) = self.event_slots.get(&(event.device, event.kind.clone())).cloned() else {
            return;
        };
        let ev = Arc::new(event.clone());
        for slot in slots {
            let ctx = Ctx { device: event.device, point: None, ts: event.ts, event: Some(ev.clone()) };
            self.evaluate(slot, ctx, states, now, true);
        }
    }

    /// Advances timers (on/off delays, shelving, periodic rules) to `now`.
    pub fn tick(&mut self, states: &[PointState], now: Now) {
        self.check_maintenance(now);
        for i in 0..self.periodic.len() {
            let (rule, due, _) = self.periodic[i];
            if now.mono < due {
                continue;
            }
            let every = self.set.rules[rule as usize].every;
            // On a fixed grid, so a late tick does not push every later check back; a check
            // missed entirely (a stall) is not made up.
            let next = due.saturating_add(every);
            self.periodic[i].1 =
                if due == i64::MIN || next <= now.mono { now.mono.saturating_add(every) } else { next };
            let slots = self.periodic[i].2.clone();
            for slot in slots {
                let ctx = Ctx { device: self.slots[slot as usize].device, point: None, ts: now.wall, event: None };
                self.evaluate(slot, ctx, states, now, false);
            }
        }
        for slot in 0..self.slots.len() {
            let b = self.set.rules[self.slots[slot].rule as usize].behaviour;
            if self.slots[slot].alarm.next_deadline(&b).is_some_and(|d| d <= now.mono) {
                let mut out = std::mem::take(&mut self.outcomes);
                self.slots[slot].alarm.tick(&b, now.mono, &mut out);
                self.apply_outcomes(slot as u32, &mut out, now, None, None);
                self.outcomes = out;
            }
        }
        self.wake_at = self.next_deadline().unwrap_or(i64::MAX);
    }

    /// When the core must tick next at the latest for timers to fire on time (monotonic ns; never
    /// later than the true next deadline, possibly earlier). O(1), for every turn of the core's loop.
    pub fn wake_at(&self) -> i64 {
        self.wake_at
    }

    /// The earliest monotonic time at which [`Engine::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let alarms =
            self.slots.iter().filter_map(|s| s.alarm.next_deadline(&self.set.rules[s.rule as usize].behaviour)).min();
        let periodic = self.periodic.iter().map(|p| p.1).min();
        [alarms, periodic].into_iter().flatten().min()
    }

    fn check_maintenance(&mut self, now: Now) {
        if self.started == i64::MIN {
            self.started = now.mono;
        }
        if self.settings.maintenance.is_empty()
            || self.suppressed_checked.is_some_and(|t| now.mono.saturating_sub(t) < 1_000_000_000)
        {
            return;
        }
        self.suppressed_checked = Some(now.mono);
        // Suppression may start or stop delays: the next tick makes the wake-up time exact again.
        self.wake_at = i64::MIN;
        for slot in 0..self.slots.len() {
            let device = self.slots[slot].device;
            let suppressed = self.settings.maintenance.iter().any(|m| {
                m.from <= now.wall && m.to.is_none_or(|t| now.wall < t) && m.scope.covers(&self.registry, device)
            });
            let b = self.set.rules[self.slots[slot].rule as usize].behaviour;
            let mut out = std::mem::take(&mut self.outcomes);
            self.slots[slot].alarm.set_suppressed(&b, now.mono, suppressed, &mut out);
            self.apply_outcomes(slot as u32, &mut out, now, None, None);
            self.outcomes = out;
        }
    }

    fn evaluate(&mut self, slot: u32, ctx: Ctx, states: &[PointState], now: Now, is_event: bool) {
        let si = slot as usize;
        if self.slots[si].disabled {
            return;
        }
        let ri = self.slots[si].rule as usize;
        let rule = &self.set.rules[ri];
        let no_events = VecDeque::new();
        let dev_events = self.device_events.get(&ctx.device).unwrap_or(&no_events);
        let (events_a, events_b) = dev_events.as_slices();
        // Events live in a ring; the helper wants one slice.
        let joined: Vec<(String, i64)>;
        let device_events: &[(String, i64)] = if events_b.is_empty() {
            events_a
        } else {
            joined = dev_events.iter().cloned().collect();
            &joined
        };
        let env = EvalEnv {
            registry: &self.registry,
            states,
            prev: &self.prev,
            changed_at: &self.changed_at,
            received_at: &self.received_at,
            device_heard: &self.device_heard,
            started: self.started,
            windows: &self.windows,
            device_events,
            params: &self.slots[si].params,
            calendar: self.settings.calendar,
            window: rule.window,
            now: now.wall,
            mono: now.mono,
        };
        let started = Instant::now();
        let active = self.slots[si].alarm.state.is_active();
        let result = rules::with_env(&env, || {
            let (_, ast) = &self.set.packs[rule.pack];
            let f = match (&rule.clear, active) {
                (Some(clear), true) => {
                    // Hysteresis: an active alarm holds until the clear condition says otherwise.
                    return clear
                        .call::<Dynamic>(&self.set.engine, ast, (ctx.clone(),))
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            v.as_bool()
                                .map_err(|t| format!("clear condition returned a {t}; expected a bool"))
                                .map(|cleared| if cleared { None } else { Some(self.slots[si].alarm.severity) })
                        })
                        .and_then(|held| match held {
                            // Still held: the condition may still escalate the severity.
                            Some(sev) => rule
                                .condition
                                .call::<Dynamic>(&self.set.engine, ast, (ctx.clone(),))
                                .map_err(|e| e.to_string())
                                .and_then(|v| rules::verdict(v, rule.severity))
                                .map(|c| Some(c.map_or(sev, |c| c.max(sev)))),
                            None => Ok(None),
                        });
                }
                _ => &rule.condition,
            };
            f.call::<Dynamic>(&self.set.engine, ast, (ctx.clone(),))
                .map_err(|e| e.to_string())
                .and_then(|v| rules::verdict(v, rule.severity))
        });
        let st = &mut self.stats[ri];
        st.evaluations += 1;
        st.eval_ns += started.elapsed().as_nanos() as u64;
        let value = ctx.point.map_or(f64::NAN, |p| states[p.0 as usize].value);
        match result {
            Ok(condition) => {
                let sl = &mut self.slots[si];
                sl.value = value;
                if sl.alarm.state.is_active() && !value.is_nan() {
                    sl.peak = if sl.peak.is_nan() { value } else { sl.peak.max(value) };
                }
                let b = rule.behaviour;
                let restored = std::mem::take(&mut sl.restored);
                let mut out = std::mem::take(&mut self.outcomes);
                sl.alarm.evaluate(&b, now.mono, condition, &mut out);
                // Events are instants: unless the rule holds its result, the condition ends with them.
                if is_event && !rule.hold {
                    sl.alarm.evaluate(&b, now.mono, None, &mut out);
                }
                if let Some(d) = sl.alarm.next_deadline(&b) {
                    self.wake_at = self.wake_at.min(d);
                }
                let note = (restored && condition.is_none() && out.contains(&Outcome::Returned))
                    .then(|| "condition cleared while the gateway was down".to_string());
                self.apply_outcomes(slot, &mut out, now, None, note);
                self.outcomes = out;
            }
            Err(message) => {
                st.errors += 1;
                self.slots[si].disabled = true;
                let rule = &self.set.rules[ri];
                let device = self.registry.device(self.slots[si].device);
                tracing::error!(rule = %rule.id, device = %device.id, error = %message, "Rule failed; disabled for this device.");
                self.system_incident(
                    now.wall,
                    &format!("rule.{}", rule.id),
                    self.slots[si].device,
                    format!(
                        "rule \"{}\" failed on device \"{}\" and is disabled for it: {message}",
                        rule.id, device.id
                    ),
                );
            }
        }
    }

    /// Opens a `system` incident (a rule error, a failed reload, dropped data) at wall time `now`.
    pub fn system_incident(&mut self, now: i64, rule: &str, device: DeviceId, message: String) {
        let id = self.next_incident;
        self.next_incident += 1;
        let d = self.registry.devices.get(device.0 as usize);
        self.changes.push(Change::Open(NewIncident {
            id,
            at: now,
            rule: format!("system.{rule}"),
            title: "parkwatch needs attention".into(),
            category: "system".into(),
            severity: Severity::Major,
            state: State::ActiveUnacked,
            device: d.map(|d| d.id.clone()).unwrap_or_default(),
            grid: d.map(|d| self.registry.grid(d.grid).id.clone()).unwrap_or_default(),
            point: String::new(),
            value: f64::NAN,
            message,
            plan: String::new(),
        }));
    }

    fn apply_outcomes(&mut self, slot: u32, out: &mut Vec<Outcome>, now: Now, who: Option<&str>, note: Option<String>) {
        let mut note = note;
        for o in out.drain(..) {
            let si = slot as usize;
            let sl = &self.slots[si];
            let state = sl.alarm.state;
            let (kind, severity) = match o {
                Outcome::Raised { severity } => {
                    let id = self.next_incident;
                    self.next_incident += 1;
                    let rule = &self.set.rules[sl.rule as usize];
                    let dev = self.registry.device(sl.device);
                    let grid = self.registry.grid(dev.grid).id.clone();
                    let point = sl.point.map(|p| self.registry.point(p).name.clone()).unwrap_or_default();
                    let message = render(&rule.message, &sl.params, &dev.id, &grid, &point, sl.value, severity);
                    self.changes.push(Change::Open(NewIncident {
                        id,
                        at: now.wall,
                        rule: rule.id.clone(),
                        title: rule.title.clone(),
                        category: rule.category.clone(),
                        severity,
                        state,
                        device: dev.id.clone(),
                        grid,
                        point,
                        value: sl.value,
                        message,
                        plan: rule.plan.clone(),
                    }));
                    let sl = &mut self.slots[si];
                    sl.incident = Some(id);
                    sl.peak = sl.value;
                    self.by_incident.insert(id, slot);
                    continue;
                }
                Outcome::Reactivated { severity } => ("reactivated", Some(severity)),
                Outcome::Escalated { severity } => ("escalated", Some(severity)),
                Outcome::Returned => ("returned", None),
                Outcome::Acked => ("acked", None),
                Outcome::Closed => ("closed", None),
                Outcome::Chattering => ("chattering", None),
                Outcome::Shelved { .. } => ("shelved", None),
                Outcome::Unshelved => ("unshelved", None),
            };
            let Some(id) = sl.incident else { continue };
            let peak = sl.peak;
            let value = sl.value;
            let shelved_until = match o {
                // The alarm keeps its shelving on the monotonic clock; people read wall time.
                Outcome::Shelved { until } => Some(now.wall_of(until)),
                _ => None,
            };
            let note_here = if kind == "returned" { note.take() } else { None };
            self.changes.push(Change::Update(IncidentUpdate {
                id,
                at: now.wall,
                kind,
                state: Some(state),
                severity,
                value: (!value.is_nan()).then_some(value),
                peak: (!peak.is_nan()).then_some(peak),
                who: matches!(o, Outcome::Acked | Outcome::Shelved { .. } | Outcome::Unshelved)
                    .then(|| who.map(str::to_owned))
                    .flatten(),
                note: note_here,
                shelved_until,
            }));
            if matches!(o, Outcome::Closed) {
                self.slots[si].incident = None;
                self.slots[si].peak = f64::NAN;
                self.by_incident.remove(&id);
            }
        }
    }

    /// An operator acts on an incident. Incidents without a live alarm (system incidents, rules that
    /// are gone) are handled by the store; this returns `Ok(false)` for them.
    ///
    /// # Errors
    /// The action does not apply in the alarm's state.
    pub fn act(&mut self, incident: i64, action: Action, who: &str, now: Now) -> Result<bool, ActionError> {
        // Shelving and restored alarms bring timers of their own: tick soon and recompute.
        self.wake_at = i64::MIN;
        let Some(&slot) = self.by_incident.get(&incident) else { return Ok(false) };
        let si = slot as usize;
        let b = self.set.rules[self.slots[si].rule as usize].behaviour;
        let mut out = std::mem::take(&mut self.outcomes);
        let alarm = &mut self.slots[si].alarm;
        let result = match action {
            Action::Ack => {
                alarm.ack(&b, now.mono, &mut out);
                Ok(true)
            }
            Action::Shelve(until) => {
                alarm.shelve(now.mono, now.mono_of(until), &mut out);
                Ok(true)
            }
            Action::Unshelve => {
                alarm.unshelve(&b, now.mono, &mut out);
                Ok(true)
            }
            Action::Close => match alarm.state {
                State::ActiveUnacked | State::ActiveAcked => Err(ActionError::StillActive(incident)),
                State::ReturnedUnacked => {
                    alarm.ack(&b, now.mono, &mut out);
                    Ok(true)
                }
                State::Normal => Err(ActionError::NotOpen(incident)),
            },
        };
        self.apply_outcomes(slot, &mut out, now, Some(who), None);
        self.outcomes = out;
        result
    }

    /// The file name of pack `i`.
    pub fn pack_name(&self, i: usize) -> &str {
        self.set.packs.get(i).map_or("", |p| p.0.as_str())
    }

    /// Takes over the state of the engine this one replaces (a reload): alarms of rules that remain
    /// continue with their incidents, history windows and previous values carry over. Open incidents
    /// whose rule is gone are closed with a note.
    pub fn adopt(&mut self, mut old: Engine, now: Now) {
        // Shelving and restored alarms bring timers of their own: tick soon and recompute.
        self.wake_at = i64::MIN;
        self.next_incident = self.next_incident.max(old.next_incident);
        self.changes.append(&mut old.changes);
        // Ids are stable across registries (points are only appended), so what was known of a point
        // carries over by index; points new to this registry start empty.
        for (new, old) in self.windows.iter_mut().zip(old.windows) {
            if old.retention >= new.retention && old.retention > 0 {
                let retention = new.retention;
                *new = old;
                new.retention = retention;
            }
        }
        let n = old.prev.len().min(self.prev.len());
        self.prev[..n].copy_from_slice(&old.prev[..n]);
        let n = old.changed_at.len().min(self.changed_at.len());
        self.changed_at[..n].copy_from_slice(&old.changed_at[..n]);
        let n = old.received_at.len().min(self.received_at.len());
        self.received_at[..n].copy_from_slice(&old.received_at[..n]);
        let n = old.device_heard.len().min(self.device_heard.len());
        self.device_heard[..n].copy_from_slice(&old.device_heard[..n]);
        if old.started != i64::MIN {
            self.started = old.started;
        }
        self.device_events = old.device_events;
        // By names, not indexes: a device re-entered with other points has a new id but the same
        // alarms. A map, since a park has tens of thousands of slots.
        let by_name: HashMap<(&str, &str), usize> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                ((self.registry.device(s.device).id.as_str(), self.set.rules[s.rule as usize].id.as_str()), i)
            })
            .collect();
        let mut found_slots = Vec::with_capacity(old.slots.len());
        for old_slot in &old.slots {
            let rule_id = old.set.rules[old_slot.rule as usize].id.as_str();
            let device = old.registry.device(old_slot.device).id.as_str();
            found_slots.push(by_name.get(&(device, rule_id)).copied());
        }
        drop(by_name);
        for (old_slot, found) in old.slots.into_iter().zip(found_slots) {
            let rule_id = &old.set.rules[old_slot.rule as usize].id;
            match found {
                Some(i) => {
                    let s = &mut self.slots[i];
                    s.alarm = old_slot.alarm;
                    s.incident = old_slot.incident;
                    s.peak = old_slot.peak;
                    s.value = old_slot.value;
                    s.point = old_slot.point;
                    if let Some(id) = s.incident {
                        self.by_incident.insert(id, i as u32);
                    }
                }
                None => {
                    if let Some(id) = old_slot.incident {
                        let device = &old.registry.device(old_slot.device).id;
                        let note = if self.registry.device_id(device).is_none() {
                            format!("device \"{device}\" was removed by a reload")
                        } else if self.set.rules.iter().any(|r| r.id == *rule_id) {
                            format!("rule \"{rule_id}\" no longer applies to device \"{device}\" after a reload")
                        } else {
                            format!("rule \"{rule_id}\" was removed by a reload")
                        };
                        self.changes.push(Change::Update(IncidentUpdate {
                            id,
                            at: now.wall,
                            kind: "closed",
                            state: Some(State::Normal),
                            severity: None,
                            value: None,
                            peak: None,
                            who: None,
                            note: Some(note),
                            shelved_until: None,
                        }));
                    }
                }
            }
        }
    }

    /// Restores open incidents after a restart: the same alarm continues, no second incident. Returns
    /// the ids that no longer match a rule and device, for the store to close. Shelving (stored as
    /// wall time) continues on the monotonic clock from `now`.
    pub fn restore(&mut self, open: &[OpenIncident], now: Now) -> Vec<i64> {
        // Shelving and restored alarms bring timers of their own: tick soon and recompute.
        self.wake_at = i64::MIN;
        let mut orphans = Vec::new();
        for inc in open {
            self.next_incident = self.next_incident.max(inc.id + 1);
            let slot = self.slots.iter().position(|s| {
                self.set.rules[s.rule as usize].id == inc.rule && self.registry.device(s.device).id == inc.device
            });
            let Some(slot) = slot else {
                orphans.push(inc.id);
                continue;
            };
            let sl = &mut self.slots[slot];
            if sl.incident.is_some() {
                orphans.push(inc.id);
                continue;
            }
            sl.alarm = Alarm::restored(inc.state, inc.severity);
            sl.alarm.shelved_until = inc.shelved_until.map(|u| now.mono_of(u));
            sl.incident = Some(inc.id);
            sl.peak = inc.peak;
            sl.restored = true;
            self.by_incident.insert(inc.id, slot as u32);
        }
        orphans
    }
}

fn resolve_params(
    rule: &Rule,
    overrides: &[Override],
    registry: &Registry,
    device: DeviceId,
) -> BTreeMap<String, Dynamic> {
    let mut params = rule.params.clone();
    let mut applicable: Vec<&Override> =
        overrides.iter().filter(|o| (o.rule == rule.id || o.rule == "*") && o.scope.covers(registry, device)).collect();
    applicable.sort_by_key(|o| (o.scope.rank(), o.rule != "*"));
    for o in applicable {
        for (k, v) in &o.params {
            if o.rule != "*" || params.contains_key(k) {
                let v = match rule.params.get(k) {
                    Some(default) => like(default, v),
                    None => v.clone(),
                };
                params.insert(k.clone(), v);
            }
        }
    }
    params
}

/// An override in the number type of the rule's default, so `3` and `3.0` in the config mean the
/// same to a script that does integer arithmetic (a count) as well as to one that compares floats.
fn like(default: &Dynamic, v: &Dynamic) -> Dynamic {
    if default.is_int() {
        if let Ok(f) = v.as_float() {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                return Dynamic::from(f as i64);
            }
        }
    } else if default.is_float() {
        if let Ok(i) = v.as_int() {
            return Dynamic::from(i as f64);
        }
    } else if let (Some(d), Some(a)) = (default.read_lock::<rhai::Array>(), v.read_lock::<rhai::Array>()) {
        // A table of limits (one per class): each element like the default's first.
        if let Some(first) = d.first() {
            return Dynamic::from_array(a.iter().map(|x| like(first, x)).collect());
        }
    }
    v.clone()
}

/// Fills `{value}`, `{device}`, `{grid}`, `{point}`, `{severity}` and `{<param>}` in a message template.
fn render(
    template: &str,
    params: &BTreeMap<String, Dynamic>,
    device: &str,
    grid: &str,
    point: &str,
    value: f64,
    severity: Severity,
) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let key = &after[..close];
        match key {
            "value" => out.push_str(&fmt_value(value)),
            "device" => out.push_str(device),
            "grid" => out.push_str(grid),
            "point" => out.push_str(point),
            "severity" => out.push_str(severity.as_str()),
            k => match params.get(k) {
                Some(v) if v.is_float() => out.push_str(&fmt_value(v.as_float().unwrap_or(f64::NAN))),
                Some(v) => out.push_str(&v.to_string()),
                None => {
                    out.push('{');
                    out.push_str(k);
                    out.push('}');
                }
            },
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::rules::{load, Limits};
    use crate::model::Quality;

    const S: i64 = 1_000_000_000;
    const HOUR: i64 = 3_600 * S;
    /// 2026-06-01T10:00:00+08:00.
    const WALL: i64 = 1_780_279_200 * S;

    /// An engine running `pack` for one device `d1` (category `electrical`) with `points`, the point
    /// states it reads and its registry.
    pub(crate) fn engine_with(pack: &str, points: &[&str]) -> (Engine, Vec<PointState>, Arc<Registry>) {
        let pts: Vec<String> = points.iter().map(|p| format!("{{ name = {p:?} }}")).collect();
        let text = format!(
            "[site]\nid = \"t\"\ntimezone = \"Asia/Shanghai\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"d1\"\n\
             grid = \"g1\"\ncategory = \"electrical\"\npoints = [{}]\n[rules]\nbuiltin = false\n",
            pts.join(", ")
        );
        let config = crate::config::from_str(&text, std::path::Path::new("(test)"), std::path::Path::new(".")).unwrap();
        let registry = Arc::new(Registry::from_config(&config));
        let set = load(&[("t.rhai".into(), pack.into())], Limits::default()).unwrap();
        let settings = crate::core::packs::settings(&config, &registry);
        let states = vec![PointState::default(); registry.points.len()];
        (Engine::new(set, registry.clone(), settings, 1), states, registry)
    }

    /// Point windows are kept for rules that watch points, not for rules that count events.
    #[test]
    fn a_rule_counting_events_keeps_no_point_windows() {
        let events = r#"rule(#{ id: "t.denied", category: "access", severity: "major",
            watch: #{ events: ["card_denied"] }, window: "1h",
            condition: |ctx| ctx.events("card_denied", "5m") >= 3 });"#;
        let (e, _, _) = engine_with(events, &["ua", "ia"]);
        assert!(e.windows.iter().all(|w| w.memory_bytes() < 1024), "no window for an event rule");
        let points = r#"rule(#{ id: "t.avg", category: "electrical", severity: "major",
            watch: #{ points: ["ua"] }, window: "1h", condition: |ctx| ctx.avg("ia", "10m") > 10.0 });"#;
        let (e, _, _) = engine_with(points, &["ua", "ia"]);
        assert!(e.windows.iter().all(|w| w.memory_bytes() > 10_000), "every point of the device: {}", e.windows.len());
    }

    /// An integer parameter overridden in TOML as `3` or as `3.0` means the same to a script that
    /// indexes with it (an index must be an integer) and to one that compares it with a float.
    #[test]
    fn integer_parameters_work_written_as_3_or_3_0() {
        let pack = r#"rule(#{ id: "t.n", category: "electrical", severity: "minor", watch: #{ points: ["x"] },
            params: #{ n: 2, limit: 10.0 },
            condition: |c| { let a = [0, 0, 0, 1]; a[c.param("n")] == 1 && above(c.value, c.param("limit")) } });"#;
        for written in ["3", "3.0"] {
            let (e, _, registry) = engine_with(pack, &["x"]);
            let mut settings = e.settings.clone();
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {written}")).unwrap()["v"].clone();
            let limit: toml::Value = toml::from_str::<toml::Table>("v = 4").unwrap()["v"].clone();
            settings.overrides.push(Override {
                rule: "t.n".into(),
                scope: Scope::Site,
                params: [
                    ("n".to_owned(), crate::core::packs::toml_to_dynamic(&value)),
                    ("limit".to_owned(), crate::core::packs::toml_to_dynamic(&limit)),
                ]
                .into_iter()
                .collect(),
            });
            let set = load(&[("t.rhai".into(), pack.into())], Limits::default()).unwrap();
            let mut e = Engine::new(set, registry, settings, 1);
            let mut states = vec![PointState::default(); 1];
            sample(&mut e, &mut states, 5.0, Now { wall: WALL, mono: 0 });
            let opened: Vec<String> = e
                .take_changes()
                .into_iter()
                .filter_map(|c| match c {
                    Change::Open(n) => Some(n.rule),
                    Change::Update(_) => None,
                })
                .collect();
            assert_eq!(opened, ["t.n"], "n = {written}: {:?}", e.stats());
        }
    }

    /// A required limit (a parameter declared without a default) is named for each device the rule
    /// applies to that no override sets, whether it is set elsewhere per device or per grid.
    #[test]
    fn required_parameters_left_unset_are_named_per_device() {
        let device = |id: &str, grid: &str, point: &str| {
            format!("[[devices]]\nid = {id:?}\ngrid = {grid:?}\ncategory = \"environment\"\npoints = [{{ name = {point:?} }}]\n")
        };
        let text = format!(
            "[site]\nid = \"t\"\n[[grids]]\nid = \"g1\"\n[[grids]]\nid = \"g2\"\n{}{}{}{}\
             [[rules.overrides]]\nrule = \"emission.boundary_nmhc\"\ndevice = \"nmhc-2\"\nparams = {{ limit_mgm3 = 4 }}\n\
             [[rules.overrides]]\nrule = \"*\"\ngrid = \"g2\"\nparams = {{ limit_mgm3 = 2.0 }}\n",
            device("nmhc-1", "g1", "nmhc"),
            device("nmhc-2", "g1", "nmhc"),
            device("nmhc-3", "g2", "nmhc"),
            device("noise-1", "g1", "noise"),
        );
        let config = crate::config::from_str(&text, std::path::Path::new("(test)"), std::path::Path::new(".")).unwrap();
        let registry = Arc::new(Registry::from_config(&config));
        let (engine, _) = crate::core::packs::build(&config, registry, 1).unwrap();
        let missing = engine.missing_params();
        let named: Vec<(&str, &str, &str)> =
            missing.iter().map(|m| (m.rule.as_str(), m.device.as_str(), m.param.as_str())).collect();
        assert_eq!(named, [("emission.boundary_nmhc", "nmhc-1", "limit_mgm3")]);
        let text = missing[0].to_string();
        assert!(text.contains("device \"nmhc-1\"") && text.contains("\"limit_mgm3\""), "{text}");
    }

    /// A device type's parameters apply to its devices above category and below grid and device
    /// overrides; a device of another type keeps the rule's default.
    #[test]
    fn device_type_parameters_sit_between_category_and_grid() {
        let text = r#"
[site]
id = "t"
[[grids]]
id = "g1"
[[grids]]
id = "g2"
[[device_types]]
id = "rcd-300"
category = "electrical"
points = [{ name = "x", unit = "mA" }]
params = { "t.p" = { limit = 300 } }
[[device_types]]
id = "plain"
category = "electrical"
points = [{ name = "x" }]
[[devices]]
id = "a"
grid = "g1"
type = "rcd-300"
[[devices]]
id = "b"
grid = "g1"
type = "rcd-300"
[[devices]]
id = "c"
grid = "g2"
type = "rcd-300"
[[devices]]
id = "d"
grid = "g1"
type = "plain"
[[rules.overrides]]
rule = "*"
category = "electrical"
params = { limit = 100 }
[[rules.overrides]]
rule = "t.p"
device = "b"
params = { limit = 500 }
[[rules.overrides]]
rule = "t.p"
grid = "g2"
params = { limit = 400 }
"#;
        let config = crate::config::from_str(text, std::path::Path::new("(test)"), std::path::Path::new(".")).unwrap();
        let registry = Registry::from_config(&config);
        let settings = crate::core::packs::settings(&config, &registry);
        let pack = r#"rule(#{ id: "t.p", category: "electrical", severity: "minor", watch: #{ points: ["x"] },
            params: #{ limit: 200 }, condition: |c| c.value > c.param("limit") });"#;
        let set = load(&[("t.rhai".into(), pack.into())], Limits::default()).unwrap();
        let limit = |device: &str| {
            let id = registry.device_id(device).unwrap();
            resolve_params(&set.rules[0], &settings.overrides, &registry, id)["limit"].as_int().unwrap()
        };
        assert_eq!(
            [limit("a"), limit("b"), limit("c"), limit("d")],
            [300, 500, 400, 100],
            "type over category, device and grid over type, another type keeps the category's"
        );
    }

    const ON_DELAY_3S: &str = r#"rule(#{ id: "t.x", category: "electrical", severity: "minor",
        watch: #{ points: ["x"] }, condition: |c| c.value > 1.0, on_delay: "3s" });"#;

    /// Sets point 0 to `v` at wall time `now.wall` and evaluates.
    fn sample(e: &mut Engine, states: &mut [PointState], v: f64, now: Now) {
        let point = PointId(0);
        let old = states[0].has_value.then_some(states[0].value);
        states[0] = PointState { value: v, ts: now.wall, quality: Quality::Good, has_value: true };
        e.on_sample(&Sample { point, quality: Quality::Good, ts: now.wall, value: v }, old, now);
        e.evaluate_dirty(states, now);
    }

    fn raised_at(e: &mut Engine) -> Vec<i64> {
        e.take_changes()
            .into_iter()
            .filter_map(|c| match c {
                Change::Open(n) => Some(n.at),
                Change::Update(_) => None,
            })
            .collect()
    }

    #[test]
    fn wall_clock_stepped_back_does_not_delay_the_on_delay() {
        let (mut e, mut states, _) = engine_with(ON_DELAY_3S, &["x"]);
        sample(&mut e, &mut states, 5.0, Now { wall: WALL, mono: 0 });
        assert_eq!(e.next_deadline(), Some(3 * S));
        // NTP steps the wall clock back one hour one second later.
        e.tick(&states, Now { wall: WALL + S - HOUR, mono: S });
        assert!(raised_at(&mut e).is_empty());
        e.tick(&states, Now { wall: WALL + 3 * S - S / 1000 - HOUR, mono: 3 * S - S / 1000 });
        assert!(raised_at(&mut e).is_empty());
        e.tick(&states, Now { wall: WALL + 3 * S - HOUR, mono: 3 * S });
        // Raised at 3 s of monotonic time, stamped with the (stepped) wall time.
        assert_eq!(raised_at(&mut e), vec![WALL + 3 * S - HOUR]);
    }

    #[test]
    fn wall_clock_stepped_forward_does_not_raise_early() {
        let (mut e, mut states, _) = engine_with(ON_DELAY_3S, &["x"]);
        sample(&mut e, &mut states, 5.0, Now { wall: WALL, mono: 0 });
        e.tick(&states, Now { wall: WALL + S + HOUR, mono: S });
        assert!(raised_at(&mut e).is_empty());
        // A new sample after the step is still within the on-delay.
        sample(&mut e, &mut states, 6.0, Now { wall: WALL + 2 * S + HOUR, mono: 2 * S });
        assert!(raised_at(&mut e).is_empty());
        e.tick(&states, Now { wall: WALL + 3 * S + HOUR, mono: 3 * S });
        assert_eq!(raised_at(&mut e), vec![WALL + 3 * S + HOUR]);
    }

    #[test]
    fn silence_is_measured_on_the_monotonic_clock() {
        let pack = r#"rule(#{ id: "t.stale", category: "equipment", severity: "major", watch: #{ points: ["x"] },
            every: "5s", condition: |c| above(c.silent_for("x"), 60.0) });"#;
        let (mut e, mut states, _) = engine_with(pack, &["x"]);
        sample(&mut e, &mut states, 5.0, Now { wall: WALL, mono: 0 });
        // The wall clock jumps an hour ahead 10 s later: the detector is not an hour silent.
        e.tick(&states, Now { wall: WALL + HOUR + 10 * S, mono: 10 * S });
        assert!(raised_at(&mut e).is_empty());
        e.tick(&states, Now { wall: WALL + HOUR + 60 * S, mono: 60 * S });
        assert!(raised_at(&mut e).is_empty());
        // And stepped back, it still is silent after 60 s.
        e.tick(&states, Now { wall: WALL - HOUR + 65 * S, mono: 65 * S });
        assert_eq!(raised_at(&mut e), vec![WALL - HOUR + 65 * S]);
    }

    #[test]
    fn shelving_runs_on_the_monotonic_clock() {
        let (mut e, mut states, _) = engine_with(ON_DELAY_3S, &["x"]);
        sample(&mut e, &mut states, 5.0, Now { wall: WALL, mono: 0 });
        e.tick(&states, Now { wall: WALL + 3 * S, mono: 3 * S });
        let id = match e.take_changes().first() {
            Some(Change::Open(n)) => n.id,
            other => panic!("expected a raise, got {other:?}"),
        };
        e.act(id, Action::Shelve(WALL + 3 * S + 600 * S), "op", Now { wall: WALL + 3 * S, mono: 3 * S }).unwrap();
        let shelved = e.take_changes();
        assert!(matches!(&shelved[..], [Change::Update(u)] if u.shelved_until == Some(WALL + 603 * S)), "{shelved:?}");
        // The wall clock jumps an hour ahead: the shelving still lasts its ten minutes.
        e.tick(&states, Now { wall: WALL + 4 * S + HOUR, mono: 4 * S });
        assert!(e.take_changes().is_empty());
        assert_eq!(e.next_deadline(), Some(603 * S));
    }

    #[test]
    fn renders_templates() {
        let mut p = BTreeMap::new();
        p.insert("limit_ma".to_string(), Dynamic::from(300.0));
        assert_eq!(
            render(
                "{device} in {grid}: {value} mA > {limit_ma} mA ({unknown})",
                &p,
                "m1",
                "g1",
                "ir",
                350.5,
                Severity::Critical
            ),
            "m1 in g1: 350.50 mA > 300 mA ({unknown})"
        );
    }

    /// 2026-06-01T00:00:00+08:00: local midnight at the site.
    const MIDNIGHT: i64 = WALL - 10 * HOUR;

    /// A rule that tells a day with data that still cannot be judged, next to the shipped GB 3095 rules.
    const NOT_JUDGEABLE: &str = r#"
        rule(#{ id: "t.pm25_day_not_judgeable", category: "emission", severity: "minor",
                watch: #{ points: ["pm25"] }, window: "24h",
                condition: |ctx| ctx.local_hour() == 0 && ctx.coverage("24h") > 0.5 && !ctx.valid_day() });"#;

    /// A reading per second of a test day (None: no reading).
    type Signal<'a> = &'a dyn Fn(i64) -> Option<f64>;

    /// Feeds `pm25` at 1 Hz for 26 h from local midnight (`value(second)`, None: no reading) to the
    /// shipped rules; returns every rule raised and when (seconds from midnight).
    fn pm25_at_1hz(value: Signal<'_>) -> Vec<(String, i64)> {
        let pack = format!("{}\n{NOT_JUDGEABLE}", include_str!("../../../rules/emissions.rhai"));
        let (mut e, mut states, _) = engine_with(&pack, &["pm25"]);
        let mut raised = Vec::new();
        for s in 0..26 * 3600 {
            let Some(v) = value(s) else { continue };
            sample(&mut e, &mut states, v, Now { wall: MIDNIGHT + s * S, mono: s * S });
            for c in e.take_changes() {
                if let Change::Open(n) = c {
                    raised.push((n.rule.to_string(), (n.at - MIDNIGHT) / S));
                }
            }
        }
        raised
    }

    /// GB 3095 by hand: the mean of the hourly means of the first day's hours with at least 45
    /// minutes of readings, if at least 20 hours have them.
    fn day_mean_by_hand(value: Signal<'_>) -> Option<f64> {
        let hours: Vec<f64> = (0..24)
            .filter_map(|h| {
                let v: Vec<f64> = (h * 3600..(h + 1) * 3600).filter_map(value).collect();
                (v.len() >= 45 * 60).then(|| v.iter().sum::<f64>() / v.len() as f64)
            })
            .collect();
        (hours.len() >= 20).then(|| hours.iter().sum::<f64>() / hours.len() as f64)
    }

    #[test]
    fn pm25_daily_mean_at_1hz_is_judged_on_the_calendar_day() {
        let limit = 75.0;
        // Hours alternate around 63 and 93 µg/m³ (mean about 78), with a ripple inside each hour.
        let high = |s: i64| Some(if (s / 3600) % 2 == 0 { 60.0 } else { 90.0 } + (s % 7) as f64);
        // The same with hours 3 to 7 missing: 19 valid hours.
        let gappy = |s: i64| if (3 * 3600..8 * 3600).contains(&s) { None } else { high(s) };
        // Hours alternate 70 and 80: a mean of exactly 75, on the limit.
        let on_limit = |s: i64| Some(if (s / 3600) % 2 == 0 { 70.0 } else { 80.0 });
        let cases: [(&str, Signal<'_>); 3] =
            [("high", &high), ("five hours missing", &gappy), ("on the limit", &on_limit)];
        for (name, value) in cases {
            let by_hand = day_mean_by_hand(value);
            let expected: Vec<(String, i64)> = match by_hand {
                // Judged with the first reading of the next local day.
                Some(m) if m > limit => vec![("emission.pm25_24h".into(), 24 * 3600)],
                Some(_) => vec![],
                // The first reading after the gap finds the 07:00 hour not judgeable.
                None => vec![
                    ("emission.data_availability".into(), 8 * 3600),
                    ("t.pm25_day_not_judgeable".into(), 24 * 3600),
                ],
            };
            assert_eq!(pm25_at_1hz(value), expected, "{name}: day mean by hand {by_hand:?}");
        }
        assert!(day_mean_by_hand(&high).is_some_and(|m| m > limit));
        assert_eq!(day_mean_by_hand(&gappy), None);
        assert_eq!(day_mean_by_hand(&on_limit), Some(75.0));
    }

    /// The reading of the test day's second `s`: a slow daily drift with a ripple.
    fn pm25_reading(s: i64) -> f64 {
        40.0 + (s / 3600) as f64 + (s % 61) as f64 * 0.5
    }

    /// Feeds `pm25` at 1 Hz from local midnight to the first second of the next day through the core,
    /// one batch per poll as the Modbus source hands them over, with a rule judging `avg("24h") > limit` in
    /// the first local hour (the only hour the test can judge it in, and cheaper to run).
    /// The read of second `exception` (if any) is answered with a Modbus exception, which the source
    /// turns into exactly this: the point's sample with quality bad and a NaN value (plus an event).
    /// Returns the 24 h window's mean, count and coverage at the end, and when the rule raised.
    fn day_through_the_core(limit: f64, exception: Option<i64>) -> (f64, f64, f64, Vec<i64>) {
        use crate::core::Core;
        use crate::metrics::Metrics;
        use crate::model::pool::SamplePool;
        use crate::model::time::ManualClock;
        use crate::model::Batch;

        let pack = format!(
            r#"rule(#{{ id: "t.pm25_mean", category: "emission", severity: "minor", watch: #{{ points: ["pm25"] }},
                 window: "24h", params: #{{ limit: {limit:?} }},
                 condition: |c| c.local_hour() == 0 && above(c.avg("24h"), c.param("limit")) }});"#
        );
        let (engine, _, registry) = engine_with(&pack, &["pm25"]);
        let clock = Arc::new(ManualClock::new(MIDNIGHT, 0));
        let metrics = Arc::new(Metrics::new(vec![], vec![], 10));
        let mut core = Core::new(registry, metrics, Arc::new(SamplePool::default()), 10)
            .with_clock(clock.clone())
            .with_engine(engine, vec![]);
        let mut raised = Vec::new();
        let end = 24 * 3600;
        for s in 0..=end {
            if s > 0 {
                clock.advance(S);
            }
            let ts = MIDNIGHT + s * S;
            let sample = if exception == Some(s) {
                Sample { point: PointId(0), quality: Quality::Bad, ts, value: f64::NAN }
            } else {
                Sample { point: PointId(0), quality: Quality::Good, ts, value: pm25_reading(s) }
            };
            let batch = core.apply(Batch::new(vec![sample], vec![]));
            core.finish(batch);
            raised.extend(raised_at(core.engine.as_mut().unwrap()).into_iter().map(|at| (at - MIDNIGHT) / S));
        }
        let now = MIDNIGHT + end * S;
        let w = &core.engine.as_ref().unwrap().windows[0];
        let day = 24 * HOUR;
        (
            w.aggregate(crate::core::window::Agg::Avg, day, now),
            w.aggregate(crate::core::window::Agg::Count, day, now),
            w.coverage(day, now),
            raised,
        )
    }

    /// One Modbus exception at noon of a 24 h window changes the mean by the exclusion of that one
    /// reading: its second counts as missing (the value before it does not stretch over it) and every
    /// other reading keeps its weight. A rule whose limit lies between the two means tells them apart.
    #[test]
    fn one_modbus_exception_changes_the_24h_mean_by_that_sample_only() {
        let n = 24 * 3600;
        let k = 12 * 3600 + 3;
        // Every reading holds for one second up to the end of the day, so the time-weighted mean of the
        // good readings is their plain mean.
        let all: f64 = (0..n).map(pm25_reading).sum();
        let mean_all = all / n as f64;
        let mean_without_k = (all - pm25_reading(k)) / (n - 1) as f64;
        // Had the exception been a missed poll, the reading before it would have held for two seconds.
        let mean_if_held = (all - pm25_reading(k) + pm25_reading(k - 1)) / n as f64;
        assert!(pm25_reading(k) < mean_all, "the hidden reading pulls the mean down");
        let limit = (mean_all + mean_without_k) / 2.0;

        let (good_mean, good_count, good_coverage, good_raised) = day_through_the_core(limit, None);
        let (exc_mean, exc_count, exc_coverage, exc_raised) = day_through_the_core(limit, Some(k));

        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        assert!(close(good_mean, mean_all), "{good_mean} vs {mean_all}");
        assert!(close(exc_mean, mean_without_k), "{exc_mean} vs {mean_without_k}");
        assert!(!close(exc_mean, mean_if_held) && !close(exc_mean, mean_all));
        // The sums differ by exactly the excluded reading.
        let removed = good_mean * n as f64 - exc_mean * (n - 1) as f64;
        assert!((removed - pm25_reading(k)).abs() < 1e-6, "{removed} vs {}", pm25_reading(k));
        // Counts include the first reading of the next day (at the span's end); one fewer with the exception.
        assert_eq!(good_count, (n + 1) as f64);
        assert_eq!(exc_count, n as f64);
        assert_eq!(good_coverage, 1.0);
        assert!((exc_coverage - (n - 1) as f64 / n as f64).abs() < 1e-12, "{exc_coverage}");
        // Judged when the window first spans the whole day, on the first reading of the next one.
        assert_eq!(good_raised, Vec::<i64>::new());
        assert_eq!(exc_raised, vec![n]);
    }
}
