//! Ledger entries and the hash chain over them, and the receipt a sender
//! gets. The entry hash covers the exact envelope bytes the ledger was given.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ids::Timestamp;

/// blake3 key-derivation context: an entry hash can never be confused with a
/// blake3 hash of anything else.
const ENTRY_HASH_CONTEXT: &str = "custody 2026-11 ledger entry v1";
/// Version byte of the stored encoding.
const ENCODING_V1: u8 = 1;

/// A 32-byte blake3 hash, shown as lowercase hex (ordered as its hex is).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev_hash` of entry 1.
    pub const GENESIS: Hash = Hash([0; 32]);

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
    pub fn from_hex(s: &str) -> Option<Hash> {
        (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| blake3::Hash::from_hex(s).ok().map(|h| Hash(*h.as_bytes())))
            .flatten()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// On the wire: 64 lowercase hex digits, nothing else.
impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        Hash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("a hash is 64 lowercase hex digits"))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

/// One committed event: its place in the chain and the bytes it was sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the ledger, from 1, without gaps.
    pub seq: u64,
    /// Hash of entry `seq - 1`, or [`Hash::GENESIS`] for entry 1.
    pub prev_hash: Hash,
    /// When the ledger accepted it.
    pub recorded_at: Timestamp,
    /// The exact DSSE envelope bytes received.
    pub envelope: Vec<u8>,
    /// `blake3(seq, prev_hash, recorded_at, envelope)`, see [`Entry::compute_hash`].
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {seq}: stored bytes are not a ledger entry ({why})")]
    Undecodable { seq: u64, why: String },
    #[error("entry {seq}: hash does not match its contents (stored {stored}, computed {computed})")]
    HashMismatch { seq: u64, stored: Hash, computed: Hash },
    #[error("entry {seq}: prev_hash {found} does not link to entry {}'s hash {expected}", seq.saturating_sub(1))]
    BrokenLink { seq: u64, expected: Hash, found: Hash },
    #[error("entry {seq}: expected seq {expected} (gap or reordering)")]
    OutOfOrder { seq: u64, expected: u64 },
}

impl ChainError {
    /// The first seq that is wrong.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Undecodable { seq, .. }
            | ChainError::HashMismatch { seq, .. }
            | ChainError::BrokenLink { seq, .. }
            | ChainError::OutOfOrder { seq, .. } => *seq,
        }
    }
}

/// An entry whose own hash was computed and found right, and whose link
/// to the entry before it was checked ([`Entry::linked_after`]): what a
/// follower of the committed stream hands on. Whoever applies it next
/// checks only that it follows what they hold ([`Linked::check_follows`]),
/// without hashing it again: a replay hashed every entry twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked(Entry);

impl Linked {
    /// Checks that it comes right after `prev` (seq and link); its own hash
    /// was checked when it was linked.
    pub fn check_follows(&self, prev: Option<(u64, Hash)>) -> Result<(), ChainError> {
        self.0.check_follows(prev)
    }

    pub fn into_entry(self) -> Entry {
        self.0
    }
}

impl std::borrow::Borrow<Entry> for Linked {
    fn borrow(&self) -> &Entry {
        &self.0
    }
}

impl std::ops::Deref for Linked {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.0
    }
}

impl Entry {
    /// Builds the next entry after `prev` (`None` for the first).
    pub fn next(prev: Option<(u64, Hash)>, recorded_at: Timestamp, envelope: Vec<u8>) -> Entry {
        let (seq, prev_hash) = prev.map_or((1, Hash::GENESIS), |(s, h)| (s + 1, h));
        let hash = Entry::compute_hash(seq, &prev_hash, &recorded_at, &envelope);
        Entry { seq, prev_hash, recorded_at, envelope, hash }
    }

    /// Length-prefixed fields under a domain-separated blake3 key, so no two
    /// different entries can hash the same bytes.
    pub fn compute_hash(seq: u64, prev_hash: &Hash, recorded_at: &Timestamp, envelope: &[u8]) -> Hash {
        let ts = recorded_at.to_rfc3339();
        let mut h = blake3::Hasher::new_derive_key(ENTRY_HASH_CONTEXT);
        h.update(&seq.to_be_bytes());
        h.update(&prev_hash.0);
        h.update(&(ts.len() as u64).to_be_bytes());
        h.update(ts.as_bytes());
        h.update(&(envelope.len() as u64).to_be_bytes());
        h.update(envelope);
        Hash(*h.finalize().as_bytes())
    }

