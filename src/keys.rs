//! nkey seed files: the standard `SU...` text, one per actor (the file
//! format itself lives in `custody_ledger::keyfile`).

use std::path::Path;

use nkeys::KeyPairType;

pub use custody_ledger::keyfile::load;

/// Writes a new user key's seed, readable by its owner only; the file must
/// not exist yet.
pub fn create(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    custody_ledger::keyfile::create(path, KeyPairType::User)
}

/// Loads the user key at `path`, creating it first if it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    custody_ledger::keyfile::load_or_create(path, KeyPairType::User)
}
