//! A stored context: where a deployment's NATS, page and metrics are and
//! which key files reach them, written by `custody up` as
//! `DIR/context.toml` and found by every client command (`--context DIR`,
//! `CUSTODY_CONTEXT`, else `data/` in the working folder, `up`'s default),
//! as `kubectl`, `minikube` and `nats context` keep theirs. A flag typed
//! (`--nats`, `--nkey`) always wins over the context.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The file's name in a data folder.
pub const FILE: &str = "context.toml";

/// Where `custody up` puts its data by default, and so where a context is
/// looked for when none is named.
pub const DEFAULT_DIR: &str = "data";

/// The URL clients use when neither a flag nor a context names one.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// What `custody up` writes and client commands read.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// NATS URLs, comma-separated.
    pub nats: String,
    /// A read-only NATS login (the gateway's): what queries use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey: Option<PathBuf>,
    /// The operator's login: what `status`, `backup` and `simulate` use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_nkey: Option<PathBuf>,
    /// The genesis authority's key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<PathBuf>,
    /// The ledger's public key (N...): what certificates are checked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_key: Option<String>,
    /// The page and the HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Where edges connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf: Option<String>,
    /// The ports `up` listened on, asked for again at its next start in
    /// the same folder.
    #[serde(default)]
    pub ports: Ports,
}

/// The loopback ports of one `custody up`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<u16>,
}

impl Stored {
    /// Reads `dir/context.toml`, if it is there.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Stored>> {
        let path = dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(toml::from_str(&text).with_context(|| format!("{} is not a custody context", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes it whole as `dir/context.toml` (readable by its owner only:
    /// it names key files).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let text = format!(
            "# Written by `custody up`: how commands reach this deployment. They find it\n\
             # with --context {dir}, CUSTODY_CONTEXT={dir}, or (for the folder `data`) by\n\
             # running from the folder that holds it. A typed --nats or --nkey wins.\n{}",
            toml::to_string(self)?,
            dir = dir.display()
        );
        custody_wire::files::write_whole(&dir.join(FILE), text.as_bytes(), custody_wire::files::Mode::Private)?;
        Ok(())
    }
}

/// Where a client's NATS URL came from, for an error that says how to
/// change it.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Flag,
    Context(PathBuf),
    Default,
}

/// What a client command connects with: the URL, where it came from, and
/// the context when it came from one (its keys go with its URL only).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub nats: String,
    pub source: Source,
    pub context: Option<Stored>,
}

/// The context a command uses: the folder named (`--context` or
/// `CUSTODY_CONTEXT`, which must hold one), else `data/` if it holds one.
pub fn find(named: Option<&Path>) -> anyhow::Result<Option<(PathBuf, Stored)>> {
    if let Some(dir) = named {
        let stored = Stored::read(dir)?.with_context(|| format!("{} holds no {FILE}: `custody up --data {}` writes one", dir.display(), dir.display()))?;
        return Ok(Some((dir.to_path_buf(), stored)));
    }
    Ok(Stored::read(Path::new(DEFAULT_DIR))?.map(|s| (PathBuf::from(DEFAULT_DIR), s)))
}

/// The NATS URL: the flag's, else the context's, else the default.
pub fn resolve(flag: Option<&str>, named: Option<&Path>) -> anyhow::Result<Resolved> {
    if let Some(url) = flag {
        return Ok(Resolved { nats: url.to_owned(), source: Source::Flag, context: None });
    }
    Ok(match find(named)? {
        Some((dir, stored)) => Resolved { nats: stored.nats.clone(), source: Source::Context(dir.join(FILE)), context: Some(stored) },
        None => Resolved { nats: DEFAULT_NATS.to_owned(), source: Source::Default, context: None },
    })
}

/// What to add to "cannot connect": where the URL came from and how to
/// name another.
pub fn hint(source: &Source) -> String {
    let how = "Name another with --nats URL (or CUSTODY_NATS), or a `custody up` data folder with --context DIR (or CUSTODY_CONTEXT).";
    match source {
        Source::Flag => format!("That URL was given by --nats or CUSTODY_NATS. {how}"),
        Source::Context(file) => format!("That URL is the context's, {} (is that `custody up` still running?). {how}", file.display()),
        Source::Default => {
            format!("That URL is the default: no --nats was given and there is no context ({DEFAULT_DIR}/{FILE}, which `custody up` writes). {how}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_wins_then_the_named_context_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let stored = Stored { nats: "nats://127.0.0.1:4999".into(), ports: Ports { nats: Some(4999), ..Ports::default() }, ..Stored::default() };
        stored.write(dir.path()).unwrap();
        assert_eq!(Stored::read(dir.path()).unwrap(), Some(stored.clone()));
        let r = resolve(None, Some(dir.path())).unwrap();
        assert_eq!((r.nats.as_str(), r.source), ("nats://127.0.0.1:4999", Source::Context(dir.path().join(FILE))));
        let r = resolve(Some("nats://elsewhere:4222"), Some(dir.path())).unwrap();
        assert_eq!((r.nats.as_str(), r.source), ("nats://elsewhere:4222", Source::Flag));
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(None, Some(empty.path())).unwrap_err();
        assert!(format!("{e:#}").contains("holds no context.toml"), "{e:#}");
        assert!(hint(&Source::Context(dir.path().join(FILE))).contains("--context DIR"));
    }
}
