//! One writer per target: drains the outbox in order to an InfluxDB v2 API (`POST /api/v2/write`),
//! on a thread of its own with blocking HTTP, so a slow store never stalls the async tasks.
//!
//! What the store answers decides what happens to the batch ([`classify`]):
//!
//! - **2xx**: the lines are delivered; once every line of the batch is, the cursor moves.
//! - **401, 403** (credentials) and **404** (organisation or bucket missing): the target **pauses**.
//!   Nothing the store could take is wrong with the data, so the batch is kept, the cursor stays, and
//!   the writer asks again every [`PAUSE_MIN`] to [`PAUSE_MAX`] until the store accepts. The target's
//!   status says `paused: credentials` (or `not found`) with the server's message, and the first
//!   refusal of each episode calls `on_pause` (wired to a `system` incident).
//! - **400, 413, 422 and any other 4xx**: some line is at fault (or the body is too large). The batch
//!   is cut in halves, recursively, down to single lines ([`Delivery`]); what the store accepts is
//!   delivered, and only the single lines it still refuses become dead letters, in the transaction
//!   that moves the cursor on.
//! - **429, 503**: wait as the server says (`Retry-After`), else back off; other **5xx** and transport
//!   errors back off exponentially with jitter, capped. Either way the same lines are sent again.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::outbox::{Cursor, DeadLetterBounds, Rejected, Stored};
use crate::core::CoreHandle;
use crate::model::time::now_ns;

/// First wait after a store refused the credentials or the bucket; doubles up to [`PAUSE_MAX`].
pub const PAUSE_MIN: Duration = Duration::from_secs(5);
/// Longest wait between two attempts while paused.
pub const PAUSE_MAX: Duration = Duration::from_secs(30);

/// Counters of one target, read by the API and `/metrics`.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    pub id: String,
    pub url: String,
    /// Write requests the target accepted (a batch cut in pieces takes several).
    pub writes: AtomicU64,
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    /// Lines the target rejected, parked as dead letters.
    pub dead_letters: AtomicU64,
    /// Dead letters (of any target) this writer dropped to keep the table within its bounds.
    pub dead_letters_dropped: AtomicU64,
    /// Last write's latency, µs.
    pub last_latency_us: AtomicU64,
    pub latency_us_sum: AtomicU64,
    pub backlog_batches: AtomicU64,
    pub backlog_bytes: AtomicU64,
    /// Creation time (UTC ns) of the oldest batch not yet confirmed; 0 when none.
    pub oldest_ns: AtomicI64,
    pub up: AtomicBool,
    pub last_error: Mutex<String>,
    /// The writer's [`WriterState`] as its `u8`: one load for `/metrics` and health reports.
    pub state: AtomicU8,
    /// Why the writer is retrying or paused and since when; `None` while it is ok.
    pub condition: Mutex<Option<Condition>>,
}

/// What a writer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WriterState {
    /// The last write was accepted (or none was needed yet).
    Ok = 0,
    /// The store is unreachable, overloaded or failing; the same lines are retried with backoff.
    Retrying = 1,
    /// The store refuses the credentials, or the organisation or bucket is missing; data is kept
    /// until someone fixes it.
    Paused = 2,
}

impl WriterState {
    /// `ok`, `retrying` or `paused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retrying => "retrying",
            Self::Paused => "paused",
        }
    }
}

/// Why a writer is not ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `credentials` or `not found` while paused; `unavailable` while retrying.
    pub reason: &'static str,
    /// The status and the server's message, or the transport error.
    pub message: String,
    /// When the writer entered this state and reason, UTC ns.
    pub since_ns: i64,
}

impl TargetMetrics {
    /// The writer's current state.
    pub fn state(&self) -> WriterState {
        match self.state.load(Ordering::Relaxed) {
            1 => WriterState::Retrying,
            2 => WriterState::Paused,
            _ => WriterState::Ok,
        }
    }

