//! nkey seed files: the standard `SU...` text, one per actor.

use std::path::Path;

use anyhow::Context as _;

/// Reads a seed file.
pub fn load(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    nkeys::KeyPair::from_seed(text.trim()).with_context(|| format!("{} does not hold an nkey seed", path.display()))
}

/// Writes a new user key's seed, readable by its owner only.
pub fn create(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().context("cannot encode the seed")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write as _;
    opts.open(path)
        .with_context(|| format!("cannot create key file {} (it must not exist yet)", path.display()))?
        .write_all(format!("{seed}\n").as_bytes())?;
    Ok(kp)
}

/// Loads the key at `path`, creating it first if it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<nkeys::KeyPair> {
    if path.exists() {
        load(path)
    } else {
        create(path)
    }
}
