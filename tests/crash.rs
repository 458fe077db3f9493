//! The crash loop: kill -9 the ledger at 10 seeded random moments while
//! 20,000 envelopes are in flight from 4 producers, restarting it each time,
//! and check the promise: every event that got a receipt is in the ledger
//! exactly once, at the seq and hash its receipt names; the chain verifies;
//! the committed stream and the store agree entry for entry; and the
//! projection, which followed it all, has the digest of a clean replay.
//! Then the same promise with crashes at the write path's named points.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use custody_ledger::Store;
use custody_proto::{Event, Opened, Outcome, Receipt};

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 5_000;
const WINDOW: usize = 64;
const KILLS: usize = 10;
/// Seeds the kill moments and pauses; printed so a failure can be replayed.
const SEED: u64 = 0x0C05_70D1;

/// Kill moments (receipts seen) and how long the ledger stays down.
fn schedule(seed: u64) -> Vec<(usize, u64)> {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    let total = (PRODUCERS * PER_PRODUCER) as u64;
    let mut at: Vec<(usize, u64)> = (0..KILLS).map(|_| ((total / 40 + next() % (total * 9 / 10)) as usize, 20 + next() % 400)).collect();
    at.sort();
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_nothing() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let mut miners = Vec::new();
    for p in 0..PRODUCERS {
        miners.push(sys.actor(&format!("crash-miner-{p}"), "miner", "ZA").await);
    }
    let registrations = sys.head().await.0;

    let done = Arc::new(AtomicUsize::new(0));
    let lists = miners.iter().enumerate().map(|(p, m)| mined(m, &format!("c-{p}"), PER_PRODUCER)).collect();
    let producers = produce(&sys.client, lists, WINDOW, Duration::from_millis(1500), done.clone());

    eprintln!("crash loop seed {SEED:#x}: kills at {:?}", schedule(SEED));
    for (at, down_ms) in schedule(SEED) {
        while done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sys.kill_ledger();
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        sys.start_ledger().await;
    }

    let receipts = receipts_of(producers).await;
    assert_eq!(receipts.len(), PRODUCERS * PER_PRODUCER);
    kept_its_promise(&mut sys, &receipts, registrations).await;
}

/// The ledger's write path crashed at each of its named points (the stream
/// acked, the store not synced; the store synced, no outcome sent; a
/// replica following the stream into its store) while 2 producers keep
/// resending: every receipted event once, at its seq and hash, on the
/// stream and in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_in_the_write_path_lose_and_duplicate_nothing() {
    use std::os::unix::process::ExitStatusExt as _;

    let mut sys = System::start().await;
    sys.start_projection().await;
    let miners = [sys.actor("cp-miner-0", "miner", "ZA").await, sys.actor("cp-miner-1", "miner", "ZA").await];
    let registrations = sys.head().await.0;
    let done = Arc::new(AtomicUsize::new(0));
    let lists = miners.iter().enumerate().map(|(p, m)| mined(m, &format!("cp-{p}"), 1_500)).collect();
    let producers = produce(&sys.client, lists, 32, Duration::from_millis(1500), done.clone());

    // Each point, with traffic flowing: killed and restarted with the
    // point armed, the ledger aborts there; then it starts clean. After
    // `ledger.committed` the stream holds a group the store lacks, so the
    // next start follows it (`ledger.following`).
    let plan = [(200, "ledger.committed:2"), (200, "ledger.following:1"), (800, "ledger.synced:3"), (1_600, "ledger.committed:1")];
    for (at, point) in plan {
        while done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sys.kill_ledger();
        sys.spawn_ledger_crashing_at(point);
        let status = sys.ledger_exit().await;
        assert_eq!(status.signal(), Some(6), "{point}: aborted at the crash point: {}", sys.ledger_log());
        assert!(sys.ledger_log().contains("crash point"), "{point}");
        eprintln!("{point}: crashed there after {} receipts", done.load(Ordering::Relaxed));
        if point != "ledger.committed:2" {
            sys.start_ledger().await;
        }
    }

    let receipts = receipts_of(producers).await;
    assert_eq!(receipts.len(), 3_000);
    kept_its_promise(&mut sys, &receipts, registrations).await;
}

/// Each producer's outcomes, all receipts, one per event, by event id.
async fn receipts_of(producers: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> HashMap<String, Receipt> {
    let mut receipts: HashMap<String, Receipt> = HashMap::new();
    for p in producers {
        for outcome in p.await.unwrap() {
            let Outcome::Receipt(r) = outcome else { panic!("refused: {outcome:?}") };
            assert!(receipts.insert(r.id.clone(), r).is_none(), "one outcome per event");
        }
    }
    receipts
}

/// Every receipted event exactly once, at the seq and hash its receipt
/// names, on the stream and in the store; the projection at the digest of
/// a clean replay.
async fn kept_its_promise(sys: &mut System, receipts: &HashMap<String, Receipt>, registrations: u64) {
    let head = sys.head().await;
    assert_eq!(head.0, registrations + receipts.len() as u64, "every event exactly once: no loss, no duplicate");

    // The committed stream catches up: same length and head as the store.
    assert_eq!(sys.stream_caught_up().await, head.0, "committed stream holds every entry");
    let out = sys.custody(&["verify", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(out.status.success(), "stream verify: {v}");
    assert_eq!(v["entries"], head.0);
    assert_eq!(v["head"].as_str(), head.1.as_deref());

    // The projection followed the whole history, restarts and all: its
    // digest is that of a clean replay.
    let followed = sys.projection_caught_up().await;
    let rebuilt = sys.rebuild(&sys.dir.path().join("rebuilt"));
    assert_eq!(rebuilt["seq"], followed["seq"]);
    assert_eq!(rebuilt["digest"], followed["digest"]);

    // And the store, offline: every receipt names its own entry.
    sys.kill_ledger();
    let out = sys.custody(&["verify", "--json", "--data", sys.ledger_dir().to_str().unwrap()], None);
    assert!(out.status.success(), "store verify: {}", stdout(&out));
    let store = Store::open(&sys.ledger_dir()).unwrap();
    for r in receipts.values() {
        let e = store.get(r.seq).unwrap().expect("receipted entry exists");
        assert_eq!(e.hash, r.hash, "seq {}", r.seq);
        let opened = Opened::open(e.envelope).unwrap();
        let ev = Event::parse(&opened.payload, e.recorded_at).unwrap();
        assert_eq!(ev.id.as_str(), r.id, "seq {} holds another event", r.seq);
    }
}
