//! The TOML configuration: its serde model, loading with secret expansion, and validation.
//!
//! Loading never stops at the first semantic problem: [`load`] collects every problem with the file,
//! the key path and what was expected, so `parkwatch check` can list them all at once.
//!
//! Owns: the TOML model and its validation. May import: `model`; validation still reaches into
//! `source` for topic patterns and Modbus profiles (to become a resolution step).

pub mod actions;
pub mod device_files;
pub mod dlt645;
pub mod history;
pub mod hj212;
pub mod notify;
pub mod people;
pub mod report;
pub mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use history::History;
pub use notify::Notify;
pub use people::{Checkpoint, DutyOverride, Lang, PatrolWindow, Person, Plan, Roster, Shift, WeeklyDuty, WEEKDAYS};
pub use validate::{expand_env, Problem};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: Site,
    #[serde(default)]
    pub grids: Vec<Grid>,
    /// Device templates: what the devices naming a type share.
    #[serde(default)]
    pub device_types: Vec<DeviceType>,
    /// CSV files of devices (relative to the config file), added to `devices`; see
    /// `parkwatch devices import`.
    #[serde(default)]
    pub device_files: Vec<PathBuf>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub mqtt: Mqtt,
    /// The embedded MQTT broker, for parks without one.
    #[serde(default)]
    pub broker: EmbeddedBroker,
    #[serde(default)]
    pub api: Api,
    #[serde(default)]
    pub core: Core,
    /// Alarm rules: packs, parameters, calendar, maintenance windows.
    #[serde(default)]
    pub rules: Rules,
    /// Where incidents are kept.
    #[serde(default)]
    pub incidents: Incidents,
    /// Forwarding to central stores through the outbox; off without targets.
    #[serde(default)]
    pub forward: Forward,
    /// Modbus TCP / RTU connections polled for the devices that name them.
    #[serde(default)]
    pub modbus: Modbus,
    /// Sessions and login throttling; users and tokens live in `auth.db` beside the incident database.
    #[serde(default)]
    pub auth: Auth,
    /// The hash-chained audit trail.
    #[serde(default)]
    pub audit: Audit,
    /// The people of the safety organisation (officers, supervisors, the safety manager).
    #[serde(default)]
    pub people: Vec<Person>,
    /// Duty rosters, one per grid.
    #[serde(default)]
    pub rosters: Vec<Roster>,
    /// Emergency plans (预案) that rules name.
    #[serde(default)]
    pub plans: Vec<Plan>,
    /// Notifications to people: receivers, routes, grouping, escalation.
    #[serde(default)]
    pub notify: Notify,
    /// Rollups of every point kept on the edge box for trends.
    #[serde(default)]
    pub history: History,
    /// DL/T 645-2007 meter buses read for the devices that name them.
    #[serde(default)]
    pub dlt645: dlt645::Dlt645,
    /// HJ 212-2017 listeners and the data loggers that report to them.
    #[serde(default)]
    pub hj212: hj212::Hj212,
    /// How emission results are judged for disclosure and how energy is accounted.
    #[serde(default)]
    pub reports: report::Reports,
    /// Linkage: the only commands the gateway may send to devices and systems.
    #[serde(default)]
    pub actions: Vec<actions::Action>,
}

impl Config {
    /// Whether the session cookie is marked `Secure`: asked for, or the API itself serves HTTPS.
    pub fn cookie_secure(&self) -> bool {
        self.auth.cookie_secure || self.api.tls().is_some()
    }

    /// The audit database: `audit.path`, or `audit.db` next to the incident database.
    pub fn audit_path(&self) -> PathBuf {
        self.audit.path.clone().unwrap_or_else(|| self.incidents.path.with_file_name("audit.db"))
    }
}

/// The audit trail of who did what: through the API, and user and token changes on the command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// SQLite file (relative to the config file); default `audit.db` next to `incidents.path`.
    pub path: Option<PathBuf>,
}

/// The site (park) this gateway serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Short identifier, used as the `site` tag and in central MQTT topics.
    pub id: String,
    pub name: Option<String>,
    /// IANA time zone for day/night rules and daily reports.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Person id of the site's safety manager (安全负责人), the last step of escalation.
    #[serde(default)]
    pub safety_manager: Option<String>,
    /// The site plan the dashboard draws the grid cells on; without it the cells are tiles.
    #[serde(default)]
    pub plan: Option<SitePlan>,
}

