//! HJ 212-2017 frames: the byte stream cut into frames, both CRC variants, the data segment parsed
//! leniently into its fields and CP entries, and the answers the platform sends.
//!
//! Pure: no I/O, no clock. Framing is strict (`##`, four decimal digits of length that must match the
//! data segment, four hex digits of CRC, CR LF) because a wrong length or CRC means the bytes cannot
//! be trusted; the fields inside are read leniently, because real loggers bend widths and leave stray
//! separators (`../shared/domain/protocols.md`).

use std::fmt::Write as _;

pub use crate::config::hj212::{CrcVariant, MAX_DATA_LEN};

/// `##`, four digits of length, four hex digits of CRC and CR LF around the data segment.
pub const OVERHEAD: usize = 2 + 4 + 4 + 2;

/// The CRC of `data` in `variant`.
pub fn crc(variant: CrcVariant, data: &[u8]) -> u16 {
    let mut reg: u16 = 0xFFFF;
    for &b in data {
        reg = match variant {
            CrcVariant::Standard => (reg >> 8) ^ u16::from(b),
            CrcVariant::Modbus => reg ^ u16::from(b),
        };
        for _ in 0..8 {
            let lsb = reg & 1;
            reg >>= 1;
            if lsb != 0 {
                reg ^= 0xA001;
            }
        }
    }
    reg
}

/// Why bytes from a logger were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Bytes that do not start a frame (no `##`): noise, binary garbage, another protocol.
    NotAFrame,
    /// The length field is not four digits, or does not match where the frame ends.
    BadLength,
    /// The length field announces more than the connection's limit.
    Oversized,
    /// A frame cut off: a new `##` or the end of the stream came before its end.
    Truncated,
    /// The CRC does not match the data segment in the logger's variant.
    BadCrc,
    /// A field every frame needs (`CN`, `MN`, `CP=&&…&&`) is missing.
    MissingField,
    /// A field is present but unusable (a DataTime that is no date, a PNUM/PNO out of range).
    BadField,
    /// No logger with this MN is configured.
    UnknownMn,
    /// The PW does not match the logger's.
    WrongPassword,
    /// More frames a second than the connection may send.
    RateLimited,
    /// A value that is not a finite number.
    BadValue,
}

impl Reject {
    /// Every reason, in the order of [`Reject::index`].
    pub const ALL: [Reject; 11] = [
        Self::NotAFrame,
        Self::BadLength,
        Self::Oversized,
        Self::Truncated,
        Self::BadCrc,
        Self::MissingField,
        Self::BadField,
        Self::UnknownMn,
        Self::WrongPassword,
        Self::RateLimited,
        Self::BadValue,
    ];

    /// Position in [`Reject::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAFrame => "not_a_frame",
            Self::BadLength => "bad_length",
            Self::Oversized => "oversized",
            Self::Truncated => "truncated",
            Self::BadCrc => "bad_crc",
            Self::MissingField => "missing_field",
            Self::BadField => "bad_field",
            Self::UnknownMn => "unknown_mn",
            Self::WrongPassword => "wrong_password",
            Self::RateLimited => "rate_limited",
            Self::BadValue => "bad_value",
        }
    }
}

/// What a framing reject means, for people reading `/api/v1/rejects`.
pub fn describe(reason: Reject) -> &'static str {
    match reason {
        Reject::NotAFrame => "bytes that do not start with ## (noise, binary, another protocol)",
        Reject::BadLength => "the length field is not 4 digits or does not match where the frame ends",
        Reject::Oversized => "the length field announces more than the listener's max_frame_bytes",
        Reject::Truncated => "the frame was cut off by the next ## or the end of the connection",
        Reject::BadCrc => "the CRC does not match the data segment",
        Reject::MissingField => "a required field is missing",
        Reject::BadField => "a field is present but unusable",
        Reject::UnknownMn => "no logger with this MN is configured",
        Reject::WrongPassword => "the PW does not match the logger's",
        Reject::RateLimited => "more frames a second than the listener allows",
        Reject::BadValue => "a value is not a finite number",
    }
}

/// What the deframer found at the front of its buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// A structurally complete frame: the data segment is `buf[data]`, its CRC as sent is `crc`.
    Frame { consumed: usize, data: std::ops::Range<usize>, crc: u16 },
    /// `consumed` bytes were refused for `reason`; scanning continues after them.
    Reject { consumed: usize, reason: Reject },
    /// Only whitespace between frames (a stray CR LF): skipped silently.
    Skip { consumed: usize },
    /// Not enough bytes yet.
    NeedMore,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the next frame can start: a `##` not followed by another `#` (of `###0101`, the last two).
