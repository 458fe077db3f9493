//! nkey seed files: the standard `SU...` text, one per actor (the file
//! format itself lives in `custody_wire::files`).

use std::path::Path;

use nkeys::KeyPairType;

/// Reads a seed file.
pub fn load(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    Ok(custody_wire::files::load_key(path)?)
}

/// Writes a new user key's seed, readable by its owner only; the file must
/// not exist yet.
pub fn create(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    Ok(custody_wire::files::create_key(path, KeyPairType::User)?)
}

/// Loads the user key at `path`, creating it first if it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    Ok(custody_wire::files::load_or_create_key(path, KeyPairType::User)?)
}