/// A site plan image and the coordinate space the grids' `outline`s are given in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePlan {
    /// PNG, JPEG, WebP or SVG file (relative to the config file), at most 2 MiB: the dashboard is
    /// read over weak mobile links.
    pub image: PathBuf,
    /// Width of the plan in outline units (usually the image's pixels); the image is scaled to it.
    pub width: f64,
    /// Height of the plan in outline units.
    pub height: f64,
    /// The image's bytes, read while the config is validated.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// The image's content type, from its extension.
    #[serde(skip)]
    pub content_type: &'static str,
}

/// The largest site plan image accepted.
pub const MAX_PLAN_BYTES: u64 = 2 * 1024 * 1024;

fn default_timezone() -> String {
    "Asia/Shanghai".into()
}

/// A grid cell of the park (网格化管理).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub id: String,
    pub name: Option<String>,
    /// Person id of the grid supervisor (网格长), who answers for the grid.
    #[serde(default)]
    pub supervisor: Option<String>,
    /// Person ids of the grid's safety officers (网格员).
    #[serde(default)]
    pub officers: Vec<String>,
    /// Patrol checkpoints of the grid and how often each must be scanned.
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
    /// The cell's outline on the site plan, `[[x, y], …]` in `site.plan` units (at least 3 corners).
    #[serde(default)]
    pub outline: Vec<[f64; 2]>,
}

/// A field device: a meter, detector, sensor or reader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub name: Option<String>,
    /// Id of the grid cell the device is in.
    pub grid: String,
    /// A `[[device_types]]` id: the device takes its category, points, tags, Modbus profile and rule
    /// parameters from it (what the device says itself wins).
    #[serde(default, rename = "type")]
    pub device_type: Option<String>,
    /// Measurement name in the central store: `electrical`, `environment`, `energy`, `access`, ...
    /// (from the device type when left out).
    #[serde(default)]
    pub category: String,
    /// Extra tags forwarded with every sample.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub points: Vec<Point>,
    /// Polled over Modbus: connection, unit id, profile, interval. The profile's points are added to
    /// `points`.
    pub modbus: Option<DeviceModbus>,
    /// Read over DL/T 645-2007: bus, meter address, identifiers, interval. The identifiers' points
    /// are added to `points`.
    pub dlt645: Option<dlt645::DeviceDlt645>,
}

/// How a device is polled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceModbus {
    /// Id of a `[[modbus.connections]]`.
    pub connection: String,
    /// Unit (slave) id, 1–247 on a bus; 0–255 behind a TCP server.
    pub unit: u8,
    /// Profile id (file stem in `configs/profiles/` or a `modbus.profile_dirs` directory); from the
    /// device type when left out.
    #[serde(default)]
    pub profile: String,
    /// Poll interval, ms.
    #[serde(default = "default_poll_ms")]
    pub interval_ms: u64,
}

/// A device template (`[[device_types]]`): 2,000 meters of one model are 2,000 short device lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceType {
    pub id: String,
    /// Category of its devices (a device may say another).
    pub category: String,
    /// Points every device of the type has (before the device's own; a same-named one replaces it).
    #[serde(default)]
    pub points: Vec<Point>,
    /// Tags of every device of the type (a device's own tag of the same key wins).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Modbus profile of its polled devices, unless a device names one.
    pub profile: Option<String>,
    /// Rule parameters per rule id (or `*`) for its devices, applied like a `[[rules.overrides]]`
    /// entry with `type`: above category, below grid and device.
    #[serde(default)]
    pub params: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

pub(super) fn default_poll_ms() -> u64 {
    1000
}

/// Modbus connections and where profiles come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modbus {
    /// Directories of `*.toml` profiles besides the built-in ones (relative to the config file).
    #[serde(default)]
    pub profile_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub connections: Vec<ModbusConnection>,
}

