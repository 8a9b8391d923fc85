//! The core task: the one owner of point state (latest value, quality, timestamp per point), of the
//! recent events and of the rule engine with its alarms. Sources feed it batches through a bounded
//! channel; the API asks it questions through a second channel. Nothing else touches the state, so the
//! hot path takes no lock. Incident changes leave through the incident store's bounded channel.
//!
//! Owns: point state, windows, the rule engine and alarm state machines, the live patrol tracker.
//! May import: `model`, `config`, `metrics`, `people` (the patrol tracker), and `incident`'s store
//! handle (to hand changes over).

pub mod alarm;
pub mod coverage;
pub mod engine;
pub mod packs;
pub mod rules;
pub mod window;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use self::engine::{Action, ActionError, Engine, RuleStats};
use self::rules::PackError;
use crate::incident::IncidentStore;
use crate::metrics::{add, Metrics};
use crate::model::pool::SamplePool;
use crate::model::time::{Clock, Now, SystemClock};
use crate::model::{Batch, DeviceId, Event, GridId, PointId, Quality, Registry};
use crate::people::patrol::{Acted, Coverage, Tracker};
use crate::people::Roster;

/// How often alarm timers (on/off delays, shelving, periodic rules) are checked, also under a flood of
/// batches.
const TICK: Duration = Duration::from_millis(50);
/// The shortest time between two ticks (ns).
const MS: i64 = 1_000_000;

/// The latest state of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointState {
    pub value: f64,
    /// UTC ns of the value; 0 until the first sample.
    pub ts: i64,
    pub quality: Quality,
    pub has_value: bool,
}

impl Default for PointState {
    fn default() -> Self {
        Self { value: 0.0, ts: 0, quality: Quality::Bad, has_value: false }
    }
}

/// Which points a query wants; `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct PointFilter {
    pub grid: Option<GridId>,
    /// The grids the asker may see; `None` is the whole site.
    pub scope: Option<Vec<GridId>>,
    pub device: Option<DeviceId>,
    pub category: Option<String>,
}

/// A question for the core.
#[derive(Debug)]
pub enum Query {
    /// Points that have a value and match the filter.
    Points { filter: PointFilter, reply: oneshot::Sender<Vec<(PointId, PointState)>> },
    /// Recent events, newest first.
    Events { limit: usize, scope: Option<Vec<GridId>>, reply: oneshot::Sender<Vec<Event>> },
    /// An operator acts on an incident; `Ok(false)` when no live alarm owns it.
    Act { incident: i64, action: Action, who: String, reply: oneshot::Sender<Result<bool, ActionError>> },
    /// The loaded rules with their counters, and the last load errors.
    Rules { reply: oneshot::Sender<RulesReport> },
    /// Swap in a new rule engine (a reload that compiled), keeping alarms of rules that remain.
    Reload { engine: Box<Engine>, reply: oneshot::Sender<()> },
    /// Open a `system` incident (data dropped, a store failing), from outside the core.
    System { rule: String, device: Option<DeviceId>, message: String },
    /// Patrol coverage of a grid over `[from, to]` (UTC ns), per shift of `roster`; `None` without
    /// checkpoints.
    Patrols { grid: String, roster: Option<Box<Roster>>, from: i64, to: i64, reply: oneshot::Sender<Option<Coverage>> },
    /// Record that a reload failed: the running rules stay.
    ReloadFailed { errors: Vec<PackError>, reply: oneshot::Sender<()> },
}

/// What `GET /api/v1/rules` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RulesReport {
    pub rules: Vec<RuleInfo>,
    /// Errors of the last load or reload that failed (the running rules were kept).
    pub errors: Vec<PackError>,
    pub loaded_at: String,
}

/// One loaded rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub category: String,
    pub severity: alarm::Severity,
    pub pack: String,
    pub watch_points: Vec<String>,
    pub watch_events: Vec<String>,
    pub on_delay_ms: i64,
    pub off_delay_ms: i64,
    pub plan: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Linkage actions run when an incident of the rule is raised, and when it returns.
    pub on_raise: Vec<String>,
    pub on_return: Vec<String>,
    #[serde(flatten)]
    pub stats: RuleStats,
}