    /// Checks this entry's own hash and its link to the previous entry.
    pub fn check_after(&self, prev: Option<(u64, Hash)>) -> Result<(), ChainError> {
        self.check_follows(prev)?;
        let computed = Entry::compute_hash(self.seq, &self.prev_hash, &self.recorded_at, &self.envelope);
        if computed != self.hash {
            return Err(ChainError::HashMismatch { seq: self.seq, stored: self.hash, computed });
        }
        Ok(())
    }

    /// Checks only that this entry comes right after `prev`: its seq and
    /// its link, not its own hash ([`Entry::check_after`] does both).
    fn check_follows(&self, prev: Option<(u64, Hash)>) -> Result<(), ChainError> {
        // Checked: a predecessor at u64::MAX (from bytes nobody validated)
        // has no successor, and must not wrap to 0 or panic.
        let (expected_seq, expected_prev) = prev.map_or((Some(1), Hash::GENESIS), |(s, h)| (s.checked_add(1), h));
        if expected_seq != Some(self.seq) {
            return Err(ChainError::OutOfOrder { seq: self.seq, expected: expected_seq.unwrap_or(u64::MAX) });
        }
        if self.prev_hash != expected_prev {
            return Err(ChainError::BrokenLink { seq: self.seq, expected: expected_prev, found: self.prev_hash });
        }
        Ok(())
    }

    /// This entry, its hash and its link to `prev` checked
    /// ([`Entry::check_after`]), as a [`Linked`] entry.
    pub fn linked_after(self, prev: Option<(u64, Hash)>) -> Result<Linked, ChainError> {
        self.check_after(prev)?;
        Ok(Linked(self))
    }

    /// Storage encoding: `v1 | seq | prev | hash | len(ts) u16 | ts | envelope`.
    pub fn encode(&self) -> Vec<u8> {
        let ts = self.recorded_at.to_rfc3339();
        let mut out = Vec::with_capacity(75 + ts.len() + self.envelope.len());
        out.push(ENCODING_V1);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash.0);
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&(ts.len() as u16).to_be_bytes());
        out.extend_from_slice(ts.as_bytes());
        out.extend_from_slice(&self.envelope);
        out
    }

    /// Decodes a stored entry; `seq` is where it was found, for the error.
    /// Decoding does not check the hash: see [`Entry::check_after`].
    pub fn decode(seq: u64, bytes: &[u8]) -> Result<Entry, ChainError> {
        let bad = |why: &str| ChainError::Undecodable { seq, why: why.to_owned() };
        if bytes.len() < 75 || bytes[0] != ENCODING_V1 {
            return Err(bad("too short or unknown version"));
        }
        let take32 = |at: usize| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&bytes[at..at + 32]);
            Hash(a)
        };
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&bytes[1..9]);
        let ts_len = usize::from(u16::from_be_bytes([bytes[73], bytes[74]]));
        let ts_end = 75 + ts_len;
        if bytes.len() < ts_end {
            return Err(bad("truncated time"));
        }
        let recorded_at = std::str::from_utf8(&bytes[75..ts_end]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("recorded_at is not a time"))?;
        Ok(Entry { seq: u64::from_be_bytes(seq_bytes), prev_hash: take32(9), hash: take32(41), recorded_at, envelope: bytes[ts_end..].to_vec() })
    }
}

/// Header names of an entry on the committed stream, whose message payload
/// is the envelope: the wire form every follower of the ledger reads.
pub const HDR_SEQ: &str = "Custody-Seq";
pub const HDR_HASH: &str = "Custody-Hash";
pub const HDR_PREV: &str = "Custody-Prev-Hash";
pub const HDR_RECORDED_AT: &str = "Custody-Recorded-At";

impl Entry {
    /// The chain fields as message headers.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [(HDR_SEQ, self.seq.to_string()), (HDR_HASH, self.hash.to_hex()), (HDR_PREV, self.prev_hash.to_hex()), (HDR_RECORDED_AT, self.recorded_at.to_rfc3339())]
    }

    /// Rebuilds an entry from message headers and payload. Does not check
    /// the hash: see [`Entry::check_after`].
    pub fn from_headers<'a>(get: impl Fn(&'static str) -> Option<&'a str>, envelope: Vec<u8>) -> Result<Entry, String> {
        let field = |name: &'static str| get(name).ok_or_else(|| format!("missing header {name}"));
        let seq = field(HDR_SEQ)?.parse().map_err(|_| "bad seq header".to_owned())?;
        let hash = Hash::from_hex(field(HDR_HASH)?).ok_or("bad hash header")?;
        let prev_hash = Hash::from_hex(field(HDR_PREV)?).ok_or("bad prev hash header")?;
        let recorded_at = field(HDR_RECORDED_AT)?.parse().map_err(|_| "bad recorded_at header".to_owned())?;
        Ok(Entry { seq, prev_hash, recorded_at, envelope, hash })
    }
}

