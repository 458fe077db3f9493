//! Reading the ledger's streams: for projections, auditors, `verify`,
//! `recover`, authz and the gateway. The one stream follower of custody.
//!
//! Everything is read by JetStream *direct get*, in batches
//! (`$JS.API.DIRECT.GET.<stream>` with `{"seq", "batch"}`, nats-server
//! 2.11+), never through a consumer. Direct get has no side effects and
//! needs no JetStream in the reader's account: a reader in another NATS
//! account imports it as a service, and the server answers on a reply
//! subject it maps itself. Creating a consumer would let a reader choose
//! where the stream's messages are delivered, which is how an actor once
//! wrote into the committed stream (see ARCHITECTURE.md, "Who may use
//! which subject"). Readers learn of new messages from the stream's own
//! subject, imported as a stream: a message there only wakes them up, and
//! what they apply always comes from the stream itself.
//!
//! An entry travels as one message whose payload is the envelope and whose
//! headers carry the chain fields.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};

use crate::subjects::{CHECKPOINTS_STREAM, CHECKPOINTS_SUBJECT, ENTRIES_SUBJECT, LEDGER_STREAM};
use custody_proto::{Entry, Hash};

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
fn link(prev: &mut Head, msgs: Vec<StreamMsg>) -> Result<Vec<Entry>, FollowError> {
    msgs.into_iter()
        .map(|m| {
            let e = entry_of(&m).map_err(|why| FollowError::Broken { seq: m.seq, why: format!("unreadable: {why}") })?;
            if e.seq != m.seq {
                return Err(FollowError::Broken { seq: m.seq, why: format!("stream position {} holds entry {}", m.seq, e.seq) });
            }
            e.check_after(*prev).map_err(|c| FollowError::Broken { seq: c.seq(), why: c.to_string() })?;
            *prev = Some((e.seq, e.hash));
            Ok(e)
        })
        .collect()
}

/// The entry a committed-stream message carries (hash not yet checked).
pub fn entry_of(msg: &StreamMsg) -> Result<Entry, String> {
    Entry::from_headers(|name| msg.headers.get(name).map(|v| v.as_str().to_owned()), msg.payload.to_vec())
}

/// A reader of one stream, through direct get.
#[derive(Clone)]
pub struct Reader {
    client: Client,
    stream: &'static str,
    subject: &'static str,
}

impl Reader {
    /// The committed stream (`CUSTODY_LEDGER`).
    pub fn ledger(client: &Client) -> Reader {
        Reader { client: client.clone(), stream: LEDGER_STREAM, subject: ENTRIES_SUBJECT }
    }

    /// The signed checkpoints (`CUSTODY_CHECKPOINTS`).
    pub fn checkpoints(client: &Client) -> Reader {
        Reader { client: client.clone(), stream: CHECKPOINTS_STREAM, subject: CHECKPOINTS_SUBJECT }
    }

    /// Another stream read the same way (it must allow direct get); its
    /// `subject` wakes a follower. [`Reader::last_seq`] needs a subject
    /// without wildcards.
    pub fn of(client: &Client, stream: &'static str, subject: &'static str) -> Reader {
        Reader { client: client.clone(), stream, subject }
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
            let seq = headers.get("Nats-Sequence").and_then(|v| v.as_str().parse().ok());
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
    pub fn entries(&self, after: Head, until: Option<u64>) -> impl futures::Stream<Item = Result<Vec<Entry>, FollowError>> + Send + 'static {
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
                if st.wake.is_none() {
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
}

impl Ahead {
    fn new(reader: Reader, from: u64, until: Option<u64>) -> Ahead {
        let from = from.max(1);
        Ahead { reader, expected: from, next_request: from, until, inflight: futures::stream::FuturesOrdered::new() }
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
