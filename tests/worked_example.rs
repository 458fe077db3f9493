//! DOMAIN.md's worked example, end to end over NATS: every custody step
//! receipted, the second split of L3 refused, and the chain verifiable.

mod common;

use common::*;
use custody_proto::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_example_is_receipted_and_second_split_refused() {
    let sys = System::start().await;
    let cast = sys.cast();
    let mut last_seq = 0;
    for (key, payload) in cast.worked_example() {
        let r = sys.accept(key, &payload).await;
        assert_eq!(r.seq, last_seq + 1, "seqs are consecutive from 1");
        // On the wire the hash is 64 lowercase hex digits (the typed
        // receipt accepts nothing else), and it is the head's.
        assert_eq!(serde_json::to_value(&r).unwrap()["hash"].as_str().map(str::len), Some(64));
        assert_eq!(sys.head().await, (r.seq, Some(r.hash.to_hex())));
        last_seq = r.seq;
    }
    assert_eq!(last_seq, 18);
    let head_before = sys.head().await;

    let (key, again) = cast.second_split();
    let out = sys.submit(key, &again).await;
    let Outcome::Rejected(r) = out else { panic!("second split accepted") };
    assert_eq!(r.code, "lot_consumed");
    assert_eq!(r.id.as_deref(), Some("demo-split-l3-again"));
    assert!(r.message.contains("L3"), "{}", r.message);
    assert_eq!(sys.head().await, head_before, "a refusal changes nothing");

    // The committed stream verifies from seq 1, over NATS.
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["entries"], 18);
    assert_eq!(v["head"].as_str(), head_before.1.as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_keygen_and_submit_print_one_line_per_event() {
    let sys = System::start().await;
    let key_file = sys.dir.path().join("miner.nk");
    let out = sys.custody(&["keygen", "--out", key_file.to_str().unwrap()], None);
    assert!(out.status.success());
    let public = stdout(&out).trim().to_owned();
    assert!(public.starts_with('U') && public.len() == 56, "{public}");
    assert!(std::fs::read_to_string(&key_file).unwrap().starts_with("SU"));

    let reg =
        event(&sys.authority, "reg-cli", "actor.registered", serde_json::json!({"subject": public, "name": "CLI Miner", "roles": ["miner"], "country": "CA"}));
    sys.accept(&sys.authority, &reg).await;

    let lines = [
        format!(r#"{{"id":"cli-1","kind":"mined","actor":"{public}","occurred_at":"2024-09-02T08:00:00Z","lot":"C1","carats":"10.00","country":"CA"}}"#),
        format!(r#"{{"id":"cli-2","kind":"mined","actor":"{public}","occurred_at":"2024-09-02T08:00:00Z","lot":"C1","carats":"10.00","country":"CA"}}"#),
    ];
    let out = sys.custody(&["submit", "--key", key_file.to_str().unwrap(), "-"], Some(&(lines.join("\n") + "\n")));
    assert_eq!(out.status.code(), Some(1), "a refusal makes submit exit non-zero");
    let printed: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(printed.len(), 2);
    assert_eq!(printed[0]["id"], "cli-1");
    assert_eq!(printed[0]["seq"], 2);
    assert!(printed[0]["recorded_at"].is_string());
    assert_eq!(printed[1]["code"], "lot_exists");

    // --signed takes ready envelopes: the first one again returns its receipt.
    let env = custody_proto::envelope::sign(&custody::keys::load(&key_file).unwrap(), lines[0].as_bytes()).unwrap();
    let out = sys.custody(&["submit", "--signed"], Some(&(String::from_utf8(env).unwrap() + "\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(again, printed[0]);
}
