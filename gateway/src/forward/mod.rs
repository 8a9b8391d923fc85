//! Forwarding: samples (after the core applied them), incident changes (read by cursor from the
//! incident store's committed change log) and audit records (read by cursor from the audit log) become
//! InfluxDB line protocol, are batched by size and time,
//! committed to the durable outbox — only then are their MQTT messages acknowledged — and drained in
//! order by one writer per target.
//!
//! The appender runs on a thread of its own (SQLite commits block), the writers on theirs (blocking
//! HTTP). Every drop by the outbox's bounds is counted and raises a `system` incident. When the outbox
//! cannot commit at all (disk full, I/O error) the appender keeps what it holds, retries with backoff,
//! acknowledges nothing it has not stored, counts what it cannot hold, raises one `system` incident
//! and resumes by itself.
//!
//! Owns: line encoding, the outbox, the writers, the central MQTT publisher.
//! May import: `model`, `config`, `incident::changes` (the change log it reads), `audit` (the audit
//! log it reads), `core::CoreHandle` (to raise `system` incidents).

pub mod central;
pub mod line;
pub mod outbox;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use self::line::{Encoder, Extra};
use self::outbox::{Cursor, Kind, Outbox, OutboxError};
use self::writer::{TargetMetrics, TargetSpec};
use crate::audit::AuditReader;
use crate::config::Config;
use crate::core::CoreHandle;
use crate::incident::changes::ChangeLog;
use crate::model::pool::SamplePool;
use crate::model::time::now_ns;
use crate::model::{Ack, Batch, Registry, SharedRegistry};

/// Counters of the outbox as a whole.
#[derive(Debug, Default)]
pub struct OutboxMetrics {
    pub committed_batches: AtomicU64,
    pub committed_lines: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub dropped_incidents: AtomicU64,
    /// Commits that failed (each is retried).
    pub append_errors: AtomicU64,
    /// Samples without an acknowledgement (QoS 0, Modbus) that could not be held while the outbox failed.
    pub lost_samples: AtomicU64,
    /// Samples of QoS 1 messages not stored while the outbox failed: not acknowledged, so the broker
    /// delivers them again.
    pub unacked_samples: AtomicU64,
    /// Incident changes committed to the outbox.
    pub incident_lines: AtomicU64,
    /// Incident changes committed in the store but not yet in the outbox.
    pub incident_lag: AtomicU64,
    /// Audit records committed to the outbox.
    pub audit_lines: AtomicU64,
    /// Audit records committed in the audit log but not yet in the outbox.
    pub audit_lag: AtomicU64,
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    /// True while the last append failed.
    pub failing: AtomicBool,
    /// Why the last append failed.
    pub last_error: std::sync::Mutex<String>,
}

/// What the API and `/metrics` read.
#[derive(Debug)]
pub struct ForwardMetrics {
    pub outbox: OutboxMetrics,
    pub outbox_path: PathBuf,
    pub targets: Vec<Arc<TargetMetrics>>,
}

/// The running forwarder: stop it after the core has stopped.
pub struct Forwarder {
    pub metrics: Arc<ForwardMetrics>,
    /// The gateway's own lines (health readings, energy days), which the appender commits.
    health: mpsc::Sender<Extra>,
    stop: Arc<AtomicBool>,
    appender: std::thread::JoinHandle<()>,
    writers: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("targets", &self.metrics.targets.len()).finish()
    }
}

