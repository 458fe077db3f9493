//! Read-side benchmarks: origin-query latency at several fan-ins, and the
//! projection's replay rate. Each builds a valid signed, hash-chained history
//! and publishes it straight onto a private committed stream (the ledger's
//! own cost is `bench ingest`), then measures against a same-run baseline.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use custody::natsd::NatsServer;
use custody_proto::{Entry, Hash, Timestamp};
use custody_wire::subjects;
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// A history under construction: signed entries, chained.
struct Chain {
    entries: Vec<Entry>,
    head: Option<(u64, Hash)>,
    n: u64,
}

impl Chain {
    fn new() -> Chain {
        Chain { entries: Vec::new(), head: None, n: 0 }
    }

    fn push(&mut self, key: &KeyPair, kind: &str, fields: Value) -> anyhow::Result<()> {
        self.n += 1;
        let mut e = json!({"id": format!("e{}", self.n), "kind": kind, "actor": key.public_key(), "occurred_at": "2024-09-02T08:00:00Z"});
        if let (Some(o), Value::Object(f)) = (e.as_object_mut(), fields) {
            o.extend(f);
        }
        let env = custody_proto::envelope::sign(key, e.to_string().as_bytes())?;
        let entry = Entry::next(self.head, Timestamp::now(), env);
        self.head = Some((entry.seq, entry.hash));
        self.entries.push(entry);
        Ok(())
    }

    fn register(&mut self, authority: &KeyPair, who: &KeyPair, role: &str, country: &str) -> anyhow::Result<()> {
        self.push(authority, "actor.registered", json!({"subject": who.public_key(), "name": role, "roles": [role], "country": country}))
    }
}

/// A private nats-server and its committed stream, filled with `chain`.
async fn stream_of(dir: &std::path::Path, chain: &Chain) -> anyhow::Result<(NatsServer, async_nats::Client)> {
    let nats = NatsServer::start(&dir.join("nats"))?;
    let client = custody::client::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());
    custody_ledger::commit::committed_stream(&js, 1).await?;
    custody_ledger::commit::send_all(&js, &chain.entries).await?;
    Ok((nats, client))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Sequential latency and concurrent rate of one request.
