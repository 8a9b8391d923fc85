//! Incidents on disk: every alarm episode with its transitions, acknowledgements, shelving and comments
//! (who and when), in SQLite (WAL). One thread owns the writing connection; changes are committed in
//! order, in group commits, and only then are the sources told their readings are durable and the
//! sinks (outbox, central MQTT) told there is more to read from the change log (`changes.rs`).
//!
//! A write that fails (disk full, I/O error) is kept in memory and retried with backoff until it
//! succeeds, without waiting for another change; meanwhile the API shows the pending changes over what
//! is on disk, marked not persisted, and the readings behind them are not acknowledged. Nothing here
//! panics on a failing disk.
//!
//! Owns: the incident model as the API shows it, the incident database, its change log and cursors.
//! May import: `model`.

pub mod changes;
pub mod kpi;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use self::changes::ChangeClock;
use crate::model::incident::{Change, IncidentUpdate, NewIncident, OpenIncident, Severity, State};
use crate::model::time::fmt_ns;
use crate::model::Ack;

/// Changes kept in memory while the database fails; beyond this the oldest are dropped and counted
/// (their readings are not acknowledged, so the broker delivers them again).
const PENDING_MAX: usize = 50_000;

/// Changes committed in one transaction at most (a group commit).
const GROUP_MAX: usize = 5_000;

/// Retry delays while the database fails.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The incident store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("incident database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("incident database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("incident {0} not found")]
    NotFound(i64),
    #[error("incident {0} is already closed")]
    Closed(i64),
    #[error("the incident store has stopped")]
    Stopped,
}

/// An incident as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Incident {
    pub id: i64,
    pub rule: String,
    pub title: String,
    pub category: String,
    pub severity: String,
    pub state: String,
    pub device: String,
    pub grid: String,
    pub point: String,
    pub value: Option<f64>,
    pub peak: Option<f64>,
    pub message: String,
    pub plan: String,
    pub raised_at: String,
    pub updated_at: String,
    pub returned_at: Option<String>,
    pub acked_at: Option<String>,
    pub acked_by: Option<String>,
    pub closed_at: Option<String>,
    pub shelved_until: Option<String>,
    pub chattering: bool,
    /// Seconds from raise to the first acknowledgement.
    pub response_secs: Option<f64>,
    /// False while the latest changes are only in memory (the database is failing; they are retried).
    pub persisted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    #[serde(skip)]
    raised_ns: i64,
}

/// One line of an incident's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryEntry {
    pub at: String,
    pub kind: String,
    pub state: Option<String>,
    pub severity: Option<String>,
    pub value: Option<f64>,
    pub who: Option<String>,
    pub note: Option<String>,
}

/// Which incidents a list wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A state name, or `open` for every state but normal.
    pub state: Option<String>,
    pub grid: Option<String>,
    /// The grids the asker may see; `None` is the whole site.
    pub scope: Option<Vec<String>>,
    pub severity: Option<String>,
    pub category: Option<String>,
    pub device: Option<String>,
    /// Raised at or after (UTC ns).
    pub since: Option<i64>,
    /// Raised before (UTC ns).
    pub until: Option<i64>,
    pub limit: usize,
}

impl Filter {
    fn matches(&self, i: &Incident) -> bool {
        let state_ok = match self.state.as_deref() {
            Some("open") => i.state != "normal",
            Some("closed") => i.state == "normal",
            Some(s) => i.state == s,
            None => true,
        };
        state_ok
            && self.grid.as_ref().is_none_or(|g| *g == i.grid)
            && in_scope(self.scope.as_deref(), &i.grid)
            && self.severity.as_ref().is_none_or(|s| *s == i.severity)
            && self.category.as_ref().is_none_or(|c| *c == i.category)
            && self.device.as_ref().is_none_or(|d| *d == i.device)
            && self.since.is_none_or(|t| i.raised_ns >= t)
            && self.until.is_none_or(|t| i.raised_ns < t)
    }
}

fn in_scope(scope: Option<&[String]>, grid: &str) -> bool {
    scope.is_none_or(|s| s.iter().any(|g| g == grid))
}

/// An operator action on an incident that has no live alarm (system incidents, removed rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manual {
    Ack,
    Close,
}

