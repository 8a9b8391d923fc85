//! Patrols: when each checkpoint is due, the live tracker that opens one `patrol` incident when a
//! checkpoint is not scanned in time and returns it when it is, and coverage per grid, shift and
//! officer.
//!
//! A checkpoint's day is cut into slots: every `every` from local midnight, or every window's
//! interval from the window's start (the last slot of a window ends with it). A slot is covered when
//! a `checkpoint_scanned` event of the checkpoint falls within it; a slot that ends uncovered is
//! missed. Pure: times come in as UTC ns, the tracker hands back incident changes and never reads a
//! clock.
//!
//! The tracker knows only the scans it has seen since the gateway started: the slot in progress at
//! start is not judged (a scan before the start is unknown), and coverage covers the scans kept in
//! memory (the newest [`SCANS_KEPT`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::Duration;
use chrono_tz::Tz;
use serde::Serialize;

use super::duty::{local_of, local_to_ns, shifts_between, Roster};
use crate::config::people::parse_interval;
use crate::config::validate::parse_hhmm;
use crate::config::Config;
use crate::model::incident::{Change, IncidentUpdate, NewIncident, OpenIncident, Severity, State};
use crate::model::Event;

/// The rule id of missed-patrol incidents; their `device` is the checkpoint id.
pub const RULE: &str = "patrol.missed";
/// The incident category of missed patrols.
pub const CATEGORY: &str = "patrol";
/// The event kind of a scan; its `checkpoint` attribute names the checkpoint (the device's id when
/// absent) and `officer` who scanned.
pub const SCANNED: &str = "checkpoint_scanned";
/// How many scans are kept for coverage.
pub const SCANS_KEPT: usize = 100_000;
/// Scan times kept per checkpoint to judge its slots.
const RECENT: usize = 64;

/// A local window of a day in which a checkpoint is due every `every` minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    from: u32,
    len: u32,
    every: u32,
}

/// A patrol checkpoint, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: String,
    /// For people; the id when the config names none.
    pub name: String,
    /// Grid id.
    pub grid: String,
    windows: Vec<Window>,
}

/// A span of time in which a checkpoint must be scanned once, UTC ns `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub start: i64,
    pub end: i64,
}

/// One scan of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Index into the tracker's checkpoints.
    checkpoint: usize,
    pub officer: String,
    /// UTC ns, as the reader stamped it.
    pub at: i64,
}

