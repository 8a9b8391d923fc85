//! The health registry: every component of the gateway (a broker connection, a Modbus connection, the
//! outbox, the incident store, a forward target, the rules) reports its status here by name, and the
//! API reads it for `/readyz`, `/api/v1/health` and `/metrics`.
//!
//! It lives in `model` so any room can report without importing another; it imports nothing of ours.
//! Reporting the same status and reason again is a lookup under a short lock and allocates nothing, so
//! it can be called every time a loop goes round; a change is logged once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::{error, info, warn};

/// How a component is doing, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Working as configured.
    Ok,
    /// Working, but not fully (some devices offline, a store retrying, a rule pack not loaded).
    Degraded,
    /// Not doing its job (broker unreachable, disk refusing writes, store down for long).
    Failed,
}

impl Status {
    /// The value of `parkwatch_component_status`: 0 ok, 1 degraded, 2 failed.
    pub fn gauge(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Degraded => 1,
            Self::Failed => 2,
        }
    }

    /// The lowercase name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

/// One component as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    pub name: String,
    pub status: Status,
    /// Why it is not ok (empty when it is, unless there is something worth saying).
    pub reason: String,
    /// When the status last changed, UTC nanoseconds since the Unix epoch.
    pub since_ns: i64,
}

#[derive(Debug)]
struct Entry {
    status: Status,
    reason: String,
    since_ns: i64,
}

/// The shared registry; clones share the same components.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Health {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `component`'s status and reason, registering it on first use.
    ///
    /// Cheap when nothing changed (no allocation, no log); a change of status is logged once (INFO when
    /// it recovers to ok, WARN when degraded, ERROR when failed) and moves `since` to now.
    pub fn set(&self, component: &str, status: Status, reason: &str) {
        self.set_at(component, status, reason, now_ns());
    }

    /// [`Health::set`] at a given time (UTC ns), for tests and callers that already read the clock.
    pub fn set_at(&self, component: &str, status: Status, reason: &str, now_ns: i64) {
        let previous = {
            let mut map = self.components.lock().unwrap_or_else(|e| e.into_inner());
            match map.get_mut(component) {
                Some(e) if e.status == status && e.reason == reason => return,
                Some(e) => {
                    let previous = e.status;
                    if e.status != status {
                        e.since_ns = now_ns;
                    }
                    e.status = status;
                    reason.clone_into(&mut e.reason);
                    if previous == status {
                        // Only the reason changed (another device went offline): no new log line.
                        return;
                    }
                    Some(previous)
                }
                None => {
                    map.insert(component.to_owned(), Entry { status, reason: reason.to_owned(), since_ns: now_ns });
                    None
                }
            }
        };
        // Logged outside the lock so a slow log sink never holds up other reporters.
        let from = previous.map_or("new", Status::as_str);
        match status {
            // A component that starts ok is not news.
            Status::Ok if previous.is_none() => {}
            Status::Ok => info!(component, from, "Component recovered."),
            Status::Degraded => warn!(component, from, reason, "Component degraded."),
            Status::Failed => error!(component, from, reason, "Component failed."),
        }
    }

    /// Every component, by name.
    pub fn snapshot(&self) -> Vec<Component> {
        let map = self.components.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(name, e)| Component {
                name: name.clone(),
                status: e.status,
                reason: e.reason.clone(),
                since_ns: e.since_ns,
            })
            .collect()
    }

    /// One component, if it was ever reported.
    pub fn get(&self, component: &str) -> Option<Component> {
        let map = self.components.lock().unwrap_or_else(|e| e.into_inner());
        map.get(component).map(|e| Component {
            name: component.to_owned(),
            status: e.status,
            reason: e.reason.clone(),
            since_ns: e.since_ns,
        })
    }

    /// The worst status of all components; ok when there are none.
    pub fn overall(&self) -> Status {
        let map = self.components.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|e| e.status).max().unwrap_or(Status::Ok)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_components_show_up_with_their_status() {
        let h = Health::new();
        h.set_at("broker:local", Status::Failed, "not connected yet", 10);
        h.set_at("outbox", Status::Ok, "", 10);
        let all = h.snapshot();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "broker:local");
        assert_eq!(all[0].status, Status::Failed);
        assert_eq!(all[0].reason, "not connected yet");
        assert_eq!(h.overall(), Status::Failed);
    }

    #[test]
    fn since_moves_only_when_the_status_changes() {
        let h = Health::new();
        h.set_at("modbus:bus1", Status::Ok, "", 10);
        h.set_at("modbus:bus1", Status::Ok, "", 20);
        assert_eq!(h.get("modbus:bus1").unwrap().since_ns, 10);
        h.set_at("modbus:bus1", Status::Degraded, "offline: m1", 30);
        h.set_at("modbus:bus1", Status::Degraded, "offline: m1, m2", 40);
        let c = h.get("modbus:bus1").unwrap();
        assert_eq!((c.status, c.reason.as_str(), c.since_ns), (Status::Degraded, "offline: m1, m2", 30));
        h.set_at("modbus:bus1", Status::Ok, "", 50);
        assert_eq!(h.get("modbus:bus1").unwrap().since_ns, 50);
    }

    #[test]
    fn overall_is_the_worst_status() {
        let h = Health::new();
        assert_eq!(h.overall(), Status::Ok);
        h.set_at("a", Status::Ok, "", 1);
        h.set_at("b", Status::Degraded, "slow", 1);
        assert_eq!(h.overall(), Status::Degraded);
        h.set_at("c", Status::Failed, "down", 1);
        assert_eq!(h.overall(), Status::Failed);
        h.set_at("c", Status::Ok, "", 2);
        assert_eq!(h.overall(), Status::Degraded);
    }

    #[test]
    fn clones_share_components() {
        let h = Health::new();
        let other = h.clone();
        other.set_at("rules", Status::Degraded, "pack x.rhai not loaded", 1);
        assert_eq!(h.get("rules").unwrap().status, Status::Degraded);
    }

    #[test]
    fn an_unchanged_report_keeps_the_stored_reason_allocation() {
        let h = Health::new();
        h.set_at("outbox", Status::Failed, "cannot write: disk full", 1);
        let before = {
            let map = h.components.lock().unwrap();
            map["outbox"].reason.as_ptr()
        };
        h.set_at("outbox", Status::Failed, "cannot write: disk full", 2);
        let after = {
            let map = h.components.lock().unwrap();
            map["outbox"].reason.as_ptr()
        };
        assert_eq!(before, after);
        assert_eq!(h.get("outbox").unwrap().since_ns, 1);
    }
}
