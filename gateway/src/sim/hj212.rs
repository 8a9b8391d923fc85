//! Simulated HJ 212-2017 data loggers (数采仪): each connects to the gateway's HJ 212 listener as a
//! real logger would and reports its device's points: real-time data (CN 2011) every period, minute
//! data (2051: Avg/Min/Max of the minute) at each minute and hourly data (2061) at each hour, with
//! Flag=5 (2017 edition, answer wanted), its own MN, PW and CRC variant, DataTime in the site's zone.
//!
//! A wastewater outfall (COD, NH3-N, pH, flow) starts with acid water (pH about 5) for five minutes
//! and COD above the GB 8978 class 1 limit for seventy, and flags NH3-N as under calibration (C) one
//! minute in ten; a noise station starts with a loud episode for fifteen minutes. So the emission
//! rules fire on HJ 212 data in the demo: pH within its minute's on-delay, noise once its 10-minute
//! Leq is over the limit, COD once a whole hour averages above it. The logger reads the gateway's answers and reconnects with backoff when the link drops.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::hj212::{Logger, DEFAULT_CODES};
use crate::model::Registry;
use crate::source::hj212::codec::{self, Header};

/// One value the logger reports: its code, point and walk.
struct Channel {
    code: String,
    point: String,
    value: f64,
    step: f64,
    lo: f64,
    hi: f64,
    /// Real-time values of the current minute, and minute averages of the current hour.
    minute: Vec<f64>,
    hour: Vec<f64>,
}

struct SimLogger {
    cfg: Logger,
    channels: Vec<Channel>,
    qn: u64,
}

/// The code a logger sends for a point: its own mapping first, then the 2017 default code.
fn code_for(cfg: &Logger, point: &str) -> Option<String> {
    cfg.points
        .iter()
        .find(|(_, p)| p.as_str() == point)
        .map(|(c, _)| c.clone())
        .or_else(|| DEFAULT_CODES.iter().find(|(_, p)| *p == point).map(|(c, _)| (*c).to_owned()))
}

/// Runs one task per logger against the listener at `addr` until `shutdown`, one real-time report
/// per `period`.
pub async fn run(
    registry: std::sync::Arc<Registry>,
    loggers: Vec<Logger>,
    addr: SocketAddr,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut rng = fastrand::Rng::with_seed(0x0212_2017);
    let mut tasks = tokio::task::JoinSet::new();
    for cfg in loggers {
        let Some(device) = registry.device_id(&cfg.device) else { continue };
        let channels: Vec<Channel> = registry
            .device(device)
            .points
            .clone()
            .filter_map(|i| {
                let point = registry.points[i as usize].name.clone();
                let code = code_for(&cfg, &point)?;
                let (value, step) = super::baseline(&point, &mut rng);
                let (lo, hi) = match point.as_str() {
                    "flow" => (5.0, 60.0),
                    p => super::bounds(p),
                };
                let (value, step) = if point == "flow" { (20.0 + rng.f64() * 10.0, 1.0) } else { (value, step) };
                Some(Channel { code, point, value, step, lo, hi, minute: Vec::new(), hour: Vec::new() })
            })
            .collect();
        if channels.is_empty() {
            continue;
        }
        let logger = SimLogger { cfg, channels, qn: 0 };
        let tz = registry.site.timezone;
        tasks.spawn(run_logger(logger, addr, tz, period, rng.u64(..), shutdown.clone()));
    }
    info!(loggers = tasks.len(), listener = %addr, "Simulated HJ 212 loggers reporting.");
    while tasks.join_next().await.is_some() {}
}

