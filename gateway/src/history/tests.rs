//! The writer end to end on a virtual clock: a day of 1 Hz samples against a direct computation,
//! retention, and a full database that degrades history without holding up the core.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::time::ManualClock;
use crate::model::{PointId, Quality, Registry, Sample};

const S: i64 = 1_000_000_000;
const MIN: i64 = 60 * S;
const DAY: i64 = 86_400 * S;
/// 2025-12-01T00:00:00Z (08:00 in Asia/Shanghai).
const T0: i64 = 1_764_547_200 * S;

fn registry(points: &str) -> Arc<Registry> {
    let text = format!(
        "[site]\nid = \"p\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"m1\"\ngrid = \"g1\"\ncategory = \"electrical\"\npoints = [{points}]\n"
    );
    let config = crate::config::from_str(&text, "t.toml".as_ref(), ".".as_ref()).unwrap();
    Arc::new(Registry::from_config(&config))
}

fn settings(dir: &std::path::Path, max_bytes: u64) -> Settings {
    Settings { path: dir.join("history.db"), minute_days: 35, hour_days: 400, max_bytes }
}

/// Waits (at most 20 s) for `cond`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

/// The reading at second `i` of the day for point `p`: a voltage, a noise level, an energy counter
/// that resets at 12:00; about one in 97 is of bad quality.
fn reading(p: u32, i: i64) -> Sample {
    let x = i as f64;
    let value = match p {
        0 => 220.0 + 5.0 * (x * 0.01).sin() + (i % 7) as f64 * 0.1,
        1 => 45.0 + 20.0 * ((i * 7_919) % 100) as f64 / 100.0,
        _ if i < 43_200 => 1_000.0 + x * 0.002,
        _ => (x - 43_200.0) * 0.002,
    };
    let quality = if (i * 31 + i64::from(p)) % 97 == 0 { Quality::Bad } else { Quality::Good };
    Sample { point: PointId(p), quality, ts: T0 + i * S, value }
}

