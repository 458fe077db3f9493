//! Dates the ledger can vouch for (DOMAIN.md): a departure recorded when it
//! happened grandfathers Russian rough; the same departure recorded more
//! than 7 days later is a late record, its date only claimed, and the
//! answer is `undetermined`. The ledger runs on its test clock
//! (`custody ledger --test-clock-file`), set to February 2022 so that the
//! departures are on time or late by the ledger's own reading.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_time_departure_is_grandfathered_and_a_late_one_is_only_claimed() {
    let mut sys = System::start_with_clock("2022-02-20T00:00:00Z").await;
    sys.start_projection().await;
    let at = |e: &mut serde_json::Value, t: &str| e["occurred_at"] = json!(t);
    let (miner, trader) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    for (key, name, role, country) in [(&miner, "alrosa", "miner", "RU"), (&trader, "hub", "trader", "AE")] {
        let mut reg = event(
            &sys.authority,
            &format!("reg-{name}"),
            "actor.registered",
            json!({"subject": key.public_key(), "name": name, "roles": [role], "country": country}),
        );
        at(&mut reg, "2022-01-01T00:00:00Z");
        sys.accept(&sys.authority, &reg).await;
    }
    // Two lots, mined on 1 February, leave Russia either 6 days or 8 days
    // before the ledger records it (both before EO 14068, 2022-03-11).
    for (lot, left) in [("ONTIME", "2022-02-14T00:00:00Z"), ("LATE", "2022-02-11T23:00:00Z")] {
        let mut mined = event(&miner, &format!("mine-{lot}"), "mined", json!({"lot": lot, "carats": "10.00", "country": "RU"}));
        at(&mut mined, "2022-02-01T00:00:00Z");
        sys.accept(&miner, &mined).await;
        let mut export = event(
            &miner,
            &format!("export-{lot}"),
            "exported",
            json!({"lots": [lot], "to": trader.public_key(), "to_country": "AE", "certificate": {"number": format!("RU-{lot}"), "value_usd": "1.00"}}),
        );
        at(&mut export, left);
        let r = sys.accept(&miner, &export).await;
        assert!(r.recorded_at.starts_with("2022-02-20"), "the test clock records: {}", r.recorded_at);
        let mut import = event(&trader, &format!("import-{lot}"), "imported", json!({"certificate": format!("RU-{lot}")}));
        at(&mut import, "2022-02-19T00:00:00Z");
        sys.accept(&trader, &import).await;
    }
    sys.projection_caught_up().await;

    let ontime = sys.admissible("ONTIME", "us-2024", "2024-11-15").await;
    assert_eq!(ontime["verdict"], "admissible", "{ontime}");
    assert!(ontime["reasons"].as_array().unwrap().iter().any(|r| r["text"].as_str().unwrap().contains("grandfathered")), "{ontime}");
    let late = sys.admissible("LATE", "us-2024", "2024-11-15").await;
    assert_eq!(late["verdict"], "undetermined", "{late}");
    assert!(late["reasons"].as_array().unwrap().iter().any(|r| r["text"].as_str().unwrap().contains("only claimed")), "{late}");

    // The path says which step is a late record, and only that one.
    let export_step = |lot: &str, origin: &serde_json::Value| {
        origin["path"].as_array().unwrap().iter().find(|s| s["kind"] == "exported").unwrap_or_else(|| panic!("{lot}: {origin}")).clone()
    };
    let (o1, o2) = (sys.origin("ONTIME").await, sys.origin("LATE").await);
    assert!(export_step("ONTIME", &o1).get("late_record").is_none(), "{o1}");
    assert_eq!(export_step("LATE", &o2)["late_record"], true, "{o2}");

    // Another fact vouches for it: a verification node inspects the
    // shipment in the Emirates, recorded on time. The Russian mass was out
    // of Russia by then, before any rule took effect: grandfathered after all.
    let node = nkeys::KeyPair::new_user();
    let mut reg = event(
        &sys.authority,
        "reg-node",
        "actor.registered",
        json!({"subject": node.public_key(), "name": "Dubai node", "roles": ["verifier"], "country": "AE"}),
    );
    at(&mut reg, "2022-01-01T00:00:00Z");
    sys.accept(&sys.authority, &reg).await;
    let mut check =
        event(&node, "check-late", "verified", json!({"certificate": "RU-LATE", "carats": "10.00", "verification": "DXB-1", "finding": "conforms"}));
    at(&mut check, "2022-02-19T12:00:00Z");
    sys.accept(&node, &check).await;
    sys.projection_caught_up().await;
    let vouched = sys.admissible("LATE", "us-2024", "2024-11-15").await;
    assert_eq!(vouched["verdict"], "admissible", "{vouched}");
    assert!(vouched["reasons"].as_array().unwrap().iter().any(|r| r["text"].as_str().unwrap().contains("grandfathered")), "{vouched}");
}
