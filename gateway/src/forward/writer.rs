//! One writer per target: drains the outbox in order to an InfluxDB v2 API (`POST /api/v2/write`),
//! on a thread of its own with blocking HTTP, so a slow store never stalls the async tasks.
//!
//! 2xx moves the cursor. 429 and 503 wait as the server says (`Retry-After`) or back off. Any other
//! 4xx is poison: the batch goes to the dead letters with the server's message and the queue moves
//! on. 5xx and transport errors back off exponentially with jitter, capped, and retry the same batch.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::outbox::{Cursor, Stored};
use crate::model::time::now_ns;

/// Counters of one target, read by the API and `/metrics`.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    pub id: String,
    pub url: String,
    pub writes: AtomicU64,
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Last write's latency, µs.
    pub last_latency_us: AtomicU64,
    pub latency_us_sum: AtomicU64,
    pub backlog_batches: AtomicU64,
    pub backlog_bytes: AtomicU64,
    /// Creation time (UTC ns) of the oldest batch not yet confirmed; 0 when none.
    pub oldest_ns: AtomicI64,
    pub up: AtomicBool,
    pub last_error: std::sync::Mutex<String>,
}

/// Where and how a writer writes.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub id: String,
    /// Full write URL with org, bucket and precision.
    pub write_url: String,
    pub token: Option<String>,
    pub gzip: bool,
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

enum Answer {
    Ok,
    /// Retry the same batch: after what the server asked for, else after the backoff.
    Retry(Option<Duration>, String),
    Poison(u16, String),
}

/// Runs the writer until `stop`; `wake` is bumped by the appender when a batch was committed.
pub fn run(
    spec: TargetSpec,
    mut cursor: Cursor,
    metrics: Arc<TargetMetrics>,
    stop: Arc<AtomicBool>,
    wake: Arc<AtomicU64>,
) {
    let agent = ureq::AgentBuilder::new().timeout(spec.timeout).build();
    let mut position = match cursor.position() {
        Ok(p) => p,
        Err(e) => {
            error!(target = %spec.id, error = %e, "Cannot read the outbox cursor; writer stopped.");
            return;
        }
    };
    let mut backoff = spec.retry_min;
    let mut seen_wake = u64::MAX;
    info!(target = %spec.id, url = %spec.write_url, from = position, "Writer started.");
    while !stop.load(Ordering::Relaxed) {
        update_backlog(&cursor, position, &metrics);
        let next = match cursor.next_after(position) {
            Ok(n) => n,
            Err(e) => {
                warn!(target = %spec.id, error = %e, "Cannot read the outbox.");
                sleep(&stop, Duration::from_secs(1));
                continue;
            }
        };
        let Some(batch) = next else {
            // Idle: wait for the appender's signal, checking now and then.
            let w = wake.load(Ordering::Acquire);
            if w == seen_wake {
                sleep(&stop, Duration::from_millis(50));
            }
            seen_wake = w;
            continue;
        };
        let started = Instant::now();
        match send(&agent, &spec, &batch) {
            Answer::Ok => {
                let us = started.elapsed().as_micros() as u64;
                metrics.writes.fetch_add(1, Ordering::Relaxed);
                metrics.lines.fetch_add(batch.lines as u64, Ordering::Relaxed);
                metrics.bytes.fetch_add(batch.body.len() as u64, Ordering::Relaxed);
                metrics.last_latency_us.store(us, Ordering::Relaxed);
                metrics.latency_us_sum.fetch_add(us, Ordering::Relaxed);
                if !metrics.up.swap(true, Ordering::Relaxed) {
                    info!(target = %spec.id, "Store reachable.");
                }
                if let Err(e) = cursor.advance(batch.seq) {
                    warn!(target = %spec.id, error = %e, "Cannot move the cursor; the batch will be sent again.");
                    sleep(&stop, Duration::from_secs(1));
                    continue;
                }
                position = batch.seq;
                backoff = spec.retry_min;
            }
            Answer::Retry(asked, why) => {
                let wait = match asked {
                    Some(w) => w,
                    None => {
                        let w = backoff + backoff.mul_f64(fastrand::f64() * 0.5);
                        backoff = (backoff * 2).min(spec.retry_max);
                        w
                    }
                };
                metrics.retries.fetch_add(1, Ordering::Relaxed);
                if metrics.up.swap(false, Ordering::Relaxed) {
                    warn!(target = %spec.id, error = %why, retry_in_ms = wait.as_millis() as u64, "Store write failed; retrying.");
                } else {
                    debug!(target = %spec.id, error = %why, retry_in_ms = wait.as_millis() as u64, "Store write failed again.");
                }
                set_error(&metrics, why);
                sleep(&stop, wait);
            }
            Answer::Poison(status, message) => {
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                error!(target = %spec.id, seq = batch.seq, status, message = %message, "Store rejected a batch; moved to dead letters.");
                set_error(&metrics, format!("{status}: {message}"));
                if let Err(e) = cursor.dead_letter(&batch, status, &message, now_ns()) {
                    warn!(target = %spec.id, error = %e, "Cannot park the rejected batch; will retry.");
                    sleep(&stop, Duration::from_secs(1));
                    continue;
                }
                position = batch.seq;
            }
        }
    }
    info!(target = %spec.id, "Writer stopped.");

    fn set_error(metrics: &TargetMetrics, e: String) {
        if let Ok(mut last) = metrics.last_error.lock() {
            *last = e;
        }
    }
}

/// Sleeps up to `d`, waking early when asked to stop.
fn sleep(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn update_backlog(cursor: &Cursor, position: i64, m: &TargetMetrics) {
    if let Ok((batches, bytes, oldest)) = cursor.backlog(position) {
        m.backlog_batches.store(batches, Ordering::Relaxed);
        m.backlog_bytes.store(bytes, Ordering::Relaxed);
        m.oldest_ns.store(oldest.unwrap_or(0), Ordering::Relaxed);
    }
}

fn send(agent: &ureq::Agent, spec: &TargetSpec, b: &Stored) -> Answer {
    let mut req = agent.post(&spec.write_url).set("Content-Type", "text/plain; charset=utf-8");
    if let Some(t) = &spec.token {
        req = req.set("Authorization", &format!("Token {t}"));
    }
    let result = if spec.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(b.body.len() / 4), flate2::Compression::fast());
        let body = enc.write_all(&b.body).and_then(|()| enc.finish());
        match body {
            Ok(body) => req.set("Content-Encoding", "gzip").send_bytes(&body),
            Err(e) => return Answer::Retry(None, format!("gzip: {e}")),
        }
    } else {
        req.send_bytes(&b.body)
    };
    match result {
        Ok(_) => Answer::Ok,
        Err(ureq::Error::Status(status, resp)) => {
            let retry_after = resp.header("Retry-After").and_then(|v| v.trim().parse::<u64>().ok());
            let message: String = resp.into_string().unwrap_or_default().chars().take(500).collect();
            match status {
                429 | 503 => {
                    Answer::Retry(retry_after.map(|s| Duration::from_secs(s.min(3600))), format!("{status}: {message}"))
                }
                400..=499 => Answer::Poison(status, message),
                _ => Answer::Retry(None, format!("{status}: {message}")),
            }
        }
        Err(e) => Answer::Retry(None, e.to_string()),
    }
}
