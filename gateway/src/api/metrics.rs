//! `GET /metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::source::mqtt::decode::RejectReason;

/// Escapes a label value per the exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(super) async fn render(State(st): State<AppState>) -> impl IntoResponse {
    let m = &st.metrics;
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# HELP parkwatch_up 1 while the gateway runs.\n# TYPE parkwatch_up gauge\nparkwatch_up 1");
    let _ = writeln!(out, "# HELP parkwatch_uptime_seconds Seconds since start.\n# TYPE parkwatch_uptime_seconds gauge\nparkwatch_uptime_seconds {}", m.started.elapsed().as_secs());

    let _ = writeln!(
        out,
        "# HELP parkwatch_mqtt_connected 1 while connected to the broker.\n# TYPE parkwatch_mqtt_connected gauge"
    );
    for b in &m.brokers {
        let _ = writeln!(
            out,
            "parkwatch_mqtt_connected{{broker=\"{}\"}} {}",
            label(&b.id),
            u8::from(b.connected.load(Relaxed))
        );
    }
    let _ = writeln!(out, "# HELP parkwatch_mqtt_connections_total Successful connections (CONNACK) to the broker.\n# TYPE parkwatch_mqtt_connections_total counter");
    for b in &m.brokers {
        let _ = writeln!(
            out,
            "parkwatch_mqtt_connections_total{{broker=\"{}\"}} {}",
            label(&b.id),
            b.connections.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP parkwatch_mqtt_connection_errors_total Failed or lost connections.\n# TYPE parkwatch_mqtt_connection_errors_total counter");
    for b in &m.brokers {
        let _ = writeln!(
            out,
            "parkwatch_mqtt_connection_errors_total{{broker=\"{}\"}} {}",
            label(&b.id),
            b.connection_errors.load(Relaxed)
        );
    }

    for (name, help, get) in [
        ("parkwatch_mqtt_messages_total", "Messages received per subscription.", 0),
        ("parkwatch_mqtt_samples_total", "Samples accepted per subscription.", 1),
        ("parkwatch_mqtt_events_total", "Events accepted per subscription.", 2),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &m.subscriptions {
            let v = match get {
                0 => s.messages.load(Relaxed),
                1 => s.samples.load(Relaxed),
                _ => s.events.load(Relaxed),
            };
            let _ = writeln!(out, "{name}{{broker=\"{}\",subscription=\"{}\"}} {v}", label(&s.broker), label(&s.topic));
        }
    }
    let _ = writeln!(out, "# HELP parkwatch_mqtt_rejects_total Rejected messages or values per subscription and reason.\n# TYPE parkwatch_mqtt_rejects_total counter");
    for s in &m.subscriptions {
        for r in RejectReason::ALL {
            let _ = writeln!(
                out,
                "parkwatch_mqtt_rejects_total{{broker=\"{}\",subscription=\"{}\",reason=\"{}\"}} {}",
                label(&s.broker),
                label(&s.topic),
                r.as_str(),
                s.rejected(r)
            );
        }
    }

    let (depth, capacity) =
        st.batches.upgrade().map(|tx| (tx.max_capacity() - tx.capacity(), tx.max_capacity())).unwrap_or((0, 0));
    let _ = writeln!(out, "# HELP parkwatch_core_channel_depth Batches waiting for the core.\n# TYPE parkwatch_core_channel_depth gauge\nparkwatch_core_channel_depth {depth}");
    let _ = writeln!(out, "# HELP parkwatch_core_channel_capacity Batches the core channel holds.\n# TYPE parkwatch_core_channel_capacity gauge\nparkwatch_core_channel_capacity {capacity}");
    let c = &m.core;
    for (name, help, v) in [
        ("parkwatch_core_batches_total", "Batches applied by the core.", c.batches.load(Relaxed)),
        ("parkwatch_core_samples_total", "Samples applied by the core.", c.samples.load(Relaxed)),
        ("parkwatch_core_events_total", "Events received by the core.", c.events.load(Relaxed)),
        (
            "parkwatch_core_out_of_order_samples_total",
            "Samples older than the point's value, not applied.",
            c.out_of_order.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
