//! Table tests over every HJ 212 vector in `tests/vectors/` (copied from the domain notes) and the framing's edge cases.

use std::path::PathBuf;

use super::*;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

/// Every vector of both files as (name, wire bytes). The TSV writes CR LF as `\r\n`; the capture file
/// has one frame a line, its CR LF turned into the file's line break, so CR LF is put back.
fn all_vectors() -> Vec<(String, Vec<u8>)> {
    let dir = vectors_dir();
    let tsv = std::fs::read_to_string(dir.join("hj212-public.tsv")).expect("hj212-public.tsv");
    let mut out = Vec::new();
    for line in tsv.lines().filter(|l| !l.trim().is_empty()) {
        let (name, frame) = line.split_once('\t').expect("name<TAB>frame");
        out.push((name.to_owned(), frame.replace("\\r\\n", "\r\n").into_bytes()));
    }
    let cap = std::fs::read_to_string(dir.join("hj212-field-capture-2016.txt")).expect("capture file");
    for (i, line) in cap.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        out.push((format!("capture_{}", i + 1), format!("{}\r\n", line.trim_end()).into_bytes()));
    }
    out
}

/// Frames, checks the CRC in `variant` and parses: what the server does before it looks at values.
fn decode(bytes: &[u8], variant: CrcVariant) -> Result<Packet, Reject> {
    let mut d = Deframer::new(MAX_DATA_LEN);
    d.push(bytes);
    let frame = match d.next_frame() {
        Some(Deframed::Frame { bytes, .. }) => bytes,
        Some(Deframed::Reject(r)) => return Err(r),
        None => return Err(d.finish().unwrap_or(Reject::Truncated)),
    };
    assert_eq!(d.next_frame(), None, "one frame, nothing after it");
    let p = parse(data_of(&frame).unwrap())?;
    check_crc(&frame, variant)?;
    Ok(p)
}

/// The expected outcome of each vector: its CN and MN, or why it is refused.
/// A vector's (CN, MN) when accepted.
type Outcome = Result<(&'static str, &'static str), Reject>;

const EXPECTED: &[(&str, Outcome)] = &[
    // The CRC printed with these two matches neither variant (guocay_2 is capture_1 with its
    // DataTime shortened and its length fixed, but the old CRC kept).
    ("guocay_1", Err(Reject::BadCrc)),
    ("guocay_2", Err(Reject::BadCrc)),
    ("std_appC_1062", Ok(("1062", "010000A8900016F000169DC0"))),
    ("netty_9011", Ok(("9011", "010000A8900016F000169DC0"))),
    ("validator_0178", Ok(("2011", "0873HHMZWSLH02"))),
    ("t212_0453", Ok(("2011", "010000A8900016F000169DC0"))),
    ("t212_9014", Ok(("9014", "010000A8900016F000169DC0"))),
    ("alltobs_0435", Ok(("2011", "ZLDSZ20210127"))),
    ("capture_1", Ok(("2011", "LD130133000015"))),
    ("capture_2", Ok(("2011", "LD130182000052"))),
    ("capture_3", Ok(("8013", "ZG130182201205"))),
    ("capture_4", Ok(("2051", "LD130131000211"))),
    ("capture_5", Ok(("2011", "LD130104000268"))),
    ("capture_6", Ok(("2011", "LD130102000172"))),
    ("capture_7", Ok(("2021", "ZG130102201215"))),
    ("capture_8", Ok(("2061", "LD130131000211"))),
    ("capture_9", Ok(("9015", "LD130130000155"))),
    ("capture_10", Ok(("2031", "LD130131000211"))),
    ("capture_11", Ok(("2072", "ZG130182201401"))),
    ("capture_12", Ok(("2011", "LD130182000295"))),
    ("capture_13", Ok(("2011", "LD130132000342"))),
    ("capture_14", Ok(("2011", "ZG130131201305"))),
];

#[test]
fn every_vector_is_accepted_or_refused_for_its_reason() {
    let vectors = all_vectors();
    assert_eq!(vectors.len(), EXPECTED.len(), "a vector was added or removed: extend the table");
    for (name, bytes) in &vectors {
        let (_, expected) = EXPECTED.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not in table"));
        let got = decode(bytes, CrcVariant::Standard);
        match expected {
            Ok((cn, mn)) => {
                let p = got.unwrap_or_else(|r| panic!("{name}: refused as {r:?}"));
                assert_eq!((p.cn.as_str(), p.mn.as_str()), (*cn, *mn), "{name}");
                // The standard's CRC is not Modbus': the same frame fails in the other variant.
                assert_eq!(decode(bytes, CrcVariant::Modbus).unwrap_err(), Reject::BadCrc, "{name}");
            }
            Err(reason) => {
                assert_eq!(got.unwrap_err(), *reason, "{name}");
                assert_eq!(decode(bytes, CrcVariant::Modbus).unwrap_err(), *reason, "{name} (modbus)");
            }
        }
    }
}

