//! The outbox: line-protocol batches on disk between "accepted" and "confirmed by every store".
//!
//! # Invariants
//!
//! 1. **Durable before accepted.** A batch counts as accepted (its MQTT QoS 1 messages may be
//!    acknowledged) only after the SQLite transaction that inserts it has committed, with WAL and
//!    `synchronous=FULL`: a crash or a power cut after the acknowledgement cannot take it back. A crash
//!    before it means the broker delivers the messages again.
//! 2. **In order.** Batches get increasing sequence numbers; each target drains them in that order and
//!    keeps its own cursor (the last sequence it confirmed), so a slow or dead target never holds back
//!    the others' progress — only the deletion of what it has not confirmed.
//! 3. **Deleted only when confirmed by all.** A batch is deleted once every configured target's cursor
//!    has passed it, or by the bounds below; never because a write was merely attempted.
//! 4. **Bounded, loudly.** The outbox has a maximum size and age. When full, the oldest telemetry goes
//!    first and incidents last; every drop is counted and raises a `system` incident. A full disk is
//!    not a bound: an append that fails is an error the caller keeps and retries (and does not
//!    acknowledge), because what is already held was acknowledged and must not be dropped for room.
//! 7. **Incidents exactly once into the outbox.** Incident changes are read from the incident store's
//!    change log; the batch holding them and the log position it reaches commit in one transaction.
//! 5. **Idempotent replay.** A batch that is sent twice (a crash between the store's 2xx and the cursor
//!    update) carries the same series and timestamps, so the store overwrites rather than adds.
//! 6. **Poison is parked, not retried forever.** A batch a target rejects as malformed (4xx other than
//!    429) moves to `dead_letters` for that target with the server's message, and the cursor moves on.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

/// What a batch holds; telemetry is dropped before incidents when space runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry = 0,
    Incident = 1,
}

/// The outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("outbox: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// What an append cost in dropped data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    pub bytes: u64,
    pub incidents: u64,
}

/// One batch read back for a target.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub created: i64,
    pub lines: i64,
    pub body: Vec<u8>,
}

fn connect(path: &Path) -> Result<Connection, OutboxError> {
    let err = |source| OutboxError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS batches(
            seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, created INTEGER NOT NULL,
            lines INTEGER NOT NULL, bytes INTEGER NOT NULL, body BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS cursors(target TEXT PRIMARY KEY, seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS incident_cursor(id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS dead_letters(
            id INTEGER PRIMARY KEY, target TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL,
            status INTEGER NOT NULL, message TEXT NOT NULL, body BLOB NOT NULL);",
    )
    .map_err(err)?;
    Ok(conn)
}

/// The writing side: appends batches, enforces the bounds, deletes what every target confirmed.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    bytes: u64,
    max_bytes: u64,
    max_age_ns: i64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).field("bytes", &self.bytes).finish()
    }
}

impl Outbox {
    /// Opens (creating when needed) the outbox for `targets`. A new target starts at the oldest
    /// batch still held; cursors of targets no longer configured are removed.
    ///
    /// # Errors
    /// The file cannot be opened or created.
    pub fn open(path: &Path, targets: &[String], max_bytes: u64, max_age_ns: i64) -> Result<Self, OutboxError> {
        let conn = connect(path)?;
        let oldest: i64 = conn.query_row("SELECT COALESCE(MIN(seq), 1) - 1 FROM batches", [], |r| r.get(0))?;
        for t in targets {
            conn.execute("INSERT OR IGNORE INTO cursors(target, seq) VALUES (?1, ?2)", params![t, oldest])?;
        }
        let known: Vec<String> =
            conn.prepare("SELECT target FROM cursors")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        for k in known.iter().filter(|k| !targets.contains(k)) {
            conn.execute("DELETE FROM cursors WHERE target = ?1", [k])?;
        }
        let bytes: i64 = conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM batches", [], |r| r.get(0))?;
        Ok(Self { conn, path: path.to_owned(), bytes: bytes as u64, max_bytes, max_age_ns })
    }

    /// The file this outbox lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of batch bodies held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Commits one batch, making room first (age, then size: oldest telemetry first).
    ///
    /// # Errors
    /// The batch could not be stored (disk full, I/O error): nothing was committed; the caller keeps it.
    pub fn append(&mut self, kind: Kind, lines: usize, body: &[u8], now: i64) -> Result<(i64, Dropped), OutboxError> {
        let dropped = self.enforce(body.len() as u64, now)?;
        Ok((self.insert(kind, lines, body, now)?, dropped))
    }

