//! The demo's notification inbox: a local HTTP endpoint taking the generic webhook's POSTs the way a
//! receiving system would — signature checked against the shared secret, idempotency key seen once —
//! and printing each message, so a newcomer sees what the officers on duty would get.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use ring::hmac;
use tracing::{info, warn};

/// Idempotency keys remembered, so memory stays bounded however long the demo runs.
const KEYS_KEPT: usize = 10_000;

struct Inbox {
    key: hmac::Key,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

/// Serves the inbox on `listen` (port 0 picks a free one) until the runtime ends; its address.
///
/// # Errors
/// The address cannot be bound.
pub async fn start(listen: SocketAddr, secret: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let inbox = Arc::new(Inbox {
        key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        seen: Mutex::new((HashSet::new(), VecDeque::new())),
    });
    let app = Router::new().route("/inbox/{name}", post(receive)).with_state(inbox);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "Demo inbox stopped.");
        }
    });
    Ok(addr)
}

/// `sha256=<hex>` of `body`, as the webhook signs it.
fn expected(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

async fn receive(
    State(inbox): State<Arc<Inbox>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let signature = headers.get("x-parkwatch-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let want = expected(&inbox.key, &body);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(signature.as_bytes(), want.as_bytes())) {
        warn!(inbox = %name, "Demo inbox: bad signature; refused.");
        return (StatusCode::UNAUTHORIZED, "bad signature");
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    {
        let mut seen = inbox.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.0.insert(key.clone()) {
            info!(inbox = %name, key = %key, "Demo inbox: a repeat of a message already received; dropped.");
            return (StatusCode::OK, "duplicate");
        }
        seen.1.push_back(key.clone());
        if seen.1.len() > KEYS_KEPT {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        warn!(inbox = %name, "Demo inbox: the body is not JSON; refused.");
        return (StatusCode::BAD_REQUEST, "not JSON");
    };
    let to: Vec<&str> =
        v["recipients"].as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect()).unwrap_or_default();
    let text = v["text"].as_str().unwrap_or_default();
    // The demo's console is where a newcomer looks: the message as the officers would read it.
    println!(
        "\n── 通知 notification → {name} ({}) ──\n{text}\n",
        if to.is_empty() { "-".into() } else { to.join("、") }
    );
    (StatusCode::OK, "ok")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_webhooks() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"key");
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), the textbook vector.
        assert_eq!(
            expected(&key, b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
