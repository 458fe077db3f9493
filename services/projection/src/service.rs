//! The projection on NATS: follows the committed stream from its store's
//! checkpoint, applies entries strictly in order (halting at a gap or a
//! broken link), writes a checkpoint of what changed now and then
//! ([`crate::store`]; "snapshot" in flag and metric names), and answers
//! queries in a queue group so that replicas share the load. Queries never
//! wait for catch-up: the applier holds the state's lock for a few dozen
//! entries at a time, never across I/O, and every answer says which seq it
//! reflects (`as_of_seq`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use custody_wire::follow::{FollowError, Reader};
use custody_wire::health::Health;
use custody_wire::query::{ActorQuery, AdmissibilityQuery, AnswerCode, CertificateQuery, LotQuery, LotsQuery, SearchQuery, VerifyCertificateQuery};
use custody_wire::subjects;
use futures::{FutureExt as _, StreamExt};
use serde_json::{json, Value};

use crate::rules::RuleSet;
use crate::store::{Checkpoint, Records, Store, StoreError};
use crate::view::{self, ApplyError, State};

/// Entries applied under one hold of the state's write lock: a query waits
/// for at most this many applies (about 10 µs each), never for I/O.
const SLICE: usize = 64;
/// Batches of the stream decoded and linked ahead of the applier, by a
/// task of their own (on the other core).
const DECODED_AHEAD: usize = 8;
/// Most lots a genealogy answer lists on each side.
const MAX_GENEALOGY: usize = 10_000;
/// Largest rule set sent inline in a query: the presets are under 2 KB, a
/// regulator's own file a few KB.
pub const MAX_INLINE_RULES: usize = 64 * 1024;

/// Why the projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("cannot open the projection store {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connect(#[from] custody_wire::connect::ConnectError),
    #[error("cannot read the committed stream: {0}")]
    Read(#[from] custody_wire::follow::ReadError),
    #[error("cannot answer queries: {0}")]
    Serve(String),
    /// The committed stream does not give a linked history: halting rather
    /// than answer from a wrong one.
    #[error("halting: the committed stream breaks the chain at entry {seq}: {why}")]
    Broken { seq: u64, why: String },
    #[error("halting: the committed stream breaks the chain: {0}")]
    Apply(#[from] ApplyError),
    #[error("a projection task ended unexpectedly")]
    Ended,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// NATS server URL.
    pub nats_url: String,
    /// Folder of the projection's own store.
    pub data_dir: PathBuf,
    /// Its NATS identity (an nkey seed), when the server checks one.
    pub nkey: Option<String>,
    /// A snapshot is written after this many entries were applied since
    /// the last one...
    pub snapshot_every: u64,
    /// ...or this long after the last one, if any entry was applied since;
    /// and at the end of a rebuild.
    pub snapshot_interval: Duration,
    /// How it says how it is (`custody status`, `/readyz`): ready once it
    /// has caught up with the committed stream. Its name labels the
    /// projection's metrics.
    pub health: Health,
    /// Memory for the state's cache, in MiB: what the projection holds
    /// resident, whatever the length of the history.
    pub cache_mb: usize,
}

impl Config {
    /// A projection of the stream at `nats_url` kept in `data_dir`: a
    /// snapshot every 1,000,000 entries or 60 seconds.
    pub fn new(nats_url: impl Into<String>, data_dir: PathBuf, nkey: Option<String>) -> Config {
        let health = Health::new("projection", &data_dir.display().to_string());
        Config { nats_url: nats_url.into(), data_dir, nkey, snapshot_every: 1_000_000, snapshot_interval: Duration::from_secs(60), health, cache_mb: 512 }
    }

    pub fn budget(&self) -> crate::store::Budget {
        crate::store::Budget { cache_mb: self.cache_mb }
    }
}

/// When the follower writes a snapshot.
#[derive(Debug, Clone, Copy)]
struct Cadence {
    every: u64,
    interval: Duration,
}

impl From<&Config> for Cadence {
    fn from(c: &Config) -> Cadence {
        Cadence { every: c.snapshot_every.max(1), interval: c.snapshot_interval }
    }
}

type Shared = Arc<RwLock<State>>;

/// Runs until `shutdown`, or until the stream shows a gap or a broken chain.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
    let store = Store::open(&config.data_dir, config.budget()).map_err(|source| ProjectionError::Open { dir: config.data_dir.clone(), source })?;
    let store = Arc::new(store);
    let state = store.load()?;
    tracing::info!(checkpoint = ?state.checkpoint.map(|c| c.0), lots = state.lots.len(), "projection store opened; following the stream from its checkpoint");
    let state: Shared = Arc::new(RwLock::new(state));
    let client = custody_wire::connect::connect(&config.nats_url, "custody-projection", config.nkey.as_deref()).await?;

    // The stream is read on a connection of its own: a query must not wait
    // in line behind thousands of entries on their way in.
    let reading = custody_wire::connect::connect(&config.nats_url, "custody-projection-reader", config.nkey.as_deref()).await?;

    let health = config.health.clone();
    let meters = Meters::new(&health);
    health.update(|s| s.role = "following".into());
    meters.applied(state.read().checkpoint.map_or(0, |c| c.0));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve(client.clone(), state.clone(), meters.clone()));
    tasks.spawn(follow_stream(Reader::ledger(&reading).pulling(), store.clone(), state.clone(), None, Cadence::from(&config), meters.clone()));
    let lag = meters.lag.clone();
    tasks.spawn(custody_wire::health::watch_lag(Reader::ledger(&reading), health.clone(), move |n| lag.set(n as f64)).map(|()| Ok(())));
    tasks.spawn(async move { custody_wire::health::answer_status(client, health).await.map_err(|e| ProjectionError::Serve(e.to_string())) });
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(r) => r.and(Err(ProjectionError::Ended)),
            Err(_) => Err(ProjectionError::Ended),
        },
    };
    tasks.shutdown().await;
    if result.is_ok() {
        // A clean stop: what is applied is saved, so the next start
        // replays nothing it had.
        let took = snapshot(&store, &state)?;
        tracing::info!(ms = took.as_millis() as u64, "stopped; the next start begins from this checkpoint");
    }
    result
}

