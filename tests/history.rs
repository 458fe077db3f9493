//! A committed entry is never judged again. Entries written straight into
//! the store (as a ledger of an earlier version, with looser rules, would
//! have admitted them) must not stop today's ledger, projection or
//! `verify`; and the ledger's clock stepping back, between batches and
//! across a restart, must never leave an entry that replay refuses.

mod common;

use common::*;
use custody_proto::{Entry, Outcome, Timestamp};
use serde_json::json;

/// Appends `payload`, signed by `key`, to a stopped ledger's store through
/// the store module, chained on its head, recorded at `recorded_at`.
fn append_directly(store: &custody_ledger::Store, key: &nkeys::KeyPair, payload: &serde_json::Value, recorded_at: &str) -> u64 {
    let head = store.head().expect("a head");
    let entry = Entry::next(head, recorded_at.parse::<Timestamp>().expect("a time"), sign(key, payload));
    store.append(std::slice::from_ref(&entry)).expect("appended");
    entry.seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_todays_rules_would_refuse_still_open_verify_and_serve() {
    let mut sys = System::start().await;
    let m = sys.actor("m", "miner", "BW").await;
    let t = sys.actor("t", "trader", "BW").await;
    sys.stream_caught_up().await;
    sys.kill_ledger();

    // Today `occurred_at` before 1870 is `invalid_time`, and an event dated
    // before the lot's latest event is `predates_lot`: rules a later
    // version added. An earlier ledger admitted both.
    let old = event(&m, "old-mine", "mined", json!({"lot": "OLD-1", "carats": "12.00", "country": "BW", "occurred_at": "1865-03-01T00:00:00Z"}));
    let mut split = event(&m, "old-split", "split", json!({"lot": "OLD-1", "into": [{"lot": "OLD-2", "carats": "5.00"}, {"lot": "OLD-3", "carats": "7.00"}]}));
    split["occurred_at"] = json!("1864-01-01T00:00:00Z");
    for (payload, now) in [(&old, "2026-01-02T00:00:00Z"), (&split, "2026-01-03T00:00:00Z")] {
        let todays_verdict = custody_proto::Event::parse(payload.to_string().as_bytes(), now.parse().unwrap()).map(|_| ()).unwrap_err().code;
        assert_eq!(todays_verdict.as_str(), "invalid_time", "{payload}");
    }
    let last = {
        let store = custody_ledger::Store::open(&sys.ledger_dir()).expect("the stopped ledger's store opens");
        append_directly(&store, &m, &old, "2026-01-02T00:00:00Z");
        append_directly(&store, &m, &split, "2026-01-03T00:00:00Z")
    };
    wait_for_store_unlocked(&sys.ledger_dir());

    // The ledger opens on it, publishes the tail and goes on admitting.
    sys.start_ledger().await;
    assert_eq!(sys.head().await.0, last);
    let r = sys.accept(&m, &event(&m, "new-transfer", "transferred", json!({"lots": ["OLD-2"], "to": t.public_key()}))).await;
    assert_eq!(r.seq, last + 1);
    // Spending what the old entries created still follows custody.
    let again = sys.submit(&m, &event(&m, "again", "transferred", json!({"lots": ["OLD-2"], "to": t.public_key()}))).await;
    assert_eq!(code(&again), "not_holder");

    // verify passes, over the stream and over the stopped store.
    sys.stream_caught_up().await;
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "verify refused history: {} {}", stdout(&out), String::from_utf8_lossy(&out.stderr));

    // The projection serves the old lots.
    sys.start_projection().await;
    sys.projection_caught_up().await;
    let origin = sys.origin("OLD-3").await;
    assert_eq!(origin["mine_origin"], json!([{"country": "BW", "share": "1.0000"}]), "{origin}");
    assert_eq!(origin["carats"], "7.00");

    sys.kill_ledger();
    let out = sys.custody(&["verify", "--json", "--data", sys.ledger_dir().to_str().unwrap()], None);
    assert!(out.status.success(), "verify --data refused history: {}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepping_back_never_leaves_an_entry_replay_refuses() {
    let mut sys = System::start_with_clock("2026-03-01T12:00:00Z").await;
    let m = sys.actor("m", "miner", "BW").await;
    // Recorded at 12:00; the miner's clock runs 4 minutes ahead.
    let ahead = event(&m, "ahead", "mined", json!({"lot": "A", "carats": "1.00", "country": "BW", "occurred_at": "2026-03-01T12:04:00Z"}));
    let first = sys.accept(&m, &ahead).await;

    // NTP steps the ledger's clock back an hour.
    sys.set_clock("2026-03-01T11:00:00Z");
    let b = event(&m, "behind", "mined", json!({"lot": "B", "carats": "1.00", "country": "BW", "occurred_at": "2026-03-01T11:00:00Z"}));
    let second = sys.accept(&m, &b).await;
    assert!(second.recorded_at >= first.recorded_at, "recorded_at went backwards: {} after {}", second.recorded_at, first.recorded_at);
    // What is in the future of the batch's one reading is refused, not
    // recorded at a time before it.
    let future =
        sys.submit(&m, &event(&m, "future", "mined", json!({"lot": "C", "carats": "1.00", "country": "BW", "occurred_at": "2026-03-01T13:00:00Z"}))).await;
    assert_eq!(code(&future), "invalid_time");

    // Across a restart, with the clock stepped back further.
    sys.kill_ledger();
    sys.set_clock("2026-02-01T00:00:00Z");
    sys.start_ledger().await;
    let third = sys
        .accept(&m, &event(&m, "after-restart", "mined", json!({"lot": "D", "carats": "1.00", "country": "BW", "occurred_at": "2026-01-31T00:00:00Z"})))
        .await;
    assert!(third.recorded_at >= second.recorded_at, "recorded_at went backwards across a restart: {}", third.recorded_at);

    // Every entry replays: the ledger starts again, verify passes.
    sys.kill_ledger();
    sys.start_ledger().await;
    sys.stream_caught_up().await;
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "{}", stdout(&out));
    match sys.submit(&m, &ahead).await {
        Outcome::Receipt(r) => assert_eq!(r.seq, first.seq, "a resubmission returns the first receipt"),
        Outcome::Rejected(r) => panic!("{}: {}", r.code, r.message),
    }
}

