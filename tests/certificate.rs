//! At the border: a verification node vouches for a shipment; an origin
//! certificate for `S1` is checked offline with only the ledger's key and
//! its verdicts recomputed from its own entries; every kind of tampering is
//! caught with its own finding; filings are filled from the certificate.
//! Real nats-server, ledger, projection and CLI.

mod common;

use base64::Engine as _;
use common::*;
use custody_proto::certificate::{CertifiedEntry, OriginCertificate};
use custody_proto::Outcome;
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};

const RULES: [&str; 4] = ["us-2024", "eu-2024", "eu-2025", "uk-2024"];
const DATE: &str = "2024-11-15";

fn doc(kind: &str, seed: &str) -> Value {
    json!({"type": kind, "blake3": blake3::hash(seed.as_bytes()).to_hex().to_string(), "reference": seed})
}

/// Registers an Antwerp-like verification node.
async fn node(sys: &System) -> KeyPair {
    let kp = KeyPair::new_user();
    let a = &sys.authority;
    let reg =
        event(a, "reg-ado", "actor.registered", json!({"subject": kp.public_key(), "name": "Antwerp Diamond Office", "roles": ["verifier"], "country": "BE"}));
    sys.accept(a, &reg).await;
    kp
}

fn verified(node: &KeyPair, id: &str, at: &str, fields: Value) -> Value {
    let mut e = event(node, id, "verified", fields);
    e["occurred_at"] = json!(at);
    e
}

