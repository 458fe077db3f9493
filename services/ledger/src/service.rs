//! The ledger on NATS: four stages joined by bounded channels, so that
//! signature checking, the disk and the network overlap.
//!
//! intake (request-reply + inbox stream) → check (open, batch-verify, parse;
//! off the async threads) → write (custody rules, one atomic batch, one
//! fsync) → respond (receipts) and publish (committed stream, in seq order).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use custody_proto::{ActorKey, Entry, Hash, KeyCache, Outcome};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::ledger::{check_batch, Checked, Ledger, OpenError, Submitted};
use crate::notary::Notary;
use crate::store::{Store, StoreError};
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
    #[error("a ledger stage failed: {0}")]
    Task(String),
}

/// The error of a NATS operation the ledger needed, saying which.
fn nats<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> LedgerError {
    move |e| LedgerError::Nats { what, why: e.to_string() }
}

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
}

impl Config {
    pub fn new(nats_url: impl Into<String>, data_dir: PathBuf, authority: ActorKey) -> Config {
        Config { nats_url: nats_url.into(), data_dir, authority, checkpoint_every: Duration::from_secs(10), nkey: None, clock: crate::clock::Clock::system() }
    }
}

/// Where a submission's outcome must go.
enum Reply {
    /// A request-reply inbox: answer once.
    Core(Subject),
    /// A message of the inbox stream: publish the outcome on the receipts
    /// stream, then ack the message.
    Inbox(Box<jetstream::Message>),
}

struct Submission {
    raw: Bytes,
    /// The actor key the subject it came on names (its last token).
    subject_key: Option<String>,
    reply: Reply,
}

/// The actor a submission subject names: `custody.submit.<key>` or
/// `custody.inbox.<key>`.
fn subject_key(subject: &str) -> Option<String> {
    subject.rsplit_once('.').map(|(_, key)| key.to_owned())
}

/// Runs the ledger until `shutdown` completes or a stage fails.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LedgerError> {
    let dir = config.data_dir.clone();
    let authority = config.authority.clone();
    let mut ledger = tokio::task::spawn_blocking(move || Ledger::open(&dir, &authority))
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
        .map_err(|source| LedgerError::Open { dir: config.data_dir.clone(), source })?;
    let key = crate::notary::load_or_create_key(&config.data_dir)?;
    let notary = Arc::new(Notary::new(ledger.take_tree(), key, ledger.store().clone()));
    tracing::info!(head = ?ledger.head().map(|h| h.0), key = %notary.public_key(), "ledger store open and chain verified");

    let client = custody_wire::connect::connect(&config.nats_url, "custody-ledger", config.nkey.as_deref()).await?;
    let js = jetstream::new(client.clone());
    let streams = ensure_streams(&js).await?;
    let published = stream_agrees(&streams.ledger, ledger.store()).await?;

    let (intake_tx, intake_rx) = mpsc::channel::<Submission>(MAX_BATCH * 4);
    let (checked_tx, checked_rx) = mpsc::channel(4);
    let (respond_tx, respond_rx) = mpsc::channel(16);
    let (publish_tx, publish_rx) = mpsc::channel(64);
    let (head_tx, head_rx) = watch::channel(ledger.head());
    let store = ledger.store().clone();

    let mut tasks = tokio::task::JoinSet::new();
    let core = client.queue_subscribe(format!("{SUBMIT_PREFIX}.>"), QUEUE_GROUP.to_owned()).await.map_err(nats("subscribe to submissions"))?;
    tasks.spawn(intake_core(core, intake_tx.clone()));
    tasks.spawn(intake_inbox(streams.inbox, intake_tx));
    tasks.spawn(check_stage(intake_rx, checked_tx));
    tasks.spawn(write_stage(ledger, config.clock.clone(), notary.clone(), checked_rx, respond_tx, publish_tx, head_tx));
    tasks.spawn(respond_stage(client.clone(), js.clone(), respond_rx));
    let checkpoints = Checkpoints { notary: notary.clone(), every: config.checkpoint_every, last: None };
    tasks.spawn(publish_stage(js.clone(), streams.ledger, store, published, publish_rx, checkpoints));
    tasks.spawn(serve_head(client.clone(), head_rx));
    tasks.spawn(serve_proofs(client.clone(), js, notary));
    tracing::info!(url = %config.nats_url, "ledger serving");

    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(LedgerError::Ended),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(LedgerError::Task(e.to_string())),
        },
    };
    tasks.shutdown().await;
    let _ = client.flush().await;
    result
}

