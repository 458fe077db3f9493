use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve HTTP on (loopback by default; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    custody_gateway::run(nats, custody::client::identity().as_deref(), a.listen, |addr| println!("listening on http://{addr}"), super::stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