fn find_start(hay: &[u8]) -> Option<usize> {
    let mut i = find(hay, b"##")?;
    while hay.get(i + 2) == Some(&b'#') {
        i += 1;
    }
    Some(i)
}

fn hex4(b: &[u8]) -> Option<u16> {
    if b.len() != 4 || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Looks at the front of `buf` for one frame whose data segment is at most `max_len` bytes.
///
/// Garbage before a `##` is refused as one [`Reject::NotAFrame`]; a frame interrupted by the next
/// `##` is [`Reject::Truncated`] and scanning resumes at that `##`, so one broken frame never costs
/// the frames after it.
pub fn scan(buf: &[u8], max_len: usize) -> Scan {
    if buf.is_empty() {
        return Scan::NeedMore;
    }
    if !buf.starts_with(b"##") {
        let ws = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0)).count();
        if ws > 0 {
            return Scan::Skip { consumed: ws };
        }
        if buf == b"#" {
            return Scan::NeedMore;
        }
        let consumed = find_start(buf).unwrap_or(if buf.ends_with(b"#") { buf.len() - 1 } else { buf.len() });
        return Scan::Reject { consumed: consumed.max(1), reason: Reject::NotAFrame };
    }
    if buf.starts_with(b"###") {
        // Stray `#` right before a frame: the frame starts at the last `##`.
        return Scan::Reject { consumed: find_start(buf).unwrap_or(1).max(1), reason: Reject::NotAFrame };
    }
    if buf.len() < 6 {
        // A `##` followed by the next frame's `##` before four digits came.
        if buf.len() > 2 && find(&buf[2..], b"##").is_some() {
            return Scan::Reject { consumed: 2, reason: Reject::Truncated };
        }
        return Scan::NeedMore;
    }
    let Some(len) = std::str::from_utf8(&buf[2..6]).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else {
        let next = find(&buf[2..], b"##").map_or(2, |i| i + 2);
        let reason = if buf[2..6].starts_with(b"#") { Reject::Truncated } else { Reject::BadLength };
        return Scan::Reject { consumed: next, reason };
    };
    let len: usize = len.parse().unwrap_or(usize::MAX);
    if len > max_len {
        let next = find(&buf[2..], b"##").map_or(buf.len().min(6 + len + 6), |i| i + 2);
        return Scan::Reject { consumed: next.max(2), reason: Reject::Oversized };
    }
    let total = 6 + len + 6;
    // A new `##` inside the announced frame means this one was cut off, unless the data really holds
    // one (it cannot: `#` never starts a field, and `&&` ends the CP before the CRC).
    let body_end = buf.len().min(total);
    if let Some(i) = find(&buf[6..body_end], b"##") {
        let at = i + 6;
        // The frame may simply be shorter than announced and already ended with CR LF: a bad length.
        // The frame may be shorter than announced and already have ended with CR LF, or have its data
        // and CRC whole but no CR LF: a bad length or ending, not a cut-off frame.
        let reason =
            if buf[..at].ends_with(b"\r\n") || at >= 6 + len + 4 { Reject::BadLength } else { Reject::Truncated };
        return Scan::Reject { consumed: at, reason };
    }
    if buf.len() < total {
        return Scan::NeedMore;
    }
    let trailer = &buf[6 + len..total];
    match (hex4(&trailer[..4]), &trailer[4..]) {
        (Some(crc), b"\r\n") => Scan::Frame { consumed: total, data: 6..6 + len, crc },
        _ => {
            // The frame did not end where the length said: resync after the next CR LF.
            let consumed = find(&buf[6..], b"\r\n").map_or(total, |i| i + 6 + 2);
            Scan::Reject { consumed, reason: Reject::BadLength }
        }
    }
}

/// Cuts a logger's byte stream into frames: bytes in as they arrive, frames or rejects out.
///
/// A run of garbage is one [`Reject::NotAFrame`] however many reads it spans, and the rest of an
/// oversized frame is dropped without being counted again: the counts say how many frames were bad,
/// not how many reads.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    max_len: usize,
    /// Dropping bytes up to the next `##` after a reject already counted.
    discarding: bool,
}

