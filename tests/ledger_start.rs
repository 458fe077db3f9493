//! Issue 29: a ledger starts from its saved write model, checking the hash
//! chain over every entry but verifying signatures only after the
//! verified-through mark; a crash while saving, or a damaged file, costs
//! only time (a longer replay), never a different state; an entry after
//! the mark whose signature does not verify is refused as it always was.
//!
//! Real sled stores on disk and the real `custody ledger check` process,
//! aborted at the crash points of the save with `CUSTODY_CRASH`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::copy_dir;

use custody_ledger::ledger::Ledger;
use custody_ledger::synthetic::Synthetic;
use serde_json::Value;

fn check(dir: &Path, authority: &str, crash: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custody"));
    cmd.args(["ledger", "--data", dir.to_str().unwrap(), "--authority", authority, "check", "--json"]);
    if let Some(point) = crash {
        cmd.env("CUSTODY_CRASH", format!("{point}:1"));
    }
    cmd.output().expect("custody runs")
}

fn checked(dir: &Path, authority: &str) -> Value {
    let out = check(dir, authority, None);
    assert!(out.status.success(), "the store checks: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Adds `n` entries to the store at `dir` through the ledger's own admission.
fn extend(world: &mut Synthetic, dir: &Path, n: u64) {
    let mut ledger = Ledger::reopen(dir, &world.authority_key()).expect("the store opens");
    world.extend(&mut ledger, n).expect("the ledger admits the synthetic events");
}

#[test]
fn a_start_verifies_only_what_follows_the_saved_write_model_and_reaches_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let mut world = Synthetic::new(7);
    let authority = world.authority.public_key();
    extend(&mut world, &dir, 600);

    let first = checked(&dir, &authority);
    assert_eq!(first["head"], 600);
    assert_eq!(first["replayed"], 600, "no saved model yet: every entry verified");
    assert_eq!(first["resumed_from"], Value::Null);
    assert_eq!(first["saved"], true);

    let again = checked(&dir, &authority);
    assert_eq!(again["replayed"], 0, "from the saved model, nothing to verify again: {again}");
    assert_eq!(again["resumed_from"], 600);
    assert_eq!((&again["digest"], &again["hash"]), (&first["digest"], &first["hash"]));
    assert_eq!(again["saved"], false, "already current");

    // More entries after the mark: only those are verified, and the state
    // is the one a full replay reaches.
    extend(&mut world, &dir, 50);
    let after = checked(&dir, &authority);
    assert_eq!((after["head"].as_u64(), after["resumed_from"].as_u64(), after["replayed"].as_u64()), (Some(650), Some(600), Some(50)));
    std::fs::remove_file(dir.join(custody_ledger::saved::FILE)).unwrap();
    let full = checked(&dir, &authority);
    assert_eq!(full["replayed"], 650);
    assert_eq!(full["digest"], after["digest"], "the saved model plus 50 entries is the state of all 650 replayed");
    assert_ne!(full["digest"], first["digest"], "the digest follows the state");
}

/// A crash between the steps of writing the saved model (its contents
/// written but not its checksum; the file renamed into place) leaves the
/// old model or the new one, and the next start reaches the same head and
/// digest either way.
#[test]
fn a_crash_while_saving_the_write_model_opens_to_the_same_head_and_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let mut world = Synthetic::new(5);
    let authority = world.authority.public_key();
    extend(&mut world, &pristine, 400);
    checked(&pristine, &authority);
    extend(&mut world, &pristine, 120);
    // The reference: a copy replayed whole.
    let reference = tmp.path().join("reference");
    copy_dir(&pristine, &reference);
    std::fs::remove_file(reference.join(custody_ledger::saved::FILE)).unwrap();
    let want = checked(&reference, &authority);
    assert_eq!(want["head"], 520);

    for (point, resumed, replayed) in [("ledger.model.writing", 400, 120), ("ledger.model.saved", 520, 0)] {
        let dir = tmp.path().join(point);
        copy_dir(&pristine, &dir);
        let out = check(&dir, &authority, Some(point));
        assert!(!out.status.success(), "{point}: the process was aborted there");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("crash point {point} reached")), "{point}");
        let got = checked(&dir, &authority);
        assert_eq!((&got["head"], &got["hash"], &got["digest"]), (&want["head"], &want["hash"], &want["digest"]), "{point}");
        assert_eq!((got["resumed_from"].as_u64(), got["replayed"].as_u64()), (Some(resumed), Some(replayed)), "{point}: {got}");
    }
}

