//! The rollup math, pure: samples in (with their time), minute and hour aggregates out. No I/O, no
//! clock; the writer thread hands in the time a sweep runs at.
//!
//! # Semantics (the same as the rules' windows, `core/window.rs`)
//!
//! - A reading of good quality with a finite value enters its bucket: `count`, `min`, `max`, `last`.
//! - It is in force from its time until the point's next reading (of any quality) or for at most
//!   [`MAX_HOLD`], whichever comes first; that time (`held`, seconds) is split over the minutes it
//!   covers, with ∫value·dt (`sum`) and, for noise, ∫10^(L/10)·dt (`energy`). So `avg = sum / held`
//!   is the time-weighted mean and `leq = 10·log10(energy / held)` the energy average of limits.md.
//!   A minute the hold reaches without a reading of its own gets a row with `count = 0`.
//! - Readings of other quality, or not finite, never enter; they end the hold of the value before.
//! - Readings older than the point's newest are counted and dropped (the core does the same).
//! - Energy counters ([`Kind::Energy`]) roll up as increments: each good reading adds its increase
//!   over the previous good reading to `sum` (a decrease is a counter reset: the increase is the new
//!   reading itself); `min`/`max` are the smallest and largest single increments, `last` the counter.
//!   The first reading after a start only sets the baseline, unless the last stored counter is at
//!   most [`MAX_HOLD`] old (a restart): then the increment since it counts in the first minute back.
//!   Over a longer outage the increment is not spread into one minute; the stored counters show it.
//!
//! An aggregate is additive ([`Agg::merge`]): the unwritten part of a bucket is written as a delta
//! that the store adds to what it holds, so a bucket written early (a sweep, a stop) and completed
//! later is still exact.

use crate::model::sound;

/// Nanoseconds per millisecond.
const MS: i64 = 1_000_000;
/// Nanoseconds per second.
const S: i64 = 1_000_000_000;
/// One minute in ms.
pub const MINUTE_MS: i64 = 60_000;
/// One hour in ms.
pub const HOUR_MS: i64 = 3_600_000;
/// How long a reading is in force without a later one (ns): as in the rules' windows.
pub const MAX_HOLD: i64 = crate::model::MAX_HOLD_NS;

/// How a point rolls up, from its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Time-weighted mean, min, max, count, last.
    Level,
    /// A sound level in dB(A): a level that also keeps the energy average (Leq).
    Noise,
    /// A cumulative energy counter: increments per bucket.
    Energy,
}

impl Kind {
    /// The kind of a point with this unit.
    pub fn of_unit(unit: &str) -> Self {
        match unit.trim() {
            "dB(A)" | "dBA" => Self::Noise,
            u if ["Wh", "kWh", "MWh", "varh", "kvarh", "kVArh", "Mvarh"].contains(&u) => Self::Energy,
            _ => Self::Level,
        }
    }
}

/// Resolution of a rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    Minute,
    Hour,
}

impl Res {
    /// Bucket length in ms.
    pub fn ms(self) -> i64 {
        match self {
            Self::Minute => MINUTE_MS,
            Self::Hour => HOUR_MS,
        }
    }

    /// `"1m"` or `"1h"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "1m",
            Self::Hour => "1h",
        }
    }
}

/// The aggregate of one bucket, or of a part of it not yet written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    /// Bucket start, UTC ms.
    pub t: i64,
    /// Good readings in the bucket.
    pub count: u32,
    /// Seconds a good value was in force in the bucket (0 for energy counters).
    pub held: f64,
    /// ∫ value dt over the bucket; for energy counters, the sum of increments.
    pub sum: f64,
    /// ∫ 10^(L/10) dt over the bucket (noise only).
    pub energy: f64,
    /// Smallest reading (energy: increment); +∞ when there is none.
    pub min: f64,
    /// Largest reading (energy: increment); −∞ when there is none.
    pub max: f64,
    /// Last reading (energy: the counter); NaN when there is none.
    pub last: f64,
}

