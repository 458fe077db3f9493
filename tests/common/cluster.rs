//! A three-server JetStream cluster on loopback, ledger replicas (one
//! writer, the others standbys) and projections, all real processes in
//! one temporary folder, killed when the test ends.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use custody::natsd::{die_with_parent, NatsCluster};
use custody_proto::{Entry, Outcome};
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};

use super::{event, sign, ServiceProcess, BIN};

/// Seconds a dead writer's lease lives on: short, so tests fail over fast.
pub const LEASE_TTL: &str = "2";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: NatsCluster,
    pub ledgers: Vec<Option<ServiceProcess>>,
    pub projections: Vec<Option<ServiceProcess>>,
    pub authority: KeyPair,
    pub client: async_nats::Client,
}

impl Cluster {
    /// Three servers and `ledgers` ledger replicas; returns once one of
    /// them is the writer.
    pub async fn start(ledgers: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsCluster::start(3, dir.path(), None).expect("a three-server cluster starts");
        let client = custody::client::connect(&nats.url()).await.expect("connect");
        let mut c = Cluster { dir, nats, ledgers: (0..ledgers).map(|_| None).collect(), projections: Vec::new(), authority: KeyPair::new_user(), client };
        // One ledger key in every replica's folder, as `custody up --cluster` does.
        custody_ledger::notary::key_for_replicas(&(0..ledgers).map(|i| c.ledger_dir(i)).collect::<Vec<_>>()).expect("the ledger key");
        for i in 0..ledgers {
            c.spawn_ledger(i);
        }
        c.writer().await;
        c
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    pub fn ledger_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("ledger-{i}"))
    }

    pub fn ledger_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("ledger-{i}.log"))).unwrap_or_default()
    }

    /// Starts ledger replica `i` (its log appended to `ledger-<i>.log`).
    pub fn spawn_ledger(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("ledger-{i}.log"))).expect("log file");
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        cmd.args(["ledger", "--nats", &self.url(), "--authority", &self.authority.public_key(), "--checkpoint-every", "0.5", "--replicas", "3"])
            .args(["--lease-ttl", LEASE_TTL, "--name", &format!("ledger-{i}"), "--data"])
            .arg(self.ledger_dir(i))
            .env("CUSTODY_LOG", "warn,custody_ledger=info,custody_ledger::service=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.ledgers[i] = Some(ServiceProcess::new(cmd.spawn().expect("custody ledger starts")));
    }

    pub fn kill_ledger(&mut self, i: usize) {
        if let Some(mut l) = self.ledgers[i].take() {
            l.kill9();
        }
    }

    /// Stops replica `i` and verifies its store (`custody verify --data`).
    pub fn verify_store(&mut self, i: usize) -> std::process::Output {
        self.kill_ledger(i);
        super::wait_for_store_unlocked(&self.ledger_dir(i));
        super::run_cli(&self.url(), &["verify", "--json", "--data", self.ledger_dir(i).to_str().expect("a UTF-8 path")], None)
    }

    /// Sends a signal to ledger `i` (SIGSTOP, SIGCONT).
    pub fn signal_ledger(&mut self, i: usize, signal: i32) {
        let pid = self.ledgers[i].as_mut().expect("a running ledger").child_mut().id();
        // SAFETY: kill(2) with a plain signal touches no memory of ours.
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    }

    /// The replica holding the writer lease, once it answers as the writer.
    pub async fn writer(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let (Some(holder), Some(_)) = (self.lease_holder().await, self.try_head().await) {
                if let Some(i) = holder.strip_prefix("ledger-").and_then(|i| i.parse().ok()) {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no ledger became the writer; logs:\n{}", (0..self.ledgers.len()).map(|i| self.ledger_log(i)).collect::<Vec<_>>().join("\n---\n"));
    }

    /// The name of the replica holding the writer lease (without its
    /// instance id).
    pub async fn lease_holder(&self) -> Option<String> {
        let js = jetstream::new(self.client.clone());
        let kv = js.get_key_value("CUSTODY_LEASE").await.ok()?;
        let e = kv.entry("writer").await.ok()??;
        let holder = String::from_utf8_lossy(&e.value).into_owned();
        (e.operation == jetstream::kv::Operation::Put).then(|| holder.split('#').next().unwrap_or_default().to_owned())
    }

    async fn try_head(&self) -> Option<(u64, Option<String>)> {
        let req = self.client.request(custody_wire::subjects::HEAD_SUBJECT, "".into());
        let msg = tokio::time::timeout(Duration::from_millis(500), req).await.ok()?.ok()?;
        let v: Value = serde_json::from_slice(&msg.payload).ok()?;
        Some((v["seq"].as_u64()?, v["hash"].as_str().map(str::to_owned)))
    }

    /// The writer's head.
    pub async fn head(&self) -> (u64, Option<String>) {
        for _ in 0..100 {
            if let Some(h) = self.try_head().await {
                return h;
            }
        }
        panic!("no writer answers its head")
    }

    /// Index of the server leading the committed stream.
    pub async fn stream_leader(&self) -> usize {
        let js = jetstream::new(self.client.clone());
        let mut s = js.get_stream(custody_wire::subjects::LEDGER_STREAM).await.expect("the committed stream");
        let info = s.info().await.expect("stream info");
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("a stream leader");
        leader.trim_start_matches('n').parse::<usize>().expect("servers are named n1..n3") - 1
    }

    /// Registers a miner through the writer.
    pub async fn miner(&self, name: &str) -> KeyPair {
        let kp = KeyPair::new_user();
        let ev = event(
            &self.authority,
            &format!("reg-{name}"),
            "actor.registered",
            json!({"subject": kp.public_key(), "name": name, "roles": ["miner"], "country": "ZA"}),
        );
        match custody::client::submit(&self.client, sign(&self.authority, &ev).into()).await.expect("the writer answers") {
            Outcome::Receipt(_) => kp,
            o => panic!("registration refused: {o:?}"),
        }
    }

    /// Every entry of the committed stream, read from any server and
    /// linked (hash and prev_hash checked). A direct get may be answered by
    /// a replica still catching up after a restart (it answers "nothing
    /// there" short of the end): read again until every server has it; a
    /// broken link is never retried.
    pub async fn stream_entries(&self) -> Vec<Entry> {
        let reader = custody_wire::follow::Reader::ledger(&self.client);
        let last = reader.last_seq().await.expect("the stream's end");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        'again: loop {
            let mut out = Vec::new();
            let mut batches = std::pin::pin!(reader.entries(None, Some(last)));
            while let Some(b) = batches.next().await {
                match b {
                    Ok(entries) => out.extend(entries.into_iter().map(custody_proto::Linked::into_entry)),
                    Err(custody_wire::follow::FollowError::Read(e)) if std::time::Instant::now() < deadline => {
                        eprintln!("reading the committed stream again: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue 'again;
                    }
                    Err(e) => panic!("a linked committed stream: {e}"),
                }
            }
            return out;
        }
    }

    /// `custody verify --json` over the committed stream: hashes, links,
    /// signatures, events.
    /// Right after a server of the cluster restarts, a read may find the
    /// stream not answering for a moment (seen once under CI's load); an
    /// auditor asks again, so this does, up to three times, for that only.
    pub fn verify(&self) -> Value {
        let mut out = super::run_cli(&self.url(), &["verify", "--json"], None);
        for _ in 0..2 {
            if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("stopped answering") {
                break;
            }
            out = super::run_cli(&self.url(), &["verify", "--json"], None);
        }
        let v: Value = serde_json::from_str(super::stdout(&out).trim()).unwrap_or(Value::Null);
        assert!(out.status.success(), "the committed stream verifies: {v} {}", String::from_utf8_lossy(&out.stderr));
        v
    }

    /// Starts projection `i`, answering queries with the others.
    pub fn spawn_projection(&mut self, i: usize) {
        while self.projections.len() <= i {
            self.projections.push(None);
        }
        let log = std::fs::File::create(self.dir.path().join(format!("projection-{i}.log"))).expect("log file");
        let mut cmd = Command::new(BIN);
        die_with_parent(&mut cmd);
        cmd.args(["projection", "--nats", &self.url(), "--data"])
            .arg(self.dir.path().join(format!("projection-{i}")))
            .env("CUSTODY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.projections[i] = Some(ServiceProcess::new(cmd.spawn().expect("custody projection starts")));
    }
}

/// What a test learns from [`checked_history`].
pub struct History {
    pub entries: Vec<Entry>,
}

/// Checks that every receipt names the entry the stream holds at its seq
/// (same hash, same event), and that no event is on the stream twice.
pub fn checked_history(entries: Vec<Entry>, receipts: &[custody_proto::Receipt]) -> History {
    let mut ids = std::collections::HashSet::new();
    for e in &entries {
        let opened = custody_proto::Opened::open(e.envelope.clone()).expect("an envelope");
        let ev = custody_proto::Event::decode(&opened.payload).expect("an event");
        assert!(ids.insert(ev.id.to_string()), "event {} is on the stream twice", ev.id);
    }
    for r in receipts {
        let e = entries.get(r.seq as usize - 1).unwrap_or_else(|| panic!("receipted seq {} is not on the stream (it ends at {})", r.seq, entries.len()));
        assert_eq!(e.hash, r.hash, "the stream's entry {} is not the one receipted", r.seq);
    }
    History { entries }
}
