//! The park's safety organisation in the config: people, who answers for each grid, patrol
//! checkpoints, duty rosters and emergency plans (预案), with their validation.
//!
//! Times of day are local `HH:MM` in `site.timezone`; intervals are `30m`, `2h` or `1h30m`. Validation
//! names the key path of every problem, like the rest of `validate.rs`.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::validate::parse_hhmm;
use super::Config;

/// A person of the safety organisation: an officer, a grid supervisor (网格长), the safety manager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Short identifier, referred to by grids, rosters and the site.
    pub id: String,
    /// Full name as colleagues know it, e.g. `张伟`.
    pub name: String,
    /// Mobile number (digits, optionally a leading `+`); used for SMS and for @-mentions in group chats.
    pub mobile: String,
    /// Mail address; without it the person gets no mail.
    #[serde(default)]
    pub email: Option<String>,
    /// WeCom (企业微信) user id, for `<@userid>` mentions.
    #[serde(default)]
    pub wecom_user: Option<String>,
    /// Feishu (飞书) user id, for `<at user_id="…">` mentions.
    #[serde(default)]
    pub feishu_user: Option<String>,
    /// Language of the messages this person receives; the site's default (Chinese) when absent.
    #[serde(default)]
    pub lang: Option<Lang>,
}

/// The language of messages to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Chinese (the default).
    #[default]
    Zh,
    /// English.
    En,
}

/// A patrol checkpoint of a grid: a tag or reader an officer scans on rounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Identifier, unique in the site; `checkpoint_scanned` events carry it in their `checkpoint`
    /// attribute.
    pub id: String,
    /// Where it is, for people: `B11 配电房门口`.
    #[serde(default)]
    pub name: Option<String>,
    /// Required interval between scans (`30m`, `2h`, `1h30m`). Without `windows` it applies round
    /// the clock in slots from local midnight; with `windows` it is the interval of every window that
    /// names none.
    #[serde(default)]
    pub every: Option<String>,
    /// Time windows (local) in which the checkpoint must be scanned; outside them nothing is due.
    #[serde(default)]
    pub windows: Vec<PatrolWindow>,
}

/// A local time window with its own patrol interval, e.g. the night round.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatrolWindow {
    /// Start, local `HH:MM`.
    pub from: String,
    /// End, local `HH:MM`; at or before `from` means the next day (`20:00`–`08:00`).
    pub to: String,
    /// Interval within the window; the checkpoint's `every` when absent.
    #[serde(default)]
    pub every: Option<String>,
}

/// Who is on duty in one grid: its shifts, a weekly pattern and dated exceptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    /// Id of the grid.
    pub grid: String,
    /// Shifts that together cover each day exactly once, without gaps or overlaps.
    pub shifts: Vec<Shift>,
    /// Who works which shift on which weekday.
    #[serde(default)]
    pub weekly: Vec<WeeklyDuty>,
    /// Dated exceptions (holidays, swaps) that replace the weekly pattern for one shift of one day.
    #[serde(default)]
    pub overrides: Vec<DutyOverride>,
}

/// One shift of a day, in local time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// Identifier within the roster: `day`, `night`.
    pub id: String,
    /// For people: `白班`, `夜班`.
    #[serde(default)]
    pub name: Option<String>,
    /// Start, local `HH:MM`.
    pub from: String,
    /// End, local `HH:MM`; at or before `from` means the next day. A shift belongs to the day it
    /// starts on (the night shift of Sunday ends on Monday morning).
    pub to: String,
}

/// A line of the weekly pattern: these people work this shift on these weekdays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklyDuty {
    /// Weekdays: `mon` … `sun`.
    pub days: Vec<String>,
    /// Shift id.
    pub shift: String,
    /// Person ids.
    pub people: Vec<String>,
}

/// One shift of one date staffed otherwise than the weekly pattern says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DutyOverride {
    /// Local date the shift starts on, `YYYY-MM-DD`.
    pub date: String,
    /// Shift id.
    pub shift: String,
    /// Person ids on duty instead (empty: nobody, e.g. a closed site on a holiday).
    pub people: Vec<String>,
    /// Why, for people: `国庆值班`, `swap with 李娜`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An emergency plan (应急预案) that rules name by id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Identifier, as rules name it in `plan:`.
    pub id: String,
    /// Title: `电气火灾应急处置`.
    pub title: String,
    /// The steps in order; they are numbered from 1 where shown.
    pub steps: Vec<String>,
}

