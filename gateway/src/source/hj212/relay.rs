//! The relay of one logger's frames to an upstream platform (often the environmental authority's):
//! the raw frames, unchanged, in order, through a bounded store-and-forward queue.
//!
//! The connection task only pushes into the queue (never waits on the upstream); when the queue is
//! full the oldest frame is dropped and counted. One task per relay connects with capped exponential
//! backoff, writes frames in order, and takes a frame off the queue only once it was written; the
//! platform's answers are read and discarded so its side never blocks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Frames written to the upstream platform.
    pub sent: AtomicU64,
    /// Frames dropped because the queue was full (the oldest go first).
    pub dropped: AtomicU64,
    /// Connections made to the upstream platform.
    pub connections: AtomicU64,
    /// Connection attempts or writes that failed.
    pub errors: AtomicU64,
    pub connected: AtomicBool,
}

/// The bounded queue between the logger's connections and the relay task.
#[derive(Debug)]
pub struct RelayQueue {
    frames: Mutex<VecDeque<Vec<u8>>>,
    capacity: usize,
    notify: Notify,
    pub metrics: RelayMetrics,
}

impl RelayQueue {
    /// A queue holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            frames: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            notify: Notify::new(),
            metrics: RelayMetrics::default(),
        }
    }

    /// Queues a frame; a full queue drops its oldest frame (counted).
    pub fn push(&self, frame: Vec<u8>) {
        {
            let mut q = self.frames.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.capacity {
                q.pop_front();
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(frame);
        }
        self.notify.notify_one();
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Frames the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn front(&self) -> Option<Vec<u8>> {
        self.frames.lock().ok()?.front().cloned()
    }

    /// Removes the front frame once it was written, unless the queue dropped it meanwhile.
    fn pop_written(&self, written: &[u8]) {
        if let Ok(mut q) = self.frames.lock() {
            if q.front().is_some_and(|f| f == written) {
                q.pop_front();
            }
        }
    }
}

/// Runs the relay to `address` until `shutdown`.
pub async fn run(address: String, queue: std::sync::Arc<RelayQueue>, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    let max_wait = Duration::from_secs(30);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            c = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(address.as_str())) => c,
        };
        let stream = match conn {
            Ok(Ok(s)) => s,
            other => {
                queue.metrics.errors.fetch_add(1, Ordering::Relaxed);
                debug!(upstream = %address, error = ?other.err(), "HJ 212 relay cannot connect.");
                let jitter = Duration::from_millis(fastrand::u64(0..=wait.as_millis() as u64 / 4));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait + jitter) => {}
                }
                wait = (wait * 2).min(max_wait);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        queue.metrics.connections.fetch_add(1, Ordering::Relaxed);
        queue.metrics.connected.store(true, Ordering::Relaxed);
        info!(upstream = %address, "HJ 212 relay connected.");
        let (mut rd, mut wr) = stream.into_split();
        let closed = CancellationToken::new();
        // The platform's answers are read and dropped; its end closing ends this connection.
        let reader = {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                closed.cancel();
            })
        };
        loop {
            let Some(frame) = queue.front() else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = closed.cancelled() => break,
                    () = queue.notify.notified() => continue,
                }
            };
            let written = tokio::select! {
                () = shutdown.cancelled() => break,
                () = closed.cancelled() => break,
                w = tokio::time::timeout(Duration::from_secs(10), wr.write_all(&frame)) => w,
            };
            match written {
                Ok(Ok(())) => {
                    queue.pop_written(&frame);
                    queue.metrics.sent.fetch_add(1, Ordering::Relaxed);
                    wait = Duration::from_millis(200);
                }
                _ => {
                    queue.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        reader.abort();
        queue.metrics.connected.store(false, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            return;
        }
        info!(upstream = %address, queued = queue.len(), "HJ 212 relay disconnected; reconnecting.");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(max_wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let q = RelayQueue::new(2);
        for i in 0..5u8 {
            q.push(vec![i]);
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.metrics.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(q.front(), Some(vec![3]));
        q.pop_written(&[3]);
        assert_eq!(q.front(), Some(vec![4]));
        // A frame dropped while it was being written is not popped twice.
        q.pop_written(&[3]);
        assert_eq!(q.front(), Some(vec![4]));
    }

    #[tokio::test]
    async fn frames_go_upstream_in_order_after_the_platform_comes_back() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let q = std::sync::Arc::new(RelayQueue::new(100));
        for i in 0..5u8 {
            q.push(format!("frame{i}\r\n").into_bytes());
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(format!("127.0.0.1:{port}"), q.clone(), stop.clone()));
        // The platform is down at first: the relay keeps trying.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(q.metrics.errors.load(Ordering::Relaxed) >= 1);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        q.push(b"frame5\r\n".to_vec());
        let mut got = Vec::new();
        let want: Vec<u8> = (0..6).flat_map(|i| format!("frame{i}\r\n").into_bytes()).collect();
        let mut buf = [0u8; 256];
        while got.len() < want.len() {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, want);
        assert_eq!(q.metrics.sent.load(Ordering::Relaxed), 6);
        stop.cancel();
        task.await.unwrap();
    }
}
