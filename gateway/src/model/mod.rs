//! Points, devices and grids interned at config load, and the observations sources hand to the core.
//!
//! Everything on the hot path refers to points by [`PointId`], an index into [`Registry::points`]; names
//! are resolved once (at load, or once per topic in a source's cache), never per sample.
//!
//! Owns: the shared types (ids, samples, events, batches and their acks, the incident model, time,
//! health, reject reasons, the sample pool). May import: `config` (the registry is built from it).

pub mod health;
pub mod incident;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use serde::Serialize;

use crate::config::{Config, PointKind};

pub mod pool;
pub mod reject;
pub mod sound;
pub mod time;

/// Index of a point in [`Registry::points`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointId(pub u32);

/// Index of a device in [`Registry::devices`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

/// Index of a grid cell in [`Registry::grids`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GridId(pub u32);

/// How far a value can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Read or received as is.
    #[default]
    Good,
    /// The value may be outdated or approximate (for example, a device reported it as such).
    Uncertain,
    /// The source failed to produce a value; the last value is kept but must not be trusted.
    Bad,
    /// The reporting device says the monitored unit was stopped (HJ 212 flag F).
    Stopped,
    /// Taken during maintenance (HJ 212 flag M).
    Maintenance,
    /// Entered by hand, not measured (HJ 212 flag S).
    Manual,
    /// The analyser is faulty (HJ 212 flag D).
    Fault,
    /// Taken during calibration (HJ 212 flag C).
    Calibration,
    /// Beyond the analyser's measuring range (HJ 212 flag T).
    #[serde(rename = "over_range")]
    OverRange,
    /// Communication with the analyser failed (HJ 212 flag B).
    #[serde(rename = "comm_fault")]
    CommFault,
}

impl Quality {
    /// Whether a limit may be judged on the value: good or uncertain readings. The data states a
    /// device reports (maintenance, calibration, fault…) keep the value for reports of data
    /// availability, but it is not valid for compliance (HJ 212: only N is).
    pub fn judgeable(self) -> bool {
        matches!(self, Self::Good | Self::Uncertain)
    }

    /// The label used in the API and rule scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Uncertain => "uncertain",
            Self::Bad => "bad",
            Self::Stopped => "stopped",
            Self::Maintenance => "maintenance",
            Self::Manual => "manual",
            Self::Fault => "fault",
            Self::Calibration => "calibration",
            Self::OverRange => "over_range",
            Self::CommFault => "comm_fault",
        }
    }
}

/// How long a valid sample is in force (ns) when no later sample follows: longer gaps are missing
/// data for the rules' windows and the history alike.
pub const MAX_HOLD_NS: i64 = 15 * 60 * 1_000_000_000;

/// One numeric or boolean sample; booleans are carried as 0.0 / 1.0 and typed by the point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub point: PointId,
    pub quality: Quality,
    /// UTC, nanoseconds since the Unix epoch.
    pub ts: i64,
    pub value: f64,
}

/// A discrete happening on a device: card granted or denied, door forced, checkpoint scanned, arc fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    #[serde(skip)]
    pub device: DeviceId,
    pub kind: String,
    /// UTC, nanoseconds since the Unix epoch.
    pub ts: i64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// What a source hands to the core in one channel send.
#[derive(Debug, Default)]
pub struct Batch {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    /// Confirmed once the batch is durable (its samples in the outbox when forwarding, else applied to
    /// point state, and the incident changes it caused in the incident store); the source acknowledges
    /// the messages behind it only then.
    pub ack: Option<Ack>,
}

/// A promise to tell a source that what it handed over is durable, shared by everyone who must store
/// a part of it (the outbox, the incident store).
///
/// The source's receiver completes with `Ok(())` once every holder has called [`Ack::confirm`], and
/// with an error as soon as one holder is dropped without confirming (its part could not be stored):
/// then the source does not acknowledge, and the broker delivers the messages again.
#[derive(Debug)]
pub struct Ack {
    inner: Option<std::sync::Arc<AckInner>>,
}

