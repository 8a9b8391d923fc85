//! HJ 212 benchmark: one listener with 1,000 connected loggers sending minute data (CN 2051, spread
//! over the minute) and 100 sending real-time data (CN 2011) every second, all asking for answers.
//! Reports the gateway's CPU as a share of one core over the window (the whole process: listener,
//! connections, core; rules off), frames taken and answered, and memory per connection (RSS after
//! the loggers connected and reported, less RSS before, over the connections).
//!
//! `cargo bench -p parkwatch-e2e --bench hj212`; `PARKWATCH_BENCH_SECS` (default 60) sets the window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkwatch::source::hj212::codec::{self, CrcVariant, Header};
use parkwatch_e2e::{free_port, wait_until, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MINUTE_LOGGERS: usize = 1000;
const REALTIME_LOGGERS: usize = 100;

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn sum(gw: &Gateway, name: &str) -> f64 {
    let (_, text) = gw.get("/metrics").unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn mn(i: usize) -> String {
    format!("BENCH{i:09}")
}

fn frame(i: usize, cn: &str, seq: u64) -> Vec<u8> {
    // The site's zone is the default, Asia/Shanghai (UTC+8, no daylight saving).
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let now = chrono::DateTime::from_timestamp(unix + 8 * 3600, 0).unwrap().naive_utc();
    let t = now.format("%Y%m%d%H%M%S").to_string();
    let qn = format!("{t}{:03}", seq % 1000);
    let cp = if cn == "2011" {
        format!("DataTime={t};w01018-Rtd=52.1,w01018-Flag=N;w21003-Rtd=3.2,w21003-Flag=N;w01001-Rtd=7.3,w01001-Flag=N;w00000-Rtd=21.5,w00000-Flag=N")
    } else {
        let m = now.format("%Y%m%d%H%M00");
        format!(
            "DataTime={m};w01018-Avg=52.1,w01018-Min=50.2,w01018-Max=55.0,w01018-Flag=N;w21003-Avg=3.2,w21003-Min=3.0,w21003-Max=3.4,w21003-Flag=N;w01001-Avg=7.3,w01001-Min=7.2,w01001-Max=7.4,w01001-Flag=N;w00000-Avg=21.5,w00000-Min=20.0,w00000-Max=23.0,w00000-Cou=1290.0,w00000-Flag=N"
        )
    };
    let h = Header { qn: Some(&qn), st: "32", cn, pw: "123456", mn: &mn(i), flag: 5, split: None };
    codec::frame(CrcVariant::Standard, &codec::data_segment(&h, &cp)).unwrap()
}

fn main() {
    let secs: f64 = std::env::var("PARKWATCH_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60.0);
    let port = free_port();
    let total = MINUTE_LOGGERS + REALTIME_LOGGERS;
    let mut config = format!(
        "[site]\nid = \"bench\"\n[api]\nlisten = \"{{api}}\"\n[rules]\nbuiltin = false\n[history]\nenabled = false\n[[grids]]\nid = \"g1\"\n[[hj212.listeners]]\nid = \"l\"\nlisten = \"127.0.0.1:{port}\"\n"
    );
    for i in 0..total {
        config.push_str(&format!(
            "[[devices]]\nid = \"ww{i}\"\ngrid = \"g1\"\ncategory = \"water\"\npoints = [{{ name = \"cod\", unit = \"mg/L\" }}, {{ name = \"nh3n\", unit = \"mg/L\" }}, {{ name = \"ph\" }}, {{ name = \"flow\" }}]\n[[hj212.loggers]]\nmn = \"{}\"\npw = \"123456\"\ndevice = \"ww{i}\"\n",
            mn(i)
        ));
    }
    let gw = Gateway::start(&config);
    let pid = gw.pid();
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = rss_kib(pid);

    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let client = {
        let (sent, answered, connected, stop) = (sent.clone(), answered.clone(), connected.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..total {
                    let (sent, answered, connected, stop) =
                        (sent.clone(), answered.clone(), connected.clone(), stop.clone());
                    tasks.spawn(async move {
                        let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                        let (mut rd, mut wr) = s.into_split();
                        connected.fetch_add(1, Ordering::Relaxed);
                        let reader = tokio::spawn(async move {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = rd.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                answered.fetch_add(
                                    buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
                                    Ordering::Relaxed,
                                );
                            }
                        });
                        let realtime = i >= MINUTE_LOGGERS;
                        let (cn, every) =
                            if realtime { ("2011", Duration::from_secs(1)) } else { ("2051", Duration::from_secs(60)) };
                        // Minute loggers spread over the minute, as clocks of real loggers are.
                        let offset = if realtime {
                            Duration::ZERO
                        } else {
                            Duration::from_millis((i as u64 * 60_000) / MINUTE_LOGGERS as u64)
                        };
                        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                        let mut seq = 0u64;
                        loop {
                            tokio::select! {
                                () = stop.cancelled() => break,
                                _ = tick.tick() => {}
                            }
                            seq += 1;
                            if wr.write_all(&frame(i, cn, seq)).await.is_err() {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(wr);
                        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
        })
    };
    wait_until(Duration::from_secs(60), "every logger connected", || {
        (connected.load(Ordering::Relaxed) as usize == total).then_some(())
    });
    // Warm up a few seconds, then measure over the window.
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, frames0, t0) = (cpu_secs(pid), sum(&gw, "parkwatch_hj212_frames_total"), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (cpu1, frames1, elapsed) =
        (cpu_secs(pid), sum(&gw, "parkwatch_hj212_frames_total"), t0.elapsed().as_secs_f64());
    let rss_after = rss_kib(pid);
    stop.cancel();
    client.join().unwrap();
    let frames_sent = sent.load(Ordering::Relaxed) as f64;
    wait_until(Duration::from_secs(30), "every frame taken", || {
        (sum(&gw, "parkwatch_hj212_frames_total") >= frames_sent).then_some(())
    });
    let rejects = sum(&gw, "parkwatch_hj212_rejects_total");
    let share = 100.0 * (cpu1 - cpu0) / elapsed;
    let per_conn = (rss_after - rss_before) / total as f64;
    println!(
        "hj212: {MINUTE_LOGGERS} loggers with minute data + {REALTIME_LOGGERS} with real-time data every second on one listener"
    );
    println!(
        "  window {elapsed:.1} s: {:.1} frames/s taken, {frames_sent} sent, {} answered, {rejects} rejected",
        (frames1 - frames0) / elapsed,
        answered.load(Ordering::Relaxed)
    );
    println!(
        "  gateway CPU {share:.2} % of one core ({})",
        if share <= 5.0 { "within the 5 % budget" } else { "OVER the 5 % budget" }
    );
    println!("  memory: RSS {rss_before:.0} KiB before, {rss_after:.0} KiB with {total} connections: {per_conn:.1} KiB per connection");
}