/// Replays the committed stream from seq 1 into an emptied store, up to the
/// stream's current end, writes its checkpoint, and returns the final
/// `(seq, digest)`.
pub async fn rebuild(config: Config) -> Result<(u64, String), ProjectionError> {
    let (store, state) = replay(config).await?;
    let state: Shared = Arc::new(RwLock::new(state));
    snapshot(&store, &state)?;
    let state = state.read();
    Ok((state.checkpoint.map_or(0, |c| c.0), digest(&state)))
}

/// [`rebuild`] without the last checkpoint and the digest: the replayed
/// state, on its store (checkpoints along the way as the config and the
/// cache say).
pub async fn replay(config: Config) -> Result<(Arc<Store>, State), ProjectionError> {
    let store = Arc::new(Store::open_empty(&config.data_dir, config.budget())?);
    let client = custody_wire::connect::connect(&config.nats_url, "custody-projection-replay", config.nkey.as_deref()).await?;
    let reader = Reader::ledger(&client).pulling();
    let end = reader.last_seq().await?;
    let state: Shared = Arc::new(RwLock::new(store.load()?));
    follow_stream(reader, store.clone(), state.clone(), Some(end), Cadence::from(&config), Meters::new(&config.health)).await?;
    // The follower is done with it: no copy of a state of millions of lots.
    match Arc::try_unwrap(state) {
        Ok(lock) => Ok((store, lock.into_inner())),
        Err(_) => Err(ProjectionError::Ended),
    }
}

/// A digest of the whole state: equal states, equal digests.
pub fn digest(state: &State) -> String {
    digest_of(state.checkpoint, state.lots.iter(), &state.actors, &state.shipments, &state.yields)
}

/// [`digest`] over the state's parts: its lots in key order.
fn digest_of<'a>(
    checkpoint: Option<(u64, custody_proto::Hash)>,
    lots: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, view::Lot>)>,
    actors: &std::collections::BTreeMap<String, view::Actor>,
    shipments: &std::collections::BTreeMap<String, view::Shipment>,
    yields: &std::collections::BTreeMap<String, view::Yields>,
) -> String {
    let mut h = blake3::Hasher::new_derive_key("custody 2026-11 projection state v1");
    let mut add = |tag: &str, key: &str, v: Vec<u8>| {
        h.update(tag.as_bytes());
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(&v);
    };
    if let Some((seq, hash)) = checkpoint {
        add("m", &seq.to_string(), hash.0.to_vec());
    }
    for (k, v) in lots {
        add("l", &k, serde_json::to_vec(&*v).unwrap_or_default());
    }
    for (k, v) in actors {
        add("a", k, serde_json::to_vec(v).unwrap_or_default());
    }
    for (k, v) in shipments {
        add("s", k, serde_json::to_vec(v).unwrap_or_default());
    }
    for (k, v) in yields {
        add("y", k, serde_json::to_vec(v).unwrap_or_default());
    }
    h.finalize().to_hex().to_string()
}

/// The digest query, without holding the state's lock while it reads the
/// whole state (ten million lots from disk take a minute, which the
/// follower must not wait for, whoever asks): the state is frozen under
/// the lock ([`crate::store::Table::freeze`]), then read.
fn digest_answer(state: &Shared) -> Value {
    let (checkpoint, lots, actors, shipments, yields) = {
        let s = state.read();
        (s.checkpoint, s.lots.freeze(), s.actors.clone(), s.shipments.clone(), s.yields.clone())
    };
    let digest = digest_of(checkpoint, lots.iter(), &actors, &shipments, &yields);
    match lots.failure() {
        Some(why) => error(AnswerCode::Unavailable, format!("the projection cannot read its store: {why}")),
        None => json!({"seq": checkpoint.map_or(0, |c| c.0), "digest": digest}),
    }
}

