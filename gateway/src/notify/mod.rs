//! Notifications to people: reads the incident change log by cursor, routes each change to
//! receivers, groups what one receiver gets (group_wait, group_interval, repeat_interval), escalates
//! incidents nobody acknowledges, and delivers through robots, mail, SMS and webhooks — durably,
//! within each receiver's rate limit, with an idempotency key.
//!
//! The planner ([`Planner::ingest`], [`Planner::plan`]) turns changes and time into committed
//! deliveries; it reads no clock (time is an argument) and does no network I/O. The [`Notifier`]
//! reads the clock, applies the rate limits and hands deliveries to `channel::send` on delivery
//! threads, one in flight per receiver, recording every attempt.
//!
//! Owns: `notify.db`, the channels' payloads, the people seam ([`people::Directory`]). May import:
//! `config`, `incident` (the change log).

pub mod channel;
pub mod ledger;
pub mod message;
pub mod people;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::channel::Outcome;
use self::ledger::{item_json, key, Job, Ledger, MAX_ATTEMPTS};
use self::message::{compose, Item, Message, Reason, Site};
use self::people::Directory;
use crate::config::notify::{duration_ns, Lang, Receiver, ReceiverKind, Route};
use crate::config::Config;
use crate::incident::changes::{ChangeLog, ChangeRow};
use crate::model::incident::Severity;
use crate::model::time::Clock;
use crate::model::{Registry, SharedRegistry};

/// Notification delivery failed to start or to read its ledger.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot open notification ledger {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("notification ledger: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("notification ledger holds malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Incidents(#[from] crate::incident::StoreError),
    #[error("receiver {0:?} is not defined")]
    UnknownReceiver(String),
    #[error("cannot start the notification thread: {0}")]
    Thread(String),
}

/// Counters of one receiver.
#[derive(Debug, Default)]
pub struct ReceiverMetrics {
    pub id: String,
    /// Deliveries the receiver accepted.
    pub sent: AtomicU64,
    /// Deliveries given up (refused for good, or too many attempts).
    pub failed: AtomicU64,
    /// Attempts that failed for now and will be tried again.
    pub retried: AtomicU64,
    /// Deliveries waiting to be sent.
    pub queued: AtomicU64,
}

/// Counters of every receiver.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    pub receivers: Vec<Arc<ReceiverMetrics>>,
}

/// What the API needs to show deliveries.
#[derive(Debug, Clone)]
pub struct NotifyHandle {
    pub path: PathBuf,
    pub site: String,
    pub metrics: Arc<NotifyMetrics>,
}

impl NotifyHandle {
    /// Recent deliveries (of one incident), newest first, limited to `grids` when scoped.
    ///
    /// # Errors
    /// The ledger cannot be read.
    pub fn deliveries(
        &self,
        incident: Option<i64>,
        grids: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<ledger::DeliveryView>, NotifyError> {
        Ledger::open(&self.path, &self.site)?.deliveries(incident, grids, limit)
    }
}

/// Routes, receivers and the site, as the planner uses them.
pub struct Planner {
    site: Site,
    lang: Lang,
    receivers: Vec<Receiver>,
    routes: Vec<Route>,
    /// Names and tags of devices, including those a reload or auto-provisioning added.
    registry: SharedRegistry,
    directory: Arc<dyn Directory>,
    /// Connection options of MQTT receivers, by receiver id.
    mqtt: HashMap<String, rumqttc::MqttOptions>,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner").field("routes", &self.routes.len()).finish_non_exhaustive()
    }
}

const UNACKED: [&str; 2] = ["active_unacked", "returned_unacked"];