#[derive(Debug)]
struct AckInner {
    tx: Option<tokio::sync::oneshot::Sender<()>>,
    failed: std::sync::atomic::AtomicBool,
    /// The source cannot receive more until it acknowledges (its broker's in-flight window is full).
    urgent: bool,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        if !self.failed.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl Ack {
    /// A new promise and the receiver the source waits on.
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        Self::with_urgency(false)
    }

    /// A new promise; `urgent` when the source receives nothing more until it is kept, so that
    /// holders store it now rather than gathering more into the same commit.
    pub fn with_urgency(urgent: bool) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = AckInner { tx: Some(tx), failed: std::sync::atomic::AtomicBool::new(false), urgent };
        (Self { inner: Some(std::sync::Arc::new(inner)) }, rx)
    }

    /// Whether the source waits on this promise to receive more.
    pub fn is_urgent(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.urgent)
    }

    /// Another holder that must confirm too before the source is told.
    pub fn share(&self) -> Self {
        Self { inner: self.inner.clone() }
    }

    /// This holder's part is durable.
    pub fn confirm(mut self) {
        self.inner.take();
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.failed.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Batch {
    /// A batch with room for `samples` samples.
    pub fn with_capacity(samples: usize) -> Self {
        Self { samples: Vec::with_capacity(samples), events: Vec::new(), ack: None }
    }

    /// A batch of these samples and events, with no acknowledgement waiting.
    pub fn new(samples: Vec<Sample>, events: Vec<Event>) -> Self {
        Self { samples, events, ack: None }
    }

    /// Tells the source that this holder's part of the batch is durable.
    pub fn confirm(&mut self) {
        if let Some(ack) = self.ack.take() {
            ack.confirm();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.samples.len() + self.events.len()
    }
}

/// The site this gateway serves.
#[derive(Debug, Clone)]
pub struct SiteInfo {
    pub id: String,
    pub name: String,
    pub timezone: chrono_tz::Tz,
    /// The site plan image, when configured.
    pub plan: Option<std::sync::Arc<PlanInfo>>,
}

impl Default for SiteInfo {
    fn default() -> Self {
        Self { id: String::new(), name: String::new(), timezone: chrono_tz::Asia::Shanghai, plan: None }
    }
}

/// A device a provisioning subscription heard of that is not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    /// The broker and subscription filter it came through.
    pub broker: String,
    pub topic: String,
    /// The topic's `{device}` and `{grid}`.
    pub device: String,
    pub grid: String,
}

/// The current [`Registry`], replaced whole when a reload or auto-provisioning changes the devices.
///
/// Successors keep ids stable ([`Registry::evolve`]), so a reader holding an older one still resolves
/// every id it was given then; readers that meet a newer id load again.
#[derive(Debug, Clone)]
pub struct SharedRegistry(std::sync::Arc<arc_swap::ArcSwap<Registry>>);

impl SharedRegistry {
    pub fn new(registry: std::sync::Arc<Registry>) -> Self {
        Self(std::sync::Arc::new(arc_swap::ArcSwap::new(registry)))
    }

    /// The registry now.
    pub fn load(&self) -> std::sync::Arc<Registry> {
        self.0.load_full()
    }

    /// A cheap reference to the registry now, for the sample path (no reference count touched).
    pub fn peek(&self) -> arc_swap::Guard<std::sync::Arc<Registry>> {
        self.0.load()
    }

    /// Publishes a successor; readers see it from their next load.
    pub fn store(&self, registry: std::sync::Arc<Registry>) {
        self.0.store(registry);
    }
}

impl From<&std::sync::Arc<Registry>> for SharedRegistry {
    fn from(r: &std::sync::Arc<Registry>) -> Self {
        Self::new(r.clone())
    }
}

impl From<&SharedRegistry> for SharedRegistry {
    fn from(r: &SharedRegistry) -> Self {
        r.clone()
    }
}

impl From<std::sync::Arc<Registry>> for SharedRegistry {
    fn from(r: std::sync::Arc<Registry>) -> Self {
        Self::new(r)
    }
}

/// A site plan: its image and the coordinate space of the grid outlines.
#[derive(Debug)]
pub struct PlanInfo {
    /// Shared, so serving the image copies nothing.
    pub bytes: bytes::Bytes,
    pub content_type: &'static str,
    pub width: f64,
    pub height: f64,
}

/// A grid cell of the park (网格).
#[derive(Debug, Clone, Serialize)]
pub struct GridInfo {
    pub id: String,
    pub name: String,
    /// The cell's outline on the site plan (empty without one).
    pub outline: Vec<[f64; 2]>,
    /// Removed by a reload: kept so ids stay valid, but no longer named or listed.
    #[serde(skip)]
    pub retired: bool,
}

/// A configured device with its points, which occupy a contiguous range of [`PointId`]s.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub id: String,
    pub name: String,
    pub grid: GridId,
    pub category: String,
    /// Its `[[device_types]]` id; empty when it names none.
    pub device_type: String,
    pub tags: BTreeMap<String, String>,
    pub points: Range<u32>,
    /// Poll interval (ms) of a Modbus or DL/T 645 device; 0 for devices that send on their own.
    pub poll_ms: u64,
    /// Created from a topic by auto-provisioning rather than written in the configuration.
    pub provisioned: bool,
    /// Removed (or re-entered with other points) by a reload: its ids stay valid for data already
    /// under way, but it is no longer named, listed or watched by rules.
    pub retired: bool,
}

