//! Login throttling: wrong passwords counted per key (a user name, a source address) over a sliding
//! window; too many lock the key for a while, and while it is locked even a correct password is
//! refused with the time to retry. Pure: time comes in as an argument.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Keys kept at most; beyond this, keys with nothing recent are forgotten first.
const KEYS_MAX: usize = 10_000;

#[derive(Debug, Default)]
struct Entry {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

/// Failures per key within `window`; `max` of them lock the key for `lockout`.
#[derive(Debug)]
pub struct Throttle {
    max: usize,
    window: Duration,
    lockout: Duration,
    keys: HashMap<String, Entry>,
}

impl Throttle {
    /// A throttle locking a key after `max` failures within `window`, for `lockout`.
    pub fn new(max: usize, window: Duration, lockout: Duration) -> Self {
        Self { max: max.max(1), window, lockout, keys: HashMap::new() }
    }

    /// `Err(wait)` while `key` is locked.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        match self.keys.get(key).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns the lock's length when this failure locked the key.
    pub fn fail(&mut self, key: &str, now: Instant) -> Option<Duration> {
        if self.keys.len() >= KEYS_MAX && !self.keys.contains_key(key) {
            self.prune(now);
        }
        let e = self.keys.entry(key.to_owned()).or_default();
        while e.failures.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            e.failures.pop_front();
        }
        e.failures.push_back(now);
        if e.failures.len() >= self.max {
            e.failures.clear();
            e.locked_until = Some(now + self.lockout);
            return Some(self.lockout);
        }
        None
    }

    /// A correct password: the key's failures are forgotten (a lock stays until it ends).
    pub fn succeed(&mut self, key: &str, now: Instant) {
        if self.check(key, now).is_ok() {
            self.keys.remove(key);
        }
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.keys.retain(|_, e| {
            e.locked_until.is_some_and(|u| u > now)
                || e.failures.back().is_some_and(|t| now.duration_since(*t) < window)
        });
        if self.keys.len() >= KEYS_MAX {
            // Still full of live keys (a spray from many names): forget the unlocked ones.
            self.keys.retain(|_, e| e.locked_until.is_some_and(|u| u > now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_failures_within_a_minute_lock_for_the_lockout() {
        let t0 = Instant::now();
        let mut t = Throttle::new(20, Duration::from_secs(60), Duration::from_secs(900));
        for i in 0..19 {
            assert_eq!(t.fail("li", t0 + Duration::from_secs(i)), None);
            assert!(t.check("li", t0 + Duration::from_secs(i)).is_ok());
        }
        assert_eq!(t.fail("li", t0 + Duration::from_secs(19)), Some(Duration::from_secs(900)));
        assert_eq!(t.check("li", t0 + Duration::from_secs(20)), Err(Duration::from_secs(899)));
        // A correct password during the lock does not lift it.
        t.succeed("li", t0 + Duration::from_secs(21));
        assert!(t.check("li", t0 + Duration::from_secs(21)).is_err());
        assert!(t.check("li", t0 + Duration::from_secs(919)).is_ok());
        assert!(t.check("wang", t0 + Duration::from_secs(20)).is_ok(), "other keys are not locked");
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut t = Throttle::new(20, Duration::from_secs(60), Duration::from_secs(900));
        for i in 0..40 {
            // One failure every 4 s: never 20 within a minute.
            assert_eq!(t.fail("li", t0 + Duration::from_secs(4 * i)), None);
        }
        let mut t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(10));
        t.fail("li", t0);
        t.fail("li", t0 + Duration::from_secs(1));
        t.succeed("li", t0 + Duration::from_secs(2));
        assert_eq!(t.fail("li", t0 + Duration::from_secs(3)), None, "a success forgets earlier failures");
    }

    #[test]
    fn many_keys_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, Duration::from_secs(60), Duration::from_secs(10));
        t.fail("locked", t0);
        t.fail("locked", t0);
        for i in 0..(KEYS_MAX * 2) {
            t.fail(&format!("spray-{i}"), t0 + Duration::from_secs(1));
        }
        assert!(t.keys.len() <= KEYS_MAX);
        assert!(t.check("locked", t0 + Duration::from_secs(2)).is_err(), "locks survive pruning");
    }
}
