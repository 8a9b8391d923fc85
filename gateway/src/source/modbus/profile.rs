//! Device profiles: reusable register maps (`configs/profiles/*.toml`, built into the binary, plus
//! the config's `modbus.profile_dirs`), each naming where its map comes from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::decode::{DataType, Order};
use super::plan::Table;
use crate::config::PointKind;

/// The shipped profiles.
pub const BUILTIN: [(&str, &str); 8] = [
    ("eastron-sdm630", include_str!("../../../../configs/profiles/eastron-sdm630.toml")),
    ("acrel-adw300", include_str!("../../../../configs/profiles/acrel-adw300.toml")),
    ("chint-dtsu666", include_str!("../../../../configs/profiles/chint-dtsu666.toml")),
    ("fire-detector", include_str!("../../../../configs/profiles/fire-detector.toml")),
    ("noise-transmitter", include_str!("../../../../configs/profiles/noise-transmitter.toml")),
    ("pm-transmitter", include_str!("../../../../configs/profiles/pm-transmitter.toml")),
    ("access-controller", include_str!("../../../../configs/profiles/access-controller.toml")),
    ("breaker", include_str!("../../../../configs/profiles/breaker.toml")),
];

/// A register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// Where the map comes from (manual, document, version).
    pub source: String,
    /// Unused registers one read may bridge to save a request.
    #[serde(default = "default_gap")]
    pub max_gap: u16,
    /// Ranges the device refuses to be read: `{ table, first, last }`.
    #[serde(default)]
    pub forbidden: Vec<Forbidden>,
    pub points: Vec<ProfilePoint>,
}

fn default_gap() -> u16 {
    8
}

/// Registers a read must not touch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forbidden {
    pub table: Table,
    pub first: u16,
    pub last: u16,
}

/// One value in the map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePoint {
    pub name: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub kind: PointKind,
    pub table: Table,
    pub address: u16,
    #[serde(rename = "type")]
    pub ty: DataType,
    #[serde(default)]
    pub order: Order,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// For `bit`: which bit of the register (0 = least significant).
    #[serde(default)]
    pub bit: u8,
    /// For `string`: registers.
    #[serde(default)]
    pub length: u16,
    /// A bit that becomes an event of this kind when it rises (a detector's own alarm, an arc fault).
    pub event: Option<String>,
    /// Only writable points can be written (linkage actions).
    #[serde(default)]
    pub writable: bool,
    /// Why no shipped rule watches this point (no safety meaning, or another point carries it).
    #[serde(default)]
    pub unwatched: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl ProfilePoint {
    /// Registers (or bits) the point spans.
    pub fn count(&self) -> u16 {
        match self.table {
            Table::Coil | Table::Discrete => 1,
            _ => self.ty.words(self.length),
        }
    }
}

/// Parses one profile and checks it; problems are listed as `(key path, message)`.
pub fn parse(text: &str) -> Result<Profile, Vec<(String, String)>> {
    let p: Profile = toml::from_str(text).map_err(|e| vec![(String::new(), e.message().to_owned())])?;
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, pt) in p.points.iter().enumerate() {
        let at = format!("points[{i}]");
        if !names.insert(pt.name.as_str()) {
            problems.push((format!("{at}.name"), format!("duplicate point \"{}\"", pt.name)));
        }
        if pt.ty == DataType::Bit && pt.bit > 15 {
            problems.push((format!("{at}.bit"), format!("{}; expected 0 to 15", pt.bit)));
        }
        if matches!(pt.table, Table::Coil | Table::Discrete) && pt.ty != DataType::Bit {
            problems.push((format!("{at}.type"), "coils and discrete inputs are type \"bit\"".into()));
        }
        if pt.ty == DataType::String && pt.length == 0 {
            problems.push((format!("{at}.length"), "a string needs its length in registers".into()));
        }
        if u32::from(pt.address) + u32::from(pt.count()) > 65536 {
            problems.push((format!("{at}.address"), "runs past register 65535".into()));
        }
        if !pt.scale.is_finite() || pt.scale == 0.0 {
            problems.push((format!("{at}.scale"), "expected a finite, non-zero number".into()));
        }
    }
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(problems)
    }
}

/// Every profile by id (file stem): the built-in ones, then those in `dirs` (which may replace them).
pub fn load_all(dirs: &[PathBuf]) -> Result<BTreeMap<String, Profile>, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, text) in BUILTIN {
        match parse(text) {
            Ok(p) => {
                out.insert(id.to_owned(), p);
            }
            Err(e) => problems.extend(e.into_iter().map(|(k, m)| (format!("builtin profile {id}: {k}"), m))),
        }
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            problems.push((dir.display().to_string(), "cannot read the directory".into()));
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let id = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            match std::fs::read_to_string(&f).map_err(|e| vec![(String::new(), e.to_string())]).and_then(|t| parse(&t))
            {
                Ok(p) => {
                    out.insert(id, p);
                }
                Err(e) => problems.extend(e.into_iter().map(|(k, m)| (format!("{}: {k}", f.display()), m))),
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The profile file for an id in the shipped `configs/profiles/` directory (for docs and tests).
pub fn shipped_path(root: &Path, id: &str) -> PathBuf {
    root.join("configs/profiles").join(format!("{id}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::modbus::plan::{plan, Span};

    #[test]
    fn shipped_profiles_parse_and_name_their_source() {
        let all = load_all(&[]).unwrap();
        assert_eq!(all.len(), BUILTIN.len());
        for (id, p) in &all {
            assert!(p.source.len() > 20, "{id} names where its map comes from");
        }
        let adw = &all["acrel-adw300"];
        let ua = adw.points.iter().find(|p| p.name == "ua").unwrap();
        assert_eq!((ua.table, ua.address, ua.scale), (Table::Holding, 20, 0.1));
        let e = adw.points.iter().find(|p| p.name == "energy").unwrap();
        assert_eq!((e.address, e.ty, e.scale), (62, DataType::I32, 0.01));
    }

    #[test]
    fn sdm630_cycle_is_three_requests() {
        let p = &load_all(&[]).unwrap()["eastron-sdm630"];
        let spans: Vec<Span> =
            p.points.iter().map(|pt| Span { table: pt.table, address: pt.address, count: pt.count() }).collect();
        assert_eq!(plan(&spans, p.max_gap, &[]).len(), 3);
    }

    #[test]
    fn bad_profiles_are_refused_with_the_key() {
        let e = parse(
            "name = \"x\"\nsource = \"y\"\n[[points]]\nname = \"a\"\ntable = \"coil\"\naddress = 1\ntype = \"f32\"\n",
        )
        .unwrap_err();
        assert_eq!(e[0].0, "points[0].type");
    }
}
