//! The lot map: a verifiable index of every lot's and every actor's
//! history, committed in each checkpoint, so that a certificate proves a
//! history *whole*, not only that what it carries is in the ledger.
//!
//! For every subject (a lot, or an actor key) the ledger keeps a [`Head`]:
//! `head = H(head_before ‖ entry hash)` over the entries that act on it, in
//! seq order ([`subjects`]: what an entry creates, moves, consumes or
//! annotates; an actor's registration and revocation), with how many there
//! are and the last one's seq. The heads sit in a sparse Merkle tree keyed
//! by the hash of the subject ([`LotMap`]): 256-bit keys, an empty subtree
//! hashes to zero, a subtree of one leaf is that leaf (Diem's and the
//! Jellyfish tree's compaction), so a key's path is about log2(n) long. One
//! [`MapProof`] proves many keys at once, present or absent, by the hashes
//! of the subtrees that hold none of them.
//!
//! Why not the `jmt` crate: it proves one key per proof (`SparseMerkleProof`),
//! so a certificate of a stone cut from 100,000 mined lots would carry
//! 100,000 separate paths (about 100 MB of hex), where one multi-key proof
//! shares every subtree; and its versioned node store is built for state on
//! disk, where the ledger needs one map in memory updated as entries become
//! durable. What is ours is about 200 lines: insert, hash, prove, verify.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entry::Hash;
use crate::event::{Body, Event};
use crate::ids::LotId;

/// The root of the map with no subject: an empty subtree.
pub const EMPTY: Hash = Hash([0; 32]);

/// What an entry acts on: a lot, or an actor (its registration or
/// revocation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Lot(String),
    Actor(String),
}

/// `lot L1`, `actor U...`: how findings name a subject.
impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Lot(l) => write!(f, "lot {l}"),
            Subject::Actor(a) => write!(f, "actor {a}"),
        }
    }
}

impl Subject {
    /// The subject's key in the map: the hash of its kind and id.
    pub fn key(&self) -> Hash {
        match self {
            Subject::Lot(l) => Subject::lot_key(l),
            Subject::Actor(a) => keyed(b'a', a),
        }
    }

    /// The key of lot `id` (of `Subject::Lot(id)`), without making one.
    pub fn lot_key(id: &str) -> Hash {
        keyed(b'l', id)
    }
}

/// A subject's key from its kind's tag and its id.
fn keyed(tag: u8, id: &str) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("custody 2026-12 lot map key v1");
    h.update(&[tag]);
    h.update(id.as_bytes());
    Hash(*h.finalize().as_bytes())
}