    /// Commits a batch of incident changes together with the change-log position it reaches.
    ///
    /// # Errors
    /// As [`Outbox::append`]; the position stays where it was.
    pub fn append_incidents(
        &mut self,
        lines: usize,
        body: &[u8],
        now: i64,
        upto: i64,
    ) -> Result<(i64, Dropped), OutboxError> {
        let dropped = self.enforce(body.len() as u64, now)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO batches(kind, created, lines, bytes, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![Kind::Incident as i64, now, lines as i64, body.len() as i64, body],
        )?;
        let seq = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO incident_cursor(id, seq) VALUES (0, ?1) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq",
            [upto],
        )?;
        tx.commit()?;
        self.bytes += body.len() as u64;
        Ok((seq, dropped))
    }

    /// Gives back what the write-ahead log holds beyond the database (a full disk often is the WAL
    /// that could not be checkpointed); harmless when there is nothing to give back.
    pub fn reclaim(&self) {
        let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// The last incident change-log position committed to the outbox (0 when none).
    ///
    /// # Errors
    /// A database error.
    pub fn incident_cursor(&self) -> Result<i64, OutboxError> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM incident_cursor WHERE id = 0", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn insert(&mut self, kind: Kind, lines: usize, body: &[u8], now: i64) -> Result<i64, rusqlite::Error> {
        self.conn
            .prepare_cached("INSERT INTO batches(kind, created, lines, bytes, body) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![kind as i64, now, lines as i64, body.len() as i64, body])?;
        self.bytes += body.len() as u64;
        Ok(self.conn.last_insert_rowid())
    }

    /// Drops what is older than the maximum age and, oldest telemetry first, what does not fit.
    fn enforce(&mut self, incoming: u64, now: i64) -> Result<Dropped, OutboxError> {
        let mut dropped = Dropped::default();
        if self.max_age_ns > 0 {
            let horizon = now.saturating_sub(self.max_age_ns);
            let (n, b, i): (i64, i64, i64) = self.conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(kind), 0) FROM batches WHERE created < ?1",
                [horizon],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            if n > 0 {
                self.conn.execute("DELETE FROM batches WHERE created < ?1", [horizon])?;
                self.bytes = self.bytes.saturating_sub(b as u64);
                dropped = Dropped { batches: n as u64, bytes: b as u64, incidents: i as u64 };
            }
        }
        if self.max_bytes > 0 && self.bytes + incoming > self.max_bytes {
            let d = self.drop_oldest_until(self.max_bytes.saturating_sub(incoming))?;
            dropped.batches += d.batches;
            dropped.bytes += d.bytes;
            dropped.incidents += d.incidents;
        }
        Ok(dropped)
    }

    /// Drops the oldest telemetry, then (only if that is not enough) the oldest incidents, until at
    /// most `target` bytes remain.
    fn drop_oldest_until(&mut self, target: u64) -> Result<Dropped, OutboxError> {
        let mut dropped = Dropped::default();
        for kind in [Kind::Telemetry, Kind::Incident] {
            while self.bytes > target {
                let victims: Vec<(i64, i64)> = self
                    .conn
                    .prepare_cached("SELECT seq, bytes FROM batches WHERE kind = ?1 ORDER BY seq LIMIT 64")?
                    .query_map([kind as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                if victims.is_empty() {
                    break;
                }
                let tx = self.conn.transaction()?;
                for (seq, bytes) in victims {
                    if self.bytes <= target {
                        break;
                    }
                    tx.execute("DELETE FROM batches WHERE seq = ?1", [seq])?;
                    self.bytes = self.bytes.saturating_sub(bytes as u64);
                    dropped.batches += 1;
                    dropped.bytes += bytes as u64;
                    if kind == Kind::Incident {
                        dropped.incidents += 1;
                    }
                }
                tx.commit()?;
            }
        }
        Ok(dropped)
    }

    /// Deletes every batch all targets have confirmed; returns how many.
    ///
    /// # Errors
    /// A database error.
    pub fn prune(&mut self) -> Result<u64, OutboxError> {
        let min: Option<i64> = self.conn.query_row("SELECT MIN(seq) FROM cursors", [], |r| r.get(0))?;
        let Some(min) = min else { return Ok(0) };
        let (n, b): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM batches WHERE seq <= ?1",
            [min],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if n > 0 {
            self.conn.execute("DELETE FROM batches WHERE seq <= ?1", [min])?;
            self.bytes = self.bytes.saturating_sub(b as u64);
        }
        Ok(n as u64)
    }

    /// (batches, bytes) held.
    ///
    /// # Errors
    /// A database error.
    pub fn depth(&self) -> Result<(u64, u64), OutboxError> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))?;
        Ok((n as u64, self.bytes))
    }
}

/// One target's view: reads batches after its cursor, moves the cursor, parks poison.
pub struct Cursor {
    conn: Connection,
    target: String,
}