async fn measure(client: &async_nats::Client, subject: &str, body: &Value, n: usize) -> anyhow::Result<Value> {
    let payload: bytes::Bytes = body.to_string().into();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.request(subject.to_owned(), payload.clone()).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, s, p) = (client.clone(), subject.to_owned(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 8 {
                c.request(s.clone(), p.clone()).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let qps = (n / 8 * 8) as f64 / t.elapsed().as_secs_f64();
    Ok(json!({"p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "queries_per_s": qps.round()}))
}

/// Stones whose histories fan in from `fan_ins` mined lots each (see
/// [`stones`]). Returns the chain and its genesis authority.
fn fan_in_chain(fan_ins: &[usize]) -> anyhow::Result<(Chain, KeyPair)> {
    let authority = KeyPair::new_user();
    let mut chain = Chain::new();
    eprintln!("building histories for fan-ins {fan_ins:?}...");
    stones(&mut chain, &authority, fan_ins, "")?;
    Ok((chain, authority))
}

/// Appends to `chain` stones whose histories fan in from `fan_ins` mined
/// lots each: mined, merged a thousand at a time (then the merges),
/// shipped to India, cut into `<prefix>STONE-<fan-in>`.
fn stones(chain: &mut Chain, authority: &KeyPair, fan_ins: &[usize], prefix: &str) -> anyhow::Result<()> {
    let (miner, cutter) = (KeyPair::new_user(), KeyPair::new_user());
    chain.register(authority, &miner, "miner", "RU")?;
    chain.register(authority, &cutter, "manufacturer", "IN")?;
    for &f in fan_ins {
        for i in 0..f {
            chain.push(&miner, "mined", json!({"lot": format!("{prefix}F{f}-{i}"), "carats": "1.00", "country": "RU"}))?;
        }
        let mut level: Vec<(String, u64)> = (0..f).map(|i| (format!("{prefix}F{f}-{i}"), 100)).collect();
        let mut round = 0;
        while level.len() > 1 {
            let mut next = Vec::new();
            for (g, group) in level.chunks(1000).enumerate() {
                if group.len() == 1 {
                    next.push(group[0].clone());
                    continue;
                }
                let total: u64 = group.iter().map(|x| x.1).sum();
                let into = format!("{prefix}F{f}-m{round}-{g}");
                let lots: Vec<&str> = group.iter().map(|x| x.0.as_str()).collect();
                chain.push(&miner, "merged", json!({"lots": lots, "into": {"lot": into, "carats": custody_proto::units::show_hundredths(total)}}))?;
                next.push((into, total));
            }
            level = next;
            round += 1;
        }
        let (top, _) = &level[0];
        chain.push(
            &miner,
            "exported",
            json!({"lots": [top], "to": cutter.public_key(), "to_country": "IN", "certificate": {"number": format!("RU-{prefix}F{f}"), "value_usd": "1.00"}}),
        )?;
        chain.push(&cutter, "imported", json!({"certificate": format!("RU-{prefix}F{f}")}))?;
        chain.push(
            &cutter,
            "processed",
            json!({"lot": top, "process": "cutting_polishing", "country": "IN", "into": [{"lot": format!("{prefix}STONE-{f}"), "carats": "0.50"}]}),
        )?;
    }
    Ok(())
}

/// Appends to the stream what `chain` holds, then filler up to `until`
/// entries in all, 100,000 at a time (so that ten million fit in memory):
/// mostly lots `<prefix>-<i>` mined by `miners` (registered on the chain
/// before), and every 100th entry a merge of ten of them.
async fn fill(js: &jetstream::Context, chain: &mut Chain, miners: &[KeyPair], prefix: &str, until: u64) -> anyhow::Result<()> {
    let mut i = 0;
    let mut pending: Vec<Vec<String>> = vec![Vec::new(); miners.len()];
    while chain.n < until {
        let m = i % miners.len();
        if pending[m].len() == 10 {
            let lots = std::mem::take(&mut pending[m]);
            chain.push(&miners[m], "merged", json!({"lots": lots, "into": {"lot": format!("{prefix}-m{i}"), "carats": "12.50"}}))?;
        } else {
            let lot = format!("{prefix}-{i}");
            chain.push(&miners[m], "mined", json!({"lot": lot, "carats": "1.25", "country": "BW"}))?;
            pending[m].push(lot);
        }
        i += 1;
        if chain.entries.len() >= 100_000 {
            custody_ledger::commit::send_all(js, &chain.entries).await?;
            chain.entries.clear();
        }
    }
    custody_ledger::commit::send_all(js, &chain.entries).await?;
    chain.entries.clear();
    Ok(())
}

/// Eight miners of Botswana, registered on `chain`.
fn filler_miners(chain: &mut Chain, authority: &KeyPair) -> anyhow::Result<Vec<KeyPair>> {
    let miners: Vec<KeyPair> = (0..8).map(|_| KeyPair::new_user()).collect();
    for m in &miners {
        chain.register(authority, m, "miner", "BW")?;
    }
    Ok(miners)
}

/// A projection over the private stream, caught up to `end`; stopped by
/// sending on the returned channel.
async fn projection_on(
    nats: &NatsServer,
    client: &async_nats::Client,
    dir: &std::path::Path,
    end: u64,
    cache_mb: usize,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), custody_projection::service::ProjectionError>>)> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut config = custody_projection::Config::new(nats.url.clone(), dir.join("projection"), None);
    config.cache_mb = cache_mb;
    let projection = tokio::spawn(custody_projection::run(config, async move {
        let _ = stop_rx.await;
    }));
    // Its status says how far it has applied, at no cost to it (a digest
    // would read the whole state).
    let status = format!("{}.projection", subjects::STATUS_PREFIX);
    loop {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), client.request(status.clone(), "".into())).await {
            let v: Value = serde_json::from_slice(&m.payload)?;
            if v["head"].as_u64() == Some(end) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((stop_tx, projection))
}

/// Origin-query latency for stones whose history fans in from `fan_ins`
/// mined lots, with `lots` more entries of mined lots between the stones
/// made first (`OLD-STONE-<fan-in>`: long out of the projection's cache
/// of `cache_mb`, so every answer reads the store) and the stones made
/// last (`STONE-<fan-in>`: in the cache); and for lots of that filler
/// taken at random (each asked once, so none from the cache).
pub async fn query(fan_ins: &[usize], n: usize, lots: u64, cache_mb: usize) -> anyhow::Result<()> {
    let authority = KeyPair::new_user();
    let mut chain = Chain::new();
    eprintln!("building histories for fan-ins {fan_ins:?}, then {lots} entries of other lots, then the histories again...");
    stones(&mut chain, &authority, fan_ins, "OLD-")?;
    let miners = filler_miners(&mut chain, &authority)?;
    let scratch = super::bench::scratch("read")?;
    let dir = scratch.path();
    let (nats, client) = stream_of(dir, &Chain::new()).await?;
    let js = jetstream::new(client.clone());
    let filler_from = chain.n + 1;
    let until = chain.n + lots;
    fill(&js, &mut chain, &miners, "R", until).await?;
    stones(&mut chain, &authority, fan_ins, "")?;
    custody_ledger::commit::send_all(&js, &chain.entries).await?;
    chain.entries.clear();
    let end = chain.n;
    eprintln!("{end} entries; the projection catches up...");
    let (stop_tx, projection) = projection_on(&nats, &client, dir, end, cache_mb).await?;

    // Baseline: a bare request-reply round trip on the same server.
    let mut echo = client.subscribe("bench.echo").await?;
    let echo_client = client.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(r) = m.reply {
                let _ = echo_client.publish(r, m.payload).await;
            }
        }
    });
    let baseline = measure(&client, "bench.echo", &json!({"lot": "STONE-1"}), n).await?;
    let p99_ratio = |m: &Value| (m["p99_ms"].as_f64().unwrap_or(0.0) / baseline["p99_ms"].as_f64().unwrap_or(1.0) * 100.0).round() / 100.0;
    let mut rows = Vec::new();
    for &f in fan_ins {
        let mut row = json!({"fan_in": f});
        for (place, prefix) in [("in_cache", ""), ("on_disk", "OLD-")] {
            let body = json!({"lot": format!("{prefix}STONE-{f}")});
            let check = client.request(subjects::QUERY_ORIGIN, body.to_string().into()).await?;
            let answer: Value = serde_json::from_slice(&check.payload)?;
            anyhow::ensure!(answer["mine_origin"][0]["country"] == "RU", "unexpected answer {answer}");
            let m = measure(&client, subjects::QUERY_ORIGIN, &body, n).await?;
            row[place] = json!({"origin": m, "p99_over_baseline": p99_ratio(&m)});
        }
        rows.push(row);
    }
    // Lots of the filler, each asked once: from the store, not the cache.
    let mut random = None;
    if lots > 0 {
        let mut lat = Vec::with_capacity(n);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Filler entry i is the lot R-<i> unless it is a merge: each
            // miner's every 11th turn (miners take turns, eight of them).
            let mut i = x % lots;
            if (i / 8) % 11 == 10 {
                i -= 8;
            }
            let body = json!({"lot": format!("R-{i}")});
            let t = Instant::now();
            let reply = client.request(subjects::QUERY_ORIGIN, body.to_string().into()).await?;
            lat.push(t.elapsed());
            let answer: Value = serde_json::from_slice(&reply.payload)?;
            anyhow::ensure!(answer["mine_origin"][0]["country"] == "BW", "R-{i}: unexpected answer {answer}");
        }
        lat.sort();
        random = Some(json!({"p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "first_filler_seq": filler_from}));
    }
    let peak_mb = custody::ops::resident_kb("VmHWM").map(|k| k / 1024);
    println!(
        "{}",
        json!({"bench": "query", "entries": end, "filler_entries": lots, "cache_mb": cache_mb, "baseline_request_reply": baseline, "results": rows,
            "random_filler_lots": random, "peak_resident_mb": peak_mb})
    );
    let _ = stop_tx.send(());
    projection.await?.context("projection")?;
    drop(nats);
    Ok(())
}

/// Origin certificates for stones of each fan-in: time to make one (over
/// NATS, as `custody certify` does) against reading its entries off the
/// stream, time to check one offline against verifying its signatures
/// alone, and its size. The real ledger (its proof service) runs over the
/// private stream.
pub async fn certificate(fan_ins: &[usize], runs: usize) -> anyhow::Result<()> {
    let (chain, authority) = fan_in_chain(fan_ins)?;
    let scratch = super::bench::scratch("read")?;
    let dir = scratch.path();
    let (nats, client) = stream_of(dir, &chain).await?;
    let end = chain.entries.len() as u64;
    let ledger_dir = dir.join("ledger");
    let key = custody_ledger::notary::load_or_create_key(&ledger_dir)?.public_key();
    let ledger = super::bench::InProcessLedger::start(&nats.url, ledger_dir, &authority)?;
    eprintln!("the ledger catches up on {end} entries (verifying each), and a projection...");
    loop {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), client.request(subjects::HEAD_SUBJECT, "".into())).await {
            if serde_json::from_slice::<Value>(&m.payload)?["seq"].as_u64() == Some(end) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stop_tx, projection) = projection_on(&nats, &client, dir, end, 512).await?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for &f in fan_ins {
        let query = custody_wire::query::CertificateQuery { lot: format!("STONE-{f}"), rules: vec!["us-2024".into()], date: "2024-11-15".into() };
        let (mut make, mut read, mut check, mut sigs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut size = 0;
        let mut entries = 0;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let cert = custody_wire::certify::certify(&client, &query).await?;
            make.push(t.elapsed().as_secs_f64() * 1e3);
            // Baseline of making: reading the same entries off the stream.
            let seqs: Vec<u64> = cert.entries.iter().map(|e| e.seq).collect();
            let t = Instant::now();
            let reader = custody_wire::follow::Reader::ledger(&client);
            for (a, b) in custody_proto::certificate::ranges(&seqs) {
                let mut msgs = std::pin::pin!(reader.range(a, b));
                while let Some(m) = msgs.next().await {
                    m?;
                }
            }
            read.push(t.elapsed().as_secs_f64() * 1e3);
            let bytes = serde_json::to_vec(&cert)?;
            if let Some(keep) = std::env::var_os("CUSTODY_BENCH_KEEP") {
                std::fs::write(std::path::Path::new(&keep).join(format!("certificate-{f}.json")), &bytes)?;
            }
            size = bytes.len();
            entries = cert.entries.len();
            let t = Instant::now();
            let parsed: custody_proto::certificate::OriginCertificate = serde_json::from_slice(&bytes)?;
            let report = tokio::task::block_in_place(|| custody_projection::certificate::verify(&parsed, &key, &[]));
            check.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(report.valid, "the certificate of STONE-{f} does not verify: {:?}", report.findings);
            // Baseline of checking: the envelopes' signatures alone.
            let opened: Vec<custody_proto::Opened> =
                parsed.entries.iter().map(|e| custody_proto::Opened::open(e.envelope.as_bytes().to_vec())).collect::<Result<_, _>>()?;
            let t = Instant::now();
            let ok = custody_proto::Opened::verify_all(&opened).iter().all(Result::is_ok);
            sigs.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(ok, "signatures");
        }
        let (make, read, check, sigs) = (median(make), median(read), median(check), median(sigs));
        let r2 = |x: f64| (x * 100.0).round() / 100.0;
        rows.push(json!({
            "fan_in": f, "entries": entries, "bytes": size, "bytes_per_entry": size / entries.max(1),
            "make_ms": r2(make), "baseline_read_entries_ms": r2(read), "make_over_read": r2(make / read),
            "verify_ms": r2(check), "baseline_signatures_ms": r2(sigs), "verify_over_signatures": r2(check / sigs),
        }));
    }
    println!("{}", json!({"bench": "certificate", "ledger_entries": end, "runs": runs, "results": rows}));
    let _ = stop_tx.send(());
    projection.await?.context("projection")?;
    ledger.stop().await?;
    drop(nats);
    Ok(())
}

/// Replay rate of the projection over a ledger of `entries` entries.
pub async fn replay(entries: usize, cache_mb: usize) -> anyhow::Result<()> {
    let authority = KeyPair::new_user();
    let mut chain = Chain::new();
    let miners = filler_miners(&mut chain, &authority)?;
    eprintln!("building a {entries}-entry ledger...");
    let scratch = super::bench::scratch("read")?;
    let dir = scratch.path();
    let (nats, client) = stream_of(dir, &Chain::new()).await?;
    let js = jetstream::new(client.clone());
    fill(&js, &mut chain, &miners, "R", entries as u64).await?;
    let total = chain.n;
    drop(chain);

    // The ledger's part of a follower's read: making its pull consumer.
    let followers = tokio::spawn(custody_ledger::service::serve_followers(client.clone(), js.clone()));
    // Baselines: reading the same stream, applying nothing, as the
    // projection reads it (through its consumer), and by direct get.
    let read_all = |reader: custody_wire::follow::Reader| async move {
        let t = Instant::now();
        let mut messages = std::pin::pin!(reader.range(1, total));
        let mut read = 0;
        while let Some(msg) = messages.next().await {
            msg?;
            read += 1;
        }
        anyhow::Ok(read as f64 / t.elapsed().as_secs_f64())
    };
    let direct_get = read_all(custody_wire::follow::Reader::ledger(&client)).await?;
    let baseline = read_all(custody_wire::follow::Reader::ledger(&client).pulling()).await?;

    let mut config = custody_projection::Config::new(nats.url.clone(), dir.join("projection"), None);
    config.cache_mb = cache_mb;
    let budget = config.budget();
    let resident_before = custody::ops::resident_kb("VmRSS");
    let cpu_before = custody::ops::cpu_seconds();
    let t = Instant::now();
    let (store, mut state) = custody_projection::service::replay(config).await?;
    let elapsed = t.elapsed().as_secs_f64();
    // This process's CPU over the replay (the projection, and the ledger's
    // part of the follow; not nats-server's), per entry.
    let cpu_us = custody::ops::cpu_seconds().zip(cpu_before).map(|(a, b)| ((a - b) * 1e6 / total.max(1) as f64 * 10.0).round() / 10.0);
    let seq = state.checkpoint.map_or(0, |c| c.0);
    let rate = seq as f64 / elapsed;
    // What the replayed state holds resident (the process's growth): the
    // cache, whatever the number of lots.
    let resident_after = custody::ops::resident_kb("VmRSS");
    let lots = state.lots.len().max(1) as u64;
    let growth_mb = resident_after.zip(resident_before).map(|(a, b)| a.saturating_sub(b) / 1024);
    // The checkpoint a rebuild ends with, apart.
    let t = Instant::now();
    let written = tokio::task::block_in_place(|| store.save(&state))?;
    state.saved(&written);
    let checkpoint_s = t.elapsed().as_secs_f64();
    let disk_bytes = store.disk_space()?;
    let peak_mb = custody::ops::resident_kb("VmHWM").map(|k| k / 1024);
    // A projection's start from its store (what `custody projection` does
    // before it follows the stream): the store closed and opened again,
    // and the state it gives must have the replayed state's digest.
    let digest = tokio::task::block_in_place(|| custody_projection::service::digest(&state));
    drop(state);
    drop(store);
    let t = Instant::now();
    let loaded = tokio::task::block_in_place(|| custody_projection::store::Store::open(&dir.join("projection"), budget)?.load())?;
    let load_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(loaded.checkpoint.map(|c| c.0) == Some(seq), "the store opened at {:?}, not at {seq}", loaded.checkpoint);
    anyhow::ensure!(
        tokio::task::block_in_place(|| custody_projection::service::digest(&loaded)) == digest,
        "the store opened to another state than the one replayed"
    );
    drop(loaded);
    followers.abort();
    println!(
        "{}",
        json!({"bench": "replay", "entries": seq, "lots": lots, "cache_mb": cache_mb, "replayed_per_s": rate.round(), "baseline_stream_read_per_s": baseline.round(),
            "ratio_to_baseline": (rate / baseline * 1000.0).round() / 1000.0, "cpu_us_per_entry": cpu_us,
            "direct_get_read_per_s": direct_get.round(), "ratio_to_direct_get": (rate / direct_get * 1000.0).round() / 1000.0,
            "resident_growth_mb": growth_mb, "peak_resident_mb": peak_mb,
            "checkpoint_s": (checkpoint_s * 100.0).round() / 100.0, "disk_bytes_per_lot": disk_bytes / lots,
            "start_from_store_s": (load_s * 1000.0).round() / 1000.0})
    );
    drop(nats);
    Ok(())
}
