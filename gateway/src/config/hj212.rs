//! `[hj212]`: the TCP listeners HJ 212-2017 data loggers (数采仪) connect to, and the loggers known by
//! their MN, with password, CRC variant, device and pollutant-code mapping.
//!
//! A logger's values land on the points of its `[[devices]]` entry (which gives its grid; the site is
//! the gateway's). Real-time values (`Rtd`, CN 2011) go to the point a code maps to (`w01018` → `cod`);
//! the statistics of minute (2051), hourly (2061) and daily (2031) data go to points of their own,
//! `<point>_<1m|1h|1d>_<avg|min|max|cou>`, which validation adds to the device for every mapped point
//! it declares, so an hourly average never lands between real-time readings of the same point.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::validate::{read_secret, Problem};
use super::Config;

/// The protocol's own bound on the data segment, bytes (the length field counts 0–1024).
pub const MAX_DATA_LEN: usize = 1024;

/// Which CRC a logger computes over the data segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrcVariant {
    /// The standard's appendix: `reg = (reg >> 8) ^ byte`, then eight shifts with 0xA001.
    #[default]
    Standard,
    /// Plain Modbus CRC16 (`reg ^= byte`), used by some field devices.
    Modbus,
}

/// HJ 212 listeners and loggers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hj212 {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub loggers: Vec<Logger>,
}

/// One TCP port loggers connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub id: String,
    /// Address and port to listen on, e.g. `0.0.0.0:6000`.
    pub listen: std::net::SocketAddr,
    /// Largest data segment accepted, bytes (the standard's is 1024; at most 9999, four digits).
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Frames a connection may send per second; more are refused (`rate_limited`) and counted.
    #[serde(default = "default_frames_per_sec")]
    pub max_frames_per_sec: u32,
    /// A connection that sends nothing for this many seconds is closed.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Connections open at once; more are closed as they come.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_frame() -> usize {
    MAX_DATA_LEN
}
fn default_frames_per_sec() -> u32 {
    20
}
fn default_idle() -> u64 {
    600
}
fn default_max_connections() -> usize {
    4096
}

/// A data logger, known by its MN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// The logger's MN (设备唯一标识), as it sends it.
    pub mn: String,
    /// The PW it sends; `${VAR}` is taken from the environment. Prefer `pw_file`.
    pub pw: Option<String>,
    /// A file holding the PW (trailing newline ignored).
    pub pw_file: Option<PathBuf>,
    /// The CRC the logger computes: `standard` (the standard's appendix) or `modbus`.
    #[serde(default)]
    pub crc: CrcVariant,
    /// Id of the `[[devices]]` entry its values go to (the device gives the grid).
    pub device: String,
    /// Only accepted on this listener; any listener when absent.
    pub listener: Option<String>,
    /// Pollutant code → point name, over the defaults (`w01018` → `cod`, `011` → `cod`, …).
    #[serde(default)]
    pub points: BTreeMap<String, String>,
    /// Forward this logger's raw frames unchanged to an upstream platform.
    pub relay: Option<Relay>,
}

/// An upstream platform a logger's frames are relayed to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// `host:port` of the platform.
    pub address: String,
    /// Frames held while the platform is unreachable; beyond that the oldest are dropped (counted).
    #[serde(default = "default_relay_queue")]
    pub queue_frames: usize,
}

fn default_relay_queue() -> usize {
    10_000
}

