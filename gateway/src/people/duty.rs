//! Who is on duty: a pure function of a grid's roster, the site's time zone and an instant.
//!
//! A shift belongs to the local date it starts on, so at 03:00 on a Monday the night shift on duty is
//! Sunday's, staffed as the weekly pattern says for Sunday (or as a dated override for that Sunday
//! says). Shifts are laid on local wall time and converted to UTC instant by instant, so a shift in a
//! zone with daylight saving time is an hour shorter or longer on the nights the clocks change.

use std::collections::HashMap;

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use crate::config::validate::parse_hhmm;
use crate::config::WEEKDAYS;

/// One shift of a roster, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftDef {
    pub id: String,
    /// For people; the id when the config names none.
    pub name: String,
    /// Local start, minutes after midnight.
    pub from: u32,
    /// Length, minutes (up to 24 h).
    pub len: u32,
}

/// A grid's roster, resolved from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    shifts: Vec<ShiftDef>,
    /// Per shift, per weekday (Monday first): person ids.
    weekly: Vec<[Vec<String>; 7]>,
    /// (date, shift index) → person ids and why.
    overrides: HashMap<(NaiveDate, usize), (Vec<String>, Option<String>)>,
}

/// Who is on duty in a grid during one shift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duty {
    /// Shift id.
    pub shift: String,
    /// Shift name for people.
    pub shift_name: String,
    /// Local date the shift started on.
    pub date: NaiveDate,
    /// Start, UTC ns.
    pub start: i64,
    /// End, UTC ns (exclusive).
    pub end: i64,
    /// Person ids on duty, in roster order.
    pub people: Vec<String>,
    /// The reason of the dated override that staffs this shift, when one does.
    pub overridden: Option<String>,
}

impl Roster {
    /// Resolves a roster of the config; `None` when its shifts do not parse (validation refuses that).
    pub fn from_config(r: &crate::config::Roster) -> Option<Self> {
        let mut shifts = Vec::with_capacity(r.shifts.len());
        for s in &r.shifts {
            let (from, to) = (parse_hhmm(&s.from)?, parse_hhmm(&s.to)?);
            let len = if to > from { to - from } else { to + 1440 - from };
            shifts.push(ShiftDef { id: s.id.clone(), name: s.name.clone().unwrap_or_else(|| s.id.clone()), from, len });
        }
        if shifts.is_empty() {
            return None;
        }
        let index = |id: &str| shifts.iter().position(|s| s.id == id);
        let mut weekly: Vec<[Vec<String>; 7]> = vec![Default::default(); shifts.len()];
        for w in &r.weekly {
            let Some(si) = index(&w.shift) else { continue };
            for d in &w.days {
                let Some(di) = WEEKDAYS.iter().position(|x| x == d) else { continue };
                for p in &w.people {
                    if !weekly[si][di].contains(p) {
                        weekly[si][di].push(p.clone());
                    }
                }
            }
        }
        let mut overrides = HashMap::new();
        for o in &r.overrides {
            let (Some(si), Ok(date)) = (index(&o.shift), NaiveDate::parse_from_str(&o.date, "%Y-%m-%d")) else {
                continue;
            };
            overrides.insert((date, si), (o.people.clone(), Some(o.reason.clone().unwrap_or_default())));
        }
        Some(Self { shifts, weekly, overrides })
    }

    /// The shifts, in the config's order.
    pub fn shifts(&self) -> &[ShiftDef] {
        &self.shifts
    }
}

/// Who is on duty under `roster` at `at` (UTC ns), with shift times taken in `tz`.
pub fn on_duty(roster: &Roster, tz: Tz, at: i64) -> Duty {
    let today = local_of(tz, at).date();
    // The shift on duty is the one that started last: shifts tile the day, so it has not ended yet.
    // Yesterday's shifts are candidates too (a night shift that started before midnight).
    let mut best: Option<(i64, usize, NaiveDate)> = None;
    for date in [today - Duration::days(1), today] {
        for (i, s) in roster.shifts.iter().enumerate() {
            let start = local_to_ns(tz, date.and_hms_opt(0, 0, 0).unwrap_or_default() + minutes(s.from));
            if start <= at && best.is_none_or(|(b, _, _)| start > b) {
                best = Some((start, i, date));
            }
        }
    }
    // Shifts are non-empty, so yesterday's first one always started before `at`.
    let (start, i, date) = best.unwrap_or((at, 0, today));
    instance(roster, tz, i, date, start)
}

