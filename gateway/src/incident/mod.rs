//! Incidents on disk: every alarm episode with its transitions, acknowledgements, shelving and comments
//! (who and when), in SQLite (WAL). One thread owns the connection; changes are committed before they
//! are announced to subscribers (API stream, forwarding), so nobody is told of an incident that a
//! power cut could take back.
//!
//! A write that fails (disk full, I/O error) is kept and retried, bounded; it is logged and counted,
//! never a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{error, info, warn};

use crate::core::alarm::{Severity, State};
use crate::core::engine::{Change, IncidentUpdate, OpenIncident};
use crate::source::mqtt::decode::fmt_ns;

/// Changes waiting for a failed disk to come back; beyond this the oldest are dropped and counted.
const PENDING_MAX: usize = 10_000;

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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// In announcements: the change announced (raised, returned, acked…) and its time (UTC ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(skip)]
    pub change_ns: i64,
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
    pub severity: Option<String>,
    pub category: Option<String>,
    pub device: Option<String>,
    /// Raised at or after (UTC ns).
    pub since: Option<i64>,
    /// Raised before (UTC ns).
    pub until: Option<i64>,
    pub limit: usize,
}

/// An operator action on an incident that has no live alarm (system incidents, removed rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manual {
    Ack,
    Close,
}

enum Cmd {
    Apply(Vec<Change>),
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
    Get(i64, oneshot::Sender<Result<Option<Incident>, StoreError>>),
}

/// Counters of the store.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    pub committed: AtomicU64,
    pub write_errors: AtomicU64,
    pub dropped: AtomicU64,
    /// True while the last commit failed.
    pub failing: std::sync::atomic::AtomicBool,
    /// Why the last commit failed.
    pub last_error: std::sync::Mutex<String>,
}

/// A cheap handle to the incident store thread.
#[derive(Clone, Debug)]
pub struct IncidentStore {
    tx: mpsc::Sender<Cmd>,
    announce: broadcast::Sender<Incident>,
    pub metrics: Arc<StoreMetrics>,
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
         CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events(incident);",
    )
    .map_err(err)?;
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
pub fn spawn(conn: Connection) -> (IncidentStore, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let (announce, _) = broadcast::channel(1024);
    let metrics = Arc::new(StoreMetrics::default());
    let store = IncidentStore { tx, announce: announce.clone(), metrics: metrics.clone() };
    let thread = std::thread::Builder::new()
        .name("incidents".into())
        .spawn(move || run(conn, rx, &announce, &metrics))
        .unwrap_or_else(|e| panic!("cannot start the incident store thread: {e}"));
    (store, thread)
}

impl IncidentStore {
    /// Queues changes; they are committed in order, then announced.
    ///
    /// # Errors
    /// [`StoreError::Stopped`] when the store thread is gone.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.tx.send(Cmd::Apply(changes)).await.map_err(|_| StoreError::Stopped)
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

