//! Submitting envelopes the way any producer would: request-reply on the
//! signer's submission subject, retrying with the same bytes (the event id
//! makes a retry harmless) until the ledger answers.

use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use custody_proto::Outcome;
use custody_wire::subjects;

/// The nkey seed this process connects as (`--nkey`), set once at start.
static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the NATS identity of this process from an nkey seed file.
pub fn set_identity_file(path: &std::path::Path) -> anyhow::Result<()> {
    let key = crate::keys::load(path).with_context(|| format!("--nkey {}", path.display()))?;
    let seed = key.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Which key, said once: the file a unit names is not always the one
    // an operator thinks (`custody key show FILE` prints the same).
    tracing::info!(file = %path.display(), public_key = %key.public_key(), "logging in to NATS with this key");
    let _ = IDENTITY.set(seed);
    Ok(())
}

/// An actor's signing key (`submit`, `event`, `import --key`): loaded,
/// said which it is, and, when no `--nkey` was given, also the NATS login
/// (an actor's signing key is its login too).
pub fn signing_key(path: &std::path::Path) -> anyhow::Result<nkeys::KeyPair> {
    let key = crate::keys::load(path)?;
    tracing::info!(file = %path.display(), public_key = %key.public_key(), "signing events with this key");
    if identity().is_none() {
        set_identity_file(path)?;
    }
    Ok(key)
}

/// The nkey seed this process connects as, if one was given.
pub fn identity() -> Option<String> {
    IDENTITY.get().cloned()
}

/// How long to keep retrying one envelope while the ledger is unreachable.
pub const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

/// The signer's key of an envelope, for its subject.
pub use custody_wire::subjects::signer;

/// Sends one envelope and waits for its receipt or rejection.
pub async fn submit(client: &async_nats::Client, raw: Bytes) -> anyhow::Result<Outcome> {
    submit_to(client, subjects::submit(&signer(&raw)), raw).await
}

/// [`submit`] on a subject the caller already knows (its own).
pub async fn submit_to(client: &async_nats::Client, subject: String, raw: Bytes) -> anyhow::Result<Outcome> {
    submit_patiently(client, subject, raw, Duration::from_secs(5)).await
}

/// [`submit_to`] waiting at most `attempt` for each answer before sending
/// the same bytes again.
pub async fn submit_patiently(client: &async_nats::Client, subject: String, raw: Bytes, attempt: Duration) -> anyhow::Result<Outcome> {
    let answer = request_patiently(client, subject, None, raw, attempt).await?;
    serde_json::from_slice(&answer).context("the ledger's answer is not an outcome")
}

/// What an edge answers a submission with (`custody edge`): JetStream's
/// acknowledgement that the envelope, or the batch, is durably queued in
/// the edge's outbox. The ledger's own outcome comes later, once the edge
/// reaches the hub, on the actor's receipts ([`receipts`], or `custody
/// edge receipts`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Queued {
    pub stream: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// The answer to one envelope: the ledger's outcome, or an edge's word
/// that it is queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Outcome(Outcome),
    Queued(Queued),
}

impl Answer {
    /// The line `custody submit` prints for it (the outcome, or at an edge
    /// `{"id", "queued"}`: durably queued, the receipt follows), and
    /// whether it is a refusal.
    pub fn line(&self, envelope: &[u8]) -> (serde_json::Value, bool) {
        match self {
            Answer::Outcome(o) => (serde_json::to_value(o).unwrap_or_default(), matches!(o, Outcome::Rejected(_))),
            Answer::Queued(queued) => {
                let id = custody_proto::envelope::Opened::payload_of(envelope)
                    .ok()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                    .and_then(|v| v.get("id").cloned());
                (serde_json::json!({"id": id, "queued": queued}), false)
            }
        }
    }

    /// The ledger's outcome; an error if an edge only queued it.
    pub fn outcome(self) -> anyhow::Result<Outcome> {
        match self {
            Answer::Outcome(o) => Ok(o),
            Answer::Queued(q) => bail!("queued at an edge ({} seq {}), not yet answered by the ledger", q.stream, q.seq),
        }
    }
}

/// The outcomes a reply to a batch request of `n` envelopes carries: an
/// array of them, one refusal of the whole request (as many times), or an
/// edge's acknowledgement that the batch is queued. `n` = `None` takes an
/// array of any length.
pub fn answers_of(reply: &[u8], n: Option<usize>) -> anyhow::Result<Vec<Answer>> {
    if let Ok(outcomes) = serde_json::from_slice::<Vec<Outcome>>(reply) {
        if let Some(n) = n {
            anyhow::ensure!(outcomes.len() == n, "the ledger answered {} outcomes for {n} envelopes", outcomes.len());
        }
        return Ok(outcomes.into_iter().map(Answer::Outcome).collect());
    }
    let one = match serde_json::from_slice::<Outcome>(reply) {
        Ok(o) => Answer::Outcome(o),
        Err(_) => Answer::Queued(serde_json::from_slice(reply).context("the answer is neither outcomes, a refusal nor an edge's acknowledgement")?),
    };
    Ok(vec![one; n.unwrap_or(1)])
}

