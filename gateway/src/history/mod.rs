//! Edge history: 1-minute and 1-hour rollups of every point in `history.db`, for trends on the park
//! LAN when the uplink is down.
//!
//! The core hands each applied batch's samples to [`History::offer`]: one copy into a recycled vector
//! and a `try_send` on a bounded channel, never a wait. When the channel is full the samples are
//! dropped and counted (`parkwatch_history_dropped_samples_total`, health component `history`
//! degraded): history may lose detail, ingestion and alarms never slow down for it.
//!
//! One writer thread owns the writing connection: it rolls samples up in memory
//! ([`rollup::Roller`]), writes the finished buckets in one transaction a second (or every
//! [`BATCH_ROWS`] rows), prunes by age hourly and keeps the file under `history.max_bytes`
//! (dropping the oldest 1-minute day when the bound is reached). A write that fails (disk full, I/O
//! error) keeps its rows in memory (bounded, the overflow counted), is retried with a growing delay,
//! is logged once when it starts failing and once when it recovers, and shows as `history` degraded.
//!
//! Owns: `history.db`, the rollup math, the writer thread and its counters. May import: `config`.

pub mod rollup;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use self::rollup::{Agg, Kind, Res};
pub use self::store::HistoryError;
use crate::model::pool::SamplePool;
use crate::model::time::Clock;
use crate::model::{Quality, Sample, SharedRegistry};

/// Batches the channel to the writer holds.
pub const QUEUE_BATCHES: usize = 1024;
/// A transaction is committed at this many rows, or once a second.
pub const BATCH_ROWS: usize = 20_000;
/// Rows kept in memory while writes fail; beyond it the oldest are dropped and counted.
const PENDING_MAX: usize = 500_000;
/// A minute is written this long after it ended by the gateway's clock (ns); later parts of it (a
/// hold completed by the next reading) are added to it then.
const GRACE: i64 = 5_000_000_000;
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// Hours are written as deltas once a minute, so the hourly view is current within a minute.
const HOURS_EVERY: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(60);
const DAY_MS: i64 = 86_400_000;

/// Counters of the history writer (exported in `/metrics`).
#[derive(Debug, Default)]
pub struct HistoryMetrics {
    /// Samples taken into the rollups.
    pub samples: AtomicU64,
    /// Samples dropped because the writer's channel was full.
    pub dropped_samples: AtomicU64,
    /// Samples of bad or uncertain quality, or not finite, kept out of the aggregates.
    pub bad_samples: AtomicU64,
    /// Samples older than the point's newest, not rolled up.
    pub out_of_order_samples: AtomicU64,
    /// Rollup rows written (deltas; a bucket may be written more than once).
    pub rows_written: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Failed writes (each retried).
    pub write_errors: AtomicU64,
    /// Rows dropped from memory while writes kept failing.
    pub lost_rows: AtomicU64,
    /// Rows removed because they were older than their retention.
    pub pruned_rows: AtomicU64,
    /// Rows removed to stay under `history.max_bytes`.
    pub pruned_for_space: AtomicU64,
    /// Bytes the database takes on disk (gauge).
    pub disk_bytes: AtomicU64,
    /// The last write failed (until one succeeds).
    pub failing: AtomicBool,
    /// Why the last write failed.
    pub last_error: Mutex<String>,
}

/// The core's side: hands samples to the writer without waiting. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    tx: SyncSender<Vec<Sample>>,
    pool: Arc<SamplePool>,
    metrics: Arc<HistoryMetrics>,
}

impl History {
    /// Copies `samples` to the writer; when its channel is full they are dropped and counted.
    pub fn offer(&self, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        let mut v = self.pool.take();
        v.extend_from_slice(samples);
        match self.tx.try_send(v) {
            Ok(()) => {}
            Err(TrySendError::Full(v) | TrySendError::Disconnected(v)) => {
                self.metrics.dropped_samples.fetch_add(v.len() as u64, Relaxed);
                self.pool.put(v);
            }
        }
    }
}

/// What the API needs to read history: the file and the counters.
#[derive(Debug, Clone)]
pub struct HistoryReader {
    pub path: PathBuf,
    pub metrics: Arc<HistoryMetrics>,
    /// Days of 1-minute rollups kept.
    pub minute_days: u32,
    /// The disk bound, `history.max_bytes`.
    pub max_bytes: u64,
}

