//! The hostile corpus (tests/hostile/corpus.json): envelopes and payloads a
//! hostile or broken sender could send, each with the rejection code it must
//! get. For each: that code, a message, the ledger head unchanged; and the
//! service keeps serving afterwards.
//!
//! A case sends `raw` text, `raw_hex` bytes, `raw_repeat` ({text, times}), an
//! `envelope` as given, or a `payload` / `payload_text` signed by `sign_as`,
//! optionally with a `mutate` applied after signing, on the signer's
//! submission subject or on the one of `subject_of`. `$MINER`, `$TRADER`,
//! ... stand for the world's keys; `$REPEAT_...` for generated long arrays.

mod common;

use std::collections::HashMap;

use base64::Engine as _;
use common::*;
use custody_proto::Outcome;
use nkeys::KeyPair;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn fill(text: &str, keys: &HashMap<&str, KeyPair>) -> String {
    let mut out = text.to_owned();
    // Longest names first, so that $TRADER does not eat $TRADER2.
    let mut names: Vec<&&str> = keys.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${}", name.to_uppercase()), &keys[*name].public_key());
    }
    out.replace("$ACCOUNT", &KeyPair::new_account().public_key())
}

fn generated(v: &mut Value) {
    match v {
        Value::String(s) if s == "$REPEAT_PORTIONS_10000" => {
            *v = Value::Array((0..10_000).map(|i| json!({"lot": format!("p{i}"), "carats": "0.01"})).collect());
        }
        Value::String(s) if s == "$REPEAT_LOTS_1001" => {
            *v = Value::Array((0..1_001).map(|i| json!(format!("l{i}"))).collect());
        }
        Value::Object(m) => m.values_mut().for_each(generated),
        Value::Array(a) => a.iter_mut().for_each(generated),
        _ => {}
    }
}

fn build(case: &Value, keys: &HashMap<&str, KeyPair>) -> Vec<u8> {
    if let Some(raw) = case["raw"].as_str() {
        return fill(raw, keys).into_bytes();
    }
    if let Some(hex) = case["raw_hex"].as_str() {
        return hex.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    }
    if let Some(r) = case.get("raw_repeat") {
        return r["text"].as_str().unwrap().repeat(r["times"].as_u64().unwrap() as usize).into_bytes();
    }
    if let Some(env) = case.get("envelope") {
        return fill(&env.to_string(), keys).into_bytes();
    }
    let payload = match (case.get("payload"), case["payload_text"].as_str()) {
        (Some(p), _) => {
            let mut p: Value = serde_json::from_str(&fill(&p.to_string(), keys)).unwrap();
            generated(&mut p);
            p.to_string()
        }
        (None, Some(t)) => fill(t, keys),
        (None, None) => panic!("case {} sends nothing", case["name"]),
    };
    let signer = &keys[case["sign_as"].as_str().unwrap()];
    let raw = custody_proto::envelope::sign(signer, payload.as_bytes()).unwrap();
    let Some(mutate) = case["mutate"].as_str() else {
        return raw;
    };
    let mut env: Value = serde_json::from_slice(&raw).unwrap();
    match mutate {
        "duplicate_signature" => {
            let s = env["signatures"][0].clone();
            env["signatures"] = json!([s.clone(), s]);
        }
        "swap_payload" => env["payload"] = json!(B64.encode(payload.replace("\"1.00\"", "\"1000.00\""))),
        "change_carats" => env["payload"] = json!(B64.encode(payload.replace("\"2.00\"", "\"3.00\""))),
        other => panic!("unknown mutation {other}"),
    }
    serde_json::to_vec(&env).unwrap()
}

