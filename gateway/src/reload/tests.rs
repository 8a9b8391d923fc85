use std::path::Path;

use super::diff;
use crate::config::{self, Config};
use crate::model::{DeviceId, PointId, Registry};

fn config(grids: &[&str], devices: &[(&str, &str, &[&str])], extra: &str) -> Config {
    let mut text = String::from("[site]\nid = \"t\"\n[rules]\nbuiltin = false\n");
    for g in grids {
        text.push_str(&format!("[[grids]]\nid = \"{g}\"\n"));
    }
    for (id, grid, points) in devices {
        let pts: Vec<String> = points.iter().map(|p| format!("{{ name = {p:?} }}")).collect();
        text.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\ngrid = \"{grid}\"\ncategory = \"electrical\"\npoints = [{}]\n",
            pts.join(", ")
        ));
    }
    text.push_str(extra);
    config::from_str(&text, Path::new("t.toml"), Path::new(".")).unwrap()
}

#[test]
fn a_successor_registry_keeps_every_id_and_retires_what_went() {
    let a = config(&["g1", "g2"], &[("m1", "g1", &["ua", "ia"]), ("m2", "g2", &["ua"]), ("m3", "g1", &["ua"])], "");
    let r0 = Registry::from_config(&a);
    let ua_m2 = r0.point_of(r0.device_id("m2").unwrap(), "ua").unwrap();
    // m1 moves to g3 and gets a tag-like rename; m2 gains a point; m3 goes; m4 comes.
    let b =
        config(&["g1", "g3"], &[("m2", "g3", &["ua", "pf"]), ("m1", "g3", &["ua", "ia"]), ("m4", "g1", &["ua"])], "");
    let r1 = r0.evolve(&b, &[]);
    // m1 keeps its id and points, now in g3.
    assert_eq!(r1.device_id("m1"), r0.device_id("m1"));
    let m1 = r1.device(r1.device_id("m1").unwrap());
    assert_eq!(r1.grid(m1.grid).id, "g3");
    assert_eq!(r1.point_of(r1.device_id("m1").unwrap(), "ia"), r0.point_of(DeviceId(0), "ia"));
    // m2's points changed: a new entry; the old one is retired and its point still names m2/ua.
    let m2 = r1.device_id("m2").unwrap();
    assert_ne!(Some(m2), r0.device_id("m2"));
    assert!(r1.devices[r0.device_id("m2").unwrap().0 as usize].retired);
    assert_eq!(r1.point(ua_m2).name, "ua");
    assert_eq!(r1.device(r1.point(ua_m2).device).id, "m2");
    assert_eq!(r1.device(m2).points.len(), 2);
    // m3 is retired and unknown by name; g2 retired, g3 added; ids only grow.
    assert_eq!(r1.device_id("m3"), None);
    assert!(r1.devices[2].retired);
    assert_eq!(r1.grid_id("g2"), None);
    assert!(r1.grids[1].retired);
    assert!(r1.points.len() >= r0.points.len() && r1.devices.len() >= r0.devices.len());
    for (i, p) in r0.points.iter().enumerate() {
        assert_eq!(r1.point(PointId(i as u32)).name, p.name, "point {i} means the same");
    }
    let live: Vec<&str> = r1.live_devices().map(|(_, d)| d.id.as_str()).collect();
    assert_eq!(live, ["m1", "m2", "m4"]);
    let grids: Vec<&str> = r1.live_grids().map(|(_, g)| g.id.as_str()).collect();
    assert_eq!(grids, ["g1", "g3"]);
    // Nothing changed: the same registry again.
    let r2 = r1.evolve(&b, &[]);
    assert_eq!(r2.points.len(), r1.points.len());
    assert_eq!(r2.devices.len(), r1.devices.len());
}

#[test]
fn the_report_names_what_changed_and_what_waits_for_a_restart() {
    let a = config(&["g1"], &[("m1", "g1", &["ua"]), ("m3", "g1", &["ua"])], "");
    let b = config(
        &["g1", "g2"],
        &[("m1", "g2", &["ua"]), ("m2", "g2", &["ua"])],
        "[api]\nlisten = \"127.0.0.1:9999\"\n[[rules.overrides]]\nrule = \"*\"\nparams = { limit = 3 }\n",
    );
    let (live, restart) = diff(&a, &b);
    assert_eq!(
        live,
        [
            "grids added: g2",
            "devices added: m2",
            "devices removed: m3",
            "devices changed: m1",
            "rules, rule parameters or device types"
        ]
    );
    assert_eq!(restart, ["[api]"]);
    let (live, restart) = diff(&a, &a);
    assert_eq!((live, restart), (vec!["nothing that runs changed".to_owned()], vec![]));
}

#[test]
fn many_names_are_cut_short() {
    let ids: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let devices: Vec<(&str, &str, &[&str])> = ids.iter().map(|i| (i.as_str(), "g1", &["ua"][..])).collect();
    let (live, _) = diff(&config(&["g1"], &[], ""), &config(&["g1"], &devices, ""));
    assert_eq!(live, ["devices added: m0, m1, m2, m3, m4 and 3 more"]);
}
