//! DL/T 645-2007 frames and values, pure: no I/O, no clock.
//!
//! A frame is `[FE × 0–4] 68 A0..A5 68 C L DATA CS 16` (`../shared/domain/protocols.md`). The address
//! is six BCD bytes sent low byte first (`AA` bytes are wildcards, all `99` is broadcast); the data
//! bytes travel with 33H added; CS is the sum mod 256 of every byte from the first 68 to the byte
//! before CS. [`Frame`] holds the data with 33H already taken off.
//!
//! The control byte is read by its bits, as 11 (read) / 91 (answer) / B1 (answer, more follows) /
//! D1 (abnormal answer) show them: bit 7 marks an answer, bit 6 an abnormal answer, bit 5 that more
//! frames follow, the low five bits the function.
//!
//! Values are BCD, low byte first; a [`Format`] says how many bytes, how many decimals, and whether
//! the highest bit of the most significant byte is a sign. A nibble above 9 is refused, never read as
//! a number.

use std::fmt;

/// The byte that opens a frame (twice: before and after the address).
pub const START: u8 = 0x68;
/// The byte that closes a frame.
pub const END: u8 = 0x16;
/// The wake-up byte sent before a frame.
pub const PREAMBLE: u8 = 0xFE;
/// Most wake-up bytes before a frame.
pub const MAX_PREAMBLE: usize = 4;
/// What is added to every data byte on the line.
pub const DATA_OFFSET: u8 = 0x33;
/// Bytes of a frame around its data: 68, six address bytes, 68, C, L, CS, 16.
pub const OVERHEAD: usize = 12;
/// The longest frame: L is one byte.
pub const MAX_FRAME: usize = OVERHEAD + 255;

/// Read data (11H).
pub const READ: u8 = 0x11;
/// Read the address of the meter on a point-to-point line (13H).
pub const READ_ADDRESS: u8 = 0x13;
/// Bit 7 of the control byte: the frame is an answer.
pub const ANSWER_BIT: u8 = 0x80;
/// Bit 6 of the control byte: the answer is abnormal (D1 to an 11H read).
pub const ABNORMAL_BIT: u8 = 0x40;
/// Bit 5 of the control byte: more frames follow (B1 to an 11H read).
pub const MORE_BIT: u8 = 0x20;
/// The function part of the control byte.
pub const FUNCTION_MASK: u8 = 0x1F;

/// Error byte of an abnormal answer, bit 1: no such data.
pub const ERR_NO_DATA: u8 = 0x02;
/// Error byte of an abnormal answer, bit 2: password wrong or not authorised.
pub const ERR_PASSWORD: u8 = 0x04;

/// A meter address in line order (low byte first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// Any meter (`AA…AA`): the address to ask on a point-to-point line.
    pub const WILDCARD: Self = Self([0xAA; 6]);
    /// Every meter (`99…99`).
    pub const BROADCAST: Self = Self([0x99; 6]);

    /// Parses the address as printed on the meter: 12 decimal digits, most significant first
    /// (`AA` pairs allowed as wildcards).
    ///
    /// # Errors
    /// Not 12 characters, or a pair that is neither two decimal digits nor `AA`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != 12 || !s.is_ascii() {
            return Err(format!("\"{s}\" is not a meter address; expected 12 decimal digits, like 000000000161"));
        }
        let mut out = [0u8; 6];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let b = match pair {
                [b'A' | b'a', b'A' | b'a'] => 0xAA,
                [h @ b'0'..=b'9', l @ b'0'..=b'9'] => ((h - b'0') << 4) | (l - b'0'),
                _ => {
                    return Err(format!(
                        "\"{s}\" is not a meter address; expected 12 decimal digits (or AA pairs as wildcards)"
                    ))
                }
            };
            out[5 - i] = b;
        }
        Ok(Self(out))
    }

    /// Whether every byte is two BCD digits or the wildcard `AA`.
    pub fn is_valid(&self) -> bool {
        self.0.iter().all(|&b| b == 0xAA || is_bcd(b))
    }
}

