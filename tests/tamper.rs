//! Tampering with a stopped ledger's store: through sled itself, as an
//! operator with access to the database could, and by flipping raw bytes in
//! sled's files. `custody verify` and the ledger must fail with a clear
//! error, never serve or accept the altered data.

mod common;

use common::*;
use custody_proto::Entry;
use serde_json::json;

fn entry_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A system with a few dozen entries, all published on the committed
/// stream, then the ledger stopped.
async fn stopped_system() -> (System, (u64, Option<String>)) {
    let mut sys = System::start().await;
    let m = sys.actor("m", "miner", "BW").await;
    for i in 0..30 {
        sys.accept(&m, &event(&m, &format!("t-{i}"), "mined", json!({"lot": format!("T{i}"), "carats": "5.00", "country": "BW"}))).await;
    }
    let head = sys.head().await;
    sys.stream_caught_up().await;
    sys.kill_ledger();
    (sys, head)
}

fn verify_data(sys: &System, dir: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = sys.custody(&["verify", "--json", "--data", dir.to_str().unwrap()], None);
    let text = stdout(&out);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("verify printed {text:?} / {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_rewritten_through_sled_is_named_by_verify_and_refused_by_the_ledger() {
    let (sys, _) = stopped_system().await;
    let (code, v) = verify_data(&sys, &sys.ledger_dir());
    assert_eq!(code, Some(0), "{v}");

    // Rewrite entry 5's envelope, keeping its stored hash.
    {
        let db = sled::open(sys.ledger_dir()).unwrap();
        let mut e = Entry::decode(5, &db.get(entry_key(5)).unwrap().unwrap()).unwrap();
        let text = String::from_utf8(e.envelope.clone()).unwrap();
        e.envelope = text.replacen("\"sig\":\"", "\"sig\":\"A", 1).into_bytes();
        db.insert(entry_key(5), e.encode()).unwrap();
        db.flush().unwrap();
    }
    wait_for_store_unlocked(&sys.ledger_dir());
    let (code, v) = verify_data(&sys, &sys.ledger_dir());
    assert_eq!(code, Some(1));
    assert_eq!(v["seq"], 5, "{v}");
    let (code, err) = sys.ledger_refusal();
    assert_ne!(code, Some(0));
    assert!(err.contains("entry 5"), "{err}");

    // An operator who puts a validly signed envelope there (entry 4's) and
    // recomputes the hash: the event id repeats, and entry 6 no longer links.
    {
        let db = sled::open(sys.ledger_dir()).unwrap();
        let four = Entry::decode(4, &db.get(entry_key(4)).unwrap().unwrap()).unwrap();
        let mut e = Entry::decode(5, &db.get(entry_key(5)).unwrap().unwrap()).unwrap();
        e.envelope = four.envelope;
        e.hash = Entry::compute_hash(e.seq, &e.prev_hash, &e.recorded_at, &e.envelope);
        db.insert(entry_key(5), e.encode()).unwrap();
        db.flush().unwrap();
    }
    wait_for_store_unlocked(&sys.ledger_dir());
    let (code, v) = verify_data(&sys, &sys.ledger_dir());
    assert_eq!(code, Some(1));
    assert_eq!(v["seq"], 5, "{v}");
    assert!(v["error"].as_str().unwrap().contains("seq 4"), "{v}");
}

/// A small deterministic generator, so failures can be replayed by seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_sled_files_are_never_served() {
    let (sys, head) = stopped_system().await;
    let pristine = sys.dir.path().join("pristine");
    copy_dir(&sys.ledger_dir(), &pristine);
    let db_len = std::fs::metadata(pristine.join("db")).unwrap().len();
    // Flip bytes where sled keeps data: the used part of its log.
    let used = {
        let bytes = std::fs::read(pristine.join("db")).unwrap();
        bytes.iter().rposition(|&b| b != 0).unwrap_or(0) as u64 + 1
    };
    assert!(used > 0 && used <= db_len);

    let mut rng = Lcg(0xC057_0D1E);
    let (mut refused, mut intact, mut recovered) = (0, 0, 0);
    for trial in 0..24 {
        let _ = std::fs::remove_dir_all(sys.ledger_dir());
        copy_dir(&pristine, &sys.ledger_dir());
        let mut bytes = std::fs::read(sys.ledger_dir().join("db")).unwrap();
        let flips = 1 + rng.next() % 4;
        let mut at = Vec::new();
        for _ in 0..flips {
            let pos = (rng.next() % used) as usize;
            bytes[pos] ^= 1 << (rng.next() % 8);
            at.push(pos);
        }
        if trial % 6 == 5 {
            // Truncation, too: a torn tail.
            let cut = (rng.next() % used) as usize;
            bytes.truncate(cut);
            at.push(cut);
        }
        std::fs::write(sys.ledger_dir().join("db"), &bytes).unwrap();

        let (code, v) = verify_data(&sys, &sys.ledger_dir());
        match code {
            Some(1) => {
                assert!(!v["error"].as_str().unwrap_or("").is_empty(), "trial {trial}: no message");
                refused += 1;
            }
            Some(0) => {
                // The flip hit nothing sled reads: the data must be the same.
                assert_eq!(v["entries"], head.0, "trial {trial} at {at:?}: verify passed on a different history");
                assert_eq!(v["head"].as_str(), head.1.as_deref(), "trial {trial} at {at:?}");
                intact += 1;
            }
            other => panic!("trial {trial} at {at:?}: verify exited {other:?}: {v}"),
        }

        // The ledger either refuses to start or serves exactly the original.
        match sys.ledger_start_or_refusal().await {
            Ok(h) => assert_eq!(h, head, "trial {trial} at {at:?}: the ledger served another history"),
            Err(message) => {
                assert!(message.contains("custody:"), "trial {trial}: refused without a clear error: {message:?}");
                eprintln!("trial {trial}: {}", message.lines().last().unwrap_or(""));
                // Recovery from the committed stream gives back the very
                // history, and the ledger serves it again.
                let out = sys.custody(&["ledger", "recover", "--data", sys.ledger_dir().to_str().unwrap(), "--authority", &sys.authority.public_key()], None);
                assert!(out.status.success(), "trial {trial}: recover failed: {}", String::from_utf8_lossy(&out.stderr));
                let (code, v) = verify_data(&sys, &sys.ledger_dir());
                assert_eq!(code, Some(0), "trial {trial}: the recovered store verifies: {v}");
                assert_eq!(v["head"].as_str(), head.1.as_deref(), "trial {trial}");
                assert_eq!(sys.ledger_start_or_refusal().await, Ok(head.clone()), "trial {trial}: the recovered ledger serves the original");
                recovered += 1;
            }
        }
    }
    eprintln!("byte flips: {refused} refused, {intact} harmless, {recovered} recovered from the stream");
    assert_eq!(recovered, refused, "every refused store was recovered");
    assert!(refused > 0, "no flip was ever detected: the test did not reach sled's data");
}
