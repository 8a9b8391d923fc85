//! Turns one MQTT message into samples or an event, or into rejects with a reason.
//!
//! Pure: no I/O, no clock (the caller passes the time of receipt). Names in topics are resolved to
//! [`DeviceId`]/[`PointId`] once per topic and cached, so the steady state does no name lookups.

use std::collections::HashMap;

use serde_json::Value;

use super::topic::TopicPattern;
use crate::config::{PayloadFormat, Subscription, TimeUnit};
use crate::model::time::fmt_ns;
use crate::model::{Batch, DeviceId, Event, PointId, Quality, Registry, Sample};

pub use crate::model::reject::RejectReason;

/// A rejected message or value, with what was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Reject {
    Reject { reason, detail: detail.into() }
}

#[derive(Debug, Clone)]
struct FieldSpec {
    point: String,
    pointer: String,
    scale: f64,
    offset: f64,
    optional: bool,
}

/// Names of one topic resolved against the registry.
#[derive(Debug, Clone)]
struct Resolved {
    device: DeviceId,
    /// The device's first point: auto field i is point `first_point + i`.
    first_point: u32,
    /// For JSON: the point of each field (None: the device has no such point). For numbers: one entry.
    points: Vec<Option<PointId>>,
    /// JSON fields when the subscription lists none: one per point of the device.
    auto_fields: Vec<FieldSpec>,
    kind: Option<String>,
}

/// Topic cache bound; a publisher inventing topics cannot grow memory past it.
const CACHE_LIMIT: usize = 16 * 1024;

/// The decoder of one subscription: its settings and its topic cache.
#[derive(Debug)]
pub struct Decoder {
    spec: Spec,
    cache: HashMap<Box<str>, Resolved>,
}

/// What a subscription says about its messages.
#[derive(Debug)]
struct Spec {
    pattern: TopicPattern,
    format: PayloadFormat,
    fixed_device: Option<String>,
    fixed_point: Option<String>,
    fields: Vec<FieldSpec>,
    timestamp: Option<(String, TimeUnit)>,
    event_kind: Option<String>,
    kind_pointer: String,
    max_payload: usize,
    max_future_ns: i64,
    max_past_ns: i64,
}

impl Decoder {
    /// Builds the decoder of a validated subscription.
    ///
    /// # Errors
    /// The topic pattern does not parse (validation prevents this for loaded configs).
    pub fn new(sub: &Subscription) -> Result<Self, String> {
        let spec = Spec {
            pattern: TopicPattern::parse(&sub.topic)?,
            format: sub.format,
            fixed_device: sub.device.clone(),
            fixed_point: sub.point.clone(),
            fields: sub
                .fields
                .iter()
                .map(|f| FieldSpec {
                    point: f.point.clone(),
                    pointer: f.pointer.clone().unwrap_or_else(|| format!("/{}", f.point)),
                    scale: f.scale,
                    offset: f.offset,
                    optional: f.optional,
                })
                .collect(),
            timestamp: sub.timestamp.as_ref().map(|t| (t.pointer.clone(), t.unit)),
            event_kind: sub.event_kind.clone(),
            kind_pointer: sub.kind_pointer.clone().unwrap_or_else(|| "/event".into()),
            max_payload: sub.max_payload_bytes,
            max_future_ns: secs_to_ns(sub.max_future_secs),
            max_past_ns: secs_to_ns(sub.max_past_secs),
        };
        Ok(Self { spec, cache: HashMap::new() })
    }

    /// Drops every resolved topic: the registry they were resolved against was replaced.
    pub fn forget(&mut self) {
        self.cache.clear();
    }

    /// The topic pattern of this subscription.
    pub fn pattern(&self) -> &TopicPattern {
        &self.spec.pattern
    }

