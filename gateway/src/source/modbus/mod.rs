//! Modbus source: one task per connection (a TCP connection or an RS-485 bus), one transaction at a
//! time on it, each device on its own poll interval with the reads the planner merged.
//!
//! A device that stops answering backs off (exponential, capped) so it costs its neighbours at most
//! one timeout per backoff period, goes `offline` (an event) after `offline_after` cycles without a
//! valid read and `online` when it answers again. An exception (the device said "no") marks the points
//! of that read bad, with the exception named, and keeps the connection; a transport error or a
//! timeout reconnects. A cycle not finished before the next is due is counted as an overrun, not queued.

pub mod decode;
pub mod plan;
pub mod profile;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::{ExceptionCode, Slave, SlaveContext};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::decode::{DataType, Order};
use self::plan::{Read, Span, Table};
use self::profile::Profile;
use super::poll::{self, send};
use crate::config::{self, ModbusConnection, ModbusKind};
use crate::model::time::now_ns;
use crate::model::{Batch, DeviceId, Event, PointId, Quality, Registry, Sample};

/// The Modbus source failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("modbus profiles: {0}")]
    Profiles(String),
    #[error("point \"{point}\" of device \"{device}\" is not writable (declare `writable = true` in its profile)")]
    NotWritable { device: String, point: String },
    #[error("device \"{0}\" is not polled over Modbus")]
    UnknownDevice(String),
    #[error("modbus: {0}")]
    Io(#[from] std::io::Error),
    #[error("modbus exception: {0:?}")]
    Exception(ExceptionCode),
    #[error("modbus protocol: {0}")]
    Protocol(String),
}

/// Health of one polled device, for `/api/v1/devices` and `/metrics`.
#[derive(Debug, Default)]
pub struct DeviceStatus {
    pub device: String,
    pub connection: String,
    pub online: AtomicBool,
    pub last_success_ns: AtomicI64,
    pub requests: AtomicU64,
    pub registers: AtomicU64,
    pub timeouts: AtomicU64,
    pub exceptions: AtomicU64,
    pub transport_errors: AtomicU64,
    pub overruns: AtomicU64,
    pub last_latency_us: AtomicU64,
    pub last_error: Mutex<String>,
}

/// Status of every polled device.
#[derive(Debug, Default)]
pub struct ModbusStatus {
    pub devices: Vec<Arc<DeviceStatus>>,
}

struct PlannedPoint {
    point: PointId,
    table: Table,
    address: u16,
    ty: DataType,
    order: Order,
    scale: f64,
    offset: f64,
    bit: u8,
    event: Option<String>,
    last_bit: Option<bool>,
}

struct PolledDevice {
    id: DeviceId,
    unit: u8,
    interval: Duration,
    reads: Vec<Read>,
    points: Vec<PlannedPoint>,
    next_due: Instant,
    failures: u32,
    offline: bool,
    status: Arc<DeviceStatus>,
}

/// Builds the pollers for every connection of the config.
///
/// # Errors
/// Profiles that cannot be loaded (the config check normally catches this first).
pub fn pollers(config: &config::Config, registry: &Registry) -> Result<(Vec<Poller>, Arc<ModbusStatus>), ModbusError> {
    let profiles = profile::load_all(&config.modbus.profile_dirs).map_err(|p| {
        ModbusError::Profiles(p.into_iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>().join("; "))
    })?;
    let mut status = ModbusStatus::default();
    let mut out = Vec::new();
    for conn in &config.modbus.connections {
        let mut devices = Vec::new();
        for d in config.devices.iter().filter(|d| d.modbus.as_ref().is_some_and(|m| m.connection == conn.id)) {
            let (Some(m), Some(id)) = (&d.modbus, registry.device_id(&d.id)) else { continue };
            let Some(p) = profiles.get(&m.profile) else { continue };
            let st =
                Arc::new(DeviceStatus { device: d.id.clone(), connection: conn.id.clone(), ..DeviceStatus::default() });
            status.devices.push(st.clone());
            devices.push(plan_device(id, m, p, registry, st));
        }
        if !devices.is_empty() {
            out.push(Poller { conn: conn.clone(), devices });
        }
    }
    Ok((out, Arc::new(status)))
}