impl Planner {
    /// A planner for `config`'s `[notify]`, resolving people through `directory`.
    pub fn new(config: &Config, registry: impl Into<SharedRegistry>, directory: Arc<dyn Directory>) -> Self {
        let n = &config.notify;
        Self {
            site: Site {
                id: config.site.id.clone(),
                name: config.site.name.clone().unwrap_or_else(|| config.site.id.clone()),
                tz: config.site.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai),
                base_url: n.base_url.clone(),
                plans: config.plans.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            },
            lang: n.lang,
            receivers: n.receivers.clone(),
            routes: n.routes.clone(),
            registry: registry.into(),
            directory,
            mqtt: HashMap::new(),
        }
    }

    /// The connection options of each MQTT receiver (by receiver id), built where brokers are known.
    #[must_use]
    pub fn with_mqtt(mut self, options: HashMap<String, rumqttc::MqttOptions>) -> Self {
        self.mqtt = options;
        self
    }

    /// The receiver `id`.
    pub fn receiver(&self, id: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.id == id)
    }

    fn item(&self, row: &ChangeRow) -> Item {
        let reg = self.registry.peek();
        let device = reg.device_id(&row.device);
        let unit = device.and_then(|d| reg.point_of(d, &row.point)).map(|p| reg.point(p).unit.clone());
        Item {
            id: row.id,
            seq: row.seq,
            change: row.change.clone(),
            at: row.ts,
            rule: row.rule.clone(),
            title: row.title.clone(),
            category: row.category.clone(),
            severity: row.severity.clone(),
            state: row.state.clone(),
            grid: row.grid.clone(),
            grid_name: reg.grid_id(&row.grid).map_or(row.grid.clone(), |g| reg.grid(g).name.clone()),
            device: row.device.clone(),
            device_name: device.map_or(row.device.clone(), |d| reg.device(d).name.clone()),
            point: row.point.clone(),
            value: row.value,
            unit: unit.unwrap_or_default(),
            message: row.message.clone(),
            plan: row.plan.clone(),
        }
    }

    /// Indices of the routes a change goes to: the first match, and more while they say `continue`.
    pub fn routes_for(&self, row: &ChangeRow) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            if self.matches(r, row) {
                out.push(i);
                if !r.continue_matching {
                    break;
                }
            }
        }
        out
    }

    fn matches(&self, r: &Route, row: &ChangeRow) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        let severity_ok = match r.severity.as_deref().and_then(Severity::parse) {
            Some(min) => Severity::parse(&row.severity).is_some_and(|s| s >= min),
            None => true,
        };
        let tags_ok = r.tags.is_empty() || {
            let reg = self.registry.peek();
            reg.device_id(&row.device).is_some_and(|d| {
                let tags = &reg.device(d).tags;
                r.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
            })
        };
        any(&r.grids, &row.grid)
            && any(&r.categories, &row.category)
            && any(&r.rules, &row.rule)
            && severity_ok
            && tags_ok
    }

    /// Takes committed changes in: pending items per receiver, incidents tracked for repeats and
    /// escalation, escalation steps scheduled or stopped; the cursor moves in the same transaction.
    ///
    /// # Errors
    /// A database error; nothing of `rows` is taken then.
    pub fn ingest(&self, ledger: &mut Ledger, rows: &[ChangeRow], now: i64) -> Result<(), NotifyError> {
        let Some(last) = rows.last() else { return Ok(()) };
        let tx = ledger.conn.transaction()?;
        for row in rows {
            let item = self.item(row);
            let json = item_json(&item)?;
            for ri in self.routes_for(row) {
                let route = &self.routes[ri];
                let tracked: Option<String> = tx
                    .query_row(
                        "SELECT state FROM tracked WHERE incident = ?1 AND route = ?2",
                        params![row.id, ri as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                let firing = matches!(row.change.as_str(), "raised" | "reactivated" | "escalated");
                let was_active = tracked.as_deref().is_some_and(|s| s.starts_with("active"));
                let resolved = row.change == "returned" || (row.change == "closed" && was_active);
                if firing || (resolved && route.send_resolved) {
                    for rc in &route.receivers {
                        tx.execute(
                            "INSERT INTO pending(route, receiver, grp, resolved, item, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![ri as i64, rc, row.grid, !firing, json, now],
                        )?;
                    }
                }
                if firing {
                    let raised = if row.change == "escalated" { None } else { Some(row.ts) };
                    tx.execute(
                        "INSERT INTO tracked(incident, route, grid, state, raised, item) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(incident, route) DO UPDATE SET state = excluded.state, item = excluded.item,
                             raised = CASE WHEN ?7 THEN excluded.raised ELSE raised END",
                        params![row.id, ri as i64, row.grid, row.state, raised.unwrap_or(row.ts), json, raised.is_some()],
                    )?;
                    if raised.is_some() && UNACKED.contains(&row.state.as_str()) {
                        let steps = match (&route.escalation_critical, row.severity.as_str()) {
                            (Some(c), "critical") => c,
                            _ => &route.escalation,
                        };
                        tx.execute(
                            "DELETE FROM escalations WHERE incident = ?1 AND route = ?2",
                            params![row.id, ri as i64],
                        )?;
                        for (j, s) in steps.iter().enumerate() {
                            let due = row.ts.saturating_add(duration_ns(&s.after).unwrap_or(0));
                            tx.execute(
                                "INSERT INTO escalations(incident, route, step, due, receivers, status)
                                 VALUES (?1, ?2, ?3, ?4, ?5, 'waiting')",
                                params![row.id, ri as i64, j as i64 + 1, due, serde_json::to_string(&s.receivers)?],
                            )?;
                        }
                    }
                } else {
                    tx.execute(
                        "UPDATE tracked SET state = ?3, item = ?4 WHERE incident = ?1 AND route = ?2",
                        params![row.id, ri as i64, row.state, json],
                    )?;
                }
                // Acknowledged, closed or shelved: somebody has it; escalation stops here.
                let handled = matches!(row.change.as_str(), "acked" | "closed" | "shelved")
                    || matches!(row.state.as_str(), "active_acked" | "normal");
                if handled {
                    tx.execute(
                        "UPDATE escalations SET status = 'stopped' WHERE incident = ?1 AND status = 'waiting'",
                        [row.id],
                    )?;
                }
                if row.change == "closed" {
                    tx.execute("DELETE FROM tracked WHERE incident = ?1", [row.id])?;
                }
            }
        }
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('cursor', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [last.seq],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn people(&self, r: &Receiver, grid: &str, now: i64) -> Vec<people::Person> {
        let mut out: Vec<people::Person> = Vec::new();
        for role in &r.people {
            for p in self.directory.resolve(*role, grid, now) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn message(
        &self,
        r: &Receiver,
        reason: Reason,
        step: Option<u32>,
        grid: &str,
        items: Vec<Item>,
        now: i64,
    ) -> Message {
        let unacked_for = items.iter().map(|i| now - i.at).max();
        let people = self.people(r, grid, now);
        compose(&self.site, r.lang.unwrap_or(self.lang), reason, step, grid, items, people, unacked_for)
    }

    /// Plans what is due at `now` into committed deliveries: flushed groups, reminders of
    /// unacknowledged incidents, escalation steps. Returns how many deliveries were planned.
    ///
    /// # Errors
    /// A database error; nothing is planned then.
    pub fn plan(&self, ledger: &mut Ledger, now: i64) -> Result<usize, NotifyError> {
        let tx = ledger.conn.transaction()?;
        let mut planned = 0;
        let groups: Vec<(i64, String, String, i64, Option<i64>)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT p.route, p.receiver, p.grp, MIN(p.at), g.last_sent FROM pending p
                 LEFT JOIN groups g ON g.route = p.route AND g.receiver = p.receiver AND g.grp = p.grp
                 GROUP BY p.route, p.receiver, p.grp",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (ri, rc, grp, first, last_sent) in groups {
            let route = self.routes.get(ri as usize);
            let wait = route.and_then(|r| duration_ns(&r.group_wait)).unwrap_or(0);
            let interval = route.and_then(|r| duration_ns(&r.group_interval)).unwrap_or(0);
            let due = match last_sent {
                None => first + wait,
                Some(l) => (first + wait).max(l + interval),
            };
            if due > now {
                continue;
            }
            let items: Vec<(bool, Item)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT resolved, item FROM pending WHERE route = ?1 AND receiver = ?2 AND grp = ?3 ORDER BY id",
                )?;
                let rows =
                    stmt.query_map(params![ri, rc, grp], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?)))?;
                let mut v = Vec::new();
                for row in rows {
                    let (resolved, json) = row?;
                    v.push((resolved, serde_json::from_str(&json)?));
                }
                v
            };
            tx.execute("DELETE FROM pending WHERE route = ?1 AND receiver = ?2 AND grp = ?3", params![ri, rc, grp])?;
            tx.execute(
                "INSERT INTO groups(route, receiver, grp, last_sent) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(route, receiver, grp) DO UPDATE SET last_sent = excluded.last_sent",
                params![ri, rc, grp, now],
            )?;
            let Some(r) = self.receiver(&rc) else { continue };
            let (resolved, firing): (Vec<_>, Vec<_>) = items.into_iter().partition(|(res, _)| *res);
            for (reason, list) in [(Reason::Firing, firing), (Reason::Resolved, resolved)] {
                if list.is_empty() {
                    continue;
                }
                // One line per incident: its latest change.
                let mut latest: HashMap<i64, Item> = HashMap::new();
                for (_, i) in list {
                    latest.insert(i.id, i);
                }
                let m = self.message(r, reason, None, &grp, latest.into_values().collect(), now);
                Ledger::queue(&tx, &rc, r.kind.as_str(), &m, now)?;
                planned += 1;
            }
        }
        // Reminders: groups quiet for a repeat interval that still have unacknowledged incidents.
        let quiet: Vec<(i64, String, String, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT g.route, g.receiver, g.grp, g.last_sent FROM groups g WHERE NOT EXISTS
                 (SELECT 1 FROM pending p WHERE p.route = g.route AND p.receiver = g.receiver AND p.grp = g.grp)",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (ri, rc, grp, last_sent) in quiet {
            let Some(route) = self.routes.get(ri as usize) else { continue };
            let Some(repeat) = duration_ns(&route.repeat_interval).filter(|d| *d > 0) else { continue };
            if last_sent + repeat > now {
                continue;
            }
            let items: Vec<Item> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT item FROM tracked WHERE route = ?1 AND grid = ?2 AND state IN ('active_unacked', 'returned_unacked')",
                )?;
                let rows = stmt.query_map(params![ri, grp], |r| r.get::<_, String>(0))?;
                let mut v = Vec::new();
                for json in rows {
                    v.push(serde_json::from_str(&json?)?);
                }
                v
            };
            if items.is_empty() {
                continue;
            }
            tx.execute(
                "UPDATE groups SET last_sent = ?4 WHERE route = ?1 AND receiver = ?2 AND grp = ?3",
                params![ri, rc, grp, now],
            )?;
            let Some(r) = self.receiver(&rc) else { continue };
            let m = self.message(r, Reason::Repeat, None, &grp, items, now);
            Ledger::queue(&tx, &rc, r.kind.as_str(), &m, now)?;
            planned += 1;
        }
        // Escalation steps due, grouped per receiver, step and grid.
        let due: Vec<(i64, i64, u32, String, String)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT e.incident, e.route, e.step, e.receivers, t.item FROM escalations e
                 JOIN tracked t ON t.incident = e.incident AND t.route = e.route
                 WHERE e.status = 'waiting' AND e.due <= ?1 ORDER BY e.due",
            )?;
            let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut batches: HashMap<(String, u32, String), Vec<Item>> = HashMap::new();
        for (incident, ri, step, receivers, json) in due {
            tx.execute(
                "UPDATE escalations SET status = 'sent' WHERE incident = ?1 AND route = ?2 AND step = ?3",
                params![incident, ri, step],
            )?;
            let item: Item = serde_json::from_str(&json)?;
            for rc in serde_json::from_str::<Vec<String>>(&receivers)? {
                batches.entry((rc, step, item.grid.clone())).or_default().push(item.clone());
            }
        }
        let mut batches: Vec<_> = batches.into_iter().collect();
        batches.sort_by(|a, b| a.0.cmp(&b.0));
        for ((rc, step, grid), items) in batches {
            let Some(r) = self.receiver(&rc) else { continue };
            let m = self.message(r, Reason::Escalation, Some(step), &grid, items, now);
            Ledger::queue(&tx, &rc, r.kind.as_str(), &m, now)?;
            planned += 1;
        }
        tx.commit()?;
        Ok(planned)
    }
}

