//! The saved write model: the ledger's write model and lot map as they
//! stood after one entry, the *verified-through mark* `(seq, hash)`, so
//! that a start checks the hash chain over every entry (blake3, fast) but
//! verifies signatures and replays events only after the mark.
//!
//! One file, `write-model`, beside the store, written whole or not at all
//! (`files::write_whole_with`: a temporary file, fsynced, renamed, the
//! folder fsynced): [`MAGIC`], the state in postcard (every map in key
//! order: one state, one encoding), then the blake3 of everything before.
//!
//! What a start trusts it for, and why that is safe: the file only names
//! a state the ledger itself computed from entries it had verified, and
//! it is used only when the store's chain, checked entry by entry from
//! seq 1, reaches exactly the mark's hash. An entry before the mark that
//! changed (a byte, a signature) changes its hash and every hash after
//! it, so the chain no longer reaches the mark and the file is not used;
//! an entry after the mark is verified as before, signature and all. A
//! file that is damaged, truncated, of another layout, of another genesis
//! authority or of another history is never served: the ledger says why
//! and rebuilds from the store (the slow start), then saves a good one.
//! A file someone rewrote on purpose, with a forged state *and* the mark
//! of the true chain, is the one thing this cannot catch: whoever can
//! write the ledger's folder can as well replace its store and its key.

use std::io::Write as _;
use std::path::Path;

use custody_proto::lotmap::{Head, LotMap};
use custody_proto::merkle::Tree;
use custody_proto::{ActorKey, Hash, Timestamp};
use custody_wire::files::{self, FileError, Hashing, Mode};
use serde::{Deserialize, Serialize};

use crate::model::Model;

/// The file's name in the ledger's folder.
pub const FILE: &str = "write-model";
/// The file's first bytes: its format and layout version.
/// v2: an event id keeps its entry (seq, hash, time), not a receipt.
/// v3: lots and event ids under their digests, a lot's holder as an
/// actor's number (records of fixed size, decoded without parsing).
/// v4: the lot map's branch hashes beside its heads (not hashed again at
/// start: at ten million lots that was seven seconds of one core).
const MAGIC: &[u8] = b"custody write model v4\n";

/// A lot map head as bytes: `(key, head, count, last)`.
type RawHead = ([u8; 32], [u8; 32], u64, u64);
/// A lot map as saved: its heads in key order, and its branches' hashes
/// in the order `LotMap::branch_hashes` gives.
type RawMap = (Vec<RawHead>, Vec<[u8; 32]>);

#[derive(Serialize)]
struct SavedRef<'a> {
    authority: &'a str,
    seq: u64,
    hash: [u8; 32],
    recorded: Option<Timestamp>,
    model: &'a Model,
    map: Option<RawMap>,
}

#[derive(Deserialize)]
struct SavedOwned {
    #[serde(rename = "authority")]
    _authority: String,
    seq: u64,
    hash: [u8; 32],
    recorded: Option<Timestamp>,
    model: Model,
    map: Option<RawMap>,
}

/// A saved write model, checked and decoded.
pub struct Saved {
    /// The verified-through mark: the last entry the state covers.
    pub seq: u64,
    pub hash: Hash,
    /// That entry's `recorded_at`.
    pub recorded: Option<Timestamp>,
    pub model: Model,
    /// `None` when the ledger that saved it kept no lot map.
    pub map: Option<LotMap>,
}

/// Why a saved write model was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Damage {
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error("it is of another format or layout")]
    Format,
    #[error("its checksum does not match its contents (damaged or truncated)")]
    Checksum,
    #[error("its contents do not decode: {0}")]
    Body(String),
    #[error("it was saved for genesis authority {0}")]
    Authority(String),
    #[error("its lot map is not in key order, or its hashes do not fit its branches")]
    MapOrder,
}

/// Saves the state after entry `head` in `dir`, replacing the last one.
pub fn save(
    dir: &Path,
    authority: &ActorKey,
    head: (u64, Hash),
    recorded: Option<Timestamp>,
    model: &Model,
    map: Option<&mut LotMap>,
) -> Result<(), FileError> {
    let map = map.map(|m| {
        let heads = m.heads().into_iter().map(|(k, h)| (k.0, h.head.0, h.count, h.last)).collect();
        (heads, m.branch_hashes().into_iter().map(|h| h.0).collect())
    });
    let saved = SavedRef { authority: authority.as_str(), seq: head.0, hash: head.1 .0, recorded, model, map };
    files::write_whole_with(&dir.join(FILE), Mode::Shared, |w| {
        let mut h = std::io::BufWriter::with_capacity(1 << 20, Hashing::new(w));
        h.write_all(MAGIC)?;
        postcard::to_io(&saved, &mut h).map_err(std::io::Error::other)?;
        let (w, sum) = h.into_inner().map_err(|e| e.into_error())?.finish();
        custody_wire::crashpoint::reached("ledger.model.writing");
        w.write_all(sum.as_bytes())
    })?;
    custody_wire::crashpoint::reached("ledger.model.saved");
    Ok(())
}

