//! `custody bench ingest`: receipted events per second through the real
//! ledger, against the raw JetStream publish rate of the same bytes measured
//! in the same run, on a private nats-server. Envelopes are signed before
//! the clock starts.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use custody::natsd::NatsServer;
use custody_proto::Outcome;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Signed envelopes in, receipts out.
    Ingest {
        /// Envelopes to submit.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Concurrent producers.
        #[arg(long, default_value_t = 8)]
        producers: usize,
        /// Requests each producer keeps in flight.
        #[arg(long, default_value_t = 128)]
        window: usize,
    },
    /// Origin-query latency and rate at several fan-ins, against a bare
    /// request-reply round trip.
    Query {
        /// Mined lots each stone's history fans in from.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,100000")]
        fan_in: Vec<usize>,
        /// Queries per measurement.
        #[arg(long, default_value_t = 4000)]
        queries: usize,
    },
    /// Projection replay rate, against reading the same stream.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
    },
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (events, producers, window) = match a.what {
        What::Ingest { events, producers, window } => (events, producers, window),
        What::Query { fan_in, queries } => {
            super::bench_read::query(&fan_in, queries).await?;
            return Ok(ExitCode::SUCCESS);
        }
        What::Replay { entries } => {
            super::bench_read::replay(entries).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let tmp = tempfile_dir()?;
    let nats = NatsServer::start(&tmp.join("nats"))?;
    let authority = nkeys::KeyPair::new_user();
    let config = custody_ledger::Config::new(nats.url.clone(), tmp.join("ledger"), authority.public_key().parse().map_err(|e: String| anyhow::anyhow!(e))?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ledger = tokio::spawn(custody_ledger::run(config, async move {
        let _ = stop_rx.await;
    }));
    let nc = custody::client::connect(&nats.url).await?;

    // One miner per producer, registered before the clock starts.
    let miners: Vec<nkeys::KeyPair> = (0..producers).map(|_| nkeys::KeyPair::new_user()).collect();
    for (i, m) in miners.iter().enumerate() {
        let reg = json!({"id": format!("reg-{i}"), "kind": "actor.registered", "actor": authority.public_key(),
            "occurred_at": "2024-01-01T00:00:00Z", "subject": m.public_key(), "name": format!("Miner {i}"),
            "roles": ["miner"], "country": "BW"});
        match custody::client::submit(&nc, custody_proto::envelope::sign(&authority, reg.to_string().as_bytes())?.into()).await? {
            Outcome::Receipt(_) => {}
            Outcome::Rejected(r) => bail!("registration refused: {}", r.message),
        }
    }
    eprintln!("signing {events} envelopes...");
    let per = events / producers;
    let signed: Vec<Vec<Bytes>> = miners
        .iter()
        .enumerate()
        .map(|(p, m)| {
            (0..per)
                .map(|i| {
                    let ev = json!({"id": format!("b-{p}-{i}"), "kind": "mined", "actor": m.public_key(),
                        "occurred_at": "2024-09-02T00:00:00Z", "lot": format!("B{p}-{i}"), "carats": "12.34", "country": "BW"});
                    custody_proto::envelope::sign(m, ev.to_string().as_bytes()).map(Bytes::from)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let total = per * producers;

    // Baseline: raw JetStream async publish of the same bytes, no ledger.
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config { name: "BENCH_RAW".into(), subjects: vec!["bench.raw".into()], ..Default::default() }).await?;
    let start = Instant::now();
    let all: Vec<Bytes> = signed.iter().flatten().cloned().collect();
    let mut acks = FuturesUnordered::new();
    for b in &all {
        acks.push(std::future::IntoFuture::into_future(js.publish("bench.raw", b.clone()).await?));
        if acks.len() >= 4096 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    let raw_rate = total as f64 / start.elapsed().as_secs_f64();
    js.delete_stream("BENCH_RAW").await?;

    // The ledger: request-reply, receipts awaited.
    let nc = Arc::new(nc);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (envelopes, miner) in signed.into_iter().zip(&miners) {
        let nc = nc.clone();
        let subject = custody_wire::subjects::submit(&miner.public_key());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(envelopes.len());
            let mut inflight = FuturesUnordered::new();
            for env in envelopes {
                if inflight.len() >= window {
                    if let Some(r) = inflight.next().await {
                        latencies.push(r?);
                    }
                }
                let (nc, subject) = (nc.clone(), subject.clone());
                inflight.push(async move {
                    let t = Instant::now();
                    match custody::client::submit_to(&nc, subject, env).await? {
                        Outcome::Receipt(_) => Ok::<Duration, anyhow::Error>(t.elapsed()),
                        Outcome::Rejected(r) => bail!("refused: {}", r.message),
                    }
                });
            }
            while let Some(r) = inflight.next().await {
                latencies.push(r?);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = total as f64 / elapsed;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({
            "bench": "ingest",
            "events": total,
            "producers": producers,
            "window": window,
            "receipted_per_s": rate.round(),
            "receipt_latency_ms": {"p50": pct(0.50), "p99": pct(0.99)},
            "baseline_jetstream_publish_per_s": raw_rate.round(),
            "ratio_to_baseline": (rate / raw_rate * 1000.0).round() / 1000.0,
        })
    );
    let _ = stop_tx.send(());
    ledger.await?.context("ledger")?;
    drop(nats);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("custody-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
