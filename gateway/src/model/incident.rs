//! The incident model shared by the rules that raise incidents and the store that keeps them: severity,
//! the ISA-18.2 states, and the changes the rule engine hands to the incident store.

use serde::Serialize;

/// How urgent an alarm is, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Minor,
    Major,
    Critical,
}

impl Severity {
    /// Parses `warning`, `minor`, `major` or `critical`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "warning" => Some(Self::Warning),
            "minor" => Some(Self::Minor),
            "major" => Some(Self::Major),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

/// The annunciation state of an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Normal,
    ActiveUnacked,
    ActiveAcked,
    ReturnedUnacked,
}

impl State {
    /// The snake_case name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::ActiveUnacked => "active_unacked",
            Self::ActiveAcked => "active_acked",
            Self::ReturnedUnacked => "returned_unacked",
        }
    }

    /// Parses [`State::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "normal" => Some(Self::Normal),
            "active_unacked" => Some(Self::ActiveUnacked),
            "active_acked" => Some(Self::ActiveAcked),
            "returned_unacked" => Some(Self::ReturnedUnacked),
            _ => None,
        }
    }

    /// Whether the alarm condition is (still) in force.
    pub fn is_active(self) -> bool {
        matches!(self, Self::ActiveUnacked | Self::ActiveAcked)
    }
}

/// A change to an incident, to be persisted before anybody is told.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new incident.
    Open(NewIncident),
    /// Something happened to an existing incident.
    Update(IncidentUpdate),
}

/// A new incident, as raised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewIncident {
    pub id: i64,
    pub at: i64,
    pub rule: String,
    pub title: String,
    pub category: String,
    pub severity: Severity,
    pub state: State,
    pub device: String,
    pub grid: String,
    pub point: String,
    pub value: f64,
    pub message: String,
    pub plan: String,
}

/// One transition or note on an incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentUpdate {
    pub id: i64,
    pub at: i64,
    /// raised, reactivated, escalated, returned, acked, closed, chattering, shelved, unshelved, comment.
    pub kind: &'static str,
    /// The state after this change; `None` when the change does not move it (a comment).
    pub state: Option<State>,
    pub severity: Option<Severity>,
    pub value: Option<f64>,
    pub peak: Option<f64>,
    pub who: Option<String>,
    pub note: Option<String>,
    /// For `shelved`: until when (UTC ns).
    pub shelved_until: Option<i64>,
}

/// An incident restored from the store at start.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    pub id: i64,
    pub rule: String,
    pub device: String,
    pub state: State,
    pub severity: Severity,
    pub shelved_until: Option<i64>,
    pub peak: f64,
}
