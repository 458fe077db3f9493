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

fn days_from_now(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A replica whose clock runs 30 days ahead of the NATS servers' (issue
/// 26: it admitted an event dated 30 days ahead, and every entry recorded
/// after it read as a late record) does not take the writer lease, and
/// says why; with its clock set right, it writes at the right time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_of_the_servers_does_not_write_and_says_why() {
    let mut sys = System::with_clock(&days_from_now(30), &["--max-clock-skew", "60"]).await;
    sys.spawn_ledger_with(&[]);
    let mut why = String::new();
    for _ in 0..100 {
        let statuses = custody_wire::health::gather(&sys.client, &["ledger"], std::time::Duration::from_millis(300)).await.unwrap();
        if let Some(s) = statuses.first().filter(|s| s.why.as_deref().is_some_and(|w| w.contains("clock"))) {
            assert!(!s.ready && s.role == "standby", "{s:?}");
            why = s.why.clone().unwrap_or_default();
            break;
        }
    }
    assert!(why.contains("ahead of the NATS servers'") && why.contains("--max-clock-skew"), "not ready, saying why: {why:?}; {}", sys.ledger_log());
    let head = sys.client.request(custody_wire::subjects::HEAD_SUBJECT, "".into()).await;
    assert!(head.is_err(), "no writer answers");

    // Its clock set right: it takes the lease and records at the right time.
    let now = chrono::Utc::now();
    sys.set_clock(&now.to_rfc3339());
    let m = sys.actor("clock-miner", "miner", "CA").await;
    let r = sys.accept(&m, &event(&m, "clock-1", "mined", json!({"lot": "CLK1", "carats": "1.00", "country": "CA"}))).await;
    let recorded: chrono::DateTime<chrono::Utc> = r.recorded_at.parse().unwrap();
    assert!((recorded - now).num_seconds().abs() < 60, "recorded at {recorded}, not 30 days ahead");
}

/// A writer whose clock is stepped 30 days ahead between two lease
/// renewals records nothing at that time (issue 26: the simulator found
/// that checking the clock only at lease writes leaves a quarter of a ttl
/// in which such a clock dates entries, and the head then holds every
/// later entry at that instant). Each batch's reading is judged against
/// the servers' last stamp plus the time passed on the monotonic clock:
/// the writer steps down and says why; its clock set right, it writes on,
/// and the event sent meanwhile is receipted at the right time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_clock_is_stepped_between_renewals_records_nothing_at_that_time() {
    // Renewals 5 s apart: a wide window for a check made only at them.
    let mut sys = System::with_clock(&days_from_now(0), &["--max-clock-skew", "60", "--lease-ttl", "20"]).await;
    // The system clock, until the test steps it (the file, when present).
    let clock = sys.dir.path().join("clock");
    std::fs::remove_file(&clock).unwrap();
    sys.start_ledger().await;
    let m = sys.actor("step-miner", "miner", "CA").await;
    sys.accept(&m, &event(&m, "step-1", "mined", json!({"lot": "STP1", "carats": "1.00", "country": "CA"}))).await;

    sys.set_clock(&days_from_now(30));
    let raw = bytes::Bytes::from(sign(&m, &event(&m, "step-2", "mined", json!({"lot": "STP2", "carats": "1.00", "country": "CA"}))));
    let client = sys.client.clone();
    let pending = tokio::spawn(async move { custody::client::submit(&client, raw).await });
    let mut why = String::new();
    for _ in 0..100 {
        let statuses = custody_wire::health::gather(&sys.client, &["ledger"], std::time::Duration::from_millis(300)).await.unwrap();
        if let Some(w) = statuses.first().and_then(|s| s.why.clone()).filter(|w| w.contains("clock")) {
            why = w;
            break;
        }
    }
    assert!(why.contains("ahead of the NATS servers'"), "the writer says why it stopped: {why:?}; {}", sys.ledger_log());

    std::fs::remove_file(&clock).unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), pending).await.expect("answered once the clock is right").unwrap().unwrap();
    let custody_proto::Outcome::Receipt(r) = outcome else { panic!("{outcome:?}") };
    let recorded: chrono::DateTime<chrono::Utc> = r.recorded_at.parse().unwrap();
    assert!((recorded - chrono::Utc::now()).num_seconds().abs() < 60, "recorded at {recorded}, not 30 days ahead");
}

/// A head recorded 30 days ahead (a writer whose clock ran fast, before
/// the check above) no longer moves what "the future" is: an event dated
/// 10 days ahead is refused once the clock is right, though the head is
/// later than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_beyond_the_skew_is_refused_even_when_the_head_is_ahead() {
    let sys = System::start_with_clock(&days_from_now(30)).await;
    let m = sys.actor("fast-miner", "miner", "CA").await;
    let mut ahead = event(&m, "fast-1", "mined", json!({"lot": "F1", "carats": "1.00", "country": "CA"}));
    ahead["occurred_at"] = json!(days_from_now(29));
    sys.accept(&m, &ahead).await;

    sys.set_clock(&days_from_now(0));
    let mut future = event(&m, "fast-2", "mined", json!({"lot": "F2", "carats": "1.00", "country": "CA"}));
    future["occurred_at"] = json!(days_from_now(10));
    let out = sys.submit(&m, &future).await;
    assert_eq!(code(&out), "invalid_time", "{out:?}");
    let head = sys.head().await;
    let mut on_time = event(&m, "fast-3", "mined", json!({"lot": "F3", "carats": "1.00", "country": "CA"}));
    on_time["occurred_at"] = json!(days_from_now(0));
    let r = sys.accept(&m, &on_time).await;
    assert_eq!(r.seq, head.0 + 1, "the refusal changed nothing");
}
