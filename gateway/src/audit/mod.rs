//! The audit trail: who did what, from where, when, and how it ended — append-only and hash-chained in
//! its own SQLite file, so an edit or a deletion is found by `parkwatch audit verify`.
//!
//! Callers hand an [`AuditEvent`] to a cloneable [`AuditLog`]; that only queues it (a short lock, no
//! I/O), so recording never slows an API answer by a disk commit. A writer thread owns the writing
//! connection (WAL, `synchronous=FULL`): it numbers the records, chains their hashes and commits
//! whatever has queued up in one transaction. A dedicated thread rather than a mutex-guarded
//! connection because a failing disk must be retried in the background, not by whichever request
//! happens to record next. When a commit fails (disk full) the events stay queued (up to
//! [`MAX_PENDING`]; beyond that the newest are counted and dropped), the failure is logged once per
//! episode, reported as component `audit` in the health registry, and the commit retried with backoff
//! until it succeeds.
//!
//! One chain, more than one writer: the daemon and the `parkwatch user|token` commands (which run
//! without it) both append to the same file, each through its own [`AuditLog`]. So no writer keeps
//! the head of the chain in memory: every commit takes SQLite's write lock first (`BEGIN IMMEDIATE`),
//! then reads the last record's seq, time and hash, and chains its records onto that. Two writers
//! are thereby serialised by the lock and can never both extend the same record (a fork); `seq` is
//! the primary key besides, so a fork could not even be stored.
//!
//! Sinks read the committed records by cursor ([`AuditReader::after`]) and are woken through
//! [`AuditLog::committed`], like the incident change log; records another process appended are read
//! with the next ones this process commits.
//!
//! Owns: the audit database, its hash chain and its verification. May import: `model`.

pub mod chain;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info};

use self::chain::{Broken, Fault, RawRecord, GENESIS};
use crate::model::health::{Health, Status};
use crate::model::time::{fmt_ns, now_ns};

/// Events queued while the database cannot be written; beyond this the newest are dropped and counted.
pub const MAX_PENDING: usize = 10_000;

/// Retry delays while the audit database cannot be written.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The health component this log reports as.
const COMPONENT: &str = "audit";

/// Something worth an audit record, as the code that did it describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who: a user name, a token's name, or `api` for an unauthenticated request.
    pub actor: String,
    /// From where: the peer address of the request, or `cli`.
    pub source: String,
    /// What, as a dotted name: `incident.ack`, `rules.reload`, `user.add`.
    pub action: &'static str,
    /// On what: `incident:42`, `rules`, `user:li.wei`.
    pub target: String,
    /// How it ended: `ok`, `refused`, `failed`.
    pub outcome: &'static str,
    /// Free text: a note, a duration, why it was refused. Never a secret.
    pub detail: String,
}

/// One committed record, as the API and the sinks see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub seq: i64,
    /// UTC ns; at least a millisecond after the previous record's, so every record has its own time
    /// in a central store.
    pub time_ns: i64,
    /// RFC 3339 form of `time_ns`.
    pub at: String,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The audit database failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("audit log: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot start the audit thread: {0}")]
    Thread(std::io::Error),
}

fn connect(path: &Path) -> Result<Connection, AuditError> {
    let err = |source| AuditError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS audit(
            seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, actor TEXT NOT NULL, source TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL);",
    )
    .map_err(err)?;
    Ok(conn)
}

/// What the writer thread and the handles share.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    committed: watch::Sender<i64>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<(i64, AuditEvent)>,
    /// Events dropped because the queue was full, since the last report.
    dropped: u64,
    /// Every handle is gone: commit what is left and stop.
    closed: bool,
}

/// Closes the queue when the last [`AuditLog`] clone is dropped.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.closed = true;
        self.0.wake.notify_one();
    }
}

/// The handle callers record through; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    closer: Arc<Closer>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish()
    }
}