/// Transport of a Modbus connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModbusKind {
    /// Modbus TCP (MBAP framing).
    Tcp,
    /// RTU frames passed through a serial-to-Ethernet gateway over TCP.
    RtuOverTcp,
    /// RTU over a serial port (RS-485).
    Rtu,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// One TCP connection or one serial bus, shared by its devices one transaction at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConnection {
    pub id: String,
    pub kind: ModbusKind,
    /// For tcp and rtu_over_tcp.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// For rtu: the serial device, e.g. /dev/ttyUSB0.
    pub path: Option<PathBuf>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Per request, ms.
    #[serde(default = "default_modbus_timeout")]
    pub timeout_ms: u64,
    /// Extra attempts after a timeout within one cycle.
    #[serde(default)]
    pub retries: u32,
    /// Quiet time between transactions on the line, ms (RS-485 inter-frame gap).
    #[serde(default)]
    pub gap_ms: u64,
    /// Cycles without a valid read before a device is reported offline.
    #[serde(default = "default_offline_after")]
    pub offline_after: u32,
    /// Longest wait between attempts at a device that does not answer, ms.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
}

pub(super) fn default_baud() -> u32 {
    9600
}
pub(super) fn default_data_bits() -> u8 {
    8
}
pub(super) fn default_stop_bits() -> u8 {
    1
}
pub(super) fn default_modbus_timeout() -> u64 {
    1000
}
pub(super) fn default_offline_after() -> u32 {
    3
}
pub(super) fn default_backoff_max() -> u64 {
    30_000
}

/// A measured value of a device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub name: String,
    /// Engineering unit after scaling: `V`, `A`, `mA`, `°C`, `kWh`, `dB(A)`, `µg/m³`...
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub kind: PointKind,
    /// Why no alarm rule watches this point (it has no safety meaning, or another point carries it);
    /// `parkwatch check` warns about points without a rule that do not say why.
    #[serde(default)]
    pub unwatched: Option<String>,
    /// The event a Modbus profile's bit raises when it rises (from the profile, never set by hand).
    #[serde(skip)]
    pub event: Option<String>,
}

/// The value type of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PointKind {
    #[default]
    Float,
    Int,
    Bool,
}

/// MQTT connections and what to subscribe to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    #[serde(default)]
    pub brokers: Vec<Broker>,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// One MQTT broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    pub id: String,
    /// Host name or address; `${VAR}` is taken from the environment.
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Defaults to `parkwatch-<site id>-<broker id>`; must be stable for persistent sessions.
    pub client_id: Option<String>,
    /// `${VAR}` is taken from the environment.
    pub username: Option<String>,
    /// `${VAR}` is taken from the environment; prefer `password_file`.
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored), e.g. a systemd credential.
    pub password_file: Option<PathBuf>,
    /// Keep the session (subscriptions and queued QoS 1 messages) across reconnects.
    #[serde(default = "yes")]
    pub persistent_session: bool,
    /// Seconds between keep-alive pings.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// First reconnect delay, milliseconds; doubles up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Largest MQTT packet read from the broker, bytes. A larger one breaks the connection and the
    /// broker sends it again on every reconnect, so the default is the protocol's maximum (256 MiB):
    /// oversized messages are read, rejected by the subscription's `max_payload_bytes`, counted and
    /// acknowledged. Lower it only together with the broker's own limit (Mosquitto
    /// `message_size_limit`).
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// The broker's in-flight window for this client: how many QoS 1/2 messages it sends before it
    /// waits for acknowledgements (Mosquitto `max_inflight_messages`, default 20). Once this many
    /// wait, the outbox commits at once instead of gathering for `forward.ack_delay_ms`.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// After a read of few messages, none of them waiting for an acknowledgement (QoS 0), the
    /// next read waits this many milliseconds, so that at a steady rate messages are taken in
    /// handfuls instead of one wake-up each. 0 reads at once. Default 1.
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    pub tls: Option<Tls>,
}

fn default_inflight() -> u16 {
    20
}
fn default_linger() -> u64 {
    1
}

fn default_mqtt_port() -> u16 {
    1883
}
fn yes() -> bool {
    true
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}
/// MQTT's largest remaining length (268,435,455 bytes).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

fn default_max_packet() -> usize {
    MQTT_MAX_PACKET
}

