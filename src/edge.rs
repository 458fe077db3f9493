//! An edge: a mine's own nats-server, a leaf node of the hub, that keeps
//! taking its actor's submissions while the satellite link is down.
//!
//! The edge server has two NATS accounts of its own:
//!
//! | account | users | holds |
//! |---|---|---|
//! | `MINE` | the mine's actor (its producers connect with its key, as at the hub), the edge's forwarder (`edge.nk`) | JetStream (its own domain): `CUSTODY_OUTBOX`, `CUSTODY_RECEIPTS` |
//! | `UPLINK` | the forwarder's uplink (`uplink.nk`) | nothing; bound to the leaf connection |
//!
//! A producer at the mine submits exactly as at the hub, on
//! `custody.submit.<key>` (request-reply, batches too) or
//! `custody.inbox.<key>`. The outbox stream captures both subjects, so the
//! answer it gets at once is JetStream's acknowledgement that the envelope
//! is on the edge's disk (`sync_interval: always`): a
//! [`crate::client::Queued`], not a receipt. The submission subjects live
//! in `MINE` only, so nothing a producer sends goes to the hub directly.
//!
//! The forwarder reads the outbox in order and sends it to the hub as
//! batch requests (`Custody-Batch: ndjson`) from `UPLINK`, whose only way
//! out is the leaf connection. That connection logs in to the hub with the
//! actor's own key, so the hub's authorization (written by `custody authz`
//! from the registry) gives it that actor's subjects and replies only.
//! Each outcome the ledger sends back is stored on the edge's own
//! `CUSTODY_RECEIPTS` (the same subjects, message ids and per-actor
//! consumer as the hub's), and only then is the outbox trimmed past it. A
//! crash anywhere sends the unanswered part again with the same bytes; the
//! ledger answers an event id it holds with its first receipt (and a
//! different envelope under that id with `id_conflict`), so each envelope
//! is one entry however often it travels, and the receipts stream drops
//! the repeated receipt by its message id.
//!
//! The hub does not source the edge's stream: sourcing would need the
//! leaf bound to the hub's `CUSTODY` account, where subject permissions
//! cannot see what a consumer request asks for (ARCHITECTURE.md, "Who may
//! use which subject"). Forwarding as a client keeps the hub's layout and
//! its one write path, and the order is the outbox's.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use custody_proto::Outcome;
use custody_wire::follow::{Reader, StreamMsg};
use custody_wire::health::Health;
use custody_wire::subjects::{self, BATCH_MAX_ENVELOPES, BATCH_NDJSON, HDR_BATCH, OUTBOX_STREAM, RECEIPTS_PREFIX, RECEIPTS_STREAM};
use futures::FutureExt as _;

use crate::client::{answers_of, request_within, Answer};
use crate::natsd::{NatsServer, Setup};

/// The forwarder's key in `MINE` (full use of the edge's JetStream).
pub const FORWARDER_KEY: &str = "edge.nk";
/// The uplink's key in `UPLINK`.
const UPLINK_KEY: &str = "uplink.nk";
/// The accounts and the leaf remote; it holds the actor's seed, so only
/// its owner may read it.
const ACCOUNTS_FILE: &str = "edge-accounts.conf";
/// How long one forwarded batch may wait for the hub before it goes again.
const ATTEMPT: Duration = Duration::from_secs(30);
/// How often an idle forwarder looks at the outbox.
const IDLE: Duration = Duration::from_millis(50);
/// At most this much of the outbox is held in memory (a producer's batch
/// may be as large as a NATS message).
const READ_BYTES: usize = 8 << 20;