#[test]
fn a_vector_recomputed_in_modbus_crc_passes_only_there() {
    for (name, bytes) in all_vectors() {
        let data = std::str::from_utf8(data_of(&bytes).unwrap()).unwrap();
        let framed = frame(CrcVariant::Modbus, data).unwrap();
        assert!(decode(&framed, CrcVariant::Modbus).is_ok(), "{name}");
        // Either the CRCs differ, or by chance they agree (the standard's CRC has 256 values).
        let std_ok = decode(&framed, CrcVariant::Standard).is_ok();
        assert_eq!(std_ok, crc(CrcVariant::Standard, data.as_bytes()) == crc(CrcVariant::Modbus, data.as_bytes()));
    }
}

#[test]
fn fields_are_read_leniently() {
    let vectors = all_vectors();
    let get = |n: &str| vectors.iter().find(|(name, _)| name == n).unwrap().1.clone();
    // Trailing `;` before `&&`, a misspelt suffix kept as sent, Flag=7 (answer + split bits).
    let p = decode(&get("t212_0453"), CrcVariant::Standard).unwrap();
    assert_eq!(p.flag, Some(7));
    assert_eq!(p.qn.as_deref(), Some("20160801085000001"));
    let (r, bad) = readings(&p);
    assert!(bad.is_empty());
    assert!(r.iter().any(|x| x.code == "LA" && x.suffix == "td" && x.value == 50.1));
    let so2 = r.iter().find(|x| x.code == "a21026").unwrap();
    assert_eq!((so2.suffix, so2.value, so2.flag), ("Rtd", 58.0, Some(DataFlag::Normal)));
    // 17-digit DataTime, no QN, no Flag, a value without a flag, a D flag on another code.
    let p = decode(&get("capture_6"), CrcVariant::Standard).unwrap();
    assert_eq!((p.qn.as_deref(), p.flag), (None, None));
    assert!(!p.wants_answer());
    let t = parse_time(p.cp_value("DataTime").unwrap()).unwrap();
    assert_eq!(t.to_string(), "2016-08-23 23:56:00");
    let (r, _) = readings(&p);
    let nh3 = r.iter().find(|x| x.code == "060").unwrap();
    assert_eq!((nh3.value, nh3.flag), (2.68, Some(DataFlag::Fault)));
    let p = decode(&get("capture_1"), CrcVariant::Standard).unwrap();
    assert_eq!(parse_time(p.cp_value("DataTime").unwrap()).unwrap().to_string(), "2016-08-24 00:38:17");
    let (r, _) = readings(&p);
    assert_eq!(r.iter().find(|x| x.code == "B01").unwrap().flag, None);
    // Minute data: Cou/Min/Avg/Max and converted ZsAvg in one group each.
    let p = decode(&get("capture_4"), CrcVariant::Standard).unwrap();
    let (r, _) = readings(&p);
    let b02: Vec<(&str, f64)> = r.iter().filter(|x| x.code == "B02").map(|x| (x.suffix, x.value)).collect();
    assert_eq!(b02, [("Cou", 208490.21), ("Min", 325.84), ("Avg", 347.48), ("Max", 362.33)]);
    assert!(r.iter().any(|x| x.code == "01" && x.suffix == "ZsAvg" && x.value == 5.82));
    // The over-range flag T and the stopped flag F are read.
    let p12 = decode(&get("capture_12"), CrcVariant::Standard).unwrap();
    let (r, _) = readings(&p12);
    assert_eq!(r[0].flag, Some(DataFlag::OverRange));
    let p13 = decode(&get("capture_13"), CrcVariant::Standard).unwrap();
    let (r, _) = readings(&p13);
    assert!(r.iter().filter(|x| x.code != "B02").all(|x| x.flag == Some(DataFlag::Stopped)));
    // Flag=5 asks for an answer; MN of 24 characters.
    let p = decode(&get("std_appC_1062"), CrcVariant::Standard).unwrap();
    assert!(p.wants_answer());
    assert_eq!(p.mn.len(), 24);
    assert_eq!(p.cp_value("RtdInterval"), Some("30"));
}