/// The subjects of one event, each once: every lot it creates, moves,
/// consumes or annotates (`flagged`, `verified`), and the actor a
/// registration or revocation is about. `shipped` names the lots an
/// export certificate shipped (an import or a verification may name the
/// certificate instead of the lots); it is asked only then.
pub fn subjects(event: &Event, shipped: impl FnOnce(&str) -> Vec<String>) -> Vec<Subject> {
    let lots = |l: &[LotId]| l.iter().map(|x| Subject::Lot(x.to_string())).collect::<Vec<_>>();
    let by_certificate = |c: &str| shipped(c).into_iter().map(Subject::Lot).collect();
    let mut out = match &event.body {
        Body::ActorRegistered { subject, .. } | Body::ActorRevoked { subject, .. } => vec![Subject::Actor(subject.to_string())],
        Body::Mined { lot, .. } | Body::Declared { lot, .. } | Body::Flagged { lot, .. } => vec![Subject::Lot(lot.to_string())],
        Body::Split { lot, into } | Body::Processed { lot, into, .. } => {
            std::iter::once(Subject::Lot(lot.to_string())).chain(into.iter().map(|p| Subject::Lot(p.lot.to_string()))).collect()
        }
        Body::Merged { lots: from, into } => lots(from).into_iter().chain([Subject::Lot(into.lot.to_string())]).collect(),
        Body::Transferred { lots: l, .. } | Body::Exported { lots: l, .. } => lots(l),
        Body::Imported { certificate: Some(c), .. } | Body::Verified { certificate: Some(c), .. } => by_certificate(c),
        Body::Imported { lots: Some(l), .. } | Body::Verified { lots: Some(l), .. } => lots(l),
        Body::Imported { .. } | Body::Verified { .. } => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

/// The lot and every ancestor, as the entries that made them name them
/// (a split, a cut or a merge names its inputs): whose histories a
/// certificate about `lot` must hold whole. Ids, sorted.
pub fn lineage<'e>(lot: &str, events: impl IntoIterator<Item = &'e Event>) -> Vec<String> {
    let mut made_from: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in events {
        match &event.body {
            Body::Split { lot: from, into } | Body::Processed { lot: from, into, .. } => {
                for p in into {
                    made_from.entry(p.lot.as_str()).or_default().push(from.as_str());
                }
            }
            Body::Merged { lots, into } => made_from.entry(into.lot.as_str()).or_default().extend(lots.iter().map(LotId::as_str)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![lot];
    while let Some(l) = todo.pop() {
        if seen.insert(l.to_owned()) {
            todo.extend(made_from.get(l).into_iter().flatten().copied());
        }
    }
    seen.into_iter().collect()
}

/// A subject's history in the map: the chained hash of the entries that
/// act on it, how many, and the last one's seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub head: Hash,
    pub count: u64,
    pub last: u64,
}

impl Head {
    /// The head after entry `seq` (chain hash `entry_hash`) acts on the
    /// subject whose head was `before`.
    pub fn next(before: Option<&Head>, seq: u64, entry_hash: &Hash) -> Head {
        let mut h = blake3::Hasher::new_derive_key("custody 2026-12 lot map head v1");
        h.update(&before.map_or(EMPTY, |b| b.head).0);
        h.update(&entry_hash.0);
        Head { head: Hash(*h.finalize().as_bytes()), count: before.map_or(0, |b| b.count) + 1, last: seq }
    }
}

fn leaf_hash(key: &Hash, head: &Head) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x10]);
    h.update(&key.0);
    h.update(&head.head.0);
    h.update(&head.count.to_be_bytes());
    h.update(&head.last.to_be_bytes());
    Hash(*h.finalize().as_bytes())
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x11]);
    h.update(&left.0);
    h.update(&right.0);
    Hash(*h.finalize().as_bytes())
}

/// Bit `depth` of a key, most significant first.
fn bit(key: &Hash, depth: usize) -> bool {
    key.0[depth / 8] >> (7 - depth % 8) & 1 == 1
}

/// Nodes are shared (`Arc`), so that a copy of the map is cheap and keeps
/// what it saw: the writer changes its own copy path by path.
#[derive(Debug, Clone, Default)]
enum Node {
    #[default]
    Empty,
    Leaf(Arc<Leaf>),
    Branch(Arc<Branch>),
}

#[derive(Debug, Clone)]
struct Leaf {
    key: Hash,
    head: Head,
}

#[derive(Debug, Clone)]
struct Branch {
    /// `None` while a subject below changed since it was last hashed.
    hash: Option<Hash>,
    left: Node,
    right: Node,
}

/// The sparse Merkle tree of every subject's [`Head`]. A clone costs one
/// pointer and shares every node: the map as it was when a checkpoint
/// signed it, while the live one moves on.
#[derive(Debug, Clone, Default)]
pub struct LotMap {
    root: Node,
    len: usize,
}

impl LotMap {
    pub fn new() -> LotMap {
        LotMap::default()
    }