/// TLS for a broker connection (rustls).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the CA certificates that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require client authentication.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// How a subscription's payloads are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A JSON document; values by JSON pointer, or top-level keys named like the device's points.
    #[default]
    Json,
    /// A bare number (or `true` / `false`); the point comes from `{point}` in the topic or `point`.
    Number,
    /// A discrete event (card denied, door forced...): kind plus attributes, not numbers.
    Event,
}

/// One topic subscription and how its messages map to points or events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Id of the broker connection.
    pub broker: String,
    /// Topic filter with named segments: `park/{grid}/meter/{device}/telemetry`. `+` and `#` also work.
    pub topic: String,
    /// 0 or 1. With 1, a message is acknowledged only once its samples are handed on.
    #[serde(default = "default_qos")]
    pub qos: u8,
    #[serde(default)]
    pub format: PayloadFormat,
    /// A fixed device, for topics without `{device}`.
    pub device: Option<String>,
    /// A fixed point, for `number` payloads on topics without `{point}`.
    pub point: Option<String>,
    /// JSON fields to read; when empty, top-level keys named like the device's points are read.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// Where the sample time is; without it, the time of receipt is used.
    pub timestamp: Option<Timestamp>,
    /// For `event` payloads: a fixed kind, when neither `{kind}` in the topic nor `kind_pointer` gives one.
    pub event_kind: Option<String>,
    /// For `event` payloads: JSON pointer to the kind. Default `/event`.
    pub kind_pointer: Option<String>,
    /// Larger payloads are rejected, bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Timestamps further ahead than this are rejected, seconds.
    #[serde(default = "default_max_future")]
    pub max_future_secs: u64,
    /// Timestamps older than this are rejected, seconds.
    #[serde(default = "default_max_past")]
    pub max_past_secs: u64,
    /// Devices this subscription hears of that are not configured are created from a device type
    /// (id and grid from the topic's `{device}` and `{grid}`).
    pub provision: Option<Provision>,
}

/// Auto-provisioning of a subscription: unknown devices become devices of a type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// The `[[device_types]]` entry the devices take their category, points, tags and rule
    /// parameters from.
    #[serde(rename = "type")]
    pub device_type: String,
    /// At most this many devices provisioned through this subscription; the rest are refused and
    /// counted.
    #[serde(default = "default_provision_max")]
    pub max: usize,
    /// New devices wait for an admin's approval (`POST /api/v1/provisioning/{device}/approve`).
    #[serde(default)]
    pub approve: bool,
}

fn default_provision_max() -> usize {
    1000
}

/// Is `s` usable as a device, grid or type id: 1-64 letters, digits, '-', '_' or '.'.
pub fn is_identifier(s: &str) -> bool {
    validate::is_identifier(s)
}

fn default_qos() -> u8 {
    1
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_max_future() -> u64 {
    300
}
fn default_max_past() -> u64 {
    7 * 24 * 3600
}

/// One JSON field mapped to a point.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub point: String,
    /// RFC 6901 JSON pointer, e.g. `/data/ua`. Default: `/<point>`.
    pub pointer: Option<String>,
    /// value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// A missing optional field is not a reject (devices that send partial updates).
    #[serde(default)]
    pub optional: bool,
}

fn one() -> f64 {
    1.0
}

/// Where a payload's timestamp is and its unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    /// JSON pointer, e.g. `/ts`.
    pub pointer: String,
    pub unit: TimeUnit,
}

/// Unit of a payload timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    S,
    Ms,
    Us,
    Ns,
    Rfc3339,
}

/// The embedded MQTT broker (rumqttd).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBroker {
    #[serde(default)]
    pub embedded: bool,
    #[serde(default = "default_broker_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_broker_connections")]
    pub max_connections: usize,
    /// Largest payload the broker accepts, bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self {
            embedded: false,
            listen: default_broker_listen(),
            max_connections: default_broker_connections(),
            max_payload_bytes: default_max_payload(),
        }
    }
}

