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
//! 4. **Bounded, loudly.** The outbox has a maximum size, and telemetry a maximum age. When full, the
//!    oldest telemetry goes first and incidents last; every drop is counted and raises a `system`
//!    incident. The age limit applies to telemetry only: an incident batch stays until every target
//!    confirmed it (or the size bound, as a last resort, takes it). A full disk is not a bound: an
//!    append that fails is an error the caller keeps and retries (and does not acknowledge), because
//!    what is already held was acknowledged and must not be dropped for room.
//! 5. **Idempotent replay.** A batch that is sent twice (a crash between the store's 2xx and the cursor
//!    update) carries the same series and timestamps, so the store overwrites rather than adds.
//! 6. **Poison is parked, not retried forever.** When a target rejects a batch as malformed, the writer
//!    isolates the offending lines; only those move to `dead_letters` (target, original sequence,
//!    status, the server's message, the line), in the same transaction that moves the cursor on. The
//!    dead letters are bounded by count and bytes; beyond that the oldest are dropped and counted.
//! 7. **Dead letters can be replayed.** `replay` turns a target's dead letters back into batches
//!    addressed to that target only (`batches.target`; NULL means every target) and deletes them in the
//!    same transaction, so a line is either parked or queued, never both and never neither.
//! 8. **Incidents exactly once into the outbox.** Incident changes are read from the incident store's
//!    change log; the batch holding them and the log position it reaches commit in one transaction.
//!    Audit records come the same way from the audit log, with a cursor of their own, and are kept
//!    like incidents (past the age limit, until every target confirmed them).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// What a batch holds; telemetry is dropped before incidents when space runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry = 0,
    /// Incident changes or audit records: kept until confirmed.
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
    /// Batches joined into this one.
    pub batches: u64,
    /// Their bytes as the outbox counts them.
    pub bytes: u64,
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
            lines INTEGER NOT NULL, bytes INTEGER NOT NULL, body BLOB NOT NULL, target TEXT);
         CREATE TABLE IF NOT EXISTS cursors(target TEXT PRIMARY KEY, seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS incident_cursor(id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS audit_cursor(id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS dead_letters(
            id INTEGER PRIMARY KEY, target TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL,
            status INTEGER NOT NULL, message TEXT NOT NULL, body BLOB NOT NULL,
            kind INTEGER NOT NULL DEFAULT 0);",
    )
    .map_err(err)?;
    // Without it, the age limit's look for old telemetry scans every batch held, so each append
    // costs more the larger the backlog (the time a store is down is when that hurts).
    conn.execute_batch("CREATE INDEX IF NOT EXISTS batches_kind_created ON batches(kind, created)").map_err(err)?;
    // Outboxes written before replay existed lack these columns.
    add_column(&conn, "batches", "target", "TEXT").map_err(err)?;
    add_column(&conn, "dead_letters", "kind", "INTEGER NOT NULL DEFAULT 0").map_err(err)?;
    Ok(conn)
}

/// Adds `column` to `table` unless it is there; other processes may open the file at the same time.
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<(), rusqlite::Error> {
    let has = |conn: &Connection| -> Result<bool, rusqlite::Error> {
        let n: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    };
    if has(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = match has(conn) {
        Ok(true) => Ok(()),
        Ok(false) => conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The creation time of the oldest telemetry batch held, `i64::MAX` when there is none (an index seek).
fn oldest_telemetry(conn: &Connection) -> Result<i64, rusqlite::Error> {
    let t: Option<i64> =
        conn.query_row("SELECT MIN(created) FROM batches WHERE kind = ?1", [Kind::Telemetry as i64], |r| r.get(0))?;
    Ok(t.unwrap_or(i64::MAX))
}

/// The writing side: appends batches, enforces the bounds, deletes what every target confirmed.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    bytes: u64,
    max_bytes: u64,
    max_age_ns: i64,
    /// At most the creation time of the oldest telemetry held (`i64::MAX` when none): appends
    /// look for expired telemetry only once the age horizon has passed it.
    telemetry_floor: i64,
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
        let telemetry_floor = oldest_telemetry(&conn)?;
        Ok(Self { conn, path: path.to_owned(), bytes: bytes as u64, max_bytes, max_age_ns, telemetry_floor })
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
        self.append_upto("incident_cursor", lines, body, now, upto)
    }

    /// Commits a batch of audit records together with the audit-log position it reaches; kept like
    /// incidents.
    ///
    /// # Errors
    /// As [`Outbox::append`]; the position stays where it was.
    pub fn append_audit(
        &mut self,
        lines: usize,
        body: &[u8],
        now: i64,
        upto: i64,
    ) -> Result<(i64, Dropped), OutboxError> {
        self.append_upto("audit_cursor", lines, body, now, upto)
    }

    /// One kept batch and the position (in `cursor`, a table) it reaches, in one transaction.
    fn append_upto(
        &mut self,
        cursor: &str,
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
            &format!("INSERT INTO {cursor}(id, seq) VALUES (0, ?1) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq"),
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

    /// The last audit-log position committed to the outbox (0 when none).
    ///
    /// # Errors
    /// A database error.
    pub fn audit_cursor(&self) -> Result<i64, OutboxError> {
        Ok(self.conn.query_row("SELECT seq FROM audit_cursor WHERE id = 0", [], |r| r.get(0)).optional()?.unwrap_or(0))
    }

    fn insert(&mut self, kind: Kind, lines: usize, body: &[u8], now: i64) -> Result<i64, rusqlite::Error> {
        self.conn
            .prepare_cached("INSERT INTO batches(kind, created, lines, bytes, body) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![kind as i64, now, lines as i64, body.len() as i64, body])?;
        self.bytes += body.len() as u64;
        if kind == Kind::Telemetry {
            self.telemetry_floor = self.telemetry_floor.min(now);
        }
        Ok(self.conn.last_insert_rowid())
    }

    /// Drops telemetry older than the maximum age and, oldest telemetry first, what does not fit.
    fn enforce(&mut self, incoming: u64, now: i64) -> Result<Dropped, OutboxError> {
        let mut dropped = Dropped::default();
        let horizon = now.saturating_sub(self.max_age_ns);
        if self.max_age_ns > 0 && horizon > self.telemetry_floor {
            // Samples lose their worth with age; an incident is kept until confirmed.
            let (n, b): (i64, i64) = self.conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM batches WHERE created < ?1 AND kind = ?2",
                params![horizon, Kind::Telemetry as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if n > 0 {
                self.conn.execute(
                    "DELETE FROM batches WHERE created < ?1 AND kind = ?2",
                    params![horizon, Kind::Telemetry as i64],
                )?;
                self.bytes = self.bytes.saturating_sub(b as u64);
                dropped = Dropped { batches: n as u64, bytes: b as u64, incidents: 0 };
            }
            self.telemetry_floor = oldest_telemetry(&self.conn)?;
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
        // `parkwatch forward replay` may have appended from another process.
        let held: i64 = self.conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM batches", [], |r| r.get(0))?;
        self.bytes = held as u64;
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
        let conn = connect(path)?;
        // A cursor move lost to a power cut sends its batches again, which the store takes as the
        // same points: it need not wait for the disk (one fsync per delivered batch otherwise).
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(|source| OutboxError::Open { path: path.to_owned(), source })?;
        Ok(Self { conn, target: target.to_owned() })
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

    /// The batches after `seq` up to `upto` meant for this target (addressed to all, or to it),
    /// joined into one while they fit in `max_bytes` (the first always comes): many small commits go
    /// to the store as one request. The result carries the last batch's `seq` and the first one's
    /// `created`.
    ///
    /// # Errors
    /// A database error.
    pub fn next_after(&self, seq: i64, upto: i64, max_bytes: usize) -> Result<Option<Stored>, OutboxError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, created, lines, body FROM batches
             WHERE seq > ?1 AND seq <= ?3 AND (target IS NULL OR target = ?2) ORDER BY seq LIMIT 256",
        )?;
        let mut rows = stmt.query(params![seq, self.target, upto])?;
        let mut joined: Option<Stored> = None;
        while let Some(r) = rows.next()? {
            let body: Vec<u8> = r.get(3)?;
            match joined.as_mut() {
                None => {
                    joined = Some(Stored {
                        seq: r.get(0)?,
                        created: r.get(1)?,
                        lines: r.get(2)?,
                        bytes: body.len() as u64,
                        body,
                        batches: 1,
                    });
                }
                Some(j) if j.body.len() + body.len() < max_bytes => {
                    if j.body.last().is_some_and(|&c| c != b'\n') {
                        j.body.push(b'\n');
                    }
                    j.body.extend_from_slice(&body);
                    j.seq = r.get(0)?;
                    j.lines += r.get::<_, i64>(2)?;
                    j.batches += 1;
                    j.bytes += body.len() as u64;
                }
                Some(_) => break,
            }
        }
        Ok(joined)
    }

    /// Records that the target confirmed everything up to `seq`.
    ///
    /// # Errors
    /// A database error.
    pub fn advance(&self, seq: i64) -> Result<(), OutboxError> {
        self.conn.execute("UPDATE cursors SET seq = MAX(seq, ?2) WHERE target = ?1", params![self.target, seq])?;
        Ok(())
    }

    /// Moves past batch `seq`, parking the lines the target rejected (if any) in the same
    /// transaction, then drops the oldest dead letters (of any target) beyond `bounds`. Returns how
    /// many dead letters were dropped.
    ///
    /// # Errors
    /// A database error; nothing was parked and the cursor did not move.
    pub fn dead_letter(
        &mut self,
        seq: i64,
        rejected: &[Rejected],
        bounds: DeadLetterBounds,
        now: i64,
    ) -> Result<u64, OutboxError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for r in rejected {
            // The batch is still held (the cursor has not passed it): its kind is known.
            tx.execute(
                "INSERT INTO dead_letters(target, seq, at, status, message, body, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE((SELECT kind FROM batches WHERE seq = ?2), 0))",
                params![self.target, seq, now, r.status, r.message, r.body],
            )?;
        }
        tx.execute("UPDATE cursors SET seq = MAX(seq, ?2) WHERE target = ?1", params![self.target, seq])?;
        let dropped = if rejected.is_empty() { 0 } else { trim_dead_letters(&tx, bounds)? };
        tx.commit()?;
        Ok(dropped)
    }

    /// The batches meant for this target after `after`: (batches, bytes, the last one's seq or
    /// `after`). Reads only those rows: called with the last seq counted, it costs what is new.
    ///
    /// # Errors
    /// A database error.
    pub fn waiting_after(&self, after: i64) -> Result<(u64, u64, i64), OutboxError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(MAX(seq), ?1) FROM batches
             WHERE seq > ?1 AND (target IS NULL OR target = ?2)",
            )?
            .query_row(params![after, self.target], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?)
    }

    /// Creation time of the first batch after `after` meant for this target.
    ///
    /// # Errors
    /// A database error.
    pub fn oldest_after(&self, after: i64) -> Result<Option<i64>, OutboxError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT created FROM batches WHERE seq > ?1 AND (target IS NULL OR target = ?2) ORDER BY seq LIMIT 1",
            )?
            .query_row(params![after, self.target], |r| r.get(0))
            .optional()?)
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

/// Lines a target rejected as malformed, with the server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub status: u16,
    pub message: String,
    /// The line(s), newline-terminated.
    pub body: Vec<u8>,
}