    /// Incidents matching `filter`, newest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Incident>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::List(filter, reply)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// One incident with its history.
    ///
    /// # Errors
    /// A database error.
    pub async fn get(&self, id: i64) -> Result<Option<Incident>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Get(id, reply)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Incidents as they are committed (new ones and every change), for live views and forwarding.
    pub fn subscribe(&self) -> broadcast::Receiver<Incident> {
        self.announce.subscribe()
    }
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Cmd>,
    announce: &broadcast::Sender<Incident>,
    metrics: &StoreMetrics,
) {
    let mut pending: Vec<Change> = Vec::new();
    let mut last_error_log = std::time::Instant::now() - Duration::from_secs(60);
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Apply(changes) => {
                pending.extend(changes);
                if pending.len() > PENDING_MAX {
                    let drop = pending.len() - PENDING_MAX;
                    pending.drain(..drop);
                    metrics.dropped.fetch_add(drop as u64, Ordering::Relaxed);
                    error!(dropped = drop, "Incident changes dropped: the database has been failing too long.");
                }
                match commit(&mut conn, &pending) {
                    Ok(()) => {
                        metrics.committed.fetch_add(pending.len() as u64, Ordering::Relaxed);
                        metrics.failing.store(false, Ordering::Relaxed);
                        // One announcement per change, each showing the incident as that change left it.
                        for c in pending.drain(..) {
                            if let Ok(Some(mut i)) = get(&conn, change_id(&c), false) {
                                as_of(&mut i, &c);
                                let _ = announce.send(i);
                            }
                        }
                    }
                    Err(e) => {
                        metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                        *metrics.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                        metrics.failing.store(true, Ordering::Relaxed);
                        if last_error_log.elapsed() >= Duration::from_secs(10) {
                            error!(error = %e, pending = pending.len(), "Cannot write incidents; will retry.");
                            last_error_log = std::time::Instant::now();
                        }
                    }
                }
            }
            Cmd::Manual { id, action, who, note, at, reply } => {
                let r = manual(&mut conn, id, action, &who, note.as_deref(), at);
                if r.is_ok() {
                    if let Ok(Some(mut i)) = get(&conn, id, false) {
                        i.change = Some(if i.state == "normal" { "closed" } else { "acked" }.into());
                        i.change_ns = at;
                        let _ = announce.send(i);
                    }
                }
                let _ = reply.send(r);
            }
            Cmd::Comment { id, who, text, at, reply } => {
                let r = (|| {
                    let exists: Option<i64> =
                        conn.query_row("SELECT id FROM incidents WHERE id = ?1", [id], |r| r.get(0)).optional()?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound(id));
                    }
                    conn.execute(
                        "INSERT INTO incident_events(incident, at, kind, who, note) VALUES (?1, ?2, 'comment', ?3, ?4)",
                        params![id, at, who, text],
                    )?;
                    Ok(())
                })();
                let _ = reply.send(r);
            }
            Cmd::Sync(reply) => {
                let _ = reply.send(());
            }
            Cmd::List(filter, reply) => {
                let _ = reply.send(list(&conn, &filter));
            }
            Cmd::Get(id, reply) => {
                let _ = reply.send(get(&conn, id, true));
            }
        }
    }
    if !pending.is_empty() {
        if let Err(e) = commit(&mut conn, &pending) {
            error!(error = %e, lost = pending.len(), "Incident changes could not be written at shutdown.");
        }
    }
    info!("Incident store stopped.");
}

/// Rewrites a snapshot to show the incident as of change `c`.
fn as_of(i: &mut Incident, c: &Change) {
    match c {
        Change::Open(n) => {
            i.state = n.state.as_str().to_owned();
            i.severity = n.severity.as_str().to_owned();
            i.value = opt_f(n.value);
            i.change = Some("raised".into());
            i.change_ns = n.at;
        }
        Change::Update(u) => {
            if let Some(s) = u.state {
                i.state = s.as_str().to_owned();
            }
            if let Some(s) = u.severity {
                i.severity = s.as_str().to_owned();
            }
            if u.value.is_some() {
                i.value = u.value;
            }
            i.change = Some(u.kind.to_owned());
            i.change_ns = u.at;
        }
    }
    i.updated_at = fmt_ns(i.change_ns);
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

fn commit(conn: &mut Connection, changes: &[Change]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    for c in changes {
        match c {
            Change::Open(n) => {
                tx.execute(
                    "INSERT OR IGNORE INTO incidents(id, rule, title, category, severity, state, device, grid, point, value,
                        peak, message, plan, raised_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?13)",
                    params![
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
                    ],
                )?;
                tx.execute(
                    "INSERT INTO incident_events(incident, at, kind, state, severity, value) VALUES (?1, ?2, 'raised', ?3, ?4, ?5)",
                    params![n.id, n.at, n.state.as_str(), n.severity.as_str(), opt_f(n.value)],
                )?;
            }
            Change::Update(u) => update(&tx, u)?,
        }
    }
    tx.commit()
}

