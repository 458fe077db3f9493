//! The Merkle tree over ledger entries, after RFC 6962 / RFC 9162
//! (Certificate Transparency): a leaf is `H(0x00 || entry hash)`, a node
//! `H(0x01 || left || right)`, and the empty tree's root `H("")`.
//!
//! `H` is SHA-256 ([`TreeHash::Sha256`]) for every checkpoint signed as a
//! C2SP signed note, so that an unmodified C2SP witness can check its
//! consistency proofs; checkpoints signed before issue 24 (`custody
//! checkpoint v1`/`v2`) name blake3 ([`TreeHash::Blake3`]) and their
//! proofs keep verifying with it. The entry chain itself stays blake3.
//!
//! The leaf's data is the entry's 32-byte chain hash, which already commits
//! to its seq, previous hash, time and exact envelope; so a sender holding
//! only a receipt (seq and hash) can check that its entry is in a tree.
//! Leaf index = seq - 1.
//!
//! [`Tree`] keeps every perfect, aligned subtree's hash (about two hashes per
//! entry), appends in amortised O(1) and answers roots, inclusion proofs and
//! consistency proofs for any earlier size in O(log² n). The verifiers are
//! RFC 9162 §2.1.3.2 and §2.1.4.2, and need nothing but hashes.

use sha2::Digest as _;

use crate::entry::Hash;

/// The hash a tree is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TreeHash {
    /// RFC 6962's SHA-256: every checkpoint signed as a C2SP note.
    #[default]
    Sha256,
    /// blake3: checkpoints signed before issue 24 (`custody checkpoint v1`, `v2`).
    Blake3,
}

impl TreeHash {
    fn digest(self, parts: &[&[u8]]) -> Hash {
        match self {
            TreeHash::Sha256 => {
                let mut h = sha2::Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                Hash(h.finalize().into())
            }
            TreeHash::Blake3 => {
                let mut h = blake3::Hasher::new();
                parts.iter().for_each(|p| {
                    h.update(p);
                });
                Hash(*h.finalize().as_bytes())
            }
        }
    }

    /// `H(0x00 || entry_hash)`.
    pub fn leaf(self, entry_hash: &Hash) -> Hash {
        self.digest(&[&[0x00], &entry_hash.0])
    }

    /// `H(0x01 || left || right)`.
    pub fn node(self, left: &Hash, right: &Hash) -> Hash {
        self.digest(&[&[0x01], &left.0, &right.0])
    }

    /// The root of the tree with no entries: `H("")`.
    pub fn empty(self) -> Hash {
        self.digest(&[])
    }
}

/// Why a proof was not produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("entry {seq} is not in a tree of {size} entries")]
    NotInTree { seq: u64, size: u64 },
    #[error("a tree of {asked} entries was asked for; the ledger has {have}")]
    TooLarge { asked: u64, have: u64 },
    #[error("a consistency proof needs 1 <= from <= to (from {from}, to {to})")]
    BadRange { from: u64, to: u64 },
    #[error("the proof does not lead to the expected root")]
    Mismatch,
    #[error("a proof for several entries names them once each, in ascending order, and at least one")]
    Unordered,
}

/// Largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The append-only tree over entry hashes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    hash: TreeHash,
    /// `levels[k][i]`: the hash of leaves `[i·2^k, (i+1)·2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty SHA-256 tree, the one checkpoints are signed over.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// An empty tree with `hash` (blake3 only to check checkpoints
    /// signed before issue 24).
    pub fn with_hash(hash: TreeHash) -> Tree {
        Tree { hash, levels: Vec::new() }
    }

    /// The hash this tree is built with.
    pub fn hash(&self) -> TreeHash {
        self.hash
    }

    /// Entries in the tree.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the next entry (its chain hash).
    pub fn push(&mut self, entry_hash: &Hash) {
        self.push_node(0, self.hash.leaf(entry_hash));
    }

    /// Appends `part`: the tree (same [`TreeHash`]) of the entries that
    /// follow this tree's, built apart, on another core. With this tree's
    /// length a multiple of 2^k, `part`'s levels below k are taken as they
    /// are (its nodes there cover the same leaves as the whole tree's) and
    /// only its nodes at level k are pushed, which makes the levels above:
    /// the tree pushing every entry gives, for a small part of the work.
    pub fn append(&mut self, part: Tree) {
        debug_assert!(part.hash == self.hash, "a part appended is built with the same hash");
        if self.is_empty() {
            *self = part;
            return;
        }
        let k = self.len().trailing_zeros() as usize;
        let mut levels = part.levels.into_iter();
        for j in 0..k {
            let Some(level) = levels.next() else { return };
            if self.levels.len() == j {
                self.levels.push(Vec::new());
            }
            self.levels[j].extend(level);
        }
        for h in levels.next().unwrap_or_default() {
            self.push_node(k, h);
        }
    }

    /// Pushes `h` at level `k` and the nodes it completes above.
    fn push_node(&mut self, mut k: usize, mut h: Hash) {
        loop {
            if self.levels.len() == k {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[k];
            level.push(h);
            if level.len() % 2 == 1 {
                break;
            }
            h = self.hash.node(&level[level.len() - 2], &level[level.len() - 1]);
            k += 1;
        }
    }

    /// The leaf hash at `index` (seq - 1).
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(usize::try_from(index).ok()?).copied()
    }

    /// Root of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.len() {
            return Err(ProofError::TooLarge { asked: size, have: self.len() });
        }
        Ok(if size == 0 { self.hash.empty() } else { self.mth(0, size) })
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.len()).unwrap_or_else(|_| self.hash.empty())
    }

    /// MTH(D[lo:hi]) for 0 <= lo < hi <= len.
    fn mth(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(lo >> k) as usize];
        }
        let k = split(n);
        self.hash.node(&self.mth(lo, lo + k), &self.mth(lo + k, hi))
    }

    /// The audit path of entry `seq` in the tree of the first `size`
    /// entries (RFC 9162 §2.1.3.1).
    pub fn inclusion(&self, seq: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if size > self.len() {
            return Err(ProofError::TooLarge { asked: size, have: self.len() });
        }
        if seq == 0 || seq > size {
            return Err(ProofError::NotInTree { seq, size });
        }
        let mut path = Vec::new();
        self.path(seq - 1, 0, size, &mut path);
        Ok(path)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.mth(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.mth(lo, lo + k));
        }
    }

    /// The proof that the tree of `from` entries is a prefix of the tree of
    /// `to` entries (RFC 9162 §2.1.4.1).
    pub fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, ProofError> {
        if to > self.len() {
            return Err(ProofError::TooLarge { asked: to, have: self.len() });
        }
        if from == 0 || from > to {
            return Err(ProofError::BadRange { from, to });
        }
        let mut proof = Vec::new();
        self.subproof(from, 0, to, true, &mut proof);
        Ok(proof)
    }

    /// One proof that all of `seqs` (ascending, distinct) are in the tree of
    /// the first `size` entries: the hashes of the largest subtrees that
    /// hold none of them, left to right in RFC 9162's split order. Proves
    /// `k` entries in at most `k·log2(size/k)` hashes, far fewer than `k`
    /// separate audit paths when the entries lie close together.
    pub fn multi_inclusion(&self, seqs: &[u64], size: u64) -> Result<Vec<Hash>, ProofError> {
        if size > self.len() {
            return Err(ProofError::TooLarge { asked: size, have: self.len() });
        }
        check_seqs(seqs, size)?;
        let mut out = Vec::new();
        self.multi(seqs, 0, size, &mut out);
        Ok(out)
    }

    fn multi(&self, seqs: &[u64], lo: u64, hi: u64, out: &mut Vec<Hash>) {
        if seqs.is_empty() {
            out.push(self.mth(lo, hi));
            return;
        }
        if hi - lo == 1 {
            return;
        }
        let k = split(hi - lo);
        let (left, right) = seqs.split_at(seqs.partition_point(|s| s - 1 < lo + k));
        self.multi(left, lo, lo + k, out);
        self.multi(right, lo + k, hi, out);
    }

    fn subproof(&self, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(self.mth(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, complete, out);
            out.push(self.mth(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.mth(lo, lo + k));
        }
    }
}

fn check_seqs(seqs: &[u64], size: u64) -> Result<(), ProofError> {
    if seqs.is_empty() {
        return Err(ProofError::Unordered);
    }
    for (i, s) in seqs.iter().enumerate() {
        if *s == 0 || *s > size {
            return Err(ProofError::NotInTree { seq: *s, size });
        }
        if i > 0 && seqs[i - 1] >= *s {
            return Err(ProofError::Unordered);
        }
    }
    Ok(())
}

