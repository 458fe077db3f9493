//! A mine at the end of a satellite link (`custody edge`): a leaf node of
//! the hub with a durable outbox. Real nats-servers on loopback: the hub
//! (`custody up`, authorization on) and the edge's own, with the link
//! between them through a relay the test cuts and restores.
//!
//! Offline, the mine records 5,000 events, each acknowledged by the edge
//! at once; the edge is killed and restarted halfway and loses nothing it
//! acknowledged. When the link returns, every one is receipted exactly
//! once, in the order the mine recorded them, and the receipts (and a
//! refusal) can be listed at the mine. An envelope sent both at the edge
//! and at the hub is one entry. A mine that rewrites its edge's
//! configuration still reaches nothing but its own subjects at the hub.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use custody::client::Queued;
use custody::link::Link;
use custody_proto::Outcome;
use custody_wire::subjects;
use nkeys::KeyPair;
use serde_json::json;

async fn head(client: &async_nats::Client) -> u64 {
    let msg = client.request(subjects::HEAD_SUBJECT, "".into()).await.unwrap();
    serde_json::from_slice::<serde_json::Value>(&msg.payload).unwrap()["seq"].as_u64().unwrap()
}

/// The port of a `nats-leaf://127.0.0.1:PORT` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

/// Submits at the edge as a producer would, one at a time; the answer is
/// the edge's acknowledgement. Returns each one's latency.
async fn record(edge: &async_nats::Client, envelopes: &[Bytes]) -> Vec<Duration> {
    let mut took = Vec::with_capacity(envelopes.len());
    for (i, env) in envelopes.iter().enumerate() {
        let started = Instant::now();
        let subject = subjects::submit(&custody::client::signer(env));
        let reply = edge.request(subject, env.clone()).await.unwrap_or_else(|e| panic!("the edge answers at once, link or no link; not envelope {i}: {e}"));
        took.push(started.elapsed());
        let queued: Queued = serde_json::from_slice(&reply.payload).unwrap_or_else(|_| panic!("not queued: {:?}", reply.payload));
        assert_eq!(queued.stream, subjects::OUTBOX_STREAM);
    }
    took
}

