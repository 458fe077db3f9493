//! `custody authz`: keep a nats-server's authorization in step with the
//! actor registry on the ledger (what `custody up` runs in-process).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// The genesis authority's public key (U...), or a file holding it.
    #[arg(long)]
    genesis: String,
    /// The file nats-server loads with `-c`; rewritten whole on each change.
    #[arg(long)]
    auth_file: PathBuf,
    /// nats-server's pid file (its `pid_file` setting), read at each
    /// reload and that process signalled (SIGHUP); repeat for each server
    /// on this machine that loads the file.
    #[arg(long = "nats-pid-file", value_name = "FILE", required_unless_present = "bootstrap")]
    nats_pid_files: Vec<PathBuf>,
    /// A service's public key: ledger=U..., projection=U..., gateway=U...,
    /// authz=U... or operator=U... (repeat the flag); a key file (seed or
    /// public key) in place of U... is read for its public key.
    #[arg(long = "service", value_name = "KIND=KEY")]
    services: Vec<String>,
    /// Only write the file for the services and the genesis authority
    /// (before nats-server first starts), then exit.
    #[arg(long)]
    bootstrap: bool,
    /// With --bootstrap: leave a file that exists as it is (it holds the
    /// registry's actors; authz rewrites it once it runs). For a unit that
    /// bootstraps before every start of nats-server.
    #[arg(long, requires = "bootstrap")]
    if_missing: bool,
    #[command(flatten)]
    actors: ActorsArgs,
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
}

/// What all actors together may hold of nats-server (`custody authz`,
/// `custody up`); the services' connections are in other accounts and
/// always get in.
#[derive(clap::Args, Debug, Clone)]
pub struct ActorsArgs {
    /// NATS connections all registered actors together may hold; past it
    /// nats-server refuses an actor's new connection.
    #[arg(long, default_value_t = 8_192)]
    actors_max_connections: u32,
    /// Leaf nodes (edges) all actors together may connect.
    #[arg(long, default_value_t = 4_096)]
    actors_max_leafnodes: u32,
}

impl ActorsArgs {
    pub fn limits(&self) -> anyhow::Result<custody_authz::ActorsLimits> {
        anyhow::ensure!(self.actors_max_connections >= 1, "--actors-max-connections must be at least 1");
        anyhow::ensure!(self.actors_max_leafnodes >= 1, "--actors-max-leafnodes must be at least 1");
        Ok(custody_authz::ActorsLimits { max_connections: self.actors_max_connections, max_leafnodes: self.actors_max_leafnodes })
    }
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let genesis = custody::keys::public_key_of(&a.genesis).context("--genesis")?;
    let mut services = custody_authz::Services::default();
    for s in &a.services {
        let (kind, key) = s.split_once('=').with_context(|| format!("--service {s:?}: expected KIND=KEY"))?;
        let key = custody::keys::public_key_of(key).with_context(|| format!("--service {s:?}"))?;
        anyhow::ensure!(key.starts_with('U'), "--service {s:?}: a service logs in with a user key (U...), not {key}");
        let list = match kind {
            "ledger" => &mut services.ledger,
            "projection" => &mut services.projection,
            "gateway" => &mut services.gateway,
            "authz" => &mut services.authz,
            "operator" => &mut services.operator,
            other => anyhow::bail!("--service {other}: not one of ledger, projection, gateway, authz, operator"),
        };
        list.push(key);
    }
    let config = custody_authz::Config {
        nats_url: nats.to_owned(),
        nkey: custody::client::identity(),
        genesis: genesis.clone(),
        services,
        config_file: a.auth_file,
        nats_pid_files: a.nats_pid_files,
        actors: a.actors.limits()?,
    };
    if a.bootstrap {
        if a.if_missing && config.config_file.exists() {
            println!("{} exists: left as it is", config.config_file.display());
            return Ok(ExitCode::SUCCESS);
        }
        custody_authz::service::write(&config, &custody_authz::Registry::new(&genesis))?;
        return Ok(ExitCode::SUCCESS);
    }
    let health = custody_wire::health::Health::new("authz", "authz");
    a.ops.start(vec![health.clone()], &[]).await?;
    custody_authz::run(config, health, super::stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
