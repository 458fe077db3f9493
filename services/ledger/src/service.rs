//! The ledger on NATS. A replica is either a standby, following the
//! committed stream into its own store, or the one active writer, holding
//! the writer lease ([`crate::lease`]). The active writer runs four stages
//! joined by bounded channels, so that signature checking, the network
//! and the disk overlap:
//!
//! intake (request-reply + inbox stream) → check (open, batch-verify,
//! parse; off the async threads) → write (custody rules; one atomic batch
//! on the committed stream, the commit point; then one fsync of the
//! store) → respond (receipts).
//!
//! A writer that loses the lease, or whose batch the stream fences off,
//! steps down at once: it answers nothing more, rebuilds its model from
//! its store and follows the stream as a standby.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Subject;
use bytes::Bytes;
use custody_proto::{ActorKey, Entry, Hash, KeyCache, Outcome, Refusal};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::commit::MAX_ATOMIC;
use crate::lease::Lease;
use crate::ledger::{check_batch, Checked, Ledger, OpenError, Submitted};
use crate::meters::Meters;
use crate::notary::Notary;
use crate::store::StoreError;
use crate::writer;
use custody_wire::follow::{entry_of, FollowError, Reader};
use custody_wire::health::Health;
use custody_wire::subjects::*;

/// Why the ledger stopped.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger store {} refused to open: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: OpenError,
    },
    #[error(transparent)]
    Key(#[from] custody_wire::files::FileError),
    #[error(transparent)]
    Connect(#[from] custody_wire::connect::ConnectError),
    /// NATS refused or failed an operation the ledger cannot do without.
    #[error("cannot {what}: {why}")]
    Nats { what: &'static str, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make entries durable; stopping so that a restart replays the store: {0}")]
    Commit(#[source] StoreError),
    /// The committed stream and the store tell two histories.
    #[error("{0}; refusing to go on")]
    Disagreement(String),
    #[error("a ledger stage ended unexpectedly")]
    Ended,
    /// This replica may no longer write; it becomes a standby.
    #[error("stepping down: {0}")]
    SteppedDown(String),
    /// This replica should not write: it gives the lease up and leaves it
    /// to the others for a while.
    #[error("giving the writer lease up: {0}")]
    GivesWay(String),
    #[error("a ledger stage failed: {0}")]
    Task(String),
    /// A setting that disagrees with the deployment this replica joins.
    #[error("{0}")]
    Mismatch(String),
}

/// The error of a NATS operation the ledger needed, saying which.
fn nats<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> LedgerError {
    move |e| LedgerError::Nats { what, why: e.to_string() }
}

/// How long the ledger waits at start for JetStream to take its streams.
const JETSTREAM_PATIENCE: Duration = Duration::from_secs(60);

/// How long the writer waits for an atomic batch's ack before it takes the
/// outcome as unknown and reads the stream back.
const ACK_PATIENCE: Duration = Duration::from_secs(1);

/// Largest number of submissions checked or written as one batch.
const MAX_BATCH: usize = 2048;

/// How the ledger runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS server URL.
    pub nats_url: String,
    /// Folder of the sled store.
    pub data_dir: PathBuf,
    /// Genesis authority: the one actor registered before any event.
    pub authority: ActorKey,
    /// How often a signed checkpoint is published while entries arrive.
    pub checkpoint_every: Duration,
    /// The ledger's NATS identity (an nkey seed), when the server checks one.
    pub nkey: Option<String>,
    /// What `recorded_at` reads: the system clock outside tests.
    pub clock: crate::clock::Clock,
    /// Servers holding each custody stream: 1 on one machine, 3 on a
    /// cluster (a receipt then waits for a majority).
    pub replicas: usize,
    /// How long the writer lease outlives its holder's last renewal.
    pub lease_ttl: Duration,
    /// This replica's name in the writer lease; unique per store.
    pub name: String,
    /// How this replica says how it is (`custody status`, `/readyz`); its
    /// name labels the replica's metrics.
    pub health: Health,
    /// Keep the lot map and sign its root in every checkpoint. Off only to
    /// measure what the map costs (`custody bench ingest --lot-map-cost`):
    /// certificates from such a ledger cannot show a history whole.
    pub lot_map: bool,
    /// The log's name in its checkpoint notes (C2SP origin); by default
    /// `custody/` and the ledger's public key.
    pub origin: Option<String>,
    /// The witnesses asked to cosign each checkpoint.
    pub witnesses: Vec<crate::cosign::WitnessPeer>,
    /// Each actor's submission quota, by role; none: unlimited.
    pub quota: Option<crate::quota::Rates>,
    /// How far this replica's clock may be off the NATS servers' before
    /// it stops writing; none: not checked (a test clock).
    pub max_clock_skew: Option<Duration>,
}

impl Config {
    pub fn new(nats_url: impl Into<String>, data_dir: PathBuf, authority: ActorKey) -> Config {
        // One store, one replica: its host and folder name it.
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into());
        let name = format!("{host}:{}", std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone()).display());
        Config {
            nats_url: nats_url.into(),
            data_dir,
            authority,
            checkpoint_every: Duration::from_secs(10),
            nkey: None,
            clock: crate::clock::Clock::system(),
            replicas: 1,
            lease_ttl: Duration::from_secs(4),
            health: Health::new("ledger", &name),
            name,
            lot_map: true,
            origin: None,
            witnesses: Vec::new(),
            quota: Some(crate::quota::Rates::uniform(crate::quota::Limits::DEFAULT)),
            max_clock_skew: Some(Duration::from_secs(60)),
        }
    }
}

/// Where a submission's outcome must go.
struct Reply {
    to: ReplyTo,
    /// The actor the submission subject named (for counting refusals by
    /// how many actors met them).
    actor: Option<String>,
}

enum ReplyTo {
    /// A request-reply inbox: answer once.
    Core(Subject),
    /// A message of the inbox stream: publish the outcome on the receipts
    /// stream, then ack the message.
    Inbox(Box<jetstream::Message>),
    /// One envelope of a batch request: its outcome is kept at its place,
    /// and the whole array answers once the last one is known.
    Part(Arc<BatchReply>, usize),
}

/// The outcomes of a batch request, in the order of its lines.
struct BatchReply {
    subject: Subject,
    outcomes: std::sync::Mutex<Vec<Option<Outcome>>>,
}

impl BatchReply {
    /// Records the outcome of part `i`; the whole answer, a JSON array,
    /// once every part has one.
    fn set(&self, i: usize, outcome: Outcome) -> Option<Bytes> {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(outcome);
        }
        if outcomes.iter().any(Option::is_none) {
            return None;
        }
        let all: Vec<&Outcome> = outcomes.iter().flatten().collect();
        serde_json::to_vec(&all).ok().map(Bytes::from)
    }
}

