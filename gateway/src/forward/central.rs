//! Incidents to the central MQTT broker: every committed change on `parkwatch/<site>/incidents/<grid>`
//! (QoS 1, JSON); the active alarms as retained messages under `parkwatch/<site>/alarms/<incident-id>`
//! (cleared by an empty retained message once the incident is closed); the gateway's birth and
//! last will, retained, on `parkwatch/<site>/status`.
//!
//! rumqttc keeps QoS 1 publishes it has not had acknowledged and sends them again after a reconnect;
//! its request queue is bounded, so a broker that is gone for long slows this task, never the core.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, QoS};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::incident::Incident;

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

/// Publishes incidents until `shutdown`, then announces the gateway offline.
pub async fn run(
    mut options: MqttOptions,
    site: String,
    mut incidents: broadcast::Receiver<Incident>,
    shutdown: CancellationToken,
) {
    let topics = Topics::new(&site);
    let offline = serde_json::json!({ "state": "offline", "site": site }).to_string();
    options.set_last_will(LastWill::new(&topics.status, offline.clone(), QoS::AtLeastOnce, true));
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let birth =
        serde_json::json!({ "state": "online", "site": site, "version": env!("CARGO_PKG_VERSION") }).to_string();
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(500);
                    info!(topic = %topics.status, "Central MQTT connected; publishing incidents.");
                    let _ = client.try_publish(&topics.status, QoS::AtLeastOnce, true, birth.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "Central MQTT connection failed; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
            i = incidents.recv() => match i {
                Ok(i) => {
                    let json = serde_json::to_string(&i).unwrap_or_default();
                    // Awaiting room in the request queue: back-pressure on this task only.
                    let publish = async {
                        client.publish(topics.incidents(&i.grid), QoS::AtLeastOnce, false, json.clone()).await?;
                        if i.state == "normal" {
                            client.publish(topics.alarm(i.id), QoS::AtLeastOnce, true, Vec::<u8>::new()).await
                        } else {
                            client.publish(topics.alarm(i.id), QoS::AtLeastOnce, true, json).await
                        }
                    };
                    // The event loop must keep running while we wait for room.
                    let mut publish = std::pin::pin!(publish);
                    loop {
                        tokio::select! {
                            r = &mut publish => {
                                if let Err(e) = r {
                                    warn!(error = %e, "Cannot queue an incident for the central broker.");
                                }
                                break;
                            }
                            ev = eventloop.poll() => {
                                if ev.is_err() {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "Incident changes came faster than the central broker took them.");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    // A clean goodbye: the retained status says offline without waiting for the will.
    if client.try_publish(&topics.status, QoS::AtLeastOnce, true, offline).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sent = false;
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(rumqttc::Packet::PubAck(_)) if !sent => {
                        sent = true;
                        let _ = client.try_disconnect();
                    }
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => break,
                    _ => {}
                }
            }
        })
        .await;
    }
    info!("Central MQTT publisher stopped.");
}
