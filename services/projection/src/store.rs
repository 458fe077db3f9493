//! The projection's own store: whole snapshots of its state, the only
//! module that knows how the state is kept on disk.
//!
//! A snapshot is one file, `snapshot-<seq>.json`, named by the seq it
//! reflects and written whole or not at all (`files::write_whole_with`:
//! a temporary file, fsynced, renamed, the folder fsynced). Inside: a
//! header line `{"format","version","seq","hash"}` (the checkpoint), one
//! line with every record, and a last line `blake3 <hex>` over everything
//! before it. Loading takes the newest snapshot whose checksum and records
//! check, and falls back to the one before, then to nothing (a full
//! replay): a damaged or truncated file is never served. The two newest
//! are kept.
//!
//! Why snapshots and not records (the projection kept one sled record per
//! touched lot, saved with every chunk, until issue 14): writing records
//! cost 14.5 µs of each entry's 27 µs at replay (docs/BENCHMARKS.md), for
//! a store that can always be rebuilt from the committed stream. A
//! snapshot costs one sequential write every `--snapshot-every` entries.
//! What a crash loses is replayed from the snapshot's checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use custody_proto::Hash;
use custody_wire::files::{self, FileError, Hashing, Mode};
use serde::{Deserialize, Serialize};

use crate::view::{Actor, Lot, Named, Shipment, State, Yields};

const FORMAT: &str = "custody projection snapshot";
/// The layout of the records: a snapshot of another layout is skipped at
/// load, and the projection rebuilds from seq 1 (it is only a projection).
const VERSION: u32 = 5;
/// Snapshots kept: the newest and the one before, to fall back to.
const KEEP: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store: {0}")]
    File(#[from] FileError),
    #[error("projection store {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a snapshot was not loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Damage {
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error("it has no checksum line (truncated?)")]
    NoChecksum,
    #[error("its checksum does not match its contents")]
    Checksum,
    #[error("its records do not parse: {0}")]
    Records(String),
    #[error("it is of another format or version")]
    Format,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    seq: u64,
    hash: String,
}

#[derive(Serialize)]
struct RecordsRef<'a> {
    lots: &'a BTreeMap<String, Box<Lot>>,
    actors: &'a BTreeMap<String, Actor>,
    shipments: &'a BTreeMap<String, Shipment>,
    yields: &'a BTreeMap<String, Yields>,
    references: &'a BTreeMap<String, Vec<Named>>,
    flows: &'a crate::statistics::Flows,
}