/// One result of [`Deframer::next_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deframed {
    /// A whole frame (`##` through CR LF) with the CRC as sent.
    Frame {
        bytes: Vec<u8>,
        crc: u16,
    },
    Reject(Reject),
}

impl Deframer {
    /// A deframer for data segments of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self { buf: Vec::with_capacity(256), max_len, discarding: false }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next frame or reject, or `None` until more bytes come.
    pub fn next_frame(&mut self) -> Option<Deframed> {
        loop {
            if self.discarding {
                match find_start(&self.buf) {
                    Some(i) => {
                        self.buf.drain(..i);
                        self.discarding = false;
                    }
                    None => {
                        let keep = usize::from(self.buf.ends_with(b"#"));
                        let n = self.buf.len() - keep;
                        self.buf.drain(..n);
                        return None;
                    }
                }
            }
            match scan(&self.buf, self.max_len) {
                Scan::NeedMore => return None,
                Scan::Skip { consumed } => {
                    self.buf.drain(..consumed);
                }
                Scan::Frame { consumed, crc, .. } => {
                    let bytes: Vec<u8> = self.buf.drain(..consumed).collect();
                    return Some(Deframed::Frame { bytes, crc });
                }
                Scan::Reject { consumed, reason } => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    // Without a `##` in what is left, the rest of this bad run may still be coming:
                    // garbage and an oversized frame go on until the next `##`.
                    let at_frame = self.buf.starts_with(b"##");
                    self.discarding = match reason {
                        Reject::NotAFrame | Reject::Oversized => !at_frame,
                        _ => !self.buf.is_empty() && !at_frame,
                    };
                    return Some(Deframed::Reject(reason));
                }
            }
        }
    }

    /// The end of the stream (closed, or idle past its timeout): what is held is a cut-off frame.
    pub fn finish(&mut self) -> Option<Reject> {
        let held = std::mem::take(&mut self.buf);
        let discarding = std::mem::replace(&mut self.discarding, false);
        if held.iter().all(|b| b.is_ascii_whitespace()) || discarding {
            return None;
        }
        Some(if held.starts_with(b"##") || held == b"#" { Reject::Truncated } else { Reject::NotAFrame })
    }
}

/// Checks the CRC of a whole frame (as [`Deframer`] returns it) in `variant`; hex digits of either
/// case are accepted.
///
/// # Errors
/// [`Reject::BadCrc`] when it does not match, [`Reject::BadLength`] for bytes that are not a frame.
pub fn check_crc(frame: &[u8], variant: CrcVariant) -> Result<(), Reject> {
    let data = data_of(frame).ok_or(Reject::BadLength)?;
    let sent = hex4(&frame[frame.len() - 6..frame.len() - 2]).ok_or(Reject::BadLength)?;
    if crc(variant, data) == sent {
        Ok(())
    } else {
        Err(Reject::BadCrc)
    }
}

/// The data segment of a whole frame.
pub fn data_of(frame: &[u8]) -> Option<&[u8]> {
    (frame.len() >= OVERHEAD && frame.starts_with(b"##")).then(|| &frame[6..frame.len() - 6])
}

/// One entry of the CP: `code-Suffix=value` (`code` empty for plain keys like `DataTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpItem {
    /// The group (`;`-separated part of the CP) the entry is in.
    pub group: u16,
    pub code: String,
    /// `Rtd`, `Avg`, `Flag`…, or the whole key when it has no `-` (`DataTime`).
    pub key: String,
    pub value: String,
}

/// A parsed data segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packet {
    pub qn: Option<String>,
    pub st: Option<String>,
    pub cn: String,
    pub pw: Option<String>,
    pub mn: String,
    /// Absent in 2005-era frames: no answer wanted, no split.
    pub flag: Option<u8>,
    pub pnum: Option<u32>,
    pub pno: Option<u32>,
    pub cp: Vec<CpItem>,
}

/// Flag bit 0 (A): the packet wants an answer.
pub const FLAG_ANSWER: u8 = 1;
/// Flag bit 1 (D): a split packet, PNUM/PNO present.
pub const FLAG_SPLIT: u8 = 2;
/// Flag bits 2–7 hold the protocol version; V0 set is the 2017 edition.
pub const FLAG_V2017: u8 = 4;