/// The weekday names of [`WeeklyDuty::days`], Monday first.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses an interval like `30m`, `2h` or `1h30m` into minutes (at least 1, at most a week).
pub fn parse_interval(s: &str) -> Option<u32> {
    let mut minutes: u32 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u32 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (mult, len) = if rest.starts_with("min") {
            (1, 3)
        } else if rest.starts_with('m') {
            (1, 1)
        } else if rest.starts_with('h') {
            (60, 1)
        } else {
            return None;
        };
        minutes = minutes.checked_add(n.checked_mul(mult)?)?;
        rest = &rest[len..];
    }
    (1..=7 * 24 * 60).contains(&minutes).then_some(minutes)
}

/// Checks the people, grids' staff and checkpoints, rosters and plans; `push(path, message)` takes
/// every problem found.
pub(super) fn validate(config: &Config, push: &mut dyn FnMut(String, String)) {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().count() <= 64
            && s.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    let bad_id = |s: &str| format!("{s:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'");
    let mut people = HashSet::new();
    for (i, person) in config.people.iter().enumerate() {
        let at = format!("people[{i}]");
        if !ident(&person.id) {
            push(format!("{at}.id"), bad_id(&person.id));
        } else if !people.insert(person.id.as_str()) {
            push(format!("{at}.id"), format!("duplicate person id {:?}; expected each person once", person.id));
        }
        if person.name.trim().is_empty() {
            push(format!("{at}.name"), "empty; expected the person's name".into());
        }
        let digits = person.mobile.strip_prefix('+').unwrap_or(&person.mobile);
        if !(5..=20).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
            push(
                format!("{at}.mobile"),
                format!("{:?}; expected 5 to 20 digits, optionally after '+', like \"13800138000\"", person.mobile),
            );
        }
        if let Some(e) = &person.email {
            let ok = e.split_once('@').is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !e.contains(' '));
            if !ok {
                push(format!("{at}.email"), format!("{e:?}; expected a mail address like \"zhang.wei@park.cn\""));
            }
        }
    }
    let mut known_people: Vec<&str> = config.people.iter().map(|p| p.id.as_str()).collect();
    known_people.sort_unstable();
    let list = known_list(&known_people);
    let check_person = |id: &str, path: String, push: &mut dyn FnMut(String, String)| {
        if !people.contains(id) {
            push(path, format!("person {id:?} is not defined in [[people]] (known people: {list})"));
        }
    };

    if let Some(m) = &config.site.safety_manager {
        check_person(m, "site.safety_manager".into(), push);
    }

    let mut checkpoints = HashSet::new();
    for (i, g) in config.grids.iter().enumerate() {
        let at = format!("grids[{i}]");
        if let Some(s) = &g.supervisor {
            check_person(s, format!("{at}.supervisor"), push);
        }
        for (j, o) in g.officers.iter().enumerate() {
            check_person(o, format!("{at}.officers[{j}]"), push);
        }
        for (j, c) in g.checkpoints.iter().enumerate() {
            let at = format!("{at}.checkpoints[{j}]");
            if !ident(&c.id) {
                push(format!("{at}.id"), bad_id(&c.id));
            } else if !checkpoints.insert(c.id.as_str()) {
                push(format!("{at}.id"), format!("duplicate checkpoint id {:?}; expected each once in the site", c.id));
            }
            if let Some(e) = &c.every {
                check_interval(e, format!("{at}.every"), push);
            }
            if c.every.is_none() && c.windows.is_empty() {
                push(at.clone(), "no `every` and no `windows`; expected an interval, time windows or both".into());
            }
            for (k, w) in c.windows.iter().enumerate() {
                let wat = format!("{at}.windows[{k}]");
                check_time(&w.from, format!("{wat}.from"), push);
                check_time(&w.to, format!("{wat}.to"), push);
                match &w.every {
                    Some(e) => check_interval(e, format!("{wat}.every"), push),
                    None if c.every.is_none() => push(
                        format!("{wat}.every"),
                        "missing, and the checkpoint has no `every`; expected an interval like \"2h\"".into(),
                    ),
                    None => {}
                }
            }
        }
    }

    let grids: Vec<&str> = config.grids.iter().map(|g| g.id.as_str()).collect();
    let mut rostered = HashSet::new();
    for (i, r) in config.rosters.iter().enumerate() {
        let at = format!("rosters[{i}]");
        if !grids.contains(&r.grid.as_str()) {
            push(
                format!("{at}.grid"),
                format!("grid {:?} is not defined (known grids: {})", r.grid, known_list(&grids)),
            );
        } else if !rostered.insert(r.grid.as_str()) {
            push(format!("{at}.grid"), format!("grid {:?} has a roster already; expected one roster per grid", r.grid));
        }
        validate_shifts(&r.shifts, &at, push);
        let shift_ids: Vec<&str> = r.shifts.iter().map(|s| s.id.as_str()).collect();
        let check_shift = |id: &str, path: String, push: &mut dyn FnMut(String, String)| {
            if !shift_ids.contains(&id) {
                push(path, format!("shift {id:?} is not a shift of this roster (shifts: {})", known_list(&shift_ids)));
            }
        };
        for (j, w) in r.weekly.iter().enumerate() {
            let wat = format!("{at}.weekly[{j}]");
            if w.days.is_empty() {
                push(format!("{wat}.days"), "empty; expected weekdays like [\"mon\", \"tue\"]".into());
            }
            for (k, d) in w.days.iter().enumerate() {
                if !WEEKDAYS.contains(&d.as_str()) {
                    push(format!("{wat}.days[{k}]"), format!("{d:?}; expected one of {}", WEEKDAYS.join(", ")));
                }
            }
            check_shift(&w.shift, format!("{wat}.shift"), push);
            for (k, p) in w.people.iter().enumerate() {
                check_person(p, format!("{wat}.people[{k}]"), push);
            }
        }
        let mut dated = HashSet::new();
        for (j, o) in r.overrides.iter().enumerate() {
            let oat = format!("{at}.overrides[{j}]");
            if chrono::NaiveDate::parse_from_str(&o.date, "%Y-%m-%d").is_err() {
                push(format!("{oat}.date"), format!("{:?}; expected a date like \"2026-10-01\"", o.date));
            }
            check_shift(&o.shift, format!("{oat}.shift"), push);
            if !dated.insert((o.date.as_str(), o.shift.as_str())) {
                push(
                    format!("{oat}.shift"),
                    format!(
                        "shift {:?} of {} is overridden twice; expected one override per shift and date",
                        o.shift, o.date
                    ),
                );
            }
            for (k, p) in o.people.iter().enumerate() {
                check_person(p, format!("{oat}.people[{k}]"), push);
            }
        }
    }

    let mut plans = HashSet::new();
    for (i, plan) in config.plans.iter().enumerate() {
        let at = format!("plans[{i}]");
        if !ident(&plan.id) {
            push(format!("{at}.id"), bad_id(&plan.id));
        } else if !plans.insert(plan.id.as_str()) {
            push(format!("{at}.id"), format!("duplicate plan id {:?}; expected each plan once", plan.id));
        }
        if plan.title.trim().is_empty() {
            push(format!("{at}.title"), "empty; expected the plan's title".into());
        }
        if plan.steps.is_empty() {
            push(format!("{at}.steps"), "empty; expected the steps to take, in order".into());
        }
        for (j, s) in plan.steps.iter().enumerate() {
            if s.trim().is_empty() {
                push(format!("{at}.steps[{j}]"), "empty step; expected what to do".into());
            }
        }
    }
}

