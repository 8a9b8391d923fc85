//! Edge history benchmark.
//!
//! 1. Writer: 10,000 points fed at 50,000 samples/s (batches of 500 every 10 ms) through
//!    `History::offer`, with sample time running 12× faster than real time so that every real second
//!    closes a minute of every point (10,000 minute rows a second, far more than a real park writes).
//!    Reports drops, the writer thread's CPU share, and how long it took to drain after the feed.
//! 2. Core: the same load through the real core task (rules running, a threshold rule on every
//!    point), batch latency from hand-over to the core until the core hands it on, with history off
//!    and on: medians, p99 and their ratio.
//! 3. Query: one point over 30 days from a database with 50 points × 30 days of minute and hour
//!    rollups; median of 20 reads at step 1h (what `step=auto` picks) and at 1m.
//!
//! `cargo bench -p parkwatch-e2e --bench history`; `PARKWATCH_BENCH_SECS` (default 10) and
//! `PARKWATCH_BENCH_RATE` (default 50000) change the load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parkwatch::core::{self, packs, Core};
use parkwatch::history::{self, rollup, store, Res};
use parkwatch::metrics::Metrics;
use parkwatch::model::pool::SamplePool;
use parkwatch::model::time::{Clock, ManualClock, SystemClock};
use parkwatch::model::{Batch, PointId, Quality, Registry, Sample};

const DEVICES: usize = 1_000;
const POINTS: usize = 10;
const BATCH: usize = 500;
const S: i64 = 1_000_000_000;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(rules: &std::path::Path) -> parkwatch::config::Config {
    let mut text = format!(
        "[site]\nid = \"bench\"\n[[grids]]\nid = \"g1\"\n[rules]\nbuiltin = false\ndirs = [{:?}]\n",
        rules.display().to_string()
    );
    for d in 0..DEVICES {
        let points: Vec<String> = (0..POINTS).map(|p| format!("{{ name = \"p{p}\", unit = \"V\" }}")).collect();
        text.push_str(&format!(
            "[[devices]]\nid = \"d{d}\"\ngrid = \"g1\"\ncategory = \"electrical\"\npoints = [{}]\n",
            points.join(", ")
        ));
    }
    parkwatch::config::from_str(&text, "bench.toml".as_ref(), ".".as_ref()).expect("bench config")
}

/// CPU seconds (utime + stime) of this process's thread named `name`.
fn thread_cpu(name: &str) -> Option<f64> {
    for e in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = e.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            return Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / 100.0);
        }
    }
    None
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Batch `i` of the feed: `BATCH` samples of consecutive points, sample time `t0 + round · 12 s`.
fn batch(i: usize, t0: i64) -> Vec<Sample> {
    let n = DEVICES * POINTS;
    (0..BATCH)
        .map(|k| {
            let j = i * BATCH + k;
            let round = (j / n) as i64;
            Sample {
                point: PointId((j % n) as u32),
                quality: Quality::Good,
                ts: t0 + round * 12 * S,
                value: (j % 800) as f64,
            }
        })
        .collect()
}

fn writer(registry: &Registry, secs: f64, rate: f64) {
    let dir = tempfile::tempdir().unwrap();
    let settings =
        history::Settings { path: dir.path().join("history.db"), minute_days: 35, hour_days: 400, max_bytes: 8 << 30 };
    let t0 = (SystemClock::new().wall_ns() / (60 * S) - 24 * 60) * 60 * S;
    let clock = Arc::new(ManualClock::new(t0, 0));
    let (tap, reader, thread) = history::start(&settings, Arc::new(registry.clone()), clock.clone()).unwrap();
    let batches = (secs * rate / BATCH as f64) as usize;
    let every = Duration::from_secs_f64(BATCH as f64 / rate);
    let start = Instant::now();
    for i in 0..batches {
        let b = batch(i, t0);
        // The writer's clock follows sample time, so minutes close as they would live.
        clock.step_wall(b[0].ts - clock.wall_ns());
        tap.offer(&b);
        let due = start + every * (i as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let fed = start.elapsed().as_secs_f64();
    let m = reader.metrics.clone();
    let total = (batches * BATCH) as u64;
    let drain = Instant::now();
    while m.samples.load(std::sync::atomic::Ordering::Relaxed)
        + m.dropped_samples.load(std::sync::atomic::Ordering::Relaxed)
        < total
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let drained = drain.elapsed();
    let cpu = thread_cpu("history").unwrap_or(f64::NAN);
    drop(tap);
    thread.join().unwrap();
    let dropped = m.dropped_samples.load(std::sync::atomic::Ordering::Relaxed);
    let rows = m.rows_written.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "writer: {total} samples in {fed:.1} s ({:.0}/s) over {} points; dropped {dropped}; {rows} rows written in {} commits; \
         writer thread CPU {cpu:.2} s = {:.0} % of one core; drained {:.0} ms after the feed; {}",
        total as f64 / fed,
        DEVICES * POINTS,
        m.commits.load(std::sync::atomic::Ordering::Relaxed),
        100.0 * cpu / fed,
        drained.as_secs_f64() * 1e3,
        if dropped == 0 && cpu < fed { "keeps up on one core" } else { "DOES NOT KEEP UP" }
    );
}

/// Median and p99 latency (ms) of batches through the core, with or without the history tap.
fn through_core(
    config: &parkwatch::config::Config,
    registry: &Arc<Registry>,
    secs: f64,
    rate: f64,
    with_history: bool,
) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (engine, names, errors) = packs::build_lenient(config, registry.clone(), 1).expect("rules");
        assert!(errors.is_empty(), "{errors:?}");
        let metrics = Arc::new(Metrics::new(vec![], vec![], 10));
        let mut c =
            Core::new(registry.clone(), metrics, Arc::new(SamplePool::default()), 10).with_engine(engine, names);
        let mut kept = None;
        if with_history {
            let settings = history::Settings {
                path: dir.path().join("history.db"),
                minute_days: 35,
                hour_days: 400,
                max_bytes: 8 << 30,
            };
            let (tap, _reader, thread) = history::start(&settings, registry, Arc::new(SystemClock::new())).unwrap();
            c = c.with_tap(Box::new(move |s| tap.offer(s)));
            kept = Some(thread);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::channel::<Batch>(1024);
        let (_handle, task) = core::spawn(c, rx, None, Some(fwd_tx));
        let batches = (secs * rate / BATCH as f64) as usize;
        let every = Duration::from_secs_f64(BATCH as f64 / rate);
        let recv = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(b) = fwd_rx.recv().await {
                out.push(Instant::now());
                drop(b);
            }
            out
        });
        let t0 = SystemClock::new().wall_ns();
        let start = Instant::now();
        let mut at = Vec::with_capacity(batches);
        for i in 0..batches {
            let mut b = batch(i, t0);
            // Real time here: the rules see live samples.
            let now = t0 + start.elapsed().as_nanos() as i64;
            for s in &mut b {
                s.ts = now;
            }
            at.push(Instant::now());
            tx.send(Batch::new(b, vec![])).await.unwrap();
            let due = start + every * (i as u32 + 1);
            tokio::time::sleep_until(due.into()).await;
        }
        drop(tx);
        task.await.unwrap();
        let got = recv.await.unwrap();
        if let Some(t) = kept {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let mut lat: Vec<f64> = got.iter().zip(&at).map(|(r, s)| r.duration_since(*s).as_secs_f64() * 1e3).collect();
        (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99))
    })
}

