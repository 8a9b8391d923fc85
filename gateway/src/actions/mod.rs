//! Linkage (联动): commands to the park's devices and systems, only those declared in `[[actions]]`,
//! with the safeguards an industrial control engineer insists on. Where a command cannot be proven
//! safe it is refused with its reason and nothing is written.
//!
//! Every request goes through one engine task, in order: the action must be declared, the value
//! allowed, the trigger permitted (a rule named by the action, or a person of the action's role who
//! sees the device's grid and gives a reason), the cool-down over, the rate limit not reached, and
//! every interlock true on a fresh reading of good quality. A critical action asked by hand waits for
//! a second authorised person (two-person rule) and expires after `confirm_secs`; the checks run
//! again when it is confirmed. A Modbus action writes its points and reads them back within
//! `readback_ms`; an HTTP action must answer its expected status within that time. A mismatch, an
//! error or a timeout fails the action and raises a `system` incident of its own.
//!
//! Each outcome — done, refused, failed, awaiting confirmation, expired — is kept (the last
//! [`LEDGER`] in memory, for `GET /api/v1/actions`), counted (`/metrics`) and recorded in the audit
//! trail, which the outbox forwards to the central store.
//!
//! Owns: the engine, its ledger and counters. May import: `config`, `source` (the Modbus command),
//! `core` (latest readings for interlocks, `system` incidents), `audit`, `auth` (roles).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::Role;
use crate::config::actions::{Action, ActionKind};
use crate::config::Config;
use crate::core::{CoreHandle, PointFilter};
use crate::model::{Quality, Registry};

/// Outcomes kept for the API.
pub const LEDGER: usize = 1_000;
/// A rule's raise or return older than this (s) is not acted on: after a long stop the situation
/// that asked for the action may be over.
pub const FRESH_SECS: f64 = 60.0;

/// Who asks.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A rule raising (or escalating) or returning, for one of its incidents, at `at` (UTC ns of
    /// the change), at the incident's `severity`.
    Rule { rule: String, incident: i64, at: i64, severity: String },
    /// A person (or token) through the API.
    Manual(Caller),
}

/// A person asking or confirming.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The grids the caller is limited to; `None` is the whole site.
    pub grids: Option<Vec<String>>,
    /// Where from (the client's address).
    pub source: String,
    pub reason: String,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Done,
    Refused,
    Failed,
    AwaitingConfirmation,
    Expired,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::Expired => "expired",
        }
    }
}

/// One request and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Request number, unique while the gateway runs.
    pub id: u64,
    pub action: String,
    pub device: String,
    pub grid: String,
    pub value: Option<f64>,
    /// `rule` or `manual`.
    pub trigger: &'static str,
    pub rule: Option<String>,
    pub incident: Option<i64>,
    /// Who asked (a rule's id for rules).
    pub who: String,
    pub reason: String,
    pub confirmed_by: Option<String>,
    pub state: State,
    /// Why it was refused or failed, or what was read back.
    pub detail: String,
    /// Values read back, in the order of the action's points.
    pub read_back: Vec<f64>,
    /// UTC ns.
    pub requested_at: i64,
    pub finished_at: Option<i64>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ActionMetrics {
    pub done: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    pub awaiting: AtomicU64,
}

enum Msg {
    Request { action: String, value: Option<f64>, trigger: Trigger, reply: oneshot::Sender<Record> },
    Confirm { id: u64, caller: Caller, reply: oneshot::Sender<Record> },
}

/// The engine's handle: ask, confirm, list. Cheap to clone.
#[derive(Clone)]
pub struct Actions {
    tx: mpsc::Sender<Msg>,
    ledger: Arc<Mutex<VecDeque<Record>>>,
    pub metrics: Arc<ActionMetrics>,
    pub declared: Arc<Vec<Action>>,
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions").field("declared", &self.declared.len()).finish_non_exhaustive()
    }
}

/// The engine has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the action engine has stopped")]
pub struct Stopped;

