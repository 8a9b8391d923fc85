//! Every vector of `tests/vectors/dlt645-public.txt` against what its bytes say, worked
//! out by hand below; then the value formats, the answers and the properties.

use proptest::prelude::*;

use super::*;

/// What a vector must decode to.
enum Expect {
    /// A request: address (as printed), control, identifier.
    Request(&'static str, u8, Option<u32>),
    /// A frame with another control (not read by the gateway): address, control, data after -33H.
    Other(&'static str, u8, &'static [u8]),
    /// An answer to an 11H read: address, identifier, value.
    Value(&'static str, u32, f64),
    /// Refused by the frame layer for this reason.
    BadFrame(&'static str),
    /// A valid frame whose value is refused.
    BadValue(ValueError),
}

/// The expectations, by vector name. How each was worked out:
/// - `rs645_req`: FE×4, then 68 | 02 00 31 08 22 20 (address 202208310002, low byte first) | 68 | 11 |
///   L=04 | 32 55 B3 35 − 33H = FF 22 80 02, low byte first: DI 02 80 22 FF | CS D1 = sum of
///   68…35 mod 256 | 16.
/// - `600888_readaddr`: FE×4, 68 AA×6 68 13 00 DF 16: read address to the wildcard, no data.
/// - `600888_writeaddr`: control 15 (not a read), L=06, 45 67 89 AB 43 46 − 33H = 12 34 56 78 10 13
///   (the new address); address field 12 34 56 78 10 12 read high byte first is 121078563412; a
///   valid frame, but no answer to anything the gateway asks.
/// - `java161_req_E`: 11 to 000000000161 with 33 33 34 33 − 33H = 00 00 01 00 → DI 00 01 00 00.
/// - `java161_resp_E`: 91, L=08: DI 00 01 00 00, then 59 33 33 33 − 33H = 26 00 00 00, low byte first
///   00000026 with two decimals (XXXXXX.XX) = 0.26 kWh.
/// - `java161_req_Ua`: 33 34 34 35 − 33H = 00 01 01 02 → DI 02 01 01 00 (phase A voltage).
/// - `java161_resp_Ua`: 91, L=06: DI 02 01 01 00, 34 43 − 33H = 01 10 → 1001, one decimal = 100.1 V
///   (the example of protocols.md).
/// - `j3703_resp_Ua`: sum of 68…56 mod 256 is DA, the frame says B6: refused for its checksum.
/// - `wpf_resp`: checksum F9 right; DI 00 01 00 00, 33 33 41 33 − 33H = 00 00 0E 00: nibble E is not
///   BCD, refused (value byte 2).
fn expectations() -> Vec<(&'static str, Expect)> {
    vec![
        ("rs645_req", Expect::Request("202208310002", 0x11, Some(0x0280_22FF))),
        ("600888_readaddr", Expect::Request("AAAAAAAAAAAA", 0x13, None)),
        ("600888_writeaddr", Expect::Other("121078563412", 0x15, &[0x12, 0x34, 0x56, 0x78, 0x10, 0x13])),
        ("java161_req_E", Expect::Request("000000000161", 0x11, Some(0x0001_0000))),
        ("java161_resp_E", Expect::Value("000000000161", 0x0001_0000, 0.26)),
        ("java161_req_Ua", Expect::Request("000000000161", 0x11, Some(0x0201_0100))),
        ("java161_resp_Ua", Expect::Value("000000000161", 0x0201_0100, 100.1)),
        ("j3703_resp_Ua", Expect::BadFrame("checksum")),
        ("wpf_resp", Expect::BadValue(ValueError::NotBcd { index: 2, byte: 0x0E })),
    ]
}

fn vectors() -> Vec<(String, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/dlt645-public.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, hex) = l.split_once('|').expect("name|hex");
            let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (name.to_owned(), bytes)
        })
        .collect()
}

