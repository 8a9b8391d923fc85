//! The committed change log of the incident store, read by cursor.
//!
//! Every state change of an incident is a row of `incident_events` with a sequence number (`seq`) and a
//! timestamp (`ts`) unique and strictly increasing over the whole log. Sinks (the outbox, the central
//! MQTT publisher) keep the last `seq` they have durably handed on and read what follows: a slow sink
//! lags but loses nothing, and a restarted one continues where it stopped. Comments are history, not
//! changes, and are not read here.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;
use crate::model::time::fmt_ns;

/// One committed change, as sinks forward it: the incident as that change left it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChangeRow {
    /// Position in the change log.
    pub seq: i64,
    /// Unique, strictly increasing UTC ns; the time of the change in the central store.
    #[serde(skip)]
    pub ts: i64,
    /// RFC 3339 form of `ts`.
    pub at: String,
    /// raised, reactivated, escalated, returned, acked, closed, chattering, shelved, unshelved.
    pub change: String,
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
    pub message: String,
    pub plan: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Numeric code of a state name, for stores that keep only numbers (0 normal, 1 active unacknowledged,
/// 2 active acknowledged, 3 returned unacknowledged).
pub fn state_code(state: &str) -> i64 {
    match state {
        "active_unacked" => 1,
        "active_acked" => 2,
        "returned_unacked" => 3,
        _ => 0,
    }
}

/// Numeric level of a severity (1 warning … 4 critical; 0 unknown).
pub fn severity_level(severity: &str) -> i64 {
    match severity {
        "warning" => 1,
        "minor" => 2,
        "major" => 3,
        "critical" => 4,
        _ => 0,
    }
}

/// Numeric code of a kind of change (1 raised, 2 reactivated, 3 escalated, 4 returned, 5 acked,
/// 6 closed, 7 chattering, 8 shelved, 9 unshelved; 0 other).
pub fn change_code(kind: &str) -> i64 {
    match kind {
        "raised" => 1,
        "reactivated" => 2,
        "escalated" => 3,
        "returned" => 4,
        "acked" => 5,
        "closed" => 6,
        "chattering" => 7,
        "shelved" => 8,
        "unshelved" => 9,
        _ => 0,
    }
}

macro_rules! changes {
    () => {
        "SELECT e.seq, COALESCE(e.ts, e.at), e.kind, i.id, i.rule, i.title, i.category,
                COALESCE(e.severity, i.severity), COALESCE(e.state, i.state), i.device, i.grid, i.point,
                COALESCE(e.value, i.value), i.message, i.plan, e.who, e.note
         FROM incident_events e JOIN incidents i ON i.id = e.incident
         WHERE e.seq > ?1 AND e.seq <= ?2 AND e.kind != 'comment'"
    };
}
/// The change log of the whole site, and of a scope of grids (a JSON array in ?3), in order.
const CHANGES_SITE: &str = concat!(changes!(), " ORDER BY e.seq");
const CHANGES_SCOPED: &str = concat!(changes!(), " AND i.grid IN (SELECT value FROM json_each(?3)) ORDER BY e.seq");

/// A reading connection on the incident database for one sink.
pub struct ChangeLog {
    conn: Connection,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog").finish_non_exhaustive()
    }
}

impl ChangeLog {
    /// Opens the incident database at `path` (created by the store) for reading the change log.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Open { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        super::schema(&conn).map_err(err)?;
        // Sinks write only their cursors here, which may lag (at-least-once): no fsync per save.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        Ok(Self { conn })
    }

    /// Up to `limit` changes after `seq`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn after(&self, seq: i64, limit: usize) -> Result<Vec<ChangeRow>, StoreError> {
        self.after_in(seq, i64::MAX, None, limit)
    }

    /// Up to `limit` changes after `seq` and up to `upto`, of incidents in `scope` (grid ids; `None` is
    /// the whole site), oldest first: the scope is part of the query.
    ///
    /// # Errors
    /// A database error.
    pub fn after_in(
        &self,
        seq: i64,
        upto: i64,
        scope: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        // No parameter where SQLite reads its value while planning (`LIMIT ?`, `? IS NULL`): it
        // compiles the value into the plan and prepares the statement again after every new bind,
        // a parse per call of the hot readers. So two statements, and the limit is taken here
        // (rows are stepped lazily). The scope travels as a JSON array so one cached statement
        // serves every scoped caller.
        let (mut stmt, grids) = match scope {
            None => (self.conn.prepare_cached(CHANGES_SITE)?, None),
            Some(g) => {
                (self.conn.prepare_cached(CHANGES_SCOPED)?, Some(serde_json::Value::from(g.to_vec()).to_string()))
            }
        };
        let map = |r: &rusqlite::Row<'_>| {
            let ts: i64 = r.get(1)?;
            Ok(ChangeRow {
                seq: r.get(0)?,
                ts,
                at: fmt_ns(ts),
                change: r.get(2)?,
                id: r.get(3)?,
                rule: r.get(4)?,
                title: r.get(5)?,
                category: r.get(6)?,
                severity: r.get(7)?,
                state: r.get(8)?,
                device: r.get(9)?,
                grid: r.get(10)?,
                point: r.get(11)?,
                value: r.get(12)?,
                message: r.get(13)?,
                plan: r.get(14)?,
                who: r.get(15)?,
                note: r.get(16)?,
            })
        };
        let rows = match grids {
            None => stmt.query_map(params![seq, upto], map)?.take(limit).collect::<Result<_, _>>()?,
            Some(g) => stmt.query_map(params![seq, upto, g], map)?.take(limit).collect::<Result<_, _>>()?,
        };
        Ok(rows)
    }

    /// The last sequence number committed (0 when the log is empty).
    ///
    /// # Errors
    /// A database error.
    pub fn head(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM incident_events", [], |r| r.get(0))?)
    }

    /// The cursor a sink that keeps it in this database (`sink_cursors`) saved last; `None` for a new sink.
    ///
    /// # Errors
    /// A database error.
    pub fn cursor(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row("SELECT seq FROM sink_cursors WHERE sink = ?1", [sink], |r| r.get(0)).optional()?)
    }

    /// Saves a sink's cursor: everything up to `seq` was handed on.
    ///
    /// # Errors
    /// A database error (a full disk): the sink sends those changes again after a restart.
    pub fn save_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sink_cursors(sink, seq) VALUES (?1, ?2)
             ON CONFLICT(sink) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            params![sink, seq],
        )?;
        Ok(())
    }
}

