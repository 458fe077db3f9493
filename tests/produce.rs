//! Producing without JSON: `custody event <kind>` for every kind through a
//! real ledger, and `custody import` of a spreadsheet's rows, good and
//! bad, with and without `--dry-run`.

mod common;

use std::path::{Path, PathBuf};

use common::{stdout, System};
use nkeys::KeyPair;
use serde_json::Value;

/// A key's seed in a file, as an actor keeps it.
fn key_file(dir: &Path, name: &str, key: &KeyPair) -> String {
    let path = dir.join(format!("{name}.nk"));
    std::fs::write(&path, format!("{}\n", key.seed().unwrap())).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `n` days ago, as a plain date.
fn days_ago(n: u64) -> String {
    (chrono::Utc::now().date_naive() - chrono::Days::new(n)).to_string()
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

#[tokio::test]
async fn every_kind_built_from_flags_is_receipted_and_traced() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let dir = tempfile::tempdir().unwrap();
    let authority = key_file(dir.path(), "authority", &sys.authority);
    let (miner, trader, cutter, regulator, verifier) =
        (KeyPair::new_user(), KeyPair::new_user(), KeyPair::new_user(), KeyPair::new_user(), KeyPair::new_user());
    let event = |args: &[&str]| {
        let mut all = vec!["event"];
        all.extend_from_slice(args);
        all.push("--submit");
        let out = sys.custody(&all, None);
        let answer = lines(&out).pop().unwrap_or_else(|| panic!("{args:?} printed nothing: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success() && answer["seq"].is_u64(), "{args:?}: {answer}");
        answer
    };
    for (who, name, role, country) in [
        (&miner, "Jwaneng", "miner", "BW"),
        (&trader, "Gaborone Trading", "trader", "BW"),
        (&cutter, "Surat Cutting", "manufacturer", "IN"),
        (&regulator, "CBP", "regulator", "US"),
        (&verifier, "ADO", "verifier", "BE"),
    ] {
        event(&["actor.registered", "--subject", &who.public_key(), "--name", name, "--roles", role, "--country", country, "--key", &authority]);
    }
    let (m, t, c, r, v) = (
        key_file(dir.path(), "m", &miner),
        key_file(dir.path(), "t", &trader),
        key_file(dir.path(), "c", &cutter),
        key_file(dir.path(), "r", &regulator),
        key_file(dir.path(), "v", &verifier),
    );
    event(&["mined", "--lot", "EV-1", "--carats", "12.00", "--country", "BW", "--mine", "Jwaneng", "--key", &m, "--at", &days_ago(6)]);
    event(&["split", "--lot", "EV-1", "--into", "EV-A:7.00; EV-B:5.00", "--key", &m, "--at", &days_ago(5)]);
    event(&["merged", "--lots", "EV-A; EV-B", "--into", "EV-M:12.00", "--key", &m, "--at", &days_ago(5)]);
    event(&["transferred", "--lots", "EV-M", "--to", &trader.public_key(), "--key", &m, "--at", &days_ago(4)]);
    event(&[
        "exported",
        "--lots",
        "EV-M",
        "--to",
        &cutter.public_key(),
        "--to-country",
        "IN",
        "--certificate-number",
        "BW-EV-1",
        "--certificate-value-usd",
        "24000.00",
        "--key",
        &t,
        "--at",
        &days_ago(3),
    ]);
    event(&[
        "verified",
        "--certificate",
        "BW-EV-1",
        "--carats",
        "12.00",
        "--verification",
        "ADO-EV-1",
        "--finding",
        "conforms",
        "--key",
        &v,
        "--at",
        &days_ago(3),
    ]);
    event(&["imported", "--certificate", "BW-EV-1", "--key", &c, "--at", &days_ago(2)]);
    event(&[
        "processed",
        "--lot",
        "EV-M",
        "--process",
        "cutting_polishing",
        "--country",
        "IN",
        "--into",
        "EV-P1:5.10; EV-P2:0.90",
        "--key",
        &c,
        "--at",
        &days_ago(1),
    ]);
    event(&["declared", "--lot", "EV-D", "--carats", "3.00", "--state", "polished", "--origin", "unknown", "--key", &c, "--at", &days_ago(1)]);
    let flagged = event(&["flagged", "--lot", "EV-P1", "--reason", "sampled at the border", "--key", &r]);

    event(&["actor.revoked", "--subject", &verifier.public_key(), "--reason", "accreditation withdrawn", "--key", &authority]);

    // The same command again is the same event: its first receipt.
    let again = event(&["flagged", "--lot", "EV-P1", "--reason", "sampled at the border", "--key", &r, "--at", flagged["recorded_at"].as_str().unwrap()]);
    assert!(again["seq"].is_u64());
    sys.projection_caught_up().await;
    let origin = sys.origin("EV-P1").await;
    assert_eq!(origin["mine_origin"][0]["country"], "BW", "{origin}");
    assert_eq!(origin["state"], "polished", "{origin}");

    // Refused before sending, in plain words, with the ledger's code.
    let out = sys.custody(&["event", "mined", "--lot", "EV-2", "--carats", "-3", "--country", "BW", "--key", &m, "--submit"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines(&out)[0]["code"], "invalid_carats");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused before sending"), "{}", String::from_utf8_lossy(&out.stderr));
    // Refused by the ledger (the lot is consumed), answered as NATS answers.
    let out = sys.custody(&["event", "split", "--lot", "EV-1", "--into", "X:12.00", "--key", &m, "--submit"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines(&out)[0]["code"], "lot_consumed", "{}", stdout(&out));
    // Without --submit: the signed envelope, which `submit --signed` takes.
    let out = sys.custody(&["event", "mined", "--lot", "EV-3", "--carats", "1.00", "--country", "BW", "--key", &m], None);
    assert!(out.status.success());
    let envelope: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(envelope["signatures"][0]["keyid"], miner.public_key());
    let out = sys.custody(&["submit", "--signed"], Some(&stdout(&out)));
    assert!(out.status.success(), "{}", stdout(&out));
}

const MAPPING: &str = r#"
# Jwaneng's daily production sheet.
kind = "{Type}"
id = "JW-{Parcel}"
occurred_at = "{Date}"

[fields]
lot = "{Parcel}"
carats = "{Weight (ct)}"
country = "BW"
mine = "{Pit}"

[kinds]
Extraction = "mined"
"#;

#[tokio::test]
async fn a_days_sheet_imports_with_receipts_and_each_bad_row_refused_and_a_dry_run_sends_nothing() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let miner = sys.actor("Jwaneng", "miner", "BW").await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "miner", &miner);
    let map: PathBuf = dir.path().join("mapping.toml");
    std::fs::write(&map, MAPPING).unwrap();
    let today = days_ago(0);
    let csv = dir.path().join("production.csv");
    std::fs::write(
        &csv,
        format!(
            "Parcel,Type,Date,Weight (ct),Pit\n\
             P-100,Extraction,{today},12.40,North\n\
             P-101,Extraction,{today},-2,North\n\
             P-102,Extraction,{today},3.05,South\n\
             P-103,Extraction,31/12/2026,1.00,South\n\
             P-104,Sorting,{today},1.00,South\n\
             P-102,Extraction,{today},3.05,South\n"
        ),
    )
    .unwrap();
    // Someone recorded P-102 by hand already.
    sys.accept(&miner, &common::event(&miner, "by-hand", "mined", serde_json::json!({"lot": "P-102", "carats": "3.05", "country": "BW"}))).await;
    sys.projection_caught_up().await;
    let (head, _) = sys.head().await;
    let args = ["import", csv.to_str().unwrap(), "--map", map.to_str().unwrap(), "--key", &key];

    let dry = sys.custody(&[&args[..], &["--dry-run"]].concat(), None);
    assert_eq!(dry.status.code(), Some(1), "a refused row makes the exit status 1");
    let rows = lines(&dry);
    let by_row = |rows: &[Value], n: u64| rows.iter().find(|r| r["row"] == n).cloned().unwrap_or_else(|| panic!("row {n}: {rows:?}"));
    assert_eq!(by_row(&rows, 2)["would"], "submit");
    assert_eq!(by_row(&rows, 2)["event"]["mine"], "North");
    assert_eq!(by_row(&rows, 3)["code"], "invalid_carats");
    // Checked against the ledger's lots, as the ledger would.
    assert_eq!(by_row(&rows, 4)["code"], "lot_exists", "{rows:?}");
    assert_eq!(by_row(&rows, 5)["code"], "invalid_time");
    assert!(by_row(&rows, 6)["message"].as_str().unwrap().contains("not a kind"), "{rows:?}");
    assert_eq!(by_row(&rows, 7)["code"], "duplicate_row");
    assert!(String::from_utf8_lossy(&dry.stderr).contains("6 rows: 1 would be submitted, 5 refused"), "{}", String::from_utf8_lossy(&dry.stderr));
    assert_eq!(sys.head().await.0, head, "a dry run submits nothing");

    // Submitted: the ledger refuses that row itself.
    let real = sys.custody(&args, None);
    assert_eq!(real.status.code(), Some(1));
    let rows = lines(&real);
    assert!(by_row(&rows, 2)["seq"].is_u64(), "{rows:?}");
    assert_eq!(by_row(&rows, 2)["id"], "JW-P-100");
    assert_eq!(by_row(&rows, 4)["code"], "lot_exists", "{rows:?}");
    assert_eq!(by_row(&rows, 3)["code"], "invalid_carats");
    assert_eq!(rows.len(), 6, "one line per row: {rows:?}");
    sys.projection_caught_up().await;
    assert_eq!(sys.origin("P-100").await["carats"], "12.40");

    // The same sheet again: the same events, their first receipts.
    let again = sys.custody(&args, None);
    assert_eq!(by_row(&lines(&again), 2)["seq"], by_row(&rows, 2)["seq"]);
}
