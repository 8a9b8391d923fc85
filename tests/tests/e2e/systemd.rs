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