/// Hands out change timestamps: unique and strictly increasing over the whole log, and at least a
/// millisecond apart within one (rule, device) series, because stores that keep milliseconds
/// (VictoriaMetrics, Prometheus-style) would otherwise merge two changes of one series into one point.
#[derive(Debug, Default)]
pub struct ChangeClock {
    last: i64,
    /// Last millisecond used per (rule, device) series, by hash; cleared when it grows past its bound.
    series_ms: HashMap<u64, i64>,
}

/// Series remembered before the map is cleared (a clear can only matter within one millisecond).
const SERIES_KEPT: usize = 100_000;

impl ChangeClock {
    /// A clock continuing after `last` (the newest timestamp already in the log): the first change is
    /// placed in a later millisecond, so it cannot merge with one written before a restart.
    pub fn after(last: i64) -> Self {
        let start = if last > 0 { (last / 1_000_000 + 1) * 1_000_000 - 1 } else { 0 };
        Self { last: start, series_ms: HashMap::new() }
    }

    /// The timestamp for a change that happened at `at` on series (`rule`, `device`).
    pub fn stamp(&mut self, at: i64, rule: &str, device: &str) -> i64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (rule, device).hash(&mut h);
        let key = h.finish();
        let mut ts = at.max(self.last.saturating_add(1));
        if let Some(&ms) = self.series_ms.get(&key) {
            if ts.div_euclid(1_000_000) <= ms {
                ts = (ms + 1) * 1_000_000;
            }
        }
        if self.series_ms.len() >= SERIES_KEPT {
            self.series_ms.clear();
        }
        self.series_ms.insert(key, ts.div_euclid(1_000_000));
        self.last = ts;
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How often SQLite prepared the cached statement `sql` again.
    fn reprepared(conn: &Connection, sql: &str) -> i32 {
        conn.prepare_cached(sql).unwrap().get_status(rusqlite::StatementStatus::RePrepare)
    }

    #[test]
    fn reading_the_log_with_other_limits_and_scopes_does_not_prepare_its_statements_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(&dir.path().join("incidents.db")).unwrap();
        let grids = ["g1".to_owned(), "g2".to_owned()];
        for limit in 1..=5 {
            log.after_in(limit as i64, 1000, None, limit).unwrap();
            log.after_in(limit as i64, 1000, Some(&grids[..limit % 2 + 1]), limit).unwrap();
        }
        assert_eq!(reprepared(&log.conn, CHANGES_SITE), 0);
        assert_eq!(reprepared(&log.conn, CHANGES_SCOPED), 0);
        // What the statements avoid: the same read with its limit bound is prepared again after
        // every new limit (as the change log's reads were, one SQL parse each).
        let bound = concat!(changes!(), " ORDER BY e.seq LIMIT ?3");
        for limit in 1..=5 {
            let mut stmt = log.conn.prepare_cached(bound).unwrap();
            let _ = stmt.query_map(params![0, 1000, limit], |r| r.get::<_, i64>(0)).unwrap().count();
        }
        assert!(reprepared(&log.conn, bound) > 0, "SQLite no longer replans a bound LIMIT");
    }

    #[test]
    fn stamps_are_unique_increasing_and_a_millisecond_apart_per_series() {
        let mut c = ChangeClock::after(0);
        let a = c.stamp(5_000_000, "r", "d1");
        let b = c.stamp(5_000_000, "r", "d2");
        let d = c.stamp(5_000_000, "r", "d1");
        let e = c.stamp(1_000, "r", "d3");
        assert_eq!(a, 5_000_000);
        assert_eq!(b, 5_000_001, "another series only needs a later nanosecond");
        assert_eq!(d, 6_000_000, "the same series moves to the next millisecond");
        assert_eq!(e, 6_000_001, "a clock step back never goes back in the log");
        let mut after_restart = ChangeClock::after(e);
        assert_eq!(after_restart.stamp(6_000_001, "r", "d1"), 7_000_000);
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(state_code("normal"), 0);
        assert_eq!(state_code("returned_unacked"), 3);
        assert_eq!(severity_level("critical"), 4);
        assert_eq!(change_code("closed"), 6);
    }
}
