//! Reloading the configuration file on SIGHUP (or `POST /api/v1/config/reload`): devices, grids,
//! device types, MQTT subscriptions and rules change in the running gateway; connections that did
//! not change stay up. A file that does not load, or rules that do not compile, change nothing.
//! Sections read only at start are named in the report as waiting for a restart.
//!
//! Owns: the comparison of two configurations and the reload report.
//! May import: `config`, `model`, `core` (its reloader).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{self, Config, Subscription};
use crate::core::packs::{ReloadError, Reloader};
use crate::model::time::{fmt_ns, now_ns};

pub use provision::Provisioner;

/// What one reload did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// When it ran (UTC, RFC 3339).
    pub at: String,
    /// `SIGHUP`, `api` or `provisioning`.
    pub trigger: String,
    /// Whether the new configuration runs now (false: the old one stays, see `errors`).
    pub applied: bool,
    /// What changed in the running gateway.
    pub changes: Vec<String>,
    /// What changed in the file but is read only at start.
    pub restart_needed: Vec<String>,
    /// Why the configuration was refused.
    pub errors: Vec<String>,
    /// Rules running afterwards.
    pub rules: usize,
}

/// The configuration reload of a running gateway.
pub struct ConfigReload {
    /// The configuration file; without one (the demo) only the rule packs are reloaded.
    file: Option<PathBuf>,
    rules: Reloader,
    /// Each broker's subscriptions, by broker id, for its MQTT source.
    subscriptions: Vec<(String, watch::Sender<Arc<Vec<Subscription>>>)>,
    /// Devices auto-provisioning added; a reload keeps those its configuration still allows.
    provisioned: Arc<provision::Status>,
    last: Mutex<Option<Report>>,
}

impl ConfigReload {
    /// A reload of `file` through `rules`, with a subscription channel for each of `brokers`
    /// (hand the receivers from [`ConfigReload::subscriptions`] to the MQTT sources).
    pub fn new(file: Option<PathBuf>, rules: Reloader, provisioned: Arc<provision::Status>) -> Self {
        let config = rules.config();
        let subscriptions = config
            .mqtt
            .brokers
            .iter()
            .map(|b| (b.id.clone(), watch::channel(Arc::new(broker_subscriptions(&config, &b.id))).0))
            .collect();
        Self { file, rules, subscriptions, provisioned, last: Mutex::new(None) }
    }

    /// The subscriptions of broker `id` as reloads change them.
    pub fn subscriptions(&self, id: &str) -> Option<watch::Receiver<Arc<Vec<Subscription>>>> {
        self.subscriptions.iter().find(|(b, _)| b == id).map(|(_, tx)| tx.subscribe())
    }

    /// The rule reloader the configuration reload goes through.
    pub fn rules(&self) -> &Reloader {
        &self.rules
    }

    /// The report of the last reload, if there was one.
    pub fn last(&self) -> Option<Report> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reloads the configuration file (or, without one, the rule packs) and reports what happened.
    pub async fn reload(&self, trigger: &str) -> Report {
        let mut report = Report {
            at: fmt_ns(now_ns()),
            trigger: trigger.to_owned(),
            applied: false,
            changes: Vec::new(),
            restart_needed: Vec::new(),
            errors: Vec::new(),
            rules: 0,
        };
        let Some(file) = self.file.clone() else {
            match self.rules.reload().await {
                Ok(n) => {
                    report.applied = true;
                    report.rules = n;
                    report.changes.push("rule packs reloaded (the configuration has no file to read again)".into());
                }
                Err(e) => report.errors.push(e.to_string()),
            }
            return self.finish(report);
        };
        let _turn = self.rules.lock.lock().await;
        let old = self.rules.config();
        let loaded = tokio::task::spawn_blocking(move || config::load(&file)).await;
        let new = match loaded {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                report.errors.push(e.to_string());
                self.rules.core.system_incident(
                    "reload",
                    format!("configuration reload refused, the running configuration stays: {e}"),
                );
                return self.finish(report);
            }
            Err(e) => {
                report.errors.push(format!("the reload stopped: {e}"));
                return self.finish(report);
            }
        };
        let (changes, restart_needed) = diff(&old, &new);
        report.restart_needed = restart_needed;
        let provisioned = provision::devices(&new, &self.provisioned.provisioned());
        let registry = Arc::new(self.rules.registry.load().evolve(&new, &provisioned));
        match self.rules.install(new.clone(), registry).await {
            Ok(n) => report.rules = n,
            Err(ReloadError::Failed(errors)) => {
                report.errors.extend(errors.iter().map(ToString::to_string));
                return self.finish(report);
            }
            Err(ReloadError::Stopped) => {
                report.errors.push("the gateway is stopping".into());
                return self.finish(report);
            }
        }
        *self.rules.config.write().unwrap_or_else(PoisonError::into_inner) = new.clone();
        for (broker, tx) in &self.subscriptions {
            let wanted = broker_subscriptions(&new, broker);
            tx.send_if_modified(|current| {
                let changed = format!("{:?}", **current) != format!("{wanted:?}");
                if changed {
                    *current = Arc::new(wanted);
                }
                changed
            });
        }
        report.applied = true;
        report.changes = changes;
        self.finish(report)
    }

    fn finish(&self, report: Report) -> Report {
        if report.applied {
            info!(trigger = %report.trigger, rules = report.rules, changes = %report.changes.join("; "), "Configuration reloaded.");
            if !report.restart_needed.is_empty() {
                warn!(waiting = %report.restart_needed.join("; "), "Changed settings that take effect at the next restart.");
            }
        } else {
            error!(trigger = %report.trigger, errors = %report.errors.join("; "), "Configuration reload refused; the running configuration stays.");
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(report.clone());
        report
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn on_sighup(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "Cannot handle SIGHUP; the configuration reloads only through the API.");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = hup.recv() => {}
            }
            self.reload("SIGHUP").await;
        }
    }
}

