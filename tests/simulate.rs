//! The simulated world, submitted through the real ledger and read back
//! from the projection: polished carats never exceed rough, and the
//! carat-weighted mine origin of all polished stones matches the KP 2022
//! production mix within 0.02 per country.

mod common;

use std::collections::BTreeMap;

use common::*;
use custody::sim;
use serde_json::Value;

const TOLERANCE: f64 = 0.02;

fn hundredths(s: &str) -> u64 {
    let (i, f) = s.split_once('.').unwrap_or((s, "0"));
    i.parse::<u64>().unwrap() * 100 + format!("{f:0<2}")[..2].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_world_conserves_carats_and_matches_production() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let key_file = sys.dir.path().join("authority.nk");
    std::fs::write(&key_file, sys.authority.seed().unwrap()).unwrap();
    let size = sim::Size { seed: 7, rounds: 8 };

    // Deterministic: the same seed, the same world, keys and all.
    let plan = sim::world(&sys.authority, size);
    let again = sim::world(&sys.authority, size);
    assert_eq!(plan.events.iter().map(|e| e.1.to_string()).collect::<Vec<_>>(), again.events.iter().map(|e| e.1.to_string()).collect::<Vec<_>>());

    let out = sys.custody(&["simulate", "--authority", key_file.to_str().unwrap(), "--seed", "7", "--rounds", "8"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["events"], plan.events.len());
    let head = sys.head().await;
    sys.projection_caught_up().await;

    let mined: Vec<&str> = plan.events.iter().filter(|e| e.1["kind"] == "mined").map(|e| e.1["lot"].as_str().unwrap()).collect();
    let stones: Vec<&str> = plan
        .events
        .iter()
        .filter(|e| e.1["kind"] == "processed")
        .flat_map(|e| e.1["into"].as_array().unwrap().iter().map(|p| p["lot"].as_str().unwrap()))
        .collect();
    assert!(stones.len() > 500, "{} stones", stones.len());

    let mut rough = 0u64;
    for lot in &mined {
        rough += hundredths(sys.origin(lot).await["carats"].as_str().unwrap());
    }
    let mut polished = 0u64;
    let mut by_country: BTreeMap<String, f64> = BTreeMap::new();
    for lot in &stones {
        let o = sys.origin(lot).await;
        assert_eq!(o["state"], "polished", "{lot}");
        let c = hundredths(o["carats"].as_str().unwrap());
        polished += c;
        for share in o["mine_origin"].as_array().unwrap() {
            let s: f64 = share["share"].as_str().unwrap().parse().unwrap();
            *by_country.entry(share["country"].as_str().unwrap().to_owned()).or_default() += s * c as f64;
        }
    }
    assert!(polished <= rough, "polished {polished} exceeds rough {rough}");
    assert!(polished * 100 >= rough * 35, "yields of 40-50%: polished {polished} of rough {rough}");

    let total_production: f64 = sim::PRODUCTION.iter().map(|p| p.1).sum();
    for (country, mct) in sim::PRODUCTION {
        let expected = mct / total_production;
        let got = by_country.get(country).copied().unwrap_or(0.0) / polished as f64;
        assert!((got - expected).abs() <= TOLERANCE, "{country}: polished stones carry {got:.4} of their mass from it, production share {expected:.4}");
    }
    assert!(by_country.keys().all(|c| sim::PRODUCTION.iter().any(|p| p.0 == c)), "{by_country:?}");

    // The stones it names answer as their labels say.
    let verdict = |lot: String| {
        let sys = &sys;
        async move { sys.admissible(&lot, "us-2024", "2024-11-15").await["verdict"].as_str().unwrap().to_owned() }
    };
    assert_eq!(verdict(plan.clean.clone()).await, "admissible");
    assert_eq!(verdict(plan.prohibited.clone()).await, "prohibited");
    assert_eq!(verdict(plan.undetermined.clone()).await, "undetermined");

    // A reason quotes the share exactly as mine_origin shows it.
    let o = sys.origin(&plan.prohibited).await;
    let v = sys.admissible(&plan.prohibited, "us-2024", "2024-11-15").await;
    let ru = o["mine_origin"].as_array().unwrap().iter().find(|s| s["country"] == "RU").unwrap()["share"].clone();
    let why = v["reasons"].as_array().unwrap().iter().find(|r| r["finding"] == "prohibited").unwrap();
    assert_eq!(why["share"], ru, "{o} {v}");

    // Running it again changes nothing: every event is already receipted.
    let out = sys.custody(&["simulate", "--authority", key_file.to_str().unwrap(), "--seed", "7", "--rounds", "8"], None);
    assert!(out.status.success());
    assert_eq!(sys.head().await, head);
}

/// As README's `custody up` leaves a machine (authorization on): the
/// simulation finds the operator's key in the data folder, keeps its dates
/// in the past at any size, and loads pipelined; without the operator's key
/// it says which identity it needs instead of waiting a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_against_up_finds_its_identity_and_stays_in_the_past() {
    let up = up();
    let authority = up.dir.path().join("authority.nk");
    let authority = authority.to_str().unwrap();
    let rounds = 300;
    let out = run_cli(&up.url, &["--nkey", authority, "simulate", "--authority", authority, "--rounds", &rounds.to_string()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let plan = sim::world(&up.authority, sim::Size { seed: 1, rounds });
    assert_eq!(summary["events"], plan.events.len());
    assert!(plan.events.iter().all(|e| e.1["occurred_at"].as_str().unwrap() < "2026-06-01"), "simulated dates stay in the past");

    // The authority's key alone, with no operator key beside it.
    let elsewhere = tempfile::tempdir().unwrap();
    let lone = elsewhere.path().join("authority.nk");
    std::fs::copy(authority, &lone).unwrap();
    let lone = lone.to_str().unwrap();
    let started = std::time::Instant::now();
    let out = run_cli(&up.url, &["--nkey", lone, "simulate", "--authority", lone, "--seed", "2", "--rounds", "1"], None);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("only the operator may") && said.contains("operator-login.nk"), "{said}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "it took {:?} to say so", started.elapsed());
}
