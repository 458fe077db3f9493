//! `custody edge`: run a mine's edge (a leaf node of the hub with a
//! durable outbox), or list what the hub answered it.

use std::path::PathBuf;
use std::process::ExitCode;

use custody_proto::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// The edge's folder: its nats-server's JetStream (the outbox) and keys.
    #[arg(long, global = true, default_value = "data/edge")]
    data: PathBuf,
    /// The hub's leaf node URLs, comma-separated (`custody up` prints them).
    #[arg(long, env = "CUSTODY_HUB")]
    hub: Option<String>,
    /// The CA certificate that signed the hub's leaf node certificates
    /// (`ca.pem` from `custody certs`): the link to the hub is then TLS.
    #[arg(long, value_name = "FILE")]
    hub_ca: Option<PathBuf>,
    /// The mine's actor key file: its producers submit with it, and the
    /// edge logs in to the hub with it (so the link carries its subjects only).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Port producers connect to on this machine (0: a free one).
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// The edge's own JetStream domain.
    #[arg(long, default_value = "edge")]
    domain: String,
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print what the hub answered this edge's submissions, one JSON line
    /// each (receipts and refusals), and how many are still queued.
    Receipts,
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    match a.action {
        Some(Action::Receipts) => {
            let key = custody::keys::load(&a.data.join(custody::edge::FORWARDER_KEY))?;
            let seed = key.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
            let local = custody_wire::connect::connect_client(nats, "custody-edge-receipts", Some(&seed)).await?;
            let (outcomes, queued) = custody::edge::receipts(&local).await?;
            let refused = outcomes.iter().filter(|o| matches!(o, Outcome::Rejected(_))).count();
            for o in &outcomes {
                println!("{}", serde_json::to_string(o)?);
            }
            eprintln!("{} answered ({refused} refused); {queued} still queued for the hub", outcomes.len());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let (Some(hub), Some(key)) = (a.hub, a.key) else { anyhow::bail!("custody edge needs --hub URLS and --key ACTOR.nk") };
            let config = custody::edge::Config {
                hub: hub.clone(),
                hub_ca: a.hub_ca,
                actor: custody::keys::load(&key)?,
                data: a.data.clone(),
                port: (a.port != 0).then_some(a.port),
                domain: a.domain,
                health: custody_wire::health::Health::new("edge", "edge"),
            };
            a.ops.start(vec![config.health.clone()], &[&a.data]).await?;
            custody::edge::run(
                config,
                |edge| {
                    println!("edge listening on {} for {} (outbox in {}, sync_interval: always)", edge.server.url, edge.actor, a.data.join("nats").display());
                    println!("uplink: a leaf node of {hub}, as {}", edge.actor);
                    println!("edge ready");
                },
                super::stop_signal(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
