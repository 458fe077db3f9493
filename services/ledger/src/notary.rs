//! The ledger's transparency: the Merkle tree over its committed entries,
//! the lot map over the same entries (every lot's and actor's history,
//! [`custody_proto::lotmap`]), its own signing key, and the answers built
//! from them (signed checkpoints of both roots, inclusion, consistency and
//! map proofs). Both grow only after entries are durable, so a checkpoint
//! never covers an entry a crash could take back.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use custody_proto::lotmap::{LotMap, MapProof, Subject};
use custody_proto::merkle::{ProofError, Tree};
use custody_proto::{Checkpoint, Entry, Hash, Timestamp};
use custody_wire::query::AnswerCode;
use serde_json::{json, Value};

use crate::store::{Store, StoreError};

/// File of the ledger's signing seed, inside its data folder.
pub const KEY_FILE: &str = "ledger.nk";

/// Loads the ledger's signing key (a server nkey) from `dir`, creating it
/// on first use.
pub fn load_or_create_key(dir: &Path) -> Result<nkeys::KeyPair, custody_wire::files::FileError> {
    custody_wire::files::load_or_create_key(&dir.join(KEY_FILE), nkeys::KeyPairType::Server)
}

/// One ledger key for every replica: the first folder's (made if it has
/// none), written into each other folder that has none. A cluster signs
/// its checkpoints with one key, whichever replica writes.
pub fn key_for_replicas(dirs: &[std::path::PathBuf]) -> Result<nkeys::KeyPair, custody_wire::files::FileError> {
    let Some(first) = dirs.first() else { return Ok(nkeys::KeyPair::new(nkeys::KeyPairType::Server)) };
    let key = load_or_create_key(first)?;
    let seed = key.seed().map_err(|e| custody_wire::files::FileError::NotASeed { path: first.join(KEY_FILE), why: e.to_string() })?;
    for dir in &dirs[1..] {
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            custody_wire::files::write_whole(&path, format!("{seed}\n").as_bytes(), custody_wire::files::Mode::Private)?;
        }
    }
    Ok(key)
}

/// The ledger's signing key for a replica joining a ledger whose newest
/// checkpoint is signed by `signer` (none yet: a new ledger). The key in
/// `dir` must be that signer's; a folder without a key gets a new one only
/// for a new ledger: a wiped folder that made itself a key would sign
/// checkpoints no verifier trusts.
pub fn key_for_ledger(dir: &Path, signer: Option<&str>) -> Result<nkeys::KeyPair, KeyMismatch> {
    let path = dir.join(KEY_FILE);
    match signer {
        None => Ok(load_or_create_key(dir)?),
        Some(signer) if !path.exists() => Err(KeyMismatch::Missing { path, signer: signer.to_owned() }),
        Some(signer) => {
            let key = custody_wire::files::load_key(&path)?;
            if key.public_key() != signer {
                return Err(KeyMismatch::Other { path, mine: key.public_key(), signer: signer.to_owned() });
            }
            Ok(key)
        }
    }
}