    /// Subjects in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &Hash) -> Option<&Head> {
        let mut node = &self.root;
        for depth in 0..256 {
            match node {
                Node::Empty => return None,
                Node::Leaf(l) => return (l.key == *key).then_some(&l.head),
                Node::Branch(b) => node = if bit(key, depth) { &b.right } else { &b.left },
            }
        }
        None
    }

    /// Entry `seq` (chain hash `entry_hash`) acts on `key`: its head moves on.
    pub fn touch(&mut self, key: &Hash, seq: u64, entry_hash: &Hash) -> Head {
        let head = Head::next(self.get(key), seq, entry_hash);
        self.put(*key, head);
        head
    }

    /// Sets `key`'s head.
    pub fn put(&mut self, key: Hash, head: Head) {
        if insert(&mut self.root, 0, key, head) {
            self.len += 1;
        }
    }

    /// Every subject's key and head, in key order: what a saved write
    /// model keeps of the map ([`LotMap::from_sorted`] builds it again).
    pub fn heads(&self) -> Vec<(Hash, Head)> {
        fn walk(node: &Node, out: &mut Vec<(Hash, Head)>) {
            match node {
                Node::Empty => {}
                Node::Leaf(l) => out.push((l.key, l.head)),
                Node::Branch(b) => {
                    walk(&b.left, out);
                    walk(&b.right, out);
                }
            }
        }
        let mut out = Vec::with_capacity(self.len);
        walk(&self.root, &mut out);
        out
    }

    /// The map of these heads, keys in strictly increasing order (as
    /// [`LotMap::heads`] gives them); `None` when they are not. The tree
    /// is built in one pass, the same shape inserting them one by one
    /// gives (the shape depends only on the keys), with nothing hashed yet.
    pub fn from_sorted(heads: Vec<(Hash, Head)>) -> Option<LotMap> {
        LotMap::build(heads, None)
    }

    /// [`LotMap::from_sorted`] with every branch's hash as
    /// [`LotMap::branch_hashes`] gave them, so that nothing is hashed
    /// again; `None` also when there are more or fewer hashes than
    /// branches. The hashes are taken as given: only for a map this
    /// process (or its own saved state, checksummed) computed.
    pub fn from_sorted_hashed(heads: Vec<(Hash, Head)>, hashes: &[Hash]) -> Option<LotMap> {
        LotMap::build(heads, Some(hashes))
    }

    fn build(heads: Vec<(Hash, Head)>, hashes: Option<&[Hash]>) -> Option<LotMap> {
        /// Branches are made depth first, each before its children: the
        /// order [`LotMap::branch_hashes`] lists them in.
        fn build(heads: &[(Hash, Head)], depth: usize, hashes: &mut Option<std::slice::Iter<'_, Hash>>, short: &mut bool) -> Node {
            match heads {
                [] => Node::Empty,
                [(key, head)] => Node::Leaf(Arc::new(Leaf { key: *key, head: *head })),
                _ if depth >= 256 => Node::Empty,
                _ => {
                    let hash = match hashes.as_mut() {
                        None => None,
                        Some(it) => {
                            let h = it.next().copied();
                            *short |= h.is_none();
                            h
                        }
                    };
                    let split = heads.partition_point(|(k, _)| !bit(k, depth));
                    let (left, right) = heads.split_at(split);
                    let left = build(left, depth + 1, hashes, short);
                    Node::Branch(Arc::new(Branch { hash, left, right: build(right, depth + 1, hashes, short) }))
                }
            }
        }
        if heads.windows(2).any(|w| w[0].0 .0 >= w[1].0 .0) {
            return None;
        }
        let mut it = hashes.map(<[Hash]>::iter);
        let mut short = false;
        let root = build(&heads, 0, &mut it, &mut short);
        if short || it.is_some_and(|mut rest| rest.next().is_some()) {
            return None;
        }
        Some(LotMap { root, len: heads.len() })
    }

    /// Every branch's hash, depth first, each before its children (the
    /// order [`LotMap::from_sorted_hashed`] takes them in), hashing what
    /// changed first.
    pub fn branch_hashes(&mut self) -> Vec<Hash> {
        fn walk(node: &Node, out: &mut Vec<Hash>) {
            if let Node::Branch(b) = node {
                out.push(b.hash.unwrap_or_else(|| hashed(node)));
                walk(&b.left, out);
                walk(&b.right, out);
            }
        }
        hash(&mut self.root);
        let mut out = Vec::with_capacity(self.len);
        walk(&self.root, &mut out);
        out
    }

    /// The root, hashing what changed since the last call.
    pub fn root(&mut self) -> Hash {
        hash(&mut self.root)
    }

    /// One proof of the heads of `subjects` (repeats ignored), present or
    /// absent, against [`LotMap::root`].
    pub fn prove(&mut self, subjects: &[Subject]) -> MapProof {
        let mut subjects = subjects.to_vec();
        subjects.sort();
        subjects.dedup();
        let mut keys: Vec<Hash> = subjects.iter().map(Subject::key).collect();
        keys.sort_unstable();
        hash(&mut self.root);
        let mut steps = Vec::new();
        if !keys.is_empty() {
            prove(&self.root, 0, &keys, &mut steps);
        }
        MapProof { subjects, steps }
    }
}

