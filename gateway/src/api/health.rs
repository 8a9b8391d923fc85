//! Component health: the evaluator that derives each component's status from the counters and flags
//! the components already keep (once a second, off every hot path), and the `/readyz` and
//! `/api/v1/health` handlers that read the [`Health`] registry.
//!
//! Rules of derivation, per component:
//! - `broker:<id>`: connected → ok; never connected → failed "not connected yet"; lost → failed with
//!   the error.
//! - `modbus:<connection>`: every device answers → ok; some do not → degraded naming them; none does →
//!   failed with the last error.
//! - `dlt645:<bus>`: likewise from its meters (an abnormal answer is an answer: the meter is there).
//! - `target:<id>`: last write ok (or nothing to write yet) → ok; retrying → degraded with the error;
//!   no successful write for longer than [`TARGET_FAILED_AFTER`] → failed.
//! - `outbox`, `incidents`: the last write failed → failed `cannot write: <error>`, ok after the next
//!   successful one.
//! - `rules`: packs that did not load → degraded naming them.
//! - `history`: writes failing → degraded `cannot write: <error>` (history never fails readiness: it
//!   is not on the way of ingestion or alarms); samples dropped since the last look (the writer fell
//!   behind) → degraded with the count; else ok with the disk use.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::core::CoreHandle;
use crate::forward::ForwardMetrics;
use crate::incident::StoreMetrics;
use crate::metrics::Metrics;
use crate::model::health::{Health, Status};
use crate::source::dlt645::MeterStatus;
use crate::source::modbus::DeviceStatus;

/// A target with no successful write for this long is failed, not just degraded.
pub const TARGET_FAILED_AFTER: Duration = Duration::from_secs(60);

/// How often the evaluator looks at the counters.
const EVERY: Duration = Duration::from_secs(1);

/// The rule report is a copy of every loaded rule made by the core task: ask for it less often than
/// the counters are read (a broken pack is degraded, never failed, so readiness does not wait on it).
const RULES_EVERY_TICKS: u32 = 5;

/// Derives component health from the counters of a running gateway.
pub struct Evaluator {
    health: Health,
    metrics: Arc<Metrics>,
    forward: Option<Arc<ForwardMetrics>>,
    incidents: Option<Arc<StoreMetrics>>,
    /// The history writer's counters and its disk bound.
    history: Option<(Arc<crate::history::HistoryMetrics>, u64)>,
    /// Samples the history had dropped at the last look.
    history_dropped: u64,
    /// Modbus devices by connection id.
    modbus: BTreeMap<String, Vec<Arc<DeviceStatus>>>,
    /// DL/T 645 meters by bus id.
    dlt645: BTreeMap<String, Vec<Arc<MeterStatus>>>,
    core: CoreHandle,
    /// Per target: when it was first seen failing (UTC ns), until it writes again.
    failing_since: Vec<Option<i64>>,
    names: Names,
}

/// Component names, built once so a tick formats nothing when all is well.
struct Names {
    brokers: Vec<String>,
    modbus: Vec<String>,
    dlt645: Vec<String>,
    targets: Vec<String>,
}

impl Evaluator {
    /// An evaluator over the counters `state` shares, reporting into `state.health`. Every component
    /// is registered at once, so one that has not started yet shows as such instead of missing.
    pub fn new(state: &AppState) -> Self {
        let mut modbus: BTreeMap<String, Vec<Arc<DeviceStatus>>> = BTreeMap::new();
        for d in &state.modbus.devices {
            modbus.entry(d.connection.clone()).or_default().push(d.clone());
        }
        let mut dlt645: BTreeMap<String, Vec<Arc<MeterStatus>>> = BTreeMap::new();
        for m in &state.dlt645.meters {
            dlt645.entry(m.bus.clone()).or_default().push(m.clone());
        }
        let forward = state.forward.clone();
        let targets = forward.as_ref().map_or(0, |f| f.targets.len());
        let names = Names {
            brokers: state.metrics.brokers.iter().map(|b| format!("broker:{}", b.id)).collect(),
            modbus: modbus.keys().map(|c| format!("modbus:{c}")).collect(),
            dlt645: dlt645.keys().map(|b| format!("dlt645:{b}")).collect(),
            targets: forward.iter().flat_map(|f| f.targets.iter().map(|t| format!("target:{}", t.id))).collect(),
        };
        let e = Self {
            health: state.health.clone(),
            metrics: state.metrics.clone(),
            forward,
            incidents: state.incidents.as_ref().map(|s| s.metrics.clone()),
            history: state.history.as_ref().map(|h| (h.metrics.clone(), h.max_bytes)),
            history_dropped: 0,
            modbus,
            dlt645,
            core: state.core.clone(),
            failing_since: vec![None; targets],
            names,
        };
        e.register();
        e
    }

