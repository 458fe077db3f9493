//! The ledger's storage: the only module that knows sled. It keeps entries
//! by seq and the chain head, and makes a batch durable before it returns.
//! It knows nothing of events, custody rules or NATS.
//!
//! Keys: `e` + seq (u64 big-endian) holds an encoded [`Entry`]; `m:head`
//! holds `seq || hash` of the last entry; `m:authority` the genesis key.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use custody_proto::{ChainError, Entry, Hash};

const HEAD_KEY: &[u8] = b"m:head";
const AUTHORITY_KEY: &[u8] = b"m:authority";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the ledger store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("ledger store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("ledger store sync failed: {0}")]
    Sync(#[from] std::io::Error),
    #[error("ledger store is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Handle on the ledger store; clones share one database.
#[derive(Clone)]
pub struct Store {
    /// The sled database (internally reference-counted).
    db: sled::Db,
    /// sled's folder, for syncing its files.
    dir: PathBuf,
    /// Blob files already made durable, so each is synced once.
    synced_blobs: Arc<Mutex<HashSet<PathBuf>>>,
}

fn entry_key(seq: u64) -> [u8; 9] {
    let mut k = [b'e'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // We make writes durable ourselves, per batch; sled's own timer
            // would only add syncs that buy nothing.
            .flush_every_ms(None)
            .open()
            .map_err(|source| Store::open_error(dir, source))?;
        let store = Store { db, dir: dir.to_owned(), synced_blobs: Arc::default() };
        store.check_head()?;
        Ok(store)
    }

    fn open_error(dir: &Path, source: sled::Error) -> StoreError {
        StoreError::Open { path: dir.to_owned(), source }
    }

    /// The head record must name the last entry stored: a store that lost
    /// its tail, or grew one without a head, is refused.
    fn check_head(&self) -> Result<(), StoreError> {
        let last = self
            .db
            .scan_prefix(b"e")
            .next_back()
            .transpose()?
            .map(|(k, _)| k);
        let last_seq = match last {
            Some(k) if k.len() == 9 => Some(u64::from_be_bytes(k[1..].try_into().unwrap_or_default())),
            Some(_) => return Err(StoreError::Corrupt("an entry key has the wrong length".into())),
            None => None,
        };
        let head = self.head()?;
        if head.map(|h| h.0) != last_seq {
            return Err(StoreError::Corrupt(format!(
                "head record says {:?} but the last stored entry is {:?}",
                head.map(|h| h.0),
                last_seq
            )));
        }
        Ok(())
    }

    /// Seq and hash of the last entry, if any.
    pub fn head(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        let Some(v) = self.db.get(HEAD_KEY)? else { return Ok(None) };
        if v.len() != 40 {
            return Err(StoreError::Corrupt("head record has the wrong length".into()));
        }
        let seq = u64::from_be_bytes(v[..8].try_into().unwrap_or_default());
        let mut h = [0u8; 32];
        h.copy_from_slice(&v[8..]);
        Ok(Some((seq, Hash(h))))
    }

    /// The genesis authority this ledger was started with, if recorded.
    pub fn authority(&self) -> Result<Option<String>, StoreError> {
        Ok(self.db.get(AUTHORITY_KEY)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the genesis authority, durably.
    pub fn set_authority(&self, key: &str) -> Result<(), StoreError> {
        self.db.insert(AUTHORITY_KEY, key.as_bytes())?;
        self.sync()
    }

    /// Appends entries (which must continue the head) in one atomic batch,
    /// then makes them durable. Only when this returns may a receipt go out.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(last) = entries.last() else { return Ok(()) };
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&entry_key(e.seq), e.encode());
        }
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&last.seq.to_be_bytes());
        head.extend_from_slice(&last.hash.0);
        batch.insert(HEAD_KEY, head);
        self.db.apply_batch(batch)?;
        self.sync()
    }

    /// sled's `flush` writes its buffers but syncs them with
    /// `sync_file_range`, which neither flushes the disk cache nor file
    /// metadata, and never syncs blob files. So after it: fdatasync the log
    /// file and every blob file not yet synced (plus the blob folder when
    /// one appeared).
    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        File::open(self.dir.join("db"))?.sync_data()?;
        let blobs = self.dir.join("blobs");
        let mut synced = self.synced_blobs.lock().map_err(|_| StoreError::Corrupt("sync state poisoned".into()))?;
        let mut new_file = false;
        if let Ok(dir) = std::fs::read_dir(&blobs) {
            for f in dir.flatten() {
                let p = f.path();
                if !synced.contains(&p) {
                    File::open(&p)?.sync_all()?;
                    synced.insert(p);
                    new_file = true;
                }
            }
        }
        if new_file {
            File::open(&blobs)?.sync_all()?;
        }
        Ok(())
    }

    /// The entry at `seq`, decoded but not checked against the chain.
    pub fn get(&self, seq: u64) -> Result<Option<Entry>, StoreError> {
        match self.db.get(entry_key(seq))? {
            Some(v) => Ok(Some(Entry::decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Entries from `seq` on, in order, decoded but not checked.
    pub fn entries_from(&self, seq: u64) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        self.db.range(entry_key(seq)..entry_key(u64::MAX)).map(|kv| {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(k[1..].try_into().map_err(|_| StoreError::Corrupt("bad entry key".into()))?);
            Ok(Entry::decode(seq, &v)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::Timestamp;

    #[test]
    fn append_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let t: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let e1 = Entry::next(None, t, b"a".to_vec());
        let e2 = Entry::next(Some((1, e1.hash)), t, b"b".to_vec());
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.head().unwrap(), None);
            s.append(&[e1.clone(), e2.clone()]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.head().unwrap(), Some((2, e2.hash)));
        let all: Vec<Entry> = s.entries_from(1).collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![e1, e2.clone()]);
        assert_eq!(s.get(2).unwrap(), Some(e2));
        assert_eq!(s.get(3).unwrap(), None);
    }
}