    /// One line for a person: `ok`, `retrying: unavailable (503: …)`, `paused: credentials (401: …)`.
    pub fn status(&self) -> String {
        let state = self.state();
        match self.condition.lock().ok().and_then(|c| c.clone()) {
            Some(c) if state != WriterState::Ok => format!("{}: {} ({})", state.as_str(), c.reason, c.message),
            _ => state.as_str().to_owned(),
        }
    }

    /// Records the state; `since_ns` is kept while state and reason stay the same.
    fn set_state(&self, state: WriterState, reason: &'static str, message: &str) {
        let Ok(mut c) = self.condition.lock() else { return };
        let before = self.state.swap(state as u8, Ordering::Relaxed);
        match (&mut *c, state) {
            (_, WriterState::Ok) => *c = None,
            (Some(old), _) if old.reason == reason && before == state as u8 => old.message = message.to_owned(),
            _ => *c = Some(Condition { reason, message: message.to_owned(), since_ns: now_ns() }),
        }
    }
}

/// Called (on the writer's thread) once per pause episode with a message for a person.
pub type PauseHook = Arc<dyn Fn(String) + Send + Sync>;

/// A [`PauseHook`] that raises the `system.forward.paused` incident.
pub fn pause_incident(core: CoreHandle) -> PauseHook {
    Arc::new(move |message| {
        if !core.system_incident("forward.paused", message) {
            error!("Could not raise the system incident for a paused target; the core is busy.");
        }
    })
}

/// Where and how a writer writes.
#[derive(Clone)]
pub struct TargetSpec {
    pub id: String,
    /// Full write URL with org, bucket and precision.
    pub write_url: String,
    pub token: Option<String>,
    pub gzip: bool,
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Backoff bounds while paused ([`PAUSE_MIN`], [`PAUSE_MAX`] in the daemon).
    pub pause_min: Duration,
    pub pause_max: Duration,
    /// Limits of the dead-letter table, enforced when this writer parks lines.
    pub dead_letter_bounds: DeadLetterBounds,
    /// Told when the target pauses (once per episode).
    pub on_pause: Option<PauseHook>,
}

impl std::fmt::Debug for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("TargetSpec")
            .field("id", &self.id)
            .field("write_url", &self.write_url)
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What to do after one write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The store took the lines.
    Accepted,
    /// Keep the lines and ask again slowly: the store takes nothing until someone fixes it.
    Pause(&'static str, String),
    /// Some of the lines are at fault (or there are too many): cut them to find out which.
    Split(u16, String),
    /// Send the same lines again: after what the server asked for, else after the backoff.
    Retry(Option<Duration>, String),
}

/// Decides what a store's answer means for the lines that were sent.
pub fn classify(status: u16, retry_after: Option<Duration>, message: &str) -> Action {
    match status {
        200..=399 => Action::Accepted,
        401 | 403 => Action::Pause("credentials", format!("{status}: {message}")),
        404 => Action::Pause("not found", format!("{status}: {message}")),
        429 | 503 => Action::Retry(retry_after, format!("{status}: {message}")),
        400..=499 => Action::Split(status, message.to_owned()),
        _ => Action::Retry(None, format!("{status}: {message}")),
    }
}

/// One batch on its way to a store, cut into halves (recursively, down to single lines) when the
/// store refuses some of its lines. Pure: the caller sends [`Delivery::next`] and reports the answer.
#[derive(Debug)]
pub struct Delivery<'a> {
    body: &'a [u8],
    /// Where each line starts, then the end of the body.
    starts: Vec<usize>,
    /// Line ranges still to send; the next one is last.
    todo: Vec<(usize, usize)>,
    rejected: Vec<Rejected>,
}

impl<'a> Delivery<'a> {
    /// Starts with the whole batch as one piece.
    pub fn new(body: &'a [u8]) -> Self {
        let mut starts = vec![0];
        starts.extend(body.iter().enumerate().filter(|(_, &c)| c == b'\n').map(|(i, _)| i + 1));
        if starts.last() != Some(&body.len()) {
            starts.push(body.len());
        }
        let lines = starts.len() - 1;
        let todo = if lines > 0 { vec![(0, lines)] } else { Vec::new() };
        Self { body, starts, todo, rejected: Vec::new() }
    }

