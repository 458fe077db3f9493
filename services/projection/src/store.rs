//! The projection's own store: where its state lives on disk, and the
//! bounded cache in front of it. The only module that knows how (fjall).
//!
//! The two tables that grow with history, lots and the numbers on papers
//! ([`State::lots`], [`State::references`]), are [`Table`]s: a record per
//! key in an LSM tree (fjall), the ones in use cached in memory up to a
//! budget set by `--cache-mb`. Everything else (actors, shipments in
//! transit, yields, the flows, the flags' index) is small and kept whole
//! in memory, and on disk as one `meta` record.
//!
//! Every record is in one fjall keyspace, each table's under its own key
//! prefix. A checkpoint writes every record changed since the last one,
//! and the meta record with the checkpoint's (seq, hash), as one
//! *ingestion*: in key order (the cache is a sorted map) straight into new
//! table files, fsynced, then registered in one step (a new version of the
//! tree, written whole and fsynced). Not through fjall's journal and
//! memtables, which wrote every record twice more and took a third of the
//! replay's time (docs/BENCHMARKS.md). So the store is always exactly the
//! state at some checkpoint, never a mix. A changed record stays in memory until
//! the checkpoint that writes it (so the cache holds at most
//! [`DIRTY_SHARE`] of its records unsaved: past that the follower writes a
//! checkpoint); only saved ones are evicted, least recently used first. A
//! crash loses what came after the last checkpoint, which is replayed from
//! the stream. A store that does not open or does not check (another
//! layout, a meta record that does not parse) is emptied and rebuilt from
//! seq 1, never served: it is only a projection.
//!
//! Why fjall rather than sled, or whole snapshots: docs/BENCHMARKS.md,
//! "Choosing the projection's on-disk store" (sled's resident memory grows
//! with the data whatever its cache is told; fjall's stays bounded, and it
//! writes a lot record in about a microsecond), and ARCHITECTURE.md.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use custody_proto::Hash;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::view::{Actor, Lot, Named, Shipment, State, Yields};

const FORMAT: &str = "custody projection store";
/// The layout of the records: a store of another layout is emptied at
/// open, and the projection rebuilds from seq 1.
const VERSION: u32 = 7;
/// The folder of the LSM tree, under the projection's data folder.
const TREE: &str = "records";
/// The folder of the layout before checkpoints were ingestions (a
/// keyspace per table, written through the journal): removed at open.
const OLDER_TREE: &str = "state";
/// The keyspace every record is in.
const RECORDS: &str = "records";
/// Key prefixes: the lots, the numbers on papers, and between them (so
/// that a checkpoint's records are written in key order: lots, meta,
/// references) the key of the meta record.
const LOTS: &[u8] = b"l/";
const META: &[u8] = b"m";
const REFERENCES: &[u8] = b"r/";
/// Most of a table's cached records that may be unsaved before the
/// follower writes a checkpoint: a quarter, so that three quarters of the
/// cache stay evictable and a checkpoint's ingestion stays a bounded
/// amount of work.
pub const DIRTY_SHARE: usize = 4;
/// What one cached lot costs resident, for turning `--cache-mb` into a
/// number of lots: measured about 1,220 B (docs/BENCHMARKS.md), rounded
/// up for the cache's own bookkeeping.
const LOT_BYTES: usize = 1_600;
/// What one cached list of lots a number names costs: most name one lot.
const NAMED_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store {}: {source}", dir.display())]
    Tree {
        dir: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error("projection store {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("projection store: a record does not serialize: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("projection store: {0}")]
    Read(String),
}

/// How the memory a projection may use is shared: `cache_mb` in all. 0
/// gives the smallest cache there is ([`MIN_CACHED`] records a table),
/// which tests use so that every record is evicted and read back often.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub cache_mb: usize,
}

/// Fewest records a table caches.
pub const MIN_CACHED: usize = 16;

impl Budget {
    fn bytes(self) -> usize {
        self.cache_mb << 20
    }
    /// Lots cached: 60 %.
    fn lots(self) -> usize {
        (self.bytes() / 10 * 6 / LOT_BYTES).max(MIN_CACHED)
    }
    /// Lists of named lots cached: 15 %.
    fn references(self) -> usize {
        (self.bytes() / 100 * 15 / NAMED_BYTES).max(MIN_CACHED)
    }
    /// fjall's block cache: an eighth (the rest is for the allocator's
    /// slack and a checkpoint's records as they are written), and no less
    /// than fjall takes. Its write buffers hold nothing but the removals
    /// of [`Store::clear`]: checkpoints bypass them.
    fn tree(self) -> u64 {
        (self.bytes() / 8).max(8 << 20) as u64
    }
}

