//! Incidents to the central MQTT broker: every committed change on `parkwatch/<site>/incidents/<grid>`
//! (QoS 1, JSON); the active alarms as retained messages under `parkwatch/<site>/alarms/<incident-id>`
//! (cleared by an empty retained message once the incident is closed); the gateway's birth and
//! last will, retained, on `parkwatch/<site>/status`.
//!
//! The changes come from the incident store's change log, read by cursor: a broker that is slow or
//! gone for long makes this publisher lag, never lose a change, and never slows the core.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::incident::changes::ChangeLog;

/// Topics for a site.
#[derive(Debug, Clone)]
pub struct Topics {
    pub status: String,
    prefix: String,
}

impl Topics {
    /// Topics under `parkwatch/<site>/`.
    pub fn new(site: &str) -> Self {
        Self { status: format!("parkwatch/{site}/status"), prefix: format!("parkwatch/{site}") }
    }

    /// Where changes of incidents in `grid` go (`_` when the incident has no grid, like most system ones).
    pub fn incidents(&self, grid: &str) -> String {
        format!("{}/incidents/{}", self.prefix, if grid.is_empty() { "_" } else { grid })
    }

    /// The retained state of one active alarm.
    pub fn alarm(&self, id: i64) -> String {
        format!("{}/alarms/{id}", self.prefix)
    }
}

/// Counters of the central publisher.
#[derive(Debug, Default)]
pub struct CentralMetrics {
    /// Incident changes the broker acknowledged.
    pub delivered: AtomicU64,
    /// Incident changes committed in the store but not yet acknowledged by the broker.
    pub lag: AtomicU64,
    pub connected: AtomicBool,
}

/// Sink name of the central publisher's cursor in the incident database.
const SINK: &str = "central_mqtt";

/// How often the publisher's cursor is saved while it moves.
const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(500);

/// Publishes not acknowledged by the broker at most; more waits in the change log.
const IN_FLIGHT: usize = 200;

/// Publishes the incident change log until `shutdown`, then announces the gateway offline.
///
/// Reads by cursor: a change counts as delivered once the broker acknowledged its publishes, and the
/// cursor (saved in the incident database) moves only past delivered changes, in order. After a lost
/// connection or a restart the publisher starts again from the cursor: at-least-once, in order.
pub async fn run(
    mut options: MqttOptions,
    site: String,
    log: ChangeLog,
    mut committed: watch::Receiver<i64>,
    metrics: Arc<CentralMetrics>,
    shutdown: CancellationToken,
) {
    let topics = Topics::new(&site);
    let offline = serde_json::json!({ "state": "offline", "site": site }).to_string();
    options.set_last_will(LastWill::new(&topics.status, offline.clone(), QoS::AtLeastOnce, true));
    options.set_clean_session(true);
    options.set_inflight(IN_FLIGHT as u16);
    let birth =
        serde_json::json!({ "state": "online", "site": site, "version": env!("CARGO_PKG_VERSION") }).to_string();
    let mut cursor = match log.cursor(SINK) {
        Ok(Some(c)) => c,
        // A new sink starts with what is open now rather than replaying years of history.
        Ok(None) => {
            let start = log.head().unwrap_or(0).saturating_sub(1000).max(0);
            // Recorded at once: a restart before the first delivery must not take itself for a new
            // sink again and skip every change that came in between.
            if let Err(e) = log.save_cursor(SINK, start) {
                warn!(error = %e, "Cannot save the central publisher's first cursor.");
            }
            start
        }
        Err(e) => {
            warn!(error = %e, "Cannot read the central publisher's cursor; starting from the newest changes.");
            log.head().unwrap_or(0)
        }
    };
    let mut backoff = Duration::from_millis(500);
    // The cursor is saved now and then, not per acknowledgement: a crash sends at most the last
    // moment's changes again (at-least-once), and the incident database is not written per publish.
    let mut saved = cursor;
    let mut save_every = tokio::time::interval(CURSOR_SAVE_EVERY);
    save_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'connection: loop {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), IN_FLIGHT * 2);
        let mut flight = InFlight::new(cursor);
        let mut connected = false;
        loop {
            let room = connected && flight.len() < IN_FLIGHT;
            metrics.lag.store(committed.borrow().saturating_sub(cursor).max(0) as u64, Ordering::Relaxed);
            tokio::select! {
                () = shutdown.cancelled() => break 'connection,
                _ = save_every.tick(), if cursor > saved => {
                    match log.save_cursor(SINK, cursor) {
                        Ok(()) => saved = cursor,
                        Err(e) => debug!(error = %e, "Cannot save the central publisher's cursor; changes may be sent again after a restart."),
                    }
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        metrics.connected.store(true, Ordering::Relaxed);
                        backoff = Duration::from_millis(500);
                        info!(topic = %topics.status, "Central MQTT connected; publishing incidents.");
                        let _ = client.try_publish(&topics.status, QoS::AtLeastOnce, true, birth.clone());
                        flight.expect_status();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flight.sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(done) = flight.acked(ack.pkid) {
                            if done > cursor {
                                metrics.delivered.fetch_add(flight.take_delivered(), Ordering::Relaxed);
                                cursor = done;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.connected.store(false, Ordering::Relaxed);
                        debug!(error = %e, "Central MQTT connection failed; retrying.");
                        tokio::select! {
                            () = shutdown.cancelled() => break 'connection,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        // Start over from the last delivered change: nothing in flight is lost.
                        continue 'connection;
                    }
                },
                r = committed.changed(), if room && flight.next() > *committed.borrow() => {
                    if r.is_err() {
                        // The store has stopped; publish what is left, then wait for shutdown.
                        committed = watch::channel(log.head().unwrap_or(0)).1;
                    }
                }
                () = std::future::ready(()), if room && flight.next() <= *committed.borrow() => {
                    let rows = match log.after(flight.next() - 1, IN_FLIGHT - flight.len()) {
                        Ok(rows) => rows,
                        Err(e) => {
                            warn!(error = %e, "Cannot read the incident change log; will try again.");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    if rows.is_empty() {
                        // Only comments (not published) remain up to the head.
                        flight.skip_to(*committed.borrow() + 1);
                        continue;
                    }
                    for r in rows {
                        let json = serde_json::to_string(&r).unwrap_or_default();
                        let retained = if r.state == "normal" { Vec::new() } else { json.clone().into_bytes() };
                        let a = client.try_publish(topics.incidents(&r.grid), QoS::AtLeastOnce, false, json);
                        let b = client.try_publish(topics.alarm(r.id), QoS::AtLeastOnce, true, retained);
                        if a.is_err() || b.is_err() {
                            // The request queue is full; the connection is in trouble. Start over.
                            warn!("Central MQTT request queue full; reconnecting.");
                            continue 'connection;
                        }
                        flight.publish(r.seq, 2);
                    }
                }
            }
        }
    }
    metrics.connected.store(false, Ordering::Relaxed);
    if cursor > saved {
        if let Err(e) = log.save_cursor(SINK, cursor) {
            warn!(error = %e, "Cannot save the central publisher's cursor; changes may be sent again after a restart.");
        }
    }
    info!("Central MQTT publisher stopping.");
    goodbye(&options, &topics, offline).await;
}

/// A clean goodbye on a fresh connection: the retained status says offline without waiting for the will.
async fn goodbye(options: &MqttOptions, topics: &Topics, offline: String) {
    let mut options = options.clone();
    options.set_client_id(format!("{}-bye", options.client_id()));
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    if client.try_publish(&topics.status, QoS::AtLeastOnce, true, offline).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sent = false;
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::PubAck(_)) if !sent => {
                        sent = true;
                        let _ = client.try_disconnect();
                    }
                    Event::Outgoing(Outgoing::Disconnect) => break,
                    _ => {}
                }
            }
        })
        .await;
    }
    info!("Central MQTT publisher stopped.");
}

