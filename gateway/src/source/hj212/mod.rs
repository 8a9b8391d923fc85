//! HJ 212 source: the TCP server that emission-monitoring data loggers (数采仪) report to.
//!
//! `codec.rs` is the pure protocol: framing, both CRC variants, lenient field parsing, answers.
//! `relay.rs` forwards a logger's raw frames to an upstream platform. This file runs one task per
//! listener and one per connection: bytes are cut into frames; each frame is checked (MN known, CRC in
//! the logger's variant, PW), answered (9014, same QN) when its Flag asks, relayed, reassembled when
//! split (PNUM/PNO), and its values handed to the core as samples stamped with the logger's DataTime
//! in the site's time zone. Data flags become the sample's quality (N good; F, M, S, D, C, T, B their
//! own states). A bad frame is refused for its reason, counted against the logger (or the listener
//! while the connection has not named a known logger yet), recorded in `/api/v1/rejects`, and costs
//! no other frame; an unknown MN or a wrong PW closes the connection.
//!
//! Owns: the HJ 212 listeners, their connections and counters. May import: `model`, `config`,
//! `metrics`.

pub mod codec;
pub mod relay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeZone as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::codec::{CrcVariant, DataFlag, Deframed, Deframer, Packet, Reject};
use self::relay::RelayQueue;
use crate::config::hj212::{point_name, Listener, Logger};
use crate::metrics::{Metrics, RejectRecord};
use crate::model::time::{fmt_ns, now_ns};
use crate::model::{Batch, DeviceId, Event, Quality, Registry, Sample};

/// Rejects a connection keeps in `/api/v1/rejects` per second; all of them are counted.
const REJECTS_KEPT_PER_SEC: u32 = 5;
/// Split packets waiting for their other parts, per connection.
const MAX_PENDING_SPLITS: usize = 8;
/// Parts of one split packet at most.
const MAX_PARTS: u32 = 64;
/// How long the parts of a split packet wait for the rest.
const SPLIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Counters of one logger, for `/api/v1/devices` and `/metrics`.
#[derive(Debug)]
pub struct LoggerStatus {
    pub mn: String,
    pub device: String,
    /// Connections open now that named this logger.
    pub connections: AtomicU64,
    /// Valid frames received.
    pub frames: AtomicU64,
    pub samples: AtomicU64,
    /// Alarm events (CN 2072) handed on.
    pub events: AtomicU64,
    /// Answers sent (9014).
    pub answers: AtomicU64,
    /// Values whose code or suffix maps to no point of the device.
    pub unmapped: AtomicU64,
    /// Values flagged anything but N.
    pub flagged: AtomicU64,
    /// Refused frames by reason, in the order of [`Reject::ALL`].
    pub rejects: [AtomicU64; Reject::ALL.len()],
    /// UTC ns of the last valid frame (0: never).
    pub last_frame_ns: AtomicI64,
    /// The address of the last connection.
    pub peer: Mutex<String>,
    /// The relay's queue and counters, when the logger is relayed.
    pub relay: Option<Arc<RelayQueue>>,
}

impl LoggerStatus {
    /// Rejects counted for `reason`.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejects[reason.index()].load(Ordering::Relaxed)
    }
}

/// Counters of one listener.
#[derive(Debug)]
pub struct ListenerStatus {
    pub id: String,
    pub listen: SocketAddr,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed for idling past the timeout.
    pub idle_closed: AtomicU64,
    /// Refused frames of connections that had not named a known logger, by reason.
    pub rejects: [AtomicU64; Reject::ALL.len()],
}

/// Status of every HJ 212 listener and logger.
#[derive(Debug, Default)]
pub struct Hj212Status {
    pub listeners: Vec<Arc<ListenerStatus>>,
    pub loggers: Vec<Arc<LoggerStatus>>,
}

struct LoggerRt {
    cfg: Logger,
    device: Option<DeviceId>,
    status: Arc<LoggerStatus>,
}

/// What every connection shares: the loggers by MN, the registry, the counters.
struct Shared {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    loggers: Vec<LoggerRt>,
    by_mn: HashMap<String, usize>,
}

/// The HJ 212 server: its listeners and relays, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<(Listener, Arc<ListenerStatus>)>,
    relays: Vec<(String, Arc<RelayQueue>)>,
    status: Arc<Hj212Status>,
}

