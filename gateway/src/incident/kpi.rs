//! What a grid supervisor answers for, computed from the incident database: open incidents, time to
//! acknowledge and to close, alarm rates against the ISA-18.2 targets, the most frequent (chattering)
//! and the standing alarms.
//!
//! Read on a connection of its own (WAL lets it read beside the writer), grouped by grid in SQL so a
//! scrape of every grid costs a handful of indexed queries whatever the number of incidents; the
//! only rows brought into memory are one duration per acknowledged or closed incident of the window.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;

use super::StoreError;

/// ISA-18.2: about 6 alarms an hour per operator on average is very likely acceptable.
pub const TARGET_PER_HOUR: f64 = 6.0;
/// ISA-18.2: more than 10 alarms in any 10 minutes is a flood.
pub const FLOOD_PER_10MIN: u64 = 10;
/// An alarm active this long is a standing alarm (ISA-18.2 uses 24 hours).
pub const STANDING_NS: i64 = 86_400 * 1_000_000_000;
/// Most chattering and standing alarms listed per grid.
pub const LISTED: usize = 5;
const MINUTE_NS: i64 = 60 * 1_000_000_000;

/// Median and 90th percentile of durations, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Spread {
    pub count: usize,
    pub median: Option<f64>,
    pub p90: Option<f64>,
}

impl Spread {
    /// The spread of `secs` (nearest-rank percentiles, as a supervisor would count them by hand).
    pub fn of(mut secs: Vec<f64>) -> Self {
        secs.sort_by(f64::total_cmp);
        let rank = |q: f64| -> Option<f64> {
            if secs.is_empty() {
                return None;
            }
            let k = ((q * secs.len() as f64).ceil() as usize).clamp(1, secs.len());
            Some(secs[k - 1])
        };
        Self { count: secs.len(), median: rank(0.5), p90: rank(0.9) }
    }
}

/// Incidents not back to normal.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Open {
    pub total: u64,
    /// Waiting for someone to acknowledge them.
    pub unacked: u64,
    pub by_severity: BTreeMap<String, u64>,
}

/// Annunciations (raised and reactivated) in the window against the ISA-18.2 targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rate {
    pub count: u64,
    pub per_hour: f64,
    /// The most annunciations in any 10 consecutive minutes of the window.
    pub max_per_10min: u64,
    pub target_per_hour: f64,
    pub target_per_10min: u64,
    /// Average within target and no flood.
    pub ok: bool,
}

/// An alarm that came back again and again in the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frequent {
    pub rule: String,
    pub device: String,
    /// Annunciations in the window.
    pub count: u64,
    /// The engine marked it chattering (fast raise and return).
    pub chattering: bool,
}

/// An alarm active for a day or more.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standing {
    pub id: i64,
    pub rule: String,
    pub device: String,
    pub title: String,
    pub severity: String,
    /// Raised, UTC ns.
    pub since: i64,
    pub age_s: i64,
}

/// Everything a grid's supervisor is measured by over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GridKpis {
    pub open: Open,
    /// Raised → acknowledged, for acknowledgements in the window.
    pub ack_time_s: Spread,
    /// Raised → closed, for incidents closed in the window.
    pub close_time_s: Spread,
    pub alarm_rate: Rate,
    /// Most frequent alarms of the window (at most [`LISTED`], twice or more).
    pub chattering: Vec<Frequent>,
    /// Oldest standing alarms (at most [`LISTED`]).
    pub standing: Vec<Standing>,
    /// Standing alarms in all.
    pub standing_total: u64,
}

/// The largest sum of counts over 10 consecutive minutes; `per_minute` is sorted by minute.
fn busiest_ten_minutes(per_minute: &[(i64, u64)]) -> u64 {
    let (mut best, mut sum, mut start) = (0, 0, 0);
    for &(minute, n) in per_minute {
        sum += n;
        while per_minute[start].0 <= minute - 10 {
            sum -= per_minute[start].1;
            start += 1;
        }
        best = best.max(sum);
    }
    best
}

/// Opens the incident database at `path` for reading.
///
/// # Errors
/// The file cannot be opened.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// An incident as a report links it: id, rule, raised and returned (or closed) times (UTC ns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    pub id: i64,
    pub rule: String,
    pub raised_at: i64,
    pub ended_at: Option<i64>,
}