impl Checkpoint {
    /// Resolves a checkpoint of grid `grid`; `None` when its times do not parse (validation refuses it).
    pub fn from_config(grid: &str, c: &crate::config::Checkpoint) -> Option<Self> {
        let every = c.every.as_deref().map(parse_interval);
        let windows = if c.windows.is_empty() {
            vec![Window { from: 0, len: 1440, every: every?? }]
        } else {
            let mut out = Vec::new();
            for w in &c.windows {
                let (from, to) = (parse_hhmm(&w.from)?, parse_hhmm(&w.to)?);
                let every = match &w.every {
                    Some(e) => parse_interval(e)?,
                    None => every??,
                };
                out.push(Window { from, len: if to > from { to - from } else { to + 1440 - from }, every });
            }
            out
        };
        Some(Self {
            id: c.id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.id.clone()),
            grid: grid.to_owned(),
            windows,
        })
    }

    /// The slots that end within `(from, to]`, in order.
    pub fn slots(&self, tz: Tz, from: i64, to: i64) -> Vec<Slot> {
        let mut out = Vec::new();
        if to <= from {
            return out;
        }
        // A window starts on one date and may run into the next.
        let first = local_of(tz, from).date() - Duration::days(1);
        let last = local_of(tz, to).date();
        let mut date = first;
        while date <= last {
            let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
            for w in &self.windows {
                let mut k = 0;
                while k < w.len {
                    let s = midnight + Duration::minutes(i64::from(w.from + k));
                    let e = midnight + Duration::minutes(i64::from(w.from + (k + w.every).min(w.len)));
                    let slot = Slot { start: local_to_ns(tz, s), end: local_to_ns(tz, e) };
                    if slot.end > from && slot.end <= to && slot.start < slot.end {
                        out.push(slot);
                    }
                    k += w.every;
                }
            }
            date += Duration::days(1);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Every checkpoint of the config, grid by grid.
pub fn checkpoints(config: &Config) -> Vec<Checkpoint> {
    config.grids.iter().flat_map(|g| g.checkpoints.iter().filter_map(|c| Checkpoint::from_config(&g.id, c))).collect()
}

#[derive(Debug, Clone, Default)]
struct Watch {
    /// Times of the latest scans (at most [`RECENT`]).
    recent: VecDeque<i64>,
    /// Slots ending at or before this are judged.
    judged_until: i64,
    /// End of the next slot to judge; `i64::MAX` when none is due within a week.
    next_end: i64,
    /// The open missed-patrol incident and its state.
    open: Option<(i64, State)>,
}

/// The live patrol watch of a site: judges slots as they end, raises and returns `patrol` incidents,
/// keeps recent scans for coverage.
#[derive(Debug, Clone)]
pub struct Tracker {
    tz: Tz,
    checkpoints: Vec<Checkpoint>,
    index: HashMap<String, usize>,
    watch: Vec<Watch>,
    scans: VecDeque<Scan>,
    next_check: i64,
}

/// What an operator's action on a patrol incident came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acted {
    /// Done (changes were added).
    Done,
    /// The checkpoint is still unscanned: it cannot be closed yet.
    StillActive,
    /// The incident is not open any more.
    NotOpen,
}

impl Tracker {
    /// A tracker of `checkpoints` in `tz` that starts watching at `now` (UTC ns): slots in progress
    /// then are not judged.
    pub fn new(checkpoints: Vec<Checkpoint>, tz: Tz, now: i64) -> Self {
        let index = checkpoints.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        let mut t = Self {
            tz,
            watch: vec![Watch::default(); checkpoints.len()],
            checkpoints,
            index,
            scans: VecDeque::new(),
            next_check: i64::MAX,
        };
        for i in 0..t.checkpoints.len() {
            // The first slot judged is the first that starts at or after `now`.
            let first = t.checkpoints[i].slots(tz, now, now.saturating_add(WEEK)).first().copied();
            let started = first.filter(|s| s.start < now).map_or(now, |s| s.end);
            t.watch[i].judged_until = started;
            t.plan(i);
        }
        t
    }

    /// The checkpoints watched.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// Takes over the open missed-patrol incidents restored from the store; returns the ids of those
    /// whose checkpoint is no longer configured (for the store to close).
    pub fn restore(&mut self, open: &[OpenIncident]) -> Vec<i64> {
        let mut orphans = Vec::new();
        for inc in open.iter().filter(|i| i.rule == RULE) {
            match self.index.get(&inc.device) {
                Some(&i) if self.watch[i].open.is_none() => self.watch[i].open = Some((inc.id, inc.state)),
                _ => orphans.push(inc.id),
            }
        }
        orphans
    }

    /// Whether incident `id` is a missed patrol this tracker owns.
    pub fn owns(&self, id: i64) -> bool {
        self.watch.iter().any(|w| w.open.is_some_and(|(o, _)| o == id))
    }

    /// Judges the slots that ended by `now`: a checkpoint without a scan in a slot opens an incident
    /// (its id from `next_id`) or reactivates its returned one.
    pub fn tick(&mut self, now: i64, next_id: &mut dyn FnMut() -> i64, out: &mut Vec<Change>) {
        if now < self.next_check {
            return;
        }
        for i in 0..self.checkpoints.len() {
            if self.watch[i].next_end > now {
                continue;
            }
            let slots = self.checkpoints[i].slots(self.tz, self.watch[i].judged_until, now);
            for slot in slots {
                let w = &mut self.watch[i];
                w.judged_until = slot.end;
                if w.recent.iter().any(|&t| slot.start <= t && t < slot.end) {
                    continue;
                }
                let cp = &self.checkpoints[i];
                match w.open {
                    None => {
                        let id = next_id();
                        w.open = Some((id, State::ActiveUnacked));
                        out.push(Change::Open(missed(id, cp, slot, self.tz)));
                    }
                    Some((id, State::ReturnedUnacked)) => {
                        w.open = Some((id, State::ActiveUnacked));
                        out.push(Change::Update(update(id, slot.end, "reactivated", State::ActiveUnacked, None)));
                    }
                    // Still open and active: one incident per checkpoint, however many slots pass.
                    Some(_) => {}
                }
            }
            self.plan(i);
        }
    }

    /// A `checkpoint_scanned` event of `device` (its id when the event names no checkpoint) seen at
    /// `now`; returns whether it named a known checkpoint. Returns the checkpoint's open incident.
    pub fn on_event(&mut self, event: &Event, device: &str, now: i64, out: &mut Vec<Change>) -> bool {
        if event.kind != SCANNED {
            return false;
        }
        let id = event.attributes.get("checkpoint").and_then(|v| v.as_str()).unwrap_or(device);
        let officer = event.attributes.get("officer").and_then(|v| v.as_str()).unwrap_or_default();
        self.scan(id, officer, event.ts, now, out)
    }

    /// Records a scan of checkpoint `id` by `officer` at `at`, seen at `now`; returns false for an
    /// unknown checkpoint.
    pub fn scan(&mut self, id: &str, officer: &str, at: i64, now: i64, out: &mut Vec<Change>) -> bool {
        let Some(&i) = self.index.get(id) else { return false };
        let w = &mut self.watch[i];
        if w.recent.len() >= RECENT {
            w.recent.pop_front();
        }
        w.recent.push_back(at);
        if self.scans.len() >= SCANS_KEPT {
            self.scans.pop_front();
        }
        self.scans.push_back(Scan { checkpoint: i, officer: officer.to_owned(), at });
        let note = Some(format!("scanned by {}", if officer.is_empty() { "unknown" } else { officer }));
        match w.open {
            Some((id, State::ActiveUnacked)) => {
                w.open = Some((id, State::ReturnedUnacked));
                out.push(Change::Update(update(id, now, "returned", State::ReturnedUnacked, note)));
            }
            Some((id, State::ActiveAcked)) => {
                w.open = None;
                out.push(Change::Update(update(id, now, "returned", State::Normal, note)));
                out.push(Change::Update(update(id, now, "closed", State::Normal, None)));
            }
            _ => {}
        }
        true
    }

    /// An operator acknowledges (`close = false`) or closes missed-patrol incident `id`; `None` when
    /// the tracker does not own it.
    pub fn act(&mut self, id: i64, close: bool, who: &str, now: i64, out: &mut Vec<Change>) -> Option<Acted> {
        let w = self.watch.iter_mut().find(|w| w.open.is_some_and(|(o, _)| o == id))?;
        let (_, state) = w.open?;
        let mut acked = update(id, now, "acked", State::ActiveAcked, None);
        acked.who = Some(who.to_owned());
        Some(match (state, close) {
            (State::ActiveUnacked, false) => {
                w.open = Some((id, State::ActiveAcked));
                out.push(Change::Update(acked));
                Acted::Done
            }
            (State::ActiveAcked, false) => Acted::Done,
            (State::ActiveUnacked | State::ActiveAcked, true) => Acted::StillActive,
            (State::ReturnedUnacked, _) => {
                w.open = None;
                acked.state = Some(State::Normal);
                out.push(Change::Update(acked));
                let mut closed = update(id, now, "closed", State::Normal, None);
                closed.who = Some(who.to_owned());
                out.push(Change::Update(closed));
                Acted::Done
            }
            (State::Normal, _) => Acted::NotOpen,
        })
    }

    /// Coverage of the checkpoints of `grid` from `from` to `to` (UTC ns), as judged at `now`.
    pub fn coverage(&self, grid: &str, roster: Option<&Roster>, from: i64, to: i64, now: i64) -> Coverage {
        let scans: Vec<(&Checkpoint, &Scan)> =
            self.scans.iter().map(|s| (&self.checkpoints[s.checkpoint], s)).filter(|(c, _)| c.grid == grid).collect();
        let cps: Vec<&Checkpoint> = self.checkpoints.iter().filter(|c| c.grid == grid).collect();
        coverage(&cps, &scans, roster, self.tz, from, to.min(now))
    }

    /// Computes when the next slot of checkpoint `i` ends.
    fn plan(&mut self, i: usize) {
        let w = &self.watch[i];
        let from = w.judged_until;
        let next =
            self.checkpoints[i].slots(self.tz, from, from.saturating_add(WEEK)).first().map_or(i64::MAX, |s| s.end);
        self.watch[i].next_end = next;
        self.next_check = self.watch.iter().map(|w| w.next_end).min().unwrap_or(i64::MAX);
    }
}

const WEEK: i64 = 8 * 86_400 * 1_000_000_000;

fn missed(id: i64, cp: &Checkpoint, slot: Slot, tz: Tz) -> NewIncident {
    let hm = |t: i64| local_of(tz, t).format("%H:%M").to_string();
    NewIncident {
        id,
        at: slot.end,
        rule: RULE.into(),
        title: "Patrol checkpoint not scanned".into(),
        category: CATEGORY.into(),
        severity: Severity::Minor,
        state: State::ActiveUnacked,
        device: cp.id.clone(),
        grid: cp.grid.clone(),
        point: String::new(),
        value: f64::NAN,
        message: format!(
            "巡检点 {} 在 {}–{} 未巡检 (checkpoint {} not scanned from {} to {})",
            cp.name,
            hm(slot.start),
            hm(slot.end),
            cp.id,
            hm(slot.start),
            hm(slot.end)
        ),
        plan: String::new(),
    }
}

fn update(id: i64, at: i64, kind: &'static str, state: State, note: Option<String>) -> IncidentUpdate {
    IncidentUpdate {
        id,
        at,
        kind,
        state: Some(state),
        severity: None,
        value: None,
        peak: None,
        who: None,
        note,
        shelved_until: None,
    }
}

/// Slots due, scanned and missed, and the share scanned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub due: u32,
    pub scanned: u32,
    pub missed: u32,
    /// scanned / due × 100, one decimal; absent when nothing was due.
    pub coverage_pct: Option<f64>,
}

