//! The production kit as shipped (deploy/cluster/, deploy/custody.toml,
//! deploy/prometheus/): three hosts on one machine, each started from
//! exactly the command lines its systemd units hold, reading its files
//! from deploy/. Only where things are is changed: `/etc/custody`,
//! `/var/lib/custody` and `/run/custody` become each host's own folder,
//! and every `host:port` a loopback port of its own (a container engine
//! cannot run on CI's machine, so the compose layout is not what is run).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{event, scrape, sign, ServiceProcess, BIN};
use custody::natsd::die_with_parent;
use custody_proto::Outcome;
use serde_json::{json, Value};

const KIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// What a unit file says to run.
struct Unit {
    env: Vec<(String, String)>,
    pre: Vec<Vec<String>>,
    start: Vec<String>,
    /// Folders systemd makes for it (`StateDirectory=`, `RuntimeDirectory=`).
    dirs: Vec<String>,
}

fn unit(name: &str) -> Unit {
    let text = std::fs::read_to_string(format!("{KIT}/cluster/{name}")).expect("the unit file");
    let mut u = Unit { env: Vec::new(), pre: Vec::new(), start: Vec::new(), dirs: Vec::new() };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let words = || shlex::split(value).unwrap_or_else(|| panic!("{name}: cannot split {value:?}"));
        match key {
            "Environment" => {
                let (k, v) = value.split_once('=').expect("Environment=K=V");
                u.env.push((k.to_owned(), v.to_owned()));
            }
            "ExecStartPre" => u.pre.push(words()),
            "ExecStart" => u.start = words(),
            "StateDirectory" => u.dirs.extend(value.split_whitespace().map(|d| format!("/var/lib/{d}"))),
            "RuntimeDirectory" => u.dirs.extend(value.split_whitespace().map(|d| format!("/run/{d}"))),
            _ => {}
        }
    }
    assert!(!u.start.is_empty(), "{name} has an ExecStart");
    u
}

/// Three hub hosts (1..=3) and a mine (4), each a folder standing for
/// its root, and the loopback ports standing for their addresses.
struct Site {
    dir: tempfile::TempDir,
    /// (host, port as configured) -> loopback port.
    ports: std::sync::Mutex<BTreeMap<(usize, u16), u16>>,
    processes: Vec<ServiceProcess>,
}