    /// Decodes one message received at `now` (UTC ns) into `batch`; problems go to `rejects`.
    ///
    /// A message may be partly accepted: each value that is wrong is one reject, the others stand.
    /// Returns how many samples or events were added.
    pub fn decode(
        &mut self,
        registry: &Registry,
        topic: &str,
        payload: &[u8],
        now: i64,
        batch: &mut Batch,
        rejects: &mut Vec<Reject>,
    ) -> usize {
        let Decoder { spec, cache } = self;
        if payload.len() > spec.max_payload {
            rejects.push(reject(
                RejectReason::TooLarge,
                format!("payload of {} bytes; the limit is {}", payload.len(), spec.max_payload),
            ));
            return 0;
        }
        let resolved = match resolve(spec, cache, registry, topic) {
            Ok(r) => r,
            Err(r) => {
                rejects.push(r);
                return 0;
            }
        };
        let check_ts = |ts: i64| -> Result<i64, Reject> {
            if ts > now.saturating_add(spec.max_future_ns) {
                Err(reject(
                    RejectReason::TimestampFuture,
                    format!(
                        "timestamp {} is {} s ahead of the clock",
                        fmt_ns(ts),
                        ts.saturating_sub(now) / 1_000_000_000
                    ),
                ))
            } else if ts < now.saturating_sub(spec.max_past_ns) {
                Err(reject(
                    RejectReason::TimestampPast,
                    format!(
                        "timestamp {} is {} s behind the clock",
                        fmt_ns(ts),
                        now.saturating_sub(ts) / 1_000_000_000
                    ),
                ))
            } else {
                Ok(ts)
            }
        };
        match spec.format {
            PayloadFormat::Number => {
                let Some(point) = resolved.points[0] else {
                    rejects.push(reject(RejectReason::UnknownPoint, "the topic names no point of this device"));
                    return 0;
                };
                match parse_number(payload) {
                    Ok(value) if value.is_finite() => {
                        batch.samples.push(Sample { point, quality: Quality::Good, ts: now, value });
                        1
                    }
                    Ok(value) => {
                        rejects.push(reject(RejectReason::NonFinite, format!("value {value}")));
                        0
                    }
                    Err(r) => {
                        rejects.push(r);
                        0
                    }
                }
            }
            PayloadFormat::Json => {
                let doc: Value = match serde_json::from_slice(payload) {
                    Ok(v) => v,
                    Err(e) => {
                        rejects.push(reject(RejectReason::MalformedJson, e.to_string()));
                        return 0;
                    }
                };
                let ts = match spec.timestamp.as_ref().map(|(ptr, unit)| read_ts(&doc, ptr, *unit)) {
                    None => now,
                    Some(Ok(ts)) => match check_ts(ts) {
                        Ok(ts) => ts,
                        Err(r) => {
                            rejects.push(r);
                            return 0;
                        }
                    },
                    Some(Err(r)) => {
                        rejects.push(r);
                        return 0;
                    }
                };
                let (fields, auto) =
                    if spec.fields.is_empty() { (&resolved.auto_fields, true) } else { (&spec.fields, false) };
                let before = batch.samples.len();
                let rejected_before = rejects.len();
                for (i, field) in fields.iter().enumerate() {
                    let point = if auto { Some(PointId(resolved.first_point + i as u32)) } else { resolved.points[i] };
                    let Some(point) = point else {
                        rejects
                            .push(reject(RejectReason::UnknownPoint, format!("device has no point {:?}", field.point)));
                        continue;
                    };
                    let Some(raw) = doc.pointer(&field.pointer) else {
                        if !field.optional && !auto {
                            rejects.push(reject(RejectReason::MissingField, format!("no field at {}", field.pointer)));
                        }
                        continue;
                    };
                    match json_number(raw) {
                        Ok(v) => {
                            let value = v * field.scale + field.offset;
                            if value.is_finite() {
                                batch.samples.push(Sample { point, quality: Quality::Good, ts, value });
                            } else {
                                rejects.push(reject(RejectReason::NonFinite, format!("{} is {value}", field.pointer)));
                            }
                        }
                        Err((reason, what)) => rejects.push(reject(reason, format!("{} is {what}", field.pointer))),
                    }
                }
                let added = batch.samples.len() - before;
                if added == 0 && auto {
                    rejects.push(reject(RejectReason::NoValues, "no key of the payload names a point of the device"));
                } else if added == 0 && rejects.len() == rejected_before {
                    // Every field was optional and absent: still counted, so no message vanishes unseen.
                    rejects.push(reject(RejectReason::NoValues, "none of the configured fields is in the payload"));
                }
                added
            }
            PayloadFormat::Event => {
                spec.decode_event(resolved.device, resolved.kind.clone(), payload, now, batch, rejects, check_ts)
            }
        }
    }
}

