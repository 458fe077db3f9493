//! Backups and restores, end to end: `custody backup` while the system
//! takes submissions, `custody up --restore` on a machine that never saw
//! the original (a new data folder, a new nats-server), and `custody audit`
//! passing there with the same head. A backup altered after it was taken
//! is refused and nothing is restored.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use custody_proto::Outcome;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// Runs the CLI off the async threads.
async fn cli(nats: &str, args: &[&str]) -> std::process::Output {
    let (nats, args): (String, Vec<String>) = (nats.to_owned(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || run_cli(&nats, &args.iter().map(String::as_str).collect::<Vec<_>>(), None)).await.unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}{}", stdout(out), String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout(out).lines().last().expect("a line")).expect("JSON")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_onto_a_fresh_machine_and_audits_with_the_same_head() {
    let original = up();
    let miner = KeyPair::new_user();
    original.register(&[(&miner, "miner", "ZA")]).await;
    let (nc, _, _) = connect_when_allowed(&original.url, &miner).await;
    for chunk in mined(&miner, "before", 2000).chunks(500) {
        for a in custody::client::submit_batch(&nc, chunk).await.unwrap() {
            assert!(matches!(a.outcome().unwrap(), Outcome::Receipt(_)));
        }
    }
    let ledger_key = stdout(&cli("", &["ledger", "key", "--data", path(&original.dir.path().join("ledger"))]).await).trim().to_owned();

    // The backup is taken while the mine goes on submitting.
    let loading = {
        let (nc, envelopes) = (nc.clone(), mined(&miner, "during", DURING));
        tokio::spawn(async move {
            for chunk in envelopes.chunks(50) {
                for a in custody::client::submit_batch(&nc, chunk).await.unwrap() {
                    assert!(matches!(a.outcome().unwrap(), Outcome::Receipt(_)));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = tempfile::tempdir().unwrap();
    let backup = kept.path().join("backup");
    let operator = original.dir.path().join("keys/services/operator-login.nk");
    let taken = json_of(&cli(&original.url, &["--nkey", path(&operator), "backup", "--out", path(&backup), "--key", &ledger_key]).await);
    let size = taken["entries"].as_u64().unwrap();
    assert!(size >= 2001, "the backup holds what was receipted before it began: {taken}");
    assert!(size < 2001 + DURING as u64, "the backup was taken while submissions went on: {taken}");
    loading.await.unwrap();

    // The operator keeps the two secret keys apart from backups; the
    // original machine is then lost.
    let keys = kept.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(original.dir.path().join("authority.nk"), keys.join("authority.nk")).unwrap();
    std::fs::copy(original.dir.path().join("ledger").join(custody_ledger::notary::KEY_FILE), keys.join("ledger.nk")).unwrap();
    let lot_before = "before-L1999";
    drop(nc);
    drop(original);

    // A backup altered after it was taken: one envelope changed.
    let altered = kept.path().join("altered");
    std::fs::create_dir_all(&altered).unwrap();
    for f in ["manifest.json", "checkpoints.ndjson", "entries.ndjson"] {
        std::fs::copy(backup.join(f), altered.join(f)).unwrap();
    }
    let entries = std::fs::read_to_string(altered.join("entries.ndjson")).unwrap();
    let mut lines: Vec<String> = entries.lines().map(str::to_owned).collect();
    lines[100] = inflated(&lines[100]);
    std::fs::write(altered.join("entries.ndjson"), lines.join("\n") + "\n").unwrap();
    let check = cli("", &["restore", "--from", path(&altered), "--check"]).await;
    assert!(!check.status.success());
    let why = String::from_utf8_lossy(&check.stderr);
    // (Entry 101 hashes anew; entry 102 no longer links to it.)
    assert!(why.contains("entries.ndjson line 102") && why.contains("does not link"), "the refusal says where: {why}");
    let refused = up_refusal(&altered, &keys);
    assert!(refused.contains("line 102"), "{refused}");

    // The fresh machine: a new data folder, its own nats-server, the backup.
    let restored =
        up_with(&["--restore".as_ref(), backup.as_os_str(), "--ledger-key".as_ref(), keys.join("ledger.nk").as_os_str()], Some(&keys.join("authority.nk")));
    assert_eq!(restored.ready_at, size, "the restored ledger serves from the backup's head");
    let aside: Vec<_> = std::fs::read_dir(restored.dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("damaged")).collect();
    assert!(aside.is_empty(), "a fresh folder has no old store to move aside: {aside:?}");
    let op = restored.dir.path().join("keys/services/operator-login.nk");
    let state = restored.dir.path().join("auditor");
    let audit = json_of(&cli(&restored.url, &["--nkey", path(&op), "audit", "--key", &ledger_key, "--state", path(&state)]).await);
    assert_eq!(audit["ok"], true, "{audit}");
    assert_eq!(audit["audit"]["entries"].as_u64(), Some(size), "{audit}");
    assert_eq!(audit["audit"]["root"], taken["root"], "{audit}");
    assert!(audit["audit"]["checkpoints_verified"].as_u64().unwrap() >= 1, "{audit}");

    // It answers from the restored history, and goes on from its head.
    let (nc, _, _) = connect_when_allowed(&restored.url, &miner).await;
    let origin = loop {
        let answer = nc.request(custody_wire::subjects::QUERY_ORIGIN, json!({"lot": lot_before}).to_string().into()).await.unwrap();
        let v: Value = serde_json::from_slice(&answer.payload).unwrap();
        if v["as_of_seq"].as_u64() == Some(size) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(origin["mine_origin"][0]["country"], "ZA", "{origin}");
    let next = mined(&miner, "after", 1).remove(0);
    let Outcome::Receipt(r) = custody::client::submit(&nc, next).await.unwrap() else { panic!("refused after restore") };
    assert_eq!(r.seq, size + 1);
    let again = mined(&miner, "before", 1).remove(0);
    let Outcome::Receipt(same) = custody::client::submit(&nc, again).await.unwrap() else { panic!("a repeat is answered, not refused") };
    assert_eq!(same.seq, 2, "an event from before the backup is the restored entry, not a new one");
}

/// A backed-up entry line whose event claims 9.25 carats instead of 1.25.
fn inflated(line: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entry: Value = serde_json::from_str(line).unwrap();
    let mut envelope: Value = serde_json::from_str(entry["envelope"].as_str().unwrap()).unwrap();
    let payload = String::from_utf8(b64.decode(envelope["payload"].as_str().unwrap()).unwrap()).unwrap();
    assert!(payload.contains("1.25"), "{payload}");
    envelope["payload"] = json!(b64.encode(payload.replace("1.25", "9.25")));
    entry["envelope"] = json!(envelope.to_string());
    entry.to_string()
}

/// Submissions made while the backup is taken.
const DURING: usize = 10_000;

/// `custody up --restore` with `backup` on a new folder: what it said when
/// it refused.
fn up_refusal(backup: &Path, keys: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    custody::natsd::die_with_parent(&mut cmd);
    let out = cmd
        .args(["up", "--no-demo", "--exit-after-demo", "--data", path(dir.path()), "--authority", path(&keys.join("authority.nk"))])
        .args(["--restore", path(backup), "--ledger-key", path(&keys.join("ledger.nk"))])
        .env("CUSTODY_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "up restored an altered backup: {}", stdout(&out));
    assert!(!dir.path().join("nats").exists(), "nothing was started or written");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Issue 26: on an idle ledger, whose head already has a published
/// checkpoint (every nightly backup), the backup wrote a fresh checkpoint
/// into its manifest but not into `checkpoints.ndjson`, and restoring it
/// was refused ("the manifest's checkpoint is not among the backup's
/// checkpoints"). The manifest now names the published one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_an_idle_ledger_restores() {
    let sys = System::start().await;
    let miner = sys.actor("idle-miner", "miner", "ZA").await;
    sys.accept(&miner, &event(&miner, "idle-1", "mined", json!({"lot": "IDLE1", "carats": "1.00", "country": "ZA"}))).await;
    let (head, _) = sys.head().await;
    // Idle: the ledger publishes a checkpoint of its head by itself.
    let checkpoints = custody_wire::follow::Reader::checkpoints(&sys.client);
    let mut published = false;
    for _ in 0..200 {
        let last = checkpoints.last_seq().await.unwrap();
        if let Some(m) = checkpoints.get(last).await.unwrap() {
            published = serde_json::from_slice::<Value>(&m.payload).unwrap()["tree_size"].as_u64() == Some(head);
        }
        if published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published, "a checkpoint of the head {head} is published");
    let kept = tempfile::tempdir().unwrap();
    let backup = kept.path().join("backup");
    let taken = json_of(&cli(&sys.nats.url, &["backup", "--out", path(&backup)]).await);
    assert_eq!(taken["entries"], head, "{taken}");
    let check = cli("", &["restore", "--from", path(&backup), "--check"]).await;
    assert!(check.status.success(), "{}{}", stdout(&check), String::from_utf8_lossy(&check.stderr));
}