/// Forwarding could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot start a forwarding thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the appender and the writers. `batches` come from the core; `incidents` from the store;
/// `audit` from the audit log.
///
/// # Errors
/// The outbox cannot be opened, or a thread cannot start.
pub fn start(
    config: &Config,
    registry: SharedRegistry,
    pool: Arc<SamplePool>,
    batches: mpsc::Receiver<Batch>,
    incidents: Option<(ChangeLog, watch::Receiver<i64>)>,
    audit: Option<(AuditReader, watch::Receiver<i64>)>,
    core: CoreHandle,
) -> Result<Forwarder, ForwardError> {
    let f = &config.forward;
    let ids: Vec<String> = f.targets.iter().map(|t| t.id.clone()).collect();
    let outbox = Outbox::open(&f.outbox, &ids, f.max_outbox_bytes, f.max_age_secs as i64 * 1_000_000_000)?;
    let targets: Vec<Arc<TargetMetrics>> = f
        .targets
        .iter()
        .map(|t| Arc::new(TargetMetrics { id: t.id.clone(), url: t.url.clone(), ..TargetMetrics::default() }))
        .collect();
    let metrics = Arc::new(ForwardMetrics { outbox: OutboxMetrics::default(), outbox_path: f.outbox.clone(), targets });
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (t, m) in f.targets.iter().zip(&metrics.targets) {
        let spec = TargetSpec {
            id: t.id.clone(),
            write_url: write_url(&t.url, &t.org, &t.bucket),
            token: t.token.clone(),
            gzip: t.gzip,
            timeout: Duration::from_secs(t.timeout_secs),
            retry_min: Duration::from_millis(t.retry_min_ms),
            retry_max: Duration::from_millis(t.retry_max_ms),
            pause_min: writer::PAUSE_MIN,
            pause_max: writer::PAUSE_MAX,
            dead_letter_bounds: outbox::DeadLetterBounds {
                max_count: f.dead_letter_max_count,
                max_bytes: f.dead_letter_max_bytes,
            },
            on_pause: Some(writer::pause_incident(core.clone())),
        };
        let cursor = Cursor::open(&f.outbox, &t.id)?;
        let (m, stop, wake) = (m.clone(), stop.clone(), wake.clone());
        writers.push(
            std::thread::Builder::new()
                .name(format!("write-{}", t.id))
                .spawn(move || writer::run(spec, cursor, m, stop, wake))
                .map_err(ForwardError::Thread)?,
        );
    }
    let incident_cursor = outbox.incident_cursor()?;
    let audit_cursor = outbox.audit_cursor()?;
    // A reading a minute: a few slots are plenty; a full channel skips a reading (see `health_sender`).
    let (health, health_rx) = mpsc::channel(4);
    let current = registry.load();
    let appender = Appender {
        encoder: Encoder::new(&current),
        current,
        registry,
        pool,
        outbox,
        metrics: metrics.clone(),
        wake,
        core,
        batch_lines: f.batch_lines,
        batch_time: Duration::from_millis(f.batch_ms),
        ack_delay: Duration::from_millis(f.ack_delay_ms),
        urgent: false,
        last_drop_incident: None,
        pending: String::with_capacity(1 << 20),
        lines: 0,
        acks: Vec::new(),
        retry: RETRY_MIN,
        retry_at: None,
        incident_cursor,
        audit_cursor,
        prune_failing: false,
    };
    let appender = std::thread::Builder::new()
        .name("outbox".into())
        .spawn(move || appender.run(batches, incidents, audit, health_rx))
        .map_err(ForwardError::Thread)?;
    info!(targets = metrics.targets.len(), outbox = %f.outbox.display(), "Forwarding started.");
    Ok(Forwarder { metrics, health, stop, appender, writers })
}

impl Forwarder {
    /// Where the gateway's own lines go: a health reading becomes one `gateway` line, energy days
    /// `energy_daily` lines, committed to the outbox with the telemetry and forwarded like it. Health
    /// readings use `try_send`: when the appender is so far behind that its few slots are full, that
    /// minute's reading is not worth waiting for.
    pub fn health_sender(&self) -> mpsc::Sender<Extra> {
        self.health.clone()
    }

    /// Waits for the appender to commit what the core handed over (it ends when the core's sender is
    /// gone), then stops the writers. Whatever they have not sent stays in the outbox for next time.
    pub fn stop(self) {
        let _ = self.appender.join();
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            let _ = w.join();
        }
    }
}

fn write_url(base: &str, org: &str, bucket: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!("{}/api/v2/write?org={}&bucket={}&precision=ns", base.trim_end_matches('/'), enc(org), enc(bucket))
}

/// Minimum time between two `system` incidents about dropped data.
const DROP_INCIDENT_EVERY: Duration = Duration::from_secs(600);

/// Retry delays while the outbox cannot commit.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Incident changes read from the change log per outbox transaction.
const INCIDENT_BATCH: usize = 5_000;

/// How long the appender gathers incident commits before taking them into the outbox: one outbox
/// transaction (and fsync) for many incident-store commits in a storm. The store is not where
/// alarms are announced (central MQTT and notifications read the change log themselves).
const INCIDENT_GATHER: Duration = Duration::from_millis(20);