impl Actions {
    /// Asks for `action` (with `value`, or the action's own for rules); the answer is the outcome, or
    /// `AwaitingConfirmation` for a critical manual action.
    ///
    /// # Errors
    /// [`Stopped`] once the engine has shut down.
    pub async fn request(&self, action: &str, value: Option<f64>, trigger: Trigger) -> Result<Record, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Request { action: action.to_owned(), value, trigger, reply }).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Confirms request `id` as the second person.
    ///
    /// # Errors
    /// [`Stopped`] once the engine has shut down.
    pub async fn confirm(&self, id: u64, caller: Caller) -> Result<Record, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Confirm { id, caller, reply }).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// The kept outcomes, newest first.
    pub fn recent(&self) -> Vec<Record> {
        self.ledger.lock().map(|l| l.iter().rev().cloned().collect()).unwrap_or_default()
    }
}

/// Starts the engine; it ends at `shutdown`.
pub fn start(
    config: Arc<Config>,
    registry: Arc<Registry>,
    core: CoreHandle,
    audit: AuditLog,
    shutdown: CancellationToken,
) -> (Actions, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let ledger = Arc::new(Mutex::new(VecDeque::with_capacity(LEDGER)));
    let metrics = Arc::new(ActionMetrics::default());
    let declared = Arc::new(config.actions.clone());
    let handle = Actions { tx, ledger: ledger.clone(), metrics: metrics.clone(), declared };
    // Parsed once: a command must not wait for the register maps to be read again.
    let profiles = Arc::new(crate::source::modbus::profile::load_all(&config.modbus.profile_dirs).unwrap_or_default());
    let engine = Engine {
        profiles,
        config,
        registry,
        core,
        audit,
        ledger,
        metrics,
        next: 1,
        runs: HashMap::new(),
        pending: BTreeMap::new(),
    };
    (handle, tokio::spawn(engine.run(rx, shutdown)))
}

struct Pending {
    record: Record,
    requester: Caller,
    deadline: Instant,
}

struct Engine {
    config: Arc<Config>,
    profiles: Arc<BTreeMap<String, crate::source::modbus::profile::Profile>>,
    registry: Arc<Registry>,
    core: CoreHandle,
    audit: AuditLog,
    ledger: Arc<Mutex<VecDeque<Record>>>,
    metrics: Arc<ActionMetrics>,
    next: u64,
    /// Start times of each action's executions within its rate window (cool-down: the last).
    runs: HashMap<String, VecDeque<Instant>>,
    pending: BTreeMap<u64, Pending>,
}

fn now_ns() -> i64 {
    crate::model::time::now_ns()
}