/// Inserts or replaces; true when the key is new.
fn insert(node: &mut Node, depth: usize, key: Hash, head: Head) -> bool {
    match node {
        Node::Empty => {
            *node = Node::Leaf(Arc::new(Leaf { key, head }));
            true
        }
        Node::Leaf(l) if l.key == key => {
            *node = Node::Leaf(Arc::new(Leaf { key, head }));
            false
        }
        Node::Leaf(_) => {
            let Node::Leaf(old) = std::mem::take(node) else { unreachable!("matched a leaf") };
            let mut branch = Branch { hash: None, left: Node::Empty, right: Node::Empty };
            let side = if bit(&old.key, depth) { &mut branch.right } else { &mut branch.left };
            *side = Node::Leaf(old);
            let side = if bit(&key, depth) { &mut branch.right } else { &mut branch.left };
            let new = insert(side, depth + 1, key, head);
            *node = Node::Branch(Arc::new(branch));
            new
        }
        Node::Branch(b) => {
            // A node a copy of the map still holds is copied first.
            let b = Arc::make_mut(b);
            b.hash = None;
            let side = if bit(&key, depth) { &mut b.right } else { &mut b.left };
            insert(side, depth + 1, key, head)
        }
    }
}

fn hash(node: &mut Node) -> Hash {
    match node {
        Node::Empty => EMPTY,
        Node::Leaf(l) => leaf_hash(&l.key, &l.head),
        Node::Branch(b) => match b.hash {
            Some(h) => h,
            None => {
                let b = Arc::make_mut(b);
                let h = node_hash(&hash(&mut b.left), &hash(&mut b.right));
                b.hash = Some(h);
                h
            }
        },
    }
}

/// Hash of a node already hashed (by [`LotMap::prove`]).
fn hashed(node: &Node) -> Hash {
    match node {
        Node::Empty => EMPTY,
        Node::Leaf(l) => leaf_hash(&l.key, &l.head),
        Node::Branch(b) => b.hash.unwrap_or_else(|| node_hash(&hashed(&b.left), &hashed(&b.right))),
    }
}

fn prove(node: &Node, depth: usize, keys: &[Hash], out: &mut Vec<Step>) {
    match node {
        Node::Empty => out.push(Step::Empty),
        // The one key asked for here, present: its key goes without saying.
        Node::Leaf(l) if keys == [l.key] => out.push(Step::Own { head: l.head }),
        Node::Leaf(l) => out.push(Step::Leaf { key: l.key, head: l.head }),
        Node::Branch(b) => {
            out.push(Step::Branch);
            let (left, right) = keys.split_at(keys.partition_point(|k| !bit(k, depth)));
            for (child, keys) in [(&b.left, left), (&b.right, right)] {
                if keys.is_empty() {
                    out.push(Step::Hash(hashed(child)));
                } else {
                    prove(child, depth + 1, keys, out);
                }
            }
        }
    }
}

