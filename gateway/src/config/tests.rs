use std::path::Path;

use super::*;

/// A site with one grid, one meter and one MQTT subscription; other rooms' tests build on it.
pub(crate) const BASE: &str = r#"
[site]
id = "p1"

[[grids]]
id = "g1"

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{ name = "ua", unit = "V" }]

[[mqtt.brokers]]
id = "b1"
host = "127.0.0.1"

[[mqtt.subscriptions]]
broker = "b1"
topic = "park/{grid}/meter/{device}/telemetry"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_str(text, Path::new("test.toml"), Path::new("."))
}

/// The key paths of every problem in `text`.
fn paths(text: &str) -> Vec<String> {
    parse(text).expect_err("config should be refused").problems().into_iter().map(|(p, _)| p).collect()
}

#[test]
fn base_config_loads_with_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.site.timezone, "Asia/Shanghai");
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.mqtt.brokers[0].port, 1883);
    assert_eq!(c.mqtt.subscriptions[0].qos, 1);
    assert!(c.mqtt.brokers[0].persistent_session);
    assert_eq!(c.mqtt.brokers[0].inflight, 20);
    assert_eq!(c.mqtt.brokers[0].linger_ms, 1);
    assert_eq!(c.forward.ack_delay_ms, 2);
}

#[test]
fn a_broker_window_of_zero_and_a_long_read_pause_are_refused() {
    let text = BASE.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\ninflight = 0\nlinger_ms = 500");
    assert_eq!(paths(&text), ["mqtt.brokers[0].linger_ms", "mqtt.brokers[0].inflight"]);
}

#[test]
fn unknown_key_names_its_path() {
    let text = BASE.replace("category = \"electrical\"", "category = \"electrical\"\ncolour = \"red\"");
    let e = parse(&text).unwrap_err();
    let (path, message) = e.problems().remove(0);
    assert_eq!(path, "devices[0].colour");
    assert!(message.contains("unknown field `colour`"), "{message}");
}

#[test]
fn wrong_type_names_its_path() {
    let text = BASE.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = \"x\"");
    assert_eq!(paths(&text), ["mqtt.brokers[0].port"]);
}

#[test]
fn every_semantic_problem_is_listed() {
    let text = format!(
        "{BASE}\n[[devices]]\nid = \"m1\"\ngrid = \"g9\"\ncategory = \"electrical\"\n\n[[mqtt.subscriptions]]\nbroker = \"nope\"\ntopic = \"a/#/b\"\nqos = 2\n"
    );
    let p = paths(&text);
    for expected in [
        "devices[1].id",
        "devices[1].grid",
        "mqtt.subscriptions[1].broker",
        "mqtt.subscriptions[1].topic",
        "mqtt.subscriptions[1].qos",
    ] {
        assert!(p.iter().any(|x| x == expected), "{expected} missing from {p:?}");
    }
}

#[test]
fn unknown_grid_message_lists_known_grids() {
    let text = BASE.replace("grid = \"g1\"\ncategory", "grid = \"g7\"\ncategory");
    let e = parse(&text).unwrap_err();
    let (_, message) = e.problems().remove(0);
    assert_eq!(message, "grid \"g7\" in device \"m1\" is not defined (known grids: g1)");
}

#[test]
fn secrets_come_from_the_environment_and_files() {
    std::env::set_var("PARKWATCH_TEST_USER", "edge");
    let dir = std::env::temp_dir().join(format!("pw-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    let text = BASE.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nusername = \"${PARKWATCH_TEST_USER}\"\npassword_file = \"pw\"",
    );
    let c = from_str(&text, Path::new("t.toml"), &dir).unwrap();
    assert_eq!(c.mqtt.brokers[0].username.as_deref(), Some("edge"));
    assert_eq!(c.mqtt.brokers[0].password.as_deref(), Some("s3cret"));

    // systemd's LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY, readable by a DynamicUser.
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("mqtt-password"), "from-credential\n").unwrap();
    std::env::set_var("PARKWATCH_TEST_CREDENTIALS", &creds);
    let text = BASE.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nusername = \"edge\"\npassword_file = \"${PARKWATCH_TEST_CREDENTIALS}/mqtt-password\"",
    );
    let c = from_str(&text, Path::new("t.toml"), &dir).unwrap();
    assert_eq!(c.mqtt.brokers[0].password.as_deref(), Some("from-credential"));
    let text = BASE.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nusername = \"edge\"\npassword_file = \"${PARKWATCH_TEST_NO_CREDENTIALS}/pw\"",
    );
    let (path, message) = parse(&text).unwrap_err().problems().remove(0);
    assert_eq!(path, "mqtt.brokers[0].password_file");
    assert!(message.contains("PARKWATCH_TEST_NO_CREDENTIALS is not set"), "{message}");

    let text = BASE.replace("host = \"127.0.0.1\"", "host = \"${PARKWATCH_TEST_UNSET_VAR}\"");
    let e = parse(&text).unwrap_err();
    let (path, message) = e.problems().remove(0);
    assert_eq!(path, "mqtt.brokers[0].host");
    assert!(message.contains("PARKWATCH_TEST_UNSET_VAR is not set"), "{message}");
}