impl Agg {
    /// Nothing yet in the bucket starting at `t` (ms).
    pub fn empty(t: i64) -> Self {
        Self {
            t,
            count: 0,
            held: 0.0,
            sum: 0.0,
            energy: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: f64::NAN,
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.held == 0.0 && self.sum == 0.0
    }

    /// Adds `later`, which covers time after what `self` holds.
    pub fn merge(&mut self, later: &Self) {
        self.count += later.count;
        self.held += later.held;
        self.sum += later.sum;
        self.energy += later.energy;
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        if !later.last.is_nan() {
            self.last = later.last;
        }
    }

    /// Time-weighted mean (levels, noise) or the bucket's delta (energy counters).
    pub fn avg(&self, kind: Kind) -> Option<f64> {
        match kind {
            Kind::Energy => Some(self.sum),
            _ if self.held > 0.0 => Some(self.sum / self.held),
            _ => None,
        }
    }

    /// Leq over the bucket (noise points with covered time).
    pub fn leq(&self, kind: Kind) -> Option<f64> {
        (kind == Kind::Noise && self.held > 0.0).then(|| sound::level(self.energy / self.held))
    }

    fn hold(&mut self, secs: f64, v: f64, noise: bool) {
        self.held += secs;
        self.sum += v * secs;
        if noise {
            self.energy += sound::energy(v) * secs;
        }
    }

    fn reading(&mut self, v: f64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }
}

/// Leq over several buckets (a day or night period), from their stored aggregates: exact, since each
/// bucket keeps its sound energy and covered time, not just its Leq.
pub fn leq_over<'a>(buckets: impl IntoIterator<Item = &'a Agg>) -> Option<f64> {
    let (e, h) = buckets.into_iter().fold((0.0, 0.0), |(e, h), b| (e + b.energy, h + b.held));
    (h > 0.0).then(|| sound::level(e / h))
}

/// One aggregate to write: the point (index into the registry), resolution and the delta.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub point: u32,
    pub res: Res,
    pub agg: Agg,
}

#[derive(Debug, Clone)]
struct PointRoll {
    kind: Kind,
    newest: i64,
    /// The good reading in force (ns, value).
    open: Option<(i64, f64)>,
    /// Energy: the previous good counter reading.
    baseline: Option<f64>,
    minute: Agg,
    hour: Agg,
}

/// What a push did not take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub bad: u64,
    pub out_of_order: u64,
}

/// The rolling state of every point, and the rows ready to write.
#[derive(Debug, Clone)]
pub struct Roller {
    points: Vec<PointRoll>,
    /// Rows ready to write, oldest first per point.
    pub rows: Vec<Row>,
}

fn minute_of(ns: i64) -> i64 {
    ns.div_euclid(MINUTE_MS * MS) * MINUTE_MS
}

impl Roller {
    /// A roller for points of these kinds (indexed like the registry's points).
    pub fn new(kinds: impl IntoIterator<Item = Kind>) -> Self {
        let mut r = Self { points: Vec::new(), rows: Vec::new() };
        r.extend(kinds);
        r
    }

    /// Adds points (of a reload or a provisioned device) after the ones it has.
    pub fn extend(&mut self, kinds: impl IntoIterator<Item = Kind>) {
        self.points.extend(kinds.into_iter().map(|kind| PointRoll {
            kind,
            newest: i64::MIN,
            open: None,
            baseline: None,
            minute: Agg::empty(i64::MIN),
            hour: Agg::empty(i64::MIN),
        }));
    }

    /// Continues an energy counter from its last stored reading, so the consumption between the
    /// last reading before a restart and the first after it is not lost.
    pub fn resume_counter(&mut self, point: u32, counter: f64) {
        if let Some(p) = self.points.get_mut(point as usize).filter(|p| p.kind == Kind::Energy) {
            p.baseline = Some(counter);
        }
    }

    /// The kind of point `point`.
    pub fn kind(&self, point: u32) -> Option<Kind> {
        self.points.get(point as usize).map(|p| p.kind)
    }

    /// Takes one reading at `ts` (UTC ns).
    pub fn push(&mut self, point: u32, ts: i64, value: f64, good: bool, skipped: &mut Skipped) {
        let Some(p) = self.points.get_mut(point as usize) else { return };
        if ts < p.newest {
            skipped.out_of_order += 1;
            return;
        }
        p.newest = ts;
        let valid = good && value.is_finite();
        if !valid {
            skipped.bad += 1;
        }
        match p.kind {
            Kind::Energy => {
                if !valid {
                    return;
                }
                let inc = p.baseline.map(|b| if value >= b { value - b } else { value });
                p.baseline = Some(value);
                let acc = bucket(p, point, minute_of(ts), &mut self.rows);
                acc.count += 1;
                acc.last = value;
                if let Some(inc) = inc {
                    acc.sum += inc;
                    acc.min = acc.min.min(inc);
                    acc.max = acc.max.max(inc);
                }
            }
            Kind::Level | Kind::Noise => {
                if let Some((t0, v0)) = p.open.take() {
                    hold(p, point, t0, ts.min(t0.saturating_add(MAX_HOLD)), v0, &mut self.rows);
                }
                if !valid {
                    return;
                }
                bucket(p, point, minute_of(ts), &mut self.rows).reading(value);
                p.open = Some((ts, value));
            }
        }
    }

