//! `custody status`: asks every service on NATS how it is
//! (`custody.status.<kind>`) and prints one line per instance. Exits 1 when
//! any instance is not ready, or none answered.

use std::process::ExitCode;
use std::time::Duration;

use custody_wire::health::Status;
use custody_wire::subjects::STATUS_KINDS;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to wait for the answers.
    #[arg(long, default_value_t = 1.0)]
    wait: f64,
    /// One JSON object per instance instead of a line of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.wait > 0.0 && a.wait.is_finite() && a.wait <= 60.0, "--wait is a number of seconds up to 60");
    let statuses = ask(nats, Duration::from_secs_f64(a.wait)).await?;
    if statuses.is_empty() {
        // Exit 1, as for a service not ready: the deployment is not serving.
        eprintln!("custody: no service answered on {nats} (status needs the operator's key when NATS checks identities: --nkey)");
        return Ok(ExitCode::FAILURE);
    }
    for s in &statuses {
        if a.json {
            println!("{}", serde_json::to_string(s)?);
        } else {
            println!("{}", line(s));
        }
    }
    Ok(if statuses.iter().all(|s| s.ready) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every answer that came within `wait`, by kind (as [`STATUS_KINDS`]
/// lists them) and name.
pub async fn ask(nats: &str, wait: Duration) -> anyhow::Result<Vec<Status>> {
    let client = custody::client::connect(nats).await?;
    let mut statuses = custody_wire::health::gather(&client, &STATUS_KINDS, wait).await?;
    let rank = |s: &Status| STATUS_KINDS.iter().position(|k| *k == s.service).unwrap_or(STATUS_KINDS.len());
    statuses.sort_by(|x, y| (rank(x), &x.name).cmp(&(rank(y), &y.name)));
    Ok(statuses)
}

/// `ledger  ledger 1  writer  ready  head 1234  leader ledger 1  v0.1.0`.
fn line(s: &Status) -> String {
    let position = match (s.head, s.lag) {
        (Some(h), Some(l)) => format!("head {h} lag {l}"),
        (Some(h), None) => format!("head {h}"),
        (None, Some(l)) => format!("lag {l}"),
        (None, None) => "-".into(),
    };
    let ready = if s.ready { "ready".to_owned() } else { format!("NOT READY ({})", s.why.as_deref().unwrap_or("no reason given")) };
    let leader = s.leader.as_deref().map_or_else(String::new, |l| format!("  leader {l}"));
    let key = s.key.as_deref().map_or_else(String::new, |k| format!("  key {k}"));
    format!("{:<10} {:<14} {:<9} {:<22}{leader}{key}  v{}  {ready}", s.service, s.name, s.role, position, s.version)
}