/// Sends envelopes as batch requests (`Custody-Batch: ndjson`): each run of
/// one signer's envelopes on its subject, at most
/// [`subjects::BATCH_MAX_ENVELOPES`] and one NATS message each, runs one
/// after the other. The outcomes, in order, are each what the envelope
/// alone would have got; a batch sent again after no answer is answered
/// the same (event ids make a retry harmless).
pub async fn submit_batch(client: &async_nats::Client, envelopes: &[Bytes]) -> anyhow::Result<Vec<Answer>> {
    // Room for the headers and the protocol line.
    let max_bytes = client.server_info().max_payload.saturating_sub(4096).max(1);
    let mut out = Vec::with_capacity(envelopes.len());
    let mut i = 0;
    while i < envelopes.len() {
        let key = signer(&envelopes[i]);
        let mut body = Vec::new();
        let mut n = 0;
        while let Some(e) = envelopes.get(i + n) {
            let fits = n == 0 || (n < subjects::BATCH_MAX_ENVELOPES && body.len() + e.len() < max_bytes);
            if !fits || signer(e) != key {
                break;
            }
            body.extend_from_slice(e);
            body.push(b'\n');
            n += 1;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::HDR_BATCH, subjects::BATCH_NDJSON);
        let answer = request_patiently(client, subjects::submit(&key), Some(headers), body.into(), Duration::from_secs(30)).await?;
        out.extend(answers_of(&answer, Some(n))?);
        i += n;
    }
    Ok(out)
}

/// One request, sent again with the same bytes until the ledger answers
/// or [`SUBMIT_PATIENCE`] runs out.
async fn request_patiently(
    client: &async_nats::Client,
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    raw: Bytes,
    attempt: Duration,
) -> anyhow::Result<Bytes> {
    request_within(client, subject, headers, raw, attempt, SUBMIT_PATIENCE).await
}

/// [`request_patiently`] for `patience` instead: an edge waits as long as
/// its link to the hub is down.
pub async fn request_within(
    client: &async_nats::Client,
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    raw: Bytes,
    attempt: Duration,
    patience: Duration,
) -> anyhow::Result<Bytes> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(20);
    loop {
        let mut req = async_nats::Request::new().payload(raw.clone()).timeout(Some(attempt));
        if let Some(h) = &headers {
            req = req.headers(h.clone());
        }
        match client.send_request(subject.clone(), req).await {
            Ok(msg) => return Ok(msg.payload),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "no answer yet; retrying the same envelope");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => bail!("no answer from the ledger within {patience:?}: {e}"),
        }
    }
}