/// The small part of the state, kept whole.
#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    seq: u64,
    hash: String,
    lots: usize,
    references: usize,
    actors: BTreeMap<String, Actor>,
    shipments: BTreeMap<String, Shipment>,
    yields: BTreeMap<String, Yields>,
    flows: crate::statistics::Flows,
    flags: Vec<(u64, String, String)>,
}

#[derive(Serialize)]
struct MetaRef<'a> {
    format: &'static str,
    version: u32,
    seq: u64,
    hash: String,
    lots: usize,
    references: usize,
    actors: &'a BTreeMap<String, Actor>,
    shipments: &'a BTreeMap<String, Shipment>,
    yields: &'a BTreeMap<String, Yields>,
    flows: &'a crate::statistics::Flows,
    flags: &'a [(u64, String, String)],
}

/// The projection's store: an LSM tree of one keyspace, each table's
/// records under its prefix, and the meta record.
pub struct Store {
    dir: PathBuf,
    budget: Budget,
    tree: fjall::Database,
    records: fjall::Keyspace,
    /// The seq of the last checkpoint written, held while one is written:
    /// one ingestion at a time, and never an older checkpoint after a
    /// newer one (a follower's checkpoint still being written when the
    /// service writes its last).
    written: Mutex<u64>,
}

/// A number of records of each table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Records {
    pub lots: usize,
    pub references: usize,
}

/// A checkpoint taken from the state under its lock ([`Checkpoint::of`]),
/// to write without it ([`Store::write`]) while the follower applies on:
/// the meta record, and the unsaved records shared with the tables (a
/// record changed meanwhile is copied first, [`Table`]'s copy on write, so
/// what is written stays what was taken). Its records stay unsaved, and
/// cached, until the follower marks them saved ([`State::saved`]).
pub struct Checkpoint {
    seq: Option<u64>,
    meta: Vec<u8>,
    pub(crate) lots: Vec<(String, Arc<Lot>)>,
    pub(crate) references: Vec<(String, Arc<Vec<Named>>)>,
}

impl Checkpoint {
    /// The checkpoint of `state` as it stands: nothing before the first
    /// entry. Costs a copy of each unsaved record's key, not of the record.
    pub fn of(state: &State) -> Result<Checkpoint, StoreError> {
        let Some((seq, hash)) = state.checkpoint else { return Ok(Checkpoint { seq: None, meta: Vec::new(), lots: Vec::new(), references: Vec::new() }) };
        let meta = MetaRef {
            format: FORMAT,
            version: VERSION,
            seq,
            hash: hash.to_hex(),
            lots: state.lots.len(),
            references: state.references.len(),
            actors: &state.actors,
            shipments: &state.shipments,
            yields: &state.yields,
            flows: &state.flows,
            flags: &state.flags,
        };
        Ok(Checkpoint { seq: Some(seq), meta: serde_json::to_vec(&meta)?, lots: state.lots.taken(), references: state.references.taken() })
    }

    /// The seq it is of.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// How many records it writes, of each table.
    pub fn records(&self) -> Records {
        Records { lots: self.lots.len(), references: self.references.len() }
    }
}