/// Checks a [`Tree::multi_inclusion`] proof: that the entries `(seq,
/// chain hash)`, ascending by seq, are all in the tree of `size` entries
/// whose root is `root`. Every proof hash must be used.
pub fn verify_multi_inclusion(hash: TreeHash, size: u64, entries: &[(u64, Hash)], proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    let seqs: Vec<u64> = entries.iter().map(|e| e.0).collect();
    check_seqs(&seqs, size)?;
    if size == 0 {
        return Err(ProofError::Mismatch);
    }
    fn walk(hash: TreeHash, entries: &[(u64, Hash)], lo: u64, hi: u64, proof: &mut std::slice::Iter<'_, Hash>) -> Result<Hash, ProofError> {
        if entries.is_empty() {
            return proof.next().copied().ok_or(ProofError::Mismatch);
        }
        if hi - lo == 1 {
            return Ok(hash.leaf(&entries[0].1));
        }
        let k = split(hi - lo);
        let (left, right) = entries.split_at(entries.partition_point(|e| e.0 - 1 < lo + k));
        let l = walk(hash, left, lo, lo + k, proof)?;
        let r = walk(hash, right, lo + k, hi, proof)?;
        Ok(hash.node(&l, &r))
    }
    let mut it = proof.iter();
    let computed = walk(hash, entries, 0, size, &mut it)?;
    if it.next().is_some() || computed != *root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Checks that entry `seq` (by its chain hash) is in the tree of `size`
/// entries whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(hash: TreeHash, seq: u64, size: u64, entry_hash: &Hash, path: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if seq == 0 || seq > size {
        return Err(ProofError::NotInTree { seq, size });
    }
    let (mut f, mut s) = (seq - 1, size - 1);
    let mut r = hash.leaf(entry_hash);
    for p in path {
        if s == 0 {
            return Err(ProofError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            r = hash.node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = hash.node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Checks that the tree of `from` entries with root `from_root` is a prefix
/// of the tree of `to` entries with root `to_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(hash: TreeHash, from: u64, to: u64, from_root: &Hash, to_root: &Hash, proof: &[Hash]) -> Result<(), ProofError> {
    if from == 0 || from > to {
        return Err(ProofError::BadRange { from, to });
    }
    if from == to {
        return if proof.is_empty() && from_root == to_root { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*from_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else { return Err(ProofError::Mismatch) };
    let (mut f, mut s) = (from - 1, to - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            fr = hash.node(c, &fr);
            sr = hash.node(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = hash.node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if fr == *from_root && sr == *to_root && s == 0 {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: TreeHash = TreeHash::Sha256;

    /// MTH straight from the RFC's recursive definition.
    fn naive(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => H.empty(),
            1 => H.leaf(&leaves[0]),
            n => {
                let k = split(n as u64) as usize;
                H.node(&naive(&leaves[..k]), &naive(&leaves[k..]))
            }
        }
    }

    fn entries(n: u64) -> Vec<Hash> {
        (0..n).map(|i| Hash(*blake3::hash(&i.to_be_bytes()).as_bytes())).collect()
    }

    #[test]
    fn a_tree_appended_in_parts_is_the_tree_pushed_entry_by_entry() {
        let e = entries(300);
        for n in [0usize, 1, 2, 7, 64, 65, 128, 200, 300] {
            let mut whole = Tree::new();
            e[..n].iter().for_each(|h| whole.push(h));
            // Cut at aligned and unaligned places, in two and three parts.
            for cuts in [vec![0], vec![n / 2], vec![64.min(n)], vec![32.min(n), 128.min(n)], vec![3.min(n), 96.min(n)], vec![5.min(n), 6.min(n), 100.min(n)]] {
                let mut bounds = vec![0];
                bounds.extend(cuts.iter().copied());
                bounds.push(n);
                let mut joined = Tree::new();
                for w in bounds.windows(2) {
                    let mut part = Tree::new();
                    e[w[0]..w[1].max(w[0])].iter().for_each(|h| part.push(h));
                    joined.append(part);
                }
                assert_eq!(joined.levels, whole.levels, "{n} entries cut at {cuts:?}");
            }
        }
    }

    #[test]
    fn roots_match_the_rfc_definition_at_every_size() {
        let e = entries(70);
        let mut t = Tree::new();
        assert_eq!(t.root(), H.empty());
        for (i, h) in e.iter().enumerate() {
            t.push(h);
            for size in 0..=(i as u64 + 1) {
                assert_eq!(t.root_at(size).unwrap(), naive(&e[..size as usize]), "size {size} of {}", i + 1);
            }
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_bent_one_does_not() {
        let e = entries(40);
        let mut t = Tree::new();
        for h in &e {
            t.push(h);
        }
        for size in 1..=40u64 {
            let root = t.root_at(size).unwrap();
            for seq in 1..=size {
                let path = t.inclusion(seq, size).unwrap();
                verify_inclusion(H, seq, size, &e[seq as usize - 1], &path, &root).unwrap();
                assert!(verify_inclusion(H, seq, size, &e[(seq as usize) % 40], &path, &root).is_err(), "another entry");
                if let Some(first) = path.first() {
                    let mut bent = path.clone();
                    bent[0] = H.node(first, first);
                    assert_eq!(verify_inclusion(H, seq, size, &e[seq as usize - 1], &bent, &root), Err(ProofError::Mismatch));
                }
            }
            for from in 1..=size {
                let proof = t.consistency(from, size).unwrap();
                let from_root = t.root_at(from).unwrap();
                verify_consistency(H, from, size, &from_root, &root, &proof).unwrap();
                if from < size {
                    let other = t.root_at(from - 1).unwrap_or_else(|_| H.empty());
                    assert!(verify_consistency(H, from, size, &other, &root, &proof).is_err(), "{from}->{size}");
                }
            }
        }
    }

    #[test]
    fn a_multi_proof_proves_every_subset_and_nothing_else() {
        let e = entries(37);
        let mut t = Tree::new();
        for h in &e {
            t.push(h);
        }
        let mut rng = 7u64;
        for size in [1u64, 2, 3, 8, 13, 32, 37] {
            let root = t.root_at(size).unwrap();
            for _ in 0..40 {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let seqs: Vec<u64> = (1..=size).filter(|s| (rng >> (s % 61)) & 1 == 1 || *s == 1 + (rng % size)).collect();
                let with: Vec<(u64, Hash)> = seqs.iter().map(|s| (*s, e[*s as usize - 1])).collect();
                let proof = t.multi_inclusion(&seqs, size).unwrap();
                verify_multi_inclusion(H, size, &with, &proof, &root).unwrap();
                // Never more hashes than separate audit paths would need.
                let separate: usize = seqs.iter().map(|s| t.inclusion(*s, size).unwrap().len()).sum();
                assert!(proof.len() <= separate.max(1), "{} > {separate}", proof.len());
                // An entry changed, dropped or added; a hash changed: refused.
                let mut altered = with.clone();
                altered[0].1 = e[(seqs[0] as usize) % 37];
                assert!(verify_multi_inclusion(H, size, &altered, &proof, &root).is_err());
                if with.len() > 1 {
                    assert!(verify_multi_inclusion(H, size, &with[1..], &proof, &root).is_err(), "dropped");
                }
                if let Some(extra) = (1..=size).find(|s| !seqs.contains(s)) {
                    let mut more = with.clone();
                    more.push((extra, e[extra as usize - 1]));
                    more.sort_by_key(|m| m.0);
                    assert!(verify_multi_inclusion(H, size, &more, &proof, &root).is_err(), "added");
                }
                if let Some(first) = proof.first() {
                    let mut bent = proof.clone();
                    bent[0] = H.node(first, first);
                    assert_eq!(verify_multi_inclusion(H, size, &with, &bent, &root), Err(ProofError::Mismatch));
                }
            }
        }
        assert_eq!(t.multi_inclusion(&[3, 2], 5), Err(ProofError::Unordered));
        assert_eq!(t.multi_inclusion(&[], 5), Err(ProofError::Unordered));
    }

    #[test]
    fn a_blake3_tree_still_proves_what_checkpoints_signed_before_the_switch_cover() {
        let e = entries(9);
        let (mut old, mut new) = (Tree::with_hash(TreeHash::Blake3), Tree::new());
        for h in &e {
            old.push(h);
            new.push(h);
        }
        assert_ne!(old.root(), new.root(), "the two hashes give two roots");
        assert_eq!(old.root_at(0).unwrap(), Hash(*blake3::hash(b"").as_bytes()));
        assert_eq!(new.root_at(0).unwrap().to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "SHA-256 of nothing");
        let path = old.inclusion(4, 9).unwrap();
        verify_inclusion(TreeHash::Blake3, 4, 9, &e[3], &path, &old.root()).unwrap();
        assert!(verify_inclusion(TreeHash::Sha256, 4, 9, &e[3], &path, &old.root()).is_err());
        let proof = old.consistency(5, 9).unwrap();
        verify_consistency(TreeHash::Blake3, 5, 9, &old.root_at(5).unwrap(), &old.root(), &proof).unwrap();
    }
}
