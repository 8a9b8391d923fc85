//! Rule engine benchmark: 1,000 rules over 10,000 points (1,000 devices × 10 points) fed at 50,000
//! samples/s into the real core task, on a thread of its own, with incidents persisted to SQLite.
//! Reports evaluations/s, whether the core kept up, its CPU, and the sample-to-alarm latency (median,
//! p99) of the alarms raised on the way.
//!
//! `cargo bench -p parkwatch-e2e --bench rules`; `PARKWATCH_BENCH_SECS` (default 20) and
//! `PARKWATCH_BENCH_RATE` (default 50000) change the load.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkwatch::core::{self, packs, Core};
use parkwatch::incident::{self, Filter};
use parkwatch::metrics::Metrics;
use parkwatch::model::pool::SamplePool;
use parkwatch::model::{Batch, PointId, Quality, Registry, Sample};

const DEVICES: usize = 1_000;
const POINTS: usize = 10;
const RULES: usize = 1_000;
const LIMIT: f64 = 900.0;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// utime + stime of the calling thread, seconds.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn config(dir: &Path) -> String {
    let mut c = String::from("[site]\nid = \"bench\"\n[[grids]]\nid = \"g1\"\n");
    for d in 0..DEVICES {
        let points: Vec<String> = (0..POINTS).map(|p| format!("{{ name = \"p{p}\" }}")).collect();
        c.push_str(&format!(
            "[[devices]]\nid = \"d{d}\"\ngrid = \"g1\"\ncategory = \"electrical\"\ntags = {{ shard = \"{}\" }}\npoints = [{}]\n",
            d % 100,
            points.join(", ")
        ));
    }
    c.push_str(&format!("[rules]\nbuiltin = false\ndirs = [{:?}]\n", dir.join("rules").display().to_string()));
    c.push_str(&format!("[incidents]\npath = {:?}\n", dir.join("incidents.db").display().to_string()));
    c
}

/// Rule r watches point p(r % 10) on the 10 devices of shard r / 10: every point has exactly one rule.
fn pack() -> String {
    (0..RULES)
        .map(|r| {
            format!(
                "rule(#{{ id: \"bench.r{r}\", category: \"equipment\", severity: \"major\", \
                 watch: #{{ points: [\"p{}\"], tags: #{{ shard: \"{}\" }} }}, params: #{{ limit: {LIMIT:.1} }}, \
                 condition: |ctx| ctx.value > ctx.param(\"limit\") }});\n",
                r % 10,
                r / 10
            )
        })
        .collect()
}

