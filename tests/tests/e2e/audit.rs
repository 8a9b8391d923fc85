//! The audit trail end to end: actions over HTTP become chained records, the records reach the
//! central store as measurement `audit`, and a record edited by hand in the SQLite file makes
//! `parkwatch audit verify` fail naming it.

use std::process::Command;
use std::time::Duration;

use parkwatch_e2e::{gateway_bin, http_post, wait_until, Gateway, Mosquitto, Publisher, Victoria};
use serde_json::{json, Value};

fn config(mqtt: u16, store: &str) -> String {
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

[[mqtt.brokers]]
id = "local"
host = "127.0.0.1"
port = {mqtt}
reconnect_min_ms = 100
reconnect_max_ms = 500

[[mqtt.subscriptions]]
broker = "local"
topic = "park/{{grid}}/{{device}}/{{point}}"
format = "number"

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
fn actions_are_chained_forwarded_and_an_edit_is_named_by_verify() {
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let mut gw = Gateway::start(&config(broker.port, &store.url()));
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

    // Each action over HTTP, and the outcome its record must carry.
    let inc = |action: &str| format!("/api/v1/incidents/{id}/{action}");
    let actions: Vec<(String, Value, &str, &str)> = vec![
        (inc("ack"), json!({"by": "officer-7", "note": "on my way"}), "incident.ack", "officer-7"),
        (
            inc("shelve"),
            json!({"by": "supervisor-2", "duration": "30m", "note": "breaker swap"}),
            "incident.shelve",
            "supervisor-2",
        ),
        (inc("shelve"), json!({"by": "supervisor-2", "duration": "0s"}), "incident.unshelve", "supervisor-2"),
        (inc("comment"), json!({"by": "officer-7", "text": "cable replaced"}), "incident.comment", "officer-7"),
        (inc("close"), json!({"by": "officer-7", "note": "done"}), "incident.close", "officer-7"),
        ("/api/v1/incidents/999999/ack".into(), json!({"by": "intruder"}), "incident.ack", "intruder"),
        ("/api/v1/rules/reload".into(), json!({}), "rules.reload", "api"),
    ];
    let mut expected = Vec::new();
    for (path, body, action, actor) in &actions {
        let (status, answer) = http_post(gw.api, path, body).unwrap();
        let outcome = match status {
            200 => "ok",
            400..=499 => "refused",
            _ => panic!("POST {path}: {status} {answer}"),
        };
        expected.push((*action, *actor, outcome));
    }
    assert_eq!(expected[0].2, "ok", "the acknowledgement of a live incident is accepted");
    assert_eq!(expected[5].2, "refused", "an unknown incident is refused");

    // Every action is a record, in order, with who, from where and how it ended.
    let records = wait_until(Duration::from_secs(10), "every action in the audit trail", || {
        let r = gw.json("/api/v1/audit?after=0&limit=100");
        let records = r["records"].as_array()?.clone();
        (records.len() == expected.len()).then_some(records)
    });
    for (i, (r, (action, actor, outcome))) in records.iter().zip(&expected).enumerate() {
        assert_eq!(r["seq"], i as i64 + 1, "{r}");
        assert_eq!(
            (r["action"].as_str(), r["actor"].as_str(), r["outcome"].as_str()),
            (Some(*action), Some(*actor), Some(*outcome)),
            "{r}"
        );
        assert!(r["source"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        if i > 0 {
            assert_eq!(r["prev_hash"], records[i - 1]["hash"], "{r}");
        }
    }
    assert_eq!(records[1]["detail"], "duration: 30m; note: breaker swap");
    assert_eq!(records[1]["target"], format!("incident:{id}"));
    // Paging: after the third record, two at a time.
    let page = gw.json("/api/v1/audit?after=3&limit=2");
    assert_eq!(
        page["records"].as_array().unwrap().iter().map(|r| r["seq"].as_i64().unwrap()).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!(page["next"], 5);

    // Every record reaches the store as measurement `audit`, tagged with its action and outcome.
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
            .map(|(i, (a, _, o))| (i as i64 + 1, (*a).to_owned(), (*o).to_owned()))
            .collect();
        (seen == want).then_some(())
    });

    assert!(gw.signal("TERM").success());
    let config = gw.dir.path().join("parkwatch.toml");
    let (code, out) = verify(&config, "en");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("intact, {} records", expected.len())), "{out}");

    // Someone rewrites who acknowledged the incident.
    let db = rusqlite::Connection::open(gw.dir.path().join("audit.db")).unwrap();
    assert_eq!(db.execute("UPDATE audit SET actor = 'supervisor-9' WHERE seq = 2", []).unwrap(), 1);
    drop(db);
    let (code, out) = verify(&config, "en");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("record seq 2 is broken: hash mismatch"), "{out}");
    let (code, out) = verify(&config, "zh");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("第 2 条记录损坏"), "{out}");
}
