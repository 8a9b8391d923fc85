//! Forwarding benchmark: samples through line-protocol encoding, the outbox commit and the write to a
//! VictoriaMetrics on loopback. Steady state (store up), backlog replay after an outage (store down
//! while the samples are committed, then up), outbox bytes per sample, and the store's own ceiling:
//! the same bodies posted straight to it from one connection.
//!
//! `cargo bench -p parkwatch-e2e --bench forward`; `PARKWATCH_BENCH_SAMPLES` (default 2,000,000)
//! changes the load.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkwatch::core::{self, Core};
use parkwatch::forward::{self, line::Encoder, ForwardMetrics};
use parkwatch::metrics::Metrics;
use parkwatch::model::pool::SamplePool;
use parkwatch::model::{Batch, PointId, Quality, Registry, Sample};
use parkwatch_e2e::Victoria;

const DEVICES: usize = 100;
const POINTS: usize = 10;

fn config(dir: &Path, store: &str) -> String {
    let mut c = String::from("[site]\nid = \"bench\"\n[[grids]]\nid = \"g1\"\n");
    for d in 0..DEVICES {
        let points: Vec<String> = (0..POINTS).map(|p| format!("{{ name = \"p{p}\" }}")).collect();
        c.push_str(&format!(
            "[[devices]]\nid = \"d{d}\"\ngrid = \"g1\"\ncategory = \"electrical\"\ntags = {{ building = \"B{}\" }}\npoints = [{}]\n",
            d % 10,
            points.join(", ")
        ));
    }
    c.push_str(&format!(
        "[rules]\nbuiltin = false\n[forward]\noutbox = {:?}\nbatch_lines = 5000\nmax_outbox_bytes = 4294967296\n\
         [[forward.targets]]\nid = \"vm\"\nurl = \"{store}\"\norg = \"park\"\nbucket = \"bench\"\nretry_min_ms = 50\nretry_max_ms = 200\n",
        dir.join("outbox.db").display().to_string()
    ));
    c
}

/// `n` samples as readings of 10 points per device, 1 ms apart per device, in batches of 4,000.
fn batches(registry: &Registry, n: usize, t0: i64) -> Vec<Vec<Sample>> {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(4000);
    for i in 0..n / POINTS {
        let d = i % DEVICES;
        let ts = t0 + (i / DEVICES) as i64 * 1_000_000;
        for p in 0..POINTS {
            let point = registry.devices[d].points.start + p as u32;
            cur.push(Sample {
                point: PointId(point),
                quality: Quality::Good,
                ts,
                value: (rng.f64() * 1000.0).round() / 10.0,
            });
        }
        if cur.len() >= 4000 {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(4000)));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Run {
    feed: Duration,
    total: Duration,
    outbox_bytes_per_sample: f64,
}

fn run(store: &mut Victoria, n: usize, outage: bool, t0: i64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        parkwatch::config::from_str(&config(dir.path(), &store.url()), Path::new("bench.toml"), dir.path()).unwrap();
    let registry = Arc::new(Registry::from_config(&cfg));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let pool = Arc::new(SamplePool::default());
    let metrics = Arc::new(Metrics::new(Vec::new(), Vec::new(), 1));
    let (_core_tx, core_rx) = tokio::sync::mpsc::channel(1);
    let (handle, _core) =
        rt.block_on(async { core::spawn(Core::new(registry.clone(), metrics, pool.clone(), 1), core_rx, None, None) });
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(64);
    let data = batches(&registry, n, t0);
    if outage {
        store.stop();
    }
    let fwd = forward::start(&cfg, registry.clone().into(), pool, rx, None, None, handle).unwrap();
    let m: Arc<ForwardMetrics> = fwd.metrics.clone();
    let lines = (n / POINTS) as u64;
    let start = Instant::now();
    for b in data {
        tx.blocking_send(Batch::new(b, Vec::new())).unwrap();
    }
    drop(tx);
    // Committed: every line is in the outbox.
    while m.outbox.committed_lines.load(Ordering::Relaxed) < lines {
        std::thread::sleep(Duration::from_millis(5));
    }
    let feed = start.elapsed();
    let outbox_bytes = m.outbox.bytes.load(Ordering::Relaxed).max(if outage { 0 } else { 1 });
    let start = if outage {
        // Replay: measured from the moment the store is back.
        let committed_bytes = {
            let mut b = m.outbox.bytes.load(Ordering::Relaxed);
            for _ in 0..100 {
                if b > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                b = m.outbox.bytes.load(Ordering::Relaxed);
            }
            b
        };
        store.run();
        let _ = committed_bytes;
        Instant::now()
    } else {
        start
    };
    while m.targets[0].lines.load(Ordering::Relaxed) < lines {
        std::thread::sleep(Duration::from_millis(5));
        assert!(start.elapsed() < Duration::from_secs(600), "the store did not confirm every line");
    }
    let total = start.elapsed();
    let bytes_per_sample = if outage { outbox_bytes as f64 / n as f64 } else { f64::NAN };
    fwd.stop();
    Run { feed, total, outbox_bytes_per_sample: bytes_per_sample }
}

/// The store's own ceiling: the same line protocol, 5,000 lines per request, from one connection.
fn ceiling(store: &Victoria, n: usize, t0: i64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        parkwatch::config::from_str(&config(dir.path(), &store.url()), Path::new("bench.toml"), dir.path()).unwrap();
    let registry = Registry::from_config(&cfg);
    let enc = Encoder::new(&registry);
    let mut bodies = Vec::new();
    let mut body = String::new();
    let mut lines = 0;
    for b in batches(&registry, n, t0) {
        lines += enc.samples(&registry, &b, &mut body);
        if lines >= 5000 {
            bodies.push(std::mem::take(&mut body));
            lines = 0;
        }
    }
    if !body.is_empty() {
        bodies.push(body);
    }
    let url = format!("{}/api/v2/write?org=park&bucket=bench&precision=ns", store.url());
    let agent = ureq::AgentBuilder::new().build();
    let start = Instant::now();
    for b in bodies {
        agent.post(&url).send_string(&b).expect("store write");
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("PARKWATCH_BENCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let mut store = Victoria::start();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (mut steady, mut replay, mut ceil, mut bps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..3i64 {
        // Each round writes new timestamps, so the store ingests, not deduplicates.
        let t0 = 1_760_000_000_000_000_000 + round * 10_000_000_000_000;
        let c = ceiling(&store, n, t0);
        let s = run(&mut store, n, false, t0 + 3_000_000_000_000);
        let r = run(&mut store, n, true, t0 + 6_000_000_000_000);
        println!(
            "round {}: store ceiling {:.0} samples/s | steady {:.0} samples/s (outbox commit alone {:.0}/s) | replay {:.0} samples/s, {:.1} outbox bytes/sample",
            round + 1,
            rate(c),
            rate(s.total),
            rate(s.feed),
            rate(r.total),
            r.outbox_bytes_per_sample
        );
        ceil.push(rate(c));
        steady.push(rate(s.total));
        replay.push(rate(r.total));
        bps.push(r.outbox_bytes_per_sample);
    }
    println!(
        "median of 3 ({n} samples, {DEVICES} devices × {POINTS} points): store ceiling {:.0}/s, steady {:.0}/s, replay {:.0}/s, {:.1} outbox bytes per sample",
        median(ceil),
        median(steady),
        median(replay),
        median(bps)
    );
    println!("targets: steady >= 300000/s, replay >= 500000/s, or the store's ceiling if lower");
}
