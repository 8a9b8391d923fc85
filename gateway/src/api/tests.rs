//! Router tests without a socket: a real core fed one batch, queried through `oneshot`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::auth::Role;
use crate::core::Core;
use crate::model::pool::SamplePool;
use crate::model::{Batch, PointId, Quality, Registry, Sample};

const CONFIG: &str = r#"
[site]
id = "p1"
[[grids]]
id = "g1"
[[grids]]
id = "g2"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{ name = "ua", unit = "V" }, { name = "breaker", kind = "bool" }]
[[devices]]
id = "e1"
grid = "g2"
category = "environment"
points = [{ name = "noise", unit = "dB(A)" }]
[[people]]
id = "zhang"
name = "张伟"
mobile = "13800138000"
[[people]]
id = "li"
name = "李娜"
mobile = "13900139000"
[[rosters]]
grid = "g1"
shifts = [{ id = "day", name = "白班", from = "08:00", to = "20:00" }, { id = "night", name = "夜班", from = "20:00", to = "08:00" }]
weekly = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], shift = "day", people = ["zhang"] },
          { days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], shift = "night", people = ["li"] }]
overrides = [{ date = "2026-10-01", shift = "day", people = ["li"], reason = "国庆" }]
[[rosters]]
grid = "g2"
shifts = [{ id = "all", from = "00:00", to = "00:00" }]
[[plans]]
id = "fire"
title = "电气火灾应急处置"
steps = ["切断电源", "通知网格长"]
"#;

async fn app() -> (Router, mpsc::Sender<Batch>) {
    let (state, tx) = state(Metrics::new(vec![], vec![], 10));
    let ts = 1_700_000_000_000_000_000;
    let sample = |p: u32, value: f64| Sample { point: PointId(p), quality: Quality::Good, ts, value };
    tx.send(Batch::new(vec![sample(0, 229.5), sample(1, 1.0), sample(2, 61.2)], vec![])).await.unwrap();
    (router(state), tx)
}

/// The API's state over a real core and these counters; forwarding, incidents and Modbus are off.
fn state(metrics: Metrics) -> (AppState, mpsc::Sender<Batch>) {
    let config = crate::config::from_str(CONFIG, "t.toml".as_ref(), ".".as_ref()).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let metrics = Arc::new(metrics);
    let (tx, rx) = mpsc::channel(4);
    let (core, _task) = crate::core::spawn(
        Core::new(registry.clone(), metrics.clone(), Arc::new(SamplePool::default()), 10),
        rx,
        None,
        None,
    );
    let state = AppState {
        people: Arc::new(crate::people::Directory::from_config(&config)),
        // Like `history`: this state keeps none.
        actions: None,
        reports: Arc::new(crate::report::Reporter {
            history: None,
            ..crate::report::Reporter::new(&config, registry.clone())
        }),
        registry: registry.into(),
        core,
        metrics,
        batches: tx.downgrade(),
        incidents: None,
        reloader: None,
        config_reload: None,
        provisioning: None,
        forward: None,
        modbus: Default::default(),
        dlt645: Default::default(),
        health: Default::default(),
        central: None,
        audit: auth_db().audit.clone(),
        notify: None,
        history: None,
        access: access(),
        streams: Default::default(),
        hj212: Default::default(),
    };
    (state, tx)
}

/// One auth database for the tests of this file, the audit log beside it, and an admin token.
struct AuthDb {
    dir: tempfile::TempDir,
    audit: crate::audit::AuditLog,
    token: String,
}

fn auth_db() -> &'static AuthDb {
    static DB: std::sync::OnceLock<AuthDb> = std::sync::OnceLock::new();
    DB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (audit, _writer) = crate::audit::AuditLog::open(&dir.path().join("audit.db"), Default::default()).unwrap();
        let conn = crate::auth::store::open(&dir.path().join("auth.db")).unwrap();
        let by = crate::auth::admin::By { actor: "test", audit: &audit };
        let (token, _) = crate::auth::admin::create_token(&conn, "tests", Role::Admin, None, None, &[], by).unwrap();
        AuthDb { dir, audit, token }
    })
}