impl Counts {
    fn add(&mut self, scanned: bool) {
        self.due += 1;
        if scanned {
            self.scanned += 1;
        } else {
            self.missed += 1;
        }
        self.coverage_pct = Some((f64::from(self.scanned) * 1000.0 / f64::from(self.due)).round() / 10.0);
    }
}

/// What one officer did in a shift.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OfficerCounts {
    /// Scans made.
    pub scans: u32,
    /// Due slots this officer's scan covered first.
    pub slots: u32,
}

/// Coverage within one shift instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShiftCoverage {
    /// Shift id; absent when the grid has no roster (the whole period is one line).
    pub shift: Option<String>,
    pub shift_name: Option<String>,
    /// Local date the shift started on.
    pub date: Option<String>,
    /// UTC ns.
    pub start: i64,
    pub end: i64,
    /// Person ids on duty by the roster.
    pub on_duty: Vec<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// By officer id (as the scans name them).
    pub officers: BTreeMap<String, OfficerCounts>,
}

/// Patrol coverage of a grid over a period; the default is a grid with no checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coverage {
    #[serde(flatten)]
    pub total: Counts,
    /// By checkpoint id.
    pub checkpoints: BTreeMap<String, Counts>,
    pub shifts: Vec<ShiftCoverage>,
}