impl Store {
    /// Opens the store in `dir` (created if need be). One that cannot be
    /// opened is emptied, with a warning: the state is rebuilt from seq 1.
    pub fn open(dir: &Path, budget: Budget) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        remove_older_layouts(dir);
        match Store::open_tree(dir, budget) {
            Ok(store) => Ok(store),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "the projection's store does not open; emptying it, the state is rebuilt from the stream");
                std::fs::remove_dir_all(dir.join(TREE)).map_err(io)?;
                Store::open_tree(dir, budget)
            }
        }
    }

    /// Opens the store in `dir` emptied, for a rebuild from seq 1.
    pub fn open_empty(dir: &Path, budget: Budget) -> Result<Store, StoreError> {
        match std::fs::remove_dir_all(dir.join(TREE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { dir: dir.to_path_buf(), source }),
        }
        Store::open(dir, budget)
    }

    fn open_tree(dir: &Path, budget: Budget) -> Result<Store, StoreError> {
        let tree_err = |source| StoreError::Tree { dir: dir.to_path_buf(), source };
        let tree = fjall::Database::builder(dir.join(TREE))
            .cache_size(budget.tree())
            // Only `clear` writes through the journal, and syncs it.
            .manual_journal_persist(true)
            .open()
            .map_err(tree_err)?;
        // Records are JSON, so they shrink to about a third with lz4 at
        // every level (fjall leaves its first two levels uncompressed): a
        // checkpoint and each compaction after it write that much less.
        let compressed = fjall::config::CompressionPolicy::all(fjall::CompressionType::Lz4);
        let records = tree
            .keyspace(RECORDS, || fjall::KeyspaceCreateOptions::default().max_memtable_size(1 << 20).data_block_compression_policy(compressed))
            .map_err(tree_err)?;
        Ok(Store { dir: dir.to_path_buf(), budget, tree, records, written: Mutex::new(0) })
    }

    fn tree_error(&self, source: fjall::Error) -> StoreError {
        StoreError::Tree { dir: self.dir.clone(), source }
    }

    /// The state at the store's checkpoint, its tables read through the
    /// cache; an empty state on this store (so a replay from seq 1) if
    /// there is none, or it does not check (logged, and the store emptied).
    pub fn load(&self) -> Result<State, StoreError> {
        let meta = match self.records.get(META).map_err(|e| self.tree_error(e))? {
            None => None,
            Some(bytes) => match serde_json::from_slice::<Meta>(&bytes) {
                Ok(m) if m.format == FORMAT && m.version == VERSION && Hash::from_hex(&m.hash).is_some() => Some(m),
                Ok(_) | Err(_) => {
                    tracing::warn!(dir = %self.dir.display(), "the projection's store is of another layout or does not check; emptying it, the state is rebuilt from the stream");
                    self.clear()?;
                    None
                }
            },
        };
        let mut state = State {
            lots: Table::on_disk(self.tree.clone(), self.records.clone(), LOTS, self.budget.lots()),
            references: Table::on_disk(self.tree.clone(), self.records.clone(), REFERENCES, self.budget.references()),
            ..State::default()
        };
        if let Some(m) = meta {
            state.checkpoint = Hash::from_hex(&m.hash).map(|h| (m.seq, h));
            state.lots.len = m.lots;
            state.references.len = m.references;
            state.actors = m.actors;
            state.shipments = m.shipments;
            state.yields = m.yields;
            state.flows = m.flows;
            state.flags = m.flags;
        }
        Ok(state)
    }

    /// Writes a checkpoint of `state` as it stands ([`Checkpoint::of`],
    /// [`Store::write`]), and returns it for [`State::saved`].
    pub fn save(&self, state: &State) -> Result<Checkpoint, StoreError> {
        let checkpoint = Checkpoint::of(state)?;
        self.write(&checkpoint)?;
        Ok(checkpoint)
    }

    /// Writes a checkpoint: its records and the meta record, in key
    /// order, as one ingestion (new table files, fsynced, registered at
    /// once). Without the state's lock: the caller marks the records saved
    /// ([`State::saved`]) once it holds the write lock, the follower being
    /// the only writer. One older than the last written is not written.
    pub fn write(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let Some(seq) = checkpoint.seq else { return Ok(()) };
        let mut written = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq < *written {
            return Ok(());
        }
        if let Some(source) = custody_wire::crashpoint::failure("projection.checkpoint") {
            return Err(StoreError::Io { dir: self.dir.clone(), source });
        }
        let tree_err = |e| self.tree_error(e);
        let mut ingestion = self.records.start_ingestion().map_err(tree_err)?;
        // One buffer for every record's key and one for its bytes: the
        // ingestion copies both, so a record costs no allocation of its own.
        let (mut key, mut value) = (Vec::with_capacity(64), Vec::with_capacity(4096));
        for (k, v) in &checkpoint.lots {
            ingestion.write(keyed_in(&mut key, LOTS, k), json_in(&mut value, &**v)?).map_err(tree_err)?;
        }
        ingestion.write(META, &checkpoint.meta[..]).map_err(tree_err)?;
        for (k, v) in &checkpoint.references {
            ingestion.write(keyed_in(&mut key, REFERENCES, k), json_in(&mut value, &**v)?).map_err(tree_err)?;
        }
        custody_wire::crashpoint::reached("projection.snapshot.writing");
        ingestion.finish().map_err(tree_err)?;
        custody_wire::crashpoint::reached("projection.snapshot.saved");
        *written = seq;
        Ok(())
    }

    /// The checkpoint the store holds, if any.
    pub fn checkpoint(&self) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.records.get(META).map_err(|e| self.tree_error(e))? else { return Ok(None) };
        Ok(serde_json::from_slice::<Meta>(&bytes).ok().map(|m| m.seq))
    }

    /// Removes every record, for a rebuild from seq 1.
    fn clear(&self) -> Result<(), StoreError> {
        let mut batch = self.tree.batch();
        for item in self.records.iter() {
            batch.remove(&self.records, item.key().map_err(|e| self.tree_error(e))?);
        }
        batch.commit().map_err(|e| self.tree_error(e))?;
        self.tree.persist(fjall::PersistMode::SyncAll).map_err(|e| self.tree_error(e))
    }

    /// Bytes on disk.
    pub fn disk_space(&self) -> Result<u64, StoreError> {
        self.tree.disk_space().map_err(|e| self.tree_error(e))
    }
}

