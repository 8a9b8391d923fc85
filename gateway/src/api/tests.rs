//! Router tests without a socket: a real core fed one batch, queried through `oneshot`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::core::Core;
use crate::model::{Batch, PointId, Quality, Sample};
use crate::source::pool::SamplePool;

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
"#;

async fn app() -> (Router, mpsc::Sender<Batch>) {
    let config = crate::config::from_str(CONFIG, "t.toml".as_ref(), ".".as_ref()).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let metrics = Arc::new(Metrics::new(vec![], vec![], 10));
    let (tx, rx) = mpsc::channel(4);
    let (core, _task) = crate::core::spawn(
        Core::new(registry.clone(), metrics.clone(), Arc::new(SamplePool::default()), 10),
        rx,
        None,
        None,
    );
    let state = AppState {
        registry,
        core,
        metrics,
        batches: tx.downgrade(),
        incidents: None,
        reloader: None,
        forward: None,
        modbus: Default::default(),
    };
    let ts = 1_700_000_000_000_000_000;
    let sample = |p: u32, value: f64| Sample { point: PointId(p), quality: Quality::Good, ts, value };
    tx.send(Batch::new(vec![sample(0, 229.5), sample(1, 1.0), sample(2, 61.2)], vec![])).await.unwrap();
    (router(state), tx)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
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
    let resp = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("parkwatch_core_channel_capacity 4"), "{text}");
}