impl Packet {
    /// Whether the logger asked for an answer.
    pub fn wants_answer(&self) -> bool {
        self.flag.is_some_and(|f| f & FLAG_ANSWER != 0)
    }

    /// The split position `(PNO, PNUM)` when the packet is one part of several.
    pub fn split(&self) -> Option<(u32, u32)> {
        match (self.pno, self.pnum) {
            (Some(no), Some(num)) if num > 1 || self.flag.is_some_and(|f| f & FLAG_SPLIT != 0) => Some((no, num)),
            _ => None,
        }
    }

    /// The first CP entry without a code named `key` (`DataTime`, `AlarmTime`…).
    pub fn cp_value(&self, key: &str) -> Option<&str> {
        self.cp.iter().find(|i| i.code.is_empty() && i.key == key).map(|i| i.value.as_str())
    }
}

/// Splits the header fields and the CP of a data segment; the fields may come in any order and with
/// empty parts between `;`.
///
/// # Errors
/// [`Reject::MissingField`] without `CN`, `MN` or `CP=&&…&&`; [`Reject::BadField`] for a PNUM/PNO
/// that is not a positive number or a non-UTF-8 segment.
pub fn parse(data: &[u8]) -> Result<Packet, Reject> {
    let text = std::str::from_utf8(data).map_err(|_| Reject::BadField)?;
    let cp_at = text.find("CP=&&").ok_or(Reject::MissingField)?;
    let inner_start = cp_at + 5;
    let cp_end = text[inner_start..].rfind("&&").ok_or(Reject::MissingField)? + inner_start;
    let mut p = Packet::default();
    let (mut cn, mut mn) = (None, None);
    for field in text[..cp_at].split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let Some((k, v)) = field.split_once('=') else { continue };
        let v = v.trim();
        match k.trim() {
            "QN" => p.qn = Some(v.to_owned()),
            "ST" => p.st = Some(v.to_owned()),
            "CN" => cn = Some(v.to_owned()),
            "PW" => p.pw = Some(v.to_owned()),
            "MN" => mn = Some(v.to_owned()),
            "Flag" => p.flag = Some(v.parse().map_err(|_| Reject::BadField)?),
            "PNUM" => p.pnum = Some(v.parse().ok().filter(|&n| n > 0).ok_or(Reject::BadField)?),
            "PNO" => p.pno = Some(v.parse().ok().filter(|&n| n > 0).ok_or(Reject::BadField)?),
            _ => {}
        }
    }
    p.cn = cn.filter(|c| !c.is_empty()).ok_or(Reject::MissingField)?;
    p.mn = mn.filter(|m| !m.is_empty()).ok_or(Reject::MissingField)?;
    if let (Some(no), Some(num)) = (p.pno, p.pnum) {
        if no > num {
            return Err(Reject::BadField);
        }
    }
    p.cp = parse_cp(&text[inner_start..cp_end]);
    Ok(p)
}

/// The CP entries: groups split by `;`, entries by `,`; empty parts (stray separators) skipped.
pub fn parse_cp(cp: &str) -> Vec<CpItem> {
    let mut out = Vec::new();
    for (g, group) in cp.split(';').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
        for item in group.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((k, v)) = item.split_once('=') else { continue };
            let (code, key) = match k.split_once('-') {
                Some((c, s)) => (c.trim(), s.trim()),
                None => ("", k.trim()),
            };
            out.push(CpItem {
                group: u16::try_from(g).unwrap_or(u16::MAX),
                code: code.to_owned(),
                key: key.to_owned(),
                value: v.trim().to_owned(),
            });
        }
    }
    out
}

/// A local date and time from a DataTime: `YYYYMMDDhhmmss`, optionally followed by three digits of
/// milliseconds.
pub fn parse_time(s: &str) -> Option<chrono::NaiveDateTime> {
    if !(s.len() == 14 || s.len() == 17) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(n(0..4)?).ok()?, n(4..6)?, n(6..8)?)?;
    let ms = if s.len() == 17 { n(14..17)? } else { 0 };
    date.and_hms_milli_opt(n(8..10)?, n(10..12)?, n(12..14)?, ms)
}

/// A data flag (`code-Flag`), the state of the value it goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFlag {
    /// N: normal, the only flag valid for compliance.
    Normal,
    /// F: the monitored unit stopped.
    Stopped,
    /// M: maintenance.
    Maintenance,
    /// S: manually entered value.
    Manual,
    /// D: analyser fault.
    Fault,
    /// C: calibration.
    Calibration,
    /// T: over the measuring range.
    OverRange,
    /// B: communication with the analyser abnormal.
    CommFault,
}

