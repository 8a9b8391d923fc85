//! Forwarding: samples (after the core applied them) and incidents (after they were committed) become
//! InfluxDB line protocol, are batched by size and time, committed to the durable outbox — only then
//! are their MQTT messages acknowledged — and drained in order by one writer per target.
//!
//! The appender runs on a thread of its own (SQLite commits block), the writers on theirs (blocking
//! HTTP). Every drop — outbox full, too old, disk full — is counted and raises a `system` incident.

pub mod central;
pub mod line;
pub mod outbox;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tracing::{error, info, warn};

use self::line::{Encoder, IncidentLine};
use self::outbox::{Cursor, Kind, Outbox, OutboxError};
use self::writer::{TargetMetrics, TargetSpec};
use crate::config::Config;
use crate::core::CoreHandle;
use crate::incident::Incident;
use crate::model::{Batch, Registry};
use crate::source::mqtt::now_ns;
use crate::source::pool::SamplePool;

/// Counters of the outbox as a whole.
#[derive(Debug, Default)]
pub struct OutboxMetrics {
    pub committed_batches: AtomicU64,
    pub committed_lines: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub dropped_incidents: AtomicU64,
    pub append_errors: AtomicU64,
    /// Lines that could not be stored at all (after making room failed).
    pub lost_lines: AtomicU64,
    pub incident_lines_lagged: AtomicU64,
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

/// Starts the appender and the writers. `batches` come from the core; `incidents` from the store.
///
/// # Errors
/// The outbox cannot be opened, or a thread cannot start.
pub fn start(
    config: &Config,
    registry: Arc<Registry>,
    pool: Arc<SamplePool>,
    batches: mpsc::Receiver<Batch>,
    incidents: Option<broadcast::Receiver<Incident>>,
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
    let appender = Appender {
        encoder: Encoder::new(&registry),
        registry,
        pool,
        outbox,
        metrics: metrics.clone(),
        wake,
        core,
        batch_lines: f.batch_lines,
        batch_time: Duration::from_millis(f.batch_ms),
        last_drop_incident: None,
    };
    let appender = std::thread::Builder::new()
        .name("outbox".into())
        .spawn(move || appender.run(batches, incidents))
        .map_err(ForwardError::Thread)?;
    info!(targets = metrics.targets.len(), outbox = %f.outbox.display(), "Forwarding started.");
    Ok(Forwarder { metrics, stop, appender, writers })
}

impl Forwarder {
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

struct Appender {
    encoder: Encoder,
    registry: Arc<Registry>,
    pool: Arc<SamplePool>,
    outbox: Outbox,
    metrics: Arc<ForwardMetrics>,
    wake: Arc<AtomicU64>,
    core: CoreHandle,
    batch_lines: usize,
    batch_time: Duration,
    last_drop_incident: Option<Instant>,
}

impl Appender {
    fn run(mut self, mut batches: mpsc::Receiver<Batch>, incidents: Option<broadcast::Receiver<Incident>>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "Cannot start the outbox thread's runtime; forwarding stopped.");
                return;
            }
        };
        rt.block_on(async move {
            let mut incidents = incidents;
            let mut pending = String::with_capacity(1 << 20);
            let mut lines = 0usize;
            let mut acks = Vec::new();
            let mut since: Option<tokio::time::Instant> = None;
            // Confirmed batches are deleted as writers confirm them, not only when new data arrives.
            let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
            housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let deadline = since.map(|t| t + self.batch_time);
                tokio::select! {
                    b = batches.recv() => match b {
                        Some(mut b) => {
                            lines += self.encoder.samples(&self.registry, &b.samples, &mut pending);
                            if let Some(a) = b.ack.take() {
                                acks.push(a);
                            }
                            self.pool.put(std::mem::take(&mut b.samples));
                            since.get_or_insert_with(tokio::time::Instant::now);
                            // Messages waiting for an acknowledgement hold the broker's in-flight
                            // window: commit as soon as the burst is over.
                            if lines >= self.batch_lines || (!acks.is_empty() && batches.is_empty()) {
                                self.commit(Kind::Telemetry, &mut pending, &mut lines, &mut acks);
                                since = None;
                            }
                        }
                        None => break,
                    },
                    i = recv_incident(&mut incidents) => match i {
                        Ok(i) => self.incident(&i),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            self.metrics.outbox.incident_lines_lagged.fetch_add(n, Ordering::Relaxed);
                            warn!(missed = n, "Incident changes came faster than the outbox took them; some were not forwarded.");
                        }
                        Err(broadcast::error::RecvError::Closed) => incidents = None,
                    },
                    () = sleep_until(deadline) => {
                        self.commit(Kind::Telemetry, &mut pending, &mut lines, &mut acks);
                        since = None;
                    }
                    _ = housekeeping.tick() => self.prune(),
                }
            }
            self.commit(Kind::Telemetry, &mut pending, &mut lines, &mut acks);
            // Incidents committed in the store during shutdown still go out.
            if let Some(rx) = incidents.as_mut() {
                while let Ok(i) = rx.try_recv() {
                    self.incident(&i);
                }
            }
            info!("Outbox appender stopped.");
        });
    }

    fn incident(&mut self, i: &Incident) {
        let at = chrono::DateTime::parse_from_rfc3339(&i.updated_at)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or_else(now_ns);
        let mut body = String::new();
        self.encoder.incident(
            &IncidentLine {
                id: i.id,
                at,
                rule: &i.rule,
                severity: &i.severity,
                category: &i.category,
                grid: &i.grid,
                device: &i.device,
                state: &i.state,
                value: i.value.unwrap_or(f64::NAN),
                message: &i.message,
            },
            &mut body,
        );
        let mut lines = 1;
        self.commit(Kind::Incident, &mut body, &mut lines, &mut Vec::new());
    }

    fn commit(
        &mut self,
        kind: Kind,
        body: &mut String,
        lines: &mut usize,
        acks: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        if body.is_empty() {
            // Nothing to store (every sample was filtered): the messages are done.
            for a in acks.drain(..) {
                let _ = a.send(());
            }
            return;
        }
        let metrics = self.metrics.clone();
        let m = &metrics.outbox;
        match self.outbox.append(kind, *lines, body.as_bytes(), now_ns()) {
            Ok((_, dropped)) => {
                m.committed_batches.fetch_add(1, Ordering::Relaxed);
                m.committed_lines.fetch_add(*lines as u64, Ordering::Relaxed);
                m.failing.store(false, Ordering::Relaxed);
                if dropped.batches > 0 {
                    m.dropped_batches.fetch_add(dropped.batches, Ordering::Relaxed);
                    m.dropped_bytes.fetch_add(dropped.bytes, Ordering::Relaxed);
                    m.dropped_incidents.fetch_add(dropped.incidents, Ordering::Relaxed);
                    self.report_drop(format!(
                        "outbox full or too old: dropped the {} oldest batches ({} bytes, {} of them incidents) that no store had confirmed",
                        dropped.batches, dropped.bytes, dropped.incidents
                    ));
                }
                self.wake.fetch_add(1, Ordering::Release);
            }
            Err(e) => {
                m.append_errors.fetch_add(1, Ordering::Relaxed);
                *m.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                m.failing.store(true, Ordering::Relaxed);
                m.lost_lines.fetch_add(*lines as u64, Ordering::Relaxed);
                error!(error = %e, lines = *lines, "Cannot store a batch in the outbox; it is lost.");
                self.report_drop(format!("cannot store data in the outbox ({e}); {lines} lines lost"));
            }
        }
        // Durable, or lost and counted: either way the messages are settled.
        for a in acks.drain(..) {
            let _ = a.send(());
        }
        body.clear();
        *lines = 0;
        self.prune();
    }

    /// Deletes what every target confirmed and refreshes the depth gauges.
    fn prune(&mut self) {
        if let Err(e) = self.outbox.prune() {
            warn!(error = %e, "Cannot delete confirmed batches.");
        }
        if let Ok((batches, bytes)) = self.outbox.depth() {
            self.metrics.outbox.batches.store(batches, Ordering::Relaxed);
            self.metrics.outbox.bytes.store(bytes, Ordering::Relaxed);
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

async fn recv_incident(
    rx: &mut Option<broadcast::Receiver<Incident>>,
) -> Result<Incident, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
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
    #[test]
    fn write_url_escapes_org_and_bucket() {
        assert_eq!(
            super::write_url("http://h:8086/", "my org", "b/1"),
            "http://h:8086/api/v2/write?org=my%20org&bucket=b%2F1&precision=ns"
        );
    }
}