/// Removes what earlier layouts left in the folder (sled's files before
/// issue 14, whole snapshots before issue 29): the state is rebuilt from
/// the stream, so they only take room.
fn remove_older_layouts(dir: &Path) {
    let older_tree = dir.join(OLDER_TREE);
    if older_tree.is_dir() {
        tracing::warn!(path = %older_tree.display(), "removing the projection's store of an older layout; the state is rebuilt from the stream");
        let _ = std::fs::remove_dir_all(&older_tree);
    }
    let old_sled = dir.join("conf").is_file() && dir.join("db").is_file();
    for e in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let sled_file = old_sled && (["conf", "db", "blobs"].contains(&name.as_str()) || name.starts_with("snap."));
        if sled_file || (name.starts_with("snapshot-") && name.ends_with(".json")) {
            tracing::warn!(path = %e.path().display(), "removing a file of the projection's older layout; the state is rebuilt from the stream");
            let _ = if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
        }
    }
}

/// A table's place on disk: its keyspace, its records' key prefix there,
/// and the database it is in (for a point-in-time view of it,
/// [`Table::freeze`]).
struct Disk {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
    prefix: &'static [u8],
}

/// A record's key in the keyspace: its table's prefix, then its own.
fn keyed(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(prefix.len() + key.len());
    keyed_in(&mut buffer, prefix, key);
    buffer
}

/// [`keyed`], in `buffer` (a checkpoint reuses one for every record).
fn keyed_in<'a>(buffer: &'a mut Vec<u8>, prefix: &[u8], key: &str) -> &'a [u8] {
    buffer.clear();
    buffer.extend_from_slice(prefix);
    buffer.extend_from_slice(key.as_bytes());
    buffer
}

/// A record's JSON, in `buffer`.
fn json_in<'a, V: Serialize + ?Sized>(buffer: &'a mut Vec<u8>, record: &V) -> Result<&'a [u8], serde_json::Error> {
    buffer.clear();
    serde_json::to_writer(&mut *buffer, record)?;
    Ok(buffer)
}

/// The keys of the table under `prefix` from `start` on.
fn prefixed(prefix: &[u8], start: Bound<&str>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let from = match start {
        Bound::Included(s) => Bound::Included(keyed(prefix, s)),
        Bound::Excluded(s) => Bound::Excluded(keyed(prefix, s)),
        Bound::Unbounded => Bound::Included(prefix.to_vec()),
    };
    // The first key after every key with the prefix: its last byte plus
    // one (the prefixes end in '/').
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (from, Bound::Excluded(end))
}

/// The records of a [`prefixed`] range, keyed as the table knows them.
fn unprefixed(records: fjall::Iter, prefix: &'static [u8]) -> impl Iterator<Item = fjall::Result<fjall::KvPair>> {
    records.map(move |item| item.into_inner().map(|(k, v)| (fjall::Slice::from(&k[prefix.len()..]), v)))
}

/// One cached record.
struct Slot<V> {
    /// Shared with a checkpoint being written, if one is: changing it
    /// then changes a copy.
    value: Arc<V>,
    /// When it was last used, by the table's clock.
    used: AtomicU64,
    /// Changed since the last checkpoint: kept until one writes it.
    unsaved: bool,
}

/// A table of records by key, in key order: all in memory (a certificate's
/// replay, tests), or on disk behind a cache of at most `capacity` records.
/// Reading needs only `&self` (queries, under the state's read lock): a
/// record not cached is read from disk and not kept. Changing needs
/// `&mut self` (the follower): the record is cached, and unsaved until the
/// next checkpoint.
pub struct Table<V> {
    disk: Option<Disk>,
    cache: BTreeMap<String, Slot<V>>,
    capacity: usize,
    len: usize,
    unsaved: usize,
    clock: AtomicU64,
    /// The first read of the disk that failed: the follower halts on it
    /// rather than go on from a state it could not read.
    failure: OnceLock<String>,
}

impl<V> Default for Table<V> {
    fn default() -> Table<V> {
        Table { disk: None, cache: BTreeMap::new(), capacity: usize::MAX, len: 0, unsaved: 0, clock: AtomicU64::new(0), failure: OnceLock::new() }
    }
}

