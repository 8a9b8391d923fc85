//! Devices from CSV files (`device_files`): a park's thousands of meters as one spreadsheet export
//! instead of a TOML entry each.
//!
//! A header row names the columns, in any order: `id` and `grid` are required; `name`, `type` (a
//! `[[device_types]]` id), `category`, `modbus` (`connection/unit`), `dlt645` (`bus/address`, the
//! address may be empty for 13H discovery) and `tags` (`key=value;key=value`) are optional. An empty
//! cell means "not set". MQTT devices need no address: the subscription's topic names them by id.

use std::collections::BTreeMap;

use super::dlt645::DeviceDlt645;
use super::{Device, DeviceModbus};

/// A problem in a device file: where (`<file> line N column C`) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub at: String,
    pub message: String,
}

const COLUMNS: [&str; 8] = ["id", "name", "grid", "type", "category", "modbus", "dlt645", "tags"];

/// Reads the devices of one CSV text; `file` names it in problems. Every bad row and cell is
/// reported; the good rows are returned either way.
pub fn parse(text: &str, file: &str) -> (Vec<Device>, Vec<RowProblem>) {
    let mut problems = Vec::new();
    let mut devices = Vec::new();
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.trim_start_matches('\u{feff}').to_ascii_lowercase()).collect(),
        Err(e) => {
            problems.push(RowProblem { at: format!("{file} line 1"), message: format!("unreadable header: {e}") });
            return (devices, problems);
        }
    };
    for (i, h) in header.iter().enumerate() {
        if !COLUMNS.contains(&h.as_str()) {
            problems.push(RowProblem {
                at: format!("{file} line 1 column {}", i + 1),
                message: format!("unknown column {h:?}; expected some of {}", COLUMNS.join(", ")),
            });
        }
    }
    for required in ["id", "grid"] {
        if !header.iter().any(|h| h == required) {
            problems.push(RowProblem {
                at: format!("{file} line 1"),
                message: format!("no {required:?} column; expected a header row naming id and grid"),
            });
        }
    }
    if !problems.is_empty() {
        return (devices, problems);
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                problems.push(RowProblem { at: format!("{file} line {line}"), message: e.to_string() });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let cell = |name: &str| col(name).and_then(|i| record.get(i)).filter(|c| !c.is_empty());
        let mut bad = |name: &str, message: String| {
            let column = col(name).map_or(0, |i| i + 1);
            problems.push(RowProblem { at: format!("{file} line {line} column {column} ({name})"), message });
        };
        let modbus = cell("modbus").and_then(|m| match m.split_once('/') {
            Some((connection, unit)) if !connection.is_empty() => match unit.parse::<u8>() {
                Ok(unit) => Some(DeviceModbus {
                    connection: connection.to_owned(),
                    unit,
                    profile: String::new(),
                    interval_ms: super::default_poll_ms(),
                }),
                Err(_) => {
                    bad("modbus", format!("unit {unit:?} in {m:?}; expected 0-255 as connection/unit"));
                    None
                }
            },
            _ => {
                bad("modbus", format!("{m:?}; expected connection/unit, like rs485-a/12"));
                None
            }
        });
        let dlt645 = cell("dlt645").and_then(|m| {
            let (bus, address) = m.split_once('/').unwrap_or((m, ""));
            if bus.is_empty() {
                bad("dlt645", format!("{m:?}; expected bus/address, like rs485-b/000000000161"));
                return None;
            }
            Some(DeviceDlt645 {
                bus: bus.to_owned(),
                address: (!address.is_empty()).then(|| address.to_owned()),
                interval_ms: super::dlt645::default_interval(),
                points: Vec::new(),
                resolved_address: None,
                resolved: Vec::new(),
            })
        });
        let mut tags = BTreeMap::new();
        for pair in cell("tags").unwrap_or_default().split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    tags.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                _ => bad("tags", format!("{pair:?}; expected key=value pairs separated by ';'")),
            }
        }
        let (Some(id), Some(grid)) = (cell("id"), cell("grid")) else {
            bad(if cell("id").is_none() { "id" } else { "grid" }, "empty; expected a value".into());
            continue;
        };
        devices.push(Device {
            id: id.to_owned(),
            name: cell("name").map(str::to_owned),
            grid: grid.to_owned(),
            device_type: cell("type").map(str::to_owned),
            category: cell("category").unwrap_or_default().to_owned(),
            tags,
            points: Vec::new(),
            modbus,
            dlt645,
        });
    }
    (devices, problems)
}

/// How a device list differs from another, by device id (sorted).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Id and what changed (`grid g1 → g2`, …).
    pub changed: Vec<(String, Vec<String>)>,
    pub unchanged: usize,
}