/// One step of a [`MapProof`], in depth-first order from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A node with subjects on both sides; its two children follow.
    Branch,
    /// An empty subtree where proven keys would be: they are absent.
    Empty,
    /// A subtree holding none of the proven keys: its hash.
    Hash(Hash),
    /// The one subject in this subtree: a proven key, or the subject whose
    /// place a proven key would take (then that key is absent).
    Leaf { key: Hash, head: Head },
    /// The leaf of the one proven key that leads here: its head.
    Own { head: Head },
}

/// Steps on the wire: one base64 string of tagged steps (a hash is 32
/// bytes, a count and a seq are varints), about a third of the same in
/// JSON; a certificate carries one step per proven subject and the hashes
/// beside their paths.
mod steps_b64 {
    use super::{Head, Step};
    use crate::entry::Hash;
    use base64::Engine as _;

    pub fn serialize<S: serde::Serializer>(steps: &[Step], s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(steps.len() * 34);
        for step in steps {
            match step {
                Step::Branch => out.push(0),
                Step::Empty => out.push(1),
                Step::Hash(h) => {
                    out.push(2);
                    out.extend_from_slice(&h.0);
                }
                Step::Leaf { key, head } => {
                    out.push(3);
                    out.extend_from_slice(&key.0);
                    put_head(&mut out, head);
                }
                Step::Own { head } => {
                    out.push(4);
                    put_head(&mut out, head);
                }
            }
        }
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(out))
    }

    fn put_head(out: &mut Vec<u8>, head: &Head) {
        out.extend_from_slice(&head.head.0);
        for mut n in [head.count, head.last] {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Step>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| serde::de::Error::custom("map proof steps are not base64"))?;
        decode(&bytes).ok_or_else(|| serde::de::Error::custom("map proof steps are malformed"))
    }

    fn decode(mut b: &[u8]) -> Option<Vec<Step>> {
        let mut steps = Vec::new();
        while let Some((&tag, rest)) = b.split_first() {
            b = rest;
            steps.push(match tag {
                0 => Step::Branch,
                1 => Step::Empty,
                2 => Step::Hash(hash(&mut b)?),
                3 => {
                    let key = hash(&mut b)?;
                    Step::Leaf { key, head: head(&mut b)? }
                }
                4 => Step::Own { head: head(&mut b)? },
                _ => return None,
            });
        }
        Some(steps)
    }

    fn hash(b: &mut &[u8]) -> Option<Hash> {
        let (h, rest) = b.split_first_chunk::<32>()?;
        *b = rest;
        Some(Hash(*h))
    }

    fn head(b: &mut &[u8]) -> Option<Head> {
        let h = hash(b)?;
        Some(Head { head: h, count: varint(b)?, last: varint(b)? })
    }

    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            n |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
}

/// A proof of many subjects' heads at once against a map root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapProof {
    /// What it proves: each subject's head, or that nothing acts on it.
    pub subjects: Vec<Subject>,
    #[serde(with = "steps_b64")]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("the map proof does not have the shape of a proof of these keys")]
    Malformed,
    #[error("the map proof does not lead to the signed map root")]
    Mismatch,
}

impl MapProof {
    /// Checks the proof against `root`, and gives the head of each of its
    /// subjects by key, `None` for a subject the map does not hold. Every
    /// step must be used.
    pub fn verify(&self, root: &Hash) -> Result<HashMap<Hash, Option<Head>>, MapError> {
        let mut keys: Vec<Hash> = self.subjects.iter().map(Subject::key).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut found = HashMap::with_capacity(keys.len());
        let mut steps = self.steps.iter();
        let computed = if keys.is_empty() { *root } else { walk(&mut steps, 0, &keys, &mut found)? };
        if steps.next().is_some() {
            return Err(MapError::Malformed);
        }
        if computed != *root {
            return Err(MapError::Mismatch);
        }
        Ok(found)
    }
}