/// Coverage of `checkpoints` by `scans` over the slots that end within `(from, to]`, per shift of
/// `roster` (the shift on duty when a slot starts) and per officer.
pub fn coverage(
    checkpoints: &[&Checkpoint],
    scans: &[(&Checkpoint, &Scan)],
    roster: Option<&Roster>,
    tz: Tz,
    from: i64,
    to: i64,
) -> Coverage {
    let mut shifts: Vec<ShiftCoverage> = match roster {
        Some(r) if to > from => shifts_between(r, tz, from, to)
            .into_iter()
            .map(|d| ShiftCoverage {
                shift: Some(d.shift),
                shift_name: Some(d.shift_name),
                date: Some(d.date.to_string()),
                start: d.start,
                end: d.end,
                on_duty: d.people,
                counts: Counts::default(),
                officers: BTreeMap::new(),
            })
            .collect(),
        _ => vec![ShiftCoverage {
            shift: None,
            shift_name: None,
            date: None,
            start: from,
            end: to,
            on_duty: Vec::new(),
            counts: Counts::default(),
            officers: BTreeMap::new(),
        }],
    };
    let shift_of = |t: i64, shifts: &[ShiftCoverage]| shifts.iter().position(|s| s.start <= t && t < s.end);
    let mut total = Counts::default();
    let mut by_checkpoint = BTreeMap::new();
    for (cp, s) in scans {
        if s.at > from && s.at <= to && checkpoints.iter().any(|c| c.id == cp.id) {
            if let Some(k) = shift_of(s.at, &shifts) {
                shifts[k].officers.entry(s.officer.clone()).or_default().scans += 1;
            }
        }
    }
    for cp in checkpoints {
        let counts: &mut Counts = by_checkpoint.entry(cp.id.clone()).or_default();
        for slot in cp.slots(tz, from, to) {
            let first = scans
                .iter()
                .filter(|(c, s)| c.id == cp.id && slot.start <= s.at && s.at < slot.end)
                .min_by_key(|(_, s)| s.at)
                .map(|(_, s)| s.officer.clone());
            counts.add(first.is_some());
            total.add(first.is_some());
            // Slots that started before the period belong to its first shift.
            let k = shift_of(slot.start.max(from), &shifts).unwrap_or(0);
            if let Some(sc) = shifts.get_mut(k) {
                sc.counts.add(first.is_some());
                if let Some(o) = first {
                    sc.officers.entry(o).or_default().slots += 1;
                }
            }
        }
    }
    Coverage { total, checkpoints: by_checkpoint, shifts }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDateTime;

    use super::*;

    const TZ: Tz = chrono_tz::Asia::Shanghai;
    const H: i64 = 3600 * 1_000_000_000;

    /// UTC ns of a local time in Shanghai.
    fn at(local: &str) -> i64 {
        local_to_ns(TZ, NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").unwrap())
    }

    fn checkpoint(text: &str) -> Checkpoint {
        let c: crate::config::Checkpoint = toml::from_str(text).unwrap();
        Checkpoint::from_config("g1", &c).unwrap()
    }

    fn opened(out: &[Change]) -> Vec<(i64, String, i64)> {
        out.iter()
            .filter_map(|c| match c {
                Change::Open(n) => Some((n.id, n.device.clone(), n.at)),
                Change::Update(_) => None,
            })
            .collect()
    }

    fn updates(out: &[Change]) -> Vec<(i64, &'static str, Option<State>)> {
        out.iter()
            .filter_map(|c| match c {
                Change::Update(u) => Some((u.id, u.kind, u.state)),
                Change::Open(_) => None,
            })
            .collect()
    }

    #[test]
    fn slots_follow_the_interval_from_midnight_and_the_windows() {
        let every = checkpoint(
            r#"id = "a"
            every = "4h""#,
        );
        let s = every.slots(TZ, at("2026-06-03 07:00"), at("2026-06-03 16:00"));
        assert_eq!(
            s,
            [
                Slot { start: at("2026-06-03 04:00"), end: at("2026-06-03 08:00") },
                Slot { start: at("2026-06-03 08:00"), end: at("2026-06-03 12:00") },
                Slot { start: at("2026-06-03 12:00"), end: at("2026-06-03 16:00") }
            ]
        );
        // A night window across midnight; its last slot ends with the window.
        let night = checkpoint(
            r#"id = "b"
            windows = [{ from = "20:00", to = "07:00", every = "4h" }]"#,
        );
        let s = night.slots(TZ, at("2026-06-03 12:00"), at("2026-06-04 12:00"));
        let ends: Vec<i64> = s.iter().map(|s| s.end).collect();
        assert_eq!(ends, [at("2026-06-04 00:00"), at("2026-06-04 04:00"), at("2026-06-04 07:00")]);
    }

    #[test]
    fn an_unscanned_checkpoint_raises_one_incident_and_a_scan_returns_it() {
        let cp = checkpoint(
            r#"id = "cp-1"
            every = "2h""#,
        );
        let mut t = Tracker::new(vec![cp], TZ, at("2026-06-03 10:00"));
        let mut ids = 100..;
        let mut next = || ids.next().unwrap();
        let mut out = Vec::new();
        t.tick(at("2026-06-03 11:59"), &mut next, &mut out);
        assert!(out.is_empty(), "not due yet: {out:?}");
        t.tick(at("2026-06-03 12:00"), &mut next, &mut out);
        assert_eq!(opened(&out), [(100, "cp-1".to_owned(), at("2026-06-03 12:00"))]);
        if let Change::Open(n) = &out[0] {
            assert_eq!((n.rule.as_str(), n.category.as_str(), n.grid.as_str()), (RULE, CATEGORY, "g1"));
        }
        // Further unscanned slots keep the one incident.
        for time in ["2026-06-03 14:00", "2026-06-03 16:00", "2026-06-03 18:00"] {
            t.tick(at(time), &mut next, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        // A scan returns it; the supervisor's acknowledgement closes it.
        assert!(t.scan("cp-1", "wang", at("2026-06-03 18:30"), at("2026-06-03 18:30"), &mut out));
        assert_eq!(updates(&out[1..]), [(100, "returned", Some(State::ReturnedUnacked))]);
        assert_eq!(t.act(100, false, "li", at("2026-06-03 18:40"), &mut out), Some(Acted::Done));
        assert_eq!(updates(&out[2..]), [(100, "acked", Some(State::Normal)), (100, "closed", Some(State::Normal))]);
        assert!(!t.owns(100));
        // The slot 18:00–20:00 was scanned: nothing new at 20:00; the next unscanned one opens a new incident.
        t.tick(at("2026-06-03 20:00"), &mut next, &mut out);
        assert_eq!(out.len(), 4);
        t.tick(at("2026-06-03 22:00"), &mut next, &mut out);
        assert_eq!(opened(&out[4..]), [(101, "cp-1".to_owned(), at("2026-06-03 22:00"))]);
        assert!(!t.scan("cp-unknown", "wang", at("2026-06-03 22:10"), at("2026-06-03 22:10"), &mut out));
    }

    #[test]
    fn a_scanned_checkpoint_raises_nothing_and_an_acked_incident_closes_on_its_scan() {
        let cp = checkpoint(
            r#"id = "cp-1"
            windows = [{ from = "20:00", to = "08:00", every = "2h" }]"#,
        );
        let mut t = Tracker::new(vec![cp], TZ, at("2026-06-03 12:00"));
        let mut ids = 1..;
        let mut next = || ids.next().unwrap();
        let mut out = Vec::new();
        // Outside the window nothing is due.
        t.tick(at("2026-06-03 20:00"), &mut next, &mut out);
        assert!(out.is_empty());
        t.scan("cp-1", "wang", at("2026-06-03 21:00"), at("2026-06-03 21:00"), &mut out);
        t.tick(at("2026-06-03 22:00"), &mut next, &mut out);
        assert!(out.is_empty(), "{out:?}");
        t.tick(at("2026-06-04 00:00"), &mut next, &mut out);
        assert_eq!(opened(&out), [(1, "cp-1".to_owned(), at("2026-06-04 00:00"))]);
        assert_eq!(t.act(1, true, "li", at("2026-06-04 00:05"), &mut out), Some(Acted::StillActive));
        assert_eq!(t.act(1, false, "li", at("2026-06-04 00:05"), &mut out), Some(Acted::Done));
        t.scan("cp-1", "wang", at("2026-06-04 00:30"), at("2026-06-04 00:30"), &mut out);
        assert_eq!(
            updates(&out),
            [
                (1, "acked", Some(State::ActiveAcked)),
                (1, "returned", Some(State::Normal)),
                (1, "closed", Some(State::Normal))
            ]
        );
        assert_eq!(t.act(1, false, "li", at("2026-06-04 00:40"), &mut out), None, "no longer owned");
    }

    #[test]
    fn restored_incidents_are_returned_by_the_next_scan() {
        let cp = checkpoint(
            r#"id = "cp-1"
            every = "2h""#,
        );
        let mut t = Tracker::new(vec![cp], TZ, at("2026-06-03 10:00"));
        let open = |id: i64, device: &str| OpenIncident {
            id,
            rule: RULE.into(),
            device: device.into(),
            state: State::ActiveUnacked,
            severity: Severity::Minor,
            shelved_until: None,
            peak: f64::NAN,
        };
        assert_eq!(t.restore(&[open(7, "cp-1"), open(8, "cp-gone")]), [8]);
        let mut out = Vec::new();
        t.tick(at("2026-06-03 12:00"), &mut || 99, &mut out);
        assert!(out.is_empty(), "the restored incident stays the one incident: {out:?}");
        t.scan("cp-1", "wang", at("2026-06-03 12:10"), at("2026-06-03 12:10"), &mut out);
        assert_eq!(updates(&out), [(7, "returned", Some(State::ReturnedUnacked))]);
    }

    /// Day 08–20 and night 20–08; checkpoint A every 4 h, B in a night window every 6 h, from
    /// Wednesday 08:00 to Thursday 08:00.
    ///
    /// | slot (A)    | first scan   | shift | | slot (B)    | first scan  | shift |
    /// |-------------|--------------|-------| |-------------|-------------|-------|
    /// | 08–12       | 09:00 zhang  | day   | | 20–02       | 23:00 wang  | night |
    /// | 12–16       | 13:00 zhang  | day   | | 02–08       | —           | night |
    /// | 16–20       | —            | day   |
    /// | 20–24       | 21:00 wang   | night |
    /// | 00–04       | —            | night |
    /// | 04–08       | 05:00 wang   | night |
    ///
    /// li also scans A at 13:30 (a slot zhang covered already). Day: 3 due, 2 scanned, 66.7 %; night:
    /// 5 due, 3 scanned, 60 %; in all 8 due, 5 scanned, 62.5 %; A 4 of 6 (66.7 %), B 1 of 2 (50 %).
    #[test]
    fn coverage_matches_the_table_worked_by_hand() {
        let a = checkpoint(
            r#"id = "A"
            every = "4h""#,
        );
        let b = checkpoint(
            r#"id = "B"
            windows = [{ from = "20:00", to = "08:00", every = "6h" }]"#,
        );
        let roster: crate::config::Roster = toml::from_str(
            r#"grid = "g1"
            shifts = [{ id = "day", from = "08:00", to = "20:00" }, { id = "night", from = "20:00", to = "08:00" }]
            weekly = [{ days = ["wed"], shift = "day", people = ["zhang", "li"] },
                      { days = ["wed"], shift = "night", people = ["wang"] }]"#,
        )
        .unwrap();
        let roster = Roster::from_config(&roster).unwrap();
        let (from, to) = (at("2026-06-03 08:00"), at("2026-06-04 08:00"));
        let mut t = Tracker::new(vec![a, b], TZ, from - H);
        let mut out = Vec::new();
        for (cp, who, time) in [
            ("A", "zhang", "2026-06-03 09:00"),
            ("A", "zhang", "2026-06-03 13:00"),
            ("A", "li", "2026-06-03 13:30"),
            ("A", "wang", "2026-06-03 21:00"),
            ("B", "wang", "2026-06-03 23:00"),
            ("A", "wang", "2026-06-04 05:00"),
        ] {
            assert!(t.scan(cp, who, at(time), at(time), &mut out));
        }
        let c = t.coverage("g1", Some(&roster), from, to, to);
        let counts = |due, scanned, pct| Counts { due, scanned, missed: due - scanned, coverage_pct: Some(pct) };
        assert_eq!(c.total, counts(8, 5, 62.5));
        assert_eq!(c.checkpoints["A"], counts(6, 4, 66.7));
        assert_eq!(c.checkpoints["B"], counts(2, 1, 50.0));
        assert_eq!(c.shifts.len(), 2);
        let (day, night) = (&c.shifts[0], &c.shifts[1]);
        assert_eq!((day.shift.as_deref(), day.date.as_deref()), (Some("day"), Some("2026-06-03")));
        assert_eq!(day.on_duty, ["zhang", "li"]);
        assert_eq!(day.counts, counts(3, 2, 66.7));
        assert_eq!(day.officers["zhang"], OfficerCounts { scans: 2, slots: 2 });
        assert_eq!(day.officers["li"], OfficerCounts { scans: 1, slots: 0 });
        assert_eq!(night.counts, counts(5, 3, 60.0));
        assert_eq!(night.officers["wang"], OfficerCounts { scans: 3, slots: 3 });
        // Asked before the period ends, only the slots that ended count.
        let part = t.coverage("g1", Some(&roster), from, to, at("2026-06-03 16:00"));
        assert_eq!(part.total, counts(2, 2, 100.0));
        // Another grid has nothing due.
        assert_eq!(t.coverage("g2", None, from, to, to).total, Counts::default());
    }
}
