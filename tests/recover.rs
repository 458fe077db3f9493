//! Recovery both ways: a damaged store rebuilt from the committed stream by
//! `custody ledger recover` (every entry re-verified, the old store kept
//! aside), and a lost committed stream refilled from the store when the
//! ledger starts.

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
