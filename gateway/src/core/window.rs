//! The history of one point that window rules read: a fixed ring of time buckets per point, and the
//! aggregates rules compute over it. Memory per point is fixed by the span the rules ask for and the
//! bucket resolution, never by how fast the point reports.
//!
//! # Buckets
//!
//! A bucket covers `[k·res, (k+1)·res)` of UTC time and keeps the sample count, sum, min, max, first
//! and last sample of the valid samples that fell in it, and three time integrals: the seconds a valid
//! value was in force there, ∫value·dt and ∫10^(value/10)·dt (sound energy, for Leq). A valid sample
//! is in force from its time until the next sample of the point (of any quality) or for at most
//! [`MAX_HOLD`], whichever comes first: a point that goes silent stops covering time.
//!
//! Resolution: spans up to 10 minutes are answered from a ring of 1 s buckets; a window whose rules
//! ask for more also keeps a ring of 1 minute buckets for longer spans and the calendar helpers. A
//! window of 24 h or more keeps the whole previous local calendar day in that ring too (48 h + 2 h:
//! 3,002 buckets of 96 bytes, plus 602 one-second buckets; about 346 KB per point, at 1 Hz or 100 Hz
//! alike, see the test `memory_is_fixed_by_the_span_not_the_rate`), so the calendar helpers can judge
//! yesterday from any time today. `rules.window_samples` caps the buckets of each ring: a ring that
//! would need more uses a coarser resolution (10 s, 1 min, 5 min, 15 min, 1 h), so memory stays
//! bounded whatever span a rule declares.
//!
//! # Exactness
//!
//! A span ending at `now` starts at `now − span` rounded down to a bucket boundary: it reaches back at
//! most one bucket further than asked. With the span start on a bucket boundary the aggregates are
//! exact: samples in `[start, now]`, time integrals over `[start, now)`.
//!
//! # Validity
//!
//! Samples whose quality is not good, or whose value is not finite, never enter a bucket and cover no
//! time; they also end the hold of the value before them, since the instrument no longer vouches for it.

/// Nanoseconds per second.
const S: i64 = 1_000_000_000;
/// Nanoseconds per hour.
const HOUR: i64 = 3_600 * S;
/// Nanoseconds per day.
const DAY: i64 = 24 * HOUR;

/// How long a valid sample covers time when no later sample follows: longer gaps are missing data.
pub const MAX_HOLD: i64 = crate::model::MAX_HOLD_NS;

/// Aggregates a rule can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Time-weighted mean: each value weighted by how long it was in force.
    Avg,
    /// Smallest sample.
    Min,
    /// Largest sample.
    Max,
    /// Number of valid samples.
    Count,
    /// Last value minus the value in force at the span's start.
    Delta,
    /// Delta per second.
    Rate,
    /// Time-weighted energy average of sound levels: 10·log10(mean(10^(L/10))).
    Leq,
}

impl Agg {
    /// Parses the helper name used in rules.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            "count" => Self::Count,
            "delta" => Self::Delta,
            "rate" => Self::Rate,
            "leq" => Self::Leq,
            _ => return None,
        })
    }
}

/// What one time bucket knows about the valid samples of its interval.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bucket number (start / resolution); `i64::MIN` while unused.
    k: i64,
    count: u32,
    sum: f64,
    /// Seconds a valid value was in force inside the bucket.
    held: f64,
    /// ∫ value dt (value · s).
    tw_sum: f64,
    /// ∫ 10^(value/10) dt.
    tw_energy: f64,
    min: f64,
    max: f64,
    first: (i64, f64),
    last: (i64, f64),
}

impl Bucket {
    const EMPTY: Self = Self {
        k: i64::MIN,
        count: 0,
        sum: 0.0,
        held: 0.0,
        tw_sum: 0.0,
        tw_energy: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        first: (0, f64::NAN),
        last: (0, f64::NAN),
    };
}

/// Combined statistics of an interval.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Valid samples in the interval.
    pub count: u64,
    /// Sum of their values.
    pub sum: f64,
    /// Seconds covered by valid values.
    pub held: f64,
    /// ∫ value dt.
    pub tw_sum: f64,
    /// ∫ 10^(value/10) dt.
    pub tw_energy: f64,
    /// Smallest valid sample (infinite when there is none).
    pub min: f64,
    /// Largest valid sample (negative infinite when there is none).
    pub max: f64,
    /// Earliest sample (time, value), if any.
    pub first: Option<(i64, f64)>,
    /// Latest sample (time, value), if any.
    pub last: Option<(i64, f64)>,
}

