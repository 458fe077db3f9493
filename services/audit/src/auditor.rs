//! The independent auditor: follows the committed stream and the signed
//! checkpoints from outside the ledger, trusting neither. It re-verifies
//! every entry (hash, link, signature, event, unique id) as `verify` does,
//! rebuilds the Merkle tree itself, checks every checkpoint's signature
//! against the ledger key it was given, and checks that each checkpoint's
//! root is the root of the history it was shown. It also recomputes the
//! lot map (every lot's and actor's history, `custody_proto::lotmap`) and
//! checks each checkpoint's map root against it: witnesses check that
//! checkpoints are consistent, an auditor that the map says what the
//! entries say. The checkpoints it has
//! seen are kept in its state folder, so a ledger that later shows another
//! history (rolled back, rewritten, an entry dropped) contradicts its own
//! signature and is caught.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use custody_proto::lotmap::Recomputed;
use custody_proto::merkle::{Tree, TreeHash};
use custody_proto::{Checkpoint, Event, Opened};
use custody_wire::files::{write_whole, FileError, Mode};
use custody_wire::follow::{FollowError, ReadError, Reader};
use custody_wire::subjects;
use futures::StreamExt;
use serde::Serialize;

use crate::verify::{Bad, Checker};

/// File in the state folder: every checkpoint seen, by tree size.
pub const STATE_FILE: &str = "checkpoints.json";

/// What the auditor found wrong: the ledger is not to be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Finding(pub String);

impl From<Bad> for Finding {
    fn from(b: Bad) -> Finding {
        Finding(format!("entry {}: {}", b.seq, b.why))
    }
}

/// The auditor could not work: its key or state is unusable, or NATS.
#[derive(Debug, thiserror::Error)]
pub enum AuditorError {
    #[error("{key:?} is not a public nkey: {why}")]
    Key { key: String, why: String },
    #[error("the auditor's state {}: {why}", path.display())]
    State { path: PathBuf, why: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Where an audit stands.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub entries: u64,
    pub root: String,
    pub checkpoints_seen: usize,
    /// Checkpoints whose root was recomputed from the entries and matched.
    pub checkpoints_verified: usize,
    /// Checkpoints whose lot-map root was recomputed from the entries and
    /// matched (those signed before the map existed have none).
    pub map_roots_verified: usize,
    pub latest_checkpoint: Option<Checkpoint>,
}

/// Which tree a checkpoint signs: the SHA-256 one of C2SP notes, or the
/// blake3 one of checkpoints signed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Note,
    Legacy,
}

impl Kind {
    fn of(c: &Checkpoint) -> Kind {
        match c.tree_hash() {
            TreeHash::Sha256 => Kind::Note,
            TreeHash::Blake3 => Kind::Legacy,
        }
    }
}

pub struct Auditor {
    key: String,
    checker: Checker,
    tree: Tree,
    /// The blake3 tree, for checkpoints signed before they were C2SP notes.
    legacy: Tree,
    /// The lot map, recomputed from the entries as the ledger builds it.
    map: Recomputed,
    map_verified: usize,
    /// The last entry audited, to notice it changing under a follower.
    last: Option<(u64, custody_proto::Hash)>,
    /// Every checkpoint seen, by tree size and the hash its tree is over.
    seen: BTreeMap<(u64, Kind), Checkpoint>,
    verified: usize,
    /// Position reached on the checkpoints stream.
    checkpoints_read: u64,
    state: Option<PathBuf>,
}