impl Server {
    /// Prepares the listeners and loggers of `config`.
    pub fn new(config: &crate::config::Config, registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        let mut status = Hj212Status::default();
        let mut loggers = Vec::new();
        let mut relays = Vec::new();
        let mut by_mn = HashMap::new();
        for l in &config.hj212.loggers {
            let relay = l.relay.as_ref().map(|r| {
                let q = Arc::new(RelayQueue::new(r.queue_frames));
                relays.push((r.address.clone(), q.clone()));
                q
            });
            let st = Arc::new(LoggerStatus {
                mn: l.mn.clone(),
                device: l.device.clone(),
                connections: AtomicU64::new(0),
                frames: AtomicU64::new(0),
                samples: AtomicU64::new(0),
                events: AtomicU64::new(0),
                answers: AtomicU64::new(0),
                unmapped: AtomicU64::new(0),
                flagged: AtomicU64::new(0),
                rejects: std::array::from_fn(|_| AtomicU64::new(0)),
                last_frame_ns: AtomicI64::new(0),
                peer: Mutex::new(String::new()),
                relay,
            });
            status.loggers.push(st.clone());
            by_mn.insert(l.mn.clone(), loggers.len());
            loggers.push(LoggerRt { cfg: l.clone(), device: registry.device_id(&l.device), status: st });
        }
        let listeners: Vec<(Listener, Arc<ListenerStatus>)> = config
            .hj212
            .listeners
            .iter()
            .map(|l| {
                let st = Arc::new(ListenerStatus {
                    id: l.id.clone(),
                    listen: l.listen,
                    open: AtomicU64::new(0),
                    accepted: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                    idle_closed: AtomicU64::new(0),
                    rejects: std::array::from_fn(|_| AtomicU64::new(0)),
                });
                status.listeners.push(st.clone());
                (l.clone(), st)
            })
            .collect();
        Self {
            shared: Arc::new(Shared { registry, metrics, loggers, by_mn }),
            listeners,
            relays,
            status: Arc::new(status),
        }
    }

    /// The counters, for the API.
    pub fn status(&self) -> Arc<Hj212Status> {
        self.status.clone()
    }

    /// Binds every listener.
    ///
    /// # Errors
    /// An address that cannot be bound, with the listener's id.
    pub async fn bind(self) -> Result<Bound, (String, SocketAddr, std::io::Error)> {
        let mut bound = Vec::new();
        for (cfg, st) in self.listeners {
            let l = TcpListener::bind(cfg.listen).await.map_err(|e| (cfg.id.clone(), cfg.listen, e))?;
            bound.push((cfg, st, l));
        }
        Ok(Bound { shared: self.shared, listeners: bound, relays: self.relays })
    }
}

/// The server with its listeners bound.
pub struct Bound {
    shared: Arc<Shared>,
    listeners: Vec<(Listener, Arc<ListenerStatus>, TcpListener)>,
    relays: Vec<(String, Arc<RelayQueue>)>,
}