enum Cmd {
    Apply(Vec<Change>, Option<Ack>),
    Manual {
        id: i64,
        action: Manual,
        who: String,
        note: Option<String>,
        at: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Comment {
        id: i64,
        who: String,
        text: String,
        at: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Sync(oneshot::Sender<()>),
    List(Filter, oneshot::Sender<Result<Vec<Incident>, StoreError>>),
    Get(i64, Option<Vec<String>>, oneshot::Sender<Result<Option<Incident>, StoreError>>),
}

/// Counters of the store.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Changes committed.
    pub committed: AtomicU64,
    /// Transactions committed (group commits).
    pub commits: AtomicU64,
    /// Commits that failed (each is retried).
    pub write_errors: AtomicU64,
    /// Changes dropped after the database failed for too long.
    pub dropped: AtomicU64,
    /// Changes waiting in memory for the database.
    pub pending: AtomicU64,
    /// True while the last commit failed.
    pub failing: AtomicBool,
    /// Why the last commit failed.
    pub last_error: std::sync::Mutex<String>,
}

/// A cheap handle to the incident store thread.
#[derive(Clone, Debug)]
pub struct IncidentStore {
    tx: mpsc::Sender<Cmd>,
    committed: watch::Receiver<i64>,
    pub metrics: Arc<StoreMetrics>,
    /// The database file, for readers that should not queue behind the writer (`None` in memory).
    path: Option<PathBuf>,
}

/// Creates the schema (and brings an older one up to date) on `conn`.
pub(crate) fn schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=ON;
         CREATE TABLE IF NOT EXISTS incidents(
            id INTEGER PRIMARY KEY, rule TEXT NOT NULL, title TEXT NOT NULL, category TEXT NOT NULL,
            severity TEXT NOT NULL, state TEXT NOT NULL, device TEXT NOT NULL, grid TEXT NOT NULL,
            point TEXT NOT NULL, value REAL, peak REAL, message TEXT NOT NULL, plan TEXT NOT NULL,
            raised_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, returned_at INTEGER, acked_at INTEGER,
            acked_by TEXT, closed_at INTEGER, shelved_until INTEGER, chattering INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX IF NOT EXISTS incidents_state ON incidents(state);
         CREATE INDEX IF NOT EXISTS incidents_raised ON incidents(raised_at);
         CREATE TABLE IF NOT EXISTS incident_events(
            seq INTEGER PRIMARY KEY, incident INTEGER NOT NULL REFERENCES incidents(id), at INTEGER NOT NULL,
            kind TEXT NOT NULL, state TEXT, severity TEXT, value REAL, who TEXT, note TEXT);
         CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events(incident);
         CREATE INDEX IF NOT EXISTS incident_events_at ON incident_events(at);
         CREATE TABLE IF NOT EXISTS sink_cursors(sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);",
    )?;
    let has_ts: bool =
        conn.prepare("SELECT 1 FROM pragma_table_info('incident_events') WHERE name = 'ts'")?.exists([])?;
    if !has_ts {
        // Changes written before unique timestamps existed keep their own time (`COALESCE(ts, at)`).
        conn.execute_batch("ALTER TABLE incident_events ADD COLUMN ts INTEGER")?;
    }
    Ok(())
}

/// Opens (creating when needed) the database, returning its open incidents and the next free id.
///
/// # Errors
/// The file cannot be opened or its schema created.
pub fn open(path: &Path) -> Result<(Connection, Vec<OpenIncident>, i64), StoreError> {
    let err = |source| StoreError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    schema(&conn).map_err(err)?;
    let next: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM incidents", [], |r| r.get(0)).map_err(err)?;
    let mut stmt = conn
        .prepare("SELECT id, rule, device, state, severity, shelved_until, peak FROM incidents WHERE state != 'normal'")
        .map_err(err)?;
    let open = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<f64>>(6)?,
            ))
        })
        .map_err(err)?
        .filter_map(Result::ok)
        .filter_map(|(id, rule, device, state, severity, shelved_until, peak)| {
            Some(OpenIncident {
                id,
                rule,
                device,
                state: State::parse(&state)?,
                severity: Severity::parse(&severity)?,
                shelved_until,
                peak: peak.unwrap_or(f64::NAN),
            })
        })
        .collect();
    drop(stmt);
    Ok((conn, open, next))
}

/// Starts the store thread on an opened connection.
///
/// # Errors
/// The change log cannot be read, or the thread cannot start.
pub fn spawn(conn: Connection) -> Result<(IncidentStore, std::thread::JoinHandle<()>), StoreError> {
    let (head, last_ts): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(COALESCE(ts, at)), 0) FROM incident_events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (tx, rx) = mpsc::channel(1024);
    let (committed_tx, committed) = watch::channel(head);
    let metrics = Arc::new(StoreMetrics::default());
    let path = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from);
    let store = IncidentStore { tx, committed, metrics: metrics.clone(), path };
    let writer = Writer {
        conn,
        clock: ChangeClock::after(last_ts),
        pending: Vec::new(),
        acks: Vec::new(),
        committed: committed_tx,
        metrics,
        retry: RETRY_MIN,
        retry_at: None,
    };
    let thread = std::thread::Builder::new().name("incidents".into()).spawn(move || writer.run(rx)).map_err(|e| {
        StoreError::Open {
            path: PathBuf::from("(thread)"),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        }
    })?;
    Ok((store, thread))
}

impl IncidentStore {
    /// Queues changes; they are committed in order. `ack` (the readings that caused them) is confirmed
    /// once they are committed, and dropped unconfirmed if they never are.
    ///
    /// # Errors
    /// [`StoreError::Stopped`] when the store thread is gone.
    pub async fn apply(&self, changes: Vec<Change>, ack: Option<Ack>) -> Result<(), StoreError> {
        self.tx.send(Cmd::Apply(changes, ack)).await.map_err(|_| StoreError::Stopped)
    }

