//! Linkage benchmark: rule raise → Modbus write on the wire, with the rules benchmark's load running.
//!
//! The real core (1,000 threshold rules over 10,000 points fed at `PARKWATCH_BENCH_RATE` samples/s,
//! default 50,000, none of them alarming), the incident store (SQLite), the linkage engine and its
//! change-log follower run in this process; a Modbus TCP server on loopback (the simulated devices'
//! server) stands for 50 access controllers. 200 fire detectors raise their alarm one by one, 10 a
//! second; the rule `bench.fire` names `unlock_{device}`, an action writing one lock coil. Latency
//! runs from handing the detector's sample to the core to the write request arriving at the server:
//! evaluation, the incident's fsync'd commit, the change log, the engine's checks, connecting and
//! writing. Reported: median, p90, p99, max against the 50 ms p99 target.
//!
//! `cargo bench -p parkwatch-e2e --bench linkage`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parkwatch::core::{self, packs, Core};
use parkwatch::incident;
use parkwatch::metrics::Metrics;
use parkwatch::model::pool::SamplePool;
use parkwatch::model::{Batch, PointId, Quality, Registry, Sample};
use parkwatch::sim::modbus::{serve, Unit, Units};
use parkwatch::source::modbus::plan::Table;

const DEVICES: usize = 1_000;
const POINTS: usize = 10;
const DETECTORS: usize = 200;
const CONTROLLERS: usize = 50;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn config(dir: &std::path::Path, port: u16) -> String {
    let mut c = format!(
        "[site]\nid = \"bench\"\n[[grids]]\nid = \"g1\"\n[[modbus.connections]]\nid = \"acc\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\n"
    );
    for d in 0..DEVICES {
        let points: Vec<String> = (0..POINTS).map(|p| format!("{{ name = \"p{p}\" }}")).collect();
        c.push_str(&format!(
            "[[devices]]\nid = \"d{d}\"\ngrid = \"g1\"\ncategory = \"electrical\"\ntags = {{ shard = \"{}\" }}\npoints = [{}]\n",
            d % 100,
            points.join(", ")
        ));
    }
    for u in 0..CONTROLLERS {
        c.push_str(&format!(
            "[[devices]]\nid = \"acc{u}\"\ngrid = \"g1\"\ncategory = \"access\"\nmodbus = {{ connection = \"acc\", unit = {}, profile = \"access-controller\" }}\n",
            u + 1
        ));
    }
    for k in 0..DETECTORS {
        c.push_str(&format!(
            "[[devices]]\nid = \"fd{k}\"\ngrid = \"g1\"\ncategory = \"electrical\"\ntags = {{ fire = \"1\" }}\npoints = [{{ name = \"alarm\", kind = \"bool\" }}]\n\
             [[actions]]\nid = \"unlock_fd{k}\"\ndevice = \"acc{}\"\nkind = \"modbus\"\npoints = [\"lock_{}\"]\nvalue = 1\nallowed = [1]\nrules = [\"bench.fire\"]\n",
            k / 4,
            k % 4 + 1
        ));
    }
    c.push_str(&format!("[rules]\nbuiltin = false\ndirs = [{:?}]\n", dir.join("rules").display().to_string()));
    c.push_str(&format!("[incidents]\npath = {:?}\n", dir.join("incidents.db").display().to_string()));
    c
}

fn pack() -> String {
    let mut p: String = (0..1_000)
        .map(|r| {
            format!(
                "rule(#{{ id: \"bench.r{r}\", category: \"equipment\", severity: \"major\", \
                 watch: #{{ points: [\"p{}\"], tags: #{{ shard: \"{}\" }} }}, params: #{{ limit: 900.0 }}, \
                 condition: |ctx| ctx.value > ctx.param(\"limit\") }});\n",
                r % 10,
                r / 10
            )
        })
        .collect();
    p.push_str(
        "rule(#{ id: \"bench.fire\", category: \"electrical\", severity: \"critical\", \
         watch: #{ points: [\"alarm\"], tags: #{ fire: \"1\" } }, condition: |ctx| ctx.value > 0.5, \
         on_raise: [\"unlock_{device}\"] });\n",
    );
    p
}