impl DataFlag {
    /// The flag of a `Flag=` value; an unknown letter is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "N" => Self::Normal,
            "F" => Self::Stopped,
            "M" => Self::Maintenance,
            "S" => Self::Manual,
            "D" => Self::Fault,
            "C" => Self::Calibration,
            "T" => Self::OverRange,
            "B" => Self::CommFault,
            _ => return None,
        })
    }
}

/// One value of a packet: pollutant code, suffix (`Rtd`, `Avg`…), number and the group's flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<'a> {
    pub code: &'a str,
    pub suffix: &'a str,
    pub value: f64,
    /// The `code-Flag` of the same group; `None` when the group has none (taken as N).
    pub flag: Option<DataFlag>,
    /// The flag letter when it is not one the standard defines.
    pub unknown_flag: bool,
}

/// The numeric readings of a packet with their flags; entries whose value is not a number are
/// returned apart by key so the caller can count them.
pub fn readings(p: &Packet) -> (Vec<Reading<'_>>, Vec<&CpItem>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for item in p.cp.iter().filter(|i| !i.code.is_empty() && i.key != "Flag") {
        let flag_item = p.cp.iter().find(|f| f.group == item.group && f.code == item.code && f.key == "Flag");
        let flag = flag_item.and_then(|f| DataFlag::parse(&f.value));
        let unknown_flag = flag_item.is_some() && flag.is_none();
        match item.value.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                out.push(Reading { code: &item.code, suffix: &item.key, value: v, flag, unknown_flag })
            }
            _ => bad.push(item),
        }
    }
    (out, bad)
}

/// Header fields of a frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub qn: Option<&'a str>,
    pub st: &'a str,
    pub cn: &'a str,
    pub pw: &'a str,
    pub mn: &'a str,
    pub flag: u8,
    /// `(PNUM, PNO)` of a split packet.
    pub split: Option<(u32, u32)>,
}

/// The data segment `QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&cp&&`.
pub fn data_segment(h: &Header<'_>, cp: &str) -> String {
    let mut s = String::with_capacity(96 + cp.len());
    if let Some(qn) = h.qn {
        let _ = write!(s, "QN={qn};");
    }
    let _ = write!(s, "ST={};CN={};PW={};MN={};Flag={};", h.st, h.cn, h.pw, h.mn, h.flag);
    if let Some((num, no)) = h.split {
        let _ = write!(s, "PNUM={num};PNO={no};");
    }
    let _ = write!(s, "CP=&&{cp}&&");
    s
}

/// A whole frame around a data segment: `##`, length, data, CRC (upper-case hex), CR LF.
///
/// # Errors
/// The data segment is longer than four digits can say.
pub fn frame(variant: CrcVariant, data: &str) -> Result<Vec<u8>, usize> {
    if data.len() > 9999 {
        return Err(data.len());
    }
    let mut out = Vec::with_capacity(data.len() + OVERHEAD);
    out.extend_from_slice(format!("##{:04}", data.len()).as_bytes());
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(format!("{:04X}\r\n", crc(variant, data.as_bytes())).as_bytes());
    Ok(out)
}

/// The platform's answer to an upload (`CN=9014`, data answer): same QN, ST 91 (system interaction),
/// Flag 4 (2017 edition, no answer wanted), empty CP.
pub fn data_answer(variant: CrcVariant, qn: Option<&str>, pw: &str, mn: &str) -> Vec<u8> {
    let h = Header { qn, st: "91", cn: "9014", pw, mn, flag: FLAG_V2017, split: None };
    // An answer of header fields only is far below 9999 bytes.
    frame(variant, &data_segment(&h, "")).unwrap_or_default()
}

/// The answer to a request (`CN=9011`): same QN, `QnRtn` the request's outcome.
pub fn request_answer(variant: CrcVariant, qn: Option<&str>, pw: &str, mn: &str, qn_rtn: u8) -> Vec<u8> {
    let h = Header { qn, st: "91", cn: "9011", pw, mn, flag: FLAG_V2017, split: None };
    frame(variant, &data_segment(&h, &format!("QnRtn={qn_rtn}"))).unwrap_or_default()
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
