//! A producer in another language: examples/producer.py (nats-py, PyNaCl)
//! signs a `mined` event with an nkey seed written by `custody keygen` and
//! gets a real receipt from the ledger, so the contract stays
//! language-neutral. `deploy/test.sh` provides the interpreter.

mod common;

use common::*;
use serde_json::{json, Value};

/// The interpreter with the producer's packages; if it is missing, the
/// test says what to set up instead of failing on a spawn error.
fn python() -> String {
    let python = std::env::var("CUSTODY_PYTHON").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/.venv/bin/python").to_owned());
    let ready = std::process::Command::new(&python).args(["-c", "import custody_client"]).output().is_ok_and(|o| o.status.success());
    assert!(
        ready,
        "the Python producer test needs {python} with the custody-client package (clients/python) and its dependencies: run deploy/python.sh, \
         or set CUSTODY_PYTHON to such an interpreter"
    );
    python
}

fn producer(sys: &System, args: &[&str]) -> (Option<i32>, Value, String) {
    producer_at(&sys.nats.url, args)
}

fn producer_at(url: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut cmd = std::process::Command::new(python());
    custody::natsd::die_with_parent(&mut cmd);
    let out = cmd
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/producer.py"))
        .args(args)
        .env("CUSTODY_NATS", url)
        .output()
        .expect("python runs: run deploy/python.sh or deploy/test.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), serde_json::from_str(text.trim()).unwrap_or(Value::Null), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_gets_a_receipt() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let key_file = sys.dir.path().join("py-miner.nk");
    let out = sys.custody(&["keygen", "--out", key_file.to_str().unwrap()], None);
    let public = stdout(&out).trim().to_owned();
    let reg = event(&sys.authority, "reg-py", "actor.registered", json!({"subject": public, "name": "Py Miner", "roles": ["miner"], "country": "CA"}));
    sys.accept(&sys.authority, &reg).await;

    let (code, receipt, err) = producer(&sys, &[key_file.to_str().unwrap(), "PY-1", "12.34", "CA"]);
    assert_eq!(code, Some(0), "{receipt} {err}");
    assert_eq!(receipt["id"], "py-PY-1");
    assert_eq!(receipt["seq"], 2);
    assert_eq!(receipt["hash"].as_str(), sys.head().await.1.as_deref());

    // The ledger holds it as any other event: the projection traces it.
    sys.projection_caught_up().await;
    let origin = sys.origin("PY-1").await;
    assert_eq!(origin["mine_origin"], json!([{"country": "CA", "share": "1.0000"}]));
    assert_eq!(origin["carats"], "12.34");

    // And it is refused like any other: the same lot again.
    let (code, refusal, _) = producer(&sys, &[key_file.to_str().unwrap(), "PY-1", "1.00", "CA"]);
    assert_eq!(code, Some(1));
    assert_eq!(refusal["code"], "id_conflict");

    // A bulk load in one batch request: an outcome per envelope, in order.
    let (code, outcomes, err) = producer(&sys, &[key_file.to_str().unwrap(), "PYB", "1.50", "CA", "--batch", "3"]);
    assert_eq!(code, Some(0), "{outcomes} {err}");
    let ids: Vec<&str> = outcomes.as_array().expect("an array").iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids, ["py-PYB-1", "py-PYB-2", "py-PYB-3"]);
    let seqs: Vec<u64> = outcomes.as_array().unwrap().iter().filter_map(|o| o["seq"].as_u64()).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(sys.head().await.0, 5);
    let out = sys.custody(&["verify", "--json"], None);
    assert!(out.status.success(), "{}", stdout(&out));
}