/// Applies `entries` in order, [`SLICE`] at a time under the write lock;
/// returns the last seq applied. Halts if the store could not be read.
fn apply_all(state: &Shared, entries: &[custody_proto::Linked]) -> Result<u64, ProjectionError> {
    let mut last = 0;
    for slice in entries.chunks(SLICE) {
        let mut s = state.write();
        for entry in slice {
            s.apply_linked(entry)?;
            last = entry.seq;
            custody_wire::crashpoint::reached("projection.apply");
        }
        if let Some(why) = s.failure() {
            return Err(StoreError::Read(why.to_owned()).into());
        }
        // Hands the lock to the queries waiting for it, if any, before
        // taking it again for the next slice: a writer that took it back
        // at once would keep them waiting for the whole batch.
        parking_lot::RwLockWriteGuard::unlock_fair(s);
    }
    Ok(last)
}

/// Writes a checkpoint of the shared state (the records changed since the
/// last one), taken under a read lock and written without it; returns
/// how long it took. For a follower that has stopped: one that runs
/// writes its own while it applies ([`Checkpoints`]).
fn snapshot(store: &Store, state: &Shared) -> Result<Duration, ProjectionError> {
    let t = Instant::now();
    let checkpoint = Checkpoint::of(&state.read())?;
    tokio::task::block_in_place(|| store.write(&checkpoint))?;
    Ok(saved(state, &checkpoint, t))
}

/// Marks a checkpoint's records saved, once it is written (so they may
/// be evicted from the cache); logs it, and returns how long it took since
/// `started`.
fn saved(state: &Shared, checkpoint: &Checkpoint, started: Instant) -> Duration {
    let mut s = state.write();
    s.saved(checkpoint);
    let took = started.elapsed();
    tracing::info!(
        seq = checkpoint.seq().unwrap_or(0),
        lots = s.lots.len(),
        cached = s.lots.cached(),
        ms = took.as_millis() as u64,
        "projection checkpoint written"
    );
    took
}

/// The follower's checkpoints: when the next is due, and the one being
/// written, on a thread of its own while the follower applies on.
struct Checkpoints {
    cadence: Cadence,
    /// Entries applied since the last checkpoint written.
    since: u64,
    /// When the last one was written (or failed).
    last: Instant,
    /// How long the last one written took: the next waits ten times that.
    cost: Duration,
    failed_at: Option<Instant>,
    writing: Option<Writing>,
}

/// A checkpoint being written.
struct Writing {
    task: tokio::task::JoinHandle<(Checkpoint, Result<(), StoreError>)>,
    started: Instant,
    /// [`Checkpoints::since`] when it was taken.
    entries: u64,
    records: Records,
}

/// How writing a checkpoint ended: when it started, the entries it
/// covers, and the checkpoint with its result.
type Written = (Instant, u64, Result<(Checkpoint, Result<(), StoreError>), tokio::task::JoinError>);

impl Checkpoints {
    fn new(cadence: Cadence) -> Checkpoints {
        Checkpoints { cadence, since: 0, last: Instant::now(), cost: Duration::ZERO, failed_at: None, writing: None }
    }

    /// Whether one is due now (and none is being written): after `every`
    /// entries or `interval`, and ten times as long as the last one took
    /// since it ended, so that checkpoints stay a small share of the work;
    /// at once when the cache holds as many unsaved records as it may
    /// (unless the last one failed within the second), so that saved ones
    /// can be evicted.
    fn due(&self, state: &Shared) -> bool {
        let since_last = self.last.elapsed();
        let by_count = self.since >= self.cadence.every;
        let by_time = self.since > 0 && since_last >= self.cadence.interval;
        self.writing.is_none() && (((by_count || by_time) && since_last >= self.cost * 10) || self.full(state))
    }

