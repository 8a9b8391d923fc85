//! `parkwatch demo` runs on embedded defaults and stops by itself.

use std::process::{Command, Stdio};
use std::time::Duration;

use parkwatch_e2e::{free_port, gateway_bin, http_get, wait_until};

#[test]
fn demo_serves_a_simulated_park_and_stops_by_itself() {
    let api = format!("127.0.0.1:{}", free_port());
    let mqtt = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(gateway_bin())
        .args(["demo", "--listen", &api, "--mqtt-listen", &mqtt, "--duration", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = api.parse().unwrap();
    let points = wait_until(Duration::from_secs(20), "demo points from every grid and category", || {
        let (status, body) = http_get(addr, "/api/v1/points").ok()?;
        let points: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        let list = points.as_array()?;
        let has = |key: &str, value: &str| list.iter().any(|p| p[key] == value);
        let complete = ["g1", "g2", "g3", "g4"].iter().all(|g| has("grid", g))
            && ["electrical", "environment", "water"].iter().all(|c| has("category", c));
        complete.then_some(points)
    });
    let rc = points.as_array().unwrap().iter().find(|p| p["point"] == "residual_current").unwrap();
    assert_eq!(rc["unit"], "mA");
    let status = wait_until(Duration::from_secs(20), "the demo to stop by itself", || child.try_wait().unwrap());
    assert!(status.success(), "{status}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains(&format!("http://{api}/api/v1/points")), "{out}");
}