#[test]
fn data_times_of_14_or_17_digits_and_nothing_else() {
    assert_eq!(parse_time("20160823235600").unwrap().to_string(), "2016-08-23 23:56:00");
    assert_eq!(parse_time("20160824003817123").unwrap().format("%H:%M:%S%.3f").to_string(), "00:38:17.123");
    for bad in ["2016082323560", "201608232356001", "20161323235600", "20160230000000", "2016082324000a", ""] {
        assert_eq!(parse_time(bad), None, "{bad}");
    }
}

#[test]
fn answers_are_byte_exact() {
    let vectors = all_vectors();
    let get = |n: &str| vectors.iter().find(|(name, _)| name == n).unwrap().1.clone();
    // The data answer to t212_0453 (Flag=7 asks for one) is the t212_9014 vector itself.
    let up = decode(&get("t212_0453"), CrcVariant::Standard).unwrap();
    let answer = data_answer(CrcVariant::Standard, up.qn.as_deref(), up.pw.as_deref().unwrap(), &up.mn);
    assert_eq!(String::from_utf8(answer).unwrap(), String::from_utf8(get("t212_9014")).unwrap());
    // The 9011 vector encodes back to itself from its fields (ST=32 and Flag=5 as that device sent).
    let p = decode(&get("netty_9011"), CrcVariant::Standard).unwrap();
    let h = Header { qn: p.qn.as_deref(), st: "32", cn: "9011", pw: "123456", mn: &p.mn, flag: 5, split: None };
    let mut again = frame(CrcVariant::Standard, &data_segment(&h, "QnRtn=1")).unwrap();
    // The vector prints its CRC in lower case; hex case is free on input.
    let sent = get("netty_9011");
    again.make_ascii_lowercase();
    assert_eq!(again, sent.to_ascii_lowercase());
    let answer = request_answer(CrcVariant::Standard, Some("20160801085857223"), "123456", "MN1", 1);
    let text = String::from_utf8(answer.clone()).unwrap();
    assert_eq!(&text[..6], format!("##{:04}", text.len() - OVERHEAD));
    assert!(text.contains("QN=20160801085857223;ST=91;CN=9011;PW=123456;MN=MN1;Flag=4;CP=&&QnRtn=1&&"));
    assert_eq!(check_crc(&answer, CrcVariant::Standard), Ok(()));
}

fn frames_of(bytes: &[u8], max: usize) -> Vec<Result<String, Reject>> {
    let mut d = Deframer::new(max);
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(x) = d.next_frame() {
        out.push(match x {
            Deframed::Frame { bytes, .. } => Ok(String::from_utf8(bytes).unwrap()),
            Deframed::Reject(r) => Err(r),
        });
    }
    if let Some(r) = d.finish() {
        out.push(Err(r));
    }
    out
}

fn good(cn: &str) -> String {
    let h = Header { qn: Some("20240101000000000"), st: "32", cn, pw: "123456", mn: "MN0001", flag: 5, split: None };
    String::from_utf8(
        frame(CrcVariant::Standard, &data_segment(&h, "DataTime=20240101000000;w01018-Rtd=1.5,w01018-Flag=N")).unwrap(),
    )
    .unwrap()
}