/// The shift instances (with their people) that overlap `[from, to)`, in order.
pub fn shifts_between(roster: &Roster, tz: Tz, from: i64, to: i64) -> Vec<Duty> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let d = on_duty(roster, tz, at);
        // A zero-length instance (a shift swallowed by a clock change) cannot stall the walk.
        at = d.end.max(at + 1);
        out.push(d);
    }
    out
}

fn instance(roster: &Roster, tz: Tz, i: usize, date: NaiveDate, start: i64) -> Duty {
    let s = &roster.shifts[i];
    let end = local_to_ns(tz, date.and_hms_opt(0, 0, 0).unwrap_or_default() + minutes(s.from + s.len));
    let weekday = date.weekday().num_days_from_monday() as usize;
    let (people, overridden) = match roster.overrides.get(&(date, i)) {
        Some((people, reason)) => (people.clone(), reason.clone()),
        None => (roster.weekly[i][weekday].clone(), None),
    };
    Duty { shift: s.id.clone(), shift_name: s.name.clone(), date, start, end, people, overridden }
}

fn minutes(m: u32) -> Duration {
    Duration::minutes(i64::from(m))
}

/// The local wall time of `at` (UTC ns) in `tz`.
pub fn local_of(tz: Tz, at: i64) -> NaiveDateTime {
    tz.from_utc_datetime(&chrono::DateTime::from_timestamp_nanos(at).naive_utc()).naive_local()
}

