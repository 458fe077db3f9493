//! Reading the ledger's streams: for projections, auditors, `verify`,
//! `recover`, authz and the gateway. The one stream follower of custody.
//!
//! Everything is read by JetStream *direct get*, in batches
//! (`$JS.API.DIRECT.GET.<stream>` with `{"seq", "batch"}`, nats-server
//! 2.11+). Direct get has no side effects and needs no JetStream in the
//! reader's account: a reader in another NATS account imports it as a
//! service, and the server answers on a reply subject it maps itself.
//! Readers outside the ledger's account never create a consumer: that
//! would let a reader choose where the stream's messages are delivered,
//! which is how an actor once wrote into the committed stream (see
//! ARCHITECTURE.md, "Who may use which subject"). Readers learn of new
//! messages from the stream's own subject, imported as a stream: a message
//! there only wakes them up, and what they apply always comes from the
//! stream itself.
//!
//! A long follower (a projection, authz) reads the committed stream about
//! twice as fast through a pull consumer ([`Reader::pulling`]): it asks the
//! writing ledger for one ([`FOLLOW_SUBJECT`]); the ledger makes it, named
//! by the follower's NATS user and starting where the follower stands, and
//! the follower pulls from it, across accounts, on a reply subject the
//! server chooses. A pull consumer delivers only to the puller, so nobody
//! outside the ledger's account points a consumer anywhere. A standby
//! ledger, inside that account, makes its own ([`Reader::pulling_own`]).
//! Where no ledger answers, or the consumer fails, the follower reads by
//! direct get and asks again later. A follower that pulls needs no
//! wake-ups: its pull waits at the server for the next entry.
//!
//! An entry travels as one message whose payload is the envelope and whose
//! headers carry the chain fields.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::{Client, HeaderMap, HeaderName};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};

use crate::subjects::{follower_next, CHECKPOINTS_STREAM, CHECKPOINTS_SUBJECT, ENTRIES_SUBJECT, FOLLOW_SUBJECT, LEDGER_STREAM};
use custody_proto::{Entry, Hash, Linked};

/// Where a linked history ends: `(seq, hash)` of its last entry, `None`
/// before the first.
pub type Head = Option<(u64, Hash)>;

/// Messages asked for in one direct-get batch.
pub const BATCH: usize = 1024;
/// How long one answer of a batch may take before the read fails.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How often a caught-up follower looks again when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// One message of a stream: its stream sequence, headers and payload.
#[derive(Debug, Clone)]
pub struct StreamMsg {
    pub seq: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Reading a stream failed (NATS, not the ledger): try again later.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot reach the {stream} stream: {why}")]
    Nats { stream: String, why: String },
    #[error("the {stream} stream answered {code}: {why}")]
    Refused { stream: String, code: u16, why: String },
    #[error("the {stream} stream stopped answering")]
    Stalled { stream: String },
    #[error("the {stream} stream sent a message without its position")]
    NoPosition { stream: String },
    #[error("the {stream} stream's consumer gave {got} where {expected} was next")]
    Skipped { stream: String, expected: u64, got: u64 },
}

/// The committed stream did not give a linked history.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// NATS, not the ledger: the follower goes on by itself.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The entry at `seq` cannot be read, is not at its own position, or
    /// does not link to the one before it: the history cannot be trusted.
    #[error("entry {seq}: {why}")]
    Broken { seq: u64, why: String },
}

/// Decodes a batch of committed-stream messages into entries, each at its
/// own stream position and linked (hash and `prev_hash`) to the one before.
fn link(prev: &mut Head, msgs: Vec<StreamMsg>) -> Result<Vec<Linked>, FollowError> {
    msgs.into_iter()
        .map(|m| {
            let e = entry_of(&m).map_err(|why| FollowError::Broken { seq: m.seq, why: format!("unreadable: {why}") })?;
            if e.seq != m.seq {
                return Err(FollowError::Broken { seq: m.seq, why: format!("stream position {} holds entry {}", m.seq, e.seq) });
            }
            let e = e.linked_after(*prev).map_err(|c| FollowError::Broken { seq: c.seq(), why: c.to_string() })?;
            *prev = Some((e.seq, e.hash));
            Ok(e)
        })
        .collect()
}