/// What a sender gets back: a receipt for an entry on disk, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    Receipt(Receipt),
    Rejected(Refusal),
}

/// Proof of acceptance: sent only after the entry is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub id: String,
    pub seq: u64,
    /// Entry hash (lowercase hex on the wire).
    pub hash: Hash,
    pub recorded_at: String,
}

/// A refusal on the wire: the event id when it could be read, the stable
/// code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub id: Option<String>,
    pub code: crate::Code,
    pub message: String,
    /// With `rate_limited`: how long to wait before sending again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timestamp {
        "2024-09-02T00:00:00Z".parse().unwrap()
    }

    /// Found by `fuzz/ entry`: a predecessor at u64::MAX overflowed (a
    /// panic in debug builds, a silent wrap to seq 0 in release).
    #[test]
    fn no_successor_after_the_largest_seq() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions/entry-seq-overflow")).unwrap();
        let e = Entry::decode(7, &bytes).unwrap();
        assert_eq!(e.seq, 0);
        assert!(matches!(e.check_after(Some((u64::MAX, e.prev_hash))), Err(ChainError::OutOfOrder { seq: 0, expected: u64::MAX })));
        let mut last = Entry::next(None, t(), b"x".to_vec());
        last.seq = 5;
        assert!(last.check_after(Some((u64::MAX, Hash::GENESIS))).is_err());
    }

    #[test]
    fn chain_links_and_detects_tampering() {
        let e1 = Entry::next(None, t(), b"one".to_vec());
        let e2 = Entry::next(Some((e1.seq, e1.hash)), t(), b"two".to_vec());
        assert_eq!((e1.seq, e2.seq), (1, 2));
        e1.check_after(None).unwrap();
        e2.check_after(Some((1, e1.hash))).unwrap();
        let mut forged = e2.clone();
        forged.envelope = b"tw0".to_vec();
        assert!(matches!(forged.check_after(Some((1, e1.hash))), Err(ChainError::HashMismatch { seq: 2, .. })));
        assert!(matches!(e2.check_after(Some((1, Hash::GENESIS))), Err(ChainError::BrokenLink { seq: 2, .. })));
        assert!(matches!(e2.check_after(None), Err(ChainError::OutOfOrder { seq: 2, .. })));
    }

    /// A forged entry never becomes [`Linked`], and a linked one is still
    /// refused where it does not follow: only its own hash is not computed
    /// again.
    #[test]
    fn only_a_checked_entry_is_linked_and_it_must_still_follow() {
        let e1 = Entry::next(None, t(), b"one".to_vec());
        let e2 = Entry::next(Some((e1.seq, e1.hash)), t(), b"two".to_vec());
        let mut forged = e2.clone();
        forged.envelope = b"tw0".to_vec();
        assert!(matches!(forged.linked_after(Some((1, e1.hash))), Err(ChainError::HashMismatch { seq: 2, .. })));
        let linked = e2.clone().linked_after(Some((1, e1.hash))).unwrap();
        assert_eq!(*linked, e2);
        linked.check_follows(Some((1, e1.hash))).unwrap();
        assert!(matches!(linked.check_follows(Some((1, Hash::GENESIS))), Err(ChainError::BrokenLink { seq: 2, .. })));
        assert!(matches!(linked.check_follows(Some((2, e2.hash))), Err(ChainError::OutOfOrder { seq: 2, expected: 3 })));
    }

    #[test]
    fn encoding_round_trips() {
        let e = Entry::next(Some((41, Hash([7; 32]))), t(), br#"{"payloadType":"x"}"#.to_vec());
        assert_eq!(Entry::decode(42, &e.encode()).unwrap(), e);
        assert!(Entry::decode(42, &e.encode()[..60]).is_err());
    }

    #[test]
    fn hash_hex() {
        let h = Hash([0xab; 32]);
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), None);
    }
}