    fn register(&self) {
        let h = &self.health;
        for b in &self.names.brokers {
            h.set(b, Status::Failed, "not connected yet");
        }
        for m in self.names.modbus.iter().chain(&self.names.dlt645) {
            h.set(m, Status::Degraded, "not polled yet");
        }
        for t in &self.names.targets {
            h.set(t, Status::Ok, "nothing written yet");
        }
        if self.forward.is_some() {
            h.set("outbox", Status::Ok, "");
        }
        if self.incidents.is_some() {
            h.set("incidents", Status::Ok, "");
        }
        if self.history.is_some() {
            h.set("history", Status::Ok, "");
        }
        h.set("rules", Status::Ok, "");
    }

    /// Looks at every counter once and reports; `now_ns` is UTC nanoseconds.
    pub fn tick(&mut self, now_ns: i64) {
        let h = &self.health;
        for (b, name) in self.metrics.brokers.iter().zip(&self.names.brokers) {
            if b.connected.load(Relaxed) {
                h.set(name, Status::Ok, "");
                continue;
            }
            let error = b.last_error.lock().map(|e| e.clone()).unwrap_or_default();
            let reason = match (b.connections.load(Relaxed), error.is_empty()) {
                (0, true) => "not connected yet".to_owned(),
                (0, false) => format!("not connected: {error}"),
                (_, true) => "connection lost".to_owned(),
                (_, false) => format!("connection lost: {error}"),
            };
            h.set(name, Status::Failed, &reason);
        }
        for ((_, devices), name) in self.modbus.iter().zip(&self.names.modbus) {
            let (status, reason) = modbus_health(devices);
            h.set(name, status, &reason);
        }
        for ((_, meters), name) in self.dlt645.iter().zip(&self.names.dlt645) {
            let (status, reason) = dlt645_health(meters);
            h.set(name, status, &reason);
        }
        if let Some(f) = &self.forward {
            let o = &f.outbox;
            if o.failing.load(Relaxed) {
                let error = o.last_error.lock().map(|e| e.clone()).unwrap_or_default();
                h.set("outbox", Status::Failed, &format!("cannot write: {error}"));
            } else {
                h.set("outbox", Status::Ok, "");
            }
            for ((t, name), since) in f.targets.iter().zip(&self.names.targets).zip(&mut self.failing_since) {
                let attempted = t.writes.load(Relaxed) + t.retries.load(Relaxed) + t.dead_letters.load(Relaxed) > 0;
                if t.up.load(Relaxed) || !attempted {
                    *since = None;
                    let reason = if attempted { "" } else { "nothing written yet" };
                    h.set(name, Status::Ok, reason);
                    continue;
                }
                let first = *since.get_or_insert(now_ns);
                let error = t.last_error.lock().map(|e| e.clone()).unwrap_or_default();
                // Refused credentials or a missing bucket do not mend themselves: failed at once.
                if t.state() == crate::forward::writer::WriterState::Paused {
                    h.set(name, Status::Failed, &format!("paused: {error}"));
                    continue;
                }
                if now_ns - first > TARGET_FAILED_AFTER.as_nanos() as i64 {
                    let reason = format!("no successful write for over {} s: {error}", TARGET_FAILED_AFTER.as_secs());
                    h.set(name, Status::Failed, &reason);
                } else {
                    h.set(name, Status::Degraded, &format!("retrying: {error}"));
                }
            }
        }
        if let Some(s) = &self.incidents {
            if s.failing.load(Relaxed) {
                let error = s.last_error.lock().map(|e| e.clone()).unwrap_or_default();
                h.set("incidents", Status::Failed, &format!("cannot write: {error}"));
            } else {
                h.set("incidents", Status::Ok, "");
            }
        }
        self.history();
    }

    fn history(&mut self) {
        let Some((m, max_bytes)) = &self.history else { return };
        let dropped = m.dropped_samples.load(Relaxed);
        let new_drops = dropped - self.history_dropped.min(dropped);
        self.history_dropped = dropped;
        let h = &self.health;
        if m.failing.load(Relaxed) {
            let error = m.last_error.lock().map(|e| e.clone()).unwrap_or_default();
            h.set("history", Status::Degraded, &format!("cannot write: {error}"));
        } else if new_drops > 0 {
            h.set("history", Status::Degraded, &format!("{new_drops} samples dropped: the writer is behind"));
        } else {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let used = m.disk_bytes.load(Relaxed);
            h.set("history", Status::Ok, &format!("{:.1} MiB of {:.1} MiB on disk", mib(used), mib(*max_bytes)));
        }
    }

