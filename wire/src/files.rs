//! Files every party keeps: written whole or not at all, and nkey seed
//! files (the standard seed text, `SU...` for an actor or service, `SN...`
//! for the ledger's own signing key; one key per file, readable by its
//! owner only). The one way custody writes such a file: key files, authz's
//! server configuration, the auditor's state.

use std::io::Write;
use std::path::{Path, PathBuf};

use nkeys::{KeyPair, KeyPairType};

/// What went wrong with a file, and which.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} does not hold an nkey seed: {why}", path.display())]
    NotASeed { path: PathBuf, why: String },
    #[error("cannot create key file {}: it exists already", path.display())]
    Exists { path: PathBuf },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io { what, path: path.to_path_buf(), source }
}

/// Who may read a file written by [`write_whole`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Anyone the folder lets in.
    Shared,
    /// The owner only (a key).
    Private,
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the
/// new one, never a mix: written to a temporary file, fsynced, renamed
/// over `path`, and the folder fsynced so the rename itself survives.
pub fn write_whole(path: &Path, bytes: &[u8], mode: Mode) -> Result<(), FileError> {
    write_whole_with(path, mode, |w| w.write_all(bytes))
}

/// [`write_whole`] for a file too large to hold in memory first: `write`
/// streams it into the temporary file (unbuffered: a writer of small
/// pieces wraps it in a `BufWriter` of its own). Nothing is renamed if
/// `write` fails.
pub fn write_whole_with(path: &Path, mode: Mode, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), FileError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create the folder of", path))?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if mode == Mode::Private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        }
        let mut f = opts.open(&tmp).map_err(io("create", &tmp))?;
        write(&mut f).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("replace", path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync the folder of", path))?;
    Ok(())
}

/// A writer that hashes (blake3) what it passes on: how a file that ends
/// in its own checksum is written in one pass.
pub struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
}

impl<'a> Hashing<'a> {
    pub fn new(inner: &'a mut dyn Write) -> Hashing<'a> {
        Hashing { inner, hasher: blake3::Hasher::new() }
    }

    /// The writer underneath, and the hash of everything written.
    pub fn finish(self) -> (&'a mut dyn Write, blake3::Hash) {
        (self.inner, self.hasher.finalize())
    }
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a seed file.
pub fn load_key(path: &Path) -> Result<KeyPair, FileError> {
    let text = std::fs::read_to_string(path).map_err(io("read key file", path))?;
    KeyPair::from_seed(text.trim()).map_err(|e| FileError::NotASeed { path: path.to_path_buf(), why: e.to_string() })
}

/// Writes a new key of `kind` to `path`, which must not exist yet; it
/// survives a crash once this returns.
pub fn create_key(path: &Path, kind: KeyPairType) -> Result<KeyPair, FileError> {
    if path.exists() {
        return Err(FileError::Exists { path: path.to_path_buf() });
    }
    let kp = KeyPair::new(kind);
    let seed = kp.seed().map_err(|e| FileError::NotASeed { path: path.to_path_buf(), why: e.to_string() })?;
    write_whole(path, format!("{seed}\n").as_bytes(), Mode::Private)?;
    Ok(kp)
}

/// Loads the key at `path`, creating one of `kind` if it does not exist.
pub fn load_or_create_key(path: &Path, kind: KeyPairType) -> Result<KeyPair, FileError> {
    if path.exists() {
        load_key(path)
    } else {
        create_key(path, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_whole(&path, b"one", Mode::Shared).unwrap();
        write_whole(&path, b"two", Mode::Shared).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());

        let key = dir.path().join("k.nk");
        let kp = load_or_create_key(&key, KeyPairType::User).unwrap();
        assert_eq!(load_or_create_key(&key, KeyPairType::User).unwrap().public_key(), kp.public_key());
        assert!(matches!(create_key(&key, KeyPairType::User), Err(FileError::Exists { .. })));
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions()) & 0o777, 0o600);
        std::fs::write(&key, "not a seed").unwrap();
        assert!(matches!(load_key(&key), Err(FileError::NotASeed { .. })));
    }
}