/// Limits of the dead-letter table as a whole (every target's letters together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterBounds {
    pub max_count: u64,
    /// Bytes of parked lines and server messages.
    pub max_bytes: u64,
}

/// Drops the oldest dead letters until the table is within `bounds`; returns how many went.
fn trim_dead_letters(conn: &Connection, bounds: DeadLetterBounds) -> Result<u64, rusqlite::Error> {
    const SIZE: &str = "LENGTH(body) + LENGTH(CAST(message AS BLOB))";
    let (mut n, mut bytes): (i64, i64) =
        conn.query_row(&format!("SELECT COUNT(*), COALESCE(SUM({SIZE}), 0) FROM dead_letters"), [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let over = |n: i64, bytes: i64| n as u64 > bounds.max_count || bytes as u64 > bounds.max_bytes;
    if !over(n, bytes) {
        return Ok(0);
    }
    let mut last = None;
    let mut dropped = 0;
    {
        let mut stmt = conn.prepare(&format!("SELECT id, {SIZE} FROM dead_letters ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        while over(n, bytes) {
            let Some(row) = rows.next()? else { break };
            last = Some(row.get::<_, i64>(0)?);
            n -= 1;
            bytes -= row.get::<_, i64>(1)?;
            dropped += 1;
        }
    }
    if let Some(last) = last {
        conn.execute("DELETE FROM dead_letters WHERE id <= ?1", [last])?;
    }
    Ok(dropped)
}

/// What `replay` did, or would do, for one target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub target: String,
    /// Dead letters taken back.
    pub letters: u64,
    pub lines: u64,
    pub bytes: u64,
    /// New batches appended, addressed to this target only.
    pub batches: u64,
}

/// A replayed batch is cut at this many bytes of line protocol.
const REPLAY_BATCH_BYTES: usize = 1 << 20;

/// Dead letters per target: (target, count, bytes of lines), for every target that has some.
///
/// # Errors
/// The file cannot be opened, or a database error.
pub fn dead_letter_counts(path: &Path) -> Result<Vec<(String, u64, u64)>, OutboxError> {
    let conn = connect(path)?;
    let counts = conn
        .prepare(
            "SELECT target, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM dead_letters GROUP BY target ORDER BY target",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))?
        .collect::<Result<_, _>>()?;
    Ok(counts)
}

/// Appends the dead letters of each of `targets` as new batches addressed to that target alone and
/// deletes them, all in one transaction; with `dry_run`, only reports what it would do. Safe while
/// the daemon runs: the daemon's writers pick the batches up like any other.
///
/// # Errors
/// The file cannot be opened, or a database error (then nothing changed).
pub fn replay(path: &Path, targets: &[String], dry_run: bool, now: i64) -> Result<Vec<Replayed>, OutboxError> {
    let mut conn = connect(path)?;
    let tx = conn.transaction_with_behavior(if dry_run {
        TransactionBehavior::Deferred
    } else {
        TransactionBehavior::Immediate
    })?;
    let mut report = Vec::new();
    for target in targets {
        let letters: Vec<(i64, i64, Vec<u8>)> = tx
            .prepare("SELECT id, kind, body FROM dead_letters WHERE target = ?1 ORDER BY id")?
            .query_map([target], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut done = Replayed { target: target.clone(), ..Replayed::default() };
        // One open batch per kind, so incidents stay incidents (kept past the age limit).
        let mut open: [(Vec<u8>, u64); 2] = [(Vec::new(), 0), (Vec::new(), 0)];
        let flush = |kind: usize, body: &mut Vec<u8>, lines: &mut u64, done: &mut Replayed| {
            if body.is_empty() {
                return Ok::<(), rusqlite::Error>(());
            }
            if !dry_run {
                tx.execute(
                    "INSERT INTO batches(kind, created, lines, bytes, body, target) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![kind as i64, now, *lines as i64, body.len() as i64, &*body, target],
                )?;
            }
            done.batches += 1;
            body.clear();
            *lines = 0;
            Ok(())
        };
        for (id, kind, mut body) in letters {
            if !body.ends_with(b"\n") {
                body.push(b'\n');
            }
            let lines = body.iter().filter(|&&c| c == b'\n').count() as u64;
            let k = usize::from(kind == Kind::Incident as i64);
            let (buf, n) = &mut open[k];
            if !buf.is_empty() && buf.len() + body.len() > REPLAY_BATCH_BYTES {
                flush(k, buf, n, &mut done)?;
            }
            buf.extend_from_slice(&body);
            *n += lines;
            done.letters += 1;
            done.lines += lines;
            done.bytes += body.len() as u64;
            if !dry_run {
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
            }
        }
        for (k, (buf, n)) in open.iter_mut().enumerate() {
            flush(k, buf, n, &mut done)?;
        }
        report.push(done);
    }
    if dry_run {
        tx.rollback()?;
    } else {
        tx.commit()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_and_incident_cursors_move_apart_and_their_batches_outlive_the_age_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 10).unwrap();
        assert_eq!((o.incident_cursor().unwrap(), o.audit_cursor().unwrap()), (0, 0));
        o.append_audit(2, b"audit seq=1i 1\naudit seq=2i 2\n", 1, 2).unwrap();
        o.append_incidents(1, b"incident id=1i 3\n", 2, 7).unwrap();
        let (_, dropped) = o.append(Kind::Telemetry, 1, b"m f=1 1\n", 1_000).unwrap();
        assert_eq!(dropped, Dropped::default(), "audit and incident batches are kept past the age limit");
        drop(o);
        let o = Outbox::open(&path, &["a".to_string()], 0, 10).unwrap();
        assert_eq!((o.incident_cursor().unwrap(), o.audit_cursor().unwrap()), (7, 2));
        let c = Cursor::open(&path, "a").unwrap();
        assert_eq!(c.next_after(0, i64::MAX, 0).unwrap().unwrap().body, b"audit seq=1i 1\naudit seq=2i 2\n");
    }

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
        assert_eq!(a.next_after(a.position().unwrap(), i64::MAX, 0).unwrap().unwrap().seq, s1);
        a.advance(s2).unwrap();
        assert_eq!(o.prune().unwrap(), 0, "b has not confirmed");
        b.advance(s1).unwrap();
        assert_eq!(o.prune().unwrap(), 1);
        assert_eq!(b.next_after(b.position().unwrap(), i64::MAX, 0).unwrap().unwrap().seq, s2);
        assert!(a.next_after(a.position().unwrap(), i64::MAX, 0).unwrap().is_none());
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
        assert_eq!(c.next_after(0, i64::MAX, 0).unwrap().unwrap().body[0], b'i', "the incident is still first");
    }

    #[test]
    fn the_age_limit_drops_samples_but_keeps_incidents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 100).unwrap();
        o.append(Kind::Telemetry, 1, b"old sample\n", 0).unwrap();
        let (incident, _) = o.append(Kind::Incident, 1, b"old incident\n", 1).unwrap();
        let (seq, d) = o.append(Kind::Telemetry, 1, b"new\n", 500).unwrap();
        assert_eq!(d, Dropped { batches: 1, bytes: 11, incidents: 0 });
        let c = Cursor::open(&path, "a").unwrap();
        let first = c.next_after(c.position().unwrap(), i64::MAX, 0).unwrap().unwrap();
        assert_eq!((first.seq, first.body.as_slice()), (incident, &b"old incident\n"[..]));
        assert_eq!(c.next_after(first.seq, i64::MAX, 0).unwrap().unwrap().seq, seq);
        // Much later still: the incident waits for its confirmation.
        let (_, d) = o.append(Kind::Telemetry, 1, b"later\n", 10_000).unwrap();
        assert_eq!(d.batches, 1, "only the sample went");
        assert_eq!(c.next_after(0, i64::MAX, 0).unwrap().unwrap().seq, incident);
    }

    #[test]
    fn small_batches_are_joined_into_one_delivery_up_to_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 0).unwrap();
        let (s1, _) = o.append(Kind::Telemetry, 1, b"m f=1 1\n", 1).unwrap();
        let (s2, _) = o.append_incidents(2, b"incident id=1i 2\nincident id=2i 3", 2, 9).unwrap();
        let (s3, _) = o.append(Kind::Telemetry, 1, b"m f=3 4\n", 3).unwrap();
        let c = Cursor::open(&path, "a").unwrap();
        let all = c.next_after(0, i64::MAX, 1 << 20).unwrap().unwrap();
        assert_eq!((all.seq, all.created, all.lines, all.batches), (s3, 1, 4, 3));
        assert_eq!(all.body, b"m f=1 1\nincident id=1i 2\nincident id=2i 3\nm f=3 4\n", "a missing newline is put in");
        assert_eq!(all.bytes, 8 + 33 + 8);
        let upto = c.next_after(0, s2, 1 << 20).unwrap().unwrap();
        assert_eq!((upto.seq, upto.batches), (s2, 2), "nothing past the bound");
        let one = c.next_after(0, i64::MAX, 20).unwrap().unwrap();
        assert_eq!((one.seq, one.batches, one.body.as_slice()), (s1, 1, &b"m f=1 1\n"[..]), "the next does not fit");
        assert_eq!(c.waiting_after(0).unwrap(), (3, 49, s3));
        assert_eq!(c.waiting_after(s2).unwrap(), (1, 8, s3), "counts only what is after");
        assert_eq!(c.oldest_after(s1).unwrap(), Some(2));
    }

    #[test]
    fn expired_telemetry_is_found_by_its_age_across_appends_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 10).unwrap();
        o.append(Kind::Telemetry, 1, b"t1\n", 1).unwrap();
        o.append(Kind::Telemetry, 1, b"t5\n", 5).unwrap();
        let (_, d) = o.append(Kind::Telemetry, 1, b"t20\n", 20).unwrap();
        assert_eq!(d.batches, 2, "both older than 10 go");
        let (_, d) = o.append(Kind::Telemetry, 1, b"t26\n", 26).unwrap();
        assert_eq!(d.batches, 0, "20 is within the limit at 26");
        drop(o);
        // A reopened outbox knows its oldest telemetry from the file.
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 10).unwrap();
        let (_, d) = o.append(Kind::Telemetry, 1, b"t31\n", 31).unwrap();
        assert_eq!(d, Dropped { batches: 1, bytes: 4, incidents: 0 }, "20 expired at 31, 26 did not");
        let (_, d) = o.append(Kind::Telemetry, 1, b"t37\n", 37).unwrap();
        assert_eq!(d.batches, 1, "26 expired at 37");
        assert_eq!(o.depth().unwrap().0, 2);
    }

    const ROOMY: DeadLetterBounds = DeadLetterBounds { max_count: 100, max_bytes: 1 << 20 };

    fn rejected(line: &str) -> Rejected {
        Rejected { status: 400, message: "unable to parse".into(), body: format!("{line}\n").into_bytes() }
    }

    #[test]
    fn rejected_lines_are_parked_with_their_batch_and_the_cursor_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 100).unwrap();
        let (seq, _) = o.append(Kind::Incident, 3, b"x 1\nbad\ny 2\n", 500).unwrap();
        let mut c = Cursor::open(&path, "a").unwrap();
        assert_eq!(c.dead_letter(seq, &[rejected("bad")], ROOMY, 600).unwrap(), 0);
        assert_eq!(c.position().unwrap(), seq);
        assert_eq!(c.dead_letters(10).unwrap(), vec![(seq, 600, 400, "unable to parse".to_string())]);
        let kind: i64 = c.conn.query_row("SELECT kind FROM dead_letters", [], |r| r.get(0)).unwrap();
        assert_eq!(kind, Kind::Incident as i64, "the letter remembers it came from an incident batch");
    }

    #[test]
    fn dead_letters_are_bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, &["a".to_string()], 0, 0).unwrap();
        let mut c = Cursor::open(&path, "a").unwrap();
        let by_count = DeadLetterBounds { max_count: 3, max_bytes: 1 << 20 };
        let mut dropped = 0;
        for i in 0..5 {
            let (seq, _) = o.append(Kind::Telemetry, 1, b"l\n", i).unwrap();
            dropped += c.dead_letter(seq, &[rejected(&format!("bad{i}"))], by_count, i).unwrap();
        }
        assert_eq!(dropped, 2);
        let at: Vec<i64> = c.dead_letters(10).unwrap().into_iter().map(|d| d.1).collect();
        assert_eq!(at, [4, 3, 2], "the two oldest went");
        // Each letter is 5 bytes of line and 15 of message: 45 bytes hold two.
        let by_bytes = DeadLetterBounds { max_count: 100, max_bytes: 45 };
        let (seq, _) = o.append(Kind::Telemetry, 1, b"l\n", 9).unwrap();
        assert_eq!(c.dead_letter(seq, &[rejected("bad9")], by_bytes, 9).unwrap(), 2);
        let at: Vec<i64> = c.dead_letters(10).unwrap().into_iter().map(|d| d.1).collect();
        assert_eq!(at, [9, 4]);
        // Moving on without rejects trims nothing.
        let (seq, _) = o.append(Kind::Telemetry, 1, b"l\n", 10).unwrap();
        assert_eq!(c.dead_letter(seq, &[], DeadLetterBounds { max_count: 1, max_bytes: 1 }, 10).unwrap(), 0);
    }

    #[test]
    fn replay_queues_dead_letters_for_their_target_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let targets = vec!["a".to_string(), "b".to_string()];
        let mut o = Outbox::open(&path, &targets, 0, 0).unwrap();
        let (s1, _) = o.append(Kind::Telemetry, 2, b"ok 1\nbad 1\n", 1).unwrap();
        let (s2, _) = o.append(Kind::Incident, 1, b"incident bad\n", 2).unwrap();
        let mut a = Cursor::open(&path, "a").unwrap();
        let b = Cursor::open(&path, "b").unwrap();
        a.dead_letter(s1, &[rejected("bad 1")], ROOMY, 3).unwrap();
        a.dead_letter(s2, &[rejected("incident bad")], ROOMY, 4).unwrap();
        b.advance(s2).unwrap();
        assert_eq!(o.prune().unwrap(), 2);

        let dry = replay(&path, &targets, true, 5).unwrap();
        assert_eq!(
            dry,
            [
                Replayed { target: "a".into(), letters: 2, lines: 2, bytes: 19, batches: 2 },
                Replayed { target: "b".into(), ..Replayed::default() },
            ]
        );
        assert_eq!(a.dead_letters(10).unwrap().len(), 2, "a dry run changes nothing");
        assert!(a.next_after(s2, i64::MAX, 0).unwrap().is_none());

        assert_eq!(replay(&path, &targets, false, 5).unwrap(), dry);
        assert!(a.dead_letters(10).unwrap().is_empty());
        let r1 = a.next_after(s2, i64::MAX, 0).unwrap().unwrap();
        let r2 = a.next_after(r1.seq, i64::MAX, 0).unwrap().unwrap();
        assert_eq!((r1.body.as_slice(), r1.lines), (&b"bad 1\n"[..], 1));
        assert_eq!(r2.body, b"incident bad\n");
        assert!(b.next_after(s2, i64::MAX, 0).unwrap().is_none(), "b never sees what only a rejected");
        assert_eq!(b.waiting_after(s2).unwrap().0, 0);
        // The replayed incident is still an incident: the age limit does not take it.
        let kinds: Vec<i64> = a
            .conn
            .prepare("SELECT kind FROM batches ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kinds, [Kind::Telemetry as i64, Kind::Incident as i64]);
        // The appending side sees the replayed bytes at its next prune.
        o.prune().unwrap();
        assert_eq!(o.bytes(), 19);
        assert_eq!(dead_letter_counts(&path).unwrap(), vec![]);
    }
}
