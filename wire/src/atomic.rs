//! JetStream atomic batch publish (nats-server 2.12+, a stream with
//! `allow_atomic`): n messages stored all together or not at all, the
//! first optionally expecting the stream to end at a given sequence.
//! async-nats 0.51 has the header names but no batch API, so a batch is
//! n-1 core publishes carrying `Nats-Batch-Id` and `Nats-Batch-Sequence`,
//! and a last one with `Nats-Batch-Commit: 1` published for its ack. The
//! one batch publisher of custody: the ledger's commit point, the
//! benchmarks' baseline and the JetStream contract tests use it.

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;

/// Most messages in one atomic batch (nats-server's default limit).
pub const MAX_ATOMIC: usize = 1000;

/// The ack of one atomic batch, to come: the stream sequence of its last
/// message.
pub type Ack = futures::future::BoxFuture<'static, Result<u64, BatchError>>;

/// Why a batch was not (known to be) stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The stream does not end at the expected sequence (JetStream error
    /// 10071): nothing of the batch was stored.
    #[error("wrong last sequence: {0}")]
    WrongLastSequence(String),
    /// Refused for another reason, or the outcome is unknown (no ack).
    #[error("{0}")]
    Other(String),
}

/// Sends `msgs` (at most [`MAX_ATOMIC`]) on `subject` as one atomic batch
/// named `id` (unique per attempt), the first expecting the stream's last
/// sequence to be `expected_last` when given. Returns once all are
/// written to the connection; the ack comes later. A batch that could not
/// even be sent gives an ack that is an error.
pub async fn send(js: &jetstream::Context, subject: &str, id: &str, msgs: Vec<(HeaderMap, Bytes)>, expected_last: Option<u64>) -> Ack {
    match try_send(js, subject, id, msgs, expected_last).await {
        Ok(ack) => ack,
        Err(why) => Box::pin(async move { Err(BatchError::Other(why)) }),
    }
}

async fn try_send(js: &jetstream::Context, subject: &str, id: &str, msgs: Vec<(HeaderMap, Bytes)>, expected_last: Option<u64>) -> Result<Ack, String> {
    let n = msgs.len();
    if n == 0 || n > MAX_ATOMIC {
        return Err(format!("an atomic batch holds 1 to {MAX_ATOMIC} messages, not {n}"));
    }
    let client = js.client();
    for (i, (mut h, payload)) in msgs.into_iter().enumerate() {
        h.insert("Nats-Batch-Id", id);
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if let Some(last) = expected_last.filter(|_| i == 0) {
            h.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
        }
        if i + 1 < n {
            client.publish_with_headers(subject.to_owned(), h, payload).await.map_err(|e| e.to_string())?;
        } else {
            h.insert("Nats-Batch-Commit", "1");
            let publish = jetstream::message::PublishMessage::build().payload(payload).headers(h);
            let ack = js.send_publish(subject.to_owned(), publish).await.map_err(|e| e.to_string())?;
            return Ok(Box::pin(async move {
                match ack.await {
                    Ok(a) => Ok(a.sequence),
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(BatchError::WrongLastSequence(e.to_string())),
                    Err(e) => Err(BatchError::Other(e.to_string())),
                }
            }));
        }
    }
    Err("an empty batch".into())
}
