//! Signed checkpoints: the ledger's statement, under its own key, that its
//! first `tree_size` entries have the Merkle root `root` (see [`crate::merkle`]).
//! Whoever holds two checkpoints can ask for a consistency proof between
//! them; whoever holds one can check any entry's inclusion proof against it.
//! A ledger that signs two checkpoints that no consistency proof joins has
//! shown two histories, and the pair is the evidence.
//!
//! What is signed is a short text, so that it reads the same in any
//! language:
//!
//! ```text
//! custody checkpoint v1
//! <ledger public key>
//! <tree size>
//! <root, lowercase hex>
//! <time, RFC 3339 UTC>
//! ```
//!
//! each line ending in `\n`, signed with ed25519 by the ledger's nkey (a
//! server key, `N…`); `signature` is its standard base64.
//!
//! From issue 24 a checkpoint also signs the root of the lot map
//! ([`crate::lotmap`]): the header reads `custody checkpoint v2` and the
//! map root follows the tree root on a line of its own. A checkpoint
//! without it (written before) keeps its v1 text and verifies as it did.
//!
//! Since then a checkpoint is a C2SP signed note (tlog-checkpoint) over the
//! SHA-256 tree ([`TreeHash::Sha256`]), which any C2SP witness can cosign:
//!
//! ```text
//! <origin>
//! <tree size>
//! <root, standard base64>
//! map <lot map root, lowercase hex>
//! time <time, RFC 3339 UTC>
//! ```
//!
//! signed by the ledger's key under the name `origin` (a signed-note
//! signature line, key ID per C2SP). Witnesses' `cosignature/v1` lines
//! travel with it in `cosignatures`; [`Checkpoint::note`] gives the whole
//! note as the ecosystem's tools read it. v1 and v2 checkpoints, over the
//! blake3 tree, still verify.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::entry::Hash;
use crate::ids::Timestamp;
use crate::merkle::TreeHash;
use crate::note::{self, NoteKey};

/// First line of the signed text of a checkpoint without a map root.
pub const CHECKPOINT_HEADER: &str = "custody checkpoint v1";
/// First line of the signed text of a checkpoint that signs a map root.
pub const CHECKPOINT_HEADER_V2: &str = "custody checkpoint v2";

/// A signed checkpoint, as published on NATS and served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The ledger's public nkey.
    pub key: String,
    pub tree_size: u64,
    /// Merkle root, lowercase hex.
    pub root: String,
    /// The lot map's root, lowercase hex (none in checkpoints signed
    /// before the map existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_root: Option<String>,
    pub time: Timestamp,
    /// Standard base64 of the ed25519 signature over [`Checkpoint::signed_text`].
    pub signature: String,
    /// The log's name in the note (C2SP tlog-checkpoint origin): set in
    /// every checkpoint signed as a note, none in v1 and v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Witnesses' cosignatures of the note, as they returned them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cosignatures: Vec<Cosignature>,
}

/// A witness's `cosignature/v1` of a checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosignature {
    /// The witness's key name.
    pub name: String,
    /// When the witness cosigned, seconds since the epoch (also inside `signature`).
    pub time: u64,
    /// Standard base64 of key ID ‖ time (8 bytes, big-endian) ‖ ed25519
    /// signature: the signature line's payload.
    pub signature: String,
}

impl Cosignature {
    /// Signs `checkpoint_text` as witness `key` at `time`.
    pub fn sign(secret: &nkeys::KeyPair, key: &NoteKey, checkpoint_text: &str, time: u64) -> Result<Cosignature, CheckpointError> {
        let sig = secret.sign(note::cosigned_message(time, checkpoint_text).as_bytes()).map_err(|e| CheckpointError::Sign(e.to_string()))?;
        let mut raw = key.id().to_be_bytes().to_vec();
        raw.extend_from_slice(&time.to_be_bytes());
        raw.extend_from_slice(&sig);
        Ok(Cosignature { name: key.name.clone(), time, signature: base64::engine::general_purpose::STANDARD.encode(raw) })
    }

