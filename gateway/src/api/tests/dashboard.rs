//! The dashboard's page and assets, the incident stream and the grid overview.

use std::time::Duration;

use super::routes::{incident, state_with_incidents, token};
use super::*;
use crate::model::incident::{Change, Severity, State};

async fn send(app: &Router, uri: &str, headers: &[(&str, &str)]) -> axum::response::Response {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
}

/// The first page as a phone on a weak link loads it: the page and every asset it links, gzipped.
#[tokio::test]
async fn the_first_page_is_small_compressed_cached_and_typed() {
    let (st, _tx) = state(Metrics::new(vec![], vec![], 10));
    let app = router(st);
    let gz = [("accept-encoding", "gzip, deflate, br")];
    let page = send(&app, "/", &gz).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["content-encoding"], "gzip");
    assert_eq!(page.headers()["cache-control"], "no-cache");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    let compressed = page.into_body().collect().await.unwrap().to_bytes();
    let mut total = compressed.len();
    let mut html = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut html).unwrap();
    let linked: Vec<&str> = html.split("\"/assets/").skip(1).filter_map(|s| s.split('"').next()).collect::<Vec<_>>();
    assert_eq!(linked.len(), 2, "{html}");
    for name in linked {
        let resp = send(&app, &format!("/assets/{name}"), &gz).await;
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        let want = if name.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        assert_eq!(resp.headers()["content-type"], want);
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        assert_eq!(resp.headers()["cache-control"], "public, max-age=31536000, immutable");
        total += resp.into_body().collect().await.unwrap().to_bytes().len();
    }
    println!("first page: {total} bytes compressed");
    assert!(total <= 200 * 1024, "the first page transfers {total} bytes compressed; at most 200 KB");
    // A client that does not take gzip gets the plain bytes; an unknown name is 404.
    let plain = send(&app, "/", &[]).await;
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(String::from_utf8(plain.into_body().collect().await.unwrap().to_bytes().to_vec())
        .unwrap()
        .starts_with("<!doctype html>"));
    assert_eq!(send(&app, "/assets/app.js", &gz).await.status(), StatusCode::NOT_FOUND, "only hashed names");
}

