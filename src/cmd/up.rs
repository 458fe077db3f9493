//! `custody up`: everything on one machine with embedded defaults. Starts a
//! nats-server on a free loopback port (JetStream under the data folder),
//! the ledger, the projection and the HTTP gateway, and on an empty ledger
//! submits the demo supply chain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use custody::natsd::NatsServer;
use custody::{client, demo, keys};
use custody_proto::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Data folder: NATS's JetStream, the ledger store and keys live here.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Genesis authority key file; created as DIR/authority.nk when absent.
    #[arg(long)]
    authority: Option<PathBuf>,
    /// Do not submit the demo supply chain.
    #[arg(long)]
    no_demo: bool,
    /// Rounds of the simulated world submitted after the worked example
    /// (about 120 stones each; 0 for none).
    #[arg(long, default_value_t = 5)]
    simulate: u32,
    /// Stop after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    exit_after_demo: bool,
    /// Where the HTTP gateway listens (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: std::net::SocketAddr,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.data).with_context(|| format!("cannot create {}", a.data.display()))?;
    let nats = NatsServer::start(&a.data.join("nats"))?;
    let authority_path = a.authority.clone().unwrap_or_else(|| a.data.join("authority.nk"));
    let authority = keys::load_or_create(&authority_path)?;
    println!("NATS listening on {}", nats.url);
    println!("genesis authority {} (key file {})", authority.public_key(), authority_path.display());
    let ledger_key = custody_ledger::notary::load_or_create_key(&a.data.join("ledger"))?;
    println!("ledger key {} (signs checkpoints; audit with: custody audit --key {})", ledger_key.public_key(), ledger_key.public_key());

    let config = custody_ledger::Config::new(
        nats.url.clone(),
        a.data.join("ledger"),
        authority.public_key().parse().map_err(|e: String| anyhow::anyhow!(e))?,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut ledger = tokio::spawn(custody_ledger::run(config, async move {
        let _ = stop_rx.await;
    }));

    let (pstop_tx, pstop_rx) = tokio::sync::oneshot::channel::<()>();
    let projection_config = custody_projection::Config { nats_url: nats.url.clone(), data_dir: a.data.join("projection") };
    let projection = tokio::spawn(custody_projection::run(projection_config, async move {
        let _ = pstop_rx.await;
    }));

    let (gstop_tx, gstop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let gateway_url = nats.url.clone();
    let gateway = tokio::spawn(async move {
        custody_gateway::run(&gateway_url, a.http, |addr| { let _ = bound_tx.send(addr); }, async move {
            let _ = gstop_rx.await;
        })
        .await
    });
    let http = bound_rx.await.context("the HTTP gateway did not start")?;

    let nc = client::connect(&nats.url).await?;
    let head = wait_for_head(&nc).await?;
    println!("ledger ready at seq {head}");
    if !a.no_demo && head == 0 {
        let cast = demo::Cast::load_or_create(nkeys::KeyPair::from_seed(&authority.seed()?)?, &a.data.join("keys"))?;
        println!("submitting the demo supply chain (DOMAIN.md's worked example); actor keys in {}", a.data.join("keys").display());
        let mut events = cast.worked_example();
        events.push(cast.second_split());
        for (key, payload) in events {
            let envelope = custody_proto::envelope::sign(key, payload.to_string().as_bytes())?;
            let outcome = client::submit(&nc, envelope.into()).await?;
            let kind = payload["kind"].as_str().unwrap_or("?");
            match outcome {
                Outcome::Receipt(r) => println!("  seq {:>3} {kind:<16} {} {}", r.seq, r.id, &r.hash[..16]),
                Outcome::Rejected(r) => println!("  refused {kind:<13} {}: {} ({})", r.id.unwrap_or_default(), r.code, r.message),
            }
        }
    }
    // The binary as the user can call it, wherever it was built.
    let me = std::env::current_exe().ok().and_then(|p| {
        let cwd = std::env::current_dir().ok()?;
        Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
    });
    let me = me.map_or_else(|| "custody".to_owned(), |p| p.display().to_string());
    if !a.no_demo && head == 0 && a.simulate > 0 {
        println!("submitting a simulated world ({} rounds, KP 2022 production mix)...", a.simulate);
        let world = super::simulate::submit(&nc, &authority, custody::sim::Size { seed: 1, rounds: a.simulate }).await?;
        println!("  {} events; stones worth a look:", world.events.len());
        println!("    http://{http}/?lot={}  (Botswana only, clean)", world.clean);
        println!("    http://{http}/?lot={}  (partly Russian: prohibited under us-2024)", world.prohibited);
        println!("    http://{http}/?lot={}  (declared, origin unknown: undetermined)", world.undetermined);
    }
    println!("\nthe page: http://{http}/?lot=S1  (API: http://{http}/v1/openapi.json)");
    println!("try, in another terminal:");
    println!("  export CUSTODY_NATS={}", nats.url);
    for args in ["verify", "origin S1", "admissible S1 --rules us-2024 --date 2024-11-15", "genealogy S1"] {
        println!("  {me} {args}");
    }
    if !a.exit_after_demo {
        println!("serving; Ctrl-C to stop");
        tokio::select! {
            () = super::stop_signal() => {}
            done = &mut ledger => done??,
        }
    }
    let _ = stop_tx.send(());
    let _ = pstop_tx.send(());
    let _ = gstop_tx.send(());
    ledger.await??;
    projection.await??;
    gateway.await??;
    Ok(ExitCode::SUCCESS)
}

/// Asks the ledger for its head until it answers.
async fn wait_for_head(nc: &async_nats::Client) -> anyhow::Result<u64> {
    for _ in 0..200 {
        if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(500), nc.request(custody_ledger::subjects::HEAD_SUBJECT, "".into())).await {
            let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
            return Ok(v["seq"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the ledger did not come up")
}
