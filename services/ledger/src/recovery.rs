//! The ledger's side of `custody ledger recover`: an empty store where a
//! damaged or lost one was, the old one moved aside (never deleted) and the
//! ledger's signing key carried over. What goes into it comes verified
//! from the committed stream (`custody_audit::recover`).

use std::path::{Path, PathBuf};

use custody_proto::ActorKey;

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("no free name to move the old store aside to")]
    NoName,
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Moves the store at `dir` aside (if any) and opens an empty one for the
/// genesis `authority`, with the old ledger key; returns it and where the
/// old store went.
pub fn fresh_store(dir: &Path, authority: &ActorKey) -> Result<(Store, Option<PathBuf>), RecoveryError> {
    // A folder that holds only the ledger key (put there for a restore)
    // has no store to keep.
    let only_key =
        std::fs::read_dir(dir).is_ok_and(|d| d.flatten().all(|e| e.file_name() == crate::notary::KEY_FILE || e.file_name() == crate::lease::INSTANCE_FILE));
    let moved = if dir.exists() && !only_key {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
        // Never onto an earlier aside (two recoveries in one second).
        let aside = (1..)
            .map(|n: u32| dir.with_extension(if n == 1 { format!("damaged-{stamp}") } else { format!("damaged-{stamp}-{n}") }))
            .find(|p| !p.exists())
            .ok_or(RecoveryError::NoName)?;
        std::fs::rename(dir, &aside).map_err(|source| RecoveryError::Io { what: format!("move the old store aside to {}", aside.display()), source })?;
        Some(aside)
    } else {
        None
    };
    let store = Store::open(dir)?;
    store.set_authority(authority.as_str())?;
    // The ledger's signing key is its identity to auditors: keep it.
    // So are its key and its instance id (it is still the same replica).
    for file in [crate::notary::KEY_FILE, crate::lease::INSTANCE_FILE] {
        if let Some(old) = moved.as_ref().map(|m| m.join(file)).filter(|k| k.exists()) {
            std::fs::copy(&old, dir.join(file)).map_err(|source| RecoveryError::Io { what: format!("carry {file} over"), source })?;
        }
    }
    Ok((store, moved))
}