/// What `custody edge` runs.
pub struct Config {
    /// The hub's leaf node URLs (`nats-leaf://host:port`), comma-separated.
    pub hub: String,
    /// The CA that signed the hub's leaf node certificates (`custody
    /// certs`): the link is then TLS, checked against it.
    pub hub_ca: Option<PathBuf>,
    /// The mine's actor: its producers submit with it, and the leaf
    /// connection logs in to the hub with it.
    pub actor: nkeys::KeyPair,
    /// The edge's folder: its nats-server's JetStream, its keys.
    pub data: PathBuf,
    /// Where producers connect (a free port when absent).
    pub port: Option<u16>,
    /// The edge's JetStream domain.
    pub domain: String,
    /// How the edge says how it is (`/readyz`, `custody.status.edge` on
    /// its own server).
    pub health: Health,
}

/// A running edge server.
pub struct Edge {
    pub server: NatsServer,
    /// The actor's public key.
    pub actor: String,
    forwarder_seed: String,
    uplink_seed: String,
}

/// Starts the edge's nats-server (its accounts and its leaf remote
/// written first).
pub fn start(config: &Config) -> anyhow::Result<Edge> {
    std::fs::create_dir_all(&config.data).with_context(|| format!("cannot create {}", config.data.display()))?;
    let forwarder = crate::keys::load_or_create(&config.data.join(FORWARDER_KEY))?;
    let uplink = crate::keys::load_or_create(&config.data.join(UPLINK_KEY))?;
    let actor_seed = config.actor.seed().map_err(|e| anyhow::anyhow!("the actor key has no seed: {e}"))?;
    let accounts = config.data.join(ACCOUNTS_FILE);
    let hub_ca = config.hub_ca.as_deref().map(std::path::absolute).transpose()?;
    let text = accounts_text(&config.actor.public_key(), &forwarder.public_key(), &uplink.public_key(), &actor_seed, &config.hub, hub_ca.as_deref())?;
    custody_wire::files::write_whole(&accounts, text.as_bytes(), custody_wire::files::Mode::Private)?;
    let setup = Setup { include: Some(accounts), domain: Some(config.domain.clone()), port: config.port, ..Setup::default() };
    let server = NatsServer::start_as(&config.data.join("nats"), setup)?;
    Ok(Edge {
        server,
        actor: config.actor.public_key(),
        forwarder_seed: forwarder.seed().map_err(|e| anyhow::anyhow!("{e}"))?,
        uplink_seed: uplink.seed().map_err(|e| anyhow::anyhow!("{e}"))?,
    })
}

