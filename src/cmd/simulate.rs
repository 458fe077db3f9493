//! `custody simulate`: submit a seeded simulated supply chain as real signed
//! envelopes over NATS, pipelined, with a progress bar.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use custody::sim;
use custody_proto::Outcome;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// The genesis authority's key file (it registers the simulated actors).
    /// The operator's key, which may publish for every simulated actor, is
    /// looked for beside it (`keys/services/operator-login.nk`, as `custody up`
    /// writes it) when `--nkey` is not the operator.
    #[arg(long, default_value = "data/authority.nk")]
    authority: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds of mine → hub → cutter → importer (about 120 stones each).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
}

/// Envelopes in flight at once.
const WINDOW: usize = 256;

/// How long one envelope may wait for its outcome before the simulation
/// says why it thinks none came.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Submits a world, pipelined and in order; returns it (for the stone ids)
/// after every event is receipted. With `in_time`, its story is first set
/// in the days before that moment ([`custody::demo::set_in_time`]), as
/// `custody up`'s demo is; otherwise it keeps its fixed, seeded dates.
pub async fn submit(
    client: &async_nats::Client,
    authority: &nkeys::KeyPair,
    size: sim::Size,
    in_time: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<sim::World> {
    let mut world = sim::world(authority, size);
    if let Some(now) = in_time {
        custody::demo::set_in_time(&mut world.events, now);
    }
    let bar = ProgressBar::new(world.events.len() as u64);
    bar.set_style(ProgressStyle::with_template("simulate {bar:40} {pos}/{len} events {per_sec}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let envelopes = world
        .events
        .iter()
        .map(|(who, payload)| custody_proto::envelope::sign(&world.actors[*who].key, payload.to_string().as_bytes()).map(Bytes::from))
        .collect::<Result<Vec<_>, _>>()?;
    let mut refused = false;
    custody::client::submit_in_order(client, envelopes, WINDOW, ANSWER_WITHIN, |i, outcome| match outcome {
        Outcome::Receipt(_) => {
            bar.inc(1);
            Ok(())
        }
        Outcome::Rejected(r) => {
            refused = true;
            bail!("the simulation's event {} was refused: {} {}", world.events[i].1["id"], r.code, r.message)
        }
    })
    .await
    .map_err(|e| {
        if refused {
            return e;
        }
        anyhow::anyhow!(
            "{e}. The simulation publishes for every simulated actor, on each actor's own subject: with authorization on, only the \
             operator may (--nkey DATA/keys/services/operator-login.nk, written by `custody up`); or is no ledger running?"
        )
    })?;
    bar.finish_and_clear();
    Ok(world)
}

/// The operator's key file beside the authority's (`custody up`'s layout).
fn operator_key(authority: &Path) -> PathBuf {
    authority.parent().unwrap_or(Path::new(".")).join("keys/services/operator-login.nk")
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let authority = custody::keys::load(&a.authority)?;
    let operator = operator_key(&a.authority);
    let client = if operator.is_file() {
        eprintln!("publishing for the simulated actors as the operator ({})", operator.display());
        let seed = custody::keys::load(&operator)?.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
        custody_wire::connect::connect_client(nats, "custody-simulate", Some(&seed)).await?
    } else {
        custody::client::connect(nats).await?
    };
    let world = submit(&client, &authority, sim::Size { seed: a.seed, rounds: a.rounds }, None).await?;
    println!(
        "{}",
        serde_json::json!({
            "events": world.events.len(),
            "clean": world.clean,
            "prohibited_us_2024": world.prohibited,
            "undetermined": world.undetermined,
        })
    );
    Ok(ExitCode::SUCCESS)
}