fn certify(sys: &System, lot: &str, out: &std::path::Path) -> OriginCertificate {
    let mut args = vec!["certify", lot, "--date", DATE, "--out", out.to_str().unwrap()];
    for r in RULES {
        args.extend(["--rules", r]);
    }
    let o = sys.custody(&args, None);
    assert!(o.status.success(), "certify: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&std::fs::read(out).unwrap()).expect("a certificate")
}

/// `verify-certificate --json` of a certificate as a file.
fn check(sys: &System, cert: &OriginCertificate, key: &str) -> Value {
    let path = sys.dir.path().join(format!("check-{}.json", rand_suffix()));
    std::fs::write(&path, serde_json::to_vec(cert).unwrap()).unwrap();
    let o = sys.custody(&["verify-certificate", path.to_str().unwrap(), "--key", key, "--json"], None);
    let report: Value = serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|_| panic!("a report: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(o.status.success(), report["valid"] == true, "the exit status says what the report says");
    report
}

fn rand_suffix() -> String {
    KeyPair::new_user().public_key()[..12].to_owned()
}

fn checks(report: &Value) -> Vec<String> {
    report["findings"].as_array().into_iter().flatten().map(|f| f["check"].as_str().unwrap_or("").to_owned()).collect()
}

fn payload_of(e: &CertifiedEntry) -> Value {
    let env: Value = serde_json::from_str(&e.envelope).unwrap();
    let raw = base64::engine::general_purpose::STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn key_file(sys: &System, name: &str) -> KeyPair {
    KeyPair::from_seed(std::fs::read_to_string(sys.dir.path().join(format!("keys/{name}.nk"))).unwrap().trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1s_certificate_verifies_offline_and_recomputes_the_live_verdicts_and_every_tampering_is_caught() {
    // The worked example, with an Antwerp-like node inspecting the rough
    // shipment AE-2024-0042 (L4) when it arrives, before it is cut.
    let mut sys = System::start().await;
    sys.start_projection().await;
    let key = sys.ledger_key();
    let ado = node(&sys).await;
    let authority = KeyPair::from_seed(&sys.authority.seed().unwrap()).unwrap();
    let cast = custody::demo::Cast::load_or_create(authority, &sys.dir.path().join("keys")).unwrap();
    let mut older = None;
    for (k, payload) in cast.worked_example() {
        sys.accept(k, &payload).await;
        if payload["id"] == "demo-import-l4" {
            // A checkpoint from before the inspection: an older one to swap in.
            older = Some(serde_json::from_str::<custody_proto::Checkpoint>(&stdout(&sys.custody(&["checkpoint"], None))).expect("a checkpoint"));
            let inspection = verified(
                &ado,
                "ado-ae-2024-0042",
                "2024-09-26T08:00:00Z",
                json!({"certificate": "AE-2024-0042", "carats": "100.00", "verification": "ADO-2024-0042", "finding": "conforms",
                       "evidence": [doc("verification_report", "ADO report 2024-0042"), doc("kp_certificate", "AE-2024-0042")]}),
            );
            sys.accept(&ado, &inspection).await;
        }
    }
    let older = older.unwrap();
    // History that is not S1's: none of it belongs in S1's certificate.
    let bw = key_file(&sys, "miner-bw");
    for i in 0..8 {
        let mut e = event(&bw, &format!("other-{i}"), "mined", json!({"lot": format!("X{i}"), "carats": "3.00", "country": "BW"}));
        e["occurred_at"] = json!("2024-10-01T08:00:00Z");
        sys.accept(&bw, &e).await;
    }
    sys.projection_caught_up().await;

    // The live answer shows who vouched for which step.
    let live = sys.origin("S1").await;
    let steps = live["path"].as_array().unwrap();
    let by = |kind: &str| steps.iter().filter(|s| s["kind"] == kind).map(|s| s["vouched"]["by"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(by("merged"), ["declared"], "{live}");
    let check_step = steps.iter().find(|s| s["kind"] == "verified").expect("the inspection is a step of S1's path");
    assert_eq!(check_step["vouched"]["verifier"], "Antwerp Diamond Office");
    assert_eq!(check_step["vouched"]["verification"], "ADO-2024-0042");
    let crossing = steps.iter().rev().find(|s| s["kind"] == "imported" && s["country"] == "IN").unwrap();
    assert_eq!(crossing["vouched"]["by"], "verified", "the shipment the node inspected: {crossing}");

    let file = sys.dir.path().join("S1.certificate.json");
    let cert = certify(&sys, "S1", &file);
    let report = check(&sys, &cert, &key);
    assert_eq!(report["valid"], true, "{report}");
    // Recomputed from the certificate's entries alone: the live answers
    // (which also say the seq they reflect).
    let without_seq = |mut v: serde_json::Value| {
        assert!(v["as_of_seq"].as_u64().is_some_and(|s| s > 0), "{v}");
        v.as_object_mut().map(|o| o.remove("as_of_seq"));
        v
    };
    assert_eq!(report["recomputed"]["origin"], without_seq(live.clone()));
    for (i, rules) in RULES.iter().enumerate() {
        let answer = without_seq(sys.admissible("S1", rules, DATE).await);
        assert_eq!(report["recomputed"]["admissibility"][i], answer, "{rules}");
    }
    assert_eq!(report["recomputed"]["admissibility"][0]["verdict"], "prohibited");
    // The certificate holds S1's history and its signers' registrations,
    // not the rest of the ledger (L5's later life, the other stones' exports).
    let kinds: Vec<String> = cert.entries.iter().map(|e| payload_of(e)["kind"].as_str().unwrap().to_owned()).collect();
    assert!(kinds.iter().filter(|k| *k == "actor.registered").count() >= 4, "{kinds:?}");
    assert!(!cert.entries.iter().any(|e| payload_of(e)["lot"].as_str().is_some_and(|l| l.starts_with('X'))), "no unrelated lot");
    assert!(cert.entries.len() < cert.checkpoint.tree_size as usize, "{} entries", cert.entries.len());

    // Tampering, each with its own finding.
    let seq_of = |kind: &str, lot: &str| {
        cert.entries.iter().find(|e| {
            let p = payload_of(e);
            p["kind"] == kind && (p["lot"] == lot || p["into"]["lot"] == lot)
        })
    };
    let mut carats = cert.clone();
    let mined = cert.entries.iter().position(|e| payload_of(e)["lot"] == "L1").unwrap();
    let env: Value = serde_json::from_str(&cert.entries[mined].envelope).unwrap();
    let payload = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    let mut altered = env.clone();
    altered["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(payload.replace("\"1000.00\"", "\"1900.00\"")));
    carats.entries[mined].envelope = altered.to_string();
    assert!(check(&sys, &carats, &key)["findings"].to_string().contains("signature does not verify"));
    assert!(checks(&check(&sys, &carats, &key)).contains(&"envelope_signature".to_owned()));

    let mut dropped = cert.clone();
    let merge = seq_of("merged", "L3").expect("the merge is in S1's history").seq;
    dropped.entries.retain(|e| e.seq != merge);
    let r = check(&sys, &dropped, &key);
    assert!(checks(&r).contains(&"missing_ancestor".to_owned()), "{r}");
    // Even with a proof made anew for what is left, the gap shows.
    let reader = custody_wire::follow::Reader::ledger(&sys.client);
    let mut tree = custody_proto::merkle::Tree::new();
    let mut all = std::pin::pin!(reader.range(1, cert.checkpoint.tree_size));
    while let Some(m) = all.next().await {
        tree.push(&custody_wire::follow::entry_of(&m.unwrap()).unwrap().hash);
    }
    let left: Vec<u64> = dropped.entries.iter().map(|e| e.seq).collect();
    dropped.proof.hashes = tree.multi_inclusion(&left, cert.checkpoint.tree_size).unwrap().iter().map(|h| h.to_hex()).collect();
    let r = check(&sys, &dropped, &key);
    assert_eq!(checks(&r).iter().filter(|c| *c != "missing_ancestor" && *c != "incomplete_history").count(), 0, "only the gap is wrong: {r}");
    assert!(r["findings"].to_string().contains("lot L3"), "{r}");
    assert!(
        r["findings"].to_string().contains("lot L3: the ledger holds 2 entries about it up to its checkpoint of"),
        "the lot map names what is missing: {r}"
    );

    let mut stale = cert.clone();
    stale.checkpoint = older.clone();
    let r = check(&sys, &stale, &key);
    assert!(checks(&r).contains(&"checkpoint_mismatch".to_owned()), "{r}");

    let mut swapped = cert.clone();
    let n = swapped.proof.hashes.len();
    assert!(n >= 2, "a proof of several hashes: {n}");
    swapped.proof.hashes.swap(0, n - 1);
    assert_eq!(checks(&check(&sys, &swapped, &key)), ["inclusion"]);

    let mut foreign = cert.clone();
    let stranger = KeyPair::new_user();
    let raw = sign(&stranger, &event(&stranger, "elsewhere", "mined", json!({"lot": "L9", "carats": "5.00", "country": "CA"})));
    let free = (1..cert.checkpoint.tree_size).find(|s| !cert.entries.iter().any(|e| e.seq == *s)).unwrap();
    let prev = custody_proto::entry::Hash([9; 32]);
    let alien = custody_proto::Entry::next(Some((free - 1, prev)), "2024-10-01T00:00:00Z".parse().unwrap(), raw);
    foreign.entries.push(CertifiedEntry::of(&alien).unwrap());
    foreign.entries.sort_by_key(|e| e.seq);
    let r = check(&sys, &foreign, &key);
    assert!(checks(&r).contains(&"foreign_entry".to_owned()) && checks(&r).contains(&"inclusion".to_owned()), "{r}");

    let mut lied = cert.clone();
    lied.claims.admissibility[0]["verdict"] = json!("admissible");
    assert_eq!(checks(&check(&sys, &lied, &key)), ["claim_mismatch"]);
    let mut lax = cert.clone();
    lax.rules[0].text = lax.rules[0].text.replace("\"0.50\"", "\"5.00\"");
    assert!(checks(&check(&sys, &lax, &key)).contains(&"rules_mismatch".to_owned()));
    // Another ledger's key trusts nothing here.
    let other = KeyPair::new_server().public_key();
    assert!(checks(&check(&sys, &cert, &other)).contains(&"checkpoint_signature".to_owned()));

    // Any one byte changed anywhere in the file: it no longer reads as a
    // certificate, or it does not check out.
    let bytes = std::fs::read(&file).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut undetected = Vec::new();
    let mut checked = 0;
    for _ in 0..400 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % bytes.len() as u64) as usize;
        let mut flipped = bytes.clone();
        flipped[at] = match flipped[at] {
            b'0'..=b'8' => flipped[at] + 1,
            b'9' => b'0',
            b'a'..=b'y' | b'A'..=b'Y' => flipped[at] + 1,
            other => other ^ 0x01,
        };
        if let Ok(c) = serde_json::from_slice::<OriginCertificate>(&flipped) {
            checked += 1;
            if c != cert && custody_projection::certificate::verify(&c, &key, &[]).valid {
                undetected.push(format!("byte {at}: {:?}", String::from_utf8_lossy(&bytes[at.saturating_sub(30)..(at + 30).min(bytes.len())])));
            }
        }
    }
    assert!(undetected.is_empty(), "changes that still check out:\n{}", undetected.join("\n"));
    assert!(checked > 200, "most changes still read as a certificate, and were checked: {checked}");

    // Filings name the certificate that backs them.
    let id = format!("blake3:{}", blake3::hash(&std::fs::read(&file).unwrap()).to_hex());
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", file.to_str().unwrap(), "--key", &key, "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let us: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        us["lines"],
        json!([{"country_of_mining": "BW", "carats": "0.43", "share": "0.6000"}, {"country_of_mining": "RU", "carats": "0.29", "share": "0.4000"}])
    );
    assert_eq!(us["country_of_origin"], "IN");
    assert_eq!(us["self_certification"]["text"], Value::Null, "no one may certify a partly Russian stone: {us}");
    assert_eq!(us["certificate"]["id"], id);
    assert_eq!(us["verdict"], json!({"rules": "us-2024", "verdict": "prohibited"}), "the rule set in force on the date, not the first found: {us}");
    assert_eq!(us["hts_subheading"], "7102.39", "polished: {us}");
    // What only the filer knows is listed as missing, never invented...
    assert_eq!(us["missing"], json!(["importer_of_record", "entry_number", "signer.name", "signer.title"]), "{us}");
    assert!(us["importer_of_record"].is_null() && us["signer"]["name"].is_null(), "{us}");
    // ...until the filer's profile gives it.
    let profile = sys.dir.path().join("profile.json");
    std::fs::write(&profile, r#"{"importer_of_record": "Gem Importers LLC (IOR 12-3456789)", "entry_number": "ABC-1234567-8", "signer": {"name": "Ana Silva", "title": "Compliance officer"}}"#).unwrap();
    let o = sys.custody(
        &[
            "filing",
            "S1",
            "--form",
            "us-country-of-mining",
            "--certificate",
            file.to_str().unwrap(),
            "--key",
            &key,
            "--profile",
            profile.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let filed: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(filed["missing"], json!([]), "{filed}");
    assert_eq!((filed["importer_of_record"].as_str(), filed["entry_number"].as_str()), (Some("Gem Importers LLC (IOR 12-3456789)"), Some("ABC-1234567-8")));
    assert_eq!((filed["signer"]["name"].as_str(), filed["signer"]["title"].as_str()), (Some("Ana Silva"), Some("Compliance officer")));
    std::fs::write(&profile, r#"{"importer": "a field no form has"}"#).unwrap();
    let o = sys.custody(
        &["filing", "S1", "--form", "us-country-of-mining", "--certificate", file.to_str().unwrap(), "--key", &key, "--profile", profile.to_str().unwrap()],
        None,
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a filer's profile"), "a misspelt profile is refused");
    let o = sys.custody(&["filing", "S1", "--form", "us-country-of-mining", "--certificate", file.to_str().unwrap(), "--key", &key, "--csv"], None);
    let csv = stdout(&o);
    assert_eq!(csv.lines().count(), 3, "a header and one line per country: {csv}");
    // The CSV carries everything the JSON does: origin, verdict, the
    // self-certification's answer, the certificate.
    // Cells as RFC 4180 writes them: a cell with a comma or a quote is quoted.
    let fields = |line: &str| -> Vec<String> {
        let (mut out, mut cell, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cell.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => out.push(std::mem::take(&mut cell)),
                (c, _) => cell.push(c),
            }
        }
        out.push(cell);
        out
    };
    let header_cells = fields(csv.lines().next().unwrap());
    let header: Vec<&str> = header_cells.iter().map(String::as_str).collect();
    for column in [
        "country_of_mining",
        "carats",
        "share",
        "form",
        "lot",
        "lot_carats",
        "country_of_origin",
        "self_certification.cannot_certify",
        "verdict.rules",
        "verdict.verdict",
        "certificate.id",
    ] {
        assert!(header.contains(&column), "{column} in {header:?}");
    }
    let column = |c: &str| header.iter().position(|h| *h == c).unwrap();
    let ru: Vec<String> = csv.lines().map(fields).find(|r| r[column("country_of_mining")] == "RU").expect("a row for RU");
    let at = |c: &str| ru[column(c)].as_str();
    assert_eq!((at("country_of_origin"), at("verdict.rules"), at("verdict.verdict"), at("certificate.id")), ("IN", "us-2024", "prohibited", id.as_str()));
    let o = sys.custody(&["filing", "S1", "--form", "eu-due-diligence", "--certificate", file.to_str().unwrap(), "--key", &key, "--json"], None);
    let eu: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(eu["verified_by"][0]["verifier"], "Antwerp Diamond Office", "{eu}");
    // S3 (0.30 ct) is below the statement's 0.50 ct.
    let s3 = certify(&sys, "S3", &sys.dir.path().join("S3.json"));
    assert_eq!(check(&sys, &s3, &key)["valid"], true);
    // Partly Russian, yet below the US determination's 0.50 ct: not
    // covered by it, which the filing says, rather than "cannot certify".
    let o = sys.custody(
        &["filing", "S3", "--form", "us-country-of-mining", "--certificate", sys.dir.path().join("S3.json").to_str().unwrap(), "--key", &key, "--json"],
        None,
    );
    let us3: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(us3["verdict"]["verdict"], "admissible", "{us3}");
    let not_covered = us3["self_certification"]["not_covered"].as_str().unwrap_or_default();
    assert!(not_covered.contains("does not cover it") && not_covered.contains("0.50 ct"), "{us3}");
    assert!(us3["self_certification"].get("cannot_certify").is_none() && us3["self_certification"]["text"].is_null(), "{us3}");
    let o =
        sys.custody(&["filing", "S3", "--form", "eu-due-diligence", "--certificate", sys.dir.path().join("S3.json").to_str().unwrap(), "--key", &key], None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("0.50 ct"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_evidence_and_the_eu_2025_rough_rule() {
    let sys = worked_example().await;
    let ado = node(&sys).await;
    let t = sys.actor("trader-2", "trader", "AE").await;
    let at = "2024-10-01T08:00:00Z";

    // Only a verification node verifies; a number is used once.
    let by_trader = verified(&t, "fake-check", at, json!({"lots": ["L5"], "carats": "2400.00", "verification": "FAKE-1", "finding": "conforms"}));
    assert_eq!(code(&sys.submit(&t, &by_trader).await), "role_not_allowed");
    let weighed_short = verified(&ado, "ado-l5", at, json!({"lots": ["L5"], "carats": "2300.00", "verification": "ADO-L5", "finding": "conforms"}));
    sys.accept(&ado, &weighed_short).await;
    let again = verified(&ado, "ado-l5-again", at, json!({"lots": ["L5"], "carats": "2400.00", "verification": "ADO-L5", "finding": "conforms"}));
    assert_eq!(code(&sys.submit(&ado, &again).await), "verification_reused");
    let no_reason = verified(&ado, "ado-bad", at, json!({"lots": ["L5"], "carats": "2400.00", "verification": "ADO-X", "finding": "does_not_conform"}));
    assert_eq!(code(&sys.submit(&ado, &no_reason).await), "invalid_field");
    let spent = verified(&ado, "ado-l3", at, json!({"lots": ["L3"], "carats": "2500.00", "verification": "ADO-L3", "finding": "conforms"}));
    assert_eq!(code(&sys.submit(&ado, &spent).await), "lot_consumed");

    // The weighing disagrees by 100 ct: a warning on L5 and what it becomes.
    let trader = key_file(&sys, "trader-ae");
    let mut split = event(&trader, "split-l5", "split", json!({"lot": "L5", "into": [{"lot": "L7", "carats": "400.00"}, {"lot": "L8", "carats": "2000.00"}]}));
    split["occurred_at"] = json!("2024-10-02T08:00:00Z");
    sys.accept(&trader, &split).await;
    sys.projection_caught_up().await;
    for lot in ["L5", "L7"] {
        let o = sys.origin(lot).await;
        assert!(
            o["warnings"].to_string().contains("weighed 2300.00 ct at verification ADO-L5 by Antwerp Diamond Office; the ledger holds 2400.00 ct"),
            "{lot}: {o}"
        );
    }

    // Evidence: documents by hash make a step "evidenced"; a bad hash or a
    // free-text note on anything but `declared` is refused.
    let miner = key_file(&sys, "miner-bw");
    let mut with_docs = event(&miner, "mined-ev", "mined", json!({"lot": "E1", "carats": "10.00", "country": "BW", "evidence": [doc("scan", "parcel photo")]}));
    with_docs["occurred_at"] = json!(at);
    sys.accept(&miner, &with_docs).await;
    let mut bad_hash = with_docs.clone();
    bad_hash["id"] = json!("mined-ev2");
    bad_hash["lot"] = json!("E2");
    bad_hash["evidence"] = json!([{"type": "scan", "sha256": "ABC"}]);
    let refused = sys.submit(&miner, &bad_hash).await;
    assert_eq!(code(&refused), "invalid_field");
    let Outcome::Rejected(r) = refused else { unreachable!() };
    assert!(r.message.contains("64 lowercase hex"), "{}", r.message);
    let mut note = bad_hash.clone();
    note["evidence"] = json!("a photo");
    assert_eq!(code(&sys.submit(&miner, &note).await), "invalid_field");

    // EU 2025: rough of unknown origin needs every mining country known or
    // node verification; traced mixed rough (L8) has every country known.
    let mut stock = event(
        &t,
        "declare-old",
        "declared",
        json!({"lot": "OLD", "carats": "50.00", "state": "rough", "origin": "unknown", "evidence": "pre-ledger inventory"}),
    );
    stock["occurred_at"] = json!(at);
    sys.accept(&t, &stock).await;
    sys.projection_caught_up().await;
    assert_eq!(sys.origin("E1").await["path"][0]["vouched"]["by"], "evidenced");
    let rule = |a: &Value| a["reasons"].as_array().unwrap().iter().find(|r| r["rule"] == "16th-package-mixed-rough").cloned().unwrap();
    let old = sys.admissible("OLD", "eu-2025", "2025-04-01").await;
    assert_eq!(old["verdict"], "undetermined");
    assert_eq!(rule(&old)["finding"], "undetermined");
    assert!(rule(&old)["text"].as_str().unwrap().contains("needs every country of mining known, or verification by a verification node"), "{old}");
    assert_eq!(rule(&sys.admissible("OLD", "eu-2025", "2025-02-28").await)["finding"], "admissible", "not in force yet");
    assert_eq!(rule(&sys.admissible("L8", "eu-2025", "2025-04-01").await)["finding"], "admissible");
    sys.accept(&ado, &verified(&ado, "ado-old", at, json!({"lots": ["OLD"], "carats": "50.00", "verification": "ADO-OLD", "finding": "conforms"}))).await;
    sys.projection_caught_up().await;
    let old = sys.admissible("OLD", "eu-2025", "2025-04-01").await;
    assert_eq!(rule(&old)["finding"], "admissible", "{old}");
    assert!(rule(&old)["text"].as_str().unwrap().contains("ADO-OLD"));

    // The proof service refuses impossible requests with a code, and goes on.
    for bad in [
        json!({"ranges": [[5, 3]]}),
        json!({"ranges": [[0, 18446744073709551615u64]]}),
        json!({"ranges": [[3, 4], [2, 9]]}),
        json!({"ranges": "x"}),
        json!({"ranges": [[1, 99999]]}),
    ] {
        let answer = custody_wire::query::request(&sys.client, custody_wire::subjects::PROOF_SUBJECT, &bad, std::time::Duration::from_secs(5)).await.unwrap();
        assert!(answer["code"].is_string(), "{bad} -> {answer}");
    }
    let good =
        custody_wire::query::request(&sys.client, custody_wire::subjects::PROOF_SUBJECT, &json!({"ranges": [[1, 3]]}), std::time::Duration::from_secs(5))
            .await
            .unwrap();
    assert!(good["proof"].is_array() && good["checkpoint"]["tree_size"].as_u64() > Some(3), "{good}");

    // The KP filing for mixed rough names every country of mining.
    let file = sys.dir.path().join("L8.json");
    let o =
        sys.custody(&["filing", "L8", "--form", "kp-mining-countries", "--date", "2025-04-01", "--certificate-out", file.to_str().unwrap(), "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kp: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        kp["countries_of_mining"],
        json!([{"country": "BW", "percent": "60.00", "carats": "1200.00"}, {"country": "RU", "percent": "40.00", "carats": "800.00"}])
    );
    assert_eq!(kp["every_country_known"], true);
    assert!(file.exists(), "the certificate backing the filing is kept");
}

/// A lot whose own history is longer than the 64 steps an answer shows
/// (issue 26: its certificate failed with `missing_ancestor`): mined, then
/// shipped back and forth between two traders 40 times (161 entries about
/// it). Its certificate carries every entry and verifies; the answer in it
/// says it shows the latest steps only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_a_history_longer_than_an_answer_shows_verifies() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let miner = sys.actor("long-miner", "miner", "BW").await;
    let x = sys.actor("long-trader-ae", "trader", "AE").await;
    let y = sys.actor("long-trader-be", "trader", "BE").await;
    let at = |day: u32| format!("2024-{:02}-{:02}T08:00:00Z", 1 + day / 28, 1 + day % 28);
    let mut mined = event(&miner, "long-mined", "mined", json!({"lot": "LONG", "carats": "50.00", "country": "BW"}));
    mined["occurred_at"] = json!(at(0));
    sys.accept(&miner, &mined).await;
    let mut from = (&miner, "BW");
    for i in 0..81 {
        let day = i + 1;
        let to = if i % 2 == 0 { (&x, "AE") } else { (&y, "BE") };
        let number = format!("{}-2024-{i:04}", from.1);
        let mut exported = event(
            from.0,
            &format!("long-export-{i}"),
            "exported",
            json!({"lots": ["LONG"], "to": to.0.public_key(), "to_country": to.1, "certificate": {"number": number, "value_usd": "1000.00"}}),
        );
        exported["occurred_at"] = json!(at(day));
        sys.accept(from.0, &exported).await;
        let mut imported = event(to.0, &format!("long-import-{i}"), "imported", json!({"certificate": number}));
        imported["occurred_at"] = json!(at(day));
        sys.accept(to.0, &imported).await;
        from = to;
    }
    sys.projection_caught_up().await;
    let cert = certify(&sys, "LONG", &sys.dir.path().join("long.json"));
    assert!(cert.entries.len() > 160, "every entry about the lot: {}", cert.entries.len());
    let report = check(&sys, &cert, &sys.ledger_key());
    assert_eq!(report["valid"], true, "{report}");
}