fn main() {
    let secs = env_f64("PARKWATCH_BENCH_SECS", 20.0);
    let rate = env_f64("PARKWATCH_BENCH_RATE", 50_000.0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/bench.rhai"), pack()).unwrap();
    let cfg = parkwatch::config::from_str(&config(dir.path()), Path::new("bench.toml"), dir.path()).unwrap();
    let registry = Arc::new(Registry::from_config(&cfg));
    let compile = Instant::now();
    let (engine, _) = packs::build(&cfg, registry.clone(), 1).unwrap_or_else(|e| panic!("{e:?}"));
    let compile = compile.elapsed();
    assert_eq!(engine.rules().len(), RULES);
    let (conn, _, _) = incident::open(&cfg.incidents.path).unwrap();
    let (store, _store_thread) = incident::spawn(conn).unwrap();
    let metrics = Arc::new(Metrics::new(Vec::new(), Vec::new(), 10));
    let pool = Arc::new(SamplePool::default());
    let core =
        Core::new(registry.clone(), metrics.clone(), pool.clone(), 100).with_engine(engine, vec!["bench".into()]);
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(64);
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let store2 = store.clone();
    let core_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cpu0 = thread_cpu();
        rt.block_on(async move {
            let (handle, task) = core::spawn(core, rx, Some(store2), None);
            handle_tx.send(handle).unwrap();
            task.await.unwrap();
        });
        thread_cpu() - cpu0
    });
    let handle = handle_rx.recv().unwrap();
    // An alarm counts once it is announced (the change log grows), which is after it is on disk.
    let mut committed = store.committed();
    let log = incident::changes::ChangeLog::open(&cfg.incidents.path).unwrap();
    let listener = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut seen: HashMap<(String, String), i64> = HashMap::new();
        let mut cursor = 0;
        rt.block_on(async {
            while committed.changed().await.is_ok() {
                let at = now_ns();
                for r in log.after(cursor, 100_000).unwrap() {
                    cursor = r.seq;
                    seen.entry((r.device.clone(), r.point.clone())).or_insert(at);
                }
            }
        });
        seen
    });

    // 100 batches a second; every 5,000th sample exceeds the limit on a point not used before.
    let per_batch = (rate / 100.0) as usize;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut exceed_at: HashMap<(String, String), i64> = HashMap::new();
    let mut next_exceed = 0usize;
    let total_points = DEVICES * POINTS;
    let start = Instant::now();
    let mut sent = 0usize;
    let mut tick = 0u64;
    let mut blocked = Duration::ZERO;
    while start.elapsed().as_secs_f64() < secs {
        tick += 1;
        let due = start + Duration::from_millis(10 * tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut samples = pool.take();
        let ts = now_ns();
        for _ in 0..per_batch {
            let point = rng.usize(..total_points);
            let mut value = rng.f64() * 800.0;
            if sent % 5_000 == 4_999 && next_exceed < total_points {
                let p = next_exceed * 7 % total_points;
                next_exceed += 1;
                let info = &registry.points[p];
                exceed_at.insert((registry.device(info.device).id.clone(), info.name.clone()), ts);
                samples.push(Sample { point: PointId(p as u32), quality: Quality::Good, ts, value: 950.0 });
                sent += 1;
                continue;
            }
            if exceed_at.contains_key(&(
                registry.device(registry.points[point].device).id.clone(),
                registry.points[point].name.clone(),
            )) {
                value = 950.0;
            }
            samples.push(Sample { point: PointId(point as u32), quality: Quality::Good, ts, value });
            sent += 1;
        }
        let t = Instant::now();
        tx.blocking_send(Batch::new(samples, Vec::new())).unwrap();
        blocked += t.elapsed();
    }
    let elapsed = start.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = rt.block_on(handle.rules()).unwrap();
    drop(tx);
    drop(handle);
    let core_cpu = core_thread.join().unwrap();
    rt.block_on(store.sync()).unwrap();
    let raised = rt.block_on(store.list(Filter { limit: 1000, ..Filter::default() })).unwrap();
    drop(store);
    let announced_at = listener.join().unwrap();
    let evaluations: u64 = report.rules.iter().map(|r| r.stats.evaluations).sum();
    let eval_ns: u64 = report.rules.iter().map(|r| r.stats.eval_ns).sum();
    let mut latencies: Vec<f64> = raised
        .iter()
        .filter_map(|i| {
            let key = (i.device.clone(), i.point.clone());
            let at = announced_at.get(&key)?;
            let sent = exceed_at.get(&key)?;
            Some((at - sent) as f64 / 1e6)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "rules: {RULES} rules over {} points ({DEVICES} devices), compiled in {:.0} ms",
        DEVICES * POINTS,
        compile.as_secs_f64() * 1e3
    );
    println!(
        "fed {sent} samples in {:.1} s = {:.0} samples/s (target {rate:.0}); feeder blocked on a full channel {:.0} ms in all",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        blocked.as_secs_f64() * 1e3
    );
    println!(
        "evaluations {evaluations} = {:.0}/s; {:.2} µs per evaluation in scripts; core thread CPU {:.2} s = {:.0} % of one core",
        evaluations as f64 / elapsed.as_secs_f64(),
        eval_ns as f64 / evaluations.max(1) as f64 / 1e3,
        core_cpu,
        100.0 * core_cpu / elapsed.as_secs_f64()
    );
    println!(
        "alarms {} (of {} exceedances); sample-to-announced-alarm latency (persisted first) median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        exceed_at.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!("targets: keeps up at {rate:.0} samples/s on one core, p99 <= 5 ms");
}