impl<V: Serialize + DeserializeOwned + Clone> Table<V> {
    fn on_disk(db: fjall::Database, keyspace: fjall::Keyspace, prefix: &'static [u8], capacity: usize) -> Table<V> {
        Table { disk: Some(Disk { db, keyspace, prefix }), capacity: capacity.max(MIN_CACHED), ..Table::default() }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn fail(&self, why: String) {
        fail(&self.failure, why);
    }

    /// Why a read of the disk failed, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    fn read(&self, key: &str) -> Option<V> {
        read(self.disk.as_ref(), &self.failure, key)
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The record under `key`: borrowed from the cache, or read from disk.
    pub fn get(&self, key: &str) -> Option<Cow<'_, V>> {
        match self.cache.get(key) {
            Some(slot) => {
                slot.used.store(self.tick(), Ordering::Relaxed);
                Some(Cow::Borrowed(&*slot.value))
            }
            None => self.read(key).map(Cow::Owned),
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.cache.contains_key(key)
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.keyspace.contains_key(keyed(d.prefix, key)).map_err(|e| self.fail(format!("reading {key:?}: {e}"))).unwrap_or(false))
    }

    /// The record under `key` to change, cached and unsaved from now on:
    /// from the cache, else from disk (unless the caller knows the key is
    /// `fresh`: no record has had it), else made by `new` (one record
    /// more), else none. A read of the disk that fails counts as none and
    /// is recorded ([`Table::failure`]): the follower halts on it.
    fn change(&mut self, key: &str, fresh: bool, new: impl FnOnce() -> Option<V>) -> Option<&mut V> {
        let tick = self.tick();
        if self.cache.len() >= self.capacity && !self.cache.contains_key(key) {
            self.make_room();
        }
        // One walk of the sorted map, hit or miss: copying the key costs
        // less than a second walk's string compares.
        let mut added = false;
        let slot = match self.cache.entry(key.to_owned()) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(vacant) => {
                let on_disk = if fresh { None } else { read(self.disk.as_ref(), &self.failure, key) };
                let value = match on_disk {
                    Some(value) => value,
                    None => {
                        added = true;
                        new()?
                    }
                };
                vacant.insert(Slot { value: Arc::new(value), used: AtomicU64::new(0), unsaved: false })
            }
        };
        *slot.used.get_mut() = tick;
        if !slot.unsaved {
            slot.unsaved = true;
            self.unsaved += 1;
        }
        if added {
            self.len += 1;
        }
        Some(Arc::make_mut(&mut slot.value))
    }

    /// The record under `key` to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.change(key, false, || None)
    }

    /// Sets the record under `key`.
    pub fn insert(&mut self, key: String, value: V) {
        self.set(key, false, value);
    }

    /// Sets the record under `key`, a key no record has had: a new lot,
    /// whose id the ledger admitted only because it was never used
    /// (`lot_exists`). So the disk is not asked, which for a lot being made
    /// is a lookup for nothing (the bulk of a replay's reads of the store).
    /// Were the key used before, only [`Table::len`] would count it twice.
    pub fn create(&mut self, key: String, value: V) {
        self.set(key, true, value);
    }

    fn set(&mut self, key: String, fresh: bool, value: V) {
        let mut value = Some(value);
        if let Some(old) = self.change(&key, fresh, || value.take()) {
            if let Some(v) = value {
                *old = v;
            }
        }
    }

    /// The record under `key` to change, made with `Default` if none
    /// (`None` only if the store could not be read).
    pub fn get_or_default(&mut self, key: &str) -> Option<&mut V>
    where
        V: Default,
    {
        self.change(key, false, || Some(V::default()))
    }

    /// Makes room for one more record by dropping saved ones, least
    /// recently used first, down to three quarters of the capacity (so
    /// that it happens once in many inserts). Unsaved records stay: the
    /// follower writes a checkpoint when they are [`Table::wants_checkpoint`].
    fn make_room(&mut self) {
        if self.disk.is_none() || self.cache.len() < self.capacity {
            return;
        }
        let target = self.capacity / 4 * 3;
        let mut saved: Vec<(u64, &String)> = self.cache.iter().filter(|(_, s)| !s.unsaved).map(|(k, s)| (s.used.load(Ordering::Relaxed), k)).collect();
        let drop = (self.cache.len() - target).min(saved.len());
        if drop == 0 {
            return;
        }
        saved.select_nth_unstable(drop - 1);
        let gone: Vec<String> = saved[..drop].iter().map(|(_, k)| (*k).clone()).collect();
        for k in gone {
            self.cache.remove(&k);
        }
    }

    /// Enough records are unsaved, besides the `writing` ones a
    /// checkpoint being written will save, that the follower should write
    /// a checkpoint before changing more.
    pub fn wants_checkpoint(&self, writing: usize) -> bool {
        self.disk.is_some() && self.unsaved.saturating_sub(writing) >= self.capacity / DIRTY_SHARE
    }

    /// The records a checkpoint writes, in key order: the unsaved ones,
    /// or every one for a table that is all in memory.
    fn unsaved(&self) -> impl Iterator<Item = (&String, &Arc<V>)> {
        let all = self.disk.is_none();
        self.cache.iter().filter(move |(_, s)| all || s.unsaved).map(|(k, s)| (k, &s.value))
    }

    /// The records a checkpoint writes, shared ([`Checkpoint`]).
    fn taken(&self) -> Vec<(String, Arc<V>)> {
        self.unsaved().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Marks saved the records a checkpoint wrote, those not changed since
    /// it was taken (a changed one is a copy: another allocation).
    pub(crate) fn saved(&mut self, written: &[(String, Arc<V>)]) {
        for (k, v) in written {
            if let Some(slot) = self.cache.get_mut(k) {
                if slot.unsaved && Arc::ptr_eq(&slot.value, v) {
                    slot.unsaved = false;
                    self.unsaved = self.unsaved.saturating_sub(1);
                }
            }
        }
    }

    /// Every record in key order, from the cache where it is there (newer
    /// than the disk's), from disk otherwise.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, V>)> + '_ {
        self.range(Bound::Unbounded)
    }

    pub fn values(&self) -> impl Iterator<Item = Cow<'_, V>> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The records after `start`, in key order.
    pub fn range<'a>(&'a self, start: Bound<&str>) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, V>)> + 'a {
        let disk: Box<dyn Iterator<Item = fjall::Result<fjall::KvPair>>> = match &self.disk {
            Some(d) => Box::new(unprefixed(d.keyspace.range(prefixed(d.prefix, start)), d.prefix)),
            None => Box::new(std::iter::empty()),
        };
        let owned = start.map(str::to_owned);
        let cached = self.cache.range::<str, _>((owned.as_ref().map(String::as_str), Bound::Unbounded)).map(|(k, s)| (k.as_str(), &*s.value));
        Merged { failure: &self.failure, cached: cached.peekable(), disk: disk.peekable() }
    }

    /// The table as it stands now, to read without holding the state's
    /// lock (the follower changes the table meanwhile): the store's records
    /// at this moment, and copies of the records not yet saved. Costs the
    /// copies, at most a quarter of the cache ([`DIRTY_SHARE`]); all of a
    /// table that lives in memory.
    pub fn freeze(&self) -> Frozen<V> {
        Frozen {
            disk: self.disk.as_ref().map(|d| (d.db.snapshot(), d.keyspace.clone(), d.prefix)),
            unsaved: self.unsaved().map(|(k, v)| (k.clone(), Arc::clone(v))).collect(),
            failure: OnceLock::new(),
        }
    }
}

