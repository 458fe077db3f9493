//! `custody bench ingest`: receipted events per second through the real
//! ledger, against the rate at which the same servers store the same bytes
//! as atomic batches with no ledger, measured in the same run, on private
//! nats-servers. Envelopes are signed before the clock starts.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use custody::natsd::NatsServer;
use custody_proto::Outcome;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Serve the benchmark's metrics while it runs (the ledger's, with the
    /// Prometheus recorder installed, as a deployment runs it).
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Signed envelopes in, receipts out.
    Ingest {
        /// Envelopes to submit.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Concurrent producers.
        #[arg(long, default_value_t = 8)]
        producers: usize,
        /// Requests each producer keeps in flight.
        #[arg(long, default_value_t = 128)]
        window: usize,
        /// Also run the ledger on a JetStream cluster of this many
        /// servers (3: R3, a writer and a standby) and compare it with the
        /// single-server path measured in the same run; then time
        /// failovers.
        #[arg(long, value_parser = clap::value_parser!(u8).range(3..=3))]
        cluster: Option<u8>,
        /// Failovers timed on the cluster: kill -9 of the writer to the
        /// first receipt by the standby.
        #[arg(long, default_value_t = 5)]
        failovers: usize,
        /// Also submit as many other envelopes in batch requests of this
        /// many (`Custody-Batch: ndjson`), in the same run, and compare.
        #[arg(long, value_parser = clap::value_parser!(u16).range(2..=1000))]
        batch: Option<u16>,
        /// Instead, measure what the lot map costs: this many rounds, each
        /// a ledger with the map and one without it (a fresh server and
        /// store each), alternating, the same number of envelopes.
        #[arg(long, conflicts_with_all = ["cluster", "batch"])]
        lot_map_cost: Option<usize>,
        /// Instead, measure what actor quotas cost: this many rounds, each
        /// a ledger with quotas (limits far above the bench's rate, so
        /// that every envelope takes a token and none is refused) and one
        /// without, alternating.
        #[arg(long, conflicts_with_all = ["cluster", "batch", "lot_map_cost"])]
        quota_cost: Option<usize>,
    },
    /// What the SHA-256 tree of C2SP checkpoints costs against the blake3
    /// tree it replaced: the same entries appended to each, alternating,
    /// with the per-entry time of each and their ratio.
    Tree {
        /// Entries appended per round.
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
        /// Rounds of each hash, alternating.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Verifying a history's signatures (what a ledger start, a standby
    /// catching up, a recovery and an audit do) on every core, against the
    /// same signatures on one core, alternating in the same run.
    Verify {
        /// Signed envelopes verified per round.
        #[arg(long, default_value_t = 200_000)]
        signatures: usize,
        /// Rounds of each, alternating.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Origin-query latency and rate at several fan-ins, against a bare
    /// request-reply round trip.
    Query {
        /// Mined lots each stone's history fans in from.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,100000")]
        fan_in: Vec<usize>,
        /// Queries per measurement.
        #[arg(long, default_value_t = 4000)]
        queries: usize,
        /// Entries of other lots between the stones made first and those
        /// made last, so that the first are out of the cache.
        #[arg(long, default_value_t = 0)]
        lots: u64,
        /// The projection's cache, in MiB (`custody projection --cache-mb`).
        #[arg(long, default_value_t = 512)]
        cache_mb: usize,
    },
    /// Origin certificates by fan-in: time to make and to check one, and
    /// its size, against reading its entries and checking its signatures.
    Certificate {
        #[arg(long, value_delimiter = ',', default_value = "1,1000,100000")]
        fan_in: Vec<usize>,
        /// Certificates made and checked per fan-in (the median is shown).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// A mine's edge: how long 5,000 events queued offline take to be
    /// receipted once the link returns, against submitting them straight
    /// to the hub in the same batches; and the edge's acknowledgement
    /// latency offline, against a bare round trip to the same server.
    Edge {
        #[arg(long, default_value_t = 5000)]
        events: usize,
    },
    /// A ledger's start on a history of this many entries: opening its
    /// store from the saved write model (chain checked whole, signatures
    /// after the mark), against opening it with every signature verified,
    /// in the same run.
    Start {
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Keep the history in this folder, and reuse it when it is there
        /// (building 10 M entries takes minutes).
        #[arg(long, value_name = "DIR")]
        keep: Option<std::path::PathBuf>,
    },
    /// Projection replay rate, against reading the same stream.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
        /// The projection's cache, in MiB (`custody projection --cache-mb`).
        #[arg(long, default_value_t = 512)]
        cache_mb: usize,
    },
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    a.ops.start(Vec::new(), &[]).await?;
    let (events, producers, window, batch) = match a.what {
        What::Ingest { events, producers, window, cluster: Some(servers), failovers, batch, .. } => {
            return cluster(events, producers, window, usize::from(servers), failovers, batch.map(usize::from)).await;
        }
        What::Ingest { events, producers, window, lot_map_cost: Some(rounds), .. } => {
            return with_and_without("ingest-lot-map-cost", "lot_map", events, producers, window, rounds, |c, on| c.lot_map = on).await;
        }
        What::Ingest { events, producers, window, quota_cost: Some(rounds), .. } => {
            let limits = custody_ledger::quota::Limits { rate: 1e7, burst: 1e9 };
            return with_and_without("ingest-quota-cost", "quota", events, producers, window, rounds, move |c, on| {
                c.quota = on.then(|| custody_ledger::quota::Rates::uniform(limits))
            })
            .await;
        }
        What::Ingest { events, producers, window, cluster: None, batch, .. } => (events, producers, window, batch),
        What::Tree { entries, rounds } => {
            tree_cost(entries, rounds);
            return Ok(ExitCode::SUCCESS);
        }
        What::Verify { signatures, rounds } => {
            verify_cost(signatures, rounds)?;
            return Ok(ExitCode::SUCCESS);
        }
        What::Query { fan_in, queries, lots, cache_mb } => {
            super::bench_read::query(&fan_in, queries, lots, cache_mb).await?;
            return Ok(ExitCode::SUCCESS);
        }
        What::Certificate { fan_in, runs } => {
            super::bench_read::certificate(&fan_in, runs).await?;
            return Ok(ExitCode::SUCCESS);
        }
        What::Edge { events } => {
            super::bench_edge::edge(events).await?;
            return Ok(ExitCode::SUCCESS);
        }
        What::Start { entries, keep } => {
            super::bench_start::start(entries, keep)?;
            return Ok(ExitCode::SUCCESS);
        }
        What::Replay { entries, cache_mb } => {
            super::bench_read::replay(entries, cache_mb).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let tmp = scratch("ingest")?;
    let nats = NatsServer::start(&tmp.path().join("nats"))?;
    let authority = nkeys::KeyPair::new_user();
    let ledger = InProcessLedger::start(&nats.url, tmp.path().join("ledger"), &authority)?;
    let nc = custody::client::connect(&nats.url).await?;

    let signed = world(&nc, &authority, events, producers).await?;
    let total: usize = signed.iter().map(Vec::len).sum();

    let all: Vec<Bytes> = signed.iter().flatten().cloned().collect();
    let raw_rate = atomic_baseline(&nc, 1, &all).await?;

    // The ledger: request-reply, receipts awaited.
    let (rate, p50, p99) = receipted(&nc, signed, 1, window).await?;
    let mut report = json!({
        "bench": "ingest",
        "events": total,
        "producers": producers,
        "window": window,
        "receipted_per_s": rate.round(),
        "receipt_latency_ms": {"p50": p50, "p99": p99},
        "baseline_atomic_batches_per_s": raw_rate.round(),
        "ratio_to_baseline": (rate / raw_rate * 1000.0).round() / 1000.0,
    });
    if let Some(batch) = batch {
        // Other actors and lots, the same number, sent in batch requests.
        let signed = world(&nc, &authority, events, producers).await?;
        let (batched, p50, p99) = receipted(&nc, signed, usize::from(batch), window).await?;
        report["batch"] = json!({
            "envelopes_per_request": batch,
            "receipted_per_s": batched.round(),
            "request_latency_ms": {"p50": p50, "p99": p99},
            "ratio_to_single": (batched / rate * 100.0).round() / 100.0,
        });
    }
    println!("{report}");
    ledger.stop().await?;
    drop(nats);
    Ok(ExitCode::SUCCESS)
}

/// Receipted ingest with the lot map and without it, alternating, each
/// round on a fresh server and store: the ratio is what the map costs.
/// What one setting of the ledger costs: `rounds` rounds, each the same
/// envelopes through a ledger with it on (`set(config, true)`) and one with
/// it off, on a fresh server and store each; the median ratio of their
/// receipted rates.
async fn with_and_without(
    bench: &str,
    label: &str,
    events: usize,
    producers: usize,
    window: usize,
    rounds: usize,
    set: impl Fn(&mut custody_ledger::Config, bool),
) -> anyhow::Result<ExitCode> {
    let mut runs = Vec::new();
    for round in 0..rounds.max(1) {
        let mut pair = Vec::new();
        for on in [true, false] {
            let tmp = scratch(&format!("{label}-{round}-{on}"))?;
            let nats = NatsServer::start(&tmp.path().join("nats"))?;
            let authority = nkeys::KeyPair::new_user();
            let ledger = InProcessLedger::start_configured(&nats.url, tmp.path().join("ledger"), &authority, |c| set(c, on))?;
            let nc = custody::client::connect(&nats.url).await?;
            let signed = world(&nc, &authority, events, producers).await?;
            let (rate, p50, p99) = receipted(&nc, signed, 1, window).await?;
            pair.push(json!({label: on, "receipted_per_s": rate.round(), "receipt_latency_ms": {"p50": p50, "p99": p99}}));
            ledger.stop().await?;
            drop(nats);
        }
        let ratio = pair[0]["receipted_per_s"].as_f64().unwrap_or(0.0) / pair[1]["receipted_per_s"].as_f64().unwrap_or(1.0).max(1.0);
        runs.push(json!({"with": pair[0], "without": pair[1], "ratio_with_to_without": (ratio * 1000.0).round() / 1000.0}));
    }
    let mut ratios: Vec<f64> = runs.iter().filter_map(|r| r["ratio_with_to_without"].as_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    println!("{}", json!({"bench": bench, "events": events, "producers": producers, "window": window, "rounds": runs, "median_ratio": median}));
    Ok(ExitCode::SUCCESS)
}

/// The real ledger, run in this process against a private server; its
/// store in `dir`.
pub(super) struct InProcessLedger {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), custody_ledger::service::LedgerError>>,
}

impl InProcessLedger {
    pub(super) fn start(url: &str, dir: std::path::PathBuf, authority: &nkeys::KeyPair) -> anyhow::Result<InProcessLedger> {
        InProcessLedger::start_configured(url, dir, authority, |_| {})
    }

    /// [`InProcessLedger::start`], its configuration changed by `configure`.
    pub(super) fn start_configured(
        url: &str,
        dir: std::path::PathBuf,
        authority: &nkeys::KeyPair,
        configure: impl FnOnce(&mut custody_ledger::Config),
    ) -> anyhow::Result<InProcessLedger> {
        let mut config = custody_ledger::Config::new(url, dir, authority.public_key().parse().map_err(|e: String| anyhow::anyhow!(e))?);
        configure(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(custody_ledger::run(config, async move {
            let _ = stopped.await;
        }));
        Ok(InProcessLedger { stop, task })
    }

    /// Stops it and waits until it has.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?.context("ledger")?;
        Ok(())
    }
}

/// The baseline of the write path: the same bytes published straight to a
/// scratch stream (on `replicas` servers, of the same nats-servers) as
/// atomic batches of 500, 8 in flight, with no ledger; messages per second.
async fn atomic_baseline(nc: &async_nats::Client, replicas: usize, all: &[Bytes]) -> anyhow::Result<f64> {
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "BENCH_ATOMIC".into(),
        subjects: vec!["bench.atomic".into()],
        allow_atomic_publish: true,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (i, chunk) in all.chunks(500).enumerate() {
        let msgs = chunk.iter().map(|b| (async_nats::HeaderMap::new(), b.clone())).collect();
        acks.push(custody_wire::atomic::send(&js, "bench.atomic", &format!("baseline-{i}"), msgs, None).await);
        if acks.len() >= 8 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    js.delete_stream("BENCH_ATOMIC").await?;
    Ok(rate)
}

/// Registers one miner per producer and signs `events` `mined` envelopes
/// among them, before any clock starts.
async fn world(nc: &async_nats::Client, authority: &nkeys::KeyPair, events: usize, producers: usize) -> anyhow::Result<Vec<Vec<Bytes>>> {
    let miners: Vec<nkeys::KeyPair> = (0..producers).map(|_| nkeys::KeyPair::new_user()).collect();
    world_of(nc, authority, &miners, events, "b").await
}

/// [`world`] for these miners, event ids and lots tagged `tag` (so that
/// one miner may have several worlds; one character: an id holds at most
/// 64).
pub(super) async fn world_of(
    nc: &async_nats::Client,
    authority: &nkeys::KeyPair,
    miners: &[nkeys::KeyPair],
    events: usize,
    tag: &str,
) -> anyhow::Result<Vec<Vec<Bytes>>> {
    for (i, m) in miners.iter().enumerate() {
        let reg = json!({"id": format!("reg-{}", m.public_key()), "kind": "actor.registered", "actor": authority.public_key(),
            "occurred_at": "2024-01-01T00:00:00Z", "subject": m.public_key(), "name": format!("Miner {i}"),
            "roles": ["miner"], "country": "BW"});
        match custody::client::submit(nc, custody_proto::envelope::sign(authority, reg.to_string().as_bytes())?.into()).await? {
            Outcome::Receipt(_) => {}
            Outcome::Rejected(r) => bail!("registration refused: {}", r.message),
        }
    }
    eprintln!("signing {events} envelopes...");
    let per = events / miners.len().max(1);
    miners
        .iter()
        .enumerate()
        .map(|(p, m)| {
            (0..per)
                .map(|i| {
                    let ev = json!({"id": format!("{tag}-{}-{i}", m.public_key()), "kind": "mined", "actor": m.public_key(),
                        "occurred_at": "2024-09-02T00:00:00Z", "lot": format!("{tag}{p}-{i}-{}", &m.public_key()[..8]), "carats": "12.34", "country": "BW"});
                    custody_proto::envelope::sign(m, ev.to_string().as_bytes()).map(Bytes::from).map_err(anyhow::Error::from)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .collect()
}

/// Submits each list from its own producer, every outcome awaited: one
/// envelope per request (`per_request` 1) or batch requests of
/// `per_request`, with as many requests in flight as hold `window`
/// envelopes (at least one). Receipts per second, and request latency p50
/// and p99 in ms.
pub(super) async fn receipted(nc: &async_nats::Client, signed: Vec<Vec<Bytes>>, per_request: usize, window: usize) -> anyhow::Result<(f64, f64, f64)> {
    let total: usize = signed.iter().map(Vec::len).sum();
    let per_request = per_request.max(1);
    let requests = (window / per_request).max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for envelopes in signed {
        let nc = nc.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut inflight = FuturesUnordered::new();
            for chunk in envelopes.chunks(per_request).map(<[Bytes]>::to_vec) {
                if inflight.len() >= requests {
                    if let Some(r) = inflight.next().await {
                        latencies.push(r?);
                    }
                }
                let nc = nc.clone();
                inflight.push(async move {
                    let t = Instant::now();
                    let outcomes = match chunk.as_slice() {
                        [one] if per_request == 1 => vec![custody::client::submit(&nc, one.clone()).await?],
                        _ => custody::client::submit_batch(&nc, &chunk)
                            .await?
                            .into_iter()
                            .map(custody::client::Answer::outcome)
                            .collect::<anyhow::Result<Vec<_>>>()?,
                    };
                    if let Some(Outcome::Rejected(r)) = outcomes.iter().find(|o| matches!(o, Outcome::Rejected(_))) {
                        bail!("refused: {}", r.message);
                    }
                    Ok::<Duration, anyhow::Error>(t.elapsed())
                });
            }
            while let Some(r) = inflight.next().await {
                latencies.push(r?);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(summary(total, start.elapsed(), latencies))
}

/// Items per second over `elapsed`, and the latencies' p50 and p99 in ms.
pub(super) fn summary(total: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> (f64, f64, f64) {
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    (total as f64 / elapsed.as_secs_f64(), pct(0.50), pct(0.99))
}

/// A `custody ledger` child process, killed when dropped.
struct LedgerProcess(std::process::Child);

impl Drop for LedgerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ledger replica `i` of a rig, as its own process (so it can be killed).
fn ledger_process(dir: &std::path::Path, url: &str, authority: &str, replicas: usize, i: usize) -> anyhow::Result<LedgerProcess> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("ledger-{i}.log")))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    custody::natsd::die_with_parent(&mut cmd);
    cmd.args(["ledger", "--nats", url, "--authority", authority, "--replicas", &replicas.to_string(), "--lease-ttl", "2"])
        .args(["--name", &format!("ledger-{i}"), "--data"])
        .arg(dir.join(format!("ledger-{i}")))
        // CUSTODY_BENCH_LEDGER_LOG=debug shows each batch the ledger commits.
        .env("CUSTODY_LOG", std::env::var("CUSTODY_BENCH_LEDGER_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    Ok(LedgerProcess(cmd.spawn().context("cannot start custody ledger")?))
}

/// Servers and ledger processes for one measurement.
struct Rig {
    ledgers: Vec<Option<LedgerProcess>>,
    nats: custody::natsd::NatsCluster,
    authority: nkeys::KeyPair,
    nc: async_nats::Client,
    /// Last: removed after every process that writes in it has stopped.
    scratch: tempfile::TempDir,
}

impl Rig {
    async fn start(name: &str, servers: usize, ledgers: usize) -> anyhow::Result<Rig> {
        let scratch = scratch(name)?;
        let dir = scratch.path();
        let nats = if servers == 1 {
            custody::natsd::NatsCluster { servers: vec![NatsServer::start(&dir.join("nats"))?] }
        } else {
            custody::natsd::NatsCluster::start(servers, dir, None)?
        };
        let authority = nkeys::KeyPair::new_user();
        custody_ledger::notary::key_for_replicas(&(0..ledgers).map(|i| dir.join(format!("ledger-{i}"))).collect::<Vec<_>>())?;
        let ledgers = (0..ledgers).map(|i| ledger_process(dir, &nats.url(), &authority.public_key(), servers, i).map(Some)).collect::<anyhow::Result<_>>()?;
        let nc = custody::client::connect(&nats.url()).await?;
        Ok(Rig { ledgers, nats, authority, nc, scratch })
    }

    /// The replica holding the writer lease.
    async fn writer(&self) -> anyhow::Result<usize> {
        let kv = jetstream::new(self.nc.clone()).get_key_value(custody_ledger::lease::BUCKET).await?;
        let e = kv.entry(custody_ledger::lease::KEY).await?.context("nobody holds the writer lease")?;
        let holder = String::from_utf8_lossy(&e.value).into_owned();
        let name = holder.split('#').next().unwrap_or_default();
        name.strip_prefix("ledger-").and_then(|i| i.parse().ok()).with_context(|| format!("an unknown writer {holder}"))
    }
}

/// `bench ingest --cluster N`: the single-server path and the cluster,
/// measured in the same run; then failovers timed on the cluster. With
/// `batch`, each rig also takes as many other envelopes (other miners,
/// other lots) in batch requests of that many, against the same baseline.
async fn cluster(events: usize, producers: usize, window: usize, servers: usize, failovers: usize, batch: Option<usize>) -> anyhow::Result<ExitCode> {
    let mut figures = Vec::new();
    for (name, n, ledgers) in [("single", 1, 1), ("cluster", servers, 2)] {
        let rig = Rig::start(name, n, ledgers).await?;
        let signed = world(&rig.nc, &rig.authority, events, producers).await?;
        let all: Vec<Bytes> = signed.iter().flatten().cloned().collect();
        let baseline = atomic_baseline(&rig.nc, n, &all).await?;
        let (rate, p50, p99) = receipted(&rig.nc, signed, 1, window).await?;
        eprintln!("{name}: {rate:.0} receipted/s, p50 {p50:.1} ms, p99 {p99:.1} ms; atomic batches alone {baseline:.0}/s");
        let mut figure = json!({"servers": n, "receipted_per_s": rate.round(), "receipt_latency_ms": {"p50": p50, "p99": p99},
            "baseline_atomic_batches_per_s": baseline.round(), "ratio_to_baseline": (rate / baseline * 1000.0).round() / 1000.0});
        if let Some(batch) = batch {
            let signed = world(&rig.nc, &rig.authority, events, producers).await?;
            let (batched, p50, p99) = receipted(&rig.nc, signed, batch, window).await?;
            eprintln!("{name}, batches of {batch}: {batched:.0} receipted/s, request p50 {p50:.1} ms, p99 {p99:.1} ms");
            figure["batch"] = json!({"envelopes_per_request": batch, "requests_in_flight_per_producer": (window / batch).max(1),
                "receipted_per_s": batched.round(), "request_latency_ms": {"p50": p50, "p99": p99},
                "ratio_to_baseline": (batched / baseline * 1000.0).round() / 1000.0});
        }
        figures.push(figure);
    }
    let ratio = figures[1]["receipted_per_s"].as_f64().unwrap_or(0.0) / figures[0]["receipted_per_s"].as_f64().unwrap_or(1.0);

    // Failover: a steady load, the writer killed, the first receipt after.
    let mut rig = Rig::start("failover", servers, 2).await?;
    let mut times = Vec::new();
    for run in 0..failovers {
        let signed = world(&rig.nc, &rig.authority, 4000, 4).await?;
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut load = Vec::new();
        for envelopes in signed {
            let (nc, done) = (rig.nc.clone(), done.clone());
            load.push(tokio::spawn(async move {
                for env in envelopes {
                    let subject = custody_wire::subjects::submit(&custody::client::signer(&env));
                    custody::client::submit_patiently(&nc, subject, env, Duration::from_millis(500)).await?;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        while done.load(std::sync::atomic::Ordering::Relaxed) < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let writer = rig.writer().await?;
        rig.ledgers[writer] = None;
        let killed = Instant::now();
        let before = done.load(std::sync::atomic::Ordering::Relaxed);
        while done.load(std::sync::atomic::Ordering::Relaxed) <= before {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = killed.elapsed().as_secs_f64();
        eprintln!("failover {}: {took:.2} s", run + 1);
        times.push(took);
        for l in load {
            l.await??;
        }
        // The killed replica comes back as the standby.
        rig.ledgers[writer] = Some(ledger_process(rig.scratch.path(), &rig.nats.url(), &rig.authority.public_key(), servers, writer)?);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "ingest --cluster",
            "events": events,
            "producers": producers,
            "window": window,
            "single_server": figures[0],
            "cluster": figures[1],
            "ratio_cluster_to_single": (ratio * 1000.0).round() / 1000.0,
            "failover_s": {"runs": times.len(), "median": times.get(times.len() / 2), "worst": times.last()},
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// A bench's scratch folder under the system's temporary folder, removed
/// when dropped: when the bench ends, and on every error path too (an
/// interrupted 10 M replay left 9 GB behind before).
pub(super) fn scratch(name: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(&format!("custody-bench-{name}-")).tempdir()?)
}

/// Appends `entries` hashes to a blake3 tree and to a SHA-256 tree,
/// `rounds` times each, alternating, and prints the medians and their
/// ratio (blake3 time / SHA-256 time: below 1, SHA-256 is slower).
fn verify_cost(signatures: usize, rounds: usize) -> anyhow::Result<()> {
    use custody_proto::Opened;
    let signers: Vec<nkeys::KeyPair> = (0..16).map(|_| nkeys::KeyPair::new_user()).collect();
    let items: Vec<Opened> = (0..signatures)
        .map(|i| {
            let key = &signers[i % signers.len()];
            let event = serde_json::json!({"id": format!("v-{i}"), "kind": "mined", "actor": key.public_key(), "occurred_at": "2026-11-30T00:00:00Z", "lot": format!("V-{i}"), "carats": "1.25", "country": "BW"});
            Ok(Opened::open(custody_proto::envelope::sign(key, event.to_string().as_bytes())?)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds.max(1) {
        for (k, threads) in [1, cores].into_iter().enumerate() {
            let started = std::time::Instant::now();
            let ok = Opened::verify_all_on(&items, threads).iter().all(Result::is_ok);
            times[k].push(started.elapsed().as_secs_f64());
            anyhow::ensure!(ok, "a signature did not verify");
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (one, all) = (median(&mut times[0]), median(&mut times[1]));
    let per = |t: f64| (t * 1e7 / signatures as f64).round() / 10.0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "verify", "signatures": signatures, "rounds": rounds, "cores": cores,
            "one_core_us_per_signature": per(one), "every_core_us_per_signature": per(all),
            "speedup_over_one_core": (one / all * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

fn tree_cost(entries: usize, rounds: usize) {
    use custody_proto::merkle::{Tree, TreeHash};
    let hashes: Vec<custody_proto::Hash> = (0..entries as u64).map(|i| custody_proto::Hash(*blake3::hash(&i.to_be_bytes()).as_bytes())).collect();
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds.max(1) {
        for (k, hash) in [TreeHash::Blake3, TreeHash::Sha256].into_iter().enumerate() {
            let started = std::time::Instant::now();
            let mut t = Tree::with_hash(hash);
            hashes.iter().for_each(|h| t.push(h));
            std::hint::black_box(t.root());
            times[k].push(started.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, s) = (median(&mut times[0]), median(&mut times[1]));
    let per = |t: f64| t * 1e9 / entries as f64;
    println!(
        "{}",
        serde_json::json!({
            "entries": entries,
            "rounds": rounds,
            "blake3_ns_per_entry": (per(b) * 10.0).round() / 10.0,
            "sha256_ns_per_entry": (per(s) * 10.0).round() / 10.0,
            "ratio_blake3_over_sha256": (b / s * 1000.0).round() / 1000.0,
        })
    );
}