fn broker_subscriptions(config: &Config, broker: &str) -> Vec<Subscription> {
    config.mqtt.subscriptions.iter().filter(|s| s.broker == broker).cloned().collect()
}

fn same<T: Debug + ?Sized>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// At most a few names, then how many more.
fn names(list: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s = list.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if list.len() > SHOWN {
        s.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    s
}

/// Added, removed and changed ids between two lists keyed by id.
fn by_id<'a, T: Debug>(old: &'a [T], new: &'a [T], id: impl Fn(&T) -> &str) -> [Vec<&'a str>; 3] {
    let find = |list: &'a [T], key: &str| list.iter().find(|x| id(x) == key);
    let added = new.iter().filter(|n| find(old, id(n)).is_none()).map(&id).collect();
    let removed = old.iter().filter(|o| find(new, id(o)).is_none()).map(&id).collect();
    let changed = new.iter().filter(|n| find(old, id(n)).is_some_and(|o| !same(o, *n))).map(&id).collect();
    [added, removed, changed]
}

fn describe(what: &str, [added, removed, changed]: &[Vec<&str>; 3], out: &mut Vec<String>) {
    for (list, verb) in [(added, "added"), (removed, "removed"), (changed, "changed")] {
        if !list.is_empty() {
            out.push(format!("{what} {verb}: {}", names(list)));
        }
    }
}

/// What a reload from `old` to `new` changes in the running gateway, and what waits for a restart.
pub fn diff(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let mut live = Vec::new();
    let mut restart = Vec::new();
    describe("grids", &by_id(&old.grids, &new.grids, |g| g.id.as_str()), &mut live);
    let devices = by_id(&old.devices, &new.devices, |d| d.id.as_str());
    describe("devices", &devices, &mut live);
    // Pollers and loggers are built at start: their devices' names, grids and tags change now, the
    // polling itself at the next restart.
    let polled = |c: &Config, id: &str| {
        c.devices.iter().any(|d| d.id == id && (d.modbus.is_some() || d.dlt645.is_some()))
            || c.hj212.loggers.iter().any(|l| l.device == id)
    };
    let polled: Vec<&str> = devices.iter().flatten().copied().filter(|id| polled(old, id) || polled(new, id)).collect();
    if !polled.is_empty() {
        restart.push(format!("polling of Modbus, DL/T 645 or HJ 212 devices {}", names(&polled)));
    }
    let subs = |c: &Config| c.mqtt.subscriptions.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>();
    let (old_subs, new_subs) = (subs(old), subs(new));
    let added = new_subs.iter().filter(|s| !old_subs.contains(s)).count();
    let removed = old_subs.iter().filter(|s| !new_subs.contains(s)).count();
    if added + removed > 0 {
        live.push(format!("MQTT subscriptions: {added} new or changed, {removed} gone"));
    }
    if !same(&old.rules, &new.rules) || !same(&old.device_types, &new.device_types) {
        live.push("rules, rule parameters or device types".into());
    }
    let sections: [(&str, bool); 19] = [
        ("site", same(&old.site, &new.site)),
        ("mqtt.brokers", same(&old.mqtt.brokers, &new.mqtt.brokers)),
        ("broker", same(&old.broker, &new.broker)),
        ("api", same(&old.api, &new.api)),
        ("core", same(&old.core, &new.core)),
        ("incidents", same(&old.incidents, &new.incidents)),
        ("forward", same(&old.forward, &new.forward)),
        ("modbus", same(&old.modbus, &new.modbus)),
        ("auth", same(&old.auth, &new.auth)),
        ("audit", same(&old.audit, &new.audit)),
        ("people", same(&old.people, &new.people)),
        ("rosters", same(&old.rosters, &new.rosters)),
        ("plans", same(&old.plans, &new.plans)),
        ("notify", same(&old.notify, &new.notify)),
        ("history", same(&old.history, &new.history)),
        ("dlt645", same(&old.dlt645, &new.dlt645)),
        ("hj212", same(&old.hj212, &new.hj212)),
        ("reports", same(&old.reports, &new.reports)),
        ("actions", same(&old.actions, &new.actions)),
    ];
    for (name, unchanged) in sections {
        if !unchanged {
            restart.push(format!("[{name}]"));
        }
    }
    if live.is_empty() {
        live.push("nothing that runs changed".into());
    }
    (live, restart)
}

pub mod provision;

#[cfg(test)]
mod tests;