fn walk(steps: &mut std::slice::Iter<'_, Step>, depth: usize, keys: &[Hash], found: &mut HashMap<Hash, Option<Head>>) -> Result<Hash, MapError> {
    match steps.next().ok_or(MapError::Malformed)? {
        Step::Empty => {
            found.extend(keys.iter().map(|k| (*k, None)));
            Ok(EMPTY)
        }
        Step::Leaf { key, head } => {
            // A leaf sits where its own key leads, under the path's prefix.
            if (0..depth).any(|d| bit(key, d) != bit(&keys[0], d)) {
                return Err(MapError::Malformed);
            }
            found.extend(keys.iter().map(|k| (*k, (k == key).then_some(*head))));
            Ok(leaf_hash(key, head))
        }
        Step::Own { head } => match keys {
            [key] => {
                found.insert(*key, Some(*head));
                Ok(leaf_hash(key, head))
            }
            _ => Err(MapError::Malformed),
        },
        Step::Branch if depth < 256 => {
            let (left, right) = keys.split_at(keys.partition_point(|k| !bit(k, depth)));
            let mut side = |keys: &[Hash]| {
                if keys.is_empty() {
                    match steps.next() {
                        Some(Step::Hash(h)) => Ok(*h),
                        _ => Err(MapError::Malformed),
                    }
                } else {
                    walk(steps, depth + 1, keys, found)
                }
            };
            let l = side(left)?;
            let r = side(right)?;
            Ok(node_hash(&l, &r))
        }
        Step::Branch | Step::Hash(_) => Err(MapError::Malformed),
    }
}

/// A subject whose history the ledger's map holds otherwise than the
/// entries at hand give it: some are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub subject: Subject,
    /// What the signed map holds (`None`: no entry acts on it).
    pub held: Option<Head>,
    /// What the entries at hand give.
    pub carried: Option<Head>,
}

/// Checks `proof` against the signed map `root`, and gives every subject
/// it proves whose head, as `carried` recomputes it from the entries at
/// hand, is not the one the map holds. Empty: the entries hold each
/// subject's whole history up to the map's checkpoint.
pub fn shortfalls(proof: &MapProof, root: &Hash, carried: &LotMap) -> Result<Vec<Shortfall>, MapError> {
    let proven = proof.verify(root)?;
    Ok(proof
        .subjects
        .iter()
        .filter_map(|subject| {
            let key = subject.key();
            let (held, carried) = (proven.get(&key).copied().flatten(), carried.get(&key).copied());
            (held != carried).then(|| Shortfall { subject: subject.clone(), held, carried })
        })
        .collect())
}

/// The lots `certificate` shipped, by `shipped`: what [`subjects`] asks.
pub fn shipped_lots(shipped: &HashMap<String, Vec<LotId>>, certificate: &str) -> Vec<String> {
    shipped.get(certificate).map(|l| l.iter().map(LotId::to_string).collect()).unwrap_or_default()
}

/// The map recomputed from entries by someone who holds no ledger state:
/// an auditor from the whole stream, a checker from a certificate's
/// entries. It remembers each export's lots, to resolve an import or a
/// verification that names the certificate.
#[derive(Debug, Clone, Default)]
pub struct Recomputed {
    shipped: HashMap<String, Vec<LotId>>,
    pub map: LotMap,
}

