//! DL/T 645-2007 source: one task per RS-485 bus, reached over a serial port (the Modbus RTU serial
//! stack) or through a serial server in transparent mode over TCP. One transaction at a time on a
//! bus; each meter on its own interval reads its identifiers with 11H, one request each.
//!
//! The Modbus source's discipline: a meter that does not answer backs off (exponential, capped at
//! `backoff_max_ms`) and ends its cycle at the first timeout, so it costs its neighbours at most one
//! timeout per backoff period; it goes `offline` (an event) after `offline_after` cycles without an
//! answer and `online` when it answers again. A cycle not finished before the next is due is counted
//! as an overrun and skipped, never queued.
//!
//! An abnormal answer (D1) means the meter is there and refuses one identifier: that point's sample
//! is bad, the error is named in the device's status (`last_error` in `/api/v1/devices`) and, when it
//! first appears or changes, in a `dlt645_abnormal` event (`/api/v1/events`) and the log. A value
//! with a nibble above 9 is a bad sample too, never a number. A meter without a configured address is
//! asked for it with 13H (only valid when it is alone on its line). An answer that says more frames
//! follow (B1) is used for the value it carries (every identifier read here fits in one frame) and
//! counted. Answers are matched to the request by address and identifier; anything else on the line
//! (echoes, late answers, noise, broken frames) is skipped and counted, never taken for a value.
//! A serial server's TCP connection on which no meter answered for `offline_after` cycles in a row is
//! opened again (such a connection can die without a word); a serial port is kept.

pub mod codec;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::codec::{Address, Di, Frame, Reply, Scan};
use super::poll::{self, send};
use crate::config::dlt645::{Bus, BusKind, ResolvedPoint};
use crate::config::{self, Parity};
use crate::model::time::now_ns;
use crate::model::{Batch, DeviceId, Event, PointId, Quality, Registry, Sample};

/// Health and counters of one meter, for `/api/v1/devices` and `/metrics`.
#[derive(Debug, Default)]
pub struct MeterStatus {
    pub device: String,
    pub bus: String,
    /// The meter's address (configured or discovered), empty until known.
    pub address: Mutex<String>,
    pub online: AtomicBool,
    pub last_success_ns: AtomicI64,
    pub requests: AtomicU64,
    /// Values read (normal answers).
    pub values: AtomicU64,
    pub timeouts: AtomicU64,
    /// Abnormal answers (D1): the meter refused an identifier.
    pub abnormal: AtomicU64,
    /// Answers whose value is not BCD or not of the configured length.
    pub bad_values: AtomicU64,
    /// Answers saying more frames follow (B1).
    pub followups: AtomicU64,
    /// Bytes on the line that were not an answer to the request (noise, echoes, broken frames).
    pub noise_bytes: AtomicU64,
    pub transport_errors: AtomicU64,
    pub overruns: AtomicU64,
    pub last_latency_us: AtomicU64,
    pub last_error: Mutex<String>,
}

/// Status of every DL/T 645 meter.
#[derive(Debug, Default)]
pub struct Dlt645Status {
    pub meters: Vec<Arc<MeterStatus>>,
}

struct PolledPoint {
    point: PointId,
    spec: ResolvedPoint,
    /// The error byte of the last abnormal answer, so the event is raised once per change.
    last_abnormal: Option<u8>,
}

struct Meter {
    id: DeviceId,
    address: Option<Address>,
    interval: Duration,
    points: Vec<PolledPoint>,
    next_due: Instant,
    failures: u32,
    offline: bool,
    status: Arc<MeterStatus>,
}

/// Builds one poller per bus that has meters.
pub fn pollers(config: &config::Config, registry: &Registry) -> (Vec<Poller>, Arc<Dlt645Status>) {
    let mut status = Dlt645Status::default();
    let mut out = Vec::new();
    for bus in &config.dlt645.buses {
        let mut meters = Vec::new();
        for d in &config.devices {
            let Some(m) = d.dlt645.as_ref().filter(|m| m.bus == bus.id) else { continue };
            let Some(id) = registry.device_id(&d.id) else { continue };
            let st = Arc::new(MeterStatus {
                device: d.id.clone(),
                bus: bus.id.clone(),
                address: Mutex::new(m.resolved_address.map(|a| a.to_string()).unwrap_or_default()),
                ..MeterStatus::default()
            });
            status.meters.push(st.clone());
            let points = m
                .resolved
                .iter()
                .filter_map(|r| {
                    Some(PolledPoint { point: registry.point_of(id, &r.name)?, spec: r.clone(), last_abnormal: None })
                })
                .collect();
            meters.push(Meter {
                id,
                address: m.resolved_address,
                interval: Duration::from_millis(m.interval_ms),
                points,
                next_due: Instant::now(),
                failures: 0,
                offline: false,
                status: st,
            });
        }
        if !meters.is_empty() {
            out.push(Poller { bus: bus.clone(), meters });
        }
    }
    (out, Arc::new(status))
}

