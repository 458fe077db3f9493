use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use custody_proto::ActorKey;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the ledger's store.
    #[arg(long, default_value = "data/ledger")]
    data: PathBuf,
    /// Genesis authority: a public key (U...) or a seed file.
    #[arg(long, env = "CUSTODY_AUTHORITY")]
    authority: String,
}

/// The genesis authority from a public key or a key file.
pub fn authority(arg: &str) -> anyhow::Result<ActorKey> {
    if let Ok(k) = arg.parse::<ActorKey>() {
        return Ok(k);
    }
    let kp = custody::keys::load(std::path::Path::new(arg)).context("--authority is neither a user nkey nor a key file")?;
    kp.public_key().parse().map_err(|e: String| anyhow::anyhow!(e))
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let config = custody_ledger::Config { nats_url: nats.to_owned(), data_dir: a.data, authority: authority(&a.authority)? };
    custody_ledger::run(config, super::stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
