//! The MQTT source: one task per broker connection, mapping subscribed messages to samples and events.
//!
//! Back-pressure: the task awaits room in the core channel before it polls the connection again, so a
//! slow core slows reading from the broker instead of growing a queue. With QoS 1 a message is
//! acknowledged only once the batch holding it is durable (its samples in the outbox, the incident
//! changes it caused in the incident store); a crash before that means the broker delivers it again
//! (at-least-once). A message that cannot be used (too large, malformed) is rejected, counted and
//! acknowledged: a poison message costs one message, never the connection.

pub mod decode;
pub mod topic;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, PubAck, PubRec, Publish, QoS, Request, SubscribeFilter,
    TlsConfiguration, Transport,
};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::decode::{Decoder, Reject};
use crate::config;
use crate::metrics::{add, Metrics, RejectRecord, SubscriptionMetrics};
use crate::model::pool::SamplePool;
use crate::model::time::{fmt_ns, now_ns};
use crate::model::{Ack, Batch, ProvisionRequest, Registry, SharedRegistry};

/// A broker connection that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker {broker}: cannot read {file}: {source}")]
    ReadFile { broker: String, file: String, source: std::io::Error },
    #[error("broker {broker}: {file} holds no usable {what}")]
    Pem { broker: String, file: String, what: &'static str },
    #[error("broker {broker}: TLS setup failed: {source}")]
    Tls { broker: String, source: rustls::Error },
    #[error("subscription {topic:?}: {message}")]
    Subscription { topic: String, message: String },
}

/// Everything one broker task needs.
pub struct MqttSource {
    broker_index: usize,
    options: MqttOptions,
    reconnect_min: Duration,
    reconnect_max: Duration,
    subs: Vec<SubState>,
    registry: SharedRegistry,
    /// The registry the decoders' topic caches were resolved against.
    current: Arc<Registry>,
    metrics: Arc<Metrics>,
    pool: Arc<SamplePool>,
    tx: mpsc::Sender<Batch>,
    batch_samples: usize,
    /// The broker's in-flight window: with this many messages unacknowledged it sends no more.
    inflight: usize,
    /// How long the next read waits after a small one with nothing unacknowledged.
    linger: Duration,
    /// This broker's subscriptions after each reload.
    updates: Option<watch::Receiver<Arc<Vec<config::Subscription>>>>,
    provision: Option<mpsc::Sender<ProvisionRequest>>,
}

struct SubState {
    metrics: Arc<SubscriptionMetrics>,
    /// The subscription as configured, to tell on a reload whether it changed.
    written: String,
    /// Unknown devices are announced for provisioning.
    provisions: bool,
    decoder: Decoder,
    qos: QoS,
    last_log: Option<Instant>,
    suppressed: u64,
    /// Rejects kept in the reject log during the current second (the rest are only counted).
    recorded: (Option<Instant>, u32),
}

impl SubState {
    fn new(s: &config::Subscription, metrics: &Metrics) -> Result<Self, MqttError> {
        let decoder = Decoder::new(s).map_err(|message| MqttError::Subscription { topic: s.topic.clone(), message })?;
        Ok(Self {
            metrics: metrics.subscription(&s.broker, &s.topic),
            written: format!("{s:?}"),
            provisions: s.provision.is_some(),
            decoder,
            qos: if s.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
            last_log: None,
            suppressed: 0,
            recorded: (None, 0),
        })
    }

    fn filter(&self) -> SubscribeFilter {
        SubscribeFilter::new(self.decoder.pattern().filter().to_owned(), self.qos)
    }
}

