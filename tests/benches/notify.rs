//! Notification latency: incidents applied to the incident store at 100 per second, each in a grid of
//! its own (1,000 grids, so each is the first message of its group), routed with `group_wait = 0s` to a webhook receiver on
//! loopback. For every incident, the time from handing it to the store (so the commit and its fsync
//! are included) to the first HTTP request that names it; target p99 <= 50 ms. Also the routing
//! cost per incident: the route match alone over 50 routes, and the planner's whole intake (route
//! match, pending and tracking rows, escalation schedule, in one transaction per batch).
//!
//! `cargo bench -p parkwatch-e2e --bench notify`; `PARKWATCH_BENCH_INCIDENTS` (default 1,000) sets
//! how many incidents the latency run raises.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parkwatch::incident::changes::ChangeRow;
use parkwatch::model::incident::{Change, NewIncident, Severity, State};
use parkwatch::model::Registry;
use parkwatch::notify::people::StaticDirectory;
use parkwatch::notify::{Notifier, Planner};
use tokio_util::sync::CancellationToken;

const RATE: u64 = 100;
const GRIDS: usize = 1_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A site of `GRIDS` grids with one meter each, and a receiver at `port`.
fn config(port: u16, routes: &str) -> String {
    let mut c = String::from("[site]\nid = \"bench\"\n");
    for g in 0..GRIDS {
        c.push_str(&format!(
            "[[grids]]\nid = \"g{g}\"\n[[devices]]\nid = \"m{g}\"\ngrid = \"g{g}\"\ncategory = \"electrical\"\npoints = [{{ name = \"ir\", unit = \"mA\" }}]\n"
        ));
    }
    c.push_str(&format!(
        "[notify]\nbase_url = \"http://park.lan\"\n[[notify.receivers]]\nid = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nrate_per_minute = 100000\n{routes}"
    ));
    c
}

/// A webhook receiver: the arrival time of the first request naming each incident id.
fn receiver() -> (u16, Arc<Mutex<HashMap<i64, Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let s = s.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                // The request line is the first sign of the request: stamp it before reading the rest.
                let at = Instant::now();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut seen = s.lock().unwrap();
                for id in v["incident_ids"].as_array().unwrap() {
                    seen.entry(id.as_i64().unwrap()).or_insert(at);
                }
                drop(seen);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            });
        }
    });
    (port, seen)
}

fn raised(id: i64, at: i64) -> Change {
    let g = (id as usize) % GRIDS;
    Change::Open(NewIncident {
        id,
        at,
        rule: "electrical.residual_current".into(),
        title: "剩余电流超限".into(),
        category: "electrical".into(),
        severity: Severity::Critical,
        state: State::ActiveUnacked,
        device: format!("m{g}"),
        grid: format!("g{g}"),
        point: "ir".into(),
        value: 350.0,
        message: "剩余电流 350 mA 超过限值 300 mA".into(),
        plan: String::new(),
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn latency(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = receiver();
    let routes = "[[notify.routes]]\nreceivers = [\"hook\"]\ngroup_wait = \"0s\"\n";
    let config = parkwatch::config::from_str(&config(port, routes), "bench.toml".as_ref(), dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let path = dir.path().join("incidents.db");
    let (conn, _, _) = parkwatch::incident::open(&path).unwrap();
    let (store, _thread) = rt.block_on(async { parkwatch::incident::spawn(conn) }).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let planner = Planner::new(&config, registry, Arc::new(StaticDirectory::default()));
    let clock: Arc<dyn parkwatch::model::time::Clock> = Arc::new(parkwatch::model::time::SystemClock::new());
    let log = parkwatch::incident::changes::ChangeLog::open(&path).unwrap();
    let notifier = Notifier::open(planner, &dir.path().join("notify.db"), log, clock).unwrap();
    let stop = CancellationToken::new();
    let committed = store.committed();
    let s = stop.clone();
    let thread = std::thread::spawn(move || notifier.run(s, Some(committed)));

    let mut sent: Vec<(i64, Instant)> = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / RATE);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let id = i as i64 + 1;
        let at = parkwatch::model::time::now_ns();
        let t = Instant::now();
        rt.block_on(store.apply(vec![raised(id, at)], None)).unwrap();
        sent.push((id, t));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < n as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.cancel();
    thread.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut ms: Vec<f64> =
        sent.iter().filter_map(|(id, t)| seen.get(id).map(|a| a.duration_since(*t).as_secs_f64() * 1e3)).collect();
    ms.sort_by(f64::total_cmp);
    let missing = n as usize - ms.len();
    println!(
        "latency: {n} incidents at {RATE}/s in {GRIDS} grids, group_wait 0s: applied -> first request median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {missing} never arrived",
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
    );
    let p99 = percentile(&ms, 0.99);
    println!(
        "verdict: p99 {:.1} ms {} 50 ms -> {}",
        p99,
        if p99 <= 50.0 { "<=" } else { ">" },
        if p99 <= 50.0 && missing == 0 { "PASS" } else { "FAIL" }
    );
}

/// 50 routes: per grid, per category, by severity and rule; the incident matches the last ones.
fn routing_cost() {
    let dir = tempfile::tempdir().unwrap();
    let mut routes = String::new();
    for r in 0..48 {
        routes.push_str(&format!(
            "[[notify.routes]]\ngrids = [\"g{}\"]\ncategories = [\"environment\"]\nreceivers = [\"hook\"]\n",
            r % GRIDS
        ));
    }
    routes.push_str("[[notify.routes]]\nseverity = \"major\"\nrules = [\"electrical.residual_current\"]\nreceivers = [\"hook\"]\ncontinue = true\n");
    routes.push_str("[[notify.routes]]\nreceivers = [\"hook\"]\n");
    let config = parkwatch::config::from_str(&config(9, &routes), "bench.toml".as_ref(), dir.path()).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let planner = Planner::new(&config, registry, Arc::new(StaticDirectory::default()));
    let rows: Vec<ChangeRow> = (0..10_000)
        .map(|i| {
            let g = i % GRIDS;
            ChangeRow {
                seq: i as i64 + 1,
                ts: 1_780_000_000_000_000_000 + i as i64,
                at: String::new(),
                change: "raised".into(),
                id: i as i64 + 1,
                rule: "electrical.residual_current".into(),
                title: "剩余电流超限".into(),
                category: "electrical".into(),
                severity: "critical".into(),
                state: "active_unacked".into(),
                device: format!("m{g}"),
                grid: format!("g{g}"),
                point: "ir".into(),
                value: Some(350.0),
                message: String::new(),
                plan: String::new(),
                who: None,
                note: None,
            }
        })
        .collect();
    let t = Instant::now();
    let mut matched = 0;
    for _ in 0..10 {
        for r in &rows {
            matched += planner.routes_for(r).len();
        }
    }
    let per = t.elapsed().as_secs_f64() * 1e9 / (10.0 * rows.len() as f64);
    println!("routing: 50 routes, route match {per:.0} ns per incident ({} routes matched each)", matched / 100_000);
    let mut ledger = parkwatch::notify::ledger::Ledger::open(&dir.path().join("notify.db"), "bench").unwrap();
    let t = Instant::now();
    for chunk in rows.chunks(100) {
        planner.ingest(&mut ledger, chunk, 1_780_000_000_000_000_000).unwrap();
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / rows.len() as f64;
    println!(
        "routing: planner intake (match, pending, tracking, escalation rows; batches of 100) {per:.1} µs per incident"
    );
}

fn main() {
    routing_cost();
    latency(env_u64("PARKWATCH_BENCH_INCIDENTS", 1_000));
}