    /// The cache holds as many unsaved records as it may, besides those
    /// the checkpoint being written will save.
    fn full(&self, state: &Shared) -> bool {
        let writing = self.writing.as_ref().map(|w| w.records).unwrap_or_default();
        state.read().wants_checkpoint(writing) && self.failed_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    /// Takes a checkpoint under the read lock and starts writing it.
    fn start(&mut self, store: &Arc<Store>, state: &Shared) -> Result<(), StoreError> {
        let checkpoint = Checkpoint::of(&state.read())?;
        let records = checkpoint.records();
        let store = store.clone();
        let task = tokio::task::spawn_blocking(move || {
            let result = store.write(&checkpoint);
            (checkpoint, result)
        });
        self.writing = Some(Writing { task, started: Instant::now(), entries: self.since, records });
        Ok(())
    }

    /// The end of the checkpoint being written; never, if none is.
    async fn written(&mut self) -> Written {
        let Some(writing) = self.writing.as_mut() else { return std::future::pending().await };
        let result = (&mut writing.task).await;
        let (started, entries) = (writing.started, writing.entries);
        self.writing = None;
        (started, entries, result)
    }

    /// Marks what a checkpoint wrote saved, or reports that it could not
    /// be written: a checkpoint only shortens a restart, so answers from
    /// the cache and the store stay right, the projection stays ready,
    /// reports it (the log, `custody_projection_snapshot_failures_total`)
    /// and tries again after the interval. A rebuild (`until`) ends on it.
    fn settle(&mut self, written: Written, state: &Shared, meters: &Meters, until: Option<u64>) -> Result<(), ProjectionError> {
        let (started, entries, result) = written;
        let failure = match result {
            Ok((checkpoint, Ok(()))) => {
                self.last = Instant::now();
                self.cost = saved(state, &checkpoint, started);
                self.since = self.since.saturating_sub(entries);
                self.failed_at = None;
                return Ok(());
            }
            Ok((_, Err(e))) => ProjectionError::from(e),
            // The writing thread panicked: reported as the checkpoint
            // it did not write.
            Err(_) => ProjectionError::Ended,
        };
        self.failed(failure, meters, until)
    }

    fn failed(&mut self, e: ProjectionError, meters: &Meters, until: Option<u64>) -> Result<(), ProjectionError> {
        if until.is_some() {
            return Err(e);
        }
        self.last = Instant::now();
        self.failed_at = Some(Instant::now());
        tracing::error!(error = %e, "cannot write the projection's snapshot; still answering, trying again later");
        metrics::counter!("custody_projection_snapshot_failures_total", "service" => meters.health.name()).increment(1);
        Ok(())
    }

    /// Writes checkpoints as they are due: first waits for the one being
    /// written if the cache is full besides what it will save (it can
    /// evict nothing unsaved), then starts the next if one is due.
    async fn keep(&mut self, store: &Arc<Store>, state: &Shared, meters: &Meters, until: Option<u64>) -> Result<(), ProjectionError> {
        if self.writing.is_some() && self.full(state) {
            self.finish(state, meters, until).await?;
        }
        if self.due(state) {
            if let Err(e) = self.start(store, state) {
                self.failed(e.into(), meters, until)?;
            }
        }
        Ok(())
    }

    /// Waits for the checkpoint being written, if one is.
    async fn finish(&mut self, state: &Shared, meters: &Meters, until: Option<u64>) -> Result<(), ProjectionError> {
        if self.writing.is_some() {
            let written = self.written().await;
            self.settle(written, state, meters, until)?;
        }
        Ok(())
    }
}

/// Ends a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies the committed stream from the checkpoint on, through the one
/// follower. A task of its own reads, decodes and links the entries ahead
/// (up to [`DECODED_AHEAD`] batches); this one applies them, taking the
/// write lock for [`SLICE`] entries at a time, and writes checkpoints as
/// `cadence` says or the cache needs, each on a thread of its own while it
/// applies on ([`Checkpoints`]). A read failure (NATS restarting, say) is
/// logged; the follower goes on by itself, as it does when a checkpoint
/// cannot be written (reported, tried again later). A broken chain is an
/// error. With `until`, ends there, its checkpoints written (the caller
/// writes the last).
async fn follow_stream(reader: Reader, store: Arc<Store>, state: Shared, until: Option<u64>, cadence: Cadence, meters: Meters) -> Result<(), ProjectionError> {
    let after = state.read().checkpoint;
    if until.is_some_and(|u| after.map_or(0, |a| a.0) >= u) {
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(DECODED_AHEAD);
    let _decoder = AbortOnDrop(tokio::spawn(async move {
        let mut batches = std::pin::pin!(reader.entries(after, until));
        while let Some(batch) = batches.next().await {
            if tx.send(batch).await.is_err() {
                break;
            }
        }
    }));
    let mut checkpoints = Checkpoints::new(cadence);
    loop {
        let batch = tokio::select! {
            written = checkpoints.written() => {
                checkpoints.settle(written, &state, &meters, until)?;
                None
            }
            read = tokio::time::timeout(Duration::from_secs(1), rx.recv()) => match read {
                Ok(Some(batch)) => Some(batch),
                Ok(None) => return Err(ProjectionError::Ended),
                // Nothing new: maybe time for a checkpoint of what came before.
                Err(_) => None,
            },
        };
        let mut last = 0;
        match batch {
            None => {}
            Some(Err(FollowError::Broken { seq, why })) => return Err(ProjectionError::Broken { seq, why }),
            Some(Err(FollowError::Read(e))) if until.is_some() => return Err(e.into()),
            Some(Err(FollowError::Read(e))) => tracing::warn!(error = %e, "reading the committed stream failed; going on after the last applied entry"),
            Some(Ok(entries)) => {
                // Applying is all CPU: off the runtime's workers, so that
                // queries and the decoder keep theirs.
                last = tokio::task::block_in_place(|| apply_all(&state, &entries))?;
                checkpoints.since += entries.len() as u64;
                meters.applied(last);
            }
        }
        if until.is_some_and(|u| last >= u) {
            return checkpoints.finish(&state, &meters, until).await;
        }
        checkpoints.keep(&store, &state, &meters, until).await?;
    }
}

/// The projection's metrics (through the `metrics` facade; the command
/// line installs the exporter), labelled with its name, and its health.
#[derive(Clone)]
struct Meters {
    health: Health,
    applied: metrics::Gauge,
    lag: metrics::Gauge,
    /// Query latency by kind, for the kinds there are (a subject is the
    /// asker's to choose: anything else counts as `other`).
    queries: Arc<std::collections::HashMap<&'static str, metrics::Histogram>>,
}

/// The query kinds timed apart.
const QUERY_KINDS: [&str; 7] = [
    subjects::QUERY_ORIGIN,
    subjects::QUERY_ADMISSIBILITY,
    subjects::QUERY_GENEALOGY,
    subjects::QUERY_DIGEST,
    subjects::QUERY_ACTOR,
    subjects::QUERY_CERTIFICATE,
    subjects::QUERY_VERIFY_CERTIFICATE,
];

impl Meters {
    fn new(health: &Health) -> Meters {
        let service = health.name();
        let labels = [("service", service.clone())];
        let queries = QUERY_KINDS
            .iter()
            .chain(std::iter::once(&"other"))
            .map(|subject| {
                let kind = subject.rsplit('.').next().unwrap_or(subject);
                (*subject, metrics::histogram!("custody_query_seconds", "service" => service.clone(), "query" => kind))
            })
            .collect();
        Meters {
            health: health.clone(),
            applied: metrics::gauge!("custody_projection_applied_seq", &labels),
            lag: metrics::gauge!("custody_projection_lag", &labels),
            queries: Arc::new(queries),
        }
    }

    fn applied(&self, seq: u64) {
        self.applied.set(seq as f64);
        self.health.update(|s| s.head = Some(seq));
    }

    fn query(&self, subject: &str, took: Duration) {
        if let Some(h) = self.queries.get(subject).or_else(|| self.queries.get("other")) {
            h.record(took.as_secs_f64());
        }
    }
}

fn error(code: AnswerCode, message: impl Into<String>) -> Value {
    custody_wire::query::error_answer(code, message)
}

/// A query body of the shape `T`, or the `bad_request` that says why not.
fn query<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Value> {
    serde_json::from_slice(body).map_err(|e| error(AnswerCode::BadRequest, format!("the query is not of the expected shape: {e}")))
}

/// Answers one query; never panics on input. An answer about a lot or an
/// actor says which seq of the ledger it reflects (`as_of_seq`): while the
/// projection catches up, that is below the ledger's head.
pub fn answer(state: &State, subject: &str, body: &[u8]) -> Value {
    let mut answer = answer_or_error(state, subject, body).unwrap_or_else(|e| e);
    let about_state = matches!(
        subject,
        subjects::QUERY_ORIGIN
            | subjects::QUERY_GENEALOGY
            | subjects::QUERY_ADMISSIBILITY
            | subjects::QUERY_ACTOR
            | subjects::QUERY_SEARCH
            | subjects::QUERY_LOTS
    ) || holder_of(subject).is_some();
    if let (true, Some(fields)) = (about_state, answer.as_object_mut()) {
        if !fields.contains_key("code") {
            fields.insert("as_of_seq".into(), json!(state.checkpoint.map_or(0, |c| c.0)));
        }
    }
    answer
}

fn answer_or_error(state: &State, subject: &str, body: &[u8]) -> Result<Value, Value> {
    match subject {
        subjects::QUERY_DIGEST => return Ok(json!({"seq": state.checkpoint.map_or(0, |c| c.0), "digest": digest(state)})),
        subjects::QUERY_ACTOR => {
            let ActorQuery { key } = query(body)?;
            return match state.actors.get(&key) {
                Some(a) => Ok(
                    json!({"key": key, "name": a.name, "country": a.country, "roles": a.roles, "revoked": a.revoked, "registered": a.registered, "revoked_at": a.revoked_at}),
                ),
                None => Err(error(AnswerCode::UnknownActor, format!("{:?} is not a registered actor", custody_proto::ids::truncate(&key)))),
            };
        }
        subjects::QUERY_CERTIFICATE => return certificate(state, query(body)?),
        subjects::QUERY_RULES => {
            // `{}`, or `{"date"}` for which preset is in force on it.
            let date = serde_json::from_slice::<Value>(body).ok().and_then(|b| b.get("date").and_then(Value::as_str).map(str::to_owned));
            let day = match date {
                Some(d) => Some(parse_date(Some(d))?),
                None => None,
            };
            return Ok(crate::rules::presets_on(day));
        }
        subjects::QUERY_STATISTICS => return Ok(state.flows.answer(state)),
        subjects::QUERY_SEARCH => {
            let SearchQuery { q } = query(body)?;
            return search(state, &q);
        }
        subjects::QUERY_LOTS => return lots(state, query(body)?, None),
        _ if holder_of(subject).is_some() => return lots(state, query(body)?, holder_of(subject)),
        subjects::QUERY_VERIFY_CERTIFICATE => {
            let VerifyCertificateQuery { certificate, key, rules } = query(body)?;
            return Ok(json!(crate::certificate::verify(&certificate, &key, &rules)));
        }
        subjects::QUERY_ORIGIN | subjects::QUERY_GENEALOGY | subjects::QUERY_ADMISSIBILITY => {}
        _ => return Err(error(AnswerCode::BadRequest, format!("no query {}", custody_proto::ids::truncate(subject)))),
    }
    let lot_of = |id: &str| lot_of(state, id);
    if subject != subjects::QUERY_ADMISSIBILITY {
        let LotQuery { lot } = query(body)?;
        let lot = lot_of(&lot)?;
        return Ok(if subject == subjects::QUERY_ORIGIN { view::origin(&state.answerable(&lot)) } else { genealogy(state, &lot) });
    }
    let AdmissibilityQuery { lot, rules, date } = query(body)?;
    let lot = lot_of(&lot)?;
    let date = parse_date(date)?;
    let set = rule_set(&rules)?;
    Ok(view::admissibility(&state.answerable(&lot), &set, date))
}

/// Longest search text, in characters.
const MAX_SEARCH: usize = 128;
/// Most lots one search answers with.
const MAX_FOUND: usize = 50;
/// Most lots named as what a found lot became.
const MAX_MADE_INTO: usize = 20;

/// The lots `q` names: a lot id (as typed, or in upper or lower case), or
/// a number on a paper, however cased ([`view::fold`]), each with what it
/// matched, the entry that named it, and what the lot was cut, split or
/// merged into since (the stone an officer holds may come from the rough
/// its papers name). Nothing a lot's public answers do not show already:
/// no holder, no party, no value.
fn search(state: &State, q: &str) -> Result<Value, Value> {
    let q = q.trim();
    if q.is_empty() || q.chars().count() > MAX_SEARCH {
        return Err(error(AnswerCode::InvalidParameter, format!("search for a lot id or a number on a paper: 1 to {MAX_SEARCH} characters")));
    }
    let mut found: Vec<(String, String, u64)> = Vec::new();
    for id in [q.to_owned(), q.to_uppercase(), q.to_lowercase()] {
        if let Some(lot) = state.lots.get(&id) {
            if !found.iter().any(|(l, ..)| *l == id) {
                found.push((id, "lot id".into(), lot.created.seq));
            }
        }
    }
    let named = state.references.get(&view::fold(q)).map(std::borrow::Cow::into_owned).unwrap_or_default();
    for n in &named {
        // One line per lot and entry: a verification that names its
        // report by the same number matches as both.
        match found.iter_mut().find(|(l, _, seq)| *l == n.lot && *seq == n.seq) {
            Some((_, what, _)) => *what = format!("{what} and {}", n.what),
            None => found.push((n.lot.clone(), n.what.clone(), n.seq)),
        }
    }
    let truncated = found.len() > MAX_FOUND || named.len() >= view::MAX_NAMED;
    let found: Vec<Value> = found
        .into_iter()
        .take(MAX_FOUND)
        .filter_map(|(id, what, seq)| {
            let lot = state.lots.get(&id)?;
            Some(json!({
                "lot": id,
                "matched": what,
                "seq": seq,
                "state": lot.state,
                "carats": lot.carats,
                "consumed": lot.consumed,
                "made_into": made_into(state, &lot),
            }))
        })
        .collect();
    Ok(json!({"query": q, "found": found, "truncated": truncated}))
}

/// The actor a `custody.holdings.<key>` subject asks about.
fn holder_of(subject: &str) -> Option<&str> {
    subject.strip_prefix(subjects::HOLDINGS_PREFIX)?.strip_prefix('.').filter(|k| !k.is_empty() && !k.contains('.'))
}

/// Lots on a page unless the query says fewer.
const PAGE: usize = 50;
/// Most lots on one page.
const MAX_PAGE: usize = 200;
/// Most lots one page looks at. A filter that few lots pass answers a
/// short page (even an empty one) with `next` to go on from: each request
/// costs at most this, however large the ledger.
const MAX_SCAN: usize = 20_000;

/// A page of lots in id order after `q.after` that pass every filter
/// given (and, for `custody.holdings.<key>`, are held by that key): each
/// with what its `origin` shows anyway (state, carats, countries of
/// mining, where it is now, when it came into being), and its verdict
/// when asked; never who holds it. `next` is where the next page starts,
/// absent on the last.
fn lots(state: &State, q: LotsQuery, holder: Option<&str>) -> Result<Value, Value> {
    let invalid = |what: String| error(AnswerCode::InvalidParameter, what);
    let limit = q.limit.unwrap_or(PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(invalid(format!("limit: 1 to {MAX_PAGE} lots a page")));
    }
    let mined_in = match &q.mined_in {
        Some(c) => Some(
            c.trim().to_uppercase().parse::<custody_proto::Country>().map_err(|_| invalid(format!("mined_in: {c:?} is not a country code like RU or BW")))?,
        ),
        None => None,
    };
    let lot_state = match &q.state {
        Some(s) => Some(
            serde_json::from_value::<custody_proto::LotState>(Value::from(s.trim().to_lowercase()))
                .map_err(|_| invalid(format!("state: {s:?} is not rough or polished")))?,
        ),
        None => None,
    };
    let verdict = match (&q.rules, &q.verdict) {
        (Some(rules), Some(verdict)) => {
            let verdict = verdict.trim().to_lowercase();
            if !["admissible", "prohibited", "undetermined"].contains(&verdict.as_str()) {
                return Err(invalid(format!("verdict: {verdict:?} is not admissible, prohibited or undetermined")));
            }
            Some((rule_set(rules)?, parse_date(q.date.clone())?, verdict))
        }
        (None, None) => None,
        _ => return Err(error(AnswerCode::MissingParameter, "a verdict filter needs both rules and verdict (and date, YYYY-MM-DD)")),
    };
    let day = |d: &Option<String>| match d {
        Some(d) => parse_date(Some(d.clone())).map(Some),
        None => Ok(None),
    };
    let (from, to) = (day(&q.from)?, day(&q.to)?);
    let range = match q.after.as_deref() {
        Some(after) => state.lots.range(std::ops::Bound::Excluded(after)),
        None => state.lots.range(std::ops::Bound::Unbounded),
    };
    let mut range = range.peekable();
    let (mut found, mut scanned, mut next) = (Vec::new(), 0usize, None);
    while let Some((id, lot)) = range.next() {
        scanned += 1;
        let passes = holder.is_none_or(|h| lot.holder == h)
            && mined_in.is_none_or(|c| lot.composition.parts().any(|(p, _)| p.source == crate::origin::Source::Mined(c)))
            && lot_state.is_none_or(|s| lot.state == s)
            && q.consumed.is_none_or(|c| lot.consumed == c)
            && from.is_none_or(|f| lot.created.date >= f)
            && to.is_none_or(|t| lot.created.date <= t);
        let judged = match (&verdict, passes) {
            (Some((set, date, _)), true) => Some(view::admissibility(&state.answerable(&lot), set, *date)["verdict"].clone()),
            _ => None,
        };
        if passes && verdict.as_ref().is_none_or(|(.., v)| judged.as_ref().is_some_and(|j| j == v.as_str())) {
            let mut row = json!({
                "lot": id,
                "state": lot.state,
                "carats": lot.carats,
                "consumed": lot.consumed,
                "created": lot.created.date.to_string(),
                "held_in": lot.country,
                "mine_origin": lot.composition.rounded().into_iter().map(|(country, share)| json!({"country": country, "share": share})).collect::<Vec<_>>(),
            });
            if let (Some(j), Some(fields)) = (judged, row.as_object_mut()) {
                fields.insert("verdict".into(), j);
            }
            found.push(row);
        }
        if (found.len() == limit || scanned == MAX_SCAN) && range.peek().is_some() {
            next = Some(id.clone());
            break;
        }
    }
    Ok(json!({"lots": found, "next": next, "scanned": scanned}))
}

/// The lots `lot` became and that are still lots of their own (not
/// consumed since), breadth first, at most [`MAX_MADE_INTO`].
fn made_into(state: &State, lot: &view::Lot) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: std::collections::VecDeque<String> = lot.children.iter().cloned().collect();
    while let Some(id) = todo.pop_front() {
        if out.len() >= MAX_MADE_INTO || !seen.insert(id.clone()) {
            continue;
        }
        let Some(child) = state.lots.get(&id) else { continue };
        if child.consumed {
            todo.extend(child.children.iter().cloned());
        } else {
            out.push(id);
        }
    }
    out
}

fn lot_of<'a>(state: &'a State, id: &str) -> Result<std::borrow::Cow<'a, view::Lot>, Value> {
    state.lots.get(id).ok_or_else(|| {
        let shown = custody_proto::ids::truncate(id);
        error(AnswerCode::UnknownLot, format!("lot {shown:?} is not in the projection (up to seq {})", state.checkpoint.map_or(0, |c| c.0)))
    })
}

