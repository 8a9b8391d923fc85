//! The ISA-18.2 alarm lifecycle of one (rule, source): normal → active-unacked → active-acked →
//! returned-unacked → normal, with on/off delays, shelving, suppression, latching, severity escalation
//! within one alarm and chattering detection.
//!
//! Pure: it takes inputs with their time and returns what happened; it does no I/O and reads no clock.
//! Every time here is a monotonic reading ([`crate::model::time::Now::mono`]), so a wall-clock step
//! neither delays nor fires a timer; the engine turns times it reports into wall time.
//! The engine persists and announces the results. One alarm is one incident: a new incident can only
//! start from `Normal`, so no sequence of inputs opens two incidents for one (rule, source).

use std::collections::VecDeque;

use serde::Serialize;

pub use crate::model::incident::{Severity, State};

/// Timing and behaviour of one rule's alarms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// The condition must hold this long (ns) before the alarm is raised.
    pub on_delay: i64,
    /// The condition must be gone this long (ns) before the alarm returns.
    pub off_delay: i64,
    /// A latched alarm stays active after the condition clears until someone acknowledges it.
    pub latch: bool,
    /// This many transitions within `chatter_window` mark the alarm as chattering.
    pub chatter_count: usize,
    /// ns.
    pub chatter_window: i64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self { on_delay: 0, off_delay: 0, latch: false, chatter_count: 6, chatter_window: 600 * 1_000_000_000 }
    }
}

/// What a change of the alarm means for its incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// A new incident starts.
    Raised { severity: Severity },
    /// The condition came back before the last episode was acknowledged: same incident.
    Reactivated { severity: Severity },
    /// Same alarm, higher severity.
    Escalated { severity: Severity },
    /// The condition cleared; the alarm waits for acknowledgement.
    Returned,
    /// Somebody acknowledged the alarm.
    Acked,
    /// The alarm is back to normal; the incident is closed.
    Closed,
    /// Chattering detected; told once per chattering episode.
    Chattering,
    /// Shelved until the given time (monotonic ns).
    Shelved { until: i64 },
    /// Shelving ended (expiry or by hand).
    Unshelved,
}

/// One alarm's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub state: State,
    pub severity: Severity,
    /// When the condition first held (pending on-delay) and the severity asked for.
    pending_on: Option<(i64, Severity)>,
    /// When the condition first went away while active (pending off-delay).
    pending_off: Option<i64>,
    /// The condition as last evaluated, and the severity it asked for.
    pub condition: bool,
    asked: Severity,
    /// Shelved until (monotonic ns).
    pub shelved_until: Option<i64>,
    /// Suppressed (device out of service, maintenance window): conditions are ignored.
    pub suppressed: bool,
    /// Times of recent state changes, for chattering.
    changes: VecDeque<i64>,
    pub chattering: bool,
}

impl Default for Alarm {
    fn default() -> Self {
        Self {
            state: State::Normal,
            severity: Severity::Warning,
            pending_on: None,
            pending_off: None,
            condition: false,
            asked: Severity::Warning,
            shelved_until: None,
            suppressed: false,
            changes: VecDeque::new(),
            chattering: false,
        }
    }
}

impl Alarm {
    /// An alarm restored from a stored incident.
    pub fn restored(state: State, severity: Severity) -> Self {
        Self { state, severity, condition: state.is_active(), ..Self::default() }
    }

    /// The next time (monotonic ns) at which [`Alarm::tick`] may change something, if any.
    pub fn next_deadline(&self, b: &Behaviour) -> Option<i64> {
        let on = self.pending_on.map(|(t, _)| t.saturating_add(b.on_delay));
        let off = self.pending_off.map(|t| t.saturating_add(b.off_delay));
        [on, off, self.shelved_until].into_iter().flatten().min()
    }

    /// A new evaluation of the condition at `now`: `Some(severity)` when it holds.
    pub fn evaluate(&mut self, b: &Behaviour, now: i64, condition: Option<Severity>, out: &mut Vec<Outcome>) {
        self.condition = condition.is_some();
        if let Some(sev) = condition {
            self.asked = sev;
        }
        if self.suppressed {
            self.pending_on = None;
            self.pending_off = None;
            return;
        }
        match condition {
            Some(sev) => {
                self.pending_off = None;
                if self.state.is_active() {
                    if sev > self.severity {
                        self.severity = sev;
                        out.push(Outcome::Escalated { severity: sev });
                    }
                    return;
                }
                match self.pending_on {
                    Some((since, old)) => self.pending_on = Some((since, old.max(sev))),
                    None => self.pending_on = Some((now, sev)),
                }
            }
            None => {
                self.pending_on = None;
                if self.state.is_active() && !b.latch && self.pending_off.is_none() {
                    self.pending_off = Some(now);
                }
            }
        }
        self.tick(b, now, out);
    }

