//! End-to-end harness: a real nats-server and the real `custody ledger`
//! binary as child processes on loopback, each with its own temporary
//! folder, killed when the test ends, pass or fail.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use custody::natsd::{die_with_parent, NatsServer};
use custody_proto::{Outcome, Receipt};
use nkeys::KeyPair;
use serde_json::{json, Value};

pub mod cluster;

pub const BIN: &str = env!("CARGO_BIN_EXE_custody");

/// `n` signed `mined` events of `miner`, ids `<prefix>-<i>`.
pub fn mined(miner: &KeyPair, prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            sign(miner, &event(miner, &format!("{prefix}-{i}"), "mined", json!({"lot": format!("{prefix}-L{i}"), "carats": "1.25", "country": "ZA"}))).into()
        })
        .collect()
}

/// Producers as a client would write them: one task per list of
/// envelopes, `window` in flight each, every envelope sent again with the
/// same bytes until it is answered (`attempt` per try). `done` counts
/// answers as they come; each task returns its outcomes.
pub fn produce(
    client: &async_nats::Client,
    lists: Vec<Vec<Bytes>>,
    window: usize,
    attempt: Duration,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    use futures::stream::{FuturesUnordered, StreamExt};
    lists
        .into_iter()
        .map(|envelopes| {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::with_capacity(envelopes.len());
                let mut inflight = FuturesUnordered::new();
                for env in envelopes {
                    if inflight.len() >= window {
                        outcomes.push(inflight.next().await.expect("one in flight"));
                    }
                    let (client, done) = (client.clone(), done.clone());
                    let subject = custody_wire::subjects::submit(&custody::client::signer(&env));
                    inflight.push(async move {
                        let out = custody::client::submit_patiently(&client, subject, env, attempt).await.expect("an answer, eventually");
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        out
                    });
                }
                while let Some(o) = inflight.next().await {
                    outcomes.push(o);
                }
                outcomes
            })
        })
        .collect()
}

/// A service process (ledger, projection, gateway); killed on drop.
pub struct ServiceProcess {
    child: Child,
}

impl ServiceProcess {
    pub fn new(child: Child) -> ServiceProcess {
        ServiceProcess { child }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `within` (off the async threads) for the process to
    /// exit; gives the process back, to read what it printed.
    pub async fn exit_within(mut self, within: Duration) -> (Option<std::process::ExitStatus>, ServiceProcess) {
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + within;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(s)) = self.child.try_wait() {
                    return (Some(s), self);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (None, self)
        })
        .await
        .expect("waiting for a process")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// NATS, a ledger, a client and the genesis authority.
pub struct System {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub ledger: Option<ServiceProcess>,
    pub projection: Option<ServiceProcess>,
    pub gateway: Option<ServiceProcess>,
    pub authority: KeyPair,
    pub client: async_nats::Client,
    /// Extra arguments of every ledger this system starts.
    pub ledger_args: Vec<String>,
    /// The test clock's file, if the ledger reads one.
    pub clock: Option<PathBuf>,
}

impl System {
    /// The worked example's actors, with the keys [`worked_example`] used
    /// (kept under the system's folder).
    pub fn cast(&self) -> custody::demo::Cast {
        let authority = KeyPair::from_seed(&self.authority.seed().expect("seed")).expect("authority");
        custody::demo::Cast::load_or_create(authority, &self.dir.path().join("keys")).expect("the cast's keys")
    }

    pub async fn start() -> System {
        System::start_with(&[]).await
    }

    /// A system whose ledger runs with extra arguments.
    pub async fn start_with(ledger_args: &[&str]) -> System {
        let mut s = System::open().await;
        s.ledger_args = ledger_args.iter().map(|a| a.to_string()).collect();
        s.start_ledger().await;
        s
    }

    /// NATS and a client; no ledger (a test writes the committed stream).
    pub async fn without_ledger() -> System {
        System::open().await
    }