/// Submits envelopes pipelined, `window` at a time, keeping their order:
/// each is published (on its signer's subject) before the next, so the
/// ledger admits them in this order, and `outcome` learns each outcome in
/// the same order (by index). An answer not back within `within` is an
/// error. While no ledger takes submissions (NATS answers "no responders":
/// a writer stepping down, another taking over), everything not yet
/// answered is sent again, in order, with the same bytes, for up to
/// [`SUBMIT_PATIENCE`]: what the ledger already admitted gets its first
/// receipt again. An answer that overtakes an unanswered envelope means
/// that one was lost: it is sent again, and a refusal that overtook it is
/// not taken until it has been (it may rest on it). For loaders
/// (`simulate`) whose events depend on the ones before.
pub async fn submit_in_order(
    client: &async_nats::Client,
    envelopes: impl IntoIterator<Item = Bytes>,
    window: usize,
    within: Duration,
    mut outcome: impl FnMut(usize, Outcome) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let prefix = client.new_inbox();
    let mut replies = client.subscribe(format!("{prefix}.*")).await.context("cannot subscribe to the reply inbox")?;
    let mut envelopes = envelopes.into_iter();
    // Sent and not yet answered, in order: (subject, bytes).
    let mut inflight: std::collections::VecDeque<(String, Bytes)> = std::collections::VecDeque::new();
    let mut answered: std::collections::BTreeMap<usize, Outcome> = std::collections::BTreeMap::new();
    let (mut sent, mut done) = (0usize, 0usize);
    let mut unserved_since: Option<tokio::time::Instant> = None;
    let mut resend = false;
    loop {
        while sent - done < window.max(1) {
            let Some(raw) = envelopes.next() else { break };
            let subject = subjects::submit(&signer(&raw));
            client.publish_with_reply(subject.clone(), format!("{prefix}.{sent}"), raw.clone()).await.context("cannot publish")?;
            inflight.push_back((subject, raw));
            sent += 1;
        }
        if done == sent {
            return Ok(());
        }
        // Once "no responders" came back, everything unanswered goes again
        // after a quarter second without news.
        let wait = if resend { Duration::from_millis(250) } else { within };
        let msg = match tokio::time::timeout(wait, replies.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => bail!("the reply subscription ended"),
            Err(_) if resend => {
                resend = false;
                tracing::debug!("no ledger took submissions; sending the unanswered ones again");
                for (k, (subject, raw)) in inflight.iter().enumerate() {
                    let index = done + k;
                    if !answered.contains_key(&index) {
                        client.publish_with_reply(subject.clone(), format!("{prefix}.{index}"), raw.clone()).await.context("cannot publish")?;
                    }
                }
                continue;
            }
            Err(_) => bail!("no answer from the ledger on {} within {within:?}", inflight.front().map_or("?", |f| f.0.as_str())),
        };
        let index = msg.subject.rsplit('.').next().and_then(|i| i.parse::<usize>().ok()).filter(|i| (done..sent).contains(i));
        let Some(i) = index else { continue };
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            let since = *unserved_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > SUBMIT_PATIENCE {
                bail!("no ledger took submissions on {} for {SUBMIT_PATIENCE:?}", inflight.front().map_or("?", |f| f.0.as_str()));
            }
            resend = true;
            continue;
        }
        unserved_since = None;
        let answer: Outcome = serde_json::from_slice(&msg.payload).context("the ledger's answer is not an outcome")?;
        // The ledger answers in the order it was sent to: an earlier
        // envelope still unanswered was lost (a writer stepped down holding
        // it). It goes again, and so does this one if it was refused: the
        // refusal may rest on the lost one (`unknown_lot` for a lot it
        // makes). A receipt stands; a refusal is judged afresh when sent
        // again.
        if (done..i).any(|k| !answered.contains_key(&k)) {
            resend = true;
            if matches!(answer, Outcome::Rejected(_)) {
                continue;
            }
        }
        answered.insert(i, answer);
        while let Some(o) = answered.remove(&done) {
            outcome(done, o)?;
            inflight.pop_front();
            done += 1;
        }
    }
}

/// Connects as this process's identity (`--nkey`), retrying while the
/// server comes up.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    custody_wire::connect::connect_client(url, "custody-cli", identity().as_deref()).await.map_err(|e| match NATS_SOURCE.get() {
        // Which URL it tried, where that came from, how to name another.
        Some(source) => anyhow::anyhow!("{e}. {}", crate::context::hint(source)),
        None => e.into(),
    })
}

static NATS_SOURCE: std::sync::OnceLock<crate::context::Source> = std::sync::OnceLock::new();

/// Where this process's NATS URL came from (a flag, a context, the
/// default): said when it cannot connect.
pub fn set_nats_source(source: crate::context::Source) {
    let _ = NATS_SOURCE.set(source);
}

/// The outcomes of an actor's inbox submissions (`custody.inbox.<key>`),
/// in order: up to `max` from the durable consumer the ledger keeps for
/// it (named by its key; it exists once the actor's first inbox message
/// has an outcome), waiting at most `wait` for the first. Each is acked
/// once read, so the next call returns the ones after it. An actor can
/// neither create a consumer nor read another's.
pub async fn receipts(client: &async_nats::Client, actor: &str, max: usize, wait: Duration) -> anyhow::Result<Vec<Outcome>> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{actor}", subjects::RECEIPTS_STREAM);
    let expires = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
    let body = serde_json::json!({"batch": max.max(1), "expires": expires});
    client.publish_with_reply(next, inbox, body.to_string().into()).await?;
    let mut out = Vec::new();
    while out.len() < max.max(1) {
        let Ok(Some(msg)) = tokio::time::timeout(wait + Duration::from_secs(1), answers.next()).await else { break };
        match msg.status.map(|s| s.as_u16()) {
            // The wait expired, or nothing is pending.
            Some(404) | Some(408) | Some(409) => break,
            Some(503) => bail!("no receipts for {actor} yet: its consumer appears with the outcome of its first inbox message"),
            Some(code) if code >= 300 => bail!("reading receipts failed: {code} {}", msg.description.unwrap_or_default()),
            _ => {}
        }
        out.push(serde_json::from_slice(&msg.payload).context("a receipt is not an outcome")?);
        if let Some(ack) = msg.reply {
            client.publish(ack, "+ACK".into()).await?;
        }
    }
    // Send the acks now; never wait on a lost server.
    if !out.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    }
    Ok(out)
}
