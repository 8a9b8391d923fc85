//! Simulated DL/T 645-2007 meters on one line: they answer 11H reads of the identifiers they hold
//! (91, or B1 for the identifiers told to say more follows), D1 "no such data" for any other
//! identifier, and 13H with their address when they are alone on the line. A meter marked dead hears
//! nothing, like one with a cut wire. The line is a TCP connection (a serial server in transparent
//! mode) or a serial port (a pseudo-terminal in tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::source::dlt645::codec::{self, Address, Di, Format, Scan};

/// One simulated meter.
#[derive(Debug, Clone)]
pub struct SimMeter {
    pub address: Address,
    /// Identifier → (format, value in the meter's unit).
    pub values: BTreeMap<Di, (Format, f64)>,
    /// Identifiers answered with B1 (more frames follow).
    pub more: Vec<Di>,
    /// A dead meter never answers.
    pub dead: bool,
}

impl SimMeter {
    /// A meter holding every identifier the gateway knows, with plausible values.
    pub fn typical(address: Address) -> Self {
        let values = codec::KNOWN
            .iter()
            .map(|k| {
                let v = match k.point {
                    "energy" => 12_345.67,
                    "ua" => 229.8,
                    "ub" => 230.4,
                    "uc" => 228.9,
                    "ia" => 12.345,
                    "ib" => 11.872,
                    "ic" => 12.01,
                    "p" => 8.1234,
                    "pf" => 0.962,
                    _ => 0.0,
                };
                (k.di, (k.format, v))
            })
            .collect();
        Self { address, values, more: Vec::new(), dead: false }
    }
}

/// Meters on a line, shared so a test or the demo can change their values while they serve.
pub type Meters = Arc<Mutex<Vec<SimMeter>>>;

/// The answer of the line to one request, if any meter answers.
pub fn answer(meters: &[SimMeter], request: &codec::Frame) -> Option<codec::Frame> {
    let live = || meters.iter().filter(|m| !m.dead);
    match request.control {
        codec::READ_ADDRESS => {
            // Only a meter alone on its line can answer a wildcard without a collision.
            let mut all = meters.iter();
            match (all.next(), all.next()) {
                (Some(m), None) if !m.dead && request.address == Address::WILDCARD => {
                    Some(codec::address_answer(m.address))
                }
                _ => None,
            }
        }
        codec::READ => {
            let m = live().find(|m| m.address == request.address)?;
            let di = Di(u32::from_le_bytes(request.data.get(..4)?.try_into().ok()?));
            match m.values.get(&di) {
                Some((format, v)) => match codec::encode_value(*v, *format) {
                    Ok(raw) => Some(codec::data_answer(m.address, di, &raw, m.more.contains(&di))),
                    Err(_) => Some(codec::abnormal_answer(m.address, codec::ERR_NO_DATA)),
                },
                None => Some(codec::abnormal_answer(m.address, codec::ERR_NO_DATA)),
            }
        }
        _ => None,
    }
}

/// Moves the meters' readings like a running load every `period`: voltages and currents wander
/// within plausible bounds, power follows, the energy counter advances.
pub async fn walk(meters: Meters, period: std::time::Duration, shutdown: CancellationToken) {
    let mut rng = fastrand::Rng::with_seed(0x0645);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(mut meters) = meters.lock() else { return };
        for m in meters.iter_mut().filter(|m| !m.dead) {
            let mut step = |di: u32, by: f64, lo: f64, hi: f64| {
                if let Some((_, v)) = m.values.get_mut(&Di(di)) {
                    *v = (*v + (rng.f64() * 2.0 - 1.0) * by).clamp(lo, hi);
                }
            };
            for di in [0x0201_0100, 0x0201_0200, 0x0201_0300] {
                step(di, 0.4, 215.0, 235.0);
            }
            for di in [0x0202_0100, 0x0202_0200, 0x0202_0300] {
                step(di, 0.3, 2.0, 40.0);
            }
            let get = |di: u32| m.values.get(&Di(di)).map_or(0.0, |(_, v)| *v);
            // kW from the phase values and the power factor; kWh over the period.
            let kw = (get(0x0201_0100) * get(0x0202_0100)
                + get(0x0201_0200) * get(0x0202_0200)
                + get(0x0201_0300) * get(0x0202_0300))
                * get(0x0206_0000)
                / 1000.0;
            if let Some((_, v)) = m.values.get_mut(&Di(0x0203_0000)) {
                *v = kw.min(79.9999);
            }
            if let Some((_, v)) = m.values.get_mut(&Di(0x0001_0000)) {
                *v += kw * period.as_secs_f64() / 3600.0;
            }
        }
    }
}

/// Serves the meters on one byte stream until it closes or `shutdown`.
///
/// # Errors
/// The stream failed.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    meters: Meters,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = io.read(&mut chunk) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match codec::scan(&buf) {
                Scan::Frame { frame, end, .. } => {
                    buf.drain(..end);
                    let reply = meters.lock().ok().and_then(|m| answer(&m, &frame));
                    if let Some(reply) = reply {
                        debug!(address = %frame.address, control = frame.control, "Simulated meter answers.");
                        io.write_all(&codec::encode(&reply, codec::MAX_PREAMBLE)).await?;
                        io.flush().await?;
                    }
                }
                Scan::Need { keep_from } => {
                    buf.drain(..keep_from);
                    break;
                }
            }
        }
        if buf.len() > 4 * codec::MAX_FRAME {
            buf.clear();
        }
    }
}

/// Serves the meters to every connection a listener accepts (a serial server in transparent mode).
pub async fn run_tcp(listener: tokio::net::TcpListener, meters: Meters, shutdown: CancellationToken) {
    info!(addr = ?listener.local_addr().ok(), "Simulated DL/T 645 meters serving.");
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "Simulated DL/T 645 line: accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, meters.clone(), shutdown.clone()));
    }
}

/// Serves the meters on a serial port (a pseudo-terminal in tests) until `shutdown`.
///
/// # Errors
/// The port cannot be opened or fails.
pub async fn run_serial(path: &str, meters: Meters, shutdown: CancellationToken) -> std::io::Result<()> {
    let port = tokio_serial::SerialStream::open(&tokio_serial::new(path, 9600)).map_err(std::io::Error::other)?;
    serve(port, meters, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_answer_reads_address_and_unknown_identifiers() {
        let a = Address::parse("000000000161").unwrap();
        let mut m = SimMeter::typical(a);
        m.more.push(Di(0x0201_0200));
        let dead = SimMeter { dead: true, ..SimMeter::typical(Address::parse("000000000162").unwrap()) };
        let line = vec![m.clone(), dead.clone()];
        let ua = answer(&line, &codec::read_request(a, Di(0x0201_0100))).unwrap();
        assert_eq!(ua.control, 0x91);
        // 229.8 V → 2298 → 98 22, low byte first.
        assert_eq!(ua.data, [0x00, 0x01, 0x01, 0x02, 0x98, 0x22]);
        assert_eq!(answer(&line, &codec::read_request(a, Di(0x0201_0200))).unwrap().control, 0xB1);
        let d1 = answer(&line, &codec::read_request(a, Di(0x0400_0101))).unwrap();
        assert_eq!((d1.control, d1.data.as_slice()), (0xD1, &[codec::ERR_NO_DATA][..]));
        assert_eq!(answer(&line, &codec::read_request(dead.address, Di(0x0201_0100))), None);
        // Two meters on the line: nobody answers the wildcard; alone, the meter does.
        assert_eq!(answer(&line, &codec::address_request()), None);
        assert_eq!(answer(&[m], &codec::address_request()), Some(codec::address_answer(a)));
    }
}
