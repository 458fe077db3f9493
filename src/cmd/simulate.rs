//! `custody simulate`: submit a seeded simulated supply chain as real signed
//! envelopes over NATS, with a progress bar.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use custody::sim;
use custody_proto::Outcome;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// The genesis authority's key file (it registers the simulated actors).
    #[arg(long, default_value = "data/authority.nk")]
    authority: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds of mine → hub → cutter → importer (about 120 stones each).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
}

/// Submits a world; returns it (for the stone ids) after every event is receipted.
pub async fn submit(client: &async_nats::Client, authority: &nkeys::KeyPair, size: sim::Size) -> anyhow::Result<sim::World> {
    let world = sim::world(authority, size);
    let bar = ProgressBar::new(world.events.len() as u64);
    bar.set_style(ProgressStyle::with_template("simulate {bar:40} {pos}/{len} events {per_sec}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    for (who, payload) in &world.events {
        let envelope = custody_proto::envelope::sign(&world.actors[*who].key, payload.to_string().as_bytes())?;
        if let Outcome::Rejected(r) = custody::client::submit(client, envelope.into()).await? {
            bail!("the simulation's event {} was refused: {} {}", payload["id"], r.code, r.message);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(world)
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    let authority = custody::keys::load(&a.authority)?;
    let client = custody::client::connect(nats).await?;
    let world = submit(&client, &authority, sim::Size { seed: a.seed, rounds: a.rounds }).await?;
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