/// The ledger reads its test clock from a named pipe that answers each
/// read with the next time: 12:00, then 11:00 (NTP stepping the clock
/// back), then 12:00 again, and so on. A ledger that read the clock twice
/// per batch (once to judge `occurred_at`, once for `recorded_at`) would
/// accept an event dated 12:04 against 12:00 and record it at 11:00, an
/// entry in its own future that the next start refuses to replay. With
/// one reading per batch, it judges and records against the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clock_reading_per_batch_even_when_the_clock_steps_back_between_reads() {
    use std::io::Write as _;
    let pipe_dir = tempfile::tempdir().unwrap();
    let pipe = pipe_dir.path().join("clock");
    let c_path = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let writer = pipe.clone();
    std::thread::spawn(move || {
        for i in 0.. {
            let now = if i % 2 == 0 { "2026-03-01T12:00:00Z" } else { "2026-03-01T11:00:00Z" };
            // Each open waits for the ledger's next read.
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&writer) else { break };
            let _ = f.write_all(now.as_bytes());
            drop(f);
            // Let the reader see the end of this answer before the next.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    let mut sys = System::start_with(&["--test-clock-file", pipe.to_str().unwrap()]).await;
    let m = sys.actor("m", "miner", "BW").await;
    let ahead = event(&m, "ahead", "mined", json!({"lot": "A", "carats": "1.00", "country": "BW", "occurred_at": "2026-03-01T12:04:00Z"}));
    // Judged against a batch's reading of 11:00 it is in the future
    // (refused, even though the head was recorded at 12:00); against 12:00
    // it is admitted, and recorded no earlier than that reading.
    let mut receipt = None;
    for _ in 0..10 {
        match sys.submit(&m, &ahead).await {
            custody_proto::Outcome::Receipt(r) => {
                receipt = Some(r);
                break;
            }
            other => assert_eq!(code(&other), "invalid_time", "{other:?}"),
        }
    }
    let r = receipt.expect("admitted in a batch that read 12:00");
    let recorded: Timestamp = r.recorded_at.parse().unwrap();
    assert!(recorded >= "2026-03-01T11:59:00Z".parse().unwrap(), "recorded at {recorded}, before the instant that judged it");

    sys.kill_ledger();
    match sys.ledger_start_or_refusal().await {
        Ok((head, _)) => assert_eq!(head, r.seq),
        Err(log) => panic!("the ledger refuses to replay what it admitted: {log}"),
    }
}