impl Auditor {
    /// An auditor trusting only the ledger key `key`, keeping what it has
    /// seen in `state` (loaded and re-verified if present).
    pub fn new(key: &str, state: Option<&Path>) -> Result<Auditor, AuditorError> {
        nkeys::KeyPair::from_public_key(key).map_err(|e| AuditorError::Key { key: key.to_owned(), why: e.to_string() })?;
        let mut seen = BTreeMap::new();
        if let Some(dir) = state {
            let path = dir.join(STATE_FILE);
            let bad = |why: String| AuditorError::State { path: path.clone(), why };
            if path.exists() {
                let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot be read: {e}")))?;
                let kept: Vec<Checkpoint> = serde_json::from_str(&text).map_err(|e| bad(format!("is not a list of checkpoints: {e}")))?;
                for c in kept {
                    c.verify(key).map_err(|e| bad(format!("holds a checkpoint not signed by {key}: {e}")))?;
                    seen.insert((c.tree_size, Kind::of(&c)), c);
                }
            }
        }
        Ok(Auditor {
            key: key.to_owned(),
            checker: Checker::new(Box::new(|_| {})),
            tree: Tree::new(),
            legacy: Tree::with_hash(TreeHash::Blake3),
            map: Recomputed::default(),
            map_verified: 0,
            last: None,
            seen,
            verified: 0,
            checkpoints_read: 0,
            state: state.map(Path::to_path_buf),
        })
    }

    /// One more entry of the committed stream, in order.
    pub fn entry(&mut self, e: custody_proto::Entry) -> Result<(), Finding> {
        let (seq, hash) = (e.seq, e.hash);
        // An entry that does not decode is the checker's finding, below.
        let event = Opened::payload_of(&e.envelope).ok().and_then(|p| Event::decode(&p).ok());
        self.checker.push(e)?;
        self.tree.push(&hash);
        self.legacy.push(&hash);
        if let Some(event) = event {
            self.map.apply(seq, &hash, &event);
        }
        self.last = Some((seq, hash));
        let size = self.tree.len();
        for kind in [Kind::Note, Kind::Legacy] {
            let Some(c) = self.seen.get(&(size, kind)) else { continue };
            let root = self.tree_of(kind).root();
            if c.root != root.to_hex() {
                return Err(Finding(format!(
                    "the ledger signed root {} for its first {size} entries (checkpoint of {}), but the history it shows now has root {root}: \
                     an entry was altered, dropped or inserted at or before seq {size}",
                    c.root, c.time
                )));
            }
            self.verified += 1;
            if let Some(signed) = &c.map_root {
                let ours = self.map.map.root();
                if *signed != ours.to_hex() {
                    return Err(Finding(format!(
                        "the ledger signed lot-map root {signed} for its first {size} entries (checkpoint of {}), but those entries give {ours}: \
                         the map misstates some lot's or actor's history",
                        c.time
                    )));
                }
                self.map_verified += 1;
            }
        }
        Ok(())
    }

    fn tree_of(&self, kind: Kind) -> &Tree {
        match kind {
            Kind::Note => &self.tree,
            Kind::Legacy => &self.legacy,
        }
    }

    /// One more signed checkpoint.
    pub fn checkpoint(&mut self, c: Checkpoint) -> Result<(), Finding> {
        let root = c.verify(&self.key).map_err(|e| Finding(format!("checkpoint for {} entries: {e}", c.tree_size)))?;
        let kind = Kind::of(&c);
        if let Some(earlier) = self.seen.get(&(c.tree_size, kind)) {
            if earlier.root != c.root {
                return Err(Finding(format!(
                    "the ledger signed two different roots for its first {} entries: {} (at {}) and {} (at {}); it has shown two histories",
                    c.tree_size, earlier.root, earlier.time, c.root, c.time
                )));
            }
            if let (Some(a), Some(b)) = (&earlier.map_root, &c.map_root) {
                if a != b {
                    return Err(Finding(format!(
                        "the ledger signed two different lot-map roots for its first {} entries: {a} (at {}) and {b} (at {}); one misstates some lot's or actor's history",
                        c.tree_size, earlier.time, c.time
                    )));
                }
            }
            return Ok(());
        }
        if c.tree_size <= self.tree.len() {
            let ours = self.tree_of(kind).root_at(c.tree_size).map_err(|e| Finding(e.to_string()))?;
            if ours != root {
                return Err(Finding(format!("checkpoint of {} signs root {} for {} entries, but those entries have root {ours}", c.time, c.root, c.tree_size)));
            }
            self.verified += 1;
        }
        self.seen.insert((c.tree_size, kind), c);
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        Summary {
            entries: self.tree.len(),
            root: self.tree.root().to_hex(),
            checkpoints_seen: self.seen.len(),
            checkpoints_verified: self.verified,
            map_roots_verified: self.map_verified,
            latest_checkpoint: self.seen.values().next_back().cloned(),
        }
    }

