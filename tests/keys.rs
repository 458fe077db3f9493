//! Keys that cannot be confused (issue 28): `custody key show` says what a
//! key file holds, and `custody ledger key` never makes a signing key
//! unless asked to, so a wrong `--data` cannot hand auditors a new one.

mod common;

use common::*;
use nkeys::{KeyPair, KeyPairType};

#[test]
fn key_show_names_each_kind_of_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, format!("{text}\n")).unwrap();
        f
    };
    let user = KeyPair::new(KeyPairType::User);
    let server = KeyPair::new(KeyPairType::Server);
    // (file, public key, kind, seed)
    let table = [
        (write("actor.nk", &user.seed().unwrap()), user.public_key(), "user", true),
        (write("ledger.nk", &server.seed().unwrap()), server.public_key(), "server", true),
        (write("actor.pub", &user.public_key()), user.public_key(), "user", false),
    ];
    for (file, public_key, kind, seed) in &table {
        let out = run_cli("", &["key", "show", file.to_str().unwrap(), "--json"], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let shown: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(
            (shown["public_key"].as_str(), shown["kind"].as_str(), shown["seed"].as_bool()),
            (Some(public_key.as_str()), Some(*kind), Some(*seed)),
            "{shown}"
        );
        let human = stdout(&run_cli("", &["key", "show", file.to_str().unwrap()], None));
        assert!(human.starts_with(public_key.as_str()), "{human}");
    }
    let human = stdout(&run_cli("", &["key", "show", table[1].0.to_str().unwrap()], None));
    assert!(human.contains("checkpoint signing key"), "the ledger's key says what it is: {human}");
    for (name, text, why) in [("junk.nk", "hello", "neither an nkey seed"), ("bad.nk", "SUAAAA", "not one")] {
        let out = run_cli("", &["key", "show", write(name, text).to_str().unwrap()], None);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(why), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn ledger_key_never_makes_a_key_unless_asked() {
    let empty = tempfile::tempdir().unwrap();
    let data = empty.path().to_str().unwrap();
    for action in ["key", "vkey"] {
        let out = run_cli("", &["ledger", action, "--data", data], None);
        assert!(!out.status.success(), "{action} on a folder with no key is refused");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("has no ledger signing key") && said.contains("--create"), "{said}");
        assert!(stdout(&out).trim().is_empty(), "no key is printed");
    }
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "nothing was written");
    let made = run_cli("", &["ledger", "vkey", "--create", "--data", data], None);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let made = run_cli("", &["ledger", "key", "--data", data], None);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let key = stdout(&made).trim().to_owned();
    assert!(key.starts_with('N') && key.len() == 56, "{key}");
    let again = run_cli("", &["ledger", "key", "--data", data], None);
    assert_eq!(stdout(&again).trim(), key, "the same key, once made");
}
