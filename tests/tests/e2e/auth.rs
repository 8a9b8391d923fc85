//! Who may see and do what, end to end over HTTP: users and tokens made with the command line against
//! a running gateway, grid-scoped officers, a read-only token, login throttling, and no password in
//! the log or in any answer.

use std::time::Duration;

use parkwatch_e2e::{
    create_token, http_post_as, login, parkwatch_cli, send, wait_until, Gateway, Mosquitto, Publisher,
};
use serde_json::json;

const ADMIN_PASSWORD: &str = "admin-Pa55word-e2e";
const LI_PASSWORD: &str = "li-Pa55word-e2e";
const WANG_PASSWORD: &str = "wang-Pa55word-e2e";
const WRONG_PASSWORD: &str = "not-wangs-Pa55word";

fn config(port: u16) -> String {
    let source = parkwatch_e2e::numbers_over_mqtt(port);
    format!(
        r#"
[site]
id = "t"

[api]
listen = "{{api}}"

[auth]
lockout_secs = 600

[[grids]]
id = "g1"
[[grids]]
id = "g2"

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}]

[[devices]]
id = "m2"
grid = "g2"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}]

{source}
[rules]
builtin = true
"#
    )
}

/// Raises a critical residual-current incident on each meter; returns (g1's id, g2's id).
fn two_critical_incidents(gw: &Gateway, broker: &Mosquitto) -> (i64, i64) {
    let p = Publisher::connect(broker.port, "auth-test");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish("park/g1/m1/residual_current", 0, "100");
        p.publish("park/g2/m2/residual_current", 0, "100");
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current").and(gw.point("m2", "residual_current"))
    });
    p.publish("park/g1/m1/residual_current", 0, "350");
    p.publish("park/g2/m2/residual_current", 0, "350");
    wait_until(Duration::from_secs(15), "an incident on each meter", || {
        let open = gw.json("/api/v1/incidents?state=open&category=electrical");
        let id = |device: &str| open.as_array()?.iter().find(|i| i["device"] == device)?["id"].as_i64();
        Some((id("m1")?, id("m2")?))
    })
}