/// The record under `key` on `disk`, if any; a failure to read it is
/// recorded in `failure` and counts as none.
fn read<V: DeserializeOwned>(disk: Option<&Disk>, failure: &OnceLock<String>, key: &str) -> Option<V> {
    let disk = disk?;
    match disk.keyspace.get(keyed(disk.prefix, key)) {
        Ok(None) => None,
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|e| fail(failure, format!("record {key:?}: {e}"))).ok(),
        Err(e) => {
            fail(failure, format!("reading {key:?}: {e}"));
            None
        }
    }
}

fn fail(failure: &OnceLock<String>, why: String) {
    if failure.set(why.clone()).is_ok() {
        tracing::error!(%why, "the projection cannot read its store");
    }
}

/// A table at one moment ([`Table::freeze`]).
pub struct Frozen<V> {
    disk: Option<(fjall::Snapshot, fjall::Keyspace, &'static [u8])>,
    unsaved: BTreeMap<String, Arc<V>>,
    failure: OnceLock<String>,
}

impl<V: DeserializeOwned + Clone> Frozen<V> {
    /// Every record in key order, as [`Table::iter`] would have given them
    /// at that moment.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, V>)> + '_ {
        let disk: Box<dyn Iterator<Item = fjall::Result<fjall::KvPair>>> = match &self.disk {
            Some((snapshot, keyspace, prefix)) => {
                use fjall::Readable as _;
                Box::new(unprefixed(snapshot.range(keyspace, prefixed(prefix, Bound::Unbounded)), prefix))
            }
            None => Box::new(std::iter::empty()),
        };
        let cached = self.unsaved.iter().map(|(k, v)| (k.as_str(), &**v));
        Merged { failure: &self.failure, cached: cached.peekable(), disk: disk.peekable() }
    }

    /// Why reading it failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
}

/// Records in memory and on disk in key order, the memory's where both
/// have one (it is newer).
struct Merged<'a, V: 'a, C: Iterator<Item = (&'a str, &'a V)>, D: Iterator<Item = fjall::Result<fjall::KvPair>>> {
    failure: &'a OnceLock<String>,
    cached: std::iter::Peekable<C>,
    disk: std::iter::Peekable<D>,
}