/// Shifts must tile the day: sorted by start, each ends where the next begins, 24 h in all.
fn validate_shifts(shifts: &[Shift], at: &str, push: &mut dyn FnMut(String, String)) {
    if shifts.is_empty() {
        push(
            format!("{at}.shifts"),
            "empty; expected shifts that cover the day, like day 08:00–20:00 and night 20:00–08:00".into(),
        );
        return;
    }
    let mut ids = HashSet::new();
    let mut spans = Vec::new();
    for (j, s) in shifts.iter().enumerate() {
        let sat = format!("{at}.shifts[{j}]");
        if !ids.insert(s.id.as_str()) {
            push(format!("{sat}.id"), format!("duplicate shift id {:?}; expected each shift once", s.id));
        }
        let from = check_time(&s.from, format!("{sat}.from"), push);
        let to = check_time(&s.to, format!("{sat}.to"), push);
        if let (Some(from), Some(to)) = (from, to) {
            let len = if to > from { to - from } else { to + 1440 - from };
            spans.push((from, len, j));
        }
    }
    if spans.len() != shifts.len() {
        return;
    }
    spans.sort_unstable();
    // Sorted by start, each shift must end exactly where the next begins (the first again, a day
    // later, after the last); the differences add up to 24 h minus the shifts' total.
    for (k, &(from, len, j)) in spans.iter().enumerate() {
        let (next_from, _, next_j) = spans[(k + 1) % spans.len()];
        let next_from = if k + 1 == spans.len() { next_from + 1440 } else { next_from };
        let end = from + len;
        if end != next_from {
            let what = if end > next_from { "overlaps" } else { "leaves a gap before" };
            push(
                format!("{at}.shifts[{j}].to"),
                format!(
                    "{:?} {what} shift {:?} (from {:?}); expected each shift to end where the next begins",
                    shifts[j].to, shifts[next_j].id, shifts[next_j].from
                ),
            );
        }
    }
}

