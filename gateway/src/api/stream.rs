//! `GET /api/v1/incidents/stream`: the incident changes of the caller's grids as server-sent events,
//! read by cursor from the incident store's committed change log, like every other sink.
//!
//! Each event's id is its change-log sequence number, so a browser that reconnects sends it back as
//! `Last-Event-ID` and continues where it stopped; a client without one starts at the head and first
//! gets a `ready` event carrying it. The stream is pulled: the next page of the log (at most
//! [`PAGE`] changes) is read only once the client took the previous one, so a slow client costs one
//! page of memory and lags, never the store. The number of streams is bounded, and each ends after
//! [`LIFETIME`] so the browser reconnects through the gate again (a logout or an expired session
//! ends its stream within that time). At shutdown [`Streams::close`] ends them all, so the server's
//! graceful stop does not wait on them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState, Principal};
use crate::incident::changes::{ChangeLog, ChangeRow};

/// Changes read from the log at a time for one client.
pub const PAGE: usize = 100;

/// Live streams served at once; more are refused with 429.
pub const MAX_STREAMS: usize = 64;

/// How long one stream lasts before the browser reconnects (and is checked again).
pub const LIFETIME: Duration = Duration::from_secs(300);

/// Comment lines sent on an idle stream, so proxies and the browser keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The bound on live streams, shared by the API's handlers, and the signal that ends them all.
#[derive(Clone, Debug)]
pub struct Streams {
    places: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Default for Streams {
    fn default() -> Self {
        Self { places: Arc::new(Semaphore::new(MAX_STREAMS)), stop: CancellationToken::new() }
    }
}

impl Streams {
    /// Ends every live stream (at shutdown: the server waits for open responses before it stops).
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// One client's position in the log.
struct Reader {
    log: Option<ChangeLog>,
    cursor: i64,
    committed: watch::Receiver<i64>,
    scope: Option<Vec<String>>,
    queued: VecDeque<Event>,
    deadline: tokio::time::Instant,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl Reader {
    /// The next event, or `None` when the stream ends (its lifetime is up, the store stopped, or the
    /// log cannot be read; the browser then reconnects with its last id).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some((Ok(e), self));
            }
            let head = *self.committed.borrow_and_update();
            if head > self.cursor {
                self.page(head).await?;
                continue;
            }
            tokio::select! {
                changed = self.committed.changed() => changed.ok()?,
                () = tokio::time::sleep_until(self.deadline) => return None,
                () = self.stop.cancelled() => return None,
            }
        }
    }

    /// Reads the next page of the caller's changes up to `head`.
    async fn page(&mut self, head: i64) -> Option<()> {
        let log = self.log.take()?;
        let (cursor, scope) = (self.cursor, self.scope.clone());
        let (log, rows) = tokio::task::spawn_blocking(move || {
            let rows = log.after_in(cursor, head, scope.as_deref(), PAGE);
            (log, rows)
        })
        .await
        .ok()?;
        let rows =
            rows.map_err(|e| tracing::warn!(error = %e, "Cannot read the incident change log for a stream.")).ok()?;
        self.log = Some(log);
        // A short page holds everything up to the head that the caller may see.
        self.cursor = if rows.len() < PAGE { head } else { rows.last().map_or(head, |r| r.seq) };
        self.queued.extend(rows.iter().filter_map(event));
        Some(())
    }
}

fn event(row: &ChangeRow) -> Option<Event> {
    Event::default().id(row.seq.to_string()).event("change").json_data(row).ok()
}

/// `GET /api/v1/incidents/stream`.
pub(super) async fn incidents(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = st.incidents.as_ref().ok_or_else(|| ApiError::NotFound("incidents are not enabled".into()))?;
    let permit = st.streams.places.clone().try_acquire_owned().map_err(|_| ApiError::TooMany {
        message: format!("{MAX_STREAMS} live streams are open; retry later"),
        retry_after: 5,
    })?;
    let committed = store.committed();
    let head = *committed.borrow();
    let last =
        match headers.get("last-event-id").map(|v| v.to_str().map(str::trim)) {
            None => None,
            Some(Ok(v)) => Some(v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::BadRequest(format!("Last-Event-ID {v:?}; expected a change sequence number"))
            })?),
            Some(Err(_)) => return Err(ApiError::BadRequest("Last-Event-ID is not text".into())),
        };
    let log = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.change_log())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let mut queued = VecDeque::new();
    // A cursor past the head (a log from before a reset) starts at the head.
    let cursor = match last {
        Some(n) if n <= head => n,
        _ => {
            queued.push_back(Event::default().id(head.to_string()).event("ready").data(format!("{{\"seq\":{head}}}")));
            head
        }
    };
    let reader = Reader {
        log: Some(log),
        cursor,
        committed,
        scope: who.scope(),
        queued,
        deadline: tokio::time::Instant::now() + LIFETIME,
        stop: st.streams.stop.clone(),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(reader, Reader::next);
    let mut resp = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Tells reverse proxies not to buffer the stream.
    resp.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    Ok(resp)
}