    /// The piece to send next and its number of lines; `None` once every line was settled.
    pub fn next(&self) -> Option<(&'a [u8], usize)> {
        let &(from, to) = self.todo.last()?;
        Some((&self.body[self.starts[from]..self.starts[to]], to - from))
    }

    /// The store took the current piece.
    pub fn accepted(&mut self) {
        self.todo.pop();
    }

    /// The store refused the current piece: it is halved, or parked when it is a single line.
    pub fn refused(&mut self, status: u16, message: &str) {
        let Some((from, to)) = self.todo.pop() else { return };
        if to - from > 1 {
            let mid = from + (to - from) / 2;
            // The first half goes first: lines keep their order.
            self.todo.push((mid, to));
            self.todo.push((from, mid));
        } else {
            let mut body = self.body[self.starts[from]..self.starts[to]].to_vec();
            if !body.ends_with(b"\n") {
                body.push(b'\n');
            }
            self.rejected.push(Rejected { status, message: message.to_owned(), body });
        }
    }

    /// The single lines the store refused, in order.
    pub fn into_rejected(self) -> Vec<Rejected> {
        self.rejected
    }
}

/// Runs the writer until `stop`; `wake` is bumped by the appender when a batch was committed.
pub fn run(spec: TargetSpec, cursor: Cursor, metrics: Arc<TargetMetrics>, stop: Arc<AtomicBool>, wake: Arc<AtomicU64>) {
    let agent = ureq::AgentBuilder::new().timeout(spec.timeout).build();
    let mut position = match cursor.position() {
        Ok(p) => p,
        Err(e) => {
            error!(target = %spec.id, error = %e, "Cannot read the outbox cursor; writer stopped.");
            return;
        }
    };
    let mut w =
        Writer { backoff: spec.retry_min, pause: spec.pause_min, paused: false, agent, spec, metrics, stop, cursor };
    let mut seen_wake = u64::MAX;
    let mut waiting = Waiting::default();
    info!(target = %w.spec.id, url = %w.spec.write_url, from = position, "Writer started.");
    while !w.stop.load(Ordering::Relaxed) {
        waiting.update(&w.cursor, position, &w.metrics);
        // Only counted batches: what is delivered is taken off the count.
        let next = match w.cursor.next_after(position, waiting.counted_to, JOIN_BYTES) {
            Ok(n) => n,
            Err(e) => {
                warn!(target = %w.spec.id, error = %e, "Cannot read the outbox.");
                sleep(&w.stop, Duration::from_secs(1));
                continue;
            }
        };
        let Some(batch) = next else {
            // Idle: wait for the appender's signal, checking now and then.
            let n = wake.load(Ordering::Acquire);
            if n == seen_wake {
                sleep(&w.stop, Duration::from_millis(50));
            }
            seen_wake = n;
            continue;
        };
        // Stopped half-way: the cursor stays, and the whole batch goes again next time (idempotent).
        let Some(rejected) = w.deliver(&batch) else { break };
        if w.settle(&batch, &rejected) {
            position = batch.seq;
            waiting.delivered(&batch);
        }
    }
    info!(target = %w.spec.id, "Writer stopped.");
}

struct Writer {
    agent: ureq::Agent,
    spec: TargetSpec,
    metrics: Arc<TargetMetrics>,
    stop: Arc<AtomicBool>,
    cursor: Cursor,
    backoff: Duration,
    pause: Duration,
    /// In a pause episode (until the next accepted write): `on_pause` was called.
    paused: bool,
}