/// The core task has stopped and answers no more.
#[derive(Debug, thiserror::Error)]
#[error("the core task has stopped")]
pub struct CoreStopped;

/// A cheap handle to ask the core questions.
#[derive(Debug, Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Query>,
}

impl CoreHandle {
    /// Latest states of the points matching `filter`.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn points(&self, filter: PointFilter) -> Result<Vec<(PointId, PointState)>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Points { filter, reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// The `limit` most recent events of devices in `scope` (`None`: every grid), newest first.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn events(&self, limit: usize, scope: Option<Vec<GridId>>) -> Result<Vec<Event>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Events { limit, scope, reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// Asks the alarm owning `incident` to act; `Ok(Ok(false))` when none does.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn act(
        &self,
        incident: i64,
        action: Action,
        who: String,
    ) -> Result<Result<bool, ActionError>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Act { incident, action, who, reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// Asks for a `system` incident without waiting; returns false when the core is busy or gone
    /// (the caller logs instead).
    pub fn system_incident(&self, rule: &str, message: String) -> bool {
        self.tx.try_send(Query::System { rule: rule.to_owned(), device: None, message }).is_ok()
    }

    /// As [`CoreHandle::system_incident`], about `device`: the incident carries its id and grid, so
    /// the people of that grid see it.
    pub fn system_incident_for(&self, rule: &str, device: DeviceId, message: String) -> bool {
        self.tx.try_send(Query::System { rule: rule.to_owned(), device: Some(device), message }).is_ok()
    }

    /// Patrol coverage of `grid` from `from` to `to` (UTC ns; slots that have not ended yet do not
    /// count), per shift of `roster`; `None` when no patrols are watched.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn patrols(
        &self,
        grid: String,
        roster: Option<Roster>,
        from: i64,
        to: i64,
    ) -> Result<Option<Coverage>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        let roster = roster.map(Box::new);
        self.tx.send(Query::Patrols { grid, roster, from, to, reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// The loaded rules.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn rules(&self) -> Result<RulesReport, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Rules { reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// Swaps in a freshly compiled engine, or records why a reload failed.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn reload(&self, result: Result<Engine, Vec<PackError>>) -> Result<(), CoreStopped> {
        let (reply, rx) = oneshot::channel();
        let q = match result {
            Ok(engine) => Query::Reload { engine: Box::new(engine), reply },
            Err(errors) => Query::ReloadFailed { errors, reply },
        };
        self.tx.send(q).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }
}

/// Point state and the recent events.
pub struct Core {
    registry: Arc<Registry>,
    states: Vec<PointState>,
    events: VecDeque<Event>,
    events_kept: usize,
    metrics: Arc<Metrics>,
    pool: Arc<SamplePool>,
    engine: Option<Engine>,
    pack_names: Vec<String>,
    load_errors: Vec<PackError>,
    loaded_at: i64,
    clock: Arc<dyn Clock>,
    /// Missed patrols, raised through the engine's incident ids and changes.
    patrols: Option<Tracker>,
    /// Sees every applied batch's samples (the edge history); must not wait.
    tap: Option<SampleTap>,
}

/// Something that sees the samples of every applied batch, on the core task: it must return at once.
pub type SampleTap = Box<dyn FnMut(&[crate::model::Sample]) + Send>;