/// The envelopes of a batch request: one per non-empty line of an NDJSON
/// body (`Custody-Batch: ndjson`), each exactly the bytes it would be
/// alone; or the refusal of the whole request.
pub fn batch_parts(format: &str, body: &Bytes) -> Result<Vec<Bytes>, Refusal> {
    let refuse = |message: String| Refusal { id: None, code: custody_proto::Code::BatchTooLarge, message, retry_after_ms: None };
    if format != BATCH_NDJSON {
        return Err(refuse(format!("{:?} is not a batch format this ledger reads; send {BATCH_NDJSON:?}", custody_proto::ids::truncate(format))));
    }
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, b) in body.iter().enumerate().chain(std::iter::once((body.len(), &b'\n'))) {
        if *b == b'\n' {
            let line = body.slice(start..i);
            start = i + 1;
            let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
            if trimmed.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if parts.len() == BATCH_MAX_ENVELOPES {
                return Err(refuse(format!("a batch carries at most {BATCH_MAX_ENVELOPES} envelopes; send the rest in another")));
            }
            parts.push(line.slice(..trimmed.len()));
        }
    }
    Ok(parts)
}

struct Submission {
    /// When it was taken in: a batch's receipt latency counts from its
    /// first submission's.
    received: std::time::Instant,
    raw: Bytes,
    /// The actor key the subject it came on names (its last token).
    subject_key: Option<String>,
    reply: Reply,
    /// Over its actor's quota: how long until it may send again.
    limited: Option<Duration>,
}

/// The actors' quotas, shared by both intakes; none: unlimited.
#[derive(Clone)]
struct Shares(Option<Arc<std::sync::Mutex<crate::quota::Quotas>>>);

impl Shares {
    fn new(rates: Option<crate::quota::Rates>, ledger: &Ledger, authority: &str) -> Shares {
        let shares = Shares(rates.map(|r| Arc::new(std::sync::Mutex::new(crate::quota::Quotas::new(r, authority)))));
        shares.learn(ledger.roles());
        shares
    }

    /// Takes a submission's token from the actor `key` names.
    fn take(&self, key: Option<&str>) -> Option<Duration> {
        let quotas = self.0.as_ref()?;
        let mut q = quotas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.take(key.unwrap_or(""), std::time::Instant::now()).err()
    }

    /// Actors' roles, which decide their quotas.
    fn learn<'a>(&self, roles: impl Iterator<Item = (&'a str, &'a [custody_proto::Role])>) {
        let Some(quotas) = self.0.as_ref() else { return };
        let mut q = quotas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, roles) in roles {
            q.set_roles(key, roles);
        }
    }
}

/// The actor a submission subject names: `custody.submit.<key>` or
/// `custody.inbox.<key>`.
fn subject_key(subject: &str) -> Option<String> {
    subject.rsplit_once('.').map(|(_, key)| key.to_owned())
}