/// What an operator compares of a device: each setting and its value.
fn settings(d: &Device) -> Vec<(&'static str, String)> {
    let or_dash = |s: Option<String>| s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into());
    vec![
        ("name", or_dash(d.name.clone())),
        ("grid", d.grid.clone()),
        ("type", or_dash(d.device_type.clone())),
        ("category", or_dash(Some(d.category.clone()))),
        ("modbus", or_dash(d.modbus.as_ref().map(|m| format!("{}/{} {}", m.connection, m.unit, m.profile)))),
        ("dlt645", or_dash(d.dlt645.as_ref().map(|m| format!("{}/{}", m.bus, m.address.clone().unwrap_or_default())))),
        ("tags", or_dash(Some(d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")))),
        ("points", d.points.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(",")),
    ]
}

/// Compares two expanded device lists (as validation leaves them).
pub fn diff(old: &[Device], new: &[Device]) -> Diff {
    let old: BTreeMap<&str, &Device> = old.iter().map(|d| (d.id.as_str(), d)).collect();
    let new: BTreeMap<&str, &Device> = new.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut out = Diff::default();
    for (id, n) in &new {
        match old.get(id) {
            None => out.added.push((*id).to_owned()),
            Some(o) => {
                let changes: Vec<String> = settings(o)
                    .into_iter()
                    .zip(settings(n))
                    .filter(|(a, b)| a.1 != b.1)
                    .map(|((key, a), (_, b))| format!("{key} {a} → {b}"))
                    .collect();
                if changes.is_empty() {
                    out.unchanged += 1;
                } else {
                    out.changed.push(((*id).to_owned(), changes));
                }
            }
        }
    }
    out.removed = old.keys().filter(|id| !new.contains_key(*id)).map(|id| (*id).to_owned()).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_reads_cleanly() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/devices.example.csv");
        let (devices, problems) = parse(&std::fs::read_to_string(path).unwrap(), "devices.example.csv");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(devices.len(), 4);
        assert_eq!(devices[0].name.as_deref(), Some("配电柜 N1, 3号楼"));
        assert_eq!(devices[2].dlt645.as_ref().and_then(|m| m.address.as_deref()), Some("000000000161"));
    }

    #[test]
    fn a_diff_names_added_removed_and_changed_devices() {
        let (old, _) = parse(
            "id,grid,type,tags
a,g1,t1,
b,g1,t1,floor=2
c,g2,t1,
",
            "old.csv",
        );
        let (new, _) = parse(
            "id,grid,type,tags
a,g1,t1,
b,g2,t1,floor=3
d,g2,t2,
",
            "new.csv",
        );
        let d = diff(&old, &new);
        assert_eq!(d.added, ["d"]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!(d.changed, [("b".to_owned(), vec!["grid g1 → g2".to_owned(), "tags floor=2 → floor=3".to_owned()])]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn rows_become_devices_and_bad_cells_are_named() {
        let text = "\u{feff}id,grid,type,modbus,dlt645,tags,name\n\
                    m-0001,g1,sdm630,rs485-a/1,,floor=3;tenant=ACME,\"Board 1, west\"\n\
                    m-0002,g2,sdm630,,rs485-b/000000000161,,\n\
                    m-0003,g2,dtsu666,,rs485-b/,,\n\
                    m-0004,g1,sdm630,rs485-a/300,,oops,\n\
                    ,g1,sdm630,,,,\n";
        let (devices, problems) = parse(text, "devices.csv");
        let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["m-0001", "m-0002", "m-0003", "m-0004"]);
        let d = &devices[0];
        assert_eq!(
            (d.grid.as_str(), d.device_type.as_deref(), d.name.as_deref()),
            ("g1", Some("sdm630"), Some("Board 1, west"))
        );
        assert_eq!(d.modbus.as_ref().map(|m| (m.connection.as_str(), m.unit)), Some(("rs485-a", 1)));
        assert_eq!(d.tags.get("tenant").map(String::as_str), Some("ACME"));
        let m = devices[1].dlt645.as_ref().unwrap();
        assert_eq!((m.bus.as_str(), m.address.as_deref()), ("rs485-b", Some("000000000161")));
        assert_eq!(devices[2].dlt645.as_ref().unwrap().address, None, "an empty address: discovery");
        let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "devices.csv line 5 column 4 (modbus)",
                "devices.csv line 5 column 6 (tags)",
                "devices.csv line 6 column 1 (id)"
            ]
        );
    }

    #[test]
    fn a_header_without_id_or_with_an_unknown_column_is_refused() {
        let (devices, problems) = parse("grid,address\ng1,x\n", "d.csv");
        assert!(devices.is_empty());
        let messages: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.at, p.message)).collect();
        assert!(
            messages.iter().any(|m| m.starts_with("d.csv line 1 column 2: unknown column \"address\"")),
            "{messages:?}"
        );
        assert!(messages.iter().any(|m| m.contains("no \"id\" column")), "{messages:?}");
    }

    #[test]
    fn a_row_of_the_wrong_width_is_named_by_its_line() {
        let (devices, problems) = parse("id,grid\na,g1\nb,g1,extra\nc,g1\n", "d.csv");
        assert_eq!(devices.len(), 2);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].at.starts_with("d.csv line 3"), "{problems:?}");
    }
}
