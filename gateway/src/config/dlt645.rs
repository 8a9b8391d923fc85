//! `[dlt645]`: RS-485 buses of DL/T 645-2007 meters, reached over a serial port or through a serial
//! server in transparent mode over TCP, and `[devices.dlt645]`: which meter, which identifiers.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::validate::Problem;
use super::{Config, Parity};
use crate::source::dlt645::codec::{self, Address, Di, Format};

/// DL/T 645 buses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dlt645 {
    #[serde(default)]
    pub buses: Vec<Bus>,
}

/// How the gateway reaches a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// A serial port (RS-485 adapter), the same stack as Modbus RTU.
    Serial,
    /// A serial server in transparent mode: the bus's bytes over a TCP connection.
    Tcp,
}

/// One RS-485 bus, shared by its meters one transaction at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bus {
    pub id: String,
    pub kind: BusKind,
    /// For `tcp`: the serial server.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// For `serial`: the device, e.g. /dev/ttyUSB1.
    pub path: Option<PathBuf>,
    /// Bits per second; set it as the meters' communication settings say.
    #[serde(default = "super::default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "super::default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "super::default_stop_bits")]
    pub stop_bits: u8,
    /// Wait for an answer, ms.
    #[serde(default = "super::default_modbus_timeout")]
    pub timeout_ms: u64,
    /// Quiet time between transactions on the line, ms.
    #[serde(default)]
    pub gap_ms: u64,
    /// FE wake-up bytes sent before each request (0–4).
    #[serde(default = "default_preamble")]
    pub preamble: u8,
    /// Cycles without a valid answer before a meter is reported offline.
    #[serde(default = "super::default_offline_after")]
    pub offline_after: u32,
    /// Longest wait between attempts at a meter that does not answer, ms.
    #[serde(default = "super::default_backoff_max")]
    pub backoff_max_ms: u64,
}

fn default_preamble() -> u8 {
    codec::MAX_PREAMBLE as u8
}
pub(super) fn default_interval() -> u64 {
    5000
}

/// How a device is read over DL/T 645.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDlt645 {
    /// Id of a `[[dlt645.buses]]`.
    pub bus: String,
    /// The meter's address as printed on it (12 digits). Without it the address is read with 13H,
    /// which works only when this meter is alone on its line.
    pub address: Option<String>,
    /// Read interval, ms.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Identifiers to read; empty reads every identifier the gateway knows (energy, phase voltages
    /// and currents, active power, power factor).
    #[serde(default)]
    pub points: Vec<Dlt645Point>,
    /// The parsed address (`None`: discover), set by validation.
    #[serde(skip)]
    pub resolved_address: Option<Address>,
    /// The parsed points, set by validation.
    #[serde(skip)]
    pub resolved: Vec<ResolvedPoint>,
}

/// One identifier of a meter and the point it becomes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dlt645Point {
    /// Data identifier, most significant byte first: `"02 01 01 00"`.
    pub di: String,
    /// Point name; default the known identifier's (`ua`, `energy`…).
    pub name: Option<String>,
    /// Unit after `scale`; default the known identifier's.
    pub unit: Option<String>,
    /// BCD bytes of the value; required for an identifier the gateway does not know.
    pub bytes: Option<u8>,
    /// Decimal places; required for an identifier the gateway does not know.
    pub decimals: Option<u8>,
    /// The top bit of the most significant byte is a sign.
    pub signed: Option<bool>,
    /// Factor applied to the meter's value (1000 turns kW into W); default the known identifier's, or 1.
    pub scale: Option<f64>,
    /// Why no alarm rule watches this point.
    pub unwatched: Option<String>,
}

/// A point ready for the poller.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPoint {
    pub di: Di,
    pub name: String,
    pub format: Format,
    pub scale: f64,
}

