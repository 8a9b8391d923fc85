//! Modbus benchmark: 200 simulated SDM630 meters (10 Modbus TCP servers × 20 units) polled every second
//! by the gateway. Reports requests per device cycle, the poll rate reached, gateway CPU per 1,000
//! registers read, and peak RSS.
//!
//! `cargo bench -p parkwatch-e2e --bench modbus`; `PARKWATCH_BENCH_SECS` (default 20) sets the window,
//! `PARKWATCH_BENCH_SERVERS` and `PARKWATCH_BENCH_UNITS` (default 10 × 20) the park's size (20 × 34:
//! 680 meters, 10,200 points), `PARKWATCH_BENCH_RULES=1` runs the built-in rule packs on the readings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parkwatch::sim::modbus::{serve, Unit, Units};
use parkwatch::source::modbus::profile;
use parkwatch_e2e::{wait_until, Gateway};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn proc_stat(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let cpu = (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

fn sum(gw: &Gateway, name: &str) -> f64 {
    let (_, text) = gw.get("/metrics").unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn main() {
    let secs: f64 = env("PARKWATCH_BENCH_SECS", 20.0);
    let servers: usize = env("PARKWATCH_BENCH_SERVERS", 10);
    let units_per_server: u8 = env("PARKWATCH_BENCH_UNITS", 20);
    let rules = env("PARKWATCH_BENCH_RULES", 0u8) == 1;
    let sdm = profile::load_all(&[]).unwrap()["eastron-sdm630"].clone();
    let per_meter = sdm.points.len();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            for _ in 0..servers {
                let mut units = HashMap::new();
                for u in 1..=units_per_server {
                    let mut unit = Unit::default();
                    unit.load_profile(&sdm, |name| if name.starts_with('u') { 230.0 } else { 10.0 });
                    units.insert(u, unit);
                }
                let units: Units = Arc::new(Mutex::new(units));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                tokio::spawn(serve(listener, units, tokio_util::sync::CancellationToken::new()));
            }
            std::future::pending::<()>().await;
        });
    });
    let ports: Vec<u16> = (0..servers).map(|_| rx.recv().unwrap()).collect();
    let mut config = format!(
        "[site]\nid = \"bench\"\n[api]\nlisten = \"{{api}}\"\n[rules]\nbuiltin = {rules}\n[[grids]]\nid = \"g1\"\n"
    );
    for (s, port) in ports.iter().enumerate() {
        config.push_str(&format!(
            "[[modbus.connections]]\nid = \"c{s}\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\n"
        ));
        for u in 1..=units_per_server {
            config.push_str(&format!(
                "[[devices]]\nid = \"m{s}-{u}\"\ngrid = \"g1\"\ncategory = \"electrical\"\n\
                 modbus = {{ connection = \"c{s}\", unit = {u}, profile = \"eastron-sdm630\", interval_ms = 1000 }}\n"
            ));
        }
    }
    let gw = Gateway::start(&config);
    let devices = servers * usize::from(units_per_server);
    wait_until(Duration::from_secs(20), "every meter polled", || {
        (sum(&gw, "parkwatch_modbus_online{") as usize == devices).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let pid = gw.pid();
    let (cpu0, _) = proc_stat(pid);
    let (req0, reg0) = (sum(&gw, "parkwatch_modbus_requests_total{"), sum(&gw, "parkwatch_modbus_registers_total{"));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, rss) = proc_stat(pid);
    let (req1, reg1) = (sum(&gw, "parkwatch_modbus_requests_total{"), sum(&gw, "parkwatch_modbus_registers_total{"));
    let overruns = sum(&gw, "parkwatch_modbus_overruns_total{");
    let errors = sum(&gw, "parkwatch_modbus_timeouts_total{") + sum(&gw, "parkwatch_modbus_transport_errors_total{");
    let requests = req1 - req0;
    let registers = reg1 - reg0;
    let cpu = cpu1 - cpu0;
    let per_cycle = 3.0; // the planner's reads for the SDM630 profile (asserted below)
    let cycles = requests / per_cycle;
    let mut lines = Vec::new();
    lines.push(format!(
        "modbus: {devices} SDM630 meters ({} points) on {servers} Modbus TCP connections, polled every 1 s, built-in rules {}, {elapsed:.1} s window",
        devices * per_meter,
        if rules { "on" } else { "off" }
    ));
    lines.push(format!(
        "requests {requests:.0} ({:.0}/s), {:.2} device cycles/s of {devices} wanted, {per_cycle} requests per device cycle ({per_meter} values)",
        requests / elapsed,
        cycles / elapsed
    ));
    lines.push(format!(
        "registers {registers:.0}; gateway CPU {cpu:.2} s = {:.1} % of one core = {:.2} ms CPU per 1,000 registers; peak RSS {rss:.1} MB; overruns {overruns}, errors {errors}",
        100.0 * cpu / elapsed,
        1000.0 * cpu / (registers / 1000.0)
    ));
    lines.push(format!(
        "registers per request {:.1} (the SDM630 plan: 0–17, 52–75, 342–343 = 44 registers in 3 reads)",
        registers / requests
    ));
    for l in &lines {
        println!("{l}");
    }
    let dir = parkwatch_e2e::root().join("benches/results");
    let _ = std::fs::create_dir_all(&dir);
    let name =
        format!("modbus-{}-{servers}x{units_per_server}-rules{}.md", parkwatch_e2e::bench::today(), u8::from(rules));
    let text = format!(
        "# Modbus benchmark\n\n`PARKWATCH_BENCH_SERVERS={servers} PARKWATCH_BENCH_UNITS={units_per_server} PARKWATCH_BENCH_RULES={} PARKWATCH_BENCH_SECS={secs} cargo bench -p parkwatch-e2e --bench modbus`\n\n{}\n{}\n",
        u8::from(rules),
        parkwatch_e2e::bench::machine(&parkwatch_e2e::root()),
        lines.iter().map(|l| format!("- {l}\n")).collect::<String>()
    );
    if let Err(e) = std::fs::write(dir.join(&name), text) {
        eprintln!("cannot write benches/results/{name}: {e}");
    }
}
