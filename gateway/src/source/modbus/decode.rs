//! Register words to values: data types, byte and word order, scale and offset. Pure.

use serde::Deserialize;

/// How a point's value is laid out in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// One bit of a register (`bit` 0–15), or a coil / discrete input.
    Bit,
    /// ASCII text over `length` registers, two characters each.
    String,
}

impl DataType {
    /// Registers the value spans (`length` for strings).
    pub fn words(self, length: u16) -> u16 {
        match self {
            Self::U16 | Self::I16 | Self::Bit => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
            Self::String => length.max(1),
        }
    }
}

/// Byte order within words and word order: `ABCD` is big-endian throughout (Modbus default), `CDAB`
/// swaps words, `BADC` swaps bytes within words, `DCBA` is little-endian throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Order {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

/// Big-endian bytes of `words` rearranged into the value's natural big-endian byte order.
fn bytes(words: &[u16], order: Order) -> Vec<u8> {
    let mut ws: Vec<u16> = words.to_vec();
    if matches!(order, Order::CDAB | Order::DCBA) {
        ws.reverse();
    }
    let mut out = Vec::with_capacity(ws.len() * 2);
    for w in ws {
        let [hi, lo] = w.to_be_bytes();
        if matches!(order, Order::BADC | Order::DCBA) {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    }
    out
}

/// Decodes a number from its registers; `None` when there are too few words or the type is a string.
pub fn number(words: &[u16], ty: DataType, order: Order, bit: u8) -> Option<f64> {
    let n = ty.words(1) as usize;
    if words.len() < n {
        return None;
    }
    let b = bytes(&words[..n], order);
    Some(match ty {
        DataType::U16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        DataType::I16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        DataType::U32 => f64::from(u32::from_be_bytes(b[..4].try_into().ok()?)),
        DataType::I32 => f64::from(i32::from_be_bytes(b[..4].try_into().ok()?)),
        DataType::U64 => u64::from_be_bytes(b[..8].try_into().ok()?) as f64,
        DataType::I64 => i64::from_be_bytes(b[..8].try_into().ok()?) as f64,
        DataType::F32 => f64::from(f32::from_be_bytes(b[..4].try_into().ok()?)),
        DataType::F64 => f64::from_be_bytes(b[..8].try_into().ok()?),
        DataType::Bit => f64::from(u8::from(words[0] >> (bit & 15) & 1 == 1)),
        DataType::String => return None,
    })
}

/// Decodes ASCII text, trimming NULs and spaces.
pub fn text(words: &[u16], order: Order) -> String {
    let b = bytes(words, if matches!(order, Order::BADC | Order::DCBA) { Order::BADC } else { Order::ABCD });
    String::from_utf8_lossy(&b).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_owned()
}

/// The registers of `value` as it would be stored, for writes and for the simulated devices.
pub fn encode(value: f64, ty: DataType, order: Order) -> Vec<u16> {
    let be: Vec<u8> = match ty {
        DataType::U16 | DataType::Bit => (value.round().clamp(0.0, 65535.0) as u16).to_be_bytes().to_vec(),
        DataType::I16 => (value.round() as i16).to_be_bytes().to_vec(),
        DataType::U32 => (value.round() as u32).to_be_bytes().to_vec(),
        DataType::I32 => (value.round() as i32).to_be_bytes().to_vec(),
        DataType::U64 => (value.round() as u64).to_be_bytes().to_vec(),
        DataType::I64 => (value.round() as i64).to_be_bytes().to_vec(),
        DataType::F32 => (value as f32).to_be_bytes().to_vec(),
        DataType::F64 => value.to_be_bytes().to_vec(),
        DataType::String => Vec::new(),
    };
    // Apply the inverse layout: build natural words, then reorder like `bytes` does (it is an involution).
    let words: Vec<u16> = be.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    if ty == DataType::Bit {
        // `number` reads a bit from the register as the device holds it, whatever the byte order.
        return words;
    }
    let b = bytes(&words, order);
    b.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_and_order_round_trips() {
        let cases = [
            (DataType::U16, 51234.0),
            (DataType::I16, -1234.0),
            (DataType::U32, 3_000_000_000.0),
            (DataType::I32, -2_000_000_000.0),
            (DataType::U64, 9_007_199_254_740_000.0),
            (DataType::I64, -9_007_199_254_740_000.0),
            (DataType::F32, 229.5),
            (DataType::F64, -0.123_456_789_012_345),
        ];
        for (ty, v) in cases {
            for order in [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA] {
                let words = encode(v, ty, order);
                assert_eq!(words.len(), ty.words(1) as usize);
                assert_eq!(number(&words, ty, order, 0), Some(v), "{ty:?} {order:?} {words:04x?}");
            }
        }
    }

    #[test]
    fn known_layouts() {
        // 229.5 as IEEE 754 single is 0x43 0x65 0x80 0x00.
        assert_eq!(number(&[0x4365, 0x8000], DataType::F32, Order::ABCD, 0), Some(229.5));
        assert_eq!(number(&[0x8000, 0x4365], DataType::F32, Order::CDAB, 0), Some(229.5));
        assert_eq!(number(&[0x6543, 0x0080], DataType::F32, Order::BADC, 0), Some(229.5));
        assert_eq!(number(&[0x0080, 0x6543], DataType::F32, Order::DCBA, 0), Some(229.5));
        assert_eq!(number(&[0x0001, 0x0002], DataType::U32, Order::ABCD, 0), Some(65538.0));
        assert_eq!(number(&[0xFFFF], DataType::I16, Order::ABCD, 0), Some(-1.0));
        assert_eq!(number(&[0b1010_0000], DataType::Bit, Order::ABCD, 5), Some(1.0));
        assert_eq!(number(&[0b1010_0000], DataType::Bit, Order::ABCD, 6), Some(0.0));
        assert_eq!(number(&[0x0001], DataType::U32, Order::ABCD, 0), None);
        // Bits ignore the byte order both ways.
        for order in [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA] {
            assert_eq!(encode(1.0, DataType::Bit, order), vec![0x0001], "{order:?}");
            assert_eq!(number(&[0x0001], DataType::Bit, order, 0), Some(1.0), "{order:?}");
        }
        assert_eq!(text(&[0x5344, 0x4D36, 0x3330, 0x0000], Order::ABCD), "SDM630");
    }
}