impl AuditLog {
    /// Opens (creating when needed) the audit database and starts its writer thread, which reports
    /// into `health` as `audit` and stops once every handle is dropped and the queue is written.
    /// Joining the thread gives how many events were lost (0 when every one was committed).
    ///
    /// # Errors
    /// The file cannot be opened or created, or the thread cannot start.
    pub fn open(path: &Path, health: Health) -> Result<(Self, std::thread::JoinHandle<u64>), AuditError> {
        let conn = connect(path)?;
        // Other writers (the command line) hold the lock for one short transaction; a lock held for
        // longer than this is a fault to report and retry, not to wait out while records queue up.
        conn.busy_timeout(Duration::from_secs(5))?;
        let (seq, _, _) = head(&conn)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            committed: watch::Sender::new(seq),
        });
        health.set(COMPONENT, Status::Ok, "");
        let writer = Writer { conn, shared: shared.clone(), health, failing: false, lost: 0 };
        let thread =
            std::thread::Builder::new().name("audit".into()).spawn(move || writer.run()).map_err(AuditError::Thread)?;
        Ok((Self { closer: Arc::new(Closer(shared)), path: Arc::new(path.to_owned()) }, thread))
    }

    /// Queues `event` at the current time; never blocks on the disk. The event is also logged (target
    /// `audit`), so the journal shows it even before it is committed.
    pub fn record(&self, event: AuditEvent) {
        tracing::info!(
            target: "audit",
            actor = %event.actor,
            source = %event.source,
            action = event.action,
            object = %event.target,
            outcome = event.outcome,
            detail = %event.detail,
            "Audit."
        );
        let shared = &self.closer.0;
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.events.len() >= MAX_PENDING {
            q.dropped += 1;
        } else {
            q.events.push_back((now_ns(), event));
        }
        shared.wake.notify_one();
    }

    /// The sequence number of the last committed record; changes after every commit.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.closer.0.committed.subscribe()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The last record of the chain: seq, time and hash (0, 0 and the genesis hash when empty).
fn head(conn: &Connection) -> Result<(i64, i64, String), rusqlite::Error> {
    let head = conn
        .query_row("SELECT seq, time, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(head.unwrap_or((0, 0, GENESIS.to_owned())))
}

/// The thread that owns this process's writing connection.
struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    health: Health,
    failing: bool,
    /// Events dropped or given up on, in all.
    lost: u64,
}

/// Records committed per transaction at most, so a long backlog does not hold one huge transaction.
const BATCH: usize = 1_000;

impl Writer {
    /// Commits until every handle is gone; returns how many events were lost.
    fn run(mut self) -> u64 {
        let mut retry = RETRY_MIN;
        loop {
            let (batch, dropped, closed) = {
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                while q.events.is_empty() && !q.closed && q.dropped == 0 {
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                let batch: Vec<(i64, AuditEvent)> = q.events.iter().take(BATCH).cloned().collect();
                (batch, std::mem::take(&mut q.dropped), q.closed)
            };
            if dropped > 0 {
                self.lost += dropped;
                error!(dropped, "Audit events dropped: the audit log cannot be written and its queue is full.");
                self.health.set(
                    COMPONENT,
                    Status::Failed,
                    &format!("cannot write, {dropped} audit events lost ({} queued)", MAX_PENDING),
                );
            }
            if batch.is_empty() {
                if closed {
                    return self.lost;
                }
                continue;
            }
            match self.commit(&batch) {
                Ok(seq) => {
                    let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                    q.events.drain(..batch.len());
                    drop(q);
                    self.shared.committed.send_replace(seq);
                    retry = RETRY_MIN;
                    if std::mem::replace(&mut self.failing, false) {
                        info!("Audit log writable again; queued records written.");
                        self.health.set(COMPONENT, Status::Ok, "");
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        error!(error = %e, queued = batch.len(), "Cannot write the audit log; holding records and retrying.");
                    }
                    self.health.set(COMPONENT, Status::Failed, &format!("cannot write: {e}"));
                    if closed {
                        // Nobody records any more; a few more tries, then what is queued is lost.
                        if retry >= RETRY_MAX {
                            let q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                            self.lost += (q.events.len() as u64) + q.dropped;
                            error!(lost = self.lost, "Audit records not written at shutdown.");
                            return self.lost;
                        }
                    }
                    std::thread::sleep(retry);
                    // Give back what the write-ahead log holds: a full disk is often an unsplit WAL.
                    let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Numbers, chains and commits `batch` in one transaction after the chain's head as it is on
    /// disk under the write lock; returns the seq of the last record.
    fn commit(&mut self, batch: &[(i64, AuditEvent)]) -> Result<i64, rusqlite::Error> {
        // IMMEDIATE takes the write lock before the head is read, so no other writer can append
        // between reading the head and committing onto it.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mut seq, mut time, mut hash) = head(&tx)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit(seq, time, actor, source, action, target, outcome, detail, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (at, e) in batch {
                seq += 1;
                // At least a millisecond after the previous record, so no two records share a series
                // and time even in a central store that keeps milliseconds.
                time = (*at).max(time + 1_000_000);
                let next = chain::digest(
                    seq,
                    time,
                    e.actor.as_bytes(),
                    e.source.as_bytes(),
                    e.action.as_bytes(),
                    e.target.as_bytes(),
                    e.outcome.as_bytes(),
                    e.detail.as_bytes(),
                    hash.as_bytes(),
                );
                insert.execute(params![
                    seq, time, e.actor, e.source, e.action, e.target, e.outcome, e.detail, hash, next
                ])?;
                hash = next;
            }
        }
        tx.commit()?;
        Ok(seq)
    }
}

/// Reads committed records by cursor, for sinks and the API.
pub struct AuditReader {
    conn: Connection,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader").finish()
    }
}

impl AuditReader {
    /// Opens the audit database for reading (creating it when needed, so a reader may start first).
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Ok(Self { conn: connect(path)? })
    }

    /// Up to `limit` records after `seq`, in order.
    ///
    /// # Errors
    /// A database error, or a record a hand edit made unreadable.
    pub fn after(&self, seq: i64, limit: usize) -> Result<Vec<Record>, AuditError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, time, actor, source, action, target, outcome, detail, prev_hash, hash
             FROM audit WHERE seq > ?1 ORDER BY seq",
        )?;
        // The limit is taken here, not bound: a bound `LIMIT ?` makes SQLite prepare the
        // statement again on every call.
        let rows = stmt.query_map(params![seq], |r| {
            let time_ns: i64 = r.get(1)?;
            Ok(Record {
                seq: r.get(0)?,
                time_ns,
                at: fmt_ns(time_ns),
                actor: r.get(2)?,
                source: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                outcome: r.get(6)?,
                detail: r.get(7)?,
                prev_hash: r.get(8)?,
                hash: r.get(9)?,
            })
        })?;
        Ok(rows.take(limit).collect::<Result<_, _>>()?)
    }

    /// The last committed sequence number (0 when empty).
    ///
    /// # Errors
    /// A database error.
    pub fn head(&self) -> Result<i64, AuditError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?)
    }
}