#[test]
fn every_public_vector() {
    let table = expectations();
    let vectors = vectors();
    assert_eq!(vectors.len(), table.len(), "a vector without an expectation, or the reverse");
    for (name, bytes) in &vectors {
        let (_, expect) =
            table.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("vector {name} has no expectation"));
        let decoded = decode(bytes);
        if let Expect::BadFrame(reason) = expect {
            let e = decoded.expect_err(name);
            assert_eq!(e.reason(), *reason, "{name}: {e}");
            // A stream holding it finds no frame either.
            assert!(matches!(scan(bytes), Scan::Need { .. }), "{name}");
            continue;
        }
        let frame = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
        // The stream reader finds the same frame, and the encoder gives back the same bytes.
        let pre = bytes.iter().take_while(|&&b| b == PREAMBLE).count();
        assert_eq!(encode(&frame, pre), *bytes, "{name}: re-encoded");
        assert!(
            matches!(scan(bytes), Scan::Frame { ref frame, end, .. } if *frame == frame.clone() && end == bytes.len())
        );
        match expect {
            Expect::Request(addr, control, di) => {
                assert_eq!(frame.address.to_string(), *addr, "{name}");
                assert_eq!(frame.control, *control, "{name}");
                assert_eq!(frame.control & ANSWER_BIT, 0, "{name}: a request");
                match di {
                    Some(di) => {
                        assert_eq!(frame, read_request(frame.address, Di(*di)), "{name}");
                    }
                    None => assert_eq!(frame, address_request(), "{name}"),
                }
            }
            Expect::Other(addr, control, data) => {
                assert_eq!(frame.address.to_string(), *addr, "{name}");
                assert_eq!(frame.control, *control, "{name}");
                assert_eq!(frame.data, *data, "{name}");
                // Not an answer to a read.
                let r = reply(&frame, READ, frame.address, None);
                assert!(matches!(r, Err(ReplyError::Control { found: 0x15, .. })), "{name}: {r:?}");
            }
            Expect::Value(addr, di, value) => {
                let a = Address::parse(addr).unwrap();
                assert_eq!(frame.address, a, "{name}");
                let Ok(Reply::Data { di: got, value: raw, more: false }) = reply(&frame, READ, a, Some(Di(*di))) else {
                    panic!("{name}: not a data answer")
                };
                assert_eq!(got, Di(*di));
                let k = known(got).expect("a known identifier");
                let v = decode_value(&raw, k.format).unwrap();
                assert!((v - value).abs() < 1e-9, "{name}: {v} != {value}");
            }
            Expect::BadValue(err) => {
                let Ok(Reply::Data { di, value: raw, .. }) = reply(&frame, READ, frame.address, None) else {
                    panic!("{name}: not a data answer")
                };
                let k = known(di).expect("a known identifier");
                assert_eq!(decode_value(&raw, k.format), Err(err.clone()), "{name}");
            }
            Expect::BadFrame(_) => unreachable!(),
        }
    }
}

#[test]
fn frame_faults_are_named() {
    let good = encode(&read_request(Address::parse("000000000161").unwrap(), Di(0x0201_0100)), 0);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 1].to_vec(), "truncated"),
        ([vec![0xFE; 5], good.clone()].concat(), "preamble"),
        ([&[0x00][..], &good].concat(), "no_start"),
        (
            {
                let mut b = good.clone();
                b[7] = 0x00;
                b
            },
            "no_start",
        ),
        (
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 1] = 0x17;
                b
            },
            "no_end",
        ),
        (
            {
                let mut b = good.clone();
                b[11] ^= 0x01;
                b
            },
            "checksum",
        ),
        ([good.clone(), vec![0x00]].concat(), "trailing"),
        (
            {
                // Address byte 0x1A is not BCD (checksum made right).
                let mut b = good.clone();
                b[1] = 0x1A;
                let n = b.len();
                b[n - 2] = checksum(&b[..n - 2]);
                b
            },
            "address",
        ),
    ];
    for (bytes, reason) in cases {
        let e = decode(&bytes).expect_err(reason);
        assert_eq!(e.reason(), reason, "{e}");
    }
    // Four wake-up bytes are fine.
    assert!(decode(&[vec![0xFE; 4], good].concat()).is_ok());
}

