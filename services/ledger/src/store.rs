//! The ledger's storage: the only module that knows sled. It keeps entries
//! by seq and the chain head, and makes a batch durable before it returns.
//! It knows nothing of events, custody rules or NATS.
//!
//! Keys: `e` + seq (u64 big-endian) holds an encoded [`Entry`]; `m:head`
//! holds `seq || hash` of the last entry; `m:authority` the genesis key.
//!
//! Beside sled's files, `custody-head` is a witness of the last durable
//! head (`seq || hash || checksum`), rewritten and synced after each commit.
//! sled's recovery treats a bad checksum as a torn write and silently drops
//! the rest of its log; the witness is how such a lost tail is noticed.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use custody_proto::{ChainError, Entry, Hash};

const HEAD_KEY: &[u8] = b"m:head";
const AUTHORITY_KEY: &[u8] = b"m:authority";
const WITNESS_FILE: &str = "custody-head";
/// blake3 context of the witness checksum.
const WITNESS_CONTEXT: &str = "custody 2026-11 head witness v1";

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

fn witness_checksum(body: &[u8]) -> [u8; 8] {
    let h = blake3::Hasher::new_derive_key(WITNESS_CONTEXT).update(body).finalize();
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.as_bytes()[..8]);
    c
}

/// Fixed 48 bytes, rewritten in place: `seq || hash || checksum`.
fn encode_witness(seq: u64, hash: &Hash) -> [u8; 48] {
    let mut out = [0u8; 48];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..40].copy_from_slice(&hash.0);
    let c = witness_checksum(&out[..40]);
    out[40..].copy_from_slice(&c);
    out
}

fn decode_witness(b: &[u8]) -> Option<(u64, Hash)> {
    if b.len() != 48 || witness_checksum(&b[..40])[..] != b[40..] {
        return None;
    }
    let mut h = [0u8; 32];
    h.copy_from_slice(&b[8..40]);
    Some((u64::from_be_bytes(b[..8].try_into().ok()?), Hash(h)))
}

/// sled's page cache. Its default, a gigabyte, filled at every start,
/// when the chain check reads each entry once: at ten million entries that
/// was a gigabyte more resident and seconds of fresh pages for nothing
/// read again. What the ledger reads after its start is small and recent
/// (appends at the end, a proof's entries, a receipt asked again).
const CACHE_BYTES: u64 = 64 << 20;

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
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| Store::open_error(dir, source))?;
        let store = Store { db, dir: dir.to_owned(), synced_blobs: Arc::default() };
        store.check_head()?;
        store.check_witness()?;
        Ok(store)
    }

    /// [`Store::open`] of a store this process just closed: sled lets go
    /// of its file lock a moment after the last handle is dropped, so a
    /// held lock is waited on (5 s at most).
    pub fn reopen(dir: &Path) -> Result<Store, StoreError> {
        for _ in 0..100 {
            match Store::open(dir) {
                Err(e) if e.to_string().contains("could not acquire lock") => std::thread::sleep(std::time::Duration::from_millis(50)),
                other => return other,
            }
        }
        Store::open(dir)
    }

    fn open_error(dir: &Path, source: sled::Error) -> StoreError {
        StoreError::Open { path: dir.to_owned(), source }
    }

    /// The head record must name the last entry stored: a store that lost
    /// its tail, or grew one without a head, is refused.
    fn check_head(&self) -> Result<(), StoreError> {
        let last = self.db.scan_prefix(b"e").next_back().transpose()?.map(|(k, _)| k);
        let last_seq = match last {
            Some(k) if k.len() == 9 => Some(u64::from_be_bytes(k[1..].try_into().unwrap_or_default())),
            Some(_) => return Err(StoreError::Corrupt("an entry key has the wrong length".into())),
            None => None,
        };
        let head = self.head()?;
        if head.map(|h| h.0) != last_seq {
            return Err(StoreError::Corrupt(format!("head record says {:?} but the last stored entry is {:?}", head.map(|h| h.0), last_seq)));
        }
        Ok(())
    }

    /// The witness may lag sled by one batch (a crash between the two
    /// syncs) but never lead it, and the entry it names must match.
    fn check_witness(&self) -> Result<(), StoreError> {
        let bytes = match std::fs::read(self.dir.join(WITNESS_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match self.head()? {
                    None => Ok(()),
                    Some(_) => Err(StoreError::Corrupt(format!("{WITNESS_FILE} is missing from a store that holds entries"))),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let (seq, hash) = decode_witness(&bytes).ok_or_else(|| StoreError::Corrupt(format!("{WITNESS_FILE} is damaged")))?;
        let head = self.head()?.map_or(0, |h| h.0);
        if seq > head {
            return Err(StoreError::Corrupt(format!("entries {}..={seq} were committed but are missing: the store ends at {head}", head + 1)));
        }
        if seq > 0 && self.get(seq)?.map(|e| e.hash) != Some(hash) {
            return Err(StoreError::Corrupt(format!("entry {seq} differs from the one committed")));
        }
        Ok(())
    }

    /// The store's folder, where the ledger keeps its other files.
    pub fn dir(&self) -> &Path {
        &self.dir
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
    pub fn append<E: Borrow<Entry>>(&self, entries: &[E]) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(E::borrow) else { return Ok(()) };
        let mut batch = sled::Batch::default();
        for e in entries.iter().map(E::borrow) {
            batch.insert(&entry_key(e.seq), e.encode());
        }
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&last.seq.to_be_bytes());
        head.extend_from_slice(&last.hash.0);
        batch.insert(HEAD_KEY, head);
        self.db.apply_batch(batch)?;
        self.sync()?;
        self.write_witness(last.seq, &last.hash)
    }

    fn write_witness(&self, seq: u64, hash: &Hash) -> Result<(), StoreError> {
        use std::io::Write as _;
        let path = self.dir.join(WITNESS_FILE);
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path)?;
        f.write_all(&encode_witness(seq, hash))?;
        f.sync_data()?;
        Ok(())
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
        let s = Store::reopen(dir.path()).unwrap();
        assert_eq!(s.head().unwrap(), Some((2, e2.hash)));
        let all: Vec<Entry> = s.entries_from(1).collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![e1, e2.clone()]);
        assert_eq!(s.get(2).unwrap(), Some(e2));
        assert_eq!(s.get(3).unwrap(), None);
    }

    #[test]
    fn a_lost_tail_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let e1 = Entry::next(None, t, b"a".to_vec());
        let e2 = Entry::next(Some((1, e1.hash)), t, b"b".to_vec());
        {
            let s = Store::open(dir.path()).unwrap();
            s.append(std::slice::from_ref(&e1)).unwrap();
            s.append(std::slice::from_ref(&e2)).unwrap();
        }
        // What sled would do if recovery dropped the last batch: the head
        // record and entry 2 gone, consistently with each other.
        {
            let db = sled::open(dir.path()).unwrap();
            db.remove(entry_key(2)).unwrap();
            let mut head = 1u64.to_be_bytes().to_vec();
            head.extend_from_slice(&e1.hash.0);
            db.insert(HEAD_KEY, head).unwrap();
            db.flush().unwrap();
        }
        let err = Store::reopen(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("entries 2..=2 were committed but are missing"), "{err}");
    }
}