impl Site {
    fn root(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("custody-{host}"))
    }

    /// The loopback port standing for `port` on `host`, never one that
    /// stands for another.
    fn port(&self, host: usize, port: u16) -> u16 {
        let mut ports = self.ports.lock().unwrap();
        if let Some(p) = ports.get(&(host, port)) {
            return *p;
        }
        // Never one handed out before (`free_ports` gives each port once).
        let fresh = custody::natsd::free_ports(1).unwrap()[0];
        ports.insert((host, port), fresh);
        fresh
    }

    /// `text` as host `host` sees it: its folders, its ports, its peers'.
    fn relocate(&self, host: usize, text: &str) -> String {
        let root = self.root(host);
        let nats = std::fs::canonicalize(custody::natsd::binary().expect("nats-server")).unwrap();
        let text = text
            .replace("/usr/local/bin/custody", BIN)
            .replace("/usr/local/bin/nats-server", nats.to_str().unwrap())
            .replace("/etc/custody", &format!("{}/etc/custody", root.display()))
            .replace("/var/lib/custody", &format!("{}/var/lib/custody", root.display()))
            .replace("/var/backups/custody", &format!("{}/var/backups/custody", root.display()))
            .replace("/run/custody", &format!("{}/run/custody", root.display()));
        let addresses = regex::Regex::new(r"(custody-(\d)|0\.0\.0\.0|127\.0\.0\.1):(\d+)").unwrap();
        let text = addresses.replace_all(&text, |c: &regex::Captures| {
            let on = c.get(2).map_or(host, |h| h.as_str().parse().unwrap());
            format!("127.0.0.1:{}", self.port(on, c[3].parse().unwrap()))
        });
        // The edge's own client port (`port = 4222` in [edge]).
        let plain = regex::Regex::new(r"(?m)^port = (\d+)").unwrap();
        plain.replace_all(&text, |c: &regex::Captures| format!("port = {}", self.port(host, c[1].parse().unwrap()))).into_owned()
    }

    /// Host `host`'s copy of a file: `from` in deploy/ relocated, at `to`.
    fn install(&self, host: usize, from: &str, to: &str) {
        let text = std::fs::read_to_string(format!("{KIT}/{from}")).expect("a file of the kit");
        let path = self.at(host, to);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, self.relocate(host, &text)).unwrap();
    }

    fn at(&self, host: usize, path: &str) -> PathBuf {
        self.root(host).join(path.trim_start_matches('/'))
    }

    fn command(&self, host: usize, u: &Unit, words: &[String], log: &str) -> Command {
        let words: Vec<String> = words.iter().map(|w| self.relocate(host, w)).collect();
        let mut cmd = Command::new(&words[0]);
        die_with_parent(&mut cmd);
        cmd.args(&words[1..]).stdin(Stdio::null());
        for (k, v) in &u.env {
            cmd.env(k, self.relocate(host, v));
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(log)).unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        cmd
    }

    /// Starts unit `name` on `host` as systemd would: its folders, its
    /// ExecStartPre commands (each must succeed), then its ExecStart.
    fn start(&mut self, host: usize, name: &str) {
        let u = unit(name);
        for d in &u.dirs {
            std::fs::create_dir_all(self.at(host, d)).unwrap();
        }
        let log = format!("custody-{host}-{name}.log");
        for pre in &u.pre {
            let status = self.command(host, &u, pre, &log).status().expect("ExecStartPre runs");
            assert!(status.success(), "{name} on custody-{host}: ExecStartPre {pre:?} failed:\n{}", self.log(&log));
        }
        self.processes.push(ServiceProcess::new(self.command(host, &u, &u.start, &log).spawn().expect("ExecStart runs")));
    }

    /// Runs a oneshot unit's ExecStart to the end; what it printed.
    fn run_once(&self, host: usize, name: &str) -> (bool, String) {
        let u = unit(name);
        let log = format!("custody-{host}-{name}.log");
        let status = self.command(host, &u, &u.start, &log).status().expect("runs");
        (status.success(), self.log(&log))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                all.push_str(&format!("--- {}\n{}\n", e.file_name().to_string_lossy(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
            }
        }
        all
    }

    /// `custody --config <host's custody.toml> ARGS`, as an operator
    /// types it on that host.
    fn custody(&self, host: usize, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        cmd.arg("--config").arg(self.at(host, "/etc/custody/custody.toml"));
        cmd.args(args.iter().map(|a| self.relocate(host, a))).stdin(Stdio::null()).output().expect("custody runs")
    }

    fn ops(&self, host: usize, port: u16) -> String {
        format!("http://127.0.0.1:{}", self.port(host, port))
    }
}

/// Polls `check` every 100 ms until it gives a value, at most `within`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(within: Duration, what: &str, site: &Site, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}\n{}", site.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(http: &reqwest::Client, ops: &str) -> bool {
    matches!(http.get(format!("{ops}/readyz")).send().await, Ok(r) if r.status() == 200)
}