fn default_broker_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_broker_connections() -> usize {
    1000
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Loopback by default. Any other address needs `tls_cert` and `tls_key`, or `insecure_lan = true`.
    /// Every route but `/healthz` (and `/metrics` when `metrics_auth = false`) needs a token or a
    /// session.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// How many recent rejected messages `GET /api/v1/rejects` keeps.
    #[serde(default = "default_rejects_kept")]
    pub rejects_kept: usize,
    /// PEM certificate chain (server certificate first) for HTTPS, relative to the config file;
    /// re-read on SIGHUP. With `tls_key`, the API speaks only HTTPS on `listen`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`; re-read on SIGHUP.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback `listen` anyway: everyone on that network can read and
    /// act. Off by default.
    #[serde(default)]
    pub insecure_lan: bool,
    /// Whether `/metrics` needs a token (default true); false lets a Prometheus without credentials
    /// scrape it.
    #[serde(default = "default_true")]
    pub metrics_auth: bool,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            rejects_kept: default_rejects_kept(),
            tls_cert: None,
            tls_key: None,
            insecure_lan: false,
            metrics_auth: true,
        }
    }
}

impl Api {
    /// The certificate and key files when HTTPS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

fn default_true() -> bool {
    true
}

/// Browser sessions and login throttling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// A session unused for this many seconds ends (default 1800).
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
    /// A session ends this many seconds after login, used or not (default 43200, 12 h).
    #[serde(default = "default_session_max")]
    pub session_max_secs: u64,
    /// Wrong passwords for one user within a minute that lock the user (default 20).
    #[serde(default = "default_user_failures")]
    pub user_failures: usize,
    /// Wrong passwords from one client address within a minute that lock the address (default 100).
    #[serde(default = "default_source_failures")]
    pub source_failures: usize,
    /// How many seconds a lock lasts (default 900); a correct password is refused meanwhile.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
    /// Mark the session cookie `Secure` (browsers then send it over HTTPS only). Always so when
    /// `api.tls_cert` is set; set it when a TLS proxy in front serves the API.
    #[serde(default)]
    pub cookie_secure: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            session_idle_secs: default_session_idle(),
            session_max_secs: default_session_max(),
            user_failures: default_user_failures(),
            source_failures: default_source_failures(),
            lockout_secs: default_lockout(),
            cookie_secure: false,
        }
    }
}

fn default_session_idle() -> u64 {
    1800
}
fn default_session_max() -> u64 {
    43_200
}
fn default_user_failures() -> usize {
    20
}
fn default_source_failures() -> usize {
    100
}
fn default_lockout() -> u64 {
    900
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_rejects_kept() -> usize {
    200
}

/// The core task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Core {
    /// Batches the source-to-core channel holds before sources are slowed down.
    #[serde(default = "default_channel_batches")]
    pub channel_batches: usize,
    /// Most samples a source puts in one batch.
    #[serde(default = "default_batch_samples")]
    pub batch_samples: usize,
    /// Recent events kept for `GET /api/v1/events`.
    #[serde(default = "default_events_kept")]
    pub events_kept: usize,
}

impl Default for Core {
    fn default() -> Self {
        Self {
            channel_batches: default_channel_batches(),
            batch_samples: default_batch_samples(),
            events_kept: default_events_kept(),
        }
    }
}

fn default_channel_batches() -> usize {
    64
}
fn default_batch_samples() -> usize {
    4096
}
fn default_events_kept() -> usize {
    500
}

