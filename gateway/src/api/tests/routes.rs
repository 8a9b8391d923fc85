//! The route table: every route × every role (and no credentials) × an incident of the caller's grid
//! and one of another grid gives the expected status. A route this table does not know fails the
//! test, so a new route cannot go in without its role being decided here too.

use super::*;
use crate::auth::{admin, Grids};
use crate::incident::IncidentStore;
use crate::model::incident::{Change, NewIncident, Severity, State};

/// Incident 1 is in g1, incident 2 in g2; both critical.
const IN_G1: i64 = 1;
const IN_G2: i64 = 2;

/// The callers: a label, role and grids. `None` is a request without credentials.
fn callers() -> Vec<(&'static str, Option<(Role, Grids)>)> {
    let g1 = || Some(vec!["g1".to_owned()]);
    vec![
        ("anonymous", None),
        ("viewer (site)", Some((Role::Viewer, None))),
        ("viewer (g1)", Some((Role::Viewer, g1()))),
        ("officer (g1)", Some((Role::Officer, g1()))),
        ("supervisor (g1)", Some((Role::Supervisor, g1()))),
        ("safety_manager", Some((Role::SafetyManager, None))),
        ("admin", Some((Role::Admin, None))),
    ]
}

/// What the table expects of each route: its need, and the body a request sends.
fn declared(method: &str, path: &str) -> (Need, &'static str) {
    let viewer = Need::Role(Role::Viewer);
    let officer = Need::Role(Role::Officer);
    match (method, path) {
        ("GET", "/healthz") => (Need::Open, ""),
        ("GET", "/") => (Need::Open, ""),
        ("GET", "/assets/{name}") => (Need::Open, ""),
        ("GET", "/metrics") => (Need::Metrics, ""),
        ("POST", "/api/v1/login") => (Need::Login, "{}"),
        ("POST", "/api/v1/logout") => (viewer, ""),
        ("GET", "/api/v1/me") => (viewer, ""),
        ("GET", "/readyz") => (viewer, ""),
        ("GET", "/api/v1/health") => (viewer, ""),
        ("GET", "/api/v1/points") => (viewer, ""),
        ("GET", "/api/v1/points/{device}/{point}/history") => (viewer, ""),
        ("GET", "/api/v1/devices") => (viewer, ""),
        ("GET", "/api/v1/events") => (viewer, ""),
        ("GET", "/api/v1/rejects") => (Need::Role(Role::SafetyManager), ""),
        ("GET", "/api/v1/forward") => (Need::Role(Role::SafetyManager), ""),
        ("GET", "/api/v1/grids") => (viewer, ""),
        ("GET", "/api/v1/site/plan") => (viewer, ""),
        ("GET", "/api/v1/incidents") => (viewer, ""),
        ("GET", "/api/v1/incidents/stream") => (viewer, ""),
        ("GET", "/api/v1/incidents/{id}") => (viewer, ""),
        ("POST", "/api/v1/incidents/{id}/ack") => (officer, "{}"),
        ("POST", "/api/v1/incidents/{id}/shelve") => (officer, r#"{"duration": "30m", "reason": "maintenance"}"#),
        ("POST", "/api/v1/incidents/{id}/comment") => (officer, r#"{"text": "checked on site"}"#),
        ("POST", "/api/v1/incidents/{id}/close") => (officer, r#"{"note": "breaker replaced"}"#),
        ("GET", "/api/v1/duty") => (viewer, ""),
        ("GET", "/api/v1/patrols") => (viewer, ""),
        ("GET", "/api/v1/grids/{id}/kpis") => (viewer, ""),
        ("GET", "/api/v1/reports/emissions") => (viewer, ""),
        ("GET", "/api/v1/reports/energy") => (viewer, ""),
        ("GET", "/api/v1/actions") => (viewer, ""),
        ("POST", "/api/v1/actions/{id}") => (officer, r#"{"value": 1, "reason": "drill"}"#),
        ("POST", "/api/v1/actions/requests/{n}/confirm") => (officer, ""),
        ("GET", "/api/v1/notifications") => (viewer, ""),
        ("GET", "/api/v1/rules") => (viewer, ""),
        ("POST", "/api/v1/rules/reload") => (Need::Role(Role::Admin), ""),
        ("POST", "/api/v1/config/reload") => (Need::Role(Role::Admin), ""),
        ("GET", "/api/v1/config/reload") => (Need::Role(Role::Admin), ""),
        ("GET", "/api/v1/provisioning") => (Need::Role(Role::Admin), ""),
        ("POST", "/api/v1/provisioning/{device}/approve") => (Need::Role(Role::Admin), ""),
        ("GET", "/api/v1/audit") => (Need::Role(Role::SafetyManager), ""),
        _ => panic!("route {method} {path} is not in the route table test; declare the role it needs here"),
    }
}

/// The status a caller gets on a route, for an incident in (`own`) or out of their grids.
fn expected(method: &str, path: &str, caller: Option<&(Role, Grids)>, own: bool) -> StatusCode {
    let (need, _) = declared(method, path);
    let role = match (need, caller) {
        (Need::Open, _) => return StatusCode::OK,
        // An empty object is not a login: refused before any password is checked.
        (Need::Login, _) => return StatusCode::BAD_REQUEST,
        (_, None) => return StatusCode::UNAUTHORIZED,
        (Need::Metrics, Some(_)) => return StatusCode::OK,
        (Need::Role(needed), Some((role, _))) if *role < needed => return StatusCode::FORBIDDEN,
        (Need::Role(_), Some((role, _))) => *role,
    };
    let site_wide = caller.is_some_and(|(_, g)| g.is_none());
    let visible = own || site_wide;
    match path {
        "/api/v1/incidents/{id}"
        | "/api/v1/incidents/{id}/ack"
        | "/api/v1/incidents/{id}/comment"
        | "/api/v1/incidents/{id}/close"
            if !visible =>
        {
            StatusCode::NOT_FOUND
        }
        "/api/v1/incidents/{id}/shelve" if !visible => StatusCode::NOT_FOUND,
        // Asked about g2 (another grid's) by a g1 caller.
        "/api/v1/duty" | "/api/v1/patrols" | "/api/v1/grids/{id}/kpis" if !visible => StatusCode::NOT_FOUND,
        // A point of another grid is as unknown as one that does not exist.
        "/api/v1/points/{device}/{point}/history" if !visible => StatusCode::NOT_FOUND,
        // The incidents are critical: an officer may not shelve them; above, the store has no live
        // alarm to shelve (the test runs no rules), which is past every access check.
        "/api/v1/incidents/{id}/shelve" if role < Role::Supervisor => StatusCode::FORBIDDEN,
        "/api/v1/incidents/{id}/shelve" => StatusCode::CONFLICT,
        // This state's site has no plan.
        "/api/v1/site/plan" => StatusCode::NOT_FOUND,
        // This state declares no actions.
        "/api/v1/actions/{id}" | "/api/v1/actions/requests/{n}/confirm" => StatusCode::NOT_FOUND,
        // This state keeps no history, which reports are computed from.
        "/api/v1/reports/emissions" | "/api/v1/reports/energy" => StatusCode::NOT_FOUND,
        // No rules run in this state, so there is nothing to reload.
        "/api/v1/rules/reload" => StatusCode::NOT_FOUND,
        // This state has no configuration file to reload (the last reload, none, can be asked) and
        // no subscription that provisions devices.
        "/api/v1/config/reload" if method == "POST" => StatusCode::NOT_FOUND,
        "/api/v1/provisioning" | "/api/v1/provisioning/{device}/approve" => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

pub(super) fn incident(id: i64, grid: &str, device: &str) -> Change {
    Change::Open(NewIncident {
        id,
        at: 1_000_000_000,
        rule: "electrical.residual_current".into(),
        title: "Residual current".into(),
        category: "electrical".into(),
        severity: Severity::Critical,
        state: State::ActiveUnacked,
        device: device.into(),
        grid: grid.into(),
        point: "ir".into(),
        value: 350.0,
        message: "350 mA".into(),
        plan: "fire".into(),
    })
}

/// A fresh state (each case may close an incident) with incidents 1 (g1) and 2 (g2).
pub(super) async fn state_with_incidents(dir: &std::path::Path) -> (AppState, IncidentStore, mpsc::Sender<Batch>) {
    let (mut st, tx) = state(Metrics::new(vec![], vec![], 10));
    let (conn, _, _) = crate::incident::open(&dir.join("incidents.db")).unwrap();
    let (store, _thread) = crate::incident::spawn(conn).unwrap();
    store.apply(vec![incident(IN_G1, "g1", "m1"), incident(IN_G2, "g2", "e1")], None).await.unwrap();
    store.sync().await.unwrap();
    st.incidents = Some(store.clone());
    let path = dir.join("history.db");
    crate::history::store::open(&path, 1 << 30).unwrap();
    st.history =
        Some(crate::history::HistoryReader { path, metrics: Default::default(), minute_days: 35, max_bytes: 1 << 30 });
    (st, store, tx)
}

pub(super) fn token(role: Role, grids: &Grids) -> String {
    let conn = crate::auth::store::open(&auth_db().dir.path().join("auth.db")).unwrap();
    let known = ["g1".to_owned(), "g2".to_owned()];
    let (t, _) = admin::create_token(&conn, "table", role, grids.clone(), None, &known, by_test()).unwrap();
    format!("Bearer {t}")
}

#[tokio::test]
async fn every_route_every_role_in_and_out_of_grid() {
    let tokens: Vec<Option<String>> = callers().iter().map(|(_, c)| c.as_ref().map(|(r, g)| token(*r, g))).collect();
    let mut failures = Vec::new();
    let mut cases = 0;
    for route in routes() {
        let (_, body) = declared(route.method, route.path);
        assert_eq!(route.need, declared(route.method, route.path).0, "{} {}", route.method, route.path);
        for ((label, caller), token) in callers().iter().zip(&tokens) {
            for own in [true, false] {
                let dir = tempfile::tempdir().unwrap();
                let (st, _store, _tx) = state_with_incidents(dir.path()).await;
                let app = router(st);
                // Grid routes name the grid in the path; incident routes name the incident.
                let id = match (route.path.starts_with("/api/v1/grids/"), own) {
                    (true, true) => "g1".to_owned(),
                    (true, false) => "g2".to_owned(),
                    (false, true) => IN_G1.to_string(),
                    (false, false) => IN_G2.to_string(),
                };
                let mut uri = route.path.replace("{id}", &id);
                uri = uri.replace("{name}", &crate::api::dashboard::asset_names()[0]);
                uri = uri.replace("{n}", "1");
                // m1 is in g1, e1 in g2.
                uri = uri.replace("{device}/{point}", if own { "m1/ua" } else { "e1/noise" });
                // Grid-scoped reads name their grid in the query.
                if matches!(route.path, "/api/v1/duty" | "/api/v1/patrols") {
                    uri.push_str(if own { "?grid=g1" } else { "?grid=g2" });
                }
                let mut req = Request::builder().method(route.method).uri(&uri);
                if let Some(t) = token {
                    req = req.header("authorization", t);
                }
                if !body.is_empty() {
                    req = req.header("content-type", "application/json");
                }
                let resp = app.oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
                let want = expected(route.method, route.path, caller.as_ref(), own);
                cases += 1;
                if resp.status() != want {
                    let got = resp.status();
                    let text = resp.into_body().collect().await.unwrap().to_bytes();
                    failures.push(format!(
                        "{} {uri} as {label}: {got}, expected {want}: {}",
                        route.method,
                        String::from_utf8_lossy(&text)
                    ));
                }
            }
        }
    }
    assert!(cases >= 30 * 7 * 2, "{cases} cases");
    assert!(failures.is_empty(), "{} of {cases} cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn unknown_paths_tell_strangers_nothing() {
    let (st, _tx) = state(Metrics::new(vec![], vec![], 10));
    let app = router(st);
    let resp = app.clone().oneshot(Request::get("/api/v1/secret").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(get(&app, "/api/v1/secret").await.0, StatusCode::NOT_FOUND);
    let bad = Request::get("/api/v1/points").header("authorization", "Bearer pwt_nope").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn grid_scoped_callers_see_only_their_grids_data() {
    let (st, _tx) = {
        let (st, tx) = state(Metrics::new(vec![], vec![], 10));
        let ts = 1_700_000_000_000_000_000;
        let sample = |p: u32, value: f64| crate::model::Sample { point: PointId(p), quality: Quality::Good, ts, value };
        tx.send(Batch::new(vec![sample(0, 229.5), sample(1, 1.0), sample(2, 61.2)], vec![])).await.unwrap();
        (st, tx)
    };
    let dir = tempfile::tempdir().unwrap();
    let (conn, _, _) = crate::incident::open(&dir.path().join("incidents.db")).unwrap();
    let (store, _thread) = crate::incident::spawn(conn).unwrap();
    store.apply(vec![incident(IN_G1, "g1", "m1"), incident(IN_G2, "g2", "e1")], None).await.unwrap();
    store.sync().await.unwrap();
    let app = router(AppState { incidents: Some(store), ..st });
    let officer = token(Role::Officer, &Some(vec!["g1".into()]));
    let ask = |uri: &str| {
        let req = Request::get(uri).header("authorization", officer.clone()).body(Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
        }
    };
    let (_, points) = ask("/api/v1/points").await;
    assert!(points.as_array().unwrap().iter().all(|p| p["grid"] == "g1"), "{points}");
    assert_eq!(points.as_array().unwrap().len(), 2);
    assert_eq!(ask("/api/v1/points?grid=g2").await.0, StatusCode::BAD_REQUEST, "another grid is as unknown");
    assert_eq!(ask("/api/v1/points?device=e1").await.0, StatusCode::BAD_REQUEST);
    let (_, devices) = ask("/api/v1/devices").await;
    assert_eq!(devices.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect::<Vec<_>>(), ["m1"]);
    let (_, incidents) = ask("/api/v1/incidents").await;
    assert_eq!(incidents.as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect::<Vec<_>>(), [IN_G1]);
    assert_eq!(ask("/api/v1/incidents?grid=g2").await.1, serde_json::json!([]));
    let (_, me) = ask("/api/v1/me").await;
    assert_eq!(me, serde_json::json!({ "name": "token:table", "role": "officer", "grids": ["g1"] }));
}

#[tokio::test]
async fn a_grids_kpis_count_its_incidents_only() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _store, _tx) = state_with_incidents(dir.path()).await;
    let app = router(st);
    // Incident 1 was raised 1 s after the epoch; the window is the hour before 00:10 UTC.
    let (status, k) = get(&app, "/api/v1/grids/g1/kpis?window=1h&to=1970-01-01T00:10:00Z").await;
    assert_eq!(status, StatusCode::OK, "{k}");
    assert_eq!(k["grid"], "g1");
    assert_eq!(k["window_s"], 3600);
    assert_eq!(k["open"], serde_json::json!({ "total": 1, "unacked": 1, "by_severity": { "critical": 1 } }));
    assert_eq!(k["alarm_rate"]["count"], 1);
    assert_eq!(k["alarm_rate"]["max_per_10min"], 1);
    assert_eq!(k["alarm_rate"]["target_per_hour"], 6.0);
    assert_eq!(k["ack_time_s"]["count"], 0);
    assert_eq!(k["standing_total"], 0, "raised 10 minutes before the window's end");
    assert_eq!(k["patrol"]["due"], 0);
    // A day later it is a standing alarm, and the hour holds no annunciation.
    let (_, k) = get(&app, "/api/v1/grids/g1/kpis?window=1h&to=1970-01-02T01:00:00Z").await;
    assert_eq!((k["standing_total"].as_i64(), k["alarm_rate"]["count"].as_i64()), (Some(1), Some(0)), "{k}");
    assert_eq!(k["standing"][0]["id"], 1);
    assert_eq!(get(&app, "/api/v1/grids/g1/kpis?window=40d").await.0, StatusCode::BAD_REQUEST);
    // The same numbers per grid in /metrics (every grid, also one without incidents).
    let req = Request::get("/metrics").header("authorization", admin_token()).body(Body::empty()).unwrap();
    let text = app.clone().oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    for line in [
        "parkwatch_grid_open_incidents{grid=\"g1\",severity=\"critical\"} 1",
        "parkwatch_grid_open_incidents{grid=\"g2\",severity=\"critical\"} 1",
        "parkwatch_grid_unacked_incidents{grid=\"g1\"} 1",
        "parkwatch_grid_standing_alarms{grid=\"g1\"} 1",
        "parkwatch_grid_alarms_per_hour{grid=\"g2\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
    assert_eq!(get(&app, "/api/v1/grids/g9/kpis").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_incident_shows_the_steps_of_its_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _store, _tx) = state_with_incidents(dir.path()).await;
    let app = router(st);
    let (status, i) = get(&app, "/api/v1/incidents/1").await;
    assert_eq!(status, StatusCode::OK, "{i}");
    assert_eq!(i["plan"], "fire");
    assert_eq!(i["plan_detail"]["title"], "电气火灾应急处置");
    assert_eq!(
        i["plan_detail"]["steps"],
        serde_json::json!([{ "n": 1, "text": "切断电源" }, { "n": 2, "text": "通知网格长" }])
    );
}

#[tokio::test]
async fn acting_records_the_caller_and_refuses_the_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let (st, store, _tx) = state_with_incidents(dir.path()).await;
    let app = router(st);
    let officer = token(Role::Officer, &Some(vec!["g1".into()]));
    let post = |uri: &str, body: &'static str| {
        let req = Request::post(uri)
            .header("authorization", officer.clone())
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        app.clone().oneshot(req)
    };
    assert_eq!(
        post("/api/v1/incidents/1/ack", r#"{"by": "someone else"}"#).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(post("/api/v1/incidents/1/ack", "").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        post("/api/v1/incidents/1/close", "{}").await.unwrap().status(),
        StatusCode::BAD_REQUEST,
        "a note is needed"
    );
    let i = store.get(IN_G1, None).await.unwrap().unwrap();
    assert_eq!(i.acked_by.as_deref(), Some("token:table"));
    assert_eq!(i.state, "active_acked");
}

#[tokio::test]
async fn sessions_set_a_strict_cookie_and_need_the_csrf_token_to_change_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _store, _tx) = state_with_incidents(dir.path()).await;
    let auth_dir = tempfile::tempdir().unwrap();
    let conn = crate::auth::store::open(&auth_dir.path().join("auth.db")).unwrap();
    let known = ["g1".to_owned(), "g2".to_owned()];
    admin::add_user(&conn, "root", Role::Admin, &None, "root password 1", &known, by_test()).unwrap();
    admin::add_user(&conn, "li", Role::Officer, &Some(vec!["g1".into()]), "li's password", &known, by_test()).unwrap();
    let auth =
        crate::auth::Auth::open(&auth_dir.path().join("auth.db"), Default::default(), auth_db().audit.clone()).unwrap();
    st.access = Access { auth, metrics_auth: false, cookie_secure: true };
    let app = router(st);
    let send = |req: Request<Body>| app.clone().oneshot(req);

    let wrong = Request::post("/api/v1/login").body(Body::from(r#"{"user": "li", "password": "nope"}"#)).unwrap();
    let resp = send(wrong).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&text).contains("nope"));
    let resp = send(Request::post("/api/v1/login").body(Body::from(r#"{"user": "li", "password": 5}"#)).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let ok = Request::post("/api/v1/login").body(Body::from(r#"{"user": "li", "password": "li's password"}"#)).unwrap();
    let resp = send(ok).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(body.get("password").is_none());
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();

    let with_cookie = |method: &str, uri: &str, csrf: Option<&str>| {
        let mut r = Request::builder().method(method).uri(uri).header("cookie", session.clone());
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.body(Body::empty()).unwrap()
    };
    assert_eq!(send(with_cookie("GET", "/api/v1/incidents/1", None)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(send(with_cookie("GET", "/api/v1/incidents/2", None)).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        send(with_cookie("POST", "/api/v1/incidents/1/ack", None)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(with_cookie("POST", "/api/v1/incidents/1/ack", Some("forged"))).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(with_cookie("POST", "/api/v1/incidents/1/ack", Some(&csrf))).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(send(with_cookie("GET", "/metrics", None)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap().status(),
        StatusCode::OK,
        "metrics_auth = false"
    );
    let resp = send(with_cookie("POST", "/api/v1/logout", Some(&csrf))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(send(with_cookie("GET", "/api/v1/incidents/1", None)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
}