impl Bound {
    /// The addresses the listeners are bound to (a port 0 in the config becomes the real one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(_, _, l)| l.local_addr().ok()).collect()
    }

    /// Serves until `shutdown`; connections hand their last batch on before this returns.
    pub async fn run(self, tx: mpsc::Sender<Batch>, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for (address, queue) in self.relays {
            tasks.spawn(relay::run(address, queue, shutdown.clone()));
        }
        for (cfg, st, listener) in self.listeners {
            tasks.spawn(accept_loop(cfg, st, listener, self.shared.clone(), tx.clone(), shutdown.clone()));
        }
        drop(tx);
        while tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    cfg: Listener,
    st: Arc<ListenerStatus>,
    listener: TcpListener,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Batch>,
    shutdown: CancellationToken,
) {
    let bound = listener.local_addr().map_or_else(|_| cfg.listen.to_string(), |a| a.to_string());
    info!(listener = %cfg.id, listen = %bound, "HJ 212 listener started.");
    let open = Arc::new(AtomicUsize::new(0));
    let mut conns = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(listener = %cfg.id, error = %e, "HJ 212 accept failed.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        st.accepted.fetch_add(1, Ordering::Relaxed);
        if open.load(Ordering::Relaxed) >= cfg.max_connections {
            st.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        st.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(&cfg, st.clone(), shared.clone(), peer);
        let (open, st, tx, stop) = (open.clone(), st.clone(), tx.clone(), shutdown.clone());
        conns.spawn(async move {
            conn.run(stream, tx, stop).await;
            open.fetch_sub(1, Ordering::Relaxed);
            st.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while conns.join_next().await.is_some() {}
    info!(listener = %cfg.id, "HJ 212 listener stopped.");
}

/// Parts of a split packet received so far.
struct Split {
    since: Instant,
    parts: Vec<Option<Packet>>,
}

struct Connection {
    listener: String,
    max_frame: usize,
    max_fps: u32,
    idle: Duration,
    st: Arc<ListenerStatus>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The logger this connection named in a valid frame.
    logger: Option<usize>,
    /// Frames in the current one-second window.
    window: (Instant, u32),
    /// Rejects kept in the log in the current one-second window.
    recorded: (Instant, u32),
    splits: HashMap<(usize, String), Split>,
}

/// What one frame asks of the connection besides samples.
enum After {
    Continue,
    Close,
}

impl Connection {
    fn new(cfg: &Listener, st: Arc<ListenerStatus>, shared: Arc<Shared>, peer: SocketAddr) -> Self {
        let now = Instant::now();
        Self {
            listener: cfg.id.clone(),
            max_frame: cfg.max_frame_bytes,
            max_fps: cfg.max_frames_per_sec,
            idle: Duration::from_secs(cfg.idle_timeout_secs),
            st,
            shared,
            peer,
            logger: None,
            window: (now, 0),
            recorded: (now, 0),
            splits: HashMap::new(),
        }
    }

    async fn run(mut self, mut stream: TcpStream, tx: mpsc::Sender<Batch>, shutdown: CancellationToken) {
        debug!(listener = %self.listener, peer = %self.peer, "HJ 212 logger connected.");
        let mut deframer = Deframer::new(self.max_frame);
        let mut buf = vec![0u8; 4096];
        let mut answers: Vec<u8> = Vec::new();
        let mut close = false;
        // Refused or stopping: what is left in the buffer is not a cut-off frame of the logger's.
        let mut quiet_end = false;
        while !close {
            let read = tokio::select! {
                () = shutdown.cancelled() => {
                    quiet_end = true;
                    break;
                }
                r = tokio::time::timeout(self.idle, stream.read(&mut buf)) => r,
            };
            let n = match read {
                Err(_) => {
                    self.st.idle_closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => n,
            };
            deframer.push(&buf[..n]);
            let mut batch = Batch::default();
            while let Some(item) = deframer.next_frame() {
                match item {
                    Deframed::Reject(reason) => self.reject(reason, codec::describe(reason), None),
                    Deframed::Frame { bytes, .. } => {
                        if let After::Close = self.frame(&bytes, &mut batch, &mut answers) {
                            close = true;
                            quiet_end = true;
                            break;
                        }
                    }
                }
            }
            if !answers.is_empty() {
                let written = tokio::time::timeout(Duration::from_secs(10), stream.write_all(&answers)).await;
                if !matches!(written, Ok(Ok(()))) {
                    close = true;
                }
                answers.clear();
            }
            if !batch.is_empty() {
                // A full core channel waits here: the logger's TCP window fills, nothing is dropped.
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
        }
        if let Some(reason) = deframer.finish().filter(|_| !quiet_end) {
            self.reject(reason, "the connection ended inside a frame", None);
        }
        for ((_, qn), _) in std::mem::take(&mut self.splits).into_iter().filter(|_| !quiet_end) {
            self.reject(Reject::Truncated, &format!("split packet QN={qn} incomplete when the connection ended"), None);
        }
        if let Some(i) = self.logger {
            self.shared.loggers[i].status.connections.fetch_sub(1, Ordering::Relaxed);
        }
        debug!(listener = %self.listener, peer = %self.peer, "HJ 212 logger disconnected.");
    }

    /// Counts and records a refused frame against the connection's logger, or the listener.
    fn reject(&mut self, reason: Reject, detail: &str, frame: Option<&[u8]>) {
        self.reject_as(self.logger, reason, detail, frame);
    }

    /// Counts and records a refused frame against logger `who` (the listener when `None`).
    fn reject_as(&mut self, who: Option<usize>, reason: Reject, detail: &str, frame: Option<&[u8]>) {
        let (who, counter) = match who {
            Some(i) => {
                let l = &self.shared.loggers[i];
                (l.cfg.mn.as_str(), &l.status.rejects[reason.index()])
            }
            None => ("", &self.st.rejects[reason.index()]),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if now.duration_since(self.recorded.0) >= Duration::from_secs(1) {
            self.recorded = (now, 0);
        }
        if self.recorded.1 >= REJECTS_KEPT_PER_SEC {
            return;
        }
        self.recorded.1 += 1;
        let excerpt = frame.map(|f| String::from_utf8_lossy(&f[..f.len().min(160)]).into_owned()).unwrap_or_default();
        debug!(listener = %self.listener, peer = %self.peer, mn = who, reason = reason.as_str(), detail, "Rejected HJ 212 input.");
        self.shared.metrics.rejects.push(RejectRecord {
            at: fmt_ns(now_ns()),
            broker: format!("hj212:{}", self.listener),
            subscription: who.to_owned(),
            topic: self.peer.to_string(),
            reason: reason.as_str(),
            detail: detail.to_owned(),
            payload: excerpt,
        });
    }

    fn frame(&mut self, bytes: &[u8], batch: &mut Batch, answers: &mut Vec<u8>) -> After {
        let now = Instant::now();
        // A window starts with its first frame.
        if self.window.1 == 0 || now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        if self.window.1 > self.max_fps {
            self.reject(Reject::RateLimited, &format!("more than {} frames a second", self.max_fps), Some(bytes));
            return After::Continue;
        }
        let data = codec::data_of(bytes).unwrap_or_default();
        let packet = match codec::parse(data) {
            Ok(p) => p,
            Err(reason) => {
                // With a known logger, a broken CRC explains a broken field best.
                let reason = match self.logger {
                    Some(i) if codec::check_crc(bytes, self.shared.loggers[i].cfg.crc).is_err() => Reject::BadCrc,
                    _ => reason,
                };
                self.reject(reason, "data segment without CN, MN or CP=&&…&&, or a bad Flag/PNUM/PNO", Some(bytes));
                return After::Continue;
            }
        };
        let Some(&i) = self.shared.by_mn.get(&packet.mn) else {
            let mn: String = packet.mn.chars().take(64).collect();
            self.reject(Reject::UnknownMn, &format!("no logger with MN {mn:?} is configured"), Some(bytes));
            return After::Close;
        };
        let shared = self.shared.clone();
        let lg = &shared.loggers[i];
        // Refusals of a frame that names a logger count against that logger, but only a frame that
        // passes binds the connection to it.
        if let Err(reason) = codec::check_crc(bytes, lg.cfg.crc) {
            let other = match lg.cfg.crc {
                CrcVariant::Standard => CrcVariant::Modbus,
                CrcVariant::Modbus => CrcVariant::Standard,
            };
            let hint = if codec::check_crc(bytes, other).is_ok() { " (it matches the other CRC variant)" } else { "" };
            let detail = format!("CRC does not match in the {:?} variant{hint}", lg.cfg.crc);
            self.reject_as(Some(i), reason, &detail, Some(bytes));
            return After::Continue;
        }
        if packet.pw.as_deref() != lg.cfg.pw.as_deref() {
            self.reject_as(Some(i), Reject::WrongPassword, "PW does not match the logger's", None);
            return After::Close;
        }
        if self.logger != Some(i) {
            if let Some(old) = self.logger {
                shared.loggers[old].status.connections.fetch_sub(1, Ordering::Relaxed);
            }
            self.logger = Some(i);
            lg.status.connections.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut p) = lg.status.peer.lock() {
                *p = self.peer.to_string();
            }
        }
        lg.status.frames.fetch_add(1, Ordering::Relaxed);
        lg.status.last_frame_ns.store(now_ns(), Ordering::Relaxed);
        if let Some(q) = &lg.status.relay {
            q.push(bytes.to_vec());
        }
        // Uploads (2xxx data, 3xxx, 8013 heartbeats…) are answered with a data answer; commands
        // (1xxx) and answers (9xxx) are not the platform's to answer here.
        let upload = !packet.cn.starts_with('9') && !packet.cn.starts_with('1');
        if packet.wants_answer() && upload {
            answers.extend(codec::data_answer(
                lg.cfg.crc,
                packet.qn.as_deref(),
                lg.cfg.pw.as_deref().unwrap_or(""),
                &lg.cfg.mn,
            ));
            lg.status.answers.fetch_add(1, Ordering::Relaxed);
        }
        let packet = match packet.split() {
            None => packet,
            Some((no, num)) => match self.reassemble(i, packet, no, num) {
                Some(whole) => whole,
                None => return After::Continue,
            },
        };
        self.values(i, &packet, bytes, batch);
        After::Continue
    }

    /// Keeps a part of a split packet; the whole packet once every part is in.
    fn reassemble(&mut self, logger: usize, part: Packet, no: u32, num: u32) -> Option<Packet> {
        if num > MAX_PARTS {
            self.reject(Reject::BadField, &format!("PNUM {num} is above {MAX_PARTS}"), None);
            return None;
        }
        let now = Instant::now();
        let stale: Vec<(usize, String)> = self
            .splits
            .iter()
            .filter(|(_, s)| now.duration_since(s.since) > SPLIT_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.splits.remove(&k);
            self.reject(
                Reject::Truncated,
                &format!("split packet QN={} incomplete after {SPLIT_TIMEOUT:?}", k.1),
                None,
            );
        }
        let key = (logger, part.qn.clone().unwrap_or_default());
        if !self.splits.contains_key(&key) && self.splits.len() >= MAX_PENDING_SPLITS {
            if let Some(oldest) = self.splits.iter().min_by_key(|(_, s)| s.since).map(|(k, _)| k.clone()) {
                self.splits.remove(&oldest);
                self.reject(Reject::Truncated, &format!("split packet QN={} dropped for newer ones", oldest.1), None);
            }
        }
        let entry =
            self.splits.entry(key.clone()).or_insert_with(|| Split { since: now, parts: vec![None; num as usize] });
        if entry.parts.len() != num as usize {
            self.splits.remove(&key);
            self.reject(Reject::BadField, "PNUM changed between the parts of one packet", None);
            return None;
        }
        entry.parts[(no - 1) as usize] = Some(part);
        if entry.parts.iter().any(Option::is_none) {
            return None;
        }
        let parts = self.splits.remove(&key)?.parts;
        let mut parts = parts.into_iter().flatten();
        let mut whole = parts.next()?;
        let mut group = whole.cp.iter().map(|c| c.group).max().map_or(0, |g| g + 1);
        for p in parts {
            let base = group;
            for mut item in p.cp {
                // A DataTime is repeated in every part; the first part's stands.
                if item.code.is_empty() && whole.cp_value(&item.key).is_some() {
                    continue;
                }
                item.group = item.group.saturating_add(base);
                group = group.max(item.group.saturating_add(1));
                whole.cp.push(item);
            }
        }
        whole.pno = None;
        whole.pnum = None;
        Some(whole)
    }

    /// Turns a packet's values into samples (or an alarm event) of the logger's device.
    fn values(&mut self, i: usize, p: &Packet, bytes: &[u8], batch: &mut Batch) {
        let shared = self.shared.clone();
        let lg = &shared.loggers[i];
        let Some(device) = lg.device else { return };
        let time_key = if p.cn == "2072" { "AlarmTime" } else { "DataTime" };
        let has_values = matches!(p.cn.as_str(), "2011" | "2051" | "2061" | "2031" | "2041" | "2021" | "2072");
        if !has_values {
            return;
        }
        let Some(raw) = p.cp_value(time_key) else {
            self.reject(Reject::MissingField, &format!("CN {} without {time_key}", p.cn), Some(bytes));
            return;
        };
        let Some(ts) = codec::parse_time(raw).and_then(|t| local_ns(&shared.registry.site.timezone, t)) else {
            self.reject(Reject::BadField, &format!("{time_key}={raw:?} is not YYYYMMDDhhmmss[zzz]"), Some(bytes));
            return;
        };
        let (readings, bad) = codec::readings(p);
        if let Some(item) = bad.first() {
            let n = bad.len();
            self.reject(
                Reject::BadValue,
                &format!("{n} value(s) not a finite number, first {}-{}={:?}", item.code, item.key, item.value),
                Some(bytes),
            );
        }
        if p.cn == "2072" {
            for r in &readings {
                let mut attributes = serde_json::Map::new();
                attributes.insert("mn".into(), lg.cfg.mn.clone().into());
                attributes.insert("code".into(), r.code.into());
                if let Some(point) = lg.cfg.point_of(r.code) {
                    attributes.insert("point".into(), point.into());
                }
                attributes.insert("suffix".into(), r.suffix.into());
                attributes.insert("value".into(), r.value.into());
                if let Some(t) = p.cp_value("AlarmType") {
                    attributes.insert("alarm_type".into(), t.into());
                }
                batch.events.push(Event { device, kind: "hj212_alarm".into(), ts, attributes });
                lg.status.events.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let mut samples = 0;
        for r in &readings {
            let point = lg
                .cfg
                .point_of(r.code)
                .and_then(|base| point_name(base, &p.cn, r.suffix))
                .and_then(|name| shared.registry.point_of(device, &name));
            let Some(point) = point else {
                lg.status.unmapped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let quality = quality(r.flag, r.unknown_flag);
            if quality != Quality::Good {
                lg.status.flagged.fetch_add(1, Ordering::Relaxed);
            }
            batch.samples.push(Sample { point, quality, ts, value: r.value });
            samples += 1;
        }
        lg.status.samples.fetch_add(samples, Ordering::Relaxed);
    }
}

/// The quality of a value with this data flag (no flag: N).
pub fn quality(flag: Option<DataFlag>, unknown: bool) -> Quality {
    if unknown {
        return Quality::Uncertain;
    }
    match flag {
        None | Some(DataFlag::Normal) => Quality::Good,
        Some(DataFlag::Stopped) => Quality::Stopped,
        Some(DataFlag::Maintenance) => Quality::Maintenance,
        Some(DataFlag::Manual) => Quality::Manual,
        Some(DataFlag::Fault) => Quality::Fault,
        Some(DataFlag::Calibration) => Quality::Calibration,
        Some(DataFlag::OverRange) => Quality::OverRange,
        Some(DataFlag::CommFault) => Quality::CommFault,
    }
}

/// UTC ns of a local time in the site's zone (the earlier reading of an ambiguous one).
fn local_ns(tz: &chrono_tz::Tz, t: chrono::NaiveDateTime) -> Option<i64> {
    tz.from_local_datetime(&t).earliest()?.timestamp_nanos_opt()
}

/// The status of a logger for `/api/v1/devices`.
pub fn status_json(l: &LoggerStatus) -> serde_json::Value {
    let last = l.last_frame_ns.load(Ordering::Relaxed);
    let rejects: serde_json::Map<String, serde_json::Value> = Reject::ALL
        .iter()
        .filter(|r| l.rejected(**r) > 0)
        .map(|r| (r.as_str().to_owned(), l.rejected(*r).into()))
        .collect();
    let mut v = serde_json::json!({
        "mn": l.mn,
        "connected": l.connections.load(Ordering::Relaxed) > 0,
        "peer": l.peer.lock().map(|p| p.clone()).unwrap_or_default(),
        "last_frame": if last > 0 { serde_json::Value::String(fmt_ns(last)) } else { serde_json::Value::Null },
        "frames": l.frames.load(Ordering::Relaxed),
        "samples": l.samples.load(Ordering::Relaxed),
        "answers": l.answers.load(Ordering::Relaxed),
        "unmapped": l.unmapped.load(Ordering::Relaxed),
        "flagged": l.flagged.load(Ordering::Relaxed),
        "rejects": rejects,
    });
    if let Some(q) = &l.relay {
        v["relay"] = serde_json::json!({
            "connected": q.metrics.connected.load(Ordering::Relaxed),
            "queued": q.len(),
            "sent": q.metrics.sent.load(Ordering::Relaxed),
            "dropped": q.metrics.dropped.load(Ordering::Relaxed),
        });
    }
    v
}

#[cfg(test)]
mod tests;
