//! Simulated Modbus devices: a real Modbus TCP server (tokio-modbus server side) whose units serve
//! register maps, for `parkwatch demo` and the tests. Units can be told to stop answering or to refuse
//! ranges with an exception, and count the requests they get.

use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_util::sync::CancellationToken;

use crate::source::modbus::decode::{self, DataType, Order};
use crate::source::modbus::plan::Table;
use crate::source::modbus::profile::Profile;

/// One simulated unit.
#[derive(Debug, Default)]
pub struct Unit {
    pub holding: HashMap<u16, u16>,
    pub input: HashMap<u16, u16>,
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    /// Ranges answered with IllegalDataAddress.
    pub refuse: Vec<(Table, u16, u16)>,
    /// A dead unit does not answer at all.
    pub dead: bool,
    pub requests: u64,
    /// Every write request answered: (table, first address, words or bits as 0/1), in order.
    pub writes: Vec<(Table, u16, Vec<u16>)>,
    /// When each of `writes` arrived.
    pub write_times: Vec<std::time::Instant>,
    /// Answers writes as done without storing them (a device that ignores commands).
    pub ignore_writes: bool,
}

impl Unit {
    /// Stores `value` for a profile point (applying the inverse of its scale and offset).
    pub fn set(&mut self, table: Table, address: u16, ty: DataType, order: Order, value: f64) {
        if ty == DataType::Bit {
            let on = value != 0.0;
            match table {
                Table::Coil => {
                    self.coils.insert(address, on);
                }
                Table::Discrete => {
                    self.discrete.insert(address, on);
                }
                _ => {}
            }
            return;
        }
        let map = if table == Table::Input { &mut self.input } else { &mut self.holding };
        for (i, w) in decode::encode(value, ty, order).into_iter().enumerate() {
            map.insert(address.wrapping_add(i as u16), w);
        }
    }

    /// Sets or clears one bit of a register.
    pub fn set_bit(&mut self, table: Table, address: u16, bit: u8, on: bool) {
        let map = if table == Table::Input { &mut self.input } else { &mut self.holding };
        let w = map.entry(address).or_insert(0);
        if on {
            *w |= 1 << bit;
        } else {
            *w &= !(1 << bit);
        }
    }

    /// Fills the unit with values for every numeric point of `profile` from `value(name)`.
    pub fn load_profile(&mut self, profile: &Profile, mut value: impl FnMut(&str) -> f64) {
        // Writable points are commands the device holds as written, not readings it makes up.
        for p in profile.points.iter().filter(|p| !p.writable) {
            match p.ty {
                DataType::String => {}
                DataType::Bit if matches!(p.table, Table::Holding | Table::Input) => {
                    self.set_bit(p.table, p.address, p.bit, value(&p.name) != 0.0);
                }
                ty => self.set(p.table, p.address, ty, p.order, (value(&p.name) - p.offset) / p.scale),
            }
        }
    }
}

/// Units by id, shared with whoever changes their values.
pub type Units = Arc<Mutex<HashMap<u8, Unit>>>;

struct Service {
    units: Units,
}

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Ok(mut units) = self.units.lock() else { return future::ready(Err(ExceptionCode::ServerDeviceFailure)) };
        let Some(unit) = units.get_mut(&req.slave) else {
            // No such unit behind this server: a gateway would time out too.
            return future::ready(Ok(None));
        };
        unit.requests += 1;
        if unit.dead {
            return future::ready(Ok(None));
        }
        let refused = |t: Table, a: u16, n: u16| {
            unit.refuse.iter().any(|&(rt, first, last)| {
                rt == t && u32::from(first) < u32::from(a) + u32::from(n) && u32::from(last) >= u32::from(a)
            })
        };
        let regs =
            |m: &HashMap<u16, u16>, a: u16, n: u16| (0..n).map(|i| *m.get(&a.wrapping_add(i)).unwrap_or(&0)).collect();
        let bits = |m: &HashMap<u16, bool>, a: u16, n: u16| {
            (0..n).map(|i| *m.get(&a.wrapping_add(i)).unwrap_or(&false)).collect()
        };
        if matches!(
            req.request,
            Request::WriteSingleRegister(..)
                | Request::WriteMultipleRegisters(..)
                | Request::WriteSingleCoil(..)
                | Request::WriteMultipleCoils(..)
        ) {
            unit.write_times.push(std::time::Instant::now());
        }
        let r = match req.request {
            Request::ReadHoldingRegisters(a, n) if refused(Table::Holding, a, n) => {
                Err(ExceptionCode::IllegalDataAddress)
            }
            Request::ReadInputRegisters(a, n) if refused(Table::Input, a, n) => Err(ExceptionCode::IllegalDataAddress),
            Request::ReadHoldingRegisters(a, n) => Ok(Some(Response::ReadHoldingRegisters(regs(&unit.holding, a, n)))),
            Request::ReadInputRegisters(a, n) => Ok(Some(Response::ReadInputRegisters(regs(&unit.input, a, n)))),
            Request::ReadCoils(a, n) => Ok(Some(Response::ReadCoils(bits(&unit.coils, a, n)))),
            Request::ReadDiscreteInputs(a, n) => Ok(Some(Response::ReadDiscreteInputs(bits(&unit.discrete, a, n)))),
            Request::WriteSingleRegister(a, w) => {
                unit.writes.push((Table::Holding, a, vec![w]));
                if !unit.ignore_writes {
                    unit.holding.insert(a, w);
                }
                Ok(Some(Response::WriteSingleRegister(a, w)))
            }
            Request::WriteMultipleRegisters(a, ws) => {
                unit.writes.push((Table::Holding, a, ws.to_vec()));
                for (i, w) in ws.iter().enumerate().filter(|_| !unit.ignore_writes) {
                    unit.holding.insert(a.wrapping_add(i as u16), *w);
                }
                Ok(Some(Response::WriteMultipleRegisters(a, ws.len() as u16)))
            }
            Request::WriteSingleCoil(a, c) => {
                unit.writes.push((Table::Coil, a, vec![u16::from(c)]));
                if !unit.ignore_writes {
                    unit.coils.insert(a, c);
                }
                Ok(Some(Response::WriteSingleCoil(a, c)))
            }
            Request::WriteMultipleCoils(a, cs) => {
                unit.writes.push((Table::Coil, a, cs.iter().map(|c| u16::from(*c)).collect()));
                for (i, c) in cs.iter().enumerate().filter(|_| !unit.ignore_writes) {
                    unit.coils.insert(a.wrapping_add(i as u16), *c);
                }
                Ok(Some(Response::WriteMultipleCoils(a, cs.len() as u16)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        future::ready(r)
    }
}

/// Serves `units` over Modbus TCP on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, units: Units, shutdown: CancellationToken) {
    let server = Server::new(listener);
    let on_connected = |stream, addr: SocketAddr| {
        let units = units.clone();
        async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(Service { units: units.clone() }))) }
    };
    let _ = server
        .serve_until(
            &on_connected,
            |e| tracing::debug!(error = %e, "Simulated Modbus connection ended."),
            shutdown.cancelled_owned(),
        )
        .await;
}

