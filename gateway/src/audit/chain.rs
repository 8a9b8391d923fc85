//! The hash chain, pure: the canonical encoding of a record, its SHA-256, and the check of a whole
//! sequence of records in order of `seq`. No I/O, so the properties are tested on plain values.
//!
//! The encoding is unambiguous: a fixed version tag, then every field in a fixed order, integers as
//! 8 big-endian bytes and texts as an 8-byte big-endian length followed by their bytes. Two records
//! that differ in any field, or only in where one field ends and the next begins, encode differently.

use sha2::{Digest as _, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Tags the encoding, so a later change of the field set cannot collide with this one.
const VERSION: &[u8] = b"parkwatch-audit-v1\0";

/// One record as stored: texts as raw bytes, so a hand edit that breaks UTF-8 is still checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub seq: i64,
    pub time_ns: i64,
    pub actor: Vec<u8>,
    pub source: Vec<u8>,
    pub action: Vec<u8>,
    pub target: Vec<u8>,
    pub outcome: Vec<u8>,
    pub detail: Vec<u8>,
    pub prev_hash: Vec<u8>,
    /// Lowercase hex SHA-256 of the encoding of every other field.
    pub hash: Vec<u8>,
}

/// Lowercase hex SHA-256 of a record's fields, `prev_hash` included.
#[allow(clippy::too_many_arguments)]
pub fn digest(
    seq: i64,
    time_ns: i64,
    actor: &[u8],
    source: &[u8],
    action: &[u8],
    target: &[u8],
    outcome: &[u8],
    detail: &[u8],
    prev_hash: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update(VERSION);
    h.update(seq.to_be_bytes());
    h.update(time_ns.to_be_bytes());
    for text in [actor, source, action, target, outcome, detail, prev_hash] {
        h.update((text.len() as u64).to_be_bytes());
        h.update(text);
    }
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

impl RawRecord {
    /// The hash this record's fields call for.
    pub fn expected_hash(&self) -> String {
        digest(
            self.seq,
            self.time_ns,
            &self.actor,
            &self.source,
            &self.action,
            &self.target,
            &self.outcome,
            &self.detail,
            &self.prev_hash,
        )
    }
}

/// What is wrong with the first broken record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The record's fields do not give its stored hash: it was edited.
    HashMismatch,
    /// Its `prev_hash` is not the hash of the record before it.
    PrevLink,
    /// Its `seq` is not one more than the record before it (`expected`): records were removed.
    Gap { expected: i64 },
    /// A field could not be read as its type (a hand edit stored text where a number belongs).
    Unreadable { field: &'static str },
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub fault: Fault,
}

/// Checks the chain link by link, records in order of `seq`; stops at the first broken record.
/// Returns how many records were checked, or the first broken one.
///
/// # Errors
/// The first record that breaks the chain, and how.
pub fn verify<I, E>(records: I) -> Result<Result<u64, Broken>, E>
where
    I: IntoIterator<Item = Result<Result<RawRecord, Broken>, E>>,
{
    let mut expected_seq = 1;
    let mut prev = GENESIS.as_bytes().to_vec();
    let mut n = 0;
    for r in records {
        let r = match r? {
            Ok(r) => r,
            Err(broken) => return Ok(Err(broken)),
        };
        let fault = if r.seq != expected_seq {
            Some(Fault::Gap { expected: expected_seq })
        } else if r.prev_hash != prev {
            Some(Fault::PrevLink)
        } else if r.hash != r.expected_hash().as_bytes() {
            Some(Fault::HashMismatch)
        } else {
            None
        };
        if let Some(fault) = fault {
            return Ok(Err(Broken { seq: r.seq, fault }));
        }
        expected_seq = r.seq + 1;
        prev = r.hash;
        n += 1;
    }
    Ok(Ok(n))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A valid chain of `n` records.
    fn chain(n: usize) -> Vec<RawRecord> {
        let mut out: Vec<RawRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map_or(GENESIS.as_bytes().to_vec(), |r| r.hash.clone());
            let mut r = RawRecord {
                seq: i as i64 + 1,
                time_ns: 1_700_000_000_000_000_000 + i as i64,
                actor: format!("officer-{i}").into_bytes(),
                source: b"10.0.0.7:51000".to_vec(),
                action: b"incident.ack".to_vec(),
                target: format!("incident:{}", 40 + i).into_bytes(),
                outcome: b"ok".to_vec(),
                detail: "值班确认".as_bytes().to_vec(),
                prev_hash: prev,
                hash: Vec::new(),
            };
            r.hash = r.expected_hash().into_bytes();
            out.push(r);
        }
        out
    }

    fn check(records: &[RawRecord]) -> Result<u64, Broken> {
        verify(records.iter().cloned().map(|r| Ok::<_, ()>(Ok(r)))).unwrap()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(check(&chain(5)), Ok(5));
        assert_eq!(check(&[]), Ok(0));
    }

    #[test]
    fn an_edited_field_names_its_record() {
        let mut c = chain(5);
        c[2].actor = b"someone-else".to_vec();
        assert_eq!(check(&c), Err(Broken { seq: 3, fault: Fault::HashMismatch }));
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].outcome = b"refused".to_vec();
        c[2].hash = c[2].expected_hash().into_bytes();
        assert_eq!(check(&c), Err(Broken { seq: 4, fault: Fault::PrevLink }));
    }

    #[test]
    fn a_deleted_record_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(check(&c), Err(Broken { seq: 3, fault: Fault::Gap { expected: 2 } }));
        let mut c = chain(5);
        c.remove(0);
        assert_eq!(check(&c), Err(Broken { seq: 2, fault: Fault::Gap { expected: 1 } }));
    }

    #[test]
    fn a_deleted_record_renumbered_breaks_the_link() {
        let mut c = chain(5);
        c.remove(1);
        for r in &mut c[1..] {
            r.seq -= 1;
        }
        // Renumbering changes the hashed seq too; the first renumbered record no longer links.
        assert_eq!(check(&c).unwrap_err().seq, 2);
    }

    #[test]
    fn field_boundaries_are_part_of_the_hash() {
        let a = digest(1, 2, b"ab", b"c", b"", b"", b"", b"", b"");
        let b = digest(1, 2, b"a", b"bc", b"", b"", b"", b"", b"");
        assert_ne!(a, b);
    }

    /// The bytes of field `f` of a record; integers as their 8 big-endian bytes.
    fn field(r: &mut RawRecord, f: usize, change: impl FnOnce(&mut Vec<u8>)) {
        match f {
            0 | 1 => {
                let v = if f == 0 { &mut r.seq } else { &mut r.time_ns };
                let mut bytes = v.to_be_bytes().to_vec();
                change(&mut bytes);
                *v = i64::from_be_bytes(bytes.try_into().unwrap());
            }
            2 => change(&mut r.actor),
            3 => change(&mut r.source),
            4 => change(&mut r.action),
            5 => change(&mut r.target),
            6 => change(&mut r.outcome),
            7 => change(&mut r.detail),
            8 => change(&mut r.prev_hash),
            _ => change(&mut r.hash),
        }
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_detected(
            n in 1usize..8,
            which in any::<prop::sample::Index>(),
            f in 0usize..10,
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut c = chain(n);
            let i = which.index(n);
            field(&mut c[i], f, |bytes| {
                let k = at.index(bytes.len());
                bytes[k] ^= xor;
            });
            let r = check(&c);
            prop_assert!(r.is_err(), "record {} field {} changed but the chain verified", i + 1, f);
            // The break is found at the changed record (its seq may itself be what changed).
            let broken = r.unwrap_err();
            prop_assert!(broken.seq == c[i].seq, "{broken:?} for a change in record {}", i + 1);
        }
    }
}