fn parse_date(date: Option<String>) -> Result<NaiveDate, Value> {
    let Some(date) = date else { return Err(error(AnswerCode::InvalidDate, "a date (YYYY-MM-DD) is needed")) };
    NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .map_err(|_| error(AnswerCode::InvalidDate, format!("{:?} is not a date of the form YYYY-MM-DD", custody_proto::ids::truncate(&date))))
}

/// A preset's name or a rule file's text, loaded.
fn rule_set(rules: &str) -> Result<RuleSet, Value> {
    if rules.len() > MAX_INLINE_RULES {
        let why =
            format!("the inline rule set is {} bytes; at most {MAX_INLINE_RULES} bytes (and {} rules) are accepted", rules.len(), crate::rules::MAX_RULES);
        return Err(error(AnswerCode::RulesTooLarge, why));
    }
    RuleSet::load(rules).map_err(|e| match e {
        crate::rules::RuleError::Unknown(_) => error(AnswerCode::UnknownRules, e.to_string()),
        e => error(AnswerCode::InvalidRules, e.to_string()),
    })
}

/// Certificates one projection checks at once.
const CERTIFICATE_CHECKS: usize = 2;

/// Most rule sets one certificate is made under.
const MAX_CERTIFICATE_RULES: usize = 8;

/// The answers an origin certificate claims, and the seqs of the entries
/// they rest on (as inclusive ranges), from one reading of the state.
fn certificate(state: &State, q: CertificateQuery) -> Result<Value, Value> {
    let lot = lot_of(state, &q.lot)?;
    let date = parse_date(Some(q.date))?;
    if date < lot.created.date {
        let why = format!("{} did not exist on {date}: it was made on {} (entry {}); ask about a day since", lot.lot, lot.created.date, lot.created.seq);
        return Err(error(AnswerCode::InvalidDate, why));
    }
    if q.rules.is_empty() || q.rules.len() > MAX_CERTIFICATE_RULES {
        return Err(error(AnswerCode::InvalidRules, format!("a certificate is made under 1 to {MAX_CERTIFICATE_RULES} rule sets")));
    }
    let answerable = state.answerable(&lot);
    let mut rules = Vec::new();
    let mut admissibility = Vec::new();
    for r in &q.rules {
        let set = rule_set(r)?;
        let text = crate::rules::PRESETS.iter().find(|(n, _)| *n == r).map_or_else(|| r.clone(), |(_, t)| (*t).to_owned());
        admissibility.push(view::admissibility(&answerable, &set, date));
        rules.push(json!({"name": set.name, "text": text}));
    }
    let seqs = crate::certificate::history(state, &lot);
    Ok(json!({
        "lot": lot.lot,
        "date": date.to_string(),
        "origin": view::origin(&answerable),
        "admissibility": admissibility,
        "rules": rules,
        "seqs": custody_proto::certificate::ranges(&seqs),
        "as_of": state.checkpoint.map_or(0, |c| c.0),
    }))
}