impl fmt::Display for Address {
    /// Most significant byte first, as printed on the meter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// A data identifier (DI3 DI2 DI1 DI0), written most significant first like `02 01 01 00`; it
/// travels low byte first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Di(pub u32);

impl Di {
    /// Parses `02010100`, `02 01 01 00` or `0x02010100`.
    ///
    /// # Errors
    /// Not eight hexadecimal digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t: String = s.trim().trim_start_matches("0x").chars().filter(|c| *c != ' ').collect();
        if t.len() != 8 {
            return Err(format!("\"{s}\" is not a data identifier; expected 8 hex digits, like \"02 01 01 00\""));
        }
        u32::from_str_radix(&t, 16)
            .map(Self)
            .map_err(|_| format!("\"{s}\" is not a data identifier; expected 8 hex digits, like \"02 01 01 00\""))
    }

    /// The four bytes as sent, low byte first (before 33H is added).
    pub fn to_wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for Di {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0.to_be_bytes();
        write!(f, "{a:02X} {b:02X} {c:02X} {d:02X}")
    }
}

/// One frame, its data with 33H taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub address: Address,
    pub control: u8,
    pub data: Vec<u8>,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated: {found} bytes, expected {expected}")]
    Truncated { expected: usize, found: usize },
    #[error("{0} FE bytes before the frame; expected at most 4")]
    Preamble(usize),
    #[error("byte 0x{0:02X} where the frame start 68H was expected")]
    NoStart(u8),
    #[error("byte 0x{0:02X} after the address where the second 68H was expected")]
    NoSecondStart(u8),
    #[error("checksum 0x{found:02X}, expected 0x{expected:02X}")]
    Checksum { expected: u8, found: u8 },
    #[error("byte 0x{0:02X} where the end 16H was expected")]
    NoEnd(u8),
    #[error("{extra} bytes after the end 16H")]
    Trailing { extra: usize },
    #[error("address {0} is not BCD")]
    Address(Address),
}

impl FrameError {
    /// A short label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::Preamble(_) => "preamble",
            Self::NoStart(_) | Self::NoSecondStart(_) => "no_start",
            Self::Checksum { .. } => "checksum",
            Self::NoEnd(_) => "no_end",
            Self::Trailing { .. } => "trailing",
            Self::Address(_) => "address",
        }
    }
}

/// Sum mod 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// The bytes of `frame` on the line, after `preamble` FE bytes.
///
/// # Panics
/// Never for data up to 255 bytes; longer data is cut to 255 (no DL/T 645 frame holds more).
pub fn encode(frame: &Frame, preamble: usize) -> Vec<u8> {
    let data = &frame.data[..frame.data.len().min(255)];
    let mut out = Vec::with_capacity(preamble + OVERHEAD + data.len());
    out.extend(std::iter::repeat_n(PREAMBLE, preamble));
    let start = out.len();
    out.push(START);
    out.extend_from_slice(&frame.address.0);
    out.push(START);
    out.push(frame.control);
    out.push(data.len() as u8);
    out.extend(data.iter().map(|b| b.wrapping_add(DATA_OFFSET)));
    out.push(checksum(&out[start..]));
    out.push(END);
    out
}

/// Reads exactly one frame from `bytes` (0–4 FE bytes, the frame, nothing after it).
///
/// # Errors
/// Which part of the frame is wrong.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    let pre = bytes.iter().take_while(|&&b| b == PREAMBLE).count();
    if pre > MAX_PREAMBLE {
        return Err(FrameError::Preamble(pre));
    }
    let (frame, len) = parse_at(&bytes[pre..])?;
    if pre + len < bytes.len() {
        return Err(FrameError::Trailing { extra: bytes.len() - pre - len });
    }
    Ok(frame)
}