/// Checks `[dlt645]` and every `devices[].dlt645`, fills in the points' defaults and adds them to the
/// devices' points.
pub(super) fn validate(config: &mut Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut push = |path: String, message: String| p.push(Problem { path, message });
    let mut ids = HashSet::new();
    for (i, b) in config.dlt645.buses.iter().enumerate() {
        let at = format!("dlt645.buses[{i}]");
        if !ids.insert(b.id.clone()) {
            push(format!("{at}.id"), format!("duplicate bus id \"{}\"", b.id));
        }
        match b.kind {
            BusKind::Tcp => {
                if b.host.as_deref().is_none_or(str::is_empty) {
                    push(format!("{at}.host"), "missing; expected the serial server's host name or address".into());
                }
                if b.port.is_none() {
                    push(format!("{at}.port"), "missing; expected the serial server's TCP port".into());
                }
            }
            BusKind::Serial => {
                if b.path.is_none() {
                    push(format!("{at}.path"), "missing; expected the serial device, like /dev/ttyUSB1".into());
                }
                if !matches!(b.data_bits, 5..=8) {
                    push(format!("{at}.data_bits"), format!("{}; expected 5 to 8", b.data_bits));
                }
                if !matches!(b.stop_bits, 1 | 2) {
                    push(format!("{at}.stop_bits"), format!("{}; expected 1 or 2", b.stop_bits));
                }
                if b.baud == 0 {
                    push(format!("{at}.baud"), "0; expected the bus's bits per second".into());
                }
            }
        }
        if b.timeout_ms == 0 {
            push(format!("{at}.timeout_ms"), "0; expected at least 1".into());
        }
        if usize::from(b.preamble) > codec::MAX_PREAMBLE {
            push(format!("{at}.preamble"), format!("{}; expected 0 to {}", b.preamble, codec::MAX_PREAMBLE));
        }
        if b.offline_after == 0 {
            push(format!("{at}.offline_after"), "0; expected at least 1 cycle".into());
        }
    }
    let buses: Vec<&str> = config.dlt645.buses.iter().map(|b| b.id.as_str()).collect();
    // Meters per bus, and the devices that ask for discovery: 13H needs a meter alone on its line.
    let mut per_bus: std::collections::HashMap<String, (usize, Vec<usize>)> = std::collections::HashMap::new();
    let mut addresses: HashSet<(String, Address)> = HashSet::new();
    for (i, d) in config.devices.iter_mut().enumerate() {
        let Some(m) = &mut d.dlt645 else { continue };
        let at = format!("devices[{i}].dlt645");
        if d.modbus.is_some() {
            push(format!("devices[{i}]"), "both modbus and dlt645; expected one way to read a device".into());
        }
        if !buses.contains(&m.bus.as_str()) {
            push(format!("{at}.bus"), format!("bus \"{}\" is not defined (known: {})", m.bus, known_list(&buses)));
        }
        let entry = per_bus.entry(m.bus.clone()).or_default();
        entry.0 += 1;
        match m.address.as_deref().map(Address::parse) {
            None => entry.1.push(i),
            Some(Err(e)) => push(format!("{at}.address"), e),
            Some(Ok(a)) if a == Address::BROADCAST || a.0.contains(&0xAA) => push(
                format!("{at}.address"),
                format!("{a} is a broadcast or wildcard address; expected the meter's own address"),
            ),
            Some(Ok(a)) => {
                if !addresses.insert((m.bus.clone(), a)) {
                    push(format!("{at}.address"), format!("address {a} is used twice on bus \"{}\"", m.bus));
                }
                m.resolved_address = Some(a);
            }
        }
        if m.interval_ms < 100 {
            push(format!("{at}.interval_ms"), format!("{}; expected at least 100", m.interval_ms));
        }
        let mut resolved = Vec::new();
        if m.points.is_empty() {
            resolved.extend(codec::KNOWN.iter().map(|k| {
                (
                    ResolvedPoint { di: k.di, name: k.point.into(), format: k.format, scale: k.scale },
                    k.unit.to_owned(),
                    k.unwatched.map(str::to_owned),
                )
            }));
        }
        for (j, pt) in m.points.iter().enumerate() {
            let at = format!("{at}.points[{j}]");
            let di = match Di::parse(&pt.di) {
                Ok(di) => di,
                Err(e) => {
                    push(format!("{at}.di"), e);
                    continue;
                }
            };
            let k = codec::known(di);
            let Some(name) = pt.name.clone().or_else(|| k.map(|k| k.point.to_owned())) else {
                push(format!("{at}.name"), format!("missing; {di} is not a known identifier, expected a point name"));
                continue;
            };
            let bytes = pt.bytes.or(k.map(|k| k.format.bytes));
            let decimals = pt.decimals.or(k.map(|k| k.format.decimals));
            let (Some(bytes), Some(decimals)) = (bytes, decimals) else {
                push(
                    format!("{at}.bytes"),
                    format!("{di} is not a known identifier; expected its format: bytes and decimals"),
                );
                continue;
            };
            if !(1..=8).contains(&bytes) {
                push(format!("{at}.bytes"), format!("{bytes}; expected 1 to 8 BCD bytes"));
                continue;
            }
            if decimals > 2 * bytes {
                push(format!("{at}.decimals"), format!("{decimals}; expected at most {} for {bytes} bytes", 2 * bytes));
                continue;
            }
            let signed = pt.signed.or(k.map(|k| k.format.signed)).unwrap_or(false);
            let scale = pt.scale.or(k.map(|k| k.scale)).unwrap_or(1.0);
            if !scale.is_finite() || scale == 0.0 {
                push(format!("{at}.scale"), format!("{scale}; expected a finite, non-zero factor"));
                continue;
            }
            if resolved.iter().any(|(r, _, _): &(ResolvedPoint, String, Option<String>)| r.name == name) {
                push(format!("{at}.name"), format!("point \"{name}\" is read twice"));
                continue;
            }
            let unit = pt.unit.clone().or(k.map(|k| k.unit.to_owned())).unwrap_or_default();
            let unwatched = pt.unwatched.clone().or(k.and_then(|k| k.unwatched.map(str::to_owned)));
            resolved.push((
                ResolvedPoint { di, name, format: Format { bytes, decimals, signed }, scale },
                unit,
                unwatched,
            ));
        }
        for (r, unit, unwatched) in &resolved {
            if !d.points.iter().any(|x| x.name == r.name) {
                d.points.push(super::Point {
                    name: r.name.clone(),
                    unit: unit.clone(),
                    kind: super::PointKind::Float,
                    unwatched: unwatched.clone(),
                    event: None,
                });
            }
        }
        m.resolved = resolved.into_iter().map(|(r, _, _)| r).collect();
    }
    for (bus, (meters, discover)) in &per_bus {
        if !discover.is_empty() && *meters > 1 {
            for i in discover {
                push(
                    format!("devices[{i}].dlt645.address"),
                    format!(
                        "missing, and bus \"{bus}\" has {meters} meters; expected the meter's address (discovery with 13H needs a meter alone on its line)"
                    ),
                );
            }
        }
    }
    p
}