fn quoted(list: &[String]) -> String {
    list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

/// The edge's accounts (table above) and its one leaf remote.
fn accounts_text(actor: &str, forwarder: &str, uplink: &str, actor_seed: &str, hub: &str, hub_ca: Option<&std::path::Path>) -> anyhow::Result<String> {
    let urls: Vec<String> = hub.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
    anyhow::ensure!(!urls.is_empty(), "--hub names no leaf node URL (nats-leaf://host:port, as `custody up` prints)");
    let own_inbox = format!("{}.>", custody_wire::connect::inbox_prefix(actor));
    let tls = hub_ca.map(|ca| format!(", tls: {{ ca_file: {:?} }}", ca.display().to_string())).unwrap_or_default();
    let actor_may = [
        subjects::submit(actor),
        subjects::inbox(actor),
        format!("$JS.API.CONSUMER.MSG.NEXT.{RECEIPTS_STREAM}.{actor}"),
        format!("$JS.ACK.{RECEIPTS_STREAM}.{actor}.>"),
    ];
    Ok(format!(
        "# Written by custody edge; do not edit. Holds the actor's seed.\n\
         accounts {{\n  \
           MINE {{\n    jetstream: enabled\n    users: [\n      \
             {{ nkey: {actor:?}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{own_inbox:?}] }} }} }}\n      \
             {{ nkey: {forwarder:?} }}\n    ]\n  }}\n  \
           UPLINK {{\n    users: [\n      \
             {{ nkey: {uplink:?}, permissions: {{ publish: {{ allow: [{:?}] }}, subscribe: {{ allow: [{own_inbox:?}] }} }} }}\n    ]\n  }}\n\
         }}\n\
         leafnodes {{\n  remotes: [\n    {{ urls: [{}], account: \"UPLINK\", nkey: {actor_seed:?}{tls} }}\n  ]\n}}\n",
        quoted(&actor_may),
        subjects::submit(actor),
        quoted(&urls),
    ))
}

impl Edge {
    /// Connects to the edge as its forwarder (`MINE`).
    pub async fn local(&self) -> anyhow::Result<async_nats::Client> {
        Ok(custody_wire::connect::connect(&self.server.url, "custody-edge", Some(&self.forwarder_seed)).await?)
    }

    /// Makes the outbox and the receipts stream, and the actor's
    /// receipts consumer, if they are not there yet.
    pub async fn streams(&self, local: &async_nats::Client) -> anyhow::Result<()> {
        let js = jetstream::new(local.clone());
        js.get_or_create_stream(outbox_config(&self.actor)).await.context("cannot create the outbox")?;
        let receipts = stream::Config { allow_direct: true, ..custody_wire::receipts::stream_config(1) };
        js.get_or_create_stream(receipts).await.context("cannot create the edge's receipts stream")?;
        Ok(())
    }

    /// Forwards the outbox to the hub until `stop`, in order. `health`
    /// (ready while the edge runs: it takes submissions, link or no link)
    /// and `custody_edge_outbox_depth` say how many wait for the hub.
    pub async fn forward(&self, local: async_nats::Client, health: Health, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let uplink = custody_wire::connect::connect_replying_as(&self.server.url, "custody-edge-uplink", &self.uplink_seed, &self.actor).await?;
        let forwarder = Forwarder::new(local.clone(), uplink, self.actor.clone());
        health.update(|s| s.role = "forwarding".into());
        health.set_ready(Ok(()));
        let mut background = tokio::task::JoinSet::new();
        background.spawn(custody_wire::health::answer_status(local.clone(), health.clone()).map(drop));
        background.spawn(watch_outbox(jetstream::new(local), health));
        tokio::select! {
            () = stop => Ok(()),
            done = forwarder.run() => done,
        }
    }
}

/// Every second, how many envelopes wait in the outbox: the edge's lag.
async fn watch_outbox(js: jetstream::Context, health: Health) {
    let depth = metrics::gauge!("custody_edge_outbox_depth");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Ok(mut outbox) = js.get_stream(OUTBOX_STREAM).await {
            if let Ok(info) = outbox.info().await {
                depth.set(info.state.messages as f64);
                health.update(|s| s.lag = Some(info.state.messages));
            }
        }
    }
}

/// The outbox: every submission subject of the actor, on disk, read by
/// direct get, trimmed by the forwarder once answered.
fn outbox_config(actor: &str) -> stream::Config {
    stream::Config {
        name: OUTBOX_STREAM.into(),
        subjects: vec![subjects::submit(actor), subjects::inbox(actor)],
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    }
}

/// One request to the hub: outbox messages `first..=last`.
struct Forwarding {
    last: u64,
    body: Bytes,
    batch: bool,
    /// Envelopes it carries, when the forwarder put the batch together.
    envelopes: Option<usize>,
}

/// Groups outbox messages into the next request: consecutive single
/// envelopes into one batch of at most [`BATCH_MAX_ENVELOPES`] and
/// `max_bytes`; a producer's own batch, or an envelope that could not
/// travel inside a batch unchanged (empty, or holding a line break), alone
/// and as it came.
fn next_request(msgs: &[StreamMsg], max_bytes: usize) -> Option<Forwarding> {
    let first = msgs.first()?;
    let alone = |m: &StreamMsg| {
        m.headers.get(HDR_BATCH).is_some() || m.payload.iter().all(u8::is_ascii_whitespace) || m.payload.iter().any(|b| *b == b'\n' || *b == b'\r')
    };
    if alone(first) {
        let batch = first.headers.get(HDR_BATCH).is_some();
        return Some(Forwarding { last: first.seq, body: first.payload.clone(), batch, envelopes: (!batch).then_some(1) });
    }
    let mut body = Vec::new();
    let mut last = first.seq;
    let mut n = 0;
    for m in msgs {
        if alone(m) || n == BATCH_MAX_ENVELOPES || (n > 0 && body.len() + m.payload.len() + 1 > max_bytes) {
            break;
        }
        body.extend_from_slice(&m.payload);
        body.push(b'\n');
        last = m.seq;
        n += 1;
    }
    Some(Forwarding { last, body: body.into(), batch: true, envelopes: Some(n) })
}