/// A byte stream to the bus: a serial port or a TCP connection.
trait Line: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Line for T {}

/// The bus connection with what has been received but not used yet.
struct Link {
    io: Box<dyn Line>,
    buf: Vec<u8>,
}

/// What one request got.
enum Outcome {
    Reply(Reply),
    Timeout,
    Transport(String),
}

/// Reads the meters of one bus.
pub struct Poller {
    bus: Bus,
    meters: Vec<Meter>,
}

impl Poller {
    /// Runs until `shutdown`, sending samples and events into the core channel.
    pub async fn run(mut self, tx: mpsc::Sender<Batch>, shutdown: CancellationToken) {
        let backoff_max = Duration::from_millis(self.bus.backoff_max_ms);
        let mut link: Option<Link> = None;
        let mut reconnect_wait = Duration::from_millis(200);
        // Cycles in a row in which no meter answered: a serial server's TCP connection can die without
        // a word, so after `offline_after` of them it is opened again (a serial port is kept).
        let mut silent = 0u32;
        info!(bus = %self.bus.id, meters = self.meters.len(), "DL/T 645 poller started.");
        loop {
            let Some(i) = (0..self.meters.len()).min_by_key(|&i| self.meters[i].next_due) else { return };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(self.meters[i].next_due) => {}
            }
            if link.is_none() {
                let timeout = Duration::from_millis(self.bus.timeout_ms).max(Duration::from_secs(1));
                match tokio::time::timeout(timeout, connect(&self.bus)).await {
                    Ok(Ok(io)) => {
                        link = Some(Link { io, buf: Vec::new() });
                        silent = 0;
                        reconnect_wait = Duration::from_millis(200);
                    }
                    other => {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            _ => "connect timed out".to_owned(),
                        };
                        debug!(bus = %self.bus.id, error = %why, "DL/T 645 bus connect failed.");
                        let now = Instant::now();
                        for m in self.meters.iter_mut().filter(|m| m.next_due <= now) {
                            m.status.transport_errors.fetch_add(1, Ordering::Relaxed);
                            poll::set_error(&m.status.last_error, format!("connect: {why}"));
                            let events = failed_cycle(m, backoff_max, self.bus.offline_after);
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
            let Some(l) = link.as_mut() else { continue };
            let (samples, events, keep) = cycle(&self.bus, &mut self.meters[i], l, backoff_max).await;
            silent = if self.meters[i].failures == 0 { 0 } else { silent + 1 };
            if !keep || (self.bus.kind == BusKind::Tcp && silent >= self.bus.offline_after.max(1)) {
                if keep {
                    debug!(bus = %self.bus.id, cycles = silent, "No meter answers: opening the connection again.");
                }
                link = None;
                silent = 0;
            }
            send(&tx, samples, events).await;
        }
        info!(bus = %self.bus.id, "DL/T 645 poller stopped.");
    }
}

/// One cycle of one meter: discovery if needed, then every identifier. Returns the samples, the
/// events and whether the link is still usable.
async fn cycle(bus: &Bus, m: &mut Meter, l: &mut Link, backoff_max: Duration) -> (Vec<Sample>, Vec<Event>, bool) {
    let timeout = Duration::from_millis(bus.timeout_ms);
    let gap = Duration::from_millis(bus.gap_ms);
    let started = Instant::now();
    if started > m.next_due + m.interval {
        m.status.overruns.fetch_add(1, Ordering::Relaxed);
    }
    let ts = now_ns();
    let mut samples = Vec::with_capacity(m.points.len());
    let mut events = Vec::new();
    let mut answered = false;
    let mut broken = false;
    let mut keep = true;
    let address = match m.address {
        Some(a) => Some(a),
        None => match transact(l, &codec::address_request(), bus, Address::WILDCARD, None, timeout, &m.status).await {
            Outcome::Reply(Reply::Address(a)) => {
                info!(device = %m.status.device, bus = %bus.id, address = %a, "DL/T 645 meter address read.");
                if let Ok(mut s) = m.status.address.lock() {
                    *s = a.to_string();
                }
                m.address = Some(a);
                answered = true;
                Some(a)
            }
            Outcome::Reply(other) => {
                poll::set_error(&m.status.last_error, format!("address read answered with {other:?}"));
                broken = true;
                None
            }
            Outcome::Timeout => {
                m.status.timeouts.fetch_add(1, Ordering::Relaxed);
                poll::set_error(
                    &m.status.last_error,
                    format!("address read (13H): no answer within {} ms", timeout.as_millis()),
                );
                broken = true;
                None
            }
            Outcome::Transport(e) => {
                m.status.transport_errors.fetch_add(1, Ordering::Relaxed);
                poll::set_error(&m.status.last_error, e);
                keep = false;
                broken = true;
                None
            }
        },
    };
    if let Some(address) = address {
        for k in 0..m.points.len() {
            let di = m.points[k].spec.di;
            let request = codec::read_request(address, di);
            let outcome = transact(l, &request, bus, address, Some(di), timeout, &m.status).await;
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let pt = &mut m.points[k];
            match outcome {
                Outcome::Reply(Reply::Data { value, more, .. }) => {
                    answered = true;
                    if more {
                        // Every identifier read here fits in its first frame; the rest is not asked for.
                        m.status.followups.fetch_add(1, Ordering::Relaxed);
                    }
                    let n = usize::from(pt.spec.format.bytes);
                    let raw = if more && value.len() > n { &value[..n] } else { &value[..] };
                    match codec::decode_value(raw, pt.spec.format) {
                        Ok(v) if (v * pt.spec.scale).is_finite() => {
                            m.status.values.fetch_add(1, Ordering::Relaxed);
                            samples.push(Sample {
                                point: pt.point,
                                quality: Quality::Good,
                                ts,
                                value: v * pt.spec.scale,
                            });
                        }
                        other => {
                            m.status.bad_values.fetch_add(1, Ordering::Relaxed);
                            let why = match other {
                                Err(e) => e.to_string(),
                                Ok(v) => format!("{v} is not a finite value"),
                            };
                            poll::set_error(&m.status.last_error, format!("{di} ({}): {why}", pt.spec.name));
                            samples.push(Sample { point: pt.point, quality: Quality::Bad, ts, value: f64::NAN });
                        }
                    }
                    pt.last_abnormal = None;
                }
                Outcome::Reply(Reply::Abnormal(bits)) => {
                    // The meter is there and said no: this point is bad, the meter is not.
                    answered = true;
                    m.status.abnormal.fetch_add(1, Ordering::Relaxed);
                    let error = bits.to_string();
                    poll::set_error(
                        &m.status.last_error,
                        format!("{di} ({}): abnormal answer (D1): {error}", pt.spec.name),
                    );
                    samples.push(Sample { point: pt.point, quality: Quality::Bad, ts, value: f64::NAN });
                    if pt.last_abnormal != Some(bits.0) {
                        pt.last_abnormal = Some(bits.0);
                        warn!(device = %m.status.device, di = %di, point = %pt.spec.name, error = %error, "DL/T 645 meter refused an identifier.");
                        events.push(Event {
                            device: m.id,
                            kind: "dlt645_abnormal".into(),
                            ts,
                            attributes: serde_json::Map::from_iter([
                                ("di".to_owned(), serde_json::Value::String(di.to_string())),
                                ("point".to_owned(), serde_json::Value::String(pt.spec.name.clone())),
                                ("error".to_owned(), serde_json::Value::String(error)),
                                ("error_bits".to_owned(), serde_json::Value::from(bits.0)),
                            ]),
                        });
                    }
                }
                Outcome::Reply(Reply::Address(_)) => {
                    // `transact` only returns the reply kind the request asks for.
                    debug!(device = %m.status.device, "Address answer to a read skipped.");
                }
                Outcome::Timeout => {
                    m.status.timeouts.fetch_add(1, Ordering::Relaxed);
                    poll::set_error(
                        &m.status.last_error,
                        format!("{di} ({}): no answer within {} ms", pt.spec.name, timeout.as_millis()),
                    );
                    broken = true;
                    break;
                }
                Outcome::Transport(e) => {
                    m.status.transport_errors.fetch_add(1, Ordering::Relaxed);
                    poll::set_error(&m.status.last_error, e);
                    broken = true;
                    keep = false;
                    break;
                }
            }
        }
    }
    if answered && !broken {
        m.failures = 0;
        m.status.last_success_ns.store(ts, Ordering::Relaxed);
        if m.offline || !m.status.online.load(Ordering::Relaxed) {
            if m.offline {
                info!(device = %m.status.device, bus = %bus.id, "DL/T 645 meter answers again.");
                events.push(Event { device: m.id, kind: "online".into(), ts, attributes: serde_json::Map::new() });
            }
            m.offline = false;
            m.status.online.store(true, Ordering::Relaxed);
        }
        m.next_due += m.interval;
        if m.next_due < Instant::now() {
            // Behind by more than a cycle: skip, do not queue.
            m.next_due = Instant::now() + m.interval;
        }
    } else {
        events.extend(failed_cycle(m, backoff_max, bus.offline_after));
    }
    (samples, events, keep)
}

/// Sends `request` and waits for its answer: a frame from `to` (or any meter for a wildcard) with the
/// answer control and, for reads, the identifier asked. Everything else received is skipped.
async fn transact(
    l: &mut Link,
    request: &Frame,
    bus: &Bus,
    to: Address,
    di: Option<Di>,
    timeout: Duration,
    status: &MeterStatus,
) -> Outcome {
    // What is still in the buffer or arrives now belongs to no request of ours (a late answer).
    let mut stale = l.buf.len();
    l.buf.clear();
    let mut scratch = [0u8; 256];
    // Bounded, so a line that never stops chattering still gets its request.
    while stale < 16 * codec::MAX_FRAME {
        match tokio::time::timeout(Duration::ZERO, l.io.read(&mut scratch)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Outcome::Transport("connection closed".into()),
            Ok(Ok(n)) => stale += n,
            Ok(Err(e)) => return Outcome::Transport(e.to_string()),
        }
    }
    status.noise_bytes.fetch_add(stale as u64, Ordering::Relaxed);
    let bytes = codec::encode(request, usize::from(bus.preamble));
    let t0 = Instant::now();
    status.requests.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = async {
        l.io.write_all(&bytes).await?;
        l.io.flush().await
    }
    .await
    {
        return Outcome::Transport(e.to_string());
    }
    let deadline = t0 + timeout;
    loop {
        // Take every complete frame; keep an incomplete one for more bytes.
        loop {
            match codec::scan(&l.buf) {
                Scan::Frame { frame, start, end } => {
                    let matched = codec::reply(&frame, request.control, to, di);
                    let used = if matched.is_ok() { end - start } else { 0 };
                    status.noise_bytes.fetch_add((end - used) as u64, Ordering::Relaxed);
                    l.buf.drain(..end);
                    if let Ok(reply) = matched {
                        status.last_latency_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                        // Bytes after the answer are nobody's.
                        status.noise_bytes.fetch_add(l.buf.len() as u64, Ordering::Relaxed);
                        l.buf.clear();
                        return Outcome::Reply(reply);
                    }
                }
                Scan::Need { keep_from } => {
                    status.noise_bytes.fetch_add(keep_from as u64, Ordering::Relaxed);
                    l.buf.drain(..keep_from);
                    break;
                }
            }
        }
        if l.buf.len() > 2 * codec::MAX_FRAME {
            // An incomplete candidate this long is no frame: drop its first byte and look again.
            l.buf.drain(..1);
            status.noise_bytes.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match tokio::time::timeout_at(deadline, l.io.read(&mut scratch)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Ok(0)) => return Outcome::Transport("connection closed".into()),
            Ok(Ok(n)) => l.buf.extend_from_slice(&scratch[..n]),
            Ok(Err(e)) => return Outcome::Transport(e.to_string()),
        }
    }
}

/// A cycle without an answer: back off, and report offline after enough of them.
fn failed_cycle(m: &mut Meter, backoff_max: Duration, offline_after: u32) -> Vec<Event> {
    m.failures += 1;
    m.next_due = Instant::now() + poll::backoff(m.interval, m.failures, backoff_max);
    if m.failures < offline_after || m.offline {
        return Vec::new();
    }
    m.offline = true;
    m.status.online.store(false, Ordering::Relaxed);
    warn!(device = %m.status.device, bus = %m.status.bus, "DL/T 645 meter offline.");
    vec![poll::offline_event(m.id, "bus", &m.status.bus, &m.status.last_error)]
}

async fn connect(bus: &Bus) -> std::io::Result<Box<dyn Line>> {
    match bus.kind {
        BusKind::Tcp => {
            let host = bus.host.clone().unwrap_or_default();
            let port = bus.port.unwrap_or_default();
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address")))?;
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
        BusKind::Serial => {
            let path = bus.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let builder = tokio_serial::new(path, bus.baud)
                .data_bits(match bus.data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .stop_bits(if bus.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One })
                .parity(match bus.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                });
            let port = tokio_serial::SerialStream::open(&builder).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Box::new(port))
        }
    }
}

#[cfg(test)]
mod tests;
