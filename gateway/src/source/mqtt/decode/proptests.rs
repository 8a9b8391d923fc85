//! Properties of the payload decoder: no input panics, every message is accounted for (samples, an
//! event, or at least one reject), and well-formed payloads decode to exactly what was sent.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

use super::tests::{registry, NOW};

const S: i64 = 1_000_000_000;

const UNITS: [&str; 5] = ["s", "ms", "us", "ns", "rfc3339"];

/// Every payload style the config supports, as the subscription's TOML body.
fn subscription() -> impl Strategy<Value = String> {
    let ts = prop_oneof![
        Just(String::new()),
        prop::sample::select(&UNITS[..]).prop_map(|u| format!("timestamp = {{ pointer = \"/ts\", unit = \"{u}\" }}\n")),
        prop::sample::select(&UNITS[..])
            .prop_map(|u| format!("timestamp = {{ pointer = \"/meta/t\", unit = \"{u}\" }}\n")),
    ];
    let field = (
        prop::sample::select(&["ua", "ia", "rc", "nope"][..]),
        prop::option::of(prop::sample::select(&["/d/u", "/ua", "/a/0", "/~1x", ""][..])),
        any::<bool>(),
    )
        .prop_map(|(point, pointer, optional)| {
            let pointer = pointer.map(|p| format!(", pointer = \"{p}\"")).unwrap_or_default();
            format!("{{ point = \"{point}\"{pointer}, scale = 0.1, offset = -1.0, optional = {optional} }}")
        });
    let fields = prop::collection::vec(field, 1..4).prop_map(|f| format!("fields = [{}]\n", f.join(", ")));
    let max = prop_oneof![Just(String::new()), Just("max_payload_bytes = 64\n".to_owned())];
    prop_oneof![
        // JSON, top-level keys named like the device's points.
        (ts.clone(), max.clone()).prop_map(|(t, m)| format!("topic = \"park/{{grid}}/{{device}}/x\"\n{t}{m}")),
        // JSON with pointer fields, scale, offset and optional fields.
        (fields, ts.clone()).prop_map(|(f, t)| format!("topic = \"park/{{grid}}/{{device}}/x\"\n{f}{t}")),
        // Bare numbers, point from the topic or fixed.
        Just("topic = \"p/{device}/{point}\"\nformat = \"number\"\n".to_owned()),
        Just("topic = \"fixed/#\"\nformat = \"number\"\ndevice = \"m1\"\npoint = \"ia\"\n".to_owned()),
        // Events: kind from the topic, from the payload, or fixed.
        ts.clone().prop_map(|t| format!("topic = \"park/{{grid}}/access/{{device}}/{{kind}}\"\nformat = \"event\"\n{t}")),
        ts.clone().prop_map(|t| format!("topic = \"park/{{grid}}/access/{{device}}/event\"\nformat = \"event\"\n{t}")),
        ts.prop_map(|t| {
            format!("topic = \"park/{{grid}}/access/{{device}}/event\"\nformat = \"event\"\nevent_kind = \"alarm\"\nkind_pointer = \"/k/0\"\n{t}")
        }),
    ]
}

fn decoder(body: &str) -> Decoder {
    let sub: Subscription = toml::from_str(&format!("broker = \"b\"\n{body}")).unwrap();
    Decoder::new(&sub).unwrap()
}

/// Topics near the patterns above (so names resolve and payloads get decoded), and arbitrary ones.
fn topic() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        prop::sample::select(
            &[
                "park", "p", "fixed", "g1", "g2", "m1", "d1", "zz", "ua", "ia", "rc", "x", "access", "event", "",
                "$SYS", "+", "#"
            ][..]
        )
        .prop_map(str::to_owned),
        "\\PC{0,6}",
    ];
    let known = prop::sample::select(
        &[
            "park/g1/m1/x",
            "park/g1/d1/x",
            "park/g2/m1/x",
            "p/m1/ua",
            "p/m1/rc",
            "p/d1/ua",
            "fixed/a/b",
            "park/g1/access/d1/event",
            "park/g1/access/d1/door_forced",
            "park/g1/access/m1/event",
        ][..],
    );
    prop_oneof![
        4 => known.prop_map(str::to_owned),
        3 => prop::collection::vec(level, 1..7).prop_map(|l| l.join("/")),
        1 => any::<String>(),
    ]
}