struct Appender {
    encoder: Encoder,
    registry: SharedRegistry,
    /// The registry `encoder` was built for.
    current: Arc<Registry>,
    pool: Arc<SamplePool>,
    outbox: Outbox,
    metrics: Arc<ForwardMetrics>,
    wake: Arc<AtomicU64>,
    core: CoreHandle,
    batch_lines: usize,
    batch_time: Duration,
    /// How long acknowledgements may wait to share a commit.
    ack_delay: Duration,
    /// A pending acknowledgement's source has a full in-flight window.
    urgent: bool,
    last_drop_incident: Option<Instant>,
    /// Telemetry lines not yet committed, and the acknowledgements waiting on them.
    pending: String,
    lines: usize,
    acks: Vec<Ack>,
    retry: Duration,
    /// Set while the outbox cannot commit: when to try again.
    retry_at: Option<tokio::time::Instant>,
    /// The last incident change committed to the outbox.
    incident_cursor: i64,
    /// The last audit record committed to the outbox.
    audit_cursor: i64,
    prune_failing: bool,
}

impl Appender {
    fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        incidents: Option<(ChangeLog, watch::Receiver<i64>)>,
        audit: Option<(AuditReader, watch::Receiver<i64>)>,
        health: mpsc::Receiver<Extra>,
    ) {
        let mut health = Some(health);
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "Cannot start the outbox thread's runtime; forwarding stopped.");
                return;
            }
        };
        let (log, mut committed) = match incidents {
            Some((log, rx)) => (Some(log), Some(rx)),
            None => (None, None),
        };
        let (trail, mut audited) = match audit {
            Some((reader, rx)) => (Some(reader), Some(rx)),
            None => (None, None),
        };
        rt.block_on(async {
            let mut since: Option<tokio::time::Instant> = None;
            let mut incidents_due: Option<tokio::time::Instant> = None;
            // Confirmed batches are deleted as writers confirm them, not only when new data arrives;
            // the change log is read on this tick too, in case a wake-up was missed.
            let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
            housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // When the oldest pending acknowledgement arrived.
            let mut acks_since: Option<tokio::time::Instant> = None;
            loop {
                let deadline = match (since, acks_since) {
                    (Some(s), Some(a)) => Some((s + self.batch_time).min(a + self.ack_delay)),
                    (s, _) => s.map(|t| t + self.batch_time),
                };
                tokio::select! {
                    b = batches.recv() => match b {
                        Some(b) => {
                            self.take(b);
                            let now = tokio::time::Instant::now();
                            since.get_or_insert(now);
                            if !self.acks.is_empty() {
                                acks_since.get_or_insert(now);
                            }
                            // Messages waiting for an acknowledgement hold the broker's in-flight
                            // window. Each commit is an fsync, so at a steady rate they gather for
                            // up to `ack_delay`, but are committed as soon as the burst is over
                            // when the window is full (the broker sends nothing more until then).
                            let due = !self.acks.is_empty()
                                && batches.is_empty()
                                && (self.urgent || self.ack_delay.is_zero());
                            if self.retry_at.is_none() && (self.lines >= self.batch_lines || due) {
                                self.commit();
                                since = None;
                                acks_since = None;
                            }
                        }
                        None => break,
                    },
                    h = recv_health(&mut health) => {
                        self.take_health(&h);
                        since.get_or_insert_with(tokio::time::Instant::now);
                    }
                    r = changed(&mut committed) => {
                        if r.is_err() {
                            committed = None;
                        }
                        incidents_due.get_or_insert_with(|| tokio::time::Instant::now() + INCIDENT_GATHER);
                    }
                    () = sleep_until(incidents_due), if self.retry_at.is_none() => {
                        incidents_due = None;
                        self.incidents(log.as_ref());
                    }
                    r = changed(&mut audited) => {
                        if r.is_err() {
                            audited = None;
                        }
                        if self.retry_at.is_none() {
                            self.audit(trail.as_ref());
                        }
                    }
                    () = sleep_until(deadline), if self.retry_at.is_none() => {
                        self.commit();
                        since = None;
                        acks_since = None;
                    }
                    () = sleep_until(self.retry_at) => {
                        self.retry_at = None;
                        self.outbox.reclaim();
                        self.commit();
                        self.incidents(log.as_ref());
                        self.audit(trail.as_ref());
                        since = None;
                        acks_since = None;
                    }
                    _ = housekeeping.tick() => {
                        if self.retry_at.is_none() {
                            self.incidents(log.as_ref());
                            self.audit(trail.as_ref());
                        }
                        self.prune(log.as_ref(), trail.as_ref());
                    }
                }
            }
            self.commit();
            // Incidents committed in the store during shutdown still go out; audit records recorded
            // later go out at the next start.
            self.incidents(log.as_ref());
            self.audit(trail.as_ref());
            if !self.pending.is_empty() {
                error!(
                    lines = self.lines,
                    "Telemetry not stored at shutdown; QoS 1 messages among it were not acknowledged."
                );
            }
            info!("Outbox appender stopped.");
        });
    }

    /// Encodes a batch into the pending telemetry. While the outbox fails, what does not fit in the
    /// bound is not held: its acknowledgement is withdrawn (the broker delivers it again) or, without
    /// one, its samples are counted lost.
    fn take(&mut self, mut b: Batch) {
        let m = &self.metrics.outbox;
        if self.retry_at.is_some() && self.lines >= self.batch_lines.saturating_mul(4) {
            let n = b.samples.len() as u64;
            match b.ack.take() {
                Some(ack) => {
                    m.unacked_samples.fetch_add(n, Ordering::Relaxed);
                    drop(ack);
                }
                None => {
                    m.lost_samples.fetch_add(n, Ordering::Relaxed);
                }
            }
        } else {
            // The core applied this batch with a registry at least this new, so every point is known.
            let reg = self.registry.peek();
            if !Arc::ptr_eq(&reg, &self.current) {
                self.current = Arc::clone(&reg);
                self.encoder = Encoder::new(&self.current);
            }
            self.lines += self.encoder.samples(&self.current, &b.samples, &mut self.pending);
            if let Some(a) = b.ack.take() {
                self.urgent |= a.is_urgent();
                self.acks.push(a);
            }
        }
        self.pool.put(std::mem::take(&mut b.samples));
    }

    /// Encodes a health reading into the pending telemetry, within the same bound as `take`: while
    /// the outbox fails and holds its fill, the reading is counted lost (one per field) instead.
    fn take_health(&mut self, extra: &Extra) {
        let full = self.retry_at.is_some() && self.lines >= self.batch_lines.saturating_mul(4);
        match extra {
            Extra::Health(_) if full => {
                let n = line::GATEWAY_FIELDS.len() as u64;
                self.metrics.outbox.lost_samples.fetch_add(n, Ordering::Relaxed);
            }
            Extra::Health(h) => {
                self.encoder.gateway(h, &mut self.pending);
                self.lines += 1;
            }
            // A day is sent again on every start until it is known handed over, and overwrites
            // itself in the store: kept even over the bound, it is a few lines a meter a day.
            Extra::EnergyDays(days) => {
                for d in days {
                    self.encoder.energy_day(d, &mut self.pending);
                    self.lines += 1;
                }
            }
        }
    }

    /// Commits the pending telemetry; on failure keeps it and schedules a retry.
    fn commit(&mut self) {
        if self.pending.is_empty() {
            // Nothing to store (every sample was filtered): the messages are done.
            for a in self.acks.drain(..) {
                a.confirm();
            }
            self.urgent = false;
            return;
        }
        let r = self.outbox.append(Kind::Telemetry, self.lines, self.pending.as_bytes(), now_ns());
        match r {
            Ok((_, dropped)) => {
                let m = &self.metrics.outbox;
                m.committed_batches.fetch_add(1, Ordering::Relaxed);
                m.committed_lines.fetch_add(self.lines as u64, Ordering::Relaxed);
                for a in self.acks.drain(..) {
                    a.confirm();
                }
                self.urgent = false;
                self.pending.clear();
                self.lines = 0;
                self.stored(dropped);
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Reads the incident change log after the outbox's cursor and commits it in batches.
    fn incidents(&mut self, log: Option<&ChangeLog>) {
        let Some(log) = log else { return };
        loop {
            let rows = match log.after(self.incident_cursor, INCIDENT_BATCH) {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(error = %e, "Cannot read the incident change log; will try again.");
                    return;
                }
            };
            let Some(last) = rows.last().map(|r| r.seq) else { break };
            let mut body = String::with_capacity(rows.len() * 256);
            for r in &rows {
                self.encoder.incident(r, &mut body);
            }
            match self.outbox.append_incidents(rows.len(), body.as_bytes(), now_ns(), last) {
                Ok((_, dropped)) => {
                    let m = &self.metrics.outbox;
                    m.committed_batches.fetch_add(1, Ordering::Relaxed);
                    m.committed_lines.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    m.incident_lines.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    self.incident_cursor = last;
                    self.stored(dropped);
                }
                Err(e) => {
                    self.failed(&e);
                    return;
                }
            }
            if rows.len() < INCIDENT_BATCH {
                break;
            }
        }
    }

    /// Reads the audit log after the outbox's audit cursor and commits it in batches.
    fn audit(&mut self, trail: Option<&AuditReader>) {
        let Some(trail) = trail else { return };
        loop {
            let records = match trail.after(self.audit_cursor, INCIDENT_BATCH) {
                Ok(records) => records,
                Err(e) => {
                    warn!(error = %e, "Cannot read the audit log; will try again.");
                    return;
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else { break };
            let mut body = String::with_capacity(records.len() * 384);
            for r in &records {
                self.encoder.audit(r, &mut body);
            }
            match self.outbox.append_audit(records.len(), body.as_bytes(), now_ns(), last) {
                Ok((_, dropped)) => {
                    let m = &self.metrics.outbox;
                    m.committed_batches.fetch_add(1, Ordering::Relaxed);
                    m.committed_lines.fetch_add(records.len() as u64, Ordering::Relaxed);
                    m.audit_lines.fetch_add(records.len() as u64, Ordering::Relaxed);
                    self.audit_cursor = last;
                    self.stored(dropped);
                }
                Err(e) => {
                    self.failed(&e);
                    return;
                }
            }
            if records.len() < INCIDENT_BATCH {
                break;
            }
        }
    }

    /// After a successful commit: report drops by the bounds, clear a failure, wake the writers.
    fn stored(&mut self, dropped: outbox::Dropped) {
        let metrics = self.metrics.clone();
        let m = &metrics.outbox;
        if dropped.batches > 0 {
            m.dropped_batches.fetch_add(dropped.batches, Ordering::Relaxed);
            m.dropped_bytes.fetch_add(dropped.bytes, Ordering::Relaxed);
            m.dropped_incidents.fetch_add(dropped.incidents, Ordering::Relaxed);
            self.report_drop(format!(
                "outbox full or too old: dropped the {} oldest batches ({} bytes, {} of them incidents) that no store had confirmed",
                dropped.batches, dropped.bytes, dropped.incidents
            ));
        }
        if m.failing.swap(false, Ordering::Relaxed) {
            info!("Outbox writable again; forwarding and acknowledgements resume.");
        }
        self.retry = RETRY_MIN;
        self.wake.fetch_add(1, Ordering::Release);
    }

    /// A commit failed: keep everything, retry later, say so once per episode.
    fn failed(&mut self, e: &OutboxError) {
        let m = &self.metrics.outbox;
        m.append_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = m.last_error.lock() {
            *last = e.to_string();
        }
        if !m.failing.swap(true, Ordering::Relaxed) {
            error!(error = %e, lines = self.lines, "Cannot store data in the outbox; holding it and not acknowledging QoS 1 messages until it can.");
            let message = format!(
                "the outbox cannot store data ({e}); QoS 1 messages are not acknowledged, other readings beyond what is held are lost, until it can"
            );
            if !self.core.system_incident("forward.outbox_failing", message) {
                error!("Could not raise the system incident for the failing outbox; the core is busy.");
            }
        }
        self.retry_at = Some(tokio::time::Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(RETRY_MAX);
    }

    /// Deletes what every target confirmed and refreshes the depth and lag gauges.
    fn prune(&mut self, log: Option<&ChangeLog>, trail: Option<&AuditReader>) {
        match self.outbox.prune() {
            Ok(_) => self.prune_failing = false,
            Err(e) => {
                // Once per episode: on a full disk this fails every second until space returns.
                if !std::mem::replace(&mut self.prune_failing, true) {
                    warn!(error = %e, "Cannot delete confirmed batches; will keep trying.");
                }
            }
        }
        if let Ok((batches, bytes)) = self.outbox.depth() {
            self.metrics.outbox.batches.store(batches, Ordering::Relaxed);
            self.metrics.outbox.bytes.store(bytes, Ordering::Relaxed);
        }
        if let Some(head) = log.and_then(|l| l.head().ok()) {
            self.metrics.outbox.incident_lag.store(head.saturating_sub(self.incident_cursor) as u64, Ordering::Relaxed);
        }
        if let Some(head) = trail.and_then(|t| t.head().ok()) {
            self.metrics.outbox.audit_lag.store(head.saturating_sub(self.audit_cursor) as u64, Ordering::Relaxed);
        }
    }

    fn report_drop(&mut self, message: String) {
        warn!(message = %message, "Forwarding dropped data.");
        if self.last_drop_incident.is_some_and(|t| t.elapsed() < DROP_INCIDENT_EVERY) {
            return;
        }
        self.last_drop_incident = Some(Instant::now());
        if !self.core.system_incident("forward.dropped", message) {
            error!("Could not raise the system incident for dropped data; the core is busy.");
        }
    }
}

/// The next health reading; pending forever once every sender is gone.
async fn recv_health(rx: &mut Option<mpsc::Receiver<Extra>>) -> Extra {
    loop {
        match rx {
            Some(r) => match r.recv().await {
                Some(h) => return h,
                None => *rx = None,
            },
            None => std::future::pending::<()>().await,
        }
    }
}

/// Waits for the change log to grow; pending forever without one.
async fn changed(rx: &mut Option<watch::Receiver<i64>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use crate::metrics::Metrics;
    use crate::model::pool::SamplePool;
    use crate::model::{Ack, Batch, PointId, Quality, Registry, Sample};

    /// A forwarder with no target (the appender does not need one) and `ack_delay_ms`.
    fn forwarder(dir: &std::path::Path, ack_delay_ms: u64) -> (super::Forwarder, mpsc::Sender<Batch>) {
        let text = format!(
            "{}\n[forward]\noutbox = \"{}\"\nack_delay_ms = {ack_delay_ms}\n",
            crate::config::tests::BASE,
            dir.join("outbox.db").display()
        );
        let config = crate::config::from_str(&text, "t.toml".as_ref(), ".".as_ref()).unwrap();
        let registry = Arc::new(Registry::from_config(&config));
        let pool = Arc::new(SamplePool::default());
        let (_core_tx, core_rx) = mpsc::channel(8);
        let core =
            crate::core::Core::new(registry.clone(), Arc::new(Metrics::new(vec![], vec![], 10)), pool.clone(), 10);
        let (core, _task) = crate::core::spawn(core, core_rx, None, None);
        let (tx, rx) = mpsc::channel(8);
        let f = super::start(&config, registry.into(), pool, rx, None, None, core).unwrap();
        (f, tx)
    }

    fn reading(urgent: bool) -> (Batch, tokio::sync::oneshot::Receiver<()>) {
        let (ack, rx) = Ack::with_urgency(urgent);
        let sample =
            Sample { point: PointId(0), quality: Quality::Good, ts: crate::model::time::now_ns(), value: 230.0 };
        let mut b = Batch::new(vec![sample], Vec::new());
        b.ack = Some(ack);
        (b, rx)
    }

    #[tokio::test]
    async fn acknowledgements_gather_for_the_delay_unless_the_window_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let (_f, tx) = forwarder(dir.path(), 60_000);
        // An ordinary reading waits to share its commit with those after it…
        let (b, mut calm) = reading(false);
        tx.send(b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(calm.try_recv().is_err(), "committed before the delay though the window was not full");
        // …until a batch arrives whose source cannot receive more: both are committed at once.
        let (b, urgent) = reading(true);
        tx.send(b).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), urgent).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(1), calm).await.unwrap().unwrap();

        // With the default delay an ordinary reading is durable within milliseconds.
        let dir = tempfile::tempdir().unwrap();
        let (_f, tx) = forwarder(dir.path(), 2);
        let (b, rx) = reading(false);
        tx.send(b).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx).await.unwrap().unwrap();
    }

    #[test]
    fn write_url_escapes_org_and_bucket() {
        assert_eq!(
            super::write_url("http://h:8086/", "my org", "b/1"),
            "http://h:8086/api/v2/write?org=my%20org&bucket=b%2F1&precision=ns"
        );
    }
}
