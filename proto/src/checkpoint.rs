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

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::entry::Hash;
use crate::ids::Timestamp;

/// First line of the signed text.
pub const CHECKPOINT_HEADER: &str = "custody checkpoint v1";

/// A signed checkpoint, as published on NATS and served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The ledger's public nkey.
    pub key: String,
    pub tree_size: u64,
    /// Merkle root, lowercase hex.
    pub root: String,
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
    /// Signs the statement that the first `tree_size` entries have `root`.
    pub fn sign(key: &nkeys::KeyPair, tree_size: u64, root: &Hash, time: Timestamp) -> Result<Checkpoint, CheckpointError> {
        let mut c = Checkpoint { key: key.public_key(), tree_size, root: root.to_hex(), time, signature: String::new() };
        let sig = key.sign(c.signed_text().as_bytes()).map_err(|e| CheckpointError::Sign(e.to_string()))?;
        c.signature = base64::engine::general_purpose::STANDARD.encode(sig);
        Ok(c)
    }

    /// The exact text the signature covers.
    pub fn signed_text(&self) -> String {
        format!("{CHECKPOINT_HEADER}\n{}\n{}\n{}\n{}\n", self.key, self.tree_size, self.root, self.time.to_rfc3339())
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
        let c = Checkpoint::sign(&ledger, 42, &root, "2026-11-27T00:00:00Z".parse().unwrap()).unwrap();
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
        let mut forged = Checkpoint::sign(&other, 42, &root, c.time).unwrap();
        forged.key = ledger.public_key();
        assert!(matches!(forged.verify(&ledger.public_key()), Err(CheckpointError::BadSignature(_))));
    }
}