impl Stats {
    const EMPTY: Self = Self {
        count: 0,
        sum: 0.0,
        held: 0.0,
        tw_sum: 0.0,
        tw_energy: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        first: None,
        last: None,
    };

    /// The time-weighted mean; NaN when no time is covered.
    pub fn mean(&self) -> f64 {
        if self.held > 0.0 {
            self.tw_sum / self.held
        } else {
            f64::NAN
        }
    }

    fn add_hold(&mut self, secs: f64, v: f64) {
        self.held += secs;
        self.tw_sum += v * secs;
        self.tw_energy += crate::model::sound::energy(v) * secs;
    }
}

/// The bucket resolution (ns) of a ring holding `span` ns in at most about `cap` buckets, no finer
/// than `base`: the first of 1 s, 10 s, 1 min, 5 min, 15 min, 1 h that fits.
fn resolution(span: i64, base: i64, cap: usize) -> i64 {
    let cap = i64::try_from(cap.max(1)).unwrap_or(i64::MAX);
    [S, 10 * S, 60 * S, 300 * S, 900 * S, HOUR]
        .into_iter()
        .filter(|r| *r >= base)
        .find(|r| span / r + 2 <= cap)
        .unwrap_or(HOUR)
}

/// How much time the coarse ring holds for a window of `retention`: the calendar helpers need the
/// clock hour before the current one (windows of 1 h or more) and the whole previous local day (24 h
/// or more; a day may last 25 h across a daylight-saving change).
fn ring_span(retention: i64) -> i64 {
    let extra = if retention >= DAY {
        DAY + 2 * HOUR
    } else if retention >= HOUR {
        HOUR
    } else {
        0
    };
    retention.saturating_add(extra)
}

/// The longest span answered from 1 s buckets.
const FINE_SPAN: i64 = 600 * S;

/// Buckets of one resolution in a ring, oldest overwritten first.
#[derive(Debug, Clone)]
struct Ring {
    /// Bucket length (ns).
    res: i64,
    buckets: Vec<Bucket>,
}

impl Ring {
    fn new(span: i64, res: i64) -> Self {
        let len = usize::try_from(span / res + 2).unwrap_or(usize::MAX);
        Self { res, buckets: vec![Bucket::EMPTY; len] }
    }

    /// How far back (ns) from its newest bucket the ring answers.
    fn covers(&self) -> i64 {
        (self.buckets.len() as i64 - 2) * self.res
    }

    fn add_sample(&mut self, ts: i64, value: f64) {
        if let Some(b) = self.slot_mut(ts.div_euclid(self.res)) {
            if b.count == 0 {
                b.first = (ts, value);
            }
            b.count = b.count.saturating_add(1);
            b.sum += value;
            b.min = b.min.min(value);
            b.max = b.max.max(value);
            b.last = (ts, value);
        }
    }

    /// Spreads a value in force over `[t0, t1)` across the buckets it touches.
    fn hold(&mut self, t0: i64, t1: i64, v: f64) {
        let energy = crate::model::sound::energy(v);
        let mut t = t0;
        while t < t1 {
            let k = t.div_euclid(self.res);
            let end = k.saturating_add(1).saturating_mul(self.res).min(t1);
            if end <= t {
                break;
            }
            let secs = (end - t) as f64 / S as f64;
            if let Some(b) = self.slot_mut(k) {
                b.held += secs;
                b.tw_sum += v * secs;
                b.tw_energy += energy * secs;
            }
            t = end;
        }
    }

    /// The bucket for number `k`, cleared if it held an older one; None if it already holds a newer.
    fn slot_mut(&mut self, k: i64) -> Option<&mut Bucket> {
        let len = i64::try_from(self.buckets.len()).ok()?;
        let b = self.buckets.get_mut(usize::try_from(k.rem_euclid(len)).ok()?)?;
        if b.k < k {
            *b = Bucket { k, ..Bucket::EMPTY };
        }
        (b.k == k).then_some(b)
    }

