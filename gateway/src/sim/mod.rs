//! The simulated park used by `demo` and tests: it publishes realistic telemetry and access events for
//! the devices of a config over MQTT, with occasional hazards.
//!
//! What a device publishes follows its category and point names:
//! - `electrical`: JSON on `park/<grid>/meter/<device>/telemetry` (ms timestamp) — phase voltages around
//!   220 V, currents, residual current in mA (normally 20–120 mA), cable temperature, an energy counter;
//! - `environment`: JSON on `park/<grid>/env/<device>/telemetry` (RFC 3339 timestamp) — noise dB(A),
//!   PM2.5, PM10;
//! - `water`: bare numbers on `park/<grid>/<device>/<point>` — pH, COD, NH3-N;
//! - `access` and `patrol`: events on `park/<grid>/access/<device>/event`.
//!
//! Hazards: a residual-current rise past 300 mA on one meter for about a minute, a noisy night episode on
//! one environment sensor, a forced door; each appears every few minutes.
//!
//! `hj212.rs` runs simulated HJ 212 data loggers against the gateway's HJ 212 listener for the
//! devices of `[[hj212.loggers]]`, which the MQTT side leaves alone.
//!
//! Owns: the simulated park. May import: `model`, `config`, `source` (Modbus profiles and encoding,
//! the DL/T 645 and HJ 212 codecs).

pub mod dlt645;
pub mod hj212;
pub mod inbox;
pub mod modbus;

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::model::{PointId, Registry};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Hazard {
    None,
    /// Residual current ramps up to this many mA.
    ResidualRise(f64),
    /// Noise raised by this many dB.
    Noisy(f64),
}

struct SimDevice {
    id: String,
    grid: String,
    category: String,
    points: Vec<(String, PointId)>,
    values: Vec<f64>,
    hazard: Hazard,
    hazard_left: u32,
    /// Who patrols the device's grid (the grid's officers), for checkpoint scans.
    officers: Vec<String>,
}

/// A normal starting value and the size of its random walk, by point name.
fn baseline(point: &str, rng: &mut fastrand::Rng) -> (f64, f64) {
    match point {
        "ua" | "ub" | "uc" => (220.0 + rng.f64() * 4.0 - 2.0, 0.6),
        "ia" | "ib" | "ic" => (20.0 + rng.f64() * 30.0, 1.5),
        "residual_current" => (40.0 + rng.f64() * 60.0, 3.0),
        "cable_temp" => (32.0 + rng.f64() * 8.0, 0.3),
        "energy" => (10_000.0 + rng.f64() * 50_000.0, 0.0),
        "p" => (8.0 + rng.f64() * 10.0, 0.5),
        "noise" => (52.0 + rng.f64() * 5.0, 1.5),
        "pm25" => (25.0 + rng.f64() * 20.0, 2.0),
        "pm10" => (50.0 + rng.f64() * 30.0, 3.0),
        "ph" => (7.2 + rng.f64() * 0.6, 0.05),
        "cod" => (60.0 + rng.f64() * 30.0, 2.0),
        "nh3n" => (5.0 + rng.f64() * 5.0, 0.3),
        _ => (rng.f64() * 100.0, 1.0),
    }
}

fn bounds(point: &str) -> (f64, f64) {
    match point {
        "ua" | "ub" | "uc" => (205.0, 232.0),
        "ia" | "ib" | "ic" => (2.0, 80.0),
        "residual_current" => (10.0, 140.0),
        "cable_temp" => (25.0, 50.0),
        "noise" => (45.0, 63.0),
        "pm25" => (8.0, 70.0),
        "pm10" => (20.0, 140.0),
        "ph" => (6.5, 8.5),
        "cod" => (30.0, 120.0),
        "nh3n" => (1.0, 20.0),
        _ => (f64::MIN, f64::MAX),
    }
}