/// When the demo's simulated fire starts (the first fire detector's temperature alarm bit), after the
/// park starts, and how long the bit stays up.
pub const FIRE_AT: std::time::Duration = std::time::Duration::from_secs(12);
const FIRE_FOR: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves simulated devices `(unit, profile)` on `listener`, their values walking every `period` like
/// the MQTT park's (same baselines and bounds), until `shutdown`. Status bits stay 0, except the first
/// fire detector's temperature alarm, which rises once at [`FIRE_AT`]: the demo's fire.
pub async fn run_park(
    devices: Vec<(u8, Profile)>,
    listener: tokio::net::TcpListener,
    period: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut rng = fastrand::Rng::with_seed(0x6d6f_6462);
    let mut values: Vec<HashMap<String, f64>> = devices
        .iter()
        .map(|(_, p)| {
            p.points
                .iter()
                .map(|pt| {
                    let v = super::baseline(&pt.name, &mut rng).0;
                    (pt.name.clone(), if pt.kind == crate::config::PointKind::Bool { 0.0 } else { v })
                })
                .collect()
        })
        .collect();
    let units: Units = Arc::new(Mutex::new(HashMap::new()));
    let write = |units: &Units, values: &[HashMap<String, f64>]| {
        if let Ok(mut u) = units.lock() {
            for ((id, profile), vals) in devices.iter().zip(values) {
                u.entry(*id).or_default().load_profile(profile, |name| vals.get(name).copied().unwrap_or_default());
            }
        }
    };
    write(&units, &values);
    tracing::info!(units = devices.len(), addr = ?listener.local_addr().ok(), "Simulated Modbus devices serving.");
    let server = tokio::spawn(serve(listener, units.clone(), shutdown.clone()));
    let started = std::time::Instant::now();
    let fire_unit = devices.iter().position(|(_, p)| p.points.iter().any(|x| x.name == "alarm_temperature"));
    let bits: Vec<Vec<String>> = devices
        .iter()
        .map(|(_, p)| {
            p.points.iter().filter(|x| x.kind == crate::config::PointKind::Bool).map(|x| x.name.clone()).collect()
        })
        .collect();
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let since = started.elapsed();
        let fire = since >= FIRE_AT && since < FIRE_AT + FIRE_FOR;
        for (i, vals) in values.iter_mut().enumerate() {
            for (name, v) in vals.iter_mut() {
                let (_, walk) = super::baseline(name, &mut rng);
                let (lo, hi) = super::bounds(name);
                *v = match name.as_str() {
                    "energy" | "energy_total" => *v + 0.01 + rng.f64() * 0.05,
                    "alarm_temperature" if fire && Some(i) == fire_unit => 1.0,
                    n if bits[i].iter().any(|b| b == n) => 0.0,
                    n if n.starts_with("alarm") || n == "arc_fault" || n == "fault" => 0.0,
                    _ => (*v + (rng.f64() - 0.5) * 2.0 * walk).clamp(lo, hi),
                };
            }
        }
        write(&units, &values);
    }
    let _ = server.await;
}