#[test]
fn number_payloads_need_a_point() {
    let text = BASE.replace(
        "topic = \"park/{grid}/meter/{device}/telemetry\"",
        "topic = \"park/{device}/x\"\nformat = \"number\"",
    );
    assert_eq!(paths(&text), ["mqtt.subscriptions[0].topic"]);
}

#[test]
fn provisioning_needs_a_known_type_and_the_grid_and_device_in_the_topic() {
    let text = BASE.replace(
        "topic = \"park/{grid}/meter/{device}/telemetry\"",
        "topic = \"park/{device}/telemetry\"\nprovision = { type = \"nope\", max = 0 }",
    );
    assert_eq!(
        paths(&text),
        [
            "mqtt.subscriptions[0].provision.type",
            "mqtt.subscriptions[0].provision",
            "mqtt.subscriptions[0].provision.max"
        ]
    );
}

#[test]
fn bad_timezone_and_duplicate_topic() {
    let text = BASE.replace("id = \"p1\"", "id = \"p1\"\ntimezone = \"Mars/Olympus\"")
        + "\n[[mqtt.subscriptions]]\nbroker = \"b1\"\ntopic = \"park/{grid}/meter/{device}/telemetry\"\n";
    assert_eq!(paths(&text), ["site.timezone", "mqtt.subscriptions[1].topic"]);
}

#[test]
fn dead_letter_bounds_default_and_must_be_positive() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.forward.dead_letter_max_count, 10_000);
    assert_eq!(c.forward.dead_letter_max_bytes, 64 * 1024 * 1024);
    let text = format!("{BASE}\n[forward]\ndead_letter_max_count = 0\ndead_letter_max_bytes = 0\n");
    assert_eq!(paths(&text), ["forward.dead_letter_max_count", "forward.dead_letter_max_bytes"]);
}

#[test]
fn a_lan_api_needs_tls_or_an_explicit_insecure_choice() {
    let lan = format!("{BASE}\n[api]\nlisten = \"0.0.0.0:8080\"\n");
    let problems = parse(&lan).unwrap_err().problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "api.listen");
    assert!(problems[0].1.contains("api.tls_cert and api.tls_key"), "{}", problems[0].1);
    assert!(parse(&format!("{lan}insecure_lan = true\n")).is_ok());
    // Loopback needs neither.
    assert!(parse(&format!("{BASE}\n[api]\nlisten = \"[::1]:8080\"\n")).is_ok());
}

#[test]
fn tls_files_must_exist_and_come_in_pairs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    let text = format!("{BASE}\n[api]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
    let e = from_str(&text, Path::new("t.toml"), dir.path()).unwrap_err();
    assert_eq!(e.problems().iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["api.tls_key"]);
    std::fs::write(dir.path().join("key.pem"), "x").unwrap();
    let c = from_str(&text, Path::new("t.toml"), dir.path()).unwrap();
    assert_eq!(c.api.tls(), Some((dir.path().join("cert.pem").as_path(), dir.path().join("key.pem").as_path())));
    assert!(c.cookie_secure(), "a session cookie of an HTTPS API is Secure without being asked");
    assert!(!parse(BASE).unwrap().cookie_secure());
    assert!(parse(&format!("{BASE}\n[auth]\ncookie_secure = true\n")).unwrap().cookie_secure());
    let half = format!("{BASE}\n[api]\ntls_cert = \"cert.pem\"\n");
    let e = from_str(&half, Path::new("t.toml"), dir.path()).unwrap_err();
    assert_eq!(e.problems().iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["api"]);
}