impl HistoryReader {
    /// The buckets of `(device, point)` at `res` starting in `[from, to)` (UTC ms), oldest first.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn read(&self, device: &str, point: &str, res: Res, from: i64, to: i64) -> Result<Vec<Agg>, HistoryError> {
        let conn = store::open_read(&self.path)?;
        store::read(&conn, device, point, res, from, to)
    }
}

/// The history settings the writer runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub path: PathBuf,
    pub minute_days: u32,
    pub hour_days: u32,
    pub max_bytes: u64,
}

impl Settings {
    /// From `[history]`; `None` when history is off.
    pub fn from_config(config: &crate::config::Config) -> Option<Self> {
        let h = &config.history;
        h.enabled.then(|| Self {
            path: h.db_path(&config.incidents.path),
            minute_days: h.minute_days,
            hour_days: h.hour_days,
            max_bytes: h.max_bytes,
        })
    }
}

/// Opens `history.db` and starts the writer thread; it ends once every [`History`] clone is gone,
/// after writing what it holds.
///
/// # Errors
/// The database cannot be opened or the thread not started.
pub fn start(
    settings: &Settings,
    registry: impl Into<SharedRegistry>,
    clock: Arc<dyn Clock>,
) -> Result<(History, HistoryReader, JoinHandle<()>), HistoryError> {
    let shared: SharedRegistry = registry.into();
    let registry = &*shared.load();
    let mut conn = store::open(&settings.path, settings.max_bytes)?;
    let names: Vec<(&str, &str)> =
        registry.points.iter().map(|p| (registry.device(p.device).id.as_str(), p.name.as_str())).collect();
    let series = store::series(&mut conn, &names)?;
    let metrics = Arc::new(HistoryMetrics::default());
    metrics.disk_bytes.store(store::disk_bytes(&conn, &settings.path), Relaxed);
    let mut roller = rollup::Roller::new(registry.points.iter().map(|p| Kind::of_unit(&p.unit)));
    let now_ms = clock.wall_ns() / 1_000_000;
    for (i, p) in registry.points.iter().enumerate() {
        if Kind::of_unit(&p.unit) != Kind::Energy {
            continue;
        }
        if let Some((t, counter)) = store::last_reading(&conn, series[i])? {
            // The stored minute starts up to a minute before its last reading.
            if now_ms - t <= rollup::MAX_HOLD / 1_000_000 + 60_000 {
                roller.resume_counter(i as u32, counter);
            }
        }
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
    let pool = Arc::new(SamplePool::default());
    let writer = Writer {
        registry: shared.clone(),
        conn,
        path: settings.path.clone(),
        series,
        roller,
        pending: Vec::new(),
        metrics: metrics.clone(),
        clock,
        pool: pool.clone(),
        minute_days: settings.minute_days,
        hour_days: settings.hour_days,
        retry: Duration::from_secs(1),
    };
    let thread = std::thread::Builder::new()
        .name("history".into())
        .spawn(move || writer.run(rx))
        .map_err(HistoryError::Thread)?;
    let reader = HistoryReader {
        path: settings.path.clone(),
        metrics: metrics.clone(),
        minute_days: settings.minute_days,
        max_bytes: settings.max_bytes,
    };
    Ok((History { tx, pool, metrics }, reader, thread))
}

struct Writer {
    /// Where the points a reload or a provisioned device adds are named.
    registry: SharedRegistry,
    conn: rusqlite::Connection,
    path: PathBuf,
    series: Vec<i64>,
    roller: rollup::Roller,
    /// Rows waiting for a successful commit.
    pending: Vec<rollup::Row>,
    metrics: Arc<HistoryMetrics>,
    clock: Arc<dyn Clock>,
    pool: Arc<SamplePool>,
    minute_days: u32,
    hour_days: u32,
    retry: Duration,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Vec<Sample>>) {
        let start = Instant::now();
        let mut next_commit = start + COMMIT_EVERY;
        let mut next_hours = start + HOURS_EVERY;
        let mut next_prune = start;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(v) => {
                    self.take(&v);
                    self.pool.put(v);
                    if self.roller.rows.len() + self.pending.len() < BATCH_ROWS {
                        continue;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_hours {
                self.roller.flush_hours();
                next_hours = now + HOURS_EVERY;
            }
            if now >= next_commit || self.roller.rows.len() >= BATCH_ROWS {
                self.roller.sweep(self.clock.wall_ns(), GRACE);
                if self.commit() {
                    next_commit = now + COMMIT_EVERY;
                } else {
                    next_commit = now + self.retry;
                    self.retry = (self.retry * 2).min(RETRY_MAX);
                }
            }
            if now >= next_prune && !self.metrics.failing.load(Relaxed) {
                self.prune();
                next_prune = now + PRUNE_EVERY;
            }
        }
        self.roller.sweep(self.clock.wall_ns(), GRACE);
        self.roller.flush_all();
        if !self.commit() {
            warn!(rows = self.pending.len(), "History rows not written at stop.");
        }
    }

    fn take(&mut self, samples: &[Sample]) {
        let mut skipped = rollup::Skipped::default();
        // Points a reload or provisioning added are named once per batch (a failure is not retried
        // for every sample).
        let mut named = false;
        for s in samples {
            if !named && s.point.0 as usize >= self.series.len() {
                named = true;
                self.add_points();
            }
            self.roller.push(s.point.0, s.ts, s.value, s.quality == Quality::Good, &mut skipped);
        }
        let m = &self.metrics;
        m.samples.fetch_add(samples.len() as u64, Relaxed);
        if skipped.bad > 0 {
            m.bad_samples.fetch_add(skipped.bad, Relaxed);
        }
        if skipped.out_of_order > 0 {
            m.out_of_order_samples.fetch_add(skipped.out_of_order, Relaxed);
        }
    }

    /// Takes on the points the registry gained since the writer last looked (a re-entered device's
    /// points find their old series by name, so its history continues).
    fn add_points(&mut self) {
        let registry = self.registry.load();
        let have = self.series.len();
        if registry.points.len() <= have {
            return;
        }
        let new = &registry.points[have..];
        let names: Vec<(&str, &str)> =
            new.iter().map(|p| (registry.device(p.device).id.as_str(), p.name.as_str())).collect();
        match store::series(&mut self.conn, &names) {
            Ok(ids) => {
                self.series.extend(ids);
                self.roller.extend(new.iter().map(|p| Kind::of_unit(&p.unit)));
                info!(points = new.len(), "History keeps the new points.");
            }
            // Their samples are skipped until a later batch gets the series written.
            Err(e) => warn!(error = %e, points = new.len(), "History cannot name the new points yet."),
        }
    }

    /// Writes what is pending; false when the write failed (the rows stay, up to a bound).
    fn commit(&mut self) -> bool {
        self.pending.append(&mut self.roller.rows);
        if self.pending.is_empty() {
            return true;
        }
        let mut result = store::write(&mut self.conn, &self.series, &self.pending);
        // The bound (or the disk) is full: the oldest minutes make room for the newest, as long as
        // there are any.
        while result.as_ref().is_err_and(HistoryError::is_full) {
            match store::make_room(&self.conn) {
                Ok(n) if n > 0 => {
                    self.metrics.pruned_for_space.fetch_add(n, Relaxed);
                    result = store::write(&mut self.conn, &self.series, &self.pending);
                }
                _ => break,
            }
        }
        let m = &self.metrics;
        match result {
            Ok(()) => {
                m.rows_written.fetch_add(self.pending.len() as u64, Relaxed);
                m.commits.fetch_add(1, Relaxed);
                self.pending.clear();
                self.retry = Duration::from_secs(1);
                if m.failing.swap(false, Relaxed) {
                    info!("History writes again.");
                }
                m.disk_bytes.store(store::disk_bytes(&self.conn, &self.path), Relaxed);
                true
            }
            Err(e) => {
                m.write_errors.fetch_add(1, Relaxed);
                let text = e.to_string();
                if !m.failing.swap(true, Relaxed) {
                    warn!(error = %text, rows = self.pending.len(), "History cannot write; retrying. Ingestion and alarms go on.");
                }
                if let Ok(mut last) = m.last_error.lock() {
                    *last = text;
                }
                if self.pending.len() > PENDING_MAX {
                    let over = self.pending.len() - PENDING_MAX;
                    self.pending.drain(..over);
                    m.lost_rows.fetch_add(over as u64, Relaxed);
                }
                false
            }
        }
    }

    fn prune(&mut self) {
        let now_ms = self.clock.wall_ns() / 1_000_000;
        let minute_cutoff = now_ms - i64::from(self.minute_days) * DAY_MS;
        let hour_cutoff = now_ms - i64::from(self.hour_days) * DAY_MS;
        match store::prune(&self.conn, &self.series, minute_cutoff, hour_cutoff) {
            Ok(n) => {
                self.metrics.pruned_rows.fetch_add(n, Relaxed);
            }
            Err(e) => warn!(error = %e, "History pruning failed; tried again in an hour."),
        }
    }
}

#[cfg(test)]
mod tests;