/// The entry a committed-stream message carries (hash not yet checked).
pub fn entry_of(msg: &StreamMsg) -> Result<Entry, String> {
    // A header name from a static string allocates nothing (from a `&str`
    // it is copied for each lookup): four lookups an entry.
    Entry::from_headers(|name| msg.headers.get(HeaderName::from_static(name)).map(|v| v.as_str()), msg.payload.to_vec())
}

/// A reader of one stream, through direct get (or, for a follower of the
/// committed stream, a pull consumer the ledger makes: [`Reader::pulling`]).
#[derive(Clone)]
pub struct Reader {
    client: Client,
    stream: &'static str,
    subject: &'static str,
    pull: PullFrom,
}

/// Where a reader of the committed stream gets a consumer to pull from.
#[derive(Clone)]
enum PullFrom {
    /// Nowhere: it reads by direct get only.
    Nowhere,
    /// The writing ledger makes it ([`FOLLOW_SUBJECT`]).
    Ledger,
    /// The reader makes it itself, by this name (in the ledger's account).
    Own(Arc<str>),
}

impl Reader {
    /// The committed stream (`CUSTODY_LEDGER`).
    pub fn ledger(client: &Client) -> Reader {
        Reader { client: client.clone(), stream: LEDGER_STREAM, subject: ENTRIES_SUBJECT, pull: PullFrom::Nowhere }
    }

    /// The signed checkpoints (`CUSTODY_CHECKPOINTS`).
    pub fn checkpoints(client: &Client) -> Reader {
        Reader { client: client.clone(), stream: CHECKPOINTS_STREAM, subject: CHECKPOINTS_SUBJECT, pull: PullFrom::Nowhere }
    }

    /// Another stream read the same way (it must allow direct get); its
    /// `subject` wakes a follower. [`Reader::last_seq`] needs a subject
    /// without wildcards.
    pub fn of(client: &Client, stream: &'static str, subject: &'static str) -> Reader {
        Reader { client: client.clone(), stream, subject, pull: PullFrom::Nowhere }
    }

    /// This reader of the committed stream, reading long runs through a
    /// pull consumer the writing ledger makes for it, by direct get where
    /// there is none. One such reader per NATS user at a time: the ledger
    /// names the consumer by the user, and a second reader's request
    /// replaces the first's consumer (which then reads by direct get).
    pub fn pulling(mut self) -> Reader {
        if self.stream == LEDGER_STREAM {
            self.pull = PullFrom::Ledger;
        }
        self
    }

    /// This reader of the committed stream, reading long runs through a
    /// pull consumer it makes itself, named `consumer`: for a reader in
    /// the ledger's own account (a standby replica), which may make
    /// consumers and should not wait on the writer to follow it.
    pub fn pulling_own(mut self, consumer: &str) -> Reader {
        if self.stream == LEDGER_STREAM {
            self.pull = PullFrom::Own(consumer.into());
        }
        self
    }

    fn nats(&self, why: impl std::fmt::Display) -> ReadError {
        ReadError::Nats { stream: self.stream.to_owned(), why: why.to_string() }
    }

    /// Sends one direct-get request and collects its answers: the
    /// messages, until the end-of-batch marker (or the one answer of a
    /// single get). "Not found" is an empty answer.
    async fn ask(&self, body: serde_json::Value, batch: bool) -> Result<Vec<StreamMsg>, ReadError> {
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.map_err(|e| self.nats(e))?;
        let subject = format!("$JS.API.DIRECT.GET.{}", self.stream);
        self.client.publish_with_reply(subject, inbox, body.to_string().into()).await.map_err(|e| self.nats(e))?;
        let mut out = Vec::new();
        loop {
            let msg = match tokio::time::timeout(ANSWER_WAIT, answers.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(self.nats("the connection closed")),
                Err(_) => return Err(ReadError::Stalled { stream: self.stream.to_owned() }),
            };
            match msg.status.map(|s| s.as_u16()) {
                // End of batch; or nothing at or after that seq.
                Some(204) | Some(404) => break,
                Some(code) if code >= 300 => {
                    let why = msg.description.unwrap_or_default();
                    return Err(ReadError::Refused { stream: self.stream.to_owned(), code, why });
                }
                _ => {}
            }
            let headers = msg.headers.unwrap_or_default();
            let seq = headers.get(async_nats::header::NATS_SEQUENCE).and_then(|v| v.as_str().parse().ok());
            let seq = seq.ok_or_else(|| ReadError::NoPosition { stream: self.stream.to_owned() })?;
            out.push(StreamMsg { seq, headers, payload: msg.payload });
            if !batch {
                break;
            }
        }
        let _ = answers.unsubscribe().await;
        Ok(out)
    }