/// Reads the frame that starts at `b[0]`; returns it with its length.
fn parse_at(b: &[u8]) -> Result<(Frame, usize), FrameError> {
    let need = |expected: usize| FrameError::Truncated { expected, found: b.len() };
    match b.first() {
        None => return Err(need(OVERHEAD)),
        Some(&START) => {}
        Some(&x) => return Err(FrameError::NoStart(x)),
    }
    if b.len() < 10 {
        return Err(need(OVERHEAD));
    }
    if b[7] != START {
        return Err(FrameError::NoSecondStart(b[7]));
    }
    let len = OVERHEAD + usize::from(b[9]);
    if b.len() < len {
        return Err(need(len));
    }
    let expected = checksum(&b[..len - 2]);
    if b[len - 2] != expected {
        return Err(FrameError::Checksum { expected, found: b[len - 2] });
    }
    if b[len - 1] != END {
        return Err(FrameError::NoEnd(b[len - 1]));
    }
    let mut address = [0u8; 6];
    address.copy_from_slice(&b[1..7]);
    let address = Address(address);
    if !address.is_valid() {
        return Err(FrameError::Address(address));
    }
    let data = b[10..len - 2].iter().map(|x| x.wrapping_sub(DATA_OFFSET)).collect();
    Ok((Frame { address, control: b[8], data }, len))
}

/// What [`scan`] found in a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// A valid frame at `buf[start..end]`; what lies before `start` is not a frame.
    Frame { frame: Frame, start: usize, end: usize },
    /// No complete frame yet; `buf[..keep_from]` can never be part of one and may be dropped.
    Need { keep_from: usize },
}

/// Finds the first valid frame in a stream buffer, skipping line noise, wake-up bytes and broken
/// frames (a 68H that does not open a valid frame is passed over, so one damaged frame never hides the
/// next). An incomplete candidate does not hide a complete valid frame after it.
pub fn scan(buf: &[u8]) -> Scan {
    let mut keep_from = None;
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == START) {
        let p = i + off;
        match parse_at(&buf[p..]) {
            Ok((frame, len)) => return Scan::Frame { frame, start: p, end: p + len },
            Err(FrameError::Truncated { .. }) => {
                keep_from.get_or_insert(p);
            }
            Err(_) => {}
        }
        i = p + 1;
    }
    Scan::Need { keep_from: keep_from.unwrap_or(buf.len()) }
}

/// How a value is laid out: BCD bytes (low byte first), decimals, and a sign in the highest bit of
/// the most significant byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub bytes: u8,
    pub decimals: u8,
    pub signed: bool,
}

/// Why value bytes are not a value of their format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("{found} value bytes, expected {expected}")]
    Length { expected: usize, found: usize },
    #[error("byte 0x{byte:02X} (value byte {index}) is not BCD")]
    NotBcd { index: usize, byte: u8 },
    #[error("{0} does not fit the format")]
    OutOfRange(f64),
}

fn is_bcd(b: u8) -> bool {
    b >> 4 <= 9 && b & 0x0F <= 9
}

/// The value of `raw` (33H taken off, low byte first).
///
/// # Errors
/// Wrong length or a nibble above 9.
pub fn decode_value(raw: &[u8], f: Format) -> Result<f64, ValueError> {
    let n = usize::from(f.bytes);
    if raw.len() != n {
        return Err(ValueError::Length { expected: n, found: raw.len() });
    }
    let mut int: u64 = 0;
    let mut negative = false;
    for (index, &b) in raw.iter().enumerate().rev() {
        let mut b = b;
        if f.signed && index == n - 1 {
            negative = b & 0x80 != 0;
            b &= 0x7F;
        }
        if !is_bcd(b) {
            return Err(ValueError::NotBcd { index, byte: raw[index] });
        }
        int = int * 100 + u64::from(b >> 4) * 10 + u64::from(b & 0x0F);
    }
    let v = int as f64 / 10f64.powi(i32::from(f.decimals));
    Ok(if negative { -v } else { v })
}