/// Minute aggregates computed directly from the samples, by the rules of `rollup.rs`: a good
/// reading holds until the next reading or 15 minutes; energy counters count increments.
#[allow(clippy::type_complexity)]
fn direct(samples: &[Sample], kind: Kind) -> Vec<(i64, u32, f64, f64, f64, f64, f64, f64)> {
    // (minute ms, count, held, ∫v, ∫10^(v/10), min, max, last)
    type Minute = (i64, u32, f64, f64, f64, f64, f64, f64);
    fn at(out: &mut Vec<Minute>, t_ns: i64) -> usize {
        let m = t_ns.div_euclid(MIN) * 60_000;
        match out.iter().rposition(|r| r.0 == m) {
            Some(i) => i,
            None => {
                out.push((m, 0, 0.0, 0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN));
                out.len() - 1
            }
        }
    }
    let mut out: Vec<Minute> = Vec::new();
    let mut base: Option<f64> = None;
    for (i, s) in samples.iter().enumerate() {
        if s.quality != Quality::Good {
            continue;
        }
        let r = at(&mut out, s.ts);
        if kind == Kind::Energy {
            out[r].1 += 1;
            out[r].7 = s.value;
            if let Some(b) = base {
                let inc = if s.value >= b { s.value - b } else { s.value };
                out[r].3 += inc;
                out[r].5 = out[r].5.min(inc);
                out[r].6 = out[r].6.max(inc);
            }
            base = Some(s.value);
            continue;
        }
        out[r].1 += 1;
        out[r].5 = out[r].5.min(s.value);
        out[r].6 = out[r].6.max(s.value);
        out[r].7 = s.value;
        let end = samples.get(i + 1).map_or(s.ts + 15 * MIN, |n| n.ts.min(s.ts + 15 * MIN));
        // Second by second (all times here are whole seconds).
        let mut t = s.ts;
        while t < end {
            let r = at(&mut out, t);
            out[r].2 += 1.0;
            out[r].3 += s.value;
            out[r].4 += 10f64.powf(s.value / 10.0);
            t += S;
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// 24 h of 1 Hz samples (3 points) produce exactly 1,440 one-minute rows per point in that day, each
/// equal to the direct computation; the hourly rows and the day and night Leq of the noise point
/// agree too. The clock is virtual: the whole day goes in at once.
#[test]
fn a_day_at_one_hertz_gives_1440_minutes_equal_to_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(
        r#"{ name = "ua", unit = "V" }, { name = "noise", unit = "dB(A)" }, { name = "energy", unit = "kWh" }"#,
    );
    // The day is over by the time its samples are written: minutes close as they are swept.
    let clock = Arc::new(ManualClock::new(T0 + DAY + 20 * MIN, 0));
    let (history, reader, thread) = start(&settings(dir.path(), 1 << 30), &reg, clock).unwrap();
    let day: Vec<Vec<Sample>> = (0..3).map(|p| (0..86_400).map(|i| reading(p, i)).collect()).collect();
    for hour in 0..24 {
        let mut batch = Vec::new();
        for i in hour * 3_600..(hour + 1) * 3_600 {
            for p in &day {
                batch.push(p[i]);
            }
        }
        history.offer(&batch);
    }
    drop(history);
    thread.join().unwrap();
    let m = &reader.metrics;
    assert_eq!(m.dropped_samples.load(Relaxed), 0);
    assert_eq!(m.samples.load(Relaxed), 3 * 86_400);
    assert!(!m.failing.load(Relaxed));

    for (p, name, kind) in [(0, "ua", Kind::Level), (1, "noise", Kind::Noise), (2, "energy", Kind::Energy)] {
        let rows = reader.read("m1", name, Res::Minute, T0 / 1_000_000, (T0 + DAY) / 1_000_000).unwrap();
        assert_eq!(rows.len(), 1_440, "{name}");
        let all = direct(&day[p], kind);
        let want: Vec<_> = all.iter().filter(|r| r.0 < (T0 + DAY) / 1_000_000).copied().collect();
        assert_eq!(want.len(), 1_440);
        for (got, w) in rows.iter().zip(&want) {
            assert_eq!((got.t, got.count), (w.0, w.1), "{name} minute");
            assert!(close(got.min, w.5) && close(got.max, w.6) && close(got.last, w.7), "{name} {got:?} vs {w:?}");
            match kind {
                Kind::Energy => assert!(close(got.avg(kind).unwrap(), w.3), "{name} delta {got:?} vs {w:?}"),
                _ => {
                    assert_eq!(got.held, w.2, "{name} held at {}", got.t);
                    assert!(close(got.avg(kind).unwrap(), w.3 / w.2), "{name} avg {got:?} vs {w:?}");
                }
            }
            if kind == Kind::Noise {
                let leq = 10.0 * (w.4 / w.2).log10();
                assert!(close(got.leq(kind).unwrap(), leq), "{name} leq {got:?} vs {leq}");
            } else {
                assert_eq!(got.leq(kind), None);
            }
        }
        // After the day the last reading holds for its 15 minutes: rows without readings.
        let after = reader.read("m1", name, Res::Minute, (T0 + DAY) / 1_000_000, (T0 + 2 * DAY) / 1_000_000).unwrap();
        assert_eq!(after.len(), all.len() - 1_440, "{name}: {after:?}");
        assert!(after.iter().all(|a| a.count == 0), "{name}: {after:?}");
        let hours = reader.read("m1", name, Res::Hour, T0 / 1_000_000, (T0 + DAY) / 1_000_000).unwrap();
        assert_eq!(hours.len(), 24, "{name}");
        for (h, got) in hours.iter().enumerate() {
            let part = &want[h * 60..(h + 1) * 60];
            assert_eq!(got.count, part.iter().map(|w| w.1).sum::<u32>());
            let sum: f64 = part.iter().map(|w| w.3).sum();
            match kind {
                Kind::Energy => assert!(close(got.sum, sum)),
                _ => assert!(close(got.avg(kind).unwrap(), sum / part.iter().map(|w| w.2).sum::<f64>())),
            }
        }
    }
    // Day (06:00–22:00 local, UTC+8) and night Leq from the stored minutes equal the energy average
    // of the readings (each held one second) per limits.md.
    let rows = reader.read("m1", "noise", Res::Minute, T0 / 1_000_000, (T0 + DAY) / 1_000_000).unwrap();
    for (from_h, to_h) in [(0, 14), (14, 22)] {
        let part: Vec<&Agg> =
            rows.iter().filter(|a| (from_h * 60..to_h * 60).contains(&((a.t - T0 / 1_000_000) / 60_000))).collect();
        let levels: Vec<f64> = day[1][(from_h * 3_600) as usize..(to_h * 3_600) as usize]
            .iter()
            .filter(|s| s.quality == Quality::Good)
            .map(|s| s.value)
            .collect();
        let stored = rollup::leq_over(part).unwrap();
        let direct = crate::model::sound::leq(&levels).unwrap();
        assert!(close(stored, direct), "{from_h}–{to_h} h: stored {stored} vs direct {direct}");
    }
}

/// Rollups older than their retention are removed when the writer prunes (at start, then hourly):
/// minutes after 35 days, hours after 400.
#[test]
fn retention_prunes_minutes_and_hours_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(r#"{ name = "ua", unit = "V" }"#);
    let now = T0 + 400 * DAY;
    let clock = Arc::new(ManualClock::new(now, 0));
    let s = settings(dir.path(), 1 << 30);
    {
        let (history, _, thread) = start(&s, &reg, clock.clone()).unwrap();
        // 401, 40 and 2 days ago.
        for ago in [401, 40, 2] {
            let t = now - ago * DAY;
            history.offer(&[
                Sample { point: PointId(0), quality: Quality::Good, ts: t, value: 1.0 },
                Sample { point: PointId(0), quality: Quality::Bad, ts: t + S, value: 0.0 },
            ]);
        }
        drop(history);
        thread.join().unwrap();
    }
    let count = |res| {
        let r =
            HistoryReader { path: s.path.clone(), metrics: Default::default(), minute_days: 35, max_bytes: 1 << 30 };
        r.read("m1", "ua", res, 0, i64::MAX).unwrap().len()
    };
    // The first writer may or may not have pruned before its rows were in: start another.
    let (history, reader, thread) = start(&s, &reg, clock).unwrap();
    wait_for("a prune", || count(Res::Minute) == 1);
    assert_eq!(count(Res::Hour), 2, "hours of 40 and 2 days ago stay");
    drop(history);
    thread.join().unwrap();
    assert!(reader.metrics.pruned_rows.load(Relaxed) >= 1);
}

/// A database at its size bound with nothing old to remove refuses writes: history degrades
/// (failing, counted, rows held for a retry), while the core it taps goes on applying batches.
#[tokio::test]
async fn a_full_database_degrades_history_not_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let points: Vec<String> = (0..3_000).map(|i| format!("{{ name = \"p{i}\", unit = \"V\" }}")).collect();
    let reg = registry(&points.join(", "));
    let clock = Arc::new(ManualClock::new(T0 + DAY, 0));
    // 256 KiB: the schema and 3,000 series fit, a minute of every point does not.
    let (history, reader, thread) = start(&settings(dir.path(), 256 * 1024), &reg, clock.clone()).unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::new(vec![], vec![], 10));
    let tap = history.clone();
    let core = crate::core::Core::new(reg.clone(), metrics.clone(), Arc::new(SamplePool::default()), 10)
        .with_clock(clock)
        .with_tap(Box::new(move |s: &[Sample]| tap.offer(s)));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (handle, task) = crate::core::spawn(core, rx, None, None);
    for round in 0..3 {
        let batch: Vec<Sample> = (0..3_000)
            .map(|p| Sample { point: PointId(p), quality: Quality::Good, ts: T0 + round * MIN, value: 1.5 })
            .collect();
        tx.send(crate::model::Batch::new(batch, vec![])).await.unwrap();
    }
    let m = reader.metrics.clone();
    let failing = tokio::task::spawn_blocking(move || wait_for("a failed write", || m.failing.load(Relaxed)));
    failing.await.unwrap();
    assert!(reader.metrics.write_errors.load(Relaxed) >= 1);
    assert!(reader.metrics.last_error.lock().unwrap().contains("full"), "{:?}", reader.metrics.last_error);
    // The core is not held up: it applies more and answers.
    let batch = vec![Sample { point: PointId(7), quality: Quality::Good, ts: T0 + 10 * MIN, value: 9.0 }];
    tx.send(crate::model::Batch::new(batch, vec![])).await.unwrap();
    let filter = crate::core::PointFilter::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let points = handle.points(filter.clone()).await.unwrap();
        if points.iter().any(|(id, s)| *id == PointId(7) && s.value == 9.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the core did not apply the batch");
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.core.samples.load(Relaxed), 9_001);
    drop(tx);
    task.await.unwrap();
    drop(history);
    tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
    assert!(reader.metrics.disk_bytes.load(Relaxed) <= 256 * 1024 + 4 * 1024 * 1024, "pages plus the log");
}