fn main() {
    let rate: f64 = std::env::var("PARKWATCH_BENCH_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000.0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/bench.rhai"), pack()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let units: Units =
        Arc::new(Mutex::new((1..=CONTROLLERS as u8).map(|u| (u, Unit::default())).collect::<HashMap<_, _>>()));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    rt.spawn(serve(listener, units.clone(), stop.clone()));
    let cfg = parkwatch::config::from_str(&config(dir.path(), port), "bench.toml".as_ref(), dir.path()).unwrap();
    let cfg = Arc::new(cfg);
    let registry = Arc::new(Registry::from_config(&cfg));
    let (engine, _) = packs::build(&cfg, registry.clone(), 1).unwrap_or_else(|e| panic!("{e:?}"));
    let (conn, _, _) = incident::open(&cfg.incidents.path).unwrap();
    let (store, _store_thread) = incident::spawn(conn).unwrap();
    let metrics = Arc::new(Metrics::new(Vec::new(), Vec::new(), 10));
    let core = Core::new(registry.clone(), metrics.clone(), Arc::new(SamplePool::default()), 100)
        .with_engine(engine, vec!["bench".into()]);
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(64);
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let store2 = store.clone();
    let core_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (handle, task) = core::spawn(core, rx, Some(store2), None);
            handle_tx.send(handle).unwrap();
            task.await.unwrap();
        });
    });
    let handle = handle_rx.recv().unwrap();
    let (audit, _audit_thread) =
        parkwatch::audit::AuditLog::open(&dir.path().join("audit.db"), Default::default()).unwrap();
    let (actions, _engine) = {
        let _g = rt.enter();
        parkwatch::actions::start(cfg.clone(), registry.clone(), handle.clone(), audit, stop.clone())
    };
    rt.spawn(parkwatch::actions::follow(actions.clone(), store.clone(), handle, registry.clone(), stop.clone()));

    // 100 batches a second of load (values below every limit); every 10th batch carries one detector's
    // alarm, handed over at a known instant.
    let per_batch = (rate / 100.0) as usize;
    let mut rng = fastrand::Rng::with_seed(11);
    let detector =
        |k: usize| PointId(registry.devices[registry.device_id(&format!("fd{k}")).unwrap().0 as usize].points.start);
    let mut raised_at: Vec<Option<Instant>> = vec![None; DETECTORS];
    let started = Instant::now();
    let mut batch_no = 0usize;
    let total_batches = DETECTORS * 10 + 100;
    while batch_no < total_batches {
        let due = started + Duration::from_millis(10 * batch_no as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ts = now_ns();
        let mut samples: Vec<Sample> = (0..per_batch)
            .map(|_| Sample {
                point: PointId(rng.u32(0..(DEVICES * POINTS) as u32)),
                quality: Quality::Good,
                ts,
                value: rng.f64() * 800.0,
            })
            .collect();
        let k = batch_no / 10;
        let fire = batch_no % 10 == 5 && k < DETECTORS;
        if fire {
            samples.push(Sample { point: detector(k), quality: Quality::Good, ts, value: 1.0 });
        }
        let at = Instant::now();
        tx.blocking_send(Batch::new(samples, vec![])).unwrap();
        if fire {
            raised_at[k] = Some(at);
        }
        batch_no += 1;
    }
    let fed = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let mut latencies = Vec::new();
    let mut missing = 0;
    {
        let u = units.lock().unwrap();
        for (k, at) in raised_at.iter().enumerate() {
            let unit = u.get(&((k / 4 + 1) as u8)).unwrap();
            let write = unit.writes.iter().position(|(t, a, _)| *t == Table::Coil && *a == (k % 4) as u16);
            match (at, write) {
                (Some(at), Some(i)) => latencies.push(unit.write_times[i].duration_since(*at).as_secs_f64() * 1e3),
                _ => missing += 1,
            }
        }
    }
    stop.cancel();
    drop(tx);
    let _ = core_thread.join();
    latencies.sort_by(f64::total_cmp);
    let q =
        |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1).min(latencies.len() - 1)];
    let recent = actions.recent();
    let done = recent.iter().filter(|r| r.state == parkwatch::actions::State::Done).count();
    println!(
        "load: {per_batch} samples per batch, 100 batches/s ({:.0} samples/s achieved), 1,000 rules; {DETECTORS} raises, {done} actions done, {missing} writes missing",
        (per_batch * total_batches) as f64 / fed.as_secs_f64()
    );
    println!(
        "raise -> Modbus write: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms -> {} (target p99 <= 50 ms)",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
        if missing == 0 && q(0.99) <= 50.0 { "PASS" } else { "FAIL" }
    );
}
