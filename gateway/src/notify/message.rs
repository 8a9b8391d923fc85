//! What a notification says: the incidents it covers (worst first), why it is sent, who is mentioned,
//! and its text in Chinese or English. Pure: no I/O, no clock; the channels shape it per vendor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::people::Person;
use crate::config::notify::Lang;
use crate::model::time::fmt_local;

/// One incident change as a message shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: i64,
    pub seq: i64,
    /// raised, reactivated, escalated, returned, closed.
    pub change: String,
    /// UTC ns of the change.
    pub at: i64,
    pub rule: String,
    pub title: String,
    pub category: String,
    pub severity: String,
    pub state: String,
    pub grid: String,
    pub grid_name: String,
    pub device: String,
    pub device_name: String,
    pub point: String,
    pub value: Option<f64>,
    pub unit: String,
    /// The rule's message, which names the limit and its standard.
    pub message: String,
    /// Id of the emergency plan the rule names; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plan: String,
}

impl Item {
    /// Severity rank, 4 critical … 1 warning.
    pub fn rank(&self) -> u8 {
        match self.severity.as_str() {
            "critical" => 4,
            "major" => 3,
            "minor" => 2,
            "warning" => 1,
            _ => 0,
        }
    }
}

/// Why a message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// New or again active incidents.
    Firing,
    /// Incidents back to normal or closed.
    Resolved,
    /// Still unacknowledged after the repeat interval.
    Repeat,
    /// Unacknowledged past an escalation step.
    Escalation,
    /// `parkwatch notify test`.
    Test,
}

impl Reason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
            Self::Repeat => "repeat",
            Self::Escalation => "escalation",
            Self::Test => "test",
        }
    }
}

/// Most incidents listed by name in one message; the rest are counted.
pub const LISTED: usize = 5;

/// A planned notification, stored with its delivery so every attempt sends the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub reason: Reason,
    /// Escalation step, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    pub grid: String,
    /// Incidents covered, in all.
    pub total: usize,
    /// Incidents covered per severity.
    pub counts: BTreeMap<String, usize>,
    /// The worst incidents, at most [`LISTED`].
    pub items: Vec<Item>,
    /// Every incident id covered.
    pub ids: Vec<i64>,
    /// People to mention, mail or text.
    pub people: Vec<Person>,
    pub subject: String,
    pub text: String,
}

/// What rendering needs from the site.
#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub name: String,
    pub tz: chrono_tz::Tz,
    pub base_url: String,
    /// The site's emergency plans by id, whose steps go with a single incident's message.
    pub plans: BTreeMap<String, crate::config::Plan>,
}

fn severity_name(s: &str, lang: Lang) -> &str {
    match (lang, s) {
        (Lang::Zh, "critical") => "紧急",
        (Lang::Zh, "major") => "重要",
        (Lang::Zh, "minor") => "次要",
        (Lang::Zh, "warning") => "提示",
        (Lang::En, "critical") => "CRITICAL",
        (Lang::En, "major") => "MAJOR",
        (Lang::En, "minor") => "MINOR",
        (Lang::En, "warning") => "WARNING",
        _ => s,
    }
}

fn change_name(c: &str, lang: Lang) -> &str {
    match (lang, c) {
        (Lang::Zh, "raised") => "新告警",
        (Lang::Zh, "reactivated") => "再次告警",
        (Lang::Zh, "escalated") => "告警升级",
        (Lang::Zh, "returned") => "已恢复正常",
        (Lang::Zh, "closed") => "已关闭",
        (Lang::En, "raised") => "raised",
        (Lang::En, "reactivated") => "active again",
        (Lang::En, "escalated") => "escalated",
        (Lang::En, "returned") => "back to normal",
        (Lang::En, "closed") => "closed",
        _ => c,
    }
}

fn value_text(i: &Item) -> String {
    match i.value {
        Some(v) if i.unit.is_empty() => format!("{v}"),
        Some(v) => format!("{v} {}", i.unit),
        None => "-".into(),
    }
}

fn link(site: &Site, id: i64) -> String {
    format!("{}/#/incidents/{id}", site.base_url.trim_end_matches('/'))
}

