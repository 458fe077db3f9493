//! nkey seed files: the standard seed text (`SU...` for an actor, `SN...`
//! for the ledger's own signing key), one key per file, readable by its
//! owner only. Shared by the ledger (its key) and the command line (actor
//! and service keys).

use std::path::Path;

use anyhow::Context as _;
use nkeys::{KeyPair, KeyPairType};

/// Reads a seed file.
pub fn load(path: &Path) -> anyhow::Result<KeyPair> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    KeyPair::from_seed(text.trim()).with_context(|| format!("{} does not hold an nkey seed", path.display()))
}

/// Writes a new key of `kind` to `path`, which must not exist yet. The
/// file appears whole or not at all (written, fsynced, then renamed), and
/// survives a crash once this returns.
pub fn create(path: &Path, kind: KeyPairType) -> anyhow::Result<KeyPair> {
    let kp = KeyPair::new(kind);
    let seed = kp.seed().map_err(|e| anyhow::anyhow!("cannot encode the seed: {e}"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    if path.exists() {
        anyhow::bail!("cannot create key file {}: it exists already", path.display());
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).with_context(|| format!("cannot create key file {}", tmp.display()))?;
        f.write_all(format!("{seed}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot create key file {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(kp)
}

/// Loads the key at `path`, creating one of `kind` if it does not exist.
pub fn load_or_create(path: &Path, kind: KeyPairType) -> anyhow::Result<KeyPair> {
    if path.exists() {
        load(path)
    } else {
        create(path, kind)
    }
}
