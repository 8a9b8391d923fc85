//! Counters shared between the running tasks and `/metrics`, and the log of recent rejects.
//!
//! Counters are relaxed atomics: each is written by one task and read by the API, and no reader needs
//! them consistent with each other.
//!
//! Owns: the ingestion counters and the reject log. May import: `model`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::model::reject::RejectReason;

/// All counters of one running gateway.
#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    pub brokers: Vec<BrokerMetrics>,
    /// Grows when a reload adds a subscription; a removed one keeps its counters (they never go back).
    pub subscriptions: std::sync::RwLock<Vec<std::sync::Arc<SubscriptionMetrics>>>,
    pub core: CoreMetrics,
    pub rejects: RejectLog,
}

impl Metrics {
    /// The counters of subscription `topic` on `broker`, made on first use.
    pub fn subscription(&self, broker: &str, topic: &str) -> std::sync::Arc<SubscriptionMetrics> {
        let mut subs = self.subscriptions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = subs.iter().find(|s| s.broker == broker && s.topic == topic) {
            return s.clone();
        }
        let s = std::sync::Arc::new(SubscriptionMetrics::new(broker.to_owned(), topic.to_owned()));
        subs.push(s.clone());
        s
    }

    /// The counters of every subscription so far.
    pub fn subscriptions(&self) -> Vec<std::sync::Arc<SubscriptionMetrics>> {
        self.subscriptions.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Counters for these brokers and subscriptions (`(broker id, topic)`), keeping `rejects_kept` rejects.
    pub fn new(brokers: Vec<String>, subscriptions: Vec<(String, String)>, rejects_kept: usize) -> Self {
        Self {
            started: Instant::now(),
            brokers: brokers.into_iter().map(BrokerMetrics::new).collect(),
            subscriptions: std::sync::RwLock::new(
                subscriptions
                    .into_iter()
                    .map(|(broker, topic)| std::sync::Arc::new(SubscriptionMetrics::new(broker, topic)))
                    .collect(),
            ),
            core: CoreMetrics::default(),
            rejects: RejectLog::new(rejects_kept),
        }
    }
}

/// Connection state of one MQTT broker.
#[derive(Debug)]
pub struct BrokerMetrics {
    pub id: String,
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub connection_errors: AtomicU64,
    /// QoS 1 messages left unacknowledged because their batch could not be stored.
    pub unacked: AtomicU64,
    /// New sessions opened to have unacknowledged messages delivered again.
    pub redelivery_sessions: AtomicU64,
    /// Why the last connection attempt failed or the connection was lost.
    pub last_error: Mutex<String>,
}

impl BrokerMetrics {
    fn new(id: String) -> Self {
        Self {
            id,
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            redelivery_sessions: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }

    /// Records why the connection failed (failure path only: it takes a lock).
    pub fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// Traffic of one subscription.
#[derive(Debug)]
pub struct SubscriptionMetrics {
    pub broker: String,
    pub topic: String,
    pub messages: AtomicU64,
    pub samples: AtomicU64,
    pub events: AtomicU64,
    pub rejects: [AtomicU64; RejectReason::ALL.len()],
}

impl SubscriptionMetrics {
    fn new(broker: String, topic: String) -> Self {
        Self {
            broker,
            topic,
            messages: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            events: AtomicU64::new(0),
            rejects: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Rejects counted for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejects[reason.index()].load(Ordering::Relaxed)
    }
}

/// Work done by the core task.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    pub events: AtomicU64,
    /// Samples older than the point's current value: kept out of the latest value, counted here.
    pub out_of_order: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One rejected message or value, as `GET /api/v1/rejects` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RejectRecord {
    pub at: String,
    pub broker: String,
    pub subscription: String,
    pub topic: String,
    pub reason: &'static str,
    pub detail: String,
    /// The start of the payload, lossily decoded, to recognise the sender's mistake.
    pub payload: String,
}

/// The last N rejects, oldest dropped first. Only the reject path takes its lock.
#[derive(Debug)]
pub struct RejectLog {
    keep: usize,
    records: Mutex<VecDeque<RejectRecord>>,
}

impl RejectLog {
    fn new(keep: usize) -> Self {
        Self { keep, records: Mutex::new(VecDeque::with_capacity(keep.min(1024))) }
    }

    /// Keeps a reject, dropping the oldest beyond the limit.
    pub fn push(&self, record: RejectRecord) {
        if self.keep == 0 {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= self.keep {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The kept rejects, newest first.
    pub fn recent(&self) -> Vec<RejectRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().rev().cloned().collect()
    }
}