impl Writer {
    /// Sends every line of `batch` until each is accepted or refused on its own; returns the
    /// refused ones, or `None` when asked to stop first.
    fn deliver(&mut self, batch: &Stored) -> Option<Vec<Rejected>> {
        let mut d = Delivery::new(&batch.body);
        while let Some((piece, lines)) = d.next() {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let started = Instant::now();
            match send(&self.agent, &self.spec, piece) {
                Action::Accepted => {
                    self.accepted(started.elapsed(), piece.len(), lines);
                    d.accepted();
                }
                Action::Split(status, message) => {
                    debug!(target = %self.spec.id, seq = batch.seq, lines, status, message = %message, "Store refused lines; isolating the bad ones.");
                    d.refused(status, &message);
                }
                Action::Retry(asked, why) => self.retry(asked, why),
                Action::Pause(reason, message) => self.paused(reason, message),
            }
        }
        Some(d.into_rejected())
    }

    fn accepted(&mut self, took: Duration, bytes: usize, lines: usize) {
        let m = &self.metrics;
        let us = took.as_micros() as u64;
        m.writes.fetch_add(1, Ordering::Relaxed);
        m.lines.fetch_add(lines as u64, Ordering::Relaxed);
        m.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        m.last_latency_us.store(us, Ordering::Relaxed);
        m.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        if !m.up.swap(true, Ordering::Relaxed) {
            info!(target = %self.spec.id, "Store reachable.");
        }
        if self.paused {
            info!(target = %self.spec.id, "Store accepts writes again; target resumed.");
            self.paused = false;
        }
        m.set_state(WriterState::Ok, "", "");
        self.backoff = self.spec.retry_min;
        self.pause = self.spec.pause_min;
    }

    fn retry(&mut self, asked: Option<Duration>, why: String) {
        let wait = match asked {
            Some(w) => w,
            None => {
                let w = self.backoff + self.backoff.mul_f64(fastrand::f64() * 0.5);
                self.backoff = (self.backoff * 2).min(self.spec.retry_max);
                w
            }
        };
        let m = &self.metrics;
        m.retries.fetch_add(1, Ordering::Relaxed);
        if m.up.swap(false, Ordering::Relaxed) {
            warn!(target = %self.spec.id, error = %why, retry_in_ms = wait.as_millis() as u64, "Store write failed; retrying.");
        } else {
            debug!(target = %self.spec.id, error = %why, retry_in_ms = wait.as_millis() as u64, "Store write failed again.");
        }
        // A pause episode lasts until a write is accepted, through transient failures too.
        if m.state() != WriterState::Paused {
            m.set_state(WriterState::Retrying, "unavailable", &why);
        }
        set_error(m, why);
        sleep(&self.stop, wait);
    }

    fn paused(&mut self, reason: &'static str, message: String) {
        let wait = (self.pause + self.pause.mul_f64(fastrand::f64() * 0.2)).min(self.spec.pause_max);
        self.pause = (self.pause * 2).min(self.spec.pause_max);
        let m = &self.metrics;
        m.retries.fetch_add(1, Ordering::Relaxed);
        m.up.store(false, Ordering::Relaxed);
        m.set_state(WriterState::Paused, reason, &message);
        set_error(m, format!("paused: {reason}: {message}"));
        if self.paused {
            debug!(target = %self.spec.id, reason, message = %message, retry_in_ms = wait.as_millis() as u64, "Store still refuses; target stays paused.");
        } else {
            self.paused = true;
            error!(target = %self.spec.id, reason, message = %message, "Store refuses writes; target paused, its data is kept.");
            if let Some(hook) = &self.spec.on_pause {
                hook(format!(
                    "forwarding to \"{}\" paused ({reason}): the store answered {message}; data is kept in the outbox and sent once the store accepts it",
                    self.spec.id
                ));
            }
        }
        sleep(&self.stop, wait);
    }