struct Forwarder {
    local: async_nats::Client,
    js: jetstream::Context,
    uplink: async_nats::Client,
    actor: String,
    consumers: custody_wire::receipts::Consumers,
}

impl Forwarder {
    fn new(local: async_nats::Client, uplink: async_nats::Client, actor: String) -> Forwarder {
        let js = jetstream::new(local.clone());
        Forwarder { local, js, uplink, actor, consumers: Default::default() }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let outbox = Reader::of(&self.local, OUTBOX_STREAM, "custody.>");
        let stream = self.js.get_stream(OUTBOX_STREAM).await.context("no outbox")?;
        self.consumers.ensure(&self.js, Some(&self.actor)).await;
        // Read and not yet answered, in order; each message is read once.
        let mut pending: VecDeque<StreamMsg> = VecDeque::new();
        let mut next = stream.cached_info().state.first_sequence;
        loop {
            if pending.is_empty() {
                let read = outbox.batch_within(next, BATCH_MAX_ENVELOPES, READ_BYTES).await?;
                let Some(last) = read.last() else {
                    tokio::time::sleep(IDLE).await;
                    continue;
                };
                next = last.seq + 1;
                pending.extend(read);
            }
            let max_bytes = self.uplink.server_info().max_payload.saturating_sub(4096).max(1);
            let Some(request) = next_request(pending.make_contiguous(), max_bytes) else { continue };
            let started = Instant::now();
            let mut outcomes = self.send(&request).await?;
            // Over the actor's quota at the hub: what was answered before
            // the first `rate_limited` is kept and trimmed, the rest stays
            // in the outbox and goes again once the hub says it may.
            let limited = outcomes.iter().position(|o| matches!(o, Outcome::Rejected(r) if r.code == custody_proto::Code::RateLimited));
            if let Some(i) = limited {
                let wait = match &outcomes[i] {
                    Outcome::Rejected(r) => Duration::from_millis(r.retry_after_ms.unwrap_or(1_000)),
                    Outcome::Receipt(_) => Duration::from_secs(1),
                };
                outcomes.truncate(i);
                self.keep(&outcomes).await?;
                if i > 0 {
                    let through = pending[i - 1].seq;
                    stream.purge().sequence(through + 1).await.context("cannot trim the outbox")?;
                    pending.retain(|m| m.seq > through);
                }
                tracing::info!(answered = i, wait_ms = wait.as_millis() as u64, "over the actor's quota at the hub; sending the rest later");
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                continue;
            }
            let refused = outcomes.iter().filter(|o| matches!(o, Outcome::Rejected(_))).count();
            self.keep(&outcomes).await?;
            // Only now: a crash before this sends them again, harmlessly.
            stream.purge().sequence(request.last + 1).await.context("cannot trim the outbox")?;
            pending.retain(|m| m.seq > request.last);
            tracing::info!(envelopes = outcomes.len(), refused, through = request.last, took_ms = started.elapsed().as_millis() as u64, "forwarded to the hub");
        }
    }