    /// Up to `max` messages from `from` on, in stream order; empty when
    /// the stream holds nothing at or after `from`.
    pub async fn batch(&self, from: u64, max: usize) -> Result<Vec<StreamMsg>, ReadError> {
        self.ask(serde_json::json!({"seq": from.max(1), "batch": max.max(1)}), true).await
    }

    /// [`Reader::batch`], stopping once about `max_bytes` are read (at
    /// least one message): for streams whose messages may each be as
    /// large as NATS allows.
    pub async fn batch_within(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<StreamMsg>, ReadError> {
        self.ask(serde_json::json!({"seq": from.max(1), "batch": max.max(1), "max_bytes": max_bytes.max(1)}), true).await
    }

    /// The message at `seq`, if the stream holds it.
    pub async fn get(&self, seq: u64) -> Result<Option<StreamMsg>, ReadError> {
        let got = self.ask(serde_json::json!({"seq": seq}), false).await?;
        Ok(got.into_iter().next().filter(|m| m.seq == seq))
    }

    /// The stream's last sequence (0 when it is empty).
    pub async fn last_seq(&self) -> Result<u64, ReadError> {
        let got = self.ask(serde_json::json!({"last_by_subj": self.subject}), false).await?;
        Ok(got.first().map_or(0, |m| m.seq))
    }

    /// Every message from `from` to `last` (inclusive), in order; the
    /// stream ends after `last`, or with an error if the stream ends first.
    pub fn range(&self, from: u64, last: u64) -> impl futures::Stream<Item = Result<StreamMsg, ReadError>> + Send + 'static {
        self.batches(from, last).flat_map(|batch| {
            let items: Vec<Result<StreamMsg, ReadError>> = match batch {
                Ok(msgs) => msgs.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
    }

    /// [`Reader::range`] in the batches it was read in.
    fn batches(&self, from: u64, last: u64) -> impl futures::Stream<Item = Result<Vec<StreamMsg>, ReadError>> + Send + 'static {
        let ahead = Ahead::new(self.clone(), from, Some(last));
        futures::stream::unfold((ahead, false), move |(mut ahead, done)| async move {
            if done {
                return None;
            }
            match ahead.next().await {
                Ok(Some(msgs)) => Some((Ok(msgs), (ahead, false))),
                Ok(None) if ahead.expected > last => None,
                Ok(None) => Some((Err(ReadError::Stalled { stream: ahead.reader.stream.to_owned() }), (ahead, true))),
                Err(e) => Some((Err(e), (ahead, true))),
            }
        })
    }

    /// The committed stream's entries after `after` (from seq 1 for
    /// `None`), in batches: each decoded, at its own stream position, and
    /// linked to the one before it (hash and `prev_hash` checked). The one
    /// follower of custody: the projection, authz, the auditor, `verify`
    /// and `recover` read the committed stream through it. With `until`,
    /// it ends after that seq (or at the first read error); without, it
    /// follows new entries forever and goes on by itself after a read
    /// error, which it reports as an item. After a broken link it ends.
    pub fn entries(&self, after: Head, until: Option<u64>) -> impl futures::Stream<Item = Result<Vec<Linked>, FollowError>> + Send + 'static {
        let from = after.map_or(1, |h| h.0 + 1);
        let batches: futures::stream::BoxStream<'static, Result<Vec<StreamMsg>, ReadError>> = match until {
            Some(last) if last < from => futures::stream::empty().boxed(),
            Some(last) => self.batches(from, last).boxed(),
            None => self.follow(from).boxed(),
        };
        futures::stream::unfold((batches, after, false), |(mut batches, mut prev, ended)| async move {
            if ended {
                return None;
            }
            match batches.next().await? {
                Ok(msgs) => {
                    let linked = link(&mut prev, msgs);
                    let broken = linked.is_err();
                    Some((linked, (batches, prev, broken)))
                }
                Err(e) => Some((Err(FollowError::Read(e)), (batches, prev, false))),
            }
        })
    }