/// Runs the ledger until `shutdown` completes or it fails: a standby
/// until it takes the writer lease, then the writer until it loses it, and
/// so on.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LedgerError> {
    let dir = config.data_dir.clone();
    let authority = config.authority.clone();
    let lot_map = config.lot_map;
    let mut ledger = tokio::task::spawn_blocking(move || Ledger::open(&dir, &authority).map(|l| opened(l, lot_map)))
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
        .map_err(|source| LedgerError::Open { dir: config.data_dir.clone(), source })?;
    tracing::info!(
        head = ?ledger.head().map(|h| h.0),
        replayed = ledger.replayed(),
        "ledger store open: chain checked whole, signatures verified after the saved write model"
    );

    let client = custody_wire::connect::connect(&config.nats_url, "custody-ledger", config.nkey.as_deref()).await?;
    let js = jetstream::new(client.clone());
    // A cluster elects its JetStream leaders a few seconds after its
    // servers start: until then, creating a stream times out.
    // A request sent before then is lost, not refused: ask with a short
    // timeout, and again.
    let started = std::time::Instant::now();
    let mut setup = js.clone();
    setup.set_timeout(Duration::from_secs(2));
    let instance = crate::lease::instance_id(&config.data_dir)?;
    let holder = crate::lease::holder_name(&config.name, &instance);
    let lease = loop {
        let ready = async {
            ensure_streams(&setup, config.replicas).await.map(drop)?;
            Lease::open(&setup, holder.clone(), config.lease_ttl, config.replicas).await
        }
        .await;
        match ready {
            Ok(lease) => match config.max_clock_skew {
                Some(skew) => break lease.with_clock(config.clock.clone(), skew),
                None => break lease,
            },
            Err(e @ LedgerError::Nats { .. }) if started.elapsed() < JETSTREAM_PATIENCE => {
                tracing::warn!(error = %e, "JetStream is not ready yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    // The key this replica signs with is the one the ledger's checkpoints
    // are signed by (a new one only for a new ledger).
    let signer = newest_signer(&client).await?;
    let key = crate::notary::key_for_ledger(&config.data_dir, signer.as_deref()).map_err(|e| LedgerError::Mismatch(e.to_string()))?;
    let reader = Reader::ledger(&client);
    // A standby follows through a consumer of its own, named by its
    // instance; a take-over's catch-up (a short tail, on the clock) reads
    // by direct get, which needs no consumer made first.
    let following = reader.clone().pulling_own(&replica_consumer(&instance));
    let health = config.health.clone();
    // `custody status` shows which key each replica signs with.
    health.update(|s| s.key = Some(key.public_key()));
    let meters = Meters::new(&health);
    // Answers `custody status` for as long as this replica runs.
    let mut background = tokio::task::JoinSet::new();
    background.spawn(custody_wire::health::answer_status(client.clone(), health.clone()));

    tokio::pin!(shutdown);
    // Until when this replica leaves the lease to the others.
    let mut giving_way: Option<tokio::time::Instant> = None;
    loop {
        tracing::info!(head = ?ledger.head().map(|h| h.0), name = %config.name, "standby: following the committed stream");
        meters.writer(false);
        health.update(|s| s.role = "standby".into());
        let revision = tokio::select! {
            () = &mut shutdown => {
                // All it holds is durable: the next start begins here.
                tokio::task::block_in_place(|| save(&mut ledger));
                return Ok(());
            }
            taken = standby(&mut ledger, &following, &lease, &health, &meters, giving_way.take()) => taken?,
        };
        let store = ledger.store().clone();
        // The lease is renewed from the moment it is taken: catching up on
        // a long way (a fresh disk) must not let it lapse.
        let (lost_tx, mut lost) = tokio::sync::oneshot::channel::<String>();
        let renewing = {
            let lease = lease.clone();
            tokio::spawn(async move {
                let _ = lost_tx.send(lease.hold(revision).await);
            })
        };
        let active = async {
            tokio::select! {
                caught = catch_up(&mut ledger, &reader, &client, &js, config.replicas, &config.name) => caught?,
                why = &mut lost => return Err(LedgerError::SteppedDown(why.unwrap_or_else(|_| "the writer lease stopped being renewed".into()))),
            }
            let origin = config.origin.clone().unwrap_or_else(|| crate::notary::default_origin(&key.public_key()));
            let notary = Arc::new(Notary::new(ledger.take_transparency(), key.clone(), origin, !config.witnesses.is_empty(), store.clone()));
            tracing::info!(head = ?ledger.head().map(|h| h.0), key = %notary.public_key(), name = %config.name, "writer lease taken; serving submissions");
            let lost = async { lost.await.unwrap_or_else(|_| "the writer lease stopped being renewed".into()) };
            serve(ledger, &config, &client, &js, notary, Held { lost, server_time: lease.server_time() }, &meters).await
        };
        let stepped = tokio::select! {
            () = &mut shutdown => None,
            r = active => Some(r),
        };
        renewing.abort();
        let Some(stepped) = stepped else {
            lease.release().await;
            let _ = client.flush().await;
            // The writer's model ran ahead of its store and went with it:
            // the state saved for the next start is rebuilt from what is
            // durable (verifying only what followed the last mark).
            let authority = config.authority.clone();
            let _ = tokio::task::spawn_blocking(move || Ledger::load(store, &authority).map(|l| save(&mut opened(l, lot_map)))).await;
            return Ok(());
        };
        match stepped {
            Err(LedgerError::SteppedDown(why)) => tracing::warn!(%why, "no longer the writer: rebuilding from the store, then standby"),
            Err(LedgerError::GivesWay(why)) => {
                tracing::warn!(%why, "giving the writer lease up for a while");
                lease.release().await;
                giving_way = Some(tokio::time::Instant::now() + 2 * config.lease_ttl);
            }
            // NATS failed while taking over (a stream not readable yet
            // after a restart, a leader election): try again as a standby.
            Err(e @ LedgerError::Nats { .. }) => tracing::warn!(error = %e, "cannot take over yet: rebuilding from the store, then standby"),
            Err(e) => return Err(e),
            Ok(()) => return Err(LedgerError::Ended),
        }
        // The model was ahead of what committed: rebuild it from what is durable.
        let authority = config.authority.clone();
        ledger = tokio::task::spawn_blocking(move || Ledger::load(store, &authority).map(|l| opened(l, lot_map)))
            .await
            .map_err(|e| LedgerError::Task(e.to_string()))?
            .map_err(|source| LedgerError::Open { dir: config.data_dir.clone(), source })?;
    }
}

/// Entries replayed at open past which the state is saved at once
/// ([`crate::saved`]): a crash later then does not cost the replay again.
const SAVE_AFTER: u64 = 10_000;

/// A ledger just opened or rebuilt: its lot map kept or not, and its state
/// saved when the replay was long.
fn opened(ledger: Ledger, lot_map: bool) -> Ledger {
    let mut ledger = ledger.with_lot_map(lot_map);
    if ledger.replayed() >= SAVE_AFTER {
        save(&mut ledger);
    }
    ledger
}

/// Saves the ledger's state for a fast next start; a failure costs only
/// that (the next start replays more), so it is said, not fatal.
fn save(ledger: &mut Ledger) {
    let started = std::time::Instant::now();
    match ledger.save() {
        Ok(true) => tracing::info!(mark = ?ledger.mark().map(|m| m.0), ms = started.elapsed().as_millis() as u64, "write model saved"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot save the write model; the next start verifies more"),
    }
}

/// Follows the committed stream into the store until this replica takes
/// the writer lease; returns the lease's revision. Ready (able to take
/// over at once) while it keeps up with the stream.
async fn standby(
    ledger: &mut Ledger,
    reader: &Reader,
    lease: &Lease,
    health: &Health,
    meters: &Meters,
    giving_way: Option<tokio::time::Instant>,
) -> Result<u64, LedgerError> {
    let mut entries = std::pin::pin!(reader.entries(ledger.head(), None));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            batch = entries.next() => match batch {
                Some(Ok(batch)) => {
                    tokio::task::block_in_place(|| ledger.follow(&batch)).map_err(|e| disagreement(e.to_string()))?;
                    custody_wire::crashpoint::reached("ledger.following");
                    let head = ledger.head().map_or(0, |h| h.0);
                    meters.head(head);
                    tracing::debug!(followed = head, "standby");
                }
                Some(Err(FollowError::Read(e))) => tracing::warn!(error = %e, "cannot read the committed stream yet"),
                Some(Err(FollowError::Broken { seq, why })) => return Err(broken(seq, &why)),
                None => return Err(LedgerError::Ended),
            },
            _ = tick.tick() => {
                let waits = giving_way.is_some_and(|until| tokio::time::Instant::now() < until);
                if waits {
                    health.set_ready(Err("leaving the writer lease to a replica whose store holds more".into()));
                } else {
                    let taken = lease.try_acquire().await;
                    // A clock off the servers' keeps it from writing, and says so.
                    health.set_fault("clock", lease.clock_fault());
                    if let Some(revision) = taken {
                        return Ok(revision);
                    }
                }
                // Once a second: who writes, and how far behind this one is.
                ticks += 1;
                if ticks % 4 == 1 {
                    let leader = lease.holder().await;
                    let head = ledger.head().map_or(0, |h| h.0);
                    match reader.last_seq().await {
                        Ok(end) => health.followed(head, end),
                        Err(e) => health.set_ready(Err(format!("cannot read the committed stream: {e}"))),
                    }
                    health.update(|s| s.leader = leader);
                }
            }
        }
    }
}

fn broken(seq: u64, why: &str) -> LedgerError {
    disagreement(format!("entry {seq} on the committed stream does not follow this ledger's store ({why})"))
}

fn disagreement(what: String) -> LedgerError {
    LedgerError::Disagreement(format!("{what}: something other than this ledger wrote on {ENTRIES_SUBJECT}"))
}

/// Before writing: takes every entry the stream holds beyond the store
/// (another writer's, or this one's whose outcome was unknown), and puts
/// back on the stream what the store holds beyond it (a stream lost or
/// recreated), when [`writer::take_over`] finds the store may: it holds
/// the newest checkpoint. Afterwards the two end at the same entry.
async fn catch_up(
    ledger: &mut Ledger,
    reader: &Reader,
    client: &async_nats::Client,
    js: &jetstream::Context,
    replicas: usize,
    name: &str,
) -> Result<(), LedgerError> {
    // A deleted stream is made again (empty) before it is read.
    ensure_streams(js, replicas).await?;
    let last = reader.last_seq().await.map_err(nats("read the committed stream's end"))?;
    let mut entries = std::pin::pin!(reader.entries(ledger.head(), Some(last)));
    while let Some(batch) = entries.next().await {
        match batch {
            Ok(batch) => {
                tokio::task::block_in_place(|| ledger.follow(&batch)).map_err(|e| disagreement(e.to_string()))?;
                custody_wire::crashpoint::reached("ledger.following");
            }
            Err(FollowError::Read(e)) => return Err(nats("read the committed stream")(e)),
            Err(FollowError::Broken { seq, why }) => return Err(broken(seq, &why)),
        }
    }
    let stored = ledger.head().map_or(0, |h| h.0);
    let checkpointed = newest_checkpoint(client).await?.map_or(0, |c| c.tree_size);
    // How far the other replicas' stores reach, when the stream is short.
    let others = if last < stored { other_heads(client, name).await } else { 0 };
    let mut from = match writer::take_over(last, stored, checkpointed, others) {
        writer::TakeOver::Write => return Ok(()),
        writer::TakeOver::Wait(why) => return Err(LedgerError::GivesWay(why)),
        writer::TakeOver::Refill { from } => from,
    };
    if last > 0 {
        let on_stream = reader.get(last).await.map_err(nats("read the committed stream"))?.and_then(|m| entry_of(&m).ok()).map(|e| e.hash);
        let in_store = ledger.store().get(last)?.map(|e| e.hash);
        if on_stream.is_none() || on_stream != in_store {
            return Err(disagreement(format!("entry {last} on the committed stream is not the store's entry {last}")));
        }
    }
    tracing::warn!(stream = last, store = stored, "the committed stream lost entries the store holds; publishing them again");
    while from <= stored {
        let entries: Vec<Entry> = tokio::task::block_in_place(|| ledger.store().entries_from(from).take(4 * MAX_ATOMIC).collect::<Result<_, StoreError>>())?;
        crate::commit::send_all(js, &entries).await?;
        from += entries.len().max(1) as u64;
    }
    Ok(())
}

/// The furthest store head the other ledger replicas report within a
/// second (0 when none answers).
async fn other_heads(client: &async_nats::Client, name: &str) -> u64 {
    match custody_wire::health::gather(client, &["ledger"], Duration::from_secs(1)).await {
        Ok(statuses) => statuses.iter().filter(|s| s.name != name).filter_map(|s| s.head).max().unwrap_or(0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the other replicas how far their stores reach");
            0
        }
    }
}

/// What the writer holds the lease with: a future that completes, saying
/// why, when the lease is lost, and the servers' time as the lease last
/// saw it.
struct Held<L> {
    lost: L,
    server_time: crate::lease::ServerTime,
}

/// The active writer's stages, until one fails or the lease is lost.
async fn serve(
    ledger: Ledger,
    config: &Config,
    client: &async_nats::Client,
    js: &jetstream::Context,
    notary: Arc<Notary>,
    held: Held<impl Future<Output = String>>,
    meters: &Meters,
) -> Result<(), LedgerError> {
    let streams = ensure_streams(js, config.replicas).await?;
    let (intake_tx, intake_rx) = mpsc::channel::<Submission>(MAX_BATCH * 4);
    let (checked_tx, checked_rx) = mpsc::channel(4);
    let (respond_tx, respond_rx) = mpsc::channel(16);
    let (head_tx, head_rx) = watch::channel(ledger.head());
    notary.set_published(ledger.head().map_or(0, |h| h.0));

    let mut tasks = tokio::task::JoinSet::new();
    let core = client.queue_subscribe(format!("{SUBMIT_PREFIX}.>"), QUEUE_GROUP.to_owned()).await.map_err(nats("subscribe to submissions"))?;
    let shares = Shares::new(config.quota.clone(), &ledger, config.authority.as_str());
    tasks.spawn(intake_core(client.clone(), core, intake_tx.clone(), shares.clone()));
    tasks.spawn(intake_inbox(streams.inbox, intake_tx, shares.clone()));
    tasks.spawn(check_stage(intake_rx, checked_tx));
    let (durable_tx, durable_rx) = mpsc::channel(writer::WINDOW * 2);
    let committed = ledger.head().map_or(0, |h| h.0);
    tasks.spawn(durable_stage(ledger.store().clone(), notary.clone(), durable_rx, respond_tx, head_tx, meters.clone()));
    let writer = Writer {
        ledger,
        clock: config.clock.clone(),
        server_time: held.server_time,
        js: {
            // An ack comes in milliseconds (75 ms at most measured on a
            // loaded cluster); one that has not come within this is
            // unknown and read back, rather than waited on for JetStream's
            // default 5 s while the stream elects a new leader.
            let mut js = js.clone();
            js.set_timeout(ACK_PATIENCE);
            js
        },
        reader: Reader::ledger(client),
        durable: durable_tx,
        committed,
        meters: meters.clone(),
        shares,
    };
    tasks.spawn(writer.run(checked_rx));
    tasks.spawn(respond_stage(client.clone(), js.clone(), respond_rx, meters.clone()));
    let cosigners = crate::cosign::Cosigners::new(config.witnesses.clone());
    let checkpoints = Checkpoints { notary: notary.clone(), every: config.checkpoint_every, last: None, cosigners };
    tasks.spawn(checkpoint_stage(js.clone(), checkpoints, head_rx.clone()));
    tasks.spawn(serve_head(client.clone(), head_rx));
    tasks.spawn(serve_followers(client.clone(), js.clone()));
    tasks.spawn(serve_proofs(client.clone(), js.clone(), notary));
    tracing::info!(url = %config.nats_url, "ledger serving");
    meters.head(committed);
    meters.writer(true);
    config.health.update(|s| {
        s.role = "writer".into();
        s.head = Some(committed);
        s.lag = None;
        s.leader = Some(config.name.clone());
        s.ready = true;
        s.why = None;
    });

    let result = tokio::select! {
        why = held.lost => Err(LedgerError::SteppedDown(why)),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(LedgerError::Ended),
            // NATS failed the writer (a leader election, a lost server):
            // another replica, or this one again, takes over cleanly.
            Ok(Err(LedgerError::Nats { what, why })) => Err(LedgerError::SteppedDown(format!("cannot {what}: {why}"))),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(LedgerError::Task(e.to_string())),
        },
    };
    // Stops answering at once: the subscriptions go with their tasks.
    tasks.shutdown().await;
    result
}

/// The ledger's streams, made by [`ensure_streams`].
pub struct Streams {
    pub inbox: stream::Stream,
}

/// Creates the ledger's streams on `replicas` servers if they are not
/// there (the committed, inbox, checkpoints and receipts streams), or
/// brings them to this version's configuration.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> Result<Streams, LedgerError> {
    crate::commit::committed_stream(js, replicas).await?;
    let inbox = js
        .get_or_create_stream(stream::Config {
            name: INBOX_STREAM.into(),
            subjects: vec![format!("{INBOX_PREFIX}.>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(nats("create the inbox stream"))?;
    // Read by direct get (follow.rs), also by ledgers that created it
    // before readers needed that: update it in place.
    js.create_or_update_stream(stream::Config {
        name: CHECKPOINTS_STREAM.into(),
        subjects: vec![CHECKPOINTS_SUBJECT.into()],
        storage: stream::StorageType::File,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(nats("create the checkpoints stream"))?;
    js.get_or_create_stream(custody_wire::receipts::stream_config(replicas)).await.map_err(nats("create the receipts stream"))?;
    Ok(Streams { inbox })
}

async fn intake_core(client: async_nats::Client, mut sub: async_nats::Subscriber, tx: mpsc::Sender<Submission>, shares: Shares) -> Result<(), LedgerError> {
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let subject_key = subject_key(&msg.subject);
        let format = msg.headers.as_ref().and_then(|h| h.get(HDR_BATCH)).map(|v| v.as_str().to_owned());
        let Some(format) = format else {
            // Over its quota: answered here, at once, without a place in
            // the pipeline (a refusal changes nothing, so it need not wait
            // its turn), so a flood costs its sender, not everyone queued.
            if let Some(wait) = shares.take(subject_key.as_deref()) {
                let _ = client.publish(reply, outcome_bytes(&rate_limited(wait))).await;
                continue;
            }
            if tx
                .send(Submission {
                    received: std::time::Instant::now(),
                    raw: msg.payload,
                    reply: Reply { to: ReplyTo::Core(reply), actor: subject_key.clone() },
                    subject_key,
                    limited: None,
                })
                .await
                .is_err()
            {
                break;
            }
            continue;
        };
        // A batch: each envelope goes through the pipeline as it would
        // alone, in its place among everything else submitted.
        let parts = match batch_parts(&format, &msg.payload) {
            Ok(parts) => parts,
            Err(refusal) => {
                let _ = client.publish(reply, outcome_bytes(&Outcome::Rejected(refusal))).await;
                continue;
            }
        };
        if parts.is_empty() {
            let _ = client.publish(reply, Bytes::from_static(b"[]")).await;
            continue;
        }
        let batch = Arc::new(BatchReply { subject: reply, outcomes: std::sync::Mutex::new(vec![None; parts.len()]) });
        let received = std::time::Instant::now();
        for (i, raw) in parts.into_iter().enumerate() {
            if let Some(wait) = shares.take(subject_key.as_deref()) {
                if let Some(all) = batch.set(i, rate_limited(wait)) {
                    let _ = client.publish(batch.subject.clone(), all).await;
                }
                continue;
            }
            let reply = Reply { to: ReplyTo::Part(batch.clone(), i), actor: subject_key.clone() };
            let submission = Submission { received, raw, subject_key: subject_key.clone(), reply, limited: None };
            if tx.send(submission).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The refusal of a submission over its actor's quota.
fn rate_limited(wait: Duration) -> Outcome {
    crate::ledger::refusal(None, crate::quota::refusal(wait))
}

async fn intake_inbox(inbox: stream::Stream, tx: mpsc::Sender<Submission>, shares: Shares) -> Result<(), LedgerError> {
    let consumer: consumer::PullConsumer = inbox
        .get_or_create_consumer(
            INBOX_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(INBOX_CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(nats("create the inbox consumer"))?;
    let mut messages = consumer.messages().await.map_err(nats("read the inbox"))?;
    while let Some(msg) = messages.next().await {
        match msg {
            Ok(msg) => {
                let raw = msg.payload.clone();
                let subject_key = subject_key(&msg.subject);
                let limited = shares.take(subject_key.as_deref());
                let reply = Reply { to: ReplyTo::Inbox(Box::new(msg)), actor: subject_key.clone() };
                let submission = Submission { received: std::time::Instant::now(), raw, subject_key, reply, limited };
                if tx.send(submission).await.is_err() {
                    break;
                }
            }
            Err(e) => tracing::warn!(error = %e, "inbox read failed; retrying"),
        }
    }
    Ok(())
}

/// Drains what is ready, up to `max`, after the first item.
fn drain<T>(rx: &mut mpsc::Receiver<T>, first: T, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    batch
}

/// Checked submissions with where their outcomes go, and when the first
/// of them was taken in.
struct CheckedBatch {
    received: std::time::Instant,
    items: Vec<(Reply, Checked)>,
}

/// Batches checked at once, in order: one per core.
const CHECKERS: usize = 2;

/// Checks batches on blocking threads, up to [`CHECKERS`] at a time, and
/// hands them to the writer in arrival order: a producer that publishes
/// `mined` then `split` without waiting must see them applied in that order.
async fn check_stage(mut rx: mpsc::Receiver<Submission>, tx: mpsc::Sender<CheckedBatch>) -> Result<(), LedgerError> {
    let mut caches: Vec<KeyCache> = (0..CHECKERS).map(|_| KeyCache::default()).collect();
    let mut inflight = FuturesOrdered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                let (received, replies, (checked, cache)): (std::time::Instant, Vec<Reply>, (Vec<Checked>, KeyCache)) = done;
                caches.push(cache);
                if tx.send(CheckedBatch { received, items: replies.into_iter().zip(checked).collect() }).await.is_err() {
                    break;
                }
            }
            first = rx.recv(), if open && inflight.len() < CHECKERS => {
                let Some(first) = first else { open = false; continue };
                let received = first.received;
                let batch = drain(&mut rx, first, MAX_BATCH);
                let (replies, raws): (Vec<Reply>, Vec<Submitted>) =
                    batch.into_iter().map(|s| (s.reply, Submitted { bytes: s.raw.to_vec(), subject_key: s.subject_key, limited: s.limited })).unzip();
                let mut cache = caches.pop().unwrap_or_default();
                let job = tokio::task::spawn_blocking(move || {
                    let checked = check_batch(raws, &mut cache);
                    (checked, cache)
                });
                inflight.push_back(async move {
                    // A panic while checking is a bug of ours, not input: stop.
                    match job.await {
                        Ok(done) => (received, replies, done),
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                });
            }
        }
    }
    Ok(())
}

/// The write stage: admits checked batches and runs [`crate::writer`]'s
/// decisions on NATS: commits entries on the stream, up to
/// [`writer::WINDOW`] atomic batches in flight, reads the stream back or
/// behind a read barrier when the writer asks. What the writer hands on
/// goes, in order, to the durable stage ([`durable_stage`]), which appends
/// it to the store and only then sends the outcomes; the writer meanwhile
/// goes on admitting and sending.
struct Writer {
    ledger: Ledger,
    clock: crate::clock::Clock,
    /// The servers' time as the lease last saw it: each reading is judged
    /// by it.
    server_time: crate::lease::ServerTime,
    js: jetstream::Context,
    reader: Reader,
    durable: mpsc::Sender<Pending>,
    /// The stream and the store both end here when the writer starts; from
    /// then on `writer::Writer` knows what is committed.
    committed: u64,
    meters: Meters,
    /// The quotas, told each registration the writer admits.
    shares: Shares,
}

/// How the answers of an admitted batch travel with it.
struct Answers {
    /// For each entry, the lot-map keys of what it acts on.
    subjects: Vec<Vec<Hash>>,
    answers: Vec<(Reply, Outcome)>,
    received: std::time::Instant,
}

/// Admitted, not yet answered: its entries (maybe none) and the outcome
/// of each submission, sent once every entry up to its last is durable.
type Pending = writer::Batch<Entry, Answers>;

type Acks = FuturesUnordered<futures::future::BoxFuture<'static, (u64, u64, writer::Ack)>>;

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<CheckedBatch>) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        let mut core: writer::Writer<Entry, Answers> = writer::Writer::new(self.committed);
        // Acks of the atomic batches sent: (generation, last seq, ack).
        let mut acks: Acks = FuturesUnordered::new();
        let mut open = true;
        loop {
            if !open && core.idle() {
                return Ok(());
            }
            let steps = tokio::select! {
                biased;
                Some((generation, last, ack)) = acks.next(), if !acks.is_empty() => core.acked(started.elapsed(), generation, last, ack),
                batch = rx.recv(), if open && core.ready() => {
                    let Some(batch) = batch else { open = false; continue };
                    // One clock reading for the whole batch; a clock stepped
                    // since the last lease renewal stops the writer here,
                    // before it dates an entry (nothing is in flight).
                    let now = self.clock.now();
                    if let Some(why) = self.server_time.judge(now) {
                        return Err(LedgerError::SteppedDown(why));
                    }
                    let batch = self.admit(batch, &mut rx, now);
                    core.admitted(started.elapsed(), batch)
                }
            };
            self.act(&mut core, steps, &mut acks, started).await?;
        }
    }

    /// Admits a checked batch (and whatever else is waiting, up to
    /// [`MAX_BATCH`]) against the model.
    fn admit(&mut self, mut batch: CheckedBatch, rx: &mut mpsc::Receiver<CheckedBatch>, now: custody_proto::Timestamp) -> Pending {
        while batch.items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.items.extend(more.items),
                Err(_) => break,
            }
        }
        self.meters.batch.record(batch.items.len() as f64);
        let (replies, checked): (Vec<Reply>, Vec<Checked>) = batch.items.into_iter().unzip();
        let registrations: Vec<(usize, String, Vec<custody_proto::Role>)> = checked
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Ok((_, e)) => match &e.body {
                    custody_proto::Body::ActorRegistered { subject, roles, .. } => Some((i, subject.as_str().to_owned(), roles.clone())),
                    _ => None,
                },
                Err(_) => None,
            })
            .collect();
        let decided_at = self.ledger.head().map_or(0, |h| h.0);
        // One clock reading for the whole batch: what `recorded_at` says and
        // what "the future" means for every `occurred_at` in it.
        let admitted = self.ledger.admit(checked, now);
        // A registration accepted sets its actor's quota.
        let accepted = registrations.iter().filter(|(i, ..)| matches!(admitted.outcomes.get(*i), Some(Outcome::Receipt(_))));
        self.shares.learn(accepted.map(|(_, k, r)| (k.as_str(), r.as_slice())));
        let answers = replies.into_iter().zip(admitted.outcomes).collect();
        writer::Batch { decided_at, entries: admitted.entries, answers: Answers { subjects: admitted.subjects, answers, received: batch.received } }
    }

    /// Does what the writer asks, feeding back what NATS answers, until it
    /// waits for acks or batches again.
    async fn act(
        &mut self,
        core: &mut writer::Writer<Entry, Answers>,
        steps: Vec<writer::Step<Entry, Answers>>,
        acks: &mut Acks,
        started: std::time::Instant,
    ) -> Result<(), LedgerError> {
        let mut todo: std::collections::VecDeque<_> = steps.into();
        while let Some(step) = todo.pop_front() {
            let more = match step {
                writer::Step::Send { generation, entries } => {
                    self.send(generation, &entries, acks).await;
                    continue;
                }
                writer::Step::HandOn(batch) => {
                    self.durable.send(batch).await.map_err(|_| LedgerError::Ended)?;
                    continue;
                }
                writer::Step::StepDown(why) => return Err(LedgerError::SteppedDown(why)),
                writer::Step::ReadBack { after, entries } => {
                    // Acks still coming belong to the batches read back.
                    *acks = FuturesUnordered::new();
                    tokio::time::sleep(after).await;
                    if after.is_zero() {
                        tracing::warn!("a batch's outcome is unknown; reading the committed stream back");
                    }
                    let found = crate::commit::read_back(&self.reader, &entries).await;
                    core.read_back(started.elapsed(), found)
                }
                writer::Step::Barrier { after, decided_at } => {
                    tokio::time::sleep(after).await;
                    let read = crate::commit::barrier_read(&self.reader, decided_at).await;
                    core.barrier(started.elapsed(), read)
                }
            };
            todo.extend(more);
        }
        Ok(())
    }

    async fn send(&self, generation: u64, chunk: &[Entry], acks: &mut Acks) {
        let last = chunk.last().map_or(0, |e| e.seq);
        let (n, sent) = (chunk.len(), std::time::Instant::now());
        let ack = crate::commit::send(&self.js, chunk).await;
        let send_us = sent.elapsed().as_micros() as u64;
        let commit = self.meters.commit.clone();
        acks.push(Box::pin(async move {
            let ack = match ack.await {
                Ok(seq) => writer::Ack::Stored(seq),
                Err(crate::commit::BatchError::WrongLastSequence(_)) => writer::Ack::WrongLast,
                Err(e) => {
                    tracing::warn!(error = %e, "no ack for an atomic batch");
                    writer::Ack::Unknown(e.to_string())
                }
            };
            commit.record(sent.elapsed().as_secs_f64());
            tracing::debug!(entries = n, send_us, ack_us = sent.elapsed().as_micros() as u64, "batch on the stream");
            (generation, last, ack)
        }));
    }
}

/// The durable stage: appends what the stream committed to the store, then
/// lets the tree cover it, moves the head and sends the outcomes, in
/// order. Whatever has queued up while the store synced goes in the next
/// sled batch together: one fsync for all of it.
async fn durable_stage(
    store: crate::store::Store,
    notary: Arc<Notary>,
    mut rx: mpsc::Receiver<Pending>,
    respond: mpsc::Sender<(std::time::Instant, Vec<(Reply, Outcome)>)>,
    head: watch::Sender<Option<(u64, Hash)>>,
    meters: Meters,
) -> Result<(), LedgerError> {
    while let Some(first) = rx.recv().await {
        let group = drain(&mut rx, first, writer::WINDOW * 2);
        let entries: Vec<Entry> = group.iter().flat_map(|p| p.entries.iter().cloned()).collect();
        let subjects: Vec<Vec<Hash>> = group.iter().flat_map(|p| p.answers.subjects.iter().cloned()).collect();
        if let Some(last) = entries.last() {
            custody_wire::crashpoint::reached("ledger.committed");
            // The receipt promise: nothing is answered before this returns.
            let appending = std::time::Instant::now();
            tokio::task::block_in_place(|| store.append(&entries)).map_err(LedgerError::Commit)?;
            custody_wire::crashpoint::reached("ledger.synced");
            meters.store.record(appending.elapsed().as_secs_f64());
            // On the stream (the writer handed them on after its ack), and
            // now in the store: the tree and the map may cover them.
            notary.set_published(last.seq);
            notary.append(&entries, &subjects);
            head.send_replace(Some((last.seq, last.hash)));
            meters.head(last.seq);
            tracing::debug!(entries = entries.len(), head = last.seq, "committed");
        }
        for p in group {
            if respond.send((p.answers.received, p.answers.answers)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn outcome_bytes(o: &Outcome) -> Bytes {
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec(o).map(Bytes::from).unwrap_or_default()
}

async fn respond_stage(
    client: async_nats::Client,
    js: jetstream::Context,
    mut rx: mpsc::Receiver<(std::time::Instant, Vec<(Reply, Outcome)>)>,
    meters: Meters,
) -> Result<(), LedgerError> {
    let mut consumers = custody_wire::receipts::Consumers::default();
    while let Some((received, batch)) = rx.recv().await {
        meters.outcomes(batch.iter().map(|(r, o)| (r.actor.as_deref(), o)));
        meters.receipt.record(received.elapsed().as_secs_f64());
        let mut durable = Vec::new();
        for (reply, outcome) in batch {
            let body = outcome_bytes(&outcome);
            match reply.to {
                ReplyTo::Core(subject) => {
                    if let Err(e) = client.publish(subject, body).await {
                        tracing::warn!(error = %e, "cannot send a reply");
                    }
                }
                ReplyTo::Part(batch, i) => {
                    if let Some(all) = batch.set(i, outcome) {
                        if let Err(e) = client.publish(batch.subject.clone(), all).await {
                            tracing::warn!(error = %e, "cannot send a batch reply");
                        }
                    }
                }
                ReplyTo::Inbox(msg) => {
                    let key = subject_key(&msg.subject);
                    consumers.ensure(&js, key.as_deref()).await;
                    let (subject, headers, message_id) = custody_wire::receipts::message(key.as_deref(), &outcome);
                    let publish = jetstream::message::PublishMessage::build().payload(body).headers(headers).message_id(message_id);
                    match js.send_publish(subject, publish).await {
                        Ok(ack) => durable.push((msg, ack)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot publish a receipt; the inbox will redeliver")
                        }
                    }
                }
            }
        }
        // Ack each submission only once its outcome is stored; a crash in
        // between redelivers it, and idempotency answers the same. The
        // acks are awaited together: after a NATS restart every one of them
        // may be lost, and awaiting them in turn would stall the pipeline
        // for one timeout per message.
        futures::future::join_all(durable.into_iter().map(|(msg, ack)| async move {
            if ack.await.is_ok() {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "cannot ack an inbox message");
                }
            }
        }))
        .await;
    }
    Ok(())
}

/// Publishes a signed checkpoint now and then while the head moves, and
/// at once when someone waits for a cosigned one.
async fn checkpoint_stage(js: jetstream::Context, mut checkpoints: Checkpoints, mut head: watch::Receiver<Option<(u64, Hash)>>) -> Result<(), LedgerError> {
    let notary = checkpoints.notary.clone();
    let mut wanted = false;
    loop {
        let published = head.borrow_and_update().map_or(0, |h| h.0);
        checkpoints.maybe_publish(&js, published, wanted).await;
        // Wake up at least once a period, so the last burst gets its checkpoint.
        tokio::select! {
            changed = tokio::time::timeout(checkpoints.every, head.changed()) => {
                if let Ok(Err(_)) = changed {
                    return Ok(());
                }
                wanted = false;
            }
            () = notary.witnessed_wanted(), if !checkpoints.cosigners.is_empty() => {
                wanted = true;
                // Pokes come in bursts (every certificate being made): one round for all.
                tokio::time::sleep(MIN_ROUND_GAP).await;
            }
        }
    }
}

/// The least time between two rounds of asking the witnesses, however
/// often someone waits for one.
const MIN_ROUND_GAP: Duration = Duration::from_millis(100);

/// Periodic checkpoints, signed for what the committed stream holds, so
/// an auditor never sees a checkpoint ahead of the entries it covers.
struct Checkpoints {
    notary: Arc<Notary>,
    every: Duration,
    /// When the last one was published, and its size.
    last: Option<(std::time::Instant, u64)>,
    /// The witnesses asked to cosign each one.
    cosigners: crate::cosign::Cosigners,
}

impl Checkpoints {
    async fn maybe_publish(&mut self, js: &jetstream::Context, published: u64, wanted: bool) {
        let due = match self.last {
            None => true,
            Some((at, size)) => size < published && (at.elapsed() >= self.every || wanted),
        } || (wanted && self.notary.witnessed().map_or(0, |c| c.tree_size) < published);
        if !due {
            return;
        }
        if !self.cosigners.is_empty() {
            return self.witness(js).await;
        }
        match self.notary.checkpoint() {
            Ok(c) if !self.notary.first_announcement(c.tree_size) => {
                // Someone asked for this size already: it is on the stream.
                self.last = Some((std::time::Instant::now(), c.tree_size));
            }
            Ok(c) => {
                if publish_checkpoint(js, &c).await {
                    self.last = Some((std::time::Instant::now(), c.tree_size));
                } else {
                    self.notary.forget_announcement(c.tree_size);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign a checkpoint"),
        }
    }

    /// Signs a checkpoint, has the witnesses cosign it, and publishes it
    /// with their cosignatures: the checkpoint certificates then stand on.
    async fn witness(&mut self, js: &jetstream::Context) {
        let (mut c, map) = match self.notary.checkpoint_for_witnesses() {
            Ok(signed) => signed,
            Err(e) => return tracing::warn!(error = %e, "cannot sign a checkpoint"),
        };
        self.cosigners.cosign(&self.notary, &mut c).await;
        self.notary.first_announcement(c.tree_size);
        if publish_checkpoint(js, &c).await {
            self.last = Some((std::time::Instant::now(), c.tree_size));
        }
        tracing::info!(size = c.tree_size, cosignatures = c.cosignatures.len(), "checkpoint sent to the witnesses");
        if !c.cosignatures.is_empty() {
            self.notary.set_witnessed(c, map);
        }
    }
}

async fn publish_checkpoint(js: &jetstream::Context, c: &custody_proto::Checkpoint) -> bool {
    let body = serde_json::to_vec(c).map(Bytes::from).unwrap_or_default();
    match js.publish(CHECKPOINTS_SUBJECT, body).await {
        Ok(ack) => ack.await.map_err(|e| tracing::warn!(error = %e, "checkpoint not stored")).is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish a checkpoint");
            false
        }
    }
}

/// The key that signed the ledger's newest checkpoint, if it has one.
async fn newest_signer(client: &async_nats::Client) -> Result<Option<String>, LedgerError> {
    Ok(newest_checkpoint(client).await?.map(|c| c.key))
}

/// The newest checkpoint on the checkpoints stream, if any.
async fn newest_checkpoint(client: &async_nats::Client) -> Result<Option<custody_proto::Checkpoint>, LedgerError> {
    let reader = Reader::checkpoints(client);
    let read = |e: custody_wire::follow::ReadError| LedgerError::Nats { what: "read the checkpoints stream", why: e.to_string() };
    let last = reader.last_seq().await.map_err(read)?;
    if last == 0 {
        return Ok(None);
    }
    let Some(msg) = reader.get(last).await.map_err(read)? else { return Ok(None) };
    Ok(serde_json::from_slice::<custody_proto::Checkpoint>(&msg.payload).ok())
}

/// Proofs made at once, and how many may wait per asker and in all.
const PROOF_WORKERS: usize = 2;
const PROOF_QUEUE: custody_wire::fair::Limits = custody_wire::fair::Limits { per_client: 16, total: 4_096, max_wait: std::time::Duration::from_secs(4) };

/// Answers checkpoint and proof requests, in fair shares per asker
/// ([`custody_wire::fair`]: one client's flood delays that client). A
/// checkpoint asked for is also published when it is the first for its
/// size, so auditors see a checkpoint for every size anyone was given,
/// and asking again and again cannot grow the stream.
async fn serve_proofs(client: async_nats::Client, js: jetstream::Context, notary: Arc<Notary>) -> Result<(), LedgerError> {
    let subs = futures::stream::select_all([
        client.subscribe(CHECKPOINT_SUBJECT).await.map_err(nats("subscribe to checkpoint requests"))?,
        client.subscribe(PROOF_SUBJECT).await.map_err(nats("subscribe to proof requests"))?,
        client.subscribe(CONSISTENCY_SUBJECT).await.map_err(nats("subscribe to consistency requests"))?,
    ]);
    // A checkpoint handed out (alone, or with a proof) is published, so
    // that what a certificate rests on is on the public record.
    let published = {
        let notary = notary.clone();
        move |subject: String, answer: serde_json::Value, took: Duration| {
            let (js, notary) = (js.clone(), notary.clone());
            async move {
                tracing::debug!(subject = %subject, ms = took.as_millis() as u64, "answered");
                let issued = if subject == CHECKPOINT_SUBJECT { Some(answer.clone()) } else { answer.get("checkpoint").cloned() };
                if answer.get("code").is_none() {
                    if let Some(Ok(c)) = issued.map(serde_json::from_value::<custody_proto::Checkpoint>) {
                        if notary.first_announcement(c.tree_size) && !publish_checkpoint(&js, &c).await {
                            notary.forget_announcement(c.tree_size);
                        }
                    }
                }
                answer
            }
        }
    };
    let pool = custody_wire::fair::answering(&client, PROOF_WORKERS, PROOF_QUEUE, move |subject, body| notary.answer(subject, body), published);
    custody_wire::fair::queue(&client, subs, &[pool], |_| 0).await;
    Ok(())
}

async fn serve_head(client: async_nats::Client, head: watch::Receiver<Option<(u64, Hash)>>) -> Result<(), LedgerError> {
    let mut sub = client.subscribe(HEAD_SUBJECT).await.map_err(nats("subscribe to head requests"))?;
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let h = *head.borrow();
        let body = serde_json::json!({
            "seq": h.map_or(0, |h| h.0),
            "hash": h.map(|h| h.1.to_hex()),
        });
        let _ = client.publish(reply, body.to_string().into()).await;
    }
    Ok(())
}

/// Makes followers' pull consumers of the committed stream
/// ([`FOLLOW_SUBJECT`], [`custody_wire::follow::make_consumer`]): one per
/// NATS user, named by it (by the follower's own word only where there
/// are no accounts), from the seq it asks for, replacing that user's
/// consumer before.
pub async fn serve_followers(client: async_nats::Client, js: jetstream::Context) -> Result<(), LedgerError> {
    use custody_wire::query::{error_answer, requester_of, AnswerCode, Requester};
    let mut sub = client.subscribe(FOLLOW_SUBJECT).await.map_err(nats("subscribe to follower requests"))?;
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        #[derive(serde::Deserialize)]
        struct Ask {
            from: u64,
            #[serde(default)]
            reader: String,
        }
        let answer = match (serde_json::from_slice::<Ask>(&msg.payload), requester_of(&msg)) {
            (Err(e), _) => error_answer(AnswerCode::BadRequest, format!("a follower asks with {{\"from\": seq, \"reader\": id}}: {e}")),
            (_, Requester::Unnamed) => error_answer(AnswerCode::NotPermitted, "a follower from another account must be a NATS user"),
            (Ok(ask), who) => {
                let id = if let Requester::User(user) = who { user } else { ask.reader };
                let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(64).collect();
                let name = follower_consumer(if id.is_empty() { "anonymous" } else { &id });
                match custody_wire::follow::make_consumer(&js, &name, ask.from).await {
                    Ok(()) => {
                        tracing::debug!(consumer = %name, from = ask.from, "follower's consumer made");
                        serde_json::json!({ "consumer": name })
                    }
                    Err(e) => error_answer(AnswerCode::Unavailable, format!("cannot make a consumer to follow with: {e}")),
                }
            }
        };
        let _ = client.publish(reply, answer.to_string().into()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_names_its_key() {
        assert_eq!(subject_key("custody.submit.UABC"), Some("UABC".into()));
    }
}
