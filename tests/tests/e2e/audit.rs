//! The audit trail end to end: the token and the user the command line makes while the gateway runs,
//! a refused and an accepted login, and a logged-in supervisor's actions over HTTP become one chain of
//! records under who did them; the records reach the central store as measurement `audit`, and a
//! record edited by hand in the SQLite file makes `parkwatch audit verify` fail naming it.

use std::process::Command;
use std::time::Duration;

use parkwatch_e2e::{gateway_bin, http_post_as, login, wait_until, Gateway, Mosquitto, Publisher, Victoria};
use serde_json::{json, Value};

const LI_PASSWORD: &str = "li-wei-Pa55word-e2e";

fn config(mqtt: u16, store: &str) -> String {
    let source = parkwatch_e2e::numbers_over_mqtt(mqtt);
    format!(
        r#"
[site]
id = "xh"

[api]
listen = "{{api}}"

[[grids]]
id = "g1"

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}]

{source}
[rules]
builtin = true

[forward]
outbox = "outbox.db"
batch_ms = 200

[[forward.targets]]
id = "central"
url = "{store}"
org = "park"
bucket = "ops"
token = "not-checked-by-this-store"
retry_min_ms = 100
retry_max_ms = 1000
"#
    )
}

fn verify(config: &std::path::Path, lang: &str) -> (Option<i32>, String) {
    let out = Command::new(gateway_bin())
        .args(["audit", "verify", "--lang", lang, "-c"])
        .arg(config)
        .output()
        .expect("run parkwatch audit verify");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr))
}

