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

/// What a key file holds: its public key, and whether it holds the seed
/// (the private key) or only the public key.
pub fn read_public(path: &Path) -> anyhow::Result<(String, bool)> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.starts_with('S') {
        let kp = nkeys::KeyPair::from_seed(text).map_err(|e| anyhow::anyhow!("{} starts like an nkey seed but is not one: {e}", path.display()))?;
        Ok((kp.public_key(), true))
    } else if nkeys::KeyPair::from_public_key(text).is_ok() {
        Ok((text.to_owned(), false))
    } else {
        anyhow::bail!("{} holds neither an nkey seed (S...) nor a public key (U..., N...)", path.display())
    }
}

/// A public key given as itself (`U...`) or as a file holding it or its
/// seed, so a settings file can name `/etc/custody/keys/authority.pub`
/// instead of carrying the key's text.
pub fn public_key_of(arg: &str) -> anyhow::Result<String> {
    if nkeys::KeyPair::from_public_key(arg).is_ok() {
        return Ok(arg.to_owned());
    }
    let path = Path::new(arg);
    anyhow::ensure!(path.exists(), "{arg:?} is neither a public key (U..., N...) nor a key file that exists");
    Ok(read_public(path)?.0)
}
