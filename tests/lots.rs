//! `GET /v1/lots` (issue 27): every lot, a page at a time, filtered by
//! country of mining, state, verdict under a rule set on a date and date
//! of creation; and by holder only for that holder itself and regulators,
//! since who holds what is a business secret. Against the worked example:
//! L1, L2 mined; L3 merged from them and split into L4, L5; L4 cut into
//! S1, S2, S3.

mod common;

use std::collections::BTreeSet;

use common::*;
use nkeys::KeyPair;
use serde_json::Value;

const ALL: [&str; 8] = ["L1", "L2", "L3", "L4", "L5", "S1", "S2", "S3"];

fn ids(page: &Value) -> Vec<String> {
    page["lots"].as_array().unwrap_or_else(|| panic!("a page of lots: {page}")).iter().map(|l| l["lot"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lots_are_listed_a_page_at_a_time_and_filtered() {
    let mut sys = worked_example().await;
    let base = sys.start_gateway();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(&url).await.expect("the gateway answers");
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let json = |path: &str| {
        let get = get(path.to_owned());
        let path = path.to_owned();
        async move {
            let (status, text) = get.await;
            assert_eq!(status, 200, "{path}: {text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };

    // Pages of three, each starting where the last said, cover every lot once.
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = json(&format!("/v1/lots?limit=3{}", after.as_ref().map_or_else(String::new, |a| format!("&after={a}")))).await;
        assert!(ids(&page).len() <= 3, "{page}");
        assert!(page["as_of_seq"].as_u64().unwrap() > 0, "{page}");
        seen.extend(ids(&page));
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ALL, "in id order, each once");
    assert_eq!(pages, 3);
    // Each page is what the OpenAPI document says it is.
    let doc = json("/v1/openapi.json").await;
    let schema = jsonschema::validator_for(&doc["components"]["schemas"]["Lots"]).unwrap();
    let page = json("/v1/lots?rules=us-2024&date=2024-11-15&verdict=prohibited&limit=2").await;
    assert!(schema.is_valid(&page), "{page}");
    assert!(!schema.is_valid(&serde_json::json!({"lots": [{"lot": "S1"}], "next": null, "as_of_seq": 1})), "the schema checks something");

    // Each filter, and filters together.
    let table: [(&str, &[&str]); 8] = [
        ("mined_in=RU", &["L1", "L3", "L4", "L5", "S1", "S2", "S3"]),
        ("mined_in=bw&state=rough", &["L2", "L3", "L4", "L5"]),
        ("state=polished", &["S1", "S2", "S3"]),
        ("consumed=false", &["L5", "S1", "S2", "S3"]),
        ("rules=us-2024&date=2024-11-15&verdict=prohibited", &["L1", "L3", "L4", "L5", "S1", "S2"]),
        ("rules=us-2022&date=2024-11-15&verdict=prohibited&state=polished", &[]),
        ("from=2024-09-15&to=2024-09-16", &["L3", "L4", "L5"]),
        ("from=2024-10-01&mined_in=CA", &[]),
    ];
    for (filter, expected) in table {
        let page = json(&format!("/v1/lots?{filter}")).await;
        assert_eq!(ids(&page), expected, "{filter}: {page}");
    }
    let page = json("/v1/lots?rules=us-2024&date=2024-11-15&verdict=admissible&state=polished").await;
    assert_eq!(page["lots"][0]["lot"], "S3");
    assert_eq!(page["lots"][0]["verdict"], "admissible");
    assert_eq!(page["lots"][0]["carats"], "0.30");
    assert_eq!(page["lots"][0]["held_in"], "US");
    assert_eq!(page["lots"][0]["mine_origin"][1], serde_json::json!({"country": "RU", "share": "0.4000"}));

    // CSV of the same list, one row a lot.
    let (status, csv) = get("/v1/lots?state=polished&format=csv".into()).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("lot,state,carats,consumed,created,held_in,mine_origin,"), "{csv}");
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(lines[1], format!("S1,polished,0.72,false,2024-10-10,US,BW 0.6000; RU 0.4000,{},", page["as_of_seq"]), "{csv}");

    // On the command line: every page, one line a lot, or CSV.
    let out = sys.custody(&["lots", "--mined-in", "ru", "--state", "polished", "--limit", "2"], None);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("S1") && text.contains("S2") && !text.contains("S3"), "{text}");
    assert!(text.contains("2 lot(s)") && text.contains("--after S2"), "{text}");
    let out = sys.custody(&["lots", "--rules", "us-2024", "--verdict", "admissible", "--date", "2024-11-15", "--csv"], None);
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(rows, ["L2", "S3"], "{text}");

    // Bad filters are refused with a code, and say what they should be.
    for (path, status, code) in [
        ("/v1/lots?colour=D", 400, "invalid_parameter"),
        ("/v1/lots?mined_in=Russia", 400, "invalid_parameter"),
        ("/v1/lots?state=liquid", 400, "invalid_parameter"),
        ("/v1/lots?limit=0", 400, "invalid_parameter"),
        ("/v1/lots?limit=100000", 400, "invalid_parameter"),
        ("/v1/lots?consumed=maybe", 400, "invalid_parameter"),
        ("/v1/lots?verdict=prohibited", 400, "missing_parameter"),
        ("/v1/lots?rules=us-2024&verdict=prohibited", 400, "invalid_date"),
        ("/v1/lots?rules=us-1999&verdict=prohibited&date=2024-11-15", 400, "unknown_rules"),
        ("/v1/lots?from=yesterday", 400, "invalid_date"),
    ] {
        let (got, text) = get(path.into()).await;
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((got, e["code"].as_str()), (status, Some(code)), "{path}: {text}");
        assert!(e["message"].as_str().is_some_and(|m| m.len() > 10), "{path}: {text}");
    }
}

/// Who may list lots by holder, as a table of parties × queries: each
/// actor its own lots, a regulator anyone's, nobody else anyone's; and no
/// answer about lots names a party or a price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_holder_and_regulators_list_lots_by_holder() {
    let mut sys = worked_example().await;
    let cast = sys.cast();
    let regulator = sys.actor("customs", "regulator", "US").await;
    let outsider = sys.actor("outsider", "miner", "CA").await;
    sys.projection_caught_up().await;
    let base = sys.start_gateway();
    let list = |who: Option<&KeyPair>, query: String| {
        let (base, path) = (base.clone(), format!("/v1/lots?{query}"));
        // Signed now, sent when awaited.
        let auth = who.map(|k| custody_proto::request::sign(k, "GET", &path, custody_proto::Timestamp::now()).unwrap());
        async move { get_with(&base, &path, auth).await }
    };
    let (t, c, u, a) = (&cast.trader_ae, &cast.cutter_in, &cast.importer_us, &cast.miner_ru);
    let of = |k: &KeyPair| format!("holder={}", k.public_key());
    /// (who, signed by, query, status, lots or error code)
    type Case<'a> = (&'a str, Option<&'a KeyPair>, String, u16, Result<&'a [&'a str], &'a str>);
    let table: Vec<Case> = vec![
        ("anonymous", None, "holder=me".into(), 401, Err("bad_credentials")),
        ("anonymous", None, of(t), 401, Err("bad_credentials")),
        ("the trader", Some(t), "holder=me".into(), 200, Ok(&["L1", "L2", "L3", "L5"])),
        ("the trader", Some(t), of(t), 200, Ok(&["L1", "L2", "L3", "L5"])),
        ("the trader", Some(t), "holder=me&consumed=false".into(), 200, Ok(&["L5"])),
        ("the trader", Some(t), of(c), 403, Err("not_permitted")),
        ("the trader", Some(t), of(u), 403, Err("not_permitted")),
        ("the cutter", Some(c), "holder=me".into(), 200, Ok(&["L4"])),
        ("the cutter", Some(c), of(t), 403, Err("not_permitted")),
        ("the importer", Some(u), "holder=me".into(), 200, Ok(&["S1", "S2", "S3"])),
        ("miner A", Some(a), "holder=me".into(), 200, Ok(&[])),
        ("miner A", Some(a), of(t), 403, Err("not_permitted")),
        ("an outsider", Some(&outsider), "holder=me".into(), 200, Ok(&[])),
        ("an outsider", Some(&outsider), of(u), 403, Err("not_permitted")),
        ("the regulator", Some(&regulator), of(t), 200, Ok(&["L1", "L2", "L3", "L5"])),
        ("the regulator", Some(&regulator), of(u), 200, Ok(&["S1", "S2", "S3"])),
        ("the regulator", Some(&regulator), "holder=me".into(), 200, Ok(&[])),
        ("the regulator", Some(&regulator), "holder=U123".into(), 400, Err("invalid_parameter")),
    ];
    let parties: BTreeSet<String> = [&cast.miner_ru, &cast.miner_bw, t, c, u].iter().map(|k| k.public_key()).collect();
    for (who, key, query, status, expected) in table {
        let (got, text) = list(key, query.clone()).await;
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got, status, "{who}, {query}: {text}");
        match expected {
            Ok(lots) => assert_eq!(ids(&answer), lots, "{who}, {query}: {text}"),
            Err(code) => {
                assert_eq!(answer["code"], code, "{who}, {query}: {text}");
                assert!(answer.get("lots").is_none(), "a refusal lists nothing: {text}");
            }
        }
        for p in parties.iter().filter(|p| key.is_none_or(|k| k.public_key() != **p)) {
            // The query names the holder; the answer never does (a refusal
            // names the caller itself).
            assert!(!text.contains(p.as_str()), "{who}, {query}: the answer names a party: {text}");
        }
        for v in ["2500000", "4100000", "300000", "9800", "value_usd"] {
            assert!(!text.contains(v), "{who}, {query}: a price shows: {text}");
        }
    }
    // Without a holder, the list is as public as `origin`, and the same
    // for everyone.
    let (_, anonymous) = list(None, "consumed=false".into()).await;
    let (_, traders) = list(Some(t), "consumed=false".into()).await;
    assert_eq!(anonymous, traders);
    assert_eq!(ids(&serde_json::from_str(&anonymous).unwrap()), ["L5", "S1", "S2", "S3"]);
}