#[test]
fn formats_by_hand() {
    let cases: &[(&[u8], Format, Result<f64, ValueError>)] = &[
        // 0x12345678 low byte first: 78 56 34 12 → 12345678 → 123456.78 kWh.
        (&[0x78, 0x56, 0x34, 0x12], f(4, 2, false), Ok(123_456.78)),
        // Current −1.234 A: 34 12 80 (sign in the top bit of the most significant byte).
        (&[0x34, 0x12, 0x80], f(3, 3, true), Ok(-1.234)),
        // Power 79.9999 kW: 99 99 79.
        (&[0x99, 0x99, 0x79], f(3, 4, true), Ok(79.9999)),
        // Power factor −0.875: 75 88 → 0x8875 → sign, 875 → −0.875.
        (&[0x75, 0x88], f(2, 3, true), Ok(-0.875)),
        // Unsigned: the top bit is a digit, 0x80 → 8 → 80.0 V.
        (&[0x00, 0x08], f(2, 1, false), Ok(80.0)),
        (&[0x00, 0x80], f(2, 1, false), Ok(800.0)),
        (&[0x0A, 0x00], f(2, 1, false), Err(ValueError::NotBcd { index: 0, byte: 0x0A })),
        (&[0x00, 0xA0], f(2, 1, false), Err(ValueError::NotBcd { index: 1, byte: 0xA0 })),
        // Signed: after the sign bit, 0x7A still holds A.
        (&[0x00, 0xFA], f(2, 1, true), Err(ValueError::NotBcd { index: 1, byte: 0xFA })),
        (&[0x00], f(2, 1, false), Err(ValueError::Length { expected: 2, found: 1 })),
    ];
    for (raw, fmt, want) in cases {
        let got = decode_value(raw, *fmt);
        match (&got, want) {
            (Ok(a), Ok(b)) => assert!((a - b).abs() < 1e-9, "{raw:02X?}: {a} != {b}"),
            _ => assert_eq!(&got, want, "{raw:02X?}"),
        }
    }
    assert_eq!(encode_value(-1.234, f(3, 3, true)), Ok(vec![0x34, 0x12, 0x80]));
    assert_eq!(encode_value(100.1, f(2, 1, false)), Ok(vec![0x01, 0x10]));
    assert!(encode_value(-1.0, f(2, 1, false)).is_err());
    assert!(encode_value(1000.0, f(2, 1, false)).is_err());
    assert!(encode_value(f64::NAN, f(2, 1, false)).is_err());
}

#[test]
fn abnormal_answers_are_named() {
    let a = Address::parse("000000000161").unwrap();
    let frame = decode(&encode(&abnormal_answer(a, ERR_NO_DATA), 2)).unwrap();
    assert_eq!(frame.control, 0xD1);
    let r = reply(&frame, READ, a, Some(Di(0x0201_0100))).unwrap();
    assert_eq!(r, Reply::Abnormal(ErrorBits(0x02)));
    assert_eq!(ErrorBits(0x02).to_string(), "无请求数据 (no such data)");
    assert_eq!(ErrorBits(0x04).to_string(), "密码错误或未授权 (password error)");
    assert_eq!(
        ErrorBits(0x07).to_string(),
        "无请求数据 (no such data), 密码错误或未授权 (password error), 错误字 0x01 (error bits 0x01)"
    );
}

#[test]
fn answers_are_matched_to_their_request() {
    let a = Address::parse("000000000161").unwrap();
    let b = Address::parse("000000000162").unwrap();
    let ua = Di(0x0201_0100);
    let more = data_answer(a, ua, &[0x01, 0x10], true);
    assert_eq!(more.control, 0xB1);
    assert_eq!(reply(&more, READ, a, Some(ua)), Ok(Reply::Data { di: ua, value: vec![0x01, 0x10], more: true }));
    let other = data_answer(b, ua, &[0x01, 0x10], false);
    assert!(matches!(reply(&other, READ, a, Some(ua)), Err(ReplyError::Address { .. })));
    let wrong_di = data_answer(a, Di(0x0201_0200), &[0x01, 0x10], false);
    assert!(matches!(reply(&wrong_di, READ, a, Some(ua)), Err(ReplyError::Di { .. })));
    // Our own request echoed back is not an answer.
    assert!(matches!(reply(&read_request(a, ua), READ, a, Some(ua)), Err(ReplyError::Control { .. })));
    let addr = address_answer(a);
    assert_eq!(addr.control, 0x93);
    assert_eq!(reply(&addr, READ_ADDRESS, Address::WILDCARD, None), Ok(Reply::Address(a)));
}