    /// Moves the cursor past `batch`, parking `rejected` in the same transaction; retries the
    /// database until it works or the writer is asked to stop (then returns false).
    fn settle(&mut self, batch: &Stored, rejected: &[Rejected]) -> bool {
        let mut told = false;
        loop {
            match self.cursor.dead_letter(batch.seq, rejected, self.spec.dead_letter_bounds, now_ns()) {
                Ok(dropped) => {
                    let m = &self.metrics;
                    if let Some(r) = rejected.first() {
                        m.dead_letters.fetch_add(rejected.len() as u64, Ordering::Relaxed);
                        error!(target = %self.spec.id, seq = batch.seq, lines = rejected.len(), of = batch.lines, status = r.status, message = %r.message, "Store rejected lines; parked as dead letters, the rest delivered.");
                        set_error(m, format!("{}: {}", r.status, r.message));
                    }
                    if dropped > 0 {
                        m.dead_letters_dropped.fetch_add(dropped, Ordering::Relaxed);
                        warn!(target = %self.spec.id, dropped, "Dead letters over their bounds; the oldest were dropped.");
                    }
                    return true;
                }
                Err(e) => {
                    // Once per batch: on a full disk this fails every second until space returns.
                    if !std::mem::replace(&mut told, true) {
                        warn!(target = %self.spec.id, error = %e, "Cannot move the cursor; trying again.");
                    }
                    sleep(&self.stop, Duration::from_secs(1));
                    if self.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                }
            }
        }
    }
}