/// Changes made by the tests, recorded in the shared audit log.
fn by_test() -> crate::auth::admin::By<'static> {
    crate::auth::admin::By { actor: "test", audit: &auth_db().audit }
}

fn access() -> Access {
    let db = auth_db();
    let auth = crate::auth::Auth::open(&db.dir.path().join("auth.db"), Default::default(), db.audit.clone()).unwrap();
    Access { auth, metrics_auth: true, cookie_secure: false }
}

fn admin_token() -> String {
    format!("Bearer {}", auth_db().token)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let req = Request::get(uri).header("authorization", admin_token()).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn points_are_filtered_and_typed() {
    let (app, _tx) = app().await;
    let (status, all) = get(&app, "/api/v1/points").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (_, g1) = get(&app, "/api/v1/points?grid=g1").await;
    let names: Vec<&str> = g1.as_array().unwrap().iter().map(|p| p["point"].as_str().unwrap()).collect();
    assert_eq!(names, ["ua", "breaker"]);
    assert_eq!(g1[1]["value"], Value::Bool(true));
    assert_eq!(g1[0]["unit"], "V");
    assert_eq!(g1[0]["ts"], "2023-11-14T22:13:20.000Z");
    let (_, env) = get(&app, "/api/v1/points?category=environment").await;
    assert_eq!(env[0]["value"], 61.2);
    let (_, dev) = get(&app, "/api/v1/points?device=e1").await;
    assert_eq!(dev.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_filters_are_client_errors() {
    let (app, _tx) = app().await;
    let (status, body) = get(&app, "/api/v1/points?grid=g9").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "grid \"g9\" is not defined");
    let (status, _) = get(&app, "/api/v1/points?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn healthz_and_metrics() {
    let (app, _tx) = app().await;
    let (status, body) = get(&app, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let req = Request::get("/metrics").header("authorization", admin_token()).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("parkwatch_core_channel_capacity 4"), "{text}");
}

#[tokio::test]
async fn refusals_and_actions_are_audited_and_the_trail_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _tx) = state(Metrics::new(vec![], vec![], 10));
    let (log, _thread) = crate::audit::AuditLog::open(&dir.path().join("audit.db"), st.health.clone()).unwrap();
    let mut committed = log.committed();
    st.audit = log;
    let app = router(st);
    let conn = crate::auth::store::open(&auth_db().dir.path().join("auth.db")).unwrap();
    let (viewer, _) =
        crate::auth::admin::create_token(&conn, "wall", Role::Viewer, None, None, &[], by_test()).unwrap();
    let post = |uri: &str, body: &str, token: Option<&str>| {
        let mut r = Request::post(uri).header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(Body::from(body.to_owned())).unwrap()
    };
    let admin = auth_db().token.as_str();
    // No rules and no incident store here: both are refused, and both are recorded under the caller.
    let resp = app.clone().oneshot(post("/api/v1/rules/reload", "", Some(admin))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app.clone().oneshot(post("/api/v1/incidents/7/ack", r#"{"note":"seen"}"#, Some(admin))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The gate's refusals: a role too low, and no credentials on a change.
    let resp = app.clone().oneshot(post("/api/v1/rules/reload", "", Some(&viewer))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = app.clone().oneshot(post("/api/v1/incidents/7/close", "", None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A read without credentials is refused but not recorded; a viewer reading the trail is both.
    let resp = app.clone().oneshot(Request::get("/api/v1/points").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let as_viewer = Request::get("/api/v1/audit").header("authorization", format!("Bearer {viewer}"));
    let resp = app.clone().oneshot(as_viewer.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    tokio::time::timeout(std::time::Duration::from_secs(10), committed.wait_for(|seq| *seq >= 5))
        .await
        .unwrap()
        .unwrap();
    let (status, page) = get(&app, "/api/v1/audit?after=0&limit=1").await;
    assert_eq!(status, StatusCode::OK);
    let r = &page["records"][0];
    assert_eq!(
        (r["seq"].as_i64(), r["actor"].as_str(), r["action"].as_str()),
        (Some(1), Some("token:tests"), Some("rules.reload"))
    );
    assert_eq!((r["outcome"].as_str(), r["source"].as_str()), (Some("refused"), Some("local")));
    assert_eq!(page["next"], 1);
    let (_, page) = get(&app, "/api/v1/audit?after=1").await;
    let seen: Vec<(&str, &str, &str, &str)> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap();
            (f("actor"), f("action"), f("target"), f("outcome"))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("token:tests", "incident.ack", "incident:7", "refused"),
            ("token:wall", "api.request", "POST /api/v1/rules/reload", "refused"),
            ("anonymous", "api.request", "POST /api/v1/incidents/7/close", "refused"),
            ("token:wall", "api.request", "GET /api/v1/audit", "refused"),
        ]
    );
    assert_eq!(page["records"][0]["detail"], "note: seen; incidents are not enabled");
    assert_eq!(page["records"][1]["detail"], "needs role admin or above; you are viewer");
    let (status, _) = get(&app, "/api/v1/audit?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

mod health {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::api::health::{Evaluator, TARGET_FAILED_AFTER};
    use crate::forward::writer::TargetMetrics;
    use crate::forward::{ForwardMetrics, OutboxMetrics};
    use crate::model::health::Status;
    use crate::source::modbus::{DeviceStatus, ModbusStatus};

    const T0: i64 = 1_700_000_000_000_000_000;

    /// State with one broker, one forward target and one Modbus device, nothing connected yet.
    fn with_components() -> AppState {
        let (mut st, _tx) = state(Metrics::new(vec!["local".into()], vec![("local".into(), "t/#".into())], 10));
        st.forward = Some(Arc::new(ForwardMetrics {
            outbox: OutboxMetrics::default(),
            outbox_path: "outbox.db".into(),
            targets: vec![Arc::new(TargetMetrics { id: "central".into(), ..TargetMetrics::default() })],
        }));
        st.central = Some(Arc::new(crate::forward::central::CentralMetrics::default()));
        st.history = Some(crate::history::HistoryReader {
            path: "history.db".into(),
            metrics: Default::default(),
            minute_days: 35,
            max_bytes: 1 << 30,
        });
        st.notify = Some(crate::notify::NotifyHandle {
            path: "notify.db".into(),
            site: "park1".into(),
            metrics: Arc::new(crate::notify::NotifyMetrics {
                receivers: vec![Arc::new(crate::notify::ReceiverMetrics { id: "wx".into(), ..Default::default() })],
            }),
        });
        st.dlt645 = Arc::new(crate::source::dlt645::Dlt645Status {
            meters: vec![Arc::new(crate::source::dlt645::MeterStatus {
                device: "e1".into(),
                bus: "rs485a".into(),
                ..Default::default()
            })],
        });
        st.hj212 = {
            let config = crate::config::from_str(
                "[site]\nid = \"p\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"ww\"\ngrid = \"g1\"\ncategory = \"water\"\n[[hj212.listeners]]\nid = \"l\"\nlisten = \"127.0.0.1:0\"\n[[hj212.loggers]]\nmn = \"MN1\"\npw = \"1\"\ndevice = \"ww\"\nrelay = { address = \"127.0.0.1:9\" }\n",
                "t.toml".as_ref(),
                ".".as_ref(),
            )
            .unwrap();
            let registry = Arc::new(crate::model::Registry::from_config(&config));
            crate::source::hj212::Server::new(&config, registry, st.metrics.clone()).status()
        };
        st.modbus = Arc::new(ModbusStatus {
            devices: vec![Arc::new(DeviceStatus {
                device: "m1".into(),
                connection: "bus1".into(),
                ..DeviceStatus::default()
            })],
        });
        st
    }

    fn status(st: &AppState, component: &str) -> (Status, String) {
        let c = st.health.get(component).unwrap_or_else(|| panic!("{component} is not registered"));
        (c.status, c.reason)
    }

    #[tokio::test]
    async fn components_are_registered_before_they_report() {
        let st = with_components();
        let _e = Evaluator::new(&st);
        assert_eq!(status(&st, "broker:local"), (Status::Failed, "not connected yet".into()));
        assert_eq!(status(&st, "modbus:bus1"), (Status::Degraded, "not polled yet".into()));
        assert_eq!(status(&st, "target:central"), (Status::Ok, "nothing written yet".into()));
        assert_eq!(status(&st, "outbox").0, Status::Ok);
    }

    #[tokio::test]
    async fn broker_status_follows_the_connection() {
        let st = with_components();
        let mut e = Evaluator::new(&st);
        let b = &st.metrics.brokers[0];
        b.set_error("Connection refused (os error 111)".into());
        e.tick(T0);
        assert_eq!(
            status(&st, "broker:local"),
            (Status::Failed, "not connected: Connection refused (os error 111)".into())
        );
        b.connected.store(true, Relaxed);
        b.connections.store(1, Relaxed);
        e.tick(T0 + 1);
        assert_eq!(status(&st, "broker:local"), (Status::Ok, String::new()));
        b.connected.store(false, Relaxed);
        b.set_error("connection reset".into());
        e.tick(T0 + 2);
        assert_eq!(status(&st, "broker:local"), (Status::Failed, "connection lost: connection reset".into()));
    }

    #[tokio::test]
    async fn a_target_retrying_is_degraded_then_failed_after_a_minute() {
        let st = with_components();
        let mut e = Evaluator::new(&st);
        let t = &st.forward.as_ref().unwrap().targets[0];
        t.retries.store(1, Relaxed);
        *t.last_error.lock().unwrap() = "connection refused".into();
        e.tick(T0);
        assert_eq!(status(&st, "target:central"), (Status::Degraded, "retrying: connection refused".into()));
        let limit = TARGET_FAILED_AFTER.as_nanos() as i64;
        e.tick(T0 + limit);
        assert_eq!(status(&st, "target:central").0, Status::Degraded);
        e.tick(T0 + limit + 1);
        assert_eq!(
            status(&st, "target:central"),
            (Status::Failed, "no successful write for over 60 s: connection refused".into())
        );
        t.up.store(true, Relaxed);
        t.writes.store(1, Relaxed);
        e.tick(T0 + limit + 2);
        assert_eq!(status(&st, "target:central"), (Status::Ok, String::new()));
        // A new failure starts a new minute.
        t.up.store(false, Relaxed);
        e.tick(T0 + 10 * limit);
        assert_eq!(status(&st, "target:central").0, Status::Degraded);
    }

    #[tokio::test]
    async fn outbox_fails_while_appends_fail() {
        let st = with_components();
        let mut e = Evaluator::new(&st);
        let o = &st.forward.as_ref().unwrap().outbox;
        *o.last_error.lock().unwrap() = "database or disk is full".into();
        o.failing.store(true, Relaxed);
        e.tick(T0);
        assert_eq!(status(&st, "outbox"), (Status::Failed, "cannot write: database or disk is full".into()));
        o.failing.store(false, Relaxed);
        e.tick(T0 + 1);
        assert_eq!(status(&st, "outbox"), (Status::Ok, String::new()));
    }

    #[tokio::test]
    async fn packs_that_did_not_load_degrade_the_rules() {
        let (mut st, _tx) = state(Metrics::new(vec![], vec![], 10));
        let e = Evaluator::new(&st);
        e.rules().await;
        assert_eq!(status(&st, "rules"), (Status::Ok, String::new()));
        let (tx, rx) = mpsc::channel(4);
        let broken = |pack: &str| crate::core::rules::PackError {
            pack: pack.into(),
            rule: None,
            message: "syntax error".into(),
            config: false,
        };
        let core = Core::new(st.registry.load(), st.metrics.clone(), Arc::new(SamplePool::default()), 10)
            .with_load_errors(vec![broken("noise.rhai"), broken("electrical.rhai"), broken("noise.rhai")]);
        (st.core, _) = crate::core::spawn(core, rx, None, None);
        let e = Evaluator::new(&st);
        e.rules().await;
        assert_eq!(
            status(&st, "rules"),
            (Status::Degraded, "rule packs not loaded: electrical.rhai, noise.rhai".into())
        );
        drop(tx);
    }

    #[tokio::test]
    async fn readyz_answers_503_naming_failed_components() {
        let st = with_components();
        let app = router(st.clone());
        st.health.set("broker:local", Status::Failed, "connection lost: reset");
        st.health.set("modbus:bus1", Status::Degraded, "offline: m1");
        let (code, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["ready"], false);
        assert_eq!(
            body["failed"],
            serde_json::json!([{ "component": "broker:local", "reason": "connection lost: reset" }])
        );
        // Liveness does not care.
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        st.health.set("broker:local", Status::Ok, "");
        let (code, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["ready"], true);
    }

    #[tokio::test]
    async fn health_lists_every_component_with_local_since() {
        let st = with_components();
        let app = router(st.clone());
        st.health.set_at("broker:local", Status::Failed, "not connected yet", T0);
        st.health.set_at("outbox", Status::Ok, "", T0);
        let (code, body) = get(&app, "/api/v1/health").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["timezone"], "Asia/Shanghai");
        let c = &body["components"];
        assert_eq!(c.as_array().unwrap().len(), 2, "{body}");
        assert_eq!(c[0]["component"], "broker:local");
        assert_eq!(c[0]["status"], "failed");
        assert_eq!(c[0]["reason"], "not connected yet");
        assert_eq!(c[0]["since"], "2023-11-15T06:13:20.000+08:00");
        assert_eq!(c[1]["status"], "ok");
    }

    #[tokio::test]
    async fn component_status_is_a_metric() {
        let st = with_components();
        let app = router(st.clone());
        st.health.set("broker:local", Status::Failed, "down");
        st.health.set("modbus:bus1", Status::Degraded, "offline: m1");
        st.health.set("outbox", Status::Ok, "");
        let text = metrics_text(&app).await;
        assert!(text.contains("parkwatch_component_status{component=\"broker:local\"} 2\n"), "{text}");
        assert!(text.contains("parkwatch_component_status{component=\"modbus:bus1\"} 1\n"), "{text}");
        assert!(text.contains("parkwatch_component_status{component=\"outbox\"} 0\n"), "{text}");
        assert!(text.contains("\nparkwatch_up 1\n"), "{text}");
    }

    /// The `gateway` line the forwarder writes once a minute carries what `/metrics` shows (summed
    /// over subscriptions, reasons, listeners, loggers and targets).
    #[tokio::test]
    async fn gateway_health_reads_what_metrics_shows() {
        let st = with_components();
        st.metrics.core.samples.store(1234, Relaxed);
        st.metrics.subscriptions()[0].rejects[0].store(3, Relaxed);
        st.hj212.listeners[0].rejects[0].store(1, Relaxed);
        st.hj212.loggers[0].rejects[1].store(2, Relaxed);
        let f = st.forward.as_ref().unwrap();
        f.outbox.batches.store(5, Relaxed);
        f.outbox.bytes.store(4096, Relaxed);
        f.outbox.incident_lag.store(7, Relaxed);
        f.targets[0].retries.store(9, Relaxed);
        f.targets[0].dead_letters.store(4, Relaxed);
        st.history.as_ref().unwrap().metrics.dropped_samples.store(11, Relaxed);
        let text = metrics_text(&router(st.clone())).await;
        let sum = |family: &str| -> u64 {
            text.lines()
                .filter(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with(['{', ' '])))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let h = crate::api::health::gateway_health(&st, 42);
        let shown = crate::forward::line::GatewayHealth {
            ts: 42,
            samples_total: sum("parkwatch_core_samples_total"),
            rejects_total: sum("parkwatch_mqtt_rejects_total") + sum("parkwatch_hj212_rejects_total"),
            outbox_batches: sum("parkwatch_outbox_batches"),
            outbox_bytes: sum("parkwatch_outbox_bytes"),
            write_retries_total: sum("parkwatch_forward_retries_total"),
            dead_letters_total: sum("parkwatch_forward_dead_letters_total"),
            incident_lag: sum("parkwatch_outbox_incident_lag"),
            history_dropped_samples_total: sum("parkwatch_history_dropped_samples_total"),
        };
        assert_eq!(h, shown, "{text}");
        assert_eq!(
            (h.samples_total, h.rejects_total, h.outbox_bytes, h.history_dropped_samples_total),
            (1234, 6, 4096, 11)
        );
    }

    /// Which metric family each counter struct is exported under, and counters whose metric name does
    /// not contain the field name (a unit conversion).
    const PREFIXES: &[(&str, &str)] = &[
        ("BrokerMetrics", "parkwatch_mqtt_"),
        ("SubscriptionMetrics", "parkwatch_mqtt_"),
        ("CoreMetrics", "parkwatch_core_"),
        ("OutboxMetrics", "parkwatch_outbox_"),
        ("TargetMetrics", "parkwatch_forward_"),
        ("StoreMetrics", "parkwatch_incident_store_"),
        ("DeviceStatus", "parkwatch_modbus_"),
        ("MeterStatus", "parkwatch_dlt645_"),
        ("CentralMetrics", "parkwatch_central_mqtt_"),
        ("ReceiverMetrics", "parkwatch_notify_"),
        ("HistoryMetrics", "parkwatch_history_"),
        ("ListenerStatus", "parkwatch_hj212_"),
        ("LoggerStatus", "parkwatch_hj212_"),
        ("RelayQueue", "parkwatch_hj212_relay_"),
        ("RelayMetrics", "parkwatch_hj212_relay_"),
    ];
    const RENAMED: &[(&str, &str, &str)] = &[
        ("TargetMetrics", "last_latency_us", "parkwatch_forward_write_latency_seconds"),
        ("TargetMetrics", "latency_us_sum", "parkwatch_forward_write_latency_seconds_sum"),
        ("TargetMetrics", "oldest_ns", "parkwatch_forward_oldest_age_seconds"),
        ("TargetMetrics", "state", "parkwatch_forward_paused"),
        ("DeviceStatus", "last_latency_us", "parkwatch_modbus_latency_seconds"),
        ("DeviceStatus", "last_success_ns", "parkwatch_modbus_last_success_timestamp_seconds"),
        ("MeterStatus", "last_latency_us", "parkwatch_dlt645_latency_seconds"),
        ("MeterStatus", "last_success_ns", "parkwatch_dlt645_last_success_timestamp_seconds"),
        ("ListenerStatus", "open", "parkwatch_hj212_connections"),
        ("LoggerStatus", "connections", "parkwatch_hj212_logger_connected"),
        ("LoggerStatus", "last_frame_ns", "parkwatch_hj212_last_frame_timestamp_seconds"),
    ];
    /// Debug structs that hold no counters of ours: the clock, locks, and the reject log's settings.
    const NOT_COUNTERS: &[&str] = &["Instant", "Mutex", "RwLock", "RejectLog", "Notify"];

    /// Every numeric or boolean field (an atomic prints as its value) in a `{:#?}` rendering, with the
    /// struct it belongs to. The fields come from the structs themselves, so a new counter is found
    /// without anyone listing it.
    fn counter_fields(debug: &str) -> Vec<(String, String)> {
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut out = Vec::new();
        for line in debug.lines() {
            let indent = line.len() - line.trim_start().len();
            let t = line.trim();
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            if let Some(head) = t.strip_suffix('{') {
                // `name: Struct {`, `Struct {` (in a list) or `Some(Struct {`.
                let ty = head.trim().rsplit([' ', '(']).next().unwrap_or_default();
                stack.push((indent, ty.to_owned()));
                continue;
            }
            let Some((name, value)) = t.trim_end_matches(',').split_once(": ") else { continue };
            let is_counter = value == "true" || value == "false" || value.parse::<i64>().is_ok();
            let Some((_, ty)) = stack.last() else { continue };
            if is_counter && !NOT_COUNTERS.contains(&ty.as_str()) {
                out.push((ty.clone(), name.to_owned()));
            }
        }
        out
    }

    #[tokio::test]
    async fn every_counter_is_exported() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _, _) = crate::incident::open(&dir.path().join("incidents.db")).unwrap();
        let (store, _thread) = crate::incident::spawn(conn).unwrap();
        let mut st = with_components();
        st.incidents = Some(store.clone());
        let text = metrics_text(&router(st.clone())).await;
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let debug = format!(
            "{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}",
            st.metrics,
            st.forward,
            store.metrics,
            st.modbus,
            st.dlt645,
            st.central,
            st.notify,
            st.history.as_ref().map(|h| &h.metrics),
            st.hj212
        );
        let fields = counter_fields(&debug);
        for ty in [
            "BrokerMetrics",
            "SubscriptionMetrics",
            "CoreMetrics",
            "OutboxMetrics",
            "TargetMetrics",
            "StoreMetrics",
            "DeviceStatus",
            "MeterStatus",
            "CentralMetrics",
            "ReceiverMetrics",
            "HistoryMetrics",
            "ListenerStatus",
            "LoggerStatus",
            "RelayMetrics",
        ] {
            assert!(fields.iter().any(|(t, _)| t == ty), "no counters of {ty} found in:\n{debug}");
        }
        let mut missing = Vec::new();
        for (ty, field) in &fields {
            let Some((_, prefix)) = PREFIXES.iter().find(|(t, _)| t == ty) else {
                missing.push(format!("{ty}.{field} (no metric family for {ty})"));
                continue;
            };
            let renamed = RENAMED.iter().find(|(t, f, _)| t == ty && f == field).map(|(_, _, m)| *m);
            let exported = match renamed {
                Some(m) => families.contains(&m),
                None => families.iter().any(|f| f.starts_with(prefix) && f.contains(field.as_str())),
            };
            if !exported {
                missing.push(format!("{ty}.{field}"));
            }
        }
        assert!(missing.is_empty(), "counters not exported in /metrics: {missing:?}\n{text}");
        for (ty, field, _) in RENAMED {
            assert!(fields.iter().any(|(t, f)| t == ty && f == field), "{ty}.{field} is renamed but no longer exists");
        }
    }
}

async fn metrics_text(app: &Router) -> String {
    let req = Request::get("/metrics").header("authorization", admin_token()).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

mod dashboard;
mod routes;

#[tokio::test]
async fn duty_names_the_shift_in_local_time_and_the_people_with_mobiles() {
    let (app, _tx) = app().await;
    // A Thursday morning after a night: the night shift of Wednesday, staffed by li.
    let (status, d) = get(&app, "/api/v1/duty?grid=g1&at=2026-06-04T03:00:00%2B08:00").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["at"], "2026-06-04T03:00:00+08:00");
    assert_eq!(d["shift"]["id"], "night");
    assert_eq!(d["shift"]["name"], "夜班");
    assert_eq!(d["shift"]["date"], "2026-06-03");
    assert_eq!(d["shift"]["start"], "2026-06-03T20:00:00+08:00");
    assert_eq!(d["shift"]["end"], "2026-06-04T08:00:00+08:00");
    assert_eq!(d["shift"]["people"], serde_json::json!([{ "id": "li", "name": "李娜", "mobile": "13900139000" }]));
    // The National Day override, asked in UTC.
    let (_, d) = get(&app, "/api/v1/duty?grid=g1&at=2026-10-01T01:00:00Z").await;
    assert_eq!(d["shift"]["id"], "day");
    assert_eq!(d["shift"]["override"], "国庆");
    assert_eq!(d["shift"]["people"][0]["id"], "li");
    // Now, by default: some shift of g1 is always on.
    let (status, d) = get(&app, "/api/v1/duty?grid=g1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(d["shift"]["id"] == "day" || d["shift"]["id"] == "night", "{d}");
    assert_eq!(get(&app, "/api/v1/duty?grid=g1&at=yesterday").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get(&app, "/api/v1/duty?grid=g9").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/api/v1/duty").await.0, StatusCode::BAD_REQUEST, "grid is required");
}

#[tokio::test]
async fn patrols_answer_per_grid_without_a_tracker_as_nothing_due() {
    let (app, _tx) = app().await;
    let (status, p) =
        get(&app, "/api/v1/patrols?grid=g1&from=2026-06-03T08:00:00%2B08:00&to=2026-06-04T08:00:00%2B08:00").await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["from"], "2026-06-03T08:00:00+08:00");
    assert_eq!(p["grids"][0]["grid"], "g1");
    assert_eq!(p["grids"][0]["due"], 0);
    let (_, all) = get(&app, "/api/v1/patrols").await;
    assert_eq!(all["grids"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&app, "/api/v1/patrols?from=2026-06-04T08:00:00Z&to=2026-06-03T08:00:00Z").await.0,
        StatusCode::BAD_REQUEST
    );
}

/// The history endpoint: the exact JSON shape the dashboard reads, the step rule, the site's time
/// zone, and clear refusals.
#[tokio::test]
async fn history_answers_rows_in_the_agreed_shape() {
    use crate::model::time::ManualClock;
    const S: i64 = 1_000_000_000;
    // 2025-12-01T00:00:00Z.
    const T0: i64 = 1_764_547_200 * S;
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _tx) = state(Metrics::new(vec![], vec![], 10));
    let settings = crate::history::Settings {
        path: dir.path().join("history.db"),
        minute_days: 35,
        hour_days: 400,
        max_bytes: 1 << 30,
    };
    let clock = Arc::new(ManualClock::new(T0 + 3_600 * S, 0));
    let (tap, reader, thread) = crate::history::start(&settings, &st.registry, clock).unwrap();
    // Two minutes of ua (p0) and noise (p2) at 1 Hz, then a reading that ends the last hold.
    let mut batch = Vec::new();
    for i in 0..=120 {
        let ts = T0 + i * S;
        batch.push(Sample { point: PointId(0), quality: Quality::Good, ts, value: 220.0 + (i % 2) as f64 });
        batch.push(Sample {
            point: PointId(2),
            quality: Quality::Good,
            ts,
            value: if i % 2 == 0 { 50.0 } else { 60.0 },
        });
    }
    tap.offer(&batch);
    drop(tap);
    tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
    st.history = Some(reader);
    let app = router(st);

    let (status, body) =
        get(&app, "/api/v1/points/m1/ua/history?from=2025-12-01T00:00:00Z&to=2025-12-01T00:02:00Z").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "device": "m1", "point": "ua", "unit": "V", "step": "1m",
            "from": "2025-12-01T00:00:00.000Z", "to": "2025-12-01T00:02:00.000Z",
            "rows": [
                { "t": "2025-12-01T00:00:00.000Z", "t_ms": 1_764_547_200_000_i64, "avg": 220.5, "min": 220.0,
                  "max": 221.0, "count": 60, "last": 221.0, "leq": null },
                { "t": "2025-12-01T00:01:00.000Z", "t_ms": 1_764_547_260_000_i64, "avg": 220.5, "min": 220.0,
                  "max": 221.0, "count": 60, "last": 221.0, "leq": null },
            ]
        })
    );
    // Noise keeps its Leq (50 and 60 dB(A), a second each: 57.40 per limits.md); epoch ms work too.
    let (status, body) = get(&app, "/api/v1/points/e1/noise/history?from=1764547200000&to=1764547260000&tz=site").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let row = &body["rows"][0];
    assert_eq!(((row["leq"].as_f64().unwrap() * 100.0).round()) / 100.0, 57.40);
    assert_eq!(row["avg"], 55.0);
    assert_eq!(row["t"], "2025-12-01T08:00:00.000+08:00", "the site's time zone");
    assert_eq!(body["from"], "2025-12-01T08:00:00.000+08:00");
    // auto: hours beyond two days.
    let (_, body) = get(&app, "/api/v1/points/m1/ua/history?from=2025-11-28T00:00:00Z&to=2025-12-02T00:00:00Z").await;
    assert_eq!((body["step"].as_str(), body["rows"].as_array().map(Vec::len)), (Some("1h"), Some(1)));
    assert_eq!(body["rows"][0]["count"], 121);
    for (uri, status) in [
        ("/api/v1/points/m1/ua/history?step=5m", StatusCode::BAD_REQUEST),
        ("/api/v1/points/m1/ua/history?from=yesterday", StatusCode::BAD_REQUEST),
        ("/api/v1/points/m1/ua/history?from=2025-12-02T00:00:00Z&to=2025-12-01T00:00:00Z", StatusCode::BAD_REQUEST),
        (
            "/api/v1/points/m1/ua/history?from=2020-01-01T00:00:00Z&to=2025-12-01T00:00:00Z&step=1m",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/points/m1/ua/history?tz=mars", StatusCode::BAD_REQUEST),
        ("/api/v1/points/m1/ua/history?limit=5", StatusCode::BAD_REQUEST),
        ("/api/v1/points/m1/nope/history", StatusCode::NOT_FOUND),
        ("/api/v1/points/nope/ua/history", StatusCode::NOT_FOUND),
    ] {
        let (got, body) = get(&app, uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{uri}: {body}");
    }
}
