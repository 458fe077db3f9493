//! `custody projection`: run the read side, rebuild it from seq 1, or ask a
//! running one for its state digest.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the projection's store.
    #[arg(long, global = true, default_value = "data/projection")]
    data: PathBuf,
    /// Write a snapshot of the state after this many entries...
    #[arg(long, global = true, env = "CUSTODY_SNAPSHOT_EVERY", default_value_t = 1_000_000)]
    snapshot_every: u64,
    /// ...or this many seconds after the last one, if any entry came since.
    #[arg(long, global = true, env = "CUSTODY_SNAPSHOT_SECS", default_value_t = 60)]
    snapshot_secs: u64,
    /// Memory for the state's cache, in MiB: the projection's resident
    /// size, whatever the length of the history (the rest is on disk). 0:
    /// the smallest cache there is (16 records a table), for tests.
    #[arg(long, global = true, env = "CUSTODY_CACHE_MB", default_value_t = 512)]
    cache_mb: usize,
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Empty the store and replay the committed stream from seq 1 to its
    /// current end; print the seq and state digest reached.
    Rebuild,
    /// Ask the running projection for its seq and state digest.
    Digest,
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let mut config = custody_projection::Config::new(nats, a.data, custody::client::identity());
    config.snapshot_every = a.snapshot_every.max(1);
    config.snapshot_interval = std::time::Duration::from_secs(a.snapshot_secs);
    config.cache_mb = a.cache_mb;
    match a.action {
        None => {
            a.ops.start(vec![config.health.clone()], &[&config.data_dir]).await?;
            custody_projection::run(config, super::stop_signal()).await?
        }
        Some(Action::Rebuild) => {
            let (seq, digest) = custody_projection::rebuild(config).await?;
            println!("{}", json!({"seq": seq, "digest": digest}));
        }
        Some(Action::Digest) => match super::query::ask(nats, custody_wire::subjects::QUERY_DIGEST, json!({})).await? {
            Ok(v) | Err(v) => println!("{v}"),
        },
    }
    Ok(ExitCode::SUCCESS)
}