    /// Every message from `from` on, in order, and then each new one as it
    /// arrives, without end. Batches come as they were read (at most
    /// [`BATCH`]). A read error is an item; the follower goes on from
    /// where it was after a pause, so a caller may go on or reopen.
    pub fn follow(&self, from: u64) -> impl futures::Stream<Item = Result<Vec<StreamMsg>, ReadError>> + Send + 'static {
        struct State {
            ahead: Ahead,
            wake: Option<async_nats::Subscriber>,
            caught_up: bool,
        }
        let state = State { ahead: Ahead::new(self.clone(), from, None), wake: None, caught_up: false };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.ahead.is_pulling() {
                    // A pull waits at the server for what comes next; a
                    // wake-up would only be a second copy of each entry.
                    st.wake = None;
                    st.caught_up = false;
                } else if st.wake.is_none() {
                    // Best effort: without it the follower polls.
                    st.wake = st.ahead.reader.client.subscribe(st.ahead.reader.subject).await.ok();
                }
                if st.caught_up {
                    st.caught_up = false;
                    match st.wake.as_mut() {
                        Some(w) => {
                            let _ = tokio::time::timeout(IDLE_POLL, w.next()).await;
                            // One read answers every wake-up already queued.
                            while let Some(Some(_)) = w.next().now_or_never() {}
                        }
                        None => tokio::time::sleep(IDLE_POLL).await,
                    }
                }
                match st.ahead.next().await {
                    Ok(Some(msgs)) => return Some((Ok(msgs), st)),
                    Ok(None) => st.caught_up = true,
                    Err(e) => {
                        st.caught_up = true;
                        return Some((Err(e), st));
                    }
                }
            }
        })
    }
}

/// Batches requested ahead.
const DEPTH: usize = 4;

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<StreamMsg>, ReadError>> + Send>>;

/// Reading ahead: up to [`DEPTH`] batch requests in flight, answers taken
/// in order. A batch that comes back short (the stream ended there, or
/// the server capped it) may leave a hole before the next request's start
/// that new messages fill meanwhile, so the requests after it are dropped
/// and asked again from where reading stands.
struct Ahead {
    reader: Reader,
    /// The next sequence to hand out.
    expected: u64,
    /// Where the next request starts.
    next_request: u64,
    until: Option<u64>,
    inflight: futures::stream::FuturesOrdered<Pending>,
    pull: Pull,
}

/// How long the ledger may take to make a follower's consumer.
const CONSUMER_WAIT: Duration = Duration::from_secs(3);
/// How long a follower reads by direct get before asking for a consumer
/// again, after the ledger made none or the consumer failed: at first
/// (a ledger still starting), then at most (doubling in between).
const CONSUMER_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// How long one pull request waits for messages (nanoseconds, as
/// JetStream takes it): a caught-up follower's pulls expire at this pace.
const PULL_EXPIRES_NS: u64 = 1_000_000_000;

/// A follower's pull consumer, where it has one.
enum Pull {
    /// Direct get only.
    Off,
    /// Direct get until then; then ask the ledger for a consumer (and
    /// after that, if it fails, wait this long).
    Later(tokio::time::Instant, Duration),
    On(Pulled),
}

/// A consumer the ledger made, and the pulls outstanding on it.
struct Pulled {
    next: String,
    inbox: String,
    answers: async_nats::Subscriber,
    /// Messages asked for and not yet come.
    credit: u64,
}

impl Ahead {
    fn new(reader: Reader, from: u64, until: Option<u64>) -> Ahead {
        let from = from.max(1);
        let pull = match reader.pull {
            PullFrom::Nowhere => Pull::Off,
            _ => Pull::Later(tokio::time::Instant::now(), CONSUMER_RETRY.0),
        };
        Ahead { reader, expected: from, next_request: from, until, inflight: futures::stream::FuturesOrdered::new(), pull }
    }

    /// Whether it reads through a consumer (at the moment).
    fn is_pulling(&self) -> bool {
        matches!(self.pull, Pull::On(_))
    }

    /// Whether to read through a consumer now: asks the ledger for one
    /// when it is time to. A reader in the middle of direct-get reads
    /// drops them (they are read again through the consumer).
    async fn pulled(&mut self) -> bool {
        let wait = match &self.pull {
            Pull::Off => return false,
            Pull::On(_) => return true,
            Pull::Later(at, _) if tokio::time::Instant::now() < *at => return false,
            Pull::Later(_, wait) => *wait,
        };
        match consumer(&self.reader, self.expected).await {
            Ok(p) => {
                self.reset();
                self.pull = Pull::On(p);
                true
            }
            Err(why) => {
                tracing::debug!(stream = self.reader.stream, why, "no consumer to follow with; reading by direct get");
                self.pull = Pull::Later(tokio::time::Instant::now() + wait, (wait * 2).min(CONSUMER_RETRY.1));
                false
            }
        }
    }

