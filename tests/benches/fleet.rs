//! Fleet benchmark: many parks' gateways feeding one central side, on this machine.
//!
//! 20 gateways (release binary, a process each, site ids `park01`…`park20`), each with 10 meters in 2
//! grids subscribed at QoS 1 on its own topics `parkNN/{grid}/meter/{device}/telemetry`, one hysteresis
//! alarm rule (4 % of the messages change an incident, as in the whole-job benchmark), every reading
//! forwarded to one VictoriaMetrics through the InfluxDB v2 write API (gzip), every incident change
//! published to one central Mosquitto under `parkwatch/<site>/incidents/<grid>`. A load generator
//! publishes for all of them at a fixed rate; a central subscriber counts the incident changes per site.
//!
//! Reported: the central ingest rate (readings per second that reached the store, and stored / sent),
//! the incident fan-in (changes per second on the central broker, per site, against each gateway's own
//! database), the gateways' CPU (all together in cores, per gateway in % of one core, messages per
//! CPU-second) and memory (peak RSS, largest and sum), and the broker's drops. The table goes to
//! `benches/results/fleet-<date>.md`.
//!
//! `cargo bench -p parkwatch-e2e --bench fleet`. `PARKWATCH_BENCH_GATEWAYS` (default 20),
//! `PARKWATCH_BENCH_RATE` (messages per second per gateway, default 100) and `PARKWATCH_BENCH_SECS`
//! (default 60) change the load.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parkwatch_e2e::bench::{
    connect, count_pubacks, env_or, incident_changes, machine, meter_reading, peak_rss_mb, proc_cpu_secs,
    publish_frame, read_publishes, stored_readings, subscribe, today, MeterPark, RESIDUAL_RULE,
};
use parkwatch_e2e::{root, wait_until, Gateway, Mosquitto, Victoria};

const DEVICES: usize = 10;
const GRIDS: usize = 2;
const POINTS: u64 = 4;
/// A meter's residual current rises above the limit and falls back once in this many of its messages.
const CYCLE: usize = 50;

fn site(g: usize) -> String {
    format!("park{:02}", g + 1)
}

fn topic(g: usize, d: usize) -> String {
    format!("{}/g{}/meter/m{d:02}/telemetry", site(g), d % GRIDS + 1)
}