    /// Asks the core which rule packs did not load.
    pub async fn rules(&self) {
        // A busy core answers late; the next round asks again.
        let Ok(Ok(report)) = tokio::time::timeout(EVERY, self.core.rules()).await else { return };
        if report.errors.is_empty() {
            self.health.set("rules", Status::Ok, "");
            return;
        }
        let mut packs: Vec<&str> = report.errors.iter().map(|e| e.pack.as_str()).collect();
        packs.sort_unstable();
        packs.dedup();
        self.health.set("rules", Status::Degraded, &format!("rule packs not loaded: {}", packs.join(", ")));
    }

    /// Evaluates once a second until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u32.. {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            self.tick(crate::model::time::now_ns());
            if n % RULES_EVERY_TICKS == 0 {
                self.rules().await;
            }
        }
    }
}

/// The status of one Modbus connection from its devices.
fn modbus_health(devices: &[Arc<DeviceStatus>]) -> (Status, String) {
    let offline: Vec<&DeviceStatus> = devices.iter().map(|d| &**d).filter(|d| !d.online.load(Relaxed)).collect();
    if offline.is_empty() {
        return (Status::Ok, String::new());
    }
    if offline.len() < devices.len() {
        let names: Vec<&str> = offline.iter().map(|d| d.device.as_str()).collect();
        return (Status::Degraded, format!("offline: {}", names.join(", ")));
    }
    let tried = offline
        .iter()
        .any(|d| d.requests.load(Relaxed) + d.transport_errors.load(Relaxed) + d.timeouts.load(Relaxed) > 0);
    if !tried {
        return (Status::Degraded, "not polled yet".to_owned());
    }
    let error = offline
        .iter()
        .find_map(|d| d.last_error.lock().ok().filter(|e| !e.is_empty()).map(|e| e.clone()))
        .unwrap_or_else(|| "no answer".to_owned());
    (Status::Failed, format!("no device answers: {error}"))
}

/// The status of one DL/T 645 bus from its meters.
fn dlt645_health(meters: &[Arc<MeterStatus>]) -> (Status, String) {
    let offline: Vec<&MeterStatus> = meters.iter().map(|m| &**m).filter(|m| !m.online.load(Relaxed)).collect();
    if offline.is_empty() {
        return (Status::Ok, String::new());
    }
    if offline.len() < meters.len() {
        let names: Vec<&str> = offline.iter().map(|m| m.device.as_str()).collect();
        return (Status::Degraded, format!("offline: {}", names.join(", ")));
    }
    if !offline.iter().any(|m| m.requests.load(Relaxed) + m.transport_errors.load(Relaxed) > 0) {
        return (Status::Degraded, "not polled yet".to_owned());
    }
    let error = offline
        .iter()
        .find_map(|m| m.last_error.lock().ok().filter(|e| !e.is_empty()).map(|e| e.clone()))
        .unwrap_or_else(|| "no answer".to_owned());
    (Status::Failed, format!("no meter answers: {error}"))
}

/// A UTC nanosecond time as RFC 3339 in the site's time zone, with its offset.
fn local_time(ns: i64, tz: chrono_tz::Tz) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// `GET /readyz`: 200 while no component is failed, else 503 naming the failed ones.
pub(super) async fn readyz(State(st): State<AppState>) -> Response {
    let failed: Vec<Value> = st
        .health
        .snapshot()
        .into_iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| json!({ "component": c.name, "reason": c.reason }))
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true, "failed": [] }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "failed": failed }))).into_response()
    }
}

/// `GET /api/v1/health`: every component with its status, reason and since.
pub(super) async fn health(State(st): State<AppState>) -> Json<Value> {
    let tz = st.registry.load().site.timezone;
    let components: Vec<Value> = st
        .health
        .snapshot()
        .into_iter()
        .map(|c| {
            json!({
                "component": c.name,
                "status": c.status,
                "reason": c.reason,
                "since": local_time(c.since_ns, tz),
                "since_ns": c.since_ns,
            })
        })
        .collect();
    Json(json!({
        "status": st.health.overall(),
        "site": st.registry.load().site.id,
        "timezone": tz.name(),
        "components": components,
    }))
}

/// How often the gateway writes its own health into the outbox (measurement `gateway`).
pub const GATEWAY_HEALTH_EVERY: Duration = Duration::from_secs(60);

