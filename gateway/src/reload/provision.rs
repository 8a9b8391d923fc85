//! Auto-provisioning: a device heard on a subscription with `provision` that is not configured
//! becomes a device of the subscription's type, in the grid its topic names — at once, or after an
//! admin approves it. Provisioned devices are kept in `provisioned.json` beside the incident database,
//! so a restart keeps them; a reload keeps them too.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{is_identifier, Config, Device, Provision};
use crate::core::packs::Reloader;
use crate::model::time::{fmt_ns, now_ns};
use crate::model::ProvisionRequest;

/// How long requests are gathered into one registry change: a park's meters appear together.
const GATHER: Duration = Duration::from_millis(300);

/// Refused requests remembered so each refused device is logged once.
const REFUSALS_LOGGED: usize = 10_000;

/// One provisioned device as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub device: String,
    pub grid: String,
    #[serde(rename = "type")]
    pub device_type: String,
    /// The broker and subscription filter it came through (the cap counts per subscription).
    pub broker: String,
    pub topic: String,
    /// When it was provisioned (UTC, RFC 3339).
    pub at: String,
}

/// Why a request was not provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The topic's device is not a valid id.
    Id,
    /// The topic's grid is not configured.
    Grid,
    /// The subscription's `max` is reached.
    Cap,
}

impl Refusal {
    pub const ALL: [Self; 3] = [Self::Id, Self::Grid, Self::Cap];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Grid => "grid",
            Self::Cap => "cap",
        }
    }
}

/// What provisioning has done, for the API and `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    pub devices: Mutex<Vec<Entry>>,
    /// Waiting for approval.
    pub pending: Mutex<Vec<Entry>>,
    pub refused: [AtomicU64; 3],
}

impl Status {
    pub fn provisioned(&self) -> Vec<Entry> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn pending(&self) -> Vec<Entry> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Relaxed)
    }
}

/// Turns provisioning requests into devices.
#[derive(Clone)]
pub struct Provisioner {
    rules: Reloader,
    file: PathBuf,
    pub status: Arc<Status>,
}

/// Errors of approving a device.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("no device {0:?} is waiting for approval")]
    NotPending(String),
    #[error("the devices could not be added: {0}")]
    Install(String),
}

/// The provisioned devices kept in `file`, as devices of `config` (entries whose type or grid is
/// no longer configured, or that the configuration now names itself, are left out).
pub fn load(file: &std::path::Path, config: &Config) -> Vec<Entry> {
    let entries: Vec<Entry> = match std::fs::read(file) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                warn!(file = %file.display(), error = %e, "Provisioned devices file unreadable; starting without them.");
                Vec::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warn!(file = %file.display(), error = %e, "Cannot read the provisioned devices; starting without them.");
            Vec::new()
        }
    };
    entries.into_iter().filter(|e| device(config, e).is_some()).collect()
}

/// `entry` as a device of its type, if `config` still has the type and grid and does not name the
/// device itself.
pub fn device(config: &Config, entry: &Entry) -> Option<Device> {
    let t = config.device_types.iter().find(|t| t.id == entry.device_type)?;
    if !config.grids.iter().any(|g| g.id == entry.grid) || config.devices.iter().any(|d| d.id == entry.device) {
        return None;
    }
    Some(Device {
        id: entry.device.clone(),
        name: None,
        grid: entry.grid.clone(),
        device_type: Some(t.id.clone()),
        category: t.category.clone(),
        tags: t.tags.clone(),
        points: t.points.clone(),
        modbus: None,
        dlt645: None,
    })
}

impl Provisioner {
    /// A provisioner over `rules`' configuration, keeping its devices in `file` (those `entries`
    /// were loaded from it at start).
    pub fn new(rules: Reloader, file: PathBuf, entries: Vec<Entry>) -> Self {
        let status = Status { devices: Mutex::new(entries), ..Status::default() };
        Self { rules, file, status: Arc::new(status) }
    }

    /// Takes requests until the channel closes.
    pub async fn run(self, mut rx: mpsc::Receiver<ProvisionRequest>) {
        let mut refused_logged: HashSet<String> = HashSet::new();
        while let Some(first) = rx.recv().await {
            tokio::time::sleep(GATHER).await;
            let mut batch = vec![first];
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            let accepted = self.sort(batch, &mut refused_logged);
            if !accepted.is_empty() {
                if let Err(e) = self.add(accepted).await {
                    warn!(error = %e, "Provisioning failed; the devices' next messages ask again.");
                }
            }
        }
    }

