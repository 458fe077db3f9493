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
use custody_ledger::{subjects, Store};
use custody_proto::{Outcome, Receipt};
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
    let head = sys.head().await;
    assert_eq!(head.0, 4 + 6_000, "every event once");

    // The stream is refilled to the store's head, and verifies.
    assert_eq!(sys.stream_caught_up().await, head.0, "the committed stream holds every entry again");
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "{}", stdout(&out));

    // The projection reconnected by itself and agrees with a clean replay.
    let followed = sys.projection_caught_up().await;
    let out = sys.custody(&["projection", "rebuild", "--data", sys.dir.path().join("rebuilt").to_str().unwrap()], None);
    let rebuilt: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(rebuilt["digest"], followed["digest"]);

    sys.kill_ledger();
    let store = Store::open(&sys.ledger_dir()).unwrap();
    for r in receipts.values() {
        assert_eq!(store.get(r.seq).unwrap().unwrap().hash.to_hex(), r.hash);
    }
}