fn plan_device(
    id: DeviceId,
    m: &config::DeviceModbus,
    p: &Profile,
    registry: &Registry,
    status: Arc<DeviceStatus>,
) -> PolledDevice {
    let points: Vec<PlannedPoint> = p
        .points
        .iter()
        .filter(|pt| pt.ty != DataType::String)
        .filter_map(|pt| {
            Some(PlannedPoint {
                point: registry.point_of(id, &pt.name)?,
                table: pt.table,
                address: pt.address,
                ty: pt.ty,
                order: pt.order,
                scale: pt.scale,
                offset: pt.offset,
                bit: pt.bit,
                event: pt.event.clone(),
                last_bit: None,
            })
        })
        .collect();
    let spans: Vec<Span> =
        points.iter().map(|pt| Span { table: pt.table, address: pt.address, count: pt.ty.words(1) }).collect();
    let forbidden: Vec<(Table, u16, u16)> = p.forbidden.iter().map(|f| (f.table, f.first, f.last)).collect();
    PolledDevice {
        id,
        unit: m.unit,
        interval: Duration::from_millis(m.interval_ms),
        reads: plan::plan(&spans, p.max_gap, &forbidden),
        points,
        next_due: Instant::now(),
        failures: 0,
        offline: false,
        status,
    }
}

/// Polls the devices of one connection.
pub struct Poller {
    conn: ModbusConnection,
    devices: Vec<PolledDevice>,
}

enum Outcome {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Exception(ExceptionCode),
    Timeout,
    Transport(String),
}

impl Poller {
    /// Requests per cycle of each device, for logs and benchmarks.
    pub fn requests_per_cycle(&self) -> Vec<usize> {
        self.devices.iter().map(|d| d.reads.len()).collect()
    }