    /// Sorts requests into accepted, pending and refused; returns the accepted ones.
    fn sort(&self, batch: Vec<ProvisionRequest>, refused_logged: &mut HashSet<String>) -> Vec<Entry> {
        let config = self.rules.config();
        let registry = self.rules.registry.load();
        let mut accepted: Vec<Entry> = Vec::new();
        let mut pending = self.status.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let provisioned = self.status.provisioned();
        for r in batch {
            if registry.device_id(&r.device).is_some()
                || accepted.iter().chain(pending.iter()).any(|e| e.device == r.device)
            {
                continue;
            }
            let Some(p) = provision_of(&config, &r) else { continue };
            let taken = provisioned
                .iter()
                .chain(pending.iter())
                .chain(accepted.iter())
                .filter(|e| e.broker == r.broker && e.topic == r.topic)
                .count();
            let refusal = if !is_identifier(&r.device) {
                Some(Refusal::Id)
            } else if registry.grid_id(&r.grid).is_none() {
                Some(Refusal::Grid)
            } else if taken >= p.max {
                Some(Refusal::Cap)
            } else {
                None
            };
            if let Some(why) = refusal {
                self.status.refused[why as usize].fetch_add(1, Relaxed);
                if refused_logged.len() < REFUSALS_LOGGED && refused_logged.insert(r.device.clone()) {
                    warn!(device = %r.device, grid = %r.grid, subscription = %r.topic, reason = why.as_str(), max = p.max, "Device not provisioned.");
                }
                continue;
            }
            let entry = Entry {
                device: r.device,
                grid: r.grid,
                device_type: p.device_type.clone(),
                broker: r.broker,
                topic: r.topic,
                at: fmt_ns(now_ns()),
            };
            if p.approve {
                info!(device = %entry.device, grid = %entry.grid, "Device waits for approval to be provisioned.");
                pending.push(entry);
            } else {
                accepted.push(entry);
            }
        }
        accepted
    }

    /// Approves a pending device: it is provisioned now.
    ///
    /// # Errors
    /// No such device is pending, or it could not be added.
    pub async fn approve(&self, device: &str) -> Result<Entry, ProvisionError> {
        let entry = {
            let mut pending = self.status.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let i = pending
                .iter()
                .position(|e| e.device == device)
                .ok_or_else(|| ProvisionError::NotPending(device.to_owned()))?;
            pending.remove(i)
        };
        self.add(vec![entry.clone()]).await?;
        Ok(entry)
    }

    /// Adds the devices: a successor registry, the rules over it, the file.
    async fn add(&self, entries: Vec<Entry>) -> Result<(), ProvisionError> {
        let _turn = self.rules.lock.lock().await;
        let config = self.rules.config();
        let new: Vec<Entry> = entries.into_iter().filter(|e| device(&config, e).is_some()).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut all = self.status.provisioned();
        all.extend(new.iter().cloned());
        let devices = devices(&config, &all);
        let registry = Arc::new(self.rules.registry.load().evolve(&config, &devices));
        self.rules.install(config, registry).await.map_err(|e| ProvisionError::Install(e.to_string()))?;
        self.status.devices.lock().unwrap_or_else(PoisonError::into_inner).clone_from(&all);
        let names: Vec<&str> = new.iter().map(|e| e.device.as_str()).collect();
        info!(devices = %names.join(", "), total = all.len(), "Devices provisioned.");
        // The devices run now either way; a file that cannot be written only loses them at a restart.
        if let Err(e) = save(&self.file, &all) {
            warn!(file = %self.file.display(), error = %e, "Cannot keep the provisioned devices; they are provisioned again after a restart.");
        }
        Ok(())
    }

    /// Per subscription (broker, filter): its provisioning settings and how many devices it made.
    pub fn subscriptions(&self) -> Vec<(String, String, Provision, usize)> {
        let config = self.rules.config();
        let kept = self.status.provisioned();
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for e in &kept {
            *counts.entry((e.broker.as_str(), e.topic.as_str())).or_default() += 1;
        }
        config
            .mqtt
            .subscriptions
            .iter()
            .filter_map(|s| {
                let p = s.provision.clone()?;
                let n = counts.get(&(s.broker.as_str(), s.topic.as_str())).copied().unwrap_or(0);
                Some((s.broker.clone(), s.topic.clone(), p, n))
            })
            .collect()
    }
}

/// The devices of `entries` that `config` still allows (see [`device`]).
pub fn devices(config: &Config, entries: &[Entry]) -> Vec<Device> {
    entries.iter().filter_map(|e| device(config, e)).collect()
}

fn provision_of<'a>(config: &'a Config, r: &ProvisionRequest) -> Option<&'a Provision> {
    config.mqtt.subscriptions.iter().find(|s| s.broker == r.broker && s.topic == r.topic)?.provision.as_ref()
}

/// Writes the list whole and renames it into place, so a crash leaves the old list or the new one.
fn save(file: &std::path::Path, entries: &[Entry]) -> std::io::Result<()> {
    let tmp = file.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(entries).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, file)
}