#[test]
fn actions_are_chained_under_their_user_forwarded_and_an_edit_is_named_by_verify() {
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let mut gw = Gateway::start(&config(broker.port, &store.url()));
    let cli = |action: &'static str, target: &'static str| (action, "cli", target, "ok", "cli");
    // The harness made the admin token with `parkwatch token create` before the start.
    let mut expected: Vec<(&str, &str, &str, &str, &str)> = vec![cli("token.create", "")];
    // Users added on the command line while the gateway runs land in the same chain (the first user
    // must be an admin).
    gw.add_user("root", "admin", &[], "root-Pa55word-e2e");
    expected.push(cli("user.add", "user:root"));
    gw.add_user("li.wei", "supervisor", &["g1"], LI_PASSWORD);
    expected.push(cli("user.add", "user:li.wei"));
    let refused = login(gw.api, "li.wei", "not-the-Pa55word").err().expect("a wrong password is refused");
    assert_eq!(refused.status, 401);
    expected.push(("auth.login", "li.wei", "user:li.wei", "refused", "127.0.0.1"));
    let li = login(gw.api, "li.wei", LI_PASSWORD).unwrap_or_else(|a| panic!("{}: {}", a.status, a.body));
    expected.push(("auth.login", "li.wei", "user:li.wei", "ok", "127.0.0.1"));

    let p = Publisher::connect(broker.port, "audit-test");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish("park/g1/m1/residual_current", 0, "100");
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current")
    });
    // A residual current past 300 mA raises a critical incident after its 3 s on-delay.
    p.publish("park/g1/m1/residual_current", 0, "350");
    let id = wait_until(Duration::from_secs(15), "the residual-current incident", || {
        gw.json("/api/v1/incidents?state=open").as_array()?.first()?["id"].as_i64()
    });

    // Each action of the logged-in supervisor over HTTP; the actor is the session's user.
    let inc = |action: &str| format!("/api/v1/incidents/{id}/{action}");
    let actions: Vec<(String, Value, &str)> = vec![
        (inc("ack"), json!({"note": "on my way"}), "incident.ack"),
        (inc("shelve"), json!({"duration": "30m", "reason": "breaker swap"}), "incident.shelve"),
        (inc("shelve"), json!({"duration": "0s"}), "incident.unshelve"),
        (inc("comment"), json!({"text": "cable replaced"}), "incident.comment"),
        (inc("close"), json!({"note": "done"}), "incident.close"),
        ("/api/v1/incidents/999999/ack".into(), json!({}), "incident.ack"),
    ];
    let first_action = expected.len();
    for (path, body, action) in &actions {
        let a = li.post(gw.api, path, body);
        let outcome = match a.status {
            200 => "ok",
            400..=499 => "refused",
            _ => panic!("POST {path}: {} {}", a.status, a.body),
        };
        let target = if path.contains("999999") { "incident:999999" } else { "" };
        expected.push((*action, "li.wei", target, outcome, "127.0.0.1"));
    }
    assert_eq!(expected[first_action].3, "ok", "the acknowledgement of a live incident is accepted");
    assert_eq!(expected[first_action + 1].3, "ok", "a supervisor shelves a critical alarm with a reason");
    assert_eq!(expected.last().unwrap().3, "refused", "an unknown incident is refused");
    // A reload is for admins: the gate refuses the supervisor and records the path; the token may.
    let reload = li.post(gw.api, "/api/v1/rules/reload", &json!({}));
    assert_eq!(reload.status, 403, "{}", reload.body);
    expected.push(("api.request", "li.wei", "POST /api/v1/rules/reload", "refused", "127.0.0.1"));
    let (status, body) = http_post_as(gw.api, "/api/v1/rules/reload", &json!({}), Some(&gw.token)).unwrap();
    assert_eq!(status, 200, "{body}");
    expected.push(("rules.reload", "token:e2e", "rules", "ok", "127.0.0.1"));

    // Every act is a record, in order, with who, from where and how it ended.
    let records = wait_until(Duration::from_secs(10), "every act in the audit trail", || {
        let r = gw.json("/api/v1/audit?after=0&limit=100");
        let records = r["records"].as_array()?.clone();
        (records.len() == expected.len()).then_some(records)
    });
    for (i, (r, (action, actor, target, outcome, source))) in records.iter().zip(&expected).enumerate() {
        assert_eq!(r["seq"], i as i64 + 1, "{r}");
        assert_eq!(
            (r["action"].as_str(), r["outcome"].as_str(), r["source"].as_str()),
            (Some(*action), Some(*outcome), Some(*source)),
            "{r}"
        );
        // The command line records the operating-system user it ran as.
        if *actor == "cli" {
            assert!(r["actor"].as_str().unwrap().starts_with("cli:"), "{r}");
        } else {
            assert_eq!(r["actor"], *actor, "{r}");
        }
        if !target.is_empty() {
            assert_eq!(r["target"], *target, "{r}");
        } else if action.starts_with("incident.") {
            assert_eq!(r["target"], format!("incident:{id}"), "{r}");
        }
        if i > 0 {
            assert_eq!(r["prev_hash"], records[i - 1]["hash"], "{r}");
        }
    }
    assert_eq!(records[3]["detail"], "wrong password");
    assert_eq!(records[first_action + 1]["detail"], "duration: 30m; reason: breaker swap");
    for secret in [LI_PASSWORD, "root-Pa55word-e2e", "not-the-Pa55word", gw.token.as_str()] {
        assert!(records.iter().all(|r| !r.to_string().contains(secret)), "a secret is in the audit trail");
    }
    // Paging: after the fourth record, two at a time.
    let page = gw.json("/api/v1/audit?after=4&limit=2");
    assert_eq!(
        page["records"].as_array().unwrap().iter().map(|r| r["seq"].as_i64().unwrap()).collect::<Vec<_>>(),
        [5, 6]
    );
    assert_eq!(page["next"], 6);
    // The trail is for those who answer for the site: a supervisor is refused.
    assert_eq!(li.get(gw.api, "/api/v1/audit").status, 403);
    expected.push(("api.request", "li.wei", "GET /api/v1/audit", "refused", "127.0.0.1"));

    // Every record reaches the store as measurement `audit`, tagged with its action and outcome,
    // those the command line appended as well.
    wait_until(Duration::from_secs(60), "the audit records in the store", || {
        let series = store.export(r#"{__name__="audit_seq"}"#);
        let mut seen: Vec<(i64, String, String)> = Vec::new();
        for s in &series {
            for v in s["values"].as_array()? {
                seen.push((
                    v.as_f64()? as i64,
                    s["metric"]["action"].as_str()?.to_owned(),
                    s["metric"]["outcome"].as_str()?.to_owned(),
                ));
            }
        }
        seen.sort();
        let want: Vec<(i64, String, String)> = expected
            .iter()
            .enumerate()
            .map(|(i, (a, _, _, o, _))| (i as i64 + 1, (*a).to_owned(), (*o).to_owned()))
            .collect();
        (seen == want).then_some(())
    });

    assert!(gw.signal("TERM").success());
    let config = gw.dir.path().join("parkwatch.toml");
    let (code, out) = verify(&config, "en");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("intact, {} records", expected.len())), "{out}");

    // Someone rewrites who was added on the command line.
    let db = rusqlite::Connection::open(gw.dir.path().join("audit.db")).unwrap();
    assert_eq!(db.execute("UPDATE audit SET target = 'user:someone' WHERE seq = 2", []).unwrap(), 1);
    drop(db);
    let (code, out) = verify(&config, "en");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("record seq 2 is broken: hash mismatch"), "{out}");
    let (code, out) = verify(&config, "zh");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("第 2 条记录损坏"), "{out}");
}
