//! The HTTP surface of DOMAIN.md against the worked example, and its errors:
//! 4xx with a JSON code, never a 500, and the service keeps answering.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_answers_the_worked_example_and_refuses_clearly() {
    let mut sys = worked_example().await;
    let base = sys.start_gateway();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(&url).send().await.expect("gateway answers");
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, ct, body)
        }
    };

    let (status, ct, s1) = get("/v1/lots/S1/origin".into()).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(s1["customs_origin"], "IN");
    assert_eq!(s1["mine_origin"][0]["country"], "BW");
    assert_eq!(s1["mine_origin"][0]["share"], "0.6000");

    let (status, _, v) = get("/v1/lots/S1/admissibility?rules=us-2024&date=2024-11-15".into()).await;
    assert_eq!((status, v["verdict"].as_str()), (200, Some("prohibited")));
    let (_, _, v) = get("/v1/lots/S1/admissibility?rules=us-2022&date=2024-11-15".into()).await;
    assert_eq!(v["verdict"], "admissible");
    let (_, _, v) = get("/v1/lots/S3/admissibility?rules=us-2024&date=2024-11-15".into()).await;
    assert_eq!(v["verdict"], "admissible");

    let (status, _, g) = get("/v1/lots/S1/genealogy".into()).await;
    assert_eq!(status, 200);
    let ancestors: Vec<&str> = g["ancestors"].as_array().unwrap().iter().map(|n| n["lot"].as_str().unwrap()).collect();
    assert!(ancestors.contains(&"L1") && ancestors.contains(&"L2"), "{ancestors:?}");

    // The entry that proves the cut, with its exact envelope and decoded event.
    let cut_seq = s1["transformations"][0]["seq"].as_u64().unwrap();
    let (status, _, e) = get(format!("/v1/ledger/entries/{cut_seq}")).await;
    assert_eq!(status, 200);
    assert_eq!(e["seq"], cut_seq);
    assert_eq!(e["hash"], s1["transformations"][0]["hash"]);
    assert_eq!(e["hash_valid"], true);
    assert_eq!(e["event"]["kind"], "processed");
    assert_eq!(e["event"]["process"], "cutting_polishing");
    // Unsigned requests get the entry without its confidential fields
    // (tests/confidentiality.rs shows who sees them).
    assert!(e.get("envelope").is_none(), "{e}");
    assert!(e["redacted"].as_array().unwrap().iter().any(|f| f == "certificate.value_usd"), "{e}");

    let (status, _, v) = get("/v1/ledger/verify".into()).await;
    assert_eq!(status, 200);
    assert_eq!(v["ok"], true);
    assert_eq!(v["entries"], 18);

    let (status, _, doc) = get("/v1/openapi.json".into()).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/lots/{lot}/origin",
        "/v1/lots/{lot}/admissibility",
        "/v1/lots/{lot}/genealogy",
        "/v1/ledger/entries/{seq}",
        "/v1/ledger/entries/{seq}/proof",
        "/v1/ledger/checkpoint",
        "/v1/ledger/consistency",
        "/v1/ledger/verify",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }

    let errors = [
        ("/v1/lots/NOPE/origin", 404, "unknown_lot"),
        ("/v1/lots/S1/admissibility?rules=us-2024", 400, "missing_parameter"),
        ("/v1/lots/S1/admissibility?rules=us-2024&date=2024-13-45", 400, "invalid_date"),
        ("/v1/lots/S1/admissibility?rules=uk-2099&date=2024-11-15", 400, "unknown_rules"),
        ("/v1/ledger/entries/0", 400, "invalid_seq"),
        ("/v1/ledger/entries/-3", 400, "invalid_seq"),
        ("/v1/ledger/entries/abc", 400, "invalid_seq"),
        ("/v1/ledger/entries/99999", 404, "unknown_entry"),
        ("/v1/nothing/here", 404, "not_found"),
        ("/v1/lots/%00%ff/origin", 400, "invalid_path"),
        ("/v1/lots/L%20L/origin", 404, "unknown_lot"),
        // A lot id is a key to look up, never a file path.
        ("/v1/lots/..%2F..%2F..%2Fetc%2Fpasswd/origin", 404, "unknown_lot"),
        ("/v1/../../../etc/passwd", 404, "not_found"),
        ("/%2e%2e/%2e%2e/etc/passwd", 404, "not_found"),
    ];
    for (path, want_status, want_code) in errors {
        let (status, _, body) = get(path.into()).await;
        assert_eq!(status, want_status, "{path}: {body}");
        assert_eq!(body["code"], want_code, "{path}: {body}");
        assert!(!body["message"].as_str().unwrap_or("").is_empty(), "{path}");
    }
    // An oversized request (a 60,000-character lot id, near the longest URI
    // a client can send): refused as the client's error, never a 5xx.
    let (status, _, body) = get(format!("/v1/lots/{}/origin", "L".repeat(60_000))).await;
    assert!((400..500).contains(&status), "{status}: {}", body.to_string().chars().take(200).collect::<String>());
    assert!(body.to_string().len() < 1_000, "the answer does not echo the whole input back");
    let (status, _, _) = get("/v1/lots/S1/origin".into()).await;
    assert_eq!(status, 200, "still serving");

    // The lot map's heads: what a certificate's holder compares its own with.
    let post = |body: String| {
        let http = http.clone();
        let url = format!("{base}/v1/ledger/map");
        async move {
            let r = http.post(&url).header("content-type", "application/json").body(body).send().await.expect("gateway answers");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, v) = post(r#"{"lots": ["S1", "NO-SUCH-LOT"]}"#.into()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["map"]["subjects"].as_array().map(Vec::len), Some(2), "present and absent subjects proven: {v}");
    assert!(v["checkpoint"]["tree_size"].as_u64().unwrap() > 0, "{v}");
    let too_many: Vec<String> = (0..2_001).map(|i| format!("L{i}")).collect();
    for (body, want_status, want_code) in [
        ("not json".to_owned(), 400, "bad_request"),
        (r#"{"lots": "S1"}"#.to_owned(), 400, "bad_request"),
        (r#"{"lots": ["S1"], "extra": 1}"#.to_owned(), 400, "bad_request"),
        (r#"{"lots": [], "actors": []}"#.to_owned(), 400, "invalid_parameter"),
        (serde_json::json!({ "lots": too_many }).to_string(), 400, "invalid_parameter"),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!((status, v["code"].as_str()), (want_status, Some(want_code)), "{}: {v}", body.chars().take(40).collect::<String>());
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
}

/// `/v1/ledger/verify` is open to anyone: fifty callers at once must cost
/// one verification, and a later call only the entries committed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_cost_one_and_later_ones_continue() {
    const ENTRIES: usize = 20_000;
    let mut sys = System::start().await;
    let mut miners = Vec::new();
    for i in 0..4 {
        miners.push(sys.actor(&format!("m{i}"), "miner", "BW").await);
    }
    let mined = |i: usize| {
        let m = &miners[i % miners.len()];
        sign(m, &event(m, &format!("v{i}"), "mined", serde_json::json!({"lot": format!("V{i}"), "carats": "1.00", "country": "BW"})))
    };
    sys.accept_all((0..ENTRIES - 4).map(mined)).await;
    let (head, _) = sys.head().await;
    assert_eq!(head as usize, ENTRIES);
    sys.stream_caught_up().await;
    let http = reqwest::Client::new();
    let verify = |base: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("{base}/v1/ledger/verify")).send().await.expect("gateway answers");
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.expect("JSON")
        }
    };

    // One caller alone, on a gateway that has verified nothing yet.
    let alone = sys.start_gateway();
    let started = std::time::Instant::now();
    let v = verify(alone).await;
    let one = started.elapsed();
    assert_eq!((v["ok"].as_bool(), v["newly_verified"].as_u64()), (Some(true), Some(ENTRIES as u64)), "{v}");

    // Fifty at once, on a fresh gateway (the first one is stopped).
    let base = sys.start_gateway();
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..50).map(|_| verify(base.clone()))).await;
    let fifty = started.elapsed();
    let verified: u64 = answers.iter().map(|a| a["newly_verified"].as_u64().expect("newly_verified")).sum();
    assert_eq!(verified, ENTRIES as u64, "each entry is verified once, whoever asks");
    for a in &answers {
        assert_eq!(a["ok"], true);
        assert_eq!(a["verified_through"], v["verified_through"], "all answer with the same verified head");
    }
    assert!(fifty < one * 3 + std::time::Duration::from_secs(2), "50 concurrent verifications took {fifty:?}; one alone took {one:?}");

    // Later: only the new entries.
    sys.accept_all((ENTRIES..ENTRIES + 10).map(mined)).await;
    sys.stream_caught_up().await;
    let later = verify(base).await;
    assert_eq!(later["newly_verified"], 10, "{later}");
    assert_eq!(later["verified_through"]["seq"], ENTRIES as u64 + 10);
}