    /// NATS and a client; no ledger yet.
    async fn open() -> System {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsServer::start(&dir.path().join("nats")).expect("nats-server starts");
        let client = custody::client::connect(&nats.url).await.expect("connect");
        System { dir, nats, ledger: None, projection: None, gateway: None, authority: KeyPair::new_user(), client, ledger_args: Vec::new(), clock: None }
    }

    /// A system whose ledger reads its clock from [`System::set_clock`]
    /// (`custody ledger --test-clock-file`), set to `start` at first.
    pub async fn start_with_clock(start: &str) -> System {
        let mut s = System::with_clock(start, &[]).await;
        s.start_ledger().await;
        s
    }

    /// [`System::start_with_clock`] with more ledger arguments, the ledger
    /// not started yet.
    pub async fn with_clock(start: &str, args: &[&str]) -> System {
        let mut s = System::open().await;
        let file = s.dir.path().join("clock");
        std::fs::write(&file, start).expect("clock set");
        s.ledger_args = vec!["--test-clock-file".into(), file.to_str().expect("a UTF-8 path").into()];
        s.ledger_args.extend(args.iter().map(|a| a.to_string()));
        s.clock = Some(file);
        s
    }

    /// Sets the ledger's test clock (RFC 3339) for the next batches.
    pub fn set_clock(&self, now: &str) {
        std::fs::write(self.clock.as_ref().expect("started with a test clock"), now).expect("clock set");
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.dir.path().join("ledger")
    }

    /// What the running (or last) ledger wrote on stderr.
    pub fn ledger_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ledger.log")).unwrap_or_default()
    }