impl Cursor {
    /// Opens a reading connection for `target`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path, target: &str) -> Result<Self, OutboxError> {
        Ok(Self { conn: connect(path)?, target: target.to_owned() })
    }

    /// The last sequence this target confirmed.
    ///
    /// # Errors
    /// A database error.
    pub fn position(&self) -> Result<i64, OutboxError> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM cursors WHERE target = ?1", [&self.target], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// The next batch after `seq`, if any.
    ///
    /// # Errors
    /// A database error.
    pub fn next_after(&self, seq: i64) -> Result<Option<Stored>, OutboxError> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq, created, lines, body FROM batches WHERE seq > ?1 ORDER BY seq LIMIT 1")?
            .query_row([seq], |r| Ok(Stored { seq: r.get(0)?, created: r.get(1)?, lines: r.get(2)?, body: r.get(3)? }))
            .optional()?)
    }

    /// Records that the target confirmed everything up to `seq`.
    ///
    /// # Errors
    /// A database error.
    pub fn advance(&self, seq: i64) -> Result<(), OutboxError> {
        self.conn.execute("UPDATE cursors SET seq = MAX(seq, ?2) WHERE target = ?1", params![self.target, seq])?;
        Ok(())
    }

    /// Parks a batch the target rejected, with the server's answer, and moves past it.
    ///
    /// # Errors
    /// A database error.
    pub fn dead_letter(&mut self, b: &Stored, status: u16, message: &str, now: i64) -> Result<(), OutboxError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO dead_letters(target, seq, at, status, message, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![self.target, b.seq, now, status, message, b.body],
        )?;
        tx.execute("UPDATE cursors SET seq = MAX(seq, ?2) WHERE target = ?1", params![self.target, b.seq])?;
        tx.commit()?;
        Ok(())
    }

    /// What is waiting for this target: (batches, bytes, creation time of the oldest).
    ///
    /// # Errors
    /// A database error.
    pub fn backlog(&self, after: i64) -> Result<(u64, u64, Option<i64>), OutboxError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(created) FROM batches WHERE seq > ?1",
            [after],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?)),
        )?)
    }

    /// Dead letters of this target, newest first: (seq, at, status, message).
    ///
    /// # Errors
    /// A database error.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(i64, i64, u16, String)>, OutboxError> {
        Ok(self
            .conn
            .prepare("SELECT seq, at, status, message FROM dead_letters WHERE target = ?1 ORDER BY id DESC LIMIT ?2")?
            .query_map(params![self.target, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_until_every_target_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let targets = vec!["a".to_string(), "b".to_string()];
        let mut o = Outbox::open(&path, &targets, 0, 0).unwrap();
        let (s1, _) = o.append(Kind::Telemetry, 1, b"m f=1 1\n", 1).unwrap();
        let (s2, _) = o.append(Kind::Telemetry, 1, b"m f=2 2\n", 2).unwrap();
        let a = Cursor::open(&path, "a").unwrap();
        let b = Cursor::open(&path, "b").unwrap();
        assert_eq!(a.next_after(a.position().unwrap()).unwrap().unwrap().seq, s1);
        a.advance(s2).unwrap();
        assert_eq!(o.prune().unwrap(), 0, "b has not confirmed");
        b.advance(s1).unwrap();
        assert_eq!(o.prune().unwrap(), 1);
        assert_eq!(b.next_after(b.position().unwrap()).unwrap().unwrap().seq, s2);
        assert!(a.next_after(a.position().unwrap()).unwrap().is_none());
        // Reopen: the state is on disk.
        drop(o);
        let o = Outbox::open(&path, &targets, 0, 0).unwrap();
        assert_eq!(o.depth().unwrap(), (1, 8));
    }

    #[test]
    fn full_outbox_drops_oldest_telemetry_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 1000, 0).unwrap();
        o.append(Kind::Incident, 1, &[b'i'; 100], 1).unwrap();
        for t in 0..8 {
            o.append(Kind::Telemetry, 1, &[b't'; 100], 2 + t).unwrap();
        }
        // 900 held + 300 incoming > 1000: the two oldest telemetry batches go, the incident stays.
        let (_, d) = o.append(Kind::Telemetry, 1, &[b't'; 300], 20).unwrap();
        assert_eq!(d, Dropped { batches: 2, bytes: 200, incidents: 0 });
        assert!(o.bytes() <= 1000);
        let c = Cursor::open(&path, "a").unwrap();
        assert_eq!(c.next_after(0).unwrap().unwrap().body[0], b'i', "the incident is still first");
    }

    #[test]
    fn old_batches_age_out_and_poison_is_parked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 100).unwrap();
        o.append(Kind::Telemetry, 1, b"old", 0).unwrap();
        let (seq, d) = o.append(Kind::Telemetry, 1, b"new", 500).unwrap();
        assert_eq!(d.batches, 1);
        let mut c = Cursor::open(&path, "a").unwrap();
        let b = c.next_after(c.position().unwrap()).unwrap().unwrap();
        assert_eq!(b.seq, seq);
        c.dead_letter(&b, 400, "unable to parse", 600).unwrap();
        assert_eq!(c.position().unwrap(), seq);
        assert_eq!(c.dead_letters(10).unwrap(), vec![(seq, 600, 400, "unable to parse".to_string())]);
    }
}
