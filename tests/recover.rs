//! Recovery both ways: a damaged store rebuilt from the committed stream by
//! `custody ledger recover` (every entry re-verified, the old store kept
//! aside), and a lost committed stream refilled from the store when the
//! ledger starts, or while it writes; a lost lease bucket made again.

mod common;

use async_nats::jetstream;
use common::*;
use custody_wire::subjects;
use serde_json::json;

/// 300 events, and the committed stream caught up with them (a receipt
/// can leave before its entry is published).
async fn history(sys: &System) {
    let m = sys.actor("rec-miner", "miner", "BW").await;
    for i in 0..300 {
        sys.accept(&m, &event(&m, &format!("rec-{i}"), "mined", json!({"lot": format!("REC{i}"), "carats": "3.00", "country": "BW"}))).await;
    }
    sys.stream_caught_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_rebuilt_from_the_committed_stream() {
    let mut sys = System::start().await;
    history(&sys).await;
    let head = sys.head().await;
    sys.kill_ledger();

    // Damage: the store loses the second half of its log.
    let db = sys.ledger_dir().join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (status, err) = sys.ledger_refusal();
    assert_ne!(status, Some(0), "a damaged store is refused: {err}");

    let out = sys.custody(&["ledger", "recover", "--data", sys.ledger_dir().to_str().unwrap(), "--authority", &sys.authority.public_key()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["recovered"], head.0);
    assert!(std::path::Path::new(v["old_store_moved_to"].as_str().unwrap()).join("db").exists(), "the damaged store is kept aside");

    let out = sys.custody(&["verify", "--json", "--data", sys.ledger_dir().to_str().unwrap()], None);
    let verified: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(verified["entries"], head.0);
    assert_eq!(verified["head"].as_str(), head.1.as_deref());

    // The ledger serves the same history and goes on from it.
    sys.start_ledger().await;
    assert_eq!(sys.head().await, head);
    let m = sys.actor("rec-after", "miner", "CA").await;
    let r = sys.accept(&m, &event(&m, "rec-after-1", "mined", json!({"lot": "RA1", "carats": "1.00", "country": "CA"}))).await;
    assert_eq!(r.seq, head.0 + 2);
    // An event already in the recovered history is still known.
    let again = sys.submit(&m, &event(&m, "rec-after-1", "mined", json!({"lot": "RA1", "carats": "1.00", "country": "CA"}))).await;
    assert_eq!(code(&again), "receipt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_committed_stream_is_refilled_from_the_store() {
    let mut sys = System::start().await;
    history(&sys).await;
    let head = sys.head().await;
    sys.kill_ledger();
    let js = jetstream::new(sys.client.clone());
    js.delete_stream(subjects::LEDGER_STREAM).await.unwrap();

    sys.start_ledger().await;
    assert_eq!(sys.stream_caught_up().await, head.0, "the stream is refilled from the store");
    let out = sys.custody(&["verify", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["head"].as_str(), head.1.as_deref());
}

/// Receipts for `n` new events, sent and resent (same bytes) until each
/// has an outcome, within `within`.
async fn receipted_within(sys: &System, prefix: &str, n: usize, within: std::time::Duration) -> Vec<custody_proto::Receipt> {
    let m = sys.actor(&format!("{prefix}-miner"), "miner", "ZA").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producers = produce(&sys.client, vec![mined(&m, prefix, n)], 8, std::time::Duration::from_millis(1000), done);
    let outcomes = tokio::time::timeout(within, futures::future::join_all(producers)).await.expect("every event answered in time");
    outcomes
        .into_iter()
        .flat_map(|o| o.unwrap())
        .map(|o| match o {
            custody_proto::Outcome::Receipt(r) => r,
            other => panic!("refused: {other:?}"),
        })
        .collect()
}

/// The committed stream deleted under a running writer (before: the
/// writer read it back every 250 ms for ever, renewing its lease, and
/// nothing more was receipted): the writer steps down after 5 s without
/// an answer, takes its lease back, makes the stream again, refills it
/// from its store (which holds every receipted entry), and writes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_under_the_writer_is_made_again_and_refilled_and_writes_go_on() {
    let sys = System::start().await;
    history(&sys).await;
    let head = sys.head().await;
    jetstream::new(sys.client.clone()).delete_stream(subjects::LEDGER_STREAM).await.unwrap();

    let receipts = receipted_within(&sys, "after-deletion", 20, std::time::Duration::from_secs(60)).await;
    assert_eq!(receipts.len(), 20);
    let now = sys.head().await;
    assert!(receipts.iter().all(|r| r.seq > head.0 && r.seq <= now.0), "new entries after the old head");
    assert_eq!(sys.stream_caught_up().await, now.0, "the stream holds the whole history again");
    let out = sys.custody(&["verify", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!((v["ok"].as_bool(), v["head"].as_str()), (Some(true), now.1.as_deref()), "{v}");
    assert!(sys.ledger_log().contains("publishing them again"), "{}", sys.ledger_log());
}

/// The lease bucket deleted under a running writer (before: its renewals
/// failed, it stepped down, and no replica could take the lease again
/// until a process restarted): the bucket is made again, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_bucket_deleted_under_the_writer_is_made_again_and_writes_go_on() {
    let sys = System::start().await;
    history(&sys).await;
    let js = jetstream::new(sys.client.clone());
    js.delete_key_value(custody_ledger::lease::BUCKET).await.unwrap();

    // The writer's renewals fail; past the ttl it steps down, and taking
    // the lease again makes the bucket anew.
    let mut bucket = None;
    for _ in 0..300 {
        if let Ok(kv) = js.get_key_value(custody_ledger::lease::BUCKET).await {
            bucket = Some(kv);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let kv = bucket.unwrap_or_else(|| panic!("the lease bucket is made again within 30 s: {}", sys.ledger_log()));
    let receipts = receipted_within(&sys, "after-bucket", 10, std::time::Duration::from_secs(60)).await;
    assert_eq!(receipts.len(), 10);
    let holder = kv.get(custody_ledger::lease::KEY).await.unwrap();
    assert!(holder.is_some(), "the writer holds the lease in it");
}
