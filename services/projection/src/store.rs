//! The projection's own store: the only module that knows sled. One tree,
//! keys by prefix (`l/` lots, `a/` actors, `s/` shipments, `y/` yields,
//! `m/checkpoint`), so that a chunk of applied entries and its checkpoint
//! land in one atomic batch: after a crash the state and the checkpoint
//! always agree, and the projection resumes from there.
//!
//! No fsync: everything here can be rebuilt from the committed stream, and
//! sled recovers to a consistent earlier batch, from which entries replay.

use std::path::Path;

use custody_proto::Hash;
use serde::{de::DeserializeOwned, Serialize};

use crate::view::{Dirty, State};

const CHECKPOINT: &[u8] = b"m/checkpoint";
/// The layout of the records: a projection written by another layout is
/// emptied at load and rebuilt from seq 1 (it is only a projection).
const FORMAT: &[u8] = b"m/format";
const FORMAT_VERSION: &[u8] = b"2";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store: {0}")]
    Sled(#[from] sled::Error),
    #[error("projection store holds a damaged record {key}: {why}")]
    Damaged { key: String, why: String },
}

pub struct Store {
    db: sled::Db,
}

fn put<T: Serialize>(batch: &mut sled::Batch, prefix: &str, key: &str, value: Option<&T>) {
    let k = format!("{prefix}{key}");
    match value.and_then(|v| serde_json::to_vec(v).ok()) {
        Some(v) => batch.insert(k.as_bytes(), v),
        None => batch.remove(k.as_bytes()),
    }
}

fn load<T: DeserializeOwned>(db: &sled::Db, prefix: &str) -> Result<std::collections::BTreeMap<String, T>, StoreError> {
    let mut out = std::collections::BTreeMap::new();
    for kv in db.scan_prefix(prefix.as_bytes()) {
        let (k, v) = kv?;
        let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let value = serde_json::from_slice(&v).map_err(|e| StoreError::Damaged { key: key.clone(), why: e.to_string() })?;
        out.insert(key, value);
    }
    Ok(out)
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store { db: sled::Config::new().path(dir).open()? })
    }

    /// Everything, as the last written batch left it; nothing (so a replay
    /// from seq 1) if it was written in another format.
    pub fn load(&self) -> Result<State, StoreError> {
        if self.db.get(FORMAT)?.as_deref() != Some(FORMAT_VERSION) {
            if !self.db.is_empty() {
                tracing::warn!("the projection store was written in another format; rebuilding it from seq 1");
            }
            self.clear()?;
            return Ok(State::default());
        }
        let checkpoint = match self.db.get(CHECKPOINT)? {
            Some(v) if v.len() == 40 => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&v[8..]);
                Some((u64::from_be_bytes(v[..8].try_into().unwrap_or_default()), Hash(h)))
            }
            Some(_) => return Err(StoreError::Damaged { key: "checkpoint".into(), why: "wrong length".into() }),
            None => None,
        };
        let mut state = State {
            checkpoint,
            lots: load(&self.db, "l/")?,
            actors: load(&self.db, "a/")?,
            shipments: load(&self.db, "s/")?,
            yields: load(&self.db, "y/")?,
            flags: Vec::new(),
            gaps: Vec::new(),
        };
        state.index_flags();
        Ok(state)
    }

    /// Writes what `dirty` names, and the checkpoint, as one batch.
    pub fn save(&self, state: &State, dirty: &Dirty) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(FORMAT, FORMAT_VERSION);
        for k in &dirty.lots {
            put(&mut batch, "l/", k, state.lots.get(k));
        }
        for k in &dirty.actors {
            put(&mut batch, "a/", k, state.actors.get(k));
        }
        for k in &dirty.shipments {
            put(&mut batch, "s/", k, state.shipments.get(k));
        }
        for k in &dirty.yields {
            put(&mut batch, "y/", k, state.yields.get(k));
        }
        if let Some((seq, hash)) = state.checkpoint {
            let mut v = seq.to_be_bytes().to_vec();
            v.extend_from_slice(&hash.0);
            batch.insert(CHECKPOINT, v);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Empties the store, for a rebuild from seq 1.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.db.clear()?;
        self.db.flush()?;
        Ok(())
    }
}