/// The instant (UTC ns) of local wall time `t` in `tz`. A time repeated when clocks go back is taken
/// the first time; a time skipped when they go forward is taken as the moment clocks resume.
pub fn local_to_ns(tz: Tz, t: NaiveDateTime) -> i64 {
    let ns = |d: chrono::DateTime<Tz>| d.timestamp_nanos_opt().unwrap_or(i64::MAX);
    match tz.from_local_datetime(&t) {
        LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => ns(d),
        LocalResult::None => {
            // Walk forward to the first wall time that exists (gaps are at most a few hours).
            (1..=24 * 4)
                .find_map(|q| tz.from_local_datetime(&(t + Duration::minutes(15 * q))).earliest())
                .map_or_else(|| t.and_utc().timestamp_nanos_opt().unwrap_or(i64::MAX), ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHANGHAI: Tz = chrono_tz::Asia::Shanghai;

    fn roster() -> Roster {
        let text = r#"
            grid = "g1"
            shifts = [
              { id = "day", name = "白班", from = "08:00", to = "20:00" },
              { id = "night", name = "夜班", from = "20:00", to = "08:00" },
            ]
            weekly = [
              { days = ["mon", "tue", "wed", "thu", "fri"], shift = "day", people = ["zhang"] },
              { days = ["sat", "sun"], shift = "day", people = ["li"] },
              { days = ["mon", "tue", "wed", "thu", "fri", "sat"], shift = "night", people = ["wang"] },
              { days = ["sun"], shift = "night", people = ["zhao", "wang"] },
            ]
            overrides = [
              { date = "2026-10-01", shift = "day", people = ["chen"], reason = "国庆值班" },
            ]
        "#;
        let r: crate::config::Roster = toml::from_str(text).unwrap();
        Roster::from_config(&r).unwrap()
    }

    /// UTC ns of a local time in Shanghai.
    fn at(local: &str) -> i64 {
        let t = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").unwrap();
        local_to_ns(SHANGHAI, t)
    }

    fn check(local: &str, shift: &str, date: &str, people: &[&str], start: &str, end: &str) {
        let d = on_duty(&roster(), SHANGHAI, at(local));
        assert_eq!(
            (d.shift.as_str(), d.date.to_string(), d.people.clone(), d.start, d.end),
            (shift, date.to_owned(), people.iter().map(|s| s.to_string()).collect::<Vec<_>>(), at(start), at(end)),
            "at {local}"
        );
    }

    #[test]
    fn across_midnight_the_night_shift_of_the_evening_before_is_on_duty() {
        // 2026-06-03 is a Wednesday.
        check("2026-06-03 19:59", "day", "2026-06-03", &["zhang"], "2026-06-03 08:00", "2026-06-03 20:00");
        check("2026-06-03 20:00", "night", "2026-06-03", &["wang"], "2026-06-03 20:00", "2026-06-04 08:00");
        check("2026-06-03 23:59", "night", "2026-06-03", &["wang"], "2026-06-03 20:00", "2026-06-04 08:00");
        check("2026-06-04 00:00", "night", "2026-06-03", &["wang"], "2026-06-03 20:00", "2026-06-04 08:00");
        check("2026-06-04 07:59", "night", "2026-06-03", &["wang"], "2026-06-03 20:00", "2026-06-04 08:00");
        check("2026-06-04 08:00", "day", "2026-06-04", &["zhang"], "2026-06-04 08:00", "2026-06-04 20:00");
    }

    #[test]
    fn across_the_week_boundary_sundays_night_shift_runs_into_monday() {
        // 2026-06-07 is a Sunday, 2026-06-08 a Monday.
        check("2026-06-07 12:00", "day", "2026-06-07", &["li"], "2026-06-07 08:00", "2026-06-07 20:00");
        check("2026-06-08 03:00", "night", "2026-06-07", &["zhao", "wang"], "2026-06-07 20:00", "2026-06-08 08:00");
        check("2026-06-08 08:00", "day", "2026-06-08", &["zhang"], "2026-06-08 08:00", "2026-06-08 20:00");
        // Saturday night into Sunday morning is Saturday's.
        check("2026-06-07 02:00", "night", "2026-06-06", &["wang"], "2026-06-06 20:00", "2026-06-07 08:00");
    }

    #[test]
    fn a_dated_override_replaces_one_shift_of_one_day() {
        // 2026-10-01 is a Thursday: zhang's day shift, replaced for the National Day holiday.
        let d = on_duty(&roster(), SHANGHAI, at("2026-10-01 09:00"));
        assert_eq!(d.people, ["chen"]);
        assert_eq!(d.overridden.as_deref(), Some("国庆值班"));
        // The night shift of the same date and the next day's shift keep the weekly pattern.
        check("2026-10-01 21:00", "night", "2026-10-01", &["wang"], "2026-10-01 20:00", "2026-10-02 08:00");
        check("2026-10-02 09:00", "day", "2026-10-02", &["zhang"], "2026-10-02 08:00", "2026-10-02 20:00");
    }

    #[test]
    fn a_zone_without_daylight_saving_time_keeps_every_shift_twelve_hours() {
        // Shanghai has no DST: every day of the year, each shift is exactly 12 h.
        let mut t = at("2026-01-01 00:00");
        let end = at("2027-01-01 00:00");
        while t < end {
            let d = on_duty(&roster(), SHANGHAI, t);
            assert_eq!(d.end - d.start, 12 * 3600 * 1_000_000_000, "at {}", local_of(SHANGHAI, t));
            assert!(d.start <= t && t < d.end);
            t = d.end;
        }
    }

    #[test]
    fn where_clocks_change_the_night_shift_is_an_hour_shorter() {
        // Berlin springs forward at 02:00 on 2026-03-29: that night shift lasts 11 h.
        let berlin = chrono_tz::Europe::Berlin;
        let t = |s: &str| local_to_ns(berlin, NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap());
        let d = on_duty(&roster(), berlin, t("2026-03-29 03:30"));
        assert_eq!((d.shift.as_str(), d.date.to_string()), ("night", "2026-03-28".to_owned()));
        assert_eq!(d.end - d.start, 11 * 3600 * 1_000_000_000);
    }

    #[test]
    fn shifts_between_lists_each_instance_once() {
        let list = shifts_between(&roster(), SHANGHAI, at("2026-06-03 07:00"), at("2026-06-04 09:00"));
        let names: Vec<(String, String)> = list.iter().map(|d| (d.shift.clone(), d.date.to_string())).collect();
        assert_eq!(
            names,
            [
                ("night".to_owned(), "2026-06-02".to_owned()),
                ("day".to_owned(), "2026-06-03".to_owned()),
                ("night".to_owned(), "2026-06-03".to_owned()),
                ("day".to_owned(), "2026-06-04".to_owned()),
            ]
        );
    }
}