impl<'a, V: DeserializeOwned + Clone + 'a, C: Iterator<Item = (&'a str, &'a V)>, D: Iterator<Item = fjall::Result<fjall::KvPair>>> Iterator
    for Merged<'a, V, C, D>
{
    type Item = (Cow<'a, str>, Cow<'a, V>);

    fn next(&mut self) -> Option<Self::Item> {
        let on_disk = match self.disk.peek() {
            None => None,
            Some(Ok((k, _))) => Some(k.clone()),
            Some(Err(e)) => {
                fail(self.failure, format!("reading the table in order: {e}"));
                return None;
            }
        };
        let cached = self.cached.peek().map(|(k, _)| k.as_bytes());
        match (cached, on_disk.as_deref()) {
            (None, None) => None,
            (Some(c), d) if d.is_none_or(|d| c <= d) => {
                if d == Some(c) {
                    self.disk.next();
                }
                let (k, v) = self.cached.next()?;
                Some((Cow::Borrowed(k), Cow::Borrowed(v)))
            }
            _ => {
                let Some(Ok((k, v))) = self.disk.next() else { return None };
                let key = String::from_utf8_lossy(&k).into_owned();
                match serde_json::from_slice(&v) {
                    Ok(value) => Some((Cow::Owned(key), Cow::Owned(value))),
                    Err(e) => {
                        fail(self.failure, format!("record {key:?}: {e}"));
                        None
                    }
                }
            }
        }
    }
}

impl<V: Serialize + DeserializeOwned + Clone + PartialEq> PartialEq for Table<V> {
    fn eq(&self, other: &Table<V>) -> bool {
        self.len == other.len && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

/// A copy all in memory, whatever the original's (tests compare states).
impl<V: Serialize + DeserializeOwned + Clone> Clone for Table<V> {
    fn clone(&self) -> Table<V> {
        let mut copy = Table::default();
        for (k, v) in self.iter() {
            copy.insert(k.into_owned(), v.into_owned());
        }
        copy
    }
}

impl<V> std::fmt::Debug for Table<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table {{ len: {}, cached: {}, on_disk: {} }}", self.len, self.cache.len(), self.disk.is_some())
    }
}