    fn slot(&self, k: i64) -> Option<&Bucket> {
        let len = i64::try_from(self.buckets.len()).ok()?;
        let b = self.buckets.get(usize::try_from(k.rem_euclid(len)).ok()?)?;
        (b.k == k).then_some(b)
    }

    /// Time integrals of the buckets `[from, to)` covers and sample statistics of the buckets from
    /// `from`'s to `last_k`; exact when `from` and `to` are on bucket boundaries.
    fn stats(&self, from: i64, to: i64, last_k: i64) -> Stats {
        let mut st = Stats::EMPTY;
        if to <= from {
            return st;
        }
        let first_k = from.div_euclid(self.res);
        let to_k = (to - 1).div_euclid(self.res);
        let end_k = last_k.max(to_k);
        // Only buckets the ring still holds can contribute.
        for k in first_k.max(end_k - self.buckets.len() as i64 + 1)..=end_k {
            let Some(b) = self.slot(k) else { continue };
            if k <= to_k {
                st.held += b.held;
                st.tw_sum += b.tw_sum;
                st.tw_energy += b.tw_energy;
            }
            if k <= last_k && b.count > 0 {
                st.count += u64::from(b.count);
                st.sum += b.sum;
                st.min = st.min.min(b.min);
                st.max = st.max.max(b.max);
                st.first = st.first.or(Some(b.first));
                st.last = Some(b.last);
            }
        }
        st
    }

    /// The last valid sample before `t` that the ring still holds.
    fn before(&self, t: i64) -> Option<(i64, f64)> {
        let k = t.div_euclid(self.res);
        (1..self.buckets.len() as i64).find_map(|i| self.slot(k - i).filter(|b| b.count > 0).map(|b| b.last))
    }
}

/// The bucketed history of one point.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// How far back (ns) rules may ask; 0 keeps nothing.
    pub retention: i64,
    /// Finest first: 1 s buckets for spans up to 10 minutes, then the coarse ring when the
    /// retention is longer.
    rings: Vec<Ring>,
    /// Time of the first valid sample this window ever saw, to tell a window that is not full yet.
    first_ts: Option<i64>,
    /// The latest valid sample, while its value is still in force.
    open: Option<(i64, f64)>,
    /// The newest sample time seen (any quality); older samples are ignored.
    newest: i64,
}

impl Window {
    /// A window rules may ask `retention` ns of, each ring using at most about `cap` buckets.
    pub fn new(retention: i64, cap: usize) -> Self {
        if retention <= 0 {
            return Self::default();
        }
        let fine_span = retention.min(FINE_SPAN);
        let mut rings = vec![Ring::new(fine_span, resolution(fine_span, S, cap))];
        if retention > FINE_SPAN {
            let span = ring_span(retention);
            rings.push(Ring::new(span, resolution(span, 60 * S, cap)));
        }
        Self { retention, rings, first_ts: None, open: None, newest: i64::MIN }
    }

    /// Bucket length (ns) used for a span of `span` ns; 0 for a window that keeps nothing.
    pub fn resolution(&self, span: i64) -> i64 {
        self.ring_for(span).map_or(0, |r| r.res)
    }

    /// The finest ring that answers a span of `span` ns.
    fn ring_for(&self, span: i64) -> Option<&Ring> {
        self.rings.iter().find(|r| r.covers() >= span).or(self.rings.last())
    }