/// The bytes of `v` in format `f` (rounded to its decimals), low byte first, before 33H is added.
///
/// # Errors
/// `v` is not finite, negative for an unsigned format, or has too many digits.
pub fn encode_value(v: f64, f: Format) -> Result<Vec<u8>, ValueError> {
    let n = usize::from(f.bytes);
    let scaled = (v.abs() * 10f64.powi(i32::from(f.decimals))).round();
    let digits = 2 * n as i32 - i32::from(f.signed);
    if !scaled.is_finite() || (v < 0.0 && !f.signed) || n == 0 || n > 8 || scaled >= 10f64.powi(digits) {
        return Err(ValueError::OutOfRange(v));
    }
    let mut int = scaled as u64;
    let mut out = vec![0u8; n];
    for b in &mut out {
        let lo = (int % 10) as u8;
        let hi = ((int / 10) % 10) as u8;
        *b = (hi << 4) | lo;
        int /= 100;
    }
    if f.signed && v < 0.0 && scaled > 0.0 {
        out[n - 1] |= 0x80;
    }
    Ok(out)
}

/// The error bits of an abnormal answer, named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBits(pub u8);

impl fmt::Display for ErrorBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.0 & ERR_NO_DATA != 0 {
            parts.push("无请求数据 (no such data)".to_owned());
        }
        if self.0 & ERR_PASSWORD != 0 {
            parts.push("密码错误或未授权 (password error)".to_owned());
        }
        let rest = self.0 & !(ERR_NO_DATA | ERR_PASSWORD);
        if rest != 0 || self.0 == 0 {
            parts.push(format!("错误字 0x{rest:02X} (error bits 0x{rest:02X})"));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// What a meter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A normal answer to a read: the identifier and its value bytes; `more` when the meter has
    /// further frames (B1).
    Data { di: Di, value: Vec<u8>, more: bool },
    /// An abnormal answer (D1): the meter refused and says why.
    Abnormal(ErrorBits),
    /// The answer to a read of the address (93).
    Address(Address),
}

/// Why a valid frame is not an answer to what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("control 0x{found:02X} does not answer a request of 0x{asked:02X}")]
    Control { asked: u8, found: u8 },
    #[error("answer from {found}, asked {asked}")]
    Address { asked: Address, found: Address },
    #[error("answer of {0} data bytes is too short")]
    Short(usize),
    #[error("answer for {found}, asked {asked}")]
    Di { asked: Di, found: Di },
    #[error("address {0} in the answer is not BCD")]
    BadAddress(Address),
}