/// A byte changed anywhere in the saved model is caught by its checksum:
/// the start says so, rebuilds the state from the store (the same state)
/// and saves a good file, never serving the altered one.
#[test]
fn an_altered_saved_write_model_is_detected_and_rebuilt_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let mut world = Synthetic::new(3);
    let authority = world.authority.public_key();
    extend(&mut world, &dir, 300);
    let want = checked(&dir, &authority);
    let file = dir.join(custody_ledger::saved::FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let out = check(&dir, &authority, None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("saved write model is not used") && err.contains("checksum"), "the start says why: {err}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["replayed"], 300, "rebuilt from the store");
    assert_eq!(got["digest"], want["digest"]);
    assert_eq!(checked(&dir, &authority)["replayed"], 0, "and a good model saved again");

    // A model saved for another genesis authority is not this ledger's.
    let other = Synthetic::new(1);
    let theirs = tmp.path().join("theirs");
    drop(Ledger::open(&theirs, &other.authority_key()).unwrap());
    std::fs::copy(&file, theirs.join(custody_ledger::saved::FILE)).unwrap();
    let out = check(&theirs, &other.authority.public_key(), None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("saved for genesis authority {authority}")), "{err}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["head"], 0, "its own (empty) store, not the other ledger's state");
}

/// An entry after the mark whose envelope no longer verifies (its chain
/// hash recomputed, as someone rewriting the store would) is refused at
/// start, naming its seq, as before saved models existed.
#[test]
fn a_tampered_signature_after_the_mark_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let mut world = Synthetic::new(2);
    let authority = world.authority.public_key();
    extend(&mut world, &dir, 200);
    assert_eq!(checked(&dir, &authority)["saved"], true);
    {
        let ledger = Ledger::reopen(&dir, &world.authority_key()).unwrap();
        let head = ledger.head();
        let good = ledger.store().get(200).unwrap().unwrap();
        // The same envelope with one byte of its signature changed, put in
        // a well-linked entry 201.
        let mut envelope: Value = serde_json::from_slice(&good.envelope).unwrap();
        let sig = envelope["signatures"][0]["sig"].as_str().unwrap().to_owned();
        let flipped = match sig.strip_prefix('A') {
            Some(rest) => format!("B{rest}"),
            None => format!("A{}", &sig[1..]),
        };
        envelope["signatures"][0]["sig"] = Value::String(flipped);
        let forged = custody_proto::Entry::next(head, good.recorded_at, serde_json::to_vec(&envelope).unwrap());
        ledger.store().append(&[forged]).unwrap();
    }
    let out = check(&dir, &authority, None);
    assert_eq!(out.status.code(), Some(1), "refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 201 cannot be replayed"), "{err}");
}

/// A writer stopped cleanly (SIGTERM, as systemd stops it) leaves its
/// state saved at its durable head: nothing is verified again at the next
/// start, which serves on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stopped_cleanly_saves_its_state_at_its_head() {
    let mut sys = common::System::start().await;
    let miner = sys.actor("m", "miner", "ZA").await;
    for env in common::mined(&miner, "stop", 30) {
        assert!(matches!(sys.submit_raw(env.to_vec()).await, custody_proto::Outcome::Receipt(_)));
    }
    let (head, _) = sys.head().await;
    let pid = sys.ledger.as_mut().expect("a ledger").child_mut().id();
    // SAFETY: signals a child process this test started and still holds.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(sys.ledger_exit().await.success(), "a clean stop: {}", sys.ledger_log());

    let after = checked(&sys.ledger_dir(), &sys.authority.public_key());
    assert_eq!((after["head"].as_u64(), after["resumed_from"].as_u64(), after["replayed"].as_u64()), (Some(head), Some(head), Some(0)), "{after}");
    sys.start_ledger().await;
    let more = common::sign(&miner, &common::event(&miner, "after-stop", "mined", serde_json::json!({"lot": "AS1", "carats": "1.00", "country": "ZA"})));
    let custody_proto::Outcome::Receipt(r) = sys.submit_raw(more).await else { panic!("refused after the restart") };
    assert_eq!(r.seq, head + 1);
}