impl Engine {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Msg::Request { action, value, trigger, reply }) => {
                        let r = self.request(&action, value, trigger).await;
                        let _ = reply.send(r);
                    }
                    Some(Msg::Confirm { id, caller, reply }) => {
                        let r = self.confirm(id, caller).await;
                        let _ = reply.send(r);
                    }
                    None => return,
                },
                _ = tick.tick() => self.expire(),
                () = shutdown.cancelled() => return,
            }
        }
    }

    fn action(&self, id: &str) -> Option<&Action> {
        self.config.actions.iter().find(|a| a.id == id)
    }

    fn grid_of(&self, device: &str) -> String {
        self.registry
            .device_id(device)
            .map(|d| self.registry.grid(self.registry.device(d).grid).id.clone())
            .unwrap_or_default()
    }

    fn record(&mut self, action: &str, value: Option<f64>, trigger: &Trigger) -> Record {
        let id = self.next;
        self.next += 1;
        let device = self.action(action).map(|a| a.device.clone()).unwrap_or_default();
        let (kind, rule, incident, who, reason) = match trigger {
            Trigger::Rule { rule, incident, .. } => {
                ("rule", Some(rule.clone()), Some(*incident), rule.clone(), String::new())
            }
            Trigger::Manual(c) => ("manual", None, None, c.name.clone(), c.reason.clone()),
        };
        Record {
            id,
            action: action.to_owned(),
            grid: self.grid_of(&device),
            device,
            value,
            trigger: kind,
            rule,
            incident,
            who,
            reason,
            confirmed_by: None,
            state: State::Refused,
            detail: String::new(),
            read_back: Vec::new(),
            requested_at: now_ns(),
            finished_at: None,
        }
    }

    async fn request(&mut self, action: &str, value: Option<f64>, trigger: Trigger) -> Record {
        let mut r = self.record(action, value, &trigger);
        let Some(a) = self.action(action).cloned() else {
            return self
                .refuse(r, format!("action {action:?} is not declared in [[actions]]; nothing undeclared is written"));
        };
        let value = match (value, &trigger) {
            (Some(v), Trigger::Manual(_)) => Some(v),
            _ => a.value,
        };
        r.value = value;
        let Some(v) = value else {
            return self.refuse(r, "no value given and the action declares none".into());
        };
        if !a.allowed.contains(&v) {
            return self.refuse(r, format!("value {v} is not one of the allowed values {:?}", a.allowed));
        }
        match &trigger {
            Trigger::Rule { rule, .. } if !a.rules.contains(rule) => {
                return self.refuse(r, format!("rule {rule:?} may not trigger this action (allowed: {:?})", a.rules));
            }
            Trigger::Rule { at, severity, .. } => {
                let rank = |s: &str| crate::config::actions::SEVERITIES.iter().position(|x| *x == s);
                if let Some(min) = &a.min_severity {
                    if rank(severity) < rank(min) {
                        return self.refuse(r, format!("the incident is {severity}; this action needs {min} or more"));
                    }
                }
                let age = (now_ns() - at) as f64 / 1e9;
                if age > FRESH_SECS {
                    return self.refuse(
                        r,
                        format!("the alarm changed {age:.0} s ago (before a restart?); linkage acts only on alarms at most {FRESH_SECS} s old"),
                    );
                }
            }
            Trigger::Manual(c) => {
                if let Err(why) = self.may(&a, c, &r.grid) {
                    return self.refuse(r, why);
                }
                if c.reason.trim().is_empty() {
                    return self.refuse(r, "a reason is required for a manual action".into());
                }
            }
        }
        if let Err(why) = self.limits(&a) {
            return self.refuse(r, why);
        }
        if let Err(why) = self.interlocks(&a).await {
            return self.refuse(r, why);
        }
        if let (true, Trigger::Manual(c)) = (a.critical, &trigger) {
            r.state = State::AwaitingConfirmation;
            r.detail = format!("critical: a second authorised person must confirm within {} s", a.confirm_secs);
            self.metrics.awaiting.fetch_add(1, Relaxed);
            self.audit_record(&r, c.source.clone());
            self.keep(&r);
            let deadline = Instant::now() + Duration::from_secs(a.confirm_secs);
            self.pending.insert(r.id, Pending { record: r.clone(), requester: c.clone(), deadline });
            return r;
        }
        self.execute(&a, v, r).await
    }

    /// Whether `c` may trigger `a` on a device of `grid` by hand.
    fn may(&self, a: &Action, c: &Caller, grid: &str) -> Result<(), String> {
        let Some(need) = a.role.as_deref().and_then(Role::parse) else {
            return Err("this action is for rules only; no role may trigger it by hand".into());
        };
        if c.role < need {
            return Err(format!("role {} may not trigger this action (needs {})", c.role.as_str(), need.as_str()));
        }
        if c.grids.as_ref().is_some_and(|g| !g.iter().any(|x| x == grid)) {
            return Err(format!("the device is in grid {grid:?}, outside the caller's grids"));
        }
        Ok(())
    }

    /// Cool-down and rate limit, at the time of asking.
    fn limits(&mut self, a: &Action) -> Result<(), String> {
        let now = Instant::now();
        let runs = self.runs.entry(a.id.clone()).or_default();
        let window = a.rate_limit.map_or(Duration::ZERO, |l| Duration::from_secs(l.per_secs));
        let keep = window.max(Duration::from_secs(a.cooldown_secs));
        while runs.front().is_some_and(|t| now.duration_since(*t) > keep) {
            runs.pop_front();
        }
        if let Some(last) = runs.back() {
            let since = now.duration_since(*last);
            if since < Duration::from_secs(a.cooldown_secs) {
                return Err(format!(
                    "cooling down: {} s left of {} s",
                    (a.cooldown_secs as f64 - since.as_secs_f64()).ceil(),
                    a.cooldown_secs
                ));
            }
        }
        if let Some(l) = a.rate_limit {
            let n = runs.iter().filter(|t| now.duration_since(**t) <= window).count();
            if n >= l.count as usize {
                return Err(format!("rate limit reached: {} per {} s", l.count, l.per_secs));
            }
        }
        Ok(())
    }

    /// Every interlock on the latest reading, which must be fresh and of good quality.
    async fn interlocks(&self, a: &Action) -> Result<(), String> {
        for l in &a.interlocks {
            let reg = &self.registry;
            let Some(device) = reg.device_id(&l.device) else {
                return Err(format!("interlock device {:?} is unknown", l.device));
            };
            let filter = PointFilter { device: Some(device), ..PointFilter::default() };
            let points = self
                .core
                .points(filter)
                .await
                .map_err(|_| "the core has stopped; interlocks cannot be read".to_string())?;
            let Some((_, st)) = points.iter().find(|(p, _)| reg.point(*p).name == l.point) else {
                return Err(format!("interlock {}/{} has no reading", l.device, l.point));
            };
            if !st.has_value {
                return Err(format!("interlock {}/{} has no reading yet", l.device, l.point));
            }
            if st.quality != Quality::Good {
                return Err(format!("interlock {}/{} is of {:?} quality", l.device, l.point, st.quality));
            }
            let age = (now_ns() - st.ts) as f64 / 1e9;
            if age > l.max_age_secs as f64 {
                return Err(format!(
                    "interlock {}/{} is stale: {age:.0} s old (at most {} s)",
                    l.device, l.point, l.max_age_secs
                ));
            }
            if !l.holds(st.value) {
                return Err(format!(
                    "interlock {}/{} {} {} does not hold (reads {})",
                    l.device, l.point, l.op, l.value, st.value
                ));
            }
        }
        Ok(())
    }

    async fn confirm(&mut self, id: u64, c: Caller) -> Record {
        let Some(p) = self.pending.get(&id) else {
            let mut r = self.record("", None, &Trigger::Manual(c.clone()));
            r.detail = format!("request {id} is not awaiting confirmation (unknown, done or expired)");
            r.id = id;
            return r;
        };
        let Some(a) = self.action(&p.record.action).cloned() else {
            let r = self
                .pending
                .remove(&id)
                .map(|p| p.record)
                .unwrap_or_else(|| self.record("", None, &Trigger::Manual(c.clone())));
            return self.refuse(r, "the action is no longer declared".into());
        };
        // The confirmation is refused, the request keeps waiting.
        let mut answer = p.record.clone();
        if c.name == p.requester.name {
            answer.detail = "the second person must be someone other than the one who asked".into();
            self.audit_confirm(&answer, &c, "refused");
            return answer;
        }
        if let Err(why) = self.may(&a, &c, &answer.grid) {
            answer.detail = format!("confirmation refused: {why}");
            self.audit_confirm(&answer, &c, "refused");
            return answer;
        }
        let Some(Pending { mut record, .. }) = self.pending.remove(&id) else { return answer };
        self.metrics.awaiting.fetch_sub(1, Relaxed);
        record.confirmed_by = Some(c.name.clone());
        self.audit_confirm(&record, &c, "ok");
        if let Err(why) = self.limits(&a) {
            return self.refuse(record, why);
        }
        if let Err(why) = self.interlocks(&a).await {
            return self.refuse(record, why);
        }
        let v = record.value.unwrap_or_default();
        self.execute(&a, v, record).await
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                self.metrics.awaiting.fetch_sub(1, Relaxed);
                let mut r = p.record;
                r.state = State::Expired;
                r.detail = "no second person confirmed in time; nothing was written".into();
                r.finished_at = Some(now_ns());
                self.finish(r);
            }
        }
    }

    /// Runs the command, counting the run from its start. Commands run one at a time: a second
    /// waits for the first's read-back (at most its deadline), so two never interleave on a device.
    async fn execute(&mut self, a: &Action, value: f64, r: Record) -> Record {
        self.runs.entry(a.id.clone()).or_default().push_back(Instant::now());
        let config = self.config.clone();
        let profiles = self.profiles.clone();
        let a = a.clone();
        let started = r.clone();
        let task = tokio::spawn(async move {
            let mut r = started;
            match run(&config, &profiles, &a, value, &r).await {
                Ok((read, detail)) => {
                    r.state = State::Done;
                    r.read_back = read;
                    r.detail = detail;
                }
                Err((read, why)) => {
                    r.state = State::Failed;
                    r.read_back = read;
                    r.detail = why;
                }
            }
            r.finished_at = Some(now_ns());
            r
        });
        let r = match task.await {
            Ok(r) => r,
            Err(e) => {
                let mut r = r;
                r.state = State::Failed;
                r.detail = format!("the command task ended: {e}");
                r
            }
        };
        self.finish(r.clone());
        r
    }

    fn refuse(&mut self, mut r: Record, why: String) -> Record {
        r.state = State::Refused;
        r.detail = why;
        r.finished_at = Some(now_ns());
        self.finish(r.clone());
        r
    }

    /// Counts, audits and keeps a final outcome; a failure raises a `system` incident.
    fn finish(&mut self, r: Record) {
        let counter = match r.state {
            State::Done => &self.metrics.done,
            State::Refused => &self.metrics.refused,
            State::Failed => &self.metrics.failed,
            State::Expired => &self.metrics.expired,
            State::AwaitingConfirmation => &self.metrics.awaiting,
        };
        counter.fetch_add(1, Relaxed);
        if r.state == State::Failed {
            let message = format!("Linkage action {} on {} failed: {}", r.action, r.device, r.detail);
            let sent = match self.registry.device_id(&r.device) {
                Some(d) => self.core.system_incident_for("linkage.action_failed", d, message.clone()),
                None => self.core.system_incident("linkage.action_failed", message.clone()),
            };
            if !sent {
                tracing::error!(action = %r.action, "{message}");
            }
        }
        self.audit_record(&r, String::new());
        self.keep(&r);
    }

    fn keep(&self, r: &Record) {
        if let Ok(mut l) = self.ledger.lock() {
            if l.len() >= LEDGER {
                l.pop_front();
            }
            l.push_back(r.clone());
        }
    }

    fn audit_record(&self, r: &Record, source: String) {
        let outcome = match r.state {
            State::Done => "ok",
            State::Refused => "refused",
            State::Failed => "failed",
            State::AwaitingConfirmation => "pending",
            State::Expired => "expired",
        };
        self.audit.record(AuditEvent {
            actor: r.who.clone(),
            source: if source.is_empty() { r.trigger.to_owned() } else { source },
            action: "action.run",
            target: format!("action:{}", r.action),
            outcome,
            detail: format!(
                "request {} {} value={} {}{}",
                r.id,
                r.state.as_str(),
                r.value.map_or_else(|| "-".into(), |v| v.to_string()),
                r.detail,
                if r.reason.is_empty() { String::new() } else { format!(" reason: {}", r.reason) }
            ),
        });
    }

    fn audit_confirm(&self, r: &Record, c: &Caller, outcome: &'static str) {
        self.audit.record(AuditEvent {
            actor: c.name.clone(),
            source: c.source.clone(),
            action: "action.confirm",
            target: format!("action:{}", r.action),
            outcome,
            detail: format!("request {} {}", r.id, r.detail),
        });
    }
}