impl Recomputed {
    /// Entry `seq` with chain hash `entry_hash` holds `event`: moves the
    /// head of each of its subjects on, and gives them.
    pub fn apply(&mut self, seq: u64, entry_hash: &Hash, event: &Event) -> Vec<Subject> {
        let subjects = subjects(event, |c| shipped_lots(&self.shipped, c));
        if let Body::Exported { lots, certificate, .. } = &event.body {
            self.shipped.entry(certificate.number.clone()).or_insert_with(|| lots.clone());
        }
        for s in &subjects {
            self.map.touch(&s.key(), seq, entry_hash);
        }
        subjects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(i: u64) -> Subject {
        Subject::Lot(format!("L{i}"))
    }

    fn key(i: u64) -> Hash {
        lot(i).key()
    }

    fn entry(i: u64) -> Hash {
        Hash(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// The root straight from the definition: the leaves under a prefix,
    /// one leaf is itself, none is empty, more split on the next bit.
    fn naive(leaves: &[(Hash, Head)], depth: usize) -> Hash {
        match leaves {
            [] => EMPTY,
            [(k, h)] => leaf_hash(k, h),
            _ => {
                let (l, r): (Vec<_>, Vec<_>) = leaves.iter().partition(|(k, _)| !bit(k, depth));
                node_hash(&naive(&l, depth + 1), &naive(&r, depth + 1))
            }
        }
    }

    /// A saved map comes back whole: the same heads, root and proofs as
    /// the map built entry by entry; keys out of order are refused.
    #[test]
    fn a_map_built_from_its_sorted_heads_is_the_same_map() {
        let mut map = LotMap::new();
        for seq in 1..=500u64 {
            map.touch(&key(seq % 300), seq, &entry(seq));
        }
        let heads = map.heads();
        assert_eq!(heads.len(), 300);
        let mut again = LotMap::from_sorted(heads.clone()).expect("sorted");
        assert_eq!(again.len(), map.len());
        assert_eq!(again.root(), map.root());
        let asked = [lot(7), lot(299), lot(1000)];
        assert_eq!(again.prove(&asked), map.prove(&asked));
        again.touch(&key(5), 501, &entry(501));
        map.touch(&key(5), 501, &entry(501));
        assert_eq!(again.root(), map.root());
        let mut swapped = heads;
        swapped.swap(3, 4);
        assert!(LotMap::from_sorted(swapped).is_none());
        assert_eq!(LotMap::from_sorted(Vec::new()).map(|mut m| m.root()), Some(EMPTY));
    }

    /// A saved map with its branches' hashes comes back hashed: the same
    /// root and proofs with nothing hashed again, and hashes that do not
    /// fit its branches in number are refused.
    #[test]
    fn a_map_built_with_its_branch_hashes_needs_no_hashing() {
        let mut map = LotMap::new();
        for seq in 1..=700u64 {
            map.touch(&key(seq % 400), seq, &entry(seq));
        }
        let (heads, hashes) = (map.heads(), map.branch_hashes());
        assert!(hashes.len() >= heads.len() - 1, "a branch at least between every two leaves");
        let again = LotMap::from_sorted_hashed(heads.clone(), &hashes).expect("sorted, one hash a branch");
        // Already hashed: the root is read, not computed.
        assert_eq!(hashed(&again.root), map.root());
        let mut again = again;
        let asked = [lot(9), lot(399), lot(5000)];
        assert_eq!(again.prove(&asked), map.prove(&asked));
        again.touch(&key(11), 701, &entry(701));
        map.touch(&key(11), 701, &entry(701));
        assert_eq!(again.root(), map.root());
        assert!(LotMap::from_sorted_hashed(heads.clone(), &hashes[1..]).is_none(), "one hash short");
        let mut more = hashes.clone();
        more.push(EMPTY);
        assert!(LotMap::from_sorted_hashed(heads.clone(), &more).is_none(), "one hash too many");
        // A wrong hash is taken as given: the root it leads to differs.
        let mut wrong = hashes;
        wrong[0] = EMPTY;
        assert_ne!(LotMap::from_sorted_hashed(heads, &wrong).map(|m| hashed(&m.root)), Some(map.root()));
    }

    #[test]
    fn the_root_is_the_definition_and_every_proof_proves_presence_and_absence() {
        let mut map = LotMap::new();
        assert_eq!(map.root(), EMPTY);
        let mut want: HashMap<Hash, Head> = HashMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for seq in 1..=400u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = key(rng % 150);
            let head = map.touch(&k, seq, &entry(seq));
            assert_eq!(head, Head::next(want.get(&k), seq, &entry(seq)));
            want.insert(k, head);
            if seq % 37 == 0 || seq < 5 {
                let leaves: Vec<(Hash, Head)> = want.iter().map(|(k, h)| (*k, *h)).collect();
                assert_eq!(map.root(), naive(&leaves, 0), "at seq {seq}");
            }
        }
        assert_eq!(map.len(), want.len());
        let root = map.root();
        let asked: Vec<Subject> = (0..200).step_by(7).map(lot).collect();
        let proof = map.prove(&asked);
        let got = proof.verify(&root).unwrap();
        for s in &asked {
            assert_eq!(got[&s.key()], want.get(&s.key()).copied(), "present with its head, or absent");
        }
        // A changed head, a dropped step, another root: refused.
        let mut bent = proof.clone();
        let at = bent.steps.iter().position(|s| matches!(s, Step::Own { .. })).unwrap();
        if let Step::Own { head } = &mut bent.steps[at] {
            head.count += 1;
        }
        // On the wire and back: the same proof.
        let wire: MapProof = serde_json::from_str(&serde_json::to_string(&proof).unwrap()).unwrap();
        assert_eq!(wire, proof);
        assert_eq!(bent.verify(&root), Err(MapError::Mismatch));
        let mut short = proof.clone();
        short.steps.pop();
        assert!(short.verify(&root).is_err());
        assert_eq!(proof.verify(&entry(1)), Err(MapError::Mismatch));
        // The same steps for other subjects: not a proof of them.
        let mut other = proof.clone();
        other.subjects[0] = lot(1000);
        assert!(other.verify(&root).is_err());
    }

    #[test]
    fn a_copy_keeps_the_map_it_saw_while_the_live_one_moves_on() {
        let mut live = LotMap::new();
        for i in 0..300 {
            live.touch(&key(i % 120), i + 1, &entry(i));
        }
        let before = live.root();
        let mut kept = live.clone();
        for i in 300..600 {
            live.touch(&key(i % 170), i + 1, &entry(i));
        }
        assert_ne!(live.root(), before);
        assert_eq!(kept.root(), before, "the copy is the map of 300 entries");
        let asked: Vec<Subject> = (100..160).map(lot).collect();
        let got = kept.prove(&asked).verify(&before).unwrap();
        assert!(got[&key(150)].is_none(), "L150 came after the copy");
        assert_eq!(got[&key(100)].map(|h| h.count), Some(2), "touched at 100 and 220");
        let mut fresh = LotMap::new();
        for i in 0..600 {
            fresh.touch(&key(i % if i < 300 { 120 } else { 170 }), i + 1, &entry(i));
        }
        assert_eq!(fresh.root(), live.root(), "built at once or with a copy taken midway: one map");
    }

    #[test]
    fn a_lineage_follows_what_made_each_lot() {
        let ev = |body: serde_json::Value| -> Event {
            let mut v =
                serde_json::json!({"id": "e", "actor": "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4", "occurred_at": "2024-09-02T00:00:00Z"});
            v.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let events = [
            ev(serde_json::json!({"kind": "mined", "lot": "A", "carats": "1.00", "country": "BW"})),
            ev(serde_json::json!({"kind": "mined", "lot": "B", "carats": "1.00", "country": "RU"})),
            ev(serde_json::json!({"kind": "merged", "lots": ["A", "B"], "into": {"lot": "C", "carats": "2.00"}})),
            ev(serde_json::json!({"kind": "split", "lot": "C", "into": [{"lot": "D", "carats": "1.50"}, {"lot": "E", "carats": "0.50"}]})),
            ev(serde_json::json!({"kind": "processed", "lot": "D", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "S", "carats": "0.70"}]})),
        ];
        assert_eq!(lineage("S", &events), ["A", "B", "C", "D", "S"]);
        assert_eq!(lineage("E", &events), ["A", "B", "C", "E"]);
        assert_eq!(lineage("Z", &events), ["Z"]);
    }

    #[test]
    fn an_empty_map_proves_every_key_absent() {
        let mut map = LotMap::new();
        let proof = map.prove(&[lot(1), lot(2)]);
        assert_eq!(proof.verify(&EMPTY).unwrap().values().filter(|h| h.is_some()).count(), 0);
    }
}