    /// Reads a signature line's parts as a cosignature (any key).
    pub fn from_line(line: &note::Line) -> Option<Cosignature> {
        let time = u64::from_be_bytes(line.blob.get(..8)?.try_into().ok()?);
        (line.blob.len() == 72).then_some(())?;
        let mut raw = line.id.to_be_bytes().to_vec();
        raw.extend_from_slice(&line.blob);
        Some(Cosignature { name: line.name.clone(), time, signature: base64::engine::general_purpose::STANDARD.encode(raw) })
    }

    /// Whether `key` made this cosignature of `checkpoint_text`: `None`
    /// when it names another key, `Some(false)` when it names `key` but
    /// does not verify.
    pub fn verify(&self, key: &NoteKey, checkpoint_text: &str) -> Option<bool> {
        let raw = base64::engine::general_purpose::STANDARD.decode(&self.signature).ok()?;
        if self.name != key.name || raw.get(..4) != Some(&key.id().to_be_bytes()[..]) {
            return None;
        }
        let ok = raw.len() == 4 + 8 + 64
            && raw[4..12] == self.time.to_be_bytes()
            && key.verifies(note::cosigned_message(self.time, checkpoint_text).as_bytes(), &raw[12..]);
        Some(ok)
    }

    /// The note signature line.
    pub fn line(&self) -> String {
        format!("{}{} {}\n", note::SIGNATURE_PREFIX, self.name, self.signature)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is signed by {found}, not the ledger key {expected}")]
    WrongKey { expected: String, found: String },
    #[error("checkpoint root {0:?} is not a 64-digit lowercase hex hash")]
    BadRoot(String),
    #[error("checkpoint signature is not valid for key {0}")]
    BadSignature(String),
    #[error("cannot sign a checkpoint: {0}")]
    Sign(String),
    #[error("not a checkpoint note: {0}")]
    NotANote(String),
    #[error("witness {0} cosigned this checkpoint with a signature that does not verify")]
    BadCosignature(String),
}

impl Checkpoint {
    /// Signs, as the C2SP note of log `origin`, the statement that the
    /// first `tree_size` entries have the SHA-256 tree root `root` and the
    /// lot map after them `map_root`.
    pub fn sign(
        key: &nkeys::KeyPair,
        origin: &str,
        tree_size: u64,
        root: &Hash,
        map_root: Option<&Hash>,
        time: Timestamp,
    ) -> Result<Checkpoint, CheckpointError> {
        if !signed_note::is_key_name_valid(origin) {
            return Err(CheckpointError::Sign(format!("{origin:?} is not a valid log origin")));
        }
        let mut c = Checkpoint {
            key: key.public_key(),
            tree_size,
            root: root.to_hex(),
            map_root: map_root.map(Hash::to_hex),
            time,
            signature: String::new(),
            origin: Some(origin.to_owned()),
            cosignatures: Vec::new(),
        };
        c.sign_text(key)?;
        Ok(c)
    }

    /// Signs the text of a checkpoint from before checkpoints were notes
    /// (`custody checkpoint v1`, or `v2` with a map root), over the blake3
    /// tree: what ledgers stored until issue 24, kept to test that those
    /// still verify.
    pub fn sign_v2(key: &nkeys::KeyPair, tree_size: u64, root: &Hash, map_root: Option<&Hash>, time: Timestamp) -> Result<Checkpoint, CheckpointError> {
        let map_root = map_root.map(Hash::to_hex);
        let mut c = Checkpoint {
            key: key.public_key(),
            tree_size,
            root: root.to_hex(),
            map_root,
            time,
            signature: String::new(),
            origin: None,
            cosignatures: Vec::new(),
        };
        c.sign_text(key)?;
        Ok(c)
    }