/// The plan of `i` as numbered steps after a blank line; empty when the rule names no plan the site has.
fn plan_text(site: &Site, i: &Item, zh: bool) -> String {
    let Some(plan) = site.plans.get(&i.plan) else { return String::new() };
    let mut text = format!("\n\n{}{}", if zh { "处置预案：" } else { "Plan: " }, plan.title);
    for (n, step) in plan.steps.iter().enumerate() {
        text.push_str(&format!("\n{}. {step}", n + 1));
    }
    text
}

/// Builds a message over `items` (every change covered; sorted here, worst and newest first).
#[allow(clippy::too_many_arguments)]
pub fn compose(
    site: &Site,
    lang: Lang,
    reason: Reason,
    step: Option<u32>,
    grid: &str,
    mut items: Vec<Item>,
    people: Vec<Person>,
    unacked_for: Option<i64>,
) -> Message {
    items.sort_by(|a, b| b.rank().cmp(&a.rank()).then(b.at.cmp(&a.at)));
    let mut ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut counts = BTreeMap::new();
    for i in &items {
        *counts.entry(i.severity.clone()).or_insert(0) += 1;
    }
    let total = items.len();
    let grid_name = items.first().map_or(grid.to_owned(), |i| i.grid_name.clone());
    let (subject, text) = render(site, lang, reason, step, &grid_name, &items, &counts, unacked_for);
    items.truncate(LISTED);
    Message { reason, step, grid: grid.to_owned(), total, counts, items, ids, people, subject, text }
}

