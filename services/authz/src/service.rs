//! Following the committed stream and keeping nats-server's authorization
//! in step with the registry: render, write the file whole (temp + rename +
//! fsync), then SIGHUP the server so it reloads. A reload also disconnects
//! users it no longer knows (a revoked actor).

use std::path::PathBuf;

use anyhow::Context as _;
use custody_ledger::follow;
use futures::StreamExt;

use crate::registry::Registry;
use crate::render::{render, Services};

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
    /// nats-server's process id, to signal a reload.
    pub nats_pid: u32,
}

/// Writes the authorization file for `registry` (before the server starts,
/// or on a change).
pub fn write(config: &Config, registry: &Registry) -> anyhow::Result<()> {
    let text = render(registry, &config.services);
    let tmp = config.config_file.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &config.config_file).with_context(|| format!("cannot replace {}", config.config_file.display()))?;
    Ok(())
}

/// Asks nats-server to reload its configuration.
fn reload(pid: u32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("not a process id")?;
    // SAFETY: kill(2) with a plain signal number touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot signal nats-server to reload");
    }
    Ok(())
}

/// Follows the committed stream until `shutdown`, rewriting and reloading
/// on every change of the registry.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let client = custody_ledger::connect::connect(&config.nats_url, "custody-authz", config.nkey.as_deref()).await?;
    let reader = follow::Reader::ledger(&client);
    let mut registry = Registry::new(&config.genesis);
    let mut prev: Option<(u64, custody_proto::Hash)> = None;
    let mut batches = std::pin::pin!(reader.follow(1));
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return Ok(()),
            b = batches.next() => b,
        };
        let batch = match batch {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the committed stream yet");
                continue;
            }
            None => return Err(anyhow::anyhow!("the committed stream follower ended")),
        };
        let mut changed = false;
        for msg in batch {
            let entry = follow::entry_of(&msg).map_err(|why| anyhow::anyhow!("committed stream message unreadable: {why}"))?;
            entry.check_after(prev).context("the committed stream breaks the chain; authorization stays as it was")?;
            changed |= registry.apply(&entry);
            prev = Some((entry.seq, entry.hash));
        }
        if changed {
            write(&config, &registry)?;
            reload(config.nats_pid)?;
            tracing::info!(actors = registry.actors.len(), seq = prev.map(|p| p.0), "authorization reloaded");
        }
    }
}