/// Pollutant codes (2017 and 2005 editions) and the point each maps to by default, from
/// `../shared/domain/protocols.md`; the point names are those the default rule packs watch.
pub const DEFAULT_CODES: &[(&str, &str)] = &[
    ("a34004", "pm25"),
    ("a34002", "pm10"),
    ("a34001", "tsp"),
    ("a21026", "so2"),
    ("02", "so2"),
    ("a21004", "no2"),
    ("a21002", "nox"),
    ("03", "nox"),
    ("a21005", "co"),
    ("04", "co"),
    ("a24088", "nmhc"),
    ("a01001", "temperature"),
    ("a01002", "humidity"),
    ("a01006", "pressure"),
    ("a01007", "wind_speed"),
    ("a01008", "wind_direction"),
    ("a19001", "o2"),
    ("S01", "o2"),
    ("a34013", "smoke"),
    ("01", "smoke"),
    ("a00000", "flue_flow"),
    ("B02", "flue_flow"),
    ("w01018", "cod"),
    ("011", "cod"),
    ("w21003", "nh3n"),
    ("060", "nh3n"),
    ("w01001", "ph"),
    ("001", "ph"),
    ("w01012", "ss"),
    ("003", "ss"),
    ("w01017", "bod5"),
    ("010", "bod5"),
    ("w21011", "tp"),
    ("101", "tp"),
    ("w21001", "tn"),
    ("065", "tn"),
    ("w00000", "flow"),
    ("B01", "flow"),
    ("LA", "noise"),
    ("Leq", "leq"),
    ("L10", "l10"),
    ("L50", "l50"),
    ("L90", "l90"),
];

/// The statistics periods: CN and the tag in point names.
pub const PERIODS: [(&str, &str); 3] = [("2051", "1m"), ("2061", "1h"), ("2031", "1d")];

/// The statistics suffixes and the tag in point names.
pub const STATS: [(&str, &str); 8] = [
    ("Avg", "avg"),
    ("Min", "min"),
    ("Max", "max"),
    ("Cou", "cou"),
    ("ZsAvg", "zsavg"),
    ("ZsMin", "zsmin"),
    ("ZsMax", "zsmax"),
    ("ZsCou", "zscou"),
];

/// The point a value of `base` goes to, by CN and suffix: `Rtd` of real-time data → `base`, `ZsRtd`
/// → `base_zs`, statistics of minute/hourly/daily data → `base_1m_avg` etc.; `None` for the other
/// combinations (a flag, a sample time, an `Avg` in real-time data).
pub fn point_name(base: &str, cn: &str, suffix: &str) -> Option<String> {
    match (cn, suffix) {
        ("2011", "Rtd") => Some(base.to_owned()),
        ("2011", "ZsRtd") => Some(format!("{base}_zs")),
        ("2021", "RS") => Some(format!("{base}_rs")),
        ("2041", "RT") => Some(format!("{base}_rt")),
        _ => {
            let period = PERIODS.iter().find(|(c, _)| *c == cn)?.1;
            let stat = STATS.iter().find(|(s, _)| *s == suffix)?.1;
            Some(format!("{base}_{period}_{stat}"))
        }
    }
}

