//! `custody bench edge`: a mine's edge, offline and back.
//!
//! On private nats-servers (a hub with an in-process ledger, and the
//! edge's own), with the link through a relay that is cut: the mine
//! records `events` envelopes one after the other (each acknowledged by
//! the edge once on its disk), the link returns, and the clock runs until
//! the outbox is empty, every envelope receipted. Baselines from the same
//! run: the same number of other envelopes submitted straight to the hub
//! in batch requests of 1,000, one at a time, as the forwarder sends them;
//! and a bare request-reply round trip to the edge server.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use custody::link::Link;
use custody::natsd::{NatsServer, Setup};
use custody_proto::Outcome;
use custody_wire::subjects;
use futures::StreamExt as _;
use serde_json::json;

use super::bench::{receipted, scratch, summary, world_of, InProcessLedger};

pub async fn edge(events: usize) -> anyhow::Result<()> {
    let scratch = scratch("edge")?;
    let tmp = scratch.path();
    let hub = NatsServer::start_as(&tmp.join("hub"), Setup { leaf_port: Some(0), ..Setup::default() })?;
    let leaf_port = hub.setup.leaf_port.context("the hub takes no leaf nodes")?;
    let authority = nkeys::KeyPair::new_user();
    let ledger = InProcessLedger::start(&hub.url, tmp.join("ledger"), &authority)?;
    let nc = custody::client::connect(&hub.url).await?;
    let miner = nkeys::KeyPair::new_user();
    let direct = world_of(&nc, &authority, std::slice::from_ref(&miner), events, "d").await?;
    let offline = world_of(&nc, &authority, std::slice::from_ref(&miner), events, "e").await?.concat();

    // Baseline: straight to the hub, batches of 1,000, one at a time.
    let (direct_rate, _, _) = receipted(&nc, direct, subjects::BATCH_MAX_ENVELOPES, subjects::BATCH_MAX_ENVELOPES).await?;

    let link = Link::to(leaf_port).await?;
    let edge = custody::edge::start(&custody::edge::Config {
        hub_ca: None,
        hub: format!("nats-leaf://127.0.0.1:{}", link.port),
        actor: nkeys::KeyPair::from_seed(&miner.seed()?)?,
        data: tmp.join("edge"),
        port: None,
        domain: "edge".into(),
        health: custody_wire::health::Health::new("edge", "edge"),
    })?;
    let local = edge.local().await?;
    edge.streams(&local).await?;
    let edge_url = edge.server.url.clone();
    let (fstop_tx, fstop_rx) = tokio::sync::oneshot::channel::<()>();
    let forwarder_local = local.clone();
    let forwarding = tokio::spawn(async move {
        edge.forward(forwarder_local, custody_wire::health::Health::new("edge", "edge"), async move {
            let _ = fstop_rx.await;
        })
        .await
        .map(|()| edge)
    });
    link.cut();

    // Baseline: a bare round trip to the edge's server.
    let mut echo = local.subscribe("bench.echo").await?;
    let echoer = local.clone();
    let echoing = tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(r) = m.reply {
                let _ = echoer.publish(r, m.payload).await;
            }
        }
    });
    let mut bare = Vec::with_capacity(events);
    let started = Instant::now();
    for env in &offline {
        let t = Instant::now();
        local.request("bench.echo", env.clone()).await?;
        bare.push(t.elapsed());
    }
    let (_, bare_p50, bare_p99) = summary(events, started.elapsed(), bare);
    echoing.abort();

    // Offline: the mine records, one after the other.
    let producer = custody_wire::connect::connect(&edge_url, "bench-producer", Some(&miner.seed()?)).await?;
    let mut acks = Vec::with_capacity(events);
    let started = Instant::now();
    for env in &offline {
        let t = Instant::now();
        let reply = producer.request(subjects::submit(&miner.public_key()), env.clone()).await?;
        acks.push(t.elapsed());
        if serde_json::from_slice::<custody::client::Queued>(&reply.payload).is_err() {
            bail!("the edge did not queue an envelope: {}", String::from_utf8_lossy(&reply.payload));
        }
    }
    let (ack_rate, ack_p50, ack_p99) = summary(events, started.elapsed(), acks);

    // The link returns: until the outbox is empty.
    let js = async_nats::jetstream::new(local.clone());
    let mut outbox = js.get_stream(subjects::OUTBOX_STREAM).await?;
    let back = Instant::now();
    link.restore();
    while outbox.info().await?.state.messages > 0 {
        if back.elapsed() > Duration::from_secs(600) {
            bail!("the outbox did not empty within 10 minutes of the link's return");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = back.elapsed();
    let (outcomes, _) = custody::edge::receipts(&local).await?;
    let receipted_count = outcomes.iter().filter(|o| matches!(o, Outcome::Receipt(_))).count();
    if receipted_count != events {
        bail!("{receipted_count} of {events} receipted");
    }
    let drained_rate = events as f64 / drained.as_secs_f64();
    println!(
        "{}",
        json!({
            "bench": "edge",
            "events": events,
            "offline_ack_ms": {"p50": ack_p50, "p99": ack_p99, "per_s": ack_rate.round()},
            "baseline_round_trip_ms": {"p50": bare_p50, "p99": bare_p99},
            "ack_p50_to_round_trip": (ack_p50 / bare_p50 * 10.0).round() / 10.0,
            "receipted_after_link_return_s": (drained.as_secs_f64() * 100.0).round() / 100.0,
            "receipted_per_s": drained_rate.round(),
            "baseline_direct_batched_per_s": direct_rate.round(),
            "ratio_to_direct": (drained_rate / direct_rate * 1000.0).round() / 1000.0,
        })
    );
    let _ = fstop_tx.send(());
    let edge = forwarding.await??;
    drop(edge);
    ledger.stop().await?;
    drop(hub);
    Ok(())
}