/// The gateway's health counters now, read from the atomics `/metrics` exports:
/// `parkwatch_core_samples_total`, `parkwatch_mqtt_rejects_total` and `parkwatch_hj212_rejects_total`
/// (all reasons), `parkwatch_outbox_batches`, `parkwatch_outbox_bytes`, `parkwatch_forward_retries_total`
/// and `parkwatch_forward_dead_letters_total` (all targets), `parkwatch_outbox_incident_lag` and
/// `parkwatch_history_dropped_samples_total`.
pub fn gateway_health(st: &AppState, ts: i64) -> crate::forward::line::GatewayHealth {
    let m = &st.metrics;
    let mqtt_rejects: u64 = m.subscriptions().iter().flat_map(|s| s.rejects.iter()).map(|r| r.load(Relaxed)).sum();
    let hj212_rejects: u64 = st
        .hj212
        .listeners
        .iter()
        .flat_map(|l| l.rejects.iter())
        .chain(st.hj212.loggers.iter().flat_map(|l| l.rejects.iter()))
        .map(|r| r.load(Relaxed))
        .sum();
    let fwd = st.forward.as_deref();
    let targets = |get: fn(&crate::forward::writer::TargetMetrics) -> u64| -> u64 {
        fwd.map_or(0, |f| f.targets.iter().map(|t| get(t)).sum())
    };
    crate::forward::line::GatewayHealth {
        ts,
        samples_total: m.core.samples.load(Relaxed),
        rejects_total: mqtt_rejects + hj212_rejects,
        outbox_batches: fwd.map_or(0, |f| f.outbox.batches.load(Relaxed)),
        outbox_bytes: fwd.map_or(0, |f| f.outbox.bytes.load(Relaxed)),
        write_retries_total: targets(|t| t.retries.load(Relaxed)),
        dead_letters_total: targets(|t| t.dead_letters.load(Relaxed)),
        incident_lag: fwd.map_or(0, |f| f.outbox.incident_lag.load(Relaxed)),
        history_dropped_samples_total: st.history.as_ref().map_or(0, |h| h.metrics.dropped_samples.load(Relaxed)),
    }
}

/// Hands the forwarder a health reading at start and every [`GATEWAY_HEALTH_EVERY`] until
/// `shutdown`; a reading the forwarder has no room for is skipped (the next one carries the counters on).
pub async fn report_gateway_health(
    st: AppState,
    tx: tokio::sync::mpsc::Sender<crate::forward::line::Extra>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(GATEWAY_HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
            tx.try_send(crate::forward::line::Extra::Health(gateway_health(&st, crate::model::time::now_ns())))
        {
            tracing::debug!("The outbox appender is behind; this minute's gateway health reading is skipped.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, online: bool, requests: u64, error: &str) -> Arc<DeviceStatus> {
        let d = DeviceStatus { device: name.into(), connection: "bus1".into(), ..DeviceStatus::default() };
        d.online.store(online, Relaxed);
        d.requests.store(requests, Relaxed);
        *d.last_error.lock().unwrap() = error.into();
        Arc::new(d)
    }

    #[test]
    fn modbus_connection_status_follows_its_devices() {
        let all = [device("m1", true, 5, ""), device("m2", true, 5, "")];
        assert_eq!(modbus_health(&all), (Status::Ok, String::new()));
        let some = [device("m1", true, 5, ""), device("m2", false, 5, "timeout after 500 ms")];
        assert_eq!(modbus_health(&some), (Status::Degraded, "offline: m2".into()));
        let none = [device("m1", false, 5, ""), device("m2", false, 5, "connect: refused")];
        assert_eq!(modbus_health(&none), (Status::Failed, "no device answers: connect: refused".into()));
        let fresh = [device("m1", false, 0, "")];
        assert_eq!(modbus_health(&fresh), (Status::Degraded, "not polled yet".into()));
    }

    #[test]
    fn dlt645_bus_status_follows_its_meters() {
        let meter = |name: &str, online: bool, requests: u64, error: &str| {
            let m = MeterStatus { device: name.into(), bus: "rs485a".into(), ..MeterStatus::default() };
            m.online.store(online, Relaxed);
            m.requests.store(requests, Relaxed);
            *m.last_error.lock().unwrap() = error.into();
            Arc::new(m)
        };
        assert_eq!(dlt645_health(&[meter("m1", true, 5, "")]), (Status::Ok, String::new()));
        let some = [meter("m1", true, 5, ""), meter("m9", false, 5, "02 01 01 00 (ua): no answer within 300 ms")];
        assert_eq!(dlt645_health(&some), (Status::Degraded, "offline: m9".into()));
        let none = [meter("m1", false, 5, "connect: no such file")];
        assert_eq!(dlt645_health(&none), (Status::Failed, "no meter answers: connect: no such file".into()));
        assert_eq!(dlt645_health(&[meter("m1", false, 0, "")]), (Status::Degraded, "not polled yet".into()));
    }

    #[test]
    fn times_are_shown_in_the_site_zone() {
        assert_eq!(local_time(1_700_000_000_000_000_000, chrono_tz::Asia::Shanghai), "2023-11-15T06:13:20.000+08:00");
    }
}