/// What `custody edge receipts` lists at the mine, and how many are queued.
fn edge_receipts(edge_url: &str, data: &std::path::Path) -> (Vec<Outcome>, u64) {
    let out = run_cli(edge_url, &["edge", "receipts", "--data", data.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcomes = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("an outcome")).collect();
    let err = String::from_utf8_lossy(&out.stderr);
    let queued = err.split("; ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("the queued count");
    (outcomes, queued)
}

fn percentile(took: &mut [Duration], p: f64) -> Duration {
    took.sort();
    took[((took.len() as f64 * p) as usize).min(took.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_mine_records_5000_events_and_each_is_receipted_once_in_order() {
    let hub = up();
    let (miner, trader) = (KeyPair::new_user(), KeyPair::new_user());
    // `mined` records South African lots.
    hub.register(&[(&miner, "miner", "ZA"), (&trader, "trader", "AE")]).await;
    let key_file = hub.dir.path().join("miner.nk");
    std::fs::write(&key_file, miner.seed().unwrap()).unwrap();
    let (at_hub, _, _) = connect_when_allowed(&hub.url, &miner).await;

    let link = Link::to(port_of(&hub.leaf)).await.unwrap();
    let edge_dir = hub.dir.path().join("edge");
    let mut edge = EdgeProcess::start(&format!("nats-leaf://127.0.0.1:{}", link.port), &key_file, &edge_dir);
    let (mut at_edge, _, _) = connect_when_allowed(&edge.url, &miner).await;

    // Online first: the same CLI as at the hub, and the receipt follows.
    let first = event(&miner, "edge-online", "mined", json!({"lot": "EDGE-ON", "carats": "2.00", "country": "ZA"}));
    let out = run_cli(&edge.url, &["--nkey", key_file.to_str().unwrap(), "submit", "--key", key_file.to_str().unwrap()], Some(&format!("{first}\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((printed["id"].as_str(), printed["queued"]["stream"].as_str()), (Some("edge-online"), Some(subjects::OUTBOX_STREAM)), "{printed}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while edge_receipts(&edge.url, &edge_dir).0.is_empty() {
        assert!(Instant::now() < deadline, "the first event was never receipted through the link");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = head(&at_hub).await;

    // The link goes down. The mine goes on recording.
    link.cut();
    let mut envelopes: Vec<Bytes> = mined(&miner, "off", 5000);
    let export = |id: &str, lot: &str, number: &str| -> Bytes {
        let fields = json!({"lots": [lot], "to": trader.public_key(), "to_country": "AE", "certificate": {"number": number, "value_usd": "1.00"}});
        sign(&miner, &event(&miner, id, "exported", fields)).into()
    };
    // Custody across the gap: an export of a lot mined offline, after it.
    envelopes.push(export("off-export", "off-L4999", "ZA-EDGE-1"));
    // And one that rests on nothing the hub has: refused, and the mine sees it.
    envelopes.push(export("off-orphan", "NOT-MINED-ANYWHERE", "ZA-EDGE-2"));
    let both: Bytes = sign(&miner, &event(&miner, "off-both", "mined", json!({"lot": "BOTH", "carats": "1.00", "country": "ZA"}))).into();
    envelopes.push(both.clone());

    let half = 2500;
    let mut took = record(&at_edge, &envelopes[..half]).await;
    // The edge dies with half of them queued, and comes back still offline.
    edge.process.kill9();
    drop(at_edge);
    edge = EdgeProcess::start(&format!("nats-leaf://127.0.0.1:{}", link.port), &key_file, &edge_dir);
    (at_edge, _, _) = connect_when_allowed(&edge.url, &miner).await;
    took.extend(record(&at_edge, &envelopes[half..]).await);
    let (p50, p99) = (percentile(&mut took, 0.50), percentile(&mut took, 0.99));
    eprintln!("offline: {} events acknowledged by the edge, p50 {p50:?}, p99 {p99:?}", envelopes.len());

    // The same envelope straight at the hub meanwhile (someone else relayed it).
    let Outcome::Receipt(direct) = custody::client::submit(&at_hub, both.clone()).await.unwrap() else { panic!("refused at the hub") };
    let (answered, queued) = edge_receipts(&edge.url, &edge_dir);
    assert_eq!((answered.len(), queued), (1, envelopes.len() as u64), "nothing crossed the cut link, nothing acknowledged was lost");
    assert_eq!(head(&at_hub).await, before + 1);
    // Its operator sees the same: an edge ready to take submissions, with
    // everything queued (the depth is read once a second).
    let http = reqwest::Client::new();
    let depth = |text: &str| metric_sum(text, "custody_edge_outbox_depth", &[]);
    let mut metrics = scrape(&http, &edge.ops).await;
    for _ in 0..50 {
        if depth(&metrics) == envelopes.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = scrape(&http, &edge.ops).await;
    }
    assert_eq!(depth(&metrics), envelopes.len() as f64, "the outbox depth while offline");
    let ready: serde_json::Value = http.get(format!("{}/readyz", edge.ops)).send().await.unwrap().json().await.unwrap();
    assert_eq!((ready["ready"].as_bool(), ready["services"][0]["lag"].as_u64()), (Some(true), Some(envelopes.len() as u64)), "{ready}");
    let forwarder = edge_dir.join(custody::edge::FORWARDER_KEY);
    let status = run_cli(&edge.url, &["--nkey", forwarder.to_str().unwrap(), "status"], None);
    let said = stdout(&status);
    assert!(status.status.success(), "{said}{}", String::from_utf8_lossy(&status.stderr));
    assert!(said.starts_with("edge") && said.contains("forwarding") && said.contains(&format!("lag {}", envelopes.len())), "{said}");

    // The link returns: everything flows, in order, each answered once.
    let back = Instant::now();
    link.restore();
    let (answered, queued) = loop {
        let (answered, queued) = edge_receipts(&edge.url, &edge_dir);
        if queued == 0 {
            break (answered, queued);
        }
        assert!(back.elapsed() < Duration::from_secs(120), "{queued} still queued two minutes after the link returned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drained = back.elapsed();
    let mut metrics = scrape(&http, &edge.ops).await;
    for _ in 0..50 {
        if depth(&metrics) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = scrape(&http, &edge.ops).await;
    }
    assert_eq!(depth(&metrics), 0.0, "the outbox drained");
    eprintln!("link back: {} events receipted in {drained:?}", envelopes.len());
    assert_eq!(queued, 0);
    assert_eq!(answered.len(), envelopes.len() + 1, "one outcome per envelope, none twice");
    let outcomes = &answered[1..];
    let mut last_seq = before;
    for (i, o) in outcomes.iter().take(5001).enumerate() {
        let Outcome::Receipt(r) = o else { panic!("event {i} refused: {o:?}") };
        let want = if i < 5000 { format!("off-{i}") } else { "off-export".into() };
        assert_eq!(r.id, want, "in the order the mine recorded them");
        assert!(r.seq > last_seq, "receipted in order: {} after {last_seq}", r.seq);
        last_seq = r.seq;
    }
    assert_eq!(code(&outcomes[5001]), "unknown_lot", "{:?}", outcomes[5001]);
    let Outcome::Receipt(again) = &outcomes[5002] else { panic!("{:?}", outcomes[5002]) };
    assert_eq!((again.seq, again.hash), (direct.seq, direct.hash), "one entry for the envelope sent at both places");
    // Exactly once: 5,000 mined, the export, the envelope sent twice.
    assert_eq!(head(&at_hub).await, before + 1 + 5001);
    // The actor reads the same receipts at the edge with the hub's client.
    let pulled = custody::client::receipts(&at_edge, &miner.public_key(), 10, Duration::from_secs(2)).await.unwrap();
    assert!(matches!(pulled.first(), Some(Outcome::Receipt(r)) if r.id == "edge-online"), "{pulled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mine_that_rewrites_its_edge_still_reaches_only_its_own_subjects_at_the_hub() {
    let hub = up();
    let (miner, other) = (KeyPair::new_user(), KeyPair::new_user());
    hub.register(&[(&miner, "miner", "BW"), (&other, "miner", "CA")]).await;
    let (at_hub, _, _) = connect_when_allowed(&hub.url, &other).await;
    let before = head(&at_hub).await;

    // Its own leaf node, logged in with its key, with no limits of its own.
    let dir = hub.dir.path().join("rogue");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("rogue.conf");
    std::fs::write(&conf, format!("leafnodes {{ remotes: [ {{ urls: [{:?}], nkey: {:?} }} ] }}\n", hub.leaf, miner.seed().unwrap())).unwrap();
    let rogue = custody::natsd::NatsServer::start_with_config(&dir.join("nats"), &conf).unwrap();
    let client =
        async_nats::ConnectOptions::new().custom_inbox_prefix(custody_wire::connect::inbox_prefix(&miner.public_key())).connect(&rogue.url).await.unwrap();

    // Its own subject works through the link (the hub answers once it knows the leaf).
    let own: Bytes = sign(&miner, &event(&miner, "rogue-own", "mined", json!({"lot": "ROGUE1", "carats": "1.00", "country": "BW"}))).into();
    let mut answered = None;
    for _ in 0..100 {
        let req = async_nats::Request::new().payload(own.clone()).timeout(Some(Duration::from_millis(500)));
        if let Ok(msg) = client.send_request(subjects::submit(&miner.public_key()), req).await {
            answered = Some(serde_json::from_slice::<Outcome>(&msg.payload).expect("the ledger's outcome"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(answered, Some(Outcome::Receipt(_))), "{answered:?}");

    // Another actor's subject, the committed stream, another's receipts: nothing gets through.
    let theirs: Bytes = sign(&other, &event(&other, "rogue-theirs", "mined", json!({"lot": "ROGUE2", "carats": "1.00", "country": "CA"}))).into();
    let req = async_nats::Request::new().payload(theirs).timeout(Some(Duration::from_secs(2)));
    assert!(client.send_request(subjects::submit(&other.public_key()), req).await.is_err(), "the hub took another actor's subject from the leaf");
    client.publish(subjects::ENTRIES_SUBJECT, "forged".into()).await.unwrap();
    let mut spy = client.subscribe(format!("{}.>", custody_wire::connect::inbox_prefix(&other.public_key()))).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ =
        custody::client::submit(&at_hub, sign(&other, &event(&other, "hub-own", "mined", json!({"lot": "HUB1", "carats": "1.00", "country": "CA"}))).into())
            .await
            .unwrap();
    use futures::StreamExt as _;
    assert!(tokio::time::timeout(Duration::from_secs(1), spy.next()).await.is_err(), "another actor's replies reached the leaf");
    assert_eq!(head(&at_hub).await, before + 2, "only its own event and the other's own came in");
    let on_stream = custody_wire::follow::Reader::ledger(&hub.service("gateway").await).last_seq().await.unwrap();
    assert_eq!(on_stream, before + 2, "nothing forged reached the committed stream");
}
