//! Ingest benchmark: N JSON telemetry messages (4 numeric fields) through a real Mosquitto, first to a
//! subscriber that does nothing but count (the ceiling on this machine), then to the gateway, measured
//! until every sample is in point state. Reports medians over rounds, the ratio to the ceiling, gateway
//! CPU seconds, messages per gateway CPU-second and peak RSS.
//!
//! `cargo bench -p parkwatch-e2e --bench ingest`; `PARKWATCH_BENCH_MESSAGES` and `PARKWATCH_BENCH_ROUNDS`
//! change the load; `PARKWATCH_BENCH_RULES=1` also runs the built-in rule packs; `PARKWATCH_BENCH_HISTORY=0`
//! turns the edge history (on by default, as in a park) off, to see its share.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use parkwatch_e2e::bench::{connect, env_or, frame_len, median, peak_rss_mb, proc_cpu_secs, remaining_length};
use parkwatch_e2e::{wait_until, Gateway, Mosquitto};

const DEVICES: usize = 100;

/// QoS 0 PUBLISH frames, prepared before timing so the publisher costs little.
fn frames(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 100);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..n {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let topic = format!("park/g1/meter/m{}/telemetry", i % DEVICES);
        let payload = format!(
            "{{\"ua\":{:.1},\"ub\":{:.1},\"uc\":{:.1},\"ia\":{:.2}}}",
            215.0 + (rng % 100) as f64 / 10.0,
            216.0 + (rng % 90) as f64 / 10.0,
            217.0 + (rng % 80) as f64 / 10.0,
            (rng % 5000) as f64 / 100.0
        );
        out.push(0x30);
        remaining_length(2 + topic.len() + payload.len(), &mut out);
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(payload.as_bytes());
    }
    out
}

/// Publishes the prepared frames; returns when the last byte is written.
fn publish(port: u16, data: &[u8]) {
    let mut s = connect(port, "bench-pub");
    for chunk in data.chunks(256 * 1024) {
        s.write_all(chunk).unwrap();
    }
    s.write_all(&[0xE0, 0]).unwrap();
}

/// A subscriber that does nothing but count PUBLISH packets: the ceiling.
fn ceiling(port: u16, n: usize, data: &[u8]) -> f64 {
    let mut s = connect(port, "bench-sub");
    let filter = b"park/+/meter/+/telemetry";
    let mut sub = vec![0x82, (2 + 2 + filter.len() + 1) as u8, 0, 1, 0, filter.len() as u8];
    sub.extend_from_slice(filter);
    sub.push(0);
    s.write_all(&sub).unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).unwrap();
    let start = Instant::now();
    let publisher = std::thread::scope(|scope| {
        scope.spawn(|| publish(port, data));
        let mut buf = vec![0u8; 1 << 20];
        let mut pending: Vec<u8> = Vec::new();
        let mut count = 0;
        while count < n {
            let got = s.read(&mut buf).unwrap();
            assert!(got > 0, "broker closed the connection after {count} messages");
            pending.extend_from_slice(&buf[..got]);
            let mut pos = 0;
            while let Some((len, header)) = frame_len(&pending[pos..]) {
                if pending.len() - pos < header + len {
                    break;
                }
                if pending[pos] >> 4 == 3 {
                    count += 1;
                }
                pos += header + len;
            }
            pending.drain(..pos);
        }
        start.elapsed()
    });
    n as f64 / publisher.as_secs_f64()
}