    /// Waits until everything queued before this call is committed (or failed and queued for retry).
    ///
    /// # Errors
    /// [`StoreError::Stopped`].
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Sync(reply)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Acknowledges or closes an incident that has no live alarm.
    ///
    /// # Errors
    /// Not found, already closed, or a database error.
    pub async fn manual(
        &self,
        id: i64,
        action: Manual,
        who: String,
        note: Option<String>,
        at: i64,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Manual { id, action, who, note, at, reply }).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Adds a comment to an incident's history.
    ///
    /// # Errors
    /// Not found, or a database error.
    pub async fn comment(&self, id: i64, who: String, text: String, at: i64) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Comment { id, who, text, at, reply }).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Incidents matching `filter`, newest first, including changes not yet on disk.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Incident>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::List(filter, reply)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// One incident with its history; `None` also when it is outside `scope` (the grids the asker
    /// may see, `None` for the whole site).
    ///
    /// # Errors
    /// A database error.
    pub async fn get(&self, id: i64, scope: Option<Vec<String>>) -> Result<Option<Incident>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Get(id, scope, reply)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// The supervisor KPIs of `grids` (all grids with incidents when empty) over `[from, to)`, read
    /// from the committed incidents on a connection of their own.
    ///
    /// # Errors
    /// A database error, or a store without a file.
    pub async fn kpis(
        &self,
        grids: Vec<String>,
        from: i64,
        to: i64,
    ) -> Result<std::collections::BTreeMap<String, kpi::GridKpis>, StoreError> {
        let Some(path) = self.path.clone() else { return Err(StoreError::Stopped) };
        tokio::task::spawn_blocking(move || kpi::compute(&kpi::open_reader(&path)?, &grids, from, to))
            .await
            .map_err(|_| StoreError::Stopped)?
    }

    /// The sequence number of the newest committed change; sinks wait on it to read the change log.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// A reading connection on this store's change log.
    ///
    /// # Errors
    /// The database has no file (in memory) or cannot be opened.
    pub fn change_log(&self) -> Result<changes::ChangeLog, StoreError> {
        let path = self.path.as_deref().ok_or_else(|| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source: rusqlite::Error::InvalidPath(PathBuf::from(":memory:")),
        })?;
        changes::ChangeLog::open(path)
    }
}