/// Alarm rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Run the default packs built into the binary (electrical, emissions, access, quality).
    #[serde(default = "yes")]
    pub builtin: bool,
    /// Refuse to start (and fail `parkwatch check`) when a pack does not load. Off by default: a broken
    /// pack is skipped with a warning and a `system` incident, and the other packs run.
    #[serde(default)]
    pub strict: bool,
    /// Directories whose `*.rhai` files are loaded too (relative to the config file).
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Check the directories for changed files every this many seconds and reload; 0 = only on SIGHUP.
    #[serde(default = "default_reload_secs")]
    pub reload_secs: u64,
    /// Start of the night period, local time `HH:MM` (GB 12348: 22:00).
    #[serde(default = "default_night_start")]
    pub night_start: String,
    /// End of the night period, local time `HH:MM` (GB 12348: 06:00).
    #[serde(default = "default_night_end")]
    pub night_end: String,
    /// Most time buckets per ring of a point's window; a ring needing more uses coarser buckets (bounds memory per point).
    #[serde(default = "default_window_cap")]
    pub window_samples: usize,
    /// This many alarm transitions within `chatter_window_secs` mark an alarm as chattering.
    #[serde(default = "default_chatter_count")]
    pub chatter_count: usize,
    /// Seconds.
    #[serde(default = "default_chatter_window")]
    pub chatter_window_secs: u64,
    /// Most operations one condition may take before it is stopped.
    #[serde(default = "default_max_operations")]
    pub max_operations: u64,
    /// Parameter overrides; the most specific scope wins (device, grid, category, site).
    #[serde(default)]
    pub overrides: Vec<ParamOverride>,
    /// Periods during which alarms of some devices are suppressed.
    #[serde(default)]
    pub maintenance: Vec<MaintenanceWindow>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            builtin: true,
            strict: false,
            dirs: Vec::new(),
            reload_secs: default_reload_secs(),
            night_start: default_night_start(),
            night_end: default_night_end(),
            window_samples: default_window_cap(),
            chatter_count: default_chatter_count(),
            chatter_window_secs: default_chatter_window(),
            max_operations: default_max_operations(),
            overrides: Vec::new(),
            maintenance: Vec::new(),
        }
    }
}

fn default_reload_secs() -> u64 {
    2
}
fn default_night_start() -> String {
    "22:00".into()
}
fn default_night_end() -> String {
    "06:00".into()
}
fn default_window_cap() -> usize {
    20_000
}
fn default_chatter_count() -> usize {
    6
}
fn default_chatter_window() -> u64 {
    600
}
fn default_max_operations() -> u64 {
    50_000
}

/// Parameters of one rule (or `*`: every rule that has them) for a scope.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamOverride {
    /// Rule id, or `*`.
    pub rule: String,
    /// At most one of device, grid, type, category; none means the whole site.
    pub device: Option<String>,
    pub grid: Option<String>,
    /// A `[[device_types]]` id.
    #[serde(rename = "type")]
    pub device_type: Option<String>,
    pub category: Option<String>,
    /// Parameter values (numbers, strings, booleans).
    pub params: BTreeMap<String, toml::Value>,
}

/// A maintenance window or an out-of-service period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub grids: Vec<String>,
    /// RFC 3339 start.
    pub from: String,
    /// RFC 3339 end; absent = out of service until removed.
    pub to: Option<String>,
    /// Why (shown in logs).
    #[serde(default)]
    pub reason: String,
}

/// The incident database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incidents {
    /// SQLite file (relative to the config file); the systemd unit's StateDirectory is /var/lib/parkwatch.
    #[serde(default = "default_incidents_path")]
    pub path: PathBuf,
}

impl Default for Incidents {
    fn default() -> Self {
        Self { path: default_incidents_path() }
    }
}

fn default_incidents_path() -> PathBuf {
    state_dir().join("incidents.db")
}

/// systemd's StateDirectory= sets STATE_DIRECTORY (colon-separated when there are several).
fn state_dir() -> PathBuf {
    std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|d| d.split(':').next().filter(|d| !d.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/parkwatch"))
}

/// Forwarding of time series and incidents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// InfluxDB v2 API stores; every batch goes to each of them.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// The outbox file (relative to the config file); default `$STATE_DIRECTORY/outbox.db`.
    #[serde(default = "default_outbox_path")]
    pub outbox: PathBuf,
    /// A batch is committed at this many lines…
    #[serde(default = "default_batch_lines")]
    pub batch_lines: usize,
    /// …or this many milliseconds after its first line, whichever comes first.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// Longest a QoS 1 message's acknowledgement waits to share an outbox commit (one fsync) with
    /// the messages after it; sooner when a broker's in-flight window is full. 0: every burst is
    /// committed as soon as it is read. Default 2.
    #[serde(default = "default_ack_delay")]
    pub ack_delay_ms: u64,
    /// Outbox size limit, bytes of line protocol; when full the oldest telemetry is dropped first.
    #[serde(default = "default_outbox_bytes")]
    pub max_outbox_bytes: u64,
    /// Telemetry batches older than this many seconds are dropped (counted, and a `system`
    /// incident); incident batches are kept until every store confirmed them.
    #[serde(default = "default_outbox_age")]
    pub max_age_secs: u64,
    /// At most this many dead letters (lines a store rejected) are kept, all targets together; beyond
    /// that the oldest are dropped and counted. Default 10000.
    #[serde(default = "default_dead_letter_count")]
    pub dead_letter_max_count: u64,
    /// At most this many bytes of dead letters (lines and server messages) are kept; beyond that the
    /// oldest are dropped and counted. Default 64 MiB.
    #[serde(default = "default_dead_letter_bytes")]
    pub dead_letter_max_bytes: u64,
    /// Incidents to a central MQTT broker (one of `mqtt.brokers`).
    pub mqtt: Option<CentralMqtt>,
}