    /// The next run of messages through the consumer (as [`Ahead::next`]).
    /// Any failure drops the consumer: reading goes on by direct get from
    /// where it stands.
    async fn next_pulled(&mut self) -> Result<Option<Vec<StreamMsg>>, ReadError> {
        let Pull::On(p) = &mut self.pull else { return Ok(None) };
        let stream = self.reader.stream;
        let result = next_pulled(&self.reader.client, stream, p, &mut self.expected, self.until).await;
        if result.is_err() {
            self.pull = Pull::Later(tokio::time::Instant::now() + CONSUMER_RETRY.0, CONSUMER_RETRY.0 * 2);
            self.reset();
        }
        result
    }

    fn fill(&mut self) {
        while self.inflight.len() < DEPTH && self.until.is_none_or(|u| self.next_request <= u) {
            let (reader, from) = (self.reader.clone(), self.next_request);
            self.inflight.push_back(Box::pin(async move { reader.batch(from, BATCH).await }));
            self.next_request = self.next_request.saturating_add(BATCH as u64);
        }
    }

    fn reset(&mut self) {
        self.inflight = futures::stream::FuturesOrdered::new();
        self.next_request = self.expected;
    }

    /// The next run of new messages; `None` once caught up (or past `until`).
    async fn next(&mut self) -> Result<Option<Vec<StreamMsg>>, ReadError> {
        if self.until.is_some_and(|u| self.expected > u) {
            return Ok(None);
        }
        if self.pulled().await {
            return self.next_pulled().await;
        }
        loop {
            self.fill();
            let Some(answer) = self.inflight.next().await else { return Ok(None) };
            let msgs = match answer {
                Ok(m) => m,
                Err(e) => {
                    self.reset();
                    return Err(e);
                }
            };
            let short = msgs.len() < BATCH;
            let empty = msgs.is_empty();
            let until = self.until;
            let fresh: Vec<StreamMsg> = msgs.into_iter().filter(|m| m.seq >= self.expected && until.is_none_or(|u| m.seq <= u)).collect();
            if let Some(last) = fresh.last() {
                self.expected = last.seq + 1;
            }
            if short {
                self.reset();
            }
            if !fresh.is_empty() {
                return Ok(Some(fresh));
            }
            if empty || until.is_some_and(|u| self.expected > u) {
                return Ok(None);
            }
        }
    }
}

/// How long a follower's consumer outlives its last pull.
const FOLLOWER_IDLE: Duration = Duration::from_secs(30);

