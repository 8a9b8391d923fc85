//! `parkwatch demo` runs on embedded defaults and stops by itself.

use std::process::{Command, Stdio};
use std::time::Duration;

use parkwatch_e2e::{free_port, gateway_bin, http_get, http_get_as, wait_until};

/// Starts `parkwatch demo` for `secs` with every listener on a port of its own (so demos can run side
/// by side): the process, its API address and the admin token it printed (with what it printed up to
/// there), and the rest of its standard output.
fn start_demo(
    secs: u32,
) -> (std::process::Child, std::net::SocketAddr, String, String, std::io::BufReader<std::process::ChildStdout>) {
    let api = format!("127.0.0.1:{}", free_port());
    let mqtt = format!("127.0.0.1:{}", free_port());
    let modbus = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(gateway_bin())
        .args([
            "demo",
            "--listen",
            &api,
            "--mqtt-listen",
            &mqtt,
            "--modbus-listen",
            &modbus,
            "--duration",
            &secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The demo prints its admin token as a line PARKWATCH_TOKEN=…; the rest of its output is read later.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    let token = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "the demo printed no PARKWATCH_TOKEN line:\n{out}");
        out.push_str(&line);
        if let Some(t) = line.trim().strip_prefix("PARKWATCH_TOKEN=") {
            break t.to_owned();
        }
    };
    (child, api.parse().unwrap(), token, out, stdout)
}

#[test]
fn demo_serves_a_simulated_park_and_stops_by_itself() {
    let (mut child, addr, token, mut out, mut stdout) = start_demo(8);
    let api = addr.to_string();
    let points = wait_until(Duration::from_secs(20), "demo points from every grid and category", || {
        let (status, body) = http_get_as(addr, "/api/v1/points", Some(&token)).ok()?;
        let points: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        let list = points.as_array()?;
        let has = |key: &str, value: &str| list.iter().any(|p| p[key] == value);
        let complete = ["g1", "g2", "g3", "g4"].iter().all(|g| has("grid", g))
            && ["electrical", "environment", "water"].iter().all(|c| has("category", c));
        complete.then_some(points)
    });
    let rc = points.as_array().unwrap().iter().find(|p| p["point"] == "residual_current").unwrap();
    assert_eq!(rc["unit"], "mA");
    // The DL/T 645 meter behind the simulated serial server is read too.
    let ua = wait_until(Duration::from_secs(10), "the demo's DL/T 645 meter", || {
        let (_, body) = http_get_as(addr, "/api/v1/points?device=dlt-g3", Some(&token)).ok()?;
        let points: serde_json::Value = serde_json::from_str(&body).ok()?;
        points.as_array()?.iter().find(|p| p["point"] == "ua" && p["quality"] == "good").cloned()
    });
    assert!((215.0..=235.0).contains(&ua["value"].as_f64().unwrap()), "{ua}");
    assert_eq!(http_get(addr, "/api/v1/points").unwrap().0, 401, "the demo's API needs the token too");
    // The printed demo users can log in; the officer is limited to one grid.
    let officer = out.lines().find_map(|l| l.trim().strip_prefix("demo-officer / ")).expect("demo officer line");
    let password = officer.split_whitespace().next().unwrap();
    let login = serde_json::json!({ "user": "demo-officer", "password": password });
    let (status, body) = parkwatch_e2e::http_post(addr, "/api/v1/login", &login).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"officer\"") && body.contains("\"g1\""), "{body}");
    // The dashboard is served at the root, and a logged-in page sees the demo's grid cells.
    let (status, page) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.") && page.contains("parkwatch"), "{page}");
    let admin_grids = parkwatch_e2e::http_get_as(addr, "/api/v1/grids", Some(&token)).unwrap();
    assert_eq!(admin_grids.0, 200, "{}", admin_grids.1);
    let grids: serde_json::Value = serde_json::from_str(&admin_grids.1).unwrap();
    assert_eq!(grids["grids"].as_array().map(Vec::len), Some(4), "{grids}");
    let status = wait_until(Duration::from_secs(20), "the demo to stop by itself", || child.try_wait().unwrap());
    assert!(status.success(), "{status}");
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    assert!(out.contains(&format!("http://{api}/api/v1/points")), "{out}");
    assert!(out.contains(&format!("Dashboard  http://{api}/ ")), "{out}");
}

#[test]
fn the_demo_inbox_prints_the_notification_of_the_first_hazard() {
    let api = format!("127.0.0.1:{}", free_port());
    let mqtt = format!("127.0.0.1:{}", free_port());
    let modbus = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(gateway_bin())
        .args(["demo", "--listen", &api, "--mqtt-listen", &mqtt, "--modbus-listen", &modbus, "--duration", "90"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(80);
    // The first residual-current rise starts 5 s in; the duty receiver groups for 10 s.
    let header = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no notification printed:\n{}", out.join("\n")));
        out.push(line.clone());
        if line.contains("通知 notification → duty") {
            break line;
        }
    };
    let mut message = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.is_empty() && !message.is_empty() {
            break;
        }
        message.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = message.join("\n");
    // Addressed to the officers the roster puts on duty, signed and checked by the inbox.
    assert!(["张伟", "李娜", "刘洋", "赵磊", "黄涛", "陈杰", "王强"].iter().any(|n| header.contains(n)), "{header}");
    assert!(text.contains("网格：") || text.contains("汇总"), "{text}");
    assert!(text.contains(&format!("http://{api}/#/incidents")), "{text}");
}

/// The demo's simulated fire (fd-g2's temperature alarm, about 12 s in) releases the exits of its
/// building B20 through the simulated access controller: visible in /api/v1/actions and with the
/// controller in /api/v1/devices.
#[test]
fn the_demo_fire_unlocks_its_building_s_exits() {
    let (mut child, addr, token, _, _stdout) = start_demo(60);
    let get = |path: &str| -> Option<serde_json::Value> {
        let (status, body) = http_get_as(addr, path, Some(&token)).ok()?;
        serde_json::from_str(&body).ok().filter(|_| status == 200)
    };
    let done = wait_until(Duration::from_secs(45), "the demo fire's linkage", || {
        let a = get("/api/v1/actions")?;
        a["recent"].as_array()?.iter().find(|r| r["action"] == "unlock_exits_B20").cloned()
    });
    assert_eq!(
        (done["state"].as_str(), done["rule"].as_str()),
        (Some("done"), Some("electrical.detector_alarm")),
        "{done}"
    );
    assert_eq!(done["read_back"], serde_json::json!([1.0, 1.0, 1.0, 1.0]));
    let devices = get("/api/v1/devices").unwrap();
    assert!(devices.to_string().contains("acc-b20"), "{devices}");
    let declared = get("/api/v1/actions").unwrap();
    assert!(declared["declared"].to_string().contains("trip_breaker_B20"), "{declared}");
    let _ = child.kill();
    let _ = child.wait();
}