/// The central MQTT broker for incidents and the gateway's status.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralMqtt {
    /// Id of a broker in `mqtt.brokers`.
    pub broker: String,
}

impl Default for Forward {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            outbox: default_outbox_path(),
            batch_lines: default_batch_lines(),
            batch_ms: default_batch_ms(),
            ack_delay_ms: default_ack_delay(),
            max_outbox_bytes: default_outbox_bytes(),
            max_age_secs: default_outbox_age(),
            dead_letter_max_count: default_dead_letter_count(),
            dead_letter_max_bytes: default_dead_letter_bytes(),
            mqtt: None,
        }
    }
}

fn default_outbox_path() -> PathBuf {
    state_dir().join("outbox.db")
}
fn default_batch_lines() -> usize {
    5000
}
fn default_batch_ms() -> u64 {
    1000
}
fn default_ack_delay() -> u64 {
    2
}
fn default_outbox_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_outbox_age() -> u64 {
    7 * 86_400
}
fn default_dead_letter_count() -> u64 {
    10_000
}
fn default_dead_letter_bytes() -> u64 {
    64 * 1024 * 1024
}

/// One InfluxDB v2 API store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub id: String,
    /// Base URL, e.g. `http://influx.park.lan:8086`; `/api/v2/write` is appended.
    pub url: String,
    pub org: String,
    pub bucket: String,
    /// API token (`${VAR}` from the environment), or `token_file`.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Compress request bodies.
    #[serde(default)]
    pub gzip: bool,
    /// Seconds per request.
    #[serde(default = "default_target_timeout")]
    pub timeout_secs: u64,
    /// Backoff bounds after a failed write, milliseconds.
    #[serde(default = "default_retry_min")]
    pub retry_min_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
}

fn default_target_timeout() -> u64 {
    10
}
fn default_retry_min() -> u64 {
    500
}
fn default_retry_max() -> u64 {
    60_000
}

/// A configuration that failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {path}: {message}")]
    Syntax { file: PathBuf, path: String, message: String },
    #[error("{file}: {} problem(s):\n{}", problems.len(), render(file, problems))]
    Invalid { file: PathBuf, problems: Vec<Problem> },
}

fn render(file: &Path, problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {}: {}: {}", file.display(), p.path, p.message)).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// Every problem as `(key path, message)`, for callers that list them.
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            Self::Read { source, .. } => vec![(String::new(), source.to_string())],
            Self::Syntax { path, message, .. } => vec![(path.clone(), message.clone())],
            Self::Invalid { problems, .. } => problems.iter().map(|p| (p.path.clone(), p.message.clone())).collect(),
        }
    }
}

/// Reads, parses, expands and validates a config file.
///
/// # Errors
/// Returns every problem found, each with the file, the key path and what was expected.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_owned(), source })?;
    let base = file.parent().unwrap_or(Path::new("."));
    from_str(&text, file, base)
}

/// Parses, expands and validates config text; relative paths are taken from `base`.
///
/// # Errors
/// As [`load`]; `file` is only used to name the source in messages.
pub fn from_str(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        let location = inner
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError::Syntax {
            file: file.to_owned(),
            path: if path == "." { "(top)".into() } else { path },
            message: format!("{message}{location}"),
        }
    })?;
    let problems = validate::validate(&mut config, base);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { file: file.to_owned(), problems })
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;
