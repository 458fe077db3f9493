//! Every rejection code, end to end over NATS: one table of cases, one
//! checking function. For each: the expected code, a message, the event id
//! when readable, and the ledger's entry count and head hash unchanged.

mod common;

use base64::Engine as _;
use common::*;
use custody_proto::Outcome;
use nkeys::KeyPair;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn mined(k: &KeyPair, id: &str, carats: &str) -> Value {
    event(k, id, "mined", json!({"lot": format!("new-{id}"), "carats": carats, "country": "RU"}))
}

/// Re-wraps an envelope after `f` changes it.
fn tamper(raw: Vec<u8>, f: impl Fn(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&raw).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_its_code_and_changes_nothing() {
    let w = refusal_world().await;
    let (m, m2, t, t2, c) = (&w.miner_ru, &w.miner_bw, &w.trader, &w.trader2, &w.cutter);
    let stranger = KeyPair::new_user();
    let cert = |n: &str| json!({"number": n, "value_usd": "1.00"});

    let signed_by_other = sign(m2, &mined(m, "e-mismatch", "1.00"));
    let forged = tamper(sign(m, &mined(m, "e-forged", "1.00")), |v| {
        v["payload"] = json!(B64.encode(mined(m, "e-forged", "9999.00").to_string()));
    });
    let replayed_changed = tamper(sign(m, &mined(m, "e-replay", "1.00")), |v| {
        let p = String::from_utf8(B64.decode(v["payload"].as_str().unwrap()).unwrap()).unwrap();
        v["payload"] = json!(B64.encode(p.replace("new-e-replay", "stolen")));
    });
    let two_sigs = tamper(sign(m, &mined(m, "e-2sig", "1.00")), |v| {
        let s = v["signatures"][0].clone();
        v["signatures"] = json!([s.clone(), s]);
    });
    let wrong_type = tamper(sign(m, &mined(m, "e-type", "1.00")), |v| v["payloadType"] = json!("application/json"));
    let huge = sign(m, &event(m, "e-huge", "flagged", json!({"lot": "A", "reason": "x".repeat(70_000)})));
    let not_json_payload = custody_proto::envelope::sign(m, b"{\"id\": \"e-bad\", ").unwrap();
    let future = {
        let mut e = mined(m, "e-future", "1.00");
        e["occurred_at"] = json!("2999-01-01T00:00:00Z");
        sign(m, &e)
    };
    let conflict = sign(m, &event(m, "mine-A", "mined", json!({"lot": "Z", "carats": "1.00", "country": "RU"})));
    let node = &w.node;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json at all", b"this is not json".to_vec(), "malformed_envelope"),
        ("truncated envelope", sign(m, &mined(m, "e-trunc", "1.00"))[..40].to_vec(), "malformed_envelope"),
        ("oversized envelope", huge, "envelope_too_large"),
        ("wrong payloadType", wrong_type, "wrong_payload_type"),
        ("two signatures", two_sigs, "unsupported_signatures"),
        ("payload changed after signing", forged, "bad_signature"),
        ("another actor's envelope replayed with one field changed", replayed_changed, "bad_signature"),
        ("signer is not actor", signed_by_other, "signer_mismatch"),
        ("payload is not json", not_json_payload, "malformed_event"),
        ("unknown kind", sign(m, &event(m, "e-kind", "stolen", json!({"lot": "A"}))), "malformed_event"),
        ("carats 1.001", sign(m, &mined(m, "e-c1", "1.001")), "invalid_carats"),
        ("carats -1", sign(m, &mined(m, "e-c2", "-1")), "invalid_carats"),
        ("carats 1e3", sign(m, &mined(m, "e-c3", "1e3")), "invalid_carats"),
        ("carats 0", sign(m, &mined(m, "e-c4", "0")), "invalid_carats"),
        ("unknown country", sign(m, &event(m, "e-cc", "mined", json!({"lot": "CC", "carats": "1.00", "country": "XX"}))), "invalid_country"),
        ("lot id with a space", sign(m, &event(m, "e-id", "mined", json!({"lot": "L 1", "carats": "1.00", "country": "RU"}))), "invalid_id"),
        ("occurred_at in the future", future, "invalid_time"),
        ("split into nothing", sign(m, &event(m, "e-empty", "split", json!({"lot": "A", "into": []}))), "invalid_field"),
        ("event id reused for another event", conflict, "id_conflict"),
        ("unregistered actor", sign(&stranger, &mined(&stranger, "e-stranger", "1.00")), "unknown_actor"),
        ("trader mines", sign(t, &event(t, "e-role", "mined", json!({"lot": "TT", "carats": "1.00", "country": "AE"}))), "role_not_allowed"),
        (
            "authority registers an actor twice",
            sign(
                &w.sys.authority,
                &event(
                    &w.sys.authority,
                    "e-twice",
                    "actor.registered",
                    json!({"subject": m.public_key(), "name": "again", "roles": ["miner"], "country": "RU"}),
                ),
            ),
            "actor_exists",
        ),
        ("miner mines abroad", sign(m, &event(m, "e-abroad", "mined", json!({"lot": "AB", "carats": "1.00", "country": "BW"}))), "wrong_country"),
        ("unknown lot", sign(m, &event(m, "e-unknown", "split", json!({"lot": "NOPE", "into": [{"lot": "N1", "carats": "1.00"}]}))), "unknown_lot"),
        ("consumed lot", sign(m, &event(m, "e-consumed", "split", json!({"lot": "SP", "into": [{"lot": "SP3", "carats": "10.00"}]}))), "lot_consumed"),
        ("lot in transit", sign(m, &event(m, "e-transit", "split", json!({"lot": "X", "into": [{"lot": "X1", "carats": "20.00"}]}))), "lot_in_transit"),
        ("not the holder", sign(m2, &event(m2, "e-holder", "split", json!({"lot": "A", "into": [{"lot": "A1", "carats": "100.00"}]}))), "not_holder"),
        (
            "split does not add up",
            sign(m, &event(m, "e-split", "split", json!({"lot": "A", "into": [{"lot": "A1", "carats": "60.00"}, {"lot": "A2", "carats": "30.00"}]}))),
            "carats_mismatch",
        ),
        (
            "merge does not add up",
            sign(m, &event(m, "e-merge", "merged", json!({"lots": ["A", "B"], "into": {"lot": "AB1", "carats": "140.00"}}))),
            "carats_mismatch",
        ),
        (
            "processing creates carats",
            sign(c, &event(c, "e-grow", "processed", json!({"lot": "K2", "process": "sawing", "country": "IN", "into": [{"lot": "K3", "carats": "6.00"}]}))),
            "carats_created",
        ),
        (
            "processing abroad",
            sign(c, &event(c, "e-where", "processed", json!({"lot": "K2", "process": "sawing", "country": "BE", "into": [{"lot": "K4", "carats": "1.00"}]}))),
            "wrong_country",
        ),
        (
            "rough merged with polished",
            sign(c, &event(c, "e-state", "merged", json!({"lots": ["P1", "K2"], "into": {"lot": "PK", "carats": "17.00"}}))),
            "state_mismatch",
        ),
        ("lot id used twice", sign(m, &event(m, "e-twice-lot", "mined", json!({"lot": "A", "carats": "1.00", "country": "RU"}))), "lot_exists"),
        ("lot id reused across kinds", sign(m, &event(m, "e-across", "split", json!({"lot": "B", "into": [{"lot": "P1", "carats": "50.00"}]}))), "lot_exists"),
        (
            "KP certificate reused",
            sign(m, &event(m, "e-cert", "exported", json!({"lots": ["B"], "to": t.public_key(), "to_country": "AE", "certificate": cert("RU-X-1")}))),
            "certificate_reused",
        ),
        (
            "KP certificate of another country",
            sign(m, &event(m, "e-prefix", "exported", json!({"lots": ["B"], "to": t.public_key(), "to_country": "AE", "certificate": cert("BW-2024-9")}))),
            "certificate_country",
        ),
        ("transfer across a border", sign(m, &event(m, "e-border", "transferred", json!({"lots": ["B"], "to": t.public_key()}))), "wrong_country"),
        ("import by someone else", sign(t2, &event(t2, "e-consignee", "imported", json!({"certificate": "RU-X-1"}))), "not_consignee"),
        (
            "a revoked actor signs",
            sign(&w.revoked, &event(&w.revoked, "e-revoked", "mined", json!({"lot": "RV", "carats": "1.00", "country": "RU"}))),
            "actor_revoked",
        ),
        (
            "an actor revoked twice",
            sign(&w.sys.authority, &event(&w.sys.authority, "e-revoke-2", "actor.revoked", json!({"subject": w.revoked.public_key(), "reason": "again"}))),
            "actor_revoked",
        ),
        (
            "the genesis authority revoked",
            sign(&w.sys.authority, &event(&w.sys.authority, "e-revoke-root", "actor.revoked", json!({"subject": w.sys.authority.public_key(), "reason": "x"}))),
            "role_not_allowed",
        ),
        (
            "a stranger revoked",
            sign(&w.sys.authority, &event(&w.sys.authority, "e-revoke-none", "actor.revoked", json!({"subject": stranger.public_key(), "reason": "x"}))),
            "unknown_actor",
        ),
        ("a miner revokes", sign(m, &event(m, "e-revoke-by-miner", "actor.revoked", json!({"subject": m2.public_key(), "reason": "x"}))), "role_not_allowed"),
        (
            "exported the day before it was mined",
            sign(m, &{
                let mut e =
                    event(m, "e-predates", "exported", json!({"lots": ["B"], "to": t.public_key(), "to_country": "AE", "certificate": cert("RU-PRE-1")}));
                e["occurred_at"] = json!("2024-09-01T08:00:00Z");
                e
            }),
            "predates_lot",
        ),
        ("import of an unknown certificate", sign(t, &event(t, "e-nocert", "imported", json!({"certificate": "RU-NOPE-1"}))), "unknown_certificate"),
        (
            "a verification number used twice",
            sign(
                &w.verifier,
                &event(&w.verifier, "e-verify-again", "verified", json!({"lots": ["B"], "carats": "50.00", "verification": "V-USED", "finding": "conforms"})),
            ),
            "verification_reused",
        ),
        (
            "a node verifies a lot it holds",
            sign(node, &event(node, "e-verify-own", "verified", json!({"lots": ["OWN"], "carats": "3.00", "verification": "V-OWN", "finding": "conforms"}))),
            "self_verification",
        ),
    ];

    let mut codes: std::collections::HashSet<&str> = cases.iter().map(|c| c.2).collect();
    // The one code that depends on the subject, not the bytes: signed by
    // one miner, sent on the other's submission subject.
    let before = w.sys.head().await;
    let raw = bytes::Bytes::from(sign(m, &mined(m, "e-subject", "1.00")));
    let on_other = custody::client::submit_to(&w.sys.client, custody_wire::subjects::submit(&m2.public_key()), raw).await.unwrap();
    let Outcome::Rejected(r) = &on_other else { panic!("accepted on another actor's subject") };
    assert_eq!((r.code.as_str(), r.id.as_deref()), ("subject_mismatch", Some("e-subject")), "{}", r.message);
    assert_eq!(w.sys.head().await, before);
    codes.insert("subject_mismatch");
    // A whole batch request refused: in tests/idempotency.rs, with batches.
    codes.insert("batch_too_large");
    // Over an actor's quota: in tests/quota.rs, with a flood.
    codes.insert("rate_limited");
    for code in custody_proto::Code::ALL {
        assert!(codes.contains(code.as_str()), "no case for {code}");
    }

    let before = w.sys.head().await;
    for (name, raw, expected) in cases {
        let outcome = w.sys.submit_raw(raw).await;
        let Outcome::Rejected(r) = &outcome else { panic!("{name}: accepted") };
        assert_eq!(r.code, expected, "{name}: {}", r.message);
        assert!(!r.message.is_empty(), "{name}: no message");
        assert_eq!(w.sys.head().await, before, "{name}: the ledger changed");
    }

    // The service still serves, and the lots refused above are untouched.
    let r =
        w.sys.accept(m, &event(m, "after", "split", json!({"lot": "A", "into": [{"lot": "A1", "carats": "60.00"}, {"lot": "A2", "carats": "40.00"}]}))).await;
    assert_eq!(r.seq, before.0 + 1);
}