/// At the bound with old minutes on disk, the writer removes the oldest and the write goes through.
#[test]
fn the_bound_makes_room_by_removing_the_oldest_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let points: Vec<String> = (0..200).map(|i| format!("{{ name = \"p{i}\", unit = \"V\" }}")).collect();
    let reg = registry(&points.join(", "));
    let clock = Arc::new(ManualClock::new(T0 + 30 * DAY, 0));
    let (history, reader, thread) = start(&settings(dir.path(), 1 << 20), &reg, clock).unwrap();
    // One reading of every point a minute, a day apart each 10 minutes: enough to pass 1 MiB.
    for day in 0..20 {
        for minute in 0..30 {
            let ts = T0 + day * DAY + minute * MIN;
            let batch: Vec<Sample> =
                (0..200).map(|p| Sample { point: PointId(p), quality: Quality::Good, ts, value: 2.0 }).collect();
            history.offer(&batch);
        }
        // Let the writer keep up (the channel holds 1,024 batches).
        let m = reader.metrics.clone();
        let want = (day as u64 + 1) * 30 * 200;
        wait_for("the writer", || m.samples.load(Relaxed) >= want);
    }
    drop(history);
    thread.join().unwrap();
    let m = &reader.metrics;
    assert!(m.pruned_for_space.load(Relaxed) > 0, "never reached the bound");
    assert!(!m.failing.load(Relaxed), "{:?}", m.last_error);
    let rows = reader.read("m1", "p0", Res::Minute, 0, i64::MAX).unwrap();
    // The last reading (minute 29) holds its 15 minutes, through minute 43.
    assert_eq!(rows.last().map(|a| a.t), Some((T0 + 19 * DAY + 43 * MIN) / 1_000_000), "the newest minutes are kept");
    assert!(rows.first().unwrap().t > T0 / 1_000_000, "the oldest went first");
}

