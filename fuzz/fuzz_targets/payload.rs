//! Event payloads, correctly signed, against a ledger that already holds
//! DOMAIN.md's worked example up to the merge: the fuzzer explores the
//! payload parser and every custody rule, not the signature check.
//!
//! Input: items separated by a NUL byte. An item's first byte picks the
//! signer (authority, miner RU, miner BW, trader AE, cutter IN, importer
//! US); the rest is the payload, where `$0`..`$5` stand for those actors'
//! public keys. Each item is checked and, if accepted, applied, so a
//! sequence can build state and then attack it.
//!
//! Invariants: nothing panics; every refusal has a message; an accepted
//! event is signed by its own actor; live carats rise only by `mined` and
//! `declared` (stock entering the ledger).
#![no_main]

use std::sync::OnceLock;

use custody_ledger::ledger::{check_batch, Submitted};
use custody_ledger::model::Model;
use custody_proto::{Body, KeyCache, Timestamp};
use libfuzzer_sys::fuzz_target;
use nkeys::{KeyPair, KeyPairType};

struct World {
    keys: Vec<KeyPair>,
    model: Model,
    now: Timestamp,
}

fn key(n: u8) -> KeyPair {
    KeyPair::new_from_raw(KeyPairType::User, [n; 32]).expect("a key")
}

/// Replaces `$0`..`$5` with the actors' public keys.
fn expand(payload: &[u8], keys: &[KeyPair]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    let mut i = 0;
    while i < payload.len() {
        if payload[i] == b'$' && i + 1 < payload.len() && (b'0'..b'6').contains(&payload[i + 1]) {
            out.extend_from_slice(keys[usize::from(payload[i + 1] - b'0')].public_key().as_bytes());
            i += 2;
        } else {
            out.push(payload[i]);
            i += 1;
        }
    }
    out
}

/// Checks one signed payload; applies it if accepted.
fn submit(model: &mut Model, keys: &mut KeyCache, signer: &KeyPair, payload: &[u8], now: Timestamp) -> bool {
    let raw = custody_proto::envelope::sign(signer, payload).expect("signing");
    let Some(checked) = check_batch(vec![Submitted::bare(raw)], keys).pop() else { return false };
    let (opened, event) = match checked {
        Ok(x) => x,
        Err((_, r)) => {
            assert!(!r.message.is_empty());
            return false;
        }
    };
    assert_eq!(event.actor, opened.signer);
    match event.check_time(now).and_then(|()| model.check(&event)) {
        Ok(()) => {
            let before = model.live_hundredths();
            model.apply(&event);
            if !matches!(event.body, Body::Mined { .. } | Body::Declared { .. }) {
                assert!(model.live_hundredths() <= before, "{} created carats", event.body.kind());
            }
            true
        }
        Err(r) => {
            assert!(!r.message.is_empty());
            false
        }
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let keys: Vec<KeyPair> = (1..=6).map(key).collect();
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("a time");
        let authority = keys[0].public_key().parse().expect("an actor key");
        let mut model = Model::new(authority);
        let mut cache = KeyCache::default();
        let setup: &[(usize, &str)] = &[
            (0, r#"{"id":"r1","kind":"actor.registered","actor":"$0","occurred_at":"2024-01-01T00:00:00Z","subject":"$1","name":"Miner A","roles":["miner"],"country":"RU"}"#),
            (0, r#"{"id":"r2","kind":"actor.registered","actor":"$0","occurred_at":"2024-01-01T00:00:00Z","subject":"$2","name":"Miner B","roles":["miner"],"country":"BW"}"#),
            (0, r#"{"id":"r3","kind":"actor.registered","actor":"$0","occurred_at":"2024-01-01T00:00:00Z","subject":"$3","name":"Trader T","roles":["trader"],"country":"AE"}"#),
            (0, r#"{"id":"r4","kind":"actor.registered","actor":"$0","occurred_at":"2024-01-01T00:00:00Z","subject":"$4","name":"Cutter C","roles":["manufacturer"],"country":"IN"}"#),
            (0, r#"{"id":"r5","kind":"actor.registered","actor":"$0","occurred_at":"2024-01-01T00:00:00Z","subject":"$5","name":"Importer U","roles":["trader"],"country":"US"}"#),
            (1, r#"{"id":"m1","kind":"mined","actor":"$1","occurred_at":"2024-09-02T08:00:00Z","lot":"L1","carats":"1000.00","country":"RU"}"#),
            (2, r#"{"id":"m2","kind":"mined","actor":"$2","occurred_at":"2024-09-02T09:00:00Z","lot":"L2","carats":"1500.00","country":"BW"}"#),
            (1, r#"{"id":"x1","kind":"exported","actor":"$1","occurred_at":"2024-09-10T10:00:00Z","lots":["L1"],"to":"$3","to_country":"AE","certificate":{"number":"RU-1","value_usd":"2500000.00"}}"#),
            (2, r#"{"id":"x2","kind":"exported","actor":"$2","occurred_at":"2024-09-10T11:00:00Z","lots":["L2"],"to":"$3","to_country":"AE","certificate":{"number":"BW-1","value_usd":"4100000.00"}}"#),
            (3, r#"{"id":"i1","kind":"imported","actor":"$3","occurred_at":"2024-09-12T08:00:00Z","certificate":"RU-1"}"#),
            (3, r#"{"id":"i2","kind":"imported","actor":"$3","occurred_at":"2024-09-12T09:00:00Z","certificate":"BW-1"}"#),
            (3, r#"{"id":"g1","kind":"merged","actor":"$3","occurred_at":"2024-09-15T08:00:00Z","lots":["L1","L2"],"into":{"lot":"L3","carats":"2500.00"}}"#),
        ];
        for (who, payload) in setup {
            let payload = expand(payload.as_bytes(), &keys);
            assert!(submit(&mut model, &mut cache, &keys[*who], &payload, now), "set-up event refused: {}", String::from_utf8_lossy(&payload));
        }
        World { keys, model, now }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut model = w.model.clone();
    let mut cache = KeyCache::default();
    for item in data.split(|b| *b == 0).take(8) {
        let Some((&who, payload)) = item.split_first() else { continue };
        let signer = &w.keys[usize::from(who) % w.keys.len()];
        submit(&mut model, &mut cache, signer, &expand(payload, &w.keys), w.now);
    }
});
