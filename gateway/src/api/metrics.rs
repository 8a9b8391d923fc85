//! `GET /metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::model::reject::RejectReason;

/// Escapes a label value per the exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(super) async fn render(State(st): State<AppState>) -> impl IntoResponse {
    let m = &st.metrics;
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "# HELP parkwatch_up 1 while the process is up (whether it does its job: parkwatch_component_status).\n# TYPE parkwatch_up gauge\nparkwatch_up 1"
    );
    let _ = writeln!(
        out,
        "# HELP parkwatch_component_status Health of each component: 0 ok, 1 degraded, 2 failed.\n# TYPE parkwatch_component_status gauge"
    );
    for c in st.health.snapshot() {
        let _ = writeln!(out, "parkwatch_component_status{{component=\"{}\"}} {}", label(&c.name), c.status.gauge());
    }
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
        (
            "parkwatch_mqtt_unacked_total",
            "QoS 1 messages left unacknowledged because their batch could not be stored (the broker delivers them again).",
            (|b| b.unacked.load(Relaxed)) as fn(&crate::metrics::BrokerMetrics) -> u64,
        ),
        (
            "parkwatch_mqtt_redelivery_sessions_total",
            "New sessions opened to have unacknowledged messages delivered again.",
            |b| b.redelivery_sessions.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for b in &m.brokers {
            let _ = writeln!(out, "{name}{{broker=\"{}\"}} {}", label(&b.id), get(b));
        }
    }

    for (name, help, get) in [
        ("parkwatch_mqtt_messages_total", "Messages received per subscription.", 0),
        ("parkwatch_mqtt_samples_total", "Samples accepted per subscription.", 1),
        ("parkwatch_mqtt_events_total", "Events accepted per subscription.", 2),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &m.subscriptions() {
            let v = match get {
                0 => s.messages.load(Relaxed),
                1 => s.samples.load(Relaxed),
                _ => s.events.load(Relaxed),
            };
            let _ = writeln!(out, "{name}{{broker=\"{}\",subscription=\"{}\"}} {v}", label(&s.broker), label(&s.topic));
        }
    }
    let _ = writeln!(out, "# HELP parkwatch_mqtt_rejects_total Rejected messages or values per subscription and reason.\n# TYPE parkwatch_mqtt_rejects_total counter");
    for s in &m.subscriptions() {
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
    if let Some(f) = &st.forward {
        forward(&mut out, f);
    }
    if let Some(store) = &st.incidents {
        incident_store(&mut out, &store.metrics);
    }
    if let Some(a) = &st.actions {
        actions(&mut out, &a.metrics);
    }
    if let Some(h) = &st.history {
        history(&mut out, &h.metrics);
    }
    if let Some(c) = &st.central {
        for (name, kind, help, v) in [
            (
                "parkwatch_central_mqtt_delivered_total",
                "counter",
                "Incident changes the central MQTT broker acknowledged.",
                c.delivered.load(Relaxed),
            ),
            (
                "parkwatch_central_mqtt_lag",
                "gauge",
                "Incident changes committed but not yet acknowledged by the central MQTT broker.",
                c.lag.load(Relaxed),
            ),
            (
                "parkwatch_central_mqtt_connected",
                "gauge",
                "1 while connected to the central MQTT broker.",
                u64::from(c.connected.load(Relaxed)),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
    if let Some(n) = &st.notify {
        notify(&mut out, &n.metrics);
    }
    if let Some(p) = &st.provisioning {
        let s = &p.status;
        for (name, help, v) in [
            (
                "parkwatch_provisioned_devices",
                "Devices created from topics by auto-provisioning.",
                s.provisioned().len(),
            ),
            ("parkwatch_provision_pending", "Devices waiting for approval to be provisioned.", s.pending().len()),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "parkwatch_provision_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Provisioning requests refused, by reason (id, grid, cap).\n# TYPE {name} counter"
        );
        for r in crate::reload::provision::Refusal::ALL {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", r.as_str(), s.refused(r));
        }
    }
    modbus(&mut out, &st.modbus);
    dlt645(&mut out, &st.dlt645);
    hj212(&mut out, &st.hj212);
    grids(&mut out, &st).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

fn notify(out: &mut String, m: &crate::notify::NotifyMetrics) {
    type Field = fn(&crate::notify::ReceiverMetrics) -> &std::sync::atomic::AtomicU64;
    let families: [(&str, &str, &str, Field); 4] = [
        ("parkwatch_notify_sent_total", "counter", "Notifications the receiver accepted.", |r| &r.sent),
        (
            "parkwatch_notify_failed_total",
            "counter",
            "Notifications given up (refused for good or too many attempts).",
            |r| &r.failed,
        ),
        (
            "parkwatch_notify_retried_total",
            "counter",
            "Delivery attempts that failed for now and are tried again.",
            |r| &r.retried,
        ),
        ("parkwatch_notify_queued", "gauge", "Notifications waiting to be sent.", |r| &r.queued),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &m.receivers {
            let _ = writeln!(out, "{name}{{receiver=\"{}\"}} {}", label(&r.id), field(r).load(Relaxed));
        }
    }
}

fn forward(out: &mut String, f: &crate::forward::ForwardMetrics) {
    let o = &f.outbox;
    for (name, kind, help, v) in [
        ("parkwatch_outbox_batches", "gauge", "Batches held in the outbox.", o.batches.load(Relaxed)),
        ("parkwatch_outbox_bytes", "gauge", "Bytes of line protocol held in the outbox.", o.bytes.load(Relaxed)),
        (
            "parkwatch_outbox_committed_batches_total",
            "counter",
            "Batches committed to the outbox.",
            o.committed_batches.load(Relaxed),
        ),
        (
            "parkwatch_outbox_committed_lines_total",
            "counter",
            "Lines committed to the outbox.",
            o.committed_lines.load(Relaxed),
        ),
        (
            "parkwatch_outbox_dropped_batches_total",
            "counter",
            "Batches dropped unconfirmed by the outbox bounds (size, age of telemetry).",
            o.dropped_batches.load(Relaxed),
        ),
        (
            "parkwatch_outbox_dropped_bytes_total",
            "counter",
            "Bytes dropped unconfirmed.",
            o.dropped_bytes.load(Relaxed),
        ),
        (
            "parkwatch_outbox_lost_samples_total",
            "counter",
            "Samples without an acknowledgement (QoS 0, Modbus) lost while the outbox could not commit.",
            o.lost_samples.load(Relaxed),
        ),
        (
            "parkwatch_outbox_unacked_samples_total",
            "counter",
            "Samples of QoS 1 messages not stored while the outbox could not commit; left to the broker to deliver again.",
            o.unacked_samples.load(Relaxed),
        ),
        (
            "parkwatch_outbox_append_errors_total",
            "counter",
            "Outbox commits that failed (each is retried).",
            o.append_errors.load(Relaxed),
        ),
        (
            "parkwatch_outbox_incident_lines_total",
            "counter",
            "Incident changes committed to the outbox.",
            o.incident_lines.load(Relaxed),
        ),
        (
            "parkwatch_outbox_incident_lag",
            "gauge",
            "Incident changes committed in the incident store but not yet in the outbox.",
            o.incident_lag.load(Relaxed),
        ),
        (
            "parkwatch_outbox_audit_lines_total",
            "counter",
            "Audit records committed to the outbox.",
            o.audit_lines.load(Relaxed),
        ),
        (
            "parkwatch_outbox_audit_lag",
            "gauge",
            "Audit records committed in the audit log but not yet in the outbox.",
            o.audit_lag.load(Relaxed),
        ),
        (
            "parkwatch_outbox_failing",
            "gauge",
            "1 while the outbox cannot commit (disk full, I/O error).",
            u64::from(o.failing.load(Relaxed)),
        ),
        (
            "parkwatch_outbox_dropped_incidents_total",
            "counter",
            "Incident batches among the dropped batches.",
            o.dropped_incidents.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    let now = crate::model::time::now_ns();
    type Get = fn(&crate::forward::writer::TargetMetrics, i64) -> f64;
    let series: [(&str, &str, &str, Get); 13] = [
        ("parkwatch_forward_backlog_batches", "gauge", "Batches this target has not confirmed.", |t, _| {
            t.backlog_batches.load(Relaxed) as f64
        }),
        ("parkwatch_forward_backlog_bytes", "gauge", "Bytes this target has not confirmed.", |t, _| {
            t.backlog_bytes.load(Relaxed) as f64
        }),
        (
            "parkwatch_forward_oldest_age_seconds",
            "gauge",
            "Age of the oldest batch this target has not confirmed.",
            |t, now| {
                let o = t.oldest_ns.load(Relaxed);
                if o > 0 {
                    (now - o) as f64 / 1e9
                } else {
                    0.0
                }
            },
        ),
        ("parkwatch_forward_writes_total", "counter", "Batches the target confirmed.", |t, _| {
            t.writes.load(Relaxed) as f64
        }),
        ("parkwatch_forward_lines_total", "counter", "Lines the target confirmed.", |t, _| {
            t.lines.load(Relaxed) as f64
        }),
        ("parkwatch_forward_bytes_total", "counter", "Bytes of line protocol the target confirmed.", |t, _| {
            t.bytes.load(Relaxed) as f64
        }),
        (
            "parkwatch_forward_write_latency_seconds_sum",
            "counter",
            "Sum of the latencies of confirmed writes (divide by parkwatch_forward_writes_total for the mean).",
            |t, _| t.latency_us_sum.load(Relaxed) as f64 / 1e6,
        ),
        ("parkwatch_forward_retries_total", "counter", "Failed writes that will be retried.", |t, _| {
            t.retries.load(Relaxed) as f64
        }),
        (
            "parkwatch_forward_dead_letters_total",
            "counter",
            "Lines the target rejected, parked as dead letters.",
            |t, _| t.dead_letters.load(Relaxed) as f64,
        ),
        (
            "parkwatch_forward_dead_letters_dropped_total",
            "counter",
            "Dead letters dropped (oldest first, any target) to keep within the bounds when this target parked lines.",
            |t, _| t.dead_letters_dropped.load(Relaxed) as f64,
        ),
        (
            "parkwatch_forward_paused",
            "gauge",
            "1 while the target is paused: the store refuses the credentials or the bucket is missing.",
            |t, _| f64::from(u8::from(t.state() == crate::forward::writer::WriterState::Paused)),
        ),
        ("parkwatch_forward_write_latency_seconds", "gauge", "Latency of the last confirmed write.", |t, _| {
            t.last_latency_us.load(Relaxed) as f64 / 1e6
        }),
        ("parkwatch_forward_up", "gauge", "1 when the last write to the target succeeded.", |t, _| {
            f64::from(u8::from(t.up.load(Relaxed)))
        }),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in &f.targets {
            let _ = writeln!(out, "{name}{{target=\"{}\"}} {}", label(&t.id), get(t, now));
        }
    }
}

fn incident_store(out: &mut String, m: &crate::incident::StoreMetrics) {
    for (name, kind, help, v) in [
        (
            "parkwatch_incident_store_committed_total",
            "counter",
            "Incident changes committed to the database.",
            m.committed.load(Relaxed),
        ),
        (
            "parkwatch_incident_store_write_errors_total",
            "counter",
            "Commits of incident changes that failed (each is retried with backoff).",
            m.write_errors.load(Relaxed),
        ),
        (
            "parkwatch_incident_store_dropped_total",
            "counter",
            "Incident changes dropped after the database failed too long.",
            m.dropped.load(Relaxed),
        ),
        (
            "parkwatch_incident_store_commits_total",
            "counter",
            "Transactions committed (group commits of incident changes).",
            m.commits.load(Relaxed),
        ),
        (
            "parkwatch_incident_store_pending",
            "gauge",
            "Incident changes waiting in memory for the database.",
            m.pending.load(Relaxed),
        ),
        (
            "parkwatch_incident_store_failing",
            "gauge",
            "1 while the last commit of incident changes failed.",
            u64::from(m.failing.load(Relaxed)),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

fn modbus(out: &mut String, m: &crate::source::modbus::ModbusStatus) {
    if m.devices.is_empty() {
        return;
    }
    type Get = fn(&crate::source::modbus::DeviceStatus) -> f64;
    let series: [(&str, &str, &str, Get); 9] = [
        ("parkwatch_modbus_online", "gauge", "1 while the device answers.", |d| {
            f64::from(u8::from(d.online.load(Relaxed)))
        }),
        ("parkwatch_modbus_requests_total", "counter", "Requests sent to the device.", |d| {
            d.requests.load(Relaxed) as f64
        }),
        ("parkwatch_modbus_registers_total", "counter", "Registers (or bits) read.", |d| {
            d.registers.load(Relaxed) as f64
        }),
        ("parkwatch_modbus_timeouts_total", "counter", "Requests without an answer.", |d| {
            d.timeouts.load(Relaxed) as f64
        }),
        ("parkwatch_modbus_exceptions_total", "counter", "Modbus exceptions (the device said no).", |d| {
            d.exceptions.load(Relaxed) as f64
        }),
        ("parkwatch_modbus_transport_errors_total", "counter", "Connection or framing errors.", |d| {
            d.transport_errors.load(Relaxed) as f64
        }),
        ("parkwatch_modbus_overruns_total", "counter", "Cycles not finished before the next was due.", |d| {
            d.overruns.load(Relaxed) as f64
        }),
        ("parkwatch_modbus_latency_seconds", "gauge", "Latency of the last request.", |d| {
            d.last_latency_us.load(Relaxed) as f64 / 1e6
        }),
        (
            "parkwatch_modbus_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last valid read (0: never).",
            |d| d.last_success_ns.load(Relaxed) as f64 / 1e9,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in &m.devices {
            let _ = writeln!(
                out,
                "{name}{{device=\"{}\",connection=\"{}\"}} {}",
                label(&d.device),
                label(&d.connection),
                get(d)
            );
        }
    }
}

fn dlt645(out: &mut String, m: &crate::source::dlt645::Dlt645Status) {
    if m.meters.is_empty() {
        return;
    }
    type Get = fn(&crate::source::dlt645::MeterStatus) -> f64;
    let series: [(&str, &str, &str, Get); 12] = [
        ("parkwatch_dlt645_online", "gauge", "1 while the meter answers.", |d| {
            f64::from(u8::from(d.online.load(Relaxed)))
        }),
        ("parkwatch_dlt645_requests_total", "counter", "Requests sent to the meter.", |d| {
            d.requests.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_values_total", "counter", "Values read (normal answers).", |d| {
            d.values.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_timeouts_total", "counter", "Requests without an answer.", |d| {
            d.timeouts.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_abnormal_total", "counter", "Abnormal answers (D1: the meter refused).", |d| {
            d.abnormal.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_bad_values_total", "counter", "Answers whose value is not BCD or not of its length.", |d| {
            d.bad_values.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_followups_total", "counter", "Answers saying more frames follow (B1).", |d| {
            d.followups.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_noise_bytes_total", "counter", "Bytes on the line that answered nothing asked.", |d| {
            d.noise_bytes.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_transport_errors_total", "counter", "Connection or line errors.", |d| {
            d.transport_errors.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_overruns_total", "counter", "Cycles not finished before the next was due.", |d| {
            d.overruns.load(Relaxed) as f64
        }),
        ("parkwatch_dlt645_latency_seconds", "gauge", "Latency of the last answer.", |d| {
            d.last_latency_us.load(Relaxed) as f64 / 1e6
        }),
        (
            "parkwatch_dlt645_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last cycle with an answer (0: never).",
            |d| d.last_success_ns.load(Relaxed) as f64 / 1e9,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in &m.meters {
            let _ = writeln!(out, "{name}{{device=\"{}\",bus=\"{}\"}} {}", label(&d.device), label(&d.bus), get(d));
        }
    }
}

/// The supervisors' KPIs of every grid over the last 24 hours: one set of grouped queries on a
/// reader connection and one patrol query per grid, so a scrape costs the same however many
/// incidents there are.
async fn grids(out: &mut String, st: &AppState) {
    let Some(store) = &st.incidents else { return };
    let to = crate::model::time::now_ns();
    let from = to - 86_400 * 1_000_000_000;
    let ids: Vec<String> = st.registry.load().live_grids().map(|(_, g)| g.id.clone()).collect();
    let kpis = match store.kpis(ids.clone(), from, to).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot compute the grid KPIs for /metrics.");
            return;
        }
    };
    let mut coverage = Vec::with_capacity(ids.len());
    for g in &ids {
        let roster = st.people.roster(g).cloned();
        coverage.push(st.core.patrols(g.clone(), roster, from, to).await.ok().flatten().map(|c| c.total));
    }
    let _ = writeln!(
        out,
        "# HELP parkwatch_grid_open_incidents Incidents not back to normal, per grid and severity.\n# TYPE parkwatch_grid_open_incidents gauge"
    );
    for (g, k) in &kpis {
        for (severity, n) in &k.open.by_severity {
            let _ = writeln!(
                out,
                "parkwatch_grid_open_incidents{{grid=\"{}\",severity=\"{}\"}} {n}",
                label(g),
                label(severity)
            );
        }
    }
    type Get = fn(&crate::incident::kpi::GridKpis) -> Option<f64>;
    let series: [(&str, &str, Get); 5] = [
        ("parkwatch_grid_unacked_incidents", "Incidents waiting for acknowledgement.", |k| Some(k.open.unacked as f64)),
        (
            "parkwatch_grid_alarms_per_hour",
            "Annunciations per hour over the last 24 h (ISA-18.2 target: about 6).",
            |k| Some(k.alarm_rate.per_hour),
        ),
        (
            "parkwatch_grid_alarms_max_per_10min",
            "Most annunciations in any 10 minutes of the last 24 h (ISA-18.2: more than 10 is a flood).",
            |k| Some(k.alarm_rate.max_per_10min as f64),
        ),
        ("parkwatch_grid_standing_alarms", "Alarms active for 24 h or more.", |k| Some(k.standing_total as f64)),
        ("parkwatch_grid_frequent_alarms", "Alarms annunciated twice or more in the last 24 h (at most 5).", |k| {
            Some(k.chattering.len() as f64)
        }),
    ];
    for (name, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (g, k) in &kpis {
            if let Some(v) = get(k) {
                let _ = writeln!(out, "{name}{{grid=\"{}\"}} {v}", label(g));
            }
        }
    }
    type Spread = fn(&crate::incident::kpi::GridKpis) -> &crate::incident::kpi::Spread;
    let spreads: [(&str, &str, Spread); 2] = [
        ("parkwatch_grid_ack_seconds", "Raised to acknowledged over the last 24 h.", |k| &k.ack_time_s),
        ("parkwatch_grid_close_seconds", "Raised to closed over the last 24 h.", |k| &k.close_time_s),
    ];
    for (name, help, get) in spreads {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (g, k) in &kpis {
            let s = get(k);
            for (q, v) in [("0.5", s.median), ("0.9", s.p90)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{grid=\"{}\",quantile=\"{q}\"}} {v}", label(g));
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP parkwatch_grid_patrol_coverage_ratio Patrol slots scanned of those due in the last 24 h.\n# TYPE parkwatch_grid_patrol_coverage_ratio gauge"
    );
    for (g, c) in ids.iter().zip(&coverage) {
        if let Some(pct) = c.as_ref().and_then(|c| c.coverage_pct) {
            let _ = writeln!(out, "parkwatch_grid_patrol_coverage_ratio{{grid=\"{}\"}} {}", label(g), pct / 100.0);
        }
    }
    let _ = writeln!(
        out,
        "# HELP parkwatch_grid_patrol_missed Patrol slots missed in the last 24 h.\n# TYPE parkwatch_grid_patrol_missed gauge"
    );
    for (g, c) in ids.iter().zip(&coverage) {
        if let Some(c) = c {
            let _ = writeln!(out, "parkwatch_grid_patrol_missed{{grid=\"{}\"}} {}", label(g), c.missed);
        }
    }
}

fn actions(out: &mut String, m: &crate::actions::ActionMetrics) {
    let _ = writeln!(
        out,
        "# HELP parkwatch_actions_total Linkage action requests by outcome.\n# TYPE parkwatch_actions_total counter"
    );
    for (outcome, v) in [("done", &m.done), ("refused", &m.refused), ("failed", &m.failed), ("expired", &m.expired)] {
        let _ = writeln!(out, "parkwatch_actions_total{{outcome=\"{outcome}\"}} {}", v.load(Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP parkwatch_actions_awaiting_confirmation Critical actions waiting for a second person.\n# TYPE parkwatch_actions_awaiting_confirmation gauge\nparkwatch_actions_awaiting_confirmation {}",
        m.awaiting.load(Relaxed)
    );
}

fn history(out: &mut String, m: &crate::history::HistoryMetrics) {
    for (name, kind, help, v) in [
        ("parkwatch_history_samples_total", "counter", "Samples taken into the edge history.", m.samples.load(Relaxed)),
        (
            "parkwatch_history_dropped_samples_total",
            "counter",
            "Samples not rolled up because the history writer's channel was full.",
            m.dropped_samples.load(Relaxed),
        ),
        (
            "parkwatch_history_bad_samples_total",
            "counter",
            "Samples of quality other than good (or not finite) kept out of the rollups.",
            m.bad_samples.load(Relaxed),
        ),
        (
            "parkwatch_history_out_of_order_samples_total",
            "counter",
            "Samples older than their point's newest, not rolled up.",
            m.out_of_order_samples.load(Relaxed),
        ),
        ("parkwatch_history_rows_written_total", "counter", "Rollup rows written.", m.rows_written.load(Relaxed)),
        ("parkwatch_history_commits_total", "counter", "History transactions committed.", m.commits.load(Relaxed)),
        (
            "parkwatch_history_write_errors_total",
            "counter",
            "History writes that failed (each is retried).",
            m.write_errors.load(Relaxed),
        ),
        (
            "parkwatch_history_lost_rows_total",
            "counter",
            "Rollup rows dropped from memory while writes kept failing.",
            m.lost_rows.load(Relaxed),
        ),
        (
            "parkwatch_history_pruned_rows_total",
            "counter",
            "Rollup rows removed after their retention.",
            m.pruned_rows.load(Relaxed),
        ),
        (
            "parkwatch_history_pruned_for_space_total",
            "counter",
            "Rollup rows removed to stay under history.max_bytes.",
            m.pruned_for_space.load(Relaxed),
        ),
        (
            "parkwatch_history_disk_bytes",
            "gauge",
            "Bytes history.db takes on disk (pages and write-ahead log).",
            m.disk_bytes.load(Relaxed),
        ),
        ("parkwatch_history_failing", "gauge", "1 while history writes fail.", u64::from(m.failing.load(Relaxed))),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

fn hj212(out: &mut String, m: &crate::source::hj212::Hj212Status) {
    use crate::source::hj212::codec::Reject;
    if m.listeners.is_empty() {
        return;
    }
    type L = fn(&crate::source::hj212::ListenerStatus) -> u64;
    let listener: [(&str, &str, &str, L); 4] = [
        ("parkwatch_hj212_connections", "gauge", "HJ 212 connections open.", |l| l.open.load(Relaxed)),
        ("parkwatch_hj212_accepted_total", "counter", "HJ 212 connections accepted.", |l| l.accepted.load(Relaxed)),
        ("parkwatch_hj212_refused_total", "counter", "HJ 212 connections closed at once: too many open.", |l| {
            l.refused.load(Relaxed)
        }),
        ("parkwatch_hj212_idle_closed_total", "counter", "HJ 212 connections closed for idling.", |l| {
            l.idle_closed.load(Relaxed)
        }),
    ];
    for (name, kind, help, get) in listener {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in &m.listeners {
            let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", label(&l.id), get(l));
        }
    }
    type G = fn(&crate::source::hj212::LoggerStatus) -> u64;
    let logger: [(&str, &str, &str, G); 8] = [
        ("parkwatch_hj212_logger_connected", "gauge", "1 while the logger has a connection open.", |l| {
            u64::from(l.connections.load(Relaxed) > 0)
        }),
        ("parkwatch_hj212_frames_total", "counter", "Valid frames from the logger.", |l| l.frames.load(Relaxed)),
        ("parkwatch_hj212_samples_total", "counter", "Samples from the logger's values.", |l| l.samples.load(Relaxed)),
        ("parkwatch_hj212_events_total", "counter", "Alarm events (CN 2072) from the logger.", |l| {
            l.events.load(Relaxed)
        }),
        ("parkwatch_hj212_answers_total", "counter", "Answers (9014) sent to the logger.", |l| l.answers.load(Relaxed)),
        ("parkwatch_hj212_unmapped_total", "counter", "Values whose code maps to no point of the device.", |l| {
            l.unmapped.load(Relaxed)
        }),
        ("parkwatch_hj212_flagged_total", "counter", "Values flagged other than N (not valid for compliance).", |l| {
            l.flagged.load(Relaxed)
        }),
        (
            "parkwatch_hj212_last_frame_timestamp_seconds",
            "gauge",
            "Unix time of the last valid frame (0: never).",
            |l| u64::try_from(l.last_frame_ns.load(Relaxed) / 1_000_000_000).unwrap_or(0),
        ),
    ];
    for (name, kind, help, get) in logger {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in &m.loggers {
            let _ = writeln!(out, "{name}{{mn=\"{}\",device=\"{}\"}} {}", label(&l.mn), label(&l.device), get(l));
        }
    }
    let name = "parkwatch_hj212_rejects_total";
    let _ = writeln!(
        out,
        "# HELP {name} Refused HJ 212 frames by reason, per logger (mn=\"\": not yet known).\n# TYPE {name} counter"
    );
    for r in Reject::ALL {
        for l in &m.listeners {
            let n = l.rejects[r.index()].load(Relaxed);
            let _ = writeln!(out, "{name}{{listener=\"{}\",mn=\"\",reason=\"{}\"}} {n}", label(&l.id), r.as_str());
        }
        for l in &m.loggers {
            let _ = writeln!(
                out,
                "{name}{{listener=\"\",mn=\"{}\",reason=\"{}\"}} {}",
                label(&l.mn),
                r.as_str(),
                l.rejected(r)
            );
        }
    }
    type Q = fn(&crate::source::hj212::relay::RelayQueue) -> u64;
    let relay: [(&str, &str, &str, Q); 7] = [
        ("parkwatch_hj212_relay_connected", "gauge", "1 while connected to the upstream platform.", |q| {
            u64::from(q.metrics.connected.load(Relaxed))
        }),
        ("parkwatch_hj212_relay_capacity", "gauge", "Frames the relay queue holds at most.", |q| q.capacity() as u64),
        ("parkwatch_hj212_relay_queued", "gauge", "Frames waiting for the upstream platform.", |q| q.len() as u64),
        ("parkwatch_hj212_relay_sent_total", "counter", "Frames relayed upstream.", |q| q.metrics.sent.load(Relaxed)),
        (
            "parkwatch_hj212_relay_dropped_total",
            "counter",
            "Frames dropped from a full relay queue (oldest first).",
            |q| q.metrics.dropped.load(Relaxed),
        ),
        ("parkwatch_hj212_relay_connections_total", "counter", "Connections made to the upstream platform.", |q| {
            q.metrics.connections.load(Relaxed)
        }),
        ("parkwatch_hj212_relay_errors_total", "counter", "Failed connects or writes to the upstream platform.", |q| {
            q.metrics.errors.load(Relaxed)
        }),
    ];
    if m.loggers.iter().any(|l| l.relay.is_some()) {
        for (name, kind, help, get) in relay {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in &m.loggers {
                if let Some(q) = &l.relay {
                    let _ = writeln!(out, "{name}{{mn=\"{}\"}} {}", label(&l.mn), get(q));
                }
            }
        }
    }
}