impl Core {
    /// A core for every point of `registry`, keeping `events_kept` recent events.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, pool: Arc<SamplePool>, events_kept: usize) -> Self {
        Self {
            states: vec![PointState::default(); registry.points.len()],
            registry,
            events: VecDeque::with_capacity(events_kept.min(4096)),
            events_kept,
            metrics,
            pool,
            engine: None,
            pack_names: Vec::new(),
            load_errors: Vec::new(),
            loaded_at: 0,
            clock: Arc::new(SystemClock::new()),
            patrols: None,
            tap: None,
        }
    }

    /// Shows every applied batch's samples to `tap` (which must not wait).
    pub fn with_tap(mut self, tap: SampleTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Watches patrol checkpoints with `tracker` (its incidents need an engine).
    pub fn with_patrols(mut self, tracker: Tracker) -> Self {
        self.patrols = Some(tracker);
        self
    }

    /// Reads time from `clock` instead of the system's clocks.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Both readings of the core's clock now.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Runs `engine`'s rules on every batch from now on.
    pub fn with_engine(mut self, engine: Engine, pack_names: Vec<String>) -> Self {
        self.engine = Some(engine);
        self.pack_names = pack_names;
        self.loaded_at = self.clock.wall_ns();
        self
    }

    /// Records problems of the initial load, shown with the rules.
    pub fn with_load_errors(mut self, errors: Vec<PackError>) -> Self {
        self.load_errors = errors;
        self
    }

    /// Takes the incident changes the rules produced, to persist them.
    pub fn take_changes(&mut self) -> Vec<engine::Change> {
        self.engine.as_mut().map(Engine::take_changes).unwrap_or_default()
    }

    /// Advances alarm timers to `now`.
    pub fn tick(&mut self, now: Now) {
        if let Some(e) = &mut self.engine {
            e.tick(&self.states, now);
        }
        if let (Some(p), Some(e)) = (&mut self.patrols, &mut self.engine) {
            let mut out = Vec::new();
            p.tick(now.wall, &mut || e.allocate_incident(), &mut out);
            e.push_changes(&mut out);
        }
    }

    /// Applies one batch: newer samples replace the latest value, older ones are counted and skipped.
    /// Returns the batch's samples (and its acknowledgement) for forwarding.
    pub fn apply(&mut self, mut batch: Batch) -> Batch {
        let mut out_of_order = 0u64;
        let now = self.clock.now();
        // Rules run once per device reading (the samples of one device at one time, which arrive
        // together), so a value that comes and goes within one batch is still seen.
        let mut reading: Option<(DeviceId, i64)> = None;
        for s in &batch.samples {
            if self.states.get(s.point.0 as usize).is_none() {
                continue;
            }
            if let Some(e) = &mut self.engine {
                let this = (self.registry.point(s.point).device, s.ts);
                if reading.is_some_and(|r| r != this) {
                    e.evaluate_dirty(&self.states, now);
                }
                reading = Some(this);
            }
            let state = &mut self.states[s.point.0 as usize];
            if state.has_value && s.ts < state.ts {
                out_of_order += 1;
                continue;
            }
            let old = state.has_value.then_some(state.value);
            *state = PointState { value: s.value, ts: s.ts, quality: s.quality, has_value: true };
            if let Some(e) = &mut self.engine {
                e.on_sample(s, old, now);
            }
        }
        if let Some(e) = &mut self.engine {
            e.evaluate_dirty(&self.states, now);
            for ev in &batch.events {
                e.on_event(ev, &self.states, now);
                if let Some(p) = &mut self.patrols {
                    let mut out = Vec::new();
                    p.on_event(ev, &self.registry.device(ev.device).id, now.wall, &mut out);
                    e.push_changes(&mut out);
                }
            }
        }
        if let Some(tap) = &mut self.tap {
            tap(&batch.samples);
        }
        let m = &self.metrics.core;
        add(&m.batches, 1);
        add(&m.samples, batch.samples.len() as u64);
        if out_of_order > 0 {
            add(&m.out_of_order, out_of_order);
        }
        if !batch.events.is_empty() {
            add(&m.events, batch.events.len() as u64);
            for e in batch.events.drain(..) {
                if self.events.len() >= self.events_kept {
                    self.events.pop_front();
                }
                if self.events_kept > 0 {
                    self.events.push_back(e);
                }
            }
        }
        batch
    }

    /// Done with a batch that is not forwarded: it is durable as far as this gateway goes.
    pub fn finish(&self, mut batch: Batch) {
        batch.confirm();
        self.pool.put(batch.samples);
    }

    /// Answers one query.
    pub fn answer(&mut self, query: Query) {
        match query {
            Query::Points { filter, reply } => {
                let reg = &self.registry;
                let out = self
                    .states
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.has_value)
                    .map(|(i, s)| (PointId(i as u32), *s))
                    .filter(|(id, _)| {
                        let device_id = reg.point(*id).device;
                        let device = reg.device(device_id);
                        !device.retired
                            && filter.device.is_none_or(|d| d == device_id)
                            && filter.grid.is_none_or(|g| g == device.grid)
                            && filter.scope.as_ref().is_none_or(|s| s.contains(&device.grid))
                            && filter.category.as_ref().is_none_or(|c| *c == device.category)
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Query::Events { limit, scope, reply } => {
                let reg = &self.registry;
                let seen = |e: &&Event| scope.as_ref().is_none_or(|s| s.contains(&reg.device(e.device).grid));
                let _ = reply.send(self.events.iter().rev().filter(seen).take(limit).cloned().collect());
            }
            Query::Act { incident, action, who, reply } => {
                let now = self.clock.now();
                let patrol = match (&mut self.patrols, &mut self.engine, &action) {
                    (Some(p), Some(e), Action::Ack | Action::Close) => {
                        let mut out = Vec::new();
                        let acted = p.act(incident, action == Action::Close, &who, now.wall, &mut out);
                        e.push_changes(&mut out);
                        acted
                    }
                    _ => None,
                };
                let r = match (patrol, &mut self.engine) {
                    (Some(Acted::Done), _) => Ok(true),
                    (Some(Acted::StillActive), _) => Err(ActionError::StillActive(incident)),
                    (Some(Acted::NotOpen), _) => Err(ActionError::NotOpen(incident)),
                    (None, Some(e)) => e.act(incident, action, &who, now),
                    (None, None) => Ok(false),
                };
                let _ = reply.send(r);
            }
            Query::Rules { reply } => {
                let _ = reply.send(self.rules_report());
            }
            Query::Reload { engine, reply } => {
                let mut engine = *engine;
                if let Some(old) = self.engine.take() {
                    engine.adopt(old, self.clock.now());
                }
                // A reload may bring devices: their points get state here before any source can
                // name them (sources see the new registry only after this reply).
                self.registry = engine.registry().clone();
                let n = self.registry.points.len();
                if self.states.len() < n {
                    self.states.resize(n, PointState::default());
                }
                info!(rules = engine.rules().len(), "Rules reloaded.");
                self.engine = Some(engine);
                self.load_errors.clear();
                self.loaded_at = self.clock.wall_ns();
                let _ = reply.send(());
            }
            Query::System { rule, device, message } => {
                if let Some(engine) = &mut self.engine {
                    engine.system_incident(self.clock.wall_ns(), &rule, device.unwrap_or(DeviceId(u32::MAX)), message);
                }
            }
            Query::Patrols { grid, roster, from, to, reply } => {
                let now = self.clock.wall_ns();
                let _ = reply.send(self.patrols.as_ref().map(|p| p.coverage(&grid, roster.as_deref(), from, to, now)));
            }
            Query::ReloadFailed { errors, reply } => {
                for e in &errors {
                    error!(error = %e, "Rule reload failed; the running rules stay.");
                }
                if let Some(engine) = &mut self.engine {
                    let msg = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    engine.system_incident(
                        self.clock.wall_ns(),
                        "reload",
                        DeviceId(u32::MAX),
                        format!("rule reload failed, running rules kept: {msg}"),
                    );
                }
                self.load_errors = errors;
                let _ = reply.send(());
            }
        }
    }

    fn rules_report(&self) -> RulesReport {
        let Some(e) = &self.engine else {
            return RulesReport { errors: self.load_errors.clone(), ..RulesReport::default() };
        };
        let stats = e.stats();
        let rules = e
            .rules()
            .iter()
            .zip(stats)
            .map(|(r, stats)| RuleInfo {
                id: r.id.clone(),
                title: r.title.clone(),
                category: r.category.clone(),
                severity: r.severity,
                pack: e.pack_name(r.pack).to_owned(),
                watch_points: r.watch.points.clone(),
                watch_events: r.watch.events.clone(),
                on_delay_ms: r.behaviour.on_delay / 1_000_000,
                off_delay_ms: r.behaviour.off_delay / 1_000_000,
                plan: r.plan.clone(),
                on_raise: r.on_raise.clone(),
                on_return: r.on_return.clone(),
                params: r
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::to_value(v.to_string()).unwrap_or_default()))
                    .map(|(k, v)| {
                        let num = v.as_str().and_then(|s| s.parse::<f64>().ok()).and_then(serde_json::Number::from_f64);
                        (k, num.map_or(v, serde_json::Value::Number))
                    })
                    .collect(),
                stats,
            })
            .collect();
        RulesReport { rules, errors: self.load_errors.clone(), loaded_at: crate::model::time::fmt_ns(self.loaded_at) }
    }
}

