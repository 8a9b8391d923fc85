//! Properties of turning a device's answer into samples: tokio-modbus checks the frame (CRC, unit,
//! function, byte count), so what reaches this crate is a register or bit slice of any length. Any
//! such slice, for any planned points, gives finite good samples or bad ones, never a panic.

use proptest::prelude::*;

use super::*;

fn point() -> impl Strategy<Value = (Table, u16, DataType, Order, u8, f64, bool)> {
    (
        prop::sample::select(&[Table::Holding, Table::Input, Table::Coil, Table::Discrete][..]),
        0u16..40,
        prop::sample::select(
            &[
                DataType::U16,
                DataType::I16,
                DataType::U32,
                DataType::I32,
                DataType::U64,
                DataType::I64,
                DataType::F32,
                DataType::F64,
                DataType::Bit,
            ][..],
        ),
        prop::sample::select(&[Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA][..]),
        0u8..16,
        prop_oneof![Just(1.0), -1e3f64..1e3, Just(f64::MAX)],
        any::<bool>(),
    )
        .prop_map(|(table, address, ty, order, bit, scale, event)| {
            let ty = if matches!(table, Table::Coil | Table::Discrete) { DataType::Bit } else { ty };
            (table, address, ty, order, bit, scale, event)
        })
}

fn device(points: &[(Table, u16, DataType, Order, u8, f64, bool)]) -> PolledDevice {
    let points: Vec<PlannedPoint> = points
        .iter()
        .enumerate()
        .map(|(i, &(table, address, ty, order, bit, scale, event))| PlannedPoint {
            point: PointId(i as u32),
            table,
            address,
            ty,
            order,
            scale,
            offset: 0.5,
            bit,
            event: event.then(|| "trip".to_owned()),
            last_bit: None,
        })
        .collect();
    let spans: Vec<Span> =
        points.iter().map(|pt| Span { table: pt.table, address: pt.address, count: pt.ty.words(1) }).collect();
    PolledDevice {
        id: DeviceId(0),
        unit: 1,
        interval: Duration::from_secs(1),
        reads: plan::plan(&spans, 10, &[]),
        points,
        next_due: Instant::now(),
        failures: 0,
        offline: false,
        status: Arc::new(DeviceStatus::default()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Answers shorter than asked, exact or longer: each point whose registers all arrived has one
    /// sample (its decoded value, or bad when not finite), the others none; bits become 0/1 words.
    #[test]
    fn any_answer_gives_samples_or_nothing(
        points in prop::collection::vec(point(), 1..8),
        answers in prop::collection::vec((prop::collection::vec(any::<u16>(), 0..140), -3i32..3), 1..4),
    ) {
        let mut d = device(&points);
        for (words, extra) in &answers {
            for r in 0..d.reads.len() {
                let read = d.reads[r].clone();
                // Mostly the length asked for, give or take a few; sometimes anything.
                let len = if *extra == -3 { words.len() } else { (i32::from(read.count) + extra).max(0) as usize };
                let mut w: Vec<u16> = words.iter().copied().cycle().take(if words.is_empty() { 0 } else { len }).collect();
                if matches!(read.table, Table::Coil | Table::Discrete) {
                    w.iter_mut().for_each(|x| *x &= 1);
                }
                let mut samples = Vec::new();
                let mut events = Vec::new();
                apply_words(&mut d, &read, &w, 7, &mut samples, &mut events);
                let mut seen = Vec::new();
                for s in &samples {
                    prop_assert!(!seen.contains(&s.point), "two samples for one point");
                    seen.push(s.point);
                    prop_assert!(read.spans.contains(&(s.point.0 as usize)));
                    let consistent = if s.quality == Quality::Good { s.value.is_finite() } else { s.value.is_nan() };
                    prop_assert!(consistent, "{:?}", s);
                    let pt = &d.points[s.point.0 as usize];
                    let off = usize::from(pt.address - read.address);
                    let bit = if matches!(read.table, Table::Coil | Table::Discrete) { 0 } else { pt.bit };
                    let raw = decode::number(&w[off..], pt.ty, pt.order, bit).unwrap_or(f64::NAN);
                    let want = raw * pt.scale + pt.offset;
                    if want.is_finite() {
                        prop_assert_eq!(s.value.to_bits(), want.to_bits());
                    }
                }
                for &i in &read.spans {
                    let pt = &d.points[i];
                    let complete = usize::from(pt.address - read.address) + usize::from(pt.ty.words(1)) <= w.len();
                    prop_assert_eq!(seen.contains(&pt.point), complete);
                }
                prop_assert!(events.iter().all(|e| e.kind == "trip"));
            }
        }
    }
}