#[test]
fn the_audit_log_sits_next_to_the_incidents_unless_placed() {
    let c = parse(&format!("{BASE}\n[incidents]\npath = \"/var/lib/x/incidents.db\"\n")).unwrap();
    assert_eq!(c.audit_path(), Path::new("/var/lib/x/audit.db"));
    let c = from_str(&format!("{BASE}\n[audit]\npath = \"trail.db\"\n"), Path::new("t.toml"), Path::new("/etc/pw"))
        .unwrap();
    assert_eq!(c.audit_path(), Path::new("/etc/pw/trail.db"));
}

#[test]
fn auth_defaults_and_problems_name_their_keys() {
    let c = parse(BASE).unwrap();
    assert!(c.api.metrics_auth, "metrics need a token unless the config says otherwise");
    assert_eq!((c.auth.user_failures, c.auth.lockout_secs, c.auth.cookie_secure), (20, 900, false));
    let text = format!(
        "{BASE}\n[auth]\nsession_idle_secs = 600\nsession_max_secs = 60\nuser_failures = 0\nsource_failures = 0\nlockout_secs = 0\n"
    );
    assert_eq!(
        paths(&text),
        ["auth.session_max_secs", "auth.user_failures", "auth.source_failures", "auth.lockout_secs"]
    );
}

#[test]
fn a_site_plan_is_read_and_outlines_must_lie_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 400 200"/>"#;
    std::fs::write(dir.path().join("plan.svg"), svg).unwrap();
    let with = |plan: &str, outline: &str| {
        BASE.replacen("[[grids]]\nid = \"g1\"\n", &format!("{plan}\n[[grids]]\nid = \"g1\"\n{outline}\n"), 1)
    };
    let good = with(
        "[site.plan]\nimage = \"plan.svg\"\nwidth = 400\nheight = 200",
        "outline = [[0, 0], [200, 0], [200, 200]]",
    );
    let c = from_str(&good, Path::new("t.toml"), dir.path()).unwrap();
    let plan = c.site.plan.as_ref().unwrap();
    assert_eq!(plan.bytes, svg);
    assert_eq!(plan.content_type, "image/svg+xml");
    assert_eq!(c.grids[0].outline.len(), 3);

    let problems = |text: &str| -> Vec<(String, String)> {
        from_str(text, Path::new("t.toml"), dir.path()).expect_err("refused").problems()
    };
    let off = with(
        "[site.plan]\nimage = \"plan.svg\"\nwidth = 400\nheight = 200",
        "outline = [[0, 0], [500, 0], [200, 200]]",
    );
    let p = problems(&off);
    assert_eq!(p[0].0, "grids[0].outline[1]", "{p:?}");
    assert!(p[0].1.contains("off the plan"), "{p:?}");
    let two = with("[site.plan]\nimage = \"plan.svg\"\nwidth = 400\nheight = 200", "outline = [[0, 0], [5, 0]]");
    assert_eq!(problems(&two)[0].0, "grids[0].outline");
    let no_plan = with("", "outline = [[0, 0], [5, 0], [5, 5]]");
    let p = problems(&no_plan);
    assert_eq!(p[0].0, "grids[0].outline");
    assert!(p[0].1.contains("[site.plan]"), "{p:?}");
    let missing = with("[site.plan]\nimage = \"nowhere.png\"\nwidth = 400\nheight = 200", "");
    let p = problems(&missing);
    assert_eq!(p[0].0, "site.plan.image");
    assert!(p[0].1.contains("nowhere.png"), "{p:?}");
    let kind = with("[site.plan]\nimage = \"plan.gif\"\nwidth = 0\nheight = 200", "");
    let keys: Vec<String> = problems(&kind).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["site.plan.width", "site.plan.image"]);
    std::fs::write(dir.path().join("huge.png"), vec![0u8; MAX_PLAN_BYTES as usize + 1]).unwrap();
    let huge = with("[site.plan]\nimage = \"huge.png\"\nwidth = 400\nheight = 200", "");
    let p = problems(&huge);
    assert!(p[0].1.contains("at most"), "{p:?}");
}