struct Streams {
    inbox: stream::Stream,
    ledger: stream::Stream,
}

/// The committed stream, created if absent (also used by benchmarks that
/// build a ledger's stream directly).
pub async fn committed_stream(js: &jetstream::Context) -> Result<stream::Stream, LedgerError> {
    js.get_or_create_stream(stream::Config {
        name: LEDGER_STREAM.into(),
        subjects: vec![ENTRIES_SUBJECT.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(nats("create the committed stream"))
}

async fn ensure_streams(js: &jetstream::Context) -> Result<Streams, LedgerError> {
    let ledger = committed_stream(js).await?;
    let inbox = js
        .get_or_create_stream(stream::Config {
            name: INBOX_STREAM.into(),
            subjects: vec![format!("{INBOX_PREFIX}.>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
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
        ..Default::default()
    })
    .await
    .map_err(nats("create the checkpoints stream"))?;
    js.get_or_create_stream(stream::Config {
        name: RECEIPTS_STREAM.into(),
        subjects: vec![format!("{RECEIPTS_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(nats("create the receipts stream"))?;
    Ok(Streams { inbox, ledger })
}

/// The committed stream's head, once it is shown to agree with the store:
/// not longer than it, and its last entry the store's entry at that seq.
/// Anything else means another writer, or a store that lost entries; the
/// two histories disagree and the ledger must not go on.
async fn stream_agrees(s: &stream::Stream, store: &Store) -> Result<u64, LedgerError> {
    let published = committed_stream_head(s).await?;
    let stored = store.head()?.map_or(0, |h| h.0);
    if published > stored {
        return Err(LedgerError::Disagreement(format!(
            "the committed stream holds entries up to {published} but the store ends at {stored}: \
             the store lost entries, or something other than this ledger wrote on {ENTRIES_SUBJECT}"
        )));
    }
    if published > 0 {
        let msg = s.get_raw_message(published).await.map_err(nats("read the committed stream's head"))?;
        let on_stream = msg.headers.get(HDR_HASH).map(|v| v.as_str().to_owned());
        let in_store = store.get(published)?.map(|e| e.hash.to_hex());
        if on_stream.is_none() || on_stream != in_store {
            return Err(LedgerError::Disagreement(format!(
                "entry {published} on the committed stream is not the store's entry {published}: something other than this ledger wrote on {ENTRIES_SUBJECT}"
            )));
        }
    }
    Ok(published)
}

/// Last ledger seq on the committed stream (its stream sequence).
async fn committed_stream_head(s: &stream::Stream) -> Result<u64, LedgerError> {
    Ok(s.get_info().await.map_err(nats("read the committed stream"))?.state.last_sequence)
}

async fn intake_core(mut sub: async_nats::Subscriber, tx: mpsc::Sender<Submission>) -> Result<(), LedgerError> {
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let subject_key = subject_key(&msg.subject);
        if tx.send(Submission { raw: msg.payload, subject_key, reply: Reply::Core(reply) }).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn intake_inbox(inbox: stream::Stream, tx: mpsc::Sender<Submission>) -> Result<(), LedgerError> {
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
                if tx.send(Submission { raw, subject_key, reply: Reply::Inbox(Box::new(msg)) }).await.is_err() {
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

type CheckedBatch = Vec<(Reply, Checked)>;

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
                let (replies, (checked, cache)): (Vec<Reply>, (Vec<Checked>, KeyCache)) = done;
                caches.push(cache);
                if tx.send(replies.into_iter().zip(checked).collect()).await.is_err() {
                    break;
                }
            }
            first = rx.recv(), if open && inflight.len() < CHECKERS => {
                let Some(first) = first else { open = false; continue };
                let batch = drain(&mut rx, first, MAX_BATCH);
                let (replies, raws): (Vec<Reply>, Vec<Submitted>) =
                    batch.into_iter().map(|s| (s.reply, Submitted { bytes: s.raw.to_vec(), subject_key: s.subject_key })).unzip();
                let mut cache = caches.pop().unwrap_or_default();
                let job = tokio::task::spawn_blocking(move || {
                    let checked = check_batch(raws, &mut cache);
                    (checked, cache)
                });
                inflight.push_back(async move {
                    // A panic while checking is a bug of ours, not input: stop.
                    match job.await {
                        Ok(done) => (replies, done),
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                });
            }
        }
    }
    Ok(())
}

async fn write_stage(
    mut ledger: Ledger,
    clock: crate::clock::Clock,
    notary: Arc<Notary>,
    mut rx: mpsc::Receiver<CheckedBatch>,
    respond: mpsc::Sender<Vec<(Reply, Outcome)>>,
    publish: mpsc::Sender<Vec<Entry>>,
    head: watch::Sender<Option<(u64, Hash)>>,
) -> Result<(), LedgerError> {
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let (replies, checked): (Vec<Reply>, Vec<Checked>) = batch.into_iter().unzip();
        let started = std::time::Instant::now();
        // One clock reading for the whole batch: what `recorded_at` says and
        // what "the future" means for every `occurred_at` in it.
        let admitted = ledger.admit(checked, clock.now());
        let admit_us = started.elapsed().as_micros() as u64;
        // The receipt promise: nothing is answered before this returns.
        tokio::task::block_in_place(|| ledger.commit(&admitted.entries)).map_err(LedgerError::Commit)?;
        tracing::debug!(n = admitted.outcomes.len(), admit_us, commit_us = started.elapsed().as_micros() as u64 - admit_us, "written");
        // Durable: now the tree may cover them.
        notary.append(&admitted.entries);
        if let Some(last) = admitted.entries.last() {
            head.send_replace(Some((last.seq, last.hash)));
            tracing::debug!(entries = admitted.entries.len(), head = last.seq, "committed");
        }
        let _ = respond.send(replies.into_iter().zip(admitted.outcomes).collect()).await;
        if !admitted.entries.is_empty() && publish.send(admitted.entries).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn outcome_bytes(o: &Outcome) -> Bytes {
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec(o).map(Bytes::from).unwrap_or_default()
}

/// The receipts consumers the ledger keeps, one per actor that used the
/// inbox: durable, named by the actor's key, filtered to its receipts.
/// Actors cannot create consumers (their NATS account has no JetStream);
/// they pull from this one, and only from their own.
#[derive(Default)]
struct ReceiptConsumers {
    made: std::collections::HashSet<String>,
}

impl ReceiptConsumers {
    /// Makes the consumer of the actor an inbox subject's key names, once;
    /// a key that is no actor's key gets none.
    async fn ensure(&mut self, js: &jetstream::Context, subject_key: Option<&str>) {
        if subject_key.is_some_and(|k| self.made.contains(k)) {
            return;
        }
        let Some(actor) = receipts_owner(subject_key) else { return };
        let actor = actor.as_str();
        let config = consumer::pull::Config {
            durable_name: Some(actor.to_owned()),
            filter_subject: receipts(actor),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        match js.create_consumer_on_stream(config, RECEIPTS_STREAM).await {
            Ok(_) => {
                self.made.insert(actor.to_owned());
            }
            Err(e) => tracing::warn!(error = %e, actor, "cannot create a receipts consumer; trying again with the next receipt"),
        }
    }
}

async fn respond_stage(client: async_nats::Client, js: jetstream::Context, mut rx: mpsc::Receiver<Vec<(Reply, Outcome)>>) -> Result<(), LedgerError> {
    let mut consumers = ReceiptConsumers::default();
    while let Some(batch) = rx.recv().await {
        let mut durable = Vec::new();
        for (reply, outcome) in batch {
            let body = outcome_bytes(&outcome);
            match reply {
                Reply::Core(subject) => {
                    if let Err(e) = client.publish(subject, body).await {
                        tracing::warn!(error = %e, "cannot send a reply");
                    }
                }
                Reply::Inbox(msg) => {
                    let key = subject_key(&msg.subject);
                    consumers.ensure(&js, key.as_deref()).await;
                    let (subject, headers, message_id) = receipt_message(key.as_deref(), &outcome);
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

/// How an inbox submission's outcome is published: on the receipts
/// subject of the actor whose inbox subject it came on (NATS lets only
/// that actor publish there), with the headers and the message id that
/// make a republish a duplicate. Pure, so that a fuzz target can drive it
/// with any bytes. The event id comes from input: it is escaped into
/// printable ASCII, never put in a header as it came (a CR or LF there
/// would break the protocol, and async-nats panics on one).
pub fn receipt_message(subject_key: Option<&str>, outcome: &Outcome) -> (String, HeaderMap, String) {
    let actor = receipts_owner(subject_key).unwrap_or_else(|| "unattributed".into());
    let (id, tag) = match outcome {
        Outcome::Receipt(r) => (r.id.as_str(), r.seq.to_string()),
        Outcome::Rejected(r) => (r.id.as_deref().unwrap_or_default(), r.code.to_string()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(HDR_EVENT_ID, header_value(id));
    let message_id = header_text(&format!("{actor}:{id}:{tag}"));
    (receipts(&actor), headers, message_id)
}

/// The actor whose receipts an inbox subject's key names, if it is a key.
fn receipts_owner(subject_key: Option<&str>) -> Option<String> {
    subject_key.and_then(|k| k.parse::<ActorKey>().ok()).map(|k| k.to_string())
}

/// Any text as header-safe printable ASCII: control characters, quotes,
/// backslashes and non-ASCII are escaped (`\n`, `\u{..}`). Safe text is
/// unchanged.
pub fn header_text(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return s.to_owned();
    }
    s.escape_default().to_string()
}

/// A header value that cannot fail: the text escaped by [`header_text`].
/// `HeaderValue::from(&str)` panics on CR or LF; this never does.
pub fn header_value(s: &str) -> async_nats::HeaderValue {
    let text = header_text(s);
    text.parse().unwrap_or_default()
}

/// Publishes committed entries on the committed stream, each with the
/// stream's expected last sequence set to `seq - 1`: the stream can hold
/// neither a gap nor a duplicate, and its sequence is the ledger seq.
async fn publish_stage(
    js: jetstream::Context,
    stream: stream::Stream,
    store: Store,
    mut published: u64,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    mut checkpoints: Checkpoints,
) -> Result<(), LedgerError> {
    // After a crash: what was committed but not published goes out first.
    let mut target = store.head()?.map_or(0, |h| h.0);
    loop {
        checkpoints.notary.set_published(published);
        checkpoints.maybe_publish(&js, published).await;
        while published < target {
            match publish_from_store(&js, &store, published, target).await {
                Ok(p) => {
                    published = p;
                    checkpoints.notary.set_published(published);
                }
                Err(e) => {
                    tracing::warn!(error = %e, published, "publishing committed entries failed; resyncing");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    published = resync(&stream, &store, published).await?;
                }
            }
        }
        // Wake up at least once a period, so the last burst gets its checkpoint.
        let entries = match tokio::time::timeout(checkpoints.every, rx.recv()).await {
            Ok(Some(entries)) => entries,
            Ok(None) => return Ok(()),
            Err(_) => continue,
        };
        let Some(last) = entries.last() else { continue };
        target = last.seq;
        if entries[0].seq == published + 1 {
            match publish_entries(&js, &entries).await {
                Ok(()) => {
                    published = target;
                    checkpoints.notary.set_published(published);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publishing committed entries failed; resyncing");
                    published = resync(&stream, &store, published).await?;
                }
            }
        }
    }
}

/// Periodic checkpoints, signed for what the committed stream holds, so
/// an auditor never sees a checkpoint ahead of the entries it covers.
struct Checkpoints {
    notary: Arc<Notary>,
    every: Duration,
    /// When the last one was published, and its size.
    last: Option<(std::time::Instant, u64)>,
}

impl Checkpoints {
    async fn maybe_publish(&mut self, js: &jetstream::Context, published: u64) {
        let due = match self.last {
            None => true,
            Some((at, size)) => size < published && at.elapsed() >= self.every,
        };
        if !due {
            return;
        }
        if !self.notary.first_announcement(published) {
            // Someone asked for this size already: it is on the stream.
            self.last = Some((std::time::Instant::now(), published));
            return;
        }
        match self.notary.checkpoint(published) {
            Ok(c) => {
                if publish_checkpoint(js, &c).await {
                    self.last = Some((std::time::Instant::now(), published));
                } else {
                    self.notary.forget_announcement(published);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign a checkpoint"),
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

/// Answers checkpoint and proof requests. A checkpoint asked for is also
/// published when it is the first for its size, so auditors see a
/// checkpoint for every size anyone was given, and asking again and again
/// cannot grow the stream.
async fn serve_proofs(client: async_nats::Client, js: jetstream::Context, notary: Arc<Notary>) -> Result<(), LedgerError> {
    let mut subs = futures::stream::select_all([
        client.subscribe(CHECKPOINT_SUBJECT).await.map_err(nats("subscribe to checkpoint requests"))?,
        client.subscribe(PROOF_SUBJECT).await.map_err(nats("subscribe to proof requests"))?,
        client.subscribe(CONSISTENCY_SUBJECT).await.map_err(nats("subscribe to consistency requests"))?,
    ]);
    while let Some(msg) = subs.next().await {
        let Some(reply) = msg.reply else { continue };
        let answer = {
            let notary = notary.clone();
            let subject = msg.subject.to_string();
            tokio::task::spawn_blocking(move || notary.answer(&subject, &msg.payload)).await.map_err(|e| LedgerError::Task(e.to_string()))?
        };
        if msg.subject.as_str() == CHECKPOINT_SUBJECT && answer.get("code").is_none() {
            if let Ok(c) = serde_json::from_value::<custody_proto::Checkpoint>(answer.clone()) {
                if notary.first_announcement(c.tree_size) && !publish_checkpoint(&js, &c).await {
                    notary.forget_announcement(c.tree_size);
                }
            }
        }
        let _ = client.publish(reply, answer.to_string().into()).await;
    }
    Ok(())
}

/// After a failed publish: where the stream really ends, checked against
/// the store. NATS being unreachable is not an error (try again later); a
/// stream that disagrees with the store is.
async fn resync(stream: &stream::Stream, store: &Store, published: u64) -> Result<u64, LedgerError> {
    match stream_agrees(stream, store).await {
        Ok(p) => Ok(p),
        Err(e @ LedgerError::Disagreement(_)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the committed stream yet");
            Ok(published)
        }
    }
}

async fn publish_from_store(js: &jetstream::Context, store: &Store, published: u64, target: u64) -> Result<u64, LedgerError> {
    let end = target.min(published + 1024);
    let entries: Vec<Entry> =
        tokio::task::block_in_place(|| store.entries_from(published + 1).take((end - published) as usize).collect::<Result<_, StoreError>>())?;
    publish_entries(js, &entries).await?;
    Ok(end)
}

/// Publishes a run of consecutive entries.
pub async fn publish_committed(js: &jetstream::Context, entries: &[Entry]) -> Result<(), LedgerError> {
    publish_entries(js, entries).await
}

/// Publishes a run of consecutive entries. Every message carries
/// `Nats-Expected-Last-Sequence: seq - 1`, but only the last is acked: the
/// stream applies one connection's messages in order, so if any earlier one
/// had been refused (a gap, a duplicate) the last one's expectation fails
/// too, and the caller resyncs from the stream's real head. One ack per
/// batch instead of per entry.
async fn publish_entries(js: &jetstream::Context, entries: &[Entry]) -> Result<(), LedgerError> {
    let Some((last, rest)) = entries.split_last() else {
        return Ok(());
    };
    let client = js.client();
    for e in rest {
        client.publish_with_headers(ENTRIES_SUBJECT, entry_headers(e), Bytes::from(e.envelope.clone())).await.map_err(nats("publish an entry"))?;
    }
    let publish = jetstream::message::PublishMessage::build().payload(Bytes::from(last.envelope.clone())).headers(entry_headers(last));
    js.send_publish(ENTRIES_SUBJECT, publish).await.map_err(nats("publish an entry"))?.await.map_err(nats("publish an entry"))?;
    Ok(())
}

/// The chain fields of an entry, plus dedup and ordering guards.
fn entry_headers(e: &Entry) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in e.headers() {
        h.insert(name, header_value(&value));
    }
    h.insert("Nats-Msg-Id", header_value(&e.seq.to_string()));
    h.insert("Nats-Expected-Last-Sequence", header_value(&(e.seq - 1).to_string()));
    h
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

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::Refusal;

    #[test]
    fn input_never_reaches_a_header_unescaped() {
        // The id of a refused envelope comes from whatever bytes were sent.
        let refused = Outcome::Rejected(Refusal { id: Some("x\r\ny\u{0}é\\".into()), code: custody_proto::Code::BadSignature, message: "no".into() });
        let (subject, headers, message_id) = receipt_message(Some("not a key"), &refused);
        assert_eq!(subject, "custody.receipts.unattributed");
        let id = headers.get(HDR_EVENT_ID).expect("the id header").as_str();
        assert_eq!(id, r"x\r\ny\u{0}\u{e9}\\");
        assert_eq!(message_id, r"unattributed:x\r\ny\u{0}\u{e9}\\:bad_signature");
        // Safe text is left as it is.
        assert_eq!(header_text("lot-1:2024/09"), "lot-1:2024/09");
        assert_eq!(subject_key("custody.submit.UABC"), Some("UABC".into()));
    }
}