    /// At `now` (UTC ns): holds that reached [`MAX_HOLD`] are credited in full, and minutes that
    /// ended `grace` ns ago or earlier are handed out as rows.
    pub fn sweep(&mut self, now: i64, grace: i64) {
        for (i, p) in self.points.iter_mut().enumerate() {
            if let Some((t0, v0)) = p.open {
                let end = t0.saturating_add(MAX_HOLD);
                if now >= end {
                    p.open = None;
                    hold(p, i as u32, t0, end, v0, &mut self.rows);
                }
            }
            if !p.minute.is_empty() && (p.minute.t + MINUTE_MS) * MS + grace <= now {
                close_minute(p, i as u32, &mut self.rows);
            }
        }
    }

    /// Hands out what every hour holds so far (it is written as a delta and completed later).
    pub fn flush_hours(&mut self) {
        for (i, p) in self.points.iter_mut().enumerate() {
            if !p.hour.is_empty() {
                self.rows.push(Row { point: i as u32, res: Res::Hour, agg: p.hour });
                p.hour = Agg::empty(p.hour.t);
            }
        }
    }

    /// Hands out everything held (at a stop): open minutes and hours as they are.
    pub fn flush_all(&mut self) {
        for (i, p) in self.points.iter_mut().enumerate() {
            if !p.minute.is_empty() {
                close_minute(p, i as u32, &mut self.rows);
            }
        }
        self.flush_hours();
    }
}

/// Credits the hold of `v` over `[from, to)` (ns) to the minutes it covers.
fn hold(p: &mut PointRoll, point: u32, from: i64, to: i64, v: f64, rows: &mut Vec<Row>) {
    let noise = p.kind == Kind::Noise;
    let mut a = from;
    while a < to {
        let m = minute_of(a);
        let z = to.min((m + MINUTE_MS) * MS);
        bucket(p, point, m, rows).hold((z - a) as f64 / S as f64, v, noise);
        a = z;
    }
}

/// The point's accumulator for minute `m` (ms), closing the one it held before.
fn bucket<'a>(p: &'a mut PointRoll, point: u32, m: i64, rows: &mut Vec<Row>) -> &'a mut Agg {
    if p.minute.t != m {
        if !p.minute.is_empty() {
            close_minute(p, point, rows);
        }
        p.minute = Agg::empty(m);
    }
    &mut p.minute
}