#[test]
fn devices_take_what_their_type_gives_and_keep_what_they_say() {
    let text = format!(
        "{BASE}
[[device_types]]
id = \"sdm630\"
category = \"electrical\"
points = [{{ name = \"ua\", unit = \"V\" }}, {{ name = \"ia\", unit = \"A\" }}]
tags = {{ model = \"SDM630\", vendor = \"Eastron\" }}
profile = \"eastron-sdm630\"

[[devices]]
id = \"m2\"
grid = \"g1\"
type = \"sdm630\"

[[devices]]
id = \"m3\"
grid = \"g1\"
type = \"sdm630\"
category = \"energy\"
tags = {{ model = \"SDM630-MT\" }}
points = [{{ name = \"ia\", unit = \"mA\" }}, {{ name = \"t\", unit = \"°C\" }}]
"
    );
    let c = parse(&text).unwrap();
    let m2 = c.devices.iter().find(|d| d.id == "m2").unwrap();
    assert_eq!(m2.category, "electrical");
    let names: Vec<(&str, &str)> = m2.points.iter().map(|p| (p.name.as_str(), p.unit.as_str())).collect();
    assert_eq!(names, [("ua", "V"), ("ia", "A")]);
    assert_eq!(m2.tags["vendor"], "Eastron");
    let m3 = c.devices.iter().find(|d| d.id == "m3").unwrap();
    assert_eq!(m3.category, "energy", "the device's own category wins");
    let names: Vec<(&str, &str)> = m3.points.iter().map(|p| (p.name.as_str(), p.unit.as_str())).collect();
    assert_eq!(names, [("ua", "V"), ("ia", "mA"), ("t", "°C")], "a same-named point replaces the type's");
    assert_eq!((m3.tags["model"].as_str(), m3.tags["vendor"].as_str()), ("SDM630-MT", "Eastron"));
    let registry = crate::model::Registry::from_config(&c);
    assert_eq!(registry.device(registry.device_id("m2").unwrap()).device_type, "sdm630");
}

#[test]
fn device_type_mistakes_name_their_key_path() {
    let text = format!(
        "{BASE}
[[device_types]]
id = \"t1\"
category = \"electrical\"
params = {{ \"electrical.overload\" = {{ ratio = [1, 2] }} }}

[[device_types]]
id = \"t1\"
category = \"electrical\"

[[devices]]
id = \"m2\"
grid = \"g1\"
type = \"nope\"

[[devices]]
id = \"m3\"
grid = \"g1\"

[[rules.overrides]]
rule = \"*\"
type = \"ghost\"
params = {{ limit = 1 }}
"
    );
    let got = paths(&text);
    for want in [
        "device_types[0].params.electrical.overload.ratio",
        "device_types[1].id",
        "devices[1].type",
        "devices[2].category",
        "rules.overrides[0].type",
    ] {
        assert!(got.iter().any(|p| p == want), "{want} not among {got:?}");
    }
}

#[test]
fn a_polled_device_takes_its_modbus_profile_from_its_type() {
    let text = format!(
        "{BASE}
[[modbus.connections]]
id = \"c1\"
kind = \"tcp\"
host = \"127.0.0.1\"
port = 502

[[device_types]]
id = \"sdm630\"
category = \"electrical\"
profile = \"eastron-sdm630\"

[[devices]]
id = \"m2\"
grid = \"g1\"
type = \"sdm630\"
modbus = {{ connection = \"c1\", unit = 2 }}

[[devices]]
id = \"m3\"
grid = \"g1\"
category = \"electrical\"
modbus = {{ connection = \"c1\", unit = 3 }}
"
    );
    assert_eq!(paths(&text), ["devices[2].modbus.profile"], "only the untyped device lacks a profile");
    let c = parse(&text.replace(
        "category = \"electrical\"\nmodbus = { connection = \"c1\", unit = 3 }",
        "type = \"sdm630\"\nmodbus = { connection = \"c1\", unit = 3 }",
    ))
    .unwrap();
    let m2 = c.devices.iter().find(|d| d.id == "m2").unwrap();
    assert_eq!(m2.modbus.as_ref().unwrap().profile, "eastron-sdm630");
    assert!(m2.points.iter().any(|p| p.name == "ua"), "the profile's points are added: {:?}", m2.points);
}