    /// Runs until `shutdown`, sending samples and events into the core channel.
    pub async fn run(mut self, tx: mpsc::Sender<Batch>, shutdown: CancellationToken) {
        let timeout = Duration::from_millis(self.conn.timeout_ms);
        let gap = Duration::from_millis(self.conn.gap_ms);
        let backoff_max = Duration::from_millis(self.conn.backoff_max_ms);
        let mut ctx: Option<Context> = None;
        let mut reconnect_wait = Duration::from_millis(200);
        info!(connection = %self.conn.id, devices = self.devices.len(), "Modbus poller started.");
        loop {
            let Some(i) = (0..self.devices.len()).min_by_key(|&i| self.devices[i].next_due) else { return };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(self.devices[i].next_due) => {}
            }
            if ctx.is_none() {
                match tokio::time::timeout(timeout.max(Duration::from_secs(1)), connect(&self.conn)).await {
                    Ok(Ok(c)) => {
                        ctx = Some(c);
                        reconnect_wait = Duration::from_millis(200);
                    }
                    other => {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            _ => "connect timed out".to_owned(),
                        };
                        debug!(connection = %self.conn.id, error = %why, "Modbus connect failed.");
                        // Every device due now missed this cycle.
                        let now = Instant::now();
                        for d in self.devices.iter_mut().filter(|d| d.next_due <= now) {
                            d.status.transport_errors.fetch_add(1, Ordering::Relaxed);
                            poll::set_error(&d.status.last_error, format!("connect: {why}"));
                            let events = failed_cycle(d, backoff_max, self.conn.offline_after);
                            send(&tx, Vec::new(), events).await;
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(reconnect_wait) => {}
                        }
                        reconnect_wait = (reconnect_wait * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            let Some(c) = ctx.as_mut() else { continue };
            let d = &mut self.devices[i];
            let started = Instant::now();
            if started > d.next_due + d.interval {
                d.status.overruns.fetch_add(1, Ordering::Relaxed);
            }
            c.set_slave(Slave(d.unit));
            let ts = now_ns();
            let mut samples = Vec::with_capacity(d.points.len());
            let mut events = Vec::new();
            let mut valid = false;
            let mut broken = false;
            for r in 0..d.reads.len() {
                let read = d.reads[r].clone();
                let mut outcome = Outcome::Timeout;
                for _attempt in 0..=self.conn.retries {
                    let t0 = Instant::now();
                    outcome = request(c, &read, timeout).await;
                    d.status.requests.fetch_add(1, Ordering::Relaxed);
                    d.status.last_latency_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if !matches!(outcome, Outcome::Timeout) {
                        break;
                    }
                }
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                match outcome {
                    Outcome::Words(w) => {
                        valid = true;
                        d.status.registers.fetch_add(w.len() as u64, Ordering::Relaxed);
                        apply_words(d, &read, &w, ts, &mut samples, &mut events);
                    }
                    Outcome::Bits(b) => {
                        valid = true;
                        d.status.registers.fetch_add(b.len() as u64, Ordering::Relaxed);
                        let words: Vec<u16> = b.iter().map(|x| u16::from(*x)).collect();
                        apply_words(d, &read, &words, ts, &mut samples, &mut events);
                    }
                    Outcome::Exception(code) => {
                        // The device answered: the connection is fine, these points are not.
                        d.status.exceptions.fetch_add(1, Ordering::Relaxed);
                        poll::set_error(
                            &d.status.last_error,
                            format!("exception {code:?} reading {:?} {}+{}", read.table, read.address, read.count),
                        );
                        for &s in &read.spans {
                            samples.push(Sample {
                                point: d.points[s].point,
                                quality: Quality::Bad,
                                ts,
                                value: f64::NAN,
                            });
                        }
                        events.push(Event {
                            device: d.id,
                            kind: "modbus_exception".into(),
                            ts,
                            attributes: serde_json::Map::from_iter([
                                ("exception".to_owned(), serde_json::Value::String(format!("{code:?}"))),
                                (
                                    "table".to_owned(),
                                    serde_json::Value::String(format!("{:?}", read.table).to_lowercase()),
                                ),
                                ("address".to_owned(), serde_json::Value::from(read.address)),
                            ]),
                        });
                    }
                    Outcome::Timeout => {
                        d.status.timeouts.fetch_add(1, Ordering::Relaxed);
                        poll::set_error(&d.status.last_error, format!("timeout after {} ms", timeout.as_millis()));
                        broken = true;
                        break;
                    }
                    Outcome::Transport(e) => {
                        d.status.transport_errors.fetch_add(1, Ordering::Relaxed);
                        poll::set_error(&d.status.last_error, e);
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                // A late answer could be taken for the next request's: start afresh.
                ctx = None;
            }
            if valid {
                d.failures = 0;
                d.status.last_success_ns.store(ts, Ordering::Relaxed);
                if d.offline || !d.status.online.load(Ordering::Relaxed) {
                    if d.offline {
                        info!(device = d.id.0, "Modbus device answers again.");
                        events.push(Event {
                            device: d.id,
                            kind: "online".into(),
                            ts,
                            attributes: serde_json::Map::new(),
                        });
                    }
                    d.offline = false;
                    d.status.online.store(true, Ordering::Relaxed);
                }
                d.next_due += d.interval;
                if d.next_due < Instant::now() {
                    // Behind by more than a cycle: skip, do not queue.
                    d.next_due = Instant::now() + d.interval;
                }
            } else {
                events.extend(failed_cycle(d, backoff_max, self.conn.offline_after));
            }
            send(&tx, samples, events).await;
        }
        info!(connection = %self.conn.id, "Modbus poller stopped.");
    }
}

/// A cycle without a valid read: back off, and report offline after enough of them.
fn failed_cycle(d: &mut PolledDevice, backoff_max: Duration, offline_after: u32) -> Vec<Event> {
    d.failures += 1;
    d.next_due = Instant::now() + poll::backoff(d.interval, d.failures, backoff_max);
    if d.failures < offline_after || d.offline {
        return Vec::new();
    }
    d.offline = true;
    d.status.online.store(false, Ordering::Relaxed);
    warn!(device = %d.status.device, connection = %d.status.connection, "Modbus device offline.");
    vec![poll::offline_event(d.id, "connection", &d.status.connection, &d.status.last_error)]
}

fn apply_words(
    d: &mut PolledDevice,
    read: &Read,
    words: &[u16],
    ts: i64,
    samples: &mut Vec<Sample>,
    events: &mut Vec<Event>,
) {
    for &s in &read.spans {
        let pt = &mut d.points[s];
        let off = usize::from(pt.address - read.address);
        let n = usize::from(pt.ty.words(1));
        let Some(w) = words.get(off..off + n) else { continue };
        let bit = if matches!(read.table, Table::Coil | Table::Discrete) { 0 } else { pt.bit };
        let Some(raw) = decode::number(w, pt.ty, pt.order, bit) else { continue };
        let value = raw * pt.scale + pt.offset;
        if !value.is_finite() {
            samples.push(Sample { point: pt.point, quality: Quality::Bad, ts, value: f64::NAN });
            continue;
        }
        samples.push(Sample { point: pt.point, quality: Quality::Good, ts, value });
        if let Some(kind) = &pt.event {
            let on = raw != 0.0;
            if on && pt.last_bit != Some(true) {
                events.push(Event { device: d.id, kind: kind.clone(), ts, attributes: serde_json::Map::new() });
            }
            pt.last_bit = Some(on);
        }
    }
}

async fn request(c: &mut Context, r: &Read, timeout: Duration) -> Outcome {
    let fut = async {
        match r.table {
            Table::Holding => c.read_holding_registers(r.address, r.count).await.map(|x| x.map(Outcome::Words)),
            Table::Input => c.read_input_registers(r.address, r.count).await.map(|x| x.map(Outcome::Words)),
            Table::Coil => c.read_coils(r.address, r.count).await.map(|x| x.map(Outcome::Bits)),
            Table::Discrete => c.read_discrete_inputs(r.address, r.count).await.map(|x| x.map(Outcome::Bits)),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Outcome::Timeout,
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(code))) => Outcome::Exception(code),
        Ok(Err(e)) => Outcome::Transport(e.to_string()),
    }
}

async fn connect(conn: &ModbusConnection) -> Result<Context, ModbusError> {
    match conn.kind {
        ModbusKind::Tcp | ModbusKind::RtuOverTcp => {
            let host = conn.host.clone().unwrap_or_default();
            let port = conn.port.unwrap_or(502);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address")))?;
            if conn.kind == ModbusKind::Tcp {
                Ok(tokio_modbus::client::tcp::connect(addr).await?)
            } else {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(tokio_modbus::client::rtu::attach(stream))
            }
        }
        ModbusKind::Rtu => {
            let path = conn.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let builder = tokio_serial::new(path, conn.baud)
                .data_bits(match conn.data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .stop_bits(if conn.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One })
                .parity(match conn.parity {
                    config::Parity::None => tokio_serial::Parity::None,
                    config::Parity::Even => tokio_serial::Parity::Even,
                    config::Parity::Odd => tokio_serial::Parity::Odd,
                });
            let port = tokio_serial::SerialStream::open(&builder).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

/// Writes `value` to each of `points` of `device` (writable points of its profile in `profiles`, as
/// loaded once by the caller; coils with function 5, registers with 6 or 16) and reads every one back, all within `deadline`: the values
/// read, in the order of `points`, for the caller to compare. For linkage actions.
///
/// # Errors
/// A point is not writable, the device is not polled over Modbus TCP, the write or read failed, or
/// the deadline passed.
pub async fn command(
    config: &config::Config,
    profiles: &std::collections::BTreeMap<String, Profile>,
    device: &str,
    points: &[String],
    value: f64,
    deadline: std::time::Duration,
) -> Result<Vec<f64>, ModbusError> {
    let d = config.devices.iter().find(|d| d.id == device).ok_or_else(|| ModbusError::UnknownDevice(device.into()))?;
    let m = d.modbus.as_ref().ok_or_else(|| ModbusError::UnknownDevice(device.into()))?;
    let profile = profiles.get(&m.profile).ok_or_else(|| ModbusError::UnknownDevice(device.into()))?;
    let mut targets = Vec::with_capacity(points.len());
    for point in points {
        let pt = profile
            .points
            .iter()
            .find(|x| x.name == *point)
            .filter(|x| x.writable && writable_table(x.table, x.ty))
            .ok_or_else(|| ModbusError::NotWritable { device: device.into(), point: point.clone() })?;
        targets.push(pt);
    }
    let conn = config
        .modbus
        .connections
        .iter()
        .find(|c| c.id == m.connection)
        .filter(|c| c.kind == ModbusKind::Tcp)
        .ok_or_else(|| ModbusError::UnknownDevice(device.into()))?;
    let work = async {
        let mut c = connect(conn).await?;
        c.set_slave(Slave(m.unit));
        let check = |r: Result<Result<(), ExceptionCode>, tokio_modbus::Error>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(code)) => Err(ModbusError::Exception(code)),
            Err(e) => Err(ModbusError::Protocol(e.to_string())),
        };
        for pt in &targets {
            let raw = (value - pt.offset) / pt.scale;
            let r = match pt.table {
                Table::Coil => c.write_single_coil(pt.address, raw != 0.0).await,
                _ if pt.ty.words(1) == 1 => {
                    c.write_single_register(pt.address, decode::encode(raw, pt.ty, pt.order)[0]).await
                }
                _ => c.write_multiple_registers(pt.address, &decode::encode(raw, pt.ty, pt.order)).await,
            };
            check(r)?;
        }
        let mut read = Vec::with_capacity(targets.len());
        for pt in &targets {
            let v = match pt.table {
                Table::Coil => match c.read_coils(pt.address, 1).await {
                    Ok(Ok(bits)) => f64::from(u8::from(bits.first().copied().unwrap_or(false))),
                    Ok(Err(code)) => return Err(ModbusError::Exception(code)),
                    Err(e) => return Err(ModbusError::Protocol(e.to_string())),
                },
                _ => match c.read_holding_registers(pt.address, pt.ty.words(1)).await {
                    Ok(Ok(words)) => decode::number(&words, pt.ty, pt.order, pt.bit)
                        .map(|raw| raw * pt.scale + pt.offset)
                        .ok_or_else(|| ModbusError::Protocol("short read-back answer".into()))?,
                    Ok(Err(code)) => return Err(ModbusError::Exception(code)),
                    Err(e) => return Err(ModbusError::Protocol(e.to_string())),
                },
            };
            read.push(v);
        }
        Ok(read)
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| ModbusError::Protocol(format!("no answer within {deadline:?}")))?
}

/// Whether a point of this table and type can be written on its own: coils, and whole holding
/// registers (a bit inside a register would overwrite its neighbours).
pub fn writable_table(table: Table, ty: DataType) -> bool {
    match table {
        Table::Coil => true,
        Table::Holding => !matches!(ty, DataType::Bit | DataType::String),
        Table::Input | Table::Discrete => false,
    }
}

#[cfg(test)]
mod proptests;