impl Spec {
    #[allow(clippy::too_many_arguments)]
    fn decode_event(
        &self,
        device: DeviceId,
        topic_kind: Option<String>,
        payload: &[u8],
        now: i64,
        batch: &mut Batch,
        rejects: &mut Vec<Reject>,
        check_ts: impl Fn(i64) -> Result<i64, Reject>,
    ) -> usize {
        let doc: Value = if payload.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            match serde_json::from_slice(payload) {
                Ok(v) => v,
                Err(e) => {
                    rejects.push(reject(RejectReason::MalformedJson, e.to_string()));
                    return 0;
                }
            }
        };
        if !doc.is_object() {
            rejects.push(reject(RejectReason::WrongType, "an event payload must be a JSON object"));
            return 0;
        }
        let ts = match &self.timestamp {
            None => now,
            Some((ptr, unit)) => match read_ts(&doc, ptr, *unit).and_then(&check_ts) {
                Ok(ts) => ts,
                Err(r) => {
                    rejects.push(r);
                    return 0;
                }
            },
        };
        let Value::Object(mut attributes) = doc else {
            return 0;
        };
        if let Some(k) = self.timestamp.as_ref().and_then(|(ptr, _)| top_level_key(ptr)) {
            attributes.remove(k);
        }
        let kind = match (topic_kind, &self.event_kind) {
            (Some(k), _) => k,
            (None, Some(k)) => k.clone(),
            (None, None) => match top_level_key(&self.kind_pointer).and_then(|k| attributes.remove(k)) {
                Some(Value::String(s)) if !s.is_empty() => s,
                Some(other) => {
                    rejects.push(reject(
                        RejectReason::WrongType,
                        format!("{} is {}, expected a non-empty string", self.kind_pointer, type_name(&other)),
                    ));
                    return 0;
                }
                None => {
                    rejects.push(reject(RejectReason::MissingField, format!("no event kind at {}", self.kind_pointer)));
                    return 0;
                }
            },
        };
        batch.events.push(Event { device, kind, ts, attributes });
        1
    }
}

fn secs_to_ns(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1_000_000_000).saturating_mul(1_000_000_000)
}

