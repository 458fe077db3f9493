//! What an operator sees of a running system: Prometheus metrics that
//! count what was really sent, health and readiness, and `custody status`.
//! Real `custody up` (authorization on) and real processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use custody_proto::Outcome;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// The metric names the Grafana dashboard's queries use.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(include_str!("../deploy/grafana/custody.json")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("custody_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    names
}

/// Outcomes by code, as the producer saw them.
fn by_code(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        *counts.entry(code(o).to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_and_status_names_every_service() {
    let up = up();
    let http = reqwest::Client::new();
    let miner = KeyPair::new_user();
    up.register(&[(&miner, "miner", "BW")]).await;
    let (nc, _, _) = connect_when_allowed(&up.url, &miner).await;
    let before = scrape(&http, &up.ops).await;

    // A load with receipts and two kinds of refusal, sent while metrics
    // are being scraped.
    let mined = |id: String, lot: String| sign(&miner, &event(&miner, &id, "mined", json!({"lot": lot, "carats": "2.50", "country": "BW"})));
    let mut envelopes: Vec<Bytes> = (0..300).map(|i| Bytes::from(mined(format!("m-{i}"), format!("L{i}")))).collect();
    envelopes.extend((0..17).map(|i| Bytes::from(mined(format!("again-{i}"), format!("L{i}")))));
    envelopes.extend((0..11).map(|i| {
        let split = event(&miner, &format!("s-{i}"), "split", json!({"lot": format!("NOWHERE{i}"), "into": [{"lot": format!("N{i}"), "carats": "1.00"}]}));
        Bytes::from(sign(&miner, &split))
    }));
    let scraping = {
        let (http, ops) = (http.clone(), up.ops.clone());
        tokio::spawn(async move {
            let mut scrapes = 0;
            while scrapes < 1000 {
                scrape(&http, &ops).await;
                scrapes += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut outcomes = Vec::new();
    for chunk in envelopes.chunks(100) {
        let answers = custody::client::submit_batch(&nc, chunk).await.expect("the ledger answers");
        outcomes.extend(answers.into_iter().map(|a| a.outcome().expect("an outcome at the hub")));
    }
    scraping.abort();
    let sent = by_code(&outcomes);
    assert_eq!(sent.get("receipt"), Some(&300), "{sent:?}");
    assert_eq!(sent.get("lot_exists"), Some(&17), "{sent:?}");
    assert_eq!(sent.get("unknown_lot"), Some(&11), "{sent:?}");

    // Lot answers through the gateway: 5 found, 3 unknown, 2 on no route.
    for i in 0..5 {
        assert_eq!(http.get(format!("{}/v1/lots/L{i}/origin", up.http)).send().await.unwrap().status(), 200);
    }
    for i in 0..3 {
        assert_eq!(http.get(format!("{}/v1/lots/NOPE{i}/origin", up.http)).send().await.unwrap().status(), 404);
    }
    for _ in 0..2 {
        assert_eq!(http.get(format!("{}/v1/nothing/here", up.http)).send().await.unwrap().status(), 404);
    }

    let head = {
        let (op, _) = connect(&up.url, Some(&custody::keys::load(&up.dir.path().join("keys/services/operator-login.nk")).unwrap())).await.unwrap();
        let msg = op.request(custody_wire::subjects::HEAD_SUBJECT, "".into()).await.unwrap();
        serde_json::from_slice::<Value>(&msg.payload).unwrap()["seq"].as_u64().unwrap()
    };
    // The projection's lag is measured every half second.
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape(&http, &up.ops).await;
        if metric_sum(&after, "custody_projection_applied_seq", &[]) == head as f64 && metric_sum(&after, "custody_projection_lag", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delta = |name: &str, labels: &[(&str, &str)]| metric_sum(&after, name, labels) - metric_sum(&before, name, labels);
    assert_eq!(delta("custody_submissions_total", &[("outcome", "receipt")]), 300.0);
    assert_eq!(delta("custody_submissions_total", &[("outcome", "refused"), ("code", "lot_exists")]), 17.0);
    assert_eq!(delta("custody_submissions_total", &[("outcome", "refused"), ("code", "unknown_lot")]), 11.0);
    assert_eq!(delta("custody_submissions_total", &[("outcome", "refused")]), 28.0, "no refusal of another code");
    assert_eq!(metric_sum(&after, "custody_ledger_head_seq", &[]), head as f64);
    assert_eq!(metric_sum(&after, "custody_ledger_writer", &[("service", "ledger")]), 1.0);
    assert_eq!(metric_sum(&after, "custody_projection_applied_seq", &[]), head as f64, "{after}");
    assert_eq!(metric_sum(&after, "custody_projection_lag", &[]), 0.0);
    assert!(delta("custody_ledger_commit_seconds_count", &[]) >= 1.0);
    assert!(delta("custody_ledger_batch_submissions_sum", &[]) >= 328.0, "every submission went through a batch");
    let origin = [("route", "/v1/lots/{lot}/origin")];
    assert_eq!(delta("custody_gateway_requests_total", &[origin[0], ("status", "200")]), 5.0);
    assert_eq!(delta("custody_gateway_requests_total", &[origin[0], ("status", "404")]), 3.0);
    assert_eq!(delta("custody_gateway_requests_total", &[("route", "unmatched"), ("status", "404")]), 2.0);
    assert_eq!(delta("custody_gateway_request_seconds_count", &origin), 8.0);
    assert_eq!(delta("custody_query_seconds_count", &[("query", "origin")]), 8.0, "each origin request was one query");
    assert!(!after.contains("NOPE"), "a lot id, the asker's to choose, never becomes a label");

    // Every series served says what it is (`# HELP`), and the gateway's
    // name their instance as the others do.
    for line in after.lines().filter(|l| l.starts_with("custody_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(after.contains(&format!("# HELP {base} ")), "{base} has no HELP text");
        if base.starts_with("custody_gateway_") {
            assert!(line.contains(r#"service="gateway""#), "the gateway's series name it: {line}");
        }
    }

    // Every series the dashboard draws is one the system serves (the
    // edge's, from an edge: tests/edge.rs).
    for metric in dashboard_metrics() {
        if !metric.starts_with("custody_edge_") {
            assert!(after.lines().any(|l| l.starts_with(&metric)), "the dashboard draws {metric}, which nothing serves");
        }
    }

    // Health: alive, and every service ready.
    let health = http.get(format!("{}/healthz", up.ops)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // (A registration reloads NATS's authorization, and its services
    // reconnect: ready again within a second or two.)
    let mut ready = Value::Null;
    for _ in 0..100 {
        let r = http.get(format!("{}/readyz", up.ops)).send().await.unwrap();
        let code = r.status();
        ready = r.json().await.unwrap();
        if code == 200 {
            break;
        }
        assert_eq!(code, 503);
        assert_eq!(ready["ready"], false);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["ready"], true, "{ready}");
    let kinds: Vec<&str> = ready["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ledger", "projection", "gateway", "authz"], "{ready}");

    // `custody status` over NATS, as the operator: one line per service.
    let operator = up.dir.path().join("keys/services/operator-login.nk");
    let out = run_cli(&up.url, &["--nkey", operator.to_str().unwrap(), "status"], None);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("ledger") && lines[0].contains("writer") && lines[0].contains(&format!("head {head}")), "{text}");
    // Each replica says which key it signs checkpoints with.
    let seed = std::fs::read_to_string(up.dir.path().join("ledger/ledger.nk")).unwrap();
    let ledger_key = nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key();
    assert!(lines[0].contains(&format!("key {ledger_key}")), "{text}");
    assert!(lines[1].starts_with("projection") && lines[1].contains(&format!("head {head} lag 0")), "{text}");
    assert!(lines[2].starts_with("gateway") && lines[3].starts_with("authz"), "{text}");
    assert!(lines.iter().all(|l| l.ends_with("ready") && l.contains(concat!("v", env!("CARGO_PKG_VERSION")))), "{text}");
    // An actor is not the operator: it may not ask.
    let key_file = up.dir.path().join("miner.nk");
    std::fs::write(&key_file, miner.seed().unwrap()).unwrap();
    let out = run_cli(&up.url, &["--nkey", key_file.to_str().unwrap(), "status", "--wait", "0.5"], None);
    assert!(!out.status.success() && stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1), "exit 1, as README says, when no service answers");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service answered"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_is_not_ready_while_it_catches_up_and_ready_after() {
    // 30,000 from one miner at once: above the default burst.
    let sys = System::start_with(&["--actor-burst", "100000"]).await;
    let miner = sys.actor("miner", "miner", "ZA").await;
    let envelopes = mined(&miner, "r", 30_000);
    for chunk in envelopes.chunks(1000) {
        for answer in custody::client::submit_batch(&sys.client, chunk).await.expect("the ledger answers") {
            assert!(matches!(answer.outcome().unwrap(), Outcome::Receipt(_)));
        }
    }
    let end = sys.stream_caught_up().await;

    // A new projection, from nothing, with its ops listener.
    let data = sys.dir.path().join("fresh-projection");
    let (_projection, mut printed) = custody_printing(&[
        "projection".as_ref(),
        "--nats".as_ref(),
        sys.nats.url.as_ref(),
        "--ops".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    let first = printed.next().expect("a line").unwrap();
    let ops = first.strip_prefix("ops listening on ").and_then(|r| r.split_whitespace().next()).expect("the ops address").to_owned();

    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    let last = loop {
        let r = http.get(format!("{ops}/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        seen.push((status, body["services"][0].clone()));
        if status == 200 {
            break body;
        }
        assert!(seen.len() < 3000, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, while_behind) = &seen[0];
    assert_eq!(*status, 503, "not ready before it has caught up: {while_behind}");
    assert_eq!(while_behind["ready"], false);
    assert!(seen.iter().any(|(s, b)| *s == 503 && b["lag"].as_u64().is_some_and(|l| l > 0)), "a lag was seen while catching up: {seen:?}");
    let caught_up = &last["services"][0];
    assert_eq!(caught_up["head"].as_u64(), Some(end), "{last}");
    assert_eq!(caught_up["lag"].as_u64(), Some(0), "{last}");
    assert_eq!(caught_up["ready"], true);
    // And it answers from the state it caught up to.
    assert_eq!(sys.origin("r-L29999").await["as_of_seq"].as_u64(), Some(end));
}

/// A process whose NATS server died is not ready (here a projection, which
/// said ready as long as its last reading of the stream was recent): `/readyz` turns 503
/// within five seconds (it stayed 200 for about a minute, the client's
/// default ping interval), and 200 again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_within_five_seconds_of_the_nats_servers_death() {
    let mut sys = System::start().await;
    let data = sys.dir.path().join("projection-ops");
    let (_projection, mut printed) = custody_printing(&["projection", "--nats", &sys.nats.url, "--ops", "127.0.0.1:0", "--data", data.to_str().unwrap()]);
    let first = printed.next().expect("a line").unwrap();
    let ops = first.strip_prefix("ops listening on ").and_then(|r| r.split_whitespace().next()).expect("the ops address").to_owned();
    let http = reqwest::Client::new();
    let ready = |want: u16| {
        let (http, ops) = (http.clone(), ops.clone());
        async move {
            let started = std::time::Instant::now();
            loop {
                let r = http.get(format!("{ops}/readyz")).send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                if status == want {
                    return (started.elapsed(), body);
                }
                assert!(started.elapsed() < Duration::from_secs(30), "never {want}: {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    ready(200).await;
    sys.nats.kill();
    let (took, body) = ready(503).await;
    assert!(took < Duration::from_secs(5), "503 only after {took:?}");
    assert_eq!(body["services"][0]["why"], "not connected to NATS", "{body}");
    sys.nats.restart().unwrap();
    ready(200).await;
}

/// The ledger's test clock (which sets what `recorded_at` says) is taken
/// only from the command line: a config file naming it is refused, and
/// nothing starts.
#[test]
fn a_config_file_naming_the_test_clock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custody.toml");
    std::fs::write(&config, "[ledger]\ntest-clock-file = \"/tmp/clock\"\n").unwrap();
    let authority = nkeys::KeyPair::new_user().public_key();
    let data = dir.path().join("ledger");
    let out = std::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "ledger", "--nats", "nats://127.0.0.1:1", "--authority", &authority, "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("accepted only on the command line"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!data.exists(), "nothing started");
    // CUSTODY_CONFIG likewise.
    let out = std::process::Command::new(BIN)
        .args(["ledger", "--nats", "nats://127.0.0.1:1", "--authority", &authority, "--data", data.to_str().unwrap()])
        .env("CUSTODY_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 26: `--lease-ttl` took effect only when the lease bucket was
/// made; a replica started with another ttl silently ran on the bucket's.
/// Now it refuses to start, saying both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ttl_that_disagrees_with_the_bucket_is_refused() {
    let mut sys = System::start_with(&["--lease-ttl", "2"]).await;
    sys.kill_ledger();
    sys.ledger_args = vec!["--lease-ttl".into(), "5".into()];
    let (code, said) = sys.ledger_refusal();
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("--lease-ttl 5 s disagrees with the writer lease bucket's 2 s"), "{said}");
    // The same ttl starts.
    sys.ledger_args = vec!["--lease-ttl".into(), "2".into()];
    sys.start_ledger().await;
}

/// Issue 26: a replica whose folder holds another key than the one the
/// ledger's checkpoints are signed by refuses to start (it used to sign
/// with it, and `custody audit --key` then failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_ledger_key_refuses_to_start() {
    let mut sys = System::start().await;
    let miner = sys.actor("key-miner", "miner", "ZA").await;
    sys.accept(&miner, &event(&miner, "key-1", "mined", json!({"lot": "KEY1", "carats": "1.00", "country": "ZA"}))).await;
    let key = sys.ledger_key();
    // A checkpoint is published within the ledger's interval (0.2 s here).
    let checkpoints = custody_wire::follow::Reader::checkpoints(&sys.client);
    for _ in 0..200 {
        if checkpoints.last_seq().await.unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sys.kill_ledger();
    let file = sys.ledger_dir().join("ledger.nk");
    let kept = std::fs::read(&file).unwrap();
    let other = nkeys::KeyPair::new(nkeys::KeyPairType::Server);
    std::fs::write(&file, format!("{}\n", other.seed().unwrap())).unwrap();
    let (code, said) = sys.ledger_refusal();
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains(&format!("holds the key {}, but this ledger's checkpoints are signed by {key}", other.public_key())), "{said}");
    // Its own key back: it serves.
    std::fs::write(&file, kept).unwrap();
    sys.start_ledger().await;
}

/// Issue 26: two replicas with the same name (same host and path in two
/// containers, or the same `--name`) both "held" the lease. Each data
/// folder now has its own instance id in the lease, so the second is a
/// standby, and the first keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_one_name_never_both_hold_the_lease() {
    let sys = System::start_with(&["--name", "same"]).await;
    let miner = sys.actor("name-miner", "miner", "ZA").await;
    // The second replica: another folder with the ledger's key, the same name.
    let second = sys.dir.path().join("ledger-2");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::copy(sys.ledger_dir().join("ledger.nk"), second.join("ledger.nk")).unwrap();
    let log = sys.dir.path().join("ledger-2.log");
    let mut cmd = std::process::Command::new(BIN);
    custody::natsd::die_with_parent(&mut cmd);
    cmd.args(["ledger", "--nats", &sys.nats.url, "--authority", &sys.authority.public_key(), "--name", "same", "--data"])
        .arg(&second)
        .env("CUSTODY_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let _second = ServiceProcess::new(cmd.spawn().unwrap());
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    for _ in 0..200 {
        if said().contains("standby: following") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said().contains("standby: following"), "{}", said());
    // For a few of its lease attempts (every 250 ms), it never takes it,
    // and the first replica receipts.
    for i in 0..8 {
        sys.accept(&miner, &event(&miner, &format!("name-{i}"), "mined", json!({"lot": format!("NM{i}"), "carats": "1.00", "country": "ZA"}))).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!said().contains("writer lease taken"), "{}", said());
}