/// The outcome of checking a whole audit database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every record links to the one before it and matches its hash.
    Intact { records: u64 },
    /// The first record that breaks the chain.
    Broken(Broken),
}

/// Checks the chain of the audit database at `path`, record by record in order of `seq`.
///
/// # Errors
/// The file cannot be opened or read (a missing file is an error, not an empty chain).
pub fn verify_file(path: &Path) -> Result<Verified, AuditError> {
    let err = |source| AuditError::Open { path: path.to_owned(), source };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT seq, time, actor, source, action, target, outcome, detail, prev_hash, hash
             FROM audit ORDER BY seq",
        )
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let records = std::iter::from_fn(|| match rows.next() {
        Ok(Some(row)) => Some(raw(row)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    });
    Ok(match chain::verify(records)? {
        Ok(records) => Verified::Intact { records },
        Err(broken) => Verified::Broken(broken),
    })
}

/// One row as raw values; a field of the wrong type is reported as the break, not as an error.
fn raw(row: &rusqlite::Row<'_>) -> Result<Result<RawRecord, Broken>, rusqlite::Error> {
    let seq = match row.get_ref(0)? {
        ValueRef::Integer(i) => i,
        _ => return Ok(Err(Broken { seq: -1, fault: Fault::Unreadable { field: "seq" } })),
    };
    let time_ns = match row.get_ref(1)? {
        ValueRef::Integer(i) => i,
        _ => return Ok(Err(Broken { seq, fault: Fault::Unreadable { field: "time" } })),
    };
    const TEXTS: [&str; 8] = ["actor", "source", "action", "target", "outcome", "detail", "prev_hash", "hash"];
    let mut texts: Vec<Vec<u8>> = Vec::with_capacity(8);
    for (i, name) in TEXTS.iter().enumerate() {
        match row.get_ref(i + 2)? {
            ValueRef::Text(b) | ValueRef::Blob(b) => texts.push(b.to_vec()),
            _ => return Ok(Err(Broken { seq, fault: Fault::Unreadable { field: name } })),
        }
    }
    let mut t = texts.into_iter();
    let mut next = || t.next().unwrap_or_default();
    Ok(Ok(RawRecord {
        seq,
        time_ns,
        actor: next(),
        source: next(),
        action: next(),
        target: next(),
        outcome: next(),
        detail: next(),
        prev_hash: next(),
        hash: next(),
    }))
}

#[cfg(test)]
mod tests;
