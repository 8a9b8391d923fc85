//! The core task: the one owner of point state (latest value, quality, timestamp per point) and of the
//! recent events. Sources feed it batches through a bounded channel; the API asks it questions through
//! a second channel. Nothing else touches the state, so the hot path takes no lock.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::metrics::{add, Metrics};
use crate::model::{Batch, DeviceId, Event, GridId, PointId, Quality, Registry};
use crate::source::pool::SamplePool;

/// The latest state of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointState {
    pub value: f64,
    /// UTC ns of the value; 0 until the first sample.
    pub ts: i64,
    pub quality: Quality,
    pub has_value: bool,
}

impl Default for PointState {
    fn default() -> Self {
        Self { value: 0.0, ts: 0, quality: Quality::Bad, has_value: false }
    }
}

/// Which points a query wants; `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct PointFilter {
    pub grid: Option<GridId>,
    pub device: Option<DeviceId>,
    pub category: Option<String>,
}

/// A question for the core.
#[derive(Debug)]
pub enum Query {
    /// Points that have a value and match the filter.
    Points { filter: PointFilter, reply: oneshot::Sender<Vec<(PointId, PointState)>> },
    /// Recent events, newest first.
    Events { limit: usize, reply: oneshot::Sender<Vec<Event>> },
}

/// The core task has stopped and answers no more.
#[derive(Debug, thiserror::Error)]
#[error("the core task has stopped")]
pub struct CoreStopped;

/// A cheap handle to ask the core questions.
#[derive(Debug, Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Query>,
}

impl CoreHandle {
    /// Latest states of the points matching `filter`.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn points(&self, filter: PointFilter) -> Result<Vec<(PointId, PointState)>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Points { filter, reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// The `limit` most recent events, newest first.
    ///
    /// # Errors
    /// [`CoreStopped`] once the core has shut down.
    pub async fn events(&self, limit: usize) -> Result<Vec<Event>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Events { limit, reply }).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }
}

/// Point state and the recent events.
pub struct Core {
    registry: Arc<Registry>,
    states: Vec<PointState>,
    events: VecDeque<Event>,
    events_kept: usize,
    metrics: Arc<Metrics>,
    pool: Arc<SamplePool>,
}

impl Core {
    /// A core for every point of `registry`, keeping `events_kept` recent events.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, pool: Arc<SamplePool>, events_kept: usize) -> Self {
        Self {
            states: vec![PointState::default(); registry.points.len()],
            registry,
            events: VecDeque::with_capacity(events_kept.min(4096)),
            events_kept,
            metrics,
            pool,
        }
    }

    /// Applies one batch: newer samples replace the latest value, older ones are counted and skipped.
    pub fn apply(&mut self, batch: Batch) {
        let mut out_of_order = 0u64;
        for s in &batch.samples {
            let Some(state) = self.states.get_mut(s.point.0 as usize) else {
                continue;
            };
            if state.has_value && s.ts < state.ts {
                out_of_order += 1;
                continue;
            }
            *state = PointState { value: s.value, ts: s.ts, quality: s.quality, has_value: true };
        }
        let m = &self.metrics.core;
        add(&m.batches, 1);
        add(&m.samples, batch.samples.len() as u64);
        if out_of_order > 0 {
            add(&m.out_of_order, out_of_order);
        }
        if !batch.events.is_empty() {
            add(&m.events, batch.events.len() as u64);
            for e in batch.events {
                if self.events.len() >= self.events_kept {
                    self.events.pop_front();
                }
                if self.events_kept > 0 {
                    self.events.push_back(e);
                }
            }
        }
        self.pool.put(batch.samples);
    }

    /// Answers one query.
    pub fn answer(&self, query: Query) {
        match query {
            Query::Points { filter, reply } => {
                let reg = &self.registry;
                let out = self
                    .states
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.has_value)
                    .map(|(i, s)| (PointId(i as u32), *s))
                    .filter(|(id, _)| {
                        let device_id = reg.point(*id).device;
                        let device = reg.device(device_id);
                        filter.device.is_none_or(|d| d == device_id)
                            && filter.grid.is_none_or(|g| g == device.grid)
                            && filter.category.as_ref().is_none_or(|c| *c == device.category)
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Query::Events { limit, reply } => {
                let _ = reply.send(self.events.iter().rev().take(limit).cloned().collect());
            }
        }
    }
}

/// Starts the core task; it ends when every batch sender is gone and the channel is drained.
pub fn spawn(mut core: Core, mut batches: mpsc::Receiver<Batch>) -> (CoreHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut queries) = mpsc::channel::<Query>(64);
    let task = tokio::spawn(async move {
        let mut applied: u64 = 0;
        loop {
            // Batches first, so an answer reflects everything already handed over; every 64 batches
            // the queries get a turn, so a flood of samples cannot starve the API.
            tokio::select! {
                biased;
                batch = batches.recv() => match batch {
                    Some(b) => {
                        core.apply(b);
                        applied += 1;
                        if applied % 64 == 0 {
                            while let Ok(q) = queries.try_recv() {
                                core.answer(q);
                            }
                        }
                    }
                    None => break,
                },
                Some(q) = queries.recv() => core.answer(q),
            }
        }
        info!(samples = core.metrics.core.samples.load(std::sync::atomic::Ordering::Relaxed), "Core stopped.");
    });
    (CoreHandle { tx }, task)
}
