//! The embedded MQTT broker (rumqttd), so a small park with no broker of its own works.
//!
//! rumqttd runs its own threads and runtime; it has no stop call, so it lives until the process exits.
//!
//! Owns: the embedded broker. May import: `config`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

use crate::config::EmbeddedBroker;

/// The embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded MQTT broker cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("embedded MQTT broker did not start: {0}")]
    Start(String),
}

/// Starts the broker and returns once it accepts connections.
///
/// # Errors
/// The address is taken, or the broker did not come up within five seconds.
pub fn start(cfg: &EmbeddedBroker) -> Result<(), BrokerError> {
    // rumqttd reports a taken port only in its own thread's log; find out here instead.
    drop(TcpListener::bind(cfg.listen).map_err(|source| BrokerError::Bind { addr: cfg.listen, source })?);
    let server = ServerSettings {
        name: "v4".into(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: cfg.max_payload_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            // Retained history per filter is segments × size: keep it small on an edge box.
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers_connect(cfg.listen) {
        if Instant::now() > deadline {
            return Err(BrokerError::Start(format!("nothing listens on {} after 5 s", cfg.listen)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    info!(listen = %cfg.listen, "Embedded MQTT broker started.");
    Ok(())
}

/// Whether an MQTT 3.1.1 CONNECT gets a CONNACK; a bare TCP probe would make the broker log an error.
fn answers_connect(addr: SocketAddr) -> bool {
    const CONNECT: &[u8] = &[
        0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 11, b'p', b'a', b'r', b'k', b'w', b'a', b't', b'c',
        b'h', b'-', b'0',
    ];
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut connack = [0u8; 4];
    let ok = s.write_all(CONNECT).is_ok() && s.read_exact(&mut connack).is_ok() && connack[0] == 0x20;
    let _ = s.write_all(&[0xE0, 0]);
    ok
}