/// The lots of a state.
pub type Lots = Table<Lot>;
/// The lots each number on a paper names.
pub type References = Table<Vec<Named>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Actor;

    fn actor(i: usize) -> Actor {
        Actor { name: format!("actor {i}"), registered: i as u64 + 1, country: None, roles: Vec::new(), revoked: false, revoked_at: 0 }
    }

    fn named(i: usize) -> Vec<Named> {
        vec![Named { lot: format!("L{i}"), seq: i as u64 + 1, what: "invoice".into() }]
    }

    /// A table with a cache far smaller than it: records are evicted once
    /// saved, read back from disk, changed again; in order, the cache's
    /// newer record wins; a checkpoint and a reopen give the same table,
    /// and what came after the checkpoint is not there.
    #[test]
    fn a_table_larger_than_its_cache_reads_back_what_was_saved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Budget { cache_mb: 8 }).unwrap();
        let mut state = store.load().unwrap();
        assert_eq!(state, State::default(), "nothing yet: replay from seq 1");
        state.references.capacity = 100;
        let mut memory = State::default();
        for round in 0..3 {
            for i in 0..1_000 {
                let key = format!("inv-{:04}", (i * 7 + round * 13) % 1_000);
                for s in [&mut state, &mut memory] {
                    s.references.get_or_default(&key).expect("readable").extend(named(i + round));
                }
                if state.references.wants_checkpoint(0) {
                    state.checkpoint = Some(((round * 1_000 + i) as u64, Hash([1; 32])));
                    let written = store.save(&state).unwrap();
                    state.saved(&written);
                }
                assert!(state.references.cached() <= 101, "round {round}, {i}: {} cached", state.references.cached());
            }
        }
        state.actors.insert("U1".into(), actor(1));
        memory.actors.insert("U1".into(), actor(1));
        assert_eq!(state.references.len(), 1_000);
        assert!(state.references.iter().map(|(k, _)| k.into_owned()).collect::<Vec<_>>().is_sorted());
        state.checkpoint = Some((5_000, Hash([2; 32])));
        memory.checkpoint = state.checkpoint;
        assert_eq!(state, memory, "the same records as a table all in memory");
        let written = store.save(&state).unwrap();
        state.saved(&written);
        // After the checkpoint: lost by a crash.
        state.references.insert("inv-late".into(), named(9));
        drop(state);
        drop(store);
        let store = Store::open(dir.path(), Budget { cache_mb: 8 }).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded, memory, "reopened at the checkpoint");
        assert!(loaded.references.get("inv-late").is_none());
        assert_eq!(store.checkpoint().unwrap(), Some(5_000));
        // Emptied for a rebuild.
        drop(loaded);
        drop(store);
        let store = Store::open_empty(dir.path(), Budget { cache_mb: 8 }).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
    }

    /// A frozen table reads as the table stood when it was frozen, while
    /// the table changes and checkpoints go on (the digest query reads
    /// one without the state's lock).
    #[test]
    fn a_frozen_table_reads_as_it_stood() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Budget { cache_mb: 0 }).unwrap();
        let mut state = store.load().unwrap();
        for i in 0..100 {
            state.references.insert(format!("inv-{i:03}"), named(i));
            if i == 50 {
                state.checkpoint = Some((1, Hash([1; 32])));
                let written = store.save(&state).unwrap();
                state.saved(&written);
            }
        }
        let then: Vec<(String, Vec<Named>)> = state.references.iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let frozen = state.references.freeze();
        for i in 0..100 {
            state.references.get_mut(&format!("inv-{i:03}")).unwrap().clear();
        }
        state.references.insert("inv-new".into(), named(7));
        state.checkpoint = Some((2, Hash([2; 32])));
        let written = store.save(&state).unwrap();
        state.saved(&written);
        let read: Vec<(String, Vec<Named>)> = frozen.iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(read.len(), 100);
        assert_eq!(read, then);
        assert!(frozen.failure().is_none());
    }

    /// A checkpoint is taken, the table changes, then the checkpoint is
    /// written (as the follower does, on a thread of its own while it
    /// applies on): the store holds the records as they were taken; the
    /// one changed meanwhile stays unsaved, so cached, until the next
    /// checkpoint writes its new value; an older checkpoint written after
    /// a newer one changes nothing.
    #[test]
    fn a_record_changed_while_its_checkpoint_is_written_stays_unsaved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Budget { cache_mb: 8 }).unwrap();
        let mut state = store.load().unwrap();
        state.references.insert("inv-a".into(), named(1));
        state.references.insert("inv-b".into(), named(2));
        state.checkpoint = Some((1, Hash([1; 32])));
        let taken = Checkpoint::of(&state).unwrap();
        state.references.get_mut("inv-a").unwrap().extend(named(3));
        state.checkpoint = Some((2, Hash([2; 32])));
        store.write(&taken).unwrap();
        state.saved(&taken);
        assert_eq!(state.references.unsaved, 1, "inv-a, changed after it was taken");
        assert!(state.references.cache["inv-a"].unsaved && !state.references.cache["inv-b"].unsaved);
        assert_eq!(state.references.read("inv-a"), Some(named(1)), "on disk as it was taken");
        assert_eq!(store.checkpoint().unwrap(), Some(1));

        let next = store.save(&state).unwrap();
        state.saved(&next);
        assert_eq!(state.references.unsaved, 0);
        let now = [named(1), named(3)].concat();
        assert_eq!(state.references.read("inv-a"), Some(now.clone()));
        store.write(&taken).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(2), "the older checkpoint is not written over the newer");
        assert_eq!(state.references.read("inv-a"), Some(now));
    }

    /// The folder of the layout before checkpoints were ingestions (a
    /// keyspace per table) is removed at open, not left to take room: the
    /// state is rebuilt from the stream.
    #[test]
    fn the_older_layouts_store_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(OLDER_TREE).join("keyspaces")).unwrap();
        std::fs::write(dir.path().join(OLDER_TREE).join("keyspaces").join("0"), b"old records").unwrap();
        let store = Store::open(dir.path(), Budget { cache_mb: 8 }).unwrap();
        assert!(!dir.path().join(OLDER_TREE).exists(), "the older layout's folder is gone");
        assert!(dir.path().join(TREE).is_dir());
        assert_eq!(store.load().unwrap(), State::default(), "nothing yet: replay from seq 1");
    }

    /// A meta record that does not check is never served: the store is
    /// emptied and the projection replays from seq 1.
    #[test]
    fn a_meta_record_that_does_not_check_empties_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Budget { cache_mb: 8 }).unwrap();
        let mut state = store.load().unwrap();
        state.references.insert("inv-1".into(), named(1));
        state.checkpoint = Some((1, Hash([1; 32])));
        store.save(&state).unwrap();
        for bad in [&b"{\"format\":"[..], b"{}", br#"{"format":"custody projection store","version":5}"#] {
            store.records.insert(META, bad).unwrap();
            let loaded = store.load().unwrap();
            assert_eq!(loaded, State::default(), "{}", String::from_utf8_lossy(bad));
            assert!(loaded.references.get("inv-1").is_none(), "the records are gone with it");
        }
    }
}