fn known_list(ids: &[&str]) -> String {
    if ids.is_empty() {
        "none defined".into()
    } else {
        ids.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
[site]
id = "p"
[[grids]]
id = "g1"
[[dlt645.buses]]
id = "rs485a"
kind = "serial"
path = "/dev/ttyUSB1"
"#;

    fn load(extra: &str) -> Result<Config, Vec<(String, String)>> {
        crate::config::from_str(&format!("{BASE}{extra}"), Path::new("t.toml"), Path::new("."))
            .map_err(|e| e.problems())
    }

    #[test]
    fn a_meter_gets_the_known_points_by_default() {
        let c = load(
            r#"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
dlt645 = { bus = "rs485a", address = "000000000161" }
"#,
        )
        .unwrap();
        let d = &c.devices[0];
        let names: Vec<&str> = d.points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["energy", "ua", "ub", "uc", "ia", "ib", "ic", "p", "pf"]);
        let m = d.dlt645.as_ref().unwrap();
        assert_eq!(m.resolved_address, Some(Address([0x61, 0x01, 0, 0, 0, 0])));
        assert_eq!(m.resolved[7].scale, 1000.0);
        assert_eq!(d.points[7].unit, "W");
    }

    #[test]
    fn configured_identifiers_take_defaults_and_formats() {
        let c = load(
            r#"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
[devices.dlt645]
bus = "rs485a"
points = [
  { di = "02 01 01 00" },
  { di = "00 01 00 00", name = "import" },
  { di = "02 80 00 02", name = "freq", unit = "Hz", bytes = 2, decimals = 2 },
]
"#,
        )
        .unwrap();
        let m = c.devices[0].dlt645.as_ref().unwrap();
        assert_eq!(m.resolved_address, None, "discovered");
        assert_eq!(m.resolved[0].name, "ua");
        assert_eq!(m.resolved[1].name, "import");
        assert_eq!(
            m.resolved[2],
            ResolvedPoint {
                di: Di(0x0280_0002),
                name: "freq".into(),
                format: Format { bytes: 2, decimals: 2, signed: false },
                scale: 1.0
            }
        );
        assert_eq!(c.devices[0].points[2].unit, "Hz");
    }

    #[test]
    fn problems_name_the_key_and_the_expectation() {
        let problems = load(
            r#"
[[dlt645.buses]]
id = "rs485a"
kind = "tcp"
preamble = 9
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
[devices.dlt645]
bus = "rs485a"
points = [{ di = "0201" }, { di = "04 00 01 01" }]
[[devices]]
id = "m2"
grid = "g1"
category = "electrical"
dlt645 = { bus = "nope", address = "12345" }
[[devices]]
id = "m3"
grid = "g1"
category = "electrical"
dlt645 = { bus = "rs485a", interval_ms = 5 }
"#,
        )
        .unwrap_err();
        let has = |path: &str, needle: &str| {
            assert!(
                problems.iter().any(|(p, m)| p == path && m.contains(needle)),
                "no {path}: {needle} in {problems:#?}"
            )
        };
        has("dlt645.buses[1].id", "duplicate bus id");
        has("dlt645.buses[1].host", "expected the serial server's host");
        has("dlt645.buses[1].port", "expected the serial server's TCP port");
        has("dlt645.buses[1].preamble", "expected 0 to 4");
        has("devices[0].dlt645.points[0].di", "expected 8 hex digits");
        has("devices[0].dlt645.points[1].name", "04 00 01 01 is not a known identifier");
        has("devices[1].dlt645.bus", "bus \"nope\" is not defined (known: rs485a, rs485a)");
        has("devices[1].dlt645.address", "expected 12 decimal digits");
        has("devices[2].dlt645.interval_ms", "expected at least 100");
        has("devices[0].dlt645.address", "discovery with 13H needs a meter alone on its line");
        has("devices[2].dlt645.address", "discovery with 13H needs a meter alone on its line");
    }

    #[test]
    fn the_file_is_named_in_the_error() {
        let e = crate::config::from_str(
            &format!(
                "{BASE}[[devices]]\nid = \"m\"\ngrid = \"g1\"\ncategory = \"electrical\"\ndlt645 = {{ bus = \"x\" }}\n"
            ),
            Path::new("/etc/parkwatch/park.toml"),
            Path::new("."),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/etc/parkwatch/park.toml: devices[0].dlt645.bus: bus \"x\" is not defined"), "{text}");
    }
}