/// Why a replica may not sign for the ledger it joins.
#[derive(Debug, thiserror::Error)]
pub enum KeyMismatch {
    #[error("{} does not exist, and this ledger's checkpoints are signed by {signer}: put that key's seed there (copy ledger.nk from another replica, or from where it is kept) rather than sign with a new key no verifier trusts", path.display())]
    Missing { path: std::path::PathBuf, signer: String },
    #[error("{} holds the key {mine}, but this ledger's checkpoints are signed by {signer}: this folder belongs to another ledger, or the key was replaced", path.display())]
    Other { path: std::path::PathBuf, mine: String, signer: String },
    #[error(transparent)]
    File(#[from] custody_wire::files::FileError),
}

/// The log's name in checkpoint notes when none is configured.
pub fn default_origin(ledger_key: &str) -> String {
    format!("custody/{ledger_key}")
}

/// The tree and the key, shared by the writer (which appends) and the
/// tasks that sign and prove.
pub struct Notary {
    tree: RwLock<Tree>,
    /// The lot map over the same entries as the tree. Its lock is taken
    /// first and held while both grow, so whoever holds it sees the two of
    /// one size: what a checkpoint signs.
    map: Mutex<LotMap>,
    /// Whether checkpoints sign the map (off only to measure its cost).
    signs_map: bool,
    /// The map as each recent checkpoint handed out with a map proof
    /// signed it (a copy shares every node it did not see change), so that
    /// a certificate's maker can ask for the rest of its subjects against
    /// the same checkpoint, a message at a time.
    kept: Mutex<std::collections::VecDeque<Kept>>,
    key: nkeys::KeyPair,
    /// The log's name in its checkpoint notes (C2SP origin).
    origin: String,
    /// Whether witnesses cosign checkpoints: then certificates and current
    /// heads are given against the newest cosigned checkpoint only.
    witnessing: bool,
    /// The newest checkpoint witnesses cosigned, with the map it signs.
    witnessed: Mutex<Option<(Checkpoint, LotMap)>>,
    /// Asks the checkpoint stage for a witnessed checkpoint now.
    wanted: tokio::sync::Notify,
    /// For the entry hash an inclusion proof starts from.
    store: Store,
    /// Entries on the committed stream: checkpoints and default proofs
    /// cover no more, so whoever gets one can fetch what it covers.
    published: AtomicU64,
    /// The largest tree size a checkpoint was published for (+1; 0: none).
    announced: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("{0}")]
    Sign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Notary {
    /// The notary of `tree` and `map` (`None`: no lot map is kept), signing
    /// as log `origin`; `witnessing` when witnesses cosign its checkpoints.
    pub fn new((tree, map): (Tree, Option<LotMap>), key: nkeys::KeyPair, origin: String, witnessing: bool, store: Store) -> Notary {
        let signs_map = map.is_some();
        let map = Mutex::new(map.unwrap_or_default());
        let kept = Mutex::new(Default::default());
        Notary {
            tree: RwLock::new(tree),
            map,
            signs_map,
            kept,
            key,
            origin,
            witnessing,
            witnessed: Mutex::new(None),
            wanted: tokio::sync::Notify::new(),
            store,
            published: AtomicU64::new(0),
            announced: AtomicU64::new(0),
        }
    }

    /// Signs a checkpoint of every durable entry and keeps the map it
    /// signs, to be sent to witnesses (then [`Notary::set_witnessed`]).
    pub fn checkpoint_for_witnesses(&self) -> Result<(Checkpoint, LotMap), NotaryError> {
        let mut map = self.map();
        let (c, _) = self.sign_now(&mut map, &[])?;
        Ok((c, map.clone()))
    }

    /// Records a checkpoint the witnesses cosigned (a newer one only).
    pub fn set_witnessed(&self, c: Checkpoint, map: LotMap) {
        let mut w = self.witnessed.lock().unwrap_or_else(|p| p.into_inner());
        if w.as_ref().is_none_or(|(old, _)| old.tree_size <= c.tree_size) {
            *w = Some((c, map));
        }
    }

    /// The newest cosigned checkpoint, if any.
    pub fn witnessed(&self) -> Option<Checkpoint> {
        self.witnessed.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(c, _)| c.clone())
    }

    /// Wakes the checkpoint stage: someone waits for a cosigned checkpoint
    /// of every durable entry.
    pub fn want_witnessed(&self) {
        self.wanted.notify_one();
    }

    /// Resolves when [`Notary::want_witnessed`] was called.
    pub async fn witnessed_wanted(&self) {
        self.wanted.notified().await
    }