    /// Advances timers to `now`: on/off delays and shelving expiry.
    pub fn tick(&mut self, b: &Behaviour, now: i64, out: &mut Vec<Outcome>) {
        if let Some(until) = self.shelved_until {
            if now >= until {
                self.shelved_until = None;
                out.push(Outcome::Unshelved);
                // A condition that held through the shelving is announced now.
                if self.condition && !self.state.is_active() && self.pending_on.is_none() && !self.suppressed {
                    self.pending_on = Some((now, self.asked));
                }
            }
        }
        if let Some((since, sev)) = self.pending_on {
            if now.saturating_sub(since) >= b.on_delay && self.shelved_until.is_none() {
                self.pending_on = None;
                match self.state {
                    State::Normal => {
                        self.severity = sev;
                        self.state = State::ActiveUnacked;
                        self.changed(b, now, out);
                        out.push(Outcome::Raised { severity: sev });
                    }
                    State::ReturnedUnacked => {
                        self.severity = self.severity.max(sev);
                        self.state = State::ActiveUnacked;
                        self.changed(b, now, out);
                        out.push(Outcome::Reactivated { severity: self.severity });
                    }
                    State::ActiveUnacked | State::ActiveAcked => {}
                }
            }
        }
        if let Some(since) = self.pending_off {
            if now.saturating_sub(since) >= b.off_delay {
                self.pending_off = None;
                match self.state {
                    State::ActiveUnacked => {
                        self.state = State::ReturnedUnacked;
                        self.changed(b, now, out);
                        out.push(Outcome::Returned);
                    }
                    State::ActiveAcked => {
                        self.state = State::Normal;
                        self.changed(b, now, out);
                        out.push(Outcome::Returned);
                        out.push(Outcome::Closed);
                    }
                    State::Normal | State::ReturnedUnacked => {}
                }
            }
        }
    }

    /// An operator acknowledges. A returned alarm closes; a latched one whose condition is gone resets.
    /// Returns whether anything changed.
    pub fn ack(&mut self, b: &Behaviour, now: i64, out: &mut Vec<Outcome>) -> bool {
        match self.state {
            State::ActiveUnacked if b.latch && !self.condition => {
                self.state = State::Normal;
                self.changed(b, now, out);
                out.push(Outcome::Acked);
                out.push(Outcome::Closed);
                true
            }
            State::ActiveUnacked => {
                self.state = State::ActiveAcked;
                out.push(Outcome::Acked);
                true
            }
            State::ActiveAcked if b.latch && !self.condition => {
                self.state = State::Normal;
                self.changed(b, now, out);
                out.push(Outcome::Closed);
                true
            }
            State::ReturnedUnacked => {
                self.state = State::Normal;
                self.pending_on = None;
                self.changed(b, now, out);
                out.push(Outcome::Acked);
                out.push(Outcome::Closed);
                true
            }
            State::ActiveAcked | State::Normal => false,
        }
    }

    /// Shelves the alarm until `until`: no new annunciation meanwhile.
    pub fn shelve(&mut self, now: i64, until: i64, out: &mut Vec<Outcome>) {
        if until > now {
            self.shelved_until = Some(until);
            out.push(Outcome::Shelved { until });
        }
    }

    /// Ends shelving now.
    pub fn unshelve(&mut self, b: &Behaviour, now: i64, out: &mut Vec<Outcome>) {
        if self.shelved_until.is_some() {
            self.shelved_until = Some(now);
            self.tick(b, now, out);
        }
    }

    /// Starts or ends suppression (out of service, maintenance). Ending it re-evaluates the last
    /// known condition at `now`.
    pub fn set_suppressed(&mut self, b: &Behaviour, now: i64, suppressed: bool, out: &mut Vec<Outcome>) {
        if self.suppressed == suppressed {
            return;
        }
        self.suppressed = suppressed;
        if !suppressed && self.condition && !self.state.is_active() {
            self.pending_on = Some((now, self.asked));
            self.tick(b, now, out);
        }
    }

    fn changed(&mut self, b: &Behaviour, now: i64, out: &mut Vec<Outcome>) {
        while self.changes.front().is_some_and(|t| now.saturating_sub(*t) > b.chatter_window) {
            self.changes.pop_front();
        }
        if self.changes.len() >= b.chatter_count.max(2) {
            self.changes.pop_front();
        }
        self.changes.push_back(now);
        let chattering = b.chatter_count > 0 && self.changes.len() >= b.chatter_count;
        if chattering && !self.chattering {
            out.push(Outcome::Chattering);
        }
        if !chattering && self.changes.len() <= 1 {
            self.chattering = false;
        }
        self.chattering |= chattering;
    }
}

#[cfg(test)]
mod tests;