/// Ingestion alone by default; `PARKWATCH_BENCH_RULES=1` runs the built-in rule packs on the same load,
/// `PARKWATCH_BENCH_HISTORY=0` leaves the edge history out.
fn gateway_config(port: u16) -> String {
    let rules = std::env::var("PARKWATCH_BENCH_RULES").is_ok_and(|v| v == "1");
    let history = std::env::var("PARKWATCH_BENCH_HISTORY").map_or(true, |v| v != "0");
    let mut c = format!(
        "[site]\nid = \"bench\"\n[api]\nlisten = \"{{api}}\"\n[rules]\nbuiltin = {rules}\n[history]\nenabled = {history}\n[[grids]]\nid = \"g1\"\n\
         [[mqtt.brokers]]\nid = \"b\"\nhost = \"127.0.0.1\"\nport = {port}\npersistent_session = false\n\
         [[mqtt.subscriptions]]\nbroker = \"b\"\ntopic = \"park/{{grid}}/meter/{{device}}/telemetry\"\nqos = 0\n"
    );
    for d in 0..DEVICES {
        c.push_str(&format!(
            "[[devices]]\nid = \"m{d}\"\ngrid = \"g1\"\ncategory = \"electrical\"\n\
             points = [{{ name = \"ua\" }}, {{ name = \"ub\" }}, {{ name = \"uc\" }}, {{ name = \"ia\" }}]\n"
        ));
    }
    c
}

struct GatewayRun {
    rate: f64,
    cpu: f64,
    rss_mb: f64,
}

fn gateway_run(port: u16, n: usize, data: &[u8]) -> GatewayRun {
    let gw = Gateway::start(&gateway_config(port));
    // One message through first: then the subscription is surely in place.
    let warm = &frames(1);
    // Until the subscription is in place a QoS 0 message is lost: publish until one arrives.
    wait_until(Duration::from_secs(20), "the warm-up sample", || {
        publish(port, warm);
        std::thread::sleep(Duration::from_millis(100));
        (gw.metric("parkwatch_core_samples_total")? > 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let base = gw.metric("parkwatch_core_samples_total").unwrap_or_default();
    let pid = gw.pid();
    let cpu0 = proc_cpu_secs(pid);
    let start = Instant::now();
    let target = base + 4.0 * n as f64;
    std::thread::scope(|scope| {
        scope.spawn(|| publish(port, data));
        wait_until(Duration::from_secs(600), "every sample in point state", || {
            std::thread::sleep(Duration::from_millis(20));
            (gw.metric("parkwatch_core_samples_total") >= Some(target)).then_some(())
        });
    });
    let elapsed = start.elapsed();
    let cpu = proc_cpu_secs(pid) - cpu0;
    let rejects = gw.json("/api/v1/rejects");
    assert_eq!(rejects.as_array().map(Vec::len), Some(0), "{rejects}");
    GatewayRun { rate: n as f64 / elapsed.as_secs_f64(), cpu, rss_mb: peak_rss_mb(pid) }
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test` of benches passes nothing useful: run small.
    let n = env_or("PARKWATCH_BENCH_MESSAGES", 1_000_000usize);
    let rounds = env_or("PARKWATCH_BENCH_ROUNDS", 3usize);
    let broker = Mosquitto::start("max_queued_messages 0\nmax_inflight_messages 0\nmax_queued_bytes 0");
    let data = frames(n);
    println!("ingest: {n} messages × {rounds} rounds, {} bytes of PUBLISH frames, {DEVICES} devices", data.len());
    let mut ceilings = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let c = ceiling(broker.port, n, &data);
        let g = gateway_run(broker.port, n, &data);
        println!(
            "round {round}: ceiling {:.0} msg/s | gateway {:.0} msg/s ({:.1} %), {:.2} CPU s, {:.0} msg per CPU-s, peak RSS {:.1} MB",
            c,
            g.rate,
            100.0 * g.rate / c,
            g.cpu,
            n as f64 / g.cpu,
            g.rss_mb
        );
        ceilings.push(c);
        runs.push(g);
    }
    let c = median(&ceilings);
    let rate = median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>());
    let ratio = median(&runs.iter().zip(&ceilings).map(|(r, c)| r.rate / c).collect::<Vec<_>>());
    let per_cpu = median(&runs.iter().map(|r| n as f64 / r.cpu).collect::<Vec<_>>());
    let rss = runs.iter().map(|r| r.rss_mb).fold(0.0, f64::max);
    println!("median: ceiling {c:.0} msg/s, gateway {rate:.0} msg/s, ratio {:.1} %, {per_cpu:.0} msg per gateway CPU-s, max peak RSS {rss:.1} MB", 100.0 * ratio);
    println!("targets: ratio >= 90 %, >= 250000 msg per CPU-s, peak RSS <= 40 MB");
}