    /// The consistency proof from `from` to `to` entries.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, ProofError> {
        self.read().consistency(from, to)
    }

    /// Records how far the committed stream goes.
    pub fn set_published(&self, seq: u64) {
        self.published.store(seq, Ordering::Release);
    }

    /// Claims the announcement of a checkpoint for `size`: true if none was
    /// published for this size or a larger one yet.
    pub fn first_announcement(&self, size: u64) -> bool {
        self.announced.fetch_max(size + 1, Ordering::AcqRel) <= size
    }

    /// Gives the claim back after a failed publish.
    pub fn forget_announcement(&self, size: u64) {
        let _ = self.announced.compare_exchange(size + 1, size, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Entries on the committed stream (and in the tree).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire).min(self.size())
    }

    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, LotMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends durable entries, in order, each with the lot-map keys of
    /// what it acts on. The caller has set [`Notary::set_published`]
    /// first: they are on the committed stream.
    pub fn append(&self, entries: &[Entry], subjects: &[Vec<Hash>]) {
        let mut map = self.map();
        for (e, keys) in entries.iter().zip(subjects) {
            for k in keys {
                map.touch(k, e.seq, &e.hash);
            }
        }
        let mut t = self.tree.write().unwrap_or_else(|p| p.into_inner());
        for e in entries {
            t.push(&e.hash);
        }
    }

    pub fn size(&self) -> u64 {
        self.read().len()
    }

    /// A checkpoint of every durable entry and the lot map after them,
    /// signed now.
    pub fn checkpoint(&self) -> Result<Checkpoint, NotaryError> {
        self.checkpoint_proving(&[], false).map(|(c, _)| c)
    }

    /// [`Notary::checkpoint`], with one proof of the heads of `subjects` in
    /// the lot map it signs. With witnesses and `witnessed`, the newest
    /// cosigned checkpoint instead (asking for a newer one when it is
    /// behind).
    fn checkpoint_proving(&self, subjects: &[Subject], witnessed: bool) -> Result<(Checkpoint, MapProof), NotaryError> {
        if witnessed && self.witnessing {
            let mut w = self.witnessed.lock().unwrap_or_else(|p| p.into_inner());
            let Some((c, map)) = w.as_mut() else {
                self.want_witnessed();
                return Err(NotaryError::Sign("no checkpoint is cosigned by the ledger's witnesses yet: ask again in a moment".into()));
            };
            if c.tree_size < self.published() {
                self.want_witnessed();
            }
            let proof = if self.signs_map { map.prove(subjects) } else { MapProof::default() };
            return Ok((c.clone(), proof));
        }
        let mut map = self.map();
        let (c, proof) = self.sign_now(&mut map, subjects)?;
        if !subjects.is_empty() && self.signs_map {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.retain(|k| k.at.elapsed() < KEPT_FOR && k.size != c.tree_size);
            if kept.len() >= KEPT {
                kept.pop_front();
            }
            kept.push_back(Kept { size: c.tree_size, map: map.clone(), at: std::time::Instant::now() });
        }
        Ok((c, proof))
    }

    /// Signs a checkpoint of the tree and `map` (whose lock the caller
    /// holds, so both are of one size), with a proof of `subjects`.
    fn sign_now(&self, map: &mut LotMap, subjects: &[Subject]) -> Result<(Checkpoint, MapProof), NotaryError> {
        let map_root = self.signs_map.then(|| map.root());
        let proof = if self.signs_map && !subjects.is_empty() { map.prove(subjects) } else { MapProof::default() };
        let (size, root) = {
            let t = self.read();
            let size = t.len().min(self.published.load(Ordering::Acquire));
            debug_assert_eq!(size, t.len(), "published is set before append: the map covers every entry in the tree");
            (size, t.root_at(size)?)
        };
        let c = Checkpoint::sign(&self.key, &self.origin, size, &root, map_root.as_ref(), Timestamp::now()).map_err(|e| NotaryError::Sign(e.to_string()))?;
        Ok((c, proof))
    }

    /// One proof of the heads of `subjects` in the map a recent checkpoint
    /// of `size` entries signed (one handed out with a map proof).
    fn prove_at(&self, size: u64, subjects: &[Subject]) -> Result<Value, NotaryError> {
        if let Some((c, map)) = self.witnessed.lock().unwrap_or_else(|p| p.into_inner()).as_mut().filter(|(c, _)| c.tree_size == size) {
            return Ok(json!({"tree_size": c.tree_size, "map": map.prove(subjects)}));
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| k.at.elapsed() < KEPT_FOR);
        let Some(k) = kept.iter_mut().find(|k| k.size == size) else {
            let why = format!("no checkpoint of {size} entries handed out in the last {} s is kept for map proofs: ask for a new one", KEPT_FOR.as_secs());
            return Err(NotaryError::Sign(why));
        };
        Ok(json!({"tree_size": size, "map": k.map.prove(subjects)}))
    }

    /// Answers a request on one of the proof subjects.
    pub fn answer(&self, subject: &str, body: &[u8]) -> Value {
        let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return error(AnswerCode::InvalidRequest, format!("the request is not JSON: {e}")),
            }
        };
        let num = |k: &str| req.get(k).and_then(Value::as_u64);
        let witnessed = req.get("witnessed").and_then(Value::as_bool).unwrap_or(false);
        let result = match subject {
            custody_wire::subjects::CHECKPOINT_SUBJECT => self.checkpoint_proving(&[], witnessed).map(|(c, _)| json!(c)),
            custody_wire::subjects::PROOF_SUBJECT if ["ranges", "at", "lots", "actors"].iter().any(|k| req.get(k).is_some()) => {
                let names = |field: &str| serde_json::from_value::<Vec<String>>(req.get(field).cloned().unwrap_or_else(|| json!([])));
                let (Ok(lots), Ok(actors)) = (names("lots"), names("actors")) else {
                    return error(AnswerCode::InvalidRequest, "\"lots\" and \"actors\" are lists of lot ids and actor keys");
                };
                let subjects: Vec<Subject> = lots.into_iter().map(Subject::Lot).chain(actors.into_iter().map(Subject::Actor)).collect();
                if subjects.len() as u64 > Self::MAX_PROVEN {
                    return error(AnswerCode::InvalidRequest, format!("at most {} lots and actors in one map proof", Self::MAX_PROVEN));
                }
                if let Some(at) = num("at") {
                    return self.prove_at(at, &subjects).unwrap_or_else(|e| error(AnswerCode::Unavailable, e.to_string()));
                }
                if req.get("ranges").is_none() {
                    // The heads now, with the checkpoint that signs them:
                    // what a certificate's holder compares its own with.
                    return self
                        .checkpoint_proving(&subjects, witnessed)
                        .map(|(c, map)| json!({"tree_size": c.tree_size, "checkpoint": c, "map": map}))
                        .unwrap_or_else(|e| error(AnswerCode::Unavailable, e.to_string()));
                }
                let Ok(ranges) = serde_json::from_value::<Vec<(u64, u64)>>(req["ranges"].clone()) else {
                    return error(AnswerCode::InvalidRequest, "give \"ranges\": [[first, last], ...], ascending seqs");
                };
                self.multi_inclusion(&ranges, &subjects, witnessed)
            }
            custody_wire::subjects::PROOF_SUBJECT => {
                let Some(seq) = num("seq") else { return error(AnswerCode::InvalidRequest, "give \"seq\", a positive integer") };
                self.inclusion(seq, num("tree_size"))
            }
            custody_wire::subjects::CONSISTENCY_SUBJECT => {
                let (Some(from), Some(to)) = (num("from"), num("to")) else {
                    return error(AnswerCode::InvalidRequest, "give \"from\" and \"to\", tree sizes with 1 <= from <= to");
                };
                self.consistency(from, to)
            }
            other => return error(AnswerCode::InvalidRequest, format!("no such subject {other}")),
        };
        result.unwrap_or_else(|e| match e {
            NotaryError::Proof(p @ ProofError::NotInTree { .. }) => error(AnswerCode::NotInTree, p.to_string()),
            NotaryError::Proof(p @ ProofError::TooLarge { .. }) => error(AnswerCode::TreeTooSmall, p.to_string()),
            NotaryError::Proof(p) => error(AnswerCode::InvalidRequest, p.to_string()),
            NotaryError::Sign(s) => error(AnswerCode::Unavailable, s),
            NotaryError::Store(s) => error(AnswerCode::Unavailable, s.to_string()),
        })
    }

    /// Entry `seq`'s inclusion proof in the tree of `size` entries; without
    /// a size, in the current tree, with a checkpoint for it.
    fn inclusion(&self, seq: u64, size: Option<u64>) -> Result<Value, NotaryError> {
        let (checkpoint, size) = match size {
            Some(s) => (None, s),
            None => {
                let c = self.checkpoint()?;
                let s = c.tree_size;
                (Some(c), s)
            }
        };
        let (path, root) = {
            let t = self.read();
            (t.inclusion(seq, size)?, t.root_at(size)?)
        };
        // The leaf's input, the entry hash, is what a client checks against
        // its receipt; the tree keeps only leaf hashes.
        let entry = self.store.get(seq)?.ok_or(ProofError::NotInTree { seq, size })?;
        let mut v = json!({
            "seq": seq,
            "entry_hash": entry.hash.to_hex(),
            "tree_size": size,
            "root": root.to_hex(),
            "path": path.iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
        });
        if let Some(c) = checkpoint {
            v["checkpoint"] = json!(c);
        }
        Ok(v)
    }

    /// Most entries one multi-entry proof covers.
    const MAX_PROVEN: u64 = 1_000_000;

    /// One proof that every seq of `ranges` is in the tree of the current
    /// checkpoint, and one proof of the heads of `subjects` in its lot map,
    /// with that checkpoint (what an origin certificate carries).
    fn multi_inclusion(&self, ranges: &[(u64, u64)], subjects: &[Subject], witnessed: bool) -> Result<Value, NotaryError> {
        let count = ranges.iter().fold(0u64, |n, (a, b)| n.saturating_add(b.saturating_sub(*a)).saturating_add(1));
        if ranges.iter().any(|(a, b)| a > b) || count > Self::MAX_PROVEN {
            return Err(ProofError::Unordered.into());
        }
        let seqs: Vec<u64> = ranges.iter().flat_map(|(a, b)| *a..=*b).collect();
        let (c, map) = self.checkpoint_proving(subjects, witnessed)?;
        let proof = self.read().multi_inclusion(&seqs, c.tree_size)?;
        Ok(json!({"tree_size": c.tree_size, "proof": proof.iter().map(|h| h.to_hex()).collect::<Vec<_>>(), "checkpoint": c, "map": map}))
    }

    fn consistency(&self, from: u64, to: u64) -> Result<Value, NotaryError> {
        let t = self.read();
        let proof = t.consistency(from, to)?;
        Ok(json!({
            "from": from,
            "to": to,
            "from_root": t.root_at(from)?.to_hex(),
            "to_root": t.root_at(to)?.to_hex(),
            "proof": proof.iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
        }))
    }
}

/// A copy of the map as a checkpoint handed out with a map proof signed it.
struct Kept {
    size: u64,
    map: LotMap,
    at: std::time::Instant,
}

/// Copies kept at once, and for how long: enough for a certificate's maker
/// to ask for the rest of its subjects (each copy holds only the nodes the
/// live map changed since).
const KEPT: usize = 8;
const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(120);

fn error(code: AnswerCode, message: impl Into<String>) -> Value {
    custody_wire::query::error_answer(code, message)
}
