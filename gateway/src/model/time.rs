//! Time as the gateway keeps it: UTC nanoseconds inside, RFC 3339 for machines, the site's time zone
//! for people; and the [`Clock`] that gives both the wall-clock and the monotonic reading.
//!
//! Wall time stamps samples and incidents and decides the site calendar (day or night). Timers (on
//! and off delays, shelving expiry, periodic rules) run on the monotonic reading, so NTP stepping the
//! wall clock of a box without an RTC neither delays nor fires a pending alarm.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use chrono::TimeZone;

/// Both readings of one moment: wall (UTC ns since the Unix epoch) and monotonic (ns since an
/// arbitrary origin that never steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// UTC ns; may jump when the system clock is set.
    pub wall: i64,
    /// ns since the clock's origin; only moves forward, at the rate of real time.
    pub mono: i64,
}

impl Now {
    /// The monotonic reading of wall time `wall`, assuming no step between `self` and then.
    pub fn mono_of(&self, wall: i64) -> i64 {
        self.mono.saturating_add(wall.saturating_sub(self.wall))
    }

    /// The wall time of monotonic reading `mono`, as the wall clock reads now.
    pub fn wall_of(&self, mono: i64) -> i64 {
        self.wall.saturating_add(mono.saturating_sub(self.mono))
    }
}

/// A source of wall and monotonic time; the core reads it, the pure parts take its readings.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// UTC ns since the Unix epoch.
    fn wall_ns(&self) -> i64;
    /// ns since this clock's origin, never stepping back.
    fn mono_ns(&self) -> i64;
    /// Both readings now.
    fn now(&self) -> Now {
        Now { wall: self.wall_ns(), mono: self.mono_ns() }
    }
}

/// The system's clocks: `SystemTime` for wall time, an `Instant` origin for monotonic time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic reading starts at 0 now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn wall_ns(&self) -> i64 {
        now_ns()
    }

    fn mono_ns(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }
}

/// A clock set by hand, for tests and the offline rule runner: both readings can be moved apart.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicI64,
    mono: AtomicI64,
}

impl ManualClock {
    /// A clock reading `wall` and `mono`.
    pub fn new(wall: i64, mono: i64) -> Self {
        Self { wall: AtomicI64::new(wall), mono: AtomicI64::new(mono) }
    }

    /// Real time passes: both readings move by `ns`.
    pub fn advance(&self, ns: i64) {
        self.wall.fetch_add(ns, Ordering::Relaxed);
        self.mono.fetch_add(ns, Ordering::Relaxed);
    }

    /// The wall clock is set (an NTP step): only the wall reading moves, by `ns` (either sign).
    pub fn step_wall(&self, ns: i64) {
        self.wall.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn wall_ns(&self) -> i64 {
        self.wall.load(Ordering::Relaxed)
    }

    fn mono_ns(&self) -> i64 {
        self.mono.load(Ordering::Relaxed)
    }
}

/// Now as UTC nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// RFC 3339 in UTC with milliseconds, as the API answers.
pub fn fmt_ns(ts: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Local time in `tz` for people: `2026-12-01 08:30:05 CST`.
pub fn fmt_local(ts: i64, tz: chrono_tz::Tz) -> String {
    tz.from_utc_datetime(&chrono::DateTime::from_timestamp_nanos(ts).naive_utc())
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_and_local() {
        let ts = 1_764_577_805_000_000_000; // 2025-12-01T08:30:05Z
        assert_eq!(fmt_ns(ts), "2025-12-01T08:30:05.000Z");
        assert_eq!(fmt_local(ts, chrono_tz::Asia::Shanghai), "2025-12-01 16:30:05 CST");
    }

    #[test]
    fn manual_clock_steps_wall_alone() {
        let c = ManualClock::new(1_000, 5);
        c.advance(10);
        c.step_wall(-3_600);
        assert_eq!(c.now(), Now { wall: 1_010 - 3_600, mono: 15 });
        let n = c.now();
        assert_eq!(n.wall_of(n.mono_of(7_000)), 7_000);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let (a, b) = (c.mono_ns(), c.mono_ns());
        assert!(a >= 0 && b >= a);
        assert!(c.wall_ns() > 1_700_000_000_000_000_000);
    }
}
