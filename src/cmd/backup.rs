//! `custody backup` and `custody restore` (see `custody::backup`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// An empty folder to write the backup to.
    #[arg(long)]
    out: PathBuf,
    /// Take --out as the folder of all backups: this one goes into a new
    /// folder under it named by the UTC time (`2026-12-02T0300Z`), as a
    /// timer that backs up every night needs.
    #[arg(long)]
    dated: bool,
    /// The ledger's public key (N...) to expect; without it, the key the
    /// ledger's checkpoint names is trusted and recorded.
    #[arg(long)]
    key: Option<String>,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup folder (`custody backup --out`).
    #[arg(long)]
    from: PathBuf,
    /// The ledger's public key (N...) the backup must be signed with
    /// (recommended: the key auditors pin); without it, the manifest's.
    #[arg(long)]
    key: Option<String>,
    /// The ledger's signing key file (kept apart from backups): copied
    /// into the new ledger's folder, so that its checkpoints go on being
    /// signed by the key auditors trust. Must match the backup's key.
    #[arg(long)]
    ledger_key: Option<PathBuf>,
    /// The new ledger's store folder (empty), rebuilt from the restored
    /// stream.
    #[arg(long, default_value = "data/ledger")]
    data: PathBuf,
    /// Servers holding each custody stream (3 on a three-server cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Only audit the backup, offline; restore nothing.
    #[arg(long)]
    check: bool,
}

pub async fn backup(nats: &str, a: BackupArgs) -> anyhow::Result<ExitCode> {
    let client = custody::client::connect(nats).await?;
    let out = if a.dated { a.out.join(chrono::Utc::now().format("%Y-%m-%dT%H%MZ").to_string()) } else { a.out.clone() };
    let m = custody::backup::take(&client, &out, a.key.as_deref()).await?;
    println!("{}", json!({"backup": out.display().to_string(), "entries": m.tree_size, "root": m.root, "head_hash": m.head_hash, "ledger_key": m.ledger_key}));
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(nats: &str, a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let checked = custody::backup::check(&a.from, a.key.as_deref())?;
    let m = &checked.manifest;
    if a.check {
        println!("{}", json!({"backup": a.from.display().to_string(), "valid": true, "entries": m.tree_size, "root": m.root, "ledger_key": m.ledger_key}));
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(matches!(a.replicas, 1..=5), "--replicas must be between 1 and 5");
    let key_file = a.ledger_key.context("--ledger-key FILE: the ledger's signing key, to go on signing as the backup's ledger")?;
    install_ledger_key(&key_file, &a.data, &m.ledger_key)?;
    let client = custody::client::connect(nats).await?;
    let entries = custody::backup::restore(&client, &checked, &a.data, a.replicas).await?;
    println!("{}", json!({"restored": entries, "root": m.root, "head_hash": m.head_hash, "store": a.data.display().to_string()}));
    Ok(ExitCode::SUCCESS)
}

/// Copies the ledger key in `file` into the store folder `dir`, once it is
/// known to be the key `expected` (N...) a backup was signed with.
pub fn install_ledger_key(file: &std::path::Path, dir: &std::path::Path, expected: &str) -> anyhow::Result<()> {
    let key = custody::keys::load(file)?;
    anyhow::ensure!(key.public_key() == expected, "{} holds the key {}, but the backup's ledger signs with {expected}", file.display(), key.public_key());
    let target = dir.join(custody_ledger::notary::KEY_FILE);
    if target.exists() {
        let there = custody::keys::load(&target)?;
        anyhow::ensure!(there.public_key() == expected, "{} holds another ledger's key ({})", target.display(), there.public_key());
        return Ok(());
    }
    let seed = key.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
    custody_wire::files::write_whole(&target, format!("{seed}\n").as_bytes(), custody_wire::files::Mode::Private)?;
    Ok(())
}
