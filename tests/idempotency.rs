//! The same event again returns the first receipt and writes nothing, on
//! both submission paths: request-reply and the durable inbox stream.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::*;
use custody_proto::Outcome;
use custody_wire::subjects;
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_envelope_three_times_gives_one_entry_and_three_identical_receipts() {
    let sys = System::start().await;
    let miner = sys.actor("m", "miner", "CA").await;
    let env = sign(&miner, &event(&miner, "once", "mined", json!({"lot": "O1", "carats": "3.00", "country": "CA"})));
    let before = sys.head().await;
    let mut receipts = Vec::new();
    for _ in 0..3 {
        let Outcome::Receipt(r) = sys.submit_raw(env.clone()).await else { panic!("refused") };
        receipts.push(r);
    }
    assert_eq!(receipts[0], receipts[1]);
    assert_eq!(receipts[1], receipts[2]);
    let after = sys.head().await;
    assert_eq!(after.0, before.0 + 1, "one entry, not three");
    assert_eq!(after.1.as_deref(), Some(receipts[0].hash.to_hex().as_str()));

    // Re-signed (new signature bytes, same payload): still the first receipt.
    let Outcome::Receipt(r) = sys.submit(&miner, &event(&miner, "once", "mined", json!({"lot": "O1", "carats": "3.00", "country": "CA"}))).await else {
        panic!()
    };
    assert_eq!(r, receipts[0]);
    assert_eq!(sys.head().await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_stream_submissions_get_receipts_and_rejections() {
    let sys = System::start().await;
    let miner = sys.actor("m", "miner", "CA").await;
    let js = jetstream::new(sys.client.clone());

    // Published without waiting on the ledger: JetStream holds them.
    let ok = sign(&miner, &event(&miner, "inbox-1", "mined", json!({"lot": "I1", "carats": "1.00", "country": "CA"})));
    let bad = sign(&miner, &event(&miner, "inbox-2", "mined", json!({"lot": "I1", "carats": "1.00", "country": "CA"})));
    for raw in [ok.clone(), bad, ok] {
        js.publish(subjects::inbox(&miner.public_key()), raw.into()).await.unwrap().await.unwrap();
    }

    let receipts = js.get_stream(subjects::RECEIPTS_STREAM).await.unwrap();
    let consumer = receipts
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: subjects::receipts(&miner.public_key()), ..Default::default() })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    // A marker after them: the ledger takes the inbox in order and the
    // receipts stream keeps it, so whatever the duplicate produced comes
    // before the marker's outcome.
    let marker = sign(&miner, &event(&miner, "inbox-marker", "mined", json!({"lot": "I2", "carats": "1.00", "country": "CA"})));
    js.publish(subjects::inbox(&miner.public_key()), marker.into()).await.unwrap().await.unwrap();
    let mut outcomes = Vec::new();
    while !outcomes.iter().any(|o| matches!(o, Outcome::Receipt(r) if r.id == "inbox-marker")) {
        let msg = tokio::time::timeout(Duration::from_secs(20), messages.next()).await.expect("outcome arrives").unwrap().unwrap();
        outcomes.push(serde_json::from_slice::<Outcome>(&msg.payload).unwrap());
    }
    let Outcome::Receipt(first) = &outcomes[0] else { panic!("{:?}", outcomes[0]) };
    assert_eq!(first.id, "inbox-1");
    assert_eq!(code(&outcomes[1]), "lot_exists");
    // The duplicate's receipt is deduplicated by message id on the receipts stream.
    assert_eq!(outcomes.len(), 3, "no third outcome message before the marker's: {outcomes:?}");
    let Outcome::Receipt(marked) = &outcomes[2] else { unreachable!() };
    assert_eq!(sys.head().await.0, marked.seq);
    assert_eq!(marked.seq, first.seq + 1, "the duplicate wrote nothing");
    // Acks follow the receipts; give the last one a moment to land.
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = js.get_stream(subjects::INBOX_STREAM).await.unwrap().get_info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "every inbox message was acked after its outcome");
}