/// The store thread's state: the writing connection and what waits for it.
struct Writer {
    conn: Connection,
    clock: ChangeClock,
    /// Changes not yet committed, in order, and the acknowledgements waiting on them.
    pending: Vec<Change>,
    acks: Vec<Ack>,
    committed: watch::Sender<i64>,
    metrics: Arc<StoreMetrics>,
    retry: Duration,
    /// Set while the database fails: when to try again.
    retry_at: Option<tokio::time::Instant>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "Cannot start the incident store's runtime; incidents are not stored.");
                return;
            }
        };
        rt.block_on(async {
            loop {
                let cmd = tokio::select! {
                    cmd = rx.recv() => cmd,
                    () = sleep_until(self.retry_at) => {
                        self.flush();
                        continue;
                    }
                };
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Apply(changes, ack) => {
                        self.queue(changes, ack);
                        // Group commit: everything already waiting goes into the same transaction.
                        let mut other = None;
                        while self.pending.len() < GROUP_MAX {
                            match rx.try_recv() {
                                Ok(Cmd::Apply(changes, ack)) => self.queue(changes, ack),
                                Ok(cmd) => {
                                    other = Some(cmd);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        // While the disk fails, the retry timer paces the attempts.
                        if self.retry_at.is_none() {
                            self.flush();
                        }
                        if let Some(cmd) = other {
                            self.handle(cmd);
                        }
                    }
                    cmd => self.handle(cmd),
                }
            }
        });
        self.flush();
        if !self.pending.is_empty() {
            error!(
                lost = self.pending.len(),
                "Incident changes could not be written at shutdown; their readings were not acknowledged."
            );
        }
        info!("Incident store stopped.");
    }

    fn queue(&mut self, changes: Vec<Change>, ack: Option<Ack>) {
        self.pending.extend(changes);
        self.acks.extend(ack);
        if self.pending.len() > PENDING_MAX {
            let n = self.pending.len() - PENDING_MAX;
            self.pending.drain(..n);
            // Which readings caused the dropped changes is not tracked: fail them all, so every one is
            // delivered again rather than one acknowledged without its change.
            self.acks.clear();
            self.metrics.dropped.fetch_add(n as u64, Ordering::Relaxed);
            error!(dropped = n, "Incident changes dropped: the database has been failing too long.");
        }
        self.metrics.pending.store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Commits what is pending; on failure keeps it and schedules a retry.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            self.retry_at = None;
            return;
        }
        match commit(&mut self.conn, &mut self.clock, &self.pending) {
            Ok(head) => {
                let m = &self.metrics;
                m.committed.fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                m.commits.fetch_add(1, Ordering::Relaxed);
                m.pending.store(0, Ordering::Relaxed);
                self.pending.clear();
                for a in self.acks.drain(..) {
                    a.confirm();
                }
                if head > 0 {
                    self.committed.send_replace(head);
                }
                if self.retry_at.take().is_some() {
                    m.failing.store(false, Ordering::Relaxed);
                    info!("Incident database writable again; pending changes committed.");
                }
                self.retry = RETRY_MIN;
            }
            Err(e) => {
                // A full disk is often a write-ahead log that could not be checkpointed: give it back.
                let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                let m = &self.metrics;
                m.write_errors.fetch_add(1, Ordering::Relaxed);
                if !m.failing.swap(true, Ordering::Relaxed) {
                    error!(error = %e, pending = self.pending.len(), "Cannot write incidents; keeping them in memory and retrying.");
                }
                if let Ok(mut last) = m.last_error.lock() {
                    *last = e.to_string();
                }
                self.retry_at = Some(tokio::time::Instant::now() + self.retry);
                self.retry = (self.retry * 2).min(RETRY_MAX);
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Apply(changes, ack) => {
                self.queue(changes, ack);
                if self.retry_at.is_none() {
                    self.flush();
                }
            }
            Cmd::Manual { id, action, who, note, at, reply } => {
                self.flush();
                let r = manual(&mut self.conn, &mut self.clock, id, action, &who, note.as_deref(), at);
                if let Ok(head) = &r {
                    self.committed.send_replace(*head);
                }
                let _ = reply.send(r.map(|_| ()));
            }
            Cmd::Comment { id, who, text, at, reply } => {
                let r = (|| {
                    let exists: Option<i64> =
                        self.conn.query_row("SELECT id FROM incidents WHERE id = ?1", [id], |r| r.get(0)).optional()?;
                    if exists.is_none() && !self.pending.iter().any(|c| change_id(c) == id) {
                        return Err(StoreError::NotFound(id));
                    }
                    self.conn.execute(
                        "INSERT INTO incident_events(incident, at, ts, kind, who, note) VALUES (?1, ?2, ?2, 'comment', ?3, ?4)",
                        params![id, at, who, text],
                    )?;
                    Ok(())
                })();
                let _ = reply.send(r);
            }
            Cmd::Sync(reply) => {
                if self.retry_at.is_none() {
                    self.flush();
                }
                let _ = reply.send(());
            }
            Cmd::List(filter, reply) => {
                let _ = reply.send(list(&self.conn, &filter, &self.pending));
            }
            Cmd::Get(id, scope, reply) => {
                let r = get_in(&self.conn, id, scope.as_deref())
                    .and_then(|i| overlay_one(&self.conn, i, id, &self.pending))
                    .map(|i| i.filter(|i| in_scope(scope.as_deref(), &i.grid)));
                let _ = reply.send(r);
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn change_id(c: &Change) -> i64 {
    match c {
        Change::Open(n) => n.id,
        Change::Update(u) => u.id,
    }
}

fn opt_f(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

/// Commits `changes` in one transaction; returns the newest change-log sequence number (0 if none).
fn commit(conn: &mut Connection, clock: &mut ChangeClock, changes: &[Change]) -> Result<i64, rusqlite::Error> {
    let tx = conn.transaction()?;
    let mut head = 0;
    for c in changes {
        let seq = match c {
            Change::Open(n) => open_incident(&tx, clock, n)?,
            Change::Update(u) => update(&tx, clock, u)?,
        };
        head = head.max(seq.unwrap_or(0));
    }
    tx.commit()?;
    Ok(head)
}

fn open_incident(
    tx: &rusqlite::Transaction<'_>,
    clock: &mut ChangeClock,
    n: &NewIncident,
) -> Result<Option<i64>, rusqlite::Error> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO incidents(id, rule, title, category, severity, state, device, grid, point, value,
                peak, message, plan, raised_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?13)",
        )?
        .execute(params![
            n.id,
            n.rule,
            n.title,
            n.category,
            n.severity.as_str(),
            n.state.as_str(),
            n.device,
            n.grid,
            n.point,
            opt_f(n.value),
            n.message,
            n.plan,
            n.at
        ])?;
    if inserted == 0 {
        // Already there (committed before a failed transaction was retried): nothing new to log.
        return Ok(None);
    }
    let ts = clock.stamp(n.at, &n.rule, &n.device);
    tx.prepare_cached(
        "INSERT INTO incident_events(incident, at, ts, kind, state, severity, value) VALUES (?1, ?2, ?3, 'raised', ?4, ?5, ?6)",
    )?
    .execute(params![n.id, n.at, ts, n.state.as_str(), n.severity.as_str(), opt_f(n.value)])?;
    Ok(Some(tx.last_insert_rowid()))
}

/// Applies one update and logs it with the incident's state after it; `None` when the incident is
/// unknown (its opening was dropped while the database failed).
fn update(
    tx: &rusqlite::Transaction<'_>,
    clock: &mut ChangeClock,
    u: &IncidentUpdate,
) -> Result<Option<i64>, rusqlite::Error> {
    let series: Option<(String, String)> = tx
        .prepare_cached("SELECT rule, device FROM incidents WHERE id = ?1")?
        .query_row([u.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((rule, device)) = series else {
        warn!(incident = u.id, change = u.kind, "Change for an incident that is not stored; skipped.");
        return Ok(None);
    };
    let state = u.state.map(State::as_str);
    tx.prepare_cached(
        "UPDATE incidents SET updated_at = ?2, state = COALESCE(?3, state), severity = COALESCE(?4, severity),
            peak = CASE WHEN ?5 IS NULL THEN peak WHEN peak IS NULL OR ?5 > peak THEN ?5 ELSE peak END
         WHERE id = ?1",
    )?
    .execute(params![u.id, u.at, state, u.severity.map(Severity::as_str), u.peak])?;
    match u.kind {
        "returned" => {
            tx.prepare_cached("UPDATE incidents SET returned_at = ?2 WHERE id = ?1")?.execute(params![u.id, u.at])?;
        }
        "acked" => {
            tx.prepare_cached(
                "UPDATE incidents SET acked_at = COALESCE(acked_at, ?2), acked_by = COALESCE(acked_by, ?3) WHERE id = ?1",
            )?
            .execute(params![u.id, u.at, u.who])?;
        }
        "closed" => {
            tx.prepare_cached("UPDATE incidents SET closed_at = ?2, shelved_until = NULL WHERE id = ?1")?
                .execute(params![u.id, u.at])?;
        }
        "chattering" => {
            tx.prepare_cached("UPDATE incidents SET chattering = 1 WHERE id = ?1")?.execute(params![u.id])?;
        }
        "shelved" => {
            tx.prepare_cached("UPDATE incidents SET shelved_until = ?2 WHERE id = ?1")?
                .execute(params![u.id, u.shelved_until])?;
        }
        "unshelved" => {
            tx.prepare_cached("UPDATE incidents SET shelved_until = NULL WHERE id = ?1")?.execute(params![u.id])?;
        }
        _ => {}
    }
    let ts = clock.stamp(u.at, &rule, &device);
    tx.prepare_cached(
        "INSERT INTO incident_events(incident, at, ts, kind, state, severity, value, who, note)
         SELECT id, ?2, ?3, ?4, state, severity, ?5, ?6, ?7 FROM incidents WHERE id = ?1",
    )?
    .execute(params![u.id, u.at, ts, u.kind, u.value, u.who, u.note])?;
    Ok(Some(tx.last_insert_rowid()))
}

/// Acknowledges or closes an incident without a live alarm; returns the newest change-log sequence.
fn manual(
    conn: &mut Connection,
    clock: &mut ChangeClock,
    id: i64,
    action: Manual,
    who: &str,
    note: Option<&str>,
    at: i64,
) -> Result<i64, StoreError> {
    let state: Option<String> =
        conn.query_row("SELECT state FROM incidents WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    let state = state.ok_or(StoreError::NotFound(id))?;
    if state == "normal" {
        return Err(StoreError::Closed(id));
    }
    let tx = conn.transaction()?;
    let step = |kind: &'static str, state: State| IncidentUpdate {
        id,
        at,
        kind,
        state: Some(state),
        severity: None,
        value: None,
        peak: None,
        who: Some(who.to_owned()),
        note: note.map(str::to_owned),
        shelved_until: None,
    };
    let head = match action {
        Manual::Ack if state == "active_unacked" => update(&tx, clock, &step("acked", State::ActiveAcked))?,
        // Acknowledging a returned incident closes it; closing an unacknowledged one acknowledges it first.
        Manual::Ack | Manual::Close => {
            if state.ends_with("unacked") {
                update(&tx, clock, &step("acked", State::Normal))?;
            }
            update(&tx, clock, &step("closed", State::Normal))?
        }
    };
    tx.commit()?;
    Ok(head.unwrap_or(0))
}

/// The incidents touched by pending changes, as those changes leave them (not persisted).
fn overlay(conn: &Connection, pending: &[Change]) -> Result<BTreeMap<i64, Incident>, StoreError> {
    let mut out: BTreeMap<i64, Incident> = BTreeMap::new();
    for c in pending {
        match c {
            Change::Open(n) => {
                out.entry(n.id).or_insert_with(|| from_new(n));
            }
            Change::Update(u) => {
                let i = match out.entry(u.id) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => match get(conn, u.id, false)? {
                        Some(stored) => e.insert(stored),
                        None => continue,
                    },
                };
                apply_update(i, u);
            }
        }
    }
    for i in out.values_mut() {
        i.persisted = false;
    }
    Ok(out)
}

fn overlay_one(
    conn: &Connection,
    stored: Option<Incident>,
    id: i64,
    pending: &[Change],
) -> Result<Option<Incident>, StoreError> {
    if !pending.iter().any(|c| change_id(c) == id) {
        return Ok(stored);
    }
    let Some(mut live) = overlay(conn, pending)?.remove(&id) else { return Ok(stored) };
    if let Some(s) = stored {
        live.history = s.history;
    }
    Ok(Some(live))
}

fn from_new(n: &NewIncident) -> Incident {
    let at = fmt_ns(n.at);
    Incident {
        id: n.id,
        rule: n.rule.clone(),
        title: n.title.clone(),
        category: n.category.clone(),
        severity: n.severity.as_str().to_owned(),
        state: n.state.as_str().to_owned(),
        device: n.device.clone(),
        grid: n.grid.clone(),
        point: n.point.clone(),
        value: opt_f(n.value),
        peak: opt_f(n.value),
        message: n.message.clone(),
        plan: n.plan.clone(),
        raised_at: at.clone(),
        updated_at: at,
        returned_at: None,
        acked_at: None,
        acked_by: None,
        closed_at: None,
        shelved_until: None,
        chattering: false,
        response_secs: None,
        persisted: false,
        history: Vec::new(),
        raised_ns: n.at,
    }
}

fn apply_update(i: &mut Incident, u: &IncidentUpdate) {
    if let Some(s) = u.state {
        i.state = s.as_str().to_owned();
    }
    if let Some(s) = u.severity {
        i.severity = s.as_str().to_owned();
    }
    if let Some(p) = u.peak {
        if i.peak.is_none_or(|old| p > old) {
            i.peak = Some(p);
        }
    }
    let at = fmt_ns(u.at);
    match u.kind {
        "returned" => i.returned_at = Some(at.clone()),
        "acked" if i.acked_at.is_none() => {
            i.acked_at = Some(at.clone());
            i.acked_by.clone_from(&u.who);
            i.response_secs = Some((u.at - i.raised_ns) as f64 / 1e9);
        }
        "closed" => {
            i.closed_at = Some(at.clone());
            i.shelved_until = None;
        }
        "chattering" => i.chattering = true,
        "shelved" => i.shelved_until = u.shelved_until.map(fmt_ns),
        "unshelved" => i.shelved_until = None,
        _ => {}
    }
    i.updated_at = at;
}

const COLUMNS: &str = "id, rule, title, category, severity, state, device, grid, point, value, peak, message, plan,
    raised_at, updated_at, returned_at, acked_at, acked_by, closed_at, shelved_until, chattering";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let raised: i64 = r.get(13)?;
    let acked: Option<i64> = r.get(16)?;
    let ts = |v: Option<i64>| v.map(fmt_ns);
    Ok(Incident {
        id: r.get(0)?,
        rule: r.get(1)?,
        title: r.get(2)?,
        category: r.get(3)?,
        severity: r.get(4)?,
        state: r.get(5)?,
        device: r.get(6)?,
        grid: r.get(7)?,
        point: r.get(8)?,
        value: r.get(9)?,
        peak: r.get(10)?,
        message: r.get(11)?,
        plan: r.get(12)?,
        raised_at: fmt_ns(raised),
        updated_at: fmt_ns(r.get(14)?),
        returned_at: ts(r.get(15)?),
        acked_at: ts(acked),
        acked_by: r.get(17)?,
        closed_at: ts(r.get(18)?),
        shelved_until: ts(r.get(19)?),
        chattering: r.get::<_, i64>(20)? != 0,
        response_secs: acked.map(|a| (a - raised) as f64 / 1e9),
        persisted: true,
        history: Vec::new(),
        raised_ns: raised,
    })
}

fn get(conn: &Connection, id: i64, history: bool) -> Result<Option<Incident>, StoreError> {
    get_where(conn, id, history, None)
}

/// One incident with its history, only when its grid is in `scope`.
fn get_in(conn: &Connection, id: i64, scope: Option<&[String]>) -> Result<Option<Incident>, StoreError> {
    get_where(conn, id, true, scope)
}

/// `grid IN (...)` for `scope` with its arguments numbered from `first`; empty for the whole site.
fn scope_clause(scope: Option<&[String]>, first: usize) -> (String, Vec<rusqlite::types::Value>) {
    match scope {
        None => (String::new(), Vec::new()),
        Some([]) => (" AND 0".to_owned(), Vec::new()),
        Some(grids) => {
            let marks: Vec<String> = (0..grids.len()).map(|i| format!("?{}", first + i)).collect();
            (format!(" AND grid IN ({})", marks.join(", ")), grids.iter().map(|g| g.clone().into()).collect())
        }
    }
}

fn get_where(
    conn: &Connection,
    id: i64,
    history: bool,
    scope: Option<&[String]>,
) -> Result<Option<Incident>, StoreError> {
    let (clause, mut args) = scope_clause(scope, 2);
    args.insert(0, id.into());
    let mut inc = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM incidents WHERE id = ?1{clause}"),
            rusqlite::params_from_iter(args),
            row,
        )
        .optional()?;
    if let (Some(inc), true) = (inc.as_mut(), history) {
        let mut stmt = conn.prepare(
            "SELECT at, kind, state, severity, value, who, note FROM incident_events WHERE incident = ?1 ORDER BY seq",
        )?;
        inc.history = stmt
            .query_map([id], |r| {
                Ok(HistoryEntry {
                    at: fmt_ns(r.get(0)?),
                    kind: r.get(1)?,
                    state: r.get(2)?,
                    severity: r.get(3)?,
                    value: r.get(4)?,
                    who: r.get(5)?,
                    note: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(inc)
}

/// Incidents matching `f` on disk, with the pending changes laid over them.
fn list(conn: &Connection, f: &Filter, pending: &[Change]) -> Result<Vec<Incident>, StoreError> {
    let limit = if f.limit == 0 { 100 } else { f.limit.min(1000) };
    let mut rows = list_stored(conn, f, limit)?;
    if pending.is_empty() {
        return Ok(rows);
    }
    let live = overlay(conn, pending)?;
    rows.retain(|i| !live.contains_key(&i.id));
    rows.extend(live.into_values().filter(|i| f.matches(i)));
    rows.sort_by_key(|i| std::cmp::Reverse(i.id));
    rows.truncate(limit);
    Ok(rows)
}

fn list_stored(conn: &Connection, f: &Filter, limit: usize) -> Result<Vec<Incident>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM incidents WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    match f.state.as_deref() {
        Some("open") => add(" AND state != ?", "normal".to_string().into()),
        Some("closed") => add(" AND state = ?", "normal".to_string().into()),
        Some(s) => add(" AND state = ?", s.to_string().into()),
        None => {}
    }
    if let Some(g) = &f.grid {
        add(" AND grid = ?", g.clone().into());
    }
    if let Some(s) = &f.severity {
        add(" AND severity = ?", s.clone().into());
    }
    if let Some(c) = &f.category {
        add(" AND category = ?", c.clone().into());
    }
    if let Some(d) = &f.device {
        add(" AND device = ?", d.clone().into());
    }
    if let Some(t) = f.since {
        add(" AND raised_at >= ?", t.into());
    }
    if let Some(t) = f.until {
        add(" AND raised_at < ?", t.into());
    }
    let (clause, scoped) = scope_clause(f.scope.as_deref(), args.len() + 1);
    sql.push_str(&clause);
    args.extend(scoped);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Logs and counts a failed hand-over to the store; used where a caller cannot wait.
pub fn warn_stopped(e: &StoreError) {
    warn!(error = %e, "Incident store unavailable.");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::incident::NewIncident;

    fn new(id: i64) -> Change {
        Change::Open(NewIncident {
            id,
            at: 1_000,
            rule: "electrical.residual_current".into(),
            title: "Residual current".into(),
            category: "electrical".into(),
            severity: Severity::Critical,
            state: State::ActiveUnacked,
            device: "m1".into(),
            grid: "g1".into(),
            point: "ir".into(),
            value: 350.0,
            message: "m1: 350 mA".into(),
            plan: "fire".into(),
        })
    }

    fn upd(id: i64, kind: &'static str, state: State, value: Option<f64>) -> Change {
        Change::Update(IncidentUpdate {
            id,
            at: 2_000_000_000,
            kind,
            state: Some(state),
            severity: None,
            value,
            peak: value,
            who: Some("li".into()),
            note: None,
            shelved_until: None,
        })
    }

    #[test]
    fn persists_history_and_restores_open_incidents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incidents.db");
        let (mut conn, open0, next) = open(&path).unwrap();
        assert!(open0.is_empty());
        assert_eq!(next, 1);
        commit(
            &mut conn,
            &mut ChangeClock::default(),
            &[new(1), upd(1, "acked", State::ActiveAcked, Some(420.0)), new(2)],
        )
        .unwrap();
        commit(
            &mut conn,
            &mut ChangeClock::default(),
            &[upd(2, "returned", State::ReturnedUnacked, Some(10.0)), upd(2, "acked", State::Normal, None)],
        )
        .unwrap();
        commit(&mut conn, &mut ChangeClock::default(), &[upd(2, "closed", State::Normal, None)]).unwrap();
        let one = get(&conn, 1, true).unwrap().unwrap();
        assert_eq!(one.state, "active_acked");
        assert_eq!(one.peak, Some(420.0));
        assert_eq!(one.acked_by.as_deref(), Some("li"));
        assert_eq!(one.history.len(), 2);
        drop(conn);
        let (conn, open1, next) = open(&path).unwrap();
        assert_eq!(next, 3);
        assert_eq!(open1.len(), 1);
        assert_eq!(open1[0].id, 1);
        assert_eq!(open1[0].state, State::ActiveAcked);
        let f = Filter { state: Some("open".into()), ..Filter::default() };
        assert_eq!(list(&conn, &f, &[]).unwrap().len(), 1);
        let f = Filter { grid: Some("g1".into()), severity: Some("critical".into()), ..Filter::default() };
        assert_eq!(list(&conn, &f, &[]).unwrap().len(), 2);
    }

    #[test]
    fn a_scope_limits_lists_and_lookups_in_the_query() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _, _) = open(&dir.path().join("i.db")).unwrap();
        commit(&mut conn, &mut ChangeClock::default(), &[new(1), new(2)]).unwrap();
        conn.execute("UPDATE incidents SET grid = 'g2' WHERE id = 2", []).unwrap();
        let scoped = |grids: &[&str]| Some(grids.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>());
        let ids = |f: &Filter| list(&conn, f, &[]).unwrap().iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(&Filter::default()), [2, 1]);
        assert_eq!(ids(&Filter { scope: scoped(&["g1"]), ..Filter::default() }), [1]);
        assert_eq!(ids(&Filter { scope: scoped(&["g1", "g2"]), ..Filter::default() }), [2, 1]);
        assert_eq!(ids(&Filter { scope: scoped(&[]), ..Filter::default() }), Vec::<i64>::new());
        assert_eq!(
            ids(&Filter { scope: scoped(&["g1"]), grid: Some("g2".into()), ..Filter::default() }),
            Vec::<i64>::new()
        );
        assert!(get_in(&conn, 2, Some(&["g1".to_owned()])).unwrap().is_none());
        assert_eq!(get_in(&conn, 2, Some(&["g2".to_owned()])).unwrap().unwrap().id, 2);
        assert_eq!(get_in(&conn, 1, None).unwrap().unwrap().id, 1);
        // Pending (not yet committed) incidents are scoped too.
        let pending = [new(3)];
        let f = Filter { scope: scoped(&["g2"]), ..Filter::default() };
        assert_eq!(list(&conn, &f, &pending).unwrap().iter().map(|i| i.id).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn manual_ack_and_close_of_system_incidents() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _, _) = open(&dir.path().join("i.db")).unwrap();
        commit(&mut conn, &mut ChangeClock::default(), &[new(7)]).unwrap();
        manual(&mut conn, &mut ChangeClock::default(), 7, Manual::Ack, "wang", None, 5).unwrap();
        assert_eq!(get(&conn, 7, false).unwrap().unwrap().state, "active_acked");
        manual(&mut conn, &mut ChangeClock::default(), 7, Manual::Close, "wang", Some("fixed"), 6).unwrap();
        assert_eq!(get(&conn, 7, false).unwrap().unwrap().state, "normal");
        assert!(matches!(
            manual(&mut conn, &mut ChangeClock::default(), 7, Manual::Close, "wang", None, 7),
            Err(StoreError::Closed(7))
        ));
        assert!(matches!(
            manual(&mut conn, &mut ChangeClock::default(), 8, Manual::Ack, "wang", None, 7),
            Err(StoreError::NotFound(8))
        ));
    }

    #[test]
    fn change_log_reads_every_change_in_order_with_unique_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        let (mut conn, _, _) = open(&path).unwrap();
        let mut clock = ChangeClock::default();
        // Raised and returned in the same nanosecond: two changes, two timestamps a millisecond apart.
        let mut returned = upd(1, "returned", State::ReturnedUnacked, Some(10.0));
        if let Change::Update(u) = &mut returned {
            u.at = 1_000;
        }
        commit(&mut conn, &mut clock, &[new(1), returned, new(2)]).unwrap();
        let log = changes::ChangeLog::open(&path).unwrap();
        let rows = log.after(0, 100).unwrap();
        assert_eq!(rows.iter().map(|r| r.change.as_str()).collect::<Vec<_>>(), ["raised", "returned", "raised"]);
        assert_eq!(rows[1].state, "returned_unacked", "each row shows the state after its change");
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq && w[0].ts < w[1].ts));
        assert!(rows[1].ts / 1_000_000 > rows[0].ts / 1_000_000, "same series: another millisecond");
        assert_eq!(log.after(rows[1].seq, 100).unwrap().len(), 1);
        assert_eq!(log.head().unwrap(), rows[2].seq);
        assert_eq!(log.cursor("central").unwrap(), None);
        log.save_cursor("central", rows[1].seq).unwrap();
        log.save_cursor("central", 1).unwrap();
        assert_eq!(log.cursor("central").unwrap(), Some(rows[1].seq), "a cursor never goes back");
    }

    #[test]
    fn pending_changes_show_in_lists_marked_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _, _) = open(&dir.path().join("i.db")).unwrap();
        commit(&mut conn, &mut ChangeClock::default(), &[new(1)]).unwrap();
        let pending = [upd(1, "acked", State::ActiveAcked, None), new(2)];
        let all = list(&conn, &Filter::default(), &pending).unwrap();
        assert_eq!(all.iter().map(|i| (i.id, i.persisted)).collect::<Vec<_>>(), [(2, false), (1, false)]);
        assert_eq!(all[1].state, "active_acked");
        assert_eq!(all[1].acked_by.as_deref(), Some("li"));
        let acked = Filter { state: Some("active_unacked".into()), ..Filter::default() };
        assert_eq!(list(&conn, &acked, &pending).unwrap().iter().map(|i| i.id).collect::<Vec<_>>(), [2]);
        let one = overlay_one(&conn, get(&conn, 2, true).unwrap(), 2, &pending).unwrap().unwrap();
        assert!(!one.persisted);
    }
}
