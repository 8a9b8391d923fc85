//! The poller against simulated meters on a loopback line: values, a refused identifier, discovery,
//! and a dead meter's cost to its neighbour.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codec::{Address, Di};
use super::*;
use crate::model::Batch;
use crate::sim::dlt645::{run_tcp, SimMeter};

fn config(port: u16, devices: &str) -> config::Config {
    let text = format!(
        r#"
[site]
id = "p"
[[grids]]
id = "g1"
[[dlt645.buses]]
id = "rs485a"
kind = "tcp"
host = "127.0.0.1"
port = {port}
timeout_ms = 150
backoff_max_ms = 1200
offline_after = 2
{devices}
"#
    );
    config::from_str(&text, "t.toml".as_ref(), ".".as_ref()).unwrap()
}

async fn line(meters: Vec<SimMeter>) -> (u16, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn(run_tcp(listener, Arc::new(Mutex::new(meters)), stop.clone()));
    (port, stop)
}

/// Runs the pollers of `c` for `secs` seconds and returns every batch.
async fn poll(c: &config::Config, secs: f64) -> (Vec<Batch>, Arc<Dlt645Status>, Registry) {
    let registry = Registry::from_config(c);
    let (pollers, status) = pollers(c, &registry);
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let tasks: Vec<_> = pollers.into_iter().map(|p| tokio::spawn(p.run(tx.clone(), stop.clone()))).collect();
    drop(tx);
    let mut batches = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    while let Ok(Some(b)) = tokio::time::timeout_at(end, rx.recv()).await {
        batches.push(b);
    }
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    (batches, status, registry)
}

fn values(batches: &[Batch], registry: &Registry, device: &str, point: &str) -> Vec<(Quality, f64)> {
    let d = registry.device_id(device).unwrap();
    let p = registry.point_of(d, point).unwrap();
    batches.iter().flat_map(|b| b.samples.iter()).filter(|s| s.point == p).map(|s| (s.quality, s.value)).collect()
}

#[tokio::test]
async fn meters_are_read_refusals_named_and_dead_meters_backed_off() {
    let a = Address::parse("000000000161").unwrap();
    let dead = Address::parse("000000000999").unwrap();
    let mut live = SimMeter::typical(a);
    live.more.push(Di(0x0201_0200));
    let (port, stop) = line(vec![live, SimMeter { dead: true, ..SimMeter::typical(dead) }]).await;
    let c = config(
        port,
        r#"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
[devices.dlt645]
bus = "rs485a"
address = "000000000161"
interval_ms = 100
points = [{ di = "02 01 01 00" }, { di = "02 01 02 00" }, { di = "02 02 01 00" }, { di = "02 03 00 00" }, { di = "04 00 01 01", name = "date", bytes = 4, decimals = 0 }]
[[devices]]
id = "m9"
grid = "g1"
category = "electrical"
dlt645 = { bus = "rs485a", address = "000000000999", interval_ms = 100 }
"#,
    );
    let (batches, status, registry) = poll(&c, 3.0).await;
    stop.cancel();
    let ua = values(&batches, &registry, "m1", "ua");
    assert!(ua.len() >= 10, "{} readings", ua.len());
    assert!(ua.iter().all(|&(q, v)| q == Quality::Good && (v - 229.8).abs() < 1e-9), "{ua:?}");
    // Answered with B1: the value is used and the follow-up counted.
    assert!(values(&batches, &registry, "m1", "ub")
        .iter()
        .all(|&(q, v)| q == Quality::Good && (v - 230.4).abs() < 1e-9));
    assert!(values(&batches, &registry, "m1", "ia").iter().all(|&(_, v)| (v - 12.345).abs() < 1e-9));
    // kW on the line, W as a point.
    assert!(values(&batches, &registry, "m1", "p").iter().all(|&(_, v)| (v - 8123.4).abs() < 1e-6));
    // Refused: a bad sample each cycle, the error named once in an event and in the status.
    assert!(values(&batches, &registry, "m1", "date").iter().all(|&(q, v)| q == Quality::Bad && v.is_nan()));
    let refusals: Vec<&Event> =
        batches.iter().flat_map(|b| b.events.iter()).filter(|e| e.kind == "dlt645_abnormal").collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].attributes["error"], "无请求数据 (no such data)");
    assert_eq!(refusals[0].attributes["di"], "04 00 01 01");
    let m1 = &status.meters[0];
    assert!(m1.online.load(Relaxed));
    assert!(m1.followups.load(Relaxed) >= 10);
    assert_eq!(m1.timeouts.load(Relaxed), 0);
    assert!(m1.last_error.lock().unwrap().contains("04 00 01 01 (date): abnormal answer (D1): 无请求数据"));
    // The dead meter: 100 ms interval, backoff 200, 400, 800, 1200 ms (capped) → attempts at about
    // 0, 0.35, 0.9, 1.85, 3.2 s: at most 4 timeouts in 3 s, however short its interval.
    let m9 = &status.meters[1];
    let timeouts = m9.timeouts.load(Relaxed);
    assert!((2..=4).contains(&timeouts), "{timeouts} timeouts");
    assert!(!m9.online.load(Relaxed));
    let offline: Vec<&Event> = batches.iter().flat_map(|b| b.events.iter()).filter(|e| e.kind == "offline").collect();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].device, registry.device_id("m9").unwrap());
}

#[tokio::test]
async fn a_meter_alone_on_its_line_is_found_with_13h() {
    let a = Address::parse("201512310042").unwrap();
    let (port, stop) = line(vec![SimMeter::typical(a)]).await;
    let c = config(
        port,
        r#"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
dlt645 = { bus = "rs485a", interval_ms = 100 }
"#,
    );
    let (batches, status, registry) = poll(&c, 0.8).await;
    stop.cancel();
    assert_eq!(*status.meters[0].address.lock().unwrap(), "201512310042");
    let e = values(&batches, &registry, "m1", "energy");
    assert!(!e.is_empty() && e.iter().all(|&(q, v)| q == Quality::Good && (v - 12_345.67).abs() < 1e-9), "{e:?}");
    let pf = values(&batches, &registry, "m1", "pf");
    assert!(pf.iter().all(|&(_, v)| (v - 0.962).abs() < 1e-9), "{pf:?}");
}