#[test]
fn grid_officers_act_only_in_their_grid_and_viewers_only_read() {
    let broker = Mosquitto::start("");
    let gw = Gateway::start(&config(broker.port));
    gw.add_user("root", "admin", &[], ADMIN_PASSWORD);
    gw.add_user("li", "officer", &["g1"], LI_PASSWORD);
    let (g1, g2) = two_critical_incidents(&gw, &broker);
    let addr = gw.api;

    let li = login(addr, "li", LI_PASSWORD).unwrap_or_else(|a| panic!("{}: {}", a.status, a.body));
    // The other grid's incident does not exist for li: not to see, not to act on.
    assert_eq!(li.get(addr, &format!("/api/v1/incidents/{g2}")).status, 404);
    assert_eq!(li.post(addr, &format!("/api/v1/incidents/{g2}/ack"), &json!({})).status, 404);
    let listed = li.get(addr, "/api/v1/incidents").json();
    assert!(listed.as_array().unwrap().iter().all(|i| i["grid"] == "g1"), "{listed}");
    // A critical alarm is not an officer's to shelve, even with a reason.
    let shelve =
        li.post(addr, &format!("/api/v1/incidents/{g1}/shelve"), &json!({"duration": "30m", "reason": "test"}));
    assert_eq!(shelve.status, 403, "{}", shelve.body);
    // Without the CSRF token the session changes nothing.
    let no_csrf =
        send(addr, "POST", &format!("/api/v1/incidents/{g1}/ack"), &[("Cookie", &li.cookie)], Some(&json!({})));
    assert_eq!(no_csrf.status, 403);
    // Acknowledged by li, recorded as li.
    let ack = li.post(addr, &format!("/api/v1/incidents/{g1}/ack"), &json!({"note": "on my way"}));
    assert_eq!(ack.status, 200, "{}", ack.body);
    let i = ack.json();
    assert_eq!(i["acked_by"], "li");
    assert!(i["history"].as_array().unwrap().iter().any(|h| h["kind"] == "acked" && h["who"] == "li"), "{i}");

    // A supervisor-or-above may shelve the critical one, with a reason.
    let root = login(addr, "root", ADMIN_PASSWORD).unwrap_or_else(|a| panic!("{}: {}", a.status, a.body));
    let no_reason = root.post(addr, &format!("/api/v1/incidents/{g2}/shelve"), &json!({"duration": "30m"}));
    assert_eq!(no_reason.status, 400, "{}", no_reason.body);
    let shelved = root.post(
        addr,
        &format!("/api/v1/incidents/{g2}/shelve"),
        &json!({"duration": "30m", "reason": "sensor swap"}),
    );
    assert_eq!(shelved.status, 200, "{}", shelved.body);
    assert!(shelved.json()["shelved_until"].is_string());

    // A read-only token reads but cannot act, in any grid.
    let config = gw.dir.path().join("parkwatch.toml");
    let viewer = create_token(&config, "wall-screen", "viewer", &[]);
    assert_eq!(parkwatch_e2e::http_get_as(addr, &format!("/api/v1/incidents/{g2}"), Some(&viewer)).unwrap().0, 200);
    let (status, _) = http_post_as(addr, &format!("/api/v1/incidents/{g2}/ack"), &json!({}), Some(&viewer)).unwrap();
    assert_eq!(status, 403);
    let (status, _) =
        http_post_as(addr, &format!("/api/v1/incidents/{g2}/comment"), &json!({"text": "x"}), Some(&viewer)).unwrap();
    assert_eq!(status, 403);
    // Without credentials nothing but /healthz answers.
    assert_eq!(parkwatch_e2e::http_get(addr, "/api/v1/incidents").unwrap().0, 401);
    assert_eq!(parkwatch_e2e::http_get(addr, "/metrics").unwrap().0, 401);
    assert_eq!(parkwatch_e2e::http_get(addr, "/healthz").unwrap().0, 200);

    // The user list says who is what, and never a hash.
    let list = parkwatch_cli(&["user", "list", "--lang", "en", "-c", config.to_str().unwrap()], "");
    assert!(list.contains("li\tofficer\tg1\tenabled") && !list.contains("argon2"), "{list}");
    let log = gw.log();
    assert!(log.contains("audit") && log.contains("login"), "logins are audited:\n{log}");
    for secret in [ADMIN_PASSWORD, LI_PASSWORD, viewer.as_str(), gw.token.as_str()] {
        assert!(!log.contains(secret), "a secret is in the gateway log");
    }
}

#[test]
fn twenty_wrong_passwords_lock_the_user_and_nothing_shows_a_password() {
    let broker = Mosquitto::start("");
    let gw = Gateway::start(&config(broker.port));
    gw.add_user("root", "admin", &[], ADMIN_PASSWORD);
    gw.add_user("wang", "supervisor", &["g2"], WANG_PASSWORD);
    let addr = gw.api;
    let mut answers = Vec::new();
    for i in 0..19 {
        let a = login(addr, "wang", WRONG_PASSWORD).err().expect("a wrong password is refused");
        assert_eq!(a.status, 401, "attempt {i}: {}", a.body);
        answers.push(a.body);
    }
    let locked = login(addr, "wang", WRONG_PASSWORD).err().unwrap();
    assert_eq!(locked.status, 429, "{}", locked.body);
    // The right password during the lock is refused too, saying when to retry.
    let refused = login(addr, "wang", WANG_PASSWORD).err().expect("locked");
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((590..=600).contains(&retry), "retry after {retry} s");
    assert_eq!(refused.json()["retry_after_secs"], retry);
    answers.extend([locked.body, refused.body.clone()]);
    // Other users are not locked out by wang's lock.
    assert!(login(addr, "root", ADMIN_PASSWORD).is_ok());

    for body in &answers {
        for secret in [WRONG_PASSWORD, WANG_PASSWORD, ADMIN_PASSWORD] {
            assert!(!body.contains(secret), "an answer shows a password: {body}");
        }
    }
    let log = gw.log();
    assert!(log.contains("Login locked"), "the lock is logged:\n{log}");
    for secret in [WRONG_PASSWORD, WANG_PASSWORD, ADMIN_PASSWORD] {
        assert!(!log.contains(secret), "a password is in the gateway log");
    }
    let db = std::fs::read(gw.dir.path().join("auth.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains(WANG_PASSWORD) && !db.contains(&gw.token), "secrets are stored hashed only");
}