#[test]
fn addresses_and_identifiers_parse() {
    let a = Address::parse("000000000161").unwrap();
    assert_eq!(a.0, [0x61, 0x01, 0, 0, 0, 0]);
    assert_eq!(a.to_string(), "000000000161");
    assert_eq!(Address::parse("aaaaaaaaaaaa").unwrap(), Address::WILDCARD);
    assert!(Address::parse("00000000016").is_err());
    assert!(Address::parse("00000000016x").is_err());
    assert_eq!(Di::parse("02 01 01 00"), Ok(Di(0x0201_0100)));
    assert_eq!(Di::parse("0x00010000"), Ok(Di(0x0001_0000)));
    assert_eq!(Di(0x0201_0100).to_wire(), [0x00, 0x01, 0x01, 0x02]);
    assert!(Di::parse("020101").is_err());
}

#[test]
fn scan_skips_noise_and_broken_frames() {
    let a = Address::parse("000000000161").unwrap();
    let good = encode(&data_answer(a, Di(0x0201_0100), &[0x01, 0x10], false), 4);
    let mut broken = good.clone();
    broken[20] ^= 0xFF;
    // Noise holding a lone 68, a frame with a bad checksum, then the good frame.
    let buf = [&[0x00, 0x68, 0x12][..], &broken, &good].concat();
    let Scan::Frame { frame, end, .. } = scan(&buf) else { panic!("no frame found") };
    assert_eq!(end, buf.len());
    assert_eq!(frame.data[4..], [0x01, 0x10]);
    // A half frame is kept for more bytes.
    assert_eq!(scan(&good[..10]), Scan::Need { keep_from: 4 });
    assert_eq!(scan(&[0xFE, 0xFE, 0x00]), Scan::Need { keep_from: 3 });
}

fn frames() -> impl Strategy<Value = (Frame, usize)> {
    (
        prop::array::uniform6(prop_oneof![(0u8..100).prop_map(|x| ((x / 10) << 4) | (x % 10)), Just(0xAA)]),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..=255),
        0usize..=4,
    )
        .prop_map(|(address, control, data, pre)| (Frame { address: Address(address), control, data }, pre))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
        match scan(&bytes) {
            Scan::Frame { start, end, .. } => prop_assert!(start < end && end <= bytes.len()),
            Scan::Need { keep_from } => prop_assert!(keep_from <= bytes.len()),
        }
        for k in KNOWN {
            let _ = decode_value(&bytes[..bytes.len().min(usize::from(k.format.bytes))], k.format);
        }
    }

    #[test]
    fn frames_round_trip((frame, pre) in frames()) {
        let bytes = encode(&frame, pre);
        prop_assert_eq!(decode(&bytes), Ok(frame));
    }

    /// Garbage before a frame and a second frame after it: the stream reader finds both, in order.
    #[test]
    fn stream_resyncs(noise in prop::collection::vec(any::<u8>(), 0..64), (f1, p1) in frames(), (f2, p2) in frames()) {
        let mut buf = noise.clone();
        buf.extend(encode(&f1, p1));
        let second = encode(&f2, p2);
        buf.extend(&second);
        let mut found = Vec::new();
        let mut rest: &[u8] = &buf;
        while let Scan::Frame { frame, end, .. } = scan(rest) {
            found.push(frame);
            rest = &rest[end..];
        }
        // The noise may itself hold a valid frame by chance; the two real ones come last, in order.
        prop_assert!(found.len() >= 2, "found {}", found.len());
        prop_assert_eq!(&found[found.len() - 1], &f2);
        // The first real frame is found unless noise framed bytes that overlap it.
        if !noise.contains(&START) {
            prop_assert_eq!(&found[0], &f1);
        }
    }

    #[test]
    fn values_round_trip(int in 0u64..100_000_000, neg in any::<bool>(), k in prop::sample::select(KNOWN)) {
        let fmt = k.format;
        let digits = 2 * u32::from(fmt.bytes) - u32::from(fmt.signed);
        let int = int % 10u64.pow(digits);
        let mut v = int as f64 / 10f64.powi(i32::from(fmt.decimals));
        if neg && fmt.signed { v = -v; }
        let raw = encode_value(v, fmt).unwrap();
        let back = decode_value(&raw, fmt).unwrap();
        prop_assert!((back - v).abs() < 1e-9, "{v} -> {raw:02X?} -> {back}");
        // And through a whole answer frame on the line.
        let a = Address::parse("000000000161").unwrap();
        let frame = decode(&encode(&data_answer(a, k.di, &raw, false), 4)).unwrap();
        let Ok(Reply::Data { value, .. }) = reply(&frame, READ, a, Some(k.di)) else { panic!() };
        prop_assert_eq!(value, raw);
    }
}