/// The first line a server sends on a port: nats-server's INFO.
async fn info(site: &Site, port: u16) -> Value {
    use tokio::io::AsyncBufReadExt as _;
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the port takes connections");
    let mut line = String::new();
    tokio::io::BufReader::new(s).read_line(&mut line).await.unwrap();
    serde_json::from_str(line.trim_start_matches("INFO ").trim()).unwrap_or_else(|e| panic!("port {port} said {line:?}: {e}\n{}", site.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_three_host_kit_runs_as_shipped_with_tls_routes_metrics_an_edge_and_backups() {
    let mut site = Site { dir: tempfile::tempdir().unwrap(), ports: Default::default(), processes: Vec::new() };
    let keys = site.dir.path().join("operator-desk");
    std::fs::create_dir_all(&keys).unwrap();

    // What README's "Running it in production" has an operator do once:
    // keys (the authority's seed stays on the desk, its public key goes
    // out), a private CA and a certificate per host.
    let authority = custody::keys::create(&keys.join("authority.nk")).unwrap();
    std::fs::write(keys.join("authority.pub"), format!("{}\n", authority.public_key())).unwrap();
    for s in ["ledger", "projection", "gateway", "authz", "operator"] {
        custody::keys::create(&keys.join(format!("{s}-login.nk"))).unwrap();
    }
    let miner = custody::keys::create(&keys.join("miner.nk")).unwrap();
    let certs = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(keys.join("tls"))
        .args(["--name", "custody-1", "--name", "custody-2", "--name", "custody-3", "--also", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(certs.status.success(), "{}", String::from_utf8_lossy(&certs.stderr));

    let tmpfiles = std::fs::read_to_string(format!("{KIT}/cluster/custody.tmpfiles.conf")).unwrap();
    for host in 1..=3 {
        for line in tmpfiles.lines().filter(|l| l.starts_with("d ")) {
            std::fs::create_dir_all(site.at(host, line.split_whitespace().nth(1).unwrap())).unwrap();
        }
        site.install(host, &format!("cluster/nats-{host}.conf"), "/etc/custody/nats.conf");
        site.install(host, "custody.toml", "/etc/custody/custody.toml");
        let k = site.at(host, "/etc/custody/keys");
        for f in ["authority.pub", "ledger-login.nk", "projection-login.nk", "gateway-login.nk", "authz-login.nk", "operator-login.nk"] {
            std::fs::copy(keys.join(f), k.join(f)).unwrap();
        }
        let tls = site.at(host, "/etc/custody/tls");
        std::fs::copy(keys.join("tls/ca.pem"), tls.join("ca.pem")).unwrap();
        std::fs::copy(keys.join(format!("tls/custody-{host}.pem")), tls.join("server.pem")).unwrap();
        std::fs::copy(keys.join(format!("tls/custody-{host}.key")), tls.join("server.key")).unwrap();
    }
    // The mine: its own settings file (the kit's, [edge] used), its key,
    // the deployment's CA.
    for line in tmpfiles.lines().filter(|l| l.starts_with("d ")) {
        std::fs::create_dir_all(site.at(4, line.split_whitespace().nth(1).unwrap())).unwrap();
    }
    site.install(4, "custody.toml", "/etc/custody/custody.toml");
    std::fs::copy(keys.join("miner.nk"), site.at(4, "/etc/custody/keys/miner.nk")).unwrap();
    std::fs::copy(keys.join("tls/ca.pem"), site.at(4, "/etc/custody/tls/ca.pem")).unwrap();
    // The mine's edge reaches the hub at the hub's leaf ports.
    let edge_toml = site.at(4, "/etc/custody/custody.toml");
    let text = std::fs::read_to_string(&edge_toml).unwrap();
    let hub_line = regex::Regex::new(r#"(?m)^hub = .*$"#).unwrap();
    let hub: Vec<String> = (1..=3).map(|h| format!("nats-leaf://127.0.0.1:{}", site.port(h, 7422))).collect();
    std::fs::write(&edge_toml, hub_line.replace(&text, format!("hub = {:?}", hub.join(",")).as_str()).as_ref()).unwrap();

    // The servers, then the services, each from its unit.
    for host in 1..=3 {
        site.start(host, "custody-nats.service");
    }
    // Leaf nodes take TLS only; routes take only a server with a
    // certificate from the deployment's CA: one without never joins.
    for host in 1..=3 {
        let leaf = site.port(host, 7422);
        until(Duration::from_secs(10), "the leaf node port", &site, || async { tokio::net::TcpStream::connect(("127.0.0.1", leaf)).await.ok() }).await;
        let i = info(&site, leaf).await;
        assert_eq!(i["tls_required"], json!(true), "leaf nodes of custody-{host} without TLS: {i}");
    }
    let routez = format!("http://127.0.0.1:{}/routez", site.port(1, 8222));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let peers = || async {
        let r: Value = http.get(&routez).send().await.ok()?.json().await.ok()?;
        let mut names: Vec<String> = r["routes"].as_array()?.iter().filter_map(|x| x["remote_name"].as_str().map(str::to_owned)).collect();
        names.sort();
        names.dedup();
        Some(names)
    };
    until(Duration::from_secs(20), "custody-1 routes to custody-2 and custody-3", &site, || async {
        peers().await.filter(|p| *p == ["custody-2", "custody-3"])
    })
    .await;
    let refused_before = site.log("custody-1-custody-nats.service.log").matches("TLS Handshake Failure").count();
    let rogue = custody::natsd::NatsServer::start_as(
        &site.dir.path().join("rogue/nats"),
        custody::natsd::Setup {
            cluster: Some(custody::natsd::Member { name: "rogue".into(), index: 0, route_ports: vec![site.port(5, 6222), site.port(1, 6222)] }),
            ..Default::default()
        },
    )
    .expect("a server without the CA's certificate starts");
    until(Duration::from_secs(20), "custody-1 refusing a route without TLS", &site, || async {
        (site.log("custody-1-custody-nats.service.log").matches("TLS Handshake Failure").count() > refused_before).then_some(())
    })
    .await;
    assert_eq!(peers().await.unwrap(), ["custody-2", "custody-3"], "a server without a certificate joined the cluster");
    drop(rogue);
    // A ledger's signing key, made once and given to every ledger host.
    let made = site.custody(1, &["ledger", "key", "--create"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let ledger_key = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    std::fs::copy(site.at(1, "/var/lib/custody/ledger/ledger.nk"), {
        std::fs::create_dir_all(site.at(2, "/var/lib/custody/ledger")).unwrap();
        site.at(2, "/var/lib/custody/ledger/ledger.nk")
    })
    .unwrap();
    for host in 1..=3 {
        site.start(host, "custody-authz.service");
    }
    for host in 1..=2 {
        site.start(host, "custody-ledger.service");
        site.start(host, "custody-projection.service");
    }
    site.start(1, "custody-gateway.service");

    // Every service answers ready on the --ops address custody.toml gives it.
    let mut every_ops = vec![site.ops(1, 9101), site.ops(2, 9101), site.ops(1, 9102), site.ops(2, 9102), site.ops(1, 9103)];
    every_ops.extend((1..=3).map(|h| site.ops(h, 9104)));
    for ops in &every_ops {
        until(Duration::from_secs(60), &format!("{ops}/readyz"), &site, || async { ready(&http, ops).await.then_some(()) }).await;
    }

    // `custody status` with the operator's key, as README says.
    let status = until(Duration::from_secs(30), "custody status lists both ledgers", &site, || async {
        let out = site.custody(3, &["--nkey", "/etc/custody/keys/operator-login.nk", "status", "--json"]);
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let ledgers = lines.iter().filter(|s| s["service"] == "ledger").count();
        (out.status.success() && ledgers == 2 && lines.iter().any(|s| s["service"] == "projection")).then_some(lines)
    })
    .await;
    assert_eq!(status.iter().filter(|s| s["service"] == "ledger" && s["role"] == "writer").count(), 1, "{status:?}");
    assert!(status.iter().any(|s| s["key"] == json!(ledger_key)), "the writer signs with the key made once: {status:?}");

    // A submission: the genesis authority registers the mine; the mine's
    // producer submits to its edge, which forwards over TLS.
    let hub_url = format!("nats://127.0.0.1:{}", site.port(2, 4222));
    let (auth, _) = common::connect(&hub_url, Some(&authority)).await.expect("the genesis authority logs in");
    let register =
        event(&authority, "reg-mine", "actor.registered", json!({"subject": miner.public_key(), "name": "Jwaneng", "roles": ["miner"], "country": "BW"}));
    let outcome = custody::client::submit(&auth, Bytes::from(sign(&authority, &register))).await.expect("an answer");
    assert!(matches!(outcome, Outcome::Receipt(_)), "{outcome:?}");
    site.start(4, "custody-edge.service");
    // Producers use the edge once it says it is ready (its outbox made).
    let edge_ops = site.ops(4, 9105);
    until(Duration::from_secs(30), "the edge's /readyz", &site, || async { ready(&http, &edge_ops).await.then_some(()) }).await;
    let edge_url = format!("nats://127.0.0.1:{}", site.port(4, 4222));
    let (producer, _, _) = common::connect_when_allowed(&edge_url, &miner).await;
    let mined = event(&miner, "m-1", "mined", json!({"lot": "BW-DEPLOY-1", "carats": "12.34", "country": "BW"}));
    let queued = producer.request(custody_wire::subjects::submit(&miner.public_key()), Bytes::from(sign(&miner, &mined))).await.expect("the edge answers");
    let queued: Value = serde_json::from_slice(&queued.payload).unwrap();
    assert_eq!(queued["stream"], "CUSTODY_OUTBOX", "the edge keeps the submission on its disk: {queued}");
    let origin = until(Duration::from_secs(60), "the mined lot at the gateway", &site, || async {
        let r = http.get(format!("http://127.0.0.1:{}/v1/lots/BW-DEPLOY-1/origin", site.port(1, 8080))).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(origin["mine_origin"][0]["country"], "BW", "{origin}");

    // A system that cannot speak NATS submits over HTTP, through the
    // gateway's login and the deployment's authorization.
    let over_http = event(&miner, "m-2", "mined", json!({"lot": "BW-DEPLOY-2", "carats": "3.21", "country": "BW"}));
    let r = http
        .post(format!("http://127.0.0.1:{}/v1/submissions", site.port(1, 8080)))
        .header("content-type", "application/json")
        .body(sign(&miner, &over_http))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let receipt: Value = r.json().await.unwrap();
    assert!(status == 200 && receipt["seq"].is_u64(), "{status} {receipt}");

    // Every series an alert rule reads is served by some service of the
    // deployment (the edge's at the mine).
    let mut served = String::new();
    every_ops.push(site.ops(4, 9105));
    for ops in &every_ops {
        served.push_str(&scrape(&http, ops).await);
    }
    for series in alert_series() {
        let samples = |l: &&str| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            !l.starts_with('#') && [series.clone(), format!("{series}_bucket"), format!("{series}_count")].contains(&name.to_owned())
        };
        assert!(served.lines().any(|l| samples(&l)), "{series} (alerts.yml) is served by no service");
    }

    // The nightly backup, from its unit, as the operator.
    let (ok, printed) = site.run_once(1, "custody-backup.service");
    assert!(ok, "the backup unit failed:\n{printed}");
    let backups: Vec<PathBuf> = std::fs::read_dir(site.at(1, "/var/backups/custody")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(backups.len(), 1, "one dated backup folder: {backups:?}");
    assert!(printed.contains("\"entries\""), "the backup says what it holds: {printed}");
    assert!(std::fs::read_dir(&backups[0]).unwrap().count() > 0, "the backup folder holds the backup");
}

/// The `custody_` series alerts.yml reads (a histogram's by its name).
fn alert_series() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{KIT}/prometheus/alerts.yml")).unwrap();
    let names = regex::Regex::new(r"custody_[a-z_]+").unwrap();
    let mut out: Vec<String> = names.find_iter(&text).map(|m| m.as_str().trim_end_matches("_bucket").to_owned()).collect();
    out.sort();
    out.dedup();
    out
}

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTODY_PROMTOOL") {
        return p.into();
    }
    let local = Path::new(KIT).join(".bin/promtool");
    assert!(local.is_file(), "no promtool: run deploy/promtool.sh (deploy/test.sh does) or set CUSTODY_PROMTOOL");
    local
}

#[test]
fn the_alert_rules_are_valid_fire_when_they_should_and_read_only_series_custody_serves() {
    for args in [&["check", "rules", "alerts.yml"][..], &["check", "config", "prometheus.yml"], &["test", "rules", "alerts.test.yml"]] {
        let out = Command::new(promtool()).args(args).current_dir(format!("{KIT}/prometheus")).output().expect("promtool runs");
        assert!(out.status.success(), "promtool {args:?}:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(format!("{KIT}/prometheus/alerts.yml")).unwrap();
    for name in alert_series() {
        assert!(custody::ops::SERIES.iter().any(|(s, _)| *s == name), "alerts.yml reads {name}, which no custody service serves (ops::SERIES)");
    }
    for alert in ["NoWriter", "WriterLeaseFlapping", "ProjectionLag", "ReceiptSlow", "RefusalsSpike", "EdgeOutboxGrowing", "DiskFilling", "ServiceDown"] {
        assert!(text.contains(&format!("alert: Custody{alert}")), "alerts.yml has Custody{alert}");
    }
}

/// The compose file is valid Compose, mounts only files the kit has (and
/// the operator's secrets), and runs each service with exactly its
/// unit's command line, so the two ways to deploy cannot drift apart.
#[test]
fn the_compose_file_is_valid_and_runs_what_the_units_run() {
    let compose = std::env::var_os("CUSTODY_COMPOSE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docker-compose"));
    let out = Command::new(&compose)
        .args(["-f", "compose.yaml", "config", "-q"])
        .current_dir(KIT)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (deploy/compose.sh installs docker-compose, deploy/test.sh runs it)", compose.display()));
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(format!("{KIT}/compose.yaml")).unwrap();
    for mount in regex::Regex::new(r"- \./([^:]+):").unwrap().captures_iter(&text) {
        let path = &mount[1];
        assert!(path.starts_with("secrets/") || Path::new(KIT).join(path).exists(), "compose.yaml mounts ./{path}, which deploy/ does not have");
    }
    let units: Vec<String> = ["custody-authz.service", "custody-ledger.service", "custody-projection.service", "custody-gateway.service"]
        .iter()
        .map(|name| format!("command: [{}]", unit(name).start[1..].iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")))
        .collect();
    let commands: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("command:")).collect();
    for c in &commands {
        assert!(units.iter().any(|u| u == c), "compose.yaml runs `{c}`, which no unit runs (units: {units:#?})");
    }
    for u in &units {
        assert!(commands.contains(&u.as_str()), "compose.yaml never runs `{u}`");
    }
    let nats = unit("custody-nats.service");
    let bare = |words: &[String]| {
        std::iter::once(Path::new(&words[0]).file_name().unwrap().to_string_lossy().into_owned())
            .chain(words[1..].iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(text.contains(&format!("{} && exec {}", bare(&nats.pre[0]), bare(&nats.start))), "compose.yaml's servers run custody-nats.service's command lines");
}
