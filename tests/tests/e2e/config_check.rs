//! `parkwatch check` on every shipped config, and on broken ones that must name the exact key path.

use std::process::Command;

use parkwatch_e2e::{gateway_bin, root};

fn check(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(gateway_bin()).arg("check").arg("-c").arg(file).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr))
}

fn toml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_passes() {
    let files = toml_files("configs");
    assert!(files.len() >= 2, "configs/ should hold the example and the demo config");
    for f in files {
        let (ok, out) = check(&f);
        assert!(ok, "{}: {out}", f.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

/// Each broken config starts with `# expect: <key path>` lines; every one must be reported.
#[test]
fn broken_configs_fail_with_the_key_path() {
    let files = toml_files("tests/broken-configs");
    assert!(files.len() >= 8);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expected.is_empty(), "{} has no '# expect:' line", f.display());
        let (ok, out) = check(&f);
        assert!(!ok, "{} should fail:\n{out}", f.display());
        for path in expected {
            let needle = format!("{}: {path}: ", f.display());
            assert!(out.contains(&needle), "{}: expected a problem at {path}, got:\n{out}", f.display());
        }
    }
}

/// A rule naming a plan the site has not written is a warning that names the rule and the plan; the
/// config still passes. The shipped configs define every plan the default packs name.
#[test]
fn an_unknown_plan_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-plans.toml");
    std::fs::write(
        &file,
        "[site]\nid = \"p\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"m1\"\ngrid = \"g1\"\ncategory = \"electrical\"\n\
         points = [{ name = \"residual_current\", unit = \"mA\" }]\n",
    )
    .unwrap();
    let (ok, out) = check(&file);
    assert!(ok, "{out}");
    assert!(
        out.contains("plans: warning: rule \"electrical.residual_current\" names plan \"electrical-fire\""),
        "{out}"
    );
    for f in toml_files("configs") {
        let (_, out) = check(&f);
        assert!(!out.contains("plans: warning"), "{}: {out}", f.display());
    }
}

/// A required rule parameter with no default (the boundary NMHC limit) left unset is a warning naming
/// each device it is missing for; the config still passes, and a device with the limit set is not named.
#[test]
fn an_unset_required_limit_is_a_warning_naming_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nmhc.toml");
    std::fs::write(
        &file,
        r#"[site]
id = "t"
[[grids]]
id = "g1"
[[devices]]
id = "boundary-east"
grid = "g1"
category = "environment"
points = [{ name = "nmhc", unit = "mg/m³" }]
[[devices]]
id = "boundary-west"
grid = "g1"
category = "environment"
points = [{ name = "nmhc", unit = "mg/m³" }]
[[rules.overrides]]
rule = "emission.boundary_nmhc"
device = "boundary-west"
params = { limit_mgm3 = 4.0 }
"#,
    )
    .unwrap();
    let (ok, out) = check(&file);
    assert!(ok, "{out}");
    assert!(out.contains(": ok ("), "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("limit_mgm3")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains("rules: warning:")
            && warnings[0].contains("\"boundary-east\"")
            && warnings[0].contains("\"emission.boundary_nmhc\""),
        "{out}"
    );
}

fn devices_import(config: &std::path::Path, file: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(gateway_bin())
        .args(["devices", "import", "-c"])
        .arg(config)
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr))
}

/// A park's device list as a CSV next to the config: `check` reads it, `devices import` shows what a
/// new export changes, writes only with --apply, and refuses a list the config cannot take.
#[test]
fn a_csv_device_list_is_checked_diffed_and_put_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("parkwatch.toml");
    std::fs::write(
        &config,
        "device_files = [\"devices.csv\"]\n[site]\nid = \"p\"\n[[grids]]\nid = \"g1\"\n[[grids]]\nid = \"g2\"\n\
         [[device_types]]\nid = \"meter\"\ncategory = \"electrical\"\npoints = [{ name = \"ua\", unit = \"V\" }]\n",
    )
    .unwrap();
    let live = dir.path().join("devices.csv");
    let old = "id,grid,type,tags\nm1,g1,meter,floor=1\nm2,g1,meter,\n";
    std::fs::write(&live, old).unwrap();
    let (ok, out) = check(&config);
    assert!(ok && out.contains(": ok ("), "{out}");

    let export = dir.path().join("export.csv");
    std::fs::write(&export, "id,grid,type,tags\nm1,g2,meter,floor=1\nm3,g2,meter,\n").unwrap();
    let (code, out) = devices_import(&config, &export, &[]);
    assert_eq!(code, Some(0), "{out}");
    for line in ["+ m3", "- m2", "~ m1: grid g1 → g2", "新增 1，删除 1，变更 1，不变 0", "仅预览"] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    assert_eq!(std::fs::read_to_string(&live).unwrap(), old, "a dry run writes nothing");

    let (code, out) = devices_import(&config, &export, &["--apply", "--lang", "en"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 added, 1 removed, 1 changed, 0 unchanged. Written to"), "{out}");
    assert_eq!(std::fs::read_to_string(&live).unwrap(), std::fs::read_to_string(&export).unwrap());

    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, "id,grid,type\nm1,g9,meter\nm2,g1,nope\n").unwrap();
    let (code, out) = devices_import(&config, &broken, &["--apply"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("g9") && out.contains("\"nope\""), "both mistakes are named:\n{out}");
    assert_eq!(
        std::fs::read_to_string(&live).unwrap(),
        std::fs::read_to_string(&export).unwrap(),
        "a refused list is not written"
    );
}
