//! `history.db`: the series (device, point names), the 1-minute and 1-hour rollup tables, writing
//! deltas, pruning by age and by size, and reading one series back.
//!
//! Rows are keyed by (series, bucket start in ms) in `WITHOUT ROWID` tables, so one point's range is
//! one index walk. A written row is a delta that is added to what the table holds
//! ([`super::rollup::Agg::merge`] in SQL), so a bucket may be written more than once.
//!
//! The size bound is SQLite's `max_page_count`: a write that would grow the file past `max_bytes`
//! fails with `SQLITE_FULL`, the writer removes the oldest day of 1-minute rollups and tries again.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::rollup::{Agg, Res, Row};

/// A history database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot start the history writer: {0}")]
    Thread(std::io::Error),
}

impl HistoryError {
    /// The disk (or the configured bound) is full.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Sql(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL,
    UNIQUE (device, point));
CREATE TABLE IF NOT EXISTS m1 (series INTEGER NOT NULL, t INTEGER NOT NULL, count INTEGER NOT NULL,
    held REAL NOT NULL, sum REAL NOT NULL, energy REAL NOT NULL, vmin REAL, vmax REAL, vlast REAL,
    PRIMARY KEY (series, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS h1 (series INTEGER NOT NULL, t INTEGER NOT NULL, count INTEGER NOT NULL,
    held REAL NOT NULL, sum REAL NOT NULL, energy REAL NOT NULL, vmin REAL, vmax REAL, vlast REAL,
    PRIMARY KEY (series, t)) WITHOUT ROWID;
";

fn upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (series, t, count, held, sum, energy, vmin, vmax, vlast)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (series, t) DO UPDATE SET
           count = count + excluded.count, held = held + excluded.held, sum = sum + excluded.sum,
           energy = energy + excluded.energy,
           vmin = min(coalesce(vmin, excluded.vmin), coalesce(excluded.vmin, vmin)),
           vmax = max(coalesce(vmax, excluded.vmax), coalesce(excluded.vmax, vmax)),
           vlast = coalesce(excluded.vlast, vlast)"
    )
}

