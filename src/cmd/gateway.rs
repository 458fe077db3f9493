use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve HTTP on (loopback by default; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
}

/// What HTTP clients may hold of the gateway (`custody gateway`, `custody up`).
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// HTTP connections open at once; past it, 503 and closed (kept far
    /// below the process's descriptor limit).
    #[arg(long, default_value_t = 2_048)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (and an idle
    /// connection stays open).
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, default_value_t = 10.0)]
    body_timeout: f64,
    /// Requests one client address may have in progress at once; past
    /// it, 503 at once.
    #[arg(long, default_value_t = 64)]
    max_requests_per_client: usize,
}

impl HttpArgs {
    pub fn limits(&self) -> anyhow::Result<custody_gateway::HttpLimits> {
        anyhow::ensure!(self.max_connections >= 1, "--max-connections must be at least 1");
        anyhow::ensure!(self.max_requests_per_client >= 1, "--max-requests-per-client must be at least 1");
        let seconds = |flag: &str, s: f64| {
            anyhow::ensure!(s > 0.0 && s.is_finite() && s < 1e9, "--{flag} must be a positive number of seconds");
            Ok(std::time::Duration::from_secs_f64(s))
        };
        Ok(custody_gateway::HttpLimits {
            max_connections: self.max_connections,
            header_timeout: seconds("header-timeout", self.header_timeout)?,
            body_timeout: seconds("body-timeout", self.body_timeout)?,
            per_client: self.max_requests_per_client,
            ..Default::default()
        })
    }
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let health = custody_wire::health::Health::new("gateway", "gateway");
    a.ops.start(vec![health.clone()], &[]).await?;
    let nkey = custody::client::identity();
    custody_gateway::run(nats, nkey.as_deref(), a.listen, a.http.limits()?, health, |addr| println!("listening on http://{addr}"), super::stop_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}
