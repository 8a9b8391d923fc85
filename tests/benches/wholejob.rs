//! Whole-job benchmark: the work a park gives the gateway, measured from outside the process.
//!
//! An external Mosquitto on loopback; a load generator publishing JSON telemetry
//! `{"ts_ns":…,"residual_ma":…,"temp_c":…,"voltage_v":…,"current_a":…}` for 200 meters in 20 grids on
//! `park/{grid}/meter/{device}/telemetry`; each meter's residual current rises above 300 mA and falls
//! below 250 mA once every 50 of its messages (meters staggered through that cycle) (one alarm rule with hysteresis: 4 % of the messages
//! change an incident). The gateway (the release binary, a process of its own) subscribes at QoS 1 or 0,
//! forwards every reading to a real VictoriaMetrics through the InfluxDB v2 write API (gzip), persists
//! every incident change and publishes it on MQTT. In the same run a subscriber that does nothing but
//! count receives the same telemetry from the same broker: the ceiling.
//!
//! Per run: messages processed per second, messages per CPU-second of the gateway (user + system, from
//! the first publish until every reading is in the store), CPU per incident change (from runs with 0 %
//! and 4 % changing messages), peak RSS, the sample→announcement latency measured by the generator from
//! its own publish instant to the change arriving on MQTT, readings stored / sent (counted in
//! VictoriaMetrics) and the broker's drops (`$SYS`). Each target prints measured / target / PASS|FAIL,
//! and the table is written to `benches/results/wholejob-<date>.md` with the machine and versions.
//!
//! `cargo bench -p parkwatch-e2e --bench wholejob`. `PARKWATCH_BENCH_RUNS` picks runs by name
//! (comma-separated; default all but `q1-max-2m`), `PARKWATCH_BENCH_MESSAGES` overrides 200,000,
//! `PARKWATCH_BENCH_BUILTIN=1` loads the built-in rule packs too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parkwatch_e2e::bench::{
    connect, count_pubacks, env_or, incident_changes, machine, median, meter_reading, peak_rss_mb, percentile,
    proc_cpu_secs, publish_frame, read_publishes, stored_readings, subscribe, today, MeterPark, RESIDUAL_RULE,
};
use parkwatch_e2e::{root, wait_until, Gateway, Mosquitto, Victoria};

const DEVICES: usize = 200;
const GRIDS: usize = 20;
const POINTS: usize = 4;
/// Episodes remembered per device for the latency look-up (encoded in the reading's value).
const SLOTS: usize = 1000;
const RISE: f64 = 310.0;
const FALL: f64 = 200.0;
const QUIET: f64 = 120.0;

/// One run of the workload.
#[derive(Clone)]
struct Spec {
    name: &'static str,
    qos: u8,
    /// Messages per second; 0: as fast as the generator goes.
    rate: u64,
    messages: usize,
    /// A device's residual current rises at the first of every `change_every` of its messages and
    /// falls half way; 0: it never does.
    change_every: usize,
}