/// Under `custody up`'s authorization the producer connects as its actor
/// (nkey authentication, replies on its own inbox prefix): refused before
/// it is registered, receipted after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_connects_as_its_actor_under_authorization() {
    let up = up();
    let key_file = up.dir.path().join("py-miner.nk");
    let out = run_cli(&up.url, &["keygen", "--out", key_file.to_str().unwrap()], None);
    let public = stdout(&out).trim().to_owned();

    let (code, _, err) = producer_at(&up.url, &[key_file.to_str().unwrap(), "PYA-1", "2.00", "CA"]);
    assert_eq!(code, Some(2), "an unregistered key is refused by the server: {err}");
    assert!(err.contains("not registered") && err.contains(&public) && !err.contains("Traceback"), "a sentence saying what to do, no traceback: {err}");

    let reg = event(&up.authority, "reg-pya", "actor.registered", json!({"subject": public, "name": "Py Miner", "roles": ["miner"], "country": "CA"}));
    let auth_file = up.dir.path().join("authority.nk");
    let out = run_cli(&up.url, &["--nkey", auth_file.to_str().unwrap(), "submit", "--key", auth_file.to_str().unwrap(), "-"], Some(&format!("{reg}\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut last = (None, Value::Null, String::new());
    for _ in 0..50 {
        last = producer_at(&up.url, &[key_file.to_str().unwrap(), "PYA-1", "2.00", "CA"]);
        if last.0 == Some(0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(last.0, Some(0), "{} {}", last.1, last.2);
    assert_eq!(last.1["id"], "py-PYA-1");
}

/// The package's own tests (keys, payloads, envelopes, offline).
#[test]
fn the_python_package_passes_its_own_tests() {
    let out = std::process::Command::new(python())
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python"))
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("OK"), "{said}");
}

/// `custody-produce`, the command the package installs: every kind of
/// event by flags, receipted; a refusal with the ledger's code and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_command_submits_typed_events_and_says_why_one_is_refused() {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, role, country) in [("miner", "miner", "BW"), ("trader", "trader", "BW")] {
        let file = dir.path().join(format!("{name}.nk"));
        let public = stdout(&sys.custody(&["keygen", "--out", file.to_str().unwrap()], None)).trim().to_owned();
        let reg =
            event(&sys.authority, &format!("reg-{name}"), "actor.registered", json!({"subject": public, "name": name, "roles": [role], "country": country}));
        sys.accept(&sys.authority, &reg).await;
        files.push((file, public));
    }
    let bin = std::path::Path::new(&python()).with_file_name("custody-produce");
    let produce = |args: &[&str]| {
        let out = std::process::Command::new(&bin).args(args).env("CUSTODY_NATS", &sys.nats.url).output().expect("custody-produce runs");
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (miner, trader) = (files[0].0.to_str().unwrap(), files[1].0.to_str().unwrap());
    let (code, receipt, err) = produce(&[miner, "mined", "--lot", "PYC-1", "--carats", "10.00", "--country", "BW", "--mine", "Jwaneng"]);
    assert_eq!(code, Some(0), "{receipt} {err}");
    assert!(receipt["seq"].is_u64(), "{receipt}");
    let (code, receipt, err) = produce(&[miner, "split", "--lot", "PYC-1", "--into", "PYC-A:6.00; PYC-B:4.00"]);
    assert_eq!(code, Some(0), "{receipt} {err}");
    let (code, receipt, err) = produce(&[miner, "transferred", "--lots", "PYC-A; PYC-B", "--to", &files[1].1]);
    assert_eq!(code, Some(0), "{receipt} {err}");
    let (code, receipt, err) = produce(&[trader, "merged", "--lots", "PYC-A; PYC-B", "--into", "PYC-M:10.00"]);
    assert_eq!(code, Some(0), "{receipt} {err}");
    sys.projection_caught_up().await;
    assert_eq!(sys.origin("PYC-M").await["mine_origin"], json!([{"country": "BW", "share": "1.0000"}]));

    // Refused by the ledger: its code, its words, exit 1, no traceback.
    let (code, refusal, err) = produce(&[miner, "split", "--lot", "PYC-1", "--into", "X:10.00"]);
    assert_eq!(code, Some(1), "{refusal} {err}");
    assert_eq!(refusal["code"], "lot_consumed");
    assert!(err.contains("refused (lot_consumed)") && !err.contains("Traceback"), "{err}");
    // Nobody listening: a sentence, exit 2.
    let port = custody::natsd::free_ports(1).unwrap()[0];
    let out = std::process::Command::new(&bin)
        .args([miner, "mined", "--lot", "X", "--carats", "1.00", "--country", "BW", "--nats", &format!("nats://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no NATS server answered") && !err.contains("Traceback"), "{err}");
}
