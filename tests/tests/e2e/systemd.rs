//! The shipped systemd unit stays hardened.

use std::process::Command;

use parkwatch_e2e::root;

#[test]
fn unit_exposure_is_at_most_2_5() {
    let unit = root().join("systemd/parkwatch.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "StateDirectory=parkwatch",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(text.contains(directive), "the unit lacks {directive:?}");
    }
    assert!(text.contains("DynamicUser=yes") || text.contains("User=parkwatch"));
    let Ok(out) = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output() else {
        eprintln!("systemd-analyze is not installed: exposure not measured here");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let score: f64 =
        line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap();
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{text}");
}

/// The unit's command lines (`ExecStartPre`, `ExecStart`) with the installed paths replaced.
fn unit_commands(bin: &std::path::Path, config: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(root().join("systemd/parkwatch.service")).unwrap();
    let line = |key: &str| -> Vec<String> {
        let l = text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("the unit lacks {key}"));
        l.split_whitespace()
            .map(|w| {
                w.replace("/usr/bin/parkwatch", &bin.display().to_string())
                    .replace("/etc/parkwatch/parkwatch.toml", &config.display().to_string())
            })
            .collect()
    };
    (line("ExecStartPre="), line("ExecStart="))
}

#[test]
fn unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("systemd/parkwatch.service")).unwrap();
    let unit = dir.path().join("parkwatch.service");
    std::fs::write(&unit, text.replace("/usr/bin/parkwatch", &parkwatch_e2e::gateway_bin().display().to_string()))
        .unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

/// Where systemd does not run (containers, CI), the unit's own start sequence is run as systemd would
/// run it: `ExecStartPre` must succeed and `ExecStart` must serve with a broken user pack.
#[test]
fn a_broken_user_pack_still_lets_the_unit_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/broken.rhai"), "rule(#{ id: \"x\", condition: |ctx| ctx.value > })").unwrap();
    let api = format!("127.0.0.1:{}", parkwatch_e2e::free_port());
    let config = dir.path().join("parkwatch.toml");
    let base = format!(
        "[site]\nid = \"xh\"\n[api]\nlisten = \"{api}\"\n[incidents]\npath = \"incidents.db\"\n[rules]\ndirs = [\"rules\"]\n"
    );
    std::fs::write(&config, &base).unwrap();
    let token = parkwatch_e2e::create_token(&config, "systemd-test", "viewer", &[]);
    let (pre, start) = unit_commands(&parkwatch_e2e::gateway_bin(), &config);
    let out = Command::new(&pre[0]).args(&pre[1..]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ExecStartPre failed:\n{said}");
    assert!(said.contains("rules: warning:") && said.contains("1 skipped"), "{said}");
    let mut child = Command::new(&start[0]).args(&start[1..]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let addr: std::net::SocketAddr = api.parse().unwrap();
    let rules = parkwatch_e2e::wait_until(std::time::Duration::from_secs(15), "the gateway to serve", || {
        let (status, body) = parkwatch_e2e::http_get_as(addr, "/api/v1/rules", Some(&token)).ok()?;
        (status == 200).then_some(body)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(rules.contains("broken.rhai"), "the skipped pack is reported: {rules}");

    // rules.strict = true: both refuse.
    std::fs::write(&config, base.replace("[rules]\n", "[rules]\nstrict = true\n")).unwrap();
    let out = Command::new(&pre[0]).args(&pre[1..]).output().unwrap();
    assert!(!out.status.success(), "strict check must fail");
    let out = Command::new(&start[0]).args(&start[1..]).output().unwrap();
    assert!(!out.status.success(), "strict run must refuse to start");
}