    /// Sends one request until the hub's ledger answers it, however long
    /// the link is down.
    async fn send(&self, request: &Forwarding) -> anyhow::Result<Vec<Outcome>> {
        let headers = request.batch.then(|| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(HDR_BATCH, BATCH_NDJSON);
            h
        });
        let forever = Duration::from_secs(100 * 365 * 24 * 3600);
        let reply = request_within(&self.uplink, subjects::submit(&self.actor), headers, request.body.clone(), ATTEMPT, forever).await?;
        let answers = answers_of(&reply, request.envelopes)?;
        answers.into_iter().map(Answer::outcome).collect()
    }

    /// Stores each outcome on the edge's receipts stream, as the hub's
    /// ledger stores an inbox submission's.
    async fn keep(&mut self, outcomes: &[Outcome]) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let (subject, headers, message_id) = custody_wire::receipts::message(Some(&self.actor), outcome);
            let body = serde_json::to_vec(outcome)?;
            let publish = jetstream::message::PublishMessage::build().payload(body.into()).headers(headers).message_id(message_id);
            acks.push(self.js.send_publish(subject, publish).await.context("cannot store a receipt")?);
        }
        for ack in acks {
            ack.await.context("the edge did not store a receipt")?;
        }
        Ok(())
    }
}

/// Runs an edge until `stop`: its server, the streams, the forwarder.
/// `ready` is told the URL producers connect to.
pub async fn run(config: Config, ready: impl FnOnce(&Edge), stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let edge = start(&config)?;
    let local = edge.local().await?;
    edge.streams(&local).await?;
    ready(&edge);
    edge.forward(local, config.health.clone(), stop).await
}

/// What the edge holds for its actor: each outcome once (a receipt stored
/// again after a crash is the same message id), in the order they came,
/// and how many envelopes are still queued.
pub async fn receipts(local: &async_nats::Client) -> anyhow::Result<(Vec<Outcome>, u64)> {
    use futures::StreamExt as _;
    let js = jetstream::new(local.clone());
    let mut receipts = js.get_stream(RECEIPTS_STREAM).await.context("no receipts stream: is this an edge?")?;
    let state = receipts.info().await?.state.clone();
    let mut outbox = js.get_stream(OUTBOX_STREAM).await.context("no outbox: is this an edge?")?;
    let queued = outbox.info().await?.state.messages;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    if state.messages > 0 {
        let reader = Reader::of(local, RECEIPTS_STREAM, RECEIPTS_PREFIX);
        let mut all = std::pin::pin!(reader.range(state.first_sequence, state.last_sequence));
        while let Some(msg) = all.next().await {
            let msg = msg?;
            let id = msg.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_else(|| msg.seq.to_string());
            if seen.insert(id) {
                out.push(serde_json::from_slice(&msg.payload).context("a stored receipt is not an outcome")?);
            }
        }
    }
    Ok((out, queued))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, body: &str, batch: bool) -> StreamMsg {
        let mut headers = async_nats::HeaderMap::new();
        if batch {
            headers.insert(HDR_BATCH, BATCH_NDJSON);
        }
        StreamMsg { seq, headers, payload: Bytes::from(body.to_owned()) }
    }

    #[test]
    fn singles_travel_together_and_anything_else_alone_as_it_came() {
        let msgs = [msg(5, "{\"a\":1}", false), msg(6, "{\"a\":2}", false), msg(7, "x\ny", true), msg(8, "{}", false)];
        let r = next_request(&msgs, 1 << 20).unwrap();
        assert_eq!((r.last, r.batch, r.envelopes, &r.body[..]), (6, true, Some(2), &b"{\"a\":1}\n{\"a\":2}\n"[..]));
        let r = next_request(&msgs[2..], 1 << 20).unwrap();
        assert_eq!((r.last, r.batch, r.envelopes, &r.body[..]), (7, true, None, &b"x\ny"[..]));
        // An envelope with a line break in it would not be the same bytes in a batch.
        let r = next_request(&[msg(9, "{\n}", false), msg(10, "{}", false)], 1 << 20).unwrap();
        assert_eq!((r.last, r.batch, r.envelopes), (9, false, Some(1)));
        // The size bound closes a batch, never splits an envelope.
        let r = next_request(&msgs[..2], 10).unwrap();
        assert_eq!((r.last, r.envelopes), (5, Some(1)));
        let many: Vec<StreamMsg> = (1..=1500).map(|i| msg(i, "{}", false)).collect();
        assert_eq!(next_request(&many, 1 << 20).unwrap().envelopes, Some(BATCH_MAX_ENVELOPES));
    }
}