/// The incidents of `device`'s `point` in `category` that were active at some time in `[from, to)`
/// (UTC ns), oldest first.
///
/// # Errors
/// A database error.
pub fn active_between(
    conn: &Connection,
    device: &str,
    point: &str,
    category: &str,
    from: i64,
    to: i64,
) -> Result<Vec<Linked>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, rule, raised_at, COALESCE(returned_at, closed_at) FROM incidents
         WHERE device = ?1 AND point = ?2 AND category = ?3 AND raised_at < ?5
           AND COALESCE(returned_at, closed_at, ?5) >= ?4
         ORDER BY raised_at, id",
    )?;
    let rows = stmt.query_map(rusqlite::params![device, point, category, from, to], |r| {
        Ok(Linked { id: r.get(0)?, rule: r.get(1)?, raised_at: r.get(2)?, ended_at: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The KPIs of `grids` (every grid with incidents when empty) for the window `[from, to)` (UTC ns).
///
/// # Errors
/// A database error.
pub fn compute(
    conn: &Connection,
    grids: &[String],
    from: i64,
    to: i64,
) -> Result<BTreeMap<String, GridKpis>, StoreError> {
    let mut out: BTreeMap<String, GridKpis> = grids.iter().map(|g| (g.clone(), GridKpis::default())).collect();
    // The grids travel as a JSON array (NULL: all), so the filter is part of every query and a
    // supervisor's page reads its own grid's rows only.
    let only = (!grids.is_empty()).then(|| serde_json::Value::from(grids.to_vec()).to_string());

    let mut stmt = conn.prepare_cached(
        "SELECT grid, severity, state IN ('active_unacked', 'returned_unacked'), COUNT(*) FROM incidents
         WHERE state != 'normal' AND (?1 IS NULL OR grid IN (SELECT value FROM json_each(?1)))
         GROUP BY grid, severity, 3",
    )?;
    let rows = stmt.query_map([&only], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?, r.get::<_, u64>(3)?))
    })?;
    for row in rows {
        let (g, severity, unacked, n) = row?;
        let k = out.entry(g).or_default();
        k.open.total += n;
        if unacked {
            k.open.unacked += n;
        }
        *k.open.by_severity.entry(severity).or_insert(0) += n;
    }

    for (column, ack) in [("acked_at", true), ("closed_at", false)] {
        let sql = format!(
            "SELECT grid, {column} - raised_at FROM incidents WHERE {column} >= ?1 AND {column} < ?2
             AND {column} >= raised_at AND (?3 IS NULL OR grid IN (SELECT value FROM json_each(?3)))"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![from, to, only], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for row in rows {
            let (g, ns) = row?;
            per.entry(g).or_default().push(ns as f64 / 1e9);
        }
        for (g, secs) in per {
            let k = out.entry(g).or_default();
            if ack {
                k.ack_time_s = Spread::of(secs);
            } else {
                k.close_time_s = Spread::of(secs);
            }
        }
    }

    let hours = ((to - from) as f64 / 3.6e12).max(1.0 / 60.0);
    // Counted per minute, then summed over every 10 consecutive minutes: "any 10 minutes" to the
    // minute, with at most one row per grid and minute in memory whatever the storm.
    let mut stmt = conn.prepare_cached(
        "SELECT i.grid, e.at / ?3, COUNT(*) FROM incident_events e JOIN incidents i ON i.id = e.incident
         WHERE e.kind IN ('raised', 'reactivated') AND e.at >= ?1 AND e.at < ?2
           AND (?4 IS NULL OR i.grid IN (SELECT value FROM json_each(?4)))
         GROUP BY i.grid, 2 ORDER BY i.grid, 2",
    )?;
    let rows = stmt.query_map(params![from, to, MINUTE_NS, only], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, u64>(2)?))
    })?;
    let mut minutes: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for row in rows {
        let (g, minute, n) = row?;
        minutes.entry(g).or_default().push((minute, n));
    }
    for (g, per_minute) in minutes {
        let k = out.entry(g).or_default();
        k.alarm_rate.count = per_minute.iter().map(|(_, n)| n).sum();
        k.alarm_rate.max_per_10min = busiest_ten_minutes(&per_minute);
    }
    for k in out.values_mut() {
        let r = &mut k.alarm_rate;
        r.per_hour = r.count as f64 / hours;
        r.target_per_hour = TARGET_PER_HOUR;
        r.target_per_10min = FLOOD_PER_10MIN;
        r.ok = r.per_hour <= TARGET_PER_HOUR && r.max_per_10min <= FLOOD_PER_10MIN;
    }

    let mut stmt = conn.prepare_cached(
        "SELECT i.grid, i.rule, i.device, COUNT(*) AS n, MAX(i.chattering) FROM incident_events e
         JOIN incidents i ON i.id = e.incident
         WHERE e.kind IN ('raised', 'reactivated') AND e.at >= ?1 AND e.at < ?2
           AND (?3 IS NULL OR i.grid IN (SELECT value FROM json_each(?3)))
         GROUP BY i.grid, i.rule, i.device HAVING n >= 2 ORDER BY i.grid, n DESC, i.rule, i.device",
    )?;
    let rows = stmt.query_map(params![from, to, only], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u64>(3)?,
            r.get::<_, bool>(4)?,
        ))
    })?;
    for row in rows {
        let (g, rule, device, count, chattering) = row?;
        let k = out.entry(g).or_default();
        if k.chattering.len() < LISTED {
            k.chattering.push(Frequent { rule, device, count, chattering });
        }
    }

    let mut stmt = conn.prepare_cached(
        "SELECT id, grid, rule, device, title, severity, raised_at FROM incidents
         WHERE state IN ('active_unacked', 'active_acked') AND raised_at <= ?1
           AND (?2 IS NULL OR grid IN (SELECT value FROM json_each(?2)))
         ORDER BY grid, raised_at, id",
    )?;
    let rows = stmt.query_map(params![to - STANDING_NS, only], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    for row in rows {
        let (id, g, rule, device, title, severity, since) = row?;
        let k = out.entry(g).or_default();
        k.standing_total += 1;
        if k.standing.len() < LISTED {
            k.standing.push(Standing { id, rule, device, title, severity, since, age_s: (to - since) / 1_000_000_000 });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_780_000_000 * S;

    /// An incident of `grid` raised at `raised` s after T0, with its annunciations (s after T0).
    #[allow(clippy::too_many_arguments)]
    fn incident(
        conn: &Connection,
        id: i64,
        grid: &str,
        rule: &str,
        severity: &str,
        state: &str,
        raised: i64,
        acked: Option<i64>,
        closed: Option<i64>,
        annunciations: &[i64],
    ) {
        conn.execute(
            "INSERT INTO incidents(id, rule, title, category, severity, state, device, grid, point, message, plan,
                 raised_at, updated_at, acked_at, closed_at, chattering)
             VALUES (?1, ?2, ?2, 'electrical', ?3, ?4, 'm1', ?5, 'ir', '', '', ?6, ?6, ?7, ?8, ?9)",
            params![
                id,
                rule,
                severity,
                state,
                grid,
                T0 + raised * S,
                acked.map(|a| T0 + a * S),
                closed.map(|c| T0 + c * S),
                annunciations.len() > 3
            ],
        )
        .unwrap();
        for (n, a) in annunciations.iter().enumerate() {
            conn.execute(
                "INSERT INTO incident_events(incident, at, kind) VALUES (?1, ?2, ?3)",
                params![id, T0 + a * S, if n == 0 { "raised" } else { "reactivated" }],
            )
            .unwrap();
        }
    }

    #[test]
    fn kpis_match_the_table_worked_by_hand() {
        let conn = Connection::open_in_memory().unwrap();
        super::super::schema(&conn).unwrap();
        // Window: the hour [T0, T0 + 3600 s).
        // g1: #1 acked after 60 s, closed after 300 s; #2 acked after 120 s, still active;
        //     #3 unacked, chattering: 12 annunciations within the first 10 minutes; #4 acked after 30 s.
        incident(&conn, 1, "g1", "r.a", "major", "normal", 0, Some(60), Some(300), &[0]);
        incident(&conn, 2, "g1", "r.b", "critical", "active_acked", 100, Some(220), None, &[100]);
        let chatter: Vec<i64> = (0..12).map(|k| 10 + k * 40).collect();
        incident(&conn, 3, "g1", "r.c", "minor", "active_unacked", 10, None, None, &chatter);
        incident(&conn, 4, "g1", "r.d", "minor", "returned_unacked", 1000, Some(1030), None, &[1000]);
        // g1 standing: raised two days before the window's end, still active.
        incident(&conn, 5, "g1", "r.e", "major", "active_unacked", -2 * 86_400, None, None, &[-2 * 86_400]);
        // g2: one calm incident; a g3 incident before the window counts only as open.
        incident(&conn, 6, "g2", "r.a", "minor", "normal", 2000, Some(2400), Some(2500), &[2000]);
        incident(&conn, 7, "g3", "r.a", "minor", "active_unacked", -100, None, None, &[-100]);

        let all = compute(&conn, &[], T0, T0 + 3600 * S).unwrap();
        let g1 = &all["g1"];
        // Open: #2, #3, #4, #5; unacked #3, #4 (returned_unacked), #5.
        assert_eq!(g1.open.total, 4);
        assert_eq!(g1.open.unacked, 3);
        assert_eq!(g1.open.by_severity, [("critical".into(), 1), ("major".into(), 1), ("minor".into(), 2)].into());
        // Ack times 60, 120, 30 s: median (nearest rank 2 of 3) 60, p90 (rank 3) 120.
        assert_eq!(g1.ack_time_s, Spread { count: 3, median: Some(60.0), p90: Some(120.0) });
        assert_eq!(g1.close_time_s, Spread { count: 1, median: Some(300.0), p90: Some(300.0) });
        // Annunciations in the hour: #1 1, #2 1, #3 12, #4 1 = 15; the first 10 minutes hold #1, #2, and
        // #3's 12 at 10..450 s = 14, a flood (T0 is 40 s into a minute: they span minutes 0..8).
        assert_eq!(g1.alarm_rate.count, 15);
        assert_eq!(g1.alarm_rate.per_hour, 15.0);
        assert_eq!(g1.alarm_rate.max_per_10min, 14);
        assert!(!g1.alarm_rate.ok);
        assert_eq!(g1.chattering, [Frequent { rule: "r.c".into(), device: "m1".into(), count: 12, chattering: true }]);
        assert_eq!(g1.standing_total, 1);
        assert_eq!(g1.standing[0].id, 5);
        assert_eq!(g1.standing[0].age_s, 2 * 86_400 + 3600);

        let g2 = &all["g2"];
        assert_eq!(g2.open.total, 0);
        assert_eq!(g2.ack_time_s.median, Some(400.0));
        assert_eq!((g2.alarm_rate.count, g2.alarm_rate.ok), (1, true));
        assert_eq!(all["g3"].open.total, 1);
        assert_eq!(all["g3"].alarm_rate.count, 0);

        // Asking for one grid answers that grid only, also when it has nothing.
        let one = compute(&conn, &["g2".into(), "g9".into()], T0, T0 + 3600 * S).unwrap();
        assert_eq!(one.keys().collect::<Vec<_>>(), ["g2", "g9"]);
        assert_eq!(one["g9"].alarm_rate.target_per_hour, TARGET_PER_HOUR);
        assert!(one["g9"].ack_time_s.median.is_none());
    }

    #[test]
    fn the_busiest_ten_minutes_slide_minute_by_minute() {
        assert_eq!(busiest_ten_minutes(&[]), 0);
        // 5 at minute 3 and 6 at minute 12 share minutes 3..12; minute 13 drops minute 3.
        assert_eq!(busiest_ten_minutes(&[(3, 5), (12, 6), (13, 4)]), 11);
        assert_eq!(busiest_ten_minutes(&[(3, 5), (13, 6), (14, 4)]), 10);
        assert_eq!(busiest_ten_minutes(&[(0, 11)]), 11);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Spread::of((1..=10).map(f64::from).collect());
        assert_eq!((s.median, s.p90), (Some(5.0), Some(9.0)));
        assert_eq!(Spread::of(vec![]), Spread::default());
    }
}