/// A restart within the longest hold continues an energy counter from its last stored reading: the
/// consumption across the restart lands in the first minute back. After a longer outage it is not
/// spread into one minute; the stored counters keep it.
#[test]
fn an_energy_counter_continues_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(r#"{ name = "ep", unit = "kWh" }"#);
    let s = settings(dir.path(), 1 << 30);
    let kwh = |ts: i64, value: f64| Sample { point: PointId(0), quality: Quality::Good, ts, value };
    let run = |now: i64, samples: &[Sample]| {
        let clock = Arc::new(ManualClock::new(now, 0));
        let (history, _, thread) = start(&s, &reg, clock).unwrap();
        history.offer(samples);
        drop(history);
        thread.join().unwrap();
    };
    let reader =
        HistoryReader { path: s.path.clone(), metrics: Default::default(), minute_days: 35, max_bytes: 1 << 30 };
    let minutes = || -> Vec<(i64, f64)> {
        reader
            .read("m1", "ep", Res::Minute, 0, i64::MAX)
            .unwrap()
            .iter()
            .map(|r| ((r.t - T0 / 1_000_000) / 60_000, r.sum))
            .collect()
    };
    run(T0 + MIN, &[kwh(T0, 100.0), kwh(T0 + 30 * S, 100.5)]);
    assert_eq!(minutes(), [(0, 0.5)]);
    // Back five minutes later: the 2 kWh used while down count in the first minute back.
    run(T0 + 6 * MIN, &[kwh(T0 + 5 * MIN, 102.5), kwh(T0 + 5 * MIN + 30 * S, 103.0)]);
    assert_eq!(minutes(), [(0, 0.5), (5, 2.5)]);
    // Back after two hours: the first reading only sets the baseline again.
    run(T0 + 126 * MIN, &[kwh(T0 + 125 * MIN, 110.0), kwh(T0 + 125 * MIN + 30 * S, 110.25)]);
    assert_eq!(minutes(), [(0, 0.5), (5, 2.5), (125, 0.25)]);
}