impl Logger {
    /// The point a pollutant code maps to: the logger's own mapping, then the defaults.
    pub fn point_of(&self, code: &str) -> Option<&str> {
        self.points
            .get(code)
            .map(String::as_str)
            .or_else(|| DEFAULT_CODES.iter().find(|(c, _)| *c == code).map(|(_, p)| *p))
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= 64
        && s.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Checks `[hj212]` against the devices, reads `pw_file`s, and adds the statistics points of every
/// mapped point a logger's device declares; every problem with its key path.
pub(super) fn validate(config: &mut Config, base: &Path) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut push = |path: String, message: String| p.push(Problem { path, message });
    let mut ids = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in config.hj212.listeners.iter().enumerate() {
        let at = format!("hj212.listeners[{i}]");
        if !is_identifier(&l.id) {
            push(
                format!("{at}.id"),
                format!("{:?} is not a valid id; expected 1-64 letters, digits, '-', '_' or '.'", l.id),
            );
        } else if !ids.insert(l.id.clone()) {
            push(format!("{at}.id"), format!("duplicate listener id {:?}; expected each listener once", l.id));
        }
        if !addrs.insert(l.listen) || l.listen == config.api.listen {
            push(format!("{at}.listen"), format!("{} is already used; expected an address of its own", l.listen));
        }
        if !(1..=9999).contains(&l.max_frame_bytes) {
            push(
                format!("{at}.max_frame_bytes"),
                format!("{}; expected 1 to 9999 (four digits of length)", l.max_frame_bytes),
            );
        }
        if l.max_frames_per_sec == 0 {
            push(format!("{at}.max_frames_per_sec"), "0; expected at least 1".into());
        }
        if l.idle_timeout_secs == 0 {
            push(format!("{at}.idle_timeout_secs"), "0; expected at least 1 second".into());
        }
        if l.max_connections == 0 {
            push(format!("{at}.max_connections"), "0; expected at least 1".into());
        }
    }
    if !config.hj212.loggers.is_empty() && config.hj212.listeners.is_empty() {
        push(
            "hj212.listeners".into(),
            "loggers are configured but no listener; expected at least one [[hj212.listeners]]".into(),
        );
    }
    let listener_ids: Vec<String> = config.hj212.listeners.iter().map(|l| l.id.clone()).collect();
    let mut mns = HashSet::new();
    for (i, lg) in config.hj212.loggers.iter_mut().enumerate() {
        let at = format!("hj212.loggers[{i}]");
        if lg.mn.is_empty()
            || lg.mn.len() > 64
            || lg.mn.contains([';', '=', '&', ','])
            || lg.mn.contains(char::is_whitespace)
        {
            push(
                format!("{at}.mn"),
                format!("{:?} is not an MN; expected 1-64 characters without ';', '=', '&', ',' or spaces", lg.mn),
            );
        } else if !mns.insert(lg.mn.clone()) {
            push(format!("{at}.mn"), format!("duplicate MN {:?}; expected each logger once", lg.mn));
        }
        if let Some(pw) = lg.pw.as_mut() {
            match super::expand_env(pw) {
                Ok(v) => *pw = v,
                Err(e) => push(format!("{at}.pw"), e),
            }
        }
        if let Some(file) = &lg.pw_file {
            if lg.pw.is_some() {
                push(format!("{at}.pw_file"), "both pw and pw_file are set; expected one of them".into());
            }
            match read_secret(file, base) {
                Ok(s) => lg.pw = Some(s),
                Err(e) => push(format!("{at}.pw_file"), e),
            }
        }
        match &lg.pw {
            None => push(format!("{at}.pw"), "missing; expected the logger's PW (pw or pw_file)".into()),
            Some(pw) if pw.is_empty() || pw.contains([';', '&']) => {
                push(format!("{at}.pw"), "expected a non-empty PW without ';' or '&'".into());
            }
            Some(_) => {}
        }
        if let Some(l) = &lg.listener {
            if !listener_ids.contains(l) {
                push(
                    format!("{at}.listener"),
                    format!("listener {l:?} is not defined; expected one of: {}", listener_ids.join(", ")),
                );
            }
        }
        for (code, point) in &lg.points {
            if code.is_empty() || code.contains(['-', '=', ';', ',', '&']) {
                push(
                    format!("{at}.points.{code}"),
                    format!("{code:?} is not a pollutant code; expected e.g. \"w01018\""),
                );
            }
            if !is_identifier(point) {
                push(
                    format!("{at}.points.{code}"),
                    format!("{point:?} is not a valid point name; expected 1-64 letters, digits, '-', '_' or '.'"),
                );
            }
        }
        if let Some(r) = &lg.relay {
            if r.address.rsplit_once(':').is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err()) {
                push(
                    format!("{at}.relay.address"),
                    format!("{:?}; expected host:port of the upstream platform", r.address),
                );
            }
            if r.queue_frames == 0 {
                push(format!("{at}.relay.queue_frames"), "0; expected at least 1 frame".into());
            }
        }
        let Some(d) = config.devices.iter_mut().find(|d| d.id == lg.device) else {
            push(
                format!("{at}.device"),
                format!("device {:?} is not defined; expected the id of a [[devices]] entry", lg.device),
            );
            continue;
        };
        // Every mapped point the device declares gets its statistics points.
        let mapped: Vec<String> = DEFAULT_CODES
            .iter()
            .map(|(c, _)| *c)
            .chain(lg.points.keys().map(String::as_str))
            .filter_map(|c| lg.point_of(c))
            .map(str::to_owned)
            .collect();
        for base_point in mapped {
            let Some(unit) = d.points.iter().find(|x| x.name == base_point).map(|x| x.unit.clone()) else { continue };
            for (_, period) in PERIODS {
                for (suffix, stat) in STATS.iter().take(4) {
                    let name = format!("{base_point}_{period}_{stat}");
                    if d.points.iter().any(|x| x.name == name) {
                        continue;
                    }
                    d.points.push(super::Point {
                        name,
                        // A cumulative value's unit is the amount's, not the concentration's.
                        unit: if *suffix == "Cou" { String::new() } else { unit.clone() },
                        kind: super::PointKind::Float,
                        unwatched: Some(format!(
                            "HJ 212 statistics of {base_point}; the rules judge the real-time point"
                        )),
                        event: None,
                    });
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::from_str;

    const BASE: &str = r#"
[site]
id = "p"
[[grids]]
id = "g1"
[[devices]]
id = "outfall"
grid = "g1"
category = "emission"
points = [{ name = "cod", unit = "mg/L" }, { name = "ph" }]
"#;

    #[test]
    fn loggers_map_to_devices_and_get_statistics_points() {
        let text = format!(
            "{BASE}[[hj212.listeners]]\nid = \"l\"\nlisten = \"127.0.0.1:6000\"\n[[hj212.loggers]]\nmn = \"MN1\"\npw = \"123456\"\ncrc = \"modbus\"\ndevice = \"outfall\"\npoints = {{ x99 = \"ph\" }}\n"
        );
        let c = from_str(&text, "s.toml".as_ref(), ".".as_ref()).unwrap();
        let lg = &c.hj212.loggers[0];
        assert_eq!(lg.crc, super::CrcVariant::Modbus);
        assert_eq!(
            (lg.point_of("w01018"), lg.point_of("011"), lg.point_of("x99"), lg.point_of("zz")),
            (Some("cod"), Some("cod"), Some("ph"), None)
        );
        let names: Vec<&str> = c.devices[0].points.iter().map(|p| p.name.as_str()).collect();
        for n in ["cod", "cod_1m_avg", "cod_1h_max", "cod_1d_cou", "ph_1h_avg"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let avg = c.devices[0].points.iter().find(|p| p.name == "cod_1h_avg").unwrap();
        assert_eq!(avg.unit, "mg/L");
        assert!(avg.unwatched.is_some());
        assert_eq!(c.hj212.listeners[0].max_frame_bytes, 1024);
        assert_eq!(super::point_name("cod", "2061", "Avg").as_deref(), Some("cod_1h_avg"));
        assert_eq!(super::point_name("cod", "2011", "Rtd").as_deref(), Some("cod"));
        assert_eq!(super::point_name("cod", "2011", "Avg"), None);
    }

    #[test]
    fn problems_name_the_file_the_key_and_what_was_expected() {
        let text = format!(
            "{BASE}[[hj212.listeners]]\nid = \"l\"\nlisten = \"127.0.0.1:6000\"\nmax_frame_bytes = 20000\nmax_frames_per_sec = 0\n[[hj212.loggers]]\nmn = \"A;B\"\npw = \"1\"\ndevice = \"nope\"\nlistener = \"x\"\n[[hj212.loggers]]\nmn = \"M2\"\ndevice = \"outfall\"\nrelay = {{ address = \"nohost\" }}\n"
        );
        let err = from_str(&text, "site.toml".as_ref(), ".".as_ref()).unwrap_err();
        assert!(err.to_string().contains("site.toml"), "{err}");
        let keys: Vec<String> = err.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "hj212.listeners[0].max_frame_bytes",
                "hj212.listeners[0].max_frames_per_sec",
                "hj212.loggers[0].mn",
                "hj212.loggers[0].listener",
                "hj212.loggers[0].device",
                "hj212.loggers[1].pw",
                "hj212.loggers[1].relay.address",
            ]
        );
        assert!(err.problems().iter().all(|(_, m)| m.contains("expected")), "{:?}", err.problems());
    }
}
