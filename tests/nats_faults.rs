//! NATS itself dies: kill -9 nats-server mid-burst and restart it on the
//! same port with its JetStream folder kept. Producers resend the same
//! bytes; the ledger and the projection reconnect on their own (they are not
//! restarted); nothing receipted is lost or duplicated, and the committed
//! stream (which may lose an unsynced tail in the kill) is refilled from the
//! ledger's store.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use custody_ledger::Store;
use custody_proto::{Outcome, Receipt};
use custody_wire::subjects;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_mid_burst() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let mut miners = Vec::new();
    for p in 0..4 {
        miners.push(sys.actor(&format!("nf-miner-{p}"), "miner", "CA").await);
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for (p, m) in miners.iter().enumerate() {
        let envelopes: Vec<Bytes> = (0..1_500)
            .map(|i| sign(m, &event(m, &format!("nf-{p}-{i}"), "mined", json!({"lot": format!("NF{p}-{i}"), "carats": "2.00", "country": "CA"}))).into())
            .collect();
        let (client, done, subject) = (sys.client.clone(), done.clone(), subjects::submit(&m.public_key()));
        producers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut inflight = FuturesUnordered::new();
            for env in envelopes {
                if inflight.len() >= 32 {
                    out.push(inflight.next().await.unwrap());
                }
                let (client, done, subject) = (client.clone(), done.clone(), subject.clone());
                inflight.push(async move {
                    let r = custody::client::submit_patiently(&client, subject, env, Duration::from_millis(1500)).await.expect("a receipt, eventually");
                    done.fetch_add(1, Ordering::Relaxed);
                    r
                });
            }
            while let Some(r) = inflight.next().await {
                out.push(r);
            }
            out
        }));
    }
    while done.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sys.nats.restart().expect("nats-server restarts on its port and folder");

    let mut receipts: HashMap<String, Receipt> = HashMap::new();
    for p in producers {
        for o in p.await.unwrap() {
            let Outcome::Receipt(r) = o else { panic!("refused: {o:?}") };
            receipts.insert(r.id.clone(), r);
        }
    }
    assert_eq!(receipts.len(), 6_000);
    recovered(&mut sys, 4 + 6_000, receipts.values()).await;
}

/// After the restart: every event once, the committed stream refilled to
/// the store's head and verifying, the projection (reconnected by itself)
/// at a clean replay's digest, and every receipt naming its stored entry.
async fn recovered(sys: &mut System, events: u64, receipts: impl Iterator<Item = &Receipt>) {
    let head = sys.head().await;
    assert_eq!(head.0, events, "every event once, none twice");
    assert_eq!(sys.stream_caught_up().await, head.0, "the committed stream holds every entry again");
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "{}", stdout(&out));
    let followed = sys.projection_caught_up().await;
    assert_eq!(sys.rebuild(&sys.dir.path().join("rebuilt"))["digest"], followed["digest"]);

    sys.kill_ledger();
    let store = Store::open(&sys.ledger_dir()).unwrap();
    for r in receipts {
        let entry = store.get(r.seq).unwrap().expect("every receipt names a stored entry");
        assert_eq!(entry.hash, r.hash);
    }
}

/// The durable path: producers publish on their JetStream inbox and read
/// outcomes from the receipts stream. nats-server is killed mid-burst. A
/// JetStream ack on the inbox is not a receipt (the server may lose an
/// unsynced tail), so a producer re-publishes, with the same bytes, every
/// event that has no outcome yet; the ledger's consumer resumes on its own
/// and idempotency answers a re-sent event with its first receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_under_the_inbox() {
    use async_nats::jetstream::{self, consumer};

    const PER_MINER: usize = 1_000;
    let mut sys = System::start().await;
    sys.start_projection().await;
    let mut miners = Vec::new();
    for p in 0..4 {
        miners.push(sys.actor(&format!("ni-miner-{p}"), "miner", "CA").await);
    }
    let mut envelopes: HashMap<String, (String, Bytes)> = HashMap::new();
    for (p, m) in miners.iter().enumerate() {
        for i in 0..PER_MINER {
            let id = format!("ni-{p}-{i}");
            let raw = sign(m, &event(m, &id, "mined", json!({"lot": format!("NI{p}-{i}"), "carats": "1.50", "country": "CA"})));
            envelopes.insert(id, (subjects::inbox(&m.public_key()), raw.into()));
        }
    }

    // Publish until JetStream acks, retrying through the outage.
    async fn publish(js: &jetstream::Context, subject: &str, raw: &Bytes) {
        for _ in 0..600 {
            if let Ok(ack) = js.publish(subject.to_owned(), raw.clone()).await {
                if ack.await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the inbox never took the envelope");
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for m in &miners {
        let mine: Vec<(String, Bytes)> = envelopes.values().filter(|(s, _)| *s == subjects::inbox(&m.public_key())).cloned().collect();
        let (js, acked) = (jetstream::new(sys.client.clone()), acked.clone());
        producers.push(tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            for (subject, raw) in mine {
                if inflight.len() >= 64 {
                    inflight.next().await;
                }
                let (js, acked) = (js.clone(), acked.clone());
                inflight.push(async move {
                    publish(&js, &subject, &raw).await;
                    acked.fetch_add(1, Ordering::Relaxed);
                });
            }
            while inflight.next().await.is_some() {}
        }));
    }
    while acked.load(Ordering::Relaxed) < 1_500 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sys.nats.restart().expect("nats-server restarts on its port and folder");
    for p in producers {
        p.await.unwrap();
    }

    // Read every outcome on the receipts stream; re-send what has none.
    let js = jetstream::new(sys.client.clone());
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    let mut resent = 0;
    for round in 0.. {
        assert!(round < 40, "{} events never got an outcome; ledger log:\n{}", envelopes.len() - outcomes.len(), sys.ledger_log());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let Ok(mut stream) = js.get_stream(subjects::RECEIPTS_STREAM).await else { continue };
        let Ok(info) = stream.info().await else { continue };
        let total = info.state.messages;
        let Ok(c) = stream.create_consumer(consumer::pull::OrderedConfig { filter_subject: "custody.receipts.>".into(), ..Default::default() }).await else {
            continue;
        };
        let Ok(mut messages) = c.messages().await else { continue };
        for _ in 0..total {
            match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(Ok(msg))) => {
                    let o: Outcome = serde_json::from_slice(&msg.payload).expect("outcomes are JSON");
                    let id = match &o {
                        Outcome::Receipt(r) => r.id.clone(),
                        Outcome::Rejected(r) => panic!("refused: {r:?}"),
                    };
                    outcomes.insert(id, o);
                }
                _ => break,
            }
        }
        if outcomes.len() == envelopes.len() {
            break;
        }
        // Give the ledger a round to drain the inbox before re-sending.
        if round >= 2 {
            for (id, (subject, raw)) in &envelopes {
                if !outcomes.contains_key(id) {
                    publish(&js, subject, raw).await;
                    resent += 1;
                }
            }
        }
    }
    eprintln!("re-sent {resent} envelopes with no outcome after the restart");

    let receipts = outcomes.values().filter_map(|o| match o {
        Outcome::Receipt(r) => Some(r),
        Outcome::Rejected(_) => None,
    });
    recovered(&mut sys, 4 + (4 * PER_MINER) as u64, receipts).await;
}