fn update(tx: &rusqlite::Transaction<'_>, u: &IncidentUpdate) -> Result<(), rusqlite::Error> {
    let state = u.state.map(State::as_str);
    tx.execute(
        "UPDATE incidents SET updated_at = ?2, state = COALESCE(?3, state), severity = COALESCE(?4, severity),
            peak = CASE WHEN ?5 IS NULL THEN peak WHEN peak IS NULL OR ?5 > peak THEN ?5 ELSE peak END
         WHERE id = ?1",
        params![u.id, u.at, state, u.severity.map(Severity::as_str), u.peak],
    )?;
    match u.kind {
        "returned" => {
            tx.execute("UPDATE incidents SET returned_at = ?2 WHERE id = ?1", params![u.id, u.at])?;
        }
        "acked" => {
            tx.execute(
                "UPDATE incidents SET acked_at = COALESCE(acked_at, ?2), acked_by = COALESCE(acked_by, ?3) WHERE id = ?1",
                params![u.id, u.at, u.who],
            )?;
        }
        "closed" => {
            tx.execute("UPDATE incidents SET closed_at = ?2, shelved_until = NULL WHERE id = ?1", params![u.id, u.at])?;
        }
        "chattering" => {
            tx.execute("UPDATE incidents SET chattering = 1 WHERE id = ?1", params![u.id])?;
        }
        "shelved" => {
            tx.execute("UPDATE incidents SET shelved_until = ?2 WHERE id = ?1", params![u.id, u.shelved_until])?;
        }
        "unshelved" => {
            tx.execute("UPDATE incidents SET shelved_until = NULL WHERE id = ?1", params![u.id])?;
        }
        _ => {}
    }
    tx.execute(
        "INSERT INTO incident_events(incident, at, kind, state, severity, value, who, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![u.id, u.at, u.kind, state, u.severity.map(Severity::as_str), u.value, u.who, u.note],
    )?;
    Ok(())
}

fn manual(
    conn: &mut Connection,
    id: i64,
    action: Manual,
    who: &str,
    note: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
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
    match action {
        Manual::Ack if state == "active_unacked" => update(&tx, &step("acked", State::ActiveAcked))?,
        // Acknowledging a returned incident closes it; closing an unacknowledged one acknowledges it first.
        Manual::Ack | Manual::Close => {
            if state.ends_with("unacked") {
                update(&tx, &step("acked", State::Normal))?;
            }
            update(&tx, &step("closed", State::Normal))?;
        }
    }
    tx.commit()?;
    Ok(())
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
        history: Vec::new(),
        change: None,
        change_ns: 0,
    })
}

fn get(conn: &Connection, id: i64, history: bool) -> Result<Option<Incident>, StoreError> {
    let mut inc = conn.query_row(&format!("SELECT {COLUMNS} FROM incidents WHERE id = ?1"), [id], row).optional()?;
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

fn list(conn: &Connection, f: &Filter) -> Result<Vec<Incident>, StoreError> {
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
    let limit = if f.limit == 0 { 100 } else { f.limit.min(1000) };
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
    use crate::core::engine::NewIncident;

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
        commit(&mut conn, &[new(1), upd(1, "acked", State::ActiveAcked, Some(420.0)), new(2)]).unwrap();
        commit(
            &mut conn,
            &[upd(2, "returned", State::ReturnedUnacked, Some(10.0)), upd(2, "acked", State::Normal, None)],
        )
        .unwrap();
        commit(&mut conn, &[upd(2, "closed", State::Normal, None)]).unwrap();
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
        assert_eq!(list(&conn, &f).unwrap().len(), 1);
        let f = Filter { grid: Some("g1".into()), severity: Some("critical".into()), ..Filter::default() };
        assert_eq!(list(&conn, &f).unwrap().len(), 2);
    }

    #[test]
    fn manual_ack_and_close_of_system_incidents() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _, _) = open(&dir.path().join("i.db")).unwrap();
        commit(&mut conn, &[new(7)]).unwrap();
        manual(&mut conn, 7, Manual::Ack, "wang", None, 5).unwrap();
        assert_eq!(get(&conn, 7, false).unwrap().unwrap().state, "active_acked");
        manual(&mut conn, 7, Manual::Close, "wang", Some("fixed"), 6).unwrap();
        assert_eq!(get(&conn, 7, false).unwrap().unwrap().state, "normal");
        assert!(matches!(manual(&mut conn, 7, Manual::Close, "wang", None, 7), Err(StoreError::Closed(7))));
        assert!(matches!(manual(&mut conn, 8, Manual::Ack, "wang", None, 7), Err(StoreError::NotFound(8))));
    }
}
