//! Properties of the HJ 212 codec: arbitrary bytes in arbitrary reads never panic and never lose a
//! good frame that follows them; every frame built round-trips through the deframer and the parser.

use proptest::prelude::*;

use super::*;

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,24}"
}

fn reading() -> impl Strategy<Value = (String, String, f64, Option<char>)> {
    (
        "[a-z][0-9]{5}|[0-9]{2,3}|[A-Z][0-9]{2}",
        prop::sample::select(vec!["Rtd", "Avg", "Min", "Max", "Cou", "ZsRtd", "ZsAvg"]),
        -1.0e6f64..1.0e6,
        prop::option::of(prop::sample::select(vec!['N', 'F', 'M', 'S', 'D', 'C', 'T', 'B'])),
    )
        .prop_map(|(c, s, v, f)| (c, s.to_owned(), v, f))
}

fn run(d: &mut Deframer, out: &mut Vec<Deframed>) {
    while let Some(x) = d.next_frame() {
        out.push(x);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000), cut in 1usize..64) {
        let mut d = Deframer::new(MAX_DATA_LEN);
        let mut out = Vec::new();
        for chunk in bytes.chunks(cut) {
            d.push(chunk);
            run(&mut d, &mut out);
        }
        let _ = d.finish();
        for x in &out {
            if let Deframed::Frame { bytes, .. } = x {
                let _ = check_crc(bytes, CrcVariant::Standard);
                if let Ok(p) = parse(data_of(bytes).unwrap()) {
                    let _ = readings(&p);
                }
            }
        }
        let _ = parse(&bytes);
        let _ = parse_cp(&String::from_utf8_lossy(&bytes));
        let _ = parse_time(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn garbage_never_costs_the_frame_after_it(
        junk in prop::collection::vec(any::<u8>(), 0..500),
        cut in 1usize..40,
    ) {
        let h = Header { qn: Some("1"), st: "32", cn: "2011", pw: "p", mn: "M", flag: 5, split: None };
        let good = frame(CrcVariant::Standard, &data_segment(&h, "a-Rtd=1")).unwrap();
        // Junk can open a frame (`##` + digits) that only ends where its length says, so the good
        // frame is sent after a CR LF and a pause the length cannot span: a second good frame.
        let mut stream = junk.clone();
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(&good);
        stream.extend(std::iter::repeat_n(b'\n', MAX_DATA_LEN + OVERHEAD));
        stream.extend_from_slice(&good);
        let mut d = Deframer::new(MAX_DATA_LEN);
        let mut out = Vec::new();
        for chunk in stream.chunks(cut) {
            d.push(chunk);
            run(&mut d, &mut out);
        }
        let frames = out.iter().filter(|x| matches!(x, Deframed::Frame { bytes, .. } if *bytes == good)).count();
        prop_assert!(frames >= 1, "{:?}", out);
    }

    #[test]
    fn encode_then_decode_round_trips(
        qn in prop::option::of("[0-9]{17}"),
        cn in prop::sample::select(vec!["2011", "2051", "2061", "2031"]),
        pw in ident(),
        mn in ident(),
        flag in 0u8..=255,
        values in prop::collection::vec(reading(), 0..12),
        variant in prop::sample::select(vec![CrcVariant::Standard, CrcVariant::Modbus]),
        cut in 1usize..100,
    ) {
        let cp: Vec<String> = std::iter::once("DataTime=20240102030405".to_owned())
            .chain(values.iter().map(|(c, s, v, f)| match f {
                Some(f) => format!("{c}-{s}={v},{c}-Flag={f}"),
                None => format!("{c}-{s}={v}"),
            }))
            .collect();
        let split = (flag & FLAG_SPLIT != 0).then_some((3, 2));
        let h = Header { qn: qn.as_deref(), st: "32", cn, pw: &pw, mn: &mn, flag, split };
        let data = data_segment(&h, &cp.join(";"));
        let bytes = frame(variant, &data).unwrap();
        let mut d = Deframer::new(9999);
        let mut out = Vec::new();
        for chunk in bytes.chunks(cut) {
            d.push(chunk);
            run(&mut d, &mut out);
        }
        prop_assert_eq!(out.len(), 1);
        let Deframed::Frame { bytes: got, .. } = &out[0] else { panic!("{:?}", out) };
        prop_assert_eq!(got, &bytes);
        prop_assert_eq!(check_crc(got, variant), Ok(()));
        let p = parse(data_of(got).unwrap()).unwrap();
        prop_assert_eq!(p.qn.as_deref(), qn.as_deref());
        prop_assert_eq!((p.cn.as_str(), p.pw.as_deref(), p.mn.as_str(), p.flag), (cn, Some(pw.as_str()), mn.as_str(), Some(flag)));
        prop_assert_eq!(p.split(), split.map(|(num, no)| (no, num)));
        prop_assert_eq!(parse_time(p.cp_value("DataTime").unwrap()).unwrap().to_string(), "2024-01-02 03:04:05");
        let (r, bad) = readings(&p);
        prop_assert!(bad.is_empty());
        prop_assert_eq!(r.len(), values.len());
        for (x, (c, s, v, f)) in r.iter().zip(&values) {
            prop_assert_eq!((x.code, x.suffix, x.value), (c.as_str(), s.as_str(), *v));
            prop_assert_eq!(x.flag, f.and_then(|f| DataFlag::parse(&f.to_string())));
        }
    }
}