/// Reads the stream's frames until `until` holds for the text so far (or the deadline).
async fn read_until(body: &mut Body, text: &mut String, until: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !until(text) {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        let frame = frame.unwrap_or_else(|_| panic!("stream so far:\n{text}")).unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn the_stream_carries_only_the_callers_grids_and_resumes_after_the_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let (st, store, _tx) = state_with_incidents(dir.path()).await;
    let app = router(st);
    let officer = token(Role::Officer, &Some(vec!["g1".into()]));
    let auth = [("authorization", officer.as_str())];

    // From the start of the log: g1's incident (seq 1), never g2's (seq 2).
    let resp = send(&app, "/api/v1/incidents/stream", &[auth[0], ("last-event-id", "0")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, |t| t.contains("id: 1\n")).await;

    // Live: a change of g2 and then one of g1; the second arrives, the first never does.
    let g2 = incident(3, "g2", "e1");
    let Change::Open(mut g1) = incident(4, "g1", "m1") else { unreachable!() };
    g1.severity = Severity::Major;
    g1.state = State::ActiveUnacked;
    store.apply(vec![g2, Change::Open(g1)], None).await.unwrap();
    store.sync().await.unwrap();
    read_until(&mut body, &mut text, |t| t.contains("\"id\":4")).await;
    assert!(!text.contains("\"grid\":\"g2\""), "{text}");
    assert!(!text.contains("id: 2\n") && !text.contains("id: 3\n"), "{text}");
    assert!(text.contains("event: change"), "{text}");

    // Without Last-Event-ID the stream starts at the head and says so.
    let resp = send(&app, "/api/v1/incidents/stream", &auth).await;
    let mut body = resp.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, |t| t.contains("event: ready")).await;
    assert!(text.contains("id: 4\n"), "{text}");

    // A resumed stream gets only what followed its last id; a site-wide caller gets g2's too.
    let admin = token(Role::Admin, &None);
    let resp = send(&app, "/api/v1/incidents/stream", &[("authorization", &admin), ("last-event-id", "2")]).await;
    let mut body = resp.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, |t| t.contains("id: 4\n")).await;
    assert!(text.contains("id: 3\n") && !text.contains("id: 1\n") && !text.contains("id: 2\n"), "{text}");

    let bad = send(&app, "/api/v1/incidents/stream", &[auth[0], ("last-event-id", "x")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn streams_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _store, _tx) = state_with_incidents(dir.path()).await;
    let streams = st.streams.clone();
    let app = router(st);
    let admin = token(Role::Admin, &None);
    let mut open = Vec::new();
    for _ in 0..stream::MAX_STREAMS {
        let resp = send(&app, "/api/v1/incidents/stream", &[("authorization", &admin)]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        open.push(resp);
    }
    let refused = send(&app, "/api/v1/incidents/stream", &[("authorization", &admin)]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(open.pop());
    let again = send(&app, "/api/v1/incidents/stream", &[("authorization", &admin)]).await;
    assert_eq!(again.status(), StatusCode::OK, "a closed stream frees its place");

    // At shutdown every stream ends, so the server's graceful stop does not wait on them.
    streams.close();
    let mut body = again.into_body();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end when closed");
}

#[tokio::test]
async fn grids_show_the_callers_cells_with_counts_and_the_worst_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let (st, store, _tx) = state_with_incidents(dir.path()).await;
    let Change::Open(mut minor) = incident(3, "g1", "m1") else { unreachable!() };
    minor.severity = Severity::Minor;
    minor.rule = "electrical.other".into();
    store.apply(vec![Change::Open(minor)], None).await.unwrap();
    store.sync().await.unwrap();
    let app = router(st);
    let officer = token(Role::Officer, &Some(vec!["g1".into()]));
    let resp = send(&app, "/api/v1/grids", &[("authorization", &officer)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["site"]["id"], "p1");
    let grids = v["grids"].as_array().unwrap();
    assert_eq!(grids.len(), 1, "{v}");
    assert_eq!(grids[0]["id"], "g1");
    assert_eq!(grids[0]["open"], 2);
    assert_eq!(grids[0]["unacked"], 2);
    assert_eq!(grids[0]["worst"], "critical");
    assert_eq!(grids[0]["by_severity"], serde_json::json!({ "critical": 1, "minor": 1 }));
    assert_eq!(grids[0]["devices"]["total"], 1);
    assert_eq!(grids[0]["devices"]["event_only"], 0);
    assert_eq!(grids[0]["devices"]["offline"], 1, "m1 has sent nothing");
    let (_, all) = get(&app, "/api/v1/grids").await;
    let ids: Vec<&str> = all["grids"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["g1", "g2"]);
    assert_eq!(all["grids"][1]["worst"], "critical");
}

#[tokio::test]
async fn the_site_plan_is_served_to_callers_and_the_cells_carry_their_outlines() {
    let dir = tempfile::tempdir().unwrap();
    let svg =
        br#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 400 200"><rect width="400" height="200"/></svg>"#;
    std::fs::write(dir.path().join("plan.svg"), svg).unwrap();
    let text = super::CONFIG.replacen(
        "[[grids]]\nid = \"g1\"\n",
        "[site.plan]\nimage = \"plan.svg\"\nwidth = 400\nheight = 200\n[[grids]]\nid = \"g1\"\noutline = [[0, 0], [200, 0], [200, 200], [0, 200]]\n",
        1,
    );
    let config = crate::config::from_str(&text, "t.toml".as_ref(), dir.path()).unwrap();
    let (mut st, store, _tx) = state_with_incidents(dir.path()).await;
    st.registry = Arc::new(Registry::from_config(&config)).into();
    // e1 (g2) is silent past its category's limit: the overview counts it offline.
    let Change::Open(mut silent) = incident(3, "g2", "e1") else { unreachable!() };
    silent.rule = "quality.device_silent".into();
    silent.severity = Severity::Major;
    store.apply(vec![Change::Open(silent)], None).await.unwrap();
    store.sync().await.unwrap();
    let app = router(st);

    let (status, v) = get(&app, "/api/v1/grids").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["plan"], serde_json::json!({ "image": "/api/v1/site/plan", "width": 400.0, "height": 200.0 }));
    assert_eq!(v["grids"][0]["outline"], serde_json::json!([[0.0, 0.0], [200.0, 0.0], [200.0, 200.0], [0.0, 200.0]]));
    assert_eq!(v["grids"][1]["outline"], serde_json::json!([]));
    assert_eq!(v["grids"][1]["devices"]["offline"], 1, "{v}");

    let officer = token(Role::Officer, &Some(vec!["g1".into()]));
    let resp = send(&app, "/api/v1/site/plan", &[("authorization", &officer)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], svg);
    let stranger = send(&app, "/api/v1/site/plan", &[]).await;
    assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED);
}
