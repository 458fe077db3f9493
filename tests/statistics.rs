//! Public flows (DOMAIN.md, "Public statistics"), end to end on `custody
//! up`: readable by anyone over HTTP; each published figure sums at least
//! three exporters and the totals equal the sums over the ledger; a thin
//! flow is pooled or withheld, never shown alone; no lot id, party or
//! per-lot price appears; and the same figures come back recomputed
//! offline from a backup.

mod common;

use common::*;
use custody_proto::Outcome;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// Runs the CLI off the async threads.
async fn cli(nats: &str, args: &[&str]) -> std::process::Output {
    let (nats, args): (String, Vec<String>) = (nats.to_owned(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || run_cli(&nats, &args.iter().map(String::as_str).collect::<Vec<_>>(), None)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_sum_three_exporters_or_more_and_recompute_from_a_backup() {
    let up = up();
    // Four Botswanan mines and one Russian mine export rough to one trader
    // in the UAE, in the third quarter of 2024.
    let mines: Vec<(KeyPair, &str)> =
        vec![(KeyPair::new_user(), "BW"), (KeyPair::new_user(), "BW"), (KeyPair::new_user(), "BW"), (KeyPair::new_user(), "BW"), (KeyPair::new_user(), "RU")];
    let trader = KeyPair::new_user();
    let mut actors: Vec<(&KeyPair, &str, &str)> = mines.iter().map(|(k, c)| (k, "miner", *c)).collect();
    actors.push((&trader, "trader", "AE"));
    up.register(&actors).await;
    let (mut carats_bw, mut value_bw) = (0u64, 0u64);
    for (i, (mine, country)) in mines.iter().enumerate() {
        let (nc, _, _) = connect_when_allowed(&up.url, mine).await;
        let (lot, hundredths, cents) = (format!("ST{i}"), 10_000 + 2_500 * i as u64, 5_000_000 + 100_000 * i as u64);
        let show = |v: u64| format!("{}.{:02}", v / 100, v % 100);
        let mut mined = event(mine, &format!("st-m{i}"), "mined", json!({"lot": lot, "carats": show(hundredths), "country": country}));
        mined["occurred_at"] = json!("2024-07-01T08:00:00Z");
        let mut exported = event(
            mine,
            &format!("st-x{i}"),
            "exported",
            json!({"lots": [lot], "to": trader.public_key(), "to_country": "AE", "certificate": {"number": format!("{country}-2024-9{i:03}"), "value_usd": show(cents)}}),
        );
        exported["occurred_at"] = json!("2024-08-01T08:00:00Z");
        for e in [mined, exported] {
            let outcome = custody::client::submit(&nc, bytes::Bytes::from(sign(mine, &e))).await.unwrap();
            assert!(matches!(outcome, Outcome::Receipt(_)), "{outcome:?}");
        }
        if *country == "BW" {
            carats_bw += hundredths;
            value_bw += cents;
        }
    }

    // Refusals by code: all five mines try to mine ST0 again (lot_exists,
    // five actors: shown); the trader exports a lot nobody recorded
    // (unknown_lot, one actor: withheld, never shown alone).
    for (i, (mine, country)) in mines.iter().enumerate() {
        let (nc, _, _) = connect_when_allowed(&up.url, mine).await;
        let again = event(mine, &format!("st-again{i}"), "mined", json!({"lot": "ST0", "carats": "1.00", "country": country}));
        let outcome = custody::client::submit(&nc, bytes::Bytes::from(sign(mine, &again))).await.unwrap();
        assert!(matches!(&outcome, Outcome::Rejected(r) if r.code.as_str() == "lot_exists"), "{outcome:?}");
    }
    let (nc, _, _) = connect_when_allowed(&up.url, &trader).await;
    let nothing = event(
        &trader,
        "st-nothing",
        "exported",
        json!({"lots": ["NOPE"], "to": mines[0].0.public_key(), "to_country": "BW", "certificate": {"number": "AE-2024-0000", "value_usd": "1.00"}}),
    );
    let outcome = custody::client::submit(&nc, bytes::Bytes::from(sign(&trader, &nothing))).await.unwrap();
    let Outcome::Rejected(thin) = outcome else { panic!("{outcome:?}") };

    // Anyone reads them, unsigned, once the projection has counted them.
    let http = reqwest::Client::new();
    let mut stats = Value::Null;
    for _ in 0..200 {
        stats = http.get(format!("{}/v1/statistics", up.http)).send().await.unwrap().json().await.unwrap();
        if stats["flows"].as_array().is_some_and(|f| !f.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("{stats:#}");
    let show = |v: u64| format!("{}.{:02}", v / 100, v % 100);
    assert_eq!(
        stats["flows"],
        json!([{"mined_in": "BW", "to": "AE", "quarter": "2024-Q3", "carats": show(carats_bw), "stones": 0, "value_usd": show(value_bw)}]),
        "the Botswanan flow sums its four exporters exactly; the one Russian exporter's flow is never shown alone: {stats}"
    );
    assert_eq!(stats["withheld"], true, "the Russian flow was too thin even pooled: {stats}");
    let refusals = stats["refusals"].clone();
    assert_eq!(refusals["by_code"], json!([{"code": "lot_exists", "refusals": 5}]), "{refusals}");
    assert_eq!(refusals["withheld"], 1, "the trader's lone {} is not shown alone: {refusals}", thin.code.as_str());
    assert!(refusals["replicas"].as_u64() >= Some(1) && refusals["since"].is_string(), "{refusals}");
    assert_eq!(stats["minimum_actors"], 3);
    let text = stats.to_string();
    for (i, (mine, _)) in mines.iter().enumerate() {
        assert!(!text.contains(&mine.public_key()) && !text.contains(&format!("\"ST{i}\"")), "no party or lot: {text}");
    }
    assert!(!text.contains("RU-2024") && !text.contains("50000.00"), "no certificate or per-lot price: {text}");

    // Recomputed offline from a backup, as of the same entry: the same.
    let ledger_key = stdout(&cli("", &["ledger", "key", "--data", up.dir.path().join("ledger").to_str().unwrap()]).await).trim().to_owned();
    let operator = up.dir.path().join("keys/services/operator-login.nk");
    let kept = tempfile::tempdir().unwrap();
    let backup = kept.path().join("backup");
    let out = cli(&up.url, &["--nkey", operator.to_str().unwrap(), "backup", "--out", backup.to_str().unwrap(), "--key", &ledger_key]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seq = stats["as_of"]["seq"].as_u64().unwrap().to_string();
    let out = cli("", &["statistics", "--backup", backup.to_str().unwrap(), "--key", &ledger_key, "--as-of", &seq, "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    // Every figure but the refusals, which are not ledger entries.
    let mut from_entries = stats.clone();
    from_entries.as_object_mut().unwrap().remove("refusals");
    assert_eq!(offline, from_entries, "recomputed from the backup");
    // And it says so when asked past the backup's end.
    let out = cli("", &["statistics", "--backup", backup.to_str().unwrap(), "--as-of", "999999"]).await;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fewer than --as-of"), "{}", String::from_utf8_lossy(&out.stderr));
}
