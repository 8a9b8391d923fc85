//! What the polling sources (Modbus, DL/T 645) share: the backoff after failed cycles, the offline
//! event, the device's last error, and handing batches to the core without dropping any.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::model::time::now_ns;
use crate::model::{Batch, DeviceId, Event, Sample};

/// How long a device that failed `failures` cycles in a row waits: its interval doubled per failure,
/// at most `max` (and never less than the interval).
pub fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    interval.saturating_mul(1 << failures.min(16)).min(max.max(interval))
}

/// The event saying `device` went offline on `link` (attribute `link_key`: "connection", "bus"),
/// with its last error.
pub fn offline_event(device: DeviceId, link_key: &str, link: &str, last_error: &Mutex<String>) -> Event {
    let mut attributes = serde_json::Map::new();
    attributes.insert(link_key.into(), link.into());
    attributes.insert("error".into(), last_error.lock().map(|e| e.clone()).unwrap_or_default().into());
    Event { device, kind: "offline".into(), ts: now_ns(), attributes }
}

/// Replaces a device's last error.
pub fn set_error(last_error: &Mutex<String>, e: String) {
    if let Ok(mut last) = last_error.lock() {
        *last = e;
    }
}

/// Hands a cycle's samples and events to the core. A full channel waits: the next cycle is late and
/// counted as an overrun, nothing is dropped.
pub async fn send(tx: &mpsc::Sender<Batch>, samples: Vec<Sample>, events: Vec<Event>) {
    if samples.is_empty() && events.is_empty() {
        return;
    }
    let _ = tx.send(Batch::new(samples, events)).await;
}