/// Sends per receiver within its windows: at most `n` in any `window` ns.
#[derive(Debug, Default)]
struct Limiter {
    sent: HashMap<String, VecDeque<i64>>,
}

const MINUTE: i64 = 60_000_000_000;

impl Limiter {
    fn limits(r: &Receiver) -> Vec<(i64, usize)> {
        let mut v = vec![(MINUTE, r.rate() as usize)];
        if r.kind == ReceiverKind::Feishu {
            // Feishu also allows at most 5 per second.
            v.push((1_000_000_000, 5));
        }
        v
    }

    fn allows(&mut self, r: &Receiver, now: i64) -> bool {
        let q = self.sent.entry(r.id.clone()).or_default();
        while q.front().is_some_and(|t| *t <= now - MINUTE) {
            q.pop_front();
        }
        Self::limits(r).iter().all(|(window, n)| q.iter().filter(|t| **t > now - window).count() < *n)
    }

    fn take(&mut self, receiver: &str, at: i64) {
        self.sent.entry(receiver.to_owned()).or_default().push_back(at);
    }
}

/// The running side: reads the clock and the change log, plans, rate-limits, records.
pub struct Notifier {
    planner: Planner,
    ledger: Ledger,
    log: ChangeLog,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    in_flight: HashMap<String, i64>,
    cursor: i64,
    metrics: Arc<NotifyMetrics>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("cursor", &self.cursor).finish_non_exhaustive()
    }
}

