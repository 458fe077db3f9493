//! Following the committed stream and keeping nats-server's authorization
//! in step with the registry: render, write the file whole
//! ([`custody_wire::files::write_whole`]), then SIGHUP the server so it
//! reloads. A reload also disconnects users it no longer knows (a revoked
//! actor).

use std::path::PathBuf;

use custody_wire::files::{write_whole, FileError, Mode};
use custody_wire::follow::{FollowError, Reader};
use custody_wire::health::Health;
use futures::{FutureExt as _, StreamExt};

/// Why authz stopped; authorization stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Connect(#[from] custody_wire::connect::ConnectError),
    #[error("cannot signal nats-server ({pid_file}) to reload: {why}")]
    Reload { pid_file: String, why: String },
    #[error("the committed stream breaks the chain at entry {seq} ({why}); authorization stays as it was")]
    Broken { seq: u64, why: String },
    #[error("the committed stream follower ended")]
    Ended,
}

use crate::registry::Registry;
use crate::render::{render, ActorsLimits, Services};

#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// This service's NATS identity (an nkey seed).
    pub nkey: Option<String>,
    /// The genesis authority's public key.
    pub genesis: String,
    pub services: Services,
    /// The file nats-server was started with (`-c`).
    pub config_file: PathBuf,
    /// The pid files of the nats-servers that load the file (one per
    /// server on this machine; nats-server's own `pid_file`), read at each
    /// reload, so a server restarted since is the one signalled.
    pub nats_pid_files: Vec<PathBuf>,
    /// What all actors together may hold of nats-server.
    pub actors: ActorsLimits,
}

/// Writes the authorization file for `registry` (before the server starts,
/// or on a change).
pub fn write(config: &Config, registry: &Registry) -> Result<(), AuthzError> {
    Ok(write_whole(&config.config_file, render(registry, &config.services, &config.actors).as_bytes(), Mode::Private)?)
}

/// Asks the nats-server whose process id `pid_file` holds to reload its
/// configuration.
fn reload(pid_file: &std::path::Path) -> Result<(), AuthzError> {
    let failed = |why: String| AuthzError::Reload { pid_file: pid_file.display().to_string(), why };
    let text = std::fs::read_to_string(pid_file).map_err(|e| failed(format!("cannot read it: {e}")))?;
    let target: libc::pid_t = text.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| failed(format!("{:?} is not a process id", text.trim())))?;
    // SAFETY: kill(2) with a plain signal number touches no memory of ours.
    if unsafe { libc::kill(target, libc::SIGHUP) } != 0 {
        return Err(failed(format!("process {target}: {} (is the server restarting?)", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// How soon a file that could not be written, or a server that could not
/// be told, is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the file and tells every server to reload it.
fn publish(config: &Config, registry: &Registry) -> Result<(), AuthzError> {
    write(config, registry)?;
    for pid_file in &config.nats_pid_files {
        reload(pid_file)?;
    }
    Ok(())
}

/// Follows the committed stream until `shutdown`, rewriting and reloading
/// on every change of the registry. `health` is ready once it has read the
/// whole stream, so that the file names every registered actor. A file it
/// cannot write (a full disk, no descriptor left) or a server it cannot
/// signal is reported (not ready, with why, and in the log) and tried again
/// every second while it goes on following: authorization stays as it was
/// meanwhile, and nothing else stops.
pub async fn run(config: Config, health: Health, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AuthzError> {
    let client = custody_wire::connect::connect(&config.nats_url, "custody-authz", config.nkey.as_deref()).await?;
    health.update(|s| s.role = "following".into());
    let mut background = tokio::task::JoinSet::new();
    background.spawn(custody_wire::health::answer_status(client.clone(), health.clone()).map(drop));
    background.spawn(custody_wire::health::watch_lag(Reader::ledger(&client), health.clone(), |_| {}));
    let mut registry = Registry::new(&config.genesis);
    let mut batches = std::pin::pin!(Reader::ledger(&client).pulling().entries(None, None));
    tokio::pin!(shutdown);
    // The registry changed and the servers do not know it yet.
    let mut unpublished = false;
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return Ok(()),
            b = batches.next() => b,
            () = tokio::time::sleep(RETRY), if unpublished => {
                unpublished = !try_publish(&config, &registry, &health);
                continue;
            }
        };
        let entries = match batch {
            Some(Ok(b)) => b,
            Some(Err(FollowError::Read(e))) => {
                tracing::warn!(error = %e, "cannot read the committed stream yet");
                continue;
            }
            Some(Err(FollowError::Broken { seq, why })) => return Err(AuthzError::Broken { seq, why }),
            None => return Err(AuthzError::Ended),
        };
        let mut changed = false;
        let last = entries.last().map(|e| e.seq);
        for entry in &entries {
            changed |= registry.apply(entry);
        }
        if changed || unpublished {
            unpublished = !try_publish(&config, &registry, &health);
        }
        if let Some(last) = last {
            health.update(|s| s.head = Some(last));
        }
    }
}

/// [`publish`], saying how it went: whether the servers have the registry.
/// Until they do, authz is not ready, and says why.
fn try_publish(config: &Config, registry: &Registry, health: &Health) -> bool {
    match publish(config, registry) {
        Ok(()) => {
            tracing::info!(actors = registry.actors.len(), "authorization reloaded");
            health.set_fault("publish", None);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "the registry changed but authorization could not be updated; trying again");
            health.set_fault("publish", Some(format!("authorization is behind the registry: {e}")));
            false
        }
    }
}
