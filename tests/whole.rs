//! Issue 24's attacks on certificates, each against a real nats-server,
//! ledger, projection and CLI: what a hostile importer edits in a genuine
//! certificate, and what a holder of the ledger's key (stolen, or a rogue
//! operator) forges, must be refused by `verify-certificate` and by
//! `filing`, each with its own finding.

mod common;

use common::*;
use custody_proto::certificate::{CertifiedEntry, Claims, OriginCertificate, Proof, RulesText, FORMAT};
use custody_proto::lotmap::{Recomputed, Subject};
use custody_proto::{Checkpoint, Entry};
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};

const DATE: &str = "2024-11-15";

fn write(sys: &System, cert: &OriginCertificate) -> std::path::PathBuf {
    let path = sys.dir.path().join(format!("cert-{}.json", &KeyPair::new_user().public_key()[..12]));
    std::fs::write(&path, serde_json::to_vec(cert).unwrap()).unwrap();
    path
}

/// `verify-certificate` of a certificate: its JSON report and, apart, what
/// it prints for people.
fn check(sys: &System, cert: &OriginCertificate, key: &str) -> (Value, String) {
    let path = write(sys, cert);
    let o = sys.custody(&["verify-certificate", path.to_str().unwrap(), "--key", key, "--json"], None);
    let report: Value = serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|_| panic!("a report: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(o.status.success(), report["valid"] == true, "the exit status says what the report says");
    let human = sys.custody(&["verify-certificate", path.to_str().unwrap(), "--key", key], None);
    (report, stdout(&human))
}

fn checks(report: &Value) -> Vec<String> {
    report["findings"].as_array().into_iter().flatten().map(|f| f["check"].as_str().unwrap_or("").to_owned()).collect()
}

fn certify(sys: &System, lot: &str, rules: &[&str], date: &str) -> Result<OriginCertificate, String> {
    let out = sys.dir.path().join(format!("{lot}-{date}.json"));
    let mut args = vec!["certify", lot, "--date", date, "--out", out.to_str().unwrap()];
    for r in rules {
        args.extend(["--rules", r]);
    }
    let o = sys.custody(&args, None);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&std::fs::read(out).unwrap()).expect("a certificate"))
}

/// The claims a verifier recomputes, pasted in: what a forger does so that
/// only the checks that matter can catch it.
fn reclaimed(mut cert: OriginCertificate, key: &str) -> OriginCertificate {
    let report = custody_projection::certificate::verify(&cert, key, &[]);
    let Some(claims) = report.recomputed else { panic!("nothing recomputed: {:?}", report.findings) };
    cert.claims = claims;
    cert
}

/// Every entry of the committed stream, in order.
async fn history(sys: &System) -> Vec<Entry> {
    let reader = custody_wire::follow::Reader::ledger(&sys.client);
    let end = sys.stream_caught_up().await;
    let mut all = std::pin::pin!(reader.range(1, end));
    let mut out = Vec::new();
    while let Some(m) = all.next().await {
        out.push(custody_wire::follow::entry_of(&m.unwrap()).unwrap());
    }
    out
}