impl Notifier {
    /// Opens the ledger at `path`; a new ledger starts at the change log's head (no history is sent).
    ///
    /// # Errors
    /// The ledger or the change log cannot be read.
    pub fn open(
        planner: Planner,
        path: &std::path::Path,
        log: ChangeLog,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyError> {
        let ledger = Ledger::open(path, &planner.site.id)?;
        // A restart is a good moment to try again what failed before it, rather than wait out a
        // backoff that grew while the receiver was away.
        ledger
            .conn
            .execute("UPDATE deliveries SET next_at = MIN(next_at, ?1) WHERE status = 'retrying'", [clock.wall_ns()])?;
        let cursor = match ledger.cursor()? {
            Some(c) => c,
            None => {
                // Recorded at once: a crash before the first change is taken in must not make the
                // next start take itself for a new ledger and skip what came in between.
                let head = log.head()?;
                ledger.conn.execute("INSERT INTO meta(key, value) VALUES ('cursor', ?1)", [head])?;
                head
            }
        };
        let mut limiter = Limiter::default();
        for (receiver, at) in ledger.recent_attempts(clock.wall_ns() - MINUTE)? {
            limiter.take(&receiver, at);
        }
        let metrics = Arc::new(NotifyMetrics {
            receivers: planner
                .receivers
                .iter()
                .map(|r| Arc::new(ReceiverMetrics { id: r.id.clone(), ..ReceiverMetrics::default() }))
                .collect(),
        });
        Ok(Self { planner, ledger, log, clock, limiter, in_flight: HashMap::new(), cursor, metrics })
    }

    /// The counters, shared with the API.
    pub fn metrics(&self) -> Arc<NotifyMetrics> {
        self.metrics.clone()
    }

    fn counters(&self, receiver: &str) -> Option<&ReceiverMetrics> {
        self.metrics.receivers.iter().find(|m| m.id == receiver).map(|m| &**m)
    }

    /// One turn: take new changes in, plan what is due, and hand out the deliveries that may go
    /// now (one in flight per receiver, within its rate limit).
    ///
    /// # Errors
    /// The ledger or the change log cannot be read; the turn is tried again later.
    pub fn step(&mut self) -> Result<Vec<(Job, Receiver)>, NotifyError> {
        let now = self.clock.wall_ns();
        loop {
            let rows = self.log.after(self.cursor, 1000)?;
            let Some(last) = rows.last().map(|r| r.seq) else { break };
            self.planner.ingest(&mut self.ledger, &rows, now)?;
            self.cursor = last;
        }
        self.planner.plan(&mut self.ledger, now)?;
        let busy: Vec<i64> = self.in_flight.values().copied().collect();
        let mut out = Vec::new();
        for job in self.ledger.due(now, &busy, 1000)? {
            if self.in_flight.contains_key(&job.receiver) {
                continue;
            }
            let Some(r) = self.planner.receiver(&job.receiver).cloned() else {
                self.ledger.record(&job, false, Some("receiver no longer configured"), None, now)?;
                continue;
            };
            if !self.limiter.allows(&r, now) {
                continue;
            }
            self.limiter.take(&r.id, now);
            self.in_flight.insert(r.id.clone(), job.id);
            out.push((job, r));
        }
        for m in &self.metrics.receivers {
            m.queued.store(0, Ordering::Relaxed);
        }
        for (receiver, n) in self.ledger.queued()? {
            if let Some(m) = self.counters(&receiver) {
                m.queued.store(n, Ordering::Relaxed);
            }
        }
        Ok(out)
    }

    /// The idempotency key of a job.
    pub fn key(&self, job: &Job) -> String {
        key(&self.planner.site.id, job.id)
    }

    /// Records how an attempt went: delivered, retried with backoff, or given up.
    ///
    /// # Errors
    /// The ledger cannot be written; the delivery is sent again (same key).
    pub fn finish(&mut self, job: &Job, outcome: &Outcome) -> Result<(), NotifyError> {
        let now = self.clock.wall_ns();
        self.in_flight.remove(&job.receiver);
        let c = self.metrics.receivers.iter().find(|m| m.id == job.receiver).cloned();
        let bump = |f: fn(&ReceiverMetrics) -> &AtomicU64| {
            if let Some(c) = &c {
                f(c).fetch_add(1, Ordering::Relaxed);
            }
        };
        match outcome {
            Outcome::Delivered => {
                bump(|c| &c.sent);
                self.ledger.record(job, true, None, None, now)
            }
            Outcome::Temporary(e) if job.attempts + 1 < MAX_ATTEMPTS => {
                bump(|c| &c.retried);
                debug!(receiver = %job.receiver, delivery = job.id, error = %e, "Delivery failed for now; will retry.");
                self.ledger.record(job, false, Some(e), Some(now + ledger::backoff_ns(job.attempts + 1)), now)
            }
            Outcome::Temporary(e) | Outcome::Permanent(e) => {
                bump(|c| &c.failed);
                warn!(receiver = %job.receiver, delivery = job.id, error = %e, "Notification given up.");
                self.ledger.record(job, false, Some(e), None, now)
            }
        }
    }

    /// One turn with every delivery sent on this thread; for tests and the `notify test` command.
    ///
    /// # Errors
    /// As [`Notifier::step`] and [`Notifier::finish`].
    pub fn turn_blocking(&mut self) -> Result<usize, NotifyError> {
        let jobs = self.step()?;
        let n = jobs.len();
        for (job, r) in jobs {
            let mqtt = self.planner.mqtt.get(&r.id);
            let outcome =
                channel::send(&self.planner.site.id, &r, &self.key(&job), &job.message, self.clock.wall_ns(), mqtt);
            self.finish(&job, &outcome)?;
        }
        Ok(n)
    }

    /// Runs until `shutdown`: a turn at once when `committed` (the incident store's committed head)
    /// moves, else every 50 ms for timers; each delivery on its own thread.
    pub fn run(mut self, shutdown: CancellationToken, committed: Option<tokio::sync::watch::Receiver<i64>>) {
        info!(receivers = self.planner.receivers.len(), routes = self.planner.routes.len(), "Notifications running.");
        let (tx, rx) = std::sync::mpsc::channel::<Wake>();
        if let Some(committed) = committed {
            wake_on_commit(committed, tx.clone());
        }
        while !shutdown.is_cancelled() {
            match self.step() {
                Ok(jobs) => {
                    for (job, r) in jobs {
                        let tx = tx.clone();
                        let (site, key, now) = (self.planner.site.id.clone(), self.key(&job), self.clock.wall_ns());
                        let mqtt = self.planner.mqtt.get(&r.id).cloned();
                        std::thread::spawn(move || {
                            let outcome = channel::send(&site, &r, &key, &job.message, now, mqtt.as_ref());
                            let _ = tx.send(Wake::Done(Box::new(job), outcome));
                        });
                    }
                }
                Err(e) => warn!(error = %e, "Notification turn failed; will try again."),
            }
            let mut next = rx.recv_timeout(Duration::from_millis(50)).ok();
            while let Some(wake) = next {
                if let Wake::Done(job, outcome) = wake {
                    if let Err(e) = self.finish(&job, &outcome) {
                        warn!(error = %e, "Cannot record a delivery attempt; it will be sent again.");
                        self.in_flight.remove(&job.receiver);
                    }
                }
                next = rx.try_recv().ok();
            }
        }
        info!("Notifications stopped.");
    }
}

/// Why the notification thread wakes up before its 50 ms tick.
enum Wake {
    /// A delivery attempt ended.
    Done(Box<Job>, Outcome),
    /// The incident store committed changes.
    Committed,
}

/// Forwards every move of the committed head as a wake-up, so a new incident is planned and sent
/// without waiting for the next tick. Ends with the store or the notification thread.
fn wake_on_commit(mut committed: tokio::sync::watch::Receiver<i64>, tx: std::sync::mpsc::Sender<Wake>) {
    let spawned = std::thread::Builder::new().name("notify-wake".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else { return };
        rt.block_on(async move {
            while committed.changed().await.is_ok() {
                if tx.send(Wake::Committed).is_err() {
                    break;
                }
            }
        });
    });
    if let Err(e) = spawned {
        warn!(error = %e, "Cannot start the commit watcher; notifications go out on the 50 ms tick.");
    }
}

/// Sends a test message through receiver `id` now; the outcome.
///
/// # Errors
/// The receiver is not defined.
pub fn test_receiver(
    config: &Config,
    id: &str,
    now: i64,
    mqtt: HashMap<String, rumqttc::MqttOptions>,
) -> Result<Outcome, NotifyError> {
    let registry = Arc::new(Registry::from_config(config));
    let site = Arc::new(crate::people::Directory::from_config(config));
    let directory = Arc::new(people::SiteDirectory::new(site, config.notify.contacts.clone()));
    let planner = Planner::new(config, registry, directory).with_mqtt(mqtt);
    let r = planner.receiver(id).ok_or_else(|| NotifyError::UnknownReceiver(id.to_owned()))?;
    let m = planner.message(r, Reason::Test, None, "", Vec::new(), now);
    Ok(channel::send(&config.site.id, r, &format!("pw-{}-test-{now}", config.site.id), &m, now, planner.mqtt.get(id)))
}

#[cfg(test)]
mod tests;
