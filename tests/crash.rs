//! kill -9 the ledger while 10,000 envelopes are in flight from concurrent
//! producers, restart it, and check the promise: every event that got a
//! receipt is in the ledger exactly once, at the seq and hash its receipt
//! names; the chain verifies; the committed stream holds every entry once,
//! in order.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use common::*;
use custody_ledger::{subjects, Store};
use custody_proto::{Event, Opened, Outcome, Receipt};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 2_500;
const WINDOW: usize = 64;
/// Receipts after which the ledger is killed.
const KILL_AT: [usize; 2] = [2_000, 6_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_nothing() {
    let mut sys = System::start().await;
    let mut miners = Vec::new();
    for p in 0..PRODUCERS {
        miners.push(sys.actor(&format!("crash-miner-{p}"), "miner", "ZA").await);
    }
    let registrations = sys.head().await.0;

    let done = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for (p, m) in miners.iter().enumerate() {
        let envelopes: Vec<Bytes> = (0..PER_PRODUCER)
            .map(|i| sign(m, &event(m, &format!("c-{p}-{i}"), "mined", json!({"lot": format!("C{p}-{i}"), "carats": "1.25", "country": "ZA"}))).into())
            .collect();
        let (client, done) = (sys.client.clone(), done.clone());
        producers.push(tokio::spawn(async move {
            let mut receipts = Vec::with_capacity(envelopes.len());
            let mut inflight = FuturesUnordered::new();
            for env in envelopes {
                if inflight.len() >= WINDOW {
                    receipts.push(inflight.next().await.unwrap());
                }
                let client = client.clone();
                let done = done.clone();
                inflight.push(async move {
                    let out = custody::client::submit(&client, env).await.expect("a receipt, eventually");
                    done.fetch_add(1, Ordering::Relaxed);
                    out
                });
            }
            while let Some(r) = inflight.next().await {
                receipts.push(r);
            }
            receipts
        }));
    }

    for at in KILL_AT {
        while done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sys.kill_ledger();
        tokio::time::sleep(Duration::from_millis(300)).await;
        sys.start_ledger().await;
    }

    let mut receipts: HashMap<String, Receipt> = HashMap::new();
    for p in producers {
        for outcome in p.await.unwrap() {
            let Outcome::Receipt(r) = outcome else { panic!("refused: {outcome:?}") };
            assert!(receipts.insert(r.id.clone(), r).is_none(), "one outcome per event");
        }
    }
    assert_eq!(receipts.len(), PRODUCERS * PER_PRODUCER);
    let head = sys.head().await;
    assert_eq!(head.0, registrations + receipts.len() as u64, "every event exactly once: no loss, no duplicate");

    // The committed stream catches up: same length and head as the store.
    let js = jetstream::new(sys.client.clone());
    let mut stream_last = 0;
    for _ in 0..200 {
        stream_last = js.get_stream(subjects::LEDGER_STREAM).await.unwrap().get_info().await.unwrap().state.last_sequence;
        if stream_last == head.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stream_last, head.0, "committed stream holds every entry");
    let out = sys.custody(&["verify", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(out.status.success(), "stream verify: {v}");
    assert_eq!(v["entries"], head.0);
    assert_eq!(v["head"].as_str(), head.1.as_deref());

    // And the store, offline: every receipt names its own entry.
    sys.kill_ledger();
    let out = sys.custody(&["verify", "--json", "--data", sys.ledger_dir().to_str().unwrap()], None);
    assert!(out.status.success(), "store verify: {}", stdout(&out));
    let store = Store::open(&sys.ledger_dir()).unwrap();
    for r in receipts.values() {
        let e = store.get(r.seq).unwrap().expect("receipted entry exists");
        assert_eq!(e.hash.to_hex(), r.hash, "seq {}", r.seq);
        let opened = Opened::open(e.envelope).unwrap();
        let ev = Event::parse(&opened.payload, e.recorded_at).unwrap();
        assert_eq!(ev.id.as_str(), r.id, "seq {} holds another event", r.seq);
    }
}