#[derive(Deserialize)]
struct Records {
    lots: BTreeMap<String, Box<Lot>>,
    actors: BTreeMap<String, Actor>,
    shipments: BTreeMap<String, Shipment>,
    yields: BTreeMap<String, Yields>,
    references: BTreeMap<String, Vec<Named>>,
    flows: crate::statistics::Flows,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { dir: dir.to_path_buf(), source })?;
        // The sled store of a projection before issue 14: rebuilt as
        // snapshots from the stream, so its files only take room.
        if dir.join("conf").is_file() && dir.join("db").is_file() {
            tracing::warn!(dir = %dir.display(), "removing the projection's old sled store; the state is rebuilt from the stream");
            for name in ["conf", "db", "blobs"] {
                let path = dir.join(name);
                let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with("snap.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// The snapshots in the folder, newest first: `(seq, path)`.
    pub fn snapshots(&self) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let listing = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io { dir: self.dir.clone(), source })?;
        let mut found: Vec<(u64, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_prefix("snapshot-")?.strip_suffix(".json")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        found.sort_by_key(|s| std::cmp::Reverse(s.0));
        Ok(found)
    }

    /// The newest snapshot that checks; an empty state (so a replay from
    /// seq 1) if none does. Each one skipped is logged with why.
    pub fn load(&self) -> Result<State, StoreError> {
        for (seq, path) in self.snapshots()? {
            match read(&path) {
                Ok(state) => return Ok(state),
                Err(why) => tracing::warn!(seq, path = %path.display(), %why, "skipping a damaged projection snapshot; falling back to an older one"),
            }
        }
        Ok(State::default())
    }

    /// Writes a snapshot of `state` (nothing before the first entry), then
    /// removes all but the newest [`KEEP`].
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let Some((seq, hash)) = state.checkpoint else { return Ok(()) };
        let path = self.dir.join(format!("snapshot-{seq:020}.json"));
        files::write_whole_with(&path, Mode::Shared, |w| {
            // Buffered above the hasher too: serde writes in pieces of a
            // few bytes, and blake3 is fast on large ones.
            let mut h = std::io::BufWriter::with_capacity(1 << 20, Hashing::new(w));
            let header = Header { format: FORMAT.to_owned(), version: VERSION, seq, hash: hash.to_hex() };
            serde_json::to_writer(&mut h, &header)?;
            h.write_all(b"\n")?;
            let records = RecordsRef {
                lots: &state.lots,
                actors: &state.actors,
                shipments: &state.shipments,
                yields: &state.yields,
                references: &state.references,
                flows: &state.flows,
            };
            serde_json::to_writer(&mut h, &records)?;
            h.write_all(b"\n")?;
            let (w, sum) = h.into_inner().map_err(|e| e.into_error())?.finish();
            custody_wire::crashpoint::reached("projection.snapshot.writing");
            writeln!(w, "blake3 {}", sum.to_hex())
        })?;
        custody_wire::crashpoint::reached("projection.snapshot.saved");
        for (_, old) in self.snapshots()?.into_iter().skip(KEEP) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    /// Removes every snapshot, for a rebuild from seq 1.
    pub fn clear(&self) -> Result<(), StoreError> {
        for (_, path) in self.snapshots()? {
            std::fs::remove_file(&path).map_err(|source| StoreError::Io { dir: self.dir.clone(), source })?;
        }
        Ok(())
    }
}

/// The last line of a snapshot: `blake3 <64 hex>\n`.
const TRAILER: u64 = 72;

/// One snapshot, checked: checksum, format, records. Read twice, in
/// pieces, never whole: once for the checksum, once to parse what it
/// vouched for (a snapshot of ten million lots is about 10 GB).
pub fn read(path: &Path) -> Result<State, Damage> {
    use std::io::{BufRead as _, Read as _, Seek as _};
    let unreadable = |e: std::io::Error| Damage::Unreadable(e.to_string());
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let body_len = file.metadata().map_err(unreadable)?.len().checked_sub(TRAILER).ok_or(Damage::NoChecksum)?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, (&mut file).take(body_len)), &mut hasher).map_err(unreadable)?;
    let mut trailer = String::new();
    file.read_to_string(&mut trailer).map_err(|_| Damage::NoChecksum)?;
    let sum = trailer.strip_prefix("blake3 ").and_then(|t| t.strip_suffix('\n')).ok_or(Damage::NoChecksum)?;
    if hasher.finalize().to_hex().as_str() != sum {
        return Err(Damage::Checksum);
    }
    file.rewind().map_err(unreadable)?;
    let mut body = std::io::BufReader::with_capacity(1 << 20, file.take(body_len));
    let mut line = Vec::new();
    body.read_until(b'\n', &mut line).map_err(unreadable)?;
    let header: Header = serde_json::from_slice(&line).map_err(|_| Damage::Format)?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(Damage::Format);
    }
    let hash = Hash::from_hex(&header.hash).ok_or(Damage::Format)?;
    let records: Records = serde_json::from_reader(body).map_err(|e| Damage::Records(e.to_string()))?;
    let mut state = State {
        checkpoint: Some((header.seq, hash)),
        lots: records.lots,
        actors: records.actors,
        shipments: records.shipments,
        yields: records.yields,
        flags: Vec::new(),
        gaps: Vec::new(),
        references: records.references,
        flows: records.flows,
    };
    state.index_flags();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Actor;

    fn state(seq: u64, actors: usize) -> State {
        let mut s = State { checkpoint: Some((seq, Hash([seq as u8; 32]))), ..State::default() };
        for i in 0..actors {
            s.actors.insert(
                format!("U{i}"),
                Actor { name: format!("actor {i}"), registered: i as u64 + 1, country: None, roles: Vec::new(), revoked: false, revoked_at: 0 },
            );
            // The numbers on papers are kept too (search needs them).
            s.references.insert(format!("inv-{i}"), vec![Named { lot: format!("L{i}"), seq: i as u64 + 1, what: "invoice".into() }]);
        }
        s
    }

    #[test]
    fn the_newest_whole_snapshot_loads_and_a_damaged_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), State::default(), "nothing yet: replay from seq 1");
        for (seq, n) in [(10, 1), (20, 2), (30, 3)] {
            store.save(&state(seq, n)).unwrap();
        }
        assert_eq!(store.snapshots().unwrap().iter().map(|s| s.0).collect::<Vec<_>>(), [30, 20], "the two newest are kept");
        assert_eq!(store.load().unwrap(), state(30, 3));

        let newest = store.snapshots().unwrap()[0].1.clone();
        let whole = std::fs::read(&newest).unwrap();
        // Any byte changed, anywhere, is caught.
        for at in (0..whole.len()).step_by(7) {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x20;
            std::fs::write(&newest, &bytes).unwrap();
            assert!(read(&newest).is_err(), "byte {at} changed and not caught");
            assert_eq!(store.load().unwrap(), state(20, 2), "byte {at}: falls back to the one before");
        }
        // Cut short anywhere.
        for len in [0, 1, whole.len() / 2, whole.len() - 1] {
            std::fs::write(&newest, &whole[..len]).unwrap();
            assert!(read(&newest).is_err(), "cut at {len} and not caught");
        }
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), State::default());
    }
}
