use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve HTTP on (loopback by default; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let health = custody_wire::health::Health::new("gateway", "gateway");
    a.ops.start(vec![health.clone()]).await?;
    let nkey = custody::client::identity();
    custody_gateway::run(nats, nkey.as_deref(), a.listen, health, |addr| println!("listening on http://{addr}"), super::stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