    /// Bytes this window occupies, its rings included: fixed at creation, whatever the sample rate.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.rings.capacity() * std::mem::size_of::<Ring>()
            + self.rings.iter().map(|r| r.buckets.capacity() * std::mem::size_of::<Bucket>()).sum::<usize>()
    }

    /// Adds a sample; `good` is whether its quality is good. Samples older than the newest are
    /// ignored (the core already drops them); bad or non-finite ones only end the previous value's hold.
    pub fn push(&mut self, ts: i64, value: f64, good: bool) {
        if self.rings.is_empty() || ts < self.newest {
            return;
        }
        self.newest = ts;
        if let Some((t0, v0)) = self.open.take() {
            let end = ts.min(t0.saturating_add(MAX_HOLD));
            for r in &mut self.rings {
                r.hold(t0, end, v0);
            }
        }
        if !good || !value.is_finite() {
            return;
        }
        self.first_ts.get_or_insert(ts);
        self.open = Some((ts, value));
        for r in &mut self.rings {
            r.add_sample(ts, value);
        }
    }

    /// `ring`'s statistics plus the hold of the latest value, which no bucket holds yet.
    fn stats(&self, ring: &Ring, from: i64, to: i64, last_k: i64) -> Stats {
        let mut st = ring.stats(from, to, last_k);
        if let Some((t0, v0)) = self.open {
            let (a, z) = (t0.max(from), t0.saturating_add(MAX_HOLD).min(to));
            if z > a {
                st.add_hold((z - a) as f64 / S as f64, v0);
            }
        }
        st
    }

    /// Statistics of the interval `[from, to)` from the coarsest ring (bucket boundaries give exact
    /// results).
    pub fn interval(&self, from: i64, to: i64) -> Stats {
        match self.rings.last() {
            Some(r) if to > from => self.stats(r, from, to, (to - 1).div_euclid(r.res)),
            _ => Stats::EMPTY,
        }
    }

    /// The ring for `span` and the span's start: `now − span` rounded down to a bucket boundary.
    fn span(&self, span: i64, now: i64) -> Option<(&Ring, i64)> {
        let r = self.ring_for(span)?;
        Some((r, now.saturating_sub(span).div_euclid(r.res) * r.res))
    }

    /// The fraction of the `span` ns ending at `now` that valid values covered, 0 to 1.
    pub fn coverage(&self, span: i64, now: i64) -> f64 {
        let Some((r, from)) = self.span(span, now) else { return 0.0 };
        if now <= from {
            return 0.0;
        }
        let st = self.stats(r, from, now, now.div_euclid(r.res));
        (st.held / ((now - from) as f64 / S as f64)).clamp(0.0, 1.0)
    }

    /// The aggregate over the `span` ns ending at `now`; NaN when the window has not seen the whole
    /// span yet (its first valid sample is later than the span's start) or holds nothing to judge,
    /// so comparisons are false. `Count` is always the number of valid samples in the span.
    pub fn aggregate(&self, agg: Agg, span: i64, now: i64) -> f64 {
        let Some((r, from)) = self.span(span, now) else {
            return if agg == Agg::Count { 0.0 } else { f64::NAN };
        };
        let st = self.stats(r, from, now, now.div_euclid(r.res));
        if agg == Agg::Count {
            return st.count as f64;
        }
        if self.first_ts.is_none_or(|f| f > from) {
            return f64::NAN;
        }
        match agg {
            Agg::Avg => st.mean(),
            Agg::Leq if st.held > 0.0 => crate::model::sound::level(st.tw_energy / st.held),
            Agg::Min | Agg::Max if st.count == 0 => f64::NAN,
            Agg::Min => st.min,
            Agg::Max => st.max,
            Agg::Delta | Agg::Rate => {
                let (Some(first), Some((t1, v1))) = (st.first, st.last) else { return f64::NAN };
                // Measured from the value in force at the span's start.
                let (t0, v0) = if first.0 == from { first } else { r.before(from).unwrap_or(first) };
                if agg == Agg::Delta {
                    v1 - v0
                } else if t1 > t0 {
                    (v1 - v0) / ((t1 - t0) as f64 / S as f64)
                } else {
                    f64::NAN
                }
            }
            Agg::Count | Agg::Leq => f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn window(retention: i64, values: &[(i64, f64)]) -> Window {
        let mut w = Window::new(retention, 20_000);
        for &(t, v) in values {
            w.push(t * S, v, true);
        }
        w
    }

    #[test]
    fn leq_is_an_energy_average() {
        // The checks from the domain limits: Leq[50, 60] = 57.40; Leq[60, 60, 60] = 60.00; Leq[40, 70] = 66.99.
        for (levels, expected) in
            [(&[50.0, 60.0][..], 57.40), (&[60.0, 60.0, 60.0][..], 60.00), (&[40.0, 70.0][..], 66.99)]
        {
            // Each level held for 10 s, then the window ends.
            let n = levels.len() as i64;
            let pts: Vec<(i64, f64)> = levels.iter().enumerate().map(|(i, v)| (i as i64 * 10, *v)).collect();
            let w = window(600 * S, &pts);
            let leq = w.aggregate(Agg::Leq, n * 10 * S, n * 10 * S);
            assert!((leq - expected).abs() < 0.005, "{levels:?}: {leq}");
        }
    }

    #[test]
    fn window_not_full_is_nan() {
        let w = window(60 * S, &[(0, 1.0), (30, 2.0)]);
        assert!(w.aggregate(Agg::Avg, 60 * S, 30 * S).is_nan());
        assert_eq!(w.aggregate(Agg::Avg, 60 * S, 60 * S), 1.5);
        assert_eq!(w.aggregate(Agg::Count, 60 * S, 30 * S), 2.0);
    }

    #[test]
    fn aggregates_are_time_weighted() {
        let w = window(60 * S, &[(0, 10.0), (10, 20.0), (20, 30.0), (30, 40.0)]);
        let now = 30 * S;
        // [5, 30): 10 for 5 s, 20 for 10 s, 30 for 10 s.
        assert_eq!(w.aggregate(Agg::Avg, 25 * S, now), (50.0 + 200.0 + 300.0) / 25.0);
        assert_eq!(w.aggregate(Agg::Min, 25 * S, now), 20.0);
        assert_eq!(w.aggregate(Agg::Max, 25 * S, now), 40.0);
        assert_eq!(w.aggregate(Agg::Count, 25 * S, now), 3.0);
        // The sample at the span's start is the value in force there.
        assert_eq!(w.aggregate(Agg::Delta, 20 * S, now), 40.0 - 20.0);
        assert_eq!(w.aggregate(Agg::Rate, 20 * S, now), 1.0);
        // From between samples: the value in force is the one before.
        assert_eq!(w.aggregate(Agg::Delta, 15 * S, now), 40.0 - 20.0);
    }

    #[test]
    fn a_burst_does_not_outweigh_an_hour() {
        // One sample of 10 every 10 minutes for an hour, then 100 samples of 1000 in its last second.
        let mut w = Window::new(2 * HOUR, 20_000);
        for i in 0..6 {
            w.push(i * 600 * S, 10.0, true);
        }
        for i in 0..100 {
            w.push(HOUR - S + i * S / 100, 1000.0, true);
        }
        let avg = w.aggregate(Agg::Avg, HOUR, HOUR);
        assert!((avg - (10.0 * 3599.0 + 1000.0) / 3600.0).abs() < 1e-9, "{avg}");
        assert_eq!(w.aggregate(Agg::Count, HOUR, HOUR), 106.0);
    }

    #[test]
    fn silence_stops_covering_time() {
        let w = window(2 * HOUR, &[(0, 5.0)]);
        assert!((w.coverage(HOUR, HOUR) - 0.25).abs() < 1e-12);
        assert_eq!(w.aggregate(Agg::Avg, HOUR, HOUR), 5.0);
        assert_eq!(w.interval(0, HOUR).held, 900.0);
    }

    #[test]
    fn a_bad_sample_changes_the_mean_only_by_its_exclusion() {
        let values: Vec<f64> = (0..3600).map(|i| (i % 97) as f64).collect();
        let bad = 1800;
        let mut w = Window::new(2 * HOUR, 20_000);
        for (i, v) in values.iter().enumerate() {
            w.push(i as i64 * S, if i == bad { 1e9 } else { *v }, i != bad);
        }
        w.push(3600 * S, 0.0, false);
        let kept: Vec<f64> = values.iter().enumerate().filter(|(i, _)| *i != bad).map(|(_, v)| *v).collect();
        let expected = kept.iter().sum::<f64>() / kept.len() as f64;
        let avg = w.aggregate(Agg::Avg, HOUR, HOUR);
        assert!((avg - expected).abs() < 1e-9, "{avg} vs {expected}");
        assert_eq!(w.aggregate(Agg::Count, HOUR, HOUR), 3599.0);
        assert_eq!(w.aggregate(Agg::Max, HOUR, HOUR), 96.0);
        assert!((w.coverage(HOUR, HOUR) - 3599.0 / 3600.0).abs() < 1e-12);
        // Non-finite values are bad readings too.
        let mut n = Window::new(2 * HOUR, 20_000);
        n.push(0, 1.0, true);
        n.push(10 * S, f64::NAN, true);
        n.push(20 * S, 3.0, true);
        assert_eq!(n.aggregate(Agg::Avg, 30 * S, 30 * S), 2.0);
    }

    #[test]
    fn memory_is_fixed_by_the_span_not_the_rate() {
        let day = |hz: i64| {
            let mut w = Window::new(DAY, 20_000);
            let before = w.memory_bytes();
            // Two hours at `hz` samples a second is enough to fill every bucket the rate could touch.
            for i in 0..2 * 3600 * hz {
                w.push(i * S / hz, (i % 50) as f64, true);
            }
            assert_eq!(w.memory_bytes(), before);
            before
        };
        let (at_1hz, at_100hz) = (day(1), day(100));
        println!("24 h window: {at_1hz} bytes at 1 Hz, {at_100hz} bytes at 100 Hz");
        assert_eq!(at_1hz, at_100hz);
        assert!(at_1hz < 400_000, "{at_1hz}");
        // A cap coarsens the resolution instead of growing the ring.
        let capped = Window::new(7 * DAY, 1_000);
        assert!(capped.rings.iter().all(|r| r.buckets.len() <= 1_000));
        assert_eq!(capped.resolution(7 * DAY), 900 * S);
        assert_eq!(capped.resolution(FINE_SPAN), S);
    }

    /// A direct computation over the samples, as the bucketed window should answer it.
    fn direct(samples: &[(i64, f64, bool)], from: i64, now: i64) -> (u64, f64, f64, f64, f64) {
        let (mut n, mut min, mut max, mut held, mut tw) = (0u64, f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0);
        for (i, &(t, v, good)) in samples.iter().enumerate() {
            if !good || !v.is_finite() {
                continue;
            }
            if t >= from && t <= now {
                n += 1;
                min = min.min(v);
                max = max.max(v);
            }
            let next = samples.get(i + 1).map_or(now, |s| s.0.min(now));
            let end = next.min(t + MAX_HOLD);
            let (a, z) = (t.max(from), end);
            if z > a {
                held += (z - a) as f64 / 1e9;
                tw += v * (z - a) as f64 / 1e9;
            }
        }
        (n, min, max, held, tw)
    }

    proptest! {
        /// With the span start on a bucket boundary, the bucketed aggregates equal the direct
        /// computation over the same samples (up to float summation order); sample times are free.
        #[test]
        fn buckets_equal_direct_computation(
            steps in prop::collection::vec((1i64..400_000, -1000.0f64..1000.0, prop::bool::weighted(0.9)), 1..300),
            span_min in 1i64..120,
            extra_s in 0i64..60,
        ) {
            let mut w = Window::new(3 * HOUR, 20_000);
            let mut samples = Vec::new();
            let mut t = HOUR;
            for (dt_ms, v, good) in steps {
                t += dt_ms * 1_000_000;
                samples.push((t, v, good));
                w.push(t, v, good);
            }
            let now = t + extra_s * S;
            let span = span_min * 60 * S;
            let res = w.resolution(span);
            prop_assert_eq!(res, if span <= FINE_SPAN { S } else { 60 * S });
            let from = (now - span).div_euclid(res) * res;
            let (n, min, max, held, tw) = direct(&samples, from, now);
            prop_assert_eq!(w.aggregate(Agg::Count, span, now), n as f64);
            let full = samples.iter().find(|s| s.2).is_some_and(|s| s.0 <= from);
            let avg = w.aggregate(Agg::Avg, span, now);
            if full && held > 0.0 {
                prop_assert!((avg - tw / held).abs() <= 1e-6 * (1.0 + (tw / held).abs()), "{} vs {}", avg, tw / held);
            } else {
                prop_assert!(avg.is_nan());
            }
            if full && n > 0 {
                prop_assert_eq!(w.aggregate(Agg::Min, span, now), min);
                prop_assert_eq!(w.aggregate(Agg::Max, span, now), max);
            }
            let cov = w.coverage(span, now);
            let expected = held / ((now - from) as f64 / 1e9);
            prop_assert!((cov - expected.clamp(0.0, 1.0)).abs() < 1e-9, "{} vs {}", cov, expected);
        }
    }
}