fn table(res: Res) -> &'static str {
    match res {
        Res::Minute => "m1",
        Res::Hour => "h1",
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Opens (creating) the database with the size bound, WAL and the schema.
///
/// # Errors
/// The file cannot be opened or its schema created.
pub fn open(path: &Path, max_bytes: u64) -> Result<Connection, HistoryError> {
    let err = |source| HistoryError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(err)?;
    // Trends survive a crash up to the last checkpoint; they are not worth an fsync per commit.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
        .map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    set_bound(&conn, max_bytes).map_err(err)?;
    Ok(conn)
}

/// Bounds the main database file to `max_bytes` (whole pages).
pub fn set_bound(conn: &Connection, max_bytes: u64) -> Result<(), rusqlite::Error> {
    let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages = (max_bytes / page.max(1)).max(1);
    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
}

/// The series id of every `(device, point)`, created as needed, in the order given.
///
/// # Errors
/// A write or read failed.
pub fn series(conn: &mut Connection, names: &[(&str, &str)]) -> Result<Vec<i64>, HistoryError> {
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(names.len());
    {
        let mut insert = tx.prepare("INSERT OR IGNORE INTO series (device, point) VALUES (?1, ?2)")?;
        let mut find = tx.prepare("SELECT id FROM series WHERE device = ?1 AND point = ?2")?;
        for (d, p) in names {
            insert.execute(params![d, p])?;
            out.push(find.query_row(params![d, p], |r| r.get(0))?);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Writes `rows` (deltas) in one transaction; `series` maps a row's point to its series id.
///
/// # Errors
/// The transaction failed and nothing of it was written.
pub fn write(conn: &mut Connection, series: &[i64], rows: &[Row]) -> Result<(), HistoryError> {
    let tx = conn.transaction()?;
    {
        let mut m = tx.prepare_cached(&upsert("m1"))?;
        let mut h = tx.prepare_cached(&upsert("h1"))?;
        for row in rows {
            let Some(&id) = series.get(row.point as usize) else { continue };
            let a = &row.agg;
            let stmt = match row.res {
                Res::Minute => &mut m,
                Res::Hour => &mut h,
            };
            stmt.execute(params![
                id,
                a.t,
                a.count,
                a.held,
                a.sum,
                a.energy,
                finite(a.min),
                finite(a.max),
                finite(a.last),
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The newest minute of a series that kept a last reading: its start (ms) and that reading.
///
/// # Errors
/// The query fails.
pub fn last_reading(conn: &Connection, series: i64) -> Result<Option<(i64, f64)>, HistoryError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT t, vlast FROM m1 WHERE series = ?1 AND vlast IS NOT NULL ORDER BY t DESC LIMIT 1",
            [series],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Removes rollups older than the cutoffs (UTC ms), series by series along the primary key; returns
/// the rows removed.
///
/// # Errors
/// A delete failed.
pub fn prune(conn: &Connection, series: &[i64], minute_cutoff: i64, hour_cutoff: i64) -> Result<u64, HistoryError> {
    let mut removed = 0;
    let mut m = conn.prepare_cached("DELETE FROM m1 WHERE series = ?1 AND t < ?2")?;
    let mut h = conn.prepare_cached("DELETE FROM h1 WHERE series = ?1 AND t < ?2")?;
    for id in series {
        removed += m.execute(params![id, minute_cutoff])? as u64;
        removed += h.execute(params![id, hour_cutoff])? as u64;
    }
    Ok(removed)
}

/// Makes room when the bound is reached: removes the oldest day of 1-minute rollups (the oldest hour
/// when they span less than two days; 1-hour rollups when there are no minutes); returns the rows
/// removed (0: nothing left to remove).
///
/// # Errors
/// A delete failed.
pub fn make_room(conn: &Connection) -> Result<u64, HistoryError> {
    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 24 * HOUR_MS;
    for t in ["m1", "h1"] {
        let (oldest, newest): (Option<i64>, Option<i64>) =
            conn.query_row(&format!("SELECT min(t), max(t) FROM {t}"), [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if let (Some(oldest), Some(newest)) = (oldest, newest) {
            let step = if newest - oldest < 2 * DAY_MS { HOUR_MS } else { DAY_MS };
            let n = conn.execute(&format!("DELETE FROM {t} WHERE t < ?1"), [oldest + step])?;
            if n > 0 {
                return Ok(n as u64);
            }
        }
    }
    Ok(0)
}

/// Bytes the database takes on disk: its pages plus the write-ahead log.
pub fn disk_bytes(conn: &Connection, path: &Path) -> u64 {
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap_or(0);
    let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    pages * page + std::fs::metadata(PathBuf::from(wal)).map(|m| m.len()).unwrap_or(0)
}

/// The buckets of `(device, point)` at `res` with a start in `[from, to)` (UTC ms), oldest first.
///
/// # Errors
/// The database cannot be read.
pub fn read(
    conn: &Connection,
    device: &str,
    point: &str,
    res: Res,
    from: i64,
    to: i64,
) -> Result<Vec<Agg>, HistoryError> {
    let id: Option<i64> = conn
        .query_row("SELECT id FROM series WHERE device = ?1 AND point = ?2", params![device, point], |r| r.get(0))
        .optional()?;
    let Some(id) = id else { return Ok(Vec::new()) };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT t, count, held, sum, energy, vmin, vmax, vlast FROM {} WHERE series = ?1 AND t >= ?2 AND t < ?3 ORDER BY t",
        table(res)
    ))?;
    let rows = stmt.query_map(params![id, from, to], |r| {
        Ok(Agg {
            t: r.get(0)?,
            count: r.get(1)?,
            held: r.get(2)?,
            sum: r.get(3)?,
            energy: r.get(4)?,
            min: r.get::<_, Option<f64>>(5)?.unwrap_or(f64::INFINITY),
            max: r.get::<_, Option<f64>>(6)?.unwrap_or(f64::NEG_INFINITY),
            last: r.get::<_, Option<f64>>(7)?.unwrap_or(f64::NAN),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Opens the database for reading (the API's queries).
///
/// # Errors
/// The file cannot be opened.
pub fn open_read(path: &Path) -> Result<Connection, HistoryError> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| HistoryError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
