//! proto/schema/event.schema.json is what producers in other languages
//! validate against before signing: it must accept what the ledger accepts
//! and refuse what the ledger's stateless checks refuse.

use custody::demo::Cast;
use custody_proto::{Event, Timestamp};
use serde_json::{json, Value};

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/schema/event.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("the schema compiles")
}

fn now() -> Timestamp {
    Timestamp::now()
}

#[test]
fn every_worked_example_event_is_valid_under_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let cast = Cast::load_or_create(nkeys::KeyPair::new_user(), dir.path()).unwrap();
    let schema = schema();
    let mut kinds = std::collections::HashSet::new();
    let mut events: Vec<Value> = cast.worked_example().into_iter().map(|(_, v)| v).collect();
    let k = cast.trader_ae.public_key();
    events.push(json!({"id": "d1", "kind": "declared", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lot": "D1", "carats": "3.00", "state": "polished", "origin": "unknown"}));
    events.push(json!({"id": "d2", "kind": "declared", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lot": "D2", "carats": "3.00", "state": "rough", "origin": [{"country": "CA", "share": "0.2500"}, {"country": "BW", "share": "0.7500"}], "evidence": "invoice 42"}));
    events.push(json!({"id": "f1", "kind": "flagged", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lot": "D1", "reason": "yield"}));
    events.push(json!({"id": "t1", "kind": "transferred", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lots": ["D1"], "to": k}));
    events.push(json!({"id": "i1", "kind": "imported", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lots": ["D1"]}));
    let h = "0".repeat(64);
    events.push(json!({"id": "v1", "kind": "verified", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "certificate": "AE-2024-0042", "carats": "100.00",
                       "verification": "ADO-1", "finding": "conforms", "evidence": [{"type": "verification_report", "blake3": h, "reference": "ADO-1"}]}));
    events.push(json!({"id": "v2", "kind": "verified", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lots": ["D1"], "carats": "3.00",
                       "verification": "ADO-2", "finding": "does_not_conform", "reason": "synthetic stones in the parcel"}));
    events.push(json!({"id": "m9", "kind": "mined", "actor": k, "occurred_at": "2024-01-01T00:00:00Z", "lot": "M9", "carats": "3.00", "country": "BW",
                       "evidence": [{"type": "kp_certificate", "sha256": h}, {"type": "scan", "blake3": h}]}));
    for e in &events {
        let errors: Vec<String> = schema.iter_errors(e).map(|x| x.to_string()).collect();
        assert!(errors.is_empty(), "{e}: {errors:?}");
        Event::parse(e.to_string().as_bytes(), now()).unwrap_or_else(|r| panic!("{e}: {r}"));
        kinds.insert(e["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(kinds.len(), 11, "every kind is exercised: {kinds:?}");
}

#[test]
fn the_schema_refuses_what_the_ledger_refuses() {
    let schema = schema();
    let k = nkeys::KeyPair::new_user().public_key();
    let mined = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({"id": "e", "kind": "mined", "actor": k, "occurred_at": "2024-09-02T08:00:00Z", "lot": "L1", "carats": "1.00", "country": "RU"});
        f(&mut v);
        v
    };
    let bad = [
        mined(&|v| v["carats"] = json!("1.001")),
        mined(&|v| v["carats"] = json!("0")),
        mined(&|v| v["carats"] = json!("-1")),
        mined(&|v| v["carats"] = json!("1e3")),
        mined(&|v| v["carats"] = json!(1.5)),
        mined(&|v| v["carats"] = json!("100000000.01")),
        mined(&|v| v["carats"] = json!("999999999999999.99")),
        mined(&|v| v["country"] = json!("ru")),
        mined(&|v| v["kind"] = json!("stolen")),
        mined(&|v| v["extra"] = json!(1)),
        mined(&|v| v["lot"] = json!("L 1")),
        mined(&|v| v["occurred_at"] = json!("2024-09-02T08:00:00+02:00")),
        mined(&|v| v["actor"] = json!("not-a-key")),
        mined(&|v| {
            v.as_object_mut().unwrap().remove("lot");
        }),
        json!({"id": "e", "kind": "split", "actor": k, "occurred_at": "2024-09-02T08:00:00Z", "lot": "L1", "into": []}),
        json!({"id": "e", "kind": "imported", "actor": k, "occurred_at": "2024-09-02T08:00:00Z"}),
        mined(&|v| v["evidence"] = json!("a photo")),
        mined(&|v| v["evidence"] = json!([{"type": "scan", "sha256": "ABC"}])),
        mined(&|v| v["evidence"] = json!([{"type": "scan"}])),
        mined(&|v| v["evidence"] = json!([{"type": "scan", "sha256": "0".repeat(64), "blake3": "0".repeat(64)}])),
        mined(&|v| v["evidence"] = json!([{"type": "selfie", "sha256": "0".repeat(64)}])),
        mined(&|v| v["evidence"] = json!([])),
        json!({"id": "e", "kind": "verified", "actor": k, "occurred_at": "2024-09-02T08:00:00Z", "lots": ["L1"], "carats": "1.00", "verification": "V1", "finding": "does_not_conform"}),
        json!({"id": "e", "kind": "verified", "actor": k, "occurred_at": "2024-09-02T08:00:00Z", "lots": ["L1"], "certificate": "RU-1", "carats": "1.00", "verification": "V1", "finding": "conforms"}),
        json!({"id": "e", "kind": "verified", "actor": k, "occurred_at": "2024-09-02T08:00:00Z", "lots": ["L1"], "carats": "1.00", "verification": "V 1", "finding": "conforms"}),
        json!({"id": "e", "kind": "verified", "actor": k, "occurred_at": "2024-09-02T08:00:00Z", "lots": ["L1"], "carats": "1.00", "verification": "V1", "finding": "fine"}),
    ];
    for v in bad {
        assert!(!schema.is_valid(&v), "schema accepted {v}");
        assert!(Event::parse(v.to_string().as_bytes(), now()).is_err(), "ledger accepted {v}");
    }
}
