//! Every answer of DOMAIN.md's worked example, exactly, from a running
//! ledger and projection over NATS, and from the CLI.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_md_answers_exactly() {
    let sys = worked_example().await;

    let l3 = sys.origin("L3").await;
    assert_eq!(l3["mine_origin"], json!([{"country": "BW", "share": "0.6000"}, {"country": "RU", "share": "0.4000"}]));
    assert_eq!(l3["kp_origin"], "mixed");
    assert_eq!(l3["custody_model"], "mass_balance");
    assert_eq!(l3["carats"], "2500.00");

    let s1 = sys.origin("S1").await;
    assert_eq!(s1["lot"], "S1");
    assert_eq!(s1["state"], "polished");
    assert_eq!(s1["carats"], "0.72");
    assert_eq!(s1["mine_origin"], json!([{"country": "BW", "share": "0.6000"}, {"country": "RU", "share": "0.4000"}]));
    assert_eq!(s1["customs_origin"], "IN");
    assert_eq!(s1["kp_origin"], "mixed");
    assert_eq!(s1["custody_model"], "mass_balance");
    assert_eq!(s1["traced"], true);
    let transformations = s1["transformations"].as_array().unwrap();
    assert_eq!(transformations.len(), 1);
    assert_eq!(transformations[0]["country"], "IN");
    assert_eq!(transformations[0]["seq"], 16);
    assert_eq!(transformations[0]["hash"].as_str().unwrap().len(), 64);
    let notes: Vec<&str> = s1["path"].as_array().unwrap().iter().map(|s| s["note"].as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.starts_with("re-export AE -> IN")), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("export IN -> US") || n.starts_with("re-export IN -> US")), "{notes:?}");
    let seqs: Vec<u64> = s1["path"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "path in ledger order: {seqs:?}");

    let l1 = sys.origin("L1").await;
    assert_eq!(l1["kp_origin"], "RU");
    assert_eq!(l1["customs_origin"], "RU");
    assert_eq!(l1["custody_model"], "identity_preserved");

    let v = sys.admissible("S1", "us-2022", "2024-11-15").await;
    assert_eq!(v["verdict"], "admissible", "{v}");
    assert_eq!(v["rules"], "us-2022");
    assert_eq!(v["date"], "2024-11-15");
    let v = sys.admissible("S1", "us-2024", "2024-11-15").await;
    assert_eq!(v["verdict"], "prohibited", "{v}");
    let why = v["reasons"].as_array().unwrap().iter().find(|r| r["finding"] == "prohibited").unwrap();
    assert_eq!(why["rule"], "ofac-2024-09-0.5ct");
    assert_eq!(why["country"], "RU");
    assert_eq!(why["share"], "0.4000");
    assert_eq!(why["threshold"], "0.50");
    let v = sys.admissible("S3", "us-2024", "2024-11-15").await;
    assert_eq!(v["verdict"], "admissible", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_answers_too_and_errors_are_clear() {
    let sys = worked_example().await;
    let out = sys.custody(&["origin", "S1", "--json"], None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["customs_origin"], "IN");
    let out = sys.custody(&["admissible", "S1", "--rules", "us-2024", "--date", "2024-11-15"], None);
    assert!(stdout(&out).contains("prohibited"), "{}", stdout(&out));
    let out = sys.custody(&["genealogy", "S1", "--json"], None);
    let g: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let ancestors: Vec<&str> = g["ancestors"].as_array().unwrap().iter().map(|n| n["lot"].as_str().unwrap()).collect();
    for lot in ["L4", "L3", "L1", "L2"] {
        assert!(ancestors.contains(&lot), "{ancestors:?}");
    }
    let g = sys.query(custody_wire::subjects::QUERY_GENEALOGY, json!({"lot": "L3"})).await.unwrap();
    let descendants: Vec<&str> = g["descendants"].as_array().unwrap().iter().map(|n| n["lot"].as_str().unwrap()).collect();
    for lot in ["L4", "L5", "S1", "S2", "S3"] {
        assert!(descendants.contains(&lot), "{descendants:?}");
    }

    // Found by the number on its papers, in any case, on the command line.
    let out = sys.custody(&["find", "ae-2024-0042"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = stdout(&out);
    assert!(said.starts_with("L4") && said.contains("KP certificate (export)") && said.contains("since made into S1, S2, S3"), "{said}");
    let out = sys.custody(&["find", "XX-0000"], None);
    assert!(out.status.success() && stdout(&out).starts_with("nothing found for \"XX-0000\""), "{}", stdout(&out));

    // A regulator's own rule file, by path.
    let file = sys.dir.path().join("strict.toml");
    std::fs::write(&file, "name = \"strict\"\n[[rule]]\nid = \"no-bw\"\nbanned = [\"BW\"]\nbasis = \"mine_origin\"\nfrom = \"2020-01-01\"\n").unwrap();
    let out = sys.custody(&["admissible", "S3", "--rules", file.to_str().unwrap(), "--date", "2024-11-15", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["verdict"], "prohibited", "{v}");
    assert_eq!(v["rules"], "strict");

    // Errors: clear codes, and the service keeps answering.
    let cases = [
        (json!({"lot": "NOPE"}), custody_wire::subjects::QUERY_ORIGIN, "unknown_lot"),
        (json!({"lot": "S1", "rules": "us-2024", "date": "15/11/2024"}), custody_wire::subjects::QUERY_ADMISSIBILITY, "invalid_date"),
        (json!({"lot": "S1", "rules": "uk-2099", "date": "2024-11-15"}), custody_wire::subjects::QUERY_ADMISSIBILITY, "unknown_rules"),
        (json!({"lot": "S1", "rules": "name = \"x\"\n[[rule]]\nid = 1", "date": "2024-11-15"}), custody_wire::subjects::QUERY_ADMISSIBILITY, "invalid_rules"),
        (json!("not an object"), custody_wire::subjects::QUERY_ORIGIN, "bad_request"),
        (json!({"q": "x".repeat(129)}), custody_wire::subjects::QUERY_SEARCH, "invalid_parameter"),
    ];
    for (body, subject, code) in cases {
        let v = sys.query(subject, body.clone()).await.expect("answered");
        assert_eq!(v["code"], code, "{body}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let out = sys.custody(&["origin", "NOPE"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_lot"));
    assert_eq!(sys.origin("S1").await["customs_origin"], "IN", "still answering");
}