/// Reads `frame` as the answer to a request with control `asked` to `to` (and, for reads, `di`).
///
/// # Errors
/// The frame is not an answer to that request.
pub fn reply(frame: &Frame, asked: u8, to: Address, di: Option<Di>) -> Result<Reply, ReplyError> {
    let c = frame.control;
    if c & ANSWER_BIT == 0 || c & FUNCTION_MASK != asked & FUNCTION_MASK {
        return Err(ReplyError::Control { asked, found: c });
    }
    // A request to a wildcard or broadcast address is answered with the meter's own address.
    let wild = to.0.contains(&0xAA) || to == Address::BROADCAST;
    if !wild && frame.address != to {
        return Err(ReplyError::Address { asked: to, found: frame.address });
    }
    if c & ABNORMAL_BIT != 0 {
        let Some(&e) = frame.data.first() else { return Err(ReplyError::Short(0)) };
        return Ok(Reply::Abnormal(ErrorBits(e)));
    }
    if asked & FUNCTION_MASK == READ_ADDRESS {
        let Ok(a) = <[u8; 6]>::try_from(frame.data.get(..6).unwrap_or_default()) else {
            return Err(ReplyError::Short(frame.data.len()));
        };
        let a = Address(a);
        if !a.0.iter().all(|&b| is_bcd(b)) {
            return Err(ReplyError::BadAddress(a));
        }
        return Ok(Reply::Address(a));
    }
    let Some(head) = frame.data.get(..4) else { return Err(ReplyError::Short(frame.data.len())) };
    let found = Di(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
    if let Some(asked_di) = di {
        if found != asked_di {
            return Err(ReplyError::Di { asked: asked_di, found });
        }
    }
    Ok(Reply::Data { di: found, value: frame.data[4..].to_vec(), more: c & MORE_BIT != 0 })
}

/// The 11H request for `di` to `to`.
pub fn read_request(to: Address, di: Di) -> Frame {
    Frame { address: to, control: READ, data: di.to_wire().to_vec() }
}

/// The 13H request for the address of the only meter on the line.
pub fn address_request() -> Frame {
    Frame { address: Address::WILDCARD, control: READ_ADDRESS, data: Vec::new() }
}

/// A normal answer to a read (91, or B1 when `more`).
pub fn data_answer(from: Address, di: Di, value: &[u8], more: bool) -> Frame {
    let mut data = di.to_wire().to_vec();
    data.extend_from_slice(value);
    let control = READ | ANSWER_BIT | if more { MORE_BIT } else { 0 };
    Frame { address: from, control, data }
}

/// An abnormal answer to a read (D1) with its error byte.
pub fn abnormal_answer(from: Address, error: u8) -> Frame {
    Frame { address: from, control: READ | ANSWER_BIT | ABNORMAL_BIT, data: vec![error] }
}

/// The answer to a read of the address (93).
pub fn address_answer(from: Address) -> Frame {
    Frame { address: from, control: READ_ADDRESS | ANSWER_BIT, data: from.0.to_vec() }
}

/// An identifier the gateway knows: its default point name, unit and layout (protocols.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownDi {
    pub di: Di,
    pub point: &'static str,
    /// Unit of the point after `scale`.
    pub unit: &'static str,
    pub format: Format,
    /// Factor from the meter's unit to the point's (kW on the line, W in the park's convention).
    pub scale: f64,
    /// Why no alarm rule watches the point, as the Modbus meter profiles say it.
    pub unwatched: Option<&'static str>,
}

const fn f(bytes: u8, decimals: u8, signed: bool) -> Format {
    Format { bytes, decimals, signed }
}

/// The identifiers of `../shared/domain/protocols.md`, named like the Modbus meter profiles' points.
pub const KNOWN: &[KnownDi] = &[
    KnownDi {
        di: Di(0x0001_0000),
        point: "energy",
        unit: "kWh",
        format: f(4, 2, false),
        scale: 1.0,
        unwatched: Some("metering counter for energy reports, not a hazard"),
    },
    KnownDi { di: Di(0x0201_0100), point: "ua", unit: "V", format: f(2, 1, false), scale: 1.0, unwatched: None },
    KnownDi { di: Di(0x0201_0200), point: "ub", unit: "V", format: f(2, 1, false), scale: 1.0, unwatched: None },
    KnownDi { di: Di(0x0201_0300), point: "uc", unit: "V", format: f(2, 1, false), scale: 1.0, unwatched: None },
    KnownDi { di: Di(0x0202_0100), point: "ia", unit: "A", format: f(3, 3, true), scale: 1.0, unwatched: None },
    KnownDi { di: Di(0x0202_0200), point: "ib", unit: "A", format: f(3, 3, true), scale: 1.0, unwatched: None },
    KnownDi { di: Di(0x0202_0300), point: "ic", unit: "A", format: f(3, 3, true), scale: 1.0, unwatched: None },
    KnownDi {
        di: Di(0x0203_0000),
        point: "p",
        unit: "W",
        format: f(3, 4, true),
        scale: 1000.0,
        unwatched: Some(
            "total active power has no safety limit; overload is judged on phase current (electrical.overload)",
        ),
    },
    KnownDi {
        di: Di(0x0206_0000),
        point: "pf",
        unit: "",
        format: f(2, 3, true),
        scale: 1.0,
        unwatched: Some("power factor is a tariff and efficiency matter, not a wiring hazard"),
    },
];

/// The known identifier `di`, if any.
pub fn known(di: Di) -> Option<&'static KnownDi> {
    KNOWN.iter().find(|k| k.di == di)
}

#[cfg(test)]
mod tests;