    /// A ledger whose stderr goes to `ledger.log` (a pipe nobody reads
    /// would fill up and stall it).
    fn spawn_ledger(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("ledger.log")).expect("log file");
        self.ledger_command().stderr(log).spawn().expect("custody ledger starts")
    }

    /// Starts the ledger with `CUSTODY_CRASH=point` (see
    /// `custody_wire::crashpoint`), not waiting for it to answer.
    pub fn spawn_ledger_crashing_at(&mut self, point: &str) {
        self.spawn_ledger_with(&[("CUSTODY_CRASH", point)]);
    }

    /// Starts the ledger with `env`, not waiting for it to answer.
    pub fn spawn_ledger_with(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.path().join("ledger.log")).expect("log file");
        let child = self.ledger_command().envs(env.iter().copied()).stderr(log).spawn().expect("custody ledger starts");
        self.ledger = Some(ServiceProcess { child });
    }

    /// Waits for the ledger to end by itself (a crash point, a refusal).
    pub async fn ledger_exit(&mut self) -> std::process::ExitStatus {
        let l = self.ledger.take().expect("a ledger process");
        l.exit_within(Duration::from_secs(60)).await.0.expect("the ledger did not exit")
    }

    fn ledger_command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        cmd.args(["ledger", "--nats", &self.nats.url, "--authority", &self.authority.public_key(), "--checkpoint-every", "0.2", "--data"])
            .arg(self.ledger_dir())
            .args(&self.ledger_args)
            .env("CUSTODY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts the ledger and waits until it answers.
    pub async fn start_ledger(&mut self) {
        let child = self.spawn_ledger();
        self.ledger = Some(ServiceProcess { child });
        for _ in 0..300 {
            if self.try_head().await.is_some() {
                return;
            }
            if let Some(l) = self.ledger.as_mut() {
                if let Ok(Some(status)) = l.child.try_wait() {
                    panic!("ledger exited with {status}: {}", self.ledger_log());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ledger did not answer");
    }

    /// Runs the ledger to completion, expecting it to refuse to start;
    /// returns its exit code and what it printed.
    pub fn ledger_refusal(&self) -> (Option<i32>, String) {
        let out = self.ledger_command().stderr(Stdio::piped()).output().expect("ledger runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Starts a ledger and returns its head once it serves (then kills
    /// it), or what it printed if it exits instead.
    pub async fn ledger_start_or_refusal(&self) -> Result<(u64, Option<String>), String> {
        let mut ledger = ServiceProcess { child: self.spawn_ledger() };
        for _ in 0..300 {
            if let Some(h) = self.try_head().await {
                return Ok(h);
            }
            if let Ok(Some(_)) = ledger.child.try_wait() {
                return Err(self.ledger_log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ledger neither served nor exited");
    }

    pub fn projection_dir(&self) -> PathBuf {
        self.dir.path().join("projection")
    }

    /// Spawns a projection process with extra environment (a crash point,
    /// say) without waiting for it; its stderr goes to `projection.log`.
    pub fn spawn_projection(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        let log = std::fs::File::create(self.dir.path().join("projection.log")).expect("log file");
        cmd.args(["projection", "--nats", &self.nats.url, "--data"])
            .arg(self.projection_dir())
            .env("CUSTODY_LOG", "warn,custody_projection=info")
            // The smallest cache: every test's state is larger than it, so
            // lots are evicted and read back from the store all the time.
            .env("CUSTODY_CACHE_MB", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.projection = Some(ServiceProcess { child: cmd.spawn().expect("custody projection starts") });
    }

    pub fn projection_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("projection.log")).unwrap_or_default()
    }

    /// Waits up to a minute for the projection process to exit.
    pub async fn projection_exit(&mut self) -> std::process::ExitStatus {
        let p = self.projection.take().expect("a projection process");
        p.exit_within(Duration::from_secs(60)).await.0.expect("the projection did not exit")
    }

    /// Starts a projection process and waits until it answers.
    pub async fn start_projection(&mut self) {
        self.spawn_projection(&[]);
        for _ in 0..300 {
            if self.query(custody_wire::subjects::QUERY_DIGEST, json!({})).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("projection did not answer");
    }

    /// Starts an HTTP gateway process on a free port; returns its base URL.
    pub fn start_gateway(&mut self) -> String {
        use std::io::BufRead as _;
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        cmd.args(["gateway", "--nats", &self.nats.url, "--listen", "127.0.0.1:0"])
            .env("CUSTODY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("custody gateway starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("gateway prints its address");
        self.gateway = Some(ServiceProcess { child });
        line.trim().strip_prefix("listening on ").expect("listening on URL").to_owned()
    }

    pub fn kill_projection(&mut self) {
        if let Some(mut p) = self.projection.take() {
            p.kill9();
        }
    }

    /// A query to the projection; `None` if nobody answers.
    pub async fn query(&self, subject: &str, body: Value) -> Option<Value> {
        let req = self.client.request(subject.to_owned(), body.to_string().into());
        let msg = tokio::time::timeout(Duration::from_secs(5), req).await.ok()?.ok()?;
        serde_json::from_slice(&msg.payload).ok()
    }

    /// Waits until the projection has applied everything the ledger holds.
    pub async fn projection_caught_up(&self) -> Value {
        let head = self.head().await.0;
        for _ in 0..600 {
            if let Some(d) = self.query(custody_wire::subjects::QUERY_DIGEST, json!({})).await {
                if d["seq"].as_u64() == Some(head) {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("projection.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!("projection did not catch up to seq {head}; its log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }

    /// Waits until the committed stream holds as many entries as the
    /// ledger's head (a receipt can leave before its entry is published,
    /// and a restarted NATS may have lost a tail the ledger refills).
    pub async fn stream_caught_up(&self) -> u64 {
        let head = self.head().await.0;
        let js = async_nats::jetstream::new(self.client.clone());
        let mut last = 0;
        for _ in 0..400 {
            if let Ok(mut s) = js.get_stream(custody_wire::subjects::LEDGER_STREAM).await {
                if let Ok(info) = s.info().await {
                    last = info.state.last_sequence;
                    if last == head {
                        return last;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the committed stream holds {last} entries, the ledger {head}");
    }

    pub async fn origin(&self, lot: &str) -> Value {
        self.query(custody_wire::subjects::QUERY_ORIGIN, json!({"lot": lot})).await.expect("origin answered")
    }

    pub async fn admissible(&self, lot: &str, rules: &str, date: &str) -> Value {
        self.query(custody_wire::subjects::QUERY_ADMISSIBILITY, json!({"lot": lot, "rules": rules, "date": date})).await.expect("admissibility answered")
    }

    pub fn kill_ledger(&mut self) {
        if let Some(mut l) = self.ledger.take() {
            l.kill9();
        }
    }

    async fn try_head(&self) -> Option<(u64, Option<String>)> {
        let req = self.client.request(custody_wire::subjects::HEAD_SUBJECT, "".into());
        let msg = tokio::time::timeout(Duration::from_millis(500), req).await.ok()?.ok()?;
        let v: Value = serde_json::from_slice(&msg.payload).ok()?;
        Some((v["seq"].as_u64()?, v["hash"].as_str().map(str::to_owned)))
    }

    /// The ledger's committed head: entry count and head hash.
    pub async fn head(&self) -> (u64, Option<String>) {
        self.try_head().await.expect("ledger answers its head")
    }

    pub async fn submit_raw(&self, raw: Vec<u8>) -> Outcome {
        custody::client::submit(&self.client, Bytes::from(raw)).await.expect("ledger answers")
    }

    pub async fn submit(&self, key: &KeyPair, payload: &Value) -> Outcome {
        self.submit_raw(sign(key, payload)).await
    }

    /// Submits many envelopes, up to 128 in flight, and expects a receipt
    /// for each.
    pub async fn accept_all(&self, envelopes: impl IntoIterator<Item = Vec<u8>>) {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut inflight = FuturesUnordered::new();
        let settle = |o: anyhow::Result<Outcome>| match o.expect("ledger answers") {
            Outcome::Receipt(_) => {}
            Outcome::Rejected(r) => panic!("refused: {} {}", r.code, r.message),
        };
        for env in envelopes {
            inflight.push(custody::client::submit(&self.client, Bytes::from(env)));
            if inflight.len() >= 128 {
                settle(inflight.next().await.expect("one in flight"));
            }
        }
        while let Some(o) = inflight.next().await {
            settle(o);
        }
    }

    /// Submits and expects a receipt.
    pub async fn accept(&self, key: &KeyPair, payload: &Value) -> Receipt {
        match self.submit(key, payload).await {
            Outcome::Receipt(r) => r,
            Outcome::Rejected(r) => panic!("{} refused: {} {}", payload["id"], r.code, r.message),
        }
    }

    /// Registers a new actor with one role in a country.
    pub async fn actor(&self, name: &str, role: &str, country: &str) -> KeyPair {
        let kp = KeyPair::new_user();
        let ev = event(
            &self.authority,
            &format!("reg-{name}"),
            "actor.registered",
            json!({"subject": kp.public_key(), "name": name, "roles": [role], "country": country}),
        );
        self.accept(&self.authority, &ev).await;
        kp
    }

    /// `custody projection rebuild` into `dir`: `{"seq","digest"}` of a
    /// clean replay of the committed stream.
    pub fn rebuild(&self, dir: &std::path::Path) -> Value {
        let out = self.custody(&["projection", "rebuild", "--data", dir.to_str().expect("a UTF-8 path")], None);
        assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(stdout(&out).trim()).expect("rebuild prints JSON")
    }

    /// The ledger's public key (`custody ledger key`): what verifiers trust.
    pub fn ledger_key(&self) -> String {
        let out = self.custody(&["ledger", "key", "--data", self.ledger_dir().to_str().expect("a UTF-8 path")], None);
        assert!(out.status.success());
        let key = stdout(&out).trim().to_owned();
        assert!(key.starts_with('N'), "a server nkey: {key}");
        key
    }

    /// Runs the CLI against this system's NATS.
    pub fn custody(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_cli(&self.nats.url, args, stdin)
    }
}

/// A ledger with lots in every state a custody rule can refuse: miners in RU
/// and BW, two traders in AE, a cutter in IN. The RU miner holds `A` 100 ct
/// and `B` 50 ct; `SP` is consumed (split into `SP1`, `SP2`); `X` is in
/// transit to the trader under `RU-X-1`; the cutter holds rough `K2` 5 ct
/// and polished `P1` 12 ct (cut from `K`). The event id `mine-A` is used.
/// `revoked` is a miner in RU whom the authority has revoked. `verifier` is
/// a verification node that has used the verification number `V-USED` (on `A`).
pub struct RefusalWorld {
    pub sys: System,
    pub miner_ru: KeyPair,
    pub miner_bw: KeyPair,
    pub trader: KeyPair,
    pub trader2: KeyPair,
    pub cutter: KeyPair,
    pub revoked: KeyPair,
    pub verifier: KeyPair,
    /// A miner in ZA that is also a verification node; it holds `OWN` (3 ct).
    pub node: KeyPair,
}

pub async fn refusal_world() -> RefusalWorld {
    let sys = System::start().await;
    let miner_ru = sys.actor("miner-ru", "miner", "RU").await;
    let miner_bw = sys.actor("miner-bw", "miner", "BW").await;
    let trader = sys.actor("trader", "trader", "AE").await;
    let trader2 = sys.actor("trader2", "trader", "AE").await;
    let cutter = sys.actor("cutter", "manufacturer", "IN").await;
    let revoked = sys.actor("revoked", "miner", "RU").await;
    let a = &sys.authority;
    sys.accept(a, &event(a, "revoke-revoked", "actor.revoked", json!({"subject": revoked.public_key(), "reason": "licence withdrawn"}))).await;
    let m = &miner_ru;
    for (lot, ct) in [("A", "100.00"), ("B", "50.00"), ("SP", "10.00"), ("X", "20.00"), ("K", "30.00"), ("K2", "5.00")] {
        sys.accept(m, &event(m, &format!("mine-{lot}"), "mined", json!({"lot": lot, "carats": ct, "country": "RU"}))).await;
    }
    sys.accept(m, &event(m, "split-sp", "split", json!({"lot": "SP", "into": [{"lot": "SP1", "carats": "4.00"}, {"lot": "SP2", "carats": "6.00"}]}))).await;
    let cert = |n: &str| json!({"number": n, "value_usd": "1000.00"});
    sys.accept(m, &event(m, "export-x", "exported", json!({"lots": ["X"], "to": trader.public_key(), "to_country": "AE", "certificate": cert("RU-X-1")})))
        .await;
    sys.accept(
        m,
        &event(m, "export-k", "exported", json!({"lots": ["K", "K2"], "to": cutter.public_key(), "to_country": "IN", "certificate": cert("RU-K-1")})),
    )
    .await;
    sys.accept(&cutter, &event(&cutter, "import-k", "imported", json!({"certificate": "RU-K-1"}))).await;
    sys.accept(
        &cutter,
        &event(&cutter, "cut-k", "processed", json!({"lot": "K", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "P1", "carats": "12.00"}]})),
    )
    .await;
    let verifier = sys.actor("verifier", "verifier", "BE").await;
    let v = &verifier;
    sys.accept(v, &event(v, "verify-a", "verified", json!({"lots": ["A"], "carats": "100.00", "verification": "V-USED", "finding": "conforms"}))).await;
    // A mine that is also a verification node, holding its lot `OWN`.
    let node = KeyPair::new_user();
    let a = &sys.authority;
    let registered = json!({"subject": node.public_key(), "name": "mine and node", "roles": ["miner", "verifier"], "country": "ZA"});
    sys.accept(a, &event(a, "reg-mine-node", "actor.registered", registered)).await;
    sys.accept(&node, &event(&node, "mine-own", "mined", json!({"lot": "OWN", "carats": "3.00", "country": "ZA"}))).await;
    RefusalWorld { sys, miner_ru, miner_bw, trader, trader2, cutter, revoked, verifier, node }
}

/// NATS, a ledger and a projection holding DOMAIN.md's worked example.
pub async fn worked_example() -> System {
    let mut sys = System::start().await;
    sys.start_projection().await;
    let cast = sys.cast();
    for (key, payload) in cast.worked_example() {
        sys.accept(key, &payload).await;
    }
    sys.projection_caught_up().await;
    sys
}

pub fn run_cli(nats: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut cmd = Command::new(BIN);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .args(args)
        .env("CUSTODY_NATS", nats)
        .env("CUSTODY_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("custody runs");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("custody finishes")
}

/// Waits until no handle holds sled's lock on the store in `dir`. A sled
/// database this test process opened keeps its lock a moment after it is
/// dropped (its I/O threads still hold the config), so the next open (by a
/// child ledger, or here) could be refused with "could not acquire lock".
pub fn wait_for_store_unlocked(dir: &std::path::Path) {
    use std::os::unix::io::AsRawFd as _;
    let db = dir.join("db");
    for _ in 0..250 {
        let Ok(f) = std::fs::File::open(&db) else { return };
        // SAFETY: flock(2) on a file descriptor we own for this call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above; releases what was just taken.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the store in {} stayed locked", dir.display());
}

pub fn sign(key: &KeyPair, payload: &Value) -> Vec<u8> {
    custody_proto::envelope::sign(key, payload.to_string().as_bytes()).expect("signs")
}

/// An event payload with the common fields filled in.
pub fn event(actor: &KeyPair, id: &str, kind: &str, fields: Value) -> Value {
    let mut v = json!({"id": id, "kind": kind, "actor": actor.public_key(), "occurred_at": "2024-09-02T08:00:00Z"});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

pub fn code(o: &Outcome) -> &str {
    match o {
        Outcome::Receipt(_) => "receipt",
        Outcome::Rejected(r) => r.code.as_str(),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `custody up` with authorization on (its default), no demo; killed on drop.
pub struct Up {
    _process: ServiceProcess,
    pub dir: tempfile::TempDir,
    pub url: String,
    /// Where edges connect (`nats-leaf://127.0.0.1:PORT`).
    pub leaf: String,
    /// The ops listener (`http://127.0.0.1:PORT`): metrics and health.
    pub ops: String,
    /// The HTTP gateway (`http://127.0.0.1:PORT`).
    pub http: String,
    pub authority: KeyPair,
    /// The ledger's head when up started serving.
    pub ready_at: u64,
}

impl Up {
    /// The genesis authority registers each `(key, role, country)`, over
    /// its own connection, as any authority would.
    pub async fn register(&self, actors: &[(&KeyPair, &str, &str)]) {
        let (auth, _) = connect(&self.url, Some(&self.authority)).await.expect("the genesis authority connects");
        for (who, role, country) in actors {
            let e = event(
                &self.authority,
                &format!("reg-{}", &who.public_key()[..8]),
                "actor.registered",
                json!({"subject": who.public_key(), "name": role, "roles": [role], "country": country}),
            );
            let raw = Bytes::from(sign(&self.authority, &e));
            let outcome = custody::client::submit(&auth, raw).await.expect("an answer");
            assert!(matches!(outcome, Outcome::Receipt(_)), "{outcome:?}");
        }
    }

    /// Stops `custody up` as Ctrl-C does and starts it again on the same
    /// folder (no demo: the ledger has what it had).
    pub async fn restart(self) -> Up {
        up_in(self.stop().await, true, &[], None)
    }

    /// Stops `custody up` as Ctrl-C does; its folder, kept.
    pub async fn stop(mut self) -> tempfile::TempDir {
        // SAFETY: signalling a child this test started.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let Up { _process, dir, .. } = self;
        let (status, _) = _process.exit_within(Duration::from_secs(20)).await;
        assert!(status.is_some(), "up stops on SIGTERM");
        dir
    }

    /// The process id of `custody up`.
    pub fn pid(&mut self) -> u32 {
        self._process.child_mut().id()
    }

    /// Waits up to `within` for `custody up` to exit; its status if it did.
    pub async fn exit_within(self, within: Duration) -> Option<std::process::ExitStatus> {
        self._process.exit_within(within).await.0
    }

    /// Whether `custody up` is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self._process.child_mut().try_wait(), Ok(None))
    }

    /// Connects with one of `up`'s service keys (`gateway`, `operator`, ...).
    pub async fn service(&self, name: &str) -> async_nats::Client {
        let key = custody::keys::load(&self.dir.path().join(format!("keys/services/{name}-login.nk"))).unwrap();
        connect(&self.url, Some(&key)).await.expect("a service key connects").0
    }
}

/// What a spawned command prints, line by line.
pub type Printed = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// `custody ARGS` (logging warnings only, stderr dropped), killed on drop,
/// with what it prints.
pub fn custody_printing<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (ServiceProcess, Printed) {
    let mut cmd = Command::new(BIN);
    die_with_parent(&mut cmd);
    let mut child =
        cmd.args(args).env("CUSTODY_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("custody starts");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("its stdout")));
    (ServiceProcess::new(child), lines)
}

pub fn up() -> Up {
    up_with(&[], None)
}

/// `custody up` on a new data folder with `extra` arguments; the genesis
/// authority's key is `authority` (`--authority`), or up's own.
pub fn up_with(extra: &[&std::ffi::OsStr], authority: Option<&std::path::Path>) -> Up {
    up_from(true, extra, authority)
}

/// `custody up` with its demo (the worked example set in time) and
/// `extra` arguments.
pub fn up_with_demo(extra: &[&std::ffi::OsStr]) -> Up {
    up_from(false, extra, None)
}

fn up_from(no_demo: bool, extra: &[&std::ffi::OsStr], authority: Option<&std::path::Path>) -> Up {
    up_in(tempfile::tempdir().unwrap(), no_demo, extra, authority)
}

fn up_in(dir: tempfile::TempDir, no_demo: bool, extra: &[&std::ffi::OsStr], authority: Option<&std::path::Path>) -> Up {
    let mut args: Vec<&std::ffi::OsStr> = vec!["up".as_ref(), "--data".as_ref(), dir.path().as_os_str()];
    if no_demo {
        args.push("--no-demo".as_ref());
    }
    if let Some(a) = authority {
        args.extend(["--authority".as_ref(), a.as_os_str()]);
    }
    args.extend(extra);
    let (process, mut lines) = custody_printing(&args);
    let (mut url, mut leaf, mut ops, mut http, mut ready_at) = (None, None, None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ledger ready at seq ") {
            ready_at = rest.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("ops listening on ") {
            ops = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("the page: ") {
            http = rest.split("/?").next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("edges connect with: custody edge --hub ") {
            leaf = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("NATS listening on ") {
            assert!(rest.contains("authorization"), "authorization is on by default: {line}");
            url = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.starts_with("serving; Ctrl-C") {
            break;
        }
    }
    // Keep draining what it prints.
    std::thread::spawn(move || for _ in lines {});
    let authority = custody::keys::load(&authority.map_or_else(|| dir.path().join("authority.nk"), std::path::Path::to_path_buf)).unwrap();
    Up {
        ready_at: ready_at.expect("up printed where the ledger is ready"),
        _process: process,
        dir,
        url: url.expect("up printed the NATS address"),
        leaf: leaf.expect("up printed where edges connect"),
        ops: ops.expect("up printed its ops listener"),
        http: http.expect("up printed the gateway's page"),
        authority,
    }
}

/// `custody edge` for `key`'s actor, a leaf node of `hub`; killed on drop.
pub struct EdgeProcess {
    pub process: ServiceProcess,
    /// Where the mine's producers connect.
    pub url: String,
    /// Its ops listener (`http://127.0.0.1:PORT`): metrics and health.
    pub ops: String,
}

impl EdgeProcess {
    pub fn start(hub: &str, key: &std::path::Path, data: &std::path::Path) -> EdgeProcess {
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        let log = std::fs::File::create(data.with_extension("log")).expect("edge log");
        let mut child = cmd
            .args(["edge", "--hub", hub, "--port", "0", "--ops", "127.0.0.1:0", "--key"])
            .arg(key)
            .arg("--data")
            .arg(data)
            .env("CUSTODY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("custody edge starts");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let process = ServiceProcess::new(child);
        let (mut url, mut ops) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ops listening on ") {
                ops = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("edge listening on ") {
                url = rest.split_whitespace().next().map(str::to_owned);
            }
            if line == "edge ready" {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        EdgeProcess { process, url: url.expect("the edge printed its address"), ops: ops.expect("the edge printed its ops listener") }
    }
}

/// What the server told a connection (permission violations, say).
pub type Complaints = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Connects as `key` (or as nobody), without retrying; the server's
/// complaints (permission violations) are collected.
pub async fn connect(url: &str, key: Option<&KeyPair>) -> Result<(async_nats::Client, Complaints), String> {
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = errors.clone();
    let mut options = async_nats::ConnectOptions::new().event_callback(move |e| {
        let sink = sink.clone();
        async move { sink.lock().unwrap().push(e.to_string()) }
    });
    if let Some(k) = key {
        options = options.nkey(k.seed().unwrap()).custom_inbox_prefix(custody_wire::connect::inbox_prefix(&k.public_key()));
    }
    options.connect(url).await.map(|c| (c, errors)).map_err(|e| e.to_string())
}

/// Until `key` can connect (the registry reached nats-server), at most 10 s.
pub async fn connect_when_allowed(url: &str, key: &KeyPair) -> (async_nats::Client, Complaints, Duration) {
    let started = std::time::Instant::now();
    for _ in 0..200 {
        if let Ok((c, e)) = connect(url, Some(key)).await {
            return (c, e, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never got in", key.public_key());
}

/// Waits for a permissions violation to be reported to this connection.
pub async fn denied(errors: &Complaints, subject: &str) -> String {
    for _ in 0..100 {
        if let Some(e) = errors.lock().unwrap().iter().find(|e| e.contains("Permissions Violation") && e.contains(subject)) {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no permissions violation for {subject}: {:?}", errors.lock().unwrap());
}

/// The sum of every sample of `name` whose labels include `labels`, in a
/// Prometheus text exposition (0 when there is none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let have = rest.trim_end_matches('}');
            labels.iter().all(|(k, v)| have.split(',').any(|kv| kv == format!("{k}=\"{v}\""))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `/metrics` of an ops listener (`http://127.0.0.1:PORT`).
pub async fn scrape(http: &reqwest::Client, ops: &str) -> String {
    let r = http.get(format!("{ops}/metrics")).send().await.expect("metrics answer");
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// GETs `path` from the gateway at `base` with this `Authorization`
/// header, if any: status and body.
pub async fn get_with(base: &str, path: &str, authorization: Option<String>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let r = req.send().await.expect("the gateway answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Copies a folder and everything in it (a stopped store, to alter or
/// to run twice).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(f.file_name());
        if f.file_type().unwrap().is_dir() {
            copy_dir(&f.path(), &dest);
        } else {
            std::fs::copy(f.path(), dest).unwrap();
        }
    }
}