/// Resolves when a reload changed the subscriptions; never without `updates` or once the sender is gone.
async fn changed(updates: &mut Option<watch::Receiver<Arc<Vec<config::Subscription>>>>) -> Option<()> {
    match updates {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// How often a subscription may log a reject; the rest are counted and summarised.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Rejects a subscription keeps in the reject log per second; the rest are counted only.
const REJECTS_KEPT_PER_SEC: u32 = 20;

/// Shared pieces every source task gets.
#[derive(Clone)]
pub struct SourceContext {
    pub registry: SharedRegistry,
    /// Where unknown devices of provisioning subscriptions are announced.
    pub provision: Option<mpsc::Sender<ProvisionRequest>>,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<SamplePool>,
    pub tx: mpsc::Sender<Batch>,
    pub batch_samples: usize,
}

impl MqttSource {
    /// Prepares the task for broker `broker_index` of `config` with the subscriptions on it.
    ///
    /// # Errors
    /// TLS files that cannot be read or parsed, or a topic that does not parse.
    pub fn new(config: &config::Config, broker_index: usize, ctx: SourceContext) -> Result<Self, MqttError> {
        let b = &config.mqtt.brokers[broker_index];
        let client_id = b.client_id.clone().unwrap_or_else(|| format!("parkwatch-{}-{}", config.site.id, b.id));
        let mut options = options(b, client_id)?;
        options.set_clean_session(!b.persistent_session).set_manual_acks(true);
        let mut subs = Vec::new();
        for sub in config.mqtt.subscriptions.iter().filter(|s| s.broker == b.id) {
            subs.push(SubState::new(sub, &ctx.metrics)?);
        }
        Ok(Self {
            broker_index,
            options,
            reconnect_min: Duration::from_millis(b.reconnect_min_ms),
            reconnect_max: Duration::from_millis(b.reconnect_max_ms),
            subs,
            current: ctx.registry.load(),
            registry: ctx.registry,
            metrics: ctx.metrics,
            pool: ctx.pool,
            tx: ctx.tx,
            batch_samples: ctx.batch_samples,
            inflight: usize::from(b.inflight),
            linger: Duration::from_millis(b.linger_ms),
            updates: None,
            provision: ctx.provision,
        })
    }

    /// Takes this broker's subscriptions from `updates` whenever a reload changes them.
    #[must_use]
    pub fn with_updates(mut self, updates: watch::Receiver<Arc<Vec<config::Subscription>>>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Replaces the subscriptions with the reloaded ones: unchanged ones keep their topic caches,
    /// filters that went are unsubscribed and new ones subscribed on the open connection (a new
    /// connection subscribes whatever is current).
    fn resubscribe(&mut self, client: &AsyncClient, broker: &str) {
        let Some(updates) = self.updates.as_mut() else { return };
        let wanted = updates.borrow_and_update().clone();
        let before: Vec<SubscribeFilter> = self.subs.iter().map(SubState::filter).collect();
        let mut old = std::mem::take(&mut self.subs);
        for sub in wanted.iter() {
            let written = format!("{sub:?}");
            match old.iter().position(|o| o.written == written) {
                Some(i) => self.subs.push(old.swap_remove(i)),
                None => match SubState::new(sub, &self.metrics) {
                    Ok(s) => self.subs.push(s),
                    Err(e) => warn!(broker, error = %e, "Reloaded subscription not taken."),
                },
            }
        }
        let after: Vec<SubscribeFilter> = self.subs.iter().map(SubState::filter).collect();
        let gone: Vec<String> =
            before.iter().filter(|b| !after.iter().any(|a| a.path == b.path)).map(|b| b.path.clone()).collect();
        let new: Vec<SubscribeFilter> = after.iter().filter(|a| !before.contains(a)).cloned().collect();
        for path in &gone {
            if let Err(e) = client.try_unsubscribe(path.clone()) {
                warn!(broker, filter = %path, error = %e, "Could not queue an unsubscribe.");
            }
        }
        if !new.is_empty() {
            if let Err(e) = client.try_subscribe_many(new.clone()) {
                warn!(broker, error = %e, "Could not queue the new subscriptions.");
            }
        }
        info!(
            broker,
            subscriptions = self.subs.len(),
            added = new.len(),
            removed = gone.len(),
            "Subscriptions reloaded."
        );
    }

    /// Runs until `shutdown`, reconnecting with capped exponential backoff and jitter.
    ///
    /// Messages whose batch could not be stored are not acknowledged. The broker sends them again only
    /// on a new session, so once a later batch is stored (storage works again), or after a capped,
    /// growing delay, the task opens a new session on a fresh connection to have them delivered again.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let broker = self.metrics.brokers[self.broker_index].id.clone();
        // What the last SUBSCRIBE asked for, to name refused filters in its SUBACK.
        let mut filters: Vec<SubscribeFilter> = Vec::new();
        let mut batch = Batch::new(self.pool.take(), Vec::new());
        let mut rejects: Vec<Reject> = Vec::new();
        let mut backoff = self.reconnect_min;
        let mut redeliver_wait = REDELIVER_MIN;
        loop {
            let (client, mut eventloop) = AsyncClient::new(self.options.clone(), 16 * 1024);
            let mut pending_acks: Vec<Unacked> = Vec::new();
            // Acknowledgements due, written to the connection together.
            let mut due: Vec<Unacked> = Vec::new();
            // Messages handed over, waiting for their batch to become durable before they are
            // acknowledged, in order. Bounded by the core channel and the broker's in-flight window.
            let mut waiting = Waiting::default();
            // When messages were first left unacknowledged because their batch was not stored.
            let mut undelivered: Option<tokio::time::Instant> = None;
            let mut stored_since = false;
            let mut check = tokio::time::interval(Duration::from_millis(500));
            // Set after a small read: the next one waits until then (see `linger_ms`).
            let mut resume: Option<tokio::time::Instant> = None;
            // Messages since the last hand-over.
            let mut read = 0usize;
            let reopen = loop {
                stored_since |= self.ack_ready(&mut waiting, &mut due, &mut undelivered);
                write_acks(&mut eventloop, &mut due).await;
                if let Some(since) = undelivered {
                    if stored_since || since.elapsed() >= redeliver_wait {
                        break true;
                    }
                }
                let polled = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break false,
                    done = front_durable(&mut waiting) => {
                        stored_since |= self.ack(done, &mut due, &mut undelivered);
                        continue;
                    }
                    _ = check.tick(), if undelivered.is_some() => continue,
                    Some(()) = changed(&mut self.updates) => {
                        self.resubscribe(&client, &broker);
                        continue;
                    }
                    () = linger_until(resume), if resume.is_some() => {
                        resume = None;
                        continue;
                    }
                    polled = eventloop.poll(), if resume.is_none() => polled,
                };
                match polled {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        self.handle(&publish, &mut batch, &mut rejects);
                        read += 1;
                        if publish.qos != QoS::AtMostOnce {
                            pending_acks.push(Unacked { pkid: publish.pkid, qos: publish.qos });
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        let m = &self.metrics.brokers[self.broker_index];
                        m.connected.store(true, Ordering::Relaxed);
                        add(&m.connections, 1);
                        backoff = self.reconnect_min;
                        info!(broker = %broker, session_present = ack.session_present, "Connected to MQTT broker.");
                        filters = self.subs.iter().map(SubState::filter).collect();
                        if !filters.is_empty() {
                            if let Err(e) = client.try_subscribe_many(filters.clone()) {
                                warn!(broker = %broker, error = %e, "Could not queue subscriptions.");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        for (code, f) in ack.return_codes.iter().zip(&filters) {
                            if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                                warn!(broker = %broker, filter = %f.path, "Broker refused the subscription.");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let m = &self.metrics.brokers[self.broker_index];
                        let was_connected = m.connected.swap(false, Ordering::Relaxed);
                        add(&m.connection_errors, 1);
                        m.set_error(e.to_string());
                        if self.flush(&mut batch, &mut pending_acks, &mut waiting).await.is_err() {
                            break false;
                        }
                        // Unacknowledged messages come again on the next session; their acks died with
                        // the connection.
                        pending_acks.clear();
                        waiting.clear();
                        undelivered = None;
                        let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
                        let wait = backoff + jitter;
                        if was_connected {
                            warn!(broker = %broker, error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection lost.");
                        } else {
                            debug!(broker = %broker, error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection failed.");
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => break false,
                            () = tokio::time::sleep(wait) => {}
                        }
                        backoff = (backoff * 2).min(self.reconnect_max);
                        continue;
                    }
                }
                // Hand over what one network read produced, or a full batch; never wait for more input
                // while holding samples.
                if eventloop.state.events.is_empty() || batch.len() >= self.batch_samples {
                    let small = read < READ_MAX;
                    read = 0;
                    if self.flush(&mut batch, &mut pending_acks, &mut waiting).await.is_err() {
                        break false;
                    }
                    // At a steady rate each message would be its own read, wake-up and hand-over;
                    // pausing a moment lets the socket gather a handful. Never while messages wait
                    // for acknowledgement: they hold the broker's in-flight window.
                    if small && waiting.is_empty() && !self.linger.is_zero() {
                        resume = Some(tokio::time::Instant::now() + self.linger);
                    }
                }
            };
            if reopen {
                // Hand over what was read (it is not acknowledged on this connection either way), then
                // leave without DISCONNECT so the broker keeps the session and its unacknowledged messages.
                let _ = self.flush(&mut batch, &mut pending_acks, &mut waiting).await;
                self.metrics.brokers[self.broker_index].connected.store(false, Ordering::Relaxed);
                add(&self.metrics.brokers[self.broker_index].redelivery_sessions, 1);
                if stored_since {
                    info!(broker = %broker, "Storage works again; reconnecting to receive the unacknowledged messages again.");
                    redeliver_wait = REDELIVER_MIN;
                } else {
                    debug!(broker = %broker, "Reconnecting to receive unacknowledged messages again.");
                    redeliver_wait = (redeliver_wait * 2).min(REDELIVER_MAX);
                }
                drop(client);
                drop(eventloop);
                continue;
            }
            self.leave(&client, &mut eventloop, &mut batch, &mut pending_acks, &mut waiting).await;
            break;
        }
        info!(broker = %broker, "MQTT source stopped.");
    }

    /// Shutdown: hand over what was read, acknowledge what became durable, leave the session cleanly.
    async fn leave(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut rumqttc::EventLoop,
        batch: &mut Batch,
        pending_acks: &mut Vec<Unacked>,
        waiting: &mut Waiting,
    ) {
        let _ = self.flush(batch, pending_acks, waiting).await;
        let mut undelivered = None;
        let mut due = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !waiting.is_empty() {
                let done = front_durable(waiting).await;
                self.ack(done, &mut due, &mut undelivered);
                write_acks(eventloop, &mut due).await;
            }
        })
        .await;
        self.metrics.brokers[self.broker_index].connected.store(false, Ordering::Relaxed);
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Marks the messages of a settled batch due for acknowledgement if it is durable; otherwise
    /// leaves them to be delivered again and counts them. Returns whether it was durable.
    fn ack(
        &self,
        (durable, acks): (bool, Vec<Unacked>),
        due: &mut Vec<Unacked>,
        undelivered: &mut Option<tokio::time::Instant>,
    ) -> bool {
        if !durable {
            add(&self.metrics.brokers[self.broker_index].unacked, acks.len() as u64);
            undelivered.get_or_insert_with(tokio::time::Instant::now);
            return false;
        }
        due.extend(acks);
        true
    }

    /// Marks due, in order, the messages whose batches are already settled, without waiting.
    /// Returns whether any of them was durable.
    fn ack_ready(
        &self,
        waiting: &mut Waiting,
        due: &mut Vec<Unacked>,
        undelivered: &mut Option<tokio::time::Instant>,
    ) -> bool {
        let mut stored = false;
        while let Some((rx, _)) = waiting.batches.front_mut() {
            let durable = match rx {
                None => true,
                Some(rx) => match rx.try_recv() {
                    Ok(()) => true,
                    Err(oneshot::error::TryRecvError::Empty) => return stored,
                    Err(oneshot::error::TryRecvError::Closed) => false,
                },
            };
            stored |= self.ack((durable, waiting.pop()), due, undelivered);
        }
        stored
    }

    fn handle(&mut self, publish: &Publish, batch: &mut Batch, rejects: &mut Vec<Reject>) {
        let topic = publish.topic.as_str();
        let now = now_ns();
        {
            // A reload or a provisioned device replaced the registry: topics resolve afresh.
            let reg = self.registry.peek();
            if !Arc::ptr_eq(&reg, &self.current) {
                self.current = Arc::clone(&reg);
                for s in &mut self.subs {
                    s.decoder.forget();
                }
            }
        }
        let Some(sub) = self.subs.iter_mut().find(|s| s.decoder.pattern().matches(topic).is_some()) else {
            return;
        };
        let m = &*sub.metrics;
        add(&m.messages, 1);
        let samples_before = batch.samples.len();
        let events_before = batch.events.len();
        sub.decoder.decode(&self.current, topic, &publish.payload, now, batch, rejects);
        let samples = batch.samples.len() - samples_before;
        let events = batch.events.len() - events_before;
        if samples > 0 {
            add(&m.samples, samples as u64);
        }
        if events > 0 {
            add(&m.events, events as u64);
        }
        if sub.provisions && rejects.iter().any(|r| r.reason == decode::RejectReason::UnknownDevice) {
            let caps = sub.decoder.pattern().matches(topic);
            if let (Some(tx), Some((Some(device), Some(grid)))) = (&self.provision, caps.map(|c| (c.device, c.grid))) {
                // A full queue drops the request: the device's next message asks again.
                let _ = tx.try_send(ProvisionRequest {
                    broker: m.broker.clone(),
                    topic: m.topic.clone(),
                    device: device.to_owned(),
                    grid: grid.to_owned(),
                });
            }
        }
        for r in rejects.drain(..) {
            add(&m.rejects[r.reason.index()], 1);
            let now_instant = Instant::now();
            if sub.last_log.is_none_or(|t| now_instant.duration_since(t) >= REJECT_LOG_EVERY) {
                warn!(
                    broker = %m.broker, subscription = %m.topic, topic, reason = r.reason.as_str(),
                    detail = %r.detail, suppressed = sub.suppressed, "Rejected MQTT input."
                );
                sub.last_log = Some(now_instant);
                sub.suppressed = 0;
            } else {
                sub.suppressed += 1;
            }
            // A flood of bad messages must cost little: every one is counted, a few a second are kept.
            match &mut sub.recorded {
                (Some(start), n) if now_instant.duration_since(*start) < Duration::from_secs(1) => {
                    if *n >= REJECTS_KEPT_PER_SEC {
                        continue;
                    }
                    *n += 1;
                }
                r => *r = (Some(now_instant), 1),
            }
            let excerpt = &publish.payload[..publish.payload.len().min(160)];
            self.metrics.rejects.push(RejectRecord {
                at: fmt_ns(now),
                broker: m.broker.clone(),
                subscription: m.topic.clone(),
                topic: topic.chars().take(256).collect(),
                reason: r.reason.as_str(),
                detail: r.detail,
                payload: String::from_utf8_lossy(excerpt).into_owned(),
            });
        }
    }

    /// Hands the batch to the core (waiting for room: back-pressure). Its QoS 1 messages are
    /// acknowledged once the batch is durable (see `ack_ready`).
    async fn flush(&self, batch: &mut Batch, acks: &mut Vec<Unacked>, waiting: &mut Waiting) -> Result<(), ()> {
        let mut durable = None;
        if !batch.is_empty() {
            let mut full = std::mem::replace(batch, Batch::new(self.pool.take(), Vec::new()));
            if !acks.is_empty() {
                // A full window stops the broker until these are acknowledged: they are stored
                // now rather than gathered with messages that cannot come.
                let unacked = acks.len() + waiting.messages;
                let (ack, rx) = Ack::with_urgency(unacked >= self.inflight);
                full.ack = Some(ack);
                durable = Some(rx);
            }
            if self.tx.send(full).await.is_err() {
                return Err(());
            }
        }
        if !acks.is_empty() {
            // Messages that produced nothing (all rejected) are done now, but wait their turn.
            waiting.push(durable, std::mem::take(acks));
        }
        Ok(())
    }
}

/// rumqttc takes at most this many packets from the socket per read. A read that brought fewer
/// found the socket empty, so the next may wait (`linger_ms`); a full one may have left more.
const READ_MAX: usize = 9;

/// Completes at `at`; pending forever without one.
async fn linger_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Batches handed over whose messages wait for an acknowledgement, oldest first, and how many
/// messages they hold (compared with the broker's window on every hand-over).
#[derive(Default)]
struct Waiting {
    batches: VecDeque<(Option<oneshot::Receiver<()>>, Vec<Unacked>)>,
    messages: usize,
}

impl Waiting {
    fn push(&mut self, durable: Option<oneshot::Receiver<()>>, acks: Vec<Unacked>) {
        self.messages += acks.len();
        self.batches.push_back((durable, acks));
    }

    /// Takes the oldest batch's messages off the queue.
    fn pop(&mut self) -> Vec<Unacked> {
        let acks = self.batches.pop_front().map(|(_, a)| a).unwrap_or_default();
        self.messages -= acks.len();
        acks
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.messages = 0;
    }
}

/// A received message still to be acknowledged: only what the acknowledgement needs, so a
/// payload is not kept alive while its batch becomes durable.
#[derive(Clone, Copy, Debug)]
struct Unacked {
    pkid: u16,
    qos: QoS,
}

/// Writes the due acknowledgements into the connection's buffer and sends them with one flush.
/// Through the client every PUBACK would be its own request, event-loop turn and write system
/// call (10,000 a second at 10k msg/s). Without a connection they are dropped: the broker delivers
/// those messages again on the next session, so at-least-once holds.
async fn write_acks(eventloop: &mut rumqttc::EventLoop, due: &mut Vec<Unacked>) {
    if due.is_empty() {
        return;
    }
    let limit = Duration::from_secs(eventloop.network_options.connection_timeout());
    let state = &mut eventloop.state;
    let Some(network) = eventloop.network.as_mut() else {
        due.clear();
        return;
    };
    let written = async {
        for u in due.drain(..) {
            let request = match u.qos {
                QoS::AtMostOnce => continue,
                QoS::AtLeastOnce => Request::PubAck(PubAck::new(u.pkid)),
                QoS::ExactlyOnce => Request::PubRec(PubRec::new(u.pkid)),
            };
            if let Some(packet) = state.handle_outgoing_packet(request)? {
                network.write(packet).await?;
            }
        }
        network.flush().await
    };
    match tokio::time::timeout(limit, written).await {
        Ok(Ok(())) => {}
        // The connection is failing; the next poll reports it and a new session redelivers.
        Ok(Err(e)) => debug!(error = %e, "Could not send acknowledgements."),
        Err(_) => debug!("Sending acknowledgements timed out."),
    }
    due.clear();
    // The state records each as an outgoing event; nobody reads those, and the read loop takes a
    // non-empty event queue for more input still to come.
    eventloop.state.events.retain(|e| !matches!(e, Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))));
}

/// First and longest wait before a new session is opened to receive unacknowledged messages again
/// while storage has not been seen working.
const REDELIVER_MIN: Duration = Duration::from_secs(2);
const REDELIVER_MAX: Duration = Duration::from_secs(60);

/// Waits until the oldest handed-over batch is durable (`true`) or dropped (`false`) and takes it off
/// the queue; pending forever when none waits. Cancel-safe: the entry is taken only on completion.
async fn front_durable(waiting: &mut Waiting) -> (bool, Vec<Unacked>) {
    let durable = match waiting.batches.front_mut() {
        Some((Some(rx), _)) => rx.await.is_ok(),
        Some((None, _)) => true,
        None => std::future::pending().await,
    };
    (durable, waiting.pop())
}

/// Connection options for a configured broker: address, keep-alive, credentials, TLS, packet size.
///
/// # Errors
/// TLS files that cannot be read or parsed.
pub fn options(b: &config::Broker, client_id: String) -> Result<MqttOptions, MqttError> {
    let mut options = MqttOptions::new(client_id, b.host.clone(), b.port);
    options
        .set_keep_alive(Duration::from_secs(b.keep_alive_secs))
        .set_max_packet_size(b.max_packet_bytes, b.max_packet_bytes);
    if let Some(user) = &b.username {
        options.set_credentials(user.clone(), b.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &b.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(&b.id, tls)?))));
    }
    Ok(options)
}

fn read(broker: &str, file: &std::path::Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(file).map_err(|source| MqttError::ReadFile {
        broker: broker.to_owned(),
        file: file.display().to_string(),
        source,
    })
}

fn tls_config(broker: &str, tls: &config::Tls) -> Result<rustls::ClientConfig, MqttError> {
    let pem_err = |file: &std::path::Path, what| MqttError::Pem {
        broker: broker.to_owned(),
        file: file.display().to_string(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = read(broker, &tls.ca_file)?;
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.map_err(|_| pem_err(&tls.ca_file, "certificate"))?;
        roots.add(cert).map_err(|source| MqttError::Tls { broker: broker.to_owned(), source })?;
    }
    if roots.is_empty() {
        return Err(pem_err(&tls.ca_file, "certificate"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| MqttError::Tls { broker: broker.to_owned(), source })?
        .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = rustls_pemfile::certs(&mut read(broker, cert_file)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| pem_err(cert_file, "certificate"))?;
            let key = rustls_pemfile::private_key(&mut read(broker, key_file)?.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| pem_err(key_file, "private key"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|source| MqttError::Tls { broker: broker.to_owned(), source })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