/// Publishes in flight on one connection, in the order they were queued, and which change each
/// belongs to. rumqttc sends requests in order, so the n-th outgoing publish is the n-th queued.
#[derive(Debug)]
struct InFlight {
    /// Change seqs in queue order, one entry per publish (`None` for the birth message).
    queued: VecDeque<Option<i64>>,
    /// Packet id → change seq, for publishes on the wire.
    wire: HashMap<u16, Option<i64>>,
    /// Change seq → publishes not yet acknowledged.
    open: BTreeMap<i64, u32>,
    /// Every change up to here is delivered or was never published (comments).
    delivered: i64,
    /// The highest seq queued.
    queued_up_to: i64,
    /// Changes fully acknowledged since the last `take_delivered`.
    acked_changes: u64,
}

impl InFlight {
    fn new(cursor: i64) -> Self {
        Self {
            queued: VecDeque::new(),
            wire: HashMap::new(),
            open: BTreeMap::new(),
            delivered: cursor,
            queued_up_to: cursor,
            acked_changes: 0,
        }
    }

    fn len(&self) -> usize {
        self.queued.len() + self.wire.len()
    }

    /// The next change seq to read.
    fn next(&self) -> i64 {
        self.queued_up_to + 1
    }

    fn skip_to(&mut self, next: i64) {
        self.queued_up_to = self.queued_up_to.max(next - 1);
        if self.open.is_empty() {
            self.delivered = self.delivered.max(self.queued_up_to);
        }
    }

    /// Changes fully acknowledged since the last call.
    fn take_delivered(&mut self) -> u64 {
        std::mem::take(&mut self.acked_changes)
    }

    fn expect_status(&mut self) {
        self.queued.push_back(None);
    }

    fn publish(&mut self, seq: i64, publishes: u32) {
        for _ in 0..publishes {
            self.queued.push_back(Some(seq));
        }
        *self.open.entry(seq).or_default() += publishes;
        self.queued_up_to = self.queued_up_to.max(seq);
    }

    fn sent(&mut self, pkid: u16) {
        if let Some(seq) = self.queued.pop_front() {
            self.wire.insert(pkid, seq);
        }
    }

    /// A publish was acknowledged; returns the new delivered position when it moved.
    fn acked(&mut self, pkid: u16) -> Option<i64> {
        let seq = self.wire.remove(&pkid)??;
        if let Some(n) = self.open.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&seq);
                self.acked_changes += 1;
            }
        }
        // Delivered up to just before the oldest change still open (or everything queued).
        let before = self.open.keys().next().map_or(self.queued_up_to, |first| first - 1);
        (before > self.delivered).then(|| {
            self.delivered = before;
            before
        })
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn cursor_moves_only_past_changes_fully_acknowledged_in_order() {
        let mut f = InFlight::new(10);
        f.expect_status();
        f.publish(11, 2);
        f.publish(13, 2); // 12 was a comment
        for pkid in 1..=5 {
            f.sent(pkid);
        }
        assert_eq!(f.acked(1), None, "the birth message moves nothing");
        assert_eq!(f.acked(4), None, "13 is half done and 11 not at all");
        assert_eq!(f.acked(2), None);
        assert_eq!(f.acked(3), Some(12), "11 done; 13 still open");
        assert_eq!(f.acked(5), Some(13));
        assert_eq!(f.next(), 14);
        assert_eq!(f.len(), 0);
    }
}