fn close_minute(p: &mut PointRoll, point: u32, rows: &mut Vec<Row>) {
    let m = p.minute;
    rows.push(Row { point, res: Res::Minute, agg: m });
    let h = m.t.div_euclid(HOUR_MS) * HOUR_MS;
    if p.hour.t != h {
        if !p.hour.is_empty() {
            rows.push(Row { point, res: Res::Hour, agg: p.hour });
        }
        p.hour = Agg::empty(h);
    }
    p.hour.merge(&m);
    p.minute = Agg::empty(m.t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sound::leq as leq_of;

    const T0: i64 = 1_764_547_200 * S; // 2025-12-01T00:00:00Z

    fn roll(kind: Kind, readings: &[(i64, f64, bool)], sweep_at: Option<i64>) -> (Vec<Row>, Skipped) {
        let mut r = Roller::new([kind]);
        let mut sk = Skipped::default();
        for &(ts, v, good) in readings {
            r.push(0, ts, v, good, &mut sk);
        }
        if let Some(now) = sweep_at {
            r.sweep(now, 0);
        }
        r.flush_all();
        (r.rows, sk)
    }

    fn minutes(rows: &[Row]) -> Vec<Agg> {
        let mut out: Vec<Agg> = Vec::new();
        for row in rows.iter().filter(|r| r.res == Res::Minute) {
            match out.iter_mut().find(|a| a.t == row.agg.t) {
                Some(a) => a.merge(&row.agg),
                None => out.push(row.agg),
            }
        }
        out.sort_by_key(|a| a.t);
        out
    }

    #[test]
    fn leq_matches_the_checks_of_limits_md() {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        assert_eq!(leq_of(&[50.0, 60.0]).map(r), Some(57.40));
        assert_eq!(leq_of(&[60.0, 60.0, 60.0]).map(r), Some(60.00));
        assert_eq!(leq_of(&[40.0, 70.0]).map(r), Some(66.99));
        // The same through the time-weighted rollup: each level held for one second.
        let (rows, _) = roll(Kind::Noise, &[(T0, 50.0, true), (T0 + S, 60.0, true), (T0 + 2 * S, 0.0, false)], None);
        let m = minutes(&rows);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].leq(Kind::Noise).map(r), Some(57.40));
        assert_eq!(m[0].avg(Kind::Noise), Some(55.0), "the arithmetic mean is not the Leq");
    }

    #[test]
    fn avg_is_time_weighted_and_holds_carry_into_the_next_minute() {
        // 10 at :00 for 50 s, 20 at :50 until 1:10 (carrying 10 s into the second minute), 40 at 1:10.
        let rs = [(T0, 10.0, true), (T0 + 50 * S, 20.0, true), (T0 + 70 * S, 40.0, true), (T0 + 80 * S, 0.0, false)];
        let (rows, sk) = roll(Kind::Level, &rs, None);
        assert_eq!(sk, Skipped { bad: 1, out_of_order: 0 });
        let m = minutes(&rows);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].count, m[0].held, m[0].min, m[0].max, m[0].last), (2, 60.0, 10.0, 20.0, 20.0));
        assert_eq!(m[0].avg(Kind::Level), Some((10.0 * 50.0 + 20.0 * 10.0) / 60.0));
        // Minute 2: 20 for 10 s (carried), 40 for 10 s, then the bad reading ends the hold.
        assert_eq!((m[1].count, m[1].held, m[1].last), (1, 20.0, 40.0));
        assert_eq!(m[1].avg(Kind::Level), Some(30.0));
    }

    #[test]
    fn a_silent_point_holds_for_fifteen_minutes_then_stops() {
        let (rows, _) = roll(Kind::Level, &[(T0 + 30 * S, 5.0, true)], Some(T0 + 3_600 * S));
        let m = minutes(&rows);
        // 30 s in the first minute, then 14 full minutes, then 30 s: 16 rows, only the first counted.
        assert_eq!(m.len(), 16);
        assert_eq!(m.iter().map(|a| a.held).sum::<f64>(), 900.0);
        assert_eq!(m[0].count, 1);
        assert!(m[1..].iter().all(|a| a.count == 0 && a.avg(Kind::Level) == Some(5.0) && a.last.is_nan()));
    }

    #[test]
    fn bad_and_late_readings_never_enter() {
        let rs = [(T0, 1.0, true), (T0 + S, 100.0, false), (T0 + 2 * S, f64::NAN, true), (T0 + S / 2, 7.0, true)];
        let (rows, sk) = roll(Kind::Level, &rs, None);
        assert_eq!(sk, Skipped { bad: 2, out_of_order: 1 });
        let m = minutes(&rows);
        assert_eq!((m[0].count, m[0].held, m[0].max), (1, 1.0, 1.0), "held until the bad reading");
    }

    #[test]
    fn energy_counters_roll_up_as_deltas_across_a_reset() {
        // 100 → 101.5 → 103 (minute 1), reset to 0.5 → 2 (minute 2).
        let rs = [(T0, 100.0, true), (T0 + 20 * S, 101.5, true), (T0 + 40 * S, 103.0, true), (T0 + 60 * S, 0.5, true)];
        let mut rs = rs.to_vec();
        rs.push((T0 + 61 * S, 2.0, false));
        rs.push((T0 + 80 * S, 2.0, true));
        let (rows, _) = roll(Kind::Energy, &rs, None);
        let m = minutes(&rows);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].avg(Kind::Energy), m[0].min, m[0].max, m[0].last, m[0].count),
            (Some(3.0), 1.5, 1.5, 103.0, 3)
        );
        assert_eq!((m[1].avg(Kind::Energy), m[1].min, m[1].max, m[1].last), (Some(2.0), 0.5, 1.5, 2.0));
        let h: Vec<&Row> = rows.iter().filter(|r| r.res == Res::Hour).collect();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].agg.sum, h[0].agg.count, h[0].agg.last), (5.0, 5, 2.0));
    }

    #[test]
    fn partial_writes_add_up_to_the_whole() {
        let mut r = Roller::new([Kind::Noise]);
        let mut sk = Skipped::default();
        r.push(0, T0, 50.0, true, &mut sk);
        r.push(0, T0 + 30 * S, 70.0, true, &mut sk);
        // A sweep after the minute ended hands it out without the hold of 70 beyond 0:30's reading…
        r.sweep(T0 + 61 * S, 0);
        r.flush_hours();
        let early = r.rows.len();
        assert!(early >= 2);
        // …which the next reading completes as a delta of the same minute.
        r.push(0, T0 + 90 * S, 40.0, true, &mut sk);
        r.flush_all();
        let m = minutes(&r.rows);
        assert_eq!(m[0].held, 60.0);
        assert!((m[0].leq(Kind::Noise).unwrap() - leq_of(&[50.0, 70.0]).unwrap()).abs() < 1e-12);
        assert_eq!(m[1].held, 30.0);
        let hour = r.rows.iter().filter(|x| x.res == Res::Hour).fold(Agg::empty(0), |mut a, x| {
            a.merge(&x.agg);
            a
        });
        assert_eq!((hour.count, hour.held), (3, 90.0));
    }

    #[test]
    fn kinds_follow_units() {
        assert_eq!(Kind::of_unit("dB(A)"), Kind::Noise);
        assert_eq!(Kind::of_unit("kWh"), Kind::Energy);
        assert_eq!(Kind::of_unit("V"), Kind::Level);
        assert_eq!(MAX_HOLD, crate::core::window::MAX_HOLD);
    }
}