/// Makes the pull consumer `name` of the committed stream, from `from` on,
/// replacing one of that name (a consumer's start cannot change). It
/// delivers only to whoever pulls (on a reply subject the server picks,
/// across accounts too), keeps no acks, lives in memory on one server,
/// and is gone 30 s after its last pull; what a follower reads through it
/// it checks as it checks a direct get (each entry at its seq, linked to
/// the one before). The ledger makes its followers' ([`FOLLOW_SUBJECT`]);
/// a standby makes its own.
pub async fn make_consumer(js: &async_nats::jetstream::Context, name: &str, from: u64) -> Result<(), String> {
    let config = consumer::pull::Config {
        name: Some(name.to_owned()),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: FOLLOWER_IDLE,
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    let _ = js.delete_consumer_from_stream(name, LEDGER_STREAM).await;
    js.create_consumer_on_stream(config, LEDGER_STREAM).await.map(drop).map_err(|e| e.to_string())
}

/// A consumer of the committed stream from `from` on: asked of the
/// ledger, or made by the reader itself.
async fn consumer(reader: &Reader, from: u64) -> Result<Pulled, String> {
    let client = &reader.client;
    let inbox = client.new_inbox();
    let name = match &reader.pull {
        PullFrom::Nowhere => return Err("this reader reads by direct get only".into()),
        PullFrom::Own(name) => {
            let made = tokio::time::timeout(CONSUMER_WAIT, make_consumer(&async_nats::jetstream::new(client.clone()), name, from)).await;
            made.map_err(|_| "JetStream did not make the consumer in time".to_owned())??;
            name.to_string()
        }
        PullFrom::Ledger => {
            // Names the consumer only where NATS names no user (no accounts).
            let id = inbox.rsplit('.').next().unwrap_or_default().to_owned();
            let body = serde_json::json!({"from": from, "reader": id});
            let answer = crate::query::request(client, FOLLOW_SUBJECT, &body, CONSUMER_WAIT).await.map_err(|e| e.to_string())?;
            if let Some(e) = crate::query::ErrorAnswer::of(&answer) {
                return Err(e.message);
            }
            answer["consumer"].as_str().ok_or("the ledger named no consumer")?.to_owned()
        }
    };
    let answers = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
    Ok(Pulled { next: follower_next(&name), inbox, answers, credit: 0 })
}

/// The seq a consumer's message stands at, from its reply subject
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<time>.<pending>`,
/// or with domain and account before the stream, and a token after).
fn consumer_seq(reply: &str) -> Option<u64> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let at = match tokens.len() {
        9 => 5,
        n if n >= 11 => 7,
        _ => return None,
    };
    tokens.get(at)?.parse().ok()
}

/// Reads the next run through a pull consumer: keeps up to two batches
/// asked for, and hands out what came, in order, at most [`BATCH`].
/// `None` once a pull expired with nothing new (caught up), or past `until`.
async fn next_pulled(client: &Client, stream: &str, p: &mut Pulled, expected: &mut u64, until: Option<u64>) -> Result<Option<Vec<StreamMsg>>, ReadError> {
    let nats = |why: &dyn std::fmt::Display| ReadError::Nats { stream: stream.to_owned(), why: why.to_string() };
    // Pulls of a whole batch (or what is left before `until`), asked once
    // no more than one batch is owed: a pull is a request the consumer
    // keeps waiting, and it keeps only so many.
    let left = until.map_or(u64::MAX, |u| (u + 1).saturating_sub(*expected));
    while p.credit <= BATCH as u64 && p.credit < left {
        let ask = (left - p.credit).min(BATCH as u64);
        let body = serde_json::json!({"batch": ask, "expires": PULL_EXPIRES_NS});
        client.publish_with_reply(p.next.clone(), p.inbox.clone(), body.to_string().into()).await.map_err(|e| nats(&e))?;
        p.credit += ask;
    }
    // Where this run stands; `expected` moves only when the run is
    // handed out, so that a failure part-way leaves nothing unread.
    let mut at = *expected;
    let mut out: Vec<StreamMsg> = Vec::new();
    let mut done = |out: Vec<StreamMsg>, at: u64| {
        *expected = at;
        Ok(Some(out))
    };
    loop {
        let msg = if out.is_empty() {
            match tokio::time::timeout(ANSWER_WAIT, p.answers.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(nats(&"the connection closed")),
                Err(_) => return Err(ReadError::Stalled { stream: stream.to_owned() }),
            }
        } else {
            match p.answers.next().now_or_never() {
                Some(Some(m)) => m,
                _ => return done(out, at),
            }
        };
        match msg.status.map(|s| s.as_u16()) {
            // A pull expired, or found nothing: what it had not delivered
            // will not come.
            Some(404) | Some(408) => {
                let left =
                    msg.headers.as_ref().and_then(|h| h.get(HeaderName::from_static("Nats-Pending-Messages"))).and_then(|v| v.as_str().parse::<u64>().ok());
                p.credit = left.map_or(0, |l| p.credit.saturating_sub(l));
                if out.is_empty() {
                    return Ok(None);
                }
                return done(out, at);
            }
            Some(100) => continue,
            Some(code) if code >= 300 => {
                let why = msg.description.unwrap_or_default();
                return Err(ReadError::Refused { stream: stream.to_owned(), code, why });
            }
            _ => {}
        }
        let seq = msg.reply.as_deref().and_then(consumer_seq).ok_or_else(|| ReadError::NoPosition { stream: stream.to_owned() })?;
        if seq != at {
            return Err(ReadError::Skipped { stream: stream.to_owned(), expected: at, got: seq });
        }
        p.credit = p.credit.saturating_sub(1);
        at = seq + 1;
        out.push(StreamMsg { seq, headers: msg.headers.unwrap_or_default(), payload: msg.payload });
        if out.len() >= BATCH || until.is_some_and(|u| at > u) {
            return done(out, at);
        }
    }
}
