//! Recent samples of one point, kept as long as the rules watching it ask (their declared `window`),
//! and the aggregates rules compute over them. Memory is bounded by a sample cap per point: when a
//! point reports faster than the cap allows over the window, the oldest samples go and the window
//! reports itself as not full, so a rule never judges an average over less time than it asked for.

use std::collections::VecDeque;

/// Aggregates a rule can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Count,
    /// Last minus first value in the window.
    Delta,
    /// Delta per second.
    Rate,
    /// Energy average of sound levels: 10·log10(mean(10^(L/10))).
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

/// The recent samples of one point.
#[derive(Debug, Clone, Default)]
pub struct Window {
    samples: VecDeque<(i64, f64)>,
    /// How far back (ns) samples are kept; 0 keeps none.
    pub retention: i64,
    cap: usize,
    /// Time of the first sample this window ever saw, to tell a window that is not full yet.
    first_ts: Option<i64>,
    /// The oldest sample that had to go because of the cap (its time), if any.
    evicted_until: Option<i64>,
}

impl Window {
    /// A window keeping `retention` ns of samples, at most `cap` of them.
    pub fn new(retention: i64, cap: usize) -> Self {
        Self { samples: VecDeque::new(), retention, cap: cap.max(1), first_ts: None, evicted_until: None }
    }

    /// Adds a sample; samples older than the newest are ignored (the core already drops them).
    pub fn push(&mut self, ts: i64, value: f64) {
        if self.retention <= 0 {
            return;
        }
        if self.first_ts.is_none() {
            self.first_ts = Some(ts);
        }
        if self.samples.back().is_some_and(|(t, _)| *t > ts) {
            return;
        }
        let horizon = ts.saturating_sub(self.retention);
        // Keep one sample at or before the horizon: it is the value in force at the window's start.
        while self.samples.len() >= 2 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
        if self.samples.len() >= self.cap {
            if let Some((t, _)) = self.samples.pop_front() {
                self.evicted_until = Some(t);
            }
        }
        self.samples.push_back((ts, value));
    }

    /// Number of samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The aggregate over the `span` ns ending at `now`; NaN when the window does not cover `span`
    /// yet (too young, or samples evicted by the cap inside the span), so comparisons are false.
    pub fn aggregate(&self, agg: Agg, span: i64, now: i64) -> f64 {
        let start = now.saturating_sub(span);
        let full = self.first_ts.is_some_and(|f| f <= start) && self.evicted_until.is_none_or(|e| e < start);
        if !full && agg != Agg::Count {
            return f64::NAN;
        }
        let mut n = 0usize;
        let (mut sum, mut min, mut max, mut energy) = (0.0, f64::INFINITY, f64::NEG_INFINITY, 0.0);
        let mut first: Option<(i64, f64)> = None;
        let mut last: Option<(i64, f64)> = None;
        for &(t, v) in self.samples.iter().filter(|(t, _)| *t > start && *t <= now) {
            n += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
            energy += 10f64.powf(v / 10.0);
            if first.is_none() {
                first = Some((t, v));
            }
            last = Some((t, v));
        }
        if agg == Agg::Count {
            return n as f64;
        }
        if n == 0 {
            return f64::NAN;
        }
        match agg {
            Agg::Avg => sum / n as f64,
            Agg::Min => min,
            Agg::Max => max,
            Agg::Count => n as f64,
            Agg::Leq => 10.0 * (energy / n as f64).log10(),
            Agg::Delta | Agg::Rate => {
                // Measured from the value in force at the window's start when there is one.
                let base = self.samples.iter().rev().find(|(t, _)| *t <= start).copied().or(first);
                let (Some((t0, v0)), Some((t1, v1))) = (base, last) else { return f64::NAN };
                if agg == Agg::Delta {
                    v1 - v0
                } else if t1 > t0 {
                    (v1 - v0) / ((t1 - t0) as f64 / 1e9)
                } else {
                    f64::NAN
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn window(values: &[(i64, f64)]) -> Window {
        let mut w = Window::new(3600 * S, 10_000);
        for &(t, v) in values {
            w.push(t * S, v);
        }
        w
    }

    #[test]
    fn leq_is_an_energy_average() {
        // The checks from the domain limits: Leq[50, 60] = 57.40; Leq[60, 60, 60] = 60.00; Leq[40, 70] = 66.99.
        for (levels, expected) in
            [(&[50.0, 60.0][..], 57.40), (&[60.0, 60.0, 60.0][..], 60.00), (&[40.0, 70.0][..], 66.99)]
        {
            let pts: Vec<(i64, f64)> = levels.iter().enumerate().map(|(i, v)| (i as i64 + 1, *v)).collect();
            let mut w = window(&[(0, 0.0)]);
            w.samples.clear();
            for (t, v) in &pts {
                w.push(t * S, *v);
            }
            w.first_ts = Some(0);
            let leq = w.aggregate(Agg::Leq, 10 * S, 10 * S);
            assert!((leq - expected).abs() < 0.005, "{levels:?}: {leq}");
        }
    }

    #[test]
    fn window_not_full_is_nan() {
        let w = window(&[(0, 1.0), (30, 2.0)]);
        assert!(w.aggregate(Agg::Avg, 60 * S, 30 * S).is_nan());
        assert_eq!(w.aggregate(Agg::Avg, 60 * S, 60 * S), 2.0);
        assert_eq!(w.aggregate(Agg::Count, 60 * S, 30 * S), 2.0);
    }

    #[test]
    fn aggregates() {
        let w = window(&[(0, 10.0), (10, 20.0), (20, 30.0), (30, 40.0)]);
        let now = 30 * S;
        assert_eq!(w.aggregate(Agg::Avg, 25 * S, now), 30.0);
        assert_eq!(w.aggregate(Agg::Min, 25 * S, now), 20.0);
        assert_eq!(w.aggregate(Agg::Max, 25 * S, now), 40.0);
        assert_eq!(w.aggregate(Agg::Delta, 20 * S, now), 30.0 - 10.0);
        assert_eq!(w.aggregate(Agg::Rate, 20 * S, now), 1.0);
    }

    #[test]
    fn retention_and_cap_bound_memory() {
        let mut w = Window::new(10 * S, 5);
        for t in 0..100 {
            w.push(t * S, t as f64);
        }
        assert!(w.len() <= 5);
        // Evicted by the cap inside the span: the window says it cannot judge.
        assert!(w.aggregate(Agg::Avg, 10 * S, 99 * S).is_nan());
        let mut w = Window::new(10 * S, 1000);
        for t in 0..100 {
            w.push(t * S, t as f64);
        }
        assert!(w.len() <= 12);
        assert_eq!(w.aggregate(Agg::Max, 10 * S, 99 * S), 99.0);
    }
}
