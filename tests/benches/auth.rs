//! Authentication cost: `GET /api/v1/incidents` (50 incidents in the store) at 1,000 requests/s through
//! the API's router in this process, once with a bearer token through the gate every served route has,
//! once through the same handler without the gate (the caller given directly). Reports the CPU time of
//! the whole process (every thread: router, handlers, the incident store's thread) per request and
//! the gate's share; the target is under 10 % more CPU with authentication.
//!
//! `cargo bench -p parkwatch-e2e --bench auth`; `PARKWATCH_BENCH_SECS` (default 5) sets each round's
//! length, `PARKWATCH_BENCH_ROUNDS` (default 3) the rounds of each kind, alternated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use parkwatch::api::{self, Access, AppState, Principal};
use parkwatch::auth::{admin, Auth, Identity, Role};
use parkwatch::core::Core;
use parkwatch::metrics::Metrics;
use parkwatch::model::incident::{Change, NewIncident, Severity, State};
use parkwatch::model::pool::SamplePool;
use parkwatch::model::Registry;
use tower::ServiceExt as _;

const RATE: u64 = 1_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time of every thread of this process, in ns.
fn cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

const CONFIG: &str = r#"
[site]
id = "bench"
[[grids]]
id = "g1"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{ name = "residual_current", unit = "mA" }]
"#;

async fn state(dir: &std::path::Path) -> (AppState, String) {
    let config = parkwatch::config::from_str(CONFIG, "bench.toml".as_ref(), dir).unwrap();
    let registry = Arc::new(Registry::from_config(&config));
    let metrics = Arc::new(Metrics::new(vec![], vec![], 10));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let core = Core::new(registry.clone(), metrics.clone(), Arc::new(SamplePool::default()), 10);
    let (handle, _task) = parkwatch::core::spawn(core, rx, None, None);
    std::mem::forget(tx);
    let (conn, _, _) = parkwatch::incident::open(&dir.join("incidents.db")).unwrap();
    let (store, _thread) = parkwatch::incident::spawn(conn).unwrap();
    let incidents = (1..=50)
        .map(|id| {
            Change::Open(NewIncident {
                id,
                at: 1_700_000_000_000_000_000 + id * 1_000_000_000,
                rule: "electrical.residual_current".into(),
                title: "Residual current".into(),
                category: "electrical".into(),
                severity: Severity::Critical,
                state: State::ActiveUnacked,
                device: "m1".into(),
                grid: "g1".into(),
                point: "residual_current".into(),
                value: 350.0,
                message: "350 mA".into(),
                plan: "fire".into(),
            })
        })
        .collect();
    store.apply(incidents, None).await.unwrap();
    store.sync().await.unwrap();
    let auth_path = dir.join("auth.db");
    let conn = parkwatch::auth::store::open(&auth_path).unwrap();
    let (audit, _writer) = parkwatch::audit::AuditLog::open(&dir.join("audit.db"), Default::default()).unwrap();
    let by = admin::By { actor: "bench", audit: &audit };
    let (token, _) =
        admin::create_token(&conn, "bench", Role::Officer, Some(vec!["g1".into()]), None, &["g1".into()], by).unwrap();
    let auth = Auth::open(&auth_path, Default::default(), audit.clone()).unwrap();
    let state = AppState {
        reports: Arc::new(parkwatch::report::Reporter::new(&config, registry.clone())),
        actions: None,
        registry: registry.into(),
        core: handle,
        metrics,
        batches: tokio::sync::mpsc::channel(1).0.downgrade(),
        incidents: Some(store),
        reloader: None,
        config_reload: None,
        provisioning: None,
        forward: None,
        modbus: Default::default(),
        dlt645: Default::default(),
        health: Default::default(),
        central: None,
        audit,
        people: Default::default(),
        notify: None,
        history: None,
        access: Access { auth, metrics_auth: true, cookie_secure: false },
        streams: Default::default(),
        hj212: Default::default(),
    };
    (state, token)
}

/// The incidents route without its gate, the caller given as the gate would give it.
fn unguarded(state: AppState) -> Router {
    let route = api::routes().into_iter().find(|r| r.path == "/api/v1/incidents").unwrap();
    let caller = Principal {
        identity: Identity { name: "token:bench".into(), role: Role::Officer, grids: Some(vec!["g1".into()]) },
        source: "local".into(),
    };
    Router::new().route(route.path, route.handler_without_gate()).layer(axum::Extension(caller)).with_state(state)
}

/// Sends `GET /api/v1/incidents` at `RATE` per second for `secs`; CPU ns per request.
async fn round(app: &Router, token: Option<&str>, secs: u64) -> f64 {
    let n = RATE * secs;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let cpu = cpu_ns();
    for _ in 0..n {
        tick.tick().await;
        let mut req = Request::get("/api/v1/incidents");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        assert!(body.len() > 1_000, "50 incidents in the answer");
    }
    let used = cpu_ns() - cpu;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(elapsed < secs as f64 * 1.2, "could not keep {RATE} requests/s ({n} in {elapsed:.1} s)");
    used as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let secs = env_u64("PARKWATCH_BENCH_SECS", 5);
    let rounds = env_u64("PARKWATCH_BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (state, token) = state(dir.path()).await;
        let gated = api::router(state.clone());
        let plain = unguarded(state);
        // Warm up both paths (SQLite page cache, the token cache).
        round(&gated, Some(&token), 1).await;
        round(&plain, None, 1).await;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            without.push(round(&plain, None, secs).await);
            with.push(round(&gated, Some(&token), secs).await);
        }
        let (w, wo) = (median(with.clone()), median(without.clone()));
        println!("GET /api/v1/incidents (50 incidents) at {RATE} requests/s, {rounds} rounds of {secs} s each");
        println!("  without the gate  {:>8.1} µs CPU per request  (rounds: {:?})", wo / 1e3, rounded(&without));
        println!("  bearer token      {:>8.1} µs CPU per request  (rounds: {:?})", w / 1e3, rounded(&with));
        println!("  authentication costs {:+.1} % CPU (target < 10 %)", (w / wo - 1.0) * 100.0);
    });
}

fn rounded(v: &[f64]) -> Vec<String> {
    v.iter().map(|x| format!("{:.1}", x / 1e3)).collect()
}
