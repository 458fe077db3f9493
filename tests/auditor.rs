//! `custody audit`, the auditor that trusts nobody but the ledger's public
//! key: it passes an honest ledger, and catches an entry altered in the
//! committed stream, an entry dropped, and a ledger rolled back to an
//! earlier store, each with a clear finding and a non-zero exit.

mod common;

use async_nats::jetstream;
use common::*;
use custody_ledger::{commit, Store};
use custody_proto::{Entry, Timestamp};
use custody_wire::subjects;
use serde_json::{json, Value};

fn audit(sys: &System, key: &str, state: &str) -> (Option<i32>, Value) {
    let out = sys.custody(&["audit", "--key", key, "--state", state], None);
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| json!({"raw": stdout(&out), "stderr": String::from_utf8_lossy(&out.stderr)}));
    (out.status.code(), v)
}

/// `n` mined events, published, and a checkpoint covering them.
async fn history(sys: &System, m: &nkeys::KeyPair, tag: &str, n: usize) -> u64 {
    for i in 0..n {
        sys.accept(m, &event(m, &format!("{tag}-{i}"), "mined", json!({"lot": format!("{tag}{i}"), "carats": "1.00", "country": "CA"}))).await;
    }
    let head = sys.stream_caught_up().await;
    let out = sys.custody(&["checkpoint"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(c["tree_size"].as_u64(), Some(head));
    head
}

/// Replaces the committed stream with `entries` (as an operator with
/// rights on the stream could).
async fn replace_stream(sys: &System, entries: &[Entry]) {
    let js = jetstream::new(sys.client.clone());
    js.delete_stream(subjects::LEDGER_STREAM).await.unwrap();
    commit::committed_stream(&js, 1).await.unwrap();
    commit::send_all(&js, entries).await.unwrap();
}

/// Re-chains `envelopes` from seq 1 so that every hash and link is right.
fn rechain(envelopes: Vec<Vec<u8>>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for env in envelopes {
        let prev = out.last().map(|e| (e.seq, e.hash));
        out.push(Entry::next(prev, Timestamp::now(), env));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_passes_an_honest_ledger_and_catches_an_altered_or_dropped_entry() {
    let mut sys = System::start().await;
    let m = sys.actor("audited", "miner", "CA").await;
    let head = history(&sys, &m, "A", 30).await;
    let key = sys.ledger_key();
    let state = sys.dir.path().join("auditor");
    let state = state.to_str().unwrap();

    let (code, v) = audit(&sys, &key, state);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["audit"]["entries"].as_u64(), Some(head));
    assert!(v["audit"]["checkpoints_verified"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["audit"]["latest_checkpoint"]["tree_size"].as_u64(), Some(head));
    // Another key is not the ledger's: its checkpoints do not verify.
    let stranger = nkeys::KeyPair::new_server().public_key();
    let (code, v) = audit(&sys, &stranger, sys.dir.path().join("stranger").to_str().unwrap());
    assert_eq!(code, Some(1), "{v}");
    assert!(v["finding"].as_str().unwrap().contains("not the ledger key"), "{v}");

    // A second auditor keeps following from its own machine (here, process).
    let mut follower = {
        let mut cmd = std::process::Command::new(BIN);
        custody::natsd::die_with_parent(&mut cmd);
        cmd.args(["--nats", &sys.nats.url, "audit", "--key", &key, "--state", sys.dir.path().join("follower").to_str().unwrap(), "--follow", "0.2"])
            .env("CUSTODY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        ServiceProcess::new(cmd.spawn().unwrap())
    };
    // Its reported position reaches the head: it audited the honest ledger
    // and is content with it.
    let lines = {
        let stdout = follower.child_mut().stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let mut position = Value::Null;
    while position["audit"]["entries"].as_u64() != Some(head) {
        let line = lines.recv_timeout(std::time::Duration::from_secs(30)).expect("the follower reports its position");
        position = serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON line: {line}"));
        assert_eq!(position["ok"], true, "{line}");
    }
    assert!(follower.child_mut().try_wait().unwrap().is_none(), "the follower is content with an honest ledger");

    sys.kill_ledger();
    let entries: Vec<Entry> = Store::open(&sys.ledger_dir()).unwrap().entries_from(1).collect::<Result<_, _>>().unwrap();
    let envelopes: Vec<Vec<u8>> = entries.iter().map(|e| e.envelope.clone()).collect();

    // Altered: entry 5 becomes another validly signed event, and every hash
    // after it is recomputed, so the chain alone looks sound.
    let mut altered = envelopes.clone();
    altered[4] = sign(&m, &event(&m, "A-forged", "mined", json!({"lot": "AF", "carats": "900.00", "country": "CA"})));
    replace_stream(&sys, &rechain(altered)).await;
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "the rewritten chain is self-consistent: plain verify cannot tell");
    // The follower notices the rewrite on its own and stops with a finding.
    let (status, _follower) = follower.exit_within(std::time::Duration::from_secs(15)).await;
    let status = status.expect("the following auditor noticed the rewrite");
    let out: String = lines.iter().collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(1), "{out}");
    eprintln!("follower: {}", out.trim());
    assert!(["rewritten", "rolled back", "altered"].iter().any(|w| out.contains(w)), "{out}");
    let (code, v) = audit(&sys, &key, state);
    assert_eq!(code, Some(1), "{v}");
    let finding = v["finding"].as_str().unwrap();
    eprintln!("finding: {finding}");
    assert!(finding.contains("the ledger signed root") && finding.contains("altered, dropped or inserted"), "{finding}");

    // Dropped: entry 7 is left out and the rest renumbered and re-chained.
    let mut dropped = envelopes.clone();
    dropped.remove(6);
    dropped.push(sign(&m, &event(&m, "A-filler", "mined", json!({"lot": "AFill", "carats": "1.00", "country": "CA"}))));
    replace_stream(&sys, &rechain(dropped)).await;
    let (code, v) = audit(&sys, &key, state);
    assert_eq!(code, Some(1), "{v}");
    assert!(v["finding"].as_str().unwrap().contains("altered, dropped or inserted"), "{v}");

    // The honest stream again: the auditor agrees once more.
    replace_stream(&sys, &entries).await;
    let (code, v) = audit(&sys, &key, state);
    assert_eq!(code, Some(0), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_catches_a_ledger_rolled_back_to_an_earlier_store() {
    let mut sys = System::start().await;
    let m = sys.actor("rolled", "miner", "CA").await;
    let early = history(&sys, &m, "R", 20).await;
    // The operator keeps a copy of the store as it was (its key included).
    sys.kill_ledger();
    let snapshot = sys.dir.path().join("snapshot");
    copy_dir(&sys.ledger_dir(), &snapshot);
    sys.start_ledger().await;
    let late = history(&sys, &m, "S", 15).await;
    let key = sys.ledger_key();
    let state = sys.dir.path().join("auditor");
    let state = state.to_str().unwrap();
    let (code, v) = audit(&sys, &key, state);
    assert_eq!((code, v["audit"]["entries"].as_u64()), (Some(0), Some(late)), "{v}");

    // Roll back: the old store, the stream replaced by the old store's
    // entries (the ledger itself refuses to refill a stream from a store
    // behind the newest checkpoint, so the operator does it by hand), and a
    // few new events on the old history. The ledger signs checkpoints for
    // it with the same key.
    sys.kill_ledger();
    std::fs::remove_dir_all(sys.ledger_dir()).unwrap();
    copy_dir(&snapshot, &sys.ledger_dir());
    let old: Vec<Entry> = Store::open(&snapshot).unwrap().entries_from(1).collect::<Result<_, _>>().unwrap();
    replace_stream(&sys, &old).await;
    sys.start_ledger().await;
    assert_eq!(sys.head().await.0, early);
    let m2 = m.clone();
    let shorter = history(&sys, &m2, "T", 5).await;
    assert!(shorter < late);
    let (code, v) = audit(&sys, &key, state);
    assert_eq!(code, Some(1), "{v}");
    let finding = v["finding"].as_str().unwrap();
    eprintln!("finding: {finding}");
    assert!(finding.contains("rolled back"), "{finding}");

    // Grown past the old head on the other history: the signed checkpoint
    // for the old size no longer matches.
    let longer = history(&sys, &m2, "U", 20).await;
    assert!(longer > late);
    let (code, v) = audit(&sys, &key, state);
    assert_eq!(code, Some(1), "{v}");
    let finding = v["finding"].as_str().unwrap();
    eprintln!("finding: {finding}");
    assert!(finding.contains("two different roots") || finding.contains("altered, dropped or inserted"), "{finding}");
    // A fresh auditor, with no memory, finds this history consistent: the
    // evidence is in the checkpoints kept. (It is why auditors keep state.)
    let (code, _) = audit(&sys, &key, sys.dir.path().join("fresh").to_str().unwrap());
    assert_eq!(code, Some(1), "the checkpoints stream still holds the old signed roots");
}