fn node(l: &view::Lot) -> Value {
    json!({"lot": l.lot, "carats": l.carats, "state": l.state, "event": l.created.kind, "seq": l.created.seq, "hash": l.created.hash, "country": l.created.country, "parents": l.parents})
}

/// Ancestors and descendants, breadth first, each side bounded.
fn genealogy(state: &State, lot: &view::Lot) -> Value {
    let walk = |next: &dyn Fn(&view::Lot) -> Vec<String>| {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        let mut queue: std::collections::VecDeque<String> = next(lot).into();
        let mut truncated = false;
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if out.len() >= MAX_GENEALOGY {
                truncated = true;
                break;
            }
            if let Some(l) = state.lots.get(&id) {
                out.push(node(&l));
                queue.extend(next(&l));
            }
        }
        (out, truncated)
    };
    let (ancestors, a_trunc) = walk(&|l| l.parents.clone());
    let (descendants, d_trunc) = walk(&|l| l.children.clone());
    json!({"lot": lot.lot, "node": node(lot), "ancestors": ancestors, "descendants": descendants, "truncated": a_trunc || d_trunc})
}

/// Certificate checks: a few at once (each costs up to a megabyte of
/// signatures), a few waiting per asker.
const CHECKS: custody_wire::fair::Limits = custody_wire::fair::Limits { per_client: 4, total: 256, max_wait: QUEUE_WAIT };
/// Every other query.
const READS: custody_wire::fair::Limits = custody_wire::fair::Limits { per_client: 16, total: 4_096, max_wait: QUEUE_WAIT };
/// Longest a query waits for its turn: less than the gateway waits for
/// the answer, so a late one is answered "unavailable", not timed out.
const QUEUE_WAIT: Duration = Duration::from_secs(4);
/// Workers answering from the state at once (under its read lock).
const READERS: usize = 2;

