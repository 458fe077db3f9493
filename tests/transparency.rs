//! Signed checkpoints and Merkle proofs, end to end: fetched over NATS, the
//! CLI and HTTP, checked offline with nothing but the ledger's public key;
//! a bent proof, a wrong root and a rewritten history all fail.

mod common;

use std::path::Path;

use common::*;
use custody_proto::merkle::Tree;
use custody_proto::{Checkpoint, Hash, Receipt};
use serde_json::{json, Value};

async fn mine(sys: &System, m: &nkeys::KeyPair, tag: &str, n: usize) -> Vec<Receipt> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(sys.accept(m, &event(m, &format!("{tag}-{i}"), "mined", json!({"lot": format!("{tag}{i}"), "carats": "2.00", "country": "CA"}))).await);
    }
    sys.stream_caught_up().await;
    out
}

fn write(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p.to_str().unwrap().to_owned()
}

fn checkpoint(sys: &System, key: &str) -> Value {
    let out = sys.custody(&["checkpoint", "--key", key], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn verify_offline(sys: &System, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = sys.custody(&all, None);
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap_or(Value::Null);
    assert_eq!(out.status.success(), v["ok"] == true, "exit status agrees with the answer: {v}");
    (out.status.success(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_and_consistency_proofs_check_offline_and_forgeries_fail() {
    let mut sys = System::start().await;
    let base = sys.start_gateway();
    let m = sys.actor("prover", "miner", "CA").await;
    let receipts = mine(&sys, &m, "P", 40).await;
    let key = sys.ledger_key();
    let dir = sys.dir.path();

    // A checkpoint for everything published, and entry 7's proof against it.
    let c1 = checkpoint(&sys, &key);
    assert_eq!(c1["tree_size"], 41, "registration + 40 mined");
    let c1_file = write(dir, "c1.json", &c1);
    let r = &receipts[5];
    let out = sys.custody(&["prove", &r.seq.to_string(), "--key", &key, "--checkpoint", &c1_file, "--hash", &r.hash.to_hex()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(bundle["entry_hash"].as_str(), Some(r.hash.to_hex().as_str()), "the proof starts from the receipt's hash");
    let bundle_file = write(dir, "proof.json", &bundle);
    let (ok, v) = verify_offline(&sys, &["--checkpoint", &c1_file, "--key", &key, "--proof", &bundle_file]);
    assert!(ok, "{v}");

    // Offline checks fail on: a bent path, a root not signed by the key,
    // another key, a proof for someone else's receipt.
    let mut bent = bundle.clone();
    bent["path"][2] = json!(Hash([3; 32]).to_hex());
    let (ok, v) = verify_offline(&sys, &["--checkpoint", &c1_file, "--key", &key, "--proof", &write(dir, "bent.json", &bent)]);
    assert!(!ok && v["error"].as_str().unwrap().contains("not in the checkpointed tree"), "{v}");
    let mut rerooted = c1.clone();
    rerooted["root"] = json!(Hash([4; 32]).to_hex());
    let (ok, v) = verify_offline(&sys, &["--checkpoint", &write(dir, "rerooted.json", &rerooted), "--key", &key, "--proof", &bundle_file]);
    assert!(!ok && v["error"].as_str().unwrap().contains("signature"), "{v}");
    let stranger = nkeys::KeyPair::new_server().public_key();
    let (ok, _) = verify_offline(&sys, &["--checkpoint", &c1_file, "--key", &stranger]);
    assert!(!ok);
    let out = sys.custody(&["prove", &r.seq.to_string(), "--key", &key, "--hash", &receipts[6].hash.to_hex()], None);
    assert_eq!(out.status.code(), Some(1), "a proof for another entry's hash is refused");

    // More entries, a second checkpoint, and the consistency proof over HTTP.
    mine(&sys, &m, "Q", 25).await;
    let c2 = checkpoint(&sys, &key);
    assert_eq!(c2["tree_size"], 66);
    let c2_file = write(dir, "c2.json", &c2);
    // Asking again for the same size signs afresh but publishes nothing new:
    // nobody can grow the checkpoints stream by asking.
    let js = async_nats::jetstream::new(sys.client.clone());
    let count = |js: async_nats::jetstream::Context| async move {
        js.get_stream(custody_wire::subjects::CHECKPOINTS_STREAM).await.unwrap().get_info().await.unwrap().state.messages
    };
    let published = count(js.clone()).await;
    for _ in 0..5 {
        assert_eq!(checkpoint(&sys, &key)["tree_size"], 66);
    }
    assert_eq!(count(js).await, published, "one checkpoint per size on the stream");
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(&url).send().await.expect("gateway answers");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, cons) = get("/v1/ledger/consistency?from=41&to=66".into()).await;
    assert_eq!(status, 200, "{cons}");
    assert_eq!(cons["from_root"], c1["root"]);
    assert_eq!(cons["to_root"], c2["root"]);
    let cons_file = write(dir, "cons.json", &cons);
    let (ok, v) = verify_offline(&sys, &["--checkpoint", &c2_file, "--key", &key, "--previous", &c1_file, "--consistency", &cons_file]);
    assert!(ok, "{v}");

    // A rewritten history: the operator, who holds the ledger's key, signs
    // a checkpoint over 41 entries with entry 7 replaced. The real
    // consistency proof does not join it to the later checkpoint.
    let seed = std::fs::read_to_string(sys.ledger_dir().join("ledger.nk")).unwrap();
    let operator = nkeys::KeyPair::from_seed(seed.trim()).unwrap();
    let store_entries: Vec<Hash> = {
        let mut v = Vec::new();
        for seq in 1..=41u64 {
            let (_, e) = get(format!("/v1/ledger/entries/{seq}")).await;
            v.push(Hash::from_hex(e["hash"].as_str().unwrap()).unwrap());
        }
        v
    };
    let mut rewritten = Tree::new();
    for (i, h) in store_entries.iter().enumerate() {
        rewritten.push(if i == 6 { &Hash([6; 32]) } else { h });
    }
    let forged = Checkpoint::sign(
        &operator,
        &custody_ledger::notary::default_origin(&operator.public_key()),
        41,
        &rewritten.root(),
        None,
        custody_proto::Timestamp::now(),
    )
    .unwrap();
    let forged_file = write(dir, "forged.json", &json!(forged));
    let (ok, _) = verify_offline(&sys, &["--checkpoint", &forged_file, "--key", &key]);
    assert!(ok, "the forged checkpoint is validly signed on its own");
    let (ok, v) = verify_offline(&sys, &["--checkpoint", &c2_file, "--key", &key, "--previous", &forged_file, "--consistency", &cons_file]);
    assert!(!ok && v["error"].as_str().unwrap().contains("does not extend"), "{v}");
    // And no consistency proof the ledger gives joins them either: the
    // honest tree's proof from 41 holds the honest hashes.
    let (_, cons2) = get("/v1/ledger/consistency?from=41&to=66".into()).await;
    assert_eq!(cons2, cons, "proofs are deterministic");

    // The HTTP proof endpoints and their errors.
    let (status, p) = get(format!("/v1/ledger/entries/{}/proof", r.seq)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["tree_size"], 66);
    assert_eq!(p["checkpoint"]["tree_size"], 66);
    assert_eq!(p["entry_hash"].as_str(), Some(r.hash.to_hex().as_str()));
    let (status, p) = get(format!("/v1/ledger/entries/{}/proof?tree_size=41", r.seq)).await;
    assert_eq!((status, &p["path"]), (200, &bundle["path"]));
    let (status, c) = get("/v1/ledger/checkpoint".into()).await;
    assert_eq!((status, c["tree_size"].as_u64()), (200, Some(66)));
    for (path, want_status, want_code) in [
        ("/v1/ledger/entries/0/proof", 400, "invalid_seq"),
        ("/v1/ledger/entries/x/proof", 400, "invalid_seq"),
        ("/v1/ledger/entries/500/proof", 404, "not_in_tree"),
        ("/v1/ledger/entries/5/proof?tree_size=4", 404, "not_in_tree"),
        ("/v1/ledger/entries/5/proof?tree_size=9999", 404, "tree_too_small"),
        ("/v1/ledger/entries/5/proof?tree_size=-1", 400, "invalid_parameter"),
        ("/v1/ledger/consistency?from=10", 400, "missing_parameter"),
        ("/v1/ledger/consistency?from=20&to=10", 400, "invalid_request"),
        ("/v1/ledger/consistency?from=0&to=10", 400, "invalid_request"),
    ] {
        let (status, v) = get(path.into()).await;
        assert_eq!((status, v["code"].as_str()), (want_status, Some(want_code)), "{path}: {v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{path}");
    }
}
