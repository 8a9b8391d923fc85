//! The delivery ledger (`notify.db`): what was read from the incident change log, what waits to be
//! grouped, which escalation steps are pending, and every planned delivery with its attempts.
//!
//! Invariants:
//! - A change is taken in, and the change-log cursor moved past it, in one transaction: a crash
//!   neither loses a change nor takes it twice.
//! - A delivery is committed before it is sent and identified by its row id; the idempotency key is
//!   derived from it, so a retry or a restart sends the same key and the same text.
//! - Attempts are rows: who, which channel, when, delivered or not, and why.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::message::{Item, Message};
use super::NotifyError;
use crate::model::time::fmt_ns;

/// Backoff after the n-th failed attempt: 2 s doubling, at most 10 minutes.
pub fn backoff_ns(attempts: u32) -> i64 {
    let secs = 2i64.saturating_mul(1i64 << attempts.min(12).saturating_sub(1)).min(600);
    secs * 1_000_000_000
}

/// Attempts on temporary failures before a delivery is given up.
pub const MAX_ATTEMPTS: u32 = 30;

/// A delivery ready to be sent.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub receiver: String,
    pub attempts: u32,
    pub message: Message,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: i64,
    pub key: String,
    pub receiver: String,
    pub channel: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    pub grid: String,
    pub subject: String,
    pub text: String,
    pub incidents: Vec<i64>,
    pub recipients: Vec<String>,
    pub status: String,
    pub attempts: u32,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The idempotency key of delivery `id` on `site`.
pub fn key(site: &str, id: i64) -> String {
    format!("pw-{site}-{id}")
}

/// The ledger's connection.
pub struct Ledger {
    pub(super) conn: Connection,
    site: String,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (creating) the ledger at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or its schema created.
    pub fn open(path: &Path, site: &str) -> Result<Self, NotifyError> {
        let err = |source| NotifyError::Open { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        // NORMAL: a commit survives a crash of the process; a power cut can undo the last commits,
        // and with them the change-log cursor in the same transactions, so those changes are taken
        // in and planned again from the incident store (which syncs fully): after a power cut a
        // notification may go out twice, never not at all. FULL would put an fsync between every
        // incident and its first message (p99 218 ms against 20 ms in the notify bench).
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS pending(id INTEGER PRIMARY KEY, route INTEGER NOT NULL, receiver TEXT NOT NULL,
                 grp TEXT NOT NULL, resolved INTEGER NOT NULL, item TEXT NOT NULL, at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS groups(route INTEGER NOT NULL, receiver TEXT NOT NULL, grp TEXT NOT NULL,
                 last_sent INTEGER NOT NULL, PRIMARY KEY(route, receiver, grp));
             CREATE TABLE IF NOT EXISTS tracked(incident INTEGER NOT NULL, route INTEGER NOT NULL, grid TEXT NOT NULL,
                 state TEXT NOT NULL, raised INTEGER NOT NULL, item TEXT NOT NULL, PRIMARY KEY(incident, route));
             CREATE TABLE IF NOT EXISTS escalations(incident INTEGER NOT NULL, route INTEGER NOT NULL, step INTEGER NOT NULL,
                 due INTEGER NOT NULL, receivers TEXT NOT NULL, status TEXT NOT NULL, PRIMARY KEY(incident, route, step));
             CREATE INDEX IF NOT EXISTS escalations_due ON escalations(status, due);
             CREATE TABLE IF NOT EXISTS deliveries(id INTEGER PRIMARY KEY, receiver TEXT NOT NULL, channel TEXT NOT NULL,
                 reason TEXT NOT NULL, grid TEXT NOT NULL, message TEXT NOT NULL, created INTEGER NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL, status TEXT NOT NULL,
                 error TEXT, done INTEGER);
             CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_at);
             CREATE TABLE IF NOT EXISTS delivery_incidents(incident INTEGER NOT NULL, delivery INTEGER NOT NULL,
                 PRIMARY KEY(incident, delivery));
             CREATE TABLE IF NOT EXISTS attempts(delivery INTEGER NOT NULL, receiver TEXT NOT NULL, at INTEGER NOT NULL,
                 ok INTEGER NOT NULL, error TEXT);
             CREATE INDEX IF NOT EXISTS attempts_at ON attempts(receiver, at);",
        )
        .map_err(err)?;
        Ok(Self { conn, site: site.to_owned() })
    }