/// A saved state read and checked (checksum, layout, authority) but not
/// yet decoded: its mark is known at once, so that the chain can be
/// checked up to it while the state decodes on another core.
pub struct Read {
    pub seq: u64,
    pub hash: Hash,
    /// The file, mapped: at ten million entries it is gigabytes, which
    /// read into a buffer cost a second or more of the kernel handing out
    /// zeroed pages before a byte is decoded.
    bytes: memmap2::Mmap,
}

/// The fields a saved state begins with.
type Prefix = (String, u64, [u8; 32]);

/// The saved state in `dir`, checked: `Ok(None)` when there is none.
pub fn read(dir: &Path, authority: &ActorKey) -> Result<Option<Read>, Damage> {
    let file = match std::fs::File::open(dir.join(FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Damage::Unreadable(e.to_string())),
    };
    let len = file.metadata().map_err(|e| Damage::Unreadable(e.to_string()))?.len();
    if len < (MAGIC.len() + 32) as u64 {
        let mut start = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut start).map_err(|e| Damage::Unreadable(e.to_string()))?;
        return Err(if MAGIC.starts_with(&start) || start.starts_with(MAGIC) { Damage::Checksum } else { Damage::Format });
    }
    // SAFETY: the mapping is read only, and the file is never written in
    // place: a new state is written to a temporary file and renamed over
    // it (`files::write_whole_with`), which leaves this inode as it is.
    // Whoever could write it in place could as well rewrite the store.
    let bytes = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Damage::Unreadable(e.to_string()))?;
    if !bytes.starts_with(MAGIC) {
        return Err(Damage::Format);
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Damage::Checksum);
    }
    let ((recorded_for, seq, hash), _): (Prefix, _) = postcard::take_from_bytes(&body[MAGIC.len()..]).map_err(|e| Damage::Body(e.to_string()))?;
    if recorded_for != authority.as_str() {
        return Err(Damage::Authority(recorded_for));
    }
    Ok(Some(Read { seq, hash: Hash(hash), bytes }))
}

impl Read {
    /// The state itself.
    pub fn decode(self) -> Result<Saved, Damage> {
        let body = &self.bytes[MAGIC.len()..self.bytes.len() - 32];
        let (saved, rest): (SavedOwned, _) = postcard::take_from_bytes(body).map_err(|e| Damage::Body(e.to_string()))?;
        if !rest.is_empty() {
            return Err(Damage::Body(format!("{} bytes after the state", rest.len())));
        }
        // The file is unmapped before the lot map is built: at ten million
        // entries it is gigabytes the map need not sit beside.
        drop(self.bytes);
        let map = match saved.map {
            None => None,
            Some((heads, branches)) => {
                // Same size and alignment: collected in place, no second copy.
                let heads = heads.into_iter().map(|(k, head, count, last)| (Hash(k), Head { head: Hash(head), count, last })).collect();
                let branches: Vec<Hash> = branches.into_iter().map(Hash).collect();
                Some(LotMap::from_sorted_hashed(heads, &branches).ok_or(Damage::MapOrder)?)
            }
        };
        Ok(Saved { seq: saved.seq, hash: Hash(saved.hash), recorded: saved.recorded, model: saved.model, map })
    }
}

/// One digest of a ledger's whole state after `head`: its write model (in
/// its one encoding), its lot map's root and its tree's root. Two ledgers
/// with one digest decide every submission alike and sign alike.
pub fn digest(head: Option<(u64, Hash)>, model: &Model, map: Option<&mut LotMap>, tree: &Tree) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("custody 2026-12 ledger state digest v1");
    let (seq, hash) = head.unwrap_or((0, Hash::GENESIS));
    h.update(&seq.to_be_bytes());
    h.update(&hash.0);
    // A model that does not encode cannot be saved either; it digests as
    // nothing rather than stopping a check.
    h.update(&postcard::to_allocvec(model).unwrap_or_default());
    h.update(&map.map_or(custody_proto::lotmap::EMPTY, |m| m.root()).0);
    h.update(&tree.root().0);
    Hash(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of another layout or cut short is named for what it is,
    /// never decoded.
    #[test]
    fn another_layout_and_a_short_file_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let authority: ActorKey = nkeys::KeyPair::new_user().public_key().parse().unwrap();
        let write = |bytes: &[u8]| std::fs::write(dir.path().join(FILE), bytes).unwrap();
        assert!(read(dir.path(), &authority).unwrap().is_none(), "no file: a full replay, silently");
        let mut older = b"custody write model v1\n".to_vec();
        older.extend_from_slice(&[0; 64]);
        write(&older);
        assert_eq!(read(dir.path(), &authority).err(), Some(Damage::Format));
        write(&MAGIC[..10]);
        assert_eq!(read(dir.path(), &authority).err(), Some(Damage::Checksum));
        let mut trailing = MAGIC.to_vec();
        trailing.extend_from_slice(b"not postcard");
        let sum = *blake3::hash(&trailing).as_bytes();
        trailing.extend_from_slice(&sum);
        write(&trailing);
        assert!(matches!(read(dir.path(), &authority).err(), Some(Damage::Body(_)) | Some(Damage::Authority(_))));
    }
}