async fn run_logger(
    mut lg: SimLogger,
    addr: SocketAddr,
    tz: chrono_tz::Tz,
    period: Duration,
    seed: u64,
    shutdown: CancellationToken,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(200);
    let mut last_minute: Option<DateTime<Utc>> = None;
    'connect: loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            c = TcpStream::connect(addr) => c,
        };
        let Ok(stream) = conn else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
            continue;
        };
        wait = Duration::from_millis(200);
        let (mut rd, mut wr) = stream.into_split();
        // Answers (9014) are read and dropped; the logger would retry without them.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    reader.abort();
                    return;
                }
                _ = tick.tick() => {}
            }
            let now = Utc::now();
            let elapsed = started.elapsed();
            let mut frames = Vec::new();
            let minute = now.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(now);
            if let Some(prev) = last_minute.filter(|p| *p != minute) {
                frames.push(lg.statistics("2051", prev, tz, false));
                if minute.hour() != prev.hour() {
                    let hour = prev.with_minute(0).unwrap_or(prev);
                    frames.push(lg.statistics("2061", hour, tz, true));
                }
            }
            last_minute = Some(minute);
            frames.push(lg.realtime(now, tz, elapsed, &mut rng));
            for f in frames {
                if wr.write_all(&f).await.is_err() {
                    debug!(mn = %lg.cfg.mn, "Simulated logger lost its connection.");
                    reader.abort();
                    continue 'connect;
                }
            }
        }
    }
}

impl SimLogger {
    fn header_qn(&mut self, now: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
        self.qn = (self.qn + 1) % 1000;
        format!("{}{:03}", now.with_timezone(&tz).format("%Y%m%d%H%M%S"), self.qn)
    }

    fn frame(&mut self, cn: &str, now: DateTime<Utc>, tz: chrono_tz::Tz, cp: &str) -> Vec<u8> {
        let qn = self.header_qn(now, tz);
        let pw = self.cfg.pw.clone().unwrap_or_default();
        let h = Header { qn: Some(&qn), st: "32", cn, pw: &pw, mn: &self.cfg.mn, flag: 5, split: None };
        codec::frame(self.cfg.crc, &codec::data_segment(&h, cp)).unwrap_or_default()
    }

    fn realtime(
        &mut self,
        now: DateTime<Utc>,
        tz: chrono_tz::Tz,
        elapsed: Duration,
        rng: &mut fastrand::Rng,
    ) -> Vec<u8> {
        let mut cp = vec![format!("DataTime={}", now.with_timezone(&tz).format("%Y%m%d%H%M%S"))];
        let calibrating = now.minute() % 10 == 9;
        for c in &mut self.channels {
            c.value = (c.value + (rng.f64() * 2.0 - 1.0) * c.step).clamp(c.lo, c.hi);
            // The demo's episodes: acid water, COD over its limit, loud noise.
            let shown = match c.point.as_str() {
                "ph" if elapsed < Duration::from_secs(300) => c.value - 2.2,
                "cod" if elapsed < Duration::from_secs(4200) => c.value + 70.0,
                "noise" if elapsed < Duration::from_secs(900) => c.value + 18.0,
                _ => c.value,
            };
            let flag = if c.point == "nh3n" && calibrating { "C" } else { "N" };
            if flag == "N" {
                c.minute.push(shown);
            }
            cp.push(format!("{}-Rtd={shown:.2},{}-Flag={flag}", c.code, c.code));
        }
        let cp = cp.join(";");
        self.frame("2011", now, tz, &cp)
    }

    /// Minute (or hourly) data for the period starting at `start`: Avg/Min/Max of what was sent.
    fn statistics(&mut self, cn: &str, start: DateTime<Utc>, tz: chrono_tz::Tz, hourly: bool) -> Vec<u8> {
        let mut cp = vec![format!("DataTime={}", start.with_timezone(&tz).format("%Y%m%d%H%M%S"))];
        for c in &mut self.channels {
            let values = if hourly { std::mem::take(&mut c.hour) } else { std::mem::take(&mut c.minute) };
            if values.is_empty() {
                continue;
            }
            let avg = values.iter().sum::<f64>() / values.len() as f64;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if !hourly {
                c.hour.push(avg);
            }
            cp.push(format!("{k}-Avg={avg:.2},{k}-Min={min:.2},{k}-Max={max:.2},{k}-Flag=N", k = c.code));
        }
        let cp = cp.join(";");
        self.frame(cn, start, tz, &cp)
    }
}