    /// The last change-log seq taken in; `None` before the first.
    ///
    /// # Errors
    /// A database error.
    pub fn cursor(&self) -> Result<Option<i64>, NotifyError> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| r.get(0)).optional()?)
    }

    /// Commits a planned delivery (queued, due now); its id.
    pub(super) fn queue(
        tx: &rusqlite::Transaction<'_>,
        receiver: &str,
        channel: &str,
        m: &Message,
        now: i64,
    ) -> Result<i64, NotifyError> {
        tx.execute(
            "INSERT INTO deliveries(receiver, channel, reason, grid, message, created, next_at, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 'queued')",
            params![receiver, channel, m.reason.as_str(), m.grid, serde_json::to_string(m)?, now],
        )?;
        let id = tx.last_insert_rowid();
        for i in &m.ids {
            tx.execute("INSERT OR IGNORE INTO delivery_incidents(incident, delivery) VALUES (?1, ?2)", params![i, id])?;
        }
        Ok(id)
    }

    /// Deliveries due at `now`, oldest first, skipping `busy` ones.
    ///
    /// # Errors
    /// A database error.
    pub fn due(&self, now: i64, busy: &[i64], limit: usize) -> Result<Vec<Job>, NotifyError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, receiver, attempts, message FROM deliveries
             WHERE status IN ('queued', 'retrying') AND next_at <= ?1 ORDER BY id",
        )?;
        // The limit is taken here, not bound: a bound `LIMIT ?` makes SQLite prepare the
        // statement again on every call.
        let rows = stmt.query_map(params![now], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows.take(limit + busy.len()) {
            let (id, receiver, attempts, json) = row?;
            if busy.contains(&id) {
                continue;
            }
            out.push(Job { id, receiver, attempts, message: serde_json::from_str(&json)? });
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The earliest time a queued delivery is due.
    ///
    /// # Errors
    /// A database error.
    pub fn next_due(&self) -> Result<Option<i64>, NotifyError> {
        Ok(self.conn.query_row(
            "SELECT MIN(next_at) FROM deliveries WHERE status IN ('queued', 'retrying')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Records an attempt: delivered, retried after `retry_at`, or given up.
    ///
    /// # Errors
    /// A database error.
    pub fn record(
        &mut self,
        job: &Job,
        ok: bool,
        error: Option<&str>,
        retry_at: Option<i64>,
        now: i64,
    ) -> Result<(), NotifyError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO attempts(delivery, receiver, at, ok, error) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job.id, job.receiver, now, ok, error],
        )?;
        let (status, next, done) = match (ok, retry_at) {
            (true, _) => ("delivered", now, Some(now)),
            (false, Some(at)) => ("retrying", at, None),
            (false, None) => ("failed", now, Some(now)),
        };
        tx.execute(
            "UPDATE deliveries SET attempts = attempts + 1, status = ?2, next_at = ?3, done = ?4, error = ?5 WHERE id = ?1",
            params![job.id, status, next, done, error],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Send times per receiver since `since`, to restore the rate limiters after a restart.
    ///
    /// # Errors
    /// A database error.
    pub fn recent_attempts(&self, since: i64) -> Result<Vec<(String, i64)>, NotifyError> {
        let mut stmt = self.conn.prepare("SELECT receiver, at FROM attempts WHERE at > ?1 ORDER BY at")?;
        let rows = stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Deliveries queued but not yet done, per receiver.
    ///
    /// # Errors
    /// A database error.
    pub fn queued(&self) -> Result<Vec<(String, u64)>, NotifyError> {
        let mut stmt = self.conn.prepare(
            "SELECT receiver, COUNT(*) FROM deliveries WHERE status IN ('queued', 'retrying') GROUP BY receiver",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Recent deliveries, newest first: of one incident, or all; of `grids` only when scoped.
    ///
    /// # Errors
    /// A database error.
    pub fn deliveries(
        &self,
        incident: Option<i64>,
        grids: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, NotifyError> {
        let scope = grids.map(|g| serde_json::to_string(g).unwrap_or_default());
        let sql = "SELECT d.id, d.receiver, d.channel, d.reason, d.grid, d.message, d.created, d.attempts, d.status,
                          d.error, d.done
                   FROM deliveries d
                   WHERE (?1 IS NULL OR d.id IN (SELECT delivery FROM delivery_incidents WHERE incident = ?1))
                     AND (?2 IS NULL OR d.grid IN (SELECT value FROM json_each(?2)))
                   ORDER BY d.id DESC LIMIT ?3";
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![incident, scope, limit as i64], |r| {
            let json: String = r.get(5)?;
            let created: i64 = r.get(6)?;
            let done: Option<i64> = r.get(10)?;
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                json,
                created,
                r.get::<_, u32>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, Option<String>>(9)?,
                done,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, receiver, channel, reason, grid, json, created, attempts, status, error, done) = row?;
            let m: Message = serde_json::from_str(&json)?;
            let recipients = m
                .people
                .iter()
                .map(|p| p.mobile.clone().or(p.email.clone()).map_or(p.name.clone(), |c| format!("{} <{c}>", p.name)))
                .collect();
            out.push(DeliveryView {
                key: key(&self.site, id),
                id,
                receiver,
                channel,
                reason,
                step: m.step,
                grid,
                subject: m.subject,
                text: m.text,
                incidents: m.ids,
                recipients,
                status,
                attempts,
                created: fmt_ns(created),
                done: done.map(fmt_ns),
                error,
            });
        }
        Ok(out)
    }
}

/// Stores an item as JSON.
pub(super) fn item_json(i: &Item) -> Result<String, NotifyError> {
    Ok(serde_json::to_string(i)?)
}

#[cfg(test)]
mod tests {
    use super::backoff_ns;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = |n| backoff_ns(n) / 1_000_000_000;
        assert_eq!([s(1), s(2), s(3), s(4)], [2, 4, 8, 16]);
        assert_eq!(s(20), 600);
    }
}