/// JSON-ish values with the keys the subscriptions read, and the odd stranger.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(
            &["ua", "ia", "rc", "ts", "t", "meta", "d", "u", "a", "event", "k", "door", "~1x", ""][..]
        )
        .prop_map(str::to_owned),
        "\\PC{0,4}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Integers of every magnitude, so timestamps in every unit reach the ends of the i64 range.
        (any::<i64>(), 0u32..4).prop_map(|(x, k)| Value::from(x / 1000i64.pow(k))),
        any::<f64>().prop_map(Value::from),
        (NOW / S - 100_000..NOW / S + 100_000).prop_map(Value::from),
        (NOW / 1_000_000 - 100_000..NOW / 1_000_000 + 100_000).prop_map(Value::from),
        (i64::MIN..=i64::MAX).prop_map(|ns| Value::from(fmt_ns(ns))),
        prop::sample::select(&["12.5", " 3 ", "NaN", "inf", "-1e400", "door_forced", "", "2026-13-01T00:00:00Z"][..])
            .prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A payload whose timestamp, in any unit, may be anywhere up to the ends of the i64 range of ns.
fn stamped_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (prop_oneof![any::<i64>(), i64::MIN..i64::MIN / 2, i64::MAX / 2..=i64::MAX], 0u32..4)
            .prop_map(|(ns, k)| (ns / 1000i64.pow(k)).to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        (i64::MIN..=i64::MAX).prop_map(|ns| format!("\"{}\"", fmt_ns(ns))),
    ]
    .prop_map(|t| format!(r#"{{"ts": {t}, "meta": {{"t": {t}}}, "ua": 1, "event": "e"}}"#).into_bytes())
}

/// A payload: JSON text (whole, truncated or with a byte changed), a bare number, or arbitrary bytes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let json = (json_value(), any::<prop::sample::Index>(), 0u8..4, any::<u8>()).prop_map(|(v, at, how, byte)| {
        let mut b = serde_json::to_vec(&v).unwrap();
        if !b.is_empty() {
            let i = at.index(b.len());
            match how {
                0 => b.truncate(i),
                1 => b[i] = byte,
                _ => {}
            }
        }
        b
    });
    prop_oneof![
        4 => json,
        2 => stamped_payload(),
        1 => prop::sample::select(&["12.5", " -3\n", "true", "false", "1e400", "NaN", "inf", "", " ", "0x10"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => any::<f64>().prop_map(|f| f.to_string().into_bytes()),
        2 => prop::collection::vec(any::<u8>(), 0..128),
    ]
}

/// What one message did.
struct Outcome {
    returned: usize,
    samples: Vec<Sample>,
    events: usize,
    rejects: Vec<Reject>,
}

fn decode_one(d: &mut Decoder, reg: &Registry, topic: &str, payload: &[u8]) -> Outcome {
    // Start with something in the batch: the decoder appends, it never touches what is there.
    let mut batch = Batch::default();
    batch.samples.push(Sample { point: PointId(0), quality: Quality::Good, ts: 1, value: 7.0 });
    let mut rejects = vec![reject(RejectReason::TooLarge, "earlier")];
    let returned = d.decode(reg, topic, payload, NOW, &mut batch, &mut rejects);
    assert_eq!(batch.samples[0].value, 7.0);
    assert_eq!(rejects[0].detail, "earlier");
    Outcome { returned, samples: batch.samples.split_off(1), events: batch.events.len(), rejects: rejects.split_off(1) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any topic and any payload: no panic, the count returned is what was added, and a message that
    /// added nothing left at least one reject saying why. What is accepted is finite, good and on time.
    #[test]
    fn every_message_is_accounted_for(body in subscription(), msgs in prop::collection::vec((topic(), payload()), 1..6)) {
        let reg = registry();
        let mut d = decoder(&body);
        let sub: Subscription = toml::from_str(&format!("broker = \"b\"\n{body}")).unwrap();
        for (topic, payload) in &msgs {
            let o = decode_one(&mut d, &reg, topic, payload);
            prop_assert_eq!(o.returned, o.samples.len() + o.events);
            if o.returned == 0 {
                prop_assert!(!o.rejects.is_empty(), "{topic:?} {:?}: nothing added and no reject", String::from_utf8_lossy(payload));
            }
            for r in &o.rejects {
                prop_assert!(!r.detail.is_empty());
            }
            for s in &o.samples {
                prop_assert!(s.value.is_finite());
                prop_assert_eq!(s.quality, Quality::Good);
                prop_assert!(s.ts <= NOW + sub.max_future_secs as i64 * S && s.ts >= NOW - sub.max_past_secs as i64 * S);
                prop_assert!((s.point.0 as usize) < reg.points.len());
            }
        }
    }

    /// Timestamps of any magnitude in every unit, for samples and events: a sample or event on time,
    /// or exactly one reject about the timestamp.
    #[test]
    fn any_timestamp_is_accepted_or_rejected(unit in prop::sample::select(&UNITS[..]), event in any::<bool>(), payload in stamped_payload()) {
        let reg = registry();
        let (body, topic) = if event {
            (format!("topic = \"park/{{grid}}/access/{{device}}/event\"\nformat = \"event\"\ntimestamp = {{ pointer = \"/ts\", unit = \"{unit}\" }}\n"), "park/g1/access/d1/event")
        } else {
            (format!("topic = \"park/{{grid}}/{{device}}/x\"\ntimestamp = {{ pointer = \"/meta/t\", unit = \"{unit}\" }}\n"), "park/g1/m1/x")
        };
        let mut d = decoder(&body);
        let o = decode_one(&mut d, &reg, topic, &payload);
        if o.returned == 0 {
            let reasons: Vec<_> = o.rejects.iter().map(|r| r.reason).collect();
            prop_assert!(
                matches!(reasons[..], [RejectReason::BadTimestamp | RejectReason::TimestampFuture | RejectReason::TimestampPast | RejectReason::MalformedJson]),
                "{:?}", reasons
            );
        } else {
            prop_assert_eq!(o.returned, 1);
            let ts = o.samples.first().map(|s| s.ts).unwrap_or(NOW);
            prop_assert!((NOW - 7 * 86_400 * S..=NOW + 300 * S).contains(&ts));
        }
    }

    /// The same message decodes the same way whether or not its topic is already in the cache.
    #[test]
    fn cache_changes_nothing(body in subscription(), topic in topic(), payload in payload()) {
        let reg = registry();
        let mut d = decoder(&body);
        let first = decode_one(&mut d, &reg, &topic, &payload);
        let second = decode_one(&mut d, &reg, &topic, &payload);
        let key = |o: &Outcome| (o.returned, o.samples.iter().map(|s| (s.point.0, s.ts, s.value.to_bits())).collect::<Vec<_>>(), o.events, o.rejects.clone());
        prop_assert_eq!(key(&first), key(&second));
    }
}

/// A raw value `m × 10^e` that every correct float parser reads to the same f64 (one rounding).
fn raw_number() -> impl Strategy<Value = (String, f64)> {
    (-(1i64 << 53)..(1i64 << 53), -22i32..=22, any::<bool>()).prop_map(|(m, e, quoted)| {
        let text = if e == 0 { m.to_string() } else { format!("{m}e{e}") };
        let value: f64 = text.parse().unwrap();
        (if quoted { format!("\"{text}\"") } else { text }, value)
    })
}

/// A timestamp within the accepted window, as written in a payload of each unit, and its value in ns.
fn stamp(unit: &'static str) -> impl Strategy<Value = (Value, i64)> {
    (-86_400 * S..300 * S).prop_map(move |delta| {
        let ns = NOW + delta;
        match unit {
            "s" => (json!(ns / S), ns / S * S),
            "ms" => (json!(ns / 1_000_000), ns / 1_000_000 * 1_000_000),
            "us" => (json!(ns / 1_000), ns / 1_000 * 1_000),
            "ns" => (json!(ns), ns),
            _ => (
                json!(chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                ns,
            ),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A payload built from random finite values decodes to exactly those values, each through its
    /// field's scale and offset, at the payload's timestamp in every unit.
    #[test]
    fn json_fields_round_trip(
        raws in prop::collection::vec(raw_number(), 3),
        scales in prop::collection::vec((-1.0e3f64..1.0e3, -1.0e6f64..1.0e6), 3),
        (unit, (ts_json, ts)) in prop::sample::select(&UNITS[..]).prop_flat_map(|u| (Just(u), stamp(u))),
        stamped in any::<bool>(),
    ) {
        let names = ["ua", "ia", "rc"];
        let pointers = ["/data/u", "/data/list/1", "/r~1c"];
        let mut fields = Vec::new();
        for i in 0..3 {
            let (scale, offset) = scales[i];
            fields.push(format!("{{ point = \"{}\", pointer = \"{}\", scale = {scale:?}, offset = {offset:?} }}", names[i], pointers[i]));
        }
        let (ts_json, ts, unit_line) = if stamped {
            (Some(ts_json), ts, format!("timestamp = {{ pointer = \"/meta/t\", unit = \"{unit}\" }}\n"))
        } else {
            (None, NOW, String::new())
        };
        let body = format!("topic = \"park/{{grid}}/{{device}}/x\"\nfields = [{}]\n{unit_line}", fields.join(", "));
        let text = format!(
            r#"{{"data": {{"u": {}, "list": [0, {}]}}, "r/c": {}, "meta": {{"t": {}}}, "extra": "x"}}"#,
            raws[0].0, raws[1].0, raws[2].0, ts_json.unwrap_or(Value::Null)
        );
        let reg = registry();
        let mut d = decoder(&body);
        let o = decode_one(&mut d, &reg, "park/g1/m1/x", text.as_bytes());
        prop_assert!(o.rejects.is_empty(), "{text}: {:?}", o.rejects);
        let got: Vec<(u32, i64, u64)> = o.samples.iter().map(|s| (s.point.0, s.ts, s.value.to_bits())).collect();
        let expected: Vec<(u32, i64, u64)> =
            (0..3).map(|i| (i as u32, ts, (raws[i].1 * scales[i].0 + scales[i].1).to_bits())).collect();
        prop_assert_eq!(got, expected, "{}", text);
    }

    /// Auto fields: top-level keys named like the device's points, unscaled.
    #[test]
    fn json_auto_fields_round_trip(raws in prop::collection::vec(prop::option::of(raw_number()), 3)) {
        let names = ["ua", "ia", "rc"];
        let mut members = vec!["\"sn\": \"A-1\"".to_owned()];
        let mut expected = Vec::new();
        for (i, raw) in raws.iter().enumerate() {
            if let Some((text, value)) = raw {
                members.push(format!("\"{}\": {text}", names[i]));
                expected.push((i as u32, value.to_bits()));
            }
        }
        let reg = registry();
        let mut d = decoder("topic = \"park/{grid}/{device}/x\"\n");
        let text = format!("{{{}}}", members.join(", "));
        let o = decode_one(&mut d, &reg, "park/g1/m1/x", text.as_bytes());
        let got: Vec<(u32, u64)> = o.samples.iter().map(|s| (s.point.0, s.value.to_bits())).collect();
        prop_assert_eq!(got, expected.clone());
        let reasons: Vec<_> = o.rejects.iter().map(|r| r.reason).collect();
        prop_assert_eq!(reasons, if expected.is_empty() { vec![RejectReason::NoValues] } else { vec![] });
    }

    /// Bare numbers decode to the value sent, for the point the topic names.
    #[test]
    fn bare_numbers_round_trip((text, value) in raw_number(), point in 0usize..3, pad in "[ \t\n]{0,2}") {
        let names = ["ua", "ia", "rc"];
        let reg = registry();
        let mut d = decoder("topic = \"p/{device}/{point}\"\nformat = \"number\"\n");
        let payload = format!("{pad}{}{pad}", text.trim_matches('"'));
        let o = decode_one(&mut d, &reg, &format!("p/m1/{}", names[point]), payload.as_bytes());
        prop_assert!(o.rejects.is_empty());
        let got: Vec<_> = o.samples.iter().map(|s| (s.point.0, s.ts, s.value.to_bits())).collect();
        prop_assert_eq!(got, vec![(point as u32, NOW, value.to_bits())]);
    }

    /// An event keeps its kind, its time and every other attribute as sent.
    #[test]
    fn events_round_trip(
        attrs in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..5),
        kind in "[a-z_]{1,12}",
        (ts_json, ts) in stamp("ms"),
    ) {
        let reg = registry();
        let mut d = decoder("topic = \"park/{grid}/access/{device}/event\"\nformat = \"event\"\ntimestamp = { pointer = \"/ts\", unit = \"ms\" }\n");
        let mut doc: Map<String, Value> = attrs.into_iter().collect();
        doc.insert("ts".into(), ts_json);
        doc.insert("event".into(), Value::from(kind.clone()));
        let text = Value::Object(doc).to_string();
        // The attributes as the JSON parser reads the text back (it may round a float's last digit).
        let mut expected: Map<String, Value> = serde_json::from_str(&text).unwrap();
        expected.remove("ts");
        expected.remove("event");
        let mut batch = Batch::default();
        let mut rejects = Vec::new();
        let n = d.decode(&reg, "park/g1/access/d1/event", text.as_bytes(), NOW, &mut batch, &mut rejects);
        prop_assert_eq!((n, rejects.len()), (1, 0));
        let e = &batch.events[0];
        prop_assert_eq!((e.device, e.kind.as_str(), e.ts), (reg.device_id("d1").unwrap(), kind.as_str(), ts));
        prop_assert_eq!(&e.attributes, &expected);
    }
}