/// The refusal world, and its keys by the names the corpus uses.
async fn hostile_world() -> (System, HashMap<&'static str, KeyPair>) {
    let RefusalWorld { sys, miner_ru: miner, miner_bw: miner2, trader, trader2, cutter, revoked, verifier, node } = refusal_world().await;
    let authority = KeyPair::from_seed(&sys.authority.seed().unwrap()).unwrap();
    let keys: HashMap<&str, KeyPair> = HashMap::from([
        ("miner", miner),
        ("miner2", miner2),
        ("trader", trader),
        ("trader2", trader2),
        ("cutter", cutter),
        ("authority", authority),
        ("stranger", KeyPair::new_user()),
        ("revoked", revoked),
        ("verifier", verifier),
        ("node", node),
    ]);
    (sys, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_case_gets_its_code_and_changes_nothing() {
    let (sys, keys) = hostile_world().await;
    let corpus: Vec<Value> = serde_json::from_str(include_str!("hostile/corpus.json")).unwrap();
    assert!(corpus.len() >= 60, "{} cases", corpus.len());
    let codes: std::collections::HashSet<&str> = corpus.iter().map(|c| c["expect"].as_str().unwrap()).collect();
    // A batch request's own refusal is about the request, not an envelope:
    // tests/idempotency.rs sends such batches.
    // Nor is a quota's refusal: tests/quota.rs floods one actor.
    for code in custody_proto::Code::ALL.into_iter().filter(|c| !matches!(c, custody_proto::Code::BatchTooLarge | custody_proto::Code::RateLimited)) {
        assert!(codes.contains(code.as_str()), "the corpus has no case for {code}");
    }

    let before = sys.head().await;
    let mut failures = Vec::new();
    for case in &corpus {
        let name = case["name"].as_str().unwrap();
        let raw = bytes::Bytes::from(build(case, &keys));
        let outcome = match case["subject_of"].as_str() {
            Some(who) => custody::client::submit_to(&sys.client, custody_wire::subjects::submit(&keys[who].public_key()), raw).await.expect("an answer"),
            None => sys.submit_raw(raw.to_vec()).await,
        };
        match &outcome {
            Outcome::Rejected(r) if r.code.as_str() == case["expect"] && !r.message.is_empty() => {}
            other => failures.push(format!("{name}: expected {}, got {other:?}", case["expect"])),
        }
        if sys.head().await != before {
            failures.push(format!("{name}: the ledger changed"));
            break;
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), corpus.len(), failures.join("\n"));

    // Still serving: a valid event is receipted right after.
    let r = sys.accept(&keys["miner"], &event(&keys["miner"], "after-hostile", "mined", json!({"lot": "AFTER", "carats": "1.00", "country": "RU"}))).await;
    assert_eq!(r.seq, before.0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_every_hostile_case_gets_what_nats_gives_and_a_good_one_its_receipt() {
    let (mut sys, keys) = hostile_world().await;
    let base = sys.start_gateway();
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, kind: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/v1/submissions"));
        async move {
            let r = http.post(url).header("content-type", kind).body(body).send().await.expect("the gateway answers");
            (r.status().as_u16(), r.json::<Value>().await.expect("a JSON answer"))
        }
    };
    let corpus: Vec<Value> = serde_json::from_str(include_str!("hostile/corpus.json")).unwrap();
    let before = sys.head().await;
    let mut failures = Vec::new();
    // A case sent on another actor's subject has no HTTP form: the gateway
    // puts each envelope on its own signer's subject.
    for case in corpus.iter().filter(|c| c.get("subject_of").is_none()) {
        let name = case["name"].as_str().unwrap();
        let raw = build(case, &keys);
        let over_nats = sys.submit_raw(raw.clone()).await;
        let (status, answer) = post(raw, "application/json").await;
        // The same code, id and words (a message that tells the time it
        // was judged at differs only there).
        let words = |m: &str| m.split(" (now ").next().unwrap_or_default().to_owned();
        let same = matches!(&over_nats, Outcome::Rejected(r) if answer["code"] == r.code.as_str() && answer["id"] == json!(r.id)
            && answer["message"].as_str().map(words) == Some(words(&r.message)));
        if status != 422 || !same {
            failures.push(format!("{name}: over NATS {over_nats:?}, over HTTP {status} {answer}"));
        }
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(sys.head().await, before, "nothing hostile was recorded");

    // A good one: its receipt, the same for the same bytes again, over
    // either; a batch, an outcome per line.
    let good = sign(&keys["miner"], &event(&keys["miner"], "over-http", "mined", json!({"lot": "HTTP-1", "carats": "1.00", "country": "RU"})));
    let (status, receipt) = post(good.clone(), "application/json").await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["seq"], json!(before.0 + 1));
    assert_eq!(post(good.clone(), "application/json").await.1, receipt);
    assert!(matches!(sys.submit_raw(good.clone()).await, Outcome::Receipt(r) if r.seq == before.0 + 1));
    let second = sign(&keys["miner"], &event(&keys["miner"], "over-http-2", "mined", json!({"lot": "HTTP-2", "carats": "2.00", "country": "RU"})));
    let batch = [good, b"\n".to_vec(), second, b"\n".to_vec()].concat();
    let (status, outcomes) = post(batch, "application/x-ndjson").await;
    assert_eq!(status, 200, "{outcomes}");
    assert_eq!(outcomes[0], receipt);
    assert_eq!(outcomes[1]["seq"], json!(before.0 + 2), "{outcomes}");
}
