//! Properties of register decoding: any register slice decodes or is refused without panic, and every
//! type round-trips through `encode` in every byte and word order.

use proptest::prelude::*;

use super::*;

const TYPES: [DataType; 10] = [
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::Bit,
    DataType::String,
];
const ORDERS: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

fn ty() -> impl Strategy<Value = DataType> {
    prop::sample::select(&TYPES[..])
}

fn order() -> impl Strategy<Value = Order> {
    prop::sample::select(&ORDERS[..])
}

/// A value of `ty` as the device would hold it (the f64 the gateway sees), across the whole range.
fn value_of(ty: DataType) -> BoxedStrategy<f64> {
    match ty {
        DataType::U16 => any::<u16>().prop_map(f64::from).boxed(),
        DataType::I16 => any::<i16>().prop_map(f64::from).boxed(),
        DataType::U32 => any::<u32>().prop_map(f64::from).boxed(),
        DataType::I32 => any::<i32>().prop_map(f64::from).boxed(),
        DataType::U64 => any::<u64>().prop_map(|x| x as f64).boxed(),
        DataType::I64 => any::<i64>().prop_map(|x| x as f64).boxed(),
        DataType::F32 => any::<f32>().prop_map(f64::from).boxed(),
        DataType::F64 => any::<f64>().boxed(),
        DataType::Bit => (0u8..2).prop_map(f64::from).boxed(),
        DataType::String => Just(0.0).boxed(),
    }
}

/// Packs text two characters to a register, first character in the high byte.
fn pack(text: &[u8]) -> Vec<u16> {
    text.chunks(2).map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any number of registers (too few included), any type, order and bit index: a value or `None`,
    /// `None` exactly when the registers are too few or the type is text.
    #[test]
    fn any_registers_decode_without_panic(words in prop::collection::vec(any::<u16>(), 0..10), ty in ty(), order in order(), bit: u8) {
        let got = number(&words, ty, order, bit);
        prop_assert_eq!(got.is_none(), ty == DataType::String || words.len() < usize::from(ty.words(1)));
        if ty == DataType::Bit {
            prop_assert_eq!(got, words.first().map(|w| f64::from(w >> (bit & 15) & 1)));
        }
        let _ = text(&words, order);
        prop_assert_eq!(encode(got.unwrap_or(f64::NAN), ty, order).len(), if ty == DataType::String { 0 } else { usize::from(ty.words(1)) });
    }

    /// Any value, any type, any order: encode then decode gives the value back, bit for bit (NaN stays
    /// NaN), and extra registers after the value change nothing.
    #[test]
    fn encode_decode_round_trips(
        (ty, v) in ty().prop_filter("text has no number", |t| *t != DataType::String).prop_flat_map(|t| (Just(t), value_of(t))),
        order in order(),
        tail in prop::collection::vec(any::<u16>(), 0..3),
    ) {
        let mut words = encode(v, ty, order);
        prop_assert_eq!(words.len(), usize::from(ty.words(1)));
        words.extend(tail);
        let bit = 0;
        let got = number(&words, ty, order, bit).unwrap_or(-1.0);
        if v.is_nan() {
            prop_assert!(got.is_nan());
        } else {
            prop_assert_eq!(got.to_bits(), v.to_bits(), "{:?} {:?} {:04x?}", ty, order, words);
        }
    }

    /// Out-of-range and fractional values are rounded and clamped to the type, never a panic.
    #[test]
    fn encode_any_f64_without_panic(v: f64, ty in ty(), order in order()) {
        let words = encode(v, ty, order);
        if let Some(back) = number(&words, ty, order, 0) {
            if v.is_finite() && matches!(ty, DataType::U16 | DataType::I16 | DataType::U32 | DataType::I32) {
                prop_assert!(back.fract() == 0.0);
            }
        }
    }

    /// ASCII text packed into registers reads back without padding, in both byte orders.
    #[test]
    fn text_round_trips(s in "[ -~]{0,20}", pad in 0usize..3, order in order()) {
        let trimmed = s.trim();
        let mut words = pack(trimmed.as_bytes());
        words.extend(std::iter::repeat_n(0, pad));
        if matches!(order, Order::BADC | Order::DCBA) {
            for w in &mut words {
                *w = w.swap_bytes();
            }
        }
        prop_assert_eq!(text(&words, order), trimmed);
    }
}