fn query() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let mut conn = store::open(&path, 8 << 30).unwrap();
    let names: Vec<(String, String)> = (0..50).map(|p| ("d0".to_owned(), format!("p{p}"))).collect();
    let refs: Vec<(&str, &str)> = names.iter().map(|(d, p)| (d.as_str(), p.as_str())).collect();
    let series = store::series(&mut conn, &refs).unwrap();
    let end = (SystemClock::new().wall_ns() / 1_000_000 / 3_600_000) * 3_600_000;
    let start = end - 30 * 86_400_000;
    let filled = Instant::now();
    let mut rows = Vec::new();
    for t in (start..end).step_by(60_000) {
        for p in 0..50u32 {
            let mut a = rollup::Agg::empty(t);
            a.count = 60;
            a.held = 60.0;
            a.sum = 60.0 * 220.0;
            a.min = 219.0;
            a.max = 221.0;
            a.last = 220.0;
            rows.push(rollup::Row { point: p, res: Res::Minute, agg: a });
            if t % 3_600_000 == 0 {
                rows.push(rollup::Row {
                    point: p,
                    res: Res::Hour,
                    agg: rollup::Agg { t, count: 3_600, held: 3_600.0, sum: 3_600.0 * 220.0, ..a },
                });
            }
        }
        if rows.len() >= 50_000 {
            store::write(&mut conn, &series, &rows).unwrap();
            rows.clear();
        }
    }
    store::write(&mut conn, &series, &rows).unwrap();
    let bytes = store::disk_bytes(&conn, &path);
    println!(
        "query: filled 50 points × 30 days ({} minute rows) in {:.1} s, {:.0} MB",
        50 * 30 * 1_440,
        filled.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );
    for res in [Res::Hour, Res::Minute] {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..20 {
            let t = Instant::now();
            let reader = store::open_read(&path).unwrap();
            n = store::read(&reader, "d0", "p7", res, start, end).unwrap().len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let med = percentile(&mut times, 0.5);
        println!(
            "query: one point over 30 days at {}: {n} rows, median {med:.2} ms (open + read), max {:.2} ms; target <= 50 ms: {}",
            res.as_str(),
            times.last().copied().unwrap_or(f64::NAN),
            if med <= 50.0 { "ok" } else { "MISSED" }
        );
    }
}

fn main() {
    let secs = env_f64("PARKWATCH_BENCH_SECS", 10.0);
    let rate = env_f64("PARKWATCH_BENCH_RATE", 50_000.0);
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("high.rhai"),
        r#"rule(#{ id: "b.high", category: "electrical", severity: "major", watch: #{ points: ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"] },
                  condition: |ctx| ctx.value > 900.0 });"#,
    )
    .unwrap();
    let config = config(rules.path());
    let registry = Arc::new(Registry::from_config(&config));
    writer(&registry, secs, rate);
    // Alternate off and on, three runs each, so drift of the machine hits both alike.
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        off.push(through_core(&config, &registry, secs, rate, false));
        on.push(through_core(&config, &registry, secs, rate, true));
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        percentile(&mut x, 0.5)
    };
    let (off50, off99, on50, on99) = (med(&off, |x| x.0), med(&off, |x| x.1), med(&on, |x| x.0), med(&on, |x| x.1));
    println!(
        "core: batch latency hand-over to handed-on (rules evaluated), {rate:.0} samples/s, median of 3 runs each: \
         history off median {off50:.3} ms p99 {off99:.3} ms; on median {on50:.3} ms p99 {on99:.3} ms; ratio on/off p99 {:.2}, median {:.2}",
        on99 / off99,
        on50 / off50
    );
    println!("core runs (median, p99 ms): off {off:?}; on {on:?}");
    query();
}