#[allow(clippy::too_many_arguments)]
fn render(
    site: &Site,
    lang: Lang,
    reason: Reason,
    step: Option<u32>,
    grid_name: &str,
    items: &[Item],
    counts: &BTreeMap<String, usize>,
    unacked_for: Option<i64>,
) -> (String, String) {
    let zh = lang == Lang::Zh;
    let minutes = unacked_for.map(|ns| ns / 60_000_000_000).unwrap_or(0);
    let why = match (reason, zh) {
        (Reason::Firing, true) => "告警".to_owned(),
        (Reason::Firing, false) => "Alarm".to_owned(),
        (Reason::Resolved, true) => "恢复".to_owned(),
        (Reason::Resolved, false) => "Resolved".to_owned(),
        (Reason::Repeat, true) => "仍未确认".to_owned(),
        (Reason::Repeat, false) => "Still unacknowledged".to_owned(),
        (Reason::Escalation, true) => format!("升级第{}级：{minutes} 分钟未确认", step.unwrap_or(1)),
        (Reason::Escalation, false) => {
            format!("Escalation step {}: unacknowledged for {minutes} min", step.unwrap_or(1))
        }
        (Reason::Test, true) => "测试消息".to_owned(),
        (Reason::Test, false) => "Test message".to_owned(),
    };
    if reason == Reason::Test {
        let text = if zh {
            format!("【{why}】{} 通知通道工作正常。", site.name)
        } else {
            format!("[{why}] {}: this notification channel works.", site.name)
        };
        return (text.clone(), text);
    }
    if let [i] = items {
        let subject = format!(
            "{}{}{} {} · {}",
            if zh { "【" } else { "[" },
            severity_name(&i.severity, lang),
            if zh { "】" } else { "]" },
            i.title,
            why
        );
        let body = if zh {
            format!(
                "{subject}\n状态：{}\n网格：{}\n设备：{}\n数值：{}\n说明：{}\n时间：{}\n详情：{}",
                change_name(&i.change, lang),
                i.grid_name,
                i.device_name,
                value_text(i),
                i.message,
                fmt_local(i.at, site.tz),
                link(site, i.id)
            )
        } else {
            format!(
                "{subject}\nState: {}\nGrid: {}\nDevice: {}\nValue: {}\nDetail: {}\nTime: {}\nLink: {}",
                change_name(&i.change, lang),
                i.grid_name,
                i.device_name,
                value_text(i),
                i.message,
                fmt_local(i.at, site.tz),
                link(site, i.id)
            )
        };
        return (subject, body + plan_text(site, i, zh).as_str());
    }
    let order = ["critical", "major", "minor", "warning"];
    let by_severity: Vec<String> =
        order.iter().filter_map(|s| counts.get(*s).map(|n| format!("{} {n}", severity_name(s, lang)))).collect();
    let subject = if zh {
        format!("【{why}汇总】{grid_name} {} 条（{}）", items.len(), by_severity.join("，"))
    } else {
        format!("[{why} summary] {grid_name}: {} incidents ({})", items.len(), by_severity.join(", "))
    };
    let mut text = subject.clone();
    text.push_str(if zh { "\n最严重的：" } else { "\nWorst:" });
    for (n, i) in items.iter().take(LISTED).enumerate() {
        text.push_str(&format!(
            "\n{}. [{}] {} · {} · {} · {} {}",
            n + 1,
            severity_name(&i.severity, lang),
            i.title,
            i.device_name,
            value_text(i),
            fmt_local(i.at, site.tz),
            link(site, i.id)
        ));
    }
    // The worst incident's plan says what to do first, even in a summary.
    if let Some(plan) = items.first().and_then(|i| site.plans.get(&i.plan)) {
        text.push_str(&if zh {
            format!("\n首要处置：{}（{} 步，见详情）", plan.title, plan.steps.len())
        } else {
            format!("\nFirst response: {} ({} steps, see the link)", plan.title, plan.steps.len())
        });
    }
    if items.len() > LISTED {
        text.push_str(&if zh {
            format!("\n…另有 {} 条，见 {}/#/incidents", items.len() - LISTED, site.base_url.trim_end_matches('/'))
        } else {
            format!("\n… and {} more: {}/#/incidents", items.len() - LISTED, site.base_url.trim_end_matches('/'))
        });
    }
    (subject, text)
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let plan = crate::config::Plan {
            id: "electrical-fire".into(),
            title: "电气火灾应急处置".into(),
            steps: vec!["到现场确认".into(), "断开上级断路器".into()],
        };
        Site {
            id: "p".into(),
            name: "测试园区".into(),
            tz: chrono_tz::Asia::Shanghai,
            base_url: "http://park.lan:8080/".into(),
            plans: [(plan.id.clone(), plan)].into(),
        }
    }

    fn item(id: i64, severity: &str, plan: &str) -> Item {
        Item {
            id,
            seq: id,
            change: "raised".into(),
            at: 1_780_000_000_000_000_000,
            rule: "electrical.residual_current".into(),
            title: "剩余电流超限".into(),
            category: "electrical".into(),
            severity: severity.into(),
            state: "active_unacked".into(),
            grid: "g1".into(),
            grid_name: "一号网格".into(),
            device: "m1".into(),
            device_name: "1号配电柜".into(),
            point: "ir".into(),
            value: Some(350.0),
            unit: "mA".into(),
            message: "剩余电流 350 mA 超过限值 300 mA（GB 14287.2）".into(),
            plan: plan.into(),
        }
    }

    #[test]
    fn a_single_incident_carries_its_plan_steps_numbered() {
        let m = compose(
            &site(),
            Lang::Zh,
            Reason::Firing,
            None,
            "g1",
            vec![item(7, "critical", "electrical-fire")],
            vec![],
            None,
        );
        assert!(m.text.contains("数值：350 mA"), "{}", m.text);
        assert!(m.text.contains("时间：2026-05-29 04:26:40"), "{}", m.text);
        assert!(m.text.ends_with("处置预案：电气火灾应急处置\n1. 到现场确认\n2. 断开上级断路器"), "{}", m.text);
        assert!(m.text.contains("http://park.lan:8080/#/incidents/7"), "{}", m.text);
        // A plan the site has not written is left out, not shown empty.
        let m = compose(&site(), Lang::En, Reason::Firing, None, "g1", vec![item(8, "major", "unknown")], vec![], None);
        assert!(!m.text.contains("Plan:"), "{}", m.text);
    }

    #[test]
    fn a_summary_names_the_worst_incidents_plan() {
        let items = vec![item(1, "minor", ""), item(2, "critical", "electrical-fire"), item(3, "major", "")];
        let m = compose(&site(), Lang::Zh, Reason::Firing, None, "g1", items, vec![], None);
        assert!(m.subject.contains("3 条"), "{}", m.subject);
        assert!(m.text.contains("首要处置：电气火灾应急处置（2 步，见详情）"), "{}", m.text);
    }
}