/// A configured point of a device.
#[derive(Debug, Clone)]
pub struct PointInfo {
    pub device: DeviceId,
    pub name: String,
    pub unit: String,
    pub kind: PointKind,
    /// The event a Modbus bit raises when it rises (a detector's own alarm), if any.
    pub event: Option<String>,
    /// Why no rule watches the point, when the profile or config says so.
    pub unwatched: Option<String>,
}

/// All names of the configuration, interned; built from a validated [`Config`] at start and again,
/// with stable ids, on each reload ([`Registry::evolve`]).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub site: SiteInfo,
    pub grids: Vec<GridInfo>,
    pub devices: Vec<DeviceInfo>,
    pub points: Vec<PointInfo>,
    device_index: HashMap<String, DeviceId>,
    grid_index: HashMap<String, GridId>,
}

impl Registry {
    /// Interns the names of a configuration that passed validation.
    ///
    /// References that validation would have rejected (a device in an unknown grid) are skipped rather
    /// than panicking, so a registry can always be built.
    pub fn from_config(config: &Config) -> Self {
        Self::default().evolve(config, &[])
    }

    /// The registry of `config` (plus the `provisioned` devices, in its grids) as a successor of this
    /// one: ids stay stable, so a [`PointId`] taken from this registry means the same point in the
    /// successor. A device whose point names changed is re-entered under new ids and its old entry
    /// retired; removed devices and grids are retired, new ones appended.
    pub fn evolve(&self, config: &Config, provisioned: &[crate::config::Device]) -> Self {
        let timezone = config.site.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai);
        let mut grids = self.grids.clone();
        let mut grid_index = HashMap::with_capacity(config.grids.len());
        for g in &mut grids {
            g.retired = true;
        }
        for g in &config.grids {
            let info = GridInfo {
                id: g.id.clone(),
                name: g.name.clone().unwrap_or_else(|| g.id.clone()),
                outline: g.outline.clone(),
                retired: false,
            };
            let id = match self.grid_index.get(&g.id) {
                Some(&id) => {
                    grids[id.0 as usize] = info;
                    id
                }
                None => {
                    grids.push(info);
                    GridId(grids.len() as u32 - 1)
                }
            };
            grid_index.insert(g.id.clone(), id);
        }
        let mut devices = self.devices.clone();
        let mut points = self.points.clone();
        for d in &mut devices {
            d.retired = true;
        }
        let mut device_index = HashMap::with_capacity(config.devices.len() + provisioned.len());
        let all = config.devices.iter().map(|d| (d, false)).chain(provisioned.iter().map(|d| (d, true)));
        for (d, is_provisioned) in all {
            let Some(&grid) = grid_index.get(&d.grid) else {
                continue;
            };
            if device_index.contains_key(&d.id) {
                continue;
            }
            let same_points = |old: &DeviceInfo| {
                old.points.len() == d.points.len()
                    && old.points.clone().zip(&d.points).all(|(i, p)| points[i as usize].name == p.name)
            };
            let kept = self.device_index.get(&d.id).copied().filter(|&id| same_points(&self.devices[id.0 as usize]));
            let id = kept.unwrap_or(DeviceId(devices.len() as u32));
            let range = match kept {
                Some(id) => self.devices[id.0 as usize].points.clone(),
                None => points.len() as u32..(points.len() + d.points.len()) as u32,
            };
            for (i, p) in range.clone().zip(&d.points) {
                let info = PointInfo {
                    device: id,
                    name: p.name.clone(),
                    unit: p.unit.clone(),
                    kind: p.kind,
                    event: p.event.clone(),
                    unwatched: p.unwatched.clone(),
                };
                match points.get_mut(i as usize) {
                    Some(slot) => *slot = info,
                    None => points.push(info),
                }
            }
            let info = DeviceInfo {
                id: d.id.clone(),
                name: d.name.clone().unwrap_or_else(|| d.id.clone()),
                grid,
                category: d.category.clone(),
                device_type: d.device_type.clone().unwrap_or_default(),
                tags: d.tags.clone(),
                points: range,
                poll_ms: d
                    .modbus
                    .as_ref()
                    .map(|m| m.interval_ms)
                    .or(d.dlt645.as_ref().map(|m| m.interval_ms))
                    .unwrap_or(0),
                provisioned: is_provisioned,
                retired: false,
            };
            match kept {
                Some(id) => devices[id.0 as usize] = info,
                None => devices.push(info),
            }
            device_index.insert(d.id.clone(), id);
        }
        Self {
            site: SiteInfo {
                id: config.site.id.clone(),
                name: config.site.name.clone().unwrap_or_else(|| config.site.id.clone()),
                timezone,
                plan: config.site.plan.as_ref().map(|p| {
                    std::sync::Arc::new(PlanInfo {
                        bytes: bytes::Bytes::from(p.bytes.clone()),
                        content_type: p.content_type,
                        width: p.width,
                        height: p.height,
                    })
                }),
            },
            grids,
            devices,
            points,
            device_index,
            grid_index,
        }
    }

    /// The devices still configured (not retired), with their ids.
    pub fn live_devices(&self) -> impl Iterator<Item = (DeviceId, &DeviceInfo)> {
        self.devices.iter().enumerate().filter(|(_, d)| !d.retired).map(|(i, d)| (DeviceId(i as u32), d))
    }

    /// The grids still configured (not retired), with their ids.
    pub fn live_grids(&self) -> impl Iterator<Item = (GridId, &GridInfo)> {
        self.grids.iter().enumerate().filter(|(_, g)| !g.retired).map(|(i, g)| (GridId(i as u32), g))
    }

    /// The device with this configured id.
    pub fn device_id(&self, id: &str) -> Option<DeviceId> {
        self.device_index.get(id).copied()
    }

    /// The grid with this configured id.
    pub fn grid_id(&self, id: &str) -> Option<GridId> {
        self.grid_index.get(id).copied()
    }

    pub fn device(&self, id: DeviceId) -> &DeviceInfo {
        &self.devices[id.0 as usize]
    }

    pub fn point(&self, id: PointId) -> &PointInfo {
        &self.points[id.0 as usize]
    }

    pub fn grid(&self, id: GridId) -> &GridInfo {
        &self.grids[id.0 as usize]
    }

    /// The point of `device` named `name`; devices have few points, so a scan beats a hash here.
    pub fn point_of(&self, device: DeviceId, name: &str) -> Option<PointId> {
        let range = self.device(device).points.clone();
        range.into_iter().find(|&i| self.points[i as usize].name == name).map(PointId)
    }
}

#[cfg(test)]
mod tests {
    use super::Ack;

    #[test]
    fn ack_fires_only_when_every_holder_confirmed() {
        let (a, mut rx) = Ack::new();
        let b = a.share();
        a.confirm();
        assert!(rx.try_recv().is_err(), "one holder is still storing");
        b.confirm();
        assert_eq!(rx.try_recv(), Ok(()));

        let (a, mut rx) = Ack::new();
        let b = a.share();
        drop(b); // that part could not be stored
        a.confirm();
        assert_eq!(rx.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Closed));
    }
}