    fn sign_text(&mut self, key: &nkeys::KeyPair) -> Result<(), CheckpointError> {
        let sig = key.sign(self.signed_text().as_bytes()).map_err(|e| CheckpointError::Sign(e.to_string()))?;
        self.signature = base64::engine::general_purpose::STANDARD.encode(sig);
        Ok(())
    }

    /// The hash of the tree this checkpoint's root is over.
    pub fn tree_hash(&self) -> TreeHash {
        if self.origin.is_some() {
            TreeHash::Sha256
        } else {
            TreeHash::Blake3
        }
    }

    /// The exact text the signature covers: for a note, its text.
    pub fn signed_text(&self) -> String {
        match (&self.origin, &self.map_root) {
            (Some(origin), map) => {
                let root = self.root_hash().map(|r| base64::engine::general_purpose::STANDARD.encode(r.0)).unwrap_or_else(|_| self.root.clone());
                let map = map.as_deref().map(|m| format!("map {m}\n")).unwrap_or_default();
                format!("{origin}\n{}\n{root}\n{map}time {}\n", self.tree_size, self.time.to_rfc3339())
            }
            (None, None) => format!("{CHECKPOINT_HEADER}\n{}\n{}\n{}\n{}\n", self.key, self.tree_size, self.root, self.time.to_rfc3339()),
            (None, Some(m)) => format!("{CHECKPOINT_HEADER_V2}\n{}\n{}\n{}\n{m}\n{}\n", self.key, self.tree_size, self.root, self.time.to_rfc3339()),
        }
    }

    /// The ledger's key as a note verifier key (`None` before notes).
    pub fn log_key(&self) -> Option<NoteKey> {
        NoteKey::from_nkey(self.origin.as_deref()?, note::ED25519, &self.key).ok()
    }

    /// The whole signed note, as C2SP tools read it: text, a blank line,
    /// the ledger's signature line and each witness's. `None` for a
    /// checkpoint signed before notes.
    pub fn note(&self) -> Option<String> {
        let key = self.log_key()?;
        let sig = base64::engine::general_purpose::STANDARD.decode(&self.signature).ok()?;
        let mut out = format!("{}\n{}", self.signed_text(), key.line(&sig));
        for c in &self.cosignatures {
            out.push_str(&c.line());
        }
        Some(out)
    }

    /// Reads a checkpoint note signed by the ledger key `ledger` (an nkey),
    /// keeping every line that reads as a cosignature (checked later,
    /// against the verifier's own witness keys).
    pub fn from_note(text: &str, ledger: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |why: &str| CheckpointError::NotANote(why.to_owned());
        let (body, lines) = note::split(text).ok_or_else(|| bad("no text, blank line and signature lines"))?;
        let mut rows = body.lines();
        let origin = rows.next().filter(|o| signed_note::is_key_name_valid(o)).ok_or_else(|| bad("no origin line"))?;
        let tree_size: u64 = rows.next().and_then(|n| n.parse().ok()).ok_or_else(|| bad("no tree size line"))?;
        let root = rows
            .next()
            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| bad("no base64 root line"))?;
        let (mut map_root, mut time) = (None, None);
        for row in rows {
            match row.split_once(' ') {
                Some(("map", m)) if map_root.is_none() => map_root = Some(m.to_owned()),
                Some(("time", t)) if time.is_none() => time = t.parse().ok(),
                _ => return Err(bad("an extension line custody does not write")),
            }
        }
        let time = time.ok_or_else(|| bad("no time line"))?;
        let key = NoteKey::from_nkey(origin, note::ED25519, ledger).map_err(|e| bad(&e.to_string()))?;
        let signed = lines
            .iter()
            .find(|l| l.name == key.name && l.id == key.id())
            .ok_or_else(|| CheckpointError::WrongKey { expected: ledger.to_owned(), found: "another key".into() })?;
        let c = Checkpoint {
            key: ledger.to_owned(),
            tree_size,
            root: Hash(root).to_hex(),
            map_root,
            time,
            signature: base64::engine::general_purpose::STANDARD.encode(&signed.blob),
            origin: Some(origin.to_owned()),
            cosignatures: lines.iter().filter(|l| !(l.name == key.name && l.id == key.id())).filter_map(Cosignature::from_line).collect(),
        };
        if c.signed_text() != body {
            return Err(bad("the text is not in custody's form"));
        }
        c.verify(ledger)?;
        Ok(c)
    }