/// A certificate for `lot` from a history the holder of the ledger's key
/// wrote itself: `forged` envelopes chained after the real entries, a tree
/// over all of them, a checkpoint signed with the stolen key, and the
/// entries of `include` (seqs) with the claims their check recomputes.
fn forge(real: &[Entry], forged: &[Vec<u8>], include: &[u64], lot: &str, ledger: &KeyPair) -> OriginCertificate {
    let mut all = real.to_vec();
    for raw in forged {
        let last = all.last().map(|e| (e.seq, e.hash));
        all.push(Entry::next(last, "2024-10-01T00:00:00Z".parse().unwrap(), raw.clone()));
    }
    // The forger's tree and lot map, over its whole history.
    let mut tree = custody_proto::merkle::Tree::new();
    let mut map = Recomputed::default();
    for e in &all {
        tree.push(&e.hash);
        map.apply(e.seq, &e.hash, &event_of(e));
    }
    let size = all.len() as u64;
    let checkpoint = Checkpoint::sign(
        ledger,
        &custody_ledger::notary::default_origin(&ledger.public_key()),
        size,
        &tree.root(),
        Some(&map.map.root()),
        "2024-11-01T00:00:00Z".parse().unwrap(),
    )
    .unwrap();
    let mut seqs = include.to_vec();
    seqs.sort_unstable();
    seqs.dedup();
    let proof = tree.multi_inclusion(&seqs, size).unwrap();
    // The lot map proof of what the checker asks about: the lot and its
    // ancestors, and every signer.
    let carried: Vec<custody_proto::Event> = seqs.iter().map(|s| event_of(&all[*s as usize - 1])).collect();
    let lots = custody_proto::lotmap::lineage(lot, &carried).into_iter().map(Subject::Lot);
    let signers = carried.iter().map(|e| Subject::Actor(e.actor.to_string()));
    let subjects: Vec<Subject> = lots.chain(signers).collect();
    let map_proof = map.map.prove(&subjects);
    let cert = OriginCertificate {
        format: FORMAT.to_owned(),
        lot: lot.to_owned(),
        date: DATE.to_owned(),
        claims: Claims { origin: Value::Null, admissibility: vec![Value::Null] },
        rules: vec![RulesText { name: "us-2024".into(), text: custody_projection::rules::PRESETS[1].1.to_owned() }],
        checkpoint,
        proof: Proof { tree_size: size, hashes: proof.iter().map(|h| h.to_hex()).collect() },
        map: vec![map_proof],
        entries: seqs.iter().map(|s| CertifiedEntry::of(&all[*s as usize - 1]).unwrap()).collect(),
    };
    reclaimed(cert, &ledger.public_key())
}

fn event_of(e: &Entry) -> custody_proto::Event {
    custody_proto::Event::decode(&custody_proto::Opened::payload_of(&e.envelope).unwrap()).unwrap()
}

fn seq_of(entries: &[Entry], id: &str) -> u64 {
    entries
        .iter()
        .find(|e| {
            let payload = custody_proto::Opened::payload_of(&e.envelope).unwrap();
            serde_json::from_slice::<Value>(&payload).unwrap()["id"] == id
        })
        .unwrap_or_else(|| panic!("no entry {id}"))
        .seq
}

fn ledger_secret(sys: &System) -> KeyPair {
    KeyPair::from_seed(std::fs::read_to_string(sys.ledger_dir().join("ledger.nk")).unwrap().trim()).unwrap()
}