fn specs() -> Vec<Spec> {
    let n: usize = env_or("PARKWATCH_BENCH_MESSAGES", 200_000);
    let long: usize = env_or("PARKWATCH_BENCH_LONG_MESSAGES", 2_000_000);
    let all = vec![
        Spec { name: "q1-10k", qos: 1, rate: 10_000, messages: n, change_every: 50 },
        Spec { name: "q1-10k-calm", qos: 1, rate: 10_000, messages: n, change_every: 0 },
        Spec { name: "q1-10k-storm", qos: 1, rate: 10_000, messages: n, change_every: 20 },
        Spec { name: "q0-10k", qos: 0, rate: 10_000, messages: n, change_every: 50 },
        Spec { name: "q1-max", qos: 1, rate: 0, messages: n, change_every: 50 },
        Spec { name: "q0-max", qos: 0, rate: 0, messages: n, change_every: 50 },
        Spec { name: "q1-max-2m", qos: 1, rate: 0, messages: long, change_every: 50 },
    ];
    match std::env::var("PARKWATCH_BENCH_RUNS") {
        Ok(list) => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            all.into_iter().filter(|s| wanted.contains(&s.name)).collect()
        }
        Err(_) => all.into_iter().filter(|s| s.name != "q1-max-2m").collect(),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn topic(d: usize) -> String {
    format!("park/g{}/meter/m{d:03}/telemetry", d % GRIDS + 1)
}

fn config(spec: &Spec, port: u16, store: &str, rules: &Path) -> String {
    MeterPark {
        site: "bench",
        client_id: "parkwatch-bench",
        prefix: "park",
        qos: spec.qos,
        port,
        store,
        rules,
        builtin: std::env::var("PARKWATCH_BENCH_BUILTIN").is_ok_and(|v| v == "1"),
        grids: GRIDS,
        devices: (0..DEVICES).map(|d| format!("m{d:03}")).collect(),
    }
    .config()
}

/// Publish instants (wall ns) of the messages that change an incident: [device][slot][rise, fall].
struct Transitions(Vec<AtomicI64>);

impl Transitions {
    fn new() -> Self {
        Self((0..DEVICES * SLOTS * 2).map(|_| AtomicI64::new(0)).collect())
    }
    fn at(&self, device: usize, slot: usize, fall: bool) -> &AtomicI64 {
        &self.0[(device * SLOTS + slot % SLOTS) * 2 + usize::from(fall)]
    }
}

/// The residual current of device `d`'s message `k`, and whether it is a rise (false) or fall (true)
/// transition with its slot. Devices are staggered through the cycle, so changes are spread evenly
/// over the run instead of every device rising at once at its start.
fn residual(spec: &Spec, d: usize, k: usize) -> (f64, Option<(usize, bool)>) {
    if spec.change_every == 0 {
        return (QUIET, None);
    }
    let k = k + d % spec.change_every;
    let (cycle, phase) = (k / spec.change_every, k % spec.change_every);
    let slot = cycle % SLOTS;
    let half = spec.change_every / 2;
    let v = if phase < half { RISE } else { FALL } + slot as f64 * 0.01;
    let edge = match phase {
        0 => Some((slot, false)),
        p if p == half => Some((slot, true)),
        _ => None,
    };
    (v, edge)
}

/// Publishes the run's messages at its rate; returns when the last one is written.
fn generate(spec: &Spec, port: u16, transitions: &Transitions, acked: &AtomicU64, stop: &AtomicBool) {
    let mut s = connect(port, "bench-load");
    let mut reader = s.try_clone().unwrap();
    std::thread::scope(|scope| {
        if spec.qos == 1 {
            scope.spawn(move || count_pubacks(&mut reader, acked, stop));
        }
        let start = Instant::now();
        let chunk = if spec.rate == 0 { 100 } else { (spec.rate / 1000).max(1) as usize };
        let mut out = Vec::with_capacity(chunk * 200);
        let mut last_ts = vec![0i64; DEVICES];
        let mut payload = String::with_capacity(160);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut i = 0;
        while i < spec.messages {
            if spec.rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / spec.rate as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            out.clear();
            let now = now_ns();
            let end = (i + chunk).min(spec.messages);
            for m in i..end {
                let d = m % DEVICES;
                let (r, edge) = residual(spec, d, m / DEVICES);
                // One reading per device per millisecond at most: the store keeps milliseconds.
                let ts = now.max(last_ts[d] + 1_000_000);
                last_ts[d] = ts;
                if let Some((slot, fall)) = edge {
                    transitions.at(d, slot, fall).store(now, Ordering::Relaxed);
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                meter_reading(&mut payload, ts, r, rng);
                publish_frame(&mut out, &topic(d), payload.as_bytes(), spec.qos, (m % 65_535 + 1) as u16);
            }
            s.write_all(&out).unwrap();
            i = end;
        }
        if spec.qos == 1 {
            let _ = wait_until_quiet(Duration::from_secs(60), || acked.load(Ordering::Relaxed) >= spec.messages as u64);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let _ = s.write_all(&[0xE0, 0]);
}

fn wait_until_quiet(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// What the announcements subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<f64>,
    changes: u64,
    unmatched: u64,
    dropped: u64,
}

/// Reads incident changes from MQTT and takes each one's latency from its message's publish instant.
fn announcements(mut s: TcpStream, transitions: &Transitions, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    read_publishes(&mut s, stop, |p| {
        if p.topic == "$SYS/broker/publish/messages/dropped" {
            seen.dropped = std::str::from_utf8(p.payload).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
            return;
        }
        let now = now_ns();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(p.payload) else { return };
        let fall = match v["change"].as_str() {
            Some("raised" | "reactivated") => false,
            Some("returned") => true,
            _ => return,
        };
        seen.changes += 1;
        let device = v["device"].as_str().and_then(|d| d.strip_prefix('m')).and_then(|d| d.parse::<usize>().ok());
        let (Some(device), Some(value)) = (device, v["value"].as_f64()) else {
            seen.unmatched += 1;
            return;
        };
        let slot = ((value - if fall { FALL } else { RISE }) * 100.0).round();
        if device >= DEVICES || !(0.0..SLOTS as f64).contains(&slot) {
            seen.unmatched += 1;
            return;
        }
        let sent = transitions.at(device, slot as usize, fall).load(Ordering::Relaxed);
        if sent == 0 || sent > now {
            seen.unmatched += 1;
            return;
        }
        seen.latencies_ms.push((now - sent) as f64 / 1e6);
    });
    seen
}

struct Outcome {
    spec: Spec,
    processed: u64,
    ceiling: u64,
    secs: f64,
    cpu: f64,
    rss_mb: f64,
    changes: u64,
    seen: Seen,
    stored: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.processed as f64 / self.secs
    }
    fn per_cpu(&self) -> f64 {
        self.processed as f64 / self.cpu
    }
    fn p(&self, q: f64) -> f64 {
        percentile(&self.seen.latencies_ms, q)
    }
}

fn run(spec: &Spec) -> Outcome {
    let broker = Mosquitto::start("sys_interval 1");
    let store = Victoria::start();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("bench.rhai"), RESIDUAL_RULE).unwrap();
    let gw = Gateway::start(&config(spec, broker.port, &store.url(), rules.path()));
    let samples = || gw.metric("parkwatch_core_samples_total").unwrap_or_default() as u64;
    // The subscription is in place once a reading goes through (an hour old: it changes nothing).
    wait_until(Duration::from_secs(30), "the gateway's subscription", || {
        let mut s = connect(broker.port, "bench-warm");
        let mut f = Vec::new();
        let ts = now_ns() - 3_600_000_000_000;
        let body = format!("{{\"ts_ns\":{ts},\"residual_ma\":{QUIET}}}");
        publish_frame(&mut f, &topic(0), body.as_bytes(), 0, 0);
        s.write_all(&f).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (samples() > 0).then_some(())
    });
    let warm_stored = wait_until(Duration::from_secs(30), "the warm-up reading in the store", || {
        let n = stored_readings(&store);
        (n > 0).then_some(n)
    });
    let base = samples();
    let changes0 = incident_changes(&gw);

    let transitions = Transitions::new();
    let (stop_gen, stop_watch) = (AtomicBool::new(false), AtomicBool::new(false));
    let (acked, ceiling) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut watch = connect(broker.port, "bench-watch");
    subscribe(&mut watch, &["parkwatch/bench/incidents/#", "$SYS/broker/publish/messages/dropped"], 1);
    let mut counter = connect(broker.port, "bench-ceiling");
    subscribe(&mut counter, &["park/+/meter/+/telemetry"], spec.qos);

    let pid = gw.pid();
    let cpu0 = proc_cpu_secs(pid);
    let start = Instant::now();
    let want = base + (spec.messages * POINTS) as u64;
    let (seen, processed_at) = std::thread::scope(|scope| {
        let seen = scope.spawn(|| announcements(watch, &transitions, &stop_watch));
        scope.spawn(|| {
            read_publishes(&mut counter, &stop_watch, |_| {
                ceiling.fetch_add(1, Ordering::Relaxed);
            })
        });
        scope.spawn(|| generate(spec, broker.port, &transitions, &acked, &stop_gen));
        // Processed: every sample applied, or no progress for 10 s once the generator is done. A
        // scrape of /metrics costs the gateway milliseconds (grid KPIs): 4 a second, the moment of
        // completion taken half way between the last two.
        let mut last = (samples(), Instant::now());
        let mut polled = start;
        let processed_at = loop {
            std::thread::sleep(Duration::from_millis(250));
            let n = samples();
            let now = Instant::now();
            if n >= want {
                break (polled + (now - polled) / 2).duration_since(start);
            }
            polled = now;
            if n != last.0 {
                last = (n, Instant::now());
            } else if stop_gen.load(Ordering::Relaxed) && last.1.elapsed() > Duration::from_secs(10) {
                break last.1.duration_since(start);
            }
        };
        // Everything in the store (or no progress for 15 s) before the CPU is read.
        let sent = samples() - base + warm_stored;
        let mut last = (stored_readings(&store), Instant::now());
        while last.0 < sent && last.1.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(250));
            let n = stored_readings(&store);
            if n != last.0 {
                last = (n, Instant::now());
            }
        }
        // Late announcements and the broker's last $SYS report.
        std::thread::sleep(Duration::from_millis(1500));
        stop_watch.store(true, Ordering::Relaxed);
        (seen.join().unwrap(), processed_at)
    });
    let cpu = proc_cpu_secs(pid) - cpu0;
    let processed = (samples() - base) / POINTS as u64;
    Outcome {
        spec: spec.clone(),
        processed,
        ceiling: ceiling.load(Ordering::Relaxed),
        secs: processed_at.as_secs_f64(),
        cpu,
        rss_mb: peak_rss_mb(pid),
        changes: incident_changes(&gw).saturating_sub(changes0),
        seen,
        stored: stored_readings(&store).saturating_sub(warm_stored),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn main() {
    let specs = specs();
    let mut report = String::new();
    let _ = writeln!(report, "| run | QoS | rate | sent | processed | ceiling | msg/s | msg per CPU-s | changes | p50 ms | p99 ms | max ms | peak RSS MB | stored/sent | broker drops |");
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut outcomes = Vec::new();
    for spec in &specs {
        println!(
            "wholejob {}: QoS {}, {} messages at {} ...",
            spec.name,
            spec.qos,
            spec.messages,
            if spec.rate == 0 { "max".into() } else { format!("{} msg/s", spec.rate) }
        );
        let _ = std::io::stdout().flush();
        let o = run(spec);
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {}/{} | {} |",
            spec.name,
            spec.qos,
            if spec.rate == 0 { "max".to_owned() } else { spec.rate.to_string() },
            spec.messages,
            o.processed,
            o.ceiling,
            o.rate(),
            o.per_cpu(),
            o.changes,
            o.p(50.0),
            o.p(99.0),
            o.seen.latencies_ms.iter().copied().fold(0.0, f64::max),
            o.rss_mb,
            o.stored,
            spec.messages * POINTS,
            o.seen.dropped
        );
        println!("{line}");
        if o.seen.unmatched > 0 {
            println!("  ({} announcements not matched to a publish)", o.seen.unmatched);
        }
        report.push_str(&line);
        report.push('\n');
        outcomes.push(o);
    }

    let mut targets = String::new();
    let mut check = |what: String, measured: String, target: &str, ok: bool| {
        let line = format!("- {what}: {measured} / target {target} / {}", verdict(ok));
        println!("{line}");
        targets.push_str(&line);
        targets.push('\n');
    };
    let by = |name: &str| outcomes.iter().find(|o| o.spec.name == name);
    if let Some(o) = by("q1-10k") {
        check("q1-10k messages per CPU-s".into(), format!("{:.0}", o.per_cpu()), ">= 50000", o.per_cpu() >= 50_000.0);
        check("q1-10k p99 sample→announcement".into(), format!("{:.2} ms", o.p(99.0)), "<= 10 ms", o.p(99.0) <= 10.0);
    }
    if let Some(o) = by("q0-10k") {
        check("q0-10k messages per CPU-s".into(), format!("{:.0}", o.per_cpu()), ">= 80000", o.per_cpu() >= 80_000.0);
        check("q0-10k p99 sample→announcement".into(), format!("{:.2} ms", o.p(99.0)), "<= 5 ms", o.p(99.0) <= 5.0);
    }
    if let (Some(busy), Some(calm)) = (by("q1-10k"), by("q1-10k-calm")) {
        let extra = busy.changes.saturating_sub(calm.changes).max(1);
        let us = (busy.cpu - calm.cpu) * 1e6 / extra as f64;
        check("CPU per incident change (q1-10k − calm)".into(), format!("{us:.1} µs"), "<= 50 µs", us <= 50.0);
    }
    if let (Some(storm), Some(calm)) = (by("q1-10k-storm"), by("q1-10k-calm")) {
        let r = storm.cpu / calm.cpu;
        check("CPU at 10 % changes / at 0 %".into(), format!("{r:.2}×"), "<= 2×", r <= 2.0);
    }
    for (name, share) in [("q1-max", 0.9), ("q0-max", 0.5), ("q1-max-2m", 0.9)] {
        if let Some(o) = by(name) {
            let r = o.processed as f64 / o.ceiling.max(1) as f64;
            check(
                format!("{name} processed / do-nothing subscriber"),
                format!("{:.1} %", r * 100.0),
                &format!(">= {:.0} %", share * 100.0),
                r >= share,
            );
            check(format!("{name} broker drops"), o.seen.dropped.to_string(), "0", o.seen.dropped == 0);
            let sent = (o.spec.messages * POINTS) as u64;
            check(format!("{name} readings stored"), format!("{}/{sent}", o.stored), "all", o.stored >= sent);
        }
    }
    if let (Some(long), Some(short)) = (by("q1-max-2m"), by("q1-max")) {
        let r = long.per_cpu() / short.per_cpu();
        check("2M run msg per CPU-s / 200k run".into(), format!("{r:.2}"), "within 10 %", (0.9..=1.1).contains(&r));
        let m = long.rss_mb / short.rss_mb;
        check("2M run peak RSS / 200k run".into(), format!("{m:.2}"), "within 10 %", m <= 1.1);
    }
    let rss = outcomes.iter().map(|o| o.rss_mb).fold(0.0, f64::max);
    check("peak RSS, every run".into(), format!("{rss:.1} MB"), "<= 40 MB", rss <= 40.0);
    let medians: Vec<f64> = outcomes.iter().map(Outcome::per_cpu).collect();
    println!("median msg per CPU-s over the runs: {:.0}", median(&medians));

    let date = today();
    let dir = root().join("benches/results");
    let _ = std::fs::create_dir_all(&dir);
    // The full default set is the day's record; a chosen subset or size gets a file of its own.
    let default_set =
        std::env::var_os("PARKWATCH_BENCH_RUNS").is_none() && std::env::var_os("PARKWATCH_BENCH_MESSAGES").is_none();
    let name = if default_set {
        format!("wholejob-{date}.md")
    } else {
        let runs: Vec<&str> = specs.iter().map(|s| s.name).collect();
        format!("wholejob-{date}-{}-{}.md", runs.join("+"), specs.first().map_or(0, |s| s.messages))
    };
    let path = dir.join(name);
    let text = format!(
        "# Whole-job benchmark, {date}\n\n`cargo bench -p parkwatch-e2e --bench wholejob` (runs: {}).\n\n{}\n{report}\n## Targets\n\n{targets}",
        specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        machine(&root())
    );
    match std::fs::write(&path, text) {
        Ok(()) => println!("results: {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
}
