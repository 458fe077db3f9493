//! The ledger on a three-server JetStream cluster (R3, `sync_interval:
//! always`), with a standby: real nats-servers and ledger processes on
//! loopback, killed, paused, wiped and restarted, and the promise checked
//! each time: every receipted event is on the committed stream exactly
//! once, at the seq and hash its receipt names, and the chain verifies.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use custody_proto::{Outcome, Receipt};
use serde_json::json;

/// One cluster at a time: three servers, two ledgers and the producers
/// already fill this machine's two cores.
/// (Each test has its own runtime; tokio's mutex wakes across them, and a
/// failed test leaves it unpoisoned.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 5_000;
const WINDOW: usize = 64;

/// Four registered miners and their 20,000 envelopes.
async fn load(c: &Cluster, tag: &str) -> Vec<Vec<bytes::Bytes>> {
    let mut lists = Vec::new();
    for p in 0..PRODUCERS {
        let m = c.miner(&format!("{tag}-miner-{p}")).await;
        lists.push(mined(&m, &format!("{tag}-{p}"), PER_PRODUCER));
    }
    lists
}

async fn wait_for(done: &AtomicUsize, at: usize) {
    while done.load(Ordering::Relaxed) < at {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every outcome a receipt; all of them, once each.
async fn receipts(producers: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Receipt> {
    let mut out = Vec::new();
    for p in producers {
        for o in p.await.expect("a producer") {
            match o {
                Outcome::Receipt(r) => out.push(r),
                Outcome::Rejected(r) => panic!("refused: {} {}", r.code, r.message),
            }
        }
    }
    assert_eq!(out.len(), PRODUCERS * PER_PRODUCER);
    out
}

/// The promise, checked on the committed stream read from the cluster.
async fn every_receipt_once(c: &Cluster, receipts: &[Receipt]) -> u64 {
    let entries = c.stream_entries().await;
    let head = c.head().await;
    assert_eq!(entries.len() as u64, head.0, "the writer's head is the stream's end");
    let registrations = PRODUCERS as u64;
    assert_eq!(head.0, registrations + receipts.len() as u64, "every event exactly once: none lost, none twice");
    checked_history(entries, receipts);
    let v = c.verify();
    assert_eq!(v["entries"], head.0);
    assert_eq!(v["head"].as_str(), head.1.as_deref());
    head.0
}

/// Seconds from `since` until `done` passes `before`: the first receipt
/// after a failure.
async fn first_receipt_after(done: &AtomicUsize, before: usize, since: Instant) -> Duration {
    wait_for(done, before + 1).await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_killed_under_load_the_standby_takes_over_and_nothing_is_lost() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(2).await;
    let lists = load(&c, "kw").await;
    let done = Arc::new(AtomicUsize::new(0));
    let producers = produce(&c.client, lists, WINDOW, Duration::from_millis(1500), done.clone());

    wait_for(&done, 5_000).await;
    let writer = c.writer().await;
    c.kill_ledger(writer);
    let killed = Instant::now();
    eprintln!("killed the writer at {}", chrono::Utc::now().to_rfc3339());
    let before = done.load(Ordering::Relaxed);
    let took = first_receipt_after(&done, before, killed).await;
    eprintln!("failover: {:.2} s from kill -9 of the writer to the first receipt by the standby", took.as_secs_f64());
    assert_eq!(c.writer().await, 1 - writer, "the standby is the writer");
    eprintln!("{}", c.ledger_log(1 - writer).lines().filter(|l| l.contains("lease")).collect::<Vec<_>>().join("\n"));

    let receipts = receipts(producers).await;
    let head = every_receipt_once(&c, &receipts).await;

    // The killed replica comes back as a standby and follows to the head,
    // through a consumer of its own, named by its instance (issue 29).
    c.spawn_ledger(writer);
    let out = wait_store(&mut c, writer, head).await;
    let instance = custody_ledger::lease::instance_id(&c.ledger_dir(writer)).unwrap();
    let own = custody_wire::subjects::replica_consumer(&instance);
    let info = async_nats::jetstream::new(c.client.clone()).get_stream(custody_wire::subjects::LEDGER_STREAM).await.unwrap().consumer_info(&own).await;
    assert!(info.as_ref().is_ok_and(|i| i.delivered.stream_sequence >= head), "the standby's consumer {own}: {:?}", info.map(|i| i.delivered));
    assert!(out.status.success(), "the restarted standby's store verifies: {}", stdout(&out));
}

/// Waits until replica `i`'s store holds `head` entries (it follows the
/// stream as a standby), then verifies it.
async fn wait_store(c: &mut Cluster, i: usize, head: u64) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    // The store is locked while its ledger runs: the standby logs how far
    // it has followed.
    while followed(&c.ledger_log(i)) < head {
        assert!(Instant::now() < deadline, "replica {i} never followed to {head}: {}", c.ledger_log(i));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.verify_store(i)
}

fn followed(log: &str) -> u64 {
    log.lines().filter_map(|l| l.split("followed=").nth(1)).filter_map(|s| s.split_whitespace().next()?.parse().ok()).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_leading_the_committed_stream_killed_under_load_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(2).await;
    // A projection follows the stream through the server loss too.
    c.spawn_projection(0);
    let lists = load(&c, "kl").await;
    let done = Arc::new(AtomicUsize::new(0));
    let producers = produce(&c.client, lists, WINDOW, Duration::from_millis(1500), done.clone());

    wait_for(&done, 5_000).await;
    let leader = c.stream_leader().await;
    c.nats.servers[leader].kill();
    let killed = Instant::now();
    let before = done.load(Ordering::Relaxed);
    let took = first_receipt_after(&done, before, killed).await;
    eprintln!("stream leader n{} killed: first receipt {:.2} s later", leader + 1, took.as_secs_f64());
    wait_for(&done, 12_000).await;
    c.nats.servers[leader].restart().expect("the server restarts");

    let receipts = receipts(producers).await;
    let head = every_receipt_once(&c, &receipts).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = c.client.request(custody_wire::subjects::QUERY_DIGEST, "{}".into());
        let seq = match tokio::time::timeout(Duration::from_secs(2), req).await {
            Ok(Ok(msg)) => serde_json::from_slice::<serde_json::Value>(&msg.payload).ok().and_then(|v| v["seq"].as_u64()),
            _ => None,
        };
        if seq == Some(head) {
            break;
        }
        assert!(Instant::now() < deadline, "the projection stopped at {seq:?}, the stream ends at {head}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_disk_is_lost_loses_no_receipted_event() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(1).await;
    let lists = load(&c, "dl").await;
    let done = Arc::new(AtomicUsize::new(0));
    let producers = produce(&c.client, lists, WINDOW, Duration::from_millis(1500), done.clone());

    wait_for(&done, 8_000).await;
    // The old gap: a receipt used to leave once the entry was on this disk
    // only. Now it leaves once two servers hold it.
    let key = std::fs::read(c.ledger_dir(0).join("ledger.nk")).expect("the ledger's key");
    c.kill_ledger(0);
    std::fs::remove_dir_all(c.ledger_dir(0)).expect("the ledger's data folder is gone");
    // Without its key the replica refuses to sign with a new one (issue 26:
    // a wiped folder used to make itself a key no verifier trusts)...
    c.spawn_ledger(0);
    let refused = c.ledgers[0].take().expect("started").exit_within(Duration::from_secs(60)).await.0.expect("it exits");
    assert!(!refused.success());
    let log = c.ledger_log(0);
    assert!(log.contains("does not exist, and this ledger's checkpoints are signed by"), "{log}");
    // ...and with the key put back, as an operator restores a host, it
    // rebuilds from the stream.
    std::fs::create_dir_all(c.ledger_dir(0)).unwrap();
    std::fs::write(c.ledger_dir(0).join("ledger.nk"), key).unwrap();
    c.spawn_ledger(0);

    let receipts = receipts(producers).await;
    let head = every_receipt_once(&c, &receipts).await;
    let log = c.ledger_log(0);
    assert!(log.contains("writer lease taken"), "{log}");
    // The replacement rebuilt its store from the stream: it verifies, to
    // the same head.
    let out = c.verify_store(0);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("verify prints JSON");
    assert!(out.status.success(), "{v}");
    assert_eq!(v["entries"], head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_writer_is_fenced_off_when_it_wakes_and_the_chain_has_no_fork() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(2).await;
    let old = c.writer().await;
    let m = c.miner("pause-miner").await;
    let before = c.head().await.0;

    // Frozen past its lease, with submissions waiting in its socket.
    c.signal_ledger(old, libc::SIGSTOP);
    let done = Arc::new(AtomicUsize::new(0));
    let producers = produce(&c.client, vec![mined(&m, "pz", 400)], 16, Duration::from_millis(1000), done.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.lease_holder().await.as_deref() != Some(&format!("ledger-{}", 1 - old)) {
        assert!(Instant::now() < deadline, "the standby never took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&done, 200).await;
    c.signal_ledger(old, libc::SIGCONT);

    let mut receipts = Vec::new();
    for p in producers {
        for o in p.await.unwrap() {
            let Outcome::Receipt(r) = o else { panic!("refused: {o:?}") };
            receipts.push(r);
        }
    }
    assert_eq!(receipts.len(), 400);
    // The old writer stepped down instead of writing on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.ledger_log(old).contains("no longer the writer") {
        assert!(Instant::now() < deadline, "the woken writer never stepped down: {}", c.ledger_log(old));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.writer().await, 1 - old);
    // One history: linked from seq 1 (a fork would break a link), every
    // receipt on it, each event once.
    let entries = c.stream_entries().await;
    assert_eq!(entries.len() as u64, before + 400);
    checked_history(entries, &receipts);
    c.verify();
    // And the woken replica, now a standby, still runs.
    assert!(c.ledgers[old].as_mut().unwrap().child_mut().try_wait().unwrap().is_none(), "{}", c.ledger_log(old));
}

/// Issue 26: a writer paused past its lease woke and answered, from its
/// old state, the requests buffered for it: a miner registered meanwhile
/// through the new writer was told `unknown_actor`, which a producer takes
/// as final. Refusals that no append fenced now wait for a read barrier
/// (the stream still ends where the writer decided them), and the woken
/// writer steps down instead of answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_writer_sends_no_refusal_decided_on_its_old_state() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(2).await;
    let old = c.writer().await;
    c.signal_ledger(old, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.lease_holder().await.as_deref() != Some(&format!("ledger-{}", 1 - old)) {
        assert!(Instant::now() < deadline, "the standby never took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Registered through the new writer (a request caught in the paused
    // one's socket is sent again).
    let late = c.miner("late-miner").await;
    // Its events, each sent once: about half wait in the paused writer's socket.
    let asked: Vec<_> = mined(&late, "late", 20)
        .into_iter()
        .map(|e| {
            let client = c.client.clone();
            let subject = custody_wire::subjects::submit(&late.public_key());
            tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(15), client.request(subject, e)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.signal_ledger(old, libc::SIGCONT);
    let (mut receipts, mut unanswered) = (0, 0);
    for a in asked {
        match a.await.unwrap() {
            Ok(Ok(msg)) => match serde_json::from_slice::<Outcome>(&msg.payload).expect("an outcome") {
                Outcome::Receipt(_) => receipts += 1,
                Outcome::Rejected(r) => panic!("refused by a writer that was not the writer: {} {}", r.code.as_str(), r.message),
            },
            _ => unanswered += 1,
        }
    }
    eprintln!("{receipts} receipted, {unanswered} unanswered (sent again, they go to the writer)");
    assert!(receipts > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_stopped_and_started_keeps_its_head() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(2).await;
    let m = c.miner("restart-miner").await;
    let done = Arc::new(AtomicUsize::new(0));
    let producers = produce(&c.client, vec![mined(&m, "rs", 2_000)], 64, Duration::from_millis(1500), done.clone());
    for p in producers {
        assert!(p.await.unwrap().iter().all(|o| matches!(o, Outcome::Receipt(_))));
    }
    let head = c.head().await;

    for i in 0..2 {
        c.kill_ledger(i);
    }
    for s in &mut c.nats.servers {
        s.kill();
    }
    for s in &mut c.nats.servers {
        s.restart().expect("a server restarts");
    }
    c.nats.ready().expect("the restarted cluster elects a leader");
    for i in 0..2 {
        c.spawn_ledger(i);
    }
    c.writer().await;
    assert_eq!(c.head().await, head, "the same head after a full stop");
    let v = c.verify();
    assert_eq!(v["entries"], head.0);
    let r = custody::client::submit(&c.client, sign(&m, &event(&m, "rs-after", "mined", json!({"lot": "RSA", "carats": "1.00", "country": "ZA"}))).into())
        .await
        .expect("the writer answers");
    let Outcome::Receipt(r) = r else { panic!("{r:?}") };
    assert_eq!(r.seq, head.0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_killed_while_queries_run_the_other_answers() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(1).await;
    let m = c.miner("q-miner").await;
    let r =
        custody::client::submit(&c.client, sign(&m, &event(&m, "q-1", "mined", json!({"lot": "Q1", "carats": "2.00", "country": "ZA"}))).into()).await.unwrap();
    assert!(matches!(r, Outcome::Receipt(_)));
    c.spawn_projection(0);
    c.spawn_projection(1);
    let ask = |client: async_nats::Client| async move {
        // A query caught in flight by the kill is asked once more.
        for _ in 0..2 {
            let req = client.request(custody_wire::subjects::QUERY_ORIGIN, json!({"lot": "Q1"}).to_string().into());
            if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(2), req).await {
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                if v["mine_origin"][0]["country"] == "ZA" {
                    return true;
                }
            }
        }
        false
    };
    // Both are ready (each caught up, so either may answer) before the
    // kill: one answering is not both.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let statuses = custody_wire::health::gather(&c.client, &["projection"], Duration::from_millis(500)).await.unwrap();
        if statuses.iter().filter(|s| s.ready).count() == 2 && ask(c.client.clone()).await {
            break;
        }
        assert!(Instant::now() < deadline, "the two projections never both got ready: {statuses:?}");
    }
    let mut answered = 0;
    for i in 0..200 {
        if i == 50 {
            if let Some(mut p) = c.projections[0].take() {
                p.kill9();
            }
        }
        assert!(ask(c.client.clone()).await, "query {i} went unanswered");
        answered += 1;
    }
    assert_eq!(answered, 200);
}