fn set_error(metrics: &TargetMetrics, e: String) {
    if let Ok(mut last) = metrics.last_error.lock() {
        *last = e;
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

/// Small batches after the cursor are joined into one request up to this size.
const JOIN_BYTES: usize = 1 << 20;

/// Every this often the backlog is counted in full, catching batches the outbox's bounds dropped.
const FULL_COUNT_EVERY: Duration = Duration::from_secs(30);

/// What waits for the target, kept without reading the whole backlog for every batch delivered
/// (which made each delivery cost more the longer the backlog): new batches are counted as they
/// appear, delivered ones taken off.
#[derive(Default)]
struct Waiting {
    counted_to: i64,
    batches: u64,
    bytes: u64,
    full_at: Option<Instant>,
}

impl Waiting {
    fn update(&mut self, cursor: &Cursor, position: i64, m: &TargetMetrics) {
        let full = self.full_at.is_none_or(|t| t.elapsed() >= FULL_COUNT_EVERY);
        let from = if full { position } else { self.counted_to.max(position) };
        let Ok((batches, bytes, last)) = cursor.waiting_after(from) else { return };
        if full {
            (self.batches, self.bytes) = (batches, bytes);
            self.full_at = Some(Instant::now());
        } else {
            self.batches += batches;
            self.bytes += bytes;
        }
        self.counted_to = last;
        m.backlog_batches.store(self.batches, Ordering::Relaxed);
        m.backlog_bytes.store(self.bytes, Ordering::Relaxed);
        let oldest = if self.batches == 0 { None } else { cursor.oldest_after(position).ok().flatten() };
        m.oldest_ns.store(oldest.unwrap_or(0), Ordering::Relaxed);
    }

    fn delivered(&mut self, batch: &Stored) {
        self.batches = self.batches.saturating_sub(batch.batches);
        self.bytes = self.bytes.saturating_sub(batch.bytes);
    }
}

fn send(agent: &ureq::Agent, spec: &TargetSpec, body: &[u8]) -> Action {
    let mut req = agent.post(&spec.write_url).set("Content-Type", "text/plain; charset=utf-8");
    if let Some(t) = &spec.token {
        req = req.set("Authorization", &format!("Token {t}"));
    }
    let result = if spec.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
        let gz = enc.write_all(body).and_then(|()| enc.finish());
        match gz {
            Ok(gz) => req.set("Content-Encoding", "gzip").send_bytes(&gz),
            Err(e) => return Action::Retry(None, format!("gzip: {e}")),
        }
    } else {
        req.send_bytes(body)
    };
    match result {
        Ok(_) => Action::Accepted,
        Err(ureq::Error::Status(status, resp)) => {
            let retry_after = resp
                .header("Retry-After")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3600)));
            let message: String = resp.into_string().unwrap_or_default().chars().take(500).collect();
            classify(status, retry_after, message.trim())
        }
        Err(e) => Action::Retry(None, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        let wait = Some(Duration::from_secs(2));
        let table: &[(u16, Option<Duration>, Action)] = &[
            (204, None, Action::Accepted),
            (401, None, Action::Pause("credentials", "401: m".into())),
            (403, None, Action::Pause("credentials", "403: m".into())),
            (404, None, Action::Pause("not found", "404: m".into())),
            (400, None, Action::Split(400, "m".into())),
            (413, None, Action::Split(413, "m".into())),
            (422, None, Action::Split(422, "m".into())),
            (409, None, Action::Split(409, "m".into())),
            (429, wait, Action::Retry(wait, "429: m".into())),
            (503, wait, Action::Retry(wait, "503: m".into())),
            (503, None, Action::Retry(None, "503: m".into())),
            (500, wait, Action::Retry(None, "500: m".into())),
            (502, None, Action::Retry(None, "502: m".into())),
        ];
        for (status, after, expected) in table {
            assert_eq!(&classify(*status, *after, "m"), expected, "status {status}");
        }
    }

    /// Delivers `body` to a store that refuses any piece holding a line with "bad"; returns the
    /// pieces sent, the accepted lines and the parked ones.
    fn deliver(body: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut d = Delivery::new(body.as_bytes());
        let (mut sent, mut accepted) = (Vec::new(), Vec::new());
        while let Some((piece, lines)) = d.next() {
            let piece = std::str::from_utf8(piece).unwrap();
            assert_eq!(piece.lines().count(), lines);
            sent.push(piece.to_owned());
            if piece.contains("bad") {
                d.refused(400, "unable to parse");
            } else {
                accepted.extend(piece.lines().map(str::to_owned));
                d.accepted();
            }
        }
        let parked = d
            .into_rejected()
            .into_iter()
            .map(|r| {
                assert_eq!((r.status, r.message.as_str()), (400, "unable to parse"));
                String::from_utf8(r.body).unwrap()
            })
            .collect();
        (sent, accepted, parked)
    }

    #[test]
    fn bisection_parks_only_the_refused_lines_and_keeps_the_order() {
        let (sent, accepted, parked) = deliver("a 1\nb 2\nbad 3\nc 4\nd 5\ne 6\nbad 7\n");
        assert_eq!(accepted, ["a 1", "b 2", "c 4", "d 5", "e 6"]);
        assert_eq!(parked, ["bad 3\n", "bad 7\n"]);
        // 7 lines: whole, then halves of 3 and 4, down to the two bad lines alone.
        assert_eq!(sent[0].lines().count(), 7);
        assert!(sent.len() <= 2 * 7, "{sent:?}");
    }

    #[test]
    fn bisection_of_clean_empty_single_and_unterminated_batches() {
        assert_eq!(deliver("a 1\nb 2\n"), (vec!["a 1\nb 2\n".into()], vec!["a 1".into(), "b 2".into()], vec![]));
        assert_eq!(deliver(""), (vec![], vec![], vec![]));
        assert_eq!(deliver("bad 1\n"), (vec!["bad 1\n".into()], vec![], vec!["bad 1\n".into()]));
        let (_, accepted, parked) = deliver("a 1\nbad 2");
        assert_eq!((accepted, parked), (vec!["a 1".to_string()], vec!["bad 2\n".to_string()]));
        let (sent, accepted, parked) = deliver("bad 1\nbad 2\nbad 3\n");
        assert!(accepted.is_empty());
        assert_eq!(parked, ["bad 1\n", "bad 2\n", "bad 3\n"]);
        assert_eq!(sent.len(), 5, "whole, 1 line, 2 lines, then each of those: {sent:?}");
    }

    #[test]
    fn state_keeps_its_start_while_the_reason_stays() {
        let m = TargetMetrics::default();
        assert_eq!(m.status(), "ok");
        m.set_state(WriterState::Paused, "credentials", "401: bad token");
        let since = m.condition.lock().unwrap().as_ref().unwrap().since_ns;
        m.set_state(WriterState::Paused, "credentials", "401: still bad");
        assert_eq!(m.condition.lock().unwrap().as_ref().unwrap().since_ns, since);
        assert_eq!(m.status(), "paused: credentials (401: still bad)");
        m.set_state(WriterState::Paused, "not found", "404: no bucket");
        assert!(m.condition.lock().unwrap().as_ref().unwrap().since_ns >= since);
        assert_eq!(m.status(), "paused: not found (404: no bucket)");
        m.set_state(WriterState::Ok, "", "");
        assert_eq!((m.state(), m.status()), (WriterState::Ok, "ok".to_string()));
        assert!(m.condition.lock().unwrap().is_none());
    }

    /// A store on loopback: answers each request with `answer(index, body)`, recording the bodies.
    struct Store {
        url: String,
        bodies: Arc<Mutex<Vec<String>>>,
    }

    impl Store {
        fn start(answer: impl Fn(usize, &str) -> (u16, &'static str) + Send + 'static) -> Self {
            use std::io::{BufRead, BufReader, Read};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/api/v2/write?org=o&bucket=b&precision=ns", listener.local_addr().unwrap());
            let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
            let log = bodies.clone();
            std::thread::spawn(move || {
                for (i, stream) in listener.incoming().enumerate() {
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        continue;
                    }
                    let body = String::from_utf8(body).unwrap();
                    let (status, reply) = answer(i, &body);
                    log.lock().unwrap().push(body);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                }
            });
            Self { url, bodies }
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_paused_target_keeps_its_batch_and_bad_lines_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut outbox = super::super::outbox::Outbox::open(&path, &["s".to_string()], 0, 0).unwrap();
        let body = "m v=1 1\nm v=2 2\nm BAD 3\nm v=4 4\nm v=5 5\nm BAD 6\n";
        let (seq, _) = outbox.append(super::super::outbox::Kind::Telemetry, 6, body.as_bytes(), 1).unwrap();
        // Two refusals of the token, then a store that cannot parse "BAD".
        let store = Store::start(|i, body| match i {
            0 | 1 => (401, "unauthorized access"),
            _ if body.contains("BAD") => (400, "unable to parse"),
            _ => (204, ""),
        });
        let metrics = Arc::new(TargetMetrics::default());
        let pauses: Arc<Mutex<Vec<String>>> = Arc::default();
        let (seen, m) = (pauses.clone(), metrics.clone());
        let spec = TargetSpec {
            id: "s".into(),
            write_url: store.url.clone(),
            token: Some("t".into()),
            gzip: false,
            timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
            pause_min: Duration::from_millis(20),
            pause_max: Duration::from_millis(50),
            dead_letter_bounds: DeadLetterBounds { max_count: 100, max_bytes: 1 << 20 },
            on_pause: Some(Arc::new(move |message| seen.lock().unwrap().push(format!("{} / {message}", m.status())))),
        };
        let cursor = Cursor::open(&path, "s").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (metrics, stop) = (metrics.clone(), stop.clone());
            std::thread::spawn(move || run(spec, cursor, metrics, stop, Arc::default()))
        };
        let reader = Cursor::open(&path, "s").unwrap();
        wait_for("the batch to be settled", || reader.position().unwrap() == seq);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();

        let bodies = store.bodies.lock().unwrap().clone();
        assert_eq!(&bodies[..3], [body, body, body], "the paused batch was kept whole");
        let pauses = pauses.lock().unwrap().clone();
        assert_eq!(pauses.len(), 1, "one incident per pause episode: {pauses:?}");
        assert!(pauses[0].starts_with("paused: credentials (401: unauthorized access) / "), "{pauses:?}");
        let delivered: Vec<&str> = bodies[3..].iter().filter(|b| !b.contains("BAD")).flat_map(|b| b.lines()).collect();
        assert_eq!(delivered, ["m v=1 1", "m v=2 2", "m v=4 4", "m v=5 5"]);
        let letters = reader.dead_letters(10).unwrap();
        assert_eq!(letters.len(), 2);
        assert!(letters.iter().all(|l| l.0 == seq && l.2 == 400 && l.3 == "unable to parse"));
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.lines.load(Ordering::Relaxed), 4);
        assert_eq!(metrics.state(), WriterState::Ok);
        assert!(metrics.retries.load(Ordering::Relaxed) >= 2);
    }
}
