//! The Grafana dashboards in `dashboards/` (DESIGN.md: "a test keeps them honest"): well-formed, no
//! host written in them, the same panels in both flavours; every Flux and PromQL query names only
//! measurements, fields and tags of the encoder's schema (`forward::line::schema`) for
//! `configs/demo.toml`; and the PromQL panels answer with labelled series from a real VictoriaMetrics
//! fed by a real gateway running on the demo park's config with the simulated park publishing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkwatch::forward::line::{schema, Schema};
use parkwatch_e2e::{free_port, root, Gateway, Mosquitto, Victoria};
use serde_json::Value;

const FLAVOURS: [(&str, &str); 2] = [("influxdb", "influxdb"), ("prometheus", "prometheus")];

/// Panels whose data the demo cannot produce within this test's time; their queries are checked
/// against the schema only (by `queries_name_only_what_the_encoder_writes`), not against the store.
const SCHEMA_ONLY: [(&str, &str); 6] = [
    ("Daily energy by building (kWh)", "energy_daily is written by the daily energy report, after a local day ends"),
    ("Daily energy by tenant (kWh)", "energy_daily, after a local day ends; the demo has no tenant tags"),
    ("Daily peak demand, 15 min (kW)", "energy_daily, after a local day ends"),
    ("Daily energy by time-of-use bucket (kWh)", "energy_daily, after a local day ends"),
    ("Minutes without readings per day", "energy_daily, after a local day ends"),
    (
        "Emission exceedances raised",
        "emission rules judge hourly and daily averages (Leq, 1 h, 24 h), so the demo raises none in minutes",
    ),
];

/// `dashboards/<flavour>/*.json` by file name.
fn dashboards(flavour: &str) -> BTreeMap<String, Value> {
    let dir = root().join("dashboards").join(flavour);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), json);
        }
    }
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

/// Every panel, those inside rows included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The query text of each target of a panel (Flux `query`, PromQL `expr`).
fn queries(p: &Value) -> Vec<String> {
    p["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str().or(t["query"].as_str()).map(str::to_owned))
        .collect()
}

/// Every file under `dashboards/` that Grafana reads.
fn provisioned_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "json" || e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("dashboards"), &mut out);
    out
}

/// True when `text` holds something like an IPv4 address (four dot-separated numbers).
fn has_ipv4(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len()).any(|i| {
        if i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.') {
            return false;
        }
        let mut j = i;
        for part in 0..4 {
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j == start || j - start > 3 {
                return false;
            }
            if part < 3 {
                if j >= b.len() || b[j] != b'.' {
                    return false;
                }
                j += 1;
            }
        }
        true
    })
}

#[test]
fn dashboards_are_well_formed_with_the_same_panels_and_no_host() {
    let mut uids = HashSet::new();
    let mut titles: Vec<BTreeMap<String, Vec<(String, String)>>> = Vec::new();
    for (flavour, ds_type) in FLAVOURS {
        let mut by_file = BTreeMap::new();
        for (file, d) in dashboards(flavour) {
            let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{flavour}/{file}: no uid"));
            assert!(uids.insert(uid.to_owned()), "{flavour}/{file}: uid {uid} used twice");
            assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{flavour}/{file}: no title");
            let vars = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{flavour}/{file}: no variables"));
            let var = |name: &str| vars.iter().find(|v| v["name"] == name);
            let ds = var("datasource").unwrap_or_else(|| panic!("{flavour}/{file}: no datasource variable"));
            assert_eq!((ds["type"].as_str(), ds["query"].as_str()), (Some("datasource"), Some(ds_type)), "{file}");
            let expected_ds = serde_json::json!({ "type": ds_type, "uid": "${datasource}" });
            assert!(var("site").is_some(), "{flavour}/{file}: no site variable");
            for v in vars.iter().filter(|v| v["type"] == "query") {
                assert_eq!(v["datasource"], expected_ds, "{flavour}/{file}: variable {}", v["name"]);
            }
            let mut ids = HashSet::new();
            let mut list = Vec::new();
            for p in panels(&d) {
                let id = p["id"].as_u64().unwrap_or_else(|| panic!("{flavour}/{file}: a panel without an id"));
                assert!(ids.insert(id), "{flavour}/{file}: panel id {id} used twice");
                let title = p["title"].as_str().unwrap_or_default().to_owned();
                if p["type"] == "row" {
                    continue;
                }
                assert_eq!(p["datasource"], expected_ds, "{flavour}/{file}: panel {title:?}");
                let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}: {title:?} has no targets"));
                assert!(!targets.is_empty(), "{flavour}/{file}: {title:?} has no query");
                for t in targets {
                    if !t["datasource"].is_null() {
                        assert_eq!(t["datasource"], expected_ds, "{flavour}/{file}: a target of {title:?}");
                    }
                }
                for q in queries(p) {
                    if q.contains("$grid") || q.contains("${grid") {
                        assert!(var("grid").is_some(), "{flavour}/{file}: {title:?} uses $grid, which is not defined");
                    }
                }
                list.push((title, p["type"].as_str().unwrap_or_default().to_owned()));
            }
            by_file.insert(file, list);
        }
        titles.push(by_file);
    }
    // Both flavours show the same dashboards with the same panels, in the same order.
    assert_eq!(titles[0], titles[1], "the InfluxDB and Prometheus dashboards differ");
    for path in provisioned_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        for bad in ["http://", "https://", "localhost"] {
            assert!(!text.contains(bad), "{} names a host ({bad})", path.display());
        }
        assert!(!has_ipv4(&text), "{} holds an IP address", path.display());
    }
    let yaml: Vec<String> = provisioned_files()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        yaml.iter().any(|y| y.contains("url: $INFLUX_URL")),
        "the data sources take the store's URL from the environment"
    );
    assert!(yaml.iter().any(|y| y.contains("url: $VM_URL")));
    assert!(has_ipv4("url 10.0.0.7:8086") && !has_ipv4("version 1.2.3") && !has_ipv4("353.4"));
}