fn parse_number(payload: &[u8]) -> Result<f64, Reject> {
    let text =
        std::str::from_utf8(payload).map_err(|_| reject(RejectReason::MalformedNumber, "payload is not UTF-8"))?.trim();
    match text {
        "true" => Ok(1.0),
        "false" => Ok(0.0),
        _ => text.parse::<f64>().map_err(|_| {
            let shown: String = text.chars().take(40).collect();
            reject(RejectReason::MalformedNumber, format!("{shown:?} is not a number"))
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as a number: numbers, booleans and numeric strings (many devices quote numbers).
fn json_number(v: &Value) -> Result<f64, (RejectReason, String)> {
    match v {
        Value::Number(n) => n.as_f64().ok_or((RejectReason::NonFinite, n.to_string())),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            Ok(x) => Err((RejectReason::NonFinite, format!("{x}"))),
            Err(_) => Err((
                RejectReason::WrongType,
                format!("the string {:?}, expected a number", s.chars().take(40).collect::<String>()),
            )),
        },
        other => Err((RejectReason::WrongType, format!("{}, expected a number", type_name(other)))),
    }
}

fn read_ts(doc: &Value, pointer: &str, unit: TimeUnit) -> Result<i64, Reject> {
    let v =
        doc.pointer(pointer).ok_or_else(|| reject(RejectReason::MissingField, format!("no timestamp at {pointer}")))?;
    let bad = |what: String| reject(RejectReason::BadTimestamp, format!("{pointer} is {what}"));
    if unit == TimeUnit::Rfc3339 {
        let s = v.as_str().ok_or_else(|| bad(format!("{}, expected an RFC 3339 string", type_name(v))))?;
        let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| bad(format!("{s:?} ({e})")))?;
        return t.timestamp_nanos_opt().ok_or_else(|| bad(format!("{s:?}, out of range")));
    }
    let per_unit: i64 = match unit {
        TimeUnit::S => 1_000_000_000,
        TimeUnit::Ms => 1_000_000,
        TimeUnit::Us => 1_000,
        TimeUnit::Ns | TimeUnit::Rfc3339 => 1,
    };
    let Value::Number(n) = v else {
        return Err(bad(format!("{}, expected a number", type_name(v))));
    };
    if let Some(i) = n.as_i64() {
        return i.checked_mul(per_unit).ok_or_else(|| bad(format!("{i}, out of range")));
    }
    let f = n.as_f64().unwrap_or(f64::NAN) * per_unit as f64;
    if f.is_finite() && f.abs() < 9.0e18 {
        Ok(f as i64)
    } else {
        Err(bad(format!("{n}, out of range")))
    }
}

fn top_level_key(pointer: &str) -> Option<&str> {
    pointer.strip_prefix('/').filter(|k| !k.contains('/'))
}

fn resolve<'c>(
    spec: &Spec,
    cache: &'c mut HashMap<Box<str>, Resolved>,
    registry: &Registry,
    topic: &str,
) -> Result<&'c Resolved, Reject> {
    if cache.contains_key(topic) {
        return Ok(&cache[topic]);
    }
    let caps = spec.pattern.matches(topic).ok_or_else(|| {
        reject(RejectReason::TopicMismatch, format!("topic {topic:?} does not match {:?}", spec.pattern.filter()))
    })?;
    let device_name = caps.device.or(spec.fixed_device.as_deref()).unwrap_or_default();
    let device = registry
        .device_id(device_name)
        .ok_or_else(|| reject(RejectReason::UnknownDevice, format!("device {device_name:?} is not configured")))?;
    let info = registry.device(device);
    if let Some(grid) = caps.grid {
        let expected = &registry.grid(info.grid).id;
        if grid != expected {
            return Err(reject(
                RejectReason::GridMismatch,
                format!("topic grid {grid:?}, but device {device_name:?} is in grid {expected:?}"),
            ));
        }
    }
    let mut points = Vec::new();
    let mut auto_fields = Vec::new();
    match spec.format {
        PayloadFormat::Number => {
            let name = caps.point.or(spec.fixed_point.as_deref()).unwrap_or_default();
            let point = registry.point_of(device, name);
            if point.is_none() {
                return Err(reject(
                    RejectReason::UnknownPoint,
                    format!("device {device_name:?} has no point {name:?}"),
                ));
            }
            points.push(point);
        }
        PayloadFormat::Json if spec.fields.is_empty() => {
            auto_fields = info
                .points
                .clone()
                .map(|i| {
                    let name = &registry.point(PointId(i)).name;
                    FieldSpec {
                        point: name.clone(),
                        pointer: format!("/{name}"),
                        scale: 1.0,
                        offset: 0.0,
                        optional: true,
                    }
                })
                .collect();
        }
        PayloadFormat::Json => points = spec.fields.iter().map(|f| registry.point_of(device, &f.point)).collect(),
        PayloadFormat::Event => {}
    }
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
    // The kind is part of the topic, so each kind is its own cache entry.
    let entry =
        Resolved { device, first_point: info.points.start, points, auto_fields, kind: caps.kind.map(str::to_owned) };
    Ok(cache.entry(topic.into()).or_insert(entry))
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    pub(super) const NOW: i64 = 1_795_000_000_000_000_000;

    /// Two grids, a meter with three points and an access device; shared with the property tests.
    pub(super) fn registry() -> Registry {
        let text = r#"
[site]
id = "p"
[[grids]]
id = "g1"
[[grids]]
id = "g2"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{ name = "ua" }, { name = "ia" }, { name = "rc" }]
[[devices]]
id = "d1"
grid = "g1"
category = "access"
"#;
        Registry::from_config(&config::from_str(text, "t".as_ref(), ".".as_ref()).unwrap())
    }

    fn sub(extra: &str) -> Subscription {
        let text = format!("broker = \"b\"\ntopic = \"park/{{grid}}/{{device}}/x\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    /// Decodes one message; returns `(point, ts, value)` of each sample and the reject reasons.
    fn check(extra: &str, topic: &str, payload: &str) -> (Vec<(u32, i64, f64)>, Vec<RejectReason>) {
        let reg = registry();
        let mut d = Decoder::new(&sub(extra)).unwrap();
        let mut batch = Batch::default();
        let mut rejects = Vec::new();
        d.decode(&reg, topic, payload.as_bytes(), NOW, &mut batch, &mut rejects);
        (batch.samples.iter().map(|s| (s.point.0, s.ts, s.value)).collect(), rejects.iter().map(|r| r.reason).collect())
    }

    use RejectReason::*;

    #[test]
    fn json_auto_fields() {
        assert_eq!(
            check("", "park/g1/m1/x", r#"{"ua": 229.5, "ia": "12.5", "sn": "x"}"#),
            (vec![(0, NOW, 229.5), (1, NOW, 12.5)], vec![])
        );
        assert_eq!(check("", "park/g1/m1/x", r#"{"foo": 1}"#), (vec![], vec![NoValues]));
        assert_eq!(check("", "park/g1/m1/x", r#"{"ua": true}"#), (vec![(0, NOW, 1.0)], vec![]));
    }

    #[test]
    fn json_fields_with_pointer_scale_and_timestamp() {
        let extra = "fields = [{ point = \"ua\", pointer = \"/d/u\", scale = 0.1 }, { point = \"rc\", offset = -1 }]\ntimestamp = { pointer = \"/t\", unit = \"s\" }";
        let t = NOW / 1_000_000_000;
        let (samples, rejects) =
            check(extra, "park/g1/m1/x", &format!(r#"{{"t": {t}, "d": {{"u": 2295}}, "rc": 31}}"#));
        assert_eq!(samples, vec![(0, t * 1_000_000_000, 229.5), (2, t * 1_000_000_000, 30.0)]);
        assert!(rejects.is_empty());
        // One missing and one wrong-typed field: each is a reject, nothing else is lost.
        let (samples, rejects) = check(extra, "park/g1/m1/x", &format!(r#"{{"t": {t}, "d": {{"u": [1]}}}}"#));
        assert_eq!((samples, rejects), (vec![], vec![WrongType, MissingField]));
    }

    #[test]
    fn timestamps() {
        let ms = NOW / 1_000_000;
        let rfc = fmt_ns(NOW);
        let cases: Vec<(String, String, Vec<RejectReason>)> = vec![
            ("unit = \"ms\"".into(), format!(r#"{{"ts": {ms}, "ua": 1}}"#), vec![]),
            ("unit = \"ms\"".into(), format!(r#"{{"ts": {}, "ua": 1}}"#, ms + 3_600_000), vec![TimestampFuture]),
            ("unit = \"ms\"".into(), format!(r#"{{"ts": {}, "ua": 1}}"#, ms - 30 * 86_400_000), vec![TimestampPast]),
            ("unit = \"ms\"".into(), r#"{"ts": "soon", "ua": 1}"#.into(), vec![BadTimestamp]),
            ("unit = \"ms\"".into(), r#"{"ua": 1}"#.into(), vec![MissingField]),
            ("unit = \"ns\"".into(), r#"{"ts": 1e300, "ua": 1}"#.into(), vec![BadTimestamp]),
            // Far enough back that the distance to the clock does not fit in an i64 of nanoseconds.
            ("unit = \"s\"".into(), r#"{"ts": -9000000000, "ua": 1}"#.into(), vec![TimestampPast]),
            ("unit = \"ns\"".into(), format!(r#"{{"ts": {}, "ua": 1}}"#, i64::MIN), vec![TimestampPast]),
            ("unit = \"ns\"".into(), format!(r#"{{"ts": {}, "ua": 1}}"#, i64::MAX), vec![TimestampFuture]),
            ("unit = \"rfc3339\"".into(), format!(r#"{{"ts": "{rfc}", "ua": 1}}"#), vec![]),
            ("unit = \"rfc3339\"".into(), r#"{"ts": "2026-13-01T00:00:00Z", "ua": 1}"#.into(), vec![BadTimestamp]),
        ];
        for (unit, payload, expected) in cases {
            let extra = format!("timestamp = {{ pointer = \"/ts\", {unit} }}");
            let (samples, rejects) = check(&extra, "park/g1/m1/x", &payload);
            assert_eq!(rejects, expected, "{unit} {payload}");
            if expected.is_empty() {
                assert_eq!(samples, vec![(0, NOW, 1.0)], "{unit} {payload}");
            }
        }
    }

    #[test]
    fn bad_messages() {
        let cases = [
            ("park/g1/m1/x", "{\"ua\": ", vec![MalformedJson]),
            ("park/g1/m1/x", "{\"ua\": NaN}", vec![MalformedJson]),
            ("park/g1/m1/x", "{\"ua\": \"NaN\"}", vec![NonFinite, NoValues]),
            ("park/g1/m1/x", "{\"ua\": 1e400}", vec![MalformedJson]),
            ("park/g1/m1/x", "{\"ua\": null}", vec![WrongType, NoValues]),
            ("park/g1/zz/x", "{\"ua\": 1}", vec![UnknownDevice]),
            ("park/g2/m1/x", "{\"ua\": 1}", vec![GridMismatch]),
            ("park/g1/m1/x", "[1, 2]", vec![NoValues]),
        ];
        for (topic, payload, expected) in cases {
            assert_eq!(check("", topic, payload).1, expected, "{payload}");
        }
        let big = format!("{{\"ua\": 1, \"pad\": \"{}\"}}", "x".repeat(100));
        assert_eq!(check("max_payload_bytes = 64", "park/g1/m1/x", &big).1, vec![TooLarge]);
    }

    #[test]
    fn optional_fields_alone_never_vanish() {
        let extra =
            "fields = [{ point = \"ua\", optional = true }, { point = \"ia\", pointer = \"/i\", optional = true }]";
        assert_eq!(check(extra, "park/g1/m1/x", r#"{"i": 2}"#), (vec![(1, NOW, 2.0)], vec![]));
        // A partial update without any of the fields is still one reject, not a silent drop.
        assert_eq!(check(extra, "park/g1/m1/x", r#"{"other": 2}"#), (vec![], vec![NoValues]));
        assert_eq!(check(extra, "park/g1/m1/x", "null"), (vec![], vec![NoValues]));
        // A field that was there but wrong is reject enough.
        assert_eq!(check(extra, "park/g1/m1/x", r#"{"i": "x"}"#), (vec![], vec![WrongType]));
    }

    #[test]
    fn bare_numbers() {
        let reg = registry();
        let s: Subscription =
            toml::from_str("broker = \"b\"\ntopic = \"p/{device}/{point}\"\nformat = \"number\"").unwrap();
        let mut d = Decoder::new(&s).unwrap();
        let mut batch = Batch::default();
        let mut rejects = Vec::new();
        for (topic, payload) in
            [("p/m1/ia", " 12.5\n"), ("p/m1/rc", "true"), ("p/m1/ua", "abc"), ("p/m1/ua", "inf"), ("p/m1/nope", "1")]
        {
            d.decode(&reg, topic, payload.as_bytes(), NOW, &mut batch, &mut rejects);
        }
        let got: Vec<(u32, f64)> = batch.samples.iter().map(|s| (s.point.0, s.value)).collect();
        assert_eq!(got, vec![(1, 12.5), (2, 1.0)]);
        let reasons: Vec<_> = rejects.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, vec![MalformedNumber, NonFinite, UnknownPoint]);
    }

    #[test]
    fn events_carry_kind_and_attributes() {
        let reg = registry();
        let s: Subscription = toml::from_str("broker = \"b\"\ntopic = \"park/{grid}/access/{device}/event\"\nformat = \"event\"\ntimestamp = { pointer = \"/ts\", unit = \"ms\" }").unwrap();
        let mut d = Decoder::new(&s).unwrap();
        let mut batch = Batch::default();
        let mut rejects = Vec::new();
        let ms = NOW / 1_000_000;
        let payload = format!(r#"{{"ts": {ms}, "event": "door_forced", "door": "D1"}}"#);
        d.decode(&reg, "park/g1/access/d1/event", payload.as_bytes(), NOW, &mut batch, &mut rejects);
        d.decode(
            &reg,
            "park/g1/access/d1/event",
            format!(r#"{{"ts": {ms}, "door": "D1"}}"#).as_bytes(),
            NOW,
            &mut batch,
            &mut rejects,
        );
        d.decode(&reg, "park/g1/access/d1/event", b"\"door_forced\"", NOW, &mut batch, &mut rejects);
        assert_eq!(batch.events.len(), 1);
        let e = &batch.events[0];
        assert_eq!((e.kind.as_str(), e.ts), ("door_forced", NOW));
        assert_eq!(serde_json::Value::Object(e.attributes.clone()), serde_json::json!({"door": "D1"}));
        let reasons: Vec<_> = rejects.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, vec![MissingField, WrongType]);
    }

    #[test]
    fn topic_cache_is_bounded() {
        let reg = registry();
        let mut d = Decoder::new(&sub("")).unwrap();
        let mut batch = Batch::default();
        let mut rejects = Vec::new();
        for _ in 0..3 {
            d.decode(&reg, "park/g1/m1/x", b"{\"ua\": 1}", NOW, &mut batch, &mut rejects);
        }
        assert_eq!(d.cache.len(), 1);
        // Unknown devices are never cached: a publisher inventing names cannot fill memory.
        for i in 0..100 {
            d.decode(&reg, &format!("park/g1/z{i}/x"), b"{\"ua\": 1}", NOW, &mut batch, &mut rejects);
        }
        assert_eq!(d.cache.len(), 1);
    }
}