/// The sink name of the linkage follower in the change log's cursors.
const SINK: &str = "actions";

pub use crate::core::rules::fill_template;

/// Follows the incident store's committed change log and runs each rule's `on_raise` actions when
/// one of its incidents is raised or escalated (once per incident and action: a reactivation or
/// chattering is the same episode) and its `on_return` actions when it returns; each outcome is also
/// written on the incident's history. Action ids may be templates (`unlock_exits_{building}`): one
/// that cannot be filled, or that names no declared action, is how the built-in packs offer linkage a
/// site has not enabled, and is skipped; a literal id that is not declared is refused and noted.
/// Starts at the head the first time (the past is not acted on); the cursor is saved after each
/// change, and a change older than [`FRESH_SECS`] found after a stop is refused, not acted on.
pub async fn follow(
    actions: Actions,
    store: crate::incident::IncidentStore,
    core: CoreHandle,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let log = match store.change_log() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Linkage cannot read the incident change log; rules will not act.");
            return;
        }
    };
    let mut cursor = match log.cursor(SINK) {
        Ok(Some(c)) => c,
        _ => {
            let head = log.head().unwrap_or(0);
            let _ = log.save_cursor(SINK, head);
            head
        }
    };
    let mut committed = store.committed();
    let mut by_rule: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    // (incident, action) asked on raise, so an escalation does not ask again.
    let mut asked: std::collections::HashSet<(i64, String)> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let rows = match log.after(cursor, 256) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "Linkage cannot read the change log; retrying.");
                Vec::new()
            }
        };
        for row in &rows {
            let raise = matches!(row.change.as_str(), "raised" | "escalated");
            if raise || row.change == "returned" {
                if !by_rule.contains_key(&row.rule) {
                    // Rules are reloaded at run time: ask again for a rule not seen yet.
                    if let Ok(report) = core.rules().await {
                        by_rule = report.rules.into_iter().map(|r| (r.id, (r.on_raise, r.on_return))).collect();
                    }
                }
                let names = by_rule
                    .get(&row.rule)
                    .map(|(on_raise, on_return)| if raise { on_raise.clone() } else { on_return.clone() })
                    .unwrap_or_default();
                let tags = registry.device_id(&row.device).map(|d| registry.device(d).tags.clone()).unwrap_or_default();
                for name in names {
                    let templated = name.contains('{');
                    let Some(id) = fill_template(&name, &row.device, &row.grid, &tags) else { continue };
                    if templated && !actions.declared.iter().any(|a| a.id == id) {
                        continue;
                    }
                    if raise && !asked.insert((row.id, id.clone())) {
                        continue;
                    }
                    let trigger = Trigger::Rule {
                        rule: row.rule.clone(),
                        incident: row.id,
                        at: row.ts,
                        severity: row.severity.clone(),
                    };
                    let Ok(r) = actions.request(&id, None, trigger).await else { return };
                    // Below its severity the action may still come with an escalation.
                    if r.state == State::Refused && r.detail.contains("this action needs") {
                        asked.remove(&(row.id, id.clone()));
                    }
                    let text = format!("联动 Linkage {id}: {} — {}", r.state.as_str(), r.detail);
                    if let Err(e) = store.comment(row.id, "parkwatch".into(), text, now_ns()).await {
                        tracing::warn!(error = %e, incident = row.id, "Cannot note a linkage outcome on its incident.");
                    }
                }
            }
            if matches!(row.change.as_str(), "closed") {
                asked.retain(|(i, _)| *i != row.id);
            }
            cursor = row.seq;
            if let Err(e) = log.save_cursor(SINK, cursor) {
                tracing::warn!(error = %e, "Cannot save the linkage cursor; changes may be looked at again.");
            }
        }
        if rows.len() == 256 {
            continue;
        }
        tokio::select! {
            r = committed.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The command itself: the values read back (Modbus) and what happened, or why it failed.
async fn run(
    config: &Config,
    profiles: &BTreeMap<String, crate::source::modbus::profile::Profile>,
    a: &Action,
    value: f64,
    r: &Record,
) -> Result<(Vec<f64>, String), (Vec<f64>, String)> {
    let deadline = Duration::from_millis(a.readback_ms);
    match a.kind {
        ActionKind::Modbus => {
            let read = crate::source::modbus::command(config, profiles, &a.device, &a.points, value, deadline)
                .await
                .map_err(|e| (Vec::new(), format!("write or read-back failed: {e}")))?;
            let bad: Vec<String> = a
                .points
                .iter()
                .zip(&read)
                .filter(|(_, got)| (**got - value).abs() > 1e-6 * value.abs().max(1.0))
                .map(|(p, got)| format!("{p} reads {got}"))
                .collect();
            if bad.is_empty() {
                Ok((read, format!("wrote {value} to {} and read it back", a.points.join(", "))))
            } else {
                Err((read, format!("read-back mismatch after writing {value}: {}", bad.join(", "))))
            }
        }
        ActionKind::Mqtt => {
            let b = a.broker.as_deref().and_then(|id| config.mqtt.brokers.iter().find(|b| b.id == id));
            let Some(b) = b else { return Err((Vec::new(), "the action's broker is not configured".into())) };
            let correlation = format!("pw-{}-{}", r.id, now_ns());
            let fill = |t: &str| {
                t.replace("{correlation}", &correlation)
                    .replace("{action}", &a.id)
                    .replace("{value}", &value.to_string())
                    .replace("{device}", &a.device)
                    .replace("{reason}", &r.reason)
            };
            let topic = fill(a.topic.as_deref().unwrap_or_default());
            let payload = fill(a.payload.as_deref().unwrap_or_default());
            let options = crate::source::mqtt::options(b, format!("parkwatch-action-{}", correlation))
                .map_err(|e| (Vec::new(), format!("mqtt: {e}")))?;
            let reply = a.reply_topic.clone();
            let call = tokio::task::spawn_blocking(move || {
                mqtt_command(options, &topic, payload, reply, &correlation, deadline)
            });
            match call.await {
                Ok(Ok(detail)) => Ok((Vec::new(), detail)),
                Ok(Err(why)) => Err((Vec::new(), why)),
                Err(e) => Err((Vec::new(), format!("command task ended: {e}"))),
            }
        }
        ActionKind::Http => {
            let fill = |t: &str| {
                t.replace("{action}", &a.id)
                    .replace("{value}", &value.to_string())
                    .replace("{device}", &a.device)
                    .replace("{reason}", &r.reason)
            };
            let url = fill(a.url.as_deref().unwrap_or_default());
            let body = a.body.as_deref().map(fill);
            let method = a.method.clone().unwrap_or_else(|| "POST".into());
            let expect = a.expect_status.unwrap_or(200);
            let call = tokio::task::spawn_blocking(move || {
                let agent = ureq::AgentBuilder::new().timeout(deadline).build();
                let req = agent.request(&method, &url).set("Content-Type", "application/json");
                let res = match body {
                    Some(b) => req.send_string(&b),
                    None => req.call(),
                };
                match res {
                    Ok(resp) => Ok(resp.status()),
                    Err(ureq::Error::Status(code, _)) => Ok(code),
                    Err(e) => Err(e.to_string()),
                }
            });
            match call.await {
                Ok(Ok(status)) if status == expect => Ok((Vec::new(), format!("answered {status}"))),
                Ok(Ok(status)) => Err((Vec::new(), format!("answered {status}, expected {expect}"))),
                Ok(Err(e)) => Err((Vec::new(), format!("call failed: {e}"))),
                Err(e) => Err((Vec::new(), format!("call task ended: {e}"))),
            }
        }
    }
}

/// Publishes `payload` on `topic` at QoS 1 on a connection of its own and waits for the broker's
/// PUBACK and, with `reply`, for a message on that topic that carries `correlation`, all within
/// `deadline`. The reply subscription is confirmed before the command goes out, so a fast device's
/// answer is not missed.
fn mqtt_command(
    mut options: rumqttc::MqttOptions,
    topic: &str,
    payload: String,
    reply: Option<String>,
    correlation: &str,
    deadline: Duration,
) -> Result<String, String> {
    use rumqttc::{Event, Packet, QoS};
    options.set_clean_session(true);
    let (client, mut connection) = rumqttc::Client::new(options, 8);
    let end = Instant::now() + deadline;
    let mut next = |what: &str| -> Result<Packet, String> {
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(p))) => return Ok(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("mqtt: {e}")),
                Err(_) => return Err(format!("mqtt: no {what} within {} ms", deadline.as_millis())),
            }
        }
    };
    if let Some(r) = &reply {
        client.subscribe(r, QoS::AtLeastOnce).map_err(|e| format!("mqtt: {e}"))?;
        while !matches!(next("SUBACK")?, Packet::SubAck(_)) {}
    }
    client.publish(topic, QoS::AtLeastOnce, false, payload.into_bytes()).map_err(|e| format!("mqtt: {e}"))?;
    let mut acked = false;
    let mut answer = None;
    while !acked || (reply.is_some() && answer.is_none()) {
        match next(if acked { "correlated reply" } else { "PUBACK" })? {
            Packet::PubAck(_) => acked = true,
            Packet::Publish(p) if String::from_utf8_lossy(&p.payload).contains(correlation) => {
                answer = Some(String::from_utf8_lossy(&p.payload).chars().take(200).collect::<String>());
            }
            _ => {}
        }
    }
    let _ = client.disconnect();
    Ok(match answer {
        Some(a) => format!("published on {topic}; the device answered {a}"),
        None => format!("published on {topic}; the broker has it"),
    })
}

#[cfg(test)]
mod tests;