/// Answers queries, in fair shares: each asker ([`custody_wire::query::asker_of`])
/// has a queue of its own and the workers take from each in turn
/// ([`custody_wire::fair`]), so one client's flood delays that client.
async fn serve(client: async_nats::Client, state: Shared, meters: Meters) -> Result<(), ProjectionError> {
    use custody_wire::fair::answering;
    let queries = client.queue_subscribe("custody.query.>", subjects::PROJECTION_GROUP.to_owned()).await.map_err(|e| ProjectionError::Serve(e.to_string()))?;
    let holdings = client
        .queue_subscribe(format!("{}.*", subjects::HOLDINGS_PREFIX), subjects::PROJECTION_GROUP.to_owned())
        .await
        .map_err(|e| ProjectionError::Serve(e.to_string()))?;
    let sub = futures::stream::select(queries, holdings);
    let counted = move |subject: String, answer: Value, took: Duration| {
        meters.query(&subject, took);
        std::future::ready(answer)
    };
    let pools = [
        answering(
            &client,
            READERS,
            READS,
            move |subject, body| if subject == subjects::QUERY_DIGEST { digest_answer(&state) } else { answer(&state.read(), subject, body) },
            counted.clone(),
        ),
        // A certificate check needs no state, so never takes the lock.
        answering(&client, CERTIFICATE_CHECKS, CHECKS, |subject, body| answer(&State::default(), subject, body), counted),
    ];
    custody_wire::fair::queue(&client, sub, &pools, |subject| usize::from(subject == subjects::QUERY_VERIFY_CERTIFICATE)).await;
    Ok(())
}
