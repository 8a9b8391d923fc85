//! The rooms of the gateway crate (ARCHITECTURE.md) import only what they are allowed to. Each room's
//! allowance is written here once; a new cross-room import fails this test, and the reaches still to
//! be removed are listed as debts so they can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use parkwatch_e2e::root;

/// Room → the rooms it may import (besides itself and `model`, which everybody may use).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("model", &["config"][..]),
        ("config", &[][..]),
        ("metrics", &[][..]),
        ("source", &["config", "metrics"][..]),
        // The live patrol tracker raises its incidents through the engine.
        ("core", &["config", "metrics", "people"][..]),
        ("people", &["config"][..]),
        ("incident", &[][..]),
        ("audit", &[][..]),
        // The audit log that every login, action and user or token change is recorded in.
        ("auth", &["audit"][..]),
        // The change log and the audit log it reads; the core's handle to raise `system` incidents.
        ("forward", &["config", "incident", "audit", "core"][..]),
        // The change log it reads by cursor.
        ("notify", &["config", "incident", "people"][..]),
        // Its `[history]` settings; samples come in through the core's tap, wired by `app`.
        ("history", &["config"][..]),
        // Commands go out through the Modbus source; interlocks read the core's latest values; every
        // outcome is audited; roles decide who may ask; rules act through the incident change log.
        ("actions", &["config", "source", "core", "audit", "auth", "incident"][..]),
        // Reports read the history's rollups and the incidents through their read sides.
        ("report", &["config", "history", "incident"][..]),
        ("broker", &["config"][..]),
        ("sim", &["source", "config"][..]),
        ("rulestest", &["config", "core"][..]),
        // A reload builds the next registry from the file and hands it, with its rules, to the core.
        ("reload", &["config", "core"][..]),
        // The API shows every room; only `app` wires them together.
        (
            "api",
            &[
                "actions", "audit", "auth", "config", "core", "forward", "history", "incident", "metrics", "notify",
                "people", "reload", "report", "source",
            ][..],
        ),
        (
            "app",
            &[
                "actions", "api", "audit", "auth", "broker", "config", "core", "forward", "history", "incident",
                "metrics", "notify", "people", "reload", "report", "sim", "source",
            ][..],
        ),
    ])
}

/// Reaches that exist today and are to be removed (a room's file and what it imports).
const DEBTS: &[(&str, &str)] = &[
    // Validation parses topic patterns and loads Modbus profiles: to become a config resolution step.
    ("config", "source"),
    // The core hands incident changes to the store's handle directly rather than through a channel
    // wired by `app`.
    ("core", "incident"),
];

fn room_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn rooms_import_only_what_they_may() {
    let src = root().join("gateway/src");
    let allowed = allowed();
    let debts: BTreeSet<(&str, &str)> = DEBTS.iter().copied().collect();
    let mut found: BTreeSet<(String, String)> = BTreeSet::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in files {
        let room = room_of(&f, &src);
        if room == "lib" || room == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Tests may reach wherever they need to: the part of a file after `#[cfg(test)]`, and test
        // modules of their own (`tests.rs`, `tests/`), which are declared under `#[cfg(test)]`.
        let test_file = f.file_name().is_some_and(|n| n == "tests.rs")
            || f.strip_prefix(&src).unwrap().components().any(|c| c.as_os_str() == "tests");
        let code = if test_file { "" } else { text.split("#[cfg(test)]").next().unwrap_or_default() };
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let target: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if target.is_empty() || target == room || target == "model" {
                continue;
            }
            found.insert((room.clone(), target.clone()));
            let ok = allowed.get(room.as_str()).is_some_and(|a| a.contains(&target.as_str()))
                || debts.contains(&(room.as_str(), target.as_str()));
            if !ok {
                problems.push(format!("{}: room `{room}` imports `{target}`", f.strip_prefix(&src).unwrap().display()));
            }
        }
        assert!(allowed.contains_key(room.as_str()), "room `{room}` ({}) has no allowance in this test", f.display());
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "forbidden imports:\n{}", problems.join("\n"));
    for (room, target) in DEBTS {
        assert!(
            found.contains(&(room.to_string(), target.to_string())),
            "`{room}` no longer imports `{target}`: remove the debt from this test"
        );
    }
}