fn config(g: usize, port: u16, store: &str, rules: &Path) -> String {
    let site = site(g);
    MeterPark {
        site: &site,
        client_id: &format!("parkwatch-{site}"),
        prefix: &site,
        qos: 1,
        port,
        store,
        rules,
        builtin: false,
        grids: GRIDS,
        devices: (0..DEVICES).map(|d| format!("m{d:02}")).collect(),
    }
    .config()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Publishes `messages` at `rate` per second, round-robin over the gateways and their meters, QoS 1;
/// returns once the broker acknowledged them all (or a minute passed).
fn generate(port: u16, gateways: usize, messages: usize, rate: f64, acked: &AtomicU64) {
    let mut s = connect(port, "fleet-load");
    let mut reader = s.try_clone().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| count_pubacks(&mut reader, acked, &stop));
        let start = Instant::now();
        let chunk = ((rate / 1000.0) as usize).max(1);
        let (mut out, mut payload) = (Vec::with_capacity(chunk * 200), String::with_capacity(160));
        let mut last_ts = vec![0i64; gateways * DEVICES];
        let mut i = 0;
        while i < messages {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            out.clear();
            let now = now_ns();
            let end = (i + chunk).min(messages);
            for m in i..end {
                let (g, d) = (m % gateways, (m / gateways) % DEVICES);
                let k = m / (gateways * DEVICES) + d * 7;
                let residual = if k % CYCLE < CYCLE / 2 { 310.0 } else { 200.0 };
                // One reading per meter per millisecond at most: the store keeps milliseconds.
                let slot = &mut last_ts[g * DEVICES + d];
                let ts = now.max(*slot + 1_000_000);
                *slot = ts;
                meter_reading(&mut payload, ts, residual, m as u64);
                publish_frame(&mut out, &topic(g, d), payload.as_bytes(), 1, (m % 65_535 + 1) as u16);
            }
            s.write_all(&out).unwrap();
            i = end;
        }
        let t = Instant::now();
        while acked.load(Ordering::Relaxed) < messages as u64 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let _ = s.write_all(&[0xE0, 0]);
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn main() {
    let gateways: usize = env_or("PARKWATCH_BENCH_GATEWAYS", 20);
    let per_gateway: f64 = env_or("PARKWATCH_BENCH_RATE", 100.0);
    let secs: f64 = env_or("PARKWATCH_BENCH_SECS", 60.0);
    let rate = per_gateway * gateways as f64;
    let messages = (rate * secs) as usize;
    println!("fleet: {gateways} gateways, {per_gateway} msg/s each ({rate} msg/s), {messages} messages, QoS 1 ...");
    let _ = std::io::stdout().flush();

    let broker = Mosquitto::start("sys_interval 1\nmax_inflight_messages 1000");
    let store = Victoria::start();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("bench.rhai"), RESIDUAL_RULE).unwrap();
    // Built (if it must be) before the clock starts: the start-up time is the gateways' own.
    let _ = parkwatch_e2e::gateway_bin();
    let started = Instant::now();
    let fleet: Vec<Gateway> =
        (0..gateways).map(|g| Gateway::start(&config(g, broker.port, &store.url(), rules.path()))).collect();
    println!("fleet: {gateways} gateways up in {:.1} s", started.elapsed().as_secs_f64());
    let samples = |gw: &Gateway| gw.metric("parkwatch_core_samples_total").unwrap_or_default() as u64;
    // Every subscription is in place once a reading goes through (an hour old: it changes nothing).
    {
        let mut s = connect(broker.port, "fleet-warm");
        wait_until(Duration::from_secs(60), "every gateway's subscription", || {
            let mut f = Vec::new();
            let ts = now_ns() - 3_600_000_000_000;
            for g in 0..gateways {
                let body = format!("{{\"ts_ns\":{ts},\"residual_ma\":100.0}}");
                publish_frame(&mut f, &topic(g, 0), body.as_bytes(), 0, 0);
            }
            s.write_all(&f).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            fleet.iter().all(|gw| samples(gw) > 0).then_some(())
        });
    }
    let warm_stored = wait_until(Duration::from_secs(60), "the warm-up readings in the store", || {
        let n = stored_readings(&store);
        (n >= gateways as u64).then_some(n)
    });
    // What the fleet costs doing nothing: every gateway's timers, health evaluation and sweeps.
    let pids: Vec<u32> = fleet.iter().map(Gateway::pid).collect();
    let idle_secs = 10.0;
    let idle0: f64 = pids.iter().map(|p| proc_cpu_secs(*p)).sum();
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_cpu = pids.iter().map(|p| proc_cpu_secs(*p)).sum::<f64>() - idle0;
    let base: Vec<u64> = fleet.iter().map(samples).collect();
    let changes0: Vec<u64> = fleet.iter().map(incident_changes).collect();

    let per_site: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let drops = AtomicU64::new(0);
    let stop_watch = AtomicBool::new(false);
    let mut watch = connect(broker.port, "fleet-central-watch");
    subscribe(&mut watch, &["parkwatch/+/incidents/#", "$SYS/broker/publish/messages/dropped"], 1);

    let cpu0: Vec<f64> = pids.iter().map(|p| proc_cpu_secs(*p)).collect();
    let acked = AtomicU64::new(0);
    let start = Instant::now();
    let want: u64 = base.iter().sum::<u64>() + messages as u64 * POINTS;
    let processed_at = std::thread::scope(|scope| {
        scope.spawn(|| {
            read_publishes(&mut watch, &stop_watch, |m| {
                if m.topic.starts_with("$SYS/") {
                    let n = std::str::from_utf8(m.payload).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
                    drops.store(n, Ordering::Relaxed);
                } else if let Some(site) = m.topic.split('/').nth(1) {
                    *per_site.lock().unwrap().entry(site.to_owned()).or_default() += 1;
                }
            });
        });
        let generator = scope.spawn(|| generate(broker.port, gateways, messages, rate, &acked));
        // Processed: every sample applied in every gateway, or no progress for 15 s once the
        // generator is done.
        let mut last = (0, Instant::now());
        let processed_at = loop {
            std::thread::sleep(Duration::from_millis(500));
            let n: u64 = fleet.iter().map(samples).sum();
            if n >= want {
                break start.elapsed();
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if generator.is_finished() && last.1.elapsed() > Duration::from_secs(15) {
                break last.1.duration_since(start);
            }
        };
        // Everything in the store and every change on the central broker (or no progress for 20 s).
        let sent: u64 = fleet.iter().zip(&base).map(|(gw, b)| samples(gw) - b).sum::<u64>() + warm_stored;
        let changes: u64 = fleet.iter().zip(&changes0).map(|(gw, c)| incident_changes(gw) - c).sum();
        let mut last = (0, Instant::now());
        loop {
            let (n, fanned) = (stored_readings(&store), per_site.lock().unwrap().values().sum::<u64>());
            if (n >= sent && fanned >= changes) || last.1.elapsed() > Duration::from_secs(20) {
                break;
            }
            if n + fanned != last.0 {
                last = (n + fanned, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        std::thread::sleep(Duration::from_millis(1500));
        stop_watch.store(true, Ordering::Relaxed);
        processed_at
    });
    let wall = start.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids.iter().zip(&cpu0).map(|(p, c)| proc_cpu_secs(*p) - c).collect();
    let rss: Vec<f64> = pids.iter().map(|p| peak_rss_mb(*p)).collect();
    let processed: u64 = fleet.iter().zip(&base).map(|(gw, b)| samples(gw) - b).sum::<u64>() / POINTS;
    let changes: Vec<u64> = fleet.iter().zip(&changes0).map(|(gw, c)| incident_changes(gw) - c).collect();
    let readings = stored_readings(&store).saturating_sub(warm_stored);
    let per_site = per_site.into_inner().unwrap();
    let fanned: u64 = per_site.values().sum();
    let secs_done = processed_at.as_secs_f64();
    let cpu_total: f64 = cpu.iter().sum();
    let sites_complete = (0..gateways).all(|g| per_site.get(&site(g)).copied().unwrap_or(0) >= changes[g]);
    let site_rates: Vec<f64> =
        (0..gateways).map(|g| per_site.get(&site(g)).copied().unwrap_or(0) as f64 / secs_done).collect();
    let (min_site, max_site) = site_rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let drops = drops.load(Ordering::Relaxed);

    let mut report = String::new();
    let _ = writeln!(report, "| quantity | value |");
    let _ = writeln!(report, "|---|---|");
    let _ = writeln!(report, "| gateways | {gateways} (10 meters, 2 grids, QoS 1 each) |");
    let _ = writeln!(report, "| offered | {rate:.0} msg/s ({per_gateway:.0} per gateway), {messages} messages |");
    let _ = writeln!(
        report,
        "| processed | {processed} messages in {secs_done:.1} s = {:.0} msg/s |",
        processed as f64 / secs_done
    );
    let _ = writeln!(
        report,
        "| central ingest (VictoriaMetrics) | {readings} / {} readings stored, {:.0} readings/s |",
        messages as u64 * POINTS,
        readings as f64 / secs_done
    );
    let _ = writeln!(
        report,
        "| incident fan-in (central MQTT) | {fanned} changes from {} sites ({} in the gateways' databases), {:.1} changes/s; per site {min_site:.2}–{max_site:.2}/s |",
        per_site.len(),
        changes.iter().sum::<u64>(),
        fanned as f64 / secs_done
    );
    let _ = writeln!(
        report,
        "| gateways' CPU | {cpu_total:.1} CPU-s = {:.2} cores; per gateway {:.1} % of one core; {:.0} msg per CPU-s |",
        cpu_total / wall,
        cpu_total / wall / gateways as f64 * 100.0,
        processed as f64 / cpu_total
    );
    let _ = writeln!(
        report,
        "| gateways' CPU when idle | {:.2} % of one core per gateway |",
        idle_cpu / idle_secs / gateways as f64 * 100.0
    );
    let _ = writeln!(
        report,
        "| gateways' memory | peak RSS largest {:.1} MB, all together {:.0} MB |",
        rss.iter().copied().fold(0.0, f64::max),
        rss.iter().sum::<f64>()
    );
    let _ = writeln!(report, "| broker drops | {drops} |");

    let mut checks = String::new();
    for (what, ok) in [
        ("every message processed", processed >= messages as u64),
        ("every reading in VictoriaMetrics", readings >= messages as u64 * POINTS),
        ("every incident change on the central broker, per site", sites_complete),
        ("no broker drops", drops == 0),
    ] {
        let _ = writeln!(checks, "- {what}: {}", verdict(ok));
    }
    println!("\n{report}\n{checks}");

    let dir = root().join("benches/results");
    let _ = std::fs::create_dir_all(&dir);
    let default_set = ["PARKWATCH_BENCH_GATEWAYS", "PARKWATCH_BENCH_RATE", "PARKWATCH_BENCH_SECS"]
        .iter()
        .all(|v| std::env::var_os(v).is_none());
    let name = if default_set {
        format!("fleet-{}.md", today())
    } else {
        format!("fleet-{}-{gateways}x{per_gateway:.0}-{secs:.0}s.md", today())
    };
    let text = format!(
        "# Fleet benchmark, {}\n\n`cargo bench -p parkwatch-e2e --bench fleet`\n\n{}\n{report}\n## Checks\n\n{checks}",
        today(),
        machine(&root())
    );
    match std::fs::write(dir.join(&name), text) {
        Ok(()) => println!("written to benches/results/{name}"),
        Err(e) => println!("cannot write benches/results/{name}: {e}"),
    }
}