/// Starts the core task; it ends when every batch sender is gone and the channel is drained. Incident
/// changes go to `store` (in order, waiting for room: back-pressure, never a silent drop).
pub fn spawn(
    core: Core,
    batches: mpsc::Receiver<Batch>,
    store: Option<IncidentStore>,
    forward: Option<mpsc::Sender<Batch>>,
) -> (CoreHandle, tokio::task::JoinHandle<()>) {
    spawn_with_tap(core, batches, store, forward, None)
}

/// [`spawn`], handing the incident changes to `tap` when there is no store (tests watch them there).
fn spawn_with_tap(
    mut core: Core,
    mut batches: mpsc::Receiver<Batch>,
    store: Option<IncidentStore>,
    forward: Option<mpsc::Sender<Batch>>,
    tap: Option<mpsc::UnboundedSender<engine::Change>>,
) -> (CoreHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut queries) = mpsc::channel::<Query>(64);
    let task = tokio::spawn(async move {
        let mut applied: u64 = 0;
        // Timers run on a deadline checked before every turn, not as a select arm: under a sustained
        // flood the batch arm is always ready and would starve them (off-delays, staleness and
        // shelving expiry would wait for the flood to end).
        // The deadline is on the core's monotonic clock, the one the alarms run on.
        let tick_ns = i64::try_from(TICK.as_nanos()).unwrap_or(i64::MAX);
        let mut next_tick = core.clock.mono_ns().saturating_add(tick_ns);
        let mut last_tick = i64::MIN;
        // Ticks come every 50 ms at the latest and, besides, exactly when the earliest alarm timer is
        // due (never more often than once a millisecond), so delays and silence fire on time.
        let due = |core: &Core, next_tick: i64, last_tick: i64| {
            core.engine.as_ref().map_or(next_tick, |e| next_tick.min(e.wake_at().max(last_tick.saturating_add(MS))))
        };
        loop {
            let mono = core.clock.mono_ns();
            if core.engine.is_some() && mono >= due(&core, next_tick, last_tick) {
                let now = core.now();
                core.tick(now);
                last_tick = now.mono;
                next_tick = now.mono.saturating_add(tick_ns);
                let changes = core.take_changes();
                if !changes.is_empty() {
                    persist(changes, None, store.as_ref(), tap.as_ref()).await;
                }
            }
            let mono = core.clock.mono_ns();
            let idle =
                Duration::from_nanos(u64::try_from(due(&core, next_tick, last_tick).saturating_sub(mono)).unwrap_or(0));
            // Batches first, so an answer reflects everything already handed over; every 64 batches
            // the queries get a turn, so a flood of samples cannot starve the API.
            tokio::select! {
                biased;
                batch = batches.recv() => match batch {
                    Some(b) => {
                        let b = core.apply(b);
                        // The incident changes a batch caused are part of what its messages promise:
                        // the source acknowledges them only once these are committed too.
                        let changes = core.take_changes();
                        if !changes.is_empty() {
                            let ack = b.ack.as_ref().map(crate::model::Ack::share);
                            persist(changes, ack, store.as_ref(), tap.as_ref()).await;
                        }
                        match &forward {
                            // Waiting for room here slows the sources: back-pressure from the outbox.
                            Some(f) => {
                                if let Err(mpsc::error::SendError(b)) = f.send(b).await {
                                    core.pool.put(b.samples);
                                }
                            }
                            None => core.finish(b),
                        }
                        applied += 1;
                        if applied % 64 == 0 {
                            while let Ok(q) = queries.try_recv() {
                                core.answer(q);
                            }
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(idle), if core.engine.is_some() => {}
                Some(q) = queries.recv() => core.answer(q),
            }
            let changes = core.take_changes();
            if !changes.is_empty() {
                persist(changes, None, store.as_ref(), tap.as_ref()).await;
            }
        }
        info!(samples = core.metrics.core.samples.load(std::sync::atomic::Ordering::Relaxed), "Core stopped.");
    });
    (CoreHandle { tx }, task)
}

async fn persist(
    changes: Vec<engine::Change>,
    ack: Option<crate::model::Ack>,
    store: Option<&IncidentStore>,
    tap: Option<&mpsc::UnboundedSender<engine::Change>>,
) {
    match store {
        Some(s) => {
            if let Err(e) = s.apply(changes, ack).await {
                crate::incident::warn_stopped(&e);
            }
        }
        None => {
            for c in changes {
                info!(change = ?c, "Incident change (no store configured).");
                if let Some(t) = tap {
                    let _ = t.send(c);
                }
            }
            if let Some(a) = ack {
                a.confirm();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::Change;
    use crate::model::time::ManualClock;
    use crate::model::Sample;

    const MS: i64 = 1_000_000;
    /// 2026-06-01T10:00:00+08:00.
    const WALL: i64 = 1_780_279_200_000_000_000;

    /// Waits (at most 10 s) until `n` changes have come through `tap`.
    async fn changes(n: usize, seen: &mut Vec<Change>, tap: &mut mpsc::UnboundedReceiver<Change>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < n {
            match tokio::time::timeout_at(deadline, tap.recv()).await {
                Ok(Some(c)) => seen.push(c),
                _ => panic!("waited for {n} changes, got {seen:?}"),
            }
        }
    }

    /// A checkpoint of device `d1` not scanned within its 1 h interval raises exactly one `patrol`
    /// incident through the core (with an id from the engine's sequence); a `checkpoint_scanned` event
    /// returns it, and the supervisor's acknowledgement closes it.
    #[tokio::test]
    async fn a_missed_patrol_raises_one_incident_and_a_scan_returns_it() {
        let pack = r#"rule(#{ id: "t.x", category: "electrical", severity: "minor",
            watch: #{ points: ["x"] }, condition: |c| c.value > 1.0 });"#;
        let (engine, _, registry) = engine::tests::engine_with(pack, &["x"]);
        let clock = Arc::new(ManualClock::new(WALL, 0));
        let cp: crate::config::Checkpoint = toml::from_str("id = \"cp-1\"\nevery = \"1h\"").unwrap();
        let tz = chrono_tz::Asia::Shanghai;
        let tracker = Tracker::new(vec![crate::people::patrol::Checkpoint::from_config("g1", &cp).unwrap()], tz, WALL);
        let metrics = Arc::new(Metrics::new(vec![], vec![], 10));
        let core = Core::new(registry, metrics, Arc::new(SamplePool::default()), 10)
            .with_clock(clock.clone())
            .with_engine(engine, vec![])
            .with_patrols(tracker);
        let (tx, rx) = mpsc::channel::<Batch>(4);
        let (tap_tx, mut tap) = mpsc::unbounded_channel();
        let (handle, task) = spawn_with_tap(core, rx, None, None, Some(tap_tx));
        let mut seen: Vec<Change> = Vec::new();
        // 10:00 + 59 min: the slot 10:00–11:00 has not ended; the core ticks but raises nothing.
        clock.advance(59 * 60 * 1_000 * MS);
        assert!(handle.rules().await.is_ok());
        clock.advance(60 * 1_000 * MS);
        // The core ticks past the slot end (at the latest 50 ms of real time later).
        changes(1, &mut seen, &mut tap).await;
        let Some(Change::Open(inc)) = seen.first() else { panic!("no patrol incident: {seen:?}") };
        assert_eq!(
            (inc.rule.as_str(), inc.category.as_str(), inc.device.as_str()),
            ("patrol.missed", "patrol", "cp-1")
        );
        let id = inc.id;
        assert_eq!(id, 1, "from the engine's incident sequence");
        // Three more unscanned hours: still one incident.
        clock.advance(3 * 3_600 * 1_000 * MS);
        assert!(handle.rules().await.is_ok());
        let scan = Event {
            device: DeviceId(0),
            kind: "checkpoint_scanned".into(),
            ts: clock.wall_ns(),
            attributes: serde_json::json!({ "checkpoint": "cp-1", "officer": "wang" }).as_object().unwrap().clone(),
        };
        tx.send(Batch::new(vec![], vec![scan])).await.unwrap();
        changes(2, &mut seen, &mut tap).await;
        assert!(
            matches!(&seen[1], Change::Update(u) if u.id == id && u.kind == "returned"),
            "the scan returns the one incident: {seen:?}"
        );
        assert_eq!(handle.act(id, Action::Close, "li".into()).await.unwrap(), Ok(true));
        changes(4, &mut seen, &mut tap).await;
        assert!(matches!(&seen[3], Change::Update(u) if u.kind == "closed" && u.who.as_deref() == Some("li")));
        assert_eq!(seen.iter().filter(|c| matches!(c, Change::Open(_))).count(), 1);
        drop(tx);
        task.await.unwrap();
    }

    /// Under a flood of batches that never lets the channel run empty, a pending off-delay still
    /// returns at its due time (within the clock's 1 ms step), not at the next tick. Deterministic: the channel is full before the
    /// core starts, and time is a manual clock that moves 1 ms per batch the core hands on, so no
    /// real time passes in the test.
    #[tokio::test]
    async fn timers_run_on_time_under_a_flood() {
        let pack = r#"rule(#{ id: "t.x", category: "electrical", severity: "minor",
            watch: #{ points: ["x"] }, condition: |c| c.value > 1.0, off_delay: "1s" });"#;
        let (engine, _, registry) = engine::tests::engine_with(pack, &["x", "y"]);
        let (x, y) = (PointId(0), PointId(1));
        assert_eq!(registry.point(y).name, "y");
        let clock = Arc::new(ManualClock::new(WALL, 0));
        let metrics = Arc::new(Metrics::new(vec![], vec![], 10));
        let core = Core::new(registry, metrics, Arc::new(SamplePool::default()), 10)
            .with_clock(clock.clone())
            .with_engine(engine, vec![]);
        let sample = |point: PointId, value: f64| {
            Batch::new(vec![Sample { point, quality: Quality::Good, ts: WALL, value }], vec![])
        };
        // Raise, then 3 s of readings of a point the rule does not watch (only the timer can return
        // the alarm), with the condition clearing 200 ms in.
        const FLOOD: usize = 3_000;
        let (tx, rx) = mpsc::channel::<Batch>(FLOOD + 2);
        tx.try_send(sample(x, 5.0)).unwrap();
        for i in 0..FLOOD {
            tx.try_send(sample(y, 1.0)).unwrap();
            if i == 200 {
                tx.try_send(sample(x, 0.0)).unwrap();
            }
        }
        drop(tx);
        let (fwd_tx, mut fwd_rx) = mpsc::channel::<Batch>(1);
        let (tap_tx, mut tap) = mpsc::unbounded_channel();
        let (_handle, task) = spawn_with_tap(core, rx, None, Some(fwd_tx), Some(tap_tx));

        let mut cleared = None;
        let mut handed_on = 0;
        while let Some(mut b) = fwd_rx.recv().await {
            if b.samples.iter().any(|s| s.point == x && s.value == 0.0) {
                cleared = Some(clock.wall_ns());
            }
            handed_on += 1;
            b.confirm();
            clock.advance(MS);
        }
        task.await.unwrap();
        assert_eq!(handed_on, FLOOD + 2);
        let cleared = cleared.expect("the clearing batch was handed on");
        let changes: Vec<Change> = std::iter::from_fn(|| tap.try_recv().ok()).collect();
        let returned = changes.iter().find_map(|c| match c {
            Change::Update(u) if u.kind == "returned" => Some(u.at),
            _ => None,
        });
        let returned = returned.unwrap_or_else(|| panic!("no return in {changes:?}"));
        let due = cleared + 1_000 * MS;
        assert!(
            // The core wakes at the timer's deadline, not at the next 50 ms tick. `cleared` is read
            // when the batch is handed on, up to one batch (1 ms) after the core applied it.
            (due - 2 * MS..=due + 2 * MS).contains(&returned),
            "returned {} ms after its due time (the flood lasted {} ms)",
            (returned - due) / MS,
            FLOOD
        );
    }
}