fn check_time(v: &str, path: String, push: &mut dyn FnMut(String, String)) -> Option<u32> {
    let t = parse_hhmm(v);
    if t.is_none() {
        push(path, format!("{v:?}; expected local time as HH:MM, like \"08:00\""));
    }
    t
}

fn check_interval(v: &str, path: String, push: &mut dyn FnMut(String, String)) {
    if parse_interval(v).is_none() {
        push(path, format!("{v:?}; expected an interval from 1m to 168h, like \"30m\", \"2h\" or \"1h30m\""));
    }
}

fn known_list(ids: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = ids.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        s.push_str(&format!(", … ({} in all)", ids.len()));
    }
    if s.is_empty() {
        s.push_str("none defined");
    }
    s
}

/// Plan ids by the plans, for lookups.
pub fn plans_by_id(plans: &[Plan]) -> BTreeMap<&str, &Plan> {
    plans.iter().map(|p| (p.id.as_str(), p)).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = r#"
[site]
id = "p1"
safety_manager = "zhao"

[[people]]
id = "zhang"
name = "张伟"
mobile = "13800138000"
email = "zhang.wei@park.cn"

[[people]]
id = "zhao"
name = "赵敏"
mobile = "+8613900139000"
lang = "en"

[[grids]]
id = "g1"
supervisor = "zhao"
officers = ["zhang"]
checkpoints = [
  { id = "cp-1", every = "2h" },
  { id = "cp-2", windows = [{ from = "20:00", to = "08:00", every = "2h" }] },
]

[[rosters]]
grid = "g1"
shifts = [{ id = "day", from = "08:00", to = "20:00" }, { id = "night", from = "20:00", to = "08:00" }]
weekly = [{ days = ["mon", "sun"], shift = "day", people = ["zhang"] }]
overrides = [{ date = "2026-10-01", shift = "night", people = ["zhao"], reason = "国庆" }]

[[plans]]
id = "electrical-fire"
title = "电气火灾应急处置"
steps = ["切断电源", "报告网格长"]
"#;

    fn paths(text: &str) -> Vec<(String, String)> {
        match crate::config::from_str(text, Path::new("t.toml"), Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    #[test]
    fn the_organisation_loads() {
        let c = crate::config::from_str(BASE, Path::new("t.toml"), Path::new(".")).unwrap();
        assert_eq!(c.people.len(), 2);
        assert_eq!(c.people[1].lang, Some(super::Lang::En));
        assert_eq!(c.grids[0].checkpoints[1].windows[0].every.as_deref(), Some("2h"));
        assert_eq!(c.plans[0].steps.len(), 2);
        assert_eq!(c.site.safety_manager.as_deref(), Some("zhao"));
    }

    #[test]
    fn every_problem_names_its_key_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("safety_manager = \"zhao\"", "safety_manager = \"nobody\"", "site.safety_manager"),
            ("supervisor = \"zhao\"", "supervisor = \"ghost\"", "grids[0].supervisor"),
            ("officers = [\"zhang\"]", "officers = [\"zhang\", \"ghost\"]", "grids[0].officers[1]"),
            (
                "{ id = \"cp-1\", every = \"2h\" }",
                "{ id = \"cp-1\", every = \"2 hours\" }",
                "grids[0].checkpoints[0].every",
            ),
            ("{ id = \"cp-1\", every = \"2h\" }", "{ id = \"cp-1\" }", "grids[0].checkpoints[0]"),
            ("{ id = \"cp-1\", every = \"2h\" }", "{ id = \"cp-2\", every = \"2h\" }", "grids[0].checkpoints[1].id"),
            (
                "from = \"20:00\", to = \"08:00\", every",
                "from = \"25:00\", to = \"08:00\", every",
                "grids[0].checkpoints[1].windows[0].from",
            ),
            ("mobile = \"13800138000\"", "mobile = \"138-0013\"", "people[0].mobile"),
            ("email = \"zhang.wei@park.cn\"", "email = \"zhang\"", "people[0].email"),
            ("id = \"zhao\"\nname", "id = \"zhang\"\nname", "people[1].id"),
            ("grid = \"g1\"\nshifts", "grid = \"g9\"\nshifts", "rosters[0].grid"),
            // Day shift ends at 19:00: a gap before the night shift.
            ("to = \"20:00\" }, { id = \"night\"", "to = \"19:00\" }, { id = \"night\"", "rosters[0].shifts[0].to"),
            // Day shift ends at 21:00: it overlaps the night shift.
            ("to = \"20:00\" }, { id = \"night\"", "to = \"21:00\" }, { id = \"night\"", "rosters[0].shifts[0].to"),
            ("from = \"08:00\", to = \"20:00\"", "from = \"8:00\", to = \"20:00\"", "rosters[0].shifts[0].from"),
            ("days = [\"mon\", \"sun\"]", "days = [\"mon\", \"sunday\"]", "rosters[0].weekly[0].days[1]"),
            (
                "shift = \"day\", people = [\"zhang\"]",
                "shift = \"late\", people = [\"zhang\"]",
                "rosters[0].weekly[0].shift",
            ),
            ("people = [\"zhang\"] }]", "people = [\"ghost\"] }]", "rosters[0].weekly[0].people[0]"),
            ("date = \"2026-10-01\"", "date = \"2026-13-01\"", "rosters[0].overrides[0].date"),
            ("steps = [\"切断电源\", \"报告网格长\"]", "steps = []", "plans[0].steps"),
        ];
        for (from, to, path) in cases {
            assert!(BASE.contains(from), "{from}");
            let problems = paths(&BASE.replacen(from, to, 1));
            assert!(problems.iter().any(|(p, _)| p == path), "{to}: expected a problem at {path}, got {problems:?}");
        }
        assert!(paths(BASE).is_empty());
    }

    #[test]
    fn gaps_and_overlaps_are_told_apart() {
        let gap = paths(&BASE.replacen("to = \"20:00\" }, { id = \"night\"", "to = \"19:00\" }, { id = \"night\"", 1));
        assert!(gap.iter().any(|(_, m)| m.contains("leaves a gap before shift \"night\"")), "{gap:?}");
        let overlap =
            paths(&BASE.replacen("to = \"20:00\" }, { id = \"night\"", "to = \"21:00\" }, { id = \"night\"", 1));
        assert!(overlap.iter().any(|(_, m)| m.contains("overlaps shift \"night\"")), "{overlap:?}");
    }

    #[test]
    fn intervals_parse() {
        use super::parse_interval;
        assert_eq!(parse_interval("30m"), Some(30));
        assert_eq!(parse_interval("2h"), Some(120));
        assert_eq!(parse_interval("1h30m"), Some(90));
        assert_eq!(parse_interval("45min"), Some(45));
        for bad in ["", "0m", "2", "h", "2 h", "200h"] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
    }
}
