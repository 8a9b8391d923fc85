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

/// A line with everything a real RS-485 segment throws at a reader before each answer: noise with a
/// stray 68H, the echo of the request, a damaged copy of the answer, another meter's answer for the
/// same identifier with another value; the answer itself comes last, split in two writes.
#[tokio::test]
async fn answers_are_found_among_echoes_noise_and_other_meters() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Address::parse("000000000161").unwrap();
    let other = Address::parse("000000000162").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let meters = [SimMeter::typical(a)];
        let mut impostor = SimMeter::typical(other);
        impostor.values.insert(Di(0x0201_0100), (codec::known(Di(0x0201_0100)).unwrap().format, 111.1));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let Ok(n) = s.read(&mut chunk).await else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Scan::Frame { frame, end, .. } = codec::scan(&buf) {
                let echo = buf[..end].to_vec();
                buf.drain(..end);
                let Some(answer) = crate::sim::dlt645::answer(&meters, &frame) else { continue };
                let good = codec::encode(&answer, 2);
                let mut damaged = good.clone();
                let n = damaged.len();
                damaged[n - 3] ^= 0x10;
                let mut wrong = frame.clone();
                wrong.address = other;
                let theirs = crate::sim::dlt645::answer(&[impostor.clone()], &wrong).map(|f| codec::encode(&f, 0));
                let mut out = vec![0x00, 0x68, 0xFF];
                out.extend(&echo);
                out.extend(&damaged);
                out.extend(theirs.unwrap_or_default());
                out.extend(&good[..5]);
                s.write_all(&out).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                s.write_all(&good[5..]).await.unwrap();
            }
        }
    });
    let c = config(
        port,
        r#"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
dlt645 = { bus = "rs485a", address = "000000000161", interval_ms = 100, points = [{ di = "02 01 01 00" }, { di = "00 01 00 00" }] }
"#,
    );
    let (batches, status, registry) = poll(&c, 1.0).await;
    let ua = values(&batches, &registry, "m1", "ua");
    assert!(ua.len() >= 5, "{ua:?}");
    assert!(ua.iter().all(|&(q, v)| q == Quality::Good && (v - 229.8).abs() < 1e-9), "{ua:?}");
    let e = values(&batches, &registry, "m1", "energy");
    assert!(e.iter().all(|&(q, v)| q == Quality::Good && (v - 12_345.67).abs() < 1e-9), "{e:?}");
    let m = &status.meters[0];
    assert_eq!(m.timeouts.load(Relaxed) + m.bad_values.load(Relaxed) + m.transport_errors.load(Relaxed), 0);
    assert!(m.noise_bytes.load(Relaxed) > 30 * ua.len() as u64, "{}", m.noise_bytes.load(Relaxed));
}

/// A serial server whose first connection goes silent (open, never answering): the poller opens a
/// new one and reads the meter there.
#[tokio::test]
async fn a_silent_serial_server_connection_is_opened_again() {
    let a = Address::parse("000000000161").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let meters = Arc::new(Mutex::new(vec![SimMeter::typical(a)]));
    let (silent_tx, silent_rx) = tokio::sync::oneshot::channel();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            // Held open and never read: the first connection is dead air.
            let (first, _) = listener.accept().await.unwrap();
            let _ = silent_tx.send(first);
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(crate::sim::dlt645::serve(s, meters.clone(), stop.clone()));
            }
        });
    }
    let c = config(
        port,
        r#"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
dlt645 = { bus = "rs485a", address = "000000000161", interval_ms = 100, points = [{ di = "02 01 01 00" }] }
"#,
    );
    let (batches, status, registry) = poll(&c, 2.5).await;
    stop.cancel();
    drop(silent_rx);
    let ua = values(&batches, &registry, "m1", "ua");
    assert!(!ua.is_empty() && ua.iter().all(|&(q, v)| q == Quality::Good && (v - 229.8).abs() < 1e-9), "{ua:?}");
    // offline_after = 2: two timeouts on the dead connection, then the new one answers.
    assert_eq!(status.meters[0].timeouts.load(Relaxed), 2);
    assert!(status.meters[0].online.load(Relaxed));
}