/// Runs the simulated park against the broker at `host:port` until `shutdown`, one round per `period`;
/// `officers` (grid id → person ids) scan the grids' checkpoints.
pub async fn run(
    registry: std::sync::Arc<Registry>,
    polled: std::collections::HashSet<String>,
    officers: std::collections::HashMap<String, Vec<String>>,
    host: String,
    port: u16,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut rng = fastrand::Rng::with_seed(0x7061_726b);
    let mut devices: Vec<SimDevice> = registry
        .devices
        .iter()
        // Devices polled over Modbus get their values from the simulated Modbus server instead.
        .filter(|d| !polled.contains(&d.id))
        .map(|d| {
            let points: Vec<(String, PointId)> =
                d.points.clone().map(|i| (registry.points[i as usize].name.clone(), PointId(i))).collect();
            let values = points.iter().map(|(n, _)| baseline(n, &mut rng).0).collect();
            SimDevice {
                id: d.id.clone(),
                grid: registry.grid(d.grid).id.clone(),
                category: d.category.clone(),
                points,
                values,
                hazard: Hazard::None,
                officers: officers.get(&registry.grid(d.grid).id).cloned().unwrap_or_default(),
                hazard_left: 0,
            }
        })
        .collect();
    let mut options = MqttOptions::new(format!("parkwatch-sim-{}", std::process::id()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                ev = eventloop.poll() => if let Err(e) = ev {
                    debug!(error = %e, "Simulator connection error.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    info!(devices = devices.len(), "Simulated park publishing.");
    let mut tick = tokio::time::interval(period);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        round += 1;
        let now = chrono::Utc::now();
        start_hazards(&mut devices, &mut rng, round);
        for d in &mut devices {
            step(d, &mut rng);
            let (topic, payload, qos) = match d.category.as_str() {
                "electrical" | "energy" => {
                    let mut doc = serde_json::Map::new();
                    doc.insert("ts".into(), json!(now.timestamp_millis()));
                    for ((name, _), v) in d.points.iter().zip(&d.values) {
                        doc.insert(name.clone(), json!((v * 100.0).round() / 100.0));
                    }
                    (
                        format!("park/{}/meter/{}/telemetry", d.grid, d.id),
                        serde_json::Value::Object(doc).to_string(),
                        QoS::AtMostOnce,
                    )
                }
                "environment" => {
                    let mut doc = serde_json::Map::new();
                    doc.insert("time".into(), json!(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
                    for ((name, _), v) in d.points.iter().zip(&d.values) {
                        doc.insert(name.clone(), json!((v * 10.0).round() / 10.0));
                    }
                    (
                        format!("park/{}/env/{}/telemetry", d.grid, d.id),
                        serde_json::Value::Object(doc).to_string(),
                        QoS::AtMostOnce,
                    )
                }
                "water" => {
                    for ((name, _), v) in d.points.iter().zip(&d.values) {
                        let topic = format!("park/{}/{}/{}", d.grid, d.id, name);
                        let _ = client.try_publish(topic, QoS::AtMostOnce, false, format!("{v:.2}"));
                    }
                    continue;
                }
                "access" | "patrol" => match access_event(d, &mut rng, round) {
                    Some(payload) => (format!("park/{}/access/{}/event", d.grid, d.id), payload, QoS::AtLeastOnce),
                    None => continue,
                },
                _ => continue,
            };
            let _ = client.try_publish(topic, qos, false, payload);
        }
    }
    let _ = client.try_disconnect();
}

fn start_hazards(devices: &mut [SimDevice], rng: &mut fastrand::Rng, round: u64) {
    // Every 90 rounds a meter's residual current rises (the first soon after start, so a newcomer sees
    // an alarm and its notification within a minute); every 120 a sensor gets noisy; both last ~60.
    if round % 90 == 5 {
        let meters: Vec<usize> = (0..devices.len()).filter(|&i| devices[i].category == "electrical").collect();
        if let Some(&i) = meters.get(rng.usize(..meters.len().max(1))) {
            devices[i].hazard = Hazard::ResidualRise(320.0 + rng.f64() * 130.0);
            devices[i].hazard_left = 60;
            info!(device = %devices[i].id, "Simulating a residual-current rise.");
        }
    }
    if round % 120 == 40 {
        let sensors: Vec<usize> = (0..devices.len()).filter(|&i| devices[i].category == "environment").collect();
        if let Some(&i) = sensors.get(rng.usize(..sensors.len().max(1))) {
            devices[i].hazard = Hazard::Noisy(12.0 + rng.f64() * 6.0);
            devices[i].hazard_left = 60;
            info!(device = %devices[i].id, "Simulating a noisy episode.");
        }
    }
}

fn step(d: &mut SimDevice, rng: &mut fastrand::Rng) {
    for ((name, _), v) in d.points.iter().zip(d.values.iter_mut()) {
        let (_, walk) = baseline(name, rng);
        let (lo, hi) = bounds(name);
        match name.as_str() {
            "energy" => *v += 0.01 + rng.f64() * 0.05,
            "residual_current" => {
                if let Hazard::ResidualRise(peak) = d.hazard {
                    *v += (peak - *v) * 0.25;
                } else if *v > hi {
                    *v -= (*v - 80.0) * 0.3;
                } else {
                    *v = (*v + (rng.f64() - 0.5) * 2.0 * walk).clamp(lo, hi);
                }
            }
            "noise" => {
                let base = (*v + (rng.f64() - 0.5) * 2.0 * walk).clamp(lo, hi);
                *v = if let Hazard::Noisy(extra) = d.hazard { base.min(hi - 5.0) + extra } else { base };
            }
            _ => *v = (*v + (rng.f64() - 0.5) * 2.0 * walk).clamp(lo, hi),
        }
    }
    if d.hazard_left > 0 {
        d.hazard_left -= 1;
        if d.hazard_left == 0 {
            d.hazard = Hazard::None;
        }
    }
}

fn access_event(d: &SimDevice, rng: &mut fastrand::Rng, round: u64) -> Option<String> {
    let ts = chrono::Utc::now().timestamp_millis();
    if d.category == "patrol" {
        // One of the grid's officers scans this checkpoint every few minutes.
        return (rng.u32(..100) < 3).then(|| {
            let officer = match d.officers.len() {
                0 => format!("officer-{}", rng.u32(1..=6)),
                n => d.officers[rng.usize(..n)].clone(),
            };
            json!({"ts": ts, "event": "checkpoint_scanned", "officer": officer, "checkpoint": d.id}).to_string()
        });
    }
    if round % 150 == 75 && rng.bool() {
        return Some(json!({"ts": ts, "event": "door_forced", "door": format!("{}-door-1", d.id)}).to_string());
    }
    match rng.u32(..100) {
        0..=7 => Some(json!({"ts": ts, "event": "card_granted", "card": format!("C{:06}", rng.u32(..1_000_000)), "door": format!("{}-door-1", d.id)}).to_string()),
        8 => Some(json!({"ts": ts, "event": "card_denied", "card": format!("C{:06}", rng.u32(..1_000_000)), "door": format!("{}-door-1", d.id)}).to_string()),
        9 if rng.u32(..10) == 0 => Some(json!({"ts": ts, "event": "door_held_open", "door": format!("{}-door-1", d.id), "seconds": 60 + rng.u32(..120)}).to_string()),
        _ => None,
    }
}