/// The schema of what the gateway writes for the demo park, its config loaded as the daemon loads it.
fn demo_schema() -> Schema {
    let config = parkwatch::config::load(&root().join("configs/demo.toml")).expect("configs/demo.toml loads");
    schema(&parkwatch::model::Registry::from_config(&config))
}

/// Replaces `r["name"]` by `r.name`, so both spellings are read alike.
fn normalise_flux(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut rest = q;
    while let Some(i) = rest.find("r[\"") {
        let after = &rest[i + 3..];
        match after.find("\"]") {
            Some(end) if i == 0 || !is_ident(rest.as_bytes()[i - 1]) => {
                out.push_str(&rest[..i]);
                out.push_str("r.");
                out.push_str(&after[..end]);
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str(&rest[..i + 3]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The quoted strings right after each `pattern`.
fn quoted_after(q: &str, pattern: &str) -> Vec<String> {
    q.match_indices(pattern)
        .filter_map(|(i, _)| {
            let rest = &q[i + pattern.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

/// The identifiers after `r.` (record members), in order.
fn members(q: &str) -> Vec<String> {
    let b = q.as_bytes();
    q.match_indices("r.")
        .filter(|(i, _)| *i == 0 || !is_ident(b[i - 1]))
        .map(|(i, _)| q[i + 2..].bytes().take_while(|c| is_ident(*c)).map(char::from).collect::<String>())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The names in each `columns: [...]` list.
fn column_lists(q: &str) -> Vec<String> {
    q.match_indices("columns: [")
        .flat_map(|(i, _)| {
            let rest = &q[i + 10..];
            let end = rest.find(']').unwrap_or(rest.len());
            rest[..end]
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_owned())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What a Flux query names that the schema does not have: measurements (`r._measurement == "…"`),
/// fields (`r._field == "…"`, of one of the query's measurements), tags (`r.tag`, `r["tag"]`,
/// `group`/`keep` columns, `schema.tagValues(tag: …)`).
fn check_flux(q: &str, schema: &Schema) -> Vec<String> {
    let q = normalise_flux(q);
    let mut problems = Vec::new();
    let measurements: Vec<String> = quoted_after(&q, "r._measurement == \"");
    let mut ms = Vec::new();
    for m in &measurements {
        match schema.get(m) {
            Some(s) => ms.push(s),
            None => problems.push(format!("measurement {m:?} is not written")),
        }
    }
    let tag_values = quoted_after(&q, "tag: \"");
    if measurements.is_empty() && tag_values.is_empty() {
        problems.push("names no measurement".into());
    }
    for t in &tag_values {
        if !schema.measurements.iter().any(|m| m.has_tag(t)) {
            problems.push(format!("tag {t:?} is on no measurement"));
        }
    }
    // A variable's predicate may name any tag that some measurement has.
    let scope: Vec<_> = if ms.is_empty() { schema.measurements.iter().collect() } else { ms.clone() };
    for f in quoted_after(&q, "r._field == \"") {
        match scope.iter().find_map(|m| m.field(&f)) {
            Some(t) if t.is_numeric() => {}
            Some(t) => problems.push(format!("field {f:?} is a {t:?}, not a number to graph")),
            None => problems.push(format!("field {f:?} is not written to {measurements:?}")),
        }
    }
    let pivoted = q.contains("pivot(");
    for t in members(&q).into_iter().chain(column_lists(&q)).filter(|t| !t.starts_with('_')) {
        let known = scope.iter().any(|m| m.has_tag(&t) || (pivoted && m.field(&t).is_some()));
        if !known {
            problems.push(format!("column {t:?} is not a tag of {measurements:?}"));
        }
    }
    problems
}

/// The metric names of a PromQL query (identifiers right before `{`).
fn metric_names(q: &str) -> Vec<String> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    for (i, _) in q.match_indices('{') {
        let start = (0..i).rev().take_while(|j| is_ident(b[*j])).last().unwrap_or(i);
        if start < i {
            out.push(q[start..i].to_owned());
        }
    }
    out
}

/// Label names in selectors (`{a=~"…"}`) and in `by (…)`, `on (…)`, `without (…)`.
fn label_names(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in q.match_indices('{') {
        let rest = &q[i + 1..];
        let end = rest.find('}').unwrap_or(rest.len());
        for m in rest[..end].split(',') {
            let name: String = m.trim().bytes().take_while(|c| is_ident(*c)).map(char::from).collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    for kw in ["by (", "on (", "without ("] {
        for (i, _) in q.match_indices(kw) {
            let rest = &q[i + kw.len()..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.extend(rest[..end].split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
        }
    }
    out
}

/// What a PromQL query names that VictoriaMetrics cannot have from the gateway's lines: metrics are
/// `<measurement>_<numeric field>`, labels the measurement's tags.
fn check_promql(q: &str, schema: &Schema) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ms = Vec::new();
    for name in metric_names(q) {
        let found = schema.measurements.iter().find(|m| {
            name.strip_prefix(m.name.as_str())
                .and_then(|r| r.strip_prefix('_'))
                .and_then(|f| m.field(f))
                .is_some_and(|t| t.is_numeric())
        });
        match found {
            Some(m) => ms.push(m),
            None => problems.push(format!("metric {name:?} is no measurement_field the encoder writes as a number")),
        }
    }
    let scope: Vec<_> = if ms.is_empty() { schema.measurements.iter().collect() } else { ms };
    for l in label_names(q) {
        if l != "__name__" && !scope.iter().any(|m| m.has_tag(&l)) {
            problems.push(format!("label {l:?} is not a tag of the query's measurements"));
        }
    }
    problems
}

#[test]
fn queries_name_only_what_the_encoder_writes() {
    let schema = demo_schema();
    // The checks catch a query that names what the encoder does not write.
    let broken = "from(bucket: v.defaultBucket)\n  |> filter(fn: (r) => r._measurement == \"electrical\" and r._field == \"residual_currant\")";
    assert!(!check_flux(broken, &schema).is_empty());
    assert!(!check_flux(
        &broken.replace("residual_currant", "residual_current").replace("== \"electrical\"", "== \"electric\""),
        &schema
    )
    .is_empty());
    assert!(!check_flux(
        "from(bucket: b) |> filter(fn: (r) => r._measurement == \"incident\" and r[\"zone\"] == \"1\")",
        &schema
    )
    .is_empty());
    assert!(!check_flux(
        "from(bucket: b) |> filter(fn: (r) => r._measurement == \"incident\" and r._field == \"message\")",
        &schema
    )
    .is_empty());
    assert!(check_flux(
        "from(bucket: b) |> filter(fn: (r) => r[\"_measurement\"] == \"incident\" and r[\"grid\"] == \"g1\")",
        &schema
    )
    .is_empty());
    assert!(!check_promql("electrical_residual_currant{site=~\"$site\"}", &schema).is_empty());
    assert!(!check_promql("incident_message{site=~\"$site\"}", &schema).is_empty());
    assert!(!check_promql("sum by (zone) (electrical_ua)", &schema).is_empty());
    assert!(check_promql("sum by (grid) (electrical_ua{site=~\"$site\"})", &schema).is_empty());

    let mut checked = 0;
    for (flavour, _) in FLAVOURS {
        for (file, d) in dashboards(flavour) {
            let mut texts: Vec<(String, String)> = Vec::new();
            for p in panels(&d) {
                for q in queries(p) {
                    texts.push((p["title"].as_str().unwrap_or_default().to_owned(), q));
                }
            }
            for v in d["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
                let q = v["query"].as_str().or(v["query"]["query"].as_str()).unwrap_or_default().to_owned();
                texts.push((format!("variable {}", v["name"]), q));
            }
            for (title, q) in texts {
                let problems = if flavour == "influxdb" {
                    check_flux(&q, &schema)
                } else if q.starts_with("label_values(") {
                    // label_values([selector,] label): the label must be a tag.
                    let label = q.trim_end_matches(')').rsplit([',', '(']).next().unwrap_or_default().trim().to_owned();
                    let mut p = check_promql(&q, &schema);
                    if !schema.measurements.iter().any(|m| m.has_tag(&label)) {
                        p.push(format!("label {label:?} is on no measurement"));
                    }
                    p
                } else {
                    check_promql(&q, &schema)
                };
                assert!(problems.is_empty(), "{flavour}/{file}: {title}: {problems:?}\n{q}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "only {checked} queries checked");
}

/// The demo park's config with the embedded broker swapped for `mqtt`, dead ports for the Modbus
/// and DL/T 645 lines (their devices go offline, as the overview should show), and VictoriaMetrics as
/// the forward target.
fn demo_config(mqtt: u16, store: &str) -> String {
    let text = std::fs::read_to_string(root().join("configs/demo.toml")).unwrap();
    let plan = root().join("configs/demo-plan.svg");
    let mut text = text
        .replacen("embedded = true", "embedded = false", 1)
        .replacen("port = 11883", &format!("port = {mqtt}"), 1)
        .replacen("listen = \"127.0.0.1:8080\"", "listen = \"{api}\"", 1)
        .replacen("image = \"demo-plan.svg\"", &format!("image = {:?}", plan.display().to_string()), 1)
        .replacen("port = 15020", &format!("port = {}", free_port()), 1)
        .replacen("port = 15021", &format!("port = {}", free_port()), 1);
    for (from, to) in [("embedded = false", "broker"), ("listen = \"{api}\"", "api")] {
        assert!(text.contains(from), "configs/demo.toml changed: cannot set its {to}");
    }
    text.push_str(&format!(
        r#"
[forward]
outbox = "outbox.db"
batch_ms = 200

[[forward.targets]]
id = "central"
url = "{store}"
org = "park"
bucket = "telemetry"
token = "not-checked-by-this-store"
retry_min_ms = 100
retry_max_ms = 1000
"#
    ));
    text
}

/// Substitutes the dashboard variables as Grafana would with "All" selected.
fn substitute(q: &str) -> String {
    q.replace("$__rate_interval", "5m")
        // Wider than Grafana's step, so an instant query sees the incidents of the last hour.
        .replace("$__interval", "1h")
        .replace("$__range", "1h")
        .replace("$site", ".*")
        .replace("$grid", ".*")
}

/// The labels a panel's legend shows (`{{label}}`).
fn legend_labels(p: &Value) -> Vec<String> {
    let legend = p["targets"][0]["legendFormat"].as_str().unwrap_or_default();
    legend.split("{{").skip(1).filter_map(|s| s.split("}}").next()).map(|s| s.trim().to_owned()).collect()
}

/// `/api/v1/query` at now: the result vector.
fn instant(store: &Victoria, q: &str) -> Result<Vec<Value>, String> {
    let url = format!("{}/api/v1/query", store.url());
    let body = match ureq::get(&url).query("query", q).call() {
        Ok(r) => r.into_string().map_err(|e| e.to_string())?,
        Err(ureq::Error::Status(code, r)) => return Err(format!("{code}: {}", r.into_string().unwrap_or_default())),
        Err(e) => return Err(e.to_string()),
    };
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(body);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[test]
fn promql_panels_answer_from_a_store_fed_by_the_demo_park() {
    let broker = Mosquitto::start("");
    let store = Victoria::start();
    let gw = Gateway::start(&demo_config(broker.port, &store.url()));
    // The simulated park publishes to the broker as `parkwatch demo` does; polled devices (Modbus,
    // DL/T 645) and the HJ 212 loggers' devices are left to their (dead) lines.
    let config = parkwatch::config::load(&gw.dir.path().join("parkwatch.toml")).unwrap();
    let registry = Arc::new(parkwatch::model::Registry::from_config(&config));
    let mut polled: HashSet<String> =
        config.devices.iter().filter(|d| d.modbus.is_some() || d.dlt645.is_some()).map(|d| d.id.clone()).collect();
    polled.extend(config.hj212.loggers.iter().map(|l| l.device.clone()));
    let officers: HashMap<String, Vec<String>> =
        config.grids.iter().map(|g| (g.id.clone(), g.officers.clone())).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let sim = {
        let (stop, port) = (stop.clone(), broker.port);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(parkwatch::sim::run(
                registry,
                polled,
                officers,
                "127.0.0.1".into(),
                port,
                Duration::from_secs(1),
                stop,
            ));
        })
    };

    let schema_only: HashMap<&str, &str> = SCHEMA_ONLY.into_iter().collect();
    let mut pending: Vec<(String, String, Value)> = Vec::new();
    let mut skipped = 0;
    for (file, d) in dashboards("prometheus") {
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or_default();
            if schema_only.contains_key(title) {
                skipped += 1;
                continue;
            }
            pending.push((format!("{file}: {title}"), substitute(&queries(p)[0]), p.clone()));
        }
    }
    assert_eq!(skipped, SCHEMA_ONLY.len(), "every panel left to the schema check is on a dashboard");
    assert!(pending.len() >= 20, "only {} panels to query", pending.len());
    // Rates need two health readings a minute apart; the first is written at start.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut last_error = HashMap::new();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|(name, q, p)| {
            let series = match instant(&store, q) {
                Ok(s) => s,
                Err(e) => {
                    // A query the store refuses is wrong now and later.
                    panic!("{name}: VictoriaMetrics refused the query: {e}\n{q}");
                }
            };
            if series.is_empty() {
                last_error.insert(name.clone(), "no series".to_owned());
                return true;
            }
            // Series of an aggregation carry the labels it keeps (which its legend shows); the
            // others carry every tag their measurement always has.
            let aggregated = ["count(", "count by", "sum", "avg", "max", "min"].iter().any(|a| q.starts_with(a));
            let mut want = legend_labels(p);
            if !aggregated {
                for m in metric_names(q) {
                    let always: &[&str] = match m.split('_').next() {
                        Some("gateway") => &["site"],
                        Some("incident") => &["site", "rule", "severity"],
                        _ => &["site", "grid", "device"],
                    };
                    want.extend(always.iter().map(|l| (*l).to_owned()));
                }
            }
            for s in &series {
                for l in &want {
                    if s["metric"][l].as_str().is_none_or(str::is_empty) {
                        last_error.insert(name.clone(), format!("series without label {l}: {s}"));
                        return true;
                    }
                }
                if !aggregated {
                    assert_eq!(s["metric"]["site"], "demo-park", "{name}: {s}");
                }
                assert!(s["value"][1].as_str().is_some_and(|v| v.parse::<f64>().is_ok()), "{name}: {s}");
            }
            false
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.cancel();
    let _ = sim.join();
    assert!(
        pending.is_empty(),
        "panels without the expected series after 150 s:\n{}\nstore has: {:?}\n{}",
        pending
            .iter()
            .map(|(n, q, _)| format!("  {n}: {}\n    {q}", last_error.get(n).map_or("", String::as_str)))
            .collect::<Vec<_>>()
            .join("\n"),
        store
            .export(r#"{__name__=~"incident_state_code|gateway_.*"}"#)
            .iter()
            .map(|s| s["metric"].to_string())
            .collect::<BTreeSet<_>>(),
        gw.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // Every panel left to the schema check is one of the dashboards' panels.
    let titles: HashSet<String> = dashboards("prometheus")
        .values()
        .flat_map(|d| panels(d).into_iter().filter_map(|p| p["title"].as_str().map(str::to_owned)).collect::<Vec<_>>())
        .collect();
    for (t, why) in SCHEMA_ONLY {
        assert!(titles.contains(t), "SCHEMA_ONLY names {t:?} ({why}), which no dashboard has");
    }
}