    /// Keeps the checkpoints seen (written whole).
    pub fn save(&self) -> Result<(), AuditorError> {
        let Some(dir) = &self.state else { return Ok(()) };
        let all: Vec<&Checkpoint> = self.seen.values().collect();
        let text = serde_json::to_vec_pretty(&all).map_err(|e| AuditorError::State { path: dir.join(STATE_FILE), why: e.to_string() })?;
        write_whole(&dir.join(STATE_FILE), &text, Mode::Shared)?;
        Ok(())
    }

    /// Reads both streams to their current ends. The outer error is NATS
    /// failing; the inner one is the ledger failing the audit.
    pub async fn catch_up(&mut self, client: &async_nats::Client) -> Result<Result<Summary, Finding>, AuditorError> {
        // Checkpoints first: each was published only once the entries it
        // covers were on the committed stream, so all of them are covered
        // by the stream as read next, unless the stream went backwards.
        let creader = Reader::checkpoints(client);
        let clast = creader.last_seq().await?;
        if clast > self.checkpoints_read {
            let mut messages = std::pin::pin!(creader.range(self.checkpoints_read + 1, clast));
            while let Some(msg) = messages.next().await {
                let msg = msg?;
                self.checkpoints_read = msg.seq;
                let cp: Checkpoint = match serde_json::from_slice(&msg.payload) {
                    Ok(cp) => cp,
                    Err(e) => return Ok(Err(Finding(format!("checkpoints stream position {}: not a checkpoint: {e}", self.checkpoints_read)))),
                };
                if let Err(f) = self.checkpoint(cp) {
                    return Ok(Err(f));
                }
            }
        }

        let ereader = Reader::ledger(client);
        let elast = ereader.last_seq().await?;
        if let Some((&(size, _), c)) = self.seen.iter().next_back() {
            if size > elast {
                return Ok(Err(Finding(format!(
                    "the ledger signed a checkpoint for {size} entries (at {}), but its committed stream now ends at {elast}: history was rolled back",
                    c.time
                ))));
            }
        }
        if elast < self.tree.len() {
            return Ok(Err(Finding(format!("the committed stream shrank from {} to {elast} entries: history was rolled back", self.tree.len()))));
        }
        // What was audited must still be there: a stream rewritten to the
        // same length would otherwise go unnoticed by a follower.
        if let Some((seq, hash)) = self.last {
            let msg = ereader.get(seq).await?;
            let now = msg.and_then(|m| m.headers.get(subjects::HDR_HASH).map(|v| v.as_str().to_owned()));
            if now.as_deref() != Some(hash.to_hex().as_str()) {
                return Ok(Err(Finding(format!(
                    "entry {seq} on the committed stream changed since it was audited (hash {hash}, now {}): history was rewritten",
                    now.unwrap_or_else(|| "missing".into())
                ))));
            }
        }
        let mut batches = std::pin::pin!(ereader.entries(self.last, Some(elast)));
        while let Some(batch) = batches.next().await {
            let entries = match batch {
                Ok(entries) => entries,
                Err(FollowError::Read(e)) => return Err(e.into()),
                Err(FollowError::Broken { seq, why }) => return Ok(Err(Finding(format!("entry {seq}: {why}")))),
            };
            for entry in entries {
                if let Err(f) = self.entry(entry.into_entry()) {
                    return Ok(Err(f));
                }
            }
        }
        if let Err(b) = self.checker.flush() {
            return Ok(Err(b.into()));
        }
        self.save()?;
        Ok(Ok(self.summary()))
    }
}