    /// The witnesses among `witnesses` that validly cosigned this
    /// checkpoint, each once, with the time it cosigned. A cosignature
    /// that names one of them and does not verify refuses the checkpoint
    /// (C2SP: a known key's bad signature rejects the note).
    pub fn cosigned_by(&self, witnesses: &[NoteKey]) -> Result<Vec<(String, u64)>, CheckpointError> {
        let text = self.signed_text();
        let mut out: Vec<(String, u64)> = Vec::new();
        for w in witnesses {
            for c in &self.cosignatures {
                match c.verify(w, &text) {
                    Some(true) if !out.iter().any(|(n, _)| *n == w.name) => out.push((w.name.clone(), c.time)),
                    Some(false) => return Err(CheckpointError::BadCosignature(w.name.clone())),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The lot map's root, when this checkpoint signs one.
    pub fn map_root_hash(&self) -> Result<Option<Hash>, CheckpointError> {
        self.map_root.as_deref().map(|m| Hash::from_hex(m).ok_or_else(|| CheckpointError::BadRoot(m.to_owned()))).transpose()
    }

    /// The root as a hash.
    pub fn root_hash(&self) -> Result<Hash, CheckpointError> {
        Hash::from_hex(&self.root).ok_or_else(|| CheckpointError::BadRoot(self.root.clone()))
    }

    /// Checks that the ledger key `expected` signed this checkpoint; the
    /// key comes from the verifier, never from the checkpoint itself.
    pub fn verify(&self, expected: &str) -> Result<Hash, CheckpointError> {
        if self.key != expected {
            return Err(CheckpointError::WrongKey { expected: expected.to_owned(), found: self.key.clone() });
        }
        let root = self.root_hash()?;
        self.map_root_hash()?;
        let bad = || CheckpointError::BadSignature(self.key.clone());
        let sig = base64::engine::general_purpose::STANDARD.decode(&self.signature).map_err(|_| bad())?;
        let public = nkeys::KeyPair::from_public_key(expected).map_err(|_| bad())?;
        public.verify(self.signed_text().as_bytes(), &sig).map_err(|_| bad())?;
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_under_its_key_only_and_not_once_changed() {
        let ledger = nkeys::KeyPair::new_server();
        let root = Hash([7; 32]);
        let c = Checkpoint::sign_v2(&ledger, 42, &root, None, "2026-11-27T00:00:00Z".parse().unwrap()).unwrap();
        assert_eq!(c.verify(&ledger.public_key()).unwrap(), root);
        let json = serde_json::to_string(&c).unwrap();
        let back: Checkpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back.verify(&ledger.public_key()).unwrap(), root);

        let other = nkeys::KeyPair::new_server();
        assert!(matches!(c.verify(&other.public_key()), Err(CheckpointError::WrongKey { .. })));
        let mut resized = c.clone();
        resized.tree_size = 41;
        assert!(matches!(resized.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))));
        let mut rerooted = c.clone();
        rerooted.root = Hash([8; 32]).to_hex();
        assert!(matches!(rerooted.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))));
        // Signed by another key that claims to be the ledger's.
        let mut forged = Checkpoint::sign_v2(&other, 42, &root, None, c.time).unwrap();
        forged.key = ledger.public_key();
        assert!(matches!(forged.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))));
    }

    #[test]
    fn a_checkpoint_signs_its_map_root_and_one_signed_before_the_map_still_verifies() {
        let ledger = nkeys::KeyPair::new_server();
        let (root, map) = (Hash([7; 32]), Hash([9; 32]));
        let c = Checkpoint::sign_v2(&ledger, 42, &root, Some(&map), "2026-12-02T00:00:00Z".parse().unwrap()).unwrap();
        assert!(c.signed_text().starts_with("custody checkpoint v2\n"));
        assert_eq!(c.verify(&ledger.public_key()).unwrap(), root);
        assert_eq!(c.map_root_hash().unwrap(), Some(map));
        let mut remapped = c.clone();
        remapped.map_root = Some(Hash([8; 32]).to_hex());
        assert!(matches!(remapped.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))));
        let mut unmapped = c.clone();
        unmapped.map_root = None;
        assert!(matches!(unmapped.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))), "the map root cannot be dropped");
        // Signed by an earlier version: the v1 text, as stored on streams and in backups.
        let old = r#"{"key":"KEY","tree_size":3,"root":"0707070707070707070707070707070707070707070707070707070707070707","time":"2026-11-27T00:00:00Z","signature":""}"#;
        let mut old: Checkpoint = serde_json::from_str(&old.replace("KEY", &ledger.public_key())).unwrap();
        assert!(old.signed_text().starts_with("custody checkpoint v1\n"));
        old.signature = base64::engine::general_purpose::STANDARD.encode(ledger.sign(old.signed_text().as_bytes()).unwrap());
        assert_eq!(old.verify(&ledger.public_key()).unwrap(), root);
        assert_eq!(old.map_root_hash().unwrap(), None);
    }

    #[test]
    fn a_note_checkpoint_reads_back_from_its_note_and_counts_only_its_witnesses() {
        let ledger = nkeys::KeyPair::new_server();
        let (root, map) = (Hash([7; 32]), Hash([9; 32]));
        let mut c = Checkpoint::sign(&ledger, "custody.example/ledger", 42, &root, Some(&map), "2026-12-02T00:00:00Z".parse().unwrap()).unwrap();
        assert_eq!(c.tree_hash(), TreeHash::Sha256);
        assert_eq!(c.signed_text(), "custody.example/ledger\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\nmap 0909090909090909090909090909090909090909090909090909090909090909\ntime 2026-12-02T00:00:00Z\n");
        assert_eq!(c.verify(&ledger.public_key()).unwrap(), root);
        let (w1, w2) = (nkeys::KeyPair::new_server(), nkeys::KeyPair::new_server());
        let k1 = NoteKey::from_nkey("w1.example", note::COSIGNATURE_V1, &w1.public_key()).unwrap();
        let k2 = NoteKey::from_nkey("w2.example", note::COSIGNATURE_V1, &w2.public_key()).unwrap();
        c.cosignatures.push(Cosignature::sign(&w1, &k1, &c.signed_text(), 1_800_000_000).unwrap());
        let text = c.note().unwrap();
        assert!(text.contains("\n\n\u{2014} custody.example/ledger "), "{text}");
        let back = Checkpoint::from_note(&text, &ledger.public_key()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.cosigned_by(&[k1.clone(), k2.clone()]).unwrap(), vec![("w1.example".to_owned(), 1_800_000_000)]);
        // Another ledger's key, a changed size: refused.
        assert!(Checkpoint::from_note(&text, &nkeys::KeyPair::new_server().public_key()).is_err());
        assert!(Checkpoint::from_note(&text.replacen("\n42\n", "\n43\n", 1), &ledger.public_key()).is_err());
        // A cosignature moved to another checkpoint names its witness and does not verify there.
        let mut other = Checkpoint::sign(&ledger, "custody.example/ledger", 43, &root, Some(&map), c.time).unwrap();
        other.cosignatures = c.cosignatures.clone();
        assert_eq!(other.cosigned_by(std::slice::from_ref(&k1)), Err(CheckpointError::BadCosignature("w1.example".into())));
        assert!(other.cosigned_by(&[k2]).unwrap().is_empty());
    }
}