#[test]
fn broken_frames_are_refused_for_their_reason_and_the_next_frame_survives() {
    let g = good("2011");
    let data_len = g.len() - OVERHEAD;
    type Case<'a> = (&'a str, String, Vec<Result<(), Reject>>);
    let cases: Vec<Case> = vec![
        ("clean", g.clone(), vec![Ok(())]),
        ("two in one read", format!("{g}{g}"), vec![Ok(()), Ok(())]),
        ("stray CR LF between frames", format!("{g}\r\n\r\n{g}"), vec![Ok(()), Ok(())]),
        ("garbage before", format!("\u{1}\u{2}xyz{g}"), vec![Err(Reject::NotAFrame), Ok(())]),
        ("garbage after", format!("{g}not a frame at all"), vec![Ok(()), Err(Reject::NotAFrame)]),
        ("truncated then a frame", format!("{}{g}", &g[..40]), vec![Err(Reject::Truncated), Ok(())]),
        ("truncated at the end", g[..g.len() - 3].to_owned(), vec![Err(Reject::Truncated)]),
        ("length not digits", format!("##00x1{}{g}", &g[6..]), vec![Err(Reject::BadLength), Ok(())]),
        ("length too long", format!("##{:04}{}{g}", data_len + 5, &g[6..]), vec![Err(Reject::BadLength), Ok(())]),
        ("length too short", format!("##{:04}{}{g}", data_len - 5, &g[6..]), vec![Err(Reject::BadLength), Ok(())]),
        ("oversized", format!("##9000{}{g}", "x".repeat(50)), vec![Err(Reject::Oversized), Ok(())]),
        ("CRC not hex", format!("{}ZZZZ\r\n{g}", &g[..g.len() - 6]), vec![Err(Reject::BadLength), Ok(())]),
        ("no CR LF", format!("{}{g}", &g[..g.len() - 2]), vec![Err(Reject::BadLength), Ok(())]),
    ];
    for (name, bytes, expected) in cases {
        let got: Vec<Result<(), Reject>> = frames_of(bytes.as_bytes(), MAX_DATA_LEN)
            .into_iter()
            .map(|r| r.map(|f| assert_eq!(f, g, "{name}")))
            .collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn a_garbage_run_over_many_reads_is_one_reject() {
    let g = good("2051");
    let mut d = Deframer::new(MAX_DATA_LEN);
    let mut out = Vec::new();
    for _ in 0..100 {
        d.push(&[0xFF, 0x00, 0x13, b'a', b'#']);
        while let Some(x) = d.next_frame() {
            out.push(x);
        }
    }
    // An oversized frame read in pieces is one reject too.
    d.push(g.as_bytes());
    d.push(b"##5000");
    d.push(&[b'x'; 3000]);
    d.push(g.as_bytes());
    while let Some(x) = d.next_frame() {
        out.push(x);
    }
    let kinds: Vec<Result<(), Reject>> = out
        .into_iter()
        .map(|x| match x {
            Deframed::Frame { .. } => Ok(()),
            Deframed::Reject(r) => Err(r),
        })
        .collect();
    assert_eq!(kinds, [Err(Reject::NotAFrame), Ok(()), Err(Reject::Oversized), Ok(())]);
    assert_eq!(d.pending(), 0);
}

#[test]
fn a_frame_in_one_byte_reads_is_the_same_frame() {
    let g = good("2061");
    let mut d = Deframer::new(MAX_DATA_LEN);
    let mut out = Vec::new();
    for b in g.as_bytes() {
        d.push(&[*b]);
        while let Some(x) = d.next_frame() {
            out.push(x);
        }
    }
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Deframed::Frame { bytes, .. } if bytes == g.as_bytes()));
}

#[test]
fn missing_and_bad_fields() {
    let seg = |s: &str| parse(s.as_bytes());
    assert_eq!(seg("ST=32;CN=2011;PW=1;MN=X;CP=&&&&").unwrap().cn, "2011");
    assert_eq!(seg("ST=32;PW=1;MN=X;CP=&&&&"), Err(Reject::MissingField));
    assert_eq!(seg("ST=32;CN=2011;PW=1;CP=&&&&"), Err(Reject::MissingField));
    assert_eq!(seg("ST=32;CN=2011;PW=1;MN=X;"), Err(Reject::MissingField));
    assert_eq!(seg("ST=32;CN=2011;PW=1;MN=X;CP=&&DataTime=1"), Err(Reject::MissingField));
    assert_eq!(seg("ST=32;CN=2011;MN=X;Flag=x;CP=&&&&"), Err(Reject::BadField));
    assert_eq!(seg("CN=2011;MN=X;Flag=7;PNUM=2;PNO=3;CP=&&&&"), Err(Reject::BadField));
    assert_eq!(seg("CN=2011;MN=X;Flag=7;PNUM=0;PNO=0;CP=&&&&"), Err(Reject::BadField));
    // Stray separators anywhere, fields in another order.
    let p = seg(";;MN=X;;CN=2051;;Flag=7;PNUM=3;PNO=2;CP=&&;;DataTime=20240101000000;;a-Avg=1,,a-Flag=M;;&&").unwrap();
    assert_eq!(p.split(), Some((2, 3)));
    let (r, _) = readings(&p);
    assert_eq!(
        r,
        [Reading { code: "a", suffix: "Avg", value: 1.0, flag: Some(DataFlag::Maintenance), unknown_flag: false }]
    );
    let p = seg("CN=2011;MN=X;CP=&&a-Rtd=NaN,b-Rtd=x,c-Rtd=1e999,d-Rtd=2,d-Flag=Q&&").unwrap();
    let (r, bad) = readings(&p);
    assert_eq!(bad.len(), 3);
    assert!(r[0].unknown_flag);
}

#[test]
fn crc_reference_values() {
    // The appendix's example answer and a data frame, from the vectors, in the standard's variant.
    assert_eq!(
        crc(
            CrcVariant::Standard,
            b"QN=20160801085000001;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&"
        ),
        0xC241
    );
    // Modbus CRC16 of "123456789" is 0x4B37.
    assert_eq!(crc(CrcVariant::Modbus, b"123456789"), 0x4B37);
}
