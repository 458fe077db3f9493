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

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::entry::Hash;
use crate::ids::Timestamp;

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
}

impl Checkpoint {
    /// Signs the statement that the first `tree_size` entries have `root`
    /// and the lot map after them `map_root`.
    pub fn sign(key: &nkeys::KeyPair, tree_size: u64, root: &Hash, map_root: Option<&Hash>, time: Timestamp) -> Result<Checkpoint, CheckpointError> {
        let map_root = map_root.map(Hash::to_hex);
        let mut c = Checkpoint { key: key.public_key(), tree_size, root: root.to_hex(), map_root, time, signature: String::new() };
        let sig = key.sign(c.signed_text().as_bytes()).map_err(|e| CheckpointError::Sign(e.to_string()))?;
        c.signature = base64::engine::general_purpose::STANDARD.encode(sig);
        Ok(c)
    }

    /// The exact text the signature covers.
    pub fn signed_text(&self) -> String {
        match &self.map_root {
            None => format!("{CHECKPOINT_HEADER}\n{}\n{}\n{}\n{}\n", self.key, self.tree_size, self.root, self.time.to_rfc3339()),
            Some(m) => format!("{CHECKPOINT_HEADER_V2}\n{}\n{}\n{}\n{m}\n{}\n", self.key, self.tree_size, self.root, self.time.to_rfc3339()),
        }
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
        let c = Checkpoint::sign(&ledger, 42, &root, None, "2026-11-27T00:00:00Z".parse().unwrap()).unwrap();
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
        let mut forged = Checkpoint::sign(&other, 42, &root, None, c.time).unwrap();
        forged.key = ledger.public_key();
        assert!(matches!(forged.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))));
    }

    #[test]
    fn a_checkpoint_signs_its_map_root_and_one_signed_before_the_map_still_verifies() {
        let ledger = nkeys::KeyPair::new_server();
        let (root, map) = (Hash([7; 32]), Hash([9; 32]));
        let c = Checkpoint::sign(&ledger, 42, &root, Some(&map), "2026-12-02T00:00:00Z".parse().unwrap()).unwrap();
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
}