fn key_file(sys: &System, name: &str) -> KeyPair {
    KeyPair::from_seed(std::fs::read_to_string(sys.dir.path().join(format!("keys/{name}.nk"))).unwrap().trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_ledger_key_alone_can_forge_is_refused() {
    let sys = worked_example().await;
    let key = sys.ledger_key();
    let ledger = ledger_secret(&sys);
    let authority = KeyPair::from_seed(&sys.authority.seed().unwrap()).unwrap();
    let (ru, bw) = (key_file(&sys, "miner-ru"), key_file(&sys, "miner-bw"));
    let real = history(&sys).await;
    let n = real.len() as u64;
    let reg_ru = seq_of(&real, "demo-reg-a");
    let reg_bw = seq_of(&real, "demo-reg-b");

    // A Russian-registered miner's stone stated to be mined in Botswana.
    let mut laundered = event(&ru, "forged-bw", "mined", json!({"lot": "F1", "carats": "10.00", "country": "BW"}));
    laundered["occurred_at"] = json!("2024-10-01T00:00:00Z");
    let cert = forge(&real, &[sign(&ru, &laundered)], &[reg_ru, n + 1], "F1", &ledger);
    let (r, _) = check(&sys, &cert, &key);
    assert_eq!(checks(&r), ["mined_country"], "{r}");
    assert!(r["findings"][0]["message"].as_str().unwrap().contains("registered in RU"), "{r}");

    // An envelope signed by the Russian miner whose event names the
    // Botswana miner as its actor.
    let mut borrowed = event(&bw, "forged-actor", "mined", json!({"lot": "F2", "carats": "10.00", "country": "BW"}));
    borrowed["occurred_at"] = json!("2024-10-01T00:00:00Z");
    let cert = forge(&real, &[sign(&ru, &borrowed)], &[reg_bw, n + 1], "F2", &ledger);
    let (r, _) = check(&sys, &cert, &key);
    assert_eq!(checks(&r), ["key_not_actor"], "{r}");

    // A miner that signs first and is registered after.
    let late = KeyPair::new_user();
    let mut early = event(&late, "forged-early", "mined", json!({"lot": "F3", "carats": "10.00", "country": "BW"}));
    early["occurred_at"] = json!("2024-10-01T00:00:00Z");
    let reg = event(&authority, "forged-reg", "actor.registered", json!({"subject": late.public_key(), "name": "Late", "roles": ["miner"], "country": "BW"}));
    let cert = forge(&real, &[sign(&late, &early), sign(&authority, &reg)], &[n + 1, n + 2], "F3", &ledger);
    let (r, _) = check(&sys, &cert, &key);
    assert_eq!(checks(&r), ["signer_not_admitted"], "{r}");
    assert!(r["findings"][0]["message"].as_str().unwrap().contains(&format!("registered only later, at entry {}", n + 2)), "{r}");

    // A miner that signs after its revocation; and a trader's `mined`.
    let revoked = KeyPair::new_user();
    let reg =
        event(&authority, "forged-reg-2", "actor.registered", json!({"subject": revoked.public_key(), "name": "Gone", "roles": ["trader"], "country": "BW"}));
    let revoke = event(&authority, "forged-revoke", "actor.revoked", json!({"subject": revoked.public_key(), "reason": "licence withdrawn"}));
    let mut after = event(&revoked, "forged-after", "mined", json!({"lot": "F4", "carats": "10.00", "country": "BW"}));
    after["occurred_at"] = json!("2024-10-01T00:00:00Z");
    let forged = [sign(&authority, &reg), sign(&authority, &revoke), sign(&revoked, &after)];
    let cert = forge(&real, &forged, &[n + 1, n + 2, n + 3], "F4", &ledger);
    let (r, _) = check(&sys, &cert, &key);
    assert_eq!(checks(&r), ["signer_not_admitted", "signer_not_admitted"], "revoked, and no miner: {r}");

    // The same forging hand, honest about all of that: valid, so the
    // checks above are what refused.
    let mut honest = event(&bw, "forged-honest", "mined", json!({"lot": "F5", "carats": "10.00", "country": "BW"}));
    honest["occurred_at"] = json!("2024-10-01T00:00:00Z");
    let cert = forge(&real, &[sign(&bw, &honest)], &[reg_bw, n + 1], "F5", &ledger);
    assert_eq!(check(&sys, &cert, &key).0["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_rule_names_a_date_before_the_stone_and_edited_filings_are_refused() {
    let sys = worked_example().await;
    let key = sys.ledger_key();
    let genuine = certify(&sys, "S1", &["us-2024"], DATE).unwrap();
    let (r, human) = check(&sys, &genuine, &key);
    assert_eq!(r["valid"], true, "{r}");
    assert!(human.contains("us-2024 on 2024-11-15: prohibited"), "{human}");

    // A rule set named like us-2024 with its 0.50 ct rule loosened: the
    // verdict it gives is admissible, and the checker refuses it by name.
    for name in ["us\u{2010}2024", "us-2024 ", "US-2024"] {
        let mut lax = genuine.clone();
        lax.rules[0] = RulesText {
            name: name.to_owned(),
            text: lax.rules[0].text.replace("name = \"us-2024\"", &format!("name = {name:?}")).replace("\"0.50\"", "\"5.00\""),
        };
        let lax = reclaimed(lax, &key);
        assert_eq!(lax.claims.admissibility[0]["verdict"], "admissible", "the loosened rule clears S1");
        let (r, human) = check(&sys, &lax, &key);
        assert_eq!(checks(&r), ["rules_mismatch"], "{name:?}: {r}");
        assert!(r["findings"][0]["message"].as_str().unwrap().contains("named like the preset us-2024"), "{r}");
        assert!(human.contains(&format!("custom rule set {name:?} (blake3 ")), "shown as what it is: {human}");
        assert!(!human.contains("  us-2024 on"), "never shown as the preset: {human}");
    }
    // A regulator's own rule set under its own name is shown as such, and valid.
    let mut own = genuine.clone();
    own.rules[0] = RulesText { name: "ofac-strict".into(), text: own.rules[0].text.replace("name = \"us-2024\"", "name = \"ofac-strict\"") };
    let own = reclaimed(own, &key);
    let (r, human) = check(&sys, &own, &key);
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["rule_sets"][0]["preset"], false);
    assert!(human.contains("custom rule set \"ofac-strict\" (blake3 "), "{human}");

    // A day before the stone existed: no certificate, and a certificate
    // edited to such a day is refused.
    let err = certify(&sys, "S1", &["us-2024"], "1999-01-01").unwrap_err();
    assert!(err.contains("S1 did not exist on 1999-01-01"), "{err}");
    let mut before = genuine.clone();
    before.date = "1999-01-01".into();
    let (r, _) = check(&sys, &reclaimed(before, &key), &key);
    assert_eq!(checks(&r), ["date_before_lot"], "{r}");

    // A filing checks the certificate first: an edited one, with a broken
    // checkpoint signature, gives no self-certification, nothing at all.
    let mut edited = genuine.clone();
    edited.claims.origin["mine_origin"] = json!([{"country": "BW", "share": "1.0000"}]);
    edited.claims.admissibility[0]["verdict"] = json!("admissible");
    edited.checkpoint.signature = edited.checkpoint.signature.chars().rev().collect();
    let path = write(&sys, &edited);
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", path.to_str().unwrap(), "--key", &key], None);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).is_empty(), "nothing filed: {}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not check out") && err.contains("checkpoint_signature") && err.contains("claim_mismatch"), "{err}");
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "a certificate is checked against a key the filer names");

    // The US rule set in force on the date decides, never the first US name.
    let both = certify(&sys, "S1", &["us-2022", "us-2024"], DATE).unwrap();
    let path = write(&sys, &both);
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", path.to_str().unwrap(), "--key", &key, "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let us: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(us["verdict"], json!({"rules": "us-2024", "verdict": "prohibited"}), "{us}");
    let old = certify(&sys, "S1", &["us-2022"], DATE).unwrap();
    let path = write(&sys, &old);
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", path.to_str().unwrap(), "--key", &key], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no verdict under us-2024, the rule set in force on 2024-11-15"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_with_a_warning_gets_no_self_certification() {
    let sys = worked_example().await;
    let key = sys.ledger_key();
    let bw = key_file(&sys, "miner-bw");
    let regulator = sys.actor("regulator-be", "regulator", "BE").await;
    for lot in ["W1", "W2"] {
        sys.accept(&bw, &event(&bw, &format!("mine-{lot}"), "mined", json!({"lot": lot, "carats": "2.00", "country": "BW"}))).await;
    }
    sys.accept(&regulator, &event(&regulator, "flag-w2", "flagged", json!({"lot": "W2", "reason": "seen in a seized parcel"}))).await;
    sys.projection_caught_up().await;
    let filed = |lot: &str| {
        let cert = certify(&sys, lot, &["us-2024"], DATE).unwrap();
        let path = write(&sys, &cert);
        let o = sys.custody(&["filing", lot, "--form", "us-country-of-mining", "--certificate", path.to_str().unwrap(), "--key", &key, "--json"], None);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str::<Value>(stdout(&o).trim()).unwrap()
    };
    let clean = filed("W1");
    assert_eq!(clean["self_certification"]["text"], custody::filing::US_SELF_CERTIFICATION, "{clean}");
    let flagged = filed("W2");
    assert_eq!(flagged["self_certification"]["text"], Value::Null, "{flagged}");
    assert!(flagged["self_certification"]["cannot_certify"].as_str().unwrap().contains("seen in a seized parcel"), "{flagged}");
}

/// The same certificate with entries left out and a proof made anew for
/// what is left (the forger has the whole stream), claims pasted in.
fn without(cert: &OriginCertificate, all: &[Entry], drop: &[u64], key: &str) -> OriginCertificate {
    let mut c = cert.clone();
    c.entries.retain(|e| !drop.contains(&e.seq));
    let mut tree = custody_proto::merkle::Tree::new();
    for e in &all[..cert.checkpoint.tree_size as usize] {
        tree.push(&e.hash);
    }
    let left: Vec<u64> = c.entries.iter().map(|e| e.seq).collect();
    c.proof.hashes = tree.multi_inclusion(&left, cert.checkpoint.tree_size).unwrap().iter().map(|h| h.to_hex()).collect();
    reclaimed(c, key)
}

fn verdicts(cert: &OriginCertificate) -> Vec<String> {
    cert.claims.admissibility.iter().map(|a| a["verdict"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_out_the_last_moves_a_flag_a_failed_inspection_or_a_revocation_is_caught() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let key = sys.ledger_key();
    let miner = sys.actor("Debswana", "miner", "BW").await;
    let cutter = sys.actor("Surat-Cutters", "manufacturer", "IN").await;
    let ru = sys.actor("Moscow-Trading", "trader", "RU").await;
    let be = sys.actor("Antwerp-Trading", "trader", "BE").await;
    let regulator = sys.actor("Customs-BE", "regulator", "BE").await;
    let node = sys.actor("ADO", "verifier", "BE").await;
    // Recorded as they happen, so that no date is only claimed.
    let now = chrono::Utc::now();
    let today = now.date_naive().to_string();
    let mut n = 0;
    let mut at = |k: &KeyPair, id: &str, kind: &str, fields: Value| {
        n += 1;
        let mut e = event(k, id, kind, fields);
        e["occurred_at"] = json!((now - chrono::Duration::minutes(60 - n)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        e
    };
    let cert_no = |n: &str| json!({"number": n, "value_usd": "1000.00"});
    let moves = [
        (&miner, at(&miner, "g-mine", "mined", json!({"lot": "R1", "carats": "10.00", "country": "BW"}))),
        (&miner, at(&miner, "g-x1", "exported", json!({"lots": ["R1"], "to": cutter.public_key(), "to_country": "IN", "certificate": cert_no("BW-G-1")}))),
        (&cutter, at(&cutter, "g-i1", "imported", json!({"certificate": "BW-G-1"}))),
        (
            &cutter,
            at(&cutter, "g-cut", "processed", json!({"lot": "R1", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "G1", "carats": "1.20"}]})),
        ),
        (&cutter, at(&cutter, "g-x2", "exported", json!({"lots": ["G1"], "to": ru.public_key(), "to_country": "RU", "certificate": cert_no("IN-G-2")}))),
        (&ru, at(&ru, "g-i2", "imported", json!({"certificate": "IN-G-2"}))),
        (&ru, at(&ru, "g-x3", "exported", json!({"lots": ["G1"], "to": be.public_key(), "to_country": "BE", "certificate": cert_no("RU-G-3")}))),
        (&be, at(&be, "g-i3", "imported", json!({"certificate": "RU-G-3"}))),
    ];
    for (k, e) in &moves {
        sys.accept(k, e).await;
    }
    sys.projection_caught_up().await;
    let rules = ["eu-2024", "uk-2024"];
    let genuine = certify(&sys, "G1", &rules, &today).unwrap();
    assert_eq!(check(&sys, &genuine, &key).0["valid"], true);
    assert_eq!(verdicts(&genuine), ["prohibited", "prohibited"], "exported from Russia: {:?}", genuine.claims.admissibility);
    let all = history(&sys).await;
    let seq = |id: &str| seq_of(&all, id);

    // The last two moves (out of Russia), or four (into it too), left out:
    // what is left gives admissible, and the lot map says what is missing.
    for (dropped, missing) in [(vec![seq("g-x3"), seq("g-i3")], 2), (vec![seq("g-x2"), seq("g-i2"), seq("g-x3"), seq("g-i3")], 4)] {
        let cut = without(&genuine, &all, &dropped, &key);
        assert_eq!(verdicts(&cut), ["admissible", "admissible"], "what is left clears it");
        let (r, human) = check(&sys, &cut, &key);
        assert_eq!(checks(&r), ["incomplete_history"], "{r}");
        let message = r["findings"][0]["message"].as_str().unwrap();
        assert!(message.starts_with("lot G1: the ledger holds") && message.ends_with(&format!("{missing} missing")), "{message}");
        assert!(human.lines().nth(1).is_some_and(|l| l.starts_with("INVALID")), "after the evidence's age: {human}");
    }

    // A flag on the rough, a failed inspection of the stone: each left out.
    sys.accept(&regulator, &at(&regulator, "g-flag", "flagged", json!({"lot": "R1", "reason": "parcel mixed with seized goods"}))).await;
    let finding =
        json!({"lots": ["G1"], "carats": "1.20", "verification": "ADO-G1", "finding": "does_not_conform", "reason": "the stone does not match its papers"});
    sys.accept(&node, &at(&node, "g-check", "verified", finding)).await;
    sys.projection_caught_up().await;
    let flagged = certify(&sys, "G1", &rules, &today).unwrap();
    assert_eq!(check(&sys, &flagged, &key).0["valid"], true);
    let all = history(&sys).await;
    let seq = |id: &str| seq_of(&all, id);
    for (id, lot) in [("g-flag", "R1"), ("g-check", "G1")] {
        let cut = without(&flagged, &all, &[seq(id)], &key);
        assert_ne!(cut.claims.origin["warnings"], flagged.claims.origin["warnings"], "{id} changed the answer");
        let (r, _) = check(&sys, &cut, &key);
        assert_eq!(checks(&r), ["incomplete_history"], "{id}: {r}");
        assert!(r["findings"][0]["message"].as_str().unwrap().starts_with(&format!("lot {lot}: ")), "{r}");
    }

    // A signer revoked after it signed: its revocation is part of the
    // history a checker is owed.
    let revoke = event(&sys.authority, "revoke-be", "actor.revoked", json!({"subject": be.public_key(), "reason": "licence withdrawn"}));
    sys.accept(&sys.authority, &revoke).await;
    sys.projection_caught_up().await;
    let revoked = certify(&sys, "G1", &rules, &today).unwrap();
    assert_eq!(check(&sys, &revoked, &key).0["valid"], true);
    let all = history(&sys).await;
    let cut = without(&revoked, &all, &[seq_of(&all, "revoke-be")], &key);
    let (r, _) = check(&sys, &cut, &key);
    assert_eq!(checks(&r), ["incomplete_history"], "{r}");
    assert!(r["findings"][0]["message"].as_str().unwrap().starts_with(&format!("actor {}: ", be.public_key())), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_recomputes_the_lot_map_and_catches_a_map_root_that_misstates_a_history() {
    let sys = worked_example().await;
    let key = sys.ledger_key();
    let state = sys.dir.path().join("auditor");
    let audit = |state: &std::path::Path| {
        let o = sys.custody(&["audit", "--key", &key, "--state", state.to_str().unwrap()], None);
        (o.status.code(), serde_json::from_str::<Value>(stdout(&o).trim()).unwrap_or_else(|_| json!({"raw": stdout(&o)})))
    };
    let o = sys.custody(&["checkpoint"], None);
    assert!(o.status.success());
    let (code, v) = audit(&state);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["audit"]["map_roots_verified"].as_u64().unwrap() >= 1, "{v}");

    // The ledger's key signs, for the same entries and tree root, a map
    // that leaves the last entry out of its lots' histories.
    let all = history(&sys).await;
    let mut map = Recomputed::default();
    for e in &all[..all.len() - 1] {
        map.apply(e.seq, &e.hash, &event_of(e));
    }
    let mut tree = custody_proto::merkle::Tree::new();
    all.iter().for_each(|e| tree.push(&e.hash));
    let secret = ledger_secret(&sys);
    let lie = Checkpoint::sign(
        &secret,
        &custody_ledger::notary::default_origin(&secret.public_key()),
        all.len() as u64,
        &tree.root(),
        Some(&map.map.root()),
        custody_proto::Timestamp::now(),
    )
    .unwrap();
    let js = async_nats::jetstream::new(sys.client.clone());
    js.publish(custody_wire::subjects::CHECKPOINTS_SUBJECT, serde_json::to_vec(&lie).unwrap().into()).await.unwrap().await.unwrap();
    let (code, v) = audit(&sys.dir.path().join("auditor-2"));
    assert_eq!(code, Some(1), "{v}");
    assert!(v["finding"].as_str().unwrap().contains("lot-map root"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_made_before_a_flag_is_current_until_the_flag_and_stale_online_after() {
    let mut sys = worked_example().await;
    let url = sys.start_gateway();
    let key = sys.ledger_key();
    let cert = certify(&sys, "S1", &["us-2024"], DATE).unwrap();
    let path = write(&sys, &cert);
    let online = |extra: &[&str]| {
        let mut args = vec!["verify-certificate", path.to_str().unwrap(), "--key", &key, "--online", &url];
        args.extend_from_slice(extra);
        let o = sys.custody(&args, None);
        (o.status.code(), stdout(&o))
    };
    let (code, out) = online(&[]);
    assert_eq!(code, Some(0), "{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("evidence as of the ledger's checkpoint of") && first.contains("cosigned by no witness"), "age and vouching first: {out}");
    assert!(out.contains("nothing about the lot, its ancestors or its signers has happened since the certificate"), "{out}");

    // A regulator flags the Russian rough S1 was cut from, after the
    // certificate: offline it still checks out; online it is stale.
    let regulator = sys.actor("regulator-be", "regulator", "BE").await;
    let mut flag = event(&regulator, "flag-l1", "flagged", json!({"lot": "L1", "reason": "sanctions evasion inquiry"}));
    flag["occurred_at"] = json!("2024-10-01T08:00:00Z");
    sys.accept(&regulator, &flag).await;
    let o = sys.custody(&["verify-certificate", path.to_str().unwrap(), "--key", &key], None);
    assert!(o.status.success(), "offline, the certificate holds for its checkpoint: {}", stdout(&o));
    let (code, out) = online(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("CHANGED since the certificate: lot L1: 1 new entry") && out.contains("flagged)"), "{out}");
    let (_, json_out) = online(&["--json"]);
    let v: Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!((v["valid"].clone(), v["accepted"].clone()), (json!(true), json!(false)), "{v}");
    assert_eq!(v["freshness"]["changed"][0]["latest_kind"], "flagged", "{v}");
    // Nor is anything filed from it.
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", path.to_str().unwrap(), "--key", &key, "--online", &url], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not current enough"), "{}", String::from_utf8_lossy(&o.stderr));

    // A gateway that withholds what happened can only show an old
    // checkpoint: --max-age refuses old evidence.
    while chrono::Utc::now() - cert.checkpoint.time.as_datetime() < chrono::TimeDelta::seconds(2) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let o = sys.custody(&["verify-certificate", path.to_str().unwrap(), "--key", &key, "--max-age", "1s"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("refused: the evidence is"), "{}", stdout(&o));
    let o = sys.custody(&["verify-certificate", path.to_str().unwrap(), "--key", &key, "--max-age", "1d"], None);
    assert!(o.status.success(), "{}", stdout(&o));
}

/// A ledger written before checkpoints became C2SP notes holds `custody
/// checkpoint v2` checkpoints over the blake3 tree on its stream: they
/// still verify and audit next to the new SHA-256 notes, and a wrong
/// blake3 root among them is still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_signed_before_the_switch_to_sha256_notes_still_audit() {
    let sys = worked_example().await;
    let key = sys.ledger_key();
    let secret = ledger_secret(&sys);
    let all = history(&sys).await;
    let (mut old, mut map) = (custody_proto::merkle::Tree::with_hash(custody_proto::merkle::TreeHash::Blake3), Recomputed::default());
    for e in &all {
        old.push(&e.hash);
        map.apply(e.seq, &e.hash, &event_of(e));
    }
    let js = async_nats::jetstream::new(sys.client.clone());
    let publish = |c: Checkpoint| {
        let js = js.clone();
        async move { js.publish(custody_wire::subjects::CHECKPOINTS_SUBJECT, serde_json::to_vec(&c).unwrap().into()).await.unwrap().await.unwrap() }
    };
    let size = all.len() as u64;
    let legacy = Checkpoint::sign_v2(&secret, size, &old.root(), Some(&map.map.root()), "2024-11-01T00:00:00Z".parse().unwrap()).unwrap();
    assert_eq!(legacy.tree_hash(), custody_proto::merkle::TreeHash::Blake3);
    publish(legacy).await;
    assert!(sys.custody(&["checkpoint"], None).status.success(), "and a new note for the same size");
    let audit = |state: &str| {
        let o = sys.custody(&["audit", "--key", &key, "--state", sys.dir.path().join(state).to_str().unwrap()], None);
        (o.status.code(), serde_json::from_str::<Value>(stdout(&o).trim()).unwrap_or_else(|_| json!({"raw": stdout(&o)})))
    };
    let (code, v) = audit("auditor");
    assert_eq!(code, Some(0), "{v}");
    assert!(v["audit"]["checkpoints_verified"].as_u64().unwrap() >= 2, "the blake3 checkpoint and the SHA-256 note: {v}");

    // A v2 checkpoint whose blake3 root leaves out the last entry.
    let mut short = custody_proto::merkle::Tree::with_hash(custody_proto::merkle::TreeHash::Blake3);
    all[..all.len() - 1].iter().for_each(|e| short.push(&e.hash));
    short.push(&custody_proto::Hash([3; 32]));
    publish(Checkpoint::sign_v2(&secret, size, &short.root(), None, "2024-11-02T00:00:00Z".parse().unwrap()).unwrap()).await;
    let (code, v) = audit("auditor-2");
    assert_eq!(code, Some(1), "{v}");
    assert!(v["finding"].as_str().unwrap().contains("two different roots"), "{v}");
}
