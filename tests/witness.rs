//! Witnesses (issue 24): three `custody witness` processes cosign the
//! ledger's checkpoints; a history forked by hand from a copy of the
//! store (another root for a size they cosigned) is refused by every one,
//! which keeps the evidence, and still refused after a restart;
//! `verify-certificate --min-witnesses 2` fails when one cosigned. And the
//! formats against tools this project did not write: the ledger's
//! checkpoint note and a custody witness's cosignature verified by
//! `aics-tlog`, with an unmodified C2SP witness (`aics-witness`) cosigning
//! the ledger's SHA-256 tree.

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use custody::natsd::die_with_parent;
use custody_proto::checkpoint::Checkpoint;
use custody_proto::merkle::Tree;
use custody_proto::note::AddCheckpoint;
use nkeys::KeyPair;
use serde_json::{json, Value};

const DATE: &str = "2024-11-15";

/// A running `custody witness` and where it listens.
struct Witness {
    _process: ServiceProcess,
    dir: PathBuf,
    name: String,
    url: String,
    vkey: String,
}

fn start_witness(dir: &Path, name: &str, log_vkey: &str, listen: &str) -> Witness {
    let vkey = {
        let o = Command::new(BIN).args(["witness", "key", "--data", dir.to_str().unwrap(), "--name", name]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o).trim().to_owned()
    };
    let mut cmd = Command::new(BIN);
    die_with_parent(&mut cmd);
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    cmd.args(["witness", "--data", dir.to_str().unwrap(), "--name", name, "--log", log_vkey, "--listen", listen])
        .env("CUSTODY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn().expect("custody witness starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("witness listening on ").unwrap_or_else(|| panic!("the witness says where it listens: {line:?}")).to_owned();
    Witness { _process: ServiceProcess::new(child), dir: dir.to_path_buf(), name: name.to_owned(), url, vkey }
}

/// NATS, a ledger asking `witnesses` (started once the ledger's key exists), a projection.
async fn system_with_witnesses(n: usize) -> (System, Vec<Witness>, String) {
    let mut sys = System::without_ledger().await;
    // Before the ledger's first start: its signing key is made here.
    let ledger_vkey = stdout(&sys.custody(&["ledger", "vkey", "--create", "--data", sys.ledger_dir().to_str().unwrap()], None)).trim().to_owned();
    assert!(ledger_vkey.starts_with("custody/N"), "the ledger's verifier key names its default origin: {ledger_vkey}");
    let witnesses: Vec<Witness> =
        (1..=n).map(|i| start_witness(&sys.dir.path().join(format!("witness-{i}")), &format!("w{i}.custody.test"), &ledger_vkey, "127.0.0.1:0")).collect();
    for w in &witnesses {
        sys.ledger_args.extend(["--witness".to_owned(), format!("{}={}", w.vkey, w.url)]);
    }
    sys.start_ledger().await;
    sys.start_projection().await;
    (sys, witnesses, ledger_vkey)
}

fn certify(sys: &System, lot: &str) -> Value {
    let out = sys.dir.path().join(format!("{lot}-{}.json", &KeyPair::new_user().public_key()[..8]));
    let o = sys.custody(&["certify", lot, "--date", DATE, "--rules", "eu-2024", "--out", out.to_str().unwrap()], None);
    assert!(
        o.status.success(),
        "certify: {}\nledger: {}\nwitness 1: {}",
        String::from_utf8_lossy(&o.stderr),
        sys.ledger_log().lines().take(3).collect::<Vec<_>>().join("\n"),
        std::fs::read_to_string(sys.dir.path().join("witness-1.log")).unwrap_or_default()
    );
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

fn verify(sys: &System, cert: &Value, key: &str, policy: &[String]) -> (bool, Value, String) {
    let path = sys.dir.path().join(format!("check-{}.json", &KeyPair::new_user().public_key()[..8]));
    std::fs::write(&path, cert.to_string()).unwrap();
    let mut args = vec!["verify-certificate".to_owned(), path.to_str().unwrap().to_owned(), "--key".to_owned(), key.to_owned()];
    args.extend(policy.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let human = sys.custody(&args, None);
    let mut json_args = args.clone();
    json_args.push("--json");
    let o = sys.custody(&json_args, None);
    let report: Value = serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|_| panic!("a report: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.success(), report, stdout(&human))
}

fn policy(vkeys: &[String], min: usize) -> Vec<String> {
    let mut p: Vec<String> = vkeys.iter().flat_map(|v| ["--witness".to_owned(), v.clone()]).collect();
    p.extend(["--min-witnesses".to_owned(), min.to_string()]);
    p
}

async fn post(url: &str, body: String) -> (u16, String) {
    let r = reqwest::Client::new().post(format!("{url}/add-checkpoint")).body(body).send().await.expect("the witness answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

fn evidence(w: &Witness) -> usize {
    std::fs::read_dir(w.dir.join("evidence")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_witnesses_cosign_refuse_a_fork_even_after_a_restart_and_a_policy_counts_them() {
    let (mut sys, mut witnesses, _) = system_with_witnesses(3).await;
    let key = sys.ledger_key();
    let miner = sys.actor("Debswana", "miner", "BW").await;
    sys.accept(&miner, &event(&miner, "mine-W1", "mined", json!({"lot": "W1", "carats": "2.00", "country": "BW"}))).await;
    sys.projection_caught_up().await;

    // A certificate stands on a checkpoint all three cosigned.
    let cert = certify(&sys, "W1");
    let cosigners: Vec<&str> = cert["checkpoint"]["cosignatures"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cosigners.len(), 3, "{cert}");
    let all: Vec<String> = witnesses.iter().map(|w| w.vkey.clone()).collect();
    let (ok, report, human) = verify(&sys, &cert, &key, &policy(&all, 3));
    assert!(ok, "{report}");
    assert!(human.lines().next().unwrap().contains("cosigned by w1.custody.test at"), "how old and who cosigned come first: {human}");
    // A witness the verifier does not name does not count.
    let (ok, report, _) = verify(&sys, &cert, &key, &policy(&all[..1], 1));
    assert!(ok, "{report}");
    let stranger = format!("w9.custody.test={}", KeyPair::new_server().public_key());
    let (ok, report, _) = verify(&sys, &cert, &key, &["--witness".into(), stranger, "--min-witnesses".into(), "1".into()]);
    assert!(!ok, "an unknown witness's name is not enough: {report}");

    // The fork: the same entries with one changed, signed with the ledger's key at the size the witnesses cosigned.
    let size = cert["checkpoint"]["tree_size"].as_u64().unwrap();
    let secret = KeyPair::from_seed(std::fs::read_to_string(sys.ledger_dir().join("ledger.nk")).unwrap().trim()).unwrap();
    let entries = custody_wire::follow::Reader::ledger(&sys.client).range(1, size);
    let hashes: Vec<custody_proto::Hash> = {
        use futures::StreamExt;
        let mut v = Vec::new();
        let mut s = std::pin::pin!(entries);
        while let Some(m) = s.next().await {
            v.push(custody_wire::follow::entry_of(&m.unwrap()).unwrap().hash);
        }
        v
    };
    assert_eq!(hashes.len() as u64, size);
    let mut forked = Tree::new();
    for (i, h) in hashes.iter().enumerate() {
        forked.push(if i + 1 == hashes.len() { &custody_proto::Hash([7; 32]) } else { h });
    }
    let origin = custody_ledger::notary::default_origin(&key);
    let fork = Checkpoint::sign(&secret, &origin, size, &forked.root(), None, custody_proto::Timestamp::now()).unwrap();
    let genuine: Checkpoint = serde_json::from_value(cert["checkpoint"].clone()).unwrap();
    assert_ne!(fork.root, genuine.root);
    let body = |c: &Checkpoint| AddCheckpoint { old: size, proof: vec![], note: c.note().unwrap() }.to_text();
    for w in &witnesses {
        let (status, text) = post(&w.url, body(&fork)).await;
        assert_eq!(status, 422, "{}: {text}", w.name);
        assert_eq!(evidence(w), 1, "{} keeps the log-signed request", w.name);
        let kept = std::fs::read_dir(w.dir.join("evidence")).unwrap().next().unwrap().unwrap().path();
        assert!(std::fs::read_to_string(kept).unwrap().contains(&fork.note().unwrap()), "the evidence is the note the ledger signed");
    }

    // A witness restarted from its folder still refuses, and still cosigns the genuine history.
    let w1 = witnesses.remove(0);
    let (dir, name) = (w1.dir.clone(), w1.name.clone());
    let listen = w1.url.strip_prefix("http://").unwrap().to_owned();
    drop(w1);
    let ledger_vkey = stdout(&sys.custody(&["ledger", "vkey", "--data", sys.ledger_dir().to_str().unwrap()], None)).trim().to_owned();
    // Where it listened before: the ledger knows it there.
    let w1 = start_witness(&dir, &name, &ledger_vkey, &listen);
    let (status, text) = post(&w1.url, body(&fork)).await;
    assert_eq!(status, 422, "after a restart: {text}");
    let mut again = genuine.clone();
    again.cosignatures.clear();
    let (status, text) = post(&w1.url, AddCheckpoint { old: size, proof: vec![], note: again.note().unwrap() }.to_text()).await;
    assert_eq!(status, 200, "the genuine checkpoint again: {text}");
    let (status, text) = post(&w1.url, AddCheckpoint { old: 0, proof: vec![], note: again.note().unwrap() }.to_text()).await;
    assert_eq!((status, text.trim()), (409, size.to_string().as_str()), "a stale old size learns where the witness is");

    // Two witnesses gone: the next checkpoint has one cosignature, and a policy of two refuses it.
    witnesses.clear();
    sys.accept(&miner, &event(&miner, "mine-W2", "mined", json!({"lot": "W2", "carats": "1.00", "country": "BW"}))).await;
    sys.projection_caught_up().await;
    let only = certify(&sys, "W2");
    assert_eq!(only["checkpoint"]["cosignatures"].as_array().unwrap().len(), 1, "{only}");
    let (ok, report, human) = verify(&sys, &only, &key, &policy(&all[..2], 2));
    assert!(!ok, "{report}");
    assert!(human.contains("cosigned by 1 of the witnesses you named, fewer than the 2 required"), "{human}");
    let (ok, report, _) = verify(&sys, &only, &key, &policy(&all[..2], 1));
    assert!(ok, "{report}");

    // A ledger restarted knows no witness's size: it asks from 0, learns
    // the size from the 409 and proves consistency from there.
    sys.kill_ledger();
    sys.start_ledger().await;
    sys.accept(&miner, &event(&miner, "mine-W3", "mined", json!({"lot": "W3", "carats": "1.00", "country": "BW"}))).await;
    sys.projection_caught_up().await;
    let after = certify(&sys, "W3");
    assert_eq!(after["checkpoint"]["cosignatures"].as_array().unwrap().len(), 1, "{after}");
    assert!(after["checkpoint"]["tree_size"].as_u64() > only["checkpoint"]["tree_size"].as_u64());
    let (ok, report, _) = verify(&sys, &after, &key, &policy(&all[..1], 1));
    assert!(ok, "{report}");
    drop(w1);
}

/// The Python that has the interoperability tools (deploy/python.sh).
fn python() -> String {
    std::env::var("CUSTODY_PYTHON").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/.venv/bin/python").to_owned())
}

fn tool(module: &str, args: &[&str]) -> std::process::Output {
    let o = Command::new(python()).arg("-m").arg(module).args(args).output();
    o.unwrap_or_else(|e| panic!("{module} runs ({e}): run deploy/python.sh, which installs deploy/interop-requirements.txt, or set CUSTODY_PYTHON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c2sp_witness_and_a_verifier_this_project_did_not_write_accept_the_ledgers_checkpoints() {
    let mut sys = System::without_ledger().await;
    // Before the ledger's first start: its signing key is made here.
    let ledger_vkey = stdout(&sys.custody(&["ledger", "vkey", "--create", "--data", sys.ledger_dir().to_str().unwrap()], None)).trim().to_owned();
    let origin = ledger_vkey.split('+').next().unwrap().to_owned();

    // aics-witness (PyPI), an unmodified C2SP tlog-witness, on a free loopback port.
    let port = custody::natsd::free_ports(1).unwrap()[0];
    let config = sys.dir.path().join("aics").join("witness.json");
    let config = config.to_str().unwrap();
    let init = tool("aics_witness", &["init", "--config", config, "--name", "aics.custody.test", "--listen", &format!("127.0.0.1:{port}")]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let aics_vkey = stdout(&init).lines().next().unwrap().trim().to_owned();
    let added = tool("aics_witness", &["add-log", "--config", config, "--origin", &origin, "--vkey", &ledger_vkey]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    // custody's checkpoints carry two extension lines (the lot-map root and
    // the time), which this witness accepts for a log configured so.
    let mut settings: Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    settings["logs"][0]["extension_lines"] = json!(true);
    std::fs::write(config, settings.to_string()).unwrap();
    let mut serve = Command::new(python());
    die_with_parent(&mut serve);
    serve
        .args(["-m", "aics_witness", "serve", "--config", config])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(sys.dir.path().join("aics.log")).unwrap());
    let _aics = ServiceProcess::new(serve.spawn().expect("aics-witness serves"));
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And one custody witness.
    let ours = start_witness(&sys.dir.path().join("witness-1"), "w1.custody.test", &ledger_vkey, "127.0.0.1:0");
    sys.ledger_args.extend([
        "--witness".to_owned(),
        format!("{aics_vkey}=http://127.0.0.1:{port}"),
        "--witness".to_owned(),
        format!("{}={}", ours.vkey, ours.url),
    ]);
    sys.start_ledger().await;
    let miner = sys.actor("Debswana", "miner", "BW").await;
    sys.accept(&miner, &event(&miner, "mine-W1", "mined", json!({"lot": "W1", "carats": "2.00", "country": "BW"}))).await;

    // The newest cosigned checkpoint, once both witnesses cosigned one with the lot in it.
    let head = sys.head().await.0;
    let mut note = String::new();
    for _ in 0..200 {
        let o = sys.custody(&["checkpoint", "--witnessed", "--note"], None);
        note = stdout(&o);
        let cosigned = note.lines().filter(|l| l.starts_with("\u{2014} aics.custody.test ") || l.starts_with("\u{2014} w1.custody.test ")).count();
        if o.status.success() && cosigned == 2 && note.lines().nth(1).is_some_and(|n| n.parse::<u64>().unwrap_or(0) >= head) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let path = sys.dir.path().join("checkpoint.note");
    std::fs::write(&path, &note).unwrap();
    let check = |file: &Path, quorum: &str| {
        tool(
            "aics_tlog",
            &[
                "verify-checkpoint",
                "--note",
                file.to_str().unwrap(),
                "--log-key",
                &ledger_vkey,
                "--witness-key",
                &aics_vkey,
                "--witness-key",
                &ours.vkey,
                "--quorum",
                quorum,
            ],
        )
    };
    let o = check(&path, "2");
    assert!(
        o.status.success(),
        "aics-tlog accepts the ledger's note and both cosignatures:\n{note}\n{}{}\naics-witness: {}\nledger: {}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(sys.dir.path().join("aics.log")).unwrap_or_default(),
        sys.ledger_log().lines().filter(|l| l.contains("aics")).take(3).collect::<Vec<_>>().join("\n")
    );
    // Changed by one line, it is refused by the same tool.
    let bent = sys.dir.path().join("bent.note");
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    std::fs::write(&bent, note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1)).unwrap();
    assert!(!check(&bent, "0").status.success(), "a changed size fails the log's signature");
    // Without our witness's line, a quorum of two is not met.
    let one = sys.dir.path().join("one.note");
    std::fs::write(&one, note.lines().filter(|l| !l.starts_with("\u{2014} w1.custody.test ")).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    assert!(!check(&one, "2").status.success(), "one cosignature is not two");
    assert!(check(&one, "1").status.success());
}
